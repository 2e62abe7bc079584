/*
 * config — the strict JSON config loader.  See config.h for the contract.
 *
 * Three passes over one document:
 *  1. json-c parses it (its message and our line number on syntax errors);
 *  2. config_scan_*() walks the raw text again for what json-c tolerates but
 *     JSON forbids or an operator would regret: duplicate keys (json-c keeps
 *     the last one silently, so `"durability": "none"` further down would win
 *     unseen), single quotes, NaN/Infinity;
 *  3. the object tree is walked against declarative key tables (name -> kind,
 *     range, field offset, default), nginx-style, then derived values are
 *     resolved (shards 0, max_connections 0, hostname).
 * Defaults live only in the tables; config_default() is an embedded JSON
 * document run through the same loader, so there is one source of truth.
 */
#include "config/config.h"

#include "tls/tls.h" /* its bounds only: config.c makes no TLS library call */

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

/* A config with 10 000 relay domains is ~300 KiB; anything near this bound
 * is a wrong file, not a config. */
#define CONFIG_FILE_SIZE_MAX	  (4u << 20)
#define CONFIG_JSON_DEPTH_MAX	  32  /* the schema nests 4 deep (tls.certificates[].names[]) */
#define CONFIG_PATH_MAX		  256 /* a JSON path in an error message */
#define CONFIG_SHARDS_MAX	  256
#define CONFIG_RELAY_DOMAINS_MAX  100000 /* sorted, looked up by binary search */
#define CONFIG_RELAY_NETWORKS_MAX 10000	 /* scanned linearly per connection */
#define CONFIG_DNS_NAME_MAX	  253	 /* RFC 1035 2.3.4, without the root dot */
#define CONFIG_DNS_LABEL_MAX	  63
#define CONFIG_ROUTE_DOMAINS_MAX  100000 /* per route; sorted like relay.domains */
#define CONFIG_HOP_PATH_MAX	  (PATH_MAX - 1)
#define CONFIG_RETRY_INTERVAL_MAX 604800  /* one week between two tries */
#define CONFIG_MAX_AGE_MAX	  2592000 /* 30 days in the queue at most */
#define CONFIG_DNS_SERVERS_MAX	  8	  /* = DNS_SERVERS_MAX of src/dns/dns.h */
/* "[ipv6]:65535" and a ',' per server */
#define CONFIG_DNS_SERVER_TEXT_MAX (INET6_ADDRSTRLEN + 8)
/* Each shard pins recv_buffers * recv_buffer_size bytes for its lifetime;
 * 32768 x 1 MiB would be 32 GiB per shard, so the product is bounded too. */
#define CONFIG_RECV_POOL_MAX   (1ull << 30)
#define CONFIG_SOCKET_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)
#define CONFIG_FILE_PATH_MAX   (PATH_MAX - 1)
#define CONFIG_CERT_NAMES_MAX  32  /* per certificate, = TLS_CERT_NAMES_MAX */
#define CONFIG_CERT_NAME_MAX   253 /* with a leading "*.", = TLS_NAME_MAX */
#define CONFIG_CIPHERS_MAX     4096

/* tls_ctx_new() takes what the loader accepted, so the bounds must agree. */
static_assert(CONFIG_CERTS_MAX == TLS_CERTS_MAX, "certificate bound");
static_assert(CONFIG_CERT_NAMES_MAX == TLS_CERT_NAMES_MAX, "names per certificate");
static_assert(CONFIG_CERT_NAME_MAX == TLS_NAME_MAX, "name length");
/* config_ctx.listener_tls_given has one bit per listener. */
static_assert(CONFIG_LISTENERS_MAX <= 32, "listener bit mask");

/* Choice keys store the index of the matched string; these must line up. */
static_assert(CONFIG_DURABILITY_FSYNC == 0 && CONFIG_DURABILITY_NONE == 1, "durability order");
static_assert(sizeof(enum config_durability) == sizeof(uint32_t), "durability stored as u32");
static_assert(sizeof(int) == sizeof(uint32_t), "log.level stored as u32");
static_assert(sizeof(bool) == 1, "log.json stored as one byte");
static_assert(CONFIG_TLS_NONE == 0 && CONFIG_TLS_STARTTLS == 1 && CONFIG_TLS_IMPLICIT == 2,
	      "listener tls order");
static_assert(CONFIG_AUTH_NONE == 0 && CONFIG_AUTH_OPTIONAL == 1 && CONFIG_AUTH_REQUIRED == 2,
	      "listener auth order");
static_assert(CONFIG_RTLS_NONE == 0 && CONFIG_RTLS_OPPORTUNISTIC == 1 &&
		  CONFIG_RTLS_REQUIRED == 2 && CONFIG_RTLS_VERIFY == 3,
	      "route tls order");
static_assert(sizeof(enum config_tls_mode) == sizeof(uint32_t) &&
		  sizeof(enum config_auth_mode) == sizeof(uint32_t) &&
		  sizeof(enum config_route_tls) == sizeof(uint32_t),
	      "tls and auth modes stored as u32");

struct config_ctx {
	struct rmx_config *cfg;
	char *err;
	size_t err_len;
	/* bit i: listeners[i] has its own "tls"; the others take the default
	 * once tls.certificates is known (config_tls_resolve()) */
	uint32_t listener_tls_given;
};

enum config_kind {
	CONFIG_KIND_INT,     /* integer in [min, max], stored by field size */
	CONFIG_KIND_POW2,    /* as INT, and a power of two (ring and buffer-ring sizes) */
	CONFIG_KIND_CHOICE,  /* one of choices[], stores its index */
	CONFIG_KIND_STR,     /* heap string of 1..max bytes */
	CONFIG_KIND_FILE,    /* as STR, and a file readable now (access R_OK) */
	CONFIG_KIND_BOOL,    /* JSON true or false */
	CONFIG_KIND_SECTION, /* nested object described by sub[] */
	CONFIG_KIND_FN,	     /* anything else: fn() gets the section's struct */
};

typedef int config_fn(struct config_ctx *c, const char *path, struct json_object *v, void *base);

struct config_key {
	const char *name;
	enum config_kind kind;
	size_t offset; /* of the field within the section's struct */
	size_t size;   /* of that field */
	uint64_t min, max;
	uint64_t def;
	const char *def_str;
	const char *const *choices; /* NULL-terminated */
	const struct config_key *sub;
	config_fn *fn;
};

/* clang-format off */
#define FIELD(T, m) .offset = offsetof(T, m), .size = sizeof(((T *)0)->m)
#define KEY_INT(n, T, m, lo, hi, d) \
	{.name = (n), .kind = CONFIG_KIND_INT, FIELD(T, m), .min = (lo), .max = (hi), .def = (d)}
#define KEY_POW2(n, T, m, lo, hi, d) \
	{.name = (n), .kind = CONFIG_KIND_POW2, FIELD(T, m), .min = (lo), .max = (hi), .def = (d)}
#define KEY_CHOICE(n, T, m, list, d) \
	{.name = (n), .kind = CONFIG_KIND_CHOICE, FIELD(T, m), .choices = (list), .def = (d)}
#define KEY_STR(n, T, m, maxlen, d) \
	{.name = (n), .kind = CONFIG_KIND_STR, FIELD(T, m), .min = 1, .max = (maxlen), .def_str = (d)}
#define KEY_FILE(n, T, m) \
	{.name = (n), .kind = CONFIG_KIND_FILE, FIELD(T, m), .min = 1, .max = CONFIG_FILE_PATH_MAX}
#define KEY_BOOL(n, T, m, d) {.name = (n), .kind = CONFIG_KIND_BOOL, FIELD(T, m), .def = (d)}
#define KEY_SECTION(n, off, keys) \
	{.name = (n), .kind = CONFIG_KIND_SECTION, .offset = (off), .sub = (keys)}
#define KEY_FN(n, f) {.name = (n), .kind = CONFIG_KIND_FN, .fn = (f)}
/* clang-format on */

static config_fn config_hostname_parse, config_affinity_parse, config_listeners_parse;
static config_fn config_listener_name_parse, config_listener_address_parse;
static config_fn config_listener_banner_parse, config_domains_parse, config_networks_parse;
static config_fn config_routes_parse, config_route_domains_parse, config_route_to_parse;
static config_fn config_route_name_parse;
static config_fn config_retry_parse, config_dns_servers_parse, config_certs_parse;
static config_fn config_cert_names_parse, config_tls_version_parse;
static config_fn config_filters_parse, config_tables_parse, config_listener_filters_parse;

static const char *const config_durability_choices[] = {"fsync", "none", NULL};
static const char *const config_log_format_choices[] = {"kv", "json", NULL};
static const char *const config_log_level_choices[] = {"error", "warn", "info", "debug", NULL};

static const char *const config_tls_mode_choices[] = {"none", "starttls", "implicit", NULL};
static const char *const config_auth_mode_choices[] = {"none", "optional", "required", NULL};
static const char *const config_route_tls_choices[] = {"none", "opportunistic", "required",
						       "verify", NULL};

/* "tls" has no fixed default: a listener without it gets "starttls" when
 * tls.certificates is non-empty (config_tls_resolve()), so adding a
 * certificate turns STARTTLS on everywhere it was not set explicitly. */
static const struct config_key config_listener_keys[] = {
    KEY_FN("name", config_listener_name_parse),
    KEY_FN("address", config_listener_address_parse),
    KEY_FN("banner", config_listener_banner_parse),
    KEY_INT("greet_pause_ms", struct config_listener, greet_pause_ms, 0, 30000, 0),
    KEY_CHOICE("tls", struct config_listener, tls, config_tls_mode_choices, CONFIG_TLS_NONE),
    KEY_CHOICE("auth", struct config_listener, auth, config_auth_mode_choices, CONFIG_AUTH_NONE),
    KEY_BOOL("auth_plaintext", struct config_listener, auth_plaintext, false),
    KEY_BOOL("add_message_id_date", struct config_listener, add_message_id_date, true),
    KEY_BOOL("received_hide_client", struct config_listener, received_hide_client, false),
    KEY_FN("filters", config_listener_filters_parse),
    {0},
};

static const struct config_key config_cert_keys[] = {
    KEY_FILE("cert", struct config_cert, cert),
    KEY_FILE("key", struct config_cert, key),
    KEY_FN("names", config_cert_names_parse),
    {0},
};

/* min_version is an FN key (a choice kept as a string for tls_params);
 * config_tls_resolve() fills its default "1.2". */
static const struct config_key config_tls_keys[] = {
    KEY_FN("certificates", config_certs_parse),
    KEY_FN("min_version", config_tls_version_parse),
    KEY_STR("ciphers", struct config_tls, ciphers, CONFIG_CIPHERS_MAX, NULL),
    KEY_INT("handshake_timeout_s", struct config_tls, handshake_timeout_s, 1, 300, 30),
    {0},
};

static const struct config_key config_auth_keys[] = {
    KEY_FILE("users_file", struct config_auth, users_file),
    KEY_INT("failure_delay_ms", struct config_auth, failure_delay_ms, 0, 60000, 1000),
    KEY_INT("failures_max", struct config_auth, failures_max, 1, 1000, 10),
    {0},
};

