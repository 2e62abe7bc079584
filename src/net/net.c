/*
 * net — one TCP connection driven by a shard's ring (the contract is in
 * net.h).
 *
 * A connection's life is one enum (enum net_state, changed only by
 * net_enter) and its receive side another (enum net_rx): no flags.  Ops in
 * flight are counted; the reap, at the end of the completion that brought
 * the count to zero, is the only place a slot becomes free.
 *
 * TLS: ciphertext lands in in[]; tls_input() feeds it to the TLS layer and
 * reads plaintext out for the protocol.  When the layer will take nothing
 * more until its own output is sent (-ENOBUFS: a peer flooding key update
 * requests and not reading, or our output backed up), the input waits
 * (NET_RX_HELD) for the send's completion, which comes back to it: the rest
 * of in[] or what the layer already holds.  No turn of the loop goes by
 * without progress, and no recv is armed while input is held.
 */
#include "net/net.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ring/ring.h"
#include "tls/tls.h"

#define NET_LINGER_MS 5000 /* a shutdown without a timeout of its own */
#define NET_WHY_MAX   200

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

/* Which states may follow which: every change goes through net_enter. */
static bool net_legal(enum net_state from, enum net_state to)
{
	switch (to) {
	case NET_FREE:
		return from == NET_CLOSING || from == NET_RESERVED;
	case NET_RESERVED:
		return from == NET_FREE;
	case NET_CONNECTING:
		return from == NET_RESERVED;
	case NET_OPEN:
		return from == NET_CONNECTING;
	case NET_DRAINING:
		return from == NET_OPEN;
	case NET_CLOSING:
		return from == NET_CONNECTING || from == NET_OPEN || from == NET_DRAINING;
	default:
		return false;
	}
}

static void net_enter(struct net_conn *nc, enum net_state next)
{
	assert(net_legal(nc->state, next));
	nc->state = next;
}

static uint64_t net_ud(const struct net_conn *nc, enum net_op op)
{
	return ring_ud((uint8_t)op, (uint8_t)nc->t->id, nc->gen, nc->slot);
}

static uint64_t net_now(const struct net_conn *nc)
{
	return *nc->t->now_ms;
}

/* Progress: the protocol's bytes went to the socket or the TLS layer, or
 * the protocol said a whole unit of input came (net_progress).  Only
 * progress moves the deadline: records that carry nothing for the protocol
 * (a key update and its answer, a session ticket, a handshake dribbled a
 * byte at a time) or bytes that complete nothing (a reply trickled a byte
 * at a time) would otherwise hold a connection open for as long as the
 * peer likes, and a draining connection keeps the deadline net_shutdown
 * gave it. */
static void net_touch(struct net_conn *nc)
{
	if (nc->state != NET_OPEN)
		return;
	nc->deadline_ms = nc->timeout_ms ? net_now(nc) + nc->timeout_ms : UINT64_MAX;
}

/* Bytes may still reach the protocol (input, on_sent, on_error). */
static bool net_live(const struct net_conn *nc)
{
	return nc->state == NET_CONNECTING || nc->state == NET_OPEN;
}

/* ---- the table ------------------------------------------------------------- */

struct net_table *net_table_new(struct ring *ring, enum net_table_id id, uint32_t nslots,
				uint32_t in_cap, const uint64_t *now_ms)
{
	struct net_table *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->ring = ring;
	t->id = id;
	t->nslots = nslots;
	t->in_cap = in_cap;
	t->now_ms = now_ms;
	t->conns = calloc(nslots, sizeof(t->conns[0]));
	t->free = calloc(nslots, sizeof(t->free[0]));
	t->in_mem = malloc((size_t)nslots * in_cap);
	if (!t->conns || !t->free || !t->in_mem) {
		net_table_free(t);
		return NULL;
	}
	for (uint32_t i = 0; i < nslots; i++) {
		struct net_conn *nc = &t->conns[i];

		nc->t = t;
		nc->slot = i;
		nc->fd = -1;
		nc->in = t->in_mem + (size_t)i * in_cap;
		t->free[t->free_count++] = nslots - 1 - i;
	}
	return t;
}

