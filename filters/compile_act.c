/*
 * filters/compile_act — a rule's action: the deciding word (accept, next,
 * reject, tempfail, disconnect), its modifiers (tarpit_ms, tag) and the
 * reply text, checked against its action and split around its %{fields}.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "filters/compile_int.h"

/* ---- actions ------------------------------------------------------------------ */

static const char *const reply_fields[FLT_RF_COUNT] = {
    "client_ip", "helo", "sender", "rcpt", "listener", "auth_user", "hostname", "qid",
};

/* text's %{field}s as markers (prog.h), appended to t at *o. */
static int template_compile(struct cc *c, const char *path, const char *text, char *t, size_t *o)
{
	while (*text) {
		const char *end;
		size_t f;

		if (text[0] != '%' || text[1] != '{') {
			t[(*o)++] = *text++;
			continue;
		}
		end = strchr(text, '}');
		if (!end)
			return cc_fail(c, path, "unterminated %%{");
		for (f = 0; f < FLT_RF_COUNT; f++)
			if (strlen(reply_fields[f]) == (size_t)(end - text - 2) &&
			    memcmp(reply_fields[f], text + 2, (size_t)(end - text - 2)) == 0)
				break;
		if (f == FLT_RF_COUNT)
			return cc_fail(c, path, "unknown field %%{%.*s}", (int)(end - text - 2),
				       text + 2);
		t[(*o)++] = FLT_REPLY_FIELD;
		t[(*o)++] = (char)(f + 1);
		text = end + 1;
	}
	t[*o] = '\0';
	return 0;
}

/* The enhanced code after the basic one: "c.sss.ddd", c the class (RFC
 * 3463), copied to t at *o, or the default for the class put in; *text
 * moves past it. */
static int enhanced_code(struct cc *c, const char *path, const char *s, const char **text, char *t,
			 size_t *o)
{
	const char *x = *text;
	char cls = s[0];

	t[(*o)++] = ' ';
	if (!(x[0] >= '0' && x[0] <= '9' && memchr(x, '.', strcspn(x, " ")))) {
		const char *def = cls == '5'		      ? "5.7.1"
				  : strncmp(s, "421", 3) == 0 ? "4.7.0"
							      : "4.7.1";

		memcpy(t + *o, def, 5);
		*o += 5;
		return 0;
	}
	size_t i = 0, parts = 0, digits = 0;

	for (; x[i] && x[i] != ' '; i++) {
		if (x[i] == '.') {
			if (!digits)
				break;
			parts++;
			digits = 0;
		} else if (x[i] >= '0' && x[i] <= '9' && digits < 3) {
			digits++;
		} else {
			break;
		}
	}
	if (parts != 2 || !digits || (x[i] && x[i] != ' ') ||
	    (x[0] != '2' && x[0] != '4' && x[0] != '5') || x[1] != '.')
		return cc_fail(c, path, "bad enhanced status code (expected \"%c.x.y\")", cls);
	if (x[0] != cls)
		return cc_fail(c, path, "the enhanced code's class %c does not match the code %.3s",
			       x[0], s);
	memcpy(t + *o, x, i);
	*o += i;
	*text = x[i] == ' ' ? x + i + 1 : x + i;
	return 0;
}

/* "CODE[ X.Y.Z] text": the code's class must fit the action, the enhanced
 * code's class the code's; a default enhanced code is put in when it is
 * left out.  %{field}s become markers (prog.h). */
