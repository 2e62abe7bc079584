/* session_dialogue — the SMTP server session's replies, in order, over a fake connection. */
#include <crypt.h>
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cmocka.h>

#include "auth/throttle.h"
#include "auth/users.h"
#include "hpool/hpool.h"
#include "session_fakeconn.h"

#define HOST "mx.test.example"
/* One listener; mail for local.example only; a small size limit. */
#define JSON_ERRORS(n)                                                                             \
	"{'hostname': '" HOST "', 'listeners': [{'name': 'mx', 'address': '127.0.0.1:2525'}], "    \
	"'relay': {'domains': ['local.example']}, "                                                \
	"'limits': {'errors': " #n ", 'message_size': 100000}}"
#define BASE_JSON JSON_ERRORS(10)

#define EHLO_COMMON                                                                                \
	"250-" HOST "\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"                    \
	"250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-DSN\r\n"

#define GREETING "220 " HOST " ESMTP ringmx\r\n"

/* Only its address is ever read by the session (is there a TLS context?);
 * the handshake itself is the shard's, which the fake plays. */
static char fake_tls_ctx;

static struct fconn *greeted(void)
{
	struct fconn *fc = fc_new(BASE_JSON);

	fc_greet(fc);
	assert_string_equal(fc_replies(fc), GREETING);
	return fc;
}

/* Greeted, and EHLO answered. */
static struct fconn *ready(void)
{
	struct fconn *fc = greeted();

	fc_feed(fc, "EHLO client.example\r\n");
	fc_replies(fc);
	return fc;
}

/* Spool turns until on_durable came, asserting no reply went out meanwhile
 * (persist before reply).  Returns its result. */
static int await_durable(struct fconn *fc)
{
	for (int turn = 0;; turn++) {
		uint32_t got;

		assert_true(turn < 16);
		got = fc_spool_turn(fc);
		assert_string_equal(fc_replies(fc), "");
		if (got) {
			assert_int_equal(got, 1);
			return fc->spt.durable_res[fc_durable_first(fc)];
		}
	}
}

/* "250 2.0.0 Ok: queued as <qid>" and nothing else. */
static void assert_queued(const char *r)
{
	const char *want = "250 2.0.0 Ok: queued as ";

	assert_int_equal(strncmp(r, want, strlen(want)), 0);
	assert_non_null(strstr(r, "\r\n"));
	assert_string_equal(strstr(r, "\r\n"), "\r\n");
	assert_true(strlen(r) > strlen(want) + 2);
}

/* ---- greeting and EHLO ----------------------------------------------------------- */

static void test_ehlo_extensions(void **state)
{
	struct fconn *fc = greeted();

	(void)state;
	fc_feed(fc, "EHLO client.example\r\n");
	/* No certificates on the listener: no STARTTLS; no users: no AUTH. */
	assert_string_equal(fc_replies(fc), EHLO_COMMON "250 SMTPUTF8\r\n");
	fc_feed(fc, "HELO client.example\r\n");
	assert_string_equal(fc_replies(fc), "250 " HOST "\r\n");
	fc_free(fc);
}

static void test_ehlo_starttls_needs_ctx(void **state)
{
	struct fconn *fc = fc_new(BASE_JSON);

	(void)state;
	/* The loader wants certificate files for a STARTTLS listener; the
	 * session reads only the mode. */
	fc->cfg->listeners[0].tls = CONFIG_TLS_STARTTLS;
	fc_greet(fc);
	fc_replies(fc);
	fc_feed(fc, "EHLO client.example\r\n");
	assert_string_equal(fc_replies(fc), EHLO_COMMON "250 SMTPUTF8\r\n");
	fc_feed(fc, "STARTTLS\r\n");
	assert_string_equal(fc_replies(fc), "502 5.5.1 Error: command not implemented\r\n");

	fc->env.tls_ctx = (struct tls_ctx *)(void *)&fake_tls_ctx;
	fc_feed(fc, "EHLO client.example\r\n");
	assert_string_equal(fc_replies(fc), EHLO_COMMON "250-STARTTLS\r\n250 SMTPUTF8\r\n");
	fc_free(fc);
}

