/*
 * libFuzzer driver for the filter chains (filters/): the compiler of
 * "tables", "filters" and "listeners[].filters" (flt_compile) and the
 * decision point that runs what it compiled (flt_decide, flt_resume).
 *
 * The input is a JSON object.  Its "filters" and "tables" become the
 * top-level keys of a fixed config (two listeners, "mx" and "sub", relay
 * domain ok.example, relay network 192.0.2.0/24, error tarpit after 3
 * errors); its "listeners", an array, gives the listeners their own
 * "filters": element i for listener i (null: none).  Every file table
 * ("tables": {"t": {"file": "..."}}) reads one file the driver writes from
 * the input's "table_file" (a string; empty when absent).  Other keys are
 * ignored.  The merged config goes through config_load_string() and, when
 * it loads, flt_compile().
 *
 * On a compile error: the error is one line "<json path>: <what>" of
 * printable text that fits the buffer, its path starts at "filters",
 * "tables" or "listeners[i].filters", and it is never the compiler's
 * "internal error".
 *
 * On success: the rules are well formed (one path per rule of the JSON;
 * every chain ends with END and jumps only forward inside itself; a
 * listener has a chain for exactly the stages it or the top level lists;
 * nothing for the data stage or a listener that does not exist), and a
 * few made-up sessions (hostile strings among them: long ones, control
 * bytes, the field marker \x01, NULs inside counted strings, 8-bit bytes,
 * empty ones, the null sender, IPv6 and IPv4-mapped clients, the largest
 * SIZE and recipient count) go through connect, helo, auth (when
 * authenticated), mail, three recipients, a second transaction.  Each
 * stage: flt_decide, then flt_resume while PENDING (bounded by the chain's
 * length), and each wait is a tarpit (1..300000 ms) or the error delay.
 * The verdict: no delay left; ACCEPT has no reply; otherwise the reply's
 * code fits the action (reject 5xx, tempfail 4xx, disconnect 421 or 5xx)
 * and, when a rule decided, it is printable ASCII with an enhanced code of
 * the same class, and the rule belongs to this stage's chain (the
 * listener's when it lists the stage, else the top level's); when no rule
 * decided, only the relay policy refuses, at rcpt, exactly when the
 * recipient is not ours, the client not in relay.networks and the session
 * not authenticated.  The same stage run again from the same state gives
 * the same verdict and tags.  With file tables, the file then changes
 * twice (flt_tables_refresh: a reload that loads, then one that fails and
 * keeps what was loaded) and the sessions run again.  Then flt_rules_free
 * and config_free (ASan's leak checker runs).
 *
 * The decisions log through the real log module, into /dev/null, so every
 * line is formatted with the hostile values.
 */
#include <arpa/inet.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "filters/flt.h"
#include "filters/prog.h"
#include "fuzz_common.h"
#include "log/log.h"

#define INPUT_MAX	32768
#define INPUT_DEPTH_MAX 32 /* the config's own bound (config.c) */
#define LISTENERS	2
#define RCPTS		3
#define TARPIT_MAX_MS	300000
#define ERROR_DELAY_MS	250
#define SOFT_ERRORS	3
#define REPLY_MAX	510 /* characters of a reply line without its CRLF */

int LLVMFuzzerInitialize(int *argc, char ***argv);

static const char BASE[] =
    "{\"hostname\": \"gw.test\","
    " \"listeners\": [{\"name\": \"mx\", \"address\": \"127.0.0.1:2525\"},"
    "                 {\"name\": \"sub\", \"address\": \"127.0.0.1:2587\"}],"
    " \"relay\": {\"domains\": [\"ok.example\"], \"networks\": [\"192.0.2.0/24\"]},"
    " \"limits\": {\"soft_errors\": 3, \"error_delay_ms\": 250}}";

/* ---- the made-up sessions ---------------------------------------------------- */

struct addr {
	const char *p; /* NULL: absent (the null sender) */
	size_t len;
	const char *domain;
	size_t domain_len;
};

