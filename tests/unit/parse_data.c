/* Pins smtp_data_scan (end of data, smuggling flags, lines, headers, splits, size), smtp_unstuff. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/parse.h"

struct result {
	int rc;
	size_t used; /* bytes of the input consumed over all calls */
	struct smtp_data_state st;
};

/* Feed msg[0..n) in pieces ending at each cut (ascending, last one n). */
static struct result scan_pieces(const char *msg, size_t n, bool dot, const size_t *cuts,
				 size_t ncuts)
{
	struct result r = {.rc = SMTP_PARSE_AGAIN};
	size_t off = 0;
	smtp_data_begin(&r.st, dot);
	for (size_t i = 0; i < ncuts && r.rc == SMTP_PARSE_AGAIN; i++) {
		size_t used = SIZE_MAX;
		assert_true(cuts[i] >= off && cuts[i] <= n);
		r.rc = smtp_data_scan(&r.st, msg + off, cuts[i] - off, &used);
		assert_true(used <= cuts[i] - off);
		assert_true(r.rc == SMTP_PARSE_OK || r.rc == SMTP_PARSE_AGAIN);
		if (r.rc == SMTP_PARSE_AGAIN)
			assert_int_equal(used, cuts[i] - off);
		off += used;
	}
	r.used = off;
	assert_true(r.st.wire_len == off);
	return r;
}

static struct result scan_whole(const char *msg, size_t n, bool dot)
{
	return scan_pieces(msg, n, dot, &n, 1);
}

static void same(const struct result *a, const struct result *b)
{
	assert_int_equal(a->rc, b->rc);
	assert_int_equal(a->used, b->used);
	assert_true(a->st.wire_len == b->st.wire_len);
	assert_true(a->st.stuff_len == b->st.stuff_len);
	assert_int_equal(a->st.flags, b->st.flags);
	assert_int_equal(a->st.received_count, b->st.received_count);
	assert_int_equal(a->st.line_len, b->st.line_len);
	assert_int_equal(a->st.in_header, b->st.in_header);
	assert_int_equal(a->st.phase, b->st.phase);
}

/* The whole-buffer result, after checking that a split at every offset and a
 * byte-at-a-time feed give exactly the same one. */
static struct result scan_checked(const char *msg, size_t n, bool dot)
{
	struct result whole = scan_whole(msg, n, dot);
	for (size_t cut = 0; cut <= n; cut++) {
		size_t cuts[2] = {cut, n};
		struct result r = scan_pieces(msg, n, dot, cuts, 2);
		same(&whole, &r);
	}
	size_t *bytes = test_malloc((n + 1) * sizeof *bytes);
	for (size_t i = 0; i <= n; i++)
		bytes[i] = i;
	struct result r = scan_pieces(msg, n, dot, bytes, n + 1);
	same(&whole, &r);
	test_free(bytes);
	return whole;
}

#define SCAN(lit, dot) scan_checked(lit, sizeof lit - 1, dot)

static void test_simple_end(void **state)
{
	(void)state;
	static const char m[] = "Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";
	struct result r = SCAN(m, true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.used, sizeof m - 1 - 6);
	assert_true(r.st.wire_len == r.used);
	assert_int_equal(r.st.flags, 0);
	assert_int_equal(r.st.in_header, 0);
	/* The message as stored is wire_len - 3 bytes, ending in CRLF. */
	assert_memory_equal(m + r.st.wire_len - 5, "\r\n.\r\n", 5);
}

static void test_again(void **state)
{
	(void)state;
	struct result r = SCAN("Subject: x\r\n\r\nno end yet\r\n", true);
	assert_int_equal(r.rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r.used, 26);
	r = SCAN("", true);
	assert_int_equal(r.rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r.used, 0);
	/* Terminator without its final LF yet. */
	r = SCAN("a\r\n.\r", true);
	assert_int_equal(r.rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r.st.flags, 0);
}

