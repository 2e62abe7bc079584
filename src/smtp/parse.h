/*
 * smtp/parse — pure, incremental SMTP parsers: command-line framing, command
 * parsing (RFC 5321 4.1 with the ESMTP parameters ringmx speaks) and the
 * DATA/BDAT body scanner.
 *
 * No I/O, no allocation, no global state: (state, bytes) -> (state, result,
 * slices).  Any thread may call them.  Slices point into the caller's bytes
 * and live exactly as long as those bytes (for the server: until the
 * provided buffer they came from is returned to the ring).
 *
 * Return style: SMTP_PARSE_OK / SMTP_PARSE_AGAIN / SMTP_PARSE_INVALID.
 * On INVALID, the result carries the reply to send (code + enhanced text),
 * so the session never re-derives why a line was refused.
 *
 * Limits (named bounds, RFC 5321 4.5.3.1):
 *   SMTP_CMD_LINE_MAX  512 octets for a command line including CRLF
 *   SMTP_TEXT_LINE_MAX 1000 octets for a text line including CRLF
 *   SMTP_PATH_MAX      256 octets for a reverse/forward path
 *   SMTP_LOCAL_MAX     64 octets for a local part
 *   SMTP_DOMAIN_MAX    255 octets for a domain
 */
#ifndef RMX_SMTP_PARSE_H
#define RMX_SMTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTP_CMD_LINE_MAX 512 /* any command line, CRLF included */
/* MAIL and RCPT may be longer by what their extensions add: RFC 3461 4
 * (RET/ENVID +100 on MAIL, NOTIFY/ORCPT +500 on RCPT), RFC 4954 5 (AUTH=
 * +500 on MAIL).  Framing accepts up to the largest; smtp_cmd_line_max()
 * gives each verb's own bound, which the session enforces after parsing. */
#define SMTP_MAIL_LINE_MAX (SMTP_CMD_LINE_MAX + 100 + 500)
#define SMTP_RCPT_LINE_MAX (SMTP_CMD_LINE_MAX + 500)
#define SMTP_LINE_SCAN_MAX SMTP_MAIL_LINE_MAX
#define SMTP_TEXT_LINE_MAX 1000
#define SMTP_PATH_MAX	   256
#define SMTP_LOCAL_MAX	   64
#define SMTP_DOMAIN_MAX	   255
#define SMTP_ENVID_MAX	   100 /* RFC 3461 4.4 */
#define SMTP_ORCPT_MAX	   500 /* RFC 3461 4.2 */

enum smtp_parse_rc {
	SMTP_PARSE_OK = 0,
	SMTP_PARSE_AGAIN = 1,
	SMTP_PARSE_INVALID = 2,
};

struct smtp_slice {
	const char *ptr;
	uint32_t len;
};

/* ---- command-line framing ------------------------------------------------
 *
 * smtp_line_scan() looks for the end of one command line in buf[0..len).
 * The state carries what was seen of the current line across calls (a line
 * may straddle two receive buffers).  On return *used is the number of bytes
 * of buf that belong to the current line (including its CRLF when complete).
 *
 *  AGAIN:   no line end yet; all len bytes belong to the line (*used == len).
 *  OK:      the line ends inside buf at *used (CRLF consumed). st->line_len is
 *           the length of the whole line without CRLF (over all calls).
 *  INVALID: the line is complete (its LF was reached, *used past it) but must
 *           be refused: st->error says why (bare CR, bare LF, NUL, too long).
 *           A bare LF (LF not preceded by CR) ends the line for framing but
 *           makes it INVALID, so a smuggled command never runs.
 *
 * After OK or INVALID call smtp_line_reset() before the next line.
 * Over-long lines: bytes past SMTP_LINE_SCAN_MAX are still consumed (never
 * stored) until the LF, then INVALID with SMTP_LINE_TOO_LONG.
 */
enum smtp_line_error {
	SMTP_LINE_OK = 0,
	SMTP_LINE_BARE_CR,
	SMTP_LINE_BARE_LF,
	SMTP_LINE_NUL,
	SMTP_LINE_TOO_LONG,
};

struct smtp_line_state {
	uint32_t line_len; /* octets of the line so far, CR/LF excluded */
	uint8_t saw_cr;	   /* last octet was CR */
	uint8_t error;	   /* enum smtp_line_error, first one seen */
};

void smtp_line_reset(struct smtp_line_state *st);
int smtp_line_scan(struct smtp_line_state *st, const char *buf, size_t len, size_t *used);

/* ---- commands ------------------------------------------------------------ */

