/*
 * Writes the seed corpus of fuzz_record: small segment images built with the
 * real record framing and envelope encoder (queue/record.c), plus two bare
 * envelopes for the codec round trip.  Re-run after a format change:
 *
 *   cc -std=c17 -D_GNU_SOURCE -I. tests/fuzz/make_record_seeds.c queue/record.c \
 *      -o /tmp/make_record_seeds && /tmp/make_record_seeds tests/fuzz/corpus_record
 *
 * Output is deterministic (no clock, fixed pseudo-random bodies), so the
 * committed seeds only change when the format does.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/record.h"

/* Seeds stay small so libFuzzer's default max_len stays near 4 KiB and each
 * execution (three scans plus an oracle) stays well under a millisecond. */
#define SEG_MAX	 8192
#define WIRE_MAX 1024

struct seg {
	uint8_t buf[SEG_MAX];
	size_t len;
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

	spool_rec_hdr_init(&h, type, id, len, spool_crc32c(0, p, len));
	memcpy(s->buf + off, &h, sizeof h);
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
	spool_rec_hdr_init(&h, type, id, len, spool_crc32c(0, s->buf + off + sizeof h, len));
	memcpy(s->buf + off, &h, sizeof h);
}

static void seg_info(struct seg *s, uint32_t shard, uint64_t seq)
{
	struct spool_seg_info info = {.version = 1, .shard = shard, .seq = seq};
	seg_put(s, SPOOL_REC_SEGMENT, 0, &info, sizeof info);
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

	s = (struct seg){0};
	seg_info(&s, 0, 1);
	write_seed(dir, "seg_empty", s.buf, s.len);

	msg_init(&a, 0x101, 60);
	msg_chunks(&s, &a, a.wire_len);
	msg_commit(&s, &a);
	write_seed(dir, "one_message", s.buf, s.len);

	s = (struct seg){0};
	seg_info(&s, 1, 2);
	msg_init(&a, 0x102, 300);
	msg_chunks(&s, &a, 97);
	msg_commit(&s, &a);
	write_seed(dir, "multi_chunk", s.buf, s.len);

	/* Records from a previous writer and no SEGMENT record at offset 0. */
	s = (struct seg){0};
	msg_init(&b, 0x103, 20);
	msg_chunks(&s, &b, b.wire_len);
	msg_commit(&s, &b);
	write_seed(dir, "no_segment_record", s.buf, s.len);
}

/* Three sessions writing into one segment; commits in another order. */
static void seeds_interleaved(const char *dir)
{
	static struct seg s;
	struct msg a, b, c;

	s = (struct seg){0};
	seg_info(&s, 2, 3);
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
}

/* Writes complete out of order: reserved space that never landed before and
 * inside valid records, as zeros and as garbage. */
static void seeds_holes(const char *dir)
{
	static struct seg s;
	struct msg a, b;

	s = (struct seg){0};
	seg_info(&s, 3, 4);
	msg_init(&a, 0xaa, 120);
	msg_init(&b, 0xbb, 90);
	seg_reserve(&s, 100); /* another session's chunk, never written */
	msg_chunk(&s, &a, 60);
	msg_chunk_lost(&s, &b, 40); /* B loses a chunk: its body must fail */
	msg_chunks(&s, &a, 60);
	msg_chunks(&s, &b, 60);
	msg_commit(&s, &b);
	msg_commit(&s, &a);
	write_seed(dir, "zero_holes", s.buf, s.len);

	/* The same image with the first hole full of garbage and a stale magic. */
	uint32_t x = 7;
	for (size_t i = 48; i < 48 + spool_rec_size(100); i++) {
		x = x * 1103515245u + 12345u;
		s.buf[i] = (uint8_t)(x >> 16);
	}
	uint32_t magic = SPOOL_REC_MAGIC;
	memcpy(s.buf + 48 + 16, &magic, sizeof magic);
	write_seed(dir, "garbage_hole", s.buf, s.len);

	/* A chunk whose bytes flipped after it was written: CRC mismatch. */
	s = (struct seg){0};
	seg_info(&s, 3, 5);
	msg_init(&a, 0xac, 80);
	uint64_t off = msg_chunk(&s, &a, 40);
	msg_chunks(&s, &a, 40);
	msg_commit(&s, &a);
	s.buf[off + sizeof(struct spool_rec_hdr) + 5] ^= 0x20;
	write_seed(dir, "corrupt_chunk", s.buf, s.len);
}