/* The CRLF of the DATA command is the first half of the terminator. */
static void test_empty_message(void **state)
{
	(void)state;
	struct result r = SCAN(".\r\n", true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.used, 3);
	r = SCAN(".\r\nQUIT\r\n", true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.used, 3);
	assert_int_equal(r.st.flags, 0);
	/* A stuffed dot at the very start is content. */
	r = SCAN("..\r\n.\r\n", true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.used, 7);
	r = SCAN(".x\r\n.\r\n", true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.used, 7);
}

static void test_after_end(void **state)
{
	(void)state;
	struct smtp_data_state st;
	size_t used = 99;
	smtp_data_begin(&st, true);
	assert_int_equal(smtp_data_scan(&st, ".\r\nQUIT\r\n", 9, &used), SMTP_PARSE_OK);
	assert_int_equal(used, 3);
	assert_int_equal(smtp_data_scan(&st, "QUIT\r\n", 6, &used), SMTP_PARSE_OK);
	assert_int_equal(used, 0);
	assert_true(st.wire_len == 3);
}

/*
 * SMTP smuggling (CVE-2023-51764/5/6): each near-miss of CRLF.CRLF is content
 * and raises its flag; only the real terminator at the end is found, so the
 * "MAIL FROM" after the near-miss is never read as a command.
 */
static void test_smuggling_variants(void **state)
{
	(void)state;
	static const struct {
		const char *seq;
		size_t len;
		uint32_t flags;
	} v[] = {
#define V(s, f) {s, sizeof s - 1, f}
	    V("\n.\n", SMTP_DATA_BARE_LF),
	    V("\r.\r", SMTP_DATA_BARE_CR),
	    V("\n.\r\n", SMTP_DATA_BARE_LF),
	    V("\r\n.\n", SMTP_DATA_BARE_LF),
	    V("\r\n.\r", SMTP_DATA_BARE_CR),
	    V("\r.\r\n", SMTP_DATA_BARE_CR),
	    V("\r\n.\r\r\n", SMTP_DATA_BARE_CR),
	    V("\r\n\n.\r\n", SMTP_DATA_BARE_LF),
	    V("\r\n.\0\r\n", SMTP_DATA_NUL),
	    V("\r\n\0.\r\n", SMTP_DATA_NUL),
	    V("\r\n.\r\0\n", SMTP_DATA_NUL | SMTP_DATA_BARE_CR | SMTP_DATA_BARE_LF),
	    V("\r\n .\r\n", 0),
	    V("\r\n..\r\n", 0),
#undef V
	};
	static const char head[] = "Subject: s\r\n\r\nx";
	static const char tail[] = "MAIL FROM:<evil@example.com>\r\n\r\n.\r\n";
	char msg[128];

	for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
		size_t n = 0;
		memcpy(msg + n, head, sizeof head - 1);
		n += sizeof head - 1;
		memcpy(msg + n, v[i].seq, v[i].len);
		n += v[i].len;
		memcpy(msg + n, tail, sizeof tail - 1);
		n += sizeof tail - 1;
		struct result r = scan_checked(msg, n, true);
		assert_int_equal(r.rc, SMTP_PARSE_OK);
		assert_int_equal(r.used, n);
		assert_int_equal(r.st.flags, v[i].flags);
		/* The same bytes at the very start of the data. */
		r = scan_checked(msg + sizeof head - 1, n - (sizeof head - 1), true);
		assert_int_equal(r.rc, SMTP_PARSE_OK);
		assert_int_equal(r.used, n - (sizeof head - 1));
	}
}

/* "\r\r\n.\r\n" does hold a real CRLF.CRLF: it ends, and the stray CR is
 * flagged so the session still refuses the message. */
static void test_bare_cr_then_real_end(void **state)
{
	(void)state;
	struct result r = SCAN("a\r\r\n.\r\nQUIT\r\n", true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.used, 7);
	assert_int_equal(r.st.flags, SMTP_DATA_BARE_CR);
	r = SCAN("\n.\r\n\r\n.\r\n", true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.used, 9);
	assert_int_equal(r.st.flags, SMTP_DATA_BARE_LF);
}

