/*
 * shard — the per-core loop.  See shard.h.
 *
 * One switch over the completion's op (handle_cqe); every op names its slot
 * and generation, so completions of a recycled slot are dropped.  Slots are
 * recycled only in conn_reap(), at the end of a completion's handling, once
 * nothing of the connection is in flight.
 */
#include "shard.h"

#include <arpa/inet.h>
#include <ck_spinlock.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "hpool/hpool.h"
#include "log/log.h"
#include "tls/tls.h"

#define SHARD_TICK_MS	     1000
#define SHARD_STOP_GRACE_MS  10000
#define SHARD_STOP_LINGER_MS 2000 /* output of a closing client at shutdown */
#define SHARD_FD_SPARE	     4096 /* outbound, spool, listeners, eventfds, files */
#define SHARD_PROBE_WAIT_MS  3000 /* how long a listener address may stay "in use" */

/* ---- process-wide connection accounting ---------------------------------
 * The total and the per-client-IP counts are shared by all shards: the
 * kernel spreads one client's connections over every shard's socket.  The
 * per-IP table is a fixed open-addressing table sized at start; the spinlock
 * is held for a handful of instructions, never across a call. */

struct ip_slot {
	uint8_t addr[16];
	uint32_t count;
};

static struct {
	_Atomic uint32_t total;
	uint32_t total_max;
	uint32_t per_ip_max;
	struct ip_slot *table;
	uint32_t mask;
	ck_spinlock_fas_t lock;
} g_conns = {.lock = CK_SPINLOCK_FAS_INITIALIZER};

/* Every connection is a descriptor, outbound ones too: raise the soft
 * limit as far as the hard one allows, or an accept fails with EMFILE long
 * before limits.connections is reached. */
static void shard_fd_limit(const struct rmx_config *cfg)
{
	rlim_t want = (rlim_t)cfg->limits.connections + SHARD_FD_SPARE;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
		log_msg(LOG_WARN,
			"event=fd_limit limit=%llu wanted=%llu message=\"RLIMIT_NOFILE is below "
			"limits.connections plus spare descriptors\"",
			(unsigned long long)rl.rlim_cur, (unsigned long long)want);
}

int shard_globals_init(const struct rmx_config *cfg)
{
	uint32_t n = 1024;

	while (n < cfg->limits.connections * 2u && n < (1u << 24))
		n <<= 1;
	g_conns.table = calloc(n, sizeof(g_conns.table[0]));
	if (!g_conns.table)
		return -ENOMEM;
	g_conns.mask = n - 1;
	g_conns.total_max = cfg->limits.connections;
	g_conns.per_ip_max = cfg->limits.connections_per_ip;
	shard_fd_limit(cfg);
	return 0;
}

/* The client a per-client limit counts: an IPv4 address, or an IPv6 /64.
 * One subscriber or site gets a whole /64 (RFC 6177), so counting /128s
 * would give it 2^64 allowances. */
