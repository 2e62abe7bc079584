/*
 * Pins net (src/net/net.c) at its edges, on a real ring and real loopback
 * sockets: the deadline moved by sends, no socket to be had, several
 * connections of one table at once, the optional on_recv, and a protocol
 * that closes twice, or from on_connected or on_error.  The main cases are
 * in net_conn.c and net_conn_tls.c.
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "net_testlib.h"

#define MANY 6

static struct ntl fx;

static int setup(void **state)
{
	(void)state;
	ntl_open(&fx, 1);
	return 0;
}

static int setup_many(void **state)
{
	(void)state;
	ntl_open(&fx, MANY);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	ntl_close(&fx);
	return 0;
}

/* Each send submitted moves the deadline to now + timeout (net.h). */
static void test_send_moves_deadline(void **state)
{
	struct ntl_rec r;
	int peer;

	(void)state;
	ntl_rec_init(&r, &fx);
	peer = ntl_connect_accept(&fx, &r);
	net_set_timeout(r.nc, 100);
	fx.now += 60;
	net_send(r.nc, &(struct iovec){"QUIT\r\n", 6}, 1);
	fx.now += 40; /* the first deadline: passed over */
	net_tick(fx.t);
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 0);
	fx.now += 59;
	net_tick(fx.t);
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 0);
	fx.now += 1;
	net_tick(fx.t);
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 1);
	ntl_settle(&fx, 10);
	assert_string_equal(r.log, "COS"); /* on_sent as the completion came */
	net_close(r.nc);
	ntl_run(&fx, ntl_closed, NULL, &r, "close");
	close(peer);
	ntl_rec_free(&r);
}

/* No socket to be had (the fd limit): net_connect says -EMFILE, the slot
 * is free at once, and no callback comes. */
static void test_connect_without_a_socket(void **state)
{
	struct rlimit old, low;
	struct ntl_rec r;
	struct net_conn *nc;
	int rc;

	(void)state;
	ntl_rec_init(&r, &fx);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	nc = net_open(fx.t, &ntl_ops, &r);
	assert_non_null(nc);
	assert_null(net_open(fx.t, &ntl_ops, &r)); /* the only slot */
	low = old;
	low.rlim_cur = 3; /* below every fd already open */
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	rc = net_connect(nc, (struct sockaddr *)&fx.addr, sizeof(fx.addr), 1000);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	assert_int_equal(rc, -EMFILE);
	assert_int_equal(net_active(fx.t), 0);
	ntl_settle(&fx, 10);
	assert_string_equal(r.log, "");
	/* the slot works again */
	ntl_rec_free(&r);
	ntl_rec_init(&r, &fx);
	close(ntl_connect_accept(&fx, &r));
	net_close(r.nc);
	ntl_run(&fx, ntl_closed, NULL, &r, "close");
	ntl_rec_free(&r);
}

struct many {
	struct ntl_rec r[MANY];
	int peer[MANY];
};

static bool many_done(void *arg)
{
	struct many *m = arg;

	for (int i = 0; i < MANY; i++)
		if (m->r[i].in_len < 2 * 64 && !ntl_closed(&m->r[i]))
			return false;
	return true;
}

/* Several connections of one table: each protocol hears only its own
 * bytes, and closing some leaves the others be. */
