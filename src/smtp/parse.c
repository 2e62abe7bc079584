/*
 * smtp/parse — command-line framing, command parsing and the DATA/BDAT body
 * scanner.  The contract is in parse.h; this file only says why each rule is
 * what it is.  Pure: no I/O, no allocation, no global mutable state.
 */
#include "smtp/parse.h"

#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__) && !defined(RMX_PARSE_PORTABLE)
#include <emmintrin.h>
#endif

/* ---- shared character helpers ------------------------------------------ */

static bool ch_alpha(uint8_t c)
{
	uint8_t l = c | 0x20;
	return l >= 'a' && l <= 'z';
}

static bool ch_digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

static uint8_t ch_lower(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') ? (uint8_t)(c | 0x20) : c;
}

/* RFC 5322 3.2.3 atext; RFC 6531 3.3 adds UTF-8, handled by the callers. */
static bool ch_atext(uint8_t c)
{
	static const char specials[] = "!#$%&'*+-/=?^_`{|}~";
	if (ch_alpha(c) || ch_digit(c))
		return true;
	return c != 0 && memchr(specials, c, sizeof specials - 1) != NULL;
}

/* Case-insensitive comparison of p[0..n) with an ASCII literal. */
static bool ci_eq(const uint8_t *p, size_t n, const char *lit)
{
	if (n != strlen(lit))
		return false;
	for (size_t i = 0; i < n; i++)
		if (ch_lower(p[i]) != ch_lower((uint8_t)lit[i]))
			return false;
	return true;
}

static bool ci_prefix(const uint8_t *p, const uint8_t *end, const char *lit)
{
	size_t n = strlen(lit);
	return (size_t)(end - p) >= n && ci_eq(p, n, lit);
}

static struct smtp_slice slice_of(const uint8_t *p, size_t n)
{
	struct smtp_slice s = {0};
	assert(n <= UINT32_MAX);
	if (n > 0) {
		s.ptr = (const char *)p;
		s.len = (uint32_t)n;
	}
	return s;
}

/*
 * Length of the well-formed UTF-8 sequence at p (RFC 3629 4), 0 if there is
 * none.  Overlong forms and surrogates are refused: they are how filters
 * that compare octets get bypassed.
 */
static size_t utf8_seq_len(const uint8_t *p, const uint8_t *end)
{
	uint8_t c = p[0], lo = 0x80, hi = 0xbf;
	size_t n;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	return n;
}

size_t smtp_utf8_len(const char *p, size_t n)
{
	assert(p != NULL && n > 0);
	const uint8_t *u = (const uint8_t *)p;
	return u[0] < 0x80 ? 1 : utf8_seq_len(u, u + n);
}

/* 1 to 20 digits that fit in 64 bits (SIZE, BDAT): more is refused rather
 * than wrapped, so a huge size can never turn into a small one. */
#define SMTP_U64_DIGITS_MAX 20

