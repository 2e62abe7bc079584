/*
 * deliver/report — the end of an attempt: recipients settled, deferred on
 * the retry schedule or finished; the DSNs we owe (failures, successes the
 * hop could not report, delay notices) built on a helper and committed
 * before the recipients they report are final; and old segments' messages
 * moved forward so reclaim is not pinned.
 */
#include "deliver/engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "log/log.h"
#include "mail/dsn.h"

/* Diagnostics are cut to their fields on purpose (they end up in DSNs and
 * log lines of bounded size). */
#pragma GCC diagnostic ignored "-Wformat-truncation"

static enum dsn_action success_action(enum qrcpt_success s)
{
	switch (s) {
	case QRCPT_SUCCESS_DELIVERED:
		return DSN_ACTION_DELIVERED;
	case QRCPT_SUCCESS_RELAYED:
		return DSN_ACTION_RELAYED;
	case QRCPT_SUCCESS_NONE:
		break;
	}
	abort(); /* callers ask only for a success we report */
}

static bool action_is_success(enum dsn_action a)
{
	return a == DSN_ACTION_DELIVERED || a == DSN_ACTION_RELAYED || a == DSN_ACTION_EXPANDED;
}

/* Does recipient r, delivered in this attempt, get a success report from
 * us?  Only when its NOTIFY asked for SUCCESS (RFC 3461 4.1) and the hop
 * could not report it itself; never for the null sender. */
bool dlv_success_reported(const struct qmsg *m, uint32_t r)
{
	const struct qrcpt_res *res = &m->res[r];
	struct spool_rcpt rc;

	if (res->cls != 2 || res->success == QRCPT_SUCCESS_NONE || !dsn_needed(&m->env) ||
	    spool_env_rcpt(&m->env, r, &rc) != 0)
		return false;
	return dsn_should_notify(rc.notify, success_action(res->success), false);
}

/* What one DSN of ours reports. */
enum dlv_report {
	/* An attempt's final answers: failed recipients and, when NOTIFY
	 * asked for SUCCESS and the hop could not report it, delivered or
	 * relayed ones (RFC 3461 5.2.2.2).  Its recipients are final only
	 * once it is durable (report_settle). */
	DLV_REPORT_OUTCOME = 1,
	DLV_REPORT_DELAY, /* delivery.delay_notice_s: still being retried */
};

#define DLV_NO_RESUME UINT32_MAX

/* A bounce being built (helper) and committed (spool). */
struct dbounce {
	struct spool_msg sm; /* first: the spool hands it back */
	struct deliver *d;
	struct qmsg *orig;
	uint32_t *rcpt;
	uint32_t n;
	struct dsn_rcpt_result *results;
	enum dlv_report kind;
	uint32_t nfail, nsucc; /* results that are failures / successes */
	/* DSN_RCPT_MAX results per DSN: the recipient to go on from with the
	 * next one once this one is durable, or DLV_NO_RESUME. */
	uint32_t resume;
	/* A split report: an earlier DSN of it returned the content (RET=FULL)
	 * / this one does. */
	bool content_sent, returns_content;
	bool move; /* not a bounce: orig re-written forward */
	struct spool_rcpt *mrcpt;
	uint32_t mn;
	int segfd;
	int rc;
	char *buf;
	size_t len, cap;
	struct dsn_info info;
	bool begun, waiting;
	struct dbounce *next;
	uint8_t enc[SPOOL_ENV_MAX];
};

/* ---- finishing an attempt ---------------------------------------------------------------- */

static void report_start(struct deliver *d, struct qmsg *m, enum dlv_report kind, uint32_t from,
			 bool content_sent);

void dlv_message_done(struct deliver *d, struct qmsg *m)
{
	char id[SPOOL_QID_LEN + 1];

	dlv_qid(m->id, id);
	log_msg(LOG_INFO, "event=done id=%s attempts=%u", id, m->attempts);
	m->done_dirty = true;
	dlv_list_set(d, m, QW_DONE);
	dlv_rec_mark(d, m);
}

