/*
 * deliver/outbound — the outbound SMTP (RFC 5321) and LMTP (RFC 2033)
 * client.  Each client is the protocol on one connection of the shard's
 * outbound table (net/net.h): the connection layer moves the bytes, runs
 * TLS, keeps the deadline and reaps the slot; this file decides what to
 * say and what the replies mean.  This file holds the connection (its
 * callbacks, commands out, failures, TLS, assignment); replies in are in
 * oc_reply.c, transactions in oc_tx.c, the body in oc_body.c (oc_int.h).
 *
 * One connection carries one transaction at a time for one job (the
 * recipients of one message that share a next hop).  Commands are written
 * into a per-connection buffer and go out in one send; with PIPELINING the
 * MAIL, RCPT and DATA commands go as one group (RFC 2920 3.1), and the
 * replies are matched to them in order.  The body is read from the spool
 * segment into a window and sent from there (no copy in user space); a
 * DATA-received body is stored dot-stuffed and goes out as it is, a
 * BDAT-received one is stuffed on the way (iovecs, no copy).  The final
 * dot goes out only after the stored bytes' CRC matched the commit's, with
 * the last piece of the body (TCP_NODELAY and no small trailing write).
 * Connections are kept idle for reuse up to messages_per_connection
 * messages; an idle one is closed after DLV_IDLE_MS.
 *
 * Transactions: a connection goes back to the pool only in a known state.
 * Any refusal inside a transaction (MAIL, every RCPT, DATA, the final dot)
 * is followed by RSET and its 250 — a hop may keep a refused transaction
 * open — or the connection is closed.  A 503 inside a transaction shows the
 * hop out of step with us, never a verdict on the message: the connection
 * is closed and the job goes again at once on a fresh one.  Recipients a
 * hop will not take in one transaction ("too many recipients", RFC 5321
 * 4.5.3.1.10) go in the next one at once, in the same attempt (on a fresh
 * connection when the hop ends that one before any data: a 421 or a
 * close, one message per connection).
 *
 * Replies (invariant 9): every command written is written down in oc->owed
 * (smtp/client.h), every complete reply is taken off it before it is acted
 * on, and a read is weighed whole before any reply in it counts.  A reply
 * when nothing is owed, more replies than commands sent, any byte after the
 * 220 to STARTTLS, or a code that cannot answer its command (250 to DATA)
 * closes the connection and defers the job: once the count is off, no later
 * reply can be trusted to answer what it seems to.  Only the reply to the
 * final dot (LMTP: one per accepted recipient) marks a recipient delivered.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "deliver/oc_int.h"
#include "log/log.h"
#include "net/net.h"
#include "tls/tls.h"

uint32_t oc_cmd_ms(const struct deliver_core *c)
{
	return (uint32_t)c->cfg->delivery.command_timeout_s * 1000u;
}

/* The one place a connection's state changes: legal transitions only
 * (oc_state.c), each traced when debug lines are on. */
void oc_enter_state(struct oconn *oc, enum oc_state next)
{
	assert(oc_state_legal(oc->state, next));
	if (log_enabled(LOG_DEBUG))
		log_msg(LOG_DEBUG, "event=outbound_state shard=%u relay=%s from=%s to=%s",
			dlv_core(oc->d)->shard, oc->hop.name, oc_state_name(oc->state),
			oc_state_name(next));
	oc->state = next;
}

int oc_table_init(struct deliver *d)
{
	struct deliver_core *c = dlv_core(d);

	c->oc = calloc(DLV_OCONN_MAX, sizeof(c->oc[0]));
	c->net = net_table_new(c->ring, NET_TABLE_OUTBOUND, DLV_OCONN_MAX, DLV_IN_CAP, &c->now_ms);
	if (!c->oc || !c->net)
		return -ENOMEM;
	for (uint32_t i = 0; i < DLV_OCONN_MAX; i++) {
		c->oc[i].slot = i;
		c->oc[i].d = d;
	}
	return 0;
}

void oc_table_free(struct deliver *d)
{
	struct deliver_core *c = dlv_core(d);

	if (!c->oc)
		return;
	bool tls_used = false;

	net_table_free(c->net);
	c->net = NULL;
	for (uint32_t i = 0; i < DLV_OCONN_MAX; i++) {
		free(c->oc[i].out);
		free(c->oc[i].win);
	}
	free(c->oc);
	c->oc = NULL;
	for (uint32_t i = 0; c->tls_client && i < c->cfg->route_count; i++)
		if (c->tls_client[i]) {
			tls_ctx_free(c->tls_client[i]);
			tls_used = true;
		}
	free(c->tls_client);
	c->tls_client = NULL;
	if (tls_used)
		tls_thread_cleanup();
}

