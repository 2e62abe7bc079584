/*
 * net_fake — the whole net/net.h API without a ring or a socket, for unit
 * tests of a protocol (the outbound SMTP/LMTP client).
 *
 * The protocol calls net_* as it would on a shard; nothing it asks for
 * happens until the test says so.  The test plays the peer and the kernel
 * through the nf_* driver functions below, and only they call the
 * protocol's callbacks: no net_* function ever does (net.h, "no re-entry";
 * the fake asserts it, as it asserts every other duty net.h puts on the
 * protocol: one send at a time, the sent bytes unchanged until on_sent, one
 * file read at a time, TLS started only on an open plaintext connection,
 * nothing submitted on a connection being closed).
 *
 * What the protocol sent is kept twice: the send in flight (the bytes of
 * every iovec of the last net_send, copied when it was made), and a
 * transcript of every send of the connection, in order.
 *
 * TLS: net_tls_start makes a real client tls_conn (tls/tls.h) on the
 * context the protocol passes, and runs no handshake; nf_tls_ready() plays
 * its success.  net_tls() then returns that session: its version and
 * cipher are "" and its peer is not verified (no handshake ran), which the
 * protocol may read and log.  Bytes stay plaintext in the transcript.
 *
 * Closing: net_close (and net_shutdown) only mark the connection; the
 * cancel and close complete, and on_closed comes, when the test calls
 * nf_reap() — as on a ring, where they complete on a later turn.  A
 * net_shutdown under TLS always drains here (net.c closes at once when the
 * layer cannot queue the close_notify).
 */
#ifndef RMX_TESTS_NET_FAKE_H
#define RMX_TESTS_NET_FAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "net/net.h"

#define NF_SEND_MAX  (256u * 1024u) /* bytes of one send the fake copies */
#define NF_TRANS_MAX (512u * 1024u) /* transcript bytes per connection */

enum nf_state {
	NF_FREE = 0,
	NF_RESERVED,
	NF_CONNECTING,
	NF_OPEN,
	NF_DRAINING, /* net_shutdown under TLS: close_notify, then the close */
	NF_CLOSING,
};

enum nf_tls {
	NF_TLS_OFF = 0,
	NF_TLS_HANDSHAKE,
	NF_TLS_ON,
};

struct net_conn {
	struct net_table *t;
	const struct net_ops *ops;
	void *proto;
	uint32_t slot;
	enum nf_state state;
	enum nf_tls tls_state;
	struct tls_conn *tls;
	char peer_name[256];
	struct sockaddr_storage addr; /* of net_connect */
	uint32_t connect_timeout_ms, timeout_ms;
	uint64_t deadline_ms;
	/* the send in flight: the protocol's iovecs and a copy of their bytes */
	bool sending;
	struct iovec iov[NET_IOV_MAX];
	uint32_t niov;
	char *sent;
	size_t sent_len;
	uint32_t sends; /* net_send calls on this connection */
	/* every byte sent, in order */
	char *trans;
	size_t trans_len;
	/* the file read in flight */
	bool fread;
	int fread_fd;
	void *fread_buf;
	uint32_t fread_len;
	uint64_t fread_off;
	uint32_t freads;
	/* what else the protocol asked for */
	uint32_t tls_starts, shutdowns, closes;
	/* net_send / net_read_file while the connection was not open (the
	 * real layer drops the former silently) */
	uint32_t late_calls;
};

struct net_table {
	uint32_t nslots;
	const uint64_t *now_ms;
	struct net_conn *conns;
	uint32_t *free;
	uint32_t free_count;
	uint32_t opened;   /* net_open calls that got a slot */
	uint32_t closed;   /* on_closed calls */
	int connect_errno; /* != 0: net_connect fails with -connect_errno */
	bool in_callback;  /* a driver function is calling the protocol */
};

/* The table net_table_new made last (the protocol keeps its own pointer). */
struct net_table *nf_table(void);
/* The connection in slot i (any state). */
struct net_conn *nf_conn(struct net_table *t, uint32_t slot);

/* The connect completed: res 0 (on_connected) or -errno (on_error). */
void nf_connected(struct net_conn *nc, int res);
/* The bytes of the send in flight, NUL-terminated; NULL when none. */
const char *nf_sending(const struct net_conn *nc);
/* The send in flight went (on_sent); asserts its bytes were not changed
 * meanwhile.  res < 0: it failed instead (on_error). */
void nf_sent(struct net_conn *nc, int res);
/* The peer sent text: one read (on_recv, then on_input with all of it). */
void nf_recv(struct net_conn *nc, const char *text);
void nf_recv_n(struct net_conn *nc, const char *p, size_t n);
/* The socket failed (err < 0) or the peer closed it (err 0): on_error. */
void nf_error(struct net_conn *nc, int err, const char *why);
/* The file read in flight completed: pread as the ring would. */
void nf_file_read(struct net_conn *nc);
/* ... or with res as its result (0: end of file, -errno). */
void nf_file_read_res(struct net_conn *nc, int res);
/* The TLS handshake net_tls_start began succeeded (on_tls_ready). */
void nf_tls_ready(struct net_conn *nc);
/* Every connection being closed completes its close (on_closed), but one
 * with a file read in flight: that waits for nf_file_read. */
uint32_t nf_reap(struct net_table *t);

#endif
