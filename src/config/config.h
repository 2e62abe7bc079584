/*
 * config — the one JSON file, loaded, checked strictly and compiled.
 *
 * Owns: struct rmx_config and everything it points to (one heap block tree,
 * freed by config_free()).  Called only by the main thread, at start and on
 * reload; shards read a loaded config and never change it.
 *
 * Contract:
 *  - config_load() parses FILE with json-c, rejects unknown keys and wrong
 *    types, fills every default, and compiles derived data (CIDR tables,
 *    sockaddrs).  On error it returns NULL and writes one line into err:
 *    "<json path>: <what was expected>", e.g.
 *    `listeners[0].address: expected "host:port"`.
 *  - Files named by the config (tls.certificates[].cert/key, auth.users_file,
 *    routes[].ca_file) must be readable at load (access(R_OK), so the check
 *    runs as the real uid); their contents are read and checked later by
 *    the modules that use them (tls_ctx_new(), auth_users_load()).
 *  - config_default() returns the embedded default config (listens on
 *    127.0.0.1:2525, spools under ./spool, delivers every domain into the
 *    Maildir ./maildir) or NULL with err.
 *  - Never exits the process; never logs.
 */
#ifndef RMX_CONFIG_H
#define RMX_CONFIG_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct json_object;

#define CONFIG_ERR_MAX	     512
#define CONFIG_LISTENERS_MAX 16
#define CONFIG_HOSTNAME_MAX  255
#define CONFIG_BANNER_MAX    400
#define CONFIG_NAME_MAX	     64
#define CONFIG_ROUTES_MAX    256
#define CONFIG_HOPS_MAX	     8
#define CONFIG_RETRY_MAX     32
#define CONFIG_CERTS_MAX     16 /* = TLS_CERTS_MAX of src/tls/tls.h */

enum config_durability {
	CONFIG_DURABILITY_FSYNC = 0,
	CONFIG_DURABILITY_NONE = 1, /* explicitly unsafe: benchmarks only */
};

/* Choice keys: each enum's order is the order of its JSON strings. */
enum config_tls_mode { CONFIG_TLS_NONE = 0, CONFIG_TLS_STARTTLS, CONFIG_TLS_IMPLICIT };
enum config_auth_mode { CONFIG_AUTH_NONE = 0, CONFIG_AUTH_OPTIONAL, CONFIG_AUTH_REQUIRED };
enum config_route_tls {
	CONFIG_RTLS_NONE = 0,
	CONFIG_RTLS_OPPORTUNISTIC,
	CONFIG_RTLS_REQUIRED,
	CONFIG_RTLS_VERIFY
};

/* One tls.certificates[] entry.  The files were readable at load; their
 * contents are checked only by tls_ctx_new() when the server builds its
 * context (config.c makes no TLS library call). */
struct config_cert {
	char *cert;   /* PEM chain path, leaf first (relative allowed) */
	char *key;    /* PEM key path */
	char **names; /* 1..32, lower case; "*.example.net" is a wildcard */
	uint32_t name_count;
};

struct config_tls {
	struct config_cert certs[CONFIG_CERTS_MAX]; /* certs[0] answers clients without SNI */
	uint32_t cert_count;			    /* 0: no TLS server side */
	char *min_version;			    /* "1.2" (default) or "1.3" */
	char *ciphers;				    /* NULL: wolfSSL's default list */
	uint32_t handshake_timeout_s;		    /* default 30 */
};

struct config_auth {
	char *users_file; /* NULL: none */
	uint32_t
	    failure_delay_ms;  /* delay of the 535 after the first failure; doubles; default 1000 */
	uint32_t failures_max; /* failures per client address before 421; default 10 */
};

struct config_listener {
	char name[CONFIG_NAME_MAX];
	struct sockaddr_storage addr; /* parsed from "host:port" / "[v6]:port" */
	socklen_t addr_len;
	char banner[CONFIG_BANNER_MAX]; /* empty: "<hostname> ESMTP ringmx" */
	uint32_t greet_pause_ms;	/* 0: no pre-greet wait (default) */
	/* default: STARTTLS when tls.certificates is non-empty, else NONE;
	 * STARTTLS/IMPLICIT only with certificates (checked at load) */
	enum config_tls_mode tls;
	enum config_auth_mode auth; /* default NONE; others need auth.users_file */
	/* AUTH offered without TLS: only allowed on a loopback address, for tests */
	bool auth_plaintext;
	/* Authenticated sessions: add Message-ID and Date when the message
	 * lacks them (RFC 6409 8.2, 8.3); default true. */
	bool add_message_id_date;
	/* Authenticated sessions: our Received: field leaves out the client's
	 * address, HELO and AUTH name (a submission port's privacy); default
	 * false. */
	bool received_hide_client;
	/* "filters": this listener's chains, as JSON (compiled by filters/,
	 * flt_compile()); NULL: the top-level ones */
	struct json_object *filters_json;
};