uint32_t oc_active(const struct deliver *d)
{
	struct deliver_core *c = dlv_core((struct deliver *)d);

	return c->net ? net_active(c->net) : 0;
}

static bool hop_eq(const struct dhop *a, const struct dhop *b)
{
	return a->lmtp == b->lmtp && a->tls == b->tls && a->route == b->route && a->len == b->len &&
	       memcmp(&a->addr, &b->addr, a->len) == 0;
}

static uint32_t hop_limit(const struct deliver_core *c)
{
	uint32_t n = c->cfg->delivery.connections_per_route / (c->shards ? c->shards : 1);

	return n ? n : 1;
}

/* ---- commands out ---------------------------------------------------------------- */

static void idle_unlink(struct deliver_core *c, struct oconn *oc)
{
	if (oc->prev)
		oc->prev->next = oc->next;
	else if (c->oc_idle == oc)
		c->oc_idle = oc->next;
	if (oc->next)
		oc->next->prev = oc->prev;
	oc->next = oc->prev = NULL;
}

/* n replies are owed for the command just written. */
static void oc_ask(struct oconn *oc, enum smtp_ask ask, uint32_t n)
{
	bool room = smtp_owed_add(&oc->owed, ask, n);

	/* At most MAIL, RCPT and DATA runs are in flight at once. */
	assert(room);
	(void)room;
}

/* The connection is closed or closing: nothing more goes on it. */
bool oc_gone(const struct oconn *oc)
{
	return oc->state == OC_FREE || net_closing(oc->nc);
}

/* Send the buffered commands (one send for a pipelined group). */
void oc_flush(struct oconn *oc)
{
	if (net_sending(oc->nc) || oc->out_len == 0 || oc_gone(oc))
		return;
	oc->out_inflight = oc->out_len;
	smtp_owed_sent(&oc->owed);
	net_send(oc->nc, &(struct iovec){oc->out, oc->out_len}, 1);
}

__attribute__((format(printf, 2, 3))) void oc_cmd(struct oconn *oc, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(oc->out + oc->out_len, DLV_OUT_CAP - oc->out_len, fmt, ap);
	va_end(ap);
	/* Callers check the room first (oc_room); a command never exceeds
	 * 2 KiB (paths 256, ORCPT 500, parameters). */
	if (n > 0 && (uint32_t)n < DLV_OUT_CAP - oc->out_len)
		oc->out_len += (uint32_t)n;
}

/* End the command being written: its line end, and one reply owed for it.
 * Every command line ends here, so none goes out uncounted. */
void oc_cmd_end(struct oconn *oc, enum smtp_ask ask)
{
	oc_cmd(oc, "\r\n");
	oc_ask(oc, ask, 1);
}

bool oc_room(const struct oconn *oc)
{
	return DLV_OUT_CAP - oc->out_len > 2048;
}

/* The slot is free (net.h: on_closed, the last call). */
static void oc_on_closed(void *proto)
{
	struct oconn *oc = proto;

	free(oc->out);
	free(oc->win);
	oc->out = oc->win = NULL;
	if (oc->state != OC_CLOSING)
		oc_enter_state(oc, OC_CLOSING);
	oc_enter_state(oc, OC_FREE);
	oc->nc = NULL;
	dlv_conn_freed(oc->d);
}

void oc_close(struct oconn *oc)
{
	struct deliver_core *c = dlv_core(oc->d);

	if (oc->state == OC_CLOSING || oc->state == OC_FREE)
		return;
	if (oc->state == OC_IDLE)
		idle_unlink(c, oc);
	oc_enter_state(oc, OC_CLOSING);
	net_close(oc->nc);
}

void oc_quit(struct oconn *oc)
{
	struct deliver_core *c = dlv_core(oc->d);

	if (oc->state == OC_IDLE)
		idle_unlink(c, oc);
	/* With replies still owed, the 221 could not be told from them. */
	if (net_sending(oc->nc) || oc->owed.total > 0) {
		oc_close(oc);
		return;
	}
	oc->out_len = 0;
	oc_cmd(oc, "QUIT");
	oc_cmd_end(oc, SMTP_ASK_QUIT);
	oc_enter_state(oc, OC_QUIT);
	net_set_timeout(oc->nc, oc_cmd_ms(c));
	oc_flush(oc);
}

