/*
 * filters/flt — the decision point.  See flt.h.
 *
 * A decision goes through phases kept in flt_state, so that a wait can fall
 * between any two of them and the session resumes with flt_resume():
 *   CHAIN     the chain runs from st->pc (a tarpit without a decision
 *             waits and comes back here);
 *   DECIDED   a rule decided with a tarpit: the verdict is made, the wait
 *             is its delay;
 *   ERRDELAY  the verdict is made, the error tarpit delays it.
 */
#include "filters/flt.h"

#include <stdio.h>
#include <string.h>

#include "filters/prog.h"
#include "log/log.h"

enum { PH_CHAIN = 0, PH_DECIDED, PH_ERRDELAY };

#define FIELD_MAX	 255 /* bytes of one %{field} in a reply */
#define FLT_HDR_LINE_MAX 998 /* a header line without CRLF (RFC 5322 2.1.1) */

const char *const flt_stage_names[FLT_STAGE_COUNT] = {"connect", "helo", "auth",
						      "mail",	 "rcpt", "data"};

static const char *const action_names[] = {"accept", "reject", "tempfail", "disconnect"};

/* Invariant 7: a recipient is accepted only for a configured domain, from a
 * configured network, or after AUTH.  <Postmaster> (no domain) is always
 * ours (RFC 5321 4.5.1). */
static void flt_relay_policy(const struct flt_input *in, struct flt_verdict *out)
{
	if (in->rcpt_domain_len == 0 || in->authenticated)
		return;
	if (config_domain_is_relay(in->cfg, in->rcpt_domain, in->rcpt_domain_len))
		return;
	if (config_addr_is_relay(in->cfg, in->client))
		return;
	char addr[301];
	size_t n = in->rcpt_len < sizeof(addr) - 1 ? in->rcpt_len : sizeof(addr) - 1;

	/* The address as written, 8-bit (SMTPUTF8) shown as '?' like a
	 * %{rcpt}: a reply line is ASCII. */
	for (size_t i = 0; i < n; i++)
		addr[i] = in->rcpt[i] >= 0x20 && in->rcpt[i] < 0x7f ? in->rcpt[i] : '?';
	addr[n] = '\0';
	out->action = FLT_REJECT;
	snprintf(out->reply, sizeof(out->reply), "554 5.7.1 <%s>: Relay access denied", addr);
}

static void field_value(const struct flt_input *in, int f, const char **p, size_t *n)
{
	const char *s = NULL;

	*n = SIZE_MAX;
	switch ((enum flt_reply_field)f) {
	case FLT_RF_CLIENT_IP:
		s = in->client_ip;
		break;
	case FLT_RF_HELO:
		s = in->helo;
		break;
	case FLT_RF_SENDER:
		s = in->sender;
		*n = in->sender_len;
		break;
	case FLT_RF_RCPT:
		s = in->rcpt;
		*n = in->rcpt_len;
		break;
	case FLT_RF_LISTENER:
		s = in->rules->listener_names[in->listener];
		break;
	case FLT_RF_AUTH_USER:
		s = in->authenticated ? in->auth_user : NULL;
		break;
	case FLT_RF_HOSTNAME:
		s = in->rules->hostname;
		break;
	case FLT_RF_QID:
		s = in->qid;
		break;
	case FLT_RF_COUNT:
		break;
	}
	*p = s ? s : "";
	if (!s)
		*n = 0;
	else if (*n == SIZE_MAX)
		*n = strlen(s);
}

/* The reply, its %{field}s filled in.  What a client wrote (a HELO, an
 * address) is cut to FIELD_MAX bytes and anything but printable ASCII
 * becomes '?', so it cannot end the reply line or forge another. */
