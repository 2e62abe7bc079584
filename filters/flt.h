/*
 * filters/flt — the one decision point every SMTP stage passes through.
 *
 * The session asks flt_decide() at connect, helo, auth, mail, rcpt and
 * data.  The answer is FLT_DONE with a verdict now, or FLT_PENDING: the
 * verdict says how long to wait (the shard runs it as a timer on its ring);
 * when the wait is over the session calls flt_resume() with the same input,
 * which goes on where the chain stopped and may ask to wait again.  Input
 * stays paused meanwhile.
 *
 * What decides, in order:
 *  1. at rcpt, the built-in relay policy: relaying is denied unless the
 *     recipient domain is in relay.domains, the client in relay.networks,
 *     or the session authenticated (invariant 7).  No filter can undo it;
 *  2. the compiled filter chain of the listener and stage (flt_compile(),
 *     prog.h): the first rule that decides ends the stage;
 *  3. the error tarpit (limits.soft_errors/error_delay_ms) delays every
 *     decision of a session that has made too many errors.
 * Thread: the shard's for flt_decide/flt_resume; flt_compile and
 * flt_rules_free on the main thread.
 */
#ifndef RMX_FILTERS_FLT_H
#define RMX_FILTERS_FLT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config/config.h"

enum flt_stage {
	FLT_STAGE_CONNECT = 0,
	FLT_STAGE_HELO,
	FLT_STAGE_AUTH, /* after a successful AUTH, before its 235 */
	FLT_STAGE_MAIL,
	FLT_STAGE_RCPT,
	FLT_STAGE_DATA,
	FLT_STAGE_COUNT,
};

extern const char *const flt_stage_names[FLT_STAGE_COUNT];

enum flt_rc {
	FLT_DONE = 0,
	FLT_PENDING = 1,
};

enum flt_action {
	FLT_ACCEPT = 0, /* go on with the default reply */
	FLT_REJECT,	/* 5xx: reply holds the line */
	FLT_TEMPFAIL,	/* 4xx: reply holds the line */
	FLT_DISCONNECT, /* reply holds the line; then close the session */
};

struct flt_rules;

/* What a stage knows.  Strings are not NUL-terminated unless said; a field
 * not known yet at the stage is empty (the compiler refuses rules that ask
 * for it there). */
struct flt_input {
	const struct rmx_config *cfg;
	const struct flt_rules *rules; /* NULL: no chains */
	uint8_t listener;	       /* index into cfg->listeners */
	const struct sockaddr *client;
	const char *client_ip; /* text, NUL-terminated */
	const char *helo;      /* NUL-terminated; "" before EHLO/HELO */
	bool authenticated;
	const char *auth_user; /* NUL-terminated; "" when not authenticated */
	bool tls;
	const char *tls_version; /* "1.2", "1.3" or "" */
	const char *sender;	 /* MAIL and later: "local@domain", "" for <> */
	size_t sender_len;
	const char *sender_domain;
	size_t sender_domain_len;
	uint64_t size;	  /* MAIL: the declared SIZE (0: none) */
	const char *rcpt; /* RCPT: "local@domain", or "Postmaster" */
	size_t rcpt_len;
	const char *rcpt_domain; /* RCPT: may be empty (<Postmaster>) */
	size_t rcpt_domain_len;
	uint32_t rcpt_count; /* RCPT: recipients accepted so far + 1 */
	uint32_t errors;     /* errors the session has made so far */
	const char *qid;     /* from DATA/BDAT on: the queue ID; else "" */
	/* DATA: the message's first bytes as the client sent them (no
	 * stuffing, without our Received:), and its size (RFC 1870). */
	const char *msg;
	size_t msg_len;
	bool quiet; /* filter explain: log nothing */
};

/* Evaluation state, one per session: tags, and where a PENDING stage goes
 * on.  Zero it at the session's start; flt_tx_end() at each transaction's
 * end. */
#define FLT_ADDS_MAX 16 /* header fields one data stage adds */
struct flt_hdr_add;

