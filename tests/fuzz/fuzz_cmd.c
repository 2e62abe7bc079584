/*
 * libFuzzer driver for command input: smtp_line_scan framing over arbitrary
 * bytes fed in data-derived splits, and smtp_cmd_parse over every framed line
 * (and over the raw input, which exercises its own defences).
 *
 * Invariants: *used never exceeds what was offered; AGAIN consumes all; a
 * line ends on its LF; an OK line holds no CR, LF or NUL and fits 512 octets;
 * framing does not depend on how the bytes were split; every refusal carries
 * a well-formed reply; every slice lies inside the parsed line; an accepted
 * path obeys its bounds.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "smtp/parse.h"

#define EVENTS_MAX 8192

struct event {
	int rc;
	size_t end; /* offset just past the line in the whole input */
	uint8_t error;
};

static void check_slice(struct smtp_slice s, const char *base, size_t len)
{
	if (s.len == 0)
		return;
	CHECK(s.ptr != NULL);
	CHECK(s.ptr >= base && s.ptr <= base + len);
	CHECK(s.len <= (size_t)(base + len - s.ptr));
}

static void check_reply(const char *r)
{
	CHECK(r != NULL);
	size_t n = strlen(r);
	CHECK(n >= 10 && n < 128);
	CHECK((r[0] == '4' || r[0] == '5') && r[1] >= '0' && r[1] <= '9' && r[2] >= '0');
	CHECK(r[3] == ' ' && r[4] == r[0] && r[5] == '.');
	CHECK(strpbrk(r, "\r\n") == NULL);
}

static void check_path(const struct smtp_cmd *cmd)
{
	const struct smtp_path *p = &cmd->path;
	if (p->null) {
		CHECK(cmd->verb == SMTP_VERB_MAIL && p->local.len == 0 && p->domain.len == 0);
	} else if (p->postmaster) {
		CHECK(cmd->verb == SMTP_VERB_RCPT && p->local.len == 10 && p->domain.len == 0);
	} else {
		CHECK(p->local.len >= 1 && p->local.len <= SMTP_LOCAL_MAX);
		CHECK(p->domain.len >= 1 && p->domain.len <= SMTP_DOMAIN_MAX);
		CHECK(p->local.len + p->domain.len + 3 <= SMTP_PATH_MAX);
	}
	if (cmd->verb == SMTP_VERB_MAIL) {
		CHECK(cmd->mail.envid.len <= SMTP_ENVID_MAX);
		CHECK(smtp_xtext_valid(cmd->mail.envid.ptr, cmd->mail.envid.len));
		CHECK(cmd->mail.body != SMTP_BODY_BINARYMIME);
	} else {
		uint8_t nt = cmd->rcpt.notify;
		CHECK(nt == 0 || nt == SMTP_NOTIFY_NEVER || (nt & SMTP_NOTIFY_NEVER) == 0);
		CHECK(cmd->rcpt.orcpt.len <= SMTP_ORCPT_MAX);
	}
}

static void check_cmd(const char *line, size_t len)
{
	struct smtp_cmd cmd;
	memset(&cmd, 0xa5, sizeof cmd); /* the parser must set every field */
	int rc = smtp_cmd_parse(line, len, &cmd);

	CHECK(rc == SMTP_PARSE_OK || rc == SMTP_PARSE_INVALID);
	CHECK(cmd.verb >= SMTP_VERB_UNKNOWN && cmd.verb <= SMTP_VERB_AUTH);
	check_slice(cmd.arg, line, len);
	check_slice(cmd.path.local, line, len);
	check_slice(cmd.path.domain, line, len);
	if (cmd.verb == SMTP_VERB_MAIL) {
		check_slice(cmd.mail.envid, line, len);
		check_slice(cmd.mail.auth, line, len);
	} else if (cmd.verb == SMTP_VERB_RCPT) {
		check_slice(cmd.rcpt.orcpt, line, len);
	}
	if (rc == SMTP_PARSE_INVALID) {
		check_reply(cmd.reply);
		return;
	}
	CHECK(cmd.reply == NULL && cmd.verb != SMTP_VERB_UNKNOWN);
	if (cmd.verb == SMTP_VERB_MAIL || cmd.verb == SMTP_VERB_RCPT)
		check_path(&cmd);
}

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64: splits must be reproducible from the input alone. */
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Frame data[0..size) fed in chunks (chunk_max 0: one buffer), parse every
 * good line, record each line end.  Returns the number of events. */
static size_t frame(const char *data, size_t size, uint64_t seed, size_t chunk_max,
		    struct event *ev)
{
	static char line[SMTP_LINE_SCAN_MAX];
	struct smtp_line_state st;
	size_t fill = 0, nev = 0, off = 0;

	smtp_line_reset(&st);
	while (off < size) {
		size_t left = size - off;
		if (chunk_max > 0) {
			size_t chunk = 1 + (size_t)(rng_next(&seed) % chunk_max);
			left = chunk < left ? chunk : left;
		}
		while (left > 0) {
			size_t used = SIZE_MAX;
			int rc = smtp_line_scan(&st, data + off, left, &used);
			CHECK(used <= left);
			/* Keep the line as a session would: only what fits. */
			size_t keep = used < sizeof line - fill ? used : sizeof line - fill;
			memcpy(line + fill, data + off, keep);
			fill += keep;
			off += used;
			left -= used;
			if (rc == SMTP_PARSE_AGAIN) {
				CHECK(left == 0 && st.error <= SMTP_LINE_TOO_LONG);
				continue;
			}
			CHECK(used >= 1 && data[off - 1] == '\n');
			if (rc == SMTP_PARSE_OK) {
				CHECK(st.error == SMTP_LINE_OK);
				CHECK(st.line_len <= SMTP_LINE_SCAN_MAX - 2 &&
				      fill == st.line_len + 2u);
				CHECK(line[fill - 2] == '\r' && line[fill - 1] == '\n');
				CHECK(memchr(line, '\r', st.line_len) == NULL);
				CHECK(memchr(line, '\0', st.line_len) == NULL);
				check_cmd(line, st.line_len);
			} else {
				CHECK(rc == SMTP_PARSE_INVALID && st.error != SMTP_LINE_OK);
			}
			if (nev < EVENTS_MAX)
				ev[nev++] = (struct event){rc, off, st.error};
			smtp_line_reset(&st);
			fill = 0;
		}
	}
	return nev;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct event whole[EVENTS_MAX], split[EVENTS_MAX];
	const char *in = (const char *)data;
	uint64_t seed = 0xcbf29ce484222325u; /* FNV-1a of the input */

	for (size_t i = 0; i < size; i++)
		seed = (seed ^ data[i]) * 0x100000001b3u;
	seed |= 1;

	/* The raw input as one "line": CR, LF, NUL and length are its problem. */
	check_cmd(in, size);

	size_t nw = frame(in, size, seed, 0, whole);
	size_t ns = frame(in, size, seed, 1 + seed % 64, split);
	CHECK(nw == ns);
	for (size_t i = 0; i < nw; i++) {
		CHECK(whole[i].rc == split[i].rc && whole[i].end == split[i].end);
		CHECK(whole[i].error == split[i].error);
	}
	return 0;
}
