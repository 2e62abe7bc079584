/*
 * tls — wolfSSL glue for the rings: the ring moves ciphertext, this module
 * turns it into plaintext and back.  It never touches a socket, never
 * blocks and runs no event loop of its own: wolfSSL's I/O callbacks read
 * from and write to two fixed buffers inside struct tls_conn, and the caller
 * (a shard) moves those bytes with its own recv/send ops.
 *
 * Threads: tls_global_init()/tls_global_cleanup() and tls_ctx_new()/
 * tls_ctx_free() run on the main thread (start-up, --check-config, reload).
 * A tls_ctx is then shared read-only by every shard: wolfSSL_new() only
 * takes the context's reference-count lock for an instant.  A tls_conn
 * belongs to one shard thread for its whole life.
 *
 * Ownership: tls_ctx_new() copies what it needs from the params (files are
 * read once, at load; nothing is read from disk afterwards).  A tls_ctx must
 * outlive every tls_conn made from it (asserted in tls_ctx_free()).
 * tls_conn_new() allocates the connection and wolfSSL allocates its session
 * state; tls_conn_free() releases both.  No callback of this module reaches
 * the caller: everything happens inside the call that was made.
 *
 * Driving a connection (the caller's loop, once per completion):
 *
 *   1. Bytes arrived: n = tls_conn_feed(c, p, len) COPIES up to the free
 *      room of the ciphertext-in buffer (TLS_CONN_IN_MAX) and returns how
 *      many it took; the caller may hand its provided buffer back to the
 *      ring as soon as all bytes are taken.  n < len: keep the rest and feed
 *      it after the next read/handshake call has drained the buffer.
 *   2. Call tls_conn_handshake() until it returns 0, then tls_conn_read()
 *      until it returns -EAGAIN.  After the handshake finishes, read at once
 *      even if nothing new arrived: the peer may have sent its first
 *      application bytes in the same packet as its Finished.
 *   3. After EVERY call (any return, errors included: a fatal alert is
 *      queued there), send what tls_conn_out() shows, one send at a time.
 *      When the send completes call tls_conn_out_done(c, sent).  The pointer
 *      stays valid until tls_conn_out_done(); bytes produced meanwhile are
 *      appended behind it and never move it.
 *
 * Return codes (I/O style, like cqe->res):
 *   >= 0       bytes (read/write), or 0 for "done" (handshake, shutdown)
 *   -EAGAIN    wolfSSL WANT_READ (every fed byte is used), or a server
 *              still waiting for the rest of the first record: feed more
 *   -ENOBUFS   wolfSSL WANT_WRITE: the ciphertext-out buffer is full; flush
 *              it and call again (tls_conn_write: with the same bytes).
 *              tls_conn_read() also says it when the out buffer lacks room
 *              for what reading on could make wolfSSL answer: send first,
 *              read after the send completed (not in a loop before it)
 *   -EACCES    client role: the peer certificate failed verification and
 *              the context asked for verification (route tls "verify")
 *   -EPROTO    anything else: bad record, failed handshake, alert received.
 *              Final: every later call returns it too; tls_conn_error()
 *              names the cause for the log.  Never fall back to plaintext.
 *   -EPIPE     tls_conn_write() after tls_conn_shutdown()
 *   -ENOMEM    wolfSSL could not allocate the session (final, as -EPROTO)
 *
 * Handshake timeout: this module has no clock.  The caller arms its own
 * deadline when the handshake starts (TLS_HANDSHAKE_TIMEOUT_MS unless the
 * config says otherwise) and frees the connection when it fires before
 * tls_conn_handshake() returned 0.  A peer that trickles a byte at a time
 * is bounded by that deadline, not by this module.
 *
 * STARTTLS (RFC 3207 4, CVE-2011-0411): plaintext received in the same
 * read as the STARTTLS command must be dropped by the caller, never fed.
 *
 * Limits (named bounds):
 *   TLS_CERTS_MAX       certificates in one context (chosen by SNI)
 *   TLS_CERT_NAMES_MAX  names per certificate
 *   TLS_NAME_MAX        253 octets, the longest DNS name (RFC 1035 2.3.4)
 *   TLS_CONN_IN_MAX     ciphertext fed but not yet taken by wolfSSL
 *   TLS_CONN_OUT_MAX    ciphertext produced but not yet sent
 * wolfSSL itself holds at most one record (2^14 bytes of plaintext plus
 * expansion, RFC 8446 5.2, RFC 5246 6.2.3) while it is being reassembled.
 *
 * SNI (RFC 6066 3): a server connection creates its wolfSSL session only
 * once the first record is whole in the in buffer, reads server_name from
 * it and builds the session on the matching certificate's context.  A
 * ClientHello larger than TLS_CONN_IN_MAX or split over several records
 * gets certs[0] (tls_conn_sni() still reports the name).  See tls.c for
 * why this is not wolfSSL's servername callback.
 *
 * Memory (Debian's wolfSSL 5.5.4, measured by tests/unit/tls_handshake.c
 * with wolfSSL_SetAllocators): an established session holds about 58-60 KB
 * of wolfSSL heap as a server and 75-79 KB as a client (TLS 1.2 or 1.3,
 * ECDSA P-256 or RSA 2048 alike; the client keeps the peer's chain), plus
 * tls_conn_size() (~12.7 KB) of its own; 64 KiB of data each way adds
 * nothing.  A server session allocates nothing of wolfSSL's before its
 * first record arrives.  The handshake peaks about 20 KB above the
 * established figure, plus one FP_ECC table (~0.8 MB) that wolfSSL builds
 * during it and keeps in a per-thread cache (Debian builds wolfSSL with
 * FP_ECC): a thread that has run many handshakes holds ~12 MB of them,
 * once, whatever the number of sessions (tls_thread_cleanup()).
 *
 * Not on the ring: wolfSSL seeds each session's RNG by opening and reading
 * /dev/urandom (synchronous, never blocks once the system has booted; this
 * build of wolfSSL has no seed callback to route it elsewhere).
 */
