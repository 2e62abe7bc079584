/*
 * net_out — a connection's sends: net_send's gather send in plaintext, the
 * completion of every send (plain or TLS records), and on_sent.  Under TLS
 * the bytes go through the adapter (net_tls.c: tls_flush, tls_sent).
 */
#include <assert.h>
#include <string.h>
#include <sys/socket.h>

#include "net/net.h"
#include "net/net_int.h"
#include "ring/ring.h"

/* ---- send ---------------------------------------------------------------------- */

static void plain_flush(struct net_conn *nc)
{
	struct io_uring_sqe *sqe = ring_sqe(nc->t->ring);

	nc->mh = (struct msghdr){.msg_iov = nc->iov, .msg_iovlen = nc->niov};
	io_uring_prep_sendmsg(sqe, nc->fd, &nc->mh, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_SEND));
	nc->send = NET_SEND_PLAIN;
	nc->inflight++;
	net_touch(nc);
}

bool net_sending(const struct net_conn *nc)
{
	return nc->user_pending;
}

void net_send(struct net_conn *nc, const struct iovec *iov, uint32_t niov)
{
	size_t bytes = 0;

	assert(!nc->user_pending && niov > 0 && niov <= NET_IOV_MAX && nc->iov);
	for (uint32_t i = 0; i < niov; i++)
		bytes += iov[i].iov_len;
	/* Under TLS an empty send makes no record, so no completion would
	 * ever bring its on_sent: a protocol has something to say. */
	assert(bytes > 0);
	(void)bytes;
	if (nc->state != NET_OPEN)
		return;
	memcpy(nc->iov, iov, niov * sizeof(iov[0]));
	nc->niov = niov;
	nc->user_pending = true;
	if (nc->tls_state == NET_TLS_OFF) {
		assert(nc->send == NET_SEND_NONE);
		plain_flush(nc);
	} else {
		tls_flush(nc);
	}
}

/* A plain send completed: advance past what went out; the rest of a short
 * send goes again.  True when all went. */
static bool plain_sent(struct net_conn *nc, size_t left)
{
	uint32_t i = 0;

	while (i < nc->niov && left >= nc->iov[i].iov_len)
		left -= nc->iov[i++].iov_len;
	if (i == nc->niov) {
		nc->niov = 0;
		return true;
	}
	nc->iov[i].iov_base = (char *)nc->iov[i].iov_base + left;
	nc->iov[i].iov_len -= left;
	memmove(nc->iov, nc->iov + i, (nc->niov - i) * sizeof(nc->iov[0]));
	nc->niov -= i;
	plain_flush(nc);
	return false;
}

void on_send_done(struct net_conn *nc, int res)
{
	enum net_send_kind kind = nc->send;
	bool all;

	nc->send = NET_SEND_NONE;
	if (nc->state != NET_OPEN && nc->state != NET_DRAINING)
		return;
	if (res < 0) {
		net_fail(nc, res, strerror(-res));
		return;
	}
	all = kind == NET_SEND_PLAIN ? plain_sent(nc, (size_t)res) : tls_sent(nc, (size_t)res);
	/* A plaintext send that completed after TLS began (the STARTTLS
	 * command's) held back the handshake's first flight. */
	if (kind == NET_SEND_PLAIN && nc->tls_state != NET_TLS_OFF && nc->send == NET_SEND_NONE)
		tls_flush(nc);
	if (all && nc->state == NET_OPEN) {
		nc->user_pending = false;
		nc->ops->on_sent(nc->proto);
	}
	/* Input that waited for this send: in in[], or inside the layer. */
	if (nc->rx == NET_RX_HELD && nc->send == NET_SEND_NONE &&
	    (nc->state == NET_OPEN || nc->state == NET_DRAINING))
		tls_input(nc);
}
