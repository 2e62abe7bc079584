/*
 * libFuzzer driver for the spool on-disk format (queue/record.c).  The input
 * is a segment image; seeds come from make_record_seeds.c.
 *
 * Envelope codec: the whole input and every committed envelope the scanner
 * reports go through spool_env_decode; a decoded envelope must re-encode to
 * exactly its input bytes (decode accepts only the canonical form), decode
 * again to the same fields, refuse a buffer one byte short, and hand out
 * every recipient inside the recipient data and refuse index rcpt_count.
 *
 * Scanner: the image is written to a memfd and spool_segment_scan runs over
 * it with verify_bodies true and false, with a data-derived limit below the
 * file length, and with a data-derived callback stopping the scan.  A plain
 * in-memory oracle (software CRC, one pass per rule in record.h) predicts
 * valid_end, the record, skip and commit counts, the segment info and every
 * callback: its offset and envelope and whether the body verifies.  For each
 * reported commit spool_message_read must succeed exactly when the body
 * verifies and then return the first msg_len bytes of the message's chunks.
 * A message's chunks are the records wholly before its COMMIT: the oracle
 * looks for them in [first_chunk_off, commit_off) as spool_message_read
 * does, and the scanner's body_ok must agree with it.
 *
 * Random mutation almost never keeps a header or payload CRC right, so a
 * custom mutator repairs the CRCs of records it finds (most of the time):
 * the fuzzer then explores structure rather than the CRC check alone.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "queue/record.h"

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);      \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* Body walks are quadratic in the worst case; the bound keeps every
 * execution in the millisecond range.  The scanner's 1 MiB window never
 * refills at these sizes: record_recovery.c's block-edge tests cover that. */
#define INPUT_MAX   65536
#define HDR_LEN	    sizeof(struct spool_rec_hdr)
#define COMMITS_MAX (INPUT_MAX / HDR_LEN + 1)
#define SCAN_STOP   0x5eed /* callback return that stops a scan */

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

/* ---- oracle ---------------------------------------------------------------- */

/* Valid record at off in d[0..end): the rules of record.h, by the book. */
static bool orc_rec(const uint8_t *d, uint64_t end, uint64_t off, struct spool_rec_hdr *h)
{
	if (off > end || end - off < HDR_LEN)
		return false;
	memcpy(h, d + off, HDR_LEN);
	if (h->magic != SPOOL_REC_MAGIC ||
	    h->hdr_crc != spool_crc32c_sw(0, h, offsetof(struct spool_rec_hdr, hdr_crc)))
		return false;
	if (h->type < SPOOL_REC_SEGMENT || h->type > SPOOL_REC_DONE ||
	    h->len > SPOOL_REC_PAYLOAD_MAX || spool_rec_size(h->len) > end - off)
		return false;
	return spool_crc32c_sw(0, d + off + HDR_LEN, h->len) == h->pay_crc;
}

/* Whether env's body verifies; its first msg_len bytes go to out. */
static bool orc_body(const uint8_t *d, const struct spool_env *env, uint64_t commit_off,
		     uint8_t *out)
{
	uint64_t pos = env->first_chunk_off, total = 0;
	uint32_t crc = 0;

	if (pos % SPOOL_REC_ALIGN || pos > commit_off)
		return env->wire_len == 0 && env->msg_crc == 0;
	while (pos < commit_off) {
		struct spool_rec_hdr h;
		if (!orc_rec(d, commit_off, pos, &h)) {
			pos += SPOOL_REC_ALIGN;
			continue;
		}
		if (h.type == SPOOL_REC_CHUNK && h.msg_id == env->id) {
			if (h.len > env->wire_len - total)
				return false;
			if (total < env->msg_len) {
				uint64_t give = env->msg_len - total;
				memcpy(out + total, d + pos + HDR_LEN, give < h.len ? give : h.len);
			}
			crc = spool_crc32c_sw(crc, d + pos + HDR_LEN, h.len);
			total += h.len;
		}
		pos += spool_rec_size(h.len);
	}
	return total == env->wire_len && crc == env->msg_crc;
}

struct orc_msg {
	uint64_t off;	     /* of the COMMIT record */
	uint64_t end;	     /* of the COMMIT record */
	uint64_t commits;    /* stats.commits once it is reported */
	uint64_t records;    /* stats.records once it is reported */
	uint64_t bad_bodies; /* stats.bad_bodies once it is reported */
	bool body_ok;
};

struct orc_scan {
	struct spool_scan_stats st; /* bad_bodies as with verify_bodies */
	uint32_t n;
	struct orc_msg m[COMMITS_MAX];
};

