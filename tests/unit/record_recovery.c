/* Pins recovery: the scanner finds exactly the committed, intact messages in damaged segments. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "queue/record.h"

/* ---- file fixture ---------------------------------------------------------- */

struct fx {
	char dir[64];
	char path[96];
	int fd;
	uint64_t off; /* next record offset the "writer" reserves */
	struct spool_key key;
};

/* Helpers that only see the fd use the key of the fixture being run. */
static struct spool_key cur_key;

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	assert_non_null(f);
	snprintf(f->dir, sizeof f->dir, "/tmp/ringmx-rec-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof f->path, "%s/0000000000000001.seg", f->dir);
	f->fd = open(f->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(f->fd >= 0);
	assert_int_equal(spool_key_new(&f->key), 0);
	cur_key = f->key;
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	close(f->fd);
	unlink(f->path);
	rmdir(f->dir);
	free(f);
	return 0;
}

static void pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
	const uint8_t *b = p;
	while (n) {
		ssize_t r = pwrite(fd, b, n, (off_t)off);
		assert_true(r > 0);
		b += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
}

/* Write one whole record (header, payload, zero pad) at off. */
static void rec_write(int fd, uint64_t off, enum spool_rec_type type, uint64_t id, const void *p,
		      uint32_t len)
{
	static const uint8_t zeros[8];
	struct spool_rec_hdr h;

	spool_rec_hdr_init(&h, &cur_key, type, id, len, spool_crc32c(0, p, len));
	pwrite_all(fd, &h, sizeof h, off);
	pwrite_all(fd, p, len, off + sizeof h);
	pwrite_all(fd, zeros, spool_rec_pad(len), off + sizeof h + len);
}

/* Reserve space for a record the way the spool does: in order, before the write. */
static uint64_t reserve(struct fx *f, uint32_t len)
{
	uint64_t off = f->off;
	f->off += spool_rec_size(len);
	return off;
}

static uint64_t put_rec(struct fx *f, enum spool_rec_type type, uint64_t id, const void *p,
			uint32_t len)
{
	uint64_t off = reserve(f, len);
	rec_write(f->fd, off, type, id, p, len);
	return off;
}

static void put_segment(struct fx *f)
{
	struct spool_seg_head hd;

	assert_int_equal(f->off, 0);
	spool_seg_head_init(&hd, 3, 0x1234, &f->key);
	pwrite_all(f->fd, &hd, sizeof hd, 0);
	f->off = sizeof hd;
}

/* A SEGMENT record that is not first: it must not be taken as the segment's. */
static void put_segment_at(struct fx *f)
{
	struct spool_seg_info info = {.version = SPOOL_SEG_VERSION, .shard = 9, .seq = 9};
	put_rec(f, SPOOL_REC_SEGMENT, 0, &info, sizeof info);
}

/* ---- test messages ------------------------------------------------------------ */

struct tmsg {
	uint64_t id;
	uint8_t *wire; /* body + ".\r\n" */
	size_t msg_len, wire_len;
	size_t sent; /* wire bytes already put in chunks */
	uint64_t first_off, commit_off;
	struct spool_env env; /* as committed, strings cleared */
};

static void tmsg_init(struct tmsg *m, uint64_t id, size_t body_len)
{
	*m = (struct tmsg){.id = id, .msg_len = body_len, .wire_len = body_len + 3};
	m->wire = malloc(m->wire_len);
	assert_non_null(m->wire);
	uint32_t x = (uint32_t)id * 2654435761u;
	for (size_t i = 0; i < body_len; i++) {
		x = x * 1103515245u + 12345u;
		m->wire[i] = i % 78 == 76   ? '\r'
			     : i % 78 == 77 ? '\n'
					    : (uint8_t)(' ' + (x >> 16) % 95);
	}
	memcpy(m->wire + body_len, ".\r\n", 3);
}

static void tmsg_free(struct tmsg *m)
{
	free(m->wire);
	m->wire = NULL;
}

/* Put the next n wire bytes of m in a CHUNK; returns its offset. */
static uint64_t put_chunk(struct fx *f, struct tmsg *m, size_t n)
{
	assert_true(n <= m->wire_len - m->sent);
	uint64_t off = put_rec(f, SPOOL_REC_CHUNK, m->id, m->wire + m->sent, (uint32_t)n);
	if (m->sent == 0)
		m->first_off = off;
	m->sent += n;
	return off;
}

static void put_all_chunks(struct fx *f, struct tmsg *m, size_t step)
{
	while (m->sent < m->wire_len) {
		size_t left = m->wire_len - m->sent;
		put_chunk(f, m, left < step ? left : step);
	}
}

static void rcpt_name(uint64_t id, char *out, size_t cap)
{
	snprintf(out, cap, "rcpt-%" PRIx64 "@example.net", id);
}

static uint64_t put_commit(struct fx *f, struct tmsg *m)
{
	char rcpt[64];
	rcpt_name(m->id, rcpt, sizeof rcpt);
	struct spool_rcpt r = {.addr = {rcpt, (uint32_t)strlen(rcpt)}, .notify = 1};
	m->env = (struct spool_env){
	    .id = m->id,
	    .arrival_s = 1700000000,
	    .msg_len = m->msg_len,
	    .wire_len = m->wire_len,
	    .msg_crc = spool_crc32c(0, m->wire, m->wire_len),
	    .first_chunk_off = m->first_off,
	    .flags = SPOOL_ENV_STUFFED,
	    .mail_from = {"from@example.org", 16},
	    .rcpt_count = 1,
	    .rcpts = &r,
	};
	uint8_t buf[512];
	size_t n = spool_env_encode(&m->env, buf, sizeof buf);
	assert_true(n > 0);
	m->commit_off = put_rec(f, SPOOL_REC_COMMIT, m->id, buf, (uint32_t)n);
	m->env.mail_from = (struct spool_str){0};
	m->env.rcpts = NULL;
	return m->commit_off;
}

/* ---- scanning and reading ------------------------------------------------------ */

struct found {
	uint64_t id, commit_off;
	bool body_ok;
};

struct collect {
	struct found f[64];
	int n;
	int stop_with; /* non-zero: return it from the first callback */
};

static int on_msg(void *ctx, const struct spool_scan_msg *msg)
{
	struct collect *c = ctx;
	char want[64];
	struct spool_rcpt r;

	assert_true(c->n < 64);
	c->f[c->n++] = (struct found){msg->env.id, msg->commit_off, msg->body_ok};
	/* the envelope is readable during the callback */
	rcpt_name(msg->env.id, want, sizeof want);
	assert_int_equal(msg->env.rcpt_count, 1);
	assert_int_equal(spool_env_rcpt(&msg->env, 0, &r), 0);
	assert_int_equal(r.addr.len, strlen(want));
	assert_memory_equal(r.addr.ptr, want, r.addr.len);
	assert_int_equal(msg->env.mail_from.len, 16);
	assert_memory_equal(msg->env.mail_from.ptr, "from@example.org", 16);
	return c->stop_with;
}

static int scan(struct fx *f, uint64_t limit, struct collect *c, struct spool_scan_stats *st)
{
	memset(c, 0, sizeof *c);
	return spool_segment_scan(f->fd, limit, true, on_msg, c, st);
}

static void expect_found(const struct collect *c, int i, const struct tmsg *m, bool ok)
{
	assert_true(i < c->n);
	assert_int_equal(c->f[i].id, m->id);
	assert_int_equal(c->f[i].commit_off, m->commit_off);
	assert_int_equal(c->f[i].body_ok, ok);
}

struct sink {
	uint8_t *p;
	size_t len, cap;
	int calls;
	int stop_with;
};

static int on_body(void *ctx, const char *p, size_t n)
{
	struct sink *s = ctx;
	assert_true(n > 0);
	if (s->len + n > s->cap) {
		s->cap = (s->len + n) * 2;
		s->p = realloc(s->p, s->cap);
		assert_non_null(s->p);
	}
	memcpy(s->p + s->len, p, n);
	s->len += n;
	s->calls++;
	return s->stop_with;
}

static int read_msg(struct fx *f, const struct tmsg *m, const struct spool_env *env, struct sink *s)
{
	memset(s, 0, sizeof *s);
	return spool_message_read(f->fd, env, m->commit_off, on_body, s);
}

/* The stored bytes come back exactly, without the DATA terminator. */
static void expect_body(struct fx *f, const struct tmsg *m)
{
	struct sink s;
	assert_int_equal(read_msg(f, m, &m->env, &s), 0);
	assert_int_equal(s.len, m->msg_len);
	if (m->msg_len)
		assert_memory_equal(s.p, m->wire, m->msg_len);
	free(s.p);
}

/* ---- tests ---------------------------------------------------------------------- */

static void interleaved_three_messages(void **state)
{
	struct fx *f = *state;
	struct tmsg a, b, c;
	struct collect col;
	struct spool_scan_stats st;

	tmsg_init(&a, 0xa1, 5000);
	tmsg_init(&b, 0xb2, 777);
	tmsg_init(&c, 0xc3, 12000);
	put_segment(f);
	put_chunk(f, &a, 1000);
	put_chunk(f, &b, 300);
	put_chunk(f, &c, 4096);
	put_chunk(f, &a, 1001);
	put_chunk(f, &c, 4096);
	put_chunk(f, &b, b.wire_len - 300);
	put_commit(f, &b);
	put_all_chunks(f, &a, 999);
	put_all_chunks(f, &c, 4096);
	put_commit(f, &a);
	put_commit(f, &c);

	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(col.n, 3);
	expect_found(&col, 0, &b, true);
	expect_found(&col, 1, &a, true);
	expect_found(&col, 2, &c, true);
	assert_int_equal(st.valid_end, f->off);
	assert_int_equal(st.file_len, f->off);
	assert_int_equal(st.skipped, 0);
	assert_int_equal(st.commits, 3);
	assert_int_equal(st.bad_bodies, 0);
	assert_int_equal(st.bad_envs, 0);
	assert_int_equal(st.records, 1 + 2 + 6 + 3 + 3); /* seg, b, a, c chunks, commits */
	assert_true(st.has_info);
	assert_int_equal(st.info.version, SPOOL_SEG_VERSION);
	assert_int_equal(st.info.shard, 3);
	assert_int_equal(st.info.seq, 0x1234);
	expect_body(f, &a);
	expect_body(f, &b);
	expect_body(f, &c);
	tmsg_free(&a);
	tmsg_free(&b);
	tmsg_free(&c);
}

/* kill -9 mid-append: every prefix of the last record is a torn tail. */
static void torn_tail_every_byte(void **state)
{
	struct fx *f = *state;
	struct tmsg a, b, c;
	struct collect col;
	struct spool_scan_stats st;

	tmsg_init(&a, 1, 300);
	tmsg_init(&b, 2, 50);
	tmsg_init(&c, 3, 90);
	put_segment(f);
	put_chunk(f, &a, 100);
	put_chunk(f, &b, b.wire_len);
	put_chunk(f, &c, c.wire_len);
	put_all_chunks(f, &a, 100);
	put_commit(f, &a);
	put_commit(f, &b);
	uint64_t last = put_commit(f, &c), end = f->off;
	uint8_t *image = malloc(end);
	assert_non_null(image);
	assert_int_equal(pread(f->fd, image, end, 0), (ssize_t)end);

	for (uint64_t t = last; t < end; t++) {
		pwrite_all(f->fd, image, end, 0);
		assert_int_equal(ftruncate(f->fd, (off_t)t), 0);
		assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
		assert_int_equal(st.valid_end, last);
		assert_int_equal(st.file_len, t);
		assert_int_equal(col.n, 2);
		expect_found(&col, 0, &a, true);
		expect_found(&col, 1, &b, true);
	}
	pwrite_all(f->fd, image, end, 0);
	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(st.valid_end, end);
	assert_int_equal(col.n, 3);
	expect_found(&col, 2, &c, true);
	expect_body(f, &a);
	free(image);
	tmsg_free(&a);
	tmsg_free(&b);
	tmsg_free(&c);
}

/* Writes complete out of order: B's reserved chunks never landed (sparse
 * zeros), yet A, reserved after them and committed, must be recovered. */
static void zero_hole_before_commit(void **state)
{
	struct fx *f = *state;
	struct tmsg a;
	struct collect col;
	struct spool_scan_stats st;

	tmsg_init(&a, 0xaa, 2000);
	put_segment(f);
	uint64_t hole1 = reserve(f, 1000); /* B's first chunk: never written */
	put_chunk(f, &a, 1200);
	uint64_t hole2 = reserve(f, 4000); /* B's second chunk, inside A's span */
	put_all_chunks(f, &a, 1200);
	put_commit(f, &a);
	assert_true(hole1 < a.first_off && hole2 < a.commit_off);

	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(col.n, 1);
	expect_found(&col, 0, &a, true);
	assert_int_equal(st.skipped, (spool_rec_size(1000) + spool_rec_size(4000)) / 8);
	assert_int_equal(st.valid_end, f->off);
	assert_int_equal(st.records, 4);
	expect_body(f, &a);
	tmsg_free(&a);
}

static void zeroed_chunk_fails_body(void **state)
{
	struct fx *f = *state;
	struct tmsg a, b;
	struct collect col;
	struct spool_scan_stats st;
	struct sink s;

	tmsg_init(&a, 10, 700);
	tmsg_init(&b, 11, 700);
	put_segment(f);
	put_chunk(f, &a, 400);
	uint64_t b1 = put_chunk(f, &b, 400);
	put_all_chunks(f, &a, 400);
	put_all_chunks(f, &b, 400);
	put_commit(f, &b);
	put_commit(f, &a);
	uint8_t *zeros = calloc(1, spool_rec_size(400));
	assert_non_null(zeros);
	pwrite_all(f->fd, zeros, spool_rec_size(400), b1);

	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(col.n, 2);
	expect_found(&col, 0, &b, false);
	expect_found(&col, 1, &a, true);
	assert_int_equal(st.bad_bodies, 1);
	assert_int_equal(st.valid_end, f->off);
	assert_int_equal(read_msg(f, &b, &b.env, &s), -EIO);
	free(s.p);
	expect_body(f, &a);
	free(zeros);
	tmsg_free(&a);
	tmsg_free(&b);
}

/* Plant a header made under a guessed key (zeros): well formed, magic and
 * all, but not the segment's. */
static void plant_fake_header(uint8_t *g, size_t at, uint32_t len)
{
	static const struct spool_key guess;
	struct spool_rec_hdr h;
	spool_rec_hdr_init(&h, &guess, SPOOL_REC_COMMIT, 0xbad, len, 0x0badf00du);
	memcpy(g + at, &h, sizeof h);
}

static void garbage_with_magic(void **state)
{
	struct fx *f = *state;
	struct tmsg a;
	struct collect col;
	struct spool_scan_stats st;
	enum { G = 4096 };
	uint8_t g[G];
	uint32_t x = 99, magic = SPOOL_REC_MAGIC;

	for (size_t i = 0; i < G; i++) {
		x = x * 1103515245u + 12345u;
		g[i] = (uint8_t)(x >> 16);
	}
	for (size_t i = 0; i < G; i += 8)
		memcpy(g + i, &magic, 4);
	plant_fake_header(g, 64, 16);
	/* Spans A's real records: must not swallow them. */
	plant_fake_header(g, 1024, G + 2000);
	/* Runs past the end of the file. */
	plant_fake_header(g, 2048, SPOOL_REC_PAYLOAD_MAX);
	tmsg_init(&a, 0xa, 1500);
	put_segment(f);
	pwrite_all(f->fd, g, G, reserve(f, G - 32));
	put_all_chunks(f, &a, 1000);
	put_commit(f, &a);

	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(st.records, 1 + 2 + 1);
	assert_int_equal(st.skipped, G / 8);
	assert_int_equal(col.n, 1);
	expect_found(&col, 0, &a, true);
	assert_int_equal(st.valid_end, f->off);
	tmsg_free(&a);
}

/* A valid COMMIT record larger than the scan buffer, straddling its edge:
 * framed and skipped correctly, counted as a bad envelope, not fatal. */
static void commit_bigger_than_buffer(void **state)
{
	struct fx *f = *state;
	struct tmsg a;
	struct collect col;
	struct spool_scan_stats st;
	uint32_t big_len = SPOOL_SCAN_BUF_SIZE + SPOOL_SCAN_BUF_SIZE / 2 + 5;
	uint8_t *big = malloc(big_len);
	assert_non_null(big);
	memset(big, 0x5a, big_len);
	big[0] = SPOOL_ENV_VERSION;

	tmsg_init(&a, 0xa, 100);
	put_segment(f);
	put_rec(f, SPOOL_REC_COMMIT, 77, big, big_len);
	put_all_chunks(f, &a, 64);
	put_commit(f, &a);

	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(st.records, 1 + 1 + 2 + 1);
	assert_int_equal(st.commits, 2);
	assert_int_equal(st.bad_envs, 1);
	assert_int_equal(st.skipped, 0);
	assert_int_equal(col.n, 1);
	expect_found(&col, 0, &a, true);
	assert_int_equal(st.valid_end, f->off);
	free(big);
	tmsg_free(&a);
}

/* A maximal chunk (16 MiB) and dozens of interleaved messages whose records
 * straddle every scan-buffer boundary. */
static void big_chunks_and_block_edges(void **state)
{
	struct fx *f = *state;
	enum { N = 30 };
	struct tmsg big, m[N];
	struct collect col;
	struct spool_scan_stats st;

	tmsg_init(&big, 0xb16, SPOOL_REC_PAYLOAD_MAX);
	put_segment(f);
	put_chunk(f, &big, SPOOL_REC_PAYLOAD_MAX);
	for (int i = 0; i < N; i++)
		tmsg_init(&m[i], 100 + (uint64_t)i, 90000 + (size_t)i * 1237);
	for (int round = 0; round < 12; round++)
		for (int i = 0; i < N; i++)
			if (m[i].sent < m[i].wire_len) {
				size_t left = m[i].wire_len - m[i].sent, step = 7919 + (size_t)i;
				put_chunk(f, &m[i], left < step ? left : step);
			}
	put_chunk(f, &big, 3);
	put_commit(f, &big);
	for (int i = N - 1; i >= 0; i--) {
		put_all_chunks(f, &m[i], 65536);
		put_commit(f, &m[i]);
	}

	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(col.n, N + 1);
	expect_found(&col, 0, &big, true);
	for (int i = 0; i < N; i++)
		expect_found(&col, 1 + i, &m[N - 1 - i], true);
	assert_int_equal(st.skipped, 0);
	assert_int_equal(st.valid_end, f->off);
	expect_body(f, &big);
	for (int i = 0; i < N; i++) {
		expect_body(f, &m[i]);
		tmsg_free(&m[i]);
	}
	tmsg_free(&big);
}

/* Headers and envelopes that straddle the edge of the first scan block, at
 * every aligned offset near it (no commit before the edge moves the block). */
static void records_straddle_block_edge(void **state)
{
	struct fx *f = *state;
	const uint64_t edge = SPOOL_SCAN_BUF_SIZE;
	struct collect col;
	struct spool_scan_stats st;

	for (uint64_t before = 8; before <= 320; before += 8) {
		struct tmsg a;
		assert_int_equal(ftruncate(f->fd, 0), 0);
		f->off = 0;
		put_segment(f);
		/* the second chunk's header (or later the commit) starts `before` short of the edge */
		uint32_t len1 = (uint32_t)(edge - before - f->off - sizeof(struct spool_rec_hdr));
		tmsg_init(&a, 0x5e, len1 + 200);
		put_chunk(f, &a, len1);
		assert_int_equal(f->off, edge - before);
		put_all_chunks(f, &a, 64);
		put_commit(f, &a);

		assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
		assert_int_equal(col.n, 1);
		expect_found(&col, 0, &a, true);
		assert_int_equal(st.skipped, 0);
		assert_int_equal(st.records, 1 + 1 + 4 + 1);
		assert_int_equal(st.valid_end, f->off);
		expect_body(f, &a);
		tmsg_free(&a);
	}
}

/* A chunk written twice (or a stray extra chunk) makes the body too long. */
static void extra_chunk_fails_body(void **state)
{
	struct fx *f = *state;
	struct tmsg a;
	struct collect col;
	struct spool_scan_stats st;
	struct sink s;

	tmsg_init(&a, 0xe, 500);
	put_segment(f);
	uint64_t first = put_chunk(f, &a, 200);
	a.sent = 0; /* the same 200 bytes again, then the rest */
	put_all_chunks(f, &a, 200);
	a.first_off = first;
	put_commit(f, &a);
	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(col.n, 1);
	assert_false(col.f[0].body_ok);
	assert_int_equal(st.bad_bodies, 1);
	assert_int_equal(read_msg(f, &a, &a.env, &s), -EIO);
	assert_true(s.len <= a.msg_len);
	free(s.p);
	tmsg_free(&a);
}

static void message_read_detects_damage(void **state)
{
	struct fx *f = *state;
	struct tmsg a;
	struct sink s;
	struct spool_env env;

	tmsg_init(&a, 0x5, 3000);
	put_segment(f);
	put_chunk(f, &a, 1000);
	uint64_t c2 = put_chunk(f, &a, 1000);
	put_all_chunks(f, &a, 1000);
	put_commit(f, &a);
	expect_body(f, &a);

	/* Envelope disagrees with intact chunks: bytes may flow, result is -EIO. */
	env = a.env;
	env.msg_crc ^= 1;
	assert_int_equal(read_msg(f, &a, &env, &s), -EIO);
	free(s.p);
	env = a.env;
	env.wire_len += 1;
	assert_int_equal(read_msg(f, &a, &env, &s), -EIO);
	free(s.p);
	env = a.env;
	env.wire_len -= 1;
	env.msg_len -= 1;
	assert_int_equal(read_msg(f, &a, &env, &s), -EIO);
	free(s.p);

	/* fn can stop the stream; its value comes back. */
	memset(&s, 0, sizeof s);
	s.stop_with = 42;
	assert_int_equal(spool_message_read(f->fd, &a.env, a.commit_off, on_body, &s), 42);
	assert_int_equal(s.calls, 1);
	free(s.p);

	/* One flipped bit in the middle chunk. */
	uint8_t byte;
	uint64_t at = c2 + sizeof(struct spool_rec_hdr) + 500;
	assert_int_equal(pread(f->fd, &byte, 1, (off_t)at), 1);
	byte ^= 0x10;
	pwrite_all(f->fd, &byte, 1, at);
	assert_int_equal(read_msg(f, &a, &a.env, &s), -EIO);
	/* only bytes of chunks that passed their own CRC were handed out */
	assert_true(s.len <= 1000 || memcmp(s.p + 1000, a.wire + 2000, s.len - 1000) == 0);
	free(s.p);

	struct collect col;
	struct spool_scan_stats st;
	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(col.n, 1);
	expect_found(&col, 0, &a, false);
	/* Its header still verifies: the extent is skipped whole, never
	 * searched for records. */
	assert_int_equal(st.skipped, 0);
	assert_int_equal(st.bad_records, 1);
	tmsg_free(&a);
}

/* Commits that are valid records but carry no usable envelope. */
static void bad_envelopes_are_counted(void **state)
{
	struct fx *f = *state;
	struct tmsg a, b;
	struct collect col;
	struct spool_scan_stats st;
	uint8_t junk[100];
	memset(junk, 0x33, sizeof junk);

	tmsg_init(&a, 0xa, 10);
	tmsg_init(&b, 0xb, 10);
	put_segment(f);
	put_rec(f, SPOOL_REC_COMMIT, 0x77, junk, sizeof junk);
	put_all_chunks(f, &b, 100);
	put_commit(f, &b);
	/* Re-file b's envelope under another id in the header. */
	struct spool_rec_hdr h;
	uint8_t env[512];
	assert_int_equal(pread(f->fd, &h, sizeof h, (off_t)b.commit_off), sizeof h);
	assert_true(h.len <= sizeof env);
	assert_int_equal(pread(f->fd, env, h.len, (off_t)(b.commit_off + sizeof h)), h.len);
	put_rec(f, SPOOL_REC_COMMIT, 0xbb, env, h.len);
	put_all_chunks(f, &a, 100);
	put_commit(f, &a);

	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(st.commits, 4);
	assert_int_equal(st.bad_envs, 2);
	assert_int_equal(col.n, 2);
	expect_found(&col, 0, &b, true);
	expect_found(&col, 1, &a, true);
	tmsg_free(&a);
	tmsg_free(&b);
}

static void stop_limit_and_no_verify(void **state)
{
	struct fx *f = *state;
	struct tmsg a, b;
	struct collect col;
	struct spool_scan_stats st;

	tmsg_init(&a, 0xa, 100);
	tmsg_init(&b, 0xb, 100);
	put_segment(f);
	uint64_t b1 = put_chunk(f, &b, 50);
	put_all_chunks(f, &a, 1000);
	put_commit(f, &a);
	uint64_t after_a = f->off;
	put_all_chunks(f, &b, 1000);
	put_commit(f, &b);
	uint64_t end = f->off;

	/* fn's non-zero stops the scan; stats stop at that commit */
	memset(&col, 0, sizeof col);
	col.stop_with = 7;
	assert_int_equal(spool_segment_scan(f->fd, UINT64_MAX, true, on_msg, &col, &st), 7);
	assert_int_equal(col.n, 1);
	assert_int_equal(st.valid_end, after_a);

	/* limit acts like a shorter file, aligned or not */
	const uint64_t limits[] = {after_a, after_a + 5, end - 1};
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(scan(f, limits[i], &col, &st), 0);
		assert_int_equal(col.n, 1);
		expect_found(&col, 0, &a, true);
		assert_int_equal(st.valid_end, i < 2 ? after_a : b.commit_off);
		assert_int_equal(st.file_len, end);
	}
	assert_int_equal(scan(f, 0, &col, &st), 0);
	assert_int_equal(st.records, 0);
	assert_int_equal(st.valid_end, 0);
	assert_false(st.has_info);

	/* without verification nothing claims a good body, nothing counts as bad */
	uint8_t zeros[64] = {0};
	pwrite_all(f->fd, zeros, sizeof zeros, b1);
	memset(&col, 0, sizeof col);
	assert_int_equal(spool_segment_scan(f->fd, UINT64_MAX, false, on_msg, &col, &st), 0);
	assert_int_equal(col.n, 2);
	expect_found(&col, 0, &a, false);
	expect_found(&col, 1, &b, false);
	assert_int_equal(st.bad_bodies, 0);
	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	expect_found(&col, 0, &a, true);
	expect_found(&col, 1, &b, false);
	assert_int_equal(st.bad_bodies, 1);
	tmsg_free(&a);
	tmsg_free(&b);
}