struct flt_state {
	uint64_t tags_session; /* set at connect, helo, auth */
	uint64_t tags_tx;      /* set at mail, rcpt, data */
	uint32_t pc;	       /* PENDING: the next op to run */
	uint32_t rule;	       /* the deciding rule (flt_rule_path) */
	uint8_t phase;	       /* PENDING: see flt.c */
	uint8_t nadds;	       /* data: the add_header actions that ran */
	/* The transaction's message actions (NULL: none), applied at commit. */
	const char *quarantine;		 /* its quarantine */
	const char *route;		 /* routes[].name for every recipient */
	const char *bcc;		 /* a recipient to add (an archive) */
	const struct flt_table *rewrite; /* the sender's new address, by table */
	struct {			 /* before the recipient being decided */
		const char *quarantine, *route, *bcc;
		const struct flt_table *rewrite;
	} kept;
	const struct flt_hdr_add *adds[FLT_ADDS_MAX];
};

struct flt_verdict {
	enum flt_action action;
	uint32_t delay_ms; /* FLT_PENDING: wait this long, then flt_resume() */
	char reply[512];   /* complete reply line without CRLF when not ACCEPT */
};

/* Decide now (FLT_DONE, out final) or later (FLT_PENDING, out->delay_ms
 * says how long to wait; then call flt_resume with the same input). */
int flt_decide(enum flt_stage stage, const struct flt_input *in, struct flt_state *st,
	       struct flt_verdict *out);
int flt_resume(enum flt_stage stage, const struct flt_input *in, struct flt_state *st,
	       struct flt_verdict *out);
/* A header field a data-stage decision added (st->adds[i]) as the line
 * "Name: value\r\n" in out[cap]; its length, 0 when it does not fit. */
size_t flt_header_format(const struct flt_hdr_add *a, const struct flt_input *in, char *out,
			 size_t cap);
/* The sender as st->rewrite maps it (a value "new@address", or "@domain"
 * for the same local part at that domain) into out[cap]: its length, or 0
 * when the table has no entry for it or the value is not an address. */
size_t flt_rewrite_sender(const struct flt_table *t, const char *sender, size_t n, char *out,
			  size_t cap);
/* Does the listener's data stage look at the message (header, body)?  Then
 * the session keeps its first FLT_CAPTURE_MAX octets for it (flt_input.msg).
 * Does it add header fields (then room is kept for them)? */
#define FLT_CAPTURE_MAX 65536
bool flt_data_reads_message(const struct flt_rules *r, uint8_t listener);
/* ... its body too (else the copy stops after the header section)? */
bool flt_data_reads_body(const struct flt_rules *r, uint8_t listener);
bool flt_data_adds_headers(const struct flt_rules *r, uint8_t listener);
/* ---- the message (match_msg.c) ------------------------------------------------- */

/* The captured message's header section, CRLF lines (a bare LF too).
 * Where the body begins (after the blank line), or n when the capture
 * ends inside the header section. */
size_t flt_msg_body_start(const char *m, size_t n);
#define FLT_HDR_FIELDS_MAX 16 /* fields of one name a header test looks at */
/* Does one of the first FLT_HDR_FIELDS_MAX fields named name (ASCII case
 * folded) pass test?  Its value is
 * unfolded (line breaks before blanks dropped, surrounding blanks
 * trimmed) into a buffer of 4096 octets, cut there. */
bool flt_msg_header_any(const char *m, size_t n, const char *name, size_t nlen,
			bool (*test)(const char *v, size_t len, const void *ctx), const void *ctx);

/* The transaction ended (message committed or refused, RSET, new EHLO). */
void flt_tx_end(struct flt_state *st);

/* Compile cfg's "tables", "filters" and "listeners[].filters".  NULL with
 * one line in err ("<json path>: <what>") when a rule is wrong.  A config
 * without filters compiles to rules with no chains.  The rules point into
 * cfg (names), so free them first. */
struct flt_rules *flt_compile(const struct rmx_config *cfg, char *err, size_t err_len);
void flt_rules_free(struct flt_rules *r);
/* The JSON path of a rule (flt_state.rule), "relay policy" for the
 * built-in one (FLT_RULE_RELAY), or "default" (no rule decided). */
#define FLT_RULE_RELAY (UINT32_MAX - 1)
const char *flt_rule_path(const struct flt_rules *r, uint32_t rule);
/* Read again the file tables whose files changed (and are still since the
 * last call); call about once a second, on one thread (main).  A file that
 * does not load keeps the old contents and logs why. */
void flt_tables_refresh(const struct flt_rules *r);

#endif
