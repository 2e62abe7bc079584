/*
 * local — final delivery into Maildir and mbox.
 *
 * Threads: every call here BLOCKS (open, mkdir, write, fsync, rename, lock
 * waits of up to LOCAL_LOCK_WAIT_MS).  Call it from a helper thread only,
 * never from a shard (ARCHITECTURE.md invariant 3).  Any number of helper
 * threads may deliver at once, even to the same mailbox: Maildir needs no
 * lock (unique names, rename), mbox takes a dotlock and an OFD fcntl lock,
 * both of which exclude threads of this process as well as other programs.
 * No global state except an atomic counter for Maildir names.  Each call
 * uses about 48 KiB of stack (LOCAL_READ_CHUNK + LOCAL_OUT_BUF) and
 * allocates nothing.
 *
 * Ownership: the caller owns struct local_msg and everything it points to
 * for the duration of the call, and struct local_result, which the call
 * fills completely (also on success).  The read callback is called only
 * inside the call, synchronously, on the calling thread.
 *
 * Input: the message as the spool stores it — header and body, CRLF line
 * ends, without the DATA terminator ".\r\n" — pulled through msg->read in
 * pieces, so a message of any size streams through fixed buffers; nothing
 * holds the whole message.  With msg->dot_stuffed the bytes are DATA as
 * received and are unstuffed while streaming (RFC 5321 4.5.2); BDAT bodies
 * come with it false.  The recipient must have a domain: the caller turns
 * RCPT <Postmaster> into postmaster@<the route's domain>.  ringmx
 * prepends two header fields it generates itself:
 *     Return-Path: <sender>          ("<>" for the null sender)
 *     Delivered-To: local@domain     (the recipient as given)
 *
 * Line ends: both formats store LF only (every CRLF becomes LF; a lone CR is
 * kept).  mbox is a Unix text format, and the Maildir readers that matter
 * (qmail, Dovecot without mail_save_crlf, Courier, mutt, Python's mailbox)
 * expect the same; the relay path keeps CRLF, only final delivery converts.
 * Maildir stores the rest byte for byte; mbox ends an unterminated last
 * line with LF, adds the blank line that ends each message, and quotes
 * mboxrd-style (any line matching ^>*From  gets one more '>', so readers
 * that unquote get the original back).  The From_ line is
 * "From <sender or MAILER-DAEMON> <asctime date, local time>".
 *
 * Layout (per recipient; the base comes from the route, "maildir:BASE" or
 * "mbox:BASE"):
 *     Maildir:  BASE/<domain>/<local>/{tmp,new,cur}/    one file per message
 *     mbox:     BASE/<domain>/<local>                   dotlock <local>.lock
 * <domain> is folded to lower case (domains are case-insensitive); <local>
 * keeps its case (RFC 5321 2.4: only the final host may interpret it; alias
 * and case folding policy belong to routing, not here).  A quoted local part
 * is unquoted first ("a.b"@x and a.b@x are one mailbox).  Directories are
 * created on demand with mode 0700, files with 0600; each new directory
 * entry is made durable by an fsync of its parent.
 *
 * Safety: a recipient becomes a path only if both parts pass a strict check
 * (local: 1..LOCAL_PART_MAX octets of RFC 5322 atext, '.' and UTF-8, never a
 * leading '.', never '/'; domain: 1..LOCAL_DOMAIN_MAX octets of letters,
 * digits, '-', '.' and UTF-8, no leading '.', no "..", no address literal;
 * for mbox a local part ending in ".lock" is refused because that name is
 * another mailbox's dotlock).  Anything else is refused as PERMANENT before
 * the file system is touched.  Below BASE nothing is followed through a
 * symlink (O_NOFOLLOW at every step), and an mbox that is not a regular
 * file or has more than one link is refused, so a planted symlink or hard
 * link cannot redirect mail into another file.
 *
 * Results: 0 or -errno, and *res says what the caller should answer:
 *   LOCAL_TEMPFAIL (4xx, retry on the schedule):
 *     - anything wrong with BASE itself (missing, not a directory, no
 *       permission): BASE is the operator's, so a typo or an unmounted
 *       volume defers mail instead of bouncing it; config load should check
 *       it too.  Status 4.3.5.
 *     - ENOSPC, EDQUOT, EFBIG (mailbox full, 4.2.2); a lock not obtained
 *       within the wait (-ETIMEDOUT, 4.2.0); EIO, EROFS, ENOMEM, EMFILE,
 *       ENFILE, EAGAIN, EINTR, ESTALE and any errno not listed as permanent
 *       (4.3.0): when unsure, keep the mail.
 *     - a failing read callback: the spool's problem, never the recipient's
 *       (4.3.0), whatever errno it returns.
 *     - a route that is neither "maildir:" nor "mbox:" (4.3.5; local_deliver).
 *   LOCAL_PERMFAIL (5xx, bounce now):
 *     - an unsafe or malformed recipient (see Safety), or a sender or
 *       recipient with control characters (header injection) or longer
 *       than LOCAL_ADDR_MAX (EINVAL, ENAMETOOLONG: 5.1.3);
 *     - below BASE: EACCES/EPERM (the mailbox refuses us), ENOTDIR, EISDIR,
 *       ELOOP (a symlink), and an mbox that is not a regular file or is
 *       hard-linked (EPERM) (5.2.0); ENAMETOOLONG from the file system
 *       (5.1.3).  EINVAL from a system call is not on this list: only the
 *       address checks above refuse with EINVAL.
 * res->diag is one short line for the log and the DSN: the step that failed
 * and strerror, never a path (a bounce goes to strangers).
 *
 * Durability: success is returned only after the message is on disk.
 * Maildir: write tmp/<unique> (O_EXCL), fsync it, rename into new/ without
 * replacing, fsync new/.  On any failure the tmp file is unlinked; if only
 * the final fsync of new/ fails the message is unlinked from new/ again so a
 * retry does not deliver it twice.  mbox: under both locks, append, fsync,
 * then unlock; on any failure after the first byte the file is truncated
 * back to its size before the append (so a failed delivery leaves nothing).
 */
