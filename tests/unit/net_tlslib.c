/*
 * net_tlslib — the TLS fixture net's TLS tests share (net_conn_tls.c,
 * net_attack2.c): fresh certificates made by the openssl command, a client
 * context that verifies them, a wolfSSL server driven directly on its
 * non-blocking socket (not tls_conn: the tests need wolfSSL_update_keys),
 * and the waits of one client/server pair.
 */
#include <wolfssl/options.h>

#include <wolfssl/error-ssl.h>
#include <wolfssl/ssl.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "net_tlslib.h"
#include "tls/tls.h"

char dir[128];
struct ntl fx;
struct tls_ctx *cctx;
WOLFSSL_CTX *sctx_any, *sctx_13;

/* ---- the server ------------------------------------------------------------------ */

void srv_open(struct srv *s, WOLFSSL_CTX *ctx, int fd)
{
	memset(s, 0, sizeof(*s));
	s->fd = fd;
	s->ssl = wolfSSL_new(ctx);
	assert_non_null(s->ssl);
	assert_int_equal(wolfSSL_set_fd(s->ssl, fd), WOLFSSL_SUCCESS);
	s->in = malloc(SRV_IN_MAX);
	assert_non_null(s->in);
}

void srv_free(struct srv *s)
{
	wolfSSL_free(s->ssl);
	free(s->in);
	close(s->fd);
}

bool srv_again(struct srv *s, int rc)
{
	int e = wolfSSL_get_error(s->ssl, rc);

	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
		return true;
	if (e == WOLFSSL_ERROR_ZERO_RETURN)
		s->got_close = true;
	else if (e == SOCKET_PEER_CLOSED_E || e == WOLFSSL_ERROR_SYSCALL || rc == 0)
		s->eof = true;
	else
		s->fatal = e;
	return false;
}

/* One step of the server: handshake, read what came, write what is due. */
void srv_step(struct srv *s)
{
	int rc;

	if (s->fatal || s->got_close || s->eof)
		return;
	if (!s->up) {
		rc = wolfSSL_accept(s->ssl);
		if (rc != WOLFSSL_SUCCESS) {
			srv_again(s, rc);
			return;
		}
		s->up = true;
	}
	while (!s->read_off && s->in_len < SRV_IN_MAX) {
		rc = wolfSSL_read(s->ssl, s->in + s->in_len, (int)(SRV_IN_MAX - s->in_len));
		if (rc <= 0) {
			if (!srv_again(s, rc))
				return;
			break;
		}
		s->in_len += (size_t)rc;
	}
	while (s->out_off < s->out_len) {
		size_t left = s->out_len - s->out_off;

		rc = wolfSSL_write(s->ssl, s->out + s->out_off, left > 16384 ? 16384 : (int)left);
		if (rc <= 0) {
			srv_again(s, rc);
			return;
		}
		s->out_off += (size_t)rc;
	}
}

/* ---- fixtures ----------------------------------------------------------------------- */

int sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	return system(cmd);
}

#define REQ "openssl req -x509 -nodes -days 2 -batch -newkey ec -pkeyopt ec_paramgen_curve:P-256 "

WOLFSSL_CTX *server_ctx(WOLFSSL_METHOD *m)
{
	WOLFSSL_CTX *c = wolfSSL_CTX_new(m);
	char p[256];

	assert_non_null(c);
	snprintf(p, sizeof(p), "%s/leaf.pem", dir);
	assert_int_equal(wolfSSL_CTX_use_certificate_chain_file(c, p), WOLFSSL_SUCCESS);
	snprintf(p, sizeof(p), "%s/leaf.key", dir);
	assert_int_equal(wolfSSL_CTX_use_PrivateKey_file(c, p, WOLFSSL_FILETYPE_PEM),
			 WOLFSSL_SUCCESS);
	return c;
}

