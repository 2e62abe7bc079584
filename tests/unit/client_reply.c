/* Pins smtp_reply_parse (forms, splits, bounds), EHLO caps, LMTP tally and classification. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/client.h"

/* ---- a recorder: every line and reply a feed produced ------------------- */

#define EV_MAX	  256
#define REP_MAX	  64
#define ARENA_MAX (2 * SMTP_REPLY_BYTES_MAX)

struct ev {
	uint16_t code, index;
	bool last, bare_lf;
	size_t text_off, text_len; /* in run.arena */
};

struct run {
	int rc;		 /* last return: AGAIN after all input, or INVALID */
	uint8_t error;	 /* st.error at the end */
	size_t consumed; /* input bytes consumed over all calls */
	size_t nev, nrep, arena_len;
	struct ev ev[EV_MAX];
	struct smtp_reply rep[REP_MAX];
	char arena[ARENA_MAX];
};

static struct smtp_reply_state st;
static struct run whole_run, split_run;

/* A slice must lie in the bytes of this call or in the state's own line. */
static void check_text(const struct smtp_slice *s, const char *buf, size_t len)
{
	if (s->len == 0)
		return;
	bool in_buf = s->ptr >= buf && s->ptr + s->len <= buf + len;
	bool in_line = s->ptr >= st.line && s->ptr + s->len <= st.line + sizeof st.line;
	assert_true(in_buf || in_line);
}

static void record_line(struct run *r, const struct smtp_reply_line *l)
{
	assert_true(r->nev < EV_MAX && r->arena_len + l->text.len <= ARENA_MAX);
	if (l->text.len > 0)
		memcpy(r->arena + r->arena_len, l->text.ptr, l->text.len);
	r->ev[r->nev++] =
	    (struct ev){l->code, l->index, l->last, l->bare_lf, r->arena_len, l->text.len};
	r->arena_len += l->text.len;
	if (l->last) {
		assert_true(r->nrep < REP_MAX);
		assert_int_equal(st.reply.lines, l->index + 1);
		r->rep[r->nrep++] = st.reply;
	}
}

/* Feed in[0..n) in pieces ending at each cut (ascending, the last one n). */
static void feed(struct run *r, const char *in, size_t n, const size_t *cuts, size_t ncuts)
{
	size_t off = 0;
	memset(r, 0, offsetof(struct run, ev));
	r->rc = SMTP_PARSE_AGAIN;
	smtp_reply_init(&st);
	for (size_t c = 0; c < ncuts && r->rc != SMTP_PARSE_INVALID; c++) {
		assert_true(cuts[c] >= off && cuts[c] <= n);
		size_t left = cuts[c] - off;
		for (;;) {
			struct smtp_reply_line line;
			size_t used = SIZE_MAX;
			r->rc = smtp_reply_parse(&st, in + off, left, &used, &line);
			assert_true(used <= left);
			if (r->rc == SMTP_PARSE_INVALID)
				break;
			off += used;
			left -= used;
			if (r->rc == SMTP_PARSE_AGAIN) {
				assert_int_equal(left, 0);
				break;
			}
			assert_int_equal(in[off - 1], '\n');
			check_text(&line.text, in + off - used, used);
			record_line(r, &line);
		}
	}
	r->consumed = off;
	r->error = st.error;
	assert_true((r->rc == SMTP_PARSE_INVALID) == (st.error != SMTP_REPLY_E_NONE));
}

static void same_reply(const struct smtp_reply *x, const struct smtp_reply *y)
{
	assert_int_equal(x->code, y->code);
	assert_int_equal(x->lines, y->lines);
	assert_int_equal(x->bytes, y->bytes);
	assert_int_equal(x->flags, y->flags);
	assert_int_equal(x->esc_len, y->esc_len);
	assert_string_equal(x->esc, y->esc);
	assert_int_equal(x->text_len, y->text_len);
	assert_memory_equal(x->text, y->text, x->text_len);
}

static void same_run(const struct run *a, const struct run *b)
{
	assert_int_equal(a->rc, b->rc);
	assert_int_equal(a->error, b->error);
	assert_int_equal(a->nev, b->nev);
	assert_int_equal(a->nrep, b->nrep);
	if (a->rc != SMTP_PARSE_INVALID)
		assert_int_equal(a->consumed, b->consumed);
	for (size_t i = 0; i < a->nev; i++) {
		const struct ev *x = &a->ev[i], *y = &b->ev[i];
		assert_int_equal(x->code, y->code);
		assert_int_equal(x->index, y->index);
		assert_int_equal(x->last, y->last);
		assert_int_equal(x->bare_lf, y->bare_lf);
		assert_int_equal(x->text_len, y->text_len);
		assert_memory_equal(a->arena + x->text_off, b->arena + y->text_off, x->text_len);
	}
	for (size_t i = 0; i < a->nrep; i++)
		same_reply(&a->rep[i], &b->rep[i]);
}

/* Parse in one buffer, then check that a split at every `step`-th offset
 * and a byte-at-a-time feed give exactly the same lines and replies. */
static const struct run *parse_step(const char *in, size_t n, size_t step)
{
	feed(&whole_run, in, n, &n, 1);
	for (size_t cut = 0; cut <= n; cut += step) {
		size_t cuts[2] = {cut, n};
		feed(&split_run, in, n, cuts, 2);
		same_run(&whole_run, &split_run);
	}
	size_t *bytes = malloc((n + 1) * sizeof *bytes);
	assert_non_null(bytes);
	for (size_t i = 0; i <= n; i++)
		bytes[i] = i;
	feed(&split_run, in, n, bytes, n + 1);
	same_run(&whole_run, &split_run);
	free(bytes);
	return &whole_run;
}

