/*
 * shard — the per-core loop.  See shard.h.
 *
 * Here: the process-wide connection accounting, listeners and accept, the
 * tick, the stop, the loop and its dispatch (one switch over the op's
 * owner, ring/ops.h), set-up and teardown.  The inbound connections
 * themselves are served connections of the connection layer (net/net.h),
 * driven for the SMTP session by conn.c (shard_conn.h).
 */
#include "shard.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "admit.h"
#include "hpool/hpool.h"
#include "log/log.h"
#include "net/net.h"
#include "shard_conn.h"
#include "tls/tls.h"

#define SHARD_TICK_MS	     1000
#define SHARD_STOP_GRACE_MS  10000
#define SHARD_STOP_LINGER_MS 2000 /* output of a closing client at shutdown */
#define SHARD_PROBE_WAIT_MS  3000 /* how long a listener address may stay "in use" */

/* ---- accept ----------------------------------------------------------------- */

/* The compiled filter chains, the same for every shard (shard_filters_setup). */
static const struct flt_rules *g_rules;

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void listener_arm(struct shard *sh, uint32_t i)
{
	struct io_uring_sqe *sqe = ring_sqe(&sh->ring);

	/* No address buffer: with multishot accept one buffer would be
	 * overwritten by each connection; getpeername() is exact. */
	io_uring_prep_multishot_accept(sqe, sh->listeners[i].fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ring_ud(OP_ACCEPT, 0, 0, i));
	sh->listeners[i].armed = true;
}

/* A refused client gets its 421 from static memory and a linked close:
 * no slot, nothing to reap.  HARDLINK: the close must run even when the
 * send fails (a client already gone), or the fd would leak. */
static void conn_refuse(struct shard *sh, int fd, const char *reply)
{
	struct io_uring_sqe *sqe = ring_sqe(&sh->ring);

	io_uring_prep_send(sqe, fd, reply, strlen(reply), MSG_NOSIGNAL | MSG_DONTWAIT);
	sqe->flags |= IOSQE_IO_HARDLINK;
	io_uring_sqe_set_data64(sqe, ring_ud(OP_REFUSE_SEND, 0, 0, (uint32_t)fd));
	sqe = ring_sqe(&sh->ring);
	io_uring_prep_close(sqe, fd);
	io_uring_sqe_set_data64(sqe, ring_ud(OP_REFUSE_CLOSE, 0, 0, (uint32_t)fd));
}

static void shard_on_accept(struct shard *sh, uint32_t li, struct io_uring_cqe *cqe)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	const char *why;
	char ip[CONN_PEER_MAX] = "unknown";
	int fd = cqe->res;

	/* Multishot ended (EMFILE, ENFILE, ENOMEM...): re-armed by the next
	 * tick, so an exhausted fd table does not spin the loop. */
	if (!(cqe->flags & IORING_CQE_F_MORE))
		sh->listeners[li].armed = false;
	if (fd < 0) {
		if (fd != -ECANCELED)
			log_msg(LOG_WARN, "event=accept_error shard=%u error=\"%s\"", sh->id,
				strerror(-fd));
		return;
	}
	if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
		memset(&ss, 0, sizeof(ss));
	why = sh->stopping			       ? "shutdown"
	      : net_active(sh->net_in) == sh->conn_max ? "connections"
						       : admit_take(&ss);
	if (why) {
		struct conn tmp = {.peer = ss};

		conn_peer_format(&tmp);
		memcpy(ip, tmp.peer_ip, sizeof(ip));
		log_msg(LOG_INFO, "event=refused shard=%u client=%s reason=%s", sh->id, ip, why);
		conn_refuse(sh, fd,
			    strcmp(why, "connections_per_ip") == 0
				? "421 4.7.0 Too many connections from your address\r\n"
				: "421 4.3.2 Too many connections, try again later\r\n");
		return;
	}
	conn_accepted(sh, fd, li, &ss);
}

/* ---- timers and stop -------------------------------------------------------- */

static void shard_arm_tick(struct shard *sh)
{
	sh->tick_ts.tv_sec = SHARD_TICK_MS / 1000;
	sh->tick_ts.tv_nsec = 0;
	ring_prep_timeout(&sh->ring, &sh->tick_ts, ring_ud(OP_TICK, 0, 0, 0));
}

