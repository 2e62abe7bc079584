/* Pins tls: TLS 1.2/1.3 over memory, data, SNI, refusals, verify, openssl peers, memory. */
#include <wolfssl/options.h>

#include <wolfssl/ssl.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tls/tls.h"

extern char **environ;

#define STEP_ALL       SIZE_MAX
#define TURNS_MAX      200000 /* pump turns before a test calls it stuck */
#define EXT_TIMEOUT_MS 15000  /* one openssl interop run */
#define EXT_OUT_MAX    65536
#define PATH_MAX_TEST  512

static char dir[256]; /* the run's temporary directory */

static const char *path(const char *name)
{
	static char buf[8][PATH_MAX_TEST];
	static unsigned next;
	char *p = buf[next++ % 8];
	snprintf(p, PATH_MAX_TEST, "%s/%s", dir, name);
	return p;
}

/* ---- counting allocator: wolfSSL heap per side ----------------------------- */

enum side { SIDE_OTHER = 0, SIDE_SERVER, SIDE_CLIENT, SIDE_COUNT };

struct mem_side {
	size_t live, peak, allocs;
};

static struct mem_side mem[SIDE_COUNT];
static enum side mem_cur;
static const struct tls_conn *side_conn[SIDE_COUNT]; /* whose calls are whose */

static enum side side_of(const struct tls_conn *c)
{
	return c == side_conn[SIDE_SERVER]   ? SIDE_SERVER
	       : c == side_conn[SIDE_CLIENT] ? SIDE_CLIENT
					     : SIDE_OTHER;
}

/* In front of every block.  The epoch keeps blocks from before a
 * measurement (wolfSSL's per-thread error queue, say) out of its figures
 * when they are freed during it. */
union mem_hdr {
	struct {
		size_t size;
		uint32_t epoch;
		uint8_t side;
	} h;
	max_align_t align;
};

static uint32_t mem_epoch;

static void mem_reset(void)
{
	mem_epoch++;
	memset(mem, 0, sizeof mem);
}

static void mem_add(enum side s, size_t n)
{
	mem[s].live += n;
	mem[s].allocs++;
	if (mem[s].live > mem[s].peak)
		mem[s].peak = mem[s].live;
}

static void mem_sub(const union mem_hdr *m)
{
	if (m->h.epoch == mem_epoch)
		mem[m->h.side].live -= m->h.size;
}

static void *count_malloc(size_t n)
{
	union mem_hdr *m = malloc(sizeof *m + n);
	if (m == NULL)
		return NULL;
	m->h.size = n;
	m->h.epoch = mem_epoch;
	m->h.side = (uint8_t)mem_cur;
	mem_add(mem_cur, n);
	return m + 1;
}

static void count_free(void *q)
{
	if (q == NULL)
		return;
	union mem_hdr *m = (union mem_hdr *)q - 1;
	mem_sub(m);
	free(m);
}

static void *count_realloc(void *q, size_t n)
{
	if (q == NULL)
		return count_malloc(n);
	union mem_hdr *m = (union mem_hdr *)q - 1, old = *m;
	union mem_hdr *r = realloc(m, sizeof *r + n);
	if (r == NULL)
		return NULL;
	mem_sub(&old);
	r->h.size = n;
	r->h.epoch = mem_epoch;
	mem_add(old.h.side, n);
	return r + 1;
}

/* ---- contexts and pairs ------------------------------------------------------ */

static const char *const ec_names[] = {"mx.test", "*.wild.test"};
static const char *const rsa_names[] = {"other.test"};

static const struct tls_cert_params ec_cert = {"", "", ec_names, 2};
static const struct tls_cert_params rsa_cert = {"", "", rsa_names, 1};

static struct tls_cert_params cert_at(const struct tls_cert_params *proto, const char *stem)
{
	struct tls_cert_params cp = *proto;
	char name[64];
	snprintf(name, sizeof name, "%s.pem", stem);
	cp.cert = strdup(path(name));
	snprintf(name, sizeof name, "%s.key", stem);
	cp.key = strdup(path(name));
	return cp;
}

static void cert_drop(struct tls_cert_params *cp, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free((char *)cp[i].cert);
		free((char *)cp[i].key);
	}
}

/* A server context over the named certificates ("ec", "rsa"). */
static struct tls_ctx *server_ctx(const char *min, const char *max, const char *first,
				  const char *second)
{
	struct tls_cert_params cp[2];
	size_t n = 0;
	const char *stems[2] = {first, second};
	for (size_t i = 0; i < 2 && stems[i] != NULL; i++)
		cp[n++] = cert_at(strcmp(stems[i], "ec") == 0 ? &ec_cert : &rsa_cert, stems[i]);
	struct tls_params p = {.role = TLS_ROLE_SERVER,
			       .certs = cp,
			       .cert_count = n,
			       .min_version = min,
			       .max_version = max};
	char why[TLS_WHY_MAX] = "";
	struct tls_ctx *t = tls_ctx_new(&p, why, sizeof why);
	if (t == NULL)
		fprintf(stderr, "# server_ctx: %s\n", why);
	cert_drop(cp, n);
	assert_non_null(t);
	return t;
}

static struct tls_ctx *client_ctx(const char *max, const char *ca, bool verify)
{
	struct tls_params p = {.role = TLS_ROLE_CLIENT,
			       .max_version = max,
			       .ca_file = ca != NULL ? path(ca) : NULL,
			       .verify = verify};
	char why[TLS_WHY_MAX] = "";
	struct tls_ctx *t = tls_ctx_new(&p, why, sizeof why);
	if (t == NULL)
		fprintf(stderr, "# client_ctx: %s\n", why);
	assert_non_null(t);
	return t;
}

struct pair {
	struct tls_ctx *sctx, *cctx;
	struct tls_conn *s, *c;
	int src, crc; /* last handshake results */
};

