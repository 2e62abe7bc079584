/*
 * libFuzzer driver for the spool on-disk format, version 2 (queue/record.c).
 * The input is a segment image: a 64-byte head carrying the segment's key
 * (whatever key the input's head holds: the fuzzer chooses it), then
 * records tagged with SipHash-2-4 under that key.  Seeds come from
 * make_record_seeds.c.
 *
 * Scanner contract, checked on what it yields whatever the oracle says:
 * every record handed to a callback has a header whose tag verifies under
 * the head's key and a payload whose CRC matches, lies wholly inside the
 * scanned part of the segment, after the head, and starts at or after the
 * end of the record yielded before it (records never overlap).  The image
 * is a memfd and the scan runs with verify_bodies true and false, with and
 * without a state callback, with a data-derived limit below the file
 * length (bytes past it must change nothing) and with a data-derived
 * callback stopping the scan.
 *
 * Oracle: a plain in-memory walk by the rules of record.h (software CRC;
 * the tag through spool_siphash, which record_codec holds to the paper's
 * vectors) predicts the return code (-EPROTO for an old head), every
 * statistic, every callback and whether each body verifies: a verified
 * header fixes its record's extent and nothing inside it is looked at,
 * even when its payload CRC fails; a verified header running past the end
 * ends the scan.  For each commit spool_message_read must succeed exactly
 * when the oracle's walk of [first_chunk_off, commit_off) verifies, and
 * then return the first msg_len bytes of the message's chunks.
 *
 * Decoders: the whole input, every committed envelope and every state
 * payload go through spool_env_decode / spool_state_decode from buffers of
 * exactly their size (ASan sees any read past them); what decodes must
 * re-encode to exactly its bytes and fail one byte short.  The input also
 * goes through spool_seg_head_parse, held to the oracle's head rule.
 *
 * Random mutation never keeps a tag right, so a custom mutator re-tags
 * (most of) the record-looking headers under the head's key -- a few under
 * a key one bit off, as a client's best guess -- and repairs payload CRCs,
 * envelope ids and body lengths and CRCs: the fuzzer then explores
 * structure, not the tag check alone.
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

#include "fuzz_common.h"
#include "queue/record.h"

/* Body walks are quadratic in the worst case; the bound keeps every
 * execution in the millisecond range.  The scanner's 1 MiB window never
 * refills at these sizes: record_recovery.c's block-edge tests cover that. */
#define INPUT_MAX	  65536
#define HDR_LEN		  sizeof(struct spool_rec_hdr)
#define HEAD_LEN	  sizeof(struct spool_seg_head)
#define TAG_LEN		  offsetof(struct spool_rec_hdr, mac) /* the bytes a tag covers */
#define YIELD_MAX	  (INPUT_MAX / HDR_LEN + 1)
#define SCAN_STOP	  0x5eed /* callback return that stops a scan */
#define ENV_ID_OFF	  8	 /* envelope field offsets (record.c's codec table) */
#define ENV_MSG_LEN_OFF	  24
#define ENV_WIRE_LEN_OFF  32
#define ENV_MSG_CRC_OFF	  56
#define ENV_STUFF_LEN_OFF 64 /* version 2 */
/* Re-encoded as version 3, an older envelope grows by stuff_len (8, from
 * version 1) and the empty prepend, quarantine and route strings (6, from
 * 1 and 2). */
#define ENV_GROWTH_MAX 14

static uint64_t load64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8); /* the format is little-endian, as is the host (record.c) */
	return v;
}

/* ---- oracle ---------------------------------------------------------------- */

/* The head rule of record.h on d[0..n): 0 (info filled), -EPROTO for a
 * well-formed head of another version or a version-1 head, else -EINVAL. */
