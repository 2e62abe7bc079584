/* Pins mbox delivery: From_ line, mboxrd quoting, dotlock+fcntl locking, truncation, classes. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "local/local.h"
#include "local_testlib.h"

/* ---- helpers ------------------------------------------------------------------ */

static int deliver_src(const char *base, const char *sender, const char *rcpt, struct src *s,
		       bool dot, uint32_t wait_ms, struct local_result *res)
{
	return deliver_src_with(local_mbox_deliver, base, sender, rcpt, s, dot, wait_ms, res);
}

static int deliver(const char *base, const char *sender, const char *rcpt, const char *body,
		   size_t step, struct local_result *res)
{
	return deliver_with(local_mbox_deliver, base, sender, rcpt, body, step, res);
}

static int fx_setup(void **state)
{
	fx_setup_at(state, "/tmp/ringmx-mbox-XXXXXX");
	struct fx *f = *state;
	snprintf(f->box, sizeof f->box, "%s/l.example/u", f->base);
	snprintf(f->lock, sizeof f->lock, "%s/l.example/u.lock", f->base);
	return 0;
}

static off_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? st.st_size : -1;
}

/* ---- Python's mailbox as the independent reader -------------------------------- */

/* One line per message in file order, fields "x<hex>": the From_ line after
 * "From ", the bytes, Return-Path, Delivered-To, and the bytes with mboxrd
 * quoting undone (Python's mbox does not undo it itself). */
static const char py_mbox[] = "import mailbox,re,sys\n"
			      "mb=mailbox.mbox(sys.argv[1],factory=None,create=False)\n"
			      "ks=mb.keys()\n"
			      "print(len(ks))\n"
			      "for k in ks:\n"
			      "  m=mb[k]\n"
			      "  b=mb.get_bytes(k)\n"
			      "  h=lambda n:(m[n] or \"\").encode()\n"
			      "  u=re.sub(rb\"(?m)^>(>*From )\",rb\"\\1\",b)\n"
			      "  print(\" \".join(\"x\"+v.hex() for v in [m.get_from().encode(),b,"
			      "h(\"Return-Path\"),h(\"Delivered-To\"),u]))\n";

enum { PY_FROM, PY_BYTES, PY_RP, PY_DT, PY_UNQUOTED, PY_FIELDS };

static bool py_dump(const char *file, struct pydump *d)
{
	return py_run(py_mbox, PY_FIELDS, file, d);
}

/* An asctime date: "Thu Jan  1 00:00:00 2024". */
static void assert_asctime(const char *s)
{
	struct tm tm;
	const char *end = strptime(s, "%a %b %e %H:%M:%S %Y", &tm);
	assert_non_null(end);
	assert_int_equal(end - s, 24);
	assert_true(*end == '\0' || *end == '\n');
}

/* ---- tests ------------------------------------------------------------------- */

static const char body1[] = "Subject: hi\r\n\r\nline one\r\nline two\r\n";
static const char msg1[] = "Return-Path: <alice@s.example>\nDelivered-To: u@L.Example\n"
			   "Subject: hi\n\nline one\nline two\n";