static void pair_open(struct pair *pr, struct tls_ctx *sctx, struct tls_ctx *cctx,
		      const char *peer_name)
{
	pr->sctx = sctx;
	pr->cctx = cctx;
	mem_cur = SIDE_SERVER;
	pr->s = tls_conn_new(sctx, NULL);
	mem_cur = SIDE_CLIENT;
	pr->c = tls_conn_new(cctx, peer_name);
	mem_cur = SIDE_OTHER;
	assert_non_null(pr->s);
	assert_non_null(pr->c);
	side_conn[SIDE_SERVER] = pr->s;
	side_conn[SIDE_CLIENT] = pr->c;
	pr->src = pr->crc = -EAGAIN;
}

static void pair_close(struct pair *pr)
{
	tls_conn_free(pr->s);
	tls_conn_free(pr->c);
	tls_ctx_free(pr->sctx);
	tls_ctx_free(pr->cctx);
	memset(pr, 0, sizeof *pr);
}

/* Move at most step ciphertext bytes from one side's out to the other's in;
 * the bytes moved. */
static size_t xfer(struct tls_conn *from, struct tls_conn *to, size_t step)
{
	const void *p;
	size_t len;
	if (!tls_conn_out(from, &p, &len))
		return 0;
	size_t n = tls_conn_feed(to, p, len < step ? len : step);
	tls_conn_out_done(from, n);
	return n;
}

static bool again(int rc)
{
	return rc == -EAGAIN || rc == -ENOBUFS;
}

/* Run both handshakes to the end, moving step bytes at a time.  True when
 * both finished; false when one failed (alerts are delivered first). */
static bool pair_handshake(struct pair *pr, size_t step)
{
	for (int turn = 0; turn < TURNS_MAX; turn++) {
		mem_cur = SIDE_SERVER;
		pr->src = tls_conn_handshake(pr->s);
		mem_cur = SIDE_CLIENT;
		pr->crc = tls_conn_handshake(pr->c);
		mem_cur = SIDE_OTHER;
		size_t moved = xfer(pr->c, pr->s, step) + xfer(pr->s, pr->c, step);
		if (pr->src == 0 && pr->crc == 0 && moved == 0)
			return true;
		bool failed = !again(pr->src) && pr->src != 0;
		failed = failed || (!again(pr->crc) && pr->crc != 0);
		if (failed && moved == 0)
			return false;
		if (!failed && moved == 0 && pr->src != 0 && pr->crc != 0)
			fail_msg("handshake stuck: server %d client %d", pr->src, pr->crc);
	}
	fail_msg("handshake did not end in %d turns", TURNS_MAX);
	return false;
}

/* Send len bytes from one side to the other: writes of at most wsize,
 * ciphertext moved step bytes at a time, reads of at most rsize. */
static void pair_send(struct tls_conn *from, struct tls_conn *to, const unsigned char *data,
		      size_t len, size_t wsize, size_t step, size_t rsize)
{
	unsigned char *got = malloc(len + 1);
	unsigned char rbuf[65536];
	assert_non_null(got);
	assert_true(rsize <= sizeof rbuf);
	size_t sent = 0, recvd = 0;
	for (int turn = 0; recvd < len; turn++) {
		assert_true(turn < TURNS_MAX * 10);
		if (sent < len) {
			size_t w = len - sent < wsize ? len - sent : wsize;
			mem_cur = side_of(from);
			ssize_t rc = tls_conn_write(from, data + sent, w);
			assert_true(rc > 0 || rc == -ENOBUFS);
			if (rc > 0)
				sent += (size_t)rc;
		}
		xfer(from, to, step);
		mem_cur = side_of(to);
		ssize_t rc;
		while ((rc = tls_conn_read(to, rbuf, rsize)) > 0) {
			assert_true(recvd + (size_t)rc <= len);
			memcpy(got + recvd, rbuf, (size_t)rc);
			recvd += (size_t)rc;
		}
		assert_true(rc == -EAGAIN || rc == -ENOBUFS);
		mem_cur = SIDE_OTHER;
		xfer(to, from, STEP_ALL);
	}
	assert_memory_equal(got, data, len);
	free(got);
}

static unsigned char *pattern(size_t len)
{
	unsigned char *p = malloc(len);
	assert_non_null(p);
	for (size_t i = 0; i < len; i++)
		p[i] = (unsigned char)(i * 131 + i / 251);
	return p;
}

static void exchange_short(struct pair *pr)
{
	static const unsigned char ping[] = "EHLO client.test\r\n";
	static const unsigned char pong[] = "250-mx.test\r\n250 STARTTLS\r\n";
	pair_send(pr->c, pr->s, ping, sizeof ping - 1, 4096, STEP_ALL, 4096);
	pair_send(pr->s, pr->c, pong, sizeof pong - 1, 4096, STEP_ALL, 4096);
}

/* ---- handshakes ---------------------------------------------------------------- */

struct combo {
	const char *version; /* client max_version */
	const char *stem;    /* server certificate */
	const char *name;    /* a name of that certificate */
	const char *want_version, *want_kx;
};

static const struct combo combos[] = {
    {"1.3", "ec", "mx.test", "TLSv1.3", "TLS_"},
    {"1.3", "rsa", "other.test", "TLSv1.3", "TLS_"},
    {"1.2", "ec", "mx.test", "TLSv1.2", "TLS_ECDHE_ECDSA_WITH_"},
    {"1.2", "rsa", "other.test", "TLSv1.2", "TLS_ECDHE_RSA_WITH_"},
};

static void test_handshake_versions_and_keys(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof combos / sizeof combos[0]; i++) {
		const struct combo *k = &combos[i];
		struct pair pr;
		pair_open(&pr, server_ctx(NULL, NULL, k->stem, NULL),
			  client_ctx(k->version, "ca.pem", true), k->name);
		assert_true(pair_handshake(&pr, STEP_ALL));
		assert_string_equal(tls_conn_version(pr.s), k->want_version);
		assert_string_equal(tls_conn_version(pr.c), k->want_version);
		assert_string_equal(tls_conn_cipher(pr.s), tls_conn_cipher(pr.c));
		assert_non_null(strstr(tls_conn_cipher(pr.c), k->want_kx));
		assert_string_equal(tls_conn_sni(pr.s), k->name);
		assert_true(tls_conn_peer_verified(pr.c));
		assert_string_equal(tls_conn_error(pr.c), "");
		char cn[128];
		assert_true(tls_conn_peer_cn(pr.c, cn, sizeof cn));
		assert_string_equal(cn, k->name);
		exchange_short(&pr);
		pair_close(&pr);
	}
}

