/*
 * Attacks on net (src/net/net.c) after the merge of its deadline and TLS
 * fixes, on a real ring against real loopback sockets and a real wolfSSL
 * server: the deadline rule (only progress moves it; a connect and a
 * draining connection keep their own), a drain that the peer breaks, a
 * send made during a handshake that fails or that outlasts it, and the
 * descriptors a connection leaves behind.  The cases that pin the
 * ordinary paths are in net_conn.c and net_conn_tls.c; the server and the
 * fixtures here are theirs.
 */
#include <wolfssl/options.h>

#include <wolfssl/error-ssl.h>
#include <wolfssl/ssl.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "net_tlslib.h"
#include "tls/tls.h"

static bool srv_closed(void *arg)
{
	struct tcase *k = arg;

	return k->s.got_close || k->s.eof || k->s.fatal;
}

/* ---- the deadline: a connect and a drain keep their own ------------------------------ */

/*
 * net.h: "a draining connection keeps the deadline net_shutdown() gave
 * it", and a connect is bounded by net_connect's timeout.  net_set_timeout
 * set the deadline to "none" in any state and net_touch put one back only
 * for an open connection: a protocol that (re)names its command timeout
 * while the connect is in flight, or after net_shutdown, took the bound
 * away, and a hop that never answers the SYN or never reads our
 * close_notify held the slot and the socket for good.
 */
static void test_set_timeout_keeps_connect_deadline(void **state)
{
	struct ntl_rec r;

	(void)state;
	ntl_rec_init(&r, &fx);
	ntl_connect(&fx, &r, NULL); /* a 10 s connect deadline */
	net_set_timeout(r.nc, 0);   /* before any completion was seen */
	fx.now += 10000;
	net_tick(fx.t);
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 1);
	net_close(r.nc);
	ntl_run(&fx, ntl_closed, NULL, &r, "close");
	assert_false(r.late);
	ntl_rec_free(&r);
	/* the peer end the listener holds goes with the fixture */
}

/* Connected, TLS up, a first exchange read, then the output backed up
 * (8 MB the server does not read) and net_shutdown: the connection
 * drains with deadline_ms = now + 30 s. */
static char *drain_backed_up(struct tcase *k, size_t len)
{
	char *up = pattern(len);

	tc_open(k, sctx_any);
	net_send(k->r.nc, &(struct iovec){"ping\r\n", 6}, 1);
	k->want_srv = 6;
	ntl_run(&fx, tc_data, tc_peer, k, "ping");
	k->s.in_len = 0;
	k->s.read_off = true;
	setsockopt(ntl_local_fd_of(k->s.fd), SOL_SOCKET, SO_SNDBUF, &(int){16384}, sizeof(int));
	setsockopt(k->s.fd, SOL_SOCKET, SO_RCVBUF, &(int){16384}, sizeof(int));
	net_set_timeout(k->r.nc, 30000);
	net_send(k->r.nc, &(struct iovec){up, len}, 1);
	/* Until the socket's buffers are full: a send stays in flight. */
	for (int i = 0, quiet = 0; quiet < 20; i++) {
		assert_true(i < 5000);
		quiet = ntl_turn(&fx, 2) ? 0 : quiet + 1;
	}
	assert_true(net_sending(k->r.nc));
	net_shutdown(k->r.nc);
	assert_true(net_closing(k->r.nc));
	assert_int_equal(ntl_count(&k->r, NTL_EV_CLOSED), 0);
	return up;
}

static void test_set_timeout_keeps_draining_deadline(void **state)
{
	static struct tcase k;
	char *up;

	(void)state;
	memset(&k, 0, sizeof(k));
	up = drain_backed_up(&k, 8 << 20);
	/* "No deadline", said to a draining connection; no turn of the ring
	 * from here to the tick, so the drain cannot have ended by itself
	 * (the close_notify is not yet in a send). */
	net_set_timeout(k.r.nc, 0);
	fx.now += 30000;
	net_tick(fx.t);
	ntl_run(&fx, tc_closed, NULL, &k, "the drain's deadline");
	assert_string_equal(log_no_recv(&k.r), "CTSX");
	assert_false(k.r.late);
	/* Cut by the deadline: the server never reads a close_notify (one
	 * would say the drain ended by itself, the deadline being gone). */
	k.s.read_off = false;
	for (int i = 0; i < 2000 && !srv_closed(&k); i++) {
		srv_step(&k.s);
		usleep(1000);
	}
	assert_true(srv_closed(&k));
	assert_false(k.s.got_close);
	tc_free(&k);
	free(up);
}

/* ---- a drain the peer breaks ---------------------------------------------------------- */

/* The peer resets the connection while our output (records, then the
 * owed close_notify) is backed up: the drain ends at once, without an
 * on_error (the protocol is done with it), with one on_closed and no
 * descriptor left behind. */
