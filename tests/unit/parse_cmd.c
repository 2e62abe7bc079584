/* Pins smtp_cmd_parse: every verb, RFC 5321 path grammar, ESMTP parameters, bounds and replies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "smtp/parse.h"

static struct smtp_cmd cmd;
static char line[2048];

static int parse(const char *s)
{
	/* Copy so that a slice pointing past the text would be caught by ASan
	 * only if it left the line; and so slices can be checked against it. */
	size_t n = strlen(s);
	assert_true(n < sizeof line);
	memcpy(line, s, n);
	int rc = smtp_cmd_parse(line, n, &cmd);
	if (cmd.arg.len > 0) {
		assert_true(cmd.arg.ptr >= line && cmd.arg.ptr + cmd.arg.len <= line + n);
	}
	return rc;
}

#define OK(s)                                                                                      \
	do {                                                                                       \
		int rc_ = parse(s);                                                                \
		if (rc_ != SMTP_PARSE_OK)                                                          \
			print_error("unexpected refusal of \"%s\": %s\n", s, cmd.reply);           \
		assert_int_equal(rc_, SMTP_PARSE_OK);                                              \
		assert_null(cmd.reply);                                                            \
	} while (0)

#define BAD(s, r)                                                                                  \
	do {                                                                                       \
		int rc_ = parse(s);                                                                \
		if (rc_ != SMTP_PARSE_INVALID)                                                     \
			print_error("unexpected acceptance of \"%s\"\n", s);                       \
		assert_int_equal(rc_, SMTP_PARSE_INVALID);                                         \
		assert_string_equal(cmd.reply, r);                                                 \
	} while (0)

#define SLICE(sl, want)                                                                            \
	do {                                                                                       \
		assert_int_equal((sl).len, strlen(want));                                          \
		assert_memory_equal((sl).ptr, want, strlen(want));                                 \
	} while (0)

#define EMPTY(sl) assert_int_equal((sl).len, 0)

static const char R_UNREC[] = "500 5.5.2 Command unrecognized";
static const char R_MAIL_SYN[] = "501 5.5.4 Syntax: MAIL FROM:<address>";
static const char R_RCPT_SYN[] = "501 5.5.4 Syntax: RCPT TO:<address>";
static const char R_MAIL_BAD[] = "501 5.1.7 Bad sender address syntax";
static const char R_RCPT_BAD[] = "501 5.1.3 Bad recipient address syntax";
static const char R_PARAM_SYN[] = "501 5.5.4 Syntax error in parameters";
static const char R_UNSUPP[] = "555 5.5.4 Unsupported parameter";
static const char R_DUP[] = "501 5.5.4 Duplicate parameter";
static const char R_BAD_DOMAIN[] = "501 5.5.4 Invalid domain name";

/* A syntactically valid domain of exactly n octets. */
static const char *domain_of(size_t n)
{
	static char buf[600];
	assert_true(n < sizeof buf);
	for (size_t i = 0; i < n; i++)
		buf[i] = (i % 50 == 49 && i != n - 1) ? '.' : 'a';
	buf[n] = '\0';
	return buf;
}

static const char *repeat(char c, size_t n)
{
	static char buf[600];
	assert_true(n < sizeof buf);
	memset(buf, c, n);
	buf[n] = '\0';
	return buf;
}

static void test_unknown_verbs(void **state)
{
	(void)state;
	BAD("", R_UNREC);
	BAD(" ", R_UNREC);
	BAD("FOO", R_UNREC);
	BAD("MAILX FROM:<>", R_UNREC);
	BAD("DAT", R_UNREC);
	BAD("DATAX", R_UNREC);
	BAD(" DATA", R_UNREC);
	BAD("MAIL:FROM:<>", R_UNREC);
	BAD("STARTTLSX", R_UNREC);
	BAD("\xc3\xa9HLO x", R_UNREC);
	assert_int_equal(cmd.verb, SMTP_VERB_UNKNOWN);
}

/* The line framer refuses these first; the parser does not rely on it. */
static void test_defensive_octets(void **state)
{
	(void)state;
	assert_int_equal(smtp_cmd_parse("NOOP a\rb", 8, &cmd), SMTP_PARSE_INVALID);
	assert_string_equal(cmd.reply, "500 5.5.2 Invalid octet in command");
	assert_int_equal(smtp_cmd_parse("NOOP\n", 5, &cmd), SMTP_PARSE_INVALID);
	assert_int_equal(smtp_cmd_parse("NOOP\0", 5, &cmd), SMTP_PARSE_INVALID);
	assert_int_equal(smtp_cmd_parse(NULL, 0, &cmd), SMTP_PARSE_INVALID);
	assert_string_equal(cmd.reply, R_UNREC);
	/* A length no slice could describe is refused before any byte is
	 * read (the buffer here is far shorter than the length claimed). */
	assert_int_equal(smtp_cmd_parse("NOOP", (size_t)UINT32_MAX + 1, &cmd), SMTP_PARSE_INVALID);
	assert_string_equal(cmd.reply, "500 5.5.2 Line too long");
}

