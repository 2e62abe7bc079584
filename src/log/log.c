/*
 * log — see log.h.  A line is built in two passes: fields_collect() walks
 * the format, checks it and renders each value's raw bytes into a scratch
 * buffer (one value = one field, whatever bytes it holds); line_build()
 * then gives each value its room in the line and writes it escaped for the
 * chosen format.  Per-thread single-producer/single-consumer byte rings
 * carry the shard threads' lines to whichever thread drains them.
 */
#include "log/log.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define LOG_RINGS_MAX 260
/* Raw value bytes, before escaping.  A value never needs more than a line
 * (escapes only lengthen it), and each has its own share of the scratch,
 * so a huge value cannot starve the values after it. */
#define LOG_VALUE_RAW_MAX LOG_LINE_MAX
#define LOG_SCRATCH_MAX	  (LOG_FIELDS_MAX * LOG_VALUE_RAW_MAX)
#define LOG_TS_LEN	  24 /* 2024-01-31T12:00:00.000Z */
#define LOG_KV_CUT	  " truncated=true"
#define LOG_JSON_CUT	  ",\"truncated\":true"

/* Keys and punctuation of the longest legal format leave at least half a
 * line to the values, so every value keeps room for its quotes and every
 * number stays whole (line_layout() asserts it). */
static_assert(LOG_FIELDS_MAX * (LOG_KEY_MAX + 4) + 64 + sizeof(LOG_JSON_CUT) <= LOG_LINE_MAX / 2,
	      "keys must leave half a line to the values");
static_assert(sizeof(uintmax_t) == 8, "integer digits buffer");

struct log_ring {
	_Atomic uint64_t head; /* consumer position */
	_Atomic uint64_t tail; /* producer position */
	_Atomic uint64_t dropped;
	_Atomic(char *) buf; /* LOG_RING_BYTES; set once, after ring_count grew */
};

static struct log_ring rings[LOG_RINGS_MAX];
static _Atomic unsigned ring_count;
static _Thread_local struct log_ring *my_ring;
static int log_level = LOG_INFO;
static bool log_json;
/* Where lines go; both change only under direct_lock (log_reopen). */
static int log_fd = STDERR_FILENO;
static char *log_path; /* NULL: stderr */
static pthread_mutex_t direct_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* ---- the format: fields and conversions ------------------------------------------ */

enum log_vkind {
	LOG_V_NUM,    /* one decimal integer conversion: bare, a JSON number */
	LOG_V_TEXT,   /* literal text and conversions: bare in kv when safe */
	LOG_V_QUOTED, /* "..." in the format: always a quoted string */
};

struct log_field {
	const char *key; /* into the format */
	size_t key_len;
	enum log_vkind kind;
	size_t off, len; /* the raw value in log_fields.raw */
	size_t need;	 /* bytes the whole value takes, written */
	size_t cap;	 /* bytes it may take in this line */
};

struct log_fields {
	struct log_field f[LOG_FIELDS_MAX];
	size_t count;
	size_t raw_len;
	size_t val_off; /* where the value being rendered starts */
	bool cut;	/* a value was already cut to LOG_VALUE_RAW_MAX */
	char raw[LOG_SCRATCH_MAX];
};

enum log_len {
	LOG_LEN_NONE,
	LOG_LEN_HH,
	LOG_LEN_H,
	LOG_LEN_L,
	LOG_LEN_LL,
	LOG_LEN_Z,
	LOG_LEN_J,
	LOG_LEN_T
};

struct log_conv {
	bool left, zero;	  /* flags '-' and '0' */
	bool width_arg, prec_arg; /* '*' */
	int width, prec;	  /* -1: none */
	enum log_len len;
	char conv; /* one of "diuxXcs%" */
};

