/*
 * deliver/engine — what the files of the delivery engine share: struct
 * deliver and the calls from one concern to another.  Not a public
 * interface (deliver.h is), and not outbound.c's view (internal.h is).
 *
 *   deliver.c  life cycle, queue entry, the loop's hooks, records, stop
 *   jobs.c     attempts: tickets, routing and MX, jobs and their answers
 *   mailbox.c  local delivery on a helper thread
 *   report.c   settling an attempt, DSNs, moving old segments' mail forward
 *   ctl.c      queue-control requests
 *
 * Thread: the shard's (helper-thread entry points say so).
 */
#ifndef RMX_DELIVER_ENGINE_H
#define RMX_DELIVER_ENGINE_H

#include "deliver/internal.h"
#include "hpool/hpool.h"
#include "queue/dqueue.h"
#include "queue/qsched.h"
#include "queue/qseg.h"

#define DLV_UNLINKS_MAX 8

struct dunlink {
	bool busy;
	char name[SPOOL_SEG_NAME_MAX];
};

struct dbounce;
struct dlocal;

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

static inline void dlv_qid(uint64_t id, char out[SPOOL_QID_LEN + 1])
{
	spool_qid_format(id, out);
}

static inline void dlv_list_del(struct deliver *d, struct qmsg *m)
{
	qsched_del(&d->sched, m);
}

static inline void dlv_list_set(struct deliver *d, struct qmsg *m, enum qmsg_where w)
{
	qsched_set(&d->sched, m, w);
}

/* deliver.c */
/* m has a record to write (its state or DONE) at the end of the turn. */
void dlv_rec_mark(struct deliver *d, struct qmsg *m);
void dlv_rec_unlink(struct deliver *d, struct qmsg *m);
/* A committed message enters the queue (ready, or deferred while stopping). */
struct qmsg *dlv_enqueue(struct deliver *d, const struct spool_msg *sm);

/* jobs.c */
void dlv_set_res(struct qmsg *m, uint32_t r, int cls, const char *status, const char *diag);
/* Owner: an attempt of m goes on the shared queue; false when it is full. */
bool dlv_attempt_begin(struct deliver *d, struct qmsg *m);
/* Run a ticket (ours or another shard's). */
void dlv_ticket_run(struct deliver *d, struct dticket *t);
/* Every job of the ticket answered: back to its owner. */
void dlv_ticket_done(struct deliver *d, struct dticket *t);
/* Start the job on its current hop, or put it on the wait list. */
void dlv_job_go(struct deliver *d, struct djob *job);
void dlv_wait_del(struct deliver *d, struct djob *job);

/* mailbox.c */
struct membuf {
	char *p;
	size_t len, cap, rd;
};
int dlv_membuf_put(void *ctx, const char *p, size_t n);
/* false: no memory or no helper slot (the job waits). */
bool dlv_local_start(struct deliver *d, struct djob *job);
void dlv_local_done(struct deliver *d, struct dlocal *lj);

/* report.c */
bool dlv_success_reported(const struct qmsg *m, uint32_t r);
/* Every job of m's attempt answered (or the operator bounced it). */
void dlv_attempt_finish(struct deliver *d, struct qmsg *m);
void dlv_message_done(struct deliver *d, struct qmsg *m);
/* Once a second: re-write the oldest segment's deferred mail forward. */
void dlv_move_forward(struct deliver *d);

/* ctl.c */
/* Bounce every recipient not yet delivered, now (no attempt first). */
int dlv_ctl_bounce_now(struct deliver *d, struct qmsg *m);
/* Answer commands whose records found no segment in time. */
void dlv_ctl_expire(struct deliver *d);

#endif
