/*
 * filters/match_msg — the captured start of a message, for the data
 * stage's header and body matchers: where the header section ends, and its
 * fields one by one with their values unfolded (RFC 5322 2.2.3).  No
 * allocation: a value is unfolded into a buffer on the stack.
 */
#include <string.h>
#include <strings.h>

#include "filters/prog.h"

/* The end of the line at p (its LF), or end. */
static const char *line_end(const char *p, const char *end)
{
	const char *nl = memchr(p, '\n', (size_t)(end - p));

	return nl ? nl : end;
}

static bool blank(char ch)
{
	return ch == ' ' || ch == '\t';
}

size_t flt_msg_body_start(const char *m, size_t n)
{
	const char *p = m, *end = m + n;

	while (p < end) {
		const char *eol = line_end(p, end);

		if (eol == end)
			return n; /* the capture ends inside this line */
		if (eol == p || (eol == p + 1 && *p == '\r'))
			return (size_t)(eol + 1 - m);
		p = eol + 1;
	}
	return n;
}

bool flt_msg_header_any(const char *m, size_t n, const char *name, size_t nlen,
			bool (*test)(const char *v, size_t len, const void *ctx), const void *ctx)
{
	const char *p = m, *end = m + flt_msg_body_start(m, n);
	char buf[FLT_HDR_VALUE_MAX];

	while (p < end) {
		const char *eol = line_end(p, end), *colon;
		size_t k = 0;

		if (eol == p || (eol == p + 1 && *p == '\r'))
			break; /* the blank line */
		colon = memchr(p, ':', (size_t)(eol - p));
		/* A field of that name (blanks before the colon are obsolete
		 * syntax, RFC 5322 4.5.3, still seen). */
		bool hit = colon && !blank(*p);

		if (hit) {
			const char *ne = colon;

			while (ne > p && blank(ne[-1]))
				ne--;
			hit = (size_t)(ne - p) == nlen && strncasecmp(p, name, nlen) == 0;
		}
		const char *v = hit ? colon + 1 : NULL;

		/* The field runs over the continuation lines after it. */
		for (;;) {
			if (v) {
				const char *ve = eol > v && eol[-1] == '\r' ? eol - 1 : eol;

				for (; v < ve && k < sizeof(buf); v++)
					if (k || !blank(*v))
						buf[k++] = *v;
			}
			p = eol < end ? eol + 1 : end;
			if (p >= end || !blank(*p))
				break;
			eol = line_end(p, end);
			v = hit ? p : NULL;
		}
		if (hit) {
			while (k && blank(buf[k - 1]))
				k--;
			if (test(buf, k, ctx))
				return true;
		}
	}
	return false;
}
