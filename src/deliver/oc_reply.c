/*
 * deliver/oc_reply — the outbound client's replies in: each read weighed
 * against the replies owed before any of it counts, the parse, the command
 * each reply answers, and the replies of the session itself (greeting,
 * EHLO/HELO, STARTTLS).  See outbound.c for the rules.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deliver/oc_int.h"
#include "log/log.h"
#include "net/net.h"

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
		oc_on_reply_mail(oc, r);
		return;
	case OC_RCPT:
		oc_rcpt_reply(oc, r);
		return;
	case OC_DATA:
		oc_on_reply_data(oc, r);
		return;
	case OC_DOT:
		oc_on_reply_dot(oc, r);
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
void oc_parse(struct oconn *oc, const char *buf, size_t len)
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
		if (line.last) {
			net_progress(oc->nc); /* a whole reply: the wait starts over */
			on_reply(oc, &oc->rp.reply);
		}
		/* TLS began on that reply: oc_weigh saw nothing after it, and
		 * nothing received in plaintext may follow into TLS. */
		if (oc->state == OC_TLS_HS && off < len) {
			oc_violation(oc, "bytes after the reply to STARTTLS (response injection)");
			return;
		}
	}
}
