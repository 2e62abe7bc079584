/*
 * Pins net's served mode (src/net/net_serve.c, net_serve_out.c) on a real
 * ring with provided buffers and real loopback sockets: the feed and its
 * pause, the per-connection cap on the shared pool and its starvation,
 * parking and the stash, the write buffer, the peer's FIN, timers, the
 * peek, holds and the reap, and a stale generation.  TLS is pinned in
 * net_serve_tls.c.
 *
 * The recording protocol (net_serve_testlib.h) logs one letter per
 * callback; the test plays the shard and the client.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "net_serve_testlib.h"

#define BUF_SIZE 1024
#define FLOOD	 (16 * 1024)

static struct nst fx;
static struct nst_peer peer;

static const struct nst_cfg cfg_default = {
    .nslots = 2, .nbufs = 16, .buf_size = BUF_SIZE, .inq_cap = 4, .out_cap = 4096, .users = 16};
/* The whole pool is one connection's cap. */
static const struct nst_cfg cfg_tiny = {
    .nslots = 2, .nbufs = 2, .buf_size = BUF_SIZE, .inq_cap = 2, .out_cap = 4096, .users = 4};
/* A write buffer larger than the socket buffers hold. */
#define BIG 400000
static const struct nst_cfg cfg_big = {.nslots = 1,
				       .nbufs = 16,
				       .buf_size = BUF_SIZE,
				       .inq_cap = 4,
				       .out_cap = 512 * 1024,
				       .users = 4};
static const struct nst_cfg cfg_one = {
    .nslots = 1, .nbufs = 16, .buf_size = BUF_SIZE, .inq_cap = 4, .out_cap = 4096, .users = 4};

static int setup(void **state)
{
	(void)state;
	nst_open(&fx, &cfg_default);
	return 0;
}

static int setup_tiny(void **state)
{
	(void)state;
	nst_open(&fx, &cfg_tiny);
	return 0;
}

static int setup_one(void **state)
{
	(void)state;
	nst_open(&fx, &cfg_one);
	return 0;
}

static int setup_big(void **state)
{
	(void)state;
	nst_open(&fx, &cfg_big);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	nst_close(&fx);
	return 0;
}

static char *pattern(size_t len)
{
	char *p = malloc(len);

	assert_non_null(p);
	for (size_t i = 0; i < len; i++)
		p[i] = (char)('a' + (i * 7 + i / 251) % 26);
	return p;
}

/* Closes r's connection and waits for on_closed; every buffer is back and
 * no completion came for the freed slot. */
static void close_and_reap(struct nsp *r)
{
	net_close(r->nc);
	nst_run(&fx, nsp_closed, NULL, r, "close");
	nst_settle(&fx, 5);
	assert_int_equal(nsp_count(r, NST_EV_CLOSED), 1);
	assert_false(r->late);
	assert_int_equal(fx.stale, 0);
	assert_int_equal(nst_held(&fx), 0);
	assert_int_equal(net_active(fx.t), 0);
}

struct fed_wait {
	struct nsp *r;
	size_t fed;
};

static bool fed_and_received(void *arg)
{
	struct fed_wait *w = arg;

	return w->r->fed_len >= w->fed && nst_inq(w->r->sfd) == 0;
}

/* A protocol that takes less pauses the input; net_resume goes on from the
 * byte it stopped at, in the same buffer, which the bid names. */
static void test_feed_pause_resume(void **state)
{
	struct nsp r;
	struct fed_wait w = {&r, 3};

	(void)state;
	nsp_init(&r, &fx);
	r.budget = 3;
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	net_receive(r.nc);
	ntl_write_all(peer.fd, "hello world", 11);
	nst_run(&fx, fed_and_received, NULL, &w, "first feed");
	nst_settle(&fx, 10);
	/* Paused: the rest stays in its buffer, nothing more is fed. */
	assert_int_equal(r.fed_len, 3);
	assert_memory_equal(r.fed, "hel", 3);
	assert_int_equal(nst_held(&fx), 1);
	assert_true(r.first_bid < fx.ring.buf_count);
	r.budget = SIZE_MAX;
	net_resume(r.nc);
	/* Fed inside the call, from offset 3 of the same buffer. */
	assert_int_equal(r.fed_len, 11);
	assert_memory_equal(r.fed, "hello world", 11);
	assert_int_equal(r.last_bid, r.first_bid);
	assert_int_equal(r.last_off, 3);
	assert_false(r.bid_bad);
	assert_false(r.reentered); /* net_resume inside on_feed: not re-entered */
	assert_int_equal(nst_held(&fx), 0);
	close_and_reap(&r);
	assert_string_equal(r.log, "FX");
	close(peer.fd);
	nsp_free(&r);
}