static const struct run *parse_checked(const char *in, size_t n)
{
	return parse_step(in, n, 1);
}

#define PARSE(lit) parse_checked(lit, sizeof lit - 1)

static void text_is(const struct run *r, size_t i, const char *want)
{
	assert_true(i < r->nev);
	assert_int_equal(r->ev[i].text_len, strlen(want));
	assert_memory_equal(r->arena + r->ev[i].text_off, want, strlen(want));
}

static void kept_is(const struct smtp_reply *rep, const char *want)
{
	assert_int_equal(rep->text_len, strlen(want));
	assert_memory_equal(rep->text, want, strlen(want));
}

/* ---- forms ---------------------------------------------------------------- */

static void test_single_line(void **state)
{
	(void)state;
	const struct run *r = PARSE("250 OK\r\n");
	assert_int_equal(r->rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r->nev, 1);
	assert_int_equal(r->nrep, 1);
	assert_int_equal(r->ev[0].code, 250);
	assert_true(r->ev[0].last && !r->ev[0].bare_lf);
	text_is(r, 0, "OK");
	assert_int_equal(r->rep[0].code, 250);
	assert_int_equal(r->rep[0].lines, 1);
	assert_int_equal(r->rep[0].bytes, 8);
	assert_int_equal(r->rep[0].flags, 0);
	assert_int_equal(r->rep[0].esc_len, 0);
	kept_is(&r->rep[0], "OK");
}

static void test_code_alone(void **state)
{
	(void)state;
	const struct run *r = PARSE("250\r\n");
	assert_int_equal(r->nrep, 1);
	assert_true(r->ev[0].last);
	text_is(r, 0, "");
	kept_is(&r->rep[0], "");

	r = PARSE("354 \r\n");
	assert_int_equal(r->nrep, 1);
	assert_int_equal(r->rep[0].code, 354);
	text_is(r, 0, "");
}

static void test_multiline(void **state)
{
	(void)state;
	const struct run *r = PARSE("220-mx.example ESMTP\r\n220-\r\n220-second\r\n220 last\r\n");
	assert_int_equal(r->rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r->nev, 4);
	assert_int_equal(r->nrep, 1);
	for (uint16_t i = 0; i < 4; i++) {
		assert_int_equal(r->ev[i].code, 220);
		assert_int_equal(r->ev[i].index, i);
		assert_int_equal(r->ev[i].last, i == 3);
	}
	text_is(r, 0, "mx.example ESMTP");
	text_is(r, 1, "");
	text_is(r, 2, "second");
	text_is(r, 3, "last");
	assert_int_equal(r->rep[0].lines, 4);
	assert_int_equal(r->rep[0].bytes, 50);
	kept_is(&r->rep[0], "mx.example ESMTP second last");
}

static void test_multiline_ends_with_code_alone(void **state)
{
	(void)state;
	const struct run *r = PARSE("250-a\r\n250\r\n");
	assert_int_equal(r->nrep, 1);
	assert_int_equal(r->rep[0].lines, 2);
	kept_is(&r->rep[0], "a");
}

static void test_pipelined_replies(void **state)
{
	(void)state;
	const struct run *r =
	    PARSE("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <x@y>: unknown\r\n354 End data\r\n");
	assert_int_equal(r->rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r->nrep, 4);
	assert_int_equal(r->rep[0].code, 250);
	assert_string_equal(r->rep[0].esc, "2.1.0");
	assert_string_equal(r->rep[1].esc, "2.1.5");
	assert_int_equal(r->rep[2].code, 550);
	assert_string_equal(r->rep[2].esc, "5.1.1");
	kept_is(&r->rep[2], "5.1.1 <x@y>: unknown");
	assert_int_equal(r->rep[3].code, 354);
	assert_int_equal(r->rep[3].esc_len, 0);
	for (size_t i = 0; i < 4; i++)
		assert_int_equal(r->rep[i].lines, 1);
}

static void test_partial_then_more(void **state)
{
	(void)state;
	/* A reply whose end has not arrived: lines so far, then AGAIN. */
	const struct run *r = PARSE("250-first\r\n250-sec");
	assert_int_equal(r->rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r->nev, 1);
	assert_int_equal(r->nrep, 0);
	assert_int_equal(r->consumed, 18);
	assert_int_equal(st.fill, 7);
}

static void test_straddling_line_slice(void **state)
{
	(void)state;
	static const char a[] = "250 hel", b[] = "lo\r\n";
	struct smtp_reply_line line;
	size_t used;
	smtp_reply_init(&st);
	assert_int_equal(smtp_reply_parse(&st, a, 7, &used, &line), SMTP_PARSE_AGAIN);
	assert_int_equal(used, 7);
	assert_int_equal(smtp_reply_parse(&st, b, 4, &used, &line), SMTP_PARSE_OK);
	assert_int_equal(used, 4);
	/* Gathered in the state, the one copy the contract allows. */
	assert_ptr_equal(line.text.ptr, st.line + 4);
	assert_int_equal(line.text.len, 5);
	assert_memory_equal(line.text.ptr, "hello", 5);
	/* A line wholly inside the buffer is not copied. */
	static const char c[] = "251 x\r\n";
	assert_int_equal(smtp_reply_parse(&st, c, 7, &used, &line), SMTP_PARSE_OK);
	assert_ptr_equal(line.text.ptr, c + 4);
	assert_int_equal(st.reply.code, 251);
	assert_int_equal(st.reply.lines, 1);
}

