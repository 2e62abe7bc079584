/*
 * filters/compile_int — what the compiler's files share, and nothing
 * outside them.  compile.c: the context, emitting, conditions, rules,
 * chains and the entry points; compile_match.c: tables, matchers and their
 * operands; compile_act.c: actions and reply texts.  Thread: main.
 */
#ifndef RMX_FILTERS_COMPILE_INT_H
#define RMX_FILTERS_COMPILE_INT_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

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
	OPD_HEADER,    /* {"name": N[, "regex": R | "value": V...]} */
	OPD_BODY,      /* {"regex": R} */
};

struct matcher {
	const char *name;
	enum flt_field field;
	enum operand operand;
	enum flt_stage from; /* known from this stage on */
	enum flt_stage until;
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
	struct tag_use tags[FLT_TAGS_MAX];
	/* the chain being compiled */
	enum flt_stage stage;
	uint32_t rule;
	struct flt_op *ops;
	uint32_t n, cap;
	uint32_t *labels;
	uint32_t nlabels, labels_cap;
};

int cc_fail(struct cc *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void cc_path_key(char *out, const char *path, const char *key);
void cc_path_index(char *out, const char *path, size_t i);
int cc_own(struct cc *c, enum owned_kind kind, void *p);
uint32_t cc_label_new(struct cc *c);
void cc_label_place(struct cc *c, uint32_t l);
struct flt_op *cc_emit(struct cc *c, enum flt_opcode code);
int cc_emit_test(struct cc *c, const char *path, enum flt_field field, enum flt_how how,
		 uint32_t yes, uint32_t no, struct flt_op **out);

/* compile_match.c */
typedef int add_fn(struct cc *c, const char *path, void *to, const char *s, size_t len);
int cc_strings_each(struct cc *c, const char *path, struct json_object *v, add_fn *add, void *to);
int cc_add_tag_set(struct cc *c, const char *path, void *to, const char *s, size_t len);
int cc_tables_load(struct cc *c, struct json_object *tables);
/* The table a rule names (NULL with the error), marked with its use. */
struct flt_table *cc_table_use(struct cc *c, const char *path, const char *name, unsigned use);
const struct matcher *cc_matcher_find(const char *name);
int cc_matcher_compile(struct cc *c, const char *path, const struct matcher *m,
		       struct json_object *v, uint32_t yes, uint32_t no);

/* compile_act.c */
bool cc_is_action_key(const char *key);
int cc_action_compile(struct cc *c, const char *path, struct json_object *v, bool obj_is_rule,
		      struct flt_act *a);

#endif
