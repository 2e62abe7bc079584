/*
 * deliver/oc_int — what the outbound client's files share: outbound.c (the
 * connection: net callbacks, commands out, failures, TLS, assignment),
 * oc_reply.c (replies in: weighing, parsing, dispatch by state, the
 * session-level replies), oc_tx.c (a transaction: MAIL, RCPT, DATA, the
 * results and what follows them) and oc_body.c (the body from the spool).
 * Not an interface: only those four include it.  Shard thread only.
 */
#ifndef RMX_DELIVER_OC_INT_H
#define RMX_DELIVER_OC_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "deliver/internal.h"

/* outbound.c: the connection, its commands, failures, TLS */
uint32_t oc_cmd_ms(const struct deliver_core *c);
void oc_after_ehlo(struct oconn *oc);
void oc_close(struct oconn *oc);
__attribute__((format(printf, 2, 3))) void oc_cmd(struct oconn *oc, const char *fmt, ...);
void oc_cmd_end(struct oconn *oc, enum smtp_ask ask);
bool oc_continuation_lost(struct oconn *oc, const char *why);
void oc_enter_state(struct oconn *oc, enum oc_state next);
void oc_fail(struct oconn *oc, const char *why);
void oc_flush(struct oconn *oc);
bool oc_gone(const struct oconn *oc);
void oc_idle(struct oconn *oc);
void oc_quit(struct oconn *oc);
void oc_quit_done(struct oconn *oc);
void oc_ready(struct oconn *oc);
bool oc_reply_2xx(const struct smtp_reply *r);
bool oc_room(const struct oconn *oc);
void oc_send_ehlo(struct oconn *oc);
void oc_start_tls(struct oconn *oc);
__attribute__((format(printf, 2, 3))) void oc_violation(struct oconn *oc, const char *fmt, ...);

/* oc_reply.c: reading replies and the session-level ones */
void oc_parse(struct oconn *oc, const char *buf, size_t len);

/* oc_tx.c: transactions and their results */
bool oc_job_answered_any(const struct djob *job);
bool oc_503_out_of_step(const struct oconn *oc, enum smtp_ask ask);
void oc_begin_tx(struct oconn *oc);
void oc_out_of_step(struct oconn *oc, enum smtp_ask ask, const struct smtp_reply *r);
void oc_rcpt_reply(struct oconn *oc, const struct smtp_reply *r);
void oc_tx_end(struct oconn *oc, bool reusable);
void oc_on_reply_data(struct oconn *oc, const struct smtp_reply *r);
void oc_on_reply_dot(struct oconn *oc, const struct smtp_reply *r);
void oc_on_reply_mail(struct oconn *oc, const struct smtp_reply *r);
void oc_result_all(struct oconn *oc, int cls, const char *status, const char *diag,
		   bool accepted_only);

/* oc_body.c: the message body */
void oc_body_start(struct oconn *oc);
void oc_pump(struct oconn *oc);

#endif