static void empty_and_headless_files(void **state)
{
	struct fx *f = *state;
	struct tmsg a;
	struct collect col;
	struct spool_scan_stats st;

	memset(&st, 0xff, sizeof st);
	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(st.file_len, 0);
	assert_int_equal(st.valid_end, 0);
	assert_int_equal(st.records + st.skipped + st.commits, 0);
	assert_false(st.has_info);

	/* No head first: no key, so nothing in the file is trusted (it was
	 * never synced: the head is written and synced before any record). */
	tmsg_init(&a, 0xa, 10);
	f->off = sizeof(struct spool_seg_head);
	put_all_chunks(f, &a, 100);
	put_commit(f, &a);
	put_segment_at(f);
	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_false(st.has_info);
	assert_int_equal(col.n, 0);
	assert_int_equal(st.records, 0);
	assert_int_equal(st.valid_end, 0);
	/* A head of format version 1 (unkeyed CRCs) is refused, not ignored. */
	uint8_t v1[48] = {0};
	uint32_t magic = SPOOL_REC_MAGIC, len = 16, one = 1, crc;
	memcpy(v1, &magic, 4);
	v1[4] = SPOOL_REC_SEGMENT;
	memcpy(v1 + 8, &len, 4);
	memcpy(v1 + 32, &one, 4);
	crc = spool_crc32c(0, v1, 28);
	memcpy(v1 + 28, &crc, 4);
	pwrite_all(f->fd, v1, sizeof v1, 0);
	assert_int_equal(scan(f, UINT64_MAX, &col, &st), -EPROTO);
	assert_int_equal(col.n, 0);
	assert_int_equal(ftruncate(f->fd, sizeof v1), 0);
	assert_int_equal(scan(f, UINT64_MAX, &col, &st), -EPROTO);
	tmsg_free(&a);
}

