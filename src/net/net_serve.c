/*
 * net_serve — what a served connection (net_table_served: a server's
 * accepted sockets) has that a client's does not: the table, adoption,
 * the single-shot receive into provided buffers with its cap, parking and
 * the stash, the feed that may pause, the peer's FIN, protocol timers,
 * the early-talker peek and holds.  Its write buffer is net_serve_out.c,
 * its TLS server role net_tls_serve.c.  The contract is net.h's "Served".
 */
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>

#include "net/net.h"
#include "net/net_int.h"
#include "ring/ring.h"
#include "tls/tls.h"

/* ---- the table ------------------------------------------------------------- */

struct net_table *net_table_served(struct ring *ring, enum net_table_id id, uint32_t nslots,
				   uint32_t inq_cap, uint32_t out_cap, const uint64_t *now_ms)
{
	struct net_table *t = net_table_new(ring, id, nslots, 0, now_ms);

	assert(inq_cap >= 2 && inq_cap <= NET_INQ_MAX);
	if (!t)
		return NULL;
	t->served = true;
	t->inq_cap = inq_cap;
	t->out_cap = out_cap;
	t->sv_mem = calloc(nslots, sizeof(t->sv_mem[0]));
	t->out_mem = calloc(nslots, out_cap);
	/* calloc: the pages of a stash are mapped only for connections that
	 * ever park. */
	t->stash_mem = calloc(nslots, NET_STASH_MAX);
	if (!t->sv_mem || !t->out_mem || !t->stash_mem) {
		net_table_free(t);
		return NULL;
	}
	for (uint32_t i = 0; i < nslots; i++) {
		t->conns[i].in = NULL;
		t->conns[i].sv = &t->sv_mem[i];
		t->sv_mem[i].out = t->out_mem + (size_t)i * out_cap;
		t->sv_mem[i].stash = t->stash_mem + (size_t)i * NET_STASH_MAX;
	}
	return t;
}

void net_adopt(struct net_conn *nc, int fd, const char *name)
{
	int one = 1;

	assert(nc->t->served && nc->state == NET_RESERVED);
	nc->fd = fd;
	nc->sv->name = name;
	/* Replies are already batched per loop turn; Nagle would only add
	 * latency to the last reply of a pipelined group. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	net_enter(nc, NET_OPEN);
}

struct net_conn *net_find(struct net_table *t, uint32_t slot, uint16_t gen)
{
	if (slot >= t->nslots || t->conns[slot].gen != gen || t->conns[slot].state == NET_FREE)
		return NULL;
	return &t->conns[slot];
}

uint16_t net_gen(const struct net_conn *nc)
{
	return nc->gen;
}

void *net_proto(const struct net_conn *nc)
{
	return nc->proto;
}

bool net_open_for_input(const struct net_conn *nc)
{
	return nc->state == NET_OPEN && !nc->sv->tls_switch;
}

bool net_draining(const struct net_conn *nc)
{
	return nc->state == NET_DRAINING;
}

bool net_parked(const struct net_conn *nc)
{
	return nc->sv->parked;
}

uint64_t net_enobufs(const struct net_table *t)
{
	return t->enobufs;
}

void net_foreach(struct net_table *t, void (*fn)(void *proto, void *arg), void *arg)
{
	for (uint32_t i = 0; i < t->nslots; i++)
		if (t->conns[i].state == NET_OPEN || t->conns[i].state == NET_DRAINING)
			fn(t->conns[i].proto, arg);
}

/* ---- receive ------------------------------------------------------------------
 * Single-shot on purpose: a multishot recv posts as many completions per
 * loop turn as the client has data and the pool has buffers, so one
 * connection could take the whole pool before its backpressure cancel is
 * even submitted.  One recv in flight takes one buffer at most, so inq can
 * never overflow. */

static void sv_rx_enter(struct net_conn *nc, enum net_rx next)
{
	static const bool legal[NET_RX_COUNT][NET_RX_COUNT] = {
	    [NET_RX_IDLE] = {[NET_RX_ARMED] = true},
	    [NET_RX_ARMED] =
		{[NET_RX_IDLE] = true, [NET_RX_CANCELLING] = true, [NET_RX_NOBUFS] = true},
	    [NET_RX_CANCELLING] = {[NET_RX_IDLE] = true},
	    [NET_RX_NOBUFS] = {[NET_RX_IDLE] = true},
	};

	assert(nc->rx < NET_RX_COUNT && next < NET_RX_COUNT);
	assert(legal[nc->rx][next]);
	nc->rx = next;
}

/* One recv into a provided buffer (len 0: the whole buffer).  Armed only
 * below the cap, so the buffer it may take keeps inq within bounds. */
void sv_arm(struct net_conn *nc)
{
	struct io_uring_sqe *sqe = ring_sqe(nc->t->ring);

	assert(nc->sv->inq_count < nc->t->inq_cap);
	io_uring_prep_recv(sqe, nc->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = RING_BGID;
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_RECV));
	sv_rx_enter(nc, NET_RX_ARMED);
	nc->inflight++;
}

