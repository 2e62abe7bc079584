/*
 * outbound_client_conn — the outbound client's connection on a fake net:
 * STARTTLS, errors, timeouts, QUIT and idle connections (part of the
 * outbound_client test; outbound_client.c has the transactions).
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

/* ---- STARTTLS ----------------------------------------------------------------------- */

#define EHLO_TLS "250-" OT_MX "\r\n250-PIPELINING\r\n250 STARTTLS\r\n"

static void test_tls_required_not_offered(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc;

	(void)state;
	ot_tls(o, CONFIG_RTLS_REQUIRED);
	nc = ot_ready(o, EHLO_PIPE);
	ot_expect_no_send(nc);
	assert_int_equal(nc->tls_starts, 0);
	assert_string_equal(ot_calls(o), "hop_failed TLS required by the route, but the next hop "
					 "does not offer STARTTLS\n");
	ot_closed(o, nc);
	ot_free(o);
}

static void test_starttls_then_ehlo(void **state)
{
	struct ot *o = ot_with(ot_one);
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
	ot_body_goes(o, nc);
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
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc;

	(void)state;
	ot_tls(o, CONFIG_RTLS_OPPORTUNISTIC);
	nc = ot_ready(o, EHLO_TLS);
	ot_expect_send(nc, "STARTTLS\r\n");
	nf_recv(nc, "220 go ahead\r\n250 injected\r\n");
	assert_int_equal(nc->tls_starts, 0);
	assert_string_equal(ot_calls(o), "hop_failed protocol violation: bytes after the reply to "
					 "STARTTLS (response injection)\n");
	ot_closed(o, nc);
	ot_free(o);
}

static void test_starttls_refused(void **state)
{
	struct ot *o = ot_with(ot_one);
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
	o = ot_with(ot_one);
	ot_tls(o, CONFIG_RTLS_REQUIRED);
	nc = ot_ready(o, EHLO_TLS);
	ot_expect_send(nc, "STARTTLS\r\n");
	nf_recv(nc, "454 4.7.0 not now\r\n");
	assert_string_equal(ot_calls(o), "hop_failed smtp; 454 4.7.0 not now\n");
	ot_closed(o, nc);
	ot_free(o);
}

static void test_tls_verify_unverified(void **state)
{
	struct ot *o = ot_with(ot_one);
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
	ot_closed(o, nc);
	ot_free(o);
}

