/*
 * libFuzzer driver for the outbound client's pure pieces (smtp/client.h).
 * The input is used twice: as bytes received from a next hop, and as a
 * message body to dot-stuff.
 *
 * Reply parser invariants: *used never exceeds what was offered; AGAIN
 * consumes all; an OK line ends on its LF; every text slice lies inside the
 * bytes of that call or the state's own line buffer; the lines, replies and
 * final verdict do not depend on how the bytes were split; a completed
 * reply obeys its bounds, its kept text and DSN diagnostic hold only
 * printable ASCII and well-formed UTF-8 (no C0 or C1 control, no character
 * cut), its enhanced code has the RFC 3463 form and class.
 * EHLO parsing of the whole input agrees with line-by-line parsing.
 * smtp_reply_count over each piece, from the state before it, gives the
 * replies the parser then completes in that piece and where the last ends
 * (unless the parser refuses the piece), and leaves the state untouched;
 * the owed list matches replies to commands in order and its verdict on a
 * piece agrees with the counts.
 *
 * Stuffing invariants: split feeds with small iovec budgets give the same
 * bytes as one feed; iovecs are the static "." or in-order input pieces;
 * the server's end-of-data scanner stops exactly at our terminator and
 * smtp_unstuff gives the input back; the stuffed body passes the checker.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "smtp/client.h"
#include "smtp/parse.h"

#define EVENTS_MAX 4096

/* One line as yielded; the text is kept as a hash so runs compare cheaply. */
struct event {
	uint64_t text_hash;
	uint32_t text_len;
	uint16_t code, index;
	uint8_t last, bare_lf;
	uint32_t reply_bytes; /* st.reply.bytes after a last line, else 0 */
};

struct outcome {
	int rc;
	uint8_t error;
	size_t nev;
	uint32_t ehlo_ext; /* caps gathered from 250 replies, line by line */
	struct event ev[EVENTS_MAX];
};

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64: splits must be reproducible from the input alone. */
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static uint64_t fnv(const char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)p[i]) * 0x100000001b3u;
	return h;
}

/* Printable ASCII and whole, well-formed UTF-8 characters, no C1 control. */
static bool printable(const char *p, size_t n)
{
	for (size_t i = 0; i < n;) {
		uint8_t c = (uint8_t)p[i];
		size_t len = smtp_utf8_len(p + i, n - i);
		if (len == 0 || (c < 0x80 && (c < 0x20 || c == 0x7f)) ||
		    (c == 0xc2 && (uint8_t)p[i + 1] < 0xa0))
			return false;
		i += len;
	}
	return true;
}

static void check_reply(const struct smtp_reply *r)
{
	char diag[SMTP_REPLY_TEXT_MAX + 32], status[SMTP_ESC_MAX + 1];
	CHECK(r->code >= 200 && r->code <= 559);
	CHECK(r->lines >= 1 && r->lines <= SMTP_REPLY_LINES_MAX);
	CHECK(r->bytes >= 4 && r->bytes <= SMTP_REPLY_BYTES_MAX);
	CHECK(r->text_len <= SMTP_REPLY_TEXT_MAX && printable(r->text, r->text_len));
	CHECK(r->esc_len <= SMTP_ESC_MAX && strlen(r->esc) == r->esc_len);
	if (r->esc_len > 0) {
		CHECK(r->esc[0] == '0' + r->code / 100 && r->esc[1] == '.');
		CHECK(r->text_len >= r->esc_len && memcmp(r->text, r->esc, r->esc_len) == 0);
	}
	size_t n = smtp_reply_diag(r, diag, sizeof diag);
	CHECK(n == strlen(diag) && strncmp(diag, "smtp; ", 6) == 0 && printable(diag, n));
	/* Cut short: a prefix of the whole, never inside a character. */
	for (size_t cap = 1; cap <= 24; cap++) {
		char small[24];
		size_t k = smtp_reply_diag(r, small, cap);
		CHECK(k < cap && k == strlen(small) && k <= n && memcmp(small, diag, k) == 0);
		CHECK(printable(small, k) && k + 4 >= (cap - 1 < n ? cap - 1 : n));
	}
	n = smtp_reply_status(r, status);
	CHECK(n >= 5 && n <= SMTP_ESC_MAX && n == strlen(status));
}

