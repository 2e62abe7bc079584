/*
 * filters/match_cidr — sets of networks for client_ip (prog.h).
 *
 * Each network is an interval of addresses; once all are added they are
 * sorted and merged into disjoint intervals, one array per family (128-bit
 * bounds for both), and a lookup is one binary search: 10,000 networks cost 14 compares.  (Only
 * membership is asked, never the longest prefix, so no trie is needed.)
 * An IPv4 client on an IPv6 socket (::ffff:a.b.c.d) is looked up as IPv4.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "filters/prog.h"

typedef unsigned __int128 u128;

/* One family's networks: intervals of addresses (an IPv4 address is
 * its 32-bit value), sorted and merged by flt_cidrs_done(). */
struct ivs {
	struct iv {
		u128 lo, hi;
	} * v;
	uint32_t n, cap;
};

struct flt_cidrs {
	struct ivs v4, v6;
};

struct flt_cidrs *flt_cidrs_new(void)
{
	return calloc(1, sizeof(struct flt_cidrs));
}

void flt_cidrs_free(struct flt_cidrs *n)
{
	if (!n)
		return;
	free(n->v4.v);
	free(n->v6.v);
	free(n);
}

static int ivs_add(struct ivs *s, u128 lo, u128 hi)
{
	if (s->n == s->cap) {
		uint32_t c = s->cap ? s->cap * 2 : 16;
		struct iv *v = realloc(s->v, (size_t)c * sizeof(*v));

		if (!v)
			return -ENOMEM;
		s->v = v;
		s->cap = c;
	}
	s->v[s->n++] = (struct iv){lo, hi};
	return 0;
}

int flt_cidrs_add(struct flt_cidrs *n, const char *s, size_t len)
{
	struct config_cidr net;
	char text[INET6_ADDRSTRLEN + 8]; /* the parser reads to a NUL */
	unsigned bits;
	u128 a = 0, host;
	int rc;

	if (len >= sizeof(text) || memchr(s, '\0', len))
		return -EINVAL;
	memcpy(text, s, len);
	text[len] = '\0';
	rc = config_cidr_from_string(text, len, &net);
	if (rc < 0)
		return rc;
	bits = net.family == AF_INET ? 32 : 128;
	for (unsigned i = 0; i < bits / 8; i++)
		a = a << 8 | net.addr[i];
	if (net.prefix_len >= bits)
		host = 0;
	else if (bits - net.prefix_len == 128)
		host = ~(u128)0; /* ::/0: 1 << 128 does not exist */
	else
		host = ((u128)1 << (bits - net.prefix_len)) - 1;
	return ivs_add(net.family == AF_INET ? &n->v4 : &n->v6, a, a | host);
}

static int iv_cmp(const void *a, const void *b)
{
	const struct iv *x = a, *y = b;

	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sort by start, then fold each interval into the previous one when they
 * overlap or touch. */
static void ivs_merge(struct ivs *s)
{
	uint32_t k = 0;

	if (s->n)
		qsort(s->v, s->n, sizeof(*s->v), iv_cmp);
	for (uint32_t i = 0; i < s->n; i++) {
		if (k && (s->v[k - 1].hi == ~(u128)0 || s->v[i].lo <= s->v[k - 1].hi + 1)) {
			if (s->v[i].hi > s->v[k - 1].hi)
				s->v[k - 1].hi = s->v[i].hi;
			continue;
		}
		s->v[k++] = s->v[i];
	}
	s->n = k;
}

int flt_cidrs_done(struct flt_cidrs *n)
{
	ivs_merge(&n->v4);
	ivs_merge(&n->v6);
	return 0;
}

static bool ivs_has(const struct ivs *s, u128 a)
{
	uint32_t lo = 0, hi = s->n;

	while (lo < hi) { /* the first interval starting after a */
		uint32_t mid = lo + (hi - lo) / 2;

		if (s->v[mid].lo <= a)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo > 0 && a <= s->v[lo - 1].hi;
}

bool flt_cidrs_has(const struct flt_cidrs *n, const struct sockaddr *sa)
{
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	const uint8_t *p;
	u128 a = 0;

	if (!sa)
		return false;
	if (sa->sa_family == AF_INET) {
		p = (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
	} else if (sa->sa_family == AF_INET6) {
		p = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
		if (memcmp(p, mapped, sizeof(mapped)) != 0) {
			for (int i = 0; i < 16; i++)
				a = a << 8 | p[i];
			return ivs_has(&n->v6, a);
		}
		p += 12;
	} else {
		return false;
	}
	return ivs_has(&n->v4, (u128)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
				      (uint32_t)p[2] << 8 | p[3]));
}
