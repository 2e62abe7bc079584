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
	NET_RX_IDLE = 0, /* no recv in flight; one may be armed */
	NET_RX_ARMED,	 /* a recv in flight */
	NET_RX_HELD,	 /* TLS input waits for the send in flight */
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
	struct iovec iov[NET_IOV_MAX];
	uint32_t niov;
	struct msghdr mh;
	struct tls_conn *tls;
	char *in; /* in_cap bytes; TLS: in[in_off, in_len) not yet fed */
	uint32_t in_off, in_len;
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
/* on_error once, then the close; a draining connection just closes */
void net_fail(struct net_conn *nc, int err, const char *why);

/* net_in.c */
void rx_arm(struct net_conn *nc); /* a recv, if none is armed or held */
void on_recv_done(struct net_conn *nc, int res);

/* net_out.c */
void on_send_done(struct net_conn *nc, int res); /* plain or TLS */

/* net_tls.c */
void tls_flush(struct net_conn *nc);	      /* encrypt iov[], send the records */
void tls_input(struct net_conn *nc);	      /* ciphertext in in[] to the protocol */
bool tls_sent(struct net_conn *nc, size_t n); /* a TLS send completed */

#endif
