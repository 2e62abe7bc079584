/* Pins the outbound reply accounting: smtp_reply_count, the owed list and reply fit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/client.h"

static struct smtp_reply_state st;

/* Feed s to st (all of it must parse without error). */
static void feed(const char *s)
{
	size_t off = 0, len = strlen(s);

	while (off < len) {
		struct smtp_reply_line line;
		size_t used = 0;
		int rc = smtp_reply_parse(&st, s + off, len - off, &used, &line);

		assert_int_not_equal(rc, SMTP_PARSE_INVALID);
		off += used;
		if (rc == SMTP_PARSE_AGAIN)
			break;
	}
	assert_int_equal(off, len);
}

/* Replies the parser completes in s from st (st is advanced). */
static uint32_t parsed_replies(const char *s, size_t *end)
{
	size_t off = 0, len = strlen(s);
	uint32_t n = 0;

	*end = 0;
	while (off < len) {
		struct smtp_reply_line line;
		size_t used = 0;
		int rc = smtp_reply_parse(&st, s + off, len - off, &used, &line);

		assert_int_not_equal(rc, SMTP_PARSE_INVALID);
		off += used;
		if (rc == SMTP_PARSE_AGAIN)
			break;
		if (line.last) {
			n++;
			*end = off;
		}
	}
	return n;
}

static void count_is(const char *s, uint32_t want, size_t want_end)
{
	uint32_t n = 99;
	size_t end = 99;

	smtp_reply_count(&st, s, strlen(s), &n, &end);
	assert_int_equal(n, want);
	assert_int_equal(end, want_end);
}

static void test_count_forms(void **unused)
{
	(void)unused;
	smtp_reply_init(&st);
	count_is("", 0, 0);
	count_is("250 ok", 0, 0); /* no line end yet */
	count_is("250 ok\r\n", 1, 8);
	count_is("250\r\n", 1, 5);			/* code alone ends a reply */
	count_is("250-a\r\n250-b\r\n250 c\r\n", 1, 21); /* one multi-line reply */
	count_is("250-a\r\n250-b\r\n", 0, 0);
	count_is("250 a\r\n250 b\r\n354 go\r\n", 3, 22); /* a PIPELINING group */
	count_is("220 Ready\r\n250 ", 1, 11);		 /* STARTTLS injection */
	count_is("220 Ready\r\n2", 1, 11);
	count_is("250 ok\n250 ok\n", 2, 14); /* bare LF ends lines too */
	count_is("250-\r\n250 \r\n", 1, 12);
}

/* A line begun in an earlier read: its code and separator may lie in the
 * state's line buffer, in the new bytes, or across both. */
static void test_count_straddle(void **unused)
{
	static const struct {
		const char *first, *rest;
		uint32_t replies;
		size_t end;
	} cases[] = {
	    {"25", "0 ok\r\n", 1, 6},		/* separator in the new bytes */
	    {"250", " ok\r\n", 1, 5},		/* separator is the first new byte */
	    {"250 o", "k\r\n", 1, 3},		/* whole code and separator kept */
	    {"250-o", "k\r\n250 x\r\n", 1, 10}, /* continuation, then the end */
	    {"250-o", "k\r\n", 0, 0},
	    {"250", "\r\n", 1, 2}, /* code alone, CR in the new bytes */
	    {"250\r", "\n", 1, 1}, /* code alone, CR kept */
	    {"250 ok\r\n250 ", "x\r\n250 y\r\n", 2, 10},
	};
	(void)unused;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		smtp_reply_init(&st);
		feed(cases[i].first);
		count_is(cases[i].rest, cases[i].replies, cases[i].end);
		/* and the parser agrees */
		size_t end;
		assert_int_equal(parsed_replies(cases[i].rest, &end), cases[i].replies);
		assert_int_equal(end, cases[i].end);
	}
}

/* The count never changes the state: parsing after counting is as before. */
static void test_count_is_pure(void **unused)
{
	(void)unused;
	smtp_reply_init(&st);
	feed("250-first\r\n250-sec");
	struct smtp_reply_state copy = st;
	count_is("ond\r\n250 last\r\n", 1, 15);
	assert_memory_equal(&copy, &st, sizeof st);
}

static void owed_ready(struct smtp_owed *o)
{
	smtp_owed_sent(o);
	smtp_owed_recv(o);
}