static void delivers_one_message(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	struct stat st;
	assert_int_equal(deliver(f->base, "alice@s.example", "u@L.Example", body1, 0, &res), 0);
	assert_int_equal(res.cls, LOCAL_DELIVERED);
	assert_string_equal(res.status, "2.0.0");
	/* Layout: <base>/<domain folded>/<local>, a 0600 file; no lock left. */
	assert_int_equal(stat(f->box, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(stat(fx_path(f, "l.example"), &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_int_equal(access(f->lock, F_OK), -1);
	size_t len;
	char *got = slurp(f->box, &len);
	const char *head = "From alice@s.example ";
	assert_true(strncmp(got, head, strlen(head)) == 0);
	assert_asctime(got + strlen(head));
	char *rest = strchr(got, '\n') + 1;
	assert_int_equal(len - (size_t)(rest - got), strlen(msg1) + 1);
	assert_memory_equal(rest, msg1, strlen(msg1));
	assert_int_equal(rest[strlen(msg1)], '\n'); /* the blank line after it */
	free(got);

	struct pydump d;
	if (!py_dump(f->box, &d))
		return;
	assert_int_equal(d.count, 1);
	assert_true(strncmp(d.msg[0].v[PY_FROM], "alice@s.example ", 16) == 0);
	assert_asctime(d.msg[0].v[PY_FROM] + 16);
	assert_string_equal(d.msg[0].v[PY_BYTES], msg1);
	assert_string_equal(d.msg[0].v[PY_RP], "<alice@s.example>");
	assert_string_equal(d.msg[0].v[PY_DT], "u@L.Example");
	py_free(&d);
}

static void null_sender_is_mailer_daemon(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	assert_int_equal(deliver(f->base, "", "u@l.example", "\r\nx\r\n", 0, &res), 0);
	/* A quoted sender with a blank keeps the From_ line splittable. */
	assert_int_equal(deliver(f->base, "\"a b\"@s.example", "u@l.example", "\r\ny\r\n", 0, &res),
			 0);
	size_t len;
	char *got = slurp(f->box, &len);
	assert_true(strncmp(got, "From MAILER-DAEMON ", 19) == 0);
	assert_non_null(strstr(got, "\nReturn-Path: <>\n"));
	assert_non_null(strstr(got, "\n\nFrom \"a_b\"@s.example "));
	assert_non_null(strstr(got, "\nReturn-Path: <\"a b\"@s.example>\n"));
	free(got);
	struct pydump d;
	if (!py_dump(f->box, &d))
		return;
	assert_int_equal(d.count, 2);
	assert_true(strncmp(d.msg[0].v[PY_FROM], "MAILER-DAEMON ", 14) == 0);
	assert_string_equal(d.msg[0].v[PY_RP], "<>");
	assert_string_equal(d.msg[1].v[PY_RP], "<\"a b\"@s.example>");
	py_free(&d);
}

/* Lines matching ^>*From  gain one '>', nothing else changes; reading back
 * and undoing mboxrd gives the original, whatever the read sizes. */
static void mboxrd_quoting_round_trips(void **state)
{
	struct fx *f = *state;
	static const char body[] = "From: header is fine\r\n\r\nFrom me\r\n>From you\r\n"
				   ">>From x\r\nFromage\r\n>From\r\n From \r\n>>>\r\n>\r\n"
				   "From \r\nFrom";
	static const char quoted[] = "From: header is fine\n\n>From me\n>>From you\n"
				     ">>>From x\nFromage\n>From\n From \n>>>\n>\n>From \nFrom\n";
	static const char plain[] = "From: header is fine\n\nFrom me\n>From you\n"
				    ">>From x\nFromage\n>From\n From \n>>>\n>\nFrom \nFrom\n";
	const size_t steps[] = {0, 1, 2, 3, 5};
	for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
		assert_int_equal(deliver(f->base, "s@x", "u@l.example", body, steps[i],
					 &(struct local_result){0}),
				 0);
	const char *hdr = "Return-Path: <s@x>\nDelivered-To: u@l.example\n";
	size_t len, hl = strlen(hdr);
	char *got = slurp(f->box, &len);
	/* Every message's stored form, directly in the file. */
	size_t n = 0;
	for (char *p = got; (p = strstr(p, hdr)) != NULL; p += hl, n++) {
		assert_memory_equal(p + hl, quoted, strlen(quoted));
		assert_int_equal(p[hl + strlen(quoted)], '\n');
	}
	assert_int_equal(n, 5);
	free(got);
	struct pydump d;
	if (!py_dump(f->box, &d))
		return;
	assert_int_equal(d.count, 5);
	for (size_t i = 0; i < d.count; i++) {
		assert_int_equal(d.msg[i].n[PY_UNQUOTED], hl + strlen(plain));
		assert_memory_equal(d.msg[i].v[PY_UNQUOTED] + hl, plain, strlen(plain));
		assert_memory_equal(d.msg[i].v[PY_BYTES] + hl, quoted, strlen(quoted));
	}
	py_free(&d);
}

static void dot_stuffed_input_is_unstuffed(void **state)
{
	struct fx *f = *state;
	static const char stuffed[] = "S: x\r\n\r\n..From dots\r\n...\r\nmid.dle\r\n..\r\n";
	static const char want[] = "Return-Path: <>\nDelivered-To: u@l.example\n"
				   "S: x\n\n.From dots\n..\nmid.dle\n.\n";
	for (size_t step = 1; step <= 4; step += 3) {
		struct local_result res;
		struct src s = {
		    .p = stuffed, .len = strlen(stuffed), .step = step, .fail_at = SIZE_MAX};
		assert_int_equal(deliver_src(f->base, "", "u@l.example", &s, true, 0, &res), 0);
	}
	size_t len;
	char *got = slurp(f->box, &len);
	char *second = strstr(got + 1, "\n\nFrom MAILER-DAEMON ");
	assert_non_null(second);
	assert_memory_equal(strchr(got, '\n') + 1, want, strlen(want));
	assert_memory_equal(strchr(second + 2, '\n') + 1, want, strlen(want));
	free(got);
	struct pydump d;
	if (!py_dump(f->box, &d))
		return;
	assert_int_equal(d.count, 2);
	assert_string_equal(d.msg[0].v[PY_BYTES], want);
	assert_string_equal(d.msg[1].v[PY_BYTES], want);
	py_free(&d);
}

/* A message without a final line end still ends in one, then the blank
 * line; a mailbox someone left without a final newline is repaired. */
static void line_ends_are_completed(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	assert_int_equal(mkdir(fx_path(f, "l.example"), 0700), 0);
	FILE *fp = fopen(f->box, "w");
	assert_non_null(fp);
	fputs("From old@x Thu Jan  1 00:00:00 2024\nSubject: old\n\nno newline", fp);
	fclose(fp);
	assert_int_equal(deliver(f->base, "", "u@l.example", "\r\nabc", 0, &res), 0);
	size_t len;
	char *got = slurp(f->box, &len);
	const char *tail = "Delivered-To: u@l.example\n\nabc\n\n";
	assert_true(len > strlen(tail));
	assert_string_equal(got + len - strlen(tail), tail);
	assert_non_null(strstr(got, "no newline\nFrom MAILER-DAEMON "));
	free(got);
	struct pydump d;
	if (!py_dump(f->box, &d))
		return;
	assert_int_equal(d.count, 2);
	py_free(&d);
}

/* Bodies big enough (several LOCAL_OUT_BUF) that unlocked writers would
 * interleave: each message is one repeated letter, so a mix shows. */
#define BIG_LEN (5 * LOCAL_OUT_BUF)

static char *big_body(char c)
{
	char *b = malloc(BIG_LEN + 1);
	assert_non_null(b);
	size_t n = (size_t)sprintf(b, "X-Fill: %c\r\n\r\n", c);
	while (n + 82 < BIG_LEN) {
		memset(b + n, c, 80);
		memcpy(b + n + 80, "\r\n", 2);
		n += 82;
	}
	b[n] = '\0';
	return b;
}

/* Each message must be exactly one fill letter's body. */
static void assert_intact(struct fx *f, size_t count)
{
	struct pydump d;
	if (!py_dump(f->box, &d))
		return;
	assert_int_equal(d.count, count);
	for (size_t i = 0; i < d.count; i++) {
		char *fill = strstr(d.msg[i].v[PY_BYTES], "X-Fill: ");
		assert_non_null(fill);
		char *want = big_body(fill[8]), *lf = want;
		size_t wl = 0;
		for (char *p = want; *p != '\0'; p++) /* CRLF -> LF */
			if (*p != '\r')
				lf[wl++] = *p;
		assert_int_equal(strlen(fill), wl);
		assert_memory_equal(fill, lf, wl);
		free(want);
	}
	py_free(&d);
}

struct thread_arg {
	const char *base;
	char fill;
	int fails;
};

static void *thread_deliver(void *p)
{
	struct thread_arg *a = p;
	char *body = big_body(a->fill);
	for (int i = 0; i < 4; i++) {
		struct local_result res;
		struct src s = {.p = body, .len = strlen(body), .step = 7000, .fail_at = SIZE_MAX};
		struct local_msg m = {
		    .read = src_read, .ctx = &s, .sender = "", .rcpt = "u@l.example"};
		if (local_mbox_deliver(a->base, &m, &res) != 0)
			a->fails++;
	}
	free(body);
	return NULL;
}

static void threads_append_without_mixing(void **state)
{
	struct fx *f = *state;
	pthread_t t[4];
	struct thread_arg a[4];
	for (int i = 0; i < 4; i++) {
		a[i] = (struct thread_arg){.base = f->base, .fill = (char)('a' + i)};
		assert_int_equal(pthread_create(&t[i], NULL, thread_deliver, &a[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(a[i].fails, 0);
	}
	assert_int_equal(access(f->lock, F_OK), -1);
	assert_intact(f, 16);
}

static void processes_append_without_mixing(void **state)
{
	struct fx *f = *state;
	pid_t pid[2];
	for (int i = 0; i < 2; i++) {
		pid[i] = fork();
		assert_true(pid[i] >= 0);
		if (pid[i] == 0) {
			struct thread_arg a = {.base = f->base, .fill = (char)('p' + i)};
			thread_deliver(&a);
			_exit(a.fails);
		}
	}
	for (int i = 0; i < 2; i++) {
		int st;
		assert_int_equal(waitpid(pid[i], &st, 0), pid[i]);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 0);
	}
	assert_intact(f, 8);
}

static void make_lock(struct fx *f, time_t age_s)
{
	mkdir(fx_path(f, "l.example"), 0700);
	int fd = open(f->lock, O_CREAT | O_EXCL | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	struct timespec ts[2] = {{.tv_sec = time(NULL) - age_s}, {.tv_sec = time(NULL) - age_s}};
	assert_int_equal(utimensat(AT_FDCWD, f->lock, ts, 0), 0);
}

static void stale_dotlock_is_broken(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	make_lock(f, LOCAL_DOTLOCK_STALE_S + 60);
	assert_int_equal(deliver(f->base, "", "u@l.example", body1, 0, &res), 0);
	assert_int_equal(access(f->lock, F_OK), -1);
	assert_true(file_size(f->box) > 0);
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void live_dotlock_times_out(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	make_lock(f, 10);
	struct src s = {.p = body1, .len = strlen(body1), .fail_at = SIZE_MAX};
	int64_t t0 = mono_ms();
	assert_int_equal(deliver_src(f->base, "", "u@l.example", &s, false, 300, &res), -ETIMEDOUT);
	int64_t waited = mono_ms() - t0;
	assert_true(waited >= 300 && waited < 3000);
	assert_int_equal(res.cls, LOCAL_TEMPFAIL);
	assert_string_equal(res.status, "4.2.0");
	assert_int_equal(access(f->lock, F_OK), 0); /* someone else's: left alone */
	assert_int_equal(file_size(f->box), 0);
}

static void *unlock_later(void *p)
{
	struct fx *f = p;
	usleep(200 * 1000);
	unlink(f->lock);
	return NULL;
}

static void waits_until_dotlock_released(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	pthread_t t;
	make_lock(f, 0);
	assert_int_equal(pthread_create(&t, NULL, unlock_later, f), 0);
	assert_int_equal(deliver(f->base, "", "u@l.example", body1, 0, &res), 0);
	pthread_join(t, NULL);
	assert_true(file_size(f->box) > 0);
}

/* A classic POSIX fcntl lock from another process (what other MDAs and
 * mail readers take) blocks us until the wait ends, then we defer. */
static void fcntl_lock_of_another_process_is_honoured(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	int ready[2], release[2];
	assert_int_equal(deliver(f->base, "", "u@l.example", body1, 0, &res), 0);
	off_t size = file_size(f->box);
	assert_int_equal(pipe(ready), 0);
	assert_int_equal(pipe(release), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(10); /* never outlive a failed parent */
		int fd = open(f->box, O_RDWR);
		struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
		char c = fcntl(fd, F_SETLK, &fl) == 0 ? 'y' : 'n';
		if (write(ready[1], &c, 1) != 1 || read(release[0], &c, 1) != 1)
			_exit(1);
		_exit(0);
	}
	char c = 0;
	assert_int_equal(read(ready[0], &c, 1), 1);
	assert_int_equal(c, 'y');
	struct src s = {.p = body1, .len = strlen(body1), .fail_at = SIZE_MAX};
	assert_int_equal(deliver_src(f->base, "", "u@l.example", &s, false, 250, &res), -ETIMEDOUT);
	assert_int_equal(res.cls, LOCAL_TEMPFAIL);
	assert_int_equal(file_size(f->box), size);
	assert_int_equal(access(f->lock, F_OK), -1); /* our dotlock went away */
	assert_int_equal(write(release[1], "x", 1), 1);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_int_equal(deliver(f->base, "", "u@l.example", body1, 0, &res), 0);
	assert_true(file_size(f->box) > size);
	for (int i = 0; i < 2; i++)
		close(ready[i]), close(release[i]);
}

static void read_failure_truncates_back(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	assert_int_equal(deliver(f->base, "", "u@l.example", body1, 0, &res), 0);
	size_t len0, len1;
	char *before = slurp(f->box, &len0);
	char *big = big_body('z');
	/* Fail once data reached the file (beyond the writer's buffer). */
	struct src s = {
	    .p = big, .len = strlen(big), .fail_at = 3 * LOCAL_OUT_BUF, .fail_err = -EIO};
	assert_int_equal(deliver_src(f->base, "", "u@l.example", &s, false, 0, &res), -EIO);
	assert_int_equal(res.cls, LOCAL_TEMPFAIL);
	assert_string_equal(res.status, "4.3.0");
	char *after = slurp(f->box, &len1);
	assert_int_equal(len1, len0);
	assert_memory_equal(after, before, len0);
	assert_int_equal(access(f->lock, F_OK), -1);
	free(before);
	free(after);
	free(big);
	struct pydump d;
	if (!py_dump(f->box, &d))
		return;
	assert_int_equal(d.count, 1);
	assert_string_equal(d.msg[0].v[PY_DT], "u@l.example");
	py_free(&d);
}

/* Runs in a child: RLIMIT_FSIZE makes the append fail with EFBIG (the
 * mailbox is full) part-way.  Exit 0: deferred and the file cut back. */
static int efbig_child(struct fx *f)
{
	signal(SIGXFSZ, SIG_IGN);
	off_t size = file_size(f->box);
	struct rlimit rl = {.rlim_cur = (rlim_t)size + 2 * LOCAL_OUT_BUF,
			    .rlim_max = RLIM_INFINITY};
	if (setrlimit(RLIMIT_FSIZE, &rl) < 0)
		return 10;
	char *big = big_body('e');
	struct src s = {.p = big, .len = strlen(big), .fail_at = SIZE_MAX};
	struct local_msg m = {.read = src_read, .ctx = &s, .sender = "", .rcpt = "u@l.example"};
	struct local_result res;
	if (local_mbox_deliver(f->base, &m, &res) != -EFBIG)
		return 11;
	if (res.cls != LOCAL_TEMPFAIL || strcmp(res.status, "4.2.2") != 0)
		return 12;
	return file_size(f->box) == size ? 0 : 13;
}

static void full_mailbox_defers_and_truncates(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	assert_int_equal(deliver(f->base, "", "u@l.example", body1, 0, &res), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(efbig_child(f));
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	struct pydump d;
	if (!py_dump(f->box, &d))
		return;
	assert_int_equal(d.count, 1);
	py_free(&d);
}

static void unsafe_recipients_are_refused(void **state)
{
	struct fx *f = *state;
	const char *bad[] = {"../x@l.example",	  "a/b@l.example",    ".x@l.example",
			     "u@../etc",	  "u.lock@l.example", "u@",
			     "\"u/..\"@l.example"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct local_result res;
		assert_int_equal(deliver(f->base, "", bad[i], "x\r\n", 0, &res), -EINVAL);
		assert_int_equal(res.cls, LOCAL_PERMFAIL);
		assert_string_equal(res.status, "5.1.3");
	}
	assert_int_equal(rmdir(f->base), 0); /* still empty */
	assert_int_equal(mkdir(f->base, 0700), 0);
}

/* Anything but one plain file where the mbox should be bounces: a
 * directory, a symlink, a hard link, a FIFO (without hanging on it). */
static void not_a_plain_file_bounces(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	char target[128];
	snprintf(target, sizeof target, "%s/target", f->base);
	assert_int_equal(mkdir(fx_path(f, "l.example"), 0700), 0);
	assert_int_equal(mkdir(fx_path(f, "l.example/dir"), 0700), 0);
	assert_int_equal(deliver(f->base, "", "dir@l.example", "x\r\n", 0, &res), -EISDIR);
	assert_int_equal(res.cls, LOCAL_PERMFAIL);
	assert_string_equal(res.status, "5.2.0");
	int fd = open(target, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(symlink(target, fx_path(f, "l.example/sym")), 0);
	assert_int_equal(deliver(f->base, "", "sym@l.example", "x\r\n", 0, &res), -ELOOP);
	assert_int_equal(res.cls, LOCAL_PERMFAIL);
	assert_int_equal(link(target, fx_path(f, "l.example/hard")), 0);
	assert_int_equal(deliver(f->base, "", "hard@l.example", "x\r\n", 0, &res), -EPERM);
	assert_int_equal(res.cls, LOCAL_PERMFAIL);
	assert_int_equal(file_size(target), 0);
	assert_int_equal(mkfifo(fx_path(f, "l.example/fifo"), 0600), 0);
	int rc = deliver(f->base, "", "fifo@l.example", "x\r\n", 0, &res);
	assert_true(rc == -ENXIO || rc == -EPERM);
	assert_int_equal(res.cls, rc == -EPERM ? LOCAL_PERMFAIL : LOCAL_TEMPFAIL);
}

/* Runs in a child without privileges (root ignores modes).  Exit 0: a
 * domain directory we may not write bounces, as documented. */
static int unwritable_child(const char *base)
{
	char path[256];
	struct local_result res;
	snprintf(path, sizeof path, "%s/ro.example", base);
	if (mkdir(path, 0500) < 0)
		return 10;
	struct src s = {.p = "x\r\n", .len = 3, .fail_at = SIZE_MAX};
	struct local_msg m = {.read = src_read, .ctx = &s, .sender = "", .rcpt = "u@ro.example"};
	if (local_mbox_deliver(base, &m, &res) != -EACCES || res.cls != LOCAL_PERMFAIL ||
	    strcmp(res.status, "5.2.0") != 0)
		return 11;
	return 0;
}

static void unwritable_target_bounces(void **state)
{
	struct fx *f = *state;
	run_unprivileged(f->base, unwritable_child);
}

static void base_problems_defer_and_route_dispatch(void **state)
{
	struct fx *f = *state;
	struct local_result res;
	assert_int_equal(deliver(fx_path(f, "missing"), "", "u@l.example", "x\r\n", 0, &res),
			 -ENOENT);
	assert_int_equal(res.cls, LOCAL_TEMPFAIL);
	assert_string_equal(res.status, "4.3.5");
	char route[128];
	struct src s = {.p = "x\r\n", .len = 3, .fail_at = SIZE_MAX};
	struct local_msg m = {.read = src_read, .ctx = &s, .sender = "", .rcpt = "u@l.example"};
	snprintf(route, sizeof route, "mbox:%s", f->base);
	assert_int_equal(local_deliver(route, &m, &res), 0);
	assert_true(file_size(f->box) > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(delivers_one_message, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(null_sender_is_mailer_daemon, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(mboxrd_quoting_round_trips, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(dot_stuffed_input_is_unstuffed, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(line_ends_are_completed, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(threads_append_without_mixing, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(processes_append_without_mixing, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(stale_dotlock_is_broken, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(live_dotlock_times_out, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(waits_until_dotlock_released, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(fcntl_lock_of_another_process_is_honoured, fx_setup,
					    fx_teardown),
	    cmocka_unit_test_setup_teardown(read_failure_truncates_back, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(full_mailbox_defers_and_truncates, fx_setup,
					    fx_teardown),
	    cmocka_unit_test_setup_teardown(unsafe_recipients_are_refused, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(not_a_plain_file_bounces, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(unwritable_target_bounces, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(base_problems_defer_and_route_dispatch, fx_setup,
					    fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
