/* auth/throttle — per-address AUTH failure accounting; contract in throttle.h. */
#include "auth/throttle.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* Locks are striped: a bucket uses stripe (bucket % THROTTLE_STRIPES).
 * 64 stripes keep two shards from meeting on one lock unless their
 * clients hash to the same 1/64 of the table. */
#define THROTTLE_STRIPES 64
#define THROTTLE_KEY_LEN 16

struct throttle_ent {
	uint8_t key[THROTTLE_KEY_LEN]; /* IPv6 form; IPv4 as ::ffff:a.b.c.d */
	uint64_t last_ms;	       /* time of the last failure */
	uint32_t failures;	       /* 0: the way is free */
	uint32_t unused;
};

static_assert(sizeof(struct throttle_ent) == 32, "two entries per half cache line");
static_assert((AUTH_THROTTLE_WAYS & (AUTH_THROTTLE_WAYS - 1)) == 0, "ways: power of two");

/* Padded to a cache line so that two stripes never share one. */
struct throttle_stripe {
	atomic_flag lock;
	char pad[64 - sizeof(atomic_flag)];
};

struct auth_throttle {
	struct auth_throttle_config cfg;
	uint64_t seed[2];
	uint32_t bucket_mask;
	struct throttle_ent *ents; /* buckets of AUTH_THROTTLE_WAYS */
	struct throttle_stripe stripe[THROTTLE_STRIPES];
};

static bool throttle_config_ok(const struct auth_throttle_config *c)
{
	return c->entries >= AUTH_THROTTLE_WAYS && c->entries <= AUTH_THROTTLE_ENTRIES_MAX &&
	       (c->entries & (c->entries - 1)) == 0 && c->base_delay_ms <= c->max_delay_ms &&
	       c->failures_max >= 1 && c->failures_max <= AUTH_THROTTLE_FAILURES_MAX &&
	       c->window_ms >= 1 && c->v6_prefix_len >= 32 && c->v6_prefix_len <= 128;
}

int auth_throttle_create(const struct auth_throttle_config *cfg, struct auth_throttle **out)
{
	assert(cfg != NULL && out != NULL);
	*out = NULL;
	if (!throttle_config_ok(cfg))
		return -EINVAL;
	struct auth_throttle *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return -ENOMEM;
	t->ents = calloc(cfg->entries, sizeof(*t->ents));
	if (t->ents == NULL) {
		free(t);
		return -ENOMEM;
	}
	/* A random key for the bucket hash: clients choose their addresses
	 * (an IPv6 /48 has 2^16 /64s), and must not be able to choose a set
	 * that lands in one bucket and pushes someone's record out. */
	if (getrandom(t->seed, sizeof(t->seed), 0) != (ssize_t)sizeof(t->seed)) {
		int rc = errno ? -errno : -EIO;
		free(t->ents);
		free(t);
		return rc;
	}
	t->cfg = *cfg;
	t->bucket_mask = cfg->entries / AUTH_THROTTLE_WAYS - 1;
	for (int i = 0; i < THROTTLE_STRIPES; i++)
		atomic_flag_clear(&t->stripe[i].lock);
	*out = t;
	return 0;
}

void auth_throttle_destroy(struct auth_throttle *t)
{
	if (t == NULL)
		return;
	free(t->ents);
	free(t);
}

static int throttle_key(const struct auth_throttle *t, const struct sockaddr *sa,
			uint8_t key[THROTTLE_KEY_LEN])
{
	memset(key, 0, THROTTLE_KEY_LEN);
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &in->sin_addr, 4);
		return 0;
	}
	if (sa->sa_family != AF_INET6)
		return -EAFNOSUPPORT;
	const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
	const uint8_t *a = in6->sin6_addr.s6_addr;
	if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
		/* A dual-stack listener sees IPv4 clients this way: one client,
		 * one key, whichever socket it came through. */
		memcpy(key, a, THROTTLE_KEY_LEN);
		return 0;
	}
	unsigned bits = t->cfg.v6_prefix_len;
	memcpy(key, a, bits / 8);
	if (bits % 8 != 0)
		key[bits / 8] = a[bits / 8] & (uint8_t)(0xff << (8 - bits % 8));
	return 0;
}

/* A 64-bit finalizer (the splitmix64 constants): keyed by the seed, fast,
 * and well mixed; not a MAC, which a bucket choice does not need. */
static uint64_t throttle_mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9u;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebu;
	return x ^ (x >> 31);
}

static uint32_t throttle_bucket(const struct auth_throttle *t, const uint8_t key[THROTTLE_KEY_LEN])
{
	uint64_t hi, lo;
	memcpy(&hi, key, 8);
	memcpy(&lo, key + 8, 8);
	return (uint32_t)throttle_mix(throttle_mix(hi ^ t->seed[0]) ^ lo ^ t->seed[1]) &
	       t->bucket_mask;
}

