/*
 * deliver/oc_tx — one transaction of the outbound client: MAIL, the RCPTs
 * (pipelined or not), DATA, the reply to the final dot, each recipient's
 * result, and what follows (RSET, the next transaction, QUIT, a fresh
 * connection after a 503).  See outbound.c for the rules.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deliver/oc_int.h"
#include "log/log.h"
#include "net/net.h"

static void after_rcpt_replies(struct oconn *oc);

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
void oc_result_all(struct oconn *oc, int cls, const char *status, const char *diag,
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
	oc_result_all(oc,
		      o == SMTP_OUTCOME_DONE	 ? 2
		      : o == SMTP_OUTCOME_BOUNCE ? 5
						 : 4,
		      status, diag, accepted_only);
}

bool oc_job_answered_any(const struct djob *job)
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
		oc_result_all(oc, 5, "5.3.4", diag, false);
		return false;
	}
	if (!(oc->caps.ext & SMTP_EXT_SMTPUTF8) && tx_needs_smtputf8(oc)) {
		snprintf(diag, sizeof(diag),
			 "X-ringmx; the message needs SMTPUTF8, which %s does not offer",
			 oc->hop.name);
		oc_result_all(oc, 5, "5.6.7", diag, false);
		return false;
	}
	if ((e->flags & SPOOL_ENV_8BIT) && !(oc->caps.ext & SMTP_EXT_8BITMIME)) {
		snprintf(diag, sizeof(diag),
			 "X-ringmx; 8-bit message and %s does not offer 8BITMIME (no conversion)",
			 oc->hop.name);
		oc_result_all(oc, 5, "5.6.3", diag, false);
		return false;
	}
	return true;
}

void oc_begin_tx(struct oconn *oc)
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
	net_set_timeout(oc->nc, oc_cmd_ms(c));
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
void oc_tx_end(struct oconn *oc, bool reusable)
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
void oc_out_of_step(struct oconn *oc, enum smtp_ask ask, const struct smtp_reply *r)
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
	oc_result_all(oc, 4, status, diag, false);
	oc->job = NULL;
	dlv_job_done(oc->d, job);
}

/* Does a 503 to this command show the hop out of step?  Not when it is the
 * expected answer: RCPT after a refused MAIL, DATA with no recipient taken
 * (RFC 2920 3.1 has the server fail DATA then; some say 503). */
bool oc_503_out_of_step(const struct oconn *oc, enum smtp_ask ask)
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

void oc_rcpt_reply(struct oconn *oc, const struct smtp_reply *r)
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

/* MAIL answered.  A refusal answers the whole job (RFC 5321 3.3); the
 * RCPTs already pipelined behind it still have their replies to come. */
void oc_on_reply_mail(struct oconn *oc, const struct smtp_reply *r)
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
void oc_on_reply_data(struct oconn *oc, const struct smtp_reply *r)
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

void oc_on_reply_dot(struct oconn *oc, const struct smtp_reply *r)
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
