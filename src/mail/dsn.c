/*
 * mail/dsn — the notify decision and the DSN builder; see mail/dsn.h for
 * the contract.  Two passes over the original: pass 1 (scan_*) measures what
 * part 3 will hold and picks a boundary that no embedded line can collide
 * with; pass 2 (emit_*) copies it.  Everything else is written from the
 * envelope and the results.
 */
#include "mail/dsn.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "smtp/parse.h"

#define DSN_STOP 1 /* sink return: this pass has all the bytes it needs */

/* The last character of a boundary; pass 1 marks the ones embedded lines
 * use.  36 fit the bit set below. */
static const char boundary_alphabet[] = "0123456789abcdefghijklmnopqrstuvwxyz";
#define BOUNDARY_CHOICES (sizeof boundary_alphabet - 1)
_Static_assert(BOUNDARY_CHOICES <= 64, "candidate set is a uint64_t");

static bool str_ascii(struct spool_str s);

/* ---- notify decision ----------------------------------------------------- */

bool dsn_should_notify(uint8_t notify, enum dsn_action action, bool delay_default)
{
	/* RFC 3461 4.1: NEVER excludes every other value. */
	if (notify & SMTP_NOTIFY_NEVER)
		return false;
	/* RFC 3461 4.1: without NOTIFY, "FAILURE" or "FAILURE,DELAY" at the
	 * MTA's discretion: the operator's delay-notice setting decides. */
	if (notify == 0)
		return action == DSN_ACTION_FAILED ||
		       (action == DSN_ACTION_DELAYED && delay_default);
	switch (action) {
	case DSN_ACTION_FAILED:
		return (notify & SMTP_NOTIFY_FAILURE) != 0;
	case DSN_ACTION_DELAYED:
		return (notify & SMTP_NOTIFY_DELAY) != 0;
	case DSN_ACTION_DELIVERED:
	case DSN_ACTION_RELAYED:
	case DSN_ACTION_EXPANDED:
		return (notify & SMTP_NOTIFY_SUCCESS) != 0;
	}
	return false;
}

bool dsn_needed(const struct spool_env *env)
{
	assert(env != NULL);
	/* RFC 5321 4.5.5: a message with the null reverse-path
	 * is itself a notification; answering it could loop forever. */
	return env->mail_from.len != 0;
}

void dsn_bounce_env(const struct spool_env *orig, const struct dsn_info *info,
		    struct spool_env *out, struct spool_rcpt *rcpt)
{
	assert(orig != NULL && info != NULL && out != NULL && rcpt != NULL);
	assert(orig->mail_from.len != 0);
	*rcpt = (struct spool_rcpt){.addr = orig->mail_from, .notify = SMTP_NOTIFY_NEVER};
	*out = (struct spool_env){0};
	out->mail_from = (struct spool_str){.ptr = "", .len = 0};
	/* The DSN's own header section is the builder's ASCII plus To: the
	 * sender: with an ASCII sender it needs no SMTPUTF8 at a hop that
	 * lacks it (RFC 6531 3.4; the RFC 6533 parts travel as 8-bit body). */
	out->flags = (info->smtputf8 ? SPOOL_ENV_SMTPUTF8 : 0) |
		     (info->body_8bit ? SPOOL_ENV_8BIT : 0) |
		     (str_ascii(orig->mail_from) ? SPOOL_ENV_HDR_ASCII : 0);
	out->body_type = (uint8_t)(info->body_8bit ? SMTP_BODY_8BITMIME : SMTP_BODY_7BIT);
	out->ret = SMTP_RET_UNSPEC;
	out->rcpt_count = 1;
	out->rcpts = rcpt;
}

/* ---- output -------------------------------------------------------------- */

/* Buffered writer in front of the caller's callback.  Errors are sticky so
 * the writers below need no checks; dsn_build looks once at the end. */
struct out {
	dsn_write_fn fn;
	void *ctx;
	uint64_t total;
	int err;
	size_t len;
	char buf[DSN_OUT_CHUNK];
};

static void out_flush(struct out *o)
{
	if (o->len != 0 && o->err == 0) {
		int rc = o->fn(o->ctx, o->buf, o->len);
		if (rc != 0)
			o->err = rc < 0 ? rc : -EIO;
		o->total += o->len;
	}
	o->len = 0;
}

static void out_put(struct out *o, const char *p, size_t n)
{
	while (n != 0 && o->err == 0) {
		size_t k = sizeof o->buf - o->len;
		if (k > n)
			k = n;
		memcpy(o->buf + o->len, p, k);
		o->len += k;
		p += k;
		n -= k;
		if (o->len == sizeof o->buf)
			out_flush(o);
	}
}

