/* config_relay: which recipient domains and client addresses relay.domains/networks accept. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "config/config.h"
#include "config_testlib.h" /* test JSON is single-quoted: see there */

/* A config whose "relay" is relay. */
static struct rmx_config *load_relay(const char *relay)
{
	return load_ok("{" LISTENER ", 'relay': %s}", relay);
}

static bool dom(const struct rmx_config *cfg, const char *d)
{
	return config_domain_is_relay(cfg, d, strlen(d));
}

static bool ip(const struct rmx_config *cfg, const char *addr)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
	} else {
		assert_int_equal(inet_pton(AF_INET6, addr, &sin6->sin6_addr), 1);
		sin6->sin6_family = AF_INET6;
	}
	return config_addr_is_relay(cfg, (const struct sockaddr *)&ss);
}

/* ---- domains ------------------------------------------------------------- */

static void test_exact_domain(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_relay("{'domains': ['accepted.example']}");
	assert_true(dom(cfg, "accepted.example"));
	assert_true(dom(cfg, "ACCEPTED.Example"));
	assert_true(dom(cfg, "accepted.example.")); /* one trailing dot is the root */
	assert_false(dom(cfg, "accepted.example.."));
	assert_false(dom(cfg, "x.accepted.example")); /* exact entries cover no subdomain */
	assert_false(dom(cfg, "accepted.exampl"));
	assert_false(dom(cfg, "accepted.examplex"));
	assert_false(dom(cfg, "xaccepted.example"));
	assert_false(dom(cfg, ".accepted.example"));
	assert_false(dom(cfg, "example"));
	/* the domain is a slice, not a C string: only len bytes count */
	assert_true(config_domain_is_relay(cfg, "accepted.example.org", 16));
	assert_true(config_domain_is_relay(cfg, "accepted.example.>", 17));
	assert_false(config_domain_is_relay(cfg, "accepted.example", 15));
	config_free(cfg);
}

static void test_wildcard_domain(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_relay("{'domains': ['*.sub.example']}");
	assert_true(dom(cfg, "a.sub.example"));
	assert_true(dom(cfg, "a.b.sub.example"));
	assert_true(dom(cfg, "A.SUB.EXAMPLE."));
	assert_false(dom(cfg, "sub.example")); /* strict subdomains only */
	assert_false(dom(cfg, "sub.example."));
	assert_false(dom(cfg, "xsub.example"));
	assert_false(dom(cfg, ".sub.example")); /* empty label is not a subdomain */
	assert_false(dom(cfg, "a..sub.example"));
	assert_false(dom(cfg, "a.sub.example.."));
	assert_false(dom(cfg, "a.sub.example.org"));
	assert_false(dom(cfg, "example"));
	config_free(cfg);
}

static void test_exact_and_wildcard(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_relay("{'domains': ['*.Example.ORG.', 'example.org', "
					    "'other.test', '*.deep.a.test']}");
	assert_true(dom(cfg, "example.org"));
	assert_true(dom(cfg, "mx.example.org"));
	assert_true(dom(cfg, "other.test"));
	assert_false(dom(cfg, "x.other.test"));
	assert_true(dom(cfg, "x.deep.a.test"));
	assert_false(dom(cfg, "deep.a.test"));
	assert_false(dom(cfg, "a.test"));
	config_free(cfg);
}

static void test_domain_edges(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_relay("{'domains': ['localhost']}");
	assert_true(dom(cfg, "localhost"));
	assert_true(dom(cfg, "LOCALHOST."));
	assert_false(dom(cfg, ""));
	assert_false(dom(cfg, "."));
	assert_false(config_domain_is_relay(cfg, NULL, 0));
	assert_false(config_domain_is_relay(NULL, "localhost", 9));
	char *longname = repeat('a', 299);
	assert_false(dom(cfg, longname));
	free(longname);
	config_free(cfg);
	cfg = load_relay("{'domains': []}");
	assert_false(dom(cfg, "localhost"));
	config_free(cfg);
}

/* Lookup bisects a sorted table: every entry of a large list must be found
 * and near misses must not. */
static void test_many_domains(void **state)
{
	(void)state;
	enum { N = 1000 };
	char *json = malloc(N * 40 + 64), *p = json;
	assert_non_null(json);
	p += sprintf(p, "{'domains': [");
	for (int i = 0; i < N; i++)
		p += sprintf(p, "%s'%sd%d.Test'", i ? ", " : "", i % 3 == 0 ? "*." : "", i);
	sprintf(p, "]}");
	struct rmx_config *cfg = load_relay(json);
	free(json);
	assert_int_equal(cfg->relay_domain_count, N);
	for (int i = 0; i < N; i++) {
		char exact[64], sub[64], miss[64];
		snprintf(exact, sizeof(exact), "d%d.test", i);
		snprintf(sub, sizeof(sub), "mx.D%d.test", i);
		snprintf(miss, sizeof(miss), "d%d.test", i + N);
		assert_int_equal(dom(cfg, exact), i % 3 != 0);
		assert_int_equal(dom(cfg, sub), i % 3 == 0);
		assert_false(dom(cfg, miss));
	}
	config_free(cfg);
}

