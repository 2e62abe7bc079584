/*
 * queue/record — spool record framing, CRC32C, the envelope codec and the
 * blocking segment scanner.  The format and the recovery rules are the
 * contract in record.h; this file documents only the choices made inside it.
 */
#include "queue/record.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

/* Headers and seg info are written as their in-memory structs, and the CRC
 * slice-by-8 loop loads words in host order: both are only right on a
 * little-endian host (x86_64, aarch64-LE).  A big-endian port must byte-swap
 * in spool_rec_hdr_init/check, the SEGMENT payload and crc_sw_update. */
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "spool format is little-endian");
static_assert(offsetof(struct spool_rec_hdr, mac) == 24, "mac covers the 24 bytes before it");
static_assert(sizeof(struct spool_seg_info) == 32, "segment info is 32 bytes on disk");
static_assert(SPOOL_SCAN_BUF_SIZE >= SPOOL_ENV_MAX, "an envelope must fit one scan block");
static_assert(SPOOL_SCAN_BUF_SIZE % SPOOL_REC_ALIGN == 0, "scan blocks keep records aligned");

/* ---- CRC32C ---------------------------------------------------------------- */

#define CRC32C_POLY 0x82f63b78u /* Castagnoli, bit-reflected */

static uint32_t crc_table[8][256];
static bool crc_use_hw;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

/* Builds the slice-by-8 tables and probes the CPU once; pthread_once because
 * recovery and the control thread may both call in first. */
static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
		crc_table[0][i] = c;
	}
	/* table[t][b]: the CRC contribution of byte b followed by t zero bytes. */
	for (int t = 1; t < 8; t++) {
		for (int i = 0; i < 256; i++) {
			uint32_t c = crc_table[t - 1][i];
			crc_table[t][i] = (c >> 8) ^ crc_table[0][c & 0xff];
		}
	}
#if defined(__x86_64__)
	crc_use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

/* Raw (un-inverted) update, eight bytes per step. */
static uint32_t crc_sw_update(uint32_t c, const uint8_t *p, size_t n)
{
	uint32_t(*t)[256] = crc_table;

	for (; n >= 8; p += 8, n -= 8) {
		uint64_t v;
		memcpy(&v, p, 8); /* any alignment; little-endian word */
		v ^= c;
		c = t[7][v & 0xff] ^ t[6][(v >> 8) & 0xff] ^ t[5][(v >> 16) & 0xff] ^
		    t[4][(v >> 24) & 0xff] ^ t[3][(v >> 32) & 0xff] ^ t[2][(v >> 40) & 0xff] ^
		    t[1][(v >> 48) & 0xff] ^ t[0][v >> 56];
	}
	while (n--)
		c = (c >> 8) ^ t[0][(c ^ *p++) & 0xff];
	return c;
}

#if defined(__x86_64__)
/* The crc32 instruction computes exactly this polynomial.  Bytes first until
 * the pointer is 8-aligned, so the 64-bit loads never split a cache line. */
__attribute__((target("sse4.2"))) static uint32_t crc_hw_update(uint32_t crc, const uint8_t *p,
								size_t n)
{
	uint64_t c = crc;

	for (; n && ((uintptr_t)p & 7u); n--)
		c = _mm_crc32_u8((uint32_t)c, *p++);
	for (; n >= 8; p += 8, n -= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		c = _mm_crc32_u64(c, v);
	}
	for (; n; n--)
		c = _mm_crc32_u8((uint32_t)c, *p++);
	return (uint32_t)c;
}
#endif

uint32_t spool_crc32c_sw(uint32_t crc, const void *p, size_t n)
{
	assert(p != NULL || n == 0);
	pthread_once(&crc_once, crc_init);
	return ~crc_sw_update(~crc, p, n);
}

uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n)
{
	assert(p != NULL || n == 0);
	pthread_once(&crc_once, crc_init);
#if defined(__x86_64__)
	if (crc_use_hw)
		return ~crc_hw_update(~crc, p, n);
#endif
	return ~crc_sw_update(~crc, p, n);
}

/* CRC combination (the zlib method): crc(A||B) = crc(A) * x^(8|B|) + crc(B)
 * in GF(2)[x] mod P, in the reflected bit order CRC32C uses.  It lets the
 * writer fold each chunk's CRC into the message CRC without hashing every
 * byte twice. */
#define CRC32C_POLY_REFLECTED 0x82f63b78u

static uint32_t gf2_mulmod(uint32_t a, uint32_t b)
{
	uint32_t m = 1u << 31, p = 0;

	for (;;) {
		if (a & m) {
			p ^= b;
			if ((a & (m - 1)) == 0)
				break;
		}
		m >>= 1;
		b = b & 1 ? (b >> 1) ^ CRC32C_POLY_REFLECTED : b >> 1;
	}
	return p;
}

/* x2n[k] = x^(2^k) mod P, filled once. */
static uint32_t x2n_table[64];
static pthread_once_t x2n_once = PTHREAD_ONCE_INIT;

static void x2n_init(void)
{
	uint32_t p = 1u << 30; /* x^1 in reflected order */

	for (int k = 0; k < 64; k++) {
		x2n_table[k] = p;
		p = gf2_mulmod(p, p);
	}
}

