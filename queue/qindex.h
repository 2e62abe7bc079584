/*
 * queue/qindex — one shard's table of queued messages: what is still to be
 * delivered, per recipient, and where its bytes are.
 *
 * Owns: struct qmsg entries (one heap block each: the entry, its encoded
 * envelope and its recipient states) and the id hash.  Thread: the shard
 * that owns the spool directory, after qindex_load() ran at start-up on
 * the main thread.
 *
 * A message enters when its commit is durable (qindex_add) or at start-up
 * from the segments (qindex_load: every COMMIT whose body verifies, with
 * the last RCPT_STATE snapshot applied, minus those with a DONE record).
 * It leaves when every recipient is delivered or bounced (qindex_remove).
 */
#ifndef RMX_QUEUE_QINDEX_H
#define RMX_QUEUE_QINDEX_H

#include <stdbool.h>
#include <stdint.h>

#include "queue/record.h"

/* Where a message is in the engine (qmsg.where). */
enum qmsg_where {
	QW_NONE = 0,
	QW_READY,    /* due: waiting for a delivery attempt */
	QW_ACTIVE,   /* an attempt is running */
	QW_DEFERRED, /* waiting for next_s */
	QW_HELD,     /* held by the operator */
	QW_DONE,     /* finished: records being written, then freed */
};

/* Who reports a recipient's delivery to a sender who asked with
 * NOTIFY=SUCCESS (RFC 3461 5.2.2.2). */
enum qrcpt_success {
	QRCPT_SUCCESS_NONE = 0,	 /* not delivered, or the hop took NOTIFY and reports */
	QRCPT_SUCCESS_DELIVERED, /* we do, "delivered": LMTP without DSN, Maildir, mbox */
	QRCPT_SUCCESS_RELAYED,	 /* we do, "relayed": an SMTP hop without DSN */
};

/* One recipient's outcome of the current attempt, kept for the DSN. */
struct qrcpt_res {
	uint8_t cls;	 /* this attempt: 0 no answer yet, 2, 4 or 5 */
	uint8_t success; /* cls 2: enum qrcpt_success */
	char status[12]; /* "5.1.1" */
	char diag[240];	 /* "smtp; 550 5.1.1 no such user" */
	/* RFC 3464 2.3.5 Remote-MTA, "" if none: the MX host's name, or the
	 * hop's address literal "[192.0.2.1]" / "[IPv6:2001:db8::1]". */
	char mta[256];
};

struct spool_note;

struct qmsg {
	uint64_t id;
	uint64_t seq;	      /* segment holding its chunks and COMMIT */
	uint64_t commit_off;  /* offset of its COMMIT record */
	struct spool_env env; /* decoded from enc */
	uint8_t *enc;
	uint32_t enc_len;
	uint8_t *rst;	       /* env.rcpt_count x enum spool_rcpt_state */
	struct qrcpt_res *res; /* env.rcpt_count, allocated on first failure */
	uint16_t attempts;
	uint8_t flags;	/* SPOOL_STATE_HELD */
	int64_t next_s; /* next attempt, unix seconds; 0: now */
	char error[SPOOL_STATE_ERR_MAX + 1];
	/* engine state */
	uint8_t where;	  /* enum qmsg_where */
	bool delay_sent;  /* a delay notice went out (not persisted) */
	bool bounce_all;  /* operator asked for a bounce */
	bool state_dirty; /* a snapshot record is still to be written */
	bool done_dirty;  /* the DONE record is still to be written */
	bool bounce_wait; /* a bounce is being built and queued */
	bool delete_req;  /* operator asked for a delete */
	bool moving;	  /* being re-written into the current segment */
	bool rlisted;	  /* on the engine's record list */
	/* An operator's command waits for this message's next record to be
	 * durable (deliver.c's control); NULL when none. */
	struct spool_note *ctl_note;
	struct qmsg *rnext;
	struct qmsg *hnext;
	struct qmsg *next, *prev; /* the engine's list for `where` */
};

struct qindex {
	struct qmsg **table;
	uint32_t mask;
	uint32_t count;
};

int qindex_init(struct qindex *ix);
void qindex_free(struct qindex *ix); /* frees every entry */

/* A new entry from an encoded envelope (copied), all recipients pending.
 * NULL on a bad envelope or no memory. */
struct qmsg *qindex_add(struct qindex *ix, uint64_t seq, uint64_t commit_off, const uint8_t *enc,
			uint32_t enc_len);
struct qmsg *qindex_find(const struct qindex *ix, uint64_t id);
/* Unlink and free. */
void qindex_remove(struct qindex *ix, struct qmsg *m);

/* Recipient r of m becomes st.  Only an unfinished recipient (pending or
 * deferred) changes: a delivered or bounced one is final (asserted), so a
 * delivery or a bounce can never be undone or made twice in the index. */
void qmsg_rcpt_set(struct qmsg *m, uint32_t r, enum spool_rcpt_state st);
/* Apply a RCPT_STATE snapshot. */
void qmsg_apply_state(struct qmsg *m, const struct spool_state *st);
/* Encode m's snapshot into out (SPOOL_STATE_MAX); returns its length. */
uint32_t qmsg_state_encode(const struct qmsg *m, uint8_t *out, size_t cap);
/* Recipients not yet delivered or bounced. */
uint32_t qmsg_pending(const struct qmsg *m);

/* Start-up (blocking, before the shard runs): load <root>/<shard>'s
 * segments in sequence order.  Segment seqs with at least one live message
 * are reported through seg_fn (with the count) so the caller can keep them.
 * 0 or -errno with why. */
typedef void (*qindex_seg_fn)(void *ctx, uint64_t seq, uint32_t live);
int qindex_load(struct qindex *ix, const char *root, uint32_t shard, qindex_seg_fn seg_fn,
		void *ctx, char *why, size_t why_len);

#endif
