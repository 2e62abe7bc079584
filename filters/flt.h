/*
 * filters/flt — the one decision point every SMTP stage passes through.
 *
 * The session asks flt_decide() at connect, helo, mail, rcpt and data.  The
 * answer is FLT_DONE with a verdict now, or FLT_PENDING: the verdict says
 * what to wait for (today: a delay, which the shard runs as a timer on its
 * ring); when the wait is over the session calls flt_resume() for the final
 * verdict (smtp_session_decided).  Input stays paused meanwhile, so filters
 * that need DNS, kv or a policy server plug in here without reshaping the
 * session.
 *
 * Today the chain holds the built-in policy: relaying is denied unless the
 * recipient domain is in relay.domains or the client in relay.networks
 * (invariant 7), and the error tarpit (limits.soft_errors/error_delay_ms)
 * delays every decision of a session that has made too many errors.  The
 * compiled JSON filter chains of the filters issue replace the bodies of
 * flt_decide/flt_resume, not their callers.  Thread: the shard's.
 */
#ifndef RMX_FILTERS_FLT_H
#define RMX_FILTERS_FLT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config/config.h"

enum flt_stage {
	FLT_STAGE_CONNECT = 0,
	FLT_STAGE_HELO,
	FLT_STAGE_MAIL,
	FLT_STAGE_RCPT,
	FLT_STAGE_DATA,
};

enum flt_rc {
	FLT_DONE = 0,
	FLT_PENDING = 1,
};

enum flt_action {
	FLT_ACCEPT = 0, /* go on with the default reply */
	FLT_REJECT,	/* 5xx: reply holds the line */
	FLT_TEMPFAIL,	/* 4xx: reply holds the line */
};

struct flt_input {
	const struct rmx_config *cfg;
	const struct sockaddr *client;
	const char *helo;
	const char *domain; /* RCPT: recipient domain (may be empty) */
	size_t domain_len;
	const char *addr; /* MAIL/RCPT: the address as written */
	size_t addr_len;
	bool authenticated;
	uint32_t errors; /* errors the session has made so far */
};

struct flt_verdict {
	enum flt_action action;
	uint32_t delay_ms; /* FLT_PENDING: wait this long, then flt_resume() */
	char reply[400];   /* complete reply line without CRLF when not ACCEPT */
};

/* Decide now (FLT_DONE, out final) or later (FLT_PENDING, out says what to
 * wait for; the caller keeps out and hands it to flt_resume). */
int flt_decide(enum flt_stage stage, const struct flt_input *in, struct flt_verdict *out);
/* The wait of a PENDING decision is over: make v final.  Returns FLT_DONE. */
int flt_resume(enum flt_stage stage, struct flt_verdict *v);

#endif
