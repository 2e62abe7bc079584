/*
 * conn — the SMTP server session's side of its connection: the conn_*
 * functions of smtp/conn.h on a served connection of the connection layer
 * (net/net.h, the shard's NET_TABLE_INBOUND table), and the policy the
 * layer asks the session about: when to park, when its input is all
 * answered, its idle, session, send and handshake limits.  The mechanisms
 * (receive, parking, the write buffer, TLS, close, reap) are src/net's.
 * The shard's loop calls in through shard_conn.h.
 */
#include "shard.h"
#include "shard_conn.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admit.h"
#include "log/log.h"
#include "net/net.h"
#include "smtp/conn.h"
#include "tls/tls.h"

/* Output full and the send in flight unfinished for this long: the client
 * does not read its replies (one that does gets them within milliseconds). */
#define CONN_UNREAD_MS 1000

/* The session's timers (net_timer's which). */
enum conn_timer {
	CONN_TIMER_GREET = 0, /* the pre-greet pause */
	CONN_TIMER_DECIDE,    /* conn_timer: a decision's wait, AUTH's delay */
};
static_assert(CONN_TIMER_DECIDE < NET_TIMERS, "the layer has a timer for each");

uint64_t shard_now_ms(const struct shard *sh)
{
	return sh->now_ms;
}

static uint64_t conn_now(const struct conn *c)
{
	return c->shard->now_ms;
}

/* ---- what the session may know and ask (smtp/conn.h) ------------------------ */

bool conn_active(const struct conn *c)
{
	return !net_closing(c->nc) || net_draining(c->nc);
}

bool conn_takes_input(const struct conn *c)
{
	return net_open_for_input(c->nc);
}

bool conn_tls_on(const struct conn *c)
{
	return net_tls(c->nc) != NULL;
}

bool conn_tls_begun(const struct conn *c)
{
	return net_tls_begun(c->nc);
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
	*slot = net_slot(c->nc);
	*gen = net_gen(c->nc);
}

void conn_reply(struct conn *c, const char *line)
{
	size_t n = strlen(line);

	/* The session checks conn_out_free() >= SMTP_REPLY_MAX before each
	 * command, so a reply that does not fit is a broken invariant. */
	assert(n + 2 <= conn_out_free(c));
	net_write(c->nc, line, n);
	net_write(c->nc, "\r\n", 2);
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
	return net_out_free(c->nc);
}

void conn_close(struct conn *c)
{
	net_shutdown(c->nc);
}

void conn_resume(struct conn *c)
{
	net_resume(c->nc);
}

void conn_flush(struct conn *c)
{
	net_flush(c->nc);
}

uint64_t conn_helper_cookie(const struct conn *c)
{
	return (uint64_t)net_slot(c->nc) | (uint64_t)net_gen(c->nc) << 32;
}

void conn_helper_sent(struct conn *c)
{
	net_hold(c->nc);
}

void conn_timer(struct conn *c, uint32_t ms)
{
	net_timer(c->nc, CONN_TIMER_DECIDE, ms);
}

void conn_starttls(struct conn *c)
{
	net_starttls(c->nc, c->shard->tls_ctx);
	c->tls_deadline_ms = conn_now(c) + (uint64_t)c->shard->cfg->tls.handshake_timeout_s * 1000u;
}

const char *conn_tls_version(const struct conn *c)
{
	struct tls_conn *tls = net_tls(c->nc);

	return tls ? tls_conn_version(tls) : NULL;
}

const char *conn_tls_cipher(const struct conn *c)
{
	struct tls_conn *tls = net_tls(c->nc);

	return tls ? tls_conn_cipher(tls) : NULL;
}

/* ---- the policy the layer asks for (net_ops) ------------------------------------ */

static void conn_on_recv(void *proto)
{
	struct conn *c = proto;

	c->idle_deadline_ms = conn_now(c) + (uint64_t)c->shard->cfg->limits.idle_s * 1000u;
}

static size_t conn_on_feed(void *proto, const char *p, size_t len, uint16_t bid)
{
	return smtp_session_feed(proto, p, len, bid);
}

/* Which waits park (net.h, "Served"): the session's own (a timer, a helper),
 * and a client that does not read its replies. */
static bool conn_wants_park(void *proto)
{
	struct conn *c = proto;

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
		       conn_out_free(c) < SMTP_REPLY_MAX && net_send_age(c->nc) >= CONN_UNREAD_MS;
	case SMTP_HOLD_DISK:
		return false; /* ended by our own disk I/O, not by the client */
	}
	abort();
}

static bool conn_waits(void *proto)
{
	return smtp_session_hold(proto) != SMTP_HOLD_NONE;
}

