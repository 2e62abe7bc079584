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
 * Lists per state are plain doubly linked lists; the 1 s tick moves due
 * deferred messages to READY.
 */
#include "deliver/deliver.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "auth/pool.h"
#include "deliver/internal.h"
#include "dns/dns.h"
#include "local/local.h"
#include "log.h"
#include "queue/dqueue.h"
#include "queue/dsn.h"
#include "queue/qsched.h"
#include "queue/qseg.h"

/* Diagnostics are cut to their fields on purpose (they end up in DSNs and
 * log lines of bounded size). */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#define DLV_UNLINKS_MAX 8

/* The shards and main know the shared queue by the engine's name. */
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

struct dunlink {
	bool busy;
	char name[SPOOL_SEG_NAME_MAX];
};

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

/* A local delivery job on a helper. */
struct dlocal {
	struct djob *job;
	const char *base;
	bool mbox;
	int segfd;
	struct {
		uint8_t cls;
		char status[12];
		char diag[LOCAL_DIAG_MAX];
	} * out;
};

struct deliver {
	struct deliver_core core; /* first: outbound.c's view */
	struct dq_shared *shared;
	uint32_t tickets_out; /* ours, not handed back yet */
	uint32_t running;     /* tickets (anyone's) this shard runs */
	struct spool *spool;
	struct hpool *pool;
	struct dns *dns;
	struct qindex ix;
	struct qseg_table segs;
	int dirfd;
	struct qsched sched;
	struct qmsg *rec_head, *rec_tail; /* records to write */
	struct djob *wait_head, *wait_tail;
	struct dbounce *commit_head; /* built bounces to commit */
	uint32_t helper_jobs;
	uint32_t bounces; /* built or being committed (bounces and moves) */
	uint32_t moves;
	bool kick;
	struct dunlink unl[DLV_UNLINKS_MAX];
	uint32_t unlinks;
	uint8_t *rec; /* SPOOL_STATE_MAX */
};

struct deliver_core *dlv_core(struct deliver *d)
{
	return &d->core;
}

static const char *const where_name[] = {"none", "queued", "active", "deferred", "held", "done"};

static void qid(uint64_t id, char out[SPOOL_QID_LEN + 1])
{
	spool_qid_format(id, out);
}

/* ---- lists ---------------------------------------------------------------------- */

static void list_del(struct deliver *d, struct qmsg *m)
{
	qsched_del(&d->sched, m);
}

static void list_set(struct deliver *d, struct qmsg *m, enum qmsg_where w)
{
	qsched_set(&d->sched, m, w);
}

