/* auth/users — users_file loading and password verification; contract in users.h. */
#include "auth/users.h"

#include <assert.h>
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* Distinct (method, cost) settings counted to choose the dummy hash; a file
 * with more kinds than this is odd enough that the first ones decide. */
#define USERS_COSTS_MAX 16
#define USERS_SLOT_FREE UINT32_MAX

static_assert(AUTH_USER_MAX <= UINT16_MAX, "user length is stored in 16 bits");
static_assert(AUTH_HASH_MAX < CRYPT_OUTPUT_SIZE, "a stored hash fits crypt's output");
static_assert(AUTH_PASS_MAX < CRYPT_MAX_PASSPHRASE_SIZE, "a password fits crypt_data.input");
static_assert(AUTH_USERS_FILE_MAX < UINT32_MAX, "offsets into the text are 32-bit");

struct users_ent {
	uint64_t name_hash;
	uint32_t user_off; /* into text, NUL-terminated there */
	uint32_t hash_off; /* into text, NUL-terminated there */
	uint32_t line;	   /* where it was defined, for the duplicate error */
	uint16_t user_len;
};

struct auth_users {
	atomic_uint refs;
	uint32_t count;	    /* entries used */
	uint32_t capacity;  /* entries allocated */
	uint32_t slot_mask; /* slots is a power of two, at least twice capacity */
	uint32_t *slots;    /* index into ents, or USERS_SLOT_FREE */
	struct users_ent *ents;
	char *text; /* a copy of the file; users and hashes are cut out in place */
	size_t text_len;
	char dummy[CRYPT_OUTPUT_SIZE]; /* verified against for unknown users */
};

/* One (method, cost) prefix of a hash and how many users share it. */
struct users_cost {
	const char *key;
	size_t key_len;
	uint32_t users;
	uint32_t ent; /* the first user with it: its hash seeds the dummy */
};

struct users_costs {
	struct users_cost kind[USERS_COSTS_MAX];
	uint32_t n;
};

static const char EXPECT_HASH[] = "expected a yescrypt ($y$), SHA-512 ($6$) or bcrypt ($2b$) hash";

static void users_err(char *err, size_t size, uint32_t line, const char *fmt, ...)
{
	if (err == NULL || size == 0)
		return;
	int n = line > 0 ? snprintf(err, size, "users_file:%u: ", line)
			 : snprintf(err, size, "users_file: ");
	if (n < 0 || (size_t)n >= size)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err + n, size - (size_t)n, fmt, ap);
	va_end(ap);
}

/* FNV-1a.  The keys are the operator's, so nobody can flood the table at
 * build time; probe lengths on lookup cost nanoseconds next to the hash,
 * so an unkeyed function leaks nothing worth a key. */
static uint64_t users_name_hash(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325u;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3u;
	}
	return h;
}

/* The characters of crypt's base64 ("./0-9A-Za-z"), used by every allowed
 * method for salts and digests (bcrypt orders them differently). */
