/*
 * queue/qsched — where each queued message of one shard stands, and when it
 * is tried again: one list per enum qmsg_where (ready, active, deferred,
 * held, done), the retry sweep that moves due deferred messages to ready,
 * and the retry schedule.
 *
 * Owns: the list heads and counts (the links are in struct qmsg, which the
 * queue index owns).  Thread: one shard's.  Nothing here allocates.
 *
 * Invariants: a message is on exactly the list its `where` names, or on
 * none (QW_NONE); a list's count is its length.  Both are asserted around
 * every change.
 */
#ifndef RMX_QUEUE_QSCHED_H
#define RMX_QUEUE_QSCHED_H

#include <stdint.h>

#include "queue/qindex.h"

struct qsched {
	struct qmsg *head[QW_DONE + 1], *tail[QW_DONE + 1];
	uint32_t count[QW_DONE + 1];
};

/* Move m to the tail of list w (off the one it was on). */
void qsched_set(struct qsched *s, struct qmsg *m, enum qmsg_where w);
/* Take m off its list (a no-op when it is on none). */
void qsched_del(struct qsched *s, struct qmsg *m);

/* The retry sweep (once a second): deferred messages whose next attempt is
 * due at now_s go to ready, except one being re-written into the current
 * segment (its copy takes its place).  Returns how many moved. */
uint32_t qsched_sweep(struct qsched *s, int64_t now_s);

/* The retry schedule: attempt n (1-based, as counted after it ran) waits
 * retry_s[n - 1] seconds (the last entry repeats), but a wait that would
 * pass the message's expiry (arrival_s + max_age_s) is cut to it so the
 * message bounces on time.  retry_count > 0. */
int64_t qsched_next_attempt(const uint32_t *retry_s, uint32_t retry_count, uint32_t attempts,
			    int64_t arrival_s, uint32_t max_age_s, int64_t now_s);

#endif
