/*
 * net/net_int — what the connection layer's files share: net.c (table,
 * states, close, reap, dispatch, deadlines), net_in.c (receive), net_out.c
 * (sends) and net_tls.c (the TLS adapter).  Not an interface: only those
 * four include it; protocols see net.h.  Shard thread only.
 */
#ifndef RMX_NET_NET_INT_H
#define RMX_NET_NET_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "net/net.h"
#include "ring/ring.h"

struct tls_conn;

enum net_state {
	NET_FREE = 0,
	NET_RESERVED,	/* net_open: not yet connected */
	NET_CONNECTING, /* the connect is in flight */
	NET_OPEN,
	NET_DRAINING, /* net_shutdown: close_notify goes out, then the close */
	NET_CLOSING,  /* cancel and close in flight: the reap follows */
};

enum net_rx {
	NET_RX_IDLE = 0,   /* no recv in flight; one may be armed */
	NET_RX_ARMED,	   /* a recv in flight */
	NET_RX_HELD,	   /* TLS input waits for the send in flight */
	NET_RX_CANCELLING, /* served, parked or closing: its completion is due */
	NET_RX_NOBUFS,	   /* served: it found no free buffer (net_rearm_starved) */
	NET_RX_COUNT,
};

enum net_tls {
	NET_TLS_OFF = 0,
	NET_TLS_HANDSHAKE,
	NET_TLS_ON,
};

/* What the send in flight carries (its completion is read accordingly). */
enum net_send_kind {
	NET_SEND_NONE = 0,
	NET_SEND_PLAIN, /* iov[] as it is */
	NET_SEND_TLS,	/* records from the TLS layer's out buffer */
	NET_SEND_BUF,	/* served: out[0, out_sent) in plaintext */
};

#define NET_INQ_MAX 8 /* receive buffers a served connection may hold */
#define NET_PQ_MAX  4 /* decrypted buffers held per served TLS connection */
/* Input a parked connection keeps in its own memory (at most one receive
 * buffer's worth): enough for a pipelined group of a few hundred RCPTs. */
#define NET_STASH_MAX 16384
/* How long a served connection's output may take once it shuts down. */
#define NET_SERVED_LINGER_MS 10000

/* Bytes held in a ring buffer: bid, and what of it is not yet used. */
struct net_inbuf {
	uint16_t bid;
	uint32_t off, len;
};

/* What only a served connection has (net_table_served). */
struct net_served {
	uint32_t inq_head, inq_count;
	struct net_inbuf inq[NET_INQ_MAX];
	/* TLS: ciphertext arrives in inq; plaintext is decrypted into user
	 * buffers (ring_buf_alloc) queued in pq and fed from there, so its
	 * bytes can be spooled by reference like plaintext input. */
	uint32_t pq_head, pq_count;
	struct net_inbuf pq[NET_PQ_MAX];
	bool peer_eof; /* the peer sent FIN: answer its input, then close */
	bool in_feed;
	bool parked;	 /* recv stopped, held input in stash[] */
	bool tls_switch; /* STARTTLS accepted: switch when the feed returns */
	bool peek_armed;
	bool timer_armed[NET_TIMERS];
	uint32_t holds;
	uint32_t stash_len;
	char *stash; /* NET_STASH_MAX bytes, its pages touched only if it parks */
	char *out;
	uint32_t out_len;	 /* bytes buffered */
	uint32_t out_sent;	 /* bytes of out[] in the send in flight */
	uint32_t plain_out;	 /* bytes of out[] that still go in plaintext (the 220) */
	struct tls_ctx *tls_ctx; /* STARTTLS: the switch's */
	uint64_t send_started_ms;
	const char *name;
	struct __kernel_timespec timer_ts[NET_TIMERS];
};

