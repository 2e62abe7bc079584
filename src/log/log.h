/*
 * log — one line per event, key=value (or JSON), queue ID on every line that
 * concerns a message.
 *
 * Lines: log_msg(level, "event=x key=%s n=%u reply=\"%s\"", ...).  The
 * format is walked here, not handed to vsnprintf: it is a list of fields
 * `key=VALUE` separated by single spaces, where VALUE is literal text and
 * conversions, or "..." (a quoted value, which may hold spaces).  Each
 * value is rendered on its own and then written safely, so nothing a peer
 * sends (an AUTH user name, an address, a next hop's reply) can end a
 * value, add a key or start a line:
 *   kv    ts=... level=info event=x key=value ...  A value is written bare
 *         when it is printable ASCII without space, quotes, '=' or '\',
 *         else in double quotes with \" \\ \n \r \t and \xNN for every
 *         other control or non-ASCII byte.  A "..." value is always quoted.
 *   json  {"ts":"...","level":"info","event":"x","key":value,...}: a value
 *         that is one decimal integer conversion (%d %i %u, any length, no
 *         flags or width) is a JSON number, everything else a string;
 *         strings are valid UTF-8 (an invalid sequence becomes U+FFFD,
 *         control characters are \u escapes).
 * Conversions: %s %c %d %i %u %x %X with the length modifiers hh h l ll z
 * j t, the flags '-' and '0', a width (digits or '*'), a precision (digits
 * or '*') on %s only, and %%.  Keys are [a-z0-9_], at most LOG_KEY_MAX
 * bytes, distinct, at most LOG_FIELDS_MAX per line; ts, level and
 * truncated are reserved.  A format outside this (log_format_valid() says
 * why; a unit test runs it over every call site) aborts a build with
 * assertions and logs event=log_format_error in one without.
 *
 * A line is at most LOG_LINE_MAX bytes with its newline.  When the values
 * do not fit they are cut, never the structure: short values are kept
 * whole, long ones share what is left, and the line ends with
 * truncated=true ("truncated":true).
 *
 * Threads: shard threads never write(2) themselves (invariant 3): each
 * thread that calls log_thread_ring() gets a single-producer ring that
 * log_drain() empties: the main loop every MAIN_POLL_MS, and a control
 * thread around each command (so an answer follows the lines logged before
 * it); drains hold one lock, so the rings keep one consumer at a time.
 * Threads without a ring (main, control, helpers, start-up) write directly.  A full ring drops the line and counts
 * it; the drop count is reported by the next drain (event=log_dropped).
 *
 * Output: stderr, or the file log_setup() opened (appended to);
 * log_reopen() opens that path again (logrotate moves the file, then sends
 * SIGUSR1).  Writes and the switch of file hold one lock, so a line goes
 * whole to the old or the new file.
 */
#ifndef RMX_LOG_H
#define RMX_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOG_LINE_MAX   1024
#define LOG_RING_BYTES (1u << 20)
#define LOG_FIELDS_MAX 16
#define LOG_KEY_MAX    20

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* file: NULL for stderr, else a path opened for appending (mode 0640 when
 * created).  Main thread, before any other thread logs.  0 or -errno, with
 * why filled in. */
int log_setup(int level, bool json, const char *file, char *why, size_t why_len);
/* Main thread: drain, then open the file again and write to the new one.
 * 0 (also when logging to stderr: nothing to do) or -errno, logged; on
 * failure the old file stays in use. */
int log_reopen(void);
/* Give the calling thread its own ring (shard start-up); id names it. */
int log_thread_ring(unsigned id);
/* Write out everything the rings hold (any thread without a ring; drains
 * are serialised). */
void log_drain(void);
/* Does a line of this level get written at all? (skip formatting if not) */
bool log_enabled(enum log_level level);

/* fmt is the event's fields after the "ts=... level=..." prefix (see the
 * top of this file), e.g. log_msg(LOG_INFO, "event=accept client=%s", a). */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Is fmt a format log_msg() accepts?  If not, why says what is wrong. */
bool log_format_valid(const char *fmt, char *why, size_t why_len);

/* Write the n bytes at p as one kv value (bare or quoted, the rules above)
 * into out (cap bytes, NUL-terminated), cut to fit; returns its length.
 * For other key=value output that carries peer-chosen text (queue list). */
size_t log_kv_value(char *out, size_t cap, const char *p, size_t n);

/* Start-up failure: print "ringmx: ..." to stderr (and the line to the log
 * file, if there is one) and exit(1).  Only while starting. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
