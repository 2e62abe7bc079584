/* Helpers shared by the src/local/ delivery tests; the contracts are in local_testlib.h. */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "local_testlib.h"

/* ---- message source -------------------------------------------------------- */

int src_read(void *ctx, char *buf, size_t cap, size_t *got)
{
	struct src *s = ctx;
	if (s->off >= s->fail_at)
		return s->fail_err;
	size_t n = s->len - s->off;
	if (n > cap)
		n = cap;
	if (s->step != 0 && n > s->step)
		n = s->step;
	if (s->fail_at != SIZE_MAX && n > s->fail_at - s->off)
		n = s->fail_at - s->off;
	memcpy(buf, s->p + s->off, n);
	s->off += n;
	*got = n;
	return 0;
}

int deliver_src_with(deliver_fn fn, const char *base, const char *sender, const char *rcpt,
		     struct src *s, bool dot, uint32_t wait_ms, struct local_result *res)
{
	struct local_msg m = {.read = src_read,
			      .ctx = s,
			      .sender = sender,
			      .rcpt = rcpt,
			      .dot_stuffed = dot,
			      .lock_wait_ms = wait_ms};
	memset(res, 0xa5, sizeof *res); /* every field must be written */
	int rc = fn(base, &m, res);
	assert_int_equal(rc, res->err);
	assert_non_null(res->status);
	assert_non_null(memchr(res->diag, '\0', sizeof res->diag));
	return rc;
}

int deliver_with(deliver_fn fn, const char *base, const char *sender, const char *rcpt,
		 const char *body, size_t step, struct local_result *res)
{
	struct src s = {.p = body, .len = strlen(body), .step = step, .fail_at = SIZE_MAX};
	return deliver_src_with(fn, base, sender, rcpt, &s, false, 0, res);
}

/* ---- scratch directory --------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	chmod(path, 0700); /* undo a test's chmod 0500 so unprivileged runs clean up */
	return remove(path);
}

int fx_setup_at(void **state, const char *tmpl)
{
	struct fx *f = calloc(1, sizeof *f);
	assert_non_null(f);
	assert_true(strlen(tmpl) < sizeof f->base);
	snprintf(f->base, sizeof f->base, "%s", tmpl);
	assert_non_null(mkdtemp(f->base));
	*state = f;
	return 0;
}

int fx_teardown(void **state)
{
	struct fx *f = *state;
	nftw(f->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

const char *fx_path(struct fx *f, const char *rel)
{
	snprintf(f->path, sizeof f->path, "%s/%s", f->base, rel);
	return f->path;
}

char *slurp(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	assert_non_null(fp);
	char *buf = NULL;
	size_t cap = 0;
	*len = 0;
	for (;;) {
		if (*len == cap) {
			cap = cap != 0 ? cap * 2 : 4096;
			buf = realloc(buf, cap + 1);
			assert_non_null(buf);
		}
		size_t n = fread(buf + *len, 1, cap - *len, fp);
		if (n == 0)
			break;
		*len += n;
	}
	fclose(fp);
	buf[*len] = '\0';
	return buf;
}

/* Root ignores file modes, so a test of "not writable" must drop to nobody first. */
void run_unprivileged(const char *base, int (*child)(const char *base))
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (geteuid() == 0 &&
		    (chown(base, 65534, 65534) < 0 || setgid(65534) < 0 || setuid(65534) < 0))
			_exit(90);
		_exit(child(base));
	}
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* ---- Python's mailbox as the independent reader -------------------------------- */

static int hex_nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static bool hex_field(const char *s, size_t n, char **out, size_t *len)
{
	if (n == 0 || s[0] != 'x' || (n - 1) % 2 != 0)
		return false;
	*len = (n - 1) / 2;
	*out = malloc(*len + 1);
	assert_non_null(*out);
	for (size_t i = 0; i < *len; i++) {
		int hi = hex_nibble(s[1 + 2 * i]), lo = hex_nibble(s[2 + 2 * i]);
		if (hi < 0 || lo < 0)
			return false;
		(*out)[i] = (char)(hi << 4 | lo);
	}
	(*out)[*len] = '\0';
	return true;
}

static void py_parse(char *out, struct pydump *d)
{
	char *line = strtok(out, "\n");
	assert_non_null(line);
	d->count = strtoul(line, NULL, 10);
	d->msg = calloc(d->count + 1, sizeof *d->msg);
	assert_non_null(d->msg);
	for (size_t i = 0; i < d->count; i++) {
		line = strtok(NULL, "\n");
		assert_non_null(line);
		for (int k = 0; k < d->fields; k++) {
			char *end = strchr(line, ' ');
			size_t n = end != NULL ? (size_t)(end - line) : strlen(line);
			assert_true(hex_field(line, n, &d->msg[i].v[k], &d->msg[i].n[k]));
			line = end != NULL ? end + 1 : line + n;
		}
	}
}

bool py_run(const char *script, int fields, const char *path, struct pydump *d)
{
	assert_true(fields > 0 && fields <= PY_FIELDS_MAX);
	if (access("/usr/bin/python3", X_OK) != 0) {
		fprintf(stderr, "# /usr/bin/python3 missing: Python mailbox check skipped\n");
		return false;
	}
	char cmd[2048];
	snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c '%s' '%s'", script, path);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t len = 0, cap = 1 << 16;
	char *out = malloc(cap + 1);
	assert_non_null(out);
	for (size_t n; (n = fread(out + len, 1, cap - len, p)) > 0;) {
		len += n;
		if (len == cap) {
			out = realloc(out, (cap *= 2) + 1);
			assert_non_null(out);
		}
	}
	out[len] = '\0';
	assert_int_equal(pclose(p), 0);
	d->fields = fields;
	py_parse(out, d);
	free(out);
	return true;
}

void py_free(struct pydump *d)
{
	for (size_t i = 0; i < d->count; i++)
		for (int k = 0; k < d->fields; k++)
			free(d->msg[i].v[k]);
	free(d->msg);
}
