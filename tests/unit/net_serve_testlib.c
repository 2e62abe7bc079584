/* net_serve_testlib — a real ring, a served net_table, loopback clients and a recording protocol. */
#include "net_serve_testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#define NST_SQ_ENTRIES 256

void nst_open(struct nst *x, const struct nst_cfg *cfg)
{
	char why[256] = "";
	socklen_t alen = sizeof(x->addr);

	memset(x, 0, sizeof(*x));
	x->cfg = *cfg;
	/* As shard_setup: provided buffers for receives, user buffers for TLS
	 * plaintext and for the stash of a connection that unparks. */
	if (ring_init(&x->ring, NST_SQ_ENTRIES, cfg->nbufs, cfg->buf_size, why, sizeof(why)) < 0)
		fail_msg("ring_init: %s", why);
	x->ring_up = true;
	assert_int_equal(ring_user_bufs_init(&x->ring, cfg->users), 0);
	x->now = 1000;
	x->t = net_table_served(&x->ring, NET_TABLE_INBOUND, cfg->nslots, cfg->inq_cap,
				cfg->out_cap, &x->now);
	assert_non_null(x->t);
	x->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	assert_true(x->lfd >= 0);
	x->addr =
	    (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(x->lfd, (struct sockaddr *)&x->addr, sizeof(x->addr)), 0);
	assert_int_equal(listen(x->lfd, 16), 0);
	assert_int_equal(getsockname(x->lfd, (struct sockaddr *)&x->addr, &alen), 0);
	x->wall_end = ntl_mono_ms() + NTL_WALL_MS;
	alarm(NTL_WALL_MS / 1000 + 10);
}

void nst_close(struct nst *x)
{
	alarm(0);
	if (x->ring_up)
		ring_exit(&x->ring);
	x->ring_up = false;
	net_table_free(x->t);
	x->t = NULL;
	if (x->lfd >= 0)
		close(x->lfd);
	x->lfd = -1;
}

/* ---- the recording protocol ------------------------------------------------------ */

static void rec_ev(struct nsp *r, char ev)
{
	if (r->n[(unsigned char)NST_EV_CLOSED])
		r->late = true; /* nothing may follow on_closed */
	r->n[(unsigned char)ev]++;
	if (ev == NST_EV_FEED && r->nlog && r->log[r->nlog - 1] == ev)
		return; /* runs of feeds: one letter */
	if (r->nlog < NST_LOG_MAX)
		r->log[r->nlog++] = ev;
	r->log[r->nlog] = '\0';
}

void nsp_take(struct nsp *r, const char *p, size_t n)
{
	if (n == 0)
		return;
	if (r->fed_len + n > r->fed_cap) {
		r->fed_cap = (r->fed_len + n) * 2 + 64;
		r->fed = realloc(r->fed, r->fed_cap);
		assert_non_null(r->fed);
	}
	memcpy(r->fed + r->fed_len, p, n);
	r->fed_len += n;
}

static size_t rec_feed(void *proto, const char *p, size_t len, uint16_t bid)
{
	struct nsp *r = proto;
	struct ring *ring = &r->x->ring;
	const char *base;
	size_t took;

	assert_true(len > 0);
	if (r->in_feed)
		r->reentered = true;
	rec_ev(r, NST_EV_FEED);
	if (r->feeds++ == 0)
		r->first_bid = bid;
	/* The bid names the buffer the bytes are in (net.h: the protocol may
	 * keep a reference on it). */
	if (bid >= ring->buf_count + ring->user_count) {
		r->bid_bad = true;
	} else {
		base = ring_buf_ptr(ring, bid);
		if (p < base || p + len > base + ring->buf_size)
			r->bid_bad = true;
		r->last_off = (size_t)(p - base);
	}
	r->last_bid = bid;
	if (bid >= ring->buf_count)
		r->user_bid = true;
	r->in_feed = true;
	if (r->feed) {
		took = r->feed(r, p, len, bid);
	} else {
		took = len < r->budget ? len : r->budget;
		if (r->budget != SIZE_MAX)
			r->budget -= took;
		nsp_take(r, p, took);
		net_resume(r->nc); /* never re-entered: a no-op here */
	}
	r->in_feed = false;
	return took;
}

