/*
 * tls — wolfSSL over memory buffers.  See tls.h for the contract.
 *
 * wolfSSL calls tls_io_recv()/tls_io_send() from inside wolfSSL_accept(),
 * wolfSSL_read() and friends; they only copy between wolfSSL and the two
 * fixed buffers of the connection, so every wolfSSL call returns at once
 * with data or with WANT_READ/WANT_WRITE.
 *
 * Several certificates: one WOLFSSL_CTX per certificate, and the server
 * session is created on the right one from the start.  Its WOLFSSL object
 * is made only when the first record (the ClientHello, RFC 8446 4.1.2,
 * RFC 5246 7.4.1.2) is whole in in[]: wolfSSL_SNI_GetFromBuffer() reads the
 * server_name (RFC 6066 3) from those bytes and the session is built on the
 * context whose names match.  Why not the servername callback with
 * wolfSSL_set_SSL_CTX()?  In wolfSSL 5.5.4 that call swaps the certificate
 * and key but keeps the cipher suites and key-type flags of the first
 * context, so a TLS 1.2 client asking for the RSA certificate of a server
 * whose first certificate is ECDSA fails with "can't match cipher suite"
 * (pinned by tests/unit/tls_handshake.c, which mixes both key types).
 */
/* options.h first: the layout of wolfSSL's structs depends on the build's
 * options, and pkg-config gives no -D flags for them. */
#include <wolfssl/options.h>

#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfio.h>

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tls/tls.h"

static_assert(TLS_CONN_IN_MAX <= INT_MAX && TLS_CONN_OUT_MAX <= INT_MAX,
	      "buffer sizes go through wolfSSL's int lengths");
/* A close_notify record: header, 2-byte alert, AEAD/MAC expansion
 * (RFC 8446 5.2: at most 255 octets; RFC 5246 6.2.3.2 CBC: IV, MAC, pad). */
#define TLS_ALERT_RECORD_MAX 384
/* Room for a cipher list read back from wolfSSL (about 60 names). */
#define TLS_CIPHERS_MAX 4096
static_assert(TLS_CONN_OUT_MAX > TLS_ALERT_RECORD_MAX, "out buffer holds an alert");
/* Free room of out[] that reading needs once the session is open: whatever
 * wolfSSL reads next (at most all of in[]) may make it answer (a TLS 1.3
 * KeyUpdate with update_requested is answered by a record of its own size,
 * an alert by a close_notify), and every answer must fit.  wolfSSL must
 * never be left holding output it could not hand over: with its own output
 * pending, wolfSSL 5.5.4 went on to read past its output buffer (a client
 * flooding key update requests and never reading crashed the server). */
#define TLS_READ_OUT_ROOM (TLS_CONN_IN_MAX + TLS_ALERT_RECORD_MAX)
static_assert(TLS_CONN_OUT_MAX > TLS_READ_OUT_ROOM, "out buffer holds the answers to in[]");

struct tls_cert {
	size_t name_count;
	char names[TLS_CERT_NAMES_MAX][TLS_NAME_MAX + 1]; /* lower case */
};

struct tls_ctx {
	enum tls_role role;
	bool verify;
	size_t wctx_count; /* server: one per certificate; client: one */
	WOLFSSL_CTX *wctx[TLS_CERTS_MAX];
	struct tls_cert certs[TLS_CERTS_MAX];
	_Atomic uint32_t conns; /* live tls_conns, for tls_ctx_free() */
};

enum tls_state {
	TLS_ST_HANDSHAKE = 0,
	TLS_ST_OPEN,
	TLS_ST_FAILED,
	TLS_ST_COUNT,
};

struct tls_conn {
	struct tls_ctx *ctx;
	WOLFSSL *ssl;
	enum tls_state state;
	int fail_rc;	      /* what every call returns once failed */
	bool peer_closed;     /* close_notify received */
	bool sent_close;      /* close_notify queued */
	bool peer_cert_seen;  /* the verify callback ran for the leaf */
	bool peer_unverified; /* some check failed (chain, name, date) */
	int verify_err;	      /* the first such failure, for tls_conn_error() */
	size_t write_pending; /* plaintext bytes of a record wolfSSL holds */
	bool read_held;	      /* input refused: out[] lacks TLS_READ_OUT_ROOM */
	const char *version;  /* static strings from wolfSSL's tables */
	const char *cipher;
	char sni[TLS_NAME_MAX + 1];
	char why[96];
	size_t in_head, in_len; /* in[in_head, in_len) waits for wolfSSL */
	size_t out_len;		/* out[0, out_len) waits for the caller */
	unsigned char in[TLS_CONN_IN_MAX];
	unsigned char out[TLS_CONN_OUT_MAX];
};