struct scenario {
	uint8_t listener;
	int family;
	const char *client_ip;
	bool tls;
	const char *tls_version;
	const char *helo;
	bool authenticated;
	const char *auth_user;
	struct addr sender;
	uint64_t size;
	struct addr rcpts[RCPTS];
	uint32_t rcpt_count_base; /* rcpt_count of the first recipient - 1 */
	uint32_t errors;
};

/* Hostile text, built once: long, with control bytes, the reply field
 * marker, "%{...}" as data, quotes, 8-bit bytes; the counted strings also
 * hold NULs. */
static char helo_long[1500];
static char user_long[600];
static char sender_long[1200];
static char rcpt_long[1100];
static struct scenario scenarios[4];

static void fill_hostile(char *p, size_t n, bool nul)
{
	static const char bits[] = "a.B-\x01\x02\r\n\t\x7f\xff\xc3\xa9%{helo}\"\\ x..";

	for (size_t i = 0; i < n; i++)
		p[i] = bits[i % (sizeof(bits) - 1)];
	if (nul)
		p[n / 3] = '\0';
}

/* A counted address whose domain is what follows its last '@'. */
static struct addr addr_of(const char *p, size_t len)
{
	const char *at = memrchr(p, '@', len);
	struct addr a = {p, len, "", 0};

	if (at) {
		a.domain = at + 1;
		a.domain_len = len - (size_t)(at + 1 - p);
	}
	return a;
}

static struct addr addr_str(const char *s)
{
	return addr_of(s, strlen(s));
}

static void hostile_make(void)
{
	fill_hostile(helo_long, sizeof(helo_long) - 1, false);
	helo_long[sizeof(helo_long) - 1] = '\0';
	fill_hostile(user_long, sizeof(user_long) - 1, false);
	user_long[sizeof(user_long) - 1] = '\0';
	fill_hostile(sender_long, sizeof(sender_long), true);
	sender_long[700] = '@';
	memcpy(sender_long + sizeof(sender_long) - 12, "@OK.Example.", 12);
	fill_hostile(rcpt_long, sizeof(rcpt_long), true);
	for (size_t i = 600; i < sizeof(rcpt_long); i += 2)
		memcpy(rcpt_long + i, i == 600 ? "@" : "a.", i == 600 ? 1 : 2);
}

static void scenarios_make(void)
{
	hostile_make();
	/* An ordinary authenticated session from a relay network. */
	scenarios[0] = (struct scenario){
	    .listener = 0,
	    .family = AF_INET,
	    .client_ip = "192.0.2.7",
	    .tls = true,
	    .tls_version = "1.3",
	    .helo = "mail.example.com",
	    .authenticated = true,
	    .auth_user = "alice@example.com",
	    .sender = addr_str("Alice@Example.COM"),
	    .size = 1000,
	    .rcpts = {addr_str("bob@ok.example"),
		      addr_str("carol@other.example"),
		      {"Postmaster", 10, "", 0}},
	};
	/* The null sender from an IPv6 stranger, past its soft error limit. */
	scenarios[1] = (struct scenario){
	    .listener = 1,
	    .family = AF_INET6,
	    .client_ip = "2001:db8::25",
	    .tls_version = "",
	    .helo = "",
	    .auth_user = "",
	    .sender = {NULL, 0, NULL, 0},
	    .rcpts = {addr_str("postmaster@ok.example"), addr_str("x@sub.ok.example"),
		      addr_str("x@relay.other.")},
	    .errors = SOFT_ERRORS + 2,
	};
	/* Hostile text everywhere, an IPv4-mapped client, the largest counts. */
	scenarios[2] = (struct scenario){
	    .listener = 0,
	    .family = AF_INET6,
	    .client_ip = "::ffff:198.51.100.1",
	    .tls = true,
	    .tls_version = "1.2",
	    .helo = helo_long,
	    .authenticated = true,
	    .auth_user = user_long,
	    .sender = addr_of(sender_long, sizeof(sender_long)),
	    .size = UINT64_MAX,
	    .rcpts = {addr_of(rcpt_long, sizeof(rcpt_long)), addr_of("\x01@\x7f\r\n", 5),
		      addr_of("@.", 2)},
	    .rcpt_count_base = UINT32_MAX - 2,
	    .errors = UINT32_MAX,
	};
	/* Empty everything: a present but empty sender, an empty login. */
	scenarios[3] = (struct scenario){
	    .listener = 1,
	    .family = AF_INET,
	    .client_ip = "0.0.0.0",
	    .tls = true,
	    .tls_version = "",
	    .helo = ".",
	    .authenticated = true,
	    .auth_user = "",
	    .sender = {"", 0, "", 0},
	    .rcpts = {{"", 0, "", 0}, addr_str("@"), addr_str("x@")},
	    .errors = SOFT_ERRORS - 1,
	};
}

