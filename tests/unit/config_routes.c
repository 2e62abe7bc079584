/* config_routes: routes[], delivery and dns keys, their errors, and which route a domain takes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "config_testlib.h" /* test JSON is single-quoted: see there */

static void assert_addr(const struct config_hop *h, int family, const char *ip, uint16_t port)
{
	char buf[INET6_ADDRSTRLEN];
	assert_int_equal(h->addr.ss_family, family);
	if (family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&h->addr;
		assert_int_equal(h->addr_len, sizeof(*sin));
		assert_string_equal(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)), ip);
		assert_int_equal(ntohs(sin->sin_port), port);
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&h->addr;
		assert_int_equal(h->addr_len, sizeof(*sin6));
		assert_string_equal(inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf)), ip);
		assert_int_equal(ntohs(sin6->sin6_port), port);
	}
	assert_null(h->path);
}

/* Index of the route a domain takes, -1 for none. */
static int route_of(const struct rmx_config *cfg, const char *domain)
{
	const struct config_route *r = config_route_find(cfg, domain, strlen(domain));
	if (r == NULL)
		return -1;
	assert_true(r >= cfg->routes && r < cfg->routes + cfg->route_count);
	return (int)(r - cfg->routes);
}

/* ---- defaults ------------------------------------------------------------ */

static void test_defaults(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok("{" LISTENER "}");
	assert_null(cfg->routes);
	assert_int_equal(cfg->route_count, 0);
	assert_int_equal(route_of(cfg, "example.org"), -1); /* no route: stays queued */
	static const uint32_t retry[] = {60, 300, 900, 3600, 14400};
	assert_int_equal(cfg->delivery.retry_count, COUNT(retry));
	for (size_t i = 0; i < COUNT(retry); i++)
		assert_int_equal(cfg->delivery.retry_s[i], retry[i]);
	assert_int_equal(cfg->delivery.max_age_s, 432000);
	assert_int_equal(cfg->delivery.connections_per_route, 20);
	assert_int_equal(cfg->delivery.messages_per_connection, 1000);
	assert_int_equal(cfg->delivery.connect_timeout_s, 30);
	assert_int_equal(cfg->delivery.command_timeout_s, 300);
	assert_int_equal(cfg->delivery.delay_notice_s, 0);
	assert_null(cfg->dns.servers);
	assert_int_equal(cfg->dns.timeout_ms, 2000);
	assert_int_equal(cfg->dns.tries, 2);
	config_free(cfg);

	/* an empty list is allowed and means the same */
	cfg = load_ok("{" LISTENER ", 'routes': [], 'delivery': {}, 'dns': {}}");
	assert_int_equal(cfg->route_count, 0);
	assert_int_equal(route_of(cfg, "example.org"), -1);
	assert_int_equal(cfg->delivery.retry_count, 5);
	assert_null(cfg->dns.servers);
	config_free(cfg);
}

static void test_embedded_default(void **state)
{
	(void)state;
	struct rmx_config *cfg = default_ok();
	assert_int_equal(cfg->route_count, 1);
	const struct config_route *r = &cfg->routes[0];
	assert_true(r->catch_all);
	assert_int_equal(r->domain_count, 0);
	assert_int_equal(r->hop_count, 1);
	assert_int_equal(r->hops[0].kind, CONFIG_HOP_MAILDIR);
	assert_string_equal(r->hops[0].path, "./maildir");
	assert_string_equal(r->hops[0].text, "maildir:./maildir");
	assert_ptr_equal(config_route_find(cfg, "localhost", 9), r);
	assert_ptr_equal(config_route_find(cfg, "example.org", 11), r);
	assert_int_equal(cfg->delivery.retry_count, 5);
	config_free(cfg);
}

/* ---- hops ---------------------------------------------------------------- */

static const char issue_routes[] =
    "[{'domains': ['accepted.example'], 'to': 'smtp://127.0.0.1:2526'},"
    " {'domains': ['lmtp.example'],     'to': 'lmtp://127.0.0.1:24'},"
    " {'domains': ['backup.example'],   'to': ['smtp://10.0.0.5:25', 'smtp://[::1]:25']},"
    " {'domains': ['local.example'],    'to': 'maildir:/var/mail/ringmx'},"
    " {'domains': ['box.example'],      'to': 'mbox:/var/mail/ringmx-mbox'},"
    " {'domains': ['*'],                'to': 'mx'}]";

