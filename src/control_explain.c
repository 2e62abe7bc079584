/*
 * control_explain — `filter explain`: the compiled chains the server runs,
 * asked about a made-up session, stage by stage, with the rule that decided
 * each one (its JSON path) and the waits it would impose.  Nothing is
 * logged and nothing waits: a tarpit is reported, not slept.
 *
 *   filter explain [--listener NAME] [--ip ADDR] [--helo NAME] [--tls VERSION]
 *                  [--auth-user USER] [--from ADDR] [--rcpt ADDR]... [--message FILE]
 *
 * A stage whose input is not given is not run (no --helo: no helo stage;
 * no --from: no mail or rcpt stage; no --message: no data stage).  The
 * message is read from a file on the server's side, the first 64 KiB as
 * the data stage sees them.  Like a real session, a refusal at
 * connect, helo, auth or mail ends the explanation there; each recipient is
 * explained on its own.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "control.h"
#include "control_int.h"
#include "filters/flt.h"

#define EXPLAIN_RCPTS_MAX 100

struct explain_args {
	const char *listener, *ip, *helo, *tls, *auth_user, *from, *message;
	const char *rcpts[EXPLAIN_RCPTS_MAX];
	uint32_t rcpt_count;
};

static const char *const verdict_names[] = {"accept", "reject", "tempfail", "disconnect"};

/* Split "--opt value ..." in place.  NULL, or what is wrong. */
static const char *args_parse(char *s, struct explain_args *a)
{
	char *save = NULL, *opt;

	while ((opt = strtok_r(s, " ", &save))) {
		char *val = strtok_r(NULL, " ", &save);
		const char **slot = NULL;

		s = NULL;
		if (!val)
			return "an option without its value";
		if (strcmp(opt, "--listener") == 0)
			slot = &a->listener;
		else if (strcmp(opt, "--ip") == 0)
			slot = &a->ip;
		else if (strcmp(opt, "--helo") == 0)
			slot = &a->helo;
		else if (strcmp(opt, "--tls") == 0)
			slot = &a->tls;
		else if (strcmp(opt, "--auth-user") == 0)
			slot = &a->auth_user;
		else if (strcmp(opt, "--from") == 0)
			slot = &a->from;
		else if (strcmp(opt, "--message") == 0)
			slot = &a->message;
		else if (strcmp(opt, "--rcpt") == 0) {
			if (a->rcpt_count == EXPLAIN_RCPTS_MAX)
				return "too many --rcpt";
			a->rcpts[a->rcpt_count++] = val;
			continue;
		} else
			return "unknown option";
		*slot = val;
	}
	return NULL;
}

/* "<a@b>" or "a@b" -> a@b; "<>" -> "". */
static void addr_strip(const char **p, size_t *n)
{
	*n = strlen(*p);
	if (*n >= 2 && (*p)[0] == '<' && (*p)[*n - 1] == '>') {
		(*p)++;
		*n -= 2;
	}
}

static const char *domain_of(const char *a, size_t n, size_t *dn)
{
	const char *at = memrchr(a, '@', n);

	*dn = at ? n - (size_t)(at + 1 - a) : 0;
	return at ? at + 1 : "";
}

/* The message file (on the server's side of the socket: the operator's
 * own) as a client would send it: the first FLT_CAPTURE_MAX octets, LF
 * line ends made CRLF; *size the whole, so counted.  NULL with why. */
static char *message_read(const char *path, size_t *len, uint64_t *size, const char **why)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	char *buf = NULL, raw[4096];
	struct stat st;
	bool cr = false;
	ssize_t r;

	*len = 0;
	*size = 0;
	*why = "--message: cannot read the file";
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    !(buf = malloc(FLT_CAPTURE_MAX)))
		goto out;
	while ((r = read(fd, raw, sizeof(raw))) > 0) {
		for (ssize_t i = 0; i < r; i++) {
			if (raw[i] == '\n' && !cr) { /* LF alone: the wire has CRLF */
				if (*len < FLT_CAPTURE_MAX)
					buf[(*len)++] = '\r';
				(*size)++;
			}
			if (*len < FLT_CAPTURE_MAX)
				buf[(*len)++] = raw[i];
			(*size)++;
			cr = raw[i] == '\r';
		}
	}
	if (r == 0)
		*why = NULL;
out:
	if (fd >= 0)
		close(fd);
	if (*why) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* One stage, with its waits; true when it let the session go on. */
static bool explain_stage(struct out *o, const struct flt_rules *r, enum flt_stage stage,
			  const struct flt_input *in, struct flt_state *st, const char *what)
{
	struct flt_verdict v;
	int rc = flt_decide(stage, in, st, &v);

	out_printf(o, "%s%s%s:", flt_stage_names[stage], what[0] ? " " : "", what);
	while (rc == FLT_PENDING) {
		out_printf(o, " wait %u ms (%s),", v.delay_ms, flt_rule_path(r, st->rule));
		rc = flt_resume(stage, in, st, &v);
	}
	if (v.action == FLT_ACCEPT) {
		out_printf(o, " accept (%s)", flt_rule_path(r, st->rule));
		/* What the message will carry, once it is accepted. */
		if (st->quarantine)
			out_printf(o, ", quarantine %s", st->quarantine);
		if (st->route)
			out_printf(o, ", route %s", st->route);
		if (st->bcc)
			out_printf(o, ", bcc %s", st->bcc);
		if (st->rewrite)
			out_printf(o, ", sender rewritten by table");
		out_printf(o, "\n");
		return true;
	}
	/* The relay policy decides before any rule: st->rule is unset then. */
	out_printf(o, " %s (%s): %s\n", verdict_names[v.action], flt_rule_path(r, st->rule),
		   v.reply);
	return false;
}

