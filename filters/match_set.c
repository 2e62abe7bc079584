/*
 * filters/match_set — hashed sets of names for the matchers (prog.h).
 *
 * Entries are stored lower case in one open-addressing table; a lookup
 * hashes the value with its ASCII case folded as it goes, so nothing is
 * copied and no length is too long to look up.  A "*.suffix" entry is
 * stored as ".suffix", and a domain is looked up once whole and once per
 * dot (".b.example", ".example"): a handful of probes whatever the set's
 * size.  An address set keeps its "@domain" entries in a domain set of its
 * own.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "filters/prog.h"

struct flt_slot {
	uint64_t hash;
	uint32_t off; /* into names; 0 marks a free slot (names[0] is unused) */
	uint32_t len;
};

struct flt_set {
	enum flt_set_kind kind;
	struct flt_slot *slots;
	uint32_t mask; /* slot count - 1 */
	uint32_t count;
	char *names;
	size_t names_len, names_cap;
	struct flt_set *at; /* FLT_SET_ADDRS: the "@domain" entries */
};

static inline unsigned char fold(unsigned char ch)
{
	return ch >= 'A' && ch <= 'Z' ? (unsigned char)(ch + 32) : ch;
}

static uint64_t hash_folded(const char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */

	for (size_t i = 0; i < n; i++)
		h = (h ^ fold((unsigned char)p[i])) * 0x100000001b3ull;
	return h;
}

static bool eq_folded(const char *entry, const char *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)entry[i] != fold((unsigned char)v[i]))
			return false;
	return true;
}

struct flt_set *flt_set_new(enum flt_set_kind kind, uint32_t hint)
{
	struct flt_set *s = calloc(1, sizeof(*s));
	uint32_t n = 16;

	if (!s)
		return NULL;
	while (n < hint * 2 && n < (1u << 30))
		n <<= 1;
	s->kind = kind;
	s->slots = calloc(n, sizeof(*s->slots));
	s->mask = n - 1;
	s->names_cap = 256;
	s->names = malloc(s->names_cap);
	s->names_len = 1;
	if (kind == FLT_SET_ADDRS)
		s->at = flt_set_new(FLT_SET_DOMAINS, 16);
	if (!s->slots || !s->names || (kind == FLT_SET_ADDRS && !s->at)) {
		flt_set_free(s);
		return NULL;
	}
	return s;
}

void flt_set_free(struct flt_set *s)
{
	if (!s)
		return;
	flt_set_free(s->at);
	free(s->slots);
	free(s->names);
	free(s);
}

static const struct flt_slot *probe(const struct flt_set *s, const char *v, size_t n, uint64_t h)
{
	for (uint32_t i = (uint32_t)h & s->mask;; i = (i + 1) & s->mask) {
		const struct flt_slot *sl = &s->slots[i];

		if (!sl->off)
			return sl;
		if (sl->hash == h && sl->len == n && eq_folded(s->names + sl->off, v, n))
			return sl;
	}
}

static int grow(struct flt_set *s)
{
	uint32_t n = (s->mask + 1) * 2;
	struct flt_slot *old = s->slots, *v = calloc(n, sizeof(*v));

	if (!v)
		return -ENOMEM;
	for (uint32_t i = 0; i <= s->mask; i++) {
		uint32_t j = (uint32_t)old[i].hash & (n - 1);

		if (!old[i].off)
			continue;
		while (v[j].off)
			j = (j + 1) & (n - 1);
		v[j] = old[i];
	}
	free(old);
	s->slots = v;
	s->mask = n - 1;
	return 0;
}

/* The entry's name, then (when given) its value after the name's NUL. */
static int insert_kv(struct flt_set *s, const char *p, size_t n, const char *val, size_t vn)
{
	uint64_t h = hash_folded(p, n);
	struct flt_slot *sl;
	size_t need = n + 1 + vn + 1;

	if (n > UINT32_MAX / 2 || vn > UINT32_MAX / 2 || s->names_len + need > UINT32_MAX)
		return -ENOMEM;
	if ((s->count + 1) * 2 > s->mask + 1 && grow(s) < 0)
		return -ENOMEM;
	sl = (struct flt_slot *)probe(s, p, n, h);
	if (sl->off)
		return 0; /* already there */
	if (s->names_len + need > s->names_cap) {
		size_t cap = s->names_cap * 2 + need;
		char *names = realloc(s->names, cap);

		if (!names)
			return -ENOMEM;
		s->names = names;
		s->names_cap = cap;
	}
	for (size_t i = 0; i < n; i++)
		s->names[s->names_len + i] = (char)fold((unsigned char)p[i]);
	s->names[s->names_len + n] = '\0';
	if (vn)
		memcpy(s->names + s->names_len + n + 1, val, vn);
	s->names[s->names_len + n + 1 + vn] = '\0';
	sl->hash = h;
	sl->off = (uint32_t)s->names_len;
	sl->len = (uint32_t)n;
	s->names_len += need;
	s->count++;
	return 0;
}

