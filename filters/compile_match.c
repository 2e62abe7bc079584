/*
 * filters/compile_match — tables and matchers: each matcher's operand (a
 * name, a list, "*.suffix", "@domain", a regex, a table, a network, a
 * number range) into the data its TEST reads.  Tables are built on their
 * first use, in the form that use needs (networks for client_ip, names for
 * the others), and shared by every rule that names them.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "filters/compile_int.h"

static const struct matcher matchers[] = {
    {"client_ip", FLT_F_CLIENT_IP, OPD_IP, FLT_STAGE_CONNECT, FLT_STAGE_DATA},
    {"listener", FLT_F_LISTENER, OPD_LISTENER, FLT_STAGE_CONNECT, FLT_STAGE_DATA},
    {"tag", FLT_F_TAG, OPD_TAG, FLT_STAGE_CONNECT, FLT_STAGE_DATA},
    {"tls", FLT_F_TLS, OPD_TLS, FLT_STAGE_CONNECT, FLT_STAGE_DATA},
    {"helo", FLT_F_HELO, OPD_DOMAINS, FLT_STAGE_HELO, FLT_STAGE_DATA},
    {"auth_user", FLT_F_AUTH_USER, OPD_NAMES, FLT_STAGE_AUTH, FLT_STAGE_DATA},
    {"sender", FLT_F_SENDER, OPD_ADDRS, FLT_STAGE_MAIL, FLT_STAGE_DATA},
    {"sender_domain", FLT_F_SENDER_DOMAIN, OPD_DOMAINS, FLT_STAGE_MAIL, FLT_STAGE_DATA},
    {"size", FLT_F_SIZE, OPD_NUM, FLT_STAGE_MAIL, FLT_STAGE_DATA},
    {"header", FLT_F_HEADER, OPD_HEADER, FLT_STAGE_DATA, FLT_STAGE_DATA},
    {"body", FLT_F_BODY, OPD_BODY, FLT_STAGE_DATA, FLT_STAGE_DATA},
    {"rcpt", FLT_F_RCPT, OPD_ADDRS, FLT_STAGE_RCPT, FLT_STAGE_RCPT},
    {"rcpt_domain", FLT_F_RCPT_DOMAIN, OPD_DOMAINS, FLT_STAGE_RCPT, FLT_STAGE_RCPT},
    {"rcpt_count", FLT_F_RCPT_COUNT, OPD_NUM, FLT_STAGE_RCPT, FLT_STAGE_DATA},
};
const struct matcher *cc_matcher_find(const char *name)
{
	for (size_t i = 0; i < sizeof(matchers) / sizeof(matchers[0]); i++)
		if (strcmp(name, matchers[i].name) == 0)
			return &matchers[i];
	return NULL;
}

/* ---- tables ------------------------------------------------------------- */

/* Strings here hold no NUL: flt_compile refused one first (no_nul).
 * "inline": a list of entries, or an object of entry -> value (a map, as
 * sender.matches_login reads).  The strings stay in the JSON. */
static int inline_parse(struct cc *c, const char *path, struct json_object *v, const char ***keys,
			const char ***vals, size_t *n)
{
	char e[PATH_MAX_LEN];
	size_t i = 0;

	if (!json_object_is_type(v, json_type_array) && !json_object_is_type(v, json_type_object))
		return cc_fail(c, path, "expected a list of strings or an object of strings");
	*n = json_object_is_type(v, json_type_array) ? json_object_array_length(v)
						     : (size_t)json_object_object_length(v);
	*keys = calloc(*n + 1, sizeof(**keys));
	*vals = calloc(*n + 1, sizeof(**vals));
	if (!*keys || !*vals)
		return cc_fail(c, path, "out of memory");
	if (json_object_is_type(v, json_type_array)) {
		for (i = 0; i < *n; i++) {
			struct json_object *x = json_object_array_get_idx(v, i);

			cc_path_index(e, path, i);
			if (!json_object_is_type(x, json_type_string))
				return cc_fail(c, e, "expected a string");
			(*keys)[i] = json_object_get_string(x);
		}
		return 0;
	}
	json_object_object_foreach(v, key, x)
	{
		cc_path_key(e, path, key);
		if (!json_object_is_type(x, json_type_string))
			return cc_fail(c, e, "expected a string");
		(*keys)[i] = key;
		(*vals)[i++] = json_object_get_string(x);
	}
	return 0;
}