/* A byte of ciphertext at a time through the whole handshake. */
static void test_handshake_one_byte_at_a_time(void **state)
{
	(void)state;
	const char *versions[] = {"1.2", "1.3"};
	for (size_t i = 0; i < 2; i++) {
		struct pair pr;
		pair_open(&pr, server_ctx(NULL, NULL, "rsa", NULL),
			  client_ctx(versions[i], "ca.pem", true), "other.test");
		assert_true(pair_handshake(&pr, 1));
		exchange_short(&pr);
		pair_close(&pr);
	}
}

/* The cipher list reaches wolfSSL.  A list without TLS 1.3 suites means
 * TLS 1.2 for every client, and the order of the list does not matter. */
struct cipher_case {
	const char *list, *client_max, *want_version, *want_cipher;
};

static const struct cipher_case cipher_cases[] = {
    {"ECDHE-ECDSA-AES128-GCM-SHA256", NULL, "TLSv1.2", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"},
    {"ECDHE-ECDSA-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384", NULL, "TLSv1.3",
     "TLS_AES_256_GCM_SHA384"},
    {"ECDHE-ECDSA-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384", "1.2", "TLSv1.2",
     "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"},
    {"TLS_CHACHA20_POLY1305_SHA256:ECDHE-ECDSA-CHACHA20-POLY1305", NULL, "TLSv1.3",
     "TLS_CHACHA20_POLY1305_SHA256"},
};

static void test_cipher_list_applies(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cipher_cases / sizeof cipher_cases[0]; i++) {
		const struct cipher_case *k = &cipher_cases[i];
		struct tls_cert_params cp = cert_at(&ec_cert, "ec");
		struct tls_params p = {
		    .role = TLS_ROLE_SERVER, .certs = &cp, .cert_count = 1, .ciphers = k->list};
		char why[TLS_WHY_MAX] = "";
		struct tls_ctx *t = tls_ctx_new(&p, why, sizeof why);
		cert_drop(&cp, 1);
		if (t == NULL)
			fail_msg("%s: %s", k->list, why);
		struct pair pr;
		pair_open(&pr, t, client_ctx(k->client_max, "ca.pem", true), "mx.test");
		if (!pair_handshake(&pr, STEP_ALL))
			fail_msg("%s: %s / %s", k->list, tls_conn_error(pr.s),
				 tls_conn_error(pr.c));
		assert_string_equal(tls_conn_version(pr.c), k->want_version);
		assert_string_equal(tls_conn_cipher(pr.c), k->want_cipher);
		pair_close(&pr);
	}
}

/* ---- application data ------------------------------------------------------------ */

static void test_data_split_sizes(void **state)
{
	(void)state;
	const char *versions[] = {"1.2", "1.3"};
	size_t big = 300 * 1024;
	unsigned char *data = pattern(big);
	for (size_t i = 0; i < 2; i++) {
		struct pair pr;
		pair_open(&pr, server_ctx(NULL, NULL, "ec", NULL),
			  client_ctx(versions[i], "ca.pem", true), "mx.test");
		assert_true(pair_handshake(&pr, STEP_ALL));
		/* one byte written, moved and read at a time, both ways */
		pair_send(pr.c, pr.s, data, 700, 1, 1, 1);
		pair_send(pr.s, pr.c, data, 700, 1, 1, 1);
		/* whole writes, big ciphertext moves, big reads */
		pair_send(pr.c, pr.s, data, big, big, STEP_ALL, 65536);
		pair_send(pr.s, pr.c, data, big, big, STEP_ALL, 65536);
		/* odd sizes that split records everywhere */
		pair_send(pr.c, pr.s, data, big, 1000, 7, 13);
		pair_send(pr.s, pr.c, data, 50000, 16385, 4093, 777);
		pair_close(&pr);
	}
	free(data);
}

/* The out buffer fills and says so; feed takes only the room it has. */
static void test_buffers_are_bounded(void **state)
{
	(void)state;
	struct pair pr;
	pair_open(&pr, server_ctx(NULL, NULL, "ec", NULL), client_ctx(NULL, "ca.pem", true),
		  "mx.test");
	assert_true(pair_handshake(&pr, STEP_ALL));
	unsigned char *data = pattern(4 * TLS_CONN_OUT_MAX);
	size_t taken = 0;
	ssize_t rc;
	while ((rc = tls_conn_write(pr.s, data + taken, 4 * TLS_CONN_OUT_MAX - taken)) > 0)
		taken += (size_t)rc;
	assert_int_equal(rc, -ENOBUFS);
	assert_true(taken > 0 && taken < TLS_CONN_OUT_MAX);
	const void *p;
	size_t len;
	assert_true(tls_conn_out(pr.s, &p, &len));
	assert_true(len <= TLS_CONN_OUT_MAX);
	/* the in buffer takes TLS_CONN_IN_MAX and no more */
	size_t n = tls_conn_feed(pr.c, p, len);
	assert_int_equal(n, len < TLS_CONN_IN_MAX ? len : TLS_CONN_IN_MAX);
	assert_int_equal(tls_conn_in_free(pr.c), TLS_CONN_IN_MAX - n);
	tls_conn_out_done(pr.s, n);
	/* what was taken arrives intact, then the rest goes through */
	unsigned char *got = malloc(taken);
	size_t recvd = 0;
	assert_non_null(got);
	for (int turn = 0; recvd < taken; turn++) {
		assert_true(turn < 1000);
		ssize_t r = tls_conn_read(pr.c, got + recvd, taken - recvd);
		assert_true(r > 0 || r == -EAGAIN);
		if (r > 0)
			recvd += (size_t)r;
		else
			xfer(pr.s, pr.c, STEP_ALL);
	}
	assert_memory_equal(got, data, taken);
	free(got);
	pair_send(pr.s, pr.c, data + taken, 4 * TLS_CONN_OUT_MAX - taken, 65536, STEP_ALL, 65536);
	free(data);
	pair_close(&pr);
}

