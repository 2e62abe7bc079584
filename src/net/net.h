/*
 * net — one TCP connection driven by a shard's ring, for any protocol.
 *
 * A net_table is a fixed set of connection slots owned by one module of one
 * shard (outbound SMTP/LMTP today; Redis, policy servers, milters next).
 * It owns, per connection: the slot and its generation (a completion for a
 * slot that was closed and reused is dropped), the count of ops in flight,
 * the socket, a receive buffer with one recv in flight, one gather send in
 * flight with its deadline, the optional TLS adapter (client role), the
 * close and the reap.  A protocol plugs in through struct net_ops and never
 * touches the ring, the socket or the TLS layer's buffers itself.
 *
 * The contract, call by call:
 *
 *  - Threads: everything runs on the shard thread that owns the table.
 *  - No re-entry: no callback is called from inside a net_* call the
 *    protocol made.  Callbacks run from net_complete() and net_tick() only.
 *  - Input: received bytes (plaintext: after TLS, decrypted) go to
 *    on_input, borrowed for the call; the protocol takes them all (it parses
 *    a stream).  on_recv, when set, is called once per socket read that
 *    brought bytes, before any of them reach on_input (the SMTP client fixes
 *    its reply budget there: bytes can answer only what was sent before
 *    they came).  A recv is kept armed from the connect to the close.
 *  - Output: net_send() takes an iovec array; the bytes it points at stay
 *    the protocol's and must not change until on_sent (every byte went, or
 *    under TLS every byte was encrypted and every record went).  One send
 *    at a time: net_sending() says whether one is in flight.
 *  - Deadline: with a timeout set (net_set_timeout), progress moves the
 *    deadline to now + timeout: bytes of a net_send() handed to the socket
 *    (under TLS: to the TLS layer), or net_progress(), which the protocol
 *    calls when a whole unit of input came (the SMTP client: a complete
 *    reply).  Nothing else does: TLS records that bring the protocol
 *    nothing (a key update and its answer, a ticket, each byte of a
 *    dribbled handshake) and bytes that complete nothing (a reply trickled
 *    a byte at a time) cannot hold a connection open, so a handshake must
 *    finish within one timeout of the last progress, and a draining
 *    connection keeps the deadline net_shutdown() gave it.  net_tick() calls on_timeout once it has
 *    passed.  0: no deadline (an idle pooled connection).
 *  - Errors: a failed or closed socket, a failed send, a TLS failure call
 *    on_error(err, why) once (err 0: the peer closed in order).  The
 *    connection is still open in the call: the protocol may net_shutdown()
 *    it (a TLS close_notify after the peer's QUIT reply); otherwise it is
 *    closed when on_error returns.  Nothing but on_closed follows.
 *  - TLS (client role): net_tls_start() after the protocol's STARTTLS was
 *    answered, even while that command's send is still in flight (the
 *    handshake goes out behind it); the handshake runs inside and
 *    on_tls_ready follows (or on_error); a net_send() in between waits
 *    for it.  A
 *    read that would leave the TLS layer holding output it cannot hand
 *    over waits for the send in flight (tls.h, -ENOBUFS), and
 *    ciphertext the layer did not take waits in the receive buffer: there
 *    is no turn of the loop without progress.
 *  - Close: net_close() cancels what is in flight and closes the socket
 *    (from then on the descriptor is the ring's: net_table_free() does not
 *    close it again); net_shutdown() first sends TLS close_notify (RFC 8446
 *    6.1) behind the records already made, even when they back up, then
 *    closes (the deadline bounds it; the peer's own end read meanwhile,
 *    its close_notify, a reset or its FIN, ends the drain and may cut
 *    what was still to go).  After either, the
 *    protocol hears nothing more but on_closed, the last call, once every
 *    op in flight has completed (the reap).  The slot is free again before
 *    on_closed runs, so on_closed may open a connection, even in it.  A
 *    slot that never got as far as a connect (net_connect failed, or
 *    net_close on a reserved slot) is released at once with no callback:
 *    nothing of it was in flight.
 *  - A file read (net_read_file, the SMTP client's spool window) counts as
 *    an op of the connection: the reap waits for it; its result goes to
 *    on_file_read unless the connection closed meanwhile.
 *
 * Memory: net_table_new() allocates everything (slots and receive
 * buffers); nothing is allocated per connection but the TLS session.
 */
