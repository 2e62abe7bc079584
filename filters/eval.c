/*
 * filters/eval — runs a compiled chain (prog.h): a loop over flat ops, no
 * parsing and no allocation; resumable at any pc after a wait.
 */
#include <assert.h>
#include <string.h>

#include "filters/prog.h"

static const char *str_or_empty(const char *s)
{
	return s ? s : "";
}

/* The text a string matcher looks at. */
static void field_text(const struct flt_input *in, const struct flt_rules *r, uint8_t field,
		       const char **p, size_t *n)
{
	switch ((enum flt_field)field) {
	case FLT_F_HELO:
		*p = str_or_empty(in->helo);
		*n = strlen(*p);
		return;
	case FLT_F_AUTH_USER:
		*p = in->authenticated ? str_or_empty(in->auth_user) : "";
		*n = strlen(*p);
		return;
	case FLT_F_TLS_VERSION:
		*p = in->tls ? str_or_empty(in->tls_version) : "";
		*n = strlen(*p);
		return;
	case FLT_F_LISTENER:
		*p = str_or_empty(r->listener_names[in->listener]);
		*n = strlen(*p);
		return;
	case FLT_F_SENDER:
		*p = str_or_empty(in->sender);
		*n = in->sender ? in->sender_len : 0;
		return;
	case FLT_F_SENDER_DOMAIN:
		*p = str_or_empty(in->sender_domain);
		*n = in->sender_domain ? in->sender_domain_len : 0;
		return;
	case FLT_F_RCPT:
		*p = str_or_empty(in->rcpt);
		*n = in->rcpt ? in->rcpt_len : 0;
		return;
	case FLT_F_RCPT_DOMAIN:
		*p = str_or_empty(in->rcpt_domain);
		*n = in->rcpt_domain ? in->rcpt_domain_len : 0;
		return;
	case FLT_F_CLIENT_IP:
		*p = str_or_empty(in->client_ip);
		*n = strlen(*p);
		return;
	case FLT_F_TAG:
	case FLT_F_TLS:
	case FLT_F_AUTHED:
	case FLT_F_SENDER_LOGIN:
	case FLT_F_SIZE:
	case FLT_F_RCPT_COUNT:
	case FLT_F_HEADER:
	case FLT_F_BODY:
		break;
	}
	*p = "";
	*n = 0;
}

/* MAIL FROM is the login: the same address, ASCII case folded. */
static bool sender_is_login(const struct flt_input *in)
{
	const char *u = str_or_empty(in->auth_user);
	size_t n = strlen(u);

	return in->authenticated && n && in->sender && in->sender_len == n &&
	       strncasecmp(in->sender, u, n) == 0;
}

static bool header_value_ok(const char *v, size_t n, const void *ctx)
{
	const struct flt_hdr_test *h = ctx;

	if (h->set)
		return flt_set_has(h->set, v, n);
	if (h->rx)
		return flt_rx_match(h->rx, v, n);
	return true; /* the field is there */
}

/* A table value lists logins, separated by commas or blanks. */
static bool value_lists_login(const char *v, void *ctx)
{
	const struct flt_input *in = ctx;
	const char *u = str_or_empty(in->auth_user);
	size_t n = strlen(u);

	while (n && *v) {
		size_t k = strcspn(v, ", \t");

		if (k == n && strncasecmp(v, u, n) == 0)
			return true;
		v += k;
		v += strspn(v, ", \t");
	}
	return false;
}

static bool test_bool(const struct flt_input *in, uint8_t field)
{
	switch ((enum flt_field)field) {
	case FLT_F_TLS:
		return in->tls;
	case FLT_F_AUTHED:
		return in->authenticated;
	case FLT_F_SENDER_LOGIN:
		return sender_is_login(in);
	case FLT_F_CLIENT_IP:
	case FLT_F_LISTENER:
	case FLT_F_TAG:
	case FLT_F_TLS_VERSION:
	case FLT_F_AUTH_USER:
	case FLT_F_HELO:
	case FLT_F_SENDER:
	case FLT_F_SENDER_DOMAIN:
	case FLT_F_SIZE:
	case FLT_F_RCPT:
	case FLT_F_RCPT_DOMAIN:
	case FLT_F_RCPT_COUNT:
	case FLT_F_HEADER:
	case FLT_F_BODY:
		break;
	}
	return false;
}