static void test_empty_input(void **state)
{
	(void)state;
	struct smtp_reply_line line;
	size_t used = 99;
	smtp_reply_init(&st);
	assert_int_equal(smtp_reply_parse(&st, NULL, 0, &used, &line), SMTP_PARSE_AGAIN);
	assert_int_equal(used, 0);
}

/* ---- enhanced status codes (RFC 3463, RFC 2034) --------------------------- */

static void esc_is(const char *in, const char *want)
{
	const struct run *r = parse_checked(in, strlen(in));
	assert_int_equal(r->nrep, 1);
	assert_string_equal(r->rep[0].esc, want);
	assert_int_equal(r->rep[0].esc_len, strlen(want));
}

static void test_enhanced_codes(void **state)
{
	(void)state;
	esc_is("250 2.0.0 Ok\r\n", "2.0.0");
	esc_is("550 5.1.1\r\n", "5.1.1");
	esc_is("550 5.123.456 detail\r\n", "5.123.456");
	esc_is("452 4.3.1 Insufficient\r\n", "4.3.1");
	/* Class must match the code's first digit; 3xx has no class. */
	esc_is("550 4.1.1 confused\r\n", "");
	esc_is("354 3.0.0 go ahead\r\n", "");
	/* Malformed: too many digits, missing parts, glued text. */
	esc_is("550 5.1234.1 x\r\n", "");
	esc_is("550 5.1.1234 x\r\n", "");
	esc_is("550 5.1. x\r\n", "");
	esc_is("550 5..1 x\r\n", "");
	esc_is("550 5.1.1x\r\n", "");
	esc_is("550 5.1\r\n", "");
	esc_is("550 no code\r\n", "");
	/* Only the first line's code counts. */
	esc_is("550-no code\r\n550 5.1.1 later\r\n", "");
}

static void test_repeated_esc_dropped(void **state)
{
	(void)state;
	const struct run *r = PARSE("550-5.1.1 The email account that you tried to reach does\r\n"
				    "550-5.1.1 not exist. Please try\r\n"
				    "550-5.1.1\r\n"
				    "550 5.1.1  https://support.example/?p=NoSuchUser x\r\n");
	assert_int_equal(r->nrep, 1);
	assert_int_equal(r->rep[0].lines, 4);
	kept_is(&r->rep[0], "5.1.1 The email account that you tried to reach does not exist. "
			    "Please try https://support.example/?p=NoSuchUser x");
	/* A different code on a continuation line is text, kept as it is. */
	r = PARSE("550-5.1.1 a\r\n550 5.7.1 b\r\n");
	kept_is(&r->rep[0], "5.1.1 a 5.7.1 b");
}

/* ---- bare LF and refused octets ------------------------------------------- */

static void test_bare_lf_accepted(void **state)
{
	(void)state;
	const struct run *r = PARSE("250 ok\n");
	assert_int_equal(r->nrep, 1);
	assert_true(r->ev[0].bare_lf);
	text_is(r, 0, "ok");
	assert_int_equal(r->rep[0].flags, SMTP_REPLY_BARE_LF);
	assert_int_equal(r->rep[0].bytes, 7);

	r = PARSE("250-a\r\n250-b\n250 c\r\n250 next\r\n");
	assert_int_equal(r->nrep, 2);
	assert_false(r->ev[0].bare_lf);
	assert_true(r->ev[1].bare_lf);
	assert_false(r->ev[2].bare_lf);
	assert_int_equal(r->rep[0].flags, SMTP_REPLY_BARE_LF);
	/* The flag belongs to the reply it was seen in. */
	assert_int_equal(r->rep[1].flags, 0);
}

static void invalid_is(const char *in, size_t n, enum smtp_reply_error e, size_t lines_before)
{
	const struct run *r = parse_checked(in, n);
	assert_int_equal(r->rc, SMTP_PARSE_INVALID);
	assert_int_equal(r->error, e);
	assert_int_equal(r->nev, lines_before);
}

#define INVALID(lit, e, before) invalid_is(lit, sizeof lit - 1, e, before)

static void test_refused_octets(void **state)
{
	(void)state;
	INVALID("250 a\0b\r\n", SMTP_REPLY_E_OCTET, 0);
	INVALID("250 a\rb\r\n", SMTP_REPLY_E_OCTET, 0);
	INVALID("250 ok\r\r\n", SMTP_REPLY_E_OCTET, 0);
	INVALID("250-ok\r\n\r250 x\r\n", SMTP_REPLY_E_OCTET, 1);
	INVALID("\0\n", SMTP_REPLY_E_OCTET, 0);
}