static void test_hop_kinds(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok("{" LISTENER ", 'routes': %s}", issue_routes);
	assert_int_equal(cfg->route_count, 6);
	const struct config_route *r = cfg->routes;

	assert_int_equal(r[0].domain_count, 1);
	assert_string_equal(r[0].domains[0].name, "accepted.example");
	assert_false(r[0].domains[0].wildcard);
	assert_false(r[0].catch_all);
	assert_int_equal(r[0].hop_count, 1);
	assert_int_equal(r[0].hops[0].kind, CONFIG_HOP_SMTP);
	assert_addr(&r[0].hops[0], AF_INET, "127.0.0.1", 2526);
	assert_string_equal(r[0].hops[0].text, "smtp://127.0.0.1:2526");

	assert_int_equal(r[1].hops[0].kind, CONFIG_HOP_LMTP);
	assert_addr(&r[1].hops[0], AF_INET, "127.0.0.1", 24);
	assert_string_equal(r[1].hops[0].text, "lmtp://127.0.0.1:24");

	assert_int_equal(r[2].hop_count, 2);
	assert_int_equal(r[2].hops[0].kind, CONFIG_HOP_SMTP);
	assert_addr(&r[2].hops[0], AF_INET, "10.0.0.5", 25);
	assert_int_equal(r[2].hops[1].kind, CONFIG_HOP_SMTP);
	assert_addr(&r[2].hops[1], AF_INET6, "::1", 25);
	assert_string_equal(r[2].hops[1].text, "smtp://[::1]:25");

	assert_int_equal(r[3].hop_count, 1);
	assert_int_equal(r[3].hops[0].kind, CONFIG_HOP_MAILDIR);
	assert_string_equal(r[3].hops[0].path, "/var/mail/ringmx");
	assert_string_equal(r[3].hops[0].text, "maildir:/var/mail/ringmx");

	assert_int_equal(r[4].hops[0].kind, CONFIG_HOP_MBOX);
	assert_string_equal(r[4].hops[0].path, "/var/mail/ringmx-mbox");

	assert_true(r[5].catch_all);
	assert_int_equal(r[5].domain_count, 0);
	assert_int_equal(r[5].hop_count, 1);
	assert_int_equal(r[5].hops[0].kind, CONFIG_HOP_MX);
	assert_null(r[5].hops[0].path);
	assert_string_equal(r[5].hops[0].text, "mx");

	assert_int_equal(route_of(cfg, "accepted.example"), 0);
	assert_int_equal(route_of(cfg, "lmtp.example"), 1);
	assert_int_equal(route_of(cfg, "backup.example"), 2);
	assert_int_equal(route_of(cfg, "local.example"), 3);
	assert_int_equal(route_of(cfg, "box.example"), 4);
	assert_int_equal(route_of(cfg, "elsewhere.example"), 5);
	config_free(cfg);
}

static void test_failover_and_single(void **state)
{
	(void)state;
	/* smtp and lmtp may share a list; CONFIG_HOPS_MAX entries at most */
	struct rmx_config *cfg = load_ok(
	    "{" LISTENER ", 'routes': [{'domains': ['a.test'], 'to': ['lmtp://192.0.2.1:24',"
	    " 'smtp://192.0.2.2:25', 'smtp://192.0.2.3:25', 'smtp://192.0.2.4:25',"
	    " 'smtp://192.0.2.5:25', 'smtp://192.0.2.6:25', 'smtp://192.0.2.7:25',"
	    " 'smtp://[2001:db8::8]:2525']}]}");
	const struct config_route *r = &cfg->routes[0];
	assert_int_equal(r->hop_count, CONFIG_HOPS_MAX);
	assert_int_equal(r->hops[0].kind, CONFIG_HOP_LMTP);
	assert_addr(&r->hops[0], AF_INET, "192.0.2.1", 24);
	assert_addr(&r->hops[6], AF_INET, "192.0.2.7", 25);
	assert_addr(&r->hops[7], AF_INET6, "2001:db8::8", 2525);
	config_free(cfg);

	/* "mx" and the local stores are fine alone, also in a one-entry list */
	cfg = load_ok("{" LISTENER ", 'routes': [{'domains': ['a.test'], 'to': ['mx']},"
		      " {'domains': ['b.test'], 'to': ['maildir:rel/dir']},"
		      " {'domains': ['c.test'], 'to': ['mbox:x']},"
		      " {'domains': ['d.test'], 'to': ['smtp://192.0.2.1:25']}]}");
	assert_int_equal(cfg->routes[0].hops[0].kind, CONFIG_HOP_MX);
	assert_int_equal(cfg->routes[1].hops[0].kind, CONFIG_HOP_MAILDIR);
	assert_string_equal(cfg->routes[1].hops[0].path, "rel/dir"); /* relative is allowed */
	assert_int_equal(cfg->routes[2].hops[0].kind, CONFIG_HOP_MBOX);
	assert_string_equal(cfg->routes[2].hops[0].path, "x");
	assert_int_equal(cfg->routes[3].hop_count, 1);
	for (uint32_t i = 0; i < 4; i++)
		assert_int_equal(cfg->routes[i].hop_count, 1);
	config_free(cfg);
}

