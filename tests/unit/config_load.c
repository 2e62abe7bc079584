/* config_load: every key, default and range, and the exact one-line error for each bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "config_testlib.h" /* test JSON is single-quoted: see there */

static uint32_t cpus_online(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > 256 ? 256 : (uint32_t)n;
}

static void assert_v4(const struct config_listener *l, const char *ip, uint16_t port)
{
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&l->addr;
	char buf[INET_ADDRSTRLEN];
	assert_int_equal(sin->sin_family, AF_INET);
	assert_int_equal(l->addr_len, sizeof(*sin));
	assert_string_equal(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)), ip);
	assert_int_equal(ntohs(sin->sin_port), port);
}

/* ---- defaults ------------------------------------------------------------ */

static void test_defaults(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok("{" LISTENER "}");
	char host[CONFIG_HOSTNAME_MAX + 1];
	assert_int_equal(gethostname(host, sizeof(host)), 0);
	assert_string_equal(cfg->hostname, host);
	assert_int_equal(cfg->shards, cpus_online());
	assert_null(cfg->cpu_affinity);
	assert_int_equal(cfg->cpu_affinity_count, 0);
	assert_int_equal(cfg->listener_count, 1);
	assert_string_equal(cfg->listeners[0].name, "mx");
	assert_v4(&cfg->listeners[0], "127.0.0.1", 2525);
	assert_string_equal(cfg->listeners[0].banner, "");
	assert_int_equal(cfg->listeners[0].greet_pause_ms, 0);
	/* relaying is denied unless configured (invariant 7) */
	assert_int_equal(cfg->relay_domain_count, 0);
	assert_int_equal(cfg->relay_network_count, 0);
	assert_int_equal(cfg->limits.message_size, 10485760);
	assert_int_equal(cfg->limits.recipients, 100);
	assert_int_equal(cfg->limits.errors, 10);
	assert_int_equal(cfg->limits.idle_s, 300);
	assert_int_equal(cfg->limits.session_s, 3600);
	assert_int_equal(cfg->limits.connections, 10000);
	assert_int_equal(cfg->limits.connections_per_ip, 50);
	assert_int_equal(cfg->limits.commands, 10000);
	assert_int_equal(cfg->limits.received_headers, 50);
	assert_int_equal(cfg->limits.transactions, 1000);
	assert_string_equal(cfg->spool.path, "/var/spool/ringmx");
	assert_int_equal(cfg->spool.durability, CONFIG_DURABILITY_FSYNC);
	assert_int_equal(cfg->spool.segment_size, 64u << 20);
	assert_int_equal(cfg->io.ring_entries, 4096);
	assert_int_equal(cfg->io.recv_buffers, 1024);
	assert_int_equal(cfg->io.recv_buffer_size, 16384);
	assert_int_equal(cfg->io.max_connections, (10000 + cfg->shards - 1) / cfg->shards);
	assert_string_equal(cfg->control.socket, "/run/ringmx/control.sock");
	assert_false(cfg->log.json);
	assert_int_equal(cfg->log.level, 2);
	config_free(cfg);
}

static void test_embedded_default(void **state)
{
	(void)state;
	struct rmx_config *cfg = default_ok();
	assert_int_equal(cfg->shards, cpus_online());
	assert_int_equal(cfg->listener_count, 1);
	assert_string_equal(cfg->listeners[0].name, "mx");
	assert_v4(&cfg->listeners[0], "127.0.0.1", 2525);
	assert_int_equal(cfg->relay_domain_count, 1);
	assert_string_equal(cfg->relay_domains[0].name, "localhost");
	assert_false(cfg->relay_domains[0].wildcard);
	assert_int_equal(cfg->relay_network_count, 2);
	assert_string_equal(cfg->spool.path, "./spool");
	assert_string_equal(cfg->control.socket, "./ringmx.sock");
	assert_int_equal(cfg->spool.durability, CONFIG_DURABILITY_FSYNC);
	assert_int_equal(cfg->limits.recipients, 100);
	assert_true(config_domain_is_relay(cfg, "localhost", 9));
	config_free(cfg);
}

/* ---- every key set ------------------------------------------------------- */

static const char every_key[] =
    "{'hostname': 'gw.test', 'shards': 2, 'cpu_affinity': [3, 1],"
    " 'listeners': [{'name': 'mx', 'address': '*:25', 'banner': 'gw.test ESMTP hello',"
    "                'greet_pause_ms': 1500},"
    "               {'name': 'submission_1', 'address': '[2001:db8::1]:587'}],"
    " 'relay': {'domains': ['Accepted.Example.', '*.sub.example'],"
    "           'networks': ['192.0.2.0/24', '::1/128', '127.0.0.1']},"
    " 'limits': {'message_size': 1048576, 'recipients': 7, 'errors': 3, 'idle_s': 60,"
    "            'session_s': 600, 'connections': 101, 'connections_per_ip': 5, 'commands': 99,"
    "            'received_headers': 30, 'transactions': 9},"
    " 'spool': {'path': '/srv/spool', 'durability': 'none', 'segment_size': 2097152},"
    " 'io': {'ring_entries': 256, 'recv_buffers': 64, 'recv_buffer_size': 8192,"
    "        'max_connections': 77},"
    " 'control': {'socket': '/tmp/ctl.sock'},"
    " 'log': {'format': 'json', 'level': 'debug'}}";

