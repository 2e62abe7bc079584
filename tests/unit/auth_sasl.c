/* Pins the AUTH PLAIN/LOGIN exchange: RFC 4616 vectors, strict base64, cancel, bounds, zeroing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "auth/sasl.h"

/* ---- helpers ------------------------------------------------------------------ */

/* Base64 encoder for building client responses (RFC 4648 4). */
static char *b64(const void *data, size_t n)
{
	static const char abc[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *d = data;
	char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
	assert_non_null(out);
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)d[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)d[i + 1] << 8;
		if (i + 2 < n)
			v |= d[i + 2];
		*o++ = abc[v >> 18 & 63];
		*o++ = abc[v >> 12 & 63];
		*o++ = i + 1 < n ? abc[v >> 6 & 63] : '=';
		*o++ = i + 2 < n ? abc[v & 63] : '=';
	}
	*o = '\0';
	return out;
}

/* base64 of authzid NUL authcid NUL passwd. */
static char *plain_msg(const char *zid, const char *cid, const char *pw)
{
	size_t a = strlen(zid), b = strlen(cid), c = strlen(pw);
	char *m = malloc(a + b + c + 2);
	assert_non_null(m);
	memcpy(m, zid, a);
	m[a] = '\0';
	memcpy(m + a + 1, cid, b);
	m[a + 1 + b] = '\0';
	memcpy(m + a + b + 2, pw, c);
	char *e = b64(m, a + b + c + 2);
	free(m);
	return e;
}

static int start(struct sasl_state *st, const char *arg)
{
	return sasl_start(st, arg, strlen(arg));
}

static int step(struct sasl_state *st, const char *line)
{
	return sasl_step(st, line, strlen(line));
}

static void assert_creds(const struct sasl_state *st, const char *user, const char *pw)
{
	struct sasl_creds c;
	sasl_creds(st, &c);
	assert_int_equal(c.authcid_len, strlen(user));
	assert_memory_equal(c.authcid, user, c.authcid_len);
	assert_int_equal(c.authcid[c.authcid_len], '\0');
	assert_int_equal(c.passwd_len, strlen(pw));
	assert_memory_equal(c.passwd, pw, c.passwd_len);
	assert_int_equal(c.passwd[c.passwd_len], '\0');
}

static void assert_zeroed(const struct sasl_state *st)
{
	static const char zero[sizeof(st->buf)];
	assert_memory_equal(st->buf, zero, sizeof(zero));
	assert_int_equal(st->authcid_len, 0);
	assert_int_equal(st->passwd_len, 0);
}

static void assert_invalid(struct sasl_state *st, int rc, const char *reply)
{
	assert_int_equal(rc, SASL_INVALID);
	assert_string_equal(st->reply, reply);
	assert_int_equal(st->step, SASL_STEP_DONE);
	assert_zeroed(st);
}

static const char R_CREDS[] = "535 5.7.8 Authentication credentials invalid";
static const char R_BASE64[] = "501 5.5.2 Cannot decode base64 response";
static const char R_PLAIN[] = "501 5.5.2 Malformed PLAIN response";
static const char R_CANCEL[] = "501 5.7.0 Authentication cancelled";
static const char R_SYNTAX[] = "501 5.5.4 Syntax: AUTH mechanism [initial-response]";

/* ---- base64 --------------------------------------------------------------------- */