static void out_str(struct out *o, const char *s)
{
	out_put(o, s, strlen(s));
}

/* For fields whose arguments are bounded (names, numbers, dates). */
__attribute__((format(printf, 2, 3))) static void out_fmt(struct out *o, const char *fmt, ...)
{
	char line[DSN_LINE_MAX + 3];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	assert(n >= 0 && (size_t)n < sizeof line);
	out_put(o, line, (size_t)n);
}

/* RFC 5322 3.3 date-time in UTC.  Names come from tables, not strftime, so
 * the locale of the process never leaks into the message. */
static const char *date_str(char buf[48], int64_t t)
{
	static const char wday[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char mon[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					"Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t tt = (time_t)t;
	struct tm tm;

	if (gmtime_r(&tt, &tm) == NULL) {
		tt = 0;
		gmtime_r(&tt, &tm);
	}
	snprintf(buf, 48, "%s, %02d %s %04d %02d:%02d:%02d +0000", wday[tm.tm_wday], tm.tm_mday,
		 mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
	return buf;
}

/* ---- text helpers -------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at p (RFC 3629 4: no overlongs,
 * no surrogates, nothing past U+10FFFF), 1 for ASCII, 0 when malformed. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	unsigned c = p[0], lo = 0x80, hi = 0xbf;
	size_t len;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3, lo = c == 0xe0 ? 0xa0 : lo, hi = c == 0xed ? 0x9f : hi;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4, lo = c == 0xf0 ? 0x90 : lo, hi = c == 0xf4 ? 0x8f : hi;
	else
		return 0;
	if (len > n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return len;
}

static bool str_ascii(struct spool_str s)
{
	for (uint32_t i = 0; i < s.len; i++)
		if ((unsigned char)s.ptr[i] >= 0x80)
			return false;
	return true;
}

/* Visible ASCII only: what xtext, host names and ENVID may hold. */
static bool str_visible(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
			return false;
	return true;
}

/* Clean diagnostic text into out[DSN_DIAG_MAX]: header-safe (no CR/LF, so
 * a remote reply can never inject a field), single spaces (so folding has
 * places to break), valid UTF-8 in the RFC 6533 form and ASCII otherwise
 * (RFC 3464 2.1: the report is 7-bit).  Returns the length. */
static size_t diag_clean(struct spool_str in, bool utf8, char *out)
{
	const unsigned char *p = (const unsigned char *)in.ptr;
	const size_t keep = DSN_DIAG_MAX - (sizeof DSN_DIAG_CUT - 1);
	size_t i = 0, k = 0, cut = 0;
	bool space = true, over = false;

	while (i < in.len) {
		size_t cl = utf8_len(p + i, in.len - i);
		const char *src = (const char *)p + i;
		size_t sl = 1;

		if (p[i] <= 0x20 || p[i] == 0x7f) {
			i++;
			if (space)
				continue;
			src = " ", space = true;
		} else if (cl == 0 || (cl > 1 && !utf8)) {
			src = "?", space = false;
			i += cl ? cl : 1;
		} else {
			sl = cl, space = false;
			i += cl;
		}
		if (k + sl > DSN_DIAG_MAX) {
			over = true;
			break;
		}
		memcpy(out + k, src, sl);
		k += sl;
		if (k <= keep)
			cut = k;
	}
	if (over)
		k = cut;
	while (k != 0 && out[k - 1] == ' ')
		k--;
	if (over) {
		memcpy(out + k, DSN_DIAG_CUT, sizeof DSN_DIAG_CUT - 1);
		k += sizeof DSN_DIAG_CUT - 1;
	}
	assert(k <= DSN_DIAG_MAX);
	return k;
}

/* Write s (words separated by single spaces) from column col.  A word that
 * would end past `limit` starts a new line with brk (CRLF + white space:
 * RFC 5322 2.2.3 folding); a word too long for any line is split so no line
 * passes DSN_LINE_MAX (RFC 5322 2.1.1), never inside a UTF-8 character. */
static void out_fold(struct out *o, size_t col, const char *s, size_t n, const char *brk,
		     size_t limit)
{
	const size_t indent = strlen(brk) - 2;
	size_t i = 0;

	assert(indent >= 1 && indent < 16);
	while (i < n) {
		const char *sp = memchr(s + i, ' ', n - i);
		size_t w = sp ? (size_t)(sp - (s + i)) : n - i;

		if (i != 0 && col + 1 + w > limit) {
			out_str(o, brk);
			col = indent;
		} else if (i != 0) {
			out_put(o, " ", 1);
			col++;
		}
		while (col + w > DSN_LINE_MAX) {
			size_t k = DSN_LINE_MAX - col;
			while (k > 1 && ((unsigned char)s[i + k] & 0xc0) == 0x80)
				k--;
			out_put(o, s + i, k);
			i += k, w -= k;
			out_str(o, brk);
			col = indent;
		}
		out_put(o, s + i, w);
		col += w;
		i += w + (sp ? 1 : 0);
	}
}

/* RFC 3464 2.3.2 / RFC 6533 3: "rfc822;addr" for ASCII, else "utf-8;" with
 * utf-8-addr-unitext, where '\', '+' and '=' travel as \x{HEX}. */
static void out_typed_addr(struct out *o, struct spool_str a)
{
	if (str_ascii(a)) {
		out_str(o, "rfc822;");
		out_put(o, a.ptr, a.len);
		return;
	}
	out_str(o, "utf-8;");
	for (uint32_t i = 0; i < a.len; i++) {
		char c = a.ptr[i];
		if (c == '\\' || c == '+' || c == '=')
			out_fmt(o, "\\x{%02X}", (unsigned)c);
		else
			out_put(o, &c, 1);
	}
}

/* Octets out_typed_addr writes after the type, to bound the field line. */
static size_t typed_addr_len(struct spool_str a)
{
	size_t n = a.len;
	if (str_ascii(a))
		return n;
	for (uint32_t i = 0; i < a.len; i++)
		if (a.ptr[i] == '\\' || a.ptr[i] == '+' || a.ptr[i] == '=')
			n += 5;
	return n;
}

/* ---- parameters ---------------------------------------------------------- */

/* State derived once, before any byte is written. */
struct build {
	const struct dsn_params *p;
	bool global;	/* RFC 6533 form */
	bool full;	/* part 3 is the whole message (RET=FULL) */
	bool have_orig; /* part 3 present */
	bool truncated; /* header section cut at DSN_HDRS_MAX */
	bool saw_8bit;	/* embedded bytes have 8-bit octets */
	bool any_failed, any_delayed, any_success;
	uint64_t orig_len; /* unstuffed octets of part 3 */
	char qid[SPOOL_QID_LEN + 1];
	char boundary[DSN_BOUNDARY_MAX];
	char msgid[DSN_MSGID_MAX];
};

/* Host names we put in From:, Message-ID and Reporting-MTA: letters,
 * digits, '-', '.', '_' and an address literal's "[]:" — nothing that
 * could end an angle address or a field. */
static bool name_ok(const char *s)
{
	if (s == NULL)
		return false;
	size_t n = strnlen(s, DSN_NAME_MAX + 1);
	if (n == 0 || n > DSN_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      strchr("-._[]:", c) != NULL))
			return false;
	}
	return true;
}

/* RFC 3463 2 / RFC 3464 2.3.4: class "." 1*3digit "." 1*3digit, and the
 * class must agree with the action (2.3.3).  A failure may carry 4.x.x: the
 * last transient error of a message whose retry time ran out (4.4.7). */
static bool status_ok(const char *s, enum dsn_action a)
{
	if (s == NULL || s[0] < '0' || s[0] > '9' || s[1] != '.')
		return false;
	const char *q = s + 2;
	for (int part = 0; part < 2; part++) {
		size_t d = 0;
		while (d < 4 && q[d] >= '0' && q[d] <= '9')
			d++;
		if (d == 0 || d > 3 || q[d] != (part == 0 ? '.' : '\0'))
			return false;
		q += d + 1;
	}
	switch (a) {
	case DSN_ACTION_FAILED:
		return s[0] == '5' || s[0] == '4';
	case DSN_ACTION_DELAYED:
		return s[0] == '4';
	case DSN_ACTION_DELIVERED:
	case DSN_ACTION_RELAYED:
	case DSN_ACTION_EXPANDED:
		return s[0] == '2';
	}
	return false;
}

/* Envelope addresses come from our own parser; anything else is a bug in
 * the caller, refused rather than written into a header. */
static bool addr_ok(struct spool_str a)
{
	if (a.len == 0 || a.len > SMTP_PATH_MAX || a.ptr == NULL)
		return false;
	for (uint32_t i = 0; i < a.len; i++)
		if ((unsigned char)a.ptr[i] < 0x20 || a.ptr[i] == 0x7f)
			return false;
	return typed_addr_len(a) + 64 <= DSN_LINE_MAX;
}

static int env_rcpt(const struct spool_env *env, uint32_t i, struct spool_rcpt *out)
{
	if (i >= env->rcpt_count)
		return -EINVAL;
	if (env->rcpts != NULL) {
		*out = env->rcpts[i];
		return 0;
	}
	return spool_env_rcpt(env, i, out);
}

static int results_check(struct build *b)
{
	const struct dsn_params *p = b->p;

	for (uint32_t i = 0; i < p->result_count; i++) {
		const struct dsn_rcpt_result *r = &p->results[i];
		struct spool_rcpt rc;

		if (!status_ok(r->status, r->action) || env_rcpt(p->env, r->rcpt, &rc) != 0 ||
		    !addr_ok(rc.addr))
			return -EINVAL;
		if (r->diag.len != 0 && r->diag.ptr == NULL)
			return -EINVAL;
		b->any_failed |= r->action == DSN_ACTION_FAILED;
		b->any_delayed |= r->action == DSN_ACTION_DELAYED;
		b->any_success |= r->action >= DSN_ACTION_DELIVERED;
		/* RFC 6533: a non-ASCII address needs the internationalized
		 * report even if the message itself did not say SMTPUTF8. */
		if (!str_ascii(rc.addr))
			b->global = true;
	}
	return 0;
}

static int params_check(struct build *b)
{
	const struct dsn_params *p = b->p;

	if (p->env == NULL || p->write == NULL || !name_ok(p->reporting_mta) ||
	    !name_ok(p->msgid_domain) || p->now_s <= 0)
		return -EINVAL;
	if (p->result_count > DSN_RCPT_MAX)
		return -E2BIG;
	if (p->result_count == 0 || p->results == NULL)
		return -EINVAL;
	/* Never bounce a bounce (RFC 5321 4.5.5): the caller should have
	 * asked dsn_needed(). */
	if (!dsn_needed(p->env) || !addr_ok(p->env->mail_from))
		return -EINVAL;
	b->global = (p->env->flags & SPOOL_ENV_SMTPUTF8) != 0 || !str_ascii(p->env->mail_from);
	b->full = p->env->ret == SMTP_RET_FULL;
	b->have_orig = p->source != NULL;
	return results_check(b);
}

/* ---- the original: shared unstuffing front end --------------------------- */

typedef int (*stage_fn)(void *st, const char *p, size_t n);

/* Sits between the caller's source and a pass: undoes dot-stuffing when the
 * message was stored in DATA wire form (RFC 5321 4.5.2), in slices small
 * enough for the stack. */
struct feed {
	bool stuffed;
	bool bol; /* smtp_unstuff's "at line start" carried across calls */
	stage_fn stage;
	void *st;
};

static int feed_sink(void *ctx, const char *p, size_t n)
{
	struct feed *f = ctx;
	char tmp[DSN_OUT_CHUNK];

	while (n != 0) {
		size_t k = n < sizeof tmp ? n : sizeof tmp;
		const char *q = p;
		size_t m = k;

		if (f->stuffed) {
			m = smtp_unstuff(p, k, tmp, &f->bol);
			q = tmp;
		}
		int rc = m ? f->stage(f->st, q, m) : 0;
		if (rc != 0)
			return rc;
		p += k;
		n -= k;
	}
	return 0;
}

/* One pass over the original.  0 when the source ended or the stage had
 * enough (DSN_STOP); a negative error as is; another positive value from a
 * misbehaving source becomes -EIO. */
static int feed_run(const struct build *b, stage_fn stage, void *st)
{
	struct feed f = {.stuffed = (b->p->env->flags & SPOOL_ENV_STUFFED) != 0,
			 .bol = true,
			 .stage = stage,
			 .st = st};
	int rc = b->p->source(b->p->source_ctx, feed_sink, &f);

	if (rc == DSN_STOP)
		return 0;
	return rc > 0 ? -EIO : rc;
}

/* ---- pass 1: measure and pick the boundary ------------------------------- */

struct scan {
	bool hdrs;	/* only the header section is embedded */
	bool in_hdr;	/* still inside the header section */
	bool truncated; /* header section longer than DSN_HDRS_MAX */
	bool saw_8bit;
	unsigned char first; /* first octet of the current line */
	uint64_t off;	     /* unstuffed octets seen */
	uint64_t line_start; /* offset of the current line */
	uint64_t match;	     /* octets of pat matched from the line start */
	uint64_t hdr_keep;   /* header octets to embed (whole lines) */
	uint64_t taken;	     /* bit i: boundary_alphabet[i] is unusable */
	const char *pat;     /* "--" + boundary stem */
	size_t pat_len;
};

/* End of a line inside the header section (RFC 5322 2.1: it ends at the
 * first empty line).  True when pass 1 can stop. */
static bool scan_eol(struct scan *s)
{
	uint64_t len = s->off - s->line_start; /* LF included */

	if (!s->hdrs || !s->in_hdr)
		return false;
	if (len == 1 || (len == 2 && s->first == '\r')) {
		s->in_hdr = false; /* RFC 6522 / RFC 3462: the blank line is not returned */
		return true;
	}
	if (s->off <= DSN_HDRS_MAX) {
		s->hdr_keep = s->off;
		return false;
	}
	s->truncated = true;
	return true;
}

static int scan_bytes(void *ctx, const char *p, size_t n)
{
	struct scan *s = ctx;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		uint64_t col = s->off - s->line_start;

		/* A header line that runs past the bound (the blank line that
		 * ends a section of exactly DSN_HDRS_MAX octets fits in +2). */
		if (s->hdrs && s->in_hdr && s->off >= (uint64_t)DSN_HDRS_MAX + 2) {
			s->truncated = true;
			return DSN_STOP;
		}
		if (col == 0)
			s->first = c;
		if (s->match == col) {
			if (col < s->pat_len) {
				s->match += c == (unsigned char)s->pat[col];
			} else {
				const char *hit = memchr(boundary_alphabet, c, BOUNDARY_CHOICES);
				if (hit != NULL)
					s->taken |= 1ull << (hit - boundary_alphabet);
			}
		}
		s->saw_8bit |= c >= 0x80;
		s->off++;
		if (c == '\n') {
			if (scan_eol(s))
				return DSN_STOP;
			s->line_start = s->off;
			s->match = 0;
		}
	}
	return 0;
}

