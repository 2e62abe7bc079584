/*
 * deliver/outbound — the outbound SMTP (RFC 5321) and LMTP (RFC 2033)
 * client.  Each client is the protocol on one connection of the shard's
 * outbound table (net/net.h): the connection layer moves the bytes, runs
 * TLS, keeps the deadline and reaps the slot; this file decides what to
 * say and what the replies mean.
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

#include "deliver/internal.h"
#include "log/log.h"
#include "net/net.h"
#include "tls/tls.h"

static_assert(DLV_IOV_MAX + 2 <= NET_IOV_MAX, "a body send fits one net_send");

static const char dot_crlf[] = ".\r\n";

static uint32_t cmd_ms(const struct deliver_core *c)
{
	return (uint32_t)c->cfg->delivery.command_timeout_s * 1000u;
}

/* The one place a connection's state changes: legal transitions only
 * (oc_state.c), each traced when debug lines are on. */
static void oc_enter_state(struct oconn *oc, enum oc_state next)
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

static void oc_fail(struct oconn *oc, const char *why);

/* n replies are owed for the command just written. */
static void oc_ask(struct oconn *oc, enum smtp_ask ask, uint32_t n)
{
	bool room = smtp_owed_add(&oc->owed, ask, n);

	/* At most MAIL, RCPT and DATA runs are in flight at once. */
	assert(room);
	(void)room;
}

/* The connection is closed or closing: nothing more goes on it. */
static bool oc_gone(const struct oconn *oc)
{
	return oc->state == OC_FREE || net_closing(oc->nc);
}

/* Send the buffered commands (one send for a pipelined group). */
static void oc_flush(struct oconn *oc)
{
	if (net_sending(oc->nc) || oc->out_len == 0 || oc_gone(oc))
		return;
	oc->out_inflight = oc->out_len;
	smtp_owed_sent(&oc->owed);
	net_send(oc->nc, &(struct iovec){oc->out, oc->out_len}, 1);
}

__attribute__((format(printf, 2, 3))) static void oc_cmd(struct oconn *oc, const char *fmt, ...)
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
static void oc_cmd_end(struct oconn *oc, enum smtp_ask ask)
{
	oc_cmd(oc, "\r\n");
	oc_ask(oc, ask, 1);
}

static bool oc_room(const struct oconn *oc)
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

static void oc_close(struct oconn *oc)
{
	struct deliver_core *c = dlv_core(oc->d);

	if (oc->state == OC_CLOSING || oc->state == OC_FREE)
		return;
	if (oc->state == OC_IDLE)
		idle_unlink(c, oc);
	oc_enter_state(oc, OC_CLOSING);
	net_close(oc->nc);
}

static void oc_quit(struct oconn *oc)
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
	net_set_timeout(oc->nc, cmd_ms(c));
	oc_flush(oc);
}

/* QUIT was answered, or the hop ended the session first.  A TLS session
 * ends with our close_notify (RFC 8446 6.1, RFC 5246 7.2.1): without it a
 * strict hop cannot tell the end from a truncation (Exim logs "TLS
 * connection was non-properly terminated").  The socket closes once the
 * alert is out (net_shutdown); a plain session closes at once. */
static void oc_quit_done(struct oconn *oc)
{
	assert(oc->state == OC_QUIT || oc->state == OC_TLS_CLOSE);
	if (oc->state == OC_QUIT && net_tls(oc->nc)) {
		oc_enter_state(oc, OC_TLS_CLOSE);
		net_shutdown(oc->nc); /* closes once the alert is out */
		return;
	}
	oc_close(oc);
}

static bool oc_reply_2xx(const struct smtp_reply *r)
{
	return r->code >= 200 && r->code < 300;
}

/* ---- results ------------------------------------------------------------------- */

static void result_from_reply(struct oconn *oc, uint32_t i, const struct smtp_reply *r)
{
	char status[SMTP_ESC_MAX + 1], diag[DLV_ERR_MAX];
	enum smtp_outcome o = smtp_reply_outcome(r->code);

	smtp_reply_status(r, status);
	smtp_reply_diag(r, diag, sizeof(diag));
	/* Invariant 9: only the reply to the final dot proves a delivery. */
	assert(o != SMTP_OUTCOME_DONE || oc->state == OC_DOT);
	assert(oc->job->acc[i] != DLV_RT_DONE);
	oc->job->acc[i] = DLV_RT_DONE;
	oc->tx_answered++;
	dlv_rcpt_result(oc->d, oc->job, i,
			o == SMTP_OUTCOME_DONE	   ? 2
			: o == SMTP_OUTCOME_BOUNCE ? 5
						   : 4,
			status, diag);
}

/* Every recipient of the job still without a final answer gets this one. */
static void result_all(struct oconn *oc, int cls, const char *status, const char *diag,
		       bool accepted_only)
{
	struct djob *job = oc->job;

	for (uint32_t i = 0; i < job->nrcpt; i++) {
		if (job->acc[i] == DLV_RT_DONE || (accepted_only && job->acc[i] != DLV_RT_ACCEPTED))
			continue;
		job->acc[i] = DLV_RT_DONE;
		oc->tx_answered++;
		dlv_rcpt_result(oc->d, job, i, cls, status, diag);
	}
}

