/*
 * shard — one thread per core: its io_uring, listening sockets
 * (SO_REUSEPORT), fixed connection table, spool, and the loop.
 *
 * Owns: struct shard and its conns.  Thread: shard_start()/shard_stop()/
 * shard_join() from main; everything else on the shard's own thread.
 *
 * Connection I/O contract used by the session (smtp/session.c):
 *  - conn_reply() appends one reply line to the output buffer; output goes
 *    out in one send per loop turn (a pipelined group gets one send).
 *  - The session consumes input through smtp_session_feed(); consuming less
 *    than offered pauses input; conn_resume() restarts it (never re-entered
 *    from inside feed).
 *  - conn_close() closes after the output is flushed; the slot is reaped
 *    only when no operation of it is in flight (never freed inside a
 *    completion handler).
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
#include "smtp/session.h"

#define CONN_OUT_MAX 4096 /* reply bytes buffered per connection */
/* Receive buffers one connection may hold: shard->inq_cap, an eighth of
 * io.recv_buffers but at most CONN_INQ_MAX.  Exact, because each recv
 * takes one buffer at most and is armed only below the cap. */
#define CONN_INQ_MAX  8
#define CONN_PEER_MAX 64
#define CONN_PQ_MAX   4 /* decrypted buffers held per TLS connection */
/* Input a parked connection keeps in its own memory (at most one receive
 * buffer's worth): enough for a pipelined group of a few hundred RCPTs. */
#define CONN_STASH_MAX 16384
/* How long output may take to go out once the connection is closing. */
#define CONN_CLOSE_LINGER_MS 10000
/* Output full and the send in flight unfinished for this long: the client
 * does not read its replies (one that does gets them within milliseconds). */
#define CONN_UNREAD_MS 1000
/* IPv6 clients are counted per /64 (RFC 6177: one site or subscriber). */
#define CONN_V6_PREFIX_LEN 64

enum conn_tls {
	CONN_TLS_OFF = 0,
	CONN_TLS_HANDSHAKE,
	CONN_TLS_ON,
};

struct tls_conn;
struct tls_ctx;
struct auth_users;
struct auth_throttle;

/* Ring op codes (user_data op byte) of the shard's own completions, inside
 * its range of the op registry (ring/ops.h). */
enum shard_op {
	OP_ACCEPT = OPS_SHARD_FIRST,
	OP_RECV,
	OP_SEND,
	OP_CLOSE,
	OP_TICK,
	OP_WAKE,
	OP_GREET,	/* greet pause timer of a connection */
	OP_PEEK,	/* early-talker check right after accept */
	OP_REFUSE_SEND, /* reply to a refused connection (no slot) */
	OP_REFUSE_CLOSE,
	OP_CANCEL,
	OP_LISTEN_CANCEL,
	OP_DECIDE_TIMER, /* a pending decision's wait (filters/flt.h) */
	OP_END,
};
static_assert(OP_END - 1 <= OPS_SHARD_LAST, "shard ops inside the shard's range");

enum conn_io {
	CONN_FREE = 0,
	CONN_ACTIVE,
	CONN_CLOSING, /* closing: wait for in-flight ops, then reap */
};

/* The connection's receive.  Single-shot on purpose: a multishot recv
 * posts as many completions per loop turn as the client has data and the
 * pool has buffers, so one connection could take the whole pool before
 * its backpressure cancel is even submitted.  One recv
 * in flight takes one buffer at most, so inq can never overflow. */
enum conn_recv {
	CONN_RECV_IDLE = 0,   /* none in flight: armed when the input path wants more */
	CONN_RECV_ARMED,      /* one recv in flight */
	CONN_RECV_CANCELLING, /* parked or closing: cancelled, its completion is due */
	CONN_RECV_NOBUFS,     /* it found no free buffer: armed again once one is back */
	CONN_RECV_COUNT,
};

struct shard;

