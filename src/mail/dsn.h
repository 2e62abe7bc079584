/*
 * mail/dsn — delivery status notifications: the notify decision (RFC 3461
 * 4.1) and the builder of the DSN message itself, a multipart/report
 * (RFC 6522, ex RFC 3462) carrying a message/delivery-status part
 * (RFC 3464), or its internationalized form (RFC 6533) for SMTPUTF8 mail.
 *
 * Owns: nothing.  Every function is pure: no global state, no I/O of its own,
 * no heap allocation.  dsn_build() keeps its state on the stack (about
 * 12 KiB: a 4 KiB output buffer, a 4 KiB unstuffing buffer, one sanitized
 * diagnostic) and talks to the world only through two caller callbacks,
 * both called synchronously from inside dsn_build() and never after it
 * returns:
 *   - source: pushes the original message's stored bytes (CRLF lines,
 *     dot-stuffed when the envelope says SPOOL_ENV_STUFFED) into the sink it
 *     is given.  spool_message_read() has exactly this shape.  It is called
 *     at most twice (pass 1 picks the MIME boundary and measures the header
 *     section, pass 2 copies; RET=HDRS stops both after the header section)
 *     and must deliver the same bytes both times.  A non-zero return from
 *     the sink must stop it and be returned unchanged.
 *   - write: receives the DSN's bytes in order, in pieces of at most
 *     DSN_OUT_CHUNK octets.
 * Thread: any thread.  dsn_build() itself never blocks, but the callbacks may
 * (spool_message_read does pread): a caller whose callbacks block must call
 * it where blocking is allowed (a helper thread), never on a shard thread.
 *
 * The produced message:
 *   - RFC 5322, CRLF line endings, no line longer than DSN_LINE_MAX octets;
 *     header fields written by the builder are folded near DSN_FOLD_COL.
 *   - From: "Mail Delivery System" <MAILER-DAEMON@reporting_mta>, To: the
 *     original envelope sender, Subject by outcome (any failure: "Undelivered
 *     Mail Returned to Sender"; else any delay: "Delayed Mail (still being
 *     retried)"; else "Successful Mail Delivery Report"), Date, Message-ID
 *     <QID.now.nonce@msgid_domain>, Auto-Submitted: auto-replied (RFC 3834
 *     5), MIME-Version, Content-Type: multipart/report;
 *     report-type=delivery-status (kept for the RFC 6533 form too, as
 *     deployed MTAs do, so report readers still recognise it).
 *   - part 1: text/plain for people; part 2: message/delivery-status;
 *     part 3: the original — text/rfc822-headers (RET=HDRS or unspecified,
 *     RFC 3461 4.3) or message/rfc822 (RET=FULL).  The RFC 6533 form (the
 *     original used SMTPUTF8, or any envelope address is not ASCII) uses
 *     charset=utf-8, message/global-delivery-status, message/global-headers
 *     and message/global, all Content-Transfer-Encoding: 8bit; addresses that
 *     are not ASCII are typed "utf-8;" (utf-8-addr-unitext: '\', '+' and
 *     '=' become \x{HEX}).  Otherwise parts 1 and 2 are 7-bit; part 3 is
 *     labelled 8bit only when the embedded bytes have 8-bit octets.
 *   - Original-Envelope-Id and Original-Recipient show the ENVID and the
 *     ORCPT address xtext-decoded (RFC 3464 2.2.1, 2.3.1); a value that
 *     decodes to a control or non-ASCII octet is shown as given (xtext is
 *     visible ASCII), a "utf-8;" ORCPT always is (RFC 6533 3).
 *   - Diagnostic-Code keeps UTF-8 reply text in the RFC 6533 form only.
 *   - Part 3 is the original byte for byte (after unstuffing): its lines are
 *     whatever the server accepted; the builder's bounds apply to what it
 *     writes itself.
 *   - Without a source (the original is unreadable) part 3 is left out, which
 *     RFC 6522 3 allows, and part 1 says so.
 *
 * MIME boundary: "=_rmx-<QID>-<nonce as 16 hex>-<c>".  "=_" cannot occur in
 * quoted-printable or base64 text (RFC 2045 6.7), the nonce is the caller's
 * random number so the sender cannot guess it, and pass 1 still checks every
 * embedded line: a line that starts with "--" plus everything before <c>
 * marks the character following it as taken, and the first free <c> of 36
 * candidates is used.  Lines the builder writes itself never start with
 * "--".  All 36 taken (only possible when the nonce is known to the sender):
 * -EEXIST, and the caller builds again with a new nonce.
 *
 * The bounce's envelope (RFC 5321 4.5.5): null reverse-path
 * (DSN_MAIL_FROM), one recipient, the original sender; BODY=8BITMIME when
 * info.body_8bit, SMTPUTF8 when info.smtputf8, and SPOOL_ENV_HDR_ASCII when
 * the sender's address is ASCII (the DSN's only header field that is not
 * the builder's own ASCII is To:), so an ASCII-addressed DSN is not refused
 * by a hop without SMTPUTF8.  dsn_bounce_env() fills those fields.  Never build a DSN for a message whose sender is null
 * (dsn_needed() says false): a failed bounce is logged and dropped (double
 * bounce), never bounced again.
 *
 * Return style: 0 or -errno.
 */