/* Recipients are settled (bounces queued): done, or deferred until the next
 * attempt on the schedule. */
static void settle(struct deliver *d, struct qmsg *m)
{
	const struct config_delivery *dc = &d->core.cfg->delivery;
	int64_t now = time(NULL);

	if (qmsg_pending(m) == 0 || m->delete_req) {
		dlv_message_done(d, m);
		return;
	}
	m->next_s = qsched_next_attempt(dc->retry_s, dc->retry_count, m->attempts, m->env.arrival_s,
					dc->max_age_s, now);
	m->error[0] = '\0';
	for (uint32_t r = 0; r < m->env.rcpt_count; r++)
		if (m->rst[r] == SPOOL_RCPT_PENDING || m->rst[r] == SPOOL_RCPT_DEFERRED) {
			qmsg_rcpt_set(m, r, SPOOL_RCPT_DEFERRED);
			if (!m->error[0] && m->res[r].diag[0])
				snprintf(m->error, sizeof(m->error), "%s", m->res[r].diag);
		}
	m->state_dirty = true;
	dlv_rec_mark(d, m);
	dlv_list_set(d, m, (m->flags & SPOOL_STATE_HELD) ? QW_HELD : QW_DEFERRED);
	if (dc->delay_notice_s && !m->delay_sent && now - m->env.arrival_s >= dc->delay_notice_s) {
		m->delay_sent = true;
		report_start(d, m, DLV_REPORT_DELAY, 0, false);
	}
}

static void log_bounced(const struct qmsg *m, uint32_t r, const char *why)
{
	char id[SPOOL_QID_LEN + 1];
	struct spool_rcpt rc;

	dlv_qid(m->id, id);
	spool_env_rcpt(&m->env, r, &rc);
	log_msg(LOG_INFO, "event=bounced id=%s rcpt=<%.*s> reason=%s status=%s reply=\"%s\"", id,
		(int)rc.addr.len, rc.addr.ptr, why, m->res[r].status, m->res[r].diag);
}

void dlv_attempt_finish(struct deliver *d, struct qmsg *m)
{
	const struct config_delivery *dc = &d->core.cfg->delivery;
	int64_t now = time(NULL);
	bool expired = now - m->env.arrival_s >= (int64_t)dc->max_age_s;
	bool any_report = false;

	for (uint32_t r = 0; r < m->env.rcpt_count; r++) {
		struct qrcpt_res *res = &m->res[r];

		if (m->rst[r] != SPOOL_RCPT_PENDING && m->rst[r] != SPOOL_RCPT_DEFERRED)
			continue;
		if (m->bounce_all && res->cls != 2) {
			dlv_set_res(m, r, 5, "5.0.0", "X-ringmx; bounced by the postmaster");
			log_bounced(m, r, "operator");
		} else if (expired && res->cls != 2 && res->cls != 5) {
			char diag[DLV_ERR_MAX];

			snprintf(diag, sizeof(diag), "%s%s%s",
				 res->diag[0] ? res->diag : "X-ringmx; ", res->diag[0] ? " (" : "",
				 res->diag[0] ? "retry time expired)" : "retry time expired");
			snprintf(res->diag, sizeof(res->diag), "%s", diag);
			res->cls = 5;
			if (res->status[0] != '4')
				snprintf(res->status, sizeof(res->status), "4.4.7");
			log_bounced(m, r, "expired");
		}
		/* Still pending with a 2xx: its success is to be reported
		 * (ticket_apply made the others final). */
		any_report |= res->cls == 5 || res->cls == 2;
	}
	m->bounce_all = false;
	if (m->delete_req) {
		dlv_message_done(d, m);
		return;
	}
	if (any_report) {
		report_start(d, m, DLV_REPORT_OUTCOME, 0, false);
		return;
	}
	settle(d, m);
}

/* ---- bounces ------------------------------------------------------------------------------- */

