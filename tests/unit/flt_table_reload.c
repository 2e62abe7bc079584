/* File tables read again while other threads look them up: every lookup
 * sees the old contents or the new, never freed memory (run under ASan), a
 * bad file keeps the old contents, and a change is taken only once the
 * file holds still for one check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "filters/flt.h"
#include "filters/prog.h"

static char dir[64];
static char path[128];

static void write_file(const char *text)
{
	char tmp[160];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	assert_int_equal(rename(tmp, path), 0);
}

static struct flt_rules *compile(struct rmx_config **cfg)
{
	char json[1024], err[CONFIG_ERR_MAX];
	struct flt_rules *r;

	snprintf(json, sizeof(json),
		 "{\"hostname\": \"gw.test\", \"listeners\": [{\"name\": \"mx\", \"address\": "
		 "\"127.0.0.1:2525\"}], \"tables\": {\"valid\": {\"file\": \"%s\"}}, "
		 "\"filters\": {\"rcpt\": [{\"if\": {\"not\": {\"rcpt\": {\"table\": "
		 "\"valid\"}}}, \"then\": \"reject\"}]}}",
		 path);
	*cfg = config_load_string(json, err, sizeof(err));
	if (!*cfg)
		fail_msg("config: %s", err);
	r = flt_compile(*cfg, err, sizeof(err));
	if (!r)
		fail_msg("compile: %s", err);
	return r;
}

static const struct flt_table *the_table(const struct flt_rules *r)
{
	assert_int_equal(r->table_count, 1);
	return r->tables[0];
}

/* Two refreshes take a change: the first sees it, the second (unchanged
 * since) reads it.  The mtime is moved on by hand so a change within the
 * same clock tick is still a change. */
static void refresh_twice(const struct flt_rules *r, int stamp)
{
	struct timespec ts[2] = {{.tv_sec = 1000000 + stamp}, {.tv_sec = 1000000 + stamp}};

	assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
	flt_tables_refresh(r);
	flt_tables_refresh(r);
}

static bool has(const struct flt_table *t, const char *a)
{
	return flt_table_has(t, FLT_SET_ADDRS, a, strlen(a));
}

static void change_taken_when_still(void **state)
{
	struct rmx_config *cfg;
	struct flt_rules *r;

	(void)state;
	write_file("a@x.example\n");
	r = compile(&cfg);
	assert_true(has(the_table(r), "a@x.example"));
	write_file("# comment\n\n  b@x.example  value here\n");
	utimensat(AT_FDCWD, path, (struct timespec[2]){{.tv_sec = 5}, {.tv_sec = 5}}, 0);
	flt_tables_refresh(r); /* seen changed: not read yet */
	assert_true(has(the_table(r), "a@x.example"));
	flt_tables_refresh(r); /* still: read */
	assert_false(has(the_table(r), "a@x.example"));
	assert_true(has(the_table(r), "B@X.example"));
	/* A bad entry keeps the old contents; so does a deleted file. */
	write_file("b@x.example\nnot-an-address\n");
	refresh_twice(r, 7);
	assert_true(has(the_table(r), "b@x.example"));
	assert_int_equal(unlink(path), 0);
	flt_tables_refresh(r);
	flt_tables_refresh(r);
	assert_true(has(the_table(r), "b@x.example"));
	write_file("c@x.example\n");
	refresh_twice(r, 9);
	assert_true(has(the_table(r), "c@x.example"));
	flt_rules_free(r);
	config_free(cfg);
}

struct reader {
	const struct flt_table *t;
	atomic_bool *stop;
	long lookups;
	long odd; /* a lookup that saw neither the old nor the new contents */
};

/* Generation g holds "g<k>@x.example" for k < 50 and "all@x.example". */
static void *reader_main(void *arg)
{
	struct reader *rd = arg;

	while (!atomic_load(rd->stop)) {
		if (!has(rd->t, "all@x.example"))
			rd->odd++;
		rd->lookups++;
	}
	return NULL;
}

static void readers_during_reloads(void **state)
{
	struct rmx_config *cfg;
	struct flt_rules *r;
	atomic_bool stop = false;
	struct reader rd[2];
	pthread_t th[2];
	char text[4096];

	(void)state;
	write_file("all@x.example\n");
	r = compile(&cfg);
	for (int i = 0; i < 2; i++) {
		rd[i] = (struct reader){.t = the_table(r), .stop = &stop};
		assert_int_equal(pthread_create(&th[i], NULL, reader_main, &rd[i]), 0);
	}
	for (int g = 0; g < 200; g++) {
		size_t n = (size_t)snprintf(text, sizeof(text), "all@x.example\n");

		for (int k = 0; k < 50; k++)
			n += (size_t)snprintf(text + n, sizeof(text) - n, "g%d-%d@x.example\n", g,
					      k);
		write_file(text);
		refresh_twice(r, 100 + g);
		snprintf(text, sizeof(text), "g%d-49@x.example", g);
		assert_true(has(the_table(r), text));
	}
	atomic_store(&stop, true);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_true(rd[i].lookups > 0);
		assert_int_equal(rd[i].odd, 0);
	}
	flt_rules_free(r);
	config_free(cfg);
}

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/flt-table-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(path, sizeof(path), "%s/valid", dir);
	return 0;
}

static int teardown(void **state)
{
	char tmp[160];

	(void)state;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	unlink(tmp);
	unlink(path);
	rmdir(dir);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(change_taken_when_still),
	    cmocka_unit_test(readers_during_reloads),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