static void test_drain_broken_by_reset(void **state)
{
	static struct tcase k;
	unsigned fds0 = ntl_fd_count();
	char *up;

	(void)state;
	memset(&k, 0, sizeof(k));
	up = drain_backed_up(&k, 8 << 20);
	setsockopt(k.s.fd, SOL_SOCKET, SO_LINGER, &(struct linger){1, 0}, sizeof(struct linger));
	close(k.s.fd); /* a reset: unread bytes and a zero linger */
	k.s.fd = -1;
	ntl_run(&fx, tc_closed, NULL, &k, "the drain after a reset");
	ntl_settle(&fx, 10);
	assert_string_equal(log_no_recv(&k.r), "CTSX");
	assert_false(k.r.late);
	assert_int_equal(fx.stale, 0);
	wolfSSL_free(k.s.ssl);
	free(k.s.in);
	ntl_rec_free(&k.r);
	assert_int_equal(ntl_fd_count(), fds0);
	free(up);
}

/* The peer, not reading our data, sends a reply, its close_notify and
 * a record after it while we drain, then reads again: the reply never
 * reaches the protocol, nothing follows but on_closed, and no byte the
 * peer reads is out of order. */
static void test_drain_peer_close_notify_then_junk(void **state)
{
	static struct tcase k;
	static const char junk[] = "\x17\x03\x03\x00\x05hello";
	char *up;

	(void)state;
	memset(&k, 0, sizeof(k));
	up = drain_backed_up(&k, 8 << 20);
	k.s.out = "221 late\r\n";
	k.s.out_len = 10;
	srv_step(&k.s); /* a reply after our net_shutdown */
	assert_int_equal(wolfSSL_shutdown(k.s.ssl), WOLFSSL_SHUTDOWN_NOT_DONE);
	ntl_write_all(k.s.fd, junk, sizeof(junk) - 1);
	for (int i = 0; i < 10; i++)
		ntl_turn(&fx, 2);
	k.s.read_off = false;
	ntl_run(&fx, tc_closed, tc_peer, &k, "the drain after the peer's close_notify");
	ntl_settle(&fx, 10);
	for (int i = 0; i < 1000 && !srv_closed(&k); i++) {
		srv_step(&k.s);
		usleep(1000);
	}
	/* The peer's close_notify ends the drain (tls_input_run reads on
	 * only to it): what was still ours to send may be cut, the
	 * peer having closed first; what went is a prefix, in order. */
	assert_int_equal(k.s.fatal, 0);
	assert_true(k.s.got_close || k.s.eof);
	assert_memory_equal(k.s.in, up, k.s.in_len);
	assert_string_equal(log_no_recv(&k.r), "CTSX");
	assert_int_equal(k.r.in_len, 0);
	assert_false(k.r.late);
	tc_free(&k);
	free(up);
}

/* ---- a send made during the handshake ------------------------------------------------ */

/* More plaintext than the TLS layer's output holds, handed over between
 * net_tls_start and on_tls_ready: it all goes, in order, once the
 * handshake ends, and on_sent comes once, after on_tls_ready. */
static void test_big_send_during_handshake(void **state)
{
	enum { UP = 1 << 21 };
	static struct tcase k;
	char *up = pattern(UP);
	int peer;

	(void)state;
	memset(&k, 0, sizeof(k));
	ntl_rec_init(&k.r, &fx);
	peer = ntl_connect_accept(&fx, &k.r);
	srv_open(&k.s, sctx_13, peer);
	assert_int_equal(net_tls_start(k.r.nc, cctx, PEER_NAME), 0);
	net_send(k.r.nc, &(struct iovec){up, UP}, 1);
	assert_true(net_sending(k.r.nc));
	k.want_srv = UP;
	ntl_run(&fx, tc_data, tc_peer, &k, "a big send made during the handshake");
	assert_int_equal(k.s.fatal, 0);
	assert_string_equal(log_no_recv(&k.r), "CTS");
	assert_int_equal(k.s.in_len, UP);
	assert_memory_equal(k.s.in, up, UP);
	net_close(k.r.nc);
	ntl_run(&fx, tc_closed, tc_peer, &k, "close");
	assert_false(k.r.late);
	tc_free(&k);
	free(up);
}

/* Plaintext handed over during the handshake is no progress (it waits,
 * unencrypted): the handshake's deadline stays one timeout from the last
 * progress, whatever the protocol queues meanwhile. */