static void raw_put(struct log_fields *fs, const char *p, size_t n)
{
	size_t room = LOG_VALUE_RAW_MAX - (fs->raw_len - fs->val_off);

	assert(fs->raw_len - fs->val_off <= LOG_VALUE_RAW_MAX &&
	       fs->raw_len + room <= sizeof(fs->raw));
	if (n > room) {
		n = room;
		fs->cut = true;
	}
	memcpy(fs->raw + fs->raw_len, p, n);
	fs->raw_len += n;
}

static void raw_pad(struct log_fields *fs, char c, int n)
{
	for (; n > 0 && fs->raw_len - fs->val_off < LOG_VALUE_RAW_MAX; n--)
		raw_put(fs, &c, 1);
}

static const char *digits_parse(const char *p, int *v)
{
	*v = 0;
	for (; *p >= '0' && *p <= '9'; p++)
		if (*v < LOG_SCRATCH_MAX)
			*v = *v * 10 + (*p - '0');
	return p;
}

static const char *len_parse(const char *p, enum log_len *len)
{
	static const struct {
		const char *text;
		enum log_len len;
	} lens[] = {{"hh", LOG_LEN_HH}, {"h", LOG_LEN_H}, {"ll", LOG_LEN_LL}, {"l", LOG_LEN_L},
		    {"z", LOG_LEN_Z},	{"j", LOG_LEN_J}, {"t", LOG_LEN_T}};

	*len = LOG_LEN_NONE;
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		size_t n = strlen(lens[i].text);

		if (strncmp(p, lens[i].text, n) == 0) {
			*len = lens[i].len;
			return p + n;
		}
	}
	return p;
}

/* The conversion after a '%' at p; the position after it, or NULL (why set)
 * for one this formatter does not write. */
static const char *conv_parse(const char *p, struct log_conv *cv, const char **why)
{
	*cv = (struct log_conv){.width = -1, .prec = -1};
	for (;; p++) {
		if (*p == '-')
			cv->left = true;
		else if (*p == '0')
			cv->zero = true;
		else
			break;
	}
	if (*p == '*')
		cv->width_arg = *p++ == '*';
	else if (*p >= '1' && *p <= '9')
		p = digits_parse(p, &cv->width);
	if (*p == '.') {
		p++;
		if (*p == '*')
			cv->prec_arg = *p++ == '*';
		else
			p = digits_parse(p, &cv->prec);
	}
	p = len_parse(p, &cv->len);
	cv->conv = *p;
	if (*p == '\0' || strchr("diuxXcs%", *p) == NULL) {
		*why = "unsupported conversion (supported: %s %c %d %i %u %x %X %%)";
		return NULL;
	}
	if ((cv->prec >= 0 || cv->prec_arg) && cv->conv != 's') {
		*why = "a precision is supported on %s only";
		return NULL;
	}
	if ((cv->conv == 's' || cv->conv == 'c' || cv->conv == '%') && cv->len != LOG_LEN_NONE) {
		*why = "wide characters are not supported";
		return NULL;
	}
	if (cv->conv == '%' && (cv->left || cv->zero || cv->width >= 0 || cv->width_arg ||
				cv->prec >= 0 || cv->prec_arg)) {
		*why = "%% takes no flags";
		return NULL;
	}
	return p + 1;
}

static uintmax_t arg_unsigned(enum log_len len, va_list *ap)
{
	switch (len) {
	case LOG_LEN_NONE:
		return va_arg(*ap, unsigned int);
	case LOG_LEN_HH:
		return (unsigned char)va_arg(*ap, unsigned int);
	case LOG_LEN_H:
		return (unsigned short)va_arg(*ap, unsigned int);
	case LOG_LEN_L:
		return va_arg(*ap, unsigned long);
	case LOG_LEN_LL:
		return va_arg(*ap, unsigned long long);
	case LOG_LEN_Z:
		return va_arg(*ap, size_t);
	case LOG_LEN_J:
		return va_arg(*ap, uintmax_t);
	case LOG_LEN_T:
		return (uintmax_t)va_arg(*ap, ptrdiff_t);
	default:
		abort();
	}
}

