/*
 * libFuzzer driver for the SMTP AUTH exchange parser (auth/sasl.c).
 *
 * Input: newline-separated lines.  The first is an AUTH argument
 * ("PLAIN", "LOGIN dXNlcg==", ...); each later line is the client's answer
 * to the last 334 while sasl_step() asks for more, and after OK or INVALID
 * the next line starts a new exchange on the same state (as a session
 * does when the client tries again).  The state starts out as data-derived
 * garbage: sasl_start() must not depend on what was there.
 *
 * Invariants: every return is OK, AGAIN or INVALID, and agrees with a
 * model written from sasl.h (mechanism token, "=", "*", the response
 * bound, strict base64, PLAIN's two NULs, field bounds, authzid); AGAIN
 * and INVALID carry a well-formed reply line (3 digits, SP or '-',
 * printable ASCII, no CR/LF) with the code the model expects, and a 334
 * challenge decodes to "", "Username:" or "Password:"; after INVALID the
 * state is zero except step and reply; after OK sasl_creds() hands out
 * fields inside st->buf, within their bounds, NUL-terminated, equal to what
 * the model decoded; sasl_clear() leaves every byte of the state zero.
 *
 * sasl_b64_decode runs over the raw input and over every line: it must
 * accept exactly the canonical base64 a reference decoder accepts (decode
 * leniently, re-encode, compare), produce the same octets, fit an output
 * buffer of exactly the decoded size (heap, so ASan sees one byte past it)
 * and refuse one a byte shorter; and any input, encoded by the reference
 * encoder, must decode back to itself.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/sasl.h"
#include "fuzz_common.h"

/* Keeps each execution short; responses over SASL_RESPONSE_MAX still fit. */
#define INPUT_MAX     16384
#define REPLY_LEN_MAX 510 /* RFC 5321 4.5.3.1.5: 512 octets with CRLF */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* ---- reference base64 ---------------------------------------------------------- */

/* RFC 4648 4 with padding.  out holds (n + 2) / 3 * 4 octets. */
static size_t ref_b64_encode(const uint8_t *in, size_t n, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		out[o++] = B64[v >> 18 & 63];
		out[o++] = B64[v >> 12 & 63];
		out[o++] = i + 1 < n ? B64[v >> 6 & 63] : '=';
		out[o++] = i + 2 < n ? B64[v & 63] : '=';
	}
	return o;
}

/* Lenient decode (the alphabet, length a multiple of 4, "xx==" or "xxx="
 * only at the end), then strictness by re-encoding: canonical text is the
 * encoding of what it decodes to.  Returns the length or -1; out holds
 * len / 4 * 3 octets. */
static long ref_b64_decode(const char *in, size_t len, uint8_t *out)
{
	if (len % 4 != 0)
		return -1;
	size_t n = 0;
	for (size_t i = 0; i < len; i += 4) {
		int pads = 0;
		if (i + 4 == len && in[i + 3] == '=')
			pads = in[i + 2] == '=' ? 2 : 1;
		uint32_t v = 0;
		for (int k = 0; k < 4; k++) {
			uint32_t d = 0;
			if (k < 4 - pads) {
				const char *q = in[i + k] != '\0' ? strchr(B64, in[i + k]) : NULL;
				if (q == NULL)
					return -1;
				d = (uint32_t)(q - B64);
			}
			v = v << 6 | d;
		}
		out[n++] = (uint8_t)(v >> 16);
		if (pads < 2)
			out[n++] = (uint8_t)(v >> 8);
		if (pads < 1)
			out[n++] = (uint8_t)v;
	}
	char *re = malloc(len + 1);
	CHECK(re != NULL);
	bool same = ref_b64_encode(out, n, re) == len && memcmp(re, in, len) == 0;
	free(re);
	return same ? (long)n : -1;
}

/* ---- sasl_b64_decode against the reference ------------------------------------ */

static long decode_exact(const char *in, size_t len, size_t out_size, uint8_t *copy)
{
	char *out = malloc(out_size > 0 ? out_size : 1);
	CHECK(out != NULL);
	/* out_size, not the allocation: a zero-size bound must write nothing. */
	long r = sasl_b64_decode(in, len, out_size > 0 ? out : out + 1, out_size);
	CHECK(r >= -1 && r <= (long)out_size);
	if (r > 0 && copy != NULL)
		memcpy(copy, out_size > 0 ? out : out + 1, (size_t)r);
	free(out);
	return r;
}