static int bounce_sink(void *ctx, const char *p, size_t n)
{
	struct dbounce *b = ctx;
	struct membuf mb = {b->buf, b->len, b->cap, 0};
	int rc = dlv_membuf_put(&mb, p, n);

	b->buf = mb.p;
	b->len = mb.len;
	b->cap = mb.cap;
	return rc;
}

static int bounce_source(void *ctx, spool_body_fn sink, void *sink_ctx)
{
	struct dbounce *b = ctx;

	return spool_message_read(b->segfd, &b->orig->env, b->orig->commit_off, sink, sink_ctx);
}

/* A nonce for the DSN's Message-ID and boundary: one the sender cannot
 * guess (dsn.h), so it cannot fill the message with every boundary there
 * could be.  Helper thread: getrandom may block until the pool is ready. */
static uint64_t bounce_nonce(const struct qmsg *m)
{
	uint64_t v;

	if (getrandom(&v, sizeof(v), 0) == (ssize_t)sizeof(v))
		return v;
	return ((uint64_t)rand() << 32) ^ (uint64_t)rand() ^ m->id ^ (uint64_t)time(NULL);
}

static int bounce_job(void *arg)
{
	struct dbounce *b = arg;
	const struct rmx_config *cfg = b->d->core.cfg;
	/* RFC 3461 4.3: RET asks for the content in a failed DSN; a report of
	 * successes alone returns the header section. */
	struct spool_env env = b->orig->env;

	if (b->kind == DLV_REPORT_OUTCOME && b->nfail == 0)
		env.ret = SMTP_RET_HDRS;
	/* A report split over several DSNs returns the content once, in the
	 * first that asks for it: otherwise one message to many refused
	 * recipients comes back to its (perhaps forged) sender as many full
	 * copies. */
	if (b->content_sent)
		env.ret = SMTP_RET_HDRS;
	b->returns_content = env.ret == SMTP_RET_FULL;
	struct dsn_params p = {
	    .reporting_mta = cfg->hostname,
	    .msgid_domain = cfg->hostname,
	    .env = &env,
	    .results = b->results,
	    .result_count = b->n,
	    /* Bounded: a DSN carrying a whole huge message is itself huge. */
	    .source = env.msg_len <= (8u << 20) ? bounce_source : NULL,
	    .source_ctx = b,
	    .write = bounce_sink,
	    .write_ctx = b,
	};

	/* -EEXIST: every boundary with this nonce is in the message (only
	 * possible by chance or with a guessed nonce): a new one. */
	for (int i = 0; i < 4; i++) {
		p.now_s = time(NULL);
		p.nonce = bounce_nonce(b->orig);
		b->len = 0;
		b->rc = dsn_build(&p, &b->info);
		if (b->rc != -EEXIST)
			break;
	}
	return b->rc;
}

static void bounce_free(struct dbounce *b)
{
	free(b->mrcpt);
	free(b->buf);
	free(b->results);
	free(b->rcpt);
	free(b);
}

/* The attempt's outcome report is queued (ok), or could not be: the
 * recipients still pending become final and the message is settled.  A
 * failure whose report could not be queued stays pending and is tried
 * again; a delivery is final whatever became of its report, since
 * delivering it again would duplicate the mail (logged). */
static void report_settle(struct deliver *d, struct qmsg *m, bool ok)
{
	uint32_t lost = 0;

	m->bounce_wait = false;
	for (uint32_t r = 0; r < m->env.rcpt_count; r++) {
		if (m->rst[r] != SPOOL_RCPT_PENDING && m->rst[r] != SPOOL_RCPT_DEFERRED)
			continue;
		if (m->res[r].cls == 5 && ok) {
			qmsg_rcpt_set(m, r, SPOOL_RCPT_BOUNCED);
		} else if (m->res[r].cls == 2) {
			qmsg_rcpt_set(m, r, SPOOL_RCPT_DELIVERED);
			lost += dlv_success_reported(m, r) && !ok;
		}
	}
	if (lost) {
		char id[SPOOL_QID_LEN + 1];

		dlv_qid(m->id, id);
		log_msg(LOG_ERROR,
			"event=success_dsn_failed id=%s rcpts=%u note=\"delivered; the "
			"NOTIFY=SUCCESS report could not be queued\"",
			id, lost);
	}
	settle(d, m);
}

