/*
 * outbound_client — the outbound SMTP/LMTP client (deliver/outbound.c) on a
 * fake connection: the exact bytes it writes, the engine calls it makes and
 * the answer each recipient gets, for every state, the reply accounting,
 * LMTP and STARTTLS.  The test plays the next hop (net_fake.h) and the
 * engine (outbound_testlib.h).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "outbound_testlib.h"
#include "tls/tls.h"

#define FROM	   "sender@origin.example"
#define EHLO_PIPE  "250-" OT_MX "\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
#define EHLO_PLAIN "250-" OT_MX "\r\n250 8BITMIME\r\n"
#define MAIL	   "MAIL FROM:<" FROM ">\r\n"
#define RCPT(a)	   "RCPT TO:<" a "@test.example>\r\n"
#define BODY	   "Subject: test\r\n\r\nhello\r\n..a stuffed line\r\nbye\r\n"
#define BODY_WIRE  BODY ".\r\n"
#define DIAG_LOST  "X-ringmx; " OT_MX "[192.0.2.25]:25: "

static const char *const one[] = {"a@test.example", NULL};
static const char *const three[] = {"a@test.example", "b@test.example", "c@test.example", NULL};

static struct ot *with(const char *const *rcpts)
{
	struct ot *o = ot_new();

	ot_message(o, FROM, rcpts, BODY, true);
	return o;
}

static void closed(struct ot *o, struct net_conn *nc)
{
	assert_int_equal(nc->state, NF_CLOSING);
	assert_int_equal(nf_reap(o->d.core.net), 1);
	assert_int_equal(ot_state(o, nc), OC_FREE);
	assert_int_equal(net_active(o->d.core.net), 0);
}

/* 354, the body, and the connection waits for the dot's reply. */
static void body_goes(struct ot *o, struct net_conn *nc)
{
	assert_int_equal(ot_state(o, nc), OC_BODY);
	assert_string_equal(ot_body(nc), BODY_WIRE);
	assert_int_equal(ot_state(o, nc), OC_DOT);
}

/* ---- greeting and EHLO --------------------------------------------------------------- */

static void test_banner_then_ehlo(void **state)
{
	struct ot *o = with(one);
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
	struct ot *o = with(one);
	struct net_conn *nc = ot_assign(o);

	(void)state;
	nf_connected(nc, 0);
	nf_recv(nc, "554 5.7.1 go away\r\n");
	/* RFC 5321 3.1: QUIT, and the job tries its next hop at once. */
	assert_string_equal(ot_calls(o), "hop_failed smtp; 554 5.7.1 go away\n");
	ot_expect_send(nc, "QUIT\r\n");
	assert_int_equal(ot_state(o, nc), OC_QUIT);
	nf_recv(nc, "221 bye\r\n");
	closed(o, nc);
	assert_string_equal(ot_calls(o), "");
	ot_free(o);
}

static void test_ehlo_refused_helo(void **state)
{
	struct ot *o = with(one);
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
	body_goes(o, nc);
	nf_recv(nc, "250 queued\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 queued\ndone\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	ot_free(o);
}

static void test_ehlo_4xx_fails(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = ot_ready(o, "421 4.3.2 shutting down\r\n");

	(void)state;
	ot_expect_no_send(nc);
	assert_string_equal(ot_calls(o), "hop_failed smtp; 421 4.3.2 shutting down\n");
	closed(o, nc);
	ot_free(o);
}

/* ---- transactions ------------------------------------------------------------------- */

static void test_pipelined_mixed_rcpts(void **state)
{
	struct ot *o = with(three);
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
	body_goes(o, nc);
	assert_string_equal(ot_calls(o), "");
	nf_recv(nc, "250 2.0.0 queued as X\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 2.0.0 queued as X\ndone\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	ot_free(o);
}

static void test_no_pipelining_one_per_send(void **state)
{
	struct ot *o = with(three);
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
	body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 1 2 2.0.0 smtp; 250 ok\n"
					 "rcpt 2 2 2.0.0 smtp; 250 ok\ndone\n");
	ot_free(o);
}

/* The final dot goes with the last piece of the body, only after every
 * stored byte went; the dot's reply is owed only from then on. */
static void test_dot_after_body(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);
	uint32_t sends;

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	sends = nc->sends;
	assert_true(nc->fread);
	nf_file_read(nc);
	assert_true(nc->sending);
	assert_int_equal(nc->sends, sends + 1);
	/* One send: the message's bytes (the other message's chunk left out)
	 * and the dot, in that order. */
	assert_string_equal(nf_sending(nc), BODY_WIRE);
	assert_int_equal(ot_state(o, nc), OC_BODY);
	nf_sent(nc, 0);
	assert_int_equal(ot_state(o, nc), OC_DOT);
	assert_string_equal(ot_calls(o), "");
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	ot_free(o);
}

