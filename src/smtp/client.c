/*
 * smtp/client — reply parsing, EHLO capabilities, dot-stuffing, LMTP reply
 * accounting and reply classification for the outbound side.  The contract
 * is in client.h; this file only says why each rule is what it is.  Pure: no
 * I/O, no allocation, no global mutable state.
 */
#include "smtp/client.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static_assert(SMTP_REPLY_LINE_MAX >= 512, "RFC 5321 4.5.3.1.5 lines must fit");
static_assert(SMTP_REPLY_BYTES_MAX >= SMTP_REPLY_LINE_MAX, "one longest line must fit");
static_assert(SMTP_REPLY_BYTES_MAX <= UINT32_MAX, "reply.bytes is 32-bit");
static_assert(SMTP_REPLY_TEXT_MAX <= UINT16_MAX, "reply.text_len is 16-bit");
static_assert(SMTP_REPLY_LINES_MAX <= UINT16_MAX, "line index is 16-bit");

/* ---- character helpers -------------------------------------------------- */

static bool ch_digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

static uint8_t ch_lower(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') ? (uint8_t)(c | 0x20) : c;
}

static bool ch_blank(uint8_t c)
{
	return c == ' ' || c == '\t';
}

static bool ci_eq(const char *p, size_t n, const char *lit)
{
	if (n != strlen(lit))
		return false;
	for (size_t i = 0; i < n; i++)
		if (ch_lower((uint8_t)p[i]) != ch_lower((uint8_t)lit[i]))
			return false;
	return true;
}

/* ---- replies (RFC 5321 4.2) ---------------------------------------------- */

void smtp_reply_init(struct smtp_reply_state *st)
{
	assert(st != NULL);
	memset(&st->reply, 0, sizeof st->reply);
	st->fill = 0;
	st->error = SMTP_REPLY_E_NONE;
	st->done = 0;
}

static int reply_fail(struct smtp_reply_state *st, enum smtp_reply_error e)
{
	assert(e != SMTP_REPLY_E_NONE);
	st->error = (uint8_t)e;
	return SMTP_PARSE_INVALID;
}

/* Length of an RFC 3463 2 enhanced code at the start of t ("c.sss.ddd"
 * followed by SP or the end), 0 when there is none.  RFC 2034 2: its class
 * must match the reply's first digit; when it does not, the server is
 * confused and the basic code alone is trusted. */
static size_t esc_len_at(const char *t, size_t n, uint16_t code)
{
	const uint8_t *p = (const uint8_t *)t;
	size_t i = 0;
	/* Classes are 2, 4 and 5 only (RFC 3463 3.1): a 3xx has none. */
	if (n < 5 || code / 100 == 3 || p[0] != (uint8_t)('0' + code / 100) || p[1] != '.')
		return 0;
	i = 2;
	for (int part = 0; part < 2; part++) {
		size_t start = i;
		while (i < n && i - start < 3 && ch_digit(p[i]))
			i++;
		if (i == start)
			return 0;
		if (part == 0 && (i >= n || p[i++] != '.'))
			return 0;
	}
	if (i < n && p[i] != ' ')
		return 0;
	assert(i <= SMTP_ESC_MAX);
	return i;
}

/* The length of the character at t[0..n) the kept text may hold as it is,
 * or 0: printable ASCII, and well-formed UTF-8 (an SMTPUTF8 server may
 * answer in UTF-8, which the RFC 6533 report carries) other than the C1
 * controls U+0080..U+009F, which some terminals take as escape sequences
 * just as they take ESC. */
static size_t text_char_len(const char *t, size_t n)
{
	uint8_t c = (uint8_t)t[0];

	if (c < 0x80)
		return c >= 0x20 && c < 0x7f ? 1 : 0;
	if (c == 0xc2 && n >= 2 && (uint8_t)t[1] < 0xa0)
		return 0;
	return smtp_utf8_len(t, n);
}

/* Append to the kept text: what text_char_len() allows as it is, any other
 * octet as '?', so the peer can inject no line break, control sequence or
 * malformed UTF-8 (the 7-bit report and the kv log escape even the UTF-8).
 * A character that does not fit whole is left out. */