/* Paths up to PATH_MAX - 1 bytes; "text" keeps what fits, for logs. */
static void test_hop_path_bound(void **state)
{
	(void)state;
	char *p4095 = repeat('p', 4095), *p4096 = repeat('p', 4096);
	struct rmx_config *cfg =
	    load_ok("{" LISTENER ", 'routes': [{'domains': ['*'], 'to': 'maildir:%s'}]}", p4095);
	const struct config_hop *h = &cfg->routes[0].hops[0];
	assert_string_equal(h->path, p4095);
	assert_int_equal(strlen(h->text), sizeof(h->text) - 1);
	assert_memory_equal(h->text, "maildir:ppp", 11);
	config_free(cfg);
	expect_err("routes[0].to: expected \"mbox:/path\" with a path of 1..4095 bytes",
		   "{" LISTENER ", 'routes': [{'domains': ['*'], 'to': 'mbox:%s'}]}", p4096);
	free(p4095);
	free(p4096);
}

static void test_routes_bound(void **state)
{
	(void)state;
	size_t cap = (CONFIG_ROUTES_MAX + 1) * 64;
	char *list = malloc(cap);
	assert_non_null(list);
	size_t used = (size_t)snprintf(list, cap, "[");
	for (int i = 0; i < CONFIG_ROUTES_MAX; i++)
		used +=
		    (size_t)snprintf(list + used, cap - used,
				     "%s{'domains': ['d%d.test'], 'to': 'mx'}", i ? "," : "", i);
	snprintf(list + used, cap - used, "]");
	struct rmx_config *cfg = load_ok("{" LISTENER ", 'routes': %s}", list);
	assert_int_equal(cfg->route_count, CONFIG_ROUTES_MAX);
	assert_int_equal(route_of(cfg, "d255.test"), 255);
	assert_int_equal(route_of(cfg, "d0.test"), 0);
	config_free(cfg);
	snprintf(list + used, cap - used, ",{'domains': ['x.test'], 'to': 'mx'}]");
	expect_err("routes: expected an array of at most 256 routes",
		   "{" LISTENER ", 'routes': %s}", list);
	free(list);
}

/* ---- route errors -------------------------------------------------------- */

#define KINDS                                                                                      \
	"expected \"smtp://IP:port\", \"lmtp://IP:port\", \"mx\", \"maildir:/path\" or "           \
	"\"mbox:/path\""
#define ALONE                                                                                      \
	"\"mx\", \"maildir:\" and \"mbox:\" must be the only entry of \"to\"; a list of several "  \
	"is smtp:// and lmtp:// failover"
#define SMTP_ADDR                                                                                  \
	"expected \"smtp://IP:port\" with an IPv4 address or [IPv6 address] and a port 1..65535"
#define SMTP_NAME                                                                                  \
	"host names are not resolved: expected \"smtp://IP:port\" (\"smtp://192.0.2.1:25\", "      \
	"\"smtp://[2001:db8::1]:25\") or \"mx\""
#define LMTP_NAME                                                                                  \
	"host names are not resolved: expected \"lmtp://IP:port\" (\"lmtp://192.0.2.1:25\", "      \
	"\"lmtp://[2001:db8::1]:25\") or \"mx\""
#define DOMAIN_ENTRY "expected a domain like \"example.org\", \"*.example.org\" or \"*\""