/* ---- the config -------------------------------------------------------------- */

/* The one file every file table reads (tables.NAME.file is pointed here),
 * made at start and removed at exit. */
static char table_path[64];

static void table_path_remove(void)
{
	unlink(table_path);
}

static void table_path_make(void)
{
	int fd;

	snprintf(table_path, sizeof(table_path), "/tmp/ringmx-fuzz-table.XXXXXX");
	fd = mkstemp(table_path);
	CHECK(fd >= 0);
	close(fd);
	CHECK(atexit(table_path_remove) == 0);
}

/* The file tables' file: the input's "table_file", then tail. */
static void table_file_write(const char *p, size_t n, const char *tail)
{
	FILE *f = fopen(table_path, "w");

	CHECK(f != NULL);
	CHECK(fwrite(p, 1, n, f) == n && fputs(tail, f) >= 0);
	CHECK(fclose(f) == 0);
}

/* Every tables.NAME.file that names a file names table_path instead. */
static bool tables_to_file(struct json_object *tables)
{
	bool any = false;

	if (!json_object_is_type(tables, json_type_object))
		return false;
	json_object_object_foreach(tables, name, def)
	{
		struct json_object *f;

		(void)name;
		if (json_object_is_type(def, json_type_object) &&
		    json_object_object_get_ex(def, "file", &f) &&
		    json_object_is_type(f, json_type_string) && json_object_get_string_len(f) > 0) {
			json_object_object_add(def, "file", json_object_new_string(table_path));
			any = true;
		}
	}
	return any;
}

struct merged {
	char *text;	  /* the config */
	bool file_tables; /* some table reads table_path */
	char *file;	  /* what it holds (NULL: nothing) */
	size_t file_len;
};

/* BASE with the input's parts in it; false when the input is not a JSON
 * object. */
static bool config_text(const uint8_t *data, size_t size, struct merged *m)
{
	struct json_tokener *tok = json_tokener_new_ex(INPUT_DEPTH_MAX);
	struct json_object *in, *cfg, *v, *listeners;

	CHECK(tok != NULL);
	memset(m, 0, sizeof(*m));
	in = json_tokener_parse_ex(tok, (const char *)data, (int)size);
	if (json_tokener_get_error(tok) != json_tokener_success) {
		json_object_put(in);
		in = NULL;
	}
	json_tokener_free(tok);
	if (!json_object_is_type(in, json_type_object)) {
		json_object_put(in);
		return false;
	}
	cfg = json_tokener_parse(BASE);
	CHECK(cfg != NULL);
	if (json_object_object_get_ex(in, "filters", &v))
		json_object_object_add(cfg, "filters", json_object_get(v));
	if (json_object_object_get_ex(in, "tables", &v)) {
		m->file_tables = tables_to_file(v);
		json_object_object_add(cfg, "tables", json_object_get(v));
	}
	if (json_object_object_get_ex(in, "table_file", &v) &&
	    json_object_is_type(v, json_type_string)) {
		m->file_len = (size_t)json_object_get_string_len(v);
		m->file = malloc(m->file_len + 1);
		CHECK(m->file != NULL);
		memcpy(m->file, json_object_get_string(v), m->file_len + 1);
	}
	if (json_object_object_get_ex(in, "listeners", &v) &&
	    json_object_is_type(v, json_type_array)) {
		CHECK(json_object_object_get_ex(cfg, "listeners", &listeners));
		for (size_t i = 0; i < LISTENERS && i < json_object_array_length(v); i++) {
			struct json_object *f = json_object_array_get_idx(v, i);

			if (f)
				json_object_object_add(json_object_array_get_idx(listeners, i),
						       "filters", json_object_get(f));
		}
	}
	m->text = strdup(json_object_to_json_string_ext(cfg, JSON_C_TO_STRING_PLAIN |
								 JSON_C_TO_STRING_NOSLASHESCAPE));
	CHECK(m->text != NULL);
	json_object_put(cfg);
	json_object_put(in);
	return true;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char why[256];

	(void)argc;
	(void)argv;
	CHECK(log_setup(LOG_INFO, false, "/dev/null", why, sizeof(why)) == 0);
	scenarios_make();
	table_path_make();
	return 0;
}