static void text_append(struct smtp_reply *r, const char *t, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t len = text_char_len(t + i, n - i);
		size_t put = len ? len : 1;

		if (put > (size_t)(SMTP_REPLY_TEXT_MAX - r->text_len)) {
			r->flags |= SMTP_REPLY_TEXT_TRUNCATED;
			return;
		}
		if (len)
			memcpy(r->text + r->text_len, t + i, put);
		else
			r->text[r->text_len] = '?';
		r->text_len += (uint16_t)put;
		i += put;
	}
	assert(r->text_len <= SMTP_REPLY_TEXT_MAX);
}

/* Keep one line's text.  The enhanced code comes from the first line; RFC
 * 2034 3 repeats it on every line, which a diagnostic does not need twice. */
static void reply_keep(struct smtp_reply *r, const char *t, size_t n)
{
	if (r->lines == 0) {
		size_t e = esc_len_at(t, n, r->code);
		if (e > 0)
			memcpy(r->esc, t, e);
		r->esc[e] = '\0';
		r->esc_len = (uint8_t)e;
	} else if (r->esc_len > 0 && n >= r->esc_len && memcmp(t, r->esc, r->esc_len) == 0 &&
		   (n == r->esc_len || t[r->esc_len] == ' ')) {
		t += r->esc_len;
		n -= r->esc_len;
		while (n > 0 && *t == ' ') {
			t++;
			n--;
		}
	}
	if (n == 0)
		return;
	if (r->text_len > 0)
		text_append(r, " ", 1);
	text_append(r, t, n);
}

/* Split "ddd[-| ]text" into code, separator and text.  Returns false on a
 * malformed line (RFC 5321 4.2: Reply-code = %x32-35 %x30-35 %x30-39). */
static bool line_split(const char *p, size_t n, uint16_t *code, bool *last, struct smtp_slice *text)
{
	const uint8_t *u = (const uint8_t *)p;
	if (n < 3 || u[0] < '2' || u[0] > '5' || u[1] < '0' || u[1] > '5' || !ch_digit(u[2]))
		return false;
	*code = (uint16_t)((u[0] - '0') * 100 + (u[1] - '0') * 10 + (u[2] - '0'));
	*text = (struct smtp_slice){0};
	if (n == 3) {
		*last = true; /* "ddd" alone: 4.2.1 allows the text to be absent */
		return true;
	}
	if (u[3] != ' ' && u[3] != '-')
		return false;
	*last = u[3] == ' ';
	if (n > 4)
		*text = (struct smtp_slice){p + 4, (uint32_t)(n - 4)};
	return true;
}

/* One complete line p[0..raw) (LF excluded, CR included when present):
 * check it, fold it into st->reply and describe it in *out. */
static int reply_line(struct smtp_reply_state *st, const char *p, size_t raw,
		      struct smtp_reply_line *out)
{
	struct smtp_reply *r = &st->reply;
	bool bare_lf = raw == 0 || p[raw - 1] != '\r';
	size_t n = bare_lf ? raw : raw - 1;
	uint16_t code = 0;
	bool last = false;
	struct smtp_slice text;

	assert(raw < SMTP_REPLY_LINE_MAX);
	/* A CR anywhere but before the LF, or a NUL, is no text a server means
	 * to send; keeping it would hand control octets to logs and DSNs. */
	if (memchr(p, '\0', n) != NULL || memchr(p, '\r', n) != NULL)
		return reply_fail(st, SMTP_REPLY_E_OCTET);
	if (n > SMTP_REPLY_LINE_MAX - 2)
		return reply_fail(st, SMTP_REPLY_E_LINE_LONG);
	if (!line_split(p, n, &code, &last, &text))
		return reply_fail(st, SMTP_REPLY_E_SYNTAX);
	/* 4.2.1: every line of a multiline reply carries the same code. */
	if (r->lines > 0 && code != r->code)
		return reply_fail(st, SMTP_REPLY_E_MIXED);
	/* A continuation as line SMTP_REPLY_LINES_MAX means more than that. */
	if (!last && r->lines + 1u >= SMTP_REPLY_LINES_MAX)
		return reply_fail(st, SMTP_REPLY_E_LINES);
	if (r->bytes + raw + 1 > SMTP_REPLY_BYTES_MAX)
		return reply_fail(st, SMTP_REPLY_E_BYTES);