static void orc_commit(const uint8_t *d, uint64_t off, const struct spool_rec_hdr *h,
		       struct orc_scan *o, uint8_t *body)
{
	struct spool_env env;

	o->st.commits++;
	if (spool_env_decode(d + off + HDR_LEN, h->len, &env) != 0 || env.id != h->msg_id) {
		o->st.bad_envs++;
		return;
	}
	CHECK(o->n < COMMITS_MAX);
	struct orc_msg *m = &o->m[o->n++];
	m->off = off;
	m->end = off + spool_rec_size(h->len);
	m->body_ok = orc_body(d, &env, off, body);
	o->st.bad_bodies += !m->body_ok;
	m->commits = o->st.commits;
	m->records = o->st.records;
	m->bad_bodies = o->st.bad_bodies;
}

static void orc_scan(const uint8_t *d, uint64_t end, struct orc_scan *o, uint8_t *body)
{
	uint64_t pos = 0;

	o->st = (struct spool_scan_stats){0};
	o->n = 0;
	while (end - pos >= HDR_LEN) {
		struct spool_rec_hdr h;
		if (!orc_rec(d, end, pos, &h)) {
			o->st.skipped++;
			pos += SPOOL_REC_ALIGN;
			continue;
		}
		o->st.records++;
		if (h.type == SPOOL_REC_SEGMENT && pos == 0 && h.len == sizeof o->st.info) {
			memcpy(&o->st.info, d + HDR_LEN, sizeof o->st.info);
			o->st.has_info = true;
		}
		if (h.type == SPOOL_REC_COMMIT)
			orc_commit(d, pos, &h, o, body);
		pos += spool_rec_size(h.len);
		o->st.valid_end = pos;
	}
}

/* ---- envelope checks --------------------------------------------------------- */

static bool inside(const void *p, size_t n, const void *base, size_t len)
{
	uintptr_t a = (uintptr_t)p, b = (uintptr_t)base;
	return a >= b && a - b <= len && n <= len - (a - b);
}

/* Offset of p from base, as an integer: a and b may live in different
 * buffers holding the same bytes. */
static uintptr_t rel(const void *p, const void *base)
{
	return (uintptr_t)p - (uintptr_t)base;
}

/* All strings and recipients of e lie in [base, base + len): e was decoded
 * from there. */
static void env_in_bounds(const struct spool_env *e, const uint8_t *base, size_t len)
{
	const struct spool_str *s[] = {&e->listener,  &e->client_addr, &e->helo,
				       &e->mail_from, &e->envid,       &e->auth_user};
	struct spool_rcpt r;

	CHECK(e->msg_len <= e->wire_len && e->rcpts == NULL);
	for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
		CHECK(s[i]->ptr != NULL && inside(s[i]->ptr, s[i]->len, base, len));
	CHECK(inside(e->rcpt_data, e->rcpt_data_len, base, len));
	CHECK((uint64_t)e->rcpt_count * 9 <= e->rcpt_data_len);
	for (uint32_t i = 0; i < e->rcpt_count; i++) {
		CHECK(spool_env_rcpt(e, i, &r) == 0);
		CHECK(inside(r.addr.ptr, r.addr.len, e->rcpt_data, e->rcpt_data_len));
		CHECK(inside(r.orcpt.ptr, r.orcpt.len, e->rcpt_data, e->rcpt_data_len));
	}
	CHECK(spool_env_rcpt(e, e->rcpt_count, &r) == -EINVAL);
}

