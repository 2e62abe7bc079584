/* Pins users_file loading (allowed hash methods, error lines, bounds) and password checks. */
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "auth/users.h"

/* ---- helpers ------------------------------------------------------------------ */

/* A fresh hash of pw, made with libxcrypt at test time (never a fixture). */
static char *hash_of(const char *prefix, unsigned long cost, const char *pw)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data cd;
	memset(&cd, 0, sizeof(cd));
	assert_non_null(crypt_gensalt_rn(prefix, cost, NULL, 0, setting, sizeof(setting)));
	const char *h = crypt_r(pw, setting, &cd);
	assert_non_null(h);
	assert_true(h[0] != '*');
	return strdup(h);
}

/* Cheapest costs: the tests check logic, not strength. */
#define Y_COST 1
#define B_COST 4
#define S_COST 1000

static struct auth_users *parse_ok(const char *text)
{
	struct auth_users *u = NULL;
	char err[AUTH_USERS_ERR_MAX] = "";
	int rc = auth_users_parse(text, strlen(text), &u, err, sizeof(err));
	if (rc != 0)
		print_message("unexpected error: %s\n", err);
	assert_int_equal(rc, 0);
	assert_non_null(u);
	return u;
}

static void parse_err(const char *text, int want_rc, const char *want_err)
{
	struct auth_users *u = (struct auth_users *)1;
	char err[AUTH_USERS_ERR_MAX] = "";
	assert_int_equal(auth_users_parse(text, strlen(text), &u, err, sizeof(err)), want_rc);
	assert_null(u);
	assert_string_equal(err, want_err);
}

static int verify(const struct auth_users *u, const char *user, const char *pass)
{
	return auth_users_verify(u, user, strlen(user), pass, strlen(pass));
}