void net_table_free(struct net_table *t)
{
	if (!t)
		return;
	for (uint32_t i = 0; t->conns && i < t->nslots; i++) {
		if (t->conns[i].fd >= 0)
			close(t->conns[i].fd);
		if (t->conns[i].tls)
			tls_conn_free(t->conns[i].tls);
	}
	free(t->conns);
	free(t->free);
	free(t->in_mem);
	free(t);
}

uint32_t net_active(const struct net_table *t)
{
	return t->nslots - t->free_count;
}

struct net_conn *net_open(struct net_table *t, const struct net_ops *ops, void *proto)
{
	struct net_conn *nc;

	if (t->free_count == 0)
		return NULL;
	nc = &t->conns[t->free[--t->free_count]];
	assert(nc->state == NET_FREE && nc->inflight == 0 && nc->fd < 0 && !nc->tls);
	net_enter(nc, NET_RESERVED);
	nc->ops = ops;
	nc->proto = proto;
	nc->rx = NET_RX_IDLE;
	nc->tls_state = NET_TLS_OFF;
	nc->send = NET_SEND_NONE;
	nc->user_pending = nc->fread_inflight = nc->notify_owed = false;
	nc->timeout_ms = 0;
	nc->deadline_ms = UINT64_MAX;
	nc->niov = 0;
	nc->in_off = nc->in_len = 0;
	return nc;
}

uint32_t net_slot(const struct net_conn *nc)
{
	return nc->slot;
}

void net_set_proto(struct net_conn *nc, void *proto)
{
	assert(nc->state == NET_RESERVED);
	nc->proto = proto;
}

/* The slot goes back to the free list; the protocol hears on_closed last. */
static void net_release(struct net_conn *nc)
{
	struct net_table *t = nc->t;

	if (nc->tls) {
		tls_conn_free(nc->tls);
		nc->tls = NULL;
	}
	nc->fd = -1;
	net_enter(nc, NET_FREE);
	nc->gen++;
	assert(t->free_count < t->nslots);
	t->free[t->free_count++] = nc->slot;
}

static void net_reap(struct net_conn *nc)
{
	const struct net_ops *ops = nc->ops;
	void *proto = nc->proto;

	if (nc->state != NET_CLOSING || nc->inflight)
		return;
	net_release(nc);
	ops->on_closed(proto);
}

/* ---- receive ------------------------------------------------------------------ */

static void rx_arm(struct net_conn *nc)
{
	struct io_uring_sqe *sqe;

	if ((nc->state != NET_OPEN && nc->state != NET_DRAINING) || nc->rx != NET_RX_IDLE ||
	    nc->in_off < nc->in_len)
		return;
	nc->in_off = nc->in_len = 0;
	sqe = ring_sqe(nc->t->ring);
	io_uring_prep_recv(sqe, nc->fd, nc->in, nc->t->in_cap, 0);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_RECV));
	nc->rx = NET_RX_ARMED;
	nc->inflight++;
}

/* on_error, once; a protocol that neither closed nor shut the connection
 * down in it gets it closed. */
static void net_fail(struct net_conn *nc, int err, const char *why)
{
	if (nc->state == NET_DRAINING) {
		net_close(nc);
		return;
	}
	if (!net_live(nc))
		return;
	nc->ops->on_error(nc->proto, err, why);
	if (net_live(nc))
		net_close(nc);
}

/* ---- send ---------------------------------------------------------------------- */

static void tls_submit(struct net_conn *nc, const void *p, size_t len)
{
	struct io_uring_sqe *sqe = ring_sqe(nc->t->ring);

	io_uring_prep_send(sqe, nc->fd, p, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_SEND));
	nc->send = NET_SEND_TLS;
	nc->inflight++;
}

/* TLS: encrypt as much of iov[] as the layer takes, then send its records
 * (one send at a time). */
