/*
 * hpool — the helper-thread pool (ARCHITECTURE.md, "helper threads"): a
 * fixed set of threads for work that has no io_uring form.  Its users are
 * SMTP AUTH (password hashing) and delivery (local delivery, DSN building,
 * spool moves); libspf2 and libmemcached will submit generic jobs to the
 * same pool.  Prefix hpool_ ("helper pool").
 *
 * Shape:
 *     shard i --submit--> [request ring, ck_ring MPMC, queue_size slots]
 *                               |  (sem_post wakes one helper)
 *                         helper threads (threads)
 *                               |
 *     shard i <--reap--- [completion ring of shard i, ck_ring MPSC]
 *             <--wake--- write(8 octets) to the eventfd shard i attached
 * The request ring has many producers (shards) and many consumers
 * (helpers), so it uses ck_ring's mpmc functions; each completion ring has
 * many producers (helpers) and one consumer (its shard): mpsc.
 *
 * Requests live in fixed per-shard slots (shard_inflight of them, each
 * with room for a user name and a password copy), allocated at create and
 * never after: a slot is taken at submit and given back at reap, both on
 * the shard thread, so the free list needs no lock.  Because a shard can
 * never have more requests out than its slots, its completion ring (sized
 * to hold them all) never overflows.
 *
 * Threads:
 *   - hpool_create/hpool_stop/hpool_destroy: the main thread.
 *   - hpool_shard_attach: any thread, before shard s submits (it is an
 *     atomic store).
 *   - hpool_submit_* and hpool_reap for shard s: only shard s's thread (one
 *     thread per shard index at a time).  They never block and never
 *     allocate: a submit is one ring enqueue and one sem_post (a futex
 *     wake only when a helper sleeps); reap only dequeues.
 *   - job functions and password hashing run on helper threads and may
 *     block; they must not touch shard state.
 *
 * Waking a shard: after a completion is in shard s's ring, the helper adds
 * 1 to the shard's eventfd (EFD_NONBLOCK expected: an EAGAIN there means
 * the counter is already non-zero, so the shard wakes anyway).  The shard
 * keeps an io_uring read armed on it; when that read completes it calls
 * hpool_reap() until it returns less than it asked for, then re-arms.  A
 * completion pushed after the reap makes the eventfd readable again, so
 * none is lost.  A shard without an eventfd (fd -1) polls with reap.
 *
 * Ownership:
 *   - INLINE: the pool copies the caller's data (up to HPOOL_DATA_MAX
 *     octets) into the slot, so the caller keeps nothing past the submit
 *     (a password: AUTH zeroes its own copy right after).  fn(data,
 *     cancelled) runs once on a helper, also when cancelled, so it can
 *     drop what data holds (references); the helper then zeroes the copy,
 *     before the completion is posted.  The pool knows nothing of what
 *     the data means (AUTH's password check is one such job, auth/users.h).
 *   - JOB: fn(arg) runs once on a helper; arg stays the caller's and comes
 *     back in struct hpool_done, so the shard frees it after reaping.
 *
 * Results (struct hpool_done.result): what fn returned.  A JOB dropped by
 * hpool_stop(CANCEL) before it ran completes with -ECANCELED; an INLINE
 * job is called with cancelled = true and returns what it likes (by
 * convention -ECANCELED).
 *
 * Backpressure: submit returns -EAGAIN when the request ring is full or
 * the shard has shard_inflight requests out (AUTH answers 454 4.7.0
 * "Temporary authentication failure", RFC 4954 6), -ESHUTDOWN after
 * hpool_stop began, -EINVAL for out-of-bound arguments.
 *
 * Shutdown: hpool_stop() refuses new submits, waits for submits in
 * progress, then either runs every queued request (DRAIN) or completes
 * the ones not yet started with -ECANCELED (CANCEL); a request already
 * running always finishes.  It joins the helpers before returning, so
 * afterwards every accepted request has its completion in its shard's
 * ring (and the eventfd was written): shards may still reap until
 * hpool_destroy().  Completions never reaped are dropped by destroy (their
 * inline data is already zeroed; a JOB's arg is then the owner's problem).
 *
 * Limits: HPOOL_THREADS_MAX threads, HPOOL_SHARDS_MAX shards,
 * HPOOL_QUEUE_MAX request ring slots (a power of two; ck_ring keeps one
 * slot free, so it holds queue_size - 1), HPOOL_INFLIGHT_MAX slots per
 * shard, HPOOL_DATA_MAX octets of inline data.  Memory: about 600 octets
 * per slot plus 8 per ring entry.
 */
