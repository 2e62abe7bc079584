/* net_testlib — a real ring, a net_table, a loopback peer and a recording protocol. */
#include "net_testlib.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define NTL_SQ_ENTRIES 256
#define NTL_BUFS       8
#define NTL_BUF_SIZE   4096

uint64_t ntl_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void ntl_require_io_uring(void)
{
	struct ring r;
	char why[256] = "";

	if (ring_init(&r, 8, NTL_BUFS, NTL_BUF_SIZE, why, sizeof(why)) < 0) {
		fprintf(stderr, "skipped: this kernel gives no usable io_uring: %s\n", why);
		exit(77);
	}
	ring_exit(&r);
}

void ntl_open(struct ntl *x, uint32_t nslots)
{
	char why[256] = "";
	socklen_t alen = sizeof(x->addr);

	memset(x, 0, sizeof(*x));
	if (ring_init(&x->ring, NTL_SQ_ENTRIES, NTL_BUFS, NTL_BUF_SIZE, why, sizeof(why)) < 0)
		fail_msg("ring_init: %s", why);
	x->ring_up = true;
	x->now = 1000;
	x->t = net_table_new(&x->ring, NET_TABLE_OUTBOUND, nslots, NTL_IN_CAP, &x->now);
	assert_non_null(x->t);
	x->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	assert_true(x->lfd >= 0);
	x->addr =
	    (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(x->lfd, (struct sockaddr *)&x->addr, sizeof(x->addr)), 0);
	assert_int_equal(listen(x->lfd, 16), 0);
	assert_int_equal(getsockname(x->lfd, (struct sockaddr *)&x->addr, &alen), 0);
	x->wall_end = ntl_mono_ms() + NTL_WALL_MS;
	/* A loop that never returns from inside a net_* call cannot be
	 * bounded by the turn count: SIGALRM ends the program instead. */
	alarm(NTL_WALL_MS / 1000 + 10);
}

void ntl_close(struct ntl *x)
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

static void rec_ev(struct ntl_rec *r, char ev)
{
	if (r->n[(unsigned char)NTL_EV_CLOSED])
		r->late = true; /* nothing may follow on_closed */
	if (r->nlog < NTL_LOG_MAX)
		r->log[r->nlog++] = ev;
	r->log[r->nlog] = '\0';
	r->n[(unsigned char)ev]++;
}

static void rec_connected(void *p)
{
	rec_ev(p, NTL_EV_CONNECTED);
}

static void rec_recv(void *p)
{
	rec_ev(p, NTL_EV_RECV);
}

static void rec_input(void *p, const char *b, size_t len)
{
	struct ntl_rec *r = p;

	/* One letter per call would flood the log on a big transfer: runs of
	 * input are one letter. */
	if (r->nlog == 0 || r->log[r->nlog - 1] != NTL_EV_INPUT)
		rec_ev(r, NTL_EV_INPUT);
	else
		r->n[(unsigned char)NTL_EV_INPUT]++;
	assert_true(len > 0);
	if (r->in_len + len > r->in_cap) {
		r->in_cap = (r->in_len + len) * 2;
		r->in = realloc(r->in, r->in_cap);
		assert_non_null(r->in);
	}
	memcpy(r->in + r->in_len, b, len);
	r->in_len += len;
	if (r->on_input)
		r->on_input(r, b, len);
}

static void rec_sent(void *p)
{
	struct ntl_rec *r = p;

	rec_ev(r, NTL_EV_SENT);
	if (r->on_sent)
		r->on_sent(r);
}

static void rec_tls_ready(void *p)
{
	struct ntl_rec *r = p;

	rec_ev(r, NTL_EV_TLS_READY);
	if (r->on_tls_ready)
		r->on_tls_ready(r);
}

static void rec_error(void *p, int err, const char *why)
{
	struct ntl_rec *r = p;

	rec_ev(r, NTL_EV_ERROR);
	r->err = err;
	snprintf(r->why, sizeof(r->why), "%s", why ? why : "(null)");
	if (r->on_error)
		r->on_error(r);
}

static void rec_timeout(void *p)
{
	rec_ev(p, NTL_EV_TIMEOUT);
}

static void rec_file_read(void *p, int res)
{
	struct ntl_rec *r = p;

	rec_ev(r, NTL_EV_FREAD);
	r->fread_res = res;
}

static void rec_closed(void *p)
{
	struct ntl_rec *r = p;

	rec_ev(r, NTL_EV_CLOSED);
	if (r->on_closed)
		r->on_closed(r);
}

const struct net_ops ntl_ops = {
    .on_connected = rec_connected,
    .on_recv = rec_recv,
    .on_input = rec_input,
    .on_sent = rec_sent,
    .on_tls_ready = rec_tls_ready,
    .on_error = rec_error,
    .on_timeout = rec_timeout,
    .on_file_read = rec_file_read,
    .on_closed = rec_closed,
};

void ntl_rec_init(struct ntl_rec *r, struct ntl *x)
{
	memset(r, 0, sizeof(*r));
	r->x = x;
	x->watch = r; /* the log a failed wait shows */
}

