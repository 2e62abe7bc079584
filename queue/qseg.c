/*
 * queue/qseg — segment live counts and reclaim.  See qseg.h.
 */
#include "queue/qseg.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/spool.h"

struct qseg *qseg_find(const struct qseg_table *t, uint64_t seq)
{
	for (uint32_t i = 0; i < t->n; i++)
		if (t->v[i].seq == seq)
			return &t->v[i];
	return NULL;
}

struct qseg *qseg_add(struct qseg_table *t, uint64_t seq, int fd, const struct spool_key *key)
{
	assert(qseg_find(t, seq) == NULL);
	if (t->n == t->cap) {
		uint32_t nc = t->cap ? t->cap * 2 : 16;
		struct qseg *v = realloc(t->v, nc * sizeof(*v));

		if (!v)
			return NULL;
		t->v = v;
		t->cap = nc;
	}
	/* Kept in seq order: new segments have larger seqs. */
	uint32_t at = t->n;

	while (at > 0 && t->v[at - 1].seq > seq)
		at--;
	memmove(t->v + at + 1, t->v + at, (t->n - at) * sizeof(*t->v));
	t->v[at] = (struct qseg){.seq = seq, .fd = fd, .key = *key};
	t->n++;
	assert(at == 0 || t->v[at - 1].seq < seq);
	return &t->v[at];
}

int qseg_track(struct qseg_table *t, uint64_t seq)
{
	if (qseg_find(t, seq))
		return 0;
	return qseg_add(t, seq, -1, &(struct spool_key){{0}}) ? 0 : -ENOMEM;
}

int qseg_fd(const struct qseg_table *t, uint64_t seq)
{
	struct qseg *s = qseg_find(t, seq);

	return s ? s->fd : -1;
}

void qseg_key(const struct qseg_table *t, uint64_t seq, struct spool_key *out)
{
	struct qseg *s = qseg_find(t, seq);

	*out = s ? s->key : (struct spool_key){{0}};
}

void qseg_ref(struct qseg *s)
{
	assert(s->live < UINT32_MAX);
	s->live++;
}

void qseg_unref(struct qseg_table *t, uint64_t seq)
{
	struct qseg *s = qseg_find(t, seq);

	/* Not tracked: its entry could not be made (out of memory); the
	 * segment is deleted at the next start instead. */
	if (s && s->live)
		s->live--;
}

int qseg_load(struct qseg_table *t, int dirfd, uint64_t seq, uint32_t live)
{
	char name[SPOOL_SEG_NAME_MAX];
	struct spool_seg_info info = {0};
	struct qseg *s;
	int rc = 0, fd;

	spool_seg_name(seq, name);
	fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		rc = -errno;
	/* Recovery proved the head (start-up: a blocking read is fine). */
	if (fd >= 0 && live && spool_seg_head_read(fd, &info) != 0)
		rc = -EIO;
	s = qseg_add(t, seq, fd, &info.key);
	if (!s) {
		if (fd >= 0)
			close(fd);
		return -ENOMEM;
	}
	s->live = live;
	return rc;
}

uint32_t qseg_reclaim(struct qseg_table *t, uint64_t cur, const struct qseg_reclaim_ops *ops,
		      void *ctx)
{
	uint32_t removed = 0;

	while (t->n && t->v[0].live == 0 && t->v[0].seq < cur && ops->quiet(ctx, t->v[0].seq) &&
	       ops->room(ctx)) {
		uint64_t seq = t->v[0].seq;

		ops->remove(ctx, &t->v[0]);
		memmove(t->v, t->v + 1, (t->n - 1) * sizeof(*t->v));
		t->n--;
		removed++;
		/* The next oldest is newer: the table stays in order. */
		assert(t->n == 0 || t->v[0].seq > seq);
	}
	return removed;
}

void qseg_table_free(struct qseg_table *t)
{
	for (uint32_t i = 0; i < t->n; i++)
		if (t->v[i].fd >= 0)
			close(t->v[i].fd);
	free(t->v);
	*t = (struct qseg_table){0};
}