/* ---- the compiler's answers -------------------------------------------------------- */

/* The compiler's own error, "<chain path>: internal error: ...": a jump
 * it could not resolve.  Matched whole, since a rule's error may quote
 * what the input wrote. */
static bool is_internal_error(const char *err)
{
	static const char what[] = ": internal error: a jump out of the chain";
	char path[128];

	for (int l = -1; l < LISTENERS; l++) {
		for (int s = 0; s < FLT_STAGE_COUNT; s++) {
			if (l < 0)
				snprintf(path, sizeof(path), "filters.%s%s", flt_stage_names[s],
					 what);
			else
				snprintf(path, sizeof(path), "listeners[%d].filters.%s%s", l,
					 flt_stage_names[s], what);
			if (strcmp(err, path) == 0)
				return true;
		}
	}
	return false;
}

static void check_compile_err(const char *err)
{
	size_t n = strnlen(err, CONFIG_ERR_MAX);

	CHECK(n > 0 && n < CONFIG_ERR_MAX);
	for (size_t i = 0; i < n; i++)
		CHECK((unsigned char)err[i] >= 0x20 && err[i] != 0x7f);
	CHECK(strncmp(err, "filters", 7) == 0 || strncmp(err, "tables", 6) == 0 ||
	      strncmp(err, "listeners[", 10) == 0);
	CHECK(strstr(err, ": ") != NULL);
	CHECK(!is_internal_error(err));
}

static uint32_t rules_in(const struct json_object *filters)
{
	uint32_t n = 0;

	if (!filters)
		return 0;
	json_object_object_foreach((struct json_object *)filters, stage, chain)
	{
		(void)stage;
		CHECK(json_object_is_type(chain, json_type_array));
		n += (uint32_t)json_object_array_length(chain);
	}
	return n;
}

static bool lists_stage(const struct json_object *filters, enum flt_stage s)
{
	return filters && json_object_object_get_ex(filters, flt_stage_names[s], NULL);
}

static void check_prog(const struct flt_rules *r, const struct flt_prog *p)
{
	CHECK(p->count >= 1 && p->ops[p->count - 1].code == FLT_OP_END);
	for (uint32_t i = 0; i < p->count; i++) {
		const struct flt_op *op = &p->ops[i];

		switch ((enum flt_opcode)op->code) {
		case FLT_OP_TEST:
			CHECK(op->yes > i && op->yes < p->count);
			CHECK(op->no > i && op->no < p->count);
			CHECK(op->rule < r->path_count);
			break;
		case FLT_OP_ACT:
			CHECK(op->u.act != NULL && op->u.act->tarpit_ms <= TARPIT_MAX_MS);
			CHECK(op->rule < r->path_count);
			CHECK((op->u.act->reply != NULL) ==
			      (op->u.act->decide == FLT_DEC_REJECT ||
			       op->u.act->decide == FLT_DEC_TEMPFAIL ||
			       op->u.act->decide == FLT_DEC_DISCONNECT));
			break;
		case FLT_OP_END:
			CHECK(i == p->count - 1);
			break;
		default:
			CHECK(!"bad opcode");
		}
	}
}