/* QUIT was answered, or the hop ended the session first.  A TLS session
 * ends with our close_notify (RFC 8446 6.1, RFC 5246 7.2.1): without it a
 * strict hop cannot tell the end from a truncation (Exim logs "TLS
 * connection was non-properly terminated").  The socket closes once the
 * alert is out (net_shutdown); a plain session closes at once. */
void oc_quit_done(struct oconn *oc)
{
	assert(oc->state == OC_QUIT || oc->state == OC_TLS_CLOSE);
	if (oc->state == OC_QUIT && net_tls(oc->nc)) {
		oc_enter_state(oc, OC_TLS_CLOSE);
		net_shutdown(oc->nc); /* closes once the alert is out */
		return;
	}
	oc_close(oc);
}

bool oc_reply_2xx(const struct smtp_reply *r)
{
	return r->code >= 200 && r->code < 300;
}

/* ---- failures -------------------------------------------------------------------- */

/* Recipients over the hop's limit go in the next transaction on the same
 * connection (oc_tx_end).  A hop that takes one message per connection
 * ends that one instead, with a 421 or by closing (Exchange's
 * MaxMessagesPerConnection, Exim's smtp_accept_max_per_connection, on a
 * pooled connection near its count).  No message data went in it, so its
 * recipients go again at once on a fresh connection, as the next attempt
 * would send them; only once until a transaction takes someone, so a hop
 * that takes nobody on fresh connections either cannot keep us going.
 * False when this is not such a transaction (the caller goes on). */
bool oc_continuation_lost(struct oconn *oc, const char *why)
{
	struct deliver_core *c = dlv_core(oc->d);
	struct djob *job = oc->job;

	if (!job || job->cont_lost || c->stopping || oc->tx_answered > 0 ||
	    !oc_job_answered_any(job))
		return false;
	if (oc->state != OC_MAIL && oc->state != OC_RCPT && oc->state != OC_DATA)
		return false; /* the body went (or may have): its fate is unknown */
	log_msg(LOG_INFO,
		"event=outbound_error shard=%u relay=%s state=%s error=\"%s\" note=\"the next "
		"transaction goes on a fresh connection\"",
		c->shard, oc->hop.name, oc_state_name(oc->state), why);
	oc->job = NULL;
	oc_close(oc);
	job->cont_lost = true;
	job->fresh = true;
	dlv_job_again(oc->d, job);
	return true;
}

/* The connection broke (or timed out): its job's open recipients are
 * deferred, or the job moves to its next hop if nothing was answered yet. */
void oc_fail(struct oconn *oc, const char *why)
{
	struct djob *job = oc->job;
	char diag[DLV_ERR_MAX];

	if (oc_continuation_lost(oc, why))
		return;
	log_msg(LOG_INFO, "event=outbound_error shard=%u relay=%s state=%s error=\"%s\"",
		dlv_core(oc->d)->shard, oc->hop.name, oc_state_name(oc->state), why);
	oc->job = NULL;
	oc_close(oc);
	if (!job)
		return;
	if (!oc_job_answered_any(job)) {
		dlv_job_hop_failed(oc->d, job, why);
		return;
	}
	snprintf(diag, sizeof(diag), "X-ringmx; %s: %s", oc->hop.name, why);
	oc->job = job;
	oc_result_all(oc, 4, "4.4.2", diag, false);
	oc->job = NULL;
	dlv_job_done(oc->d, job);
}

/* The next hop broke the reply accounting.  Nothing more it sends on this
 * connection can be trusted to answer what it seems to, so the connection
 * goes and the job is deferred (or tries its next hop): the hop misbehaved,
 * so never delivered and never bounced on the strength of these bytes. */
__attribute__((format(printf, 2, 3))) void oc_violation(struct oconn *oc, const char *fmt, ...)
{
	char why[DLV_ERR_MAX];
	va_list ap;
	int n = snprintf(why, sizeof(why), "protocol violation: ");

	assert(n > 0 && (size_t)n < sizeof(why));
	va_start(ap, fmt);
	vsnprintf(why + n, sizeof(why) - (size_t)n, fmt, ap);
	va_end(ap);
	oc_fail(oc, why);
}