/* Recipient r's line in a report of this kind, or false when it gets none. */
static bool report_result(const struct deliver *d, const struct qmsg *m, uint32_t r,
			  enum dlv_report kind, struct dsn_rcpt_result *out)
{
	const struct qrcpt_res *res = &m->res[r];
	struct spool_rcpt rc;
	enum dsn_action action;
	const char *status = res->status;

	if (m->rst[r] != SPOOL_RCPT_PENDING && m->rst[r] != SPOOL_RCPT_DEFERRED)
		return false;
	if (kind == DLV_REPORT_DELAY && m->rst[r] == SPOOL_RCPT_DEFERRED)
		action = DSN_ACTION_DELAYED;
	else if (kind == DLV_REPORT_OUTCOME && res->cls == 5)
		action = DSN_ACTION_FAILED;
	else if (kind == DLV_REPORT_OUTCOME && dlv_success_reported(m, r))
		action = success_action(res->success);
	else
		return false;
	spool_env_rcpt(&m->env, r, &rc);
	/* Delay notices come only when delivery.delay_notice_s is set: then a
	 * recipient without NOTIFY gets one too (RFC 3461 4.1 leaves that
	 * default to the server). */
	if (!dsn_should_notify(rc.notify, action, true))
		return false;
	if (!status[0] || (action_is_success(action) && status[0] != '2'))
		status = action_is_success(action) ? "2.0.0" : "4.0.0";
	*out = (struct dsn_rcpt_result){
	    .rcpt = r,
	    .action = action,
	    .status = status,
	    .diag = {res->diag, (uint32_t)strlen(res->diag)},
	    .remote_mta = {res->mta, (uint32_t)strlen(res->mta)},
	    .last_attempt_s = time(NULL),
	    .retry_until_s = action == DSN_ACTION_DELAYED
				 ? m->env.arrival_s + d->core.cfg->delivery.max_age_s
				 : 0,
	};
	return true;
}

/* A report is finished: it needed no DSN, its DSN is durable (ok), or it
 * could not be queued.  A delay notice changes no recipient: the message
 * goes back to waiting for its next attempt (or is dropped if the operator
 * deleted it meanwhile). */
static void report_none(struct deliver *d, struct qmsg *m, enum dlv_report kind, bool ok)
{
	if (kind == DLV_REPORT_OUTCOME) {
		report_settle(d, m, ok);
		return;
	}
	m->bounce_wait = false;
	if (m->delete_req)
		dlv_message_done(d, m);
	else
		dlv_list_set(d, m, (m->flags & SPOOL_STATE_HELD) ? QW_HELD : QW_DEFERRED);
}

/* Build (helper) and queue the DSN of this kind for m's recipients from
 * index `from` on, at most DSN_RCPT_MAX of them; the rest follow in the
 * next DSN once this one is durable (report_durable); content_sent: an
 * earlier one of them returned the content. */
