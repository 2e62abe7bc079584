/*
 * libFuzzer driver for the users_file parser (auth/users.c).  The input is
 * the file's contents.
 *
 * crypt(3) is replaced: auth_users_parse() hashes a random secret with the
 * most common (method, cost) of the file to make its dummy hash, which
 * takes tens of milliseconds at real costs and hours for "$2b$31$", so the
 * driver defines crypt_rn() itself (the executable's definition wins over
 * libcrypt's; crypt_checksalt and crypt_gensalt_rn stay real).  The
 * stand-in "hashes" PASS with a setting to the setting itself and anything
 * else to a fixed string, which turns auth_users_verify() into a cheap
 * lookup with a known answer.
 *
 * On success: the user count equals the number of lines that are neither
 * blank nor comments (every other line is a user, or parsing fails); for
 * the first USERS_PROBED such lines, the name before ':' verifies with PASS
 * (OK), with another password or the right one cut by a NUL
 * (BAD_PASSWORD), no two of them are the same name, and the name with a
 * control character appended is unknown (NO_USER); the empty name and an
 * over-long one are unknown; every setting crypt_rn() sees starts with '$';
 * an extra ref and unref leave the table alive; the last unref frees it
 * (ASan's leak checker runs).
 *
 * On failure: *out is NULL; the error is one line "users_file:LINE: ..."
 * that fits AUTH_USERS_ERR_MAX with room to spare (no truncation), holds no
 * ASCII control character (octets over 0x7f may come from a UTF-8 user
 * name in the duplicate error), names a line that exists and is not a
 * blank or comment line unless it holds a NUL or is over
 * AUTH_USERS_LINE_MAX; a second parse
 * into a data-derived, exactly sized error buffer (or none) fails the same
 * way and writes a prefix of the same text.
 */
#include <crypt.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/users.h"
#include "fuzz_common.h"

/* Each verify zeroes a 32 KiB struct crypt_data twice: bound the probes. */
#define USERS_PROBED 16
#define INPUT_MAX    65536

static const char PASS[] = "fuzz-pass";
static const char MISMATCH[] = "$fuzz$mismatch";

char *crypt_rn(const char *phrase, const char *setting, void *data, int size)
{
	struct crypt_data *cd = data;
	CHECK(phrase != NULL && setting != NULL && cd != NULL && size >= (int)sizeof(*cd));
	CHECK(strlen(phrase) < CRYPT_MAX_PASSPHRASE_SIZE);
	size_t n = strlen(setting);
	CHECK(setting[0] == '$' && n < sizeof(cd->output));
	if (strcmp(phrase, PASS) == 0)
		memcpy(cd->output, setting, n + 1);
	else
		memcpy(cd->output, MISMATCH, sizeof(MISMATCH));
	return cd->output;
}

/* One line of the input, as users.c sees it: without LF, trailing blanks
 * and CR; lead counts leading blanks. */
struct line {
	const char *s;
	size_t raw_len, len, lead;
};

static struct line line_at(const char *s, size_t raw_len)
{
	struct line l = {.s = s, .raw_len = raw_len, .len = raw_len};
	while (l.len > 0 && (s[l.len - 1] == ' ' || s[l.len - 1] == '\t' || s[l.len - 1] == '\r'))
		l.len--;
	while (l.lead < l.len && (s[l.lead] == ' ' || s[l.lead] == '\t'))
		l.lead++;
	return l;
}

static bool line_is_entry(const struct line *l)
{
	return l->lead < l->len && l->s[l->lead] != '#';
}

/* Line number nr (from 1); false when the input has no such line. */
static bool line_nr(const char *buf, size_t len, unsigned long nr, struct line *out)
{
	size_t off = 0;
	for (unsigned long i = 1; off < len; i++) {
		const char *nl = memchr(buf + off, '\n', len - off);
		size_t end = nl != NULL ? (size_t)(nl - buf) : len;
		if (i == nr) {
			*out = line_at(buf + off, end - off);
			return true;
		}
		off = end + 1;
	}
	return false;
}

static void check_user(const struct auth_users *u, const struct line *l)
{
	const char *colon = memchr(l->s, ':', l->len);
	CHECK(colon != NULL);
	size_t n = (size_t)(colon - l->s);
	CHECK(n >= 1 && n <= AUTH_USER_MAX);
	CHECK(auth_users_verify(u, l->s, n, PASS, strlen(PASS)) == AUTH_VERIFY_OK);
	CHECK(auth_users_verify(u, l->s, n, "fuzz-pas", 8) == AUTH_VERIFY_BAD_PASSWORD);
	/* The right password cut short by a NUL never matches. */
	CHECK(auth_users_verify(u, l->s, n, "fuzz-pass\0x", 11) == AUTH_VERIFY_BAD_PASSWORD);
	char other[AUTH_USER_MAX + 1];
	memcpy(other, l->s, n);
	other[n] = '\x01'; /* no user name holds a control character */
	CHECK(auth_users_verify(u, other, n + 1, PASS, strlen(PASS)) == AUTH_VERIFY_NO_USER);
}

