/* Pins group commit: the messages of a turn share one write and one fdatasync, and none is durable before that sync completed. */
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

#define N 8

static char body[N][1500];
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
		memset(body[i], 'a' + (int)i, sizeof(body[i]));
		spt_msg_write(t, &msg[i], body[i], sizeof(body[i]));
		spt_msg_commit(t, &msg[i], enc[i], sizeof(enc[i]));
	}
	/* Never from the call that started the work (spool.h). */
	assert_int_equal(t->ndurable, 0);
}

/* N messages committed in one turn: one writev, one fdatasync linked
 * behind it; the write's completion alone releases nobody (invariant 1:
 * no 250 before the message is on disk), the sync's releases all N. */
static void one_sync_per_turn(void **state)
{
	struct spt t;

	(void)state;
	spt_open(&t, 1 << 20, true);
	write_turn(&t, 0, N);
	spool_flush(t.sp);
	assert_int_equal(spool_stats(t.sp)->writes, 1);
	assert_int_equal(spool_stats(t.sp)->syncs, 1);
	assert_int_equal(t.ndurable, 0);

	spt_reap(&t, 2); /* the write and its sync; nothing else in flight */
	assert_int_equal(spt_outstanding(&t), 0);
	assert_int_equal(spt_hand(&t, SPOOL_OP_WRITE, 0), 1);
	assert_int_equal(t.ndurable, 0);
	assert_true(spool_busy(t.sp));
	assert_int_equal(spt_hand(&t, SPOOL_OP_SYNC, 0), 1);
	assert_int_equal(t.ndurable, N);
	for (uint32_t i = 0; i < N; i++) {
		int at = spt_durable_index(&t, &msg[i]);

		assert_true(at >= 0);
		assert_int_equal(t.durable_res[at], 0);
		assert_int_equal(t.durable_seq[at], spool_current_seq(t.sp));
	}
	assert_int_equal(spool_stats(t.sp)->messages, N);
	assert_false(spool_busy(t.sp));

	/* On disk: every message, body intact. */
	struct spt_scan sc;

	spt_scan_segment(&t, spool_current_seq(t.sp), &sc);
	assert_int_equal(sc.commits, N);
	assert_int_equal(sc.bodies_ok, N);
	for (uint32_t i = 0; i < N; i++) {
		assert_int_equal(sc.ids[i], msg[i].id);
		assert_int_equal(sc.wire_len[i], sizeof(body[i]));
	}
	spt_close(&t);
}

/* While a batch is being written and synced, the next turns' commits
 * gather in the segment's next batch: nothing more is written until the
 * flying one lands, then the gathered messages share the next sync. */
static void later_turns_share_the_next_sync(void **state)
{
	struct spt t;

	(void)state;
	spt_open(&t, 1 << 20, true);
	write_turn(&t, 0, 2);
	spool_flush(t.sp);
	spt_reap(&t, 2);

	write_turn(&t, 2, 5); /* turn 2 */
	spool_flush(t.sp);
	write_turn(&t, 5, N); /* turn 3 */
	spool_flush(t.sp);
	assert_int_equal(spool_stats(t.sp)->writes, 1);
	assert_int_equal(spt_outstanding(&t), 0);

	spt_hand(&t, SPOOL_OP_WRITE, 0);
	spt_hand(&t, SPOOL_OP_SYNC, 0);
	assert_int_equal(t.ndurable, 2);
	assert_int_equal(spt_durable_index(&t, &msg[0]) >= 0, 1);
	assert_int_equal(spt_durable_index(&t, &msg[1]) >= 0, 1);

	spool_flush(t.sp); /* the next turn sends what gathered */
	assert_int_equal(spool_stats(t.sp)->writes, 2);
	assert_int_equal(spool_stats(t.sp)->syncs, 2);
	spt_reap(&t, 2);
	spt_hand(&t, SPOOL_OP_WRITE, 0);
	assert_int_equal(t.ndurable, 2);
	spt_hand(&t, SPOOL_OP_SYNC, 0);
	assert_int_equal(t.ndurable, N);
	for (uint32_t i = 0; i < t.ndurable; i++)
		assert_int_equal(t.durable_res[i], 0);
	spt_close(&t);
}

/* spool.durability none: no fdatasync at all; the write's completion is
 * what makes the messages "durable". */
static void durability_none_has_no_sync(void **state)
{
	struct spt t;

	(void)state;
	spt_open(&t, 1 << 20, false);
	write_turn(&t, 0, 3);
	spool_flush(t.sp);
	assert_int_equal(spool_stats(t.sp)->syncs, 0);
	spt_reap(&t, 1);
	assert_int_equal(spt_outstanding(&t), 0);
	assert_int_equal(spt_hand(&t, SPOOL_OP_WRITE, 0), 1);
	assert_int_equal(t.ndurable, 3);
	for (uint32_t i = 0; i < 3; i++)
		assert_int_equal(t.durable_res[i], 0);
	spt_close(&t);
}

/* A record someone waits on (spool_rec_put_sync) rides the turn's batch
 * and its note fires only once that batch's sync completed. */
static int noted = -1000;

static void note_fn(struct spool_note *n, int res)
{
	(void)n;
	noted = res;
}

static void sync_note_waits_for_the_sync(void **state)
{
	struct spool_note note = {.fn = note_fn};
	struct spt t;
	uint8_t rec[24] = {1, 2, 3};

	(void)state;
	noted = -1000;
	spt_open(&t, 1 << 20, true);
	write_turn(&t, 0, 1);
	assert_int_equal(
	    spool_rec_put_sync(t.sp, SPOOL_REC_DONE, msg[0].id, rec, sizeof(rec), &note), 0);
	spool_flush(t.sp);
	assert_int_equal(spool_stats(t.sp)->writes, 1);
	spt_reap(&t, 2);
	spt_hand(&t, SPOOL_OP_WRITE, 0);
	assert_int_equal(noted, -1000);
	spt_hand(&t, SPOOL_OP_SYNC, 0);
	assert_int_equal(noted, 0);
	assert_int_equal(t.ndurable, 1);
	spt_close(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(one_sync_per_turn, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(later_turns_share_the_next_sync, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(durability_none_has_no_sync, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(sync_note_waits_for_the_sync, reset, spt_teardown),
	};

	spt_require_io_uring();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
