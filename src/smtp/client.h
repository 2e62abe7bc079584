/*
 * smtp/client — the pure protocol pieces of the outbound SMTP/LMTP client:
 * the reply parser (RFC 5321 4.2, RFC 3463 enhanced codes), EHLO/LHLO
 * capabilities, dot-stuffing of outgoing bodies (RFC 5321 4.5.2), LMTP
 * per-recipient reply accounting (RFC 2033 4.2) and reply classification
 * with the DSN diagnostic text (RFC 3464 2.3.6).
 *
 * No I/O, no allocation, no global mutable state: (state, bytes) -> (state,
 * result, slices).  Any thread may call them; one state belongs to one
 * outbound connection and is used by one thread at a time.  Return style as
 * in smtp/parse.h: SMTP_PARSE_OK / SMTP_PARSE_AGAIN / SMTP_PARSE_INVALID.
 *
 * Ownership: every buffer a state needs is inside the state (fixed size, no
 * pointers to free).  Slices and iovecs point either into the caller's bytes
 * (they live as long as those bytes) or into the state / static storage (see
 * each function).
 *
 * Limits (named bounds):
 *   SMTP_REPLY_LINE_MAX  4096 octets for one reply line including its line
 *                        end.  RFC 5321 4.5.3.1.5 says 512; real servers
 *                        send longer text, so we tolerate up to this bound
 *                        and refuse beyond it.
 *   SMTP_REPLY_LINES_MAX 100 lines in one reply
 *   SMTP_REPLY_BYTES_MAX 64 KiB for one reply, line ends included
 *   SMTP_REPLY_TEXT_MAX  512 octets of reply text kept for diagnostics
 */
#ifndef RMX_SMTP_CLIENT_H
#define RMX_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "smtp/parse.h"

#define SMTP_REPLY_LINE_MAX  4096
#define SMTP_REPLY_LINES_MAX 100
#define SMTP_REPLY_BYTES_MAX 65536
#define SMTP_REPLY_TEXT_MAX  512
/* "class.subject.detail", each of the last two 1-3 digits (RFC 3463 2). */
#define SMTP_ESC_MAX 9

/* ---- replies ---------------------------------------------------------------
 *
 * smtp_reply_parse() consumes received bytes and yields one reply line per
 * SMTP_PARSE_OK.  A reply is one or more lines "ddd-text" ending with a line
 * "ddd text" or "ddd" alone (RFC 5321 4.2.1); every line must carry the same
 * code, whose digits are 2-5, 0-5, 0-9 (4.2 Reply-code).
 *
 *  OK:      one line is complete; *line describes it and *used counts the
 *           bytes of buf consumed (through its LF).  When line->last is set
 *           the reply is complete and st->reply holds its summary.  Call
 *           again with the rest of buf: it may hold further (pipelined)
 *           replies.
 *  AGAIN:   no complete line in buf; all of it was consumed (*used == len)
 *           and the partial line kept in the state.
 *  INVALID: the peer broke the protocol (st->error says how); the
 *           connection is unusable and the caller defers its work.  *used
 *           is 0; the state stays INVALID until smtp_reply_init().
 *
 * Liberal where it costs nothing: a bare LF ends a line (flagged
 * SMTP_REPLY_BARE_LF).  Strict where it would hurt: a NUL or a CR that is not
 * part of the line end is INVALID (nothing legitimate sends them, and text
 * with them must not reach logs or DSNs), as is a line over the bounds.
 *
 * Lifetimes: line->text points into buf when the whole line was in buf, or
 * into st->line when the line straddled calls; treat it as valid until the
 * next call on this state.  st->reply is valid after an OK with line->last
 * until the next call (which starts the next reply).
 */
enum smtp_reply_error {
	SMTP_REPLY_E_NONE = 0,
	SMTP_REPLY_E_SYNTAX,	/* code not ddd in range, or no SP/'-' after it */
	SMTP_REPLY_E_MIXED,	/* a line's code differs from the first line's */
	SMTP_REPLY_E_OCTET,	/* NUL or bare CR in a line */
	SMTP_REPLY_E_LINE_LONG, /* line over SMTP_REPLY_LINE_MAX */
	SMTP_REPLY_E_LINES,	/* more than SMTP_REPLY_LINES_MAX lines */
	SMTP_REPLY_E_BYTES,	/* more than SMTP_REPLY_BYTES_MAX bytes */
};

