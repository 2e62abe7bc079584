/*
 * filters/compile — the JSON of "tables", "filters" and
 * "listeners[].filters" into flat programs (prog.h), once, at load.
 *
 * Every error is one line "<json path>: <what>", the path as the operator
 * wrote it (`filters.rcpt[2].if.not.helo.regex`).  Conditions compile into
 * TESTs whose targets are labels, placed as the code is emitted and
 * resolved to pcs at the end of each chain: `all` chains its parts through
 * the false label, `any` through the true one, `not` swaps them.  Tables
 * are built on their first use, in the form that use needs (networks for
 * client_ip, names for the others), and shared by every rule that names
 * them.  Thread: main.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filters/prog.h"

#define PATH_MAX_LEN   256
#define REPLY_TEXT_MAX 400
#define TARPIT_MAX_MS  300000
#define NO_LABEL       UINT32_MAX

enum owned_kind { OWN_MEM = 0, OWN_SET, OWN_CIDRS, OWN_RX };

struct flt_owned {
	enum owned_kind kind;
	void *p;
	struct flt_owned *next;
};

/* How a matcher reads its operand. */
enum operand {
	OPD_NAMES = 0, /* exact names: string, list, regex, table */
	OPD_DOMAINS,   /* as NAMES, and "*.suffix" */
	OPD_ADDRS,     /* as NAMES, and "@domain" */
	OPD_IP,	       /* networks: string, list, table */
	OPD_NUM,       /* number or {"gt": ...} */
	OPD_LISTENER,  /* listener names */
	OPD_TAG,       /* tag names */
	OPD_TLS,       /* true/false or {"version": ...} */
};

struct matcher {
	const char *name;
	enum flt_field field;
	enum operand operand;
	enum flt_stage from; /* known from this stage on */
	enum flt_stage until;
};

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
    {"rcpt", FLT_F_RCPT, OPD_ADDRS, FLT_STAGE_RCPT, FLT_STAGE_RCPT},
    {"rcpt_domain", FLT_F_RCPT_DOMAIN, OPD_DOMAINS, FLT_STAGE_RCPT, FLT_STAGE_RCPT},
    {"rcpt_count", FLT_F_RCPT_COUNT, OPD_NUM, FLT_STAGE_RCPT, FLT_STAGE_RCPT},
};

/* A table, built per use on demand. */
struct table {
	const char *name;
	struct json_object *entries; /* the "inline" array */
	struct flt_set *sets[3];     /* by enum flt_set_kind */
	struct flt_cidrs *cidrs;
};

struct tag_use {
	bool set;
	char first_match[PATH_MAX_LEN]; /* where it is matched first */
};

struct cc {
	const struct rmx_config *cfg;
	struct flt_rules *r;
	char *err;
	size_t err_len;
	struct table *tables;
	uint32_t table_count;
	struct tag_use tags[FLT_TAGS_MAX];
	/* the chain being compiled */
	enum flt_stage stage;
	uint32_t rule;
	struct flt_op *ops;
	uint32_t n, cap;
	uint32_t *labels;
	uint32_t nlabels, labels_cap;
};