static void report_start(struct deliver *d, struct qmsg *m, enum dlv_report kind, uint32_t from,
			 bool content_sent)
{
	char id[SPOOL_QID_LEN + 1];
	uint32_t cap = m->env.rcpt_count < DSN_RCPT_MAX ? m->env.rcpt_count : DSN_RCPT_MAX;
	struct dbounce *b = calloc(1, sizeof(*b));
	uint32_t n = 0, r = from;

	if (b) {
		b->rcpt = malloc((cap ? cap : 1) * sizeof(uint32_t));
		b->results = calloc(cap ? cap : 1, sizeof(*b->results));
	}
	if (!b || !b->rcpt || !b->results) {
		if (b)
			bounce_free(b);
		report_none(d, m, kind, false);
		return;
	}
	for (; r < m->env.rcpt_count && n < cap && dsn_needed(&m->env); r++)
		if (report_result(d, m, r, kind, &b->results[n])) {
			b->nfail += b->results[n].action == DSN_ACTION_FAILED;
			b->nsucc += action_is_success(b->results[n].action);
			b->rcpt[n++] = r;
		}
	if (n == 0) {
		dlv_qid(m->id, id);
		if (!dsn_needed(&m->env) && kind == DLV_REPORT_OUTCOME)
			log_msg(LOG_INFO,
				"event=double_bounce id=%s reason=\"null sender: no DSN\"", id);
		bounce_free(b);
		report_none(d, m, kind, true);
		return;
	}
	b->d = d;
	b->orig = m;
	b->n = n;
	b->kind = kind;
	b->resume = r < m->env.rcpt_count ? r : DLV_NO_RESUME;
	b->content_sent = content_sent;
	b->segfd = dlv_seg_fd(d, m->seq);
	if (hpool_submit_job(d->pool, d->core.shard, 2, bounce_job, b) < 0) {
		bounce_free(b);
		report_none(d, m, kind, false);
		return;
	}
	d->helper_jobs++;
	d->bounces++;
	/* The helper reads m: no attempt, delete or reclaim may finish and
	 * free it meanwhile (a delay notice too, which used to leave it
	 * deferred and so exposed). */
	m->bounce_wait = true;
	dlv_list_set(d, m, QW_ACTIVE);
}

/* This DSN is durable (ok) or failed.  Its recipients are final; the next
 * DSN_RCPT_MAX go next, or the message is settled. */
static void report_durable(struct deliver *d, struct dbounce *b, bool ok)
{
	struct qmsg *m = b->orig;

	if (!ok) {
		report_none(d, m, b->kind, false);
		return;
	}
	for (uint32_t i = 0; b->kind == DLV_REPORT_OUTCOME && i < b->n; i++)
		qmsg_rcpt_set(m, b->rcpt[i],
			      b->results[i].action == DSN_ACTION_FAILED ? SPOOL_RCPT_BOUNCED
									: SPOOL_RCPT_DELIVERED);
	if (b->resume != DLV_NO_RESUME)
		report_start(d, m, b->kind, b->resume, b->content_sent || b->returns_content);
	else
		report_none(d, m, b->kind, true);
}

static const char *report_word(const struct dbounce *b)
{
	if (b->kind == DLV_REPORT_DELAY)
		return "delayed";
	return b->nsucc == 0 ? "failed" : b->nfail == 0 ? "success" : "failed,success";
}

/* A built bounce goes into the spool as a message of ours; its
 * on_durable settles the original. */
static bool bounce_commit(struct deliver *d, struct dbounce *b)
{
	struct spool_env env = {0};
	struct spool_rcpt rcpt;

	if (!b->begun) {
		spool_msg_begin(d->spool, &b->sm, b->move ? b->orig->id : spool_next_id(d->spool),
				SPOOL_OWNER_ENGINE, 0);
		b->begun = true;
		if (b->len)
			spool_msg_append(d->spool, &b->sm, b->buf, (uint32_t)b->len, SPOOL_NO_BUF);
	}
	if (!spool_msg_can_commit(&b->sm)) {
		spool_msg_wait(d->spool, &b->sm);
		b->waiting = true;
		return false;
	}
	b->waiting = false;
	if (b->move) {
		env = b->orig->env;
		/* Released from quarantine: the copy must not come back held. */
		if (!(b->orig->flags & SPOOL_STATE_HELD))
			env.quarantine = (struct spool_str){0};
		env.rcpts = b->mrcpt;
		env.rcpt_count = b->mn;
		env.rcpt_data = NULL;
		env.rcpt_data_len = 0;
	} else {
		dsn_bounce_env(&b->orig->env, &b->info, &env, &rcpt);
		env.arrival_s = time(NULL);
		env.msg_len = b->len;
	}
	if (spool_msg_commit(d->spool, &b->sm, &env, b->enc, sizeof(b->enc)) < 0) {
		spool_msg_abort(d->spool, &b->sm);
		log_msg(LOG_ERROR, "event=%s shard=%u error=\"envelope\"",
			b->move ? "move_failed" : "bounce_failed", d->core.shard);
		if (b->move) {
			b->orig->moving = false;
			d->moves--;
		} else {
			report_durable(d, b, false);
		}
		d->bounces--;
		bounce_free(b);
	}
	return true;
}