static void rec_mark(struct deliver *d, struct qmsg *m)
{
	if (m->rlisted)
		return;
	m->rlisted = true;
	m->rnext = NULL;
	if (d->rec_tail)
		d->rec_tail->rnext = m;
	else
		d->rec_head = m;
	d->rec_tail = m;
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

int deliver_new(struct deliver **out, const struct deliver_params *p, struct deliver_loaded *loaded,
		char *why, size_t why_len)
{
	struct deliver *d = calloc(1, sizeof(*d));
	const struct rmx_config *cfg = p->cfg;
	int64_t now = time(NULL);
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
		d->ix = loaded->ix;
		d->segs = loaded->segs;
		d->dirfd = loaded->dirfd;
		free(loaded);
		for (uint32_t b = 0; b <= d->ix.mask; b++)
			for (struct qmsg *m = d->ix.table[b]; m; m = m->hnext) {
				if (m->flags & SPOOL_STATE_HELD)
					list_set(d, m, QW_HELD);
				else if (m->next_s > now)
					list_set(d, m, QW_DEFERRED);
				else
					list_set(d, m, QW_READY);
			}
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

void deliver_free(struct deliver *d)
{
	if (!d)
		return;
	if (d->dns)
		dns_free(d->dns);
	oc_table_free(d);
	/* A helper still running a job of ours reads these: leave them to the
	 * process exit rather than free them under it. */
	if (d->helper_jobs == 0 && d->tickets_out == 0 && d->running == 0)
		qindex_free(&d->ix);
	qseg_table_free(&d->segs);
	if (d->dirfd >= 0)
		close(d->dirfd);
	free(d->rec);
	free(d);
}

/* ---- entering the queue --------------------------------------------------------------- */

static struct qmsg *enqueue(struct deliver *d, const struct spool_msg *sm)
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
	list_set(d, m, d->core.stopping ? QW_DEFERRED : QW_READY);
	return m;
fail:
	/* It is on disk: the next start picks it up. */
	log_msg(LOG_ERROR, "event=enqueue_failed shard=%u id=%016llX error=\"out of memory\"",
		d->core.shard, (unsigned long long)sm->id);
	return NULL;
}

void deliver_committed(struct deliver *d, const struct spool_msg *m)
{
	enqueue(d, m);
}

/* ---- attempts --------------------------------------------------------------------- */

static const char *rcpt_domain(const struct spool_rcpt *r, const char *fallback, size_t *len)
{
	for (uint32_t i = r->addr.len; i > 0; i--)
		if (r->addr.ptr[i - 1] == '@') {
			*len = r->addr.len - i;
			return r->addr.ptr + i;
		}
	*len = strlen(fallback); /* <Postmaster> */
	return fallback;
}

/* Copy s into out[cap] NUL-terminated, cut before a UTF-8 character that
 * does not fit whole (a reply may hold UTF-8; the DSN keeps it). */
static void copy_text(char *out, size_t cap, const char *s)
{
	size_t n = strlen(s), k = n < cap ? n : cap - 1;

	if (k < n) {
		while (k > 0 && ((unsigned char)s[k] & 0xc0) == 0x80)
			k--;
	}
	memcpy(out, s, k);
	out[k] = '\0';
}

static void set_res(struct qmsg *m, uint32_t r, int cls, const char *status, const char *diag)
{
	struct qrcpt_res *res = &m->res[r];

	res->cls = (uint8_t)cls;
	res->success = QRCPT_SUCCESS_NONE;
	res->mta[0] = '\0';
	snprintf(res->status, sizeof(res->status), "%s", status);
	copy_text(res->diag, sizeof(res->diag), diag);
}

static_assert(sizeof(((struct qrcpt_res *)0)->mta) >= sizeof(((struct dhop *)0)->host) &&
		  sizeof(((struct qrcpt_res *)0)->mta) >= INET6_ADDRSTRLEN + 7,
	      "qrcpt_res.mta holds an MX name and an IPv6 address literal");

/* RFC 3464 2.3.5: the MTA that answered for the job's recipients: the MX
 * host's name when reached through MX, else the address literal of the
 * hop in RFC 5321 4.1.3 form.  None for local delivery, or when no hop
 * was reached (every one failed: the job is past its last). */
static void job_remote_mta(const struct djob *job, char *out, size_t cap)
{
	char ip[INET6_ADDRSTRLEN] = "";

	out[0] = '\0';
	if (job->cur >= job->nhops)
		return;
	const struct dhop *h = &job->hops[job->cur];
	if (job->route->hops[0].kind == CONFIG_HOP_MX) {
		snprintf(out, cap, "%s", h->host);
	} else if (h->addr.ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&h->addr)->sin6_addr, ip,
			  sizeof(ip));
		snprintf(out, cap, "[IPv6:%s]", ip);
	} else {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)&h->addr)->sin_addr, ip,
			  sizeof(ip));
		snprintf(out, cap, "[%s]", ip);
	}
}

/* RFC 3461 5.2.2.2 and 4.1: who reports a success.  A hop that offered
 * DSN got NOTIFY and reports itself; otherwise we do: "relayed" when an
 * SMTP hop took it, "delivered" when LMTP or a mailbox was the final
 * delivery. */
static enum qrcpt_success job_success(const struct djob *job)
{
	enum config_hop_kind kind = job->route->hops[0].kind;

	if (kind == CONFIG_HOP_MAILDIR || kind == CONFIG_HOP_MBOX)
		return QRCPT_SUCCESS_DELIVERED;
	assert(job->cur < job->nhops);
	if (job->hop_dsn)
		return QRCPT_SUCCESS_NONE;
	return job->hops[job->cur].lmtp ? QRCPT_SUCCESS_DELIVERED : QRCPT_SUCCESS_RELAYED;
}

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
static bool success_reported(const struct qmsg *m, uint32_t r)
{
	const struct qrcpt_res *res = &m->res[r];
	struct spool_rcpt rc;

	if (res->cls != 2 || res->success == QRCPT_SUCCESS_NONE || !dsn_needed(&m->env) ||
	    spool_env_rcpt(&m->env, r, &rc) != 0)
		return false;
	return dsn_should_notify(rc.notify, success_action(res->success), false);
}

static void attempt_finish(struct deliver *d, struct qmsg *m);
static void job_go(struct deliver *d, struct djob *job);
static void ticket_done(struct deliver *d, struct dticket *t);

