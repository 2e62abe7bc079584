/*
 * deliver/ctl — the queue-control requests (list, flush, hold, release,
 * delete, bounce) on the shard thread; a change is answered once the
 * records saying so are durable.
 */
#include "deliver/engine.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log/log.h"

/* Diagnostics are cut to their fields on purpose (they end up in DSNs and
 * log lines of bounded size). */
#pragma GCC diagnostic ignored "-Wformat-truncation"

static const char *const where_name[] = {"none", "queued", "active", "deferred", "held", "done"};

/* ---- control ----------------------------------------------------------------------------- */

__attribute__((format(printf, 2, 3))) static void ctl_printf(struct dctl_req *req, const char *fmt,
							     ...)
{
	char line[2048]; /* a queue list line: escaped sender (1 KiB) and error (512) */
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n <= 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	if (req->out_len + (size_t)n + 1 > req->out_cap) {
		size_t nc = req->out_cap ? req->out_cap * 2 : 65536;
		char *t;

		while (nc < req->out_len + (size_t)n + 1)
			nc *= 2;
		t = realloc(req->out, nc);
		if (!t)
			return;
		req->out = t;
		req->out_cap = nc;
	}
	memcpy(req->out + req->out_len, line, (size_t)n);
	req->out_len += (size_t)n;
	req->out[req->out_len] = '\0';
}

static void ctl_list_one(struct dctl_req *req, const struct qmsg *m)
{
	char id[SPOOL_QID_LEN + 1], next[24], err[SPOOL_STATE_ERR_MAX + 1];
	char path[SMTP_PATH_MAX + 3], from[4 * sizeof(path) + 3];
	size_t k = 0;
	int n;

	dlv_qid(m->id, id);
	/* A quoted local part may hold spaces, quotes and '=': written as one
	 * kv value (log.h's rules), so it cannot pass for more fields. */
	n = snprintf(path, sizeof(path), "<%.*s>", (int)m->env.mail_from.len, m->env.mail_from.ptr);
	log_kv_value(from, sizeof(from), path,
		     n < (int)sizeof(path) ? (size_t)n : sizeof(path) - 1);
	if (m->where == QW_DEFERRED || m->where == QW_HELD)
		snprintf(next, sizeof(next), "%" PRId64, m->next_s);
	else
		snprintf(next, sizeof(next), "-");
	for (const char *p = m->error; *p && k < sizeof(err) - 1; p++)
		err[k++] = *p == '"' || *p == '\\' ? '\'' : *p;
	err[k] = '\0';
	if (req->quarantined && !m->env.quarantine.len)
		return;
	ctl_printf(req,
		   "%s size=%" PRIu64 " from=%s rcpts=%u arrival=%" PRId64
		   " state=%s attempts=%u next=%s error=\"%s\"",
		   id, spool_env_size(&m->env), from, qmsg_pending(m), m->env.arrival_s,
		   (m->flags & SPOOL_STATE_HELD) ? "held" : where_name[m->where], m->attempts, next,
		   err);
	/* The quarantine name is a filter's (letters, digits, _ . -). */
	if (m->env.quarantine.len)
		ctl_printf(req, " quarantine=%.*s", (int)m->env.quarantine.len,
			   m->env.quarantine.ptr);
	ctl_printf(req, "\n");
}

/* How long an operator's command waits for its records to find a segment.
 * The control socket is served by the main thread, which also takes
 * SIGTERM: a command that is never answered keeps the process from
 * stopping. */
#define DLV_CTL_WAIT_MS 5000

/* An operator's command waiting for its records: answered when the last
 * one is durable (or failed). */
struct dctl_wait {
	struct spool_note note; /* first: the spool hands it back */
	struct dctl_req *req;
	uint32_t pending; /* records not yet durable, +1 while being set up */
	int res;
	uint64_t deadline_ms; /* records not placed in a batch by then fail it */
};

static void ctl_wait_put(struct dctl_wait *w)
{
	if (--w->pending > 0)
		return;
	w->req->result = w->res;
	sem_post(&w->req->done); /* the control thread owns req from here */
	free(w);
}

static void ctl_note_done(struct spool_note *n, int res)
{
	struct dctl_wait *w = (struct dctl_wait *)n;

	if (res < 0 && !w->res) {
		w->res = res;
		log_msg(LOG_ERROR, "event=queue_control error=\"record not durable: %s\"",
			strerror(-res));
	}
	ctl_wait_put(w);
}

/* m's next record (snapshot or DONE) answers w. */
static void ctl_wait_on(struct deliver *d, struct dctl_wait *w, struct qmsg *m)
{
	assert(m->ctl_note == NULL);
	m->ctl_note = &w->note;
	w->pending++;
	dlv_rec_mark(d, m);
}

/* A command whose records found no segment to go to (the current one was
 * sealed by a failed write and none opens: the disk is full) is answered
 * with the spool's error after DLV_CTL_WAIT_MS.  Its change stays in
 * memory and its record is written once a segment takes records again;
 * the operator was told it is not durable.  Records already in a batch
 * are answered by their write. */