/* A BDAT-received body is stored as it came: stuffed on the way. */
static void test_body_stuffed_on_the_way(void **state)
{
	struct ot *o = ot_new();
	struct net_conn *nc;

	(void)state;
	ot_message(o, FROM, one, "Subject: b\r\n\r\n.leading dot\r\n", false);
	nc = ot_ready(o, EHLO_PIPE);
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	assert_string_equal(ot_body(nc), "Subject: b\r\n\r\n..leading dot\r\n.\r\n");
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	ot_free(o);
}

static void test_stored_message_corrupt(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	o->m.env.msg_crc ^= 1; /* the stored bytes no longer verify */
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	nf_file_read(nc);
	/* No dot goes: the hop must not take a message we cannot vouch for. */
	ot_expect_no_send(nc);
	assert_string_equal(ot_calls(o), "hop_failed stored message does not verify (CRC)\n");
	closed(o, nc);
	ot_free(o);
}

static void test_data_refused_rset(void **state)
{
	struct ot *o = with(one);
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
	struct ot *o = with(one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	body_goes(o, nc);
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
	struct ot *o = with(three);
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

/* ---- LMTP --------------------------------------------------------------------------- */

static void test_lmtp_reply_per_rcpt(void **state)
{
	struct ot *o = with(three);
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
	body_goes(o, nc);
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
	struct ot *o = with(one);
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
	closed(o, nc);
	ot_free(o);
}

/* ---- reply accounting (invariant 9) ------------------------------------------------- */

static void test_reply_nothing_owed_in_body(void **state)
{
	struct ot *o = with(three);
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
	closed(o, nc);
	ot_free(o);
}

static void test_reply_surplus(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	/* Four replies to three commands: the read is weighed whole, so not
	 * even the first three count. */
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n");
	assert_string_equal(ot_calls(o), "hop_failed protocol violation: more replies than "
					 "commands in flight (3 owed, the last to DATA)\n");
	assert_int_equal(nc->freads, 0);
	closed(o, nc);
	ot_free(o);
}

static void test_reply_surplus_on_ehlo(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = ot_ready(o, "250 " OT_MX "\r\n250 2.0.0 queued\r\n");

	(void)state;
	ot_expect_no_send(nc);
	assert_string_equal(ot_calls(o), "hop_failed protocol violation: more replies than "
					 "commands in flight (1 owed, the last to EHLO)\n");
	closed(o, nc);
	ot_free(o);
}

/* 250 cannot answer DATA: the count is off, nothing after it counts. */
static void test_reply_250_to_data(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n250 ok\r\n");
	assert_string_equal(ot_calls(o), "hop_failed protocol violation: reply 250 to DATA\n");
	assert_int_equal(nc->freads, 0);
	closed(o, nc);
	ot_free(o);
}

static void test_malformed_reply(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n25x what\r\n");
	assert_string_equal(ot_calls(o),
			    "hop_failed malformed reply from the next hop (bad reply code)\n");
	closed(o, nc);
	ot_free(o);
}

/* ---- too many recipients, out of step --------------------------------------------- */

static void test_overflow_next_transaction(void **state)
{
	struct ot *o = with(three);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n452 4.5.3 too many\r\n452 4.5.3 too many\r\n354 go\r\n");
	assert_string_equal(ot_calls(o), "");
	body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\n");
	/* RFC 5321 4.5.3.1.10: the rest go at once, on this connection, no
	 * more per transaction than the hop took. */
	ot_expect_send(nc, MAIL RCPT("b") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, MAIL RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 1 2 2.0.0 smtp; 250 ok\n"
					 "rcpt 2 2 2.0.0 smtp; 250 ok\ndone\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	ot_free(o);
}

/* A hop that takes nobody in a transaction does not earn another. */
static void test_overflow_nobody_taken(void **state)
{
	struct ot *o = with(three);
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

static void test_503_fresh_then_defer(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE), *nc2;

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "503 5.5.1 nested MAIL command\r\n");
	/* Out of step, not a verdict: a new connection, at once. */
	assert_string_equal(ot_calls(o), "again fresh\n");
	closed(o, nc);
	nc2 = ot_ready(o, EHLO_PIPE);
	ot_expect_send(nc2, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc2, "503 5.5.1 nested MAIL command\r\n");
	/* The second 503 defers: the sequence, not the message. */
	assert_string_equal(ot_calls(o),
			    "rcpt 0 4 4.5.1 smtp; 503 5.5.1 nested MAIL command\ndone\n");
	closed(o, nc2);
	ot_free(o);
}

/* ---- STARTTLS ----------------------------------------------------------------------- */

#define EHLO_TLS "250-" OT_MX "\r\n250-PIPELINING\r\n250 STARTTLS\r\n"

static void test_tls_required_not_offered(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc;

	(void)state;
	ot_tls(o, CONFIG_RTLS_REQUIRED);
	nc = ot_ready(o, EHLO_PIPE);
	ot_expect_no_send(nc);
	assert_int_equal(nc->tls_starts, 0);
	assert_string_equal(ot_calls(o), "hop_failed TLS required by the route, but the next hop "
					 "does not offer STARTTLS\n");
	closed(o, nc);
	ot_free(o);
}

static void test_starttls_then_ehlo(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc;

	(void)state;
	ot_tls(o, CONFIG_RTLS_REQUIRED);
	nc = ot_ready(o, EHLO_TLS);
	ot_expect_send(nc, "STARTTLS\r\n");
	assert_int_equal(ot_state(o, nc), OC_STARTTLS);
	nf_recv(nc, "220 2.0.0 go ahead\r\n");
	assert_int_equal(nc->tls_starts, 1);
	assert_string_equal(nc->peer_name, OT_MX);
	assert_int_equal(ot_state(o, nc), OC_TLS_HS);
	ot_expect_no_send(nc); /* nothing goes during the handshake */
	nf_tls_ready(nc);
	/* RFC 3207 4.2: EHLO again, what was learnt before forgotten. */
	ot_expect_send(nc, "EHLO " OT_HOST "\r\n");
	nf_recv(nc, EHLO_PLAIN);
	ot_expect_send(nc, MAIL);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, RCPT("a"));
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, "DATA\r\n");
	nf_recv(nc, "354 go\r\n");
	body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	/* The session the job went on is TLS (no handshake ran: no names). */
	assert_memory_equal(o->job.tls_info, "  unverified", 13);
	ot_free(o);
}

