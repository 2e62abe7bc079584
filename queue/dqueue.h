/*
 * queue/dqueue — the delivery queue the shards share: one MPMC ring of
 * tickets (an attempt of one message) that every shard takes from, so a
 * busy shard's mail is delivered by an idle one's connections, and per
 * owner a completion ring on which the shard that ran a ticket hands it
 * back, then wakes the owner through its eventfd.
 *
 * Owns: the rings and the owners' eventfd numbers (not the fds, nor the
 * tickets: a ticket is the engine's, the queue only carries the pointer).
 * Thread: dq_new/dq_free on the main thread, before the shards start and
 * after they stopped; dq_set_wake on the shard being set up or torn down;
 * everything else on any shard thread at once (lock-free, libck).
 *
 * Limits: DQ_SHARDS_MAX shards; DQ_RING_SIZE tickets on the shared ring and
 * on each completion ring.  An owner keeps at most DQ_OUT_MAX tickets out,
 * so a hand-back always finds room (it cannot fail).
 */
#ifndef RMX_QUEUE_DQUEUE_H
#define RMX_QUEUE_DQUEUE_H

#include <stdbool.h>
#include <stdint.h>

#define DQ_RING_SIZE  65536		 /* tickets on the shared queue, and per completion ring */
#define DQ_OUT_MAX    (DQ_RING_SIZE / 2) /* tickets one owner may have out */
#define DQ_SHARDS_MAX 256
#define DQ_RUN_MIN    8 /* tickets one shard runs at once, at least */

struct dq_shared;
struct dticket; /* the engine's: carried, never read */

/* NULL when out of memory or shards is 0 or over DQ_SHARDS_MAX. */
struct dq_shared *dq_new(uint32_t shards);
void dq_free(struct dq_shared *q);
uint32_t dq_shards(const struct dq_shared *q);
/* The eventfd that wakes shard (-1: none, it is gone). */
void dq_set_wake(struct dq_shared *q, uint32_t shard, int fd);

/* Put a ticket on the shared ring; false when it is full. */
bool dq_put(struct dq_shared *q, struct dticket *t);
/* The next ticket any shard put, or NULL. */
struct dticket *dq_take(struct dq_shared *q);
/* Tickets wait on the shared ring (a hint: others may take them now). */
bool dq_waiting(const struct dq_shared *q);

/* Hand a ticket that ran back to its owner and wake it. */
void dq_hand_back(struct dq_shared *q, uint32_t owner, struct dticket *t);
/* Owner: the next ticket handed back to it, or NULL. */
struct dticket *dq_take_back(struct dq_shared *q, uint32_t owner);
/* Wake shard (its eventfd), e.g. to take tickets it has room for. */
void dq_wake(struct dq_shared *q, uint32_t shard);

/* How many tickets a shard runs at once: while it has outbound room for
 * them (four per connection it may open to one hop, the route's
 * connections split over the shards); the rest wait on the shared ring
 * for a shard with room. */
uint32_t dq_run_max(uint32_t connections_per_route, uint32_t shards);

#endif
