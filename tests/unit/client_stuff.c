/* Pins dot-stuffing (splits, iovecs, terminator) and the stuffed-body checker vs parse.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/client.h"
#include "smtp/parse.h"

#define BODY_MAX 256
#define OUT_MAX	 (2 * BODY_MAX + 8)
#define IOV_MAX	 (2 * BODY_MAX + 2)

struct stuffed {
	char out[OUT_MAX]; /* stuffed body, then the terminator */
	size_t body_len;   /* bytes of out before the terminator */
	size_t len;	   /* bytes of out in all */
	size_t iov_count;  /* entries produced over all calls */
};

/* What RFC 5321 4.5.2 asks for, one byte at a time: the reference. */
static size_t ref_stuff(const char *in, size_t n, char *out)
{
	size_t k = 0;
	bool bol = true;
	for (size_t i = 0; i < n; i++) {
		if (bol && in[i] == '.')
			out[k++] = '.';
		out[k++] = in[i];
		bol = in[i] == '\n';
	}
	bool crlf = n == 0 || (n >= 2 && in[n - 2] == '\r' && in[n - 1] == '\n');
	const char *t = crlf ? ".\r\n" : "\r\n.\r\n";
	memcpy(out + k, t, strlen(t));
	return k + strlen(t);
}

/* Append the iovecs to r->out, checking each one is the static "." or a
 * piece of the input that starts where the previous piece ended. */
static void gather(struct stuffed *r, const struct iovec *iov, size_t n, const char *in,
		   size_t in_len, size_t *in_next)
{
	for (size_t i = 0; i < n; i++) {
		const char *b = iov[i].iov_base;
		assert_true(iov[i].iov_len > 0);
		if (b >= in && b < in + in_len) {
			assert_ptr_equal(b, in + *in_next);
			assert_true(iov[i].iov_len <= in_len - *in_next);
			*in_next += iov[i].iov_len;
		} else {
			assert_int_equal(iov[i].iov_len, 1);
			assert_int_equal(*b, '.');
		}
		assert_true(r->len + iov[i].iov_len <= OUT_MAX);
		memcpy(r->out + r->len, b, iov[i].iov_len);
		r->len += iov[i].iov_len;
	}
	r->iov_count += n;
}

/* Stuff in[0..n) fed in pieces ending at each cut, iov_max entries a call. */
static void stuff_pieces(struct stuffed *r, const char *in, size_t n, const size_t *cuts,
			 size_t ncuts, size_t iov_max)
{
	struct smtp_stuff_state st;
	struct iovec iov[IOV_MAX];
	size_t off = 0, in_next = 0;
	assert_true(iov_max <= IOV_MAX);
	memset(r, 0, sizeof *r);
	smtp_stuff_begin(&st);
	for (size_t c = 0; c < ncuts; c++) {
		assert_true(cuts[c] >= off && cuts[c] <= n);
		while (off < cuts[c]) {
			size_t used = SIZE_MAX;
			size_t k =
			    smtp_stuff_iov(&st, in + off, cuts[c] - off, iov, iov_max, &used);
			assert_true(used <= cuts[c] - off && k <= iov_max);
			assert_true(k > 0 || iov_max == 0);
			if (k < iov_max)
				assert_int_equal(used, cuts[c] - off); /* stops only when full */
			gather(r, iov, k, in, n, &in_next);
			off += used;
			assert_int_equal(in_next, off);
		}
	}
	assert_true(st.in_len == n);
	r->body_len = r->len;
	struct iovec t;
	size_t tl = smtp_stuff_end(&st, &t);
	assert_int_equal(tl, t.iov_len);
	memcpy(r->out + r->len, t.iov_base, tl);
	r->len += tl;
}

static struct stuffed whole, split;

static void same_output(const char *in, size_t n)
{
	char want[OUT_MAX];
	size_t wl = ref_stuff(in, n, want);
	assert_int_equal(split.len, wl);
	assert_memory_equal(split.out, want, wl);
}

/* The server's side must read back the original: smtp_data_scan ends the
 * data exactly at our terminator and smtp_unstuff restores the body (plus
 * the CRLF the terminator added when the body lacked one). */