static void test_close_notify(void **state)
{
	(void)state;
	struct pair pr;
	pair_open(&pr, server_ctx(NULL, NULL, "ec", NULL), client_ctx(NULL, "ca.pem", true),
		  "mx.test");
	assert_true(pair_handshake(&pr, STEP_ALL));
	assert_int_equal(tls_conn_shutdown(pr.s), 0);
	assert_int_equal(tls_conn_write(pr.s, "x", 1), -EPIPE);
	xfer(pr.s, pr.c, STEP_ALL);
	char buf[64];
	assert_int_equal(tls_conn_read(pr.c, buf, sizeof buf), 0);
	assert_int_equal(tls_conn_read(pr.c, buf, sizeof buf), 0);
	pair_close(&pr);
}

/* ---- SNI ------------------------------------------------------------------------- */

struct sni_case {
	const char *send; /* NULL: no SNI */
	const char *want_cn, *want_sni;
};

static const struct sni_case sni_cases[] = {
    {"other.test", "other.test", "other.test"},
    {"MX.Test", "mx.test", "mx.test"},
    {"a.wild.test", "mx.test", "a.wild.test"},
    {"nobody.test", "mx.test", "nobody.test"}, /* unknown: the first certificate */
    {NULL, "mx.test", ""},
};

static void sni_run(const char *version, const char *first, const char *second)
{
	for (size_t i = 0; i < sizeof sni_cases / sizeof sni_cases[0]; i++) {
		const struct sni_case *k = &sni_cases[i];
		struct pair pr;
		pair_open(&pr, server_ctx(NULL, NULL, first, second),
			  client_ctx(version, "ca.pem", false), k->send);
		assert_true(pair_handshake(&pr, STEP_ALL));
		char cn[128];
		assert_true(tls_conn_peer_cn(pr.c, cn, sizeof cn));
		bool default_first = strcmp(first, "ec") == 0;
		const char *want = k->want_cn;
		if (!default_first && (k->send == NULL || strcmp(k->send, "nobody.test") == 0))
			want = "other.test";
		assert_string_equal(cn, want);
		assert_string_equal(tls_conn_sni(pr.s), k->want_sni);
		/* the name check is part of "verified": an unserved name fails it;
		 * with no name only the chain is checked */
		bool named = k->send == NULL || strcmp(k->send, "nobody.test") != 0;
		assert_int_equal(tls_conn_peer_verified(pr.c), named);
		exchange_short(&pr);
		pair_close(&pr);
	}
}

/* Default ECDSA, RSA by name, and the other way round: the suites a
 * TLS 1.2 session may use change with the key type. */
static void test_sni_selects_certificate(void **state)
{
	(void)state;
	sni_run("1.3", "ec", "rsa");
	sni_run("1.2", "ec", "rsa");
	sni_run("1.3", "rsa", "ec");
	sni_run("1.2", "rsa", "ec");
}

/* ---- refusals ---------------------------------------------------------------------- */

static void test_min_version_13_refuses_12_client(void **state)
{
	(void)state;
	struct pair pr;
	pair_open(&pr, server_ctx("1.3", NULL, "ec", NULL), client_ctx("1.2", "ca.pem", true),
		  "mx.test");
	assert_false(pair_handshake(&pr, STEP_ALL));
	assert_int_equal(pr.src, -EPROTO);
	assert_int_equal(pr.crc, -EPROTO);
	assert_string_not_equal(tls_conn_error(pr.s), "");
	assert_string_not_equal(tls_conn_error(pr.c), "");
	char buf[16];
	assert_int_equal(tls_conn_read(pr.s, buf, sizeof buf), -EPROTO);
	assert_int_equal(tls_conn_handshake(pr.s), -EPROTO); /* final */
	pair_close(&pr);
}

static void corrupt_run(const char *version)
{
	struct pair pr;
	pair_open(&pr, server_ctx(NULL, NULL, "ec", NULL), client_ctx(version, "ca.pem", true),
		  "mx.test");
	assert_true(pair_handshake(&pr, STEP_ALL));
	static const char secret[] = "MAIL FROM:<a@b.test>\r\n";
	assert_int_equal(tls_conn_write(pr.c, secret, sizeof secret - 1), sizeof secret - 1);
	const void *p;
	size_t len;
	assert_true(tls_conn_out(pr.c, &p, &len));
	unsigned char rec[256];
	assert_true(len <= sizeof rec && len > 10);
	memcpy(rec, p, len);
	rec[len - 3] ^= 0x20; /* inside the AEAD tag / MAC */
	tls_conn_out_done(pr.c, len);
	assert_int_equal(tls_conn_feed(pr.s, rec, len), len);
	unsigned char buf[256];
	memset(buf, 0xAA, sizeof buf);
	assert_int_equal(tls_conn_read(pr.s, buf, sizeof buf), -EPROTO);
	for (size_t i = 0; i < sizeof buf; i++)
		assert_int_equal(buf[i], 0xAA); /* no plaintext came out */
	assert_int_equal(tls_conn_read(pr.s, buf, sizeof buf), -EPROTO);
	assert_int_equal(tls_conn_write(pr.s, "250 OK\r\n", 8), -EPROTO);
	/* the server's alert reaches the client and ends it too */
	assert_true(xfer(pr.s, pr.c, STEP_ALL) > 0);
	assert_int_equal(tls_conn_read(pr.c, buf, sizeof buf), -EPROTO);
	pair_close(&pr);
}

static void test_corrupted_record_fails(void **state)
{
	(void)state;
	corrupt_run("1.3");
	corrupt_run("1.2");
}

