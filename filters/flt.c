/*
 * filters/flt — the decision point.  See flt.h.
 */
#include "filters/flt.h"

#include <stdio.h>
#include <string.h>

/* Invariant 7: a recipient is accepted only for a configured domain, from a
 * configured network, or after AUTH.  <Postmaster> (no domain) is always
 * ours (RFC 5321 4.5.1). */
static void flt_relay_policy(const struct flt_input *in, struct flt_verdict *out)
{
	if (in->domain_len == 0 || in->authenticated)
		return;
	if (config_domain_is_relay(in->cfg, in->domain, in->domain_len))
		return;
	if (config_addr_is_relay(in->cfg, in->client))
		return;
	out->action = FLT_REJECT;
	snprintf(out->reply, sizeof(out->reply), "554 5.7.1 <%.*s>: Relay access denied",
		 (int)(in->addr_len > 300 ? 300 : in->addr_len), in->addr);
}

int flt_decide(enum flt_stage stage, const struct flt_input *in, struct flt_verdict *out)
{
	const struct config_limits *lim = &in->cfg->limits;

	out->action = FLT_ACCEPT;
	out->delay_ms = 0;
	out->reply[0] = '\0';
	switch (stage) {
	case FLT_STAGE_RCPT:
		flt_relay_policy(in, out);
		break;
	case FLT_STAGE_CONNECT:
	case FLT_STAGE_HELO:
	case FLT_STAGE_MAIL:
	case FLT_STAGE_DATA:
		break;
	}
	/* Tarpit (Postfix's smtpd_soft_error_limit/smtpd_error_sleep_time):
	 * a client past its soft error limit waits for every answer, which
	 * costs a recipient-guessing bot time and us only a ring timer. */
	if (lim->error_delay_ms && in->errors >= lim->soft_errors) {
		out->delay_ms = lim->error_delay_ms;
		return FLT_PENDING;
	}
	return FLT_DONE;
}

int flt_resume(enum flt_stage stage, struct flt_verdict *v)
{
	(void)stage;
	v->delay_ms = 0; /* the verdict itself was reached before the wait */
	return FLT_DONE;
}