static bool users_is_b64(char c)
{
	return c == '.' || c == '/' || (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
	       (c >= 'a' && c <= 'z');
}

static size_t users_b64_span(const char *s, size_t n)
{
	size_t i = 0;
	while (i < n && users_is_b64(s[i]))
		i++;
	return i;
}

static bool users_starts(const char *h, size_t n, const char *prefix)
{
	size_t p = strlen(prefix);
	return n >= p && memcmp(h, prefix, p) == 0;
}

/* "$y$" params "$" salt "$" 43 digest characters (libxcrypt yescrypt). */
static bool users_shape_yescrypt(const char *h, size_t n)
{
	size_t p = 3, k;
	k = users_b64_span(h + p, n - p);
	if (k == 0 || p + k >= n || h[p + k] != '$')
		return false;
	p += k + 1;
	k = users_b64_span(h + p, n - p);
	if (k == 0 || p + k >= n || h[p + k] != '$')
		return false;
	p += k + 1;
	return users_b64_span(h + p, n - p) == 43 && p + 43 == n;
}

/* "$6$" ["rounds=" 1..9 digits "$"] salt of 1..16 "$" 86 digest characters
 * (Drepper's SHA-crypt specification). */
static bool users_shape_sha512(const char *h, size_t n)
{
	size_t p = 3, k;
	if (users_starts(h + p, n - p, "rounds=")) {
		p += 7;
		for (k = 0; p + k < n && h[p + k] >= '0' && h[p + k] <= '9'; k++)
			;
		if (k == 0 || k > 9 || p + k >= n || h[p + k] != '$')
			return false;
		p += k + 1;
	}
	k = users_b64_span(h + p, n - p);
	if (k == 0 || k > 16 || p + k >= n || h[p + k] != '$')
		return false;
	p += k + 1;
	return users_b64_span(h + p, n - p) == 86 && p + 86 == n;
}

/* "$2b$" or "$2y$", cost 04..31, "$", 22 salt + 31 digest characters. */
static bool users_shape_bcrypt(const char *h, size_t n)
{
	if (n != 7 + 53 || h[6] != '$')
		return false;
	if (h[4] < '0' || h[4] > '3' || h[5] < '0' || h[5] > '9')
		return false;
	int cost = (h[4] - '0') * 10 + (h[5] - '0');
	return cost >= 4 && cost <= 31 && users_b64_span(h + 7, 53) == 53;
}

/* Value of c in crypt's base64 alphabet, or -1. */
static int users_b64_value(char c)
{
	static const char alphabet[] =
	    "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	const char *p = c != '\0' ? strchr(alphabet, c) : NULL;
	return p != NULL ? (int)(p - alphabet) : -1;
}

/* One integer of yescrypt's parameter string, as decode64_uint32() of
 * yescrypt-common.c reads it: the first character's value says how many
 * characters follow (values 0..47 stand alone), each range adding to min.
 * Returns the characters used, 0 when s[0..n) is too short or not base64. */
static size_t users_yescrypt_uint(const char *s, size_t n, uint64_t min, uint64_t *out)
{
	uint32_t start = 0, end = 47, chars = 1, bits = 0;
	int c = n > 0 ? users_b64_value(s[0]) : -1;
	if (c < 0)
		return 0;
	uint64_t v = min;
	while ((uint32_t)c > end) {
		v += (uint64_t)(end + 1 - start) << bits;
		start = end + 1;
		end = start + (62 - end) / 2;
		chars++;
		bits += 6;
	}
	assert(chars <= 6 && bits <= 30);
	v += (uint64_t)((uint32_t)c - start) << bits;
	if (chars > n)
		return 0;
	for (size_t i = 1; i < chars; i++) {
		if ((c = users_b64_value(s[i])) < 0)
			return 0;
		bits -= 6;
		v += (uint64_t)c << bits;
	}
	*out = v;
	return chars;
}

/* "$y$" flavor N_log2 r "$": the cost is N * r (memory and time alike). */
static const char *users_cost_yescrypt(const char *h, char *buf, size_t size)
{
	const char *p = h + 3;
	size_t n = strcspn(p, "$"), k1, k2 = 0, k3 = 0;
	uint64_t flavor, n_log2 = 0, r = 0;
	k1 = users_yescrypt_uint(p, n, 0, &flavor);
	if (k1 > 0)
		k2 = users_yescrypt_uint(p + k1, n - k1, 1, &n_log2);
	if (k2 > 0)
		k3 = users_yescrypt_uint(p + k1 + k2, n - k1 - k2, 1, &r);
	if (k3 == 0)
		return "expected a well-formed yescrypt hash";
	if (k1 + k2 + k3 != n)
		return "expected yescrypt parameters as crypt_gensalt writes them (flavor, N, r), "
		       "found more";
	if (n_log2 > AUTH_YESCRYPT_N_LOG2_MAX) {
		snprintf(buf, size, "expected a yescrypt N of at most 2^%d, found 2^%llu",
			 AUTH_YESCRYPT_N_LOG2_MAX, (unsigned long long)n_log2);
		return buf;
	}
	if (r > AUTH_YESCRYPT_R_MAX) {
		snprintf(buf, size, "expected a yescrypt r of at most %d, found %llu",
			 AUTH_YESCRYPT_R_MAX, (unsigned long long)r);
		return buf;
	}
	return NULL;
}

/* NULL when a well-formed hash of an allowed method costs no more than its
 * bound; else the error text.  Checked before the dummy hash is made. */
static const char *users_cost_check(const char *h, char *buf, size_t size)
{
	if (h[1] == '2') {
		int cost = (h[4] - '0') * 10 + (h[5] - '0');
		if (cost <= AUTH_BCRYPT_COST_MAX)
			return NULL;
		snprintf(buf, size, "expected a bcrypt cost of at most %d, found %d",
			 AUTH_BCRYPT_COST_MAX, cost);
		return buf;
	}
	if (h[1] == '6') {
		if (strncmp(h + 3, "rounds=", 7) != 0)
			return NULL;				  /* the default, 5000 */
		unsigned long rounds = strtoul(h + 10, NULL, 10); /* 1..9 digits: shape */
		if (rounds <= AUTH_SHA512_ROUNDS_MAX)
			return NULL;
		snprintf(buf, size, "expected SHA-512 rounds of at most %d, found %lu",
			 AUTH_SHA512_ROUNDS_MAX, rounds);
		return buf;
	}
	assert(h[1] == 'y');
	return users_cost_yescrypt(h, buf, size);
}

/* What a hash without '$' is, for the error: never print the hash itself. */
static const char *users_refuse_bare(const char *h, size_t n)
{
	if (n == 13 && users_b64_span(h, n) == 13)
		return "DES crypt";
	if (n == 20 && h[0] == '_' && users_b64_span(h + 1, 19) == 19)
		return "BSDi DES crypt";
	return "what looks like a plaintext password";
}

/* NULL when h[0..n) is an allowed, well-formed hash; else the error text
 * after "users_file:LINE: ".  h is NUL-terminated at n. */
static const char *users_hash_check(const char *h, size_t n, char *buf, size_t size)
{
	const char *found = NULL;
	bool shape = false;
	if (n == 0)
		return "expected a hash after ':'";
	if (n > AUTH_HASH_MAX)
		return "expected a hash of at most 255 octets";
	if (users_starts(h, n, "$y$"))
		shape = users_shape_yescrypt(h, n), found = "yescrypt";
	else if (users_starts(h, n, "$6$"))
		shape = users_shape_sha512(h, n), found = "SHA-512";
	else if (users_starts(h, n, "$2b$") || users_starts(h, n, "$2y$"))
		shape = users_shape_bcrypt(h, n), found = "bcrypt";
	if (found != NULL && !shape) {
		snprintf(buf, size, "expected a well-formed %s hash", found);
		return buf;
	}
	const char *costly = found != NULL ? users_cost_check(h, buf, size) : NULL;
	if (costly != NULL)
		return costly;
	if (found != NULL && crypt_checksalt(h) != CRYPT_SALT_OK)
		return "expected a hash method this libcrypt has enabled";
	if (found != NULL)
		return NULL;
	if (h[0] != '$')
		found = users_refuse_bare(h, n);
	else if (users_starts(h, n, "$1$"))
		found = "MD5-crypt ($1$)";
	else if (users_starts(h, n, "$5$"))
		found = "SHA-256-crypt ($5$)";
	else if (users_starts(h, n, "$2a$") || users_starts(h, n, "$2x$"))
		found = "old bcrypt ($2a$/$2x$; rehash as $2b$)";
	else
		found = "an unsupported method";
	snprintf(buf, size, "%s, found %s", EXPECT_HASH, found);
	return buf;
}

/* NULL when the user name is acceptable. */
static const char *users_name_check(const char *s, size_t n)
{
	if (n == 0)
		return "expected a user name before ':'";
	if (n > AUTH_USER_MAX)
		return "expected a user name of at most 255 octets";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c == 0x7f)
			return "expected a user name without spaces or control characters";
	}
	return NULL;
}