static void check_slice(const struct smtp_slice *s, const char *buf, size_t len,
			const struct smtp_reply_state *st)
{
	if (s->len == 0)
		return;
	bool in_buf = s->ptr >= buf && s->ptr + s->len <= buf + len;
	bool in_line = s->ptr >= st->line && s->ptr + s->len <= st->line + sizeof st->line;
	CHECK(in_buf || in_line);
}

static void record(struct outcome *o, const struct smtp_reply_state *st,
		   const struct smtp_reply_line *l, struct smtp_ehlo_caps *caps)
{
	CHECK(l->code == st->reply.code && l->index + 1u == st->reply.lines);
	if (l->code == 250)
		smtp_ehlo_line(caps, l);
	if (l->last)
		check_reply(&st->reply);
	if (o->nev < EVENTS_MAX)
		o->ev[o->nev++] = (struct event){fnv(l->text.ptr, l->text.len),
						 l->text.len,
						 l->code,
						 l->index,
						 l->last,
						 l->bare_lf,
						 l->last ? st->reply.bytes : 0};
}

/* Parse data[0..size) fed in chunks (chunk_max 0: one buffer). */
static void parse(const char *data, size_t size, uint64_t seed, size_t chunk_max, struct outcome *o)
{
	static struct smtp_reply_state st;
	struct smtp_ehlo_caps caps;
	size_t off = 0;

	smtp_reply_init(&st);
	smtp_ehlo_begin(&caps);
	o->rc = SMTP_PARSE_AGAIN;
	o->nev = 0;
	while (off < size && o->rc != SMTP_PARSE_INVALID) {
		size_t left = size - off;
		if (chunk_max > 0) {
			size_t chunk = 1 + (size_t)(rng_next(&seed) % chunk_max);
			left = chunk < left ? chunk : left;
		}
		/* What the count says of this piece, checked once it is parsed. */
		const char *piece = data + off;
		size_t piece_len = left, counted_end = SIZE_MAX, parsed_end = 0;
		uint32_t counted = UINT32_MAX, parsed = 0;
		uint32_t fill_before = st.fill;
		smtp_reply_count(&st, piece, piece_len, &counted, &counted_end);
		CHECK(st.fill == fill_before && counted_end <= piece_len);
		while (left > 0) {
			struct smtp_reply_line line;
			size_t used = SIZE_MAX;
			o->rc = smtp_reply_parse(&st, data + off, left, &used, &line);
			CHECK(used <= left);
			if (o->rc == SMTP_PARSE_INVALID)
				break;
			if (o->rc == SMTP_PARSE_AGAIN) {
				CHECK(used == left);
				off += used;
				break;
			}
			CHECK(used >= 1 && data[off + used - 1] == '\n');
			check_slice(&line.text, data + off, used, &st);
			record(o, &st, &line, &caps);
			off += used;
			left -= used;
			if (line.last) {
				parsed++;
				parsed_end = (size_t)(data + off - piece);
			}
		}
		if (o->rc != SMTP_PARSE_INVALID)
			CHECK(counted == parsed && counted_end == parsed_end);
	}
	/* All bytes taken: OK (input ended on a line end) or AGAIN alike. */
	if (o->rc == SMTP_PARSE_OK)
		o->rc = SMTP_PARSE_AGAIN;
	o->error = st.error;
	o->ehlo_ext = caps.ext;
	CHECK((o->rc == SMTP_PARSE_INVALID) == (st.error != SMTP_REPLY_E_NONE));
}