/* The relay lists live directly in struct rmx_config, so this section's
 * "struct" is the config itself (offset 0). */
static const struct config_key config_relay_keys[] = {
    KEY_FN("domains", config_domains_parse),
    KEY_FN("networks", config_networks_parse),
    {0},
};

static const struct config_key config_limits_keys[] = {
    KEY_INT("message_size", struct config_limits, message_size, 1024, 1ull << 40, 10485760),
    KEY_INT("recipients", struct config_limits, recipients, 1, 100000, 100),
    KEY_INT("errors", struct config_limits, errors, 1, 1000, 10),
    KEY_INT("idle_s", struct config_limits, idle_s, 1, 86400, 300),
    KEY_INT("session_s", struct config_limits, session_s, 1, 604800, 3600),
    KEY_INT("connections", struct config_limits, connections, 1, 1000000, 10000),
    KEY_INT("connections_per_ip", struct config_limits, connections_per_ip, 1, 1000000, 50),
    KEY_INT("commands", struct config_limits, commands, 1, 10000000, 10000),
    KEY_INT("received_headers", struct config_limits, received_headers, 1, 1000, 50),
    KEY_INT("transactions", struct config_limits, transactions, 1, 1000000, 1000),
    KEY_INT("soft_errors", struct config_limits, soft_errors, 1, 1000, 3),
    KEY_INT("error_delay_ms", struct config_limits, error_delay_ms, 0, 60000, 0),
    {0},
};

static const struct config_key config_spool_keys[] = {
    KEY_STR("path", struct config_spool, path, PATH_MAX - 1, "/var/spool/ringmx"),
    KEY_CHOICE("durability", struct config_spool, durability, config_durability_choices,
	       CONFIG_DURABILITY_FSYNC),
    KEY_INT("segment_size", struct config_spool, segment_size, 1ull << 20, 16ull << 30,
	    64ull << 20),
    {0},
};

static const struct config_key config_io_keys[] = {
    KEY_POW2("ring_entries", struct config_io, ring_entries, 64, 32768, 4096),
    KEY_POW2("recv_buffers", struct config_io, recv_buffers, 16, 32768, 1024),
    KEY_INT("recv_buffer_size", struct config_io, recv_buffer_size, 4096, 1u << 20, 16384),
    /* 0: resolved to ceil(limits.connections / shards) */
    KEY_INT("max_connections", struct config_io, max_connections, 0, 1000000, 0),
    {0},
};

static const struct config_key config_control_keys[] = {
    KEY_STR("socket", struct config_control, socket, CONFIG_SOCKET_PATH_MAX,
	    "/run/ringmx/control.sock"),
    {0},
};

static const struct config_key config_log_keys[] = {
    KEY_CHOICE("format", struct config_log, json, config_log_format_choices, 0),
    KEY_CHOICE("level", struct config_log, level, config_log_level_choices, 2),
    KEY_STR("file", struct config_log, file, CONFIG_FILE_PATH_MAX, NULL),
    {0},
};

/* "tls" and "ca_file" are for smtp/lmtp/mx hops; config_route_check()
 * refuses them on a local store, where they would parse and do nothing. */
static const struct config_key config_route_keys[] = {
    KEY_FN("name", config_route_name_parse),
    KEY_FN("domains", config_route_domains_parse),
    KEY_FN("to", config_route_to_parse),
    KEY_CHOICE("tls", struct config_route, tls, config_route_tls_choices,
	       CONFIG_RTLS_OPPORTUNISTIC),
    KEY_FILE("ca_file", struct config_route, ca_file),
    {0},
};

/* retry_s has no table default (an FN key): config_resolve() fills it. */
static const struct config_key config_delivery_keys[] = {
    KEY_FN("retry_s", config_retry_parse),
    KEY_INT("max_age_s", struct config_delivery, max_age_s, 1, CONFIG_MAX_AGE_MAX, 432000),
    KEY_INT("connections_per_route", struct config_delivery, connections_per_route, 1, 10000, 20),
    KEY_INT("messages_per_connection", struct config_delivery, messages_per_connection, 1, 1000000,
	    1000),
    KEY_INT("connect_timeout_s", struct config_delivery, connect_timeout_s, 1, 3600, 30),
    KEY_INT("command_timeout_s", struct config_delivery, command_timeout_s, 1, 3600, 300),
    /* 0: off; at most max_age_s, checked in config_resolve() */
    KEY_INT("delay_notice_s", struct config_delivery, delay_notice_s, 0, CONFIG_MAX_AGE_MAX, 0),
    {0},
};

static const struct config_key config_dns_keys[] = {
    KEY_FN("servers", config_dns_servers_parse),
    KEY_INT("timeout_ms", struct config_dns, timeout_ms, 100, 60000, 2000),
    KEY_INT("tries", struct config_dns, tries, 1, 10, 2),
    {0},
};

/* What delivery.retry_s is when the key is left out: about 5 h of tries,
 * then the last interval repeats until max_age_s. */
static const uint32_t config_retry_default_s[] = {60, 300, 900, 3600, 14400};

static const struct config_key config_root_keys[] = {
    KEY_FN("hostname", config_hostname_parse),
    KEY_INT("shards", struct rmx_config, shards, 0, CONFIG_SHARDS_MAX, 0),
    KEY_FN("cpu_affinity", config_affinity_parse),
    KEY_FN("listeners", config_listeners_parse),
    KEY_SECTION("relay", 0, config_relay_keys),
    KEY_SECTION("limits", offsetof(struct rmx_config, limits), config_limits_keys),
    KEY_SECTION("spool", offsetof(struct rmx_config, spool), config_spool_keys),
    KEY_SECTION("io", offsetof(struct rmx_config, io), config_io_keys),
    KEY_SECTION("control", offsetof(struct rmx_config, control), config_control_keys),
    KEY_SECTION("log", offsetof(struct rmx_config, log), config_log_keys),
    KEY_FN("routes", config_routes_parse),
    KEY_SECTION("delivery", offsetof(struct rmx_config, delivery), config_delivery_keys),
    KEY_SECTION("dns", offsetof(struct rmx_config, dns), config_dns_keys),
    KEY_SECTION("tls", offsetof(struct rmx_config, tls), config_tls_keys),
    KEY_SECTION("auth", offsetof(struct rmx_config, auth), config_auth_keys),
    KEY_FN("filters", config_filters_parse),
    KEY_FN("tables", config_tables_parse),
    {0},
};

/* The embedded default: what `ringmx` runs with no config file.  Loopback
 * only and relative paths, so a first run needs neither root nor a mail
 * exchanger's exposure; mail is delivered into ./maildir, never relayed. */
static const char config_default_json[] =
    "{\n"
    "  \"listeners\": [{\"name\": \"mx\", \"address\": \"127.0.0.1:2525\"}],\n"
    "  \"relay\": {\"domains\": [\"localhost\"], \"networks\": [\"127.0.0.0/8\", \"::1/128\"]},\n"
    "  \"spool\": {\"path\": \"./spool\"},\n"
    "  \"control\": {\"socket\": \"./ringmx.sock\"},\n"
    "  \"routes\": [{\"domains\": [\"*\"], \"to\": \"maildir:./maildir\"}]\n"
    "}\n";

/* ---- errors and paths ---------------------------------------------------- */

/* Writes "<path>: <message>" into the caller's buffer and returns -EINVAL, so
 * a failing check is one line: `return config_fail(c, path, ...)`.  Control
 * bytes (from keys or values quoted back) become '?' to keep it one line. */
__attribute__((format(printf, 3, 4))) static int config_fail(struct config_ctx *c, const char *path,
							     const char *fmt, ...)
{
	if (c->err == NULL || c->err_len == 0)
		return -EINVAL;
	int n = snprintf(c->err, c->err_len, "%s: ", path[0] != '\0' ? path : "(root)");
	if (n >= 0 && (size_t)n < c->err_len) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(c->err + n, c->err_len - (size_t)n, fmt, ap);
		va_end(ap);
	}
	for (char *p = c->err; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	return -EINVAL;
}

static void config_path_key(char *out, const char *parent, const char *key)
{
	snprintf(out, CONFIG_PATH_MAX, parent[0] != '\0' ? "%s.%s" : "%s%s", parent, key);
}

static void config_path_index(char *out, const char *parent, size_t i)
{
	snprintf(out, CONFIG_PATH_MAX, "%s[%zu]", parent, i);
}

static size_t config_line_of(const char *text, size_t off)
{
	size_t line = 1;
	for (size_t i = 0; i < off; i++)
		line += text[i] == '\n';
	return line;
}

/* ---- small value checks -------------------------------------------------- */

static char config_ascii_lower(char ch)
{
	return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
}

/* A JSON string without embedded NULs (json-c keeps "\u0000"; C would cut the
 * value there and, say, "127.0.0.1\u0000/8" would pass as 127.0.0.1). */
static const char *config_string_get(struct json_object *v, size_t *len)
{
	if (!json_object_is_type(v, json_type_string))
		return NULL;
	const char *s = json_object_get_string(v);
	size_t n = (size_t)json_object_get_string_len(v);
	if (strlen(s) != n)
		return NULL;
	*len = n;
	return s;
}

/* A non-negative JSON integer in [min, max].  json-c clamps what does not
 * fit in 64 bits, which still lands outside every range we use. */
static int config_uint_get(struct json_object *v, uint64_t min, uint64_t max, uint64_t *out)
{
	if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0)
		return -EINVAL;
	uint64_t u = json_object_get_uint64(v);
	if (u < min || u > max)
		return -EINVAL;
	*out = u;
	return 0;
}

/* RFC 1035 host name syntax (letters, digits, inner hyphens, labels of 1..63,
 * at most 253 bytes).  A last label of digits only is refused (RFC 3696 2)
 * so that an IP address is never mistaken for a domain. */
static bool config_dns_name_valid(const char *s, size_t len)
{
	if (len == 0 || len > CONFIG_DNS_NAME_MAX)
		return false;
	size_t label = 0;
	bool digits_only = true;
	for (size_t i = 0; i <= len; i++) {
		char ch = i < len ? s[i] : '.';
		if (ch == '.') {
			if (label == 0 || label > CONFIG_DNS_LABEL_MAX || s[i - 1] == '-')
				return false;
			if (i == len)
				return !digits_only;
			label = 0;
			digits_only = true;
			continue;
		}
		bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
		bool digit = ch >= '0' && ch <= '9';
		if (!alpha && !digit && (ch != '-' || label == 0))
			return false;
		digits_only = digits_only && digit;
		label++;
	}
	return false;
}

static void config_store(void *field, size_t size, uint64_t v)
{
	switch (size) {
	case sizeof(uint64_t):
		*(uint64_t *)field = v;
		break;
	case sizeof(uint32_t):
		assert(v <= UINT32_MAX);
		*(uint32_t *)field = (uint32_t)v;
		break;
	case sizeof(bool):
		*(bool *)field = v != 0;
		break;
	default:
		abort();
	}
}