static void conn_on_overrun(void *proto, uint32_t held)
{
	struct conn *c = proto;
	char reply[SMTP_REPLY_MAX];

	log_msg(LOG_WARN, "event=input_overrun shard=%u client=%s held=%u parked=yes", c->shard->id,
		c->peer_ip, held);
	snprintf(reply, sizeof(reply), "421 4.7.0 %s Error: too much pipelined input",
		 c->shard->cfg->hostname);
	smtp_session_timeout(c, reply);
}

static void conn_on_peek(void *proto, bool early)
{
	if (early)
		smtp_session_early(proto);
	else
		smtp_session_greet(proto);
}

static void conn_on_timer(void *proto, unsigned which)
{
	struct conn *c = proto;

	if (which == CONN_TIMER_DECIDE)
		smtp_session_decided(c);
	else if (smtp_session_phase(c) == SMTP_PHASE_PREGREET)
		smtp_session_greet(c);
}

static void conn_on_tls_ready(void *proto)
{
	if (smtp_session_phase(proto) == SMTP_PHASE_PREGREET) /* implicit TLS: greet now */
		smtp_session_greet(proto);
}

/* The shard's 1 s sweep, for one connection: a send past its deadline, a
 * client that stopped reading (parked), the TLS handshake, idle and
 * session time limits. */
static void conn_on_tick(void *proto)
{
	struct conn *c = proto;
	const struct rmx_config *cfg = c->shard->cfg;
	char reply[SMTP_REPLY_MAX];
	uint64_t now = conn_now(c);

	if (net_send_overdue(c->nc)) {
		/* The client does not read: whatever it was waiting for,
		 * its slot is not held any longer. */
		log_msg(LOG_INFO, "event=send_timeout shard=%u client=%s state=%s", c->shard->id,
			c->peer_ip, net_draining(c->nc) ? "closing" : "open");
		net_close(c->nc);
		return;
	}
	if (net_draining(c->nc))
		return; /* bounded by the linger */
	if (!net_parked(c->nc) && !net_tls_handshaking(c->nc) && conn_wants_park(c)) {
		net_resume(c->nc); /* a client that stopped reading: parked */
		return;
	}
	/* A message being committed or a decision being waited for is
	 * bounded by its own I/O and timers, not by the client. */
	if (smtp_session_phase(c) == SMTP_PHASE_COMMIT || smtp_session_hold(c) == SMTP_HOLD_SELF)
		return;
	if (net_tls_handshaking(c->nc) && now >= c->tls_deadline_ms) {
		log_msg(LOG_INFO, "event=tls_failed client=%s stage=handshake error=timeout",
			c->peer_ip);
		net_drop_output(c->nc);
		net_shutdown(c->nc);
		return;
	}
	if (now >= c->session_deadline_ms) {
		snprintf(reply, sizeof(reply), "421 4.4.2 %s Session time limit exceeded",
			 cfg->hostname);
		smtp_session_timeout(c, reply);
	} else if (now >= c->idle_deadline_ms) {
		snprintf(reply, sizeof(reply), "421 4.4.2 %s Idle timeout, closing connection",
			 cfg->hostname);
		smtp_session_timeout(c, reply);
	}
}

static bool conn_busy(void *proto)
{
	return smtp_session_busy(proto);
}

/* The reap: nothing of the connection is in flight and no spool work or
 * helper answer is due, so its slot goes to the next client. */
static void conn_on_closed(void *proto)
{
	struct conn *c = proto;

	smtp_session_release(c);
	admit_release(&c->peer);
	c->nc = NULL;
	log_msg(LOG_DEBUG, "event=disconnect shard=%u client=%s", c->shard->id, c->peer_ip);
}

static void conn_on_error(void *proto, int err, const char *why)
{
	(void)proto;
	(void)err;
	(void)why; /* served connections log their own failures (net_tls_serve.c) */
}

static const struct net_ops conn_net_ops = {
    .on_tls_ready = conn_on_tls_ready,
    .on_error = conn_on_error,
    .on_closed = conn_on_closed,
    .on_recv = conn_on_recv,
    .on_feed = conn_on_feed,
    .wants_park = conn_wants_park,
    .waits = conn_waits,
    .on_overrun = conn_on_overrun,
    .on_peek = conn_on_peek,
    .on_timer = conn_on_timer,
    .on_tick = conn_on_tick,
    .busy = conn_busy,
};

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

/* A new connection's first step: the TLS handshake (implicit TLS), the
 * greet pause, or a peek for bytes sent before the banner. */