	r->code = code;
	reply_keep(r, text.ptr, text.len);
	*out = (struct smtp_reply_line){text, code, r->lines, last, bare_lf};
	r->lines++;
	r->bytes += (uint32_t)(raw + 1);
	if (bare_lf)
		r->flags |= SMTP_REPLY_BARE_LF;
	st->done = last;
	return SMTP_PARSE_OK;
}

int smtp_reply_parse(struct smtp_reply_state *st, const char *buf, size_t len, size_t *used,
		     struct smtp_reply_line *line)
{
	assert(st != NULL && used != NULL && line != NULL);
	assert(buf != NULL || len == 0);
	*used = 0;
	if (st->error != SMTP_REPLY_E_NONE)
		return SMTP_PARSE_INVALID;
	if (st->done) {
		memset(&st->reply, 0, sizeof st->reply);
		st->done = 0;
	}
	if (len == 0)
		return SMTP_PARSE_AGAIN;

	const char *lf = memchr(buf, '\n', len);
	size_t n = lf != NULL ? (size_t)(lf - buf) : len;
	/* The line so far (LF excluded) may hold SMTP_REPLY_LINE_MAX - 1
	 * octets: content up to the bound plus its CR.  Past that it can only
	 * be refused, so it is refused now, before the LF arrives. */
	if (st->fill + n > SMTP_REPLY_LINE_MAX - 1)
		return reply_fail(st, SMTP_REPLY_E_LINE_LONG);
	if (lf == NULL) {
		memcpy(st->line + st->fill, buf, len);
		st->fill += (uint32_t)len;
		*used = len;
		return SMTP_PARSE_AGAIN;
	}
	*used = n + 1;
	if (st->fill == 0)
		return reply_line(st, buf, n, line); /* zero copy: the usual case */
	memcpy(st->line + st->fill, buf, n);
	size_t raw = st->fill + n;
	st->fill = 0;
	return reply_line(st, st->line, raw, line);
}

/* Does the line a[0..alen) b[0..blen) (LF excluded) end a reply?  The same
 * test as line_split's: "ddd" alone, or a space after the code. */
static bool line_ends_reply(const char *a, size_t alen, const char *b, size_t blen)
{
	size_t raw = alen + blen;
	char lastc = blen > 0 ? b[blen - 1] : (alen > 0 ? a[alen - 1] : '\0');
	size_t n = raw > 0 && lastc == '\r' ? raw - 1 : raw;

	if (n == 3)
		return true;
	if (n < 4)
		return false;
	return (3 < alen ? a[3] : b[3 - alen]) == ' ';
}

void smtp_reply_count(const struct smtp_reply_state *st, const char *buf, size_t len,
		      uint32_t *replies, size_t *end)
{
	assert(st != NULL && replies != NULL && end != NULL);
	assert(buf != NULL || len == 0);
	size_t off = 0;

	*replies = 0;
	*end = 0;
	/* The first line may have begun in an earlier read (st->line). */
	const char *head = st->line;
	size_t head_len = st->fill;

	while (off < len) {
		const char *lf = memchr(buf + off, '\n', len - off);
		if (lf == NULL)
			break;
		size_t n = (size_t)(lf - (buf + off));
		if (line_ends_reply(head, head_len, buf + off, n)) {
			(*replies)++;
			*end = off + n + 1;
		}
		head = NULL;
		head_len = 0;
		off += n + 1;
	}
	assert(*end <= len);
}

/* ---- EHLO capabilities (RFC 5321 4.1.1.1) -------------------------------- */

struct name_bit {
	const char *name;
	uint32_t bit;
};

