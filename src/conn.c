/*
 * conn — the inbound connections of a shard: receive (single-shot, into
 * provided buffers, with parking), send (one in flight, with a deadline),
 * the TLS adapter, close and the reap at the safe point.  The session
 * sees them through the functions in shard.h; the shard's loop hands their
 * completions here (shard_conn.h).  To be replaced by the one connection
 * layer (doc/design-net.md).
 */
#include "shard.h"
#include "shard_conn.h"

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

/* ---- helpers -------------------------------------------------------------- */

uint64_t shard_now_ms(const struct shard *sh)
{
	return sh->now_ms;
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

/* ---- from the shard's loop (shard_conn.h) ----------------------------------- */

void conn_peer_format(struct conn *c)
{
	void *a = c->peer.ss_family == AF_INET6
		      ? (void *)&((struct sockaddr_in6 *)&c->peer)->sin6_addr
		      : (void *)&((struct sockaddr_in *)&c->peer)->sin_addr;

	if (!inet_ntop(c->peer.ss_family, a, c->peer_ip, sizeof(c->peer_ip)))
		strcpy(c->peer_ip, "unknown");
	c->peer_port = ntohs(((struct sockaddr_in *)&c->peer)->sin_port);
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

static struct conn *conn_of(struct shard *sh, uint64_t ud)
{
	uint32_t slot = ring_ud_slot(ud);

	if (slot >= sh->conn_max || sh->conns[slot].gen != ring_ud_gen(ud) ||
	    sh->conns[slot].io == CONN_FREE)
		return NULL;
	return &sh->conns[slot];
}

void conn_complete(struct shard *sh, struct io_uring_cqe *cqe)
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

/* Some recvs found no free buffer; buffers came back since.  And TLS
 * connections that found no user buffer for plaintext go on. */
void conn_rearm_starved(struct shard *sh)
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

/* The shard's 1 s sweep, for one connection: a send past its deadline, a
 * client that stopped reading (parked), the TLS handshake, idle and
 * session time limits. */
void conn_tick(struct conn *c)
{
	struct shard *sh = c->shard;
	char reply[SMTP_REPLY_MAX];

	if (c->io == CONN_ACTIVE && c->send_inflight &&
	    (sh->now_ms >= c->send_deadline_ms ||
	     (c->close_wanted && sh->now_ms >= c->close_deadline_ms))) {
		/* The client does not read: whatever it was waiting for,
		 * its slot is not held any longer. */
		log_msg(LOG_INFO, "event=send_timeout shard=%u client=%s state=%s", sh->id,
			c->peer_ip, c->close_wanted ? "closing" : "open");
		conn_shutdown_io(c);
		return;
	}
	if (c->io == CONN_ACTIVE && !c->parked && conn_wants_park(c)) {
		conn_process_input(c); /* a client that stopped reading: parked */
		return;
	}
	/* A message being committed or a decision being waited for is
	 * bounded by its own I/O and timers, not by the client. */
	if (c->io != CONN_ACTIVE || smtp_session_phase(c) == SMTP_PHASE_COMMIT ||
	    smtp_session_hold(c) == SMTP_HOLD_SELF)
		return;
	if (c->tls_mode == CONN_TLS_HANDSHAKE && sh->now_ms >= c->tls_deadline_ms) {
		log_msg(LOG_INFO, "event=tls_failed client=%s stage=handshake error=timeout",
			c->peer_ip);
		c->out_len = c->send_inflight ? c->out_sent : 0;
		conn_close(c);
		return;
	}
	if (sh->now_ms >= c->session_deadline_ms) {
		snprintf(reply, sizeof(reply), "421 4.4.2 %s Session time limit exceeded",
			 sh->cfg->hostname);
		smtp_session_timeout(c, reply);
	} else if (sh->now_ms >= c->idle_deadline_ms) {
		snprintf(reply, sizeof(reply), "421 4.4.2 %s Idle timeout, closing connection",
			 sh->cfg->hostname);
		smtp_session_timeout(c, reply);
	}
}

/* The shard is stopping: the session is told (421), unless its message is
 * being made durable; a client that does not read its 421 is closed at
 * linger_ms, not at the end of the whole grace. */
void conn_stop(struct conn *c, const char *reply, uint64_t linger_ms)
{
	/* A message being made durable finishes first: its 250 goes
	 * out, then the 421 (smtp_session_durable checks stopping).
	 * One still waiting for its data-stage decision (a tarpit of up
	 * to a minute) is not being made durable: it is closed like any
	 * waiting session, or it would hold the shard for the whole
	 * grace and then be dropped without a reply. */
	if (c->io == CONN_ACTIVE &&
	    (smtp_session_phase(c) != SMTP_PHASE_COMMIT || smtp_session_hold(c) == SMTP_HOLD_SELF))
		smtp_session_timeout(c, reply);
	/* A client that does not read its 421 gets the stop's linger,
	 * not the whole grace: the stop waits for no one's socket. */
	if (c->io == CONN_ACTIVE && c->close_wanted && c->close_deadline_ms > linger_ms)
		c->close_deadline_ms = linger_ms;
}

/* A helper's answer for a connection (AUTH's password check): the cookie
 * names the slot and generation; an answer for an earlier client of the
 * slot is dropped. */
void conn_helper_done(struct shard *sh, uint64_t cookie, int result)
{
	uint32_t slot = (uint32_t)cookie;
	uint16_t gen = (uint16_t)(cookie >> 32);
	struct conn *c = slot < sh->conn_max ? &sh->conns[slot] : NULL;

	if (!c || c->gen != gen || c->io == CONN_FREE)
		return;
	assert(c->inflight > 0 && conn_helper_cookie(c) == cookie);
	c->inflight--;
	/* As for a decision: a closed session answers no AUTH. */
	if (c->io == CONN_ACTIVE && !c->close_wanted)
		smtp_session_auth_done(c, result);
	conn_reap(c);
}

/* The spool's answers for a message a session writes: its commit is
 * durable (or failed), or a write slot came free. */
static struct conn *conn_of_msg(struct shard *sh, const struct spool_msg *m)
{
	struct conn *c = &sh->conns[m->owner];

	assert(m->owner < sh->conn_max && c->gen == m->owner_gen && c->io != CONN_FREE);
	return c;
}

void conn_spool_durable(struct shard *sh, struct spool_msg *m, int res)
{
	struct conn *c = conn_of_msg(sh, m);

	smtp_session_durable(c, res);
	conn_reap(c);
}

void conn_spool_progress(struct shard *sh, struct spool_msg *m)
{
	struct conn *c = conn_of_msg(sh, m);

	smtp_session_spool_progress(c);
	conn_reap(c);
}

/* A new client on listener li: its slot, its session, its first step. */
void conn_accepted(struct shard *sh, int fd, uint32_t li, const struct sockaddr_storage *ss)
{
	struct conn *c = conn_new(sh, fd, li);

	c->peer = *ss;
	conn_peer_format(c);
	smtp_session_init(c, &sh->env);
	log_msg(LOG_DEBUG, "event=connect shard=%u client=%s port=%u listener=%s", sh->id,
		c->peer_ip, c->peer_port, sh->listeners[li].cfg->name);
	conn_begin(c, sh->listeners[li].cfg);
}
