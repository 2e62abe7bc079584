/* auth/sasl — SMTP AUTH PLAIN and LOGIN exchange parser; contract in sasl.h. */
#include "auth/sasl.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static_assert(SASL_RESPONSE_MAX % 4 == 0, "a response bound is whole base64 quanta");
static_assert(SASL_DECODED_MAX >= SASL_PLAIN_MAX, "the largest PLAIN message decodes");
static_assert(sizeof(((struct sasl_state *)0)->buf) <= UINT16_MAX, "offsets are 16-bit");

/* RFC 4422 3.1: a mechanism name is 1 to 20 of A-Z, 0-9, '-', '_'. */
#define SASL_MECH_NAME_MAX 20

static const char R_EMPTY[] = "334 ";
static const char R_USERNAME[] = "334 VXNlcm5hbWU6";
static const char R_PASSWORD[] = "334 UGFzc3dvcmQ6";
static const char R_SYNTAX[] = "501 5.5.4 Syntax: AUTH mechanism [initial-response]";
static const char R_MECH[] = "504 5.5.4 Unrecognized authentication type";
static const char R_CANCEL[] = "501 5.7.0 Authentication cancelled";
static const char R_BASE64[] = "501 5.5.2 Cannot decode base64 response";
static const char R_PLAIN[] = "501 5.5.2 Malformed PLAIN response";
static const char R_TOO_LONG[] = SASL_REPLY_TOO_LONG;
static const char R_CREDS[] = "535 5.7.8 Authentication credentials invalid";

/* Value of one base64 character, or -1 (RFC 4648 4, table 1). */
static int sasl_b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decode one quantum of four characters; pads counts its '='.  Padding is
 * only allowed in the last quantum, as "xx==" or "xxx=". */
static bool sasl_b64_quantum(const unsigned char *q, bool last, uint32_t *bits, int *pads)
{
	int v[4];
	*pads = 0;
	if (last && q[3] == '=')
		*pads = q[2] == '=' ? 2 : 1;
	for (int i = 0; i < 4 - *pads; i++) {
		v[i] = sasl_b64_value(q[i]);
		if (v[i] < 0)
			return false;
	}
	for (int i = 4 - *pads; i < 4; i++)
		v[i] = 0;
	*bits = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
	/* RFC 4648 3.5: the bits a pad hides must be zero, else "QQ==" and
	 * "QR==" would both decode to "A" and a filter comparing encodings
	 * could be bypassed. */
	if (*pads == 2 && (*bits & 0xffffu) != 0)
		return false;
	if (*pads == 1 && (*bits & 0xffu) != 0)
		return false;
	return true;
}

long sasl_b64_decode(const char *in, size_t len, char *out, size_t out_size)
{
	assert(in != NULL || len == 0);
	if (len % 4 != 0 || len / 4 * 3 > out_size + 2)
		return -1;
	size_t n = 0;
	for (size_t i = 0; i < len; i += 4) {
		uint32_t bits;
		int pads;
		if (!sasl_b64_quantum((const unsigned char *)in + i, i + 4 == len, &bits, &pads))
			return -1;
		if (n + 3 - (size_t)pads > out_size)
			return -1;
		out[n++] = (char)(bits >> 16);
		if (pads < 2)
			out[n++] = (char)(bits >> 8 & 0xff);
		if (pads < 1)
			out[n++] = (char)(bits & 0xff);
	}
	return (long)n;
}

static int sasl_fail(struct sasl_state *st, const char *reply)
{
	sasl_clear(st);
	st->step = SASL_STEP_DONE;
	st->reply = reply;
	return SASL_INVALID;
}

static int sasl_again(struct sasl_state *st, enum sasl_step next, const char *reply)
{
	st->step = (uint8_t)next;
	st->reply = reply;
	return SASL_AGAIN;
}

/* Decode one client response into st->buf[off..); *n gets its length.
 * Returns 0 or the SASL_INVALID of sasl_fail(). */
static int sasl_decode(struct sasl_state *st, const char *s, size_t len, size_t off, size_t *n)
{
	assert(off < sizeof(st->buf));
	if (len == 1 && s[0] == '*')
		return sasl_fail(st, R_CANCEL);
	if (len > SASL_RESPONSE_MAX)
		return sasl_fail(st, R_TOO_LONG);
	/* Keep one octet for the NUL that ends the last field. */
	long r = sasl_b64_decode(s, len, st->buf + off, sizeof(st->buf) - off - 1);
	if (r < 0)
		return sasl_fail(st, R_BASE64);
	*n = (size_t)r;
	st->buf[off + *n] = '\0';
	return 0;
}

/* RFC 4616 2: message = [authzid] NUL authcid NUL passwd. */
static int sasl_plain(struct sasl_state *st, const char *s, size_t len)
{
	size_t n;
	if (sasl_decode(st, s, len, 0, &n) != 0)
		return SASL_INVALID;
	const char *m = st->buf;
	const char *z1 = memchr(m, '\0', n);
	const char *z2 = z1 != NULL ? memchr(z1 + 1, '\0', n - (size_t)(z1 + 1 - m)) : NULL;
	if (z2 == NULL || memchr(z2 + 1, '\0', n - (size_t)(z2 + 1 - m)) != NULL)
		return sasl_fail(st, R_PLAIN);
	size_t zid_len = (size_t)(z1 - m), cid_len = (size_t)(z2 - z1 - 1);
	size_t pw_len = n - (size_t)(z2 + 1 - m);
	if (zid_len > SASL_AUTHZID_MAX || cid_len == 0 || cid_len > SASL_AUTHCID_MAX ||
	    pw_len == 0 || pw_len > SASL_PASSWD_MAX)
		return sasl_fail(st, R_CREDS);
	/* No proxy authorization: the authzid may only name the authcid. */
	if (zid_len != 0 && (zid_len != cid_len || memcmp(m, z1 + 1, cid_len) != 0))
		return sasl_fail(st, R_CREDS);
	st->authcid_off = (uint16_t)(z1 + 1 - m);
	st->authcid_len = (uint16_t)cid_len;
	st->passwd_off = (uint16_t)(z2 + 1 - m);
	st->passwd_len = (uint16_t)pw_len;
	st->step = SASL_STEP_DONE;
	st->reply = NULL;
	return SASL_OK;
}