/* A failed handshake fails the hop (the next one, or a retry). */
static void test_tls_handshake_fails(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc;

	(void)state;
	ot_tls(o, CONFIG_RTLS_OPPORTUNISTIC);
	nc = ot_ready(o, EHLO_TLS);
	ot_expect_send(nc, "STARTTLS\r\n");
	nf_recv(nc, "220 go ahead\r\n");
	nf_error(nc, -EPROTO, "TLS handshake failed: bad certificate");
	assert_string_equal(ot_calls(o), "hop_failed TLS handshake failed: bad certificate\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* Part of a line behind the 220 is as bad as a whole one. */
static void test_starttls_partial_injection(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc;

	(void)state;
	ot_tls(o, CONFIG_RTLS_REQUIRED);
	nc = ot_ready(o, EHLO_TLS);
	ot_expect_send(nc, "STARTTLS\r\n");
	nf_recv(nc, "220 go ahead\r\n2");
	assert_int_equal(nc->tls_starts, 0);
	assert_string_equal(ot_calls(o), "hop_failed protocol violation: bytes after the reply to "
					 "STARTTLS (response injection)\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* Route tls none: STARTTLS offered, not used. */
static void test_tls_none_ignores_offer(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_TLS);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	assert_int_equal(nc->tls_starts, 0);
	ot_free(o);
}

/* QUIT on a TLS session ends with our close_notify (net_shutdown). */
static void test_tls_quit_shutdown(void **state)
{
	struct ot *o = ot_with(ot_one);
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
	ot_body_goes(o, nc);
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
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n550 5.1.1 no b\r\n250 ok\r\n354 go\r\n");
	assert_string_equal(ot_calls(o), "rcpt 1 5 5.1.1 smtp; 550 5.1.1 no b\n");
	ot_body_goes(o, nc);
	nf_error(nc, 0, "connection closed by the peer");
	/* The body went: its fate is unknown, so a 4xx, never a delivery. */
	assert_string_equal(
	    ot_calls(o), "rcpt 0 4 4.4.2 " DIAG_LOST "connection closed by the next hop\n"
			 "rcpt 2 4 4.4.2 " DIAG_LOST "connection closed by the next hop\ndone\n");
	ot_closed(o, nc);
	ot_free(o);
}

static void test_send_fails_before_answers(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	(void)state;
	assert_string_equal(nf_sending(nc), MAIL RCPT("a") "DATA\r\n");
	nf_sent(nc, -ECONNRESET);
	assert_string_equal(ot_calls(o), "hop_failed Connection reset by peer\n");
	ot_closed(o, nc);
	ot_free(o);
}

static void test_connect_refused(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_assign(o);

	(void)state;
	nf_connected(nc, -ECONNREFUSED);
	assert_string_equal(ot_calls(o), "hop_failed Connection refused\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* No socket: the slot is free at once and no callback comes (net.h). */
static void test_no_socket(void **state)
{
	struct ot *o = ot_with(ot_one);

	(void)state;
	o->d.core.net->connect_errno = EMFILE;
	assert_true(oc_assign(&o->d, &o->job));
	assert_string_equal(ot_calls(o), "hop_failed socket: Too many open files\n");
	assert_int_equal(net_active(o->d.core.net), 0);
	assert_int_equal(o->d.core.oc[0].state, OC_FREE);
	assert_null(o->d.core.oc[0].out);
	ot_free(o);
}

/* No reply to the dot: the message may have been taken, or not; a 4xx
 * (at least once), never a delivery. */
static void test_timeout_after_dot(void **state)
{
	struct ot *o = ot_with(ot_three);
	struct net_conn *nc;

	(void)state;
	o->job.hops[0].lmtp = true;
	nc = ot_assign(o);
	nf_connected(nc, 0);
	nf_recv(nc, "220 lmtp\r\n");
	ot_expect_send(nc, "LHLO " OT_HOST "\r\n");
	nf_recv(nc, "250-lmtp\r\n250 PIPELINING\r\n");
	ot_expect_send(nc, MAIL RCPT("a") RCPT("b") RCPT("c") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 a saved\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 a saved\n");
	o->d.core.now_ms += 300000;
	oc_tick(&o->d);
	assert_string_equal(ot_calls(o), "rcpt 1 4 4.4.2 " DIAG_LOST "timeout (state dot)\n"
					 "rcpt 2 4 4.4.2 " DIAG_LOST "timeout (state dot)\ndone\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* net.h: the slot is free before on_closed, so the engine may open a
 * connection from inside it, in the same slot. */
static void test_assign_from_on_closed(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_assign(o);

	(void)state;
	nf_connected(nc, 0);
	nf_recv(nc, "554 busy\r\n");
	ot_expect_send(nc, "QUIT\r\n");
	nf_recv(nc, "221 bye\r\n");
	assert_string_equal(ot_calls(o), "hop_failed smtp; 554 busy\n");
	o->d.waiting = &o->job; /* the engine's next try */
	assert_int_equal(nf_reap(o->d.core.net), 1);
	assert_string_equal(ot_calls(o), "assign yes\n");
	assert_int_equal(nc->state, NF_CONNECTING);
	assert_int_equal(ot_state(o, nc), OC_CONNECTING);
	assert_int_equal(net_active(o->d.core.net), 1);
	nf_connected(nc, 0);
	nf_recv(nc, "220 " OT_MX "\r\n");
	ot_expect_send(nc, "EHLO " OT_HOST "\r\n");
	ot_free(o);
}

static void test_timeouts(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = ot_assign(o);

	(void)state;
	/* The connect: connect_timeout_s. */
	o->d.core.now_ms += 29999;
	oc_tick(&o->d);
	assert_string_equal(ot_calls(o), "");
	o->d.core.now_ms += 1;
	oc_tick(&o->d);
	assert_string_equal(ot_calls(o), "hop_failed timeout (state connecting)\n");
	ot_closed(o, nc);

	/* A reply: command_timeout_s from the last I/O. */
	nc = ot_ready(o, EHLO_PIPE);
	assert_string_equal(nf_sending(nc), MAIL RCPT("a") "DATA\r\n");
	o->d.core.now_ms += 300000 - 1;
	oc_tick(&o->d);
	assert_string_equal(ot_calls(o), "");
	o->d.core.now_ms += 1;
	oc_tick(&o->d);
	assert_string_equal(ot_calls(o), "hop_failed timeout (state mail)\n");
	ot_closed(o, nc);
	ot_free(o);
}

static void test_quit_after_messages_per_connection(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc;

	(void)state;
	o->cfg.delivery.messages_per_connection = 1;
	nc = ot_ready(o, EHLO_PIPE);
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	ot_expect_send(nc, "QUIT\r\n");
	assert_int_equal(ot_state(o, nc), OC_QUIT);
	nf_recv(nc, "221 2.0.0 bye\r\n");
	assert_int_equal(nc->shutdowns, 0); /* plaintext: closed at once */
	ot_closed(o, nc);
	assert_string_equal(ot_calls(o), "");
	ot_free(o);
}

/* Delivered, idle: the next job to the hop reuses the connection. */
static struct net_conn *delivered_idle(struct ot *o)
{
	struct net_conn *nc = ot_ready(o, EHLO_PIPE);

	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	assert_int_equal(ot_state(o, nc), OC_IDLE);
	assert_int_equal(nc->timeout_ms, 0); /* no deadline while idle */
	return nc;
}

static void test_idle_closed_by_hop(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = delivered_idle(o);
	uint32_t job_calls = o->d.job_calls;

	(void)state;
	nf_error(nc, 0, "connection closed by the peer");
	ot_closed(o, nc);
	assert_string_equal(ot_calls(o), "");
	assert_int_equal(o->d.job_calls, job_calls);
	ot_free(o);
}

static void test_idle_421_closes(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = delivered_idle(o);

	(void)state;
	nf_recv(nc, "421 4.4.2 idle too long\r\n");
	ot_closed(o, nc);
	assert_string_equal(ot_calls(o), "");
	ot_free(o);
}

static void test_idle_reuse_and_expiry(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = delivered_idle(o);

	(void)state;
	ot_message(o, FROM, ot_one, BODY, true); /* the next message, same hop */
	assert_true(oc_assign(&o->d, &o->job));
	assert_int_equal(o->d.core.net->opened, 1);
	ot_expect_send(nc, MAIL RCPT("a") "DATA\r\n");
	nf_recv(nc, "250 ok\r\n250 ok\r\n354 go\r\n");
	ot_body_goes(o, nc);
	nf_recv(nc, "250 ok\r\n");
	assert_string_equal(ot_calls(o), "rcpt 0 2 2.0.0 smtp; 250 ok\ndone\n");
	/* Idle for DLV_IDLE_MS: QUIT. */
	o->d.core.now_ms += DLV_IDLE_MS;
	oc_tick(&o->d);
	ot_expect_send(nc, "QUIT\r\n");
	nf_recv(nc, "221 bye\r\n");
	ot_closed(o, nc);
	ot_free(o);
}

/* Stopping: an idle connection says QUIT at the next tick. */
static void test_stop_quits_idle(void **state)
{
	struct ot *o = ot_with(ot_one);
	struct net_conn *nc = delivered_idle(o);

	(void)state;
	o->d.core.stopping = true;
	oc_tick(&o->d);
	ot_expect_send(nc, "QUIT\r\n");
	nf_recv(nc, "221 bye\r\n");
	ot_closed(o, nc);
	assert_int_equal(oc_active(&o->d), 0);
	ot_free(o);
}

int ot_conn_tests(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tls_required_not_offered),
	    cmocka_unit_test(test_starttls_then_ehlo),
	    cmocka_unit_test(test_starttls_injection),
	    cmocka_unit_test(test_starttls_refused),
	    cmocka_unit_test(test_tls_verify_unverified),
	    cmocka_unit_test(test_tls_handshake_fails),
	    cmocka_unit_test(test_starttls_partial_injection),
	    cmocka_unit_test(test_tls_none_ignores_offer),
	    cmocka_unit_test(test_tls_quit_shutdown),
	    cmocka_unit_test(test_hop_closes_mid_transaction),
	    cmocka_unit_test(test_send_fails_before_answers),
	    cmocka_unit_test(test_connect_refused),
	    cmocka_unit_test(test_no_socket),
	    cmocka_unit_test(test_timeout_after_dot),
	    cmocka_unit_test(test_assign_from_on_closed),
	    cmocka_unit_test(test_timeouts),
	    cmocka_unit_test(test_quit_after_messages_per_connection),
	    cmocka_unit_test(test_idle_closed_by_hop),
	    cmocka_unit_test(test_idle_421_closes),
	    cmocka_unit_test(test_idle_reuse_and_expiry),
	    cmocka_unit_test(test_stop_quits_idle),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