static intmax_t arg_signed(enum log_len len, va_list *ap)
{
	switch (len) {
	case LOG_LEN_NONE:
		return va_arg(*ap, int);
	case LOG_LEN_HH:
		return (signed char)va_arg(*ap, int);
	case LOG_LEN_H:
		return (short)va_arg(*ap, int);
	case LOG_LEN_L:
		return va_arg(*ap, long);
	case LOG_LEN_LL:
		return va_arg(*ap, long long);
	case LOG_LEN_Z:
		return va_arg(*ap, ssize_t);
	case LOG_LEN_J:
		return va_arg(*ap, intmax_t);
	case LOG_LEN_T:
		return va_arg(*ap, ptrdiff_t);
	default:
		abort();
	}
}

static void render_int(struct log_fields *fs, const struct log_conv *cv, int width, va_list *ap)
{
	const char *set = cv->conv == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
	unsigned base = cv->conv == 'x' || cv->conv == 'X' ? 16 : 10;
	char digits[24];
	bool neg = false;
	size_t n = 0;
	uintmax_t v;

	if (cv->conv == 'd' || cv->conv == 'i') {
		intmax_t s = arg_signed(cv->len, ap);

		neg = s < 0;
		v = neg ? (uintmax_t)0 - (uintmax_t)s : (uintmax_t)s;
	} else {
		v = arg_unsigned(cv->len, ap);
	}
	do {
		digits[n++] = set[v % base];
		v /= base;
	} while (v != 0);
	int pad = width - (int)n - (int)neg;

	if (!cv->left && !cv->zero)
		raw_pad(fs, ' ', pad);
	if (neg)
		raw_put(fs, "-", 1);
	if (!cv->left && cv->zero)
		raw_pad(fs, '0', pad);
	while (n > 0)
		raw_put(fs, &digits[--n], 1);
	if (cv->left)
		raw_pad(fs, ' ', pad);
}

/* One conversion's bytes, appended to the scratch (ap advanced past it). */
static void conv_render(struct log_fields *fs, const struct log_conv *cv, va_list *ap)
{
	bool left = cv->left;
	int width = cv->width, prec = cv->prec;
	const char *s;
	size_t n;
	char c;

	if (cv->width_arg) {
		width = va_arg(*ap, int);
		left |= width < 0;
		width = width < 0 ? (width < -LOG_SCRATCH_MAX ? LOG_SCRATCH_MAX : -width) : width;
	}
	if (cv->prec_arg)
		prec = va_arg(*ap, int); /* negative: as if there were none */
	if (cv->conv != 's' && cv->conv != 'c') {
		struct log_conv ic = *cv;

		ic.left = left;
		render_int(fs, &ic, width, ap);
		return;
	}
	if (cv->conv == 'c') {
		c = (char)va_arg(*ap, int);
		s = &c;
		n = 1;
	} else {
		s = va_arg(*ap, const char *);
		if (s == NULL)
			s = "(null)";
		n = prec >= 0 ? strnlen(s, (size_t)prec) : strlen(s);
	}
	if (!left)
		raw_pad(fs, ' ', width - (int)(n > INT32_MAX ? INT32_MAX : n));
	raw_put(fs, s, n);
	if (left)
		raw_pad(fs, ' ', width - (int)(n > INT32_MAX ? INT32_MAX : n));
}

static bool key_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

/* The key at k (len n) may be added: not reserved, not there yet. */
static bool key_free(const struct log_fields *fs, const char *k, size_t n, const char **why)
{
	static const char *const reserved[] = {"ts", "level", "truncated"};

	for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
		if (strlen(reserved[i]) == n && memcmp(reserved[i], k, n) == 0) {
			*why = "reserved key (ts, level, truncated)";
			return false;
		}
	}
	for (size_t i = 0; i < fs->count; i++) {
		if (fs->f[i].key_len == n && memcmp(fs->f[i].key, k, n) == 0) {
			*why = "the same key twice";
			return false;
		}
	}
	if (fs->count == 0 && (n != 5 || memcmp(k, "event", 5) != 0)) {
		*why = "the first key must be event";
		return false;
	}
	if (fs->count == LOG_FIELDS_MAX || n > LOG_KEY_MAX) {
		*why = "more than LOG_FIELDS_MAX fields or a key longer than LOG_KEY_MAX";
		return false;
	}
	return true;
}