static bool parse_u64(const uint8_t *p, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	if (n == 0 || n > SMTP_U64_DIGITS_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!ch_digit(p[i]))
			return false;
		uint64_t d = (uint64_t)(p[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

/* ---- command-line framing (RFC 5321 2.3.8, 4.5.3.1.4) ------------------- */

void smtp_line_reset(struct smtp_line_state *st)
{
	assert(st != NULL);
	memset(st, 0, sizeof *st);
}

/* The first fault is kept: it is the one the reply and the log name. */
static void line_fault(struct smtp_line_state *st, enum smtp_line_error e)
{
	if (st->error == SMTP_LINE_OK)
		st->error = (uint8_t)e;
}

static void line_octet(struct smtp_line_state *st, uint8_t c)
{
	if (c == '\0')
		line_fault(st, SMTP_LINE_NUL);
	/* Saturate: a gigabyte without LF must not wrap back under the bound. */
	if (st->line_len < UINT32_MAX)
		st->line_len++;
	if (st->line_len > SMTP_LINE_SCAN_MAX - 2)
		line_fault(st, SMTP_LINE_TOO_LONG);
}

int smtp_line_scan(struct smtp_line_state *st, const char *buf, size_t len, size_t *used)
{
	assert(st != NULL && used != NULL);
	assert(buf != NULL || len == 0);
	if (len == 0) {
		*used = 0; /* buf may be NULL: no pointer arithmetic on it */
		return SMTP_PARSE_AGAIN;
	}
	const uint8_t *p = (const uint8_t *)buf, *end = p + len;

	while (p < end) {
		uint8_t c = *p++;
		if (c == '\n') {
			/* Only CRLF ends a line (2.3.8); a bare LF still ends it for
			 * framing so the peer's view and ours cannot diverge, but the
			 * line is refused: that is the smuggling vector. */
			if (!st->saw_cr)
				line_fault(st, SMTP_LINE_BARE_LF);
			st->saw_cr = 0;
			*used = (size_t)(p - (const uint8_t *)buf);
			return st->error == SMTP_LINE_OK ? SMTP_PARSE_OK : SMTP_PARSE_INVALID;
		}
		if (st->saw_cr) {
			line_fault(st, SMTP_LINE_BARE_CR);
			line_octet(st, '\r');
			st->saw_cr = 0;
		}
		if (c == '\r')
			st->saw_cr = 1;
		else
			line_octet(st, c);
	}
	*used = len;
	return SMTP_PARSE_AGAIN;
}

/* ---- replies ------------------------------------------------------------ */

/* RFC 5321 4.2.2 codes, RFC 3463 enhanced codes.  Static strings: the
 * session sends them as they are. */
static const char R_UNRECOGNIZED[] = "500 5.5.2 Command unrecognized";
static const char R_LINE_TOO_LONG[] = "500 5.5.2 Line too long";
static const char R_BAD_OCTET[] = "500 5.5.2 Invalid octet in command";
static const char R_BAD_DOMAIN[] = "501 5.5.4 Invalid domain name";
static const char R_DOMAIN_LONG[] = "501 5.5.4 Domain name too long";
static const char R_PARAM_SYNTAX[] = "501 5.5.4 Syntax error in parameters";
static const char R_PARAM_UNKNOWN[] = "555 5.5.4 Unsupported parameter";
static const char R_PARAM_DUP[] = "501 5.5.4 Duplicate parameter";
static const char R_SIZE[] = "501 5.5.4 Invalid SIZE value";
static const char R_BODY[] = "501 5.5.4 Invalid BODY value";
static const char R_BINARYMIME[] = "504 5.5.4 BODY=BINARYMIME not supported";
static const char R_SMTPUTF8[] = "501 5.5.4 SMTPUTF8 takes no value";
static const char R_RET[] = "501 5.5.4 Invalid RET value";
static const char R_ENVID[] = "501 5.5.4 Invalid ENVID value";
static const char R_AUTH[] = "501 5.5.4 Invalid AUTH value";
static const char R_NOTIFY[] = "501 5.5.4 Invalid NOTIFY value";
static const char R_ORCPT[] = "501 5.5.4 Invalid ORCPT value";

/* What a bad path is called depends on its role: X.1.7 for the sender,
 * X.1.3 for a recipient (RFC 3463 3.2). */
struct path_role {
	bool mail;
	const char *keyword;  /* "FROM:" / "TO:" */
	const char *syntax;   /* the command itself is malformed */
	const char *bad;      /* the address is malformed */
	const char *too_long; /* RFC 5321 4.5.3.1.3 */
	const char *local_long;
	const char *domain_long;
};

static const struct path_role role_mail = {
    .mail = true,
    .keyword = "FROM:",
    .syntax = "501 5.5.4 Syntax: MAIL FROM:<address>",
    .bad = "501 5.1.7 Bad sender address syntax",
    .too_long = "501 5.1.7 Path too long",
    .local_long = "501 5.1.7 Local part too long",
    .domain_long = "501 5.1.7 Domain too long",
};

static const struct path_role role_rcpt = {
    .mail = false,
    .keyword = "TO:",
    .syntax = "501 5.5.4 Syntax: RCPT TO:<address>",
    .bad = "501 5.1.3 Bad recipient address syntax",
    .too_long = "501 5.1.3 Path too long",
    .local_long = "501 5.1.3 Local part too long",
    .domain_long = "501 5.1.3 Domain too long",
};

static int cmd_fail(struct smtp_cmd *cmd, const char *reply)
{
	assert(reply != NULL);
	cmd->reply = reply;
	return SMTP_PARSE_INVALID;
}

/* ---- domains and address literals (RFC 5321 4.1.2, 4.1.3) --------------- */

/*
 * Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]: no
 * empty label (so no trailing dot), no hyphen at either end of a label.
 * UTF-8 octets count as letters (U-labels, RFC 6531 3.3) when allow_utf8.
 */
static bool domain_valid(const uint8_t *p, size_t n, bool allow_utf8, bool *utf8)
{
	size_t label = 0;
	bool hyphen_last = false;
	const uint8_t *end = p + n;

	while (p < end) {
		uint8_t c = *p;
		size_t step = 1;
		if (c == '.') {
			if (label == 0 || hyphen_last)
				return false;
			label = 0;
			p++;
			continue;
		}
		if (c == '-') {
			if (label == 0)
				return false;
		} else if (c >= 0x80) {
			step = allow_utf8 ? utf8_seq_len(p, end) : 0;
			if (step == 0)
				return false;
			*utf8 = true;
		} else if (!ch_alpha(c) && !ch_digit(c)) {
			return false;
		}
		hyphen_last = c == '-';
		label++;
		p += step;
	}
	return label > 0 && !hyphen_last;
}

/* IPv4-address-literal = Snum 3("." Snum), Snum = 1*3DIGIT up to 255.
 * Written by hand because inet_pton refuses leading zeros that 4.1.3 allows. */
static bool ipv4_valid(const uint8_t *p, size_t n)
{
	const uint8_t *end = p + n;
	for (int part = 0; part < 4; part++) {
		unsigned v = 0, digits = 0;
		if (part > 0) {
			if (p == end || *p != '.')
				return false;
			p++;
		}
		while (p < end && ch_digit(*p) && digits < 3) {
			v = v * 10 + (unsigned)(*p - '0');
			digits++;
			p++;
		}
		if (digits == 0 || v > 255)
			return false;
	}
	return p == end;
}

/* "[" (IPv4 / "IPv6:" IPv6) "]".  General-address-literal tags are refused:
 * IANA has registered none besides IPv6 (4.1.3). */
static bool addr_literal_valid(const uint8_t *p, size_t n)
{
	char buf[INET6_ADDRSTRLEN];
	struct in6_addr a6;

	if (n < 2 || p[0] != '[' || p[n - 1] != ']')
		return false;
	p++;
	n -= 2;
	if (!ci_prefix(p, p + n, "IPv6:"))
		return ipv4_valid(p, n);
	p += 5;
	n -= 5;
	if (n == 0 || n >= sizeof buf)
		return false;
	memcpy(buf, p, n);
	buf[n] = '\0';
	return inet_pton(AF_INET6, buf, &a6) == 1;
}

/* ---- paths (RFC 5321 4.1.2) --------------------------------------------- */

/* Dot-string = Atom *("." Atom); returns the end of the local part or NULL. */
static const uint8_t *local_dot_string(const uint8_t *p, const uint8_t *end, bool *utf8)
{
	bool need_atom = true;
	while (p < end) {
		uint8_t c = *p;
		if (c == '.') {
			if (need_atom)
				return NULL;
			need_atom = true;
			p++;
		} else if (ch_atext(c)) {
			need_atom = false;
			p++;
		} else if (c >= 0x80) {
			size_t n = utf8_seq_len(p, end);
			if (n == 0)
				return NULL;
			*utf8 = true;
			need_atom = false;
			p += n;
		} else {
			break;
		}
	}
	return need_atom ? NULL : p;
}

/* Quoted-string = DQUOTE *QcontentSMTP DQUOTE; p is at the opening quote. */
static const uint8_t *local_quoted(const uint8_t *p, const uint8_t *end, bool *utf8)
{
	for (p++; p < end; p++) {
		uint8_t c = *p;
		if (c == '"')
			return p + 1;
		if (c == '\\') {
			/* quoted-pairSMTP = "\" %d32-126 */
			if (p + 1 == end || p[1] < 32 || p[1] > 126)
				return NULL;
			p++;
		} else if (c >= 0x80) {
			size_t n = utf8_seq_len(p, end);
			if (n == 0)
				return NULL;
			*utf8 = true;
			p += n - 1;
		} else if (c < 32 || c > 126) {
			return NULL;
		}
	}
	return NULL;
}

/*
 * A-d-l = At-domain *( "," At-domain ) ":" — a source route.  RFC 5321
 * 4.1.1.3 says to accept and ignore it; relaying by it would make us an open
 * relay (appendix C).  Returns the position after ':' or NULL.
 */
static const uint8_t *route_skip(const uint8_t *p, const uint8_t *end, bool *utf8)
{
	for (;;) {
		if (p == end || *p != '@')
			return NULL;
		const uint8_t *d = ++p;
		while (p < end && *p != ',' && *p != ':' && *p != '>')
			p++;
		size_t n = (size_t)(p - d);
		if (n > SMTP_DOMAIN_MAX || !domain_valid(d, n, true, utf8))
			return NULL;
		if (p == end || *p == '>')
			return NULL;
		if (*p++ == ':')
			return p;
	}
}

/* Mailbox domain: Domain or address-literal up to the closing '>'. */
static const char *path_domain(const uint8_t **pp, const uint8_t *end, struct smtp_path *path,
			       const struct path_role *r)
{
	const uint8_t *d = *pp, *p = d;
	bool literal = p < end && *p == '[';

	if (literal) {
		const uint8_t *q = memchr(p, ']', (size_t)(end - p));
		p = q ? q + 1 : end;
	} else {
		while (p < end && *p != '>')
			p++;
	}
	size_t n = (size_t)(p - d);
	if (n > SMTP_DOMAIN_MAX)
		return r->domain_long;
	if (literal ? !addr_literal_valid(d, n) : !domain_valid(d, n, true, &path->utf8))
		return r->bad;
	path->domain = slice_of(d, n);
	*pp = p;
	return NULL;
}

/*
 * Path = "<" [ A-d-l ":" ] Mailbox ">"; a reverse-path may also be "<>".
 * On success returns NULL and moves *pp past the '>'; else the reply.
 */
static const char *path_parse(const uint8_t **pp, const uint8_t *end, struct smtp_path *path,
			      const struct path_role *r)
{
	const uint8_t *start = *pp, *p = start;
	bool routed = false;

	if (p == end || *p != '<')
		return r->syntax;
	p++;
	if (p < end && *p == '>') {
		/* "<>" is the null reverse-path of bounces (4.5.5), never a
		 * recipient. */
		if (!r->mail)
			return r->bad;
		path->null = true;
		*pp = p + 1;
		return NULL;
	}
	if (p < end && *p == '@') {
		p = route_skip(p, end, &path->utf8);
		if (p == NULL)
			return r->bad;
		routed = true;
	}
	const uint8_t *l = p;
	if (p < end && *p == '"')
		p = local_quoted(p, end, &path->utf8);
	else
		p = local_dot_string(p, end, &path->utf8);
	if (p == NULL)
		return r->bad;
	size_t ln = (size_t)(p - l);
	if (ln > SMTP_LOCAL_MAX)
		return r->local_long;
	path->local = slice_of(l, ln);
	if (p < end && *p == '>' && !routed && !r->mail && ci_eq(l, ln, "postmaster")) {
		/* 4.5.1: "<Postmaster>" without a domain must be accepted as a
		 * recipient; it is the only mailbox without one. */
		path->postmaster = true;
	} else {
		if (p == end || *p != '@')
			return r->bad;
		p++;
		const char *reply = path_domain(&p, end, path, r);
		if (reply != NULL)
			return reply;
	}
	if (p == end || *p != '>')
		return r->bad;
	p++;
	if ((size_t)(p - start) > SMTP_PATH_MAX)
		return r->too_long;
	assert(p <= end && path->local.len > 0);
	*pp = p;
	return NULL;
}

/* ---- ESMTP parameters (RFC 5321 4.1.2, RFC 1870, 6152, 3461, 4954, 6531) -- */

bool smtp_xtext_valid(const char *s, size_t len)
{
	assert(s != NULL || len == 0);
	if (len == 0)
		return true; /* xtext = *( xchar / hexchar ) */
	const uint8_t *p = (const uint8_t *)s, *end = p + len;

	while (p < end) {
		uint8_t c = *p++;
		if (c == '+') {
			/* hexchar = "+" 2(%x30-39 / %x41-46): upper case only. */
			for (int i = 0; i < 2; i++, p++)
				if (p == end || !(ch_digit(*p) || (*p >= 'A' && *p <= 'F')))
					return false;
		} else if (c < 33 || c > 126 || c == '=') {
			return false;
		}
	}
	return true;
}

/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
static bool param_keyword_valid(const uint8_t *p, size_t n)
{
	if (n == 0 || !(ch_alpha(p[0]) || ch_digit(p[0])))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!ch_alpha(p[i]) && !ch_digit(p[i]) && p[i] != '-')
			return false;
	return true;
}

/* esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 octets (RFC 6531 3.3). */
static bool param_value_valid(const uint8_t *p, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (p[i] < 0x80 && (p[i] < 33 || p[i] > 126 || p[i] == '='))
			return false;
	return true;
}

/* A parameter handler gets the value (NULL when there was no '=') and
 * returns NULL or the reply refusing it. */
typedef const char *(*param_fn)(struct smtp_cmd *cmd, const uint8_t *v, size_t n);

struct param_def {
	const char *name;
	param_fn fn;
};

static const char *param_size(struct smtp_cmd *cmd, const uint8_t *v, size_t n)
{
	/* RFC 1870 6: size-value = 1*20DIGIT.  Comparing with the limit
	 * (552) is the session's job. */
	if (v == NULL || !parse_u64(v, n, &cmd->mail.size))
		return R_SIZE;
	cmd->mail.has_size = true;
	return NULL;
}

static const char *param_body(struct smtp_cmd *cmd, const uint8_t *v, size_t n)
{
	if (v != NULL && ci_eq(v, n, "7BIT")) {
		cmd->mail.body = SMTP_BODY_7BIT;
	} else if (v != NULL && ci_eq(v, n, "8BITMIME")) {
		cmd->mail.body = SMTP_BODY_8BITMIME;
	} else if (v != NULL && ci_eq(v, n, "BINARYMIME")) {
		/* RFC 3030 3: only valid when BINARYMIME was offered; it is
		 * not, so say 504 rather than pretend the value is unknown. */
		cmd->mail.body = SMTP_BODY_BINARYMIME;
		return R_BINARYMIME;
	} else {
		return R_BODY;
	}
	return NULL;
}

static const char *param_smtputf8(struct smtp_cmd *cmd, const uint8_t *v, size_t n)
{
	(void)n;
	/* RFC 6531 3.4: the parameter has no value. */
	if (v != NULL)
		return R_SMTPUTF8;
	cmd->mail.smtputf8 = true;
	return NULL;
}

static const char *param_ret(struct smtp_cmd *cmd, const uint8_t *v, size_t n)
{
	if (v != NULL && ci_eq(v, n, "FULL"))
		cmd->mail.ret = SMTP_RET_FULL;
	else if (v != NULL && ci_eq(v, n, "HDRS"))
		cmd->mail.ret = SMTP_RET_HDRS;
	else
		return R_RET;
	return NULL;
}

static const char *param_envid(struct smtp_cmd *cmd, const uint8_t *v, size_t n)
{
	/* RFC 3461 4.4: xtext, at most 100 characters. */
	if (v == NULL || n > SMTP_ENVID_MAX || !smtp_xtext_valid((const char *)v, n))
		return R_ENVID;
	cmd->mail.envid = slice_of(v, n);
	return NULL;
}

static const char *param_auth(struct smtp_cmd *cmd, const uint8_t *v, size_t n)
{
	/* RFC 4954 5: AUTH=<> or AUTH=xtext(addr-spec). */
	bool empty = v != NULL && n == 2 && v[0] == '<' && v[1] == '>';
	if (v == NULL || (!empty && !smtp_xtext_valid((const char *)v, n)))
		return R_AUTH;
	cmd->mail.auth = slice_of(v, n);
	return NULL;
}

static const char *param_notify(struct smtp_cmd *cmd, const uint8_t *v, size_t n)
{
	static const struct {
		const char *name;
		uint8_t bit;
	} kinds[] = {
	    {"NEVER", SMTP_NOTIFY_NEVER},
	    {"SUCCESS", SMTP_NOTIFY_SUCCESS},
	    {"FAILURE", SMTP_NOTIFY_FAILURE},
	    {"DELAY", SMTP_NOTIFY_DELAY},
	};
	uint8_t bits = 0;

	if (v == NULL)
		return R_NOTIFY;
	const uint8_t *p = v, *end = v + n;
	for (;;) {
		const uint8_t *item = p;
		uint8_t bit = 0;
		while (p < end && *p != ',')
			p++;
		for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
			if (ci_eq(item, (size_t)(p - item), kinds[i].name))
				bit = kinds[i].bit;
		if (bit == 0)
			return R_NOTIFY;
		bits |= bit;
		if (p == end)
			break;
		p++;
	}
	/* RFC 3461 4.1: NEVER must appear alone. */
	if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
		return R_NOTIFY;
	cmd->rcpt.notify = bits;
	return NULL;
}

static const char *param_orcpt(struct smtp_cmd *cmd, const uint8_t *v, size_t n)
{
	/* RFC 3461 4.2: addr-type ";" xtext, at most 500 characters. */
	if (v == NULL || n > SMTP_ORCPT_MAX)
		return R_ORCPT;
	const uint8_t *semi = memchr(v, ';', n);
	if (semi == NULL || semi == v)
		return R_ORCPT;
	for (const uint8_t *p = v; p < semi; p++)
		if (!ch_atext(*p))
			return R_ORCPT;
	if (!smtp_xtext_valid((const char *)semi + 1, (size_t)(v + n - semi - 1)))
		return R_ORCPT;
	cmd->rcpt.orcpt = slice_of(v, n);
	return NULL;
}

static const struct param_def mail_params[] = {
    {"SIZE", param_size}, {"BODY", param_body},	  {"SMTPUTF8", param_smtputf8},
    {"RET", param_ret},	  {"ENVID", param_envid}, {"AUTH", param_auth},
};

static const struct param_def rcpt_params[] = {
    {"NOTIFY", param_notify},
    {"ORCPT", param_orcpt},
};

/* One "keyword[=value]" token; defs[] is the verb's parameter table and
 * *seen the bit set of those already given. */
static const char *param_one(struct smtp_cmd *cmd, const uint8_t *tok, size_t n,
			     const struct param_def *defs, size_t ndefs, uint32_t *seen)
{
	const uint8_t *eq = memchr(tok, '=', n);
	size_t kn = eq ? (size_t)(eq - tok) : n;
	const uint8_t *v = eq ? eq + 1 : NULL;
	size_t vn = eq ? n - kn - 1 : 0;

	if (!param_keyword_valid(tok, kn) || (v != NULL && !param_value_valid(v, vn)))
		return R_PARAM_SYNTAX;
	for (size_t i = 0; i < ndefs; i++) {
		if (!ci_eq(tok, kn, defs[i].name))
			continue;
		/* A repeated parameter is ambiguous: which one wins? */
		if (*seen & (1u << i))
			return R_PARAM_DUP;
		*seen |= 1u << i;
		return defs[i].fn(cmd, v, vn);
	}
	return R_PARAM_UNKNOWN;
}

/* [SP Mail-parameters] / [SP Rcpt-parameters]; p is at a space or end. */
static const char *params_parse(struct smtp_cmd *cmd, const uint8_t *p, const uint8_t *end,
				const struct param_def *defs, size_t ndefs)
{
	uint32_t seen = 0;
	assert(ndefs < 32);

	while (p < end) {
		assert(*p == ' ');
		while (p < end && *p == ' ')
			p++;
		const uint8_t *tok = p;
		while (p < end && *p != ' ')
			p++;
		if (p == tok)
			break;
		const char *reply = param_one(cmd, tok, (size_t)(p - tok), defs, ndefs, &seen);
		if (reply != NULL)
			return reply;
	}
	return NULL;
}

/* ---- commands (RFC 5321 4.1.1) ------------------------------------------ */

enum arg_kind {
	ARG_NONE,     /* DATA, RSET, QUIT, STARTTLS: nothing may follow */
	ARG_OPTIONAL, /* NOOP, HELP */
	ARG_REQUIRED, /* VRFY, EXPN, AUTH: kept as a slice */
	ARG_HELO,
	ARG_EHLO,
	ARG_MAIL,
	ARG_RCPT,
	ARG_BDAT,
};

struct verb_def {
	const char *name;
	enum smtp_verb verb;
	enum arg_kind kind;
	const char *syntax; /* reply for a missing, extra or malformed argument */
};

static const struct verb_def verbs[] = {
    {"HELO", SMTP_VERB_HELO, ARG_HELO, "501 5.5.4 Syntax: HELO hostname"},
    {"EHLO", SMTP_VERB_EHLO, ARG_EHLO, "501 5.5.4 Syntax: EHLO hostname"},
    {"MAIL", SMTP_VERB_MAIL, ARG_MAIL, "501 5.5.4 Syntax: MAIL FROM:<address>"},
    {"RCPT", SMTP_VERB_RCPT, ARG_RCPT, "501 5.5.4 Syntax: RCPT TO:<address>"},
    {"DATA", SMTP_VERB_DATA, ARG_NONE, "501 5.5.4 Syntax: DATA"},
    {"BDAT", SMTP_VERB_BDAT, ARG_BDAT, "501 5.5.4 Syntax: BDAT size [LAST]"},
    {"RSET", SMTP_VERB_RSET, ARG_NONE, "501 5.5.4 Syntax: RSET"},
    {"NOOP", SMTP_VERB_NOOP, ARG_OPTIONAL, NULL},
    {"QUIT", SMTP_VERB_QUIT, ARG_NONE, "501 5.5.4 Syntax: QUIT"},
    {"VRFY", SMTP_VERB_VRFY, ARG_REQUIRED, "501 5.5.4 Syntax: VRFY address"},
    {"EXPN", SMTP_VERB_EXPN, ARG_REQUIRED, "501 5.5.4 Syntax: EXPN list"},
    {"HELP", SMTP_VERB_HELP, ARG_OPTIONAL, NULL},
    {"STARTTLS", SMTP_VERB_STARTTLS, ARG_NONE, "501 5.5.4 Syntax: STARTTLS"},
    {"AUTH", SMTP_VERB_AUTH, ARG_REQUIRED, "501 5.5.4 Syntax: AUTH mechanism [response]"},
};

static const struct verb_def *verb_find(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
		if (ci_eq(p, n, verbs[i].name))
			return &verbs[i];
	return NULL;
}

/* "HELO" SP Domain / "EHLO" SP ( Domain / address-literal ) (4.1.1.1).
 * A gateway in front of real clients takes what they send: Windows hosts
 * say "EHLO MY_PC", appliances say "HELO [192.0.2.1]".  Any one printable
 * ASCII word is accepted (it only ever reaches logs and the Received:
 * header, so no control characters and no spaces); judging it is a filter's
 * job (helo stage), not the parser's. */
static int cmd_hello(const struct verb_def *def, const uint8_t *a, const uint8_t *end,
		     struct smtp_cmd *cmd)
{
	size_t n = (size_t)(end - a);

	if (n == 0 || memchr(a, ' ', n) != NULL)
		return cmd_fail(cmd, def->syntax);
	if (n > SMTP_DOMAIN_MAX)
		return cmd_fail(cmd, R_DOMAIN_LONG);
	for (size_t i = 0; i < n; i++)
		if (a[i] < 0x21 || a[i] > 0x7e)
			return cmd_fail(cmd, R_BAD_DOMAIN);
	return SMTP_PARSE_OK;
}

/* "MAIL FROM:" Reverse-path [SP Mail-parameters] / "RCPT TO:" Forward-path
 * [SP Rcpt-parameters] (4.1.1.2, 4.1.1.3). */
static int cmd_mail_rcpt(const struct verb_def *def, const uint8_t *a, const uint8_t *end,
			 struct smtp_cmd *cmd)
{
	const struct path_role *r = def->kind == ARG_MAIL ? &role_mail : &role_rcpt;
	const char *reply;

	assert(def->kind == ARG_MAIL || def->kind == ARG_RCPT);

	if (!ci_prefix(a, end, r->keyword))
		return cmd_fail(cmd, r->syntax);
	a += strlen(r->keyword);
	/* Not in the grammar, but sent by enough clients that every MTA
	 * tolerates it; exactly one space, so "FROM:  <x>" stays an error. */
	if (a < end && *a == ' ')
		a++;
	/* "MAIL FROM:user@host" is a malformed path, not a malformed verb. */
	if (a == end || *a != '<')
		return cmd_fail(cmd, r->bad);
	reply = path_parse(&a, end, &cmd->path, r);
	if (reply != NULL)
		return cmd_fail(cmd, reply);
	if (a < end && *a != ' ')
		return cmd_fail(cmd, r->syntax);
	if (r->mail)
		reply = params_parse(cmd, a, end, mail_params,
				     sizeof mail_params / sizeof mail_params[0]);
	else
		reply = params_parse(cmd, a, end, rcpt_params,
				     sizeof rcpt_params / sizeof rcpt_params[0]);
	return reply != NULL ? cmd_fail(cmd, reply) : SMTP_PARSE_OK;
}

/* "BDAT" SP chunk-size [SP end-marker] (RFC 3030 2). */
static int cmd_bdat(const struct verb_def *def, const uint8_t *a, const uint8_t *end,
		    struct smtp_cmd *cmd)
{
	const uint8_t *d = a;
	while (a < end && ch_digit(*a))
		a++;
	if (!parse_u64(d, (size_t)(a - d), &cmd->bdat_size))
		return cmd_fail(cmd, def->syntax);
	if (a == end)
		return SMTP_PARSE_OK;
	if (*a != ' ')
		return cmd_fail(cmd, def->syntax);
	while (a < end && *a == ' ')
		a++;
	if (!ci_eq(a, (size_t)(end - a), "LAST"))
		return cmd_fail(cmd, def->syntax);
	cmd->bdat_last = true;
	return SMTP_PARSE_OK;
}

static int cmd_args(const struct verb_def *def, const uint8_t *a, const uint8_t *end,
		    struct smtp_cmd *cmd)
{
	switch (def->kind) {
	case ARG_NONE:
		return a == end ? SMTP_PARSE_OK : cmd_fail(cmd, def->syntax);
	case ARG_OPTIONAL:
		return SMTP_PARSE_OK;
	case ARG_REQUIRED:
		return a < end ? SMTP_PARSE_OK : cmd_fail(cmd, def->syntax);
	case ARG_HELO:
	case ARG_EHLO:
		return cmd_hello(def, a, end, cmd);
	case ARG_MAIL:
	case ARG_RCPT:
		return cmd_mail_rcpt(def, a, end, cmd);
	case ARG_BDAT:
		return cmd_bdat(def, a, end, cmd);
	default:
		abort();
	}
}

int smtp_cmd_parse(const char *line, size_t len, struct smtp_cmd *cmd)
{
	assert(cmd != NULL);
	assert(line != NULL || len == 0);
	memset(cmd, 0, sizeof *cmd);
	if (len == 0)
		return cmd_fail(cmd, R_UNRECOGNIZED);
	/* The 512-octet bound belongs to framing (smtp_line_scan), which may
	 * one day grant MAIL/RCPT the extra room RFC 3461 4 and RFC 4954 5
	 * allow; here only what keeps slices valid is checked. */
	if ((uint64_t)len > UINT32_MAX)
		return cmd_fail(cmd, R_LINE_TOO_LONG);
	const uint8_t *p = (const uint8_t *)line, *end = p + len;
	/* smtp_line_scan already refused these; checked again because a
	 * parser must not trust its caller with attacker bytes. */
	if (memchr(p, '\r', len) || memchr(p, '\n', len) || memchr(p, '\0', len))
		return cmd_fail(cmd, R_BAD_OCTET);
	/* Trailing spaces are not arguments: "DATA " and "QUIT " are common
	 * enough from real clients that refusing them helps nobody. */
	while (end > p && end[-1] == ' ')
		end--;

	const uint8_t *verb_end = memchr(p, ' ', (size_t)(end - p));
	if (verb_end == NULL)
		verb_end = end;
	const struct verb_def *def = verb_find(p, (size_t)(verb_end - p));
	if (def == NULL)
		return cmd_fail(cmd, R_UNRECOGNIZED);
	cmd->verb = def->verb;

	const uint8_t *a = verb_end;
	while (a < end && *a == ' ')
		a++;
	cmd->arg = slice_of(a, (size_t)(end - a));
	return cmd_args(def, a, end, cmd);
}

/* ---- message body (RFC 5321 4.1.1.4, 4.5.2; RFC 3030) -------------------- */

/*
 * Phases.  PH_BOL is "just after CRLF" — the only place a dot can start the
 * terminator; the DATA command's own CRLF puts us there at the start.
 * PH_BOL_LF is the start of a line that followed a bare LF: a line for
 * counting, never for the terminator, so "\n.\r\n" is content.
 */
enum data_phase {
	PH_BOL = 0,
	PH_BOL_LF,
	PH_TEXT,
	PH_CR,	   /* CR seen; LF makes it CRLF, anything else a bare CR */
	PH_DOT,	   /* CRLF "." */
	PH_DOT_CR, /* CRLF "." CR */
	PH_END,
};

#define HDR_NO_MATCH 0xff
static const char received_lc[] = "received:";

/* Bytes that leave the plain-text fast path. */
static const uint8_t data_stop[256] = {['\0'] = 1, ['\n'] = 1, ['\r'] = 1};

void smtp_data_begin(struct smtp_data_state *st, bool dot)
{
	assert(st != NULL);
	memset(st, 0, sizeof *st);
	st->phase = PH_BOL;
	st->in_header = 1;
	st->hdr_match = 0;
	st->dot = dot;
}

static inline void data_line_end(struct smtp_data_state *s)
{
	/* RFC 5322 2.1: the first empty line ends the header section. */
	if (s->in_header && s->line_len == 0)
		s->in_header = 0;
	s->line_len = 0;
	s->hdr_match = s->in_header ? 0 : HDR_NO_MATCH;
}

/* Only header fields at the start of a line count: a "Received:" in the
 * body or inside another field is not a hop (loop detection, 6.3). */
static inline void data_hdr_match(struct smtp_data_state *s, uint8_t c)
{
	if (ch_lower(c) != (uint8_t)received_lc[s->hdr_match]) {
		s->hdr_match = HDR_NO_MATCH;
		return;
	}
	if (++s->hdr_match == sizeof received_lc - 1) {
		if (s->received_count < UINT32_MAX)
			s->received_count++;
		s->hdr_match = HDR_NO_MATCH;
	}
}

static inline void data_line_grow(struct smtp_data_state *s, size_t n)
{
	/* 4.5.3.1.6: 1000 octets per line including CRLF. */
	if (n > UINT32_MAX - s->line_len)
		s->line_len = UINT32_MAX;
	else
		s->line_len += (uint32_t)n;
	if (s->line_len > SMTP_TEXT_LINE_MAX - 2)
		s->flags |= SMTP_DATA_LONG_LINE;
}

/* An octet of line content (anything but the CRLF or LF that ends it). */
static inline void data_octet(struct smtp_data_state *s, uint8_t c)
{
	data_line_grow(s, 1);
	if (c == '\0')
		s->flags |= SMTP_DATA_NUL;
	if (c >= 0x80)
		s->flags |= s->in_header ? SMTP_DATA_8BIT | SMTP_DATA_8BIT_HEADER : SMTP_DATA_8BIT;
	if (s->hdr_match != HDR_NO_MATCH)
		data_hdr_match(s, c);
}

static inline void data_text(struct smtp_data_state *s, uint8_t c)
{
	if (c == '\r') {
		s->phase = PH_CR;
	} else if (c == '\n') {
		s->flags |= SMTP_DATA_BARE_LF;
		data_line_end(s);
		s->phase = PH_BOL_LF;
	} else {
		data_octet(s, c);
		s->phase = PH_TEXT;
	}
}

/* One octet through the state machine; true when it completed CRLF.CRLF. */
static inline bool data_byte(struct smtp_data_state *s, uint8_t c)
{
	switch (s->phase) {
	case PH_BOL:
		if (s->dot && c == '.') {
			/* Either the terminator or a stuffing dot (4.5.2); a
			 * stuffing dot is not stored, so it is not counted. */
			s->phase = PH_DOT;
			return false;
		}
		data_text(s, c);
		return false;
	case PH_BOL_LF:
	case PH_TEXT:
		data_text(s, c);
		return false;
	case PH_CR:
		if (c == '\n') {
			data_line_end(s);
			s->phase = PH_BOL;
			return false;
		}
		break;
	case PH_DOT:
		if (c == '\r') {
			s->phase = PH_DOT_CR;
		} else {
			s->stuff_len++; /* the line goes on: the dot was stuffing */
			data_text(s, c);
		}
		return false;
	case PH_DOT_CR:
		if (c == '\n') {
			s->phase = PH_END;
			return true;
		}
		s->stuff_len++; /* ".\r" and more: stuffing, then a bare CR */
		break;
	default:
		abort();
	}
	/* A CR not followed by LF: content, flagged, and never part of a
	 * line end — "\r.\r" must not end the data (CVE-2023-51764). */
	s->flags |= SMTP_DATA_BARE_CR;
	data_octet(s, '\r');
	data_text(s, c);
	return false;
}

/*
 * data_skip() returns the first stop byte (CR, LF, NUL) in [p, end), or end,
 * and ORs the skipped bytes into *acc (bit 7 of any byte of it set: 8BIT).
 * It is the body's hot loop, so it looks at 16 (SSE2) or 8 (portable) bytes
 * per step; RMX_PARSE_PORTABLE forces the portable one so both can be tested.
 */
#if defined(__SSE2__) && !defined(RMX_PARSE_PORTABLE)
static inline const uint8_t *data_skip(const uint8_t *p, const uint8_t *end, uint64_t *acc)
{
	const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
	const __m128i nul = _mm_setzero_si128();
	__m128i high = _mm_setzero_si128();

	while (end - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
		__m128i stop =
		    _mm_or_si128(_mm_cmpeq_epi8(v, nul),
				 _mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)));
		unsigned mask = (unsigned)_mm_movemask_epi8(stop);
		if (mask != 0) {
			unsigned k = (unsigned)__builtin_ctz(mask);
			if ((unsigned)_mm_movemask_epi8(v) & ((1u << k) - 1))
				*acc |= 0x80;
			p += k;
			break;
		}
		high = _mm_or_si128(high, v);
		p += 16;
	}
	if (_mm_movemask_epi8(high) != 0)
		*acc |= 0x80;
	while (p < end && !data_stop[*p])
		*acc |= *p++;
	return p;
}
#else
/* A word holds a stop byte iff one of w, w^CR, w^LF has a zero byte;
 * (v - 0x01..) & ~v & 0x80.. marks it, and the lowest mark is always exact
 * (borrows only run upwards), so on little-endian its index is the byte's. */