static const struct name_bit ehlo_keywords[] = {
    {"PIPELINING", SMTP_EXT_PIPELINING},
    {"SIZE", SMTP_EXT_SIZE},
    {"8BITMIME", SMTP_EXT_8BITMIME},
    {"SMTPUTF8", SMTP_EXT_SMTPUTF8},
    {"DSN", SMTP_EXT_DSN},
    {"STARTTLS", SMTP_EXT_STARTTLS},
    {"CHUNKING", SMTP_EXT_CHUNKING},
    {"ENHANCEDSTATUSCODES", SMTP_EXT_ENHANCEDSTATUSCODES},
    {"AUTH", SMTP_EXT_AUTH},
};

static const struct name_bit auth_mechs[] = {
    {"PLAIN", SMTP_AUTH_PLAIN},
    {"LOGIN", SMTP_AUTH_LOGIN},
    {"CRAM-MD5", SMTP_AUTH_CRAM_MD5},
    {"DIGEST-MD5", SMTP_AUTH_DIGEST_MD5},
    {"SCRAM-SHA-1", SMTP_AUTH_SCRAM_SHA_1},
    {"SCRAM-SHA-256", SMTP_AUTH_SCRAM_SHA_256},
    {"XOAUTH2", SMTP_AUTH_XOAUTH2},
    {"OAUTHBEARER", SMTP_AUTH_OAUTHBEARER},
    {"EXTERNAL", SMTP_AUTH_EXTERNAL},
    {"GSSAPI", SMTP_AUTH_GSSAPI},
    {"NTLM", SMTP_AUTH_NTLM},
};

static uint32_t name_lookup(const struct name_bit *tab, size_t count, const char *p, size_t n)
{
	for (size_t i = 0; i < count; i++)
		if (ci_eq(p, n, tab[i].name))
			return tab[i].bit;
	return 0;
}

/* Next blank-separated token of p[*i..n); false when none is left. */
static bool next_token(const char *p, size_t n, size_t *i, const char **tok, size_t *tok_len)
{
	while (*i < n && ch_blank((uint8_t)p[*i]))
		(*i)++;
	size_t start = *i;
	while (*i < n && !ch_blank((uint8_t)p[*i]))
		(*i)++;
	*tok = p + start;
	*tok_len = *i - start;
	return *tok_len > 0;
}

/* RFC 1870 4: "SIZE" [SP number]; 0 or no number means no fixed limit.  A
 * value that is not a number (or does not fit 64 bits) is treated the same:
 * the server offered SIZE, so declaring our size is still right. */
static uint64_t ehlo_size(const char *p, size_t n)
{
	uint64_t v = 0;
	if (n == 0 || n > 20)
		return 0;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)p[i];
		if (!ch_digit(c) || v > (UINT64_MAX - (c - '0')) / 10)
			return 0;
		v = v * 10 + (c - '0');
	}
	return v;
}

static void ehlo_auth(struct smtp_ehlo_caps *caps, const char *p, size_t n, size_t i)
{
	const char *tok;
	size_t tok_len;
	caps->ext |= SMTP_EXT_AUTH;
	while (next_token(p, n, &i, &tok, &tok_len))
		caps->auth |=
		    name_lookup(auth_mechs, sizeof auth_mechs / sizeof auth_mechs[0], tok, tok_len);
}

void smtp_ehlo_begin(struct smtp_ehlo_caps *caps)
{
	assert(caps != NULL);
	memset(caps, 0, sizeof *caps);
}

