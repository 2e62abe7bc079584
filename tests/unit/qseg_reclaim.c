/* Pins the segment table delivery keeps: seq order, live counts that never
 * go below zero, and reclaim taking only the oldest segments with nothing
 * live, older than the current one, quiet, and while there is room. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "queue/qseg.h"
#include "queue/spool.h"

/* What reclaim asked of the caller, and what the caller answers. */
struct fake {
	uint64_t loud_seq; /* the spool still writes this one (0: none) */
	uint32_t room;	   /* removals it may start */
	uint64_t removed[8];
	uint32_t nremoved;
};

static bool fake_quiet(void *ctx, uint64_t seq)
{
	struct fake *f = ctx;

	return seq != f->loud_seq;
}

static bool fake_room(void *ctx)
{
	struct fake *f = ctx;

	return f->room > 0;
}

static void fake_remove(void *ctx, const struct qseg *s)
{
	struct fake *f = ctx;

	assert_true(f->nremoved < 8);
	assert_int_equal(s->live, 0);
	f->removed[f->nremoved++] = s->seq;
	f->room--;
}

static const struct qseg_reclaim_ops ops = {fake_quiet, fake_room, fake_remove};
static const struct spool_key nokey;

static void table_order_and_track(void **state)
{
	struct qseg_table t = {0};

	(void)state;
	/* Loaded out of order, or tracked after a newer one: kept sorted. */
	assert_non_null(qseg_add(&t, 5, -1, &nokey));
	assert_non_null(qseg_add(&t, 2, -1, &nokey));
	assert_int_equal(qseg_track(&t, 9), 0);
	assert_int_equal(qseg_track(&t, 9), 0); /* known: not twice */
	assert_non_null(qseg_add(&t, 7, -1, &nokey));
	assert_int_equal(t.n, 4);
	for (uint32_t i = 1; i < t.n; i++)
		assert_true(t.v[i - 1].seq < t.v[i].seq);
	/* Many: the table grows and every entry is found. */
	for (uint64_t s = 100; s < 400; s++)
		assert_int_equal(qseg_track(&t, s), 0);
	assert_int_equal(t.n, 304);
	assert_non_null(qseg_find(&t, 257));
	assert_null(qseg_find(&t, 3));
	assert_int_equal(qseg_fd(&t, 3), -1);
	qseg_table_free(&t);
	assert_int_equal(t.n, 0);
}

static void live_counts(void **state)
{
	struct qseg_table t = {0};
	struct qseg *s;

	(void)state;
	s = qseg_add(&t, 1, -1, &nokey);
	qseg_ref(s);
	qseg_ref(s);
	qseg_unref(&t, 1);
	assert_int_equal(qseg_find(&t, 1)->live, 1);
	qseg_unref(&t, 1);
	qseg_unref(&t, 1); /* already none live: stays at zero */
	assert_int_equal(qseg_find(&t, 1)->live, 0);
	qseg_unref(&t, 42); /* untracked (its entry failed): ignored */
	assert_int_equal(t.n, 1);
	qseg_table_free(&t);
}

static void reclaim_rule(void **state)
{
	struct qseg_table t = {0};
	struct fake f = {.room = 8};

	(void)state;
	for (uint64_t s = 1; s <= 5; s++)
		assert_int_equal(qseg_track(&t, s), 0);
	qseg_ref(qseg_find(&t, 3));
	/* 1 and 2 go; 3 has a live message and pins 4 and 5 behind it. */
	assert_int_equal(qseg_reclaim(&t, 5, &ops, &f), 2);
	assert_int_equal(f.nremoved, 2);
	assert_int_equal(f.removed[0], 1);
	assert_int_equal(f.removed[1], 2);
	assert_int_equal(t.v[0].seq, 3);
	/* 3 empties; the current segment (5) is never removed. */
	qseg_unref(&t, 3);
	assert_int_equal(qseg_reclaim(&t, 5, &ops, &f), 2);
	assert_int_equal(f.removed[3], 4);
	assert_int_equal(t.n, 1);
	assert_int_equal(t.v[0].seq, 5);
	qseg_table_free(&t);
}

static void reclaim_waits(void **state)
{
	struct qseg_table t = {0};
	struct fake f = {.room = 1, .loud_seq = 2};

	(void)state;
	for (uint64_t s = 1; s <= 4; s++)
		assert_int_equal(qseg_track(&t, s), 0);
	/* Room for one removal: one goes, the rest wait for the next turn. */
	assert_int_equal(qseg_reclaim(&t, 9, &ops, &f), 1);
	assert_int_equal(t.v[0].seq, 2);
	/* The spool still writes to 2: it stays, and so do the newer ones. */
	f.room = 8;
	assert_int_equal(qseg_reclaim(&t, 9, &ops, &f), 0);
	f.loud_seq = 0;
	assert_int_equal(qseg_reclaim(&t, 9, &ops, &f), 3);
	assert_int_equal(t.n, 0);
	qseg_table_free(&t);
}

/* Start-up load: the fd is opened by the one segment name, and a missing
 * file is an error with the entry still tracked (it is counted). */
static void load_names(void **state)
{
	char dir[] = "/tmp/qseg_reclaim_XXXXXX", name[SPOOL_SEG_NAME_MAX];
	struct qseg_table t = {0};
	int dirfd, fd;

	(void)state;
	assert_non_null(mkdtemp(dir));
	dirfd = open(dir, O_RDONLY | O_DIRECTORY);
	assert_true(dirfd >= 0);
	spool_seg_name(0x1f, name);
	assert_string_equal(name, "000000000000001f.seg");
	fd = openat(dirfd, name, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(qseg_load(&t, dirfd, 0x1f, 0), 0);
	assert_true(qseg_fd(&t, 0x1f) >= 0);
	assert_int_equal(qseg_load(&t, dirfd, 0x20, 0), -ENOENT);
	assert_int_equal(t.n, 2);
	assert_int_equal(qseg_fd(&t, 0x20), -1);
	qseg_table_free(&t);
	unlinkat(dirfd, name, 0);
	close(dirfd);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(table_order_and_track),
	    cmocka_unit_test(live_counts),
	    cmocka_unit_test(reclaim_rule),
	    cmocka_unit_test(reclaim_waits),
	    cmocka_unit_test(load_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