static void test_send_during_handshake_is_no_progress(void **state)
{
	static struct tcase k;
	int peer;

	(void)state;
	memset(&k, 0, sizeof(k));
	ntl_rec_init(&k.r, &fx);
	peer = ntl_connect_accept(&fx, &k.r);
	srv_open(&k.s, sctx_any, peer); /* it never answers the ClientHello */
	net_set_timeout(k.r.nc, 1000);
	assert_int_equal(net_tls_start(k.r.nc, cctx, PEER_NAME), 0);
	fx.now += 600;
	net_send(k.r.nc, &(struct iovec){"EHLO x\r\n", 8}, 1);
	for (int i = 0; i < 10; i++)
		ntl_turn(&fx, 2);
	fx.now += 400;
	net_tick(fx.t);
	assert_int_equal(ntl_count(&k.r, NTL_EV_TIMEOUT), 1);
	assert_int_equal(ntl_count(&k.r, NTL_EV_SENT), 0);
	net_close(k.r.nc);
	ntl_run(&fx, tc_closed, NULL, &k, "close");
	assert_string_equal(log_no_recv(&k.r), "COX");
	tc_free(&k);
}

static void garbage_peer(void *arg)
{
	struct tcase *k = arg;
	static const char junk[] = "554 no TLS for you\r\n";

	if (k->want_in++ == 0)
		ntl_write_all(k->s.fd, junk, sizeof(junk) - 1);
}

/* A send made during a handshake that then fails: on_error, on_closed,
 * and never on_sent (its bytes never went), nor a plaintext byte on the
 * wire. */
static void test_send_during_failed_handshake(void **state)
{
	static struct tcase k;
	char buf[4096];
	ssize_t n;
	int peer;

	(void)state;
	memset(&k, 0, sizeof(k));
	ntl_rec_init(&k.r, &fx);
	peer = ntl_connect_accept(&fx, &k.r);
	srv_open(&k.s, sctx_any, peer); /* only for its fd */
	assert_int_equal(net_tls_start(k.r.nc, cctx, PEER_NAME), 0);
	net_send(k.r.nc, &(struct iovec){"MAIL FROM:<secret@x>\r\n", 22}, 1);
	ntl_run(&fx, tc_closed, garbage_peer, &k, "the failed handshake");
	ntl_settle(&fx, 10);
	assert_string_equal(log_no_recv(&k.r), "CEX");
	assert_false(k.r.late);
	while ((n = ntl_read_some(peer, buf, sizeof(buf))) > 0)
		assert_null(memmem(buf, (size_t)n, "secret", 6));
	tc_free(&k);
}

/* ---- key update requests while our send is backed up --------------------------------- */

#define FLOOD_QUEUED (256 * 1024) /* server bytes the client left unread */
#define FLOOD_EXPECT (1 << 22)

struct flood {
	struct tcase k;
	char *expect; /* the application bytes the server sent, in order */
	size_t expect_len;
	unsigned lines, updates;
};

static int unsent(int fd)
{
	int q = 0;

	assert_int_equal(ioctl(fd, SIOCOUTQ, &q), 0);
	return q;
}

/* A line of application data, then key update requests (the server's
 * send buffer is big: see net_conn_tls.c on wolfSSL's own trouble when
 * update_keys meets WANT_WRITE). */
static void flood_step(struct flood *f)
{
	WOLFSSL *ssl = f->k.s.ssl;
	char line[32];
	int len = snprintf(line, sizeof(line), "line %06u\r\n", f->lines);

	assert_int_equal(wolfSSL_write(ssl, line, len), len);
	assert_true(f->expect_len + (size_t)len <= FLOOD_EXPECT);
	memcpy(f->expect + f->expect_len, line, (size_t)len);
	f->expect_len += (size_t)len;
	f->lines++;
	for (int i = 0; i < 200; i++, f->updates++)
		assert_int_equal(wolfSSL_update_keys(ssl), WOLFSSL_SUCCESS);
}

/* A TLS 1.3 server that stops reading while our 2 MB send is in flight
 * and floods KeyUpdate(update_requested) with lines between: the
 * client's input waits behind its output (NET_RX_HELD) while the
 * protocol's send still owes on_sent.  Once the server reads again,
 * every byte goes both ways, in order, and on_sent comes once, after
 * the last of the protocol's bytes went. */
