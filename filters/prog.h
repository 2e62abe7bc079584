/*
 * filters/prog — the compiled form of the filter chains, shared by the
 * compiler (compile.c), the evaluator (eval.c) and whoever explains a
 * decision.
 *
 * A stage's chain is one flat array of ops.  TEST asks one matcher about
 * one field of the transaction and jumps to `yes` or `no`; `not`, `all` and
 * `any` are only jumps, so no tree is walked at run time.  ACT applies a
 * rule's action; END is the stage's default (no rule decided).  Every op
 * knows the rule it came from (its JSON path, for logs).  The matchers'
 * data (sets, networks, regexes) is built at compile time and read-only
 * after; evaluation allocates nothing.  Everything lives as long as the
 * struct flt_rules that holds it.
 */
#ifndef RMX_FILTERS_PROG_H
#define RMX_FILTERS_PROG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "filters/flt.h"

#define FLT_HDR_NAME_MAX  64
#define FLT_HDR_VALUE_MAX 4096

/* What a TEST looks at. */
enum flt_field {
	FLT_F_CLIENT_IP = 0,
	FLT_F_LISTENER,
	FLT_F_TAG,
	FLT_F_TLS,	   /* bool: TLS is on */
	FLT_F_TLS_VERSION, /* set: "1.2", "1.3" */
	FLT_F_AUTHED,	   /* bool */
	FLT_F_AUTH_USER,
	FLT_F_HELO,
	FLT_F_SENDER,
	FLT_F_SENDER_DOMAIN,
	FLT_F_SENDER_LOGIN, /* bool: MAIL FROM is the AUTH login */
	FLT_F_SIZE,
	FLT_F_RCPT,
	FLT_F_RCPT_DOMAIN,
	FLT_F_RCPT_COUNT,
	FLT_F_HEADER, /* data: a header field (u.hdr) */
	FLT_F_BODY,   /* data: the body's first bytes */
};

/* How it looks. */
enum flt_how {
	FLT_M_SET = 0, /* u.set: exact names, "*.suffix", "@domain" */
	FLT_M_RX,      /* u.rx: a PCRE2 regex */
	FLT_M_CIDR,    /* u.cidr: networks */
	FLT_M_RANGE,   /* u.range: lo <= value <= hi */
	FLT_M_BOOL,    /* u.b: the field's truth equals b */
	FLT_M_MASK,    /* u.mask: any of these bits (tags, listeners) */
	FLT_M_TSET,    /* u.table, as a set of kind op->kind */
	FLT_M_TCIDR,   /* u.table, as networks */
	FLT_M_LOGIN,   /* u.table: the sender is the login or listed for it */
	FLT_M_HEADER,  /* u.hdr: a field of that name (whose value matches) */
	FLT_M_BODY,    /* u.rx over the body part of the captured message */
};

enum flt_opcode {
	FLT_OP_TEST = 0,
	FLT_OP_ACT,
	FLT_OP_END,
};

/* A deciding action; none means the rule only tags or waits. */
enum flt_decide {
	FLT_DEC_NONE = 0,
	FLT_DEC_ACCEPT,
	FLT_DEC_REJECT,
	FLT_DEC_TEMPFAIL,
	FLT_DEC_DISCONNECT,
};

/* Fields a reply text may name, "%{client_ip}"; stored in the text as the
 * byte FLT_REPLY_FIELD followed by the field's number + 1 (texts are
 * printable ASCII, so the marker cannot be written by hand). */
#define FLT_REPLY_FIELD 0x01
enum flt_reply_field {
	FLT_RF_CLIENT_IP = 0,
	FLT_RF_HELO,
	FLT_RF_SENDER,
	FLT_RF_RCPT,
	FLT_RF_LISTENER,
	FLT_RF_AUTH_USER,
	FLT_RF_HOSTNAME,
	FLT_RF_QID,
	FLT_RF_COUNT,
};

struct flt_set;
struct flt_cidrs;
struct flt_rx;
struct flt_table;

/* A header field test: name (case-insensitive), and its unfolded value in
 * set (exact, case-insensitive) or matching rx; neither: the field is there. */
struct flt_hdr_test {
	char name[FLT_HDR_NAME_MAX + 1];
	size_t name_len;
	const struct flt_set *set;
	const struct flt_rx *rx;
};

/* add_header: "name: value", the value a template like a reply's. */
struct flt_hdr_add {
	char name[FLT_HDR_NAME_MAX + 1];
	const char *value;
};

struct flt_act {
	enum flt_decide decide;
	const struct flt_hdr_add *adds;	 /* data: header fields to add */
	const char *quarantine;		 /* accept into this quarantine */
	const char *route;		 /* deliver by this route (routes[].name) */
	const char *bcc;		 /* add this recipient */
	const struct flt_table *rewrite; /* rewrite the sender by this table */
	uint32_t nadds;
	uint32_t tarpit_ms;
	uint64_t tags;	   /* tag bits to set */
	bool session_tags; /* set at connect/helo/auth: they last the session */
	const char *reply; /* REJECT/TEMPFAIL/DISCONNECT: the template */
};

struct flt_op {
	uint8_t code;	  /* enum flt_opcode */
	uint8_t field;	  /* TEST: enum flt_field */
	uint8_t how;	  /* TEST: enum flt_how */
	uint8_t kind;	  /* FLT_M_TSET: enum flt_set_kind */
	uint32_t yes, no; /* TEST: the next pc when it holds, when it does not */
	uint32_t rule;	  /* index into flt_rules.paths */
	union {
		const struct flt_set *set;
		const struct flt_cidrs *cidr;
		const struct flt_rx *rx;
		const struct flt_table *table;
		const struct flt_hdr_test *hdr;
		struct {
			uint64_t lo, hi;
		} range;
		bool b;
		uint64_t mask;
		const struct flt_act *act;
	} u;
};