/* Write a header at off over the len payload bytes already in the file. */
static void hdr_over(int fd, uint64_t off, enum spool_rec_type type, uint64_t id, uint32_t len)
{
	struct spool_rec_hdr h;
	uint8_t *p = malloc(len ? len : 1);

	assert_non_null(p);
	assert_int_equal(pread(fd, p, len, (off_t)(off + sizeof h)), (ssize_t)len);
	spool_rec_hdr_init(&h, &cur_key, type, id, len, spool_crc32c(0, p, len));
	pwrite_all(fd, &h, sizeof h, off);
	free(p);
}

/* A record inside another's payload whose own payload runs over the COMMIT:
 * the scanner met it walking the chunks from first_chunk_off and jumped past
 * the commit, while spool_message_read (which reads nothing at or past
 * commit_off) resynchronised inside it; body_ok and the reader disagreed
 * both ways.  Found by tests/fuzz/fuzz_record.c.  The writer never makes
 * such records (they need the key); the two walkers must agree anyway: a
 * verified record over the COMMIT breaks the walk for both. */
static void chunk_walk_stops_at_commit(void **state)
{
	static const uint8_t tail[8];
	struct fx *f = *state;
	struct tmsg a;
	struct collect col;
	struct spool_scan_stats st;
	struct sink s;

	/* Q { R.hdr, K } C, R's payload = K C tail: K is A's only chunk. */
	tmsg_init(&a, 0xa, 13);
	put_segment(f);
	uint64_t q = reserve(f, 0), r = reserve(f, 0);
	put_chunk(f, &a, a.wire_len);
	a.first_off = r;
	uint64_t c = put_commit(f, &a);
	pwrite_all(f->fd, tail, sizeof tail, f->off);
	hdr_over(f->fd, r, SPOOL_REC_CHUNK, 0x99, (uint32_t)(f->off + sizeof tail - r - 32));
	hdr_over(f->fd, q, SPOOL_REC_CHUNK, 0x51, (uint32_t)(c - q - 32));
	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(col.n, 1);
	/* Q's extent covers K: the walk never looks inside it. */
	expect_found(&col, 0, &a, false);
	assert_int_equal(read_msg(f, &a, &a.env, &s), -EIO);
	free(s.p);

	/* Q { K1, R.hdr, K2 } C, R's payload = K2 C tail: K2 is one chunk too many. */
	assert_int_equal(ftruncate(f->fd, 0), 0);
	f->off = 0;
	a.sent = 0;
	put_segment(f);
	q = reserve(f, 0);
	put_chunk(f, &a, a.wire_len);
	r = reserve(f, 0);
	rec_write(f->fd, reserve(f, 8), SPOOL_REC_CHUNK, a.id, "12345678", 8);
	c = put_commit(f, &a);
	pwrite_all(f->fd, tail, sizeof tail, f->off);
	hdr_over(f->fd, r, SPOOL_REC_CHUNK, 0x99, (uint32_t)(f->off + sizeof tail - r - 32));
	hdr_over(f->fd, q, SPOOL_REC_CHUNK, 0x51, (uint32_t)(c - q - 32));
	assert_int_equal(scan(f, UINT64_MAX, &col, &st), 0);
	assert_int_equal(col.n, 1);
	expect_found(&col, 0, &a, false);
	assert_int_equal(read_msg(f, &a, &a.env, &s), -EIO);
	free(s.p);
	tmsg_free(&a);
}