/* ---- idle ------------------------------------------------------------------------ */

void oc_idle(struct oconn *oc)
{
	struct deliver_core *c = dlv_core(oc->d);

	oc_enter_state(oc, OC_IDLE);
	oc->idle_since_ms = c->now_ms;
	if (c->stopping || oc->msgs >= c->cfg->delivery.messages_per_connection) {
		oc_quit(oc);
		dlv_conn_freed(oc->d);
		return;
	}
	oc->next = c->oc_idle;
	oc->prev = NULL;
	if (c->oc_idle)
		c->oc_idle->prev = oc;
	c->oc_idle = oc;
	/* No deadline while idle; the recv stays armed and notices a next
	 * hop that closes an idle connection. */
	net_set_timeout(oc->nc, 0);
	dlv_conn_freed(oc->d);
}

/* ---- outbound TLS (RFC 3207 as a client) ----------------------------------------- */

static const char *const rtls_names[] = {"none", "opportunistic", "required", "verify"};

/* Start-up (it reads CA files: never on a running shard): one client
 * context per route that may use TLS. */
int oc_tls_init(struct deliver *d, char *why, size_t why_len)
{
	struct deliver_core *c = dlv_core(d);

	for (uint32_t i = 0; i < c->cfg->route_count; i++) {
		const struct config_route *rt = &c->cfg->routes[i];
		struct tls_params tp = {.role = TLS_ROLE_CLIENT,
					.ca_file = rt->ca_file,
					.verify = rt->tls == CONFIG_RTLS_VERIFY};
		char err[TLS_WHY_MAX];

		if (rt->tls == CONFIG_RTLS_NONE)
			continue;
		c->tls_client[i] = tls_ctx_new(&tp, err, sizeof(err));
		if (!c->tls_client[i]) {
			snprintf(why, why_len, "routes[%u]: TLS client: %.400s", i, err);
			return -EINVAL;
		}
	}
	return 0;
}

/* EHLO (LHLO to an LMTP hop): after the greeting, and again inside TLS. */
void oc_send_ehlo(struct oconn *oc)
{
	const struct deliver_core *c = dlv_core(oc->d);

	oc_cmd(oc, "%s %s", oc->hop.lmtp ? "LHLO" : "EHLO", c->cfg->hostname);
	oc_cmd_end(oc, SMTP_ASK_EHLO);
	smtp_ehlo_begin(&oc->caps);
	oc_enter_state(oc, OC_EHLO);
	oc_flush(oc);
}

/* The handshake is done (net.h: on_tls_ready). */
static void oc_on_tls_ready(void *proto)
{
	struct oconn *oc = proto;
	struct deliver_core *c = dlv_core(oc->d);
	struct tls_conn *tls = net_tls(oc->nc);
	bool verified = tls_conn_peer_verified(tls);

	snprintf(oc->tls_info, sizeof(oc->tls_info), "%s %s %s", tls_conn_version(tls),
		 tls_conn_cipher(tls), verified ? "verified" : "unverified");
	log_msg(LOG_INFO,
		"event=outbound_tls shard=%u relay=%s policy=%s version=%s cipher=%s verified=%s",
		c->shard, oc->hop.name, rtls_names[oc->hop.tls], tls_conn_version(tls),
		tls_conn_cipher(tls), verified ? "yes" : "no");
	if (oc->hop.tls == CONFIG_RTLS_VERIFY && !verified) {
		oc_fail(oc, "TLS certificate not verified (route tls verify)");
		return;
	}
	/* RFC 3207 4.2: forget what we learnt, EHLO again; nothing received in
	 * plaintext may reach the replies inside TLS. */
	assert(oc->owed.total == 0);
	smtp_reply_init(&oc->rp);
	oc->out_len = oc->out_inflight; /* STARTTLS's own send may not be done */
	oc_send_ehlo(oc);
}

void oc_start_tls(struct oconn *oc)
{
	struct tls_ctx *ctx = dlv_core(oc->d)->tls_client[oc->hop.route];
	char why[DLV_ERR_MAX];
	int rc;

	if (!ctx) {
		oc_fail(oc, "no TLS client context");
		return;
	}
	/* RFC 3207 5 / CVE-2011-0411: oc_parse saw nothing after the 220; the
	 * reply parser starts over so no partial line crosses into TLS. */
	assert(oc->owed.total == 0 && oc->rp.fill == 0);
	smtp_reply_init(&oc->rp);
	oc_enter_state(oc, OC_TLS_HS);
	rc = net_tls_start(oc->nc, ctx, oc->hop.host);
	if (rc < 0) {
		snprintf(why, sizeof(why), "TLS handshake failed: %s",
			 rc == -ENOMEM ? "out of memory" : strerror(-rc));
		oc_fail(oc, why);
	}
}

