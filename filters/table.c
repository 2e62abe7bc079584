/*
 * filters/table — the tables rules name ("tables": inline lists and files),
 * in the forms their uses need, and file tables reloaded on change.
 *
 * A table's contents (struct tdata: name sets by kind, networks) are built
 * whole and published with one pointer store; a file table that changed is
 * read again by the main thread (flt_tables_refresh), and readers on the
 * shards see the old contents or the new, never a mix.  The old contents
 * are freed once no reader can hold them: each lookup of a file table runs
 * inside an epoch section (libck's ck_epoch), and the reload waits for the
 * sections that began before its store.  A file that does not load keeps
 * the old contents, and the reason is logged once per change of the file.
 */
#include <ck_epoch.h>
#include <ck_pr.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "filters/prog.h"
#include "log/log.h"

#define TABLE_FILE_MAX (256u << 20) /* bytes: a bigger file is refused */

struct tdata {
	struct flt_set *sets[FLT_SET_TEXT]; /* by enum flt_set_kind, as uses asks (never TEXT) */
	struct flt_cidrs *cidrs;
	uint32_t entries;
};

/* What a file was when it was read: a change of any of these is a change. */
struct file_id {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
};

struct flt_table {
	char *name;
	char *file;	   /* NULL: inline */
	char **entries;	   /* inline: the entries */
	char **values;	   /* inline: their values (NULL: none) */
	uint32_t count;	   /* inline: how many */
	unsigned uses;	   /* FLT_USE_* */
	struct tdata *cur; /* read with ck_pr_load_ptr */
	struct file_id loaded, failed, seen;
	bool seen_valid;
};

static ck_epoch_t epoch;
static pthread_once_t epoch_once = PTHREAD_ONCE_INIT;
static pthread_key_t epoch_key;

static void epoch_thread_end(void *rec)
{
	ck_epoch_unregister(rec); /* the record stays in the epoch's list, for reuse */
}

static void epoch_make(void)
{
	ck_epoch_init(&epoch);
	if (pthread_key_create(&epoch_key, epoch_thread_end) != 0)
		abort();
}

/* This thread's epoch record, registered at its first lookup. */
static ck_epoch_record_t *epoch_record(void)
{
	ck_epoch_record_t *rec;

	pthread_once(&epoch_once, epoch_make);
	rec = pthread_getspecific(epoch_key);
	if (rec)
		return rec;
	rec = ck_epoch_recycle(&epoch, NULL);
	if (!rec) {
		rec = malloc(sizeof(*rec));
		if (!rec)
			abort(); /* once per thread, at start-up size */
		ck_epoch_register(&epoch, rec, NULL);
	}
	if (pthread_setspecific(epoch_key, rec) != 0)
		abort();
	return rec;
}

static void tdata_free(struct tdata *d)
{
	if (!d)
		return;
	for (int k = 0; k < FLT_SET_TEXT; k++)
		flt_set_free(d->sets[k]);
	flt_cidrs_free(d->cidrs);
	free(d);
}

static const char *kind_what(unsigned use)
{
	return use == (1u << FLT_SET_DOMAINS) ? "a domain or \"*.domain\""
	       : use == (1u << FLT_SET_ADDRS) ? "an address or \"@domain\""
	       : use == FLT_USE_CIDRS	      ? "an IP address or network"
					      : "a name without spaces";
}

/* The forms uses asks for, from n keys; where(i) names key i in errors. */
static struct tdata *tdata_build(unsigned uses, char *const *keys, char *const *values,
				 const uint32_t *lines, uint32_t n, const struct flt_table *t,
				 char *err, size_t err_len)
{
	struct tdata *d = calloc(1, sizeof(*d));

	if (!d)
		goto oom;
	d->entries = n;
	for (int k = 0; k < FLT_SET_TEXT; k++)
		if ((uses & (1u << k)) && !(d->sets[k] = flt_set_new((enum flt_set_kind)k, n)))
			goto oom;
	if ((uses & FLT_USE_CIDRS) && !(d->cidrs = flt_cidrs_new()))
		goto oom;
	for (uint32_t i = 0; i < n; i++) {
		size_t len = strlen(keys[i]);
		const char *val = values && values[i] ? values[i] : "";

		for (unsigned use = 1; use <= FLT_USE_CIDRS; use <<= 1) {
			int rc;

			if (!(uses & use))
				continue;
			rc = use == FLT_USE_CIDRS
				 ? flt_cidrs_add(d->cidrs, keys[i], len)
				 : flt_set_add_value(d->sets[__builtin_ctz(use)], keys[i], len, val,
						     strlen(val));
			if (rc == -ENOMEM)
				goto oom;
			if (rc < 0) {
				if (lines)
					snprintf(err, err_len,
						 "tables.%s.file: line %u: \"%.60s\": expected %s",
						 t->name, lines[i], keys[i], kind_what(use));
				else
					snprintf(err, err_len, "tables.%s.inline[%u]: expected %s",
						 t->name, i, kind_what(use));
				tdata_free(d);
				return NULL;
			}
		}
	}
	if (d->cidrs)
		flt_cidrs_done(d->cidrs);
	return d;
oom:
	snprintf(err, err_len, "tables.%s: out of memory", t->name);
	tdata_free(d);
	return NULL;
}