static void reply_expand(const char *t, const struct flt_input *in, char *out, size_t cap)
{
	size_t o = 0;

	for (; *t && o + 1 < cap; t++) {
		const char *v;
		size_t n;

		if (*t != FLT_REPLY_FIELD) {
			out[o++] = *t;
			continue;
		}
		field_value(in, t[1] - 1, &v, &n);
		t++;
		for (size_t i = 0; i < n && i < FIELD_MAX && o + 1 < cap; i++)
			out[o++] = (v[i] >= 0x20 && v[i] < 0x7f) ? v[i] : '?';
	}
	out[o] = '\0';
}

const char *flt_rule_path(const struct flt_rules *r, uint32_t rule)
{
	if (rule == FLT_RULE_RELAY)
		return "relay policy";
	return r && rule < r->path_count ? r->paths[rule] : "default";
}

/* A rule's action made into the verdict, and logged. */
static void verdict_of(enum flt_stage stage, const struct flt_input *in, const struct flt_act *a,
		       uint32_t rule, struct flt_verdict *out)
{
	out->action = a->decide == FLT_DEC_REJECT	? FLT_REJECT
		      : a->decide == FLT_DEC_TEMPFAIL	? FLT_TEMPFAIL
		      : a->decide == FLT_DEC_DISCONNECT ? FLT_DISCONNECT
							: FLT_ACCEPT;
	out->reply[0] = '\0';
	if (a->reply)
		/* 510 characters: with its CRLF a reply line is at most 512 octets
		 * (RFC 5321 4.5.3.1.5). */
		reply_expand(a->reply, in, out->reply, sizeof(out->reply) - 1);
	if (in->quiet)
		return;
	log_msg(LOG_INFO,
		"event=filter client=%s stage=%s rule=%s action=%s tarpit_ms=%u reply=\"%s\"",
		in->client_ip, flt_stage_names[stage], flt_rule_path(in->rules, rule),
		a->quarantine		    ? "quarantine"
		: a->decide == FLT_DEC_NONE ? "next"
					    : action_names[out->action],
		a->tarpit_ms, out->reply);
}

static int run(enum flt_stage stage, const struct flt_input *in, struct flt_state *st,
	       struct flt_verdict *out)
{
	const struct flt_prog *prog = in->rules ? in->rules->progs[in->listener][stage] : NULL;
	const struct config_limits *lim = &in->cfg->limits;

	if (out->action == FLT_ACCEPT && prog) {
		const struct flt_act *act;
		uint32_t rule;
		int rc = flt_eval(prog, in, st, &act, &rule);

		st->rule = rule;
		if (act)
			verdict_of(stage, in, act, rule, out);
		if (rc == FLT_PENDING) {
			st->phase = act->decide == FLT_DEC_NONE ? PH_CHAIN : PH_DECIDED;
			out->delay_ms = act->tarpit_ms;
			return FLT_PENDING;
		}
	}
	/* Tarpit (Postfix's smtpd_soft_error_limit/smtpd_error_sleep_time):
	 * a client past its soft error limit waits for every answer, which
	 * costs a recipient-guessing bot time and us only a ring timer. */
	if (lim->error_delay_ms && in->errors >= lim->soft_errors) {
		st->phase = PH_ERRDELAY;
		out->delay_ms = lim->error_delay_ms;
		return FLT_PENDING;
	}
	return FLT_DONE;
}

/* A refused recipient changes nothing of the message: the message actions
 * its rules set are taken back (its tags stay: "a bad recipient was seen"
 * is a fact later rules may use). */
static int rcpt_settle(int rc, struct flt_state *st, const struct flt_verdict *out)
{
	if (rc == FLT_DONE && out->action != FLT_ACCEPT) {
		st->quarantine = st->kept.quarantine;
		st->route = st->kept.route;
		st->bcc = st->kept.bcc;
		st->rewrite = st->kept.rewrite;
	}
	return rc;
}

