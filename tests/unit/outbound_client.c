/*
 * outbound_client — the outbound SMTP/LMTP client (deliver/outbound.c) on a
 * fake connection: the exact bytes it writes, the engine calls it makes and
 * the answer each recipient gets: the greeting, EHLO, transactions, LMTP,
 * the reply accounting, too many recipients and 503.  The body is in
 * outbound_client_body.c; STARTTLS, errors, timeouts and the end of a
 * connection in outbound_client_conn.c.  The
 * test plays the next hop (net_fake.h) and the engine (outbound_testlib.h).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "outbound_testlib.h"
#include "tls/tls.h"

/* ---- greeting and EHLO --------------------------------------------------------------- */

static void test_banner_then_ehlo(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc;

	(void)state;
	nc = ot_assign(o);
	assert_int_equal(ot_state(o, nc), OC_CONNECTING);
	assert_int_equal(nc->connect_timeout_ms, 30000);
	nf_connected(nc, 0);
	ot_expect_no_send(nc);
	/* The greeting in two reads: nothing goes until it is whole. */
	nf_recv(nc, "220-" OT_MX " ESMTP\r\n");
	ot_expect_no_send(nc);
	nf_recv(nc, "220 ready\r\n");
	ot_expect_send(nc, "EHLO " OT_HOST "\r\n");
	assert_int_equal(ot_state(o, nc), OC_EHLO);
	assert_string_equal(ot_calls(o), "");
	ot_free(o);
}

static void test_banner_refused(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_assign(o);

	(void)state;
	nf_connected(nc, 0);
	nf_recv(nc, "554 5.7.1 go away\r\n");
	/* RFC 5321 3.1: QUIT, and the job tries its next hop at once. */
	assert_string_equal(ot_calls(o), "hop_failed smtp; 554 5.7.1 go away\n");
	ot_expect_send(nc, "QUIT\r\n");
	assert_int_equal(ot_state(o, nc), OC_QUIT);
	nf_recv(nc, "221 bye\r\n");
	ot_closed(o, nc);
	assert_string_equal(ot_calls(o), "");
	ot_free(o);
}

static void test_ehlo_refused_helo(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, "502 5.5.2 what is EHLO\r\n");

	(void)state;
	ot_expect_send(nc, "HELO " OT_HOST "\r\n");
	assert_int_equal(ot_state(o, nc), OC_HELO);
	/* HELO's 250 offers nothing, whatever its lines say: no pipelining. */
	nf_recv(nc, "250-" OT_MX "\r\n250 PIPELINING\r\n");
	ot_expect_send(nc, MAIL);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, RCPT("a"));
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, "DATA\r\n");
	nf_recv(nc, "354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 queued\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 queued\ndone\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	ot_free(o);
}

static void test_ehlo_4xx_fails(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, "421 4.3.2 shutting down\r\n");

	(void)state;
	ot_expect_no_send(nc);
	assert_string_equal(ot_calls(o), "hop_failed smtp; 421 4.3.2 shutting down\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* ---- transactions ------------------------------------------------------------------- */

static void test_pipelined_mixed_rcpts(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	/* RFC 2920 3.1: MAIL, every RCPT and DATA in one send. */
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	assert_int_equal(nc->sends, 2);
	/* Replies matched in order, across reads split inside a line. */
	nf_recv(nc, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n45");
	assert_string_equal(ot_calls(o), "");
	nf_recv(nc, "0 4.2.0 busy\r\n550 5.1.1 unknown\r\n");
	assert_string_equal(ot_calls(o), "rcpt 1 4 4.2.0 smtp; 450 4.2.0 busy\n"
					 "rcpt 2 5 5.1.1 smtp; 550 5.1.1 unknown\n");
	/* The body goes only after 354. */
	assert_int_equal(nc->freads, 0);
	ot_expect_no_send(nc);
	nf_recv(nc, "354 go ahead\r\n");
	assert_int_equal(nc->freads, 1);
	ot_body_goes(o, nc);
	assert_string_equal(ot_calls(o), "");
	nf_recv(nc, "250 2.0.0 queued as X\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 2.0.0 queued as X\ndone\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	ot_free(o);
}

static void test_no_pipelining_one_per_send(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc = ot_ready(o, EHLO_PLAIN);

	(void)state;
	ot_expect_send(nc, MAIL);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, RCPT("a"));
	nf_recv(nc, "550 5.1.1 no a\r\n");
	ot_expect_send(nc, RCPT("b"));
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, RCPT("c"));
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, "DATA\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 5 5.1.1 smtp; 550 5.1.1 no a\n");
	nf_recv(nc, "354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 1 2 2.0.0 smtp; 250 ok\n"
					 "rcpt 2 2 2.0.0 smtp; 250 ok\ndone\n");
	ot_free(o);
}

