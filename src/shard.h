/*
 * shard — one thread per core: its io_uring, listening sockets
 * (SO_REUSEPORT), fixed connection table, spool, and the loop.
 *
 * Owns: struct shard and its conns.  Thread: shard_start()/shard_stop()/
 * shard_join() from main; everything else on the shard's own thread.
 *
 * Its inbound connections are served connections of the connection layer
 * (net/net.h, the NET_TABLE_INBOUND table) driven by conn.c, which gives
 * each SMTP session the functions of smtp/conn.h.
 */
#ifndef RMX_SHARD_H
#define RMX_SHARD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config/config.h"
#include "deliver/deliver.h"
#include "queue/spool.h"
#include "ring/ops.h"
#include "ring/ring.h"
#include "smtp/conn.h"
#include "smtp/session.h"

/* Receive buffers one connection may hold: shard->inq_cap, an eighth of
 * io.recv_buffers but at most NET_INQ_CAP_MAX. */
#define NET_INQ_CAP_MAX 8

struct net_table;
struct tls_conn;
struct tls_ctx;
struct auth_users;
struct auth_throttle;

/* Ring op codes (user_data op byte) of the shard's own completions, inside
 * its range of the op registry (ring/ops.h). */
enum shard_op {
	OP_ACCEPT = OPS_SHARD_FIRST,
	OP_TICK,
	OP_WAKE,
	OP_REFUSE_SEND, /* reply to a refused connection (no slot) */
	OP_REFUSE_CLOSE,
	OP_LISTEN_CANCEL,
	OP_END,
};
static_assert(OP_END - 1 <= OPS_SHARD_LAST, "shard ops inside the shard's range");

struct shard_listener {
	int fd;
	const struct config_listener *cfg;
	struct sockaddr_storage accept_addr;
	socklen_t accept_len;
	bool armed; /* multishot accept in flight */
};

struct shard {
	uint32_t id;
	pthread_t thread;
	const struct rmx_config *cfg;
	struct ring ring;
	struct spool *spool;
	struct shard_listener listeners[CONFIG_LISTENERS_MAX];
	struct net_table *net_in; /* the inbound connections (conn.c) */
	struct conn *conns;	  /* one per slot of net_in */
	uint32_t conn_max;
	struct smtp_tx_pool *txpool;
	int wake_fd;
	uint64_t wake_buf;
	struct __kernel_timespec tick_ts;
	uint64_t now_ms;
	uint32_t inq_cap; /* receive buffers one connection may hold */
	uint64_t first_id;
	struct deliver *dlv;
	struct deliver_loaded *loaded; /* handed to the engine at setup */
	struct hpool *pool;
	struct deliver_shared *shared;
	struct tls_ctx *tls_ctx;	/* NULL: no certificates */
	struct auth_users *users;	/* shared, read-only; NULL: no users_file */
	struct auth_throttle *throttle; /* shared by all shards */
	struct smtp_env env;		/* what its sessions may use of it */
	struct smtp_session *sessions;	/* one per connection slot */
	_Atomic(struct dctl_req *) ctl; /* a control request to answer */
	_Atomic bool stop;
	bool stopping;
	uint64_t stop_deadline_ms;
	_Atomic int start_rc; /* 0 running, >0 starting, <0 failed */
	char why[256];
	char peek_byte[16];
};

/* Start-up, before the shards: is every listener address free?  0, or
 * -errno with why (another process holds it, or it cannot be bound).
 * in_use_ok: only other failures count (--check-config beside a server). */
int shard_listeners_probe(const struct rmx_config *cfg, bool in_use_ok, char *why, size_t why_len);

int shard_start(struct shard *sh, uint32_t id, const struct rmx_config *cfg, uint64_t first_id,
		struct deliver_loaded *loaded, struct hpool *pool, struct deliver_shared *shared);
/* The server TLS context of cfg's certificates (tls.c's parameters built
 * from tls.*); NULL with why.  Shards make one each; --check-config one to
 * test the files. */
struct tls_ctx *shard_tls_server_ctx(const struct rmx_config *cfg, char *why, size_t why_len);

/* Start-up, before shard_start: what AUTH uses (shared by all shards). */
void shard_auth_setup(struct auth_users *users, struct auth_throttle *throttle);
/* Start-up, before shard_start: the compiled filter chains (flt_compile). */
struct flt_rules;
void shard_filters_setup(const struct flt_rules *rules);
/* Control thread: have the shard answer req; returns when it did. */
void shard_ctl(struct shard *sh, struct dctl_req *req);
void shard_stop(struct shard *sh); /* any thread: ask it to drain and exit */
void shard_join(struct shard *sh);
/* After every shard was joined and the helpers stopped: close what other
 * shards could still have written to (the wake eventfd) and free what a
 * helper job could still have read (the delivery engine). */
void shard_release(struct shard *sh);

uint64_t shard_now_ms(const struct shard *sh);

#endif
