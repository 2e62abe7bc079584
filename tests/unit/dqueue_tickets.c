/* Pins the shared delivery queue: tickets come off in the order they went
 * on, a hand-back reaches only its owner and wakes it, the ring refuses a
 * ticket when full, and the run limit per shard. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cmocka.h>

#include "queue/dqueue.h"

/* The queue only carries ticket pointers; any address stands for one. */
static char tickets[8];
#define T(i) ((struct dticket *)&tickets[i])

static void put_take(void **state)
{
	struct dq_shared *q = dq_new(2);

	(void)state;
	assert_non_null(q);
	assert_int_equal(dq_shards(q), 2);
	assert_false(dq_waiting(q));
	assert_null(dq_take(q));
	assert_true(dq_put(q, T(0)));
	assert_true(dq_put(q, T(1)));
	assert_true(dq_waiting(q));
	assert_ptr_equal(dq_take(q), T(0));
	assert_ptr_equal(dq_take(q), T(1));
	assert_null(dq_take(q));
	dq_free(q);
}

static void hand_back(void **state)
{
	struct dq_shared *q = dq_new(3);
	int efd = eventfd(0, EFD_NONBLOCK);
	uint64_t v = 0;

	(void)state;
	assert_true(efd >= 0);
	dq_set_wake(q, 1, efd);
	dq_hand_back(q, 1, T(2));
	dq_hand_back(q, 2, T(3)); /* no eventfd: nobody woken, still queued */
	assert_int_equal(read(efd, &v, sizeof(v)), (int)sizeof(v));
	assert_int_equal(v, 1);
	assert_null(dq_take_back(q, 0));
	assert_ptr_equal(dq_take_back(q, 1), T(2));
	assert_null(dq_take_back(q, 1));
	assert_ptr_equal(dq_take_back(q, 2), T(3));
	dq_set_wake(q, 1, -1);
	close(efd);
	dq_free(q);
}

static void bounds(void **state)
{
	struct dq_shared *q = dq_new(1);
	uint32_t n = 0;

	(void)state;
	assert_null(dq_new(0));
	assert_null(dq_new(DQ_SHARDS_MAX + 1));
	/* ck_ring keeps one slot free: a full ring refuses the next ticket. */
	while (dq_put(q, T(0)))
		n++;
	assert_true(n >= DQ_OUT_MAX);
	assert_true(n < DQ_RING_SIZE);
	dq_free(q);
	/* Four per connection a shard may open to one hop, at least the minimum. */
	assert_int_equal(dq_run_max(20, 2), 40);
	assert_int_equal(dq_run_max(1, 4), DQ_RUN_MIN);
	assert_int_equal(dq_run_max(3, 4), DQ_RUN_MIN);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(put_take),
	    cmocka_unit_test(hand_back),
	    cmocka_unit_test(bounds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