static void test_data_refused_rset(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n554 5.7.1 no data\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 5 5.7.1 smtp; 554 5.7.1 no data\n");
	ot_expect_send(nc, "RSET\r\n");
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "done\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	ot_free(o);
}

/* A refused message may leave the hop's transaction open: RSET first. */
static void test_dot_refused_rset(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "554 5.7.1 spam\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 5 5.7.1 smtp; 554 5.7.1 spam\n");
	ot_expect_send(nc, "RSET\r\n");
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "done\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	ot_free(o);
}

static void test_mail_refused(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	/* RFC 5321 3.3: a refused MAIL answers the whole job; the RCPTs and
	 * DATA behind it still have their replies to come (503s). */
	nf_recv(nc, "550 5.7.1 not you\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 5 5.7.1 smtp; 550 5.7.1 not you\n"
					 "rcpt 1 5 5.7.1 smtp; 550 5.7.1 not you\n"
					 "rcpt 2 5 5.7.1 smtp; 550 5.7.1 not you\n");
	nf_recv(nc, "503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n"
		    "503 5.5.1 no valid recipients\r\n");
	ot_expect_send(nc, "RSET\r\n");
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "done\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	ot_free(o);
}

/* RFC 1870, 6152, 3461: what the hop offers decides the parameters. */
static void test_mail_rcpt_parameters(void **state)
{
	struct ot *o = ot_new();
	struct net_conn *nc;
	char want[512];

	(void)state;
	o->notify = SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE;
	o->orcpt = "rfc822;a@test.example";
	ot_message(o, FROM, ot_one, BODY, true);
	o->m.env.flags |= SPOOL_ENV_8BIT;
	o->m.env.ret = SMTP_RET_HDRS;
	o->m.env.envid = (struct spool_str){"ENV42", 5};
	nc = ot_ready(o, "250-" OT_MX "\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000\r\n"
			 "250 DSN\r\n");
	snprintf(want, sizeof(want),
		 "MAIL FROM:<" FROM "> BODY=8BITMIME SIZE=%u RET=HDRS ENVID=ENV42\r\n"
		 "RCPT TO:<a@test.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@test.example\r\n"
		 "DATA\r\n",
		 (unsigned)strlen(BODY) - 1); /* RFC 1870: without the stuffing dot */
	ot_expect_send(nc, want);
	assert_string_equal(ot_calls(o), "");
	ot_free(o);
}

/* A message over the hop's SIZE is bounced before MAIL; the connection
 * stays for the next. */