/* ---- networks ------------------------------------------------------------ */

static void test_ipv4_networks(void **state)
{
	(void)state;
	struct rmx_config *cfg =
	    load_relay("{'networks': ['192.0.2.0/24', '198.51.100.0/23', '203.0.113.128/25',"
		       " '10.0.0.0/31', '127.0.0.1']}");
	assert_true(ip(cfg, "192.0.2.0"));
	assert_true(ip(cfg, "192.0.2.255"));
	assert_false(ip(cfg, "192.0.3.0"));
	assert_false(ip(cfg, "192.0.1.255"));
	assert_true(ip(cfg, "198.51.100.1"));
	assert_true(ip(cfg, "198.51.101.254"));
	assert_false(ip(cfg, "198.51.102.0"));
	assert_true(ip(cfg, "203.0.113.128"));
	assert_true(ip(cfg, "203.0.113.255"));
	assert_false(ip(cfg, "203.0.113.127"));
	assert_true(ip(cfg, "10.0.0.1"));
	assert_false(ip(cfg, "10.0.0.2"));
	assert_true(ip(cfg, "127.0.0.1")); /* bare address = /32 */
	assert_false(ip(cfg, "127.0.0.2"));
	/* IPv4 networks never match a native IPv6 client */
	assert_false(ip(cfg, "2001:db8::c000:201"));
	assert_false(ip(cfg, "::192.0.2.1")); /* v4-compatible is not v4-mapped */
	config_free(cfg);
}

static void test_ipv6_networks(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_relay("{'networks': ['2001:db8::/32', '::1/128', 'fc00::/7',"
					    " '2001:db8:ffff:ff00::/57']}");
	assert_true(ip(cfg, "2001:db8::1"));
	assert_true(ip(cfg, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
	assert_false(ip(cfg, "2001:db9::"));
	assert_true(ip(cfg, "::1"));
	assert_false(ip(cfg, "::2"));
	assert_true(ip(cfg, "fc00::1"));
	assert_true(ip(cfg, "fdff::1"));
	assert_false(ip(cfg, "fe00::1"));
	assert_false(ip(cfg, "127.0.0.1"));
	assert_false(ip(cfg, "::ffff:127.0.0.1"));
	config_free(cfg);
}

/* A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d. */
static void test_v4_mapped(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_relay("{'networks': ['192.0.2.0/24']}");
	assert_true(ip(cfg, "::ffff:192.0.2.7"));
	assert_false(ip(cfg, "::ffff:192.0.3.1"));
	config_free(cfg);
	/* a network written in mapped form covers plain IPv4 clients too */
	cfg = load_relay("{'networks': ['::ffff:198.51.100.0/120']}");
	assert_true(ip(cfg, "198.51.100.9"));
	assert_true(ip(cfg, "::ffff:198.51.100.9"));
	assert_false(ip(cfg, "198.51.101.9"));
	config_free(cfg);
	/* ::/0 is all of IPv6, which includes the mapped range */
	cfg = load_relay("{'networks': ['::/0']}");
	assert_true(ip(cfg, "::ffff:10.0.0.1"));
	assert_true(ip(cfg, "2001:db8::1"));
	assert_false(ip(cfg, "10.0.0.1"));
	config_free(cfg);
	cfg = load_relay("{'networks': ['0.0.0.0/0']}");
	assert_true(ip(cfg, "10.0.0.1"));
	assert_true(ip(cfg, "::ffff:10.0.0.1"));
	assert_false(ip(cfg, "2001:db8::1"));
	config_free(cfg);
}

static void test_addr_edges(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_relay("{'networks': ['0.0.0.0/0', '::/0']}");
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	assert_false(config_addr_is_relay(cfg, (const struct sockaddr *)&sun));
	assert_false(config_addr_is_relay(cfg, NULL));
	assert_false(config_addr_is_relay(NULL, (const struct sockaddr *)&sun));
	config_free(cfg);
	cfg = load_relay("{'networks': []}");
	assert_false(ip(cfg, "127.0.0.1"));
	config_free(cfg);
}

static void test_default_relay(void **state)
{
	(void)state;
	struct rmx_config *cfg = default_ok();
	assert_true(ip(cfg, "127.0.0.1"));
	assert_true(ip(cfg, "127.255.255.254"));
	assert_true(ip(cfg, "::ffff:127.0.0.1"));
	assert_true(ip(cfg, "::1"));
	assert_false(ip(cfg, "192.0.2.1"));
	assert_false(ip(cfg, "::2"));
	assert_true(dom(cfg, "localhost"));
	assert_false(dom(cfg, "example.org"));
	config_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_exact_domain),       cmocka_unit_test(test_wildcard_domain),
	    cmocka_unit_test(test_exact_and_wildcard), cmocka_unit_test(test_domain_edges),
	    cmocka_unit_test(test_many_domains),       cmocka_unit_test(test_ipv4_networks),
	    cmocka_unit_test(test_ipv6_networks),      cmocka_unit_test(test_v4_mapped),
	    cmocka_unit_test(test_addr_edges),	       cmocka_unit_test(test_default_relay),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