static void test_key_update_flood_during_send(void **state)
{
	enum { UP = 2 << 20 };
	static struct flood f;
	char *up = pattern(UP);
	unsigned long turns0;
	int cfd;

	(void)state;
	memset(&f, 0, sizeof(f));
	tc_open(&f.k, sctx_13);
	net_send(f.k.r.nc, &(struct iovec){"ping\r\n", 6}, 1);
	f.k.want_srv = 6;
	ntl_run(&fx, tc_data, tc_peer, &f.k, "ping");
	f.expect = malloc(FLOOD_EXPECT);
	assert_non_null(f.expect);
	cfd = ntl_local_fd_of(f.k.s.fd);
	assert_true(cfd >= 0);
	setsockopt(cfd, SOL_SOCKET, SO_SNDBUF, &(int){4096}, sizeof(int));
	setsockopt(f.k.s.fd, SOL_SOCKET, SO_RCVBUF, &(int){4096}, sizeof(int));
	setsockopt(f.k.s.fd, SOL_SOCKET, SO_SNDBUF, &(int){8 << 20}, sizeof(int));
	f.k.s.read_off = true;
	f.k.s.in_len = 0;
	net_send(f.k.r.nc, &(struct iovec){up, UP}, 1);
	turns0 = fx.turns;
	while (unsent(f.k.s.fd) < FLOOD_QUEUED && !ntl_closed(&f.k.r)) {
		if (fx.turns - turns0 > 20000)
			fail_msg("the client read on: %u key updates", f.updates);
		flood_step(&f);
		ntl_turn(&fx, 1);
	}
	fprintf(stderr, "# %u key update requests, %u lines; the client took %zu of %zu\n",
		f.updates, f.lines, f.k.r.in_len, f.expect_len);
	assert_int_equal(ntl_count(&f.k.r, NTL_EV_ERROR), 0);
	assert_true(net_sending(f.k.r.nc));
	assert_int_equal(ntl_count(&f.k.r, NTL_EV_SENT), 1); /* the ping's */
	f.k.s.read_off = false;
	f.k.want_srv = UP;
	f.k.want_in = f.expect_len;
	ntl_run(&fx, tc_data, tc_peer, &f.k, "both ways after the flood");
	assert_int_equal(f.k.s.fatal, 0);
	assert_int_equal(ntl_count(&f.k.r, NTL_EV_ERROR), 0);
	assert_int_equal(ntl_count(&f.k.r, NTL_EV_SENT), 2);
	assert_int_equal(f.k.s.in_len, UP);
	assert_memory_equal(f.k.s.in, up, UP);
	assert_int_equal(f.k.r.in_len, f.expect_len);
	assert_memory_equal(f.k.r.in, f.expect, f.expect_len);
	net_close(f.k.r.nc);
	ntl_run(&fx, tc_closed, tc_peer, &f.k, "close");
	assert_false(f.k.r.late);
	tc_free(&f.k);
	free(f.expect);
	free(up);
}

/* ---- descriptors ---------------------------------------------------------------------- */

/* The listener's queue emptied: a connect the kernel completed before
 * its close leaves the peer's end there. */
static void drop_queued(void)
{
	struct pollfd pfd = {.fd = fx.lfd, .events = POLLIN};

	while (poll(&pfd, 1, 50) == 1) {
		int fd = accept4(fx.lfd, NULL, NULL, SOCK_CLOEXEC);

		assert_true(fd >= 0);
		close(fd);
	}
}

/* A connection closed in each state (connecting, open, in the handshake,
 * draining) leaves no descriptor behind, and the table's free closes
 * only what is still its own. */
static void test_no_descriptor_left(void **state)
{
	static struct tcase k;
	unsigned fds0 = ntl_fd_count();
	struct ntl_rec r;
	int peer;

	(void)state;
	ntl_rec_init(&r, &fx);
	ntl_connect(&fx, &r, NULL);
	net_close(r.nc); /* connecting */
	ntl_run(&fx, ntl_closed, NULL, &r, "close while connecting");
	ntl_rec_free(&r);
	drop_queued();
	ntl_rec_init(&r, &fx);
	peer = ntl_connect_accept(&fx, &r);
	net_close(r.nc); /* open, a recv armed */
	ntl_run(&fx, ntl_closed, NULL, &r, "close while open");
	close(peer);
	ntl_rec_free(&r);
	memset(&k, 0, sizeof(k));
	ntl_rec_init(&k.r, &fx);
	peer = ntl_connect_accept(&fx, &k.r);
	srv_open(&k.s, sctx_any, peer);
	assert_int_equal(net_tls_start(k.r.nc, cctx, PEER_NAME), 0);
	ntl_turn(&fx, 2);
	net_close(k.r.nc); /* in the handshake */
	ntl_run(&fx, tc_closed, NULL, &k, "close in the handshake");
	tc_free(&k);
	assert_int_equal(ntl_fd_count(), fds0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_set_timeout_keeps_connect_deadline, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_set_timeout_keeps_draining_deadline, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_drain_broken_by_reset, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_drain_peer_close_notify_then_junk, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_big_send_during_handshake, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_send_during_failed_handshake, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_send_during_handshake_is_no_progress, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_key_update_flood_during_send, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_no_descriptor_left, setup, teardown),
	};

	if (system("openssl version >/dev/null 2>&1") != 0) {
		fprintf(stderr, "# openssl command missing: no certificates, skipped\n");
		return 77;
	}
	ntl_require_io_uring();
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
