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

#include "filters/compile_int.h"

/* An error is one line: what the config wrote (a key, a value, a file's
 * line) may hold control bytes, shown as '?' as config.c does. */
static void err_one_line(char *e)
{
	for (; *e; e++)
		if ((unsigned char)*e < 0x20 || *e == 0x7f)
			*e = '?';
}

int cc_fail(struct cc *c, const char *path, const char *fmt, ...)
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
	err_one_line(c->err);
	return -EINVAL;
}

/* Every string of the rules is a C string: one with a NUL inside would be
 * cut short where it is used ("accept\u0000x" taken for accept). */
static int no_nul(struct cc *c, const char *path, struct json_object *v, int depth)
{
	char sub[PATH_MAX_LEN];

	if (depth > 64)
		return cc_fail(c, path, "nested too deep");
	switch (json_object_get_type(v)) {
	case json_type_string:
		if ((size_t)json_object_get_string_len(v) != strlen(json_object_get_string(v)))
			return cc_fail(c, path, "a NUL byte in a string");
		return 0;
	case json_type_array:
		for (size_t i = 0; i < json_object_array_length(v); i++) {
			cc_path_index(sub, path, i);
			if (no_nul(c, sub, json_object_array_get_idx(v, i), depth + 1) < 0)
				return -EINVAL;
		}
		return 0;
	case json_type_object: {
		json_object_object_foreach(v, key, x)
		{
			cc_path_key(sub, path, key);
			if (no_nul(c, sub, x, depth + 1) < 0)
				return -EINVAL;
		}
		return 0;
	}
	case json_type_null:
	case json_type_boolean:
	case json_type_double:
	case json_type_int:
		return 0;
	}
	return 0;
}

/* out = a + b, cut to PATH_MAX_LEN - 1 bytes (an error line's path). */
static void path_cat(char *out, const char *a, const char *b)
{
	size_t na = strnlen(a, PATH_MAX_LEN - 1), nb = strnlen(b, PATH_MAX_LEN - 1 - na);

	memmove(out, a, na);
	memcpy(out + na, b, nb);
	out[na + nb] = '\0';
}

void cc_path_key(char *out, const char *path, const char *key)
{
	char k[PATH_MAX_LEN];

	path_cat(k, *path ? "." : "", key);
	path_cat(out, path, k);
}

void cc_path_index(char *out, const char *path, size_t i)
{
	char k[32];

	snprintf(k, sizeof(k), "[%zu]", i);
	path_cat(out, path, k);
}

int cc_own(struct cc *c, enum owned_kind kind, void *p)
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

uint32_t cc_label_new(struct cc *c)
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

void cc_label_place(struct cc *c, uint32_t l)
{
	c->labels[l] = c->n;
}

struct flt_op *cc_emit(struct cc *c, enum flt_opcode code)
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