static void test_nul_and_8bit(void **state)
{
	(void)state;
	struct result r = SCAN("a\0b\r\n.\r\n", true);
	assert_int_equal(r.st.flags, SMTP_DATA_NUL);
	r = SCAN("\0\r\n.\r\n", true);
	assert_int_equal(r.st.flags, SMTP_DATA_NUL);
	r = SCAN("Subject: caf\xc3\xa9\r\n\r\n.\r\n", true);
	assert_int_equal(r.st.flags, SMTP_DATA_8BIT | SMTP_DATA_8BIT_HEADER);
	r = SCAN("\xff\r\n.\r\n", true); /* no empty line: all of it is header */
	assert_int_equal(r.st.flags, SMTP_DATA_8BIT | SMTP_DATA_8BIT_HEADER);
	/* Deep inside a long line, on the word-at-a-time path. */
	r = SCAN("\r\n0123456789abcdef0123456789abcdef0123456789\x80"
		 "bcdef0123456789abcdef\r\n.\r\n",
		 true);
	assert_int_equal(r.st.flags, SMTP_DATA_8BIT);
	r = SCAN("\r\n0123456789abcdef0123456789abcdef0123456789abcdef01234567\r\n.\r\n", true);
	assert_int_equal(r.st.flags, 0);
}

/* RFC 6531 3.4 / RFC 6532: only 8-bit octets before the first empty line
 * make the message need SMTPUTF8; 8-bit in the body needs 8BITMIME alone.
 * Each case is also split at every offset and fed byte by byte. */
static void test_8bit_header(void **state)
{
	(void)state;
	static const struct {
		const char *msg;
		uint32_t flags;
	} cases[] = {
	    /* ASCII header section, UTF-8 body (short line, then the word loop) */
	    {"Subject: plain\r\n\r\nGr\xc3\xbc\xc3\x9f\x65\r\n.\r\n", SMTP_DATA_8BIT},
	    {"Subject: plain\r\n\r\n0123456789abcdef0123456789abcdef\xe2\x80\x93"
	     "0123456789abcdef\r\n.\r\n",
	     SMTP_DATA_8BIT},
	    /* 8-bit in a field: on the byte path (start of line) and deep in a
	     * long line (the word loop), and in a folded continuation */
	    {"\xc3\xa9: x\r\n\r\nbody\r\n.\r\n", SMTP_DATA_8BIT | SMTP_DATA_8BIT_HEADER},
	    {"Subject: 0123456789abcdef0123456789abcdef0123\xc3\xa9\r\n\r\nb\r\n.\r\n",
	     SMTP_DATA_8BIT | SMTP_DATA_8BIT_HEADER},
	    {"Subject: a\r\n\tfolded 0123456789abcdef0123456789 M\xc3\xbcller\r\n\r\n.\r\n",
	     SMTP_DATA_8BIT | SMTP_DATA_8BIT_HEADER},
	    /* "Received:"-like start (matched byte by byte) then 8-bit */
	    {"Received: from h\xc3\xa9\r\n\r\n.\r\n", SMTP_DATA_8BIT | SMTP_DATA_8BIT_HEADER},
	    /* all ASCII; and 8-bit only after the empty line that ends the section */
	    {"Subject: plain\r\n\r\nbody\r\n.\r\n", 0},
	    {"Subject: x\r\n\r\n\xff\r\n\r\nSubject: \xff\r\n.\r\n", SMTP_DATA_8BIT},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct result r = scan_checked(cases[i].msg, strlen(cases[i].msg), true);
		assert_int_equal(r.rc, SMTP_PARSE_OK);
		assert_int_equal(r.st.flags, cases[i].flags);
		r = scan_checked(cases[i].msg, strlen(cases[i].msg) - 3, false); /* BDAT */
		assert_int_equal(r.st.flags, cases[i].flags);
	}
}

/* Build "<prefix><n x 'x'>\r\n.\r\n" into buf; returns its length. */
static size_t long_line(char *buf, const char *prefix, size_t n)
{
	size_t p = strlen(prefix);
	memcpy(buf, prefix, p);
	memset(buf + p, 'x', n);
	memcpy(buf + p + n, "\r\n.\r\n", 5);
	return p + n + 5;
}