static bool rec_wants_park(void *proto)
{
	return ((struct nsp *)proto)->park;
}

static bool rec_waits(void *proto)
{
	struct nsp *r = proto;

	r->waits_calls++;
	return r->waits;
}

static void rec_overrun(void *proto, uint32_t held)
{
	struct nsp *r = proto;

	(void)held;
	rec_ev(r, NST_EV_OVERRUN);
	if (r->on_overrun)
		r->on_overrun(r);
}

static void rec_peek(void *proto, bool early)
{
	rec_ev(proto, early ? NST_EV_PEEK : NST_EV_PEEK_NO);
}

static void rec_timer(void *proto, unsigned which)
{
	struct nsp *r = proto;

	assert_true(which < NET_TIMERS);
	rec_ev(r, which ? NST_EV_TIMER1 : NST_EV_TIMER0);
	if (r->on_timer)
		r->on_timer(r);
}

static void rec_tls_ready(void *proto)
{
	struct nsp *r = proto;

	rec_ev(r, NST_EV_TLS_READY);
	if (r->on_tls_ready)
		r->on_tls_ready(r);
}

static void rec_error(void *proto, int err, const char *why)
{
	(void)err;
	(void)why;
	rec_ev(proto, NST_EV_ERROR);
}

static void rec_tick(void *proto)
{
	((struct nsp *)proto)->ticks++;
}

static bool rec_busy(void *proto)
{
	return ((struct nsp *)proto)->busy;
}

static void rec_closed(void *proto)
{
	rec_ev(proto, NST_EV_CLOSED);
}

const struct net_ops nsp_ops = {
    .on_tls_ready = rec_tls_ready,
    .on_error = rec_error,
    .on_closed = rec_closed,
    .on_feed = rec_feed,
    .wants_park = rec_wants_park,
    .waits = rec_waits,
    .on_overrun = rec_overrun,
    .on_peek = rec_peek,
    .on_timer = rec_timer,
    .on_tick = rec_tick,
    .busy = rec_busy,
};

void nsp_init(struct nsp *r, struct nst *x)
{
	memset(r, 0, sizeof(*r));
	r->x = x;
	r->sfd = -1;
	r->budget = SIZE_MAX;
	x->watch = r;
}

void nsp_free(struct nsp *r)
{
	free(r->fed);
	r->fed = NULL;
}

unsigned nsp_count(const struct nsp *r, char ev)
{
	return r->n[(unsigned char)ev];
}

bool nsp_closed(void *rec)
{
	return nsp_count(rec, NST_EV_CLOSED) > 0;
}

int nst_accept(struct nst *x, struct nsp *r)
{
	int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int sfd;

	assert_true(cfd >= 0);
	/* A loopback connect to a listening socket completes from its backlog. */
	assert_int_equal(connect(cfd, (struct sockaddr *)&x->addr, sizeof(x->addr)), 0);
	assert_int_equal(fcntl(cfd, F_SETFL, O_NONBLOCK), 0);
	/* Blocking, as the shard's accept makes it: a send the client does not
	 * read waits in the ring (on a non-blocking socket it would fail). */
	sfd = accept4(x->lfd, NULL, NULL, SOCK_CLOEXEC);
	assert_true(sfd >= 0);
	r->nc = net_open(x->t, &nsp_ops, r);
	assert_non_null(r->nc);
	net_adopt(r->nc, sfd, "test-peer");
	r->sfd = sfd;
	return cfd;
}

/* ---- the loop ------------------------------------------------------------------- */

uint32_t nst_held(const struct nst *x)
{
	return x->ring.buf_count - x->ring.buf_free;
}

