/* Pins the DSN builder (RFC 3464/6522/6533): notify table, headers, parts, bounds, and a Python email check of each DSN. */
#include <errno.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "mail/dsn.h"
#include "smtp/parse.h"

extern char **environ;

#define NOW_S	  1700000000 /* Tue, 14 Nov 2023 22:13:20 +0000 */
#define ARRIVAL_S 1699999200 /* 22:00:00 */
#define ATTEMPT_S 1699999800 /* 22:10:00 */
#define RETRY_S	  1700432000 /* Sun, 19 Nov 2023 22:13:20 +0000 */
#define NONCE	  0x0123456789abcdefull
#define QID_NUM	  0x1234u
#define QID	  "0000000000001234"
#define STEM	  "=_rmx-" QID "-0123456789abcdef-"
#define PYTHON	  "/usr/bin/python3"
#define SS(lit)	  ((struct spool_str){lit, sizeof lit - 1})

/* ---- fixtures ------------------------------------------------------------ */

static const char orig_msg[] = "Received: from client.example (client.example [192.0.2.1])\r\n"
			       "\tby mx.ringmx.test with ESMTP id 1234\r\n"
			       "From: Alice <alice@example.org>\r\n"
			       "To: bob@example.net\r\n"
			       "Subject: hello\r\n"
			       "Message-ID: <1@example.org>\r\n"
			       "\r\n"
			       "Body line 1\r\n"
			       "--not-a-boundary\r\n"
			       ".leading dot\r\n";
#define ORIG_HDRS_LEN                                                                              \
	(sizeof orig_msg - 1 -                                                                     \
	 (sizeof "\r\nBody line 1\r\n--not-a-boundary\r\n.leading dot\r\n" - 1))

/* Pushes data to the sink in pieces of `piece` octets, as spool_message_read
 * does with its blocks; counts calls so tests can see both passes. */
struct src {
	const char *data;
	size_t len;
	size_t piece;
	int calls;
	int fail; /* != 0: return this instead of reading */
};

static int src_push(void *ctx, spool_body_fn sink, void *sink_ctx)
{
	struct src *s = ctx;

	s->calls++;
	if (s->fail)
		return s->fail;
	for (size_t off = 0; off < s->len;) {
		size_t k = s->len - off < s->piece ? s->len - off : s->piece;
		int rc = sink(sink_ctx, s->data + off, k);
		if (rc != 0)
			return rc;
		off += k;
	}
	return 0;
}

/* Collects the DSN; refuses oversize pieces; can fail on demand. */
struct sinkbuf {
	char *buf;
	size_t len, cap;
	int fail;
	int writes;
};

static int sink_write(void *ctx, const char *p, size_t n)
{
	struct sinkbuf *b = ctx;

	assert_true(n > 0 && n <= DSN_OUT_CHUNK);
	b->writes++;
	if (b->fail)
		return b->fail;
	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		b->buf = realloc(b->buf, b->cap);
		assert_non_null(b->buf);
	}
	memcpy(b->buf + b->len, p, n);
	b->len += n;
	b->buf[b->len] = '\0';
	return 0;
}

struct fx {
	struct spool_rcpt rcpts[8];
	struct spool_env env;
	struct dsn_rcpt_result res[8];
	struct src src;
	struct sinkbuf out;
	struct dsn_params p;
	struct dsn_info info;
};

static void fx_init(struct fx *f, const char *orig, size_t orig_len)
{
	memset(f, 0, sizeof *f);
	f->rcpts[0] = (struct spool_rcpt){.addr = {"bob@example.net", 15},
					  .orcpt = {"rfc822;bob+2Btag@example.net", 28}};
	f->rcpts[1] = (struct spool_rcpt){.addr = {"carol@example.com", 17}};
	f->rcpts[2] = (struct spool_rcpt){.addr = {"dave@example.com", 16}};
	f->rcpts[3] = (struct spool_rcpt){.addr = {"erin@example.com", 16}};
	f->env.id = QID_NUM;
	f->env.arrival_s = ARRIVAL_S;
	f->env.mail_from = (struct spool_str){"alice@example.org", 17};
	f->env.rcpt_count = 4;
	f->env.rcpts = f->rcpts;
	f->src = (struct src){.data = orig, .len = orig_len, .piece = 4096};
	f->p = (struct dsn_params){.reporting_mta = "mx.ringmx.test",
				   .msgid_domain = "ringmx.test",
				   .now_s = NOW_S,
				   .nonce = NONCE,
				   .env = &f->env,
				   .results = f->res,
				   .result_count = 1,
				   .source = src_push,
				   .source_ctx = &f->src,
				   .write = sink_write,
				   .write_ctx = &f->out};
	f->res[0] = (struct dsn_rcpt_result){
	    .rcpt = 0,
	    .action = DSN_ACTION_FAILED,
	    .status = "5.1.1",
	    .diag = {"550 5.1.1 <bob@example.net>: user unknown", 41},
	    .remote_mta = {"mx.example.net", 14},
	    .last_attempt_s = ATTEMPT_S,
	};
}

static void fx_free(struct fx *f)
{
	free(f->out.buf);
	f->out.buf = NULL;
}

/* ---- structure helpers --------------------------------------------------- */

/* Every line ends in CRLF, none is longer than DSN_LINE_MAX, no NUL. */
static void check_lines(const char *m, size_t n)
{
	size_t start = 0;

	assert_true(n >= 2 && m[n - 2] == '\r' && m[n - 1] == '\n');
	for (size_t i = 0; i < n; i++) {
		assert_true(m[i] != '\0');
		if (m[i] == '\r')
			assert_true(i + 1 < n && m[i + 1] == '\n');
		if (m[i] == '\n') {
			assert_true(i > 0 && m[i - 1] == '\r');
			assert_true(i - 1 - start <= DSN_LINE_MAX);
			start = i + 1;
		}
	}
}

/* Body of MIME part idx (1-based) and its length, up to the next delimiter. */
static const char *part_body(const struct fx *f, int idx, size_t *len)
{
	char delim[DSN_BOUNDARY_MAX + 8];
	const char *p = f->out.buf;

	snprintf(delim, sizeof delim, "\r\n--%s", f->info.boundary);
	for (int i = 0; i < idx; i++) {
		p = strstr(p, delim);
		assert_non_null(p);
		p += strlen(delim);
	}
	const char *body = strstr(p, "\r\n\r\n");
	assert_non_null(body);
	body += 4;
	const char *end = strstr(body, delim);
	assert_non_null(end);
	*len = (size_t)(end - body);
	return body;
}