/* Pass 1 and the boundary choice (see the header comment). */
static int scan_original(struct build *b, const char *stem)
{
	char pat[DSN_BOUNDARY_MAX + 2];
	struct scan s = {.hdrs = !b->full, .in_hdr = true, .pat = pat};

	s.pat_len = (size_t)snprintf(pat, sizeof pat, "--%s", stem);
	if (b->have_orig) {
		int rc = feed_run(b, scan_bytes, &s);
		if (rc != 0)
			return rc;
		/* Header section without a blank line: all of it is headers. */
		if (s.hdrs && s.in_hdr && !s.truncated) {
			if (s.off <= DSN_HDRS_MAX)
				s.hdr_keep = s.off;
			else
				s.truncated = true;
		}
	}
	b->orig_len = s.hdrs ? s.hdr_keep : s.off;
	b->truncated = s.truncated;
	b->saw_8bit = s.saw_8bit;
	for (size_t i = 0; i < BOUNDARY_CHOICES; i++) {
		if (!(s.taken & (1ull << i))) {
			size_t sl = strlen(stem);
			assert(sl + 2 <= sizeof b->boundary);
			memcpy(b->boundary, stem, sl);
			b->boundary[sl] = boundary_alphabet[i];
			b->boundary[sl + 1] = '\0';
			return 0;
		}
	}
	return -EEXIST;
}