int nst_inq(int fd)
{
	int n = -1;

	assert_int_equal(ioctl(fd, FIONREAD, &n), 0);
	return n;
}

unsigned nst_turn(struct nst *x, int wait_ms)
{
	struct __kernel_timespec ts = {.tv_sec = wait_ms / 1000,
				       .tv_nsec = (long long)(wait_ms % 1000) * 1000000};
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	int rc;

	rc = io_uring_submit_and_wait_timeout(&x->ring.uring, &cqe, 1, &ts, NULL);
	x->ring.pending = 0;
	assert_true(rc >= 0 || rc == -ETIME || rc == -EINTR || rc == -EBUSY || rc == -EAGAIN);
	x->turns++;
	io_uring_for_each_cqe(&x->ring.uring, head, cqe)
	{
		uint64_t ud = cqe->user_data;

		n++;
		assert_int_equal(ops_owner(ring_ud_op(ud)), OPS_OWNER_NET);
		assert_int_equal(ring_ud_aux(ud), NET_TABLE_INBOUND);
		/* net_complete_cqe asserts the generation: count a completion
		 * for a slot freed since, so the test can say so. */
		if (!net_find(x->t, ring_ud_slot(ud), ring_ud_gen(ud))) {
			x->stale++;
			continue;
		}
		net_complete_cqe(x->t, ud, cqe->res, cqe->flags);
	}
	io_uring_cq_advance(&x->ring.uring, n);
	net_rearm_starved(x->t); /* once per turn, as shard_loop */
	if (nst_held(x) > x->max_held)
		x->max_held = nst_held(x);
	return n;
}

static void nst_bound(struct nst *x, unsigned long turns0, const char *what)
{
	const char *log = x->watch ? x->watch->log : "";

	if (x->turns - turns0 > NTL_TURNS_MAX)
		fail_msg("%s: still waiting after %d ring turns (log %s)", what, NTL_TURNS_MAX,
			 log);
	if (ntl_mono_ms() > x->wall_end)
		fail_msg("%s: still waiting after %d ms (log %s)", what, NTL_WALL_MS, log);
}

void nst_run(struct nst *x, bool (*done)(void *arg), void (*peer)(void *arg), void *arg,
	     const char *what)
{
	unsigned long turns0 = x->turns;

	while (!done(arg)) {
		nst_bound(x, turns0, what);
		if (peer)
			peer(arg);
		if (done(arg))
			break;
		nst_turn(x, peer ? 1 : 20);
	}
}

void nst_settle(struct nst *x, int quiet_ms)
{
	unsigned long turns0 = x->turns;

	while (nst_turn(x, quiet_ms) > 0)
		nst_bound(x, turns0, "settle");
}

/* ---- the peer --------------------------------------------------------------------- */

void nst_peer_init(struct nst_peer *p, struct nst *x, int fd)
{
	p->x = x;
	p->fd = fd;
	p->len = p->want = 0;
	p->eof = false;
}

void nst_peer_pump(void *peer)
{
	struct nst_peer *p = peer;

	while (!p->eof && p->len < sizeof(p->in)) {
		ssize_t n = ntl_read_some(p->fd, p->in + p->len, sizeof(p->in) - p->len);

		if (n < 0)
			return;
		if (n == 0)
			p->eof = true;
		p->len += (size_t)n;
	}
}

static bool peer_has(void *peer)
{
	struct nst_peer *p = peer;

	return p->len >= p->want || p->eof;
}

static bool peer_eof(void *peer)
{
	return ((struct nst_peer *)peer)->eof;
}

void nst_peer_wait(struct nst_peer *p, size_t want, const char *what)
{
	p->want = want;
	nst_run(p->x, peer_has, nst_peer_pump, p, what);
}

void nst_peer_wait_eof(struct nst_peer *p, const char *what)
{
	nst_run(p->x, peer_eof, nst_peer_pump, p, what);
}
