/* Pins the per-state lists (order, counts, moves between lists), the retry
 * sweep (only due, never a message being moved) and the retry schedule (the
 * last step repeats, a wait is cut to the expiry). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "queue/qsched.h"

static void lists(void **state)
{
	struct qsched s = {0};
	struct qmsg m[4];

	(void)state;
	memset(m, 0, sizeof(m));
	for (int i = 0; i < 4; i++)
		qsched_set(&s, &m[i], QW_READY);
	assert_int_equal(s.count[QW_READY], 4);
	assert_ptr_equal(s.head[QW_READY], &m[0]);
	assert_ptr_equal(s.tail[QW_READY], &m[3]);
	/* From the middle to another list: both stay linked in order. */
	qsched_set(&s, &m[1], QW_ACTIVE);
	assert_int_equal(s.count[QW_READY], 3);
	assert_int_equal(s.count[QW_ACTIVE], 1);
	assert_ptr_equal(m[0].next, &m[2]);
	assert_ptr_equal(m[2].prev, &m[0]);
	assert_int_equal(m[1].where, QW_ACTIVE);
	/* Off every list, twice: the second is a no-op. */
	qsched_del(&s, &m[1]);
	qsched_del(&s, &m[1]);
	assert_int_equal(m[1].where, QW_NONE);
	assert_int_equal(s.count[QW_ACTIVE], 0);
	assert_null(s.head[QW_ACTIVE]);
	assert_null(s.tail[QW_ACTIVE]);
	/* The head and the tail go. */
	qsched_del(&s, &m[0]);
	qsched_del(&s, &m[3]);
	assert_ptr_equal(s.head[QW_READY], &m[2]);
	assert_ptr_equal(s.tail[QW_READY], &m[2]);
	assert_int_equal(s.count[QW_READY], 1);
}

static void sweep(void **state)
{
	struct qsched s = {0};
	struct qmsg m[3];

	(void)state;
	memset(m, 0, sizeof(m));
	m[0].next_s = 100;
	m[1].next_s = 200;
	m[2].next_s = 50;
	m[2].moving = true;
	for (int i = 0; i < 3; i++)
		qsched_set(&s, &m[i], QW_DEFERRED);
	assert_int_equal(qsched_sweep(&s, 99), 0);
	assert_int_equal(qsched_sweep(&s, 100), 1);
	assert_int_equal(m[0].where, QW_READY);
	assert_int_equal(m[2].where, QW_DEFERRED); /* its copy takes its place */
	assert_int_equal(qsched_sweep(&s, 1000), 1);
	assert_int_equal(s.count[QW_READY], 2);
	assert_int_equal(s.count[QW_DEFERRED], 1);
}

static void schedule(void **state)
{
	const uint32_t retry[] = {60, 300, 900};

	(void)state;
	/* Attempt n waits retry[n - 1]; the last step repeats. */
	assert_int_equal(qsched_next_attempt(retry, 3, 0, 0, 100000, 1000), 1060);
	assert_int_equal(qsched_next_attempt(retry, 3, 1, 0, 100000, 1000), 1060);
	assert_int_equal(qsched_next_attempt(retry, 3, 2, 0, 100000, 1000), 1300);
	assert_int_equal(qsched_next_attempt(retry, 3, 9, 0, 100000, 1000), 1900);
	/* A wait past the expiry is cut to it; once past it, not. */
	assert_int_equal(qsched_next_attempt(retry, 3, 3, 0, 1500, 1000), 1500);
	assert_int_equal(qsched_next_attempt(retry, 3, 3, 0, 1500, 1600), 2500);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(lists),
	    cmocka_unit_test(sweep),
	    cmocka_unit_test(schedule),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