#ifndef RMX_LOCAL_H
#define RMX_LOCAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "smtp/parse.h"

/* ---- bounds -------------------------------------------------------------- */

#define LOCAL_PART_MAX	      SMTP_LOCAL_MAX  /* 64: local part, as a path name */
#define LOCAL_DOMAIN_MAX      SMTP_DOMAIN_MAX /* 255: domain, as a path name */
#define LOCAL_ADDR_MAX	      SMTP_PATH_MAX   /* 256: sender / recipient as given */
#define LOCAL_BASE_MAX	      1024	      /* route base path */
#define LOCAL_READ_CHUNK      16384	      /* bytes asked of msg->read at once */
#define LOCAL_OUT_BUF	      32768	      /* bytes gathered before one write(2) */
#define LOCAL_LOCK_WAIT_MS    20000	      /* mbox: both locks, in total */
#define LOCAL_LOCK_POLL_MS    25	      /* mbox: pause between lock attempts */
#define LOCAL_DOTLOCK_STALE_S 300	      /* mbox: a dotlock older than this is broken */
#define LOCAL_DOTLOCK_TOUCH_S 60	      /* mbox: refresh our dotlock while writing */
#define LOCAL_NAME_TRIES      8		      /* Maildir: unique-name collisions tolerated */
#define LOCAL_HOST_MAX	      64	      /* hostname octets used in Maildir names */
#define LOCAL_NAME_MAX	      (64 + 4 * LOCAL_HOST_MAX) /* Maildir unique name, NUL incl. */
#define LOCAL_DIAG_MAX	      160

/* ---- API ----------------------------------------------------------------- */

/* Pull up to cap bytes of the stored message into buf.  Return 0 with
 * *got > 0 for data, 0 with *got == 0 at the end of the message, or -errno
 * (then the delivery fails TEMPORARILY and nothing stays behind). */
typedef int (*local_read_fn)(void *ctx, char *buf, size_t cap, size_t *got);

struct local_msg {
	local_read_fn read;
	void *ctx;	       /* passed to read unchanged */
	const char *sender;    /* envelope sender without <>, "" for the null sender */
	const char *rcpt;      /* "local@domain", the recipient as given */
	bool dot_stuffed;      /* stored bytes are dot-stuffed DATA: unstuff them */
	uint32_t lock_wait_ms; /* mbox lock wait; 0: LOCAL_LOCK_WAIT_MS */
};

enum local_class {
	LOCAL_DELIVERED = 0,
	LOCAL_TEMPFAIL, /* answer 4xx / defer */
	LOCAL_PERMFAIL, /* answer 5xx / bounce */
};