static void result_all_reply(struct oconn *oc, const struct smtp_reply *r, bool accepted_only)
{
	char status[SMTP_ESC_MAX + 1], diag[DLV_ERR_MAX];
	enum smtp_outcome o = smtp_reply_outcome(r->code);

	smtp_reply_status(r, status);
	smtp_reply_diag(r, diag, sizeof(diag));
	assert(o != SMTP_OUTCOME_DONE || oc->state == OC_DOT);
	result_all(oc,
		   o == SMTP_OUTCOME_DONE     ? 2
		   : o == SMTP_OUTCOME_BOUNCE ? 5
					      : 4,
		   status, diag, accepted_only);
}

static bool job_answered_any(const struct djob *job)
{
	for (uint32_t i = 0; i < job->nrcpt; i++)
		if (job->acc[i] == DLV_RT_DONE)
			return true;
	return false;
}

static bool job_open_any(const struct djob *job)
{
	for (uint32_t i = 0; i < job->nrcpt; i++)
		if (job->acc[i] != DLV_RT_DONE)
			return true;
	return false;
}

static void oc_release_job(struct oconn *oc)
{
	struct djob *job = oc->job;

	oc->job = NULL;
	if (job)
		dlv_job_done(oc->d, job);
}

/* Recipients over the hop's limit go in the next transaction on the same
 * connection (oc_tx_end).  A hop that takes one message per connection
 * ends that one instead, with a 421 or by closing (Exchange's
 * MaxMessagesPerConnection, Exim's smtp_accept_max_per_connection, on a
 * pooled connection near its count).  No message data went in it, so its
 * recipients go again at once on a fresh connection, as the next attempt
 * would send them; only once until a transaction takes someone, so a hop
 * that takes nobody on fresh connections either cannot keep us going.
 * False when this is not such a transaction (the caller goes on). */
static bool oc_continuation_lost(struct oconn *oc, const char *why)
{
	struct deliver_core *c = dlv_core(oc->d);
	struct djob *job = oc->job;

	if (!job || job->cont_lost || c->stopping || oc->tx_answered > 0 || !job_answered_any(job))
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
static void oc_fail(struct oconn *oc, const char *why)
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
	if (!job_answered_any(job)) {
		dlv_job_hop_failed(oc->d, job, why);
		return;
	}
	snprintf(diag, sizeof(diag), "X-ringmx; %s: %s", oc->hop.name, why);
	oc->job = job;
	result_all(oc, 4, "4.4.2", diag, false);
	oc->job = NULL;
	dlv_job_done(oc->d, job);
}

/* The next hop broke the reply accounting.  Nothing more it sends on this
 * connection can be trusted to answer what it seems to, so the connection
 * goes and the job is deferred (or tries its next hop): the hop misbehaved,
 * so never delivered and never bounced on the strength of these bytes. */
__attribute__((format(printf, 2, 3))) static void oc_violation(struct oconn *oc, const char *fmt,
							       ...)
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

/* ---- transactions ---------------------------------------------------------------- */

static void oc_idle(struct oconn *oc)
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

static void oc_rset(struct oconn *oc)
{
	oc_cmd(oc, "RSET");
	oc_cmd_end(oc, SMTP_ASK_RSET);
	oc_enter_state(oc, OC_RSET);
	oc_flush(oc);
}

/* RCPTs for the transaction's open recipients, in job order: one without
 * PIPELINING, else as many as the buffer takes, and DATA after the last. */
static void write_rcpts(struct oconn *oc)
{
	struct djob *job = oc->job;
	const struct spool_env *e = &job->m->env;
	bool dsn = oc->caps.ext & SMTP_EXT_DSN;

	while (oc->rcpt_sent < oc->tx_rcpts && oc_room(oc)) {
		struct spool_rcpt r;

		while (job->acc[oc->wcur] != DLV_RT_OPEN)
			oc->wcur++;
		assert(oc->wcur < job->nrcpt);
		job->acc[oc->wcur] = DLV_RT_SENT;
		spool_env_rcpt(e, job->rcpt[oc->wcur++], &r);
		oc_cmd(oc, "RCPT TO:<%.*s>", (int)r.addr.len, r.addr.ptr);
		if (dsn && r.notify) {
			static const char *const names[] = {"NEVER", "SUCCESS", "FAILURE", "DELAY"};
			const char *sep = " NOTIFY=";

			for (int b = 0; b < 4; b++)
				if (r.notify & (1u << b)) {
					oc_cmd(oc, "%s%s", sep, names[b]);
					sep = ",";
				}
		}
		if (dsn && r.orcpt.len)
			oc_cmd(oc, " ORCPT=%.*s", (int)r.orcpt.len, r.orcpt.ptr);
		oc_cmd_end(oc, SMTP_ASK_RCPT);
		oc->rcpt_sent++;
		if (!oc->pipelining)
			break;
	}
	if (oc->pipelining && oc->rcpt_sent == oc->tx_rcpts && !oc->data_sent) {
		oc_cmd(oc, "DATA");
		oc_cmd_end(oc, SMTP_ASK_DATA);
		oc->data_sent = true;
	}
}

static bool str_ascii(struct spool_str s)
{
	for (uint32_t i = 0; i < s.len; i++)
		if ((unsigned char)s.ptr[i] >= 0x80)
			return false;
	return true;
}

/* RFC 6531 3.4: a message sent with SMTPUTF8 needs it at the next hop only
 * when the reverse-path, a forward-path of this transaction or its header
 * section is not ASCII; an all-ASCII one goes on as plain SMTP (Dovecot 2.3
 * LMTP does not offer SMTPUTF8).  The header section was looked at on
 * receipt (SPOOL_ENV_HDR_ASCII).  One that really needs it is bounced
 * where SMTPUTF8 is missing: no downgrade (RFC 6530 ff.) is built. */