int flt_decide(enum flt_stage stage, const struct flt_input *in, struct flt_state *st,
	       struct flt_verdict *out)
{
	out->action = FLT_ACCEPT;
	out->delay_ms = 0;
	out->reply[0] = '\0';
	st->pc = 0;
	st->phase = PH_CHAIN;
	st->rule = UINT32_MAX;
	if (stage == FLT_STAGE_MAIL)
		flt_tx_end(st); /* a transaction begins (a refused MAIL leaves none) */
	st->nadds = 0;
	if (stage == FLT_STAGE_RCPT) {
		st->kept.quarantine = st->quarantine;
		st->kept.route = st->route;
		st->kept.bcc = st->bcc;
		st->kept.rewrite = st->rewrite;
		flt_relay_policy(in, out);
		if (out->action != FLT_ACCEPT)
			st->rule = FLT_RULE_RELAY;
		return rcpt_settle(run(stage, in, st, out), st, out);
	}
	return run(stage, in, st, out);
}

int flt_resume(enum flt_stage stage, const struct flt_input *in, struct flt_state *st,
	       struct flt_verdict *out)
{
	int rc = FLT_DONE; /* the verdict was made before the wait */

	out->delay_ms = 0;
	if (st->phase == PH_CHAIN)
		rc = run(stage, in, st, out);
	return stage == FLT_STAGE_RCPT ? rcpt_settle(rc, st, out) : rc;
}

void flt_tx_end(struct flt_state *st)
{
	st->tags_tx = 0;
	st->quarantine = st->route = st->bcc = NULL;
	st->rewrite = NULL;
}

struct rewrite {
	const char *sender;
	size_t n;
	char *out;
	size_t cap, len;
};

static bool rewrite_to(const char *v, void *ctx)
{
	struct rewrite *rw = ctx;
	const char *at = memrchr(rw->sender, '@', rw->n);
	size_t vn = strlen(v), local = at ? (size_t)(at - rw->sender) : rw->n;

	/* The value becomes an envelope address: printable ASCII without the
	 * characters that would end or quote it, one '@', at most 254. */
	for (size_t i = 0; i < vn; i++)
		if (v[i] <= ' ' || v[i] >= 0x7f || strchr("<>\",\"\\()[];:", v[i]))
			return false;
	if (!vn || vn > 254 || !strchr(v, '@') || strchr(v, '@') != strrchr(v, '@') ||
	    v[vn - 1] == '@')
		return false;
	if (v[0] == '@') /* the same local part at another domain */
		rw->len = (size_t)snprintf(rw->out, rw->cap, "%.*s%s", (int)local, rw->sender, v);
	else
		rw->len = (size_t)snprintf(rw->out, rw->cap, "%s", v);
	if (rw->len >= rw->cap || rw->len > 254)
		rw->len = 0;
	return rw->len != 0;
}

size_t flt_rewrite_sender(const struct flt_table *t, const char *sender, size_t n, char *out,
			  size_t cap)
{
	struct rewrite rw = {sender, n, out, cap, 0};

	if (!t || !n || !flt_table_value_has(t, FLT_SET_ADDRS, sender, n, rewrite_to, &rw))
		return 0;
	return rw.len;
}

size_t flt_header_format(const struct flt_hdr_add *a, const struct flt_input *in, char *out,
			 size_t cap)
{
	size_t n = strlen(a->name);
	char value[FLT_HDR_LINE_MAX];

	/* The line, "Name: value", at most 998 octets (RFC 5322 2.1.1). */
	reply_expand(a->value, in, value, FLT_HDR_LINE_MAX - n - 2 + 1);
	if (n + 2 + strlen(value) + 3 > cap)
		return 0;
	return (size_t)snprintf(out, cap, "%s: %s\r\n", a->name, value);
}

bool flt_data_reads_message(const struct flt_rules *r, uint8_t listener)
{
	return r && r->data_reads_msg[listener];
}

bool flt_data_reads_body(const struct flt_rules *r, uint8_t listener)
{
	return r && r->data_reads_body[listener];
}

bool flt_data_adds_headers(const struct flt_rules *r, uint8_t listener)
{
	return r && r->data_adds[listener];
}
