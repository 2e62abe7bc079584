/*
 * deliver — the engine.  See deliver.h.
 *
 * A message's life here:
 *   committed (or loaded) -> READY -> an attempt: its pending recipients
 *   grouped by route into jobs (SMTP/LMTP on outbound connections, MX
 *   through the resolver first, Maildir/mbox on a helper thread) -> every
 *   job answered -> recipients delivered, bounced (DSN built on a helper,
 *   committed, durable) or deferred -> a RCPT_STATE snapshot record, and
 *   DEFERRED until next_s on the retry_s schedule, or DONE (a DONE record,
 *   then the entry is freed).
 * The lists per state and the 1 s sweep of due deferred messages to READY
 * are queue/qsched's; this file drives them and writes the records.
 * engine.h says which file holds which step.
 */
#include "deliver/deliver.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "deliver/engine.h"
#include "dns/dns.h"
#include "log/log.h"

/* Diagnostics are cut to their fields on purpose (they end up in DSNs and
 * log lines of bounded size). */
#pragma GCC diagnostic ignored "-Wformat-truncation"

struct deliver_shared {
	struct dq_shared *q;
};

struct deliver_shared *deliver_shared_new(uint32_t shards)
{
	struct deliver_shared *s = calloc(1, sizeof(*s));

	if (s && !(s->q = dq_new(shards))) {
		free(s);
		s = NULL;
	}
	return s;
}

void deliver_shared_free(struct deliver_shared *s)
{
	if (!s)
		return;
	dq_free(s->q);
	free(s);
}

void deliver_shared_set_wake(struct deliver_shared *s, uint32_t shard, int fd)
{
	dq_set_wake(s->q, shard, fd);
}

struct deliver_loaded {
	struct qindex ix;
	struct qseg_table segs;
	int dirfd;
};

struct deliver_core *dlv_core(struct deliver *d)
{
	return &d->core;
}

void dlv_rec_mark(struct deliver *d, struct qmsg *m)
{
	if (m->rlisted)
		return;
	assert((d->rec_head == NULL) == (d->rec_tail == NULL));
	m->rlisted = true;
	m->rnext = NULL;
	if (d->rec_tail)
		d->rec_tail->rnext = m;
	else
		d->rec_head = m;
	d->rec_tail = m;
	assert(d->rec_head != NULL && d->rec_tail == m);
}

/* m leaves the record list without its record written (it is going away:
 * a moved message's original).  O(list), and rare. */
void dlv_rec_unlink(struct deliver *d, struct qmsg *m)
{
	struct qmsg **pp = &d->rec_head, *prev = NULL;

	assert(m->rlisted && d->rec_head != NULL);
	while (*pp && *pp != m) {
		prev = *pp;
		pp = &(*pp)->rnext;
	}
	assert(*pp == m);
	*pp = m->rnext;
	if (d->rec_tail == m)
		d->rec_tail = prev;
	m->rlisted = false;
	m->rnext = NULL;
	assert((d->rec_head == NULL) == (d->rec_tail == NULL));
}

/* ---- segments ------------------------------------------------------------------- */

int dlv_seg_fd(struct deliver *d, uint64_t seq)
{
	return qseg_fd(&d->segs, seq);
}

static void seg_track(struct deliver *d, uint64_t seq)
{
	if (qseg_track(&d->segs, seq) < 0)
		log_msg(LOG_ERROR,
			"event=segment_track_failed shard=%u segment=%016llx error=\"out of "
			"memory\" note=\"it is deleted at the next start\"",
			d->core.shard, (unsigned long long)seq);
}

void deliver_segment(struct deliver *d, uint64_t seq)
{
	assert(seq > 0);
	seg_track(d, seq);
}

static bool reclaim_quiet(void *ctx, uint64_t seq)
{
	struct deliver *d = ctx;

	return spool_seg_quiet(d->spool, seq);
}

static bool reclaim_room(void *ctx)
{
	struct deliver *d = ctx;

	return d->unlinks < DLV_UNLINKS_MAX;
}

/* Unlink the file and close our fd, both on the ring (their completions
 * count down d->unlinks). */
