/*
 * libFuzzer driver for the body scanner.  Input: byte 0 picks the mode (bit 0:
 * DATA, else BDAT), the rest is the body.  The body is scanned whole, split
 * at a data-derived point and byte by byte; all three must agree on rc, end
 * position, wire_len and every tracked field.  A plain, slow oracle then
 * recomputes the same answers: the end is the first CRLF "." CRLF of
 * CRLF + body; a bare CR is a CR followed by something other than LF; a bare
 * LF is an LF not after CR; lines, header section (and 8-bit octets in it)
 * and "Received:" count as documented in parse.h; stuffing dots are the "."
 * that begins a line (at the start or after CRLF) and is not the
 * terminator's, and the size is the bytes less those and less the
 * terminator or the "." / ".\r" that may still begin it.  In DATA mode the
 * stored bytes are also unstuffed
 * whole, split and in place, with identical results.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "smtp/parse.h"

struct run {
	int rc;
	size_t used;
	struct smtp_data_state st;
};

/* Scan body fed in pieces of at most step bytes, the first ending at cut. */
static struct run scan(const char *body, size_t n, bool dot, size_t cut, size_t step)
{
	struct run r = {.rc = SMTP_PARSE_AGAIN};
	size_t off = 0;

	smtp_data_begin(&r.st, dot);
	do {
		size_t len = off < cut ? cut - off : n - off;
		if (step > 0 && len > step)
			len = step;
		size_t used = SIZE_MAX;
		r.rc = smtp_data_scan(&r.st, body + off, len, &used);
		CHECK(used <= len);
		CHECK(r.rc == SMTP_PARSE_OK || r.rc == SMTP_PARSE_AGAIN);
		CHECK(r.rc == SMTP_PARSE_OK || used == len);
		off += used;
	} while (r.rc == SMTP_PARSE_AGAIN && off < n);
	r.used = off;
	CHECK(r.st.wire_len == off);
	return r;
}

static void same(const struct run *a, const struct run *b)
{
	CHECK(a->rc == b->rc && a->used == b->used);
	CHECK(a->st.wire_len == b->st.wire_len && a->st.flags == b->st.flags);
	CHECK(a->st.stuff_len == b->st.stuff_len);
	CHECK(smtp_data_size(&a->st) == smtp_data_size(&b->st));
	CHECK(smtp_data_ends_line(&a->st) == smtp_data_ends_line(&b->st));
	CHECK(smtp_data_ends_cr(&a->st) == smtp_data_ends_cr(&b->st));
	CHECK(a->st.line_len == b->st.line_len);
	CHECK(a->st.received_count == b->st.received_count);
	CHECK(a->st.in_header == b->st.in_header && a->st.phase == b->st.phase);
}

static size_t oracle_end(const uint8_t *b, size_t n, bool dot)
{
	if (!dot)
		return 0;
	if (n >= 3 && memcmp(b, ".\r\n", 3) == 0)
		return 3;
	const uint8_t *m = memmem(b, n, "\r\n.\r\n", 5);
	return m ? (size_t)(m - b) + 5 : 0;
}

static uint32_t oracle_flags(const uint8_t *c, size_t u)
{
	uint32_t f = 0;
	for (size_t i = 0; i < u; i++) {
		if (c[i] == '\0')
			f |= SMTP_DATA_NUL;
		if (c[i] >= 0x80)
			f |= SMTP_DATA_8BIT;
		if (c[i] == '\n' && (i == 0 || c[i - 1] != '\r'))
			f |= SMTP_DATA_BARE_LF;
		if (c[i] == '\r' && i + 1 < u && c[i + 1] != '\n')
			f |= SMTP_DATA_BARE_CR;
	}
	return f;
}

static bool starts_received(const uint8_t *p, size_t n)
{
	static const char want[] = "received:";
	if (n < sizeof want - 1)
		return false;
	for (size_t i = 0; i < sizeof want - 1; i++) {
		uint8_t c = p[i] >= 'A' && p[i] <= 'Z' ? (uint8_t)(p[i] | 0x20) : p[i];
		if (c != (uint8_t)want[i])
			return false;
	}
	return true;
}

/* Line-by-line recount of c[0..n) (the terminator line excluded). */
static void oracle_lines(const uint8_t *c, size_t n, bool dot, struct smtp_data_state *e)
{
	bool after_crlf = true;
	size_t i = 0;

	e->in_header = 1;
	e->received_count = 0;
	e->line_len = 0;
	while (i < n) {
		const uint8_t *lf = memchr(c + i, '\n', n - i);
		size_t s = i, t = lf ? (size_t)(lf - c) : n;
		bool crlf = lf != NULL && t > s && c[t - 1] == '\r';
		/* The CR of a CRLF, or a CR still waiting for its LF, is not
		 * line content; a stuffing dot after CRLF is not either. */
		if (crlf || (lf == NULL && t > s && c[t - 1] == '\r'))
			t--;
		if (dot && after_crlf && t > s && c[s] == '.')
			s++;
		if (t - s > SMTP_TEXT_LINE_MAX - 2)
			e->flags |= SMTP_DATA_LONG_LINE;
		if (e->in_header && starts_received(c + s, t - s))
			e->received_count++;
		for (size_t k = s; e->in_header && k < t; k++)
			if (c[k] >= 0x80)
				e->flags |= SMTP_DATA_8BIT_HEADER;
		if (lf == NULL) {
			e->line_len = (uint32_t)(t - s);
			break;
		}
		if (e->in_header && t == s)
			e->in_header = 0;
		after_crlf = crlf;
		i = (size_t)(lf - c) + 1;
	}
}