/* RFC 5321 4.5.3.1.6: 1000 octets per text line including CRLF. */
static void test_line_bound(void **state)
{
	(void)state;
	static char buf[4096];
	size_t max = SMTP_TEXT_LINE_MAX - 2;
	struct result r;

	r = scan_checked(buf, long_line(buf, "", max), true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.st.flags, 0);
	r = scan_checked(buf, long_line(buf, "", max + 1), true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.st.flags, SMTP_DATA_LONG_LINE);
	/* Mid-message line, and the line counter restarts after it. */
	r = scan_checked(buf, long_line(buf, "a\r\n", max), true);
	assert_int_equal(r.st.flags, 0);
	r = scan_checked(buf, long_line(buf, "a\r\n", max + 1), true);
	assert_int_equal(r.st.flags, SMTP_DATA_LONG_LINE);
	/* A stuffing dot is not stored, so it does not count in DATA ... */
	r = scan_checked(buf, long_line(buf, ".", max), true);
	assert_int_equal(r.st.flags, 0);
	r = scan_checked(buf, long_line(buf, ".", max + 1), true);
	assert_int_equal(r.st.flags, SMTP_DATA_LONG_LINE);
	/* ... but BDAT has no stuffing: there the dot is content. */
	r = scan_checked(buf, long_line(buf, ".", max - 1), false);
	assert_int_equal(r.st.flags, 0);
	r = scan_checked(buf, long_line(buf, ".", max), false);
	assert_int_equal(r.st.flags, SMTP_DATA_LONG_LINE);
	/* A line not yet ended is flagged as soon as it is over. */
	memset(buf, 'y', max + 1);
	r = scan_checked(buf, max, true);
	assert_int_equal(r.st.flags, 0);
	assert_int_equal(r.st.line_len, max);
	r = scan_checked(buf, max + 1, true);
	assert_int_equal(r.st.flags, SMTP_DATA_LONG_LINE);
}

static void test_received_count(void **state)
{
	(void)state;
	static const char m[] = "Received: from a\r\n"
				"received: from b\r\n"
				"RECEIVED:from c\r\n"
				"X-Received: no\r\n"
				"Received : no\r\n"
				" Received: folded, no\r\n"
				"Subject: Received: no\r\n"
				"Receive: no\r\n"
				"\r\n"
				"Received: in the body, no\r\n"
				".\r\n";
	struct result r = SCAN(m, true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.st.received_count, 3);
	assert_int_equal(r.st.in_header, 0);

	/* No header section at all: the first line is empty. */
	r = SCAN("\r\nReceived: body\r\n.\r\n", true);
	assert_int_equal(r.st.received_count, 0);
	/* Still in the header section while no empty line was seen. */
	r = SCAN("Received: a\r\nReceived: b\r\n", true);
	assert_int_equal(r.rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r.st.received_count, 2);
	assert_int_equal(r.st.in_header, 1);
	/* A stuffed ".Received:" is "Received:" once unstuffed. */
	r = SCAN(".Received: x\r\n\r\n.\r\n", true);
	assert_int_equal(r.st.received_count, 1);
	/* BDAT: no stuffing, so the same line is not a Received field. */
	r = SCAN(".Received: x\r\nReceived: y\r\n\r\nReceived: z\r\n", false);
	assert_int_equal(r.st.received_count, 1);
	/* A bare CR inside the name breaks the match. */
	r = SCAN("Rece\rived: x\r\n\r\n.\r\n", true);
	assert_int_equal(r.st.received_count, 0);
	assert_int_equal(r.st.flags, SMTP_DATA_BARE_CR);
}

