/*
 * Pins net (src/net/net.c) on a real ring against real loopback sockets:
 * connect, input, output, deadlines, errors, closes and the reap, the
 * table's teardown.  TLS is pinned in net_conn_tls.c.
 *
 * Every test reads the recording protocol's log (net_testlib.h: one letter
 * per callback) against net.h's contract: nothing after on_closed, on_error
 * once, on_closed once and only after every op completed.
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

#include "net_testlib.h"

#define BIG_IOVS   NET_IOV_MAX
#define BIG_PIECE  (96 * 1024 + 7) /* odd: short sends cut pieces anywhere */
#define PEER_CHUNK (48 * 1024)	   /* the slow peer's read per turn */

static struct ntl fx;

static int setup(void **state)
{
	(void)state;
	ntl_open(&fx, 1);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	ntl_close(&fx);
	return 0;
}

static unsigned char pattern_at(size_t i)
{
	return (unsigned char)(i * 131 + (i >> 13) * 7 + 11);
}

static unsigned char *pattern(size_t len)
{
	unsigned char *p = malloc(len);

	assert_non_null(p);
	for (size_t i = 0; i < len; i++)
		p[i] = pattern_at(i);
	return p;
}

/* ---- connect ------------------------------------------------------------------- */

struct reuse {
	struct ntl_rec old, neu;
};

static void reopen_in_closed(struct ntl_rec *r)
{
	struct reuse *u = r->arg;

	/* net.h: the slot is free before on_closed, which may open again. */
	ntl_connect(r->x, &u->neu, NULL);
}

static bool neu_connected(void *arg)
{
	struct reuse *u = arg;

	return ntl_count(&u->neu, NTL_EV_CONNECTED) || ntl_count(&u->neu, NTL_EV_CLOSED);
}

/* A refused connect: on_error (err < 0) once, on_closed once; the slot is
 * taken again from on_closed, and the new user hears only its own. */