/* ---- pipelining ------------------------------------------------------------------ */

static void test_pipelined_group(void **state)
{
	struct fconn *fc = ready();
	const char *group = "MAIL FROM:<a@client.example>\r\n"
			    "RCPT TO:<u@local.example>\r\n"
			    "RCPT TO:<x@elsewhere.example>\r\n"
			    "DATA\r\n";

	(void)state;
	/* One feed, every reply in order (RFC 2920 3.1): the refused relay
	 * recipient does not stop the group. */
	assert_int_equal(fc_feed(fc, group), strlen(group));
	assert_string_equal(fc_replies(fc),
			    "250 2.1.0 Ok\r\n"
			    "250 2.1.5 Ok\r\n"
			    "554 5.7.1 <x@elsewhere.example>: Relay access denied\r\n"
			    "354 End data with <CR><LF>.<CR><LF>\r\n");
	fc_feed(fc, "Subject: t\r\n\r\nbody\r\n.\r\n");
	assert_int_equal(await_durable(fc), 0);
	smtp_session_durable(&fc->c, 0);
	assert_queued(fc_replies(fc));
	fc_free(fc);
}

/* ---- out of sequence, bad syntax, the error limit --------------------------------- */

static void test_out_of_sequence(void **state)
{
	struct fconn *fc = greeted();

	(void)state;
	fc_feed(fc, "MAIL FROM:<a@client.example>\r\n");
	assert_string_equal(fc_replies(fc), "503 5.5.1 Error: send HELO/EHLO first\r\n");
	fc_feed(fc, "EHLO client.example\r\n");
	fc_replies(fc);
	fc_feed(fc, "RCPT TO:<u@local.example>\r\nDATA\r\n");
	assert_string_equal(fc_replies(fc), "503 5.5.1 Error: need MAIL command\r\n"
					    "503 5.5.1 Error: need RCPT command\r\n");
	/* DATA after MAIL with no recipient accepted: 554 (RFC 5321 3.3),
	 * not 503. */
	fc_feed(fc, "MAIL FROM:<a@client.example>\r\nDATA\r\nMAIL FROM:<b@client.example>\r\n");
	assert_string_equal(fc_replies(fc), "250 2.1.0 Ok\r\n"
					    "554 5.5.1 Error: no valid recipients\r\n"
					    "503 5.5.1 Error: nested MAIL command\r\n");
	assert_int_equal(fc->closes, 0);
	fc_free(fc);
}

static void test_bad_syntax_and_error_limit(void **state)
{
	struct fconn *fc = fc_new(JSON_ERRORS(5));
	const char *five = "BAR\r\nFOO\r\nNOOP\r\n";
	size_t used;

	(void)state;
	fc_greet(fc);
	fc_feed(fc, "EHLO client.example\r\n");
	fc_replies(fc);
	fc_feed(fc, "FOO\r\n");
	/* The parser's reply: the session's own "500 5.5.2 Error: command not
	 * recognized" (SMTP_VERB_UNKNOWN parsed OK) is never reached. */
	assert_string_equal(fc_replies(fc), "500 5.5.2 Command unrecognized\r\n");
	fc_feed(fc, "STARTTLS now\r\n");
	/* The parser refuses the argument, before the session looks at
	 * whether this listener has TLS at all. */
	assert_string_equal(fc_replies(fc), "501 5.5.4 Syntax: STARTTLS\r\n");
	fc_feed(fc, "MAIL FROM:<a@client.example> SIZE=999999\r\n");
	assert_string_equal(fc_replies(fc), "552 5.3.4 Message size exceeds fixed limit\r\n");
	fc_feed(fc, "NOOP\r\n");
	assert_string_equal(fc_replies(fc), "250 2.0.0 Ok\r\n");
	/* The fourth and fifth errors (limits.errors 5) close, and the NOOP
	 * behind them in the same feed is never answered: the 501 and the
	 * 552 above counted too. */
	used = fc_feed(fc, five);
	assert_int_equal(used, strlen(five)); /* closing: the rest is moot */
	assert_string_equal(fc_replies(fc), "500 5.5.2 Command unrecognized\r\n"
					    "500 5.5.2 Command unrecognized\r\n"
					    "421 4.7.0 " HOST " Error: too many errors\r\n");
	assert_int_equal(fc->closes, 1);
	assert_int_equal(smtp_session_phase(&fc->c), SMTP_PHASE_QUIT);
	fc_free(fc);
}

