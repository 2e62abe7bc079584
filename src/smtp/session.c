/*
 * smtp/session — the SMTP server state machine.  See session.h.
 *
 * Input arrives through smtp_session_feed() in the buffers it was received
 * in.  Command lines are parsed in place (copied into s->line only when a
 * line straddles two buffers); DATA/BDAT bytes go to the spool from the same
 * buffers.  Consuming less than offered pauses the connection until the
 * thing waited for (output space, a spool write slot, the commit) arrives.
 */
#include "smtp/session.h"
#include "auth/sasl.h"
#include "auth/throttle.h"
#include "auth/users.h"
#include "hpool/hpool.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "filters/flt.h"
#include "log/log.h"
#include "shard.h"

struct smtp_session {
	enum smtp_state state;
	enum smtp_wait wait;
	bool esmtp;
	bool sink; /* rest of the current DATA/BDAT is discarded (bad tx) */
	struct smtp_line_state ls;
	uint32_t line_have;
	char line[SMTP_LINE_SCAN_MAX];
	char helo[SMTP_HELO_MAX];
	uint32_t errors;
	uint32_t commands;
	uint32_t transactions;
	struct smtp_tx *tx;
	struct smtp_data_state ds;
	uint64_t bdat_left; /* bytes of the current BDAT chunk still to come */
	uint64_t bdat_size; /* size of the current chunk */
	bool bdat_last;
	bool bdat_used;		 /* this transaction used BDAT (DATA is then 503) */
	const char *bdat_reply;	 /* deferred error for a bad BDAT chunk */
	uint8_t bdat_prev_state; /* where a refused chunk returns to */
	/* The decision point (filters/flt.h). */
	struct flt_verdict verdict;
	const char *cur_line; /* the command being executed, while it runs */
	uint32_t cur_len;
	uint32_t pending_len; /* SMTP_WAIT_FILTER: the command kept in line[] */
	enum flt_stage pending_stage;
	/* AUTH (RFC 4954). */
	bool authed;
	bool in_auth;		 /* the next line is a SASL response */
	bool auth_blocked;	 /* after the delayed 535: 421 and close */
	struct sasl_state *sasl; /* during an exchange only */
	char auth_user[SMTP_AUTH_USER_MAX + 1];
	const struct smtp_env *env;
};

struct smtp_session *smtp_sessions_new(uint32_t count)
{
	return calloc(count ? count : 1, sizeof(struct smtp_session));
}

void smtp_sessions_free(struct smtp_session *v)
{
	free(v);
}

struct smtp_session *smtp_session_at(struct smtp_session *v, uint32_t i)
{
	return &v[i];
}

#define SMTP_TX_ARENA	  65536 /* addresses and parameters of one transaction */
#define SMTP_RECEIVED_MAX 1024

struct smtp_tx {
	struct spool_msg msg;
	struct smtp_tx *next_free;
	char qid[SPOOL_QID_LEN + 1];
	bool begun;	   /* spool_msg_begin done */
	bool data_decided; /* the data stage's decision is in */
	bool smtputf8;
	bool received_8bit; /* our Received: field is not ASCII (an AUTH name, a "for" address) */
	uint8_t body_type;
	uint8_t ret;
	uint64_t size_declared;
	uint64_t size; /* at commit: spool_env_size(), the size logged */
	struct spool_str mail_from, envid, auth;
	uint32_t rcpt_count;
	uint32_t env_size;	/* running estimate of the encoded envelope */
	const char *fail_reply; /* refuse at end of data with this */
	char fail_buf[SMTP_REPLY_MAX];
	uint32_t arena_len;
	char arena[SMTP_TX_ARENA];
	uint8_t enc[SPOOL_ENV_MAX];
	char received[SMTP_RECEIVED_MAX];
	struct spool_rcpt rcpts[]; /* rcpt_max */
};

struct smtp_tx_pool {
	struct smtp_tx *free;
	uint32_t rcpt_max;
	uint32_t count;
	size_t stride; /* bytes per transaction, page-aligned */
	void *base;    /* count * stride, one mapping */
};

/* One transaction per connection slot, so parking connections after MAIL
 * can never starve other clients of transactions below the connection
 * limit.  One mapping with MAP_NORESERVE: only the pages of transactions in
 * use are ever backed, and a large pool is not refused by overcommit. */
struct smtp_tx_pool *smtp_tx_pool_new(uint32_t count, uint32_t rcpt_max)
{
	struct smtp_tx_pool *p = calloc(1, sizeof(*p));
	size_t page = (size_t)sysconf(_SC_PAGESIZE);

	if (!p)
		return NULL;
	p->rcpt_max = rcpt_max;
	p->stride = (sizeof(struct smtp_tx) + rcpt_max * sizeof(struct spool_rcpt) + page - 1) &
		    ~(page - 1);
	p->base = mmap(NULL, p->stride * count, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p->base == MAP_FAILED) {
		free(p);
		return NULL;
	}
	p->count = count;
	for (uint32_t i = count; i-- > 0;) {
		struct smtp_tx *tx = (struct smtp_tx *)((char *)p->base + p->stride * i);

		tx->next_free = p->free;
		p->free = tx;
	}
	return p;
}

void smtp_tx_pool_free(struct smtp_tx_pool *p)
{
	if (!p)
		return;
	munmap(p->base, p->stride * p->count);
	free(p);
}

/* ---- small helpers ---------------------------------------------------------- */

static const char *const state_names[] = {"new",  "greeted", "ready",  "mail", "rcpt",
					  "data", "bdat",    "commit", "quit"};

/* The one place a state changes: legal transitions only. */
static void smtp_enter_state(struct conn *c, enum smtp_state next)
{
	static const uint16_t legal[] = {
	    [SMTP_S_NEW] = 1u << SMTP_S_GREETED | 1u << SMTP_S_QUIT,
	    [SMTP_S_GREETED] =
		1u << SMTP_S_READY | 1u << SMTP_S_BDAT | 1u << SMTP_S_QUIT | 1u << SMTP_S_GREETED,
	    [SMTP_S_READY] = 1u << SMTP_S_READY | 1u << SMTP_S_MAIL | 1u << SMTP_S_BDAT |
			     1u << SMTP_S_QUIT | 1u << SMTP_S_GREETED, /* STARTTLS */
	    [SMTP_S_MAIL] = 1u << SMTP_S_READY | 1u << SMTP_S_RCPT | 1u << SMTP_S_BDAT |
			    1u << SMTP_S_QUIT | 1u << SMTP_S_MAIL,
	    [SMTP_S_RCPT] = 1u << SMTP_S_READY | 1u << SMTP_S_RCPT | 1u << SMTP_S_DATA |
			    1u << SMTP_S_BDAT | 1u << SMTP_S_QUIT,
	    [SMTP_S_DATA] = 1u << SMTP_S_COMMIT | 1u << SMTP_S_QUIT,
	    [SMTP_S_BDAT] = 1u << SMTP_S_RCPT | 1u << SMTP_S_MAIL | 1u << SMTP_S_READY |
			    1u << SMTP_S_COMMIT | 1u << SMTP_S_QUIT | 1u << SMTP_S_GREETED,
	    [SMTP_S_COMMIT] = 1u << SMTP_S_READY | 1u << SMTP_S_QUIT,
	    [SMTP_S_QUIT] = 1u << SMTP_S_QUIT,
	};

	assert(legal[c->s->state] & (1u << next));
	if (log_enabled(LOG_DEBUG))
		log_msg(LOG_DEBUG, "event=state client=%s from=%s to=%s", conn_peer_ip(c),
			state_names[c->s->state], state_names[next]);
	c->s->state = next;
}