static void reply_side(const char *in, size_t size, uint64_t seed)
{
	static struct outcome whole, split;
	parse(in, size, seed, 0, &whole);
	parse(in, size, seed, 1 + seed % 97, &split);
	CHECK(whole.rc == split.rc && whole.error == split.error && whole.nev == split.nev);
	CHECK(whole.ehlo_ext == split.ehlo_ext);
	for (size_t i = 0; i < whole.nev; i++)
		CHECK(memcmp(&whole.ev[i], &split.ev[i], sizeof whole.ev[i]) == 0);

	/* A whole input that is one 250 reply: same caps as line by line. */
	struct smtp_ehlo_caps caps;
	if (smtp_ehlo_parse(in, size, &caps) == SMTP_PARSE_OK) {
		CHECK(whole.rc == SMTP_PARSE_AGAIN && whole.nev >= 1);
		CHECK(whole.ev[whole.nev - 1].last && whole.ev[0].code == 250);
		CHECK(caps.ext == whole.ehlo_ext);
		CHECK(caps.auth == 0 || (caps.ext & SMTP_EXT_AUTH));
	}
}

/* ---- stuffing ------------------------------------------------------------ */

struct gathered {
	char *out;
	size_t len, in_next;
};

static void gather(struct gathered *g, const struct iovec *iov, size_t n, const char *in,
		   size_t size)
{
	for (size_t i = 0; i < n; i++) {
		const char *b = iov[i].iov_base;
		CHECK(iov[i].iov_len > 0);
		if (size > 0 && b >= in && b < in + size) {
			CHECK(b == in + g->in_next && iov[i].iov_len <= size - g->in_next);
			g->in_next += iov[i].iov_len;
		} else {
			CHECK(iov[i].iov_len == 1 && b[0] == '.');
		}
		memcpy(g->out + g->len, b, iov[i].iov_len);
		g->len += iov[i].iov_len;
	}
}

/* Stuff in[0..size) and append the terminator; returns the body length. */
static size_t stuff(const char *in, size_t size, uint64_t seed, size_t chunk_max, size_t iov_max,
		    struct gathered *g)
{
	struct iovec iov[64];
	struct smtp_stuff_state st;
	size_t off = 0;
	smtp_stuff_begin(&st);
	while (off < size) {
		size_t left = size - off;
		if (chunk_max > 0) {
			size_t chunk = 1 + (size_t)(rng_next(&seed) % chunk_max);
			left = chunk < left ? chunk : left;
		}
		size_t used = SIZE_MAX;
		size_t k = smtp_stuff_iov(&st, in + off, left, iov, iov_max, &used);
		CHECK(k <= iov_max && used <= left && k > 0);
		CHECK(k == iov_max || used == left);
		gather(g, iov, k, in, size);
		off += used;
		CHECK(g->in_next == off);
	}
	CHECK(st.in_len == size);
	size_t body = g->len;
	struct iovec t;
	size_t tl = smtp_stuff_end(&st, &t);
	CHECK(tl == 3 || tl == 5);
	memcpy(g->out + g->len, t.iov_base, tl);
	g->len += tl;
	return body;
}

static void stuff_side(const char *in, size_t size, uint64_t seed)
{
	size_t cap = 2 * size + 8;
	struct gathered a = {malloc(cap), 0, 0}, b = {malloc(cap), 0, 0};
	char *back = malloc(cap);
	CHECK(a.out != NULL && b.out != NULL && back != NULL);
	size_t body = stuff(in, size, seed, 0, 64, &a);
	stuff(in, size, seed, 1 + seed % 31, 1 + (seed >> 8) % 4, &b);
	CHECK(a.len == b.len && memcmp(a.out, b.out, a.len) == 0);

	struct smtp_data_state ds;
	size_t used = SIZE_MAX;
	smtp_data_begin(&ds, true);
	CHECK(smtp_data_scan(&ds, a.out, a.len, &used) == SMTP_PARSE_OK && used == a.len);

	bool bol = true;
	size_t added = a.len - body - 3; /* 0 or the CRLF the terminator added */
	size_t n = smtp_unstuff(a.out, a.len - 3, back, &bol);
	CHECK(n == size + added && memcmp(back, in, size) == 0);

	struct smtp_stuffed_state cs;
	struct iovec t;
	smtp_stuffed_begin(&cs);
	CHECK(smtp_stuffed_scan(&cs, a.out, a.len - 3) == SMTP_PARSE_AGAIN);
	CHECK(smtp_stuffed_end(&cs, &t) == SMTP_PARSE_OK && t.iov_len == 3);
	/* The raw input through the checker: no crash, verdicts consistent. */
	smtp_stuffed_begin(&cs);
	if (smtp_stuffed_scan(&cs, in, size) == SMTP_PARSE_INVALID)
		CHECK(smtp_stuffed_end(&cs, &t) == SMTP_PARSE_INVALID);
	free(a.out);
	free(b.out);
	free(back);
}

