/*
 * dns — asynchronous MX resolution (RFC 5321 5.1, RFC 7505 null MX) with
 * c-ares, whose sockets and clock are driven by one shard's io_uring.
 *
 * Owns: one c-ares channel; a table of the channel's sockets, each with at
 * most one one-shot IORING_OP_POLL_ADD in flight; one IORING_OP_TIMEOUT that
 * stands for c-ares's retransmit/timeout clock (armed from ares_timeout(), so
 * the caller needs no timer of its own); a fixed table of DNS_QUERIES_MAX MX
 * resolutions.  dns_new() allocates everything of ours; c-ares mallocs per
 * DNS request internally (its design, not ours to change).
 *
 * Thread: the thread that owns the ring, only.  After dns_new() nothing here
 * blocks: c-ares sockets are non-blocking and are only read or written when
 * a poll completion says they are ready, and no lookup ever touches
 * /etc/hosts (lookups are DNS only).  dns_new() itself reads
 * /etc/resolv.conf (c-ares does, at init): call it at start-up.
 *
 * Ring: the ops below (user_data op byte; slot = socket index, gen = that
 * socket's generation) are submitted through ring_sqe() and left for the
 * caller's next submit.  Every completion whose op is in the resolver's
 * range of the op registry (ring/ops.h, dns_op_owned()) must go to
 * dns_complete(); a completion for a socket that was closed and replaced is
 * recognised by its generation and dropped.
 *
 * Callbacks: the result callback fires from dns_complete() (or from
 * dns_shutdown()), never from dns_resolve_mx(): even an answer c-ares has
 * ready at once (a malformed name, no server) is handed over by a NOP
 * completion.  The result and everything it points to live until the
 * callback returns; copy what you keep.  A callback may call
 * dns_resolve_mx() again, never dns_shutdown() or dns_free().
 *
 * Result, RFC 5321 5.1: the MX records by preference (equal preferences in
 * random order, "to spread the load"); no MX records (NODATA) means the
 * implicit MX, the domain itself at preference 0; an MX set that is only
 * the root "." is a null MX (RFC 7505 3) and the caller bounces with
 * 556 5.1.10 (RFC 7505 4); a "." target among real hosts is skipped.
 * Then each host's A and AAAA records are looked up (two queries, so one
 * family timing out is not mistaken for "no such address").  Hosts whose lookup failed stay in the list, marked, so the
 * caller can log them and go on with the next one.  The caller still has
 * to drop itself and less preferred hosts if it finds its own name in the
 * list (RFC 5321 5.1); this module does not know our names.
 *
 * Limits (named bounds):
 *   DNS_QUERIES_MAX  MX resolutions in flight; beyond it dns_resolve_mx()
 *                    returns -EAGAIN (the caller defers and tries later).
 *   DNS_MX_MAX       hosts kept per domain (the most preferred ones;
 *                    mx_truncated says some were dropped).
 *   DNS_ADDR_MAX     addresses kept per host, IPv4 and IPv6 interleaved.
 *   DNS_SERVERS_MAX  name servers in the servers list.
 *   DNS_NAME_MAX     characters in a domain or host name (RFC 1035 2.3.4:
 *                    255 octets on the wire is 253 in text).
 *
 * Timeouts: timeout_ms is c-ares's timeout for one try; c-ares doubles it on
 * each round over the servers, and gives up after `tries` tries in all.
 * With one server, one DNS request takes at most
 * timeout_ms * (2^tries - 1); an MX resolution is two rounds of requests
 * (MX, then A+AAAA of every host in parallel).
 */
#ifndef RMX_DNS_H
#define RMX_DNS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ring/ops.h"
#include "ring/ring.h"

#define DNS_QUERIES_MAX 64
#define DNS_MX_MAX	16
#define DNS_ADDR_MAX	8
#define DNS_SERVERS_MAX 8
#define DNS_NAME_MAX	253
#define DNS_WHY_MAX	160

/* Ring op codes (user_data op byte) of this module's completions, inside
 * its range of the op registry (ring/ops.h); all go to dns_complete(). */