static int reply_compile(struct cc *c, const char *path, const char *s, enum flt_decide d,
			 const char **out)
{
	size_t len = strlen(s), o = 0;
	const char *text;
	char *t;
	char cls;

	if (len > REPLY_TEXT_MAX)
		return cc_fail(c, path, "longer than %d characters", REPLY_TEXT_MAX);
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return cc_fail(c, path,
				       "only printable ASCII in a reply (no CR, LF or tab)");
	if (len < 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '5' || s[2] < '0' ||
	    s[2] > '9' || (len > 3 && s[3] != ' '))
		return cc_fail(c, path,
			       "expected \"CODE text\" with a three-digit code (\"550 ...\")");
	cls = s[0];
	if (d == FLT_DEC_REJECT && cls != '5')
		return cc_fail(c, path, "a reject reply must be 5xx");
	if (d == FLT_DEC_TEMPFAIL && cls != '4')
		return cc_fail(c, path, "a tempfail reply must be 4xx");
	if (d == FLT_DEC_DISCONNECT && cls != '5' && strncmp(s, "421", 3) != 0)
		return cc_fail(c, path, "a disconnect reply must be 421 or 5xx");
	text = len > 3 ? s + 4 : s + 3;
	t = malloc(REPLY_TEXT_MAX + 64);
	if (cc_own(c, OWN_MEM, t) < 0)
		return cc_fail(c, path, "out of memory");
	memcpy(t, s, 3);
	o = 3;
	if (enhanced_code(c, path, s, &text, t, &o) < 0)
		return -EINVAL;
	if (!*text) {
		const char *def = d == FLT_DEC_REJECT	  ? "Rejected by policy"
				  : d == FLT_DEC_TEMPFAIL ? "Try again later"
							  : "Closing connection";

		snprintf(t + o, REPLY_TEXT_MAX + 64 - o, " %s", def);
		*out = t;
		return 0;
	}
	t[o++] = ' ';
	if (template_compile(c, path, text, t, &o) < 0)
		return -EINVAL;
	*out = t;
	return 0;
}

/* add_header: {"name": N, "value": V}, or a list of them.  Only at the
 * data stage; the name a field name (RFC 5322 2.2: printable, no colon),
 * the value one line of printable ASCII with %{fields}. */
