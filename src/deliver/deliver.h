/*
 * deliver — one shard's delivery engine: the queue index in memory,
 * routing, outbound SMTP/LMTP connections on the shard's ring, local
 * delivery and bounces through the helper pool, and the queue-control
 * requests.  The queue machinery it drives lives in queue/: the shared
 * rings (dqueue.h), the per-state lists and retry schedule (qsched.h),
 * segment live counts and reclaim (qseg.h).
 *
 * Owns: everything behind struct deliver.  Thread: the shard's, except
 * deliver_load() (main thread, start-up, blocking) and deliver_ctl_post()
 * (the control thread: it hands a request over and waits for it).
 *
 * Ring ops of the delivery range of the op registry (ring/ops.h) are ours;
 * the DNS resolver's ops are routed here too (the resolver serves
 * delivery).  Every such completion goes to deliver_complete().  The
 * outbound connections are the shard's NET_TABLE_OUTBOUND table
 * (net/net.h, deliver_net()): their completions go to net_complete().
 *
 * Durability: a message is added when its commit is durable.  Each change
 * of a recipient's state is a RCPT_STATE snapshot record in the current
 * segment, and a finished message gets a DONE record; a bounce is committed
 * (durable) before its original's records say "bounced".  A crash between
 * a next hop's 250 and our record repeats that delivery: at least once.
 */
#ifndef RMX_DELIVER_H
#define RMX_DELIVER_H

#include <semaphore.h>
#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "queue/qindex.h"
#include "queue/spool.h"
#include "ring/ops.h"
#include "ring/ring.h"

/* Ring op codes of this module, inside its range of the op registry
 * (ring/ops.h). */
enum {
	DLV_OP_UNLINK = OPS_DLV_FIRST,
	DLV_OP_SEGCLOSE,
	DLV_OP_END,
};
static_assert(DLV_OP_END - 1 <= OPS_DLV_LAST, "delivery ops inside the delivery range");

struct hpool;
struct hpool_done;
struct deliver;

/*
 * The shared delivery queue (queue/dqueue.h): an attempt is a *ticket*
 * (the message and the recipients still to deliver), put by the shard that
 * owns the message on one ring that every shard takes from, so a busy
 * shard's mail is delivered by an idle one's outbound connections.  The
 * shard that ran a ticket hands it back to its owner; only the owner
 * changes the message's state and writes its records.  Created by main
 * before the shards start, freed after they stopped.
 */
struct deliver_shared;
struct deliver_shared *deliver_shared_new(uint32_t shards);
void deliver_shared_free(struct deliver_shared *q);
/* The eventfd that wakes shard i (a completion for it is waiting). */
void deliver_shared_set_wake(struct deliver_shared *q, uint32_t shard, int fd);

/* A control request, handed from the control thread to a shard. */
enum dctl_op {
	DCTL_LIST = 1,
	DCTL_FIND,  /* is the message queued here? (for show) */
	DCTL_FLUSH, /* id, or all when id == 0 */
	DCTL_HOLD,
	DCTL_RELEASE,
	DCTL_DELETE,
	DCTL_BOUNCE,
};

struct dctl_req {
	enum dctl_op op;
	uint64_t id;
	int result;	  /* 0, or -ENOENT: no such message here */
	char *out;	  /* DCTL_LIST: malloc'd text, one line per message */
	bool quarantined; /* DCTL_LIST: only messages a filter quarantined */
	size_t out_len, out_cap;
	sem_t done;
};

struct deliver_params {
	uint32_t shard;
	uint32_t shards;
	const struct rmx_config *cfg;
	struct ring *ring;
	struct spool *spool;
	struct hpool *pool;
	struct deliver_shared *shared;
};

/* Start-up, main thread: load the shard's queue from its segments
 * (blocking).  The result is handed to deliver_new on the shard. */
struct deliver_loaded;
int deliver_load(struct deliver_loaded **out, const char *root, uint32_t shard, char *why,
		 size_t why_len);
uint32_t deliver_loaded_count(const struct deliver_loaded *l);

/* On the shard thread; takes over loaded (may be NULL). */
int deliver_new(struct deliver **out, const struct deliver_params *p, struct deliver_loaded *loaded,
		char *why, size_t why_len);
/* The shard is leaving (its thread, at the end of its loop): outbound
 * connections, TLS client state and the resolver go.  What a helper job
 * may still read (the index, the segment descriptors, the engine itself)
 * stays for deliver_free. */
void deliver_stop_io(struct deliver *d);
/* After every helper thread has stopped (main thread, or the shard's own
 * when start-up failed): everything else.  Calls deliver_stop_io first if
 * it was not. */
void deliver_free(struct deliver *d);

/* A received message's commit is durable. */
void deliver_committed(struct deliver *d, const struct spool_msg *m);
/* The spool opened segment seq (spool_ops.on_segment): it is deleted once
 * it is old and nothing live is in it, even if no message ever commits
 * there (every message written to it was refused). */
void deliver_segment(struct deliver *d, uint64_t seq);
/* A spool message of the engine's own (owner SPOOL_OWNER_ENGINE). */
void deliver_spool_durable(struct deliver *d, struct spool_msg *m, int res);
void deliver_spool_progress(struct deliver *d, struct spool_msg *m);
void deliver_complete(struct deliver *d, uint64_t ud, int res, uint32_t flags);
/* The outbound connections' table (net/net.h). */
struct net_table *deliver_net(struct deliver *d);
void deliver_helper_done(struct deliver *d, const struct hpool_done *done);
/* The shard was woken: apply the tickets other shards handed back. */
void deliver_wake(struct deliver *d);
/* Once a second. */
void deliver_tick(struct deliver *d);
/* End of every loop turn: start due work, write pending records. */
void deliver_turn(struct deliver *d);
/* A control request.  true: answered (req->result set) now; false: it
 * changed state, and the engine posts req->done itself once the records
 * saying so are durable (an OK never comes back after a crash undone). */
bool deliver_ctl(struct deliver *d, struct dctl_req *req);
/* Stop: no new attempts; connections close.  busy until all is quiet. */
void deliver_stop(struct deliver *d);
bool deliver_busy(const struct deliver *d);

#endif
