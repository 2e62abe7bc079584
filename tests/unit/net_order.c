/*
 * net_order — the connection layer (net/net.c) on a real io_uring and a
 * real loopback TCP peer, with the completions handed to net_complete()
 * in an order the test chooses (as spool_testlib does for the spool): a
 * ring posts the completions of two ops in no promised order, and net.h
 * promises the protocol nothing about the order of on_sent and input.
 *
 * The case: the protocol sends STARTTLS; the peer's 220 is read, and the
 * protocol begins TLS (net_tls_start), before the STARTTLS send's
 * completion is handed over.  The TLS layer's first flight (ClientHello)
 * must still go once that completion comes.  The control case hands the
 * send first.
 *
 * A kernel (or a sandbox) without io_uring makes the program exit 77.
 */
#include <arpa/inet.h>
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
#include <unistd.h>

#include <cmocka.h>

#include "net/net.h"
#include "ring/ring.h"
#include "tls/tls.h"

#define CQE_MAX 16

struct fixture {
	struct ring ring;
	uint64_t now_ms;
	struct net_table *t;
	struct net_conn *nc;
	struct tls_ctx *ctx;
	int lfd, peer;
	struct sockaddr_in addr;
	/* collected completions, not yet handed over */
	uint32_t ncqe;
	uint64_t ud[CQE_MAX];
	int res[CQE_MAX];
	/* what the protocol heard */
	uint32_t connected, sent, tls_ready, errors, closed;
	int tls_rc;
	bool tls_begun;
};

/* ---- the protocol: STARTTLS, and TLS on its 220 --------------------------------- */

static void p_connected(void *proto)
{
	((struct fixture *)proto)->connected++;
}

static void p_input(void *proto, const char *p, size_t len)
{
	struct fixture *f = proto;

	if (len >= 4 && memcmp(p, "220 ", 4) == 0 && !f->tls_begun) {
		f->tls_begun = true;
		f->tls_rc = net_tls_start(f->nc, f->ctx, "mx.test.example");
	}
}

static void p_sent(void *proto)
{
	((struct fixture *)proto)->sent++;
}

static void p_tls_ready(void *proto)
{
	((struct fixture *)proto)->tls_ready++;
}

static void p_error(void *proto, int err, const char *why)
{
	(void)err;
	(void)why;
	((struct fixture *)proto)->errors++;
}

static void p_timeout(void *proto)
{
	(void)proto;
	fail_msg("no deadline is set in this test");
}

static void p_file_read(void *proto, int res)
{
	(void)proto;
	(void)res;
	fail_msg("no file read in this test");
}

static void p_closed(void *proto)
{
	((struct fixture *)proto)->closed++;
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

/* ---- the kernel's side, played in order ---------------------------------------- */

/* Submit, and collect completions until want are held. */
static void reap(struct fixture *f, uint32_t want)
{
	assert_true(want <= CQE_MAX);
	assert_true(io_uring_submit(&f->ring.uring) >= 0);
	f->ring.pending = 0;
	while (f->ncqe < want) {
		struct io_uring_cqe *cqe;
		int rc = io_uring_wait_cqe(&f->ring.uring, &cqe);

		if (rc == -EINTR)
			continue;
		assert_int_equal(rc, 0);
		f->ud[f->ncqe] = cqe->user_data;
		f->res[f->ncqe++] = cqe->res;
		io_uring_cqe_seen(&f->ring.uring, cqe);
	}
}

/* Hand the collected completion of op to net_complete (there must be one). */
static void hand(struct fixture *f, enum net_op op)
{
	for (uint32_t i = 0; i < f->ncqe; i++) {
		if (ring_ud_op(f->ud[i]) != op)
			continue;
		uint64_t ud = f->ud[i];
		int res = f->res[i];

		memmove(f->ud + i, f->ud + i + 1, (f->ncqe - i - 1) * sizeof(f->ud[0]));
		memmove(f->res + i, f->res + i + 1, (f->ncqe - i - 1) * sizeof(f->res[0]));
		f->ncqe--;
		net_complete(f->t, ud, res);
		return;
	}
	fail_msg("no completion of op %d collected", (int)op);
}

/* Is an SQE of this opcode prepared and not yet submitted? */
static bool sqe_pending(struct fixture *f, uint8_t opcode)
{
	struct io_uring_sq *sq = &f->ring.uring.sq;

	for (unsigned i = sq->sqe_head; i != sq->sqe_tail; i++)
		if (sq->sqes[i & sq->ring_mask].opcode == opcode)
			return true;
	return false;
}

/* ---- set-up ------------------------------------------------------------------------ */

static void open_fixture(struct fixture *f)
{
	struct tls_params tp = {.role = TLS_ROLE_CLIENT};
	socklen_t len = sizeof(f->addr);
	char why[TLS_WHY_MAX];

	memset(f, 0, sizeof(*f));
	f->peer = -1;
	assert_int_equal(ring_init(&f->ring, 64, 16, 4096, why, sizeof(why)), 0);
	f->ctx = tls_ctx_new(&tp, why, sizeof(why));
	assert_non_null(f->ctx);
	f->t = net_table_new(&f->ring, NET_TABLE_OUTBOUND, 4, 4096, &f->now_ms);
	assert_non_null(f->t);
	f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(f->lfd >= 0);
	f->addr.sin_family = AF_INET;
	f->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&f->addr, sizeof(f->addr)), 0);
	assert_int_equal(listen(f->lfd, 4), 0);
	assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&f->addr, &len), 0);
}