int group_setup(void **state)
{
	char ca[256], why[TLS_WHY_MAX] = "";
	const char *tmp = getenv("TMPDIR");

	(void)state;
	snprintf(dir, sizeof(dir), "%s/ringmx-net-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(dir))
		return -1;
	if (sh("cd %s && " REQ "-keyout ca.key -out ca.pem -subj /CN=net-test-ca 2>>gen.log",
	       dir) ||
	    sh("cd %s && " REQ "-keyout leaf.key -out leaf.pem -subj /CN=" PEER_NAME
	       " -CA ca.pem -CAkey ca.key -addext subjectAltName=DNS:" PEER_NAME
	       " -addext basicConstraints=critical,CA:FALSE 2>>gen.log",
	       dir))
		return -1;
	if (tls_global_init() != 0)
		return -1;
	snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
	struct tls_params p = {.role = TLS_ROLE_CLIENT, .ca_file = ca, .verify = true};
	cctx = tls_ctx_new(&p, why, sizeof(why));
	if (!cctx) {
		fprintf(stderr, "# client context: %s\n", why);
		return -1;
	}
	sctx_any = server_ctx(wolfSSLv23_server_method());
	sctx_13 = server_ctx(wolfTLSv1_3_server_method());
	return 0;
}

int group_teardown(void **state)
{
	(void)state;
	wolfSSL_CTX_free(sctx_any);
	wolfSSL_CTX_free(sctx_13);
	tls_ctx_free(cctx);
	tls_thread_cleanup();
	tls_global_cleanup();
	sh("rm -rf %s", dir);
	return 0;
}

int setup(void **state)
{
	(void)state;
	ntl_open(&fx, 1);
	return 0;
}

int teardown(void **state)
{
	(void)state;
	ntl_close(&fx);
	return 0;
}

/* ---- waits -------------------------------------------------------------------------- */

void tc_peer(void *arg)
{
	srv_step(&((struct tcase *)arg)->s);
}

bool tc_ready(void *arg)
{
	struct tcase *k = arg;

	return ntl_count(&k->r, NTL_EV_TLS_READY) || ntl_closed(&k->r) || k->s.fatal;
}

bool tc_data(void *arg)
{
	struct tcase *k = arg;

	return (k->r.in_len >= k->want_in && k->s.in_len >= k->want_srv &&
		(k->want_srv == 0 || ntl_count(&k->r, NTL_EV_SENT))) ||
	       ntl_closed(&k->r) || k->s.fatal;
}

bool tc_closed(void *arg)
{
	return ntl_closed(&((struct tcase *)arg)->r);
}

/* The log without on_recv's letters (one per socket read, handshake
 * reads included, so their number is the kernel's business). */
const char *log_no_recv(const struct ntl_rec *r)
{
	static char out[NTL_LOG_MAX + 1];
	size_t n = 0;

	for (size_t i = 0; i < r->nlog; i++)
		if (r->log[i] != NTL_EV_RECV)
			out[n++] = r->log[i];
	out[n] = '\0';
	return out;
}

/* Connected, TLS started, handshake done on both ends. */
void tc_open(struct tcase *k, WOLFSSL_CTX *sctx)
{
	int peer;

	ntl_rec_init(&k->r, &fx);
	k->r.arg = k;
	peer = ntl_connect_accept(&fx, &k->r);
	srv_open(&k->s, sctx, peer);
	assert_int_equal(net_tls_start(k->r.nc, cctx, PEER_NAME), 0);
	assert_null(net_tls(k->r.nc)); /* not before on_tls_ready */
	ntl_run(&fx, tc_ready, tc_peer, k, "TLS handshake");
	if (k->s.fatal)
		fail_msg("server: wolfSSL error %d", k->s.fatal);
	assert_string_equal(log_no_recv(&k->r), "CT");
	assert_non_null(net_tls(k->r.nc));
	assert_true(tls_conn_peer_verified(net_tls(k->r.nc)));
}

void tc_free(struct tcase *k)
{
	srv_free(&k->s);
	ntl_rec_free(&k->r);
}

char *pattern(size_t len)
{
	char *p = malloc(len);

	assert_non_null(p);
	for (size_t i = 0; i < len; i++)
		p[i] = (char)(i * 131 + (i >> 11) + 3);
	return p;
}
