/*
 * net — one TCP connection driven by a shard's ring (the contract is in
 * net.h).
 *
 * A connection's life is one enum (enum net_state, changed only by
 * net_enter) and its receive side another (enum net_rx): no flags.  Ops in
 * flight are counted; the reap, at the end of the completion that brought
 * the count to zero, is the only place a slot becomes free.
 *
 * This file owns the table, the slot states and their legality, open,
 * release and reap, the completion dispatch, connect, file reads, close,
 * shutdown and the deadlines.  Receive is in net_in.c, sends in net_out.c,
 * the TLS adapter in net_tls.c; net_int.h is what they share.
 */
#include "net/net.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net/net_int.h"
#include "ring/ring.h"
#include "tls/tls.h"

#define NET_LINGER_MS 5000 /* a shutdown without a timeout of its own */

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
	case NET_OPEN: /* RESERVED: an accepted socket (net_adopt) */
		return from == NET_CONNECTING || from == NET_RESERVED;
	case NET_DRAINING:
		return from == NET_OPEN;
	case NET_CLOSING:
		return from == NET_CONNECTING || from == NET_OPEN || from == NET_DRAINING;
	default:
		return false;
	}
}

void net_enter(struct net_conn *nc, enum net_state next)
{
	assert(net_legal(nc->state, next));
	nc->state = next;
}

uint64_t net_now(const struct net_conn *nc)
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
void net_touch(struct net_conn *nc)
{
	if (nc->state != NET_OPEN || nc->t->served) /* served: the protocol's own limits */
		return;
	nc->deadline_ms = nc->timeout_ms ? net_now(nc) + nc->timeout_ms : UINT64_MAX;
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
	/* A served table (no in_cap: it receives into the ring's buffers)
	 * takes no net_send either: its iovecs would be 2 KiB per slot,
	 * touched by every connection, for nothing. */
	t->in_mem = in_cap ? malloc((size_t)nslots * in_cap) : NULL;
	t->iov_mem = in_cap ? calloc((size_t)nslots * NET_IOV_MAX, sizeof(t->iov_mem[0])) : NULL;
	if (!t->conns || !t->free || (in_cap && (!t->in_mem || !t->iov_mem))) {
		net_table_free(t);
		return NULL;
	}
	for (uint32_t i = 0; i < nslots; i++) {
		struct net_conn *nc = &t->conns[i];

		nc->t = t;
		nc->slot = i;
		nc->fd = -1;
		nc->in = in_cap ? t->in_mem + (size_t)i * in_cap : NULL;
		nc->iov = in_cap ? t->iov_mem + (size_t)i * NET_IOV_MAX : NULL;
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
	free(t->iov_mem);
	free(t->sv_mem);
	free(t->out_mem);
	free(t->stash_mem);
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
	if (nc->sv) {
		struct net_served *sv = nc->sv;
		char *out = sv->out, *stash = sv->stash;

		memset(sv, 0, sizeof(*sv));
		sv->out = out;
		sv->stash = stash;
	}
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

	if (nc->sv)
		sv_release(nc);
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

void net_reap(struct net_conn *nc)
{
	const struct net_ops *ops = nc->ops;
	void *proto = nc->proto;

	if (nc->state != NET_CLOSING || nc->inflight)
		return;
	if (nc->sv && (nc->sv->holds || (ops->busy && ops->busy(proto))))
		return; /* net_unhold or net_settle comes back */
	net_release(nc);
	ops->on_closed(proto);
}

/* on_error, once; a protocol that neither closed nor shut the connection
 * down in it gets it closed. */
void net_fail(struct net_conn *nc, int err, const char *why)
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

static void on_fread_done(struct net_conn *nc, int res)
{
	nc->fread_inflight = false;
	if (nc->state == NET_OPEN)
		nc->ops->on_file_read(nc->proto, res);
}

void net_complete(struct net_table *t, uint64_t ud, int res)
{
	net_complete_cqe(t, ud, res, 0);
}

void net_complete_cqe(struct net_table *t, uint64_t ud, int res, uint32_t flags)
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
		if (nc->sv)
			sv_on_recv(nc, res, flags);
		else
			on_recv_done(nc, res);
		break;
	case NET_OP_PEEK:
	case NET_OP_TIMER:
	case NET_OP_TIMER_LAST:
		sv_on_event(nc, (enum net_op)ring_ud_op(ud), res);
		break;
	case NET_OP_SEND:
		if (nc->sv)
			sv_on_send(nc, res);
		else
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
	if (!nc->sv)
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
	if (nc->sv)
		sv_cancel_timers(nc);
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
	if (nc->sv) {
		sv_shutdown(nc);
		return;
	}
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

	if (t->served) {
		for (uint32_t i = 0; i < t->nslots; i++)
			if (t->conns[i].state == NET_OPEN || t->conns[i].state == NET_DRAINING)
				t->conns[i].ops->on_tick(t->conns[i].proto);
		return;
	}
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