#ifndef RMX_TLS_H
#define RMX_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define TLS_CERTS_MAX		 16
#define TLS_CERT_NAMES_MAX	 32
#define TLS_NAME_MAX		 253
#define TLS_CONN_IN_MAX		 4096
#define TLS_CONN_OUT_MAX	 8192
#define TLS_HANDSHAKE_TIMEOUT_MS 60000
#define TLS_WHY_MAX		 512 /* room for a tls_ctx_new() error line */

enum tls_role {
	TLS_ROLE_SERVER = 0,
	TLS_ROLE_CLIENT,
};

/* One "tls.certificates[i]" entry: a PEM chain (leaf first), its key, and
 * the names it serves.  A name is exact ("mx.example.net") or a leftmost
 * wildcard ("*.example.net", one label, RFC 6125 6.4.3). */
struct tls_cert_params {
	const char *cert;
	const char *key;
	const char *const *names;
	size_t name_count;
};

struct tls_params {
	enum tls_role role;
	/* Server: at least one; certs[0] also answers clients that send no SNI
	 * or an unknown name (RFC 6066 3 lets the server go on).  Client: none. */
	const struct tls_cert_params *certs;
	size_t cert_count;
	const char *min_version; /* "1.2" (NULL means this) or "1.3" */
	const char *max_version; /* NULL: newest; "1.2" for tests and interop */
	/* wolfSSL or OpenSSL cipher names, ':'-separated; NULL: wolfSSL's
	 * defaults.  A list without TLS 1.3 suites leaves only TLS 1.2. */
	const char *ciphers;
	/* Client role only.  The trust store is ca_file, or the system store
	 * when NULL; it is used even without verify, so the log can say whether
	 * an opportunistic session would have verified. */
	const char *ca_file;
	bool verify; /* fail the handshake unless chain and name verify */
};