struct flt_table *flt_table_new(const char *name, const char *file, const char *const *entries,
				const char *const *values, uint32_t count)
{
	struct flt_table *t = calloc(1, sizeof(*t));

	if (!t || !(t->name = strdup(name)) || (file && !(t->file = strdup(file))))
		goto fail;
	if (count && (!(t->entries = calloc(count, sizeof(*t->entries))) ||
		      !(t->values = calloc(count, sizeof(*t->values)))))
		goto fail;
	for (uint32_t i = 0; i < count; i++) {
		if (!(t->entries[i] = strdup(entries[i])))
			goto fail;
		t->count++;
		if (values && values[i] && !(t->values[i] = strdup(values[i])))
			goto fail;
	}
	return t;
fail:
	flt_table_free(t);
	return NULL;
}

void flt_table_use(struct flt_table *t, unsigned use)
{
	t->uses |= use;
}

const char *flt_table_name(const struct flt_table *t)
{
	return t->name;
}

bool flt_table_is_file(const struct flt_table *t)
{
	return t->file != NULL;
}

void flt_table_free(struct flt_table *t)
{
	if (!t)
		return;
	for (uint32_t i = 0; i < t->count; i++) {
		free(t->entries[i]);
		free(t->values[i]);
	}
	free(t->entries);
	free(t->values);
	tdata_free(t->cur);
	free(t->name);
	free(t->file);
	free(t);
}

/* ---- files --------------------------------------------------------------- */