/* ---- replies owed ---------------------------------------------------------- */

/* The input's bytes as a script for the owed list: add runs, send, receive,
 * take.  Replies come off in the order their commands went on, never more
 * than were sent before the read, and the counters stay consistent. */
static void owed_side(const char *in, size_t size, uint64_t seed)
{
	struct smtp_owed o;
	uint8_t fifo[256]; /* the commands, one by one, as a model */
	size_t fh = 0, ft = 0, sent = 0;

	smtp_owed_init(&o);
	for (size_t i = 0; i < size && i < 512; i++) {
		uint8_t b = (uint8_t)in[i];
		switch (b % 4) {
		case 0: {
			enum smtp_ask ask = (enum smtp_ask)(1 + (b >> 2) % (SMTP_ASK_COUNT - 1));
			uint32_t n = (b >> 5) % 3;
			if (ft - fh + n > sizeof fifo)
				break;
			bool merges =
			    o.runs > 0 && o.ask[(o.head + o.runs - 1u) % SMTP_OWED_RUNS] == ask;
			bool room = n == 0 || merges || o.runs < SMTP_OWED_RUNS;
			bool ok = smtp_owed_add(&o, ask, n);
			CHECK(ok == room);
			if (!ok)
				break;
			CHECK(o.runs <= SMTP_OWED_RUNS);
			for (uint32_t k = 0; k < n; k++)
				fifo[ft++ % sizeof fifo] = (uint8_t)ask;
			break;
		}
		case 1:
			smtp_owed_sent(&o);
			sent = ft;
			break;
		case 2:
			smtp_owed_recv(&o);
			CHECK(o.budget == sent - fh);
			break;
		default: {
			uint32_t budget = o.budget;
			enum smtp_ask want =
			    budget > 0 ? (enum smtp_ask)fifo[fh % sizeof fifo] : SMTP_ASK_NONE;
			enum smtp_ask last = smtp_owed_last(&o);
			CHECK(budget == 0 ? last == SMTP_ASK_NONE
					  : last == fifo[(fh + budget - 1) % sizeof fifo]);
			CHECK(smtp_owed_take(&o) == want);
			if (want != SMTP_ASK_NONE)
				fh++;
			break;
		}
		}
		CHECK(o.total == ft - fh && o.budget <= o.total && o.unsent <= o.total);
		CHECK(fh <= sent && o.unsent == ft - sent);
	}
	(void)seed;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	uint64_t seed = fnv(in, size) | 1;

	reply_side(in, size, seed);
	stuff_side(in, size, seed);

	/* LMTP: as many replies as were owed, indices in order. */
	struct smtp_lmtp_tally t;
	uint32_t owed = (uint32_t)(seed % 8), idx = 0;
	smtp_lmtp_begin(&t, owed);
	for (uint32_t i = 0; i < owed; i++) {
		int rc = smtp_lmtp_reply(&t, &idx);
		CHECK(idx == i && rc == (i + 1 == owed ? SMTP_PARSE_OK : SMTP_PARSE_AGAIN));
	}
	CHECK(smtp_lmtp_reply(&t, &idx) == SMTP_PARSE_INVALID);
	CHECK(smtp_reply_outcome((uint16_t)(seed % 600)) <= SMTP_OUTCOME_BOUNCE);
	owed_side(in, size, seed);
	return 0;
}
