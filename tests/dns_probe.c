/*
 * dns_probe — resolve the MX of each domain through src/dns on a real
 * io_uring ring, all at once, and print one line per domain, in argument
 * order.  The helper of tests/blackbox/test_dns_resolver.py; not installed.
 *
 *   dns_probe [-t TIMEOUT_MS] [-r TRIES] [-w WAIT_MS] [-s STOP_MS] SERVERS DOMAIN...
 *   dns_probe -l                       (print the named bounds)
 *
 * SERVERS as for dns_new ("127.0.0.1:5353,[::1]:53").  WAIT_MS bounds the
 * whole run; STOP_MS shuts the resolver down early (queries in flight must
 * then end TEMPFAIL "resolver shut down").  Output:
 *
 *   DOMAIN status=OK [implicit] [mx_truncated] mx=10:a.example[127.0.0.1,::1] 20:b.example[!NOADDR]
 *   DOMAIN status=NULLMX why=...
 *
 * A host's address list ends in "+" when it had more than DNS_ADDR_MAX.  A
 * call that dns_resolve_mx refused prints status=EAGAIN / EINVAL; a domain
 * without a callback by WAIT_MS prints status=PENDING.  Exit 0 when every
 * callback fired exactly once and never synchronously, 3 on the deadline,
 * 2 on a usage or set-up error, abort() on a broken contract.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dns/dns.h"
#include "ring/ring.h"

#define PROBE_LINE_MAX	   8192
#define PROBE_OP_DEADLINE  0x01
#define PROBE_OP_STOP	   0x02
#define PROBE_OP_DRAIN	   0x03
#define PROBE_DRAIN_MS	   2000 /* for our cancels to come back at the end */
#define PROBE_RING_ENTRIES 256

struct item {
	const char *domain;
	bool started, done;
	char line[PROBE_LINE_MAX];
};

static bool g_in_submit; /* inside dns_resolve_mx: a callback now breaks the contract */
static unsigned g_pending;

static void line_add(char *line, const char *fmt, const char *s)
{
	size_t n = strlen(line);

	snprintf(line + n, PROBE_LINE_MAX - n, fmt, s);
}

static void host_format(char *line, const struct dns_mx_host *h, bool first)
{
	char pref[16], addr[INET6_ADDRSTRLEN];

	snprintf(pref, sizeof(pref), "%u", h->preference);
	line_add(line, first ? " mx=%s:" : " %s:", pref);
	line_add(line, "%s[", h->name);
	if (h->status != DNS_OK)
		line_add(line, "!%s", dns_status_name(h->status));
	for (uint32_t i = 0; i < h->addr_count; i++) {
		const struct dns_addr *a = &h->addrs[i];

		if (a->sa.sa_family == AF_INET)
			inet_ntop(AF_INET, &a->v4.sin_addr, addr, sizeof(addr));
		else
			inet_ntop(AF_INET6, &a->v6.sin6_addr, addr, sizeof(addr));
		line_add(line, i ? ",%s" : "%s", addr);
	}
	line_add(line, "]%s", h->addr_truncated ? "+" : "");
}

static void on_result(void *arg, const struct dns_mx_result *r)
{
	struct item *it = arg;

	if (g_in_submit || it->done || !it->started) {
		fprintf(stderr, "dns_probe: callback for %s broke the contract (%s)\n", it->domain,
			g_in_submit ? "synchronous" : "not exactly once");
		abort();
	}
	it->done = true;
	if (g_pending > 0)
		g_pending--;
	snprintf(it->line, sizeof(it->line), "%s status=%s", it->domain,
		 dns_status_name(r->status));
	if (r->implicit_mx)
		line_add(it->line, "%s", " implicit");
	if (r->mx_truncated)
		line_add(it->line, "%s", " mx_truncated");
	for (uint32_t i = 0; i < r->host_count; i++)
		host_format(it->line, &r->hosts[i], i == 0);
	if (r->status != DNS_OK)
		line_add(it->line, " why=%s", r->why);
}

static void arm_timer(struct ring *ring, struct __kernel_timespec *ts, long ms, uint8_t op)
{
	ts->tv_sec = ms / 1000;
	ts->tv_nsec = (ms % 1000) * 1000000L;
	ring_prep_timeout(ring, ts, ring_ud(op, 0, 0, 0));
}

/* Run the ring until pred() is false or a timer of op `until` fires. */
static int run(struct ring *ring, struct dns *d, bool (*pred)(struct dns *), uint8_t until)
{
	while (pred(d)) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		int rc = ring_submit_wait(ring);

		if (rc < 0 && rc != -EINTR && rc != -ETIME) {
			fprintf(stderr, "dns_probe: ring wait: %s\n", strerror(-rc));
			return rc;
		}
		io_uring_for_each_cqe(&ring->uring, head, cqe)
		{
			uint8_t op = ring_ud_op(cqe->user_data);

			seen++;
			if (dns_op_owned(op))
				dns_complete(d, cqe->user_data, cqe->res);
			else if (op == PROBE_OP_STOP)
				dns_shutdown(d);
			else if (op == until) {
				io_uring_cq_advance(&ring->uring, seen);
				return -ETIME;
			}
		}
		io_uring_cq_advance(&ring->uring, seen);
	}
	return 0;
}