#ifndef RMX_HPOOL_H
#define RMX_HPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct hpool;

#define HPOOL_THREADS_MAX  64
#define HPOOL_SHARDS_MAX   256
#define HPOOL_QUEUE_MAX	   (1u << 16)
#define HPOOL_INFLIGHT_MAX (1u << 14)
/* Inline data of one request: room for a user name and a password of 255
 * octets each with their lengths and a reference (auth/users.h asserts). */
#define HPOOL_DATA_MAX 560

enum hpool_kind {
	HPOOL_INLINE = 1,
	HPOOL_JOB = 2,
};

enum hpool_stop_mode {
	HPOOL_STOP_DRAIN = 1,  /* run everything queued, then stop */
	HPOOL_STOP_CANCEL = 2, /* complete queued requests with -ECANCELED */
};

struct hpool_config {
	uint32_t threads;	 /* 1..HPOOL_THREADS_MAX */
	uint32_t shards;	 /* 1..HPOOL_SHARDS_MAX */
	uint32_t queue_size;	 /* power of two, 2..HPOOL_QUEUE_MAX */
	uint32_t shard_inflight; /* 1..HPOOL_INFLIGHT_MAX per shard */
};

/* A blocking job; runs on a helper thread.  Its return value is passed
 * back unchanged (by convention 0 or -errno). */
typedef int (*hpool_job_fn)(void *arg);
/* An inline job: data is the pool's copy of what the caller gave (aligned
 * for any type); cancelled: hpool_stop(CANCEL) dropped it before it ran. */
typedef int (*hpool_inline_fn)(void *data, bool cancelled);

struct hpool_done {
	uint64_t cookie; /* as given to submit: the shard's connection slot + generation */
	void *arg;	 /* JOB: its arg; INLINE: NULL */
	int result;	 /* see "Results" */
	uint8_t kind;	 /* enum hpool_kind */
};

/* Allocate everything and start the helpers.  Returns 0 and *out, or
 * -EINVAL (a bound), -ENOMEM, or the error of pthread_create. */
int hpool_create(const struct hpool_config *cfg, struct hpool **out);

/* Set the eventfd helpers write to when a completion for shard is ready;
 * -1 removes it.  Returns 0 or -EINVAL for a bad shard.  The pool does not
 * own efd and never closes it. */
int hpool_shard_attach(struct hpool *p, uint32_t shard, int efd);

/* Queue fn on a helper with a copy of data[0, len) (len <= HPOOL_DATA_MAX).
 * Returns 0 or -EAGAIN / -ESHUTDOWN / -EINVAL (see "Backpressure"); on an
 * error nothing was queued and fn is never called. */
int hpool_submit_inline(struct hpool *p, uint32_t shard, uint64_t cookie, hpool_inline_fn fn,
			const void *data, size_t len);

/* Queue fn(arg) on a helper.  Returns as hpool_submit_inline. */
int hpool_submit_job(struct hpool *p, uint32_t shard, uint64_t cookie, hpool_job_fn fn, void *arg);

/* Move up to max completions of shard into out and free their slots.
 * Returns how many. */
uint32_t hpool_reap(struct hpool *p, uint32_t shard, struct hpool_done *out, uint32_t max);

/* Stop and join the helpers (idempotent; see "Shutdown"). */
void hpool_stop(struct hpool *p, enum hpool_stop_mode mode);

/* hpool_stop(CANCEL) if not stopped yet, then free everything.  NULL is
 * ignored. */
void hpool_destroy(struct hpool *p);

#endif