/* Length of the (method, cost) prefix of an allowed hash: what makes two
 * hashes cost the same to check. */
static size_t users_cost_key_len(const char *h)
{
	if (h[1] == '2')
		return 7; /* "$2b$NN$" */
	if (h[1] == '6' && strncmp(h + 3, "rounds=", 7) == 0)
		return (size_t)(strchr(h + 3, '$') - h) + 1;
	if (h[1] == '6')
		return 3;
	return (size_t)(strchr(h + 3, '$') - h) + 1; /* "$y$params$" */
}

static void users_cost_count(struct users_costs *c, const char *h, uint32_t ent)
{
	size_t n = users_cost_key_len(h);
	for (uint32_t i = 0; i < c->n; i++) {
		if (c->kind[i].key_len == n && memcmp(c->kind[i].key, h, n) == 0) {
			c->kind[i].users++;
			return;
		}
	}
	if (c->n == USERS_COSTS_MAX)
		return;
	c->kind[c->n++] = (struct users_cost){.key = h, .key_len = n, .users = 1, .ent = ent};
}

/* Slot of name, or of the free slot where it would go. */
static uint32_t users_probe(const struct auth_users *u, const char *name, size_t n, uint64_t h)
{
	uint32_t i = (uint32_t)h & u->slot_mask;
	for (;;) {
		uint32_t e = u->slots[i];
		if (e == USERS_SLOT_FREE)
			return i;
		const struct users_ent *x = &u->ents[e];
		if (x->name_hash == h && x->user_len == n &&
		    memcmp(u->text + x->user_off, name, n) == 0)
			return i;
		i = (i + 1) & u->slot_mask;
	}
}

