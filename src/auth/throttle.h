/*
 * auth/throttle — failed AUTH attempts per client address ( * section 4: "failures counted per client IP with a growing delay and a
 * limit (535 5.7.8, then 421)").  This is the data structure; the session
 * applies it:
 *     at AUTH:            check(); blocked -> "421 4.7.0 Too many
 *                         authentication failures" and close.
 *     after a failure:    fail(); wait delay_ms on a ring timer, answer
 *                         535 5.7.8; if now blocked, 421 and close.
 * A success does not reset the count: otherwise one valid account would
 * launder guesses against all the others from the same address.  Counts
 * fade instead: an address is forgotten window_ms after its last failure.
 *
 * delay_ms = base_delay_ms * 2^(failures - 1), capped at max_delay_ms (0
 * without failures); blocked = failures >= failures_max.
 *
 * Keys: an IPv4 address (also when it arrives v4-mapped in an AF_INET6
 * sockaddr), or the first v6_prefix_len bits of an IPv6 address, because
 * one IPv6 client owns a whole /64 and would otherwise get a fresh count
 * per address.
 *
 * Table: fixed size, allocated at create, never grows.  entries is split
 * into buckets of AUTH_THROTTLE_WAYS entries; an address hashes (keyed
 * with a random seed, so a client cannot pick addresses that share a
 * bucket) to one bucket and lives in one of its ways: lookups touch one
 * bucket, O(1).  A new address takes a free or expired way, else evicts
 * the way whose last failure is oldest: bounded memory wins over perfect
 * memory when someone sprays from many addresses; each evicted address
 * simply starts again from zero.
 *
 * Threads: one table shared by all shards, under striped locks (a lock per
 * group of buckets).  Per-shard tables were rejected: SO_REUSEPORT spreads
 * one client's connections over every shard by the 4-tuple hash, so
 * per-shard counts would multiply the limit by the number of shards.  The
 * locks are spin locks around a few dozen instructions (no system call, no
 * allocation), so a shard never sleeps on them; failures are rare events,
 * so contention is too.  Any thread may call check/fail/reset; create and
 * destroy belong to the main thread.
 *
 * Time: the caller passes a monotonic now_ms (the shard's loop clock), so
 * the table is deterministic under test.
 *
 * Limits: AUTH_THROTTLE_ENTRIES_MAX entries (32 octets each),
 * AUTH_THROTTLE_FAILURES_MAX for failures_max; the count saturates.
 */
#ifndef RMX_AUTH_THROTTLE_H
#define RMX_AUTH_THROTTLE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#define AUTH_THROTTLE_WAYS	   4
#define AUTH_THROTTLE_ENTRIES_MAX  (1u << 22)
#define AUTH_THROTTLE_FAILURES_MAX 1000

struct auth_throttle;

struct auth_throttle_config {
	uint32_t entries;	/* power of two, AUTH_THROTTLE_WAYS..ENTRIES_MAX */
	uint32_t base_delay_ms; /* delay after the first failure */
	uint32_t max_delay_ms;	/* cap, >= base_delay_ms */
	uint32_t failures_max;	/* 1..AUTH_THROTTLE_FAILURES_MAX: from here on, blocked */
	uint32_t window_ms;	/* >= 1: forget an address this long after its last failure */
	uint8_t v6_prefix_len;	/* 32..128; 64 is the usual choice */
};

struct auth_throttle_verdict {
	uint32_t failures; /* within the window, this one included for fail() */
	uint32_t delay_ms; /* to wait before answering */
	bool blocked;	   /* answer 421 and close */
};

/* Returns 0 and *out, -EINVAL for a bad config, -ENOMEM, or the errno of
 * getrandom. */
int auth_throttle_create(const struct auth_throttle_config *cfg, struct auth_throttle **out);
void auth_throttle_destroy(struct auth_throttle *t);

/* The standing of sa's address now, without changing it.  Returns 0, or
 * -EAFNOSUPPORT for an address that is neither IPv4 nor IPv6 (v zeroed). */
int auth_throttle_check(struct auth_throttle *t, const struct sockaddr *sa, uint64_t now_ms,
			struct auth_throttle_verdict *v);

/* Count one failure for sa's address at now_ms and return the new
 * standing.  Returns as check. */
int auth_throttle_fail(struct auth_throttle *t, const struct sockaddr *sa, uint64_t now_ms,
		       struct auth_throttle_verdict *v);

/* Forget sa's address (an operator's "unblock").  Returns as check. */
int auth_throttle_reset(struct auth_throttle *t, const struct sockaddr *sa);

#endif