enum {
	SMTP_REPLY_BARE_LF = 1u << 0,	     /* a line ended with LF alone */
	SMTP_REPLY_TEXT_TRUNCATED = 1u << 1, /* reply.text holds a prefix */
};

struct smtp_reply_line {
	struct smtp_slice text; /* after "ddd-"/"ddd ", line end excluded */
	uint16_t code;
	uint16_t index; /* 0 for the first line of the reply */
	bool last;	/* "ddd text" / "ddd": the reply ends here */
	bool bare_lf;	/* this line ended with LF alone */
};

/* The summary of one reply, copied (bounded) so it outlives the buffers the
 * reply arrived in.  text joins the lines' text with one space; an enhanced
 * code repeated at the start of continuation lines is dropped; printable
 * ASCII and well-formed UTF-8 (RFC 3629) but C1 controls are kept, every
 * other octet becomes '?' (no CR, LF or other control), so it can go into a DSN (whose
 * builder keeps UTF-8 only in the RFC 6533 form) or a log line (escaped
 * there).  A cut at SMTP_REPLY_TEXT_MAX never splits a character.  Not
 * NUL-terminated. */
struct smtp_reply {
	uint16_t code;			/* 200..559 */
	uint16_t lines;			/* lines in the reply */
	uint32_t bytes;			/* bytes of the reply, line ends included */
	uint32_t flags;			/* SMTP_REPLY_* */
	uint8_t esc_len;		/* 0: no enhanced status code */
	char esc[SMTP_ESC_MAX + 1];	/* "5.1.1", NUL-terminated */
	uint16_t text_len;		/* octets in text */
	char text[SMTP_REPLY_TEXT_MAX]; /* first line's text includes the esc */
};

struct smtp_reply_state {
	struct smtp_reply reply; /* the reply being parsed / just completed */
	uint32_t fill;		 /* octets of a straddling line held in line[] */
	uint8_t error;		 /* enum smtp_reply_error; sticky */
	uint8_t done;		 /* internal: reply complete, next line starts anew */
	/* The one bounded copy: a line that straddles receive buffers is
	 * gathered here, never more than SMTP_REPLY_LINE_MAX - 1 octets (the
	 * LF is never stored).  Owned by the state. */
	char line[SMTP_REPLY_LINE_MAX];
};

void smtp_reply_init(struct smtp_reply_state *st);
int smtp_reply_parse(struct smtp_reply_state *st, const char *buf, size_t len, size_t *used,
		     struct smtp_reply_line *line);

/* How many replies complete in buf[0..len) when it is fed to st as st stands
 * (st is not changed), so a caller can weigh a whole read against the
 * replies it is owed before acting on any of them.  *end is the offset just
 * past the LF of the last reply that completes (0 when none does); bytes
 * from *end on begin a reply not yet complete.  Lines count by their shape
 * alone ("ddd " or "ddd" ends a reply, as smtp_reply_parse reads them); a
 * line smtp_reply_parse would refuse is left for it to refuse. */
void smtp_reply_count(const struct smtp_reply_state *st, const char *buf, size_t len,
		      uint32_t *replies, size_t *end);

/* ---- EHLO / LHLO capabilities (RFC 5321 4.1.1.1, 2.2.2) --------------------
 *
 * Fed the lines of a 250 reply to EHLO (LHLO for LMTP: same format).  The
 * first line is the server's name and greeting and is skipped; every other
 * line is "keyword [params]", keywords case-insensitive, unknown ones
 * ignored.  SIZE without a value, with 0, or with a value that is not a
 * number leaves size_max 0: no limit announced (RFC 1870 4).  "AUTH=mech"
 * (the pre-RFC 4954 form some servers still send) counts like "AUTH mech".
 */
enum {
	SMTP_EXT_PIPELINING = 1u << 0,		/* RFC 2920 */
	SMTP_EXT_SIZE = 1u << 1,		/* RFC 1870 */
	SMTP_EXT_8BITMIME = 1u << 2,		/* RFC 6152 */
	SMTP_EXT_SMTPUTF8 = 1u << 3,		/* RFC 6531 */
	SMTP_EXT_DSN = 1u << 4,			/* RFC 3461 */
	SMTP_EXT_STARTTLS = 1u << 5,		/* RFC 3207 */
	SMTP_EXT_CHUNKING = 1u << 6,		/* RFC 3030 */
	SMTP_EXT_ENHANCEDSTATUSCODES = 1u << 7, /* RFC 2034 */
	SMTP_EXT_AUTH = 1u << 8,		/* RFC 4954 */
};