static void throttle_lock(struct throttle_stripe *s)
{
	while (atomic_flag_test_and_set_explicit(&s->lock, memory_order_acquire)) {
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	}
}

static void throttle_unlock(struct throttle_stripe *s)
{
	atomic_flag_clear_explicit(&s->lock, memory_order_release);
}

/* Failures of e still count at now.  Shards keep their own loop clocks,
 * so now may be a little behind a time another shard stored: that is
 * "within the window", never a wrap-around. */
static bool throttle_live(const struct auth_throttle *t, const struct throttle_ent *e, uint64_t now)
{
	return e->failures != 0 && (now < e->last_ms || now - e->last_ms < t->cfg.window_ms);
}

static struct throttle_ent *throttle_find(struct throttle_ent *b,
					  const uint8_t key[THROTTLE_KEY_LEN])
{
	for (int i = 0; i < AUTH_THROTTLE_WAYS; i++) {
		if (b[i].failures != 0 && memcmp(b[i].key, key, THROTTLE_KEY_LEN) == 0)
			return &b[i];
	}
	return NULL;
}

/* The way a new address takes: free or expired, else the oldest. */
static struct throttle_ent *throttle_victim(const struct auth_throttle *t, struct throttle_ent *b,
					    uint64_t now)
{
	struct throttle_ent *old = &b[0];
	for (int i = 0; i < AUTH_THROTTLE_WAYS; i++) {
		if (!throttle_live(t, &b[i], now))
			return &b[i];
		if (b[i].last_ms < old->last_ms)
			old = &b[i];
	}
	return old;
}

static void throttle_verdict(const struct auth_throttle_config *c, uint32_t failures,
			     struct auth_throttle_verdict *v)
{
	v->failures = failures;
	v->blocked = failures >= c->failures_max;
	v->delay_ms = 0;
	if (failures == 0)
		return;
	uint32_t shift = failures - 1;
	uint64_t d = shift >= 32 ? UINT64_MAX : (uint64_t)c->base_delay_ms << shift;
	v->delay_ms = d > c->max_delay_ms ? c->max_delay_ms : (uint32_t)d;
}

/* Run op on the bucket of sa's address under its stripe lock. */
enum throttle_op { THROTTLE_CHECK, THROTTLE_FAIL, THROTTLE_RESET };

static int throttle_do(struct auth_throttle *t, const struct sockaddr *sa, uint64_t now,
		       enum throttle_op op, struct auth_throttle_verdict *v)
{
	assert(t != NULL && sa != NULL);
	uint8_t key[THROTTLE_KEY_LEN];
	int rc = throttle_key(t, sa, key);
	if (rc != 0) {
		if (v != NULL)
			*v = (struct auth_throttle_verdict){0};
		return rc;
	}
	uint32_t bucket = throttle_bucket(t, key);
	struct throttle_ent *b = &t->ents[(size_t)bucket * AUTH_THROTTLE_WAYS];
	struct throttle_stripe *s = &t->stripe[bucket % THROTTLE_STRIPES];
	throttle_lock(s);
	struct throttle_ent *e = throttle_find(b, key);
	uint32_t failures = e != NULL && throttle_live(t, e, now) ? e->failures : 0;
	if (op == THROTTLE_FAIL) {
		if (failures == 0) {
			e = e != NULL ? e : throttle_victim(t, b, now);
			memcpy(e->key, key, THROTTLE_KEY_LEN);
			e->last_ms = now;
		}
		failures += failures < UINT32_MAX;
		e->failures = failures;
		e->last_ms = now > e->last_ms ? now : e->last_ms;
	} else if (op == THROTTLE_RESET && e != NULL) {
		memset(e, 0, sizeof(*e));
	}
	throttle_unlock(s);
	assert(op != THROTTLE_FAIL || failures >= 1);
	if (v != NULL)
		throttle_verdict(&t->cfg, failures, v);
	return 0;
}

int auth_throttle_check(struct auth_throttle *t, const struct sockaddr *sa, uint64_t now_ms,
			struct auth_throttle_verdict *v)
{
	assert(v != NULL);
	return throttle_do(t, sa, now_ms, THROTTLE_CHECK, v);
}

int auth_throttle_fail(struct auth_throttle *t, const struct sockaddr *sa, uint64_t now_ms,
		       struct auth_throttle_verdict *v)
{
	assert(v != NULL);
	return throttle_do(t, sa, now_ms, THROTTLE_FAIL, v);
}

int auth_throttle_reset(struct auth_throttle *t, const struct sockaddr *sa)
{
	return throttle_do(t, sa, 0, THROTTLE_RESET, NULL);
}