static bool held_cap(void *arg)
{
	(void)arg;
	return nst_held(&fx) >= fx.cfg.inq_cap;
}

static bool fed_all(void *arg)
{
	struct fed_wait *w = arg;

	return w->r->fed_len >= w->fed;
}

/* A client that floods while its protocol takes nothing holds at most
 * inq_cap buffers: the rest stays in its socket. */
static void test_flood_holds_inq_cap(void **state)
{
	struct nsp r;
	char *data = pattern(FLOOD);
	struct fed_wait w = {&r, FLOOD};

	(void)state;
	nsp_init(&r, &fx);
	r.budget = 0;
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	net_receive(r.nc);
	ntl_write_all(peer.fd, data, FLOOD);
	nst_run(&fx, held_cap, NULL, NULL, "the cap");
	nst_settle(&fx, 10);
	assert_int_equal(nst_held(&fx), fx.cfg.inq_cap);
	assert_int_equal(fx.max_held, fx.cfg.inq_cap);
	assert_true(nst_inq(r.sfd) >= FLOOD - (int)(fx.cfg.inq_cap * BUF_SIZE));
	assert_int_equal(r.fed_len, 0);
	r.budget = SIZE_MAX;
	net_resume(r.nc);
	nst_run(&fx, fed_all, NULL, &w, "the flood");
	assert_memory_equal(r.fed, data, FLOOD);
	assert_int_equal(fx.max_held, fx.cfg.inq_cap);
	assert_false(r.bid_bad);
	close_and_reap(&r);
	close(peer.fd);
	free(data);
	nsp_free(&r);
}

static bool starved(void *arg)
{
	(void)arg;
	return net_enobufs(fx.t) > 0;
}

struct two_fed {
	struct nsp *a, *b;
	size_t a_len, b_len;
};

static bool both_fed(void *arg)
{
	struct two_fed *w = arg;

	return w->a->fed_len >= w->a_len && w->b->fed_len >= w->b_len;
}

/* A pool smaller than the clients' demand: a recv that finds no buffer
 * waits (ENOBUFS, counted), and net_rearm_starved arms it again once
 * buffers came back. */
static void test_enobufs_then_rearm(void **state)
{
	struct nsp a, b;
	struct nst_peer pb;
	char *data = pattern(4 * BUF_SIZE);
	struct two_fed w = {&a, &b, 4 * BUF_SIZE, 2};

	(void)state;
	nsp_init(&a, &fx);
	nsp_init(&b, &fx);
	a.budget = 0;
	nst_peer_init(&peer, &fx, nst_accept(&fx, &a));
	nst_peer_init(&pb, &fx, nst_accept(&fx, &b));
	net_receive(a.nc);
	ntl_write_all(peer.fd, data, 4 * BUF_SIZE);
	nst_run(&fx, held_cap, NULL, NULL, "a holds the pool");
	assert_int_equal(nst_held(&fx), fx.ring.buf_count);
	net_receive(b.nc);
	ntl_write_all(pb.fd, "hi", 2);
	nst_run(&fx, starved, NULL, NULL, "b finds no buffer");
	nst_settle(&fx, 10);
	assert_int_equal(b.feeds, 0);
	assert_int_equal(nst_inq(b.sfd), 2);
	a.budget = SIZE_MAX;
	net_resume(a.nc);
	nst_run(&fx, both_fed, NULL, &w, "both fed");
	assert_memory_equal(a.fed, data, 4 * BUF_SIZE);
	assert_memory_equal(b.fed, "hi", 2);
	net_close(a.nc);
	close_and_reap(&b);
	assert_int_equal(nsp_count(&a, NST_EV_CLOSED), 1);
	close(peer.fd);
	close(pb.fd);
	free(data);
	nsp_free(&a);
	nsp_free(&b);
}

static bool offered(void *arg)
{
	struct nsp *r = arg;

	return r->feeds > 0 && nst_inq(r->sfd) == 0;
}

