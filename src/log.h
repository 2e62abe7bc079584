/*
 * log — one line per event, key=value (or JSON), queue ID on every line that
 * concerns a message.
 *
 * Shard threads never write(2) to stderr themselves (invariant 3): each
 * thread that calls log_thread_ring() gets a single-producer ring the main
 * thread drains with log_drain().  Threads without a ring (main, helpers,
 * start-up) write directly.  A full ring drops the line and counts it; the
 * drop count is reported by the next drain.  Lines are cut at LOG_LINE_MAX.
 */
#ifndef RMX_LOG_H
#define RMX_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#define LOG_LINE_MAX   1024
#define LOG_RING_BYTES (1u << 20)

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

void log_setup(int level, bool json);
/* Give the calling thread its own ring (shard start-up); id names it. */
int log_thread_ring(unsigned id);
/* Main thread: write out everything queued by other threads. */
void log_drain(void);
/* Does a line of this level get written at all? (skip formatting if not) */
bool log_enabled(enum log_level level);

/* fmt is the event's key=value text after the "level=... " prefix, e.g.
 * log_msg(LOG_INFO, "event=accept client=%s", addr).  In JSON mode the
 * key=value pairs are turned into one JSON object. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Start-up failure: print the line and exit(1).  Only while starting. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