int cc_emit_test(struct cc *c, const char *path, enum flt_field field, enum flt_how how,
		 uint32_t yes, uint32_t no, struct flt_op **out)
{
	struct flt_op *op = cc_emit(c, FLT_OP_TEST);

	if (!op)
		return cc_fail(c, path, "out of memory");
	op->field = (uint8_t)field;
	op->how = (uint8_t)how;
	op->yes = yes;
	op->no = no;
	*out = op;
	return 0;
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
		return cc_fail(c, path, "expected a non-empty list of conditions");
	for (size_t i = 0; i < n; i++) {
		uint32_t next = i + 1 < n ? cc_label_new(c) : NO_LABEL;
		int rc;

		cc_path_index(e, path, i);
		if (i + 1 < n && next == NO_LABEL)
			return cc_fail(c, e, "out of memory");
		if (i + 1 == n)
			rc = cond_compile(c, e, json_object_array_get_idx(v, i), yes, no);
		else if (any)
			rc = cond_compile(c, e, json_object_array_get_idx(v, i), yes, next);
		else
			rc = cond_compile(c, e, json_object_array_get_idx(v, i), next, no);
		if (rc < 0)
			return rc;
		if (i + 1 < n)
			cc_label_place(c, next);
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
	if (cc_matcher_find(key))
		return cc_matcher_compile(c, path, cc_matcher_find(key), v, yes, no);
	if (strcmp(key, "client_name") == 0)
		return cc_fail(c, path, "the %s matcher is not built yet", key);
	return cc_fail(c, path, "unknown matcher");
}

/* An object: every key must hold. */
static int cond_compile(struct cc *c, const char *path, struct json_object *v, uint32_t yes,
			uint32_t no)
{
	size_t n, i = 0;

	if (!json_object_is_type(v, json_type_object) || (n = json_object_object_length(v)) == 0)
		return cc_fail(c, path, "expected a non-empty JSON object");
	json_object_object_foreach(v, key, sub)
	{
		char kpath[PATH_MAX_LEN];
		uint32_t next = i + 1 < n ? cc_label_new(c) : yes;
		int rc;

		cc_path_key(kpath, path, key);
		if (next == NO_LABEL)
			return cc_fail(c, kpath, "out of memory");
		rc = key_compile(c, kpath, key, sub, next, no);
		if (rc < 0)
			return rc;
		if (i + 1 < n)
			cc_label_place(c, next);
		i++;
	}
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
		return cc_fail(c, path, "expected a rule: {\"if\": ..., \"then\": ...}");
	json_object_object_foreach(rule, key, v)
	{
		if (strcmp(key, "if") == 0) {
			cond = v;
		} else if (strcmp(key, "then") == 0) {
			then = v;
		} else if (cc_is_action_key(key)) {
			inline_action = true;
		} else {
			cc_path_key(sub, path, key);
			return cc_fail(c, sub, "unknown key");
		}
	}
	if (then && inline_action)
		return cc_fail(c, path, "an action both in \"then\" and beside it");
	if (!then && !inline_action)
		return cc_fail(c, path, "no action (\"then\")");
	a = calloc(1, sizeof(*a));
	if (cc_own(c, OWN_MEM, a) < 0)
		return cc_fail(c, path, "out of memory");
	yes = cc_label_new(c);
	no = cc_label_new(c);
	if (yes == NO_LABEL || no == NO_LABEL)
		return cc_fail(c, path, "out of memory");
	if (cond) {
		cc_path_key(sub, path, "if");
		if (cond_compile(c, sub, cond, yes, no) < 0)
			return -EINVAL;
	}
	cc_label_place(c, yes);
	if (then)
		cc_path_key(sub, path, "then");
	if (cc_action_compile(c, then ? sub : path, then ? then : rule, !then, a) < 0)
		return -EINVAL;
	op = cc_emit(c, FLT_OP_ACT);
	if (!op)
		return cc_fail(c, path, "out of memory");
	op->u.act = a;
	cc_label_place(c, no);
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
		return cc_fail(c, path, "expected a list of rules");
	c->stage = stage;
	c->n = 0;
	c->nlabels = 0;
	n = json_object_array_length(chain);
	for (size_t i = 0; i < n; i++) {
		char rpath[PATH_MAX_LEN];

		cc_path_index(rpath, path, i);
		if (path_add(c, rpath) < 0)
			return cc_fail(c, rpath, "out of memory");
		if (rule_compile(c, rpath, json_object_array_get_idx(chain, i)) < 0)
			return -EINVAL;
	}
	c->rule = UINT32_MAX;
	if (!cc_emit(c, FLT_OP_END))
		return cc_fail(c, path, "out of memory");
	for (uint32_t i = 0; i < c->n; i++) {
		struct flt_op *op = &c->ops[i];

		if (op->code != FLT_OP_TEST)
			continue;
		op->yes = c->labels[op->yes];
		op->no = c->labels[op->no];
		if (op->yes >= c->n || op->no >= c->n || op->yes <= i || op->no <= i)
			return cc_fail(c, path, "internal error: a jump out of the chain");
	}
	prog = malloc(sizeof(*prog));
	if (cc_own(c, OWN_MEM, prog) < 0)
		return cc_fail(c, path, "out of memory");
	prog->ops = malloc(c->n * sizeof(*prog->ops));
	if (cc_own(c, OWN_MEM, prog->ops) < 0)
		return cc_fail(c, path, "out of memory");
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
		return cc_fail(c, path, "expected a JSON object of stages");
	json_object_object_foreach(f, stage, chain)
	{
		char spath[PATH_MAX_LEN];
		int s;

		cc_path_key(spath, path, stage);
		for (s = 0; s < FLT_STAGE_COUNT; s++)
			if (strcmp(stage, flt_stage_names[s]) == 0)
				break;
		if (s == FLT_STAGE_COUNT)
			return cc_fail(c, spath,
				       "unknown stage (connect, helo, auth, mail, rcpt, data)");
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
		cc_fail(&c, "filters", "out of memory");
		return NULL;
	}
	c.r->hostname = cfg->hostname;
	for (uint32_t i = 0; i < cfg->listener_count; i++)
		c.r->listener_names[i] = cfg->listeners[i].name;
	rc = no_nul(&c, "tables", cfg->tables_json, 0);
	if (rc == 0)
		rc = no_nul(&c, "filters", cfg->filters_json, 0);
	for (uint32_t i = 0; rc == 0 && i < cfg->listener_count; i++) {
		char path[PATH_MAX_LEN];

		snprintf(path, sizeof(path), "listeners[%u].filters", i);
		rc = no_nul(&c, path, cfg->listeners[i].filters_json, 0);
	}
	if (rc == 0)
		rc = cc_tables_load(&c, cfg->tables_json);
	if (rc == 0)
		rc = filters_compile(&c, "filters", cfg->filters_json, top);
	for (uint32_t i = 0; rc == 0 && i < cfg->listener_count; i++) {
		const struct flt_prog *mine[FLT_STAGE_COUNT] = {0};
		char path[PATH_MAX_LEN];

		snprintf(path, sizeof(path), "listeners[%u].filters", i);
		rc = filters_compile(&c, path, cfg->listeners[i].filters_json, mine);
		for (int s = 0; s < FLT_STAGE_COUNT; s++)
			c.r->progs[i][s] = mine[s] ? mine[s] : top[s];
		/* What the session must keep of a message for its data stage. */
		const struct flt_prog *d = c.r->progs[i][FLT_STAGE_DATA];

		for (uint32_t k = 0; d && k < d->count; k++) {
			const struct flt_op *op = &d->ops[k];

			if (op->code == FLT_OP_TEST &&
			    (op->how == FLT_M_HEADER || op->how == FLT_M_BODY))
				c.r->data_reads_msg[i] = true;
			if (op->code == FLT_OP_TEST && op->how == FLT_M_BODY)
				c.r->data_reads_body[i] = true;
			if (op->code == FLT_OP_ACT && op->u.act->nadds)
				c.r->data_adds[i] = true;
		}
	}
	/* The tables, now that their uses are known. */
	for (uint32_t i = 0; rc == 0 && i < c.r->table_count; i++)
		if (flt_table_build(c.r->tables[i], err, err_len) < 0)
			rc = -EINVAL;
	for (uint32_t i = 0; rc == 0 && i < c.r->tag_count; i++)
		if (!c.tags[i].set)
			rc = cc_fail(&c, c.tags[i].first_match, "no rule sets the tag \"%s\"",
				     c.r->tag_names[i]);
	free(c.ops);
	free(c.labels);
	if (rc < 0) {
		if (err && err_len)
			err_one_line(err); /* table.c's errors too */
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
	for (uint32_t i = 0; i < r->table_count; i++)
		flt_table_free(r->tables[i]);
	free(r->tables);
	free(r);
}