/* Plaintext SMTP on an implicit-TLS port: a failed handshake, never data. */
static void test_plaintext_to_server_fails(void **state)
{
	(void)state;
	struct tls_ctx *t = server_ctx(NULL, NULL, "ec", NULL);
#define JUNK(s)                                                                                    \
	{                                                                                          \
		s, sizeof s - 1                                                                    \
	}
	static const struct {
		const char *p;
		size_t len;
	} junk[] = {
	    JUNK("EHLO client.test\r\n"), JUNK("GET / HTTP/1.0\r\n\r\n"),
	    JUNK("\x16\x03\x01\x00\x05hello"),		      /* a handshake record of nonsense */
	    JUNK("\x16\x03\x01\x00\x05\x01\x01\x00\x00\x00"), /* a 64 KiB ClientHello */
	};
	for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
		struct tls_conn *c = tls_conn_new(t, NULL);
		assert_int_equal(tls_conn_feed(c, junk[i].p, junk[i].len), junk[i].len);
		assert_int_equal(tls_conn_handshake(c), -EPROTO);
		assert_string_not_equal(tls_conn_error(c), "");
		assert_int_equal(tls_conn_handshake(c), -EPROTO);
		tls_conn_free(c);
	}
	tls_ctx_free(t);
}

struct verify_case {
	const char *ca, *name;
	bool verify;
	int want_rc; /* client handshake */
	bool verified;
};

static const struct verify_case verify_cases[] = {
    {"ca.pem", "mx.test", true, 0, true},
    {"ca.pem", "b.wild.test", true, 0, true},
    {"ca.pem", "wrong.test", true, -EACCES, false},
    {"ca2.pem", "mx.test", true, -EACCES, false}, /* another CA */
    {"ca.pem", "wrong.test", false, 0, false},	  /* opportunistic: on, but logged */
    {"ca2.pem", "mx.test", false, 0, false},
};

static void test_client_verify_by_ca_and_name(void **state)
{
	(void)state;
	for (size_t v = 0; v < 2; v++)
		for (size_t i = 0; i < sizeof verify_cases / sizeof verify_cases[0]; i++) {
			const struct verify_case *k = &verify_cases[i];
			struct pair pr;
			pair_open(&pr, server_ctx(NULL, NULL, "ec", NULL),
				  client_ctx(v == 0 ? "1.2" : "1.3", k->ca, k->verify), k->name);
			bool ok = pair_handshake(&pr, STEP_ALL);
			assert_int_equal(ok, k->want_rc == 0);
			assert_int_equal(pr.crc, k->want_rc);
			assert_int_equal(tls_conn_peer_verified(pr.c), k->verified);
			if (!ok) {
				assert_non_null(strstr(tls_conn_error(pr.c), "peer certificate"));
				assert_true(pr.src < 0 && !again(pr.src)); /* told by alert */
			}
			pair_close(&pr);
		}
}

/* ---- configuration errors ------------------------------------------------------------ */

static void ctx_error(const struct tls_params *p, const char *want1, const char *want2)
{
	char why[TLS_WHY_MAX] = "";
	struct tls_ctx *t = tls_ctx_new(p, why, sizeof why);
	assert_null(t);
	if (strchr(why, '\n') != NULL)
		fail_msg("why is not one line: \"%s\"", why);
	if (strstr(why, want1) == NULL || (want2 != NULL && strstr(why, want2) == NULL))
		fail_msg("why \"%s\" lacks \"%s\" / \"%s\"", why, want1, want2 ? want2 : "");
}

static void test_ctx_errors_name_the_file(void **state)
{
	(void)state;
	struct tls_cert_params cp[2] = {cert_at(&ec_cert, "ec"), cert_at(&rsa_cert, "rsa")};
	struct tls_params p = {.role = TLS_ROLE_SERVER, .certs = cp, .cert_count = 2};
	const char *cert1 = cp[1].cert, *key1 = cp[1].key;
	cp[1].cert = path("missing.pem");
	ctx_error(&p, "tls.certificates[1].cert", "missing.pem\": No such file");
	cp[1].cert = key1; /* a key is not a certificate */
	ctx_error(&p, "tls.certificates[1].cert", "not a PEM certificate chain");
	cp[1].cert = cert1;
	cp[1].key = cp[0].key;
	ctx_error(&p, "tls.certificates[1].key", "does not match the certificate");
	cp[1].key = key1;
	const char *const uncovered[] = {"other.test", "nope.test"};
	cp[1].names = uncovered;
	cp[1].name_count = 2;
	ctx_error(&p, "tls.certificates[1].names[1] \"nope.test\"", "not covered");
	const char *const dup[] = {"MX.test"};
	cp[1].names = dup;
	cp[1].name_count = 1;
	ctx_error(&p, "tls.certificates[1].names[0]", "also in tls.certificates[0]");
	const char *const bad[] = {"mx.test\r\nX-Injected: 1"};
	cp[1].names = bad;
	ctx_error(&p, "tls.certificates[1].names[0]", "not a host name");
	cp[1].names = rsa_names;
	p.min_version = "1.1";
	ctx_error(&p, "tls.min_version \"1.1\"", "expected");
	p.min_version = "1.3";
	p.max_version = "1.2";
	ctx_error(&p, "tls.min_version", "above max_version");
	p.max_version = NULL;
	p.ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256";
	ctx_error(&p, "tls.ciphers", "no TLS 1.3 cipher for min_version 1.3");
	p.min_version = NULL;
	p.ciphers = "NO-SUCH-CIPHER";
	ctx_error(&p, "tls.ciphers \"NO-SUCH-CIPHER\"", NULL);
	p.ciphers = NULL;
	p.cert_count = 0;
	ctx_error(&p, "tls.certificates", "expected 1 to");
	struct tls_params c = {.role = TLS_ROLE_CLIENT, .ca_file = path("nothere.pem")};
	ctx_error(&c, "tls.ca_file", "nothere.pem\": No such file");
	c.ca_file = path("ec.key");
	ctx_error(&c, "tls.ca_file", "no PEM CA certificate");
	/* and the good ones load: the system store too */
	c.ca_file = NULL;
	c.verify = true;
	char cwhy[TLS_WHY_MAX] = "";
	struct tls_ctx *ct = tls_ctx_new(&c, cwhy, sizeof cwhy);
	if (ct == NULL)
		fail_msg("system CA store: %s", cwhy);
	tls_ctx_free(ct);
	p.cert_count = 2;
	char why[TLS_WHY_MAX] = "";
	struct tls_ctx *t = tls_ctx_new(&p, why, sizeof why);
	assert_non_null(t);
	tls_ctx_free(t);
	cert_drop(cp, 2);
}

