/*
 * smtp/session — the SMTP server state machine (RFC 5321 and the extensions
 * in EHLO), one per connection, on its shard's thread.
 *
 * The session is separate from the transaction (struct smtp_tx, taken from
 * the shard's pool at MAIL and given back at its end) like OpenSMTPD's
 * smtp_session/smtp_tx.  Every state change goes through
 * smtp_enter_state(), which asserts the transition is legal.
 *
 * Each stage (connect, helo, mail, rcpt, data) asks the filter decision
 * point (filters/flt.h); an answer may come at once or later, in which case
 * the session waits in SMTP_S_WAIT_FILTER with input paused.
 */
#ifndef RMX_SMTP_SESSION_H
#define RMX_SMTP_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "config/config.h"
#include "filters/flt.h"
#include "queue/spool.h"
#include "smtp/parse.h"

#define SMTP_REPLY_MAX 512 /* room a command needs in the output buffer */
#define SMTP_HELO_MAX  256

enum smtp_state {
	SMTP_S_NEW = 0, /* accepted, not greeted yet (greet pause / peek) */
	SMTP_S_GREETED, /* banner sent, waiting for EHLO/HELO */
	SMTP_S_READY,	/* EHLO/HELO done, no transaction */
	SMTP_S_MAIL,	/* MAIL accepted */
	SMTP_S_RCPT,	/* at least one RCPT accepted */
	SMTP_S_DATA,	/* receiving DATA bytes */
	SMTP_S_BDAT,	/* receiving one BDAT chunk's bytes */
	SMTP_S_COMMIT,	/* end of data: waiting for writes, commit, fdatasync */
	SMTP_S_QUIT,	/* closing */
};

enum smtp_wait {
	SMTP_WAIT_NONE = 0,
	SMTP_WAIT_FILTER,     /* a filter decision is pending */
	SMTP_WAIT_SPOOL,      /* all write slots busy */
	SMTP_WAIT_COMMIT,     /* message being made durable */
	SMTP_WAIT_AUTH,	      /* a password check on a helper thread */
	SMTP_WAIT_AUTH_DELAY, /* the delay before a failed AUTH's 535 (conn_timer) */
};

#define SMTP_AUTH_USER_MAX 255

struct smtp_tx;
struct conn;
struct sasl_state;
struct rmx_config;
struct config_listener;
struct hpool;
struct auth_users;
struct auth_throttle;
struct tls_ctx;
struct smtp_tx_pool;

/* What a session may use of the shard that runs it, handed over at
 * smtp_session_init(): the session reaches nothing else of the shard.
 * The shard owns all of it and keeps it for as long as it has
 * connections; the session only reads the fields (the objects they point
 * to are used through their own modules). */
struct smtp_env {
	const struct rmx_config *cfg;
	const struct config_listener *listeners[CONFIG_LISTENERS_MAX]; /* by conn->listener */
	struct spool *spool;
	struct smtp_tx_pool *txpool;
	struct hpool *pool;	  /* helper threads: password checks */
	uint32_t pool_shard;	  /* this shard's index in the pool */
	struct auth_users *users; /* NULL: no users_file */
	struct auth_throttle *throttle;
	struct tls_ctx *tls_ctx;       /* NULL: no certificates */
	const struct flt_rules *rules; /* the compiled filter chains */
	const uint64_t *now_ms;	       /* the shard's loop clock */
	const bool *stopping;	       /* the shard is shutting down */
};

/* One per connection slot, private to this module; the shard makes the
 * table at start (sized by its connection count) and gives slot i its
 * session for good. */
struct smtp_session;
struct smtp_session *smtp_sessions_new(uint32_t count);
void smtp_sessions_free(struct smtp_session *v);
struct smtp_session *smtp_session_at(struct smtp_session *v, uint32_t i);

/* Pool of transactions, sized at start (invariant 4). */
struct smtp_tx_pool *smtp_tx_pool_new(uint32_t count, uint32_t rcpt_max);
void smtp_tx_pool_free(struct smtp_tx_pool *p);

/* Called by the shard. */
void smtp_session_init(struct conn *c, const struct smtp_env *env);
void smtp_session_greet(struct conn *c); /* send the banner */
size_t smtp_session_feed(struct conn *c, const char *p, size_t n, uint16_t bid);
/* Some spool write of the transaction completed (not yet committing). */
void smtp_session_spool_progress(struct conn *c);
void smtp_session_durable(struct conn *c, int res);
/* Idle/session timers and shutdown: send reply (421) and close. */
void smtp_session_timeout(struct conn *c, const char *reply);
/* The client sent bytes before the banner: 554 and close. */
void smtp_session_early(struct conn *c);
/* The timer of a wait is over: a pending decision (SMTP_WAIT_FILTER), whose
 * stage is finished now, or the delay before a failed AUTH's 535
 * (SMTP_WAIT_AUTH_DELAY).  Input resumes. */
void smtp_session_decided(struct conn *c);
/* A password check finished: rc is enum auth_verify_rc or -errno. */
void smtp_session_auth_done(struct conn *c, int rc);

/* What the connection layer may know of a session (it reads no field of
 * it): what it waits on, and where it is in the dialogue. */
enum smtp_hold {
	SMTP_HOLD_NONE = 0, /* it takes input (or waits for nothing) */
	SMTP_HOLD_SELF,	    /* a decision, a password check or the AUTH delay: its
			     * own timers and helpers end it, not the client */
	SMTP_HOLD_DISK,	    /* a spool write slot or its commit: our disk I/O */
};
enum smtp_phase {
	SMTP_PHASE_PREGREET = 0, /* accepted, banner not sent yet */
	SMTP_PHASE_COMMANDS,	 /* reading command lines */
	SMTP_PHASE_BODY,	 /* reading DATA or a BDAT chunk */
	SMTP_PHASE_COMMIT,	 /* end of data: the message is being made durable */
	SMTP_PHASE_QUIT,	 /* closing */
};
enum smtp_hold smtp_session_hold(const struct conn *c);
enum smtp_phase smtp_session_phase(const struct conn *c);

/* The connection is going away: give back the transaction. Only once no
 * spool write of it is in flight. */
void smtp_session_release(struct conn *c);
bool smtp_session_busy(const struct conn *c); /* spool work in flight */

#endif
