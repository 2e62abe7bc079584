/*
 * ring — the io_uring event layer of one shard.  Knows nothing of SMTP.
 *
 * Owns: one io_uring, one provided-buffer ring (group RING_BGID) with its
 * buffer memory and per-buffer reference counts, and the user_data encoding.
 * Thread: every function except ring_probe() is called only by the thread
 * that owns the ring (the shard).  Nothing here allocates after ring_init().
 *
 * user_data = op (8 bits) | aux (8 bits) | generation (16 bits) | slot (32)
 * so a completion for a slot that was closed and reused is recognised by its
 * stale generation and dropped (STYLE 4).
 *
 * Provided buffers: a recv picks a buffer; the completion names
 * it (IORING_CQE_F_BUFFER).  The receiver holds one reference; every write
 * that sends bytes straight from the buffer (the spool) takes one more.  The
 * buffer returns to the kernel in exactly one place, ring_buf_put(), when
 * its count drops to zero.  A slice into a buffer lives until then.
 */
#ifndef RMX_RING_H
#define RMX_RING_H

#include <assert.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

#define RING_BGID 1 /* our only buffer group */

struct ring {
	struct io_uring uring;
	struct io_uring_buf_ring *br;
	char *buf_base;
	uint16_t *buf_refs;
	uint32_t buf_count; /* power of two */
	uint32_t buf_size;
	uint32_t buf_free; /* buffers currently owned by the kernel */
	/* User buffers: the same size and refcounting, bids after the
	 * kernel's, never given to the kernel (plaintext of TLS sessions). */
	char *user_base;
	uint32_t user_count;
	uint16_t *user_free;
	uint32_t user_free_count;
	uint32_t pending;   /* SQEs prepared but not submitted */
	bool buf_exhausted; /* a recv found no free buffer (ENOBUFS) */
};

/* Check once, at start, that this kernel gives us what we need:
 * io_uring enabled, multishot accept/recv, provided buffer rings.  Returns 0
 * or -errno and a one-line reason in why. */
int ring_probe(char *why, size_t why_len);

/* Set up the ring with sq_entries SQEs and buf_count buffers of buf_size
 * bytes.  0 or -errno (why filled). */
int ring_init(struct ring *r, uint32_t sq_entries, uint32_t buf_count, uint32_t buf_size, char *why,
	      size_t why_len);
void ring_exit(struct ring *r);

/* An SQE, submitting pending ones first when the SQ is full.  Never NULL:
 * the SQ is sized so one loop turn cannot exceed it twice over; running out
 * after a submit is a broken invariant. */
struct io_uring_sqe *ring_sqe(struct ring *r);
/* Submit and wait for at least one completion (or a signal). */
int ring_submit_wait(struct ring *r);

/* ---- user_data ----------------------------------------------------------- */

static inline uint64_t ring_ud(uint8_t op, uint8_t aux, uint16_t gen, uint32_t slot)
{
	return (uint64_t)op << 56 | (uint64_t)aux << 48 | (uint64_t)gen << 32 | slot;
}
static inline uint8_t ring_ud_op(uint64_t ud)
{
	return (uint8_t)(ud >> 56);
}
static inline uint8_t ring_ud_aux(uint64_t ud)
{
	return (uint8_t)(ud >> 48);
}
static inline uint16_t ring_ud_gen(uint64_t ud)
{
	return (uint16_t)(ud >> 32);
}
static inline uint32_t ring_ud_slot(uint64_t ud)
{
	return (uint32_t)ud;
}

/* ---- provided buffers ---------------------------------------------------- */

static inline char *ring_buf_ptr(const struct ring *r, uint16_t bid)
{
	if (bid >= r->buf_count) {
		assert(bid < r->buf_count + r->user_count);
		return r->user_base + (uint64_t)(bid - r->buf_count) * r->buf_size;
	}
	return r->buf_base + (uint64_t)bid * r->buf_size;
}
/* Take one more reference on a buffer the kernel (or ring_buf_alloc)
 * handed us. */
static inline void ring_buf_get(struct ring *r, uint16_t bid)
{
	assert(bid < r->buf_count + r->user_count && r->buf_refs[bid] > 0);
	r->buf_refs[bid]++;
}
/* Add count user buffers (start-up).  0 or -errno. */
int ring_user_bufs_init(struct ring *r, uint32_t count);
/* A free user buffer with one reference, or -1 when none is free. */
int ring_buf_alloc(struct ring *r);
/* A completion just handed bid to us: its count starts at one. */
void ring_buf_taken(struct ring *r, uint16_t bid);
/* Drop one reference; at zero the buffer goes back to the kernel (or to
 * the user free list). */
void ring_buf_put(struct ring *r, uint16_t bid);

/* ---- ops used by every shard ----------------------------------------------- */

void ring_prep_timeout(struct ring *r, struct __kernel_timespec *ts, uint64_t ud);
void ring_prep_cancel(struct ring *r, uint64_t target_ud, uint64_t ud);

#endif
