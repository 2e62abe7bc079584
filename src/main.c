/*
 * main — parse and check the config, recover the spool, start the shards,
 * then serve signals (signalfd) and the log drain until SIGTERM/SIGINT (the
 * control socket has threads of its own, control.h), and stop in order:
 * control clients end, shards drain (421 to sessions, pending commits
 * finish), then the process exits 0.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "admit.h"
#include "auth/throttle.h"
#include "auth/users.h"
#include "config/config.h"
#include "control.h"
#include "filters/flt.h"
#include "hpool/hpool.h"
#include "log/log.h"
#include "preflight.h"
#include "queue/spool.h"
#include "ring/ring.h"
#include "shard.h"
#include "tls/tls.h"

#define MAIN_POLL_MS  50 /* log drain period */
#define TABLE_CHECK_S 1	 /* file tables: how often their files are looked at */

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

/* The control socket's directory is made when missing, as the spool's is
 * (e.g. /run/ringmx after a reboot); preflight checked that it can be. */
static void control_dir_make(const struct rmx_config *cfg)
{
	char dir[PATH_MAX];
	char *slash;

	snprintf(dir, sizeof(dir), "%s", cfg->control.socket);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return;
	*slash = '\0';
	for (char *p = dir + 1;; p++) {
		char c = *p;

		if (c != '/' && c != '\0')
			continue;
		*p = '\0';
		if (mkdir(dir, 0750) != 0 && errno != EEXIST)
			fatal("control.socket: cannot create %s: %s", dir, strerror(errno));
		*p = c;
		if (c == '\0')
			break;
	}
}

static void warn_stderr(void *arg, const char *line)
{
	(void)arg;
	fprintf(stderr, "warning: %s\n", line);
}

static void warn_log(void *arg, const char *line)
{
	(void)arg;
	log_msg(LOG_WARN, "event=config_warning message=\"%s\"", line);
}

/*
 * Every signal an operator or a tool sends on purpose is blocked before any
 * thread starts, so every thread inherits the mask and only the signalfd
 * sees them: none of them kills the process (whose shard threads still hold
 * log lines in their rings).  SIGPIPE is ignored: a control client or a
 * log reader that went away is an error on that write, not the end.
 */
static int signals_block(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

static void post_ctl(void *ctx, uint32_t shard, struct dctl_req *req)
{
	shard_ctl(&((struct shard *)ctx)[shard], req);
}

/* One signal; false when it asks the process to stop. */
static bool signal_handle(uint32_t signo)
{
	switch (signo) {
	case SIGHUP:
		log_msg(LOG_WARN, "event=reload status=unsupported "
				  "reason=\"reload is not built yet; restart to apply\"");
		return true;
	case SIGUSR1: /* logrotate: the file was moved, write to a new one */
		log_reopen();
		return true;
	case SIGUSR2:
		log_msg(LOG_INFO, "event=signal signal=USR2 action=ignored");
		return true;
	case SIGTERM:
	case SIGINT:
		log_msg(LOG_INFO, "event=stopping signal=%s", signo == SIGTERM ? "TERM" : "INT");
		return false;
	default:
		abort(); /* only the signals of signals_block() reach the signalfd */
	}
}

/* The main thread drains the log and waits for signals; control clients are
 * served on their own threads (control.h), so nothing here ever waits on a
 * peer. */
static void main_loop(int sfd, const struct flt_rules *rules)
{
	uint64_t next_refresh = 0;

	for (;;) {
		struct pollfd p = {.fd = sfd, .events = POLLIN};
		struct signalfd_siginfo si;
		struct timespec now;

		poll(&p, 1, MAIN_POLL_MS);
		log_drain();
		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((uint64_t)now.tv_sec >= next_refresh) {
			/* File tables changed on disk are read again, off the shards. */
			flt_tables_refresh(rules);
			next_refresh = (uint64_t)now.tv_sec + TABLE_CHECK_S;
		}
		if (!(p.revents & POLLIN) || read(sfd, &si, sizeof(si)) != sizeof(si))
			continue;
		if (!signal_handle(si.ssi_signo))
			return;
	}
}

static struct rmx_config *load(int argc, char **argv, bool *check_only, struct flt_rules **rules)
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
	/* The filter chains are part of the config: a rule that does not
	 * compile stops the start (and --check-config) with its JSON path. */
	*rules = flt_compile(cfg, err, sizeof(err));
	if (!*rules) {
		fprintf(stderr, "%s\n", err);
		config_free(cfg);
		exit(1);
	}
	return cfg;
}