/* BDAT: no terminator, no stuffing; every flag is still tracked. */
static void test_bdat_mode(void **state)
{
	(void)state;
	static const char m[] = "Received: a\r\n\r\nline\r\n.\r\nmore\n.\n\0\xe9\r.\r\n";
	struct result r = SCAN(m, false);
	assert_int_equal(r.rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r.used, sizeof m - 1);
	assert_int_equal(r.st.received_count, 1);
	assert_int_equal(r.st.flags,
			 SMTP_DATA_BARE_LF | SMTP_DATA_BARE_CR | SMTP_DATA_NUL | SMTP_DATA_8BIT);
	r = SCAN(".\r\n", false);
	assert_int_equal(r.rc, SMTP_PARSE_AGAIN);
	assert_int_equal(r.used, 3);
}

/* wire_len and flags accumulate across calls and across chunks. */
static void test_accumulates(void **state)
{
	(void)state;
	struct smtp_data_state st;
	size_t used;
	smtp_data_begin(&st, false);
	assert_int_equal(smtp_data_scan(&st, "Received: a\r\n", 13, &used), SMTP_PARSE_AGAIN);
	assert_int_equal(smtp_data_scan(&st, "Rec", 3, &used), SMTP_PARSE_AGAIN);
	assert_int_equal(smtp_data_scan(&st, "eived: b\r\n\r\n\n", 13, &used), SMTP_PARSE_AGAIN);
	assert_int_equal(smtp_data_scan(&st, NULL, 0, &used), SMTP_PARSE_AGAIN);
	assert_int_equal(used, 0);
	assert_true(st.wire_len == 29);
	assert_int_equal(st.received_count, 2);
	assert_int_equal(st.flags, SMTP_DATA_BARE_LF);
}

/* Lines of every length 0..40, so each special byte falls at every position
 * of the 16-byte fast path; checked at every split. */