static bool part_has_header(const struct fx *f, int idx, const char *line)
{
	size_t len;
	const char *body = part_body(f, idx, &len);
	char delim[DSN_BOUNDARY_MAX + 8];
	snprintf(delim, sizeof delim, "\r\n--%s", f->info.boundary);
	const char *p = f->out.buf;
	for (int i = 0; i < idx; i++)
		p = strstr(p, delim) + strlen(delim);
	size_t hl = (size_t)(body - p);
	const char *hit = memmem(p, hl, line, strlen(line));
	return hit != NULL && hit[-1] == '\n' && hit[strlen(line)] == '\r';
}

static bool mem_has(const char *m, size_t n, const char *s)
{
	return memmem(m, n, s, strlen(s)) != NULL;
}

static bool has_line(const char *m, size_t n, const char *line)
{
	size_t l = strlen(line);
	for (const char *p = m; (p = memmem(p, n - (size_t)(p - m), line, l)) != NULL; p++)
		if ((p == m || p[-1] == '\n') && p[l] == '\r' && p[l + 1] == '\n')
			return true;
	return false;
}

static void assert_part_equals(const struct fx *f, int idx, const char *want)
{
	size_t len;
	const char *body = part_body(f, idx, &len);
	if (len != strlen(want) || memcmp(body, want, len) != 0) {
		fprintf(stderr, "part %d:\n[%.*s]\nwant:\n[%s]\n", idx, (int)len, body, want);
		fail();
	}
}

/* ---- the Python email check ---------------------------------------------- */

/* argv: dsn file, expected part-3 file, part-2 type, part-3 type (or
 * "none"), then "final|action|status|orig-or-dash" per recipient. */
static const char py_script[] =
    "import sys, email, email.policy\n"
    "dsn = open(sys.argv[1], 'rb').read()\n"
    "third_path, status_ct, third_ct = sys.argv[2], sys.argv[3], sys.argv[4]\n"
    "rcpts = [a.split('|') for a in sys.argv[5:]]\n"
    "pol = email.policy.SMTPUTF8\n"
    "m = email.message_from_bytes(dsn, policy=pol)\n"
    "assert m.is_multipart(), 'not multipart'\n"
    "assert m.get_content_type() == 'multipart/report', m.get_content_type()\n"
    "assert m.get_param('report-type') == 'delivery-status', m.get_param('report-type')\n"
    "assert m['Auto-Submitted'] == 'auto-replied'\n"
    "parts = m.get_payload()\n"
    "assert len(parts) == (2 if third_ct == 'none' else 3), len(parts)\n"
    "assert parts[0].get_content_type() == 'text/plain', parts[0].get_content_type()\n"
    "assert parts[1].get_content_type() == status_ct, parts[1].get_content_type()\n"
    "raw = dsn.split(('\\r\\n--' + m.get_boundary()).encode())\n"
    "assert raw[-1] == b'--\\r\\n', raw[-1][:40]\n"
    "assert len(raw) == len(parts) + 2, len(raw)\n"
    "def body(i):\n"
    "    r = raw[i]\n"
    "    return r[r.index(b'\\r\\n\\r\\n') + 4:]\n"
    "if not status_ct.startswith('message/global'):\n"
    "    body(1).decode('ascii'); body(2).decode('ascii')\n"
    "blocks = body(2)[:-2].split(b'\\r\\n\\r\\n')\n"
    "assert len(blocks) == len(rcpts) + 1, (len(blocks), blocks)\n"
    "msgs = [email.message_from_bytes(x + b'\\r\\n', policy=pol) for x in blocks]\n"
    "assert msgs[0]['Reporting-MTA'] == 'dns; mx.ringmx.test', msgs[0]['Reporting-MTA']\n"
    "if status_ct == 'message/delivery-status':\n"
    "    own = parts[1].get_payload()\n"
    "    assert len(own) == len(msgs), len(own)\n"
    "    for a, b in zip(own, msgs):\n"
    "        assert a['Final-Recipient'] == b['Final-Recipient']\n"
    "for r, x in zip(rcpts, msgs[1:]):\n"
    "    got = [x['Final-Recipient'], x['Action'], x['Status'], x['Original-Recipient'] or '-']\n"
    "    assert got == r, (got, r)\n"
    "    assert x['Diagnostic-Code'] is None or ';' in x['Diagnostic-Code']\n"
    "if third_ct != 'none':\n"
    "    exp = open(third_path, 'rb').read()\n"
    "    assert parts[2].get_content_type() == third_ct, parts[2].get_content_type()\n"
    "    assert body(3) == exp, (body(3)[-60:], exp[-60:])\n"
    "    orig = email.message_from_bytes(exp, policy=pol)\n"
    "    if isinstance(parts[2].get_payload(), list):\n"
    "        sub = parts[2].get_payload()[0]\n"
    "    else:\n"
    "        sub = email.message_from_bytes(parts[2].get_payload(decode=True), policy=pol)\n"
    "    assert sub['Subject'] == orig['Subject'], (sub['Subject'], orig['Subject'])\n"
    "    assert sub['Message-ID'] == orig['Message-ID']\n"
    "print('python email check ok')\n";

static void write_file(char *path, const char *data, size_t n)
{
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, n), (ssize_t)n);
	close(fd);
}

static void py_check(const struct fx *f, const char *third, size_t third_len, const char *status_ct,
		     const char *third_ct, const char *const *rcpts, int nrcpt)
{
	if (access(PYTHON, X_OK) != 0) {
		print_message("python check skipped: %s is missing\n", PYTHON);
		return;
	}
	char dsn_path[] = "/tmp/dsn_build_XXXXXX", exp_path[] = "/tmp/dsn_orig_XXXXXX";
	const char *argv[16] = {PYTHON, "-c", py_script, dsn_path, exp_path, status_ct, third_ct};
	int argc = 7, status = 0;
	pid_t pid;

	assert_true(nrcpt <= 8);
	write_file(dsn_path, f->out.buf, f->out.len);
	write_file(exp_path, third ? third : "", third ? third_len : 0);
	for (int i = 0; i < nrcpt; i++)
		argv[argc++] = rcpts[i];
	argv[argc] = NULL;
	assert_int_equal(posix_spawn(&pid, PYTHON, NULL, NULL, (char *const *)argv, environ), 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "python rejected this DSN (%s):\n%s\n", dsn_path, f->out.buf);
		fail();
	}
	unlink(dsn_path);
	unlink(exp_path);
}