static void bounce_built(struct deliver *d, struct dbounce *b)
{
	if (b->rc < 0 || b->len == 0 || b->len > SPOOL_REC_PAYLOAD_MAX) {
		char id[SPOOL_QID_LEN + 1];

		dlv_qid(b->orig->id, id);
		log_msg(LOG_ERROR, "event=bounce_failed id=%s error=\"%s\"", id,
			strerror(b->rc < 0 ? -b->rc : EFBIG));
		report_durable(d, b, false);
		d->bounces--;
		bounce_free(b);
		return;
	}
	bounce_commit(d, b);
}

/* The copy is durable: it replaces the original (same id, remaining
 * recipients), whose segment can go once nothing else lives there. */
static void move_durable(struct deliver *d, struct dbounce *b, int res)
{
	struct qmsg *o = b->orig, *n;
	char id[SPOOL_QID_LEN + 1];
	uint64_t old_seq = o->seq;

	dlv_qid(o->id, id);
	d->moves--;
	d->bounces--;
	o->moving = false;
	if (res < 0) {
		log_msg(LOG_ERROR, "event=move_failed id=%s error=\"%s\"", id, strerror(-res));
		bounce_free(b);
		return;
	}
	uint16_t attempts = o->attempts;
	uint8_t flags = o->flags, where = o->where;
	int64_t next_s = o->next_s;
	char error[sizeof(o->error)];

	memcpy(error, o->error, sizeof(error));
	/* A flush while the copy was written marked o for a record that
	 * answers the operator (ctl_note): o goes, so the copy's record
	 * answers instead. */
	struct spool_note *note = o->ctl_note;

	o->ctl_note = NULL;
	if (o->rlisted)
		dlv_rec_unlink(d, o);
	dlv_list_del(d, o);
	qseg_unref(&d->segs, o->seq);
	qindex_remove(&d->ix, o);
	n = dlv_enqueue(d, &b->sm);
	if (n) {
		n->attempts = attempts;
		n->flags = flags;
		n->next_s = next_s;
		memcpy(n->error, error, sizeof(error));
		for (uint32_t r = 0; r < n->env.rcpt_count; r++)
			qmsg_rcpt_set(n, r, SPOOL_RCPT_DEFERRED);
		dlv_list_set(d, n, where == QW_HELD ? QW_HELD : QW_DEFERRED);
		n->state_dirty = true;
		assert(n->ctl_note == NULL);
		n->ctl_note = note;
		dlv_rec_mark(d, n);
	} else if (note) {
		note->fn(note, -ENOMEM);
	}
	log_msg(LOG_INFO, "event=moved id=%s from_segment=%016llx to_segment=%016llx rcpts=%u", id,
		(unsigned long long)old_seq, (unsigned long long)b->sm.seg_seq, b->mn);
	bounce_free(b);
}

void deliver_spool_durable(struct deliver *d, struct spool_msg *sm, int res)
{
	struct dbounce *b = (struct dbounce *)sm;
	char id[SPOOL_QID_LEN + 1], nid[SPOOL_QID_LEN + 1];

	sm->committing = false;
	if (b->move) {
		move_durable(d, b, res);
		return;
	}

	dlv_qid(b->orig->id, id);
	dlv_qid(sm->id, nid);
	sm->committing = false;
	if (res == 0) {
		log_msg(LOG_INFO, "event=bounce_queued id=%s dsn=%s action=%s rcpts=%u", id, nid,
			report_word(b), b->n);
		dlv_enqueue(d, sm);
	} else {
		log_msg(LOG_ERROR, "event=bounce_failed id=%s error=\"%s\"", id, strerror(-res));
	}
	report_durable(d, b, res == 0);
	d->bounces--;
	bounce_free(b);
}