static void shard_arm_wake(struct shard *sh)
{
	struct io_uring_sqe *sqe = ring_sqe(&sh->ring);

	io_uring_prep_read(sqe, sh->wake_fd, &sh->wake_buf, sizeof(sh->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, ring_ud(OP_WAKE, 0, 0, 0));
}

/* Idle and session timers: a 1 s sweep over the active list.  Cheaper
 * than a timeout SQE per connection and precise enough for limits that
 * are counted in seconds. */
static void shard_on_tick(struct shard *sh)
{
	net_tick(sh->net_in);
	for (uint32_t i = 0; i < sh->cfg->listener_count && !sh->stopping; i++)
		if (!sh->listeners[i].armed)
			listener_arm(sh, i);
	deliver_tick(sh->dlv);
	if (!sh->stopping || sh->now_ms < sh->stop_deadline_ms)
		shard_arm_tick(sh);
}

static void shard_begin_stop(struct shard *sh)
{
	char reply[SMTP_REPLY_MAX];

	sh->stopping = true;
	sh->stop_deadline_ms = sh->now_ms + SHARD_STOP_GRACE_MS;
	for (uint32_t i = 0; i < sh->cfg->listener_count; i++) {
		ring_prep_cancel(&sh->ring, ring_ud(OP_ACCEPT, 0, 0, i),
				 ring_ud(OP_LISTEN_CANCEL, 0, 0, i));
	}
	deliver_stop(sh->dlv);
	snprintf(reply, sizeof(reply), "421 4.3.2 %s Service shutting down", sh->cfg->hostname);
	conn_stop_all(sh, reply, sh->now_ms + SHARD_STOP_LINGER_MS);
}

static void shard_on_wake(struct shard *sh)
{
	struct hpool_done done[64];
	struct dctl_req *req;
	uint32_t n;

	while ((n = hpool_reap(sh->pool, sh->id, done, 64)) > 0)
		for (uint32_t i = 0; i < n; i++) {
			if (done[i].kind == HPOOL_JOB) {
				deliver_helper_done(sh->dlv, &done[i]);
				continue;
			}
			/* An inline job is AUTH's password check (the only one). */
			conn_helper_done(sh, done[i].cookie, done[i].result);
		}
	deliver_wake(sh->dlv); /* tickets other shards ran for us */
	req = atomic_exchange(&sh->ctl, NULL);
	/* A request that changed state is answered by the engine once its
	 * records are durable. */
	if (req && deliver_ctl(sh->dlv, req))
		sem_post(&req->done);
	if (atomic_load(&sh->stop) && !sh->stopping)
		shard_begin_stop(sh);
	shard_arm_wake(sh);
}

void shard_ctl(struct shard *sh, struct dctl_req *req)
{
	uint64_t one = 1;

	sem_init(&req->done, 0, 0);
	atomic_store(&sh->ctl, req);
	if (write(sh->wake_fd, &one, sizeof(one)) < 0)
		log_msg(LOG_WARN, "event=shard_wake shard=%u error=\"%s\"", sh->id,
			strerror(errno));
	while (sem_wait(&req->done) != 0 && errno == EINTR)
		;
	sem_destroy(&req->done);
}

/* ---- the loop --------------------------------------------------------------- */

static void handle_shard_cqe(struct shard *sh, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	uint8_t op = ring_ud_op(ud);

	switch (op) {
	case OP_ACCEPT:
		shard_on_accept(sh, ring_ud_slot(ud), cqe);
		break;
	case OP_TICK:
		shard_on_tick(sh);
		break;
	case OP_WAKE:
		shard_on_wake(sh);
		break;
	case OP_REFUSE_SEND:
	case OP_REFUSE_CLOSE:
		break;
	case OP_LISTEN_CANCEL:
		break;
	default:
		abort(); /* a shard op without a handler */
	}
}

/* One switch on the owner of the op (ring/ops.h): a completion whose op no
 * module owns was never submitted, and is a broken program. */
/* The connection table a NET completion belongs to (net.h: the aux byte). */
static struct net_table *shard_net(struct shard *sh, uint8_t id)
{
	switch ((enum net_table_id)id) {
	case NET_TABLE_OUTBOUND:
		return deliver_net(sh->dlv);
	case NET_TABLE_INBOUND:
		return sh->net_in;
	case NET_TABLE_COUNT:
	default:
		abort();
	}
}

static void handle_cqe(struct shard *sh, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;

	switch (ops_owner(ring_ud_op(ud))) {
	case OPS_OWNER_SHARD:
		handle_shard_cqe(sh, cqe);
		break;
	case OPS_OWNER_SPOOL:
		spool_complete(sh->spool, ud, cqe->res);
		break;
	case OPS_OWNER_DNS: /* the resolver serves delivery */
	case OPS_OWNER_DLV:
		deliver_complete(sh->dlv, ud, cqe->res, cqe->flags);
		break;
	case OPS_OWNER_NET:
		net_complete_cqe(shard_net(sh, ring_ud_aux(ud)), ud, cqe->res, cqe->flags);
		break;
	case OPS_OWNER_NONE:
	default:
		abort();
	}
}

static bool shard_done(struct shard *sh)
{
	if (!sh->stopping)
		return false;
	if (sh->now_ms >= sh->stop_deadline_ms)
		return true;
	/* A multishot accept still in the ring holds its listener: closed then,
	 * the socket lives on until the kernel tears the ring down, after exit,
	 * and a restart finds the address in use.  Wait for its cancellation. */
	for (uint32_t i = 0; i < sh->cfg->listener_count; i++)
		if (sh->listeners[i].armed)
			return false;
	return net_active(sh->net_in) == 0 && !spool_busy(sh->spool) && !deliver_busy(sh->dlv);
}

static void shard_loop(struct shard *sh)
{
	while (!shard_done(sh)) {
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		int rc = ring_submit_wait(&sh->ring);

		if (rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EAGAIN && rc != -EBUSY) {
			log_msg(LOG_ERROR, "event=ring_error shard=%u error=\"%s\"", sh->id,
				strerror(-rc));
			break;
		}
		sh->now_ms = mono_ms();
		io_uring_for_each_cqe(&sh->ring.uring, head, cqe)
		{
			handle_cqe(sh, cqe);
			n++;
		}
		io_uring_cq_advance(&sh->ring.uring, n);
		/* Starved connections first: the body bytes they feed now hold
		 * the buffers they were given, and only a submitted batch gives
		 * them back.  Fed after the flush, those bytes would wait for
		 * the next completion, and with every buffer held by them there
		 * may be none before the tick (TLS uploads
		 * crawling at one batch per tick).  Delivery next: its records
		 * ride this turn's batches.  Group commit: everything committed
		 * in this turn shares one fdatasync per segment. */
		net_rearm_starved(sh->net_in);
		deliver_turn(sh->dlv);
		spool_flush(sh->spool);
	}
}

/* ---- start and stop ----------------------------------------------------------- */

static int listener_open(const struct config_listener *l, char *why, size_t why_len)
{
	int one = 1;
	int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		goto fail;
	/* One socket per shard on the same address: the kernel spreads new
	 * connections over the shards (SO_REUSEPORT). */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
		goto fail;
	if (l->addr.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&l->addr, l->addr_len) != 0 || listen(fd, 4096) != 0)
		goto fail;
	return fd;
fail:
	snprintf(why, why_len, "listener %s: %s", l->name, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}

/* Bind the address once without SO_REUSEPORT: 0, or -errno (-EADDRINUSE:
 * someone listens on it).  SO_REUSEADDR only lets us past our own
 * TIME_WAIT sockets; a listening socket still refuses the bind. */
static int listener_probe_bind(const struct config_listener *l)
{
	int one = 1, rc = 0;
	int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
		rc = -errno;
	if (rc == 0 && l->addr.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (rc == 0 && bind(fd, (const struct sockaddr *)&l->addr, l->addr_len) != 0)
		rc = -errno;
	if (fd >= 0)
		close(fd);
	return rc;
}

/* SO_REUSEPORT lets any process of the same user join a port and take a
 * share of its connections: a second ringmx on another spool, or anything
 * else.  So before the shards bind with it, each address is bound once
 * without it: if something holds the address, this fails and we refuse to
 * start rather than split its mail. */
int shard_listeners_probe(const struct rmx_config *cfg, bool in_use_ok, char *why, size_t why_len)
{
	for (uint32_t i = 0; i < cfg->listener_count; i++) {
		const struct config_listener *l = &cfg->listeners[i];
		int rc = listener_probe_bind(l);

		/* A restart: the instance before us may hold its listening
		 * sockets for a moment after it exited (io_uring releases the
		 * requests that hold them from a kernel worker once the process
		 * is gone).  So "in use" must last before it means another
		 * process; start-up may wait. */
		for (uint32_t ms = 0; rc == -EADDRINUSE && !in_use_ok && ms < SHARD_PROBE_WAIT_MS;
		     ms += 20) {
			usleep(20 * 1000);
			rc = listener_probe_bind(l);
		}
		if (rc == -EADDRINUSE && in_use_ok)
			continue;
		if (rc == -EADDRINUSE) {
			snprintf(why, why_len,
				 "listeners[%u] (%s): the address is already in use by another "
				 "process (another ringmx?)",
				 i, l->name);
			return rc;
		}
		if (rc < 0) {
			snprintf(why, why_len, "listeners[%u] (%s): %s", i, l->name, strerror(-rc));
			return rc;
		}
	}
	return 0;
}

static const struct spool_ops shard_spool_ops;

static void shard_on_durable(void *ctx, struct spool_msg *m, int res)
{
	struct shard *sh = ctx;

	if (m->owner == SPOOL_OWNER_ENGINE) {
		deliver_spool_durable(sh->dlv, m, res);
		return;
	}
	/* Into the queue before the session releases the envelope. */
	if (res == 0)
		deliver_committed(sh->dlv, m);
	conn_spool_durable(sh, m, res);
}

static void shard_on_progress(void *ctx, struct spool_msg *m)
{
	struct shard *sh = ctx;

	if (m->owner == SPOOL_OWNER_ENGINE) {
		deliver_spool_progress(sh->dlv, m);
		return;
	}
	conn_spool_progress(sh, m);
}

static void shard_on_segment(void *ctx, uint64_t seq)
{
	struct shard *sh = ctx;

	deliver_segment(sh->dlv, seq);
}

static const struct spool_ops shard_spool_ops = {.on_durable = shard_on_durable,
						 .on_progress = shard_on_progress,
						 .on_segment = shard_on_segment};

struct tls_ctx *shard_tls_server_ctx(const struct rmx_config *cfg, char *why, size_t why_len)
{
	const char *names[CONFIG_CERTS_MAX][TLS_CERT_NAMES_MAX];
	struct tls_cert_params certs[CONFIG_CERTS_MAX];

	for (uint32_t i = 0; i < cfg->tls.cert_count; i++) {
		const struct config_cert *cc = &cfg->tls.certs[i];

		for (uint32_t k = 0; k < cc->name_count && k < TLS_CERT_NAMES_MAX; k++)
			names[i][k] = cc->names[k];
		certs[i] = (struct tls_cert_params){.cert = cc->cert,
						    .key = cc->key,
						    .names = names[i],
						    .name_count = cc->name_count};
	}
	struct tls_params tp = {.role = TLS_ROLE_SERVER,
				.certs = certs,
				.cert_count = cfg->tls.cert_count,
				.min_version = cfg->tls.min_version,
				.ciphers = cfg->tls.ciphers};
	return tls_ctx_new(&tp, why, why_len);
}

/* What the sessions of this shard may use of it (smtp/session.h). */
static void shard_env_init(struct shard *sh)
{
	struct smtp_env *e = &sh->env;

	*e = (struct smtp_env){.cfg = sh->cfg,
			       .spool = sh->spool,
			       .txpool = sh->txpool,
			       .pool = sh->pool,
			       .pool_shard = sh->id,
			       .users = sh->users,
			       .throttle = sh->throttle,
			       .tls_ctx = sh->tls_ctx,
			       .rules = g_rules,
			       .now_ms = &sh->now_ms,
			       .stopping = &sh->stopping};
	for (uint32_t i = 0; i < sh->cfg->listener_count; i++)
		e->listeners[i] = sh->listeners[i].cfg;
}

/* "ringmx-shard3" in top -H, perf and /proc/PID/task/TID/comm; pinned to
 * its CPU when cpu_affinity says so. */
static void shard_pin_thread(struct shard *sh)
{
	const struct rmx_config *cfg = sh->cfg;
	char name[16];

	snprintf(name, sizeof(name), "ringmx-shard%u", sh->id);
	pthread_setname_np(pthread_self(), name);
	if (cfg->cpu_affinity) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cfg->cpu_affinity[sh->id], &set);
		if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
			log_msg(LOG_WARN, "event=affinity shard=%u cpu=%d error=failed", sh->id,
				cfg->cpu_affinity[sh->id]);
	}
}

