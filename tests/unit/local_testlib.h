/*
 * local_testlib — helpers shared by the src/local/ delivery tests (local_maildir.c,
 * local_mbox.c): an in-memory message source, a scratch directory per test, and
 * Python's mailbox module as an independent reader of what was delivered.
 *
 * Failures are cmocka assertions, so call these from a running test (or its
 * setup/teardown).  src_read may run on any thread; py_run uses strtok and
 * popen, so call it from the test's own thread only.  Whatever a function
 * returns in malloc'd memory, the caller frees (py_free for a pydump).
 */
#ifndef RINGMX_TESTS_LOCAL_TESTLIB_H
#define RINGMX_TESTS_LOCAL_TESTLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "local/local.h"

/* ---- message source -------------------------------------------------------- */

struct src {
	const char *p;
	size_t len, off;
	size_t step;	/* bytes per read at most; 0: as many as fit */
	size_t fail_at; /* offset where read starts failing; SIZE_MAX: never */
	int fail_err;
};

/* A local_read_fn over struct src: step-sized reads, fail_err from fail_at on. */
int src_read(void *ctx, char *buf, size_t cap, size_t *got);

/* local_maildir_deliver or local_mbox_deliver. */
typedef int (*deliver_fn)(const char *base, const struct local_msg *msg, struct local_result *res);

/* Delivers s with fn (res poisoned first); asserts every field of res was written. */
int deliver_src_with(deliver_fn fn, const char *base, const char *sender, const char *rcpt,
		     struct src *s, bool dot, uint32_t wait_ms, struct local_result *res);

/* deliver_src_with for a C string body read step bytes at a time, not stuffed, no wait. */
int deliver_with(deliver_fn fn, const char *base, const char *sender, const char *rcpt,
		 const char *body, size_t step, struct local_result *res);

/* ---- scratch directory --------------------------------------------------------- */

struct fx {
	char base[64];
	char path[512]; /* fx_path's answer, until its next call */
	char box[512];	/* mbox tests: <base>/l.example/u, the mbox most tests use */
	char lock[512]; /* mbox tests: its dotlock; both unused (empty) for Maildir */
};

/* cmocka setup body: *state = a zeroed fx whose base is a new mkdtemp(tmpl) directory. */
int fx_setup_at(void **state, const char *tmpl);

/* cmocka teardown: removes base and all below it (undoing chmods), frees the fx. */
int fx_teardown(void **state);

/* "<base>/<rel>" in f->path. */
const char *fx_path(struct fx *f, const char *rel);

/* The whole file at path, NUL-terminated after *len bytes; asserts it opens. */
char *slurp(const char *path, size_t *len);

/* Runs child(base) in a fork without privileges (nobody if we are root); asserts it exits 0. */
void run_unprivileged(const char *base, int (*child)(const char *base));

/* ---- Python's mailbox as the independent reader -------------------------------- */

#define PY_FIELDS_MAX 5

/* One message: fields[k] as bytes, NUL-terminated after n[k]. */
struct pymsg {
	char *v[PY_FIELDS_MAX];
	size_t n[PY_FIELDS_MAX];
};

struct pydump {
	size_t count;
	int fields;
	struct pymsg *msg;
};

/* Runs "python3 -c script path"; the script prints the message count, then one line per
 * message of `fields` space-separated "x<hex>" fields.  false (and a note) when Python is
 * not installed: the caller skips its Python checks; the C-side checks already ran. */
bool py_run(const char *script, int fields, const char *path, struct pydump *d);

/* Frees what py_run put into d. */
void py_free(struct pydump *d);

#endif
