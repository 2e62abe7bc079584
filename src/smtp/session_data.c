/*
 * smtp/session_data — the message in the SMTP server session: DATA and
 * BDAT, our Received: field, the data-stage decision and the commit (no
 * 250 before the spool says the message is durable).  See session_int.h.
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
#include <strings.h>
#include <time.h>

#include "log/log.h"
#include "smtp/conn.h"

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
	if (c->s->authed && listener_of(c)->received_hide_client)
		/* A submission port's privacy: who sent it stays out of the
		 * trace (the log has it). */
		n = snprintf(tx->received, sizeof(tx->received),
			     "Received: by %s (ringmx) with %s id %s%s;\r\n\t%s\r\n",
			     cfg_of(c)->hostname, with, tx->qid, rcpt, date);
	else
		n = snprintf(
		    tx->received, sizeof(tx->received),
		    "Received: from %s (%s)%s\r\n\tby %s (ringmx) with %s id %s%s;\r\n\t%s\r\n",
		    c->s->helo, lit, tls, cfg_of(c)->hostname, with, tx->qid, rcpt, date);
	assert(n > 0);
	return n < (int)sizeof(tx->received) ? (size_t)n : sizeof(tx->received) - 1;
}

/* ---- the data stage's copy of the message ---------------------------------------- */

/* Keep the message's first bytes when the data stage reads them, or when a
 * submission may lack Message-ID or Date.  A copy that cannot be made
 * refuses the message: a filter must never pass what it could not see. */
static void tx_capture_begin(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;

	tx->cap_on = flt_data_reads_message(c->s->env->rules, conn_listener(c)) ||
		     (c->s->authed && listener_of(c)->add_message_id_date);
	tx->cap_headers = !flt_data_reads_body(c->s->env->rules, conn_listener(c));
	if (tx->cap_on && !tx->cap_buf && !(tx->cap_buf = malloc(FLT_CAPTURE_MAX))) {
		tx->cap_on = false;
		tx->fail_reply = "451 4.3.0 Error: out of memory, try again";
	}
}

/* Wire bytes of the message into the copy, a DATA body's stuffing dropped
 * (RFC 5321 4.5.2: a line's first dot), a line at a time (memchr and
 * memcpy, not a byte loop: a 100 KB message passes here whole).  With
 * cap_headers the copy ends after the header section's blank line. */
static void tx_capture(struct smtp_tx *tx, const char *p, size_t n, bool dot)
{
	const char *end = p + n;

	while (p < end && !tx->cap_full && !tx->cap_done) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t k = nl ? (size_t)(nl + 1 - p) : (size_t)(end - p);
		size_t room = FLT_CAPTURE_MAX - tx->cap_len;

		if (!tx->cap_mid_line) {
			tx->cap_empty_line = true;
			if (dot && *p == '.') { /* the stuffing dot */
				p++;
				k--;
				tx->cap_mid_line = true;
				tx->cap_empty_line = false;
				if (!k)
					continue;
			}
		}
		/* An empty line is "\r\n" (or a bare "\n", refused later). */
		if (tx->cap_empty_line &&
		    !(k <= 2 && (k == 1 ? *p == '\n' || *p == '\r' : p[0] == '\r' && p[1] == '\n')))
			tx->cap_empty_line = false;
		if (k > room)
			k = room;
		memcpy(tx->cap_buf + tx->cap_len, p, k);
		tx->cap_len += (uint32_t)k;
		p += k;
		tx->cap_mid_line = p[-1] != '\n';
		if (!tx->cap_mid_line && tx->cap_empty_line && tx->cap_headers)
			tx->cap_done = true; /* the blank line: the header section is whole */
		tx->cap_full = tx->cap_len == FLT_CAPTURE_MAX;
	}
}

/* The end of data: the copy holds no more than the message (a DATA
 * body's terminator line left its CRLF, or part of it, in the copy). */
static void tx_capture_end(struct smtp_tx *tx, const struct smtp_data_state *ds)
{
	uint64_t size = smtp_data_size(ds);

	if (tx->cap_on && tx->cap_len > size)
		tx->cap_len = (uint32_t)size;
}