static inline uint64_t data_stop_bits(uint64_t w)
{
	const uint64_t ones = 0x0101010101010101u, highs = ones * 0x80;
	uint64_t cr = w ^ (ones * '\r'), lf = w ^ (ones * '\n');
	return (((w - ones) & ~w) | ((cr - ones) & ~cr) | ((lf - ones) & ~lf)) & highs;
}

static inline const uint8_t *data_skip(const uint8_t *p, const uint8_t *end, uint64_t *acc)
{
	uint64_t a = *acc;

	while (end - p >= 8) {
		uint64_t w;
		memcpy(&w, p, sizeof w);
		uint64_t z = data_stop_bits(w);
		if (z != 0) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
			unsigned k = (unsigned)__builtin_ctzll(z) / 8;
			a |= w & ((UINT64_C(1) << (8 * k)) - 1);
			p += k;
#endif
			break;
		}
		a |= w;
		p += 8;
	}
	while (p < end && !data_stop[*p])
		a |= *p++;
	*acc = a;
	return p;
}
#endif

int smtp_data_scan(struct smtp_data_state *st, const char *buf, size_t len, size_t *used)
{
	assert(st != NULL && used != NULL);
	assert(buf != NULL || len == 0);
	if (len == 0 || st->phase == PH_END) {
		*used = 0; /* buf may be NULL: no pointer arithmetic on it */
		return st->phase == PH_END ? SMTP_PARSE_OK : SMTP_PARSE_AGAIN;
	}
	const uint8_t *start = (const uint8_t *)buf, *p = start, *end = start + len;
	struct smtp_data_state s = *st; /* a local copy stays in registers */
	uint64_t acc = 0, hacc = 0;	/* octets skipped in the body / the header section */
	int rc = SMTP_PARSE_AGAIN;

	while (p < end) {
		if (s.phase == PH_TEXT && s.hdr_match == HDR_NO_MATCH) {
			/* A skip never crosses a line end, so it lies wholly in
			 * the header section or wholly after it. */
			const uint8_t *q = data_skip(p, end, s.in_header ? &hacc : &acc);
			data_line_grow(&s, (size_t)(q - p));
			p = q;
			if (p == end)
				break;
		}
		if (data_byte(&s, *p++)) {
			rc = SMTP_PARSE_OK;
			break;
		}
	}
	if ((acc | hacc) & 0x8080808080808080u)
		s.flags |= SMTP_DATA_8BIT;
	if (hacc & 0x8080808080808080u)
		s.flags |= SMTP_DATA_8BIT_HEADER;
	assert((rc == SMTP_PARSE_OK) == (s.phase == PH_END));
	*used = (size_t)(p - start);
	s.wire_len += *used;
	*st = s;
	assert(*used <= len);
	return rc;
}

