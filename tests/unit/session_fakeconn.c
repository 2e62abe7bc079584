/* session_fakeconn — the conn_* functions of shard.h for one fake connection; see the header. */
#include "session_fakeconn.h"

#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config/config.h"

#define FC_SEGMENT_SIZE (1u << 20)

static struct fconn *fc_of(const struct conn *c)
{
	/* struct conn is the first member: the session only ever holds &fc->c. */
	return (struct fconn *)(void *)c;
}

struct fconn *fc_new(const char *json)
{
	struct fconn *fc = calloc(1, sizeof(*fc));
	char err[CONFIG_ERR_MAX] = "";
	char *text = strdup(json);
	struct sockaddr_in *sin = (struct sockaddr_in *)&fc->peer;

	assert_non_null(fc);
	assert_non_null(text);
	for (char *p = text; *p; p++)
		if (*p == '\'')
			*p = '"';
	fc->cfg = config_load_string(text, err, sizeof(err));
	if (!fc->cfg)
		fail_msg("config refused: %s\n  json: %s", err, text);
	free(text);
	spt_open(&fc->spt, FC_SEGMENT_SIZE, true);
	fc->txpool = smtp_tx_pool_new(1, fc->cfg->limits.recipients);
	fc->sessions = smtp_sessions_new(1);
	assert_non_null(fc->txpool);
	assert_non_null(fc->sessions);
	fc->c.s = smtp_session_at(fc->sessions, 0);
	fc->env.cfg = fc->cfg;
	for (uint32_t i = 0; i < fc->cfg->listener_count; i++)
		fc->env.listeners[i] = &fc->cfg->listeners[i];
	fc->env.spool = fc->spt.sp;
	fc->env.txpool = fc->txpool;
	fc->env.now_ms = &fc->now_ms;
	fc->env.stopping = &fc->stopping;
	fc->now_ms = 1000000;
	/* A documentation address (RFC 5737): no relay network holds it
	 * unless the test's config says so. */
	sin->sin_family = AF_INET;
	sin->sin_port = htons(40000);
	assert_int_equal(inet_pton(AF_INET, "192.0.2.7", &sin->sin_addr), 1);
	snprintf(fc->peer_ip, sizeof(fc->peer_ip), "192.0.2.7");
	return fc;
}

void fc_greet(struct fconn *fc)
{
	smtp_session_init(&fc->c, &fc->env);
	smtp_session_greet(&fc->c);
}

void fc_free(struct fconn *fc)
{
	/* As the shard reaps a slot: only once no spool work of it is left. */
	spt_settle(&fc->spt);
	assert_false(smtp_session_busy(&fc->c));
	smtp_session_release(&fc->c);
	spt_settle(&fc->spt);
	spt_close(&fc->spt);
	smtp_tx_pool_free(fc->txpool);
	smtp_sessions_free(fc->sessions);
	config_free(fc->cfg);
	free(fc);
}

size_t fc_feed_n(struct fconn *fc, const char *p, size_t n)
{
	char *at = fc->input + fc->input_len;

	/* Copied where it stays until fc_free: the session may hand it to the
	 * spool by reference (SPOOL_NO_BUF: alive until on_durable). */
	assert_true(n <= FC_INPUT_MAX - fc->input_len);
	memcpy(at, p, n);
	fc->input_len += n;
	return smtp_session_feed(&fc->c, at, n, SPOOL_NO_BUF);
}

size_t fc_feed(struct fconn *fc, const char *text)
{
	return fc_feed_n(fc, text, strlen(text));
}

const char *fc_replies(struct fconn *fc)
{
	const char *r = fc->log + fc->log_seen;

	fc->log_seen = fc->log_len;
	fc->out_len = 0; /* sent */
	return r;
}

uint32_t fc_spool_turn(struct fconn *fc)
{
	uint32_t before = fc->spt.ndurable;

	spool_flush(fc->spt.sp);
	spt_drain(&fc->spt);
	/* One connection: every on_progress is this session's (the shard finds
	 * the owner by slot; there is one slot here). */
	while (fc->progress_seen < fc->spt.nprogress) {
		fc->progress_seen++;
		smtp_session_spool_progress(&fc->c);
	}
	fc->durable_first = before;
	return fc->spt.ndurable - before;
}

uint32_t fc_durable_first(const struct fconn *fc)
{
	return fc->durable_first;
}

/* ---- what the session may know of its connection -------------------------------- */

bool conn_active(const struct conn *c)
{
	(void)c;
	return true; /* the shard keeps a closing connection active until its output is out */
}

bool conn_takes_input(const struct conn *c)
{
	return !fc_of(c)->close_wanted && !fc_of(c)->tls_switch;
}

bool conn_tls_on(const struct conn *c)
{
	return fc_of(c)->tls == CONN_TLS_ON;
}

bool conn_tls_begun(const struct conn *c)
{
	return fc_of(c)->tls != CONN_TLS_OFF;
}

const char *conn_peer_ip(const struct conn *c)
{
	return fc_of(c)->peer_ip;
}

const struct sockaddr_storage *conn_peer(const struct conn *c)
{
	return &fc_of(c)->peer;
}

uint8_t conn_listener(const struct conn *c)
{
	return fc_of(c)->listener;
}

void conn_owner(const struct conn *c, uint32_t *slot, uint16_t *gen)
{
	(void)c;
	*slot = 0;
	*gen = 1;
}

/* ---- connection I/O, for the session ---------------------------------------------- */

void conn_reply(struct conn *c, const char *line)
{
	struct fconn *fc = fc_of(c);
	size_t n = strlen(line);

	/* The shard asserts the same: the session checks for room first. */
	assert_true(n + 2 <= conn_out_free(c));
	assert_true(n + 3 <= FC_LOG_MAX - fc->log_len);
	memcpy(fc->log + fc->log_len, line, n);
	memcpy(fc->log + fc->log_len + n, "\r\n", 3);
	fc->log_len += n + 2;
	fc->out_len += (uint32_t)n + 2;
}

void conn_replyf(struct conn *c, const char *fmt, ...)
{
	char line[SMTP_REPLY_MAX];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	assert_true(n >= 0 && n < (int)sizeof(line));
	conn_reply(c, line);
}

size_t conn_out_free(const struct conn *c)
{
	return CONN_OUT_MAX - fc_of(c)->out_len;
}

void conn_close(struct conn *c)
{
	fc_of(c)->close_wanted = true;
	fc_of(c)->closes++;
}

void conn_resume(struct conn *c)
{
	fc_of(c)->resumes++;
}

void conn_flush(struct conn *c)
{
	fc_of(c)->flushes++;
}

uint64_t conn_helper_cookie(const struct conn *c)
{
	(void)c;
	return (uint64_t)1 << 32; /* slot 0, generation 1 */
}

void conn_helper_sent(struct conn *c)
{
	fc_of(c)->helper_sent++;
}

void conn_timer(struct conn *c, uint32_t ms)
{
	fc_of(c)->timers++;
	fc_of(c)->timer_ms = ms;
}

void conn_starttls(struct conn *c)
{
	fc_of(c)->tls_switch = true;
}

const char *conn_tls_version(const struct conn *c)
{
	return fc_of(c)->tls == CONN_TLS_ON ? "TLSv1.3" : NULL;
}

const char *conn_tls_cipher(const struct conn *c)
{
	return fc_of(c)->tls == CONN_TLS_ON ? "TLS_AES_128_GCM_SHA256" : NULL;
}