void dlv_rcpt_result(struct deliver *d, struct djob *job, uint32_t i, int cls, const char *status,
		     const char *diag)
{
	struct qmsg *m = job->m;
	uint32_t r = job->rcpt[i];
	struct spool_rcpt rc;
	char id[SPOOL_QID_LEN + 1];

	set_res(m, r, cls, status, diag);
	job_remote_mta(job, m->res[r].mta, sizeof(m->res[r].mta));
	if (cls == 2)
		m->res[r].success = (uint8_t)job_success(job);
	spool_env_rcpt(&m->env, r, &rc);
	qid(m->id, id);
	log_msg(LOG_INFO,
		"event=%s id=%s rcpt=<%.*s> shard=%u relay=%s tls=\"%s\" status=%s reply=\"%s\"",
		cls == 2   ? "delivered"
		: cls == 5 ? "bounced"
			   : "deferred",
		id, (int)rc.addr.len, rc.addr.ptr, d->core.shard,
		job->nhops ? job->hops[job->cur < job->nhops ? job->cur : 0].name
			   : job->route->hops[0].text,
		job->tls_info[0] ? job->tls_info : "none", status, diag);
}

static void job_free(struct djob *job)
{
	free(job->rcpt);
	free(job);
}

void dlv_job_done(struct deliver *d, struct djob *job)
{
	struct qmsg *m = job->m;

	for (uint32_t i = 0; i < job->nrcpt; i++)
		if (m->res[job->rcpt[i]].cls == 0)
			dlv_rcpt_result(d, job, i, 4, "4.4.1",
					job->last_err[0] ? job->last_err : "no answer");
	struct dticket *t = job->t;

	job_free(job);
	if (--t->jobs == 0)
		ticket_done(d, t);
}

void dlv_job_hop_failed(struct deliver *d, struct djob *job, const char *why)
{
	snprintf(job->last_err, sizeof(job->last_err), "X-ringmx; %s: %s", job->hops[job->cur].name,
		 why);
	job->cur++;
	job_go(d, job);
}

void dlv_job_again(struct deliver *d, struct djob *job)
{
	assert(job->cur < job->nhops);
	job_go(d, job);
}

void dlv_conn_freed(struct deliver *d)
{
	d->kick = true;
}

static void wait_add(struct deliver *d, struct djob *job)
{
	job->waiting = true;
	job->next = NULL;
	job->prev = d->wait_tail;
	if (d->wait_tail)
		d->wait_tail->next = job;
	else
		d->wait_head = job;
	d->wait_tail = job;
}

static void wait_del(struct deliver *d, struct djob *job)
{
	if (job->prev)
		job->prev->next = job->next;
	else
		d->wait_head = job->next;
	if (job->next)
		job->next->prev = job->prev;
	else
		d->wait_tail = job->prev;
	job->waiting = false;
	job->next = job->prev = NULL;
}

/* ---- local delivery (helper thread) ----------------------------------------------------- */

struct membuf {
	char *p;
	size_t len, cap, rd;
};

