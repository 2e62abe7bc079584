/*
 * ring — io_uring setup, feature probing and provided buffers.
 * See ring.h for the contract.
 */
#include "ring/ring.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>

/* Opcodes a shard issues.  Multishot accept/recv are flags on ACCEPT/RECV,
 * so the probe cannot see them; they are checked by kernel version below. */
static const struct {
	int op;
	const char *name;
} needed_ops[] = {
    {IORING_OP_ACCEPT, "accept"},
    {IORING_OP_RECV, "recv"},
    {IORING_OP_SEND, "send"},
    {IORING_OP_WRITEV, "writev"},
    {IORING_OP_WRITE, "write"},
    {IORING_OP_FSYNC, "fsync"},
    {IORING_OP_TIMEOUT, "timeout"},
    {IORING_OP_ASYNC_CANCEL, "async_cancel"},
    {IORING_OP_CLOSE, "close"},
    {IORING_OP_SHUTDOWN, "shutdown"},
    {IORING_OP_PROVIDE_BUFFERS, "provide_buffers"},
    {IORING_OP_READ, "read"},
    {IORING_OP_CONNECT, "connect"},
    {IORING_OP_SENDMSG, "sendmsg"},
    {IORING_OP_UNLINKAT, "unlinkat"},
    {IORING_OP_POLL_ADD, "poll_add"},
    {IORING_OP_NOP, "nop"},
};

/* Multishot accept and recv into provided buffer rings: Linux 6.0. */
static int kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;

	if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
		return 0;
	return ma > major || (ma == major && mi >= minor);
}

int ring_probe(char *why, size_t why_len)
{
	struct io_uring_probe *probe;
	struct io_uring r;
	int rc;

	rc = io_uring_queue_init(8, &r, 0);
	if (rc < 0) {
		snprintf(why, why_len,
			 "io_uring is unavailable (%s); check kernel.io_uring_disabled and "
			 "seccomp/container policy",
			 strerror(-rc));
		return rc;
	}
	probe = io_uring_get_probe_ring(&r);
	if (!probe) {
		io_uring_queue_exit(&r);
		snprintf(why, why_len, "io_uring opcode probe failed (kernel too old, need 6.0+)");
		return -ENOSYS;
	}
	for (size_t i = 0; i < sizeof(needed_ops) / sizeof(needed_ops[0]); i++) {
		if (!io_uring_opcode_supported(probe, needed_ops[i].op)) {
			snprintf(why, why_len, "io_uring lacks the %s operation (need Linux 6.0+)",
				 needed_ops[i].name);
			io_uring_free_probe(probe);
			io_uring_queue_exit(&r);
			return -ENOSYS;
		}
	}
	io_uring_free_probe(probe);
	io_uring_queue_exit(&r);
	if (!kernel_at_least(6, 0)) {
		snprintf(why, why_len, "io_uring provided-buffer recv needs Linux 6.0 or later");
		return -ENOSYS;
	}
	return 0;
}

/* SINGLE_ISSUER + DEFER_TASKRUN (6.1): only the shard thread submits, and
 * completion work runs when it waits, so a burst of completions is
 * handled in one batch instead of interrupting the thread per packet.
 * Older kernels fall back to COOP_TASKRUN, then to no flags. */
static int ring_queue_init(struct ring *r, uint32_t sq_entries)
{
	static const unsigned flag_sets[] = {
	    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
	    IORING_SETUP_COOP_TASKRUN,
	    0,
	};
	int rc = -EINVAL;

	for (size_t i = 0; i < sizeof(flag_sets) / sizeof(flag_sets[0]); i++) {
		struct io_uring_params p = {0};

		/* Multishot accept can post many CQEs per SQE: a CQ four times
		 * the SQ keeps overflow (still lossless with FEAT_NODROP, but
		 * slow) rare. */
		p.flags = flag_sets[i] | IORING_SETUP_CQSIZE;
		p.cq_entries = sq_entries * 4;
		rc = io_uring_queue_init_params(sq_entries, &r->uring, &p);
		if (rc == 0)
			return 0;
		if (rc != -EINVAL)
			break;
	}
	return rc;
}