static void test_mail_syntax(void **state)
{
	struct fconn *fc = ready();

	(void)state;
	fc_feed(fc, "MAIL FROM:a@client.example\r\n");
	assert_string_equal(fc_replies(fc), "501 5.1.7 Bad sender address syntax\r\n");
	fc_free(fc);
}

/* ---- DATA: the 250 only once durable -------------------------------------------- */

static void test_data_commit_order(void **state)
{
	struct fconn *fc = ready();
	const char *tx = "MAIL FROM:<a@client.example>\r\nRCPT TO:<u@local.example>\r\nDATA\r\n";
	const char *body = "Subject: t\r\n\r\nline\r\n..dot\r\n.\r\n";
	char in[256];
	size_t used;

	(void)state;
	fc_feed(fc, tx);
	fc_replies(fc);
	/* The next command pipelined behind the final dot waits for the
	 * commit: input stops right after the dot. */
	snprintf(in, sizeof(in), "%sNOOP\r\n", body);
	used = fc_feed(fc, in);
	assert_int_equal(used, strlen(body));
	assert_string_equal(fc_replies(fc), "");
	assert_int_equal(smtp_session_phase(&fc->c), SMTP_PHASE_COMMIT);
	assert_int_equal(smtp_session_hold(&fc->c), SMTP_HOLD_DISK);
	assert_int_equal(await_durable(fc), 0);
	/* on_durable came; the session still said nothing until told. */
	assert_string_equal(fc_replies(fc), "");
	uint32_t resumes = fc->resumes;

	smtp_session_durable(&fc->c, 0);
	assert_queued(fc_replies(fc));
	assert_int_equal(fc->resumes, resumes + 1);
	assert_int_equal(smtp_session_phase(&fc->c), SMTP_PHASE_COMMANDS);
	assert_int_equal(fc_feed(fc, in + used), strlen("NOOP\r\n"));
	assert_string_equal(fc_replies(fc), "250 2.0.0 Ok\r\n");
	fc_free(fc);
}

static void test_data_commit_failed(void **state)
{
	struct fconn *fc = ready();

	(void)state;
	fc_feed(fc, "MAIL FROM:<a@client.example>\r\nRCPT TO:<u@local.example>\r\nDATA\r\n");
	fc_replies(fc);
	fc_feed(fc, "x\r\n.\r\n");
	assert_int_equal(await_durable(fc), 0);
	/* The shard hands on the spool's error; the session answers 451. */
	smtp_session_durable(&fc->c, -EIO);
	assert_string_equal(fc_replies(fc), "451 4.3.0 Error: queue file write error\r\n");
	fc_free(fc);
}

/* ---- BDAT (RFC 3030) ----------------------------------------------------------- */

static void test_bdat_chunks(void **state)
{
	struct fconn *fc = ready();
	const char *last = "BDAT 8 LAST\r\n world\r\nNOOP\r\n";
	size_t used;

	(void)state;
	fc_feed(fc, "MAIL FROM:<a@client.example>\r\nRCPT TO:<u@local.example>\r\n");
	fc_replies(fc);
	assert_int_equal(fc_feed(fc, "BDAT 5\r\nhello"), strlen("BDAT 5\r\nhello"));
	assert_string_equal(fc_replies(fc), "250 2.0.0 5 octets received\r\n");
	/* The last chunk: its 250 waits for the commit, and so does the
	 * command behind it. */
	used = fc_feed(fc, last);
	assert_int_equal(used, strlen("BDAT 8 LAST\r\n world\r\n"));
	assert_string_equal(fc_replies(fc), "");
	assert_int_equal(smtp_session_phase(&fc->c), SMTP_PHASE_COMMIT);
	assert_int_equal(await_durable(fc), 0);
	smtp_session_durable(&fc->c, 0);
	assert_queued(fc_replies(fc));
	fc_feed(fc, last + used);
	assert_string_equal(fc_replies(fc), "250 2.0.0 Ok\r\n");
	fc_free(fc);
}