static int build(struct fx *f)
{
	int rc = dsn_build(&f->p, &f->info);
	if (rc == 0) {
		assert_int_equal(f->info.size, f->out.len);
		check_lines(f->out.buf, f->out.len);
	}
	return rc;
}

/* ---- notify decision and null sender ------------------------------------- */

static void notify_table(void **state)
{
	(void)state;
	const uint8_t F = SMTP_NOTIFY_FAILURE, D = SMTP_NOTIFY_DELAY, S = SMTP_NOTIFY_SUCCESS;
	static const enum dsn_action succ[] = {DSN_ACTION_DELIVERED, DSN_ACTION_RELAYED,
					       DSN_ACTION_EXPANDED};

	for (int dd = 0; dd < 2; dd++) {
		/* NEVER: nothing, whatever the operator setting. */
		assert_false(dsn_should_notify(SMTP_NOTIFY_NEVER, DSN_ACTION_FAILED, dd));
		assert_false(dsn_should_notify(SMTP_NOTIFY_NEVER, DSN_ACTION_DELAYED, dd));
		assert_false(dsn_should_notify(SMTP_NOTIFY_NEVER, DSN_ACTION_DELIVERED, dd));
		/* Explicit bits: exactly those, delay_default ignored. */
		assert_true(dsn_should_notify(F, DSN_ACTION_FAILED, dd));
		assert_false(dsn_should_notify(F, DSN_ACTION_DELAYED, dd));
		assert_true(dsn_should_notify(D, DSN_ACTION_DELAYED, dd));
		assert_false(dsn_should_notify(D, DSN_ACTION_FAILED, dd));
		assert_true(dsn_should_notify(F | D, DSN_ACTION_DELAYED, dd));
		for (int i = 0; i < 3; i++) {
			assert_true(dsn_should_notify(S, succ[i], dd));
			assert_false(dsn_should_notify(F | D, succ[i], dd));
			assert_false(dsn_should_notify(0, succ[i], dd));
		}
		assert_false(dsn_should_notify(S, DSN_ACTION_FAILED, dd));
		assert_true(dsn_should_notify(S | F | D, DSN_ACTION_FAILED, dd));
		/* Unspecified: failures always. */
		assert_true(dsn_should_notify(0, DSN_ACTION_FAILED, dd));
	}
	/* Unspecified: delays only when delay notices are on. */
	assert_false(dsn_should_notify(0, DSN_ACTION_DELAYED, false));
	assert_true(dsn_should_notify(0, DSN_ACTION_DELAYED, true));
}

static void null_sender(void **state)
{
	(void)state;
	struct fx f;

	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	assert_true(dsn_needed(&f.env));
	f.env.mail_from = (struct spool_str){"", 0};
	assert_false(dsn_needed(&f.env));
	/* Building one anyway is refused before a byte is written. */
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	assert_int_equal(f.out.writes, 0);
	assert_int_equal(f.src.calls, 0);
	fx_free(&f);
}

/* ---- whole DSNs ---------------------------------------------------------- */

static void failed_hdrs_envid_orcpt(void **state)
{
	(void)state;
	struct fx f;

	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.env.envid = (struct spool_str){"env+2B1", 7};
	/* CR/LF and a control byte from a remote reply, plus a non-ASCII
	 * character that the 7-bit report cannot carry. */
	f.res[0].diag =
	    (struct spool_str){"550 5.1.1 <bob@example.net>:\r\n user\tunknown \xc3\xa9t\x01", 48};
	assert_int_equal(build(&f), 0);
	assert_int_equal(f.src.calls, 2);
	assert_string_equal(f.info.boundary, STEM "0");
	assert_string_equal(f.info.message_id, "<" QID ".1700000000.0123456789abcdef@ringmx.test>");
	assert_false(f.info.smtputf8);
	assert_false(f.info.body_8bit);
	assert_false(f.info.original_full);
	assert_false(f.info.hdrs_truncated);

	static const char top[] =
	    "From: \"Mail Delivery System\" <MAILER-DAEMON@mx.ringmx.test>\r\n"
	    "To: <alice@example.org>\r\n"
	    "Subject: Undelivered Mail Returned to Sender\r\n"
	    "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
	    "Message-ID: <" QID ".1700000000.0123456789abcdef@ringmx.test>\r\n"
	    "Auto-Submitted: auto-replied\r\n"
	    "MIME-Version: 1.0\r\n"
	    "Content-Type: multipart/report; report-type=delivery-status;\r\n"
	    "\tboundary=\"" STEM "0\"\r\n"
	    "\r\n";
	assert_memory_equal(f.out.buf, top, sizeof top - 1);
	assert_true(part_has_header(&f, 1, "Content-Type: text/plain; charset=us-ascii"));
	assert_true(part_has_header(&f, 2, "Content-Type: message/delivery-status"));
	assert_true(part_has_header(&f, 3, "Content-Type: text/rfc822-headers"));
	assert_false(has_line(f.out.buf, f.out.len, "Content-Transfer-Encoding: 8bit"));
	assert_part_equals(&f, 2,
			   "Original-Envelope-Id: env+1\r\n"
			   "Reporting-MTA: dns; mx.ringmx.test\r\n"
			   "Arrival-Date: Tue, 14 Nov 2023 22:00:00 +0000\r\n"
			   "X-Ringmx-Queue-ID: " QID "\r\n"
			   "\r\n"
			   "Original-Recipient: rfc822;bob+tag@example.net\r\n"
			   "Final-Recipient: rfc822;bob@example.net\r\n"
			   "Action: failed\r\n"
			   "Status: 5.1.1\r\n"
			   "Remote-MTA: dns; mx.example.net\r\n"
			   "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: user unknown ?t\r\n"
			   "Last-Attempt-Date: Tue, 14 Nov 2023 22:10:00 +0000\r\n");
	size_t tl;
	const char *text = part_body(&f, 1, &tl);
	assert_true(has_line(text, tl, "<bob@example.net>: failed (5.1.1)"));
	assert_true(has_line(text, tl, "    remote server: mx.example.net"));
	assert_true(has_line(text, tl, "    smtp; 550 5.1.1 <bob@example.net>: user unknown ?t"));
	assert_true(has_line(text, tl, "The header section of the original message is attached."));
	/* RFC 6522: the header section without its blank line. */
	char hdrs[sizeof orig_msg];
	memcpy(hdrs, orig_msg, ORIG_HDRS_LEN);
	hdrs[ORIG_HDRS_LEN] = '\0';
	assert_part_equals(&f, 3, hdrs);

	const char *r[] = {"rfc822;bob@example.net|failed|5.1.1|rfc822;bob+tag@example.net"};
	py_check(&f, hdrs, ORIG_HDRS_LEN, "message/delivery-status", "text/rfc822-headers", r, 1);
	fx_free(&f);
}

