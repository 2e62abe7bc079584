/*
 * Writes the seed corpus of fuzz_record: small segment images of format 2
 * built with the real framing, SipHash tags and encoders (queue/record.c),
 * plus bare envelopes and state snapshots for the decoders.  Re-run after a
 * format change (the fuzz build, tests/fuzz/run.sh's, has it as a target):
 *
 *   meson compile -C build-fuzz make_record_seeds &&
 *      build-fuzz/tests/fuzz/make_record_seeds tests/fuzz/corpus_record
 *
 * Output is deterministic (a fixed segment key, no clock, fixed
 * pseudo-random bodies), so the committed seeds only change when the format
 * does.  The key sits in each image's head, where the driver reads it.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/record.h"

/* Seeds stay small so libFuzzer's default max_len stays near 8 KiB and each
 * execution (several scans plus an oracle) stays well under a millisecond. */
#define SEG_MAX	 8192
#define WIRE_MAX 1024
#define HDR_LEN	 sizeof(struct spool_rec_hdr)

/* Every segment's key; a client never knows it, the forged seeds use this
 * one with its last bit flipped (the best guess short of the key). */
static const struct spool_key seg_key = {
    {'r', 'i', 'n', 'g', 'm', 'x', '-', 'f', 'u', 'z', 'z', '-', 'k', 'e', 'y', '!'}};

struct seg {
	uint8_t buf[SEG_MAX];
	size_t len;
	struct spool_key key; /* records are tagged with this one */
};

struct msg {
	uint64_t id;
	uint8_t wire[WIRE_MAX]; /* body + ".\r\n" */
	size_t msg_len, wire_len, sent;
	uint64_t first_off;
};

static void die(const char *what)
{
	fprintf(stderr, "make_record_seeds: %s\n", what);
	exit(1);
}

/* Reserve a record's space without writing it: a write that never landed. */
static uint64_t seg_reserve(struct seg *s, uint32_t len)
{
	uint64_t off = s->len;
	if (spool_rec_size(len) > SEG_MAX - s->len)
		die("segment full");
	s->len += spool_rec_size(len);
	return off;
}

static uint64_t seg_put(struct seg *s, enum spool_rec_type type, uint64_t id, const void *p,
			uint32_t len)
{
	uint64_t off = seg_reserve(s, len);
	struct spool_rec_hdr h;

	spool_rec_hdr_init(&h, &s->key, type, id, len, spool_crc32c(0, p, len));
	memcpy(s->buf + off, &h, sizeof h);
	if (len) /* p is NULL for DONE */
		memcpy(s->buf + off + sizeof h, p, len);
	return off; /* the pad is already zero */
}

/* A header at off over the len payload bytes already in the image: records
 * nested in other records' payloads, as a forged or stale body could hold. */
static void seg_hdr_over(struct seg *s, uint64_t off, enum spool_rec_type type, uint64_t id,
			 uint32_t len)
{
	struct spool_rec_hdr h;

	if (off + sizeof h + len > s->len)
		die("header past the image");
	spool_rec_hdr_init(&h, &s->key, type, id, len,
			   spool_crc32c(0, s->buf + off + sizeof h, len));
	memcpy(s->buf + off, &h, sizeof h);
}

/* A fresh image with a head at offset 0. */
static void seg_start(struct seg *s, uint32_t shard, uint64_t seq)
{
	struct spool_seg_head hd;

	*s = (struct seg){.key = seg_key};
	spool_seg_head_init(&hd, shard, seq, &seg_key);
	memcpy(s->buf, &hd, sizeof hd);
	s->len = sizeof hd;
}

static void msg_init(struct msg *m, uint64_t id, size_t body_len)
{
	uint32_t x = (uint32_t)id * 2654435761u;

	if (body_len + 3 > WIRE_MAX)
		die("body too long");
	*m = (struct msg){.id = id, .msg_len = body_len, .wire_len = body_len + 3};
	for (size_t i = 0; i < body_len; i++) {
		x = x * 1103515245u + 12345u;
		m->wire[i] = i % 40 == 38   ? '\r'
			     : i % 40 == 39 ? '\n'
					    : (uint8_t)(' ' + (x >> 16) % 95);
	}
	memcpy(m->wire + body_len, ".\r\n", 3);
}

static uint64_t msg_chunk(struct seg *s, struct msg *m, size_t n)
{
	if (n > m->wire_len - m->sent)
		die("chunk past the message");
	uint64_t off = seg_put(s, SPOOL_REC_CHUNK, m->id, m->wire + m->sent, (uint32_t)n);
	if (m->sent == 0)
		m->first_off = off;
	m->sent += n;
	return off;
}

