/* Pins the failure path: a failed, short or unsynced batch fails its messages, seals the segment, and a new one takes over. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <cmocka.h>

#include "spool_testlib.h"

#define N 4

static char body[N][1200];
static struct spool_msg msg[N];
static uint8_t enc[N][512];

/* Each test starts with messages never begun (spool_msg_begin asserts it). */
static int reset(void **state)
{
	(void)state;
	memset(msg, 0, sizeof(msg));
	return 0;
}

static void write_turn(struct spt *t, uint32_t from, uint32_t to)
{
	for (uint32_t i = from; i < to; i++) {
		memset(body[i], 'k' + (int)i, sizeof(body[i]));
		spt_msg_write(t, &msg[i], body[i], sizeof(body[i]));
		spt_msg_commit(t, &msg[i], enc[i], sizeof(enc[i]));
	}
}

/* Every message of the batch got on_durable with res (never 0). */
static void assert_all_failed(const struct spt *t, uint32_t from, uint32_t to, int res)
{
	for (uint32_t i = from; i < to; i++) {
		int at = spt_durable_index(t, &msg[i]);

		assert_true(at >= 0);
		assert_int_equal(t->durable_res[at], res);
	}
}

/* After a seal: the next message goes to a fresh segment (announced by
 * on_segment) and is durable again. */
static void assert_recovers(struct spt *t, uint64_t sealed_seq)
{
	uint32_t before = t->ndurable;

	spool_flush(t->sp); /* a turn ends: a sealed segment is replaced */
	spt_drain(t);	    /* open, head, dirsync */
	assert_int_equal(t->nsegment, 1);
	assert_true(t->segment[0] > sealed_seq);
	assert_int_equal(spool_current_seq(t->sp), t->segment[0]);
	assert_int_equal(spool_write_error(t->sp), 0);
	assert_true(spool_seg_quiet(t->sp, sealed_seq)); /* closed */
	write_turn(t, N - 1, N);
	spool_flush(t->sp);
	spt_drain(t);
	assert_int_equal(t->ndurable, before + 1);
	assert_int_equal(t->durable_res[before], 0);
	assert_int_equal(t->durable_seq[before], t->segment[0]);
}

/* The write fails (EIO): no message of its batch is reported durable,
 * the linked sync (cancelled by the kernel) changes nothing, and the
 * segment is sealed: a message committed there afterwards fails too, from
 * the next flush, never from the commit call. */
static void write_error_fails_the_batch(void **state)
{
	struct spt t;
	uint64_t seq;

	(void)state;
	spt_open(&t, 1 << 20, true);
	seq = spool_current_seq(t.sp);
	write_turn(&t, 0, 2);
	spool_flush(t.sp);
	spt_reap(&t, 2);
	spt_hand(&t, SPOOL_OP_WRITE, -EIO);
	assert_int_equal(t.ndurable, 0);
	spt_hand(&t, SPOOL_OP_SYNC, -ECANCELED);
	assert_int_equal(t.ndurable, 2);
	assert_all_failed(&t, 0, 2, -EIO);
	assert_int_equal(spool_write_error(t.sp), -EIO);
	assert_int_equal(spool_stats(t.sp)->messages, 0);
	assert_int_equal(spool_rec_put(t.sp, SPOOL_REC_DONE, msg[0].id, "x", 1), -EAGAIN);

	/* Begun while the segment is sealed: it still lands there, and fails. */
	write_turn(&t, 2, 3);
	assert_int_equal(t.ndurable, 2);
	spool_flush(t.sp);
	assert_int_equal(t.ndurable, 3);
	assert_all_failed(&t, 2, 3, -EIO);
	assert_recovers(&t, seq);
	spt_close(&t);
}

/* A short write (what a full disk gives) is an error too: -ENOSPC. */
static void short_write_fails_the_batch(void **state)
{
	struct spt t;

	(void)state;
	spt_open(&t, 1 << 20, true);
	write_turn(&t, 0, 2);
	spool_flush(t.sp);
	spt_reap(&t, 2);
	assert_int_equal(ring_ud_op(t.cqe_ud[0]), SPOOL_OP_WRITE);
	assert_true(t.cqe_res[0] > 8);
	spt_hand(&t, SPOOL_OP_WRITE, t.cqe_res[0] - 8);
	spt_hand(&t, SPOOL_OP_SYNC, -ECANCELED);
	assert_int_equal(t.ndurable, 2);
	assert_all_failed(&t, 0, 2, -ENOSPC);
	assert_int_equal(spool_write_error(t.sp), -ENOSPC);
	spt_drain(&t);
	spt_close(&t);
}