static bool pending(struct dns *d)
{
	(void)d;
	return g_pending > 0;
}

static bool busy(struct dns *d)
{
	return dns_busy(d);
}

static int usage(void)
{
	fprintf(stderr, "usage: dns_probe [-t timeout_ms] [-r tries] [-w wait_ms] [-s stop_ms] "
			"SERVERS DOMAIN...\n       dns_probe -l\n");
	return 2;
}

static void start_all(struct dns *d, struct item *items, int n)
{
	for (int i = 0; i < n; i++) {
		int rc;

		items[i].started = true;
		g_pending++;
		g_in_submit = true;
		rc = dns_resolve_mx(d, items[i].domain, on_result, &items[i]);
		g_in_submit = false;
		if (rc < 0) {
			g_pending--;
			items[i].done = true;
			snprintf(items[i].line, sizeof(items[i].line), "%s status=%s",
				 items[i].domain,
				 rc == -EAGAIN	 ? "EAGAIN"
				 : rc == -EINVAL ? "EINVAL"
						 : "ERROR");
		}
	}
}

struct opts {
	long timeout_ms, tries, wait_ms, stop_ms;
};

/* 0: go on; otherwise 1 + the exit status. */
static int parse_opts(int argc, char **argv, struct opts *o)
{
	int opt;

	*o = (struct opts){.timeout_ms = 2000, .tries = 2, .wait_ms = 20000, .stop_ms = -1};
	while ((opt = getopt(argc, argv, "t:r:w:s:l")) != -1) {
		switch (opt) {
		case 't':
			o->timeout_ms = atol(optarg);
			break;
		case 'r':
			o->tries = atol(optarg);
			break;
		case 'w':
			o->wait_ms = atol(optarg);
			break;
		case 's':
			o->stop_ms = atol(optarg);
			break;
		case 'l':
			printf("DNS_QUERIES_MAX=%d DNS_MX_MAX=%d DNS_ADDR_MAX=%d\n",
			       DNS_QUERIES_MAX, DNS_MX_MAX, DNS_ADDR_MAX);
			return 1;
		default:
			return 1 + usage();
		}
	}
	if (argc - optind < 2 || o->timeout_ms <= 0 || o->tries <= 0 || o->wait_ms <= 0)
		return 1 + usage();
	return 0;
}

int main(int argc, char **argv)
{
	struct __kernel_timespec deadline_ts, stop_ts, drain_ts;
	struct ring ring;
	struct dns *d;
	struct item *items;
	struct opts o;
	char why[256];
	int n, rc, status = 0;

	rc = parse_opts(argc, argv, &o);
	if (rc > 0)
		return rc - 1;
	n = argc - optind - 1;
	items = calloc((size_t)n, sizeof(*items));
	if (!items)
		return 2;
	for (int i = 0; i < n; i++)
		items[i].domain = argv[optind + 1 + i];

	if (ring_init(&ring, PROBE_RING_ENTRIES, 4, 256, why, sizeof(why)) < 0) {
		fprintf(stderr, "dns_probe: %s\n", why);
		free(items);
		return 2;
	}
	rc = dns_new(&d, &ring, argv[optind], (uint32_t)o.timeout_ms, (uint32_t)o.tries, why,
		     sizeof(why));
	if (rc < 0) {
		fprintf(stderr, "dns_probe: %s\n", why);
		ring_exit(&ring);
		free(items);
		return 2;
	}
	start_all(d, items, n);
	arm_timer(&ring, &deadline_ts, o.wait_ms, PROBE_OP_DEADLINE);
	if (o.stop_ms >= 0)
		arm_timer(&ring, &stop_ts, o.stop_ms, PROBE_OP_STOP);
	if (run(&ring, d, pending, PROBE_OP_DEADLINE) < 0)
		status = 3;
	for (int i = 0; i < n; i++) {
		if (items[i].done)
			printf("%s\n", items[i].line);
		else
			printf("%s status=PENDING\n", items[i].domain);
	}
	fflush(stdout);

	/* Orderly end: shut down (callbacks of anything left fire now), then
	 * let our cancels come back before freeing. */
	g_pending = 0;
	dns_shutdown(d);
	arm_timer(&ring, &drain_ts, PROBE_DRAIN_MS, PROBE_OP_DRAIN);
	if (run(&ring, d, busy, PROBE_OP_DRAIN) < 0 && status == 0) {
		fprintf(stderr, "dns_probe: resolver still busy after shutdown\n");
		status = 3;
	}
	dns_free(d);
	ring_exit(&ring);
	free(items);
	return status;
}