/* A user may appear once: two probed lines never share a name. */
static void check_distinct(const struct line *probed, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		size_t a =
		    (size_t)((const char *)memchr(probed[i].s, ':', probed[i].len) - probed[i].s);
		for (uint32_t j = i + 1; j < n; j++) {
			size_t b = (size_t)((const char *)memchr(probed[j].s, ':', probed[j].len) -
					    probed[j].s);
			CHECK(a != b || memcmp(probed[i].s, probed[j].s, a) != 0);
		}
	}
}

static void check_ok(const struct auth_users *u, const char *buf, size_t len)
{
	struct line lines[USERS_PROBED];
	uint32_t entries = 0, probed = 0;
	for (size_t off = 0; off < len;) {
		const char *nl = memchr(buf + off, '\n', len - off);
		size_t end = nl != NULL ? (size_t)(nl - buf) : len;
		struct line l = line_at(buf + off, end - off);
		CHECK(l.raw_len <= AUTH_USERS_LINE_MAX && memchr(l.s, '\0', l.raw_len) == NULL);
		if (line_is_entry(&l)) {
			CHECK(l.lead == 0);
			entries++;
			if (probed < USERS_PROBED) {
				check_user(u, &l);
				lines[probed++] = l;
			}
		}
		off = end + 1;
	}
	CHECK(auth_users_count(u) == entries);
	check_distinct(lines, probed);
	char big[AUTH_USER_MAX + 1];
	memset(big, 'a', sizeof(big));
	CHECK(auth_users_verify(u, "", 0, PASS, strlen(PASS)) == AUTH_VERIFY_NO_USER);
	CHECK(auth_users_verify(u, big, sizeof(big), PASS, strlen(PASS)) == AUTH_VERIFY_NO_USER);
}

static void check_err(const char *err, const char *buf, size_t len)
{
	size_t n = strlen(err);
	CHECK(n > 0 && n + 1 < AUTH_USERS_ERR_MAX);
	for (size_t i = 0; i < n; i++)
		CHECK((unsigned char)err[i] >= 0x20 && err[i] != 0x7f);
	CHECK(strncmp(err, "users_file:", 11) == 0);
	char *end;
	unsigned long nr = strtoul(err + 11, &end, 10);
	CHECK(end > err + 11 && err[11] >= '1' && err[11] <= '9' && strncmp(end, ": ", 2) == 0);
	CHECK(strlen(end + 2) > 0);
	struct line l;
	CHECK(line_nr(buf, len, nr, &l));
	CHECK(line_is_entry(&l) || l.raw_len > AUTH_USERS_LINE_MAX ||
	      memchr(l.s, '\0', l.raw_len) != NULL);
}

/* The same parse into a smaller error buffer, or none: same result, and
 * what was written is a prefix of the full error. */
static void check_err_sizes(const char *buf, size_t len, int want, const char *full, size_t size)
{
	char *err = size > 0 ? malloc(size) : NULL;
	struct auth_users *u = (struct auth_users *)&u;
	CHECK(size == 0 || err != NULL);
	if (err != NULL)
		memset(err, 'X', size);
	int rc = auth_users_parse(buf, len, &u, err, size);
	CHECK(rc == want && (rc == 0) == (u != NULL));
	if (rc != 0 && err != NULL) {
		size_t n = strnlen(err, size);
		CHECK(n < size && strncmp(err, full, n) == 0);
		CHECK(n == size - 1 || n == strlen(full));
	}
	auth_users_unref(u);
	free(err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > INPUT_MAX)
		return 0;
	/* An exact heap copy: users.c must not read past len. */
	char *buf = malloc(size > 0 ? size : 1);
	CHECK(buf != NULL);
	memcpy(buf, data, size);
	char err[AUTH_USERS_ERR_MAX];
	memset(err, 0, sizeof(err));
	struct auth_users *u = (struct auth_users *)&u;
	int rc = auth_users_parse(buf, size, &u, err, sizeof(err));
	CHECK(rc == 0 || rc == -EINVAL);
	if (rc == 0) {
		CHECK(u != NULL && err[0] == '\0');
		check_ok(u, buf, size);
		CHECK(auth_users_ref(u) == u);
		auth_users_unref(u);
		CHECK(auth_users_count(u) <= size / 2 + 1); /* still alive after one unref */
		auth_users_unref(u);
	} else {
		CHECK(u == NULL);
		check_err(err, buf, size);
	}
	check_err_sizes(buf, size, rc, err, size > 0 ? data[size - 1] % AUTH_USERS_ERR_MAX : 0);
	free(buf);
	return 0;
}