/* RFC 3207 5 (CVE-2011-0411): bytes behind the 220 would be read as
 * replies inside TLS. */
static void test_starttls_injection(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc;

	(void)state;
	ot_tls(o, CONFIG_RTLS_OPPORTUNISTIC);
	nc = ot_ready(o, EHLO_TLS);
	ot_expect_send(nc, "STARTTLS\r\n");
	nf_recv(nc, "220 go ahead\r\n250 injected\r\n");
	assert_int_equal(nc->tls_starts, 0);
	assert_string_equal(ot_calls(o), "hop_failed protocol violation: bytes after the reply to "
					 "STARTTLS (response injection)\n");
	closed(o, nc);
	ot_free(o);
}

static void test_starttls_refused(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc;

	(void)state;
	/* Opportunistic: a refusal leaves the session in plaintext. */
	ot_tls(o, CONFIG_RTLS_OPPORTUNISTIC);
	nc = ot_ready(o, EHLO_TLS);
	ot_expect_send(nc, "STARTTLS\r\n");
	nf_recv(nc, "454 4.7.0 not now\r\n");
	assert_int_equal(nc->tls_starts, 0);
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	assert_string_equal(ot_calls(o), "");
	ot_free(o);

	/* Required: it fails the hop. */
	o = with(one);
	ot_tls(o, CONFIG_RTLS_REQUIRED);
	nc = ot_ready(o, EHLO_TLS);
	ot_expect_send(nc, "STARTTLS\r\n");
	nf_recv(nc, "454 4.7.0 not now\r\n");
	assert_string_equal(ot_calls(o), "hop_failed smtp; 454 4.7.0 not now\n");
	closed(o, nc);
	ot_free(o);
}

