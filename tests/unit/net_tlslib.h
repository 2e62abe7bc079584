/*
 * net_tlslib — the TLS fixture of net's TLS tests (see net_tlslib.c).  One
 * group of cases at a time per program: the fixture is global.
 */
#ifndef RMX_TEST_NET_TLSLIB_H
#define RMX_TEST_NET_TLSLIB_H

#include <wolfssl/options.h>

#include <wolfssl/ssl.h>

#include <stdbool.h>
#include <stddef.h>

#include "net_testlib.h"

#define PEER_NAME  "mx.test"
#define SRV_IN_MAX (1 << 22)

extern char dir[128];
extern struct ntl fx;
extern struct tls_ctx *cctx;
extern WOLFSSL_CTX *sctx_any, *sctx_13;

/* The server end: wolfSSL on the accepted socket, stepped by the waits. */
struct srv {
	WOLFSSL *ssl;
	int fd;
	bool up;	/* handshake done */
	bool got_close; /* the client's close_notify came */
	bool eof;	/* the socket closed under it */
	bool read_off;	/* the test stops it reading */
	int fatal;	/* a wolfSSL error other than want-read/write */
	size_t in_len;
	char *in;	 /* plaintext from the client */
	const char *out; /* plaintext due to the client */
	size_t out_len, out_off;
};

void srv_open(struct srv *s, WOLFSSL_CTX *ctx, int fd);
void srv_free(struct srv *s);
bool srv_again(struct srv *s, int rc);
void srv_step(struct srv *s);

int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
WOLFSSL_CTX *server_ctx(WOLFSSL_METHOD *m);
/* cmocka group and per-case fixtures */
int group_setup(void **state);
int group_teardown(void **state);
int setup(void **state);
int teardown(void **state);

/* One client (net) and server pair. */
struct tcase {
	struct ntl_rec r;
	struct srv s;
	size_t want_in, want_srv; /* bytes each side waits for */
};

void tc_peer(void *arg);
bool tc_ready(void *arg);
bool tc_data(void *arg);
bool tc_closed(void *arg);
const char *log_no_recv(const struct ntl_rec *r);
/* Connected, TLS started, handshake done on both ends. */
void tc_open(struct tcase *k, WOLFSSL_CTX *sctx);
void tc_free(struct tcase *k);
char *pattern(size_t len);

#endif