static const struct users_ent *users_find(const struct auth_users *u, const char *name, size_t n)
{
	if (n == 0 || n > AUTH_USER_MAX)
		return NULL;
	uint32_t slot = users_probe(u, name, n, users_name_hash(name, n));
	uint32_t e = u->slots[slot];
	return e == USERS_SLOT_FREE ? NULL : &u->ents[e];
}

/* Add one user; user and hash already checked and NUL-terminated in text. */
static int users_insert(struct auth_users *u, struct users_costs *costs, size_t user_off,
			size_t user_len, size_t hash_off, uint32_t line, char *err, size_t err_size)
{
	const char *name = u->text + user_off;
	uint64_t h = users_name_hash(name, user_len);
	uint32_t slot = users_probe(u, name, user_len, h);
	if (u->slots[slot] != USERS_SLOT_FREE) {
		const struct users_ent *first = &u->ents[u->slots[slot]];
		users_err(err, err_size, line,
			  "expected each user once, \"%.64s\" is already on line %u", name,
			  first->line);
		return -EINVAL;
	}
	if (u->count == AUTH_USERS_COUNT_MAX) {
		users_err(err, err_size, line, "expected at most %u users", AUTH_USERS_COUNT_MAX);
		return -EINVAL;
	}
	assert(u->count < u->capacity);
	u->ents[u->count] = (struct users_ent){.name_hash = h,
					       .user_off = (uint32_t)user_off,
					       .hash_off = (uint32_t)hash_off,
					       .line = line,
					       .user_len = (uint16_t)user_len};
	u->slots[slot] = u->count;
	users_cost_count(costs, u->text + hash_off, u->count);
	u->count++;
	return 0;
}

/* Parse text[off, off+n): one line without its LF.  Blank and comment lines
 * add nothing. */
static int users_line(struct auth_users *u, struct users_costs *costs, size_t off, size_t n,
		      uint32_t line, char *err, size_t err_size)
{
	char *s = u->text + off, buf[AUTH_USERS_ERR_MAX];
	const char *why;
	if (memchr(s, '\0', n) != NULL) {
		users_err(err, err_size, line, "expected text, found a NUL byte");
		return -EINVAL;
	}
	if (n > AUTH_USERS_LINE_MAX) {
		users_err(err, err_size, line, "expected at most %u octets per line",
			  AUTH_USERS_LINE_MAX);
		return -EINVAL;
	}
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		n--;
	size_t lead = 0;
	while (lead < n && (s[lead] == ' ' || s[lead] == '\t'))
		lead++;
	if (lead == n || s[lead] == '#')
		return 0;
	if (lead > 0) {
		users_err(err, err_size, line, "expected the user name at the start of the line");
		return -EINVAL;
	}
	char *colon = memchr(s, ':', n);
	if (colon == NULL) {
		users_err(err, err_size, line, "expected user:hash, found no ':'");
		return -EINVAL;
	}
	size_t user_len = (size_t)(colon - s), hash_len = n - user_len - 1;
	*colon = '\0';
	s[n] = '\0'; /* the LF, a trailing blank, or the NUL past the copy */
	why = users_name_check(s, user_len);
	if (why == NULL)
		why = users_hash_check(colon + 1, hash_len, buf, sizeof(buf));
	if (why != NULL) {
		users_err(err, err_size, line, "%s", why);
		return -EINVAL;
	}
	return users_insert(u, costs, off, user_len, off + user_len + 1, line, err, err_size);
}