/* The data stage reads headers, and the copy ends inside the header
 * section: what it did not see it cannot judge, so the message is
 * refused rather than passed. */
static const char *tx_capture_verdict(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;

	if (tx->cap_on && tx->cap_full &&
	    flt_data_reads_message(c->s->env->rules, conn_listener(c)) &&
	    flt_msg_body_start(tx->cap_buf, tx->cap_len) == tx->cap_len)
		return "552 5.3.4 Error: header section too large to be checked";
	return NULL;
}

static bool header_present(const char *v, size_t n, const void *ctx)
{
	(void)v;
	(void)n;
	(void)ctx;
	return true;
}

/* One header field for the prepend: into the arena, after the others. */
static void prepend_add(struct conn *c, const char *line, size_t n)
{
	struct smtp_tx *tx = c->s->tx;

	if (!n || tx->prepend.len + n > SPOOL_PREPEND_MAX || n > SMTP_TX_ARENA - tx->arena_len) {
		log_msg(LOG_WARN, "event=header_not_added id=%s reason=no_room", tx->qid);
		return;
	}
	if (!tx->prepend.len)
		tx->prepend.ptr = tx->arena + tx->arena_len;
	memcpy(tx->arena + tx->arena_len, line, n);
	tx->arena_len += (uint32_t)n;
	tx->prepend.len += (uint32_t)n;
}

/* RFC 6409 8.2, 8.3: a submission without Message-ID or Date gets them,
 * when the copy holds its whole header section (else it is not known). */
static void tx_submission_fields(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;
	char line[512];
	size_t hdr;

	if (!c->s->authed || !listener_of(c)->add_message_id_date || !tx->cap_on)
		return;
	hdr = flt_msg_body_start(tx->cap_buf, tx->cap_len);
	if (hdr == tx->cap_len && tx->cap_full)
		return;
	if (!flt_msg_header_any(tx->cap_buf, hdr, "Message-ID", 10, header_present, NULL)) {
		int n = snprintf(line, sizeof(line), "Message-ID: <%s.%lld@%s>\r\n", tx->qid,
				 (long long)time(NULL), cfg_of(c)->hostname);

		prepend_add(c, line, (size_t)n);
	}
	if (!flt_msg_header_any(tx->cap_buf, hdr, "Date", 4, header_present, NULL)) {
		time_t now = time(NULL);
		struct tm tm;
		size_t n;

		gmtime_r(&now, &tm);
		n = strftime(line, sizeof(line), "Date: %a, %d %b %Y %H:%M:%S +0000\r\n", &tm);
		prepend_add(c, line, n);
	}
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
	tx->received_len = (uint32_t)n;
	/* When the data stage may add header fields, our Received: goes in
	 * front of them in the envelope's prepend (RFC 5321 4.4: the newest
	 * trace field first); else it is the message's first stored bytes. */
	tx->received_later = flt_data_adds_headers(c->s->env->rules, conn_listener(c)) ||
			     (c->s->authed && listener_of(c)->add_message_id_date);
	if (!tx->received_later)
		spool_msg_append(sp, &tx->msg, tx->received, (uint32_t)n, SPOOL_NO_BUF);
	tx_capture_begin(c);
}

void cmd_data(struct conn *c)
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

void cmd_bdat(struct conn *c, const struct smtp_cmd *cmd)
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

/* The filters' message actions that change the envelope: a recipient
 * added (an archive: it asks for no DSN), the sender rewritten. */