static bool in_socket(void *arg)
{
	struct nsp *r = arg;

	return nst_inq(r->sfd) == 3;
}

/* Parked: the recv stops, the held input moves to the stash and its
 * buffer goes back; later input waits in the socket.  Unparked, the stash
 * is fed first (from a user buffer), then what came meanwhile. */
static void test_park_stash_unpark(void **state)
{
	struct nsp r;
	struct fed_wait w = {&r, 6};

	(void)state;
	nsp_init(&r, &fx);
	r.budget = 0;
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	net_receive(r.nc);
	ntl_write_all(peer.fd, "abc", 3);
	nst_run(&fx, offered, NULL, &r, "offered");
	nst_settle(&fx, 10);
	assert_int_equal(nst_held(&fx), 1);
	r.park = true;
	net_resume(r.nc);
	assert_true(net_parked(r.nc));
	assert_int_equal(nst_held(&fx), 0); /* copied out, the buffer is back */
	nst_settle(&fx, 10);		    /* the recv's cancel */
	ntl_write_all(peer.fd, "def", 3);
	nst_run(&fx, in_socket, NULL, &r, "def in the socket");
	nst_settle(&fx, 10);
	assert_int_equal(nst_inq(r.sfd), 3); /* no recv while parked */
	assert_int_equal(nst_held(&fx), 0);
	assert_int_equal(r.fed_len, 0);
	r.park = false;
	r.budget = SIZE_MAX;
	net_resume(r.nc);
	assert_false(net_parked(r.nc));
	assert_int_equal(r.fed_len, 3); /* the stash, at once */
	assert_memory_equal(r.fed, "abc", 3);
	assert_true(r.user_bid);
	assert_true(r.last_bid >= fx.ring.buf_count);
	nst_run(&fx, fed_all, NULL, &w, "after the stash");
	assert_memory_equal(r.fed, "abcdef", 6);
	assert_false(r.bid_bad);
	close_and_reap(&r);
	assert_int_equal(fx.ring.user_free_count, fx.cfg.users);
	close(peer.fd);
	nsp_free(&r);
}

static void overrun_close(struct nsp *r)
{
	net_close(r->nc);
}

/* Held input larger than the stash (one buffer's worth): on_overrun, and
 * the protocol's close returns every buffer. */
static void test_park_overrun(void **state)
{
	struct nsp r;
	char *data = pattern(4 * BUF_SIZE);

	(void)state;
	nsp_init(&r, &fx);
	r.budget = 0;
	r.on_overrun = overrun_close;
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	net_receive(r.nc);
	ntl_write_all(peer.fd, data, 4 * BUF_SIZE);
	nst_run(&fx, held_cap, NULL, NULL, "the cap");
	nst_settle(&fx, 10);
	/* The precondition: more is held than the stash takes. */
	assert_true(4 * BUF_SIZE - nst_inq(r.sfd) > BUF_SIZE);
	r.park = true;
	net_resume(r.nc);
	assert_int_equal(nsp_count(&r, NST_EV_OVERRUN), 1);
	assert_true(net_closing(r.nc));
	nst_run(&fx, nsp_closed, NULL, &r, "close");
	assert_string_equal(r.log, "FOX");
	nst_settle(&fx, 5);
	assert_int_equal(nst_held(&fx), 0);
	assert_int_equal(fx.stale, 0);
	close(peer.fd);
	free(data);
	nsp_free(&r);
}

/* Replies written are sent by a flush, a group in one go; net_shutdown
 * sends what is buffered, then closes (the client sees EOF). */
static void test_write_flush_shutdown(void **state)
{
	static const char all[] = "220 hi\r\n250 a\r\n250 b\r\n221 bye\r\n";
	struct nsp r;

	(void)state;
	nsp_init(&r, &fx);
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	net_receive(r.nc);
	assert_int_equal(net_out_free(r.nc), fx.cfg.out_cap);
	net_write(r.nc, "220 hi\r\n", 8);
	net_flush(r.nc);
	nst_peer_wait(&peer, 8, "greeting");
	assert_memory_equal(peer.in, "220 hi\r\n", 8);
	net_write(r.nc, "250 a\r\n", 7);
	net_write(r.nc, "250 b\r\n", 7);
	net_flush(r.nc);
	nst_peer_wait(&peer, 22, "two replies");
	net_write(r.nc, "221 bye\r\n", 9);
	net_shutdown(r.nc);
	assert_true(net_draining(r.nc));
	assert_false(net_open_for_input(r.nc));
	nst_peer_wait_eof(&peer, "the end");
	assert_int_equal(peer.len, sizeof(all) - 1);
	assert_memory_equal(peer.in, all, sizeof(all) - 1);
	nst_run(&fx, nsp_closed, NULL, &r, "closed");
	assert_string_equal(r.log, "X");
	nst_settle(&fx, 5);
	assert_int_equal(fx.stale, 0);
	close(peer.fd);
	nsp_free(&r);
}

