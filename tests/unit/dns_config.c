/* Pins dns_new's checks, dns_resolve_mx's refusals and bound, and shutdown's callbacks. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "dns/dns.h"
#include "ring/ring.h"

struct fixture {
	struct ring ring;
	int silent_fd; /* a UDP port that never answers */
	char server[64];
};

struct seen {
	unsigned calls;
	enum dns_status status;
	char why[DNS_WHY_MAX];
};

static bool g_in_call; /* inside a dns_* call that must not call back */

static void on_result(void *arg, const struct dns_mx_result *r)
{
	struct seen *s = arg;

	assert_false(g_in_call);
	s->calls++;
	s->status = r->status;
	snprintf(s->why, sizeof(s->why), "%s", r->why);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof(sa);
	char why[256];

	assert_non_null(f);
	assert_int_equal(ring_init(&f->ring, 256, 4, 256, why, sizeof(why)), 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	f->silent_fd = socket(AF_INET, SOCK_DGRAM, 0);
	assert_true(f->silent_fd >= 0);
	assert_int_equal(bind(f->silent_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(f->silent_fd, (struct sockaddr *)&sa, &len), 0);
	snprintf(f->server, sizeof(f->server), "127.0.0.1:%u", ntohs(sa.sin_port));
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	close(f->silent_fd);
	ring_exit(&f->ring);
	free(f);
	return 0;
}

/* Reap our completions until the resolver has nothing in flight. */
static void drain(struct fixture *f, struct dns *d)
{
	for (int turns = 0; dns_busy(d); turns++) {
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;

		assert_true(turns < 100);
		assert_int_equal(ring_submit_wait(&f->ring), 0);
		io_uring_for_each_cqe(&f->ring.uring, head, cqe)
		{
			n++;
			assert_true(dns_op_owned(ring_ud_op(cqe->user_data)));
			dns_complete(d, cqe->user_data, cqe->res);
		}
		io_uring_cq_advance(&f->ring.uring, n);
	}
}

static void test_settings_refused(void **state)
{
	struct fixture *f = *state;
	struct dns *d = (struct dns *)f; /* must be reset to NULL */
	char why[256];

	assert_int_equal(dns_new(&d, &f->ring, "not an address", 1000, 2, why, sizeof(why)),
			 -EINVAL);
	assert_null(d);
	assert_non_null(strstr(why, "not an address"));
	assert_int_equal(dns_new(&d, &f->ring,
				 "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,"
				 "127.0.0.7,127.0.0.8,127.0.0.9",
				 1000, 2, why, sizeof(why)),
			 -EINVAL);
	assert_non_null(strstr(why, "9 servers"));
	assert_int_equal(dns_new(&d, &f->ring, f->server, 0, 2, why, sizeof(why)), -EINVAL);
	assert_int_equal(dns_new(&d, &f->ring, f->server, 1000, 0, why, sizeof(why)), -EINVAL);
	assert_int_equal(
	    dns_new(&d, &f->ring, "127.0.0.1:5353,[::1]:53", 1000, 2, why, sizeof(why)), 0);
	assert_false(dns_busy(d));
	dns_free(d);
}

static void test_names_refused(void **state)
{
	struct fixture *f = *state;
	static const char *const bad[] = {
	    "", ".", "a..b", "..", "-\x01.example", "a b.example", "back\\slash.example"};
	char longlabel[80], longname[300];
	struct seen s = {0};
	struct dns *d;
	char why[256];

	assert_int_equal(dns_new(&d, &f->ring, f->server, 1000, 2, why, sizeof(why)), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(dns_resolve_mx(d, bad[i], on_result, &s), -EINVAL);
	memset(longlabel, 'x', 64);
	strcpy(longlabel + 64, ".example");
	assert_int_equal(dns_resolve_mx(d, longlabel, on_result, &s), -EINVAL);
	memset(longname, 'a', sizeof(longname));
	for (size_t i = 1; i < DNS_NAME_MAX; i += 2)
		longname[i] = '.';
	longname[DNS_NAME_MAX + 1] = '\0'; /* 254 characters ending "aa" */
	assert_int_equal(dns_resolve_mx(d, longname, on_result, &s), -EINVAL);
	assert_int_equal(dns_active(d), 0);
	assert_int_equal(s.calls, 0);
	dns_free(d);
}

static void test_queries_max_and_shutdown(void **state)
{
	struct fixture *f = *state;
	static struct seen s[DNS_QUERIES_MAX + 1];
	struct dns *d;
	char why[256], name[64];

	memset(s, 0, sizeof(s));
	assert_int_equal(dns_new(&d, &f->ring, f->server, 5000, 2, why, sizeof(why)), 0);
	g_in_call = true;
	for (int i = 0; i < DNS_QUERIES_MAX; i++) {
		snprintf(name, sizeof(name), "q%d.example.", i);
		assert_int_equal(dns_resolve_mx(d, name, on_result, &s[i]), 0);
	}
	assert_int_equal(dns_resolve_mx(d, "one-more.example", on_result, &s[DNS_QUERIES_MAX]),
			 -EAGAIN);
	g_in_call = false;
	assert_int_equal(dns_active(d), DNS_QUERIES_MAX);
	assert_true(dns_busy(d)); /* a poll and the timer */

	dns_shutdown(d); /* callbacks fire from here */
	for (int i = 0; i < DNS_QUERIES_MAX; i++) {
		assert_int_equal(s[i].calls, 1);
		assert_int_equal(s[i].status, DNS_TEMPFAIL);
		assert_string_equal(s[i].why, "resolver shut down");
	}
	assert_int_equal(s[DNS_QUERIES_MAX].calls, 0);
	assert_int_equal(dns_active(d), 0);
	assert_int_equal(dns_resolve_mx(d, "late.example", on_result, &s[0]), -ESHUTDOWN);
	drain(f, d);
	assert_int_equal(s[0].calls, 1);
	dns_free(d);
}

int main(void)
{
	char why[256];
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_settings_refused),
	    cmocka_unit_test(test_names_refused),
	    cmocka_unit_test(test_queries_max_and_shutdown),
	};

	if (ring_probe(why, sizeof(why)) < 0) {
		printf("skipped: %s\n", why);
		return 77; /* no usable io_uring here */
	}
	return cmocka_run_group_tests(tests, setup, teardown);
}
