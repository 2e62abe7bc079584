/*
 * net — one TCP connection driven by a shard's ring, for any protocol.
 *
 * A net_table is a fixed set of connection slots owned by one module of one
 * shard: the outbound SMTP/LMTP client's, the inbound SMTP sessions' (a
 * served table, see "Served" below); Redis, policy servers, milters next.
 * It owns, per connection: the slot and its generation (a completion for a
 * slot that was closed and reused is dropped), the count of ops in flight,
 * the socket, a receive buffer with one recv in flight, one gather send in
 * flight with its deadline, the optional TLS adapter (client role; server
 * role for a served table), the close and the reap.  A protocol plugs in through struct net_ops and never
 * touches the ring, the socket or the TLS layer's buffers itself.
 *
 * The contract, call by call:
 *
 *  - Threads: everything runs on the shard thread that owns the table.
 *  - No re-entry: no callback is called from inside a net_* call the
 *    protocol made.  Callbacks run from net_complete() and net_tick() only.
 *    Served connections add the calls that exist to feed input:
 *    net_receive() and net_resume() (never from inside on_feed: there they
 *    return at once), and the shard's net_rearm_starved() and
 *    net_foreach(); on_feed, on_overrun and the policy queries (wants_park,
 *    waits, busy) may run inside them.
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
 * Served connections (net_table_served: a server's accepted sockets) differ
 * in what the server needs and a client does not:
 *
 *  - Receive into the ring's provided buffers, single-shot, one recv at a
 *    time and only while the connection holds fewer than inq_cap of them,
 *    so no client takes more than its share of the pool (a multishot recv
 *    would post as many completions as the client has data).  A recv that
 *    finds no free buffer waits for net_rearm_starved().  on_feed(p, len,
 *    bid) returns how much it took: taking less pauses the input, and
 *    net_resume() goes on (never re-entered from inside on_feed); the bid
 *    names the buffer, so the protocol may keep a reference on body bytes.
 *  - Parking: while wants_park() says the protocol waits on itself (a
 *    timer, a helper) or on a peer that does not read, the recv stops and
 *    the held input moves into the slot's own stash, so a waiting client
 *    holds none of the shared buffers; input that does not fit calls
 *    on_overrun().  The stash goes back in front of the input on resume.
 *  - Output: net_write() appends to the slot's write buffer (out_cap
 *    bytes); one send per loop turn carries what is there (a pipelined
 *    group's replies go together).  net_send_overdue() tells the
 *    protocol's tick a send has not finished within its timeout.
 *  - TLS, server role: net_tls_accept() (TLS from the first byte) or
 *    net_starttls() (once the current on_feed returns, every byte already
 *    received is dropped, CVE-2011-0411, and what is in the write buffer
 *    still goes in plaintext).  Plaintext is decrypted into user buffers
 *    fed like received ones.  A failure is logged, then the alert goes out
 *    and the connection closes.
 *  - The peer's FIN: its input is answered first (RFC 5321 4.1.1.10), then
 *    once waits() is false and nothing is held, the connection shuts down.
 *  - net_shutdown(): what the write buffer holds goes out, then a TLS
 *    close_notify, then the close, within net_linger's bound (10 s unless
 *    shortened); net_close() drops everything at once.
 *  - Protocol timers (net_timer), the peek for an early talker (net_peek),
 *    holds for work outside the ring (net_hold; busy() is asked too): the
 *    reap waits for all of them.  on_tick runs on every open or draining
 *    connection at the shard's tick; the protocol owns its own limits.
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
	NET_OP_PEEK,			      /* served: bytes before the greeting? */
	NET_OP_TIMER,			      /* served: the protocol's timer 0 ... */
	NET_OP_TIMER_LAST = NET_OP_TIMER + 1, /* ... and 1 (NET_TIMERS) */
	NET_OP_END,
};
static_assert(NET_OP_END - 1 <= OPS_NET_LAST, "net ops inside the net range");

/* Which table of a shard a completion belongs to. */
enum net_table_id {
	NET_TABLE_OUTBOUND = 0, /* src/deliver/outbound.c */
	NET_TABLE_INBOUND,	/* src/conn.c: the SMTP server's sessions */
	NET_TABLE_COUNT,
};