void smtp_ehlo_line(struct smtp_ehlo_caps *caps, const struct smtp_reply_line *line)
{
	assert(caps != NULL && line != NULL);
	/* The first line is "domain [greeting]" (4.1.1.1), not a keyword. */
	if (line->code != 250 || line->index == 0)
		return;
	const char *p = line->text.ptr, *tok;
	size_t n = line->text.len, i = 0, tok_len;
	if (n == 0 || !next_token(p, n, &i, &tok, &tok_len))
		return;
	/* Servers answering old Outlook clients send "AUTH=LOGIN PLAIN". */
	if (tok_len > 5 && ci_eq(tok, 5, "AUTH=")) {
		ehlo_auth(caps, p, n, (size_t)(tok - p) + 5);
		return;
	}
	uint32_t bit = name_lookup(ehlo_keywords, sizeof ehlo_keywords / sizeof ehlo_keywords[0],
				   tok, tok_len);
	caps->ext |= bit;
	if (bit == SMTP_EXT_AUTH) {
		ehlo_auth(caps, p, n, i);
	} else if (bit == SMTP_EXT_SIZE) {
		const char *v;
		size_t v_len;
		caps->size_max = next_token(p, n, &i, &v, &v_len) ? ehlo_size(v, v_len) : 0;
	}
}

int smtp_ehlo_parse(const char *buf, size_t len, struct smtp_ehlo_caps *caps)
{
	assert(caps != NULL);
	assert(buf != NULL || len == 0);
	struct smtp_reply_state st;
	struct smtp_reply_line line;
	size_t off = 0;

	smtp_reply_init(&st);
	smtp_ehlo_begin(caps);
	while (off < len) {
		size_t used = 0;
		int rc = smtp_reply_parse(&st, buf + off, len - off, &used, &line);
		off += used;
		if (rc != SMTP_PARSE_OK)
			return rc;
		if (line.code != 250)
			return SMTP_PARSE_INVALID;
		smtp_ehlo_line(caps, &line);
		if (line.last)
			return off == len ? SMTP_PARSE_OK : SMTP_PARSE_INVALID;
	}
	return SMTP_PARSE_AGAIN;
}

/* ---- dot-stuffing (RFC 5321 4.5.2) --------------------------------------- */

/* Static storage for what is not the caller's bytes.  ".\r\n" is the tail of
 * "\r\n.\r\n", so both terminators are one string. */
static const char term_crlf[] = "\r\n.\r\n";
static const char stuff_dot[] = ".";

static struct iovec iov_static(const char *p, size_t n)
{
	/* writev never writes through iov_base; the cast only drops const. */
	return (struct iovec){(void *)(uintptr_t)p, n};
}

/* Track whether the bytes so far end with CRLF, for the terminator. */
static void tail_note(uint8_t *last_cr, uint8_t *crlf, const char *p, size_t n)
{
	if (n == 0)
		return;
	bool prev_cr = n >= 2 ? p[n - 2] == '\r' : *last_cr != 0;
	*crlf = p[n - 1] == '\n' && prev_cr;
	*last_cr = p[n - 1] == '\r';
}

void smtp_stuff_begin(struct smtp_stuff_state *st)
{
	assert(st != NULL);
	/* The CRLF that ended the DATA command starts the first line, and an
	 * empty body needs no CRLF before ".". */
	*st = (struct smtp_stuff_state){.in_len = 0, .bol = 1, .last_cr = 0, .crlf = 1};
}

size_t smtp_stuff_iov(struct smtp_stuff_state *st, const char *in, size_t len, struct iovec *iov,
		      size_t iov_max, size_t *used)
{
	assert(st != NULL && used != NULL);
	assert((in != NULL && iov != NULL) || len == 0);
	size_t i = 0, n = 0;
	bool open = false; /* iov[n-1] is input ending at in + i: extend it */

	while (i < len) {
		if (st->bol && in[i] == '.') {
			if (n == iov_max)
				break;
			/* The extra dot is sent; the input's own dot starts the
			 * next entry.  bol drops now, so a stop right here
			 * resumes without stuffing this dot twice. */
			iov[n++] = iov_static(stuff_dot, 1);
			open = false;
			st->bol = 0;
			continue;
		}
		const char *nl = memchr(in + i, '\n', len - i);
		size_t end = nl != NULL ? (size_t)(nl - in) + 1 : len;
		if (!open) {
			if (n == iov_max)
				break;
			iov[n++] = iov_static(in + i, 0);
			open = true;
		}
		iov[n - 1].iov_len += end - i;
		tail_note(&st->last_cr, &st->crlf, in + i, end - i);
		st->bol = nl != NULL;
		i = end;
	}
	assert(n <= iov_max && i <= len);
	st->in_len += i;
	*used = i;
	return n;
}

