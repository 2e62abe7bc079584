/*
 * log — see log.h.  Per-thread single-producer/single-consumer byte rings.
 */
#include "log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_RINGS_MAX 260

struct log_ring {
	_Atomic uint64_t head; /* consumer position */
	_Atomic uint64_t tail; /* producer position */
	_Atomic uint64_t dropped;
	_Atomic(char *) buf; /* LOG_RING_BYTES; set once, after ring_count grew */
};

static struct log_ring rings[LOG_RINGS_MAX];
static _Atomic unsigned ring_count;
static _Thread_local struct log_ring *my_ring;
static int log_level = LOG_INFO;
static bool log_json;
static pthread_mutex_t direct_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_setup(int level, bool json)
{
	log_level = level;
	log_json = json;
}

bool log_enabled(enum log_level level)
{
	return (int)level <= log_level;
}

int log_thread_ring(unsigned id)
{
	unsigned n = atomic_fetch_add(&ring_count, 1);

	(void)id;
	if (n >= LOG_RINGS_MAX)
		return -1;
	char *buf = malloc(LOG_RING_BYTES);

	if (!buf)
		return -1;
	atomic_store(&rings[n].buf, buf);
	my_ring = &rings[n];
	return 0;
}

static void write_all(const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(STDERR_FILENO, p, n);

		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

/* Turn `a=1 b=two words?` into {"a":"1",...}: values run to the next space,
 * which is how every caller formats them. */
static size_t to_json(const char *kv, char *out, size_t cap)
{
	size_t o = 0;
	bool in_val = false;

	if (cap < 8)
		return 0;
	out[o++] = '{';
	out[o++] = '"';
	for (const char *p = kv; *p && o + 6 < cap; p++) {
		if (*p == '=' && !in_val) {
			o += (size_t)snprintf(out + o, cap - o, "\":\"");
			in_val = true;
		} else if (*p == ' ' && in_val) {
			o += (size_t)snprintf(out + o, cap - o, "\",\"");
			in_val = false;
		} else if (*p == '"' || *p == '\\') {
			out[o++] = '\\';
			out[o++] = *p;
		} else if ((unsigned char)*p >= 0x20) {
			out[o++] = *p;
		}
	}
	o += (size_t)snprintf(out + o, cap - o, in_val ? "\"}\n" : "\":\"\"}\n");
	return o < cap ? o : cap - 1;
}

static size_t format_line(char *line, enum log_level level, const char *fmt, va_list ap)
{
	char kv[LOG_LINE_MAX];
	struct timespec ts;
	struct tm tm;
	size_t n;
	int k;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	k = snprintf(kv, sizeof(kv), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s ",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		     ts.tv_nsec / 1000000, level_names[level]);
	vsnprintf(kv + k, sizeof(kv) - (size_t)k, fmt, ap);
	if (log_json)
		return to_json(kv, line, LOG_LINE_MAX);
	n = strlen(kv);
	if (n > LOG_LINE_MAX - 2)
		n = LOG_LINE_MAX - 2;
	memcpy(line, kv, n);
	line[n++] = '\n';
	return n;
}

/* Producer side: [u32 len][bytes], wrapping byte-wise. */
static void ring_push(struct log_ring *r, const char *line, size_t n)
{
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint32_t len = (uint32_t)n;

	if (tail - head + sizeof(len) + n > LOG_RING_BYTES) {
		atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
		return;
	}
	for (size_t i = 0; i < sizeof(len); i++)
		r->buf[(tail + i) % LOG_RING_BYTES] = ((const char *)&len)[i];
	for (size_t i = 0; i < n; i++)
		r->buf[(tail + sizeof(len) + i) % LOG_RING_BYTES] = line[i];
	atomic_store_explicit(&r->tail, tail + sizeof(len) + n, memory_order_release);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	char line[LOG_LINE_MAX];
	va_list ap;
	size_t n;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	n = format_line(line, level, fmt, ap);
	va_end(ap);
	if (my_ring) {
		ring_push(my_ring, line, n);
		return;
	}
	pthread_mutex_lock(&direct_lock);
	write_all(line, n);
	pthread_mutex_unlock(&direct_lock);
}

static void ring_drain(struct log_ring *r)
{
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint64_t dropped = atomic_exchange_explicit(&r->dropped, 0, memory_order_relaxed);
	char line[LOG_LINE_MAX + 64];

	while (head < tail) {
		uint32_t len;

		for (size_t i = 0; i < sizeof(len); i++)
			((char *)&len)[i] = r->buf[(head + i) % LOG_RING_BYTES];
		for (uint32_t i = 0; i < len && i < LOG_LINE_MAX; i++)
			line[i] = r->buf[(head + sizeof(len) + i) % LOG_RING_BYTES];
		write_all(line, len < LOG_LINE_MAX ? len : LOG_LINE_MAX);
		head += sizeof(len) + len;
	}
	atomic_store_explicit(&r->head, head, memory_order_release);
	if (dropped) {
		int n = snprintf(line, sizeof(line), "level=warn event=log_dropped lines=%llu\n",
				 (unsigned long long)dropped);
		write_all(line, (size_t)n);
	}
}

void log_drain(void)
{
	unsigned n = atomic_load(&ring_count);

	pthread_mutex_lock(&direct_lock);
	for (unsigned i = 0; i < n && i < LOG_RINGS_MAX; i++)
		if (atomic_load(&rings[i].buf))
			ring_drain(&rings[i]);
	pthread_mutex_unlock(&direct_lock);
}

void fatal(const char *fmt, ...)
{
	char line[LOG_LINE_MAX];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	log_drain();
	write_all("ringmx: ", 8);
	write_all(line, (size_t)n);
	exit(1);
}