static const struct rmx_config *cfg_of(const struct conn *c)
{
	return c->s->env->cfg;
}

/* Resume input unless we are inside the feed loop (which goes on by itself). */
static void session_unpause(struct conn *c)
{
	c->s->wait = SMTP_WAIT_NONE;
	conn_resume(c);
}

static void session_close(struct conn *c)
{
	if (c->s->state != SMTP_S_QUIT)
		smtp_enter_state(c, SMTP_S_QUIT);
	conn_close(c);
}

/* A 4xx/5xx answer to a command: counts toward limits.errors. */
static void session_error(struct conn *c, const char *reply)
{
	conn_reply(c, reply);
	if (++c->s->errors >= cfg_of(c)->limits.errors) {
		conn_replyf(c, "421 4.7.0 %s Error: too many errors", cfg_of(c)->hostname);
		log_msg(LOG_INFO, "event=too_many_errors client=%s errors=%u", conn_peer_ip(c),
			c->s->errors);
		session_close(c);
	}
}

static bool arena_copy(struct smtp_tx *tx, const char *p, size_t n, struct spool_str *out)
{
	if (n > SMTP_TX_ARENA - tx->arena_len)
		return false;
	if (n)
		memcpy(tx->arena + tx->arena_len, p, n); /* p may be NULL when n is 0 */
	out->ptr = tx->arena + tx->arena_len;
	out->len = (uint32_t)n;
	tx->arena_len += (uint32_t)n;
	return true;
}

/* "local@domain" as written (source route already dropped by the parser). */
static bool arena_path(struct smtp_tx *tx, const struct smtp_path *path, struct spool_str *out)
{
	uint32_t start = tx->arena_len;

	if (path->null || (!path->local.len && !path->domain.len)) {
		out->ptr = tx->arena + start;
		out->len = 0;
		return true;
	}
	if (!arena_copy(tx, path->local.ptr, path->local.len, out))
		return false;
	if (path->domain.len) {
		struct spool_str at, dom;

		if (!arena_copy(tx, "@", 1, &at) ||
		    !arena_copy(tx, path->domain.ptr, path->domain.len, &dom))
			return false;
	}
	out->ptr = tx->arena + start;
	out->len = tx->arena_len - start;
	return true;
}

static struct smtp_tx *tx_take(struct conn *c)
{
	struct smtp_tx_pool *p = c->s->env->txpool;
	struct smtp_tx *tx = p->free;

	if (!tx)
		return NULL;
	p->free = tx->next_free;
	memset(tx, 0, offsetof(struct smtp_tx, arena));
	return tx;
}

/* Give the transaction back.  A begun message with no commit is dropped
 * (its chunks become garbage the recovery scan ignores). */
static void tx_release(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;
	struct smtp_tx_pool *p = c->s->env->txpool;

	if (!tx)
		return;
	assert(tx->msg.writes_inflight == 0);
	if (tx->begun && tx->msg.active && !tx->msg.committing)
		spool_msg_abort(c->s->env->spool, &tx->msg);
	tx->next_free = p->free;
	p->free = tx;
	c->s->tx = NULL;
	c->s->bdat_used = false;
	c->s->sink = false;
}

/* RSET, EHLO, HELO: forget the transaction (RFC 5321 4.1.1.5). */
static void session_reset_tx(struct conn *c)
{
	tx_release(c);
	if (c->s->state == SMTP_S_MAIL || c->s->state == SMTP_S_RCPT)
		smtp_enter_state(c, SMTP_S_READY);
}

/* "local@domain" as it lies in the command line (the parser's slices are
 * contiguous there), or "Postmaster". */
static size_t path_len(const struct smtp_path *p)
{
	if (!p->domain.len)
		return p->local.len;
	return (size_t)(p->domain.ptr + p->domain.len - p->local.ptr);
}

/* What one recipient adds to the encoded envelope, at most. */
static uint32_t rcpt_env_size(const struct smtp_cmd *cmd)
{
	return 16 + cmd->path.local.len + cmd->path.domain.len + cmd->rcpt.orcpt.len;
}

/* ---- the decision point ---------------------------------------------------------- */

static const char *const stage_names[] = {"connect", "helo", "mail", "rcpt", "data"};

/* Ask the decision point about a stage.  true: s->verdict is final, go on
 * now.  false: the answer comes later (s->wait is FILTER, input paused);
 * the command line is kept in s->line, because the receive buffer it lies
 * in goes back to the kernel, and smtp_session_decided() finishes it. */
static bool session_decide(struct conn *c, enum flt_stage stage, struct flt_input *in)
{
	struct smtp_session *s = c->s;

	in->cfg = cfg_of(c);
	in->client = (struct sockaddr *)conn_peer(c);
	in->helo = s->helo;
	in->errors = s->errors;
	in->authenticated = s->authed;
	if (flt_decide(stage, in, &s->verdict) == FLT_DONE)
		return true;
	if (s->cur_line && s->cur_line != s->line)
		memmove(s->line, s->cur_line, s->cur_len);
	s->pending_len = s->cur_line ? s->cur_len : 0;
	s->pending_stage = stage;
	s->wait = SMTP_WAIT_FILTER;
	log_msg(LOG_INFO, "event=decision_pending client=%s stage=%s wait_ms=%u errors=%u",
		conn_peer_ip(c), stage_names[stage], s->verdict.delay_ms, s->errors);
	conn_timer(c, s->verdict.delay_ms);
	return false;
}

static bool verdict_refused(struct conn *c)
{
	if (c->s->verdict.action == FLT_ACCEPT)
		return false;
	session_error(c, c->s->verdict.reply);
	return true;
}

/* ---- greeting ------------------------------------------------------------------ */

void smtp_session_init(struct conn *c, const struct smtp_env *env)
{
	assert(env != NULL && env->cfg != NULL && env->spool != NULL && env->txpool != NULL);
	memset(c->s, 0, sizeof(*c->s));
	c->s->env = env;
	c->s->state = SMTP_S_NEW;
	smtp_line_reset(&c->s->ls);
}

static void greet_finish(struct conn *c)
{
	const struct config_listener *l = c->s->env->listeners[conn_listener(c)];

	smtp_enter_state(c, SMTP_S_GREETED);
	if (c->s->verdict.action != FLT_ACCEPT) {
		conn_reply(c, c->s->verdict.reply);
		session_close(c);
		return;
	}
	conn_replyf(c, "220 %s ESMTP %s", cfg_of(c)->hostname, l->banner[0] ? l->banner : "ringmx");
}

void smtp_session_greet(struct conn *c)
{
	struct flt_input in = {0};

	if (session_decide(c, FLT_STAGE_CONNECT, &in))
		greet_finish(c);
}