size_t smtp_stuff_end(const struct smtp_stuff_state *st, struct iovec *iov)
{
	assert(st != NULL && iov != NULL);
	size_t skip = st->crlf ? 2 : 0;
	*iov = iov_static(term_crlf + skip, sizeof term_crlf - 1 - skip);
	return iov->iov_len;
}

void smtp_stuffed_begin(struct smtp_stuffed_state *st)
{
	assert(st != NULL);
	memset(st, 0, sizeof *st);
	st->bol = 1;
	st->crlf = 1;
}

int smtp_stuffed_scan(struct smtp_stuffed_state *st, const char *in, size_t len)
{
	assert(st != NULL);
	assert(in != NULL || len == 0);
	size_t i = 0;

	while (i < len) {
		if (st->dot) {
			/* "." then CR or LF: the receiver could take it for the
			 * end of data (4.1.1.4), or for a smuggled one. */
			if (in[i] == '\r' || in[i] == '\n')
				st->bad = 1;
			st->dot = 0;
		} else if (st->bol && in[i] == '.') {
			st->dot = 1;
			st->bol = 0;
			tail_note(&st->last_cr, &st->crlf, in + i, 1);
			i++;
			continue;
		}
		st->bol = 0;
		const char *nl = memchr(in + i, '\n', len - i);
		size_t end = nl != NULL ? (size_t)(nl - in) + 1 : len;
		tail_note(&st->last_cr, &st->crlf, in + i, end - i);
		st->bol = nl != NULL;
		i = end;
	}
	st->in_len += len;
	return st->bad ? SMTP_PARSE_INVALID : SMTP_PARSE_AGAIN;
}

int smtp_stuffed_end(const struct smtp_stuffed_state *st, struct iovec *iov)
{
	assert(st != NULL && iov != NULL);
	/* DATA stores the CRLF before "." as part of the message, so anything
	 * else means the spool does not hold what was received. */
	if (st->bad || !st->crlf)
		return SMTP_PARSE_INVALID;
	*iov = iov_static(term_crlf + 2, sizeof term_crlf - 3);
	return SMTP_PARSE_OK;
}

/* ---- LMTP (RFC 2033 4.2) ------------------------------------------------- */

void smtp_lmtp_begin(struct smtp_lmtp_tally *t, uint32_t accepted)
{
	assert(t != NULL);
	t->accepted = accepted;
	t->remaining = accepted;
}

int smtp_lmtp_reply(struct smtp_lmtp_tally *t, uint32_t *rcpt_index)
{
	assert(t != NULL && rcpt_index != NULL);
	assert(t->remaining <= t->accepted);
	if (t->remaining == 0)
		return SMTP_PARSE_INVALID; /* a reply nobody was owed */
	/* Replies come in the order of the successful RCPTs (4.2). */
	*rcpt_index = t->accepted - t->remaining;
	t->remaining--;
	return t->remaining > 0 ? SMTP_PARSE_AGAIN : SMTP_PARSE_OK;
}

/* ---- replies owed (RFC 5321 4.3.2, RFC 2920 3.1, RFC 2033 4.2) ---------- */

void smtp_owed_init(struct smtp_owed *o)
{
	assert(o != NULL);
	memset(o, 0, sizeof *o);
}

bool smtp_owed_add(struct smtp_owed *o, enum smtp_ask ask, uint32_t n)
{
	assert(o != NULL && ask > SMTP_ASK_NONE && ask < SMTP_ASK_COUNT);
	assert(o->runs <= SMTP_OWED_RUNS && o->total >= o->unsent);
	if (n == 0)
		return true;
	if (o->total > UINT32_MAX - n)
		return false;
	uint32_t tail = (o->head + o->runs + SMTP_OWED_RUNS - 1u) % SMTP_OWED_RUNS;
	if (o->runs > 0 && o->ask[tail] == ask) {
		o->count[tail] += n; /* RCPT after RCPT: one run */
	} else {
		if (o->runs == SMTP_OWED_RUNS)
			return false;
		tail = (o->head + o->runs) % SMTP_OWED_RUNS;
		o->ask[tail] = (uint8_t)ask;
		o->count[tail] = n;
		o->runs++;
	}
	o->total += n;
	o->unsent += n;
	return true;
}