struct local_result {
	int err; /* 0 or -errno, as returned */
	enum local_class cls;
	const char *status;	   /* RFC 3463 enhanced code, e.g. "4.2.2"; static */
	char diag[LOCAL_DIAG_MAX]; /* "mbox: lock: Connection timed out" */
};

/* Deliver into the Maildir for msg->rcpt under base ("/var/mail/ringmx"). */
int local_maildir_deliver(const char *base, const struct local_msg *msg, struct local_result *res);

/* Append to the mbox for msg->rcpt under base ("/var/mail/ringmx-mbox"). */
int local_mbox_deliver(const char *base, const struct local_msg *msg, struct local_result *res);

/* Dispatch on a route target: "maildir:BASE" or "mbox:BASE". */
int local_deliver(const char *route_to, const struct local_msg *msg, struct local_result *res);

/* Format a Maildir unique name "<sec>.M<usec>P<pid>Q<counter>.<host>" into
 * buf (cap >= LOCAL_NAME_MAX); in host '/' becomes "\057" and ':' "\072"
 * (the Maildir spec's escapes: '/' cannot be in a file name, ':' starts the
 * info part), and only its first LOCAL_HOST_MAX octets are used.  Pure;
 * exported for tests.  Returns the length, or 0 if it does not fit. */
size_t local_maildir_name(char *buf, size_t cap, const struct timespec *now, pid_t pid,
			  uint64_t counter, const char *host);

/* ---- shared by maildir.c and mbox.c; not for callers ---------------------
 *
 * The common parts (address to path names, header lines, the streaming
 * filter, the buffered writer, error classification) live in maildir.c. */

struct local_addr {
	char local[LOCAL_PART_MAX + 1];
	char domain[LOCAL_DOMAIN_MAX + 1]; /* lower case */
};

/* Called by local_copy after each chunk (mbox refreshes its dotlock). */
typedef void (*local_tick_fn)(void *arg);

/* Buffered writer on fd; the first error sticks in err and later puts are
 * dropped, so callers check once at the end. */
struct local_out {
	int fd;
	int err;	    /* 0 or -errno of the first failed write */
	size_t len;	    /* bytes in buf */
	uint64_t total;	    /* bytes accepted so far */
	char last;	    /* last byte accepted */
	local_tick_fn tick; /* optional */
	void *tick_arg;
	char buf[LOCAL_OUT_BUF];
};

/* The streaming transform: unstuff, CRLF -> LF, and (mbox) mboxrd quoting:
 * a line matching ^>*From  gets one more '>'.  State survives any split. */
struct local_filter {
	bool dot;	  /* unstuff */
	bool dot_bol;	  /* smtp_unstuff's line_start */
	bool cr;	  /* a CR held back until we see whether LF follows */
	bool mboxrd;	  /* quote From_ lines */
	bool scan;	  /* at a line start, still matching ^>*From  */
	uint8_t from_len; /* octets of "From " matched */
	uint64_t gt;	  /* '>' held back at the line start */
};

/* Each fills *res and returns 0 or -errno; kind is "maildir" or "mbox". */
int local_check_msg(const struct local_msg *msg, struct local_result *res);
int local_addr_parse(const char *rcpt, struct local_addr *a, struct local_result *res);
int local_open_base(const char *kind, const char *base, int *fd, struct local_result *res);
int local_fail(struct local_result *res, int err, const char *step);   /* by errno */
int local_refuse(struct local_result *res, int err, const char *what); /* PERM 5.1.3 */
void local_ok(struct local_result *res);

/* openat(parent, name) as a directory, never through a symlink; mkdir 0700
 * first when missing, then fsync parent so the new entry is durable. */
int local_open_dir(int parent, const char *name, int *fd);
void local_close(int fd); /* ignores -1 */

void local_out_init(struct local_out *out, int fd);
void local_out_put(struct local_out *out, const char *p, size_t n);
int local_out_flush(struct local_out *out);
void local_put_headers(struct local_out *out, const struct local_msg *msg);

void local_filter_init(struct local_filter *f, bool dot, bool mboxrd);
/* Stream the whole message from msg->read through f into out.  A failing
 * read is TEMPFAIL whatever its errno; a failing write is local_fail(step). */
int local_copy(const struct local_msg *msg, struct local_filter *f, struct local_out *out,
	       const char *step, struct local_result *res);
/* Emit what f still holds (a CR, a partial "From " prefix) at the end. */
void local_filter_finish(struct local_filter *f, struct local_out *out);

#endif