/* A chunk the writer reserved but that never reached the disk. */
static void msg_chunk_lost(struct seg *s, struct msg *m, size_t n)
{
	uint64_t off = seg_reserve(s, (uint32_t)n);
	if (m->sent == 0)
		m->first_off = off;
	m->sent += n;
}

static void msg_chunks(struct seg *s, struct msg *m, size_t step)
{
	while (m->sent < m->wire_len) {
		size_t left = m->wire_len - m->sent;
		msg_chunk(s, m, left < step ? left : step);
	}
}

static size_t env_fill(const struct msg *m, uint64_t first_off, const struct spool_rcpt *r,
		       uint32_t nr, uint8_t *out, size_t cap)
{
	struct spool_env env = {
	    .id = m->id,
	    .arrival_s = 1700000000 + (int64_t)m->id,
	    .msg_len = m->msg_len,
	    .wire_len = m->wire_len,
	    .stuff_len = m->msg_len / 16, /* some stuffing dots (version 2) */
	    .msg_crc = spool_crc32c(0, m->wire, m->wire_len),
	    .first_chunk_off = first_off,
	    .flags = SPOOL_ENV_STUFFED,
	    .listener = {"mx", 2},
	    .client_addr = {"192.0.2.7", 9},
	    .helo = {"client.example", 14},
	    .mail_from = {"from@example.org", 16},
	    .rcpt_count = nr,
	    .rcpts = r,
	};
	size_t n = spool_env_encode(&env, out, cap);
	if (n == 0)
		die("envelope does not fit");
	return n;
}

static uint64_t msg_commit(struct seg *s, const struct msg *m)
{
	struct spool_rcpt r = {.addr = {"rcpt@example.net", 16}, .notify = 1};
	uint8_t buf[512];
	/* No chunk written: spool_msg_commit points at where the first would go. */
	uint64_t first = m->sent ? m->first_off : s->len;
	size_t n = env_fill(m, first, &r, 1, buf, sizeof buf);

	return seg_put(s, SPOOL_REC_COMMIT, m->id, buf, (uint32_t)n);
}

/* A delivery-state snapshot for id: n recipients in the given states. */
static size_t state_fill(const uint8_t *rs, uint32_t n, uint8_t flags, const char *err,
			 uint8_t *out, size_t cap)
{
	struct spool_state st = {
	    .flags = flags,
	    .attempts = 3,
	    .rcpt_count = n,
	    .next_attempt_s = 1700003600,
	    .rcpt_state = rs,
	    .error = err,
	    .error_len = err ? (uint32_t)strlen(err) : 0,
	};
	size_t len = spool_state_encode(&st, out, cap);
	if (len == 0)
		die("state does not fit");
	return len;
}

static void msg_state(struct seg *s, uint64_t id, uint8_t rcpt_state, uint8_t flags)
{
	uint8_t buf[128];
	size_t n = state_fill(&rcpt_state, 1, flags, "451 4.3.0 try later", buf, sizeof buf);

	seg_put(s, SPOOL_REC_RCPT_STATE, id, buf, (uint32_t)n);
}

/* Every field set, several recipients with ORCPT and NOTIFY: the codec's
 * widest path. */
static size_t env_full(uint64_t id, uint64_t first_off, uint8_t *out, size_t cap)
{
	static const struct spool_rcpt r[] = {
	    {.addr = {"a@example.net", 13}, .orcpt = {"rfc822;a@example.net", 20}, .notify = 1},
	    {.addr = {"Postmaster", 10}, .notify = 0},
	    {.addr = {"\xc3\xa9l\xc3\xa8ve@\xc3\xa9"
		      "cole.fr",
		      17},
	     .notify = 6},
	    {.addr = {"b@example.net", 13}, .orcpt = {"utf-8;b@example.net", 19}, .notify = 7},
	    {.addr = {"c@x", 3}, .notify = 8},
	};
	struct spool_env env = {
	    .id = id,
	    .arrival_s = -1,
	    .flags = SPOOL_ENV_STUFFED | SPOOL_ENV_8BIT | SPOOL_ENV_SMTPUTF8,
	    .body_type = 2,
	    .ret = 1,
	    .size_declared = 123456,
	    .first_chunk_off = first_off,
	    .listener = {"submission", 10},
	    .client_addr = {"2001:db8::1", 11},
	    .helo = {"[2001:db8::1]", 13},
	    .mail_from = {"", 0},
	    .envid = {"QQ+2BXYZ", 8},
	    .auth_user = {"alice", 5},
	    .rcpt_count = sizeof r / sizeof r[0],
	    .rcpts = r,
	};
	size_t n = spool_env_encode(&env, out, cap);
	if (n == 0)
		die("envelope does not fit");
	return n;
}

