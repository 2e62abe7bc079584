/*
 * auth/sasl — the server side of SMTP AUTH (RFC 4954) for the mechanisms
 * PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login, the de-facto
 * "Username:"/"Password:" exchange): a pure, incremental parser.
 *
 * No I/O, no allocation, no global state: (state, one line) -> (state,
 * result, reply).  Any thread may call it; one state belongs to one
 * session.  The session frames lines (smtp_line_scan) and hands over the
 * AUTH argument (text after "AUTH ") and then each client response line
 * without its CRLF.  A line longer than the framer's bound never reaches
 * this module: the session answers SASL_REPLY_TOO_LONG itself.
 *
 * Return style (the smtp_parse_rc vocabulary):
 *   SASL_AGAIN    send st->reply (a "334 ..." challenge) and pass the next
 *                 line to sasl_step();
 *   SASL_OK       credentials complete: read them with sasl_creds(), copy
 *                 them into the verification request (hpool/hpool.h), then
 *                 call sasl_clear() at once;
 *   SASL_INVALID  send st->reply; the exchange is over and the state is
 *                 already cleared.
 * Replies are complete lines without CRLF, static storage:
 *   334           challenges: "334 " (empty, RFC 4954 4), "334 VXNlcm5hbWU6"
 *                 (base64 "Username:"), "334 UGFzc3dvcmQ6" ("Password:")
 *   501 5.5.4     malformed AUTH argument (mechanism token, spaces)
 *   504 5.5.4     mechanism not PLAIN or LOGIN (RFC 4954 4)
 *   501 5.7.0     the client sent "*": cancelled (RFC 4954 4 requires 501)
 *   501 5.5.2     not strict base64 (RFC 4954 4 and 6); a PLAIN message
 *                 that does not have exactly two NULs (RFC 4616 2)
 *   500 5.5.6     a response over SASL_RESPONSE_MAX octets (RFC 4954 4)
 *   535 5.7.8     credentials that no user can have: an empty or over-long
 *                 authcid or password, a NUL inside a LOGIN field, an
 *                 authzid other than the authcid (RFC 4954 6).  Answered
 *                 without running the hash: none of these depends on
 *                 which users exist.  The session counts every 535 as a
 *                 failure (auth/throttle.h).
 *
 * Decisions:
 *   - authzid (PLAIN): accepted when empty or equal, octet for octet, to
 *     the authcid.  ringmx has no proxy authorization, so acting as another
 *     identity is refused (RFC 4616 2: the server verifies that the authcid
 *     may act as the authzid; nobody may act as anyone else).
 *   - Mechanism names are matched without regard to case (RFC 4422 3.1
 *     names are upper case; clients that send "plain" lose nothing).
 *   - "=" stands for an empty initial response only on the AUTH line (RFC
 *     4954 4); in later lines an empty response is an empty line.
 *   - LOGIN accepts an initial response as the user name ("AUTH LOGIN
 *     dXNlcg==", sent by several clients) and then asks only "Password:".
 *   - Base64 is strict (RFC 4648 4): alphabet A-Z a-z 0-9 + /, length a
 *     multiple of 4, '=' padding only at the end, no whitespace, and the
 *     unused bits before the padding must be zero (RFC 4648 3.5), so each
 *     decoded value has exactly one accepted encoding.
 *   - No SASLprep (RFC 4013) and no UTF-8 check: identities and passwords
 *     are octet strings compared exactly, as users_file stores them.
 *
 * Secrets: the decoded response (password included) lives only in
 * st->buf; sasl_clear() and every INVALID result zero it with
 * explicit_bzero().  Nothing here logs.  The caller never keeps the
 * base64 text either: it is the password in another spelling, so the
 * session must not log AUTH response lines.
 *
 * Limits (named bounds):
 *   SASL_AUTHZID_MAX, SASL_AUTHCID_MAX, SASL_PASSWD_MAX  255 octets each,
 *       the minimum RFC 4616 2 requires servers to accept;
 *   SASL_RESPONSE_MAX  1024 base64 octets per response: the largest PLAIN
 *       message (255 + 1 + 255 + 1 + 255) encoded.  RFC 4954 4 asks servers
 *       to take the largest response their mechanisms produce; 12288 is
 *       for mechanisms (GSSAPI) ringmx does not offer.
 *   sizeof(struct sasl_state) is about 1.1 KiB.
 */
#ifndef RMX_AUTH_SASL_H
#define RMX_AUTH_SASL_H

#include <stddef.h>
#include <stdint.h>

#define SASL_AUTHZID_MAX  255
#define SASL_AUTHCID_MAX  255
#define SASL_PASSWD_MAX	  255
#define SASL_PLAIN_MAX	  (SASL_AUTHZID_MAX + 1 + SASL_AUTHCID_MAX + 1 + SASL_PASSWD_MAX)
#define SASL_RESPONSE_MAX ((SASL_PLAIN_MAX + 2) / 3 * 4)
#define SASL_DECODED_MAX  (SASL_RESPONSE_MAX / 4 * 3)

/* For the session: a response line the framer found too long. */
#define SASL_REPLY_TOO_LONG "500 5.5.6 Authentication exchange line is too long"

enum sasl_rc {
	SASL_OK = 0,
	SASL_AGAIN = 1,
	SASL_INVALID = 2,
};

enum sasl_mech {
	SASL_MECH_NONE = 0,
	SASL_MECH_PLAIN,
	SASL_MECH_LOGIN,
};

enum sasl_step {
	SASL_STEP_IDLE = 0,   /* before sasl_start */
	SASL_STEP_PLAIN,      /* "334 " sent, waiting for the PLAIN message */
	SASL_STEP_LOGIN_USER, /* "Username:" sent */
	SASL_STEP_LOGIN_PASS, /* "Password:" sent */
	SASL_STEP_DONE,	      /* OK or INVALID returned */
};

struct sasl_state {
	uint8_t mech; /* enum sasl_mech, for the log */
	uint8_t step; /* enum sasl_step */
	uint16_t authcid_off, authcid_len;
	uint16_t passwd_off, passwd_len;
	const char *reply; /* after AGAIN or INVALID: the line to send */
	/* Decoded octets.  LOGIN keeps the user name at 0 and decodes the
	 * password after it, so room for one user plus one whole decoded
	 * response; +1 for the NUL that ends the password. */
	char buf[SASL_AUTHCID_MAX + 1 + SASL_DECODED_MAX + 1];
};

/* Credentials after SASL_OK; both point into st->buf, are NUL-terminated,
 * and live until sasl_clear(). */
struct sasl_creds {
	const char *authcid;
	size_t authcid_len;
	const char *passwd;
	size_t passwd_len;
};

/* Begin an exchange.  arg is the AUTH argument: "MECHANISM" or
 * "MECHANISM SP initial-response" (RFC 4954 4).  Returns enum sasl_rc. */
int sasl_start(struct sasl_state *st, const char *arg, size_t len);

/* Feed one client response line (CRLF stripped) after SASL_AGAIN. */
int sasl_step(struct sasl_state *st, const char *line, size_t len);

/* After SASL_OK: the credentials.  Asserts that the state is OK. */
void sasl_creds(const struct sasl_state *st, struct sasl_creds *out);

/* Zero the whole state (explicit_bzero) and make it IDLE. */
void sasl_clear(struct sasl_state *st);

/* Strict base64 (see Decisions) of in[0..len) into out (capacity
 * out_size).  Returns the decoded length, or -1 when the text is not
 * canonical base64 or does not fit. */
long sasl_b64_decode(const char *in, size_t len, char *out, size_t out_size);

#endif