static void check_rules(const struct rmx_config *cfg, const struct flt_rules *r)
{
	uint32_t rules = rules_in(cfg->filters_json);

	for (uint32_t l = 0; l < cfg->listener_count; l++)
		rules += rules_in(cfg->listeners[l].filters_json);
	CHECK(r->path_count == rules);
	CHECK(r->tag_count <= FLT_TAGS_MAX);
	for (uint32_t l = 0; l < CONFIG_LISTENERS_MAX; l++) {
		for (int s = 0; s < FLT_STAGE_COUNT; s++) {
			const struct flt_prog *p = r->progs[l][s];
			bool listed =
			    l < cfg->listener_count &&
			    (lists_stage(cfg->filters_json, (enum flt_stage)s) ||
			     lists_stage(cfg->listeners[l].filters_json, (enum flt_stage)s));

			CHECK((p != NULL) == listed);
			if (p)
				check_prog(r, p);
		}
	}
}

/* ---- the decisions ------------------------------------------------------------ */

struct session {
	const struct rmx_config *cfg;
	const struct flt_rules *rules;
	const struct scenario *sc;
	struct sockaddr_storage sa;
	struct flt_state st;
};

static void client_addr(struct session *s)
{
	memset(&s->sa, 0, sizeof(s->sa));
	if (s->sc->family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&s->sa;

		a->sin_family = AF_INET;
		CHECK(inet_pton(AF_INET, s->sc->client_ip, &a->sin_addr) == 1);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&s->sa;

		a->sin6_family = AF_INET6;
		CHECK(inet_pton(AF_INET6, s->sc->client_ip, &a->sin6_addr) == 1);
	}
}

/* What the session knows at a stage (rcpt: the i-th recipient), as
 * session_flt_input() fills it: later fields stay empty. */
static void input_of(const struct session *s, enum flt_stage stage, int rcpt, struct flt_input *in)
{
	const struct scenario *sc = s->sc;

	memset(in, 0, sizeof(*in));
	in->cfg = s->cfg;
	in->rules = s->rules;
	in->listener = sc->listener;
	in->client = (const struct sockaddr *)&s->sa;
	in->client_ip = sc->client_ip;
	in->helo = stage >= FLT_STAGE_HELO ? sc->helo : "";
	in->authenticated = sc->authenticated && stage >= FLT_STAGE_AUTH;
	in->auth_user = in->authenticated ? sc->auth_user : "";
	in->tls = sc->tls;
	in->tls_version = sc->tls ? sc->tls_version : "";
	in->errors = sc->errors;
	if (stage >= FLT_STAGE_MAIL) {
		in->sender = sc->sender.p;
		in->sender_len = sc->sender.len;
		in->sender_domain = sc->sender.domain;
		in->sender_domain_len = sc->sender.domain_len;
		in->size = sc->size;
	}
	if (stage == FLT_STAGE_DATA) {
		/* A message as the data stage sees it: folded and obsolete
		 * fields, control and 8-bit octets, a NUL, no blank line in
		 * the second half (a capture cut inside the headers). */
		static const char msg[] = "Subject: one\r\n\ttwo  \r\nFrom : a@b\r\n"
					  "X-\x01: \x80\xff\0x\r\n \r\nX-Empty:\r\n"
					  "\r\nbody\r\n.line\r\nBUY NOW\r\n";

		in->msg = msg;
		in->msg_len = rcpt % 2 ? 40 : sizeof(msg) - 1;
		in->rcpt_count = sc->rcpt_count_base + RCPTS;
		in->qid = "0123456789ABCDEF";
	}
	if (stage == FLT_STAGE_RCPT) {
		const struct addr *a = &sc->rcpts[rcpt];

		in->rcpt = a->p;
		in->rcpt_len = a->len;
		in->rcpt_domain = a->domain;
		in->rcpt_domain_len = a->domain_len;
		in->rcpt_count = sc->rcpt_count_base + (uint32_t)rcpt + 1;
	}
}

