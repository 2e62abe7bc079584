/*
 * net_tls_serve — the TLS adapter's server role, for served connections:
 * ciphertext from the held receive buffers (inq) into the TLS layer, the
 * handshake, plaintext decrypted into user buffers (pq) and fed from
 * there like received input (so its bytes can be spooled by reference),
 * the write buffer encrypted, close_notify behind the last reply, and the
 * STARTTLS switch.  The client role is net_tls.c.
 */
#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "log/log.h"
#include "net/net.h"
#include "net/net_int.h"
#include "ring/ring.h"
#include "tls/tls.h"

/* Never back to plaintext: whatever the protocol had queued is dropped,
 * the TLS layer's alert (if any) goes out, then the connection closes. */
static void sv_tls_failed(struct net_conn *nc, const char *stage)
{
	log_msg(LOG_INFO, "event=tls_failed client=%s stage=%s error=\"%s\"", nc->sv->name, stage,
		tls_conn_error(nc->tls));
	net_drop_output(nc);
	nc->sv->plain_out = 0;
	net_shutdown(nc);
}

/* TLS output: what the protocol wrote is encrypted (as much as the TLS
 * layer takes), then its records go out from the TLS layer's buffer.  A
 * connection that is draining ends with close_notify behind its last
 * reply (RFC 8446 6.1, RFC 5246 7.2.1): a strict client takes a TLS
 * stream that just stops for a truncation attack (Exim: "TLS connection
 * was non-properly terminated").  It is queued once (tls_conn_shutdown()
 * then answers 0 and adds nothing); -ENOBUFS: after the send in flight. */
void sv_tls_send(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;
	struct io_uring_sqe *sqe;
	const void *p;
	size_t len;

	if (nc->tls_state == NET_TLS_ON && sv->out_len) {
		ssize_t w = tls_conn_write(nc->tls, sv->out, sv->out_len);

		if (w > 0) {
			memmove(sv->out, sv->out + w, sv->out_len - (size_t)w);
			sv->out_len -= (uint32_t)w;
		} else if (w != -ENOBUFS && w != -EAGAIN) {
			log_msg(LOG_INFO, "event=tls_error client=%s error=\"%s\"", sv->name,
				tls_conn_error(nc->tls));
			sv->out_len = 0;
			net_close(nc);
			return;
		}
	}
	if (nc->tls_state == NET_TLS_ON && nc->state == NET_DRAINING && sv->out_len == 0)
		(void)tls_conn_shutdown(nc->tls); /* -EPROTO: the session failed, no alert */
	if (!tls_conn_out(nc->tls, &p, &len) || len == 0)
		return;
	sqe = ring_sqe(nc->t->ring);
	io_uring_prep_send(sqe, nc->fd, p, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_SEND));
	nc->send = NET_SEND_TLS;
	sv_send_submitted(nc);
}

bool sv_tls_out_pending(const struct net_conn *nc)
{
	const void *p;
	size_t len;

	return nc->tls && tls_conn_out(nc->tls, &p, &len) && len > 0;
}

/* TLS plaintext already decrypted (pq) into the protocol.  false: it
 * paused, or the connection is closing. */
static bool sv_tls_feed_proto(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;

	while (sv->pq_count && nc->state == NET_OPEN) {
		struct net_inbuf *e = &sv->pq[sv->pq_head];
		char *p = ring_buf_ptr(nc->t->ring, e->bid) + e->off;
		size_t used = nc->ops->on_feed(nc->proto, p, e->len - e->off, e->bid);

		assert(used <= e->len - e->off);
		e->off += (uint32_t)used;
		if (e->off < e->len)
			return false; /* paused: resumed by net_resume() */
		ring_buf_put(nc->t->ring, e->bid);
		sv->pq_head = (sv->pq_head + 1) % NET_PQ_MAX;
		sv->pq_count--;
	}
	return nc->state == NET_OPEN;
}

/* Held ciphertext (inq) into the TLS layer, as much as it has room for. */
static void sv_tls_feed_layer(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;

	while (sv->inq_count) {
		struct net_inbuf *e = &sv->inq[sv->inq_head];
		size_t k = tls_conn_feed(nc->tls, ring_buf_ptr(nc->t->ring, e->bid) + e->off,
					 e->len - e->off);

		e->off += (uint32_t)k;
		if (e->off < e->len)
			return; /* the TLS layer is full */
		sv_inq_pop(nc);
	}
}

/* Parking: ciphertext into the TLS layer, plaintext out into the stash,
 * until no receive buffer is held.  false: the stash is full first. */
bool sv_stash_decrypt(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;

	for (;;) {
		sv_tls_feed_layer(nc);
		if (sv->inq_count == 0)
			return true;
		/* The TLS layer's input is full: decrypting makes room. */
		uint32_t room = sv_stash_cap(nc) - sv->stash_len;
		ssize_t n =
		    room ? tls_conn_read(nc->tls, sv->stash + sv->stash_len, room) : -ENOBUFS;

		if (n > 0)
			sv->stash_len += (uint32_t)n;
		else if (n != -EAGAIN || tls_conn_in_free(nc->tls) == 0)
			return false; /* a full stash, the client's close or a TLS error */
	}
}

/* The layer answered -EAGAIN: it used every byte it was fed (tls.h), so
 * while ciphertext is held it has room for more, and the caller goes on.
 * Stopping here instead would strand the held buffers: nothing else
 * resumes a connection whose input is all received. */
static bool sv_tls_wants_more(const struct net_conn *nc)
{
	if (nc->sv->inq_count == 0)
		return false; /* resumed by the next receive */
	assert(tls_conn_in_free(nc->tls) > 0);
	return true;
}