static void test_bdat_refused(void **state)
{
	struct fconn *fc = ready();

	(void)state;
	/* No transaction: the chunk is still read (the session stays in step
	 * with the client), then refused. */
	assert_int_equal(fc_feed(fc, "BDAT 3\r\nabcNOOP\r\n"), strlen("BDAT 3\r\nabcNOOP\r\n"));
	assert_string_equal(fc_replies(fc), "503 5.5.1 Error: need RCPT command\r\n"
					    "250 2.0.0 Ok\r\n");
	fc_feed(fc, "MAIL FROM:<a@client.example>\r\nBDAT 2\r\nxy");
	assert_string_equal(fc_replies(fc), "250 2.1.0 Ok\r\n"
					    "554 5.5.1 Error: no valid recipients\r\n");
	/* BDAT then DATA or RCPT in one transaction: 503. */
	fc_feed(fc,
		"RCPT TO:<u@local.example>\r\nBDAT 3\r\nabcDATA\r\nRCPT TO:<v@local.example>\r\n");
	assert_string_equal(fc_replies(fc), "250 2.1.5 Ok\r\n"
					    "250 2.0.0 3 octets received\r\n"
					    "503 5.5.1 Error: DATA after BDAT\r\n"
					    "503 5.5.1 Error: RCPT after BDAT\r\n");
	/* RSET forgets the begun message (aborted in the spool). */
	fc_feed(fc, "RSET\r\n");
	assert_string_equal(fc_replies(fc), "250 2.0.0 Ok\r\n");
	fc_free(fc);
}

static void test_bdat_too_big(void **state)
{
	struct fconn *fc = ready();

	(void)state;
	fc_feed(fc, "MAIL FROM:<a@client.example>\r\nRCPT TO:<u@local.example>\r\n");
	fc_replies(fc);
	/* Reading 100001 bytes only to refuse them would tie the connection
	 * up: refused at once, and closed. */
	fc_feed(fc, "BDAT 100001 LAST\r\n");
	assert_string_equal(fc_replies(fc),
			    "552 5.3.4 Error: message size exceeds fixed limit\r\n");
	assert_int_equal(fc->closes, 1);
	fc_free(fc);
}

/* ---- STARTTLS (RFC 3207) -------------------------------------------------------- */

static struct fconn *starttls_ready(void)
{
	struct fconn *fc = fc_new(BASE_JSON);

	fc->cfg->listeners[0].tls = CONFIG_TLS_STARTTLS;
	fc->env.tls_ctx = (struct tls_ctx *)(void *)&fake_tls_ctx;
	fc_greet(fc);
	fc_replies(fc);
	fc_feed(fc, "EHLO client.example\r\n");
	fc_replies(fc);
	return fc;
}

static void test_starttls_discards_rest(void **state)
{
	struct fconn *fc = starttls_ready();
	const char *in = "STARTTLS\r\nMAIL FROM:<evil@client.example>\r\n";

	(void)state;
	/* CVE-2011-0411: what follows STARTTLS in the same read was sent in
	 * plaintext and must never be taken as a command after the switch.
	 * The session stops at the end of the STARTTLS line; the shard drops
	 * the rest. */
	assert_int_equal(fc_feed(fc, in), strlen("STARTTLS\r\n"));
	assert_string_equal(fc_replies(fc), "220 2.0.0 Ready to start TLS\r\n");
	assert_true(fc->tls_switch);
	/* The handshake (the shard's) is done; the dialogue starts again. */
	fc->tls_switch = false;
	fc->tls = CONN_TLS_ON;
	fc_feed(fc, "MAIL FROM:<a@client.example>\r\n");
	assert_string_equal(fc_replies(fc), "503 5.5.1 Error: send HELO/EHLO first\r\n");
	fc_feed(fc, "EHLO client.example\r\n");
	assert_string_equal(fc_replies(fc), EHLO_COMMON "250 SMTPUTF8\r\n");
	fc_feed(fc, "STARTTLS\r\n");
	assert_string_equal(fc_replies(fc), "503 5.5.1 Error: TLS already active\r\n");
	fc_free(fc);
}