/* --check-config: everything start-up would refuse fails here too; likely
 * mistakes are one warning line each and still exit 0. */
static int check_config(struct rmx_config *cfg, struct flt_rules *rules)
{
	char why[512];
	int rc = preflight_check(cfg, true, why, sizeof(why));

	flt_rules_free(rules);
	if (rc != 0) {
		fprintf(stderr, "%s\n", why);
		config_free(cfg);
		return 1;
	}
	preflight_warnings(cfg, warn_stderr, NULL);
	printf("config ok\n");
	config_free(cfg);
	return 0;
}

/* What must hold before anything is started: logging, the ring, the
 * config against the machine, the listeners, the spool lock and the
 * control socket's place.  Returns the signalfd. */
static int start_checks(const struct rmx_config *cfg)
{
	char why[512];
	int sfd;

	if (log_setup(cfg->log.level, cfg->log.json, cfg->log.file, why, sizeof(why)) != 0)
		fatal("%s", why);
	if (ring_probe(why, sizeof(why)) != 0 || preflight_check(cfg, false, why, sizeof(why)) != 0)
		fatal("%s", why);
	preflight_warnings(cfg, warn_log, NULL);
	control_dir_make(cfg);
	if (cfg->spool.durability == CONFIG_DURABILITY_NONE)
		log_msg(LOG_WARN, "event=durability_none message=\"UNSAFE: spool.durability is "
				  "none; accepted mail is NOT synced before 250 and a crash "
				  "loses it; use only for benchmarks\"");
	if (shard_listeners_probe(cfg, false, why, sizeof(why)) < 0)
		fatal("%s", why);
	sfd = signals_block();
	if (sfd < 0 || admit_init(cfg) != 0)
		fatal("start-up: %s", strerror(errno));
	if (spool_lock_root(cfg->spool.path, why, sizeof(why)) < 0)
		fatal("%s", why);
	/* A socket left by a process that died (kill -9) is gone before the
	 * shards start, so the socket appearing again means we are up; one in
	 * use, or anything that is not a socket, stops the start. */
	if (control_prepare(cfg->control.socket, why, sizeof(why)) != 0)
		fatal("%s", why);
	return sfd;
}

/* The users_file and its failure throttle, shared by every shard. */
static void start_auth(const struct rmx_config *cfg, struct auth_users **users,
		       struct auth_throttle **throttle)
{
	char why[512];

	*users = NULL;
	*throttle = NULL;
	if (cfg->auth.users_file) {
		struct auth_throttle_config tc = {.entries = 65536,
						  .base_delay_ms = cfg->auth.failure_delay_ms,
						  .max_delay_ms = cfg->auth.failure_delay_ms * 16,
						  .failures_max = cfg->auth.failures_max,
						  .window_ms = 15 * 60 * 1000,
						  .v6_prefix_len = 64};

		if (auth_users_load(cfg->auth.users_file, users, why, sizeof(why)) != 0)
			fatal("auth.users_file: %s", why);
		if (auth_throttle_create(&tc, throttle) != 0)
			fatal("auth throttle: %s", strerror(errno));
		log_msg(LOG_INFO, "event=users_loaded file=%s users=%u", cfg->auth.users_file,
			auth_users_count(*users));
	}
	shard_auth_setup(*users, *throttle);
}

