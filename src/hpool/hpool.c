/* hpool — helper-thread pool over ck_ring; contract in hpool.h. */
#include "hpool/hpool.h"

#include <assert.h>
#include <ck_ring.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ThreadSanitizer cannot see ck_pr's fences (inline assembly), so it would
 * report every request handed over through a ring as a race.  The hand-over
 * is a release by the producer before the enqueue and an acquire by the
 * consumer after the dequeue; saying so on the request's address keeps
 * TSan checking everything else.  No code in other builds. */
#if defined(__SANITIZE_THREAD__)
#define HPOOL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HPOOL_TSAN 1
#endif
#endif
#ifdef HPOOL_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define hpool_handover_release(r) __tsan_release(r)
#define hpool_handover_acquire(r) __tsan_acquire(r)
#else
#define hpool_handover_release(r) ((void)(r))
#define hpool_handover_acquire(r) ((void)(r))
#endif

struct hpool_req {
	uint64_t cookie;
	hpool_job_fn fn;     /* JOB */
	void *arg;	     /* JOB */
	hpool_inline_fn inl; /* INLINE */
	uint32_t shard;
	uint32_t index; /* in its shard's reqs */
	int result;
	uint8_t kind;
	uint16_t data_len; /* INLINE: octets of data[] in use; 0 once zeroed */
	/* INLINE: the caller's data, copied at submit; zeroed by the helper
	 * as soon as the job ran (it may hold a password). */
	_Alignas(max_align_t) unsigned char data[HPOOL_DATA_MAX];
};

struct hpool_shard {
	ck_ring_t done; /* completions: helpers produce, the shard consumes */
	ck_ring_buffer_t *done_buf;
	atomic_int efd;
	/* Touched by the shard thread only. */
	struct hpool_req *reqs;
	uint32_t *free_idx; /* stack of free slot indexes */
	uint32_t free_n;
};

struct hpool {
	ck_ring_t queue; /* requests: shards produce, helpers consume */
	ck_ring_buffer_t *queue_buf;
	sem_t work; /* one post per queued request, one per helper at stop */
	atomic_uint submitting;
	atomic_bool stopping;
	atomic_bool cancel;
	bool stopped; /* main thread only */
	uint32_t started;
	pthread_t *threads;
	struct hpool_shard *shards;
	struct hpool_config cfg;
};

static uint32_t hpool_pow2_above(uint32_t n)
{
	uint32_t s = 2;
	while (s <= n)
		s <<= 1;
	return s;
}

static bool hpool_config_ok(const struct hpool_config *c)
{
	return c->threads >= 1 && c->threads <= HPOOL_THREADS_MAX && c->shards >= 1 &&
	       c->shards <= HPOOL_SHARDS_MAX && c->queue_size >= 2 &&
	       c->queue_size <= HPOOL_QUEUE_MAX && (c->queue_size & (c->queue_size - 1)) == 0 &&
	       c->shard_inflight >= 1 && c->shard_inflight <= HPOOL_INFLIGHT_MAX;
}

static int hpool_shard_init(struct hpool_shard *s, uint32_t shard, uint32_t inflight)
{
	/* Room for every slot of the shard: ck_ring keeps one entry free. */
	uint32_t ring = hpool_pow2_above(inflight);
	s->done_buf = calloc(ring, sizeof(*s->done_buf));
	s->reqs = calloc(inflight, sizeof(*s->reqs));
	s->free_idx = calloc(inflight, sizeof(*s->free_idx));
	if (s->done_buf == NULL || s->reqs == NULL || s->free_idx == NULL)
		return -ENOMEM;
	ck_ring_init(&s->done, ring);
	atomic_init(&s->efd, -1);
	for (uint32_t i = 0; i < inflight; i++) {
		s->reqs[i].shard = shard;
		s->reqs[i].index = i;
		/* Popped from the end: slot 0 is handed out first. */
		s->free_idx[i] = inflight - 1 - i;
	}
	s->free_n = inflight;
	return 0;
}

static void hpool_free(struct hpool *p)
{
	for (uint32_t i = 0; p->shards != NULL && i < p->cfg.shards; i++) {
		struct hpool_shard *s = &p->shards[i];
		if (s->reqs != NULL)
			explicit_bzero(s->reqs, sizeof(*s->reqs) * p->cfg.shard_inflight);
		free(s->done_buf);
		free(s->reqs);
		free(s->free_idx);
	}
	free(p->shards);
	free(p->queue_buf);
	free(p->threads);
	free(p);
}