/* RFC 4648 10 test vectors. */
static void test_b64_rfc4648_vectors(void **state)
{
	(void)state;
	static const char *const enc[] = {"",	      "Zg==",	  "Zm8=",    "Zm9v",
					  "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
	static const char *const dec[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
	for (size_t i = 0; i < sizeof(enc) / sizeof(enc[0]); i++) {
		char out[16];
		long n = sasl_b64_decode(enc[i], strlen(enc[i]), out, sizeof(out));
		assert_int_equal(n, (long)strlen(dec[i]));
		assert_memory_equal(out, dec[i], (size_t)n);
	}
}

static void test_b64_strict(void **state)
{
	(void)state;
	static const char *const bad[] = {
	    "Zm9",	/* not a multiple of 4 */
	    "Zm9v ",	/* trailing blank */
	    " Zm9v",	/* leading blank */
	    "Zm 9",	/* blank inside */
	    "Zm9v\r",	/* stray CR */
	    "Zg=a",	/* '=' then data */
	    "Z===",	/* three pads */
	    "====",	/* only pads */
	    "Zg==Zm9v", /* padding before the end */
	    "QR==",	/* non-zero bits under the padding (RFC 4648 3.5) */
	    "Zm9=",	/* same for one pad */
	    "Zm-_",	/* base64url alphabet */
	    "Zm9v\x80\x80\x80\x80",
	};
	char out[16];
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(sasl_b64_decode(bad[i], strlen(bad[i]), out, sizeof(out)), -1);
	assert_int_equal(sasl_b64_decode("QQ==", 4, out, sizeof(out)), 1);
	assert_int_equal(out[0], 'A');
	assert_int_equal(sasl_b64_decode("AA==", 4, out, sizeof(out)), 1);
	assert_int_equal(out[0], '\0');
}

static void test_b64_output_bound(void **state)
{
	(void)state;
	char out[6];
	assert_int_equal(sasl_b64_decode("Zm9vYmFy", 8, out, 6), 6);
	assert_int_equal(sasl_b64_decode("Zm9vYmFy", 8, out, 5), -1);
	assert_int_equal(sasl_b64_decode("Zm9vYmE=", 8, out, 5), 5);
	assert_int_equal(sasl_b64_decode("Zm9vYmE=", 8, out, 4), -1);
	assert_int_equal(sasl_b64_decode("", 0, out, 0), 0);
}

/* ---- PLAIN ---------------------------------------------------------------------- */

/* RFC 4616 4, first example: empty authzid, "tim", "tanstaaftanstaaf". */
static void test_plain_rfc4616_example(void **state)
{
	(void)state;
	struct sasl_state st;
	assert_int_equal(start(&st, "PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm"), SASL_OK);
	assert_int_equal(st.mech, SASL_MECH_PLAIN);
	assert_null(st.reply);
	assert_creds(&st, "tim", "tanstaaftanstaaf");
	sasl_clear(&st);
	assert_zeroed(&st);
	assert_int_equal(st.step, SASL_STEP_IDLE);
}

/* RFC 4616 4, second example: authzid "Kurt" for authcid "tim" asks to
 * act as someone else, which ringmx never allows. */
static void test_plain_rfc4616_proxy_refused(void **state)
{
	(void)state;
	struct sasl_state st;
	char *m = plain_msg("Kurt", "tim", "tanstaaftanstaaf");
	assert_string_equal(m, "S3VydAB0aW0AdGFuc3RhYWZ0YW5zdGFhZg==");
	char arg[128];
	snprintf(arg, sizeof(arg), "PLAIN %s", m);
	assert_invalid(&st, start(&st, arg), R_CREDS);
	free(m);
	/* The authzid equal to the authcid is the same identity: fine. */
	m = plain_msg("tim", "tim", "pw");
	snprintf(arg, sizeof(arg), "PLAIN %s", m);
	assert_int_equal(start(&st, arg), SASL_OK);
	assert_creds(&st, "tim", "pw");
	sasl_clear(&st);
	free(m);
	/* Case matters: "Tim" is not "tim". */
	m = plain_msg("Tim", "tim", "pw");
	snprintf(arg, sizeof(arg), "PLAIN %s", m);
	assert_invalid(&st, start(&st, arg), R_CREDS);
	free(m);
}

static void test_plain_after_empty_challenge(void **state)
{
	(void)state;
	struct sasl_state st;
	assert_int_equal(start(&st, "plain"), SASL_AGAIN);
	assert_string_equal(st.reply, "334 ");
	assert_int_equal(st.step, SASL_STEP_PLAIN);
	char *m = plain_msg("", "user@example.org", "p\xc3\xa4ss word");
	assert_int_equal(step(&st, m), SASL_OK);
	assert_creds(&st, "user@example.org", "p\xc3\xa4ss word");
	sasl_clear(&st);
	free(m);
}

static void test_plain_malformed(void **state)
{
	(void)state;
	struct sasl_state st;
	/* "=" is an empty initial response (RFC 4954 4): no NULs at all. */
	assert_invalid(&st, start(&st, "PLAIN ="), R_PLAIN);
	/* An empty line after "334 " is an empty response. */
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, ""), R_PLAIN);
	char *m = b64("\0user", 5); /* one NUL */
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, m), R_PLAIN);
	free(m);
	m = b64("\0user\0pass\0", 11); /* three NULs */
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, m), R_PLAIN);
	free(m);
	m = b64("\0\0pass", 6); /* empty authcid */
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, m), R_CREDS);
	free(m);
	m = b64("\0user\0", 6); /* empty password */
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, m), R_CREDS);
	free(m);
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, "AHVzZXIAcGFzcw"), R_BASE64); /* padding missing */
}

