/*
 * queue/dqueue — the shared delivery queue.  See dqueue.h.
 */
#include "queue/dqueue.h"

#include <assert.h>
#include <ck_ring.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log/log.h"

static_assert((DQ_RING_SIZE & (DQ_RING_SIZE - 1)) == 0, "ck_ring needs a power of two");

struct dring {
	ck_ring_t ring;
	ck_ring_buffer_t *buf;
};

struct dq_shared {
	struct dring queue;		  /* tickets waiting for any shard */
	struct dring done[DQ_SHARDS_MAX]; /* per owner: tickets handed back */
	_Atomic int wake[DQ_SHARDS_MAX];  /* owners' eventfds */
	uint32_t shards;
};

static int dring_init(struct dring *r)
{
	r->buf = calloc(DQ_RING_SIZE, sizeof(r->buf[0]));
	if (!r->buf)
		return -ENOMEM;
	ck_ring_init(&r->ring, DQ_RING_SIZE);
	return 0;
}

struct dq_shared *dq_new(uint32_t shards)
{
	struct dq_shared *q = calloc(1, sizeof(*q));

	if (!q || shards == 0 || shards > DQ_SHARDS_MAX || dring_init(&q->queue) < 0) {
		dq_free(q);
		return NULL;
	}
	q->shards = shards;
	for (uint32_t i = 0; i < shards; i++) {
		atomic_store(&q->wake[i], -1);
		if (dring_init(&q->done[i]) < 0) {
			dq_free(q);
			return NULL;
		}
	}
	return q;
}

void dq_free(struct dq_shared *q)
{
	if (!q)
		return;
	free(q->queue.buf);
	for (uint32_t i = 0; i < DQ_SHARDS_MAX; i++)
		free(q->done[i].buf);
	free(q);
}

uint32_t dq_shards(const struct dq_shared *q)
{
	return q->shards;
}

void dq_set_wake(struct dq_shared *q, uint32_t shard, int fd)
{
	assert(shard < q->shards);
	atomic_store(&q->wake[shard], fd);
}

bool dq_put(struct dq_shared *q, struct dticket *t)
{
	assert(t != NULL);
	return ck_ring_enqueue_mpmc(&q->queue.ring, q->queue.buf, t);
}

struct dticket *dq_take(struct dq_shared *q)
{
	struct dticket *t;

	return ck_ring_dequeue_mpmc(&q->queue.ring, q->queue.buf, &t) ? t : NULL;
}

bool dq_waiting(const struct dq_shared *q)
{
	return ck_ring_size(&q->queue.ring) > 0;
}

void dq_hand_back(struct dq_shared *q, uint32_t owner, struct dticket *t)
{
	struct dring *r = &q->done[owner];

	assert(owner < q->shards);
	/* The ring holds every ticket there can be (DQ_RING_SIZE per shard is
	 * above DQ_OUT_MAX, what an owner can have out), so this cannot fail. */
	bool ok = ck_ring_enqueue_mpmc(&r->ring, r->buf, t);

	assert(ok);
	(void)ok;
	dq_wake(q, owner);
}

struct dticket *dq_take_back(struct dq_shared *q, uint32_t owner)
{
	struct dring *r = &q->done[owner];
	struct dticket *t;

	assert(owner < q->shards);
	return ck_ring_dequeue_mpmc(&r->ring, r->buf, &t) ? t : NULL;
}

void dq_wake(struct dq_shared *q, uint32_t shard)
{
	uint64_t one = 1;
	int fd = atomic_load(&q->wake[shard]);

	if (fd >= 0 && write(fd, &one, sizeof(one)) < 0)
		log_msg(LOG_WARN, "event=shard_wake shard=%u error=\"%s\"", shard, strerror(errno));
}

uint32_t dq_run_max(uint32_t connections_per_route, uint32_t shards)
{
	uint32_t per = connections_per_route / shards;
	uint32_t n = 4 * (per ? per : 1);

	assert(shards > 0);
	return n > DQ_RUN_MIN ? n : DQ_RUN_MIN;
}