static void tls_flush(struct net_conn *nc)
{
	const void *p;
	size_t len;

	if (nc->send != NET_SEND_NONE)
		return;
	/* The protocol's bytes wait for the handshake (tls.h: no write
	 * before it is done); its records go meanwhile. */
	while (nc->niov && nc->tls_state == NET_TLS_ON) {
		ssize_t w = nc->iov[0].iov_len
				? tls_conn_write(nc->tls, nc->iov[0].iov_base, nc->iov[0].iov_len)
				: 0;

		if (w >= 0) {
			if (w > 0)
				net_touch(nc);
			nc->iov[0].iov_base = (char *)nc->iov[0].iov_base + w;
			nc->iov[0].iov_len -= (size_t)w;
			if (nc->iov[0].iov_len == 0) {
				memmove(nc->iov, nc->iov + 1, (nc->niov - 1) * sizeof(nc->iov[0]));
				nc->niov--;
			}
			continue;
		}
		if (w == -ENOBUFS || w == -EAGAIN)
			break;
		net_fail(nc, (int)w, "TLS write failed");
		return;
	}
	if (tls_conn_out(nc->tls, &p, &len) && len > 0)
		tls_submit(nc, p, len);
}

static void plain_flush(struct net_conn *nc)
{
	struct io_uring_sqe *sqe = ring_sqe(nc->t->ring);

	nc->mh = (struct msghdr){.msg_iov = nc->iov, .msg_iovlen = nc->niov};
	io_uring_prep_sendmsg(sqe, nc->fd, &nc->mh, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_SEND));
	nc->send = NET_SEND_PLAIN;
	nc->inflight++;
	net_touch(nc);
}

bool net_sending(const struct net_conn *nc)
{
	return nc->user_pending;
}

void net_send(struct net_conn *nc, const struct iovec *iov, uint32_t niov)
{
	size_t bytes = 0;

	assert(!nc->user_pending && niov > 0 && niov <= NET_IOV_MAX);
	for (uint32_t i = 0; i < niov; i++)
		bytes += iov[i].iov_len;
	/* Under TLS an empty send makes no record, so no completion would
	 * ever bring its on_sent: a protocol has something to say. */
	assert(bytes > 0);
	(void)bytes;
	if (nc->state != NET_OPEN)
		return;
	memcpy(nc->iov, iov, niov * sizeof(iov[0]));
	nc->niov = niov;
	nc->user_pending = true;
	if (nc->tls_state == NET_TLS_OFF) {
		assert(nc->send == NET_SEND_NONE);
		plain_flush(nc);
	} else {
		tls_flush(nc);
	}
}

/* ---- TLS ------------------------------------------------------------------------- */

/* One handshake step.  Done: on_tls_ready, then whatever it left to send
 * goes with the handshake's last flight. */
static void tls_step(struct net_conn *nc)
{
	int rc = tls_conn_handshake(nc->tls);
	char why[NET_WHY_MAX];

	if (rc == 0) {
		nc->tls_state = NET_TLS_ON;
		nc->ops->on_tls_ready(nc->proto);
		if (nc->state == NET_OPEN)
			tls_flush(nc);
		return;
	}
	if (rc == -EAGAIN || rc == -ENOBUFS) {
		tls_flush(nc);
		return;
	}
	tls_flush(nc); /* the alert, if the layer made one */
	snprintf(why, sizeof(why), "TLS handshake failed: %s", tls_conn_error(nc->tls));
	net_fail(nc, rc, why);
}

int net_tls_start(struct net_conn *nc, struct tls_ctx *ctx, const char *peer_name)
{
	int rc;

	assert(nc->state == NET_OPEN && nc->tls_state == NET_TLS_OFF && !nc->tls);
	nc->tls = tls_conn_new(ctx, peer_name);
	if (!nc->tls)
		return -ENOMEM;
	nc->tls_state = NET_TLS_HANDSHAKE;
	/* RFC 3207 4 / CVE-2011-0411: nothing received before is fed. */
	nc->in_off = nc->in_len = 0;
	rc = tls_conn_handshake(nc->tls);
	assert(rc != 0); /* a client cannot be done before the server spoke */
	if (rc == -EAGAIN || rc == -ENOBUFS) {
		if (nc->send == NET_SEND_NONE)
			tls_flush(nc);
		return 0;
	}
	return rc;
}

