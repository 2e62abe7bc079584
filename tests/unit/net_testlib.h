/*
 * net_testlib — a real io_uring, a net_table on it, a loopback listener and
 * a recording protocol, for the unit tests of src/net/net.c.
 *
 * The test plays the shard: ntl_turn() submits, waits a few milliseconds
 * for completions and hands each NET one to net_complete(), as
 * src/shard.c's loop does.  The peer is the test itself, on the other end
 * of a real loopback TCP connection (non-blocking, one thread).  The clock
 * is the test's: net_tick() runs only when the test says, at the time it
 * sets.
 *
 * No test may hang: ntl_run() fails the test after NTL_TURNS_MAX turns or
 * NTL_WALL_MS of wall-clock time from ntl_open(), whichever comes first;
 * a call that never returns is ended by SIGALRM a little later.
 *
 * A kernel (or a sandbox) without io_uring makes the program exit 77
 * (meson's "skipped").
 */
#ifndef RMX_TESTS_NET_TESTLIB_H
#define RMX_TESTS_NET_TESTLIB_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "net/net.h"
#include "ring/ring.h"

#define NTL_TURNS_MAX 200000
#define NTL_WALL_MS   20000
#define NTL_LOG_MAX   4096
#define NTL_IN_CAP    16384 /* the table's receive buffer per connection */

/* One letter per callback, in call order (struct ntl_rec.log). */
#define NTL_EV_CONNECTED 'C'
#define NTL_EV_RECV	 'R'
#define NTL_EV_INPUT	 'I'
#define NTL_EV_SENT	 'S'
#define NTL_EV_TLS_READY 'T'
#define NTL_EV_ERROR	 'E'
#define NTL_EV_TIMEOUT	 'O'
#define NTL_EV_FREAD	 'F'
#define NTL_EV_CLOSED	 'X'

struct ntl;
struct ntl_rec;

/* What a recording protocol does inside a callback (NULL: nothing). */
typedef void (*ntl_input_fn)(struct ntl_rec *r, const char *p, size_t len);
typedef void (*ntl_event_fn)(struct ntl_rec *r);

/* The recording protocol: what the net layer said, in order. */
struct ntl_rec {
	struct ntl *x;
	struct net_conn *nc;
	char log[NTL_LOG_MAX + 1];
	size_t nlog;
	unsigned n[128]; /* calls per event letter */
	int err;	 /* on_error's */
	char why[256];
	int fread_res;
	char *in; /* every byte on_input gave, in order */
	size_t in_len, in_cap;
	ntl_input_fn on_input;	   /* after the bytes were recorded */
	ntl_event_fn on_error;	   /* after the error was recorded */
	ntl_event_fn on_closed;	   /* after the close was recorded */
	ntl_event_fn on_tls_ready; /* after the call was recorded */
	ntl_event_fn on_sent;	   /* after the call was recorded */
	void *arg;		   /* the test's */
	bool late;		   /* a callback came after on_closed */
};

struct ntl {
	struct ring ring;
	bool ring_up;
	struct net_table *t;
	uint64_t now; /* the table's clock */
	int lfd;      /* the loopback listener */
	struct sockaddr_in addr;
	unsigned long turns;
	unsigned long stale; /* NET completions for a slot with nothing open */
	uint64_t wall_end;
	struct ntl_rec *watch; /* the last one made: a failed wait shows its log */
};

/* Exit 77 unless this kernel lets us set up a ring (call first in main). */
void ntl_require_io_uring(void);
/* A ring, a table of nslots, a listener on 127.0.0.1 port 0. */
void ntl_open(struct ntl *x, uint32_t nslots);
/* Ring first, then the table (net.h: freed after the ring is gone). */
void ntl_close(struct ntl *x);

extern const struct net_ops ntl_ops;
void ntl_rec_init(struct ntl_rec *r, struct ntl *x);
void ntl_rec_free(struct ntl_rec *r);
unsigned ntl_count(const struct ntl_rec *r, char ev);

/* net_open + net_connect to addr (the listener when NULL). */
struct net_conn *ntl_connect(struct ntl *x, struct ntl_rec *r, const struct sockaddr_in *addr);
/* A connection to the listener, connected, and the peer's end of it
 * (non-blocking). */
int ntl_connect_accept(struct ntl *x, struct ntl_rec *r);
/* The address of a port nobody listens on. */
struct sockaddr_in ntl_closed_port(void);
/* The fd of the net layer's socket whose peer is peer_fd (found by
 * address), or -1. */
int ntl_local_fd_of(int peer_fd);

/* One turn of the loop: submit, wait up to wait_ms for a completion,
 * hand every one over.  Returns the completions handled. */
unsigned ntl_turn(struct ntl *x, int wait_ms);
/* Turns until done(arg) is true; peer(arg), when set, runs before each.
 * Fails the test (what names the wait) past the bounds. */
void ntl_run(struct ntl *x, bool (*done)(void *arg), void (*peer)(void *arg), void *arg,
	     const char *what);
/* Turns until nothing completes for quiet_ms (bounded as ntl_run). */
void ntl_settle(struct ntl *x, int quiet_ms);
bool ntl_closed(void *rec);

/* Peer helpers (non-blocking sockets). */
void ntl_write_all(int fd, const void *p, size_t len);
/* Read what is there, up to cap; 0 at EOF, -1 when nothing yet. */
ssize_t ntl_read_some(int fd, void *buf, size_t cap);
unsigned ntl_fd_count(void);
uint64_t ntl_mono_ms(void);

#endif