static int table_load(struct cc *c, const char *name, struct json_object *def)
{
	char path[PATH_MAX_LEN], sub[PATH_MAX_LEN];
	const char *file = NULL, **keys = NULL, **vals = NULL;
	bool given = false;
	size_t n = 0;
	int rc = 0;

	cc_path_key(path, "tables", name);
	if (!json_object_is_type(def, json_type_object))
		return cc_fail(c, path, "expected {\"inline\": [...]} or {\"file\": \"/path\"}");
	json_object_object_foreach(def, key, v)
	{
		cc_path_key(sub, path, key);
		if (strcmp(key, "kv") == 0) {
			rc = cc_fail(c, sub, "kv tables are not built yet");
		} else if (strcmp(key, "file") == 0) {
			if (!json_object_is_type(v, json_type_string) ||
			    json_object_get_string_len(v) == 0)
				rc = cc_fail(c, sub, "expected a file name");
			file = json_object_get_string(v);
		} else if (strcmp(key, "inline") == 0) {
			given = true;
			rc = inline_parse(c, sub, v, &keys, &vals, &n);
		} else {
			rc = cc_fail(c, sub, "unknown key");
		}
		if (rc < 0)
			break;
	}
	if (rc == 0 && given == !!file)
		rc = cc_fail(c, path, "expected one of \"inline\" and \"file\"");
	if (rc == 0) {
		struct flt_rules *r = c->r;

		r->tables[r->table_count] = flt_table_new(name, file, keys, vals, (uint32_t)n);
		if (!r->tables[r->table_count])
			rc = cc_fail(c, path, "out of memory");
		else
			r->table_count++;
	}
	free(keys);
	free(vals);
	return rc;
}

/* "tables": {"NAME": {"inline": [...]} or {"file": "/path"}}.  Their
 * contents are built after the chains, once their uses are known. */
int cc_tables_load(struct cc *c, struct json_object *tables)
{
	struct flt_rules *r = c->r;

	if (!tables)
		return 0;
	if (!json_object_is_type(tables, json_type_object))
		return cc_fail(c, "tables", "expected a JSON object");
	r->tables = calloc((size_t)json_object_object_length(tables) + 1, sizeof(*r->tables));
	if (!r->tables)
		return cc_fail(c, "tables", "out of memory");
	json_object_object_foreach(tables, name, def)
	{
		if (table_load(c, name, def) < 0)
			return -EINVAL;
	}
	return 0;
}

/* The table a rule names, marked with what it is used as. */
struct flt_table *cc_table_use(struct cc *c, const char *path, const char *name, unsigned use)
{
	for (uint32_t i = 0; i < c->r->table_count; i++)
		if (strcmp(flt_table_name(c->r->tables[i]), name) == 0) {
			flt_table_use(c->r->tables[i], use);
			return c->r->tables[i];
		}
	cc_fail(c, path, "no table named \"%s\"", name);
	return NULL;
}

static const char *set_kind_what(enum flt_set_kind kind)
{
	return kind == FLT_SET_DOMAINS ? "a domain or \"*.domain\""
	       : kind == FLT_SET_ADDRS ? "an address or \"@domain\""
				       : "a name without spaces";
}

static int cidr_fail(struct cc *c, const char *path, int rc)
{
	if (rc == -ERANGE)
		return cc_fail(c, path, "host bits set: write the network (192.0.2.0/24)");
	if (rc == -EINVAL)
		return cc_fail(c, path, "expected an IP address or network (\"192.0.2.0/24\")");
	return cc_fail(c, path, "out of memory");
}

/* ---- operands --------------------------------------------------------------- */

/* A string or a non-empty list of strings; each one handed to add(). */