/* ---- forged records in a client's body ------------------------------------ */

/* A version-1 record (unkeyed CRC32C framing): what an attacker who read
 * the old record.h would write. */
static size_t forge_v1(uint8_t *out, enum spool_rec_type type, uint64_t id, const void *p,
		       uint32_t len)
{
	uint32_t magic = SPOOL_REC_MAGIC, crc = spool_crc32c(0, p, len), zero = 0;

	memset(out, 0, spool_rec_size(len));
	memcpy(out, &magic, 4);
	out[4] = (uint8_t)type;
	memcpy(out + 8, &len, 4);
	memcpy(out + 12, &crc, 4);
	memcpy(out + 16, &id, 8);
	memcpy(out + 24, &zero, 4);
	crc = spool_crc32c(0, out, 28);
	memcpy(out + 28, &crc, 4);
	if (len) /* p is NULL for DONE: memcpy(dst, NULL, 0) is undefined */
		memcpy(out + 32, p, len);
	return spool_rec_size(len);
}

/* The same records in the current framing under a guessed key. */
static size_t forge_v2(uint8_t *out, const struct spool_key *k, enum spool_rec_type type,
		       uint64_t id, const void *p, uint32_t len)
{
	struct spool_rec_hdr h;

	memset(out, 0, spool_rec_size(len));
	spool_rec_hdr_init(&h, k, type, id, len, spool_crc32c(0, p, len));
	memcpy(out, &h, sizeof h);
	if (len)
		memcpy(out + sizeof h, p, len);
	return spool_rec_size(len);
}