/* ---- memory per session ---------------------------------------------------------------- */

struct mem_fig {
	size_t hs_peak;	   /* most live at any time, crypto scratch included */
	size_t after_hs;   /* held by an established session */
	size_t after_data; /* the same after 64 KiB each way */
	size_t left;	   /* still allocated after tls_conn_free() */
	size_t first_left; /* the same for the first session: thread caches */
};

/* One session pair from tls_conn_new() to tls_conn_free(), counted per side. */
static void mem_session(const struct combo *k, struct pair *pr, struct mem_fig *f)
{
	mem_reset();
	mem_cur = SIDE_SERVER;
	pr->s = tls_conn_new(pr->sctx, NULL);
	mem_cur = SIDE_CLIENT;
	pr->c = tls_conn_new(pr->cctx, k->name);
	mem_cur = SIDE_OTHER;
	side_conn[SIDE_SERVER] = pr->s;
	side_conn[SIDE_CLIENT] = pr->c;
	assert_true(pair_handshake(pr, STEP_ALL));
	for (int s = SIDE_SERVER; s <= SIDE_CLIENT; s++) {
		f[s].hs_peak = mem[s].peak;
		f[s].after_hs = mem[s].live;
	}
	unsigned char *data = pattern(64 * 1024);
	pair_send(pr->c, pr->s, data, 64 * 1024, 64 * 1024, STEP_ALL, 65536);
	pair_send(pr->s, pr->c, data, 64 * 1024, 64 * 1024, STEP_ALL, 65536);
	free(data);
	for (int s = SIDE_SERVER; s <= SIDE_CLIENT; s++)
		f[s].after_data = mem[s].live;
	tls_conn_free(pr->s);
	tls_conn_free(pr->c);
	pr->s = pr->c = NULL;
	for (int s = SIDE_SERVER; s <= SIDE_CLIENT; s++)
		f[s].left = mem[s].live;
}

/* Sessions of one kind in a row; the figures are the third's.  The first
 * fills wolfSSL's per-thread caches (FP_ECC point tables: Debian builds
 * wolfSSL with FP_ECC), which stay with the thread, not with a session. */
static void mem_measure(const struct combo *k, struct mem_fig *f)
{
	struct pair pr;
	size_t first_left[SIDE_COUNT] = {0};
	pair_open(&pr, server_ctx(NULL, NULL, k->stem, NULL),
		  client_ctx(k->version, "ca.pem", true), k->name);
	tls_conn_free(pr.s);
	tls_conn_free(pr.c);
	for (int run = 0; run < 3; run++) {
		mem_session(k, &pr, f);
		for (int s = SIDE_SERVER; s <= SIDE_CLIENT && run == 0; s++)
			first_left[s] = f[s].left;
	}
	for (int s = SIDE_SERVER; s <= SIDE_CLIENT; s++)
		f[s].first_left = first_left[s];
	tls_ctx_free(pr.sctx);
	tls_ctx_free(pr.cctx);
}

/* "left" is what the side allocated during its session and still holds
 * after tls_conn_free(): one table of wolfSSL's per-thread FP_ECC cache
 * (wc_ecc_fp_free() makes it go), built during the handshake and freed
 * when a later one evicts it.  It belongs to the thread; the session's
 * own figure is what remains without it. */
static void test_memory_per_session(void **state)
{
	(void)state;
	fprintf(stderr, "# wolfSSL heap in bytes; each tls_conn adds %zu more\n", tls_conn_size());
	fprintf(stderr, "# %-7s %-3s %-6s %8s %9s %8s %12s\n", "version", "key", "side", "session",
		"after_64K", "hs_peak", "thread_cache");
	for (size_t i = 0; i < sizeof combos / sizeof combos[0]; i++) {
		struct mem_fig f[SIDE_COUNT];
		mem_measure(&combos[i], f);
		for (int s = SIDE_SERVER; s <= SIDE_CLIENT; s++) {
			assert_true(f[s].left <= f[s].after_hs);
			size_t session = f[s].after_hs - f[s].left;
			fprintf(stderr, "# %-7s %-3s %-6s %8zu %9zu %8zu %12zu\n",
				combos[i].want_version, combos[i].stem,
				s == SIDE_SERVER ? "server" : "client", session,
				f[s].after_data - f[s].left, f[s].hs_peak, f[s].left);
			/* bounds that catch a leak or a buffer kept by mistake */
			assert_true(session < 96 * 1024);
			assert_true(f[s].after_data <= f[s].after_hs + 1024);
			assert_true(f[s].left <= f[s].first_left + 1024); /* does not grow */
		}
	}
}

/* ---- a real peer: openssl s_client / s_server over loopback ------------------------- */

struct ext {
	pid_t pid;
	int to_child, from_child; /* the child's stdin and stdout, non-blocking */
	size_t out_len;
	char out[EXT_OUT_MAX + 1]; /* what the child printed */
};

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void ext_spawn(struct ext *e, char *const argv[])
{
	int in[2], out[2];
	assert_int_equal(pipe2(in, O_CLOEXEC), 0);
	assert_int_equal(pipe2(out, O_CLOEXEC), 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_addopen(&fa, 2, path("openssl.err"), O_WRONLY | O_CREAT | O_APPEND,
					 0600);
	int rc = posix_spawnp(&e->pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	assert_int_equal(rc, 0);
	close(in[0]);
	close(out[1]);
	e->to_child = in[1];
	e->from_child = out[0];
	fcntl(e->from_child, F_SETFL, O_NONBLOCK);
	e->out_len = 0;
	e->out[0] = '\0';
}

/* Collect what the child printed so far; true once want is in it. */
static bool ext_saw(struct ext *e, const char *want)
{
	ssize_t n;
	while (e->out_len < EXT_OUT_MAX &&
	       (n = read(e->from_child, e->out + e->out_len, EXT_OUT_MAX - e->out_len)) > 0)
		e->out_len += (size_t)n;
	e->out[e->out_len] = '\0';
	return strstr(e->out, want) != NULL;
}

static void ext_finish(struct ext *e)
{
	close(e->to_child);
	close(e->from_child);
	uint64_t end = now_ms() + 3000;
	int status;
	while (waitpid(e->pid, &status, WNOHANG) == 0) {
		if (now_ms() > end) {
			kill(e->pid, SIGKILL);
			waitpid(e->pid, &status, 0);
			break;
		}
		usleep(10000);
	}
}

/* One turn of the tiny non-blocking pump the shard's ring replaces: send
 * what the connection produced, feed what the socket has.  False at EOF. */
static bool sock_turn(int fd, struct tls_conn *c)
{
	const void *p;
	size_t len;
	if (tls_conn_out(c, &p, &len)) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0)
			tls_conn_out_done(c, (size_t)n);
		else if (n < 0 && errno != EAGAIN)
			return false;
	}
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	if (tls_conn_out(c, &p, &len))
		pfd.events |= POLLOUT;
	if (poll(&pfd, 1, 20) <= 0 || !(pfd.revents & (POLLIN | POLLHUP | POLLERR)))
		return true;
	unsigned char buf[TLS_CONN_IN_MAX];
	size_t room = tls_conn_in_free(c);
	if (room == 0)
		return true;
	ssize_t n = recv(fd, buf, room, MSG_DONTWAIT);
	if (n == 0 || (n < 0 && errno != EAGAIN))
		return false;
	if (n > 0)
		assert_int_equal(tls_conn_feed(c, buf, (size_t)n), n);
	return true;
}