static void test_size_over_limit(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc;

	(void)state;
	nc = ot_ready(o, "250-" OT_MX "\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
	ot_expect_no_send(nc);
	assert_string_equal(ot_calls(o),
			    "rcpt 0 5 5.3.4 X-ringmx; message of 46 octets exceeds " OT_MX
			    "[192.0.2.25]:25's limit of 10\ndone\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	ot_free(o);
}

/* RFC 6152, 6531: a message the hop cannot take as it is, is bounced
 * before MAIL, never altered; an SMTPUTF8 one that is all ASCII goes as
 * plain SMTP (RFC 6531 3.4). */
static void test_message_needs_extensions(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc;

	(void)state;
	o->m.env.flags |= SPOOL_ENV_8BIT;
	nc = ot_ready(o, "250-" OT_MX "\r\n250 PIPELINING\r\n");
	ot_expect_no_send(nc);
	assert_string_equal(ot_calls(o), "rcpt 0 5 5.6.3 X-ringmx; 8-bit message and " OT_MX
					 "[192.0.2.25]:25 does not offer 8BITMIME (no conversion)\n"
					 "done\n");
	ot_free(o);

	o = ot_new();
	ot_message(o, "j\xc3\xb6rg@origin.example", ot_one, BODY, true);
	o->m.env.flags |= SPOOL_ENV_SMTPUTF8;
	nc = ot_ready(o, EHLO_PIPE);
	ot_expect_no_send(nc);
	assert_string_equal(ot_calls(o), "rcpt 0 5 5.6.7 X-ringmx; the message needs SMTPUTF8, "
					 "which " OT_MX "[192.0.2.25]:25 does not offer\ndone\n");
	ot_free(o);

	o = ot_with(ot_one);
	o->m.env.flags |= SPOOL_ENV_SMTPUTF8; /* ASCII addresses and header */
	nc = ot_ready(o, EHLO_PIPE);
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	ot_free(o);

	o = ot_new();
	ot_message(o, "j\xc3\xb6rg@origin.example", ot_one, BODY, true);
	o->m.env.flags |= SPOOL_ENV_SMTPUTF8;
	nc = ot_ready(o, "250-" OT_MX "\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n");
	ot_expect_send(nc,
		       "MAIL FROM:<j\xc3\xb6rg@origin.example> SMTPUTF8\r\n" RCPT("a") "DATA\r\n");
	ot_free(o);
}

/* Without PIPELINING the reply may come before the send's completion: the
 * next command waits for it, then goes. */
static void test_reply_before_sent(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PLAIN);

	(void)state;
	assert_string_equal(nf_sending(nc), MAIL);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, MAIL); /* RCPT was written meanwhile */
	ot_expect_send(nc, RCPT("a"));
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, "DATA\r\n");
	ot_free(o);
}