static void test_connect_refused_then_slot_reused(void **state)
{
	struct sockaddr_in dead = ntl_closed_port();
	struct reuse u;
	uint32_t slot;
	int peer;

	(void)state;
	ntl_rec_init(&u.old, &fx);
	ntl_rec_init(&u.neu, &fx);
	u.old.arg = &u;
	u.old.on_closed = reopen_in_closed;
	ntl_connect(&fx, &u.old, &dead);
	slot = net_slot(u.old.nc);
	ntl_run(&fx, neu_connected, NULL, &u, "refused connect, then a new one");
	assert_string_equal(u.old.log, "EX");
	assert_int_equal(u.old.err, -ECONNREFUSED);
	assert_false(u.old.late);
	assert_int_equal(net_slot(u.neu.nc), slot);
	assert_string_equal(u.neu.log, "C");
	peer = accept4(fx.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	assert_true(peer >= 0);
	ntl_write_all(peer, "ok", 2);
	net_close(u.neu.nc);
	ntl_run(&fx, ntl_closed, NULL, &u.neu, "close");
	assert_int_equal(fx.stale, 0);
	assert_string_equal(u.old.log, "EX");
	assert_true(u.neu.log[0] == 'C' && u.neu.log[u.neu.nlog - 1] == 'X');
	assert_int_equal(ntl_count(&u.neu, NTL_EV_ERROR), 0);
	assert_int_equal(net_active(fx.t), 0);
	close(peer);
	ntl_rec_free(&u.old);
	ntl_rec_free(&u.neu);
}

/* Closed before its connect completed, the slot taken at once by another
 * user: the old connect's completion (refused or cancelled) never reaches
 * the new one. */
static void test_close_while_connecting_then_reuse(void **state)
{
	struct sockaddr_in dead = ntl_closed_port();
	struct reuse u;

	(void)state;
	for (int round = 0; round < 50; round++) {
		ntl_rec_init(&u.old, &fx);
		ntl_rec_init(&u.neu, &fx);
		u.old.arg = &u;
		u.old.on_closed = reopen_in_closed;
		ntl_connect(&fx, &u.old, round % 2 ? &dead : NULL);
		net_close(u.old.nc);
		ntl_run(&fx, neu_connected, NULL, &u, "close while connecting");
		assert_string_equal(u.old.log, "X");
		assert_string_equal(u.neu.log, "C");
		net_close(u.neu.nc);
		ntl_run(&fx, ntl_closed, NULL, &u.neu, "close");
		assert_string_equal(u.neu.log, "CX");
		assert_int_equal(fx.stale, 0);
		ntl_rec_free(&u.old);
		ntl_rec_free(&u.neu);
		/* the listener's queue: take what the connects left there */
		for (int fd; (fd = accept4(fx.lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0;)
			close(fd);
	}
}

/* ---- input ----------------------------------------------------------------------- */

struct want_in {
	struct ntl_rec *r;
	size_t len;
};

static bool got_input(void *arg)
{
	struct want_in *w = arg;

	return w->r->in_len >= w->len || ntl_closed(w->r);
}

/* on_recv before the bytes reach on_input; exactly the peer's bytes; the
 * peer's orderly close is on_error(0), then on_closed. */
static void test_input_then_peer_close(void **state)
{
	struct ntl_rec r;
	struct want_in w = {&r, 0};
	int peer;

	(void)state;
	ntl_rec_init(&r, &fx);
	peer = ntl_connect_accept(&fx, &r);
	ntl_write_all(peer, "220 hello\r\n", 11);
	w.len = 11;
	ntl_run(&fx, got_input, NULL, &w, "first input");
	assert_string_equal(r.log, "CRI");
	ntl_write_all(peer, "250 more\r\n", 10);
	w.len = 21;
	ntl_run(&fx, got_input, NULL, &w, "second input");
	assert_string_equal(r.log, "CRIRI");
	assert_int_equal(r.in_len, 21);
	assert_memory_equal(r.in, "220 hello\r\n250 more\r\n", 21);
	close(peer);
	ntl_run(&fx, ntl_closed, NULL, &r, "peer close");
	assert_string_equal(r.log, "CRIRIEX");
	assert_int_equal(r.err, 0);
	assert_false(r.late);
	assert_int_equal(net_active(fx.t), 0);
	assert_int_equal(fx.stale, 0);
	ntl_rec_free(&r);
}

/* A protocol whose on_error does nothing: the layer closes by itself. */
static void test_error_handler_that_does_nothing(void **state)
{
	struct ntl_rec r;
	int peer, fd;

	(void)state;
	ntl_rec_init(&r, &fx);
	peer = ntl_connect_accept(&fx, &r);
	fd = ntl_local_fd_of(peer);
	assert_true(fd >= 0);
	/* A reset, not an orderly close: err < 0. */
	setsockopt(peer, SOL_SOCKET, SO_LINGER, &(struct linger){1, 0}, sizeof(struct linger));
	close(peer);
	ntl_run(&fx, ntl_closed, NULL, &r, "reset");
	assert_string_equal(r.log, "CEX");
	assert_int_equal(r.err, -ECONNRESET);
	assert_int_equal(net_active(fx.t), 0);
	/* the layer closed its socket */
	assert_int_equal(fcntl(fd, F_GETFD), -1);
	ntl_rec_free(&r);
}

static void close_in_input(struct ntl_rec *r, const char *p, size_t len)
{
	(void)p;
	(void)len;
	net_close(r->nc);
}

struct echo {
	struct ntl_rec *r;
	char buf[1 << 16];
	size_t len, sent_len; /* buf[0..len): due; [0..sent_len) in flight */
	int peer;
	size_t want, got;
	char back[1 << 16];
};

static void echo_flush(struct echo *e)
{
	if (net_sending(e->r->nc) || e->len == 0)
		return;
	e->sent_len = e->len;
	net_send(e->r->nc, &(struct iovec){e->buf, e->len}, 1);
}

static void echo_input(struct ntl_rec *r, const char *p, size_t len)
{
	struct echo *e = r->arg;

	/* Bytes in flight stay put (net.h): new ones go behind them. */
	assert_true(e->len + len <= sizeof(e->buf));
	memcpy(e->buf + e->len, p, len);
	e->len += len;
	echo_flush(e); /* net_send from inside on_input: allowed */
}

static void echo_sent(struct ntl_rec *r)
{
	struct echo *e = r->arg;

	memmove(e->buf, e->buf + e->sent_len, e->len - e->sent_len);
	e->len -= e->sent_len;
	e->sent_len = 0;
	echo_flush(e);
}

static void echo_peer(void *arg)
{
	struct echo *e = arg;
	ssize_t n = ntl_read_some(e->peer, e->back + e->got, sizeof(e->back) - e->got);

	if (n > 0)
		e->got += (size_t)n;
}

static bool echo_done(void *arg)
{
	struct echo *e = arg;

	return e->got >= e->want || ntl_closed(e->r);
}

/* net_send from inside on_input, with more input coming while it is in
 * flight: every byte comes back, in order. */
static void test_send_from_input(void **state)
{
	static struct echo e;
	struct ntl_rec r;
	char msg[40000];

	(void)state;
	ntl_rec_init(&r, &fx);
	memset(&e, 0, sizeof(e));
	e.r = &r;
	r.arg = &e;
	r.on_input = echo_input;
	r.on_sent = echo_sent;
	e.peer = ntl_connect_accept(&fx, &r);
	for (size_t i = 0; i < sizeof(msg); i++)
		msg[i] = (char)pattern_at(i);
	for (size_t off = 0; off < sizeof(msg); off += 1000)
		ntl_write_all(e.peer, msg + off, 1000);
	e.want = sizeof(msg);
	ntl_run(&fx, echo_done, echo_peer, &e, "echo");
	assert_int_equal(e.got, sizeof(msg));
	assert_memory_equal(e.back, msg, sizeof(msg));
	assert_int_equal(ntl_count(&r, NTL_EV_ERROR), 0);
	net_close(r.nc);
	ntl_run(&fx, ntl_closed, NULL, &r, "close");
	close(e.peer);
	ntl_rec_free(&r);
}

/* net_close from inside on_input while the peer goes on sending: nothing
 * but on_closed follows. */
static void test_close_from_input(void **state)
{
	struct ntl_rec r;
	char more[8192];
	int peer;

	(void)state;
	ntl_rec_init(&r, &fx);
	r.on_input = close_in_input;
	peer = ntl_connect_accept(&fx, &r);
	memset(more, 'm', sizeof(more));
	ntl_write_all(peer, "first\r\n", 7);
	ntl_write_all(peer, more, sizeof(more));
	ntl_run(&fx, ntl_closed, NULL, &r, "close from on_input");
	ntl_write_all(peer, more, 100);
	ntl_settle(&fx, 50);
	assert_string_equal(r.log, "CRIX");
	assert_int_equal(ntl_count(&r, NTL_EV_INPUT), 1);
	assert_false(r.late);
	assert_int_equal(fx.stale, 0);
	close(peer);
	ntl_rec_free(&r);
}

/* ---- output ---------------------------------------------------------------------- */

struct big {
	struct ntl_rec *r;
	int peer;
	unsigned char *got;
	size_t total, have;
	unsigned turns, quiet_turns; /* the peer reads nothing at first */
	size_t sent_at;		     /* bytes the peer had at on_sent */
};

static void big_peer(void *arg)
{
	struct big *b = arg;
	size_t cap = b->total - b->have;
	ssize_t n;

	if (b->turns++ < b->quiet_turns)
		return;
	n = ntl_read_some(b->peer, b->got + b->have, cap < PEER_CHUNK ? cap : PEER_CHUNK);
	if (n > 0)
		b->have += (size_t)n;
}

static bool big_done(void *arg)
{
	struct big *b = arg;

	return (b->have == b->total && ntl_count(b->r, NTL_EV_SENT)) || ntl_closed(b->r);
}

static void big_sent(struct ntl_rec *r)
{
	struct big *b = r->arg;

	b->sent_at = b->have;
}

/* Fixed small buffers on both ends (no autotuning): a big send cannot
 * fit them, whatever the host's tcp_wmem says. */
static void small_buffers(int peer)
{
	int fd = ntl_local_fd_of(peer);

	assert_true(fd >= 0);
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &(int){64 * 1024}, sizeof(int));
	setsockopt(peer, SOL_SOCKET, SO_RCVBUF, &(int){32 * 1024}, sizeof(int));
}

static void big_iov(struct iovec *iov, unsigned char *data, size_t *total)
{
	*total = 0;
	for (unsigned i = 0; i < BIG_IOVS; i++) {
		/* sizes from 1 byte up: some pieces end inside a short send */
		size_t len = i % 5 == 0 ? (size_t)i + 1 : BIG_PIECE;

		iov[i] = (struct iovec){data + *total, len};
		*total += len;
	}
}

/* Several MB in NET_IOV_MAX pieces to a peer that reads slowly: short
 * sends, then exactly those bytes in order, and on_sent once at the end. */
static void test_big_send_to_slow_peer(void **state)
{
	struct iovec iov[BIG_IOVS];
	struct ntl_rec r;
	struct big b = {.r = &r, .quiet_turns = 20};
	unsigned char *data;

	(void)state;
	ntl_rec_init(&r, &fx);
	r.arg = &b;
	r.on_sent = big_sent;
	b.peer = ntl_connect_accept(&fx, &r);
	small_buffers(b.peer);
	data = pattern((size_t)BIG_IOVS * BIG_PIECE);
	big_iov(iov, data, &b.total);
	assert_true(b.total > 8 * 1024 * 1024);
	b.got = malloc(b.total);
	assert_non_null(b.got);
	net_send(r.nc, iov, BIG_IOVS);
	assert_true(net_sending(r.nc));
	/* net.h: the caller's iovec array is copied; scribbling on it after
	 * the call must change nothing. */
	memset(iov, 0, sizeof(iov));
	ntl_run(&fx, big_done, big_peer, &b, "big send");
	assert_string_equal(r.log, "CS");
	assert_false(net_sending(r.nc));
	assert_int_equal(b.have, b.total);
	assert_memory_equal(b.got, data, b.total);
	/* on_sent came late: the peer had read all but what the kernel's
	 * (small, fixed) buffers hold, so it waited for the short sends. */
	assert_true(b.sent_at + 1024 * 1024 > b.total);
	net_close(r.nc);
	ntl_run(&fx, ntl_closed, NULL, &r, "close");
	assert_string_equal(r.log, "CSX");
	close(b.peer);
	free(b.got);
	free(data);
	ntl_rec_free(&r);
}

/* net_close with a big send in flight: no on_sent, on_closed once. */
static void test_close_during_send(void **state)
{
	struct iovec iov[BIG_IOVS];
	struct ntl_rec r;
	size_t total;
	unsigned char *data;
	int peer;

	(void)state;
	ntl_rec_init(&r, &fx);
	peer = ntl_connect_accept(&fx, &r);
	small_buffers(peer);
	data = pattern((size_t)BIG_IOVS * BIG_PIECE);
	big_iov(iov, data, &total);
	net_send(r.nc, iov, BIG_IOVS);
	for (int i = 0; i < 5; i++)
		ntl_turn(&fx, 2);
	assert_string_equal(r.log, "C"); /* the peer reads nothing: still going */
	net_close(r.nc);
	assert_true(net_closing(r.nc));
	ntl_run(&fx, ntl_closed, NULL, &r, "close during send");
	ntl_settle(&fx, 50);
	assert_string_equal(r.log, "CX");
	assert_false(r.late);
	assert_int_equal(fx.stale, 0);
	assert_int_equal(net_active(fx.t), 0);
	close(peer);
	free(data);
	ntl_rec_free(&r);
}

/* ---- deadlines ------------------------------------------------------------------- */

/* A peer that never answers: on_timeout once the deadline passed, not
 * again until progress moved it; a timeout of 0: never. */
static void test_timeout_once_until_io(void **state)
{
	struct ntl_rec r;
	struct want_in w = {&r, 1};
	int peer;

	(void)state;
	ntl_rec_init(&r, &fx);
	peer = ntl_connect_accept(&fx, &r);
	/* no timeout set: no deadline, however late */
	fx.now += 1000000;
	net_tick(fx.t);
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 0);
	net_set_timeout(r.nc, 100);
	fx.now += 99;
	net_tick(fx.t);
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 0);
	fx.now += 1;
	net_tick(fx.t);
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 1);
	for (int i = 0; i < 5; i++) {
		fx.now += 10000;
		net_tick(fx.t);
		ntl_turn(&fx, 1);
	}
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 1);
	/* input alone moves nothing (bytes that complete no reply are no
	 * progress)... */
	ntl_write_all(peer, "x", 1);
	ntl_run(&fx, got_input, NULL, &w, "input after the timeout");
	fx.now += 100000;
	net_tick(fx.t);
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 1);
	/* ...the protocol's net_progress does: once more, a timeout later */
	net_progress(r.nc);
	fx.now += 99;
	net_tick(fx.t);
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 1);
	fx.now += 1;
	net_tick(fx.t);
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 2);
	/* 0: an idle pooled connection has no deadline, I/O or not */
	net_set_timeout(r.nc, 0);
	fx.now += 1000000;
	net_tick(fx.t);
	ntl_write_all(peer, "y", 1);
	w.len = 2;
	ntl_run(&fx, got_input, NULL, &w, "input without a timeout");
	fx.now += 1000000;
	net_tick(fx.t);
	assert_int_equal(ntl_count(&r, NTL_EV_TIMEOUT), 2);
	assert_string_equal(r.log, "CORIORI");
	net_close(r.nc);
	ntl_run(&fx, ntl_closed, NULL, &r, "close");
	close(peer);
	ntl_rec_free(&r);
}