static void test_tls_verify_unverified(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc;

	(void)state;
	ot_tls(o, CONFIG_RTLS_VERIFY);
	nc = ot_ready(o, EHLO_TLS);
	ot_expect_send(nc, "STARTTLS\r\n");
	nf_recv(nc, "220 go ahead\r\n");
	nf_tls_ready(nc); /* a session whose peer was not verified */
	ot_expect_no_send(nc);
	assert_string_equal(ot_calls(o),
			    "hop_failed TLS certificate not verified (route tls verify)\n");
	closed(o, nc);
	ot_free(o);
}

/* QUIT on a TLS session ends with our close_notify (net_shutdown). */
static void test_tls_quit_shutdown(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc;

	(void)state;
	o->cfg.delivery.messages_per_connection = 1;
	ot_tls(o, CONFIG_RTLS_OPPORTUNISTIC);
	nc = ot_ready(o, EHLO_TLS);
	ot_expect_send(nc, "STARTTLS\r\n");
	nf_recv(nc, "220 go ahead\r\n");
	nf_tls_ready(nc);
	ot_expect_send(nc, "EHLO " OT_HOST "\r\n");
	nf_recv(nc, EHLO_PIPE);
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	ot_expect_send(nc, "QUIT\r\n");
	nf_recv(nc, "221 bye\r\n");
	assert_int_equal(nc->shutdowns, 1);
	assert_int_equal(nc->state, NF_DRAINING);
	assert_int_equal(ot_state(o, nc), OC_TLS_CLOSE);
	assert_int_equal(nf_reap(o->d.core.net), 1);
	assert_int_equal(ot_state(o, nc), OC_FREE);
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	ot_free(o);
}

/* ---- errors, timeouts, the end of a connection -------------------------------------- */

static void test_hop_closes_mid_transaction(void **state)
{
	struct ot *o = with(three);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n550 5.1.1 no b\r\n250 ok\r\n354 go\r\n");
	assert_string_equal(ot_calls(o), "rcpt 1 5 5.1.1 smtp; 550 5.1.1 no b\n");
	body_goes(o, nc);
	nf_error(nc, 0, "connection closed by the peer");
	/* The body went: its fate is unknown, so a 4xx, never a delivery. */
	assert_string_equal(
	    ot_calls(o), "rcpt 0 4 4.4.2 " DIAG_LOST "connection closed by the next hop\n"
			 "rcpt 2 4 4.4.2 " DIAG_LOST "connection closed by the next hop\ndone\n");
	closed(o, nc);
	ot_free(o);
}

static void test_send_fails_before_answers(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	assert_string_equal(nf_sending(nc), MAIL RCPT("a") "DATA\r\n");
	nf_sent(nc, -ECONNRESET);
	assert_string_equal(ot_calls(o), "hop_failed Connection reset by peer\n");
	closed(o, nc);
	ot_free(o);
}

static void test_timeouts(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = ot_assign(o);

	(void)state;
	/* The connect: connect_timeout_s. */
	o->d.core.now_ms += 29999;
	oc_tick(&o->d);
	assert_string_equal(ot_calls(o), "");
	o->d.core.now_ms += 1;
	oc_tick(&o->d);
	assert_string_equal(ot_calls(o), "hop_failed timeout (state connecting)\n");
	closed(o, nc);

	/* A reply: command_timeout_s from the last I/O. */
	nc = ot_ready(o, EHLO_PIPE);
	assert_string_equal(nf_sending(nc), MAIL RCPT("a") "DATA\r\n");
	o->d.core.now_ms += 300000 - 1;
	oc_tick(&o->d);
	assert_string_equal(ot_calls(o), "");
	o->d.core.now_ms += 1;
	oc_tick(&o->d);
	assert_string_equal(ot_calls(o), "hop_failed timeout (state mail)\n");
	closed(o, nc);
	ot_free(o);
}