struct tls_conn *net_tls(const struct net_conn *nc)
{
	return nc->tls_state == NET_TLS_ON ? nc->tls : NULL;
}

/* Ciphertext in in[]: through the layer (the handshake, or records to
 * decrypt), the plaintext to the protocol.  Stops when the protocol stops
 * listening, when every byte is used, or when the layer waits for the send
 * in flight (NET_RX_HELD: the send's completion comes back here). */
static void tls_input_run(struct net_conn *nc)
{
	char plain[4096], why[NET_WHY_MAX];

	while (nc->state == NET_OPEN || nc->state == NET_DRAINING) {
		size_t took = 0;

		if (nc->in_off < nc->in_len) {
			took = tls_conn_feed(nc->tls, nc->in + nc->in_off, nc->in_len - nc->in_off);
			nc->in_off += (uint32_t)took;
		}
		bool fed = nc->in_off == nc->in_len;

		if (nc->tls_state == NET_TLS_HANDSHAKE) {
			tls_step(nc);
			if (nc->tls_state == NET_TLS_HANDSHAKE) {
				if (fed || took == 0)
					return;
				continue;
			}
			continue; /* done: read at once (tls.h, step 2) */
		}
		ssize_t r = tls_conn_read(nc->tls, plain, sizeof(plain));

		if (r > 0) {
			if (nc->state == NET_OPEN)
				nc->ops->on_input(nc->proto, plain, (size_t)r);
			continue; /* draining: read on, to the peer's close */
		}
		if (r == -ENOBUFS) {
			nc->rx = NET_RX_HELD;
			tls_flush(nc);
			return;
		}
		if (r == -EAGAIN) {
			if (fed)
				return;
			continue;
		}
		if (r == 0)
			snprintf(why, sizeof(why), "TLS session closed by the peer");
		else
			snprintf(why, sizeof(why), "TLS read failed: %s", tls_conn_error(nc->tls));
		net_fail(nc, (int)r, why);
		return;
	}
}

static void tls_input(struct net_conn *nc)
{
	nc->rx = NET_RX_IDLE;
	tls_input_run(nc);
	/* Ciphertext the layer did not take waits too: no recv over it. */
	if (nc->rx == NET_RX_IDLE && nc->in_off < nc->in_len)
		nc->rx = NET_RX_HELD;
}

/* ---- completions ------------------------------------------------------------------ */

static void on_connect_done(struct net_conn *nc, int res)
{
	if (nc->state != NET_CONNECTING)
		return;
	if (res < 0) {
		net_fail(nc, res, strerror(-res));
		return;
	}
	net_enter(nc, NET_OPEN);
	net_touch(nc);
	rx_arm(nc);
	nc->ops->on_connected(nc->proto);
}

static void on_recv_done(struct net_conn *nc, int res)
{
	nc->rx = NET_RX_IDLE;
	if (nc->state != NET_OPEN && nc->state != NET_DRAINING)
		return;
	if (res <= 0) {
		net_fail(nc, res, res == 0 ? "connection closed by the peer" : strerror(-res));
		return;
	}
	if (nc->state == NET_DRAINING && nc->tls_state == NET_TLS_OFF)
		return;
	if (nc->ops->on_recv && nc->state == NET_OPEN)
		nc->ops->on_recv(nc->proto);
	if (nc->tls_state != NET_TLS_OFF) {
		nc->in_off = 0;
		nc->in_len = (uint32_t)res;
		tls_input(nc);
	} else if (nc->state == NET_OPEN) {
		nc->ops->on_input(nc->proto, nc->in, (size_t)res);
	}
}

/* A plain send completed: advance past what went out; the rest of a short
 * send goes again.  True when all went. */