uint64_t smtp_data_size(const struct smtp_data_state *st)
{
	assert(st != NULL);
	/* Octets held back: a "." at the start of a line, ".\r" after it, or
	 * the whole terminator once it is complete. */
	uint64_t held = st->phase == PH_DOT	 ? 1
			: st->phase == PH_DOT_CR ? 2
			: st->phase == PH_END	 ? 3
						 : 0;

	assert(st->wire_len >= st->stuff_len + held);
	return st->wire_len - st->stuff_len - held;
}

bool smtp_data_ends_line(const struct smtp_data_state *st)
{
	assert(st != NULL);
	/* PH_BOL: at the start, or after CRLF (the terminator too). */
	return st->phase == PH_BOL || st->phase == PH_END;
}

bool smtp_data_ends_cr(const struct smtp_data_state *st)
{
	assert(st != NULL);
	return st->phase == PH_CR;
}

/* ---- dot-unstuffing (RFC 5321 4.5.2) ------------------------------------ */

/* out may equal in: the output never runs ahead of the input. */
size_t smtp_unstuff(const char *in, size_t len, char *out, bool *line_start)
{
	assert(line_start != NULL);
	assert((in != NULL && out != NULL) || len == 0);
	size_t i = 0, n = 0;
	bool bol = *line_start;

	while (i < len) {
		if (bol && in[i] == '.') {
			i++;
			bol = false;
			continue;
		}
		const char *nl = memchr(in + i, '\n', len - i);
		size_t seg = nl ? (size_t)(nl - (in + i)) + 1 : len - i;
		memmove(out + n, in + i, seg);
		n += seg;
		i += seg;
		bol = nl != NULL;
	}
	assert(n <= len);
	*line_start = bol;
	return n;
}

size_t smtp_cmd_line_max(enum smtp_verb verb)
{
	switch (verb) {
	case SMTP_VERB_MAIL:
		return SMTP_MAIL_LINE_MAX;
	case SMTP_VERB_RCPT:
		return SMTP_RCPT_LINE_MAX;
	case SMTP_VERB_AUTH:
		/* RFC 4954 4: an initial response may be long; ours (PLAIN with
		 * the largest identities) fits the scan bound. */
		return SMTP_LINE_SCAN_MAX;
	case SMTP_VERB_UNKNOWN:
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
	case SMTP_VERB_DATA:
	case SMTP_VERB_BDAT:
	case SMTP_VERB_RSET:
	case SMTP_VERB_NOOP:
	case SMTP_VERB_QUIT:
	case SMTP_VERB_VRFY:
	case SMTP_VERB_EXPN:
	case SMTP_VERB_HELP:
	case SMTP_VERB_STARTTLS:
		break;
	}
	return SMTP_CMD_LINE_MAX;
}
