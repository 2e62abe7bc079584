/* Pins AUTH failure accounting per address: delay, cap, limit, window, keys, eviction, locks. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include <cmocka.h>

#include "auth/throttle.h"

/* ---- helpers ------------------------------------------------------------------ */

struct addr {
	struct sockaddr_storage ss;
};

static struct addr ip(const char *text)
{
	struct addr a;
	memset(&a, 0, sizeof(a));
	struct sockaddr_in *in = (struct sockaddr_in *)&a.ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a.ss;
	if (inet_pton(AF_INET, text, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons(40000);
	} else {
		assert_int_equal(inet_pton(AF_INET6, text, &in6->sin6_addr), 1);
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(40001);
	}
	return a;
}

#define SA(a) ((const struct sockaddr *)&(a).ss)

static struct auth_throttle *make(uint32_t entries, uint32_t base, uint32_t max, uint32_t limit,
				  uint32_t window, uint8_t prefix)
{
	struct auth_throttle_config c = {.entries = entries,
					 .base_delay_ms = base,
					 .max_delay_ms = max,
					 .failures_max = limit,
					 .window_ms = window,
					 .v6_prefix_len = prefix};
	struct auth_throttle *t = NULL;
	assert_int_equal(auth_throttle_create(&c, &t), 0);
	return t;
}

static struct auth_throttle_verdict fail_at(struct auth_throttle *t, const char *who, uint64_t now)
{
	struct addr a = ip(who);
	struct auth_throttle_verdict v;
	assert_int_equal(auth_throttle_fail(t, SA(a), now, &v), 0);
	return v;
}

static struct auth_throttle_verdict check_at(struct auth_throttle *t, const char *who, uint64_t now)
{
	struct addr a = ip(who);
	struct auth_throttle_verdict v;
	assert_int_equal(auth_throttle_check(t, SA(a), now, &v), 0);
	return v;
}

/* ---- delay and limit --------------------------------------------------------------- */

static void test_delay_doubles_then_caps(void **state)
{
	(void)state;
	struct auth_throttle *t = make(1024, 100, 1000, 10, 60000, 64);
	static const uint32_t want[] = {100, 200, 400, 800, 1000, 1000};
	assert_int_equal(check_at(t, "192.0.2.1", 0).delay_ms, 0);
	for (uint32_t i = 0; i < 6; i++) {
		struct auth_throttle_verdict v = fail_at(t, "192.0.2.1", 10 * i);
		assert_int_equal(v.failures, i + 1);
		assert_int_equal(v.delay_ms, want[i]);
		assert_false(v.blocked);
	}
	/* check() reports the standing without adding to it. */
	for (int i = 0; i < 5; i++)
		assert_int_equal(check_at(t, "192.0.2.1", 100).failures, 6);
	assert_int_equal(check_at(t, "192.0.2.1", 100).delay_ms, 1000);
	auth_throttle_destroy(t);
}

/* failures_max is where 535 turns into 421. */
static void test_blocked_at_limit(void **state)
{
	(void)state;
	struct auth_throttle *t = make(1024, 0, 0, 3, 60000, 64);
	assert_false(fail_at(t, "198.51.100.7", 1).blocked);
	assert_false(fail_at(t, "198.51.100.7", 2).blocked);
	assert_false(check_at(t, "198.51.100.7", 3).blocked);
	assert_true(fail_at(t, "198.51.100.7", 4).blocked);
	assert_true(check_at(t, "198.51.100.7", 5).blocked);
	assert_false(check_at(t, "198.51.100.8", 5).blocked);
	auth_throttle_destroy(t);
}

/* Large counts: the doubling saturates at the cap without overflow. */
static void test_delay_no_overflow(void **state)
{
	(void)state;
	struct auth_throttle *t = make(64, 1000, UINT32_MAX, AUTH_THROTTLE_FAILURES_MAX, 60000, 64);
	struct auth_throttle_verdict v;
	for (int i = 0; i < 40; i++)
		v = fail_at(t, "203.0.113.9", (uint64_t)i);
	assert_int_equal(v.failures, 40);
	assert_int_equal(v.delay_ms, UINT32_MAX);
	auth_throttle_destroy(t);
}

/* ---- the window ----------------------------------------------------------------------- */

static void test_window_forgets(void **state)
{
	(void)state;
	struct auth_throttle *t = make(1024, 10, 1000, 5, 5000, 64);
	fail_at(t, "192.0.2.50", 1000);
	fail_at(t, "192.0.2.50", 2000);
	/* Sliding: counted from the last failure. */
	assert_int_equal(check_at(t, "192.0.2.50", 6999).failures, 2);
	assert_int_equal(check_at(t, "192.0.2.50", 7000).failures, 0);
	struct auth_throttle_verdict v = fail_at(t, "192.0.2.50", 7000);
	assert_int_equal(v.failures, 1);
	assert_int_equal(v.delay_ms, 10);
	auth_throttle_destroy(t);
}

/* Shards keep their own loop clocks: a "now" slightly behind the stored
 * failure is inside the window, not 2^64 ms later. */
static void test_clock_behind(void **state)
{
	(void)state;
	struct auth_throttle *t = make(1024, 10, 1000, 5, 5000, 64);
	fail_at(t, "192.0.2.60", 10000);
	assert_int_equal(check_at(t, "192.0.2.60", 9990).failures, 1);
	assert_int_equal(fail_at(t, "192.0.2.60", 9995).failures, 2);
	/* The later time is kept. */
	assert_int_equal(check_at(t, "192.0.2.60", 14999).failures, 2);
	assert_int_equal(check_at(t, "192.0.2.60", 15000).failures, 0);
	auth_throttle_destroy(t);
}

/* ---- keys ----------------------------------------------------------------------------- */

static void test_ipv4_mapped_is_ipv4(void **state)
{
	(void)state;
	struct auth_throttle *t = make(1024, 10, 1000, 5, 60000, 64);
	fail_at(t, "192.0.2.1", 1);
	assert_int_equal(fail_at(t, "::ffff:192.0.2.1", 2).failures, 2);
	assert_int_equal(check_at(t, "192.0.2.1", 3).failures, 2);
	assert_int_equal(check_at(t, "192.0.2.2", 3).failures, 0);
	auth_throttle_destroy(t);
}

static void test_ipv6_prefix(void **state)
{
	(void)state;
	struct auth_throttle *t = make(1024, 10, 1000, 5, 60000, 64);
	fail_at(t, "2001:db8:1:2::1", 1);
	assert_int_equal(fail_at(t, "2001:db8:1:2:ffff:1:2:3", 2).failures, 2);
	assert_int_equal(check_at(t, "2001:db8:1:3::1", 3).failures, 0);
	auth_throttle_destroy(t);
	/* A prefix that is not a whole number of octets: /60. */
	t = make(1024, 10, 1000, 5, 60000, 60);
	fail_at(t, "2001:db8:1:2::1", 1);
	assert_int_equal(check_at(t, "2001:db8:1:f::1", 2).failures, 1);
	assert_int_equal(check_at(t, "2001:db8:1:12::1", 2).failures, 0);
	auth_throttle_destroy(t);
	/* /128: every address on its own. */
	t = make(1024, 10, 1000, 5, 60000, 128);
	fail_at(t, "2001:db8::1", 1);
	assert_int_equal(check_at(t, "2001:db8::2", 2).failures, 0);
	assert_int_equal(check_at(t, "2001:db8::1", 2).failures, 1);
	auth_throttle_destroy(t);
}

static void test_other_family_refused(void **state)
{
	(void)state;
	struct auth_throttle *t = make(1024, 10, 1000, 5, 60000, 64);
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	struct auth_throttle_verdict v = {.failures = 9, .delay_ms = 9, .blocked = true};
	assert_int_equal(auth_throttle_fail(t, (struct sockaddr *)&un, 1, &v), -EAFNOSUPPORT);
	assert_int_equal(v.failures, 0);
	assert_int_equal(v.delay_ms, 0);
	assert_false(v.blocked);
	assert_int_equal(auth_throttle_check(t, (struct sockaddr *)&un, 1, &v), -EAFNOSUPPORT);
	assert_int_equal(auth_throttle_reset(t, (struct sockaddr *)&un), -EAFNOSUPPORT);
	auth_throttle_destroy(t);
}

static void test_reset(void **state)
{
	(void)state;
	struct auth_throttle *t = make(1024, 10, 1000, 2, 60000, 64);
	fail_at(t, "192.0.2.9", 1);
	assert_true(fail_at(t, "192.0.2.9", 2).blocked);
	struct addr a = ip("192.0.2.9");
	assert_int_equal(auth_throttle_reset(t, SA(a)), 0);
	assert_int_equal(check_at(t, "192.0.2.9", 3).failures, 0);
	assert_int_equal(auth_throttle_reset(t, SA(a)), 0); /* not there: fine */
	auth_throttle_destroy(t);
}

/* ---- bounded table -------------------------------------------------------------------- */

/* entries = AUTH_THROTTLE_WAYS: one bucket, so every address meets. */
static void test_eviction_oldest_first(void **state)
{
	(void)state;
	struct auth_throttle *t = make(AUTH_THROTTLE_WAYS, 10, 1000, 50, 60000, 64);
	static const char *const who[] = {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"};
	for (int i = 0; i < 4; i++) {
		fail_at(t, who[i], (uint64_t)(100 + i));
		fail_at(t, who[i], (uint64_t)(100 + i));
	}
	/* 10.0.0.1 has the oldest last failure: it makes room. */
	assert_int_equal(fail_at(t, "10.0.0.5", 200).failures, 1);
	assert_int_equal(check_at(t, "10.0.0.1", 201).failures, 0);
	for (int i = 1; i < 4; i++)
		assert_int_equal(check_at(t, who[i], 201).failures, 2);
	auth_throttle_destroy(t);
}

static void test_expired_way_reused_before_eviction(void **state)
{
	(void)state;
	struct auth_throttle *t = make(AUTH_THROTTLE_WAYS, 10, 1000, 50, 1000, 64);
	fail_at(t, "10.0.1.1", 0);   /* expires at 1000 */
	fail_at(t, "10.0.1.2", 900); /* live until 1900 */
	fail_at(t, "10.0.1.3", 950);
	fail_at(t, "10.0.1.4", 960);
	fail_at(t, "10.0.1.5", 1500); /* takes 10.0.1.1's expired way */
	assert_int_equal(check_at(t, "10.0.1.2", 1500).failures, 1);
	assert_int_equal(check_at(t, "10.0.1.3", 1500).failures, 1);
	assert_int_equal(check_at(t, "10.0.1.4", 1500).failures, 1);
	assert_int_equal(check_at(t, "10.0.1.5", 1500).failures, 1);
	auth_throttle_destroy(t);
}

static void test_config_bounds(void **state)
{
	(void)state;
	struct auth_throttle *t = NULL;
	struct auth_throttle_config ok = {.entries = 64,
					  .base_delay_ms = 100,
					  .max_delay_ms = 1000,
					  .failures_max = 5,
					  .window_ms = 1000,
					  .v6_prefix_len = 64};
	struct auth_throttle_config c;
	c = ok, c.entries = 48; /* not a power of two */
	assert_int_equal(auth_throttle_create(&c, &t), -EINVAL);
	c = ok, c.entries = AUTH_THROTTLE_WAYS / 2;
	assert_int_equal(auth_throttle_create(&c, &t), -EINVAL);
	c = ok, c.entries = AUTH_THROTTLE_ENTRIES_MAX * 2;
	assert_int_equal(auth_throttle_create(&c, &t), -EINVAL);
	c = ok, c.base_delay_ms = 2000;
	assert_int_equal(auth_throttle_create(&c, &t), -EINVAL);
	c = ok, c.failures_max = 0;
	assert_int_equal(auth_throttle_create(&c, &t), -EINVAL);
	c = ok, c.failures_max = AUTH_THROTTLE_FAILURES_MAX + 1;
	assert_int_equal(auth_throttle_create(&c, &t), -EINVAL);
	c = ok, c.window_ms = 0;
	assert_int_equal(auth_throttle_create(&c, &t), -EINVAL);
	c = ok, c.v6_prefix_len = 31;
	assert_int_equal(auth_throttle_create(&c, &t), -EINVAL);
	c = ok, c.v6_prefix_len = 129;
	assert_int_equal(auth_throttle_create(&c, &t), -EINVAL);
	assert_null(t);
	c = ok, c.entries = AUTH_THROTTLE_ENTRIES_MAX; /* the bound itself */
	assert_int_equal(auth_throttle_create(&c, &t), 0);
	assert_int_equal(fail_at(t, "192.0.2.1", 1).failures, 1);
	auth_throttle_destroy(t);
	auth_throttle_destroy(NULL);
}

/* ---- several shards at once --------------------------------------------------------- */

#define SHARDS	  4
#define PER_SHARD 2000

struct shard_arg {
	struct auth_throttle *t;
	int idx;
};

static void *shard_main(void *arg)
{
	struct shard_arg *s = arg;
	char own[32];
	snprintf(own, sizeof(own), "10.9.%d.1", s->idx);
	struct addr shared = ip("192.0.2.77"), mine = ip(own);
	struct auth_throttle_verdict v;
	for (int i = 0; i < PER_SHARD; i++) {
		auth_throttle_fail(s->t, SA(shared), (uint64_t)i, &v);
		auth_throttle_fail(s->t, SA(mine), (uint64_t)i, &v);
		auth_throttle_check(s->t, SA(shared), (uint64_t)i, &v);
	}
	return NULL;
}

/* One address hit from every shard: no failure is lost (TSan checks the
 * locking). */
static void test_shared_between_shards(void **state)
{
	(void)state;
	struct auth_throttle *t = make(1024, 1, 1000, AUTH_THROTTLE_FAILURES_MAX, 1000000, 64);
	pthread_t th[SHARDS];
	struct shard_arg a[SHARDS];
	for (int i = 0; i < SHARDS; i++) {
		a[i] = (struct shard_arg){.t = t, .idx = i};
		assert_int_equal(pthread_create(&th[i], NULL, shard_main, &a[i]), 0);
	}
	for (int i = 0; i < SHARDS; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(check_at(t, "192.0.2.77", PER_SHARD).failures, SHARDS * PER_SHARD);
	for (int i = 0; i < SHARDS; i++) {
		char own[32];
		snprintf(own, sizeof(own), "10.9.%d.1", i);
		assert_int_equal(check_at(t, own, PER_SHARD).failures, PER_SHARD);
	}
	auth_throttle_destroy(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_delay_doubles_then_caps),
	    cmocka_unit_test(test_blocked_at_limit),
	    cmocka_unit_test(test_delay_no_overflow),
	    cmocka_unit_test(test_window_forgets),
	    cmocka_unit_test(test_clock_behind),
	    cmocka_unit_test(test_ipv4_mapped_is_ipv4),
	    cmocka_unit_test(test_ipv6_prefix),
	    cmocka_unit_test(test_other_family_refused),
	    cmocka_unit_test(test_reset),
	    cmocka_unit_test(test_eviction_oldest_first),
	    cmocka_unit_test(test_expired_way_reused_before_eviction),
	    cmocka_unit_test(test_config_bounds),
	    cmocka_unit_test(test_shared_between_shards),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