static void ip_key(const struct sockaddr_storage *ss, uint8_t key[16])
{
	memset(key, 0, 16);
	if (ss->ss_family == AF_INET) {
		key[10] = key[11] = 0xff; /* v4-mapped, so both families share keys */
		memcpy(key + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
	} else if (ss->ss_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;

		/* A dual-stack socket shows IPv4 clients v4-mapped: keep all 128
		 * bits, or a whole IPv4 /0 would share one key. */
		memcpy(key, a, IN6_IS_ADDR_V4MAPPED(a) ? 16 : CONN_V6_PREFIX_LEN / 8);
	}
	static_assert(CONN_V6_PREFIX_LEN % 8 == 0, "a whole-byte prefix");
}

static uint32_t ip_hash(const uint8_t key[16])
{
	uint64_t a, b;

	memcpy(&a, key, 8);
	memcpy(&b, key + 8, 8);
	return (uint32_t)(((a * 0x9e3779b97f4a7c15ull) ^ (b * 0xc2b2ae3d27d4eb4full)) >> 32);
}

/* Count one more connection of this client.  Returns 0, or the reason it is
 * refused ("connections" / "connections_per_ip"). */
static const char *conn_admit(const struct sockaddr_storage *ss)
{
	uint8_t key[16];
	uint32_t i;
	const char *why = NULL;

	if (atomic_fetch_add(&g_conns.total, 1) >= g_conns.total_max) {
		atomic_fetch_sub(&g_conns.total, 1);
		return "connections";
	}
	ip_key(ss, key);
	ck_spinlock_fas_lock(&g_conns.lock);
	for (i = ip_hash(key) & g_conns.mask;; i = (i + 1) & g_conns.mask) {
		struct ip_slot *s = &g_conns.table[i];

		if (s->count == 0 || memcmp(s->addr, key, 16) == 0) {
			if (s->count >= g_conns.per_ip_max) {
				why = "connections_per_ip";
			} else {
				memcpy(s->addr, key, 16);
				s->count++;
			}
			break;
		}
	}
	ck_spinlock_fas_unlock(&g_conns.lock);
	if (why)
		atomic_fetch_sub(&g_conns.total, 1);
	return why;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void ip_table_remove(uint32_t i)
{
	uint32_t j = i;

	for (;;) {
		j = (j + 1) & g_conns.mask;
		if (g_conns.table[j].count == 0)
			break;
		uint32_t home = ip_hash(g_conns.table[j].addr) & g_conns.mask;
		/* Move j back into the hole at i unless its home lies in (i, j]. */
		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			g_conns.table[i] = g_conns.table[j];
			i = j;
		}
	}
	memset(&g_conns.table[i], 0, sizeof(g_conns.table[i]));
}

static void conn_release_ip(const struct sockaddr_storage *ss)
{
	uint8_t key[16];

	ip_key(ss, key);
	ck_spinlock_fas_lock(&g_conns.lock);
	for (uint32_t i = ip_hash(key) & g_conns.mask;; i = (i + 1) & g_conns.mask) {
		struct ip_slot *s = &g_conns.table[i];

		assert(s->count > 0);
		if (memcmp(s->addr, key, 16) == 0) {
			if (--s->count == 0)
				ip_table_remove(i);
			break;
		}
	}
	ck_spinlock_fas_unlock(&g_conns.lock);
	atomic_fetch_sub(&g_conns.total, 1);
}

/* ---- helpers -------------------------------------------------------------- */

uint64_t shard_now_ms(const struct shard *sh)
{
	return sh->now_ms;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t conn_ud(const struct conn *c, uint8_t op)
{
	return ring_ud(op, 0, c->gen, c->slot);
}

static void conn_recv_enter(struct conn *c, enum conn_recv next)
{
	static const bool legal[CONN_RECV_COUNT][CONN_RECV_COUNT] = {
	    [CONN_RECV_IDLE] = {[CONN_RECV_ARMED] = true},
	    [CONN_RECV_ARMED] =
		{[CONN_RECV_IDLE] = true, [CONN_RECV_CANCELLING] = true, [CONN_RECV_NOBUFS] = true},
	    [CONN_RECV_CANCELLING] = {[CONN_RECV_IDLE] = true},
	    [CONN_RECV_NOBUFS] = {[CONN_RECV_IDLE] = true},
	};

	assert(c->recv < CONN_RECV_COUNT && next < CONN_RECV_COUNT);
	assert(legal[c->recv][next]);
	c->recv = next;
}

/* One recv into a provided buffer (len 0: the whole buffer).  Armed only
 * below the cap, so the buffer it may take keeps inq within bounds. */
static void conn_arm_recv(struct conn *c)
{
	struct io_uring_sqe *sqe = ring_sqe(&c->shard->ring);

	assert(c->inq_count < c->shard->inq_cap);
	io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = RING_BGID;
	io_uring_sqe_set_data64(sqe, conn_ud(c, OP_RECV));
	conn_recv_enter(c, CONN_RECV_ARMED);
	c->inflight++;
}

/* Parking or closing: the recv in flight must not take another buffer. */
static void conn_cancel_recv(struct conn *c)
{
	if (c->recv != CONN_RECV_ARMED)
		return;
	ring_prep_cancel(&c->shard->ring, conn_ud(c, OP_RECV), conn_ud(c, OP_CANCEL));
	c->inflight++;
	conn_recv_enter(c, CONN_RECV_CANCELLING);
}

static void conn_shutdown_io(struct conn *c);

/* Close once the output is out, which may take CONN_CLOSE_LINGER_MS at
 * most; the deadline is never extended, so a slow reader cannot stretch it. */
static void conn_want_close(struct conn *c)
{
	if (!c->close_wanted)
		c->close_deadline_ms = c->shard->now_ms + CONN_CLOSE_LINGER_MS;
	c->close_wanted = true;
}

/* A client that never reads would keep a send in flight, and with it the
 * slot, for ever: each send must finish within idle_s (the same patience
 * as for its commands), checked by the tick. */
static void conn_send_started(struct conn *c)
{
	struct shard *sh = c->shard;

	assert(!c->send_inflight);
	c->send_inflight = true;
	c->inflight++;
	c->send_started_ms = sh->now_ms;
	c->send_deadline_ms = sh->now_ms + (uint64_t)sh->cfg->limits.idle_s * 1000u;
}

/* TLS output: what the session wrote is encrypted (as much as the TLS
 * layer takes), then its records go out from the TLS layer's buffer.  A
 * session that is closing ends with close_notify behind its last reply
 * (RFC 8446 6.1, RFC 5246 7.2.1): a strict client takes a TLS stream that
 * just stops for a truncation attack (Exim: "TLS connection was
 * non-properly terminated").  It is queued once (tls_conn_shutdown() then
 * answers 0 and adds nothing); -ENOBUFS: after the send in flight. */
static void conn_send_tls(struct conn *c)
{
	struct io_uring_sqe *sqe;
	const void *p;
	size_t len;

	if (c->tls_mode == CONN_TLS_ON && c->out_len) {
		ssize_t w = tls_conn_write(c->tls, c->out, c->out_len);

		if (w > 0) {
			memmove(c->out, c->out + w, c->out_len - (size_t)w);
			c->out_len -= (uint32_t)w;
		} else if (w != -ENOBUFS && w != -EAGAIN) {
			log_msg(LOG_INFO, "event=tls_error client=%s error=\"%s\"", c->peer_ip,
				tls_conn_error(c->tls));
			c->out_len = 0;
			conn_want_close(c);
			conn_shutdown_io(c);
			return;
		}
	}
	if (c->tls_mode == CONN_TLS_ON && c->close_wanted && c->out_len == 0)
		(void)tls_conn_shutdown(c->tls); /* -EPROTO: the session failed, no alert */
	if (!tls_conn_out(c->tls, &p, &len) || len == 0)
		return;
	sqe = ring_sqe(&c->shard->ring);
	io_uring_prep_send(sqe, c->fd, p, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, conn_ud(c, OP_SEND));
	c->send_tls = true;
	conn_send_started(c);
}

static bool conn_tls_out_pending(const struct conn *c)
{
	const void *p;
	size_t len;

	return c->tls && tls_conn_out(c->tls, &p, &len) && len > 0;
}

static void conn_send(struct conn *c)
{
	struct io_uring_sqe *sqe;
	uint32_t len;

	if (c->send_inflight || c->io != CONN_ACTIVE)
		return;
	if (c->tls && c->tls_plain_out == 0) {
		conn_send_tls(c);
		return;
	}
	if (c->out_len == 0)
		return;
	len = c->tls_plain_out ? c->tls_plain_out : c->out_len;
	sqe = ring_sqe(&c->shard->ring);
	io_uring_prep_send(sqe, c->fd, c->out, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, conn_ud(c, OP_SEND));
	c->out_sent = len;
	c->send_tls = false;
	conn_send_started(c);
}

void conn_reply(struct conn *c, const char *line)
{
	size_t n = strlen(line);

	/* The session checks conn_out_free() >= SMTP_REPLY_MAX before each
	 * command, so a reply that does not fit is a broken invariant. */
	assert(n + 2 <= conn_out_free(c));
	memcpy(c->out + c->out_len, line, n);
	c->out[c->out_len + n] = '\r';
	c->out[c->out_len + n + 1] = '\n';
	c->out_len += (uint32_t)n + 2;
}

void conn_replyf(struct conn *c, const char *fmt, ...)
{
	char line[SMTP_REPLY_MAX];
	va_list ap;

	va_start(ap, fmt);
	/* 510 characters: with its CRLF a reply line is at most 512 octets. */
	vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	conn_reply(c, line);
}

size_t conn_out_free(const struct conn *c)
{
	return CONN_OUT_MAX - c->out_len;
}

void conn_drop_output(struct conn *c)
{
	c->out_len = c->send_inflight ? c->out_sent : 0;
}

/* ---- closing -------------------------------------------------------------- */

static void conn_shutdown_io(struct conn *c)
{
	struct shard *sh = c->shard;

	if (c->io != CONN_ACTIVE)
		return;
	struct io_uring_sqe *sqe;

	assert(c->io == CONN_ACTIVE);
	c->io = CONN_CLOSING;
	conn_cancel_recv(c);
	if (c->greet_armed) {
		ring_prep_cancel(&sh->ring, conn_ud(c, OP_GREET), conn_ud(c, OP_CANCEL));
		c->inflight++;
	}
	if (c->decide_armed) {
		ring_prep_cancel(&sh->ring, conn_ud(c, OP_DECIDE_TIMER), conn_ud(c, OP_CANCEL));
		c->inflight++;
	}
	if (c->send_inflight) {
		/* Only reached for a send past its deadline (a client that does
		 * not read): the close alone would not end it. */
		ring_prep_cancel(&sh->ring, conn_ud(c, OP_SEND), conn_ud(c, OP_CANCEL));
		c->inflight++;
	}
	sqe = ring_sqe(&sh->ring);
	io_uring_prep_close(sqe, c->fd);
	io_uring_sqe_set_data64(sqe, conn_ud(c, OP_CLOSE));
	c->inflight++;
}

/* What is queued goes out first (and a TLS session's close_notify behind
 * it, conn_send_tls), then the socket closes (conn_on_send). */
void conn_close(struct conn *c)
{
	if (c->io != CONN_ACTIVE)
		return;
	conn_want_close(c);
	if (c->send_inflight)
		return;
	conn_send(c);
	if (c->send_inflight)
		return;
	conn_shutdown_io(c);
}

/* The safe point: nothing of the connection is in flight, so its slot can
 * be given to the next client.  Held receive buffers go back here. */
static void conn_reap(struct conn *c)
{
	struct shard *sh = c->shard;

	if (c->io != CONN_CLOSING || c->inflight || smtp_session_busy(c))
		return;
	smtp_session_release(c);
	while (c->pq_count) {
		ring_buf_put(&sh->ring, c->pq[c->pq_head].bid);
		c->pq_head = (c->pq_head + 1) % CONN_PQ_MAX;
		c->pq_count--;
	}
	if (c->tls) {
		tls_conn_free(c->tls);
		c->tls = NULL;
	}
	while (c->inq_count) {
		ring_buf_put(&sh->ring, c->inq[c->inq_head].bid);
		c->inq_head = (c->inq_head + 1) % CONN_INQ_MAX;
		c->inq_count--;
	}
	conn_release_ip(&c->peer);
	if (c->prev)
		c->prev->next = c->next;
	else
		sh->active = c->next;
	if (c->next)
		c->next->prev = c->prev;
	sh->active_count--;
	c->io = CONN_FREE;
	c->gen++;
	sh->free_slots[sh->free_count++] = c->slot;
	log_msg(LOG_DEBUG, "event=disconnect shard=%u client=%s", sh->id, c->peer_ip);
}

/* ---- input ---------------------------------------------------------------- */

static void conn_inq_pop(struct conn *c)
{
	ring_buf_put(&c->shard->ring, c->inq[c->inq_head].bid);
	c->inq_head = (c->inq_head + 1) % CONN_INQ_MAX;
	c->inq_count--;
}

/* Plaintext input: feed held receive buffers to the session until it
 * pauses, switches to TLS, or they run out. */
static void conn_plain_input(struct conn *c)
{
	struct shard *sh = c->shard;

	while (c->inq_count && c->io == CONN_ACTIVE && !c->close_wanted && !c->tls_switch) {
		struct conn_inbuf *e = &c->inq[c->inq_head];
		char *p = ring_buf_ptr(&sh->ring, e->bid) + e->off;
		size_t used = smtp_session_feed(c, p, e->len - e->off, e->bid);

		assert(used <= e->len - e->off);
		e->off += (uint32_t)used;
		if (e->off < e->len)
			break; /* paused (or STARTTLS): resumed by conn_resume() */
		conn_inq_pop(c);
	}
}

static void conn_tls_failed(struct conn *c, const char *stage)
{
	log_msg(LOG_INFO, "event=tls_failed client=%s stage=%s error=\"%s\"", c->peer_ip, stage,
		tls_conn_error(c->tls));
	/* Never back to plaintext: whatever the session had queued is dropped,
	 * the TLS layer's alert (if any) goes out, then the connection closes. */
	c->out_len = c->send_inflight ? c->out_sent : 0;
	c->tls_plain_out = 0;
	conn_want_close(c);
	if (!c->send_inflight)
		conn_send(c);
	if (!c->send_inflight)
		conn_shutdown_io(c);
}

/* TLS plaintext already decrypted (pq) into the session.  false: the
 * session paused, or the connection is closing. */
static bool conn_tls_feed_session(struct conn *c)
{
	struct shard *sh = c->shard;

	while (c->pq_count && c->io == CONN_ACTIVE && !c->close_wanted) {
		struct conn_inbuf *e = &c->pq[c->pq_head];
		char *p = ring_buf_ptr(&sh->ring, e->bid) + e->off;
		size_t used = smtp_session_feed(c, p, e->len - e->off, e->bid);

		assert(used <= e->len - e->off);
		e->off += (uint32_t)used;
		if (e->off < e->len)
			return false; /* paused: resumed by conn_resume() */
		ring_buf_put(&sh->ring, e->bid);
		c->pq_head = (c->pq_head + 1) % CONN_PQ_MAX;
		c->pq_count--;
	}
	return c->io == CONN_ACTIVE && !c->close_wanted;
}

/* Held ciphertext (inq) into the TLS layer, as much as it has room for. */
static void conn_tls_feed_layer(struct conn *c)
{
	struct shard *sh = c->shard;

	while (c->inq_count) {
		struct conn_inbuf *e = &c->inq[c->inq_head];
		size_t k = tls_conn_feed(c->tls, ring_buf_ptr(&sh->ring, e->bid) + e->off,
					 e->len - e->off);

		e->off += (uint32_t)k;
		if (e->off < e->len)
			return; /* the TLS layer is full */
		conn_inq_pop(c);
	}
}

/* The layer answered -EAGAIN: it used every byte it was fed (tls.h), so
 * while ciphertext is held it has room for more, and the caller goes on.
 * Stopping here instead would strand the held buffers: nothing else
 * resumes a connection whose input is all received. */
static bool conn_tls_wants_more(const struct conn *c)
{
	if (c->inq_count == 0)
		return false; /* resumed by the next receive */
	assert(tls_conn_in_free(c->tls) > 0);
	return true;
}

static void conn_tls_established(struct conn *c)
{
	c->tls_mode = CONN_TLS_ON;
	log_msg(LOG_INFO, "event=tls client=%s version=%s cipher=%s sni=%s", c->peer_ip,
		tls_conn_version(c->tls), tls_conn_cipher(c->tls),
		tls_conn_sni(c->tls) ? tls_conn_sni(c->tls) : "-");
	if (smtp_session_phase(c) == SMTP_PHASE_PREGREET) /* implicit TLS: greet now */
		smtp_session_greet(c);
}

/* Decrypt into a user buffer at the tail of pq: what tls_conn_read()
 * returns (> 0 bytes queued, 0 at the client's close_notify, -errno), or
 * -ENOMEM when no user buffer is free (retried when one comes back). */
static ssize_t conn_tls_decrypt(struct conn *c)
{
	struct shard *sh = c->shard;
	int bid = ring_buf_alloc(&sh->ring);

	if (bid < 0) {
		sh->user_starved = true;
		return -ENOMEM;
	}
	ssize_t n =
	    tls_conn_read(c->tls, ring_buf_ptr(&sh->ring, (uint16_t)bid), sh->ring.buf_size);

	if (n <= 0) {
		ring_buf_put(&sh->ring, (uint16_t)bid);
		return n;
	}
	c->pq[(c->pq_head + c->pq_count) % CONN_PQ_MAX] =
	    (struct conn_inbuf){.bid = (uint16_t)bid, .off = 0, .len = (uint32_t)n};
	c->pq_count++;
	return n;
}

/* TLS input: ciphertext from inq into the TLS layer, the handshake, then
 * plaintext into user buffers (pq) and from there into the session.  Every
 * turn of the loop feeds the session, feeds the layer or decrypts; it ends
 * when the session pauses, pq is full, no user buffer is free, or every
 * held byte went into the layer and it wants more. */
static void conn_tls_input(struct conn *c)
{
	while (conn_tls_feed_session(c)) {
		conn_tls_feed_layer(c);
		if (c->tls_mode == CONN_TLS_HANDSHAKE) {
			int rc = tls_conn_handshake(c->tls);

			if (rc == 0) {
				conn_tls_established(c);
				continue;
			}
			if (rc == -EAGAIN && conn_tls_wants_more(c))
				continue;
			if (rc != -EAGAIN && rc != -ENOBUFS)
				conn_tls_failed(c, "handshake");
			return; /* more input, or the output flushed first */
		}
		if (c->pq_count == CONN_PQ_MAX)
			return;
		ssize_t n = conn_tls_decrypt(c);

		if (n > 0)
			continue;
		if (n == -EAGAIN && conn_tls_wants_more(c))
			continue;
		if (n == -EAGAIN || n == -ENOBUFS || n == -ENOMEM)
			return;
		if (n == 0) { /* close_notify: the client is done, ours answers it */
			conn_drop_output(c);
			conn_close(c);
			return;
		}
		conn_tls_failed(c, "read");
		return;
	}
}

/* STARTTLS was answered: drop everything received so far (a client cannot
 * have sent it after our 220, so it is an injection attempt, CVE-2011-0411)
 * and start the handshake; the 220 itself still goes out in plaintext. */
static void conn_tls_start(struct conn *c)
{
	struct shard *sh = c->shard;
	uint64_t dropped = 0;

	c->tls_switch = false;
	while (c->inq_count) {
		dropped += c->inq[c->inq_head].len - c->inq[c->inq_head].off;
		conn_inq_pop(c);
	}
	if (dropped)
		log_msg(LOG_WARN, "event=starttls_injection client=%s discarded=%llu", c->peer_ip,
			(unsigned long long)dropped);
	c->tls = tls_conn_new(sh->tls_ctx, NULL);
	if (!c->tls) {
		log_msg(LOG_ERROR, "event=tls_failed client=%s stage=setup error=\"out of memory\"",
			c->peer_ip);
		conn_close(c);
		return;
	}
	c->tls_mode = CONN_TLS_HANDSHAKE;
	c->tls_plain_out = c->out_len;
	c->tls_deadline_ms = sh->now_ms + (uint64_t)sh->cfg->tls.handshake_timeout_s * 1000u;
}

void conn_starttls(struct conn *c)
{
	c->tls_switch = true;
}

const char *conn_tls_version(const struct conn *c)
{
	return c->tls_mode == CONN_TLS_ON ? tls_conn_version(c->tls) : NULL;
}

const char *conn_tls_cipher(const struct conn *c)
{
	return c->tls_mode == CONN_TLS_ON ? tls_conn_cipher(c->tls) : NULL;
}

/* ---- parking ---------------------------------------------------------------
 * A session that waits on a timer (an error tarpit, the delay after a failed
 * AUTH, a pending decision) or on a client that does not read its replies
 * waits for as long as the client likes.  Holding receive buffers meanwhile
 * would let a few hundred such clients, each sending tiny segments, take the
 * shard's whole pool.  So the connection is parked: its recv is stopped and
 * what it already sent is copied into its own stash (the buffers go back at
 * once).  On resume the stash goes into a user buffer, fed first.  Input that
 * does not fit the stash closes the connection: no parked client holds any
 * of the shared pool. */

static bool conn_wants_park(const struct conn *c)
{
	if (c->io != CONN_ACTIVE || c->close_wanted || c->tls_mode == CONN_TLS_HANDSHAKE)
		return false;
	switch (smtp_session_hold(c)) {
	case SMTP_HOLD_SELF:
		return true;
	case SMTP_HOLD_NONE:
		/* Replies unread: the session parses no command until they go.
		 * A full buffer alone does not say so: the replies of a large
		 * pipelined group fill it while the send is in flight, and
		 * parking a client that reads them would squeeze its pending
		 * commands into the stash and close it when they do not fit
		 * (RFC 2920 3.2).  So only a send unfinished for CONN_UNREAD_MS
		 * counts; the tick parks it then. */
		return smtp_session_phase(c) != SMTP_PHASE_BODY &&
		       smtp_session_phase(c) != SMTP_PHASE_PREGREET &&
		       conn_out_free(c) < SMTP_REPLY_MAX && c->send_inflight &&
		       c->shard->now_ms - c->send_started_ms >= CONN_UNREAD_MS;
	case SMTP_HOLD_DISK:
		return false; /* ended by our own disk I/O, not by the client */
	}
	abort();
}

static uint32_t conn_stash_cap(const struct conn *c)
{
	uint32_t b = c->shard->ring.buf_size;

	return b < CONN_STASH_MAX ? b : CONN_STASH_MAX; /* it goes back into one buffer */
}

static bool conn_stash_add(struct conn *c, const char *p, size_t n)
{
	if (n > conn_stash_cap(c) - c->stash_len)
		return false;
	memcpy(c->stash + c->stash_len, p, n);
	c->stash_len += (uint32_t)n;
	return true;
}

/* TLS: ciphertext into the TLS layer, plaintext out into the stash, until
 * no receive buffer is held.  false: the stash is full first. */
static bool conn_stash_decrypt(struct conn *c)
{
	struct shard *sh = c->shard;

	while (c->inq_count) {
		struct conn_inbuf *e = &c->inq[c->inq_head];
		size_t k = tls_conn_feed(c->tls, ring_buf_ptr(&sh->ring, e->bid) + e->off,
					 e->len - e->off);

		e->off += (uint32_t)k;
		if (e->off == e->len) {
			conn_inq_pop(c);
			continue;
		}
		/* The TLS layer's input is full: decrypting makes room. */
		uint32_t room = conn_stash_cap(c) - c->stash_len;
		ssize_t n = room ? tls_conn_read(c->tls, c->stash + c->stash_len, room) : -ENOBUFS;

		if (n > 0)
			c->stash_len += (uint32_t)n;
		else if (n != -EAGAIN || tls_conn_in_free(c->tls) == 0)
			return false; /* a full stash, the client's close or a TLS error */
	}
	return true;
}

/* Move every byte held in shared buffers into the stash; a connection whose
 * input does not fit is closed. */
static void conn_park_absorb(struct conn *c)
{
	struct shard *sh = c->shard;
	bool fits = true;

	while (fits && c->pq_count) { /* TLS plaintext: the oldest bytes */
		struct conn_inbuf *e = &c->pq[c->pq_head];

		fits = conn_stash_add(c, ring_buf_ptr(&sh->ring, e->bid) + e->off, e->len - e->off);
		if (fits) {
			ring_buf_put(&sh->ring, e->bid);
			c->pq_head = (c->pq_head + 1) % CONN_PQ_MAX;
			c->pq_count--;
		}
	}
	if (c->tls)
		fits = fits && conn_stash_decrypt(c);
	while (fits && !c->tls && c->inq_count) {
		struct conn_inbuf *e = &c->inq[c->inq_head];

		fits = conn_stash_add(c, ring_buf_ptr(&sh->ring, e->bid) + e->off, e->len - e->off);
		if (fits)
			conn_inq_pop(c);
	}
	if (fits)
		return;
	log_msg(LOG_WARN, "event=input_overrun shard=%u client=%s held=%u parked=yes", sh->id,
		c->peer_ip, c->stash_len);
	char reply[SMTP_REPLY_MAX];

	snprintf(reply, sizeof(reply), "421 4.7.0 %s Error: too much pipelined input",
		 sh->cfg->hostname);
	smtp_session_timeout(c, reply);
}

static void conn_park(struct conn *c)
{
	c->parked = true;
	conn_cancel_recv(c);
	conn_park_absorb(c);
}

/* The stash goes back in front of the input, in a user buffer so body
 * bytes among it can be spooled by reference.  false: no user buffer now
 * (retried when one comes back). */
static bool conn_unpark(struct conn *c)
{
	struct shard *sh = c->shard;

	if (c->stash_len) {
		int bid = ring_buf_alloc(&sh->ring);

		if (bid < 0) {
			sh->user_starved = true;
			return false;
		}
		memcpy(ring_buf_ptr(&sh->ring, (uint16_t)bid), c->stash, c->stash_len);
		struct conn_inbuf e = {.bid = (uint16_t)bid, .off = 0, .len = c->stash_len};

		/* Parking emptied both queues, and nothing is received while
		 * parked, so the front is free. */
		if (c->tls) {
			assert(c->pq_count == 0);
			c->pq[c->pq_head] = e;
			c->pq_count = 1;
		} else {
			assert(c->inq_count == 0);
			c->inq[c->inq_head] = e;
			c->inq_count = 1;
		}
		c->stash_len = 0;
	}
	c->parked = false;
	return true;
}

static bool conn_wants_recv(const struct conn *c)
{
	return c->io == CONN_ACTIVE && !c->close_wanted && !c->parked && !c->peer_eof &&
	       c->recv == CONN_RECV_IDLE && c->inq_count < c->shard->inq_cap;
}

/* After the client's FIN: every byte it sent was fed and the session waits
 * for nothing, so nothing more will be answered. */
static bool conn_input_answered(const struct conn *c)
{
	return c->peer_eof && c->io == CONN_ACTIVE && !c->close_wanted && !c->parked &&
	       c->inq_count == 0 && c->pq_count == 0 && smtp_session_hold(c) == SMTP_HOLD_NONE &&
	       !(c->tls && c->shard->user_starved); /* plaintext still in the TLS layer */
}

static void conn_process_input(struct conn *c)
{
	if (c->in_feed)
		return;
	c->in_feed = true;
	/* While parked, whatever arrived before the recv stopped goes into the
	 * stash first: the stash is the oldest input, so unparking puts it in
	 * front of an empty queue (a send completing with more to send ends an
	 * unread-replies park without passing here, and a data completion
	 * posted before the cancel may follow it in the same batch). */
	if (c->parked && c->io == CONN_ACTIVE && !c->close_wanted)
		conn_park_absorb(c);
	if (c->parked && c->io == CONN_ACTIVE && !c->close_wanted && !conn_wants_park(c))
		conn_unpark(c);
	if (!c->parked) {
		if (c->tls)
			conn_tls_input(c);
		else
			conn_plain_input(c);
		if (c->tls_switch && c->io == CONN_ACTIVE)
			conn_tls_start(c);
		if (conn_wants_park(c))
			conn_park(c);
	}
	c->in_feed = false;
	if (conn_wants_recv(c))
		conn_arm_recv(c);
	else if (conn_input_answered(c))
		conn_close(c);
	conn_send(c);
}

bool conn_active(const struct conn *c)
{
	return c->io == CONN_ACTIVE;
}

bool conn_takes_input(const struct conn *c)
{
	return c->io == CONN_ACTIVE && !c->close_wanted && !c->tls_switch;
}

bool conn_tls_on(const struct conn *c)
{
	return c->tls_mode == CONN_TLS_ON;
}

bool conn_tls_begun(const struct conn *c)
{
	return c->tls != NULL;
}

const char *conn_peer_ip(const struct conn *c)
{
	return c->peer_ip;
}

const struct sockaddr_storage *conn_peer(const struct conn *c)
{
	return &c->peer;
}

uint8_t conn_listener(const struct conn *c)
{
	return c->listener;
}

void conn_owner(const struct conn *c, uint32_t *slot, uint16_t *gen)
{
	*slot = c->slot;
	*gen = c->gen;
}

/* Inside the feed loop input goes on by itself; a closing connection
 * takes none. */
void conn_resume(struct conn *c)
{
	if (c->in_feed || c->io != CONN_ACTIVE)
		return;
	conn_process_input(c);
}

void conn_flush(struct conn *c)
{
	conn_send(c);
}

uint64_t conn_helper_cookie(const struct conn *c)
{
	return (uint64_t)c->slot | (uint64_t)c->gen << 32;
}

void conn_helper_sent(struct conn *c)
{
	assert(c->io == CONN_ACTIVE);
	c->inflight++;
}

void conn_timer(struct conn *c, uint32_t ms)
{
	assert(!c->decide_armed && c->io == CONN_ACTIVE);
	c->decide_ts.tv_sec = ms / 1000;
	c->decide_ts.tv_nsec = (long long)(ms % 1000) * 1000000;
	ring_prep_timeout(&c->shard->ring, &c->decide_ts, conn_ud(c, OP_DECIDE_TIMER));
	c->decide_armed = true;
	c->inflight++;
}

static void conn_on_decide_timer(struct conn *c)
{
	c->inflight--;
	c->decide_armed = false;
	/* A closed session (a stash overrun or shutdown while it waited) may
	 * stay ACTIVE for as long as its 421 takes to go out: it takes no
	 * decision any more.  Finishing MAIL or the message in state QUIT
	 * would be an illegal transition, and the assert would take the
	 * whole server down for one client that does not read. */
	if (c->io == CONN_ACTIVE && !c->close_wanted)
		smtp_session_decided(c);
}

/* Bytes arrived in provided buffer bid: queued and fed. */
static void conn_on_data(struct conn *c, uint16_t bid, uint32_t len)
{
	struct shard *sh = c->shard;

	ring_buf_taken(&sh->ring, bid);
	if (c->io != CONN_ACTIVE) {
		ring_buf_put(&sh->ring, bid);
		return;
	}
	/* The recv was armed below the cap; unparking puts one entry into an
	 * empty queue while none is armed, and the cap is two or more. */
	assert(c->inq_count < sh->inq_cap);
	c->inq[(c->inq_head + c->inq_count) % CONN_INQ_MAX] =
	    (struct conn_inbuf){.bid = bid, .off = 0, .len = len};
	c->inq_count++;
	c->idle_deadline_ms = sh->now_ms + (uint64_t)sh->cfg->limits.idle_s * 1000u;
	conn_process_input(c); /* armed again there while it holds less than the cap */
}

static void conn_on_recv(struct conn *c, struct io_uring_cqe *cqe)
{
	struct shard *sh = c->shard;
	int res = cqe->res;

	assert(c->recv == CONN_RECV_ARMED || c->recv == CONN_RECV_CANCELLING);
	assert(!(cqe->flags & IORING_CQE_F_MORE)); /* single-shot */
	c->inflight--;
	if (res == -ENOBUFS && c->recv == CONN_RECV_ARMED) {
		/* Out of receive buffers: backpressure, not an error.  Armed
		 * again at the end of a loop turn once buffers came back. */
		conn_recv_enter(c, CONN_RECV_NOBUFS);
		sh->ring.buf_exhausted = true;
		sh->recv_enobufs++;
		return;
	}
	conn_recv_enter(c, CONN_RECV_IDLE);
	if (res > 0) {
		assert(cqe->flags & IORING_CQE_F_BUFFER);
		conn_on_data(c, (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT), (uint32_t)res);
		return;
	}
	if (c->io != CONN_ACTIVE)
		return;
	if (res == -ECANCELED || res == -ENOBUFS) {
		conn_process_input(c); /* parked (armed again on unpark), or unparked since */
		return;
	}
	if (res == 0) {
		/* FIN: the client shut down its sending side, which RFC 5321
		 * 4.1.1.10 allows once QUIT is sent; it still reads.  What it
		 * sent is answered first (a reply dropped here may be the 250
		 * of a message being committed: the client would send it
		 * again), then the connection closes (conn_input_answered). */
		c->peer_eof = true;
		conn_process_input(c);
		return;
	}
	/* An error: the client is gone; pending output is moot. */
	conn_drop_output(c);
	conn_want_close(c);
	if (!c->send_inflight)
		conn_shutdown_io(c);
}

static void conn_on_send(struct conn *c, int res)
{
	c->send_inflight = false;
	c->inflight--;
	if (c->io != CONN_ACTIVE)
		return;
	if (res <= 0) {
		c->out_len = 0; /* no send in flight any more */
		conn_want_close(c);
		conn_shutdown_io(c);
		return;
	}
	if (c->send_tls) {
		tls_conn_out_done(c->tls, (size_t)res);
	} else {
		memmove(c->out, c->out + res, c->out_len - (uint32_t)res);
		c->out_len -= (uint32_t)res;
		if (c->tls_plain_out)
			c->tls_plain_out -=
			    (uint32_t)res < c->tls_plain_out ? (uint32_t)res : c->tls_plain_out;
	}
	if (c->out_len || conn_tls_out_pending(c) || c->close_wanted) {
		conn_send(c); /* closing: a TLS session's close_notify too */
		if (c->send_inflight)
			return;
	}
	if (c->close_wanted) {
		conn_shutdown_io(c);
		return;
	}
	conn_process_input(c); /* output space freed: a paused parse may go on */
}

/* ---- accept ----------------------------------------------------------------- */

static void listener_arm(struct shard *sh, uint32_t i)
{
	struct io_uring_sqe *sqe = ring_sqe(&sh->ring);

	/* No address buffer: with multishot accept one buffer would be
	 * overwritten by each connection; getpeername() is exact. */
	io_uring_prep_multishot_accept(sqe, sh->listeners[i].fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ring_ud(OP_ACCEPT, 0, 0, i));
	sh->listeners[i].armed = true;
}

static void peer_format(struct conn *c)
{
	void *a = c->peer.ss_family == AF_INET6
		      ? (void *)&((struct sockaddr_in6 *)&c->peer)->sin6_addr
		      : (void *)&((struct sockaddr_in *)&c->peer)->sin_addr;

	if (!inet_ntop(c->peer.ss_family, a, c->peer_ip, sizeof(c->peer_ip)))
		strcpy(c->peer_ip, "unknown");
	c->peer_port = ntohs(((struct sockaddr_in *)&c->peer)->sin_port);
}

/* A refused client gets its 421 from static memory and a linked close:
 * no slot, nothing to reap.  HARDLINK: the close must run even when the
 * send fails (a client already gone), or the fd would leak. */
static void conn_refuse(struct shard *sh, int fd, const char *reply)
{
	struct io_uring_sqe *sqe = ring_sqe(&sh->ring);

	io_uring_prep_send(sqe, fd, reply, strlen(reply), MSG_NOSIGNAL | MSG_DONTWAIT);
	sqe->flags |= IOSQE_IO_HARDLINK;
	io_uring_sqe_set_data64(sqe, ring_ud(OP_REFUSE_SEND, 0, 0, (uint32_t)fd));
	sqe = ring_sqe(&sh->ring);
	io_uring_prep_close(sqe, fd);
	io_uring_sqe_set_data64(sqe, ring_ud(OP_REFUSE_CLOSE, 0, 0, (uint32_t)fd));
}

static struct conn *conn_new(struct shard *sh, int fd, uint32_t listener)
{
	struct conn *c;
	int one = 1;

	c = &sh->conns[sh->free_slots[--sh->free_count]];
	assert(c->io == CONN_FREE && c->inflight == 0);
	uint16_t gen = c->gen;
	uint32_t slot = c->slot;
	memset(c, 0, offsetof(struct conn, s));
	c->shard = sh;
	c->slot = slot;
	c->gen = gen;
	c->fd = fd;
	c->io = CONN_ACTIVE;
	c->listener = (uint8_t)listener;
	c->idle_deadline_ms = sh->now_ms + (uint64_t)sh->cfg->limits.idle_s * 1000u;
	c->session_deadline_ms = sh->now_ms + (uint64_t)sh->cfg->limits.session_s * 1000u;
	/* Replies are already batched per loop turn; Nagle would only add
	 * latency to the last reply of a pipelined group. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->next = sh->active;
	if (sh->active)
		sh->active->prev = c;
	sh->active = c;
	sh->active_count++;
	return c;
}

/* A new connection's first step: the TLS handshake (implicit TLS), the
 * greet pause, or a peek for bytes sent before the banner. */
static void conn_begin(struct conn *c, const struct config_listener *l)
{
	struct shard *sh = c->shard;

	if (l->tls == CONFIG_TLS_IMPLICIT) {
		/* RFC 8314: TLS from the first byte; the banner follows the
		 * handshake (an early talker is the TLS client hello). */
		c->tls = tls_conn_new(sh->tls_ctx, NULL);
		if (!c->tls) {
			conn_close(c);
			return;
		}
		c->tls_mode = CONN_TLS_HANDSHAKE;
		c->tls_deadline_ms =
		    sh->now_ms + (uint64_t)sh->cfg->tls.handshake_timeout_s * 1000u;
		conn_arm_recv(c);
		return;
	}
	if (l->greet_pause_ms) {
		/* Pre-greet pause: anything the client sends before the banner
		 * marks it as a spam-bot early talker. */
		uint32_t ms = l->greet_pause_ms;

		c->greet_ts.tv_sec = ms / 1000;
		c->greet_ts.tv_nsec = (long long)(ms % 1000) * 1000000;
		ring_prep_timeout(&sh->ring, &c->greet_ts, conn_ud(c, OP_GREET));
		c->inflight++;
		c->greet_armed = true;
		conn_arm_recv(c);
		return;
	}
	/* No pause: still refuse bytes that arrived before we could greet
	 * (a client that talks without reading). */
	struct io_uring_sqe *sqe = ring_sqe(&sh->ring);

	io_uring_prep_recv(sqe, c->fd, sh->peek_byte, 1, MSG_PEEK | MSG_DONTWAIT);
	io_uring_sqe_set_data64(sqe, conn_ud(c, OP_PEEK));
	c->inflight++;
}

static void shard_on_accept(struct shard *sh, uint32_t li, struct io_uring_cqe *cqe)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	const char *why;
	struct conn *c;
	char ip[CONN_PEER_MAX] = "unknown";
	int fd = cqe->res;

	/* Multishot ended (EMFILE, ENFILE, ENOMEM...): re-armed by the next
	 * tick, so an exhausted fd table does not spin the loop. */
	if (!(cqe->flags & IORING_CQE_F_MORE))
		sh->listeners[li].armed = false;
	if (fd < 0) {
		if (fd != -ECANCELED)
			log_msg(LOG_WARN, "event=accept_error shard=%u error=\"%s\"", sh->id,
				strerror(-fd));
		return;
	}
	if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
		memset(&ss, 0, sizeof(ss));
	why = sh->stopping ? "shutdown" : sh->free_count == 0 ? "connections" : conn_admit(&ss);
	if (why) {
		struct conn tmp = {.peer = ss};

		peer_format(&tmp);
		memcpy(ip, tmp.peer_ip, sizeof(ip));
		log_msg(LOG_INFO, "event=refused shard=%u client=%s reason=%s", sh->id, ip, why);
		conn_refuse(sh, fd,
			    strcmp(why, "connections_per_ip") == 0
				? "421 4.7.0 Too many connections from your address\r\n"
				: "421 4.3.2 Too many connections, try again later\r\n");
		return;
	}
	c = conn_new(sh, fd, li);
	c->peer = ss;
	peer_format(c);
	smtp_session_init(c, &sh->env);
	log_msg(LOG_DEBUG, "event=connect shard=%u client=%s port=%u listener=%s", sh->id,
		c->peer_ip, c->peer_port, sh->listeners[li].cfg->name);
	conn_begin(c, sh->listeners[li].cfg);
}

static void conn_on_peek(struct conn *c, int res)
{
	c->inflight--;
	if (c->io != CONN_ACTIVE)
		return;
	if (res > 0) {
		smtp_session_early(c);
		return;
	}
	smtp_session_greet(c);
	conn_arm_recv(c);
	conn_send(c);
}

static void conn_on_greet(struct conn *c, int res)
{
	c->inflight--;
	c->greet_armed = false;
	if (c->io != CONN_ACTIVE || res == -ECANCELED)
		return;
	if (smtp_session_phase(c) == SMTP_PHASE_PREGREET) {
		smtp_session_greet(c);
		conn_process_input(c);
	}
}

/* ---- timers and stop -------------------------------------------------------- */

static void shard_arm_tick(struct shard *sh)
{
	sh->tick_ts.tv_sec = SHARD_TICK_MS / 1000;
	sh->tick_ts.tv_nsec = 0;
	ring_prep_timeout(&sh->ring, &sh->tick_ts, ring_ud(OP_TICK, 0, 0, 0));
}

static void shard_arm_wake(struct shard *sh)
{
	struct io_uring_sqe *sqe = ring_sqe(&sh->ring);

	io_uring_prep_read(sqe, sh->wake_fd, &sh->wake_buf, sizeof(sh->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, ring_ud(OP_WAKE, 0, 0, 0));
}

/* Idle and session timers: a 1 s sweep over the active list.  Cheaper
 * than a timeout SQE per connection and precise enough for limits that
 * are counted in seconds. */
static void shard_on_tick(struct shard *sh)
{
	char reply[SMTP_REPLY_MAX];

	for (struct conn *c = sh->active, *next; c; c = next) {
		next = c->next;
		if (c->io == CONN_ACTIVE && c->send_inflight &&
		    (sh->now_ms >= c->send_deadline_ms ||
		     (c->close_wanted && sh->now_ms >= c->close_deadline_ms))) {
			/* The client does not read: whatever it was waiting for,
			 * its slot is not held any longer. */
			log_msg(LOG_INFO, "event=send_timeout shard=%u client=%s state=%s", sh->id,
				c->peer_ip, c->close_wanted ? "closing" : "open");
			conn_shutdown_io(c);
			continue;
		}
		if (c->io == CONN_ACTIVE && !c->parked && conn_wants_park(c)) {
			conn_process_input(c); /* a client that stopped reading: parked */
			continue;
		}
		/* A message being committed or a decision being waited for is
		 * bounded by its own I/O and timers, not by the client. */
		if (c->io != CONN_ACTIVE || smtp_session_phase(c) == SMTP_PHASE_COMMIT ||
		    smtp_session_hold(c) == SMTP_HOLD_SELF)
			continue;
		if (c->tls_mode == CONN_TLS_HANDSHAKE && sh->now_ms >= c->tls_deadline_ms) {
			log_msg(LOG_INFO,
				"event=tls_failed client=%s stage=handshake error=timeout",
				c->peer_ip);
			c->out_len = c->send_inflight ? c->out_sent : 0;
			conn_close(c);
			continue;
		}
		if (sh->now_ms >= c->session_deadline_ms) {
			snprintf(reply, sizeof(reply), "421 4.4.2 %s Session time limit exceeded",
				 sh->cfg->hostname);
			smtp_session_timeout(c, reply);
		} else if (sh->now_ms >= c->idle_deadline_ms) {
			snprintf(reply, sizeof(reply),
				 "421 4.4.2 %s Idle timeout, closing connection",
				 sh->cfg->hostname);
			smtp_session_timeout(c, reply);
		}
	}
	for (uint32_t i = 0; i < sh->cfg->listener_count && !sh->stopping; i++)
		if (!sh->listeners[i].armed)
			listener_arm(sh, i);
	deliver_tick(sh->dlv);
	if (!sh->stopping || sh->now_ms < sh->stop_deadline_ms)
		shard_arm_tick(sh);
}

static void shard_begin_stop(struct shard *sh)
{
	char reply[SMTP_REPLY_MAX];

	sh->stopping = true;
	sh->stop_deadline_ms = sh->now_ms + SHARD_STOP_GRACE_MS;
	for (uint32_t i = 0; i < sh->cfg->listener_count; i++) {
		ring_prep_cancel(&sh->ring, ring_ud(OP_ACCEPT, 0, 0, i),
				 ring_ud(OP_LISTEN_CANCEL, 0, 0, i));
	}
	deliver_stop(sh->dlv);
	snprintf(reply, sizeof(reply), "421 4.3.2 %s Service shutting down", sh->cfg->hostname);
	for (struct conn *c = sh->active, *next; c; c = next) {
		next = c->next;
		/* A message being made durable finishes first: its 250 goes
		 * out, then the 421 (smtp_session_durable checks stopping).
		 * One still waiting for its data-stage decision (a tarpit of up
		 * to a minute) is not being made durable: it is closed like any
		 * waiting session, or it would hold the shard for the whole
		 * grace and then be dropped without a reply. */
		if (c->io == CONN_ACTIVE && (smtp_session_phase(c) != SMTP_PHASE_COMMIT ||
					     smtp_session_hold(c) == SMTP_HOLD_SELF))
			smtp_session_timeout(c, reply);
		/* A client that does not read its 421 gets SHARD_STOP_LINGER_MS,
		 * not the whole grace: the stop waits for no one's socket. */
		if (c->io == CONN_ACTIVE && c->close_wanted &&
		    c->close_deadline_ms > sh->now_ms + SHARD_STOP_LINGER_MS)
			c->close_deadline_ms = sh->now_ms + SHARD_STOP_LINGER_MS;
	}
}

/* The eventfd: a stop request, a control request, or helper results. */
static void shard_on_wake(struct shard *sh)
{
	struct hpool_done done[64];
	struct dctl_req *req;
	uint32_t n;

	while ((n = hpool_reap(sh->pool, sh->id, done, 64)) > 0)
		for (uint32_t i = 0; i < n; i++) {
			if (done[i].kind == HPOOL_JOB) {
				deliver_helper_done(sh->dlv, &done[i]);
				continue;
			}
			/* An inline job is AUTH's password check (the only one):
			 * the cookie names the connection. */
			uint32_t slot = (uint32_t)done[i].cookie;
			uint16_t gen = (uint16_t)(done[i].cookie >> 32);
			struct conn *c = slot < sh->conn_max ? &sh->conns[slot] : NULL;

			if (!c || c->gen != gen || c->io == CONN_FREE)
				continue;
			assert(c->inflight > 0 && conn_helper_cookie(c) == done[i].cookie);
			c->inflight--;
			/* As for a decision: a closed session answers no AUTH. */
			if (c->io == CONN_ACTIVE && !c->close_wanted)
				smtp_session_auth_done(c, done[i].result);
			conn_reap(c);
		}
	deliver_wake(sh->dlv); /* tickets other shards ran for us */
	req = atomic_exchange(&sh->ctl, NULL);
	/* A request that changed state is answered by the engine once its
	 * records are durable. */
	if (req && deliver_ctl(sh->dlv, req))
		sem_post(&req->done);
	if (atomic_load(&sh->stop) && !sh->stopping)
		shard_begin_stop(sh);
	shard_arm_wake(sh);
}

void shard_ctl(struct shard *sh, struct dctl_req *req)
{
	uint64_t one = 1;

	sem_init(&req->done, 0, 0);
	atomic_store(&sh->ctl, req);
	if (write(sh->wake_fd, &one, sizeof(one)) < 0)
		log_msg(LOG_WARN, "event=shard_wake shard=%u error=\"%s\"", sh->id,
			strerror(errno));
	while (sem_wait(&req->done) != 0 && errno == EINTR)
		;
	sem_destroy(&req->done);
}

/* ---- the loop --------------------------------------------------------------- */

static struct conn *conn_of(struct shard *sh, uint64_t ud)
{
	uint32_t slot = ring_ud_slot(ud);

	if (slot >= sh->conn_max || sh->conns[slot].gen != ring_ud_gen(ud) ||
	    sh->conns[slot].io == CONN_FREE)
		return NULL;
	return &sh->conns[slot];
}

static void handle_conn_cqe(struct shard *sh, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	uint8_t op = ring_ud_op(ud);
	struct conn *c = conn_of(sh, ud);

	/* Every op that names a slot is counted in c->inflight until its last
	 * completion, so the slot cannot have been recycled: a NULL here is a
	 * broken invariant. */
	assert(c);
	switch (op) {
	case OP_RECV:
		conn_on_recv(c, cqe);
		break;
	case OP_SEND:
		conn_on_send(c, cqe->res);
		break;
	case OP_PEEK:
		conn_on_peek(c, cqe->res);
		break;
	case OP_GREET:
		conn_on_greet(c, cqe->res);
		break;
	case OP_DECIDE_TIMER:
		conn_on_decide_timer(c);
		break;
	case OP_CANCEL:
	case OP_CLOSE:
		c->inflight--;
		break;
	default:
		abort();
	}
	conn_reap(c);
}

static void handle_shard_cqe(struct shard *sh, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	uint8_t op = ring_ud_op(ud);

	switch (op) {
	case OP_ACCEPT:
		shard_on_accept(sh, ring_ud_slot(ud), cqe);
		break;
	case OP_RECV:
	case OP_SEND:
	case OP_PEEK:
	case OP_GREET:
	case OP_DECIDE_TIMER:
	case OP_CANCEL:
	case OP_CLOSE:
		handle_conn_cqe(sh, cqe);
		break;
	case OP_TICK:
		shard_on_tick(sh);
		break;
	case OP_WAKE:
		shard_on_wake(sh);
		break;
	case OP_REFUSE_SEND:
	case OP_REFUSE_CLOSE:
		break;
	case OP_LISTEN_CANCEL:
		break;
	default:
		abort(); /* a shard op without a handler */
	}
}

/* One switch on the owner of the op (ring/ops.h): a completion whose op no
 * module owns was never submitted, and is a broken program. */
static void handle_cqe(struct shard *sh, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;

	switch (ops_owner(ring_ud_op(ud))) {
	case OPS_OWNER_SHARD:
		handle_shard_cqe(sh, cqe);
		break;
	case OPS_OWNER_SPOOL:
		spool_complete(sh->spool, ud, cqe->res);
		break;
	case OPS_OWNER_DNS: /* the resolver serves delivery */
	case OPS_OWNER_DLV:
		deliver_complete(sh->dlv, ud, cqe->res, cqe->flags);
		break;
	case OPS_OWNER_NONE:
	default:
		abort();
	}
}

/* Some recvs found no free buffer; buffers came back since.  And TLS
 * connections that found no user buffer for plaintext go on. */
static void shard_rearm_starved(struct shard *sh)
{
	if (sh->user_starved && sh->ring.user_free_count) {
		sh->user_starved = false;
		for (struct conn *c = sh->active; c; c = c->next)
			if (c->io == CONN_ACTIVE && (c->tls || c->parked) && !c->in_feed)
				conn_process_input(c);
	}
	if (!sh->ring.buf_exhausted || sh->ring.buf_free == 0)
		return;
	sh->ring.buf_exhausted = false;
	for (struct conn *c = sh->active; c; c = c->next) {
		if (c->recv != CONN_RECV_NOBUFS)
			continue;
		conn_recv_enter(c, CONN_RECV_IDLE);
		if (conn_wants_recv(c))
			conn_arm_recv(c);
	}
}

static bool shard_done(struct shard *sh)
{
	if (!sh->stopping)
		return false;
	if (sh->now_ms >= sh->stop_deadline_ms)
		return true;
	/* A multishot accept still in the ring holds its listener: closed then,
	 * the socket lives on until the kernel tears the ring down, after exit,
	 * and a restart finds the address in use.  Wait for its cancellation. */
	for (uint32_t i = 0; i < sh->cfg->listener_count; i++)
		if (sh->listeners[i].armed)
			return false;
	return sh->active_count == 0 && !spool_busy(sh->spool) && !deliver_busy(sh->dlv);
}

static void shard_loop(struct shard *sh)
{
	while (!shard_done(sh)) {
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		int rc = ring_submit_wait(&sh->ring);

		if (rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EAGAIN && rc != -EBUSY) {
			log_msg(LOG_ERROR, "event=ring_error shard=%u error=\"%s\"", sh->id,
				strerror(-rc));
			break;
		}
		sh->now_ms = mono_ms();
		io_uring_for_each_cqe(&sh->ring.uring, head, cqe)
		{
			handle_cqe(sh, cqe);
			n++;
		}
		io_uring_cq_advance(&sh->ring.uring, n);
		/* Starved connections first: the body bytes they feed now hold
		 * the buffers they were given, and only a submitted batch gives
		 * them back.  Fed after the flush, those bytes would wait for
		 * the next completion, and with every buffer held by them there
		 * may be none before the tick (TLS uploads
		 * crawling at one batch per tick).  Delivery next: its records
		 * ride this turn's batches.  Group commit: everything committed
		 * in this turn shares one fdatasync per segment. */
		shard_rearm_starved(sh);
		deliver_turn(sh->dlv);
		spool_flush(sh->spool);
	}
}

/* ---- start and stop ----------------------------------------------------------- */

static int listener_open(const struct config_listener *l, char *why, size_t why_len)
{
	int one = 1;
	int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		goto fail;
	/* One socket per shard on the same address: the kernel spreads new
	 * connections over the shards (SO_REUSEPORT). */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
		goto fail;
	if (l->addr.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&l->addr, l->addr_len) != 0 || listen(fd, 4096) != 0)
		goto fail;
	return fd;
fail:
	snprintf(why, why_len, "listener %s: %s", l->name, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}

/* Bind the address once without SO_REUSEPORT: 0, or -errno (-EADDRINUSE:
 * someone listens on it).  SO_REUSEADDR only lets us past our own
 * TIME_WAIT sockets; a listening socket still refuses the bind. */
static int listener_probe_bind(const struct config_listener *l)
{
	int one = 1, rc = 0;
	int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
		rc = -errno;
	if (rc == 0 && l->addr.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (rc == 0 && bind(fd, (const struct sockaddr *)&l->addr, l->addr_len) != 0)
		rc = -errno;
	if (fd >= 0)
		close(fd);
	return rc;
}

/* SO_REUSEPORT lets any process of the same user join a port and take a
 * share of its connections: a second ringmx on another spool, or anything
 * else.  So before the shards bind with it, each address is bound once
 * without it: if something holds the address, this fails and we refuse to
 * start rather than split its mail. */
int shard_listeners_probe(const struct rmx_config *cfg, bool in_use_ok, char *why, size_t why_len)
{
	for (uint32_t i = 0; i < cfg->listener_count; i++) {
		const struct config_listener *l = &cfg->listeners[i];
		int rc = listener_probe_bind(l);

		/* A restart: the instance before us may hold its listening
		 * sockets for a moment after it exited (io_uring releases the
		 * requests that hold them from a kernel worker once the process
		 * is gone).  So "in use" must last before it means another
		 * process; start-up may wait. */
		for (uint32_t ms = 0; rc == -EADDRINUSE && !in_use_ok && ms < SHARD_PROBE_WAIT_MS;
		     ms += 20) {
			usleep(20 * 1000);
			rc = listener_probe_bind(l);
		}
		if (rc == -EADDRINUSE && in_use_ok)
			continue;
		if (rc == -EADDRINUSE) {
			snprintf(why, why_len,
				 "listeners[%u] (%s): the address is already in use by another "
				 "process (another ringmx?)",
				 i, l->name);
			return rc;
		}
		if (rc < 0) {
			snprintf(why, why_len, "listeners[%u] (%s): %s", i, l->name, strerror(-rc));
			return rc;
		}
	}
	return 0;
}

static const struct spool_ops shard_spool_ops;

static void shard_on_durable(void *ctx, struct spool_msg *m, int res)
{
	struct shard *sh = ctx;
	struct conn *c = &sh->conns[m->owner];

	if (m->owner == SPOOL_OWNER_ENGINE) {
		deliver_spool_durable(sh->dlv, m, res);
		return;
	}
	/* Into the queue before the session releases the envelope. */
	if (res == 0)
		deliver_committed(sh->dlv, m);
	assert(m->owner < sh->conn_max && c->gen == m->owner_gen && c->io != CONN_FREE);
	smtp_session_durable(c, res);
	conn_reap(c);
}

static void shard_on_progress(void *ctx, struct spool_msg *m)
{
	struct shard *sh = ctx;
	struct conn *c = &sh->conns[m->owner];

	if (m->owner == SPOOL_OWNER_ENGINE) {
		deliver_spool_progress(sh->dlv, m);
		return;
	}
	assert(m->owner < sh->conn_max && c->gen == m->owner_gen && c->io != CONN_FREE);
	smtp_session_spool_progress(c);
	conn_reap(c);
}

static void shard_on_segment(void *ctx, uint64_t seq)
{
	struct shard *sh = ctx;

	deliver_segment(sh->dlv, seq);
}

static const struct spool_ops shard_spool_ops = {.on_durable = shard_on_durable,
						 .on_progress = shard_on_progress,
						 .on_segment = shard_on_segment};

struct tls_ctx *shard_tls_server_ctx(const struct rmx_config *cfg, char *why, size_t why_len)
{
	const char *names[CONFIG_CERTS_MAX][TLS_CERT_NAMES_MAX];
	struct tls_cert_params certs[CONFIG_CERTS_MAX];

	for (uint32_t i = 0; i < cfg->tls.cert_count; i++) {
		const struct config_cert *cc = &cfg->tls.certs[i];

		for (uint32_t k = 0; k < cc->name_count && k < TLS_CERT_NAMES_MAX; k++)
			names[i][k] = cc->names[k];
		certs[i] = (struct tls_cert_params){.cert = cc->cert,
						    .key = cc->key,
						    .names = names[i],
						    .name_count = cc->name_count};
	}
	struct tls_params tp = {.role = TLS_ROLE_SERVER,
				.certs = certs,
				.cert_count = cfg->tls.cert_count,
				.min_version = cfg->tls.min_version,
				.ciphers = cfg->tls.ciphers};
	return tls_ctx_new(&tp, why, why_len);
}

/* What the sessions of this shard may use of it (smtp/session.h). */
static void shard_env_init(struct shard *sh)
{
	struct smtp_env *e = &sh->env;

	*e = (struct smtp_env){.cfg = sh->cfg,
			       .spool = sh->spool,
			       .txpool = sh->txpool,
			       .pool = sh->pool,
			       .pool_shard = sh->id,
			       .users = sh->users,
			       .throttle = sh->throttle,
			       .tls_ctx = sh->tls_ctx,
			       .now_ms = &sh->now_ms,
			       .stopping = &sh->stopping};
	for (uint32_t i = 0; i < sh->cfg->listener_count; i++)
		e->listeners[i] = sh->listeners[i].cfg;
}

/* "ringmx-shard3" in top -H, perf and /proc/PID/task/TID/comm; pinned to
 * its CPU when cpu_affinity says so. */
static void shard_pin_thread(struct shard *sh)
{
	const struct rmx_config *cfg = sh->cfg;
	char name[16];

	snprintf(name, sizeof(name), "ringmx-shard%u", sh->id);
	pthread_setname_np(pthread_self(), name);
	if (cfg->cpu_affinity) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cfg->cpu_affinity[sh->id], &set);
		if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
			log_msg(LOG_WARN, "event=affinity shard=%u cpu=%d error=failed", sh->id,
				cfg->cpu_affinity[sh->id]);
	}
}

/* The connection table, its free list, the transaction pool and the
 * listening sockets, all sized from the config now (invariant 4). */
static int shard_conns_init(struct shard *sh)
{
	const struct rmx_config *cfg = sh->cfg;

	sh->conn_max = cfg->io.max_connections;
	sh->conns = calloc(sh->conn_max, sizeof(sh->conns[0]));
	sh->free_slots = calloc(sh->conn_max, sizeof(sh->free_slots[0]));
	sh->txpool = smtp_tx_pool_new(sh->conn_max, cfg->limits.recipients);
	sh->sessions = smtp_sessions_new(sh->conn_max);
	if (!sh->conns || !sh->free_slots || !sh->txpool || !sh->sessions) {
		snprintf(sh->why, sizeof(sh->why), "out of memory sizing %u connections",
			 sh->conn_max);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < sh->conn_max; i++) {
		sh->conns[i].slot = i;
		sh->conns[i].s = smtp_session_at(sh->sessions, i);
		sh->free_slots[sh->free_count++] = sh->conn_max - 1 - i;
	}
	for (uint32_t i = 0; i < cfg->listener_count; i++) {
		sh->listeners[i].cfg = &cfg->listeners[i];
		sh->listeners[i].fd = listener_open(&cfg->listeners[i], sh->why, sizeof(sh->why));
		if (sh->listeners[i].fd < 0)
			return -EADDRINUSE;
	}
	return 0;
}

static int shard_setup(struct shard *sh)
{
	const struct rmx_config *cfg = sh->cfg;
	int rc;

	shard_pin_thread(sh);
	rc = ring_init(&sh->ring, cfg->io.ring_entries, cfg->io.recv_buffers,
		       cfg->io.recv_buffer_size, sh->why, sizeof(sh->why));
	if (rc < 0)
		return rc;
	/* No connection holds more than an eighth of the pool (invariant 8);
	 * io.recv_buffers is at least 16, so that is two buffers or more. */
	sh->inq_cap =
	    cfg->io.recv_buffers / 8 < CONN_INQ_MAX ? cfg->io.recv_buffers / 8 : CONN_INQ_MAX;
	assert(sh->inq_cap >= 2);
	rc = spool_open(&sh->spool, cfg->spool.path, sh->id, cfg->spool.segment_size,
			cfg->spool.durability == CONFIG_DURABILITY_FSYNC, sh->first_id, &sh->ring,
			&shard_spool_ops, sh, sh->why, sizeof(sh->why));
	if (rc < 0)
		return rc;
	if (cfg->tls.cert_count) {
		sh->tls_ctx = shard_tls_server_ctx(cfg, sh->why, sizeof(sh->why));
		if (!sh->tls_ctx)
			return -EINVAL;
	}
	/* User buffers: plaintext of TLS sessions (at most 4 per connection at
	 * a time) and the input of parked connections on resume.  Buffer ids
	 * are 16 bits, and 0xffff means "none" (SPOOL_NO_BUF). */
	uint32_t users = cfg->io.recv_buffers < 65535u - cfg->io.recv_buffers
			     ? cfg->io.recv_buffers
			     : 65535u - cfg->io.recv_buffers;
	rc = ring_user_bufs_init(&sh->ring, users);
	if (rc < 0) {
		snprintf(sh->why, sizeof(sh->why), "user buffers: %s", strerror(-rc));
		return rc;
	}
	struct deliver_params dp = {.shard = sh->id,
				    .shards = cfg->shards,
				    .cfg = cfg,
				    .ring = &sh->ring,
				    .spool = sh->spool,
				    .pool = sh->pool,
				    .shared = sh->shared};
	rc = deliver_new(&sh->dlv, &dp, sh->loaded, sh->why, sizeof(sh->why));
	sh->loaded = NULL;
	if (rc < 0)
		return rc;
	rc = shard_conns_init(sh);
	if (rc < 0)
		return rc;
	sh->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (sh->wake_fd < 0)
		return -errno;
	deliver_shared_set_wake(sh->shared, sh->id, sh->wake_fd);
	shard_env_init(sh);
	return hpool_shard_attach(sh->pool, sh->id, sh->wake_fd);
}

static void shard_teardown(struct shard *sh)
{
	for (uint32_t i = 0; i < sh->cfg->listener_count; i++)
		if (sh->listeners[i].fd > 0)
			close(sh->listeners[i].fd);
	deliver_free(sh->dlv);
	sh->dlv = NULL;
	if (sh->tls_ctx) {
		for (uint32_t i = 0; i < sh->conn_max; i++)
			if (sh->conns && sh->conns[i].tls) {
				tls_conn_free(sh->conns[i].tls);
				sh->conns[i].tls = NULL;
			}
		tls_ctx_free(sh->tls_ctx);
		sh->tls_ctx = NULL;
		tls_thread_cleanup();
	}
	spool_close(sh->spool);
	sh->spool = NULL;
	smtp_tx_pool_free(sh->txpool);
	smtp_sessions_free(sh->sessions);
	free(sh->conns);
	free(sh->free_slots);
	if (sh->ring.buf_count)
		ring_exit(&sh->ring);
}

static void *shard_main(void *arg)
{
	struct shard *sh = arg;
	int rc;

	log_thread_ring(sh->id);
	sh->now_ms = mono_ms();
	rc = shard_setup(sh);
	if (rc < 0) {
		atomic_store(&sh->start_rc, rc);
		return NULL;
	}
	for (uint32_t i = 0; i < sh->cfg->listener_count; i++)
		listener_arm(sh, i);
	shard_arm_tick(sh);
	shard_arm_wake(sh);
	atomic_store(&sh->start_rc, 0);
	shard_loop(sh);
	log_msg(LOG_INFO,
		"event=shard_stop shard=%u messages=%llu syncs=%llu writes=%llu recv_enobufs=%llu",
		sh->id, (unsigned long long)spool_stats(sh->spool)->messages,
		(unsigned long long)spool_stats(sh->spool)->syncs,
		(unsigned long long)spool_stats(sh->spool)->writes,
		(unsigned long long)sh->recv_enobufs);
	shard_teardown(sh);
	return NULL;
}

static struct auth_users *g_users;
static struct auth_throttle *g_throttle;

void shard_auth_setup(struct auth_users *users, struct auth_throttle *throttle)
{
	g_users = users;
	g_throttle = throttle;
}

int shard_start(struct shard *sh, uint32_t id, const struct rmx_config *cfg, uint64_t first_id,
		struct deliver_loaded *loaded, struct hpool *pool, struct deliver_shared *shared)
{
	memset(sh, 0, offsetof(struct shard, stop));
	sh->id = id;
	sh->cfg = cfg;
	sh->first_id = first_id;
	sh->loaded = loaded;
	sh->pool = pool;
	sh->shared = shared;
	sh->users = g_users;
	sh->throttle = g_throttle;
	atomic_store(&sh->ctl, NULL);
	sh->wake_fd = -1;
	atomic_store(&sh->stop, false);
	atomic_store(&sh->start_rc, 1);
	if (pthread_create(&sh->thread, NULL, shard_main, sh) != 0)
		return -errno;
	/* Start-up only: wait until the shard is listening or failed. */
	while (atomic_load(&sh->start_rc) > 0)
		usleep(1000);
	return atomic_load(&sh->start_rc);
}

void shard_stop(struct shard *sh)
{
	uint64_t one = 1;

	atomic_store(&sh->stop, true);
	if (sh->wake_fd >= 0 && write(sh->wake_fd, &one, sizeof(one)) < 0)
		log_msg(LOG_WARN, "event=shard_wake shard=%u error=\"%s\"", sh->id,
			strerror(errno));
}

void shard_join(struct shard *sh)
{
	pthread_join(sh->thread, NULL);
}

void shard_release(struct shard *sh)
{
	if (sh->shared)
		deliver_shared_set_wake(sh->shared, sh->id, -1);
	if (sh->wake_fd >= 0)
		close(sh->wake_fd);
	sh->wake_fd = -1;
}