static char *fmt(const char *f, ...)
{
	va_list ap;
	char *s = NULL;
	va_start(ap, f);
	assert_true(vasprintf(&s, f, ap) >= 0);
	va_end(ap);
	return s;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Median of three timings of one verify, in seconds. */
static double time_verify(const struct auth_users *u, const char *user, const char *pass)
{
	double t[3];
	for (int i = 0; i < 3; i++) {
		double a = now_s();
		(void)verify(u, user, pass);
		t[i] = now_s() - a;
	}
	double lo = t[0] < t[1] ? t[0] : t[1], hi = t[0] < t[1] ? t[1] : t[0];
	return t[2] < lo ? lo : t[2] > hi ? hi : t[2];
}

/* ---- loading and verifying ----------------------------------------------------- */

static void test_three_methods(void **state)
{
	(void)state;
	char *y = hash_of("$y$", Y_COST, "yes pass"), *s = hash_of("$6$", S_COST, "sha pass");
	char *b = hash_of("$2b$", B_COST, "bf pass");
	char *text = fmt("# submission users\n\n  # indented comment\nyuser:%s\n"
			 "shauser:%s\nbfuser:%s\n",
			 y, s, b);
	struct auth_users *u = parse_ok(text);
	assert_int_equal(auth_users_count(u), 3);
	assert_int_equal(verify(u, "yuser", "yes pass"), AUTH_VERIFY_OK);
	assert_int_equal(verify(u, "shauser", "sha pass"), AUTH_VERIFY_OK);
	assert_int_equal(verify(u, "bfuser", "bf pass"), AUTH_VERIFY_OK);
	assert_int_equal(verify(u, "yuser", "sha pass"), AUTH_VERIFY_BAD_PASSWORD);
	assert_int_equal(verify(u, "shauser", "Sha pass"), AUTH_VERIFY_BAD_PASSWORD);
	assert_int_equal(verify(u, "bfuser", ""), AUTH_VERIFY_BAD_PASSWORD);
	/* Names are case-sensitive. */
	assert_int_equal(verify(u, "YUSER", "yes pass"), AUTH_VERIFY_NO_USER);
	auth_users_unref(u);
	free(text), free(y), free(s), free(b);
}

static void test_bcrypt_2y_and_sha_rounds_default(void **state)
{
	(void)state;
	char *b = hash_of("$2y$", B_COST, "pw2y"), *s = hash_of("$6$", 0, "pw6");
	assert_null(strstr(s, "rounds="));    /* the default form has no rounds= field */
	char *text = fmt("a:%s\nb:%s", b, s); /* no LF after the last line */
	struct auth_users *u = parse_ok(text);
	assert_int_equal(verify(u, "a", "pw2y"), AUTH_VERIFY_OK);
	assert_int_equal(verify(u, "b", "pw6"), AUTH_VERIFY_OK);
	auth_users_unref(u);
	free(text), free(b), free(s);
}

static void test_unknown_user(void **state)
{
	(void)state;
	char *h = hash_of("$2b$", B_COST, "secret");
	char *text = fmt("alice:%s\n", h);
	struct auth_users *u = parse_ok(text);
	assert_int_equal(verify(u, "bob", "secret"), AUTH_VERIFY_NO_USER);
	assert_int_equal(verify(u, "", "secret"), AUTH_VERIFY_NO_USER);
	assert_int_equal(verify(u, "alic", "secret"), AUTH_VERIFY_NO_USER);
	char longname[AUTH_USER_MAX + 2];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	assert_int_equal(verify(u, longname, "secret"), AUTH_VERIFY_NO_USER);
	auth_users_unref(u);
	free(text), free(h);
}

/* A NUL would cut the password short inside crypt(3); an over-long one
 * cannot be a stored password.  Both fail even when the prefix is right. */
static void test_password_bounds(void **state)
{
	(void)state;
	char pw[AUTH_PASS_MAX + 2];
	memset(pw, 'p', sizeof(pw) - 1);
	pw[AUTH_PASS_MAX] = '\0';
	char *h = hash_of("$6$", S_COST, pw); /* exactly AUTH_PASS_MAX octets */
	char *hs = hash_of("$6$", S_COST, "secret");
	char *text = fmt("max:%s\nnul:%s\n", h, hs);
	struct auth_users *u = parse_ok(text);
	assert_int_equal(auth_users_verify(u, "max", 3, pw, AUTH_PASS_MAX), AUTH_VERIFY_OK);
	pw[AUTH_PASS_MAX] = 'p';
	assert_int_equal(auth_users_verify(u, "max", 3, pw, AUTH_PASS_MAX + 1),
			 AUTH_VERIFY_BAD_PASSWORD);
	assert_int_equal(auth_users_verify(u, "nul", 3, "secret\0x", 8), AUTH_VERIFY_BAD_PASSWORD);
	assert_int_equal(auth_users_verify(u, "nul", 3, "secret", 6), AUTH_VERIFY_OK);
	auth_users_unref(u);
	free(text), free(h), free(hs);
}

static void test_crlf_and_trailing_blanks(void **state)
{
	(void)state;
	char *h = hash_of("$y$", Y_COST, "pw");
	char *text = fmt("# windows editor\r\nu1:%s\r\nu2:%s \t\r\n\r\n", h, h);
	struct auth_users *u = parse_ok(text);
	assert_int_equal(auth_users_count(u), 2);
	assert_int_equal(verify(u, "u1", "pw"), AUTH_VERIFY_OK);
	assert_int_equal(verify(u, "u2", "pw"), AUTH_VERIFY_OK);
	auth_users_unref(u);
	free(text), free(h);
}

static void test_utf8_name(void **state)
{
	(void)state;
	char *h = hash_of("$2b$", B_COST, "pw");
	char *text = fmt("j\xc3\xb6rg@example.org:%s\n", h);
	struct auth_users *u = parse_ok(text);
	assert_int_equal(verify(u, "j\xc3\xb6rg@example.org", "pw"), AUTH_VERIFY_OK);
	auth_users_unref(u);
	free(text), free(h);
}

static void test_empty_file(void **state)
{
	(void)state;
	struct auth_users *u = parse_ok("# nobody yet\n\n");
	assert_int_equal(auth_users_count(u), 0);
	/* The dummy is yescrypt at the default cost: still a real hash. */
	assert_int_equal(verify(u, "anyone", "pw"), AUTH_VERIFY_NO_USER);
	auth_users_unref(u);
	u = parse_ok("");
	assert_int_equal(auth_users_count(u), 0);
	auth_users_unref(u);
}

/* The reference outlives the first owner: a helper can finish its check
 * on the old table after a reload dropped it (ASan sees any early free). */
static void test_refcount(void **state)
{
	(void)state;
	char *h = hash_of("$2b$", B_COST, "pw");
	char *text = fmt("u:%s\n", h);
	struct auth_users *u = parse_ok(text);
	struct auth_users *helper = auth_users_ref(u);
	assert_ptr_equal(helper, u);
	auth_users_unref(u);
	assert_int_equal(verify(helper, "u", "pw"), AUTH_VERIFY_OK);
	auth_users_unref(helper);
	auth_users_unref(NULL);
	free(text), free(h);
}

/* ---- timing of unknown users ----------------------------------------------------- */

/* An unknown user costs what the users of the most common setting cost;
 * with bcrypt at cost 8 against SHA-512 at 1000 rounds the two are an
 * order of magnitude apart, so wide bounds still tell them apart. */
static void test_unknown_user_costs_like_majority(void **state)
{
	(void)state;
	char *b1 = hash_of("$2b$", 8, "a"), *b2 = hash_of("$2b$", 8, "b");
	char *s = hash_of("$6$", S_COST, "c");
	char *text = fmt("fast:%s\nslow1:%s\nslow2:%s\n", s, b1, b2);
	struct auth_users *u = parse_ok(text);
	double slow = time_verify(u, "slow1", "wrong");
	double fast = time_verify(u, "fast", "wrong");
	double unknown = time_verify(u, "nobody", "wrong");
	print_message("bcrypt-8 %.4fs, sha512-1000 %.4fs, unknown %.4fs\n", slow, fast, unknown);
	assert_true(slow > 3 * fast);
	assert_true(unknown > slow / 3 && unknown < slow * 3);
	assert_true(unknown > 3 * fast);
	auth_users_unref(u);
	free(text), free(b1), free(b2), free(s);
}

/* ---- refused hashes ------------------------------------------------------------ */

#define EXPECT "expected a yescrypt ($y$), SHA-512 ($6$) or bcrypt ($2b$) hash, found "

static void refused_on_line_3(const char *hash, const char *found)
{
	char *ok = hash_of("$2b$", B_COST, "x");
	char *text = fmt("# users\nfirst:%s\nsecond:%s\nthird:%s\n", ok, hash, ok);
	char *want = fmt("users_file:3: " EXPECT "%s", found);
	parse_err(text, -EINVAL, want);
	free(ok), free(text), free(want);
}

static void test_refuse_weak_methods(void **state)
{
	(void)state;
	char *md5 = hash_of("$1$", 0, "pw"), *sha256 = hash_of("$5$", 0, "pw");
	refused_on_line_3(md5, "MD5-crypt ($1$)");
	refused_on_line_3(sha256, "SHA-256-crypt ($5$)");
	refused_on_line_3("abJnggxhB/yWI", "DES crypt");
	refused_on_line_3("_J9..CCCCXBrJUJV154M", "BSDi DES crypt");
	refused_on_line_3("hunter2", "what looks like a plaintext password");
	refused_on_line_3("$2a$04$abcdefghijklmnopqrstuuG6Li2uyOKIWZ5D4Hm0/VMz9gO3Ov9Ia",
			  "old bcrypt ($2a$/$2x$; rehash as $2b$)");
	refused_on_line_3("$7$CU..../....abc$def", "an unsupported method");
	free(md5), free(sha256);
}

static void test_malformed_allowed_methods(void **state)
{
	(void)state;
	char *y = hash_of("$y$", Y_COST, "pw"), *s = hash_of("$6$", S_COST, "pw");
	char *b = hash_of("$2b$", B_COST, "pw");
	y[strlen(y) - 1] = '\0'; /* one digest character short */
	char *text = fmt("u:%s\n", y);
	parse_err(text, -EINVAL, "users_file:1: expected a well-formed yescrypt hash");
	free(text);
	s[strlen(s) - 1] = '!';
	text = fmt("\nu:%s\n", s);
	parse_err(text, -EINVAL, "users_file:2: expected a well-formed SHA-512 hash");
	free(text);
	b[5] = '2'; /* cost 02: below bcrypt's minimum 04 */
	b[4] = '0';
	text = fmt("\n\nu:%s\n", b);
	parse_err(text, -EINVAL, "users_file:3: expected a well-formed bcrypt hash");
	free(text), free(y), free(s), free(b);
}

/* ---- cost bounds ------------------------------------------------------------------ */

/* Bounds are checked on the hash text: no test computes an expensive hash.
 * A costly hash among two cheap ones loads, since the dummy takes the
 * majority's cost. */
static void cost_ok_on_line_3(const char *hash)
{
	char *ok = hash_of("$2b$", B_COST, "x");
	char *text = fmt("# users\nfirst:%s\nsecond:%s\nthird:%s\n", ok, hash, ok);
	struct auth_users *u = parse_ok(text);
	assert_int_equal(auth_users_count(u), 3);
	auth_users_unref(u);
	free(ok), free(text);
}

static void cost_refused_on_line_3(const char *hash, const char *why)
{
	char *ok = hash_of("$2b$", B_COST, "x");
	char *text = fmt("# users\nfirst:%s\nsecond:%s\nthird:%s\n", ok, hash, ok);
	char *want = fmt("users_file:3: %s", why);
	parse_err(text, -EINVAL, want);
	free(ok), free(text), free(want);
}

static void test_bcrypt_cost_max(void **state)
{
	(void)state;
	char *b = hash_of("$2b$", B_COST, "pw"); /* "$2b$04$..." */
	snprintf(b + 4, 3, "%02d", AUTH_BCRYPT_COST_MAX);
	b[6] = '$';
	cost_ok_on_line_3(b);
	snprintf(b + 4, 3, "%02d", AUTH_BCRYPT_COST_MAX + 1);
	b[6] = '$';
	cost_refused_on_line_3(b, "expected a bcrypt cost of at most 15, found 16");
	memcpy(b, "$2y$31", 6);
	cost_refused_on_line_3(b, "expected a bcrypt cost of at most 15, found 31");
	free(b);
}

static void test_sha512_rounds_max(void **state)
{
	(void)state;
	char *s = hash_of("$6$", S_COST, "pw"); /* "$6$rounds=1000$salt$digest" */
	const char *rest = s + strlen("$6$rounds=1000");
	assert_int_equal(*rest, '$');
	char *h = fmt("$6$rounds=%d%s", AUTH_SHA512_ROUNDS_MAX, rest);
	cost_ok_on_line_3(h);
	free(h);
	h = fmt("$6$rounds=%d%s", AUTH_SHA512_ROUNDS_MAX + 1, rest);
	cost_refused_on_line_3(h, "expected SHA-512 rounds of at most 1000000, found 1000001");
	free(h);
	h = fmt("$6$rounds=999999999%s", rest);
	cost_refused_on_line_3(h, "expected SHA-512 rounds of at most 1000000, found 999999999");
	free(h), free(s);
}

/* A yescrypt hash with libxcrypt's own setting for a cost and a made-up
 * digest: well-formed, never computed. */
static char *yescrypt_of_cost(unsigned long cost)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	assert_non_null(crypt_gensalt_rn("$y$", cost, NULL, 0, setting, sizeof(setting)));
	return fmt("%s$%.43s", setting, "0123456789abcdefghijABCDEFGHIJ0123456789abc");
}