static void check_b64(const char *in, size_t len)
{
	uint8_t *want = malloc(len / 4 * 3 + 1), *got = malloc(len / 4 * 3 + 1);
	CHECK(want != NULL && got != NULL);
	long ref = ref_b64_decode(in, len, want);
	long r = decode_exact(in, len, len / 4 * 3, got);
	CHECK(r == ref);
	if (ref >= 0) {
		CHECK(memcmp(got, want, (size_t)ref) == 0);
		CHECK(decode_exact(in, len, (size_t)ref, got) == ref);
		CHECK(memcmp(got, want, (size_t)ref) == 0);
		if (ref > 0)
			CHECK(decode_exact(in, len, (size_t)ref - 1, NULL) == -1);
	}
	free(want);
	free(got);
}

/* Any octets, encoded, decode back to themselves into an exact buffer. */
static void check_roundtrip(const uint8_t *data, size_t size)
{
	char *enc = malloc((size + 2) / 3 * 4 + 1);
	uint8_t *dec = malloc(size + 1);
	CHECK(enc != NULL && dec != NULL);
	size_t n = ref_b64_encode(data, size, enc);
	CHECK(decode_exact(enc, n, size, dec) == (long)size);
	CHECK(size == 0 || memcmp(dec, data, size) == 0);
	if (size > 0)
		CHECK(decode_exact(enc, n, size - 1, NULL) == -1);
	free(enc);
	free(dec);
}

/* ---- model of the exchange ------------------------------------------------------ */

/* What the model expects from one call.  code is the reply's prefix
 * ("334", "501 5.5.4", ...) or NULL for OK. */
struct expect {
	int rc;
	const char *code;
	uint8_t step;
	const uint8_t *user, *pass; /* into the model's decode buffers */
	size_t user_len, pass_len;
};

struct model {
	uint8_t mech, step;
	uint8_t user[SASL_DECODED_MAX + 1];
	size_t user_len;
	uint8_t msg[SASL_DECODED_MAX + 1];
};

static struct expect ex_fail(const char *code)
{
	return (struct expect){.rc = SASL_INVALID, .code = code, .step = SASL_STEP_DONE};
}

static struct expect ex_again(uint8_t step)
{
	return (struct expect){.rc = SASL_AGAIN, .code = "334", .step = step};
}

/* Decode one response into buf; NULL on success, else the failure code. */
static const char *model_decode(const char *s, size_t len, uint8_t *buf, size_t *n)
{
	if (len == 1 && s[0] == '*')
		return "501 5.7.0";
	if (len > SASL_RESPONSE_MAX)
		return "500 5.5.6";
	long r = ref_b64_decode(s, len, buf);
	if (r < 0)
		return "501 5.5.2";
	*n = (size_t)r;
	return NULL;
}

static struct expect model_plain(struct model *m, const char *s, size_t len)
{
	size_t n, nuls = 0, z[2] = {0, 0};
	const char *bad = model_decode(s, len, m->msg, &n);
	if (bad != NULL)
		return ex_fail(bad);
	for (size_t i = 0; i < n; i++) {
		if (m->msg[i] == 0 && nuls < 2)
			z[nuls] = i;
		nuls += m->msg[i] == 0;
	}
	if (nuls != 2)
		return ex_fail("501 5.5.2");
	size_t zid = z[0], cid = z[1] - z[0] - 1, pw = n - z[1] - 1;
	if (zid > 255 || cid < 1 || cid > 255 || pw < 1 || pw > 255)
		return ex_fail("535 5.7.8");
	if (zid != 0 && (zid != cid || memcmp(m->msg, m->msg + z[0] + 1, cid) != 0))
		return ex_fail("535 5.7.8");
	return (struct expect){.rc = SASL_OK,
			       .step = SASL_STEP_DONE,
			       .user = m->msg + z[0] + 1,
			       .user_len = cid,
			       .pass = m->msg + z[1] + 1,
			       .pass_len = pw};
}