/* The write succeeds but the fdatasync fails: the kernel may have dropped
 * the dirty pages, so nothing of the batch is acknowledged. */
static void sync_error_fails_the_batch(void **state)
{
	struct spt t;

	(void)state;
	spt_open(&t, 1 << 20, true);
	write_turn(&t, 0, 3);
	spool_flush(t.sp);
	spt_reap(&t, 2);
	spt_hand(&t, SPOOL_OP_WRITE, 0 /* the real, full length */);
	assert_int_equal(t.ndurable, 0);
	spt_hand(&t, SPOOL_OP_SYNC, -EIO);
	assert_int_equal(t.ndurable, 3);
	assert_all_failed(&t, 0, 3, -EIO);
	assert_int_equal(spool_write_error(t.sp), -EIO);
	spt_drain(&t);
	spt_close(&t);
}

/* A real short write: a file size limit just past the segment's head makes
 * the kernel write part of the batch.  Every completion is the kernel's own;
 * the messages fail and the buffer they were written from is released. */
static void real_short_write_fails_the_batch(void **state)
{
	struct rlimit old, lim;
	struct spt t;
	int bid;

	(void)state;
	spt_open(&t, 1 << 20, true);
	bid = ring_buf_alloc(&t.ring);
	assert_true(bid >= 0);
	memset(ring_buf_ptr(&t.ring, (uint16_t)bid), 'z', 3000);
	spool_msg_begin(t.sp, &msg[0], spool_next_id(t.sp), 1, 1);
	spool_msg_append(t.sp, &msg[0], ring_buf_ptr(&t.ring, (uint16_t)bid), 3000, (uint16_t)bid);
	spt_msg_commit(&t, &msg[0], enc[0], sizeof(enc[0]));
	assert_int_equal(t.ring.buf_refs[bid], 2); /* ours and the write's */

	/* Past the limit the kernel sends SIGXFSZ; the write's short count is
	 * what the spool must see. */
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = (struct rlimit){.rlim_cur = 1024, .rlim_max = old.rlim_max};
	signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	spool_flush(t.sp);
	spt_reap(&t, 2);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	spt_hand(&t, SPOOL_OP_WRITE, 0);
	spt_hand(&t, SPOOL_OP_SYNC, 0);
	assert_int_equal(t.ndurable, 1);
	assert_true(t.durable_res[0] < 0);
	assert_true(spool_write_error(t.sp) < 0);
	assert_int_equal(t.ring.buf_refs[bid], 1);
	ring_buf_put(&t.ring, (uint16_t)bid);
	/* Nor would a restart deliver it: its commit never reached the file. */
	struct spt_scan sc;

	spt_scan_segment(&t, msg[0].seg_seq, &sc);
	assert_int_equal(sc.commits, 0);
	assert_true(sc.st.file_len <= 1024);
	assert_recovers(&t, msg[0].seg_seq);
	spt_close(&t);
}

/* An envelope that does not fit the caller's buffer is refused (-ENOSPC)
 * before anything of it is placed: the message is aborted as the session
 * does, and the spool goes on.  The batch the commit had opened for it
 * stayed open and empty, and the next flush asserted on it. */
static void oversized_envelope_refused(void **state)
{
	struct spt t;
	uint8_t tiny[8];
	struct spool_rcpt r = {.addr = {"a@x.example", 11}};
	struct spool_env env = {.arrival_s = 1795377841,
				.mail_from = {"s@y.example", 11},
				.rcpt_count = 1,
				.rcpts = &r};

	(void)state;
	spt_open(&t, 1 << 20, true);
	memset(body[0], 'q', sizeof(body[0]));
	spt_msg_write(&t, &msg[0], body[0], sizeof(body[0]));
	env.msg_len = msg[0].wire_len;
	assert_int_equal(spool_msg_commit(t.sp, &msg[0], &env, tiny, sizeof(tiny)), -ENOSPC);
	spool_msg_abort(t.sp, &msg[0]);
	spool_flush_states(t.sp);
	spool_flush(t.sp);
	spt_drain(&t);
	assert_int_equal(t.ndurable, 0);
	write_turn(&t, 1, 2);
	spool_flush(t.sp);
	spt_drain(&t);
	assert_int_equal(t.ndurable, 1);
	assert_int_equal(t.durable_res[0], 0);
	assert_ptr_equal(t.durable[0], &msg[1]);
	assert_false(spool_busy(t.sp));
	spt_close(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(write_error_fails_the_batch, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(short_write_fails_the_batch, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(sync_error_fails_the_batch, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(real_short_write_fails_the_batch, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(oversized_envelope_refused, reset, spt_teardown),
	};

	spt_require_io_uring();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