/* One value's text after `key=` at p, rendered into the scratch (ap NULL:
 * checked only); the position after it, or NULL with why. */
static const char *value_parse(struct log_fields *fs, struct log_field *f, const char *p,
			       va_list *ap, const char **why)
{
	bool quoted = *p == '"', num = false;
	size_t lits = 0, convs = 0;

	p += quoted;
	for (;;) {
		struct log_conv cv;
		char c = *p;

		if (quoted && c == '"')
			return f->kind = LOG_V_QUOTED, p + 1;
		if (!quoted && (c == ' ' || c == '\0')) {
			f->kind = convs == 1 && lits == 0 && num ? LOG_V_NUM : LOG_V_TEXT;
			return p;
		}
		if (c == '\0' || c == '"' || c < 0x20 || c > 0x7e) {
			*why = c == '\0'  ? "unterminated quoted value"
			       : c == '"' ? "a quote inside an unquoted value"
					  : "format text must be printable ASCII";
			return NULL;
		}
		if (c != '%') {
			raw_put(fs, p++, 1);
			lits++;
			continue;
		}
		p = conv_parse(p + 1, &cv, why);
		if (p == NULL)
			return NULL;
		if (cv.conv == '%') {
			raw_put(fs, "%", 1);
			lits++;
			continue;
		}
		convs++;
		num = strchr("diu", cv.conv) != NULL && !cv.left && !cv.zero && cv.width < 0 &&
		      !cv.width_arg;
		if (ap)
			conv_render(fs, &cv, ap);
	}
}

/* Walk fmt: each `key=VALUE` becomes a field whose raw value is in the
 * scratch.  ap NULL: check fmt only.  False (why set): not a log format. */
static bool fields_collect(struct log_fields *fs, const char *fmt, va_list *ap, const char **why)
{
	const char *p = fmt;

	fs->count = 0;
	fs->raw_len = 0;
	fs->val_off = 0;
	fs->cut = false;
	for (;;) {
		const char *k = p;
		struct log_field *f;

		while (key_char(*p))
			p++;
		if (p == k || *p != '=') {
			*why = "expected key= (keys are [a-z0-9_])";
			return false;
		}
		if (!key_free(fs, k, (size_t)(p - k), why))
			return false;
		f = &fs->f[fs->count++];
		*f = (struct log_field){.key = k, .key_len = (size_t)(p - k), .off = fs->raw_len};
		fs->val_off = fs->raw_len;
		p = value_parse(fs, f, p + 1, ap, why);
		if (p == NULL)
			return false;
		f->len = fs->raw_len - f->off;
		if (*p == '\0')
			return true;
		if (*p != ' ') {
			*why = "expected one space between fields";
			return false;
		}
		p++;
	}
}

bool log_format_valid(const char *fmt, char *why, size_t why_len)
{
	struct log_fields fs;
	const char *w = NULL;
	bool ok = fields_collect(&fs, fmt, NULL, &w);

	if (!ok && why_len > 0)
		snprintf(why, why_len, "%s", w);
	return ok;
}

/* ---- writing values ---------------------------------------------------------------------- */

/* kv: printable ASCII other than space, quotes, '=' and '\' stands as it is;
 * anything else, or nothing, is quoted. */
static bool kv_bare_ok(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];

		if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\'' || c == '=' || c == '\\')
			return false;
	}
	return n > 0;
}

