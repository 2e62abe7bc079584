/*
 * net_serve_testlib — a real ring with provided and user buffers, a served
 * net_table on it (net_table_served), accepted loopback sockets and a
 * recording protocol, for the unit tests of net's served mode
 * (src/net/net_serve*.c, net_tls_serve.c).
 *
 * The test plays the shard: nst_turn() submits, waits for completions,
 * hands each to net_complete_cqe() with its flags (a served recv's buffer
 * id is there) and then calls net_rearm_starved() once, as shard_loop does.
 * The peer is the test itself, on the client end of a real loopback TCP
 * connection.  The bounds of net_testlib.h apply (turns, wall clock).
 */
#ifndef RMX_TESTS_NET_SERVE_TESTLIB_H
#define RMX_TESTS_NET_SERVE_TESTLIB_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/net.h"
#include "net_testlib.h"
#include "ring/ring.h"

#define NST_LOG_MAX  1024
#define NST_PEER_MAX (1 << 20)

/* One letter per callback, in call order (runs of feeds are one letter). */
#define NST_EV_FEED	 'F'
#define NST_EV_TLS_READY 'T'
#define NST_EV_OVERRUN	 'O'
#define NST_EV_PEEK	 'P' /* early */
#define NST_EV_PEEK_NO	 'p' /* not early */
#define NST_EV_TIMER0	 '0'
#define NST_EV_TIMER1	 '1'
#define NST_EV_ERROR	 'E'
#define NST_EV_CLOSED	 'X'

struct nst_cfg {
	uint32_t nslots, nbufs, buf_size, inq_cap, out_cap, users;
};

struct nst {
	struct ring ring;
	bool ring_up;
	struct net_table *t;
	struct nst_cfg cfg;
	uint64_t now;
	int lfd;
	struct sockaddr_in addr;
	unsigned long turns;
	unsigned long stale; /* completions for a slot already reused or freed */
	uint32_t max_held;   /* kernel buffers out of the pool at the end of a turn */
	uint64_t wall_end;
	struct nsp *watch;
};

struct nsp;
/* Replaces the default feed (take up to budget): returns what it took. */
typedef size_t (*nsp_feed_fn)(struct nsp *r, const char *p, size_t len, uint16_t bid);
typedef void (*nsp_event_fn)(struct nsp *r);

/* The recording protocol. */
struct nsp {
	struct nst *x;
	struct net_conn *nc;
	int sfd; /* the served socket (the layer's), for FIONREAD */
	char log[NST_LOG_MAX + 1];
	size_t nlog;
	unsigned n[128];
	char *fed; /* every byte the protocol took, in order */
	size_t fed_len, fed_cap;
	size_t budget; /* bytes the default feed still takes (SIZE_MAX: all) */
	unsigned feeds;
	uint16_t first_bid, last_bid;
	size_t last_off; /* of the last feed's p in its buffer */
	bool bid_bad;	 /* a feed's bytes were not inside its bid's buffer */
	bool user_bid;	 /* a feed came from a user buffer */
	bool reentered;	 /* on_feed called from inside on_feed */
	bool in_feed;
	bool park, waits, busy; /* what the protocol answers */
	unsigned waits_calls;
	unsigned ticks; /* on_tick calls */
	bool late;	/* a callback after on_closed */
	nsp_feed_fn feed;
	nsp_event_fn on_tls_ready, on_overrun, on_timer;
	void *arg;
};

extern const struct net_ops nsp_ops;

void nst_open(struct nst *x, const struct nst_cfg *cfg);
void nst_close(struct nst *x);
void nsp_init(struct nsp *r, struct nst *x);
void nsp_free(struct nsp *r);
unsigned nsp_count(const struct nsp *r, char ev);
/* Record n bytes as taken (a feed of the test's own). */
void nsp_take(struct nsp *r, const char *p, size_t n);
bool nsp_closed(void *rec);
/* A loopback connection accepted and adopted into a fresh slot for r (no
 * input armed yet): returns the client's end (non-blocking). */
int nst_accept(struct nst *x, struct nsp *r);

unsigned nst_turn(struct nst *x, int wait_ms);
void nst_run(struct nst *x, bool (*done)(void *arg), void (*peer)(void *arg), void *arg,
	     const char *what);
void nst_settle(struct nst *x, int quiet_ms);
/* Kernel buffers out of the pool now. */
uint32_t nst_held(const struct nst *x);
/* Bytes in fd's receive queue (FIONREAD). */
int nst_inq(int fd);

/* The client end: what it read, and whether it saw the end. */
struct nst_peer {
	struct nst *x;
	int fd;
	char in[NST_PEER_MAX];
	size_t len, want;
	bool eof;
};

void nst_peer_init(struct nst_peer *p, struct nst *x, int fd);
void nst_peer_pump(void *peer);
/* Turns until the peer read want bytes (or saw EOF). */
void nst_peer_wait(struct nst_peer *p, size_t want, const char *what);
/* Turns until the peer saw EOF. */
void nst_peer_wait_eof(struct nst_peer *p, const char *what);

#endif