static bool tx_needs_smtputf8(const struct oconn *oc)
{
	const struct djob *job = oc->job;
	const struct spool_env *e = &job->m->env;

	if (!(e->flags & SPOOL_ENV_SMTPUTF8))
		return false;
	if (!(e->flags & SPOOL_ENV_HDR_ASCII) || !str_ascii(e->mail_from))
		return true;
	for (uint32_t i = 0; i < job->nrcpt; i++) {
		struct spool_rcpt r;

		if (spool_env_rcpt(e, job->rcpt[i], &r) != 0 || !str_ascii(r.addr))
			return true;
	}
	return false;
}

/* The job's message against the next hop's capabilities (RFC 1870, 6152,
 * 6531): a message it cannot take is bounced here, never altered. */
static bool tx_check(struct oconn *oc)
{
	const struct spool_env *e = &oc->job->m->env;
	char diag[DLV_ERR_MAX];

	/* RFC 1870 6: the size without dot-stuffing; a message exactly at
	 * the hop's limit goes. */
	if (oc->caps.size_max && spool_env_size(e) > oc->caps.size_max) {
		snprintf(diag, sizeof(diag),
			 "X-ringmx; message of %llu octets exceeds %s's limit of %llu",
			 (unsigned long long)spool_env_size(e), oc->hop.name,
			 (unsigned long long)oc->caps.size_max);
		result_all(oc, 5, "5.3.4", diag, false);
		return false;
	}
	if (!(oc->caps.ext & SMTP_EXT_SMTPUTF8) && tx_needs_smtputf8(oc)) {
		snprintf(diag, sizeof(diag),
			 "X-ringmx; the message needs SMTPUTF8, which %s does not offer",
			 oc->hop.name);
		result_all(oc, 5, "5.6.7", diag, false);
		return false;
	}
	if ((e->flags & SPOOL_ENV_8BIT) && !(oc->caps.ext & SMTP_EXT_8BITMIME)) {
		snprintf(diag, sizeof(diag),
			 "X-ringmx; 8-bit message and %s does not offer 8BITMIME (no conversion)",
			 oc->hop.name);
		result_all(oc, 5, "5.6.3", diag, false);
		return false;
	}
	return true;
}

static void oc_begin_tx(struct oconn *oc)
{
	struct deliver_core *c = dlv_core(oc->d);
	struct djob *job = oc->job;
	const struct spool_env *e = &job->m->env;
	bool dsn = oc->caps.ext & SMTP_EXT_DSN;

	uint32_t open = 0;

	job->started = true;
	snprintf(job->tls_info, sizeof(job->tls_info), "%s", oc->tls_info);
	job->hop_dsn = dsn;
	if (!tx_check(oc)) {
		oc_release_job(oc);
		oc_idle(oc);
		return;
	}
	/* Whatever an earlier transaction left unanswered (a connection
	 * lost, a 503) goes again; answered recipients never do. */
	for (uint32_t i = 0; i < job->nrcpt; i++)
		if (job->acc[i] != DLV_RT_DONE) {
			job->acc[i] = DLV_RT_OPEN;
			open++;
		}
	assert(open > 0);
	/* A hop that said "too many recipients" on this connection gets no
	 * more than it took then: the rest go in the next transaction. */
	oc->tx_rcpts = oc->rcpt_max && open > oc->rcpt_max ? oc->rcpt_max : open;
	oc->rcpt_sent = oc->rcpt_replies = oc->naccepted = oc->tx_answered = 0;
	oc->wcur = oc->rcur = 0;
	oc->mail_ok = oc->data_sent = oc->overflow = oc->dot_failed = false;
	oc->pipelining = (oc->caps.ext & SMTP_EXT_PIPELINING) != 0;
	/* The reply that brought us here may come before the completion of
	 * the send that carried its command: those bytes stay put (net.h). */
	oc->out_len = oc->out_inflight;
	net_set_timeout(oc->nc, cmd_ms(c));
	oc_cmd(oc, "MAIL FROM:<%.*s>", (int)e->mail_from.len, e->mail_from.ptr);
	if ((e->flags & SPOOL_ENV_8BIT) || e->body_type == SMTP_BODY_8BITMIME)
		oc_cmd(oc, " BODY=8BITMIME");
	/* Passed on where offered; left out where not (tx_check let the
	 * message through only if it does not need it). */
	if ((e->flags & SPOOL_ENV_SMTPUTF8) && (oc->caps.ext & SMTP_EXT_SMTPUTF8))
		oc_cmd(oc, " SMTPUTF8");
	if (oc->caps.ext & SMTP_EXT_SIZE)
		oc_cmd(oc, " SIZE=%llu", (unsigned long long)spool_env_size(e));
	if (dsn && e->ret)
		oc_cmd(oc, " RET=%s", e->ret == SMTP_RET_FULL ? "FULL" : "HDRS");
	if (dsn && e->envid.len)
		oc_cmd(oc, " ENVID=%.*s", (int)e->envid.len, e->envid.ptr);
	oc_cmd_end(oc, SMTP_ASK_MAIL);
	oc_enter_state(oc, OC_MAIL);
	if (oc->pipelining)
		write_rcpts(oc);
	oc_flush(oc);
}

/* ---- the body ------------------------------------------------------------------- */