/* `"a", "b" or "c"` for choice errors. */
static void config_choices_describe(const char *const *choices, char *out, size_t out_len)
{
	size_t n = 0, used = 0;
	while (choices[n] != NULL)
		n++;
	out[0] = '\0';
	for (size_t i = 0; i < n && used < out_len; i++) {
		const char *sep = i == 0 ? "" : i + 1 == n ? " or " : ", ";
		int w = snprintf(out + used, out_len - used, "%s\"%s\"", sep, choices[i]);
		if (w < 0)
			break;
		used += (size_t)w;
	}
}

/* ---- the table walker ---------------------------------------------------- */

static int config_defaults_apply(struct config_ctx *c, const struct config_key *keys, char *base)
{
	for (const struct config_key *k = keys; k->name != NULL; k++) {
		switch (k->kind) {
		case CONFIG_KIND_INT:
		case CONFIG_KIND_POW2:
		case CONFIG_KIND_CHOICE:
		case CONFIG_KIND_BOOL:
			config_store(base + k->offset, k->size, k->def);
			break;
		case CONFIG_KIND_STR:
		case CONFIG_KIND_FILE: {
			char **field = (char **)(void *)(base + k->offset);
			assert(k->size == sizeof(char *) && *field == NULL);
			if (k->def_str != NULL && (*field = strdup(k->def_str)) == NULL)
				return config_fail(c, k->name, "out of memory");
			break;
		}
		case CONFIG_KIND_SECTION:
			if (config_defaults_apply(c, k->sub, base + k->offset) < 0)
				return -EINVAL;
			break;
		case CONFIG_KIND_FN:
			break; /* their defaults are zero, or resolved in config_resolve() */
		}
	}
	return 0;
}

static int config_section_parse(struct config_ctx *c, const char *path, struct json_object *obj,
				const struct config_key *keys, char *base);

static int config_choice_parse(struct config_ctx *c, const char *path, const struct config_key *k,
			       struct json_object *v, char *base)
{
	size_t len;
	const char *s = config_string_get(v, &len);
	for (size_t i = 0; s != NULL && k->choices[i] != NULL; i++) {
		if (strcmp(s, k->choices[i]) == 0) {
			config_store(base + k->offset, k->size, i);
			return 0;
		}
	}
	char list[128];
	config_choices_describe(k->choices, list, sizeof(list));
	return config_fail(c, path, "expected %s", list);
}

static int config_str_parse(struct config_ctx *c, const char *path, const struct config_key *k,
			    struct json_object *v, char *base)
{
	size_t len;
	const char *s = config_string_get(v, &len);
	if (s == NULL || len < k->min || len > k->max)
		return config_fail(c, path, "expected a non-empty string of at most %llu bytes",
				   (unsigned long long)k->max);
	char **field = (char **)(void *)(base + k->offset);
	char *copy = strdup(s);
	if (copy == NULL)
		return config_fail(c, path, "out of memory");
	free(*field);
	*field = copy;
	return 0;
}

/* A path the running server will open: readable now, or the load fails
 * naming the key and the file ("tls.certificates[0].key: /etc/k.pem: No such
 * file or directory"), not at the first TLS handshake or AUTH. */
static int config_file_parse(struct config_ctx *c, const char *path, const struct config_key *k,
			     struct json_object *v, char *base)
{
	if (config_str_parse(c, path, k, v, base) < 0)
		return -EINVAL;
	const char *file = *(char **)(void *)(base + k->offset);
	if (access(file, R_OK) != 0)
		return config_fail(c, path, "%s: %s", file, strerror(errno));
	return 0;
}

static int config_key_parse(struct config_ctx *c, const char *path, const struct config_key *k,
			    struct json_object *v, char *base)
{
	uint64_t u;
	switch (k->kind) {
	case CONFIG_KIND_INT:
		if (config_uint_get(v, k->min, k->max, &u) < 0)
			return config_fail(c, path, "expected an integer in %llu..%llu",
					   (unsigned long long)k->min, (unsigned long long)k->max);
		config_store(base + k->offset, k->size, u);
		return 0;
	case CONFIG_KIND_POW2:
		if (config_uint_get(v, k->min, k->max, &u) < 0 || (u & (u - 1)) != 0)
			return config_fail(c, path, "expected a power of 2 in %llu..%llu",
					   (unsigned long long)k->min, (unsigned long long)k->max);
		config_store(base + k->offset, k->size, u);
		return 0;
	case CONFIG_KIND_CHOICE:
		return config_choice_parse(c, path, k, v, base);
	case CONFIG_KIND_STR:
		return config_str_parse(c, path, k, v, base);
	case CONFIG_KIND_FILE:
		return config_file_parse(c, path, k, v, base);
	case CONFIG_KIND_BOOL:
		if (!json_object_is_type(v, json_type_boolean))
			return config_fail(c, path, "expected true or false");
		config_store(base + k->offset, k->size, json_object_get_boolean(v) ? 1 : 0);
		return 0;
	case CONFIG_KIND_SECTION:
		return config_section_parse(c, path, v, k->sub, base + k->offset);
	case CONFIG_KIND_FN:
		return k->fn(c, path, v, base);
	}
	abort();
}

/* Every key of obj must be in keys: a typo ("recipents") is an error, never
 * a silently ignored setting.  json-c iterates in document order, so the
 * first bad key in the file is the one reported. */
static int config_section_parse(struct config_ctx *c, const char *path, struct json_object *obj,
				const struct config_key *keys, char *base)
{
	if (!json_object_is_type(obj, json_type_object))
		return config_fail(c, path, "expected a JSON object");
	json_object_object_foreach(obj, name, v)
	{
		char sub[CONFIG_PATH_MAX];
		config_path_key(sub, path, name);
		const struct config_key *k = keys;
		while (k->name != NULL && strcmp(k->name, name) != 0)
			k++;
		if (k->name == NULL)
			return config_fail(c, sub, "unknown key");
		if (config_key_parse(c, sub, k, v, base) < 0)
			return -EINVAL;
	}
	return 0;
}

/* ---- custom keys --------------------------------------------------------- */

/* The filter chains and tables are kept as JSON for filters/ to compile
 * (the compiler names the JSON paths of its errors itself). */
static int config_json_keep(struct config_ctx *c, const char *path, struct json_object *v,
			    struct json_object **slot)
{
	if (!json_object_is_type(v, json_type_object))
		return config_fail(c, path, "expected a JSON object");
	json_object_put(*slot); /* a repeated key: the last one counts */
	*slot = json_object_get(v);
	return 0;
}

static int config_filters_parse(struct config_ctx *c, const char *path, struct json_object *v,
				void *base)
{
	return config_json_keep(c, path, v, &((struct rmx_config *)base)->filters_json);
}

static int config_tables_parse(struct config_ctx *c, const char *path, struct json_object *v,
			       void *base)
{
	return config_json_keep(c, path, v, &((struct rmx_config *)base)->tables_json);
}

static int config_listener_filters_parse(struct config_ctx *c, const char *path,
					 struct json_object *v, void *base)
{
	return config_json_keep(c, path, v, &((struct config_listener *)base)->filters_json);
}

static int config_hostname_parse(struct config_ctx *c, const char *path, struct json_object *v,
				 void *base)
{
	struct rmx_config *cfg = base;
	size_t len;
	const char *s = config_string_get(v, &len);
	if (s == NULL || !config_dns_name_valid(s, len))
		return config_fail(c, path, "expected a host name like \"mx.example.org\"");
	static_assert(CONFIG_DNS_NAME_MAX < sizeof(cfg->hostname), "hostname fits");
	memcpy(cfg->hostname, s, len + 1);
	return 0;
}

/* Length is checked against the resolved shard count in config_resolve(),
 * since "shards" may come after "cpu_affinity" in the file. */
static int config_affinity_parse(struct config_ctx *c, const char *path, struct json_object *v,
				 void *base)
{
	struct rmx_config *cfg = base;
	size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;
	if (n == 0 || n > CONFIG_SHARDS_MAX)
		return config_fail(c, path, "expected an array of 1..%d CPU numbers",
				   CONFIG_SHARDS_MAX);
	cfg->cpu_affinity = calloc(n, sizeof(*cfg->cpu_affinity));
	if (cfg->cpu_affinity == NULL)
		return config_fail(c, path, "out of memory");
	for (size_t i = 0; i < n; i++) {
		uint64_t cpu;
		if (config_uint_get(json_object_array_get_idx(v, i), 0, CPU_SETSIZE - 1, &cpu) <
		    0) {
			char sub[CONFIG_PATH_MAX];
			config_path_index(sub, path, i);
			return config_fail(c, sub, "expected an integer in 0..%d", CPU_SETSIZE - 1);
		}
		cfg->cpu_affinity[i] = (int)cpu;
	}
	cfg->cpu_affinity_count = (uint32_t)n;
	return 0;
}

/* Names appear in logs and metrics labels, hence the conservative charset. */
static int config_listener_name_parse(struct config_ctx *c, const char *path, struct json_object *v,
				      void *base)
{
	struct config_listener *l = base;
	size_t len;
	const char *s = config_string_get(v, &len);
	bool ok = s != NULL && len >= 1 && len < CONFIG_NAME_MAX;
	for (size_t i = 0; ok && i < len; i++) {
		char ch = s[i];
		ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		     (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
	}
	if (!ok)
		return config_fail(c, path, "expected 1..%d characters of [A-Za-z0-9_-]",
				   CONFIG_NAME_MAX - 1);
	memcpy(l->name, s, len + 1);
	return 0;
}

static int config_listener_address_parse(struct config_ctx *c, const char *path,
					 struct json_object *v, void *base)
{
	struct config_listener *l = base;
	size_t len;
	const char *s = config_string_get(v, &len);
	if (s == NULL || config_parse_hostport(s, &l->addr, &l->addr_len) < 0)
		return config_fail(c, path, "expected \"host:port\"");
	return 0;
}

/* The banner goes out verbatim after "220 ": printable ASCII only, so a CR
 * or LF cannot inject a second reply line. */
static int config_listener_banner_parse(struct config_ctx *c, const char *path,
					struct json_object *v, void *base)
{
	struct config_listener *l = base;
	size_t len;
	const char *s = config_string_get(v, &len);
	bool ok = s != NULL && len < CONFIG_BANNER_MAX;
	for (size_t i = 0; ok && i < len; i++)
		ok = s[i] >= 0x20 && s[i] < 0x7f;
	if (!ok)
		return config_fail(c, path, "expected at most %d printable ASCII characters",
				   CONFIG_BANNER_MAX - 1);
	memcpy(l->banner, s, len + 1);
	return 0;
}

bool config_addr_overlap(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && (x->sin_addr.s_addr == y->sin_addr.s_addr ||
						      x->sin_addr.s_addr == htonl(INADDR_ANY) ||
						      y->sin_addr.s_addr == htonl(INADDR_ANY));
	}
	const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
	return x->sin6_port == y->sin6_port &&
	       (IN6_ARE_ADDR_EQUAL(&x->sin6_addr, &y->sin6_addr) ||
		IN6_IS_ADDR_UNSPECIFIED(&x->sin6_addr) || IN6_IS_ADDR_UNSPECIFIED(&y->sin6_addr));
}

