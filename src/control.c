/*
 * control — see control.h.
 */
#include "control.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "queue/record.h"
#include "smtp/parse.h"

#define CONTROL_TIMEOUT_MS 5000

struct out {
	int fd;
	int error;
};

static void out_write(struct out *o, const void *p, size_t n)
{
	const char *c = p;

	while (n > 0 && !o->error) {
		ssize_t w = write(o->fd, c, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			o->error = errno ? errno : EIO;
			return;
		}
		c += w;
		n -= (size_t)w;
	}
}

static void out_printf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(struct out *o, const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > 0)
		out_write(o, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

int control_open(const struct rmx_config *cfg, char *why, size_t why_len)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd;

	if (strlen(cfg->control.socket) >= sizeof(sa.sun_path)) {
		snprintf(why, why_len, "control.socket: path too long");
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, cfg->control.socket);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		goto fail;
	unlink(sa.sun_path); /* a stale socket of a previous run */
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 16) != 0)
		goto fail;
	chmod(sa.sun_path, 0600);
	return fd;
fail:
	snprintf(why, why_len, "control.socket: %s: %s", cfg->control.socket, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -errno;
}

void control_close(int lfd, const struct rmx_config *cfg)
{
	if (lfd >= 0) {
		close(lfd);
		unlink(cfg->control.socket);
	}
}

/* ---- walking the spool ---------------------------------------------------------- */

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
			size_t n = strlen(fe->d_name);
			int fd;

			if (n < 5 || strcmp(fe->d_name + n - 4, ".seg") != 0)
				continue;
			snprintf(path, sizeof(path), "%s/%s", dir, fe->d_name);
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

struct ctl {
	const struct rmx_config *cfg;
	control_post_fn post;
	void *ctx;
};

static void cmd_queue_list(struct out *o, const struct ctl *c)
{
	out_write(o, "OK\n", 3);
	for (uint32_t i = 0; i < c->cfg->shards && !o->error; i++) {
		struct dctl_req req = {.op = DCTL_LIST};

		c->post(c->ctx, i, &req);
		if (req.out_len)
			out_write(o, req.out, req.out_len);
		free(req.out);
	}
}

/* The shard owning a queue ID (its top byte), or -1 with the error sent. */
static int id_shard(struct out *o, const struct ctl *c, const char *arg, uint64_t *id)
{
	if (spool_qid_parse(arg, strlen(arg), id) != 0) {
		out_printf(o, "ERR bad queue ID: %.40s\n", arg);
		return -1;
	}
	if ((*id >> 56) >= c->cfg->shards) {
		out_printf(o, "ERR no such message: %.40s\n", arg);
		return -1;
	}
	return (int)(*id >> 56);
}

static void cmd_queue_op(struct out *o, const struct ctl *c, enum dctl_op op, const char *name,
			 const char *arg)
{
	struct dctl_req req = {.op = op};
	int shard;

	if (op == DCTL_FLUSH && arg == NULL) {
		for (uint32_t i = 0; i < c->cfg->shards; i++)
			c->post(c->ctx, i, &req);
		out_printf(o, "OK\nflushed\n");
		return;
	}
	shard = id_shard(o, c, arg, &req.id);
	if (shard < 0)
		return;
	c->post(c->ctx, (uint32_t)shard, &req);
	if (req.result == -ENOENT)
		out_printf(o, "ERR no such message: %.40s\n", arg);
	else if (req.result < 0)
		out_printf(o, "ERR %s: %s\n", name, strerror(-req.result));
	else
		out_printf(o, "OK\n%s %s\n", name, arg);
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
		return ctx->o->error ? -EIO : 0;
	}
	while (n > 0) {
		size_t k = n < sizeof(buf) ? n : sizeof(buf);
		size_t w = smtp_unstuff(p, k, buf, &ctx->line_start);

		out_write(ctx->o, buf, w);
		p += k;
		n -= k;
	}
	return ctx->o->error ? -EIO : 0;
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
	out_printf(o, "size: %" PRIu64 "\n", e->msg_len);
	show_str(o, "listener", &e->listener);
	show_str(o, "client", &e->client_addr);
	show_str(o, "helo", &e->helo);
	out_printf(o, "from: <%.*s>\n", (int)e->mail_from.len, e->mail_from.ptr);
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

