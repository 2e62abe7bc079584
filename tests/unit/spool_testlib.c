/* spool_testlib — a real io_uring, a temporary spool directory and a hand-driven loop. */
#include "spool_testlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define SPT_SQ_ENTRIES 256
#define SPT_BUFS       8
#define SPT_BUF_SIZE   4096

static void on_durable(void *ctx, struct spool_msg *m, int res)
{
	struct spt *t = ctx;

	assert_true(t->ndurable < SPT_MAX_CB);
	t->durable[t->ndurable] = m;
	t->durable_res[t->ndurable] = res;
	t->durable_seq[t->ndurable] = m->seg_seq;
	t->ndurable++;
}

static void on_progress(void *ctx, struct spool_msg *m)
{
	struct spt *t = ctx;

	assert_true(t->nprogress < SPT_MAX_CB);
	t->progress[t->nprogress++] = m;
}

static void on_segment(void *ctx, uint64_t seq)
{
	struct spt *t = ctx;

	assert_true(t->nsegment < SPT_MAX_CB);
	t->segment[t->nsegment++] = seq;
}

static const struct spool_ops spt_ops = {
    .on_durable = on_durable,
    .on_progress = on_progress,
    .on_segment = on_segment,
};

void spt_require_io_uring(void)
{
	struct ring r;
	char why[256] = "";
	int rc = ring_init(&r, 8, SPT_BUFS, SPT_BUF_SIZE, why, sizeof(why));

	if (rc < 0) {
		/* meson counts 77 as skipped: a kernel without io_uring (or a
		 * seccomp filter denying it) is not a spool bug. */
		fprintf(stderr, "skipped: this kernel gives no usable io_uring: %s\n", why);
		exit(77);
	}
	ring_exit(&r);
}

/* The fixture of the running test, for spt_teardown after a failure. */
static struct spt *spt_live;

