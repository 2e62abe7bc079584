/*
 * net_tls — the TLS client adapter between a connection and the TLS layer:
 * the handshake, records out (one send at a time), and ciphertext in.
 *
 * TLS: ciphertext lands in in[]; tls_input() feeds it to the TLS layer and
 * reads plaintext out for the protocol.  When the layer will take nothing
 * more until its own output is sent (-ENOBUFS: a peer flooding key update
 * requests and not reading, or our output backed up), the input waits
 * (NET_RX_HELD) for the send's completion, which comes back to it: the rest
 * of in[] or what the layer already holds.  No turn of the loop goes by
 * without progress, and no recv is armed while input is held.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "net/net.h"
#include "net/net_int.h"
#include "ring/ring.h"
#include "tls/tls.h"

#define NET_WHY_MAX 200

/* ---- TLS ------------------------------------------------------------------------- */

static void tls_submit(struct net_conn *nc, const void *p, size_t len)
{
	struct io_uring_sqe *sqe = ring_sqe(nc->t->ring);

	io_uring_prep_send(sqe, nc->fd, p, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_SEND));
	nc->send = NET_SEND_TLS;
	nc->inflight++;
}

/* TLS: encrypt as much of iov[] as the layer takes, then send its records
 * (one send at a time). */
void tls_flush(struct net_conn *nc)
{
	const void *p;
	size_t len;

	if (nc->send != NET_SEND_NONE)
		return;
	/* The protocol's bytes wait for the handshake (tls.h: no write
	 * before it is done); its records go meanwhile. */
	while (nc->niov && nc->tls_state == NET_TLS_ON) {
		ssize_t w = nc->iov[0].iov_len
				? tls_conn_write(nc->tls, nc->iov[0].iov_base, nc->iov[0].iov_len)
				: 0;

		if (w >= 0) {
			if (w > 0)
				net_touch(nc);
			nc->iov[0].iov_base = (char *)nc->iov[0].iov_base + w;
			nc->iov[0].iov_len -= (size_t)w;
			if (nc->iov[0].iov_len == 0) {
				memmove(nc->iov, nc->iov + 1, (nc->niov - 1) * sizeof(nc->iov[0]));
				nc->niov--;
			}
			continue;
		}
		if (w == -ENOBUFS || w == -EAGAIN)
			break;
		net_fail(nc, (int)w, "TLS write failed");
		return;
	}
	if (tls_conn_out(nc->tls, &p, &len) && len > 0)
		tls_submit(nc, p, len);
}

/* One handshake step.  Done: on_tls_ready, then whatever it left to send
 * goes with the handshake's last flight. */
static void tls_step(struct net_conn *nc)
{
	int rc = tls_conn_handshake(nc->tls);
	char why[NET_WHY_MAX];

	if (rc == 0) {
		nc->tls_state = NET_TLS_ON;
		nc->ops->on_tls_ready(nc->proto);
		if (nc->state == NET_OPEN)
			tls_flush(nc);
		return;
	}
	if (rc == -EAGAIN || rc == -ENOBUFS) {
		tls_flush(nc);
		return;
	}
	tls_flush(nc); /* the alert, if the layer made one */
	snprintf(why, sizeof(why), "TLS handshake failed: %s", tls_conn_error(nc->tls));
	net_fail(nc, rc, why);
}

int net_tls_start(struct net_conn *nc, struct tls_ctx *ctx, const char *peer_name)
{
	int rc;

	assert(nc->state == NET_OPEN && nc->tls_state == NET_TLS_OFF && !nc->tls);
	nc->tls = tls_conn_new(ctx, peer_name);
	if (!nc->tls)
		return -ENOMEM;
	nc->tls_state = NET_TLS_HANDSHAKE;
	/* RFC 3207 4 / CVE-2011-0411: nothing received before is fed. */
	nc->in_off = nc->in_len = 0;
	rc = tls_conn_handshake(nc->tls);
	assert(rc != 0); /* a client cannot be done before the server spoke */
	if (rc == -EAGAIN || rc == -ENOBUFS) {
		if (nc->send == NET_SEND_NONE)
			tls_flush(nc);
		return 0;
	}
	return rc;
}

struct tls_conn *net_tls(const struct net_conn *nc)
{
	return nc->tls_state == NET_TLS_ON ? nc->tls : NULL;
}

/* Ciphertext in in[]: through the layer (the handshake, or records to
 * decrypt), the plaintext to the protocol.  Stops when the protocol stops
 * listening, when every byte is used, or when the layer waits for the send
 * in flight (NET_RX_HELD: the send's completion comes back here). */
static void tls_input_run(struct net_conn *nc)
{
	char plain[4096], why[NET_WHY_MAX];

	while (nc->state == NET_OPEN || nc->state == NET_DRAINING) {
		size_t took = 0;

		if (nc->in_off < nc->in_len) {
			took = tls_conn_feed(nc->tls, nc->in + nc->in_off, nc->in_len - nc->in_off);
			nc->in_off += (uint32_t)took;
		}
		bool fed = nc->in_off == nc->in_len;

		if (nc->tls_state == NET_TLS_HANDSHAKE) {
			tls_step(nc);
			if (nc->tls_state == NET_TLS_HANDSHAKE) {
				if (fed || took == 0)
					return;
				continue;
			}
			continue; /* done: read at once (tls.h, step 2) */
		}
		ssize_t r = tls_conn_read(nc->tls, plain, sizeof(plain));

		if (r > 0) {
			if (nc->state == NET_OPEN)
				nc->ops->on_input(nc->proto, plain, (size_t)r);
			continue; /* draining: read on, to the peer's close */
		}
		if (r == -ENOBUFS) {
			nc->rx = NET_RX_HELD;
			tls_flush(nc);
			return;
		}
		if (r == -EAGAIN) {
			if (fed)
				return;
			continue;
		}
		if (r == 0)
			snprintf(why, sizeof(why), "TLS session closed by the peer");
		else
			snprintf(why, sizeof(why), "TLS read failed: %s", tls_conn_error(nc->tls));
		net_fail(nc, (int)r, why);
		return;
	}
}

void tls_input(struct net_conn *nc)
{
	nc->rx = NET_RX_IDLE;
	tls_input_run(nc);
	/* Ciphertext the layer did not take waits too: no recv over it. */
	if (nc->rx == NET_RX_IDLE && nc->in_off < nc->in_len)
		nc->rx = NET_RX_HELD;
}

/* A TLS send completed: more records go, the handshake goes on, or the
 * user's bytes are all out.  True when they are (on_sent due). */
bool tls_sent(struct net_conn *nc, size_t n)
{
	tls_conn_out_done(nc->tls, n);
	if (nc->state == NET_DRAINING) {
		/* The alert waited for room: try again now some went. */
		if (nc->notify_owed && tls_conn_shutdown(nc->tls) != -ENOBUFS)
			nc->notify_owed = false;
		tls_flush(nc);
		if (nc->send == NET_SEND_NONE)
			net_close(nc); /* the close_notify is out */
		return false;
	}
	tls_flush(nc);
	if (nc->send != NET_SEND_NONE || !net_live(nc))
		return false;
	if (nc->tls_state == NET_TLS_HANDSHAKE) {
		tls_step(nc);
		return false;
	}
	return nc->user_pending && nc->niov == 0;
}
