/*
 * main — parse and check the config, recover the spool, start the shards,
 * then serve signals (signalfd), the control socket and the log drain until
 * SIGTERM/SIGINT, and stop in order: shards drain (421 to sessions, pending
 * commits finish), then the process exits 0.
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/pool.h"
#include "auth/throttle.h"
#include "auth/users.h"
#include "config.h"
#include "control.h"
#include "log.h"
#include "queue/spool.h"
#include "ring/ring.h"
#include "shard.h"
#include "tls/tls.h"

#define MAIN_POLL_MS 50 /* log drain period */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: ringmx [-c FILE]         run in the foreground (default: embedded config)\n"
		"       ringmx --check-config FILE  validate FILE and exit 0 (ok) or 1\n");
}

/* Adopt the directories of shards that no longer run (a previous run had
 * more), then recover every shard directory, and return the largest id
 * per shard in max_ids (ids of every directory count: an adopted one holds
 * other shards' ids). */
static void recover_spool(const struct rmx_config *cfg, uint64_t *max_ids)
{
	uint64_t prefix_max[SPOOL_ID_PREFIXES] = {0};
	char why[512];
	uint64_t total = 0;

	if (spool_adopt(cfg->spool.path, cfg->shards, why, sizeof(why)) != 0)
		fatal("spool adoption failed: %s", why);
	for (uint32_t shard = 0; shard < cfg->shards; shard++) {
		uint64_t msgs;

		if (spool_recover(cfg->spool.path, shard, &msgs, prefix_max, why, sizeof(why)) != 0)
			fatal("spool recovery failed: %s", why);
		total += msgs;
	}
	for (uint32_t shard = 0; shard < cfg->shards && shard < SPOOL_ID_PREFIXES; shard++)
		max_ids[shard] = prefix_max[shard];
	log_msg(LOG_INFO, "event=spool_recovered path=%s commits=%llu", cfg->spool.path,
		(unsigned long long)total);
}

/* Maildir and mbox bases are created at start when missing (the embedded
 * default delivers into ./maildir); one that cannot be made stops the
 * start, naming the route. */
static void local_bases(const struct rmx_config *cfg)
{
	for (uint32_t i = 0; i < cfg->route_count; i++) {
		const struct config_hop *h = &cfg->routes[i].hops[0];
		char tmp[PATH_MAX];

		if (h->kind != CONFIG_HOP_MAILDIR && h->kind != CONFIG_HOP_MBOX)
			continue;
		snprintf(tmp, sizeof(tmp), "%s", h->path);
		for (char *p = tmp + 1;; p++) {
			char c = *p;

			if (c != '/' && c != '\0')
				continue;
			*p = '\0';
			if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
				fatal("routes[%u].to: cannot create %s: %s", i, tmp,
				      strerror(errno));
			*p = c;
			if (c == '\0')
				break;
		}
	}
}

/* Certificates and keys are loaded the way the shards will load them, so
 * --check-config catches a key that does not match its certificate. */
static int check_tls(const struct rmx_config *cfg, char *why, size_t why_len)
{
	struct tls_ctx *ctx;
	char err[TLS_WHY_MAX];

	if (cfg->tls.cert_count == 0)
		return 0;
	if (tls_global_init() != 0) {
		snprintf(why, why_len, "tls: library initialisation failed");
		return -1;
	}
	ctx = shard_tls_server_ctx(cfg, err, sizeof(err));
	int rc = ctx ? 0 : -1;

	if (!ctx)
		snprintf(why, why_len, "%.400s", err);
	tls_ctx_free(ctx);
	tls_thread_cleanup();
	tls_global_cleanup();
	return rc;
}

static int signals_block(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	/* Blocked before any thread starts, so every thread inherits the mask
	 * and only the signalfd sees them. */
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

static void post_ctl(void *ctx, uint32_t shard, struct dctl_req *req)
{
	shard_ctl(&((struct shard *)ctx)[shard], req);
}

static void main_loop(const struct rmx_config *cfg, int sfd, int cfd, struct shard *shards)
{
	for (;;) {
		struct pollfd p[2] = {{.fd = sfd, .events = POLLIN}, {.fd = cfd, .events = POLLIN}};
		struct signalfd_siginfo si;

		poll(p, 2, MAIN_POLL_MS);
		log_drain();
		if (p[1].revents & POLLIN)
			control_serve(cfd, cfg, post_ctl, shards);
		if (!(p[0].revents & POLLIN) || read(sfd, &si, sizeof(si)) != sizeof(si))
			continue;
		if (si.ssi_signo == SIGHUP) {
			log_msg(LOG_WARN, "event=reload status=unsupported "
					  "reason=\"reload is not built yet; restart to apply\"");
			continue;
		}
		log_msg(LOG_INFO, "event=stopping signal=%s",
			si.ssi_signo == SIGTERM ? "TERM" : "INT");
		return;
	}
}

static struct rmx_config *load(int argc, char **argv, bool *check_only)
{
	char err[CONFIG_ERR_MAX];
	const char *file = NULL;
	struct rmx_config *cfg;

	*check_only = false;
	for (int i = 1; i < argc; i++) {
		if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) &&
		    i + 1 < argc) {
			file = argv[++i];
		} else if (strcmp(argv[i], "--check-config") == 0 && i + 1 < argc) {
			file = argv[++i];
			*check_only = true;
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			exit(0);
		} else {
			usage(stderr);
			exit(2);
		}
	}
	cfg = file ? config_load(file, err, sizeof(err)) : config_default(err, sizeof(err));
	if (!cfg) {
		fprintf(stderr, "%s\n", err);
		exit(1);
	}
	return cfg;
}