/* A connect the peer never answers (its accept queue is full, so the SYN
 * is dropped): the connect's deadline says on_timeout; a close then
 * cancels the connect in flight and reaps. */
static void test_connect_deadline_and_cancel(void **state)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), filler;
	struct ntl_rec r;

	(void)state;
	assert_true(lfd >= 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(lfd, 0), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
	filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(connect(filler, (struct sockaddr *)&a, sizeof(a)), 0);
	ntl_rec_init(&r, &fx);
	r.nc = net_open(fx.t, &ntl_ops, &r);
	assert_int_equal(net_connect(r.nc, (struct sockaddr *)&a, sizeof(a), 50), 0);
	for (int i = 0; i < 10; i++)
		ntl_turn(&fx, 2);
	if (r.nlog > 0) {
		/* the kernel took it after all: nothing to say about deadlines */
		fprintf(stderr, "# connect was answered (%s): deadline part skipped\n", r.log);
	} else {
		fx.now += 49;
		net_tick(fx.t);
		assert_string_equal(r.log, "");
		fx.now += 1;
		net_tick(fx.t);
		assert_string_equal(r.log, "O");
		net_close(r.nc);
	}
	if (!ntl_closed(&r))
		net_close(r.nc);
	ntl_run(&fx, ntl_closed, NULL, &r, "close of a pending connect");
	assert_int_equal(ntl_count(&r, NTL_EV_CLOSED), 1);
	assert_int_equal(ntl_count(&r, NTL_EV_CONNECTED), 0);
	ntl_settle(&fx, 20);
	assert_int_equal(fx.stale, 0);
	assert_int_equal(net_active(fx.t), 0);
	close(filler);
	close(lfd);
	ntl_rec_free(&r);
}

