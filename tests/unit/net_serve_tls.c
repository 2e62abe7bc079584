/*
 * Pins net's TLS server role (src/net/net_tls_serve.c) on served
 * connections, on a real ring and real loopback sockets, against a
 * wolfSSL client the test drives on its non-blocking end: implicit TLS,
 * the STARTTLS switch (bytes behind the command dropped, the 220 in
 * plaintext), the client's close_notify, net_shutdown's close_notify
 * behind the last reply, and net_drop_output while a TLS send is in
 * flight.  The plaintext served mode is pinned in net_serve.c.
 */
#include <wolfssl/options.h>

#include <wolfssl/error-ssl.h>
#include <wolfssl/ssl.h>

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "net_serve_testlib.h"
#include "net_tlslib.h"
#include "tls/tls.h"

#define CLI_IN_MAX 65536

static struct nst sx;
static struct nst_peer peer;
static struct tls_ctx *server_tls;
static WOLFSSL_CTX *client_ctx;

static const struct nst_cfg cfg = {
    .nslots = 1, .nbufs = 16, .buf_size = 4096, .inq_cap = 4, .out_cap = 4096, .users = 16};
/* A write buffer that takes more than the socket buffers hold. */
#define BIG 400000
static const struct nst_cfg cfg_big = {
    .nslots = 1, .nbufs = 16, .buf_size = 4096, .inq_cap = 4, .out_cap = 512 * 1024, .users = 16};

/* ---- the client ------------------------------------------------------------------ */

struct cli {
	WOLFSSL *ssl;
	int fd;
	bool up, got_close, eof;
	int fatal;
	char in[CLI_IN_MAX];
	size_t in_len, want;
	const char *out;
	size_t out_len, out_off;
};

static struct cli cl;

static void cli_start(struct cli *c, int fd)
{
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->ssl = wolfSSL_new(client_ctx);
	assert_non_null(c->ssl);
	assert_int_equal(wolfSSL_set_fd(c->ssl, fd), WOLFSSL_SUCCESS);
	assert_int_equal(wolfSSL_check_domain_name(c->ssl, PEER_NAME), WOLFSSL_SUCCESS);
}

static void cli_free(struct cli *c)
{
	wolfSSL_free(c->ssl);
	c->ssl = NULL;
}

static bool cli_again(struct cli *c, int rc)
{
	int e = wolfSSL_get_error(c->ssl, rc);

	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
		return true;
	if (e == WOLFSSL_ERROR_ZERO_RETURN)
		c->got_close = true;
	else if (e == SOCKET_PEER_CLOSED_E || e == WOLFSSL_ERROR_SYSCALL || rc == 0)
		c->eof = true;
	else
		c->fatal = e;
	return false;
}

/* One step: the handshake, then read what came, then write what is due. */
static void cli_step(void *arg)
{
	struct cli *c = arg;
	int rc;

	if (!c->ssl || c->fatal || c->got_close || c->eof)
		return;
	if (!c->up) {
		rc = wolfSSL_connect(c->ssl);
		if (rc != WOLFSSL_SUCCESS) {
			cli_again(c, rc);
			return;
		}
		c->up = true;
	}
	while (c->in_len < CLI_IN_MAX) {
		rc = wolfSSL_read(c->ssl, c->in + c->in_len, (int)(CLI_IN_MAX - c->in_len));
		if (rc <= 0) {
			if (!cli_again(c, rc))
				return;
			break;
		}
		c->in_len += (size_t)rc;
	}
	while (c->out_off < c->out_len) {
		rc = wolfSSL_write(c->ssl, c->out + c->out_off, (int)(c->out_len - c->out_off));
		if (rc <= 0) {
			cli_again(c, rc);
			return;
		}
		c->out_off += (size_t)rc;
	}
}

/* The client's step while the wait is on the served side. */
static void cli_pump(void *arg)
{
	(void)arg;
	cli_step(&cl);
}

static void cli_send(struct cli *c, const char *s)
{
	c->out = s;
	c->out_len = strlen(s);
	c->out_off = 0;
}

static bool cli_has(void *arg)
{
	struct cli *c = arg;

	return c->in_len >= c->want || c->fatal || c->got_close || c->eof;
}