static const struct err_case route_errs[] = {
    /* the brief's own example: the index of the route and of the hop */
    {"[{'domains': ['a.test'], 'to': 'mx'}, {'domains': ['b.test'], 'to': 'mx'},"
     " {'domains': ['c.test'], 'to': ['smtp://192.0.2.1:25', 'ftp://192.0.2.1:21']}]",
     "routes[2].to[1]: " KINDS},
    {"{}", "routes: expected an array of at most 256 routes"},
    {"'mx'", "routes: expected an array of at most 256 routes"},
    {"null", "routes: expected an array of at most 256 routes"},
    {"[[]]", "routes[0]: expected a JSON object"},
    {"['mx']", "routes[0]: expected a JSON object"},
    {"[{}]", "routes[0].domains: required key missing"},
    {"[{'to': 'mx'}]", "routes[0].domains: required key missing"},
    {"[{'domains': ['a.test']}]", "routes[0].to: required key missing"},
    {"[{'domains': ['a.test'], 'to': 'mx', 'via': 1}]", "routes[0].via: unknown key"},
    {"[{'domains': ['a.test'], 'to': 'mx', 'Domains': []}]", "routes[0].Domains: unknown key"},
    /* the route TLS policy (all its cases: tests/unit/config_tls.c) */
    {"[{'domains': ['a.test'], 'to': 'mx'}, {'domains': ['b.test'], 'to': 'mx', 'tls': {}}]",
     "routes[1].tls: expected \"none\", \"opportunistic\", \"required\" or \"verify\""},
    {"[{'domains': ['a.test'], 'tls': 'REQUIRED', 'to': 'mx'}]",
     "routes[0].tls: expected \"none\", \"opportunistic\", \"required\" or \"verify\""},
    /* domains */
    {"[{'domains': [], 'to': 'mx'}]", "routes[0].domains: expected an array of 1..100000 domains"},
    {"[{'domains': 'a.test', 'to': 'mx'}]",
     "routes[0].domains: expected an array of 1..100000 domains"},
    {"[{'domains': {}, 'to': 'mx'}]", "routes[0].domains: expected an array of 1..100000 domains"},
    {"[{'domains': ['a.test', 5], 'to': 'mx'}]", "routes[0].domains[1]: " DOMAIN_ENTRY},
    {"[{'domains': ['a.test', null], 'to': 'mx'}]", "routes[0].domains[1]: " DOMAIN_ENTRY},
    /* to: type and list */
    {"[{'domains': ['a.test'], 'to': []}]",
     "routes[0].to: expected a destination string or an array of 1..8"},
    {"[{'domains': ['a.test'], 'to': 5}]",
     "routes[0].to: expected a destination string or an array of 1..8"},
    {"[{'domains': ['a.test'], 'to': {'host': 'x'}}]",
     "routes[0].to: expected a destination string or an array of 1..8"},
    {"[{'domains': ['a.test'], 'to': ['smtp://192.0.2.1:25', 1, 2, 3, 4, 5, 6, 7, 8]}]",
     "routes[0].to: expected a destination string or an array of 1..8"},
    {"[{'domains': ['a.test'], 'to': ['smtp://192.0.2.1:25', null]}]", "routes[0].to[1]: " KINDS},
    {"[{'domains': ['a.test'], 'to': [['mx']]}]", "routes[0].to[0]: " KINDS},
    /* to: unknown kinds */
    {"[{'domains': ['a.test'], 'to': ''}]", "routes[0].to: " KINDS},
    {"[{'domains': ['a.test'], 'to': 'MX'}]", "routes[0].to: " KINDS},
    {"[{'domains': ['a.test'], 'to': 'mx '}]", "routes[0].to: " KINDS},
    {"[{'domains': ['a.test'], 'to': 'SMTP://192.0.2.1:25'}]", "routes[0].to: " KINDS},
    {"[{'domains': ['a.test'], 'to': 'smtp:192.0.2.1:25'}]", "routes[0].to: " KINDS},
    {"[{'domains': ['a.test'], 'to': '192.0.2.1:25'}]", "routes[0].to: " KINDS},
    {"[{'domains': ['a.test'], 'to': 'lmtp:/run/lmtp.sock'}]", "routes[0].to: " KINDS},
    {"[{'domains': ['a.test'], 'to': 'mx\\u0000'}]", "routes[0].to: " KINDS},
    /* to: "mx" and local stores only alone */
    {"[{'domains': ['a.test'], 'to': ['smtp://192.0.2.1:25', 'mx']}]", "routes[0].to[1]: " ALONE},
    {"[{'domains': ['a.test'], 'to': ['mx', 'smtp://192.0.2.1:25']}]", "routes[0].to[0]: " ALONE},
    {"[{'domains': ['a.test'], 'to': ['mx', 'mx']}]", "routes[0].to[0]: " ALONE},
    {"[{'domains': ['a.test'], 'to': ['maildir:/a', 'maildir:/b']}]", "routes[0].to[0]: " ALONE},
    {"[{'domains': ['a.test'], 'to': ['smtp://192.0.2.1:25', 'mbox:/m']}]",
     "routes[0].to[1]: " ALONE},
    /* to: smtp/lmtp addresses */
    {"[{'domains': ['a.test'], 'to': 'smtp://mail.example:25'}]", "routes[0].to: " SMTP_NAME},
    {"[{'domains': ['a.test'], 'to': 'smtp://mail.example.:25'}]", "routes[0].to: " SMTP_NAME},
    {"[{'domains': ['a.test'], 'to': 'smtp://mail.example'}]", "routes[0].to: " SMTP_NAME},
    {"[{'domains': ['a.test'], 'to': 'smtp://localhost:25'}]", "routes[0].to: " SMTP_NAME},
    {"[{'domains': ['a.test'], 'to': ['lmtp://192.0.2.1:24', 'lmtp://dovecot:24']}]",
     "routes[0].to[1]: " LMTP_NAME},
    {"[{'domains': ['a.test'], 'to': 'smtp://192.0.2.1'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'smtp://192.0.2.1:'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'smtp://192.0.2.1:0'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'smtp://192.0.2.1:65536'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'smtp://192.0.2.1:25/'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'smtp://::1:25'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'smtp://[::1]'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'smtp://[192.0.2.1]:25'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'smtp://'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'smtp://:25'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'smtp://1.2.3.4:25'}, "
     " {'domains': ['b.test'], 'to': 'smtp://user@192.0.2.1:25'}]",
     "routes[1].to: " SMTP_ADDR},
    /* "any" addresses are for listeners; as a destination they mean this host */
    {"[{'domains': ['a.test'], 'to': 'smtp://*:25'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'smtp://0.0.0.0:25'}]", "routes[0].to: " SMTP_ADDR},
    {"[{'domains': ['a.test'], 'to': 'lmtp://[::]:24'}]",
     "routes[0].to: expected \"lmtp://IP:port\" with an IPv4 address or [IPv6 address] and a "
     "port 1..65535"},
    /* to: local paths */
    {"[{'domains': ['a.test'], 'to': 'maildir:'}]",
     "routes[0].to: expected \"maildir:/path\" with a path of 1..4095 bytes"},
    {"[{'domains': ['a.test'], 'to': ['mbox:']}]",
     "routes[0].to[0]: expected \"mbox:/path\" with a path of 1..4095 bytes"},
    /* wrong types inside the route are still caught after a good route */
    {"[{'domains': ['a.test'], 'to': 'mx'}, 5]", "routes[1]: expected a JSON object"},
    /* failures after paths and domains were allocated (valgrind: nothing leaks) */
    {"[{'domains': ['a.test'], 'to': 'maildir:/m'}, {'domains': ['*'], 'to': 'mbox:/x',"
     " 'tls': 'required'}]",
     "routes[1].tls: expected \"none\": a maildir: or mbox: route has no TLS"},
    {"[{'to': 'maildir:/m', 'domains': ['a.test', '*', 'b..test']}]",
     "routes[0].domains[2]: " DOMAIN_ENTRY},
};