void dlv_ctl_expire(struct deliver *d)
{
	for (struct qmsg *m = d->rec_head; m; m = m->rnext) {
		struct dctl_wait *w = (struct dctl_wait *)m->ctl_note;
		int err = spool_write_error(d->spool);

		if (!w || d->core.now_ms < w->deadline_ms)
			continue;
		m->ctl_note = NULL;
		ctl_note_done(&w->note, err ? err : -EIO); /* may free w */
	}
}

/* Bounce every recipient not yet delivered, now (no attempt first). */
int dlv_ctl_bounce_now(struct deliver *d, struct qmsg *m)
{
	if (!m->res)
		m->res = calloc(m->env.rcpt_count ? m->env.rcpt_count : 1, sizeof(*m->res));
	if (!m->res)
		return -ENOMEM;
	dlv_list_set(d, m, QW_ACTIVE);
	m->bounce_all = true;
	dlv_attempt_finish(d, m);
	return 0;
}

static int ctl_one(struct deliver *d, struct dctl_req *req, struct qmsg *m, struct dctl_wait *w)
{
	/* Another command's record is still being written: one at a time, so
	 * each OK stands for a record of its own. */
	if (m->ctl_note && req->op != DCTL_FIND)
		return -EBUSY;
	switch (req->op) {
	case DCTL_FIND:
		return 0;
	case DCTL_FLUSH:
		if (m->where == QW_DEFERRED)
			dlv_list_set(d, m, QW_READY);
		m->next_s = 0;
		break;
	case DCTL_HOLD:
		m->flags |= SPOOL_STATE_HELD;
		if (m->where == QW_READY || m->where == QW_DEFERRED)
			dlv_list_set(d, m, QW_HELD);
		break;
	case DCTL_RELEASE:
		/* Back on its schedule, like postsuper -H; flush sends it now. */
		m->flags &= (uint8_t)~SPOOL_STATE_HELD;
		if (m->where == QW_HELD)
			dlv_list_set(d, m, m->next_s > time(NULL) ? QW_DEFERRED : QW_READY);
		break;
	case DCTL_DELETE:
		/* Recorded now: an attempt running may finish later, or never. */
		m->flags |= SPOOL_STATE_DELETED;
		m->delete_req = true;
		if (m->where != QW_ACTIVE)
			dlv_message_done(d, m);
		break;
	case DCTL_BOUNCE: {
		int rc = 0;

		m->flags |= SPOOL_STATE_BOUNCE;
		if (m->where == QW_ACTIVE)
			m->bounce_all = true;
		else
			rc = dlv_ctl_bounce_now(d, m);
		if (rc < 0)
			return rc;
		break;
	}
	case DCTL_LIST: /* answered by deliver_ctl, never per message */
	default:
		return -EINVAL;
	}
	m->state_dirty = true;
	ctl_wait_on(d, w, m);
	return 0;
}

bool deliver_ctl(struct deliver *d, struct dctl_req *req)
{
	struct qmsg *m = req->id ? qindex_find(&d->ix, req->id) : NULL;
	char id[SPOOL_QID_LEN + 1];
	struct dctl_wait *w;

	req->result = 0;
	if (req->op == DCTL_LIST) {
		for (uint32_t b = 0; b <= d->ix.mask; b++)
			for (struct qmsg *q = d->ix.table[b]; q; q = q->hnext)
				if (q->where != QW_DONE)
					ctl_list_one(req, q);
		return true;
	}
	if (req->op != DCTL_FLUSH || req->id != 0) {
		if (!m || m->where == QW_DONE)
			req->result = -ENOENT;
		else if (m->moving && req->op != DCTL_FIND && req->op != DCTL_FLUSH)
			req->result = -EBUSY; /* a moment: its copy is being written */
		if (req->result || req->op == DCTL_FIND)
			return true;
	}
	/* No segment takes records (disk full): say so now, before changing
	 * anything, rather than promise an answer that waits on the disk. */
	req->result = spool_write_error(d->spool);
	if (req->result) {
		if (m)
			dlv_qid(m->id, id);
		log_msg(
		    LOG_WARN,
		    "event=queue_control id=%s op=%d result=%d error=\"spool cannot write: %s\"",
		    m ? id : "all", (int)req->op, req->result, strerror(-req->result));
		return true;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		req->result = -ENOMEM;
		return true;
	}
	*w = (struct dctl_wait){.note = {.fn = ctl_note_done},
				.req = req,
				.pending = 1,
				.deadline_ms = d->core.now_ms + DLV_CTL_WAIT_MS};
	if (m) {
		dlv_qid(m->id, id);
		w->res = ctl_one(d, req, m, w);
		log_msg(LOG_INFO, "event=queue_control id=%s op=%d result=%d", id, (int)req->op,
			w->res);
	} else {
		/* flush all: each deferred message's schedule is reset on disk too */
		for (struct qmsg *q = d->sched.head[QW_DEFERRED], *next; q; q = next) {
			next = q->next;
			ctl_one(d, req, q, w);
		}
	}
	/* Answered by the last record's note (or now, if none was needed). */
	ctl_wait_put(w);
	return false;
}