int cc_strings_each(struct cc *c, const char *path, struct json_object *v, add_fn *add, void *to)
{
	char e[PATH_MAX_LEN];

	if (json_object_is_type(v, json_type_string))
		return add(c, path, to, json_object_get_string(v),
			   (size_t)json_object_get_string_len(v));
	if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) == 0)
		return cc_fail(c, path, "expected a string or a non-empty list of strings");
	for (size_t i = 0; i < json_object_array_length(v); i++) {
		struct json_object *s = json_object_array_get_idx(v, i);
		int rc;

		cc_path_index(e, path, i);
		if (!json_object_is_type(s, json_type_string))
			return cc_fail(c, e, "expected a string");
		rc =
		    add(c, e, to, json_object_get_string(s), (size_t)json_object_get_string_len(s));
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int add_to_set(struct cc *c, const char *path, void *to, const char *s, size_t len)
{
	struct flt_set *set = to;
	int rc = flt_set_add(set, s, len);

	if (rc == -EINVAL)
		return cc_fail(c, path, "expected %s", set_kind_what(flt_set_kind_of(set)));
	return rc < 0 ? cc_fail(c, path, "out of memory") : 0;
}

static int add_to_cidrs(struct cc *c, const char *path, void *to, const char *s, size_t len)
{
	int rc = flt_cidrs_add(to, s, len);

	return rc < 0 ? cidr_fail(c, path, rc) : 0;
}

static int add_listener(struct cc *c, const char *path, void *to, const char *s, size_t len)
{
	uint64_t *mask = to;

	for (uint32_t i = 0; i < c->cfg->listener_count; i++)
		if (strlen(c->cfg->listeners[i].name) == len &&
		    strncasecmp(c->cfg->listeners[i].name, s, len) == 0) {
			*mask |= 1ull << i;
			return 0;
		}
	return cc_fail(c, path, "no listener named \"%.*s\"", (int)(len > 64 ? 64 : len), s);
}

/* The tag's bit; registered on first sight, by a rule that sets it or one
 * that matches it (checked at the end: a matched tag must be set). */
static int tag_bit(struct cc *c, const char *path, const char *s, size_t len, bool set,
		   uint64_t *bit)
{
	struct flt_rules *r = c->r;
	uint32_t i;

	if (len == 0 || len > 64)
		return cc_fail(c, path, "expected a tag name of 1 to 64 characters");
	for (size_t k = 0; k < len; k++)
		if (!(s[k] == '_' || s[k] == '-' || s[k] == '.' || (s[k] >= '0' && s[k] <= '9') ||
		      ((s[k] | 0x20) >= 'a' && (s[k] | 0x20) <= 'z')))
			return cc_fail(c, path, "a tag name is letters, digits, '_', '-' and '.'");
	for (i = 0; i < r->tag_count; i++)
		if (strlen(r->tag_names[i]) == len && strncasecmp(r->tag_names[i], s, len) == 0)
			break;
	if (i == r->tag_count) {
		if (i == FLT_TAGS_MAX)
			return cc_fail(c, path, "more than %d tags", FLT_TAGS_MAX);
		r->tag_names[i] = strndup(s, len);
		if (!r->tag_names[i])
			return cc_fail(c, path, "out of memory");
		r->tag_count++;
	}
	if (set)
		c->tags[i].set = true;
	else if (!c->tags[i].first_match[0])
		snprintf(c->tags[i].first_match, PATH_MAX_LEN, "%s", path);
	*bit = 1ull << i;
	return 0;
}

static int add_tag_match(struct cc *c, const char *path, void *to, const char *s, size_t len)
{
	uint64_t bit;
	int rc = tag_bit(c, path, s, len, false, &bit);

	*(uint64_t *)to |= bit;
	return rc;
}

int cc_add_tag_set(struct cc *c, const char *path, void *to, const char *s, size_t len)
{
	uint64_t bit;
	int rc = tag_bit(c, path, s, len, true, &bit);

	*(uint64_t *)to |= bit;
	return rc;
}

static int add_tls_version(struct cc *c, const char *path, void *to, const char *s, size_t len)
{
	static const char *const versions[] = {"1.0", "1.1", "1.2", "1.3"};

	for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++)
		if (len == 3 && memcmp(s, versions[i], 3) == 0)
			return add_to_set(c, path, to, s, len);
	return cc_fail(c, path, "expected a TLS version: \"1.0\", \"1.1\", \"1.2\" or \"1.3\"");
}