static void delayed_full(void **state)
{
	(void)state;
	struct fx f;

	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.env.ret = SMTP_RET_FULL;
	f.res[0] = (struct dsn_rcpt_result){.rcpt = 1,
					    .action = DSN_ACTION_DELAYED,
					    .status = "4.4.1",
					    .diag = SS("connect to mx.example.com: timed out"),
					    .last_attempt_s = ATTEMPT_S,
					    .retry_until_s = RETRY_S};
	f.src.piece = 5; /* lines straddle the pieces */
	assert_int_equal(build(&f), 0);
	assert_true(f.info.original_full);
	assert_true(has_line(f.out.buf, f.out.len, "Subject: Delayed Mail (still being retried)"));
	assert_true(part_has_header(&f, 3, "Content-Type: message/rfc822"));
	assert_null(strstr(f.out.buf, "Original-Envelope-Id"));
	assert_null(strstr(f.out.buf, "Original-Recipient"));
	assert_part_equals(&f, 2,
			   "Reporting-MTA: dns; mx.ringmx.test\r\n"
			   "Arrival-Date: Tue, 14 Nov 2023 22:00:00 +0000\r\n"
			   "X-Ringmx-Queue-ID: " QID "\r\n"
			   "\r\n"
			   "Final-Recipient: rfc822;carol@example.com\r\n"
			   "Action: delayed\r\n"
			   "Status: 4.4.1\r\n"
			   "Diagnostic-Code: X-ringmx; connect to mx.example.com: timed out\r\n"
			   "Last-Attempt-Date: Tue, 14 Nov 2023 22:10:00 +0000\r\n"
			   "Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000\r\n");
	assert_part_equals(&f, 3, orig_msg);
	size_t tl;
	const char *text = part_body(&f, 1, &tl);
	assert_true(
	    has_line(text, tl, "    will be retried until: Sun, 19 Nov 2023 22:13:20 +0000"));
	assert_true(has_line(text, tl, "The original message is attached."));

	const char *r[] = {"rfc822;carol@example.com|delayed|4.4.1|-"};
	py_check(&f, orig_msg, sizeof orig_msg - 1, "message/delivery-status", "message/rfc822", r,
		 1);
	fx_free(&f);
}

/* Three outcomes in one report, recipients read from a decoded envelope. */
static void mixed_decoded_env(void **state)
{
	(void)state;
	struct fx f;
	uint8_t enc[4096];
	struct spool_env dec;

	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.env.ret = SMTP_RET_HDRS;
	size_t n = spool_env_encode(&f.env, enc, sizeof enc);
	assert_true(n > 0);
	assert_int_equal(spool_env_decode(enc, n, &dec), 0);
	assert_null(dec.rcpts);
	f.p.env = &dec;
	f.res[1] = (struct dsn_rcpt_result){.rcpt = 3,
					    .action = DSN_ACTION_DELAYED,
					    .status = "4.2.2",
					    .diag = SS("x-unix; mailbox full")};
	f.res[2] = (struct dsn_rcpt_result){.rcpt = 2,
					    .action = DSN_ACTION_RELAYED,
					    .status = "2.0.0",
					    .remote_mta = SS("old.example.com")};
	f.p.result_count = 3;
	assert_int_equal(build(&f), 0);
	assert_true(has_line(f.out.buf, f.out.len, "Subject: Undelivered Mail Returned to Sender"));
	size_t sl;
	const char *st = part_body(&f, 2, &sl);
	assert_true(mem_has(st, sl,
			    "\r\n\r\nFinal-Recipient: rfc822;erin@example.com\r\n"
			    "Action: delayed\r\nStatus: 4.2.2\r\n"
			    "Diagnostic-Code: x-unix; mailbox full\r\n\r\n"));
	/* The last block: ends the part, no trailing blank line. */
	assert_true(mem_has(st, sl,
			    "\r\n\r\nFinal-Recipient: rfc822;dave@example.com\r\n"
			    "Action: relayed\r\nStatus: 2.0.0\r\n"
			    "Remote-MTA: dns; old.example.com\r\n"));
	assert_memory_equal(st + sl - 34, "Remote-MTA: dns; old.example.com\r\n", 34);
	size_t tl;
	const char *text = part_body(&f, 1, &tl);
	assert_true(has_line(text, tl, "<erin@example.com>: delayed (4.2.2)"));
	assert_true(has_line(text, tl, "<dave@example.com>: relayed (2.0.0)"));
	assert_true(mem_has(text, tl, "given up"));
	assert_true(mem_has(text, tl, "still trying"));
	assert_true(mem_has(text, tl, "passed on"));

	const char *r[] = {"rfc822;bob@example.net|failed|5.1.1|rfc822;bob+tag@example.net",
			   "rfc822;erin@example.com|delayed|4.2.2|-",
			   "rfc822;dave@example.com|relayed|2.0.0|-"};
	py_check(&f, orig_msg, ORIG_HDRS_LEN, "message/delivery-status", "text/rfc822-headers", r,
		 3);
	fx_free(&f);
}