#define VICTIM 0x1111u
#define FORGED 0xf0f0u
#define OTHER  0x2222u

/* A body made of records: DONE for the victim (would delete acknowledged
 * mail) and CHUNK+COMMIT of a message to a recipient the attacker picks
 * (would skip relay policy), in both framings, 8-aligned so any resync
 * lands on them. */
static size_t forged_body(uint8_t *out, size_t cap)
{
	static const struct spool_key zero;
	const uint8_t bodies[] = "Subject: forged\r\n\r\nhi\r\n.\r\n";
	uint32_t blen = sizeof bodies - 1;
	char rcpt[] = "victim@elsewhere.example";
	struct spool_rcpt r = {.addr = {rcpt, (uint32_t)strlen(rcpt)}};
	uint8_t env[512];
	size_t n = 0;

	for (int v = 0; v < 2 && n + 2048 <= cap; v++) {
		uint64_t chunk_off = 0; /* the attacker cannot know it; any will do */
		struct spool_env e = {.id = FORGED,
				      .msg_len = blen - 3,
				      .wire_len = blen,
				      .msg_crc = spool_crc32c(0, bodies, blen),
				      .first_chunk_off = chunk_off,
				      .flags = SPOOL_ENV_STUFFED,
				      .mail_from = {"from@example.org", 16},
				      .rcpt_count = 1,
				      .rcpts = &r};
		size_t elen = spool_env_encode(&e, env, sizeof env);
		assert_true(elen > 0);
		n += v ? forge_v2(out + n, &zero, SPOOL_REC_DONE, VICTIM, NULL, 0)
		       : forge_v1(out + n, SPOOL_REC_DONE, VICTIM, NULL, 0);
		n += v ? forge_v2(out + n, &zero, SPOOL_REC_CHUNK, FORGED, bodies, blen)
		       : forge_v1(out + n, SPOOL_REC_CHUNK, FORGED, bodies, blen);
		n += v ? forge_v2(out + n, &zero, SPOOL_REC_COMMIT, FORGED, env, (uint32_t)elen)
		       : forge_v1(out + n, SPOOL_REC_COMMIT, FORGED, env, (uint32_t)elen);
	}
	return n;
}