/* One network of relay.networks, already parsed: family AF_INET/AF_INET6. */
struct config_cidr {
	int family;
	uint8_t addr[16]; /* network byte order, host bits cleared */
	uint8_t prefix_len;
};

/* One entry of relay.domains: exact ("a.example") or suffix ("*.a.example",
 * matching any strict subdomain).  Stored lower-case, no trailing dot. */
struct config_domain {
	char *name;    /* without the "*." for suffix entries */
	bool wildcard; /* true: "*.name" */
};

enum config_hop_kind {
	CONFIG_HOP_SMTP = 0, /* "smtp://IP:port" */
	CONFIG_HOP_LMTP,     /* "lmtp://IP:port" */
	CONFIG_HOP_MX,	     /* "mx": resolve the recipient domain's MX */
	CONFIG_HOP_MAILDIR,  /* "maildir:/path" */
	CONFIG_HOP_MBOX,     /* "mbox:/path" */
};

/* One destination of a route's "to". */
struct config_hop {
	enum config_hop_kind kind;
	struct sockaddr_storage addr; /* SMTP/LMTP: the parsed IP and port */
	socklen_t addr_len;
	char *path;	/* MAILDIR/MBOX: the path (relative allowed); else NULL */
	char text[300]; /* the "to" string as written, for logs (cut if longer) */
};

/* One entry of routes[].  "mx", "maildir:" and "mbox:" hops are always
 * alone (hop_count 1); a list of several hops is smtp/lmtp failover. */
struct config_route {
	char name[CONFIG_NAME_MAX];    /* "" when unnamed; filters' route action names it */
	struct config_domain *domains; /* as relay.domains, sorted; "*" is not in it */
	uint32_t domain_count;
	bool catch_all; /* "*" was among the domains */
	struct config_hop hops[CONFIG_HOPS_MAX];
	uint32_t hop_count; /* >= 1; several = failover in order */
	/* default OPPORTUNISTIC; always NONE for maildir:/mbox: routes */
	enum config_route_tls tls;
	char *ca_file; /* NULL: the system trust store; readable at load */
};

struct config_delivery {
	uint32_t retry_s[CONFIG_RETRY_MAX]; /* default 60,300,900,3600,14400 */
	uint32_t retry_count;		    /* >= 1 */
	uint32_t max_age_s;		    /* default 432000 */
	uint32_t connections_per_route;	    /* default 20, 1..10000 */
	uint32_t messages_per_connection;   /* default 1000, 1..1000000 */
	uint32_t connect_timeout_s;	    /* default 30, 1..3600 */
	uint32_t command_timeout_s;	    /* default 300, 1..3600 */
	/* default 0 = no delay notices; else send one DSN "delayed" once a
	 * message has been deferred this long (1..max_age_s) */
	uint32_t delay_notice_s;
};

struct config_dns {
	/* NULL: /etc/resolv.conf; else "ip:port,[ip6]:port" (canonical form,
	 * joined with ',') as dns_new() takes it (see src/dns/dns.h) */
	char *servers;
	uint32_t timeout_ms; /* default 2000, 100..60000 */
	uint32_t tries;	     /* default 2, 1..10 */
};

struct config_limits {
	uint64_t message_size;	     /* bytes; default 10485760 */
	uint32_t recipients;	     /* per transaction; default 100 */
	uint32_t errors;	     /* per session; default 10 */
	uint32_t idle_s;	     /* default 300 */
	uint32_t session_s;	     /* default 3600 */
	uint32_t connections;	     /* total, all shards; default 10000 */
	uint32_t connections_per_ip; /* default 50 */
	uint32_t commands;	     /* per session; default 10000 */
	uint32_t received_headers;   /* mail loop bound; default 50 */
	uint32_t transactions;	     /* messages per session; default 1000 */
	uint32_t soft_errors;	     /* errors before the tarpit starts; default 3 */
	uint32_t error_delay_ms;     /* tarpit delay per decision; 0 = off (default) */
};