static bool at_bol(const uint8_t *c, size_t s)
{
	return s == 0 || (s >= 2 && c[s - 2] == '\r' && c[s - 1] == '\n');
}

/* Stuffing dots in c[0..u) and the octets held back at its end (the
 * terminator, or what may still begin it). */
static void oracle_stuffing(const uint8_t *c, size_t u, bool dot, bool end, uint64_t *stuff,
			    uint64_t *held)
{
	*stuff = *held = 0;
	if (!dot)
		return;
	for (size_t s = 0; s < u; s++) {
		if (c[s] != '.' || !at_bol(c, s))
			continue;
		if (s + 1 == u || (c[s + 1] == '\r' && s + 2 == u))
			*held = u - s; /* "." or ".\r" at the very end */
		else if (!(c[s + 1] == '\r' && c[s + 2] == '\n'))
			(*stuff)++;
	}
	if (end)
		*held = 3;
}

static void check_oracle(const uint8_t *b, size_t n, bool dot, const struct run *r)
{
	size_t end = oracle_end(b, n, dot);
	struct smtp_data_state e = {0};

	CHECK(r->rc == (end ? SMTP_PARSE_OK : SMTP_PARSE_AGAIN));
	CHECK(r->used == (end ? end : n));
	e.flags = oracle_flags(b, r->used);
	oracle_lines(b, end ? end - 3 : n, dot, &e);
	CHECK(r->st.flags == e.flags);
	uint64_t stuff, held;
	oracle_stuffing(b, r->used, dot, end != 0, &stuff, &held);
	CHECK(r->st.stuff_len == stuff);
	CHECK(smtp_data_size(&r->st) == r->used - stuff - held);
	CHECK(smtp_data_ends_line(&r->st) ==
	      (end != 0 || r->used == 0 ||
	       (r->used >= 2 && b[r->used - 2] == '\r' && b[r->used - 1] == '\n')));
	/* BDAT: a last CR is pending, neither a line end nor yet a bare CR
	 * (in DATA a "." line's CR may be the terminator's instead). */
	if (!dot)
		CHECK(smtp_data_ends_cr(&r->st) == (r->used >= 1 && b[r->used - 1] == '\r'));
	CHECK(r->st.received_count == e.received_count);
	CHECK(r->st.in_header == e.in_header);
	if (!end)
		CHECK(r->st.line_len == e.line_len);
}

static void check_unstuff(const char *s, size_t n, size_t cut)
{
	static char a[1 << 20], b[1 << 20];
	size_t dots = 0;
	bool bol = true;

	if (n > sizeof a)
		return;
	for (size_t i = 0; i < n; i++) {
		if ((i == 0 || s[i - 1] == '\n') && s[i] == '.')
			dots++;
	}
	size_t na = smtp_unstuff(s, n, a, &bol);
	CHECK(na == n - dots && na <= n);
	bol = true;
	cut = cut < n ? cut : n;
	size_t nb = smtp_unstuff(s, cut, b, &bol);
	nb += smtp_unstuff(s + cut, n - cut, b + nb, &bol);
	CHECK(nb == na && memcmp(a, b, na) == 0);
	memcpy(b, s, n);
	bol = true;
	CHECK(smtp_unstuff(b, n, b, &bol) == na && memcmp(a, b, na) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	bool dot = data[0] & 1;
	const char *body = (const char *)data + 1;
	size_t n = size - 1;
	uint64_t h = 0xcbf29ce484222325u; /* FNV-1a: the split point */
	for (size_t i = 0; i < size; i++)
		h = (h ^ data[i]) * 0x100000001b3u;
	size_t cut = (size_t)(h % (n + 1));

	struct run whole = scan(body, n, dot, n, 0);
	struct run split = scan(body, n, dot, cut, 0);
	struct run bytes = scan(body, n, dot, 0, 1);
	same(&whole, &split);
	same(&whole, &bytes);
	check_oracle((const uint8_t *)body, n, dot, &whole);
	if (dot && whole.rc == SMTP_PARSE_OK) {
		check_unstuff(body, whole.used - 3, cut);
		CHECK(whole.st.stuff_len <= whole.used - 3);
	}
	return 0;
}
