/* Pins smtp_line_scan framing: CRLF only, bare CR/LF and NUL refused, 512-octet bound, splits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/parse.h"

/* One complete line scanned from s (a single call). */
static int scan_all(const char *s, size_t len, struct smtp_line_state *st, size_t *used)
{
	smtp_line_reset(st);
	return smtp_line_scan(st, s, len, used);
}

static void test_simple_line(void **state)
{
	(void)state;
	struct smtp_line_state st;
	size_t used = 99;
	assert_int_equal(scan_all("EHLO x\r\n", 8, &st, &used), SMTP_PARSE_OK);
	assert_int_equal(used, 8);
	assert_int_equal(st.line_len, 6);
	assert_int_equal(st.error, SMTP_LINE_OK);
}

static void test_empty_line_and_empty_buffer(void **state)
{
	(void)state;
	struct smtp_line_state st;
	size_t used = 99;
	assert_int_equal(scan_all("\r\n", 2, &st, &used), SMTP_PARSE_OK);
	assert_int_equal(used, 2);
	assert_int_equal(st.line_len, 0);

	smtp_line_reset(&st);
	assert_int_equal(smtp_line_scan(&st, "", 0, &used), SMTP_PARSE_AGAIN);
	assert_int_equal(used, 0);
	assert_int_equal(smtp_line_scan(&st, NULL, 0, &used), SMTP_PARSE_AGAIN);
	assert_int_equal(used, 0);
}

static void test_again_without_line_end(void **state)
{
	(void)state;
	struct smtp_line_state st;
	size_t used = 99;
	assert_int_equal(scan_all("MAIL FROM:<a@b>", 15, &st, &used), SMTP_PARSE_AGAIN);
	assert_int_equal(used, 15);
	assert_int_equal(st.line_len, 15);
	assert_int_equal(smtp_line_scan(&st, "\r\n", 2, &used), SMTP_PARSE_OK);
	assert_int_equal(used, 2);
	assert_int_equal(st.line_len, 15);
}

/* A CR as the last byte of a buffer is undecided until the next one. */
static void test_cr_carried_over(void **state)
{
	(void)state;
	struct smtp_line_state st;
	size_t used = 99;
	assert_int_equal(scan_all("QUIT\r", 5, &st, &used), SMTP_PARSE_AGAIN);
	assert_int_equal(used, 5);
	assert_int_equal(st.saw_cr, 1);
	assert_int_equal(smtp_line_scan(&st, "\nRSET\r\n", 7, &used), SMTP_PARSE_OK);
	assert_int_equal(used, 1);
	assert_int_equal(st.line_len, 4);
	assert_int_equal(st.error, SMTP_LINE_OK);

	/* ... and becomes a bare CR when something else follows. */
	assert_int_equal(scan_all("NO\r", 3, &st, &used), SMTP_PARSE_AGAIN);
	assert_int_equal(smtp_line_scan(&st, "OP\r\n", 4, &used), SMTP_PARSE_INVALID);
	assert_int_equal(used, 4);
	assert_int_equal(st.error, SMTP_LINE_BARE_CR);
}

static void test_bare_cr(void **state)
{
	(void)state;
	struct smtp_line_state st;
	size_t used = 99;
	assert_int_equal(scan_all("NO\rOP\r\nQUIT\r\n", 13, &st, &used), SMTP_PARSE_INVALID);
	assert_int_equal(used, 7);
	assert_int_equal(st.error, SMTP_LINE_BARE_CR);

	/* CR CR LF: the first CR is bare, the second ends the line. */
	assert_int_equal(scan_all("RSET\r\r\n", 7, &st, &used), SMTP_PARSE_INVALID);
	assert_int_equal(used, 7);
	assert_int_equal(st.error, SMTP_LINE_BARE_CR);

	/* A line of bare CRs only never ends without an LF. */
	assert_int_equal(scan_all("\r\r\r", 3, &st, &used), SMTP_PARSE_AGAIN);
	assert_int_equal(used, 3);
}

/* A bare LF ends the line for framing but refuses it: "RSET\nQUIT" must never
 * run QUIT (nor a smuggled MAIL) as a command of its own. */
static void test_bare_lf(void **state)
{
	(void)state;
	struct smtp_line_state st;
	size_t used = 99;
	const char in[] = "RSET\nQUIT\r\n";
	assert_int_equal(scan_all(in, sizeof in - 1, &st, &used), SMTP_PARSE_INVALID);
	assert_int_equal(used, 5);
	assert_int_equal(st.error, SMTP_LINE_BARE_LF);
	smtp_line_reset(&st);
	assert_int_equal(smtp_line_scan(&st, in + 5, sizeof in - 6, &used), SMTP_PARSE_OK);
	assert_int_equal(used, 6);
	assert_int_equal(st.line_len, 4);

	assert_int_equal(scan_all("\n", 1, &st, &used), SMTP_PARSE_INVALID);
	assert_int_equal(used, 1);
	assert_int_equal(st.error, SMTP_LINE_BARE_LF);
}

static void test_nul(void **state)
{
	(void)state;
	struct smtp_line_state st;
	size_t used = 99;
	assert_int_equal(scan_all("HELO a\0b\r\n", 10, &st, &used), SMTP_PARSE_INVALID);
	assert_int_equal(used, 10);
	assert_int_equal(st.error, SMTP_LINE_NUL);
}

/* The first fault is the one reported. */
static void test_first_error_wins(void **state)
{
	(void)state;
	struct smtp_line_state st;
	size_t used = 99;
	assert_int_equal(scan_all("a\0b\rc\n", 6, &st, &used), SMTP_PARSE_INVALID);
	assert_int_equal(st.error, SMTP_LINE_NUL);
	assert_int_equal(scan_all("a\rb\0c\n", 6, &st, &used), SMTP_PARSE_INVALID);
	assert_int_equal(st.error, SMTP_LINE_BARE_CR);
}

