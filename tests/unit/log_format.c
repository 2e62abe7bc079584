/* Pins log lines: every call site's format, hostile values parsed back (kv and JSON), cuts, reopen. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log/log.h"

/* ---- the log file under test ----------------------------------------------------------- */

static char dir[PATH_MAX], file[PATH_MAX + 16];
static off_t seen; /* bytes of the file already returned by new_text() */

static void use_format(bool json)
{
	char why[256];

	assert_int_equal(log_setup(LOG_DEBUG, json, file, why, sizeof(why)), 0);
}

/* What was appended since the last call, NUL-terminated. */
static char *new_text(size_t *len)
{
	static char buf[1 << 16];
	int fd = open(file, O_RDONLY);
	ssize_t n;

	assert_true(fd >= 0);
	n = pread(fd, buf, sizeof(buf) - 1, seen);
	close(fd);
	assert_true(n >= 0);
	seen += n;
	buf[n] = '\0';
	*len = (size_t)n;
	return buf;
}

/* Exactly one new line; returns it without its newline. */
static char *one_line(size_t *len)
{
	char *t = new_text(len);

	assert_true(*len > 0 && *len <= LOG_LINE_MAX);
	assert_true(t[*len - 1] == '\n');
	assert_null(memchr(t, '\n', *len - 1)); /* one line, not two */
	t[--*len] = '\0';
	return t;
}

/* ---- a strict parser of the kv format (log.h) ------------------------------------------ */

#define KV_MAX 24

struct kv {
	char key[LOG_KEY_MAX + 1];
	char val[LOG_LINE_MAX];
	size_t len;
};

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static bool kv_bare_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && c != '"' && c != '\'' && c != '=' && c != '\\';
}

/* A quoted value at s[*i] (the opening quote); false on any deviation. */
static bool kv_quoted(const char *s, size_t n, size_t *i, struct kv *p)
{
	for ((*i)++;; (*i)++) {
		if (*i >= n)
			return false;
		unsigned char c = (unsigned char)s[*i];
		if (c == '"')
			return ++*i, true;
		if (c < 0x20 || c >= 0x7f)
			return false;
		if (c == '\\') {
			char e = *i + 1 < n ? s[++*i] : '\0';
			if (e == 'x') {
				if (*i + 2 >= n || hexval(s[*i + 1]) < 0 || hexval(s[*i + 2]) < 0)
					return false;
				c = (unsigned char)(hexval(s[*i + 1]) << 4 | hexval(s[*i + 2]));
				*i += 2;
			} else {
				const char *from = "\"\\nrt", *to = "\"\\\n\r\t";
				const char *k = e ? strchr(from, e) : NULL;
				if (k == NULL)
					return false;
				c = (unsigned char)to[k - from];
			}
		}
		p->val[p->len++] = (char)c;
	}
}

/* Pairs of one line, or -1 when it is not the format log.h states. */
static int kv_parse(const char *s, size_t n, struct kv *out)
{
	size_t i = 0;
	int k = 0;

	while (i < n) {
		struct kv *p = &out[k];
		size_t kl = 0;

		if (k > 0 && s[i++] != ' ')
			return -1;
		if (k == KV_MAX)
			return -1;
		*p = (struct kv){0};
		while (
		    i < n &&
		    ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_') &&
		    kl < LOG_KEY_MAX)
			p->key[kl++] = s[i++];
		if (kl == 0 || i >= n || s[i++] != '=')
			return -1;
		if (i < n && s[i] == '"') {
			if (!kv_quoted(s, n, &i, p))
				return -1;
		} else {
			while (i < n && s[i] != ' ') {
				if (!kv_bare_char((unsigned char)s[i]))
					return -1;
				p->val[p->len++] = s[i++];
			}
			if (p->len == 0)
				return -1;
		}
		k++;
	}
	return k;
}

static void expect_keys(const struct kv *kv, int n, const char *const *keys)
{
	int k = 0;

	for (; keys[k]; k++) {
		assert_true(k < n);
		assert_string_equal(kv[k].key, keys[k]);
	}
	assert_int_equal(n, k);
}

/* ---- every call site ------------------------------------------------------------------- */