static bool id_equal(const struct file_id *a, const struct file_id *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

static void id_of(const struct stat *st, struct file_id *id)
{
	*id = (struct file_id){st->st_dev, st->st_ino, st->st_size, st->st_mtim};
}

/* The whole file, NUL-terminated; NULL with err. */
static char *file_read(const struct flt_table *t, struct file_id *id, size_t *len, char *err,
		       size_t err_len)
{
	int fd = open(t->file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	struct stat st;
	char *buf = NULL;
	size_t got = 0;

	if (fd < 0 || fstat(fd, &st) < 0) {
		snprintf(err, err_len, "tables.%s.file: cannot read %s: %s", t->name, t->file,
			 strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > TABLE_FILE_MAX) {
		snprintf(err, err_len, "tables.%s.file: %s is not a regular file of at most %u MiB",
			 t->name, t->file, TABLE_FILE_MAX >> 20);
		goto out;
	}
	id_of(&st, id);
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		snprintf(err, err_len, "tables.%s.file: out of memory", t->name);
		goto out;
	}
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break; /* shrank while read: what was there */
		got += (size_t)r;
	}
	buf[got] = '\0';
	*len = got;
out:
	if (fd >= 0)
		close(fd);
	return buf;
}

/* The entries of a file, pointing into its buffer. */
struct lines {
	char **keys, **values;
	uint32_t *line;
	uint32_t n, cap;
};

static int lines_push(struct lines *l, char *k, char *v, uint32_t line)
{
	if (l->n == l->cap) {
		uint32_t c = l->cap ? l->cap * 2 : 1024;
		char **kv = realloc(l->keys, c * sizeof(*kv));

		if (kv)
			l->keys = kv;
		char **vv = kv ? realloc(l->values, c * sizeof(*vv)) : NULL;

		if (vv)
			l->values = vv;
		uint32_t *lv = vv ? realloc(l->line, c * sizeof(*lv)) : NULL;

		if (!lv)
			return -ENOMEM;
		l->line = lv;
		l->cap = c;
	}
	l->keys[l->n] = k;
	l->values[l->n] = v;
	l->line[l->n++] = line;
	return 0;
}

static bool blank(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r';
}

/* Lines: "key" or "key value" (the value runs to the end of the line, its
 * surrounding blanks dropped); blank lines and lines whose first non-blank
 * character is '#' are skipped. */
static int file_parse(const struct flt_table *t, char *buf, size_t len, struct lines *l, char *err,
		      size_t err_len)
{
	uint32_t line = 0;
	char *p = buf, *end = buf + len;

	while (p < end) {
		char *eol = memchr(p, '\n', (size_t)(end - p)), *k, *e, *v;

		if (!eol)
			eol = end;
		*eol = '\0';
		line++;
		if (memchr(p, '\0', (size_t)(eol - p))) {
			snprintf(err, err_len, "tables.%s.file: line %u: a NUL byte", t->name,
				 line);
			return -EINVAL;
		}
		for (k = p; blank(*k); k++)
			;
		p = eol + 1;
		if (!*k || *k == '#')
			continue;
		for (e = k; *e && !blank(*e); e++)
			;
		for (v = e; blank(*v); v++)
			;
		for (char *ve = eol; ve > v && blank(ve[-1]); ve--)
			ve[-1] = '\0';
		*e = '\0';
		if (lines_push(l, k, v, line) < 0) {
			snprintf(err, err_len, "tables.%s.file: out of memory", t->name);
			return -ENOMEM;
		}
	}
	return 0;
}

static struct tdata *file_load(const struct flt_table *t, struct file_id *id, char *err,
			       size_t err_len)
{
	size_t len = 0;
	char *buf = file_read(t, id, &len, err, err_len);
	struct lines l = {0};
	struct tdata *d = NULL;

	if (!buf)
		return NULL;
	if (file_parse(t, buf, len, &l, err, err_len) == 0)
		d = tdata_build(t->uses, l.keys, l.values, l.line, l.n, t, err, err_len);
	free(l.keys);
	free(l.values);
	free(l.line);
	free(buf);
	return d;
}

int flt_table_build(struct flt_table *t, char *err, size_t err_len)
{
	struct tdata *d;

	if (t->file)
		d = file_load(t, &t->loaded, err, err_len);
	else
		d = tdata_build(t->uses, t->entries, t->values, NULL, t->count, t, err, err_len);
	if (!d)
		return -EINVAL;
	t->seen = t->loaded;
	t->seen_valid = t->file != NULL;
	ck_pr_store_ptr(&t->cur, d);
	return 0;
}

/* A file table whose file changed, and has not changed since the last
 * check (a file being written is read once it is still), is read again. */
static void table_refresh(struct flt_table *t)
{
	struct stat st;
	struct file_id id;
	struct tdata *d, *old;
	char err[512];

	if (stat(t->file, &st) < 0) {
		memset(&id, 0, sizeof(id));
	} else {
		id_of(&st, &id);
	}
	if (id_equal(&id, &t->loaded) || id_equal(&id, &t->failed))
		return;
	if (!t->seen_valid || !id_equal(&id, &t->seen)) {
		t->seen = id;
		t->seen_valid = true;
		return; /* changed since the last look: wait until it is still */
	}
	d = file_load(t, &id, err, sizeof(err));
	if (!d) {
		t->failed = t->seen;
		log_msg(LOG_WARN, "event=table_reload_failed table=%s file=%s error=\"%s\"",
			t->name, t->file, err);
		return;
	}
	old = ck_pr_load_ptr(&t->cur);
	ck_pr_store_ptr(&t->cur, d);
	t->loaded = id;
	memset(&t->failed, 0, sizeof(t->failed));
	ck_epoch_synchronize(epoch_record()); /* no reader holds old now */
	tdata_free(old);
	log_msg(LOG_INFO, "event=table_reloaded table=%s file=%s entries=%u", t->name, t->file,
		d->entries);
}

void flt_tables_refresh(const struct flt_rules *r)
{
	for (uint32_t i = 0; i < r->table_count; i++)
		if (r->tables[i]->file)
			table_refresh(r->tables[i]);
}

/* ---- lookups ------------------------------------------------------------- */

bool flt_table_has(const struct flt_table *t, enum flt_set_kind kind, const char *v, size_t n)
{
	ck_epoch_record_t *rec;
	ck_epoch_section_t sec;
	const struct tdata *d;
	bool hit;

	if (!t->file) /* inline: never replaced */
		return flt_set_has(t->cur->sets[kind], v, n);
	rec = epoch_record();
	ck_epoch_begin(rec, &sec);
	d = ck_pr_load_ptr(&t->cur);
	hit = flt_set_has(d->sets[kind], v, n);
	ck_epoch_end(rec, &sec);
	return hit;
}

bool flt_table_has_ip(const struct flt_table *t, const struct sockaddr *sa)
{
	ck_epoch_record_t *rec;
	ck_epoch_section_t sec;
	const struct tdata *d;
	bool hit;

	if (!t->file)
		return flt_cidrs_has(t->cur->cidrs, sa);
	rec = epoch_record();
	ck_epoch_begin(rec, &sec);
	d = ck_pr_load_ptr(&t->cur);
	hit = flt_cidrs_has(d->cidrs, sa);
	ck_epoch_end(rec, &sec);
	return hit;
}

bool flt_table_value_has(const struct flt_table *t, enum flt_set_kind kind, const char *v, size_t n,
			 bool (*pred)(const char *value, void *ctx), void *ctx)
{
	ck_epoch_record_t *rec;
	ck_epoch_section_t sec;
	const char *val;
	bool hit;

	if (!t->file) {
		val = flt_set_value(t->cur->sets[kind], v, n);
		return val && pred(val, ctx);
	}
	rec = epoch_record();
	ck_epoch_begin(rec, &sec);
	val = flt_set_value(((const struct tdata *)ck_pr_load_ptr(&t->cur))->sets[kind], v, n);
	hit = val && pred(val, ctx);
	ck_epoch_end(rec, &sec);
	return hit;
}