static void test_many_connections_apart(void **state)
{
	static struct many m;
	char line[64];

	(void)state;
	for (int i = 0; i < MANY; i++) {
		ntl_rec_init(&m.r[i], &fx);
		m.peer[i] = ntl_connect_accept(&fx, &m.r[i]);
	}
	assert_int_equal(net_active(fx.t), MANY);
	for (int round = 0; round < 2; round++)
		for (int i = 0; i < MANY; i++) {
			memset(line, 'a' + i, sizeof(line));
			ntl_write_all(m.peer[i], line, sizeof(line));
		}
	ntl_run(&fx, many_done, NULL, &m, "input on every connection");
	for (int i = 0; i < MANY; i++) {
		assert_int_equal(m.r[i].in_len, 2 * sizeof(line));
		for (size_t b = 0; b < m.r[i].in_len; b++)
			assert_int_equal(m.r[i].in[b], 'a' + i);
	}
	for (int i = 0; i < MANY; i += 2)
		net_close(m.r[i].nc);
	for (int i = 0; i < MANY; i += 2)
		ntl_run(&fx, ntl_closed, NULL, &m.r[i], "close of every other one");
	assert_int_equal(net_active(fx.t), MANY / 2);
	for (int i = 1; i < MANY; i += 2) {
		ntl_write_all(m.peer[i], "z", 1);
		close(m.peer[i]);
		ntl_run(&fx, ntl_closed, NULL, &m.r[i], "peer close");
		assert_int_equal(m.r[i].in[m.r[i].in_len - 1], 'z');
		assert_int_equal(ntl_count(&m.r[i], NTL_EV_ERROR), 1);
	}
	for (int i = 0; i < MANY; i++) {
		assert_int_equal(ntl_count(&m.r[i], NTL_EV_CLOSED), 1);
		assert_false(m.r[i].late);
		if (i % 2 == 0)
			close(m.peer[i]);
		ntl_rec_free(&m.r[i]);
	}
	assert_int_equal(net_active(fx.t), 0);
	assert_int_equal(fx.stale, 0);
}

/* on_recv is optional (net.h: may be NULL). */
static void test_without_on_recv(void **state)
{
	struct net_ops ops = ntl_ops;
	struct ntl_rec r;
	int peer;

	(void)state;
	ops.on_recv = NULL;
	ntl_rec_init(&r, &fx);
	r.nc = net_open(fx.t, &ops, &r);
	assert_int_equal(net_connect(r.nc, (struct sockaddr *)&fx.addr, sizeof(fx.addr), 1000), 0);
	for (int i = 0; i < 1000 && !ntl_count(&r, NTL_EV_CONNECTED); i++)
		ntl_turn(&fx, 5);
	peer = accept4(fx.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	assert_true(peer >= 0);
	ntl_write_all(peer, "220 x\r\n", 7);
	close(peer);
	ntl_run(&fx, ntl_closed, NULL, &r, "input, close");
	assert_string_equal(r.log, "CIEX");
	assert_int_equal(r.in_len, 7);
	ntl_rec_free(&r);
}

static void close_twice(struct ntl_rec *r)
{
	net_close(r->nc);
	net_close(r->nc);
	net_shutdown(r->nc);
}

/* A protocol that closes from on_error, twice, and shuts down after: one
 * on_closed. */
static void test_close_twice_from_on_error(void **state)
{
	struct ntl_rec r;
	int peer;

	(void)state;
	ntl_rec_init(&r, &fx);
	r.on_error = close_twice;
	peer = ntl_connect_accept(&fx, &r);
	close(peer);
	ntl_run(&fx, ntl_closed, NULL, &r, "peer close");
	ntl_settle(&fx, 10);
	assert_string_equal(r.log, "CEX");
	assert_int_equal(fx.stale, 0);
	ntl_rec_free(&r);
}

/* A plain connection's net_shutdown is a close (no TLS to end). */
static void test_plain_shutdown_is_close(void **state)
{
	struct ntl_rec r;
	char buf[16];
	int peer;

	(void)state;
	ntl_rec_init(&r, &fx);
	peer = ntl_connect_accept(&fx, &r);
	net_shutdown(r.nc);
	assert_true(net_closing(r.nc));
	ntl_run(&fx, ntl_closed, NULL, &r, "shutdown");
	assert_string_equal(r.log, "CX");
	assert_int_equal(ntl_read_some(peer, buf, sizeof(buf)), 0); /* the peer sees the end */
	close(peer);
	ntl_rec_free(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_send_moves_deadline, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_connect_without_a_socket, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_many_connections_apart, setup_many, teardown),
	    cmocka_unit_test_setup_teardown(test_without_on_recv, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_twice_from_on_error, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_plain_shutdown_is_close, setup, teardown),
	};

	ntl_require_io_uring();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