/* The string literals of one call: s points after "log_msg(". */
static bool call_format(const char *s, char *fmt, size_t cap, bool *literal)
{
	size_t n = 0;

	*literal = false;
	while (*s && *s != ',' && *s != ')')
		s++;
	if (*s != ',')
		return false; /* a mention in a comment: "log_msg()" */
	for (s++;;) {
		while (*s == ' ' || *s == '\t' || *s == '\n')
			s++;
		if (*s != '"')
			return true;
		*literal = true;
		for (s++; *s != '"'; s++) {
			char c = *s;
			if (c == '\\') {
				c = *++s;
				c = c == 'n' ? '\n' : c == 't' ? '\t' : c;
			}
			assert_true(c != '\0' && n + 1 < cap);
			fmt[n++] = c;
		}
		fmt[n] = '\0';
		s++;
	}
}

static unsigned scan_file(const char *path)
{
	static char text[1 << 20];
	char fmt[2048], why[200];
	unsigned sites = 0;
	FILE *f = fopen(path, "r");
	size_t n;

	assert_non_null(f);
	n = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[n] = '\0';
	for (const char *p = text; (p = strstr(p, "log_msg(")) != NULL; p += 8) {
		bool literal;

		if (p > text && (p[-1] == '_' || (p[-1] >= 'a' && p[-1] <= 'z')))
			continue;
		if (p - text >= 5 && strncmp(p - 5, "void ", 5) == 0)
			continue; /* the definition */
		if (!call_format(p + 8, fmt, sizeof(fmt), &literal))
			continue;
		if (!literal)
			fail_msg("%s: log_msg with a format that is not a literal", path);
		if (!log_format_valid(fmt, why, sizeof(why)))
			fail_msg("%s: log_msg format \"%s\": %s", path, fmt, why);
		sites++;
	}
	return sites;
}

static unsigned scan_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	unsigned sites = 0;

	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL) {
		char sub[PATH_MAX];
		size_t n = strlen(e->d_name);
		struct stat st;

		if (e->d_name[0] == '.')
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
		if (stat(sub, &st) != 0)
			continue;
		if (S_ISDIR(st.st_mode))
			sites += scan_dir(sub);
		else if (n > 2 && strcmp(e->d_name + n - 2, ".c") == 0)
			sites += scan_file(sub);
	}
	closedir(d);
	return sites;
}

/* Every log_msg() in the tree has a literal format this module writes
 * safely: a new call site with an unsupported conversion fails here, not
 * at the first time it logs. */
static void test_call_sites(void **state)
{
	const char *root = getenv("RINGMX_SRCDIR");
	static const char *const dirs[] = {"src", "queue", "filters", "ring"};
	unsigned sites = 0;

	(void)state;
	if (root == NULL)
		skip();
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		char path[PATH_MAX];

		snprintf(path, sizeof(path), "%s/%s", root, dirs[i]);
		sites += scan_dir(path);
	}
	print_message("%u call sites\n", sites);
	assert_true(sites >= 50); /* the scan found the call sites at all */
}

