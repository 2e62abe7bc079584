/*
 * control_int — what the control server's files share: one client's
 * answer (struct out) and the writes to it (control.c), and the message a
 * "queue show" prints from the spool (control_show.c).  Not an interface:
 * only those two include it.  A client's own thread.
 */
#ifndef RMX_CONTROL_INT_H
#define RMX_CONTROL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct control;

/* Why a client's answer stopped early. */
enum ctl_drop {
	CTL_DROP_NONE,
	CTL_DROP_STALLED,  /* CONTROL_STALL_MS without taking a byte */
	CTL_DROP_DEADLINE, /* CONTROL_CLIENT_MS since accept */
	CTL_DROP_CLOSED,   /* the reader went away (EPIPE, reset) */
	CTL_DROP_STOPPING, /* the server stops */
	CTL_DROP_IDLE,	   /* no command line within CONTROL_READ_MS */
};

/* One client's answer: a non-blocking socket, the bytes sent, and why it
 * stopped (a failed write ends every later one). */
struct out {
	struct control *ctl;
	int fd;
	enum ctl_drop drop;
	uint64_t deadline_ms;
	uint64_t sent;
};

/* Send all of p, or set o->drop (a failed write ends every later one). */
void out_write(struct out *o, const void *p, size_t n);
void out_printf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* control_show.c: "OK", the envelope and the body of message id from the
 * spool under root.  false: not found (nothing was sent). */
bool control_show_message(struct out *o, const char *root, uint64_t id, const char *arg);

/* control_explain.c: `filter explain ARGS` on the compiled chains. */
struct rmx_config;
struct flt_rules;
void control_explain(struct out *o, const struct rmx_config *cfg, const struct flt_rules *rules,
		     const char *args);

#endif