struct conn {
	struct shard *shard;
	uint32_t slot;
	uint16_t gen;
	enum conn_io io;
	int fd;
	uint32_t inflight; /* ring ops that name this slot */
	enum conn_recv recv;
	bool peer_eof; /* the client sent FIN: answer its input, then close */
	bool send_inflight;
	bool close_wanted; /* close once output is flushed */
	bool in_feed;
	bool greet_armed;  /* greet pause timer in flight */
	bool decide_armed; /* decision timer in flight */
	/* Parked: the session waits on a timer or on a client that does not
	 * read its replies; recv is stopped and held input is in stash[]. */
	bool parked;
	uint32_t stash_len;
	uint8_t listener;
	uint32_t inq_head, inq_count;
	struct conn_inbuf {
		uint16_t bid;
		uint32_t off, len;
	} inq[CONN_INQ_MAX];
	/* TLS (src/tls): ciphertext arrives in inq; plaintext is decrypted
	 * into user buffers (ring_buf_alloc) queued in pq and fed to the
	 * session from there, so its bytes can be spooled by reference like
	 * plaintext input. */
	struct tls_conn *tls;
	uint8_t tls_mode;	/* enum conn_tls */
	bool tls_switch;	/* STARTTLS accepted: switch when the feed returns */
	bool send_tls;		/* the send in flight carries TLS records */
	uint32_t tls_plain_out; /* bytes of out[] that still go in plaintext (the 220) */
	uint64_t tls_deadline_ms;
	uint32_t pq_head, pq_count;
	struct conn_inbuf pq[CONN_PQ_MAX];
	char out[CONN_OUT_MAX];
	uint32_t out_len;  /* bytes buffered */
	uint32_t out_sent; /* bytes of out[] in the send in flight */
	struct sockaddr_storage peer;
	char peer_ip[CONN_PEER_MAX];
	uint16_t peer_port;
	uint64_t idle_deadline_ms;
	uint64_t session_deadline_ms;
	uint64_t send_started_ms;   /* when the send in flight began */
	uint64_t send_deadline_ms;  /* the send in flight must finish by then */
	uint64_t close_deadline_ms; /* closing: output flushed by then, or dropped */
	struct __kernel_timespec greet_ts;
	struct __kernel_timespec decide_ts;
	struct conn *next, *prev; /* active list */
	struct smtp_session *s;	  /* this slot's, for good (smtp_sessions_new) */
	/* Last, so conn_new's memset never touches it: its pages are mapped
	 * only for connections that ever park. */
	char stash[CONN_STASH_MAX];
};

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
	struct conn *conns;
	uint32_t conn_max;
	uint32_t *free_slots;
	uint32_t free_count;
	struct conn *active;
	uint32_t active_count;
	struct smtp_tx_pool *txpool;
	int wake_fd;
	uint64_t wake_buf;
	struct __kernel_timespec tick_ts;
	uint64_t now_ms;
	uint64_t recv_enobufs; /* recvs that found no free buffer */
	uint32_t inq_cap;      /* receive buffers one connection may hold */
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
	bool user_starved;		/* a connection waits for a user buffer */
	_Atomic(struct dctl_req *) ctl; /* a control request to answer */
	_Atomic bool stop;
	bool stopping;
	uint64_t stop_deadline_ms;
	_Atomic int start_rc; /* 0 running, >0 starting, <0 failed */
	char why[256];
	char peek_byte[16];
};

/* Process-wide connection accounting, shared by all shards. */
int shard_globals_init(const struct rmx_config *cfg);
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
/* Control thread: have the shard answer req; returns when it did. */
void shard_ctl(struct shard *sh, struct dctl_req *req);
void shard_stop(struct shard *sh); /* any thread: ask it to drain and exit */
void shard_join(struct shard *sh);
/* After every shard was joined and the helpers stopped: close what other
 * shards could still have written to (the wake eventfd) and free what a
 * helper job could still have read (the delivery engine). */
void shard_release(struct shard *sh);

/* What the session may know of its connection (it reads no field). */
bool conn_active(const struct conn *c);	     /* not closing */
bool conn_takes_input(const struct conn *c); /* active, no close asked, no TLS switch due */
bool conn_tls_on(const struct conn *c);	     /* the TLS handshake is done */
bool conn_tls_begun(const struct conn *c);   /* STARTTLS or implicit TLS under way or done */
const char *conn_peer_ip(const struct conn *c);
const struct sockaddr_storage *conn_peer(const struct conn *c);
uint8_t conn_listener(const struct conn *c); /* index into cfg->listeners */
/* Names the connection to the spool as the owner of a message (slot and
 * generation, as a helper cookie does). */
void conn_owner(const struct conn *c, uint32_t *slot, uint16_t *gen);

/* Connection I/O, for the session. */
void conn_reply(struct conn *c, const char *line);
void conn_replyf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
size_t conn_out_free(const struct conn *c);
/* Forget buffered output that is not already in a send in flight. */
void conn_drop_output(struct conn *c);
void conn_close(struct conn *c);
void conn_resume(struct conn *c);
/* Send what is buffered now (outside the input path). */
void conn_flush(struct conn *c);
/* A helper-pool request for the connection: the cookie that names it
 * (slot and generation, so an answer for an earlier client of the slot is
 * dropped); after a successful submit, conn_helper_sent() keeps the slot
 * until the answer came (smtp_session_auth_done). */
uint64_t conn_helper_cookie(const struct conn *c);
void conn_helper_sent(struct conn *c);
/* Call smtp_session_decided() after ms milliseconds (a ring timeout). */
void conn_timer(struct conn *c, uint32_t ms);
/* STARTTLS accepted (the 220 is in the output): once the current feed
 * returns, every byte already received is discarded (CVE-2011-0411) and
 * the TLS handshake begins. */
void conn_starttls(struct conn *c);
/* Version and cipher of an established TLS session, or NULL. */
const char *conn_tls_version(const struct conn *c);
const char *conn_tls_cipher(const struct conn *c);
uint64_t shard_now_ms(const struct shard *sh);

#endif