struct flt_prog {
	struct flt_op *ops;
	uint32_t count; /* the last op is END */
};

#define FLT_TAGS_MAX 64

struct flt_rules {
	/* Per listener and stage; NULL: no chain (the default decides). */
	const struct flt_prog *progs[CONFIG_LISTENERS_MAX][FLT_STAGE_COUNT];
	char **paths; /* rules' JSON paths, by flt_op.rule */
	uint32_t path_count;
	char *tag_names[FLT_TAGS_MAX];
	uint32_t tag_count;
	const char *hostname; /* %{hostname}: the config's, which outlives the rules */
	const char *listener_names[CONFIG_LISTENERS_MAX];
	bool data_reads_msg[CONFIG_LISTENERS_MAX];  /* a header or body test at data */
	bool data_reads_body[CONFIG_LISTENERS_MAX]; /* a body test at data */
	bool data_adds[CONFIG_LISTENERS_MAX];	    /* an add_header at data */
	struct flt_table **tables;		    /* every table of "tables" */
	uint32_t table_count;
	struct flt_owned *owned; /* everything compiled, freed by flt_rules_free */
};

/* ---- matchers' data (match_*.c) -------------------------------------------- */

/* Sets of names: exact entries, "*.suffix" entries (strict subdomains) and,
 * for addresses, "@domain" entries.  ASCII case is folded on both sides;
 * one trailing dot of a domain is ignored. */
enum flt_set_kind {
	FLT_SET_NAMES = 0, /* helo, listener, auth_user, tls version: exact only */
	FLT_SET_DOMAINS,   /* exact and "*.suffix" */
	FLT_SET_ADDRS,	   /* exact "local@domain", "@domain", "@*.suffix" */
	FLT_SET_TEXT,	   /* exact, spaces allowed (header values); not for tables */
};
struct flt_set *flt_set_new(enum flt_set_kind kind, uint32_t hint);
/* 0, -EINVAL (not a valid entry for this kind) or -ENOMEM. */
int flt_set_add(struct flt_set *s, const char *entry, size_t len);
/* An entry with a value (a key -> value table); vlen 0: none. */
int flt_set_add_value(struct flt_set *s, const char *entry, size_t len, const char *val,
		      size_t vlen);
bool flt_set_has(const struct flt_set *s, const char *v, size_t len);
enum flt_set_kind flt_set_kind_of(const struct flt_set *s);
/* The value of the entry that holds v ("" when it has none), or NULL. */
const char *flt_set_value(const struct flt_set *s, const char *v, size_t len);
void flt_set_free(struct flt_set *s);

/* Networks: 0, -EINVAL (not an address or network) or -ERANGE (host bits
 * set).  flt_cidrs_done() sorts and merges them; only then may they be
 * looked up. */
struct flt_cidrs *flt_cidrs_new(void);
int flt_cidrs_add(struct flt_cidrs *n, const char *s, size_t len);
int flt_cidrs_done(struct flt_cidrs *n);
bool flt_cidrs_has(const struct flt_cidrs *n, const struct sockaddr *sa);
void flt_cidrs_free(struct flt_cidrs *n);

/* Regexes (PCRE2, JIT when the machine has it).  flt_rx_new fills err with
 * PCRE2's message and the offset when the pattern does not compile. */
struct flt_rx *flt_rx_new(const char *pattern, char *err, size_t err_len);
bool flt_rx_match(const struct flt_rx *rx, const char *v, size_t len);
void flt_rx_free(struct flt_rx *rx);

/* ---- tables (table.c) -------------------------------------------------------- */

/* What a table is used as: bit k for a set of enum flt_set_kind k, or
 * networks.  A table is built in every form its rules use. */
#define FLT_USE_CIDRS (1u << 4) /* above every set kind */

/* file NULL: an inline table of count entries, with their values when
 * values is not NULL (all copied). */
struct flt_table *flt_table_new(const char *name, const char *file, const char *const *entries,
				const char *const *values, uint32_t count);
/* Is there an entry that holds v (as flt_table_has) whose value ("" when
 * it has none) satisfies pred?  pred runs while the contents are held. */
bool flt_table_value_has(const struct flt_table *t, enum flt_set_kind kind, const char *v, size_t n,
			 bool (*pred)(const char *value, void *ctx), void *ctx);
void flt_table_use(struct flt_table *t, unsigned use);
/* Build the forms its uses need, from the entries or the file; -EINVAL
 * with err "tables.NAME.inline[i]: ..." or "tables.NAME.file: line N: ...". */
int flt_table_build(struct flt_table *t, char *err, size_t err_len);
const char *flt_table_name(const struct flt_table *t);
bool flt_table_is_file(const struct flt_table *t);
void flt_table_free(struct flt_table *t);
/* Lookups, from any thread; a file table's contents may be replaced
 * meanwhile (flt_tables_refresh). */
bool flt_table_has(const struct flt_table *t, enum flt_set_kind kind, const char *v, size_t n);
bool flt_table_has_ip(const struct flt_table *t, const struct sockaddr *sa);

/* ---- evaluation (eval.c) ---------------------------------------------------- */

/* Run prog from st->pc.  DONE: the stage is decided (*act is the deciding
 * action, or NULL when END was reached; *rule its rule).  PENDING: an
 * action asks to wait *delay_ms first; st->pc says where to go on, and
 * *act is the action (decided already when act->decide != NONE). */
int flt_eval(const struct flt_prog *prog, const struct flt_input *in, struct flt_state *st,
	     const struct flt_act **act, uint32_t *rule);

#endif