static void oc_body_start(struct oconn *oc)
{
	const struct spool_env *e = &oc->job->m->env;

	oc->segfd = oc->job->segfd;
	if (oc->segfd < 0) {
		oc_fail(oc, "spool segment not open");
		return;
	}
	if (!oc->win && !(oc->win = malloc(DLV_WIN))) {
		oc_fail(oc, "out of memory");
		return;
	}
	oc_enter_state(oc, OC_BODY);
	oc->win_off = oc->win_len = 0;
	oc->pos = e->first_chunk_off;
	oc->chunk_left = 0;
	oc->wire_left = e->wire_len;
	oc->msg_left = e->msg_len;
	oc->crc = 0;
	oc->stuffed = (e->flags & SPOOL_ENV_STUFFED) != 0;
	oc->body_end = false;
	smtp_stuff_begin(&oc->stuff);
}

/* What one step of oc_pump did. */
enum pump_step {
	PUMP_MORE,   /* go on */
	PUMP_READ,   /* the window does not hold what comes next: read */
	PUMP_END,    /* the final dot is in iov[] */
	PUMP_FAILED, /* the connection was failed */
};

static bool win_has(const struct oconn *oc, uint64_t off, uint64_t n)
{
	return off >= oc->win_off && off + n <= oc->win_off + oc->win_len;
}

/* The current chunk's bytes in the window go into iov[]: as they are when
 * stored dot-stuffed, else stuffed on the way. */
static enum pump_step pump_chunk(struct oconn *oc)
{
	if (!win_has(oc, oc->pos, 1))
		return PUMP_READ;
	uint64_t avail = oc->win_off + oc->win_len - oc->pos;
	uint64_t k = avail < oc->chunk_left ? avail : oc->chunk_left;
	const char *p = oc->win + (oc->pos - oc->win_off);
	uint64_t take = k;

	if (oc->stuffed) {
		uint64_t give = k < oc->msg_left ? k : oc->msg_left;

		if (give)
			oc->iov[oc->niov++] = (struct iovec){(void *)p, give};
		oc->msg_left -= give;
	} else {
		size_t used;

		oc->niov += (uint32_t)smtp_stuff_iov(&oc->stuff, p, k, oc->iov + oc->niov,
						     DLV_IOV_MAX - oc->niov, &used);
		take = used;
		oc->msg_left -= used;
	}
	oc->crc = spool_crc32c(oc->crc, p, take);
	oc->chunk_left -= take;
	oc->wire_left -= take;
	oc->pos += take;
	if (oc->chunk_left == 0)
		oc->pos += oc->chunk_pad;
	return PUMP_MORE;
}

/* Every stored byte went: the final dot, only if they verify. */
static enum pump_step pump_end(struct oconn *oc)
{
	const struct qmsg *m = oc->job->m;

	if (oc->crc != m->env.msg_crc) {
		log_msg(LOG_ERROR, "event=spool_corrupt shard=%u id=%016llX",
			dlv_core(oc->d)->shard, (unsigned long long)m->id);
		oc_fail(oc, "stored message does not verify (CRC)");
		return PUMP_FAILED;
	}
	if (oc->stuffed)
		oc->iov[oc->niov++] = (struct iovec){(void *)dot_crlf, 3};
	else
		smtp_stuff_end(&oc->stuff, &oc->iov[oc->niov++]);
	oc->body_end = true;
	return PUMP_END;
}

/* The record at pos: the message's next chunk begins, or it is skipped. */
static enum pump_step pump_record(struct oconn *oc)
{
	const struct qmsg *m = oc->job->m;
	struct spool_rec_hdr h;

	if (!win_has(oc, oc->pos, sizeof(h)))
		return PUMP_READ;
	memcpy(&h, oc->win + (oc->pos - oc->win_off), sizeof(h));
	/* Damage: resynchronise at the next aligned offset.  Only a header
	 * made under the segment's key counts (record.h), so bytes a client
	 * sent are never taken for a chunk. */
	if (spool_rec_hdr_check(&h, &oc->job->t->segkey) != 0) {
		oc->pos += SPOOL_REC_ALIGN;
		return PUMP_MORE;
	}
	if (h.type != SPOOL_REC_CHUNK || h.msg_id != m->id) {
		oc->pos += spool_rec_size(h.len);
		return PUMP_MORE;
	}
	if (h.len > oc->wire_left) {
		oc_fail(oc, "stored message does not verify (length)");
		return PUMP_FAILED;
	}
	oc->chunk_left = h.len;
	oc->chunk_pad = (uint32_t)spool_rec_pad(h.len);
	oc->pos += sizeof(h);
	if (h.len == 0)
		oc->pos += oc->chunk_pad;
	return PUMP_MORE;
}

/* Turn what the window holds into iovecs and send them, or read the next
 * window.  The CHUNK records of the message are found by walking the
 * segment from its first chunk, skipping other messages' records. */
static void oc_pump(struct oconn *oc)
{
	enum pump_step step = PUMP_MORE;

	if (net_sending(oc->nc) || oc->read_inflight || oc_gone(oc))
		return;
	oc->niov = 0;
	while (oc->niov < DLV_IOV_MAX && step == PUMP_MORE) {
		if (oc->chunk_left)
			step = pump_chunk(oc);
		else if (oc->wire_left == 0)
			step = pump_end(oc);
		else
			step = pump_record(oc);
	}
	if (step == PUMP_FAILED)
		return;
	if (oc->niov) {
		net_send(oc->nc, oc->iov, oc->niov);
		return;
	}
	if (step == PUMP_READ) {
		oc->win_off = oc->pos;
		oc->win_len = 0;
		oc->read_inflight = true;
		net_read_file(oc->nc, oc->segfd, oc->win, DLV_WIN, oc->pos);
	}
}