static void conn_begin(struct conn *c, const struct config_listener *l)
{
	struct shard *sh = c->shard;

	if (l->tls == CONFIG_TLS_IMPLICIT) {
		/* RFC 8314: TLS from the first byte; the banner follows the
		 * handshake (an early talker is the TLS client hello). */
		if (net_tls_accept(c->nc, sh->tls_ctx) < 0) {
			net_close(c->nc);
			return;
		}
		c->tls_deadline_ms =
		    sh->now_ms + (uint64_t)sh->cfg->tls.handshake_timeout_s * 1000u;
		net_receive(c->nc);
		return;
	}
	if (l->greet_pause_ms) {
		/* Pre-greet pause: anything the client sends before the banner
		 * marks it as a spam-bot early talker. */
		net_timer(c->nc, CONN_TIMER_GREET, l->greet_pause_ms);
		net_receive(c->nc);
		return;
	}
	/* No pause: still refuse bytes that arrived before we could greet
	 * (a client that talks without reading). */
	net_peek(c->nc, sh->peek_byte);
}

/* A new client on listener li: its slot, its session, its first step.
 * The caller checked a slot is free. */
void conn_accepted(struct shard *sh, int fd, uint32_t li, const struct sockaddr_storage *ss)
{
	struct net_conn *nc = net_open(sh->net_in, &conn_net_ops, NULL);
	struct conn *c;

	assert(nc);
	c = &sh->conns[net_slot(nc)];
	assert(!c->nc);
	net_set_proto(nc, c);
	c->nc = nc;
	c->listener = (uint8_t)li;
	c->peer = *ss;
	conn_peer_format(c);
	c->idle_deadline_ms = sh->now_ms + (uint64_t)sh->cfg->limits.idle_s * 1000u;
	c->session_deadline_ms = sh->now_ms + (uint64_t)sh->cfg->limits.session_s * 1000u;
	c->tls_deadline_ms = UINT64_MAX;
	net_adopt(nc, fd, c->peer_ip);
	/* Each send must finish within idle_s (the same patience as for the
	 * client's commands), or the tick ends it. */
	net_set_timeout(nc, sh->cfg->limits.idle_s * 1000u);
	smtp_session_init(c, &sh->env);
	log_msg(LOG_DEBUG, "event=connect shard=%u client=%s port=%u listener=%s", sh->id,
		c->peer_ip, c->peer_port, sh->listeners[li].cfg->name);
	conn_begin(c, sh->listeners[li].cfg);
}

struct conn_stop {
	const char *reply;
	uint64_t linger_until_ms;
};

static void conn_stop_one(void *proto, void *arg)
{
	struct conn *c = proto;
	const struct conn_stop *st = arg;

	/* A message being made durable finishes first: its 250 goes
	 * out, then the 421 (smtp_session_durable checks stopping).
	 * One still waiting for its data-stage decision (a tarpit of up
	 * to a minute) is not being made durable: it is closed like any
	 * waiting session, or it would hold the shard for the whole
	 * grace and then be dropped without a reply. */
	if (!net_draining(c->nc) &&
	    (smtp_session_phase(c) != SMTP_PHASE_COMMIT || smtp_session_hold(c) == SMTP_HOLD_SELF))
		smtp_session_timeout(c, st->reply);
	/* A client that does not read its 421 gets the stop's linger,
	 * not the whole grace: the stop waits for no one's socket. */
	net_linger(c->nc, st->linger_until_ms);
}

/* The shard is stopping: every session is told (421), unless its message
 * is being made durable; a client that does not read its 421 is closed at
 * linger_until_ms, not at the end of the whole grace. */
void conn_stop_all(struct shard *sh, const char *reply, uint64_t linger_until_ms)
{
	struct conn_stop st = {.reply = reply, .linger_until_ms = linger_until_ms};

	net_foreach(sh->net_in, conn_stop_one, &st);
}

/* A helper's answer for a connection (AUTH's password check): the cookie
 * names the slot and generation; an answer for an earlier client of the
 * slot is dropped. */
void conn_helper_done(struct shard *sh, uint64_t cookie, int result)
{
	struct net_conn *nc = net_find(sh->net_in, (uint32_t)cookie, (uint16_t)(cookie >> 32));
	struct conn *c;

	if (!nc)
		return;
	c = net_proto(nc);
	net_unhold(nc);
	/* As for a decision: a closed session answers no AUTH. */
	if (!net_closing(nc))
		smtp_session_auth_done(c, result);
	net_settle(nc);
}

/* The spool's answers for a message a session writes: its commit is
 * durable (or failed), or a write slot came free. */
static struct conn *conn_of_msg(struct shard *sh, const struct spool_msg *m)
{
	struct net_conn *nc = net_find(sh->net_in, m->owner, m->owner_gen);

	assert(nc);
	return net_proto(nc);
}

void conn_spool_durable(struct shard *sh, struct spool_msg *m, int res)
{
	struct conn *c = conn_of_msg(sh, m);

	smtp_session_durable(c, res);
	net_settle(c->nc);
}

void conn_spool_progress(struct shard *sh, struct spool_msg *m)
{
	struct conn *c = conn_of_msg(sh, m);

	smtp_session_spool_progress(c);
	net_settle(c->nc);
}