/* x^(8n) mod P, by the binary expansion of 8n = n * 2^3. */
static uint32_t x8n_mod(uint64_t n)
{
	uint32_t p = 1u << 31; /* x^0 */
	unsigned k = 3;

	pthread_once(&x2n_once, x2n_init);
	while (n) {
		if (n & 1)
			p = gf2_mulmod(x2n_table[k & 63], p);
		n >>= 1;
		k++;
	}
	return p;
}

uint32_t spool_crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2)
{
	return gf2_mulmod(x8n_mod(len2), crc1) ^ crc2;
}

/* ---- SipHash-2-4 -------------------------------------------------------------
 *
 * Written from the paper (Aumasson, Bernstein: "SipHash: a fast short-input
 * PRF", 2012): a 128-bit key, 64-bit tag, two compression and four
 * finalisation rounds.  It authenticates 24 header bytes per record, so
 * its cost is a few dozen cycles per record, never per message byte.
 */

static uint64_t rotl64(uint64_t x, unsigned b)
{
	return (x << b) | (x >> (64 - b));
}

struct sip {
	uint64_t v0, v1, v2, v3;
};

static void sip_round(struct sip *s)
{
	s->v0 += s->v1;
	s->v1 = rotl64(s->v1, 13) ^ s->v0;
	s->v0 = rotl64(s->v0, 32);
	s->v2 += s->v3;
	s->v3 = rotl64(s->v3, 16) ^ s->v2;
	s->v0 += s->v3;
	s->v3 = rotl64(s->v3, 21) ^ s->v0;
	s->v2 += s->v1;
	s->v1 = rotl64(s->v1, 17) ^ s->v2;
	s->v2 = rotl64(s->v2, 32);
}

static uint64_t le64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8); /* little-endian host (static_assert above) */
	return v;
}

static void sip_block(struct sip *s, uint64_t m)
{
	s->v3 ^= m;
	sip_round(s);
	sip_round(s);
	s->v0 ^= m;
}