enum smtp_verb {
	SMTP_VERB_UNKNOWN = 0,
	SMTP_VERB_HELO,
	SMTP_VERB_EHLO,
	SMTP_VERB_MAIL,
	SMTP_VERB_RCPT,
	SMTP_VERB_DATA,
	SMTP_VERB_BDAT,
	SMTP_VERB_RSET,
	SMTP_VERB_NOOP,
	SMTP_VERB_QUIT,
	SMTP_VERB_VRFY,
	SMTP_VERB_EXPN,
	SMTP_VERB_HELP,
	SMTP_VERB_STARTTLS,
	SMTP_VERB_AUTH,
};

enum smtp_body_type {
	SMTP_BODY_UNSPEC = 0,
	SMTP_BODY_7BIT,
	SMTP_BODY_8BITMIME,
	SMTP_BODY_BINARYMIME, /* parsed so it can be refused with 555/504 */
};

enum smtp_ret {
	SMTP_RET_UNSPEC = 0,
	SMTP_RET_FULL,
	SMTP_RET_HDRS,
};

/* RFC 3461 NOTIFY: NEVER alone, or any of SUCCESS/FAILURE/DELAY. */
enum {
	SMTP_NOTIFY_NEVER = 1u << 0,
	SMTP_NOTIFY_SUCCESS = 1u << 1,
	SMTP_NOTIFY_FAILURE = 1u << 2,
	SMTP_NOTIFY_DELAY = 1u << 3,
};

/* A mailbox of MAIL/RCPT after parsing.  Source routes ("@a,@b:") are
 * accepted and dropped (RFC 5321 4.1.1.3 / C); '%' and '!' stay part of the
 * local part and never select a relay.  The domain is what relay policy
 * sees.  An address literal keeps its brackets in domain. */
struct smtp_path {
	struct smtp_slice local;  /* as written (quotes kept); empty for <> */
	struct smtp_slice domain; /* empty for <> and for <Postmaster> */
	bool null;		  /* "<>" (MAIL only) */
	bool postmaster;	  /* "<Postmaster>" without domain (RCPT only) */
	bool utf8;		  /* non-ASCII octets present (needs SMTPUTF8) */
};

struct smtp_mail_params {
	bool has_size;
	uint64_t size;
	enum smtp_body_type body;
	bool smtputf8;
	enum smtp_ret ret;
	struct smtp_slice envid; /* xtext as received; validated */
	struct smtp_slice auth;	 /* AUTH= value as received (RFC 4954 5) */
};

struct smtp_rcpt_params {
	uint8_t notify;		 /* SMTP_NOTIFY_* bits; 0: unspecified */
	struct smtp_slice orcpt; /* "addr-type;xtext" as received; validated */
};

struct smtp_cmd {
	enum smtp_verb verb;
	struct smtp_slice arg; /* text after the verb and its space (HELO/EHLO
				  domain, VRFY/HELP/AUTH argument, BDAT args) */
	struct smtp_path path; /* MAIL, RCPT */
	union {
		struct smtp_mail_params mail;
		struct smtp_rcpt_params rcpt;
	};
	uint64_t bdat_size; /* BDAT */
	bool bdat_last;	    /* BDAT ... LAST */

	/* Set on SMTP_PARSE_INVALID: the complete reply line without CRLF,
	 * e.g. "501 5.1.7 Bad sender address syntax".  Static storage. */
	const char *reply;
};

/* Parse one complete command line (CRLF already stripped; it must not
 * contain CR, LF or NUL — smtp_line_scan refused those).  Verbs are
 * case-insensitive.  Arguments are checked as RFC 5321 says:
 *  - unknown verb: 500 5.5.2; missing/extra argument: 501 5.5.4;
 *  - MAIL needs "FROM:<path>", RCPT "TO:<path>" (one optional space after
 *    the colon is tolerated, as most MTAs do); bad path 501 5.1.7 (MAIL) /
 *    501 5.1.3 (RCPT); path too long 501 5.1.x;
 *  - unknown ESMTP parameter 555 5.5.4; malformed or duplicate 501 5.5.4;
 *    SIZE not a number 501 5.5.4; BODY=BINARYMIME 504 5.5.4 (not offered);
 *  - DATA/RSET/QUIT/STARTTLS with an argument 501 5.5.4; NOOP may have one;
 *  - BDAT: "BDAT <size> [LAST]", else 501 5.5.4.
 * The session, not the parser, checks sequencing and policy. */
int smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *cmd);

/* The longest line (CRLF included) a verb may use; see SMTP_MAIL_LINE_MAX. */
size_t smtp_cmd_line_max(enum smtp_verb verb);

