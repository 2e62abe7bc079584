/*
 * spool_testlib — a real io_uring and a spool on a temporary directory for
 * the spool unit tests.
 *
 * The tests play the shard's loop by hand: spool_flush() ends a turn,
 * spt_reap() submits and collects completions WITHOUT handing them over, and
 * spt_hand() gives the collected ones to spool_complete() in an order the
 * test chooses.  So a test sees exactly what the spool does between a
 * write's completion and its sync's, whatever order the kernel finished
 * them in: no sleeps, no timing.
 *
 * A kernel (or a sandbox) without io_uring makes the test program exit 77
 * (meson's "skipped") with the reason on stderr.
 */
#ifndef RMX_TESTS_SPOOL_TESTLIB_H
#define RMX_TESTS_SPOOL_TESTLIB_H

#include <stdbool.h>
#include <stdint.h>

#include "queue/spool.h"
#include "ring/ring.h"

#define SPT_MAX_CB   512 /* callbacks remembered per kind */
#define SPT_MAX_CQE  512 /* completions collected and not yet handed over */
#define SPT_SHARD    3
#define SPT_FIRST_ID ((uint64_t)SPT_SHARD << 56)

struct spt {
	char root[64];
	struct ring ring;
	struct spool *sp;
	bool ring_up;
	/* on_durable, in call order */
	uint32_t ndurable;
	struct spool_msg *durable[SPT_MAX_CB];
	int durable_res[SPT_MAX_CB];
	uint64_t durable_seq[SPT_MAX_CB]; /* m->seg_seq at the callback */
	/* on_progress, in call order */
	uint32_t nprogress;
	struct spool_msg *progress[SPT_MAX_CB];
	/* on_segment, in call order */
	uint32_t nsegment;
	uint64_t segment[SPT_MAX_CB];
	/* completions collected by spt_reap, not yet handed over */
	uint32_t ncqe;
	uint64_t cqe_ud[SPT_MAX_CQE];
	int cqe_res[SPT_MAX_CQE];
	uint32_t seen; /* CQEs taken off the ring so far */
};

/* Exit 77 unless this kernel lets us set up a ring (call first in main). */
void spt_require_io_uring(void);

/* A ring, and a spool on a new directory under /tmp (shard SPT_SHARD). */
void spt_open(struct spt *t, uint64_t segment_size, bool durable);
/* Close the spool (nothing may be in flight; t->sp NULL if the test
 * closed it already) and the ring, and remove the directory with
 * everything in it. */
void spt_close(struct spt *t);
/* cmocka teardown: after a failed test, close and remove what spt_open
 * made (nothing when the test reached spt_close). */
int spt_teardown(void **state);

/* SQEs prepared and not yet completed on the ring. */
uint32_t spt_outstanding(struct spt *t);
/* Submit, and collect completions until want are held (want must not
 * exceed what is collected plus outstanding: a test never blocks forever). */
void spt_reap(struct spt *t, uint32_t want);
/* Hand every collected completion of op to spool_complete(), in the order
 * collected; how many were handed.  res_override != 0 replaces their res. */
uint32_t spt_hand(struct spt *t, uint8_t op, int res_override);
/* Reap and hand over until nothing is in flight, lowest op code first
 * each round (writes before syncs, opens before heads): the same calls
 * whatever order the kernel completed things in. */
void spt_drain(struct spt *t);
/* Loop turns (spool_flush_states, spool_flush, spt_drain) until the spool
 * is idle: every message begun must be committed or aborted. */
void spt_settle(struct spt *t);

/* Begin message m with a fresh id and append body (caller memory). */
void spt_msg_write(struct spt *t, struct spool_msg *m, const char *body, uint32_t len);
/* Commit m with a small envelope kept in enc (>= 256 bytes, alive until
 * on_durable). */
void spt_msg_commit(struct spt *t, struct spool_msg *m, uint8_t *enc, size_t cap);
/* Index of m in the on_durable log, or -1. */
int spt_durable_index(const struct spt *t, const struct spool_msg *m);

/* What a scan of one segment file found. */
struct spt_scan {
	uint32_t commits, bodies_ok, states;
	uint64_t ids[SPT_MAX_CB];
	uint64_t wire_len[SPT_MAX_CB];
	struct spool_scan_stats st;
};
/* Scan segment seq of the spool's directory with bodies verified. */
void spt_scan_segment(const struct spt *t, uint64_t seq, struct spt_scan *out);
/* Does segment file seq exist? */
bool spt_segment_exists(const struct spt *t, uint64_t seq);

#endif