/* A number, or {"gt","ge","lt","le","eq"} (all must hold), as lo..hi. */
static int range_parse(struct cc *c, const char *path, struct json_object *v, uint64_t *lo,
		       uint64_t *hi)
{
	char sub[PATH_MAX_LEN];

	*lo = 0;
	*hi = UINT64_MAX;
	if (json_object_is_type(v, json_type_int)) {
		if (json_object_get_int64(v) < 0)
			return cc_fail(c, path, "expected a number of 0 or more");
		*lo = *hi = (uint64_t)json_object_get_int64(v);
		return 0;
	}
	if (!json_object_is_type(v, json_type_object) || json_object_object_length(v) == 0)
		return cc_fail(c, path,
			       "expected a number or {\"gt\"|\"ge\"|\"lt\"|\"le\"|\"eq\": N}");
	json_object_object_foreach(v, key, n)
	{
		int64_t x;

		cc_path_key(sub, path, key);
		if (!json_object_is_type(n, json_type_int) || (x = json_object_get_int64(n)) < 0)
			return cc_fail(c, sub, "expected a number of 0 or more");
		if (strcmp(key, "gt") == 0) {
			if ((uint64_t)x == UINT64_MAX || (uint64_t)x + 1 > *lo)
				*lo = (uint64_t)x + 1;
		} else if (strcmp(key, "ge") == 0) {
			if ((uint64_t)x > *lo)
				*lo = (uint64_t)x;
		} else if (strcmp(key, "lt") == 0) {
			if (x == 0)
				return cc_fail(c, sub, "never holds");
			if ((uint64_t)x - 1 < *hi)
				*hi = (uint64_t)x - 1;
		} else if (strcmp(key, "le") == 0) {
			if ((uint64_t)x < *hi)
				*hi = (uint64_t)x;
		} else if (strcmp(key, "eq") == 0) {
			if ((uint64_t)x > *lo)
				*lo = (uint64_t)x;
			if ((uint64_t)x < *hi)
				*hi = (uint64_t)x;
		} else {
			return cc_fail(c, sub, "unknown key (gt, ge, lt, le, eq)");
		}
	}
	if (*lo > *hi)
		return cc_fail(c, path, "never holds");
	return 0;
}

static int bool_test(struct cc *c, const char *path, enum flt_field field, struct json_object *v,
		     uint32_t yes, uint32_t no)
{
	struct flt_op *op = NULL;

	if (cc_emit_test(c, path, field, FLT_M_BOOL, yes, no, &op) < 0)
		return -EINVAL;
	op->u.b = json_object_get_boolean(v);
	return 0;
}

static enum flt_set_kind kind_of(const struct matcher *m)
{
	return m->operand == OPD_DOMAINS ? FLT_SET_DOMAINS
	       : m->operand == OPD_ADDRS ? FLT_SET_ADDRS
					 : FLT_SET_NAMES;
}

static int regex_of(struct cc *c, const char *path, struct json_object *v,
		    const struct flt_rx **out)
{
	char why[200];
	struct flt_rx *rx;

	if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) == 0)
		return cc_fail(c, path, "expected a regular expression");
	rx = flt_rx_new(json_object_get_string(v), why, sizeof(why));
	if (!rx)
		return cc_fail(c, path, "%s", why);
	if (cc_own(c, OWN_RX, rx) < 0)
		return cc_fail(c, path, "out of memory");
	*out = rx;
	return 0;
}

/* {"table": NAME}: the table in the form the matcher reads. */
static int table_test(struct cc *c, const char *path, const struct matcher *m,
		      struct json_object *arg, uint32_t yes, uint32_t no)
{
	bool ip = m->operand == OPD_IP;
	struct flt_table *t;
	struct flt_op *op = NULL;