/* The connection table, its free list, the transaction pool and the
 * listening sockets, all sized from the config now (invariant 4). */
static int shard_conns_init(struct shard *sh)
{
	const struct rmx_config *cfg = sh->cfg;

	sh->conn_max = cfg->io.max_connections;
	sh->net_in = net_table_served(&sh->ring, NET_TABLE_INBOUND, sh->conn_max, sh->inq_cap,
				      CONN_OUT_MAX, &sh->now_ms);
	sh->conns = calloc(sh->conn_max, sizeof(sh->conns[0]));
	sh->txpool = smtp_tx_pool_new(sh->conn_max, cfg->limits.recipients);
	sh->sessions = smtp_sessions_new(sh->conn_max);
	if (!sh->net_in || !sh->conns || !sh->txpool || !sh->sessions) {
		snprintf(sh->why, sizeof(sh->why), "out of memory sizing %u connections",
			 sh->conn_max);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < sh->conn_max; i++) {
		sh->conns[i].shard = sh;
		sh->conns[i].s = smtp_session_at(sh->sessions, i);
	}
	for (uint32_t i = 0; i < cfg->listener_count; i++) {
		sh->listeners[i].cfg = &cfg->listeners[i];
		sh->listeners[i].fd = listener_open(&cfg->listeners[i], sh->why, sizeof(sh->why));
		if (sh->listeners[i].fd < 0)
			return -EADDRINUSE;
	}
	return 0;
}