static void write_seed(const char *dir, const char *name, const void *p, size_t n)
{
	char path[512];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0)
		die(path);
}

static void seeds_basic(const char *dir)
{
	static struct seg s;
	struct msg a, b;

	seg_start(&s, 0, 1);
	write_seed(dir, "seg_empty", s.buf, s.len);

	msg_init(&a, 0x101, 60);
	msg_chunks(&s, &a, a.wire_len);
	msg_commit(&s, &a);
	write_seed(dir, "one_message", s.buf, s.len);

	seg_start(&s, 1, 2);
	msg_init(&a, 0x102, 300);
	msg_chunks(&s, &a, 97);
	msg_commit(&s, &a);
	write_seed(dir, "multi_chunk", s.buf, s.len);

	/* Records of a writer whose head never reached the disk: nothing in
	 * the file is trusted. */
	seg_start(&s, 1, 3);
	msg_init(&b, 0x103, 20);
	msg_chunks(&s, &b, b.wire_len);
	msg_commit(&s, &b);
	memset(s.buf, 0, sizeof(struct spool_seg_head));
	write_seed(dir, "no_head", s.buf, s.len);
}

/* Three sessions writing into one segment; commits in another order, then
 * the delivery engine's state records. */
static void seeds_interleaved(const char *dir)
{
	static struct seg s;
	struct msg a, b, c;

	seg_start(&s, 2, 3);
	msg_init(&a, 0xa1, 200);
	msg_init(&b, 0xb2, 77);
	msg_init(&c, 0xc3, 150);
	msg_chunk(&s, &a, 64);
	msg_chunk(&s, &b, 30);
	msg_chunk(&s, &c, 100);
	msg_chunk(&s, &a, 65);
	msg_chunks(&s, &b, 100);
	msg_commit(&s, &b);
	msg_chunks(&s, &a, 50);
	msg_chunks(&s, &c, 100);
	msg_commit(&s, &a);
	uint64_t last = msg_commit(&s, &c);
	write_seed(dir, "interleaved", s.buf, s.len);
	/* kill -9 mid-append: the last commit's payload and its header cut. */
	write_seed(dir, "torn_tail_payload", s.buf, (size_t)last + 50);
	write_seed(dir, "torn_tail_header", s.buf, (size_t)last + 20);

	msg_state(&s, b.id, SPOOL_RCPT_DEFERRED, 0);
	msg_state(&s, a.id, SPOOL_RCPT_PENDING, SPOOL_STATE_HELD);
	seg_put(&s, SPOOL_REC_DONE, b.id, NULL, 0);
	msg_state(&s, c.id, SPOOL_RCPT_BOUNCED, SPOOL_STATE_BOUNCE);
	last = seg_put(&s, SPOOL_REC_DONE, c.id, NULL, 0);
	write_seed(dir, "states", s.buf, s.len);
	write_seed(dir, "states_torn", s.buf, (size_t)last + 24);
}

/* Writes complete out of order: reserved space that never landed before and
 * inside valid records, as zeros and as garbage. */
static void seeds_holes(const char *dir)
{
	static struct seg s;
	struct msg a, b;

	seg_start(&s, 3, 4);
	msg_init(&a, 0xaa, 120);
	msg_init(&b, 0xbb, 90);
	uint64_t hole = seg_reserve(&s, 100); /* another session's chunk, never written */
	msg_chunk(&s, &a, 60);
	msg_chunk_lost(&s, &b, 40); /* B loses a chunk: its body must fail */
	msg_chunks(&s, &a, 60);
	msg_chunks(&s, &b, 60);
	msg_commit(&s, &b);
	msg_commit(&s, &a);
	write_seed(dir, "zero_holes", s.buf, s.len);

	/* The same image with the first hole full of garbage and a stale magic. */
	uint32_t x = 7;
	for (size_t i = hole; i < hole + spool_rec_size(100); i++) {
		x = x * 1103515245u + 12345u;
		s.buf[i] = (uint8_t)(x >> 16);
	}
	uint32_t magic = SPOOL_REC_MAGIC;
	memcpy(s.buf + hole + 16, &magic, sizeof magic);
	write_seed(dir, "garbage_hole", s.buf, s.len);

	/* A chunk whose bytes flipped after it was written: its header still
	 * verifies, so its extent is skipped whole and the body fails. */
	seg_start(&s, 3, 5);
	msg_init(&a, 0xac, 80);
	uint64_t off = msg_chunk(&s, &a, 40);
	msg_chunks(&s, &a, 40);
	msg_commit(&s, &a);
	s.buf[off + HDR_LEN + 5] ^= 0x20;
	write_seed(dir, "corrupt_chunk", s.buf, s.len);
}