/* kv, inside quotes: the escape for the byte at p. */
static size_t kv_esc(const unsigned char *p, char out[6], size_t *used)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char c = *p;

	*used = 1;
	switch (c) {
	case '"':
	case '\\':
		out[0] = '\\';
		out[1] = (char)c;
		return 2;
	case '\n':
		return memcpy(out, "\\n", 2), 2;
	case '\r':
		return memcpy(out, "\\r", 2), 2;
	case '\t':
		return memcpy(out, "\\t", 2), 2;
	default:
		break;
	}
	if (c >= 0x20 && c < 0x7f) {
		out[0] = (char)c;
		return 1;
	}
	out[0] = '\\';
	out[1] = 'x';
	out[2] = hex[c >> 4];
	out[3] = hex[c & 15];
	return 4;
}

/*
 * The UTF-8 sequence at p: its length and code point when valid (RFC 3629:
 * no overlong forms, no surrogates, nothing past U+10FFFF), else the length
 * of its maximal subpart (Unicode 3.9, U+FFFD substitution), at least 1.
 */
static size_t utf8_scan(const unsigned char *p, const unsigned char *end, uint32_t *cp, bool *valid)
{
	unsigned char c = p[0], lo = 0x80, hi = 0xbf;
	size_t need;

	*valid = false;
	if (c >= 0xc2 && c <= 0xdf) {
		need = 2;
		*cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 3;
		*cp = c & 0x0f;
		lo = c == 0xe0 ? 0xa0 : 0x80;
		hi = c == 0xed ? 0x9f : 0xbf;
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 4;
		*cp = c & 0x07;
		lo = c == 0xf0 ? 0x90 : 0x80;
		hi = c == 0xf4 ? 0x8f : 0xbf;
	} else {
		return 1;
	}
	for (size_t i = 1; i < need; i++) {
		if (p + i >= end || p[i] < lo || p[i] > hi)
			return i;
		*cp = *cp << 6 | (p[i] & 0x3f);
		lo = 0x80;
		hi = 0xbf;
	}
	*valid = true;
	return need;
}

/* json, inside quotes: the text for the character at p (RFC 8259 7). C0 and
 * C1 controls, DEL and U+2028/9 are \u escapes (they act on terminals and
 * in JavaScript); an invalid sequence is one U+FFFD. */
static size_t json_esc(const unsigned char *p, const unsigned char *end, char out[6], size_t *used)
{
	uint32_t cp = *p;
	bool valid = true;

	*used = 1;
	if (cp >= 0x80)
		*used = utf8_scan(p, end, &cp, &valid);
	if (!valid)
		return memcpy(out, "\\ufffd", 6), 6;
	switch (cp) {
	case '"':
		return memcpy(out, "\\\"", 2), 2;
	case '\\':
		return memcpy(out, "\\\\", 2), 2;
	case '\n':
		return memcpy(out, "\\n", 2), 2;
	case '\r':
		return memcpy(out, "\\r", 2), 2;
	case '\t':
		return memcpy(out, "\\t", 2), 2;
	default:
		break;
	}
	if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029) {
		char hex[7];

		snprintf(hex, sizeof(hex), "\\u%04x", (unsigned)cp);
		return memcpy(out, hex, 6), 6;
	}
	memcpy(out, p, *used);
	return *used;
}

/* raw as a quoted string in at most room bytes (quotes included), cut only
 * between whole escapes and whole characters; returns the bytes written
 * (dst NULL: only counts them). */
static size_t quoted_put(char *dst, size_t room, const char *raw, size_t len, bool json)
{
	const unsigned char *p = (const unsigned char *)raw, *end = p + len;
	size_t o = 1;

	assert(room >= 2);
	if (dst)
		dst[0] = '"';
	while (p < end) {
		char e[6];
		size_t used, k = json ? json_esc(p, end, e, &used) : kv_esc(p, e, &used);

		if (o + k + 1 > room)
			break;
		if (dst)
			memcpy(dst + o, e, k);
		o += k;
		p += used;
	}
	if (dst)
		dst[o] = '"';
	return o + 1;
}