static void cli_wait(struct cli *c, size_t want, const char *what)
{
	c->want = want;
	nst_run(&sx, cli_has, cli_step, c, what);
	if (c->fatal)
		fail_msg("%s: client wolfSSL error %d", what, c->fatal);
}

static bool cli_ended(void *arg)
{
	struct cli *c = arg;

	return c->fatal || c->got_close || c->eof;
}

/* ---- the protocol ---------------------------------------------------------------- */

struct proto {
	bool greet; /* write a greeting at on_tls_ready (implicit TLS) */
};

/* Takes everything and echoes it; a first line STARTTLS is answered in
 * plaintext and switches, and only that line is taken. */
static size_t echo_feed(struct nsp *r, const char *p, size_t len, uint16_t bid)
{
	(void)bid;
	if (!net_tls_begun(r->nc) && len >= 10 && memcmp(p, "STARTTLS\r\n", 10) == 0) {
		nsp_take(r, p, 10);
		net_write(r->nc, "220 go\r\n", 8);
		net_starttls(r->nc, server_tls);
		assert_false(net_open_for_input(r->nc));
		return 10;
	}
	nsp_take(r, p, len);
	assert_true(len <= net_out_free(r->nc));
	net_write(r->nc, p, len);
	return len;
}

static void greet(struct nsp *r)
{
	const struct proto *pr = r->arg;

	if (pr->greet)
		net_write(r->nc, "220 tls\r\n", 9);
}

static bool ready(void *arg)
{
	struct nsp *r = arg;

	return (nsp_count(r, NST_EV_TLS_READY) && cl.up) || nsp_closed(r) || cl.fatal || cl.eof;
}

static void handshake(struct nsp *r)
{
	nst_run(&sx, ready, cli_pump, r, "handshake");
	if (cl.fatal)
		fail_msg("client: wolfSSL error %d", cl.fatal);
	assert_int_equal(nsp_count(r, NST_EV_TLS_READY), 1);
	assert_true(cl.up);
	assert_non_null(net_tls(r->nc));
	assert_false(net_tls_handshaking(r->nc));
}

static void open_served(struct nsp *r, struct proto *pr)
{
	nsp_init(r, &sx);
	r->arg = pr;
	r->feed = echo_feed;
	r->on_tls_ready = greet;
	nst_peer_init(&peer, &sx, nst_accept(&sx, r));
}

/* STARTTLS sent with a command behind it in the same segment: the command
 * is dropped (CVE-2011-0411), the 220 comes in plaintext, then the
 * handshake. */
static void starttls(struct nsp *r)
{
	net_receive(r->nc);
	ntl_write_all(peer.fd, "STARTTLS\r\nMAIL FROM:<injected>\r\n", 32);
	nst_peer_wait(&peer, 8, "the 220 in plaintext");
	assert_int_equal(peer.len, 8);
	assert_memory_equal(peer.in, "220 go\r\n", 8);
	assert_true(net_tls_begun(r->nc));
	cli_start(&cl, peer.fd);
	handshake(r);
	assert_int_equal(r->fed_len, 10);
	assert_memory_equal(r->fed, "STARTTLS\r\n", 10);
}

/* ---- fixtures -------------------------------------------------------------------- */

static int tls_group_setup(void **state)
{
	char cert[256], key[256], ca[256], why[TLS_WHY_MAX] = "";
	static const char *const names[] = {PEER_NAME};

	if (group_setup(state) != 0)
		return -1;
	snprintf(cert, sizeof(cert), "%s/leaf.pem", dir);
	snprintf(key, sizeof(key), "%s/leaf.key", dir);
	snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
	struct tls_cert_params cp = {.cert = cert, .key = key, .names = names, .name_count = 1};
	struct tls_params p = {.role = TLS_ROLE_SERVER, .certs = &cp, .cert_count = 1};

	server_tls = tls_ctx_new(&p, why, sizeof(why));
	if (!server_tls) {
		fprintf(stderr, "# server context: %s\n", why);
		return -1;
	}
	client_ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
	if (!client_ctx ||
	    wolfSSL_CTX_load_verify_locations(client_ctx, ca, NULL) != WOLFSSL_SUCCESS)
		return -1;
	wolfSSL_CTX_set_verify(client_ctx, WOLFSSL_VERIFY_PEER, NULL);
	return 0;
}