/* net_drop_output while a plaintext send is in flight keeps the bytes it
 * carries (they may be partly on the wire) and drops the rest. */
static void test_drop_output_keeps_inflight(void **state)
{
	struct nsp r;

	(void)state;
	nsp_init(&r, &fx);
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	net_receive(r.nc);
	net_write(r.nc, "250 sent\r\n", 10);
	net_flush(r.nc); /* prepared: in flight from here */
	net_write(r.nc, "250 dropped\r\n", 13);
	net_drop_output(r.nc);
	assert_int_equal(net_out_free(r.nc), fx.cfg.out_cap - 10);
	nst_peer_wait(&peer, 10, "the send in flight");
	nst_settle(&fx, 10);
	net_write(r.nc, "221 next\r\n", 10);
	net_flush(r.nc);
	nst_peer_wait(&peer, 20, "the next reply");
	nst_settle(&fx, 10);
	nst_peer_pump(&peer);
	assert_int_equal(peer.len, 20);
	assert_memory_equal(peer.in, "250 sent\r\n221 next\r\n", 20);
	close_and_reap(&r);
	close(peer.fd);
	nsp_free(&r);
}

static bool waits_asked(void *arg)
{
	return ((struct nsp *)arg)->waits_calls > 0;
}

/* The client's FIN: its input is answered first; the connection shuts
 * down once the protocol waits for nothing, not before (RFC 5321
 * 4.1.1.10). */
static void test_peer_fin_answered_first(void **state)
{
	struct nsp r;

	(void)state;
	nsp_init(&r, &fx);
	r.waits = true; /* the reply to QUIT is not written yet */
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	net_receive(r.nc);
	ntl_write_all(peer.fd, "QUIT\r\n", 6);
	assert_int_equal(shutdown(peer.fd, SHUT_WR), 0);
	nst_run(&fx, waits_asked, NULL, &r, "the FIN");
	nst_settle(&fx, 10);
	assert_memory_equal(r.fed, "QUIT\r\n", 6);
	assert_false(nsp_closed(&r));
	assert_false(net_draining(r.nc));
	nst_peer_pump(&peer);
	assert_false(peer.eof);
	assert_int_equal(peer.len, 0);
	net_write(r.nc, "221 bye\r\n", 9);
	r.waits = false;
	net_resume(r.nc);
	assert_true(net_draining(r.nc));
	nst_peer_wait_eof(&peer, "the answer, then the end");
	assert_int_equal(peer.len, 9);
	assert_memory_equal(peer.in, "221 bye\r\n", 9);
	nst_run(&fx, nsp_closed, NULL, &r, "closed");
	assert_string_equal(r.log, "FX");
	close(peer.fd);
	nsp_free(&r);
}

static bool both_timers(void *arg)
{
	struct nsp *r = arg;

	return nsp_count(r, NST_EV_TIMER0) && nsp_count(r, NST_EV_TIMER1);
}

static unsigned peeks_due;

static bool peeked(void *arg)
{
	struct nsp *r = arg;

	return nsp_count(r, NST_EV_PEEK) + nsp_count(r, NST_EV_PEEK_NO) >= peeks_due ||
	       nsp_closed(r);
}

static bool bytes_in(void *arg)
{
	return nst_inq(((struct nsp *)arg)->sfd) > 0;
}

/* The protocol's two timers each call on_timer once; the peek says
 * whether bytes came before the greeting, and takes none of them. */