#ifndef RMX_MAIL_DSN_H
#define RMX_MAIL_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue/record.h"

/* Named bounds (each has a test).
 *   DSN_RCPT_MAX  results in one DSN; the caller splits larger sets.
 *   DSN_DIAG_MAX  diagnostic octets kept after cleaning; longer text is cut
 *                 and ends in DSN_DIAG_CUT.
 *   DSN_HDRS_MAX  header-section octets returned for RET=HDRS; a longer
 *                 section is cut at a line end and part 1 says so. */
#define DSN_RCPT_MAX  1000
#define DSN_DIAG_MAX  1024
#define DSN_HDRS_MAX  65536
#define DSN_LINE_MAX  998  /* RFC 5322 2.1.1: octets per line, CRLF excluded */
#define DSN_FOLD_COL  78   /* RFC 5322 2.1.1: fold builder fields here if possible */
#define DSN_NAME_MAX  255  /* reporting_mta, msgid_domain, remote MTA name */
#define DSN_OUT_CHUNK 4096 /* largest piece handed to the write callback */

#define DSN_DIAG_CUT	 " [...]"
#define DSN_MAIL_FROM	 "" /* the bounce's reverse-path: <> */
#define DSN_BOUNDARY_MAX 48 /* boundary length plus NUL, with room */
#define DSN_MSGID_MAX	 (DSN_NAME_MAX + 64)

/* RFC 3464 2.3.3 action-value. */
enum dsn_action {
	DSN_ACTION_FAILED = 1, /* status 5.x.x, or 4.x.x when the retry time ran out */
	DSN_ACTION_DELAYED,    /* status 4.x.x */
	DSN_ACTION_DELIVERED,  /* status 2.x.x */
	DSN_ACTION_RELAYED,    /* 2.x.x: handed to a hop that does not speak DSN */
	DSN_ACTION_EXPANDED,   /* 2.x.x */
};

/* Should this recipient get a DSN for this action?  notify is the RCPT's
 * SMTP_NOTIFY_* bits (0: NOTIFY not given).  RFC 3461 4.1: NEVER: no DSN
 * ever; given bits: exactly those (FAILURE -> failed, DELAY -> delayed,
 * SUCCESS -> delivered/relayed/expanded); not given: failures only, plus
 * delays when the operator enabled delay notices (delay_default). */
bool dsn_should_notify(uint8_t notify, enum dsn_action action, bool delay_default);

/* Can a DSN about this message be sent at all?  False for the null sender
 * (RFC 5321 4.5.5: never bounce a bounce). */
bool dsn_needed(const struct spool_env *env);