static int tls_group_teardown(void **state)
{
	wolfSSL_CTX_free(client_ctx);
	tls_ctx_free(server_tls);
	return group_teardown(state);
}

static int sv_setup(void **state)
{
	(void)state;
	nst_open(&sx, &cfg);
	return 0;
}

static int sv_setup_big(void **state)
{
	(void)state;
	nst_open(&sx, &cfg_big);
	return 0;
}

static int sv_teardown(void **state)
{
	(void)state;
	cli_free(&cl);
	nst_close(&sx);
	return 0;
}

/* ---- cases ----------------------------------------------------------------------- */

/* TLS from the first byte: the handshake, on_tls_ready (the greeting goes
 * encrypted), plaintext both ways from user buffers; the client's
 * close_notify closes the connection, answered by ours. */
static void test_implicit_tls_then_peer_close_notify(void **state)
{
	struct nsp r;
	struct proto pr = {.greet = true};

	(void)state;
	open_served(&r, &pr);
	assert_int_equal(net_tls_accept(r.nc, server_tls), 0);
	assert_true(net_tls_handshaking(r.nc));
	net_receive(r.nc);
	cli_start(&cl, peer.fd);
	handshake(&r);
	cli_wait(&cl, 9, "the greeting");
	assert_memory_equal(cl.in, "220 tls\r\n", 9);
	cli_send(&cl, "EHLO client\r\n");
	cli_wait(&cl, 9 + 13, "the echo");
	assert_memory_equal(cl.in + 9, "EHLO client\r\n", 13);
	assert_int_equal(r.fed_len, 13);
	assert_memory_equal(r.fed, "EHLO client\r\n", 13);
	assert_true(r.user_bid); /* decrypted into a user buffer */
	assert_false(r.bid_bad);
	assert_int_equal(wolfSSL_shutdown(cl.ssl), WOLFSSL_SHUTDOWN_NOT_DONE);
	nst_run(&sx, nsp_closed, cli_pump, &r, "closed by the client's close_notify");
	assert_string_equal(r.log, "TFX");
	nst_run(&sx, cli_ended, cli_step, &cl, "our close_notify");
	assert_true(cl.got_close || cl.eof);
	assert_int_equal(cl.in_len, 22); /* nothing more came */
	nst_settle(&sx, 5);
	assert_int_equal(sx.stale, 0);
	assert_int_equal(nst_held(&sx), 0);
	assert_int_equal(sx.ring.user_free_count, cfg.users);
	close(peer.fd);
	nsp_free(&r);
}

/* STARTTLS, then plaintext both ways under TLS; net_shutdown sends the
 * last reply, then close_notify, then closes. */
static void test_starttls_then_shutdown(void **state)
{
	struct nsp r;
	struct proto pr = {.greet = false};

	(void)state;
	open_served(&r, &pr);
	starttls(&r);
	cli_send(&cl, "EHLO client\r\n");
	cli_wait(&cl, 13, "the echo");
	assert_memory_equal(cl.in, "EHLO client\r\n", 13);
	assert_int_equal(r.fed_len, 23); /* STARTTLS, then this: nothing injected */
	assert_memory_equal(r.fed + 10, "EHLO client\r\n", 13);
	net_write(r.nc, "221 bye\r\n", 9);
	net_shutdown(r.nc);
	assert_true(net_draining(r.nc));
	nst_run(&sx, cli_ended, cli_step, &cl, "close_notify");
	assert_true(cl.got_close); /* a TLS end, not a cut stream */
	assert_int_equal(cl.in_len, 22);
	assert_memory_equal(cl.in + 13, "221 bye\r\n", 9);
	nst_run(&sx, nsp_closed, NULL, &r, "closed");
	assert_string_equal(r.log, "FTFX");
	assert_int_equal(ntl_read_some(peer.fd, cl.in, 1), 0); /* then the socket's end */
	close(peer.fd);
	nsp_free(&r);
}