static void test_timers_and_peek(void **state)
{
	struct nsp r;
	struct fed_wait w = {&r, 4};
	char byte = 0;

	(void)state;
	nsp_init(&r, &fx);
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	net_timer(r.nc, 0, 5);
	net_timer(r.nc, 1, 1);
	nst_run(&fx, both_timers, NULL, &r, "timers");
	assert_int_equal(nsp_count(&r, NST_EV_TIMER0), 1);
	assert_int_equal(nsp_count(&r, NST_EV_TIMER1), 1);
	peeks_due = 1;
	net_peek(r.nc, &byte);
	nst_run(&fx, peeked, NULL, &r, "the peek, silent client");
	assert_int_equal(nsp_count(&r, NST_EV_PEEK_NO), 1);
	ntl_write_all(peer.fd, "EHLO", 4);
	nst_run(&fx, bytes_in, NULL, &r, "bytes in");
	peeks_due = 2;
	net_peek(r.nc, &byte);
	nst_run(&fx, peeked, NULL, &r, "the peek, early talker");
	assert_int_equal(nsp_count(&r, NST_EV_PEEK), 1);
	assert_int_equal(byte, 'E');
	net_receive(r.nc);
	nst_run(&fx, fed_all, NULL, &w, "input after the peek");
	assert_memory_equal(r.fed, "EHLO", 4);
	close_and_reap(&r);
	assert_true(strcmp(r.log, "01pPFX") == 0 || strcmp(r.log, "10pPFX") == 0);
	close(peer.fd);
	nsp_free(&r);
}

/* net_close with a long timer armed: the timer is cancelled (no on_timer),
 * and on_closed comes once the cancel, the recv and the close completed. */
static void test_close_with_timer_armed(void **state)
{
	struct nsp r;

	(void)state;
	nsp_init(&r, &fx);
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	net_timer(r.nc, 0, 600000);
	net_peek(r.nc, &(char){0});
	net_receive(r.nc);
	net_close(r.nc);
	assert_true(net_closing(r.nc));
	assert_false(nsp_closed(&r)); /* ops are in flight */
	nst_run(&fx, nsp_closed, NULL, &r, "close");
	assert_int_equal(nsp_count(&r, NST_EV_TIMER0), 0);
	assert_int_equal(nsp_count(&r, NST_EV_CLOSED), 1);
	nst_settle(&fx, 10);
	assert_int_equal(fx.stale, 0); /* nothing completed after on_closed */
	assert_false(r.late);
	nst_peer_pump(&peer);
	assert_true(peer.eof);
	close(peer.fd);
	nsp_free(&r);
}

/* Holds and busy() keep the slot after every op completed; net_settle
 * reaps once they are over. */
static void test_holds_and_busy_delay_closed(void **state)
{
	struct nsp r;

	(void)state;
	nsp_init(&r, &fx);
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	net_receive(r.nc);
	net_hold(r.nc);
	net_hold(r.nc);
	net_close(r.nc);
	nst_settle(&fx, 10);
	assert_false(nsp_closed(&r));
	assert_int_equal(net_active(fx.t), 1);
	net_unhold(r.nc);
	net_settle(r.nc);
	assert_false(nsp_closed(&r)); /* one hold left */
	net_unhold(r.nc);
	assert_false(nsp_closed(&r)); /* net_unhold does not reap */
	net_settle(r.nc);
	assert_string_equal(r.log, "X");
	assert_int_equal(net_active(fx.t), 0);
	close(peer.fd);
	nsp_free(&r);

	nsp_init(&r, &fx);
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	r.busy = true;
	net_receive(r.nc);
	net_close(r.nc);
	nst_settle(&fx, 10);
	assert_false(nsp_closed(&r));
	r.busy = false;
	net_settle(r.nc);
	assert_string_equal(r.log, "X");
	assert_int_equal(fx.stale, 0);
	close(peer.fd);
	nsp_free(&r);
}

/* A slot closed and given to another connection: the old generation finds
 * nothing (a late hpool answer or spool callback must not reach the new
 * session). */