static int membuf_put(void *ctx, const char *p, size_t n)
{
	struct membuf *b = ctx;

	if (b->len + n > b->cap) {
		size_t nc = b->cap ? b->cap * 2 : 65536;
		char *t;

		while (nc < b->len + n)
			nc *= 2;
		t = realloc(b->p, nc);
		if (!t)
			return -ENOMEM;
		b->p = t;
		b->cap = nc;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

static int membuf_read(void *ctx, char *buf, size_t cap, size_t *got)
{
	struct membuf *b = ctx;
	size_t n = b->len - b->rd < cap ? b->len - b->rd : cap;

	memcpy(buf, b->p + b->rd, n);
	b->rd += n;
	*got = n;
	return 0;
}

static int local_job(void *arg)
{
	struct dlocal *lj = arg;
	struct djob *job = lj->job;
	const struct qmsg *m = job->m;
	struct membuf b = {0};
	char sender[SMTP_PATH_MAX + 1], rcpt[SMTP_PATH_MAX + 1];
	int rc = spool_message_read(lj->segfd, &m->env, m->commit_off, membuf_put, &b);

	snprintf(sender, sizeof(sender), "%.*s", (int)m->env.mail_from.len, m->env.mail_from.ptr);
	for (uint32_t i = 0; i < job->nrcpt; i++) {
		struct local_result res = {0};
		struct spool_rcpt r;

		if (rc < 0) {
			lj->out[i].cls = 4;
			snprintf(lj->out[i].status, sizeof(lj->out[i].status), "4.3.0");
			snprintf(lj->out[i].diag, sizeof(lj->out[i].diag),
				 "X-ringmx; spool read: %s", strerror(-rc));
			continue;
		}
		spool_env_rcpt(&m->env, job->rcpt[i], &r);
		snprintf(rcpt, sizeof(rcpt), "%.*s", (int)r.addr.len, r.addr.ptr);
		b.rd = 0;
		struct local_msg lm = {.read = membuf_read,
				       .ctx = &b,
				       .sender = sender,
				       .rcpt = rcpt,
				       .dot_stuffed = (m->env.flags & SPOOL_ENV_STUFFED) != 0};
		if (lj->mbox)
			local_mbox_deliver(lj->base, &lm, &res);
		else
			local_maildir_deliver(lj->base, &lm, &res);
		lj->out[i].cls = res.cls == LOCAL_DELIVERED ? 2 : res.cls == LOCAL_TEMPFAIL ? 4 : 5;
		snprintf(lj->out[i].status, sizeof(lj->out[i].status), "%s",
			 res.status ? res.status : "4.3.0");
		snprintf(lj->out[i].diag, sizeof(lj->out[i].diag), "X-ringmx; %s", res.diag);
	}
	free(b.p);
	return 0;
}

static bool local_start(struct deliver *d, struct djob *job)
{
	const struct config_hop *h = &job->route->hops[0];
	struct dlocal *lj = calloc(1, sizeof(*lj));
	int rc;

	if (!lj || !(lj->out = calloc(job->nrcpt, sizeof(lj->out[0])))) {
		free(lj);
		return false;
	}
	lj->job = job;
	lj->base = h->path;
	lj->mbox = h->kind == CONFIG_HOP_MBOX;
	lj->segfd = job->segfd;
	rc = hpool_submit_job(d->pool, d->core.shard, 1, local_job, lj);
	if (rc < 0) {
		free(lj->out);
		free(lj);
		return false;
	}
	d->helper_jobs++;
	return true;
}

static void local_done(struct deliver *d, struct dlocal *lj)
{
	struct djob *job = lj->job;

	for (uint32_t i = 0; i < job->nrcpt; i++)
		dlv_rcpt_result(d, job, i, lj->out[i].cls, lj->out[i].status, lj->out[i].diag);
	free(lj->out);
	free(lj);
	dlv_job_done(d, job);
}

/* ---- MX ------------------------------------------------------------------------------- */

static void mx_done(void *arg, const struct dns_mx_result *res)
{
	struct djob *job = arg;
	struct deliver *d = job->d;
	char diag[DLV_ERR_MAX];

	job->dns_wait = false;
	if (res->status == DNS_NULLMX || res->status == DNS_NXDOMAIN || res->status == DNS_NOADDR) {
		const char *st = res->status == DNS_NULLMX ? "5.1.10" : "5.1.2";

		snprintf(diag, sizeof(diag), "X-ringmx; %s: %s", res->domain,
			 res->status == DNS_NULLMX
			     ? "the domain accepts no mail (null MX, RFC 7505)"
			 : res->why[0] ? res->why
				       : dns_status_name(res->status));
		for (uint32_t i = 0; i < job->nrcpt; i++)
			dlv_rcpt_result(d, job, i, 5, st, diag);
		dlv_job_done(d, job);
		return;
	}
	if (res->status != DNS_OK) {
		snprintf(job->last_err, sizeof(job->last_err), "X-ringmx; DNS for %s: %s",
			 res->domain, res->why[0] ? res->why : dns_status_name(res->status));
		dlv_job_done(d, job);
		return;
	}
	job->nhops = 0;
	for (uint32_t h = 0; h < res->host_count; h++) {
		const struct dns_mx_host *mh = &res->hosts[h];

		for (uint32_t a = 0; a < mh->addr_count && job->nhops < DLV_HOPS_MAX; a++) {
			struct dhop *hp = &job->hops[job->nhops++];
			char ip[INET6_ADDRSTRLEN];

			memset(hp, 0, sizeof(*hp));
			if (mh->addrs[a].sa.sa_family == AF_INET6) {
				hp->addr = (struct sockaddr_storage){0};
				memcpy(&hp->addr, &mh->addrs[a].v6, sizeof(mh->addrs[a].v6));
				((struct sockaddr_in6 *)&hp->addr)->sin6_port = htons(25);
				hp->len = sizeof(struct sockaddr_in6);
				inet_ntop(AF_INET6, &mh->addrs[a].v6.sin6_addr, ip, sizeof(ip));
			} else {
				memcpy(&hp->addr, &mh->addrs[a].v4, sizeof(mh->addrs[a].v4));
				((struct sockaddr_in *)&hp->addr)->sin_port = htons(25);
				hp->len = sizeof(struct sockaddr_in);
				inet_ntop(AF_INET, &mh->addrs[a].v4.sin_addr, ip, sizeof(ip));
			}
			snprintf(hp->name, sizeof(hp->name), "%.60s[%s]:25", mh->name, ip);
			snprintf(hp->host, sizeof(hp->host), "%s", mh->name);
			hp->tls = (uint8_t)job->route->tls;
			hp->route = (uint16_t)(job->route - d->core.cfg->routes);
		}
	}
	job->cur = 0;
	job_go(d, job);
}

/* ---- jobs ------------------------------------------------------------------------------ */

static void job_go(struct deliver *d, struct djob *job)
{
	enum config_hop_kind kind = job->route->hops[0].kind;

	if (kind == CONFIG_HOP_MAILDIR || kind == CONFIG_HOP_MBOX) {
		if (!local_start(d, job))
			wait_add(d, job);
		return;
	}
	if (job->cur >= job->nhops) {
		if (!job->last_err[0])
			snprintf(job->last_err, sizeof(job->last_err), "X-ringmx; no next hop");
		dlv_job_done(d, job);
		return;
	}
	if (!oc_assign(d, job))
		wait_add(d, job);
}

static void job_start(struct deliver *d, struct djob *job)
{
	const struct config_route *rt = job->route;

	if (rt->hops[0].kind == CONFIG_HOP_MX) {
		int rc = dns_resolve_mx(d->dns, job->domain, mx_done, job);

		if (rc == 0) {
			job->dns_wait = true;
			return;
		}
		snprintf(job->last_err, sizeof(job->last_err), "X-ringmx; DNS for %s: %s",
			 job->domain, rc == -EINVAL ? "not a domain name" : strerror(-rc));
		if (rc == -EINVAL) {
			for (uint32_t i = 0; i < job->nrcpt; i++)
				dlv_rcpt_result(d, job, i, 5, "5.1.2", job->last_err);
		}
		dlv_job_done(d, job);
		return;
	}
	if (rt->hops[0].kind == CONFIG_HOP_SMTP || rt->hops[0].kind == CONFIG_HOP_LMTP) {
		for (uint32_t h = 0; h < rt->hop_count && h < DLV_HOPS_MAX; h++) {
			struct dhop *hp = &job->hops[h];

			memset(hp, 0, sizeof(*hp));
			memcpy(&hp->addr, &rt->hops[h].addr, rt->hops[h].addr_len);
			hp->len = rt->hops[h].addr_len;
			hp->lmtp = rt->hops[h].kind == CONFIG_HOP_LMTP;
			snprintf(hp->name, sizeof(hp->name), "%s", rt->hops[h].text);
			hp->tls = (uint8_t)rt->tls;
			hp->route = (uint16_t)(rt - d->core.cfg->routes);
			/* An IP route: a certificate is checked against the address. */
			getnameinfo((struct sockaddr *)&hp->addr, hp->len, hp->host,
				    sizeof(hp->host), NULL, 0, NI_NUMERICHOST);
		}
		job->nhops = rt->hop_count;
	}
	job_go(d, job);
}

/* Run a ticket (ours or another shard's): group its pending recipients by
 * route into jobs and start them.  Writes only m->res[]. */
static void ticket_run(struct deliver *d, struct dticket *t)
{
	struct qmsg *m = t->m;
	struct djob *jobs[64];
	uint32_t njobs = 0;

	assert(m != NULL && t->owner < d->core.shards);
	d->running++;
	for (uint32_t r = 0; r < m->env.rcpt_count; r++) {
		struct spool_rcpt rc;
		const struct config_route *rt;
		const char *dom;
		size_t dlen;
		char domain[SMTP_DOMAIN_MAX + 1];
		struct djob *job = NULL;

		if (m->rst[r] != SPOOL_RCPT_PENDING && m->rst[r] != SPOOL_RCPT_DEFERRED)
			continue;
		spool_env_rcpt(&m->env, r, &rc);
		dom = rcpt_domain(&rc, d->core.cfg->hostname, &dlen);
		snprintf(domain, sizeof(domain), "%.*s", (int)dlen, dom);
		rt = config_route_find(d->core.cfg, domain, strlen(domain));
		if (!rt) {
			char diag[DLV_ERR_MAX];

			snprintf(diag, sizeof(diag), "X-ringmx; no route for domain %s", domain);
			set_res(m, r, 4, "4.3.5", diag);
			continue;
		}
		for (uint32_t j = 0; j < njobs; j++)
			if (jobs[j]->route == rt && (rt->hops[0].kind != CONFIG_HOP_MX ||
						     strcasecmp(jobs[j]->domain, domain) == 0))
				job = jobs[j];
		if (!job && njobs < 64) {
			job = calloc(1, sizeof(*job));
			if (job)
				job->rcpt = malloc(m->env.rcpt_count * (sizeof(uint32_t) + 1));
			if (!job || !job->rcpt) {
				free(job);
				job = NULL;
			} else {
				job->acc = (uint8_t *)(job->rcpt + m->env.rcpt_count);
				job->d = d;
				job->t = t;
				job->segfd = t->segfd;
				job->m = m;
				job->route = rt;
				snprintf(job->domain, sizeof(job->domain), "%s", domain);
				jobs[njobs++] = job;
			}
		}
		if (!job) {
			set_res(m, r, 4, "4.3.0", "X-ringmx; out of resources, will retry");
			continue;
		}
		job->acc[job->nrcpt] = 0;
		job->rcpt[job->nrcpt++] = r;
	}
	t->jobs = njobs + 1; /* held until every job started */
	for (uint32_t j = 0; j < njobs; j++)
		job_start(d, jobs[j]);
	if (--t->jobs == 0)
		ticket_done(d, t);
}

/* Owner: a ticket came back; its answers become the message's state. */
static void ticket_apply(struct deliver *d, struct dticket *t)
{
	struct qmsg *m = t->m;

	assert(t->owner == d->core.shard && d->tickets_out > 0);
	free(t);
	d->tickets_out--;
	/* A delivery whose success we report stays pending until that report
	 * is durable, as a bounce does (report_settle). */
	for (uint32_t i = 0; i < m->env.rcpt_count; i++)
		if (m->res[i].cls == 2 && !success_reported(m, i))
			m->rst[i] = SPOOL_RCPT_DELIVERED;
	attempt_finish(d, m);
}

/* Every job of the ticket answered: back to its owner. */
static void ticket_done(struct deliver *d, struct dticket *t)
{
	assert(d->running > 0 && t->jobs == 0);
	d->running--;
	if (t->owner == d->core.shard) {
		ticket_apply(d, t);
		return;
	}
	dq_hand_back(d->shared, t->owner, t);
}

void deliver_wake(struct deliver *d)
{
	struct dticket *t;

	while ((t = dq_take_back(d->shared, d->core.shard)) != NULL)
		ticket_apply(d, t);
}

/* Owner: an attempt of m goes on the shared queue.  false when the queue
 * is full (m stays ready for the next turn). */
static bool attempt_begin(struct deliver *d, struct qmsg *m)
{
	struct dticket *t;

	if (!m->res)
		m->res = calloc(m->env.rcpt_count ? m->env.rcpt_count : 1, sizeof(*m->res));
	t = calloc(1, sizeof(*t));
	if (!m->res || !t || d->tickets_out >= DQ_OUT_MAX) {
		free(t);
		return false;
	}
	for (uint32_t r = 0; r < m->env.rcpt_count; r++)
		m->res[r].cls = 0;
	t->m = m;
	t->owner = d->core.shard;
	t->segfd = dlv_seg_fd(d, m->seq);
	qseg_key(&d->segs, m->seq, &t->segkey);
	if (!dq_put(d->shared, t)) {
		free(t);
		return false;
	}
	list_set(d, m, QW_ACTIVE);
	m->attempts++;
	d->tickets_out++;
	assert(d->tickets_out <= DQ_OUT_MAX);
	return true;
}

/* ---- finishing an attempt ---------------------------------------------------------------- */

static void report_start(struct deliver *d, struct qmsg *m, enum dlv_report kind, uint32_t from,
			 bool content_sent);
static int ctl_bounce_now(struct deliver *d, struct qmsg *m);

static void message_done(struct deliver *d, struct qmsg *m)
{
	char id[SPOOL_QID_LEN + 1];

	qid(m->id, id);
	log_msg(LOG_INFO, "event=done id=%s attempts=%u", id, m->attempts);
	m->done_dirty = true;
	list_set(d, m, QW_DONE);
	rec_mark(d, m);
}

/* Recipients are settled (bounces queued): done, or deferred until the next
 * attempt on the schedule. */
static void settle(struct deliver *d, struct qmsg *m)
{
	const struct config_delivery *dc = &d->core.cfg->delivery;
	int64_t now = time(NULL);

	if (qmsg_pending(m) == 0 || m->delete_req) {
		message_done(d, m);
		return;
	}
	m->next_s = qsched_next_attempt(dc->retry_s, dc->retry_count, m->attempts, m->env.arrival_s,
					dc->max_age_s, now);
	m->error[0] = '\0';
	for (uint32_t r = 0; r < m->env.rcpt_count; r++)
		if (m->rst[r] == SPOOL_RCPT_PENDING || m->rst[r] == SPOOL_RCPT_DEFERRED) {
			m->rst[r] = SPOOL_RCPT_DEFERRED;
			if (!m->error[0] && m->res[r].diag[0])
				snprintf(m->error, sizeof(m->error), "%s", m->res[r].diag);
		}
	m->state_dirty = true;
	rec_mark(d, m);
	list_set(d, m, (m->flags & SPOOL_STATE_HELD) ? QW_HELD : QW_DEFERRED);
	if (dc->delay_notice_s && !m->delay_sent && now - m->env.arrival_s >= dc->delay_notice_s) {
		m->delay_sent = true;
		report_start(d, m, DLV_REPORT_DELAY, 0, false);
	}
}

static void log_bounced(const struct qmsg *m, uint32_t r, const char *why)
{
	char id[SPOOL_QID_LEN + 1];
	struct spool_rcpt rc;

	qid(m->id, id);
	spool_env_rcpt(&m->env, r, &rc);
	log_msg(LOG_INFO, "event=bounced id=%s rcpt=<%.*s> reason=%s status=%s reply=\"%s\"", id,
		(int)rc.addr.len, rc.addr.ptr, why, m->res[r].status, m->res[r].diag);
}

static void attempt_finish(struct deliver *d, struct qmsg *m)
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
			set_res(m, r, 5, "5.0.0", "X-ringmx; bounced by the postmaster");
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
		message_done(d, m);
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
	int rc = membuf_put(&mb, p, n);

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
			m->rst[r] = SPOOL_RCPT_BOUNCED;
		} else if (m->res[r].cls == 2) {
			m->rst[r] = SPOOL_RCPT_DELIVERED;
			lost += success_reported(m, r) && !ok;
		}
	}
	if (lost) {
		char id[SPOOL_QID_LEN + 1];

		qid(m->id, id);
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
	else if (kind == DLV_REPORT_OUTCOME && success_reported(m, r))
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
		message_done(d, m);
	else
		list_set(d, m, (m->flags & SPOOL_STATE_HELD) ? QW_HELD : QW_DEFERRED);
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
		qid(m->id, id);
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
	list_set(d, m, QW_ACTIVE);
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
		m->rst[b->rcpt[i]] = b->results[i].action == DSN_ACTION_FAILED
					 ? SPOOL_RCPT_BOUNCED
					 : SPOOL_RCPT_DELIVERED;
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

		qid(b->orig->id, id);
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

	qid(o->id, id);
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
	list_del(d, o);
	qseg_unref(&d->segs, o->seq);
	qindex_remove(&d->ix, o);
	n = enqueue(d, &b->sm);
	if (n) {
		n->attempts = attempts;
		n->flags = flags;
		n->next_s = next_s;
		memcpy(n->error, error, sizeof(error));
		for (uint32_t r = 0; r < n->env.rcpt_count; r++)
			n->rst[r] = SPOOL_RCPT_DEFERRED;
		list_set(d, n, where == QW_HELD ? QW_HELD : QW_DEFERRED);
		n->state_dirty = true;
		rec_mark(d, n);
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

	qid(b->orig->id, id);
	qid(sm->id, nid);
	sm->committing = false;
	if (res == 0) {
		log_msg(LOG_INFO, "event=bounce_queued id=%s dsn=%s action=%s rcpts=%u", id, nid,
			report_word(b), b->n);
		enqueue(d, sm);
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
		local_done(d, done->arg);
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

	b->rc = spool_message_read(b->segfd, &b->orig->env, b->orig->commit_off, bounce_sink, b);
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
static void move_forward(struct deliver *d)
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
		oc_complete(d, ud, res);
		break;
	}
}

/* ---- the loop's hooks -------------------------------------------------------------------- */

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void ctl_expire(struct deliver *d);

void deliver_tick(struct deliver *d)
{
	int64_t now = time(NULL);

	d->core.now_ms = mono_ms();
	oc_tick(d);
	if (!d->core.stopping)
		qsched_sweep(&d->sched, now);
	move_forward(d);
	ctl_expire(d);
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
		m->rlisted = false;
		m->state_dirty = false;
		if (m->done_dirty) {
			list_del(d, m);
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
			job_go(d, job); /* back on the list if it still cannot go */
			job = next;
		}
	}
	/* Bounded per turn, so a big queue does not starve the listeners. */
	uint32_t queued = 0;

	for (uint32_t n = 0; n < 64 && d->sched.head[QW_READY] && !d->core.stopping; n++) {
		struct qmsg *m = d->sched.head[QW_READY];

		if (m->moving) /* flushed while its copy is being written */
			list_set(d, m, QW_DEFERRED);
		else if ((m->flags & SPOOL_STATE_BOUNCE) && !m->bounce_wait)
			ctl_bounce_now(d, m); /* asked before a restart */
		else if (attempt_begin(d, m))
			queued++;
		else
			break;
	}
	/* Take tickets (ours or anyone's) while there is room to run them. */
	uint32_t run_max = dq_run_max(d->core.cfg->delivery.connections_per_route, d->core.shards);
	uint32_t shards = dq_shards(d->shared);
	struct dticket *t;

	while (!d->core.stopping && d->running < run_max && (t = dq_take(d->shared)) != NULL)
		ticket_run(d, t);
	/* More than we can run: another shard helps. */
	if (queued && shards > 1 && dq_waiting(d->shared))
		dq_wake(d->shared, (d->core.shard + 1) % shards);
	write_records(d);
	if (d->core.stopping)
		spool_flush_states(d->spool);
	qseg_reclaim(&d->segs, spool_current_seq(d->spool), &reclaim_ops, d);
}

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

	qid(m->id, id);
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
	ctl_printf(req,
		   "%s size=%" PRIu64 " from=%s rcpts=%u arrival=%" PRId64
		   " state=%s attempts=%u next=%s error=\"%s\"\n",
		   id, spool_env_size(&m->env), from, qmsg_pending(m), m->env.arrival_s,
		   (m->flags & SPOOL_STATE_HELD) ? "held" : where_name[m->where], m->attempts, next,
		   err);
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
	rec_mark(d, m);
}