/* ---- file reads ----------------------------------------------------------------- */

static int temp_file(const unsigned char *data, size_t len)
{
	char name[] = "/tmp/ringmx-net-XXXXXX";
	int fd = mkstemp(name);

	assert_true(fd >= 0);
	unlink(name);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	return fd;
}

static bool file_read(void *rec)
{
	return ntl_count(rec, NTL_EV_FREAD) || ntl_closed(rec);
}

/* A spool window read through the connection: on_file_read with the
 * bytes at the offset. */
static void test_file_read(void **state)
{
	enum { LEN = 200000, OFF = 12345, WIN = 65536 };
	unsigned char *data = pattern(LEN), *buf = malloc(WIN);
	struct ntl_rec r;
	int peer, fd = temp_file(data, LEN);

	(void)state;
	assert_non_null(buf);
	ntl_rec_init(&r, &fx);
	peer = ntl_connect_accept(&fx, &r);
	net_read_file(r.nc, fd, buf, WIN, OFF);
	ntl_run(&fx, file_read, NULL, &r, "file read");
	assert_string_equal(r.log, "CF");
	assert_int_equal(r.fread_res, WIN);
	assert_memory_equal(buf, data + OFF, WIN);
	net_close(r.nc);
	ntl_run(&fx, ntl_closed, NULL, &r, "close");
	close(peer);
	close(fd);
	free(buf);
	free(data);
	ntl_rec_free(&r);
}