static void cmd_queue_show(struct out *o, const struct ctl *c, const char *arg)
{
	struct show_ctx ctx = {.o = o, .fd = -1};
	struct dctl_req req = {.op = DCTL_FIND};
	int shard = id_shard(o, c, arg, &ctx.id);

	if (shard < 0)
		return;
	/* Only a message still queued: a finished one may linger in its
	 * segment until the segment is reclaimed. */
	req.id = ctx.id;
	c->post(c->ctx, (uint32_t)shard, &req);
	if (req.result == 0)
		spool_walk(c->cfg->spool.path, show_seg, &ctx);
	if (!ctx.found)
		out_printf(o, "ERR no such message: %.40s\n", arg);
	else if (ctx.rc != 0)
		log_msg(LOG_ERROR, "event=control_show id=%s error=\"%s\"", arg, strerror(-ctx.rc));
}

static bool read_line(int fd, char *line, size_t cap)
{
	size_t n = 0;

	while (n + 1 < cap) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		ssize_t r;

		if (poll(&p, 1, CONTROL_TIMEOUT_MS) <= 0)
			return false;
		r = read(fd, line + n, cap - 1 - n);
		if (r <= 0)
			return false;
		n += (size_t)r;
		line[n] = '\0';
		char *nl = strchr(line, '\n');
		if (nl) {
			*nl = '\0';
			if (nl > line && nl[-1] == '\r')
				nl[-1] = '\0';
			return true;
		}
	}
	return false;
}

void control_serve(int lfd, const struct rmx_config *cfg, control_post_fn post, void *pctx)
{
	static const struct {
		const char *verb;
		enum dctl_op op;
	} ops[] = {
	    {"flush", DCTL_FLUSH},   {"hold", DCTL_HOLD},     {"release", DCTL_RELEASE},
	    {"delete", DCTL_DELETE}, {"bounce", DCTL_BOUNCE},
	};
	const struct ctl c = {.cfg = cfg, .post = post, .ctx = pctx};
	char line[CONTROL_LINE_MAX];
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	struct out o;

	if (fd < 0)
		return;
	o = (struct out){.fd = fd};
	if (!read_line(fd, line, sizeof(line))) {
		out_printf(&o, "ERR expected one command line\n");
	} else if (strcmp(line, "queue list") == 0) {
		cmd_queue_list(&o, &c);
	} else if (strncmp(line, "queue show ", 11) == 0) {
		cmd_queue_show(&o, &c, line + 11);
	} else if (strcmp(line, "ping") == 0) {
		out_printf(&o, "OK\npong\n");
	} else if (strncmp(line, "queue ", 6) == 0) {
		const char *verb = line + 6;
		const char *arg = strchr(verb, ' ');
		size_t vlen = arg ? (size_t)(arg - verb) : strlen(verb);
		size_t i;

		for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
			if (strlen(ops[i].verb) == vlen && strncmp(verb, ops[i].verb, vlen) == 0)
				break;
		if (i == sizeof(ops) / sizeof(ops[0]))
			out_printf(&o, "ERR unknown command: %.60s\n", line);
		else if (!arg && ops[i].op != DCTL_FLUSH)
			out_printf(&o, "ERR usage: queue %s ID\n", ops[i].verb);
		else
			cmd_queue_op(&o, &c, ops[i].op, ops[i].verb, arg ? arg + 1 : NULL);
	} else {
		out_printf(&o, "ERR unknown command: %.60s\n", line);
	}
	close(fd);
}