/* ---- outbound TLS (RFC 3207 as a client) --------------------------------------- */

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
static void oc_send_ehlo(struct oconn *oc)
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

static void oc_start_tls(struct oconn *oc)
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

static void oc_ready(struct oconn *oc);

/* After EHLO: STARTTLS when the route's policy asks for it and the hop
 * offers it; a hop without it is refused under required/verify. */
static void oc_after_ehlo(struct oconn *oc)
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

/* ---- replies -------------------------------------------------------------------- */

/* The open recipients get this answer (their transaction can do no more). */
static void result_open(struct oconn *oc, int cls, const char *status, const char *diag)
{
	struct djob *job = oc->job;

	for (uint32_t i = 0; i < job->nrcpt; i++)
		if (job->acc[i] == DLV_RT_OPEN) {
			job->acc[i] = DLV_RT_DONE;
			dlv_rcpt_result(oc->d, job, i, cls, status, diag);
		}
}

/* The transaction is over and the connection is in a known state: idle
 * (reusable) or to be given up.  Recipients the hop would not take this
 * time ("too many recipients") go in the next transaction at once — on
 * this connection while it may carry more messages — and never wait for
 * the retry schedule nor count as an attempt (RFC 5321 4.5.3.1.10).  Each
 * transaction must answer someone to earn the next, so a hop that takes
 * nobody cannot keep us going: then they are deferred with its reply. */
static void oc_tx_end(struct oconn *oc, bool reusable)
{
	struct deliver_core *c = dlv_core(oc->d);
	struct djob *job = oc->job;
	bool again = job && oc->tx_answered > 0 && !c->stopping && job_open_any(job);

	if (job && oc->tx_answered > 0)
		job->cont_lost = false; /* progress: oc_continuation_lost may go again */

	if (job && !again && oc->overflow)
		result_open(oc, 4, oc->over_status, oc->over_diag);
	if (again && reusable && oc->msgs < c->cfg->delivery.messages_per_connection) {
		oc_begin_tx(oc);
		return;
	}
	oc->job = NULL;
	if (reusable)
		oc_idle(oc);
	else
		oc_quit(oc);
	if (!job)
		return;
	if (again)
		dlv_job_again(oc->d, job);
	else
		dlv_job_done(oc->d, job);
}

/* A 503 ("bad sequence of commands", RFC 5321 4.2.3) inside a transaction:
 * the hop's idea of the transaction is not ours, as when a server keeps
 * the previous one open after refusing its data (Postfix does after an
 * smtpd_end_of_data_restrictions reject) and our MAIL is "nested".  It
 * says nothing about the message, so it is never a bounce.  Nothing more
 * on this connection can be trusted, so it is closed, and the recipients
 * without an answer go again at once on a new connection; a second 503
 * for the same job defers them. */
static void oc_out_of_step(struct oconn *oc, enum smtp_ask ask, const struct smtp_reply *r)
{
	struct deliver_core *c = dlv_core(oc->d);
	struct djob *job = oc->job;
	char diag[DLV_ERR_MAX], status[SMTP_ESC_MAX + 1];

	assert(r->code == 503 && job != NULL);
	smtp_reply_diag(r, diag, sizeof(diag));
	log_msg(LOG_INFO,
		"event=outbound_error shard=%u relay=%s state=%s error=\"%s to %s: the next hop is "
		"out of step with the transaction\"",
		c->shard, oc->hop.name, oc_state_name(oc->state), diag, smtp_ask_name(ask));
	oc->job = NULL;
	oc_close(oc);
	if (!job->restarted && !c->stopping) {
		job->restarted = true;
		job->fresh = true;
		dlv_job_again(oc->d, job);
		return;
	}
	smtp_reply_status(r, status);
	status[0] = '4'; /* "5.5.1": the sequence, not the message */
	oc->job = job;
	result_all(oc, 4, status, diag, false);
	oc->job = NULL;
	dlv_job_done(oc->d, job);
}

/* Does a 503 to this command show the hop out of step?  Not when it is the
 * expected answer: RCPT after a refused MAIL, DATA with no recipient taken
 * (RFC 2920 3.1 has the server fail DATA then; some say 503). */
static bool oc_503_out_of_step(const struct oconn *oc, enum smtp_ask ask)
{
	switch (ask) {
	case SMTP_ASK_MAIL:
	case SMTP_ASK_DOT:
		return true;
	case SMTP_ASK_RCPT:
		return oc->mail_ok;
	case SMTP_ASK_DATA:
		return oc->mail_ok && oc->naccepted > 0;
	case SMTP_ASK_NONE:
	case SMTP_ASK_GREETING:
	case SMTP_ASK_EHLO:
	case SMTP_ASK_HELO:
	case SMTP_ASK_STARTTLS:
	case SMTP_ASK_RSET:
	case SMTP_ASK_QUIT:
		return false; /* the handshake, RSET, QUIT: their failure closes anyway */
	case SMTP_ASK_COUNT:
	default:
		abort();
	}
}

static void after_rcpt_replies(struct oconn *oc);