static void test_every_key(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok("%s", every_key);
	assert_string_equal(cfg->hostname, "gw.test");
	assert_int_equal(cfg->shards, 2);
	assert_int_equal(cfg->cpu_affinity_count, 2);
	assert_int_equal(cfg->cpu_affinity[0], 3);
	assert_int_equal(cfg->cpu_affinity[1], 1);
	assert_int_equal(cfg->listener_count, 2);
	assert_v4(&cfg->listeners[0], "0.0.0.0", 25);
	assert_string_equal(cfg->listeners[0].banner, "gw.test ESMTP hello");
	assert_int_equal(cfg->listeners[0].greet_pause_ms, 1500);
	assert_string_equal(cfg->listeners[1].name, "submission_1");
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&cfg->listeners[1].addr;
	struct in6_addr want;
	assert_int_equal(inet_pton(AF_INET6, "2001:db8::1", &want), 1);
	assert_int_equal(sin6->sin6_family, AF_INET6);
	assert_int_equal(cfg->listeners[1].addr_len, sizeof(*sin6));
	assert_memory_equal(&sin6->sin6_addr, &want, sizeof(want));
	assert_int_equal(ntohs(sin6->sin6_port), 587);
	assert_int_equal(cfg->relay_domain_count, 2);
	assert_int_equal(cfg->relay_network_count, 3);
	assert_int_equal(cfg->limits.message_size, 1048576);
	assert_int_equal(cfg->limits.recipients, 7);
	assert_int_equal(cfg->limits.errors, 3);
	assert_int_equal(cfg->limits.idle_s, 60);
	assert_int_equal(cfg->limits.session_s, 600);
	assert_int_equal(cfg->limits.connections, 101);
	assert_int_equal(cfg->limits.connections_per_ip, 5);
	assert_int_equal(cfg->limits.commands, 99);
	assert_int_equal(cfg->limits.received_headers, 30);
	assert_int_equal(cfg->limits.transactions, 9);
	assert_string_equal(cfg->spool.path, "/srv/spool");
	assert_int_equal(cfg->spool.durability, CONFIG_DURABILITY_NONE);
	assert_int_equal(cfg->spool.segment_size, 2097152);
	assert_int_equal(cfg->io.ring_entries, 256);
	assert_int_equal(cfg->io.recv_buffers, 64);
	assert_int_equal(cfg->io.recv_buffer_size, 8192);
	assert_int_equal(cfg->io.max_connections, 77);
	assert_string_equal(cfg->control.socket, "/tmp/ctl.sock");
	assert_true(cfg->log.json);
	assert_int_equal(cfg->log.level, 3);
	config_free(cfg);
}

static void test_choices(void **state)
{
	(void)state;
	static const char *const levels[] = {"error", "warn", "info", "debug"};
	for (int i = 0; i < 4; i++) {
		struct rmx_config *cfg =
		    load_ok("{" LISTENER ", 'log': {'level': '%s'}}", levels[i]);
		assert_int_equal(cfg->log.level, i);
		config_free(cfg);
	}
	struct rmx_config *cfg =
	    load_ok("{" LISTENER ", 'log': {'format': 'kv'}, 'spool': {'durability': 'fsync'}}");
	assert_false(cfg->log.json);
	assert_int_equal(cfg->spool.durability, CONFIG_DURABILITY_FSYNC);
	config_free(cfg);
	static const struct err_case bad[] = {
	    {"{" LISTENER ", 'spool': {'durability': 'FSYNC'}}",
	     "spool.durability: expected \"fsync\" or \"none\""},
	    {"{" LISTENER ", 'spool': {'durability': 0}}",
	     "spool.durability: expected \"fsync\" or \"none\""},
	    {"{" LISTENER ", 'spool': {'durability': 'fsync\\u0000x'}}",
	     "spool.durability: expected \"fsync\" or \"none\""},
	    {"{" LISTENER ", 'log': {'level': 'trace'}}",
	     "log.level: expected \"error\", \"warn\", \"info\" or \"debug\""},
	    {"{" LISTENER ", 'log': {'level': 2}}",
	     "log.level: expected \"error\", \"warn\", \"info\" or \"debug\""},
	    {"{" LISTENER ", 'log': {'format': 'text'}}",
	     "log.format: expected \"kv\" or \"json\""},
	    {"{" LISTENER ", 'log': {'format': null}}", "log.format: expected \"kv\" or \"json\""},
	};
	EXPECT_ERRS(bad);
}

/* ---- integers ------------------------------------------------------------ */

struct int_key {
	const char *section; /* NULL: root */
	const char *key;
	unsigned long long min, max;
	size_t offset; /* of a uint32_t/uint64_t in struct rmx_config */
	size_t size;
};

#define INT_KEY(sec, k, lo, hi, member)                                                            \
	{                                                                                          \
		sec, k, lo, hi, offsetof(struct rmx_config, member),                               \
		    sizeof(((struct rmx_config *)0)->member)                                       \
	}

static const struct int_key int_keys[] = {
    INT_KEY("limits", "message_size", 1024, 1ull << 40, limits.message_size),
    INT_KEY("limits", "recipients", 1, 100000, limits.recipients),
    INT_KEY("limits", "errors", 1, 1000, limits.errors),
    INT_KEY("limits", "idle_s", 1, 86400, limits.idle_s),
    INT_KEY("limits", "session_s", 1, 604800, limits.session_s),
    INT_KEY("limits", "connections", 1, 1000000, limits.connections),
    INT_KEY("limits", "connections_per_ip", 1, 1000000, limits.connections_per_ip),
    INT_KEY("limits", "commands", 1, 10000000, limits.commands),
    INT_KEY("limits", "received_headers", 1, 1000, limits.received_headers),
    INT_KEY("limits", "transactions", 1, 1000000, limits.transactions),
    INT_KEY("spool", "segment_size", 1ull << 20, 16ull << 30, spool.segment_size),
    INT_KEY("io", "recv_buffer_size", 4096, 1u << 20, io.recv_buffer_size),
    INT_KEY("io", "max_connections", 0, 1000000, io.max_connections),
    INT_KEY(NULL, "shards", 0, 256, shards),
};

static struct rmx_config *int_try(const struct int_key *k, const char *value, char *err)
{
	if (k->section == NULL)
		return try_load(err, "{" LISTENER ", '%s': %s}", k->key, value);
	return try_load(err, "{" LISTENER ", '%s': {'%s': %s}}", k->section, k->key, value);
}

