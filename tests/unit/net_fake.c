/* net_fake — net/net.h without a ring: the protocol's calls are recorded,
 * the test drives every completion (net_fake.h). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "net_fake.h"
#include "tls/tls.h"

static struct net_table *last_table;

struct net_table *nf_table(void)
{
	return last_table;
}

struct net_conn *nf_conn(struct net_table *t, uint32_t slot)
{
	assert_true(slot < t->nslots);
	return &t->conns[slot];
}

/* Every callback goes through here, and only driver functions use it (no
 * net_* function calls the protocol: net.h, no re-entry); a driver
 * function called from inside a callback is the test's bug. */
#define NF_CALL(nc, cb, ...)                                                                       \
	do {                                                                                       \
		struct net_table *t_ = (nc)->t;                                                    \
		assert_false(t_->in_callback);                                                     \
		t_->in_callback = true;                                                            \
		(nc)->ops->cb((nc)->proto, ##__VA_ARGS__);                                         \
		t_->in_callback = false;                                                           \
	} while (0)

/* Bytes may still reach the protocol. */
static bool nf_live(const struct net_conn *nc)
{
	return nc->state == NF_CONNECTING || nc->state == NF_OPEN;
}

static void nf_touch(struct net_conn *nc)
{
	if (nc->timeout_ms)
		nc->deadline_ms = *nc->t->now_ms + nc->timeout_ms;
}

/* ---- the table ------------------------------------------------------------- */

struct net_table *net_table_new(struct ring *ring, enum net_table_id id, uint32_t nslots,
				uint32_t in_cap, const uint64_t *now_ms)
{
	struct net_table *t = calloc(1, sizeof(*t));

	(void)ring;
	(void)id;
	(void)in_cap;
	if (!t)
		return NULL;
	t->nslots = nslots;
	t->now_ms = now_ms;
	t->conns = calloc(nslots, sizeof(t->conns[0]));
	t->free = calloc(nslots, sizeof(t->free[0]));
	if (!t->conns || !t->free) {
		net_table_free(t);
		return NULL;
	}
	for (uint32_t i = 0; i < nslots; i++) {
		t->conns[i].t = t;
		t->conns[i].slot = i;
		t->free[t->free_count++] = nslots - 1 - i; /* slot 0 first, as net.c */
	}
	last_table = t;
	return t;
}

void net_table_free(struct net_table *t)
{
	if (!t)
		return;
	for (uint32_t i = 0; t->conns && i < t->nslots; i++) {
		if (t->conns[i].tls)
			tls_conn_free(t->conns[i].tls);
		free(t->conns[i].sent);
		free(t->conns[i].trans);
	}
	free(t->conns);
	free(t->free);
	if (last_table == t)
		last_table = NULL;
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
	assert_int_equal(nc->state, NF_FREE);
	if (!nc->sent)
		nc->sent = malloc(NF_SEND_MAX + 1);
	if (!nc->trans)
		nc->trans = malloc(NF_TRANS_MAX + 1);
	assert_non_null(nc->sent);
	assert_non_null(nc->trans);
	/* Everything of the slot's previous connection goes. */
	char *sent = nc->sent, *trans = nc->trans;

	*nc = (struct net_conn){.t = t, .slot = nc->slot, .sent = sent, .trans = trans};
	nc->state = NF_RESERVED;
	nc->ops = ops;
	nc->proto = proto;
	nc->deadline_ms = UINT64_MAX;
	nc->trans[0] = '\0';
	t->opened++;
	return nc;
}

uint32_t net_slot(const struct net_conn *nc)
{
	return nc->slot;
}

void net_set_proto(struct net_conn *nc, void *proto)
{
	assert_int_equal(nc->state, NF_RESERVED);
	nc->proto = proto;
}

/* The slot is free again (before on_closed, as net.h says). */
static void nf_release(struct net_conn *nc)
{
	struct net_table *t = nc->t;

	if (nc->tls) {
		tls_conn_free(nc->tls);
		nc->tls = NULL;
	}
	nc->state = NF_FREE;
	nc->sending = nc->fread = false;
	assert_true(t->free_count < t->nslots);
	t->free[t->free_count++] = nc->slot;
}

int net_connect(struct net_conn *nc, const struct sockaddr *addr, socklen_t len,
		uint32_t timeout_ms)
{
	struct net_table *t = nc->t;

	assert_int_equal(nc->state, NF_RESERVED);
	assert_true(len <= sizeof(nc->addr));
	if (t->connect_errno) {
		nf_release(nc); /* no socket: the slot is free at once, no callback */
		return -t->connect_errno;
	}
	memcpy(&nc->addr, addr, len);
	nc->connect_timeout_ms = timeout_ms;
	nc->state = NF_CONNECTING;
	nc->deadline_ms = *t->now_ms + timeout_ms;
	return 0;
}

void net_set_timeout(struct net_conn *nc, uint32_t timeout_ms)
{
	nc->timeout_ms = timeout_ms;
	nc->deadline_ms = UINT64_MAX;
	nf_touch(nc);
}

void net_progress(struct net_conn *nc)
{
	nf_touch(nc);
}

bool net_sending(const struct net_conn *nc)
{
	return nc->sending;
}

/* The bytes of iov[0..niov) into dst (NUL-terminated); their count. */
static size_t nf_gather(const struct iovec *iov, uint32_t niov, char *dst, size_t cap)
{
	size_t n = 0;

	for (uint32_t i = 0; i < niov; i++) {
		assert_true(iov[i].iov_len <= cap - n);
		memcpy(dst + n, iov[i].iov_base, iov[i].iov_len);
		n += iov[i].iov_len;
	}
	dst[n] = '\0';
	return n;
}

void net_send(struct net_conn *nc, const struct iovec *iov, uint32_t niov)
{
	/* net.h: one send at a time, at most NET_IOV_MAX iovecs, none during
	 * the handshake (the TLS layer cannot take plaintext yet). */
	assert_false(nc->sending);
	assert_true(niov > 0 && niov <= NET_IOV_MAX);
	if (nc->state != NF_OPEN) {
		nc->late_calls++; /* net.c drops it */
		return;
	}
	assert_int_not_equal(nc->tls_state, NF_TLS_HANDSHAKE);
	memcpy(nc->iov, iov, niov * sizeof(iov[0]));
	nc->niov = niov;
	nc->sent_len = nf_gather(iov, niov, nc->sent, NF_SEND_MAX);
	assert_true(nc->sent_len <= NF_TRANS_MAX - nc->trans_len);
	memcpy(nc->trans + nc->trans_len, nc->sent, nc->sent_len + 1);
	nc->trans_len += nc->sent_len;
	nc->sending = true;
	nc->sends++;
	nf_touch(nc);
}

int net_tls_start(struct net_conn *nc, struct tls_ctx *ctx, const char *peer_name)
{
	/* net.h: after the protocol's STARTTLS was answered, on an open
	 * plaintext connection. */
	assert_int_equal(nc->state, NF_OPEN);
	assert_int_equal(nc->tls_state, NF_TLS_OFF);
	assert_null(nc->tls);
	assert_non_null(ctx);
	nc->tls = tls_conn_new(ctx, peer_name);
	if (!nc->tls)
		return -ENOMEM;
	snprintf(nc->peer_name, sizeof(nc->peer_name), "%s", peer_name ? peer_name : "");
	nc->tls_state = NF_TLS_HANDSHAKE;
	nc->tls_starts++;
	return 0;
}

struct tls_conn *net_tls(const struct net_conn *nc)
{
	return nc->tls_state == NF_TLS_ON ? nc->tls : NULL;
}

void net_read_file(struct net_conn *nc, int fd, void *buf, uint32_t len, uint64_t off)
{
	/* net.c asserts both. */
	assert_false(nc->fread);
	assert_int_equal(nc->state, NF_OPEN);
	nc->fread = true;
	nc->fread_fd = fd;
	nc->fread_buf = buf;
	nc->fread_len = len;
	nc->fread_off = off;
	nc->freads++;
}

bool net_closing(const struct net_conn *nc)
{
	return !nf_live(nc);
}

void net_close(struct net_conn *nc)
{
	if (nc->state == NF_CLOSING || nc->state == NF_FREE)
		return;
	if (nc->state == NF_RESERVED) {
		nf_release(nc); /* nothing was submitted: no op to wait for */
		return;
	}
	nc->state = NF_CLOSING;
	nc->sending = false;
	nc->closes++;
}

void net_shutdown(struct net_conn *nc)
{
	nc->shutdowns++;
	if (nc->state != NF_OPEN || nc->tls_state != NF_TLS_ON) {
		net_close(nc);
		return;
	}
	/* close_notify goes out; the close follows at nf_reap or the deadline. */
	nc->state = NF_DRAINING;
	nc->sending = false;
	nc->deadline_ms = *nc->t->now_ms + (nc->timeout_ms ? nc->timeout_ms : 5000);
}

void net_complete(struct net_table *t, uint64_t ud, int res)
{
	(void)t;
	(void)ud;
	(void)res;
	fail_msg("net_complete: nothing of the fake is on a ring");
}

void net_tick(struct net_table *t)
{
	uint64_t now = *t->now_ms;

	assert_false(t->in_callback);
	for (uint32_t i = 0; i < t->nslots; i++) {
		struct net_conn *nc = &t->conns[i];

		if (now < nc->deadline_ms)
			continue;
		if (nc->state == NF_DRAINING) {
			net_close(nc);
		} else if (nf_live(nc)) {
			nc->deadline_ms = UINT64_MAX; /* once, until the next I/O */
			NF_CALL(nc, on_timeout);
		}
	}
}

/* ---- the test's side ------------------------------------------------------------ */

/* on_error once; a connection the protocol left open is closed. */
static void nf_fail(struct net_conn *nc, int err, const char *why)
{
	if (nc->state == NF_DRAINING) {
		net_close(nc);
		return;
	}
	if (!nf_live(nc))
		return;
	NF_CALL(nc, on_error, err, why);
	if (nf_live(nc))
		net_close(nc);
}

void nf_connected(struct net_conn *nc, int res)
{
	assert_int_equal(nc->state, NF_CONNECTING);
	if (res < 0) {
		nf_fail(nc, res, strerror(-res));
		return;
	}
	nc->state = NF_OPEN;
	nc->deadline_ms = UINT64_MAX;
	nf_touch(nc);
	NF_CALL(nc, on_connected);
}

const char *nf_sending(const struct net_conn *nc)
{
	return nc->sending ? nc->sent : NULL;
}

void nf_sent(struct net_conn *nc, int res)
{
	char now[NF_SEND_MAX + 1];

	assert_true(nc->sending);
	if (res < 0) {
		nc->sending = false;
		nf_fail(nc, res, strerror(-res));
		return;
	}
	/* net.h: the bytes stay the protocol's and must not change until
	 * on_sent. */
	assert_int_equal(nf_gather(nc->iov, nc->niov, now, NF_SEND_MAX), nc->sent_len);
	assert_memory_equal(now, nc->sent, nc->sent_len);
	nc->sending = false;
	if (nc->state == NF_OPEN)
		NF_CALL(nc, on_sent);
}

void nf_recv_n(struct net_conn *nc, const char *p, size_t n)
{
	assert_int_equal(nc->state, NF_OPEN);
	/* Under TLS the bytes would be records for the layer; the fake plays
	 * only the plaintext after it, and none during the handshake. */
	assert_int_not_equal(nc->tls_state, NF_TLS_HANDSHAKE);
	assert_true(n > 0);
	/* As net.c: input moves no deadline; the protocol says when a whole
	 * reply came (net_progress). */
	if (nc->ops->on_recv)
		NF_CALL(nc, on_recv);
	if (nc->state == NF_OPEN)
		NF_CALL(nc, on_input, p, n);
}

void nf_recv(struct net_conn *nc, const char *text)
{
	nf_recv_n(nc, text, strlen(text));
}

void nf_error(struct net_conn *nc, int err, const char *why)
{
	nf_fail(nc, err, why);
}

void nf_file_read_res(struct net_conn *nc, int res)
{
	assert_true(nc->fread);
	nc->fread = false;
	if (nc->state == NF_OPEN)
		NF_CALL(nc, on_file_read, res);
}

void nf_file_read(struct net_conn *nc)
{
	ssize_t r;

	assert_true(nc->fread);
	r = pread(nc->fread_fd, nc->fread_buf, nc->fread_len, (off_t)nc->fread_off);
	nf_file_read_res(nc, r < 0 ? -errno : (int)r);
}

void nf_tls_ready(struct net_conn *nc)
{
	assert_int_equal(nc->state, NF_OPEN);
	assert_int_equal(nc->tls_state, NF_TLS_HANDSHAKE);
	nc->tls_state = NF_TLS_ON;
	NF_CALL(nc, on_tls_ready);
}

uint32_t nf_reap(struct net_table *t)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < t->nslots; i++) {
		struct net_conn *nc = &t->conns[i];

		if (nc->state == NF_DRAINING)
			net_close(nc); /* the close_notify went */
		/* The reap waits for every op in flight: a file read still
		 * writes into the protocol's window (net.h). */
		if (nc->state != NF_CLOSING || nc->fread)
			continue;
		nf_release(nc);
		t->closed++;
		n++;
		NF_CALL(nc, on_closed);
	}
	return n;
}