static void test_many_line_lengths(void **state)
{
	(void)state;
	static char buf[2048];
	size_t n = 0, cr_at[41];
	for (size_t len = 0; len <= 40; len++) {
		for (size_t i = 0; i < len; i++)
			buf[n++] = (char)('a' + i % 26);
		cr_at[len] = n;
		buf[n++] = '\r';
		buf[n++] = '\n';
	}
	memcpy(buf + n, ".\r\n", 3);
	n += 3;
	struct result r = scan_checked(buf, n, true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.used, n);
	assert_int_equal(r.st.flags, 0);
	/* Turn one CRLF into a bare LF and another into a bare CR. */
	buf[cr_at[20]] = 'z';
	buf[cr_at[31] + 1] = 'z';
	r = scan_checked(buf, n, true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_int_equal(r.used, n);
	assert_int_equal(r.st.flags, SMTP_DATA_BARE_LF | SMTP_DATA_BARE_CR);
}

static void test_unstuff(void **state)
{
	(void)state;
	static const char in[] = "..a\r\n.b\r\nc.\r\n...\r\n.\r\nx";
	static const char want[] = ".a\r\nb\r\nc.\r\n..\r\n\r\nx";
	char out[64];
	bool bol = true;
	size_t n = smtp_unstuff(in, sizeof in - 1, out, &bol);
	assert_int_equal(n, sizeof want - 1);
	assert_memory_equal(out, want, n);
	assert_false(bol);

	/* Split at every offset, the line-start flag carried between calls. */
	for (size_t cut = 0; cut <= sizeof in - 1; cut++) {
		bol = true;
		n = smtp_unstuff(in, cut, out, &bol);
		n += smtp_unstuff(in + cut, sizeof in - 1 - cut, out + n, &bol);
		assert_int_equal(n, sizeof want - 1);
		assert_memory_equal(out, want, n);
	}
	/* In place. */
	char buf[64];
	memcpy(buf, in, sizeof in);
	bol = true;
	n = smtp_unstuff(buf, sizeof in - 1, buf, &bol);
	assert_memory_equal(buf, want, n);
	/* Not at a line start: a leading dot stays. */
	bol = false;
	n = smtp_unstuff(".x\n.y", 5, out, &bol);
	assert_int_equal(n, 4);
	assert_memory_equal(out, ".x\ny", 4);
	bol = true;
	assert_int_equal(smtp_unstuff(NULL, 0, NULL, &bol), 0);
	assert_true(bol);
}

/* What DATA stores (wire_len - 3 bytes) unstuffs back to the original. */
static void test_scan_then_unstuff(void **state)
{
	(void)state;
	static const char wire[] = "Subject: dots\r\n\r\n..leading\r\n...\r\nmid.dle\r\n.\r\n";
	static const char orig[] = "Subject: dots\r\n\r\n.leading\r\n..\r\nmid.dle\r\n";
	struct result r = SCAN(wire, true);
	assert_int_equal(r.rc, SMTP_PARSE_OK);
	char out[64];
	bool bol = true;
	size_t n = smtp_unstuff(wire, r.st.wire_len - 3, out, &bol);
	assert_int_equal(n, sizeof orig - 1);
	assert_memory_equal(out, orig, n);
}

/* RFC 1870 size: the stuffing dots and the terminator are not the message,
 * and a dot held at the end of a piece (it may begin the terminator) is not
 * counted yet, so the size never runs ahead of the message, however split. */
static void test_size_without_stuffing(void **state)
{
	(void)state;
	static const char wire[] = "Subject: dots\r\n\r\n..leading\r\n...\r\nmid.dle\r\n.\r\n";
	static const char orig[] = "Subject: dots\r\n\r\n.leading\r\n..\r\nmid.dle\r\n";
	const size_t n = sizeof wire - 1, want = sizeof orig - 1;
	struct result r = SCAN(wire, true);
	struct smtp_data_state st;
	uint64_t prev = 0;

	assert_int_equal(r.rc, SMTP_PARSE_OK);
	assert_true(r.st.stuff_len == 2);
	assert_true(smtp_data_size(&r.st) == want);
	assert_true(smtp_data_ends_line(&r.st));
	smtp_data_begin(&st, true);
	for (size_t i = 0; i < n; i++) {
		size_t used;

		smtp_data_scan(&st, wire + i, 1, &used);
		assert_true(smtp_data_size(&st) >= prev && smtp_data_size(&st) <= want);
		prev = smtp_data_size(&st);
	}
	assert_true(prev == want);

	/* ".\r" then not LF: the dot was stuffing (the message is refused for
	 * the bare CR anyway). */
	r = SCAN(".\rX\r\n.\r\n", true);
	assert_true(r.st.stuff_len == 1 && smtp_data_size(&r.st) == 4);
	r = SCAN(".\r\n", true);
	assert_true(r.st.stuff_len == 0 && smtp_data_size(&r.st) == 0);

	/* BDAT: no stuffing, nothing held; a last line without CRLF is seen. */
	r = SCAN("..x\r\n.", false);
	assert_true(r.st.stuff_len == 0 && smtp_data_size(&r.st) == 6);
	assert_false(smtp_data_ends_line(&r.st));
	r = SCAN("abc\r\n", false);
	assert_true(smtp_data_ends_line(&r.st) && !smtp_data_ends_cr(&r.st));
	/* A CR the data ends with: bare at the real end of BDAT data. */
	r = SCAN("abc\r", false);
	assert_true(smtp_data_ends_cr(&r.st) && !smtp_data_ends_line(&r.st));
	assert_false(r.st.flags & SMTP_DATA_BARE_CR);
	smtp_data_begin(&st, false);
	assert_true(smtp_data_ends_line(&st) && smtp_data_size(&st) == 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_simple_end),	       cmocka_unit_test(test_again),
	    cmocka_unit_test(test_empty_message),      cmocka_unit_test(test_after_end),
	    cmocka_unit_test(test_smuggling_variants), cmocka_unit_test(test_bare_cr_then_real_end),
	    cmocka_unit_test(test_nul_and_8bit),       cmocka_unit_test(test_8bit_header),
	    cmocka_unit_test(test_line_bound),	       cmocka_unit_test(test_received_count),
	    cmocka_unit_test(test_bdat_mode),	       cmocka_unit_test(test_accumulates),
	    cmocka_unit_test(test_many_line_lengths),  cmocka_unit_test(test_unstuff),
	    cmocka_unit_test(test_scan_then_unstuff),  cmocka_unit_test(test_size_without_stuffing),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