void spt_open(struct spt *t, uint64_t segment_size, bool durable)
{
	char why[256] = "";

	memset(t, 0, sizeof(*t));
	snprintf(t->root, sizeof(t->root), "/tmp/ringmx-spool-XXXXXX");
	assert_non_null(mkdtemp(t->root));
	assert_int_equal(
	    ring_init(&t->ring, SPT_SQ_ENTRIES, SPT_BUFS, SPT_BUF_SIZE, why, sizeof(why)), 0);
	t->ring_up = true;
	spt_live = t;
	assert_int_equal(ring_user_bufs_init(&t->ring, 4), 0);
	assert_int_equal(spool_open(&t->sp, t->root, SPT_SHARD, segment_size, durable, SPT_FIRST_ID,
				    &t->ring, &spt_ops, t, why, sizeof(why)),
			 0);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void spt_close(struct spt *t)
{
	assert_int_equal(spt_outstanding(t), 0);
	assert_int_equal(t->ncqe, 0);
	spool_close(t->sp); /* NULL: the test closed it to read the files */
	t->sp = NULL;
	if (t->ring_up)
		ring_exit(&t->ring);
	t->ring_up = false;
	spt_live = NULL;
	assert_int_equal(nftw(t->root, rm_one, 8, FTW_DEPTH | FTW_PHYS), 0);
}

int spt_teardown(void **state)
{
	struct spt *t = spt_live;

	(void)state;
	if (!t)
		return 0;
	/* A failed test jumped out mid-way: free what it held, so the next
	 * test and /tmp start clean. */
	spt_live = NULL;
	spool_close(t->sp);
	if (t->ring_up)
		ring_exit(&t->ring);
	nftw(t->root, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	return 0;
}

uint32_t spt_outstanding(struct spt *t)
{
	/* Every SQE the spool prepares yields exactly one CQE (no multishot
	 * op; a cancelled link still completes), so prepared minus reaped is
	 * what the kernel still owes. */
	return t->ring.uring.sq.sqe_tail - t->seen;
}

void spt_reap(struct spt *t, uint32_t want)
{
	assert_true(want <= SPT_MAX_CQE);
	assert_true(want <= t->ncqe + spt_outstanding(t));
	assert_true(io_uring_submit(&t->ring.uring) >= 0);
	t->ring.pending = 0;
	while (t->ncqe < want) {
		struct io_uring_cqe *cqe;
		int rc = io_uring_wait_cqe(&t->ring.uring, &cqe);

		if (rc == -EINTR)
			continue;
		assert_int_equal(rc, 0);
		t->cqe_ud[t->ncqe] = cqe->user_data;
		t->cqe_res[t->ncqe] = cqe->res;
		t->ncqe++;
		t->seen++;
		io_uring_cqe_seen(&t->ring.uring, cqe);
	}
}

uint32_t spt_hand(struct spt *t, uint8_t op, int res_override)
{
	uint64_t ud[SPT_MAX_CQE];
	int res[SPT_MAX_CQE];
	uint32_t n = 0, keep = 0;

	/* Taken off the list first: spool_complete may prepare more work,
	 * which a later spt_reap collects. */
	for (uint32_t i = 0; i < t->ncqe; i++) {
		if (ring_ud_op(t->cqe_ud[i]) == op) {
			ud[n] = t->cqe_ud[i];
			res[n++] = res_override ? res_override : t->cqe_res[i];
		} else {
			t->cqe_ud[keep] = t->cqe_ud[i];
			t->cqe_res[keep++] = t->cqe_res[i];
		}
	}
	t->ncqe = keep;
	for (uint32_t i = 0; i < n; i++)
		spool_complete(t->sp, ud[i], res[i]);
	return n;
}

void spt_drain(struct spt *t)
{
	while (t->ncqe || spt_outstanding(t)) {
		spt_reap(t, t->ncqe + spt_outstanding(t));
		for (uint8_t op = SPOOL_OP_FIRST; op <= SPOOL_OP_LAST; op++)
			spt_hand(t, op, 0);
	}
}

void spt_settle(struct spt *t)
{
	/* A batch that filled up leaves the next one open for a later turn,
	 * so a few turns may be needed; a bound, not a hang, if one is stuck.
	 * State records wait for spool_flush_states, as the engine asks on
	 * every turn while stopping. */
	for (int turn = 0; spool_busy(t->sp); turn++) {
		assert_true(turn < 64);
		spool_flush_states(t->sp);
		spool_flush(t->sp);
		spt_drain(t);
	}
}

void spt_msg_write(struct spt *t, struct spool_msg *m, const char *body, uint32_t len)
{
	spool_msg_begin(t->sp, m, spool_next_id(t->sp), 1, 1);
	for (uint32_t off = 0; off < len;) {
		/* Appended in pieces of up to 1000 bytes, as receive buffers
		 * would hand them over. */
		uint32_t n = len - off < 1000 ? len - off : 1000;

		assert_true(spool_msg_can_write(m));
		spool_msg_append(t->sp, m, body + off, n, SPOOL_NO_BUF);
		off += n;
	}
}

void spt_msg_commit(struct spt *t, struct spool_msg *m, uint8_t *enc, size_t cap)
{
	struct spool_rcpt r = {.addr = {"a@x.example", 11}};
	struct spool_env env = {.arrival_s = 1795377841,
				.msg_len = m->wire_len,
				.mail_from = {"s@y.example", 11},
				.rcpt_count = 1,
				.rcpts = &r};

	assert_true(spool_msg_can_commit(m));
	assert_int_equal(spool_msg_commit(t->sp, m, &env, enc, cap), 0);
}

int spt_durable_index(const struct spt *t, const struct spool_msg *m)
{
	for (uint32_t i = 0; i < t->ndurable; i++)
		if (t->durable[i] == m)
			return (int)i;
	return -1;
}

static int scan_one(void *ctx, const struct spool_scan_msg *msg)
{
	struct spt_scan *s = ctx;

	assert_true(s->commits < SPT_MAX_CB);
	s->ids[s->commits] = msg->env.id;
	s->wire_len[s->commits] = msg->env.wire_len;
	s->commits++;
	s->bodies_ok += msg->body_ok;
	return 0;
}

static int scan_state(void *ctx, const struct spool_rec_hdr *h, const uint8_t *payload)
{
	struct spt_scan *s = ctx;

	(void)h;
	(void)payload;
	s->states++;
	return 0;
}

/* Opens the segment whose head names seq, by reading every file's head:
 * the test does not depend on how segment files are named. */
static int segment_fd(const struct spt *t, uint64_t seq)
{
	char dir[128];
	struct dirent *de;
	DIR *d;
	int found = -1;

	snprintf(dir, sizeof(dir), "%s/%u", t->root, SPT_SHARD);
	d = opendir(dir);
	assert_non_null(d);
	while (found < 0 && (de = readdir(d)) != NULL) {
		struct spool_scan_stats st = {0};
		int fd;

		if (de->d_name[0] == '.')
			continue;
		fd = openat(dirfd(d), de->d_name, O_RDONLY | O_CLOEXEC);
		assert_true(fd >= 0);
		if (spool_segment_scan(fd, UINT64_MAX, false, NULL, NULL, &st) == 0 &&
		    st.has_info && st.info.seq == seq)
			found = fd;
		else
			close(fd);
	}
	closedir(d);
	return found;
}

void spt_scan_segment(const struct spt *t, uint64_t seq, struct spt_scan *out)
{
	int fd = segment_fd(t, seq);

	memset(out, 0, sizeof(*out));
	assert_true(fd >= 0);
	assert_int_equal(
	    spool_segment_scan_states(fd, UINT64_MAX, true, scan_one, scan_state, out, &out->st),
	    0);
	close(fd);
}

bool spt_segment_exists(const struct spt *t, uint64_t seq)
{
	int fd = segment_fd(t, seq);

	if (fd >= 0)
		close(fd);
	return fd >= 0;
}