/* After EHLO: STARTTLS when the route's policy asks for it and the hop
 * offers it; a hop without it is refused under required/verify. */
void oc_after_ehlo(struct oconn *oc)
{
	if (!net_tls(oc->nc) && oc->hop.tls != CONFIG_RTLS_NONE) {
		if (oc->caps.ext & SMTP_EXT_STARTTLS) {
			oc_cmd(oc, "STARTTLS");
			oc_cmd_end(oc, SMTP_ASK_STARTTLS);
			oc_enter_state(oc, OC_STARTTLS);
			oc_flush(oc);
			return;
		}
		if (oc->hop.tls >= CONFIG_RTLS_REQUIRED) {
			oc_fail(oc, "TLS required by the route, but the next hop does not offer "
				    "STARTTLS");
			return;
		}
	}
	oc_ready(oc);
}

/* ---- ready for a transaction ----------------------------------------------------- */

void oc_ready(struct oconn *oc)
{
	oc_enter_state(oc, OC_IDLE);
	if (oc->job)
		oc_begin_tx(oc);
	else
		oc_idle(oc);
}

/* ---- the connection's callbacks (net.h) ------------------------------------------ */

static void oc_on_connected(void *proto)
{
	struct oconn *oc = proto;

	snprintf(oc->tls_info, sizeof(oc->tls_info), "none");
	/* RFC 5321 3.1: the server speaks first; that reply is owed now. */
	oc_ask(oc, SMTP_ASK_GREETING, 1);
	smtp_owed_sent(&oc->owed);
	oc_enter_state(oc, OC_BANNER);
}

/* Bytes came off the socket: they can answer only what was sent before. */
static void oc_on_recv(void *proto)
{
	struct oconn *oc = proto;

	smtp_owed_recv(&oc->owed);
}

static void oc_on_input(void *proto, const char *p, size_t len)
{
	oc_parse(proto, p, len);
}

/* All of iov[] went: the body goes on (or its dot is out), or the commands
 * written meanwhile go. */
static void oc_on_sent(void *proto)
{
	struct oconn *oc = proto;

	oc->niov = 0;
	if (oc->out_inflight) {
		/* Commands written while the send was in flight stay for the next. */
		memmove(oc->out, oc->out + oc->out_inflight, oc->out_len - oc->out_inflight);
		oc->out_len -= oc->out_inflight;
		oc->out_inflight = 0;
	}
	if (oc->state == OC_BODY) {
		if (oc->body_end) {
			/* The dot is out: its replies are owed from now on (a
			 * reply before this answers nothing). */
			assert(oc->owed.total == 0 && oc->naccepted > 0);
			oc_ask(oc, SMTP_ASK_DOT, oc->hop.lmtp ? oc->naccepted : 1);
			smtp_owed_sent(&oc->owed);
			oc_enter_state(oc, OC_DOT);
			oc->lmtp_idx = 0;
			return;
		}
		oc_pump(oc);
		return;
	}
	if (oc->state == OC_QUIT)
		return;
	oc_flush(oc);
}

/* The socket failed or the hop closed it (err 0).  Expected after QUIT and
 * harmless when idle; anywhere else the job's transaction broke. */
static void oc_on_error(void *proto, int err, const char *why)
{
	struct oconn *oc = proto;

	if (oc->state == OC_QUIT || oc->state == OC_TLS_CLOSE) {
		oc_quit_done(oc);
		return;
	}
	if (oc->state == OC_IDLE) {
		oc_close(oc);
		return;
	}
	oc_fail(oc, err == 0 && !net_tls(oc->nc) ? "connection closed by the next hop" : why);
}

static void oc_on_timeout(void *proto)
{
	struct oconn *oc = proto;
	char why[64];

	snprintf(why, sizeof(why), "timeout (state %s)", oc_state_name(oc->state));
	if (oc->state == OC_QUIT || oc->state == OC_TLS_CLOSE)
		oc_close(oc);
	else
		oc_fail(oc, why);
}