/* ---- pass 2: copy -------------------------------------------------------- */

struct emit {
	struct out *o;
	uint64_t left; /* octets still to copy */
};

static int emit_bytes(void *ctx, const char *p, size_t n)
{
	struct emit *e = ctx;

	if (n > e->left)
		n = (size_t)e->left;
	out_put(e->o, p, n);
	if (e->o->err != 0)
		return e->o->err;
	e->left -= n;
	return e->left == 0 ? DSN_STOP : 0;
}

static int emit_original(const struct build *b, struct out *o)
{
	struct emit e = {.o = o, .left = b->orig_len};

	if (e.left == 0)
		return 0;
	int rc = feed_run(b, emit_bytes, &e);
	if (rc != 0)
		return rc;
	/* The boundary was checked against pass 1's bytes: a source that
	 * gave fewer now broke the contract and the output is unusable. */
	return e.left == 0 ? 0 : -EIO;
}

/* ---- the message --------------------------------------------------------- */

static void write_top(struct out *o, const struct build *b)
{
	const struct dsn_params *p = b->p;
	const struct spool_str from = p->env->mail_from;
	char d[48];

	out_fmt(o, "From: \"Mail Delivery System\" <MAILER-DAEMON@%s>\r\n", p->reporting_mta);
	out_str(o, "To: <");
	out_put(o, from.ptr, from.len);
	out_str(o, ">\r\n");
	out_fmt(o, "Subject: %s\r\n",
		b->any_failed	 ? "Undelivered Mail Returned to Sender"
		: b->any_delayed ? "Delayed Mail (still being retried)"
				 : "Successful Mail Delivery Report");
	out_fmt(o, "Date: %s\r\n", date_str(d, p->now_s));
	out_fmt(o, "Message-ID: %s\r\n", b->msgid);
	/* RFC 3834 5: marks the DSN as automatic so responders stay quiet. */
	out_str(o, "Auto-Submitted: auto-replied\r\n");
	out_str(o, "MIME-Version: 1.0\r\n");
	out_fmt(o,
		"Content-Type: multipart/report; report-type=delivery-status;\r\n"
		"\tboundary=\"%s\"\r\n",
		b->boundary);
	/* RFC 2045 6.4: a multipart is 8bit when any part is. */
	if (b->global || b->saw_8bit)
		out_str(o, "Content-Transfer-Encoding: 8bit\r\n");
	out_str(o, "\r\nThis is a MIME-encapsulated delivery status notification (RFC 3464).\r\n");
}