static void test_starttls_refusals(void **state)
{
	struct fconn *fc = starttls_ready();

	(void)state;
	fc_feed(fc, "STARTTLS now\r\n");
	assert_string_equal(fc_replies(fc), "501 5.5.4 Syntax: STARTTLS\r\n");
	fc_feed(fc, "MAIL FROM:<a@client.example>\r\nSTARTTLS\r\n");
	assert_string_equal(fc_replies(fc), "250 2.1.0 Ok\r\n"
					    "503 5.5.1 Error: STARTTLS inside a transaction\r\n");
	assert_false(fc->tls_switch);
	fc_free(fc);
}

/* ---- AUTH (RFC 4954) ------------------------------------------------------------ */

/* alice, password alice-pw, SHA-512 with few rounds (cheap on purpose). */
static struct auth_users *test_users(void)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE], text[512], err[AUTH_USERS_ERR_MAX];
	struct crypt_data cd;
	struct auth_users *u = NULL;
	const char *h;

	memset(&cd, 0, sizeof(cd));
	assert_non_null(crypt_gensalt_rn("$6$", 1000, NULL, 0, setting, sizeof(setting)));
	h = crypt_r("alice-pw", setting, &cd);
	assert_non_null(h);
	snprintf(text, sizeof(text), "alice:%s\n", h);
	assert_int_equal(auth_users_parse(text, strlen(text), &u, err, sizeof(err)), 0);
	return u;
}

struct auth_fixture {
	struct fconn *fc;
	struct auth_users *users;
	struct auth_throttle *throttle;
	struct hpool *pool;
	int efd;
};

#define AUTH_DELAY_MS 250

/* Listener 0 with auth "optional" (the loader wants a users_file; the
 * session reads the mode), the real helper pool and throttle. */
static void auth_open(struct auth_fixture *a, bool plaintext)
{
	struct hpool_config pc = {.threads = 1, .shards = 1, .queue_size = 8, .shard_inflight = 4};
	struct auth_throttle_config tc = {.entries = 64,
					  .base_delay_ms = AUTH_DELAY_MS,
					  .max_delay_ms = 4 * AUTH_DELAY_MS,
					  .failures_max = 5,
					  .window_ms = 60000,
					  .v6_prefix_len = 64};

	a->users = test_users();
	assert_int_equal(auth_throttle_create(&tc, &a->throttle), 0);
	assert_int_equal(hpool_create(&pc, &a->pool), 0);
	a->efd = eventfd(0, EFD_CLOEXEC);
	assert_true(a->efd >= 0);
	assert_int_equal(hpool_shard_attach(a->pool, 0, a->efd), 0);
	a->fc = fc_new(BASE_JSON);
	a->fc->cfg->listeners[0].auth = CONFIG_AUTH_OPTIONAL;
	a->fc->cfg->listeners[0].auth_plaintext = plaintext;
	a->fc->env.users = a->users;
	a->fc->env.throttle = a->throttle;
	a->fc->env.pool = a->pool;
	fc_greet(a->fc);
	fc_replies(a->fc);
}

static void auth_close(struct auth_fixture *a)
{
	fc_free(a->fc);
	hpool_stop(a->pool, HPOOL_STOP_DRAIN);
	hpool_destroy(a->pool);
	close(a->efd);
	auth_throttle_destroy(a->throttle);
	auth_users_unref(a->users);
}

/* Play the shard: wait for the helper's answer (the eventfd), hand it to
 * the session as the shard does. */
static void auth_answer(struct auth_fixture *a)
{
	struct hpool_done d;
	struct pollfd pfd = {.fd = a->efd, .events = POLLIN};
	uint64_t v;

	while (hpool_reap(a->pool, 0, &d, 1) == 0) {
		assert_int_equal(poll(&pfd, 1, 30000), 1);
		assert_int_equal(read(a->efd, &v, sizeof(v)), (ssize_t)sizeof(v));
	}
	assert_int_equal(d.cookie, (uint64_t)1 << 32);
	smtp_session_auth_done(&a->fc->c, d.result);
}