static void test_owed_order(void **unused)
{
	struct smtp_owed o;
	(void)unused;
	smtp_owed_init(&o);
	assert_true(smtp_owed_add(&o, SMTP_ASK_MAIL, 1));
	assert_true(smtp_owed_add(&o, SMTP_ASK_RCPT, 1));
	assert_true(smtp_owed_add(&o, SMTP_ASK_RCPT, 1));
	assert_true(smtp_owed_add(&o, SMTP_ASK_RCPT, 1));
	assert_true(smtp_owed_add(&o, SMTP_ASK_DATA, 1));
	assert_int_equal(o.runs, 3); /* RCPTs in a row share a run */
	assert_int_equal(o.total, 5);
	owed_ready(&o);
	assert_int_equal(smtp_owed_last(&o), SMTP_ASK_DATA);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_MAIL);
	for (int i = 0; i < 3; i++)
		assert_int_equal(smtp_owed_take(&o), SMTP_ASK_RCPT);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_DATA);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_NONE); /* one more answers nothing */
	assert_int_equal(o.total, 0);
	assert_int_equal(o.runs, 0);
}

/* Bytes can answer only commands handed to a send before they came. */
static void test_owed_budget(void **unused)
{
	struct smtp_owed o;
	(void)unused;
	smtp_owed_init(&o);
	smtp_owed_add(&o, SMTP_ASK_GREETING, 1);
	owed_ready(&o);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_GREETING);
	/* EHLO written and sent while the greeting's bytes are being read:
	 * the rest of those bytes cannot be its reply. */
	smtp_owed_add(&o, SMTP_ASK_EHLO, 1);
	smtp_owed_sent(&o);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_NONE);
	assert_int_equal(smtp_owed_check(&o, 1, 8, 8), SMTP_OWED_UNASKED);
	/* The next read may answer it. */
	smtp_owed_recv(&o);
	assert_int_equal(smtp_owed_check(&o, 1, 8, 8), SMTP_OWED_OK);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_EHLO);

	/* Written but not yet sent: not owed to this read. */
	smtp_owed_add(&o, SMTP_ASK_MAIL, 1);
	smtp_owed_recv(&o);
	assert_int_equal(o.budget, 0);
	assert_int_equal(smtp_owed_check(&o, 1, 8, 8), SMTP_OWED_UNASKED);
	owed_ready(&o);
	assert_int_equal(o.budget, 1);
}

static void test_owed_check(void **unused)
{
	struct smtp_owed o;
	(void)unused;
	smtp_owed_init(&o);
	owed_ready(&o);
	assert_int_equal(smtp_owed_check(&o, 0, 0, 0), SMTP_OWED_OK); /* nothing read */
	assert_int_equal(smtp_owed_check(&o, 0, 0, 3), SMTP_OWED_UNASKED);
	assert_int_equal(smtp_owed_check(&o, 1, 8, 8), SMTP_OWED_UNASKED);

	smtp_owed_add(&o, SMTP_ASK_MAIL, 1);
	smtp_owed_add(&o, SMTP_ASK_RCPT, 1);
	smtp_owed_add(&o, SMTP_ASK_DATA, 1);
	owed_ready(&o);
	assert_int_equal(smtp_owed_check(&o, 3, 30, 30), SMTP_OWED_OK);
	assert_int_equal(smtp_owed_check(&o, 2, 20, 25), SMTP_OWED_OK); /* the 3rd is coming */
	assert_int_equal(smtp_owed_check(&o, 0, 0, 5), SMTP_OWED_OK);
	assert_int_equal(smtp_owed_check(&o, 4, 40, 40), SMTP_OWED_SURPLUS);
	assert_int_equal(smtp_owed_check(&o, 3, 30, 31), SMTP_OWED_SURPLUS); /* a byte more */
}

/* RFC 3207 5: the 220 to STARTTLS must be the last byte before TLS. */
static void test_owed_starttls_injection(void **unused)
{
	static const char *const injected[] = {"220 Ready\r\n250 ", "220 Ready\r\n2",
					       "220 Ready\r\n250 2.0.0 Ok\r\n",
					       "220-Ready\r\n220 Go\r\n250-x"};
	struct smtp_owed o;
	uint32_t n;
	size_t end;
	(void)unused;
	for (size_t i = 0; i < sizeof injected / sizeof injected[0]; i++) {
		smtp_owed_init(&o);
		smtp_owed_add(&o, SMTP_ASK_STARTTLS, 1);
		owed_ready(&o);
		smtp_reply_init(&st);
		smtp_reply_count(&st, injected[i], strlen(injected[i]), &n, &end);
		assert_int_equal(smtp_owed_check(&o, n, end, strlen(injected[i])),
				 SMTP_OWED_SURPLUS);
		assert_int_equal(smtp_owed_last(&o), SMTP_ASK_STARTTLS);
	}
	smtp_reply_count(&st, "220 Ready\r\n", 11, &n, &end);
	assert_int_equal(smtp_owed_check(&o, n, end, 11), SMTP_OWED_OK);
}