/* Drive c over fd: handshake, then collect plaintext into got[]; writes
 * say[] once the handshake is done and got[] holds expect; ends when the
 * child printed child_wants (or the deadline passes). */
struct drive {
	const char *expect, *say, *child_wants;
	size_t got_len;
	char got[4096];
	bool said;
};

static void sock_drive(int fd, struct tls_conn *c, struct ext *e, struct drive *d)
{
	uint64_t end = now_ms() + EXT_TIMEOUT_MS;
	bool open = false;
	size_t said = 0;
	while (now_ms() < end) {
		if (!sock_turn(fd, c))
			fail_msg("socket closed early; openssl printed: %s", e->out);
		int rc = open ? 0 : tls_conn_handshake(c);
		if (rc != 0 && !again(rc))
			fail_msg("handshake: %d %s", rc, tls_conn_error(c));
		open = rc == 0;
		if (!open)
			continue;
		ssize_t n;
		while ((n = tls_conn_read(c, d->got + d->got_len, sizeof d->got - 1 - d->got_len)) >
		       0)
			d->got_len += (size_t)n;
		assert_true(n == -EAGAIN || n == -ENOBUFS);
		d->got[d->got_len] = '\0';
		if (strstr(d->got, d->expect) != NULL && said < strlen(d->say)) {
			n = tls_conn_write(c, d->say + said, strlen(d->say) - said);
			assert_true(n > 0 || n == -ENOBUFS);
			said += n > 0 ? (size_t)n : 0;
		}
		if (ext_saw(e, d->child_wants) && said == strlen(d->say))
			break;
	}
	assert_true(now_ms() < end);
	d->said = said == strlen(d->say);
	while (tls_conn_shutdown(c) == -ENOBUFS)
		sock_turn(fd, c);
	for (int i = 0; i < 10 && tls_conn_out(c, &(const void *){NULL}, &(size_t){0}); i++)
		sock_turn(fd, c);
}