#define NET_IOV_MAX 136 /* iovecs one net_send() takes */
#define NET_TIMERS  2	/* protocol timers per served connection */

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
	/* Served connections only (see "Served" above). */
	size_t (*on_feed)(void *proto, const char *p, size_t len, uint16_t bid);
	bool (*wants_park)(void *proto);
	bool (*waits)(void *proto);			/* its input is not all answered yet */
	void (*on_overrun)(void *proto, uint32_t held); /* held: bytes in the stash */
	void (*on_peek)(void *proto, bool early);
	void (*on_timer)(void *proto, unsigned which);
	void (*on_tick)(void *proto);
	bool (*busy)(void *proto); /* work outside the ring: the reap waits */
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

/* ---- served connections ---- */

/* nslots accepted connections holding at most inq_cap receive buffers
 * each (<= NET_INQ_MAX), with an out_cap-byte write buffer.  NULL on
 * allocation failure. */
struct net_table *net_table_served(struct ring *ring, enum net_table_id id, uint32_t nslots,
				   uint32_t inq_cap, uint32_t out_cap, const uint64_t *now_ms);
/* An accepted socket into a slot reserved with net_open: open at once.
 * Nothing is armed until net_receive or net_peek.  name (the peer, for
 * log lines) must live until on_closed. */
void net_adopt(struct net_conn *nc, int fd, const char *name);
/* The connection of slot and generation, if it is still that one. */
struct net_conn *net_find(struct net_table *t, uint32_t slot, uint16_t gen);
uint16_t net_gen(const struct net_conn *nc);
void *net_proto(const struct net_conn *nc);
/* Open and not shutting down: input is fed and replies may be written. */
bool net_open_for_input(const struct net_conn *nc);
bool net_draining(const struct net_conn *nc);
bool net_parked(const struct net_conn *nc);
void net_receive(struct net_conn *nc); /* input begins */
void net_resume(struct net_conn *nc);  /* input paused in on_feed goes on */
/* One peek for a byte already received (on_peek). */
void net_peek(struct net_conn *nc, char *byte);
/* on_timer(which) after ms; one per which at a time. */
void net_timer(struct net_conn *nc, unsigned which, uint32_t ms);
void net_hold(struct net_conn *nc);
/* Work outside the ring ended (a hold, or what busy() reported). */
void net_unhold(struct net_conn *nc);
void net_settle(struct net_conn *nc);
/* Write buffer: net_write asserts len fits net_out_free(). */
void net_write(struct net_conn *nc, const char *p, size_t len);
size_t net_out_free(const struct net_conn *nc);
void net_drop_output(struct net_conn *nc); /* but what a send in flight carries */
void net_flush(struct net_conn *nc);
/* A send in flight unfinished for ms or more (0: none in flight). */
uint64_t net_send_age(const struct net_conn *nc);
/* The send in flight is past the timeout (net_set_timeout; 0: none) or,
 * draining, past the linger. */
bool net_send_overdue(const struct net_conn *nc);
/* Draining: close by until_ms at the latest. */
void net_linger(struct net_conn *nc, uint64_t until_ms);
int net_tls_accept(struct net_conn *nc, struct tls_ctx *ctx);
void net_starttls(struct net_conn *nc, struct tls_ctx *ctx);
bool net_tls_begun(const struct net_conn *nc);
bool net_tls_handshaking(const struct net_conn *nc);
/* Once per loop turn: recvs that found no buffer, and connections that
 * waited for a user buffer, go on when buffers came back. */
void net_rearm_starved(struct net_table *t);
/* Recvs that found no free buffer, since the start. */
uint64_t net_enobufs(const struct net_table *t);
/* fn(proto, arg) for every open or draining connection. */
void net_foreach(struct net_table *t, void (*fn)(void *proto, void *arg), void *arg);

/* A completion whose op is in the NET range, for this table. */
void net_complete(struct net_table *t, uint64_t ud, int res);
/* The same with the CQE's flags (a served recv's buffer id). */
void net_complete_cqe(struct net_table *t, uint64_t ud, int res, uint32_t flags);
/* Deadlines: on the shard's tick. */
void net_tick(struct net_table *t);

#endif