/* Stored in DATA wire form: the DSN carries the message, not the wire. */
static void dot_stuffed_original(void **state)
{
	(void)state;
	static const char stuffed[] = "Subject: dots\r\n"
				      "Message-ID: <dots@example.org>\r\n"
				      "\r\n"
				      "..leading dot\r\n"
				      "...two\r\n"
				      "a.b\r\n"
				      "..\r\n"
				      "end\r\n";
	static const char plain[] = "Subject: dots\r\n"
				    "Message-ID: <dots@example.org>\r\n"
				    "\r\n"
				    ".leading dot\r\n"
				    "..two\r\n"
				    "a.b\r\n"
				    ".\r\n"
				    "end\r\n";
	static const size_t pieces[] = {1, 2, 3, 17, 4096};

	for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
		struct fx f;
		fx_init(&f, stuffed, sizeof stuffed - 1);
		f.env.flags = SPOOL_ENV_STUFFED;
		f.env.ret = SMTP_RET_FULL;
		f.src.piece = pieces[i];
		assert_int_equal(build(&f), 0);
		assert_part_equals(&f, 3, plain);
		if (i == 0) {
			const char *r[] = {
			    "rfc822;bob@example.net|failed|5.1.1|rfc822;bob+tag@example.net"};
			py_check(&f, plain, sizeof plain - 1, "message/delivery-status",
				 "message/rfc822", r, 1);
		}
		fx_free(&f);
	}
}

/* RFC 6533: the internationalized form. */
static void smtputf8_original(void **state)
{
	(void)state;
	static const char u8msg[] = "From: J\xc3\xb6rg <j\xc3\xb6rg@b\xc3\xbc"
				    "cher.example>\r\n"
				    "To: z\xc3\xbc+x@m\xc3\xbc"
				    "nchen.example\r\n"
				    "Subject: Gr\xc3\xbc\xc3\x9f"
				    "e\r\n"
				    "Message-ID: <u8@example.org>\r\n"
				    "\r\n"
				    "K\xc3\xa4se\r\n";
	struct fx f;

	fx_init(&f, u8msg, sizeof u8msg - 1);
	f.env.flags = SPOOL_ENV_SMTPUTF8 | SPOOL_ENV_8BIT;
	f.env.ret = SMTP_RET_FULL;
	f.env.mail_from = SS("j\xc3\xb6rg@b\xc3\xbc"
			     "cher.example");
	f.rcpts[1].addr = SS("z\xc3\xbc+x@m\xc3\xbc"
			     "nchen.example");
	f.res[0] = (struct dsn_rcpt_result){
	    .rcpt = 1,
	    .action = DSN_ACTION_FAILED,
	    .status = "5.2.2",
	    .diag = SS("smtp; 552 5.2.2 Postfach voll \xe2\x80\x93 M\xc3\xbcller \xff")};
	f.res[1] = f.res[0];
	f.res[1].rcpt = 2;
	f.res[1].status = "5.1.1";
	f.res[1].diag = (struct spool_str){0};
	f.p.result_count = 2;
	assert_int_equal(build(&f), 0);
	assert_true(f.info.smtputf8);
	assert_true(f.info.body_8bit);
	assert_true(has_line(f.out.buf, f.out.len,
			     "To: <j\xc3\xb6rg@b\xc3\xbc"
			     "cher.example>"));
	assert_true(has_line(f.out.buf, f.out.len, "Content-Transfer-Encoding: 8bit"));
	assert_true(part_has_header(&f, 1, "Content-Type: text/plain; charset=utf-8"));
	assert_true(part_has_header(&f, 2, "Content-Type: message/global-delivery-status"));
	assert_true(part_has_header(&f, 2, "Content-Transfer-Encoding: 8bit"));
	assert_true(part_has_header(&f, 3, "Content-Type: message/global"));
	size_t sl;
	const char *st = part_body(&f, 2, &sl);
	/* utf-8-addr-unitext: '+' travels as \x{2B}; valid UTF-8 stays, a
	 * stray 0xff becomes '?'. */
	assert_true(has_line(st, sl,
			     "Final-Recipient: utf-8;z\xc3\xbc\\x{2B}x@m\xc3\xbc"
			     "nchen.example"));
	assert_true(has_line(st, sl, "Final-Recipient: rfc822;dave@example.com"));
	assert_true(has_line(st, sl,
			     "Diagnostic-Code: smtp; 552 5.2.2 Postfach voll \xe2\x80\x93 "
			     "M\xc3\xbcller ?"));
	assert_part_equals(&f, 3, u8msg);

	const char *r[] = {"utf-8;z\xc3\xbc\\x{2B}x@m\xc3\xbcnchen.example|failed|5.2.2|-",
			   "rfc822;dave@example.com|failed|5.1.1|-"};
	py_check(&f, u8msg, sizeof u8msg - 1, "message/global-delivery-status", "message/global", r,
		 2);

	/* Headers only: message/global-headers. */
	fx_free(&f);
	fx_init(&f, u8msg, sizeof u8msg - 1);
	f.env.flags = SPOOL_ENV_SMTPUTF8;
	assert_int_equal(build(&f), 0);
	assert_true(part_has_header(&f, 3, "Content-Type: message/global-headers"));
	fx_free(&f);
}

/* A non-SMTPUTF8 message with 8-bit content: part 3 and the whole say 8bit. */
static void eightbit_original(void **state)
{
	(void)state;
	static const char m8[] = "Subject: caf\xe9\r\nMessage-ID: <8@x>\r\n\r\nbody\r\n";
	struct fx f;

	fx_init(&f, m8, sizeof m8 - 1);
	assert_int_equal(build(&f), 0);
	assert_false(f.info.smtputf8);
	assert_true(f.info.body_8bit);
	assert_true(part_has_header(&f, 3, "Content-Type: text/rfc822-headers"));
	assert_true(part_has_header(&f, 3, "Content-Transfer-Encoding: 8bit"));
	assert_false(part_has_header(&f, 2, "Content-Transfer-Encoding: 8bit"));
	fx_free(&f);
	/* ...but 8-bit octets only in the body do not matter for RET=HDRS. */
	static const char b8[] = "Subject: x\r\n\r\ncaf\xe9\r\n";
	fx_init(&f, b8, sizeof b8 - 1);
	assert_int_equal(build(&f), 0);
	assert_false(f.info.body_8bit);
	assert_int_equal(f.src.calls, 2);
	fx_free(&f);
}

static void no_source(void **state)
{
	(void)state;
	struct fx f;

	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.p.source = NULL;
	assert_int_equal(build(&f), 0);
	assert_null(strstr(f.out.buf, "rfc822-headers"));
	assert_true(has_line(f.out.buf, f.out.len,
			     "The original message could not be read, so it is not attached."));
	const char *r[] = {"rfc822;bob@example.net|failed|5.1.1|rfc822;bob+tag@example.net"};
	py_check(&f, NULL, 0, "message/delivery-status", "none", r, 1);
	fx_free(&f);
}