/* ---- LOGIN ---------------------------------------------------------------------- */

static void test_login_exchange(void **state)
{
	(void)state;
	struct sasl_state st;
	assert_int_equal(start(&st, "LOGIN"), SASL_AGAIN);
	assert_int_equal(st.mech, SASL_MECH_LOGIN);
	assert_string_equal(st.reply, "334 VXNlcm5hbWU6"); /* "Username:" */
	assert_int_equal(step(&st, "dGlt"), SASL_AGAIN);   /* "tim" */
	assert_string_equal(st.reply, "334 UGFzc3dvcmQ6"); /* "Password:" */
	assert_int_equal(step(&st, "dGFuc3RhYWZ0YW5zdGFhZg=="), SASL_OK);
	assert_creds(&st, "tim", "tanstaaftanstaaf");
	sasl_clear(&st);
	assert_zeroed(&st);
}

static void test_login_initial_response(void **state)
{
	(void)state;
	struct sasl_state st;
	assert_int_equal(start(&st, "login dGlt"), SASL_AGAIN);
	assert_string_equal(st.reply, "334 UGFzc3dvcmQ6");
	assert_int_equal(step(&st, "c2VjcmV0"), SASL_OK);
	assert_creds(&st, "tim", "secret");
	sasl_clear(&st);
	/* "=" as the user name: empty, which no user is. */
	assert_invalid(&st, start(&st, "LOGIN ="), R_CREDS);
}