static void fill_line(char *buf, size_t content)
{
	memset(buf, 'x', content);
	buf[content] = '\r';
	buf[content + 1] = '\n';
}

/* RFC 5321 4.5.3.1.4: 512 octets including CRLF. */
static void test_length_bound(void **state)
{
	(void)state;
	char buf[SMTP_LINE_SCAN_MAX + 2];
	struct smtp_line_state st;
	size_t used = 99;

	fill_line(buf, SMTP_LINE_SCAN_MAX - 2);
	assert_int_equal(scan_all(buf, SMTP_LINE_SCAN_MAX, &st, &used), SMTP_PARSE_OK);
	assert_int_equal(used, SMTP_LINE_SCAN_MAX);
	assert_int_equal(st.line_len, SMTP_LINE_SCAN_MAX - 2);

	fill_line(buf, SMTP_LINE_SCAN_MAX - 1);
	assert_int_equal(scan_all(buf, SMTP_LINE_SCAN_MAX + 1, &st, &used), SMTP_PARSE_INVALID);
	assert_int_equal(used, SMTP_LINE_SCAN_MAX + 1);
	assert_int_equal(st.error, SMTP_LINE_TOO_LONG);
}

/* Over-long lines are consumed (never stored) up to their LF, across any
 * number of buffers, and the next line is framed normally. */
static void test_long_line_consumed(void **state)
{
	(void)state;
	static char chunk[4096];
	struct smtp_line_state st;
	size_t used = 99;

	memset(chunk, 'A', sizeof chunk);
	smtp_line_reset(&st);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(smtp_line_scan(&st, chunk, sizeof chunk, &used), SMTP_PARSE_AGAIN);
		assert_int_equal(used, sizeof chunk);
	}
	assert_int_equal(st.error, SMTP_LINE_TOO_LONG);
	assert_int_equal(smtp_line_scan(&st, "AA\r\nNOOP\r\n", 10, &used), SMTP_PARSE_INVALID);
	assert_int_equal(used, 4);
	smtp_line_reset(&st);
	assert_int_equal(smtp_line_scan(&st, "NOOP\r\n", 6, &used), SMTP_PARSE_OK);
}

/* Pipelining (RFC 2920): repeated scans over one buffer find each line. */
static void test_pipelined(void **state)
{
	(void)state;
	static const char in[] = "EHLO a\r\nMAIL FROM:<>\r\nRCPT TO:<b@c>\r\nDATA\r\n";
	static const size_t ends[] = {8, 22, 37, 43};
	static const uint32_t lens[] = {6, 12, 13, 4};
	struct smtp_line_state st;
	size_t off = 0;

	for (size_t i = 0; i < 4; i++) {
		size_t used = 0;
		smtp_line_reset(&st);
		assert_int_equal(smtp_line_scan(&st, in + off, sizeof in - 1 - off, &used),
				 SMTP_PARSE_OK);
		off += used;
		assert_int_equal(off, ends[i]);
		assert_int_equal(st.line_len, lens[i]);
	}
	assert_int_equal(off, sizeof in - 1);
}

/* Feed in split into two buffers at every offset (and byte by byte): the line
 * ends, results and errors must not depend on where the split falls. */
static void check_splits(const char *in, size_t len)
{
	int whole_rc[8];
	size_t whole_end[8], nwhole = 0;
	struct smtp_line_state st;

	for (size_t off = 0; off < len && nwhole < 8;) {
		size_t used;
		smtp_line_reset(&st);
		whole_rc[nwhole] = smtp_line_scan(&st, in + off, len - off, &used);
		off += used;
		whole_end[nwhole++] = off;
	}
	for (size_t cut = 0; cut <= len; cut++) {
		for (int bytewise = 0; bytewise < 2; bytewise++) {
			size_t off = 0, k = 0;
			smtp_line_reset(&st);
			while (off < len) {
				size_t lim = bytewise ? off + 1 : (off < cut ? cut : len);
				size_t used;
				int rc = smtp_line_scan(&st, in + off, lim - off, &used);
				assert_true(used <= lim - off);
				off += used;
				if (rc == SMTP_PARSE_AGAIN)
					continue;
				assert_true(k < nwhole);
				assert_int_equal(rc, whole_rc[k]);
				assert_int_equal(off, whole_end[k]);
				k++;
				smtp_line_reset(&st);
			}
			if (k < nwhole)
				assert_int_equal(whole_rc[k], SMTP_PARSE_AGAIN);
		}
	}
}

static void test_split_everywhere(void **state)
{
	(void)state;
	static const char a[] = "EHLO a\r\nNO\rOP\r\nRSET\nQUIT\r\nX\0Y\r\n\r\nHELP";
	check_splits(a, sizeof a - 1);
	static const char b[] = "\r\r\n\n\r\n\r";
	check_splits(b, sizeof b - 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_simple_line),
	    cmocka_unit_test(test_empty_line_and_empty_buffer),
	    cmocka_unit_test(test_again_without_line_end),
	    cmocka_unit_test(test_cr_carried_over),
	    cmocka_unit_test(test_bare_cr),
	    cmocka_unit_test(test_bare_lf),
	    cmocka_unit_test(test_nul),
	    cmocka_unit_test(test_first_error_wins),
	    cmocka_unit_test(test_length_bound),
	    cmocka_unit_test(test_long_line_consumed),
	    cmocka_unit_test(test_pipelined),
	    cmocka_unit_test(test_split_everywhere),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