void smtp_owed_sent(struct smtp_owed *o)
{
	assert(o != NULL);
	o->unsent = 0;
}

void smtp_owed_recv(struct smtp_owed *o)
{
	assert(o != NULL && o->total >= o->unsent);
	/* A command still in our buffer cannot have been answered yet: a reply
	 * to it in these bytes was sent before the server saw the command. */
	o->budget = o->total - o->unsent;
}

enum smtp_owed_verdict smtp_owed_check(const struct smtp_owed *o, uint32_t replies, size_t end,
				       size_t len)
{
	assert(o != NULL && end <= len && o->budget <= o->total);
	if (len == 0)
		return SMTP_OWED_OK;
	if (o->budget == 0)
		return SMTP_OWED_UNASKED;
	/* Equal count with bytes behind the last reply: the start of one more
	 * (the "250 " a man in the middle appends to the 220 to STARTTLS). */
	if (replies > o->budget || (replies == o->budget && end < len))
		return SMTP_OWED_SURPLUS;
	return SMTP_OWED_OK;
}

enum smtp_ask smtp_owed_take(struct smtp_owed *o)
{
	assert(o != NULL && o->budget <= o->total && o->total >= o->unsent);
	if (o->budget == 0)
		return SMTP_ASK_NONE;
	assert(o->runs > 0 && o->count[o->head] > 0);
	enum smtp_ask ask = (enum smtp_ask)o->ask[o->head];
	o->budget--;
	o->total--;
	if (--o->count[o->head] == 0) {
		o->head = (uint8_t)((o->head + 1u) % SMTP_OWED_RUNS);
		o->runs--;
	}
	assert(o->runs > 0 || o->total == 0);
	return ask;
}

enum smtp_ask smtp_owed_last(const struct smtp_owed *o)
{
	assert(o != NULL && o->budget <= o->total);
	uint32_t left = o->budget;

	for (uint32_t i = 0; left > 0 && i < o->runs; i++) {
		uint32_t r = (o->head + i) % SMTP_OWED_RUNS;
		if (o->count[r] >= left)
			return (enum smtp_ask)o->ask[r];
		left -= o->count[r];
	}
	return SMTP_ASK_NONE;
}

bool smtp_reply_fits(enum smtp_ask ask, uint16_t code)
{
	assert(ask > SMTP_ASK_NONE && ask < SMTP_ASK_COUNT);
	unsigned cls = code / 100u;

	switch (ask) {
	case SMTP_ASK_DATA:
		/* 4.3.2: DATA I: 354; a 250 here is the reply to something else
		 * (an earlier RCPT), and taking it would skip the body. */
		return code == 354 || cls == 4 || cls == 5;
	case SMTP_ASK_STARTTLS:
		/* RFC 3207 4: 220, or a refusal; no other 2xx starts TLS. */
		return code == 220 || cls == 4 || cls == 5;
	case SMTP_ASK_GREETING:
	case SMTP_ASK_EHLO:
	case SMTP_ASK_HELO:
	case SMTP_ASK_MAIL:
	case SMTP_ASK_RCPT:
	case SMTP_ASK_DOT:
	case SMTP_ASK_RSET:
	case SMTP_ASK_QUIT:
		return cls == 2 || cls == 4 || cls == 5;
	case SMTP_ASK_NONE:
	case SMTP_ASK_COUNT:
	default:
		abort();
	}
}