/* Commits the scanner must refuse or skip, and records it ignores. */
static void seeds_odd_records(const char *dir)
{
	static struct seg s;
	struct msg a, e;
	uint8_t env[1024];
	static const uint8_t junk[24] = {1, 0, 0, 7};

	s = (struct seg){0};
	seg_info(&s, 4, 6);
	msg_init(&a, 0xd1, 40);
	msg_chunks(&s, &a, a.wire_len);
	size_t n = env_fill(&a, a.first_off, NULL, 0, env, sizeof env);
	seg_put(&s, SPOOL_REC_COMMIT, 0xd2, env, (uint32_t)n);	/* filed under another id */
	seg_put(&s, SPOOL_REC_COMMIT, 0xd3, junk, sizeof junk); /* does not decode */
	seg_put(&s, SPOOL_REC_RCPT_STATE, 0xd1, "\x00\x01", 2);
	seg_put(&s, SPOOL_REC_DONE, 0xd1, NULL, 0);
	seg_info(&s, 9, 9); /* a SEGMENT record not at 0 describes nothing */
	msg_commit(&s, &a);
	write_seed(dir, "odd_records", s.buf, s.len);

	/* A message with no bytes at all and a wide envelope. */
	s = (struct seg){0};
	seg_info(&s, 5, 7);
	msg_init(&e, 0xe1, 0);
	e.wire_len = 0;
	n = env_full(e.id, s.len, env, sizeof env);
	seg_put(&s, SPOOL_REC_COMMIT, e.id, env, (uint32_t)n);
	write_seed(dir, "empty_message_full_env", s.buf, s.len);

	write_seed(dir, "env_full", env, n);
	n = env_fill(&a, 48, NULL, 0, env, sizeof env);
	write_seed(dir, "env_no_rcpt", env, n);
}

/* A record inside a chunk whose payload runs over the next COMMIT, met by
 * the walk from first_chunk_off (the regression in record_recovery.c's
 * chunk_walk_stops_at_commit): once with the message's only chunk inside it,
 * once with a chunk too many. */
static void seeds_nested(const char *dir)
{
	static struct seg s;
	struct msg a;

	s = (struct seg){0};
	seg_info(&s, 6, 8);
	msg_init(&a, 0xf1, 13);
	uint64_t q = seg_reserve(&s, 0), r = seg_reserve(&s, 0);
	msg_chunks(&s, &a, a.wire_len);
	a.first_off = r;
	uint64_t c = msg_commit(&s, &a);
	seg_reserve(&s, 0); /* zeros: R runs on past C */
	seg_hdr_over(&s, r, SPOOL_REC_CHUNK, 0x99, (uint32_t)(s.len - r - 32));
	seg_hdr_over(&s, q, SPOOL_REC_CHUNK, 0x51, (uint32_t)(c - q - 32));
	write_seed(dir, "nested_over_commit", s.buf, s.len);

	s = (struct seg){0};
	seg_info(&s, 6, 9);
	msg_init(&a, 0xf2, 13);
	q = seg_reserve(&s, 0);
	msg_chunks(&s, &a, a.wire_len);
	r = seg_reserve(&s, 0);
	seg_put(&s, SPOOL_REC_CHUNK, a.id, "12345678", 8);
	c = msg_commit(&s, &a);
	seg_reserve(&s, 0);
	seg_hdr_over(&s, r, SPOOL_REC_CHUNK, 0x99, (uint32_t)(s.len - r - 32));
	seg_hdr_over(&s, q, SPOOL_REC_CHUNK, 0x51, (uint32_t)(c - q - 32));
	write_seed(dir, "nested_extra_chunk", s.buf, s.len);
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
	seeds_nested(argv[1]);
	return 0;
}
