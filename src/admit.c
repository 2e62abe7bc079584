/*
 * admit — the process-wide connection accounting (admit.h).
 *
 * The total and the per-client-IP counts are shared by all shards: the
 * kernel spreads one client's connections over every shard's socket.  The
 * per-IP table is a fixed open-addressing table sized at start; the spinlock
 * is held for a handful of instructions, never across a call.
 */
#include "admit.h"

#include <assert.h>
#include <ck_spinlock.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "log/log.h"

#define ADMIT_FD_SPARE 4096 /* outbound, spool, listeners, eventfds, files */
/* IPv6 clients are counted per /64 (RFC 6177: one site or subscriber). */
#define ADMIT_V6_PREFIX_LEN 64

struct ip_slot {
	uint8_t addr[16];
	uint32_t count;
};

static struct {
	_Atomic uint32_t total;
	uint32_t total_max;
	uint32_t per_ip_max;
	struct ip_slot *table;
	uint32_t mask;
	ck_spinlock_fas_t lock;
} g_conns = {.lock = CK_SPINLOCK_FAS_INITIALIZER};

/* Every connection is a descriptor, outbound ones too: raise the soft
 * limit as far as the hard one allows, or an accept fails with EMFILE long
 * before limits.connections is reached. */
static void admit_fd_limit(const struct rmx_config *cfg)
{
	rlim_t want = (rlim_t)cfg->limits.connections + ADMIT_FD_SPARE;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
		log_msg(LOG_WARN,
			"event=fd_limit limit=%llu wanted=%llu message=\"RLIMIT_NOFILE is below "
			"limits.connections plus spare descriptors\"",
			(unsigned long long)rl.rlim_cur, (unsigned long long)want);
}

int admit_init(const struct rmx_config *cfg)
{
	uint32_t n = 1024;

	while (n < cfg->limits.connections * 2u && n < (1u << 24))
		n <<= 1;
	g_conns.table = calloc(n, sizeof(g_conns.table[0]));
	if (!g_conns.table)
		return -ENOMEM;
	g_conns.mask = n - 1;
	g_conns.total_max = cfg->limits.connections;
	g_conns.per_ip_max = cfg->limits.connections_per_ip;
	admit_fd_limit(cfg);
	return 0;
}

/* The client a per-client limit counts: an IPv4 address, or an IPv6 /64.
 * One subscriber or site gets a whole /64 (RFC 6177), so counting /128s
 * would give it 2^64 allowances. */
static void ip_key(const struct sockaddr_storage *ss, uint8_t key[16])
{
	memset(key, 0, 16);
	if (ss->ss_family == AF_INET) {
		key[10] = key[11] = 0xff; /* v4-mapped, so both families share keys */
		memcpy(key + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
	} else if (ss->ss_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;

		/* A dual-stack socket shows IPv4 clients v4-mapped: keep all 128
		 * bits, or a whole IPv4 /0 would share one key. */
		memcpy(key, a, IN6_IS_ADDR_V4MAPPED(a) ? 16 : ADMIT_V6_PREFIX_LEN / 8);
	}
	static_assert(ADMIT_V6_PREFIX_LEN % 8 == 0, "a whole-byte prefix");
}

static uint32_t ip_hash(const uint8_t key[16])
{
	uint64_t a, b;

	memcpy(&a, key, 8);
	memcpy(&b, key + 8, 8);
	return (uint32_t)(((a * 0x9e3779b97f4a7c15ull) ^ (b * 0xc2b2ae3d27d4eb4full)) >> 32);
}

/* Count one more connection of this client.  Returns NULL, or the reason it is
 * refused ("connections" / "connections_per_ip"). */
const char *admit_take(const struct sockaddr_storage *ss)
{
	uint8_t key[16];
	uint32_t i;
	const char *why = NULL;

	if (atomic_fetch_add(&g_conns.total, 1) >= g_conns.total_max) {
		atomic_fetch_sub(&g_conns.total, 1);
		return "connections";
	}
	ip_key(ss, key);
	ck_spinlock_fas_lock(&g_conns.lock);
	for (i = ip_hash(key) & g_conns.mask;; i = (i + 1) & g_conns.mask) {
		struct ip_slot *s = &g_conns.table[i];

		if (s->count == 0 || memcmp(s->addr, key, 16) == 0) {
			if (s->count >= g_conns.per_ip_max) {
				why = "connections_per_ip";
			} else {
				memcpy(s->addr, key, 16);
				s->count++;
			}
			break;
		}
	}
	ck_spinlock_fas_unlock(&g_conns.lock);
	if (why)
		atomic_fetch_sub(&g_conns.total, 1);
	return why;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
static void ip_table_remove(uint32_t i)
{
	uint32_t j = i;

	for (;;) {
		j = (j + 1) & g_conns.mask;
		if (g_conns.table[j].count == 0)
			break;
		uint32_t home = ip_hash(g_conns.table[j].addr) & g_conns.mask;
		/* Move j back into the hole at i unless its home lies in (i, j]. */
		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			g_conns.table[i] = g_conns.table[j];
			i = j;
		}
	}
	memset(&g_conns.table[i], 0, sizeof(g_conns.table[i]));
}

void admit_release(const struct sockaddr_storage *ss)
{
	uint8_t key[16];

	ip_key(ss, key);
	ck_spinlock_fas_lock(&g_conns.lock);
	for (uint32_t i = ip_hash(key) & g_conns.mask;; i = (i + 1) & g_conns.mask) {
		struct ip_slot *s = &g_conns.table[i];

		assert(s->count > 0);
		if (memcmp(s->addr, key, 16) == 0) {
			if (--s->count == 0)
				ip_table_remove(i);
			break;
		}
	}
	ck_spinlock_fas_unlock(&g_conns.lock);
	atomic_fetch_sub(&g_conns.total, 1);
}
