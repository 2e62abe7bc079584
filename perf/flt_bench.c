/*
 * perf/flt_bench — the filter engine alone: ns per transaction and heap
 * allocations per transaction, on chains of the size.
 *
 *   build/perf/flt_bench [TRANSACTIONS]
 *
 * A transaction is connect + helo + mail + 3 rcpt decisions on a made-up
 * session whose client, sender and recipients match none of the rules, so
 * every rule is tried (the worst case for a chain).  Two shapes of the
 * same 10,000 networks, 10,000 domains and 100 regexes:
 *   rules   one rule per network and per domain (a chain as an admin who
 *           pastes lists into rules writes it): every TEST runs;
 *   tables  one rule per list, the lists as tables: one lookup each.
 * Allocations are counted by interposing malloc for the whole process
 * (libpcre2 included), after one warm-up transaction (a thread makes its
 * regex match data at its first match); the figure must be 0.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "filters/flt.h"

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t m);
extern void *__libc_realloc(void *p, size_t n);

static atomic_long allocs;
static atomic_bool counting;

void *malloc(size_t n)
{
	if (atomic_load_explicit(&counting, memory_order_relaxed))
		atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);
	return __libc_malloc(n);
}

void *calloc(size_t n, size_t m)
{
	if (atomic_load_explicit(&counting, memory_order_relaxed))
		atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);
	return __libc_calloc(n, m);
}

void *realloc(void *p, size_t n)
{
	if (atomic_load_explicit(&counting, memory_order_relaxed))
		atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);
	return __libc_realloc(p, n);
}

#define NETS	10000
#define DOMAINS 10000
#define REGEXES 100

struct buf {
	char *p;
	size_t len, cap;
};

static void put(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n < b->cap - b->len)
			break;
		b->cap = b->cap * 2 + (size_t)n + 1;
		b->p = __libc_realloc(b->p, b->cap);
		if (!b->p)
			abort();
	}
	b->len += (size_t)n;
}

/* Networks 10.a.b.0/24, domains dN.example, regexes on the HELO. */
static char *config_text(bool tables)
{
	struct buf b = {__libc_malloc(1 << 20), 0, 1 << 20};

	put(&b, "{\"hostname\": \"bench.test\", \"listeners\": [{\"name\": \"mx\", \"address\": "
		"\"127.0.0.1:2525\"}], \"relay\": {\"domains\": [\"accepted.example\"]}");
	if (tables) {
		put(&b, ", \"tables\": {\"nets\": {\"inline\": [");
		for (int i = 0; i < NETS; i++)
			put(&b, "%s\"10.%d.%d.0/24\"", i ? "," : "", i / 256, i % 256);
		put(&b, "]}, \"domains\": {\"inline\": [");
		for (int i = 0; i < DOMAINS; i++)
			put(&b, "%s\"d%d.example\"", i ? "," : "", i);
		put(&b, "]}}");
	}
	put(&b, ", \"filters\": {\"connect\": [");
	if (tables)
		put(&b, "{\"if\": {\"client_ip\": {\"table\": \"nets\"}}, \"then\": \"reject\"}");
	for (int i = 0; !tables && i < NETS; i++)
		put(&b, "%s{\"if\": {\"client_ip\": \"10.%d.%d.0/24\"}, \"then\": \"reject\"}",
		    i ? "," : "", i / 256, i % 256);
	put(&b, "], \"helo\": [");
	for (int i = 0; i < REGEXES; i++)
		put(&b,
		    "%s{\"if\": {\"helo\": {\"regex\": \"^bad%d[0-9]+\\\\.example$\"}}, "
		    "\"then\": \"reject\"}",
		    i ? "," : "", i);
	put(&b, "], \"mail\": [");
	if (tables)
		put(&b, "{\"if\": {\"sender_domain\": {\"table\": \"domains\"}}, \"then\": "
			"\"reject\"}");
	for (int i = 0; !tables && i < DOMAINS; i++)
		put(&b, "%s{\"if\": {\"sender_domain\": \"d%d.example\"}, \"then\": \"reject\"}",
		    i ? "," : "", i);
	put(&b, "], \"rcpt\": [{\"if\": {\"rcpt_domain\": [\"*.spam.example\", "
		"\"junk.example\"]}, \"then\": \"reject\"}]}}");
	return b.p;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int decide(enum flt_stage stage, const struct flt_input *in, struct flt_state *st)
{
	struct flt_verdict v;
	int rc = flt_decide(stage, in, st, &v);

	while (rc == FLT_PENDING)
		rc = flt_resume(stage, in, st, &v);
	return v.action;
}

/* One transaction; returns how many stages refused (0 expected). */
static int transaction(struct flt_input *in)
{
	static const char *const rcpts[] = {"a@accepted.example", "b@accepted.example",
					    "c@accepted.example"};
	struct flt_state st = {0};
	int refused = 0;

	refused += decide(FLT_STAGE_CONNECT, in, &st) != FLT_ACCEPT;
	refused += decide(FLT_STAGE_HELO, in, &st) != FLT_ACCEPT;
	refused += decide(FLT_STAGE_MAIL, in, &st) != FLT_ACCEPT;
	for (int i = 0; i < 3; i++) {
		in->rcpt = rcpts[i];
		in->rcpt_len = strlen(rcpts[i]);
		in->rcpt_domain = strchr(rcpts[i], '@') + 1;
		in->rcpt_domain_len = strlen(in->rcpt_domain);
		in->rcpt_count = (uint32_t)i + 1;
		refused += decide(FLT_STAGE_RCPT, in, &st) != FLT_ACCEPT;
	}
	flt_tx_end(&st);
	return refused;
}

static int run(const char *shape, bool tables, long n)
{
	char err[CONFIG_ERR_MAX];
	char *text = config_text(tables);
	struct rmx_config *cfg = config_load_string(text, err, sizeof(err));
	struct flt_rules *rules = cfg ? flt_compile(cfg, err, sizeof(err)) : NULL;
	struct sockaddr_in sa = {.sin_family = AF_INET};
	struct flt_input in;
	uint64_t t0, t1;
	long a;

	free(text);
	if (!rules) {
		fprintf(stderr, "flt_bench: %s\n", err);
		return 1;
	}
	inet_pton(AF_INET, "192.0.2.77", &sa.sin_addr);
	in = (struct flt_input){.cfg = cfg,
				.rules = rules,
				.client = (struct sockaddr *)&sa,
				.client_ip = "192.0.2.77",
				.helo = "mail.client.example",
				.auth_user = "",
				.tls_version = "",
				.sender = "someone@sender.example",
				.sender_len = 22,
				.sender_domain = "sender.example",
				.sender_domain_len = 14,
				.quiet = true};
	if (transaction(&in) != 0) {
		fprintf(stderr, "flt_bench: the made-up transaction was refused\n");
		return 1;
	}
	atomic_store(&allocs, 0);
	atomic_store(&counting, true);
	t0 = now_ns();
	for (long i = 0; i < n; i++)
		if (transaction(&in) != 0)
			abort();
	t1 = now_ns();
	atomic_store(&counting, false);
	a = atomic_load(&allocs);
	printf("%-7s transactions=%ld ns_per_tx=%.0f allocations=%ld\n", shape, n,
	       (double)(t1 - t0) / (double)n, a);
	flt_rules_free(rules);
	config_free(cfg);
	return a != 0;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 2000;

	if (n <= 0)
		n = 2000;
	printf("flt_bench: %d networks, %d domains, %d regexes; "
	       "a transaction = connect + helo + mail + 3 rcpt\n",
	       NETS, DOMAINS, REGEXES);
	return run("rules", false, n) | run("tables", true, n * 50);
}