static void reclaim_remove(void *ctx, const struct qseg *s)
{
	struct deliver *d = ctx;
	struct io_uring_sqe *sqe;

	for (uint32_t i = 0; i < DLV_UNLINKS_MAX; i++)
		if (!d->unl[i].busy) {
			struct dunlink *u = &d->unl[i];

			sqe = ring_sqe(d->core.ring);
			spool_seg_name(s->seq, u->name);
			io_uring_prep_unlinkat(sqe, d->dirfd, u->name, 0);
			io_uring_sqe_set_data64(sqe, ring_ud(DLV_OP_UNLINK, 0, 0, i));
			u->busy = true;
			d->unlinks++;
			break;
		}
	if (s->fd >= 0) {
		sqe = ring_sqe(d->core.ring);
		io_uring_prep_close(sqe, s->fd);
		io_uring_sqe_set_data64(sqe, ring_ud(DLV_OP_SEGCLOSE, 0, 0, 0));
		d->unlinks++;
	}
	log_msg(LOG_INFO, "event=segment_reclaimed shard=%u segment=%016llx", d->core.shard,
		(unsigned long long)s->seq);
}

static const struct qseg_reclaim_ops reclaim_ops = {
    .quiet = reclaim_quiet,
    .room = reclaim_room,
    .remove = reclaim_remove,
};

/* ---- load and create -------------------------------------------------------------- */

struct load_segs {
	struct deliver_loaded *l;
	const char *dir;
	int rc;
};

static void load_seg(void *ctx, uint64_t seq, uint32_t live)
{
	struct load_segs *ls = ctx;
	int rc = qseg_load(&ls->l->segs, ls->l->dirfd, seq, live);

	/* The first error is reported; running out of memory wins. */
	if (rc == -ENOMEM || (rc < 0 && ls->rc == 0))
		ls->rc = rc;
}

int deliver_load(struct deliver_loaded **out, const char *root, uint32_t shard, char *why,
		 size_t why_len)
{
	struct deliver_loaded *l = calloc(1, sizeof(*l));
	char dir[PATH_MAX];
	struct load_segs ls = {.l = l, .dir = dir};
	int rc;

	if (!l || qindex_init(&l->ix) < 0) {
		free(l);
		snprintf(why, why_len, "out of memory");
		return -ENOMEM;
	}
	snprintf(dir, sizeof(dir), "%s/%u", root, shard);
	l->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	rc = qindex_load(&l->ix, root, shard, l->dirfd >= 0 ? load_seg : NULL, &ls, why, why_len);
	if (rc == 0 && ls.rc) {
		rc = ls.rc;
		snprintf(why, why_len, "%s: %s", dir, strerror(-rc));
	}
	if (rc < 0) {
		qindex_free(&l->ix);
		qseg_table_free(&l->segs);
		if (l->dirfd >= 0)
			close(l->dirfd);
		free(l);
		return rc;
	}
	*out = l;
	return 0;
}

uint32_t deliver_loaded_count(const struct deliver_loaded *l)
{
	return l ? l->ix.count : 0;
}

/* Take over the queue deliver_load read: each message goes on the list its
 * state says (held, deferred until next_s, or ready now). */
static void adopt_loaded(struct deliver *d, struct deliver_loaded *loaded)
{
	int64_t now = time(NULL);

	d->ix = loaded->ix;
	d->segs = loaded->segs;
	d->dirfd = loaded->dirfd;
	free(loaded);
	for (uint32_t b = 0; b <= d->ix.mask; b++)
		for (struct qmsg *m = d->ix.table[b]; m; m = m->hnext) {
			if (m->flags & SPOOL_STATE_HELD)
				dlv_list_set(d, m, QW_HELD);
			else if (m->next_s > now)
				dlv_list_set(d, m, QW_DEFERRED);
			else
				dlv_list_set(d, m, QW_READY);
		}
	assert(d->sched.count[QW_HELD] + d->sched.count[QW_DEFERRED] + d->sched.count[QW_READY] ==
	       d->ix.count);
}

