/*
 * filters/match_cidr — sets of networks for client_ip (prog.h).
 *
 * Each network is an interval of addresses; once all are added they are
 * sorted and merged into disjoint intervals, one array per family, and a
 * lookup is one binary search: 10,000 networks cost 14 compares.  (Only
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

struct iv4 {
	uint32_t lo, hi;
};
struct iv6 {
	u128 lo, hi;
};

struct flt_cidrs {
	struct iv4 *v4;
	struct iv6 *v6;
	uint32_t n4, n6, cap4, cap6;
};

struct flt_cidrs *flt_cidrs_new(void)
{
	return calloc(1, sizeof(struct flt_cidrs));
}

void flt_cidrs_free(struct flt_cidrs *n)
{
	if (!n)
		return;
	free(n->v4);
	free(n->v6);
	free(n);
}

static int grow(void **v, uint32_t *cap, uint32_t count, size_t size)
{
	uint32_t c = *cap ? *cap * 2 : 16;
	void *p;

	if (count < *cap)
		return 0;
	p = realloc(*v, (size_t)c * size);
	if (!p)
		return -ENOMEM;
	*v = p;
	*cap = c;
	return 0;
}

int flt_cidrs_add(struct flt_cidrs *n, const char *s, size_t len)
{
	struct config_cidr net;
	char text[INET6_ADDRSTRLEN + 8]; /* the parser reads to a NUL */
	int rc;

	if (len >= sizeof(text) || memchr(s, '\0', len))
		return -EINVAL;
	memcpy(text, s, len);
	text[len] = '\0';
	rc = config_cidr_from_string(text, len, &net);

	if (rc < 0)
		return rc;
	if (net.family == AF_INET) {
		uint32_t a = (uint32_t)net.addr[0] << 24 | (uint32_t)net.addr[1] << 16 |
			     (uint32_t)net.addr[2] << 8 | net.addr[3];
		uint32_t host = net.prefix_len >= 32 ? 0 : (UINT32_MAX >> net.prefix_len);

		if (grow((void **)&n->v4, &n->cap4, n->n4, sizeof(*n->v4)) < 0)
			return -ENOMEM;
		n->v4[n->n4++] = (struct iv4){a, a | host};
		return 0;
	}
	u128 a = 0, host;

	for (int i = 0; i < 16; i++)
		a = a << 8 | net.addr[i];
	host = net.prefix_len >= 128 ? 0 : (~(u128)0 >> net.prefix_len);
	if (grow((void **)&n->v6, &n->cap6, n->n6, sizeof(*n->v6)) < 0)
		return -ENOMEM;
	n->v6[n->n6++] = (struct iv6){a, a | host};
	return 0;
}

static int cmp4(const void *a, const void *b)
{
	const struct iv4 *x = a, *y = b;

	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static int cmp6(const void *a, const void *b)
{
	const struct iv6 *x = a, *y = b;

	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sort by start, then fold each interval into the previous one when they
 * overlap or touch. */
int flt_cidrs_done(struct flt_cidrs *n)
{
	uint32_t k = 0;

	if (n->n4)
		qsort(n->v4, n->n4, sizeof(*n->v4), cmp4);
	for (uint32_t i = 0; i < n->n4; i++) {
		if (k && (n->v4[k - 1].hi == UINT32_MAX || n->v4[i].lo <= n->v4[k - 1].hi + 1)) {
			if (n->v4[i].hi > n->v4[k - 1].hi)
				n->v4[k - 1].hi = n->v4[i].hi;
			continue;
		}
		n->v4[k++] = n->v4[i];
	}
	n->n4 = k;
	k = 0;
	if (n->n6)
		qsort(n->v6, n->n6, sizeof(*n->v6), cmp6);
	for (uint32_t i = 0; i < n->n6; i++) {
		if (k && (n->v6[k - 1].hi == ~(u128)0 || n->v6[i].lo <= n->v6[k - 1].hi + 1)) {
			if (n->v6[i].hi > n->v6[k - 1].hi)
				n->v6[k - 1].hi = n->v6[i].hi;
			continue;
		}
		n->v6[k++] = n->v6[i];
	}
	n->n6 = k;
	return 0;
}

static bool has4(const struct flt_cidrs *n, uint32_t a)
{
	uint32_t lo = 0, hi = n->n4;

	while (lo < hi) { /* the first interval starting after a */
		uint32_t mid = lo + (hi - lo) / 2;

		if (n->v4[mid].lo <= a)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo > 0 && a <= n->v4[lo - 1].hi;
}

static bool has6(const struct flt_cidrs *n, u128 a)
{
	uint32_t lo = 0, hi = n->n6;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (n->v6[mid].lo <= a)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo > 0 && a <= n->v6[lo - 1].hi;
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
			return has6(n, a);
		}
		p += 12;
	} else {
		return false;
	}
	return has4(n, (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
}
