/*
 * preflight — see preflight.h.
 */
#include "preflight.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/users.h"
#include "shard.h"
#include "tls/tls.h"

#define PREFLIGHT_LINE_MAX 600

/* ---- errors ----------------------------------------------------------------- */

/* A directory the server writes into and creates when missing (spool,
 * Maildir/mbox bases, the control socket's directory): it must be a
 * writable directory, or missing under a writable one. */
static int check_dir(const char *key, const char *path, char *why, size_t why_len)
{
	char p[PATH_MAX];
	struct stat st;

	if (snprintf(p, sizeof(p), "%s", path) >= (int)sizeof(p)) {
		snprintf(why, why_len, "%s: path too long", key);
		return -1;
	}
	while (stat(p, &st) != 0) {
		char *slash = strrchr(p, '/');

		if (errno != ENOENT) {
			snprintf(why, why_len, "%s: %s: %s", key, p, strerror(errno));
			return -1;
		}
		if (slash == p)
			p[1] = '\0'; /* "/x" -> "/" */
		else if (slash)
			*slash = '\0';
		else
			strcpy(p, ".");
	}
	if (!S_ISDIR(st.st_mode)) {
		snprintf(why, why_len, "%s: %s is not a directory", key, p);
		return -1;
	}
	if (access(p, W_OK | X_OK) != 0) {
		snprintf(why, why_len, "%s: %s is not writable: %s", key, p, strerror(errno));
		return -1;
	}
	return 0;
}

static int check_control(const struct rmx_config *cfg, char *why, size_t why_len)
{
	char dir[PATH_MAX];
	struct stat st;
	const char *s = cfg->control.socket, *slash = strrchr(s, '/');

	/* Start-up never removes anything but a stale socket at this path. */
	if (lstat(s, &st) == 0 && !S_ISSOCK(st.st_mode)) {
		snprintf(why, why_len,
			 "control.socket: %s exists and is not a socket; refusing to replace it",
			 s);
		return -1;
	}
	if (!slash)
		strcpy(dir, ".");
	else
		snprintf(dir, sizeof(dir), "%.*s", slash == s ? 1 : (int)(slash - s), s);
	return check_dir("control.socket", dir, why, why_len);
}

/* log.file is opened for appending, created if missing, in a directory
 * that must exist (start-up does not make it). */
static int check_log_file(const struct rmx_config *cfg, char *why, size_t why_len)
{
	char dir[PATH_MAX];
	struct stat st;
	const char *f = cfg->log.file, *slash;

	if (!f)
		return 0;
	if (stat(f, &st) == 0) {
		if (S_ISDIR(st.st_mode) || access(f, W_OK) != 0) {
			snprintf(why, why_len, "log.file: %s: %s", f,
				 S_ISDIR(st.st_mode) ? "is a directory" : strerror(errno));
			return -1;
		}
		return 0;
	}
	slash = strrchr(f, '/');
	if (!slash)
		strcpy(dir, ".");
	else
		snprintf(dir, sizeof(dir), "%.*s", slash == f ? 1 : (int)(slash - f), f);
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, W_OK | X_OK) != 0) {
		snprintf(why, why_len, "log.file: %s: cannot be created in %s", f, dir);
		return -1;
	}
	return 0;
}

static int check_local_bases(const struct rmx_config *cfg, char *why, size_t why_len)
{
	for (uint32_t i = 0; i < cfg->route_count; i++) {
		const struct config_hop *h = &cfg->routes[i].hops[0];
		char key[64];

		if (h->kind != CONFIG_HOP_MAILDIR && h->kind != CONFIG_HOP_MBOX)
			continue;
		snprintf(key, sizeof(key), "routes[%u].to", i);
		if (check_dir(key, h->path, why, why_len) < 0)
			return -1;
	}
	return 0;
}

/* Every TLS context the shards build, built the same way: the server's
 * (its keys checked by a test handshake) and each route's client one (its
 * ca_file must hold a certificate). */
static int check_tls(const struct rmx_config *cfg, char *why, size_t why_len)
{
	char err[TLS_WHY_MAX];
	int rc = 0;

	if (tls_global_init() != 0) {
		snprintf(why, why_len, "tls: library initialisation failed");
		return -1;
	}
	if (cfg->tls.cert_count) {
		struct tls_ctx *ctx = shard_tls_server_ctx(cfg, err, sizeof(err));

		if (!ctx) {
			snprintf(why, why_len, "%.400s", err);
			rc = -1;
		}
		tls_ctx_free(ctx);
	}
	for (uint32_t i = 0; rc == 0 && i < cfg->route_count; i++) {
		const struct config_route *rt = &cfg->routes[i];
		struct tls_params tp = {.role = TLS_ROLE_CLIENT,
					.ca_file = rt->ca_file,
					.verify = rt->tls == CONFIG_RTLS_VERIFY};
		struct tls_ctx *ctx;

		if (rt->tls == CONFIG_RTLS_NONE)
			continue;
		ctx = tls_ctx_new(&tp, err, sizeof(err));
		if (!ctx) {
			snprintf(why, why_len, "routes[%u]: TLS client: %.400s", i, err);
			rc = -1;
		}
		tls_ctx_free(ctx);
	}
	tls_thread_cleanup();
	tls_global_cleanup();
	return rc;
}

static int check_users(const struct rmx_config *cfg, char *why, size_t why_len)
{
	struct auth_users *u = NULL;
	char err[400];

	if (!cfg->auth.users_file)
		return 0;
	if (auth_users_load(cfg->auth.users_file, &u, err, sizeof(err)) != 0) {
		snprintf(why, why_len, "auth.users_file: %s", err);
		return -1;
	}
	auth_users_unref(u);
	return 0;
}