enum {
	DNS_OP_POLL = OPS_DNS_FIRST, /* readiness of a c-ares socket; slot/gen name it */
	DNS_OP_TIMER,		     /* c-ares's clock; gen names the arming */
	DNS_OP_CANCEL,		     /* a cancel of one of ours; nothing to do but count */
	DNS_OP_WAKE,		     /* NOP: deliver results that were ready at once */
	DNS_OP_END,
};
static_assert(DNS_OP_END - 1 <= OPS_DNS_LAST, "dns ops inside the resolver's range");

static inline bool dns_op_owned(uint8_t op)
{
	return ops_owner(op) == OPS_OWNER_DNS;
}

enum dns_status {
	DNS_OK = 0,   /* at least one host has addresses (per host: it has) */
	DNS_NULLMX,   /* RFC 7505: the domain accepts no mail; permanent */
	DNS_NXDOMAIN, /* the name does not exist; permanent */
	DNS_NOADDR,   /* names exist but no address at all; permanent (5.1) */
	DNS_TEMPFAIL, /* SERVFAIL, REFUSED, timeout, shutdown: try again later */
};

const char *dns_status_name(enum dns_status s);

/* A connectable address with port 0: the caller sets the port. */
struct dns_addr {
	union {
		struct sockaddr sa;
		struct sockaddr_in v4;
		struct sockaddr_in6 v6;
	};
};

struct dns_mx_host {
	uint16_t preference;
	enum dns_status status; /* DNS_OK, or why this host is unusable */
	uint32_t addr_count;
	bool addr_truncated; /* it had more than DNS_ADDR_MAX addresses */
	char name[DNS_NAME_MAX + 1];
	struct dns_addr addrs[DNS_ADDR_MAX];
};

struct dns_mx_result {
	enum dns_status status;
	bool implicit_mx;  /* no MX records: hosts[0] is the domain itself */
	bool mx_truncated; /* more than DNS_MX_MAX MX hosts: the best kept */
	uint32_t host_count;
	const char *domain;    /* as given to dns_resolve_mx, without a final dot */
	char why[DNS_WHY_MAX]; /* for logs and DSN diagnostics; "" when OK */
	struct dns_mx_host hosts[DNS_MX_MAX];
};

typedef void (*dns_mx_cb)(void *arg, const struct dns_mx_result *res);

struct dns;

/* Create a resolver on ring r.  servers: "ip[:port],[ipv6]:port,..." (at most
 * DNS_SERVERS_MAX), or NULL/"" for the servers of /etc/resolv.conf.  Search
 * domains, ndots, rotate and /etc/hosts never apply: mail domains are fully
 * qualified.  timeout_ms and tries as described above (both >= 1).  Start-up
 * only.  0 or -errno with a one-line reason in why. */
int dns_new(struct dns **out, struct ring *r, const char *servers, uint32_t timeout_ms,
	    uint32_t tries, char *why, size_t why_len);

/* Start resolving the mail exchangers of domain (copied; a final dot is
 * ignored).  cb(arg, result) fires exactly once, later, from dns_complete()
 * or dns_shutdown().  0; -EAGAIN when DNS_QUERIES_MAX resolutions are in
 * flight; -EINVAL for a name that cannot be a domain (empty, too long, an
 * empty or over-long label, or bytes outside printable ASCII): no callback
 * then; -ESHUTDOWN after dns_shutdown(). */
int dns_resolve_mx(struct dns *d, const char *domain, dns_mx_cb cb, void *arg);

/* One completion of ours (dns_op_owned(ring_ud_op(ud))).  Runs c-ares on the
 * socket or clock it names, re-arms what c-ares still wants, then fires the
 * callbacks of every resolution that finished. */
void dns_complete(struct dns *d, uint64_t ud, int32_t res);

/* Resolutions in flight (started, callback not yet fired). */
uint32_t dns_active(const struct dns *d);

/* Stop: c-ares is destroyed, every resolution still in flight ends with
 * DNS_TEMPFAIL "resolver shut down" (callbacks fire from here: so their
 * owners can defer and release what they hold), and every poll and the
 * timer are cancelled.  Idempotent. */
void dns_shutdown(struct dns *d);

/* Completions of ours are still to come (polls, cancels, the timer).  After
 * dns_shutdown(), keep passing them to dns_complete() until this is false. */
bool dns_busy(const struct dns *d);

/* Free the resolver (shutting it down first if needed).  Call it when
 * dns_busy() is false, or right before ring_exit(): completions still in
 * the ring must then never reach dns_complete(). */
void dns_free(struct dns *d);

#endif