static void test_no_argument_verbs(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		enum smtp_verb verb;
	} v[] = {
	    {"DATA", SMTP_VERB_DATA},
	    {"RSET", SMTP_VERB_RSET},
	    {"QUIT", SMTP_VERB_QUIT},
	    {"STARTTLS", SMTP_VERB_STARTTLS},
	};
	char buf[64], reply[64];
	for (size_t i = 0; i < 4; i++) {
		OK(v[i].name);
		assert_int_equal(cmd.verb, v[i].verb);
		EMPTY(cmd.arg);
		/* Trailing spaces are tolerated, an argument is not. */
		snprintf(buf, sizeof buf, "%s  ", v[i].name);
		OK(buf);
		snprintf(buf, sizeof buf, "%s x", v[i].name);
		snprintf(reply, sizeof reply, "501 5.5.4 Syntax: %s", v[i].name);
		BAD(buf, reply);
		assert_int_equal(cmd.verb, v[i].verb);
	}
	OK("data");
	assert_int_equal(cmd.verb, SMTP_VERB_DATA);
	OK("qUiT");
	OK("StartTLS");
	assert_int_equal(cmd.verb, SMTP_VERB_STARTTLS);
}

static void test_optional_and_required_args(void **state)
{
	(void)state;
	OK("NOOP");
	assert_int_equal(cmd.verb, SMTP_VERB_NOOP);
	OK("NOOP anything at all");
	SLICE(cmd.arg, "anything at all");
	OK("HELP");
	assert_int_equal(cmd.verb, SMTP_VERB_HELP);
	EMPTY(cmd.arg);
	OK("help MAIL");
	SLICE(cmd.arg, "MAIL");

	OK("VRFY postmaster");
	assert_int_equal(cmd.verb, SMTP_VERB_VRFY);
	SLICE(cmd.arg, "postmaster");
	BAD("VRFY", "501 5.5.4 Syntax: VRFY address");
	BAD("VRFY   ", "501 5.5.4 Syntax: VRFY address");
	OK("EXPN staff");
	assert_int_equal(cmd.verb, SMTP_VERB_EXPN);
	SLICE(cmd.arg, "staff");
	BAD("EXPN", "501 5.5.4 Syntax: EXPN list");
	OK("AUTH PLAIN AGFsaWNlAHNlY3JldA==");
	assert_int_equal(cmd.verb, SMTP_VERB_AUTH);
	SLICE(cmd.arg, "PLAIN AGFsaWNlAHNlY3JldA==");
	OK("auth login  ");
	SLICE(cmd.arg, "login");
	BAD("AUTH", "501 5.5.4 Syntax: AUTH mechanism [response]");
}

static void test_helo_ehlo(void **state)
{
	(void)state;
	OK("EHLO mail.example.com");
	assert_int_equal(cmd.verb, SMTP_VERB_EHLO);
	SLICE(cmd.arg, "mail.example.com");
	OK("HELO mail.example.com");
	assert_int_equal(cmd.verb, SMTP_VERB_HELO);
	OK("ehlo localhost");
	OK("EHLO  a-b.c1 ");
	SLICE(cmd.arg, "a-b.c1");
	OK("EHLO [192.0.2.1]");
	SLICE(cmd.arg, "[192.0.2.1]");
	OK("EHLO [IPv6:2001:db8::1]");
	OK("EHLO [ipv6:::1]");

	BAD("EHLO", "501 5.5.4 Syntax: EHLO hostname");
	BAD("HELO", "501 5.5.4 Syntax: HELO hostname");
	BAD("EHLO a b", "501 5.5.4 Syntax: EHLO hostname");
	BAD("HELO a b", "501 5.5.4 Syntax: HELO hostname");
	/* Lenient on purpose: real clients send these (see cmd_hello). */
	OK("HELO [192.0.2.1]");
	OK("EHLO my_host");
	OK("EHLO MY_PC");
	OK("EHLO example.com.");
	/* Only printable ASCII: the name goes into the Received: header. */
	BAD("EHLO \xc3\xa9xample.com", R_BAD_DOMAIN);
	BAD("EHLO a\x7f", R_BAD_DOMAIN);
	BAD("EHLO a\tb", R_BAD_DOMAIN);
}

/* RFC 5321 4.5.3.1.2: a domain is at most 255 octets. */
static void test_domain_bound(void **state)
{
	(void)state;
	char buf[1024];
	snprintf(buf, sizeof buf, "EHLO %s", domain_of(SMTP_DOMAIN_MAX));
	OK(buf);
	snprintf(buf, sizeof buf, "HELO %s", domain_of(SMTP_DOMAIN_MAX + 1));
	BAD(buf, "501 5.5.4 Domain name too long");
	/* In a path the 256-octet path bound is reached first ... */
	snprintf(buf, sizeof buf, "RCPT TO:<a@%s>", domain_of(SMTP_DOMAIN_MAX));
	BAD(buf, "501 5.1.3 Path too long");
	/* ... unless the domain alone is over its own bound. */
	snprintf(buf, sizeof buf, "RCPT TO:<a@%s>", domain_of(SMTP_DOMAIN_MAX + 1));
	BAD(buf, "501 5.1.3 Domain too long");
	snprintf(buf, sizeof buf, "MAIL FROM:<a@%s>", domain_of(SMTP_DOMAIN_MAX + 1));
	BAD(buf, "501 5.1.7 Domain too long");
}