/* The job index of the recipient the next RCPT reply is for. */
static uint32_t oc_next_replied(struct oconn *oc)
{
	const struct djob *job = oc->job;

	while (oc->rcur < job->nrcpt && job->acc[oc->rcur] != DLV_RT_SENT)
		oc->rcur++;
	assert(oc->rcur < job->nrcpt);
	return oc->rcur++;
}

/* A RCPT over the hop's limit: the recipient stays open for the next
 * transaction, no more RCPTs go in this one, and the connection remembers
 * how many the hop took (RFC 5321 4.5.3.1.8 says at least 100 must be). */
static void oc_rcpt_overflow(struct oconn *oc, uint32_t i, const struct smtp_reply *r)
{
	uint32_t took = oc->rcpt_replies - 1;

	oc->job->acc[i] = DLV_RT_OPEN;
	oc->tx_rcpts = oc->rcpt_sent;
	if (oc->overflow)
		return;
	oc->overflow = true;
	smtp_reply_status(r, oc->over_status);
	oc->over_status[0] = '4'; /* a 552 here is temporary too (4.5.3.1.10) */
	smtp_reply_diag(r, oc->over_diag, sizeof(oc->over_diag));
	if (took > 0 && (oc->rcpt_max == 0 || took < oc->rcpt_max)) {
		oc->rcpt_max = took;
		log_msg(LOG_INFO,
			"event=outbound_rcpt_limit shard=%u relay=%s rcpts=%u reply=\"%s\"",
			dlv_core(oc->d)->shard, oc->hop.name, took, oc->over_diag);
	}
}

static void oc_rcpt_reply(struct oconn *oc, const struct smtp_reply *r)
{
	bool ok = oc_reply_2xx(r);

	oc->rcpt_replies++;
	if (oc->mail_ok) {
		uint32_t i = oc_next_replied(oc);

		if (ok) {
			oc->job->acc[i] = DLV_RT_ACCEPTED;
			oc->naccepted++;
		} else if (smtp_reply_rcpt_overflow(r)) {
			oc_rcpt_overflow(oc, i, r);
		} else {
			result_from_reply(oc, i, r);
		}
	}
	if (oc->mail_ok && oc->rcpt_replies < oc->tx_rcpts) {
		/* The next RCPT, or (PIPELINING) the rest that did not fit the
		 * buffer, or DATA after the last of them. */
		if (!oc->pipelining || oc->rcpt_sent < oc->tx_rcpts || !oc->data_sent) {
			write_rcpts(oc);
			oc_flush(oc);
		}
		return;
	}
	if (oc->rcpt_replies < oc->rcpt_sent)
		return;
	if (oc->pipelining && !oc->data_sent && oc->mail_ok && oc->naccepted) {
		write_rcpts(oc); /* DATA: the group stopped at an overflow */
		oc_flush(oc);
	}
	after_rcpt_replies(oc);
}

static void after_rcpt_replies(struct oconn *oc)
{
	if (oc->pipelining) {
		if (oc->data_sent) {
			oc_enter_state(oc, OC_DATA);
			return;
		}
	} else if (oc->mail_ok && oc->naccepted) {
		oc_cmd(oc, "DATA");
		oc_cmd_end(oc, SMTP_ASK_DATA);
		oc->data_sent = true;
		oc_enter_state(oc, OC_DATA);
		oc_flush(oc);
		return;
	}
	oc_rset(oc);
}

static void oc_ready(struct oconn *oc)
{
	oc_enter_state(oc, OC_IDLE);
	if (oc->job)
		oc_begin_tx(oc);
	else
		oc_idle(oc);
}

/* The command a reply in this state answers (SMTP_ASK_NONE: no command is
 * in flight, as in OC_IDLE, during the handshake or while the body goes). */
static enum smtp_ask oc_state_ask(enum oc_state st)
{
	switch (st) {
	case OC_BANNER:
		return SMTP_ASK_GREETING;
	case OC_EHLO:
		return SMTP_ASK_EHLO;
	case OC_HELO:
		return SMTP_ASK_HELO;
	case OC_STARTTLS:
		return SMTP_ASK_STARTTLS;
	case OC_MAIL:
		return SMTP_ASK_MAIL;
	case OC_RCPT:
		return SMTP_ASK_RCPT;
	case OC_DATA:
		return SMTP_ASK_DATA;
	case OC_DOT:
		return SMTP_ASK_DOT;
	case OC_RSET:
		return SMTP_ASK_RSET;
	case OC_QUIT:
		return SMTP_ASK_QUIT;
	case OC_FREE:
	case OC_CONNECTING:
	case OC_TLS_HS:
	case OC_IDLE:
	case OC_BODY:
	case OC_TLS_CLOSE:
	case OC_CLOSING:
		return SMTP_ASK_NONE;
	default:
		abort();
	}
}

/* ---- one handler per state that waits for a reply ----------------------------- */

/* RFC 5321 3.1: a refused greeting ends the session; the job tries its
 * next hop. */
static void on_reply_banner(struct oconn *oc, const struct smtp_reply *r)
{
	char diag[DLV_ERR_MAX];
	struct djob *job;

	if (oc_reply_2xx(r)) {
		oc_send_ehlo(oc);
		return;
	}
	smtp_reply_diag(r, diag, sizeof(diag));
	oc_quit(oc);
	job = oc->job;
	oc->job = NULL;
	if (job)
		dlv_job_hop_failed(oc->d, job, diag);
}