int deliver_new(struct deliver **out, const struct deliver_params *p, struct deliver_loaded *loaded,
		char *why, size_t why_len)
{
	struct deliver *d = calloc(1, sizeof(*d));
	const struct rmx_config *cfg = p->cfg;
	char dir[PATH_MAX];
	int rc;

	if (!d || !(d->rec = malloc(SPOOL_STATE_MAX))) {
		free(d);
		snprintf(why, why_len, "out of memory");
		return -ENOMEM;
	}
	d->core.cfg = cfg;
	d->core.ring = p->ring;
	d->core.shard = p->shard;
	d->core.shards = p->shards;
	d->spool = p->spool;
	d->pool = p->pool;
	d->shared = p->shared->q;
	d->dirfd = -1;
	d->core.tls_client = calloc(cfg->route_count ? cfg->route_count : 1, sizeof(void *));
	if (!d->core.tls_client || oc_table_init(d) < 0) {
		snprintf(why, why_len, "out of memory");
		deliver_free(d);
		return -ENOMEM;
	}
	rc = oc_tls_init(d, why, why_len);
	if (rc < 0) {
		deliver_free(d);
		return rc;
	}
	rc = dns_new(&d->dns, p->ring, cfg->dns.servers, cfg->dns.timeout_ms, cfg->dns.tries, why,
		     why_len);
	if (rc < 0) {
		deliver_free(d);
		return rc;
	}
	if (loaded) {
		adopt_loaded(d, loaded);
	} else if (qindex_init(&d->ix) < 0) {
		snprintf(why, why_len, "out of memory");
		deliver_free(d);
		return -ENOMEM;
	}
	/* spool_open made it after the queue was loaded. */
	seg_track(d, spool_current_seq(d->spool));
	if (d->dirfd < 0) {
		snprintf(dir, sizeof(dir), "%s/%u", cfg->spool.path, p->shard);
		d->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (d->dirfd < 0) {
			snprintf(why, why_len, "spool.path: %s: %s", dir, strerror(errno));
			deliver_free(d);
			return -errno;
		}
	}
	*out = d;
	return 0;
}

void deliver_stop_io(struct deliver *d)
{
	if (!d)
		return;
	if (d->dns)
		dns_free(d->dns);
	d->dns = NULL;
	oc_table_free(d);
}

void deliver_free(struct deliver *d)
{
	if (!d)
		return;
	deliver_stop_io(d);
	/* Tickets of ours another shard held, or jobs that never came back,
	 * still point into the index: it goes with the process. */
	if (d->helper_jobs == 0 && d->tickets_out == 0 && d->running == 0)
		qindex_free(&d->ix);
	qseg_table_free(&d->segs);
	if (d->dirfd >= 0)
		close(d->dirfd);
	free(d->rec);
	free(d);
}

/* ---- entering the queue --------------------------------------------------------------- */

struct qmsg *dlv_enqueue(struct deliver *d, const struct spool_msg *sm)
{
	struct qseg *s = qseg_find(&d->segs, sm->seg_seq);
	struct qmsg *m;

	if (!s)
		s = qseg_add(&d->segs, sm->seg_seq, -1, &sm->seg_key);
	if (!s)
		goto fail;
	/* The first message of a segment: keep it open for outbound reads. */
	if (s->fd < 0) {
		s->fd = dup(sm->seg_fd);
		if (s->fd < 0)
			goto fail;
		s->key = sm->seg_key;
	}
	m = qindex_add(&d->ix, sm->seg_seq, sm->commit_off, sm->env_enc, sm->env_len);
	if (!m)
		goto fail;
	qseg_ref(s);
	if (m->flags & SPOOL_STATE_HELD)
		dlv_list_set(d, m, QW_HELD); /* quarantined */
	else
		dlv_list_set(d, m, d->core.stopping ? QW_DEFERRED : QW_READY);
	return m;
fail:
	/* It is on disk: the next start picks it up. */
	log_msg(LOG_ERROR, "event=enqueue_failed shard=%u id=%016llX error=\"out of memory\"",
		d->core.shard, (unsigned long long)sm->id);
	return NULL;
}

void deliver_committed(struct deliver *d, const struct spool_msg *m)
{
	dlv_enqueue(d, m);
}

/* ---- ring completions ------------------------------------------------------------------ */

void deliver_complete(struct deliver *d, uint64_t ud, int res, uint32_t flags)
{
	uint8_t op = ring_ud_op(ud);

	(void)flags;
	if (dns_op_owned(op)) {
		dns_complete(d->dns, ud, res);
		return;
	}
	switch (op) {
	case DLV_OP_UNLINK:
		d->unl[ring_ud_slot(ud)].busy = false;
		d->unlinks--;
		if (res < 0)
			log_msg(LOG_WARN, "event=segment_unlink shard=%u error=\"%s\"",
				d->core.shard, strerror(-res));
		break;
	case DLV_OP_SEGCLOSE:
		d->unlinks--;
		break;
	default:
		abort();
	}
}

struct net_table *deliver_net(struct deliver *d)
{
	return d->core.net;
}

/* ---- the loop's hooks -------------------------------------------------------------------- */

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void deliver_tick(struct deliver *d)
{
	int64_t now = time(NULL);

	d->core.now_ms = mono_ms();
	oc_tick(d);
	if (!d->core.stopping)
		qsched_sweep(&d->sched, now);
	dlv_move_forward(d);
	dlv_ctl_expire(d);
	spool_flush_states(d->spool);
	d->kick = true;
}