static bool field_bare(const struct log_fields *fs, const struct log_field *f, bool json)
{
	return f->kind == LOG_V_NUM ||
	       (!json && f->kind == LOG_V_TEXT && kv_bare_ok(fs->raw + f->off, f->len));
}

size_t log_kv_value(char *out, size_t cap, const char *p, size_t n)
{
	size_t k;

	assert(cap >= 3);
	if (kv_bare_ok(p, n)) {
		k = n < cap - 1 ? n : cap - 1;
		memcpy(out, p, k);
	} else {
		k = quoted_put(out, cap - 1, p, n, false);
	}
	out[k] = '\0';
	return k;
}

/* ---- one line ---------------------------------------------------------------------------- */

/* Each value's room: all it needs when the line has it; else numbers and
 * short values whole and the long ones an equal share of the rest (so a
 * long user name cannot push result=... out of the line).  True: the line
 * is cut (and gets the truncated marker). */
static bool line_layout(struct log_fields *fs, size_t fixed, size_t marker)
{
	size_t order[LOG_FIELDS_MAX], total = fixed, budget, left = fs->count;

	for (size_t i = 0; i < fs->count; i++) {
		assert(fs->f[i].kind != LOG_V_NUM || fs->f[i].need > 0);
		total += fs->f[i].need;
	}
	if (total + (fs->cut ? marker : 0) <= LOG_LINE_MAX) {
		for (size_t i = 0; i < fs->count; i++)
			fs->f[i].cap = fs->f[i].need;
		return fs->cut;
	}
	assert(fixed + marker <= LOG_LINE_MAX / 2);
	budget = LOG_LINE_MAX - fixed - marker;
	for (size_t i = 0; i < fs->count; i++) { /* insertion sort by need */
		size_t j = i;

		for (; j > 0 && fs->f[order[j - 1]].need > fs->f[i].need; j--)
			order[j] = order[j - 1];
		order[j] = i;
	}
	for (size_t i = 0; i < fs->count; i++, left--) {
		struct log_field *f = &fs->f[order[i]];
		size_t share = budget / left;

		f->cap = f->need < share ? f->need : share;
		/* a cut value keeps its quotes; a number is never cut */
		assert(f->cap == f->need || (f->cap >= 2 && f->kind != LOG_V_NUM));
		budget -= f->cap;
	}
	return true;
}

struct line_out {
	char *buf;
	size_t len;
};

static void out_put(struct line_out *o, const char *p, size_t n)
{
	assert(o->len + n <= LOG_LINE_MAX);
	memcpy(o->buf + o->len, p, n);
	o->len += n;
}

static void out_value(struct line_out *o, const struct log_fields *fs, const struct log_field *f,
		      bool json)
{
	const char *raw = fs->raw + f->off;

	if (field_bare(fs, f, json))
		out_put(o, raw, f->len < f->cap ? f->len : f->cap);
	else
		o->len += quoted_put(o->buf + o->len, f->cap, raw, f->len, json);
	assert(o->len <= LOG_LINE_MAX);
}

static void ts_format(char ts[LOG_TS_LEN + 1])
{
	struct timespec now;
	struct tm tm;
	char buf[96];
	int n;

	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	n = snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
		     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		     now.tv_nsec / 1000000);
	assert(n == LOG_TS_LEN); /* years 1000..9999 */
	memcpy(ts, buf, LOG_TS_LEN + 1);
}

