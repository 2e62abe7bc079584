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

#include "filters/compile_int.h"

/* ---- actions ------------------------------------------------------------------ */

static const char *const reply_fields[FLT_RF_COUNT] = {
    "client_ip", "helo", "sender", "rcpt", "listener", "auth_user", "hostname",
};

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
	/* The enhanced code: "c.sss.ddd", c the class (RFC 3463). */
	if (text[0] >= '0' && text[0] <= '9' && memchr(text, '.', strcspn(text, " "))) {
		size_t i = 0, parts = 0, digits = 0;

		for (; text[i] && text[i] != ' '; i++) {
			if (text[i] == '.') {
				if (!digits)
					break;
				parts++;
				digits = 0;
			} else if (text[i] >= '0' && text[i] <= '9' && digits < 3) {
				digits++;
			} else {
				break;
			}
		}
		if (parts != 2 || !digits || (text[i] && text[i] != ' ') ||
		    (text[0] != '2' && text[0] != '4' && text[0] != '5') || text[1] != '.')
			return cc_fail(c, path, "bad enhanced status code (expected \"%c.x.y\")",
				       cls);
		if (text[0] != cls)
			return cc_fail(c, path,
				       "the enhanced code's class %c does not match the code %.3s",
				       text[0], s);
		t[o++] = ' ';
		memcpy(t + o, text, i);
		o += i;
		text += i;
		if (*text == ' ')
			text++;
	} else {
		const char *def = cls == '5'		      ? "5.7.1"
				  : strncmp(s, "421", 3) == 0 ? "4.7.0"
							      : "4.7.1";

		t[o++] = ' ';
		memcpy(t + o, def, 5);
		o += 5;
	}
	if (!*text) {
		const char *def = d == FLT_DEC_REJECT	  ? "Rejected by policy"
				  : d == FLT_DEC_TEMPFAIL ? "Try again later"
							  : "Closing connection";

		snprintf(t + o, REPLY_TEXT_MAX + 64 - o, " %s", def);
		*out = t;
		return 0;
	}
	t[o++] = ' ';
	while (*text) {
		const char *end;
		size_t f;

		if (text[0] != '%' || text[1] != '{') {
			t[o++] = *text++;
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
		t[o++] = FLT_REPLY_FIELD;
		t[o++] = (char)(f + 1);
		text = end + 1;
	}
	t[o] = '\0';
	*out = t;
	return 0;
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
	       strcmp(key, "tarpit_ms") == 0 || strcmp(key, "tag") == 0;
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