enum {
	SMTP_AUTH_PLAIN = 1u << 0,
	SMTP_AUTH_LOGIN = 1u << 1,
	SMTP_AUTH_CRAM_MD5 = 1u << 2,
	SMTP_AUTH_DIGEST_MD5 = 1u << 3,
	SMTP_AUTH_SCRAM_SHA_1 = 1u << 4,
	SMTP_AUTH_SCRAM_SHA_256 = 1u << 5,
	SMTP_AUTH_XOAUTH2 = 1u << 6,
	SMTP_AUTH_OAUTHBEARER = 1u << 7,
	SMTP_AUTH_EXTERNAL = 1u << 8,
	SMTP_AUTH_GSSAPI = 1u << 9,
	SMTP_AUTH_NTLM = 1u << 10,
};

struct smtp_ehlo_caps {
	uint32_t ext;	   /* SMTP_EXT_* */
	uint32_t auth;	   /* SMTP_AUTH_* offered */
	uint64_t size_max; /* SIZE value in octets; 0: no limit announced */
};

void smtp_ehlo_begin(struct smtp_ehlo_caps *caps);
/* One line of the reply; lines with a code other than 250 are ignored. */
void smtp_ehlo_line(struct smtp_ehlo_caps *caps, const struct smtp_reply_line *line);
/* A complete reply in buf[0..len): OK (caps filled), AGAIN (the reply is not
 * complete), INVALID (malformed, not 250, or bytes after the reply).  Uses a
 * reply state on the stack (about 5 KiB). */
int smtp_ehlo_parse(const char *buf, size_t len, struct smtp_ehlo_caps *caps);

/* ---- dot-stuffing (RFC 5321 4.5.2) -----------------------------------------
 *
 * Bodies stored WITHOUT stuffing (received with BDAT) and sent with DATA:
 * smtp_stuff_iov() describes the bytes to send as iovecs pointing into the
 * input, with a static "." inserted before every '.' that starts a line, so
 * the caller can writev/sendmsg without copying the body.  A line starts at
 * the start of the body and after every LF (as smtp_unstuff reads it: a
 * stored body has no bare LF — the server refused those — and if one were
 * there, stuffing after it is the safe side: no receiver can mistake it for
 * the end of data).  Adjacent input bytes share one iovec, so a body without
 * line-initial dots is one iovec per call.
 *
 * It fills at most iov_max entries and returns how many; *used is the input
 * bytes they cover (less than len when iov_max ran out: call again with the
 * rest).  The state carries "at line start" and the line end across calls.
 * The static "." lives forever; the other entries live as long as in.
 *
 * smtp_stuff_end() gives the terminator: ".\r\n" when the body is empty or
 * ends with CRLF, else "\r\n.\r\n" — the message then gains a final CRLF,
 * which RFC 5321 4.1.1.4 requires before the terminator anyway.
 */
struct smtp_stuff_state {
	uint64_t in_len; /* input bytes covered so far */
	uint8_t bol;	 /* next input byte starts a line */
	uint8_t last_cr; /* last input byte was CR */
	uint8_t crlf;	 /* input so far is empty or ends with CRLF */
};

void smtp_stuff_begin(struct smtp_stuff_state *st);
size_t smtp_stuff_iov(struct smtp_stuff_state *st, const char *in, size_t len, struct iovec *iov,
		      size_t iov_max, size_t *used);
/* Fills *iov with the terminator (static storage); returns its length. */
size_t smtp_stuff_end(const struct smtp_stuff_state *st, struct iovec *iov);

/*
 * Bodies stored WITH stuffing (received with DATA; the stored bytes end with
 * the CRLF before the terminator) are sent as they are, then ".\r\n".
 * smtp_stuffed_scan() checks, as the bytes stream out, that they cannot end
 * the data early: INVALID when a line (start of body or after LF) begins with
 * '.' followed by CR or LF, else AGAIN.  smtp_stuffed_end() returns OK and
 * fills *iov with ".\r\n" when the body is empty or ends with CRLF, INVALID
 * otherwise.  INVALID means the spool does not hold what DATA stored: do not
 * send it (mid-DATA there is no way back but closing the connection).
 */