static void tx_message_actions(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;
	const struct flt_state *st = &c->s->flt;
	char addr[SMTP_PATH_MAX + 1];
	size_t n;

	if (st->bcc) {
		size_t bn = strlen(st->bcc);
		bool have = false;

		for (uint32_t i = 0; i < tx->rcpt_count && !have; i++)
			have = tx->rcpts[i].addr.len == bn &&
			       strncasecmp(tx->rcpts[i].addr.ptr, st->bcc, bn) == 0;
		if (!have && tx->rcpt_count < c->s->env->txpool->rcpt_max &&
		    bn <= SMTP_TX_ARENA - tx->arena_len) {
			struct spool_rcpt *r = &tx->rcpts[tx->rcpt_count++];

			memset(r, 0, sizeof(*r));
			memcpy(tx->arena + tx->arena_len, st->bcc, bn);
			r->addr = (struct spool_str){tx->arena + tx->arena_len, (uint32_t)bn};
			r->notify = SMTP_NOTIFY_NEVER;
			tx->arena_len += (uint32_t)bn;
		} else if (!have) {
			log_msg(LOG_WARN, "event=bcc_not_added id=%s reason=no_room", tx->qid);
		}
	}
	n = st->rewrite ? flt_rewrite_sender(st->rewrite, tx->mail_from.ptr, tx->mail_from.len,
					     addr, sizeof(addr))
			: 0;
	if (n && n <= SMTP_TX_ARENA - tx->arena_len) {
		log_msg(LOG_INFO, "event=sender_rewritten id=%s from=<%.*s> to=<%.*s>", tx->qid,
			(int)tx->mail_from.len, tx->mail_from.ptr, (int)n, addr);
		memcpy(tx->arena + tx->arena_len, addr, n);
		tx->mail_from = (struct spool_str){tx->arena + tx->arena_len, (uint32_t)n};
		tx->arena_len += (uint32_t)n;
	}
}

static void tx_commit(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;
	struct spool_env env = {0};
	const char *l = c->s->env->listeners[conn_listener(c)]->name;
	bool dot = c->s->ds.dot;
	uint64_t wire = tx->msg.wire_len;

	tx_message_actions(c);
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
	env.prepend = tx->prepend;
	if (c->s->flt.route)
		env.route = (struct spool_str){c->s->flt.route, (uint32_t)strlen(c->s->flt.route)};
	if (c->s->flt.quarantine)
		env.quarantine = (struct spool_str){c->s->flt.quarantine,
						    (uint32_t)strlen(c->s->flt.quarantine)};
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
void tx_data_decision(struct conn *c)
{
	struct smtp_tx *tx = c->s->tx;
	struct flt_state *st = &c->s->flt;

	tx->data_decided = true;
	if (c->s->verdict.action == FLT_ACCEPT) {
		/* Our Received:, then the header fields the filters and the
		 * submission rules add, delivered before the stored message
		 * (spool_env.prepend). */
		if (tx->received_later)
			prepend_add(c, tx->received, tx->received_len);
		if (st->nadds) {
			struct flt_input in;
			char line[1024];

			session_flt_input(c, FLT_STAGE_DATA, NULL, &in);
			for (uint8_t i = 0; i < st->nadds; i++)
				prepend_add(
				    c, line,
				    flt_header_format(st->adds[i], &in, line, sizeof(line)));
		}
		tx_submission_fields(c);
		return;
	}
	snprintf(tx->fail_buf, sizeof(tx->fail_buf), "%s", c->s->verdict.reply);
	tx->fail_reply = tx->fail_buf;
	tx->fail_close = c->s->verdict.action == FLT_DISCONNECT;
}

/* After the end of data: commit at once (the commit rides with the last
 * chunk; the spool waits for every write before the group sync), or refuse
 * once no write of the message is in flight.  Called again from write
 * completions while it has to wait. */
void tx_try_finish(struct conn *c)
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
	if (!refuse && !tx->data_decided)
		refuse = tx_capture_verdict(c);
	if (!refuse && !tx->data_decided) {
		if (!session_decide(c, FLT_STAGE_DATA, NULL))
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
	if (conn_active(c) && tx->fail_close) {
		conn_reply(c, refuse);
		session_close(c);
	} else if (conn_active(c)) {
		session_error(c, refuse);
	}
	tx_release(c);
	if (c->s->state == SMTP_S_COMMIT)
		smtp_enter_state(c, SMTP_S_READY);
	if (c->s->wait == SMTP_WAIT_COMMIT)
		session_unpause(c);
}

static void session_end_of_data(struct conn *c)
{
	tx_capture_end(c->s->tx, &c->s->ds);
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
size_t session_body(struct conn *c, const char *p, size_t n, uint16_t bid)
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
	if (!s->sink && used) {
		spool_msg_append(c->s->env->spool, &tx->msg, p, (uint32_t)used, bid);
		if (tx->cap_on)
			tx_capture(tx, p, used, s->ds.dot);
	}
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