static void str_same(struct spool_str a, const void *abase, struct spool_str b, const void *bbase)
{
	CHECK(a.len == b.len && rel(a.ptr, abase) == rel(b.ptr, bbase));
	CHECK(memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* a and b decode the same bytes (a's at abase, b's at bbase): same fields,
 * same layout, same recipients. */
static void env_same(const struct spool_env *a, const void *abase, const struct spool_env *b,
		     const void *bbase)
{
	CHECK(a->id == b->id && a->arrival_s == b->arrival_s && a->msg_len == b->msg_len);
	CHECK(a->wire_len == b->wire_len && a->msg_crc == b->msg_crc);
	CHECK(a->first_chunk_off == b->first_chunk_off && a->flags == b->flags);
	CHECK(a->body_type == b->body_type && a->ret == b->ret);
	CHECK(a->size_declared == b->size_declared && a->rcpt_count == b->rcpt_count);
	str_same(a->listener, abase, b->listener, bbase);
	str_same(a->client_addr, abase, b->client_addr, bbase);
	str_same(a->helo, abase, b->helo, bbase);
	str_same(a->mail_from, abase, b->mail_from, bbase);
	str_same(a->envid, abase, b->envid, bbase);
	str_same(a->auth_user, abase, b->auth_user, bbase);
	CHECK(a->rcpt_data_len == b->rcpt_data_len);
	CHECK(rel(a->rcpt_data, abase) == rel(b->rcpt_data, bbase));
	for (uint32_t i = 0; i < a->rcpt_count; i++) {
		struct spool_rcpt ra, rb;
		CHECK(spool_env_rcpt(a, i, &ra) == 0 && spool_env_rcpt(b, i, &rb) == 0);
		str_same(ra.addr, abase, rb.addr, bbase);
		str_same(ra.orcpt, abase, rb.orcpt, bbase);
		CHECK(ra.notify == rb.notify);
	}
}

/* e was decoded from a copy of p[0..n) at ebase (or from p itself):
 * re-encoding gives back exactly those bytes. */
static void env_round_trip(const struct spool_env *e, const uint8_t *ebase, const uint8_t *p,
			   size_t n)
{
	static uint8_t out[SPOOL_ENV_MAX];
	static struct spool_rcpt rcpts[SPOOL_ENV_MAX / 9];
	struct spool_env copy = *e, again;

	CHECK(n >= 64 && n <= SPOOL_ENV_MAX && e->rcpt_count <= SPOOL_ENV_MAX / 9);
	env_in_bounds(e, ebase, n);
	for (uint32_t i = 0; i < e->rcpt_count; i++)
		CHECK(spool_env_rcpt(e, i, &rcpts[i]) == 0);
	copy.rcpts = rcpts;
	CHECK(spool_env_encode(&copy, out, sizeof out) == n);
	CHECK(memcmp(out, p, n) == 0);
	CHECK(spool_env_encode(&copy, out, n - 1) == 0);
	CHECK(spool_env_encode(&copy, out, n) == n);
	CHECK(spool_env_decode(out, n, &again) == 0);
	env_same(&again, out, e, ebase);
	CHECK(spool_env_decode(p, n - 1, &again) == -EINVAL);
}

/* ---- scanner checks ---------------------------------------------------------- */

struct sink {
	uint8_t *buf; /* INPUT_MAX: a body is made of input bytes */
	uint64_t len, want;
};

static int on_body(void *ctx, const char *p, size_t n)
{
	struct sink *s = ctx;
	CHECK(n > 0 && n <= s->want - s->len);
	memcpy(s->buf + s->len, p, n);
	s->len += n;
	return 0;
}

struct run {
	const uint8_t *data;
	int fd;
	uint64_t end; /* the scan's effective limit */
	bool verify;
	bool read;	  /* read every reported body back (each read costs a 1 MiB window) */
	uint32_t stop_at; /* stop the scan at this callback (1-based); 0: never */
	uint32_t n;	  /* callbacks so far */
	const struct orc_scan *o;
	uint8_t *body, *got; /* INPUT_MAX each */
};

/* Everything a callback can be held to: where the commit is, that the
 * envelope is the one on disk, that the reader agrees with body_ok. */
static int on_msg(void *ctx, const struct spool_scan_msg *msg)
{
	struct run *r = ctx;
	struct spool_rec_hdr h;
	struct spool_env mine;

	CHECK(r->n < r->o->n);
	const struct orc_msg *om = &r->o->m[r->n++];
	CHECK(msg->commit_off == om->off);
	CHECK(msg->body_ok == (r->verify && om->body_ok));

	memcpy(&h, r->data + om->off, HDR_LEN);
	CHECK(h.type == SPOOL_REC_COMMIT && msg->env.id == h.msg_id);
	CHECK(om->off + spool_rec_size(h.len) <= r->end);
	const uint8_t *pay = r->data + om->off + HDR_LEN;
	CHECK(spool_env_decode(pay, h.len, &mine) == 0);
	/* The scanner's copy: strings at the same offsets in a buffer of h.len. */
	const uint8_t *base = msg->env.rcpt_data - rel(mine.rcpt_data, pay);
	env_same(&msg->env, base, &mine, pay);
	env_round_trip(&msg->env, base, pay, h.len);

	if (!r->read)
		return r->n == r->stop_at ? SCAN_STOP : 0;
	struct sink s = {.buf = r->got, .want = msg->env.msg_len};
	int rc = spool_message_read(r->fd, &msg->env, msg->commit_off, on_body, &s);
	bool ok = orc_body(r->data, &mine, om->off, r->body);
	CHECK(rc == (ok ? 0 : -EIO));
	CHECK(!ok || (s.len == msg->env.msg_len && memcmp(s.buf, r->body, s.len) == 0));
	return r->n == r->stop_at ? SCAN_STOP : 0;
}

static void scan_check(struct run *r, uint64_t limit, uint64_t file_len)
{
	struct spool_scan_stats st;

	r->n = 0;
	int rc = spool_segment_scan(r->fd, limit, r->verify, on_msg, r, &st);
	const struct spool_scan_stats *want = &r->o->st;
	CHECK(st.file_len == file_len);
	CHECK(st.valid_end <= file_len && st.valid_end <= limit);
	CHECK(st.valid_end % SPOOL_REC_ALIGN == 0);
	if (r->stop_at) {
		CHECK(rc == SCAN_STOP && r->n == r->stop_at);
		/* "stats describe the file up to that commit" */
		const struct orc_msg *om = &r->o->m[r->n - 1];
		CHECK(st.valid_end == om->end && st.commits == om->commits);
		CHECK(st.records == om->records);
		CHECK(st.bad_bodies == (r->verify ? om->bad_bodies : 0));
		return;
	}
	CHECK(rc == 0 && r->n == r->o->n);
	CHECK(st.valid_end == want->valid_end && st.records == want->records);
	CHECK(st.skipped == want->skipped && st.commits == want->commits);
	CHECK(st.bad_envs == want->bad_envs);
	CHECK(st.bad_bodies == (r->verify ? want->bad_bodies : 0));
	CHECK(st.has_info == want->has_info);
	CHECK(!st.has_info || memcmp(&st.info, &want->info, sizeof st.info) == 0);
}

static int image_fd(const uint8_t *data, size_t size)
{
	static int fd = -1;

	if (fd < 0)
		fd = memfd_create("fuzz_record", MFD_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(ftruncate(fd, 0) == 0);
	for (size_t off = 0; off < size;) {
		ssize_t n = pwrite(fd, data + off, size - off, (off_t)off);
		CHECK(n > 0);
		off += (size_t)n;
	}
	return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct orc_scan o;
	static uint8_t body[INPUT_MAX], got[INPUT_MAX];
	struct spool_env env;

	if (size > INPUT_MAX)
		return -1;
	if (spool_env_decode(data, size, &env) == 0)
		env_round_trip(&env, data, data, size);

	struct run r = {
	    .data = data, .fd = image_fd(data, size), .o = &o, .body = body, .got = got};
	orc_scan(data, size, &o, body);
	r.end = size;
	r.verify = r.read = true;
	scan_check(&r, UINT64_MAX, size);
	r.verify = r.read = false;
	scan_check(&r, UINT64_MAX, size);

	/* A limit from the data, not from bytes the fuzzer must spend on it:
	 * seeds stay real segments and every mutation moves the limit. */
	uint32_t h = spool_crc32c(0, data, size);
	if (size > 0) {
		r.end = h % size;
		r.verify = h & 1;
		r.read = true; /* may report commits the whole-file scan did not */
		orc_scan(data, r.end, &o, body);
		scan_check(&r, r.end, size);
	}
	if (o.n > 0) {
		r.stop_at = (h >> 8) % o.n + 1;
		r.read = false;
		scan_check(&r, r.end, size);
	}
	return 0;
}

/* ---- mutator ------------------------------------------------------------------ */

/* Give every record-looking header in data a matching payload and header
 * CRC, from the last to the first so an outer record's payload CRC covers
 * its inner records as repaired.  One in eight is left alone. */
static void crc_repair(uint8_t *data, size_t size, unsigned seed)
{
	for (size_t i = size / SPOOL_REC_ALIGN + 1; i-- > 0;) {
		size_t off = i * SPOOL_REC_ALIGN;
		struct spool_rec_hdr h;
		seed = seed * 1103515245u + 12345u;
		if (size < off || size - off < HDR_LEN || (seed >> 16) % 8 == 0)
			continue;
		memcpy(&h, data + off, HDR_LEN);
		if (h.magic != SPOOL_REC_MAGIC || h.len > size - off - HDR_LEN)
			continue;
		h.pay_crc = spool_crc32c(0, data + off + HDR_LEN, h.len);
		h.hdr_crc = spool_crc32c(0, &h, offsetof(struct spool_rec_hdr, hdr_crc));
		memcpy(data + off, &h, HDR_LEN);
	}
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned seed)
{
	size = LLVMFuzzerMutate(data, size, max_size);
	/* A quarter of the time keep the mutation raw: torn and flipped records
	 * are the scanner's daily bread too. */
	if (seed % 4 != 0)
		crc_repair(data, size, seed);
	return size;
}