static void test_syntax_errors(void **state)
{
	(void)state;
	INVALID("\r\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID("\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID("25\r\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID("2500 x\r\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID("250x\r\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID("250\tx\r\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID("abc def\r\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID(" 250 x\r\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID("150 x\r\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID("650 x\r\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID("260 x\r\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID("25a x\r\n", SMTP_REPLY_E_SYNTAX, 0);
	INVALID("250-a\r\nxyz\r\n", SMTP_REPLY_E_SYNTAX, 1);
	INVALID("250 ok\r\nHTTP/1.1 400\r\n", SMTP_REPLY_E_SYNTAX, 1);
	/* The extreme codes of the grammar are fine. */
	assert_int_equal(PARSE("200 x\r\n")->nrep, 1);
	assert_int_equal(PARSE("559 x\r\n")->nrep, 1);
}

static void test_mixed_codes(void **state)
{
	(void)state;
	INVALID("250-a\r\n251 b\r\n", SMTP_REPLY_E_MIXED, 1);
	INVALID("250-a\r\n250-b\r\n550 c\r\n", SMTP_REPLY_E_MIXED, 2);
	INVALID("450-a\r\n550-b\r\n", SMTP_REPLY_E_MIXED, 1);
	/* The same codes in two separate replies are of course fine. */
	assert_int_equal(PARSE("250 a\r\n251 b\r\n")->nrep, 2);
}

static void test_invalid_is_sticky(void **state)
{
	(void)state;
	struct smtp_reply_line line;
	size_t used;
	smtp_reply_init(&st);
	assert_int_equal(smtp_reply_parse(&st, "xx\r\n", 4, &used, &line), SMTP_PARSE_INVALID);
	assert_int_equal(smtp_reply_parse(&st, "250 ok\r\n", 8, &used, &line), SMTP_PARSE_INVALID);
	assert_int_equal(used, 0);
	smtp_reply_init(&st);
	assert_int_equal(smtp_reply_parse(&st, "250 ok\r\n", 8, &used, &line), SMTP_PARSE_OK);
}

/* ---- bounds --------------------------------------------------------------- */

static char big[2 * SMTP_REPLY_BYTES_MAX];

/* One line "250-xxx...<end>" of exactly `total` bytes, line end included. */
static size_t put_line(char *p, size_t total, char sep, bool crlf)
{
	size_t end = crlf ? 2 : 1;
	assert_true(total >= 4 + end);
	memcpy(p, "250", 3);
	p[3] = sep;
	memset(p + 4, 'x', total - 4 - end);
	memcpy(p + total - end, crlf ? "\r\n" : "\n", end);
	return total;
}

static void test_line_bound(void **state)
{
	(void)state;
	/* Exactly SMTP_REPLY_LINE_MAX with CRLF: accepted, also when split. */
	size_t n = put_line(big, SMTP_REPLY_LINE_MAX, ' ', true);
	const struct run *r = parse_step(big, n, 61);
	assert_int_equal(r->nrep, 1);
	assert_int_equal(r->ev[0].text_len, SMTP_REPLY_LINE_MAX - 6);
	assert_int_equal(r->rep[0].bytes, SMTP_REPLY_LINE_MAX);
	assert_true(r->rep[0].flags & SMTP_REPLY_TEXT_TRUNCATED);
	assert_int_equal(r->rep[0].text_len, SMTP_REPLY_TEXT_MAX);
	/* One over. */
	n = put_line(big, SMTP_REPLY_LINE_MAX + 1, ' ', true);
	r = parse_step(big, n, 61);
	assert_int_equal(r->rc, SMTP_PARSE_INVALID);
	assert_int_equal(r->error, SMTP_REPLY_E_LINE_LONG);
	/* The same content with a bare LF: the bound is on the content. */
	n = put_line(big, SMTP_REPLY_LINE_MAX - 1, ' ', false);
	assert_int_equal(parse_step(big, n, 61)->nrep, 1);
	n = put_line(big, SMTP_REPLY_LINE_MAX, ' ', false);
	r = parse_step(big, n, 61);
	assert_int_equal(r->error, SMTP_REPLY_E_LINE_LONG);
}

static void test_line_bound_without_lf(void **state)
{
	(void)state;
	/* A line that never ends is refused as soon as it cannot fit, not
	 * buffered until an LF that may never come. */
	memset(big, 'x', sizeof big);
	memcpy(big, "250 ", 4);
	const struct run *r = parse_step(big, SMTP_REPLY_LINE_MAX - 1, 97);
	assert_int_equal(r->rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r->consumed, SMTP_REPLY_LINE_MAX - 1);
	r = parse_step(big, SMTP_REPLY_LINE_MAX, 97);
	assert_int_equal(r->rc, SMTP_PARSE_INVALID);
	assert_int_equal(r->error, SMTP_REPLY_E_LINE_LONG);
	r = parse_step(big, sizeof big, 4099);
	assert_int_equal(r->error, SMTP_REPLY_E_LINE_LONG);
}

static size_t put_lines(size_t count, char last_sep)
{
	size_t n = 0;
	for (size_t i = 0; i < count; i++)
		n += put_line(big + n, 8, i + 1 == count ? last_sep : '-', true);
	return n;
}

static void test_lines_bound(void **state)
{
	(void)state;
	size_t n = put_lines(SMTP_REPLY_LINES_MAX, ' ');
	const struct run *r = parse_step(big, n, 7);
	assert_int_equal(r->rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r->nrep, 1);
	assert_int_equal(r->rep[0].lines, SMTP_REPLY_LINES_MAX);
	/* One more line: refused at the continuation that makes it 101. */
	n = put_lines(SMTP_REPLY_LINES_MAX + 1, ' ');
	r = parse_step(big, n, 7);
	assert_int_equal(r->rc, SMTP_PARSE_INVALID);
	assert_int_equal(r->error, SMTP_REPLY_E_LINES);
	assert_int_equal(r->nev, SMTP_REPLY_LINES_MAX - 1);
}

/* A reply of exactly `total` bytes from full-length lines and a last one
 * that takes up the rest. */
static size_t put_reply(size_t total)
{
	size_t n = 0;
	while (total - n > SMTP_REPLY_LINE_MAX + 8)
		n += put_line(big + n, SMTP_REPLY_LINE_MAX, '-', true);
	size_t rest = total - n;
	if (rest > SMTP_REPLY_LINE_MAX) {
		n += put_line(big + n, rest - 8, '-', true);
		rest = 8;
	}
	n += put_line(big + n, rest, ' ', true);
	assert_int_equal(n, total);
	return n;
}

static void test_bytes_bound(void **state)
{
	(void)state;
	size_t n = put_reply(SMTP_REPLY_BYTES_MAX);
	const struct run *r = parse_step(big, n, 4093);
	assert_int_equal(r->rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r->nrep, 1);
	assert_int_equal(r->rep[0].bytes, SMTP_REPLY_BYTES_MAX);
	n = put_reply(SMTP_REPLY_BYTES_MAX + 1);
	r = parse_step(big, n, 4093);
	assert_int_equal(r->rc, SMTP_PARSE_INVALID);
	assert_int_equal(r->error, SMTP_REPLY_E_BYTES);
	/* The bound is per reply: two big replies in a row are fine. */
	n = put_reply(SMTP_REPLY_BYTES_MAX);
	memcpy(big + n, big, n);
	r = parse_step(big, 2 * n, 8191);
	assert_int_equal(r->nrep, 2);
}

static void test_kept_text_sanitized(void **state)
{
	(void)state;
	/* Well-formed UTF-8 is kept (an SMTPUTF8 server's text, for the RFC
	 * 6533 report); controls become '?'. */
	const struct run *r = PARSE("550 5.7.1 caf\xc3\xa9\tand\x7f\x01 bell \xe2\x80\x93 "
				    "\xf0\x9f\x93\xab\r\n");
	kept_is(&r->rep[0], "5.7.1 caf\xc3\xa9?and?? bell \xe2\x80\x93 \xf0\x9f\x93\xab");
	/* The line's own slice is the raw text. */
	text_is(r, 0, "5.7.1 caf\xc3\xa9\tand\x7f\x01 bell \xe2\x80\x93 \xf0\x9f\x93\xab");
	/* Malformed UTF-8 is '?' octet by octet: a lone continuation, an
	 * overlong '/', a surrogate, past U+10FFFF, Latin-1, a sequence cut
	 * short by the next character and by the line end. */
	r = PARSE("550 a\x80"
		  "b\xc0\xaf"
		  "c\xed\xa0\x80"
		  "d\xf4\x90\x80\x80"
		  "e\xe9"
		  "t\xe2\x80"
		  "x\xe2\x80\r\n");
	kept_is(&r->rep[0], "a?b??c???d????e?t??x??");
	/* Multi-line: each line's text is checked on its own. */
	r = PARSE("550-M\xc3\xbcller\r\n550 \xc3\r\n");
	kept_is(&r->rep[0], "M\xc3\xbcller ?");
	/* C1 controls are well-formed UTF-8 but controls all the same (U+009B
	 * is a terminal's CSI); U+00A0 is not one. */
	r = PARSE("550 a\xc2\x9b"
		  "31m \xc2\x85x\xc2\xa0y\r\n");
	kept_is(&r->rep[0], "a??31m ??x\xc2\xa0y");
}

/* ---- EHLO ----------------------------------------------------------------- */

static void test_ehlo_postfix(void **state)
{
	(void)state;
	static const char r[] =
	    "250-mail.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
	    "250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n"
	    "250-AUTH=PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
	    "250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";
	struct smtp_ehlo_caps caps;
	assert_int_equal(smtp_ehlo_parse(r, sizeof r - 1, &caps), SMTP_PARSE_OK);
	assert_int_equal(caps.ext, SMTP_EXT_PIPELINING | SMTP_EXT_SIZE | SMTP_EXT_STARTTLS |
				       SMTP_EXT_AUTH | SMTP_EXT_ENHANCEDSTATUSCODES |
				       SMTP_EXT_8BITMIME | SMTP_EXT_DSN | SMTP_EXT_SMTPUTF8 |
				       SMTP_EXT_CHUNKING);
	assert_int_equal(caps.auth, SMTP_AUTH_PLAIN | SMTP_AUTH_LOGIN);
	assert_true(caps.size_max == 10240000);
}

static void test_ehlo_exchange(void **state)
{
	(void)state;
	static const char r[] =
	    "250-EX01.contoso.com Hello [10.0.0.7]\r\n250-SIZE 37748736\r\n250-PIPELINING\r\n"
	    "250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-X-ANONYMOUSTLS\r\n"
	    "250-AUTH NTLM\r\n250-X-EXPS GSSAPI NTLM\r\n250-8BITMIME\r\n250-BINARYMIME\r\n"
	    "250-CHUNKING\r\n250-XRDST\r\n250 XSHADOWREQUEST\r\n";
	struct smtp_ehlo_caps caps;
	assert_int_equal(smtp_ehlo_parse(r, sizeof r - 1, &caps), SMTP_PARSE_OK);
	assert_int_equal(caps.ext, SMTP_EXT_SIZE | SMTP_EXT_PIPELINING | SMTP_EXT_DSN |
				       SMTP_EXT_ENHANCEDSTATUSCODES | SMTP_EXT_STARTTLS |
				       SMTP_EXT_AUTH | SMTP_EXT_8BITMIME | SMTP_EXT_CHUNKING);
	/* X-EXPS lists mechanisms too, but it is not AUTH. */
	assert_int_equal(caps.auth, SMTP_AUTH_NTLM);
	assert_true(caps.size_max == 37748736);
}

static void test_ehlo_gmail(void **state)
{
	(void)state;
	static const char r[] = "250-smtp.gmail.com at your service, [192.0.2.1]\r\n"
				"250-SIZE 35882577\r\n250-8BITMIME\r\n250-STARTTLS\r\n"
				"250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-CHUNKING\r\n"
				"250 SMTPUTF8\r\n";
	struct smtp_ehlo_caps caps;
	assert_int_equal(smtp_ehlo_parse(r, sizeof r - 1, &caps), SMTP_PARSE_OK);
	assert_int_equal(caps.ext, SMTP_EXT_SIZE | SMTP_EXT_8BITMIME | SMTP_EXT_STARTTLS |
				       SMTP_EXT_ENHANCEDSTATUSCODES | SMTP_EXT_PIPELINING |
				       SMTP_EXT_CHUNKING | SMTP_EXT_SMTPUTF8);
	assert_int_equal(caps.auth, 0);
	assert_true(caps.size_max == 35882577);

	/* After STARTTLS on submission: AUTH with known and unknown mechs. */
	static const char t[] = "250-smtp.gmail.com at your service\r\n250-SIZE 35882577\r\n"
				"250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER "
				"XOAUTH\r\n250 SMTPUTF8\r\n";
	assert_int_equal(smtp_ehlo_parse(t, sizeof t - 1, &caps), SMTP_PARSE_OK);
	assert_int_equal(caps.auth, SMTP_AUTH_LOGIN | SMTP_AUTH_PLAIN | SMTP_AUTH_XOAUTH2 |
					SMTP_AUTH_OAUTHBEARER);
}

static void ehlo_size_is(const char *r, uint64_t want, bool has)
{
	struct smtp_ehlo_caps caps;
	assert_int_equal(smtp_ehlo_parse(r, strlen(r), &caps), SMTP_PARSE_OK);
	assert_int_equal((caps.ext & SMTP_EXT_SIZE) != 0, has);
	assert_true(caps.size_max == want);
}

static void test_ehlo_size_forms(void **state)
{
	(void)state;
	/* Sendmail without a limit says SIZE alone. */
	ehlo_size_is("250-mx\r\n250 SIZE\r\n", 0, true);
	ehlo_size_is("250-mx\r\n250 SIZE 0\r\n", 0, true);
	ehlo_size_is("250-mx\r\n250 size   52428800\r\n", 52428800, true);
	ehlo_size_is("250-mx\r\n250 SIZE\t1000 extra\r\n", 1000, true);
	ehlo_size_is("250-mx\r\n250 SIZE 18446744073709551615\r\n", UINT64_MAX, true);
	ehlo_size_is("250-mx\r\n250 SIZE 18446744073709551616\r\n", 0, true);
	ehlo_size_is("250-mx\r\n250 SIZE 10M\r\n", 0, true);
	ehlo_size_is("250-mx\r\n250 SIZEX 1000\r\n", 0, false);
	/* Only the greeting line: no extensions at all. */
	ehlo_size_is("250 mx.example\r\n", 0, false);
	/* The greeting line is never a keyword. */
	ehlo_size_is("250-SIZE 1000\r\n250 HELP\r\n", 0, false);
}

static void test_ehlo_keywords(void **state)
{
	(void)state;
	static const char r[] =
	    "250-lmtp.example LHLO ok\r\n250-pipelining\r\n250-Enhancedstatuscodes\r\n"
	    "250-8bitmime\r\n250-PIPELININGX\r\n250-DSNX\r\n250-\r\n250-   \r\n"
	    "250-auth=cram-md5 scram-sha-256 FOO\r\n250 x-unknown thing\r\n";
	struct smtp_ehlo_caps caps;
	assert_int_equal(smtp_ehlo_parse(r, sizeof r - 1, &caps), SMTP_PARSE_OK);
	assert_int_equal(caps.ext, SMTP_EXT_PIPELINING | SMTP_EXT_ENHANCEDSTATUSCODES |
				       SMTP_EXT_8BITMIME | SMTP_EXT_AUTH);
	assert_int_equal(caps.auth, SMTP_AUTH_CRAM_MD5 | SMTP_AUTH_SCRAM_SHA_256);
}

static void test_ehlo_refused(void **state)
{
	(void)state;
	struct smtp_ehlo_caps caps;
	/* Not 250: the caller falls back to HELO or defers. */
	assert_int_equal(smtp_ehlo_parse("502 5.5.1 no\r\n", 14, &caps), SMTP_PARSE_INVALID);
	assert_int_equal(smtp_ehlo_parse("250-a\r\n250 b", 12, &caps), SMTP_PARSE_AGAIN);
	assert_int_equal(smtp_ehlo_parse("", 0, &caps), SMTP_PARSE_AGAIN);
	assert_int_equal(smtp_ehlo_parse("250 a\r\n250 b\r\n", 14, &caps), SMTP_PARSE_INVALID);
	assert_int_equal(smtp_ehlo_parse("250-a\r\n251 b\r\n", 14, &caps), SMTP_PARSE_INVALID);
}

static void test_ehlo_line_by_line(void **state)
{
	(void)state;
	/* The incremental form, as a connection uses it with split buffers. */
	static const char r[] = "250-mx\r\n250-SIZE 2000\r\n250 PIPELINING\r\n";
	struct smtp_ehlo_caps caps;
	struct smtp_reply_line line;
	size_t used, off = 0;
	smtp_reply_init(&st);
	smtp_ehlo_begin(&caps);
	for (size_t cut = 5; off < sizeof r - 1; cut += 5) {
		size_t end = cut < sizeof r - 1 ? cut : sizeof r - 1;
		while (smtp_reply_parse(&st, r + off, end - off, &used, &line) == SMTP_PARSE_OK) {
			off += used;
			smtp_ehlo_line(&caps, &line);
		}
		off += used;
	}
	assert_int_equal(caps.ext, SMTP_EXT_SIZE | SMTP_EXT_PIPELINING);
	assert_true(caps.size_max == 2000);
}

/* ---- LMTP ----------------------------------------------------------------- */

static void test_lmtp_tally(void **state)
{
	(void)state;
	struct smtp_lmtp_tally t;
	uint32_t idx = 99;
	smtp_lmtp_begin(&t, 3);
	assert_int_equal(smtp_lmtp_reply(&t, &idx), SMTP_PARSE_AGAIN);
	assert_int_equal(idx, 0);
	assert_int_equal(t.remaining, 2);
	assert_int_equal(smtp_lmtp_reply(&t, &idx), SMTP_PARSE_AGAIN);
	assert_int_equal(idx, 1);
	assert_int_equal(smtp_lmtp_reply(&t, &idx), SMTP_PARSE_OK);
	assert_int_equal(idx, 2);
	assert_int_equal(t.remaining, 0);
	assert_int_equal(smtp_lmtp_reply(&t, &idx), SMTP_PARSE_INVALID);
	smtp_lmtp_begin(&t, 0);
	assert_int_equal(smtp_lmtp_reply(&t, &idx), SMTP_PARSE_INVALID);
}

static void test_lmtp_after_data(void **state)
{
	(void)state;
	/* Three accepted RCPTs; their replies arrive in one buffer. */
	static const char r[] = "250 2.1.5 <a@x> delivered\r\n550-5.1.1 <b@x>\r\n"
				"550 5.1.1 no such user\r\n452 4.2.2 <c@x> mailbox full\r\n";
	static const enum smtp_outcome want[] = {SMTP_OUTCOME_DONE, SMTP_OUTCOME_BOUNCE,
						 SMTP_OUTCOME_DEFER};
	struct smtp_lmtp_tally t;
	struct smtp_reply_line line;
	size_t used, off = 0, seen = 0;
	int rc = SMTP_PARSE_AGAIN;
	smtp_reply_init(&st);
	smtp_lmtp_begin(&t, 3);
	while (rc == SMTP_PARSE_AGAIN &&
	       smtp_reply_parse(&st, r + off, sizeof r - 1 - off, &used, &line) == SMTP_PARSE_OK) {
		off += used;
		if (!line.last)
			continue;
		uint32_t idx;
		rc = smtp_lmtp_reply(&t, &idx);
		assert_int_equal(idx, seen);
		assert_int_equal(smtp_reply_outcome(st.reply.code), want[seen]);
		seen++;
	}
	assert_int_equal(rc, SMTP_PARSE_OK);
	assert_int_equal(seen, 3);
	assert_int_equal(off, sizeof r - 1);
}

/* ---- classification and diagnostics --------------------------------------- */

static void test_outcome(void **state)
{
	(void)state;
	assert_int_equal(smtp_reply_outcome(250), SMTP_OUTCOME_DONE);
	assert_int_equal(smtp_reply_outcome(221), SMTP_OUTCOME_DONE);
	assert_int_equal(smtp_reply_outcome(354), SMTP_OUTCOME_MORE);
	assert_int_equal(smtp_reply_outcome(334), SMTP_OUTCOME_MORE);
	assert_int_equal(smtp_reply_outcome(421), SMTP_OUTCOME_DEFER);
	assert_int_equal(smtp_reply_outcome(452), SMTP_OUTCOME_DEFER);
	assert_int_equal(smtp_reply_outcome(550), SMTP_OUTCOME_BOUNCE);
	assert_int_equal(smtp_reply_outcome(554), SMTP_OUTCOME_BOUNCE);
	assert_int_equal(smtp_reply_outcome(0), SMTP_OUTCOME_DEFER);
}

static const struct smtp_reply *one_reply(const char *in)
{
	const struct run *r = parse_checked(in, strlen(in));
	assert_int_equal(r->nrep, 1);
	return &r->rep[0];
}

static void test_diag(void **state)
{
	(void)state;
	char out[SMTP_REPLY_TEXT_MAX + 32];
	const struct smtp_reply *r = one_reply("550 5.1.1 <x>: unknown user\r\n");
	size_t n = smtp_reply_diag(r, out, sizeof out);
	assert_string_equal(out, "smtp; 550 5.1.1 <x>: unknown user");
	assert_int_equal(n, strlen(out));
	r = one_reply("421\r\n");
	smtp_reply_diag(r, out, sizeof out);
	assert_string_equal(out, "smtp; 421");
	r = one_reply("451-4.3.0 first\r\n451 4.3.0 second\r\n");
	smtp_reply_diag(r, out, sizeof out);
	assert_string_equal(out, "smtp; 451 4.3.0 first second");
	/* Truncated to the caller's room, always terminated. */
	r = one_reply("550 5.1.1 <x>: unknown user\r\n");
	assert_int_equal(smtp_reply_diag(r, out, 10), 9);
	assert_string_equal(out, "smtp; 550");
	assert_int_equal(smtp_reply_diag(r, out, 1), 0);
	assert_string_equal(out, "");
	/* A peer's CR/LF and control octets never get into the field. */
	r = one_reply("554-a\x1b[31m\r\n554 b\n");
	smtp_reply_diag(r, out, sizeof out);
	assert_string_equal(out, "smtp; 554 a?[31m b");
}

/* The SMTP_REPLY_TEXT_MAX cut and smtp_reply_diag's cut never split a
 * UTF-8 character. */
static void test_kept_text_utf8_cut(void **state)
{
	(void)state;
	char line[SMTP_REPLY_TEXT_MAX + 64], out[64];
	size_t n = 0;

	/* "550 " then 'x' until one octet short of the bound, then a 2-octet
	 * character: it does not fit and is left out whole. */
	n += (size_t)snprintf(line, sizeof line, "550 ");
	memset(line + n, 'x', SMTP_REPLY_TEXT_MAX - 1);
	n += SMTP_REPLY_TEXT_MAX - 1;
	memcpy(line + n, "\xc3\xa9\r\n", 4);
	n += 4;
	line[n] = '\0';
	const struct run *r = parse_checked(line, n);
	assert_int_equal(r->rep[0].text_len, SMTP_REPLY_TEXT_MAX - 1);
	assert_true(r->rep[0].flags & SMTP_REPLY_TEXT_TRUNCATED);
	/* One more room: it fits exactly. */
	memmove(line + 5, line + 6, n - 6);
	n--;
	r = parse_checked(line, n);
	assert_int_equal(r->rep[0].text_len, SMTP_REPLY_TEXT_MAX);
	assert_memory_equal(r->rep[0].text + SMTP_REPLY_TEXT_MAX - 2, "\xc3\xa9", 2);

	/* "smtp; 550 " is 10 octets; the euro sign takes 3. */
	const struct smtp_reply *rep = one_reply("550 ab\xe2\x82\xac\r\n");
	assert_int_equal(smtp_reply_diag(rep, out, 13), 12);
	assert_string_equal(out, "smtp; 550 ab");
	assert_int_equal(smtp_reply_diag(rep, out, 14), 12);
	assert_int_equal(smtp_reply_diag(rep, out, 15), 12);
	assert_int_equal(smtp_reply_diag(rep, out, 16), 15);
	assert_string_equal(out, "smtp; 550 ab\xe2\x82\xac");
}

/* RFC 5321 4.5.3.1.10: "too many recipients" is the hop's limit per
 * transaction (the recipient goes in the next one), not a refusal. */
static void test_rcpt_overflow(void **state)
{
	(void)state;
	static const char *const yes[] = {
	    "452 4.5.3 Error: too many recipients\r\n",
	    "452 Too many recipients\r\n", /* 452 is the code for it (no enhanced code) */
	    "452 Requested action not taken\r\n",
	    "552 5.5.3 Too many recipients\r\n", /* RFC 821's code: temporary all the same */
	    "552 Too many Recipients for this message\r\n",
	    "452-4.5.3 first\r\n452 4.5.3 second\r\n",
	};
	static const char *const no[] = {
	    "452 4.2.2 Mailbox full\r\n", /* a cause of its own */
	    "452 4.3.1 Insufficient system storage\r\n",
	    "552 5.2.2 Mailbox over quota\r\n",
	    "552 Requested mail action aborted: exceeded storage allocation\r\n",
	    "451 4.5.3 Too many recipients\r\n", /* only 452 and 552 say it */
	    "550 5.5.3 Too many recipients\r\n",
	    "250 2.1.5 Ok\r\n",
	    "503 5.5.1 Error: nested MAIL command\r\n",
	};

	for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
		assert_true(smtp_reply_rcpt_overflow(one_reply(yes[i])));
	for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
		assert_false(smtp_reply_rcpt_overflow(one_reply(no[i])));
}

static void status_is(const char *in, const char *want)
{
	char out[SMTP_ESC_MAX + 1];
	assert_int_equal(smtp_reply_status(one_reply(in), out), strlen(want));
	assert_string_equal(out, want);
}

static void test_status(void **state)
{
	(void)state;
	status_is("550 5.7.26 unauthenticated\r\n", "5.7.26");
	status_is("550 mailbox unavailable\r\n", "5.0.0");
	status_is("451 try later\r\n", "4.0.0");
	status_is("250 ok\r\n", "2.0.0");
	status_is("354 go\r\n", "4.0.0");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_single_line),
	    cmocka_unit_test(test_code_alone),
	    cmocka_unit_test(test_multiline),
	    cmocka_unit_test(test_multiline_ends_with_code_alone),
	    cmocka_unit_test(test_pipelined_replies),
	    cmocka_unit_test(test_partial_then_more),
	    cmocka_unit_test(test_straddling_line_slice),
	    cmocka_unit_test(test_empty_input),
	    cmocka_unit_test(test_enhanced_codes),
	    cmocka_unit_test(test_repeated_esc_dropped),
	    cmocka_unit_test(test_bare_lf_accepted),
	    cmocka_unit_test(test_refused_octets),
	    cmocka_unit_test(test_syntax_errors),
	    cmocka_unit_test(test_mixed_codes),
	    cmocka_unit_test(test_invalid_is_sticky),
	    cmocka_unit_test(test_line_bound),
	    cmocka_unit_test(test_line_bound_without_lf),
	    cmocka_unit_test(test_lines_bound),
	    cmocka_unit_test(test_bytes_bound),
	    cmocka_unit_test(test_kept_text_sanitized),
	    cmocka_unit_test(test_kept_text_utf8_cut),
	    cmocka_unit_test(test_ehlo_postfix),
	    cmocka_unit_test(test_ehlo_exchange),
	    cmocka_unit_test(test_ehlo_gmail),
	    cmocka_unit_test(test_ehlo_size_forms),
	    cmocka_unit_test(test_ehlo_keywords),
	    cmocka_unit_test(test_ehlo_refused),
	    cmocka_unit_test(test_ehlo_line_by_line),
	    cmocka_unit_test(test_lmtp_tally),
	    cmocka_unit_test(test_lmtp_after_data),
	    cmocka_unit_test(test_outcome),
	    cmocka_unit_test(test_diag),
	    cmocka_unit_test(test_rcpt_overflow),
	    cmocka_unit_test(test_status),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