/* Commits the scanner must refuse or skip, and records it ignores. */
static void seeds_odd_records(const char *dir)
{
	static struct seg s;
	struct msg a, e;
	uint8_t env[1024];
	static const uint8_t junk[24] = {1, 0, 0, 7};

	seg_start(&s, 4, 6);
	msg_init(&a, 0xd1, 40);
	msg_chunks(&s, &a, a.wire_len);
	size_t n = env_fill(&a, a.first_off, NULL, 0, env, sizeof env);
	seg_put(&s, SPOOL_REC_COMMIT, 0xd2, env, (uint32_t)n);	/* filed under another id */
	seg_put(&s, SPOOL_REC_COMMIT, 0xd3, junk, sizeof junk); /* does not decode */
	seg_put(&s, SPOOL_REC_RCPT_STATE, 0xd1, "\x00\x01", 2); /* does not decode */
	seg_put(&s, SPOOL_REC_DONE, 0xd1, NULL, 0);
	struct spool_seg_info info = {.version = SPOOL_SEG_VERSION, .shard = 9, .seq = 9};
	seg_put(&s, SPOOL_REC_SEGMENT, 0, &info, sizeof info); /* not at 0: describes nothing */
	msg_commit(&s, &a);
	write_seed(dir, "odd_records", s.buf, s.len);

	/* A message with no bytes at all and a wide envelope. */
	seg_start(&s, 5, 7);
	msg_init(&e, 0xe1, 0);
	e.wire_len = 0;
	n = env_full(e.id, s.len, env, sizeof env);
	seg_put(&s, SPOOL_REC_COMMIT, e.id, env, (uint32_t)n);
	write_seed(dir, "empty_message_full_env", s.buf, s.len);

	write_seed(dir, "env_full", env, n);
	n = env_fill(&a, sizeof(struct spool_seg_head), NULL, 0, env, sizeof env);
	write_seed(dir, "env_no_rcpt", env, n);

	static const uint8_t rs[] = {SPOOL_RCPT_PENDING, SPOOL_RCPT_DELIVERED, SPOOL_RCPT_BOUNCED,
				     SPOOL_RCPT_DEFERRED};
	n = state_fill(rs, sizeof rs, SPOOL_STATE_HELD | SPOOL_STATE_DELETED,
		       "550 5.1.1 <b@example.net>: no such user", env, sizeof env);
	write_seed(dir, "state_full", env, n);
}

/* Heads the scanner must refuse (-EPROTO) or ignore. */
static void seeds_heads(const char *dir)
{
	static struct seg s;
	struct msg a;

	/* Version 1: a CRC32C of 28 header bytes, a 16-byte SEGMENT payload. */
	uint8_t v1[48] = {0};
	uint32_t magic = SPOOL_REC_MAGIC, len = 16, one = 1, crc;
	memcpy(v1, &magic, 4);
	v1[4] = SPOOL_REC_SEGMENT;
	memcpy(v1 + 8, &len, 4);
	memcpy(v1 + 32, &one, 4);
	crc = spool_crc32c(0, v1, 28);
	memcpy(v1 + 28, &crc, 4);
	write_seed(dir, "head_v1", v1, sizeof v1);

	/* A well-tagged head of a version this build does not know. */
	struct spool_seg_head hd;
	spool_seg_head_init(&hd, 0, 1, &seg_key);
	hd.info.version = SPOOL_SEG_VERSION + 1;
	spool_rec_hdr_init(&hd.hdr, &seg_key, SPOOL_REC_SEGMENT, 0, sizeof hd.info,
			   spool_crc32c(0, &hd.info, sizeof hd.info));
	write_seed(dir, "head_v3", &hd, sizeof hd);

	/* A head cut short (the file was created, the write never landed). */
	seg_start(&s, 0, 2);
	msg_init(&a, 0x201, 30);
	msg_chunks(&s, &a, a.wire_len);
	msg_commit(&s, &a);
	write_seed(dir, "head_short", s.buf, 40);
}

/* A record inside a chunk whose payload runs over the next COMMIT, met by
 * the walk from first_chunk_off (the regression in record_recovery.c's
 * chunk_walk_stops_at_commit): once with the message's only chunk inside it,
 * once with a chunk too many. */