#ifndef RMX_NET_H
#define RMX_NET_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "ring/ops.h"

struct ring;
struct tls_ctx;
struct tls_conn;
struct net_conn;
struct net_table;

/* The ops of every table share the NET range; the table is named by the
 * aux byte of user_data (enum net_table_id). */
enum net_op {
	NET_OP_CONNECT = OPS_NET_FIRST,
	NET_OP_RECV,
	NET_OP_SEND,
	NET_OP_FREAD,
	NET_OP_CANCEL,
	NET_OP_CLOSE,
	NET_OP_END,
};
static_assert(NET_OP_END - 1 <= OPS_NET_LAST, "net ops inside the net range");

/* Which table of a shard a completion belongs to. */
enum net_table_id {
	NET_TABLE_OUTBOUND = 0, /* src/deliver/outbound.c */
	NET_TABLE_COUNT,
};

#define NET_IOV_MAX 136 /* iovecs one net_send() takes */

struct net_ops {
	void (*on_connected)(void *proto);
	void (*on_recv)(void *proto); /* may be NULL */
	void (*on_input)(void *proto, const char *p, size_t len);
	void (*on_sent)(void *proto);
	void (*on_tls_ready)(void *proto);
	void (*on_error)(void *proto, int err, const char *why);
	void (*on_timeout)(void *proto);
	void (*on_file_read)(void *proto, int res);
	void (*on_closed)(void *proto);
};

/* nslots connections with an in_cap-byte receive buffer each; now_ms is
 * the shard's clock (read, never written).  NULL on allocation failure. */
struct net_table *net_table_new(struct ring *ring, enum net_table_id id, uint32_t nslots,
				uint32_t in_cap, const uint64_t *now_ms);
/* Closes every socket and frees every TLS session still open (shutdown
 * after the ring is gone: no callback). */
void net_table_free(struct net_table *t);
/* Connections not free (open, connecting or being closed). */
uint32_t net_active(const struct net_table *t);

/* A free slot, reserved for proto (which gets the callbacks), or NULL when
 * every slot is taken.  Its index (net_slot) is stable until on_closed. */
struct net_conn *net_open(struct net_table *t, const struct net_ops *ops, void *proto);
uint32_t net_slot(const struct net_conn *nc);
/* Name the protocol object after net_open (one found by the slot). */
void net_set_proto(struct net_conn *nc, void *proto);
/* Connect a reserved slot; timeout_ms bounds the connect.  -errno when no
 * socket could be made: the slot is released at once, no callback. */
int net_connect(struct net_conn *nc, const struct sockaddr *addr, socklen_t len,
		uint32_t timeout_ms);

/* The timeout progress renews; an open connection's deadline is moved to
 * now + timeout_ms at once.  A connect keeps net_connect's bound and a
 * draining connection net_shutdown's. */
void net_set_timeout(struct net_conn *nc, uint32_t timeout_ms);
/* A whole unit of input came: the deadline moves (see Deadline above). */
void net_progress(struct net_conn *nc);
bool net_sending(const struct net_conn *nc);
/* Send iov[0..niov): no send may be in flight (net_sending), niov <=
 * NET_IOV_MAX, at least one byte.  on_sent when all went. */
void net_send(struct net_conn *nc, const struct iovec *iov, uint32_t niov);

/* Begin TLS as a client on an open connection (peer_name: SNI and the name
 * the certificate is verified against).  Nothing received before is fed to
 * it (RFC 3207 4).  < 0 when the handshake could not begin (-ENOMEM: no
 * session; the protocol fails the connection); else on_tls_ready or
 * on_error follow. */
int net_tls_start(struct net_conn *nc, struct tls_ctx *ctx, const char *peer_name);
/* The TLS session once on_tls_ready was called, else NULL. */
struct tls_conn *net_tls(const struct net_conn *nc);

/* Read len bytes of fd at off into buf (one at a time per connection). */
void net_read_file(struct net_conn *nc, int fd, void *buf, uint32_t len, uint64_t off);

void net_close(struct net_conn *nc);
void net_shutdown(struct net_conn *nc);
bool net_closing(const struct net_conn *nc);

/* A completion whose op is in the NET range, for this table. */
void net_complete(struct net_table *t, uint64_t ud, int res);
/* Deadlines: on the shard's tick. */
void net_tick(struct net_table *t);

#endif