/* After STARTTLS, net_drop_output while a TLS send is in flight: that send
 * carries records already made, so nothing of the write buffer is kept.
 * Keeping out_sent bytes (set only by the plaintext 220's send) would
 * encrypt and send stale bytes of the buffer. */
static void test_drop_output_while_tls_send_in_flight(void **state)
{
	struct nsp r;
	struct proto pr = {.greet = false};

	(void)state;
	open_served(&r, &pr);
	starttls(&r);
	net_write(r.nc, "250 kept\r\n", 10);
	net_flush(r.nc); /* encrypted, its records in flight */
	net_write(r.nc, "250 dropped\r\n", 13);
	net_drop_output(r.nc);
	net_write(r.nc, "421 bye\r\n", 9);
	net_shutdown(r.nc);
	nst_run(&sx, cli_ended, cli_step, &cl, "close_notify");
	assert_true(cl.got_close);
	assert_int_equal(cl.in_len, 19);
	assert_memory_equal(cl.in, "250 kept\r\n421 bye\r\n", 19);
	nst_run(&sx, nsp_closed, NULL, &r, "closed");
	close(peer.fd);
	nsp_free(&r);
}

static bool offered(void *arg)
{
	struct nsp *r = arg;

	return r->feeds > 0 && nst_inq(r->sfd) == 0;
}

static bool ciphertext_waits(void *arg)
{
	return nst_inq(((struct nsp *)arg)->sfd) > 0;
}

static bool fed_six(void *arg)
{
	return ((struct nsp *)arg)->fed_len >= 6;
}

/* Parked under TLS: decrypted input held in a user buffer moves to the
 * stash and the buffer goes back; ciphertext sent meanwhile waits in the
 * socket.  Unparked, the stash is fed first, then the new input. */
static void test_tls_park_stash_unpark(void **state)
{
	struct nsp r;
	struct proto pr = {.greet = false};

	(void)state;
	open_served(&r, &pr);
	r.feed = NULL; /* the budget's feed */
	r.budget = 0;
	assert_int_equal(net_tls_accept(r.nc, server_tls), 0);
	net_receive(r.nc);
	cli_start(&cl, peer.fd);
	handshake(&r);
	cli_send(&cl, "abc");
	cli_step(&cl);
	nst_run(&sx, offered, cli_pump, &r, "offered");
	nst_settle(&sx, 10);
	assert_int_equal(sx.ring.user_free_count, cfg.users - 1); /* "abc", decrypted */
	r.park = true;
	net_resume(r.nc);
	assert_true(net_parked(r.nc));
	assert_int_equal(sx.ring.user_free_count, cfg.users);
	assert_int_equal(nst_held(&sx), 0);
	nst_settle(&sx, 10);
	cli_send(&cl, "def");
	cli_step(&cl);
	nst_run(&sx, ciphertext_waits, NULL, &r, "ciphertext in the socket");
	nst_settle(&sx, 10);
	assert_true(nst_inq(r.sfd) > 0); /* no recv while parked */
	assert_int_equal(r.fed_len, 0);
	r.park = false;
	r.budget = SIZE_MAX;
	net_resume(r.nc);
	assert_int_equal(r.fed_len, 3); /* the stash, at once */
	assert_memory_equal(r.fed, "abc", 3);
	nst_run(&sx, fed_six, cli_pump, &r, "after the stash");
	assert_memory_equal(r.fed, "abcdef", 6);
	assert_false(r.bid_bad);
	net_close(r.nc);
	nst_run(&sx, nsp_closed, NULL, &r, "closed");
	nst_settle(&sx, 5);
	assert_int_equal(sx.ring.user_free_count, cfg.users);
	assert_int_equal(nst_held(&sx), 0);
	assert_int_equal(sx.stale, 0);
	close(peer.fd);
	nsp_free(&r);
}

/* Plaintext on a TLS port: the handshake fails, the alert (if any) goes
 * out, the connection closes; the protocol hears nothing but on_closed,
 * and nothing it wrote before goes in plaintext. */