/* A LOGIN field: 1..255 octets without NUL. */
static const char *model_field(const char *s, size_t len, uint8_t *buf, size_t *n)
{
	const char *bad = model_decode(s, len, buf, n);
	if (bad == NULL && (*n == 0 || *n > 255 || memchr(buf, 0, *n) != NULL))
		bad = "535 5.7.8";
	return bad;
}

static struct expect model_login_user(struct model *m, const char *s, size_t len)
{
	const char *bad = model_field(s, len, m->user, &m->user_len);
	return bad != NULL ? ex_fail(bad) : ex_again(SASL_STEP_LOGIN_PASS);
}

static struct expect model_login_pass(struct model *m, const char *s, size_t len)
{
	size_t n;
	const char *bad = model_field(s, len, m->msg, &n);
	if (bad != NULL)
		return ex_fail(bad);
	return (struct expect){.rc = SASL_OK,
			       .step = SASL_STEP_DONE,
			       .user = m->user,
			       .user_len = m->user_len,
			       .pass = m->msg,
			       .pass_len = n};
}

static bool model_mech_is(const char *s, size_t n, const char *upper)
{
	if (n != strlen(upper))
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i] >= 'a' && s[i] <= 'z' ? (char)(s[i] - 32) : s[i];
		if (c != upper[i])
			return false;
	}
	return true;
}

static struct expect model_start(struct model *m, const char *arg, size_t len)
{
	size_t tok = 0;
	while (tok < len && arg[tok] != ' ')
		tok++;
	bool valid = tok >= 1 && tok <= 20;
	for (size_t i = 0; valid && i < tok; i++)
		valid = strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
			       arg[i]) != NULL &&
			arg[i] != '\0';
	if (!valid)
		return ex_fail("501 5.5.4");
	bool plain = model_mech_is(arg, tok, "PLAIN");
	if (!plain && !model_mech_is(arg, tok, "LOGIN"))
		return ex_fail("504 5.5.4");
	m->mech = plain ? SASL_MECH_PLAIN : SASL_MECH_LOGIN;
	if (tok == len)
		return ex_again(plain ? SASL_STEP_PLAIN : SASL_STEP_LOGIN_USER);
	const char *ir = arg + tok + 1;
	size_t ir_len = len - tok - 1;
	if (ir_len == 0 || memchr(ir, ' ', ir_len) != NULL)
		return ex_fail("501 5.5.4");
	if (ir_len == 1 && ir[0] == '=')
		ir_len = 0; /* RFC 4954 4: present but empty */
	return plain ? model_plain(m, ir, ir_len) : model_login_user(m, ir, ir_len);
}

static struct expect model_step(struct model *m, const char *s, size_t len)
{
	switch (m->step) {
	case SASL_STEP_PLAIN:
		return model_plain(m, s, len);
	case SASL_STEP_LOGIN_USER:
		return model_login_user(m, s, len);
	case SASL_STEP_LOGIN_PASS:
		return model_login_pass(m, s, len);
	default:
		abort();
	}
}

/* ---- checks on the state ------------------------------------------------------- */

static void check_reply(const char *r)
{
	CHECK(r != NULL);
	size_t n = strlen(r);
	CHECK(n >= 4 && n <= REPLY_LEN_MAX);
	CHECK(r[0] >= '2' && r[0] <= '5' && r[1] >= '0' && r[1] <= '9' && r[2] >= '0' &&
	      r[2] <= '9');
	CHECK(r[3] == ' ' || r[3] == '-');
	for (size_t i = 0; i < n; i++)
		CHECK(r[i] >= 0x20 && r[i] <= 0x7e); /* printable ASCII: no CR, LF, NUL */
}

/* Every byte zero, except step and reply when keep says so. */
static void check_zero(const struct sasl_state *st, bool keep)
{
	struct sasl_state c;
	memcpy(&c, st, sizeof(c));
	if (keep) {
		CHECK(c.step == SASL_STEP_DONE);
		c.step = 0;
		c.reply = NULL;
	}
	/* Every byte, padding and st->buf included.  One memcmp: a loop
	 * would be a traced compare per byte and halve the exec rate. */
	static const struct sasl_state zero;
	CHECK(memcmp(&c, &zero, sizeof(c)) == 0);
}