/* One LOGIN field: 1..max octets without NUL (crypt(3) and users_file
 * cannot hold one, and RFC 4616's SAFE excludes it for PLAIN alike). */
static int sasl_login_field(struct sasl_state *st, const char *s, size_t len, size_t off,
			    size_t max, size_t *n)
{
	if (sasl_decode(st, s, len, off, n) != 0)
		return SASL_INVALID;
	if (*n == 0 || *n > max || memchr(st->buf + off, '\0', *n) != NULL)
		return sasl_fail(st, R_CREDS);
	return 0;
}

static int sasl_login_user(struct sasl_state *st, const char *s, size_t len)
{
	size_t n;
	if (sasl_login_field(st, s, len, 0, SASL_AUTHCID_MAX, &n) != 0)
		return SASL_INVALID;
	st->authcid_off = 0;
	st->authcid_len = (uint16_t)n;
	return sasl_again(st, SASL_STEP_LOGIN_PASS, R_PASSWORD);
}

static int sasl_login_pass(struct sasl_state *st, const char *s, size_t len)
{
	size_t n, off = (size_t)st->authcid_len + 1;
	if (sasl_login_field(st, s, len, off, SASL_PASSWD_MAX, &n) != 0)
		return SASL_INVALID;
	st->passwd_off = (uint16_t)off;
	st->passwd_len = (uint16_t)n;
	st->step = SASL_STEP_DONE;
	st->reply = NULL;
	return SASL_OK;
}

/* ASCII-only case folding: strncasecmp follows the locale. */
static bool sasl_name_is(const char *s, size_t n, const char *upper)
{
	size_t i = 0;
	for (; i < n && upper[i] != '\0'; i++) {
		char c = s[i] >= 'a' && s[i] <= 'z' ? (char)(s[i] - 'a' + 'A') : s[i];
		if (c != upper[i])
			return false;
	}
	return i == n && upper[i] == '\0';
}

/* The mechanism token of the AUTH argument, case-insensitively. */
static enum sasl_mech sasl_mech_of(const char *s, size_t n, bool *valid)
{
	*valid = n >= 1 && n <= SASL_MECH_NAME_MAX;
	for (size_t i = 0; *valid && i < n; i++) {
		char c = s[i];
		*valid = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			 (c >= '0' && c <= '9') || c == '-' || c == '_';
	}
	if (*valid && sasl_name_is(s, n, "PLAIN"))
		return SASL_MECH_PLAIN;
	if (*valid && sasl_name_is(s, n, "LOGIN"))
		return SASL_MECH_LOGIN;
	return SASL_MECH_NONE;
}

int sasl_start(struct sasl_state *st, const char *arg, size_t len)
{
	assert(st != NULL && (arg != NULL || len == 0));
	sasl_clear(st);
	const char *sp = len > 0 ? memchr(arg, ' ', len) : NULL;
	size_t mech_len = sp != NULL ? (size_t)(sp - arg) : len;
	bool valid;
	enum sasl_mech mech = sasl_mech_of(arg, mech_len, &valid);
	if (!valid)
		return sasl_fail(st, R_SYNTAX);
	if (mech == SASL_MECH_NONE)
		return sasl_fail(st, R_MECH);
	st->mech = (uint8_t)mech;
	if (sp == NULL) {
		if (mech == SASL_MECH_PLAIN)
			return sasl_again(st, SASL_STEP_PLAIN, R_EMPTY);
		return sasl_again(st, SASL_STEP_LOGIN_USER, R_USERNAME);
	}
	/* RFC 4954 4: exactly one SP, then a non-empty initial response in
	 * which "=" means "present but empty". */
	const char *ir = sp + 1;
	size_t ir_len = len - mech_len - 1;
	if (ir_len == 0 || memchr(ir, ' ', ir_len) != NULL)
		return sasl_fail(st, R_SYNTAX);
	if (ir_len == 1 && ir[0] == '=')
		ir_len = 0;
	if (mech == SASL_MECH_PLAIN)
		return sasl_plain(st, ir, ir_len);
	return sasl_login_user(st, ir, ir_len);
}

int sasl_step(struct sasl_state *st, const char *line, size_t len)
{
	assert(st != NULL && (line != NULL || len == 0));
	switch (st->step) {
	case SASL_STEP_PLAIN:
		return sasl_plain(st, line, len);
	case SASL_STEP_LOGIN_USER:
		return sasl_login_user(st, line, len);
	case SASL_STEP_LOGIN_PASS:
		return sasl_login_pass(st, line, len);
	default:
		/* IDLE or DONE: the session fed a line nobody asked for. */
		abort();
	}
}

void sasl_creds(const struct sasl_state *st, struct sasl_creds *out)
{
	assert(st->step == SASL_STEP_DONE && st->reply == NULL && st->authcid_len > 0);
	assert(st->passwd_len > 0 && st->buf[st->passwd_off + st->passwd_len] == '\0');
	out->authcid = st->buf + st->authcid_off;
	out->authcid_len = st->authcid_len;
	out->passwd = st->buf + st->passwd_off;
	out->passwd_len = st->passwd_len;
}

void sasl_clear(struct sasl_state *st)
{
	explicit_bzero(st, sizeof(*st));
}