static int fail(struct cc *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct cc *c, const char *path, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!c->err || !c->err_len)
		return -EINVAL;
	n = snprintf(c->err, c->err_len, "%s: ", path);
	if (n >= 0 && (size_t)n < c->err_len) {
		va_start(ap, fmt);
		vsnprintf(c->err + n, c->err_len - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* out = a + b, cut to PATH_MAX_LEN - 1 bytes (an error line's path). */
static void path_cat(char *out, const char *a, const char *b)
{
	size_t na = strnlen(a, PATH_MAX_LEN - 1), nb = strnlen(b, PATH_MAX_LEN - 1 - na);

	memmove(out, a, na);
	memcpy(out + na, b, nb);
	out[na + nb] = '\0';
}

static void path_key(char *out, const char *path, const char *key)
{
	char k[PATH_MAX_LEN];

	path_cat(k, *path ? "." : "", key);
	path_cat(out, path, k);
}

static void path_index(char *out, const char *path, size_t i)
{
	char k[32];

	snprintf(k, sizeof(k), "[%zu]", i);
	path_cat(out, path, k);
}

static int own(struct cc *c, enum owned_kind kind, void *p)
{
	struct flt_owned *o;

	if (!p)
		return -ENOMEM;
	o = malloc(sizeof(*o));
	if (!o) {
		switch (kind) {
		case OWN_MEM:
			free(p);
			break;
		case OWN_SET:
			flt_set_free(p);
			break;
		case OWN_CIDRS:
			flt_cidrs_free(p);
			break;
		case OWN_RX:
			flt_rx_free(p);
			break;
		}
		return -ENOMEM;
	}
	*o = (struct flt_owned){kind, p, c->r->owned};
	c->r->owned = o;
	return 0;
}

/* ---- emitting ------------------------------------------------------------ */

static uint32_t label_new(struct cc *c)
{
	if (c->nlabels == c->labels_cap) {
		uint32_t cap = c->labels_cap ? c->labels_cap * 2 : 64;
		uint32_t *v = realloc(c->labels, cap * sizeof(*v));

		if (!v)
			return NO_LABEL;
		c->labels = v;
		c->labels_cap = cap;
	}
	c->labels[c->nlabels] = NO_LABEL;
	return c->nlabels++;
}

static void label_place(struct cc *c, uint32_t l)
{
	c->labels[l] = c->n;
}

static struct flt_op *emit(struct cc *c, enum flt_opcode code)
{
	struct flt_op *op = NULL;

	if (c->n == c->cap) {
		uint32_t cap = c->cap ? c->cap * 2 : 64;
		struct flt_op *v = realloc(c->ops, cap * sizeof(*v));

		if (!v)
			return NULL;
		c->ops = v;
		c->cap = cap;
	}
	op = &c->ops[c->n++];
	memset(op, 0, sizeof(*op));
	op->code = (uint8_t)code;
	op->rule = c->rule;
	return op;
}

static int emit_test(struct cc *c, const char *path, enum flt_field field, enum flt_how how,
		     uint32_t yes, uint32_t no, struct flt_op **out)
{
	struct flt_op *op = emit(c, FLT_OP_TEST);

	if (!op)
		return fail(c, path, "out of memory");
	op->field = (uint8_t)field;
	op->how = (uint8_t)how;
	op->yes = yes;
	op->no = no;
	*out = op;
	return 0;
}

/* ---- tables ------------------------------------------------------------- */

static int tables_load(struct cc *c, struct json_object *tables)
{
	size_t i = 0;

	if (!tables)
		return 0;
	if (!json_object_is_type(tables, json_type_object))
		return fail(c, "tables", "expected a JSON object");
	c->tables = calloc((size_t)json_object_object_length(tables) + 1, sizeof(*c->tables));
	if (!c->tables)
		return fail(c, "tables", "out of memory");
	json_object_object_foreach(tables, name, def)
	{
		char path[PATH_MAX_LEN], sub[PATH_MAX_LEN];
		struct json_object *entries = NULL;

		path_key(path, "tables", name);
		if (!json_object_is_type(def, json_type_object))
			return fail(c, path, "expected a JSON object");
		json_object_object_foreach(def, key, v)
		{
			path_key(sub, path, key);
			if (strcmp(key, "file") == 0 || strcmp(key, "kv") == 0)
				return fail(c, sub, "%s tables are not built yet; use \"inline\"",
					    key);
			if (strcmp(key, "inline") != 0)
				return fail(c, sub, "unknown key");
			if (!json_object_is_type(v, json_type_array))
				return fail(c, sub, "expected an array of strings");
			for (size_t j = 0; j < json_object_array_length(v); j++) {
				char e[PATH_MAX_LEN];

				path_index(e, sub, j);
				if (!json_object_is_type(json_object_array_get_idx(v, j),
							 json_type_string))
					return fail(c, e, "expected a string");
			}
			entries = v;
		}
		if (!entries)
			return fail(c, path, "expected \"inline\"");
		c->tables[i].name = name;
		c->tables[i].entries = entries;
		i++;
	}
	c->table_count = (uint32_t)i;
	return 0;
}

static struct table *table_find(struct cc *c, const char *name)
{
	for (uint32_t i = 0; i < c->table_count; i++)
		if (strcmp(c->tables[i].name, name) == 0)
			return &c->tables[i];
	return NULL;
}

static const char *set_kind_what(enum flt_set_kind kind)
{
	return kind == FLT_SET_DOMAINS ? "a domain or \"*.domain\""
	       : kind == FLT_SET_ADDRS ? "an address or \"@domain\""
				       : "a name without spaces";
}

static int table_set(struct cc *c, const char *path, const char *name, enum flt_set_kind kind,
		     const struct flt_set **out)
{
	struct table *t = table_find(c, name);
	char tpath[PATH_MAX_LEN], e[PATH_MAX_LEN];

	if (!t)
		return fail(c, path, "no table named \"%s\"", name);
	if (!t->sets[kind]) {
		size_t n = json_object_array_length(t->entries);
		struct flt_set *s = flt_set_new(kind, (uint32_t)n);

		if (own(c, OWN_SET, s) < 0)
			return fail(c, path, "out of memory");
		t->sets[kind] = s;
		path_key(tpath, "tables", name);
		path_key(tpath, tpath, "inline");
		for (size_t j = 0; j < n; j++) {
			struct json_object *v = json_object_array_get_idx(t->entries, j);
			int rc = flt_set_add(s, json_object_get_string(v),
					     (size_t)json_object_get_string_len(v));

			path_index(e, tpath, j);
			if (rc == -EINVAL)
				return fail(c, e, "expected %s (used by %s)", set_kind_what(kind),
					    path);
			if (rc < 0)
				return fail(c, e, "out of memory");
		}
	}
	*out = t->sets[kind];
	return 0;
}

static int cidr_fail(struct cc *c, const char *path, int rc)
{
	if (rc == -ERANGE)
		return fail(c, path, "host bits set: write the network (192.0.2.0/24)");
	if (rc == -EINVAL)
		return fail(c, path, "expected an IP address or network (\"192.0.2.0/24\")");
	return fail(c, path, "out of memory");
}

static int table_cidrs(struct cc *c, const char *path, const char *name,
		       const struct flt_cidrs **out)
{
	struct table *t = table_find(c, name);
	char tpath[PATH_MAX_LEN], e[PATH_MAX_LEN];

	if (!t)
		return fail(c, path, "no table named \"%s\"", name);
	if (!t->cidrs) {
		struct flt_cidrs *n = flt_cidrs_new();

		if (own(c, OWN_CIDRS, n) < 0)
			return fail(c, path, "out of memory");
		t->cidrs = n;
		path_key(tpath, "tables", name);
		path_key(tpath, tpath, "inline");
		for (size_t j = 0; j < json_object_array_length(t->entries); j++) {
			struct json_object *v = json_object_array_get_idx(t->entries, j);
			int rc = flt_cidrs_add(n, json_object_get_string(v),
					       (size_t)json_object_get_string_len(v));

			path_index(e, tpath, j);
			if (rc < 0)
				return cidr_fail(c, e, rc);
		}
		flt_cidrs_done(n);
	}
	*out = t->cidrs;
	return 0;
}

/* ---- operands --------------------------------------------------------------- */

/* A string or a non-empty list of strings; each one handed to add(). */
typedef int add_fn(struct cc *c, const char *path, void *to, const char *s, size_t len);

static int strings_each(struct cc *c, const char *path, struct json_object *v, add_fn *add,
			void *to)
{
	char e[PATH_MAX_LEN];

	if (json_object_is_type(v, json_type_string))
		return add(c, path, to, json_object_get_string(v),
			   (size_t)json_object_get_string_len(v));
	if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) == 0)
		return fail(c, path, "expected a string or a non-empty list of strings");
	for (size_t i = 0; i < json_object_array_length(v); i++) {
		struct json_object *s = json_object_array_get_idx(v, i);
		int rc;

		path_index(e, path, i);
		if (!json_object_is_type(s, json_type_string))
			return fail(c, e, "expected a string");
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
		return fail(c, path, "expected %s", set_kind_what(flt_set_kind_of(set)));
	return rc < 0 ? fail(c, path, "out of memory") : 0;
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
		    memcmp(c->cfg->listeners[i].name, s, len) == 0) {
			*mask |= 1ull << i;
			return 0;
		}
	return fail(c, path, "no listener named \"%.*s\"", (int)(len > 64 ? 64 : len), s);
}

/* The tag's bit; registered on first sight, by a rule that sets it or one
 * that matches it (checked at the end: a matched tag must be set). */
static int tag_bit(struct cc *c, const char *path, const char *s, size_t len, bool set,
		   uint64_t *bit)
{
	struct flt_rules *r = c->r;
	uint32_t i;

	if (len == 0 || len > 64)
		return fail(c, path, "expected a tag name of 1 to 64 characters");
	for (size_t k = 0; k < len; k++)
		if (!(s[k] == '_' || s[k] == '-' || s[k] == '.' || (s[k] >= '0' && s[k] <= '9') ||
		      ((s[k] | 0x20) >= 'a' && (s[k] | 0x20) <= 'z')))
			return fail(c, path, "a tag name is letters, digits, '_', '-' and '.'");
	for (i = 0; i < r->tag_count; i++)
		if (strlen(r->tag_names[i]) == len && memcmp(r->tag_names[i], s, len) == 0)
			break;
	if (i == r->tag_count) {
		if (i == FLT_TAGS_MAX)
			return fail(c, path, "more than %d tags", FLT_TAGS_MAX);
		r->tag_names[i] = strndup(s, len);
		if (!r->tag_names[i])
			return fail(c, path, "out of memory");
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

static int add_tag_set(struct cc *c, const char *path, void *to, const char *s, size_t len)
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
	return fail(c, path, "expected a TLS version: \"1.0\", \"1.1\", \"1.2\" or \"1.3\"");
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
			return fail(c, path, "expected a number of 0 or more");
		*lo = *hi = (uint64_t)json_object_get_int64(v);
		return 0;
	}
	if (!json_object_is_type(v, json_type_object) || json_object_object_length(v) == 0)
		return fail(c, path,
			    "expected a number or {\"gt\"|\"ge\"|\"lt\"|\"le\"|\"eq\": N}");
	json_object_object_foreach(v, key, n)
	{
		int64_t x;

		path_key(sub, path, key);
		if (!json_object_is_type(n, json_type_int) || (x = json_object_get_int64(n)) < 0)
			return fail(c, sub, "expected a number of 0 or more");
		if (strcmp(key, "gt") == 0) {
			if ((uint64_t)x == UINT64_MAX || (uint64_t)x + 1 > *lo)
				*lo = (uint64_t)x + 1;
		} else if (strcmp(key, "ge") == 0) {
			if ((uint64_t)x > *lo)
				*lo = (uint64_t)x;
		} else if (strcmp(key, "lt") == 0) {
			if (x == 0)
				return fail(c, sub, "never holds");
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
			return fail(c, sub, "unknown key (gt, ge, lt, le, eq)");
		}
	}
	if (*lo > *hi)
		return fail(c, path, "never holds");
	return 0;
}

/* {"regex": ...}, {"table": ...} or {"matches_login": true}: the one key. */
static int operand_object(struct cc *c, const char *path, const struct matcher *m,
			  struct json_object *v, uint32_t yes, uint32_t no)
{
	char sub[PATH_MAX_LEN];
	struct flt_op *op = NULL;
	const char *key = NULL;
	struct json_object *arg = NULL;

	if (json_object_object_length(v) != 1)
		return fail(c, path, "expected one of \"regex\", \"table\"%s",
			    m->field == FLT_F_SENDER ? ", \"matches_login\"" : "");
	json_object_object_foreach(v, k, a)
	{
		key = k;
		arg = a;
	}
	path_key(sub, path, key);
	if (strcmp(key, "regex") == 0) {
		char why[200];
		struct flt_rx *rx;

		if (!json_object_is_type(arg, json_type_string) ||
		    json_object_get_string_len(arg) == 0)
			return fail(c, sub, "expected a regular expression");
		if ((size_t)json_object_get_string_len(arg) != strlen(json_object_get_string(arg)))
			return fail(c, sub, "a NUL byte in the regular expression");
		rx = flt_rx_new(json_object_get_string(arg), why, sizeof(why));
		if (!rx)
			return fail(c, sub, "%s", why);
		if (own(c, OWN_RX, rx) < 0)
			return fail(c, sub, "out of memory");
		if (emit_test(c, sub, m->field, FLT_M_RX, yes, no, &op) < 0)
			return -EINVAL;
		op->u.rx = rx;
		return 0;
	}
	if (strcmp(key, "table") == 0) {
		const char *name = json_object_get_string(arg);

		if (!json_object_is_type(arg, json_type_string))
			return fail(c, sub, "expected a table name");
		if (m->operand == OPD_IP) {
			const struct flt_cidrs *n = NULL;

			if (table_cidrs(c, sub, name, &n) < 0)
				return -EINVAL;
			if (emit_test(c, sub, m->field, FLT_M_CIDR, yes, no, &op) < 0)
				return -EINVAL;
			op->u.cidr = n;
			return 0;
		}
		const struct flt_set *s = NULL;
		enum flt_set_kind kind = m->operand == OPD_DOMAINS ? FLT_SET_DOMAINS
					 : m->operand == OPD_ADDRS ? FLT_SET_ADDRS
								   : FLT_SET_NAMES;

		if (table_set(c, sub, name, kind, &s) < 0)
			return -EINVAL;
		if (emit_test(c, sub, m->field, FLT_M_SET, yes, no, &op) < 0)
			return -EINVAL;
		op->u.set = s;
		return 0;
	}
	if (strcmp(key, "matches_login") == 0 && m->field == FLT_F_SENDER) {
		if (!json_object_is_type(arg, json_type_boolean))
			return fail(c, sub, "expected true or false");
		if (c->stage < FLT_STAGE_MAIL)
			return fail(c, sub, "not known at the %s stage", flt_stage_names[c->stage]);
		if (emit_test(c, sub, FLT_F_SENDER_LOGIN, FLT_M_BOOL, yes, no, &op) < 0)
			return -EINVAL;
		op->u.b = json_object_get_boolean(arg);
		return 0;
	}
	return fail(c, sub, "unknown key");
}

static int matcher_compile(struct cc *c, const char *path, const struct matcher *m,
			   struct json_object *v, uint32_t yes, uint32_t no)
{
	struct flt_op *op = NULL;

	if (c->stage < m->from || c->stage > m->until)
		return fail(c, path, "not known at the %s stage", flt_stage_names[c->stage]);
	switch (m->operand) {
	case OPD_NAMES:
	case OPD_DOMAINS:
	case OPD_ADDRS: {
		enum flt_set_kind kind = m->operand == OPD_DOMAINS ? FLT_SET_DOMAINS
					 : m->operand == OPD_ADDRS ? FLT_SET_ADDRS
								   : FLT_SET_NAMES;
		struct flt_set *s;

		if (m->field == FLT_F_AUTH_USER && json_object_is_type(v, json_type_boolean)) {
			if (emit_test(c, path, FLT_F_AUTHED, FLT_M_BOOL, yes, no, &op) < 0)
				return -EINVAL;
			op->u.b = json_object_get_boolean(v);
			return 0;
		}
		if (json_object_is_type(v, json_type_object))
			return operand_object(c, path, m, v, yes, no);
		s = flt_set_new(kind, json_object_is_type(v, json_type_array)
					  ? (uint32_t)json_object_array_length(v)
					  : 1);
		if (own(c, OWN_SET, s) < 0)
			return fail(c, path, "out of memory");
		if (strings_each(c, path, v, add_to_set, s) < 0)
			return -EINVAL;
		if (emit_test(c, path, m->field, FLT_M_SET, yes, no, &op) < 0)
			return -EINVAL;
		op->u.set = s;
		return 0;
	}
	case OPD_IP: {
		struct flt_cidrs *n;

		if (json_object_is_type(v, json_type_object))
			return operand_object(c, path, m, v, yes, no);
		n = flt_cidrs_new();
		if (own(c, OWN_CIDRS, n) < 0)
			return fail(c, path, "out of memory");
		if (strings_each(c, path, v, add_to_cidrs, n) < 0)
			return -EINVAL;
		flt_cidrs_done(n);
		if (emit_test(c, path, m->field, FLT_M_CIDR, yes, no, &op) < 0)
			return -EINVAL;
		op->u.cidr = n;
		return 0;
	}
	case OPD_NUM: {
		uint64_t lo, hi;

		if (range_parse(c, path, v, &lo, &hi) < 0)
			return -EINVAL;
		if (emit_test(c, path, m->field, FLT_M_RANGE, yes, no, &op) < 0)
			return -EINVAL;
		op->u.range.lo = lo;
		op->u.range.hi = hi;
		return 0;
	}
	case OPD_LISTENER:
	case OPD_TAG: {
		uint64_t mask = 0;

		if (strings_each(c, path, v, m->operand == OPD_TAG ? add_tag_match : add_listener,
				 &mask) < 0)
			return -EINVAL;
		if (emit_test(c, path, m->field, FLT_M_MASK, yes, no, &op) < 0)
			return -EINVAL;
		op->u.mask = mask;
		return 0;
	}
	case OPD_TLS: {
		char sub[PATH_MAX_LEN];
		struct flt_set *s;

		if (json_object_is_type(v, json_type_boolean)) {
			if (emit_test(c, path, FLT_F_TLS, FLT_M_BOOL, yes, no, &op) < 0)
				return -EINVAL;
			op->u.b = json_object_get_boolean(v);
			return 0;
		}
		if (!json_object_is_type(v, json_type_object) ||
		    json_object_object_length(v) != 1 ||
		    !json_object_object_get_ex(v, "version", NULL))
			return fail(c, path, "expected true, false or {\"version\": ...}");
		path_key(sub, path, "version");
		s = flt_set_new(FLT_SET_NAMES, 4);
		if (own(c, OWN_SET, s) < 0)
			return fail(c, sub, "out of memory");
		if (strings_each(c, sub, json_object_object_get(v, "version"), add_tls_version, s) <
		    0)
			return -EINVAL;
		if (emit_test(c, sub, FLT_F_TLS_VERSION, FLT_M_SET, yes, no, &op) < 0)
			return -EINVAL;
		op->u.set = s;
		return 0;
	}
	}
	return fail(c, path, "unknown matcher");
}

/* ---- conditions ----------------------------------------------------------------- */

static int cond_compile(struct cc *c, const char *path, struct json_object *v, uint32_t yes,
			uint32_t no);

/* all: each part must hold (a failing one jumps to no); any: the first that
 * holds jumps to yes. */
static int list_compile(struct cc *c, const char *path, struct json_object *v, bool any,
			uint32_t yes, uint32_t no)
{
	size_t n;
	char e[PATH_MAX_LEN];

	if (!json_object_is_type(v, json_type_array) || (n = json_object_array_length(v)) == 0)
		return fail(c, path, "expected a non-empty list of conditions");
	for (size_t i = 0; i < n; i++) {
		uint32_t next = i + 1 < n ? label_new(c) : NO_LABEL;
		int rc;

		path_index(e, path, i);
		if (i + 1 < n && next == NO_LABEL)
			return fail(c, e, "out of memory");
		if (i + 1 == n)
			rc = cond_compile(c, e, json_object_array_get_idx(v, i), yes, no);
		else if (any)
			rc = cond_compile(c, e, json_object_array_get_idx(v, i), yes, next);
		else
			rc = cond_compile(c, e, json_object_array_get_idx(v, i), next, no);
		if (rc < 0)
			return rc;
		if (i + 1 < n)
			label_place(c, next);
	}
	return 0;
}

static int key_compile(struct cc *c, const char *path, const char *key, struct json_object *v,
		       uint32_t yes, uint32_t no)
{
	if (strcmp(key, "not") == 0)
		return cond_compile(c, path, v, no, yes);
	if (strcmp(key, "all") == 0 || strcmp(key, "any") == 0)
		return list_compile(c, path, v, key[1] == 'n', yes, no);
	for (size_t i = 0; i < sizeof(matchers) / sizeof(matchers[0]); i++)
		if (strcmp(key, matchers[i].name) == 0)
			return matcher_compile(c, path, &matchers[i], v, yes, no);
	if (strcmp(key, "client_name") == 0 || strcmp(key, "header") == 0 ||
	    strcmp(key, "body") == 0)
		return fail(c, path, "the %s matcher is not built yet", key);
	return fail(c, path, "unknown matcher");
}

/* An object: every key must hold. */
static int cond_compile(struct cc *c, const char *path, struct json_object *v, uint32_t yes,
			uint32_t no)
{
	size_t n, i = 0;

	if (!json_object_is_type(v, json_type_object) || (n = json_object_object_length(v)) == 0)
		return fail(c, path, "expected a non-empty JSON object");
	json_object_object_foreach(v, key, sub)
	{
		char kpath[PATH_MAX_LEN];
		uint32_t next = i + 1 < n ? label_new(c) : yes;
		int rc;

		path_key(kpath, path, key);
		if (next == NO_LABEL)
			return fail(c, kpath, "out of memory");
		rc = key_compile(c, kpath, key, sub, next, no);
		if (rc < 0)
			return rc;
		if (i + 1 < n)
			label_place(c, next);
		i++;
	}
	return 0;
}

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
		return fail(c, path, "longer than %d characters", REPLY_TEXT_MAX);
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return fail(c, path, "only printable ASCII in a reply (no CR, LF or tab)");
	if (len < 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '5' || s[2] < '0' ||
	    s[2] > '9' || (len > 3 && s[3] != ' '))
		return fail(c, path,
			    "expected \"CODE text\" with a three-digit code (\"550 ...\")");
	cls = s[0];
	if (d == FLT_DEC_REJECT && cls != '5')
		return fail(c, path, "a reject reply must be 5xx");
	if (d == FLT_DEC_TEMPFAIL && cls != '4')
		return fail(c, path, "a tempfail reply must be 4xx");
	if (d == FLT_DEC_DISCONNECT && cls != '5' && strncmp(s, "421", 3) != 0)
		return fail(c, path, "a disconnect reply must be 421 or 5xx");
	text = len > 3 ? s + 4 : s + 3;
	t = malloc(REPLY_TEXT_MAX + 64);
	if (own(c, OWN_MEM, t) < 0)
		return fail(c, path, "out of memory");
	memcpy(t, s, 3);
	o = 3;
	/* The enhanced code: "c.sss.ddd", c the class (RFC 3463). */
	if (text[0] >= '0' && text[0] <= '9') {
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
			return fail(c, path, "bad enhanced status code (expected \"%c.x.y\")", cls);
		if (text[0] != cls)
			return fail(c, path,
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
			return fail(c, path, "unterminated %%{");
		for (f = 0; f < FLT_RF_COUNT; f++)
			if (strlen(reply_fields[f]) == (size_t)(end - text - 2) &&
			    memcmp(reply_fields[f], text + 2, (size_t)(end - text - 2)) == 0)
				break;
		if (f == FLT_RF_COUNT)
			return fail(c, path, "unknown field %%{%.*s}", (int)(end - text - 2),
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

static bool is_action_key(const char *key)
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
			return fail(c, path, "expected an integer in 0..%d", TARPIT_MAX_MS);
		a->tarpit_ms = (uint32_t)ms;
		return 0;
	}
	if (strcmp(key, "tag") == 0)
		return strings_each(c, path, v, add_tag_set, &a->tags);
	if (strcmp(key, "next") == 0 || d == FLT_DEC_ACCEPT) {
		if (!json_object_is_type(v, json_type_boolean) || !json_object_get_boolean(v))
			return fail(c, path, "expected true");
	} else if (d != FLT_DEC_NONE) {
		if (d == FLT_DEC_DISCONNECT && json_object_is_type(v, json_type_boolean) &&
		    json_object_get_boolean(v))
			v = NULL;
		else if (!json_object_is_type(v, json_type_string))
			return fail(c, path, "expected a reply (\"%s\")", default_reply(d));
		if (reply_compile(c, path, v ? json_object_get_string(v) : default_reply(d), d,
				  &a->reply) < 0)
			return -EINVAL;
	} else {
		return fail(c, path, "unknown action");
	}
	if ((*deciding)++)
		return fail(c, path,
			    "a rule takes one of accept, next, reject, tempfail, disconnect");
	a->decide = d;
	return 0;
}

/* "then": a word, or an object of action keys.  Or (obj_is_rule) the
 * rule's own keys besides "if". */
static int action_compile(struct cc *c, const char *path, struct json_object *v, bool obj_is_rule,
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
			return fail(c, path, "unknown action \"%s\"", w);
		a->decide = d;
		return d == FLT_DEC_ACCEPT ? 0
					   : reply_compile(c, path, default_reply(d), d, &a->reply);
	}
	if (!json_object_is_type(v, json_type_object))
		return fail(c, path, "expected an action: a word or a JSON object");
	json_object_object_foreach(v, key, arg)
	{
		if (obj_is_rule && strcmp(key, "if") == 0)
			continue;
		path_key(sub, path, key);
		if (obj_is_rule && !is_action_key(key))
			return fail(c, sub, "unknown key");
		if (action_key(c, sub, key, arg, a, &deciding) < 0)
			return -EINVAL;
		keys++;
	}
	if (!keys)
		return fail(c, path, "no action");
	return 0;
}

/* ---- rules and chains -------------------------------------------------------------- */

static int rule_compile(struct cc *c, const char *path, struct json_object *rule)
{
	struct json_object *cond = NULL, *then = NULL;
	struct flt_act *a;
	struct flt_op *op = NULL;
	uint32_t yes, no;
	char sub[PATH_MAX_LEN];
	bool inline_action = false;

	if (!json_object_is_type(rule, json_type_object))
		return fail(c, path, "expected a rule: {\"if\": ..., \"then\": ...}");
	json_object_object_foreach(rule, key, v)
	{
		if (strcmp(key, "if") == 0) {
			cond = v;
		} else if (strcmp(key, "then") == 0) {
			then = v;
		} else if (is_action_key(key)) {
			inline_action = true;
		} else {
			path_key(sub, path, key);
			return fail(c, sub, "unknown key");
		}
	}
	if (then && inline_action)
		return fail(c, path, "an action both in \"then\" and beside it");
	if (!then && !inline_action)
		return fail(c, path, "no action (\"then\")");
	a = calloc(1, sizeof(*a));
	if (own(c, OWN_MEM, a) < 0)
		return fail(c, path, "out of memory");
	yes = label_new(c);
	no = label_new(c);
	if (yes == NO_LABEL || no == NO_LABEL)
		return fail(c, path, "out of memory");
	if (cond) {
		path_key(sub, path, "if");
		if (cond_compile(c, sub, cond, yes, no) < 0)
			return -EINVAL;
	}
	label_place(c, yes);
	if (then)
		path_key(sub, path, "then");
	if (action_compile(c, then ? sub : path, then ? then : rule, !then, a) < 0)
		return -EINVAL;
	op = emit(c, FLT_OP_ACT);
	if (!op)
		return fail(c, path, "out of memory");
	op->u.act = a;
	label_place(c, no);
	return 0;
}

static int path_add(struct cc *c, const char *path)
{
	struct flt_rules *r = c->r;
	char **v = realloc(r->paths, (r->path_count + 1) * sizeof(*v));

	if (!v)
		return -ENOMEM;
	r->paths = v;
	v[r->path_count] = strdup(path);
	if (!v[r->path_count])
		return -ENOMEM;
	c->rule = r->path_count++;
	return 0;
}

static int chain_compile(struct cc *c, const char *path, struct json_object *chain,
			 enum flt_stage stage, const struct flt_prog **out)
{
	struct flt_prog *prog;
	size_t n;

	if (!json_object_is_type(chain, json_type_array))
		return fail(c, path, "expected a list of rules");
	c->stage = stage;
	c->n = 0;
	c->nlabels = 0;
	n = json_object_array_length(chain);
	for (size_t i = 0; i < n; i++) {
		char rpath[PATH_MAX_LEN];

		path_index(rpath, path, i);
		if (path_add(c, rpath) < 0)
			return fail(c, rpath, "out of memory");
		if (rule_compile(c, rpath, json_object_array_get_idx(chain, i)) < 0)
			return -EINVAL;
	}
	c->rule = UINT32_MAX;
	if (!emit(c, FLT_OP_END))
		return fail(c, path, "out of memory");
	for (uint32_t i = 0; i < c->n; i++) {
		struct flt_op *op = &c->ops[i];

		if (op->code != FLT_OP_TEST)
			continue;
		op->yes = c->labels[op->yes];
		op->no = c->labels[op->no];
		if (op->yes >= c->n || op->no >= c->n || op->yes <= i || op->no <= i)
			return fail(c, path, "internal error: a jump out of the chain");
	}
	prog = malloc(sizeof(*prog));
	if (own(c, OWN_MEM, prog) < 0)
		return fail(c, path, "out of memory");
	prog->ops = malloc(c->n * sizeof(*prog->ops));
	if (own(c, OWN_MEM, prog->ops) < 0)
		return fail(c, path, "out of memory");
	memcpy(prog->ops, c->ops, c->n * sizeof(*prog->ops));
	prog->count = c->n;
	*out = prog;
	return 0;
}

/* "filters" or "listeners[i].filters": a chain per stage named. */
static int filters_compile(struct cc *c, const char *path, struct json_object *f,
			   const struct flt_prog *progs[FLT_STAGE_COUNT])
{
	if (!f)
		return 0;
	if (!json_object_is_type(f, json_type_object))
		return fail(c, path, "expected a JSON object of stages");
	json_object_object_foreach(f, stage, chain)
	{
		char spath[PATH_MAX_LEN];
		int s;

		path_key(spath, path, stage);
		for (s = 0; s < FLT_STAGE_COUNT; s++)
			if (strcmp(stage, flt_stage_names[s]) == 0)
				break;
		if (s == FLT_STAGE_COUNT)
			return fail(c, spath,
				    "unknown stage (connect, helo, auth, mail, rcpt, data)");
		if (s == FLT_STAGE_DATA)
			return fail(c, spath, "the data stage is not built yet");
		if (chain_compile(c, spath, chain, (enum flt_stage)s, &progs[s]) < 0)
			return -EINVAL;
	}
	return 0;
}

struct flt_rules *flt_compile(const struct rmx_config *cfg, char *err, size_t err_len)
{
	struct cc c = {.cfg = cfg, .err = err, .err_len = err_len};
	const struct flt_prog *top[FLT_STAGE_COUNT] = {0};
	int rc;

	if (err && err_len)
		err[0] = '\0';
	c.r = calloc(1, sizeof(*c.r));
	if (!c.r) {
		fail(&c, "filters", "out of memory");
		return NULL;
	}
	c.r->hostname = cfg->hostname;
	for (uint32_t i = 0; i < cfg->listener_count; i++)
		c.r->listener_names[i] = cfg->listeners[i].name;
	rc = tables_load(&c, cfg->tables_json);
	if (rc == 0)
		rc = filters_compile(&c, "filters", cfg->filters_json, top);
	for (uint32_t i = 0; rc == 0 && i < cfg->listener_count; i++) {
		const struct flt_prog *mine[FLT_STAGE_COUNT] = {0};
		char path[PATH_MAX_LEN];

		snprintf(path, sizeof(path), "listeners[%u].filters", i);
		rc = filters_compile(&c, path, cfg->listeners[i].filters_json, mine);
		for (int s = 0; s < FLT_STAGE_COUNT; s++)
			c.r->progs[i][s] = mine[s] ? mine[s] : top[s];
	}
	for (uint32_t i = 0; rc == 0 && i < c.r->tag_count; i++)
		if (!c.tags[i].set)
			rc = fail(&c, c.tags[i].first_match, "no rule sets the tag \"%s\"",
				  c.r->tag_names[i]);
	free(c.ops);
	free(c.labels);
	free(c.tables);
	if (rc < 0) {
		flt_rules_free(c.r);
		return NULL;
	}
	return c.r;
}

void flt_rules_free(struct flt_rules *r)
{
	if (!r)
		return;
	while (r->owned) {
		struct flt_owned *o = r->owned;

		r->owned = o->next;
		switch (o->kind) {
		case OWN_MEM:
			free(o->p);
			break;
		case OWN_SET:
			flt_set_free(o->p);
			break;
		case OWN_CIDRS:
			flt_cidrs_free(o->p);
			break;
		case OWN_RX:
			flt_rx_free(o->p);
			break;
		}
		free(o);
	}
	for (uint32_t i = 0; i < r->path_count; i++)
		free(r->paths[i]);
	free(r->paths);
	for (uint32_t i = 0; i < r->tag_count; i++)
		free(r->tag_names[i]);
	free(r);
}