/* A command whose records found no segment to go to (the current one was
 * sealed by a failed write and none opens: the disk is full) is answered
 * with the spool's error after DLV_CTL_WAIT_MS.  Its change stays in
 * memory and its record is written once a segment takes records again;
 * the operator was told it is not durable.  Records already in a batch
 * are answered by their write. */
static void ctl_expire(struct deliver *d)
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
static int ctl_bounce_now(struct deliver *d, struct qmsg *m)
{
	if (!m->res)
		m->res = calloc(m->env.rcpt_count ? m->env.rcpt_count : 1, sizeof(*m->res));
	if (!m->res)
		return -ENOMEM;
	list_set(d, m, QW_ACTIVE);
	m->bounce_all = true;
	attempt_finish(d, m);
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
			list_set(d, m, QW_READY);
		m->next_s = 0;
		break;
	case DCTL_HOLD:
		m->flags |= SPOOL_STATE_HELD;
		if (m->where == QW_READY || m->where == QW_DEFERRED)
			list_set(d, m, QW_HELD);
		break;
	case DCTL_RELEASE:
		/* Back on its schedule, like postsuper -H; flush sends it now. */
		m->flags &= (uint8_t)~SPOOL_STATE_HELD;
		if (m->where == QW_HELD)
			list_set(d, m, m->next_s > time(NULL) ? QW_DEFERRED : QW_READY);
		break;
	case DCTL_DELETE:
		/* Recorded now: an attempt running may finish later, or never. */
		m->flags |= SPOOL_STATE_DELETED;
		m->delete_req = true;
		if (m->where != QW_ACTIVE)
			message_done(d, m);
		break;
	case DCTL_BOUNCE: {
		int rc = 0;

		m->flags |= SPOOL_STATE_BOUNCE;
		if (m->where == QW_ACTIVE)
			m->bounce_all = true;
		else
			rc = ctl_bounce_now(d, m);
		if (rc < 0)
			return rc;
		break;
	}
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
			qid(m->id, id);
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
		qid(m->id, id);
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

/* ---- stop ----------------------------------------------------------------------------------- */

void deliver_stop(struct deliver *d)
{
	struct dticket *t;

	d->core.stopping = true;
	/* Tickets nobody ran: back to their owners unanswered (deferred). */
	while ((t = dq_take(d->shared)) != NULL) {
		d->running++;
		ticket_done(d, t);
	}
	for (struct djob *job = d->wait_head, *next; job; job = next) {
		next = job->next;
		wait_del(d, job);
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