static void test_reply_354_to_rcpt(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n354 go\r\n354 go\r\n");
	assert_string_equal(ot_calls(o), "hop_failed protocol violation: reply 354 to RCPT\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* s at buf[*len], NUL-terminated, within cap. */
static void append(char *buf, size_t *len, size_t cap, const char *s)
{
	size_t n = strlen(s);

	assert_true(n < cap - *len);
	memcpy(buf + *len, s, n + 1);
	*len += n;
}

/* More RCPTs than the command buffer holds (DSN's NOTIFY and ORCPT make
 * each line long; the envelope's 64 KiB bound still holds them): the group goes without DATA, the rest follow on the first RCPT
 * reply, DATA after the last. */
static void test_pipelined_group_overflows_buffer(void **state)
{
	enum { N = 120, ORCPT_LEN = 470, CAP = N * 600 };
	static char addrs[N][32], orcpt[ORCPT_LEN + 8], line[N][600];
	static const char *list[N + 1];
	struct ot *o = ot_new();
	char *first = malloc(CAP), *rest = malloc(CAP), *replies = malloc(CAP);
	size_t first_len = 0, rest_len = 0, replies_len = 0, k = 0;
	struct net_conn *nc;

	(void)state;
	assert_true(first && rest && replies);
	snprintf(orcpt, sizeof(orcpt), "rfc822;%0*d", ORCPT_LEN, 0);
	for (int i = 0; i < N; i++) {
		snprintf(addrs[i], sizeof(addrs[i]), "r%03d@test.example", i);
		size_t n = 0;

		append(line[i], &n, sizeof(line[i]), "RCPT TO:<");
		append(line[i], &n, sizeof(line[i]), addrs[i]);
		append(line[i], &n, sizeof(line[i]), "> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=");
		append(line[i], &n, sizeof(line[i]), orcpt);
		append(line[i], &n, sizeof(line[i]), "\r\n");
		list[i] = addrs[i];
	}
	o->orcpt = orcpt;
	o->notify = SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY;
	ot_message(o, FROM, list, BODY, true);
	/* What fits: the buffer keeps 2 KiB spare after each command. */
	append(first, &first_len, CAP, MAIL);
	while (DLV_OUT_CAP - first_len > 2048)
		append(first, &first_len, CAP, line[k++]);
	assert_true(k > 1 && k < N);
	for (size_t i = k; i < N; i++)
		append(rest, &rest_len, CAP, line[i]);
	append(rest, &rest_len, CAP, "DATA\r\n");
	for (int i = 1; i < N; i++)
		append(replies, &replies_len, CAP, "250 ok\r\n");
	nc = ot_ready(o, "250-" OT_MX "\r\n250-PIPELINING\r\n250 DSN\r\n");
	ot_expect_send(nc, first);
	nf_recv(nc, "250 ok\r\n250 ok\r\n");
	ot_expect_send(nc, rest);
	nf_recv(nc, replies);
	nf_recv(nc, "354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_int_equal(o->d.job_calls, 1);
	assert_non_null(strstr(ot_calls(o), "rcpt 119 2 2.0.0 smtp; 250 ok\ndone\n"));
	free(first);
	free(rest);
	free(replies);
	ot_free(o);
}

/* ---- LMTP --------------------------------------------------------------------------- */

static void test_lmtp_reply_per_rcpt(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc;

	(void)state;
	o->job.hops[0].lmtp = true;
	nc = ot_assign(o);
	nf_connected(nc, 0);
	nf_recv(nc, "220 lmtp ready\r\n");
	ot_expect_send(nc, "LHLO " OT_HOST "\r\n");
	nf_recv(nc, "250-lmtp\r\n250 PIPELINING\r\n");
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n550 5.1.1 no b\r\n250 ok\r\n354 go\r\n");
	assert_string_equal(ot_calls(o), "rcpt 1 5 5.1.1 smtp; 550 5.1.1 no b\n");
	ot_body_goes(o, nc);
	/* RFC 2033 4.2: one reply per accepted recipient, in RCPT order. */
	nf_recv(nc, "250 2.0.0 a saved\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 2.0.0 a saved\n");
	assert_int_equal(ot_state(o, nc), OC_DOT);
	nf_recv(nc, "452 4.2.2 c over quota\r\n");
	assert_string_equal(ot_calls(o), "rcpt 2 4 4.2.2 smtp; 452 4.2.2 c over quota\n");
	/* A failed reply to the dot: RSET before the connection is reused. */
	ot_expect_send(nc, "RSET\r\n");
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "done\n");
	ot_free(o);
}

static void test_lmtp_no_helo(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc;

	(void)state;
	o->job.hops[0].lmtp = true;
	nc = ot_assign(o);
	nf_connected(nc, 0);
	nf_recv(nc, "220 lmtp ready\r\n");
	ot_expect_send(nc, "LHLO " OT_HOST "\r\n");
	/* RFC 2033 4.1: LMTP has no HELO to fall back to. */
	nf_recv(nc, "500 5.5.1 unknown\r\n");
	ot_expect_no_send(nc);
	assert_string_equal(ot_calls(o), "hop_failed smtp; 500 5.5.1 unknown\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* RFC 2033 4.2: one reply per accepted recipient, and no more: a third
 * reply for two recipients breaks the count, so none of them counts. */
static void test_lmtp_surplus_after_dot(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc;

	(void)state;
	o->job.hops[0].lmtp = true;
	nc = ot_assign(o);
	nf_connected(nc, 0);
	nf_recv(nc, "220 lmtp ready\r\n");
	ot_expect_send(nc, "LHLO " OT_HOST "\r\n");
	nf_recv(nc, "250-lmtp\r\n250 PIPELINING\r\n");
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n250 ok\r\n550 5.1.1 no c\r\n354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 a\r\n250 b\r\n250 c\r\n");
	assert_string_equal(ot_calls(o),
			    "rcpt 2 5 5.1.1 smtp; 550 5.1.1 no c\n"
			    "rcpt 0 4 4.4.2 " DIAG_LOST
			    "protocol violation: more replies than commands in flight (2 "
			    "owed, the last to the final dot)\n"
			    "rcpt 1 4 4.4.2 " DIAG_LOST
			    "protocol violation: more replies than commands in flight (2 "
			    "owed, the last to the final dot)\ndone\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* ---- reply accounting (invariant 9) ------------------------------------------------- */

static void test_reply_nothing_owed_in_body(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n550 5.1.1 no b\r\n250 ok\r\n354 go\r\n");
	assert_string_equal(ot_calls(o), "rcpt 1 5 5.1.1 smtp; 550 5.1.1 no b\n");
	/* A 250 before the dot went answers nothing: never a delivery. */
	nf_file_read(nc);
	nf_recv(nc, "250 2.0.0 queued\r\n");
	assert_string_equal(ot_calls(o),
			    "rcpt 0 4 4.4.2 " DIAG_LOST
			    "protocol violation: a reply when nothing was asked\n"
			    "rcpt 2 4 4.4.2 " DIAG_LOST
			    "protocol violation: a reply when nothing was asked\ndone\n");
	ot_closed(o, nc);
	ot_free(o);
}

static void test_reply_surplus(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	/* Four replies to three commands: the read is weighed whole, so not
	 * even the first three count. */
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n");
	assert_string_equal(ot_calls(o), "hop_failed protocol violation: more replies than "
					 "commands in flight (3 owed, the last to DATA)\n");
	assert_int_equal(nc->freads, 0);
	ot_closed(o, nc);
	ot_free(o);
}

static void test_reply_surplus_on_ehlo(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, "250 " OT_MX "\r\n250 2.0.0 queued\r\n");

	(void)state;
	ot_expect_no_send(nc);
	assert_string_equal(ot_calls(o), "hop_failed protocol violation: more replies than "
					 "commands in flight (1 owed, the last to EHLO)\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* 250 cannot answer DATA: the count is off, nothing after it counts. */
static void test_reply_250_to_data(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n250 ok\r\n");
	assert_string_equal(ot_calls(o), "hop_failed protocol violation: reply 250 to DATA\n");
	assert_int_equal(nc->freads, 0);
	ot_closed(o, nc);
	ot_free(o);
}

static void test_malformed_reply(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n25x what\r\n");
	assert_string_equal(ot_calls(o),
			    "hop_failed malformed reply from the next hop (bad reply code)\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* ---- too many recipients, out of step --------------------------------------------- */

static void test_overflow_next_transaction(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n452 4.5.3 too many\r\n452 4.5.3 too many\r\n354 go\r\n");
	assert_string_equal(ot_calls(o), "");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\n");
	/* RFC 5321 4.5.3.1.10: the rest go at once, on this connection, no
	 * more per transaction than the hop took. */
	ot_expect_send(nc, MAIL RCPT("b") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, MAIL RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 1 2 2.0.0 smtp; 250 ok\n"
					 "rcpt 2 2 2.0.0 smtp; 250 ok\ndone\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	ot_free(o);
}

/* A hop that takes nobody in a transaction does not earn another. */
static void test_overflow_nobody_taken(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n550 5.1.1 no a\r\n452 4.5.3 too many\r\n452 4.5.3 too many\r\n"
		    "554 5.5.1 no valid recipients\r\n");
	ot_expect_send(nc, "RSET\r\n");
	nf_recv(nc, "250 ok\r\n");
	/* a's refusal is progress: b and c go in the next transaction. */
	assert_string_equal(ot_calls(o), "rcpt 0 5 5.1.1 smtp; 550 5.1.1 no a\n");
	ot_expect_send(nc, MAIL RCPT("b") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n452 4.5.3 too many\r\n503 5.5.1 no valid recipients\r\n");
	ot_expect_send(nc, "RSET\r\n");
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 1 4 4.5.3 smtp; 452 4.5.3 too many\n"
					 "rcpt 2 4 4.5.3 smtp; 452 4.5.3 too many\ndone\n");
	ot_free(o);
}

/* Without PIPELINING: a 552 with X.5.3 is "too many" too (RFC 5321
 * 4.5.3.1.10), and temporary. */
static void test_overflow_one_by_one(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc = ot_ready(o, EHLO_PLAIN);

	(void)state;
	ot_expect_send(nc, MAIL);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, RCPT("a"));
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, RCPT("b"));
	nf_recv(nc, "552 5.5.3 too many recipients\r\n");
	ot_expect_send(nc, "DATA\r\n"); /* no RCPT for c in this one */
	nf_recv(nc, "354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\n");
	ot_expect_send(nc, MAIL);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, RCPT("b"));
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, "DATA\r\n");
	nf_recv(nc, "354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, MAIL);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, RCPT("c"));
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, "DATA\r\n");
	nf_recv(nc, "354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 1 2 2.0.0 smtp; 250 ok\n"
					 "rcpt 2 2 2.0.0 smtp; 250 ok\ndone\n");
	ot_free(o);
}

/* A hop that ends the overflow transaction before any data (421: one
 * message per connection): the rest go on a fresh connection, once. */
static void test_overflow_continuation_lost(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n452 4.5.3 too many\r\n452 4.5.3 too many\r\n"
		    "354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, MAIL RCPT("b") "DATA\r\n");
	nf_recv(nc, "421 4.7.0 one message per connection\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\nagain fresh\n");
	ot_closed(o, nc);
	/* The fresh one is ended the same way, now by a close: deferred. */
	nc = ot_ready(o, EHLO_PIPE);
	ot_expect_send(nc, MAIL RCPT("b") RCPT("c") "DATA\r\n");
	nf_error(nc, 0, "connection closed by the peer");
	assert_string_equal(
	    ot_calls(o), "rcpt 1 4 4.4.2 " DIAG_LOST "connection closed by the next hop\n"
			 "rcpt 2 4 4.4.2 " DIAG_LOST "connection closed by the next hop\ndone\n");
	ot_closed(o, nc);
	ot_free(o);
}

static void test_503_fresh_then_defer(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE), *nc2;

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "503 5.5.1 nested MAIL command\r\n");
	/* Out of step, not a verdict: a new connection, at once. */
	assert_string_equal(ot_calls(o), "again fresh\n");
	ot_closed(o, nc);
	nc2 = ot_ready(o, EHLO_PIPE);
	ot_expect_send(nc2, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc2, "503 5.5.1 nested MAIL command\r\n");
	/* The second 503 defers: the sequence, not the message. */
	assert_string_equal(ot_calls(o),
			    "rcpt 0 4 4.5.1 smtp; 503 5.5.1 nested MAIL command\ndone\n");
	ot_closed(o, nc2);
	ot_free(o);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_banner_then_ehlo),
	    cmocka_unit_test(test_banner_refused),
	    cmocka_unit_test(test_ehlo_refused_helo),
	    cmocka_unit_test(test_ehlo_4xx_fails),
	    cmocka_unit_test(test_pipelined_mixed_rcpts),
	    cmocka_unit_test(test_no_pipelining_one_per_send),
	    cmocka_unit_test(test_pipelined_group_overflows_buffer),
	    cmocka_unit_test(test_data_refused_rset),
	    cmocka_unit_test(test_dot_refused_rset),
	    cmocka_unit_test(test_mail_refused),
	    cmocka_unit_test(test_mail_rcpt_parameters),
	    cmocka_unit_test(test_size_over_limit),
	    cmocka_unit_test(test_message_needs_extensions),
	    cmocka_unit_test(test_reply_before_sent),
	    cmocka_unit_test(test_reply_354_to_rcpt),
	    cmocka_unit_test(test_lmtp_reply_per_rcpt),
	    cmocka_unit_test(test_lmtp_no_helo),
	    cmocka_unit_test(test_lmtp_surplus_after_dot),
	    cmocka_unit_test(test_reply_nothing_owed_in_body),
	    cmocka_unit_test(test_reply_surplus),
	    cmocka_unit_test(test_reply_surplus_on_ehlo),
	    cmocka_unit_test(test_reply_250_to_data),
	    cmocka_unit_test(test_malformed_reply),
	    cmocka_unit_test(test_overflow_next_transaction),
	    cmocka_unit_test(test_overflow_nobody_taken),
	    cmocka_unit_test(test_overflow_one_by_one),
	    cmocka_unit_test(test_overflow_continuation_lost),
	    cmocka_unit_test(test_503_fresh_then_defer),
	};
	int rc;

	if (tls_global_init() != 0)
		return 1;
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	rc |= ot_body_tests();
	rc |= ot_conn_tests();
	rc |= ot_defect_tests();
	tls_global_cleanup();
	return rc;
}