/* A 334 challenge: its text is base64 of "", "Username:" or "Password:". */
static void check_challenge(const char *r, uint8_t step)
{
	uint8_t text[16];
	size_t n = strlen(r + 4);
	CHECK(n <= 12);
	long t = ref_b64_decode(r + 4, n, text);
	if (step == SASL_STEP_PLAIN)
		CHECK(t == 0);
	else if (step == SASL_STEP_LOGIN_USER)
		CHECK(t == 9 && memcmp(text, "Username:", 9) == 0);
	else
		CHECK(t == 9 && memcmp(text, "Password:", 9) == 0);
}

static void check_ok(struct sasl_state *st, const struct expect *e)
{
	struct sasl_creds c;
	CHECK(st->reply == NULL && st->step == SASL_STEP_DONE);
	sasl_creds(st, &c);
	const char *lo = st->buf, *hi = st->buf + sizeof(st->buf);
	CHECK(c.authcid_len >= 1 && c.authcid_len <= SASL_AUTHCID_MAX);
	CHECK(c.passwd_len >= 1 && c.passwd_len <= SASL_PASSWD_MAX);
	CHECK(c.authcid >= lo && c.authcid_len < (size_t)(hi - c.authcid));
	CHECK(c.passwd >= lo && c.passwd_len < (size_t)(hi - c.passwd));
	CHECK(c.authcid[c.authcid_len] == '\0' && c.passwd[c.passwd_len] == '\0');
	CHECK(memchr(c.authcid, 0, c.authcid_len) == NULL);
	CHECK(memchr(c.passwd, 0, c.passwd_len) == NULL);
	CHECK(c.authcid_len == e->user_len && memcmp(c.authcid, e->user, e->user_len) == 0);
	CHECK(c.passwd_len == e->pass_len && memcmp(c.passwd, e->pass, e->pass_len) == 0);
	sasl_clear(st);
	check_zero(st, false);
}

/* Compare one call's result with the model; returns whether to step on. */
static bool check_result(struct sasl_state *st, struct model *m, int rc, const struct expect *e)
{
	CHECK(rc == SASL_OK || rc == SASL_AGAIN || rc == SASL_INVALID);
	CHECK(rc == e->rc);
	CHECK(st->step == e->step);
	m->step = e->step;
	if (rc == SASL_OK) {
		check_ok(st, e);
		return false;
	}
	check_reply(st->reply);
	CHECK(strncmp(st->reply, e->code, strlen(e->code)) == 0);
	if (rc == SASL_INVALID) {
		check_zero(st, true);
		return false;
	}
	CHECK(st->mech == m->mech);
	CHECK(st->reply[3] == ' ');
	check_challenge(st->reply, st->step);
	if (st->step == SASL_STEP_LOGIN_PASS) {
		/* The user name waits in the state for the password. */
		CHECK(st->authcid_off == 0 && st->authcid_len == m->user_len);
		CHECK(memcmp(st->buf, m->user, m->user_len) == 0 && st->buf[m->user_len] == 0);
	}
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > INPUT_MAX)
		return 0;
	check_b64((const char *)data, size);
	check_roundtrip(data, size);

	static struct sasl_state st;
	static struct model m;
	memset(&st, size > 0 ? data[0] : 0xa5, sizeof(st));
	memset(&m, 0, sizeof(m));
	const char *p = (const char *)data, *end = p + size;
	bool exchange = false;
	while (p <= end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
		/* Heap copy of exactly the line: an over-read shows. */
		char *line = malloc(len > 0 ? len : 1);
		CHECK(line != NULL);
		memcpy(line, p, len);
		check_b64(line, len);
		struct expect e;
		int rc;
		if (!exchange) {
			e = model_start(&m, line, len);
			rc = sasl_start(&st, line, len);
		} else {
			e = model_step(&m, line, len);
			rc = sasl_step(&st, line, len);
		}
		exchange = check_result(&st, &m, rc, &e);
		free(line);
		if (nl == NULL)
			break;
		p = nl + 1;
	}
	/* The client went away mid-exchange: the session clears the state. */
	sasl_clear(&st);
	check_zero(&st, false);
	return 0;
}