static int orc_head(const uint8_t *d, size_t n, struct spool_seg_info *info)
{
	struct spool_seg_head hd;

	if (n >= HEAD_LEN) {
		memcpy(&hd, d, HEAD_LEN);
		if (hd.hdr.magic == SPOOL_REC_MAGIC && hd.hdr.type == SPOOL_REC_SEGMENT &&
		    hd.hdr.len == sizeof hd.info &&
		    hd.hdr.mac == spool_siphash(&hd.info.key, d, TAG_LEN) &&
		    hd.hdr.pay_crc == spool_crc32c_sw(0, d + HDR_LEN, sizeof hd.info)) {
			if (hd.info.version != SPOOL_SEG_VERSION)
				return -EPROTO;
			*info = hd.info;
			return 0;
		}
	}
	/* Version 1: CRC32C of 28 header bytes in the next 4, a 16-byte
	 * SEGMENT payload whose first word is 1. */
	uint32_t magic, len, crc, version;
	if (n < 48)
		return -EINVAL;
	memcpy(&magic, d, 4);
	memcpy(&len, d + 8, 4);
	memcpy(&crc, d + 28, 4);
	memcpy(&version, d + 32, 4);
	if (magic == SPOOL_REC_MAGIC && d[4] == SPOOL_REC_SEGMENT && len == 16 &&
	    crc == spool_crc32c_sw(0, d, 28) && version == 1)
		return -EPROTO;
	return -EINVAL;
}

/* A header at off in d[0..end) whose tag verifies under k, with a known
 * type and a bounded length (it may still run past end). */
static bool orc_hdr(const uint8_t *d, uint64_t end, uint64_t off, const struct spool_key *k,
		    struct spool_rec_hdr *h)
{
	if (off > end || end - off < HDR_LEN)
		return false;
	memcpy(h, d + off, HDR_LEN);
	return h->magic == SPOOL_REC_MAGIC && h->mac == spool_siphash(k, d + off, TAG_LEN) &&
	       h->type >= SPOOL_REC_SEGMENT && h->type <= SPOOL_REC_DONE &&
	       h->len <= SPOOL_REC_PAYLOAD_MAX;
}

static bool orc_pay_ok(const uint8_t *d, uint64_t off, const struct spool_rec_hdr *h)
{
	return spool_crc32c_sw(0, d + off + HDR_LEN, h->len) == h->pay_crc;
}

/* Whether env's body verifies, walking [first_chunk_off, commit_off) with
 * headers read from d[0..end); its first msg_len bytes go to out. */