static void server_reads_back(const char *in, size_t n, const struct stuffed *r)
{
	struct smtp_data_state ds;
	size_t used = SIZE_MAX;
	smtp_data_begin(&ds, true);
	assert_int_equal(smtp_data_scan(&ds, r->out, r->len, &used), SMTP_PARSE_OK);
	assert_int_equal(used, r->len);

	char back[OUT_MAX];
	bool bol = true;
	size_t stored = r->len - 3; /* what DATA stores: all but ".\r\n" */
	size_t bl = smtp_unstuff(r->out, stored, back, &bol);
	bool added = r->len - r->body_len == 5;
	assert_int_equal(bl, n + (added ? 2 : 0));
	assert_memory_equal(back, in, n);
	if (added)
		assert_memory_equal(back + n, "\r\n", 2);
}

/* The stuffed body as DATA would store it passes the stuffed checker. */
static void checker_accepts(const struct stuffed *r)
{
	struct smtp_stuffed_state cs;
	struct iovec t;
	smtp_stuffed_begin(&cs);
	assert_int_equal(smtp_stuffed_scan(&cs, r->out, r->len - 3), SMTP_PARSE_AGAIN);
	assert_int_equal(smtp_stuffed_end(&cs, &t), SMTP_PARSE_OK);
	assert_int_equal(t.iov_len, 3);
	assert_memory_equal(t.iov_base, ".\r\n", 3);
}

/* Every split point, several iovec budgets, byte at a time: one output. */
static const struct stuffed *stuff_checked(const char *in, size_t n)
{
	static const size_t budgets[] = {1, 2, 3, 5, IOV_MAX};
	assert_true(n <= BODY_MAX);
	stuff_pieces(&whole, in, n, &n, 1, IOV_MAX);
	split = whole;
	same_output(in, n);
	for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
		for (size_t cut = 0; cut <= n; cut++) {
			size_t cuts[2] = {cut, n};
			stuff_pieces(&split, in, n, cuts, 2, budgets[b]);
			same_output(in, n);
		}
	}
	size_t bytes[BODY_MAX + 1];
	for (size_t i = 0; i <= n; i++)
		bytes[i] = i;
	stuff_pieces(&split, in, n, bytes, n + 1, 2);
	same_output(in, n);
	server_reads_back(in, n, &whole);
	checker_accepts(&whole);
	return &whole;
}

#define STUFF(lit) stuff_checked(lit, sizeof lit - 1)

static void out_is(const struct stuffed *r, const char *want)
{
	assert_int_equal(r->len, strlen(want));
	assert_memory_equal(r->out, want, r->len);
}

/* ---- encoder ---------------------------------------------------------------- */

static void test_no_dots_one_iovec(void **state)
{
	(void)state;
	static const char body[] = "Subject: x\r\n\r\nbody. with. dots.\r\n";
	struct smtp_stuff_state st;
	struct iovec iov[4];
	size_t used;
	smtp_stuff_begin(&st);
	assert_int_equal(smtp_stuff_iov(&st, body, sizeof body - 1, iov, 4, &used), 1);
	assert_int_equal(used, sizeof body - 1);
	/* The body itself, not a copy. */
	assert_ptr_equal(iov[0].iov_base, body);
	assert_int_equal(iov[0].iov_len, sizeof body - 1);
	out_is(STUFF("Subject: x\r\n\r\nbody. with. dots.\r\n"),
	       "Subject: x\r\n\r\nbody. with. dots.\r\n.\r\n");
}

static void test_dot_at_very_start(void **state)
{
	(void)state;
	out_is(STUFF(".hidden\r\n"), "..hidden\r\n.\r\n");
	out_is(STUFF("."), "..\r\n.\r\n");
	out_is(STUFF(".\r\n"), "..\r\n.\r\n");
	out_is(STUFF("..\r\n"), "...\r\n.\r\n");
	const struct stuffed *r = STUFF(".x\r\n");
	/* "." then the input from its own dot on: two entries. */
	assert_int_equal(r->iov_count, 2);
}

static void test_dot_after_crlf(void **state)
{
	(void)state;
	out_is(STUFF("a\r\n.\r\nb\r\n"), "a\r\n..\r\nb\r\n.\r\n");
	out_is(STUFF("a\r\n.b\r\n.c\r\n"), "a\r\n..b\r\n..c\r\n.\r\n");
	out_is(STUFF("\r\n.\r\n"), "\r\n..\r\n.\r\n");
	out_is(STUFF("a\r\n."), "a\r\n..\r\n.\r\n");
	/* Not at a line start: left alone. */
	out_is(STUFF("a.b\r\n .c\r\n\r.\r\n"), "a.b\r\n .c\r\n\r.\r\n.\r\n");
	const struct stuffed *r = STUFF("a\r\n.b\r\nc\r\n");
	assert_int_equal(r->iov_count, 3); /* "a\r\n", ".", ".b\r\nc\r\n" */
}