static int add_one(struct cc *c, const char *path, struct json_object *v, struct flt_hdr_add *a)
{
	struct json_object *name = NULL, *value = NULL;
	char sub[PATH_MAX_LEN];
	size_t o = 0;
	char *t;

	if (!json_object_is_type(v, json_type_object))
		return cc_fail(c, path, "expected {\"name\": ..., \"value\": ...}");
	json_object_object_foreach(v, key, x)
	{
		cc_path_key(sub, path, key);
		if (strcmp(key, "name") == 0)
			name = x;
		else if (strcmp(key, "value") == 0)
			value = x;
		else
			return cc_fail(c, sub, "unknown key");
	}
	cc_path_key(sub, path, "name");
	if (!name || !json_object_is_type(name, json_type_string) ||
	    json_object_get_string_len(name) == 0 ||
	    json_object_get_string_len(name) > FLT_HDR_NAME_MAX)
		return cc_fail(c, sub, "expected a header field name of 1 to %d characters",
			       FLT_HDR_NAME_MAX);
	for (const char *p = json_object_get_string(name); *p; p++)
		if (*p <= ' ' || *p >= 0x7f || *p == ':')
			return cc_fail(c, sub, "a field name is printable ASCII without ':'");
	if (strcasecmp(json_object_get_string(name), "Received") == 0)
		return cc_fail(c, sub, "Received: is ours to add");
	snprintf(a->name, sizeof(a->name), "%s", json_object_get_string(name));
	cc_path_key(sub, path, "value");
	if (!value || !json_object_is_type(value, json_type_string))
		return cc_fail(c, sub, "expected a string");
	if (json_object_get_string_len(value) > REPLY_TEXT_MAX)
		return cc_fail(c, sub, "longer than %d characters", REPLY_TEXT_MAX);
	for (const char *p = json_object_get_string(value); *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			return cc_fail(c, sub, "only printable ASCII in a header value");
	t = malloc(REPLY_TEXT_MAX * 2 + 1);
	if (cc_own(c, OWN_MEM, t) < 0)
		return cc_fail(c, sub, "out of memory");
	if (template_compile(c, sub, json_object_get_string(value), t, &o) < 0)
		return -EINVAL;
	a->value = t;
	return 0;
}

static int add_header_compile(struct cc *c, const char *path, struct json_object *v,
			      struct flt_act *a)
{
	size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 1;
	struct flt_hdr_add *adds;

	if (c->stage != FLT_STAGE_DATA)
		return cc_fail(c, path, "add_header is for the data stage");
	if (n == 0 || n > FLT_ADDS_MAX)
		return cc_fail(c, path, "expected 1 to %d header fields", FLT_ADDS_MAX);
	adds = calloc(n, sizeof(*adds));
	if (cc_own(c, OWN_MEM, adds) < 0)
		return cc_fail(c, path, "out of memory");
	for (size_t i = 0; i < n; i++) {
		char e[PATH_MAX_LEN];

		if (json_object_is_type(v, json_type_array))
			cc_path_index(e, path, i);
		else
			snprintf(e, sizeof(e), "%s", path);
		if (add_one(c, e,
			    json_object_is_type(v, json_type_array)
				? json_object_array_get_idx(v, i)
				: v,
			    &adds[i]) < 0)
			return -EINVAL;
	}
	a->adds = adds;
	a->nadds = (uint32_t)n;
	return 0;
}

/* route, bcc, rewrite_sender: what the message becomes, applied when it is
 * committed (mail, rcpt and data stages; the last rule that says wins). */
static int message_action(struct cc *c, const char *path, const char *key, struct json_object *v,
			  struct flt_act *a)
{
	const char *s = json_object_get_string(v);

	if (c->stage < FLT_STAGE_MAIL)
		return cc_fail(c, path, "%s is for the mail, rcpt and data stages", key);
	if (strcmp(key, "route") == 0) {
		if (!json_object_is_type(v, json_type_string) ||
		    !config_route_by_name(c->cfg, s, strlen(s)))
			return cc_fail(c, path, "expected the name of a route (routes[].name)");
		a->route = config_route_by_name(c->cfg, s, strlen(s))->name;
		return 0;
	}
	if (strcmp(key, "bcc") == 0) {
		const char *at = json_object_is_type(v, json_type_string) ? strrchr(s, '@') : NULL;

		if (!at || at == s || !at[1] || strlen(s) > 254 || strpbrk(s, " \t<>,\"") ||
		    strspn(s, "!#$%&'*+-/=?^_`{|}~.@abcdefghijklmnopqrstuvwxyz"
			      "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") != strlen(s))
			return cc_fail(c, path, "expected an address (\"archive@example.com\")");
		a->bcc = strdup(s);
		if (cc_own(c, OWN_MEM, (void *)a->bcc) < 0)
			return cc_fail(c, path, "out of memory");
		return 0;
	}
	/* rewrite_sender: {"table": T}, T mapping a sender (or its @domain) to
	 * its new address (or @domain). */
	struct json_object *t;
	char sub[PATH_MAX_LEN];

	if (!json_object_is_type(v, json_type_object) || json_object_object_length(v) != 1 ||
	    !json_object_object_get_ex(v, "table", &t) || !json_object_is_type(t, json_type_string))
		return cc_fail(c, path, "expected {\"table\": NAME}");
	cc_path_key(sub, path, "table");
	a->rewrite = cc_table_use(c, sub, json_object_get_string(t), 1u << FLT_SET_ADDRS);
	return a->rewrite ? 0 : -EINVAL;
}

static const char *const decide_names[] = {"", "accept", "reject", "tempfail", "disconnect"};

static enum flt_decide decide_of(const char *key)
{
	for (int d = FLT_DEC_ACCEPT; d <= FLT_DEC_DISCONNECT; d++)
		if (strcmp(key, decide_names[d]) == 0)
			return (enum flt_decide)d;
	return FLT_DEC_NONE;
}

static const char *default_reply(enum flt_decide d)
{
	return d == FLT_DEC_REJECT     ? "550 5.7.1 Rejected by policy"
	       : d == FLT_DEC_TEMPFAIL ? "451 4.7.1 Try again later"
				       : "421 4.7.0 %{hostname} Closing connection";
}

bool cc_is_action_key(const char *key)
{
	return decide_of(key) != FLT_DEC_NONE || strcmp(key, "next") == 0 ||
	       strcmp(key, "tarpit_ms") == 0 || strcmp(key, "tag") == 0 ||
	       strcmp(key, "add_header") == 0 || strcmp(key, "remove_header") == 0 ||
	       strcmp(key, "quarantine") == 0 || strcmp(key, "route") == 0 ||
	       strcmp(key, "bcc") == 0 || strcmp(key, "rewrite_sender") == 0;
}

static int action_key(struct cc *c, const char *path, const char *key, struct json_object *v,
		      struct flt_act *a, int *deciding)
{
	enum flt_decide d = decide_of(key);

	if (strcmp(key, "tarpit_ms") == 0) {
		int64_t ms;

		if (!json_object_is_type(v, json_type_int) || (ms = json_object_get_int64(v)) < 0 ||
		    ms > TARPIT_MAX_MS)
			return cc_fail(c, path, "expected an integer in 0..%d", TARPIT_MAX_MS);
		a->tarpit_ms = (uint32_t)ms;
		return 0;
	}
	if (strcmp(key, "add_header") == 0)
		return add_header_compile(c, path, v, a);
	if (strcmp(key, "quarantine") == 0) {
		const char *q = json_object_get_string(v);
		size_t n = json_object_is_type(v, json_type_string) ? strlen(q) : 0;

		if (c->stage < FLT_STAGE_MAIL)
			return cc_fail(c, path, "quarantine is for the mail, rcpt and data stages");
		if (!n || n > 64 ||
		    strspn(q, "abcdefghijklmnopqrstuvwxyz"
			      "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != n)
			return cc_fail(
			    c, path, "expected a quarantine name: 1 to 64 letters, digits, _ . -");
		if ((*deciding)++)
			return cc_fail(c, path,
				       "a rule takes one of accept, next, reject, tempfail, "
				       "disconnect, quarantine");
		a->quarantine = strdup(q);
		if (cc_own(c, OWN_MEM, (void *)a->quarantine) < 0)
			return cc_fail(c, path, "out of memory");
		a->decide = FLT_DEC_ACCEPT; /* accepted, and held */
		return 0;
	}
	if (strcmp(key, "route") == 0 || strcmp(key, "bcc") == 0 ||
	    strcmp(key, "rewrite_sender") == 0)
		return message_action(c, path, key, v, a);
	if (strcmp(key, "remove_header") == 0)
		return cc_fail(c, path, "the %s action is not built yet", key);
	if (strcmp(key, "tag") == 0)
		return cc_strings_each(c, path, v, cc_add_tag_set, &a->tags);
	if (strcmp(key, "next") == 0 || d == FLT_DEC_ACCEPT) {
		if (!json_object_is_type(v, json_type_boolean) || !json_object_get_boolean(v))
			return cc_fail(c, path, "expected true");
	} else if (d != FLT_DEC_NONE) {
		if (d == FLT_DEC_DISCONNECT && json_object_is_type(v, json_type_boolean) &&
		    json_object_get_boolean(v))
			v = NULL;
		else if (!json_object_is_type(v, json_type_string))
			return cc_fail(c, path, "expected a reply (\"%s\")", default_reply(d));
		if (reply_compile(c, path, v ? json_object_get_string(v) : default_reply(d), d,
				  &a->reply) < 0)
			return -EINVAL;
	} else {
		return cc_fail(c, path, "unknown action");
	}
	if ((*deciding)++)
		return cc_fail(c, path,
			       "a rule takes one of accept, next, reject, tempfail, disconnect");
	a->decide = d;
	return 0;
}

/* "then": a word, or an object of action keys.  Or (obj_is_rule) the
 * rule's own keys besides "if". */
int cc_action_compile(struct cc *c, const char *path, struct json_object *v, bool obj_is_rule,
		      struct flt_act *a)
{
	int deciding = 0, keys = 0;
	char sub[PATH_MAX_LEN];

	a->session_tags = c->stage <= FLT_STAGE_AUTH;
	if (!obj_is_rule && json_object_is_type(v, json_type_string)) {
		const char *w = json_object_get_string(v);
		enum flt_decide d = decide_of(w);

		if (strcmp(w, "next") == 0)
			return 0;
		if (d == FLT_DEC_NONE)
			return cc_fail(c, path, "unknown action \"%s\"", w);
		a->decide = d;
		return d == FLT_DEC_ACCEPT ? 0
					   : reply_compile(c, path, default_reply(d), d, &a->reply);
	}
	if (!json_object_is_type(v, json_type_object))
		return cc_fail(c, path, "expected an action: a word or a JSON object");
	json_object_object_foreach(v, key, arg)
	{
		if (obj_is_rule && strcmp(key, "if") == 0)
			continue;
		cc_path_key(sub, path, key);
		if (obj_is_rule && !cc_is_action_key(key))
			return cc_fail(c, sub, "unknown key");
		if (action_key(c, sub, key, arg, a, &deciding) < 0)
			return -EINVAL;
		keys++;
	}
	if (!keys)
		return cc_fail(c, path, "no action");
	return 0;
}
