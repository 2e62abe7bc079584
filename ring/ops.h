/* ring/ops.h - the op registry: which module each ring completion goes to.
 *
 * Every SQE a shard submits carries user_data = ring_ud(op, aux, gen, slot)
 * (ring.h).  The op byte says which module submitted it, and so which one
 * its completion goes to.  Each module owns one range of op values, fixed
 * here and nowhere else; its own header names the ops inside the range and
 * asserts (static_assert) that they stay inside it.  The ranges are
 * asserted disjoint below, so two modules can never share a value, and the
 * shard's dispatch (one switch on ops_owner()) aborts on a value no module
 * owns: a completion nobody submitted is a broken program, not input.
 *
 * Owners are named by module, not by protocol: this header knows nothing of
 * what the ops do.  Adding a module: take the next free range, add an owner,
 * extend ops_owner(), and route the owner in the shard's dispatch.
 *
 * Header only; any thread. */
#ifndef RINGMX_RING_OPS_H
#define RINGMX_RING_OPS_H

#include <assert.h>
#include <stdint.h>

/* Op 0 is never submitted: a zeroed user_data is recognised as a bug.
 * Plain constants (not an enum), so modules may compare their own op enums
 * against them. */
#define OPS_SHARD_FIRST 0x01 /* the shard: listeners, inbound connections, timers */
#define OPS_SHARD_LAST	0x3f
#define OPS_SPOOL_FIRST 0x40 /* queue/spool.h */
#define OPS_SPOOL_LAST	0x4f
#define OPS_DNS_FIRST	0x50 /* src/dns/dns.h */
#define OPS_DNS_LAST	0x5f
#define OPS_DLV_FIRST	0x60 /* src/deliver/deliver.h */
#define OPS_DLV_LAST	0x6f
#define OPS_NET_FIRST	0x70 /* src/net/net.h: every table's connections */
#define OPS_NET_LAST	0x7f

static_assert(OPS_SHARD_FIRST > 0 && OPS_SHARD_FIRST <= OPS_SHARD_LAST, "shard range");
static_assert(OPS_SHARD_LAST < OPS_SPOOL_FIRST && OPS_SPOOL_FIRST <= OPS_SPOOL_LAST,
	      "spool range after the shard's");
static_assert(OPS_SPOOL_LAST < OPS_DNS_FIRST && OPS_DNS_FIRST <= OPS_DNS_LAST,
	      "dns range after the spool's");
static_assert(OPS_DNS_LAST < OPS_DLV_FIRST && OPS_DLV_FIRST <= OPS_DLV_LAST,
	      "delivery range after the resolver's");
static_assert(OPS_DLV_LAST < OPS_NET_FIRST && OPS_NET_FIRST <= OPS_NET_LAST,
	      "net range after delivery's");
static_assert(OPS_NET_LAST <= UINT8_MAX, "the op is one byte of user_data");

enum ops_owner {
	OPS_OWNER_NONE = 0, /* no module: abort */
	OPS_OWNER_SHARD,
	OPS_OWNER_SPOOL,
	OPS_OWNER_DNS,
	OPS_OWNER_DLV,
	OPS_OWNER_NET,
};

static inline enum ops_owner ops_owner(uint8_t op)
{
	if (op >= OPS_SHARD_FIRST && op <= OPS_SHARD_LAST)
		return OPS_OWNER_SHARD;
	if (op >= OPS_SPOOL_FIRST && op <= OPS_SPOOL_LAST)
		return OPS_OWNER_SPOOL;
	if (op >= OPS_DNS_FIRST && op <= OPS_DNS_LAST)
		return OPS_OWNER_DNS;
	if (op >= OPS_DLV_FIRST && op <= OPS_DLV_LAST)
		return OPS_OWNER_DLV;
	if (op >= OPS_NET_FIRST && op <= OPS_NET_LAST)
		return OPS_OWNER_NET;
	return OPS_OWNER_NONE;
}

#endif