	if (!json_object_is_type(arg, json_type_string))
		return cc_fail(c, path, "expected a table name");
	t = cc_table_use(c, path, json_object_get_string(arg),
			 ip ? FLT_USE_CIDRS : 1u << kind_of(m));
	if (!t || cc_emit_test(c, path, m->field, ip ? FLT_M_TCIDR : FLT_M_TSET, yes, no, &op) < 0)
		return -EINVAL;
	op->kind = (uint8_t)kind_of(m);
	op->u.table = t;
	return 0;
}

/* sender {"matches_login": true/false, or {"table": T}}: the login, or one
 * T lists for the sender (or its "@domain"), as Postfix's
 * smtpd_sender_login_maps. */
static int login_test(struct cc *c, const char *path, struct json_object *arg, uint32_t yes,
		      uint32_t no)
{
	struct json_object *tname;
	struct flt_op *op = NULL;
	char sub[PATH_MAX_LEN];
	struct flt_table *t;

	if (c->stage < FLT_STAGE_MAIL)
		return cc_fail(c, path, "not known at the %s stage", flt_stage_names[c->stage]);
	if (json_object_is_type(arg, json_type_boolean)) {
		if (cc_emit_test(c, path, FLT_F_SENDER_LOGIN, FLT_M_BOOL, yes, no, &op) < 0)
			return -EINVAL;
		op->u.b = json_object_get_boolean(arg);
		return 0;
	}
	if (!json_object_is_type(arg, json_type_object) || json_object_object_length(arg) != 1 ||
	    !json_object_object_get_ex(arg, "table", &tname) ||
	    !json_object_is_type(tname, json_type_string))
		return cc_fail(c, path, "expected true, false or {\"table\": NAME}");
	cc_path_key(sub, path, "table");
	t = cc_table_use(c, sub, json_object_get_string(tname), 1u << FLT_SET_ADDRS);
	if (!t || cc_emit_test(c, sub, FLT_F_SENDER_LOGIN, FLT_M_LOGIN, yes, no, &op) < 0)
		return -EINVAL;
	op->u.table = t;
	return 0;
}

/* {"regex": ...}, {"table": ...} or {"matches_login": ...}: the one key. */
static int operand_object(struct cc *c, const char *path, const struct matcher *m,
			  struct json_object *v, uint32_t yes, uint32_t no)
{
	char sub[PATH_MAX_LEN];
	struct flt_op *op = NULL;
	const struct flt_rx *rx = NULL;
	const char *key = NULL;
	struct json_object *arg = NULL;

	if (json_object_object_length(v) != 1)
		return cc_fail(c, path, "expected one of \"regex\", \"table\"%s",
			       m->field == FLT_F_SENDER ? ", \"matches_login\"" : "");
	json_object_object_foreach(v, k, a)
	{
		key = k;
		arg = a;
	}
	cc_path_key(sub, path, key);
	if (strcmp(key, "regex") == 0 && m->operand == OPD_IP)
		return cc_fail(c, sub, "client_ip takes networks or a table, not a regex");
	if (strcmp(key, "regex") == 0) {
		if (regex_of(c, sub, arg, &rx) < 0 ||
		    cc_emit_test(c, sub, m->field, FLT_M_RX, yes, no, &op) < 0)
			return -EINVAL;
		op->u.rx = rx;
		return 0;
	}
	if (strcmp(key, "table") == 0)
		return table_test(c, sub, m, arg, yes, no);
	if (strcmp(key, "matches_login") == 0 && m->field == FLT_F_SENDER)
		return login_test(c, sub, arg, yes, no);
	return cc_fail(c, sub, "unknown key");
}

static int add_text(struct cc *c, const char *path, void *to, const char *s, size_t len)
{
	int rc = flt_set_add(to, s, len);

	if (rc == -EINVAL)
		return cc_fail(c, path, "expected a non-empty value");
	return rc < 0 ? cc_fail(c, path, "out of memory") : 0;
}

/* {"header": {"name": N}} (the field is there), with "regex": R (its
 * unfolded value matches) or "value": V or [V...] (equals one, case
 * folded). */