/* Two listeners on one address would both bind (SO_REUSEPORT) and silently
 * split its connections, so addresses must not overlap (a wildcard with a
 * specific address on the same port included) and names must be unique. */
static int config_listener_unique(struct config_ctx *c, const char *path, uint32_t i)
{
	const struct config_listener *ls = c->cfg->listeners;
	for (uint32_t j = 0; j < i; j++) {
		char sub[CONFIG_PATH_MAX];
		if (strcmp(ls[j].name, ls[i].name) == 0) {
			config_path_key(sub, path, "name");
			return config_fail(
			    c, sub, "expected a unique name, \"%s\" is already listeners[%u]",
			    ls[i].name, j);
		}
		if (config_addr_overlap(&ls[j].addr, &ls[i].addr)) {
			config_path_key(sub, path, "address");
			return config_fail(c, sub,
					   "expected an address no other listener takes, "
					   "listeners[%u] (\"%s\") overlaps it",
					   j, ls[j].name);
		}
	}
	return 0;
}

/* 127.0.0.0/8, ::1, or 127.x written as ::ffff:127.x: traffic that never
 * leaves the host. */
static bool config_addr_is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
	}
	assert(ss->ss_family == AF_INET6);
	const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
	return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

/* Checks of one listener that need several of its keys (any key order).
 * AUTH before TLS sends the password in clear (RFC 4954 4 and 14), so it is
 * allowed only where no one can listen: a loopback address, for tests. */
static int config_listener_check(struct config_ctx *c, const char *path, struct json_object *obj,
				 uint32_t i)
{
	const struct config_listener *l = &c->cfg->listeners[i];
	char key[CONFIG_PATH_MAX];
	if (l->name[0] == '\0' || l->addr_len == 0) {
		config_path_key(key, path, l->name[0] == '\0' ? "name" : "address");
		return config_fail(c, key, "required key missing");
	}
	if (json_object_object_get_ex(obj, "tls", NULL))
		c->listener_tls_given |= 1u << i;
	if (l->auth_plaintext && !config_addr_is_loopback(&l->addr)) {
		config_path_key(key, path, "auth_plaintext");
		return config_fail(c, key, "allowed only on a loopback address");
	}
	return config_listener_unique(c, path, i);
}

static int config_listeners_parse(struct config_ctx *c, const char *path, struct json_object *v,
				  void *base)
{
	struct rmx_config *cfg = base;
	size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;
	if (n == 0 || n > CONFIG_LISTENERS_MAX)
		return config_fail(c, path, "expected an array of 1..%d listeners",
				   CONFIG_LISTENERS_MAX);
	for (uint32_t i = 0; i < n; i++) {
		struct config_listener *l = &cfg->listeners[i];
		struct json_object *obj = json_object_array_get_idx(v, i);
		char sub[CONFIG_PATH_MAX];
		config_path_index(sub, path, i);
		if (config_defaults_apply(c, config_listener_keys, (char *)l) < 0 ||
		    config_section_parse(c, sub, obj, config_listener_keys, (char *)l) < 0 ||
		    config_listener_check(c, sub, obj, i) < 0)
			return -EINVAL;
		cfg->listener_count = i + 1;
	}
	return 0;
}

/* ---- arrays of strings --------------------------------------------------- */

/* How one array of strings becomes an array of parsed entries. */
struct config_list {
	size_t max;	      /* entries at most */
	size_t elem_size;     /* bytes of one parsed entry */
	const char *what;     /* "domains", for the array's error */
	const char *expected; /* what one entry should look like */
	const char *range;    /* printf format for -ERANGE with the entry, or NULL */
	int (*parse)(const char *s, size_t len, void *entry); /* 0 or -errno */
};

/* A JSON array of strings -> a calloc'd array of entries.  *count follows
 * the entries parsed so far, so config_free releases exactly what exists
 * even when a later entry fails; errors name the entry's JSON path. */
static int config_list_parse(struct config_ctx *c, const char *path, struct json_object *v,
			     const struct config_list *spec, void **out, uint32_t *count)
{
	size_t n;
	char *entries;

	if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) > spec->max)
		return config_fail(c, path, "expected an array of at most %zu %s", spec->max,
				   spec->what);
	n = json_object_array_length(v);
	entries = calloc(n > 0 ? n : 1, spec->elem_size);
	*out = entries;
	if (entries == NULL)
		return config_fail(c, path, "out of memory");
	for (size_t i = 0; i < n; i++) {
		char sub[CONFIG_PATH_MAX];
		size_t len;
		const char *s = config_string_get(json_object_array_get_idx(v, i), &len);
		int rc = s != NULL ? spec->parse(s, len, entries + i * spec->elem_size) : -EINVAL;

		config_path_index(sub, path, i);
		if (rc == -ENOMEM)
			return config_fail(c, sub, "out of memory");
		if (rc == -ERANGE && spec->range)
			return config_fail(c, sub, spec->range, s);
		if (rc < 0)
			return config_fail(c, sub, "%s", spec->expected);
		*count = (uint32_t)i + 1;
	}
	return 0;
}

/* ---- relay domains ------------------------------------------------------- */

/* Orders entries by (wildcard, name) so config_domain_find() can bisect. */
static int config_domain_order(const void *a, const void *b)
{
	const struct config_domain *x = a, *y = b;
	if (x->wildcard != y->wildcard)
		return (int)x->wildcard - (int)y->wildcard;
	return strcmp(x->name, y->name);
}

/* "a.example", "A.Example." or "*.a.example" -> lower-case entry without the
 * trailing dot, so lookups compare bytes. */
static int config_domain_entry(const char *s, size_t len, void *entry)
{
	struct config_domain *d = entry;
	bool wildcard = len > 2 && s[0] == '*' && s[1] == '.';
	if (wildcard) {
		s += 2;
		len -= 2;
	}
	if (len > 1 && s[len - 1] == '.')
		len--;
	if (!config_dns_name_valid(s, len))
		return -EINVAL;
	d->name = strndup(s, len);
	if (d->name == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < len; i++)
		d->name[i] = config_ascii_lower(d->name[i]);
	d->wildcard = wildcard;
	return 0;
}

static int config_domains_parse(struct config_ctx *c, const char *path, struct json_object *v,
				void *base)
{
	static const struct config_list spec = {
	    .max = CONFIG_RELAY_DOMAINS_MAX,
	    .elem_size = sizeof(struct config_domain),
	    .what = "domains",
	    .expected = "expected a domain like \"example.org\" or \"*.example.org\"",
	    .parse = config_domain_entry,
	};
	struct rmx_config *cfg = base;
	int rc = config_list_parse(c, path, v, &spec, (void **)&cfg->relay_domains,
				   &cfg->relay_domain_count);

	if (rc == 0)
		qsort(cfg->relay_domains, cfg->relay_domain_count, sizeof(*cfg->relay_domains),
		      config_domain_order);
	return rc;
}

/* ---- relay networks ------------------------------------------------------ */

/* Prefix length: decimal, no sign, no leading zero, at most max_bits. */
static int config_prefix_parse(const char *s, unsigned max_bits, unsigned *out)
{
	size_t n = strlen(s);
	if (n == 0 || n > 3 || (s[0] == '0' && n > 1))
		return -EINVAL;
	unsigned v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v > max_bits)
		return -EINVAL;
	*out = v;
	return 0;
}

static bool config_prefix_match(const uint8_t *a, const uint8_t *net, unsigned prefix)
{
	unsigned full = prefix / 8, rem = prefix % 8;
	if (memcmp(a, net, full) != 0)
		return false;
	if (rem == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rem));
	return (a[full] & mask) == net[full];
}

static bool config_v4mapped(const uint8_t *a)
{
	static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	return memcmp(a, prefix, sizeof(prefix)) == 0;
}

/* Returns 0, -EINVAL (not a network) or -ERANGE (host bits set: the operator
 * wrote an address where a network was meant, and "192.0.2.1/24" could mean
 * either /24 or /32 — refusing is safer than guessing). */
static int config_cidr_parse(const char *s, size_t len, void *entry)
{
	struct config_cidr *net = entry;
	char host[INET6_ADDRSTRLEN];
	const char *slash = memchr(s, '/', len);
	size_t hlen = slash != NULL ? (size_t)(slash - s) : len;
	unsigned bits, prefix;
	if (hlen == 0 || hlen >= sizeof(host))
		return -EINVAL;
	memcpy(host, s, hlen);
	host[hlen] = '\0';
	memset(net, 0, sizeof(*net));
	if (inet_pton(AF_INET, host, net->addr) == 1) {
		net->family = AF_INET;
		bits = 32;
	} else if (inet_pton(AF_INET6, host, net->addr) == 1) {
		net->family = AF_INET6;
		bits = 128;
	} else {
		return -EINVAL;
	}
	prefix = bits;
	if (slash != NULL && config_prefix_parse(slash + 1, bits, &prefix) < 0)
		return -EINVAL;
	for (unsigned bit = prefix; bit < bits; bit++)
		if (net->addr[bit / 8] & (0x80 >> (bit % 8)))
			return -ERANGE;
	net->prefix_len = (uint8_t)prefix;
	/* "::ffff:192.0.2.0/120" is an IPv4 network: store it as one, so it
	 * also matches clients that arrive on an AF_INET socket. */
	if (net->family == AF_INET6 && prefix >= 96 && config_v4mapped(net->addr)) {
		memmove(net->addr, net->addr + 12, 4);
		memset(net->addr + 4, 0, 12);
		net->family = AF_INET;
		net->prefix_len = (uint8_t)(prefix - 96);
	}
	return 0;
}

int config_cidr_from_string(const char *s, size_t len, struct config_cidr *out)
{
	return config_cidr_parse(s, len, out);
}

static int config_networks_parse(struct config_ctx *c, const char *path, struct json_object *v,
				 void *base)
{
	static const struct config_list spec = {
	    .max = CONFIG_RELAY_NETWORKS_MAX,
	    .elem_size = sizeof(struct config_cidr),
	    .what = "networks",
	    .expected = "expected a network like \"192.0.2.0/24\", \"2001:db8::/32\" or an "
			"address",
	    .range = "host bits set in %s",
	    .parse = config_cidr_parse,
	};
	struct rmx_config *cfg = base;

	return config_list_parse(c, path, v, &spec, (void **)&cfg->relay_networks,
				 &cfg->relay_network_count);
}

/* ---- routes -------------------------------------------------------------- */

/* A route domain: as relay.domains, or "*" (every domain), which comes back
 * as an entry without a name for config_route_domains_parse() to take out. */
static int config_route_domain_entry(const char *s, size_t len, void *entry)
{
	struct config_domain *d = entry;
	if (len == 1 && s[0] == '*') {
		d->name = NULL;
		d->wildcard = true;
		return 0;
	}
	return config_domain_entry(s, len, entry);
}

/* A route's name: what a filter's route action names (unique). */
static int config_route_name_parse(struct config_ctx *c, const char *path, struct json_object *v,
				   void *base)
{
	struct config_route *r = base;
	size_t len;
	const char *s = config_string_get(v, &len);

	if (s == NULL || len == 0 || len >= sizeof(r->name) ||
	    strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != len)
		return config_fail(c, path, "expected a name of 1 to %d letters, digits, _ . -",
				   (int)sizeof(r->name) - 1);
	for (uint32_t i = 0; i + 1 < c->cfg->route_count; i++)
		if (strcmp(c->cfg->routes[i].name, s) == 0)
			return config_fail(c, path, "routes[%u] has this name already", i);
	memcpy(r->name, s, len + 1);
	return 0;
}

