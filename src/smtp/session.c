/*
 * smtp/session — the SMTP server state machine.  See session.h.
 *
 * Input arrives through smtp_session_feed() in the buffers it was received
 * in.  Command lines are parsed in place (copied into s->line only when a
 * line straddles two buffers); DATA/BDAT bytes go to the spool from the same
 * buffers.  Consuming less than offered pauses the connection until the
 * thing waited for (output space, a spool write slot, the commit) arrives.
 */
#include "auth/sasl.h"
#include "auth/throttle.h"
#include "auth/users.h"
#include "hpool/hpool.h"
#include "smtp/session_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "filters/flt.h"
#include "log/log.h"
#include "smtp/conn.h"

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
	for (uint32_t i = 0; i < p->count; i++)
		free(((struct smtp_tx *)((char *)p->base + p->stride * i))->cap_buf);
	munmap(p->base, p->stride * p->count);
	free(p);
}

/* ---- small helpers ---------------------------------------------------------- */

static const char *const state_names[] = {"new",  "greeted", "ready",  "mail", "rcpt",
					  "data", "bdat",    "commit", "quit"};

/* The one place a state changes: legal transitions only. */
void smtp_enter_state(struct conn *c, enum smtp_state next)
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

const struct rmx_config *cfg_of(const struct conn *c)
{
	return c->s->env->cfg;
}

/* Resume input unless we are inside the feed loop (which goes on by itself). */
void session_unpause(struct conn *c)
{
	c->s->wait = SMTP_WAIT_NONE;
	conn_resume(c);
}

void session_close(struct conn *c)
{
	if (c->s->state != SMTP_S_QUIT)
		smtp_enter_state(c, SMTP_S_QUIT);
	conn_close(c);
}

/* The session's errors reached limits.errors: 421, and it ends. */
bool session_errors_spent(struct conn *c)
{
	if (c->s->errors < cfg_of(c)->limits.errors)
		return false;
	conn_replyf(c, "421 4.7.0 %s Error: too many errors", cfg_of(c)->hostname);
	log_msg(LOG_INFO, "event=too_many_errors client=%s errors=%u", conn_peer_ip(c),
		c->s->errors);
	session_close(c);
	return true;
}

/* A 4xx/5xx answer to a command: counts toward limits.errors. */
void session_error(struct conn *c, const char *reply)
{
	conn_reply(c, reply);
	c->s->errors++;
	session_errors_spent(c);
}

/* RSET, EHLO, HELO: forget the transaction (RFC 5321 4.1.1.5). */
static void session_reset_tx(struct conn *c)
{
	tx_release(c);
	if (c->s->state == SMTP_S_MAIL || c->s->state == SMTP_S_RCPT)
		smtp_enter_state(c, SMTP_S_READY);
}

/* ---- the decision point ---------------------------------------------------------- */

/* Ask the decision point about a stage.  true: s->verdict is final, go on
 * now.  false: the answer comes later (s->wait is FILTER, input paused);
 * the command line is kept in s->line, because the receive buffer it lies
 * in goes back to the kernel, and smtp_session_decided() finishes it. */
bool session_decide(struct conn *c, enum flt_stage stage, const struct smtp_cmd *cmd)
{
	struct smtp_session *s = c->s;
	struct flt_input in;

	session_flt_input(c, stage, cmd, &in);
	if (flt_decide(stage, &in, &s->flt, &s->verdict) == FLT_DONE)
		return true;
	if (s->cur_line && s->cur_line != s->line)
		memmove(s->line, s->cur_line, s->cur_len);
	s->pending_len = s->cur_line ? s->cur_len : 0;
	s->pending_stage = stage;
	s->wait = SMTP_WAIT_FILTER;
	log_msg(LOG_INFO, "event=decision_pending client=%s stage=%s wait_ms=%u errors=%u",
		conn_peer_ip(c), flt_stage_names[stage], s->verdict.delay_ms, s->errors);
	conn_timer(c, s->verdict.delay_ms);
	return false;
}

