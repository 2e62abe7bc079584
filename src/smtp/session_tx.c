/*
 * smtp/session_tx — the envelope of a transaction: MAIL and RCPT (after
 * their stage's decision), the transaction taken from and given back to
 * the shard's pool, and the arena its addresses and parameters are copied
 * into (the command line they came in goes back to the kernel).
 */
#include "smtp/session_int.h"

#include <assert.h>
#include <stddef.h>
#include <string.h>

#include "filters/flt.h"
#include "log/log.h"
#include "smtp/conn.h"

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
void tx_release(struct conn *c)
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
	flt_tx_end(&c->s->flt);
}

/* "local@domain" as it lies in the command line (the parser's slices are
 * contiguous there), or "Postmaster". */
static size_t path_len(const struct smtp_path *p)
{
	if (!p->domain.len)
		return p->local.len;
	return (size_t)(p->domain.ptr + p->domain.len - p->local.ptr);
}

/* What the filters of a stage see (filters/flt.h): the session's facts,
 * the transaction's sender, and the command's address.  cmd: the MAIL or
 * RCPT being decided (NULL at the other stages). */
void session_flt_input(struct conn *c, enum flt_stage stage, const struct smtp_cmd *cmd,
		       struct flt_input *in)
{
	struct smtp_session *s = c->s;
	const char *v = conn_tls_version(c);

	memset(in, 0, sizeof(*in));
	in->cfg = cfg_of(c);
	in->rules = s->env->rules;
	in->listener = conn_listener(c);
	in->client = (const struct sockaddr *)conn_peer(c);
	in->client_ip = conn_peer_ip(c);
	in->helo = s->helo;
	in->authenticated = s->authed || stage == FLT_STAGE_AUTH;
	in->auth_user = in->authenticated ? s->auth_user : "";
	in->tls = conn_tls_on(c);
	in->tls_version = v && strncmp(v, "TLSv", 4) == 0 ? v + 4 : "";
	in->errors = s->errors;
	if (stage == FLT_STAGE_MAIL && cmd) {
		in->sender = cmd->path.local.ptr; /* local@domain is contiguous in the line */
		in->sender_len = path_len(&cmd->path);
		in->sender_domain = cmd->path.domain.ptr;
		in->sender_domain_len = cmd->path.domain.len;
		in->size = cmd->mail.has_size ? cmd->mail.size : 0;
	} else if (s->tx) {
		const char *at = memrchr(s->tx->mail_from.ptr, '@', s->tx->mail_from.len);

		in->sender = s->tx->mail_from.ptr;
		in->sender_len = s->tx->mail_from.len;
		in->sender_domain = at ? at + 1 : "";
		in->sender_domain_len =
		    at ? s->tx->mail_from.len - (size_t)(at + 1 - in->sender) : 0;
		in->size = s->tx->size_declared;
	}
	in->qid = s->tx && s->tx->begun ? s->tx->qid : "";
	if (stage == FLT_STAGE_DATA && s->tx) {
		in->size = smtp_data_size(&s->ds);
		in->rcpt_count = s->tx->rcpt_count;
		in->msg = s->tx->cap_on ? s->tx->cap_buf : NULL;
		in->msg_len = s->tx->cap_len;
	}
	if (stage == FLT_STAGE_RCPT && cmd) {
		in->rcpt = cmd->path.local.ptr;
		in->rcpt_len = path_len(&cmd->path);
		in->rcpt_domain = cmd->path.domain.ptr;
		in->rcpt_domain_len = cmd->path.domain.len;
		in->rcpt_count = s->tx ? s->tx->rcpt_count + 1 : 1;
	}
}

/* What one recipient adds to the encoded envelope, at most. */
static uint32_t rcpt_env_size(const struct smtp_cmd *cmd)
{
	return 16 + cmd->path.local.len + cmd->path.domain.len + cmd->rcpt.orcpt.len;
}

void mail_finish(struct conn *c, const struct smtp_cmd *cmd)
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
	/* Room for the header fields the data stage may add. */
	if (flt_data_adds_headers(c->s->env->rules, conn_listener(c)) ||
	    (c->s->authed && listener_of(c)->add_message_id_date))
		tx->env_size += SPOOL_PREPEND_MAX;
	smtp_enter_state(c, SMTP_S_MAIL);
	conn_reply(c, "250 2.1.0 Ok");
}

void cmd_mail(struct conn *c, const struct smtp_cmd *cmd)
{
	const struct rmx_config *cfg = cfg_of(c);

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
	if (session_decide(c, FLT_STAGE_MAIL, cmd))
		mail_finish(c, cmd);
}

void rcpt_finish(struct conn *c, const struct smtp_cmd *cmd)
{
	struct smtp_tx *tx = c->s->tx;
	struct spool_rcpt *r;

	if (c->s->verdict.action != FLT_ACCEPT) {
		log_msg(LOG_INFO, "event=rcpt_rejected client=%s rcpt=<%.*s> reply=\"%.3s\"",
			conn_peer_ip(c), (int)path_len(&cmd->path), cmd->path.local.ptr,
			c->s->verdict.reply);
		verdict_refused(c);
		return;
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

void cmd_rcpt(struct conn *c, const struct smtp_cmd *cmd)
{
	const struct rmx_config *cfg = cfg_of(c);
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
	if (session_decide(c, FLT_STAGE_RCPT, cmd))
		rcpt_finish(c, cmd);
}