static void test_mail_basic(void **state)
{
	(void)state;
	OK("MAIL FROM:<alice@example.com>");
	assert_int_equal(cmd.verb, SMTP_VERB_MAIL);
	SLICE(cmd.path.local, "alice");
	SLICE(cmd.path.domain, "example.com");
	assert_false(cmd.path.null);
	assert_false(cmd.path.utf8);
	assert_false(cmd.mail.has_size);
	assert_int_equal(cmd.mail.body, SMTP_BODY_UNSPEC);

	OK("MAIL FROM:<>");
	assert_true(cmd.path.null);
	EMPTY(cmd.path.local);
	EMPTY(cmd.path.domain);

	/* One space after the colon and any case of the keyword. */
	OK("MAIL FROM: <alice@example.com>");
	SLICE(cmd.path.local, "alice");
	OK("mail from:<a@b>");
	OK("Mail From: <>");
	assert_true(cmd.path.null);
	OK("MAIL FROM:<a@b>   ");

	BAD("MAIL", R_MAIL_SYN);
	BAD("MAIL FROM", R_MAIL_SYN);
	BAD("MAIL FROM:", R_MAIL_BAD);
	BAD("MAIL FROM <a@b>", R_MAIL_SYN);
	BAD("MAIL TO:<a@b>", R_MAIL_SYN);
	BAD("MAIL FROM:  <a@b>", R_MAIL_BAD);
	BAD("MAIL FROM:a@b", "501 5.1.7 Bad sender address syntax");
	BAD("RCPT TO:a@b", "501 5.1.3 Bad recipient address syntax");
	BAD("MAIL FROM:", "501 5.1.7 Bad sender address syntax");
	BAD("MAIL FROM:<a@b>x", R_MAIL_SYN);
	BAD("MAIL FROM:<>SIZE=1", R_MAIL_SYN);
	assert_int_equal(cmd.verb, SMTP_VERB_MAIL);
	/* "<Postmaster>" is a recipient-only form. */
	BAD("MAIL FROM:<Postmaster>", R_MAIL_BAD);
}

static void test_rcpt_basic(void **state)
{
	(void)state;
	OK("RCPT TO:<bob@example.org>");
	assert_int_equal(cmd.verb, SMTP_VERB_RCPT);
	SLICE(cmd.path.local, "bob");
	SLICE(cmd.path.domain, "example.org");
	assert_int_equal(cmd.rcpt.notify, 0);
	EMPTY(cmd.rcpt.orcpt);
	OK("rcpt to: <bob@example.org>");
	OK("RCPT To:<bob@example.org>");

	OK("RCPT TO:<Postmaster>");
	assert_true(cmd.path.postmaster);
	SLICE(cmd.path.local, "Postmaster");
	EMPTY(cmd.path.domain);
	OK("RCPT TO:<postMASTER>");
	assert_true(cmd.path.postmaster);
	/* With a domain it is an ordinary mailbox. */
	OK("RCPT TO:<postmaster@example.org>");
	assert_false(cmd.path.postmaster);
	SLICE(cmd.path.domain, "example.org");

	BAD("RCPT TO:<>", R_RCPT_BAD);
	BAD("RCPT TO:<bob>", R_RCPT_BAD);
	BAD("RCPT TO:<\"Postmaster\">", R_RCPT_BAD);
	BAD("RCPT TO:<@a.example:Postmaster>", R_RCPT_BAD);
	BAD("RCPT", R_RCPT_SYN);
	BAD("RCPT TO:", R_RCPT_BAD);
	BAD("RCPT FROM:<a@b>", R_RCPT_SYN);
	BAD("RCPT TO:bob@example.org", R_RCPT_BAD);
	BAD("RCPT TO:<a@b>>", R_RCPT_SYN);
}