static void tls_why(char *why, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void tls_why(char *why, size_t len, const char *fmt, ...)
{
	if (why == NULL || len == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
	/* One line for --check-config and the log, whatever the config held. */
	for (char *p = why; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
}

int tls_global_init(void)
{
	return wolfSSL_Init() == WOLFSSL_SUCCESS ? 0 : -EIO;
}

void tls_global_cleanup(void)
{
	wolfSSL_Cleanup();
}

void tls_thread_cleanup(void)
{
	/* FP_ECC tables are thread-local (HAVE_THREAD_LS); wolfSSL_Cleanup()
	 * only frees the calling thread's. */
#ifdef FP_ECC
	wc_ecc_fp_free();
#endif
}

/* ---- names ---------------------------------------------------------------- */

/* Copy a DNS name lower-cased into dst (TLS_NAME_MAX + 1 bytes), dropping a
 * final root dot.  Only letters, digits, '-', '_' and '.' pass, with a
 * leading "*." allowed when wildcard is set: the SNI a client sends lands in
 * logs and the Received: header, so CR, LF, spaces or NUL must never get
 * through (RFC 6066 3 says host_name is an ASCII DNS name). */
static bool tls_name_store(char *dst, const char *src, size_t len, bool wildcard)
{
	if (len > 0 && src[len - 1] == '.')
		len--;
	if (len == 0 || len > TLS_NAME_MAX)
		return false;
	size_t i = 0;
	if (wildcard && len > 2 && src[0] == '*' && src[1] == '.') {
		dst[0] = '*';
		dst[1] = '.';
		i = 2;
	}
	for (; i < len; i++) {
		unsigned char ch = (unsigned char)src[i];
		if (ch >= 'A' && ch <= 'Z')
			ch = (unsigned char)(ch - 'A' + 'a');
		bool ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
			  ch == '_' || ch == '.';
		if (!ok)
			return false;
		dst[i] = (char)ch;
	}
	dst[len] = '\0';
	return true;
}

/* Index of the certificate serving name (lower case), or 0 (the default).
 * An exact name wins over a wildcard; a wildcard covers exactly one label
 * (RFC 6125 6.4.3), so "*.example.net" serves "mx.example.net" but neither
 * "example.net" nor "a.mx.example.net". */
static size_t tls_ctx_match(const struct tls_ctx *t, const char *name)
{
	const char *dot = strchr(name, '.');
	size_t wild = 0;
	for (size_t i = 0; i < t->wctx_count; i++) {
		for (size_t j = 0; j < t->certs[i].name_count; j++) {
			const char *n = t->certs[i].names[j];
			if (strcmp(n, name) == 0)
				return i;
			if (wild == 0 && dot != NULL && n[0] == '*' && strcmp(n + 1, dot) == 0)
				wild = i + 1;
		}
	}
	return wild > 0 ? wild - 1 : 0;
}

/* ---- memory I/O: wolfSSL's only view of the network ----------------------- */

static int tls_io_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tls_conn *c = arg;
	(void)ssl;
	assert(c != NULL && sz > 0);
	assert(c->in_head <= c->in_len && c->in_len <= TLS_CONN_IN_MAX);
	size_t have = c->in_len - c->in_head;
	if (have == 0)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	if (c->state == TLS_ST_OPEN && TLS_CONN_OUT_MAX - c->out_len < TLS_READ_OUT_ROOM) {
		/* No input until the output is sent: tls_conn_read() says
		 * -ENOBUFS.  A peer that sends and never reads stops here. */
		c->read_held = true;
		return WOLFSSL_CBIO_ERR_WANT_READ;
	}
	size_t n = have < (size_t)sz ? have : (size_t)sz;
	memcpy(buf, c->in + c->in_head, n);
	c->in_head += n;
	if (c->in_head == c->in_len)
		c->in_head = c->in_len = 0;
	return (int)n;
}

/* Takes what fits; wolfSSL keeps the rest of a partly taken record and
 * offers it again on the next call after WANT_WRITE. */
static int tls_io_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	struct tls_conn *c = arg;
	(void)ssl;
	assert(c != NULL && sz > 0);
	assert(c->out_len <= TLS_CONN_OUT_MAX);
	size_t room = TLS_CONN_OUT_MAX - c->out_len;
	if (room == 0)
		return WOLFSSL_CBIO_ERR_WANT_WRITE;
	size_t n = room < (size_t)sz ? room : (size_t)sz;
	memcpy(c->out + c->out_len, buf, n);
	c->out_len += n;
	return (int)n;
}

size_t tls_conn_feed(struct tls_conn *c, const void *p, size_t len)
{
	assert(c != NULL && (p != NULL || len == 0));
	if (c->in_head > 0) {
		/* Safe to move: only tls_io_recv() reads in[], and only inside
		 * a call into this module. */
		memmove(c->in, c->in + c->in_head, c->in_len - c->in_head);
		c->in_len -= c->in_head;
		c->in_head = 0;
	}
	size_t room = TLS_CONN_IN_MAX - c->in_len;
	size_t n = len < room ? len : room;
	if (n > 0)
		memcpy(c->in + c->in_len, p, n);
	c->in_len += n;
	return n;
}

size_t tls_conn_in_free(const struct tls_conn *c)
{
	return TLS_CONN_IN_MAX - (c->in_len - c->in_head);
}

bool tls_conn_out(const struct tls_conn *c, const void **p, size_t *len)
{
	assert(c != NULL && p != NULL && len != NULL);
	*p = c->out;
	*len = c->out_len;
	return c->out_len > 0;
}

void tls_conn_out_done(struct tls_conn *c, size_t n)
{
	assert(n <= c->out_len);
	/* No send is in flight now (one at a time), so the unsent tail may
	 * move to the front. */
	memmove(c->out, c->out + n, c->out_len - n);
	c->out_len -= n;
}

/* ---- per-connection callbacks ----------------------------------------------- */

/* Client: runs for every certificate of the chain and for the name check
 * (WOLFSSL_ALWAYS_VERIFY_CB is in Debian's build).  Without verify it
 * overrides every failure but remembers it, so an opportunistic session can
 * still log verified=no. */
static int tls_verify_note(int preverify, WOLFSSL_X509_STORE_CTX *store)
{
	WOLFSSL *ssl =
	    wolfSSL_X509_STORE_CTX_get_ex_data(store, wolfSSL_get_ex_data_X509_STORE_CTX_idx());
	struct tls_conn *c = ssl != NULL ? wolfSSL_get_app_data(ssl) : NULL;
	assert(c != NULL && c->ctx->role == TLS_ROLE_CLIENT);
	if (wolfSSL_X509_STORE_CTX_get_error_depth(store) == 0)
		c->peer_cert_seen = true;
	if (!preverify && !c->peer_unverified) {
		c->peer_unverified = true;
		c->verify_err = wolfSSL_X509_STORE_CTX_get_error(store);
	}
	return c->ctx->verify ? preverify : 1;
}

/* ---- contexts --------------------------------------------------------------- */

static int tls_version_parse(const char *s, int dflt)
{
	if (s == NULL)
		return dflt;
	if (strcmp(s, "1.2") == 0)
		return WOLFSSL_TLSV1_2;
	if (strcmp(s, "1.3") == 0)
		return WOLFSSL_TLSV1_3;
	return -1;
}

/* wolfSSL 5.5.4 fails every TLS 1.3 ClientHello ("record layer version
 * error") when its cipher list has no TLS 1.3 suite, or has a TLS 1.2 suite
 * ahead of the TLS 1.3 ones, where it should go on (RFC 8446 4.2.1 lets the
 * server pick TLS 1.2).  So the configured list is put back TLS 1.3 suites
 * first, and a list without any caps the version at TLS 1.2. */
static bool tls_wctx_ciphers(WOLFSSL_CTX *w, const char *list, int min, char *why, size_t why_len)
{
	char v13[TLS_CIPHERS_MAX] = "", v12[TLS_CIPHERS_MAX] = "";
	if (wolfSSL_CTX_set_cipher_list(w, list) != WOLFSSL_SUCCESS) {
		tls_why(why, why_len, "tls.ciphers \"%s\": no cipher wolfSSL knows", list);
		return false;
	}
	WOLFSSL *probe = wolfSSL_new(w); /* the parsed list is only visible per session */
	WOLF_STACK_OF(WOLFSSL_CIPHER) *sk =
	    probe != NULL ? wolfSSL_get_ciphers_compat(probe) : NULL;
	bool fits = sk != NULL;
	for (int i = 0; fits && i < wolfSSL_sk_SSL_CIPHER_num(sk); i++) {
		const char *name = wolfSSL_CIPHER_get_name(wolfSSL_sk_SSL_CIPHER_value(sk, i));
		char *dst = strncmp(name, "TLS13-", 6) == 0 ? v13 : v12; /* wolfSSL's names */
		size_t used = strlen(dst);
		int n = snprintf(dst + used, TLS_CIPHERS_MAX - used, "%s%s", used ? ":" : "", name);
		fits = n > 0 && (size_t)n < TLS_CIPHERS_MAX - used;
	}
	wolfSSL_free(probe);
	if (!fits) {
		tls_why(why, why_len, "tls.ciphers \"%s\": cannot read the list back", list);
		return false;
	}
	if (v13[0] == '\0') {
		if (min == WOLFSSL_TLSV1_3) {
			tls_why(why, why_len,
				"tls.ciphers \"%s\": no TLS 1.3 cipher for min_version 1.3", list);
			return false;
		}
		return wolfSSL_CTX_set_max_proto_version(w, TLS1_2_VERSION) == WOLFSSL_SUCCESS;
	}
	char both[2 * TLS_CIPHERS_MAX + 1];
	snprintf(both, sizeof both, "%s%s%s", v13, v12[0] ? ":" : "", v12);
	return wolfSSL_CTX_set_cipher_list(w, both) == WOLFSSL_SUCCESS;
}

/* Settings every context of one tls_ctx shares. */
static bool tls_wctx_common(WOLFSSL_CTX *w, const struct tls_params *p, int min, int max, char *why,
			    size_t why_len)
{
	/* Ciphers first: the read-back session in tls_wctx_ciphers() cannot
	 * be made once min_version 1.3 meets a list without TLS 1.3 suites. */
	if (p->ciphers != NULL && !tls_wctx_ciphers(w, p->ciphers, min, why, why_len))
		return false;
	if (wolfSSL_CTX_SetMinVersion(w, min) != WOLFSSL_SUCCESS ||
	    (max == WOLFSSL_TLSV1_2 &&
	     wolfSSL_CTX_set_max_proto_version(w, TLS1_2_VERSION) != WOLFSSL_SUCCESS)) {
		tls_why(why, why_len, "tls.min_version: this wolfSSL cannot set the version range");
		return false;
	}
	wolfSSL_CTX_SetIORecv(w, tls_io_recv);
	wolfSSL_CTX_SetIOSend(w, tls_io_send);
	/* No resumption: wolfSSL's session cache and ticket keys are process
	 * wide behind mutexes that every shard would share, and MTAs seldom
	 * resume (a pooled outbound connection is reused instead). */
	wolfSSL_CTX_set_session_cache_mode(w, WOLFSSL_SESS_CACHE_OFF);
	wolfSSL_CTX_NoTicketTLSv12(w);
	if (p->role == TLS_ROLE_SERVER)
		wolfSSL_CTX_no_ticket_TLSv13(w);
	return true;
}

static bool tls_file_readable(const char *key, const char *path, char *why, size_t why_len)
{
	if (path == NULL || path[0] == '\0') {
		tls_why(why, why_len, "%s: a file name is required", key);
		return false;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		tls_why(why, why_len, "%s \"%s\": %s", key, path, strerror(errno));
		return false;
	}
	close(fd);
	return true;
}

/* The names of certs[i]: valid, not given twice, and covered by the
 * certificate (else every client that verifies would fail on them). */
static bool tls_cert_names(struct tls_ctx *t, size_t i, const struct tls_cert_params *cp, char *why,
			   size_t why_len)
{
	struct tls_cert *tc = &t->certs[i];
	WOLFSSL_X509 *x = wolfSSL_CTX_get0_certificate(t->wctx[i]);
	if (cp->name_count > TLS_CERT_NAMES_MAX) {
		tls_why(why, why_len, "tls.certificates[%zu].names: more than %d", i,
			TLS_CERT_NAMES_MAX);
		return false;
	}
	for (size_t j = 0; j < cp->name_count; j++) {
		const char *n = cp->names[j];
		char *dst = tc->names[j];
		if (n == NULL || !tls_name_store(dst, n, strlen(n), true)) {
			tls_why(why, why_len,
				"tls.certificates[%zu].names[%zu] \"%s\": not a host name", i, j,
				n != NULL ? n : "");
			return false;
		}
		for (size_t k = 0; k <= i; k++)
			for (size_t m = 0; m < (k == i ? j : t->certs[k].name_count); m++)
				if (strcmp(t->certs[k].names[m], dst) == 0) {
					tls_why(why, why_len,
						"tls.certificates[%zu].names[%zu] \"%s\": also in "
						"tls.certificates[%zu]",
						i, j, n, k);
					return false;
				}
		/* A wildcard name must be served by a wildcard certificate: probe
		 * it with a label no exact SAN would carry. */
		char probe[TLS_NAME_MAX + 32];
		snprintf(probe, sizeof probe, "%s%s", dst[0] == '*' ? "ringmx-probe" : "",
			 dst[0] == '*' ? dst + 1 : dst);
		if (x == NULL ||
		    wolfSSL_X509_check_host(x, probe, strlen(probe), 0, NULL) != WOLFSSL_SUCCESS) {
			tls_why(why, why_len,
				"tls.certificates[%zu].names[%zu] \"%s\": not covered by \"%s\"", i,
				j, n, cp->cert);
			return false;
		}
		tc->name_count = j + 1;
	}
	return true;
}

/* Server: load certs[i] (chain and key) into its own context. */
static bool tls_wctx_cert(struct tls_ctx *t, size_t i, const struct tls_cert_params *cp, char *why,
			  size_t why_len)
{
	char key[64];
	snprintf(key, sizeof key, "tls.certificates[%zu].cert", i);
	if (!tls_file_readable(key, cp->cert, why, why_len))
		return false;
	if (wolfSSL_CTX_use_certificate_chain_file(t->wctx[i], cp->cert) != WOLFSSL_SUCCESS) {
		tls_why(why, why_len, "%s \"%s\": not a PEM certificate chain", key, cp->cert);
		return false;
	}
	snprintf(key, sizeof key, "tls.certificates[%zu].key", i);
	if (!tls_file_readable(key, cp->key, why, why_len))
		return false;
	if (wolfSSL_CTX_use_PrivateKey_file(t->wctx[i], cp->key, WOLFSSL_FILETYPE_PEM) !=
	    WOLFSSL_SUCCESS) {
		tls_why(why, why_len, "%s \"%s\": not a PEM private key (or encrypted)", key,
			cp->key);
		return false;
	}
	if (wolfSSL_CTX_check_private_key(t->wctx[i]) != WOLFSSL_SUCCESS) {
		tls_why(why, why_len, "%s \"%s\": does not match the certificate \"%s\"", key,
			cp->key, cp->cert);
		return false;
	}
	wolfSSL_CTX_set_verify(t->wctx[i], WOLFSSL_VERIFY_NONE, NULL);
	return tls_cert_names(t, i, cp, why, why_len);
}

/* Client: the trust store, and the verify callback that records the result. */
static bool tls_wctx_trust(struct tls_ctx *t, const struct tls_params *p, char *why, size_t why_len)
{
	WOLFSSL_CTX *w = t->wctx[0];
	if (p->ca_file != NULL) {
		if (!tls_file_readable("tls.ca_file", p->ca_file, why, why_len))
			return false;
		if (wolfSSL_CTX_load_verify_locations(w, p->ca_file, NULL) != WOLFSSL_SUCCESS) {
			tls_why(why, why_len, "tls.ca_file \"%s\": no PEM CA certificate in it",
				p->ca_file);
			return false;
		}
	} else if (wolfSSL_CTX_load_system_CA_certs(w) != WOLFSSL_SUCCESS && p->verify) {
		tls_why(why, why_len,
			"tls: verify needs a CA store and the system one did not load");
		return false;
	}
	wolfSSL_CTX_set_verify(w, WOLFSSL_VERIFY_PEER, tls_verify_note);
	return true;
}

static bool tls_params_check(const struct tls_params *p, int *min, int *max, char *why,
			     size_t why_len)
{
	*min = tls_version_parse(p->min_version, WOLFSSL_TLSV1_2);
	*max = tls_version_parse(p->max_version, WOLFSSL_TLSV1_3);
	if (*min < 0 || *max < 0) {
		bool bad_min = *min < 0;
		tls_why(why, why_len, "tls.%s \"%s\": expected \"1.2\" or \"1.3\"",
			bad_min ? "min_version" : "max_version",
			bad_min ? p->min_version : p->max_version);
		return false;
	}
	if (*min > *max) {
		tls_why(why, why_len, "tls.min_version \"%s\": above max_version \"%s\"",
			p->min_version, p->max_version);
		return false;
	}
	if (p->role == TLS_ROLE_SERVER && (p->cert_count == 0 || p->cert_count > TLS_CERTS_MAX)) {
		tls_why(why, why_len, "tls.certificates: expected 1 to %d entries, got %zu",
			TLS_CERTS_MAX, p->cert_count);
		return false;
	}
	if (p->role == TLS_ROLE_CLIENT && p->cert_count != 0) {
		tls_why(why, why_len, "tls.certificates: client certificates are not supported");
		return false;
	}
	if (p->role == TLS_ROLE_SERVER && (p->verify || p->ca_file != NULL)) {
		tls_why(why, why_len, "tls.ca_file: client certificates are not asked for");
		return false;
	}
	return true;
}

/* Shuttle ciphertext between two memory connections until both finished
 * the handshake or one failed.  0, or the failing side's error code. */
static int tls_pair_handshake(struct tls_conn *cli, struct tls_conn *srv)
{
	for (int turn = 0; turn < 64; turn++) {
		int rc_c = tls_conn_handshake(cli);
		int rc_s;
		const void *out;
		size_t len;

		if (tls_conn_out(cli, &out, &len))
			tls_conn_out_done(cli, tls_conn_feed(srv, out, len));
		rc_s = tls_conn_handshake(srv);
		if (tls_conn_out(srv, &out, &len))
			tls_conn_out_done(srv, tls_conn_feed(cli, out, len));
		if (rc_c == 0 && rc_s == 0)
			return 0;
		if (rc_c != 0 && rc_c != -EAGAIN && rc_c != -ENOBUFS)
			return rc_c;
		if (rc_s != 0 && rc_s != -EAGAIN && rc_s != -ENOBUFS)
			return rc_s;
	}
	return -EPROTO;
}

/* A name that makes the server pick certs[i] by SNI, or NULL (certs[0] is
 * also the default). */
static const char *tls_selftest_name(const struct tls_ctx *t, size_t i, char *buf, size_t cap)
{
	for (size_t j = 0; j < t->certs[i].name_count; j++) {
		const char *n = t->certs[i].names[j];

		snprintf(buf, cap, n[0] == '*' ? "selftest%s" : "%s", n[0] == '*' ? n + 1 : n);
		if (tls_ctx_match(t, buf) == i)
			return buf;
	}
	return NULL;
}

/* A handshake with certs[i], in memory, before any client sees it.
 * wolfSSL_CTX_check_private_key() catches an RSA key that does not match
 * its certificate but (5.5.4) not an ECDSA one, which then fails every
 * real handshake.  The signature a handshake makes with the key and checks
 * with the certificate catches every kind, the way clients will. */
static bool tls_ctx_selftest(struct tls_ctx *t, const struct tls_params *p, size_t i, int min,
			     int max, char *why, size_t why_len)
{
	struct tls_ctx cli_ctx = {.role = TLS_ROLE_CLIENT, .wctx_count = 1};
	char name[TLS_NAME_MAX + 16];
	const char *sni = tls_selftest_name(t, i, name, sizeof(name));
	struct tls_params cp = {.role = TLS_ROLE_CLIENT, .ciphers = p->ciphers};
	struct tls_conn *cli = NULL, *srv = NULL;
	int rc = -ENOMEM;

	if (i > 0 && sni == NULL)
		return true; /* no name reaches it: nothing a client can see */
	cli_ctx.wctx[0] = wolfSSL_CTX_new(wolfSSLv23_client_method());
	if (cli_ctx.wctx[0] != NULL &&
	    tls_wctx_common(cli_ctx.wctx[0], &cp, min, max, why, why_len)) {
		wolfSSL_CTX_set_verify(cli_ctx.wctx[0], WOLFSSL_VERIFY_NONE, NULL);
		cli = tls_conn_new(&cli_ctx, sni);
		srv = tls_conn_new(t, NULL);
		if (cli != NULL && srv != NULL)
			rc = tls_pair_handshake(cli, srv);
	}
	if (rc != 0)
		tls_why(why, why_len,
			"tls.certificates[%zu]: a test handshake with \"%s\" and \"%s\" failed "
			"(%s): does the key match the certificate?",
			i, p->certs[i].key, p->certs[i].cert,
			srv != NULL && tls_conn_error(srv)[0]	? tls_conn_error(srv)
			: cli != NULL && tls_conn_error(cli)[0] ? tls_conn_error(cli)
								: "out of memory");
	tls_conn_free(cli);
	tls_conn_free(srv);
	wolfSSL_CTX_free(cli_ctx.wctx[0]);
	return rc == 0;
}

struct tls_ctx *tls_ctx_new(const struct tls_params *p, char *why, size_t why_len)
{
	assert(p != NULL);
	int min, max;
	if (!tls_params_check(p, &min, &max, why, why_len))
		return NULL;
	struct tls_ctx *t = calloc(1, sizeof *t);
	if (t == NULL) {
		tls_why(why, why_len, "tls: out of memory");
		return NULL;
	}
	t->role = p->role;
	t->verify = p->verify;
	size_t count = p->role == TLS_ROLE_SERVER ? p->cert_count : 1;
	for (size_t i = 0; i < count; i++) {
		t->wctx[i] =
		    wolfSSL_CTX_new(p->role == TLS_ROLE_SERVER ? wolfSSLv23_server_method()
							       : wolfSSLv23_client_method());
		if (t->wctx[i] == NULL) {
			tls_why(why, why_len, "tls: wolfSSL_CTX_new failed (out of memory?)");
			goto fail;
		}
		t->wctx_count = i + 1;
		if (!tls_wctx_common(t->wctx[i], p, min, max, why, why_len))
			goto fail;
		if (p->role == TLS_ROLE_SERVER && !tls_wctx_cert(t, i, &p->certs[i], why, why_len))
			goto fail;
	}
	if (p->role == TLS_ROLE_CLIENT && !tls_wctx_trust(t, p, why, why_len))
		goto fail;
	for (size_t i = 0; p->role == TLS_ROLE_SERVER && i < t->wctx_count; i++)
		if (!tls_ctx_selftest(t, p, i, min, max, why, why_len))
			goto fail;
	return t;
fail:
	tls_ctx_free(t);
	return NULL;
}

void tls_ctx_free(struct tls_ctx *t)
{
	if (t == NULL)
		return;
	/* A live session still points at t and at its wolfSSL context. */
	assert(atomic_load(&t->conns) == 0);
	for (size_t i = 0; i < t->wctx_count; i++)
		wolfSSL_CTX_free(t->wctx[i]);
	free(t);
}

/* ---- connections ------------------------------------------------------------ */

static void tls_conn_enter(struct tls_conn *c, enum tls_state next)
{
	static const bool legal[TLS_ST_COUNT][TLS_ST_COUNT] = {
	    [TLS_ST_HANDSHAKE] = {[TLS_ST_OPEN] = true, [TLS_ST_FAILED] = true},
	    [TLS_ST_OPEN] = {[TLS_ST_FAILED] = true},
	};
	assert(c->state < TLS_ST_COUNT && next < TLS_ST_COUNT);
	assert(legal[c->state][next]);
	c->state = next;
}

/* Client: SNI and the name to check (RFC 6125 6). */
static bool tls_conn_target(struct tls_conn *c, const char *peer_name)
{
	unsigned char addr[16];
	bool literal =
	    inet_pton(AF_INET, peer_name, addr) == 1 || inet_pton(AF_INET6, peer_name, addr) == 1;
	if (!tls_name_store(c->sni, peer_name, strlen(peer_name), false) && !literal)
		return false;
	if (literal) {
		c->sni[0] = '\0'; /* RFC 6066 3: no literal addresses in SNI */
	} else if (wolfSSL_UseSNI(c->ssl, WOLFSSL_SNI_HOST_NAME, c->sni,
				  (unsigned short)strlen(c->sni)) != WOLFSSL_SUCCESS) {
		return false;
	}
	return wolfSSL_check_domain_name(c->ssl, peer_name) == WOLFSSL_SUCCESS;
}

/* The wolfSSL session of c, on one of its context's wolfSSL contexts. */
static bool tls_conn_session(struct tls_conn *c, WOLFSSL_CTX *w)
{
	assert(c->ssl == NULL);
	c->ssl = wolfSSL_new(w);
	if (c->ssl == NULL)
		return false;
	wolfSSL_SetIOReadCtx(c->ssl, c);
	wolfSSL_SetIOWriteCtx(c->ssl, c);
	wolfSSL_set_app_data(c->ssl, c);
	return true;
}

struct tls_conn *tls_conn_new(struct tls_ctx *t, const char *peer_name)
{
	assert(t != NULL && t->wctx_count > 0);
	assert(peer_name == NULL || t->role == TLS_ROLE_CLIENT);
	struct tls_conn *c = calloc(1, sizeof *c);
	if (c == NULL)
		return NULL;
	c->ctx = t;
	c->version = c->cipher = "";
	/* Server: the session waits for the ClientHello (tls_conn_start()). */
	if (t->role == TLS_ROLE_CLIENT && (!tls_conn_session(c, t->wctx[0]) ||
					   (peer_name != NULL && !tls_conn_target(c, peer_name)))) {
		wolfSSL_free(c->ssl);
		free(c);
		return NULL;
	}
	atomic_fetch_add(&t->conns, 1);
	return c;
}

size_t tls_conn_size(void)
{
	return sizeof(struct tls_conn);
}

void tls_conn_free(struct tls_conn *c)
{
	if (c == NULL)
		return;
	uint32_t before = atomic_fetch_sub(&c->ctx->conns, 1);
	assert(before > 0);
	(void)before;
	wolfSSL_free(c->ssl);
	free(c);
}

/* The connection is dead: remember why and what to return from now on. */
static int tls_conn_fail(struct tls_conn *c, int err)
{
	bool denied = c->ctx->role == TLS_ROLE_CLIENT && c->ctx->verify && c->peer_unverified;
	if (denied)
		err = c->verify_err;
	snprintf(c->why, sizeof c->why, "%s%s (%d)", denied ? "peer certificate: " : "",
		 wolfSSL_ERR_reason_error_string((unsigned long)err), err);
	c->fail_rc = denied ? -EACCES : -EPROTO;
	tls_conn_enter(c, TLS_ST_FAILED);
	return c->fail_rc;
}

/* Map a wolfSSL failure return: "again" codes, or a final failure. */
static int tls_conn_again(struct tls_conn *c, int rc)
{
	int err = wolfSSL_get_error(c->ssl, rc);
	switch (err) {
	case WOLFSSL_ERROR_WANT_READ:
		return -EAGAIN;
	case WOLFSSL_ERROR_WANT_WRITE:
		return -ENOBUFS;
	default:
		return tls_conn_fail(c, err);
	}
}

/* Server: pick the certificate from the server_name of the first record,
 * unread in in[], and create the session on its context.  -EAGAIN until the
 * record is whole.  The default (certs[0]) answers a ClientHello without a
 * usable name, one split over several records, or one larger than in[]
 * (RFC 6066 3 lets a server go on without a match). */
static int tls_conn_start(struct tls_conn *c)
{
	const unsigned char *rec = c->in + c->in_head;
	size_t have = c->in_len - c->in_head;
	size_t pick = 0;
	if (have < 5)
		return -EAGAIN;
	/* RFC 8446 5.1, RFC 5246 6.2.1: type 22 (handshake), major version 3,
	 * then the length.  Anything else is not TLS (plaintext SMTP on the
	 * implicit TLS port, say): refuse now rather than let wolfSSL wait for
	 * a "record" as long as "HLO " reads. */
	if (rec[0] != 22 || rec[1] != 3) {
		snprintf(c->why, sizeof c->why, "first record is not a TLS handshake");
		c->fail_rc = -EPROTO;
		tls_conn_enter(c, TLS_ST_FAILED);
		return c->fail_rc;
	}
	size_t need = 5 + ((size_t)rec[3] << 8 | rec[4]);
	if (need > have && need <= TLS_CONN_IN_MAX - c->in_head)
		return -EAGAIN;
	unsigned char name[TLS_NAME_MAX + 2];
	unsigned int name_len = sizeof name - 1;
	if (need <= have &&
	    wolfSSL_SNI_GetFromBuffer(rec, (unsigned int)need, WOLFSSL_SNI_HOST_NAME, name,
				      &name_len) == WOLFSSL_SUCCESS &&
	    tls_name_store(c->sni, (const char *)name, name_len, false))
		pick = tls_ctx_match(c->ctx, c->sni);
	else
		c->sni[0] = '\0';
	if (!tls_conn_session(c, c->ctx->wctx[pick])) {
		snprintf(c->why, sizeof c->why, "out of memory for the session");
		c->fail_rc = -ENOMEM;
		tls_conn_enter(c, TLS_ST_FAILED);
		return c->fail_rc;
	}
	return 0;
}

int tls_conn_handshake(struct tls_conn *c)
{
	assert(c != NULL && (c->ssl != NULL || c->ctx->role == TLS_ROLE_SERVER));
	if (c->state == TLS_ST_FAILED)
		return c->fail_rc;
	if (c->state == TLS_ST_OPEN)
		return 0;
	if (c->ssl == NULL) {
		int rc = tls_conn_start(c);
		if (rc != 0)
			return rc;
	}
	int rc = c->ctx->role == TLS_ROLE_SERVER ? wolfSSL_accept(c->ssl) : wolfSSL_connect(c->ssl);
	if (rc != WOLFSSL_SUCCESS)
		return tls_conn_again(c, rc);
	int suite = wolfSSL_get_current_cipher_suite(c->ssl);
	const char *iana = wolfSSL_get_cipher_name_iana_from_suite((unsigned char)(suite >> 8),
								   (unsigned char)suite);
	const char *version = wolfSSL_get_version(c->ssl);
	c->cipher = iana != NULL ? iana : "";
	c->version = version != NULL ? version : "";
	void *req = NULL;
	unsigned short len;
	/* A ClientHello too large for the peek still had its name read by
	 * wolfSSL (WOLFSSL_ALWAYS_KEEP_SNI): keep it for the log. */
	if (c->ctx->role == TLS_ROLE_SERVER && c->sni[0] == '\0' &&
	    (len = wolfSSL_SNI_GetRequest(c->ssl, WOLFSSL_SNI_HOST_NAME, &req)) > 0 &&
	    !tls_name_store(c->sni, req, len, false))
		c->sni[0] = '\0';
	tls_conn_enter(c, TLS_ST_OPEN);
	return 0;
}

ssize_t tls_conn_read(struct tls_conn *c, void *buf, size_t cap)
{
	assert(c != NULL && buf != NULL && cap > 0);
	if (c->state == TLS_ST_FAILED)
		return c->fail_rc;
	assert(c->state == TLS_ST_OPEN);
	if (c->peer_closed)
		return 0;
	c->read_held = false;
	int rc = wolfSSL_read(c->ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
	if (rc > 0)
		return rc;
	if (wolfSSL_get_error(c->ssl, rc) == WOLFSSL_ERROR_ZERO_RETURN) {
		c->peer_closed = true;
		return 0;
	}
	int err = tls_conn_again(c, rc);
	return err == -EAGAIN && c->read_held ? -ENOBUFS : err;
}

/* Plaintext bytes (<= len) whose record fits the free room of out[], so
 * wolfSSL_write() never has to stop halfway. 0: not even one byte fits. */
static size_t tls_conn_write_fit(struct tls_conn *c, size_t len)
{
	size_t room = TLS_CONN_OUT_MAX - c->out_len;
	int max = wolfSSL_GetMaxOutputSize(c->ssl); /* one record's plaintext */
	size_t chunk = max > 0 && (size_t)max < len ? (size_t)max : len;
	while (chunk > 0) {
		int sz = wolfSSL_GetOutputSize(c->ssl, (int)chunk);
		if (sz <= 0)
			return 0;
		if ((size_t)sz <= room)
			return chunk;
		/* CBC padding (RFC 5246 6.2.3.2) makes the expansion vary a
		 * little with the length; shrinking by the excess converges. */
		size_t over = (size_t)sz - room;
		chunk = over < chunk ? chunk - over : 0;
	}
	return 0;
}

ssize_t tls_conn_write(struct tls_conn *c, const void *buf, size_t len)
{
	assert(c != NULL && (buf != NULL || len == 0));
	if (c->state == TLS_ST_FAILED)
		return c->fail_rc;
	assert(c->state == TLS_ST_OPEN);
	if (c->sent_close)
		return -EPIPE;
	if (len == 0)
		return 0;
	/* After WANT_WRITE wolfSSL holds the record it built; the retry must
	 * name the same bytes (asserted by the length). */
	assert(c->write_pending == 0 || len >= c->write_pending);
	size_t chunk = c->write_pending > 0 ? c->write_pending : tls_conn_write_fit(c, len);
	if (chunk == 0)
		return -ENOBUFS;
	int rc = wolfSSL_write(c->ssl, buf, (int)chunk);
	if (rc > 0) {
		c->write_pending = 0;
		return rc;
	}
	int err = tls_conn_again(c, rc);
	if (err == -ENOBUFS)
		c->write_pending = chunk;
	return err;
}

int tls_conn_shutdown(struct tls_conn *c)
{
	assert(c != NULL);
	if (c->state == TLS_ST_FAILED)
		return c->fail_rc;
	assert(c->state == TLS_ST_OPEN);
	if (c->sent_close)
		return 0;
	/* Room first: an alert wolfSSL could not hand over would be marked
	 * sent and then lost. */
	if (TLS_CONN_OUT_MAX - c->out_len < TLS_ALERT_RECORD_MAX || c->write_pending > 0)
		return -ENOBUFS;
	int rc = wolfSSL_shutdown(c->ssl);
	if (rc == WOLFSSL_SUCCESS || rc == WOLFSSL_SHUTDOWN_NOT_DONE) {
		c->sent_close = true;
		return 0;
	}
	return tls_conn_again(c, rc);
}

/* ---- what the session logs ----------------------------------------------------- */

const char *tls_conn_version(const struct tls_conn *c)
{
	return c->version;
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
	return c->cipher;
}

const char *tls_conn_sni(const struct tls_conn *c)
{
	return c->sni;
}

bool tls_conn_peer_verified(const struct tls_conn *c)
{
	return c->state == TLS_ST_OPEN && c->ctx->role == TLS_ROLE_CLIENT && c->peer_cert_seen &&
	       !c->peer_unverified;
}

bool tls_conn_peer_cn(const struct tls_conn *c, char *buf, size_t cap)
{
	assert(buf != NULL && cap > 0);
	buf[0] = '\0';
	if (c->state != TLS_ST_OPEN)
		return false;
	WOLFSSL_X509 *x = wolfSSL_get_peer_certificate(c->ssl);
	if (x == NULL)
		return false;
	const char *cn = wolfSSL_X509_get_subjectCN(x);
	bool ok = cn != NULL && cn[0] != '\0';
	if (ok)
		snprintf(buf, cap, "%s", cn);
	wolfSSL_X509_free(x); /* a copy: OPENSSL_EXTRA builds duplicate it */
	/* The peer chose these bytes and they go to logs: one line, always. */
	for (char *p = buf; *p != '\0'; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	return ok;
}

const char *tls_conn_error(const struct tls_conn *c)
{
	return c->state == TLS_ST_FAILED ? c->why : "";
}