uint64_t spool_siphash(const struct spool_key *k, const void *data, size_t n)
{
	const uint8_t *p = data;
	uint64_t k0 = le64(k->b), k1 = le64(k->b + 8), last = (uint64_t)n << 56;
	struct sip s = {k0 ^ 0x736f6d6570736575ull, k1 ^ 0x646f72616e646f6dull,
			k0 ^ 0x6c7967656e657261ull, k1 ^ 0x7465646279746573ull};

	assert(p != NULL || n == 0);
	for (; n >= 8; p += 8, n -= 8)
		sip_block(&s, le64(p));
	for (size_t i = 0; i < n; i++)
		last |= (uint64_t)p[i] << (8 * i);
	sip_block(&s, last);
	s.v2 ^= 0xff;
	for (int i = 0; i < 4; i++)
		sip_round(&s);
	return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

int spool_key_new(struct spool_key *k)
{
	size_t got = 0;

	while (got < sizeof(k->b)) {
		ssize_t r = getrandom(k->b + got, sizeof(k->b) - got, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		got += (size_t)r;
	}
	return 0;
}

/* ---- record header --------------------------------------------------------- */

static uint64_t hdr_mac(const struct spool_rec_hdr *h, const struct spool_key *k)
{
	return spool_siphash(k, h, offsetof(struct spool_rec_hdr, mac));
}

void spool_rec_hdr_init(struct spool_rec_hdr *h, const struct spool_key *k,
			enum spool_rec_type type, uint64_t msg_id, uint32_t len, uint32_t pay_crc)
{
	assert(type >= SPOOL_REC_SEGMENT && type <= SPOOL_REC_DONE);
	assert(len <= SPOOL_REC_PAYLOAD_MAX && k != NULL);
	*h = (struct spool_rec_hdr){
	    .magic = SPOOL_REC_MAGIC,
	    .type = (uint8_t)type,
	    .len = len,
	    .pay_crc = pay_crc,
	    .msg_id = msg_id,
	};
	h->mac = hdr_mac(h, k);
}

/* flags and reserved are not checked for zero: the MAC already proves they
 * are what the writer meant, and a later writer may give them a use. */
int spool_rec_hdr_check(const struct spool_rec_hdr *h, const struct spool_key *k)
{
	assert(h != NULL && k != NULL);
	/* Magic first: it rejects almost every resync position without a MAC. */
	if (h->magic != SPOOL_REC_MAGIC)
		return -EINVAL;
	if (h->mac != hdr_mac(h, k))
		return -EINVAL;
	if (h->type < SPOOL_REC_SEGMENT || h->type > SPOOL_REC_DONE)
		return -EINVAL;
	if (h->len > SPOOL_REC_PAYLOAD_MAX)
		return -EINVAL;
	return 0;
}

void spool_seg_head_init(struct spool_seg_head *out, uint32_t shard, uint64_t seq,
			 const struct spool_key *k)
{
	memset(out, 0, sizeof(*out));
	out->info = (struct spool_seg_info){
	    .version = SPOOL_SEG_VERSION, .shard = shard, .seq = seq, .key = *k};
	spool_rec_hdr_init(&out->hdr, k, SPOOL_REC_SEGMENT, 0, sizeof(out->info),
			   spool_crc32c(0, &out->info, sizeof(out->info)));
}

/* Version 1 framed its header with a CRC32C of the first 28 bytes in the
 * last four, and a 16-byte SEGMENT payload whose first word is 1. */
static bool head_is_v1(const uint8_t *p, size_t n)
{
	uint32_t magic, crc, len, version;

	if (n < 32 + 16)
		return false;
	memcpy(&magic, p, 4);
	memcpy(&len, p + 8, 4);
	memcpy(&crc, p + 28, 4);
	memcpy(&version, p + 32, 4);
	return magic == SPOOL_REC_MAGIC && p[4] == SPOOL_REC_SEGMENT && len == 16 &&
	       crc == spool_crc32c(0, p, 28) && version == 1;
}

/* The head is self-keyed: the key it carries checks its own MAC.  That
 * proves integrity, not origin, and needs no more: offset 0 is written when
 * the file is created, before any client byte can reach the file. */
int spool_seg_head_parse(const void *p, size_t n, struct spool_seg_info *info)
{
	struct spool_seg_head hd;

	if (n >= sizeof(hd)) {
		memcpy(&hd, p, sizeof(hd));
		if (spool_rec_hdr_check(&hd.hdr, &hd.info.key) == 0 &&
		    hd.hdr.type == SPOOL_REC_SEGMENT && hd.hdr.len == sizeof(hd.info) &&
		    hd.hdr.pay_crc == spool_crc32c(0, &hd.info, sizeof(hd.info))) {
			if (hd.info.version != SPOOL_SEG_VERSION)
				return -EPROTO;
			*info = hd.info;
			return 0;
		}
	}
	return head_is_v1(p, n) ? -EPROTO : -EINVAL;
}

int spool_seg_head_read(int fd, struct spool_seg_info *info)
{
	uint8_t buf[sizeof(struct spool_seg_head)];
	size_t got = 0;

	while (got < sizeof(buf)) {
		ssize_t r = pread(fd, buf + got, sizeof(buf) - got, (off_t)got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return spool_seg_head_parse(buf, got, info);
}

/* ---- queue ID -------------------------------------------------------------- */

void spool_qid_format(uint64_t id, char out[SPOOL_QID_LEN + 1])
{
	static const char hex[] = "0123456789ABCDEF";

	for (int i = 0; i < SPOOL_QID_LEN; i++)
		out[i] = hex[(id >> (60 - 4 * i)) & 0xf];
	out[SPOOL_QID_LEN] = '\0';
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Lower case is accepted because operators type IDs into ringmxctl. */
int spool_qid_parse(const char *s, size_t len, uint64_t *id)
{
	uint64_t v = 0;

	assert(s != NULL || len == 0);
	assert(id != NULL);
	if (len != SPOOL_QID_LEN)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		int d = hex_value(s[i]);
		if (d < 0)
			return -EINVAL;
		v = (v << 4) | (uint64_t)d;
	}
	*id = v;
	return 0;
}

/* ---- envelope codec ---------------------------------------------------------
 *
 * Version 3, all integers little-endian:
 *
 *    0 u8  version (3)         1 u8  body_type      2 u8 ret     3 u8 zero
 *    4 u32 flags               8 u64 id            16 i64 arrival_s
 *   24 u64 msg_len            32 u64 wire_len      40 u64 first_chunk_off
 *   48 u64 size_declared      56 u32 msg_crc       60 u32 rcpt_count
 *   64 u64 stuff_len
 *   72 six strings, each u16 length + bytes: listener, client_addr, helo,
 *      mail_from, envid, auth_user, and (version 3) three more: prepend,
 *      quarantine, route
 *      rcpt table: rcpt_count x { u32 heap offset, u16 addr len,
 *                                 u16 orcpt len, u8 notify }
 *      rcpt heap: addr0 orcpt0 addr1 orcpt1 ... (to the end of the payload)
 *
 * The fixed-width table makes spool_env_rcpt() O(1), so delivery can walk
 * thousands of recipients without re-parsing the envelope each time.  Decode
 * insists on the canonical form (offsets contiguous, heap ends exactly at the
 * payload end), so every byte is accounted for and trailing bytes fail.
 *
 * Version 1 is version 2 without stuff_len (the strings at 64); a spool
 * written before it is read with stuff_len 0, its sizes as they were.
 * Version 2 is version 3 without the last three strings (read as empty).
 */

#define ENV_FIXED_LEN	   72
#define ENV_RCPT_ENTRY_LEN 9

struct enc {
	uint8_t *p;
	size_t cap, len;
	bool full; /* sticky: one check at the end instead of one per field */
};

static void enc_bytes(struct enc *e, const void *src, size_t n)
{
	if (e->full || n > e->cap - e->len) {
		e->full = true;
		return;
	}
	if (n)
		memcpy(e->p + e->len, src, n);
	e->len += n;
}

static void enc_le(struct enc *e, uint64_t v, size_t n)
{
	uint8_t b[8];

	assert(n <= sizeof b);
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	enc_bytes(e, b, n);
}

static void enc_str(struct enc *e, struct spool_str s)
{
	assert(s.ptr != NULL || s.len == 0);
	if (s.len > UINT16_MAX) {
		e->full = true; /* cannot be framed; also over SPOOL_ENV_MAX anyway */
		return;
	}
	enc_le(e, s.len, 2);
	enc_bytes(e, s.ptr, s.len);
}

static void enc_rcpts(struct enc *e, const struct spool_env *env)
{
	uint64_t heap_off = 0;

	for (uint32_t i = 0; i < env->rcpt_count; i++) {
		const struct spool_rcpt *r = &env->rcpts[i];
		if (r->addr.len > UINT16_MAX || r->orcpt.len > UINT16_MAX ||
		    heap_off > UINT32_MAX) {
			e->full = true;
			return;
		}
		enc_le(e, heap_off, 4);
		enc_le(e, r->addr.len, 2);
		enc_le(e, r->orcpt.len, 2);
		enc_le(e, r->notify, 1);
		heap_off += (uint64_t)r->addr.len + r->orcpt.len;
	}
	for (uint32_t i = 0; i < env->rcpt_count && !e->full; i++) {
		enc_bytes(e, env->rcpts[i].addr.ptr, env->rcpts[i].addr.len);
		enc_bytes(e, env->rcpts[i].orcpt.ptr, env->rcpts[i].orcpt.len);
	}
}

size_t spool_env_encode(const struct spool_env *env, uint8_t *out, size_t cap)
{
	assert(env != NULL && (out != NULL || cap == 0));
	assert(env->rcpt_count == 0 || env->rcpts != NULL);
	assert(env->msg_len <= env->wire_len);
	assert(env->stuff_len <= env->msg_len &&
	       (env->stuff_len == 0 || (env->flags & SPOOL_ENV_STUFFED)));
	struct enc e = {.p = out, .cap = cap < SPOOL_ENV_MAX ? cap : SPOOL_ENV_MAX};

	enc_le(&e, SPOOL_ENV_VERSION, 1);
	enc_le(&e, env->body_type, 1);
	enc_le(&e, env->ret, 1);
	enc_le(&e, 0, 1);
	enc_le(&e, env->flags, 4);
	enc_le(&e, env->id, 8);
	enc_le(&e, (uint64_t)env->arrival_s, 8);
	enc_le(&e, env->msg_len, 8);
	enc_le(&e, env->wire_len, 8);
	enc_le(&e, env->first_chunk_off, 8);
	enc_le(&e, env->size_declared, 8);
	enc_le(&e, env->msg_crc, 4);
	enc_le(&e, env->rcpt_count, 4);
	enc_le(&e, env->stuff_len, 8);
	assert(e.full || e.len == ENV_FIXED_LEN);
	enc_str(&e, env->listener);
	enc_str(&e, env->client_addr);
	enc_str(&e, env->helo);
	enc_str(&e, env->mail_from);
	enc_str(&e, env->envid);
	enc_str(&e, env->auth_user);
	enc_str(&e, env->prepend);
	enc_str(&e, env->quarantine);
	enc_str(&e, env->route);
	enc_rcpts(&e, env);
	if (e.full)
		return 0;
	assert(e.len <= SPOOL_ENV_MAX);
	return e.len;
}

struct dec {
	const uint8_t *p;
	size_t len, pos;
	bool bad; /* sticky, like enc.full */
};

static const uint8_t *dec_bytes(struct dec *d, size_t n)
{
	if (d->bad || n > d->len - d->pos) {
		d->bad = true;
		return NULL;
	}
	const uint8_t *p = d->p + d->pos;
	d->pos += n;
	return p;
}

static uint64_t le_load(const uint8_t *p, size_t n)
{
	uint64_t v = 0;

	for (size_t i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static uint64_t dec_le(struct dec *d, size_t n)
{
	const uint8_t *p = dec_bytes(d, n);
	return p ? le_load(p, n) : 0;
}

static struct spool_str dec_str(struct dec *d)
{
	uint32_t n = (uint32_t)dec_le(d, 2);
	const uint8_t *p = dec_bytes(d, n);
	return (struct spool_str){.ptr = p ? (const char *)p : "", .len = p ? n : 0};
}

/* Checks the recipient table against the heap once, so spool_env_rcpt()
 * never meets a bad offset in a decoded envelope. */
static int dec_rcpts(struct dec *d, struct spool_env *env)
{
	uint64_t table_len = (uint64_t)env->rcpt_count * ENV_RCPT_ENTRY_LEN;
	if (table_len > d->len - d->pos)
		return -EINVAL; /* also keeps a huge rcpt_count from wrapping below */
	const uint8_t *table = dec_bytes(d, (size_t)table_len);
	assert(table != NULL);
	uint64_t heap_len = d->len - d->pos, heap_off = 0;

	for (uint32_t i = 0; i < env->rcpt_count; i++) {
		const uint8_t *ent = table + (size_t)i * ENV_RCPT_ENTRY_LEN;
		if (le_load(ent, 4) != heap_off)
			return -EINVAL;
		heap_off += le_load(ent + 4, 2) + le_load(ent + 6, 2);
	}
	if (heap_off != heap_len)
		return -EINVAL;
	env->rcpts = NULL;
	env->rcpt_data = table;
	env->rcpt_data_len = (uint32_t)(table_len + heap_len);
	d->pos = d->len;
	return 0;
}

int spool_env_decode(const uint8_t *p, size_t len, struct spool_env *env)
{
	assert(p != NULL || len == 0);
	assert(env != NULL);
	struct dec d = {.p = p, .len = len};

	if (len > SPOOL_ENV_MAX)
		return -EINVAL;
	uint64_t version = dec_le(&d, 1);
	if (version < 1 || version > SPOOL_ENV_VERSION)
		return -EINVAL;
	*env = (struct spool_env){0};
	env->body_type = (uint8_t)dec_le(&d, 1);
	env->ret = (uint8_t)dec_le(&d, 1);
	if (dec_le(&d, 1) != 0)
		return -EINVAL;
	env->flags = (uint32_t)dec_le(&d, 4);
	env->id = dec_le(&d, 8);
	env->arrival_s = (int64_t)dec_le(&d, 8);
	env->msg_len = dec_le(&d, 8);
	env->wire_len = dec_le(&d, 8);
	env->first_chunk_off = dec_le(&d, 8);
	env->size_declared = dec_le(&d, 8);
	env->msg_crc = (uint32_t)dec_le(&d, 4);
	env->rcpt_count = (uint32_t)dec_le(&d, 4);
	if (version >= 2)
		env->stuff_len = dec_le(&d, 8);
	env->listener = dec_str(&d);
	env->client_addr = dec_str(&d);
	env->helo = dec_str(&d);
	env->mail_from = dec_str(&d);
	env->envid = dec_str(&d);
	env->auth_user = dec_str(&d);
	if (version >= 3) {
		env->prepend = dec_str(&d);
		env->quarantine = dec_str(&d);
		env->route = dec_str(&d);
	}
	if (env->prepend.len > SPOOL_PREPEND_MAX)
		return -EINVAL;
	/* msg_len > wire_len would make spool_message_read hand out bytes that
	 * do not exist; refuse it here rather than trust a later check. */
	if (d.bad || env->msg_len > env->wire_len || dec_rcpts(&d, env))
		return -EINVAL;
	/* Stuffing is in DATA-received bytes only and never more than they
	 * are; a body without its final CRLF came with BDAT (DATA's has it). */
	bool stuffed = env->flags & SPOOL_ENV_STUFFED;
	if (env->stuff_len > env->msg_len || (env->stuff_len && !stuffed) ||
	    (stuffed && (env->flags & SPOOL_ENV_NO_FINAL_CRLF)))
		return -EINVAL;
	assert(d.pos == len);
	return 0;
}

int spool_env_rcpt(const struct spool_env *env, uint32_t i, struct spool_rcpt *out)
{
	assert(env != NULL && out != NULL);
	if (i >= env->rcpt_count || env->rcpt_data == NULL)
		return -EINVAL;
	uint64_t table_len = (uint64_t)env->rcpt_count * ENV_RCPT_ENTRY_LEN;
	assert(table_len <= env->rcpt_data_len); /* dec_rcpts proved it */
	const uint8_t *ent = env->rcpt_data + (size_t)i * ENV_RCPT_ENTRY_LEN;
	const char *heap = (const char *)env->rcpt_data + table_len;
	uint64_t off = le_load(ent, 4);
	uint32_t alen = (uint32_t)le_load(ent + 4, 2), olen = (uint32_t)le_load(ent + 6, 2);

	if (off + alen + olen > env->rcpt_data_len - table_len)
		return -EINVAL;
	out->addr = (struct spool_str){.ptr = heap + off, .len = alen};
	out->orcpt = (struct spool_str){.ptr = heap + off + alen, .len = olen};
	out->notify = ent[8];
	return 0;
}

/* ---- read window --------------------------------------------------------------
 *
 * One block of the file held in memory.  Sequential scanning refills it once
 * per block; a record that straddles the block end causes a refill starting
 * at that record, so headers and envelopes are always contiguous.  Payloads
 * bigger than the block are streamed through it (win_span), never buffered
 * whole.  Nothing is read at or past `end`.
 */
struct scan_win {
	int fd;
	uint8_t *buf;
	size_t cap;
	uint64_t off; /* file offset of buf[0] */
	size_t len;   /* valid bytes in buf */
	uint64_t end; /* read limit */
};

static int win_fill(struct scan_win *w, uint64_t off)
{
	assert(off <= w->end);
	size_t want = w->end - off < w->cap ? (size_t)(w->end - off) : w->cap;

	w->off = off;
	w->len = 0;
	while (w->len < want) {
		ssize_t r = pread(w->fd, w->buf + w->len, want - w->len, (off_t)(off + w->len));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break; /* file shorter than at fstat: the missing part reads as absent */
		w->len += (size_t)r;
	}
	return 0;
}

/* Point *out at n contiguous bytes at off.  0, -ENODATA when they are not
 * all before the end, or -errno. */
static int win_get(struct scan_win *w, uint64_t off, size_t n, const uint8_t **out)
{
	assert(n <= w->cap);
	if (off < w->off || off - w->off + n > w->len) {
		if (off > w->end || n > w->end - off)
			return -ENODATA;
		int r = win_fill(w, off);
		if (r)
			return r;
		if (n > w->len)
			return -ENODATA;
	}
	*out = w->buf + (off - w->off);
	return 0;
}

/* Point *out at the next 1..n bytes at off (as many as are resident). */
static int win_span(struct scan_win *w, uint64_t off, uint64_t n, const uint8_t **out, size_t *k)
{
	assert(n > 0);
	if (off < w->off || off - w->off >= w->len) {
		if (off >= w->end)
			return -ENODATA;
		int r = win_fill(w, off);
		if (r)
			return r;
		if (w->len == 0)
			return -ENODATA;
	}
	size_t avail = w->len - (size_t)(off - w->off);
	*k = n < avail ? (size_t)n : avail;
	*out = w->buf + (off - w->off);
	return 0;
}

/* What lies at an aligned offset. */
enum rec_kind {
	REC_NONE, /* no header that verifies: try the next aligned offset */
	REC_TORN, /* a verified header whose record runs past the end */
	REC_BAD,  /* a verified header, payload CRC wrong: skip the extent */
	REC_OK,
};

/* Classify off (its header in *h); -errno on read error.  Valid = magic,
 * MAC under key, type and length sane, the padded record lies wholly before
 * the end, and the payload CRC matches. */
static int rec_at(struct scan_win *w, const struct spool_key *key, uint64_t off,
		  struct spool_rec_hdr *h)
{
	const uint8_t *p;
	uint32_t crc = 0;
	int r = win_get(w, off, sizeof *h, &p);

	assert(off % SPOOL_REC_ALIGN == 0);
	if (r)
		return r == -ENODATA ? REC_NONE : r;
	memcpy(h, p, sizeof *h);
	if (spool_rec_hdr_check(h, key) != 0)
		return REC_NONE;
	/* A record running past the end was still being written: a torn tail. */
	if (spool_rec_size(h->len) > w->end - off)
		return REC_TORN;
	for (uint64_t pos = off + sizeof *h, left = h->len; left;) {
		size_t k;
		r = win_span(w, pos, left, &p, &k);
		if (r)
			return r == -ENODATA ? REC_TORN : r;
		crc = spool_crc32c(crc, p, k);
		pos += k;
		left -= k;
	}
	return crc == h->pay_crc ? REC_OK : REC_BAD;
}

/* ---- message bodies ---------------------------------------------------------- */

struct body_sink {
	spool_body_fn fn; /* NULL: verify only */
	void *ctx;
	uint64_t left; /* message octets still to hand to fn */
	uint32_t crc;  /* running CRC over all chunk payloads */
};

/* Feed one chunk payload (already proven by its own CRC) to the sink. */
static int chunk_feed(struct scan_win *w, uint64_t off, uint32_t len, struct body_sink *s)
{
	while (len) {
		const uint8_t *p;
		size_t k;
		int r = win_span(w, off, len, &p, &k);
		if (r)
			return r == -ENODATA ? -EIO : r; /* shrank since rec_at read it */
		s->crc = spool_crc32c(s->crc, p, k);
		if (s->fn && s->left) {
			size_t give = s->left < k ? (size_t)s->left : k;
			r = s->fn(s->ctx, (const char *)p, give);
			if (r)
				return r;
			s->left -= give;
		}
		off += k;
		len -= (uint32_t)k;
	}
	return 0;
}

/* Walk the records in [first_chunk_off, commit_off) with the scanner's
 * rules and feed every valid CHUNK of env->id to the sink, in order.  Other
 * messages' records, and damage (no verified header) in between, are
 * skipped; a verified record running over commit_off is not a chunk of
 * this message and breaks the span (chunks precede their commit), for the
 * scanner and for spool_message_read alike.  *ok says whether length and
 * CRC matched the envelope. */
static int body_walk(struct scan_win *w, const struct spool_key *key, const struct spool_env *env,
		     uint64_t commit_off, struct body_sink *s, bool *ok)
{
	uint64_t total = 0, pos = env->first_chunk_off;

	*ok = false;
	s->crc = 0;
	if (pos % SPOOL_REC_ALIGN || pos > commit_off || pos < sizeof(struct spool_seg_head)) {
		*ok = env->wire_len == 0 && env->msg_crc == 0; /* no chunk to point at */
		return 0;
	}
	while (pos < commit_off) {
		struct spool_rec_hdr h;
		int r = rec_at(w, key, pos, &h);

		if (r < 0)
			return r;
		if (r == REC_NONE) {
			pos += SPOOL_REC_ALIGN;
			continue;
		}
		/* A verified header fixes the extent: never look inside it. */
		if (spool_rec_size(h.len) > commit_off - pos)
			return 0;
		if (h.type == SPOOL_REC_CHUNK && h.msg_id == env->id) {
			/* A torn chunk, or more bytes than committed: never hand
			 * them out. */
			if (r != REC_OK || h.len > env->wire_len - total)
				return 0;
			r = chunk_feed(w, pos + sizeof h, h.len, s);
			if (r)
				return r;
			total += h.len;
		}
		pos += spool_rec_size(h.len);
	}
	*ok = total == env->wire_len && s->crc == env->msg_crc;
	assert(!*ok || s->fn == NULL || s->left == 0);
	return 0;
}

/* Streams as it verifies: every piece given to fn comes from a chunk whose
 * own CRC matched, but a missing chunk or a wrong total is only known at the
 * end, so fn may have been fed part (or all) of a message that then returns
 * -EIO.  The caller must treat what it received as void in that case (for
 * delivery: never send the final dot). */
int spool_message_read(int fd, const struct spool_env *env, uint64_t commit_off, spool_body_fn fn,
		       void *ctx)
{
	assert(fd >= 0 && env != NULL && fn != NULL);
	if (env->msg_len > env->wire_len)
		return -EINVAL;
	struct scan_win w = {.fd = fd, .cap = SPOOL_SCAN_BUF_SIZE, .end = commit_off};
	struct body_sink s = {.fn = fn, .ctx = ctx, .left = env->msg_len};
	struct spool_seg_info info;
	bool ok;
	int r = spool_seg_head_read(fd, &info);

	if (r)
		return r == -EINVAL || r == -EPROTO ? -EIO : r;
	if (env->prepend.len && (r = fn(ctx, env->prepend.ptr, env->prepend.len)))
		return r;
	w.buf = malloc(w.cap);
	if (w.buf == NULL)
		return -ENOMEM;
	r = body_walk(&w, &info.key, env, commit_off, &s, &ok);
	free(w.buf);
	if (r)
		return r;
	return ok ? 0 : -EIO;
}

/* ---- segment scan -------------------------------------------------------------- */

struct scan {
	struct scan_win w;
	struct spool_key key; /* from the segment's head */
	uint8_t *env_buf;     /* SPOOL_ENV_MAX: the envelope outlives window refills */
	bool verify_bodies;
	spool_scan_fn fn;
	spool_state_fn state_fn;
	void *ctx;
	struct spool_scan_stats *stats;
};

static int scan_commit(struct scan *sc, uint64_t off, const struct spool_rec_hdr *h)
{
	struct spool_scan_msg msg = {.commit_off = off};
	const uint8_t *p;

	sc->stats->commits++;
	if (h->len > SPOOL_ENV_MAX) {
		sc->stats->bad_envs++;
		return 0;
	}
	int r = win_get(&sc->w, off + sizeof *h, h->len, &p);
	if (r)
		return r == -ENODATA ? -EIO : r; /* rec_at just read it */
	memcpy(sc->env_buf, p, h->len);
	msg.env_raw = sc->env_buf;
	msg.env_raw_len = h->len;
	/* An envelope filed under another id would attach a body to the wrong
	 * message; treat it like one that does not decode. */
	if (spool_env_decode(sc->env_buf, h->len, &msg.env) != 0 || msg.env.id != h->msg_id) {
		sc->stats->bad_envs++;
		return 0;
	}
	if (sc->verify_bodies) {
		struct body_sink s = {0};
		r = body_walk(&sc->w, &sc->key, &msg.env, off, &s, &msg.body_ok);
		if (r)
			return r;
		if (!msg.body_ok)
			sc->stats->bad_bodies++;
	}
	return sc->fn ? sc->fn(sc->ctx, &msg) : 0;
}

static int scan_record(struct scan *sc, uint64_t off, const struct spool_rec_hdr *h)
{
	switch (h->type) {
	case SPOOL_REC_SEGMENT:
		return 0; /* only the head at offset 0 describes the segment */
	case SPOOL_REC_COMMIT:
		return scan_commit(sc, off, h);
	case SPOOL_REC_CHUNK:
		return 0; /* chunks are read through their commit */
	case SPOOL_REC_RCPT_STATE:
	case SPOOL_REC_DONE: {
		const uint8_t *p = NULL;
		int r;

		if (!sc->state_fn)
			return 0;
		if (h->len > SPOOL_STATE_MAX)
			return 0;
		if (h->len) {
			r = win_get(&sc->w, off + sizeof *h, h->len, &p);
			if (r)
				return r == -ENODATA ? -EIO : r;
		}
		return sc->state_fn(sc->ctx, h, p);
	}
	default:
		abort(); /* spool_rec_hdr_check admitted an unknown type */
	}
}

/* verify_bodies=false: body_ok is false (unknown) and bad_bodies stays 0.
 * When fn stops the scan, stats describe the file up to that commit. */
int spool_segment_scan(int fd, uint64_t limit, bool verify_bodies, spool_scan_fn fn, void *ctx,
		       struct spool_scan_stats *stats)
{
	return spool_segment_scan_states(fd, limit, verify_bodies, fn, NULL, ctx, stats);
}

/* The head at offset 0: the key every later header is checked with.  1 with
 * the key, 0 when there is no valid head (nothing in the file is trusted),
 * -EPROTO for an older format, -errno. */
static int scan_head(struct scan *sc)
{
	const uint8_t *p;
	int r = win_get(&sc->w, 0, sizeof(struct spool_seg_head), &p);

	if (r == -ENODATA) {
		/* Shorter than a head: still tell an old file from a torn one. */
		r = win_fill(&sc->w, 0);
		if (r)
			return r;
		return spool_seg_head_parse(sc->w.buf, sc->w.len, &sc->stats->info) == -EPROTO
			   ? -EPROTO
			   : 0;
	}
	if (r)
		return r;
	r = spool_seg_head_parse(p, sizeof(struct spool_seg_head), &sc->stats->info);
	if (r == -EINVAL)
		return 0;
	if (r)
		return r;
	sc->key = sc->stats->info.key;
	sc->stats->has_info = true;
	sc->stats->records = 1;
	sc->stats->valid_end = sizeof(struct spool_seg_head);
	return 1;
}

/* The records after the head, by the rules in record.h. */
static int scan_records(struct scan *sc)
{
	struct spool_scan_stats *stats = sc->stats;
	uint64_t pos = sizeof(struct spool_seg_head);
	int r = 0;

	while (sc->w.end - pos >= sizeof(struct spool_rec_hdr)) {
		struct spool_rec_hdr h;

		r = rec_at(&sc->w, &sc->key, pos, &h);
		if (r < 0)
			return r;
		if (r == REC_NONE) {
			stats->skipped++;
			pos += SPOOL_REC_ALIGN;
			r = 0;
			continue;
		}
		if (r == REC_TORN)
			return 0; /* nothing whole lies beyond it */
		pos += spool_rec_size(h.len);
		if (r == REC_BAD) {
			stats->bad_records++;
			r = 0;
			continue;
		}
		stats->records++;
		stats->valid_end = pos;
		r = scan_record(sc, pos - spool_rec_size(h.len), &h);
		if (r)
			return r;
	}
	return 0;
}

int spool_segment_scan_states(int fd, uint64_t limit, bool verify_bodies, spool_scan_fn fn,
			      spool_state_fn state_fn, void *ctx, struct spool_scan_stats *stats)
{
	assert(fd >= 0 && stats != NULL);
	struct scan sc = {.verify_bodies = verify_bodies,
			  .fn = fn,
			  .state_fn = state_fn,
			  .ctx = ctx,
			  .stats = stats};
	struct stat st;
	int r;

	*stats = (struct spool_scan_stats){0};
	if (fstat(fd, &st) != 0)
		return -errno;
	stats->file_len = (uint64_t)st.st_size;
	sc.w = (struct scan_win){.fd = fd, .cap = SPOOL_SCAN_BUF_SIZE};
	sc.w.end = limit < stats->file_len ? limit : stats->file_len;
	sc.w.buf = malloc(SPOOL_SCAN_BUF_SIZE + SPOOL_ENV_MAX);
	if (sc.w.buf == NULL)
		return -ENOMEM;
	sc.env_buf = sc.w.buf + SPOOL_SCAN_BUF_SIZE;
	r = scan_head(&sc);
	if (r == 1)
		r = scan_records(&sc);
	assert(stats->valid_end <= sc.w.end || stats->valid_end == 0);
	free(sc.w.buf);
	return r;
}

/* ---- per-recipient state records ------------------------------------------------ */

size_t spool_state_encode(const struct spool_state *st, uint8_t *out, size_t cap)
{
	struct enc e = {.p = out, .cap = cap};
	uint32_t elen = st->error_len > SPOOL_STATE_ERR_MAX ? SPOOL_STATE_ERR_MAX : st->error_len;

	if (st->rcpt_count > SPOOL_STATE_RCPTS_MAX)
		return 0;
	enc_le(&e, 1, 1);
	enc_le(&e, st->flags, 1);
	enc_le(&e, st->attempts, 2);
	enc_le(&e, st->rcpt_count, 4);
	enc_le(&e, (uint64_t)st->next_attempt_s, 8);
	enc_bytes(&e, st->rcpt_state, st->rcpt_count);
	enc_le(&e, elen, 2);
	enc_bytes(&e, st->error, elen);
	return e.full ? 0 : e.len;
}

int spool_state_decode(const uint8_t *p, size_t len, struct spool_state *st)
{
	struct dec d = {.p = p, .len = len};
	const uint8_t *b;

	if (dec_le(&d, 1) != 1)
		return -EINVAL;
	st->flags = (uint8_t)dec_le(&d, 1);
	st->attempts = (uint16_t)dec_le(&d, 2);
	st->rcpt_count = (uint32_t)dec_le(&d, 4);
	st->next_attempt_s = (int64_t)dec_le(&d, 8);
	if (d.bad || st->rcpt_count > SPOOL_STATE_RCPTS_MAX)
		return -EINVAL;
	b = dec_bytes(&d, st->rcpt_count);
	st->rcpt_state = b;
	st->error_len = (uint32_t)dec_le(&d, 2);
	st->error = (const char *)dec_bytes(&d, st->error_len);
	if (d.bad || d.pos != d.len || st->error_len > SPOOL_STATE_ERR_MAX)
		return -EINVAL;
	return 0;
}