static void test_bad_formats(void **state)
{
	static const char *const bad[] = {
	    "",					   /* nothing */
	    "event=x %s",			   /* a value without a key */
	    "event=x key=%p",			   /* unsupported conversion */
	    "event=x key=%f",			   /* floating point */
	    "event=x key=%n",			   /* never */
	    "event=x key=%ls",			   /* wide */
	    "event=x key=%.3d",			   /* precision on an integer */
	    "event=x key=%#x",			   /* '#' flag */
	    "event=x key=%+d",			   /* '+' flag */
	    "event=x key=a\"%s\"",		   /* quote inside an unquoted value */
	    "event=x key=\"%s",			   /* unterminated */
	    "event=x key=\"%s\"tail",		   /* text after the closing quote */
	    "event=x  key=1",			   /* two spaces */
	    "event=x key=1 ",			   /* trailing space */
	    "event=x Key=1",			   /* upper-case key */
	    "event=x key=1 key=2",		   /* the same key twice */
	    "event=x ts=1",			   /* reserved */
	    "event=x level=1",			   /* reserved */
	    "event=x truncated=1",		   /* reserved */
	    "client=%s event=x",		   /* event first */
	    "event=x key=\x01",			   /* control byte in the format */
	    "event=x a_very_long_key_name_over=1", /* key over LOG_KEY_MAX */
	    "event=x a=1 b=1 c=1 d=1 e=1 f=1 g=1 h=1 i=1 j=1 k=1 l=1 m=1 n=1 o=1 p=1",
	};
	static const char *const good[] = {
	    "event=x",
	    "event=%s id=%s rcpt=<%.*s> reply=\"%s\"",
	    "event=x a=%016llx b=%016llX c=%zu d=%d e=%hhu f=%ju g=%td h=%c i=%-5s j=%*d k=%%",
	    "event=x reason=\"a literal with spaces: 100%%\"",
	    "event=x a=1 b=1 c=1 d=1 e=1 f=1 g=1 h=1 i=1 j=1 k=1 l=1 m=1 n=1 o=1",
	    /* log.c's own lines (not log_msg() calls, so not scanned) */
	    "event=log_dropped lines=%llu",
	    "event=fatal message=\"%.*s\"",
	    "event=log_format_error reason=\"%s\" format=\"%s\"",
	};
	char why[200];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why[0] = '\0';
		if (log_format_valid(bad[i], why, sizeof(why)))
			fail_msg("accepted: %s", bad[i]);
		assert_true(why[0] != '\0');
	}
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (!log_format_valid(good[i], why, sizeof(why)))
			fail_msg("refused: %s: %s", good[i], why);
}

/* ---- hostile values -------------------------------------------------------------------- */

