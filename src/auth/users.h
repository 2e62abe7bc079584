/*
 * auth/users — the users_file of SMTP AUTH and the
 * password check against it.
 *
 * File format, one entry per line:
 *     user:hash
 * '#' starts a comment line (after optional blanks); blank lines are
 * allowed; trailing blanks and a CR before the LF are ignored (editors
 * leave them).  User names are compared byte for byte (case-sensitive, no
 * SASLprep, RFC 4616 2 leaves preparation to the server): 1..AUTH_USER_MAX
 * octets, no ':', space, tab, control character or DEL; UTF-8 passes
 * through.  A user may appear once.  The hash must be one of the crypt(3)
 * formats libxcrypt computes with a memory- or time-hard function:
 *     yescrypt  $y$<params>$<salt>$<43 chars>
 *     SHA-512   $6$[rounds=N$]<salt 1..16>$<86 chars>
 *     bcrypt    $2b$NN$<53 chars>   ($2y$, the same algorithm as written
 *               by htpasswd -B, is accepted too; $2a$/$2x$ are refused
 *               because of their historic 8-bit bugs)
 * DES, BSDi-DES, MD5-crypt, SHA-256-crypt, any other method and anything
 * that looks like a plaintext password are refused: a leaked users_file of
 * fast hashes gives the passwords away.  Only the shape of a hash is
 * checked at load (running crypt for each line would make a large file
 * take minutes); a hash that passes the shape check but that libxcrypt
 * cannot compute makes that user fail with -EINVAL at verification.
 *
 * Costs are bounded too, naming the line: the dummy hash below is computed
 * at load with the file's most common cost and every AUTH attempt costs one
 * hash, so a file of "$2b$31$" would keep start-up busy for days and make
 * each attempt a denial of service.  Refused: bcrypt cost above
 * AUTH_BCRYPT_COST_MAX, SHA-512 rounds= above AUTH_SHA512_ROUNDS_MAX, and
 * yescrypt with N above 2^AUTH_YESCRYPT_N_LOG2_MAX (libxcrypt's default
 * 2^12 plus 4 doublings), r above AUTH_YESCRYPT_R_MAX, or parameters past
 * N and r (p, t, g, ROM), which crypt_gensalt() never writes.
 *
 * Errors: one line "users_file:LINE: what was expected" (LINE counts from
 * 1; file-level errors have no line: "users_file: PATH: strerror").  The
 * text never contains a hash or a password.
 *
 * Table: built once by auth_users_load()/auth_users_parse(), immutable
 * afterwards, so any number of threads may call auth_users_verify() on it
 * at once without locks.  A reload builds a new table and swaps the
 * pointer; the old one lives until its last reference is dropped
 * (auth_users_ref/unref, atomic), so a verification on a helper thread
 * that started before the swap finishes on the table it started with.
 *
 * Unknown users: auth_users_verify() runs crypt(3) for an unknown user too,
 * against a dummy hash computed at load with the method and cost that most
 * users in the file have (ties: the first seen; an empty file: yescrypt at
 * libxcrypt's default cost).  So for the bulk of users the time taken does
 * not tell whether the name exists; a file mixing methods still shows the
 * difference between a minority method and the dummy, which the operator
 * avoids by hashing all users alike.  The hash comparison is constant-time.
 *
 * Threads: load/parse on the main thread (it reads a file and allocates);
 * verify BLOCKS for as long as the hash takes (tens of ms by design) and
 * allocates inside libxcrypt (yescrypt's memory), so it runs on helper
 * threads only (hpool/hpool.h), never on a shard (ARCHITECTURE.md
 * invariant 3).  Each verify uses about 33 KiB of stack (struct crypt_data)
 * and zeroes it, including its copy of the password, before returning.
 */
#ifndef RMX_AUTH_USERS_H
#define RMX_AUTH_USERS_H

#include <stddef.h>
#include <stdint.h>