/* One record of m: synced and noted when an operator waits on it. */
static int put_record(struct deliver *d, struct qmsg *m, enum spool_rec_type type, const void *p,
		      uint32_t len)
{
	if (m->ctl_note)
		return spool_rec_put_sync(d->spool, type, m->id, p, len, m->ctl_note);
	return spool_rec_put(d->spool, type, m->id, p, len);
}

static void write_records(struct deliver *d)
{
	while (d->rec_head) {
		struct qmsg *m = d->rec_head;
		int rc = 0;

		assert(m->rlisted);
		if (m->done_dirty) {
			rc = put_record(d, m, SPOOL_REC_DONE, NULL, 0);
		} else if (m->state_dirty || m->ctl_note) {
			uint32_t n = qmsg_state_encode(m, d->rec, SPOOL_STATE_MAX);

			rc = n ? put_record(d, m, SPOOL_REC_RCPT_STATE, d->rec, n) : 0;
		}
		if (rc == -EAGAIN)
			return; /* next turn */
		m->ctl_note = NULL;
		d->rec_head = m->rnext;
		if (!d->rec_head)
			d->rec_tail = NULL;
		assert(d->rec_head || !d->rec_tail);
		m->rlisted = false;
		m->state_dirty = false;
		if (m->done_dirty) {
			assert(m->where == QW_DONE);
			dlv_list_del(d, m);
			qseg_unref(&d->segs, m->seq);
			qindex_remove(&d->ix, m);
		}
	}
}

void deliver_turn(struct deliver *d)
{
	d->core.now_ms = mono_ms();
	if (d->kick) {
		struct djob *job = d->wait_head;

		d->kick = false;
		d->wait_head = d->wait_tail = NULL;
		while (job) {
			struct djob *next = job->next;

			job->waiting = false;
			job->next = job->prev = NULL;
			dlv_job_go(d, job); /* back on the list if it still cannot go */
			job = next;
		}
	}
	/* Bounded per turn, so a big queue does not starve the listeners. */
	uint32_t queued = 0;

	for (uint32_t n = 0; n < 64 && d->sched.head[QW_READY] && !d->core.stopping; n++) {
		struct qmsg *m = d->sched.head[QW_READY];

		if (m->moving) /* flushed while its copy is being written */
			dlv_list_set(d, m, QW_DEFERRED);
		else if ((m->flags & SPOOL_STATE_BOUNCE) && !m->bounce_wait)
			dlv_ctl_bounce_now(d, m); /* asked before a restart */
		else if (dlv_attempt_begin(d, m))
			queued++;
		else
			break;
	}
	/* Take tickets (ours or anyone's) while there is room to run them. */
	uint32_t run_max = dq_run_max(d->core.cfg->delivery.connections_per_route, d->core.shards);
	uint32_t shards = dq_shards(d->shared);
	struct dticket *t;

	while (!d->core.stopping && d->running < run_max && (t = dq_take(d->shared)) != NULL)
		dlv_ticket_run(d, t);
	/* More than we can run: another shard helps. */
	if (queued && shards > 1 && dq_waiting(d->shared))
		dq_wake(d->shared, (d->core.shard + 1) % shards);
	write_records(d);
	if (d->core.stopping)
		spool_flush_states(d->spool);
	qseg_reclaim(&d->segs, spool_current_seq(d->spool), &reclaim_ops, d);
}

/* ---- stop ----------------------------------------------------------------------------------- */

void deliver_stop(struct deliver *d)
{
	struct dticket *t;

	d->core.stopping = true;
	/* Tickets nobody ran: back to their owners unanswered (deferred). */
	while ((t = dq_take(d->shared)) != NULL) {
		d->running++;
		dlv_ticket_done(d, t);
	}
	for (struct djob *job = d->wait_head, *next; job; job = next) {
		next = job->next;
		dlv_wait_del(d, job);
		snprintf(job->last_err, sizeof(job->last_err), "X-ringmx; shutting down");
		dlv_job_done(d, job);
	}
	oc_stop(d);
	dns_shutdown(d->dns);
}

bool deliver_busy(const struct deliver *d)
{
	return oc_active(d) || d->helper_jobs || dns_busy(d->dns) || d->unlinks || d->bounces ||
	       d->rec_head || d->tickets_out || d->running;
}