/* EHLO (LHLO) answered.  A 5xx to EHLO from an SMTP hop that predates it
 * gets HELO (RFC 5321 4.1.1.1); LMTP has no HELO (RFC 2033 4.1). */
static void on_reply_ehlo(struct oconn *oc, const struct smtp_reply *r)
{
	const struct deliver_core *c = dlv_core(oc->d);
	char diag[DLV_ERR_MAX];

	if (oc_reply_2xx(r)) {
		oc_after_ehlo(oc);
		return;
	}
	if (!oc->hop.lmtp && r->code >= 500) {
		oc_cmd(oc, "HELO %s", c->cfg->hostname);
		oc_cmd_end(oc, SMTP_ASK_HELO);
		smtp_ehlo_begin(&oc->caps);
		oc_enter_state(oc, OC_HELO);
		oc_flush(oc);
		return;
	}
	smtp_reply_diag(r, diag, sizeof(diag));
	oc_fail(oc, diag);
}

/* HELO answered: its 250 offers no extensions, whatever its lines say. */
static void on_reply_helo(struct oconn *oc, const struct smtp_reply *r)
{
	char diag[DLV_ERR_MAX];

	if (!oc_reply_2xx(r)) {
		smtp_reply_diag(r, diag, sizeof(diag));
		oc_fail(oc, diag);
		return;
	}
	smtp_ehlo_begin(&oc->caps);
	oc_after_ehlo(oc);
}

/* 220: the handshake begins.  A refusal is fatal only where the route
 * requires TLS; an opportunistic route goes on in plaintext. */
static void on_reply_starttls(struct oconn *oc, const struct smtp_reply *r)
{
	char diag[DLV_ERR_MAX];

	if (r->code == 220) {
		oc_start_tls(oc);
		return;
	}
	if (oc->hop.tls >= CONFIG_RTLS_REQUIRED) {
		smtp_reply_diag(r, diag, sizeof(diag));
		oc_fail(oc, diag);
		return;
	}
	oc_ready(oc);
}

/* MAIL answered.  A refusal answers the whole job (RFC 5321 3.3); the
 * RCPTs already pipelined behind it still have their replies to come. */
static void on_reply_mail(struct oconn *oc, const struct smtp_reply *r)
{
	oc->mail_ok = oc_reply_2xx(r);
	if (!oc->mail_ok) {
		result_all_reply(oc, r, false);
		if (oc->rcpt_sent == 0 && !oc->data_sent) {
			oc_rset(oc);
			return;
		}
		oc_enter_state(oc, OC_RCPT);
		if (oc->rcpt_replies == oc->rcpt_sent)
			after_rcpt_replies(oc);
		return;
	}
	oc_enter_state(oc, OC_RCPT);
	if (!oc->pipelining) {
		write_rcpts(oc);
		oc_flush(oc);
	}
}

/* DATA answered: 354 starts the body; anything else ends the transaction
 * for the recipients RCPT took. */
static void on_reply_data(struct oconn *oc, const struct smtp_reply *r)
{
	if (r->code == 354) {
		/* RFC 2920 3.1: a server that accepted no RCPT fails DATA. */
		if (!oc->mail_ok || oc->naccepted == 0) {
			oc_violation(oc, "354 to DATA without an accepted recipient");
			return;
		}
		oc_body_start(oc);
		oc_pump(oc);
		return;
	}
	if (oc->mail_ok && oc->naccepted)
		result_all_reply(oc, r, true);
	oc_rset(oc);
}

/* The reply to the final dot answers the accepted recipients: SMTP one
 * for all, LMTP one each, in RCPT order (RFC 2033 4.2).  False while LMTP
 * replies are still owed. */
static bool dot_results(struct oconn *oc, const struct smtp_reply *r)
{
	if (!oc->hop.lmtp) {
		result_all_reply(oc, r, true);
		return true;
	}
	while (oc->lmtp_idx < oc->job->nrcpt && oc->job->acc[oc->lmtp_idx] != DLV_RT_ACCEPTED)
		oc->lmtp_idx++;
	assert(oc->lmtp_idx < oc->job->nrcpt);
	result_from_reply(oc, oc->lmtp_idx++, r);
	return oc->owed.total == 0;
}

static void on_reply_dot(struct oconn *oc, const struct smtp_reply *r)
{
	const struct deliver_core *c = dlv_core(oc->d);

	oc->dot_failed |= !oc_reply_2xx(r);
	if (!dot_results(oc, r))
		return;
	assert(oc->owed.total == 0);
	oc->msgs++;
	/* A refused message may leave the transaction open on the hop
	 * (Postfix after an smtpd_end_of_data_restrictions reject): the
	 * next MAIL would be "nested" and refused.  RSET, and its 250,
	 * before the connection carries anything else. */
	if (oc->dot_failed && oc->msgs < c->cfg->delivery.messages_per_connection && !c->stopping) {
		oc_rset(oc);
		return;
	}
	oc_tx_end(oc, !oc->dot_failed);
}

/* ---- replies: accounting, then the state's handler ---------------------------- */

/* Is the reply owed, and can it answer its command?  Those that break the
 * accounting, show the hop out of step (503) or end a continuation (421)
 * are dealt with here; false then (the caller stops). */