static int config_route_domains_parse(struct config_ctx *c, const char *path, struct json_object *v,
				      void *base)
{
	static const struct config_list spec = {
	    .max = CONFIG_ROUTE_DOMAINS_MAX,
	    .elem_size = sizeof(struct config_domain),
	    .what = "domains",
	    .expected = "expected a domain like \"example.org\", \"*.example.org\" or \"*\"",
	    .parse = config_route_domain_entry,
	};
	struct config_route *r = base;
	assert(r->domains == NULL && r->domain_count == 0);
	/* A route for no domain could never be taken: surely a mistake. */
	if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) == 0 ||
	    json_object_array_length(v) > spec.max)
		return config_fail(c, path, "expected an array of 1..%zu domains", spec.max);
	if (config_list_parse(c, path, v, &spec, (void **)&r->domains, &r->domain_count) < 0)
		return -EINVAL;
	uint32_t kept = 0;
	for (uint32_t i = 0; i < r->domain_count; i++) {
		if (r->domains[i].name == NULL)
			r->catch_all = true;
		else
			r->domains[kept++] = r->domains[i];
	}
	r->domain_count = kept;
	qsort(r->domains, r->domain_count, sizeof(*r->domains), config_domain_order);
	assert(r->domain_count > 0 || r->catch_all);
	return 0;
}

/* "IP:port" / "[IPv6]:port" that can be connected to: "*:25" and the
 * unspecified addresses mean "any" for a listener, but as a destination
 * Linux quietly connects them to the local host. */
static int config_hostport_remote(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	if (config_parse_hostport(s, ss, len) < 0)
		return -EINVAL;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		return sin->sin_addr.s_addr == htonl(INADDR_ANY) ? -EINVAL : 0;
	}
	assert(ss->ss_family == AF_INET6);
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
	return IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr) ? -EINVAL : 0;
}

/* After "smtp://": a host name where an IP belongs gets its own message,
 * since "smtp://mail.example:25" is the likeliest mistake of all. */
static bool config_hostport_is_name(const char *s)
{
	const char *colon = strrchr(s, ':');
	size_t len = colon != NULL ? (size_t)(colon - s) : strlen(s);
	if (len > 1 && s[len - 1] == '.')
		len--;
	return config_dns_name_valid(s, len);
}

static int config_hop_net_parse(struct config_ctx *c, const char *path, const char *scheme,
				const char *rest, struct config_hop *h)
{
	if (config_hostport_remote(rest, &h->addr, &h->addr_len) == 0)
		return 0;
	if (config_hostport_is_name(rest))
		return config_fail(c, path,
				   "host names are not resolved: expected \"%s://IP:port\" "
				   "(\"%s://192.0.2.1:25\", \"%s://[2001:db8::1]:25\") or \"mx\"",
				   scheme, scheme, scheme);
	return config_fail(c, path,
			   "expected \"%s://IP:port\" with an IPv4 address or [IPv6 address] "
			   "and a port 1..65535",
			   scheme);
}

static int config_hop_path_parse(struct config_ctx *c, const char *path, const char *scheme,
				 const char *rest, size_t rest_len, struct config_hop *h)
{
	if (rest_len == 0 || rest_len > CONFIG_HOP_PATH_MAX)
		return config_fail(c, path, "expected \"%s:/path\" with a path of 1..%d bytes",
				   scheme, CONFIG_HOP_PATH_MAX);
	assert(h->path == NULL);
	h->path = strndup(rest, rest_len);
	if (h->path == NULL)
		return config_fail(c, path, "out of memory");
	return 0;
}

/* One destination string -> *h.  alone: it is the only entry of "to". */
static int config_hop_parse(struct config_ctx *c, const char *path, struct json_object *v,
			    bool alone, struct config_hop *h)
{
	static const struct {
		const char *prefix;
		enum config_hop_kind kind;
	} schemes[] = {{"smtp://", CONFIG_HOP_SMTP},
		       {"lmtp://", CONFIG_HOP_LMTP},
		       {"maildir:", CONFIG_HOP_MAILDIR},
		       {"mbox:", CONFIG_HOP_MBOX}};
	size_t len, i = 0;
	const char *s = config_string_get(v, &len);
	if (s != NULL && strcmp(s, "mx") == 0) {
		h->kind = CONFIG_HOP_MX;
	} else {
		while (s != NULL && i < sizeof(schemes) / sizeof(schemes[0]) &&
		       strncmp(s, schemes[i].prefix, strlen(schemes[i].prefix)) != 0)
			i++;
		if (s == NULL || i == sizeof(schemes) / sizeof(schemes[0]))
			return config_fail(
			    c, path,
			    "expected \"smtp://IP:port\", \"lmtp://IP:port\", \"mx\", "
			    "\"maildir:/path\" or \"mbox:/path\"");
		h->kind = schemes[i].kind;
	}
	/* Failover moves to the next server of the same kind; "mx" has its own
	 * list (the MX hosts) and a local store has no "next". */
	if (!alone && h->kind != CONFIG_HOP_SMTP && h->kind != CONFIG_HOP_LMTP)
		return config_fail(c, path,
				   "\"mx\", \"maildir:\" and \"mbox:\" must be the only entry of "
				   "\"to\"; a list of several is smtp:// and lmtp:// failover");
	snprintf(h->text, sizeof(h->text), "%s", s);
	if (h->kind == CONFIG_HOP_MX)
		return 0;
	size_t plen = strlen(schemes[i].prefix);
	char scheme[8];
	snprintf(scheme, sizeof(scheme), "%.*s", (int)strcspn(schemes[i].prefix, ":"),
		 schemes[i].prefix);
	if (h->kind == CONFIG_HOP_SMTP || h->kind == CONFIG_HOP_LMTP)
		return config_hop_net_parse(c, path, scheme, s + plen, h);
	return config_hop_path_parse(c, path, scheme, s + plen, len - plen, h);
}

/* "to": one destination string, or an array of 1..CONFIG_HOPS_MAX of them
 * tried in order.  hop_count counts only complete hops; config_free()
 * releases the path of every hop slot, so a failure half-way leaks nothing. */
static int config_route_to_parse(struct config_ctx *c, const char *path, struct json_object *v,
				 void *base)
{
	struct config_route *r = base;
	assert(r->hop_count == 0);
	if (json_object_is_type(v, json_type_string)) {
		if (config_hop_parse(c, path, v, true, &r->hops[0]) < 0)
			return -EINVAL;
		r->hop_count = 1;
		return 0;
	}
	size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;
	if (n == 0 || n > CONFIG_HOPS_MAX)
		return config_fail(c, path, "expected a destination string or an array of 1..%d",
				   CONFIG_HOPS_MAX);
	for (size_t i = 0; i < n; i++) {
		char sub[CONFIG_PATH_MAX];
		config_path_index(sub, path, i);
		if (config_hop_parse(c, sub, json_object_array_get_idx(v, i), n == 1, &r->hops[i]) <
		    0)
			return -EINVAL;
		r->hop_count = (uint32_t)i + 1;
	}
	assert(r->hop_count >= 1 && r->hop_count <= CONFIG_HOPS_MAX);
	return 0;
}

/* A route's TLS keys against its destination, once all its keys are read.
 * A local store has no TLS: a "tls" written there is refused, left out it
 * becomes "none", so only network routes ever carry a policy.  A ca_file
 * that no handshake would use is refused too: it would parse and do
 * nothing, and its owner would believe the route verified. */
static int config_route_check(struct config_ctx *c, const char *path, struct json_object *obj,
			      struct config_route *r)
{
	char key[CONFIG_PATH_MAX];
	assert(r->hop_count >= 1);
	bool local = r->hops[0].kind == CONFIG_HOP_MAILDIR || r->hops[0].kind == CONFIG_HOP_MBOX;
	if (local && r->tls != CONFIG_RTLS_NONE && json_object_object_get_ex(obj, "tls", NULL)) {
		config_path_key(key, path, "tls");
		return config_fail(c, key,
				   "expected \"none\": a maildir: or mbox: route has no TLS");
	}
	if (local)
		r->tls = CONFIG_RTLS_NONE;
	if (r->ca_file != NULL && r->tls == CONFIG_RTLS_NONE) {
		config_path_key(key, path, "ca_file");
		return config_fail(c, key,
				   local ? "not used by a maildir: or mbox: route"
					 : "not used with tls \"none\"");
	}
	return 0;
}

/* route_count counts the route being parsed too, so config_free() releases
 * what a failing route had already allocated (the slots are zeroed). */
static int config_routes_parse(struct config_ctx *c, const char *path, struct json_object *v,
			       void *base)
{
	struct rmx_config *cfg = base;
	assert(cfg->routes == NULL && cfg->route_count == 0);
	if (!json_object_is_type(v, json_type_array) ||
	    json_object_array_length(v) > CONFIG_ROUTES_MAX)
		return config_fail(c, path, "expected an array of at most %d routes",
				   CONFIG_ROUTES_MAX);
	size_t n = json_object_array_length(v);
	cfg->routes = calloc(n > 0 ? n : 1, sizeof(*cfg->routes));
	if (cfg->routes == NULL)
		return config_fail(c, path, "out of memory");
	for (uint32_t i = 0; i < n; i++) {
		struct config_route *r = &cfg->routes[i];
		struct json_object *obj = json_object_array_get_idx(v, i);
		char sub[CONFIG_PATH_MAX], key[CONFIG_PATH_MAX];
		cfg->route_count = i + 1;
		config_path_index(sub, path, i);
		if (config_defaults_apply(c, config_route_keys, (char *)r) < 0 ||
		    config_section_parse(c, sub, obj, config_route_keys, (char *)r) < 0)
			return -EINVAL;
		/* A named route may have no domains: only filters send to it. */
		bool no_domains = r->domain_count == 0 && !r->catch_all && !r->name[0];
		if (no_domains || r->hop_count == 0) {
			config_path_key(key, sub, no_domains ? "domains" : "to");
			return config_fail(c, key, "required key missing");
		}
		if (config_route_check(c, sub, obj, r) < 0)
			return -EINVAL;
	}
	return 0;
}

static void config_route_free(struct config_route *r)
{
	for (uint32_t i = 0; i < r->domain_count; i++)
		free(r->domains[i].name);
	free(r->domains);
	for (uint32_t i = 0; i < CONFIG_HOPS_MAX; i++)
		free(r->hops[i].path);
	free(r->ca_file);
}

/* ---- tls and auth -------------------------------------------------------- */

/* "mx.example.net" or "*.example.net" (one leftmost wildcard label, RFC
 * 6125 6.4.3), stored lower-case as tls_ctx_new() matches SNI.  No trailing
 * dot: a certificate's names are written without one. */
