/*
 * queue/qindex — see qindex.h.
 */
#include "queue/qindex.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log/log.h"
#include "queue/spool.h"

#define QINDEX_INIT_SIZE 1024

static uint32_t id_hash(uint64_t id)
{
	return (uint32_t)((id * 0x9e3779b97f4a7c15ull) >> 32);
}

int qindex_init(struct qindex *ix)
{
	ix->table = calloc(QINDEX_INIT_SIZE, sizeof(ix->table[0]));
	ix->mask = QINDEX_INIT_SIZE - 1;
	ix->count = 0;
	return ix->table ? 0 : -ENOMEM;
}

void qindex_free(struct qindex *ix)
{
	if (!ix->table)
		return;
	for (uint32_t i = 0; i <= ix->mask; i++)
		for (struct qmsg *m = ix->table[i], *n; m; m = n) {
			n = m->hnext;
			free(m->res);
			free(m);
		}
	free(ix->table);
	ix->table = NULL;
}

/* Chained buckets; the table doubles when the load passes 1. */
static void qindex_grow(struct qindex *ix)
{
	uint32_t n = (ix->mask + 1) * 2;
	struct qmsg **t = calloc(n, sizeof(t[0]));

	if (!t)
		return; /* longer chains, still correct */
	for (uint32_t i = 0; i <= ix->mask; i++)
		for (struct qmsg *m = ix->table[i], *next; m; m = next) {
			next = m->hnext;
			m->hnext = t[id_hash(m->id) & (n - 1)];
			t[id_hash(m->id) & (n - 1)] = m;
		}
	free(ix->table);
	ix->table = t;
	ix->mask = n - 1;
}

struct qmsg *qindex_add(struct qindex *ix, uint64_t seq, uint64_t commit_off, const uint8_t *enc,
			uint32_t enc_len)
{
	struct spool_env env;
	struct qmsg *m;

	if (spool_env_decode(enc, enc_len, &env) != 0 || qindex_find(ix, env.id))
		return NULL;
	m = calloc(1, sizeof(*m) + enc_len + env.rcpt_count);
	if (!m)
		return NULL;
	m->enc = (uint8_t *)(m + 1);
	memcpy(m->enc, enc, enc_len);
	m->enc_len = enc_len;
	m->rst = m->enc + enc_len;
	if (spool_env_decode(m->enc, enc_len, &m->env) != 0) {
		free(m);
		return NULL;
	}
	m->id = env.id;
	m->seq = seq;
	m->commit_off = commit_off;
	/* Quarantined: held until an operator releases it (a state record
	 * read later, or written by the release, says otherwise). */
	if (env.quarantine.len)
		m->flags |= SPOOL_STATE_HELD;
	if (ix->count >= ix->mask + 1)
		qindex_grow(ix);
	m->hnext = ix->table[id_hash(m->id) & ix->mask];
	ix->table[id_hash(m->id) & ix->mask] = m;
	ix->count++;
	assert(qindex_find(ix, m->id) == m && m->where == QW_NONE && !m->rlisted);
	return m;
}

struct qmsg *qindex_find(const struct qindex *ix, uint64_t id)
{
	for (struct qmsg *m = ix->table[id_hash(id) & ix->mask]; m; m = m->hnext)
		if (m->id == id)
			return m;
	return NULL;
}

/* Only a message on no list and no record list may go: the engine's
 * lists would keep a pointer to freed memory. */
void qindex_remove(struct qindex *ix, struct qmsg *m)
{
	struct qmsg **pp = &ix->table[id_hash(m->id) & ix->mask];
	uint64_t id = m->id;

	assert(m->where == QW_NONE && !m->rlisted && ix->count > 0);
	while (*pp && *pp != m)
		pp = &(*pp)->hnext;
	assert(*pp == m); /* a member, or the table is broken */
	if (*pp) {
		*pp = m->hnext;
		ix->count--;
	}
	free(m->res);
	free(m);
	assert(qindex_find(ix, id) == NULL);
}

void qmsg_apply_state(struct qmsg *m, const struct spool_state *st)
{
	uint32_t n = st->rcpt_count < m->env.rcpt_count ? st->rcpt_count : m->env.rcpt_count;

	/* The decoder bounds the error text (record.c); error[] holds it. */
	assert(st->error_len <= SPOOL_STATE_ERR_MAX && (st->error != NULL || st->error_len == 0));
	for (uint32_t i = 0; i < n; i++)
		m->rst[i] = st->rcpt_state[i];
	m->attempts = st->attempts;
	m->flags = st->flags;
	m->next_s = st->next_attempt_s;
	memcpy(m->error, st->error, st->error_len);
	m->error[st->error_len] = '\0';
}

void qmsg_rcpt_set(struct qmsg *m, uint32_t r, enum spool_rcpt_state st)
{
	assert(r < m->env.rcpt_count && st <= SPOOL_RCPT_DEFERRED);
	assert(m->rst[r] == SPOOL_RCPT_PENDING || m->rst[r] == SPOOL_RCPT_DEFERRED ||
	       m->rst[r] == st);
	m->rst[r] = (uint8_t)st;
}