static bool oc_reply_admitted(struct oconn *oc, const struct smtp_reply *r)
{
	char diag[DLV_ERR_MAX];
	enum smtp_ask ask = smtp_owed_take(&oc->owed);

	if (ask == SMTP_ASK_NONE) {
		/* An idle connection's 421 lands here too: it closes all the same. */
		oc_violation(oc, "a reply (%u) when nothing was asked", r->code);
		return false;
	}
	/* The state machine and the owed list advance together. */
	assert(ask == oc_state_ask(oc->state));
	if (!smtp_reply_fits(ask, r->code)) {
		oc_violation(oc, "reply %u to %s", r->code, smtp_ask_name(ask));
		return false;
	}
	if (r->code == 503 && oc_503_out_of_step(oc, ask)) {
		oc_out_of_step(oc, ask, r);
		return false;
	}
	/* 421: the hop closes the channel (RFC 5321 3.8), maybe only because
	 * it takes one message per connection. */
	if (r->code == 421) {
		smtp_reply_diag(r, diag, sizeof(diag));
		if (oc_continuation_lost(oc, diag))
			return false;
	}
	return true;
}

static void on_reply(struct oconn *oc, const struct smtp_reply *r)
{
	if (!oc_reply_admitted(oc, r))
		return;
	switch (oc->state) {
	case OC_BANNER:
		on_reply_banner(oc, r);
		return;
	case OC_EHLO:
		on_reply_ehlo(oc, r);
		return;
	case OC_HELO:
		on_reply_helo(oc, r);
		return;
	case OC_STARTTLS:
		on_reply_starttls(oc, r);
		return;
	case OC_MAIL:
		on_reply_mail(oc, r);
		return;
	case OC_RCPT:
		oc_rcpt_reply(oc, r);
		return;
	case OC_DATA:
		on_reply_data(oc, r);
		return;
	case OC_DOT:
		on_reply_dot(oc, r);
		return;
	case OC_RSET:
		oc_tx_end(oc, oc_reply_2xx(r));
		return;
	case OC_QUIT:
		oc_quit_done(oc);
		return;
	case OC_FREE:
	case OC_CONNECTING:
	case OC_TLS_HS:
	case OC_IDLE:
	case OC_BODY:
	case OC_TLS_CLOSE:
	case OC_CLOSING:
		/* No command is in flight here (oc_state_ask): the owed list
		 * was empty, and oc_reply_admitted closed the connection for
		 * the protocol violation.  A reply cannot get this far. */
	default:
		abort();
	}
}

/* Before any reply in buf counts: are they all owed?  False when the
 * connection was failed. */
static bool oc_weigh(struct oconn *oc, const char *buf, size_t len)
{
	uint32_t replies;
	size_t end;
	enum smtp_ask last = smtp_owed_last(&oc->owed);

	smtp_reply_count(&oc->rp, buf, len, &replies, &end);
	switch (smtp_owed_check(&oc->owed, replies, end, len)) {
	case SMTP_OWED_OK:
		return true;
	case SMTP_OWED_UNASKED:
		oc_violation(oc, "a reply when nothing was asked");
		return false;
	case SMTP_OWED_SURPLUS:
		/* RFC 3207 5: plaintext after the 220 would be read as replies
		 * to the commands sent inside TLS (CVE-2011-0411, client side). */
		if (last == SMTP_ASK_STARTTLS)
			oc_violation(oc, "bytes after the reply to STARTTLS (response injection)");
		else
			oc_violation(
			    oc, "more replies than commands in flight (%u owed, the last to %s)",
			    oc->owed.budget, smtp_ask_name(last));
		return false;
	default:
		abort();
	}
}

static const char *const reply_errors[] = {
    [SMTP_REPLY_E_NONE] = "",
    [SMTP_REPLY_E_SYNTAX] = "bad reply code",
    [SMTP_REPLY_E_MIXED] = "codes differ between the lines of one reply",
    [SMTP_REPLY_E_OCTET] = "NUL or bare CR",
    [SMTP_REPLY_E_LINE_LONG] = "line too long",
    [SMTP_REPLY_E_LINES] = "too many lines",
    [SMTP_REPLY_E_BYTES] = "reply too long",
};

/* Replies in buf (plaintext): weighed against the replies owed, then each
 * complete one goes to on_reply. */
static void oc_parse(struct oconn *oc, const char *buf, size_t len)
{
	size_t off = 0;

	if (!oc_weigh(oc, buf, len))
		return;
	while (off < len && !oc_gone(oc)) {
		struct smtp_reply_line line;
		size_t used = 0;
		int rc = smtp_reply_parse(&oc->rp, buf + off, len - off, &used, &line);

		if (rc == SMTP_PARSE_INVALID) {
			char why[DLV_ERR_MAX];

			assert(oc->rp.error < sizeof(reply_errors) / sizeof(reply_errors[0]));
			snprintf(why, sizeof(why), "malformed reply from the next hop (%s)",
				 reply_errors[oc->rp.error]);
			oc_fail(oc, why);
			return;
		}
		off += used;
		if (rc == SMTP_PARSE_AGAIN)
			break;
		if ((oc->state == OC_EHLO || oc->state == OC_HELO) && line.code == 250)
			smtp_ehlo_line(&oc->caps, &line);
		if (line.last)
			on_reply(oc, &oc->rp.reply);
		/* TLS began on that reply: oc_weigh saw nothing after it, and
		 * nothing received in plaintext may follow into TLS. */
		if (oc->state == OC_TLS_HS && off < len) {
			oc_violation(oc, "bytes after the reply to STARTTLS (response injection)");
			return;
		}
	}
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

	net_set_timeout(oc->nc, cmd_ms(c));
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