static bool plain_sent(struct net_conn *nc, size_t left)
{
	uint32_t i = 0;

	while (i < nc->niov && left >= nc->iov[i].iov_len)
		left -= nc->iov[i++].iov_len;
	if (i == nc->niov) {
		nc->niov = 0;
		return true;
	}
	nc->iov[i].iov_base = (char *)nc->iov[i].iov_base + left;
	nc->iov[i].iov_len -= left;
	memmove(nc->iov, nc->iov + i, (nc->niov - i) * sizeof(nc->iov[0]));
	nc->niov -= i;
	plain_flush(nc);
	return false;
}

/* A TLS send completed: more records go, the handshake goes on, or the
 * user's bytes are all out.  True when they are (on_sent due). */
static bool tls_sent(struct net_conn *nc, size_t n)
{
	tls_conn_out_done(nc->tls, n);
	if (nc->state == NET_DRAINING) {
		/* The alert waited for room: try again now some went. */
		if (nc->notify_owed && tls_conn_shutdown(nc->tls) != -ENOBUFS)
			nc->notify_owed = false;
		tls_flush(nc);
		if (nc->send == NET_SEND_NONE)
			net_close(nc); /* the close_notify is out */
		return false;
	}
	tls_flush(nc);
	if (nc->send != NET_SEND_NONE || !net_live(nc))
		return false;
	if (nc->tls_state == NET_TLS_HANDSHAKE) {
		tls_step(nc);
		return false;
	}
	return nc->user_pending && nc->niov == 0;
}

static void on_send_done(struct net_conn *nc, int res)
{
	enum net_send_kind kind = nc->send;
	bool all;

	nc->send = NET_SEND_NONE;
	if (nc->state != NET_OPEN && nc->state != NET_DRAINING)
		return;
	if (res < 0) {
		net_fail(nc, res, strerror(-res));
		return;
	}
	all = kind == NET_SEND_PLAIN ? plain_sent(nc, (size_t)res) : tls_sent(nc, (size_t)res);
	/* A plaintext send that completed after TLS began (the STARTTLS
	 * command's) held back the handshake's first flight. */
	if (kind == NET_SEND_PLAIN && nc->tls_state != NET_TLS_OFF && nc->send == NET_SEND_NONE)
		tls_flush(nc);
	if (all && nc->state == NET_OPEN) {
		nc->user_pending = false;
		nc->ops->on_sent(nc->proto);
	}
	/* Input that waited for this send: in in[], or inside the layer. */
	if (nc->rx == NET_RX_HELD && nc->send == NET_SEND_NONE &&
	    (nc->state == NET_OPEN || nc->state == NET_DRAINING))
		tls_input(nc);
}

static void on_fread_done(struct net_conn *nc, int res)
{
	nc->fread_inflight = false;
	if (nc->state == NET_OPEN)
		nc->ops->on_file_read(nc->proto, res);
}

void net_complete(struct net_table *t, uint64_t ud, int res)
{
	uint32_t slot = ring_ud_slot(ud);
	struct net_conn *nc;

	assert(slot < t->nslots && ring_ud_aux(ud) == t->id);
	nc = &t->conns[slot];
	assert(nc->gen == ring_ud_gen(ud) && nc->inflight > 0);
	nc->inflight--;
	switch ((enum net_op)ring_ud_op(ud)) {
	case NET_OP_CONNECT:
		on_connect_done(nc, res);
		break;
	case NET_OP_RECV:
		on_recv_done(nc, res);
		break;
	case NET_OP_SEND:
		on_send_done(nc, res);
		break;
	case NET_OP_FREAD:
		on_fread_done(nc, res);
		break;
	case NET_OP_CANCEL:
	case NET_OP_CLOSE:
		break;
	case NET_OP_END:
	default:
		abort();
	}
	rx_arm(nc);
	net_reap(nc);
}

/* ---- connect, file reads, close, deadlines ------------------------------------ */