/* The params "j9T" of a yescrypt hash replaced by params. */
static char *yescrypt_with_params(const char *params)
{
	char *y = yescrypt_of_cost(0);
	assert_true(strncmp(y, "$y$j9T$", 7) == 0); /* the default N 2^12, r 32 */
	char *h = fmt("$y$%s%s", params, y + 6);
	free(y);
	return h;
}

static void test_yescrypt_cost_max(void **state)
{
	(void)state;
	/* crypt_gensalt costs 1..9 reach N 2^10..2^16: default + 4 steps at most */
	for (unsigned long cost = 1; cost <= 9; cost++) {
		char *h = yescrypt_of_cost(cost);
		cost_ok_on_line_3(h);
		free(h);
	}
	char *h = yescrypt_of_cost(10); /* N 2^17 */
	cost_refused_on_line_3(h, "expected a yescrypt N of at most 2^16, found 2^17");
	free(h);
	h = yescrypt_of_cost(11); /* N 2^18: 1 GiB */
	cost_refused_on_line_3(h, "expected a yescrypt N of at most 2^16, found 2^18");
	free(h);
	/* N 2^12 with r 33 ('U'): as costly as a bigger N */
	h = yescrypt_with_params("j9U");
	cost_refused_on_line_3(h, "expected a yescrypt r of at most 32, found 33");
	free(h);
	/* a first character of value 48 or more starts a longer number: N 2^49 */
	h = yescrypt_with_params("jk.T");
	cost_refused_on_line_3(h, "expected a yescrypt N of at most 2^16, found 2^49");
	free(h);
	/* p, t, g or ROM after r: crypt_gensalt never writes them */
	h = yescrypt_with_params("j9T5");
	cost_refused_on_line_3(h, "expected yescrypt parameters as crypt_gensalt writes them "
				  "(flavor, N, r), found more");
	free(h);
	/* too short to hold N and r */
	h = yescrypt_with_params("j9");
	cost_refused_on_line_3(h, "expected a well-formed yescrypt hash");
	free(h);
}

