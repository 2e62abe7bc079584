/*
 * outbound_testlib — the outbound SMTP/LMTP client (deliver/outbound.c)
 * without a shard: the engine functions it calls (the dlv_* of
 * deliver/internal.h) recorded in order, a config made by hand, a real
 * spool segment file holding one message (record.h framing, a keyed head,
 * the message's chunks with another message's chunk between them), and a
 * job of that message for one next hop.  The connections are the fake net
 * (net_fake.h): the test plays the next hop through nf_*.
 *
 * What the client told the engine is kept as text, one line per call, so
 * a test asserts the whole sequence at once (ot_calls):
 *   rcpt <i> <class> <status> <diag>   dlv_rcpt_result for job recipient i
 *   hop_failed <why>                   dlv_job_hop_failed
 *   done                               dlv_job_done
 *   again[ fresh]                      dlv_job_again (job->fresh set)
 *   assign yes|no                      the engine assigned d.waiting
 * dlv_conn_freed is only counted (d.conn_freed).
 */
#ifndef RMX_TESTS_OUTBOUND_TESTLIB_H
#define RMX_TESTS_OUTBOUND_TESTLIB_H

#include <stdbool.h>
#include <stdint.h>

#include "deliver/internal.h"
#include "net_fake.h"
#include "queue/record.h"

#define OT_RCPTS_MAX 160
#define OT_CALLS_MAX 8192 /* bytes of recorded engine calls */
#define OT_HOST	     "relay.test.example"
#define OT_MX	     "mx.test.example"

/* What the cases send and expect. */
#define FROM	   "sender@origin.example"
#define EHLO_PIPE  "250-" OT_MX "\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
#define EHLO_PLAIN "250-" OT_MX "\r\n250 8BITMIME\r\n"
#define MAIL	   "MAIL FROM:<" FROM ">\r\n"
#define RCPT(a)	   "RCPT TO:<" a "@test.example>\r\n"
#define BODY	   "Subject: test\r\n\r\nhello\r\n..a stuffed line\r\nbye\r\n"
#define BODY_WIRE  BODY ".\r\n"
/* The diagnostic of our own failures on the connection to the hop. */
#define DIAG_LOST "X-ringmx; " OT_MX "[192.0.2.25]:25: "

extern const char *const ot_one[];   /* a@test.example */
extern const char *const ot_three[]; /* a@, b@, c@test.example */

/* The engine: outbound.c reaches it only through dlv_core() and dlv_*. */
struct deliver {
	struct deliver_core core;
	char calls[OT_CALLS_MAX];
	size_t calls_len, calls_seen;
	uint32_t conn_freed;
	uint32_t job_calls; /* hop_failed, done and again: the job left the client */
	/* dlv_conn_freed assigns this job (once) at once.  deliver.c waits
	 * for the end of the loop turn; net.h allows it even in on_closed. */
	struct djob *waiting;
};

struct ot {
	struct deliver d;
	struct rmx_config cfg;
	struct tls_ctx *tls_client[1];
	/* the stored message */
	int segfd;
	struct spool_key key;
	uint8_t enc[SPOOL_ENV_MAX];
	struct qmsg m;
	struct dticket tkt;
	/* the job */
	struct djob job;
	uint32_t rcpt[OT_RCPTS_MAX];
	uint8_t acc[OT_RCPTS_MAX];
	/* set before ot_message: every recipient's NOTIFY bits and ORCPT */
	uint8_t notify;
	const char *orcpt;
};

/* A client table on the fake net, a config (messages_per_connection
 * 100, command timeout 300 s), no message yet.  Calls log_setup too. */
struct ot *ot_new(void);
/* Every connection closed and reaped, the table freed; fails the test if
 * the client ever called net_send or net_read_file on a closed one. */
void ot_free(struct ot *o);

/* Store a message from `from` to the n recipients (a NULL-terminated
 * list), body being its stored bytes: DATA form (dot-stuffed, without the
 * final dot) when stuffed, else as BDAT received them.  The job is the
 * message's recipients for the hop mx.test.example[192.0.2.25]:25. */
void ot_message(struct ot *o, const char *from, const char *const *rcpts, const char *body,
		bool stuffed);
/* The same with a body of blen bytes (any octets) stored in chunks of at
 * most chunk bytes, each followed by another message's chunk. */
void ot_message_n(struct ot *o, const char *from, const char *const *rcpts, const char *body,
		  uint32_t blen, bool stuffed, uint32_t chunk);
/* The client's TLS context for route 0 (a real client context). */
void ot_tls(struct ot *o, enum config_route_tls policy);

/* oc_assign the job; the connection it opened (asserted). */
struct net_conn *ot_assign(struct ot *o);
/* Engine calls since the last ot_calls, one per line. */
const char *ot_calls(struct ot *o);
/* The connection's state (the client's own view). */
enum oc_state ot_state(struct ot *o, const struct net_conn *nc);

/* The send in flight is exactly want: it completes (on_sent). */
void ot_expect_send(struct net_conn *nc, const char *want);
/* No send in flight. */
void ot_expect_no_send(const struct net_conn *nc);
/* Connected, greeted (220) and EHLO answered with ehlo_reply (a whole
 * reply, e.g. "250-mx\r\n250 PIPELINING\r\n"); the EHLO send is checked and
 * completed.  The connection. */
struct net_conn *ot_ready(struct ot *o, const char *ehlo_reply);
/* A client table with the message BODY from FROM to rcpts stored. */
struct ot *ot_with(const char *const *rcpts);
/* The connection is being closed: it is reaped, the slot free. */
void ot_closed(struct ot *o, struct net_conn *nc);
/* After 354: the body (BODY_WIRE) goes, and the dot's reply is awaited. */
void ot_body_goes(struct ot *o, struct net_conn *nc);
/* The cases of outbound_client_body.c, outbound_client_conn.c and
 * outbound_client_defects.c; cmocka's result. */
int ot_body_tests(void);
int ot_conn_tests(void);
int ot_defect_tests(void);
/* The body's file reads served from the segment until the send of the
 * body's last piece is in flight; the bytes it and the sends before it
 * carried (NUL-terminated, static). */
const char *ot_body(struct net_conn *nc);

#endif