static int listen_loopback(uint16_t *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof a;
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(fd, 4), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

static int accept_within(int lfd, int ms)
{
	struct pollfd pfd = {.fd = lfd, .events = POLLIN};
	assert_int_equal(poll(&pfd, 1, ms), 1);
	int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	assert_true(fd >= 0);
	return fd;
}

/* Our server, openssl s_client verifying our chain and the SNI-picked name. */
static void s_client_run(const char *version_flag, const char *name, const char *want_version,
			 const char *alpn)
{
	uint16_t port;
	int lfd = listen_loopback(&port);
	char connect[64];
	snprintf(connect, sizeof connect, "127.0.0.1:%u", port);
	char *argv[] = {"openssl",
			"s_client",
			"-connect",
			connect,
			"-servername",
			(char *)name,
			(char *)version_flag,
			"-quiet",
			"-CAfile",
			(char *)path("ca.pem"),
			"-verify_return_error",
			"-verify_hostname",
			(char *)name,
			alpn != NULL ? "-alpn" : NULL,
			(char *)alpn,
			NULL};
	struct ext e;
	ext_spawn(&e, argv);
	static const char ping[] = "EHLO s-client.test\r\n";
	assert_int_equal(write(e.to_child, ping, sizeof ping - 1), sizeof ping - 1);
	int fd = accept_within(lfd, EXT_TIMEOUT_MS);
	struct tls_ctx *t = server_ctx(NULL, NULL, "ec", "rsa");
	struct tls_conn *c = tls_conn_new(t, NULL);
	struct drive d = {.expect = ping,
			  .say = "250 mx.test at your service\r\n",
			  .child_wants = "250 mx.test at your service"};
	sock_drive(fd, c, &e, &d);
	assert_string_equal(tls_conn_version(c), want_version);
	assert_string_equal(tls_conn_sni(c), name);
	assert_non_null(strstr(tls_conn_cipher(c), "TLS_"));
	fprintf(stderr, "# s_client %s: %s %s sni=%s\n", version_flag, tls_conn_version(c),
		tls_conn_cipher(c), tls_conn_sni(c));
	tls_conn_free(c);
	tls_ctx_free(t);
	close(fd);
	close(lfd);
	ext_finish(&e);
}

static void test_openssl_s_client(void **state)
{
	(void)state;
	s_client_run("-tls1_3", "other.test", "TLSv1.3", NULL);
	s_client_run("-tls1_2", "other.test", "TLSv1.2", NULL);
	s_client_run("-tls1_3", "mx.test", "TLSv1.3", NULL);
	s_client_run("-tls1_2", "a.wild.test", "TLSv1.2", NULL);
	/* A ClientHello larger than in[] (a long ALPN list): no peek, the
	 * default certificate, and the name still reported. */
	char alpn[8192] = "";
	for (size_t i = 0; strlen(alpn) + 202 < sizeof alpn && strlen(alpn) < 6000; i++)
		snprintf(alpn + strlen(alpn), sizeof alpn - strlen(alpn), "%s%0200zu", i ? "," : "",
			 i);
	s_client_run("-tls1_3", "mx.test", "TLSv1.3", alpn);
	s_client_run("-tls1_2", "mx.test", "TLSv1.2", alpn);
}

static int connect_loopback(uint16_t port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_port = htons(port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
	fcntl(fd, F_SETFL, O_NONBLOCK);
	return fd;
}

/* Our client (verify on, against the test CA), openssl s_server. */
static void s_server_run(const char *version_flag, const char *stem, const char *name,
			 const char *want_version)
{
	char cert[PATH_MAX_TEST], key[PATH_MAX_TEST], sname[16], kname[16];
	snprintf(sname, sizeof sname, "%s.pem", stem);
	snprintf(kname, sizeof kname, "%s.key", stem);
	snprintf(cert, sizeof cert, "%s", path(sname));
	snprintf(key, sizeof key, "%s", path(kname));
	char *argv[] = {
	    "openssl", "s_server", "-accept", "127.0.0.1:0",	    "-cert", cert, "-key",
	    key,       "-naccept", "1",	      (char *)version_flag, NULL};
	struct ext e;
	ext_spawn(&e, argv);
	uint64_t end = now_ms() + EXT_TIMEOUT_MS;
	while (!ext_saw(&e, "ACCEPT 127.0.0.1:") && now_ms() < end)
		usleep(10000);
	unsigned port = 0;
	assert_int_equal(sscanf(strstr(e.out, "ACCEPT 127.0.0.1:"), "ACCEPT 127.0.0.1:%u", &port),
			 1);
	int fd = connect_loopback((uint16_t)port);
	struct tls_ctx *t = client_ctx(NULL, "ca.pem", true);
	struct tls_conn *c = tls_conn_new(t, name);
	static const char hello[] = "220 s-server.test ESMTP\r\n";
	assert_int_equal(write(e.to_child, hello, sizeof hello - 1), sizeof hello - 1);
	struct drive d = {
	    .expect = hello, .say = "EHLO ringmx.test\r\n", .child_wants = "EHLO ringmx.test"};
	sock_drive(fd, c, &e, &d);
	assert_true(tls_conn_peer_verified(c));
	assert_string_equal(tls_conn_version(c), want_version);
	fprintf(stderr, "# s_server %s %s: %s %s verified=%d\n", version_flag, stem,
		tls_conn_version(c), tls_conn_cipher(c), tls_conn_peer_verified(c));
	tls_conn_free(c);
	tls_ctx_free(t);
	close(fd);
	ext_finish(&e);
}

static void test_openssl_s_server(void **state)
{
	(void)state;
	s_server_run("-tls1_3", "ec", "mx.test", "TLSv1.3");
	s_server_run("-tls1_2", "ec", "mx.test", "TLSv1.2");
	s_server_run("-tls1_3", "rsa", "other.test", "TLSv1.3");
	s_server_run("-tls1_2", "rsa", "other.test", "TLSv1.2");
}

/* ---- certificates, made fresh for every run --------------------------------------------- */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	return system(cmd);
}

#define REQ "openssl req -x509 -nodes -days 2 -batch "

static int make_certs(void)
{
	const char *d = dir;
	int rc = 0;
	rc |= sh("cd %s && " REQ "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout ca.key "
		 "-out ca.pem -subj /CN=ringmx-test-ca 2>>gen.log",
		 d);
	rc |= sh("cd %s && " REQ "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout ca2.key "
		 "-out ca2.pem -subj /CN=ringmx-other-ca 2>>gen.log",
		 d);
	rc |= sh("cd %s && " REQ "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout ec.key "
		 "-out ec.pem -subj /CN=mx.test -CA ca.pem -CAkey ca.key "
		 "-addext subjectAltName=DNS:mx.test,DNS:*.wild.test "
		 "-addext basicConstraints=critical,CA:FALSE 2>>gen.log",
		 d);
	rc |=
	    sh("cd %s && " REQ "-newkey rsa:2048 -keyout rsa.key -out rsa.pem -subj /CN=other.test "
	       "-CA ca.pem -CAkey ca.key -addext subjectAltName=DNS:other.test "
	       "-addext basicConstraints=critical,CA:FALSE 2>>gen.log",
	       d);
	return rc;
}

static int group_setup(void **state)
{
	(void)state;
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof dir, "%s/ringmx-tls-XXXXXX", tmp != NULL ? tmp : "/tmp");
	if (mkdtemp(dir) == NULL || make_certs() != 0)
		return -1;
	return tls_global_init();
}

static int group_teardown(void **state)
{
	(void)state;
	tls_thread_cleanup();
	tls_global_cleanup();
	sh("rm -rf %s", dir);
	return 0;
}

int main(void)
{
	if (system("openssl version >/dev/null 2>&1") != 0) {
		fprintf(stderr,
			"# openssl command missing: certificates cannot be made, skipped\n");
		return 77;
	}
	/* Before wolfSSL_Init(): every wolfSSL block goes through the counter. */
	wolfSSL_SetAllocators(count_malloc, count_free, count_realloc);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_handshake_versions_and_keys),
	    cmocka_unit_test(test_handshake_one_byte_at_a_time),
	    cmocka_unit_test(test_cipher_list_applies),
	    cmocka_unit_test(test_data_split_sizes),
	    cmocka_unit_test(test_buffers_are_bounded),
	    cmocka_unit_test(test_close_notify),
	    cmocka_unit_test(test_sni_selects_certificate),
	    cmocka_unit_test(test_min_version_13_refuses_12_client),
	    cmocka_unit_test(test_corrupted_record_fails),
	    cmocka_unit_test(test_plaintext_to_server_fails),
	    cmocka_unit_test(test_client_verify_by_ca_and_name),
	    cmocka_unit_test(test_ctx_errors_name_the_file),
	    cmocka_unit_test(test_memory_per_session),
	    cmocka_unit_test(test_openssl_s_client),
	    cmocka_unit_test(test_openssl_s_server),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