static void test_local_parts(void **state)
{
	(void)state;
	OK("RCPT TO:<anne.arthur@example.com>");
	OK("RCPT TO:<customer/department=shipping@example.com>");
	OK("RCPT TO:<$A12345@example.com>");
	/* '%' and '!' are local-part characters, never a relay hint. */
	OK("RCPT TO:<!def!xyz%abc@example.com>");
	SLICE(cmd.path.local, "!def!xyz%abc");
	SLICE(cmd.path.domain, "example.com");
	OK("RCPT TO:<user%other.example@example.com>");
	SLICE(cmd.path.domain, "example.com");

	OK("RCPT TO:<\"Fred Bloggs\"@example.com>");
	SLICE(cmd.path.local, "\"Fred Bloggs\"");
	OK("RCPT TO:<\"\"@example.com>");
	SLICE(cmd.path.local, "\"\"");
	OK("RCPT TO:<\"a>b@c\"@example.com>");
	SLICE(cmd.path.local, "\"a>b@c\"");
	OK("RCPT TO:<\"back\\\\slash\\\"quote\"@example.com>");
	SLICE(cmd.path.local, "\"back\\\\slash\\\"quote\"");

	BAD("RCPT TO:<.anne@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<anne.@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<an..ne@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@>", R_RCPT_BAD);
	BAD("RCPT TO:<an ne@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<anne(comment)@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<\"unterminated@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<\"bad\\\x01\"@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<\"tab\t\"@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<a@b@example.com>", R_RCPT_BAD);
	BAD("MAIL FROM:<a@b", R_MAIL_BAD);
	BAD("MAIL FROM:<", R_MAIL_BAD);
}

static void test_source_route_dropped(void **state)
{
	(void)state;
	OK("MAIL FROM:<@example.org:anne@example.com>");
	SLICE(cmd.path.local, "anne");
	SLICE(cmd.path.domain, "example.com");
	OK("RCPT TO:<@a.example,@b.example:bob@c.example>");
	SLICE(cmd.path.local, "bob");
	SLICE(cmd.path.domain, "c.example");

	BAD("RCPT TO:<@a.example>", R_RCPT_BAD);
	BAD("RCPT TO:<@a.example:>", R_RCPT_BAD);
	BAD("RCPT TO:<@:bob@c.example>", R_RCPT_BAD);
	BAD("RCPT TO:<@a.example,b.example:bob@c.example>", R_RCPT_BAD);
	BAD("RCPT TO:<@a.example;bob@c.example>", R_RCPT_BAD);
	BAD("RCPT TO:<@[192.0.2.1]:bob@c.example>", R_RCPT_BAD);
}

static void test_domains_in_paths(void **state)
{
	(void)state;
	OK("RCPT TO:<anne@mail>");
	OK("RCPT TO:<anne@127.0.0.1>");
	OK("RCPT TO:<anne@[127.0.0.1]>");
	SLICE(cmd.path.domain, "[127.0.0.1]");
	OK("RCPT TO:<anne@[001.002.003.004]>");
	OK("RCPT TO:<anne@[IPv6:2001:db8::1]>");
	SLICE(cmd.path.domain, "[IPv6:2001:db8::1]");
	OK("RCPT TO:<anne@[IPv6:::1]>");
	OK("RCPT TO:<anne@[IPv6:::ffff:192.0.2.1]>");

	BAD("RCPT TO:<anne@example.com.>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@.example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@exa..mple.com>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@exa_mple.com>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@-example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@[1.2.3.4.5]>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@[1.2.3]>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@[1.2.3.1000]>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@[IPv6:1:2:3:4:5:6:7:8:9]>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@[IPv6:fe80::1%eth0]>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@[x:1]>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@[127.0.0.1]x>", R_RCPT_BAD);
	BAD("RCPT TO:<anne@[127.0.0.1>", R_RCPT_BAD);
	BAD("MAIL FROM:<anne@example.com.>", R_MAIL_BAD);
}

/* UTF-8 is accepted syntactically and flagged; the session decides (SMTPUTF8). */
static void test_utf8(void **state)
{
	(void)state;
	OK("MAIL FROM:<\xc3\xa9l\xc3\xa8ve@example.com> SMTPUTF8");
	assert_true(cmd.path.utf8);
	assert_true(cmd.mail.smtputf8);
	OK("RCPT TO:<user@\xe4\xbe\x8b\xe3\x81\x88.jp>");
	assert_true(cmd.path.utf8);
	SLICE(cmd.path.domain, "\xe4\xbe\x8b\xe3\x81\x88.jp");
	OK("RCPT TO:<\"\xf0\x9f\x93\xa7 box\"@example.com>");
	assert_true(cmd.path.utf8);
	OK("RCPT TO:<plain@example.com>");
	assert_false(cmd.path.utf8);

	/* Ill-formed UTF-8: stray continuation, overlong, surrogate, > U+10FFFF,
	 * truncated sequence. */
	BAD("RCPT TO:<\x80@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<\xc0\xae@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<\xed\xa0\x80@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<\xf4\x90\x80\x80@example.com>", R_RCPT_BAD);
	BAD("RCPT TO:<a@b\xe4\xbe>", R_RCPT_BAD);
	BAD("RCPT TO:<a@\xe0\x80\xaf.example>", R_RCPT_BAD);
}