/* ---- boundary ------------------------------------------------------------ */

static void boundary_avoids_content(void **state)
{
	(void)state;
	static const char m[] = "Subject: b\r\nMessage-ID: <b@x>\r\n\r\n"
				"--" STEM "0\r\n"
				"--" STEM "1--\r\n"
				"--" STEM "\r\n"   /* the stem alone takes nothing */
				" --" STEM "2\r\n" /* not at line start */
				"x--" STEM "3\r\n";
	struct fx f;

	fx_init(&f, m, sizeof m - 1);
	f.env.ret = SMTP_RET_FULL;
	assert_int_equal(build(&f), 0);
	assert_string_equal(f.info.boundary, STEM "2");
	assert_part_equals(&f, 3, m);
	const char *r[] = {"rfc822;bob@example.net|failed|5.1.1|rfc822;bob+tag@example.net"};
	py_check(&f, m, sizeof m - 1, "message/delivery-status", "message/rfc822", r, 1);
	fx_free(&f);

	/* RET=HDRS: only the embedded header section counts. */
	fx_init(&f, m, sizeof m - 1);
	assert_int_equal(build(&f), 0);
	assert_string_equal(f.info.boundary, STEM "0");
	fx_free(&f);
}

static void boundary_all_taken(void **state)
{
	(void)state;
	static const char alpha[] = "0123456789abcdefghijklmnopqrstuvwxyz";
	char m[4096];
	size_t n = (size_t)snprintf(m, sizeof m, "Subject: b\r\n\r\n");
	struct fx f;

	for (size_t i = 0; i < sizeof alpha - 1; i++)
		n += (size_t)snprintf(m + n, sizeof m - n, "--" STEM "%c\r\n", alpha[i]);
	fx_init(&f, m, n);
	f.env.ret = SMTP_RET_FULL;
	assert_int_equal(dsn_build(&f.p, &f.info), -EEXIST);
	assert_int_equal(f.out.writes, 0);
	/* A new nonce makes a new stem: the caller's retry succeeds. */
	f.p.nonce = 42;
	assert_int_equal(build(&f), 0);
	fx_free(&f);
}

/* ---- bounds -------------------------------------------------------------- */

static void bound_diag(void **state)
{
	(void)state;
	static char big[5000];
	struct fx f;

	/* Words: cut at DSN_DIAG_MAX with the marker, folded at spaces. */
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = i % 10 == 9 ? ' ' : (char)('a' + i % 26);
	memcpy(big, "550 ", 4);
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.res[0].diag = (struct spool_str){big, sizeof big};
	assert_int_equal(build(&f), 0);
	size_t sl;
	const char *st = part_body(&f, 2, &sl);
	const char *dc = memmem(st, sl, "Diagnostic-Code: smtp; 550 ", 27);
	assert_non_null(dc);
	const char *end = memmem(dc, sl - (size_t)(dc - st), "\r\nLast-Attempt-Date", 19);
	assert_non_null(end);
	size_t value = 0, lines = 1;
	for (const char *p = dc + 17; p < end; p++) {
		if (p[0] == '\r') {
			assert_true(p[1] == '\n' && p[2] == ' ');
			p += 2, lines++;
			continue;
		}
		value++;
	}
	/* "smtp; " + DSN_DIAG_MAX at most, folded near DSN_FOLD_COL. */
	assert_true(value <= DSN_DIAG_MAX + 6);
	assert_true(value > DSN_DIAG_MAX - 64);
	assert_true(lines >= DSN_DIAG_MAX / DSN_FOLD_COL);
	assert_memory_equal(end - 6, DSN_DIAG_CUT, 6);
	fx_free(&f);

	/* One word longer than a line: split so no line passes 998. */
	memset(big, 'x', sizeof big);
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.res[0].diag = (struct spool_str){big, sizeof big};
	assert_int_equal(build(&f), 0); /* check_lines() holds the 998 bound */
	assert_non_null(strstr(f.out.buf, "Diagnostic-Code: X-ringmx;\r\n xxx"));
	const char *r[] = {"rfc822;bob@example.net|failed|5.1.1|rfc822;bob+tag@example.net"};
	py_check(&f, orig_msg, ORIG_HDRS_LEN, "message/delivery-status", "text/rfc822-headers", r,
		 1);
	fx_free(&f);

	/* Exactly DSN_DIAG_MAX octets: kept whole. */
	memset(big, 'y', DSN_DIAG_MAX);
	memcpy(big, "x-t; ", 5);
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.res[0].diag = (struct spool_str){big, DSN_DIAG_MAX};
	assert_int_equal(build(&f), 0);
	assert_null(strstr(f.out.buf, DSN_DIAG_CUT));
	fx_free(&f);
}

static void bound_rcpts(void **state)
{
	(void)state;
	struct fx f;
	struct dsn_rcpt_result *many = calloc(DSN_RCPT_MAX + 1, sizeof *many);

	assert_non_null(many);
	for (uint32_t i = 0; i <= DSN_RCPT_MAX; i++)
		many[i] = (struct dsn_rcpt_result){
		    .rcpt = i % 4, .action = DSN_ACTION_FAILED, .status = "5.0.0"};
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.p.results = many;
	f.p.result_count = DSN_RCPT_MAX + 1;
	assert_int_equal(dsn_build(&f.p, &f.info), -E2BIG);
	assert_int_equal(f.out.writes, 0);
	f.p.result_count = DSN_RCPT_MAX;
	assert_int_equal(build(&f), 0);
	size_t sl, blocks = 0;
	const char *st = part_body(&f, 2, &sl);
	for (const char *p = st; (p = memmem(p, sl - (size_t)(p - st), "\r\n\r\n", 4)); p += 4)
		blocks++;
	assert_int_equal(blocks, DSN_RCPT_MAX);
	fx_free(&f);
	free(many);
}