void deliver_spool_progress(struct deliver *d, struct spool_msg *sm)
{
	struct dbounce *b = (struct dbounce *)sm;

	if (b->waiting)
		bounce_commit(d, b);
}

/* ---- helpers' completions --------------------------------------------------------------- */

void deliver_helper_done(struct deliver *d, const struct hpool_done *done)
{
	d->helper_jobs--;
	d->kick = true; /* a helper slot is free: waiting local jobs may go */
	if (done->cookie == 1) {
		dlv_local_done(d, done->arg);
	} else if (done->cookie == 3) {
		struct dbounce *b = done->arg;

		if (b->rc < 0 || b->len > SPOOL_REC_PAYLOAD_MAX) {
			b->orig->moving = false;
			d->moves--;
			d->bounces--;
			bounce_free(b);
			return;
		}
		bounce_commit(d, b);
	} else {
		bounce_built(d, done->arg);
	}
}

/* ---- moving long-deferred messages forward ---------------------------------------------- */

static int move_job(void *arg)
{
	struct dbounce *b = arg;

	/* The stored bytes alone: the copy keeps the envelope's prepend,
	 * which delivery sends before them. */
	struct spool_env stored = b->orig->env;

	stored.prepend = (struct spool_str){0};
	b->rc = spool_message_read(b->segfd, &stored, b->orig->commit_off, bounce_sink, b);
	/* DATA-received bytes are stored with their terminator. */
	if (b->rc == 0 && (b->orig->env.flags & SPOOL_ENV_STUFFED))
		b->rc = bounce_sink(b, ".\r\n", 3);
	return b->rc;
}

static void move_start(struct deliver *d, struct qmsg *m)
{
	struct dbounce *b = calloc(1, sizeof(*b));

	if (!b || !(b->mrcpt = calloc(m->env.rcpt_count, sizeof(*b->mrcpt)))) {
		free(b);
		return;
	}
	for (uint32_t r = 0; r < m->env.rcpt_count; r++)
		if (m->rst[r] == SPOOL_RCPT_PENDING || m->rst[r] == SPOOL_RCPT_DEFERRED)
			spool_env_rcpt(&m->env, r, &b->mrcpt[b->mn++]);
	b->d = d;
	b->orig = m;
	b->move = true;
	b->segfd = dlv_seg_fd(d, m->seq);
	if (b->mn == 0 || hpool_submit_job(d->pool, d->core.shard, 3, move_job, b) < 0) {
		bounce_free(b);
		return;
	}
	m->moving = true;
	d->helper_jobs++;
	d->bounces++;
	d->moves++;
}

/* The oldest segment pins every newer one (reclaim goes oldest first): once
 * two newer ones exist, its deferred messages are re-written into the
 * current segment, so disk use stays bounded by what is really queued. */
void dlv_move_forward(struct deliver *d)
{
	uint64_t cur = spool_current_seq(d->spool);
	uint64_t seq;

	if (d->segs.n < 3 || d->moves >= 16 || d->core.stopping)
		return;
	seq = d->segs.v[0].seq;
	if (seq >= cur || !spool_seg_quiet(d->spool, seq) || d->segs.v[0].live == 0)
		return;
	for (uint32_t b = 0; b <= d->ix.mask && d->moves < 16; b++)
		for (struct qmsg *m = d->ix.table[b]; m && d->moves < 16; m = m->hnext)
			if (m->seq == seq && !m->moving && !m->rlisted &&
			    (m->where == QW_DEFERRED || m->where == QW_HELD) &&
			    m->env.msg_len <= (8u << 20))
				move_start(d, m);
}