/* RFC 5321 4.5.3.1.1 and 4.5.3.1.3: local part 64, path 256 octets. */
static void test_path_bounds(void **state)
{
	(void)state;
	char buf[1024];

	snprintf(buf, sizeof buf, "MAIL FROM:<%s@example.com>", repeat('l', SMTP_LOCAL_MAX));
	OK(buf);
	assert_int_equal(cmd.path.local.len, SMTP_LOCAL_MAX);
	snprintf(buf, sizeof buf, "MAIL FROM:<%s@example.com>", repeat('l', SMTP_LOCAL_MAX + 1));
	BAD(buf, "501 5.1.7 Local part too long");
	snprintf(buf, sizeof buf, "RCPT TO:<%s@example.com>", repeat('l', SMTP_LOCAL_MAX + 1));
	BAD(buf, "501 5.1.3 Local part too long");
	/* A quoted local part counts as written, quotes included. */
	snprintf(buf, sizeof buf, "RCPT TO:<\"%s\"@example.com>", repeat('q', SMTP_LOCAL_MAX - 2));
	OK(buf);
	snprintf(buf, sizeof buf, "RCPT TO:<\"%s\"@example.com>", repeat('q', SMTP_LOCAL_MAX - 1));
	BAD(buf, "501 5.1.3 Local part too long");

	/* "<" 64 "@" d ">" = 256 exactly when d is 189 octets. */
	size_t d = SMTP_PATH_MAX - SMTP_LOCAL_MAX - 3;
	char local[SMTP_LOCAL_MAX + 1];
	memcpy(local, repeat('l', SMTP_LOCAL_MAX), sizeof local);
	snprintf(buf, sizeof buf, "MAIL FROM:<%s@%s>", local, domain_of(d));
	OK(buf);
	snprintf(buf, sizeof buf, "MAIL FROM:<%s@%s>", local, domain_of(d + 1));
	BAD(buf, "501 5.1.7 Path too long");
	snprintf(buf, sizeof buf, "RCPT TO:<%s@%s>", local, domain_of(d));
	OK(buf);
	snprintf(buf, sizeof buf, "RCPT TO:<%s@%s>", local, domain_of(d + 1));
	BAD(buf, "501 5.1.3 Path too long");
	/* A source route counts towards the path as written. */
	snprintf(buf, sizeof buf, "RCPT TO:<@r.example:%s@%s>", local, domain_of(d - 11));
	OK(buf);
	snprintf(buf, sizeof buf, "RCPT TO:<@r.example:%s@%s>", local, domain_of(d - 10));
	BAD(buf, "501 5.1.3 Path too long");
}

static void test_mail_size(void **state)
{
	(void)state;
	OK("MAIL FROM:<a@b> SIZE=12345");
	assert_true(cmd.mail.has_size);
	assert_int_equal(cmd.mail.size, 12345);
	OK("MAIL FROM:<> size=0");
	assert_true(cmd.mail.has_size);
	assert_int_equal(cmd.mail.size, 0);
	/* 20 digits is the bound; the largest 64-bit value is accepted. */
	OK("MAIL FROM:<> SIZE=18446744073709551615");
	assert_true(cmd.mail.size == UINT64_MAX);
	OK("MAIL FROM:<> SIZE=00000000000000000001");
	assert_int_equal(cmd.mail.size, 1);
	BAD("MAIL FROM:<> SIZE=18446744073709551616", "501 5.5.4 Invalid SIZE value");
	BAD("MAIL FROM:<> SIZE=000000000000000000001", "501 5.5.4 Invalid SIZE value");
	BAD("MAIL FROM:<> SIZE=99999999999999999999", "501 5.5.4 Invalid SIZE value");
	BAD("MAIL FROM:<> SIZE=12k", "501 5.5.4 Invalid SIZE value");
	BAD("MAIL FROM:<> SIZE=-1", "501 5.5.4 Invalid SIZE value");
	BAD("MAIL FROM:<> SIZE", "501 5.5.4 Invalid SIZE value");
	BAD("MAIL FROM:<> SIZE=", R_PARAM_SYN);
}

static void test_mail_body_ret_smtputf8(void **state)
{
	(void)state;
	OK("MAIL FROM:<a@b> BODY=7BIT");
	assert_int_equal(cmd.mail.body, SMTP_BODY_7BIT);
	OK("MAIL FROM:<a@b> BODY=8bitmime");
	assert_int_equal(cmd.mail.body, SMTP_BODY_8BITMIME);
	BAD("MAIL FROM:<a@b> BODY=BINARYMIME", "504 5.5.4 BODY=BINARYMIME not supported");
	assert_int_equal(cmd.mail.body, SMTP_BODY_BINARYMIME);
	BAD("MAIL FROM:<a@b> BODY=8BIT", "501 5.5.4 Invalid BODY value");
	BAD("MAIL FROM:<a@b> BODY", "501 5.5.4 Invalid BODY value");

	OK("MAIL FROM:<a@b> RET=FULL");
	assert_int_equal(cmd.mail.ret, SMTP_RET_FULL);
	OK("MAIL FROM:<a@b> ret=hdrs");
	assert_int_equal(cmd.mail.ret, SMTP_RET_HDRS);
	BAD("MAIL FROM:<a@b> RET=ALL", "501 5.5.4 Invalid RET value");
	BAD("MAIL FROM:<a@b> RET", "501 5.5.4 Invalid RET value");

	OK("MAIL FROM:<a@b> SMTPUTF8");
	assert_true(cmd.mail.smtputf8);
	OK("MAIL FROM:<a@b> smtputf8");
	BAD("MAIL FROM:<a@b> SMTPUTF8=yes", "501 5.5.4 SMTPUTF8 takes no value");
}