struct net_conn {
	struct net_table *t;
	const struct net_ops *ops;
	void *proto;
	uint32_t slot;
	uint16_t gen;
	int fd;
	enum net_state state;
	enum net_rx rx;
	enum net_tls tls_state;
	enum net_send_kind send;
	uint32_t inflight;
	bool user_pending; /* net_send's bytes not all gone: on_sent due */
	bool notify_owed;  /* draining: the close_notify did not fit yet */
	bool fread_inflight;
	uint32_t timeout_ms;
	uint64_t deadline_ms;
	struct iovec *iov; /* NET_IOV_MAX; client tables only (net_send) */
	uint32_t niov;
	struct msghdr mh;
	struct tls_conn *tls;
	char *in; /* in_cap bytes; TLS: in[in_off, in_len) not yet fed */
	uint32_t in_off, in_len;
	struct net_served *sv; /* served tables only */
};

struct net_table {
	struct ring *ring;
	enum net_table_id id;
	uint32_t nslots, in_cap;
	const uint64_t *now_ms;
	struct net_conn *conns;
	uint32_t *free;
	uint32_t free_count;
	char *in_mem;
	struct iovec *iov_mem;
	/* Served tables */
	bool served;
	uint32_t inq_cap, out_cap;
	struct net_served *sv_mem;
	char *out_mem, *stash_mem;
	bool user_starved; /* a connection waits for a user buffer */
	uint64_t enobufs;
};

/* Used across the files, one line each: inline. */
static inline uint64_t net_ud(const struct net_conn *nc, enum net_op op)
{
	return ring_ud((uint8_t)op, (uint8_t)nc->t->id, nc->gen, nc->slot);
}

/* Bytes may still reach the protocol (input, on_sent, on_error). */
static inline bool net_live(const struct net_conn *nc)
{
	return nc->state == NET_CONNECTING || nc->state == NET_OPEN;
}

/* net.c */
void net_touch(struct net_conn *nc); /* progress moves the deadline */
void net_enter(struct net_conn *nc, enum net_state next);
uint64_t net_now(const struct net_conn *nc);
void net_reap(struct net_conn *nc); /* free the slot once nothing is in flight */
/* on_error once, then the close; a draining connection just closes */
void net_fail(struct net_conn *nc, int err, const char *why);

/* net_in.c */
void rx_arm(struct net_conn *nc); /* a recv, if none is armed or held */
void on_recv_done(struct net_conn *nc, int res);

/* net_out.c */
void on_send_done(struct net_conn *nc, int res); /* plain or TLS */

/* net_serve.c: served input, parking */
void sv_process(struct net_conn *nc); /* feed, park, arm, close-when-answered, flush */
void sv_arm(struct net_conn *nc);
void sv_on_recv(struct net_conn *nc, int res, uint32_t flags);
void sv_inq_pop(struct net_conn *nc);
uint32_t sv_stash_cap(const struct net_conn *nc); /* what a stash may hold */
void sv_release(struct net_conn *nc);		  /* buffers back at the reap */
void sv_send_submitted(struct net_conn *nc);
void sv_flush(struct net_conn *nc);				/* the write buffer, one send */
void sv_on_send(struct net_conn *nc, int res);			/* served send completed */
void sv_on_event(struct net_conn *nc, enum net_op op, int res); /* peek, timers */
void sv_cancel_timers(struct net_conn *nc);
void sv_shutdown(struct net_conn *nc);

/* net_tls.c */
void tls_flush(struct net_conn *nc);	      /* encrypt iov[], send the records */
void tls_input(struct net_conn *nc);	      /* ciphertext in in[] to the protocol */
bool tls_sent(struct net_conn *nc, size_t n); /* a TLS send completed */
/* Served: the server-side pump and its pieces (net_tls_serve.c). */
void sv_tls_input(struct net_conn *nc);
void sv_tls_begin(struct net_conn *nc); /* the STARTTLS switch */
void sv_tls_send(struct net_conn *nc);	/* encrypt out[], send the records */
bool sv_tls_out_pending(const struct net_conn *nc);
bool sv_stash_decrypt(struct net_conn *nc);

#endif