/* net_close with a file read in flight: no on_file_read after it. */
static void test_close_during_file_read(void **state)
{
	enum { LEN = 1 << 20 };
	unsigned char *data = pattern(LEN), *buf = malloc(LEN);
	struct ntl_rec r;
	int peer, fd = temp_file(data, LEN);

	(void)state;
	assert_non_null(buf);
	for (int round = 0; round < 20; round++) {
		ntl_rec_init(&r, &fx);
		peer = ntl_connect_accept(&fx, &r);
		net_read_file(r.nc, fd, buf, LEN, 0);
		if (round % 2) {
			/* submitted, likely done, its completion not yet handed */
			assert_true(io_uring_submit(&fx.ring.uring) > 0);
			fx.ring.pending = 0;
			usleep(1000);
		}
		net_close(r.nc);
		ntl_run(&fx, ntl_closed, NULL, &r, "close during a file read");
		ntl_settle(&fx, 10);
		assert_string_equal(r.log, "CX");
		assert_false(r.late);
		assert_int_equal(fx.stale, 0);
		close(peer);
		ntl_rec_free(&r);
	}
	close(fd);
	free(buf);
	free(data);
}

/* The reap waits for every op, the file read included: with a read that
 * cannot complete (an empty pipe), on_closed waits for it. */
