/* Pins Maildir delivery: layout, exact bytes via Python mailbox, unique names, failure classes. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "local/local.h"
#include "local_testlib.h"

/* ---- helpers ------------------------------------------------------------------ */

static int deliver_src(const char *base, const char *sender, const char *rcpt, struct src *s,
		       bool dot, struct local_result *res)
{
	return deliver_src_with(local_maildir_deliver, base, sender, rcpt, s, dot, 0, res);
}

static int deliver(const char *base, const char *sender, const char *rcpt, const char *body,
		   size_t step, struct local_result *res)
{
	return deliver_with(local_maildir_deliver, base, sender, rcpt, body, step, res);
}

static int fx_setup(void **state)
{
	return fx_setup_at(state, "/tmp/ringmx-maildir-XXXXXX");
}

/* Entries of dir other than . and ..; the last one's name into name. */
static int dir_count(const char *dir, char *name, size_t cap)
{
	DIR *d = opendir(dir);
	if (d == NULL)
		return -1;
	int n = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (name != NULL)
			snprintf(name, cap, "%s", e->d_name);
		n++;
	}
	closedir(d);
	return n;
}

/* The only message in box/new, as bytes. */
static char *only_message(struct fx *f, const char *box, size_t *len)
{
	char dir[600], name[300], path[900];
	snprintf(dir, sizeof dir, "%s/%s/new", f->base, box);
	assert_int_equal(dir_count(dir, name, sizeof name), 1);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	return slurp(path, len);
}

static void assert_tmp_empty(struct fx *f, const char *box)
{
	char dir[600];
	snprintf(dir, sizeof dir, "%s/%s/tmp", f->base, box);
	int n = dir_count(dir, NULL, 0);
	assert_true(n == 0 || n == -1); /* -1: never created */
}

/* ---- Python's mailbox as the independent reader -------------------------------- */

/* One line per message, fields "x<hex>" so empty values survive splitting:
 * subdir, bytes, Return-Path, Delivered-To.  Sorted by bytes. */
static const char py_maildir[] =
    "import mailbox,sys\n"
    "md=mailbox.Maildir(sys.argv[1],factory=None,create=False)\n"
    "ks=sorted(md.keys(),key=lambda k:md.get_bytes(k))\n"
    "print(len(ks))\n"
    "for k in ks:\n"
    "  m=md[k]\n"
    "  h=lambda n:(m[n] or \"\").encode()\n"
    "  print(\" \".join(\"x\"+v.hex() for v in [m.get_subdir().encode(),md.get_bytes(k),"
    "h(\"Return-Path\"),h(\"Delivered-To\")]))\n";

#define PY_FIELDS 4

static bool py_dump(const char *dir, struct pydump *d)
{
	return py_run(py_maildir, PY_FIELDS, dir, d);
}

static void assert_py_one(struct fx *f, const char *box, const char *bytes, const char *rp,
			  const char *dt)
{
	struct pydump d;
	if (!py_dump(fx_path(f, box), &d))
		return;
	assert_int_equal(d.count, 1);
	assert_string_equal(d.msg[0].v[0], "new");
	assert_int_equal(d.msg[0].n[1], strlen(bytes));
	assert_memory_equal(d.msg[0].v[1], bytes, strlen(bytes));
	assert_string_equal(d.msg[0].v[2], rp);
	assert_string_equal(d.msg[0].v[3], dt);
	py_free(&d);
}

/* ---- tests ------------------------------------------------------------------- */

static const char body1[] = "Subject: hi\r\nMessage-ID: <1@x>\r\n\r\nline one\r\nline two\r\n";
static const char want1[] = "Return-Path: <alice@sender.example>\n"
			    "Delivered-To: Bob@Local.EXAMPLE\n"
			    "Subject: hi\nMessage-ID: <1@x>\n\nline one\nline two\n";