static uint64_t int_read(const struct rmx_config *cfg, const struct int_key *k)
{
	const char *p = (const char *)cfg + k->offset;
	if (k->size == sizeof(uint64_t))
		return *(const uint64_t *)(const void *)p;
	return *(const uint32_t *)(const void *)p;
}

/* Both bounds load and are stored as written (0 for shards and
 * max_connections means "resolve", so only max is read back for those). */
static void int_key_bounds_ok(const struct int_key *k)
{
	char err[CONFIG_ERR_MAX], value[32];
	unsigned long long edge[2] = {k->min, k->max};
	for (int i = 0; i < 2; i++) {
		snprintf(value, sizeof(value), "%llu", edge[i]);
		struct rmx_config *cfg = int_try(k, value, err);
		if (cfg == NULL)
			fail_msg("%s = %s: %s", k->key, value, err);
		if (edge[i] != 0)
			assert_int_equal(int_read(cfg, k), edge[i]);
		config_free(cfg);
	}
}

static void test_int_ranges(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(int_keys) / sizeof(int_keys[0]); i++) {
		const struct int_key *k = &int_keys[i];
		char want[CONFIG_ERR_MAX], err[CONFIG_ERR_MAX], below[32], above[32];
		snprintf(want, sizeof(want), "%s%s%s: expected an integer in %llu..%llu",
			 k->section ? k->section : "", k->section ? "." : "", k->key, k->min,
			 k->max);
		snprintf(below, sizeof(below), "%lld", (long long)k->min - 1);
		snprintf(above, sizeof(above), "%llu", k->max + 1);
		const char *bad[] = {below,
				     above,
				     "1.5",
				     "1.0",
				     "1e3",
				     "-1",
				     "\"10\"",
				     "true",
				     "null",
				     "[]",
				     "{}",
				     "99999999999999999999",
				     "-99999999999999999999",
				     "18446744073709551617"};
		for (size_t j = 0; j < sizeof(bad) / sizeof(bad[0]); j++) {
			if (j == 0 && k->min == 0)
				continue; /* -1 is covered by "-1" */
			struct rmx_config *cfg = int_try(k, bad[j], err);
			if (cfg != NULL)
				fail_msg("%s = %s loaded", k->key, bad[j]);
			if (strcmp(err, want) != 0)
				fail_msg("%s = %s: got %s, want %s", k->key, bad[j], err, want);
		}
		int_key_bounds_ok(k);
	}
}

static void test_pow2(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok("{" LISTENER ", 'io': {'ring_entries': 64,"
					 " 'recv_buffers': 16}}");
	assert_int_equal(cfg->io.ring_entries, 64);
	assert_int_equal(cfg->io.recv_buffers, 16);
	config_free(cfg);
	cfg = load_ok("{" LISTENER ", 'io': {'ring_entries': 32768, 'recv_buffers': 32768,"
		      " 'recv_buffer_size': 32768}}");
	assert_int_equal(cfg->io.ring_entries, 32768);
	assert_int_equal(cfg->io.recv_buffers, 32768);
	config_free(cfg);
	static const struct err_case bad[] = {
	    {"{" LISTENER ", 'io': {'ring_entries': 100}}",
	     "io.ring_entries: expected a power of 2 in 64..32768"},
	    {"{" LISTENER ", 'io': {'ring_entries': 32}}",
	     "io.ring_entries: expected a power of 2 in 64..32768"},
	    {"{" LISTENER ", 'io': {'ring_entries': 65536}}",
	     "io.ring_entries: expected a power of 2 in 64..32768"},
	    {"{" LISTENER ", 'io': {'ring_entries': 0}}",
	     "io.ring_entries: expected a power of 2 in 64..32768"},
	    {"{" LISTENER ", 'io': {'ring_entries': 4096.0}}",
	     "io.ring_entries: expected a power of 2 in 64..32768"},
	    {"{" LISTENER ", 'io': {'recv_buffers': 1000}}",
	     "io.recv_buffers: expected a power of 2 in 16..32768"},
	    {"{" LISTENER ", 'io': {'recv_buffers': 8}}",
	     "io.recv_buffers: expected a power of 2 in 16..32768"},
	    {"{" LISTENER ", 'io': {'recv_buffers': -16}}",
	     "io.recv_buffers: expected a power of 2 in 16..32768"},
	};
	EXPECT_ERRS(bad);
}

/* recv_buffers * recv_buffer_size is pinned per shard: bounded at 1 GiB. */
static void test_recv_pool_bound(void **state)
{
	(void)state;
	struct rmx_config *cfg =
	    load_ok("{" LISTENER ", 'io': {'recv_buffers': 1024, 'recv_buffer_size': 1048576}}");
	config_free(cfg);
	expect_err("io.recv_buffers: expected recv_buffers * recv_buffer_size of at most 1 GiB",
		   "{" LISTENER ", 'io': {'recv_buffers': 2048, 'recv_buffer_size': 1048576}}");
}

/* ---- shards, affinity, max_connections ----------------------------------- */

static void test_shards_resolution(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok("{" LISTENER ", 'shards': 0}");
	assert_int_equal(cfg->shards, cpus_online());
	config_free(cfg);
	cfg = load_ok("{" LISTENER ", 'shards': 3, 'limits': {'connections': 10000}}");
	assert_int_equal(cfg->shards, 3);
	assert_int_equal(cfg->io.max_connections, 3334); /* rounded up */
	config_free(cfg);
	cfg = load_ok("{" LISTENER ", 'shards': 256, 'limits': {'connections': 1}}");
	assert_int_equal(cfg->io.max_connections, 1);
	config_free(cfg);
	cfg = load_ok("{" LISTENER ", 'shards': 2, 'io': {'max_connections': 5}}");
	assert_int_equal(cfg->io.max_connections, 5);
	config_free(cfg);
}

