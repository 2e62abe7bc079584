/* Pins the spool's bounds: a writer beyond a full batch or the segment slots waits or is refused as spool.h says, and loses nothing. */
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

#define NMSG  200
#define LIMIT 100000 /* far beyond any batch: the loops below must stop first */

static struct spool_msg msg[NMSG];
static uint8_t enc[NMSG][256];
static const char bytes[] = "0123456789abcdef";

static int reset(void **state)
{
	(void)state;
	memset(msg, 0, sizeof(msg));
	return 0;
}

/* A first message's batch in flight (reaped, not handed over): the
 * segment's one flying batch, so whatever comes next only fills the next. */
static void one_batch_flying(struct spt *t, struct spool_msg *m, uint8_t *e)
{
	spt_msg_write(t, m, bytes, 10);
	spt_msg_commit(t, m, e, 256);
	spool_flush(t->sp);
	spt_reap(t, 2);
}

static void land_flying_batch(struct spt *t)
{
	assert_int_equal(spt_hand(t, SPOOL_OP_WRITE, 0), 1);
	assert_int_equal(spt_hand(t, SPOOL_OP_SYNC, 0), 1);
}

/* A writer appending while a batch flies: pieces gather, SPOOL_PIECES_MAX
 * at a time become chunks in the next batch, and once that batch is full
 * spool_msg_can_write says no.  The writer waits; it is called back (once)
 * when the flying batch lands, goes on, and every byte reaches the disk. */
static void writer_waits_for_a_full_batch(void **state)
{
	struct spool_msg *m = &msg[1];
	struct spt t;
	uint32_t n = 0;

	(void)state;
	spt_open(&t, 1 << 24, true);
	one_batch_flying(&t, &msg[0], enc[0]);
	spool_msg_begin(t.sp, m, spool_next_id(t.sp), 1, 1);
	while (spool_msg_can_write(m)) {
		assert_true(n < LIMIT);
		spool_msg_append(t.sp, m, &bytes[n % 16], 1, SPOOL_NO_BUF);
		n++;
	}
	assert_true(n > SPOOL_PIECES_MAX);
	assert_int_equal(spool_stats(t.sp)->writes, 1); /* nothing more went out */
	spool_msg_wait(t.sp, m);
	spool_flush(t.sp);
	assert_int_equal(spt_outstanding(&t), 0);
	assert_int_equal(t.nprogress, 0);

	land_flying_batch(&t);
	assert_int_equal(t.ndurable, 1);
	assert_int_equal(t.nprogress, 1);
	assert_ptr_equal(t.progress[0], m);
	assert_true(spool_msg_can_write(m));
	for (uint32_t i = 0; i < SPOOL_PIECES_MAX; i++, n++) {
		assert_true(spool_msg_can_write(m));
		spool_msg_append(t.sp, m, &bytes[n % 16], 1, SPOOL_NO_BUF);
	}
	/* The first of these sent the full batch out and opened the next. */
	assert_int_equal(spool_stats(t.sp)->writes, 2);
	assert_true(spool_msg_can_commit(m));
	spt_msg_commit(&t, m, enc[1], sizeof(enc[1]));
	spt_settle(&t);
	assert_int_equal(t.ndurable, 2);
	assert_int_equal(t.durable_res[1], 0);

	struct spt_scan sc;

	spt_scan_segment(&t, spool_current_seq(t.sp), &sc);
	assert_int_equal(sc.commits, 2);
	assert_int_equal(sc.bodies_ok, 2);
	assert_int_equal(sc.wire_len[1], n);
	spt_close(&t);
}

/* Commits while a batch flies fill the next batch until spool_msg_can_commit
 * says no; the refused writer is woken when the flying batch lands and
 * commits then.  Each batch carries one sync for all its messages. */
static void committer_waits_for_a_full_batch(void **state)
{
	struct spt t;
	uint32_t k = 1;

	(void)state;
	spt_open(&t, 1 << 24, true);
	one_batch_flying(&t, &msg[0], enc[0]);
	for (;; k++) {
		assert_true(k < NMSG);
		spt_msg_write(&t, &msg[k], bytes, 10);
		if (!spool_msg_can_commit(&msg[k]))
			break;
		spt_msg_commit(&t, &msg[k], enc[k], sizeof(enc[k]));
	}
	assert_true(k > 2);
	spool_msg_wait(t.sp, &msg[k]);
	spool_flush(t.sp);
	assert_int_equal(spool_stats(t.sp)->writes, 1);
	assert_int_equal(t.nprogress, 0);

	land_flying_batch(&t);
	assert_int_equal(t.ndurable, 1);
	assert_int_equal(t.nprogress, 1);
	assert_ptr_equal(t.progress[0], &msg[k]);
	spt_msg_commit(&t, &msg[k], enc[k], sizeof(enc[k]));
	spt_settle(&t);
	assert_int_equal(t.ndurable, k + 1);
	for (uint32_t i = 0; i <= k; i++)
		assert_int_equal(t.durable_res[i], 0);
	/* The first batch, the full one, and the one the last commit opened. */
	assert_int_equal(spool_stats(t.sp)->syncs, 3);
	assert_int_equal(spool_stats(t.sp)->messages, k + 1);
	spt_close(&t);
}