struct smtp_stuffed_state {
	uint64_t in_len;
	uint8_t bol;	 /* next byte starts a line */
	uint8_t dot;	 /* the current line began with '.', nothing after yet */
	uint8_t last_cr; /* last byte was CR */
	uint8_t crlf;	 /* empty so far or ends with CRLF */
	uint8_t bad;	 /* a terminator-like line was seen; sticky */
};

void smtp_stuffed_begin(struct smtp_stuffed_state *st);
int smtp_stuffed_scan(struct smtp_stuffed_state *st, const char *in, size_t len);
int smtp_stuffed_end(const struct smtp_stuffed_state *st, struct iovec *iov);

/* ---- LMTP per-recipient replies (RFC 2033 4.2) -----------------------------
 *
 * After the final "." of DATA an LMTP server answers once per RCPT it
 * accepted, in RCPT order.  smtp_lmtp_begin() takes that count (0: do not
 * send DATA at all; RFC 2033 4.2 says the server answers 503).  Each complete
 * reply then goes to smtp_lmtp_reply(), which gives the index (0-based among
 * the accepted recipients) it belongs to and returns AGAIN while more are
 * due, OK for the last one, INVALID for a reply none was due for.
 */
struct smtp_lmtp_tally {
	uint32_t accepted;  /* RCPTs accepted before DATA */
	uint32_t remaining; /* replies still due */
};

void smtp_lmtp_begin(struct smtp_lmtp_tally *t, uint32_t accepted);
int smtp_lmtp_reply(struct smtp_lmtp_tally *t, uint32_t *rcpt_index);

/* ---- replies owed (RFC 5321 4.1.1 and 4.3.2, RFC 2920 3.1, RFC 2033 4.2) --
 *
 * A server answers every command once, in the order the commands came (a
 * PIPELINING group included), with one exception: LMTP answers the final dot
 * once per recipient its RCPT accepted.  The client writes down each command
 * as it writes it (smtp_owed_add) and takes one down per complete reply
 * (smtp_owed_take), so every reply is matched to its command by count alone
 * and nothing a peer sends can shift the matching without being seen:
 *
 *  - a reply when nothing is owed answers nothing (SMTP_ASK_NONE);
 *  - a read that holds more complete replies than the commands already sent
 *    are owed, or any byte after the last one owed, carries replies nobody
 *    asked for: smtp_owed_check() says SMTP_OWED_SURPLUS before any of them
 *    is acted on.  After the 220 to STARTTLS this is the response injection
 *    of CVE-2011-0411 seen from the client: bytes a man in the middle put
 *    there would be read as replies to commands sent inside TLS.
 *  - bytes received can only answer commands already handed to a send:
 *    smtp_owed_recv() fixes that budget when bytes arrive, so a reply sent
 *    ahead of its command (with the previous one) is surplus too.
 *  - smtp_reply_fits() says whether a code can answer the command at all
 *    (a 250 to DATA, a 354 to RCPT, a 3xx to the final dot cannot).
 *
 * Commands of one kind in a row share a run (a PIPELINING group is at most
 * MAIL, RCPT x n, DATA), so SMTP_OWED_RUNS bounds the kinds in flight, not
 * the commands.  Pure; one per connection.
 */
enum smtp_ask {
	SMTP_ASK_NONE = 0, /* no command: the reply answers nothing */
	SMTP_ASK_GREETING, /* the server speaks first on connect (RFC 5321 3.1) */
	SMTP_ASK_EHLO,	   /* EHLO or LHLO */
	SMTP_ASK_HELO,
	SMTP_ASK_STARTTLS,
	SMTP_ASK_MAIL,
	SMTP_ASK_RCPT,
	SMTP_ASK_DATA,
	SMTP_ASK_DOT, /* the final "." of DATA */
	SMTP_ASK_RSET,
	SMTP_ASK_QUIT,
	SMTP_ASK_COUNT,
};

#define SMTP_OWED_RUNS 8

enum smtp_owed_verdict {
	SMTP_OWED_OK = 0,
	SMTP_OWED_UNASKED, /* bytes when no reply is owed */
	SMTP_OWED_SURPLUS, /* more replies than owed, or bytes after the last one owed */
};