static const struct flt_slot *find(const struct flt_set *s, const char *v, size_t n)
{
	const struct flt_slot *sl = probe(s, v, n, hash_folded(v, n));

	return sl->off ? sl : NULL;
}

/* Printable ASCII or UTF-8, no space: what a name in a set can be. */
static bool entry_chars_ok(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] <= ' ' || p[i] == 0x7f)
			return false;
	return true;
}

static int add_domain(struct flt_set *s, const char *p, size_t n, const char *val, size_t vn)
{
	if (n && p[n - 1] == '.')
		n--;
	if (n >= 2 && p[0] == '*' && p[1] == '.') {
		p++; /* stored as ".suffix" */
		n--;
		if (n < 2 || memchr(p + 1, '*', n - 1))
			return -EINVAL;
	} else if (n == 0 || memchr(p, '*', n)) {
		return -EINVAL;
	}
	if (memchr(p, '@', n)) /* an address where a domain belongs: never matches */
		return -EINVAL;
	if (p[n - 1] == '.' || memmem(p, n, "..", 2))
		return -EINVAL;
	return insert_kv(s, p, n, val, vn);
}

int flt_set_add_value(struct flt_set *s, const char *p, size_t n, const char *val, size_t vn)
{
	if (s->kind == FLT_SET_TEXT)
		return n ? insert_kv(s, p, n, val, vn) : -EINVAL;
	if (!entry_chars_ok(p, n))
		return -EINVAL;
	switch (s->kind) {
	case FLT_SET_TEXT:
	case FLT_SET_NAMES:
		return n ? insert_kv(s, p, n, val, vn) : -EINVAL;
	case FLT_SET_DOMAINS:
		return add_domain(s, p, n, val, vn);
	case FLT_SET_ADDRS:
		if (n == 2 && memcmp(p, "<>", 2) == 0)
			return insert_kv(s, "", 0, val, vn); /* the null sender */
		if (n && p[0] == '@')
			return add_domain(s->at, p + 1, n - 1, val, vn);
		if (n && (!memchr(p, '@', n) || p[n - 1] == '@'))
			return -EINVAL;
		return insert_kv(s, p, n, val, vn);
	}
	return -EINVAL;
}

int flt_set_add(struct flt_set *s, const char *p, size_t n)
{
	return flt_set_add_value(s, p, n, NULL, 0);
}

/* A domain, or one of its parent domains as a "*.suffix" entry: the
 * exact entry first, then the nearest parent. */
static const struct flt_slot *find_domain(const struct flt_set *s, const char *v, size_t n)
{
	const struct flt_slot *sl;

	if (n && v[n - 1] == '.')
		n--;
	if (n && v[0] != '.' && (sl = find(s, v, n))) /* ".x" is only a suffix entry */
		return sl;
	for (size_t i = 1; i < n; i++)
		if (v[i] == '.' && (sl = find(s, v + i, n - i)))
			return sl;
	return NULL;
}

/* The entry that holds v: for an address, itself, else its "@domain". */
static const struct flt_slot *lookup(const struct flt_set *s, const struct flt_set **in,
				     const char *v, size_t n)
{
	const struct flt_slot *sl;
	const char *at;

	*in = s;
	switch (s->kind) {
	case FLT_SET_TEXT:
	case FLT_SET_NAMES:
		return find(s, v, n);
	case FLT_SET_DOMAINS:
		return find_domain(s, v, n);
	case FLT_SET_ADDRS:
		if ((sl = find(s, v, n)))
			return sl;
		at = memrchr(v, '@', n);
		*in = s->at;
		return at && s->at->count ? find_domain(s->at, at + 1, n - (size_t)(at + 1 - v))
					  : NULL;
	}
	return NULL;
}

bool flt_set_has(const struct flt_set *s, const char *v, size_t n)
{
	const struct flt_set *in;

	return lookup(s, &in, v, n) != NULL;
}

const char *flt_set_value(const struct flt_set *s, const char *v, size_t n)
{
	const struct flt_set *in;
	const struct flt_slot *sl = lookup(s, &in, v, n);

	return sl ? in->names + sl->off + sl->len + 1 : NULL;
}

enum flt_set_kind flt_set_kind_of(const struct flt_set *s)
{
	return s->kind;
}