/* The body window was read. */
static void oc_on_file_read(void *proto, int res)
{
	struct oconn *oc = proto;

	oc->read_inflight = false;
	if (res <= 0) {
		oc_fail(oc, res == 0 ? "stored message truncated" : strerror(-res));
		return;
	}
	oc->win_len = (uint32_t)res;
	oc_pump(oc);
}

static const struct net_ops oc_net_ops = {
    .on_connected = oc_on_connected,
    .on_recv = oc_on_recv,
    .on_input = oc_on_input,
    .on_sent = oc_on_sent,
    .on_tls_ready = oc_on_tls_ready,
    .on_error = oc_on_error,
    .on_timeout = oc_on_timeout,
    .on_file_read = oc_on_file_read,
    .on_closed = oc_on_closed,
};

/* ---- assignment ------------------------------------------------------------------ */

static void oc_connect(struct oconn *oc)
{
	struct deliver_core *c = dlv_core(oc->d);
	int rc;

	net_set_timeout(oc->nc, oc_cmd_ms(c));
	rc = net_connect(oc->nc, (struct sockaddr *)&oc->hop.addr, oc->hop.len,
			 (uint32_t)c->cfg->delivery.connect_timeout_s * 1000u);
	if (rc < 0) {
		/* No socket: the slot is free again, no callback comes. */
		char why[DLV_ERR_MAX];
		struct djob *job = oc->job;

		snprintf(why, sizeof(why), "socket: %s", strerror(-rc));
		oc->job = NULL;
		oc->nc = NULL;
		free(oc->out);
		oc->out = NULL;
		dlv_conn_freed(oc->d);
		dlv_job_hop_failed(oc->d, job, why);
		return;
	}
	oc_enter_state(oc, OC_CONNECTING);
}

bool oc_assign(struct deliver *d, struct djob *job)
{
	struct deliver_core *c = dlv_core(d);
	const struct dhop *hop = &job->hops[job->cur];
	uint32_t count = 0;
	struct net_conn *nc;
	struct oconn *oc;

	for (oc = c->oc_idle; oc && !job->fresh; oc = oc->next)
		if (hop_eq(&oc->hop, hop)) {
			idle_unlink(c, oc);
			oc->job = job;
			oc_begin_tx(oc);
			return true;
		}
	for (uint32_t i = 0; i < DLV_OCONN_MAX; i++)
		count += c->oc[i].state != OC_FREE && c->oc[i].state != OC_CLOSING &&
			 hop_eq(&c->oc[i].hop, hop);
	if (count >= hop_limit(c)) {
		/* A job that needs a new connection makes room: an idle one to
		 * the hop may be out of step as the last one was. */
		for (oc = c->oc_idle; oc && job->fresh; oc = oc->next)
			if (hop_eq(&oc->hop, hop)) {
				oc_quit(oc);
				break;
			}
		return false;
	}
	nc = net_open(c->net, &oc_net_ops, NULL);
	if (!nc) {
		/* Make room: the longest idle connection to another hop goes. */
		struct oconn *last = c->oc_idle;

		while (last && last->next)
			last = last->next;
		if (last)
			oc_quit(last);
		return false;
	}
	oc = &c->oc[net_slot(nc)];
	assert(oc->state == OC_FREE);
	net_set_proto(nc, oc);
	memset(oc, 0, offsetof(struct oconn, rp));
	oc->d = d;
	oc->slot = net_slot(nc);
	oc->nc = nc;
	oc->hop = *hop;
	oc->job = job;
	job->fresh = false;
	smtp_reply_init(&oc->rp);
	smtp_owed_init(&oc->owed);
	oc->out = malloc(DLV_OUT_CAP);
	if (!oc->out) {
		net_close(nc); /* nothing submitted yet: free at once */
		oc->nc = NULL;
		return false;
	}
	oc_connect(oc);
	return true;
}

void oc_tick(struct deliver *d)
{
	struct deliver_core *c = dlv_core(d);

	for (uint32_t i = 0; i < DLV_OCONN_MAX; i++) {
		struct oconn *oc = &c->oc[i];

		if (oc->state == OC_IDLE &&
		    (c->now_ms - oc->idle_since_ms >= DLV_IDLE_MS || c->stopping))
			oc_quit(oc);
	}
	net_tick(c->net);
}

void oc_stop(struct deliver *d)
{
	struct deliver_core *c = dlv_core(d);

	while (c->oc_idle)
		oc_quit(c->oc_idle);
}