static void test_tls_handshake_failure_closes(void **state)
{
	struct nsp r;
	struct proto pr = {.greet = false};

	(void)state;
	open_served(&r, &pr);
	assert_int_equal(net_tls_accept(r.nc, server_tls), 0);
	net_write(r.nc, "not in plaintext\r\n", 18); /* due only under TLS */
	net_receive(r.nc);
	ntl_write_all(peer.fd, "EHLO client\r\n", 13);
	nst_peer_wait_eof(&peer, "the end");
	nst_run(&sx, nsp_closed, NULL, &r, "closed");
	assert_string_equal(r.log, "X");
	assert_int_equal(r.fed_len, 0);
	assert_null(memmem(peer.in, peer.len, "plaintext", 9));
	nst_settle(&sx, 5);
	assert_int_equal(sx.stale, 0);
	assert_int_equal(nst_held(&sx), 0);
	close(peer.fd);
	nsp_free(&r);
}

/* A client that reads a little at a time: sends complete in pieces. */
static void slow_pump(void *arg)
{
	struct nst_peer *p = arg;
	ssize_t n;

	if (p->eof)
		return;
	n = ntl_read_some(p->fd, p->in + p->len, 1000);
	if (n == 0)
		p->eof = true;
	else if (n > 0)
		p->len += (size_t)n;
}

static bool peer_ended(void *arg)
{
	return ((struct nst_peer *)arg)->eof;
}

static bool fed_starttls(void *arg)
{
	return ((struct nsp *)arg)->fed_len >= 10;
}

/* STARTTLS comes while replies back up (the client does not read): the
 * 220 is queued behind the send in flight, in plaintext.  The handshake
 * then times out (conn.c: net_drop_output, net_shutdown) and the client
 * reads slowly.  Only the bytes of the send in flight may go: the count of
 * plaintext bytes still due must shrink with the drop, else a later piece
 * sends bytes past the end of the buffer (and the completion's count
 * trips the write buffer's assertion). */
static void test_defect_drop_output_with_220_queued(void **state)
{
	struct nsp r;
	struct proto pr = {.greet = false};
	char *big = pattern(BIG);
	int small = 4096;

	(void)state;
	open_served(&r, &pr);
	assert_int_equal(setsockopt(r.sfd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
	assert_int_equal(setsockopt(peer.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
	net_receive(r.nc);
	net_write(r.nc, big, BIG);
	net_flush(r.nc);
	nst_settle(&sx, 20);
	sx.now += 1;
	assert_true(net_send_age(r.nc) > 0); /* backed up: still in flight */
	ntl_write_all(peer.fd, "STARTTLS\r\n", 10);
	nst_run(&sx, fed_starttls, NULL, &r, "STARTTLS");
	assert_true(net_tls_begun(r.nc));
	assert_true(net_send_age(r.nc) > 0);
	net_drop_output(r.nc); /* the handshake timed out */
	net_shutdown(r.nc);
	nst_run(&sx, peer_ended, slow_pump, &peer, "the kept bytes, then the end");
	assert_int_equal(peer.len, BIG);
	assert_memory_equal(peer.in, big, BIG);
	nst_run(&sx, nsp_closed, NULL, &r, "closed");
	assert_string_equal(r.log, "FX");
	close(peer.fd);
	free(big);
	nsp_free(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_implicit_tls_then_peer_close_notify, sv_setup,
					    sv_teardown),
	    cmocka_unit_test_setup_teardown(test_starttls_then_shutdown, sv_setup, sv_teardown),
	    cmocka_unit_test_setup_teardown(test_drop_output_while_tls_send_in_flight, sv_setup,
					    sv_teardown),
	    cmocka_unit_test_setup_teardown(test_tls_park_stash_unpark, sv_setup, sv_teardown),
	    cmocka_unit_test_setup_teardown(test_tls_handshake_failure_closes, sv_setup,
					    sv_teardown),
	    cmocka_unit_test_setup_teardown(test_defect_drop_output_with_220_queued, sv_setup_big,
					    sv_teardown),
	};

	if (system("openssl version >/dev/null 2>&1") != 0) {
		fprintf(stderr, "# openssl command missing: no certificates, skipped\n");
		return 77;
	}
	ntl_require_io_uring();
	return cmocka_run_group_tests(tests, tls_group_setup, tls_group_teardown);
}