int net_connect(struct net_conn *nc, const struct sockaddr *addr, socklen_t len,
		uint32_t timeout_ms)
{
	struct io_uring_sqe *sqe;
	int one = 1;

	assert(nc->state == NET_RESERVED);
	nc->fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (nc->fd < 0) {
		int err = -errno;

		net_release(nc);
		return err;
	}
	/* The last piece of a message goes at once (no small trailing write
	 * waits for an ACK). */
	setsockopt(nc->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	sqe = ring_sqe(nc->t->ring);
	io_uring_prep_connect(sqe, nc->fd, addr, len);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_CONNECT));
	nc->inflight++;
	net_enter(nc, NET_CONNECTING);
	nc->deadline_ms = net_now(nc) + timeout_ms;
	return 0;
}

void net_progress(struct net_conn *nc)
{
	net_touch(nc);
}

/* Only an open connection's deadline follows the protocol's timeout: a
 * connect keeps net_connect's, a draining connection net_shutdown's (else
 * a hop that never answers the SYN, or never reads our close_notify,
 * would hold the slot and the socket for good). */
void net_set_timeout(struct net_conn *nc, uint32_t timeout_ms)
{
	nc->timeout_ms = timeout_ms;
	net_touch(nc);
}

void net_read_file(struct net_conn *nc, int fd, void *buf, uint32_t len, uint64_t off)
{
	struct io_uring_sqe *sqe;

	assert(!nc->fread_inflight && nc->state == NET_OPEN);
	sqe = ring_sqe(nc->t->ring);
	io_uring_prep_read(sqe, fd, buf, len, off);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_FREAD));
	nc->fread_inflight = true;
	nc->inflight++;
}

bool net_closing(const struct net_conn *nc)
{
	return !net_live(nc);
}

void net_close(struct net_conn *nc)
{
	struct io_uring_sqe *sqe;

	if (nc->state == NET_CLOSING || nc->state == NET_FREE)
		return;
	if (nc->state == NET_RESERVED) {
		net_release(nc); /* nothing was submitted: no op to wait for */
		return;
	}
	net_enter(nc, NET_CLOSING);
	nc->user_pending = false;
	/* Cancel whatever still waits on the socket, then close it. */
	sqe = ring_sqe(nc->t->ring);
	io_uring_prep_cancel_fd(sqe, nc->fd, IORING_ASYNC_CANCEL_ALL);
	sqe->flags |= IOSQE_IO_HARDLINK;
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_CANCEL));
	sqe = ring_sqe(nc->t->ring);
	io_uring_prep_close(sqe, nc->fd);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_CLOSE));
	nc->inflight += 2;
	/* The number is the ring's to close from here: net_table_free must
	 * not close it again (by then it may name another file). */
	nc->fd = -1;
}

void net_shutdown(struct net_conn *nc)
{
	if (nc->state != NET_OPEN) {
		net_close(nc);
		return;
	}
	int rc = nc->tls_state == NET_TLS_ON ? tls_conn_shutdown(nc->tls) : -EPROTO;

	/* -ENOBUFS: the layer's output is full; the alert goes behind it,
	 * made once a send made room (tls_sent). */
	if (rc != 0 && rc != -ENOBUFS) {
		net_close(nc);
		return;
	}
	nc->notify_owed = rc == -ENOBUFS;
	net_enter(nc, NET_DRAINING);
	nc->user_pending = false;
	nc->niov = 0; /* plaintext not yet encrypted never goes */
	nc->deadline_ms = net_now(nc) + (nc->timeout_ms ? nc->timeout_ms : NET_LINGER_MS);
	tls_flush(nc);
	if (nc->send == NET_SEND_NONE)
		net_close(nc);
}

void net_tick(struct net_table *t)
{
	uint64_t now = *t->now_ms;

	for (uint32_t i = 0; i < t->nslots; i++) {
		struct net_conn *nc = &t->conns[i];

		if (now < nc->deadline_ms)
			continue;
		if (nc->state == NET_DRAINING) {
			net_close(nc);
		} else if (net_live(nc)) {
			nc->deadline_ms = UINT64_MAX; /* once, until the next I/O */
			nc->ops->on_timeout(nc->proto);
		}
	}
}