int preflight_check(const struct rmx_config *cfg, bool check_only, char *why, size_t why_len)
{
	if (check_dir("spool.path", cfg->spool.path, why, why_len) < 0 ||
	    check_control(cfg, why, why_len) < 0 || check_log_file(cfg, why, why_len) < 0 ||
	    check_local_bases(cfg, why, why_len) < 0 || check_users(cfg, why, why_len) < 0 ||
	    check_tls(cfg, why, why_len) < 0)
		return -1;
	/* Start-up probes the addresses itself, later (shard_listeners_probe);
	 * a check may run beside a live server, which holds them. */
	if (check_only && shard_listeners_probe(cfg, true, why, why_len) < 0)
		return -1;
	return 0;
}

/* ---- warnings --------------------------------------------------------------- */

struct warner {
	void (*warn)(void *arg, const char *line);
	void *arg;
	unsigned count;
};

static void warnf(struct warner *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warnf(struct warner *w, const char *fmt, ...)
{
	char line[PREFLIGHT_LINE_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	w->warn(w->arg, line);
	w->count++;
}

static void warn_unrouted(const struct rmx_config *cfg, struct warner *w)
{
	for (uint32_t i = 0; i < cfg->relay_domain_count; i++) {
		const struct config_domain *d = &cfg->relay_domains[i];
		char name[300];

		/* A name inside "*.x" stands for the whole suffix. */
		snprintf(name, sizeof(name), "%s%s", d->wildcard ? "preflight." : "", d->name);
		if (!config_route_find(cfg, name, strlen(name)))
			warnf(w,
			      "relay.domains: mail for %s%s is accepted but no route delivers it "
			      "(it stays queued until max_age_s, then bounces)",
			      d->wildcard ? "*." : "", d->name);
	}
}

static void warn_open_relay(const struct rmx_config *cfg, struct warner *w)
{
	for (uint32_t i = 0; i < cfg->relay_network_count; i++)
		if (cfg->relay_networks[i].prefix_len == 0)
			warnf(w,
			      "relay.networks[%u]: %s lets every client relay to any domain (an "
			      "open relay)",
			      i, cfg->relay_networks[i].family == AF_INET ? "0.0.0.0/0" : "::/0");
}

/* Is addr one of this host's addresses (loopback included)? */
static bool addr_is_local(const struct sockaddr_storage *ss)
{
	struct ifaddrs *ifs, *i;
	bool local = false;

	if (ss->ss_family == AF_INET &&
	    (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127)
		return true;
	if (ss->ss_family == AF_INET6 &&
	    IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr))
		return true;
	if (getifaddrs(&ifs) != 0)
		return false;
	for (i = ifs; i && !local; i = i->ifa_next) {
		if (!i->ifa_addr || i->ifa_addr->sa_family != ss->ss_family)
			continue;
		if (ss->ss_family == AF_INET)
			local = ((const struct sockaddr_in *)(const void *)i->ifa_addr)
				    ->sin_addr.s_addr ==
				((const struct sockaddr_in *)ss)->sin_addr.s_addr;
		else
			local = IN6_ARE_ADDR_EQUAL(
			    &((const struct sockaddr_in6 *)(const void *)i->ifa_addr)->sin6_addr,
			    &((const struct sockaddr_in6 *)ss)->sin6_addr);
	}
	freeifaddrs(ifs);
	return local;
}

/* A hop that is one of our own listeners sends mail round in a loop until
 * the Received: count stops it. */
static bool hop_is_listener(const struct config_hop *h, const struct config_listener *l)
{
	if (!config_addr_overlap(&h->addr, &l->addr))
		return false;
	if (l->addr.ss_family == AF_INET
		? ((const struct sockaddr_in *)&l->addr)->sin_addr.s_addr != htonl(INADDR_ANY)
		: !IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)&l->addr)->sin6_addr))
		return true; /* the same address */
	return addr_is_local(&h->addr);
}

static void warn_loops(const struct rmx_config *cfg, struct warner *w)
{
	for (uint32_t i = 0; i < cfg->route_count; i++)
		for (uint32_t k = 0; k < cfg->routes[i].hop_count; k++) {
			const struct config_hop *h = &cfg->routes[i].hops[k];

			if (h->kind != CONFIG_HOP_SMTP && h->kind != CONFIG_HOP_LMTP)
				continue;
			for (uint32_t j = 0; j < cfg->listener_count; j++)
				if (hop_is_listener(h, &cfg->listeners[j]))
					warnf(w,
					      "routes[%u].to: %s is ringmx's own listener %s (a "
					      "mail loop)",
					      i, h->text, cfg->listeners[j].name);
		}
}

static void warn_users(const struct rmx_config *cfg, struct warner *w)
{
	struct auth_users *u = NULL;
	char err[400];

	if (!cfg->auth.users_file || auth_users_load(cfg->auth.users_file, &u, err, sizeof(err)))
		return;
	if (auth_users_count(u) == 0)
		warnf(w, "auth.users_file: %s holds no user: every AUTH will fail",
		      cfg->auth.users_file);
	auth_users_unref(u);
}

unsigned preflight_warnings(const struct rmx_config *cfg, void (*warn)(void *arg, const char *line),
			    void *arg)
{
	struct warner w = {.warn = warn, .arg = arg};

	warn_unrouted(cfg, &w);
	warn_open_relay(cfg, &w);
	warn_loops(cfg, &w);
	warn_users(cfg, &w);
	return w.count;
}