static int header_compile(struct cc *c, const char *path, struct json_object *v, uint32_t yes,
			  uint32_t no)
{
	struct flt_hdr_test *h;
	struct flt_op *op = NULL;
	char sub[PATH_MAX_LEN];
	bool named = false;

	if (!json_object_is_type(v, json_type_object))
		return cc_fail(c, path, "expected {\"name\": N, \"regex\" or \"value\": ...}");
	h = calloc(1, sizeof(*h));
	if (cc_own(c, OWN_MEM, h) < 0)
		return cc_fail(c, path, "out of memory");
	json_object_object_foreach(v, key, x)
	{
		cc_path_key(sub, path, key);
		if (strcmp(key, "name") == 0) {
			const char *n = json_object_is_type(x, json_type_string)
					    ? json_object_get_string(x)
					    : NULL;

			if (!n || !*n || strlen(n) > FLT_HDR_NAME_MAX || strpbrk(n, ": \t"))
				return cc_fail(c, sub, "expected a header field name");
			h->name_len = strlen(n);
			memcpy(h->name, n, h->name_len + 1);
			named = true;
		} else if (strcmp(key, "regex") == 0 && !h->set && !h->rx) {
			if (regex_of(c, sub, x, &h->rx) < 0)
				return -EINVAL;
		} else if (strcmp(key, "value") == 0 && !h->set && !h->rx) {
			struct flt_set *set = flt_set_new(FLT_SET_TEXT, 4);

			if (cc_own(c, OWN_SET, set) < 0)
				return cc_fail(c, sub, "out of memory");
			if (cc_strings_each(c, sub, x, add_text, set) < 0)
				return -EINVAL;
			h->set = set;
		} else if (strcmp(key, "regex") == 0 || strcmp(key, "value") == 0) {
			return cc_fail(c, sub, "one of \"regex\" and \"value\"");
		} else {
			return cc_fail(c, sub, "unknown key");
		}
	}
	if (!named)
		return cc_fail(c, path, "expected \"name\"");
	if (cc_emit_test(c, path, FLT_F_HEADER, FLT_M_HEADER, yes, no, &op) < 0)
		return -EINVAL;
	op->u.hdr = h;
	return 0;
}

static int body_compile(struct cc *c, const char *path, struct json_object *v, uint32_t yes,
			uint32_t no)
{
	struct json_object *rx;
	struct flt_op *op = NULL;
	const struct flt_rx *r = NULL;
	char sub[PATH_MAX_LEN];

	if (!json_object_is_type(v, json_type_object) || json_object_object_length(v) != 1 ||
	    !json_object_object_get_ex(v, "regex", &rx))
		return cc_fail(c, path, "expected {\"regex\": R}");
	cc_path_key(sub, path, "regex");
	if (regex_of(c, sub, rx, &r) < 0 ||
	    cc_emit_test(c, path, FLT_F_BODY, FLT_M_BODY, yes, no, &op) < 0)
		return -EINVAL;
	op->u.rx = r;
	return 0;
}

/* A name, a list or an object operand of a string matcher. */
static int names_test(struct cc *c, const char *path, const struct matcher *m,
		      struct json_object *v, uint32_t yes, uint32_t no)
{
	struct flt_op *op = NULL;
	struct flt_set *s;

	if (m->field == FLT_F_AUTH_USER && json_object_is_type(v, json_type_boolean))
		return bool_test(c, path, FLT_F_AUTHED, v, yes, no);
	if (json_object_is_type(v, json_type_object))
		return operand_object(c, path, m, v, yes, no);
	s = flt_set_new(kind_of(m), json_object_is_type(v, json_type_array)
					? (uint32_t)json_object_array_length(v)
					: 1);
	if (cc_own(c, OWN_SET, s) < 0)
		return cc_fail(c, path, "out of memory");
	if (cc_strings_each(c, path, v, add_to_set, s) < 0 ||
	    cc_emit_test(c, path, m->field, FLT_M_SET, yes, no, &op) < 0)
		return -EINVAL;
	op->u.set = s;
	return 0;
}