void smtp_session_early(struct conn *c)
{
	log_msg(LOG_INFO, "event=refused client=%s reason=early_talker", conn_peer_ip(c));
	conn_replyf(c, "554 5.5.0 %s Protocol error: talked before the greeting",
		    cfg_of(c)->hostname);
	session_close(c);
}

void smtp_session_timeout(struct conn *c, const char *reply)
{
	log_msg(LOG_INFO, "event=timeout client=%s state=%s reply=\"%.40s\"", conn_peer_ip(c),
		state_names[c->s->state], reply);
	/* Replies already due go out first, the 421 after them when it fits.
	 * One of them may be the 250 of a message queued in the same
	 * pipelined group: a client that never sees it (a stash overrun, a
	 * shutdown) sends the message again. */
	if (conn_out_free(c) >= strlen(reply) + 2)
		conn_reply(c, reply);
	session_close(c);
}

/* ---- commands ------------------------------------------------------------------- */

static const struct config_listener *listener_of(const struct conn *c)
{
	return c->s->env->listeners[conn_listener(c)];
}

/* RFC 4954 4: AUTH only inside TLS, unless the listener
 * allows it in plaintext (loopback only, for tests). */
static bool auth_offered(const struct conn *c)
{
	const struct config_listener *l = c->s->env->listeners[conn_listener(c)];

	return l->auth != CONFIG_AUTH_NONE && c->s->env->users && !c->s->authed &&
	       (conn_tls_on(c) || l->auth_plaintext);
}

static bool starttls_offered(const struct conn *c)
{
	return listener_of(c)->tls == CONFIG_TLS_STARTTLS && c->s->env->tls_ctx &&
	       !conn_tls_begun(c);
}

/* RFC 3207 4: STARTTLS takes no argument, not inside a transaction, once.
 * After the 220, everything learnt from the client is forgotten: EHLO
 * again, no transaction survives. */
static void cmd_starttls(struct conn *c, const struct smtp_cmd *cmd)
{
	if (listener_of(c)->tls != CONFIG_TLS_STARTTLS || !c->s->env->tls_ctx)
		return session_error(c, "502 5.5.1 Error: command not implemented");
	if (conn_tls_begun(c))
		return session_error(c, "503 5.5.1 Error: TLS already active");
	if (cmd->arg.len)
		return session_error(c, "501 5.5.4 Syntax: STARTTLS");
	if (c->s->state != SMTP_S_GREETED && c->s->state != SMTP_S_READY)
		return session_error(c, "503 5.5.1 Error: STARTTLS inside a transaction");
	conn_reply(c, "220 2.0.0 Ready to start TLS");
	session_reset_tx(c);
	c->s->esmtp = false;
	c->s->authed = false;
	c->s->auth_user[0] = '\0';
	c->s->helo[0] = '\0';
	smtp_enter_state(c, SMTP_S_GREETED);
	conn_starttls(c);
}

static void auth_failed_reply(struct conn *c)
{
	conn_reply(c, "535 5.7.8 Authentication credentials invalid");
	if (c->s->auth_blocked) {
		conn_replyf(c, "421 4.7.0 %s Too many authentication failures",
			    cfg_of(c)->hostname);
		session_close(c);
		return;
	}
	session_unpause(c);
}

static void auth_end(struct conn *c)
{
	if (c->s->sasl) {
		sasl_clear(c->s->sasl);
		free(c->s->sasl);
		c->s->sasl = NULL;
	}
	c->s->in_auth = false;
}

/* Credentials are complete: the check runs on a helper thread (hashing is
 * slow on purpose); input waits for its answer. */
static void auth_verify(struct conn *c)
{
	struct sasl_creds cr;
	uint64_t cookie = conn_helper_cookie(c);
	int rc;

	sasl_creds(c->s->sasl, &cr);
	snprintf(c->s->auth_user, sizeof(c->s->auth_user), "%.*s", (int)cr.authcid_len, cr.authcid);
	rc = auth_users_submit_verify(c->s->env->pool, c->s->env->pool_shard, cookie,
				      c->s->env->users, cr.authcid, cr.authcid_len, cr.passwd,
				      cr.passwd_len);
	auth_end(c);
	if (rc < 0) {
		c->s->auth_user[0] = '\0';
		conn_reply(c, "454 4.7.0 Temporary authentication failure");
		return;
	}
	conn_helper_sent(c); /* the slot stays until the answer came */
	c->s->wait = SMTP_WAIT_AUTH;
}

/* One step of the exchange: a challenge, the check, or the end. */
static void auth_step_result(struct conn *c, int rc)
{
	if (rc == SASL_AGAIN) {
		c->s->in_auth = true;
		conn_reply(c, c->s->sasl->reply);
		return;
	}
	if (rc == SASL_OK) {
		c->s->in_auth = false;
		auth_verify(c);
		return;
	}
	/* INVALID: the state is cleared; a 535 among these counts as a failure. */
	const char *reply = c->s->sasl->reply;

	auth_end(c);
	if (strncmp(reply, "535", 3) == 0) {
		smtp_session_auth_done(c, AUTH_VERIFY_BAD_PASSWORD);
		return;
	}
	session_error(c, reply);
}

static void cmd_auth(struct conn *c, const struct smtp_cmd *cmd)
{
	const struct config_listener *l = listener_of(c);
	struct auth_throttle_verdict v;

	if (l->auth == CONFIG_AUTH_NONE || !c->s->env->users)
		return session_error(c, "502 5.5.1 Error: command not implemented");
	if (!conn_tls_on(c) && !l->auth_plaintext)
		return session_error(c, "538 5.7.11 Encryption required for requested "
					"authentication mechanism");
	if (c->s->state == SMTP_S_GREETED)
		return session_error(c, "503 5.5.1 Error: send EHLO first");
	if (c->s->authed)
		return session_error(c, "503 5.5.1 Error: already authenticated");
	if (c->s->state != SMTP_S_READY)
		return session_error(c, "503 5.5.1 Error: AUTH not allowed during a transaction");
	if (auth_throttle_check(c->s->env->throttle, (struct sockaddr *)conn_peer(c),
				*c->s->env->now_ms, &v) == 0 &&
	    v.blocked) {
		log_msg(LOG_INFO, "event=auth_blocked client=%s failures=%u", conn_peer_ip(c),
			v.failures);
		conn_replyf(c, "421 4.7.0 %s Too many authentication failures",
			    cfg_of(c)->hostname);
		return session_close(c);
	}
	c->s->sasl = calloc(1, sizeof(*c->s->sasl));
	if (!c->s->sasl)
		return conn_reply(c, "454 4.7.0 Temporary authentication failure");
	auth_step_result(c, sasl_start(c->s->sasl, cmd->arg.ptr, cmd->arg.len));
}

/* A response line of the exchange (never logged: it is the password). */
static void session_auth_line(struct conn *c, const char *line, size_t len, bool too_long)
{
	if (too_long) {
		auth_end(c);
		return session_error(c, SASL_REPLY_TOO_LONG);
	}
	auth_step_result(c, sasl_step(c->s->sasl, line, len));
}