static void delivers_one_message(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	struct stat st;
	assert_int_equal(
	    deliver(f->base, "alice@sender.example", "Bob@Local.EXAMPLE", body1, 0, &res), 0);
	assert_int_equal(res.cls, LOCAL_DELIVERED);
	assert_string_equal(res.status, "2.0.0");
	/* Layout: <base>/<domain folded>/<local as given>/{tmp,new,cur}, 0700. */
	for (const char *const *d =
		 (const char *const[]){"local.example", "local.example/Bob",
				       "local.example/Bob/tmp", "local.example/Bob/new",
				       "local.example/Bob/cur", NULL};
	     *d != NULL; d++) {
		assert_int_equal(stat(fx_path(f, *d), &st), 0);
		assert_true(S_ISDIR(st.st_mode));
		assert_int_equal(st.st_mode & 0777, 0700);
	}
	assert_tmp_empty(f, "local.example/Bob");
	size_t len;
	char *got = only_message(f, "local.example/Bob", &len);
	assert_int_equal(len, strlen(want1));
	assert_memory_equal(got, want1, len);
	free(got);
	assert_py_one(f, "local.example/Bob", want1, "<alice@sender.example>", "Bob@Local.EXAMPLE");
}

static void unique_name_has_the_maildir_shape(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	char dir[600], name[300], want[32];
	struct stat st;
	assert_int_equal(deliver(f->base, "a@b.example", "u@l.example", body1, 0, &res), 0);
	snprintf(dir, sizeof dir, "%s/l.example/u/new", f->base);
	assert_int_equal(dir_count(dir, name, sizeof name), 1);
	/* <seconds>.M<usec>P<pid>Q<counter>.<host> */
	char *end;
	strtoull(name, &end, 10);
	assert_true(end > name && strncmp(end, ".M", 2) == 0);
	strtoul(end + 2, &end, 10);
	snprintf(want, sizeof want, "P%ldQ", (long)getpid());
	assert_true(strncmp(end, want, strlen(want)) == 0);
	assert_null(strchr(name, ':'));
	assert_null(strchr(name, '/'));
	snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/%s", name);
	assert_int_equal(stat(dir, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
}

static void name_format_escapes_host(void **state)
{
	(void)state;
	char buf[LOCAL_NAME_MAX];
	struct timespec ts = {.tv_sec = 1700000000, .tv_nsec = 123456789};
	size_t n = local_maildir_name(buf, sizeof buf, &ts, 42, 7, "mx/1:a.example");
	assert_string_equal(buf, "1700000000.M123456P42Q7.mx\\0571\\072a.example");
	assert_int_equal(n, strlen(buf));
	local_maildir_name(buf, sizeof buf, &ts, 42, 7, "");
	assert_string_equal(buf, "1700000000.M123456P42Q7.localhost");
	/* Too small a buffer: 0, never a cut name. */
	assert_int_equal(local_maildir_name(buf, 20, &ts, 42, 7, "h"), 0);
	assert_int_equal(local_maildir_name(buf, 27, &ts, 42, 7, "a:b"), 0);
	/* Bound: at most LOCAL_HOST_MAX octets of the host, all escaped. */
	char host[LOCAL_HOST_MAX * 2 + 1];
	memset(host, ':', sizeof host - 1);
	host[sizeof host - 1] = '\0';
	n = local_maildir_name(buf, sizeof buf, &ts, 42, 7, host);
	assert_int_equal(n, strlen("1700000000.M123456P42Q7.") + 4 * LOCAL_HOST_MAX);
}

static void null_sender_gets_empty_return_path(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	assert_int_equal(deliver(f->base, "", "u@l.example", "\r\nbody\r\n", 0, &res), 0);
	const char *want = "Return-Path: <>\nDelivered-To: u@l.example\n\nbody\n";
	size_t len;
	char *got = only_message(f, "l.example/u", &len);
	assert_int_equal(len, strlen(want));
	assert_memory_equal(got, want, len);
	free(got);
	assert_py_one(f, "l.example/u", want, "<>", "u@l.example");
}

static void dot_stuffed_input_is_unstuffed(void **state)
{
	struct fx *f = *state;
	static const char stuffed[] = "S: x\r\n\r\n..one dot\r\n...\r\nmid.dle\r\n..\r\n";
	const char *want = "Return-Path: <s@x.example>\nDelivered-To: u@l.example\n"
			   "S: x\n\n.one dot\n..\nmid.dle\n.\n";
	for (size_t step = 1; step <= 4; step += 3) {
		struct local_result res;
		struct src s = {
		    .p = stuffed, .len = strlen(stuffed), .step = step, .fail_at = SIZE_MAX};
		char rcpt[32];
		snprintf(rcpt, sizeof rcpt, "u%zu@l.example", step);
		assert_int_equal(deliver_src(f->base, "s@x.example", rcpt, &s, true, &res), 0);
		char box[32], exp[256];
		snprintf(box, sizeof box, "l.example/u%zu", step);
		snprintf(exp, sizeof exp, "Return-Path: <s@x.example>\nDelivered-To: %s\n%s", rcpt,
			 strstr(want, "S: x"));
		size_t len;
		char *got = only_message(f, box, &len);
		assert_int_equal(len, strlen(exp));
		assert_memory_equal(got, exp, len);
		free(got);
		assert_py_one(f, box, exp, "<s@x.example>", rcpt);
	}
}

/* CRLF -> LF whatever the read sizes; a lone CR stays, also at the end. */
static void any_split_gives_the_same_bytes(void **state)
{
	struct fx *f = *state;
	static const char body[] = "A: 1\r\n\r\nx\ry\r\n\r\n\r\rz\r\n\rend\r";
	const char *tail = "A: 1\n\nx\ry\n\n\r\rz\n\rend\r";
	const size_t steps[] = {1, 2, 3, 5, 7, 0};
	for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
		struct local_result res;
		char rcpt[32], box[32], exp[256];
		snprintf(rcpt, sizeof rcpt, "s%zu@l.example", i);
		snprintf(box, sizeof box, "l.example/s%zu", i);
		assert_int_equal(deliver(f->base, "", rcpt, body, steps[i], &res), 0);
		snprintf(exp, sizeof exp, "Return-Path: <>\nDelivered-To: %s\n%s", rcpt, tail);
		size_t len;
		char *got = only_message(f, box, &len);
		assert_int_equal(len, strlen(exp));
		assert_memory_equal(got, exp, len);
		free(got);
	}
}

/* A message several times LOCAL_OUT_BUF and LOCAL_READ_CHUNK streams through
 * intact, with CRLF pairs straddling every buffer edge somewhere. */
static void large_message_streams_intact(void **state)
{
	struct fx *f = *state;
	const size_t lines = 40000;
	char *body = malloc(lines * 30 + 1), *want = malloc(lines * 30 + 128);
	assert_non_null(body);
	assert_non_null(want);
	size_t bl = 0, wl = (size_t)sprintf(want, "Return-Path: <>\nDelivered-To: big@l.example\n");
	for (size_t i = 0; i < lines; i++) {
		int n = sprintf(body + bl, "line %zu %.*s\r\n", i, (int)(i % 13), "abcdefghijklm");
		bl += (size_t)n;
		wl += (size_t)sprintf(want + wl, "line %zu %.*s\n", i, (int)(i % 13),
				      "abcdefghijklm");
	}
	struct local_result res;
	struct src s = {.p = body, .len = bl, .step = 4093, .fail_at = SIZE_MAX};
	assert_int_equal(deliver_src(f->base, "", "big@l.example", &s, false, &res), 0);
	size_t len;
	char *got = only_message(f, "l.example/big", &len);
	assert_int_equal(len, wl);
	assert_memory_equal(got, want, wl);
	free(got);
	want[wl] = '\0';
	assert_py_one(f, "l.example/big", want, "<>", "big@l.example");
	free(body);
	free(want);
}

static void many_deliveries_get_unique_files(void **state)
{
	struct fx *f = *state;
	char body[64];
	for (int i = 0; i < 50; i++) {
		struct local_result res;
		snprintf(body, sizeof body, "N: %02d\r\n\r\n", i);
		assert_int_equal(deliver(f->base, "", "m@l.example", body, 0, &res), 0);
	}
	assert_int_equal(dir_count(fx_path(f, "l.example/m/new"), NULL, 0), 50);
	assert_tmp_empty(f, "l.example/m");
	struct pydump d;
	if (!py_dump(fx_path(f, "l.example/m"), &d))
		return;
	assert_int_equal(d.count, 50);
	for (size_t i = 0; i < 50; i++) { /* sorted by bytes: N: 00 .. N: 49 */
		snprintf(body, sizeof body,
			 "Return-Path: <>\nDelivered-To: m@l.example\nN: %02zu\n\n", i);
		assert_string_equal(d.msg[i].v[1], body);
	}
	py_free(&d);
}

struct thread_arg {
	const char *base;
	int id;
	int fails;
};

static void *thread_deliver(void *p)
{
	struct thread_arg *a = p;
	char body[64];
	for (int i = 0; i < 25; i++) {
		struct local_result res;
		snprintf(body, sizeof body, "T: %d-%02d\r\n\r\n", a->id, i);
		struct src s = {.p = body, .len = strlen(body), .fail_at = SIZE_MAX};
		struct local_msg m = {
		    .read = src_read, .ctx = &s, .sender = "", .rcpt = "t@l.example"};
		if (local_maildir_deliver(a->base, &m, &res) != 0)
			a->fails++;
	}
	return NULL;
}

static void threads_deliver_concurrently(void **state)
{
	struct fx *f = *state;
	pthread_t t[4];
	struct thread_arg a[4];
	for (int i = 0; i < 4; i++) {
		a[i] = (struct thread_arg){.base = f->base, .id = i};
		assert_int_equal(pthread_create(&t[i], NULL, thread_deliver, &a[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(a[i].fails, 0);
	}
	assert_int_equal(dir_count(fx_path(f, "l.example/t/new"), NULL, 0), 100);
	assert_tmp_empty(f, "l.example/t");
	struct pydump d;
	if (!py_dump(fx_path(f, "l.example/t"), &d))
		return;
	assert_int_equal(d.count, 100);
	py_free(&d);
}

static void read_failure_leaves_nothing(void **state)
{
	struct fx *f = *state;
	static char big[3 * LOCAL_OUT_BUF];
	memset(big, 'a', sizeof big);
	/* Fail at once, after a few bytes, and after data reached the file. */
	const size_t at[] = {0, 100, 2 * LOCAL_OUT_BUF + 5};
	for (size_t i = 0; i < 3; i++) {
		struct local_result res;
		struct src s = {.p = big, .len = sizeof big, .fail_at = at[i], .fail_err = -EIO};
		assert_int_equal(deliver_src(f->base, "", "r@l.example", &s, false, &res), -EIO);
		assert_int_equal(res.cls, LOCAL_TEMPFAIL);
		assert_string_equal(res.status, "4.3.0");
		assert_non_null(strstr(res.diag, "read message"));
		assert_tmp_empty(f, "l.example/r");
		assert_int_equal(dir_count(fx_path(f, "l.example/r/new"), NULL, 0), 0);
	}
	/* Whatever errno the spool reports, it is never the recipient's fault. */
	struct local_result res;
	struct src s = {.p = big, .len = 10, .fail_at = 5, .fail_err = -EACCES};
	assert_int_equal(deliver_src(f->base, "", "r@l.example", &s, false, &res), -EACCES);
	assert_int_equal(res.cls, LOCAL_TEMPFAIL);
	assert_tmp_empty(f, "l.example/r");
}

static void unsafe_recipients_are_refused(void **state)
{
	struct fx *f = *state;
	char long_local[LOCAL_PART_MAX + 20];
	memset(long_local, 'a', LOCAL_PART_MAX + 1);
	strcpy(long_local + LOCAL_PART_MAX + 1, "@l.example");
	const char *bad[] = {
	    "../x@l.example",
	    "a/b@l.example",
	    ".hidden@l.example",
	    "@l.example",
	    "noat",
	    "u@",
	    "u@.l.example",
	    "u@l..example",
	    "u@a/b",
	    "u@..",
	    "u@[127.0.0.1]",
	    "a b@l.example",
	    "\"a/b\"@l.example",
	    "\"../x\"@l.example",
	    "\"\"@l.example",
	    "u:1@l.example",
	    "u\\x@l.example",
	    "u@l.example\r\nX: y",
	    "u\t@l.example",
	    long_local,
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct local_result res;
		int rc = deliver(f->base, "s@x.example", bad[i], "x\r\n", 0, &res);
		assert_true(rc == -EINVAL || rc == -ENAMETOOLONG);
		assert_int_equal(res.cls, LOCAL_PERMFAIL);
		assert_string_equal(res.status, "5.1.3");
	}
	assert_int_equal(dir_count(f->base, NULL, 0), 0); /* nothing created */
	/* The sender goes into a header line: no line breaks there either. */
	struct local_result res;
	assert_int_equal(deliver(f->base, "a@b\nX-Evil: 1", "u@l.example", "x\r\n", 0, &res),
			 -EINVAL);
	assert_int_equal(res.cls, LOCAL_PERMFAIL);
	assert_int_equal(dir_count(f->base, NULL, 0), 0);
}

static void local_part_bound_and_quoting(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	char rcpt[LOCAL_PART_MAX + 20];
	memset(rcpt, 'q', LOCAL_PART_MAX);
	strcpy(rcpt + LOCAL_PART_MAX, "@l.example");
	assert_int_equal(deliver(f->base, "", rcpt, "x\r\n", 0, &res), 0);
	rcpt[LOCAL_PART_MAX] = '\0';
	char box[128];
	snprintf(box, sizeof box, "l.example/%s/new", rcpt);
	assert_int_equal(dir_count(fx_path(f, box), NULL, 0), 1);
	/* A quoted local part is the same mailbox as the unquoted one. */
	assert_int_equal(deliver(f->base, "", "\"a.b\"@l.example", "x\r\n", 0, &res), 0);
	assert_int_equal(deliver(f->base, "", "\"a\\.b\"@l.example", "x\r\n", 0, &res), 0);
	assert_int_equal(deliver(f->base, "", "a.b@l.example.", "x\r\n", 0, &res), 0);
	assert_int_equal(dir_count(fx_path(f, "l.example/a.b/new"), NULL, 0), 3);
	/* UTF-8 (SMTPUTF8) local parts are plain file names. */
	assert_int_equal(deliver(f->base, "", "j\xc3\xb6rg@l.example", "x\r\n", 0, &res), 0);
	assert_int_equal(dir_count(fx_path(f, "l.example/j\xc3\xb6rg/new"), NULL, 0), 1);
}

static void base_problems_defer(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	assert_int_equal(deliver(fx_path(f, "missing"), "", "u@l.example", "x\r\n", 0, &res),
			 -ENOENT);
	assert_int_equal(res.cls, LOCAL_TEMPFAIL);
	assert_string_equal(res.status, "4.3.5");
	int fd = open(fx_path(f, "file"), O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(deliver(fx_path(f, "file"), "", "u@l.example", "x\r\n", 0, &res),
			 -ENOTDIR);
	assert_int_equal(res.cls, LOCAL_TEMPFAIL);
	assert_string_equal(res.status, "4.3.5");
}

static void non_directory_in_the_path_bounces(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	assert_int_equal(mkdir(fx_path(f, "l.example"), 0700), 0);
	int fd = open(fx_path(f, "l.example/plain"), O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(deliver(f->base, "", "plain@l.example", "x\r\n", 0, &res), -ENOTDIR);
	assert_int_equal(res.cls, LOCAL_PERMFAIL);
	assert_string_equal(res.status, "5.2.0");
	/* A planted symlink is never followed, even to a real Maildir. */
	char target[128];
	snprintf(target, sizeof target, "%s/elsewhere", f->base);
	assert_int_equal(mkdir(target, 0700), 0);
	assert_int_equal(symlink(target, fx_path(f, "l.example/link")), 0);
	int rc = deliver(f->base, "", "link@l.example", "x\r\n", 0, &res);
	assert_true(rc == -ELOOP || rc == -ENOTDIR);
	assert_int_equal(res.cls, LOCAL_PERMFAIL);
	assert_int_equal(dir_count(fx_path(f, "elsewhere"), NULL, 0), 0);
}

/* Runs in a child without privileges (root ignores modes): the mailbox's
 * parent, then the mailbox's tmp/, are not writable.  Exit 0: as documented. */
static int unwritable_child(const char *base)
{
	char path[256];
	struct local_result res;
	snprintf(path, sizeof path, "%s/ro.example", base);
	if (mkdir(path, 0500) < 0)
		return 10;
	struct src s = {.p = "x\r\n", .len = 3, .fail_at = SIZE_MAX};
	struct local_msg m = {.read = src_read, .ctx = &s, .sender = "", .rcpt = "u@ro.example"};
	if (local_maildir_deliver(base, &m, &res) != -EACCES || res.cls != LOCAL_PERMFAIL ||
	    strcmp(res.status, "5.2.0") != 0)
		return 11;
	snprintf(path, sizeof path, "%s/rw.example", base);
	s.off = 0;
	m.rcpt = "v@rw.example";
	if (local_maildir_deliver(base, &m, &res) != 0) /* creates the box */
		return 12;
	snprintf(path, sizeof path, "%s/rw.example/v/tmp", base);
	if (chmod(path, 0500) < 0)
		return 13;
	s.off = 0;
	if (local_maildir_deliver(base, &m, &res) != -EACCES || res.cls != LOCAL_PERMFAIL)
		return 14;
	snprintf(path, sizeof path, "%s/rw.example/v/new", base);
	return dir_count(path, NULL, 0) == 1 ? 0 : 15;
}

static void unwritable_target_bounces(void **state)
{
	struct fx *f = *state;
	run_unprivileged(f->base, unwritable_child);
}

static void route_dispatch(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	char route[128];
	struct src s = {.p = "x\r\n", .len = 3, .fail_at = SIZE_MAX};
	struct local_msg m = {.read = src_read, .ctx = &s, .sender = "", .rcpt = "d@l.example"};
	snprintf(route, sizeof route, "maildir:%s", f->base);
	assert_int_equal(local_deliver(route, &m, &res), 0);
	assert_int_equal(dir_count(fx_path(f, "l.example/d/new"), NULL, 0), 1);
	assert_int_equal(local_deliver("smtp://127.0.0.1:25", &m, &res), -EINVAL);
	assert_int_equal(res.cls, LOCAL_TEMPFAIL);
	assert_string_equal(res.status, "4.3.5");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(delivers_one_message, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(unique_name_has_the_maildir_shape, fx_setup,
					    fx_teardown),
	    cmocka_unit_test(name_format_escapes_host),
	    cmocka_unit_test_setup_teardown(null_sender_gets_empty_return_path, fx_setup,
					    fx_teardown),
	    cmocka_unit_test_setup_teardown(dot_stuffed_input_is_unstuffed, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(any_split_gives_the_same_bytes, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(large_message_streams_intact, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(many_deliveries_get_unique_files, fx_setup,
					    fx_teardown),
	    cmocka_unit_test_setup_teardown(threads_deliver_concurrently, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(read_failure_leaves_nothing, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(unsafe_recipients_are_refused, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(local_part_bound_and_quoting, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(base_problems_defer, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(non_directory_in_the_path_bounces, fx_setup,
					    fx_teardown),
	    cmocka_unit_test_setup_teardown(unwritable_target_bounces, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(route_dispatch, fx_setup, fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