static bool orc_body(const uint8_t *d, uint64_t end, const struct spool_key *k,
		     const struct spool_env *env, uint64_t commit_off, uint8_t *out)
{
	uint64_t pos = env->first_chunk_off, total = 0;
	uint32_t crc = 0;

	if (pos % SPOOL_REC_ALIGN || pos > commit_off || pos < HEAD_LEN)
		return env->wire_len == 0 && env->msg_crc == 0;
	while (pos < commit_off) {
		struct spool_rec_hdr h;
		if (!orc_hdr(d, end, pos, k, &h)) {
			pos += SPOOL_REC_ALIGN;
			continue;
		}
		if (spool_rec_size(h.len) > commit_off - pos)
			return false; /* chunks precede their commit */
		if (h.type == SPOOL_REC_CHUNK && h.msg_id == env->id) {
			if (!orc_pay_ok(d, pos, &h) || h.len > env->wire_len - total)
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

enum yield_kind { YIELD_COMMIT, YIELD_STATE };

/* One callback the scanner owes, and its statistics at that moment (what
 * a scan stopped there reports). */
struct orc_yield {
	enum yield_kind kind;
	uint64_t off, end; /* the record's extent */
	bool body_ok;	   /* commits, as with verify_bodies */
	struct spool_scan_stats st;
};

struct orc_scan {
	int rc;
	struct spool_key key;
	struct spool_scan_stats st; /* bad_bodies as with verify_bodies */
	uint32_t n;
	struct orc_yield y[YIELD_MAX];
};

static struct orc_yield *orc_yield(struct orc_scan *o, enum yield_kind kind, uint64_t off,
				   const struct spool_rec_hdr *h)
{
	CHECK(o->n < YIELD_MAX);
	struct orc_yield *y = &o->y[o->n++];
	*y = (struct orc_yield){.kind = kind, .off = off, .end = off + spool_rec_size(h->len)};
	return y;
}

static void orc_commit(const uint8_t *d, uint64_t end, uint64_t off, const struct spool_rec_hdr *h,
		       struct orc_scan *o, uint8_t *body)
{
	struct spool_env env;

	o->st.commits++;
	if (h->len > SPOOL_ENV_MAX || spool_env_decode(d + off + HDR_LEN, h->len, &env) != 0 ||
	    env.id != h->msg_id) {
		o->st.bad_envs++;
		return;
	}
	struct orc_yield *y = orc_yield(o, YIELD_COMMIT, off, h);
	y->body_ok = orc_body(d, end, &o->key, &env, off, body);
	o->st.bad_bodies += !y->body_ok;
	y->st = o->st;
}

static void orc_records(const uint8_t *d, uint64_t end, struct orc_scan *o, uint8_t *body)
{
	uint64_t pos = HEAD_LEN;

	while (end - pos >= HDR_LEN) {
		struct spool_rec_hdr h;
		if (!orc_hdr(d, end, pos, &o->key, &h)) {
			o->st.skipped++;
			pos += SPOOL_REC_ALIGN;
			continue;
		}
		if (spool_rec_size(h.len) > end - pos)
			return; /* a torn tail: nothing whole lies beyond it */
		if (!orc_pay_ok(d, pos, &h)) {
			o->st.bad_records++; /* never looked into */
			pos += spool_rec_size(h.len);
			continue;
		}
		o->st.records++;
		o->st.valid_end = pos + spool_rec_size(h.len);
		if (h.type == SPOOL_REC_COMMIT)
			orc_commit(d, end, pos, &h, o, body);
		if ((h.type == SPOOL_REC_RCPT_STATE || h.type == SPOOL_REC_DONE) &&
		    h.len <= SPOOL_STATE_MAX)
			orc_yield(o, YIELD_STATE, pos, &h)->st = o->st;
		pos += spool_rec_size(h.len);
	}
}

static void orc_scan(const uint8_t *d, uint64_t end, struct orc_scan *o, uint8_t *body)
{
	o->st = (struct spool_scan_stats){0};
	o->n = 0;
	o->rc = orc_head(d, end < HEAD_LEN ? end : HEAD_LEN, &o->st.info);
	if (o->rc != 0) {
		o->st.info = (struct spool_seg_info){0};
		o->rc = o->rc == -EPROTO ? -EPROTO : 0;
		return;
	}
	o->key = o->st.info.key;
	o->st.has_info = true;
	o->st.records = 1;
	o->st.valid_end = HEAD_LEN;
	orc_records(d, end, o, body);
}

/* ---- decoder checks ---------------------------------------------------------- */

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
	CHECK(a->stuff_len == b->stuff_len);
	CHECK(a->first_chunk_off == b->first_chunk_off && a->flags == b->flags);
	CHECK(a->body_type == b->body_type && a->ret == b->ret);
	CHECK(a->size_declared == b->size_declared && a->rcpt_count == b->rcpt_count);
	str_same(a->listener, abase, b->listener, bbase);
	str_same(a->client_addr, abase, b->client_addr, bbase);
	str_same(a->helo, abase, b->helo, bbase);
	str_same(a->mail_from, abase, b->mail_from, bbase);
	str_same(a->envid, abase, b->envid, bbase);
	str_same(a->auth_user, abase, b->auth_user, bbase);
	/* An older version has no prepend at all (no place in the payload). */
	if (a->prepend.ptr && b->prepend.ptr) {
		str_same(a->prepend, abase, b->prepend, bbase);
		str_same(a->quarantine, abase, b->quarantine, bbase);
		str_same(a->route, abase, b->route, bbase);
	} else {
		CHECK(a->prepend.len == 0 && b->prepend.len == 0);
		CHECK(a->quarantine.len == 0 && b->quarantine.len == 0);
		CHECK(a->route.len == 0 && b->route.len == 0);
	}
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

static void str_equal(struct spool_str a, struct spool_str b)
{
	CHECK(a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0));
}

/* a and b hold the same envelope, whatever their layouts. */
static void env_equal(const struct spool_env *a, const struct spool_env *b)
{
	CHECK(a->id == b->id && a->arrival_s == b->arrival_s && a->msg_len == b->msg_len);
	CHECK(a->wire_len == b->wire_len && a->msg_crc == b->msg_crc);
	CHECK(a->stuff_len == b->stuff_len);
	CHECK(a->first_chunk_off == b->first_chunk_off && a->flags == b->flags);
	CHECK(a->body_type == b->body_type && a->ret == b->ret);
	CHECK(a->size_declared == b->size_declared && a->rcpt_count == b->rcpt_count);
	str_equal(a->listener, b->listener);
	str_equal(a->client_addr, b->client_addr);
	str_equal(a->helo, b->helo);
	str_equal(a->mail_from, b->mail_from);
	str_equal(a->envid, b->envid);
	str_equal(a->auth_user, b->auth_user);
	str_equal(a->prepend, b->prepend);
	str_equal(a->quarantine, b->quarantine);
	str_equal(a->route, b->route);
	for (uint32_t i = 0; i < a->rcpt_count; i++) {
		struct spool_rcpt ra, rb;
		CHECK(spool_env_rcpt(a, i, &ra) == 0 && spool_env_rcpt(b, i, &rb) == 0);
		str_equal(ra.addr, rb.addr);
		str_equal(ra.orcpt, rb.orcpt);
		CHECK(ra.notify == rb.notify);
	}
}

/* An envelope of an older version p[0..n) re-encodes as the current one,
 * holding the same envelope (or not at all past the bound). */
static void env_upgrade(const struct spool_env *e, const struct spool_env *copy, size_t n)
{
	static uint8_t out[SPOOL_ENV_MAX];
	struct spool_env again;
	size_t m = spool_env_encode(copy, out, sizeof out);

	CHECK(e->prepend.len == 0 && e->quarantine.len == 0 && e->route.len == 0);
	if (m == 0) {
		CHECK(n + ENV_GROWTH_MAX > SPOOL_ENV_MAX);
		return;
	}
	CHECK(out[0] == SPOOL_ENV_VERSION && m > n && m <= n + ENV_GROWTH_MAX);
	CHECK(spool_env_decode(out, m, &again) == 0);
	env_equal(&again, e);
}

/* e was decoded from a copy of p[0..n) at ebase (or from p itself):
 * re-encoding gives back exactly those bytes (version 1: see above). */
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
	CHECK(spool_env_size(e) <= e->prepend.len + e->msg_len + 2);
	if (p[0] < SPOOL_ENV_VERSION) {
		if (p[0] == 1)
			CHECK(e->stuff_len == 0);
		env_upgrade(e, &copy, n);
		CHECK(spool_env_decode(p, n - 1, &again) == -EINVAL);
		return;
	}
	CHECK(spool_env_encode(&copy, out, sizeof out) == n);
	CHECK(memcmp(out, p, n) == 0);
	CHECK(spool_env_encode(&copy, out, n - 1) == 0);
	CHECK(spool_env_encode(&copy, out, n) == n);
	CHECK(spool_env_decode(out, n, &again) == 0);
	env_same(&again, out, e, ebase);
	CHECK(spool_env_decode(p, n - 1, &again) == -EINVAL);
}

/* p[0..n) is a heap block of exactly n bytes: a decoder that reads past it
 * trips ASan.  A state that decodes re-encodes to exactly those bytes. */
static void state_round_trip(const uint8_t *p, size_t n)
{
	static uint8_t out[SPOOL_STATE_MAX];
	struct spool_state st, again;

	if (n == 0 || spool_state_decode(p, n, &st) != 0)
		return;
	CHECK(st.rcpt_count <= SPOOL_STATE_RCPTS_MAX && st.error_len <= SPOOL_STATE_ERR_MAX);
	CHECK(inside(st.rcpt_state, st.rcpt_count, p, n) && inside(st.error, st.error_len, p, n));
	CHECK(spool_state_encode(&st, out, sizeof out) == n);
	CHECK(memcmp(out, p, n) == 0);
	CHECK(spool_state_encode(&st, out, n - 1) == 0);
	CHECK(spool_state_decode(p, n - 1, &again) == -EINVAL);
}

/* Decode bytes that live inside a larger buffer from an exact-size copy. */
static void state_round_trip_copy(const uint8_t *p, size_t n)
{
	uint8_t *copy = malloc(n ? n : 1);

	CHECK(copy != NULL);
	if (n)
		memcpy(copy, p, n);
	state_round_trip(copy, n);
	free(copy);
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
	bool states;	   /* scan with a state callback */
	bool read;	   /* read every reported body back (each read costs a 1 MiB window) */
	uint32_t stop_at;  /* stop the scan at this callback (1-based); 0: never */
	uint32_t n;	   /* callbacks so far */
	uint32_t next;	   /* the oracle's next yield */
	uint64_t last_end; /* end of the last record yielded */
	const struct orc_scan *o;
	uint8_t *body, *got; /* INPUT_MAX each */
};

/* The oracle's next yield the scanner owes this run. */
static const struct orc_yield *run_next(struct run *r, enum yield_kind kind)
{
	while (!r->states && r->next < r->o->n && r->o->y[r->next].kind == YIELD_STATE)
		r->next++;
	CHECK(r->next < r->o->n);
	const struct orc_yield *y = &r->o->y[r->next++];
	CHECK(y->kind == kind);
	r->n++;
	return y;
}

/* The contract on one yielded record, whatever the oracle says: its tag
 * verifies under the head's key and its payload CRC matches, and it lies
 * after the head, inside the scanned bytes, after the last one yielded. */
static void yield_contract(struct run *r, uint64_t off, const struct spool_rec_hdr *h,
			   const uint8_t *payload)
{
	const struct spool_key *k = &r->o->key;

	CHECK(h->magic == SPOOL_REC_MAGIC && h->mac == spool_siphash(k, h, TAG_LEN));
	CHECK(h->len <= SPOOL_REC_PAYLOAD_MAX);
	CHECK(spool_crc32c_sw(0, payload, h->len) == h->pay_crc);
	CHECK(off % SPOOL_REC_ALIGN == 0 && off >= HEAD_LEN && off >= r->last_end);
	CHECK(off <= r->end && spool_rec_size(h->len) <= r->end - off);
	r->last_end = off + spool_rec_size(h->len);
}

/* Everything a commit callback can be held to: where the commit is, that
 * the envelope is the one on disk, that the reader agrees with body_ok. */
static int on_msg(void *ctx, const struct spool_scan_msg *msg)
{
	struct run *r = ctx;
	struct spool_rec_hdr h;
	struct spool_env mine;
	const struct orc_yield *y = run_next(r, YIELD_COMMIT);

	CHECK(msg->commit_off <= r->end && r->end - msg->commit_off >= HDR_LEN);
	CHECK(msg->commit_off == y->off);
	memcpy(&h, r->data + msg->commit_off, HDR_LEN);
	yield_contract(r, msg->commit_off, &h, r->data + msg->commit_off + HDR_LEN);
	CHECK(h.type == SPOOL_REC_COMMIT && msg->env.id == h.msg_id);
	CHECK(msg->body_ok == (r->verify && y->body_ok));

	const uint8_t *pay = r->data + msg->commit_off + HDR_LEN;
	CHECK(msg->env_raw_len == h.len && memcmp(msg->env_raw, pay, h.len) == 0);
	CHECK(spool_env_decode(pay, h.len, &mine) == 0);
	/* The scanner's copy: strings at the same offsets in a buffer of h.len. */
	env_same(&msg->env, msg->env_raw, &mine, pay);
	env_round_trip(&msg->env, msg->env_raw, pay, h.len);

	if (r->read) {
		/* The stored bytes alone: the prepend goes first (checked in
		 * the envelope's own round trip). */
		struct spool_env stored = msg->env;
		struct sink s = {.buf = r->got, .want = msg->env.msg_len};
		int rc;

		stored.prepend = (struct spool_str){0};
		rc = spool_message_read(r->fd, &stored, msg->commit_off, on_body, &s);
		bool ok =
		    orc_body(r->data, msg->commit_off, &r->o->key, &mine, msg->commit_off, r->body);
		CHECK(rc == (ok ? 0 : -EIO));
		CHECK(!ok || (s.len == msg->env.msg_len && memcmp(s.buf, r->body, s.len) == 0));
	}
	return r->n == r->stop_at ? SCAN_STOP : 0;
}

static int on_state(void *ctx, const struct spool_rec_hdr *h, const uint8_t *payload)
{
	struct run *r = ctx;
	const struct orc_yield *y = run_next(r, YIELD_STATE);

	CHECK(h->type == SPOOL_REC_RCPT_STATE || h->type == SPOOL_REC_DONE);
	CHECK(h->len <= SPOOL_STATE_MAX && (h->len == 0) == (payload == NULL));
	CHECK(memcmp(h, r->data + y->off, HDR_LEN) == 0);
	CHECK(h->len == 0 || memcmp(payload, r->data + y->off + HDR_LEN, h->len) == 0);
	yield_contract(r, y->off, h, r->data + y->off + HDR_LEN);
	state_round_trip_copy(r->data + y->off + HDR_LEN, h->len);
	return r->n == r->stop_at ? SCAN_STOP : 0;
}

/* got against want, bad_bodies only counted with verify. */
static void stats_same(const struct spool_scan_stats *got, const struct spool_scan_stats *want,
		       bool verify)
{
	CHECK(got->valid_end == want->valid_end && got->records == want->records);
	CHECK(got->skipped == want->skipped && got->bad_records == want->bad_records);
	CHECK(got->commits == want->commits && got->bad_envs == want->bad_envs);
	CHECK(got->bad_bodies == (verify ? want->bad_bodies : 0));
	CHECK(got->has_info == want->has_info);
	CHECK(!got->has_info || memcmp(&got->info, &want->info, sizeof got->info) == 0);
}

/* The callback that stops a scan: the stop_at-th one this run gets. */
static const struct orc_yield *stop_yield(const struct run *r)
{
	uint32_t seen = 0;

	for (uint32_t i = 0; i < r->o->n; i++) {
		if (!r->states && r->o->y[i].kind == YIELD_STATE)
			continue;
		if (++seen == r->stop_at)
			return &r->o->y[i];
	}
	return NULL;
}

static void scan_check(struct run *r, uint64_t limit, uint64_t file_len)
{
	struct spool_scan_stats st;
	int rc;

	r->n = r->next = 0;
	r->last_end = 0;
	if (r->states)
		rc = spool_segment_scan_states(r->fd, limit, r->verify, on_msg, on_state, r, &st);
	else
		rc = spool_segment_scan(r->fd, limit, r->verify, on_msg, r, &st);
	CHECK(st.file_len == file_len);
	CHECK(st.valid_end <= r->end && st.valid_end % SPOOL_REC_ALIGN == 0);
	CHECK(st.valid_end >= r->last_end);
	const struct orc_yield *stop = stop_yield(r);
	if (stop) {
		/* "stats describe the file up to that commit" */
		CHECK(rc == SCAN_STOP && r->n == r->stop_at);
		stats_same(&st, &stop->st, r->verify);
		return;
	}
	CHECK(rc == r->o->rc);
	/* Every callback owed came. */
	while (!r->states && r->next < r->o->n && r->o->y[r->next].kind == YIELD_STATE)
		r->next++;
	CHECK(r->next == r->o->n);
	if (rc == 0)
		stats_same(&st, &r->o->st, r->verify);
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

/* The whole input through each decoder (libFuzzer's buffer is exactly
 * size bytes). */
static void decoders_check(const uint8_t *data, size_t size)
{
	struct spool_seg_info got, want;
	struct spool_env env;

	if (spool_env_decode(data, size, &env) == 0)
		env_round_trip(&env, data, data, size);
	state_round_trip(data, size);
	int rc = spool_seg_head_parse(data, size, &got);
	CHECK(rc == orc_head(data, size, &want));
	CHECK(rc != 0 || memcmp(&got, &want, sizeof got) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct orc_scan o;
	static uint8_t body[INPUT_MAX], got[INPUT_MAX];

	if (size > INPUT_MAX)
		return -1;
	decoders_check(data, size);

	struct run r = {
	    .data = data, .fd = image_fd(data, size), .o = &o, .body = body, .got = got};
	orc_scan(data, size, &o, body);
	r.end = size;
	r.verify = r.read = r.states = true;
	scan_check(&r, UINT64_MAX, size);
	r.verify = r.read = r.states = false;
	scan_check(&r, UINT64_MAX, size);

	/* A limit from the data, not from bytes the fuzzer must spend on it:
	 * seeds stay real segments and every mutation moves the limit.  The
	 * bytes past it are still in the file: using one shows as a mismatch. */
	uint32_t h = spool_crc32c(0, data, size);
	if (size > 0) {
		r.end = h % size;
		r.verify = h & 1;
		r.states = h & 2;
		r.read = true; /* may report commits the whole-file scan did not */
		orc_scan(data, r.end, &o, body);
		scan_check(&r, r.end, size);
	}
	if (o.n > 0) {
		r.stop_at = (h >> 8) % o.n + 1;
		r.states = true;
		r.read = false;
		scan_check(&r, r.end, size);
	}
	return 0;
}

/* ---- mutator ------------------------------------------------------------------ */

struct rng {
	uint32_t s;
};

static uint32_t rng_next(struct rng *g)
{
	g->s = g->s * 1103515245u + 12345u;
	return g->s >> 16;
}

/* Make the head well-formed under the key it carries (one in sixteen left
 * alone, one in sixteen of another version).  Returns the key. */
static struct spool_key head_repair(uint8_t *data, struct rng *g)
{
	struct spool_seg_head hd;

	memcpy(&hd, data, HEAD_LEN);
	if (rng_next(g) % 16 == 0)
		return hd.info.key;
	if (rng_next(g) % 16 != 0)
		hd.info.version = SPOOL_SEG_VERSION;
	hd.hdr.magic = SPOOL_REC_MAGIC;
	hd.hdr.type = SPOOL_REC_SEGMENT;
	hd.hdr.len = sizeof hd.info;
	hd.hdr.pay_crc = spool_crc32c(0, &hd.info, sizeof hd.info);
	hd.hdr.mac = spool_siphash(&hd.info.key, &hd.hdr, TAG_LEN);
	memcpy(data, &hd, HEAD_LEN);
	return hd.info.key;
}

/* Re-tag every record-looking header after the head, from the last to the
 * first so an outer record's payload CRC covers its inner records as
 * repaired.  One in eight is left alone, one in eight tagged under a key
 * one bit off.  A COMMIT whose payload starts like an envelope gets the
 * envelope's id (one in eight not). */
static void tag_repair(uint8_t *data, size_t size, const struct spool_key *k, struct rng *g)
{
	struct spool_key wrong = *k;

	wrong.b[rng_next(g) % SPOOL_KEY_LEN] ^= (uint8_t)(1u << rng_next(g) % 8);
	for (size_t off = size & ~(size_t)(SPOOL_REC_ALIGN - 1); off >= HEAD_LEN;
	     off -= SPOOL_REC_ALIGN) {
		struct spool_rec_hdr h;
		uint32_t roll = rng_next(g);

		if (size - off < HDR_LEN || roll % 8 == 0)
			continue;
		memcpy(&h, data + off, HDR_LEN);
		if (h.magic != SPOOL_REC_MAGIC)
			continue;
		bool whole = h.len <= size - off - HDR_LEN;
		if (whole && h.type == SPOOL_REC_COMMIT && h.len > ENV_ID_OFF + 8 && roll % 64 >= 8)
			h.msg_id = load64(data + off + HDR_LEN + ENV_ID_OFF);
		if (whole)
			h.pay_crc = spool_crc32c(0, data + off + HDR_LEN, h.len);
		h.mac = spool_siphash(roll % 8 == 1 ? &wrong : k, &h, TAG_LEN);
		memcpy(data + off, &h, HDR_LEN);
	}
}

/* Give the envelope of a verified COMMIT at off the length and CRC of the
 * chunks its walk finds, and re-tag it: bodies that verify after a
 * mutation keep spool_message_read's success path in play. */
static void body_repair(uint8_t *data, size_t size, const struct spool_key *k, uint64_t off)
{
	struct spool_rec_hdr h;
	struct spool_env env;
	uint8_t *pay = data + off + HDR_LEN;

	if (!orc_hdr(data, size, off, k, &h) || h.type != SPOOL_REC_COMMIT ||
	    spool_rec_size(h.len) > size - off || spool_env_decode(pay, h.len, &env) != 0)
		return;
	/* The walk with a bound that cannot stop it early: what it finds. */
	uint64_t total = 0, pos = env.first_chunk_off;
	uint32_t crc = 0;
	while (pos % SPOOL_REC_ALIGN == 0 && pos >= HEAD_LEN && pos < off) {
		struct spool_rec_hdr c;
		if (!orc_hdr(data, size, pos, k, &c)) {
			pos += SPOOL_REC_ALIGN;
			continue;
		}
		if (spool_rec_size(c.len) > off - pos)
			break;
		if (c.type == SPOOL_REC_CHUNK && c.msg_id == env.id && orc_pay_ok(data, pos, &c)) {
			crc = spool_crc32c(crc, data + pos + HDR_LEN, c.len);
			total += c.len;
		}
		pos += spool_rec_size(c.len);
	}
	uint64_t msg_len = env.msg_len <= total ? env.msg_len : total;
	memcpy(pay + ENV_MSG_LEN_OFF, &msg_len, 8);
	if (pay[0] >= 2 && env.stuff_len > msg_len) /* stuffing is within the message */
		memcpy(pay + ENV_STUFF_LEN_OFF, &msg_len, 8);
	memcpy(pay + ENV_WIRE_LEN_OFF, &total, 8);
	memcpy(pay + ENV_MSG_CRC_OFF, &crc, 4);
	h.pay_crc = spool_crc32c(0, pay, h.len);
	h.mac = spool_siphash(k, &h, TAG_LEN);
	memcpy(data + off, &h, HDR_LEN);
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned seed)
{
	struct rng g = {seed};

	size = LLVMFuzzerMutate(data, size, max_size);
	/* A quarter of the time keep the mutation raw: torn and flipped records
	 * are the scanner's daily bread too. */
	if (seed % 4 == 0 || size < HEAD_LEN)
		return size;
	struct spool_key k = head_repair(data, &g);
	tag_repair(data, size, &k, &g);
	if (rng_next(&g) % 2 == 0) {
		for (uint64_t off = HEAD_LEN; off + HDR_LEN <= size; off += SPOOL_REC_ALIGN)
			body_repair(data, size, &k, off);
	}
	return size;
}