static int config_cert_name_entry(const char *s, size_t len, void *entry)
{
	char **name = entry;
	size_t skip = len > 2 && s[0] == '*' && s[1] == '.' ? 2 : 0;
	if (len > CONFIG_CERT_NAME_MAX || !config_dns_name_valid(s + skip, len - skip))
		return -EINVAL;
	*name = strndup(s, len);
	if (*name == NULL)
		return -ENOMEM;
	for (size_t i = 0; i < len; i++)
		(*name)[i] = config_ascii_lower((*name)[i]);
	return 0;
}

static int config_cert_names_parse(struct config_ctx *c, const char *path, struct json_object *v,
				   void *base)
{
	static const struct config_list spec = {
	    .max = CONFIG_CERT_NAMES_MAX,
	    .elem_size = sizeof(char *),
	    .what = "names",
	    .expected = "expected a host name like \"mx.example.net\" or \"*.example.net\"",
	    .parse = config_cert_name_entry,
	};
	struct config_cert *cert = base;
	assert(cert->names == NULL && cert->name_count == 0);
	if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) == 0 ||
	    json_object_array_length(v) > spec.max)
		return config_fail(c, path, "expected an array of 1..%zu host names", spec.max);
	return config_list_parse(c, path, v, &spec, (void **)&cert->names, &cert->name_count);
}

/* A name in two certificates (or twice in one) leaves SNI to pick one of
 * them by file order; tls_ctx_new() refuses it too, this says so at load. */
static int config_cert_names_unique(struct config_ctx *c, const char *path,
				    const struct config_tls *t, uint32_t i)
{
	const struct config_cert *cert = &t->certs[i];
	for (uint32_t j = 0; j < cert->name_count; j++) {
		for (uint32_t k = 0; k <= i; k++) {
			uint32_t m_end = k == i ? j : t->certs[k].name_count;
			for (uint32_t m = 0; m < m_end; m++) {
				if (strcmp(t->certs[k].names[m], cert->names[j]) != 0)
					continue;
				char sub[CONFIG_PATH_MAX + 32]; /* path and ".names[j]" */
				snprintf(sub, sizeof(sub), "%s.names[%u]", path, j);
				return config_fail(c, sub,
						   "expected a unique name, \"%s\" is already in "
						   "tls.certificates[%u]",
						   cert->names[j], k);
			}
		}
	}
	return 0;
}

/* cert_count counts the entry being parsed too, so config_free() releases
 * what a failing entry had already allocated (the slots are zeroed). */
static int config_certs_parse(struct config_ctx *c, const char *path, struct json_object *v,
			      void *base)
{
	struct config_tls *t = base;
	assert(t->cert_count == 0);
	if (!json_object_is_type(v, json_type_array) ||
	    json_object_array_length(v) > CONFIG_CERTS_MAX)
		return config_fail(c, path, "expected an array of at most %d certificates",
				   CONFIG_CERTS_MAX);
	size_t n = json_object_array_length(v);
	for (uint32_t i = 0; i < n; i++) {
		struct config_cert *cert = &t->certs[i];
		char sub[CONFIG_PATH_MAX], key[CONFIG_PATH_MAX];
		t->cert_count = i + 1;
		config_path_index(sub, path, i);
		if (config_defaults_apply(c, config_cert_keys, (char *)cert) < 0 ||
		    config_section_parse(c, sub, json_object_array_get_idx(v, i), config_cert_keys,
					 (char *)cert) < 0)
			return -EINVAL;
		const char *missing = cert->cert == NULL      ? "cert"
				      : cert->key == NULL     ? "key"
				      : cert->name_count == 0 ? "names"
							      : NULL;
		if (missing != NULL) {
			config_path_key(key, sub, missing);
			return config_fail(c, key, "required key missing");
		}
		if (config_cert_names_unique(c, sub, t, i) < 0)
			return -EINVAL;
	}
	return 0;
}

static int config_tls_version_parse(struct config_ctx *c, const char *path, struct json_object *v,
				    void *base)
{
	struct config_tls *t = base;
	size_t len;
	const char *s = config_string_get(v, &len);
	/* TLS 1.0 and 1.1 are deprecated (RFC 8996): there is no way back. */
	if (s == NULL || (strcmp(s, "1.2") != 0 && strcmp(s, "1.3") != 0))
		return config_fail(c, path, "expected \"1.2\" or \"1.3\"");
	char *copy = strdup(s);
	if (copy == NULL)
		return config_fail(c, path, "out of memory");
	free(t->min_version);
	t->min_version = copy;
	return 0;
}

/* Listener TLS and AUTH against the tls and auth sections, which may come
 * anywhere in the file.  A listener without "tls" offers STARTTLS as soon
 * as there is a certificate; one that asks for TLS or AUTH without what it
 * needs is refused at load, not found out by its first client. */
static int config_tls_resolve(struct config_ctx *c)
{
	struct rmx_config *cfg = c->cfg;
	if (cfg->tls.min_version == NULL && (cfg->tls.min_version = strdup("1.2")) == NULL)
		return config_fail(c, "tls.min_version", "out of memory");
	for (uint32_t i = 0; i < cfg->listener_count; i++) {
		struct config_listener *l = &cfg->listeners[i];
		char path[CONFIG_PATH_MAX], key[CONFIG_PATH_MAX];
		config_path_index(path, "listeners", i);
		if ((c->listener_tls_given & (1u << i)) == 0)
			l->tls = cfg->tls.cert_count > 0 ? CONFIG_TLS_STARTTLS : CONFIG_TLS_NONE;
		if (l->tls != CONFIG_TLS_NONE && cfg->tls.cert_count == 0) {
			config_path_key(key, path, "tls");
			return config_fail(c, key, "needs tls.certificates");
		}
		if (l->auth != CONFIG_AUTH_NONE && cfg->auth.users_file == NULL) {
			config_path_key(key, path, "auth");
			return config_fail(c, key, "needs auth.users_file");
		}
		/* AUTH is offered only under TLS or with auth_plaintext (RFC 4954
		 * 4): with neither, "required" would refuse every MAIL and
		 * "optional" would never be offered. */
		if (l->auth != CONFIG_AUTH_NONE && l->tls == CONFIG_TLS_NONE &&
		    !l->auth_plaintext) {
			config_path_key(key, path, "auth");
			return config_fail(c, key,
					   "needs TLS on the listener (tls \"starttls\" or "
					   "\"implicit\") or auth_plaintext: AUTH is never offered "
					   "in clear");
		}
	}
	return 0;
}

/* ---- delivery and dns ---------------------------------------------------- */

static int config_retry_parse(struct config_ctx *c, const char *path, struct json_object *v,
			      void *base)
{
	struct config_delivery *d = base;
	size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;
	assert(d->retry_count == 0);
	if (n == 0 || n > CONFIG_RETRY_MAX)
		return config_fail(c, path, "expected an array of 1..%d intervals in seconds",
				   CONFIG_RETRY_MAX);
	for (size_t i = 0; i < n; i++) {
		uint64_t s;
		if (config_uint_get(json_object_array_get_idx(v, i), 1, CONFIG_RETRY_INTERVAL_MAX,
				    &s) < 0) {
			char sub[CONFIG_PATH_MAX];
			config_path_index(sub, path, i);
			return config_fail(c, sub, "expected an integer in 1..%d",
					   CONFIG_RETRY_INTERVAL_MAX);
		}
		d->retry_s[i] = (uint32_t)s;
	}
	d->retry_count = (uint32_t)n;
	return 0;
}

/* The list is rewritten from the parsed addresses ("127.0.0.1:53",
 * "[::1]:53"), so c-ares gets one canonical spelling whatever was written. */
static int config_dns_server_append(char *out, size_t out_len, const struct sockaddr_storage *ss)
{
	char ip[INET6_ADDRSTRLEN];
	const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
	bool v6 = ss->ss_family == AF_INET6;
	if (inet_ntop(ss->ss_family, v6 ? (const void *)&sin6->sin6_addr : &sin->sin_addr, ip,
		      sizeof(ip)) == NULL)
		return -EINVAL;
	size_t used = strlen(out);
	int w = snprintf(out + used, out_len - used, v6 ? "%s[%s]:%u" : "%s%s:%u",
			 used > 0 ? "," : "", ip, ntohs(v6 ? sin6->sin6_port : sin->sin_port));
	return w > 0 && (size_t)w < out_len - used ? 0 : -ENOSPC;
}

static int config_dns_servers_parse(struct config_ctx *c, const char *path, struct json_object *v,
				    void *base)
{
	struct config_dns *dns = base;
	char list[CONFIG_DNS_SERVERS_MAX * CONFIG_DNS_SERVER_TEXT_MAX] = "";
	size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0;
	assert(dns->servers == NULL);
	if (n == 0 || n > CONFIG_DNS_SERVERS_MAX)
		return config_fail(c, path, "expected an array of 1..%d \"IP:port\" strings",
				   CONFIG_DNS_SERVERS_MAX);
	for (size_t i = 0; i < n; i++) {
		struct sockaddr_storage ss;
		socklen_t len;
		size_t slen;
		char sub[CONFIG_PATH_MAX];
		const char *s = config_string_get(json_object_array_get_idx(v, i), &slen);
		config_path_index(sub, path, i);
		if (s == NULL || config_hostport_remote(s, &ss, &len) < 0)
			return config_fail(c, sub, "expected \"IP:port\" or \"[IPv6]:port\"");
		if (config_dns_server_append(list, sizeof(list), &ss) < 0)
			return config_fail(c, sub, "does not fit the server list");
	}
	dns->servers = strdup(list);
	if (dns->servers == NULL)
		return config_fail(c, path, "out of memory");
	return 0;
}

/* ---- resolution of derived values ---------------------------------------- */

static uint32_t config_cpus_online(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		return 1;
	return n > CONFIG_SHARDS_MAX ? CONFIG_SHARDS_MAX : (uint32_t)n;
}

static int config_hostname_default(struct config_ctx *c)
{
	assert(c->cfg != NULL);
	char *h = c->cfg->hostname;
	if (gethostname(h, sizeof(c->cfg->hostname)) < 0)
		return config_fail(c, "hostname", "not set and gethostname() failed: %s",
				   strerror(errno));
	h[sizeof(c->cfg->hostname) - 1] = '\0';
	if (!config_dns_name_valid(h, strlen(h)))
		return config_fail(c, "hostname",
				   "not set and the system name \"%s\" is not a host name", h);
	return 0;
}

static int config_delivery_resolve(struct config_ctx *c, struct config_delivery *d)
{
	static_assert(sizeof(config_retry_default_s) <= sizeof(d->retry_s), "retry default fits");
	if (d->retry_count == 0) {
		memcpy(d->retry_s, config_retry_default_s, sizeof(config_retry_default_s));
		d->retry_count = sizeof(config_retry_default_s) / sizeof(config_retry_default_s[0]);
	}
	/* A notice due after the bounce would never be sent. */
	if (d->delay_notice_s > d->max_age_s)
		return config_fail(c, "delivery.delay_notice_s",
				   "expected 0 (no notice) or 1..max_age_s (%u)", d->max_age_s);
	assert(d->retry_count >= 1 && d->retry_count <= CONFIG_RETRY_MAX);
	return 0;
}