static int shard_setup(struct shard *sh)
{
	const struct rmx_config *cfg = sh->cfg;
	int rc;

	shard_pin_thread(sh);
	rc = ring_init(&sh->ring, cfg->io.ring_entries, cfg->io.recv_buffers,
		       cfg->io.recv_buffer_size, sh->why, sizeof(sh->why));
	if (rc < 0)
		return rc;
	/* No connection holds more than an eighth of the pool (invariant 8);
	 * io.recv_buffers is at least 16, so that is two buffers or more. */
	sh->inq_cap =
	    cfg->io.recv_buffers / 8 < NET_INQ_CAP_MAX ? cfg->io.recv_buffers / 8 : NET_INQ_CAP_MAX;
	assert(sh->inq_cap >= 2);
	rc = spool_open(&sh->spool, cfg->spool.path, sh->id, cfg->spool.segment_size,
			cfg->spool.durability == CONFIG_DURABILITY_FSYNC, sh->first_id, &sh->ring,
			&shard_spool_ops, sh, sh->why, sizeof(sh->why));
	if (rc < 0)
		return rc;
	if (cfg->tls.cert_count) {
		sh->tls_ctx = shard_tls_server_ctx(cfg, sh->why, sizeof(sh->why));
		if (!sh->tls_ctx)
			return -EINVAL;
	}
	/* User buffers: plaintext of TLS sessions (at most 4 per connection at
	 * a time) and the input of parked connections on resume.  Buffer ids
	 * are 16 bits, and 0xffff means "none" (SPOOL_NO_BUF). */
	uint32_t users = cfg->io.recv_buffers < 65535u - cfg->io.recv_buffers
			     ? cfg->io.recv_buffers
			     : 65535u - cfg->io.recv_buffers;
	rc = ring_user_bufs_init(&sh->ring, users);
	if (rc < 0) {
		snprintf(sh->why, sizeof(sh->why), "user buffers: %s", strerror(-rc));
		return rc;
	}
	struct deliver_params dp = {.shard = sh->id,
				    .shards = cfg->shards,
				    .cfg = cfg,
				    .ring = &sh->ring,
				    .spool = sh->spool,
				    .pool = sh->pool,
				    .shared = sh->shared};
	rc = deliver_new(&sh->dlv, &dp, sh->loaded, sh->why, sizeof(sh->why));
	sh->loaded = NULL;
	if (rc < 0)
		return rc;
	rc = shard_conns_init(sh);
	if (rc < 0)
		return rc;
	sh->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (sh->wake_fd < 0)
		return -errno;
	deliver_shared_set_wake(sh->shared, sh->id, sh->wake_fd);
	shard_env_init(sh);
	return hpool_shard_attach(sh->pool, sh->id, sh->wake_fd);
}