/* The collected fields as one line with its newline; returns its length. */
static size_t line_build(char *line, struct log_fields *fs, enum log_level level)
{
	const char *lvl = level_names[level];
	bool json = log_json;
	size_t fixed = json ? strlen("{\"ts\":\"\",\"level\":\"\"}\n") : strlen("ts= level=\n");
	struct line_out o = {.buf = line};
	char ts[LOG_TS_LEN + 1];
	bool cut;

	ts_format(ts);
	fixed += LOG_TS_LEN + strlen(lvl);
	for (size_t i = 0; i < fs->count; i++) {
		struct log_field *f = &fs->f[i];

		f->need = field_bare(fs, f, json)
			      ? f->len
			      : quoted_put(NULL, SIZE_MAX, fs->raw + f->off, f->len, json);
		fixed += f->key_len + (json ? strlen(",\"\":") : strlen(" ="));
	}
	cut = line_layout(fs, fixed, strlen(json ? LOG_JSON_CUT : LOG_KV_CUT));
	out_put(&o, json ? "{\"ts\":\"" : "ts=", json ? 7 : 3);
	out_put(&o, ts, LOG_TS_LEN);
	out_put(&o, json ? "\",\"level\":\"" : " level=", json ? 11 : 7);
	out_put(&o, lvl, strlen(lvl));
	if (json)
		out_put(&o, "\"", 1);
	for (size_t i = 0; i < fs->count; i++) {
		out_put(&o, json ? ",\"" : " ", json ? 2 : 1);
		out_put(&o, fs->f[i].key, fs->f[i].key_len);
		out_put(&o, json ? "\":" : "=", json ? 2 : 1);
		out_value(&o, fs, &fs->f[i], json);
	}
	if (cut)
		out_put(&o, json ? LOG_JSON_CUT : LOG_KV_CUT,
			strlen(json ? LOG_JSON_CUT : LOG_KV_CUT));
	out_put(&o, json ? "}\n" : "\n", json ? 2 : 1);
	return o.len;
}

static size_t line_printf(char *line, enum log_level level, const char *fmt, ...);

static size_t format_line(char *line, enum log_level level, const char *fmt, va_list *ap)
{
	struct log_fields fs;
	const char *why = NULL;

	if (fields_collect(&fs, fmt, ap, &why))
		return line_build(line, &fs, level);
#ifndef NDEBUG
	/* A call site outside the formats this module writes safely is a
	 * programming error: stop the build that has assertions, loudly. */
	fprintf(stderr, "ringmx: log_msg format not supported (%s): %s\n", why, fmt);
	abort();
#endif
	return line_printf(line, LOG_ERROR, "event=log_format_error reason=\"%s\" format=\"%s\"",
			   why, fmt);
}

static size_t line_printf(char *line, enum log_level level, const char *fmt, ...)
{
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	n = format_line(line, level, fmt, &ap);
	va_end(ap);
	return n;
}

/* ---- output ------------------------------------------------------------------------------ */

static void write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static int log_open(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);

	return fd < 0 ? -errno : fd;
}

int log_setup(int level, bool json, const char *file, char *why, size_t why_len)
{
	int fd;

	char *path = NULL;

	log_level = level;
	log_json = json;
	fd = file ? log_open(file) : STDERR_FILENO;
	if (fd < 0) {
		snprintf(why, why_len, "log.file: %s: %s", file, strerror(-fd));
		return fd;
	}
	if (file && (path = strdup(file)) == NULL) {
		close(fd);
		snprintf(why, why_len, "log.file: out of memory");
		return -ENOMEM;
	}
	if (log_fd != STDERR_FILENO) /* set up again (tests) */
		close(log_fd);
	free(log_path);
	log_fd = fd;
	log_path = path;
	return 0;
}

int log_reopen(void)
{
	int fd, old;

	if (log_path == NULL) {
		log_msg(LOG_INFO, "event=log_reopen status=skipped reason=\"logging to stderr\"");
		return 0;
	}
	log_drain(); /* what was logged before the signal goes to the old file */
	fd = log_open(log_path);
	if (fd < 0) {
		log_msg(LOG_ERROR, "event=log_reopen status=failed file=%s error=\"%s\"", log_path,
			strerror(-fd));
		return fd;
	}
	pthread_mutex_lock(&direct_lock);
	old = log_fd;
	log_fd = fd;
	pthread_mutex_unlock(&direct_lock);
	close(old);
	log_msg(LOG_INFO, "event=log_reopen status=ok file=%s", log_path);
	return 0;
}