void smtp_session_auth_done(struct conn *c, int rc)
{
	struct smtp_session *s = c->s;
	struct auth_throttle_verdict v = {0};

	if (s->wait == SMTP_WAIT_AUTH)
		s->wait = SMTP_WAIT_NONE;
	if (rc == AUTH_VERIFY_OK) {
		s->authed = true;
		log_msg(LOG_INFO, "event=auth client=%s user=\"%s\" result=ok", conn_peer_ip(c),
			s->auth_user);
		conn_reply(c, "235 2.7.0 Authentication successful");
		session_unpause(c);
		return;
	}
	if (rc < 0) {
		log_msg(LOG_WARN, "event=auth client=%s user=\"%s\" result=error error=\"%s\"",
			conn_peer_ip(c), s->auth_user, strerror(-rc));
		s->auth_user[0] = '\0';
		conn_reply(c, "454 4.7.0 Temporary authentication failure");
		session_unpause(c);
		return;
	}
	log_msg(LOG_INFO, "event=auth client=%s user=\"%s\" result=failed", conn_peer_ip(c),
		s->auth_user);
	s->auth_user[0] = '\0';
	s->errors++;
	auth_throttle_fail(c->s->env->throttle, (struct sockaddr *)conn_peer(c), *c->s->env->now_ms,
			   &v);
	s->auth_blocked = v.blocked;
	if (v.delay_ms) {
		/* The 535 waits: guessing gets slower with every failure. */
		s->wait = SMTP_WAIT_AUTH_DELAY;
		conn_timer(c, v.delay_ms);
		return;
	}
	auth_failed_reply(c);
}

static void ehlo_finish(struct conn *c, bool esmtp)
{
	const struct rmx_config *cfg = cfg_of(c);

	if (verdict_refused(c))
		return;
	c->s->esmtp = esmtp;
	if (c->s->state == SMTP_S_GREETED)
		smtp_enter_state(c, SMTP_S_READY);
	if (!esmtp) {
		conn_replyf(c, "250 %s", cfg->hostname);
		return;
	}
	conn_replyf(c, "250-%s", cfg->hostname);
	conn_reply(c, "250-PIPELINING");
	conn_replyf(c, "250-SIZE %llu", (unsigned long long)cfg->limits.message_size);
	conn_reply(c, "250-8BITMIME");
	conn_reply(c, "250-ENHANCEDSTATUSCODES");
	conn_reply(c, "250-CHUNKING");
	conn_reply(c, "250-DSN");
	if (starttls_offered(c))
		conn_reply(c, "250-STARTTLS");
	if (auth_offered(c))
		conn_reply(c, "250-AUTH PLAIN LOGIN");
	conn_reply(c, "250 SMTPUTF8");
}

static void cmd_ehlo(struct conn *c, const struct smtp_cmd *cmd, bool esmtp)
{
	struct flt_input in = {0};
	size_t n = cmd->arg.len < SMTP_HELO_MAX - 1 ? cmd->arg.len : SMTP_HELO_MAX - 1;

	session_reset_tx(c);
	memcpy(c->s->helo, cmd->arg.ptr, n);
	c->s->helo[n] = '\0';
	if (session_decide(c, FLT_STAGE_HELO, &in))
		ehlo_finish(c, esmtp);
}

static void mail_finish(struct conn *c, const struct smtp_cmd *cmd)
{
	struct smtp_tx *tx;

	if (verdict_refused(c))
		return;
	tx = tx_take(c);
	if (!tx)
		return session_error(c, "452 4.3.1 Insufficient system resources, try again");
	c->s->tx = tx;
	if (!arena_path(tx, &cmd->path, &tx->mail_from) ||
	    !arena_copy(tx, cmd->mail.envid.ptr, cmd->mail.envid.len, &tx->envid) ||
	    !arena_copy(tx, cmd->mail.auth.ptr, cmd->mail.auth.len, &tx->auth)) {
		tx_release(c);
		return session_error(c, "452 4.3.1 Insufficient system resources");
	}
	tx->smtputf8 = cmd->mail.smtputf8;
	tx->body_type = (uint8_t)cmd->mail.body;
	tx->ret = (uint8_t)cmd->mail.ret;
	tx->size_declared = cmd->mail.has_size ? cmd->mail.size : 0;
	tx->env_size = 1024 + tx->mail_from.len + tx->envid.len + tx->auth.len;
	smtp_enter_state(c, SMTP_S_MAIL);
	conn_reply(c, "250 2.1.0 Ok");
}