static void test_reap_waits_for_file_read(void **state)
{
	struct ntl_rec r;
	char buf[16];
	int peer, p[2];

	(void)state;
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	ntl_rec_init(&r, &fx);
	peer = ntl_connect_accept(&fx, &r);
	net_read_file(r.nc, p[0], buf, sizeof(buf), (uint64_t)-1);
	net_close(r.nc);
	ntl_settle(&fx, 50);
	assert_string_equal(r.log, "C");
	assert_int_equal(net_active(fx.t), 1);
	assert_int_equal(write(p[1], "data", 4), 4);
	ntl_run(&fx, ntl_closed, NULL, &r, "reap after the file read");
	assert_string_equal(r.log, "CX");
	assert_int_equal(net_active(fx.t), 0);
	close(p[0]);
	close(p[1]);
	close(peer);
	ntl_rec_free(&r);
}

/* ---- the table's end ------------------------------------------------------------- */

/* net_table_free with connections open, connecting and closing: every
 * socket of the layer is closed (no fd left behind). */
static void test_table_free_closes_sockets(void **state)
{
	struct ntl x;
	struct ntl_rec r[4];
	int peer[3];
	unsigned before;

	(void)state;
	ntl_close(&fx); /* the fixture's own listener and ring out of the count */
	before = ntl_fd_count();
	ntl_open(&x, 4);
	for (int i = 0; i < 3; i++) {
		ntl_rec_init(&r[i], &x);
		peer[i] = ntl_connect_accept(&x, &r[i]);
	}
	ntl_rec_init(&r[3], &x);
	ntl_connect(&x, &r[3], NULL); /* connecting */
	net_close(r[2].nc);	      /* closing: its close is the ring's from here */
	assert_true(ntl_fd_count() > before);
	/* The shard's loop goes on until the close ran: from net_close on,
	 * that socket is the ring's to close, not net_table_free's. */
	ntl_run(&x, ntl_closed, NULL, &r[2], "the close of a closing connection");
	ntl_close(&x);
	for (int i = 0; i < 3; i++) {
		close(peer[i]);
		ntl_rec_free(&r[i]);
	}
	ntl_rec_free(&r[3]);
	assert_int_equal(ntl_fd_count(), before);
	ntl_open(&fx, 1); /* for teardown */
}

/*
 * Showed a defect of net.c, now fixed:
 *
 * A connection whose close op already ran (its reap waits for a file read)
 * still has its old fd number in the slot, and net_table_free closes that
 * number again.  By then the number may be another file's: another
 * shard's socket, the log.  net_table_free must close only sockets the
 * ring has not closed.
 */
static void test_defect_table_free_closes_a_reused_fd(void **state)
{
	struct ntl_rec r;
	char buf[16];
	int peer, sock, p[2], devnull;
	bool still_open;

	(void)state;
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	ntl_rec_init(&r, &fx);
	peer = ntl_connect_accept(&fx, &r);
	sock = ntl_local_fd_of(peer);
	assert_true(sock >= 0);
	net_read_file(r.nc, p[0], buf, sizeof(buf), (uint64_t)-1);
	net_close(r.nc);
	ntl_settle(&fx, 50); /* cancel and close done; the read holds the reap */
	assert_string_equal(r.log, "C");
	assert_int_equal(fcntl(sock, F_GETFD), -1); /* the ring closed it */
	/* The number is someone else's now. */
	devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(devnull >= 0);
	if (devnull != sock) { /* the lowest free number is likely sock itself */
		assert_int_equal(dup2(devnull, sock), sock);
		close(devnull);
	}
	ring_exit(&fx.ring);
	fx.ring_up = false;
	net_table_free(fx.t);
	fx.t = NULL;
	still_open = fcntl(sock, F_GETFD) != -1;
	if (still_open)
		close(sock);
	close(p[0]);
	close(p[1]);
	close(peer);
	ntl_rec_free(&r);
	ntl_close(&fx);
	ntl_open(&fx, 1); /* for teardown */
	assert_true(still_open);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_connect_refused_then_slot_reused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_while_connecting_then_reuse, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_input_then_peer_close, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_error_handler_that_does_nothing, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_send_from_input, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_from_input, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_big_send_to_slow_peer, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_during_send, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_timeout_once_until_io, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_connect_deadline_and_cancel, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_file_read, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_during_file_read, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reap_waits_for_file_read, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_table_free_closes_sockets, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_defect_table_free_closes_a_reused_fd, setup,
					    teardown),
	};

	ntl_require_io_uring();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
