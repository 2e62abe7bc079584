/*
 * queue/qseg — one shard's segment table for delivery: which segments
 * hold queued messages, how many live messages each holds, the fd kept
 * open for outbound body reads and the key its records verify under, and
 * the reclaim rule (which segment may be deleted, and when).
 *
 * Owns: the table and the fds in it (closed by qseg_table_free, or handed
 * to the caller's remove hook by reclaim).  Thread: one shard's; before
 * the shards start, the main thread (qseg_load, blocking) hands the
 * table over whole.
 *
 * Invariants: entries are in ascending seq order; a segment's live count
 * is the number of queued messages committed in it and is never taken
 * below zero; a segment is reclaimed only when it is the oldest one, has
 * no live message, is older than the current one and the spool writes to
 * it no more.  Oldest first, because a newer segment may hold the state
 * and DONE records of an older one's messages, so it must outlive it.
 *
 * Limits: the table grows by doubling (allocation when a segment opens,
 * once per segment_size bytes written, not per message).
 */
#ifndef RMX_QUEUE_QSEG_H
#define RMX_QUEUE_QSEG_H

#include <stdbool.h>
#include <stdint.h>

#include "queue/record.h"

struct qseg {
	uint64_t seq;
	int fd; /* -1 until a message committed there opens it */
	uint32_t live;
	struct spool_key key; /* from its head: outbound body reads check records */
};

struct qseg_table {
	struct qseg *v;
	uint32_t n, cap;
};

struct qseg *qseg_find(const struct qseg_table *t, uint64_t seq);
/* Add segment seq (not yet in t) with fd and key; NULL: out of memory. */
struct qseg *qseg_add(struct qseg_table *t, uint64_t seq, int fd, const struct spool_key *key);
/* Know segment seq even before (or without) a committed message in it: a
 * segment that holds only refused messages must be reclaimed too, or a
 * stream of refused mail fills the disk.  0, or -ENOMEM. */
int qseg_track(struct qseg_table *t, uint64_t seq);
/* The fd of segment seq, or -1; its key (zero when unknown). */
int qseg_fd(const struct qseg_table *t, uint64_t seq);
void qseg_key(const struct qseg_table *t, uint64_t seq, struct spool_key *out);
/* A message committed in s is queued / one in segment seq left the queue. */
void qseg_ref(struct qseg *s);
void qseg_unref(struct qseg_table *t, uint64_t seq);

/* Start-up (blocking): open segment seq in dirfd and read its key when it
 * has live messages (recovery proved its head).  0 or -errno; on an error
 * the entry is still added when memory allows (its fd may be -1). */
int qseg_load(struct qseg_table *t, int dirfd, uint64_t seq, uint32_t live);

/* What reclaim asks of its caller. */
struct qseg_reclaim_ops {
	/* The spool writes to segment seq no more. */
	bool (*quiet)(void *ctx, uint64_t seq);
	/* Another removal can be started now. */
	bool (*room)(void *ctx);
	/* Delete the segment's file and close its fd (s->fd may be -1);
	 * s is dropped from the table when this returns. */
	void (*remove)(void *ctx, const struct qseg *s);
};

/* Remove every segment the rule above lets go, oldest first, while the
 * caller has room; cur is the segment new records go to.  Returns how
 * many were removed. */
uint32_t qseg_reclaim(struct qseg_table *t, uint64_t cur, const struct qseg_reclaim_ops *ops,
		      void *ctx);

/* Close every fd and free the table. */
void qseg_table_free(struct qseg_table *t);

#endif
