/*
 * session_fakeconn — one connection for the SMTP session (smtp/session.c)
 * without the shard: every conn_* function the session calls, a config from
 * the real loader, and a real spool on a real io_uring (spool_testlib.h).
 *
 * What the session says is appended to a transcript, in order; the test
 * takes what is new with fc_replies(), which also plays the send (the output
 * buffer is empty again).  Closing, resuming, STARTTLS, timers and helper
 * requests are counted, so a test can assert the session asked for them.
 *
 * The test plays the shard's loop: fc_feed() hands client bytes to
 * smtp_session_feed() (kept alive until fc_free, so the spool may take them
 * by reference as SPOOL_NO_BUF); fc_spool_turn() ends a loop turn, drives
 * the spool's completions and hands on_progress to the session, but leaves
 * on_durable to the test, which calls smtp_session_durable() itself.
 */
#ifndef RMX_TESTS_SESSION_FAKECONN_H
#define RMX_TESTS_SESSION_FAKECONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp/conn.h"
#include "smtp/session.h"
#include "spool_testlib.h"

#define FC_LOG_MAX   65536 /* transcript bytes, whole session */
#define FC_INPUT_MAX 65536 /* client bytes fed, whole session */

struct fconn {
	struct conn c; /* first: the session's handle is &fc->c */
	struct smtp_session *sessions;
	struct smtp_env env;
	struct rmx_config *cfg;
	struct smtp_tx_pool *txpool;
	struct spt spt;
	uint64_t now_ms;
	bool stopping;
	/* what the session said */
	char log[FC_LOG_MAX];
	size_t log_len, log_seen;
	uint32_t out_len; /* bytes "buffered", not yet taken by fc_replies */
	/* what the test sets */
	enum conn_tls tls;
	uint8_t listener;
	char peer_ip[CONN_PEER_MAX];
	struct sockaddr_storage peer;
	/* what the session asked for */
	bool close_wanted, tls_switch;
	uint32_t closes, resumes, flushes, timers, helper_sent;
	uint32_t timer_ms; /* the last conn_timer */
	/* fed bytes, alive until fc_free */
	char input[FC_INPUT_MAX];
	size_t input_len;
	uint32_t durable_first; /* the first of the last turn's */
	uint32_t progress_seen; /* on_progress entries already handed over */
};

/* A connection from 192.0.2.7 on listener 0 of the config in json (single
 * quotes allowed, as config_testlib), with a spool under /tmp.  Not greeted:
 * the test may still set fc->tls, fc->listener, fc->env fields or the
 * loaded config's listener modes before fc_greet(). */
struct fconn *fc_new(const char *json);
/* smtp_session_init and smtp_session_greet, as the shard does after accept. */
void fc_greet(struct fconn *fc);
/* Release the session, settle and remove the spool, free everything. */
void fc_free(struct fconn *fc);

/* Feed text (a C string) in one buffer; returns what the session consumed. */
size_t fc_feed(struct fconn *fc, const char *text);
size_t fc_feed_n(struct fconn *fc, const char *p, size_t n);
/* Replies written since the last call, CRLF-separated, NUL-terminated. */
const char *fc_replies(struct fconn *fc);

/* One loop turn of the spool: flush, drain every completion, hand each
 * on_progress to the session.  Returns the number of new on_durable calls
 * (their results in fc->spt.durable_res, from index fc_durable_first()). */
uint32_t fc_spool_turn(struct fconn *fc);
/* Index into fc->spt's on_durable log of the first entry the last
 * fc_spool_turn reported. */
uint32_t fc_durable_first(const struct fconn *fc);

#endif