/* LMTP: the final dot is owed one reply per accepted recipient. */
static void test_owed_lmtp(void **unused)
{
	struct smtp_owed o;
	(void)unused;
	smtp_owed_init(&o);
	smtp_owed_add(&o, SMTP_ASK_DOT, 3);
	owed_ready(&o);
	assert_int_equal(smtp_owed_check(&o, 4, 40, 40), SMTP_OWED_SURPLUS);
	for (int i = 0; i < 3; i++)
		assert_int_equal(smtp_owed_take(&o), SMTP_ASK_DOT);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_NONE);
	assert_true(smtp_owed_add(&o, SMTP_ASK_DOT, 0)); /* nothing owed, nothing added */
	assert_int_equal(o.runs, 0);
}

static void test_owed_runs_bound(void **unused)
{
	struct smtp_owed o;
	(void)unused;
	smtp_owed_init(&o);
	for (int i = 0; i < SMTP_OWED_RUNS; i++)
		assert_true(smtp_owed_add(&o, i % 2 ? SMTP_ASK_RCPT : SMTP_ASK_RSET, 1));
	assert_false(smtp_owed_add(&o, SMTP_ASK_MAIL, 1));
	assert_true(smtp_owed_add(&o, SMTP_ASK_RCPT, 5)); /* joins the last run */
	assert_int_equal(o.total, SMTP_OWED_RUNS + 5);
	/* The ring wraps: take two runs, add two. */
	owed_ready(&o);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_RSET);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_RCPT);
	assert_true(smtp_owed_add(&o, SMTP_ASK_DATA, 1));
	assert_true(smtp_owed_add(&o, SMTP_ASK_QUIT, 1));
	assert_false(smtp_owed_add(&o, SMTP_ASK_MAIL, 1));
	owed_ready(&o);
	for (int i = 2; i < SMTP_OWED_RUNS - 1; i++)
		assert_int_equal(smtp_owed_take(&o), i % 2 ? SMTP_ASK_RCPT : SMTP_ASK_RSET);
	for (int i = 0; i < 6; i++)
		assert_int_equal(smtp_owed_take(&o), SMTP_ASK_RCPT);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_DATA);
	assert_int_equal(smtp_owed_last(&o), SMTP_ASK_QUIT);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_QUIT);
	assert_int_equal(smtp_owed_take(&o), SMTP_ASK_NONE);
}

static void test_reply_fits(void **unused)
{
	(void)unused;
	/* DATA: 354 or a refusal; a 250 is some other command's reply. */
	assert_true(smtp_reply_fits(SMTP_ASK_DATA, 354));
	assert_true(smtp_reply_fits(SMTP_ASK_DATA, 451));
	assert_true(smtp_reply_fits(SMTP_ASK_DATA, 554));
	assert_false(smtp_reply_fits(SMTP_ASK_DATA, 250));
	assert_false(smtp_reply_fits(SMTP_ASK_DATA, 220));
	assert_false(smtp_reply_fits(SMTP_ASK_DATA, 334));
	/* No other command takes a 3xx. */
	static const enum smtp_ask others[] = {
	    SMTP_ASK_GREETING, SMTP_ASK_EHLO, SMTP_ASK_HELO, SMTP_ASK_MAIL,
	    SMTP_ASK_RCPT,     SMTP_ASK_DOT,  SMTP_ASK_RSET, SMTP_ASK_QUIT,
	};
	for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
		assert_true(smtp_reply_fits(others[i], 250));
		assert_true(smtp_reply_fits(others[i], 421));
		assert_true(smtp_reply_fits(others[i], 550));
		assert_false(smtp_reply_fits(others[i], 354));
		assert_false(smtp_reply_fits(others[i], 334));
	}
	/* STARTTLS: only 220 goes on to TLS. */
	assert_true(smtp_reply_fits(SMTP_ASK_STARTTLS, 220));
	assert_true(smtp_reply_fits(SMTP_ASK_STARTTLS, 454));
	assert_true(smtp_reply_fits(SMTP_ASK_STARTTLS, 501));
	assert_false(smtp_reply_fits(SMTP_ASK_STARTTLS, 250));
	assert_false(smtp_reply_fits(SMTP_ASK_STARTTLS, 354));
	assert_string_equal(smtp_ask_name(SMTP_ASK_DATA), "DATA");
	assert_string_equal(smtp_ask_name(SMTP_ASK_NONE), "nothing");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_count_forms),
	    cmocka_unit_test(test_count_straddle),
	    cmocka_unit_test(test_count_is_pure),
	    cmocka_unit_test(test_owed_order),
	    cmocka_unit_test(test_owed_budget),
	    cmocka_unit_test(test_owed_check),
	    cmocka_unit_test(test_owed_starttls_injection),
	    cmocka_unit_test(test_owed_lmtp),
	    cmocka_unit_test(test_owed_runs_bound),
	    cmocka_unit_test(test_reply_fits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