/* The greeting is "220 <hostname> ESMTP <banner>" (RFC 5321 4.2: the host
 * name first) and, like every reply line, at most 512 octets with its CRLF
 * (4.5.3.1.5): the banner gets what the host name leaves. */
static int config_banners_resolve(struct config_ctx *c)
{
	const struct rmx_config *cfg = c->cfg;
	size_t room = 512 - strlen("220  ESMTP \r\n") - strlen(cfg->hostname);

	for (uint32_t i = 0; i < cfg->listener_count; i++) {
		char item[CONFIG_PATH_MAX], path[CONFIG_PATH_MAX];

		if (strlen(cfg->listeners[i].banner) <= room)
			continue;
		config_path_index(item, "listeners", i);
		config_path_key(path, item, "banner");
		return config_fail(c, path,
				   "expected at most %zu characters: \"220 %s ESMTP \" comes first "
				   "and a reply line is at most 512 octets",
				   room, cfg->hostname);
	}
	return 0;
}

/* Values that depend on other keys, filled once the whole file is read so
 * that key order in the file never matters. */
static int config_resolve(struct config_ctx *c)
{
	struct rmx_config *cfg = c->cfg;
	if (cfg->hostname[0] == '\0' && config_hostname_default(c) < 0)
		return -EINVAL;
	if (cfg->listener_count == 0)
		return config_fail(c, "listeners", "required key missing");
	bool auto_shards = cfg->shards == 0;
	if (auto_shards)
		cfg->shards = config_cpus_online();
	if (cfg->cpu_affinity != NULL && cfg->cpu_affinity_count != cfg->shards)
		return config_fail(
		    c, "cpu_affinity", "expected %u entries (one per shard%s), got %u", cfg->shards,
		    auto_shards ? "; shards 0 = online CPUs" : "", cfg->cpu_affinity_count);
	if (cfg->io.max_connections == 0)
		cfg->io.max_connections = (cfg->limits.connections + cfg->shards - 1) / cfg->shards;
	if ((uint64_t)cfg->io.recv_buffers * cfg->io.recv_buffer_size > CONFIG_RECV_POOL_MAX)
		return config_fail(c, "io.recv_buffers",
				   "expected recv_buffers * recv_buffer_size of at most 1 GiB");
	if (config_banners_resolve(c) < 0 || config_tls_resolve(c) < 0)
		return -EINVAL;
	return config_delivery_resolve(c, &cfg->delivery);
}

/* ---- strictness scan ----------------------------------------------------- */

struct config_scan {
	struct config_ctx *c;
	const char *file;
	const char *s;
	size_t len, pos;
};

struct config_span {
	const char *p;
	size_t len;
	size_t pos;
};

static int config_scan_fail(struct config_scan *sc, const char *what)
{
	return config_fail(sc->c, sc->file, "JSON parse error at line %zu: %s",
			   config_line_of(sc->s, sc->pos), what);
}

static void config_scan_ws(struct config_scan *sc)
{
	while (sc->pos < sc->len && strchr(" \t\r\n", sc->s[sc->pos]) != NULL && sc->s[sc->pos])
		sc->pos++;
}

static bool config_scan_peek(struct config_scan *sc, char ch)
{
	return sc->pos < sc->len && sc->s[sc->pos] == ch;
}

/* Double-quoted string only: json-c also takes 'single quotes'. */
static int config_scan_string(struct config_scan *sc, struct config_span *span)
{
	if (!config_scan_peek(sc, '"'))
		return config_scan_fail(sc, "expected a double-quoted string");
	span->pos = sc->pos;
	span->p = sc->s + ++sc->pos;
	while (sc->pos < sc->len && sc->s[sc->pos] != '"') {
		if ((unsigned char)sc->s[sc->pos] < 0x20)
			return config_scan_fail(sc, "control character in string");
		sc->pos += sc->s[sc->pos] == '\\' ? 2 : 1;
	}
	if (sc->pos >= sc->len)
		return config_scan_fail(sc, "unterminated string");
	span->len = (size_t)(sc->s + sc->pos - span->p);
	sc->pos++;
	return 0;
}

/* Numbers were validated by json-c; here only NaN and Infinity, which json-c
 * accepts and JSON does not, must be kept out. */
static int config_scan_scalar(struct config_scan *sc)
{
	static const char *const words[] = {"true", "false", "null"};
	const char *p = sc->s + sc->pos;
	size_t left = sc->len - sc->pos;
	if (*p == '-' || (*p >= '0' && *p <= '9')) {
		while (sc->pos < sc->len && strchr("+-.eE0123456789", sc->s[sc->pos]) != NULL &&
		       sc->s[sc->pos] != '\0')
			sc->pos++;
		if (sc->pos == (size_t)(p - sc->s) + 1 && *p == '-')
			return config_scan_fail(sc, "non-standard number");
		return 0;
	}
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		size_t n = strlen(words[i]);
		if (left >= n && memcmp(p, words[i], n) == 0) {
			sc->pos += n;
			return 0;
		}
	}
	return config_scan_fail(sc, "non-standard value (NaN or Infinity?)");
}

static int config_scan_value(struct config_scan *sc, const char *path, int depth);

static int config_span_order(const void *a, const void *b)
{
	const struct config_span *x = a, *y = b;
	size_t n = x->len < y->len ? x->len : y->len;
	int r = memcmp(x->p, y->p, n);
	if (r != 0)
		return r;
	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	return x->pos < y->pos ? -1 : 1;
}

/* Sorting makes the check O(n log n) even for an object with many keys; the
 * later of two equal keys is reported.  Keys compare as written, so "a" and
 * "\u0061" are not seen as equal (the table walk rejects such keys anyway). */
static int config_scan_dups(struct config_scan *sc, const char *path, struct config_span *keys,
			    size_t n)
{
	if (n < 2)
		return 0; /* also: qsort must not get keys == NULL of "{}" */
	qsort(keys, n, sizeof(*keys), config_span_order);
	for (size_t i = 1; i < n; i++) {
		if (keys[i].len != keys[i - 1].len || memcmp(keys[i].p, keys[i - 1].p, keys[i].len))
			continue;
		char key[CONFIG_PATH_MAX], sub[CONFIG_PATH_MAX];
		snprintf(key, sizeof(key), "%.*s", (int)keys[i].len, keys[i].p);
		config_path_key(sub, path, key);
		return config_fail(sc->c, sub, "duplicate key (line %zu)",
				   config_line_of(sc->s, keys[i].pos));
	}
	return 0;
}

static int config_scan_object(struct config_scan *sc, const char *path, int depth)
{
	struct config_span *keys = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	sc->pos++; /* '{' */
	config_scan_ws(sc);
	while (rc == 0 && !config_scan_peek(sc, '}')) {
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			struct config_span *grown = realloc(keys, cap * sizeof(*keys));
			if (grown == NULL) {
				rc = config_fail(sc->c, path, "out of memory");
				break;
			}
			keys = grown;
		}
		char sub[CONFIG_PATH_MAX], key[CONFIG_PATH_MAX];
		if ((rc = config_scan_string(sc, &keys[n])) < 0)
			break;
		snprintf(key, sizeof(key), "%.*s", (int)keys[n].len, keys[n].p);
		config_path_key(sub, path, key);
		n++;
		config_scan_ws(sc);
		if (!config_scan_peek(sc, ':')) {
			rc = config_scan_fail(sc, "expected ':'");
			break;
		}
		sc->pos++;
		if ((rc = config_scan_value(sc, sub, depth + 1)) < 0)
			break;
		config_scan_ws(sc);
		if (config_scan_peek(sc, ',')) {
			sc->pos++;
			config_scan_ws(sc);
		} else if (!config_scan_peek(sc, '}')) {
			rc = config_scan_fail(sc, "expected ',' or '}'");
		}
	}
	if (rc == 0) {
		sc->pos++; /* '}' */
		rc = config_scan_dups(sc, path, keys, n);
	}
	free(keys);
	return rc;
}

static int config_scan_array(struct config_scan *sc, const char *path, int depth)
{
	sc->pos++; /* '[' */
	config_scan_ws(sc);
	for (size_t i = 0; !config_scan_peek(sc, ']'); i++) {
		char sub[CONFIG_PATH_MAX];
		config_path_index(sub, path, i);
		if (config_scan_value(sc, sub, depth + 1) < 0)
			return -EINVAL;
		config_scan_ws(sc);
		if (config_scan_peek(sc, ',')) {
			sc->pos++;
			config_scan_ws(sc);
		} else if (!config_scan_peek(sc, ']')) {
			return config_scan_fail(sc, "expected ',' or ']'");
		}
	}
	sc->pos++; /* ']' */
	return 0;
}

static int config_scan_value(struct config_scan *sc, const char *path, int depth)
{
	struct config_span ignored;
	if (depth > CONFIG_JSON_DEPTH_MAX)
		return config_scan_fail(sc, "nested too deep");
	config_scan_ws(sc);
	if (sc->pos >= sc->len)
		return config_scan_fail(sc, "unexpected end of data");
	switch (sc->s[sc->pos]) {
	case '{':
		return config_scan_object(sc, path, depth);
	case '[':
		return config_scan_array(sc, path, depth);
	case '"':
		return config_scan_string(sc, &ignored);
	default:
		return config_scan_scalar(sc);
	}
}

/* ---- parse and load ------------------------------------------------------ */

static int config_json_parse(struct config_ctx *c, const char *file, const char *text, size_t len,
			     struct json_object **out)
{
	size_t nul = strlen(text);
	if (nul != len)
		return config_fail(c, file, "JSON parse error at line %zu: NUL byte in input",
				   config_line_of(text, nul));
	if (len > CONFIG_FILE_SIZE_MAX)
		return config_fail(c, file, "larger than %u bytes", CONFIG_FILE_SIZE_MAX);
	struct json_tokener *tok = json_tokener_new_ex(CONFIG_JSON_DEPTH_MAX);
	if (tok == NULL)
		return config_fail(c, file, "out of memory");
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	/* len + 1: the terminating NUL tells json-c the input ends here. */
	struct json_object *root = json_tokener_parse_ex(tok, text, (int)len + 1);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	size_t end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	if (jerr != json_tokener_success) {
		json_object_put(root);
		return config_fail(c, file, "JSON parse error at line %zu: %s",
				   config_line_of(text, end < len ? end : len),
				   json_tokener_error_desc(jerr));
	}
	struct config_scan sc = {.c = c, .file = file, .s = text, .len = len};
	int rc = config_scan_value(&sc, "", 0);
	config_scan_ws(&sc);
	if (rc == 0 && sc.pos != len)
		rc = config_scan_fail(&sc, "unexpected data after the top-level value");
	if (rc < 0) {
		json_object_put(root);
		return -EINVAL;
	}
	*out = root;
	return 0;
}