struct smtp_owed {
	uint8_t ask[SMTP_OWED_RUNS]; /* enum smtp_ask of each run, oldest at head */
	uint32_t count[SMTP_OWED_RUNS];
	uint8_t head, runs;
	uint32_t total;	 /* replies owed, all runs */
	uint32_t unsent; /* of total: commands written but not handed to a send */
	uint32_t budget; /* replies the bytes being read may hold */
};

void smtp_owed_init(struct smtp_owed *o);
/* n replies owed for commands just written (unsent until smtp_owed_sent).
 * false: SMTP_OWED_RUNS runs are in flight already (a caller's bug). */
bool smtp_owed_add(struct smtp_owed *o, enum smtp_ask ask, uint32_t n);
/* Every command written so far has been handed to a send. */
void smtp_owed_sent(struct smtp_owed *o);
/* Bytes arrived: they may answer only the commands already sent. */
void smtp_owed_recv(struct smtp_owed *o);
/* A read of len bytes in which smtp_reply_count found replies completing,
 * the last ending at end: may the caller act on it? */
enum smtp_owed_verdict smtp_owed_check(const struct smtp_owed *o, uint32_t replies, size_t end,
				       size_t len);
/* One complete reply: the command it answers (taken off the owed list), or
 * SMTP_ASK_NONE when the budget of this read is spent. */
enum smtp_ask smtp_owed_take(struct smtp_owed *o);
/* The command the last reply of the current budget answers (NONE: 0). */
enum smtp_ask smtp_owed_last(const struct smtp_owed *o);
/* Can code answer ask (RFC 5321 4.3.2, RFC 3207 4, RFC 2033 4.2)?  2xx, 4xx
 * and 5xx answer everything but DATA, which takes 354, 4xx or 5xx only; no
 * other command takes a 3xx; STARTTLS goes on only with 220. */
bool smtp_reply_fits(enum smtp_ask ask, uint16_t code);
/* "DATA", "RCPT", ... for logs. */
const char *smtp_ask_name(enum smtp_ask ask);

/* ---- classification (RFC 5321 4.2.1) ---------------------------------------
 *
 * What a reply means for a recipient or message: 2xx done, 3xx intermediate
 * (354 to DATA, 334 to AUTH: go on), 4xx defer, 5xx bounce.  Code 0 stands
 * for "no reply" (connection lost, timeout, INVALID reply): defer.
 */
enum smtp_outcome {
	SMTP_OUTCOME_DONE = 0,
	SMTP_OUTCOME_MORE,
	SMTP_OUTCOME_DEFER,
	SMTP_OUTCOME_BOUNCE,
};

enum smtp_outcome smtp_reply_outcome(uint16_t code);

/* Is this reply to RCPT the hop's limit on recipients per transaction ("too
 * many recipients", RFC 5321 4.5.3.1.10), not a verdict on the recipient?
 * Then the recipient goes in the next transaction, at once.  452 is the
 * code for it, unless its enhanced code names another cause (4.2.2 mailbox
 * full, 4.3.1 out of storage); a 552 counts only with X.5.3 (RFC 3463 "too
 * many recipients") or those words in its text: RFC 821 gave 552 to this
 * case and 4.5.3.1.10 asks clients to read it as temporary, but a 552
 * without either is "exceeded storage allocation", a real refusal. */
bool smtp_reply_rcpt_overflow(const struct smtp_reply *r);

/* RFC 3464 2.3.6 Diagnostic-Code, "smtp; 550 5.1.1 <x>: unknown user",
 * written NUL-terminated into out[0..cap) (truncated to fit, never inside a
 * UTF-8 character; cap >= 1); returns its length.  No CR, LF or other
 * control octets; UTF-8 as reply.text has it. */
size_t smtp_reply_diag(const struct smtp_reply *r, char *out, size_t cap);

/* RFC 3464 2.3.4 Status: the reply's enhanced code when it has one, else
 * "2.0.0"/"4.0.0"/"5.0.0" from the code's class (RFC 3463 3.1: x.0.0 when
 * nothing more is known).  Writes NUL-terminated into out; returns length. */
size_t smtp_reply_status(const struct smtp_reply *r, char out[SMTP_ESC_MAX + 1]);

#endif