/* Parking: the recv in flight must not take another buffer. */
static void sv_cancel_recv(struct net_conn *nc)
{
	if (nc->rx != NET_RX_ARMED)
		return;
	ring_prep_cancel(nc->t->ring, net_ud(nc, NET_OP_RECV), net_ud(nc, NET_OP_CANCEL));
	nc->inflight++;
	sv_rx_enter(nc, NET_RX_CANCELLING);
}

void sv_inq_pop(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;

	ring_buf_put(nc->t->ring, sv->inq[sv->inq_head].bid);
	sv->inq_head = (sv->inq_head + 1) % NET_INQ_MAX;
	sv->inq_count--;
}

/* At the reap: every buffer still held goes back. */
void sv_release(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;

	while (sv->pq_count) {
		ring_buf_put(nc->t->ring, sv->pq[sv->pq_head].bid);
		sv->pq_head = (sv->pq_head + 1) % NET_PQ_MAX;
		sv->pq_count--;
	}
	while (sv->inq_count)
		sv_inq_pop(nc);
	sv->stash_len = 0;
}

/* Plaintext input: feed held receive buffers to the protocol until it
 * pauses, switches to TLS, or they run out. */
static void sv_plain_input(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;

	while (sv->inq_count && nc->state == NET_OPEN && !sv->tls_switch) {
		struct net_inbuf *e = &sv->inq[sv->inq_head];
		char *p = ring_buf_ptr(nc->t->ring, e->bid) + e->off;
		size_t used = nc->ops->on_feed(nc->proto, p, e->len - e->off, e->bid);

		assert(used <= e->len - e->off);
		e->off += (uint32_t)used;
		if (e->off < e->len)
			break; /* paused (or STARTTLS): resumed by net_resume() */
		sv_inq_pop(nc);
	}
}

/* ---- parking ---------------------------------------------------------------
 * A protocol that waits on a timer (an error tarpit, the delay after a
 * failed AUTH, a pending decision) or on a peer that does not read its
 * replies waits for as long as the peer likes.  Holding receive buffers
 * meanwhile would let a few hundred such clients, each sending tiny
 * segments, take the shard's whole pool.  So the connection is parked: its
 * recv is stopped and what it already sent is copied into its own stash
 * (the buffers go back at once).  On resume the stash goes into a user
 * buffer, fed first.  Input that does not fit the stash is an overrun: no
 * parked client holds any of the shared pool.  Which waits park is the
 * protocol's policy (wants_park); the mechanism is here. */

static bool sv_wants_park(const struct net_conn *nc)
{
	return nc->state == NET_OPEN && nc->tls_state != NET_TLS_HANDSHAKE &&
	       nc->ops->wants_park(nc->proto);
}