/* Allocate the table for a file of len octets with at most lines lines. */
static struct auth_users *users_alloc(const char *buf, size_t len, size_t lines)
{
	struct auth_users *u = calloc(1, sizeof(*u));
	if (u == NULL)
		return NULL;
	atomic_init(&u->refs, 1);
	u->capacity = lines < AUTH_USERS_COUNT_MAX ? (uint32_t)lines : AUTH_USERS_COUNT_MAX;
	uint32_t slots = 2;
	while (slots < 2 * (size_t)u->capacity)
		slots <<= 1;
	u->slot_mask = slots - 1;
	u->slots = malloc(sizeof(*u->slots) * slots);
	u->ents = calloc(u->capacity, sizeof(*u->ents));
	u->text = malloc(len + 1);
	if (u->slots == NULL || u->ents == NULL || u->text == NULL) {
		free(u->slots), free(u->ents), free(u->text), free(u);
		return NULL;
	}
	memset(u->slots, 0xff, sizeof(*u->slots) * slots);
	memcpy(u->text, buf, len);
	u->text[len] = '\0';
	u->text_len = len;
	return u;
}

static void users_free(struct auth_users *u)
{
	explicit_bzero(u->text, u->text_len + 1);
	explicit_bzero(u->dummy, sizeof(u->dummy));
	free(u->text);
	free(u->ents);
	free(u->slots);
	free(u);
}

/* The hash whose (method, cost) most users share (ties: the first seen), or
 * NULL for a file without users. */
static const struct users_ent *users_common_cost(const struct auth_users *u,
						 const struct users_costs *costs)
{
	const struct users_ent *seed = NULL;
	uint32_t best = 0;
	for (uint32_t i = 0; i < costs->n; i++) {
		if (costs->kind[i].users > best) {
			best = costs->kind[i].users;
			seed = &u->ents[costs->kind[i].ent];
		}
	}
	return seed;
}

/* Compute the dummy hash: a random secret hashed with the setting most
 * users share, so an unknown user costs what a known one does. */
static int users_make_dummy(struct auth_users *u, const struct users_costs *costs, char *err,
			    size_t err_size)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	const struct users_ent *e = users_common_cost(u, costs);
	const char *seed = e != NULL
			       ? u->text + e->hash_off
			       : crypt_gensalt_rn("$y$", 0, NULL, 0, setting, sizeof(setting));
	unsigned char rnd[16];
	char phrase[2 * sizeof(rnd) + 1];
	struct crypt_data *cd = calloc(1, sizeof(*cd));
	int rc = 0;
	if (cd == NULL)
		rc = -ENOMEM;
	else if (seed == NULL)
		rc = -ENOSYS; /* this libcrypt cannot make yescrypt settings */
	else if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		rc = -EIO;
	for (size_t i = 0; rc == 0 && i < sizeof(rnd); i++)
		snprintf(phrase + 2 * i, 3, "%02x", rnd[i]);
	errno = 0;
	const char *out = rc == 0 ? crypt_rn(phrase, seed, cd, sizeof(*cd)) : NULL;
	if (rc == 0 && out == NULL)
		rc = errno ? -errno : -EINVAL;
	if (rc == 0)
		snprintf(u->dummy, sizeof(u->dummy), "%s", out);
	else if (e != NULL && rc == -EINVAL)
		users_err(err, err_size, e->line, "expected a hash libcrypt can compute (%s)",
			  strerror(-rc));
	else
		users_err(err, err_size, 0, "cannot make the dummy hash: %s", strerror(-rc));
	if (cd != NULL)
		explicit_bzero(cd, sizeof(*cd));
	explicit_bzero(phrase, sizeof(phrase));
	free(cd);
	return rc;
}

int auth_users_parse(const char *buf, size_t len, struct auth_users **out, char *err,
		     size_t err_size)
{
	assert(out != NULL && (buf != NULL || len == 0));
	*out = NULL;
	if (len > AUTH_USERS_FILE_MAX) {
		users_err(err, err_size, 0, "expected at most %u octets", AUTH_USERS_FILE_MAX);
		return -EFBIG;
	}
	size_t lines = 1;
	for (size_t i = 0; i < len; i++)
		lines += buf[i] == '\n';
	struct auth_users *u = users_alloc(buf, len, lines);
	if (u == NULL)
		return -ENOMEM;
	struct users_costs costs = {.n = 0};
	int rc = 0;
	uint32_t line = 1;
	for (size_t off = 0; off < len && rc == 0; line++) {
		const char *nl = memchr(u->text + off, '\n', len - off);
		size_t end = nl != NULL ? (size_t)(nl - u->text) : len;
		rc = users_line(u, &costs, off, end - off, line, err, err_size);
		off = end + 1;
	}
	if (rc == 0)
		rc = users_make_dummy(u, &costs, err, err_size);
	if (rc != 0) {
		users_free(u);
		return rc;
	}
	assert(u->count <= u->capacity);
	*out = u;
	return 0;
}