bool log_enabled(enum log_level level)
{
	return (int)level <= log_level;
}

int log_thread_ring(unsigned id)
{
	unsigned n = atomic_fetch_add(&ring_count, 1);

	(void)id;
	if (n >= LOG_RINGS_MAX)
		return -1;
	char *buf = malloc(LOG_RING_BYTES);

	if (!buf)
		return -1;
	atomic_store(&rings[n].buf, buf);
	my_ring = &rings[n];
	return 0;
}

/* Producer side: [u32 len][bytes], wrapping byte-wise. */
static void ring_push(struct log_ring *r, const char *line, size_t n)
{
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint32_t len = (uint32_t)n;

	assert(n <= LOG_LINE_MAX);
	if (tail - head + sizeof(len) + n > LOG_RING_BYTES) {
		atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
		return;
	}
	for (size_t i = 0; i < sizeof(len); i++)
		r->buf[(tail + i) % LOG_RING_BYTES] = ((const char *)&len)[i];
	for (size_t i = 0; i < n; i++)
		r->buf[(tail + sizeof(len) + i) % LOG_RING_BYTES] = line[i];
	atomic_store_explicit(&r->tail, tail + sizeof(len) + n, memory_order_release);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	char line[LOG_LINE_MAX];
	va_list ap;
	size_t n;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	n = format_line(line, level, fmt, &ap);
	va_end(ap);
	if (my_ring) {
		ring_push(my_ring, line, n);
		return;
	}
	pthread_mutex_lock(&direct_lock);
	write_all(log_fd, line, n);
	pthread_mutex_unlock(&direct_lock);
}

/* Consumer side, under direct_lock: one drainer at a time, whichever thread. */
static void ring_drain(struct log_ring *r)
{
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint64_t dropped = atomic_exchange_explicit(&r->dropped, 0, memory_order_relaxed);
	char line[LOG_LINE_MAX];

	while (head < tail) {
		uint32_t len;

		for (size_t i = 0; i < sizeof(len); i++)
			((char *)&len)[i] = r->buf[(head + i) % LOG_RING_BYTES];
		assert(len <= LOG_LINE_MAX);
		for (uint32_t i = 0; i < len && i < LOG_LINE_MAX; i++)
			line[i] = r->buf[(head + sizeof(len) + i) % LOG_RING_BYTES];
		write_all(log_fd, line, len < LOG_LINE_MAX ? len : LOG_LINE_MAX);
		head += sizeof(len) + len;
	}
	atomic_store_explicit(&r->head, head, memory_order_release);
	if (dropped) {
		size_t n = line_printf(line, LOG_WARN, "event=log_dropped lines=%llu",
				       (unsigned long long)dropped);

		write_all(log_fd, line, n);
	}
}

void log_drain(void)
{
	unsigned n = atomic_load(&ring_count);

	pthread_mutex_lock(&direct_lock);
	for (unsigned i = 0; i < n && i < LOG_RINGS_MAX; i++)
		if (atomic_load(&rings[i].buf))
			ring_drain(&rings[i]);
	pthread_mutex_unlock(&direct_lock);
}

void fatal(const char *fmt, ...)
{
	char text[LOG_LINE_MAX], line[LOG_LINE_MAX];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(text, sizeof(text) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if (n > (int)sizeof(text) - 2)
		n = (int)sizeof(text) - 2;
	log_drain();
	if (log_fd != STDERR_FILENO) { /* the operator reads the file, too */
		size_t k = line_printf(line, LOG_ERROR, "event=fatal message=\"%.*s\"", n, text);

		write_all(log_fd, line, k);
	}
	text[n++] = '\n';
	write_all(STDERR_FILENO, "ringmx: ", 8);
	write_all(STDERR_FILENO, text, (size_t)n);
	exit(1);
}