static struct rmx_config *config_load_text(const char *file, const char *text, size_t len,
					   char *err, size_t err_len)
{
	struct config_ctx c = {.err = err, .err_len = err_len};
	struct json_object *root = NULL;
	if (err != NULL && err_len > 0)
		err[0] = '\0';
	if (config_json_parse(&c, file, text, len, &root) < 0)
		return NULL;
	c.cfg = calloc(1, sizeof(*c.cfg));
	if (c.cfg == NULL) {
		json_object_put(root);
		config_fail(&c, file, "out of memory");
		return NULL;
	}
	int rc = config_defaults_apply(&c, config_root_keys, (char *)c.cfg);
	if (rc == 0)
		rc = config_section_parse(&c, "", root, config_root_keys, (char *)c.cfg);
	if (rc == 0)
		rc = config_resolve(&c);
	json_object_put(root);
	if (rc < 0) {
		config_free(c.cfg);
		return NULL;
	}
	assert(c.cfg->shards >= 1 && c.cfg->listener_count >= 1);
	assert(c.cfg->io.max_connections >= 1 && c.cfg->spool.path && c.cfg->control.socket);
	assert(c.cfg->delivery.retry_count >= 1 && c.cfg->route_count <= CONFIG_ROUTES_MAX);
	assert(c.cfg->tls.min_version != NULL && c.cfg->tls.cert_count <= CONFIG_CERTS_MAX);
	return c.cfg;
}

/* Reads at most CONFIG_FILE_SIZE_MAX + 1 bytes so an oversized file is
 * noticed without reading all of it. */
static char *config_file_read(struct config_ctx *c, const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		config_fail(c, path, "cannot open: %s", strerror(errno));
		return NULL;
	}
	char *buf = malloc(CONFIG_FILE_SIZE_MAX + 2);
	size_t n = 0;
	ssize_t r = 1;
	while (buf != NULL && n <= CONFIG_FILE_SIZE_MAX && r != 0) {
		r = read(fd, buf + n, CONFIG_FILE_SIZE_MAX + 1 - n);
		if (r < 0 && errno != EINTR)
			break;
		n += r > 0 ? (size_t)r : 0;
	}
	int read_errno = errno;
	close(fd);
	if (buf == NULL || r < 0 || n > CONFIG_FILE_SIZE_MAX) {
		if (buf == NULL)
			config_fail(c, path, "out of memory");
		else if (r < 0)
			config_fail(c, path, "cannot read: %s", strerror(read_errno));
		else
			config_fail(c, path, "larger than %u bytes", CONFIG_FILE_SIZE_MAX);
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}

struct rmx_config *config_load(const char *path, char *err, size_t err_len)
{
	struct config_ctx c = {.err = err, .err_len = err_len};
	size_t len;
	if (err != NULL && err_len > 0)
		err[0] = '\0';
	if (path == NULL) {
		config_fail(&c, "(file)", "no file name");
		return NULL;
	}
	char *text = config_file_read(&c, path, &len);
	if (text == NULL)
		return NULL;
	struct rmx_config *cfg = config_load_text(path, text, len, err, err_len);
	free(text);
	return cfg;
}

struct rmx_config *config_load_string(const char *json, char *err, size_t err_len)
{
	if (json == NULL) {
		struct config_ctx c = {.err = err, .err_len = err_len};
		config_fail(&c, "<string>", "no JSON text");
		return NULL;
	}
	return config_load_text("<string>", json, strlen(json), err, err_len);
}

struct rmx_config *config_default(char *err, size_t err_len)
{
	return config_load_text("<default>", config_default_json, strlen(config_default_json), err,
				err_len);
}

void config_free(struct rmx_config *cfg)
{
	if (cfg == NULL)
		return;
	for (uint32_t i = 0; i < cfg->relay_domain_count; i++)
		free(cfg->relay_domains[i].name);
	free(cfg->relay_domains);
	free(cfg->relay_networks);
	free(cfg->cpu_affinity);
	free(cfg->spool.path);
	free(cfg->control.socket);
	free(cfg->log.file);
	for (uint32_t i = 0; i < cfg->route_count; i++)
		config_route_free(&cfg->routes[i]);
	free(cfg->routes);
	free(cfg->dns.servers);
	for (uint32_t i = 0; i < cfg->tls.cert_count; i++) {
		struct config_cert *cert = &cfg->tls.certs[i];
		for (uint32_t j = 0; j < cert->name_count; j++)
			free(cert->names[j]);
		free(cert->names);
		free(cert->cert);
		free(cert->key);
	}
	free(cfg->tls.min_version);
	free(cfg->tls.ciphers);
	free(cfg->auth.users_file);
	json_object_put(cfg->filters_json);
	json_object_put(cfg->tables_json);
	for (uint32_t i = 0; i < CONFIG_LISTENERS_MAX; i++)
		json_object_put(cfg->listeners[i].filters_json);
	free(cfg);
}

/* ---- relay policy -------------------------------------------------------- */

/* Compares a query slice (any case) with a lower-case entry, in the order of
 * config_domain_order(). */
static int config_domain_cmp(const char *q, size_t qlen, const char *name)
{
	size_t i = 0;
	for (; i < qlen && name[i] != '\0'; i++) {
		int a = (unsigned char)config_ascii_lower(q[i]), b = (unsigned char)name[i];
		if (a != b)
			return a - b;
	}
	if (i < qlen)
		return 1;
	return name[i] != '\0' ? -1 : 0;
}

/* Bisects a list sorted by config_domain_order() (relay.domains, or the
 * domains of one route). */
static bool config_domain_find(const struct config_domain *list, size_t count, const char *q,
			       size_t qlen, bool wildcard)
{
	size_t lo = 0, hi = count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct config_domain *d = &list[mid];
		int r = (int)wildcard - (int)d->wildcard;
		if (r == 0)
			r = config_domain_cmp(q, qlen, d->name);
		if (r == 0)
			return true;
		if (r < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return false;
}

/* A query name that entries may match: drops one trailing dot from *len.
 * An empty label (".x", "a..x") would let "*.x" match a name that is not a
 * subdomain at all, so such names match nothing. */
static bool config_domain_query(const char *domain, size_t *len)
{
	if (*len > 0 && domain[*len - 1] == '.')
		(*len)--;
	if (*len == 0 || *len > CONFIG_DNS_NAME_MAX)
		return false;
	for (size_t i = 0; i < *len; i++)
		if (domain[i] == '.' && (i == 0 || domain[i - 1] == '.' || i + 1 == *len))
			return false;
	return true;
}

/* "*.suffix" entries for each proper suffix of a checked query: a.b.x tries
 * *.b.x and *.x — O(labels * log n). */
static bool config_domain_find_suffix(const struct config_domain *list, size_t count, const char *q,
				      size_t qlen)
{
	for (size_t i = 1; i < qlen; i++)
		if (q[i] == '.' && config_domain_find(list, count, q + i + 1, qlen - i - 1, true))
			return true;
	return false;
}

/* Exact entry for the whole name, then the "*.suffix" entries. */
bool config_domain_is_relay(const struct rmx_config *cfg, const char *domain, size_t len)
{
	if (cfg == NULL || domain == NULL || !config_domain_query(domain, &len))
		return false;
	if (config_domain_find(cfg->relay_domains, cfg->relay_domain_count, domain, len, false))
		return true;
	return config_domain_find_suffix(cfg->relay_domains, cfg->relay_domain_count, domain, len);
}

/* Three passes in file order, one per class of entry (exact, suffix, "*"),
 * so a more specific entry wins wherever it is listed: O(routes * labels *
 * log domains), with at most CONFIG_ROUTES_MAX routes. */
const struct config_route *config_route_find(const struct rmx_config *cfg, const char *domain,
					     size_t len)
{
	if (cfg == NULL || domain == NULL)
		return NULL;
	assert(cfg->route_count <= CONFIG_ROUTES_MAX);
	const struct config_route *routes = cfg->routes;
	if (config_domain_query(domain, &len)) {
		for (uint32_t i = 0; i < cfg->route_count; i++)
			if (config_domain_find(routes[i].domains, routes[i].domain_count, domain,
					       len, false))
				return &routes[i];
		for (uint32_t i = 0; i < cfg->route_count; i++)
			if (config_domain_find_suffix(routes[i].domains, routes[i].domain_count,
						      domain, len))
				return &routes[i];
	}
	for (uint32_t i = 0; i < cfg->route_count; i++)
		if (routes[i].catch_all)
			return &routes[i];
	return NULL;
}

/* A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; they are
 * checked against IPv4 networks (and IPv6 ones, which may cover ::ffff:0:0/96
 * explicitly). */
bool config_addr_is_relay(const struct rmx_config *cfg, const struct sockaddr *sa)
{
	const uint8_t *v4 = NULL, *v6 = NULL;
	if (cfg == NULL || sa == NULL)
		return false;
	if (sa->sa_family == AF_INET) {
		v4 = (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
	} else if (sa->sa_family == AF_INET6) {
		v6 = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
		if (config_v4mapped(v6))
			v4 = v6 + 12;
	} else {
		return false;
	}
	for (uint32_t i = 0; i < cfg->relay_network_count; i++) {
		const struct config_cidr *net = &cfg->relay_networks[i];
		const uint8_t *a = net->family == AF_INET ? v4 : v6;
		if (a != NULL && config_prefix_match(a, net->addr, net->prefix_len))
			return true;
	}
	return false;
}

const struct config_route *config_route_by_name(const struct rmx_config *cfg, const char *name,
						size_t len)
{
	for (uint32_t i = 0; cfg && i < cfg->route_count; i++)
		if (strlen(cfg->routes[i].name) == len && len &&
		    memcmp(cfg->routes[i].name, name, len) == 0)
			return &cfg->routes[i];
	return NULL;
}

/* ---- host:port ----------------------------------------------------------- */

static int config_port_parse(const char *s, uint16_t *port)
{
	size_t n = strlen(s);
	unsigned v = 0;
	if (n == 0 || n > 5)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v == 0 || v > 65535) /* 0 would bind an ephemeral port nobody knows */
		return -EINVAL;
	*port = (uint16_t)v;
	return 0;
}

/* Numeric hosts only: a listener must not depend on DNS at start, and a name
 * with several addresses would make "which socket" ambiguous. */
int config_parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[INET6_ADDRSTRLEN];
	const char *h = s, *end, *port;
	uint16_t p;
	if (s == NULL || ss == NULL || len == NULL)
		return -EINVAL;
	bool v6 = s[0] == '[';
	if (v6) {
		h = s + 1;
		end = strchr(h, ']');
		if (end == NULL || end[1] != ':')
			return -EINVAL;
		port = end + 2;
	} else {
		end = strrchr(s, ':');
		if (end == NULL || memchr(s, ':', (size_t)(end - s)) != NULL)
			return -EINVAL; /* a bare IPv6 address needs brackets */
		port = end + 1;
	}
	size_t hlen = (size_t)(end - h);
	if (hlen == 0 || hlen >= sizeof(host) || config_port_parse(port, &p) < 0)
		return -EINVAL;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	memset(ss, 0, sizeof(*ss));
	if (v6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			return -EINVAL;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(p);
		*len = sizeof(*sin6);
		return 0;
	}
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	if (strcmp(host, "*") == 0)
		sin->sin_addr.s_addr = htonl(INADDR_ANY);
	else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
		return -EINVAL;
	sin->sin_family = AF_INET;
	sin->sin_port = htons(p);
	*len = sizeof(*sin);
	return 0;
}