static int ip_test(struct cc *c, const char *path, const struct matcher *m, struct json_object *v,
		   uint32_t yes, uint32_t no)
{
	struct flt_op *op = NULL;
	struct flt_cidrs *n;

	if (json_object_is_type(v, json_type_object))
		return operand_object(c, path, m, v, yes, no);
	n = flt_cidrs_new();
	if (cc_own(c, OWN_CIDRS, n) < 0)
		return cc_fail(c, path, "out of memory");
	if (cc_strings_each(c, path, v, add_to_cidrs, n) < 0)
		return -EINVAL;
	flt_cidrs_done(n);
	if (cc_emit_test(c, path, m->field, FLT_M_CIDR, yes, no, &op) < 0)
		return -EINVAL;
	op->u.cidr = n;
	return 0;
}

static int mask_test(struct cc *c, const char *path, const struct matcher *m, struct json_object *v,
		     uint32_t yes, uint32_t no)
{
	struct flt_op *op = NULL;
	uint64_t mask = 0;

	if (cc_strings_each(c, path, v, m->operand == OPD_TAG ? add_tag_match : add_listener,
			    &mask) < 0 ||
	    cc_emit_test(c, path, m->field, FLT_M_MASK, yes, no, &op) < 0)
		return -EINVAL;
	op->u.mask = mask;
	return 0;
}

/* tls: true/false, or {"version": V or [V...]}. */
static int tls_test(struct cc *c, const char *path, struct json_object *v, uint32_t yes,
		    uint32_t no)
{
	char sub[PATH_MAX_LEN];
	struct flt_op *op = NULL;
	struct flt_set *s;

	if (json_object_is_type(v, json_type_boolean))
		return bool_test(c, path, FLT_F_TLS, v, yes, no);
	if (!json_object_is_type(v, json_type_object) || json_object_object_length(v) != 1)
		return cc_fail(c, path, "expected true, false or {\"version\": ...}");
	json_object_object_foreach(v, key, x)
	{
		(void)x;
		if (strcmp(key, "version") != 0) {
			cc_path_key(sub, path, key);
			return cc_fail(c, sub, "unknown key (version)");
		}
	}
	cc_path_key(sub, path, "version");
	s = flt_set_new(FLT_SET_NAMES, 4);
	if (cc_own(c, OWN_SET, s) < 0)
		return cc_fail(c, sub, "out of memory");
	if (cc_strings_each(c, sub, json_object_object_get(v, "version"), add_tls_version, s) < 0 ||
	    cc_emit_test(c, sub, FLT_F_TLS_VERSION, FLT_M_SET, yes, no, &op) < 0)
		return -EINVAL;
	op->u.set = s;
	return 0;
}

int cc_matcher_compile(struct cc *c, const char *path, const struct matcher *m,
		       struct json_object *v, uint32_t yes, uint32_t no)
{
	struct flt_op *op = NULL;
	uint64_t lo, hi;
	/* auth_user true/false (authenticated or not) is known at every stage. */
	bool authed_only = m->field == FLT_F_AUTH_USER && json_object_is_type(v, json_type_boolean);

	if (!authed_only && (c->stage < m->from || c->stage > m->until))
		return cc_fail(c, path, "not known at the %s stage", flt_stage_names[c->stage]);
	switch (m->operand) {
	case OPD_NAMES:
	case OPD_DOMAINS:
	case OPD_ADDRS:
		return names_test(c, path, m, v, yes, no);
	case OPD_IP:
		return ip_test(c, path, m, v, yes, no);
	case OPD_NUM:
		if (range_parse(c, path, v, &lo, &hi) < 0 ||
		    cc_emit_test(c, path, m->field, FLT_M_RANGE, yes, no, &op) < 0)
			return -EINVAL;
		op->u.range.lo = lo;
		op->u.range.hi = hi;
		return 0;
	case OPD_LISTENER:
	case OPD_TAG:
		return mask_test(c, path, m, v, yes, no);
	case OPD_HEADER:
		return header_compile(c, path, v, yes, no);
	case OPD_BODY:
		return body_compile(c, path, v, yes, no);
	case OPD_TLS:
		return tls_test(c, path, v, yes, no);
	}
	return cc_fail(c, path, "unknown matcher");
}