static void write_part_head(struct out *o, const struct build *b, const char *desc,
			    const char *type, bool eight)
{
	out_fmt(o, "\r\n--%s\r\nContent-Description: %s\r\nContent-Type: %s\r\n", b->boundary, desc,
		type);
	if (eight)
		out_str(o, "Content-Transfer-Encoding: 8bit\r\n");
	out_str(o, "\r\n");
}

static const char *action_word(enum dsn_action a)
{
	switch (a) {
	case DSN_ACTION_FAILED:
		return "failed";
	case DSN_ACTION_DELAYED:
		return "delayed";
	case DSN_ACTION_DELIVERED:
		return "delivered";
	case DSN_ACTION_RELAYED:
		return "relayed";
	case DSN_ACTION_EXPANDED:
		return "expanded";
	}
	abort(); /* results_check refused unknown actions */
}

/* The "type;" prefix a diagnostic lacks, if any (RFC 3464 2.3.6:
 * diagnostic-type ";" text; the type is an atom). */
static const char *diag_prefix(const char *s, size_t n)
{
	size_t i = 0;
	while (i < n && (s[i] == '-' || (s[i] >= '0' && s[i] <= '9') ||
			 ((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z')))
		i++;
	if (i != 0 && i < n && s[i] == ';')
		return "";
	bool reply = n >= 3 && s[0] >= '2' && s[0] <= '5' && s[1] >= '0' && s[1] <= '9' &&
		     s[2] >= '0' && s[2] <= '9' && (n == 3 || s[3] == ' ' || s[3] == '-');
	return reply ? "smtp; " : "X-ringmx; ";
}

/* The cleaned diagnostic with its type: into buf, returns the length. */
static size_t diag_value(const struct build *b, const struct dsn_rcpt_result *r, char *buf)
{
	char clean[DSN_DIAG_MAX];
	size_t n = diag_clean(r->diag, b->global, clean);

	if (n == 0)
		return 0;
	const char *pre = diag_prefix(clean, n);
	size_t pl = strlen(pre);
	memcpy(buf, pre, pl);
	memcpy(buf + pl, clean, n);
	return pl + n;
}

/* Remote MTA names come from DNS or configuration: anything that is not a
 * visible ASCII octet becomes '?', and the name is cut at DSN_NAME_MAX. */
static size_t mta_clean(struct spool_str s, char out[DSN_NAME_MAX])
{
	size_t n = s.len < DSN_NAME_MAX ? s.len : DSN_NAME_MAX;
	for (size_t i = 0; i < n; i++)
		out[i] = str_visible(s.ptr + i, 1) ? s.ptr[i] : '?';
	return n;
}

#define DIAG_BUF (DSN_DIAG_MAX + 16)

static void text_rcpt(struct out *o, const struct build *b, const struct dsn_rcpt_result *r)
{
	struct spool_rcpt rc;
	char buf[DIAG_BUF], d[48];

	if (env_rcpt(b->p->env, r->rcpt, &rc) != 0)
		return; /* checked in results_check */
	out_str(o, "\r\n<");
	out_put(o, rc.addr.ptr, rc.addr.len);
	out_fmt(o, ">: %s (%s)\r\n", action_word(r->action), r->status);
	if (r->remote_mta.len != 0) {
		char m[DSN_NAME_MAX];
		size_t mn = mta_clean(r->remote_mta, m);
		out_fmt(o, "    remote server: %.*s\r\n", (int)mn, m);
	}
	size_t n = diag_value(b, r, buf);
	if (n != 0) {
		out_str(o, "    ");
		out_fold(o, 4, buf, n, "\r\n    ", 76);
		out_str(o, "\r\n");
	}
	if (r->action == DSN_ACTION_DELAYED && r->retry_until_s > 0)
		out_fmt(o, "    will be retried until: %s\r\n", date_str(d, r->retry_until_s));
}

/* Part 1, for people (RFC 6522 3: human-readable, any language).  No line
 * it writes starts with "--" (boundary safety): recipients start with '<',
 * continuation lines with spaces. */
static void write_text(struct out *o, const struct build *b)
{
	const struct dsn_params *p = b->p;

	write_part_head(o, b, "Notification",
			b->global ? "text/plain; charset=utf-8" : "text/plain; charset=us-ascii",
			b->global);
	out_fmt(o, "This report comes from the mail system at %s.\r\n\r\n", p->reporting_mta);
	if (b->any_failed)
		out_str(o, "Your message could not be delivered to one or more recipients.\r\n"
			   "The mail system has given up on them; the reasons are below.\r\n");
	if (b->any_delayed)
		out_str(o, "Your message has not yet been delivered to one or more recipients.\r\n"
			   "The mail system is still trying; you need not send it again.\r\n");
	if (b->any_success)
		out_str(o, "Your message was delivered, or passed on to a system that does not\r\n"
			   "report delivery, for the recipients marked so below.\r\n");
	for (uint32_t i = 0; i < p->result_count; i++)
		text_rcpt(o, b, &p->results[i]);
	out_str(o, "\r\n");
	if (!b->have_orig)
		out_str(o, "The original message could not be read, so it is not attached.\r\n");
	else if (b->truncated)
		out_fmt(o,
			"The header section of the original message is longer than %u octets;\r\n"
			"only its first %" PRIu64 " octets are attached.\r\n",
			(unsigned)DSN_HDRS_MAX, b->orig_len);
	else
		out_str(o, b->full ? "The original message is attached.\r\n"
				   : "The header section of the original message is attached.\r\n");
}

static int hex_val(char c)
{
	/* RFC 3461 4: hexchar digits are upper case. */
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* xtext decode into out (at most n octets); false when malformed or when the
 * result has an octet that does not belong in a header field. */
static bool xtext_decode(const char *x, size_t n, char *out, size_t *out_len)
{
	size_t i = 0, k = 0;

	while (i < n) {
		int c = (unsigned char)x[i++];
		if (c == '+') {
			int hi = i + 1 < n ? hex_val(x[i]) : -1,
			    lo = hi >= 0 ? hex_val(x[i + 1]) : -1;
			if (lo < 0)
				return false;
			c = hi << 4 | lo;
			i += 2;
		}
		if (c < 0x20 || c >= 0x7f)
			return false;
		out[k++] = (char)c;
	}
	*out_len = k;
	return true;
}

/* RFC 3461 4.2 / 6.3: the ORCPT value is addr-type ";" xtext and the DSN
 * shows it decoded.  The utf-8 type is kept as given (RFC 6533 3: its
 * utf-8-addr-xtext is already the reported form).  A decoded form with
 * control or non-ASCII octets falls back to the xtext, which is safe. */
static void write_orcpt(struct out *o, struct spool_str v)
{
	const char *semi = v.len ? memchr(v.ptr, ';', v.len) : NULL;
	char dec[SMTP_ORCPT_MAX];
	size_t n = 0;

	if (semi == NULL || semi == v.ptr || v.len > SMTP_ORCPT_MAX || !str_visible(v.ptr, v.len))
		return;
	size_t tl = (size_t)(semi - v.ptr), xl = v.len - tl - 1;
	bool keep = (tl == 5 && strncasecmp(v.ptr, "utf-8", 5) == 0) ||
		    !xtext_decode(semi + 1, xl, dec, &n);

	out_str(o, "Original-Recipient: ");
	out_put(o, v.ptr, tl + 1);
	if (keep)
		out_put(o, semi + 1, xl);
	else
		out_put(o, dec, n);
	out_str(o, "\r\n");
}

/* RFC 3464 2.2.1 / RFC 3461 4.4: the ENVID travels as xtext and the report
 * shows it decoded ("ENV-1a+2Bx" is "ENV-1a+x"), as Postfix does.  A value
 * that is not xtext is left out; one that decodes to a control or non-ASCII
 * octet is shown as given, which is safe (xtext is visible ASCII) and still
 * identifies the message to its sender. */
static void write_envid(struct out *o, struct spool_str v)
{
	char dec[SMTP_ENVID_MAX];
	size_t n = 0;

	if (v.len == 0 || v.len > SMTP_ENVID_MAX || !smtp_xtext_valid(v.ptr, v.len))
		return;
	out_str(o, "Original-Envelope-Id: ");
	if (xtext_decode(v.ptr, v.len, dec, &n))
		out_put(o, dec, n);
	else
		out_put(o, v.ptr, v.len);
	out_str(o, "\r\n");
}

/* One per-recipient block (RFC 3464 2.3, fields in its ABNF order),
 * preceded by its blank line. */
static void status_rcpt(struct out *o, const struct build *b, const struct dsn_rcpt_result *r)
{
	struct spool_rcpt rc;
	char buf[DIAG_BUF], d[48];

	if (env_rcpt(b->p->env, r->rcpt, &rc) != 0)
		return; /* checked in results_check */
	out_str(o, "\r\n");
	write_orcpt(o, rc.orcpt);
	out_str(o, "Final-Recipient: ");
	out_typed_addr(o, rc.addr);
	out_fmt(o, "\r\nAction: %s\r\nStatus: %s\r\n", action_word(r->action), r->status);
	if (r->remote_mta.len != 0) {
		char m[DSN_NAME_MAX];
		size_t mn = mta_clean(r->remote_mta, m);
		out_fmt(o, "Remote-MTA: dns; %.*s\r\n", (int)mn, m);
	}
	size_t n = diag_value(b, r, buf);
	if (n != 0) {
		out_str(o, "Diagnostic-Code: ");
		out_fold(o, strlen("Diagnostic-Code: "), buf, n, "\r\n ", DSN_FOLD_COL);
		out_str(o, "\r\n");
	}
	if (r->last_attempt_s > 0)
		out_fmt(o, "Last-Attempt-Date: %s\r\n", date_str(d, r->last_attempt_s));
	if (r->action == DSN_ACTION_DELAYED && r->retry_until_s > 0)
		out_fmt(o, "Will-Retry-Until: %s\r\n", date_str(d, r->retry_until_s));
}

/* Part 2 (RFC 3464 2.2 per-message fields, then 2.3 per recipient). */
static void write_status(struct out *o, const struct build *b)
{
	const struct dsn_params *p = b->p;
	const struct spool_env *env = p->env;
	char d[48];

	write_part_head(o, b, "Delivery report",
			b->global ? "message/global-delivery-status" : "message/delivery-status",
			b->global);
	/* Field order is RFC 3464 2.2's per-message-fields ABNF; extension
	 * fields (the queue ID, for operators) come last. */
	write_envid(o, env->envid);
	out_fmt(o, "Reporting-MTA: dns; %s\r\n", p->reporting_mta);
	if (env->arrival_s > 0)
		out_fmt(o, "Arrival-Date: %s\r\n", date_str(d, env->arrival_s));
	out_fmt(o, "X-Ringmx-Queue-ID: %s\r\n", b->qid);
	for (uint32_t i = 0; i < p->result_count; i++)
		status_rcpt(o, b, &p->results[i]);
}

/* Part 3 (RFC 6522 3, RFC 3461 4.3; RFC 6533 6 for the global types). */
static int write_original(struct out *o, const struct build *b)
{
	const char *type = b->full ? (b->global ? "message/global" : "message/rfc822")
				   : (b->global ? "message/global-headers" : "text/rfc822-headers");

	write_part_head(o, b, b->full ? "Original message" : "Original message headers", type,
			b->global || b->saw_8bit);
	return emit_original(b, o);
}

int dsn_build(const struct dsn_params *p, struct dsn_info *info)
{
	assert(p != NULL && info != NULL);
	struct build b = {.p = p};
	char stem[DSN_BOUNDARY_MAX];
	int rc = params_check(&b);

	if (rc != 0)
		return rc;
	spool_qid_format(p->env->id, b.qid);
	snprintf(stem, sizeof stem, "=_rmx-%s-%016" PRIx64 "-", b.qid, p->nonce);
	snprintf(b.msgid, sizeof b.msgid, "<%s.%" PRId64 ".%016" PRIx64 "@%s>", b.qid, p->now_s,
		 p->nonce, p->msgid_domain);
	rc = scan_original(&b, stem);
	if (rc != 0)
		return rc;

	struct out o = {.fn = p->write, .ctx = p->write_ctx};
	write_top(&o, &b);
	write_text(&o, &b);
	write_status(&o, &b);
	rc = b.have_orig ? write_original(&o, &b) : 0;
	out_fmt(&o, "\r\n--%s--\r\n", b.boundary);
	out_flush(&o);
	if (rc == 0)
		rc = o.err;
	if (rc != 0)
		return rc;

	*info = (struct dsn_info){.size = o.total,
				  .smtputf8 = b.global,
				  .body_8bit = b.global || b.saw_8bit,
				  .original_full = b.have_orig && b.full,
				  .hdrs_truncated = b.truncated};
	memcpy(info->boundary, b.boundary, sizeof info->boundary);
	memcpy(info->message_id, b.msgid, sizeof info->message_id);
	return 0;
}