static void test_auth_not_offered_without_tls(void **state)
{
	struct auth_fixture a;
	struct fconn *plain = fc_new(BASE_JSON);

	(void)state;
	/* No AUTH on the listener at all: not implemented. */
	fc_greet(plain);
	fc_replies(plain);
	fc_feed(plain, "EHLO client.example\r\nAUTH PLAIN AGFsaWNlAGFsaWNlLXB3\r\n");
	assert_string_equal(fc_replies(plain),
			    EHLO_COMMON "250 SMTPUTF8\r\n"
					"502 5.5.1 Error: command not implemented\r\n");
	fc_free(plain);
	/* AUTH on the listener, no TLS, no auth_plaintext: not offered, and
	 * the password is refused before it is read (RFC 4954 4). */
	auth_open(&a, false);
	fc_feed(a.fc, "EHLO client.example\r\nAUTH PLAIN AGFsaWNlAGFsaWNlLXB3\r\n");
	assert_string_equal(fc_replies(a.fc),
			    EHLO_COMMON "250 SMTPUTF8\r\n"
					"538 5.7.11 Encryption required for requested "
					"authentication mechanism\r\n");
	assert_int_equal(a.fc->helper_sent, 0);
	auth_close(&a);
}

static void test_auth_success(void **state)
{
	struct auth_fixture a;

	(void)state;
	auth_open(&a, false);
	a.fc->tls = CONN_TLS_ON; /* as after STARTTLS */
	fc_feed(a.fc, "AUTH PLAIN AGFsaWNlAGFsaWNlLXB3\r\n");
	assert_string_equal(fc_replies(a.fc), "503 5.5.1 Error: send EHLO first\r\n");
	fc_feed(a.fc, "EHLO client.example\r\n");
	assert_string_equal(fc_replies(a.fc),
			    EHLO_COMMON "250-AUTH PLAIN LOGIN\r\n250 SMTPUTF8\r\n");
	/* The check runs on a helper: input waits, nothing is said yet. */
	const char *in = "AUTH PLAIN AGFsaWNlAGFsaWNlLXB3\r\nNOOP\r\n";
	size_t used = fc_feed(a.fc, in);

	assert_int_equal(used, strlen("AUTH PLAIN AGFsaWNlAGFsaWNlLXB3\r\n"));
	assert_string_equal(fc_replies(a.fc), "");
	assert_int_equal(a.fc->helper_sent, 1);
	assert_int_equal(smtp_session_hold(&a.fc->c), SMTP_HOLD_SELF);
	auth_answer(&a);
	assert_string_equal(fc_replies(a.fc), "235 2.7.0 Authentication successful\r\n");
	fc_feed(a.fc, in + used);
	assert_string_equal(fc_replies(a.fc), "250 2.0.0 Ok\r\n");
	/* Authenticated: AUTH is no longer offered, and relaying is allowed. */
	fc_feed(a.fc, "EHLO client.example\r\nMAIL FROM:<alice@client.example>\r\n"
		      "RCPT TO:<x@elsewhere.example>\r\n");
	assert_string_equal(fc_replies(a.fc), EHLO_COMMON "250 SMTPUTF8\r\n"
							  "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
	auth_close(&a);
}

static void test_auth_failure_delayed(void **state)
{
	struct auth_fixture a;

	(void)state;
	auth_open(&a, true); /* plaintext allowed (loopback tests) */
	fc_feed(a.fc, "EHLO client.example\r\n");
	assert_string_equal(fc_replies(a.fc),
			    EHLO_COMMON "250-AUTH PLAIN LOGIN\r\n250 SMTPUTF8\r\n");
	fc_feed(a.fc, "AUTH PLAIN AGFsaWNlAHdyb25n\r\n");
	assert_int_equal(a.fc->helper_sent, 1);
	auth_answer(&a);
	/* The 535 waits for the throttle's delay, on the connection's timer. */
	assert_string_equal(fc_replies(a.fc), "");
	assert_int_equal(a.fc->timers, 1);
	assert_int_equal(a.fc->timer_ms, AUTH_DELAY_MS);
	assert_int_equal(smtp_session_hold(&a.fc->c), SMTP_HOLD_SELF);
	uint32_t resumes = a.fc->resumes;

	smtp_session_decided(&a.fc->c);
	assert_string_equal(fc_replies(a.fc), "535 5.7.8 Authentication credentials invalid\r\n");
	assert_true(a.fc->resumes > resumes);
	assert_int_equal(smtp_session_hold(&a.fc->c), SMTP_HOLD_NONE);
	/* Not authenticated: relaying is still denied. */
	fc_feed(a.fc, "MAIL FROM:<a@client.example>\r\nRCPT TO:<x@elsewhere.example>\r\n");
	assert_string_equal(
	    fc_replies(a.fc),
	    "250 2.1.0 Ok\r\n554 5.7.1 <x@elsewhere.example>: Relay access denied\r\n");
	auth_close(&a);
}

static void test_auth_login_exchange(void **state)
{
	struct auth_fixture a;

	(void)state;
	auth_open(&a, true);
	fc_feed(a.fc, "EHLO client.example\r\n");
	fc_replies(a.fc);
	/* RFC 4954 4: each challenge is a 334; the responses are not commands. */
	fc_feed(a.fc, "AUTH LOGIN\r\n");
	assert_string_equal(fc_replies(a.fc), "334 VXNlcm5hbWU6\r\n");
	fc_feed(a.fc, "YWxpY2U=\r\n");
	assert_string_equal(fc_replies(a.fc), "334 UGFzc3dvcmQ6\r\n");
	fc_feed(a.fc, "YWxpY2UtcHc=\r\n");
	assert_string_equal(fc_replies(a.fc), "");
	assert_int_equal(a.fc->helper_sent, 1);
	auth_answer(&a);
	assert_string_equal(fc_replies(a.fc), "235 2.7.0 Authentication successful\r\n");
	fc_feed(a.fc, "AUTH LOGIN\r\n");
	assert_string_equal(fc_replies(a.fc), "503 5.5.1 Error: already authenticated\r\n");
	auth_close(&a);
}

/* ---- the tarpit: decisions that come later ---------------------------------------- */

/* The receive buffer a command came in goes back to the kernel while its
 * decision waits: overwrite it, as the next receive would. */
static void reuse_last_input(struct fconn *fc, size_t n)
{
	memset(fc->input + fc->input_len - n, 'X', n);
}

static void test_tarpit_keeps_the_line(void **state)
{
	struct fconn *fc = fc_new("{'hostname': '" HOST "', "
				  "'listeners': [{'name': 'mx', 'address': '127.0.0.1:2525'}], "
				  "'limits': {'soft_errors': 1, 'error_delay_ms': 1500}}");
	const char *mail = "MAIL FROM:<a@client.example>\r\n";
	const char *rcpt = "RCPT TO:<x@elsewhere.example>\r\nNOOP\r\n";
	size_t used;

	(void)state;
	fc_greet(fc);
	fc_feed(fc, "EHLO client.example\r\nFOO\r\n");
	fc_replies(fc);
	/* Past soft_errors: every decision waits error_delay_ms on the
	 * connection's timer; nothing is said until it is over. */
	assert_int_equal(fc_feed(fc, mail), strlen(mail));
	assert_string_equal(fc_replies(fc), "");
	assert_int_equal(fc->timers, 1);
	assert_int_equal(fc->timer_ms, 1500);
	assert_int_equal(smtp_session_hold(&fc->c), SMTP_HOLD_SELF);
	reuse_last_input(fc, strlen(mail));
	smtp_session_decided(&fc->c);
	assert_string_equal(fc_replies(fc), "250 2.1.0 Ok\r\n");
	/* The pipelined NOOP waits behind the decision. */
	used = fc_feed(fc, rcpt);
	assert_int_equal(used, strlen("RCPT TO:<x@elsewhere.example>\r\n"));
	reuse_last_input(fc, strlen(rcpt));
	uint32_t resumes = fc->resumes;

	smtp_session_decided(&fc->c);
	assert_string_equal(fc_replies(fc),
			    "554 5.7.1 <x@elsewhere.example>: Relay access denied\r\n");
	assert_int_equal(fc->resumes, resumes + 1);
	assert_int_equal(fc->timers, 2);
	fc_free(fc);
}

/* ---- the shard's other calls ------------------------------------------------------ */

static void test_early_talker_and_timeout(void **state)
{
	struct fconn *fc = fc_new(BASE_JSON);

	(void)state;
	/* Bytes before the banner (the greet pause): refused and closed. */
	smtp_session_init(&fc->c, &fc->env);
	assert_int_equal(smtp_session_phase(&fc->c), SMTP_PHASE_PREGREET);
	assert_int_equal(fc_feed(fc, "EHLO x\r\n"), strlen("EHLO x\r\n"));
	assert_string_equal(fc_replies(fc),
			    "554 5.5.0 " HOST " Protocol error: talked before the greeting\r\n");
	assert_int_equal(fc->closes, 1);
	fc_free(fc);

	fc = ready();
	smtp_session_timeout(&fc->c, "421 4.4.2 " HOST " Error: timeout exceeded");
	assert_string_equal(fc_replies(fc), "421 4.4.2 " HOST " Error: timeout exceeded\r\n");
	assert_int_equal(fc->closes, 1);
	assert_int_equal(smtp_session_phase(&fc->c), SMTP_PHASE_QUIT);
	fc_free(fc);
}

static void test_shutdown_after_commit(void **state)
{
	struct fconn *fc = ready();

	(void)state;
	fc_feed(fc, "MAIL FROM:<a@client.example>\r\nRCPT TO:<u@local.example>\r\nDATA\r\n");
	fc_replies(fc);
	fc_feed(fc, "x\r\n.\r\n");
	assert_int_equal(await_durable(fc), 0);
	/* The shard began to stop while the message was being made durable:
	 * the 250 still goes out (the message is ours now), then the 421. */
	fc->stopping = true;
	smtp_session_durable(&fc->c, 0);
	const char *r = fc_replies(fc);
	const char *bye = strstr(r, "\r\n");

	assert_non_null(bye);
	assert_string_equal(bye + 2, "421 4.3.2 " HOST " Service shutting down\r\n");
	assert_int_equal(strncmp(r, "250 2.0.0 Ok: queued as ", 24), 0);
	assert_int_equal(fc->closes, 1);
	fc_free(fc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_ehlo_extensions, spt_teardown),
	    cmocka_unit_test_teardown(test_ehlo_starttls_needs_ctx, spt_teardown),
	    cmocka_unit_test_teardown(test_pipelined_group, spt_teardown),
	    cmocka_unit_test_teardown(test_out_of_sequence, spt_teardown),
	    cmocka_unit_test_teardown(test_bad_syntax_and_error_limit, spt_teardown),
	    cmocka_unit_test_teardown(test_mail_syntax, spt_teardown),
	    cmocka_unit_test_teardown(test_data_commit_order, spt_teardown),
	    cmocka_unit_test_teardown(test_data_commit_failed, spt_teardown),
	    cmocka_unit_test_teardown(test_bdat_chunks, spt_teardown),
	    cmocka_unit_test_teardown(test_bdat_refused, spt_teardown),
	    cmocka_unit_test_teardown(test_bdat_too_big, spt_teardown),
	    cmocka_unit_test_teardown(test_starttls_discards_rest, spt_teardown),
	    cmocka_unit_test_teardown(test_starttls_refusals, spt_teardown),
	    cmocka_unit_test_teardown(test_auth_not_offered_without_tls, spt_teardown),
	    cmocka_unit_test_teardown(test_auth_success, spt_teardown),
	    cmocka_unit_test_teardown(test_auth_failure_delayed, spt_teardown),
	    cmocka_unit_test_teardown(test_auth_login_exchange, spt_teardown),
	    cmocka_unit_test_teardown(test_early_talker_and_timeout, spt_teardown),
	    cmocka_unit_test_teardown(test_tarpit_keeps_the_line, spt_teardown),
	    cmocka_unit_test_teardown(test_shutdown_after_commit, spt_teardown),
	};

	spt_require_io_uring();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