static void cmd_mail(struct conn *c, const struct smtp_cmd *cmd)
{
	const struct rmx_config *cfg = cfg_of(c);
	struct flt_input in = {0};

	if (c->s->state == SMTP_S_GREETED)
		return session_error(c, "503 5.5.1 Error: send HELO/EHLO first");
	if (c->s->state != SMTP_S_READY)
		return session_error(c, "503 5.5.1 Error: nested MAIL command");
	if (listener_of(c)->auth == CONFIG_AUTH_REQUIRED && !c->s->authed)
		return session_error(c, "530 5.7.0 Authentication required");
	if (cmd->path.utf8 && !cmd->mail.smtputf8)
		return session_error(c, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
	if (cmd->mail.has_size && cmd->mail.size > cfg->limits.message_size)
		return session_error(c, "552 5.3.4 Message size exceeds fixed limit");
	if (c->s->transactions >= cfg->limits.transactions) {
		conn_replyf(c, "421 4.7.0 %s Too many messages in one session", cfg->hostname);
		return session_close(c);
	}
	in.addr = cmd->path.local.ptr;
	in.addr_len = path_len(&cmd->path);
	in.domain = cmd->path.domain.ptr;
	in.domain_len = cmd->path.domain.len;
	if (session_decide(c, FLT_STAGE_MAIL, &in))
		mail_finish(c, cmd);
}

static void rcpt_finish(struct conn *c, const struct smtp_cmd *cmd)
{
	struct smtp_tx *tx = c->s->tx;
	struct spool_rcpt *r;

	if (c->s->verdict.action != FLT_ACCEPT) {
		log_msg(LOG_INFO, "event=rcpt_rejected client=%s rcpt=<%.*s> reply=\"%.3s\"",
			conn_peer_ip(c), (int)path_len(&cmd->path), cmd->path.local.ptr,
			c->s->verdict.reply);
		return session_error(c, c->s->verdict.reply);
	}
	r = &tx->rcpts[tx->rcpt_count];
	memset(r, 0, sizeof(*r));
	if (!arena_path(tx, &cmd->path, &r->addr) ||
	    !arena_copy(tx, cmd->rcpt.orcpt.ptr, cmd->rcpt.orcpt.len, &r->orcpt))
		return conn_reply(c, "452 4.5.3 Error: too many recipients");
	r->notify = cmd->rcpt.notify;
	tx->rcpt_count++;
	tx->env_size += rcpt_env_size(cmd);
	if (c->s->state == SMTP_S_MAIL)
		smtp_enter_state(c, SMTP_S_RCPT);
	conn_reply(c, "250 2.1.5 Ok");
}

static void cmd_rcpt(struct conn *c, const struct smtp_cmd *cmd)
{
	const struct rmx_config *cfg = cfg_of(c);
	struct flt_input in = {0};
	struct smtp_tx *tx = c->s->tx;

	if (c->s->state != SMTP_S_MAIL && c->s->state != SMTP_S_RCPT)
		return session_error(c, "503 5.5.1 Error: need MAIL command");
	if (c->s->bdat_used)
		return session_error(c, "503 5.5.1 Error: RCPT after BDAT");
	if (cmd->path.utf8 && !tx->smtputf8)
		return session_error(c, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
	if (tx->rcpt_count >= cfg->limits.recipients ||
	    tx->env_size + rcpt_env_size(cmd) > SPOOL_ENV_MAX)
		return conn_reply(c, "452 4.5.3 Error: too many recipients");
	in.domain = cmd->path.domain.ptr;
	in.domain_len = cmd->path.domain.len;
	in.addr = cmd->path.local.ptr; /* local@domain is contiguous in the line */
	in.addr_len = path_len(&cmd->path);
	if (session_decide(c, FLT_STAGE_RCPT, &in))
		rcpt_finish(c, cmd);
}

/* The authenticated user as our Received: field shows it, in out[cap]
 * (cap >= 2), at most cap - 1 octets.  A users_file name may hold any
 * octet but space and controls; only printable ASCII goes in, '(' ')' and
 * '\\' quoted (RFC 5322 3.2.2: they would end or escape the comment), each
 * other character (UTF-8) as one '?': our own trace field must not be what
 * makes a message need SMTPUTF8 (RFC 6531 3.4) or carry 8-bit header
 * octets to a hop that did not ask for them.  The log has the name. */
static void received_user(char *out, size_t cap, const char *user)
{
	size_t n = strlen(user), k = 0;

	assert(cap >= 2);
	for (size_t i = 0; i < n;) {
		unsigned char ch = (unsigned char)user[i];
		bool quote = ch == '(' || ch == ')' || ch == '\\';
		size_t len = ch < 0x80 ? 1 : smtp_utf8_len(user + i, n - i);

		if (k + 1 + quote >= cap)
			break;
		if (quote)
			out[k++] = '\\';
		out[k++] = ch > ' ' && ch < 0x7f ? (char)ch : '?';
		i += len ? len : 1;
	}
	out[k] = '\0';
	assert(k < cap);
}

/* RFC 5321 4.4 trace header.  The "with" value follows RFC 3848 and RFC
 * 6531 4.3; "for" names the recipient only when there is exactly one, so a
 * copy never discloses the others.  Returns its length. */
static size_t tx_received_header(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;
	const char *tlsv = conn_tls_version(c);
	/* RFC 3848 / RFC 6531 4.3: S for TLS, A for an authenticated client. */
	static const char *const withs[2][2][2] = {
	    {{"ESMTP", "ESMTPA"}, {"ESMTPS", "ESMTPSA"}},
	    {{"UTF8SMTP", "UTF8SMTPA"}, {"UTF8SMTPS", "UTF8SMTPSA"}}};
	const char *with = !c->s->esmtp ? "SMTP" : withs[tx->smtputf8][tlsv != NULL][c->s->authed];
	char date[64], rcpt[SMTP_PATH_MAX + 16] = "", tls[256] = "", lit[CONN_PEER_MAX + 8];
	time_t now = time(NULL);
	struct tm tm;
	int n;

	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	if (tx->rcpt_count == 1)
		snprintf(rcpt, sizeof(rcpt), "\r\n\tfor <%.*s>",
			 (int)(tx->rcpts[0].addr.len < SMTP_PATH_MAX ? tx->rcpts[0].addr.len
								     : SMTP_PATH_MAX),
			 tx->rcpts[0].addr.ptr);
	if (tlsv)
		snprintf(tls, sizeof(tls), "\r\n\t(using %s with cipher %.100s)", tlsv,
			 conn_tls_cipher(c));
	if (c->s->authed) { /* RFC 4954 does not require it; admins expect it */
		char user[61];

		received_user(user, sizeof(user), c->s->auth_user);
		snprintf(tls + strlen(tls), sizeof(tls) - strlen(tls),
			 "\r\n\t(authenticated as %s)", user);
	}
	/* RFC 5321 4.1.3: an IPv6 address literal is tagged "IPv6:". */
	snprintf(lit, sizeof(lit), "[%s%s]", conn_peer(c)->ss_family == AF_INET6 ? "IPv6:" : "",
		 conn_peer_ip(c));
	n = snprintf(tx->received, sizeof(tx->received),
		     "Received: from %s (%s)%s\r\n\tby %s (ringmx) with %s id %s%s;\r\n\t%s\r\n",
		     c->s->helo, lit, tls, cfg_of(c)->hostname, with, tx->qid, rcpt, date);
	assert(n > 0);
	return n < (int)sizeof(tx->received) ? (size_t)n : sizeof(tx->received) - 1;
}

/* The message begins: a queue ID, and the trace header as its first bytes. */
static void tx_begin_message(struct conn *c, bool dot)
{
	struct smtp_tx *tx = c->s->tx;
	struct spool *sp = c->s->env->spool;

	uint32_t slot;
	uint16_t gen;

	conn_owner(c, &slot, &gen);
	spool_msg_begin(sp, &tx->msg, spool_next_id(sp), slot, gen);
	tx->begun = true;
	spool_qid_format(tx->msg.id, tx->qid);
	smtp_data_begin(&c->s->ds, dot);
	size_t n = tx_received_header(c);
	tx->received_8bit = false;
	for (size_t i = 0; i < n; i++)
		tx->received_8bit |= (unsigned char)tx->received[i] >= 0x80;
	spool_msg_append(sp, &tx->msg, tx->received, (uint32_t)n, SPOOL_NO_BUF);
}

static void cmd_data(struct conn *c)
{
	if (c->s->bdat_used)
		return session_error(c, "503 5.5.1 Error: DATA after BDAT");
	if (c->s->state == SMTP_S_MAIL)
		return session_error(c, "554 5.5.1 Error: no valid recipients");
	if (c->s->state != SMTP_S_RCPT)
		return session_error(c, "503 5.5.1 Error: need RCPT command");
	tx_begin_message(c, true);
	smtp_enter_state(c, SMTP_S_DATA);
	conn_reply(c, "354 End data with <CR><LF>.<CR><LF>");
}

static void session_bdat_chunk_end(struct conn *c);

/* Would a chunk of this declared size take the message over the limit?
 * (Overflow-safe: the size may be up to 2^64-1.) */
static bool bdat_too_big(const struct conn *c, uint64_t size)
{
	uint64_t limit = cfg_of(c)->limits.message_size;
	uint64_t have = c->s->state == SMTP_S_RCPT && c->s->bdat_used ? c->s->ds.wire_len : 0;

	return size > limit || have > limit - size;
}

static void cmd_bdat(struct conn *c, const struct smtp_cmd *cmd)
{
	/* The chunk cannot be skipped without reading it, and reading a
	 * declared 100 GB would tie the connection up for as long: refuse it
	 * at once and close (RFC 3030 4 lets the server drop the session). */
	if (bdat_too_big(c, cmd->bdat_size)) {
		log_msg(LOG_INFO, "event=bdat_too_big client=%s size=%llu", conn_peer_ip(c),
			(unsigned long long)cmd->bdat_size);
		conn_reply(c, "552 5.3.4 Error: message size exceeds fixed limit");
		return session_close(c);
	}
	c->s->bdat_left = cmd->bdat_size;
	c->s->bdat_last = cmd->bdat_last;
	c->s->bdat_reply = NULL;
	/* A refused chunk's bytes are still read (sink) so the session stays
	 * in step with the client; the error goes out after them. */
	if (c->s->state != SMTP_S_RCPT)
		c->s->bdat_reply = c->s->state == SMTP_S_MAIL
				       ? "554 5.5.1 Error: no valid recipients"
				       : "503 5.5.1 Error: need RCPT command";
	else if (!c->s->bdat_used)
		tx_begin_message(c, false);
	if (c->s->bdat_reply) {
		/* A fresh scanner for the refused chunk: the one of the last
		 * message may have finished, and a finished scanner consumes
		 * nothing (the shard spun on that). */
		smtp_data_begin(&c->s->ds, false);
		c->s->sink = true;
	} else {
		c->s->bdat_used = true;
	}
	c->s->bdat_prev_state = (uint8_t)c->s->state;
	c->s->bdat_size = cmd->bdat_size;
	smtp_enter_state(c, SMTP_S_BDAT);
	if (c->s->bdat_left == 0)
		session_bdat_chunk_end(c);
}

static void cmd_dispatch(struct conn *c, const struct smtp_cmd *cmd)
{
	switch (cmd->verb) {
	case SMTP_VERB_EHLO:
	case SMTP_VERB_HELO:
		return cmd_ehlo(c, cmd, cmd->verb == SMTP_VERB_EHLO);
	case SMTP_VERB_MAIL:
		return cmd_mail(c, cmd);
	case SMTP_VERB_RCPT:
		return cmd_rcpt(c, cmd);
	case SMTP_VERB_DATA:
		return cmd_data(c);
	case SMTP_VERB_BDAT:
		return cmd_bdat(c, cmd);
	case SMTP_VERB_RSET:
		session_reset_tx(c);
		return conn_reply(c, "250 2.0.0 Ok");
	case SMTP_VERB_NOOP:
		return conn_reply(c, "250 2.0.0 Ok");
	case SMTP_VERB_QUIT:
		conn_reply(c, "221 2.0.0 Bye");
		return session_close(c);
	case SMTP_VERB_VRFY:
		return conn_reply(
		    c, "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery");
	case SMTP_VERB_EXPN:
		return session_error(c, "502 5.5.1 Error: EXPN not available");
	case SMTP_VERB_HELP:
		return conn_reply(c, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP "
				     "QUIT VRFY HELP; see RFC 5321");
	case SMTP_VERB_STARTTLS:
		return cmd_starttls(c, cmd);
	case SMTP_VERB_AUTH:
		return cmd_auth(c, cmd);
	case SMTP_VERB_UNKNOWN:
		break;
	}
	session_error(c, "500 5.5.2 Error: command not recognized");
}

static void session_command(struct conn *c, const char *line, size_t len)
{
	struct smtp_cmd cmd;

	if (++c->s->commands > cfg_of(c)->limits.commands) {
		conn_replyf(c, "421 4.7.0 %s Error: too many commands", cfg_of(c)->hostname);
		return session_close(c);
	}
	if (smtp_cmd_parse(line, len, &cmd) != SMTP_PARSE_OK)
		return session_error(c, cmd.reply ? cmd.reply : "500 5.5.2 Error: bad syntax");
	if (len + 2 > smtp_cmd_line_max(cmd.verb))
		return session_error(c, "500 5.5.2 Error: line too long");
	c->s->cur_line = line;
	c->s->cur_len = (uint32_t)len;
	cmd_dispatch(c, &cmd);
	c->s->cur_line = NULL;
}

static const char *line_error_reply(uint8_t error)
{
	switch (error) {
	case SMTP_LINE_TOO_LONG:
		return "500 5.5.2 Error: line too long";
	case SMTP_LINE_NUL:
		return "500 5.5.2 Error: NUL character in command";
	default:
		/* CVE-2023-51764: a command ended by anything but CRLF is
		 * never executed. */
		return "500 5.5.2 Error: bare CR or LF in command";
	}
}

/* One command line's worth of bytes: in place when the line lies in this
 * buffer, else gathered into s->line (bounded; the scanner flags the rest). */
static size_t session_line(struct conn *c, const char *p, size_t n)
{
	struct smtp_session *s = c->s;
	size_t used, room;
	int rc = smtp_line_scan(&s->ls, p, n, &used);
	const char *line = p;

	if (rc == SMTP_PARSE_OK && s->line_have == 0) {
		line = p; /* whole line in this buffer */
	} else {
		room = sizeof(s->line) - s->line_have;
		memcpy(s->line + s->line_have, p, used < room ? used : room);
		s->line_have += (uint32_t)(used < room ? used : room);
		line = s->line;
		if (rc == SMTP_PARSE_AGAIN)
			return used;
	}
	if (s->in_auth && !(rc == SMTP_PARSE_INVALID && s->ls.error == SMTP_LINE_BARE_LF)) {
		session_auth_line(c, line, s->ls.line_len, rc == SMTP_PARSE_INVALID);
	} else if (rc == SMTP_PARSE_INVALID && s->ls.error == SMTP_LINE_BARE_LF) {
		/* CVE-2023-51764: a line ended by a bare LF is refused and the
		 * connection closed, so no byte after it is ever taken as a
		 * command (as Postfix's smtpd_forbid_bare_newline does). */
		log_msg(LOG_INFO, "event=bare_lf client=%s", conn_peer_ip(c));
		conn_reply(c, "500 5.5.2 Error: bare LF received, closing connection");
		session_close(c);
	} else if (rc == SMTP_PARSE_INVALID)
		session_error(c, line_error_reply(s->ls.error));
	else
		session_command(c, line, s->ls.line_len);
	s->line_have = 0;
	smtp_line_reset(&s->ls);
	return used;
}

/* ---- message body ------------------------------------------------------------- */

/* Why the message is refused at its end, or NULL.  Checked after the real
 * end so a smuggled "end" never splits it (CVE-2023-51764). */
static const char *tx_verdict(struct conn *c)
{
	const struct smtp_data_state *ds = &c->s->ds;
	struct smtp_tx *tx = c->s->tx;

	if (tx->fail_reply)
		return tx->fail_reply;
	/* A CR as the last octet of BDAT data is bare too: no LF can follow. */
	if ((ds->flags & (SMTP_DATA_BARE_CR | SMTP_DATA_BARE_LF)) || smtp_data_ends_cr(ds))
		return "554 5.6.0 Error: bare CR or LF in message (RFC 5321 2.3.8)";
	if (ds->flags & SMTP_DATA_NUL)
		return "554 5.6.0 Error: NUL character in message";
	if (ds->flags & SMTP_DATA_LONG_LINE)
		return "554 5.6.0 Error: message line longer than 1000 octets (RFC 5321 4.5.3.1.6)";
	if (ds->received_count > cfg_of(c)->limits.received_headers)
		return "554 5.4.6 Error: too many Received: headers (mail loop)";
	return NULL;
}

static void tx_commit(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;
	struct spool_env env = {0};
	const char *l = c->s->env->listeners[conn_listener(c)]->name;
	bool dot = c->s->ds.dot;
	uint64_t wire = tx->msg.wire_len;

	env.arrival_s = time(NULL);
	env.msg_len = dot ? wire - 3 : wire;
	/* What SIZE= and the logs say (RFC 1870): the stuffing is ours to
	 * drop, not the message's. */
	env.stuff_len = c->s->ds.stuff_len;
	/* Our Received: field is part of the stored header section: an 8-bit
	 * AUTH name or "for" address in it counts like the client's octets. */
	bool hdr_8bit = (c->s->ds.flags & SMTP_DATA_8BIT_HEADER) || tx->received_8bit;
	env.flags = (dot ? SPOOL_ENV_STUFFED : 0) |
		    (smtp_data_ends_line(&c->s->ds) ? 0 : SPOOL_ENV_NO_FINAL_CRLF) |
		    ((c->s->ds.flags & SMTP_DATA_8BIT) || hdr_8bit ? SPOOL_ENV_8BIT : 0) |
		    (tx->smtputf8 ? SPOOL_ENV_SMTPUTF8 : 0) | (hdr_8bit ? 0 : SPOOL_ENV_HDR_ASCII);
	env.body_type = tx->body_type;
	env.ret = tx->ret;
	env.size_declared = tx->size_declared;
	env.listener = (struct spool_str){l, (uint32_t)strlen(l)};
	env.client_addr = (struct spool_str){conn_peer_ip(c), (uint32_t)strlen(conn_peer_ip(c))};
	env.helo = (struct spool_str){c->s->helo, (uint32_t)strlen(c->s->helo)};
	env.mail_from = tx->mail_from;
	env.envid = tx->envid;
	env.auth_user = (struct spool_str){c->s->auth_user,
					   c->s->authed ? (uint32_t)strlen(c->s->auth_user) : 0};
	env.rcpt_count = tx->rcpt_count;
	env.rcpts = tx->rcpts;
	tx->size = spool_env_size(&env);
	if (spool_msg_commit(c->s->env->spool, &tx->msg, &env, tx->enc, sizeof(tx->enc)) < 0) {
		tx->fail_reply = "452 4.3.1 Error: envelope too large";
		spool_msg_abort(c->s->env->spool, &tx->msg);
		conn_reply(c, tx->fail_reply);
		tx_release(c);
		smtp_enter_state(c, SMTP_S_READY);
		session_unpause(c);
	}
}

/* The data stage's verdict: a refusal becomes the message's answer. */
static void tx_data_decision(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;

	tx->data_decided = true;
	if (c->s->verdict.action == FLT_ACCEPT)
		return;
	snprintf(tx->fail_buf, sizeof(tx->fail_buf), "%s", c->s->verdict.reply);
	tx->fail_reply = tx->fail_buf;
}

/* After the end of data: commit at once (the commit rides with the last
 * chunk; the spool waits for every write before the group sync), or refuse
 * once no write of the message is in flight.  Called again from write
 * completions while it has to wait. */
static void tx_try_finish(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;
	const char *refuse;

	assert(c->s->state == SMTP_S_COMMIT && tx);
	/* Committing already, or the data stage's decision is still out
	 * (spool progress can call us meanwhile): nothing to do yet. */
	if (tx->msg.committing || c->s->wait == SMTP_WAIT_FILTER)
		return;
	refuse = tx->msg.io_error == -ENOSPC ? "452 4.3.1 Error: insufficient system storage"
		 : tx->msg.io_error	     ? "451 4.3.0 Error: queue file write error"
					     : tx_verdict(c);
	if (!refuse && !tx->data_decided) {
		struct flt_input in = {0};

		if (!session_decide(c, FLT_STAGE_DATA, &in))
			return; /* smtp_session_decided() calls us again */
		tx_data_decision(c);
		refuse = tx->fail_reply;
	}
	if (!refuse) {
		if (spool_msg_can_commit(&tx->msg))
			tx_commit(c);
		else
			spool_msg_wait(c->s->env->spool, &tx->msg); /* retried on progress */
		return;
	}
	if (!spool_msg_idle(&tx->msg))
		return;
	log_msg(LOG_INFO, "event=rejected id=%s client=%s reply=\"%s\"", tx->qid, conn_peer_ip(c),
		refuse);
	if (conn_active(c))
		session_error(c, refuse);
	tx_release(c);
	if (c->s->state == SMTP_S_COMMIT)
		smtp_enter_state(c, SMTP_S_READY);
	if (c->s->wait == SMTP_WAIT_COMMIT)
		session_unpause(c);
}

static void session_end_of_data(struct conn *c)
{
	smtp_enter_state(c, SMTP_S_COMMIT);
	c->s->wait = SMTP_WAIT_COMMIT;
	tx_try_finish(c);
}

/* The last byte of a BDAT chunk arrived (RFC 3030 2). */
static void session_bdat_chunk_end(struct conn *c)
{
	struct smtp_session *s = c->s;

	if (s->bdat_reply) {
		const char *r = s->bdat_reply;

		s->bdat_reply = NULL;
		s->sink = false;
		smtp_enter_state(c, (enum smtp_state)s->bdat_prev_state);
		session_error(c, r);
		return;
	}
	if (s->bdat_last) {
		session_end_of_data(c);
		return;
	}
	conn_replyf(c, "250 2.0.0 %llu octets received", (unsigned long long)s->bdat_size);
	smtp_enter_state(c, SMTP_S_RCPT);
}

/* Body bytes: scanned, and written to the spool from the buffer they are in.
 * Returns bytes consumed; 0 with s->wait set when a write slot is needed. */
static size_t session_body(struct conn *c, const char *p, size_t n, uint16_t bid)
{
	struct smtp_session *s = c->s;
	struct smtp_tx *tx = s->tx;
	uint64_t limit = cfg_of(c)->limits.message_size;
	size_t want = n, used;
	int rc;

	if (s->state == SMTP_S_BDAT && want > s->bdat_left)
		want = (size_t)s->bdat_left;
	if (!s->sink && !spool_msg_can_write(&tx->msg)) {
		s->wait = SMTP_WAIT_SPOOL;
		spool_msg_wait(c->s->env->spool, &tx->msg);
		return 0;
	}
	rc = smtp_data_scan(&s->ds, p, want, &used);
	/* RFC 1870 counts neither the stuffing nor the terminator, however
	 * the bytes were split (a message exactly at the limit is taken). */
	if (!s->sink && smtp_data_size(&s->ds) > limit) {
		/* Over the size limit: keep reading to the real end, write
		 * nothing more, refuse then (RFC 1870 6.1). */
		tx->fail_reply = "552 5.3.4 Error: message size exceeds fixed limit";
		s->sink = true;
	}
	if (!s->sink && used)
		spool_msg_append(c->s->env->spool, &tx->msg, p, (uint32_t)used, bid);
	if (s->state == SMTP_S_DATA) {
		if (rc == SMTP_PARSE_OK)
			session_end_of_data(c);
		return used;
	}
	s->bdat_left -= used;
	if (s->bdat_left == 0)
		session_bdat_chunk_end(c);
	return used;
}

/* ---- the entry points from the shard ------------------------------------------------ */

size_t smtp_session_feed(struct conn *c, const char *p, size_t n, uint16_t bid)
{
	struct smtp_session *s = c->s;
	size_t off = 0;

	while (off < n && conn_takes_input(c) && s->wait == SMTP_WAIT_NONE) {
		size_t before = off;
		enum smtp_state was = s->state;

		switch (s->state) {
		case SMTP_S_NEW:
			smtp_session_early(c);
			return n;
		case SMTP_S_DATA:
		case SMTP_S_BDAT:
			off += session_body(c, p + off, n - off, bid);
			break;
		case SMTP_S_COMMIT:
			s->wait = SMTP_WAIT_COMMIT;
			break;
		case SMTP_S_QUIT:
			return n;
		case SMTP_S_GREETED:
		case SMTP_S_READY:
		case SMTP_S_MAIL:
		case SMTP_S_RCPT:
			/* Pipelined commands wait for earlier writes of this
			 * transaction, and for room for their reply. */
			if (s->tx && !spool_msg_idle(&s->tx->msg)) {
				s->wait = SMTP_WAIT_SPOOL;
				break;
			}
			if (conn_out_free(c) < SMTP_REPLY_MAX)
				return off;
			off += session_line(c, p + off, n - off);
			break;
		}
		if (off == before && s->state == was && s->wait == SMTP_WAIT_NONE &&
		    conn_takes_input(c)) {
			/* Invariant 8: every turn of this loop consumes input, changes
			 * state or starts a wait.  One that does none of these would
			 * spin the shard for every connection on it. */
			assert(!"smtp_session_feed made no progress");
			log_msg(LOG_ERROR, "event=feed_stuck client=%s state=%s", conn_peer_ip(c),
				state_names[s->state]);
			session_close(c);
			return n;
		}
	}
	if (!conn_active(c) || s->state == SMTP_S_QUIT)
		return n; /* closing: the rest of the input is moot */
	/* After STARTTLS the shard discards the rest (never parsed). */
	return off;
}

void smtp_session_spool_progress(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;

	assert(tx && tx->begun && !tx->msg.committing);
	if (c->s->state == SMTP_S_COMMIT) {
		tx_try_finish(c); /* waiting to commit, or to refuse once idle */
		return;
	}
	if (c->s->wait != SMTP_WAIT_SPOOL)
		return;
	if (spool_msg_idle(&tx->msg) ||
	    ((c->s->state == SMTP_S_DATA || c->s->state == SMTP_S_BDAT) &&
	     spool_msg_can_write(&tx->msg)))
		session_unpause(c);
}

/* "Persist before reply": the only place a message's 250 is sent. */
void smtp_session_durable(struct conn *c, int res)
{
	struct smtp_tx *tx = c->s->tx;

	assert(tx && c->s->state == SMTP_S_COMMIT);
	if (res == 0) {
		log_msg(LOG_INFO, "event=queued id=%s client=%s from=<%.*s> rcpts=%u size=%llu",
			tx->qid, conn_peer_ip(c), (int)tx->mail_from.len, tx->mail_from.ptr,
			tx->rcpt_count, (unsigned long long)tx->size);
		if (conn_active(c))
			conn_replyf(c, "250 2.0.0 Ok: queued as %s", tx->qid);
	} else {
		log_msg(LOG_ERROR, "event=commit_failed id=%s client=%s error=\"%s\"", tx->qid,
			conn_peer_ip(c), strerror(-res));
		if (conn_active(c))
			conn_reply(c, res == -ENOSPC
					  ? "452 4.3.1 Error: insufficient system storage"
					  : "451 4.3.0 Error: queue file write error");
	}
	tx->msg.committing = false;
	tx_release(c);
	c->s->transactions++;
	smtp_enter_state(c, SMTP_S_READY);
	if (!conn_active(c))
		return;
	if (*c->s->env->stopping) {
		conn_replyf(c, "421 4.3.2 %s Service shutting down", cfg_of(c)->hostname);
		session_close(c);
		return;
	}
	session_unpause(c);
}

bool smtp_session_busy(const struct conn *c)
{
	const struct smtp_tx *tx = c->s->tx;

	return tx && (tx->msg.writes_inflight > 0 || tx->msg.committing);
}

void smtp_session_release(struct conn *c)
{
	tx_release(c);
	auth_end(c);
}

void smtp_session_decided(struct conn *c)
{
	struct smtp_session *s = c->s;
	enum flt_stage stage = s->pending_stage;
	struct smtp_cmd cmd;

	if (s->wait == SMTP_WAIT_AUTH_DELAY) {
		/* The delay after a failed AUTH is over. */
		s->wait = SMTP_WAIT_NONE;
		auth_failed_reply(c);
		if (conn_active(c) && s->wait == SMTP_WAIT_NONE)
			conn_resume(c);
		return;
	}
	assert(s->wait == SMTP_WAIT_FILTER);
	flt_resume(stage, &s->verdict);
	s->wait = SMTP_WAIT_NONE;
	if (stage == FLT_STAGE_CONNECT) {
		greet_finish(c);
	} else if (stage == FLT_STAGE_DATA) {
		s->wait = SMTP_WAIT_COMMIT;
		tx_data_decision(c);
		tx_try_finish(c);
	} else {
		/* The line was valid when it was first parsed; it is unchanged. */
		int rc = smtp_cmd_parse(s->line, s->pending_len, &cmd);

		assert(rc == SMTP_PARSE_OK);
		(void)rc;
		if (stage == FLT_STAGE_HELO)
			ehlo_finish(c, cmd.verb == SMTP_VERB_EHLO);
		else if (stage == FLT_STAGE_MAIL)
			mail_finish(c, &cmd);
		else
			rcpt_finish(c, &cmd);
	}
	if (conn_active(c) && s->wait == SMTP_WAIT_NONE)
		conn_resume(c); /* pipelined input waiting behind the decision */
	else if (conn_active(c))
		conn_flush(c);
}

enum smtp_hold smtp_session_hold(const struct conn *c)
{
	switch (c->s->wait) {
	case SMTP_WAIT_NONE:
		return SMTP_HOLD_NONE;
	case SMTP_WAIT_FILTER:
	case SMTP_WAIT_AUTH:
	case SMTP_WAIT_AUTH_DELAY:
		return SMTP_HOLD_SELF;
	case SMTP_WAIT_SPOOL:
	case SMTP_WAIT_COMMIT:
		return SMTP_HOLD_DISK;
	}
	abort();
}

enum smtp_phase smtp_session_phase(const struct conn *c)
{
	switch (c->s->state) {
	case SMTP_S_NEW:
		return SMTP_PHASE_PREGREET;
	case SMTP_S_GREETED:
	case SMTP_S_READY:
	case SMTP_S_MAIL:
	case SMTP_S_RCPT:
		return SMTP_PHASE_COMMANDS;
	case SMTP_S_DATA:
	case SMTP_S_BDAT:
		return SMTP_PHASE_BODY;
	case SMTP_S_COMMIT:
		return SMTP_PHASE_COMMIT;
	case SMTP_S_QUIT:
		return SMTP_PHASE_QUIT;
	}
	abort();
}