int main(int argc, char **argv)
{
	char why[512];
	bool check_only;
	struct rmx_config *cfg = load(argc, argv, &check_only);
	struct shard *shards;
	uint64_t *max_ids;
	int sfd, cfd;

	if (check_only) {
		int rc = check_tls(cfg, why, sizeof(why));

		if (rc == 0 && cfg->auth.users_file) {
			struct auth_users *u = NULL;
			char err[400];

			rc = auth_users_load(cfg->auth.users_file, &u, err, sizeof(err));
			if (rc != 0)
				snprintf(why, sizeof(why), "auth.users_file: %s", err);
			else
				auth_users_unref(u);
		}

		if (rc != 0) {
			fprintf(stderr, "%s\n", why);
			config_free(cfg);
			return 1;
		}
		printf("config ok\n");
		config_free(cfg);
		return 0;
	}
	log_setup(cfg->log.level, cfg->log.json);
	if (ring_probe(why, sizeof(why)) != 0)
		fatal("%s", why);
	if (cfg->spool.durability == CONFIG_DURABILITY_NONE)
		log_msg(LOG_WARN, "event=durability_none message=\"UNSAFE: spool.durability is "
				  "none; accepted mail is NOT synced before 250 and a crash "
				  "loses it; use only for benchmarks\"");
	sfd = signals_block();
	if (sfd < 0 || shard_globals_init(cfg) != 0)
		fatal("start-up: %s", strerror(errno));
	if (spool_lock_root(cfg->spool.path, why, sizeof(why)) < 0)
		fatal("%s", why);
	/* A socket left by a process that died (kill -9): gone before the
	 * shards start, so the socket appearing again means we are up. */
	unlink(cfg->control.socket);
	shards = calloc(cfg->shards, sizeof(*shards));
	max_ids = calloc(cfg->shards, sizeof(*max_ids));
	if (!shards || !max_ids)
		fatal("out of memory");
	recover_spool(cfg, max_ids);
	local_bases(cfg);
	/* Server certificates, and client contexts of routes that may TLS. */
	if (tls_global_init() != 0)
		fatal("TLS library initialisation failed");
	struct auth_users *users = NULL;
	struct auth_throttle *throttle = NULL;

	if (cfg->auth.users_file) {
		struct auth_throttle_config tc = {.entries = 65536,
						  .base_delay_ms = cfg->auth.failure_delay_ms,
						  .max_delay_ms = cfg->auth.failure_delay_ms * 16,
						  .failures_max = cfg->auth.failures_max,
						  .window_ms = 15 * 60 * 1000,
						  .v6_prefix_len = 64};

		if (auth_users_load(cfg->auth.users_file, &users, why, sizeof(why)) != 0)
			fatal("auth.users_file: %s", why);
		if (auth_throttle_create(&tc, &throttle) != 0)
			fatal("auth throttle: %s", strerror(errno));
		log_msg(LOG_INFO, "event=users_loaded file=%s users=%u", cfg->auth.users_file,
			auth_users_count(users));
	}
	shard_auth_setup(users, throttle);
	/* Helper threads: local delivery and bounces (blocking work). */
	struct hpool_config pc = {.threads = cfg->shards < 2 ? 2 : cfg->shards,
				  .shards = cfg->shards,
				  .queue_size = 4096,
				  .shard_inflight = 512};
	struct hpool *pool;

	if (hpool_create(&pc, &pool) != 0)
		fatal("helper pool: %s", strerror(errno));
	struct deliver_shared *dq = deliver_shared_new(cfg->shards);

	if (!dq)
		fatal("delivery queue: out of memory");
	for (uint32_t i = 0; i < cfg->shards; i++) {
		struct deliver_loaded *loaded = NULL;

		if (deliver_load(&loaded, cfg->spool.path, i, why, sizeof(why)) != 0)
			fatal("queue load failed: %s", why);
		log_msg(LOG_INFO, "event=queue_loaded shard=%u messages=%u", i,
			deliver_loaded_count(loaded));
		if (shard_start(&shards[i], i, cfg, max_ids[i], loaded, pool, dq) != 0)
			fatal("shard %u: %s", i, shards[i].why);
	}
	/* Last: the control socket appearing means every shard is up. */
	cfd = control_open(cfg, why, sizeof(why));
	if (cfd < 0)
		fatal("%s", why);
	log_msg(LOG_INFO, "event=started shards=%u listeners=%u hostname=%s", cfg->shards,
		cfg->listener_count, cfg->hostname);
	main_loop(cfg, sfd, cfd, shards);
	control_close(cfd, cfg);
	for (uint32_t i = 0; i < cfg->shards; i++)
		shard_stop(&shards[i]);
	for (uint32_t i = 0; i < cfg->shards; i++) {
		shard_join(&shards[i]);
		log_drain();
	}
	for (uint32_t i = 0; i < cfg->shards; i++)
		shard_release(&shards[i]);
	deliver_shared_free(dq);
	hpool_destroy(pool);
	auth_throttle_destroy(throttle);
	if (users)
		auth_users_unref(users);
	tls_global_cleanup();
	log_msg(LOG_INFO, "event=stopped");
	log_drain();
	free(shards);
	free(max_ids);
	config_free(cfg);
	close(sfd);
	return 0;
}
