/*
 * net_in — a connection's receive side: the recv kept armed (enum net_rx)
 * and its completion, which hands plaintext to the protocol or ciphertext
 * to the TLS adapter (net_tls.c).
 */
#include <string.h>

#include "net/net.h"
#include "net/net_int.h"
#include "ring/ring.h"

/* ---- receive ------------------------------------------------------------------ */

void rx_arm(struct net_conn *nc)
{
	struct io_uring_sqe *sqe;

	if ((nc->state != NET_OPEN && nc->state != NET_DRAINING) || nc->rx != NET_RX_IDLE ||
	    nc->in_off < nc->in_len)
		return;
	nc->in_off = nc->in_len = 0;
	sqe = ring_sqe(nc->t->ring);
	io_uring_prep_recv(sqe, nc->fd, nc->in, nc->t->in_cap, 0);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_RECV));
	nc->rx = NET_RX_ARMED;
	nc->inflight++;
}

void on_recv_done(struct net_conn *nc, int res)
{
	nc->rx = NET_RX_IDLE;
	if (nc->state != NET_OPEN && nc->state != NET_DRAINING)
		return;
	if (res <= 0) {
		net_fail(nc, res, res == 0 ? "connection closed by the peer" : strerror(-res));
		return;
	}
	if (nc->state == NET_DRAINING && nc->tls_state == NET_TLS_OFF)
		return;
	if (nc->ops->on_recv && nc->state == NET_OPEN)
		nc->ops->on_recv(nc->proto);
	if (nc->tls_state != NET_TLS_OFF) {
		nc->in_off = 0;
		nc->in_len = (uint32_t)res;
		tls_input(nc);
	} else if (nc->state == NET_OPEN) {
		nc->ops->on_input(nc->proto, nc->in, (size_t)res);
	}
}
