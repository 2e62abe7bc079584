/*
 * queue/qsched — the per-state lists and the retry sweep.  See qsched.h.
 */
#include "queue/qsched.h"

#include <assert.h>
#include <stddef.h>

/* m is linked where its `where` says: the list's ends agree with its
 * neighbours, and the list is not empty. */
static void assert_linked(const struct qsched *s, const struct qmsg *m)
{
	assert(m->where > QW_NONE && m->where <= QW_DONE);
	assert(s->count[m->where] > 0);
	assert(m->prev ? m->prev->next == m : s->head[m->where] == m);
	assert(m->next ? m->next->prev == m : s->tail[m->where] == m);
	(void)s;
	(void)m;
}

void qsched_del(struct qsched *s, struct qmsg *m)
{
	if (m->where == QW_NONE) {
		assert(m->next == NULL && m->prev == NULL);
		return;
	}
	assert_linked(s, m);
	if (m->prev)
		m->prev->next = m->next;
	else
		s->head[m->where] = m->next;
	if (m->next)
		m->next->prev = m->prev;
	else
		s->tail[m->where] = m->prev;
	s->count[m->where]--;
	assert((s->count[m->where] == 0) == (s->head[m->where] == NULL));
	m->next = m->prev = NULL;
	m->where = QW_NONE;
}

void qsched_set(struct qsched *s, struct qmsg *m, enum qmsg_where w)
{
	assert(w > QW_NONE && w <= QW_DONE);
	qsched_del(s, m);
	m->where = (uint8_t)w;
	m->prev = s->tail[w];
	m->next = NULL;
	if (s->tail[w])
		s->tail[w]->next = m;
	else
		s->head[w] = m;
	s->tail[w] = m;
	s->count[w]++;
	assert_linked(s, m);
}

uint32_t qsched_sweep(struct qsched *s, int64_t now_s)
{
	uint32_t moved = 0;

	for (struct qmsg *m = s->head[QW_DEFERRED], *next; m; m = next) {
		next = m->next;
		if (m->next_s <= now_s && !m->moving) {
			qsched_set(s, m, QW_READY);
			moved++;
		}
	}
	return moved;
}

int64_t qsched_next_attempt(const uint32_t *retry_s, uint32_t retry_count, uint32_t attempts,
			    int64_t arrival_s, uint32_t max_age_s, int64_t now_s)
{
	assert(retry_count > 0);
	uint32_t k = attempts ? attempts - 1u : 0u;
	int64_t next = now_s + retry_s[k < retry_count ? k : retry_count - 1];
	int64_t expiry = arrival_s + max_age_s;

	return next > expiry && now_s < expiry ? expiry : next;
}