static void test_affinity(void **state)
{
	(void)state;
	/* key order must not matter: cpu_affinity before shards */
	struct rmx_config *cfg =
	    load_ok("{'cpu_affinity': [0, 1023, 0], 'shards': 3, " LISTENER "}");
	assert_int_equal(cfg->cpu_affinity_count, 3);
	assert_int_equal(cfg->cpu_affinity[1], 1023);
	config_free(cfg);
	static const struct err_case bad[] = {
	    {"{" LISTENER ", 'shards': 2, 'cpu_affinity': [0]}",
	     "cpu_affinity: expected 2 entries (one per shard), got 1"},
	    {"{" LISTENER ", 'shards': 1, 'cpu_affinity': [0, 1]}",
	     "cpu_affinity: expected 1 entries (one per shard), got 2"},
	    {"{" LISTENER ", 'shards': 2, 'cpu_affinity': []}",
	     "cpu_affinity: expected an array of 1..256 CPU numbers"},
	    {"{" LISTENER ", 'shards': 2, 'cpu_affinity': 0}",
	     "cpu_affinity: expected an array of 1..256 CPU numbers"},
	    {"{" LISTENER ", 'shards': 2, 'cpu_affinity': [0, -1]}",
	     "cpu_affinity[1]: expected an integer in 0..1023"},
	    {"{" LISTENER ", 'shards': 2, 'cpu_affinity': [1024, 0]}",
	     "cpu_affinity[0]: expected an integer in 0..1023"},
	    {"{" LISTENER ", 'shards': 2, 'cpu_affinity': [0, '1']}",
	     "cpu_affinity[1]: expected an integer in 0..1023"},
	    {"{" LISTENER ", 'shards': 2, 'cpu_affinity': [0, 1.5]}",
	     "cpu_affinity[1]: expected an integer in 0..1023"},
	};
	EXPECT_ERRS(bad);
	/* shards 0: the length must match the online CPUs, and the message says so */
	char want[CONFIG_ERR_MAX];
	uint32_t cpus = cpus_online();
	snprintf(
	    want, sizeof(want),
	    "cpu_affinity: expected %u entries (one per shard; shards 0 = online CPUs), got %u",
	    cpus, cpus + 1);
	char list[4096] = "0";
	for (uint32_t i = 1; i < cpus + 1; i++)
		strcat(list, ", 0");
	expect_err(want, "{" LISTENER ", 'cpu_affinity': [%s]}", list);
}

/* ---- hostname ------------------------------------------------------------ */

static void test_hostname(void **state)
{
	(void)state;
	char *label63 = repeat('a', 63), *name253 = repeat('a', 253);
	for (size_t i = 63; i < 253; i += 64)
		name253[i] = '.';
	const char *good[] = {"gw.test", "localhost", "GW.Example-1.org", "a", "1a.test",
			      label63,	 name253};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		struct rmx_config *cfg = load_ok("{" LISTENER ", 'hostname': '%s'}", good[i]);
		assert_string_equal(cfg->hostname, good[i]);
		config_free(cfg);
	}
	char *label64 = repeat('a', 64), *name254 = repeat('a', 254);
	for (size_t i = 63; i < 254; i += 64)
		name254[i] = '.';
	const char *bad[] = {"",	 "-a.test", "a-.test", "a..test", "a_b.test", "gw.test.",
			     ".gw.test", "1.2.3.4", "gw test", "gw.tést", label64,    name254};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_err("hostname: expected a host name like \"mx.example.org\"",
			   "{" LISTENER ", 'hostname': '%s'}", bad[i]);
	expect_err("hostname: expected a host name like \"mx.example.org\"",
		   "{" LISTENER ", 'hostname': 42}");
	free(label63);
	free(name253);
	free(label64);
	free(name254);
}

/* ---- listeners ----------------------------------------------------------- */

static void test_listener_addresses(void **state)
{
	(void)state;
	static const char *const bad[] = {"127.0.0.1",
					  "127.0.0.1:",
					  "127.0.0.1:0",
					  "127.0.0.1:65536",
					  ":25",
					  "localhost:25",
					  "::1:25",
					  "[::1]25",
					  "[::1]",
					  "[::1]:",
					  "[127.0.0.1]:25",
					  "[*]:25",
					  "1.2.3:25",
					  "127.0.0.1:25x",
					  "127.0.0.1:-1",
					  "256.0.0.1:25",
					  "127.0.0.1:+25",
					  "[::1]:123456",
					  " 127.0.0.1:25",
					  "*:",
					  "**:25",
					  "[fe80::1%lo]:25",
					  "",
					  "127.0.0.01:25",
					  "[::1]:25 "};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_err("listeners[0].address: expected \"host:port\"",
			   "{'listeners': [{'name': 'a', 'address': '%s'}]}", bad[i]);
	expect_err("listeners[0].address: expected \"host:port\"",
		   "{'listeners': [{'name': 'a', 'address': 25}]}");
	expect_err("listeners[0].address: expected \"host:port\"",
		   "{'listeners': [{'name': 'a', 'address': '127.0.0.1:25\\u0000'}]}");

	struct rmx_config *cfg = load_ok("{'listeners': [{'name': 'a', 'address': '*:65535'},"
					 " {'name': 'b', 'address': '[::]:25'}]}");
	assert_v4(&cfg->listeners[0], "0.0.0.0", 65535);
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&cfg->listeners[1].addr;
	assert_int_equal(sin6->sin6_family, AF_INET6);
	assert_true(IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr));
	assert_int_equal(ntohs(sin6->sin6_port), 25);
	config_free(cfg);
}

static void test_parse_hostport(void **state)
{
	(void)state;
	struct sockaddr_storage ss;
	socklen_t len = 0;
	assert_int_equal(config_parse_hostport("192.0.2.1:2525", &ss, &len), 0);
	assert_int_equal(len, sizeof(struct sockaddr_in));
	assert_int_equal(ss.ss_family, AF_INET);
	assert_int_equal(config_parse_hostport("[::ffff:192.0.2.1]:25", &ss, &len), 0);
	assert_int_equal(len, sizeof(struct sockaddr_in6));
	assert_int_equal(config_parse_hostport("example.org:25", &ss, &len), -EINVAL);
	assert_int_equal(config_parse_hostport(NULL, &ss, &len), -EINVAL);
}