#define AUTH_USER_MAX	     255	 /* octets of a user name (RFC 4616 2: authcid) */
#define AUTH_PASS_MAX	     255	 /* octets of a password (RFC 4616 2: passwd) */
#define AUTH_HASH_MAX	     255	 /* octets of a stored hash */
#define AUTH_USERS_LINE_MAX  1024	 /* octets of one line without its LF */
#define AUTH_USERS_COUNT_MAX (1u << 18)	 /* users in one file */
#define AUTH_USERS_FILE_MAX  (64u << 20) /* octets of the whole file */
#define AUTH_USERS_ERR_MAX   192	 /* a buffer this big holds any error line */

/* Hash cost bounds (see above).  bcrypt 15 is 32 times the common cost 10;
 * SHA-512 1000000 is 200 times the default 5000 rounds; yescrypt N 2^16
 * with r 32 is crypt_gensalt("$y$", 9): 256 MiB per verification. */
#define AUTH_BCRYPT_COST_MAX	     15
#define AUTH_SHA512_ROUNDS_MAX	     1000000
#define AUTH_YESCRYPT_N_LOG2_DEFAULT 12 /* crypt_gensalt("$y$", 0): "$y$j9T$", N 2^12, r 32 */
#define AUTH_YESCRYPT_N_LOG2_MAX     (AUTH_YESCRYPT_N_LOG2_DEFAULT + 4)
#define AUTH_YESCRYPT_R_MAX	     32 /* crypt_gensalt writes r 8 (costs 1, 2) or 32 */

/* Outcome of auth_users_verify() (besides -errno).  The session must answer
 * BAD_PASSWORD and NO_USER identically (535 5.7.8): the distinction is for
 * the log only. */
enum auth_verify_rc {
	AUTH_VERIFY_OK = 0,
	AUTH_VERIFY_BAD_PASSWORD = 1,
	AUTH_VERIFY_NO_USER = 2,
};

struct auth_users;

/* Read and parse the file at path (at most AUTH_USERS_FILE_MAX octets).
 * Returns 0 and *out (one reference, the caller's) or -errno with *out
 * NULL and err filled: -EINVAL for content errors, -EFBIG for a file too
 * large, -ENOMEM, or the errno of open/read.  err may be NULL. */
int auth_users_load(const char *path, struct auth_users **out, char *err, size_t err_size);

/* The same for file contents already in memory (buf need not end in NUL;
 * it is copied, the caller keeps it). */
int auth_users_parse(const char *buf, size_t len, struct auth_users **out, char *err,
		     size_t err_size);

/* Reference counting (atomic; any thread).  ref returns u.  The last unref
 * zeroes and frees the table.  unref(NULL) does nothing. */
struct auth_users *auth_users_ref(struct auth_users *u);
void auth_users_unref(struct auth_users *u);

/* Number of users in the table. */
uint32_t auth_users_count(const struct auth_users *u);

/* Check a password.  user/pass are octet strings (need no NUL end); a
 * user over AUTH_USER_MAX octets is unknown, a password over AUTH_PASS_MAX
 * octets or containing NUL never matches — both after the same crypt(3)
 * work as any other attempt.  Returns an enum auth_verify_rc, or -errno
 * when crypt(3) failed (-ENOMEM, -EINVAL for a hash libxcrypt refuses):
 * the session answers 454 4.7.0 then.  BLOCKS (see above). */
int auth_users_verify(const struct auth_users *u, const char *user, size_t user_len,
		      const char *pass, size_t pass_len);

struct hpool;

/* Queue auth_users_verify() on the helper pool (hpool/hpool.h) as an
 * inline job for shard: user and pass are copied into the pool's slot (the
 * caller zeroes its own copy right after) and a reference on u is taken;
 * the helper zeroes the password and drops the reference as soon as the
 * check ran or was cancelled.  The completion's result is an enum
 * auth_verify_rc, -errno from crypt (answer 454 4.7.0), or -ECANCELED.
 * Returns 0, or -EAGAIN / -ESHUTDOWN / -EINVAL as hpool_submit_inline()
 * (user over AUTH_USER_MAX or pass over AUTH_PASS_MAX octets: -EINVAL).
 * Shard thread. */
int auth_users_submit_verify(struct hpool *p, uint32_t shard, uint64_t cookie, struct auth_users *u,
			     const char *user, size_t user_len, const char *pass, size_t pass_len);

#endif