uint32_t qmsg_state_encode(const struct qmsg *m, uint8_t *out, size_t cap)
{
	struct spool_state st = {
	    .flags = m->flags,
	    .attempts = m->attempts,
	    .rcpt_count = m->env.rcpt_count,
	    .next_attempt_s = m->next_s,
	    .rcpt_state = m->rst,
	    .error = m->error,
	    .error_len = (uint32_t)strlen(m->error),
	};

	return (uint32_t)spool_state_encode(&st, out, cap);
}

uint32_t qmsg_pending(const struct qmsg *m)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < m->env.rcpt_count; i++)
		n += m->rst[i] == SPOOL_RCPT_PENDING || m->rst[i] == SPOOL_RCPT_DEFERRED;
	return n;
}

/* ---- start-up load ----------------------------------------------------------- */

struct load_ctx {
	struct qindex *ix;
	uint64_t seq;
	int err;
};

static int load_commit(void *vctx, const struct spool_scan_msg *msg)
{
	struct load_ctx *ctx = vctx;

	struct qmsg *old;

	if (!msg->body_ok)
		return 0;
	/* A later COMMIT of the same id is the message moved forward out of an
	 * older segment with its remaining recipients: it replaces the old one
	 * (and the old one's state, which used the old recipient list). */
	old = qindex_find(ctx->ix, msg->env.id);
	if (old)
		qindex_remove(ctx->ix, old);
	if (!qindex_add(ctx->ix, ctx->seq, msg->commit_off, msg->env_raw, msg->env_raw_len)) {
		ctx->err = -ENOMEM;
		return 1;
	}
	return 0;
}

static int load_state(void *vctx, const struct spool_rec_hdr *h, const uint8_t *p)
{
	struct load_ctx *ctx = vctx;
	struct qmsg *m = qindex_find(ctx->ix, h->msg_id);
	struct spool_state st;

	if (!m)
		return 0; /* its segment was reclaimed: it finished long ago */
	if (h->type == SPOOL_REC_DONE) {
		qindex_remove(ctx->ix, m);
		return 0;
	}
	if (spool_state_decode(p, h->len, &st) != 0)
		return 0;
	/* Deleted by the operator while an attempt ran: its DONE may not
	 * have followed, the delete stands. */
	if (st.flags & SPOOL_STATE_DELETED) {
		qindex_remove(ctx->ix, m);
		return 0;
	}
	qmsg_apply_state(m, &st);
	return 0;
}

static int seq_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Live messages per segment (seqs sorted), in one pass over the index,
 * each segment reported to seg_fn.  0 or -ENOMEM (none reported). */
static int report_live(const struct qindex *ix, const uint64_t *seqs, size_t n,
		       qindex_seg_fn seg_fn, void *ctx)
{
	uint32_t *live = calloc(n ? n : 1, sizeof(*live));

	if (!live)
		return -ENOMEM;
	for (uint32_t b = 0; b <= ix->mask; b++)
		for (struct qmsg *m = ix->table[b]; m; m = m->hnext) {
			const uint64_t *at = bsearch(&m->seq, seqs, n, sizeof(*seqs), seq_cmp);

			if (at)
				live[at - seqs]++;
		}
	for (size_t i = 0; i < n; i++)
		seg_fn(ctx, seqs[i], live[i]);
	free(live);
	return 0;
}

int qindex_load(struct qindex *ix, const char *root, uint32_t shard, qindex_seg_fn seg_fn,
		void *ctx, char *why, size_t why_len)
{
	char dir[PATH_MAX];
	uint64_t *seqs = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int dirfd, rc = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/%u", root, shard);
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0)
		return errno == ENOENT ? 0 : -errno;
	d = fdopendir(dup(dirfd));
	while (d && (de = readdir(d)) != NULL) {
		uint64_t seq;

		if (!spool_seg_parse(de->d_name, &seq))
			continue;
		if (n == cap) {
			uint64_t *t = realloc(seqs, (cap = cap ? cap * 2 : 64) * sizeof(*t));
			if (!t) {
				rc = -ENOMEM;
				break;
			}
			seqs = t;
		}
		seqs[n++] = seq;
	}
	if (d)
		closedir(d);
	qsort(seqs, n, sizeof(*seqs), seq_cmp);
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct load_ctx lc = {.ix = ix, .seq = seqs[i]};
		struct spool_scan_stats st;
		char name[SPOOL_SEG_NAME_MAX];
		int fd;

		spool_seg_name(seqs[i], name);
		fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			rc = -errno;
			snprintf(why, why_len, "%s/%s: %s", dir, name, strerror(errno));
			break;
		}
		rc = spool_segment_scan_states(fd, UINT64_MAX, true, load_commit, load_state, &lc,
					       &st);
		close(fd);
		if (rc == 0 && st.bad_bodies)
			log_msg(LOG_WARN, "event=spool_recover segment=%s/%s bad_bodies=%u", dir,
				name, st.bad_bodies);
		if (rc == 0 && lc.err)
			rc = lc.err;
		if (rc)
			snprintf(why, why_len, "%s/%s: load failed: %s", dir, name,
				 strerror(rc < 0 ? -rc : EIO));
	}
	if (rc == 0 && seg_fn && report_live(ix, seqs, n, seg_fn, ctx) < 0) {
		rc = -ENOMEM;
		snprintf(why, why_len, "%s: out of memory", dir);
	}
	free(seqs);
	close(dirfd);
	return rc < 0 ? rc : rc ? -EIO : 0;
}