static void test_listener_fields(void **state)
{
	(void)state;
	char *name63 = repeat('n', 63), *banner399 = repeat('b', 399);
	struct rmx_config *cfg = load_ok("{'listeners': [{'name': '%s', 'address': '*:25',"
					 " 'banner': '%s', 'greet_pause_ms': 30000}]}",
					 name63, banner399);
	assert_string_equal(cfg->listeners[0].name, name63);
	assert_string_equal(cfg->listeners[0].banner, banner399);
	assert_int_equal(cfg->listeners[0].greet_pause_ms, 30000);
	config_free(cfg);
	free(name63);
	free(banner399);

	char *name64 = repeat('n', 64), *banner400 = repeat('b', 400);
	const char *bad_names[] = {"", "a b", "a.b", "a/b", "é", name64};
	for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++)
		expect_err("listeners[0].name: expected 1..63 characters of [A-Za-z0-9_-]",
			   "{'listeners': [{'name': '%s', 'address': '*:25'}]}", bad_names[i]);
	const char *bad_banners[] = {banner400, "a\\r\\n250 x", "tab\\there", "\\u007f"};
	for (size_t i = 0; i < sizeof(bad_banners) / sizeof(bad_banners[0]); i++)
		expect_err("listeners[0].banner: expected at most 399 printable ASCII characters",
			   "{'listeners': [{'name': 'a', 'address': '*:25', 'banner': '%s'}]}",
			   bad_banners[i]);
	free(name64);
	free(banner400);
	/* The greeting line "220 <hostname> ESMTP <banner>\r\n" fits 512
	 * octets: a long host name leaves the banner less room. */
	char *host200 = repeat('h', 200), *banner299 = repeat('b', 299);
	for (int i = 60; i < 200; i += 61)
		host200[i] = '.'; /* labels of at most 63 */
	cfg = load_ok("{'hostname': '%s', 'listeners': [{'name': 'a', 'address': '*:25',"
		      " 'banner': '%s'}]}",
		      host200, banner299);
	assert_int_equal(strlen(cfg->listeners[0].banner), 299);
	config_free(cfg);
	char *banner300 = repeat('b', 300), want[700];
	snprintf(want, sizeof(want),
		 "listeners[0].banner: expected at most 299 characters: \"220 %s ESMTP \" comes "
		 "first and a reply line is at most 512 octets",
		 host200);
	expect_err(want,
		   "{'hostname': '%s', 'listeners': [{'name': 'a', 'address': '*:25',"
		   " 'banner': '%s'}]}",
		   host200, banner300);
	free(host200);
	free(banner299);
	free(banner300);
	static const struct err_case bad[] = {
	    {"{'listeners': [{'name': 'a', 'address': '*:25', 'banner': 1}]}",
	     "listeners[0].banner: expected at most 399 printable ASCII characters"},
	    {"{'listeners': [{'name': 'a', 'address': '*:25', 'greet_pause_ms': 30001}]}",
	     "listeners[0].greet_pause_ms: expected an integer in 0..30000"},
	    {"{'listeners': [{'name': 'a', 'address': '*:25', 'greet_pause_ms': -1}]}",
	     "listeners[0].greet_pause_ms: expected an integer in 0..30000"},
	    {"{'listeners': [{'name': 7, 'address': '*:25'}]}",
	     "listeners[0].name: expected 1..63 characters of [A-Za-z0-9_-]"},
	};
	EXPECT_ERRS(bad);
}

static void test_listener_list(void **state)
{
	(void)state;
	char many[4096] = "";
	for (int i = 0; i < 16; i++) {
		char one[128];
		snprintf(one, sizeof(one), "%s{'name': 'l%d', 'address': '127.0.0.1:%d'}",
			 i ? ", " : "", i, 2000 + i);
		strcat(many, one);
	}
	expect_err("listeners: expected an array of 1..16 listeners",
		   "{'listeners': [%s, {'name': 'l16', 'address': '*:25'}]}", many);
	/* 16 is the bound and loads */
	struct rmx_config *cfg = load_ok("{'listeners': [%s]}", many);
	assert_int_equal(cfg->listener_count, 16);
	assert_string_equal(cfg->listeners[15].name, "l15");
	config_free(cfg);
	static const struct err_case bad[] = {
	    {"{}", "listeners: required key missing"},
	    {"{'shards': 1}", "listeners: required key missing"},
	    {"{'listeners': []}", "listeners: expected an array of 1..16 listeners"},
	    {"{'listeners': {}}", "listeners: expected an array of 1..16 listeners"},
	    {"{'listeners': ['mx']}", "listeners[0]: expected a JSON object"},
	    {"{'listeners': [{'address': '*:25'}]}", "listeners[0].name: required key missing"},
	    {"{'listeners': [{'name': 'a'}]}", "listeners[0].address: required key missing"},
	    {"{'listeners': [{'name': 'mx', 'address': '*:25'},"
	     " {'name': 'mx', 'address': '*:26'}]}",
	     "listeners[1].name: expected a unique name, \"mx\" is already listeners[0]"},
	    {"{'listeners': [{'name': 'a', 'address': '*:25'}, {'name': 'b', 'address': '*:26'},"
	     " {'name': 'c', 'address': '0.0.0.0:25'}]}",
	     "listeners[2].address: expected an address no other listener takes, listeners[0] "
	     "(\"a\") overlaps it"},
	    /* a wildcard and a specific address on one port take the same
	     * connections, in either order and either family */
	    {"{'listeners': [{'name': 'a', 'address': '*:25'},"
	     " {'name': 'b', 'address': '127.0.0.1:25'}]}",
	     "listeners[1].address: expected an address no other listener takes, listeners[0] "
	     "(\"a\") overlaps it"},
	    {"{'listeners': [{'name': 'a', 'address': '192.0.2.1:25'},"
	     " {'name': 'b', 'address': '0.0.0.0:25'}]}",
	     "listeners[1].address: expected an address no other listener takes, listeners[0] "
	     "(\"a\") overlaps it"},
	    {"{'listeners': [{'name': 'a', 'address': '[2001:db8::1]:25'},"
	     " {'name': 'b', 'address': '[::]:25'}]}",
	     "listeners[1].address: expected an address no other listener takes, listeners[0] "
	     "(\"a\") overlaps it"},
	    {"{'listeners': [{'name': 'a', 'address': '[::1]:25'},"
	     " {'name': 'b', 'address': '[0:0::1]:25'}]}",
	     "listeners[1].address: expected an address no other listener takes, listeners[0] "
	     "(\"a\") overlaps it"},
	    {"{'listeners': [{'name': 'a', 'address': '*:25', 'port': 25}]}",
	     "listeners[0].port: unknown key"},
	};
	EXPECT_ERRS(bad);
	/* No overlap: other ports, or v4 and v6 wildcards (IPV6_V6ONLY). */
	cfg = load_ok(
	    "{'listeners': [{'name': 'a', 'address': '*:25'},"
	    " {'name': 'b', 'address': '127.0.0.1:26'}, {'name': 'c', 'address': '[::]:25'},"
	    " {'name': 'd', 'address': '[::1]:26'}, {'name': 'e', 'address': '[::2]:26'}]}");
	assert_int_equal(cfg->listener_count, 5);
	config_free(cfg);
}