/* Each shard with the queue it loaded from its spool directory. */
static void start_shards(const struct rmx_config *cfg, struct shard *shards,
			 const uint64_t *max_ids, struct hpool *pool, struct deliver_shared *dq)
{
	char why[512];

	for (uint32_t i = 0; i < cfg->shards; i++) {
		struct deliver_loaded *loaded = NULL;

		if (deliver_load(&loaded, cfg->spool.path, i, why, sizeof(why)) != 0)
			fatal("queue load failed: %s", why);
		log_msg(LOG_INFO, "event=queue_loaded shard=%u messages=%u", i,
			deliver_loaded_count(loaded));
		if (shard_start(&shards[i], i, cfg, max_ids[i], loaded, pool, dq) != 0)
			fatal("shard %u: %s", i, shards[i].why);
	}
}

/* The control socket first (a client may wait for a shard), then every
 * shard drains and is joined, then the helpers stop, then the shards'
 * resources go. */
static void stop_all(const struct rmx_config *cfg, struct control *ctl, struct shard *shards,
		     struct hpool *pool)
{
	control_stop(ctl);
	for (uint32_t i = 0; i < cfg->shards; i++)
		shard_stop(&shards[i]);
	for (uint32_t i = 0; i < cfg->shards; i++) {
		shard_join(&shards[i]);
		log_drain();
	}
	/* A shard may leave at the end of its grace with helper jobs still
	 * out (password checks queued behind slow hashes).  Each completion
	 * writes to its shard's eventfd: the helpers are stopped (queued jobs
	 * cancelled, running ones finished) before shard_release closes those,
	 * or a late write fails with EBADF (the helper's assertion aborts) or
	 * lands in a file that took the descriptor number. */
	hpool_stop(pool, HPOOL_STOP_CANCEL);
	for (uint32_t i = 0; i < cfg->shards; i++)
		shard_release(&shards[i]);
}

int main(int argc, char **argv)
{
	char why[512];
	bool check_only;
	struct flt_rules *rules;
	struct rmx_config *cfg = load(argc, argv, &check_only, &rules);
	struct control *ctl = NULL;
	struct auth_users *users;
	struct auth_throttle *throttle;
	struct hpool *pool;

	if (check_only)
		return check_config(cfg, rules);
	int sfd = start_checks(cfg);
	struct shard *shards = calloc(cfg->shards, sizeof(*shards));
	uint64_t *max_ids = calloc(cfg->shards, sizeof(*max_ids));

	if (!shards || !max_ids)
		fatal("out of memory");
	recover_spool(cfg, max_ids);
	local_bases(cfg);
	/* Server certificates, and client contexts of routes that may TLS. */
	if (tls_global_init() != 0)
		fatal("TLS library initialisation failed");
	start_auth(cfg, &users, &throttle);
	shard_filters_setup(rules);
	/* Helper threads: local delivery, bounces and password checks. */
	struct hpool_config pc = {.threads = cfg->shards < 2 ? 2 : cfg->shards,
				  .shards = cfg->shards,
				  .queue_size = 4096,
				  .shard_inflight = 512};

	if (hpool_create(&pc, &pool) != 0)
		fatal("helper pool: %s", strerror(errno));
	struct deliver_shared *dq = deliver_shared_new(cfg->shards);

	if (!dq)
		fatal("delivery queue: out of memory");
	start_shards(cfg, shards, max_ids, pool, dq);
	/* Last: the control socket appearing means every shard is up. */
	if (control_start(&ctl, cfg, rules, post_ctl, shards, why, sizeof(why)) != 0)
		fatal("%s", why);
	log_msg(LOG_INFO, "event=started shards=%u listeners=%u hostname=%s", cfg->shards,
		cfg->listener_count, cfg->hostname);
	main_loop(sfd, rules);
	stop_all(cfg, ctl, shards, pool);
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
	flt_rules_free(rules);
	config_free(cfg);
	close(sfd);
	return 0;
}