static void test_route_errors(void **state)
{
	(void)state;
	EXPECT_SECTION_ERRS("routes", route_errs);
	/* a NUL in a path would cut it short in C */
	expect_err("routes[0].to: " KINDS,
		   "{" LISTENER ", 'routes': [{'domains': ['*'], 'to': 'maildir:/a\\u0000b'}]}");
}

static void test_route_domain_errors(void **state)
{
	(void)state;
	static const char *const bad[] = {"",	     "*.",	 ".",	    "**",    "*.*",
					  "*.*.x",   "x.*",	 "a..b",    "a_b.x", "1.2.3.4",
					  "-x.test", "x.test..", "*x.test", "* ",    "[192.0.2.1]"};
	for (size_t i = 0; i < COUNT(bad); i++)
		expect_err("routes[0].domains[2]: " DOMAIN_ENTRY,
			   "{" LISTENER
			   ", 'routes': [{'domains': ['a.test', '*', '%s'], 'to': 'mx'}]}",
			   bad[i]);
}

/* ---- route lookup -------------------------------------------------------- */

static void test_find_precedence(void **state)
{
	(void)state;
	struct rmx_config *cfg =
	    load_ok("{" LISTENER ", 'routes': ["
		    /* 0 */ " {'domains': ['*'], 'to': 'mx'},"
		    /* 1 */ " {'domains': ['*.example.org', 'Other.TEST.'], 'to': 'mx'},"
		    /* 2 */ " {'domains': ['*.a.example.org'], 'to': 'mx'},"
		    /* 3 */ " {'domains': ['b.example.org'], 'to': 'mx'},"
		    /* 4 */ " {'domains': ['b.example.org', '*.sub.test', '*'], 'to': 'mx'},"
		    /* 5 */ " {'domains': ['example.org'], 'to': 'mx'}]}");
	assert_int_equal(cfg->route_count, 6);
	assert_true(cfg->routes[4].catch_all);
	assert_int_equal(cfg->routes[4].domain_count, 2);
	/* exact beats suffix and "*", wherever the exact route is listed */
	assert_int_equal(route_of(cfg, "b.example.org"), 3); /* first listed exact wins */
	assert_int_equal(route_of(cfg, "example.org"), 5);
	assert_int_equal(route_of(cfg, "other.test"), 1);
	/* suffix beats "*"; among suffixes the first listed wins, not the longest */
	assert_int_equal(route_of(cfg, "x.example.org"), 1);
	assert_int_equal(route_of(cfg, "x.a.example.org"), 1);
	assert_int_equal(route_of(cfg, "x.b.example.org"), 1);
	assert_int_equal(route_of(cfg, "deep.x.sub.test"), 4);
	/* strict subdomains only: "*.sub.test" does not take "sub.test" */
	assert_int_equal(route_of(cfg, "sub.test"), 0);
	/* the first "*" takes everything else */
	assert_int_equal(route_of(cfg, "unknown.test"), 0);
	assert_int_equal(route_of(cfg, "x.other.test"), 0);
	assert_int_equal(route_of(cfg, "[192.0.2.1]"), 0);
	assert_int_equal(route_of(cfg, "a..example.org"), 0); /* matches no entry, only "*" */
	/* case-insensitive, one trailing dot ignored */
	assert_int_equal(route_of(cfg, "B.Example.ORG"), 3);
	assert_int_equal(route_of(cfg, "b.example.org."), 3);
	assert_int_equal(route_of(cfg, "EXAMPLE.ORG."), 5);
	assert_int_equal(route_of(cfg, "X.EXAMPLE.ORG."), 1);
	assert_int_equal(route_of(cfg, "b.example.org.."), 0);
	/* the domain is a slice, not a C string */
	assert_ptr_equal(config_route_find(cfg, "example.org.uk", 11), &cfg->routes[5]);
	assert_null(config_route_find(NULL, "example.org", 11));
	assert_null(config_route_find(cfg, NULL, 0));
	config_free(cfg);
}