/* ---- relay --------------------------------------------------------------- */

static void test_relay_lists(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok(
	    "{" LISTENER ", 'relay': {'domains': ['B.Example.', '*.A.example', 'a.example'],"
	    " 'networks': ['192.0.2.0/24', '2001:DB8::/32', '10.1.2.3', '::1',"
	    " '::ffff:198.51.100.0/120', '0.0.0.0/0', '::ffff:0:0/96']}}");
	assert_int_equal(cfg->relay_domain_count, 3);
	/* stored lower-case, without the dot or "*.", sorted exact-first */
	assert_string_equal(cfg->relay_domains[0].name, "a.example");
	assert_false(cfg->relay_domains[0].wildcard);
	assert_string_equal(cfg->relay_domains[1].name, "b.example");
	assert_string_equal(cfg->relay_domains[2].name, "a.example");
	assert_true(cfg->relay_domains[2].wildcard);
	assert_int_equal(cfg->relay_network_count, 7);
	const struct config_cidr *n = cfg->relay_networks;
	assert_int_equal(n[0].family, AF_INET);
	assert_int_equal(n[0].prefix_len, 24);
	assert_memory_equal(n[0].addr, ((uint8_t[]){192, 0, 2, 0}), 4);
	assert_int_equal(n[1].family, AF_INET6);
	assert_int_equal(n[1].prefix_len, 32);
	assert_int_equal(n[2].prefix_len, 32);
	assert_int_equal(n[3].family, AF_INET6);
	assert_int_equal(n[3].prefix_len, 128);
	/* an IPv4-mapped network is kept as the IPv4 network it means */
	assert_int_equal(n[4].family, AF_INET);
	assert_int_equal(n[4].prefix_len, 24);
	assert_memory_equal(n[4].addr, ((uint8_t[]){198, 51, 100, 0}), 4);
	assert_int_equal(n[5].prefix_len, 0);
	assert_int_equal(n[6].family, AF_INET);
	assert_int_equal(n[6].prefix_len, 0);
	config_free(cfg);
	cfg = load_ok("{" LISTENER ", 'relay': {'domains': [], 'networks': []}}");
	assert_int_equal(cfg->relay_domain_count + cfg->relay_network_count, 0);
	config_free(cfg);
}

static void test_relay_errors(void **state)
{
	(void)state;
	static const char *const bad_domains[] = {
	    "",	     "*",	"*.",	   ".",	       "a..b", "*.*.x",	  "x.*",
	    "a_b.x", "1.2.3.4", "-x.test", "x.test..", "a b",  "*x.test", "[192.0.2.1]"};
	for (size_t i = 0; i < sizeof(bad_domains) / sizeof(bad_domains[0]); i++)
		expect_err("relay.domains[1]: expected a domain like \"example.org\" or "
			   "\"*.example.org\"",
			   "{" LISTENER ", 'relay': {'domains': ['ok.test', '%s']}}",
			   bad_domains[i]);
	static const char *const bad_networks[] = {
	    "192.0.2.0/33",   "::/129",		"192.0.2.0/",	"/24",
	    "192.0.2.0/024",  "192.0.2.0/-1",	"192.0.2.0/+8", "host",
	    "192.0.2.0/24/1", "192.0.2.0 /24",	"192.0.2/24",	"",
	    "2001:db8::/32x", "192.0.2.0/1000", "::1/"};
	for (size_t i = 0; i < sizeof(bad_networks) / sizeof(bad_networks[0]); i++)
		expect_err("relay.networks[0]: expected a network like \"192.0.2.0/24\", "
			   "\"2001:db8::/32\" or an address",
			   "{" LISTENER ", 'relay': {'networks': ['%s']}}", bad_networks[i]);
	static const struct err_case bad[] = {
	    {"{" LISTENER ", 'relay': {'networks': ['10.0.0.0/8', '::1', '192.0.2.1/24']}}",
	     "relay.networks[2]: host bits set in 192.0.2.1/24"},
	    {"{" LISTENER ", 'relay': {'networks': ['2001:db8::1/32']}}",
	     "relay.networks[0]: host bits set in 2001:db8::1/32"},
	    {"{" LISTENER ", 'relay': {'networks': ['0.0.0.1/0']}}",
	     "relay.networks[0]: host bits set in 0.0.0.1/0"},
	    {"{" LISTENER ", 'relay': {'networks': ['fd00::/7']}}",
	     "relay.networks[0]: host bits set in fd00::/7"},
	    {"{" LISTENER ", 'relay': {'networks': [42]}}",
	     "relay.networks[0]: expected a network like \"192.0.2.0/24\", \"2001:db8::/32\" or "
	     "an address"},
	    {"{" LISTENER ", 'relay': {'networks': '10.0.0.0/8'}}",
	     "relay.networks: expected an array of at most 10000 networks"},
	    {"{" LISTENER ", 'relay': {'domains': 'a.test'}}",
	     "relay.domains: expected an array of at most 100000 domains"},
	    {"{" LISTENER ", 'relay': {'domains': [null]}}",
	     "relay.domains[0]: expected a domain like \"example.org\" or \"*.example.org\""},
	    {"{" LISTENER ", 'relay': []}", "relay: expected a JSON object"},
	    {"{" LISTENER ", 'relay': {'domain': []}}", "relay.domain: unknown key"},
	};
	EXPECT_ERRS(bad);
}

