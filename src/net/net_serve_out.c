/*
 * net_serve_out — a served connection's write buffer: the protocol's
 * replies appended (net_write), one send in flight carrying all that is
 * there (a pipelined group's replies go together), the send's age for the
 * protocol's tick, and the graceful shutdown: output, a TLS close_notify,
 * then the close, within the linger.  Under TLS the buffer goes through
 * the adapter (net_tls_serve.c, sv_tls_send).
 */
#include <assert.h>
#include <string.h>
#include <sys/socket.h>

#include "net/net.h"
#include "net/net_int.h"
#include "ring/ring.h"
#include "tls/tls.h"

void net_write(struct net_conn *nc, const char *p, size_t len)
{
	struct net_served *sv = nc->sv;

	assert(len <= net_out_free(nc));
	memcpy(sv->out + sv->out_len, p, len);
	sv->out_len += (uint32_t)len;
}

size_t net_out_free(const struct net_conn *nc)
{
	return nc->t->out_cap - nc->sv->out_len;
}

/* Only a plaintext send carries bytes of out[] (a TLS send carries
 * records already made of them).  The plaintext still due (a 220 queued
 * behind that send at STARTTLS) shrinks with it: left larger, a later
 * piece of the send would carry bytes past out_len. */
void net_drop_output(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;

	sv->out_len = nc->send == NET_SEND_BUF ? sv->out_sent : 0;
	if (sv->plain_out > sv->out_len)
		sv->plain_out = sv->out_len;
}

/* A client that never reads would keep a send in flight, and with it the
 * slot, for ever: the protocol's tick ends a send older than the timeout
 * (net_send_overdue). */
void sv_send_submitted(struct net_conn *nc)
{
	nc->sv->send_started_ms = net_now(nc);
	nc->inflight++;
}

void sv_flush(struct net_conn *nc)
{
	struct net_served *sv = nc->sv;
	struct io_uring_sqe *sqe;
	uint32_t len;

	if (nc->send != NET_SEND_NONE || (nc->state != NET_OPEN && nc->state != NET_DRAINING))
		return;
	if (nc->tls && sv->plain_out == 0) {
		sv_tls_send(nc);
		return;
	}
	if (sv->out_len == 0)
		return;
	len = sv->plain_out ? sv->plain_out : sv->out_len;
	sqe = ring_sqe(nc->t->ring);
	io_uring_prep_send(sqe, nc->fd, sv->out, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, net_ud(nc, NET_OP_SEND));
	sv->out_sent = len;
	nc->send = NET_SEND_BUF;
	sv_send_submitted(nc);
}

void net_flush(struct net_conn *nc)
{
	sv_flush(nc);
}

void sv_on_send(struct net_conn *nc, int res)
{
	struct net_served *sv = nc->sv;
	enum net_send_kind kind = nc->send;

	nc->send = NET_SEND_NONE;
	if (nc->state != NET_OPEN && nc->state != NET_DRAINING)
		return;
	if (res <= 0) {
		sv->out_len = 0; /* the peer is gone */
		net_close(nc);
		return;
	}
	if (kind == NET_SEND_TLS) {
		tls_conn_out_done(nc->tls, (size_t)res);
	} else {
		assert(kind == NET_SEND_BUF && (uint32_t)res <= sv->out_len);
		memmove(sv->out, sv->out + res, sv->out_len - (uint32_t)res);
		sv->out_len -= (uint32_t)res;
		sv->plain_out -= (uint32_t)res < sv->plain_out ? (uint32_t)res : sv->plain_out;
	}
	if (sv->out_len || sv_tls_out_pending(nc) || nc->state == NET_DRAINING) {
		sv_flush(nc); /* draining: a TLS session's close_notify too */
		if (nc->send != NET_SEND_NONE)
			return;
	}
	if (nc->state == NET_DRAINING) {
		net_close(nc);
		return;
	}
	sv_process(nc); /* output space freed: a paused parse may go on */
}

/* What is queued goes out first (and a TLS session's close_notify behind
 * it, sv_tls_send), then the socket closes (sv_on_send), within the
 * linger: a slow reader cannot stretch it. */
void sv_shutdown(struct net_conn *nc)
{
	if (nc->state != NET_OPEN)
		return;
	net_enter(nc, NET_DRAINING);
	nc->deadline_ms = net_now(nc) + NET_SERVED_LINGER_MS;
	if (nc->send != NET_SEND_NONE)
		return;
	sv_flush(nc);
	if (nc->send != NET_SEND_NONE)
		return;
	net_close(nc);
}

void net_linger(struct net_conn *nc, uint64_t until_ms)
{
	if (nc->state == NET_DRAINING && nc->deadline_ms > until_ms)
		nc->deadline_ms = until_ms;
}

uint64_t net_send_age(const struct net_conn *nc)
{
	return nc->send == NET_SEND_NONE ? 0 : net_now(nc) - nc->sv->send_started_ms;
}

bool net_send_overdue(const struct net_conn *nc)
{
	if (nc->send == NET_SEND_NONE || (nc->state != NET_OPEN && nc->state != NET_DRAINING))
		return false;
	return (nc->timeout_ms && net_send_age(nc) >= nc->timeout_ms) ||
	       (nc->state == NET_DRAINING && net_now(nc) >= nc->deadline_ms);
}