static void test_find_no_route(void **state)
{
	(void)state;
	struct rmx_config *cfg =
	    load_ok("{" LISTENER ", 'routes': [{'domains': ['a.test', '*.b.test'], 'to': 'mx'},"
		    " {'domains': ['c.test'], 'to': 'mx'}]}");
	assert_int_equal(route_of(cfg, "a.test"), 0);
	assert_int_equal(route_of(cfg, "x.b.test"), 0);
	assert_int_equal(route_of(cfg, "C.test."), 1);
	assert_int_equal(route_of(cfg, "b.test"), -1);
	assert_int_equal(route_of(cfg, "x.a.test"), -1);
	assert_int_equal(route_of(cfg, "d.test"), -1);
	assert_int_equal(route_of(cfg, ""), -1);
	assert_int_equal(route_of(cfg, "."), -1);
	assert_int_equal(route_of(cfg, ".b.test"), -1);
	char *longname = repeat('a', 300);
	assert_int_equal(route_of(cfg, longname), -1);
	free(longname);
	config_free(cfg);
}

/* ---- delivery ------------------------------------------------------------ */

static void test_delivery_keys(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok(
	    "{" LISTENER ", 'delivery': {'retry_s': [1, 604800, 30], 'max_age_s': 2592000,"
	    " 'connections_per_route': 10000, 'messages_per_connection': 1,"
	    " 'connect_timeout_s': 3600, 'command_timeout_s': 1, 'delay_notice_s': 2592000}}");
	const struct config_delivery *d = &cfg->delivery;
	assert_int_equal(d->retry_count, 3);
	assert_int_equal(d->retry_s[0], 1);
	assert_int_equal(d->retry_s[1], 604800);
	assert_int_equal(d->retry_s[2], 30);
	assert_int_equal(d->max_age_s, 2592000);
	assert_int_equal(d->connections_per_route, 10000);
	assert_int_equal(d->messages_per_connection, 1);
	assert_int_equal(d->connect_timeout_s, 3600);
	assert_int_equal(d->command_timeout_s, 1);
	assert_int_equal(d->delay_notice_s, 2592000);
	config_free(cfg);

	/* CONFIG_RETRY_MAX intervals at most */
	char list[CONFIG_RETRY_MAX * 8 + 16];
	size_t used = (size_t)snprintf(list, sizeof(list), "[1");
	for (int i = 1; i < CONFIG_RETRY_MAX; i++)
		used += (size_t)snprintf(list + used, sizeof(list) - used, ", %d", i + 1);
	snprintf(list + used, sizeof(list) - used, "]");
	cfg = load_ok("{" LISTENER ", 'delivery': {'retry_s': %s, 'delay_notice_s': 1,"
		      " 'max_age_s': 1}}",
		      list);
	assert_int_equal(cfg->delivery.retry_count, CONFIG_RETRY_MAX);
	assert_int_equal(cfg->delivery.retry_s[CONFIG_RETRY_MAX - 1], CONFIG_RETRY_MAX);
	assert_int_equal(cfg->delivery.max_age_s, 1);
	assert_int_equal(cfg->delivery.delay_notice_s, 1);
	config_free(cfg);
	snprintf(list + used, sizeof(list) - used, ", 5]");
	expect_err("delivery.retry_s: expected an array of 1..32 intervals in seconds",
		   "{" LISTENER ", 'delivery': {'retry_s': %s}}", list);
}

