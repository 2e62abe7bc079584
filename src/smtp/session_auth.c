/*
 * smtp/session_auth — AUTH (RFC 4954) in the SMTP server session: the SASL
 * exchange, the password check on a helper thread, the failure throttle
 * and its delay.  See session_int.h.
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
#include <time.h>

#include "log/log.h"
#include "smtp/conn.h"

void auth_failed_reply(struct conn *c)
{
	conn_reply(c, "535 5.7.8 Authentication credentials invalid");
	if (c->s->auth_blocked) {
		conn_replyf(c, "421 4.7.0 %s Too many authentication failures",
			    cfg_of(c)->hostname);
		session_close(c);
		return;
	}
	/* A failed AUTH is an error like any other: a client guessing
	 * below the throttle's limit still runs out of errors. */
	if (session_errors_spent(c))
		return;
	session_unpause(c);
}

void auth_end(struct conn *c)
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

void cmd_auth(struct conn *c, const struct smtp_cmd *cmd)
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
void session_auth_line(struct conn *c, const char *line, size_t len, bool too_long)
{
	if (too_long) {
		auth_end(c);
		return session_error(c, SASL_REPLY_TOO_LONG);
	}
	auth_step_result(c, sasl_step(c->s->sasl, line, len));
}

/* The auth stage's filters decided on a login the password check accepted:
 * 235, or their refusal (the session stays unauthenticated).  The caller
 * resumes input. */
void auth_finish(struct conn *c)
{
	struct smtp_session *s = c->s;

	if (s->verdict.action != FLT_ACCEPT) {
		s->auth_user[0] = '\0';
		verdict_refused(c);
		return;
	}
	s->authed = true;
	conn_reply(c, "235 2.7.0 Authentication successful");
}

void smtp_session_auth_done(struct conn *c, int rc)
{
	struct smtp_session *s = c->s;
	struct auth_throttle_verdict v = {0};

	if (s->wait == SMTP_WAIT_AUTH)
		s->wait = SMTP_WAIT_NONE;
	if (rc == AUTH_VERIFY_OK) {
		log_msg(LOG_INFO, "event=auth client=%s user=\"%s\" result=ok", conn_peer_ip(c),
			s->auth_user);
		if (session_decide(c, FLT_STAGE_AUTH, NULL)) {
			auth_finish(c);
			if (conn_active(c) && s->wait == SMTP_WAIT_NONE)
				conn_resume(c);
		}
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