/* RFC 3461 4.4: ENVID is xtext of at most 100 characters. */
static void test_mail_envid_auth(void **state)
{
	(void)state;
	char buf[1024];
	OK("MAIL FROM:<a@b> ENVID=QQ314159");
	SLICE(cmd.mail.envid, "QQ314159");
	OK("MAIL FROM:<a@b> ENVID=a+2Bb");
	snprintf(buf, sizeof buf, "MAIL FROM:<> ENVID=%s", repeat('e', SMTP_ENVID_MAX));
	OK(buf);
	assert_int_equal(cmd.mail.envid.len, SMTP_ENVID_MAX);
	snprintf(buf, sizeof buf, "MAIL FROM:<> ENVID=%s", repeat('e', SMTP_ENVID_MAX + 1));
	BAD(buf, "501 5.5.4 Invalid ENVID value");
	BAD("MAIL FROM:<a@b> ENVID=a+2b", "501 5.5.4 Invalid ENVID value");
	BAD("MAIL FROM:<a@b> ENVID=a+2", "501 5.5.4 Invalid ENVID value");
	BAD("MAIL FROM:<a@b> ENVID=a+", "501 5.5.4 Invalid ENVID value");
	BAD("MAIL FROM:<a@b> ENVID=a\xc3\xa9", "501 5.5.4 Invalid ENVID value");
	BAD("MAIL FROM:<a@b> ENVID", "501 5.5.4 Invalid ENVID value");
	/* '=' cannot appear in an esmtp-value at all. */
	BAD("MAIL FROM:<a@b> ENVID=a=b", R_PARAM_SYN);

	OK("MAIL FROM:<a@b> AUTH=<>");
	SLICE(cmd.mail.auth, "<>");
	OK("MAIL FROM:<a@b> AUTH=alice+40example.com");
	SLICE(cmd.mail.auth, "alice+40example.com");
	OK("MAIL FROM:<a@b> AUTH=+3C+3E");
	SLICE(cmd.mail.auth, "+3C+3E");
	BAD("MAIL FROM:<a@b> AUTH=a+zz", "501 5.5.4 Invalid AUTH value");
	BAD("MAIL FROM:<a@b> AUTH", "501 5.5.4 Invalid AUTH value");
}

static void test_mail_params_general(void **state)
{
	(void)state;
	OK("MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x AUTH=<>");
	assert_int_equal(cmd.mail.size, 10);
	assert_int_equal(cmd.mail.body, SMTP_BODY_8BITMIME);
	assert_true(cmd.mail.smtputf8);
	assert_int_equal(cmd.mail.ret, SMTP_RET_HDRS);
	SLICE(cmd.mail.envid, "x");
	SLICE(cmd.mail.auth, "<>");
	/* Extra spaces between parameters are tolerated. */
	OK("MAIL FROM:<a@b>  SIZE=10   BODY=7BIT ");
	assert_int_equal(cmd.mail.body, SMTP_BODY_7BIT);

	BAD("MAIL FROM:<a@b> FOO=bar", R_UNSUPP);
	BAD("MAIL FROM:<a@b> X-CUSTOM", R_UNSUPP);
	BAD("MAIL FROM:<a@b> NOTIFY=NEVER", R_UNSUPP);
	BAD("MAIL FROM:<a@b> ORCPT=rfc822;a@b", R_UNSUPP);
	BAD("MAIL FROM:<a@b> SIZE=1 size=2", R_DUP);
	BAD("MAIL FROM:<a@b> SMTPUTF8 SMTPUTF8", R_DUP);
	BAD("MAIL FROM:<a@b> =1", R_PARAM_SYN);
	BAD("MAIL FROM:<a@b> -X=1", R_PARAM_SYN);
	BAD("MAIL FROM:<a@b> S_ZE=1", R_PARAM_SYN);
	BAD("MAIL FROM:<a@b> SIZE=1\x01", R_PARAM_SYN);
	/* The first fault wins, left to right. */
	BAD("MAIL FROM:<a@b> FOO SIZE=x", R_UNSUPP);
	BAD("MAIL FROM:<a@b> SIZE=x FOO", "501 5.5.4 Invalid SIZE value");
	/* A bad path is reported before its parameters. */
	BAD("MAIL FROM:<a@@b> FOO", R_MAIL_BAD);
}