static void test_quit_after_messages_per_connection(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc;

	(void)state;
	o->cfg.delivery.messages_per_connection = 1;
	nc = ot_ready(o, EHLO_PIPE);
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	ot_expect_send(nc, "QUIT\r\n");
	assert_int_equal(ot_state(o, nc), OC_QUIT);
	nf_recv(nc, "221 2.0.0 bye\r\n");
	assert_int_equal(nc->shutdowns, 0); /* plaintext: closed at once */
	closed(o, nc);
	assert_string_equal(ot_calls(o), "");
	ot_free(o);
}

/* Delivered, idle: the next job to the hop reuses the connection. */
static struct net_conn *delivered_idle(struct ot *o)
{
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	assert_int_equal(nc->timeout_ms, 0); /* no deadline while idle */
	return nc;
}

static void test_idle_closed_by_hop(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = delivered_idle(o);
	uint32_t job_calls = o->d.job_calls;

	(void)state;
	nf_error(nc, 0, "connection closed by the peer");
	closed(o, nc);
	assert_string_equal(ot_calls(o), "");
	assert_int_equal(o->d.job_calls, job_calls);
	ot_free(o);
}

static void test_idle_421_closes(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = delivered_idle(o);

	(void)state;
	nf_recv(nc, "421 4.4.2 idle too long\r\n");
	closed(o, nc);
	assert_string_equal(ot_calls(o), "");
	ot_free(o);
}

static void test_idle_reuse_and_expiry(void **state)
{
	struct ot *o = with(one);
	struct net_conn *nc = delivered_idle(o);

	(void)state;
	ot_message(o, FROM, one, BODY, true); /* the next message, same hop */
	assert_true(oc_assign(&o->d, &o->job));
	assert_int_equal(o->d.core.net->opened, 1);
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	/* Idle for DLV_IDLE_MS: QUIT. */
	o->d.core.now_ms += DLV_IDLE_MS;
	oc_tick(&o->d);
	ot_expect_send(nc, "QUIT\r\n");
	nf_recv(nc, "221 bye\r\n");
	closed(o, nc);
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
	    cmocka_unit_test(test_dot_after_body),
	    cmocka_unit_test(test_body_stuffed_on_the_way),
	    cmocka_unit_test(test_stored_message_corrupt),
	    cmocka_unit_test(test_data_refused_rset),
	    cmocka_unit_test(test_dot_refused_rset),
	    cmocka_unit_test(test_mail_refused),
	    cmocka_unit_test(test_lmtp_reply_per_rcpt),
	    cmocka_unit_test(test_lmtp_no_helo),
	    cmocka_unit_test(test_reply_nothing_owed_in_body),
	    cmocka_unit_test(test_reply_surplus),
	    cmocka_unit_test(test_reply_surplus_on_ehlo),
	    cmocka_unit_test(test_reply_250_to_data),
	    cmocka_unit_test(test_malformed_reply),
	    cmocka_unit_test(test_overflow_next_transaction),
	    cmocka_unit_test(test_overflow_nobody_taken),
	    cmocka_unit_test(test_503_fresh_then_defer),
	    cmocka_unit_test(test_tls_required_not_offered),
	    cmocka_unit_test(test_starttls_then_ehlo),
	    cmocka_unit_test(test_starttls_injection),
	    cmocka_unit_test(test_starttls_refused),
	    cmocka_unit_test(test_tls_verify_unverified),
	    cmocka_unit_test(test_tls_quit_shutdown),
	    cmocka_unit_test(test_hop_closes_mid_transaction),
	    cmocka_unit_test(test_send_fails_before_answers),
	    cmocka_unit_test(test_timeouts),
	    cmocka_unit_test(test_quit_after_messages_per_connection),
	    cmocka_unit_test(test_idle_closed_by_hop),
	    cmocka_unit_test(test_idle_421_closes),
	    cmocka_unit_test(test_idle_reuse_and_expiry),
	};
	int rc;

	if (tls_global_init() != 0)
		return 1;
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	tls_global_cleanup();
	return rc;
}