static const struct err_case delivery_errs[] = {
    {"[]", "delivery: expected a JSON object"},
    {"{'retry': [60]}", "delivery.retry: unknown key"},
    {"{'bounce_from_postmaster': true}", "delivery.bounce_from_postmaster: unknown key"},
    {"{'retry_s': []}", "delivery.retry_s: expected an array of 1..32 intervals in seconds"},
    {"{'retry_s': 60}", "delivery.retry_s: expected an array of 1..32 intervals in seconds"},
    {"{'retry_s': [60, 0]}", "delivery.retry_s[1]: expected an integer in 1..604800"},
    {"{'retry_s': [60, 300, 604801]}", "delivery.retry_s[2]: expected an integer in 1..604800"},
    {"{'retry_s': [-1]}", "delivery.retry_s[0]: expected an integer in 1..604800"},
    {"{'retry_s': [1.5]}", "delivery.retry_s[0]: expected an integer in 1..604800"},
    {"{'retry_s': ['60']}", "delivery.retry_s[0]: expected an integer in 1..604800"},
    {"{'max_age_s': 0}", "delivery.max_age_s: expected an integer in 1..2592000"},
    {"{'max_age_s': 2592001}", "delivery.max_age_s: expected an integer in 1..2592000"},
    {"{'connections_per_route': 0}",
     "delivery.connections_per_route: expected an integer in 1..10000"},
    {"{'connections_per_route': 10001}",
     "delivery.connections_per_route: expected an integer in 1..10000"},
    {"{'messages_per_connection': 0}",
     "delivery.messages_per_connection: expected an integer in 1..1000000"},
    {"{'messages_per_connection': 1000001}",
     "delivery.messages_per_connection: expected an integer in 1..1000000"},
    {"{'connect_timeout_s': 0}", "delivery.connect_timeout_s: expected an integer in 1..3600"},
    {"{'connect_timeout_s': 3601}", "delivery.connect_timeout_s: expected an integer in 1..3600"},
    {"{'command_timeout_s': 0}", "delivery.command_timeout_s: expected an integer in 1..3600"},
    {"{'command_timeout_s': '300'}", "delivery.command_timeout_s: expected an integer in 1..3600"},
    {"{'delay_notice_s': -1}", "delivery.delay_notice_s: expected an integer in 0..2592000"},
    {"{'delay_notice_s': 2592001}", "delivery.delay_notice_s: expected an integer in 0..2592000"},
    /* a notice due after the bounce would never go out; key order does not matter */
    {"{'delay_notice_s': 432001}",
     "delivery.delay_notice_s: expected 0 (no notice) or 1..max_age_s (432000)"},
    {"{'delay_notice_s': 61, 'max_age_s': 60}",
     "delivery.delay_notice_s: expected 0 (no notice) or 1..max_age_s (60)"},
};

static void test_delivery_errors(void **state)
{
	(void)state;
	EXPECT_SECTION_ERRS("delivery", delivery_errs);
}

/* ---- dns ----------------------------------------------------------------- */

static void test_dns_keys(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok("{" LISTENER ", 'dns': {'servers': ['127.0.0.1:53'],"
					 " 'timeout_ms': 100, 'tries': 10}}");
	assert_string_equal(cfg->dns.servers, "127.0.0.1:53");
	assert_int_equal(cfg->dns.timeout_ms, 100);
	assert_int_equal(cfg->dns.tries, 10);
	config_free(cfg);

	/* joined with ',' in the canonical spelling dns_new() takes */
	cfg = load_ok("{" LISTENER ", 'dns': {'servers': ['192.0.2.1:53', '[::1]:5353',"
		      " '[2001:DB8:0:0::53]:53', '10.0.0.1:0053', '10.0.0.2:1', '10.0.0.3:65535',"
		      " '10.0.0.4:53', '10.0.0.5:53'], 'timeout_ms': 60000, 'tries': 1}}");
	assert_string_equal(cfg->dns.servers, "192.0.2.1:53,[::1]:5353,[2001:db8::53]:53,"
					      "10.0.0.1:53,10.0.0.2:1,10.0.0.3:65535,"
					      "10.0.0.4:53,10.0.0.5:53");
	assert_int_equal(cfg->dns.timeout_ms, 60000);
	assert_int_equal(cfg->dns.tries, 1);
	config_free(cfg);

	/* the longest canonical spelling, 8 times, still fits */
	const char *v6 = "'[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535'";
	cfg = load_ok("{" LISTENER ", 'dns': {'servers': [%s,%s,%s,%s,%s,%s,%s,%s]}}", v6, v6, v6,
		      v6, v6, v6, v6, v6);
	assert_int_equal(strlen(cfg->dns.servers),
			 8 * strlen("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535") + 7);
	config_free(cfg);
}