static void test_rcpt_notify(void **state)
{
	(void)state;
	OK("RCPT TO:<a@b> NOTIFY=NEVER");
	assert_int_equal(cmd.rcpt.notify, SMTP_NOTIFY_NEVER);
	OK("RCPT TO:<a@b> NOTIFY=SUCCESS");
	assert_int_equal(cmd.rcpt.notify, SMTP_NOTIFY_SUCCESS);
	OK("RCPT TO:<a@b> notify=success,Failure,DELAY");
	assert_int_equal(cmd.rcpt.notify,
			 SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY);
	OK("RCPT TO:<a@b> NOTIFY=DELAY,FAILURE");
	assert_int_equal(cmd.rcpt.notify, SMTP_NOTIFY_DELAY | SMTP_NOTIFY_FAILURE);

	BAD("RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS", "501 5.5.4 Invalid NOTIFY value");
	BAD("RCPT TO:<a@b> NOTIFY=DELAY,NEVER", "501 5.5.4 Invalid NOTIFY value");
	BAD("RCPT TO:<a@b> NOTIFY=SUCCESS,", "501 5.5.4 Invalid NOTIFY value");
	BAD("RCPT TO:<a@b> NOTIFY=,SUCCESS", "501 5.5.4 Invalid NOTIFY value");
	BAD("RCPT TO:<a@b> NOTIFY=ALWAYS", "501 5.5.4 Invalid NOTIFY value");
	BAD("RCPT TO:<a@b> NOTIFY", "501 5.5.4 Invalid NOTIFY value");
	BAD("RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER", R_DUP);
}

/* RFC 3461 4.2: ORCPT is addr-type ";" xtext, at most 500 characters. */
static void test_rcpt_orcpt(void **state)
{
	(void)state;
	char buf[1024];
	OK("RCPT TO:<a@b> ORCPT=rfc822;a+40b");
	SLICE(cmd.rcpt.orcpt, "rfc822;a+40b");
	OK("RCPT TO:<a@b> ORCPT=utf-8;a\\x{E9}@b NOTIFY=FAILURE");
	SLICE(cmd.rcpt.orcpt, "utf-8;a\\x{E9}@b");
	assert_int_equal(cmd.rcpt.notify, SMTP_NOTIFY_FAILURE);
	OK("RCPT TO:<a@b> ORCPT=rfc822;");

	/* The value bound is reachable only past the 512-octet line framing
	 * (RFC 3461 4 grants RCPT 500 more); the parser holds it by itself. */
	size_t xt = SMTP_ORCPT_MAX - strlen("rfc822;");
	snprintf(buf, sizeof buf, "RCPT TO:<a@b> ORCPT=rfc822;%s", repeat('o', xt));
	OK(buf);
	assert_int_equal(cmd.rcpt.orcpt.len, SMTP_ORCPT_MAX);
	snprintf(buf, sizeof buf, "RCPT TO:<a@b> ORCPT=rfc822;%s", repeat('o', xt + 1));
	BAD(buf, "501 5.5.4 Invalid ORCPT value");

	BAD("RCPT TO:<a@b> ORCPT=rfc822", "501 5.5.4 Invalid ORCPT value");
	BAD("RCPT TO:<a@b> ORCPT=;a", "501 5.5.4 Invalid ORCPT value");
	BAD("RCPT TO:<a@b> ORCPT=rfc(822);a", "501 5.5.4 Invalid ORCPT value");
	BAD("RCPT TO:<a@b> ORCPT=rfc822;a+4", "501 5.5.4 Invalid ORCPT value");
	BAD("RCPT TO:<a@b> ORCPT", "501 5.5.4 Invalid ORCPT value");
	BAD("RCPT TO:<a@b> ORCPT=rfc822;a ORCPT=rfc822;b", R_DUP);
	BAD("RCPT TO:<a@b> SIZE=1", R_UNSUPP);
	BAD("RCPT TO:<a@b> BODY=8BITMIME", R_UNSUPP);
	BAD("RCPT TO:<a@b> =x", R_PARAM_SYN);
}

/* RFC 3030 2: "BDAT" SP chunk-size [SP "LAST"]. */
static void test_bdat(void **state)
{
	(void)state;
	static const char syn[] = "501 5.5.4 Syntax: BDAT size [LAST]";
	OK("BDAT 100");
	assert_int_equal(cmd.verb, SMTP_VERB_BDAT);
	assert_int_equal(cmd.bdat_size, 100);
	assert_false(cmd.bdat_last);
	SLICE(cmd.arg, "100");
	OK("BDAT 0 LAST");
	assert_int_equal(cmd.bdat_size, 0);
	assert_true(cmd.bdat_last);
	SLICE(cmd.arg, "0 LAST");
	OK("bdat 5  last ");
	assert_int_equal(cmd.bdat_size, 5);
	assert_true(cmd.bdat_last);
	OK("BDAT 18446744073709551615 LAST");
	assert_true(cmd.bdat_size == UINT64_MAX);

	BAD("BDAT", syn);
	assert_int_equal(cmd.verb, SMTP_VERB_BDAT);
	BAD("BDAT x", syn);
	BAD("BDAT -1", syn);
	BAD("BDAT 1x", syn);
	BAD("BDAT 1 2", syn);
	BAD("BDAT 1 LASTX", syn);
	BAD("BDAT 1 LAST x", syn);
	BAD("BDAT LAST", syn);
	BAD("BDAT 18446744073709551616", syn);
	BAD("BDAT 000000000000000000001", syn);
}