static void shard_teardown(struct shard *sh)
{
	for (uint32_t i = 0; i < sh->cfg->listener_count; i++)
		if (sh->listeners[i].fd > 0)
			close(sh->listeners[i].fd);
	/* A bounce, move or mailbox job still running on a helper reads the
	 * engine and its segment descriptors: those go in shard_release,
	 * once the helpers have stopped. */
	deliver_stop_io(sh->dlv);
	/* Connections still open at the end of the grace: their sockets and
	 * TLS sessions (before the context they were made from). */
	net_table_free(sh->net_in);
	sh->net_in = NULL;
	if (sh->tls_ctx) {
		tls_ctx_free(sh->tls_ctx);
		sh->tls_ctx = NULL;
		tls_thread_cleanup();
	}
	spool_close(sh->spool);
	sh->spool = NULL;
	smtp_tx_pool_free(sh->txpool);
	smtp_sessions_free(sh->sessions);
	free(sh->conns);
	if (sh->ring.buf_count)
		ring_exit(&sh->ring);
}

static void *shard_main(void *arg)
{
	struct shard *sh = arg;
	int rc;

	log_thread_ring(sh->id);
	sh->now_ms = mono_ms();
	rc = shard_setup(sh);
	if (rc < 0) {
		atomic_store(&sh->start_rc, rc);
		return NULL;
	}
	for (uint32_t i = 0; i < sh->cfg->listener_count; i++)
		listener_arm(sh, i);
	shard_arm_tick(sh);
	shard_arm_wake(sh);
	atomic_store(&sh->start_rc, 0);
	shard_loop(sh);
	log_msg(LOG_INFO,
		"event=shard_stop shard=%u messages=%llu syncs=%llu writes=%llu recv_enobufs=%llu",
		sh->id, (unsigned long long)spool_stats(sh->spool)->messages,
		(unsigned long long)spool_stats(sh->spool)->syncs,
		(unsigned long long)spool_stats(sh->spool)->writes,
		(unsigned long long)net_enobufs(sh->net_in));
	shard_teardown(sh);
	return NULL;
}