static void hpool_run(struct hpool *p, struct hpool_req *r)
{
	bool cancel = atomic_load(&p->cancel);
	switch (r->kind) {
	case HPOOL_INLINE:
		/* Called even when cancelled: data may hold references only
		 * the job knows how to drop. */
		r->result = r->inl(r->data, cancel);
		/* What data held (a password) is not needed past this point:
		 * do not let it sit in the slot until the shard reaps. */
		explicit_bzero(r->data, r->data_len);
		r->data_len = 0;
		break;
	case HPOOL_JOB:
		r->result = cancel ? -ECANCELED : r->fn(r->arg);
		break;
	default:
		abort();
	}
}

/* Post r to its shard's completion ring and wake the shard. */
static void hpool_complete(struct hpool *p, struct hpool_req *r)
{
	struct hpool_shard *s = &p->shards[r->shard];
	hpool_handover_release(r);
	bool queued = ck_ring_enqueue_mpsc(&s->done, s->done_buf, r);
	/* Cannot fail: the ring holds every slot of the shard. */
	assert(queued);
	(void)queued;
	int efd = atomic_load_explicit(&s->efd, memory_order_acquire);
	if (efd < 0)
		return;
	uint64_t one = 1;
	ssize_t w;
	do
		w = write(efd, &one, sizeof(one));
	while (w < 0 && errno == EINTR);
	/* EAGAIN: the counter is at its maximum, the shard is awake anyway.
	 * EBADF would mean a shard closed its eventfd with requests out. */
	assert(w == (ssize_t)sizeof(one) || errno == EAGAIN);
}

static void *hpool_worker(void *arg)
{
	struct hpool *p = arg;
	for (;;) {
		while (sem_wait(&p->work) != 0)
			assert(errno == EINTR);
		struct hpool_req *r;
		if (!ck_ring_dequeue_mpmc(&p->queue, p->queue_buf, &r)) {
			/* Each queued request has its own post, so an empty ring
			 * after a wake-up means a stop post: the queue is done. */
			if (atomic_load(&p->stopping))
				break;
			continue;
		}
		hpool_handover_acquire(r);
		assert(r->shard < p->cfg.shards);
		hpool_run(p, r);
		hpool_complete(p, r);
	}
	return NULL;
}

/* Start the helpers with every signal blocked: signals belong to the main
 * thread's signalfd, never to a helper in the middle of a hash. */
static int hpool_start(struct hpool *p)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = 0;
	for (; p->started < p->cfg.threads; p->started++) {
		rc = pthread_create(&p->threads[p->started], NULL, hpool_worker, p);
		if (rc != 0)
			break;
		char name[16];
		snprintf(name, sizeof(name), "rmx-helper-%u", p->started);
		pthread_setname_np(p->threads[p->started], name);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -rc;
}

int hpool_create(const struct hpool_config *cfg, struct hpool **out)
{
	assert(cfg != NULL && out != NULL);
	*out = NULL;
	if (!hpool_config_ok(cfg))
		return -EINVAL;
	struct hpool *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return -ENOMEM;
	p->cfg = *cfg;
	p->queue_buf = calloc(cfg->queue_size, sizeof(*p->queue_buf));
	p->shards = calloc(cfg->shards, sizeof(*p->shards));
	p->threads = calloc(cfg->threads, sizeof(*p->threads));
	int rc = p->queue_buf && p->shards && p->threads ? 0 : -ENOMEM;
	for (uint32_t i = 0; rc == 0 && i < cfg->shards; i++)
		rc = hpool_shard_init(&p->shards[i], i, cfg->shard_inflight);
	if (rc == 0 && sem_init(&p->work, 0, 0) != 0)
		rc = -errno;
	if (rc != 0) {
		hpool_free(p);
		return rc;
	}
	ck_ring_init(&p->queue, cfg->queue_size);
	atomic_init(&p->submitting, 0);
	atomic_init(&p->stopping, false);
	atomic_init(&p->cancel, false);
	rc = hpool_start(p);
	if (rc != 0) {
		hpool_stop(p, HPOOL_STOP_CANCEL);
		sem_destroy(&p->work);
		hpool_free(p);
		return rc;
	}
	*out = p;
	return 0;
}

int hpool_shard_attach(struct hpool *p, uint32_t shard, int efd)
{
	assert(p != NULL);
	if (shard >= p->cfg.shards || efd < -1)
		return -EINVAL;
	atomic_store_explicit(&p->shards[shard].efd, efd, memory_order_release);
	return 0;
}

static struct hpool_req *hpool_slot_take(struct hpool_shard *s)
{
	if (s->free_n == 0)
		return NULL;
	return &s->reqs[s->free_idx[--s->free_n]];
}