/* Header section of n octets: lines of 100 octets, then a body. */
static char *make_headers(size_t n_lines, size_t *len)
{
	size_t cap = n_lines * 100 + 64;
	char *m = malloc(cap);
	size_t k = 0;

	assert_non_null(m);
	k += (size_t)snprintf(m, cap, "Subject: big\r\nMessage-ID: <big@x>\r\n");
	for (size_t i = 0; i < n_lines; i++) {
		size_t w = (size_t)snprintf(m + k, cap - k, "X-Pad-%06zu: ", i);
		k += w;
		memset(m + k, 'p', 100 - w - 2);
		k += 100 - w - 2;
		m[k++] = '\r', m[k++] = '\n';
	}
	k += (size_t)snprintf(m + k, cap - k, "\r\nbody\r\n");
	*len = k;
	return m;
}

/* A header section of exactly hdr_len octets in lines of at most 100,
 * then the blank line and a body. */
static char *make_exact(size_t hdr_len, size_t *len)
{
	char *m = malloc(hdr_len + 16);
	size_t k = 0;

	assert_non_null(m);
	while (k < hdr_len) {
		size_t left = hdr_len - k, n = left > 200 ? 100 : left;
		if (left > 100 && left <= 200)
			n = left / 2;
		assert_true(n >= 8);
		memcpy(m + k, "X-P: ", 5);
		memset(m + k + 5, 'q', n - 7);
		memcpy(m + k + n - 2, "\r\n", 2);
		k += n;
	}
	memcpy(m + k, "\r\nbody\r\n", 8);
	*len = k + 8;
	return m;
}

static void bound_hdrs(void **state)
{
	(void)state;
	struct fx f;
	size_t len;
	char *m = make_headers(1000, &len); /* ~100 KB of headers */

	fx_init(&f, m, len);
	f.src.piece = 1000;
	assert_int_equal(build(&f), 0);
	assert_true(f.info.hdrs_truncated);
	size_t bl;
	const char *body = part_body(&f, 3, &bl);
	assert_true(bl <= DSN_HDRS_MAX && bl > DSN_HDRS_MAX - 100);
	assert_memory_equal(body, m, bl);			   /* a prefix of the original... */
	assert_true(body[bl - 2] == '\r' && body[bl - 1] == '\n'); /* ...cut at a line end */
	size_t tl;
	const char *text = part_body(&f, 1, &tl);
	assert_true(mem_has(text, tl, "longer than 65536 octets"));
	const char *r[] = {"rfc822;bob@example.net|failed|5.1.1|rfc822;bob+tag@example.net"};
	py_check(&f, body, bl, "message/delivery-status", "text/rfc822-headers", r, 1);
	fx_free(&f);
	free(m);

	/* Exactly DSN_HDRS_MAX octets of headers: all of it, no note. */
	m = make_exact(DSN_HDRS_MAX, &len);
	fx_init(&f, m, len);
	assert_int_equal(build(&f), 0);
	assert_false(f.info.hdrs_truncated);
	part_body(&f, 3, &bl);
	assert_int_equal(bl, DSN_HDRS_MAX);
	fx_free(&f);
	free(m);
	/* One octet more: cut at the last line end before the bound. */
	m = make_exact(DSN_HDRS_MAX + 1, &len);
	fx_init(&f, m, len);
	assert_int_equal(build(&f), 0);
	assert_true(f.info.hdrs_truncated);
	body = part_body(&f, 3, &bl);
	assert_true(bl < DSN_HDRS_MAX && bl > DSN_HDRS_MAX - 200);
	assert_memory_equal(body, m, bl);
	fx_free(&f);
	free(m);

	char *x = malloc(DSN_HDRS_MAX + 32);
	assert_non_null(x);
	/* One line running past the bound, and no blank line at all: cut to
	 * the lines before it, with the note. */
	memset(x, 'h', DSN_HDRS_MAX + 1);
	memcpy(x, "Subject: s\r\nX-Long: ", 20);
	memcpy(x + DSN_HDRS_MAX + 1, "\r\n", 2);
	fx_init(&f, x, DSN_HDRS_MAX + 3);
	assert_int_equal(build(&f), 0);
	assert_true(f.info.hdrs_truncated);
	part_body(&f, 3, &bl);
	assert_int_equal(bl, 12);
	fx_free(&f);
	free(x);
}

/* ---- refusals and errors ------------------------------------------------- */

static void params_refused(void **state)
{
	(void)state;
	static const char *const bad_status[] = {"5.1",	 "6.0.0", "5.1.1x", "5.1000.1", "5..1",
						 "5.1.", "",	  "2.0.0",  "x.1.1",	"51.1.1"};
	struct fx f;

	for (size_t i = 0; i < sizeof bad_status / sizeof bad_status[0]; i++) {
		fx_init(&f, orig_msg, sizeof orig_msg - 1);
		f.res[0].status = bad_status[i];
		assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	}
	/* Class and action must agree; a failure may carry 4.x.x (expired). */
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.res[0].action = DSN_ACTION_DELAYED;
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	f.res[0].action = DSN_ACTION_FAILED;
	f.res[0].status = "4.4.7";
	assert_int_equal(build(&f), 0);
	fx_free(&f);
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.res[0].action = DSN_ACTION_DELIVERED;
	f.res[0].status = "5.0.0";
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	f.res[0].action = (enum dsn_action)99;
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.res[0].rcpt = 4;
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.p.reporting_mta = "bad host";
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	f.p.reporting_mta = "";
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	f.p.reporting_mta = "mx>evil";
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.p.msgid_domain = NULL;
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.p.now_s = 0;
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.p.result_count = 0;
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.rcpts[0].addr = (struct spool_str){"a\r\nBcc: x@y", 11};
	assert_int_equal(dsn_build(&f.p, &f.info), -EINVAL);
	assert_int_equal(f.out.writes, 0);
}

static void io_errors(void **state)
{
	(void)state;
	struct fx f;

	/* Write errors come back as they are. */
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.out.fail = -ENOSPC;
	assert_int_equal(dsn_build(&f.p, &f.info), -ENOSPC);
	/* A source error in pass 1 comes back before any output. */
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.src.fail = -EIO;
	assert_int_equal(dsn_build(&f.p, &f.info), -EIO);
	assert_int_equal(f.out.writes, 0);
	/* A source inventing a positive code is an I/O error too. */
	f.src.fail = 7;
	assert_int_equal(dsn_build(&f.p, &f.info), -EIO);
}

