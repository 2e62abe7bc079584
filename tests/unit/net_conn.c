/* Pins net: one connection on a real ring over loopback TCP, driven by a
 * test protocol, with the peer played by hand (a socket the test reads and
 * writes, or does not read at all). */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "net/net.h"
#include "ring/ring.h"
#include "tls/tls.h"

/* Larger than both socket buffers of a loopback connection at their
 * kernel maximum: the send stays in flight while the peer does not read. */
#define BLOB_LEN    (16u << 20)
#define TURN_MS	    10
#define TURNS_MAX   500 /* 5 s of turns before a wait counts as stuck */
#define PEER_RCVBUF 4096

static char blob[BLOB_LEN];
static uint64_t now_ms;

struct proto {
	struct net_conn *nc;
	struct tls_ctx *ctx;
	bool connected, tls_begun, sending_at_tls, closed;
	int sent, errors;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void p_connected(void *arg)
{
	struct proto *p = arg;

	p->connected = true;
	net_set_timeout(p->nc, 30000);
	net_send(p->nc, &(struct iovec){blob, BLOB_LEN}, 1);
}

/* The peer's "220" to a STARTTLS that is still going out: TLS begins
 * while the plain send is in flight. */
static void p_input(void *arg, const char *b, size_t n)
{
	struct proto *p = arg;

	if (p->tls_begun || n < 4 || memcmp(b, "220 ", 4) != 0)
		return;
	p->tls_begun = true;
	p->sending_at_tls = net_sending(p->nc);
	assert_int_equal(net_tls_start(p->nc, p->ctx, NULL), 0);
}

static void p_sent(void *arg)
{
	((struct proto *)arg)->sent++;
}

static void p_tls_ready(void *arg)
{
	(void)arg;
}

static void p_error(void *arg, int err, const char *why)
{
	(void)err;
	(void)why;
	((struct proto *)arg)->errors++;
}

static void p_timeout(void *arg)
{
	struct proto *p = arg;

	p->errors++;
	net_close(p->nc);
}

static void p_file_read(void *arg, int res)
{
	(void)arg;
	(void)res;
}

static void p_closed(void *arg)
{
	((struct proto *)arg)->closed = true;
}

static const struct net_ops ops = {
    .on_connected = p_connected,
    .on_input = p_input,
    .on_sent = p_sent,
    .on_tls_ready = p_tls_ready,
    .on_error = p_error,
    .on_timeout = p_timeout,
    .on_file_read = p_file_read,
    .on_closed = p_closed,
};

/* One turn of a shard's loop: submit, wait up to TURN_MS, complete. */
static void turn(struct ring *r, struct net_table *t)
{
	struct __kernel_timespec ts = {.tv_nsec = TURN_MS * 1000000L};
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;

	io_uring_submit_and_wait_timeout(&r->uring, &cqe, 1, &ts, NULL);
	r->pending = 0;
	now_ms = mono_ms();
	io_uring_for_each_cqe(&r->uring, head, cqe)
	{
		net_complete(t, cqe->user_data, cqe->res);
		n++;
	}
	io_uring_cq_advance(&r->uring, n);
	net_tick(t);
}

struct rig {
	struct ring ring;
	struct net_table *t;
	struct proto p;
	int lfd, peer;
};

static void rig_up(struct rig *g)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int small = PEER_RCVBUF;
	char why[TLS_WHY_MAX];

	memset(g, 0, sizeof(*g));
	if (ring_init(&g->ring, 64, 8, 4096, why, sizeof(why)) != 0)
		skip();
	assert_int_equal(tls_global_init(), 0);
	g->p.ctx = tls_ctx_new(&(struct tls_params){.role = TLS_ROLE_CLIENT}, why, sizeof(why));
	assert_non_null(g->p.ctx);
	g->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(g->lfd >= 0);
	/* Inherited by the accepted socket: a small window fills at once. */
	setsockopt(g->lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	assert_int_equal(bind(g->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(g->lfd, 1), 0);
	assert_int_equal(getsockname(g->lfd, (struct sockaddr *)&a, &alen), 0);
	now_ms = mono_ms();
	g->t = net_table_new(&g->ring, NET_TABLE_OUTBOUND, 2, 8192, &now_ms);
	assert_non_null(g->t);
	g->p.nc = net_open(g->t, &ops, &g->p);
	assert_non_null(g->p.nc);
	assert_int_equal(net_connect(g->p.nc, (struct sockaddr *)&a, sizeof(a), 5000), 0);
	for (int i = 0; i < TURNS_MAX && !g->p.connected; i++)
		turn(&g->ring, g->t);
	assert_true(g->p.connected);
	g->peer = accept(g->lfd, NULL, NULL);
	assert_true(g->peer >= 0);
}

static void rig_down(struct rig *g)
{
	if (!g->p.closed)
		net_close(g->p.nc);
	for (int i = 0; i < TURNS_MAX && !g->p.closed; i++)
		turn(&g->ring, g->t);
	assert_true(g->p.closed);
	assert_int_equal(net_active(g->t), 0);
	net_table_free(g->t);
	ring_exit(&g->ring);
	tls_ctx_free(g->p.ctx);
	tls_global_cleanup();
	close(g->peer);
	close(g->lfd);
}

/* Read what the peer has (non-blocking); bytes past skip go to tail. */
static size_t peer_read(int fd, size_t *got, size_t skip, unsigned char *tail, size_t cap)
{
	static unsigned char buf[65536];
	size_t kept = 0;
	ssize_t n;

	while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
		for (ssize_t i = 0; i < n; i++, (*got)++)
			if (*got >= skip && *got - skip < cap)
				tail[*got - skip] = buf[i], kept++;
	}
	return kept;
}

/* TLS begun (the protocol's STARTTLS answered) while the protocol's plain
 * send is still going out: the ClientHello follows that send once it is
 * done.  It used to wait in the TLS layer for ever: only a TLS send's
 * completion flushed the layer, and the connection sat until its
 * deadline. */
static void test_tls_start_behind_a_plain_send(void **state)
{
	struct rig g;
	unsigned char tail[8];
	size_t got = 0, kept = 0;

	(void)state;
	rig_up(&g);
	for (int i = 0; i < 20; i++)
		turn(&g.ring, g.t);
	if (!net_sending(g.p.nc))
		skip(); /* the kernel took the whole blob: no overlap to test */
	assert_int_equal(send(g.peer, "220 go ahead\r\n", 14, 0), 14);
	for (int i = 0; i < TURNS_MAX && !g.p.tls_begun; i++)
		turn(&g.ring, g.t);
	assert_true(g.p.tls_begun);
	assert_true(g.p.sending_at_tls);
	/* The peer reads: the plain send ends, then the ClientHello (a TLS
	 * handshake record: type 22, version 3.x) must come. */
	for (int i = 0; i < TURNS_MAX && (got < BLOB_LEN || kept < 2); i++) {
		turn(&g.ring, g.t);
		kept += peer_read(g.peer, &got, BLOB_LEN, tail + kept, sizeof(tail) - kept);
	}
	assert_true(got >= BLOB_LEN);
	assert_int_equal(g.p.sent, 1);
	assert_int_equal(g.p.errors, 0);
	assert_true(kept >= 2);
	assert_int_equal(tail[0], 22);
	assert_int_equal(tail[1], 3);
	rig_down(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tls_start_behind_a_plain_send),
	};

	memset(blob, 'x', sizeof(blob));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