/* Read the whole file into memory, bounded by AUTH_USERS_FILE_MAX. */
static int users_read(const char *path, char **buf, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	int rc = 0;
	if (fstat(fd, &st) != 0)
		rc = -errno;
	else if (!S_ISREG(st.st_mode))
		rc = -EINVAL;
	else if (st.st_size > (off_t)AUTH_USERS_FILE_MAX)
		rc = -EFBIG;
	size_t cap = rc == 0 ? (size_t)st.st_size + 1 : 0, n = 0;
	char *b = rc == 0 ? malloc(cap) : NULL;
	if (rc == 0 && b == NULL)
		rc = -ENOMEM;
	while (rc == 0 && n < cap) {
		/* The file may grow while read: what fits in the size from
		 * fstat plus one octet is read, and one octet more is an error. */
		ssize_t r = read(fd, b + n, cap - n);
		if (r < 0 && errno != EINTR)
			rc = -errno;
		else if (r == 0)
			break;
		else if (r > 0)
			n += (size_t)r;
	}
	if (rc == 0 && n == cap)
		rc = -EFBIG;
	close(fd);
	if (rc != 0) {
		free(b);
		return rc;
	}
	*buf = b, *len = n;
	return 0;
}

int auth_users_load(const char *path, struct auth_users **out, char *err, size_t err_size)
{
	assert(path != NULL && out != NULL);
	*out = NULL;
	char *buf = NULL;
	size_t len = 0;
	int rc = users_read(path, &buf, &len);
	if (rc == -EINVAL)
		users_err(err, err_size, 0, "%s: expected a regular file", path);
	else if (rc == -EFBIG)
		users_err(err, err_size, 0, "%s: expected at most %u octets", path,
			  AUTH_USERS_FILE_MAX);
	else if (rc != 0)
		users_err(err, err_size, 0, "%s: %s", path, strerror(-rc));
	if (rc != 0)
		return rc;
	rc = auth_users_parse(buf, len, out, err, err_size);
	explicit_bzero(buf, len);
	free(buf);
	return rc;
}

struct auth_users *auth_users_ref(struct auth_users *u)
{
	assert(u != NULL);
	unsigned old = atomic_fetch_add_explicit(&u->refs, 1, memory_order_relaxed);
	assert(old > 0);
	(void)old;
	return u;
}

void auth_users_unref(struct auth_users *u)
{
	if (u == NULL)
		return;
	/* acq_rel: every use of the table by other threads happens before the
	 * free on the thread that drops the last reference. */
	unsigned old = atomic_fetch_sub_explicit(&u->refs, 1, memory_order_acq_rel);
	assert(old > 0);
	if (old == 1)
		users_free(u);
}

uint32_t auth_users_count(const struct auth_users *u)
{
	assert(u != NULL);
	return u->count;
}

/* Equal strings, without an early exit on the first differing octet. */
static bool users_ct_equal(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b), n = na < nb ? na : nb;
	unsigned char d = na != nb;
	for (size_t i = 0; i < n; i++)
		d |= (unsigned char)(a[i] ^ b[i]);
	return d == 0;
}

int auth_users_verify(const struct auth_users *u, const char *user, size_t user_len,
		      const char *pass, size_t pass_len)
{
	assert(u != NULL && u->dummy[0] == '$');
	assert(user != NULL || user_len == 0);
	const struct users_ent *e = users_find(u, user, user_len);
	const char *target = e != NULL ? u->text + e->hash_off : u->dummy;
	/* A password crypt(3) cannot take as it is (too long, or with a NUL
	 * that would cut it short) still costs one hash, then fails. */
	bool pass_ok =
	    pass_len <= AUTH_PASS_MAX && (pass_len == 0 || memchr(pass, 0, pass_len) == NULL);
	struct crypt_data cd;
	memset(&cd, 0, sizeof(cd));
	if (pass_ok && pass_len > 0)
		memcpy(cd.input, pass, pass_len);
	errno = 0;
	const char *res = crypt_rn(cd.input, target, &cd, sizeof(cd));
	int rc;
	if (res == NULL)
		rc = errno ? -errno : -EINVAL;
	else if (e == NULL)
		rc = AUTH_VERIFY_NO_USER;
	else if (!users_ct_equal(res, target) || !pass_ok)
		rc = AUTH_VERIFY_BAD_PASSWORD;
	else
		rc = AUTH_VERIFY_OK;
	explicit_bzero(&cd, sizeof(cd));
	return rc;
}