const char *smtp_ask_name(enum smtp_ask ask)
{
	static const char *const names[SMTP_ASK_COUNT] = {
	    [SMTP_ASK_NONE] = "nothing",      [SMTP_ASK_GREETING] = "the greeting",
	    [SMTP_ASK_EHLO] = "EHLO",	      [SMTP_ASK_HELO] = "HELO",
	    [SMTP_ASK_STARTTLS] = "STARTTLS", [SMTP_ASK_MAIL] = "MAIL",
	    [SMTP_ASK_RCPT] = "RCPT",	      [SMTP_ASK_DATA] = "DATA",
	    [SMTP_ASK_DOT] = "the final dot", [SMTP_ASK_RSET] = "RSET",
	    [SMTP_ASK_QUIT] = "QUIT",
	};
	assert((unsigned)ask < SMTP_ASK_COUNT);
	return names[ask];
}

/* ---- classification (RFC 5321 4.2.1) ------------------------------------- */

enum smtp_outcome smtp_reply_outcome(uint16_t code)
{
	switch (code / 100) {
	case 2:
		return SMTP_OUTCOME_DONE;
	case 3:
		return SMTP_OUTCOME_MORE;
	case 5:
		return SMTP_OUTCOME_BOUNCE;
	default:
		/* 4xx, and 0 for a lost connection or a broken reply: the
		 * message may well go through later (4.2.1, 4.5.4.1). */
		return SMTP_OUTCOME_DEFER;
	}
}

/* Case-insensitive: does lit occur in p[0..n)? */
static bool ci_contains(const char *p, size_t n, const char *lit)
{
	size_t k = strlen(lit);

	for (size_t i = 0; k <= n && i <= n - k; i++) {
		size_t j = 0;

		while (j < k && ch_lower((uint8_t)p[i + j]) == (uint8_t)lit[j])
			j++;
		if (j == k)
			return true;
	}
	return false;
}

bool smtp_reply_rcpt_overflow(const struct smtp_reply *r)
{
	assert(r != NULL && r->esc_len <= SMTP_ESC_MAX && r->text_len <= SMTP_REPLY_TEXT_MAX);
	if (r->code != 452 && r->code != 552)
		return false;
	/* RFC 3463 3.6: X.5.3 is "too many recipients"; its class digit
	 * matches the code's (esc_len_at checked that). */
	if (r->esc_len > 0)
		return strcmp(r->esc + 1, ".5.3") == 0;
	return r->code == 452 || ci_contains(r->text, r->text_len, "too many recipients");
}

size_t smtp_reply_diag(const struct smtp_reply *r, char *out, size_t cap)
{
	assert(r != NULL && out != NULL && cap >= 1);
	assert(r->code >= 200 && r->code <= 559 && r->text_len <= SMTP_REPLY_TEXT_MAX);
	int n = snprintf(out, cap, "smtp; %u%s%.*s", (unsigned)r->code, r->text_len > 0 ? " " : "",
			 (int)r->text_len, r->text);
	assert(n > 0);
	size_t k = (size_t)n < cap ? (size_t)n : cap - 1;
	/* Cut before a UTF-8 character the room split, never inside it. */
	if (k < (size_t)n) {
		size_t lead = k;
		while (lead > 0 && ((uint8_t)out[lead - 1] & 0xc0) == 0x80)
			lead--;
		if (lead > 0 && (uint8_t)out[lead - 1] >= 0xc0 &&
		    smtp_utf8_len(out + lead - 1, k - (lead - 1)) == 0)
			k = lead - 1;
		out[k] = '\0';
	}
	return k;
}

size_t smtp_reply_status(const struct smtp_reply *r, char out[SMTP_ESC_MAX + 1])
{
	assert(r != NULL && out != NULL);
	assert(r->esc_len <= SMTP_ESC_MAX);
	if (r->esc_len > 0) {
		memcpy(out, r->esc, r->esc_len);
		out[r->esc_len] = '\0';
		return r->esc_len;
	}
	static const char *const by_outcome[] = {
	    [SMTP_OUTCOME_DONE] = "2.0.0",
	    [SMTP_OUTCOME_MORE] = "4.0.0",
	    [SMTP_OUTCOME_DEFER] = "4.0.0",
	    [SMTP_OUTCOME_BOUNCE] = "5.0.0",
	};
	memcpy(out, by_outcome[smtp_reply_outcome(r->code)], 6);
	return 5;
}