/* Remote MTA names and ORCPT values are the world's: cleaned, not trusted. */
static void hostile_fields(void **state)
{
	(void)state;
	struct fx f;

	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.res[0].remote_mta = (struct spool_str){"mx\r\nX: y", 8};
	f.rcpts[0].orcpt = (struct spool_str){"rfc822;a+0D+0ABcc:+20x@y", 24};
	f.env.envid = (struct spool_str){"bad envid", 9}; /* not xtext: left out */
	assert_int_equal(build(&f), 0);
	assert_true(has_line(f.out.buf, f.out.len, "Remote-MTA: dns; mx??X:?y"));
	assert_true(has_line(f.out.buf, f.out.len, "Original-Recipient: rfc822;a+0D+0ABcc:+20x@y"));
	assert_null(strstr(f.out.buf, "Original-Envelope-Id"));
	assert_null(strstr(f.out.buf, "\r\nBcc"));
	fx_free(&f);
	/* An ENVID that decodes to CR LF, a NUL or 8-bit octets is shown as
	 * the sender gave it: visible ASCII, no field can be injected. */
	static const char *const raw_envids[] = {"e+0D+0ABcc:+20x@y", "e+00", "e+C3+A9", "e+7F"};
	for (size_t i = 0; i < sizeof raw_envids / sizeof raw_envids[0]; i++) {
		char want[128];
		fx_init(&f, orig_msg, sizeof orig_msg - 1);
		f.env.envid = (struct spool_str){raw_envids[i], (uint32_t)strlen(raw_envids[i])};
		assert_int_equal(build(&f), 0);
		snprintf(want, sizeof want, "Original-Envelope-Id: %s", raw_envids[i]);
		assert_true(has_line(f.out.buf, f.out.len, want));
		assert_null(strstr(f.out.buf, "\r\nBcc"));
		fx_free(&f);
	}
	/* utf-8 ORCPT is reported as given (RFC 6533 3). */
	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.rcpts[0].orcpt = (struct spool_str){"utf-8;j\\x{F6}rg@x", 17};
	assert_int_equal(build(&f), 0);
	assert_true(has_line(f.out.buf, f.out.len, "Original-Recipient: utf-8;j\\x{F6}rg@x"));
	fx_free(&f);
}

/* RFC 3464 2.2.1, 2.3.1: ENVID and ORCPT are shown xtext-decoded, as
 * deployed MTAs (Postfix) show them. */
static void xtext_decoded(void **state)
{
	(void)state;
	static const struct {
		const char *envid, *envid_shown, *orcpt, *orcpt_shown;
	} cases[] = {
	    {"ENV-1a+2Bx", "ENV-1a+x", "rfc822;orig+2Btag@example.net",
	     "rfc822;orig+tag@example.net"},
	    {"a+3Db+20c", "a=b c", "RFC822;x+3Dy+20z@example.net", "RFC822;x=y z@example.net"},
	    {"plain.id-42", "plain.id-42", "rfc822;bob@example.net", "rfc822;bob@example.net"},
	    /* lower-case hex is not xtext (RFC 3461 4): shown as given */
	    {"x+2b", NULL, "rfc822;a+2bb@example.net", "rfc822;a+2bb@example.net"},
	};
	struct fx f;

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char want[256];
		fx_init(&f, orig_msg, sizeof orig_msg - 1);
		f.env.envid = (struct spool_str){cases[i].envid, (uint32_t)strlen(cases[i].envid)};
		f.rcpts[0].orcpt =
		    (struct spool_str){cases[i].orcpt, (uint32_t)strlen(cases[i].orcpt)};
		assert_int_equal(build(&f), 0);
		if (cases[i].envid_shown) {
			snprintf(want, sizeof want, "Original-Envelope-Id: %s",
				 cases[i].envid_shown);
			assert_true(has_line(f.out.buf, f.out.len, want));
		} else {
			assert_null(strstr(f.out.buf, "Original-Envelope-Id"));
		}
		snprintf(want, sizeof want, "Original-Recipient: %s", cases[i].orcpt_shown);
		assert_true(has_line(f.out.buf, f.out.len, want));
		fx_free(&f);
	}
}

static void bounce_envelope(void **state)
{
	(void)state;
	struct fx f;
	struct spool_env be;
	struct spool_rcpt br;

	fx_init(&f, orig_msg, sizeof orig_msg - 1);
	f.info = (struct dsn_info){.smtputf8 = true, .body_8bit = true};
	dsn_bounce_env(&f.env, &f.info, &be, &br);
	assert_int_equal(be.mail_from.len, 0);
	assert_false(dsn_needed(&be)); /* a bounce of the bounce is never made */
	assert_int_equal(be.rcpt_count, 1);
	assert_ptr_equal(be.rcpts, &br);
	assert_memory_equal(br.addr.ptr, "alice@example.org", 17);
	assert_int_equal(br.notify, SMTP_NOTIFY_NEVER);
	assert_int_equal(be.flags, SPOOL_ENV_SMTPUTF8 | SPOOL_ENV_8BIT | SPOOL_ENV_HDR_ASCII);
	assert_int_equal(be.body_type, SMTP_BODY_8BITMIME);
	assert_string_equal(DSN_MAIL_FROM, "");
	/* A non-ASCII sender is in the DSN's To: and envelope: it needs SMTPUTF8. */
	f.env.mail_from = (struct spool_str){"j\xc3\xb6rg@example.org", 17};
	dsn_bounce_env(&f.env, &f.info, &be, &br);
	assert_int_equal(be.flags, SPOOL_ENV_SMTPUTF8 | SPOOL_ENV_8BIT);
	fx_free(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(notify_table),
	    cmocka_unit_test(null_sender),
	    cmocka_unit_test(failed_hdrs_envid_orcpt),
	    cmocka_unit_test(delayed_full),
	    cmocka_unit_test(mixed_decoded_env),
	    cmocka_unit_test(dot_stuffed_original),
	    cmocka_unit_test(smtputf8_original),
	    cmocka_unit_test(eightbit_original),
	    cmocka_unit_test(no_source),
	    cmocka_unit_test(boundary_avoids_content),
	    cmocka_unit_test(boundary_all_taken),
	    cmocka_unit_test(bound_diag),
	    cmocka_unit_test(bound_rcpts),
	    cmocka_unit_test(bound_hdrs),
	    cmocka_unit_test(params_refused),
	    cmocka_unit_test(io_errors),
	    cmocka_unit_test(hostile_fields),
	    cmocka_unit_test(xtext_decoded),
	    cmocka_unit_test(bounce_envelope),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
