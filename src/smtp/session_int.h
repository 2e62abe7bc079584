/*
 * smtp/session_int — what the files of the SMTP server session share, and
 * nothing outside them: the session and transaction structs, and the
 * functions one file calls in another.  session.c has the state machine,
 * the commands and the entry points; session_auth.c AUTH (RFC 4954);
 * session_data.c the message: DATA, BDAT, the Received: field and the
 * commit.  The module's contract is session.h.
 */
#ifndef RMX_SMTP_SESSION_INT_H
#define RMX_SMTP_SESSION_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "filters/flt.h"
#include "queue/spool.h"
#include "smtp/parse.h"
#include "smtp/session.h"

struct sasl_state;

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
	struct flt_state flt;
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

#define SMTP_TX_ARENA	  65536 /* addresses and parameters of one transaction */
#define SMTP_RECEIVED_MAX 1024

struct smtp_tx {
	struct spool_msg msg;
	struct smtp_tx *next_free;
	char qid[SPOOL_QID_LEN + 1];
	bool begun;	   /* spool_msg_begin done */
	bool data_decided; /* the data stage's decision is in */
	bool smtputf8;
	bool received_8bit;  /* our Received: field is not ASCII (an AUTH name, a "for" address) */
	bool received_later; /* our Received: goes into the prepend, not the stored bytes */
	uint32_t received_len;
	uint8_t body_type;
	uint8_t ret;
	uint64_t size_declared;
	uint64_t size; /* at commit: spool_env_size(), the size logged */
	struct spool_str mail_from, envid, auth;
	uint32_t rcpt_count;
	uint32_t env_size;	/* running estimate of the encoded envelope */
	const char *fail_reply; /* refuse at end of data with this */
	bool fail_close;	/* ... and close the session (disconnect) */
	char fail_buf[SMTP_REPLY_MAX];
	/* The data stage's copy of the message's first bytes (cap_buf), as
	 * the client sent them without the stuffing, when its filters read
	 * headers or the body or a submission needs Message-ID/Date. */
	bool cap_on, cap_mid_line, cap_full;
	bool cap_headers;    /* the header section is enough: stop after it */
	bool cap_done;	     /* stopped where it was enough (not cut short) */
	bool cap_empty_line; /* the line being copied is empty so far */
	uint32_t cap_len;
	struct spool_str prepend; /* header fields added (in the arena) */
	uint32_t arena_len;
	char arena[SMTP_TX_ARENA];
	uint8_t enc[SPOOL_ENV_MAX];
	char received[SMTP_RECEIVED_MAX];
	char *cap_buf;		   /* FLT_CAPTURE_MAX octets, made at first use, kept */
	struct spool_rcpt rcpts[]; /* rcpt_max */
};

/* The shard's transactions (smtp_tx_pool_new), one per connection slot. */
struct smtp_tx_pool {
	struct smtp_tx *free;
	uint32_t rcpt_max;
	uint32_t count;
	size_t stride; /* bytes per transaction, page-aligned */
	void *base;    /* count * stride, one mapping */
};

void smtp_enter_state(struct conn *c, enum smtp_state next);
const struct rmx_config *cfg_of(const struct conn *c);
void session_unpause(struct conn *c);
void session_close(struct conn *c);
void session_error(struct conn *c, const char *reply);
void tx_release(struct conn *c);
bool verdict_refused(struct conn *c); /* the decision said no: its reply given */
/* session_tx.c: MAIL and RCPT, before and after their decision. */
void cmd_mail(struct conn *c, const struct smtp_cmd *cmd);
void mail_finish(struct conn *c, const struct smtp_cmd *cmd);
void cmd_rcpt(struct conn *c, const struct smtp_cmd *cmd);
void rcpt_finish(struct conn *c, const struct smtp_cmd *cmd);
/* Ask the filters about a stage (cmd: the MAIL/RCPT/EHLO being decided,
 * else NULL).  true: s->verdict is final now. */
bool session_decide(struct conn *c, enum flt_stage stage, const struct smtp_cmd *cmd);
void session_flt_input(struct conn *c, enum flt_stage stage, const struct smtp_cmd *cmd,
		       struct flt_input *in);
void auth_finish(struct conn *c); /* the auth stage decided: 235 or its refusal */
const struct config_listener *listener_of(const struct conn *c);
void auth_end(struct conn *c);
void auth_failed_reply(struct conn *c);
bool session_errors_spent(struct conn *c);
void cmd_auth(struct conn *c, const struct smtp_cmd *cmd);
void cmd_bdat(struct conn *c, const struct smtp_cmd *cmd);
void cmd_data(struct conn *c);
void session_auth_line(struct conn *c, const char *line, size_t len, bool too_long);
size_t session_body(struct conn *c, const char *p, size_t n, uint16_t bid);
void tx_data_decision(struct conn *c);
void tx_try_finish(struct conn *c);

#endif