static void test_login_bad_fields(void **state)
{
	(void)state;
	struct sasl_state st;
	assert_int_equal(start(&st, "LOGIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, ""), R_CREDS); /* empty user */
	char *m = b64("ti\0m", 4);
	assert_int_equal(start(&st, "LOGIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, m), R_CREDS); /* NUL in the user */
	free(m);
	m = b64("se\0cret", 7);
	assert_int_equal(start(&st, "LOGIN dGlt"), SASL_AGAIN);
	assert_invalid(&st, step(&st, m), R_CREDS); /* NUL in the password */
	free(m);
	assert_int_equal(start(&st, "LOGIN dGlt"), SASL_AGAIN);
	assert_invalid(&st, step(&st, ""), R_CREDS); /* empty password */
	assert_int_equal(start(&st, "LOGIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, "dGlt!"), R_BASE64);
}

/* ---- cancel --------------------------------------------------------------------- */

/* RFC 4954 4: "*" cancels, answered with 501, at every step. */
static void test_cancel_every_step(void **state)
{
	(void)state;
	struct sasl_state st;
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, "*"), R_CANCEL);
	assert_int_equal(start(&st, "LOGIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, "*"), R_CANCEL);
	assert_int_equal(start(&st, "LOGIN"), SASL_AGAIN);
	assert_int_equal(step(&st, "dGlt"), SASL_AGAIN);
	/* The user name decoded so far is wiped with the rest. */
	assert_invalid(&st, step(&st, "*"), R_CANCEL);
	assert_invalid(&st, start(&st, "PLAIN *"), R_CANCEL);
	/* "**" is neither a cancel nor base64. */
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, "**"), R_BASE64);
}

/* ---- the AUTH argument ---------------------------------------------------------- */

static void test_mechanism_argument(void **state)
{
	(void)state;
	struct sasl_state st;
	assert_invalid(&st, start(&st, "CRAM-MD5"), "504 5.5.4 Unrecognized authentication type");
	assert_invalid(&st, start(&st, "GSSAPI YIIB"),
		       "504 5.5.4 Unrecognized authentication type");
	assert_invalid(&st, start(&st, ""), R_SYNTAX);
	assert_invalid(&st, start(&st, " PLAIN"), R_SYNTAX);
	assert_invalid(&st, start(&st, "PLAIN "), R_SYNTAX);
	assert_invalid(&st, start(&st, "PLAIN  AHRpbQB0aW0="), R_SYNTAX);
	assert_invalid(&st, start(&st, "PLAIN AHRp bQB0aW0="), R_SYNTAX);
	assert_invalid(&st, start(&st, "PL@IN"), R_SYNTAX);
	/* RFC 4422 3.1: at most 20 characters. */
	assert_invalid(&st, start(&st, "ABCDEFGHIJKLMNOPQRSTU"), R_SYNTAX);
	assert_invalid(&st, start(&st, "ABCDEFGHIJKLMNOPQRST"),
		       "504 5.5.4 Unrecognized authentication type");
	assert_invalid(&st, start(&st, "PLAINX"), "504 5.5.4 Unrecognized authentication type");
}

/* ---- bounds --------------------------------------------------------------------- */

static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);
	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

/* The largest PLAIN message (255/255/255) is exactly SASL_RESPONSE_MAX
 * base64 octets and passes; one quantum more is 500 5.5.6. */
static void test_response_max(void **state)
{
	(void)state;
	struct sasl_state st;
	char *zid = repeat('u', SASL_AUTHZID_MAX), *pw = repeat('p', SASL_PASSWD_MAX);
	char *m = plain_msg(zid, zid, pw);
	assert_int_equal(strlen(m), SASL_RESPONSE_MAX);
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_int_equal(step(&st, m), SASL_OK);
	assert_creds(&st, zid, pw);
	sasl_clear(&st);
	char *longer = malloc(SASL_RESPONSE_MAX + 5);
	assert_non_null(longer);
	memcpy(longer, m, SASL_RESPONSE_MAX);
	memcpy(longer + SASL_RESPONSE_MAX, "AAAA", 5);
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, longer),
		       "500 5.5.6 Authentication exchange line is too long");
	assert_int_equal(start(&st, "LOGIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, longer), SASL_REPLY_TOO_LONG);
	free(zid), free(pw), free(m), free(longer);
}

static void test_field_max(void **state)
{
	(void)state;
	struct sasl_state st;
	char *big = repeat('x', SASL_AUTHCID_MAX + 1), *max = repeat('x', SASL_AUTHCID_MAX);
	char *m = plain_msg("", big, "pw");
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, m), R_CREDS);
	free(m);
	m = plain_msg("", "u", big);
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, m), R_CREDS);
	free(m);
	m = plain_msg(big, "u", "pw");
	assert_int_equal(start(&st, "PLAIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, m), R_CREDS);
	free(m);
	/* LOGIN: a 256-octet user or password is refused, 255 is fine. */
	m = b64(big, strlen(big));
	assert_int_equal(start(&st, "LOGIN"), SASL_AGAIN);
	assert_invalid(&st, step(&st, m), R_CREDS);
	assert_int_equal(start(&st, "LOGIN dGlt"), SASL_AGAIN);
	assert_invalid(&st, step(&st, m), R_CREDS);
	free(m);
	m = b64(max, strlen(max));
	assert_int_equal(start(&st, "LOGIN"), SASL_AGAIN);
	assert_int_equal(step(&st, m), SASL_AGAIN);
	assert_int_equal(step(&st, m), SASL_OK);
	assert_creds(&st, max, max);
	sasl_clear(&st);
	free(m), free(big), free(max);
}

/* A LOGIN password as long as a whole response still decodes in place
 * behind the longest user name (the buffer is sized for it). */
static void test_login_longest_response_fits(void **state)
{
	(void)state;
	struct sasl_state st;
	char *user = repeat('u', SASL_AUTHCID_MAX);
	char *bu = b64(user, strlen(user));
	char *pw = repeat('A', SASL_RESPONSE_MAX);
	assert_int_equal(start(&st, "LOGIN"), SASL_AGAIN);
	assert_int_equal(step(&st, bu), SASL_AGAIN);
	assert_invalid(&st, step(&st, pw), R_CREDS); /* decodes to 768 NULs: too long */
	free(user), free(bu), free(pw);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_b64_rfc4648_vectors),
	    cmocka_unit_test(test_b64_strict),
	    cmocka_unit_test(test_b64_output_bound),
	    cmocka_unit_test(test_plain_rfc4616_example),
	    cmocka_unit_test(test_plain_rfc4616_proxy_refused),
	    cmocka_unit_test(test_plain_after_empty_challenge),
	    cmocka_unit_test(test_plain_malformed),
	    cmocka_unit_test(test_login_exchange),
	    cmocka_unit_test(test_login_initial_response),
	    cmocka_unit_test(test_login_bad_fields),
	    cmocka_unit_test(test_cancel_every_step),
	    cmocka_unit_test(test_mechanism_argument),
	    cmocka_unit_test(test_response_max),
	    cmocka_unit_test(test_field_max),
	    cmocka_unit_test(test_login_longest_response_fits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