/* spool_rec_put with no batch room says -EAGAIN (the caller retries next
 * turn); once the flying batch lands it takes records again, and every
 * record it accepted reaches the disk. */
static void state_record_refused_when_full(void **state)
{
	uint8_t rec[24] = {5};
	struct spt t;
	uint32_t n = 0;
	int rc;

	(void)state;
	spt_open(&t, 1 << 24, true);
	one_batch_flying(&t, &msg[0], enc[0]);
	while ((rc = spool_rec_put(t.sp, SPOOL_REC_DONE, msg[0].id, rec, sizeof(rec))) == 0) {
		assert_true(n < LIMIT);
		n++;
	}
	assert_int_equal(rc, -EAGAIN);
	assert_true(n > 0);
	land_flying_batch(&t);
	assert_int_equal(spool_rec_put(t.sp, SPOOL_REC_DONE, msg[0].id, rec, sizeof(rec)), 0);
	n++;
	spool_flush_states(t.sp);
	spt_settle(&t);

	struct spt_scan sc;

	spt_scan_segment(&t, spool_current_seq(t.sp), &sc);
	assert_int_equal(sc.states, n);
	spt_close(&t);
}

/* The state record of the largest message the config allows (one octet
 * per recipient, SPOOL_STATE_MAX) goes in and lands; a payload no batch
 * could ever hold is refused for good (-E2BIG), not "next turn" for ever. */
static void largest_state_record_fits(void **state)
{
	static uint8_t rec[SPOOL_STATE_MAX + 1];
	struct spt t;

	(void)state;
	memset(rec, 3, sizeof(rec));
	spt_open(&t, 1 << 24, true);
	assert_int_equal(spool_rec_put(t.sp, SPOOL_REC_DONE, SPT_FIRST_ID, rec, SPOOL_STATE_MAX),
			 0);
	assert_int_equal(spool_rec_put(t.sp, SPOOL_REC_DONE, SPT_FIRST_ID, rec, 1 << 20), -E2BIG);
	spool_flush_states(t.sp);
	spt_settle(&t);

	struct spt_scan sc;

	spt_scan_segment(&t, spool_current_seq(t.sp), &sc);
	assert_int_equal(sc.states, 1);
	spt_close(&t);
}

/* SPOOL_SEGMENTS_MAX segments open at once: with every slot held by a
 * message still being received, a full segment is not rotated but grows
 * (spool.c), and rotation resumes once a slot frees up. */
static void segment_slots_are_bounded(void **state)
{
	struct spt t;
	uint64_t seq1;

	(void)state;
	spt_open(&t, 1, true); /* every segment is "full" from its head on */
	seq1 = spool_current_seq(t.sp);
	for (uint32_t i = 0; i < SPOOL_SEGMENTS_MAX - 1; i++) {
		spool_msg_begin(t.sp, &msg[i], spool_next_id(t.sp), 1, 1);
		assert_int_equal(spt_outstanding(&t), 1);
		spt_drain(&t);
		assert_int_equal(t.nsegment, i + 1);
		assert_int_equal(spool_current_seq(t.sp), seq1 + i + 1);
	}
	/* Every slot in use: this begin starts nothing. */
	spt_msg_write(&t, &msg[7], bytes, 10);
	assert_int_equal(spt_outstanding(&t), 0);
	spt_msg_commit(&t, &msg[7], enc[7], sizeof(enc[7]));
	spool_flush(t.sp);
	spt_drain(&t);
	assert_int_equal(t.ndurable, 1);
	assert_int_equal(t.durable_res[0], 0);
	assert_int_equal(t.durable_seq[0], seq1 + SPOOL_SEGMENTS_MAX - 1);
	assert_int_equal(t.nsegment, SPOOL_SEGMENTS_MAX - 1);

	/* The held segments close as their messages go. */
	for (uint32_t i = 0; i < SPOOL_SEGMENTS_MAX - 1; i++)
		spool_msg_abort(t.sp, &msg[i]);
	spt_drain(&t);
	for (uint32_t i = 0; i < SPOOL_SEGMENTS_MAX - 1; i++)
		assert_true(spool_seg_quiet(t.sp, seq1 + i));
	spool_msg_begin(t.sp, &msg[8], spool_next_id(t.sp), 1, 1);
	assert_int_equal(spt_outstanding(&t), 1);
	spool_msg_abort(t.sp, &msg[8]);
	spt_settle(&t);
	assert_int_equal(t.nsegment, SPOOL_SEGMENTS_MAX);
	assert_false(spool_busy(t.sp));
	spt_close(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(writer_waits_for_a_full_batch, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(committer_waits_for_a_full_batch, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(state_record_refused_when_full, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(largest_state_record_fits, reset, spt_teardown),
	    cmocka_unit_test_setup_teardown(segment_slots_are_bounded, reset, spt_teardown),
	};

	spt_require_io_uring();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