static int ring_bufs_init(struct ring *r, uint32_t buf_count, uint32_t buf_size)
{
	struct io_uring_buf_reg reg = {0};
	size_t ring_bytes = (size_t)buf_count * sizeof(struct io_uring_buf);
	void *mem;
	int rc;

	/* liburing 2.3 has no io_uring_setup_buf_ring(): map and register the
	 * ring ourselves.  It must be page aligned, hence mmap. */
	mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (mem == MAP_FAILED)
		return -errno;
	r->br = mem;
	io_uring_buf_ring_init(r->br);
	reg.ring_addr = (uint64_t)(uintptr_t)mem;
	reg.ring_entries = buf_count;
	reg.bgid = RING_BGID;
	rc = io_uring_register_buf_ring(&r->uring, &reg, 0);
	if (rc < 0)
		return rc;

	r->buf_base = mmap(NULL, (size_t)buf_count * buf_size, PROT_READ | PROT_WRITE,
			   MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (r->buf_base == MAP_FAILED) {
		r->buf_base = NULL;
		return -errno;
	}
	r->buf_refs = calloc(buf_count, sizeof(r->buf_refs[0]));
	if (!r->buf_refs)
		return -ENOMEM;
	r->buf_count = buf_count;
	r->buf_size = buf_size;
	for (uint32_t i = 0; i < buf_count; i++)
		io_uring_buf_ring_add(r->br, ring_buf_ptr(r, (uint16_t)i), buf_size, (uint16_t)i,
				      io_uring_buf_ring_mask(buf_count), (int)i);
	io_uring_buf_ring_advance(r->br, (int)buf_count);
	r->buf_free = buf_count;
	return 0;
}

int ring_init(struct ring *r, uint32_t sq_entries, uint32_t buf_count, uint32_t buf_size, char *why,
	      size_t why_len)
{
	int rc;

	memset(r, 0, sizeof(*r));
	assert((buf_count & (buf_count - 1)) == 0 && buf_count <= 32768);
	rc = ring_queue_init(r, sq_entries);
	if (rc < 0) {
		snprintf(why, why_len, "io_uring_queue_init(%u): %s", sq_entries, strerror(-rc));
		return rc;
	}
	rc = ring_bufs_init(r, buf_count, buf_size);
	if (rc < 0) {
		snprintf(why, why_len, "provided buffer ring (%u x %u bytes): %s", buf_count,
			 buf_size, strerror(-rc));
		return rc;
	}
	return 0;
}

void ring_exit(struct ring *r)
{
	if (r->br) {
		io_uring_unregister_buf_ring(&r->uring, RING_BGID);
		munmap(r->br, (size_t)r->buf_count * sizeof(struct io_uring_buf));
	}
	if (r->buf_base)
		munmap(r->buf_base, (size_t)r->buf_count * r->buf_size);
	if (r->user_base)
		munmap(r->user_base, (size_t)r->user_count * r->buf_size);
	free(r->user_free);
	free(r->buf_refs);
	io_uring_queue_exit(&r->uring);
	memset(r, 0, sizeof(*r));
}

struct io_uring_sqe *ring_sqe(struct ring *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);

	if (!sqe) {
		io_uring_submit(&r->uring);
		r->pending = 0;
		sqe = io_uring_get_sqe(&r->uring);
	}
	assert(sqe);
	r->pending++;
	return sqe;
}

int ring_submit_wait(struct ring *r)
{
	int rc = io_uring_submit_and_wait(&r->uring, 1);

	r->pending = 0;
	return rc < 0 ? rc : 0;
}

void ring_buf_taken(struct ring *r, uint16_t bid)
{
	assert(bid < r->buf_count && r->buf_refs[bid] == 0);
	assert(r->buf_free > 0);
	r->buf_refs[bid] = 1;
	r->buf_free--;
}

int ring_user_bufs_init(struct ring *r, uint32_t count)
{
	uint16_t *refs;

	if (count == 0 || r->buf_count + count > 65535)
		return -EINVAL;
	refs = realloc(r->buf_refs, (r->buf_count + count) * sizeof(refs[0]));
	if (!refs)
		return -ENOMEM;
	memset(refs + r->buf_count, 0, count * sizeof(refs[0]));
	r->buf_refs = refs;
	r->user_free = calloc(count, sizeof(r->user_free[0]));
	r->user_base = mmap(NULL, (size_t)count * r->buf_size, PROT_READ | PROT_WRITE,
			    MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (!r->user_free || r->user_base == MAP_FAILED) {
		r->user_base = NULL;
		return -ENOMEM;
	}
	r->user_count = count;
	for (uint32_t i = 0; i < count; i++)
		r->user_free[r->user_free_count++] = (uint16_t)(r->buf_count + count - 1 - i);
	return 0;
}

int ring_buf_alloc(struct ring *r)
{
	uint16_t bid;

	if (r->user_free_count == 0)
		return -1;
	bid = r->user_free[--r->user_free_count];
	assert(r->buf_refs[bid] == 0);
	r->buf_refs[bid] = 1;
	return bid;
}

void ring_buf_put(struct ring *r, uint16_t bid)
{
	assert(bid < r->buf_count + r->user_count && r->buf_refs[bid] > 0);
	if (--r->buf_refs[bid] > 0)
		return;
	if (bid >= r->buf_count) {
		r->user_free[r->user_free_count++] = bid;
		return;
	}
	io_uring_buf_ring_add(r->br, ring_buf_ptr(r, bid), r->buf_size, bid,
			      io_uring_buf_ring_mask(r->buf_count), 0);
	io_uring_buf_ring_advance(r->br, 1);
	r->buf_free++;
}

void ring_prep_timeout(struct ring *r, struct __kernel_timespec *ts, uint64_t ud)
{
	struct io_uring_sqe *sqe = ring_sqe(r);

	io_uring_prep_timeout(sqe, ts, 0, 0);
	io_uring_sqe_set_data64(sqe, ud);
}

void ring_prep_cancel(struct ring *r, uint64_t target_ud, uint64_t ud)
{
	struct io_uring_sqe *sqe = ring_sqe(r);

	io_uring_prep_cancel64(sqe, target_ud, 0);
	io_uring_sqe_set_data64(sqe, ud);
}