/* One recipient's outcome.  Strings are borrowed for the call only. */
struct dsn_rcpt_result {
	uint32_t rcpt; /* index into the envelope's recipients */
	enum dsn_action action;
	const char *status; /* RFC 3463 "class.subject.detail", e.g. "5.1.1" */
	/* "smtp; 550 5.1.1 <x@y>: user unknown", or empty.  Any bytes: CR, LF
	 * and controls become spaces, runs of spaces one, malformed UTF-8 (and
	 * in the 7-bit form any non-ASCII character) '?'; cut at DSN_DIAG_MAX.
	 * Without "type;" in front it gets "smtp; " (it starts like an SMTP
	 * reply: 3 digits) or "X-ringmx; ". */
	struct spool_str diag;
	struct spool_str remote_mta; /* Remote-MTA: dns; name (or empty).  Octets
					that are not visible ASCII become '?',
					cut at DSN_NAME_MAX */
	int64_t last_attempt_s;	     /* unix time; 0: no Last-Attempt-Date */
	int64_t retry_until_s;	     /* delayed only: Will-Retry-Until; 0: none */
};

/* The caller's stored-byte source: push the message to sink(sink_ctx, ...)
 * and return 0 at the end, sink's non-zero return as soon as it gives one,
 * or -errno. */
typedef int (*dsn_source_fn)(void *ctx, spool_body_fn sink, void *sink_ctx);
/* Receives output; 0 to go on, -errno to abort dsn_build with that value. */
typedef int (*dsn_write_fn)(void *ctx, const char *p, size_t n);

struct dsn_params {
	const char *reporting_mta; /* our host name: Reporting-MTA, From: */
	const char *msgid_domain;  /* right-hand side of the Message-ID */
	int64_t now_s;		   /* Date: (unix time, written as UTC) */
	uint64_t nonce;		   /* random per DSN: Message-ID and boundary */
	/* The original: id, mail_from, envid, arrival_s, ret, flags and the
	 * recipients (encoded: rcpts; decoded: rcpt_data via spool_env_rcpt). */
	const struct spool_env *env;
	const struct dsn_rcpt_result *results;
	uint32_t result_count; /* 1..DSN_RCPT_MAX */
	dsn_source_fn source;  /* NULL: original unavailable, no part 3 */
	void *source_ctx;
	dsn_write_fn write;
	void *write_ctx;
};

/* What the caller needs to queue the DSN. */
struct dsn_info {
	uint64_t size;	     /* octets written */
	bool smtputf8;	     /* RFC 6533 form: the bounce needs SMTPUTF8 */
	bool body_8bit;	     /* 8-bit octets inside: the bounce needs 8BITMIME */
	bool original_full;  /* part 3 is the whole message */
	bool hdrs_truncated; /* part 3 is a header section cut at DSN_HDRS_MAX */
	char boundary[DSN_BOUNDARY_MAX];
	char message_id[DSN_MSGID_MAX]; /* with angle brackets */
};

/* Build the DSN for p->results and stream it to p->write.  Returns 0;
 * -EINVAL for bad parameters (null sender, empty or bad host names, a result
 * with an unknown action, a malformed status or one whose class does not fit
 * the action, a recipient index out of range, an address longer than
 * SMTP_PATH_MAX, with control characters, or too long for one line once
 * escaped); -E2BIG when result_count >
 * DSN_RCPT_MAX; -EEXIST when no boundary is free (see above); the write
 * callback's or the source's -errno (a source returning another positive
 * value gives -EIO).  Errors from parameters and from pass 1 come before any
 * byte is written, so the caller may retry (e.g. without a source); after
 * that, what was written is partial and the caller discards it. */
int dsn_build(const struct dsn_params *p, struct dsn_info *info);

/* Fill the bounce's own envelope fields: mail_from empty, the one recipient
 * *rcpt (the original sender, NOTIFY=NEVER), flags and body type from info.
 * The caller sets id, arrival, lengths and the rest when it spools it. */
void dsn_bounce_env(const struct spool_env *orig, const struct dsn_info *info,
		    struct spool_env *out, struct spool_rcpt *rcpt);

#endif