/* Does path name a rule of this stage's chain for the listener: its own
 * when it lists the stage, else the top level's? */
static bool rule_in_chain(const struct session *s, enum flt_stage stage, const char *path)
{
	const struct json_object *own = s->cfg->listeners[s->sc->listener].filters_json;
	char want[64];

	if (lists_stage(own, stage))
		snprintf(want, sizeof(want), "listeners[%u].filters.%s[", s->sc->listener,
			 flt_stage_names[stage]);
	else
		snprintf(want, sizeof(want), "filters.%s[", flt_stage_names[stage]);
	return strncmp(path, want, strlen(want)) == 0;
}

/* The relay policy's answer (flt.h, invariant 7). */
static bool relay_denied(const struct flt_input *in)
{
	return in->rcpt_domain_len > 0 && !in->authenticated &&
	       !config_domain_is_relay(in->cfg, in->rcpt_domain, in->rcpt_domain_len) &&
	       !config_addr_is_relay(in->cfg, in->client);
}

/* "CODE X.Y.Z[ text]" in printable ASCII, the enhanced class the code's. */
static void check_rule_reply(const char *reply)
{
	size_t n = strlen(reply);

	CHECK(n >= 9 && reply[3] == ' ' && reply[4] == reply[0] && reply[5] == '.');
	for (size_t i = 0; i < n; i++)
		CHECK(reply[i] >= 0x20 && reply[i] < 0x7f);
}

static void check_verdict(const struct session *s, enum flt_stage stage, const struct flt_input *in,
			  const struct flt_verdict *v)
{
	const char *r = v->reply;
	uint32_t rule = s->st.rule;

	CHECK(v->delay_ms == 0);
	/* With its CRLF a reply line is at most 512 octets. */
	CHECK(strnlen(r, sizeof(v->reply)) <= REPLY_MAX);
	if (rule != UINT32_MAX && rule != FLT_RULE_RELAY) {
		CHECK(rule < s->rules->path_count);
		CHECK(rule_in_chain(s, stage, s->rules->paths[rule]));
		CHECK(flt_rule_path(s->rules, rule) == s->rules->paths[rule]);
	}
	/* The relay policy decides first, alone, and says so. */
	CHECK((rule == FLT_RULE_RELAY) == (stage == FLT_STAGE_RCPT && relay_denied(in)));
	if (rule == FLT_RULE_RELAY) {
		CHECK(v->action == FLT_REJECT && strncmp(r, "554 5.7.1 <", 11) == 0);
		CHECK(strcmp(flt_rule_path(s->rules, rule), "relay policy") == 0);
		return;
	}
	switch (v->action) {
	case FLT_ACCEPT:
		CHECK(r[0] == '\0');
		return;
	case FLT_REJECT:
		CHECK(r[0] == '5');
		break;
	case FLT_TEMPFAIL:
		CHECK(r[0] == '4');
		break;
	case FLT_DISCONNECT:
		CHECK(r[0] == '5' || strncmp(r, "421", 3) == 0);
		break;
	default:
		CHECK(!"bad action");
	}
	/* Only a rule refuses once the relay policy has let it through. */
	CHECK(rule != UINT32_MAX);
	check_rule_reply(r);
}

/* One decision, the waits included: a chain can ask to wait once per
 * rule, then once more for the error tarpit. */
static int decide(struct session *s, enum flt_stage stage, const struct flt_input *in,
		  struct flt_verdict *out)
{
	const struct flt_prog *p = s->rules->progs[s->sc->listener][stage];
	uint32_t waits_max = (p ? p->count : 0) + 2;
	int rc;

	memset(out, 0x5a, sizeof(*out));
	rc = flt_decide(stage, in, &s->st, out);
	for (uint32_t waits = 0; rc == FLT_PENDING; waits++) {
		CHECK(waits < waits_max);
		CHECK((out->delay_ms >= 1 && out->delay_ms <= TARPIT_MAX_MS) ||
		      out->delay_ms == ERROR_DELAY_MS);
		rc = flt_resume(stage, in, &s->st, out);
	}
	return rc;
}