static struct auth_users *g_users;
static struct auth_throttle *g_throttle;

void shard_auth_setup(struct auth_users *users, struct auth_throttle *throttle)
{
	g_users = users;
	g_throttle = throttle;
}

void shard_filters_setup(const struct flt_rules *rules)
{
	g_rules = rules;
}

int shard_start(struct shard *sh, uint32_t id, const struct rmx_config *cfg, uint64_t first_id,
		struct deliver_loaded *loaded, struct hpool *pool, struct deliver_shared *shared)
{
	memset(sh, 0, offsetof(struct shard, stop));
	sh->id = id;
	sh->cfg = cfg;
	sh->first_id = first_id;
	sh->loaded = loaded;
	sh->pool = pool;
	sh->shared = shared;
	sh->users = g_users;
	sh->throttle = g_throttle;
	atomic_store(&sh->ctl, NULL);
	sh->wake_fd = -1;
	atomic_store(&sh->stop, false);
	atomic_store(&sh->start_rc, 1);
	if (pthread_create(&sh->thread, NULL, shard_main, sh) != 0)
		return -errno;
	/* Start-up only: wait until the shard is listening or failed. */
	while (atomic_load(&sh->start_rc) > 0)
		usleep(1000);
	return atomic_load(&sh->start_rc);
}

void shard_stop(struct shard *sh)
{
	uint64_t one = 1;

	atomic_store(&sh->stop, true);
	if (sh->wake_fd >= 0 && write(sh->wake_fd, &one, sizeof(one)) < 0)
		log_msg(LOG_WARN, "event=shard_wake shard=%u error=\"%s\"", sh->id,
			strerror(errno));
}

void shard_join(struct shard *sh)
{
	pthread_join(sh->thread, NULL);
}

void shard_release(struct shard *sh)
{
	deliver_free(sh->dlv);
	sh->dlv = NULL;
	if (sh->shared)
		deliver_shared_set_wake(sh->shared, sh->id, -1);
	if (sh->wake_fd >= 0)
		close(sh->wake_fd);
	sh->wake_fd = -1;
}