static void test_xtext(void **state)
{
	(void)state;
	assert_true(smtp_xtext_valid("", 0));
	assert_true(smtp_xtext_valid("abc", 3));
	assert_true(smtp_xtext_valid("a+2B+3D", 7));
	assert_true(smtp_xtext_valid("!~", 2));
	assert_false(smtp_xtext_valid("a+2b", 4));
	assert_false(smtp_xtext_valid("+", 1));
	assert_false(smtp_xtext_valid("+4", 2));
	assert_false(smtp_xtext_valid("+G0", 3));
	assert_false(smtp_xtext_valid("a=b", 3));
	assert_false(smtp_xtext_valid("a b", 3));
	assert_false(smtp_xtext_valid("a\x7f", 2));
	assert_false(smtp_xtext_valid("\xc3\xa9", 2));
	/* The length is honoured: what follows is not read. */
	assert_true(smtp_xtext_valid("ab=", 2));
	assert_false(smtp_xtext_valid("a+4", 3));
}

/* The parser does not keep state: one command's fields never leak into the
 * next (the struct is cleared on every call). */
static void test_repeated_parses(void **state)
{
	(void)state;
	OK("MAIL FROM:<a@b> SIZE=5 BODY=8BITMIME");
	OK("RCPT TO:<c@d>");
	assert_int_equal(cmd.rcpt.notify, 0);
	EMPTY(cmd.rcpt.orcpt);
	BAD("MAIL FROM:<x> SIZE=1", R_MAIL_BAD);
	OK("MAIL FROM:<a@b>");
	assert_false(cmd.mail.has_size);
	assert_int_equal(cmd.mail.body, SMTP_BODY_UNSPEC);
	assert_null(cmd.reply);
}

/* Inputs from aiosmtpd's tests (see /work/shared/testdata/addresses): each
 * gets exactly one verdict; those we refuse are what RFC 5321 refuses. */
static void test_foreign_vectors(void **state)
{
	(void)state;
	OK("MAIL FROM:<anne@example.com>");
	OK("MAIL FROM: <anne@example.com>");
	OK("MAIL FROM:<\"Abc@def\"@example.com>");
	OK("MAIL FROM:<mailhost!anne@example.com>");
	OK("MAIL FROM:<_@example.com>");
	OK("MAIL FROM:<\" \"@example.com>");
	OK("MAIL FROM:<\"anne..arthur\"@example.com>");
	OK("MAIL FROM:<@example.net,@example.org:anne@example.com>");
	BAD("MAIL FROM:anne@example.com", R_MAIL_BAD);
	BAD("MAIL FROM:  <anne@example.com>", R_MAIL_BAD);
	BAD("MAIL FROM:<anne(comment)@example.com>", R_MAIL_BAD);
	BAD("MAIL FROM:<anne@machine(comment).  example>", R_MAIL_BAD);
	BAD("MAIL FROM:<Fred\\ Bloggs@example.com>", R_MAIL_BAD);
	BAD("MAIL FROM:<much.\"more\\ unusual\"@example.com>", R_MAIL_BAD);
	BAD("RCPT TO: <@example.com>", R_RCPT_BAD);
	BAD("RCPT TO: <johnathon@>", R_RCPT_BAD);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_unknown_verbs),
	    cmocka_unit_test(test_defensive_octets),
	    cmocka_unit_test(test_no_argument_verbs),
	    cmocka_unit_test(test_optional_and_required_args),
	    cmocka_unit_test(test_helo_ehlo),
	    cmocka_unit_test(test_domain_bound),
	    cmocka_unit_test(test_mail_basic),
	    cmocka_unit_test(test_rcpt_basic),
	    cmocka_unit_test(test_local_parts),
	    cmocka_unit_test(test_source_route_dropped),
	    cmocka_unit_test(test_domains_in_paths),
	    cmocka_unit_test(test_utf8),
	    cmocka_unit_test(test_path_bounds),
	    cmocka_unit_test(test_mail_size),
	    cmocka_unit_test(test_mail_body_ret_smtputf8),
	    cmocka_unit_test(test_mail_envid_auth),
	    cmocka_unit_test(test_mail_params_general),
	    cmocka_unit_test(test_rcpt_notify),
	    cmocka_unit_test(test_rcpt_orcpt),
	    cmocka_unit_test(test_bdat),
	    cmocka_unit_test(test_xtext),
	    cmocka_unit_test(test_repeated_parses),
	    cmocka_unit_test(test_foreign_vectors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
