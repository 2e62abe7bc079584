/*
 * smtp/conn — the connection an SMTP server session runs on, as the
 * session sees it: a handle, what it may know of the peer, and the few
 * things it may ask for.  Implemented by src/conn.c on the connection
 * layer (src/net) and, in the unit tests, by a fake
 * (tests/unit/session_fakeconn.c).  Shard thread only.
 *
 * The contract the session relies on:
 *  - conn_reply() appends one reply line to the output; output goes out
 *    in one send per loop turn (a pipelined group gets one send).  The
 *    session checks conn_out_free() >= SMTP_REPLY_MAX before it parses a
 *    command, so a reply always fits.
 *  - Input comes through smtp_session_feed(); consuming less than offered
 *    pauses it; conn_resume() restarts it (never re-entered from inside
 *    feed).
 *  - conn_close() closes after the output is flushed; the session is
 *    released (smtp_session_release) only once no spool work of it is in
 *    flight (smtp_session_busy) and no helper answer is due.
 */
#ifndef RMX_SMTP_CONN_H
#define RMX_SMTP_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define CONN_OUT_MAX  4096 /* reply bytes buffered per connection */
#define CONN_PEER_MAX 64

/* The TLS state a fake connection plays (the real one asks src/net). */
enum conn_tls {
	CONN_TLS_OFF = 0,
	CONN_TLS_HANDSHAKE,
	CONN_TLS_ON,
};

struct net_conn;
struct shard;
struct smtp_session;

/* One per connection slot of a shard.  The session reads s only; the
 * rest is src/conn.c's. */
struct conn {
	struct smtp_session *s; /* this slot's, for good (smtp_sessions_new) */
	struct net_conn *nc;	/* NULL while the slot is free */
	struct shard *shard;
	uint8_t listener;
	struct sockaddr_storage peer;
	char peer_ip[CONN_PEER_MAX];
	uint16_t peer_port;
	uint64_t idle_deadline_ms;
	uint64_t session_deadline_ms;
	uint64_t tls_deadline_ms; /* the TLS handshake's */
};

/* What the session may know of its connection (it reads no field). */
bool conn_active(const struct conn *c);	     /* not closing */
bool conn_takes_input(const struct conn *c); /* active, no close asked, no TLS switch due */
bool conn_tls_on(const struct conn *c);	     /* the TLS handshake is done */
bool conn_tls_begun(const struct conn *c);   /* STARTTLS or implicit TLS under way or done */
const char *conn_peer_ip(const struct conn *c);
const struct sockaddr_storage *conn_peer(const struct conn *c);
uint8_t conn_listener(const struct conn *c); /* index into cfg->listeners */
/* Names the connection to the spool as the owner of a message (slot and
 * generation, as a helper cookie does). */
void conn_owner(const struct conn *c, uint32_t *slot, uint16_t *gen);

/* Connection I/O, for the session. */
void conn_reply(struct conn *c, const char *line);
void conn_replyf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
size_t conn_out_free(const struct conn *c);
void conn_close(struct conn *c);
void conn_resume(struct conn *c);
/* Send what is buffered now (outside the input path). */
void conn_flush(struct conn *c);
/* A helper-pool request for the connection: the cookie that names it
 * (slot and generation, so an answer for an earlier client of the slot is
 * dropped); after a successful submit, conn_helper_sent() keeps the slot
 * until the answer came (smtp_session_auth_done). */
uint64_t conn_helper_cookie(const struct conn *c);
void conn_helper_sent(struct conn *c);
/* Call smtp_session_decided() after ms milliseconds (a ring timeout). */
void conn_timer(struct conn *c, uint32_t ms);
/* STARTTLS accepted (the 220 is in the output): once the current feed
 * returns, every byte already received is discarded (CVE-2011-0411) and
 * the TLS handshake begins. */
void conn_starttls(struct conn *c);
/* Version and cipher of an established TLS session, or NULL. */
const char *conn_tls_version(const struct conn *c);
const char *conn_tls_cipher(const struct conn *c);

#endif