/* What a peer can choose, and the string a JSON reader must get back. */
static const struct hostile {
	const char *raw;
	const char *json; /* NULL: raw itself (valid UTF-8) */
} hostile[] = {
    {"x\r\nts=2024-01-01T00:00:00.000Z level=info event=auth user=\"root\" result=ok", NULL},
    {"a\"b\\c=d 'e' f=g", NULL},
    {"\" result=ok forged=\"1", NULL},
    {"\x1b[31mred\x7f\x01\t\b\f", NULL},
    {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xc2\x9b", NULL},
    {"\xff\xfe", "\xef\xbf\xbd\xef\xbf\xbd"},
    {"a\xe2\x82", "a\xef\xbf\xbd"},			      /* cut sequence: one U+FFFD */
    {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* a surrogate */
    {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},		      /* overlong '/' */
    {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
    {"\xe2\x80\xa8", NULL},						      /* U+2028 */
    {"", NULL},
};

static void test_kv_hostile(void **state)
{
	static const char *const keys[] = {"ts",   "level", "event",  "client",
					   "user", "from",  "result", NULL};
	struct kv kv[KV_MAX];

	(void)state;
	use_format(false);
	for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
		const char *v = hostile[i].raw;
		size_t len;
		char *line;
		int n;

		log_msg(LOG_INFO, "event=auth client=%s user=\"%s\" from=<%s> result=failed", v, v,
			v);
		line = one_line(&len);
		n = kv_parse(line, len, kv);
		if (n < 0)
			fail_msg("not a kv line: %s", line);
		expect_keys(kv, n, keys);
		assert_string_equal(kv[2].val, "auth");
		assert_string_equal(kv[6].val, "failed");
		/* each value comes back byte for byte */
		assert_int_equal(kv[3].len, strlen(v));
		assert_memory_equal(kv[3].val, v, strlen(v));
		assert_int_equal(kv[4].len, strlen(v));
		assert_memory_equal(kv[4].val, v, strlen(v));
		assert_int_equal(kv[5].len, strlen(v) + 2);
		assert_true(kv[5].val[0] == '<' && kv[5].val[strlen(v) + 1] == '>');
		assert_memory_equal(kv[5].val + 1, v, strlen(v));
	}
}

static void json_expect_str(json_object *o, const char *key, const char *want, size_t want_len)
{
	json_object *v;

	assert_true(json_object_object_get_ex(o, key, &v));
	assert_true(json_object_is_type(v, json_type_string));
	assert_int_equal((size_t)json_object_get_string_len(v), want_len);
	assert_memory_equal(json_object_get_string(v), want, want_len);
}

static void test_json_hostile(void **state)
{
	(void)state;
	use_format(true);
	for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
		const char *v = hostile[i].raw, *want = hostile[i].json ? hostile[i].json : v;
		char from[256];
		json_tokener *tok = json_tokener_new();
		json_object *o, *n;
		size_t len;
		char *line;

		log_msg(LOG_INFO, "event=auth user=\"%s\" from=<%s> rcpts=%u result=failed", v, v,
			3u);
		line = one_line(&len);
		o = json_tokener_parse_ex(tok, line, (int)len);
		if (o == NULL || json_tokener_get_parse_end(tok) != len)
			fail_msg("not one JSON object: %s", line);
		assert_true(json_object_is_type(o, json_type_object));
		assert_int_equal(json_object_object_length(o), 7);
		json_expect_str(o, "event", "auth", 4);
		json_expect_str(o, "result", "failed", 6);
		json_expect_str(o, "level", "info", 4);
		json_expect_str(o, "user", want, strlen(want));
		snprintf(from, sizeof(from), "<%s>", want);
		json_expect_str(o, "from", from, strlen(from));
		assert_true(json_object_object_get_ex(o, "rcpts", &n));
		assert_true(json_object_is_type(n, json_type_int));
		assert_int_equal(json_object_get_int(n), 3);
		json_object_put(o);
		json_tokener_free(tok);
	}
}

/* ---- conversions ----------------------------------------------------------------------- */

static void test_conversions(void **state)
{
	static const char want1[] =
	    " level=info event=conv a=-5 b=4294967295 c=18446744073709551615 "
	    "d=7 e=00000000deadbeef f=00000000DEADBEEF g=\"  ab\" h=\"ab  \"";
	static const char want2[] = " level=info event=conv i=abc j=z k=(null) l=100% m=-128 "
				    "n=\"  -42\" o=\"x  \" p=ab q=<a@b>/x";
	const char *volatile null_str = NULL; /* hidden from -Wformat */
	size_t len;
	char *line;

	(void)state;
	use_format(false);
	log_msg(LOG_INFO, "event=conv a=%d b=%u c=%llu d=%zu e=%016llx f=%016llX g=%4s h=%-4s", -5,
		4294967295u, 18446744073709551615ull, (size_t)7, 0xdeadbeefull, 0xdeadbeefull, "ab",
		"ab");
	line = one_line(&len);
	assert_true(len > 3 + 24);
	assert_string_equal(line + 3 + 24, want1);
	log_msg(LOG_INFO,
		"event=conv i=%.3s j=%c k=%s l=100%% m=%hhd n=%*d o=%-*s p=%.*s q=<%s>/%s",
		"abcdef", 'z', null_str, 128, 5, -42, 3, "x", 2, "abc", "a@b", "x");
	line = one_line(&len);
	assert_true(len > 3 + 24);
	assert_string_equal(line + 3 + 24, want2);

	/* JSON: a lone decimal conversion is a number, hex and mixed text are strings */
	use_format(true);
	log_msg(LOG_INFO, "event=conv a=%d b=%llu c=%016llx d=%u/%u e=\"%u\"", -5,
		18446744073709551615ull, 255ull, 1u, 2u, 3u);
	line = one_line(&len);
	assert_non_null(strstr(line, ",\"event\":\"conv\",\"a\":-5,\"b\":18446744073709551615,"
				     "\"c\":\"00000000000000ff\",\"d\":\"1/2\",\"e\":\"3\"}"));
}

/* ---- cuts ------------------------------------------------------------------------------ */

/* Values too long for a line are cut, the structure never: the line
 * parses, keeps every key (the ones after the long value, too), and says
 * truncated. */
static void test_cut(void **state)
{
	static char big[6000], user[256];
	struct kv kv[KV_MAX];
	size_t len;
	char *line;
	int n;

	(void)state;
	memset(user, 0xff, sizeof(user) - 1); /* 4 bytes each as \xff, 6 as \ufffd */
	memset(big, '"', sizeof(big) - 1);    /* over the scratch */
	use_format(false);
	for (int round = 0; round < 2; round++) {
		const char *v = round ? big : user;

		log_msg(LOG_INFO, "event=auth user=\"%s\" n=%llu result=failed", v,
			18446744073709551615ull);
		line = one_line(&len);
		assert_true(len + 1 <= LOG_LINE_MAX);
		n = kv_parse(line, len, kv);
		if (n < 0)
			fail_msg("cut line does not parse: %s", line);
		assert_int_equal(n, 7);
		assert_string_equal(kv[4].key, "n");
		assert_string_equal(kv[4].val, "18446744073709551615");
		assert_string_equal(kv[5].key, "result");
		assert_string_equal(kv[5].val, "failed");
		assert_string_equal(kv[6].key, "truncated");
		assert_true(kv[3].len > 100 && kv[3].len < strlen(v));
		assert_memory_equal(kv[3].val, v, kv[3].len); /* a prefix of the value */
	}
	use_format(true);
	for (int round = 0; round < 2; round++) {
		json_object *o, *t;

		log_msg(LOG_INFO, "event=auth user=\"%s\" n=%llu result=failed", round ? big : user,
			18446744073709551615ull);
		line = one_line(&len);
		assert_true(len + 1 <= LOG_LINE_MAX);
		o = json_tokener_parse(line);
		if (o == NULL)
			fail_msg("cut line is not JSON: %s", line);
		json_expect_str(o, "result", "failed", 6);
		assert_true(json_object_object_get_ex(o, "truncated", &t));
		assert_true(json_object_get_boolean(t));
		json_object_put(o);
	}
}

/* ---- log_kv_value ---------------------------------------------------------------------- */

static void test_kv_value(void **state)
{
	char out[64];

	(void)state;
	assert_int_equal(log_kv_value(out, sizeof(out), "<a@b>", 5), 5);
	assert_string_equal(out, "<a@b>");
	log_kv_value(out, sizeof(out), "<\"x y\"@b>", 9);
	assert_string_equal(out, "\"<\\\"x y\\\"@b>\"");
	log_kv_value(out, sizeof(out), "o'brien", 7);
	assert_string_equal(out, "\"o'brien\"");
	log_kv_value(out, sizeof(out), "", 0);
	assert_string_equal(out, "\"\"");
	log_kv_value(out, 8, "\n\n\n\n", 4); /* cut between escapes, still quoted */
	assert_string_equal(out, "\"\\n\\n\"");
}

/* ---- reopen ---------------------------------------------------------------------------- */

/* logrotate: the file is moved, SIGUSR1 makes main call log_reopen(); lines
 * before go to the moved file, lines after to a new one at the path. */
static void test_reopen(void **state)
{
	char moved[PATH_MAX + 32], buf[4096];
	size_t len;
	int fd;
	ssize_t n;

	(void)state;
	unlink(file);
	use_format(false);
	seen = 0;
	log_msg(LOG_INFO, "event=before");
	snprintf(moved, sizeof(moved), "%s/log.1", dir);
	assert_int_equal(rename(file, moved), 0);
	log_msg(LOG_INFO, "event=still_old");
	assert_int_equal(log_reopen(), 0);
	log_msg(LOG_INFO, "event=after");
	fd = open(moved, O_RDONLY);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	assert_non_null(strstr(buf, "event=before\n"));
	assert_non_null(strstr(buf, "event=still_old\n"));
	assert_null(strstr(buf, "event=after"));
	seen = 0;
	char *t = new_text(&len);
	assert_non_null(strstr(t, "event=log_reopen status=ok"));
	assert_non_null(strstr(t, "event=after\n"));
	assert_null(strstr(t, "event=before"));
}

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/log_format.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(file, sizeof(file), "%s/log", dir);
	return 0;
}

static int teardown(void **state)
{
	char path[PATH_MAX + 32];
	char why[64];

	(void)state;
	log_setup(LOG_INFO, false, NULL, why, sizeof(why));
	unlink(file);
	snprintf(path, sizeof(path), "%s/log.1", dir);
	unlink(path);
	rmdir(dir);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_call_sites),	cmocka_unit_test(test_bad_formats),
	    cmocka_unit_test(test_kv_hostile),	cmocka_unit_test(test_json_hostile),
	    cmocka_unit_test(test_conversions), cmocka_unit_test(test_cut),
	    cmocka_unit_test(test_kv_value),	cmocka_unit_test(test_reopen),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