/* ---- strings ------------------------------------------------------------- */

static void test_strings(void **state)
{
	(void)state;
	char *path4095 = repeat('p', 4095), *path4096 = repeat('p', 4096);
	char *sock107 = repeat('s', 107), *sock108 = repeat('s', 108);
	struct rmx_config *cfg = load_ok("{" LISTENER ", 'spool': {'path': '%s'},"
					 " 'control': {'socket': '%s'}}",
					 path4095, sock107);
	assert_string_equal(cfg->spool.path, path4095);
	assert_string_equal(cfg->control.socket, sock107);
	config_free(cfg);
	expect_err("spool.path: expected a non-empty string of at most 4095 bytes",
		   "{" LISTENER ", 'spool': {'path': '%s'}}", path4096);
	expect_err("control.socket: expected a non-empty string of at most 107 bytes",
		   "{" LISTENER ", 'control': {'socket': '%s'}}", sock108);
	free(path4095);
	free(path4096);
	free(sock107);
	free(sock108);
	static const struct err_case bad[] = {
	    {"{" LISTENER ", 'spool': {'path': ''}}",
	     "spool.path: expected a non-empty string of at most 4095 bytes"},
	    {"{" LISTENER ", 'spool': {'path': 5}}",
	     "spool.path: expected a non-empty string of at most 4095 bytes"},
	    {"{" LISTENER ", 'spool': {'path': '/srv\\u0000/x'}}",
	     "spool.path: expected a non-empty string of at most 4095 bytes"},
	    {"{" LISTENER ", 'control': {'socket': null}}",
	     "control.socket: expected a non-empty string of at most 107 bytes"},
	};
	EXPECT_ERRS(bad);
}

/* ---- structure ----------------------------------------------------------- */

static void test_unknown_keys_and_types(void **state)
{
	(void)state;
	static const struct err_case bad[] = {
	    {"[]", "(root): expected a JSON object"},
	    {"'x'", "(root): expected a JSON object"},
	    {"null", "(root): expected a JSON object"},
	    {"42", "(root): expected a JSON object"},
	    {"{" LISTENER ", 'foo': 1}", "foo: unknown key"},
	    {"{'Shards': 1, " LISTENER "}", "Shards: unknown key"},
	    {"{" LISTENER ", 'limits': {'recipients': 5, 'foo': 1, 'bar': 2}}",
	     "limits.foo: unknown key"},
	    {"{" LISTENER ", 'limits': {'recipents': 5}}", "limits.recipents: unknown key"},
	    {"{" LISTENER ", 'spool': {'fsync': true}}", "spool.fsync: unknown key"},
	    {"{" LISTENER ", 'io': {'rings': 1}}", "io.rings: unknown key"},
	    {"{" LISTENER ", 'control': {'path': 'x'}}", "control.path: unknown key"},
	    {"{" LISTENER ", 'log': {'path': 'x'}}", "log.path: unknown key"},
	    {"{" LISTENER ", 'limits': 5}", "limits: expected a JSON object"},
	    {"{" LISTENER ", 'spool': null}", "spool: expected a JSON object"},
	    {"{" LISTENER ", 'io': []}", "io: expected a JSON object"},
	    {"{" LISTENER ", 'control': 'x'}", "control: expected a JSON object"},
	    {"{" LISTENER ", 'log': 'json'}", "log: expected a JSON object"},
	    /* control bytes in a key are shown as '?', the message stays one line */
	    {"{" LISTENER ", 'a\\nb\\u001b[31m': 1}", "a?b?[31m: unknown key"},
	    /* the first error in document order wins */
	    {"{'foo': 1, 'limits': {'recipients': 0}, " LISTENER "}", "foo: unknown key"},
	    {"{'limits': {'recipients': 0}, 'foo': 1, " LISTENER "}",
	     "limits.recipients: expected an integer in 1..100000"},
	};
	EXPECT_ERRS(bad);
}

static void test_json_syntax(void **state)
{
	(void)state;
	static const struct err_case bad[] = {
	    {"", "<string>: JSON parse error at line 1: unexpected end of data"},
	    {"{'shards':", "<string>: JSON parse error at line 1: unexpected end of data"},
	    {"{\n'shards': 1,\n\n'listeners': [,]}",
	     "<string>: JSON parse error at line 4: unexpected character"},
	    {"{'shards': 1,}", "<string>: JSON parse error at line 1: unexpected character"},
	    {"{/* c */ 'shards': 1}",
	     "<string>: JSON parse error at line 1: quoted object property name expected"},
	    {"{} x", "<string>: JSON parse error at line 1: unexpected character"},
	    {"{'shards': 01}", "<string>: JSON parse error at line 1: number expected"},
	    {"{'hostname': '\xff'}", "<string>: JSON parse error at line 1: invalid utf-8 string"},
	    /* json-c accepts these; JSON does not */
	    {"{\n  'shards': NaN}",
	     "<string>: JSON parse error at line 2: non-standard value (NaN or Infinity?)"},
	    {"{'shards': -Infinity}", "<string>: JSON parse error at line 1: non-standard number"},
	    /* json-c silently keeps the last of duplicate keys */
	    {"{" LISTENER ",\n 'spool': {'durability': 'fsync',\n 'durability': 'none'}}",
	     "spool.durability: duplicate key (line 3)"},
	    {"{'shards': 1, " LISTENER ", 'shards': 2}", "shards: duplicate key (line 1)"},
	    {"{'listeners': [{'name': 'a', 'address': '*:25', 'name': 'b'}]}",
	     "listeners[0].name: duplicate key (line 1)"},
	};
	EXPECT_ERRS(bad);
	/* single quotes must not be swapped here: call the loader directly */
	char err[CONFIG_ERR_MAX];
	assert_null(config_load_string("{'shards': 1}", err, sizeof(err)));
	assert_string_equal(err, "<string>: JSON parse error at line 1: expected a double-quoted "
				 "string");
	assert_null(config_load_string("{\"shards\": 1, \"x\": 'a'}", err, sizeof(err)));
	assert_string_equal(err, "<string>: JSON parse error at line 1: unexpected character");
}

