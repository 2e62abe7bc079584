/*
 * control_show — "queue show": a message's envelope and body read back
 * from the spool's segment files, as the recovery scan reads them, and
 * written to the control client (unstuffed when it was stored stuffed).
 */
#include "control_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log/log.h"
#include "queue/record.h"
#include "queue/spool.h"
#include "smtp/parse.h"

typedef int (*seg_fn)(void *ctx, int fd, const char *path);

/* Every segment file of every shard directory under the spool root. */
static int spool_walk(const char *root, seg_fn fn, void *ctx)
{
	DIR *rd = opendir(root);
	struct dirent *sd;
	int rc = 0;

	if (!rd)
		return errno == ENOENT ? 0 : -errno;
	while (rc == 0 && (sd = readdir(rd)) != NULL) {
		char dir[PATH_MAX], path[PATH_MAX + 64];
		struct dirent *fe;
		DIR *d;

		if (sd->d_name[0] < '0' || sd->d_name[0] > '9')
			continue;
		snprintf(dir, sizeof(dir), "%s/%s", root, sd->d_name);
		d = opendir(dir);
		while (d && rc == 0 && (fe = readdir(d)) != NULL) {
			int fd;

			if (!spool_seg_is_name(fe->d_name))
				continue;
			/* A segment's name is SPOOL_SEG_NAME_MAX - 1 octets. */
			snprintf(path, sizeof(path), "%s/%.*s", dir, SPOOL_SEG_NAME_MAX - 1,
				 fe->d_name);
			fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			rc = fn(ctx, fd, path);
			close(fd);
		}
		if (d)
			closedir(d);
	}
	closedir(rd);
	return rc;
}

struct show_ctx {
	struct out *o;
	uint64_t id;
	int fd;
	bool found;
	bool line_start;
	bool stuffed;
	int rc;
};

static int show_body(void *vctx, const char *p, size_t n)
{
	struct show_ctx *ctx = vctx;
	char buf[65536];

	if (!ctx->stuffed) {
		out_write(ctx->o, p, n);
		return ctx->o->drop != CTL_DROP_NONE ? -EIO : 0;
	}
	while (n > 0) {
		size_t k = n < sizeof(buf) ? n : sizeof(buf);
		size_t w = smtp_unstuff(p, k, buf, &ctx->line_start);

		out_write(ctx->o, buf, w);
		p += k;
		n -= k;
	}
	return ctx->o->drop != CTL_DROP_NONE ? -EIO : 0;
}

static void show_str(struct out *o, const char *key, const struct spool_str *s)
{
	if (s->len)
		out_printf(o, "%s: %.*s\n", key, (int)s->len, s->ptr);
}

/* RFC 3461 NOTIFY as written: NEVER, or a comma list. */
static void show_notify(struct out *o, uint8_t notify)
{
	static const struct {
		uint8_t bit;
		const char *name;
	} names[] = {{SMTP_NOTIFY_NEVER, "NEVER"},
		     {SMTP_NOTIFY_SUCCESS, "SUCCESS"},
		     {SMTP_NOTIFY_FAILURE, "FAILURE"},
		     {SMTP_NOTIFY_DELAY, "DELAY"}};
	const char *sep = " notify=";

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (notify & names[i].bit) {
			out_printf(o, "%s%s", sep, names[i].name);
			sep = ",";
		}
	}
}

static void show_envelope(struct out *o, const struct spool_env *e, const char *qid)
{
	static const char *const rets[] = {"", "FULL", "HDRS"};
	static const char *const bodies[] = {"", "7BIT", "8BITMIME", "BINARYMIME"};

	out_printf(o, "id: %s\n", qid);
	out_printf(o, "arrival: %" PRId64 "\n", e->arrival_s);
	out_printf(o, "size: %" PRIu64 "\n", spool_env_size(e));
	show_str(o, "listener", &e->listener);
	show_str(o, "client", &e->client_addr);
	show_str(o, "helo", &e->helo);
	out_printf(o, "from: <%.*s>\n", (int)e->mail_from.len, e->mail_from.ptr);
	if (e->quarantine.len)
		show_str(o, "quarantine", &e->quarantine);
	if (e->body_type && e->body_type < 4)
		out_printf(o, "body: %s\n", bodies[e->body_type]);
	if (e->flags & SPOOL_ENV_SMTPUTF8)
		out_printf(o, "smtputf8: yes\n");
	if (e->ret && e->ret < 3)
		out_printf(o, "ret: %s\n", rets[e->ret]);
	show_str(o, "envid", &e->envid);
	show_str(o, "auth", &e->auth_user);
	if (e->size_declared)
		out_printf(o, "size_declared: %" PRIu64 "\n", e->size_declared);
	for (uint32_t i = 0; i < e->rcpt_count; i++) {
		struct spool_rcpt r;

		if (spool_env_rcpt(e, i, &r) != 0)
			break;
		out_printf(o, "rcpt: <%.*s>", (int)r.addr.len, r.addr.ptr);
		if (r.notify)
			show_notify(o, r.notify);
		if (r.orcpt.len)
			out_printf(o, " orcpt=%.*s", (int)r.orcpt.len, r.orcpt.ptr);
		out_write(o, "\n", 1);
	}
}

static int show_msg(void *vctx, const struct spool_scan_msg *m)
{
	struct show_ctx *ctx = vctx;
	char qid[SPOOL_QID_LEN + 1];

	if (m->env.id != ctx->id || !m->body_ok)
		return 0;
	spool_qid_format(m->env.id, qid);
	out_write(ctx->o, "OK\n", 3);
	show_envelope(ctx->o, &m->env, qid);
	out_write(ctx->o, "\n", 1);
	ctx->stuffed = m->env.flags & SPOOL_ENV_STUFFED;
	ctx->line_start = true;
	ctx->rc = spool_message_read(ctx->fd, &m->env, m->commit_off, show_body, ctx);
	ctx->found = true;
	return 1; /* stop the scan */
}

static int show_seg(void *vctx, int fd, const char *path)
{
	struct show_ctx *ctx = vctx;
	struct spool_scan_stats st;

	(void)path;
	ctx->fd = fd;
	spool_segment_scan(fd, UINT64_MAX, true, show_msg, ctx, &st);
	return ctx->found ? 1 : 0;
}

bool control_show_message(struct out *o, const char *root, uint64_t id, const char *arg)
{
	struct show_ctx ctx = {.o = o, .fd = -1, .id = id};

	spool_walk(root, show_seg, &ctx);
	if (ctx.found && ctx.rc != 0)
		log_msg(LOG_ERROR, "event=control_show id=%s error=\"%s\"", arg, strerror(-ctx.rc));
	return ctx.found;
}
