/* Pins the spool record codecs: CRC32C (both paths), record headers, queue IDs and envelope v1. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "queue/record.h"

/* ---- CRC32C ------------------------------------------------------------- */

/* Bit-at-a-time reference, written from the definition, to judge both paths. */
static uint32_t crc_ref(uint32_t crc, const uint8_t *p, size_t n)
{
	crc = ~crc;
	while (n--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
	}
	return ~crc;
}

static void crc_vectors(void **state)
{
	(void)state;
	uint8_t buf[32];

	assert_int_equal(spool_crc32c(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(spool_crc32c_sw(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(spool_crc32c(0, NULL, 0), 0);
	assert_int_equal(spool_crc32c(0x12345678u, "", 0), 0x12345678u);
	/* RFC 3720 B.4 (iSCSI) */
	memset(buf, 0, sizeof buf);
	assert_int_equal(spool_crc32c(0, buf, 32), 0x8a9136aau);
	assert_int_equal(spool_crc32c_sw(0, buf, 32), 0x8a9136aau);
	memset(buf, 0xff, sizeof buf);
	assert_int_equal(spool_crc32c(0, buf, 32), 0x62a8ab43u);
	assert_int_equal(spool_crc32c_sw(0, buf, 32), 0x62a8ab43u);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	assert_int_equal(spool_crc32c(0, buf, 32), 0x46dd794eu);
	assert_int_equal(spool_crc32c_sw(0, buf, 32), 0x46dd794eu);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	assert_int_equal(spool_crc32c(0, buf, 32), 0x113fdb5cu);
	assert_int_equal(spool_crc32c_sw(0, buf, 32), 0x113fdb5cu);
}

static void crc_chaining(void **state)
{
	(void)state;
	uint8_t buf[300];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	uint32_t whole = spool_crc32c(0, buf, sizeof buf);

	assert_int_equal(whole, crc_ref(0, buf, sizeof buf));
	for (size_t cut = 0; cut <= sizeof buf; cut++) {
		uint32_t a = spool_crc32c(0, buf, cut);
		assert_int_equal(spool_crc32c(a, buf + cut, sizeof buf - cut), whole);
		uint32_t b = spool_crc32c_sw(0, buf, cut);
		assert_int_equal(spool_crc32c_sw(b, buf + cut, sizeof buf - cut), whole);
	}
	/* Three pieces, mixing the two paths: they must share one state. */
	uint32_t c = spool_crc32c(0, buf, 5);
	c = spool_crc32c_sw(c, buf + 5, 100);
	c = spool_crc32c(c, buf + 105, sizeof buf - 105);
	assert_int_equal(c, whole);
}

static void crc_unaligned_starts(void **state)
{
	(void)state;
	uint8_t *buf = malloc(4096 + 16);
	assert_non_null(buf);
	uint32_t seed = 12345;
	for (size_t i = 0; i < 4096 + 16; i++) {
		seed = seed * 1103515245u + 12345u;
		buf[i] = (uint8_t)(seed >> 16);
	}
	for (size_t start = 0; start < 16; start++) {
		for (size_t n = 0; n < 70; n++) {
			uint32_t want = crc_ref(0, buf + start, n);
			assert_int_equal(spool_crc32c(0, buf + start, n), want);
			assert_int_equal(spool_crc32c_sw(0, buf + start, n), want);
		}
		uint32_t want = crc_ref(0, buf + start, 4096);
		assert_int_equal(spool_crc32c(0, buf + start, 4096), want);
		assert_int_equal(spool_crc32c_sw(0, buf + start, 4096), want);
	}
	free(buf);
}

/* ---- record header ------------------------------------------------------- */

static const struct spool_key key1 = {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}};

/* The reference vectors of the SipHash paper (appendix A): key 00..0f,
 * messages 00, 00 01, ...: the empty one and the 15-byte one. */
static void siphash_vectors(void **state)
{
	(void)state;
	struct spool_key k;
	uint8_t m[64];

	for (int i = 0; i < 16; i++)
		k.b[i] = (uint8_t)i;
	for (int i = 0; i < 64; i++)
		m[i] = (uint8_t)i;
	assert_int_equal(spool_siphash(&k, m, 0), 0x726fdb47dd0e0e31ull);
	assert_int_equal(spool_siphash(&k, m, 15), 0xa129ca6149be45e5ull);
	assert_int_equal(spool_siphash(&k, m, 8), 0x93f5f5799a932462ull);
	assert_int_equal(spool_siphash(&k, m, 63), 0x958a324ceb064572ull);
}

static void key_new_is_random(void **state)
{
	(void)state;
	struct spool_key a, b;

	assert_int_equal(spool_key_new(&a), 0);
	assert_int_equal(spool_key_new(&b), 0);
	assert_memory_not_equal(&a, &b, sizeof a);
}

static void hdr_init_check(void **state)
{
	(void)state;
	struct spool_rec_hdr h;

	spool_rec_hdr_init(&h, &key1, SPOOL_REC_CHUNK, 0x0123456789abcdefu, 1000, 0xdeadbeefu);
	assert_int_equal(spool_rec_hdr_check(&h, &key1), 0);
	assert_int_equal(h.magic, SPOOL_REC_MAGIC);
	assert_int_equal(h.type, SPOOL_REC_CHUNK);
	assert_int_equal(h.flags, 0);
	assert_int_equal(h.reserved, 0);
	assert_int_equal(h.len, 1000);
	assert_int_equal(h.pay_crc, 0xdeadbeefu);
	assert_int_equal(h.msg_id, 0x0123456789abcdefu);
	assert_int_equal(h.mac, spool_siphash(&key1, &h, 24));
	/* "RMXR" as the first four bytes on disk */
	assert_memory_equal(&h, "RMXR", 4);

	for (int t = SPOOL_REC_SEGMENT; t <= SPOOL_REC_DONE; t++) {
		spool_rec_hdr_init(&h, &key1, (enum spool_rec_type)t, 1, 0, 0);
		assert_int_equal(spool_rec_hdr_check(&h, &key1), 0);
	}
	spool_rec_hdr_init(&h, &key1, SPOOL_REC_COMMIT, 1, SPOOL_REC_PAYLOAD_MAX, 0);
	assert_int_equal(spool_rec_hdr_check(&h, &key1), 0);
}

static void hdr_every_bit_flip_detected(void **state)
{
	(void)state;
	struct spool_rec_hdr h, bad;

	spool_rec_hdr_init(&h, &key1, SPOOL_REC_COMMIT, 0xfedcba9876543210u, 4242, 0x1234abcdu);
	for (size_t byte = 0; byte < sizeof h; byte++) {
		for (int bit = 0; bit < 8; bit++) {
			memcpy(&bad, &h, sizeof h);
			((uint8_t *)&bad)[byte] ^= (uint8_t)(1u << bit);
			assert_int_equal(spool_rec_hdr_check(&bad, &key1), -EINVAL);
		}
	}
}

/* A header is only good under its own segment's key: one made with another
 * key (an attacker's guess: zeros, or any other) never verifies, and the
 * version-1 framing (unkeyed CRC32C) does not either. */
static void hdr_other_key_rejected(void **state)
{
	(void)state;
	struct spool_key zero = {{0}}, k2 = key1;
	struct spool_rec_hdr h;

	k2.b[15] ^= 1;
	spool_rec_hdr_init(&h, &zero, SPOOL_REC_DONE, 42, 0, 0);
	assert_int_equal(spool_rec_hdr_check(&h, &zero), 0);
	assert_int_equal(spool_rec_hdr_check(&h, &key1), -EINVAL);
	spool_rec_hdr_init(&h, &k2, SPOOL_REC_DONE, 42, 0, 0);
	assert_int_equal(spool_rec_hdr_check(&h, &key1), -EINVAL);
	/* Version 1: CRC32C of the first 28 bytes in the last four. */
	spool_rec_hdr_init(&h, &key1, SPOOL_REC_DONE, 42, 0, 0);
	h.mac = 0;
	uint32_t crc = spool_crc32c(0, &h, 28);
	memcpy((uint8_t *)&h + 28, &crc, 4);
	assert_int_equal(spool_rec_hdr_check(&h, &key1), -EINVAL);
}

/* Corruptions that come with a matching MAC (a writer's bug, not an
 * attacker): only the field checks stop them. */
static void hdr_field_checks(void **state)
{
	(void)state;
	struct spool_rec_hdr h;

	spool_rec_hdr_init(&h, &key1, SPOOL_REC_CHUNK, 9, 10, 0);
	h.magic = 0x52584d53u;
	h.mac = spool_siphash(&key1, &h, 24);
	assert_int_equal(spool_rec_hdr_check(&h, &key1), -EINVAL);

	spool_rec_hdr_init(&h, &key1, SPOOL_REC_CHUNK, 9, 10, 0);
	h.type = 0;
	h.mac = spool_siphash(&key1, &h, 24);
	assert_int_equal(spool_rec_hdr_check(&h, &key1), -EINVAL);
	h.type = SPOOL_REC_DONE + 1;
	h.mac = spool_siphash(&key1, &h, 24);
	assert_int_equal(spool_rec_hdr_check(&h, &key1), -EINVAL);
	h.type = 0xff;
	h.mac = spool_siphash(&key1, &h, 24);
	assert_int_equal(spool_rec_hdr_check(&h, &key1), -EINVAL);

	spool_rec_hdr_init(&h, &key1, SPOOL_REC_CHUNK, 9, 10, 0);
	h.len = SPOOL_REC_PAYLOAD_MAX + 1;
	h.mac = spool_siphash(&key1, &h, 24);
	assert_int_equal(spool_rec_hdr_check(&h, &key1), -EINVAL);
	h.len = UINT32_MAX;
	h.mac = spool_siphash(&key1, &h, 24);
	assert_int_equal(spool_rec_hdr_check(&h, &key1), -EINVAL);

	spool_rec_hdr_init(&h, &key1, SPOOL_REC_CHUNK, 9, 10, 0);
	h.mac ^= 1;
	assert_int_equal(spool_rec_hdr_check(&h, &key1), -EINVAL);
}

/* The segment head: parsed back, any flipped bit refused, and a version-1
 * head told apart from garbage (refused by name, not ignored). */
static void seg_head_parse(void **state)
{
	(void)state;
	struct spool_seg_head hd, bad;
	struct spool_seg_info info;

	spool_seg_head_init(&hd, 3, 0x1234, &key1);
	assert_int_equal(spool_seg_head_parse(&hd, sizeof hd, &info), 0);
	assert_int_equal(info.version, SPOOL_SEG_VERSION);
	assert_int_equal(info.shard, 3);
	assert_int_equal(info.seq, 0x1234);
	assert_memory_equal(&info.key, &key1, sizeof key1);
	assert_int_equal(spool_seg_head_parse(&hd, sizeof hd - 1, &info), -EINVAL);
	for (size_t byte = 0; byte < sizeof hd; byte++) {
		memcpy(&bad, &hd, sizeof hd);
		((uint8_t *)&bad)[byte] ^= 0x10;
		assert_int_equal(spool_seg_head_parse(&bad, sizeof bad, &info), -EINVAL);
	}
	/* A version-1 head: 28-byte CRC header, 16-byte info {1, shard, seq}. */
	uint8_t v1[48] = {0};
	uint32_t magic = SPOOL_REC_MAGIC, len = 16, one = 1, crc;
	memcpy(v1, &magic, 4);
	v1[4] = SPOOL_REC_SEGMENT;
	memcpy(v1 + 8, &len, 4);
	memcpy(v1 + 32, &one, 4);
	crc = spool_crc32c(0, v1 + 32, 16);
	memcpy(v1 + 12, &crc, 4);
	crc = spool_crc32c(0, v1, 28);
	memcpy(v1 + 28, &crc, 4);
	assert_int_equal(spool_seg_head_parse(v1, sizeof v1, &info), -EPROTO);
	v1[40] ^= 1; /* still a v1 head: its payload CRC is not what tells it */
	assert_int_equal(spool_seg_head_parse(v1, sizeof v1, &info), -EPROTO);
	v1[0] ^= 1;
	assert_int_equal(spool_seg_head_parse(v1, sizeof v1, &info), -EINVAL);
}

static void rec_size_and_pad(void **state)
{
	(void)state;
	assert_int_equal(spool_rec_size(0), 32);
	assert_int_equal(spool_rec_pad(0), 0);
	assert_int_equal(spool_rec_size(1), 40);
	assert_int_equal(spool_rec_pad(1), 7);
	assert_int_equal(spool_rec_size(8), 40);
	assert_int_equal(spool_rec_pad(8), 0);
	assert_int_equal(spool_rec_size(SPOOL_REC_PAYLOAD_MAX),
			 32 + (uint64_t)SPOOL_REC_PAYLOAD_MAX);
	for (uint32_t len = 0; len < 64; len++) {
		assert_int_equal(spool_rec_size(len) % SPOOL_REC_ALIGN, 0);
		assert_int_equal(32 + len + spool_rec_pad(len), spool_rec_size(len));
		assert_true(spool_rec_pad(len) < SPOOL_REC_ALIGN);
	}
}

/* ---- queue ID ---------------------------------------------------------------- */

static void qid_round_trip(void **state)
{
	(void)state;
	const uint64_t ids[] = {0, 1, 0xa, 0x0123456789abcdefu, 0x8000000000000000u, UINT64_MAX};
	char text[SPOOL_QID_LEN + 1];
	uint64_t id;

	spool_qid_format(0x0123456789abcdefu, text);
	assert_string_equal(text, "0123456789ABCDEF");
	spool_qid_format(0, text);
	assert_string_equal(text, "0000000000000000");
	for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
		spool_qid_format(ids[i], text);
		assert_int_equal(strlen(text), SPOOL_QID_LEN);
		assert_int_equal(spool_qid_parse(text, SPOOL_QID_LEN, &id), 0);
		assert_int_equal(id, ids[i]);
	}
	assert_int_equal(spool_qid_parse("0123456789abcdef", 16, &id), 0);
	assert_int_equal(id, 0x0123456789abcdefu);
	assert_int_equal(spool_qid_parse("FfFfFfFfFfFfFfFf", 16, &id), 0);
	assert_int_equal(id, UINT64_MAX);
}

static void qid_rejects(void **state)
{
	(void)state;
	uint64_t id = 77;

	assert_int_equal(spool_qid_parse("", 0, &id), -EINVAL);
	assert_int_equal(spool_qid_parse("0123456789ABCDE", 15, &id), -EINVAL);
	assert_int_equal(spool_qid_parse("0123456789ABCDEF0", 17, &id), -EINVAL);
	/* length is the caller's: a longer string is fine if len is 16 */
	assert_int_equal(spool_qid_parse("0123456789ABCDEFxyz", 16, &id), 0);
	const char *bad[] = {"0123456789ABCDEG", "0x23456789ABCDEF", " 123456789ABCDEF",
			     "0123456789ABCDE ", "-123456789ABCDEF", "+123456789ABCDEF",
			     "0123456789ABC:EF", "0123456789ABC@EF", "0123456789ABC`EF",
			     "0123456789ABCgEF"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		id = 77;
		assert_int_equal(spool_qid_parse(bad[i], 16, &id), -EINVAL);
		assert_int_equal(id, 77); /* untouched on failure */
	}
	assert_int_equal(spool_qid_parse("0123456789AB\0DEF", 16, &id), -EINVAL);
}

/* ---- envelope ------------------------------------------------------------------ */

#define S(lit) ((struct spool_str){.ptr = (lit), .len = sizeof(lit) - 1})

static struct spool_str str_of(const char *p, size_t n)
{
	return (struct spool_str){.ptr = p, .len = (uint32_t)n};
}

static struct spool_env env_sample(const struct spool_rcpt *rcpts, uint32_t n)
{
	return (struct spool_env){
	    .id = 0x1122334455667788u,
	    .arrival_s = -5, /* signed on purpose: must survive the u64 framing */
	    .msg_len = 1000,
	    .wire_len = 1003,
	    .stuff_len = 7,
	    .msg_crc = 0xcafebabeu,
	    .first_chunk_off = 0x100000008u,
	    .flags = SPOOL_ENV_STUFFED | SPOOL_ENV_SMTPUTF8,
	    .body_type = 2,
	    .ret = 1,
	    .size_declared = 123456789012u,
	    .listener = S("mx-in"),
	    .client_addr = S("192.0.2.7"),
	    .helo = S("client.example"),
	    .mail_from = S("sender@example.org"),
	    .envid = S("QQ314159"),
	    .auth_user = S(""),
	    .rcpt_count = n,
	    .rcpts = rcpts,
	};
}

static void str_equal(struct spool_str a, struct spool_str b)
{
	assert_int_equal(a.len, b.len);
	if (a.len)
		assert_memory_equal(a.ptr, b.ptr, a.len);
}

static void env_equal(const struct spool_env *in, const struct spool_env *out)
{
	assert_int_equal(out->id, in->id);
	assert_true(out->arrival_s == in->arrival_s);
	assert_int_equal(out->msg_len, in->msg_len);
	assert_int_equal(out->wire_len, in->wire_len);
	assert_int_equal(out->stuff_len, in->stuff_len);
	assert_int_equal(out->msg_crc, in->msg_crc);
	assert_int_equal(out->first_chunk_off, in->first_chunk_off);
	assert_int_equal(out->flags, in->flags);
	assert_int_equal(out->body_type, in->body_type);
	assert_int_equal(out->ret, in->ret);
	assert_int_equal(out->size_declared, in->size_declared);
	str_equal(out->listener, in->listener);
	str_equal(out->client_addr, in->client_addr);
	str_equal(out->helo, in->helo);
	str_equal(out->mail_from, in->mail_from);
	str_equal(out->envid, in->envid);
	str_equal(out->auth_user, in->auth_user);
	assert_int_equal(out->rcpt_count, in->rcpt_count);
	assert_null(out->rcpts);
	for (uint32_t i = 0; i < in->rcpt_count; i++) {
		struct spool_rcpt r;
		assert_int_equal(spool_env_rcpt(out, i, &r), 0);
		str_equal(r.addr, in->rcpts[i].addr);
		str_equal(r.orcpt, in->rcpts[i].orcpt);
		assert_int_equal(r.notify, in->rcpts[i].notify);
	}
	struct spool_rcpt r;
	assert_int_equal(spool_env_rcpt(out, in->rcpt_count, &r), -EINVAL);
	assert_int_equal(spool_env_rcpt(out, UINT32_MAX, &r), -EINVAL);
}

/* Encode, decode, compare; also proves every shorter prefix and a trailing byte fail. */
static void env_round_trip(const struct spool_env *in)
{
	uint8_t *buf = malloc(SPOOL_ENV_MAX + 1);
	assert_non_null(buf);
	size_t n = spool_env_encode(in, buf, SPOOL_ENV_MAX);
	struct spool_env out;

	assert_true(n > 0 && n <= SPOOL_ENV_MAX);
	assert_int_equal(buf[0], SPOOL_ENV_VERSION);
	assert_int_equal(spool_env_decode(buf, n, &out), 0);
	env_equal(in, &out);
	/* strings point into the input */
	assert_true((const uint8_t *)out.mail_from.ptr >= buf &&
		    (const uint8_t *)out.mail_from.ptr <= buf + n);
	for (size_t cut = 0; cut < n; cut++)
		assert_int_equal(spool_env_decode(buf, cut, &out), -EINVAL);
	if (n < SPOOL_ENV_MAX) {
		buf[n] = 0;
		assert_int_equal(spool_env_decode(buf, n + 1, &out), -EINVAL);
	}
	free(buf);
}

static void env_round_trip_0_1_100(void **state)
{
	(void)state;
	static struct spool_rcpt rcpts[100];
	static char addrs[100][40];

	struct spool_env env = env_sample(NULL, 0);
	env_round_trip(&env);

	rcpts[0] = (struct spool_rcpt){S("user@example.net"), S("rfc822;user@example.net"), 7};
	env = env_sample(rcpts, 1);
	env_round_trip(&env);

	for (int i = 0; i < 100; i++) {
		int n = snprintf(addrs[i], sizeof addrs[i], "rcpt%d@d%d.example", i, i % 7);
		rcpts[i] = (struct spool_rcpt){
		    .addr = str_of(addrs[i], (size_t)n),
		    .orcpt = i % 3 ? str_of(addrs[i], (size_t)n / 2) : S(""),
		    .notify = (uint8_t)i,
		};
	}
	env = env_sample(rcpts, 100);
	env_round_trip(&env);
}

static void env_empty_and_long_strings(void **state)
{
	(void)state;
	char *big = malloc(60000);
	assert_non_null(big);
	memset(big, 'h', 60000);
	struct spool_rcpt r = {S(""), S(""), 0};
	struct spool_env env = env_sample(&r, 1);

	env.listener = env.client_addr = env.helo = env.mail_from = env.envid = env.auth_user =
	    (struct spool_str){0};
	env.msg_len = env.wire_len = env.stuff_len = 0;
	env_round_trip(&env);

	env = env_sample(&r, 1);
	env.helo = str_of(big, 60000);
	env_round_trip(&env);

	/* two long strings sharing the bound */
	env = env_sample(NULL, 0);
	env.mail_from = str_of(big, 30000);
	env.envid = str_of(big, 30000);
	env_round_trip(&env);

	/* one octet longer than a u16 can frame: refused, whatever the cap */
	uint8_t *out = malloc(2 * SPOOL_ENV_MAX);
	assert_non_null(out);
	big = realloc(big, 70000);
	assert_non_null(big);
	env.mail_from = str_of(big, UINT16_MAX + 1);
	assert_int_equal(spool_env_encode(&env, out, 2 * SPOOL_ENV_MAX), 0);
	r.addr = str_of(big, UINT16_MAX + 1);
	env = env_sample(&r, 1);
	assert_int_equal(spool_env_encode(&env, out, 2 * SPOOL_ENV_MAX), 0);
	free(out);
	free(big);
}

static void env_bound_and_cap(void **state)
{
	(void)state;
	uint8_t *buf = malloc(2 * SPOOL_ENV_MAX);
	assert_non_null(buf);
	struct spool_rcpt r = {S("a@b.example"), S("rfc822;a@b.example"), 1};
	struct spool_env env = env_sample(&r, 1);
	size_t need = spool_env_encode(&env, buf, 2 * SPOOL_ENV_MAX);

	assert_true(need > 64);
	for (size_t cap = 0; cap < need; cap++)
		assert_int_equal(spool_env_encode(&env, buf, cap), 0);
	assert_int_equal(spool_env_encode(&env, buf, need), need);

	/* Exactly SPOOL_ENV_MAX is allowed, one more is not, even with room. */
	char *fill = malloc(SPOOL_ENV_MAX);
	assert_non_null(fill);
	memset(fill, 'x', SPOOL_ENV_MAX);
	env = env_sample(NULL, 0);
	size_t base = spool_env_encode(&env, buf, 2 * SPOOL_ENV_MAX);
	size_t room = SPOOL_ENV_MAX - base + env.helo.len;
	env.helo = str_of(fill, room);
	assert_int_equal(spool_env_encode(&env, buf, 2 * SPOOL_ENV_MAX), SPOOL_ENV_MAX);
	struct spool_env out;
	assert_int_equal(spool_env_decode(buf, SPOOL_ENV_MAX, &out), 0);
	env_equal(&env, &out);
	env.helo = str_of(fill, room + 1);
	assert_int_equal(spool_env_encode(&env, buf, 2 * SPOOL_ENV_MAX), 0);
	/* a decoder never accepts more than the bound */
	assert_int_equal(spool_env_decode(buf, SPOOL_ENV_MAX + 1, &out), -EINVAL);
	free(fill);
	free(buf);
}

/* Version 2 byte for byte, so a format change is a deliberate act. */
static void env_v3_golden(void **state)
{
	(void)state;
	static const uint8_t want[] = {
	    3,	  8,	2,    0,    0x05, 0,	0,    0,	      /* version body ret 0 flags */
	    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,	      /* id */
	    0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,	      /* arrival -2 */
	    3,	  0,	0,    0,    0,	  0,	0,    0,	      /* msg_len */
	    6,	  0,	0,    0,    0,	  0,	0,    0,	      /* wire_len */
	    0x28, 0,	0,    0,    0,	  0,	0,    0,	      /* first_chunk_off */
	    9,	  0,	0,    0,    0,	  0,	0,    0,	      /* size_declared */
	    0x78, 0x56, 0x34, 0x12, 1,	  0,	0,    0,	      /* msg_crc rcpt_count */
	    2,	  0,	0,    0,    0,	  0,	0,    0,	      /* stuff_len */
	    1,	  0,	'L',  0,    0,	  2,	0,    'h',  'o',      /* listener client helo */
	    3,	  0,	's',  '@',  'x',  0,	0,    1,    0,	 'u', /* from envid auth */
	    6,	  0,	'X',  ':',  ' ',  'y',	'\r', '\n',	      /* prepend */
	    1,	  0,	'q',					      /* quarantine */
	    2,	  0,	'r',  't',				      /* route */
	    0,	  0,	0,    0,    3,	  0,	1,    0,    6,	      /* rcpt table */
	    'r',  '@',	'x',  'o',				      /* heap */
	};
	struct spool_rcpt r = {S("r@x"), S("o"), 6};
	struct spool_env env = {
	    .id = 0x1122334455667788u,
	    .arrival_s = -2,
	    .msg_len = 3,
	    .wire_len = 6,
	    .stuff_len = 2,
	    .msg_crc = 0x12345678u,
	    .first_chunk_off = 0x28,
	    .flags = SPOOL_ENV_STUFFED | SPOOL_ENV_SMTPUTF8,
	    .body_type = 8,
	    .ret = 2,
	    .size_declared = 9,
	    .listener = S("L"),
	    .helo = S("ho"),
	    .mail_from = S("s@x"),
	    .auth_user = S("u"),
	    .prepend = S("X: y\r\n"),
	    .quarantine = S("q"),
	    .route = S("rt"),
	    .rcpt_count = 1,
	    .rcpts = &r,
	};
	uint8_t buf[256];

	assert_int_equal(spool_env_encode(&env, buf, sizeof buf), sizeof want);
	assert_memory_equal(buf, want, sizeof want);
}

/* A spool written before version 3 is still read: no prepend. */
static void env_v2_still_read(void **state)
{
	(void)state;
	static const uint8_t v2[] = {
	    2,	  8,	2,    0,    0x05, 0,	0,    0,	      /* version body ret 0 flags */
	    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,	      /* id */
	    0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,	      /* arrival -2 */
	    3,	  0,	0,    0,    0,	  0,	0,    0,	      /* msg_len */
	    6,	  0,	0,    0,    0,	  0,	0,    0,	      /* wire_len */
	    0x28, 0,	0,    0,    0,	  0,	0,    0,	      /* first_chunk_off */
	    9,	  0,	0,    0,    0,	  0,	0,    0,	      /* size_declared */
	    0x78, 0x56, 0x34, 0x12, 1,	  0,	0,    0,	      /* msg_crc rcpt_count */
	    2,	  0,	0,    0,    0,	  0,	0,    0,	      /* stuff_len */
	    1,	  0,	'L',  0,    0,	  2,	0,    'h',  'o',      /* listener client helo */
	    3,	  0,	's',  '@',  'x',  0,	0,    1,    0,	 'u', /* from envid auth */
	    0,	  0,	0,    0,    3,	  0,	1,    0,    6,	      /* rcpt table */
	    'r',  '@',	'x',  'o',				      /* heap */
	};
	struct spool_env env;

	assert_int_equal(spool_env_decode(v2, sizeof v2, &env), 0);
	assert_int_equal(env.stuff_len, 2);
	assert_int_equal(env.auth_user.len, 1);
	assert_int_equal(env.prepend.len, 0);
	assert_int_equal(env.rcpt_count, 1);
	assert_int_equal(spool_env_size(&env), 3 - 2);
}

/* A spool written before version 2 is still read: stuff_len 0, the
 * strings at offset 64. */
static void env_v1_still_read(void **state)
{
	(void)state;
	static const uint8_t v1[] = {
	    1,	  8,	2,    0,    0x05, 0,	0,    0,	      /* version body ret 0 flags */
	    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,	      /* id */
	    0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,	      /* arrival -2 */
	    3,	  0,	0,    0,    0,	  0,	0,    0,	      /* msg_len */
	    6,	  0,	0,    0,    0,	  0,	0,    0,	      /* wire_len */
	    0x28, 0,	0,    0,    0,	  0,	0,    0,	      /* first_chunk_off */
	    9,	  0,	0,    0,    0,	  0,	0,    0,	      /* size_declared */
	    0x78, 0x56, 0x34, 0x12, 1,	  0,	0,    0,	      /* msg_crc rcpt_count */
	    1,	  0,	'L',  0,    0,	  2,	0,    'h',  'o',      /* listener client helo */
	    3,	  0,	's',  '@',  'x',  0,	0,    1,    0,	 'u', /* from envid auth */
	    0,	  0,	0,    0,    3,	  0,	1,    0,    6,	      /* rcpt table */
	    'r',  '@',	'x',  'o',				      /* heap */
	};
	struct spool_env out;
	struct spool_rcpt r;

	assert_int_equal(spool_env_decode(v1, sizeof v1, &out), 0);
	assert_int_equal(out.msg_len, 3);
	assert_int_equal(out.stuff_len, 0);
	assert_int_equal(spool_env_size(&out), 3);
	assert_int_equal(out.size_declared, 9);
	str_equal(out.helo, S("ho"));
	str_equal(out.auth_user, S("u"));
	assert_int_equal(spool_env_rcpt(&out, 0, &r), 0);
	str_equal(r.addr, S("r@x"));
	assert_int_equal(spool_env_decode(v1, sizeof v1 - 1, &out), -EINVAL);
}

/* RFC 1870 size: stored octets less their stuffing, plus the CRLF DATA adds
 * to a BDAT body without one. */
static void env_size(void **state)
{
	(void)state;
	struct spool_env e = {
	    .msg_len = 100, .wire_len = 103, .stuff_len = 9, .flags = SPOOL_ENV_STUFFED};

	assert_int_equal(spool_env_size(&e), 91);
	e = (struct spool_env){.msg_len = 100, .wire_len = 100};
	assert_int_equal(spool_env_size(&e), 100);
	e.flags = SPOOL_ENV_NO_FINAL_CRLF;
	assert_int_equal(spool_env_size(&e), 102);
}

static size_t env_small(uint8_t *buf, size_t cap)
{
	struct spool_rcpt r[2] = {{S("a@x"), S(""), 1}, {S("b@x"), S("o"), 2}};
	struct spool_env env = env_sample(r, 2);
	size_t n = spool_env_encode(&env, buf, cap);
	assert_true(n > 0);
	return n;
}

/* Hand-made damage the encoder never produces. */
static void env_rejects_malformed(void **state)
{
	(void)state;
	uint8_t buf[512], bad[512];
	struct spool_env out;
	size_t n = env_small(buf, sizeof buf);
	size_t table = n - 2 * 9 - (3 + 0 + 3 + 1);

	assert_int_equal(spool_env_decode(buf, n, &out), 0);
	assert_int_equal(spool_env_decode(NULL, 0, &out), -EINVAL);
#define DAMAGED(off, val)                                                                          \
	do {                                                                                       \
		memcpy(bad, buf, n);                                                               \
		bad[(off)] = (uint8_t)(val);                                                       \
		assert_int_equal(spool_env_decode(bad, n, &out), -EINVAL);                         \
	} while (0)
	DAMAGED(0, 0);		   /* version 0 */
	DAMAGED(0, 4);		   /* a future version */
	DAMAGED(3, 1);		   /* reserved byte */
	DAMAGED(4, 0x04);	   /* stuff_len without STUFFED */
	DAMAGED(4, 0x0d);	   /* STUFFED (DATA) yet no final CRLF */
	DAMAGED(65, 0x04);	   /* stuff_len 1031 > msg_len 1000 */
	DAMAGED(24, 0xff);	   /* msg_len > wire_len */
	DAMAGED(60, 3);		   /* rcpt_count larger than the table */
	DAMAGED(60, 1);		   /* smaller: table bytes become heap bytes */
	DAMAGED(63, 0x40);	   /* huge rcpt_count must not wrap */
	DAMAGED(72, 200);	   /* listener length past the end */
	DAMAGED(table, 1);	   /* first heap offset not 0 */
	DAMAGED(table + 9, 4);	   /* second offset not contiguous */
	DAMAGED(table + 4, 4);	   /* addr length overlaps the next */
	DAMAGED(table + 9 + 6, 2); /* last orcpt runs past the end */
#undef DAMAGED
}

/* Folding chunk CRCs into the message CRC equals hashing the whole. */
static void crc_combine_matches_whole(void **state)
{
	static uint8_t buf[70000];
	const size_t splits[] = {0, 1, 7, 8, 9, 4096, 65535, 69999, 70000};

	(void)state;
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 131 + (i >> 7));
	for (size_t i = 0; i < sizeof(splits) / sizeof(splits[0]); i++) {
		size_t a = splits[i];
		uint32_t whole = spool_crc32c(0, buf, sizeof(buf));
		uint32_t ca = spool_crc32c(0, buf, a);
		uint32_t cb = spool_crc32c(0, buf + a, sizeof(buf) - a);

		assert_int_equal(spool_crc32c_combine(ca, cb, sizeof(buf) - a), whole);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(crc_vectors),
	    cmocka_unit_test(crc_chaining),
	    cmocka_unit_test(crc_combine_matches_whole),
	    cmocka_unit_test(crc_unaligned_starts),
	    cmocka_unit_test(siphash_vectors),
	    cmocka_unit_test(key_new_is_random),
	    cmocka_unit_test(hdr_init_check),
	    cmocka_unit_test(hdr_every_bit_flip_detected),
	    cmocka_unit_test(hdr_other_key_rejected),
	    cmocka_unit_test(hdr_field_checks),
	    cmocka_unit_test(seg_head_parse),
	    cmocka_unit_test(rec_size_and_pad),
	    cmocka_unit_test(qid_round_trip),
	    cmocka_unit_test(qid_rejects),
	    cmocka_unit_test(env_round_trip_0_1_100),
	    cmocka_unit_test(env_empty_and_long_strings),
	    cmocka_unit_test(env_bound_and_cap),
	    cmocka_unit_test(env_v3_golden),
	    cmocka_unit_test(env_v2_still_read),
	    cmocka_unit_test(env_v1_still_read),
	    cmocka_unit_test(env_size),
	    cmocka_unit_test(env_rejects_malformed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