static void hpool_slot_put(struct hpool *p, struct hpool_shard *s, struct hpool_req *r)
{
	assert(s->free_n < p->cfg.shard_inflight);
	assert(&s->reqs[r->index] == r);
	s->free_idx[s->free_n++] = r->index;
}

/* Hand r to the helpers.  The submitting counter and the stopping flag
 * form a Dekker pair (both seq_cst): either this submit sees stopping and
 * backs out, or hpool_stop sees it in progress and waits, so no request
 * is enqueued after the helpers were told the queue is done. */
static int hpool_enqueue(struct hpool *p, struct hpool_req *r)
{
	int rc = 0;
	atomic_fetch_add(&p->submitting, 1);
	if (atomic_load(&p->stopping)) {
		rc = -ESHUTDOWN;
	} else {
		hpool_handover_release(r);
		if (!ck_ring_enqueue_mpmc(&p->queue, p->queue_buf, r))
			rc = -EAGAIN;
		else
			sem_post(&p->work);
	}
	atomic_fetch_sub(&p->submitting, 1);
	return rc;
}

int hpool_submit_inline(struct hpool *p, uint32_t shard, uint64_t cookie, hpool_inline_fn fn,
			const void *data, size_t len)
{
	assert(p != NULL && fn != NULL && (data != NULL || len == 0));
	if (shard >= p->cfg.shards || len > HPOOL_DATA_MAX)
		return -EINVAL;
	struct hpool_shard *s = &p->shards[shard];
	struct hpool_req *r = hpool_slot_take(s);
	if (r == NULL)
		return -EAGAIN;
	assert(r->data_len == 0);
	r->kind = HPOOL_INLINE;
	r->cookie = cookie;
	r->inl = fn;
	r->fn = NULL;
	r->arg = NULL;
	r->data_len = (uint16_t)len;
	if (len > 0)
		memcpy(r->data, data, len);
	int rc = hpool_enqueue(p, r);
	if (rc != 0) {
		explicit_bzero(r->data, r->data_len);
		r->data_len = 0;
		hpool_slot_put(p, s, r);
	}
	return rc;
}

int hpool_submit_job(struct hpool *p, uint32_t shard, uint64_t cookie, hpool_job_fn fn, void *arg)
{
	assert(p != NULL && fn != NULL);
	if (shard >= p->cfg.shards)
		return -EINVAL;
	struct hpool_shard *s = &p->shards[shard];
	struct hpool_req *r = hpool_slot_take(s);
	if (r == NULL)
		return -EAGAIN;
	r->kind = HPOOL_JOB;
	r->cookie = cookie;
	r->inl = NULL;
	r->fn = fn;
	r->arg = arg;
	assert(r->data_len == 0);
	int rc = hpool_enqueue(p, r);
	if (rc != 0)
		hpool_slot_put(p, s, r);
	return rc;
}

uint32_t hpool_reap(struct hpool *p, uint32_t shard, struct hpool_done *out, uint32_t max)
{
	assert(p != NULL && shard < p->cfg.shards && (out != NULL || max == 0));
	struct hpool_shard *s = &p->shards[shard];
	uint32_t n = 0;
	struct hpool_req *r;
	while (n < max && ck_ring_dequeue_mpsc(&s->done, s->done_buf, &r)) {
		hpool_handover_acquire(r);
		assert(r->shard == shard && r->data_len == 0);
		out[n++] = (struct hpool_done){
		    .cookie = r->cookie, .arg = r->arg, .result = r->result, .kind = r->kind};
		hpool_slot_put(p, s, r);
	}
	return n;
}

void hpool_stop(struct hpool *p, enum hpool_stop_mode mode)
{
	assert(p != NULL && (mode == HPOOL_STOP_DRAIN || mode == HPOOL_STOP_CANCEL));
	if (p->stopped)
		return;
	if (mode == HPOOL_STOP_CANCEL)
		atomic_store(&p->cancel, true);
	atomic_store(&p->stopping, true);
	while (atomic_load(&p->submitting) != 0)
		sched_yield();
	for (uint32_t i = 0; i < p->started; i++)
		sem_post(&p->work);
	for (uint32_t i = 0; i < p->started; i++)
		pthread_join(p->threads[i], NULL);
	/* A helper leaves only on an empty ring, and nothing was queued after
	 * stopping was seen, so every accepted request has completed. */
	assert(p->started == 0 || ck_ring_size(&p->queue) == 0);
	p->stopped = true;
}

void hpool_destroy(struct hpool *p)
{
	if (p == NULL)
		return;
	hpool_stop(p, HPOOL_STOP_CANCEL);
	sem_destroy(&p->work);
	hpool_free(p);
}