/* Validate an RFC 3461 xtext (ENVID, ORCPT value): "+" followed by two
 * upper-case hex digits, other octets 33..126 except '+' and '='. */
bool smtp_xtext_valid(const char *s, size_t len);

/* Length of the well-formed UTF-8 character at p[0..n) (RFC 3629 4: no
 * overlong forms, no surrogates, nothing past U+10FFFF): 1 for ASCII, 2..4,
 * or 0 when the octets there are not one.  n >= 1. */
size_t smtp_utf8_len(const char *p, size_t n);

/* ---- message body --------------------------------------------------------
 *
 * smtp_data_scan() walks body bytes as they arrive.  In DATA mode (dot=true)
 * it finds the end of data: only CRLF "." CRLF ends it (the CRLF that ended
 * the DATA command counts as the first one, so "." CRLF at the very start is
 * an empty message).  A bare CR, a bare LF or a NUL anywhere sets a flag and
 * never ends the data early — so "\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n" and
 * every other near-miss is just content (CVE-2023-51764/5/6); the session
 * refuses the whole message after the real end.  In BDAT mode (dot=false)
 * there is no terminator: the caller feeds exactly the chunk's bytes.
 *
 * Return: AGAIN: all len bytes consumed, no end yet.  OK: end of data found,
 * *used = bytes of buf up to and including the final ".\r\n".  Never INVALID:
 * problems are flags, answered after the end.
 *
 * st->wire_len counts every byte consumed (terminator included); the message
 * as stored is wire_len - 3 bytes for DATA.  st->stuff_len counts the
 * stuffing dots among them (RFC 5321 4.5.2: a "." that begins a line and is
 * not the terminator's; the receiver drops it).  Also tracked: the longest line
 * (flag LONG_LINE past SMTP_TEXT_LINE_MAX incl. CRLF), the header section
 * (up to the first empty line) and the number of "Received:" header fields
 * in it (case-insensitive, at line start), and non-ASCII octets (8BIT;
 * 8BIT_HEADER too when one is in the header section: RFC 6532 header fields,
 * which only an SMTPUTF8 hop may be sent, RFC 6531 3.4).
 */
enum {
	SMTP_DATA_BARE_CR = 1u << 0,
	SMTP_DATA_BARE_LF = 1u << 1,
	SMTP_DATA_NUL = 1u << 2,
	SMTP_DATA_LONG_LINE = 1u << 3,
	SMTP_DATA_8BIT = 1u << 4,
	SMTP_DATA_8BIT_HEADER = 1u << 5,
};

struct smtp_data_state {
	uint64_t wire_len;	 /* bytes consumed so far */
	uint64_t stuff_len;	 /* of them, stuffing dots (DATA mode) */
	uint32_t line_len;	 /* octets in the current line, CRLF excluded */
	uint32_t received_count; /* "Received:" fields in the header section */
	uint32_t flags;		 /* SMTP_DATA_* */
	uint8_t phase;		 /* internal: position relative to CR/LF/dot */
	uint8_t in_header;	 /* still inside the header section */
	uint8_t hdr_match;	 /* internal: progress matching "received:" */
	uint8_t dot;		 /* DATA mode (dot-terminated, dot-stuffed) */
};

void smtp_data_begin(struct smtp_data_state *st, bool dot);
int smtp_data_scan(struct smtp_data_state *st, const char *buf, size_t len, size_t *used);
/* The message octets consumed so far as RFC 1870 counts them: no stuffing
 * dot, none of the terminator, nor the "." or ".\r" at the end of what was
 * fed that may still turn out to begin it — so a size limit checked after
 * any call (however the bytes were split) counts only the message. */
uint64_t smtp_data_size(const struct smtp_data_state *st);
/* The bytes so far are empty or end with CRLF (a body relayed with DATA
 * gains a CRLF otherwise, RFC 5321 4.1.1.4). */
bool smtp_data_ends_line(const struct smtp_data_state *st);
/* The bytes so far end with a CR whose LF has not come.  At the real end
 * of BDAT data (RFC 3030: no terminator follows) that CR is bare (RFC 5321
 * 2.3.8): relayed with DATA it would reach the next hop as "\r\r\n.\r\n". */
bool smtp_data_ends_cr(const struct smtp_data_state *st);

/* Undo dot-stuffing of stored DATA bytes (a line starting ".." loses one
 * dot).  *line_start carries "at the start of a line" across calls (start
 * with true).  Writes at most len bytes to out; returns bytes written. */
size_t smtp_unstuff(const char *in, size_t len, char *out, bool *line_start);

#endif