struct seen {
	int done_victim, done_other, commits_forged, commits_victim, commits_bad_off;
	const uint64_t *commit_offs;
	int ncommit;
};

static int seen_commit(void *ctx, const struct spool_scan_msg *msg)
{
	struct seen *s = ctx;
	bool known = false;

	for (int i = 0; i < s->ncommit; i++)
		known |= msg->commit_off == s->commit_offs[i];
	s->commits_bad_off += !known;
	s->commits_forged += msg->env.id == FORGED;
	s->commits_victim += msg->env.id == VICTIM && msg->body_ok;
	return 0;
}

static int seen_state(void *ctx, const struct spool_rec_hdr *h, const uint8_t *p)
{
	struct seen *s = ctx;

	(void)p;
	s->done_victim += h->type == SPOOL_REC_DONE && h->msg_id == VICTIM;
	s->done_other += h->type == SPOOL_REC_DONE && h->msg_id == OTHER;
	return 0;
}

static struct seen scan_seen(struct fx *f, const uint64_t *offs, int n)
{
	struct seen s = {.commit_offs = offs, .ncommit = n};
	struct spool_scan_stats st;

	assert_int_equal(
	    spool_segment_scan_states(f->fd, UINT64_MAX, true, seen_commit, seen_state, &s, &st),
	    0);
	return s;
}

