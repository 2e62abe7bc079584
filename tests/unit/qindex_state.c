/* Pins the RCPT_STATE snapshot codec and the queue index that applies it:
 * round trips, every bound, truncation at each byte, and the rules of
 * qindex (replace on a later COMMIT, DONE removes, unknown ids ignored). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "queue/qindex.h"

static size_t encode(const uint8_t *rst, uint32_t n, const char *err, uint8_t *out, size_t cap)
{
	struct spool_state st = {.flags = SPOOL_STATE_HELD,
				 .attempts = 7,
				 .rcpt_count = n,
				 .next_attempt_s = 1795377841,
				 .rcpt_state = rst,
				 .error = err,
				 .error_len = (uint32_t)strlen(err)};

	return spool_state_encode(&st, out, cap);
}

static void state_round_trip(void **state)
{
	(void)state;
	uint8_t rst[3] = {SPOOL_RCPT_DELIVERED, SPOOL_RCPT_DEFERRED, SPOOL_RCPT_BOUNCED};
	uint8_t buf[256];
	struct spool_state st;
	size_t n = encode(rst, 3, "smtp; 451 4.2.0 busy", buf, sizeof(buf));

	assert_true(n > 0);
	assert_int_equal(spool_state_decode(buf, n, &st), 0);
	assert_int_equal(st.flags, SPOOL_STATE_HELD);
	assert_int_equal(st.attempts, 7);
	assert_int_equal(st.rcpt_count, 3);
	assert_int_equal(st.next_attempt_s, 1795377841);
	assert_memory_equal(st.rcpt_state, rst, 3);
	assert_int_equal(st.error_len, strlen("smtp; 451 4.2.0 busy"));
	assert_memory_equal(st.error, "smtp; 451 4.2.0 busy", st.error_len);
	/* Every truncation and one trailing byte are refused. */
	for (size_t k = 0; k < n; k++)
		assert_int_equal(spool_state_decode(buf, k, &st), -EINVAL);
	buf[n] = 0;
	assert_int_equal(spool_state_decode(buf, n + 1, &st), -EINVAL);
	/* An unknown version is refused. */
	buf[0] = 2;
	assert_int_equal(spool_state_decode(buf, n, &st), -EINVAL);
}

static void state_bounds(void **state)
{
	(void)state;
	static uint8_t big[SPOOL_STATE_MAX + 16];
	static uint8_t rst[SPOOL_STATE_RCPTS_MAX + 1];
	char err[SPOOL_STATE_ERR_MAX + 100];
	struct spool_state st;
	size_t n;

	memset(err, 'e', sizeof(err) - 1);
	err[sizeof(err) - 1] = '\0';
	/* The error text is cut at its bound, never refused. */
	n = encode(rst, 1, err, big, sizeof(big));
	assert_true(n > 0);
	assert_int_equal(spool_state_decode(big, n, &st), 0);
	assert_int_equal(st.error_len, SPOOL_STATE_ERR_MAX);
	/* The largest recipient count fits SPOOL_STATE_MAX; one more does not encode. */
	n = encode(rst, SPOOL_STATE_RCPTS_MAX, err, big, sizeof(big));
	assert_true(n > 0 && n <= SPOOL_STATE_MAX);
	assert_int_equal(encode(rst, SPOOL_STATE_RCPTS_MAX + 1, "", big, sizeof(big)), 0);
	/* A buffer one byte short does not encode. */
	n = encode(rst, 5, "x", big, sizeof(big));
	assert_int_equal(encode(rst, 5, "x", big, n - 1), 0);
}

static size_t envelope(uint64_t id, uint32_t nrcpt, uint8_t *out, size_t cap)
{
	struct spool_rcpt r[4] = {{.addr = {"a@x.example", 11}},
				  {.addr = {"b@x.example", 11}},
				  {.addr = {"c@x.example", 11}},
				  {.addr = {"d@x.example", 11}}};
	struct spool_env env = {.id = id,
				.arrival_s = 1795377841,
				.msg_len = 10,
				.wire_len = 13,
				.mail_from = {"s@y.example", 11},
				.rcpt_count = nrcpt,
				.rcpts = r};

	return spool_env_encode(&env, out, cap);
}

static void index_add_apply_remove(void **state)
{
	(void)state;
	struct qindex ix;
	uint8_t enc[1024], buf[256];
	uint8_t rst[3] = {SPOOL_RCPT_DELIVERED, SPOOL_RCPT_DEFERRED, SPOOL_RCPT_PENDING};
	struct spool_state st;
	size_t n = envelope(42, 3, enc, sizeof(enc));
	struct qmsg *m;

	assert_int_equal(qindex_init(&ix), 0);
	m = qindex_add(&ix, 1, 4096, enc, (uint32_t)n);
	assert_non_null(m);
	assert_int_equal(m->id, 42);
	assert_int_equal(qmsg_pending(m), 3);
	/* The same id twice is refused at run time. */
	assert_null(qindex_add(&ix, 1, 8192, enc, (uint32_t)n));
	/* A bad envelope is refused. */
	assert_null(qindex_add(&ix, 1, 8192, enc, (uint32_t)n - 1));

	n = encode(rst, 3, "later", buf, sizeof(buf));
	assert_int_equal(spool_state_decode(buf, n, &st), 0);
	qmsg_apply_state(m, &st);
	assert_int_equal(qmsg_pending(m), 2);
	assert_int_equal(m->attempts, 7);
	assert_string_equal(m->error, "later");
	/* The snapshot encodes back to the same bytes. */
	uint8_t again[256];
	assert_int_equal(qmsg_state_encode(m, again, sizeof(again)), n);
	assert_memory_equal(again, buf, n);

	/* Many entries: the table grows and every one is found. */
	for (uint64_t id = 100; id < 5100; id++) {
		size_t k = envelope(id, 1, enc, sizeof(enc));
		assert_non_null(qindex_add(&ix, 2, 0, enc, (uint32_t)k));
	}
	assert_int_equal(ix.count, 5001);
	for (uint64_t id = 100; id < 5100; id += 7)
		assert_non_null(qindex_find(&ix, id));
	qindex_remove(&ix, qindex_find(&ix, 42));
	assert_null(qindex_find(&ix, 42));
	assert_int_equal(ix.count, 5000);
	qindex_free(&ix);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(state_round_trip),
	    cmocka_unit_test(state_bounds),
	    cmocka_unit_test(index_add_apply_remove),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