/* One stage, decided twice from the same state: the same verdict, rule
 * and tags both times. */
static void run_stage(struct session *s, enum flt_stage stage, int rcpt)
{
	struct flt_input in;
	struct flt_verdict v, again;
	struct flt_state before = s->st, after;

	input_of(s, stage, rcpt, &in);
	CHECK(decide(s, stage, &in, &v) == FLT_DONE);
	check_verdict(s, stage, &in, &v);
	after = s->st;
	s->st = before;
	CHECK(decide(s, stage, &in, &again) == FLT_DONE);
	CHECK(v.action == again.action && strcmp(v.reply, again.reply) == 0);
	CHECK(s->st.rule == after.rule && s->st.tags_session == after.tags_session &&
	      s->st.tags_tx == after.tags_tx);
	/* Tags only accumulate within a session. */
	CHECK((after.tags_session & before.tags_session) == before.tags_session);
}

static void run_session(const struct rmx_config *cfg, const struct flt_rules *rules,
			const struct scenario *sc)
{
	struct session s = {.cfg = cfg, .rules = rules, .sc = sc};

	client_addr(&s);
	run_stage(&s, FLT_STAGE_CONNECT, 0);
	run_stage(&s, FLT_STAGE_HELO, 0);
	if (sc->authenticated)
		run_stage(&s, FLT_STAGE_AUTH, 0);
	run_stage(&s, FLT_STAGE_MAIL, 0);
	for (int i = 0; i < RCPTS; i++)
		run_stage(&s, FLT_STAGE_RCPT, i);
	run_stage(&s, FLT_STAGE_DATA, 0);
	run_stage(&s, FLT_STAGE_DATA, 1);
	flt_tx_end(&s.st);
	CHECK(s.st.tags_tx == 0);
	run_stage(&s, FLT_STAGE_MAIL, 0);
	run_stage(&s, FLT_STAGE_RCPT, RCPTS - 1);
}

/* The file tables' file changes twice: to a longer copy that loads (the
 * old contents are freed), then to one that does not (the loaded ones
 * stay).  A refresh sees a change first and reads it once it is still, so
 * each change takes two. */
static void tables_reload(const struct flt_rules *rules, const struct merged *m)
{
	table_file_write(m->file ? m->file : "", m->file_len, "\n# changed\n");
	flt_tables_refresh(rules);
	flt_tables_refresh(rules);
	table_file_write(m->file ? m->file : "", m->file_len, "\n# changed\n\x01\n");
	flt_tables_refresh(rules);
	flt_tables_refresh(rules);
}

static void run_sessions(const struct rmx_config *cfg, const struct flt_rules *rules)
{
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
		run_session(cfg, rules, &scenarios[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[CONFIG_ERR_MAX];
	struct rmx_config *cfg;
	struct flt_rules *rules;
	struct merged m;

	if (size > INPUT_MAX || !config_text(data, size, &m))
		return 0;
	if (m.file_tables)
		table_file_write(m.file ? m.file : "", m.file_len, "");
	cfg = config_load_string(m.text, err, sizeof(err));
	if (!cfg) {
		CHECK(err[0] != '\0' && strnlen(err, sizeof(err)) < sizeof(err));
		goto out;
	}
	CHECK(cfg->listener_count == LISTENERS);
	memset(err, 0x5a, sizeof(err));
	rules = flt_compile(cfg, err, sizeof(err));
	if (!rules) {
		check_compile_err(err);
	} else {
		check_rules(cfg, rules);
		run_sessions(cfg, rules);
		if (m.file_tables) {
			tables_reload(rules, &m);
			run_sessions(cfg, rules);
		}
	}
	flt_rules_free(rules);
	config_free(cfg);
out:
	free(m.text);
	free(m.file);
	return 0;
}