static void test_dot_across_buffers(void **state)
{
	(void)state;
	/* The line start is carried over: the dot that opens the second
	 * buffer is stuffed, the "." entry first. */
	static const char a[] = "one\r\n", b[] = ".two\r\n";
	struct smtp_stuff_state st;
	struct iovec iov[4];
	size_t used;
	smtp_stuff_begin(&st);
	assert_int_equal(smtp_stuff_iov(&st, a, 5, iov, 4, &used), 1);
	assert_int_equal(smtp_stuff_iov(&st, b, 6, iov, 4, &used), 2);
	assert_int_equal(iov[0].iov_len, 1);
	assert_memory_equal(iov[0].iov_base, ".", 1);
	assert_ptr_equal(iov[1].iov_base, b);
	assert_int_equal(iov[1].iov_len, 6);
	/* And a CR / LF split between buffers. */
	out_is(STUFF("x\r\n.y\r\n"), "x\r\n..y\r\n.\r\n");
}

static void test_iov_budget(void **state)
{
	(void)state;
	/* One entry per call: the "." goes out, then the line with its own
	 * dot, which is not stuffed a second time. */
	static const char in[] = ".a\r\n.b";
	struct smtp_stuff_state st;
	struct iovec iov[1];
	size_t used;
	smtp_stuff_begin(&st);
	assert_int_equal(smtp_stuff_iov(&st, in, 6, iov, 1, &used), 1);
	assert_int_equal(used, 0);
	assert_int_equal(iov[0].iov_len, 1);
	assert_int_equal(smtp_stuff_iov(&st, in, 6, iov, 1, &used), 1);
	assert_int_equal(used, 4);
	assert_ptr_equal(iov[0].iov_base, in);
	assert_int_equal(smtp_stuff_iov(&st, in + 4, 2, iov, 1, &used), 1);
	assert_int_equal(used, 0);
	assert_int_equal(smtp_stuff_iov(&st, in + 4, 2, iov, 1, &used), 1);
	assert_int_equal(used, 2);
	/* No room at all: nothing consumed, nothing changed. */
	assert_int_equal(smtp_stuff_iov(&st, in, 6, iov, 0, &used), 0);
	assert_int_equal(used, 0);
	assert_true(st.in_len == 6);
}

static void test_terminator(void **state)
{
	(void)state;
	out_is(STUFF(""), ".\r\n");
	out_is(STUFF("\r\n"), "\r\n.\r\n");
	out_is(STUFF("x\r\n"), "x\r\n.\r\n");
	/* Without a final CRLF the terminator brings one (4.1.1.4). */
	out_is(STUFF("x"), "x\r\n.\r\n");
	out_is(STUFF("x\r"), "x\r\r\n.\r\n");
	out_is(STUFF("x\n"), "x\n\r\n.\r\n");
	out_is(STUFF("\n"), "\n\r\n.\r\n");
	out_is(STUFF("\r"), "\r\r\n.\r\n");
	out_is(STUFF("x\n\r\n"), "x\n\r\n.\r\n");
}