/* ---- other errors at given lines ------------------------------------------------ */

static void test_duplicate_user(void **state)
{
	(void)state;
	char *h = hash_of("$2b$", B_COST, "pw");
	char *text = fmt("alice:%s\nbob:%s\n# x\n\nalice:%s\n", h, h, h);
	parse_err(text, -EINVAL,
		  "users_file:5: expected each user once, \"alice\" is already on line 1");
	free(text);
	/* Case differs: two users. */
	text = fmt("alice:%s\nAlice:%s\n", h, h);
	struct auth_users *u = parse_ok(text);
	assert_int_equal(auth_users_count(u), 2);
	auth_users_unref(u);
	free(text), free(h);
}

static void test_line_syntax(void **state)
{
	(void)state;
	char *h = hash_of("$2b$", B_COST, "pw");
	char *t;
	parse_err("# c\nalice\n", -EINVAL, "users_file:2: expected user:hash, found no ':'");
	t = fmt(":%s\n", h);
	parse_err(t, -EINVAL, "users_file:1: expected a user name before ':'");
	free(t);
	t = fmt("al ice:%s\n", h);
	parse_err(t, -EINVAL,
		  "users_file:1: expected a user name without spaces or control characters");
	free(t);
	t = fmt("al\x01ice:%s\n", h);
	parse_err(t, -EINVAL,
		  "users_file:1: expected a user name without spaces or control characters");
	free(t);
	t = fmt("ok:%s\n  alice:%s\n", h, h);
	parse_err(t, -EINVAL, "users_file:2: expected the user name at the start of the line");
	free(t);
	parse_err("alice:\n", -EINVAL, "users_file:1: expected a hash after ':'");
	parse_err("alice:   \n", -EINVAL, "users_file:1: expected a hash after ':'");
	t = fmt("alice:%s:extra\n", h);
	parse_err(t, -EINVAL, "users_file:1: expected a well-formed bcrypt hash");
	free(t), free(h);
}