void ntl_rec_free(struct ntl_rec *r)
{
	free(r->in);
	r->in = NULL;
}

unsigned ntl_count(const struct ntl_rec *r, char ev)
{
	return r->n[(unsigned char)ev];
}

bool ntl_closed(void *rec)
{
	return ntl_count(rec, NTL_EV_CLOSED) > 0;
}

/* ---- connections ---------------------------------------------------------------- */

struct net_conn *ntl_connect(struct ntl *x, struct ntl_rec *r, const struct sockaddr_in *addr)
{
	const struct sockaddr_in *a = addr ? addr : &x->addr;

	r->nc = net_open(x->t, &ntl_ops, r);
	assert_non_null(r->nc);
	assert_int_equal(net_connect(r->nc, (const struct sockaddr *)a, sizeof(*a), 10000), 0);
	return r->nc;
}

static bool connected(void *rec)
{
	const struct ntl_rec *r = rec;

	return ntl_count(r, NTL_EV_CONNECTED) || ntl_count(r, NTL_EV_CLOSED);
}

int ntl_connect_accept(struct ntl *x, struct ntl_rec *r)
{
	struct pollfd pfd = {.fd = x->lfd, .events = POLLIN};
	int fd;

	ntl_connect(x, r, NULL);
	ntl_run(x, connected, NULL, r, "connect");
	assert_string_equal(r->log, "C");
	assert_int_equal(poll(&pfd, 1, 5000), 1);
	fd = accept4(x->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	assert_true(fd >= 0);
	return fd;
}

struct sockaddr_in ntl_closed_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	/* Bound, never listening: a connect to it is refused at once (RST). */
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	close(fd);
	return a;
}

int ntl_local_fd_of(int peer_fd)
{
	struct sockaddr_in want, got;
	socklen_t len = sizeof(want);

	assert_int_equal(getpeername(peer_fd, (struct sockaddr *)&want, &len), 0);
	for (int fd = 0; fd < 1024; fd++) {
		len = sizeof(got);
		if (fd == peer_fd || getsockname(fd, (struct sockaddr *)&got, &len) != 0)
			continue;
		if (got.sin_family == AF_INET && got.sin_port == want.sin_port &&
		    got.sin_addr.s_addr == want.sin_addr.s_addr)
			return fd;
	}
	return -1;
}

/* ---- the loop ------------------------------------------------------------------- */

unsigned ntl_turn(struct ntl *x, int wait_ms)
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
		assert_int_equal(ring_ud_aux(ud), NET_TABLE_OUTBOUND);
		/* net_complete asserts the generation: a completion for a
		 * slot the layer already freed would abort there.  Count it
		 * instead, so the test can say so. */
		if (net_active(x->t) == 0) {
			x->stale++;
			continue;
		}
		net_complete(x->t, ud, cqe->res);
	}
	io_uring_cq_advance(&x->ring.uring, n);
	return n;
}

static void ntl_bound(struct ntl *x, unsigned long turns0, const char *what)
{
	const char *log = x->watch ? x->watch->log : "";

	if (x->turns - turns0 > NTL_TURNS_MAX)
		fail_msg("%s: still waiting after %d ring turns (log %s)", what, NTL_TURNS_MAX,
			 log);
	if (ntl_mono_ms() > x->wall_end)
		fail_msg("%s: still waiting after %d ms (log %s)", what, NTL_WALL_MS, log);
}

void ntl_run(struct ntl *x, bool (*done)(void *arg), void (*peer)(void *arg), void *arg,
	     const char *what)
{
	unsigned long turns0 = x->turns;

	while (!done(arg)) {
		ntl_bound(x, turns0, what);
		if (peer)
			peer(arg);
		if (done(arg))
			break;
		ntl_turn(x, peer ? 1 : 20);
	}
}

void ntl_settle(struct ntl *x, int quiet_ms)
{
	unsigned long turns0 = x->turns;

	while (ntl_turn(x, quiet_ms) > 0)
		ntl_bound(x, turns0, "settle");
}

/* ---- the peer --------------------------------------------------------------------- */

void ntl_write_all(int fd, const void *p, size_t len)
{
	const char *b = p;
	uint64_t end = ntl_mono_ms() + 5000;

	while (len > 0) {
		ssize_t n = send(fd, b, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EAGAIN) {
			struct pollfd pfd = {.fd = fd, .events = POLLOUT};

			assert_true(ntl_mono_ms() < end);
			poll(&pfd, 1, 10);
			continue;
		}
		assert_true(n > 0);
		b += n;
		len -= (size_t)n;
	}
}

ssize_t ntl_read_some(int fd, void *buf, size_t cap)
{
	ssize_t n = recv(fd, buf, cap, 0);

	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return -1;
	if (n < 0 && errno == ECONNRESET)
		return 0;
	assert_true(n >= 0);
	return n;
}

unsigned ntl_fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	unsigned n = 0;

	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n; /* the same "." "..", and the DIR's own fd, every time */
}