uint32_t sv_stash_cap(const struct net_conn *nc)
{
	uint32_t b = nc->t->ring->buf_size;

	return b < NET_STASH_MAX ? b : NET_STASH_MAX; /* it goes back into one buffer */
}

static bool sv_stash_add(struct net_conn *nc, const char *p, size_t n)
{
	struct net_served *sv = nc->sv;

	if (n > sv_stash_cap(nc) - sv->stash_len)
		return false;
	memcpy(sv->stash + sv->stash_len, p, n);
	sv->stash_len += (uint32_t)n;
	return true;
}

/* Move every byte held in shared buffers into the stash; a connection whose
 * input does not fit is the protocol's to end (on_overrun). */
static void sv_park_absorb(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;
	bool fits = true;

	while (fits && sv->pq_count) { /* TLS plaintext: the oldest bytes */
		struct net_inbuf *e = &sv->pq[sv->pq_head];

		fits =
		    sv_stash_add(nc, ring_buf_ptr(nc->t->ring, e->bid) + e->off, e->len - e->off);
		if (fits) {
			ring_buf_put(nc->t->ring, e->bid);
			sv->pq_head = (sv->pq_head + 1) % NET_PQ_MAX;
			sv->pq_count--;
		}
	}
	if (nc->tls)
		fits = fits && sv_stash_decrypt(nc);
	while (fits && !nc->tls && sv->inq_count) {
		struct net_inbuf *e = &sv->inq[sv->inq_head];

		fits =
		    sv_stash_add(nc, ring_buf_ptr(nc->t->ring, e->bid) + e->off, e->len - e->off);
		if (fits)
			sv_inq_pop(nc);
	}
	if (fits)
		return;
	nc->ops->on_overrun(nc->proto, sv->stash_len);
}

static void sv_park(struct net_conn *nc)
{
	nc->sv->parked = true;
	sv_cancel_recv(nc);
	sv_park_absorb(nc);
}

/* The stash goes back in front of the input, in a user buffer so body
 * bytes among it can be spooled by reference.  false: no user buffer now
 * (retried when one comes back). */
static bool sv_unpark(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;

	if (sv->stash_len) {
		int bid = ring_buf_alloc(nc->t->ring);

		if (bid < 0) {
			nc->t->user_starved = true;
			return false;
		}
		memcpy(ring_buf_ptr(nc->t->ring, (uint16_t)bid), sv->stash, sv->stash_len);
		struct net_inbuf e = {.bid = (uint16_t)bid, .off = 0, .len = sv->stash_len};

		/* Parking emptied both queues, and nothing is received while
		 * parked, so the front is free. */
		if (nc->tls) {
			assert(sv->pq_count == 0);
			sv->pq[sv->pq_head] = e;
			sv->pq_count = 1;
		} else {
			assert(sv->inq_count == 0);
			sv->inq[sv->inq_head] = e;
			sv->inq_count = 1;
		}
		sv->stash_len = 0;
	}
	sv->parked = false;
	return true;
}

/* ---- the input path ---------------------------------------------------------- */

static bool sv_wants_recv(const struct net_conn *nc)
{
	const struct net_served *sv = nc->sv;

	return nc->state == NET_OPEN && !sv->parked && !sv->peer_eof && nc->rx == NET_RX_IDLE &&
	       sv->inq_count < nc->t->inq_cap;
}

/* After the peer's FIN: every byte it sent was fed and the protocol waits
 * for nothing, so nothing more will be answered. */
static bool sv_input_answered(const struct net_conn *nc)
{
	const struct net_served *sv = nc->sv;

	return sv->peer_eof && nc->state == NET_OPEN && !sv->parked && sv->inq_count == 0 &&
	       sv->pq_count == 0 && !nc->ops->waits(nc->proto) &&
	       !(nc->tls && nc->t->user_starved); /* plaintext still in the TLS layer */
}