#define DNS_ENTRY "expected \"IP:port\" or \"[IPv6]:port\""

static const struct err_case dns_errs[] = {
    {"'127.0.0.1:53'", "dns: expected a JSON object"},
    {"{'server': []}", "dns.server: unknown key"},
    {"{'servers': []}", "dns.servers: expected an array of 1..8 \"IP:port\" strings"},
    {"{'servers': '127.0.0.1:53'}", "dns.servers: expected an array of 1..8 \"IP:port\" strings"},
    {"{'servers': null}", "dns.servers: expected an array of 1..8 \"IP:port\" strings"},
    {"{'servers': ['1.1.1.1:53', '1.1.1.2:53', '1.1.1.3:53', '1.1.1.4:53', '1.1.1.5:53',"
     " '1.1.1.6:53', '1.1.1.7:53', '1.1.1.8:53', '1.1.1.9:53']}",
     "dns.servers: expected an array of 1..8 \"IP:port\" strings"},
    {"{'servers': ['127.0.0.1']}", "dns.servers[0]: " DNS_ENTRY},
    {"{'servers': ['127.0.0.1:53', 'ns.example:53']}", "dns.servers[1]: " DNS_ENTRY},
    {"{'servers': ['127.0.0.1:53', '::1:53']}", "dns.servers[1]: " DNS_ENTRY},
    {"{'servers': ['127.0.0.1:0']}", "dns.servers[0]: " DNS_ENTRY},
    {"{'servers': ['*:53']}", "dns.servers[0]: " DNS_ENTRY},
    {"{'servers': ['[::]:53']}", "dns.servers[0]: " DNS_ENTRY},
    {"{'servers': [53]}", "dns.servers[0]: " DNS_ENTRY},
    {"{'servers': ['127.0.0.1:53,127.0.0.2:53']}", "dns.servers[0]: " DNS_ENTRY},
    {"{'timeout_ms': 99}", "dns.timeout_ms: expected an integer in 100..60000"},
    {"{'timeout_ms': 60001}", "dns.timeout_ms: expected an integer in 100..60000"},
    {"{'tries': 0}", "dns.tries: expected an integer in 1..10"},
    {"{'tries': 11}", "dns.tries: expected an integer in 1..10"},
    {"{'servers': ['127.0.0.1:53'], 'tries': 0}", "dns.tries: expected an integer in 1..10"},
};

static void test_dns_errors(void **state)
{
	(void)state;
	EXPECT_SECTION_ERRS("dns", dns_errs);
}

/* Duplicate keys inside the new sections go through the strictness scan. */
static void test_duplicates(void **state)
{
	(void)state;
	expect_err("routes[1].to: duplicate key (line 1)",
		   "{" LISTENER ", 'routes': [{'domains': ['a.test'], 'to': 'mx'},"
		   " {'domains': ['b.test'], 'to': 'mx', 'to': 'smtp://192.0.2.1:25'}]}");
	expect_err("routes: duplicate key (line 1)", "{" LISTENER ", 'routes': [], 'routes': []}");
	expect_err("delivery.max_age_s: duplicate key (line 1)",
		   "{" LISTENER ", 'delivery': {'max_age_s': 60, 'max_age_s': 1}}");
	expect_err("dns.servers: duplicate key (line 1)",
		   "{" LISTENER ", 'dns': {'servers': ['127.0.0.1:53'], 'servers': ['::1']}}");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults),	    cmocka_unit_test(test_embedded_default),
	    cmocka_unit_test(test_hop_kinds),	    cmocka_unit_test(test_failover_and_single),
	    cmocka_unit_test(test_hop_path_bound),  cmocka_unit_test(test_routes_bound),
	    cmocka_unit_test(test_route_errors),    cmocka_unit_test(test_route_domain_errors),
	    cmocka_unit_test(test_find_precedence), cmocka_unit_test(test_find_no_route),
	    cmocka_unit_test(test_delivery_keys),   cmocka_unit_test(test_delivery_errors),
	    cmocka_unit_test(test_dns_keys),	    cmocka_unit_test(test_dns_errors),
	    cmocka_unit_test(test_duplicates),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