struct tls_ctx;
struct tls_conn;

/* wolfSSL_Init(), once per process before any context.  0 or -EIO. */
int tls_global_init(void);
void tls_global_cleanup(void);
/* On a thread that ran handshakes, before it exits: frees wolfSSL's
 * per-thread FP_ECC tables (see the memory note above). */
void tls_thread_cleanup(void);

/* Build a context: loads and checks every certificate and key (key matches
 * certificate, each name is covered by its certificate), the CA file, the
 * versions and the cipher list.  NULL on failure with one line in why[]
 * naming the config key and the file or value, e.g.
 *   tls.certificates[1].key "/etc/ringmx/b.key": does not match the certificate */
struct tls_ctx *tls_ctx_new(const struct tls_params *p, char *why, size_t why_len);
void tls_ctx_free(struct tls_ctx *t);

/* A connection in the handshake state.  Client role: peer_name is the next
 * hop's host name, sent as SNI (not for an address literal, RFC 6066 3) and
 * checked against its certificate (RFC 6125); NULL sends no SNI and checks no
 * name.  Server role: peer_name must be NULL.  NULL on allocation failure. */
struct tls_conn *tls_conn_new(struct tls_ctx *t, const char *peer_name);
void tls_conn_free(struct tls_conn *c);
/* Bytes of one tls_conn itself (its buffers); wolfSSL's session state comes
 * on top of it, from the first handshake step on. */
size_t tls_conn_size(void);

/* Ciphertext in: copies min(len, free room); returns the bytes taken. */
size_t tls_conn_feed(struct tls_conn *c, const void *p, size_t len);
size_t tls_conn_in_free(const struct tls_conn *c);

/* Ciphertext out: false when nothing waits.  See the contract above. */
bool tls_conn_out(const struct tls_conn *c, const void **p, size_t *len);
void tls_conn_out_done(struct tls_conn *c, size_t n);

/* One handshake step: 0 when done (and every later call), -EAGAIN,
 * -ENOBUFS, -EACCES, -EPROTO or -ENOMEM.  Server: the first record must
 * be a TLS handshake record, else -EPROTO at once (plaintext on a TLS
 * port). */
int tls_conn_handshake(struct tls_conn *c);

/* Plaintext.  read: > 0 bytes, 0 once the peer sent close_notify, or an
 * error code.  write: > 0 bytes taken (maybe fewer than len: one record
 * that fits the out buffer), or an error code; after -ENOBUFS call again
 * with the same bytes, as wolfSSL may have built the record already.
 * Both only after the handshake returned 0 (asserted). */
ssize_t tls_conn_read(struct tls_conn *c, void *buf, size_t cap);
ssize_t tls_conn_write(struct tls_conn *c, const void *buf, size_t len);

/* Queue close_notify (RFC 8446 6.1, RFC 5246 7.2.1); the caller need not
 * wait for the peer's.  0, -ENOBUFS (flush and call again) or -EPROTO. */
int tls_conn_shutdown(struct tls_conn *c);

/* After the handshake, for the Received: header (RFC 8314 4.3) and logs.
 * Strings live as long as the connection; "" when unknown. */
const char *tls_conn_version(const struct tls_conn *c); /* "TLSv1.3" */
const char *tls_conn_cipher(const struct tls_conn *c);	/* IANA name */
/* Server: the name the client asked for; client: the name sent.  Lower
 * case, host-name characters only (else ""): safe in a header. */
const char *tls_conn_sni(const struct tls_conn *c);
/* Client role: chain and name verified against the trust store. */
bool tls_conn_peer_verified(const struct tls_conn *c);
/* Peer certificate subject CN into buf (NUL-terminated, control bytes
 * replaced by '?'); false if none. */
bool tls_conn_peer_cn(const struct tls_conn *c, char *buf, size_t cap);
/* Why the connection failed (wolfSSL's reason), "" while it has not. */
const char *tls_conn_error(const struct tls_conn *c);

#endif