static void seeds_nested(const char *dir)
{
	static struct seg s;
	struct msg a;

	seg_start(&s, 6, 8);
	msg_init(&a, 0xf1, 13);
	uint64_t q = seg_reserve(&s, 0), r = seg_reserve(&s, 0);
	msg_chunks(&s, &a, a.wire_len);
	a.first_off = r;
	uint64_t c = msg_commit(&s, &a);
	seg_reserve(&s, 0); /* zeros: R runs on past C */
	seg_hdr_over(&s, r, SPOOL_REC_CHUNK, 0x99, (uint32_t)(s.len - r - HDR_LEN));
	seg_hdr_over(&s, q, SPOOL_REC_CHUNK, 0x51, (uint32_t)(c - q - HDR_LEN));
	write_seed(dir, "nested_over_commit", s.buf, s.len);

	seg_start(&s, 6, 9);
	msg_init(&a, 0xf2, 13);
	q = seg_reserve(&s, 0);
	msg_chunks(&s, &a, a.wire_len);
	r = seg_reserve(&s, 0);
	seg_put(&s, SPOOL_REC_CHUNK, a.id, "12345678", 8);
	c = msg_commit(&s, &a);
	seg_reserve(&s, 0);
	seg_hdr_over(&s, r, SPOOL_REC_CHUNK, 0x99, (uint32_t)(s.len - r - HDR_LEN));
	seg_hdr_over(&s, q, SPOOL_REC_CHUNK, 0x51, (uint32_t)(c - q - HDR_LEN));
	write_seed(dir, "nested_extra_chunk", s.buf, s.len);
}

/* A client's body made of records at 8-aligned file offsets: a DONE for
 * a victim and a whole message (CHUNK, COMMIT) of its own, tagged under
 * the key sk.  The victim is committed before the attack. */
static void forged_message(struct seg *s, const struct spool_key *sk, size_t cut)
{
	static struct seg body; /* the forged records, laid out as on disk */
	struct msg v, f, atk;
	uint8_t env[512];

	seg_start(s, 7, 10);
	msg_init(&v, 0x700, 50);
	msg_chunks(s, &v, v.wire_len);
	msg_commit(s, &v);

	/* The forged records start where the attacker's chunk payload will. */
	body = (struct seg){.key = *sk, .len = s->len + HDR_LEN};
	msg_init(&f, 0x7ff, 25);
	seg_put(&body, SPOOL_REC_DONE, v.id, NULL, 0);
	msg_chunks(&body, &f, f.wire_len);
	size_t n = env_fill(&f, f.first_off, NULL, 0, env, sizeof env);
	seg_put(&body, SPOOL_REC_COMMIT, f.id, env, (uint32_t)n);

	/* The attacker's own message carries those bytes as its body. */
	msg_init(&atk, 0x701, 0);
	atk.wire_len = body.len - (s->len + HDR_LEN);
	if (atk.wire_len > WIRE_MAX || cut > atk.wire_len)
		die("forged body too long");
	memcpy(atk.wire, body.buf + s->len + HDR_LEN, atk.wire_len);
	atk.msg_len = atk.wire_len;
	uint64_t off = msg_chunk(s, &atk, atk.wire_len);
	if (cut == 0)
		msg_commit(s, &atk);
	else
		s->len = off + HDR_LEN + atk.wire_len - cut; /* the disk filled mid-chunk */
}

static void seeds_forged(const char *dir)
{
	static struct seg s;
	struct spool_key guess = seg_key;

	guess.b[SPOOL_KEY_LEN - 1] ^= 1;
	forged_message(&s, &guess, 0);
	write_seed(dir, "forged_wrong_key", s.buf, s.len);
	forged_message(&s, &guess, 40);
	write_seed(dir, "forged_wrong_key_short", s.buf, s.len);
	/* Under the right key (it never leaves the server): the records still
	 * lie inside a verified chunk, whose extent is never looked into. */
	forged_message(&s, &seg_key, 0);
	write_seed(dir, "forged_right_key", s.buf, s.len);
	forged_message(&s, &seg_key, 40);
	write_seed(dir, "forged_right_key_short", s.buf, s.len);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: make_record_seeds DIR\n");
		return 2;
	}
	seeds_basic(argv[1]);
	seeds_interleaved(argv[1]);
	seeds_holes(argv[1]);
	seeds_odd_records(argv[1]);
	seeds_heads(argv[1]);
	seeds_nested(argv[1]);
	seeds_forged(argv[1]);
	return 0;
}