static void sv_tls_established(struct net_conn *nc)
{
	nc->tls_state = NET_TLS_ON;
	log_msg(LOG_INFO, "event=tls client=%s version=%s cipher=%s sni=%s", nc->sv->name,
		tls_conn_version(nc->tls), tls_conn_cipher(nc->tls),
		tls_conn_sni(nc->tls) ? tls_conn_sni(nc->tls) : "-");
	nc->ops->on_tls_ready(nc->proto);
}

/* Decrypt into a user buffer at the tail of pq: what tls_conn_read()
 * returns (> 0 bytes queued, 0 at the peer's close_notify, -errno), or
 * -ENOMEM when no user buffer is free (retried when one comes back). */
static ssize_t sv_tls_decrypt(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;
	struct ring *r = nc->t->ring;
	int bid = ring_buf_alloc(r);

	if (bid < 0) {
		nc->t->user_starved = true;
		return -ENOMEM;
	}
	ssize_t n = tls_conn_read(nc->tls, ring_buf_ptr(r, (uint16_t)bid), r->buf_size);

	if (n <= 0) {
		ring_buf_put(r, (uint16_t)bid);
		return n;
	}
	sv->pq[(sv->pq_head + sv->pq_count) % NET_PQ_MAX] =
	    (struct net_inbuf){.bid = (uint16_t)bid, .off = 0, .len = (uint32_t)n};
	sv->pq_count++;
	return n;
}

/* One handshake step inside the input loop.  true: go on with the loop. */
static bool sv_tls_handshake(struct net_conn *nc)
{
	int rc = tls_conn_handshake(nc->tls);

	if (rc == 0) {
		sv_tls_established(nc);
		return true;
	}
	if (rc == -EAGAIN && sv_tls_wants_more(nc))
		return true;
	if (rc != -EAGAIN && rc != -ENOBUFS)
		sv_tls_failed(nc, "handshake");
	return false; /* more input, or the output flushed first */
}

/* The peer's close_notify.  In TLS 1.3 it closes the peer's write side
 * only (RFC 8446 6.1): the peer still reads, so what it sent is answered
 * first, as after a FIN, and ours follows (sv_input_answered).  A client
 * that ends its message's "." with close_notify in one flight would
 * otherwise lose the 250 of a message already queued, and send it again.
 * TLS 1.2 asks for ours at once, pending writes discarded (RFC 5246
 * 7.2.1).  Whatever came after it is ignored either way. */
static void sv_tls_peer_closed(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;

	while (sv->inq_count)
		sv_inq_pop(nc);
	if (strcmp(tls_conn_version(nc->tls), "TLSv1.3") != 0) {
		net_drop_output(nc);
		net_shutdown(nc);
		return;
	}
	sv->peer_eof = true;
}

/* TLS input: ciphertext from inq into the TLS layer, the handshake, then
 * plaintext into user buffers (pq) and from there into the protocol.
 * Every turn of the loop feeds the protocol, feeds the layer or decrypts;
 * it ends when the protocol pauses, pq is full, no user buffer is free,
 * or every held byte went into the layer and it wants more. */
void sv_tls_input(struct net_conn *nc)
{
	while (sv_tls_feed_proto(nc)) {
		sv_tls_feed_layer(nc);
		if (nc->tls_state == NET_TLS_HANDSHAKE) {
			if (sv_tls_handshake(nc))
				continue;
			return;
		}
		if (nc->sv->pq_count == NET_PQ_MAX)
			return;
		ssize_t n = sv_tls_decrypt(nc);

		if (n > 0)
			continue;
		if (n == -EAGAIN && sv_tls_wants_more(nc))
			continue;
		if (n == -EAGAIN || n == -ENOBUFS || n == -ENOMEM)
			return;
		if (n == 0) {
			sv_tls_peer_closed(nc);
			return;
		}
		sv_tls_failed(nc, "read");
		return;
	}
}

/* STARTTLS was answered: drop everything received so far (a client cannot
 * have sent it after our 220, so it is an injection attempt, CVE-2011-0411)
 * and start the handshake; the 220 itself still goes out in plaintext. */
void sv_tls_begin(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;
	uint64_t dropped = 0;

	sv->tls_switch = false;
	while (sv->inq_count) {
		dropped += sv->inq[sv->inq_head].len - sv->inq[sv->inq_head].off;
		sv_inq_pop(nc);
	}
	if (dropped)
		log_msg(LOG_WARN, "event=starttls_injection client=%s discarded=%llu", sv->name,
			(unsigned long long)dropped);
	nc->tls = tls_conn_new(sv->tls_ctx, NULL);
	if (!nc->tls) {
		log_msg(LOG_ERROR, "event=tls_failed client=%s stage=setup error=\"out of memory\"",
			sv->name);
		net_shutdown(nc);
		return;
	}
	nc->tls_state = NET_TLS_HANDSHAKE;
	sv->plain_out = sv->out_len;
}

void net_starttls(struct net_conn *nc, struct tls_ctx *ctx)
{
	assert(nc->sv && !nc->tls);
	nc->sv->tls_switch = true;
	nc->sv->tls_ctx = ctx;
}

/* RFC 8314: TLS from the first byte; the protocol's greeting follows the
 * handshake (on_tls_ready). */
int net_tls_accept(struct net_conn *nc, struct tls_ctx *ctx)
{
	assert(nc->sv && !nc->tls && nc->state == NET_OPEN);
	nc->tls = tls_conn_new(ctx, NULL);
	if (!nc->tls)
		return -ENOMEM;
	nc->tls_state = NET_TLS_HANDSHAKE;
	return 0;
}

bool net_tls_begun(const struct net_conn *nc)
{
	return nc->tls != NULL;
}

bool net_tls_handshaking(const struct net_conn *nc)
{
	return nc->tls_state == NET_TLS_HANDSHAKE;
}