/* The attack: a victim's message is acknowledged; the attacker's body is
 * records.  Whatever happens to the file afterwards -- cut at any offset (a
 * torn tail), the attacker's chunk header lost (a hole before later valid
 * records), any byte flipped -- the scan yields only records that were
 * written as records: never the forged DONE, never the forged message. */
static void forged_body_never_loaded(void **state)
{
	struct fx *f = *state;
	struct tmsg victim, att;
	uint8_t body[4096];
	size_t blen = forged_body(body, sizeof body);
	uint64_t offs[2];

	tmsg_init(&victim, VICTIM, 300);
	put_segment(f);
	put_all_chunks(f, &victim, 4096);
	offs[0] = put_commit(f, &victim);
	att = (struct tmsg){.id = 0xa77, .msg_len = blen, .wire_len = blen + 3};
	att.wire = malloc(att.wire_len);
	assert_non_null(att.wire);
	memcpy(att.wire, body, blen);
	memcpy(att.wire + blen, ".\r\n", 3);
	uint64_t att_chunk = put_chunk(f, &att, att.wire_len);
	offs[1] = put_commit(f, &att);
	put_rec(f, SPOOL_REC_DONE, OTHER, NULL, 0); /* a real state record after it */
	uint64_t end = f->off;
	uint8_t *image = malloc(end);
	assert_non_null(image);
	assert_int_equal(pread(f->fd, image, end, 0), (ssize_t)end);

	struct seen s = scan_seen(f, offs, 2);
	assert_int_equal(s.commits_victim, 1);
	assert_int_equal(s.done_other, 1);
	assert_int_equal(s.done_victim + s.commits_forged + s.commits_bad_off, 0);

	/* The attacker's chunk header lost; everything after it intact. */
	uint8_t zeros[32] = {0};
	pwrite_all(f->fd, zeros, sizeof zeros, att_chunk);
	s = scan_seen(f, offs, 2);
	assert_int_equal(s.commits_victim, 1);
	assert_int_equal(s.done_other, 1);
	assert_int_equal(s.done_victim + s.commits_forged + s.commits_bad_off, 0);

	/* Cut at every offset, with and without the chunk header. */
	for (int hole = 0; hole < 2; hole++)
		for (uint64_t t = 0; t <= end; t++) {
			pwrite_all(f->fd, image, end, 0);
			if (hole)
				pwrite_all(f->fd, zeros, sizeof zeros, att_chunk);
			assert_int_equal(ftruncate(f->fd, (off_t)t), 0);
			s = scan_seen(f, offs, 2);
			assert_int_equal(s.done_victim + s.commits_forged + s.commits_bad_off, 0);
			assert_int_equal(s.commits_victim, t >= att_chunk ? 1 : 0);
		}
	/* Any one byte flipped. */
	for (uint64_t at = 0; at < end; at++) {
		pwrite_all(f->fd, image, end, 0);
		uint8_t b = image[at] ^ 0x01;
		pwrite_all(f->fd, &b, 1, at);
		s = scan_seen(f, offs, 2);
		assert_int_equal(s.done_victim + s.commits_forged + s.commits_bad_off, 0);
	}
	free(image);
	tmsg_free(&victim);
	tmsg_free(&att);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(interleaved_three_messages, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(torn_tail_every_byte, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(zero_hole_before_commit, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(zeroed_chunk_fails_body, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(garbage_with_magic, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(commit_bigger_than_buffer, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(big_chunks_and_block_edges, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(records_straddle_block_edge, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(extra_chunk_fails_body, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(message_read_detects_damage, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(bad_envelopes_are_counted, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(stop_limit_and_no_verify, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(empty_and_headless_files, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(chunk_walk_stops_at_commit, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(forged_body_never_loaded, fx_setup, fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