/* The session the arguments describe, up to its connect stage: the
 * listener, the client, TLS.  NULL, or what is wrong. */
static const char *session_of(const struct rmx_config *cfg, const struct explain_args *a,
			      struct sockaddr_storage *ss, char *ip, size_t iplen, uint32_t *li)
{
	*li = 0;
	if (a->listener) {
		while (*li < cfg->listener_count && strcmp(cfg->listeners[*li].name, a->listener))
			(*li)++;
		if (*li == cfg->listener_count)
			return "no listener of that name";
	}
	if (a->ip && strlen(a->ip) >= iplen)
		return "--ip: not an IP address";
	snprintf(ip, iplen, "%s", a->ip ? a->ip : "127.0.0.1");
	if (inet_pton(AF_INET, ip, &((struct sockaddr_in *)ss)->sin_addr) == 1)
		ss->ss_family = AF_INET;
	else if (inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1)
		ss->ss_family = AF_INET6;
	else
		return "--ip: not an IP address";
	if (a->tls && strcmp(a->tls, "1.2") != 0 && strcmp(a->tls, "1.3") != 0)
		return "--tls: expected 1.2 or 1.3";
	return NULL;
}

/* The message of --message, read before anything is answered. */
struct explain_msg {
	char *p;
	size_t len;
	uint64_t size;
};

/* The data stage on the message in a file, and the header fields it would
 * add. */
static void explain_data(struct out *o, const struct flt_rules *rules, struct flt_input *in,
			 struct flt_state *st, const struct explain_msg *m)
{
	char line[1024];

	if (!in->rcpt_count) {
		out_printf(o, "data: not reached (no recipient accepted)\n");
		return;
	}
	in->msg = m->p;
	in->msg_len = m->len;
	in->size = m->size;
	in->rcpt = NULL;
	in->rcpt_len = in->rcpt_domain_len = 0;
	in->qid = "EXPLAIN";
	if (in->msg_len == FLT_CAPTURE_MAX && flt_data_reads_message(rules, in->listener) &&
	    flt_msg_body_start(m->p, in->msg_len) == in->msg_len)
		out_printf(o, "data: reject (header section): 552 5.3.4 Error: header section "
			      "too large to be checked\n");
	else if (explain_stage(o, rules, FLT_STAGE_DATA, in, st, ""))
		for (uint8_t i = 0; i < st->nadds; i++)
			if (flt_header_format(st->adds[i], in, line, sizeof(line)))
				out_printf(o, "  adds: %.*s\n", (int)strcspn(line, "\r"), line);
	in->msg = NULL;
}

/* The stages after connect; each one runs when its input is given. */
static void explain_rest(struct out *o, const struct flt_rules *rules, struct flt_input *in,
			 struct flt_state *st, const struct explain_args *a,
			 const struct explain_msg *m)
{
	if (a->helo) {
		in->helo = a->helo;
		if (!explain_stage(o, rules, FLT_STAGE_HELO, in, st, a->helo))
			return;
	}
	if (a->auth_user) {
		in->auth_user = a->auth_user;
		in->authenticated = true;
		if (!explain_stage(o, rules, FLT_STAGE_AUTH, in, st, a->auth_user)) {
			in->authenticated = false; /* refused: the session goes on without it */
			in->auth_user = "";
		}
	}
	if (!a->from)
		return;
	in->sender = a->from;
	addr_strip(&in->sender, &in->sender_len);
	in->sender_domain = domain_of(in->sender, in->sender_len, &in->sender_domain_len);
	if (!explain_stage(o, rules, FLT_STAGE_MAIL, in, st, a->from))
		return;
	for (uint32_t i = 0; i < a->rcpt_count; i++) {
		in->rcpt = a->rcpts[i];
		addr_strip(&in->rcpt, &in->rcpt_len);
		in->rcpt_domain = domain_of(in->rcpt, in->rcpt_len, &in->rcpt_domain_len);
		in->rcpt_count++;
		if (!explain_stage(o, rules, FLT_STAGE_RCPT, in, st, a->rcpts[i]))
			in->rcpt_count--; /* only accepted recipients count */
	}
	if (m->p)
		explain_data(o, rules, in, st, m);
}

void control_explain(struct out *o, const struct rmx_config *cfg, const struct flt_rules *rules,
		     const char *line)
{
	char buf[CONTROL_LINE_MAX], ip[INET6_ADDRSTRLEN];
	struct explain_args a = {0};
	struct sockaddr_storage ss = {0};
	struct flt_state st = {0};
	struct explain_msg msg = {0};
	struct flt_input in;
	const char *why;
	uint32_t li;

	snprintf(buf, sizeof(buf), "%s", line);
	why = args_parse(buf, &a);
	if (!why)
		why = session_of(cfg, &a, &ss, ip, sizeof(ip), &li);
	if (!why && a.message)
		msg.p = message_read(a.message, &msg.len, &msg.size, &why);
	if (why) {
		out_printf(o, "ERR filter explain: %s\n", why);
		return;
	}
	in = (struct flt_input){.cfg = cfg,
				.rules = rules,
				.listener = (uint8_t)li,
				.client = (const struct sockaddr *)&ss,
				.client_ip = ip,
				.helo = "",
				.auth_user = "",
				.tls = a.tls != NULL,
				.tls_version = a.tls ? a.tls : "",
				.qid = "",
				.quiet = true};
	out_printf(o, "OK\nlistener %s, client %s\n", cfg->listeners[li].name, ip);
	if (explain_stage(o, rules, FLT_STAGE_CONNECT, &in, &st, ""))
		explain_rest(o, rules, &in, &st, &a, &msg);
	free(msg.p);
}
