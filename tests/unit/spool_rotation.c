/* Pins segment rotation: a full segment hands over to a new one with its head, and recovery finds the messages of both. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "spool_testlib.h"

#define SEG_SIZE 4096

enum { A, B, E, C, NMSG };

static char body[NMSG][5000];
static struct spool_msg msg[NMSG];
static uint8_t enc[NMSG][512];

static void write_msg(struct spt *t, int i, uint32_t len)
{
	memset(body[i], 'A' + i, len);
	spt_msg_write(t, &msg[i], body[i], len);
}

/* The new segment opens in the background: the head write and the
 * directory sync both complete before it becomes current (a message
 * acknowledged from it relies on its directory entry). */
static void rotate_by_hand(struct spt *t, uint64_t seq1)
{
	spt_reap(t, 1);
	assert_int_equal(spt_hand(t, SPOOL_OP_OPEN, 0), 1);
	spt_reap(t, 2);
	assert_int_equal(spt_hand(t, SPOOL_OP_SEGHDR, 0), 1);
	assert_int_equal(t->nsegment, 0);
	assert_int_equal(spool_current_seq(t->sp), seq1);
	assert_int_equal(spt_hand(t, SPOOL_OP_DIRSYNC, 0), 1);
	assert_int_equal(t->nsegment, 1);
	assert_int_equal(t->segment[0], seq1 + 1);
	assert_int_equal(spool_current_seq(t->sp), seq1 + 1);
}

/* On disk: each segment has its head (the scan finds it by the seq in
 * it) and its messages, bodies intact. */
static void assert_on_disk(const struct spt *t, uint64_t seq1)
{
	struct spt_scan s1, s2;

	spt_scan_segment(t, seq1, &s1);
	spt_scan_segment(t, seq1 + 1, &s2);
	assert_true(s2.st.has_info);
	assert_int_equal(s2.st.info.version, SPOOL_SEG_VERSION);
	assert_int_equal(s2.st.info.shard, SPT_SHARD);
	assert_int_equal(s1.commits, 3);
	assert_int_equal(s1.bodies_ok, 3);
	assert_int_equal(s1.ids[0], msg[A].id);
	assert_int_equal(s1.ids[1], msg[B].id);
	assert_int_equal(s1.ids[2], msg[E].id);
	assert_int_equal(s2.commits, 1);
	assert_int_equal(s2.bodies_ok, 1);
	assert_int_equal(s2.ids[0], msg[C].id);
	assert_int_equal(s2.wire_len[0], 2000);
}

static void rotation_keeps_every_message(void **state)
{
	struct spt t;
	uint64_t seq1, max_ids[SPOOL_ID_PREFIXES] = {0}, recovered = 0;
	char why[256] = "";

	(void)state;
	spt_open(&t, SEG_SIZE, true);
	seq1 = spool_current_seq(t.sp);

	/* A fills the first segment past its size. */
	write_msg(&t, A, 5000);
	spt_msg_commit(&t, &msg[A], enc[A], sizeof(enc[A]));
	spt_settle(&t);
	assert_int_equal(spt_outstanding(&t), 0);

	/* B and E begin on the full segment: that starts the rotation, and
	 * they stay where they began. */
	write_msg(&t, B, 1000);
	assert_int_equal(spt_outstanding(&t), 1); /* the new segment's open */
	write_msg(&t, E, 1000);
	spt_msg_commit(&t, &msg[B], enc[B], sizeof(enc[B]));
	spool_flush(t.sp);
	spt_reap(&t, 3);
	spt_hand(&t, SPOOL_OP_WRITE, 0);
	spt_hand(&t, SPOOL_OP_SYNC, 0);
	assert_int_equal(t.ndurable, 2);
	assert_int_equal(t.durable_seq[1], seq1);
	rotate_by_hand(&t, seq1);

	/* E still holds the old segment open; it closes once E is durable. */
	assert_false(spool_seg_quiet(t.sp, seq1));
	assert_int_equal(spt_outstanding(&t), 0);
	spt_msg_commit(&t, &msg[E], enc[E], sizeof(enc[E]));
	spt_settle(&t);
	assert_int_equal(t.ndurable, 3);
	assert_int_equal(t.durable_res[2], 0);
	assert_int_equal(t.durable_seq[2], seq1);
	assert_true(spool_seg_quiet(t.sp, seq1));

	/* C begins after the rotation: the new segment. */
	write_msg(&t, C, 2000);
	spt_msg_commit(&t, &msg[C], enc[C], sizeof(enc[C]));
	spt_settle(&t);
	assert_int_equal(t.ndurable, NMSG);
	assert_int_equal(t.durable_res[3], 0);
	assert_int_equal(t.durable_seq[3], seq1 + 1);

	assert_on_disk(&t, seq1);

	/* And start-up recovery counts all four, ids above every one. */
	spool_close(t.sp);
	t.sp = NULL;
	assert_int_equal(spool_recover(t.root, SPT_SHARD, &recovered, max_ids, why, sizeof(why)),
			 0);
	assert_int_equal(recovered, NMSG);
	assert_int_equal(max_ids[SPT_SHARD], msg[C].id);
	spt_close(&t);
}

/* State records count toward the size too: a segment filled by them alone
 * rotates, and the records land where they were placed. */
static void state_records_rotate_too(void **state)
{
	struct spt t;
	uint8_t rec[512] = {7};
	uint64_t seq1;
	uint32_t puts = 0;

	(void)state;
	spt_open(&t, SEG_SIZE, true);
	seq1 = spool_current_seq(t.sp);
	while (spt_outstanding(&t) == 0) {
		assert_true(puts < 64);
		assert_int_equal(spool_rec_put(t.sp, SPOOL_REC_DONE, 1, rec, sizeof(rec)), 0);
		puts++;
	}
	assert_true(puts * sizeof(rec) >= SEG_SIZE - 64 - 512);
	spool_flush_states(t.sp);
	spt_settle(&t);
	assert_int_equal(t.nsegment, 1);
	assert_int_equal(spool_current_seq(t.sp), seq1 + 1);
	assert_true(spool_seg_quiet(t.sp, seq1));

	struct spt_scan s1;

	spt_scan_segment(&t, seq1, &s1);
	assert_int_equal(s1.states, puts);
	assert_int_equal(s1.commits, 0);
	spt_close(&t);
}

static int reset(void **state)
{
	(void)state;
	memset(msg, 0, sizeof(msg));
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(rotation_keeps_every_message, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(state_records_rotate_too, reset, spt_teardown),
	};

	spt_require_io_uring();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