static bool test(const struct flt_op *op, const struct flt_input *in, const struct flt_state *st)
{
	const char *p;
	size_t n;
	uint64_t v;

	switch ((enum flt_how)op->how) {
	case FLT_M_SET:
		field_text(in, in->rules, op->field, &p, &n);
		return flt_set_has(op->u.set, p, n);
	case FLT_M_RX:
		field_text(in, in->rules, op->field, &p, &n);
		return flt_rx_match(op->u.rx, p, n);
	case FLT_M_CIDR:
		return flt_cidrs_has(op->u.cidr, in->client);
	case FLT_M_TSET:
		field_text(in, in->rules, op->field, &p, &n);
		return flt_table_has(op->u.table, (enum flt_set_kind)op->kind, p, n);
	case FLT_M_TCIDR:
		return flt_table_has_ip(op->u.table, in->client);
	case FLT_M_HEADER:
		return in->msg &&
		       flt_msg_header_any(in->msg, in->msg_len, op->u.hdr->name,
					  op->u.hdr->name_len, header_value_ok, op->u.hdr);
	case FLT_M_BODY: {
		size_t b = in->msg ? flt_msg_body_start(in->msg, in->msg_len) : 0;

		return in->msg && b < in->msg_len &&
		       flt_rx_match(op->u.rx, in->msg + b, in->msg_len - b);
	}
	case FLT_M_LOGIN:
		return sender_is_login(in) ||
		       (in->authenticated && in->sender &&
			flt_table_value_has(op->u.table, FLT_SET_ADDRS, in->sender, in->sender_len,
					    value_lists_login, (void *)in));
	case FLT_M_RANGE:
		v = op->field == FLT_F_SIZE ? in->size : in->rcpt_count;
		return v >= op->u.range.lo && v <= op->u.range.hi;
	case FLT_M_BOOL:
		return test_bool(in, op->field) == op->u.b;
	case FLT_M_MASK:
		if (op->field == FLT_F_LISTENER)
			return (op->u.mask >> in->listener) & 1;
		return ((st->tags_session | st->tags_tx) & op->u.mask) != 0;
	}
	return false;
}

int flt_eval(const struct flt_prog *prog, const struct flt_input *in, struct flt_state *st,
	     const struct flt_act **act, uint32_t *rule)
{
	uint32_t pc = st->pc;

	for (;;) {
		const struct flt_op *op;

		assert(pc < prog->count);
		op = &prog->ops[pc];
		switch ((enum flt_opcode)op->code) {
		case FLT_OP_TEST:
			pc = test(op, in, st) ? op->yes : op->no;
			continue;
		case FLT_OP_ACT: {
			const struct flt_act *a = op->u.act;

			if (a->session_tags)
				st->tags_session |= a->tags;
			else
				st->tags_tx |= a->tags;
			if (a->quarantine)
				st->quarantine = a->quarantine;
			if (a->route)
				st->route = a->route;
			if (a->bcc)
				st->bcc = a->bcc;
			if (a->rewrite)
				st->rewrite = a->rewrite;
			for (uint32_t i = 0; i < a->nadds && st->nadds < FLT_ADDS_MAX; i++)
				st->adds[st->nadds++] = &a->adds[i];
			*act = a;
			*rule = op->rule;
			pc++;
			if (a->tarpit_ms) {
				st->pc = pc;
				return FLT_PENDING;
			}
			if (a->decide != FLT_DEC_NONE)
				return FLT_DONE;
			continue;
		}
		case FLT_OP_END:
			*act = NULL;
			*rule = op->rule;
			st->pc = pc;
			return FLT_DONE;
		}
		assert(!"bad opcode");
	}
}