static void test_find_stale_generation(void **state)
{
	struct nsp a, b;
	uint32_t slot;
	uint16_t gen;

	(void)state;
	nsp_init(&a, &fx);
	nst_peer_init(&peer, &fx, nst_accept(&fx, &a));
	slot = net_slot(a.nc);
	gen = net_gen(a.nc);
	assert_ptr_equal(net_find(fx.t, slot, gen), a.nc);
	assert_ptr_equal(net_proto(a.nc), &a);
	net_close(a.nc);
	nst_run(&fx, nsp_closed, NULL, &a, "close a");
	assert_null(net_find(fx.t, slot, gen));
	close(peer.fd);
	nsp_init(&b, &fx);
	nst_peer_init(&peer, &fx, nst_accept(&fx, &b));
	assert_int_equal(net_slot(b.nc), slot); /* one slot: reused */
	assert_int_not_equal(net_gen(b.nc), gen);
	assert_null(net_find(fx.t, slot, gen));
	assert_ptr_equal(net_find(fx.t, slot, net_gen(b.nc)), b.nc);
	assert_null(net_find(fx.t, slot + 1, net_gen(b.nc)));
	close_and_reap(&b);
	close(peer.fd);
	nsp_free(&a);
	nsp_free(&b);
}

/* A client that does not read: the send stays in flight, and the protocol
 * learns it is overdue once the timeout passed (or, draining, the
 * linger); the close ends it. */
static void test_send_overdue_and_linger(void **state)
{
	struct nsp r;
	char *big = pattern(BIG);
	int small = 4096;

	(void)state;
	nsp_init(&r, &fx);
	nst_peer_init(&peer, &fx, nst_accept(&fx, &r));
	/* Small socket buffers: the send backs up whatever the autotuning. */
	assert_int_equal(setsockopt(r.sfd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
	assert_int_equal(setsockopt(peer.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
	net_set_timeout(r.nc, 100);
	net_receive(r.nc);
	net_write(r.nc, big, BIG);
	net_flush(r.nc);
	nst_settle(&fx, 20);
	assert_false(net_send_overdue(r.nc));
	fx.now += 99;
	assert_int_equal(net_send_age(r.nc), 99);
	assert_false(net_send_overdue(r.nc));
	fx.now += 1;
	assert_true(net_send_overdue(r.nc));
	net_set_timeout(r.nc, 60000);
	net_shutdown(r.nc);
	assert_true(net_draining(r.nc));
	assert_false(net_send_overdue(r.nc));
	net_linger(r.nc, fx.now + 5);
	fx.now += 5;
	assert_true(net_send_overdue(r.nc));
	net_tick(fx.t); /* on_tick runs on a draining connection: it must not close it */
	assert_true(net_draining(r.nc));
	close_and_reap(&r);
	assert_string_equal(r.log, "X");
	close(peer.fd);
	free(big);
	nsp_free(&r);
}

static void count_one(void *proto, void *arg)
{
	(void)proto;
	(*(unsigned *)arg)++;
}

/* The shard's tick reaches every open or draining connection (on_tick),
 * and net_foreach visits the same ones; a closing one is skipped. */
static void test_tick_and_foreach(void **state)
{
	struct nsp a, b;
	struct nst_peer pb;
	unsigned n = 0;

	(void)state;
	nsp_init(&a, &fx);
	nsp_init(&b, &fx);
	nst_peer_init(&peer, &fx, nst_accept(&fx, &a));
	nst_peer_init(&pb, &fx, nst_accept(&fx, &b));
	net_receive(a.nc);
	net_receive(b.nc);
	net_tick(fx.t);
	assert_int_equal(a.ticks, 1);
	assert_int_equal(b.ticks, 1);
	net_foreach(fx.t, count_one, &n);
	assert_int_equal(n, 2);
	net_close(b.nc);
	net_tick(fx.t);
	assert_int_equal(a.ticks, 2);
	assert_int_equal(b.ticks, 1);
	n = 0;
	net_foreach(fx.t, count_one, &n);
	assert_int_equal(n, 1);
	nst_run(&fx, nsp_closed, NULL, &b, "b closed");
	close_and_reap(&a);
	close(peer.fd);
	close(pb.fd);
	nsp_free(&a);
	nsp_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_feed_pause_resume, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_flood_holds_inq_cap, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_enobufs_then_rearm, setup_tiny, teardown),
	    cmocka_unit_test_setup_teardown(test_park_stash_unpark, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_park_overrun, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_write_flush_shutdown, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_drop_output_keeps_inflight, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_peer_fin_answered_first, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_timers_and_peek, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_with_timer_armed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_holds_and_busy_delay_closed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_find_stale_generation, setup_one, teardown),
	    cmocka_unit_test_setup_teardown(test_send_overdue_and_linger, setup_big, teardown),
	    cmocka_unit_test_setup_teardown(test_tick_and_foreach, setup, teardown),
	};

	ntl_require_io_uring();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
