/*
 * outbound_client_body — the outbound client's message body on a fake
 * net: read from a real segment file window by window, sent after 354
 * with the final dot last, stuffed on the way when stored as BDAT took
 * it, and never finished when the stored bytes do not verify (part of the
 * outbound_client test).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "outbound_testlib.h"

/* The final dot goes with the last piece of the body, only after every
 * stored byte went; the dot's reply is owed only from then on. */
static void test_dot_after_body(void **state)
{
	struct ot *o = ot_with(ot_one);
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
	ot_message(o, FROM, ot_one, "Subject: b\r\n\r\n.leading dot\r\n", false);
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
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	o->m.env.msg_crc ^= 1; /* the stored bytes no longer verify */
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	nf_file_read(nc);
	/* No dot goes: the hop must not take a message we cannot vouch for. */
	ot_expect_no_send(nc);
	assert_string_equal(ot_calls(o), "hop_failed stored message does not verify (CRC)\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* A body of n lines, every 7th beginning with a dot (doubled: stuffed). */
static char *lines(uint32_t n, bool stuffed)
{
	char *b = malloc((size_t)n * 40 + 1);
	size_t k = 0;

	assert_non_null(b);
	b[0] = '\0';
	for (uint32_t i = 0; i < n; i++)
		k += (size_t)sprintf(b + k, "%s line %06u of a message\r\n",
				     i % 7     ? "text"
				     : stuffed ? ".."
					       : ".",
				     i);
	return b;
}

/* 300 KB in 7000-byte chunks: several windows of DLV_WIN, records cut at
 * a window's end, another message's chunks skipped. */
static void test_body_across_windows(void **state)
{
	struct ot *o = ot_new();
	char *body = lines(10000, true), *want;
	struct net_conn *nc;

	(void)state;
	ot_message_n(o, FROM, ot_one, body, (uint32_t)strlen(body), true, 7000);
	nc = ot_ready(o, EHLO_PIPE);
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	assert_true(asprintf(&want, "%s.\r\n", body) > 0);
	assert_string_equal(ot_body(nc), want);
	assert_true(nc->freads > strlen(body) / DLV_WIN);
	assert_int_equal(ot_state(o, nc), OC_DOT);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	free(body);
	free(want);
	ot_free(o);
}

/* A BDAT-received body with a dot on many lines: more pieces than one
 * send's iovecs, so the body goes in several sends, the dot last. */
static void test_body_stuffing_many_iovecs(void **state)
{
	struct ot *o = ot_new();
	char *body = lines(1500, false), *want = lines(1500, true), *got;
	struct net_conn *nc;

	(void)state;
	ot_message_n(o, FROM, ot_one, body, (uint32_t)strlen(body), false, 5000);
	nc = ot_ready(o, EHLO_PIPE);
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	uint32_t sends = nc->sends;

	got = strdup(ot_body(nc));
	assert_non_null(got);
	assert_true(nc->sends > sends + 1);
	assert_true(strlen(got) == strlen(want) + 3);
	assert_memory_equal(got, want, strlen(want));
	assert_string_equal(got + strlen(want), ".\r\n");
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	free(body);
	free(want);
	free(got);
	ot_free(o);
}

/* The segment ends before the message does: no dot ever goes. */
static void test_body_truncated(void **state)
{
	struct ot *o = ot_new();
	char *body = lines(6000, true);
	struct net_conn *nc;

	(void)state;
	ot_message_n(o, FROM, ot_one, body, (uint32_t)strlen(body), true, 7000);
	assert_int_equal(ftruncate(o->segfd, 150000), 0);
	nc = ot_ready(o, EHLO_PIPE);
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	ot_body(nc);
	assert_int_equal(ot_state(o, nc), OC_CLOSING);
	assert_null(strstr(nc->trans, "\r\n.\r\n"));
	assert_string_equal(ot_calls(o), "hop_failed stored message truncated\n");
	ot_closed(o, nc);
	free(body);
	ot_free(o);
}

/* The connection fails while a window is being read: the slot (and the
 * window the read writes into) is kept until the read completed. */
static void test_fail_during_file_read(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	assert_true(nc->fread);
	nf_error(nc, -ECONNRESET, "Connection reset by peer");
	assert_string_equal(ot_calls(o), "hop_failed Connection reset by peer\n");
	assert_int_equal(nf_reap(o->d.core.net), 0);
	nf_file_read(nc); /* completes after the close: not handed over */
	ot_closed(o, nc);
	ot_free(o);
}

/* The pipelined group answered, 354 included, before its send's
 * completion came: the body waits for that completion (one send at a
 * time), then goes. */
static void test_group_answered_before_sent(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	assert_string_equal(nf_sending(nc), MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	assert_int_equal(ot_state(o, nc), OC_BODY);
	assert_int_equal(nc->freads, 0);
	nf_sent(nc, 0);
	assert_true(nc->fread);
	assert_string_equal(ot_body(nc), BODY_WIRE);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	ot_free(o);
}

/* The body's send fails after some recipients were answered: the rest
 * are deferred. */
static void test_body_send_fails(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n250 ok\r\n550 5.1.1 no c\r\n354 go\r\n");
	nf_file_read(nc);
	assert_true(nc->sending);
	nf_sent(nc, -EPIPE);
	assert_string_equal(ot_calls(o), "rcpt 2 5 5.1.1 smtp; 550 5.1.1 no c\n"
					 "rcpt 0 4 4.4.2 " DIAG_LOST "Broken pipe\n"
					 "rcpt 1 4 4.4.2 " DIAG_LOST "Broken pipe\ndone\n");
	ot_closed(o, nc);
	ot_free(o);
}

int ot_body_tests(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_dot_after_body),
	    cmocka_unit_test(test_body_stuffed_on_the_way),
	    cmocka_unit_test(test_stored_message_corrupt),
	    cmocka_unit_test(test_body_across_windows),
	    cmocka_unit_test(test_body_stuffing_many_iovecs),
	    cmocka_unit_test(test_body_truncated),
	    cmocka_unit_test(test_fail_during_file_read),
	    cmocka_unit_test(test_group_answered_before_sent),
	    cmocka_unit_test(test_body_send_fails),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