void sv_process(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;

	if (sv->in_feed)
		return;
	sv->in_feed = true;
	/* While parked, whatever arrived before the recv stopped goes into the
	 * stash first: the stash is the oldest input, so unparking puts it in
	 * front of an empty queue (a send completing with more to send ends an
	 * unread-replies park without passing here, and a data completion
	 * posted before the cancel may follow it in the same batch). */
	if (sv->parked && nc->state == NET_OPEN)
		sv_park_absorb(nc);
	if (sv->parked && nc->state == NET_OPEN && !sv_wants_park(nc))
		sv_unpark(nc);
	if (!sv->parked) {
		if (nc->tls)
			sv_tls_input(nc);
		else
			sv_plain_input(nc);
		if (sv->tls_switch && (nc->state == NET_OPEN || nc->state == NET_DRAINING))
			sv_tls_begin(nc);
		if (sv_wants_park(nc))
			sv_park(nc);
	}
	sv->in_feed = false;
	if (sv_wants_recv(nc))
		sv_arm(nc);
	else if (sv_input_answered(nc))
		net_shutdown(nc);
	sv_flush(nc);
}

void net_receive(struct net_conn *nc)
{
	sv_process(nc);
}

/* Inside the feed loop input goes on by itself; a closing connection
 * takes none. */
void net_resume(struct net_conn *nc)
{
	if (nc->sv->in_feed || (nc->state != NET_OPEN && nc->state != NET_DRAINING))
		return;
	sv_process(nc);
}

/* Bytes arrived in provided buffer bid: queued and fed. */
static void sv_on_data(struct net_conn *nc, uint16_t bid, uint32_t len)
{
	struct net_served *sv = nc->sv;

	ring_buf_taken(nc->t->ring, bid);
	if (nc->state != NET_OPEN && nc->state != NET_DRAINING) {
		ring_buf_put(nc->t->ring, bid);
		return;
	}
	/* The recv was armed below the cap; unparking puts one entry into an
	 * empty queue while none is armed, and the cap is two or more. */
	assert(sv->inq_count < nc->t->inq_cap);
	sv->inq[(sv->inq_head + sv->inq_count) % NET_INQ_MAX] =
	    (struct net_inbuf){.bid = bid, .off = 0, .len = len};
	sv->inq_count++;
	if (nc->ops->on_recv)
		nc->ops->on_recv(nc->proto);
	sv_process(nc); /* armed again there while it holds less than the cap */
}

void sv_on_recv(struct net_conn *nc, int res, uint32_t flags)
{
	assert(nc->rx == NET_RX_ARMED || nc->rx == NET_RX_CANCELLING);
	assert(!(flags & IORING_CQE_F_MORE)); /* single-shot */
	if (res == -ENOBUFS && nc->rx == NET_RX_ARMED) {
		/* Out of receive buffers: backpressure, not an error.  Armed
		 * again at the end of a loop turn once buffers came back. */
		sv_rx_enter(nc, NET_RX_NOBUFS);
		nc->t->ring->buf_exhausted = true;
		nc->t->enobufs++;
		return;
	}
	sv_rx_enter(nc, NET_RX_IDLE);
	if (res > 0) {
		assert(flags & IORING_CQE_F_BUFFER);
		sv_on_data(nc, (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT), (uint32_t)res);
		return;
	}
	if (nc->state != NET_OPEN && nc->state != NET_DRAINING)
		return;
	if (res == -ECANCELED || res == -ENOBUFS) {
		sv_process(nc); /* parked (armed again on unpark), or unparked since */
		return;
	}
	if (res == 0) {
		/* FIN: the peer shut down its sending side, which RFC 5321
		 * 4.1.1.10 allows once QUIT is sent; it still reads.  What it
		 * sent is answered first (a reply dropped here may be the 250
		 * of a message being committed: the client would send it
		 * again), then the connection closes (sv_input_answered). */
		nc->sv->peer_eof = true;
		sv_process(nc);
		return;
	}
	/* An error: the peer is gone; pending output is moot. */
	net_close(nc);
}