static void test_bare_lf_line_start(void **state)
{
	(void)state;
	/* Stored bodies have no bare LF, but if one is there the next line is
	 * stuffed: no receiver can then see "\n.\r\n" as the end of data. */
	out_is(STUFF("a\n.\r\n"), "a\n..\r\n.\r\n");
	out_is(STUFF("a\r.\r\n"), "a\r.\r\n.\r\n");
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void test_random_bodies(void **state)
{
	(void)state;
	/* Bodies over the octets that matter: every split, equivalence with
	 * the server's unstuff, end of data exactly at our terminator. */
	static const char alphabet[] = ".\r\na";
	uint64_t seed = 0x9e3779b97f4a7c15u;
	char body[48];
	for (int round = 0; round < 400; round++) {
		size_t n = (size_t)(rng_next(&seed) % sizeof body);
		for (size_t i = 0; i < n; i++)
			body[i] = alphabet[rng_next(&seed) % 4];
		stuff_checked(body, n);
	}
}

/* ---- checker for stored-stuffed bodies ------------------------------------- */

/* Scan in[0..n) split at every offset; all must agree with the whole. */
static int check_stuffed(const char *in, size_t n)
{
	struct smtp_stuffed_state cs;
	struct iovec t;
	smtp_stuffed_begin(&cs);
	int scan = smtp_stuffed_scan(&cs, in, n);
	int end = smtp_stuffed_end(&cs, &t);
	for (size_t cut = 0; cut <= n; cut++) {
		struct smtp_stuffed_state ps;
		smtp_stuffed_begin(&ps);
		int r1 = smtp_stuffed_scan(&ps, in, cut);
		int r2 = smtp_stuffed_scan(&ps, in + cut, n - cut);
		assert_true(r1 == SMTP_PARSE_AGAIN || r2 == SMTP_PARSE_INVALID);
		assert_int_equal(r2, scan);
		assert_int_equal(smtp_stuffed_end(&ps, &t), end);
		assert_true(ps.in_len == n);
	}
	if (scan == SMTP_PARSE_INVALID)
		assert_int_equal(end, SMTP_PARSE_INVALID);
	return end;
}

#define CHECKED(lit) check_stuffed(lit, sizeof lit - 1)

static void test_stuffed_checker(void **state)
{
	(void)state;
	assert_int_equal(CHECKED(""), SMTP_PARSE_OK);
	assert_int_equal(CHECKED("a\r\n"), SMTP_PARSE_OK);
	assert_int_equal(CHECKED("..\r\n"), SMTP_PARSE_OK);
	assert_int_equal(CHECKED("a\r\n..\r\nb\r\n"), SMTP_PARSE_OK);
	assert_int_equal(CHECKED(".x\r\n"), SMTP_PARSE_OK);
	assert_int_equal(CHECKED("a.\r\n \r\n.a\r\n"), SMTP_PARSE_OK);
	/* A line "." inside would end the data early at the next hop. */
	assert_int_equal(CHECKED(".\r\n"), SMTP_PARSE_INVALID);
	assert_int_equal(CHECKED("a\r\n.\r\nb\r\n"), SMTP_PARSE_INVALID);
	assert_int_equal(CHECKED("a\r\n.\nb\r\n"), SMTP_PARSE_INVALID);
	assert_int_equal(CHECKED("a\n.\r\n"), SMTP_PARSE_INVALID);
	assert_int_equal(CHECKED("a\r\n.\rb\r\n"), SMTP_PARSE_INVALID);
	/* DATA stores the final CRLF: its absence means a damaged spool. */
	assert_int_equal(CHECKED("a"), SMTP_PARSE_INVALID);
	assert_int_equal(CHECKED("a\r\n."), SMTP_PARSE_INVALID);
	assert_int_equal(CHECKED("a\n"), SMTP_PARSE_INVALID);
	assert_int_equal(CHECKED("a\r"), SMTP_PARSE_INVALID);
}

static void test_stuffed_after_data(void **state)
{
	(void)state;
	/* What the server stores for DATA passes: scan a wire body with the
	 * server's scanner, keep all but ".\r\n", check it. */
	static const char wire[] = "Subject: t\r\n\r\n..leading\r\nmid.dle\r\n..\r\n.\r\n";
	struct smtp_data_state ds;
	size_t used;
	smtp_data_begin(&ds, true);
	assert_int_equal(smtp_data_scan(&ds, wire, sizeof wire - 1, &used), SMTP_PARSE_OK);
	assert_int_equal(used, sizeof wire - 1);
	assert_int_equal(check_stuffed(wire, (size_t)ds.wire_len - 3), SMTP_PARSE_OK);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_no_dots_one_iovec),  cmocka_unit_test(test_dot_at_very_start),
	    cmocka_unit_test(test_dot_after_crlf),     cmocka_unit_test(test_dot_across_buffers),
	    cmocka_unit_test(test_iov_budget),	       cmocka_unit_test(test_terminator),
	    cmocka_unit_test(test_bare_lf_line_start), cmocka_unit_test(test_random_bodies),
	    cmocka_unit_test(test_stuffed_checker),    cmocka_unit_test(test_stuffed_after_data),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