static void test_err_buffer(void **state)
{
	(void)state;
	char err[8];
	memset(err, 'x', sizeof(err));
	assert_null(config_load_string("{\"foo\": 1}", err, sizeof(err)));
	assert_string_equal(err, "foo: un");
	assert_null(config_load_string("{\"foo\": 1}", NULL, 0));
}

/* ---- files --------------------------------------------------------------- */

static char *write_tmp(const char *text, size_t len)
{
	char *path = strdup("/tmp/ringmx-config-XXXXXX");
	assert_non_null(path);
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	close(fd);
	return path;
}

static void expect_file_err(const char *text, size_t len, const char *what)
{
	char err[CONFIG_ERR_MAX], want[CONFIG_ERR_MAX];
	char *path = write_tmp(text, len);
	assert_null(config_load(path, err, sizeof(err)));
	snprintf(want, sizeof(want), "%s: %s", path, what);
	assert_string_equal(err, want);
	unlink(path);
	free(path);
}

static void test_files(void **state)
{
	(void)state;
	char err[CONFIG_ERR_MAX];
	static const char ok[] = "{\"listeners\": [{\"name\": \"mx\", \"address\": \"*:25\"}]}\n";
	char *path = write_tmp(ok, sizeof(ok) - 1);
	struct rmx_config *cfg = config_load(path, err, sizeof(err));
	if (cfg == NULL)
		fail_msg("%s", err);
	config_free(cfg);
	unlink(path);
	free(path);

	static const char syntax[] = "{\n  \"shards\": 1\n  \"listeners\": []\n}\n";
	expect_file_err(syntax, sizeof(syntax) - 1,
			"JSON parse error at line 3: object value separator ',' expected");
	static const char nul[] = "{\n\"shards\": 1\0}";
	expect_file_err(nul, sizeof(nul) - 1, "JSON parse error at line 2: NUL byte in input");
	expect_file_err("", 0, "JSON parse error at line 1: unexpected end of data");

	size_t big_len = (4u << 20) + 1;
	char *big = repeat(' ', big_len);
	expect_file_err(big, big_len, "larger than 4194304 bytes");
	free(big);

	assert_null(config_load("/nonexistent/ringmx.json", err, sizeof(err)));
	assert_string_equal(err,
			    "/nonexistent/ringmx.json: cannot open: No such file or directory");
	assert_null(config_load("/", err, sizeof(err)));
	assert_string_equal(err, "/: cannot read: Is a directory");
}

/* Every file in doc/examples must load: the docs cannot drift from the code. */
static void test_doc_examples(void **state)
{
	(void)state;
	const char *src = getenv("RINGMX_SRCDIR");
	if (src == NULL) {
		print_message("RINGMX_SRCDIR not set: cannot find doc/examples\n");
		skip();
	}
	char dir[4096], path[8192], err[CONFIG_ERR_MAX];
	snprintf(dir, sizeof(dir), "%s/doc/examples", src);
	DIR *d = opendir(dir);
	assert_non_null(d);
	int found = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		size_t n = strlen(e->d_name);
		if (n < 5 || strcmp(e->d_name + n - 5, ".json") != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		struct rmx_config *cfg = config_load(path, err, sizeof(err));
		if (cfg == NULL)
			fail_msg("%s", err);
		if (strcmp(e->d_name, "gateway.json") == 0) {
			assert_int_equal(cfg->shards, 2);
			assert_int_equal(cfg->cpu_affinity_count, 2);
			assert_v4(&cfg->listeners[0], "0.0.0.0", 25);
			assert_int_equal(cfg->spool.durability, CONFIG_DURABILITY_FSYNC);
			found |= 1;
		} else if (strcmp(e->d_name, "bench.json") == 0) {
			assert_int_equal(cfg->spool.durability, CONFIG_DURABILITY_NONE);
			found |= 2;
		} else if (strcmp(e->d_name, "minimal.json") == 0) {
			found |= 4;
		}
		config_free(cfg);
	}
	closedir(d);
	assert_int_equal(found, 7);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_embedded_default),
	    cmocka_unit_test(test_every_key),
	    cmocka_unit_test(test_choices),
	    cmocka_unit_test(test_int_ranges),
	    cmocka_unit_test(test_pow2),
	    cmocka_unit_test(test_recv_pool_bound),
	    cmocka_unit_test(test_shards_resolution),
	    cmocka_unit_test(test_affinity),
	    cmocka_unit_test(test_hostname),
	    cmocka_unit_test(test_listener_addresses),
	    cmocka_unit_test(test_parse_hostport),
	    cmocka_unit_test(test_listener_fields),
	    cmocka_unit_test(test_listener_list),
	    cmocka_unit_test(test_relay_lists),
	    cmocka_unit_test(test_relay_errors),
	    cmocka_unit_test(test_strings),
	    cmocka_unit_test(test_unknown_keys_and_types),
	    cmocka_unit_test(test_json_syntax),
	    cmocka_unit_test(test_err_buffer),
	    cmocka_unit_test(test_files),
	    cmocka_unit_test(test_doc_examples),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