static void test_nul_byte(void **state)
{
	(void)state;
	static const char text[] = "# a\n# b\x00 c\n";
	struct auth_users *u = NULL;
	char err[AUTH_USERS_ERR_MAX];
	assert_int_equal(auth_users_parse(text, sizeof(text) - 1, &u, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "users_file:2: expected text, found a NUL byte");
}

/* ---- named bounds ---------------------------------------------------------------- */

static void test_user_name_max(void **state)
{
	(void)state;
	char *h = hash_of("$2b$", B_COST, "pw");
	char name[AUTH_USER_MAX + 2];
	memset(name, 'n', AUTH_USER_MAX);
	name[AUTH_USER_MAX] = '\0';
	char *t = fmt("%s:%s\n", name, h);
	struct auth_users *u = parse_ok(t);
	assert_int_equal(verify(u, name, "pw"), AUTH_VERIFY_OK);
	auth_users_unref(u);
	free(t);
	name[AUTH_USER_MAX] = 'n';
	name[AUTH_USER_MAX + 1] = '\0';
	t = fmt("%s:%s\n", name, h);
	parse_err(t, -EINVAL, "users_file:1: expected a user name of at most 255 octets");
	free(t), free(h);
}

static void test_line_max(void **state)
{
	(void)state;
	char *line = malloc(AUTH_USERS_LINE_MAX + 3);
	assert_non_null(line);
	memset(line, '#', AUTH_USERS_LINE_MAX + 1);
	line[AUTH_USERS_LINE_MAX + 1] = '\n';
	line[AUTH_USERS_LINE_MAX + 2] = '\0';
	char *t = fmt("\n%s", line);
	parse_err(t, -EINVAL, "users_file:2: expected at most 1024 octets per line");
	free(t);
	line[AUTH_USERS_LINE_MAX] = '\n'; /* exactly the bound: a comment, fine */
	line[AUTH_USERS_LINE_MAX + 1] = '\0';
	struct auth_users *u = parse_ok(line);
	auth_users_unref(u);
	free(line);
}

static void test_count_max(void **state)
{
	(void)state;
	char *h = hash_of("$2b$", B_COST, "pw");
	size_t hl = strlen(h), cap = (AUTH_USERS_COUNT_MAX + 1) * (hl + 16), n = 0, at_max = 0;
	char *text = malloc(cap);
	assert_non_null(text);
	for (uint32_t i = 0; i <= AUTH_USERS_COUNT_MAX; i++) {
		at_max = n;
		n += (size_t)snprintf(text + n, cap - n, "u%u:%s\n", i, h);
	}
	struct auth_users *u = NULL;
	char err[AUTH_USERS_ERR_MAX];
	/* One user too many: the error is on the line of that user. */
	assert_int_equal(auth_users_parse(text, n, &u, err, sizeof(err)), -EINVAL);
	char *want = fmt("users_file:%u: expected at most %u users", AUTH_USERS_COUNT_MAX + 1,
			 AUTH_USERS_COUNT_MAX);
	assert_string_equal(err, want);
	free(want);
	/* Exactly the bound loads. */
	assert_int_equal(auth_users_parse(text, at_max, &u, err, sizeof(err)), 0);
	assert_int_equal(auth_users_count(u), AUTH_USERS_COUNT_MAX);
	char name[16];
	snprintf(name, sizeof(name), "u%u", AUTH_USERS_COUNT_MAX - 1);
	assert_int_equal(verify(u, name, "pw"), AUTH_VERIFY_OK);
	auth_users_unref(u);
	free(text), free(h);
}

/* ---- files ------------------------------------------------------------------------ */

static char *temp_file(const char *content, size_t len)
{
	char *path = strdup("/tmp/rmx-auth-users-XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, len), (ssize_t)len);
	close(fd);
	return path;
}

static void test_load_file(void **state)
{
	(void)state;
	char *h = hash_of("$y$", Y_COST, "pw");
	char *text = fmt("# file\nu:%s\n", h);
	char *path = temp_file(text, strlen(text));
	struct auth_users *u = NULL;
	char err[AUTH_USERS_ERR_MAX] = "";
	assert_int_equal(auth_users_load(path, &u, err, sizeof(err)), 0);
	assert_int_equal(verify(u, "u", "pw"), AUTH_VERIFY_OK);
	auth_users_unref(u);
	unlink(path);
	free(path), free(text);
	text = fmt("u:%s\nu:%s\n", h, h);
	path = temp_file(text, strlen(text));
	assert_int_equal(auth_users_load(path, &u, err, sizeof(err)), -EINVAL);
	assert_string_equal(err,
			    "users_file:2: expected each user once, \"u\" is already on line 1");
	unlink(path);
	free(path), free(text), free(h);
}

static void test_load_file_errors(void **state)
{
	(void)state;
	struct auth_users *u = NULL;
	char err[AUTH_USERS_ERR_MAX];
	assert_int_equal(auth_users_load("/nonexistent/users", &u, err, sizeof(err)), -ENOENT);
	assert_string_equal(err, "users_file: /nonexistent/users: No such file or directory");
	assert_int_equal(auth_users_load("/tmp", &u, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "users_file: /tmp: expected a regular file");
	assert_null(u);
}

/* The whole-file bound: a sparse file one octet over it is refused
 * before anything is read. */
static void test_file_max(void **state)
{
	(void)state;
	char *path = temp_file("", 0);
	int fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)AUTH_USERS_FILE_MAX + 1), 0);
	close(fd);
	struct auth_users *u = NULL;
	char err[AUTH_USERS_ERR_MAX];
	assert_int_equal(auth_users_load(path, &u, err, sizeof(err)), -EFBIG);
	char *want = fmt("users_file: %s: expected at most %u octets", path, AUTH_USERS_FILE_MAX);
	assert_string_equal(err, want);
	free(want);
	unlink(path);
	free(path);
	/* The same bound for text in memory; the pages stay untouched. */
	char *big = malloc((size_t)AUTH_USERS_FILE_MAX + 1);
	assert_non_null(big);
	assert_int_equal(
	    auth_users_parse(big, (size_t)AUTH_USERS_FILE_MAX + 1, &u, err, sizeof(err)), -EFBIG);
	free(big);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_three_methods),
	    cmocka_unit_test(test_bcrypt_2y_and_sha_rounds_default),
	    cmocka_unit_test(test_unknown_user),
	    cmocka_unit_test(test_password_bounds),
	    cmocka_unit_test(test_crlf_and_trailing_blanks),
	    cmocka_unit_test(test_utf8_name),
	    cmocka_unit_test(test_empty_file),
	    cmocka_unit_test(test_refcount),
	    cmocka_unit_test(test_unknown_user_costs_like_majority),
	    cmocka_unit_test(test_refuse_weak_methods),
	    cmocka_unit_test(test_malformed_allowed_methods),
	    cmocka_unit_test(test_bcrypt_cost_max),
	    cmocka_unit_test(test_sha512_rounds_max),
	    cmocka_unit_test(test_yescrypt_cost_max),
	    cmocka_unit_test(test_duplicate_user),
	    cmocka_unit_test(test_line_syntax),
	    cmocka_unit_test(test_nul_byte),
	    cmocka_unit_test(test_user_name_max),
	    cmocka_unit_test(test_line_max),
	    cmocka_unit_test(test_count_max),
	    cmocka_unit_test(test_load_file),
	    cmocka_unit_test(test_load_file_errors),
	    cmocka_unit_test(test_file_max),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