struct config_spool {
	char *path; /* default "/var/spool/ringmx" (embedded default: "./spool") */
	enum config_durability durability;
	uint64_t segment_size; /* bytes before rotating a segment; default 64 MiB */
};

/* Tuning of the io layer, sized once at start (invariant 4). */
struct config_io {
	uint32_t ring_entries;	   /* SQ entries per shard; default 4096 */
	uint32_t recv_buffers;	   /* provided buffers per shard, power of 2; default 1024 */
	uint32_t recv_buffer_size; /* bytes; default 16384 */
	uint32_t
	    max_connections; /* connection slots per shard; default limits.connections/shards rounded up */
};

struct config_control {
	char *socket; /* default "/run/ringmx/control.sock"; embedded: "./ringmx.sock" */
};

struct config_log {
	bool json;  /* false: key=value lines (default) */
	int level;  /* 0 error, 1 warn, 2 info (default), 3 debug */
	char *file; /* NULL: stderr (default); else appended to, reopened on SIGUSR1 */
};

struct rmx_config {
	char hostname[CONFIG_HOSTNAME_MAX + 1]; /* default gethostname() */
	uint32_t shards;			/* resolved: 0 in JSON -> online CPUs */
	int *cpu_affinity;			/* NULL or shards entries */
	uint32_t cpu_affinity_count;
	struct config_listener listeners[CONFIG_LISTENERS_MAX];
	uint32_t listener_count;
	struct config_domain *relay_domains;
	uint32_t relay_domain_count;
	struct config_cidr *relay_networks;
	uint32_t relay_network_count;
	struct config_limits limits;
	struct config_spool spool;
	struct config_io io;
	struct config_control control;
	struct config_log log;
	struct config_route *routes; /* file order; NULL/0: no routes */
	uint32_t route_count;
	struct config_delivery delivery;
	struct config_dns dns;
	struct config_tls tls;
	struct config_auth auth;
	/* "filters" and "tables", as JSON: only an object was checked here;
	 * filters/ compiles them (flt_compile()) and reports their errors.
	 * NULL when absent. */
	struct json_object *filters_json;
	struct json_object *tables_json;
};

struct rmx_config *config_load(const char *path, char *err, size_t err_len);
struct rmx_config *config_load_string(const char *json, char *err, size_t err_len);
struct rmx_config *config_default(char *err, size_t err_len);
void config_free(struct rmx_config *cfg);

/* Relay policy helpers (pure, any thread). Domain match is case-insensitive,
 * ignores one trailing dot; "*.x" matches "a.x" and "a.b.x" but not "x". */
bool config_domain_is_relay(const struct rmx_config *cfg, const char *domain, size_t len);
bool config_addr_is_relay(const struct rmx_config *cfg, const struct sockaddr *sa);

/* The route for a recipient domain (pure, any thread; NULL: no route, the
 * mail stays queued).  Case-insensitive, ignores one trailing dot.  The
 * first route in file order with an exact entry for the domain; else the
 * first with a "*.suffix" entry that matches (strict subdomains, as in
 * relay.domains; file order, not the longest suffix); else the first with
 * "*" (which takes any domain, even one that is not a well-formed name).
 * The result lives as long as cfg. */
const struct config_route *config_route_find(const struct rmx_config *cfg, const char *domain,
					     size_t len);

/* The route named name (routes[].name), or NULL. */
const struct config_route *config_route_by_name(const struct rmx_config *cfg, const char *name,
						size_t len);

/* Do two socket addresses take the same connections?  The same family and
 * port, and the same address or either one the wildcard (IPv6 listeners
 * are IPV6_V6ONLY, so [::] and 0.0.0.0 do not meet). */
bool config_addr_overlap(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/* "192.0.2.0/24", "2001:db8::/32" or a bare address -> out.  0, -EINVAL
 * (not a network) or -ERANGE (host bits set).  "::ffff:a.b.c.d/n" (n >= 96)
 * is stored as the IPv4 network it is. */
int config_cidr_from_string(const char *s, size_t len, struct config_cidr *out);

/* "host:port" / "[v6]:port" -> sockaddr; returns 0 or -EINVAL. */
int config_parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *len);

#endif