bool verdict_refused(struct conn *c)
{
	switch (c->s->verdict.action) {
	case FLT_ACCEPT:
		return false;
	case FLT_DISCONNECT:
		conn_reply(c, c->s->verdict.reply);
		session_close(c);
		return true;
	case FLT_REJECT:
	case FLT_TEMPFAIL:
		break;
	}
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
	if (session_decide(c, FLT_STAGE_CONNECT, NULL))
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

const struct config_listener *listener_of(const struct conn *c)
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
	assert(cmd->arg.len == 0); /* parse.c refuses an argument (501) */
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

static void ehlo_finish(struct conn *c, bool esmtp)
{
	const struct rmx_config *cfg = cfg_of(c);

	if (verdict_refused(c)) {
		/* A refused greeting is no greeting: the name is forgotten
		 * and MAIL waits for an accepted EHLO/HELO. */
		c->s->helo[0] = '\0';
		c->s->esmtp = false;
		if (c->s->state == SMTP_S_READY)
			smtp_enter_state(c, SMTP_S_GREETED);
		return;
	}
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
	size_t n = cmd->arg.len < SMTP_HELO_MAX - 1 ? cmd->arg.len : SMTP_HELO_MAX - 1;

	session_reset_tx(c);
	memcpy(c->s->helo, cmd->arg.ptr, n);
	c->s->helo[n] = '\0';
	if (session_decide(c, FLT_STAGE_HELO, cmd))
		ehlo_finish(c, esmtp);
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
	if (smtp_cmd_parse(line, len, &cmd) != SMTP_PARSE_OK) {
		assert(cmd.reply); /* every refusal names its reply (parse.c) */
		return session_error(c, cmd.reply);
	}
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
	if (res == 0 && c->s->flt.quarantine) {
		log_msg(LOG_INFO,
			"event=queued id=%s client=%s from=<%.*s> rcpts=%u size=%llu "
			"quarantine=%s",
			tx->qid, conn_peer_ip(c), (int)tx->mail_from.len, tx->mail_from.ptr,
			tx->rcpt_count, (unsigned long long)tx->size, c->s->flt.quarantine);
	} else if (res == 0) {
		log_msg(LOG_INFO, "event=queued id=%s client=%s from=<%.*s> rcpts=%u size=%llu",
			tx->qid, conn_peer_ip(c), (int)tx->mail_from.len, tx->mail_from.ptr,
			tx->rcpt_count, (unsigned long long)tx->size);
	}
	if (res == 0) {
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
	const struct smtp_cmd *cmdp = NULL;
	struct flt_input in;

	if (s->wait == SMTP_WAIT_AUTH_DELAY) {
		/* The delay after a failed AUTH is over. */
		s->wait = SMTP_WAIT_NONE;
		auth_failed_reply(c);
		if (conn_active(c) && s->wait == SMTP_WAIT_NONE)
			conn_resume(c);
		return;
	}
	assert(s->wait == SMTP_WAIT_FILTER);
	if (stage == FLT_STAGE_HELO || stage == FLT_STAGE_MAIL || stage == FLT_STAGE_RCPT) {
		/* The line was valid when it was first parsed; it is unchanged. */
		int rc = smtp_cmd_parse(s->line, s->pending_len, &cmd);

		assert(rc == SMTP_PARSE_OK);
		(void)rc;
		cmdp = &cmd;
	}
	session_flt_input(c, stage, cmdp, &in);
	if (flt_resume(stage, &in, &s->flt, &s->verdict) == FLT_PENDING) {
		log_msg(LOG_INFO, "event=decision_pending client=%s stage=%s wait_ms=%u errors=%u",
			conn_peer_ip(c), flt_stage_names[stage], s->verdict.delay_ms, s->errors);
		conn_timer(c, s->verdict.delay_ms);
		return;
	}
	s->wait = SMTP_WAIT_NONE;
	if (stage == FLT_STAGE_CONNECT) {
		greet_finish(c);
	} else if (stage == FLT_STAGE_AUTH) {
		auth_finish(c);
	} else if (stage == FLT_STAGE_DATA) {
		s->wait = SMTP_WAIT_COMMIT;
		tx_data_decision(c);
		tx_try_finish(c);
	} else if (stage == FLT_STAGE_HELO) {
		ehlo_finish(c, cmd.verb == SMTP_VERB_EHLO);
	} else if (stage == FLT_STAGE_MAIL) {
		mail_finish(c, &cmd);
	} else {
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