/* Connected, STARTTLS sent (its completion collected, not handed), the
 * peer's 220 read (its completion collected too). */
static void starttls_answered(struct fixture *f)
{
	static const char cmd[] = "STARTTLS\r\n";
	char buf[64];

	f->nc = net_open(f->t, &ops, f);
	assert_non_null(f->nc);
	assert_int_equal(net_connect(f->nc, (struct sockaddr *)&f->addr, sizeof(f->addr), 10000),
			 0);
	reap(f, 0);
	f->peer = accept(f->lfd, NULL, NULL);
	assert_true(f->peer >= 0);
	reap(f, 1);
	hand(f, NET_OP_CONNECT);
	assert_int_equal(f->connected, 1);
	net_send(f->nc, &(struct iovec){(void *)cmd, sizeof(cmd) - 1}, 1);
	reap(f, 1); /* the send */
	assert_int_equal(recv(f->peer, buf, sizeof(buf), 0), (ssize_t)sizeof(cmd) - 1);
	assert_int_equal(send(f->peer, "220 go ahead\r\n", 14, 0), 14);
	reap(f, 2); /* and the recv */
}

/* After the handshake began and every completion was handed: the
 * ClientHello is on its way (a send prepared), and reaches the peer. */
static void client_hello_goes(struct fixture *f)
{
	struct pollfd pfd = {.fd = f->peer, .events = POLLIN};
	unsigned char b;

	assert_int_equal(f->tls_rc, 0);
	assert_int_equal(f->errors, 0);
	assert_true(sqe_pending(f, IORING_OP_SEND));
	assert_true(io_uring_submit(&f->ring.uring) >= 0);
	f->ring.pending = 0;
	assert_int_equal(poll(&pfd, 1, 10000), 1);
	assert_int_equal(recv(f->peer, &b, 1, 0), 1);
	assert_int_equal(b, 0x16); /* a TLS handshake record */
}

static void close_fixture(struct fixture *f)
{
	net_close(f->nc);
	while (net_active(f->t)) {
		reap(f, 1);
		net_complete(f->t, f->ud[0], f->res[0]);
		f->ncqe = 0;
	}
	assert_int_equal(f->closed, 1);
	net_table_free(f->t);
	ring_exit(&f->ring);
	tls_ctx_free(f->ctx);
	tls_thread_cleanup();
	close(f->peer);
	close(f->lfd);
}

/* ---- cases ------------------------------------------------------------------------- */

/* The send's completion first, then the 220: the usual order. */
static void test_starttls_send_then_reply(void **state)
{
	struct fixture f;

	(void)state;
	open_fixture(&f);
	starttls_answered(&f);
	hand(&f, NET_OP_SEND);
	assert_int_equal(f.sent, 1);
	hand(&f, NET_OP_RECV);
	assert_true(f.tls_begun);
	client_hello_goes(&f);
	close_fixture(&f);
}

/* The 220 is handed before the STARTTLS send's completion: net_tls_start()
 * leaves the ClientHello in the TLS layer because a send is in flight, and
 * that send's completion must flush it (it once did not: the handshake
 * stalled until the deadline failed the connection). */
static void test_starttls_reply_before_send_completion(void **state)
{
	struct fixture f;

	(void)state;
	open_fixture(&f);
	starttls_answered(&f);
	hand(&f, NET_OP_RECV);
	assert_true(f.tls_begun);
	hand(&f, NET_OP_SEND);
	assert_int_equal(f.sent, 1);
	client_hello_goes(&f);
	close_fixture(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_starttls_send_then_reply),
	    cmocka_unit_test(test_starttls_reply_before_send_completion),
	};
	struct ring probe;
	char why[256] = "";
	int rc;

	if (ring_init(&probe, 8, 16, 4096, why, sizeof(why)) < 0) {
		fprintf(stderr, "skipped: this kernel gives no usable io_uring: %s\n", why);
		return 77;
	}
	ring_exit(&probe);
	if (tls_global_init() != 0)
		return 1;
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	tls_global_cleanup();
	return rc;
}