/* Some recvs found no free buffer; buffers came back since.  And TLS
 * connections that found no user buffer for plaintext go on. */
void net_rearm_starved(struct net_table *t)
{
	struct ring *r = t->ring;

	if (t->user_starved && r->user_free_count) {
		t->user_starved = false;
		for (uint32_t i = 0; i < t->nslots; i++) {
			struct net_conn *nc = &t->conns[i];

			if ((nc->state == NET_OPEN || nc->state == NET_DRAINING) &&
			    (nc->tls || nc->sv->parked) && !nc->sv->in_feed)
				sv_process(nc);
		}
	}
	if (!r->buf_exhausted || r->buf_free == 0)
		return;
	r->buf_exhausted = false;
	for (uint32_t i = 0; i < t->nslots; i++) {
		struct net_conn *nc = &t->conns[i];

		if (nc->state == NET_FREE || nc->rx != NET_RX_NOBUFS)
			continue;
		sv_rx_enter(nc, NET_RX_IDLE);
		if (sv_wants_recv(nc))
			sv_arm(nc);
	}
}

/* ---- timers, the peek, holds ------------------------------------------------- */

void net_timer(struct net_conn *nc, unsigned which, uint32_t ms)
{
	struct net_served *sv = nc->sv;

	assert(which < NET_TIMERS && !sv->timer_armed[which] && nc->state == NET_OPEN);
	sv->timer_ts[which].tv_sec = ms / 1000;
	sv->timer_ts[which].tv_nsec = (long long)(ms % 1000) * 1000000;
	ring_prep_timeout(nc->t->ring, &sv->timer_ts[which],
			  net_ud(nc, (enum net_op)(NET_OP_TIMER + which)));
	sv->timer_armed[which] = true;
	nc->inflight++;
}

void sv_cancel_timers(struct net_conn *nc)
{
	for (unsigned i = 0; i < NET_TIMERS; i++) {
		if (!nc->sv->timer_armed[i])
			continue;
		ring_prep_cancel(nc->t->ring, net_ud(nc, (enum net_op)(NET_OP_TIMER + i)),
				 net_ud(nc, NET_OP_CANCEL));
		nc->inflight++;
	}
}

/* No greet pause: still refuse bytes that arrived before the greeting (a
 * client that talks without reading).  The close cancels it with every
 * other op on the socket. */
void net_peek(struct net_conn *nc, char *byte)
{
	struct io_uring_sqe *sqe = ring_sqe(nc->t->ring);

	assert(nc->state == NET_OPEN && !nc->sv->peek_armed);
	io_uring_prep_recv(sqe, nc->fd, byte, 1, MSG_PEEK | MSG_DONTWAIT);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_PEEK));
	nc->sv->peek_armed = true;
	nc->inflight++;
}

void sv_on_event(struct net_conn *nc, enum net_op op, int res)
{
	struct net_served *sv = nc->sv;

	assert(sv);
	if (op == NET_OP_PEEK) {
		sv->peek_armed = false;
		if (nc->state == NET_OPEN)
			nc->ops->on_peek(nc->proto, res > 0);
	} else {
		unsigned which = (unsigned)(op - NET_OP_TIMER);

		sv->timer_armed[which] = false;
		/* A closed session may stay open for as long as its last
		 * reply takes to go out: it takes no decision any more. */
		if (nc->state == NET_OPEN && res != -ECANCELED)
			nc->ops->on_timer(nc->proto, which);
	}
	if (nc->state == NET_OPEN || nc->state == NET_DRAINING)
		sv_process(nc);
}

void net_hold(struct net_conn *nc)
{
	assert(nc->state == NET_OPEN || nc->state == NET_DRAINING);
	nc->sv->holds++;
}

void net_unhold(struct net_conn *nc)
{
	assert(nc->sv->holds > 0);
	nc->sv->holds--;
}

void net_settle(struct net_conn *nc)
{
	net_reap(nc);
}
