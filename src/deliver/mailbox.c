/*
 * deliver/mailbox — local delivery (Maildir, mbox) of a job on a helper
 * thread: the message is read into memory once and written to each
 * recipient's mailbox; the answers come back to the shard.
 */
#include "deliver/engine.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "local/local.h"

/* Diagnostics are cut to their fields on purpose (they end up in DSNs and
 * log lines of bounded size). */
#pragma GCC diagnostic ignored "-Wformat-truncation"

/* A local delivery job on a helper. */
struct dlocal {
	struct djob *job;
	const char *base;
	bool mbox;
	int segfd;
	struct {
		uint8_t cls;
		char status[12];
		char diag[LOCAL_DIAG_MAX];
	} * out;
};

/* ---- local delivery (helper thread) ----------------------------------------------------- */

int dlv_membuf_put(void *ctx, const char *p, size_t n)
{
	struct membuf *b = ctx;

	if (b->len + n > b->cap) {
		size_t nc = b->cap ? b->cap * 2 : 65536;
		char *t;

		while (nc < b->len + n)
			nc *= 2;
		t = realloc(b->p, nc);
		if (!t)
			return -ENOMEM;
		b->p = t;
		b->cap = nc;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

static int membuf_read(void *ctx, char *buf, size_t cap, size_t *got)
{
	struct membuf *b = ctx;
	size_t n = b->len - b->rd < cap ? b->len - b->rd : cap;

	memcpy(buf, b->p + b->rd, n);
	b->rd += n;
	*got = n;
	return 0;
}

static int local_job(void *arg)
{
	struct dlocal *lj = arg;
	struct djob *job = lj->job;
	const struct qmsg *m = job->m;
	struct membuf b = {0};
	char sender[SMTP_PATH_MAX + 1], rcpt[SMTP_PATH_MAX + 1];
	int rc = spool_message_read(lj->segfd, &m->env, m->commit_off, dlv_membuf_put, &b);

	snprintf(sender, sizeof(sender), "%.*s", (int)m->env.mail_from.len, m->env.mail_from.ptr);
	for (uint32_t i = 0; i < job->nrcpt; i++) {
		struct local_result res = {0};
		struct spool_rcpt r;

		if (rc < 0) {
			lj->out[i].cls = 4;
			snprintf(lj->out[i].status, sizeof(lj->out[i].status), "4.3.0");
			snprintf(lj->out[i].diag, sizeof(lj->out[i].diag),
				 "X-ringmx; spool read: %s", strerror(-rc));
			continue;
		}
		spool_env_rcpt(&m->env, job->rcpt[i], &r);
		snprintf(rcpt, sizeof(rcpt), "%.*s", (int)r.addr.len, r.addr.ptr);
		b.rd = 0;
		struct local_msg lm = {.read = membuf_read,
				       .ctx = &b,
				       .sender = sender,
				       .rcpt = rcpt,
				       .dot_stuffed = (m->env.flags & SPOOL_ENV_STUFFED) != 0};
		if (lj->mbox)
			local_mbox_deliver(lj->base, &lm, &res);
		else
			local_maildir_deliver(lj->base, &lm, &res);
		lj->out[i].cls = res.cls == LOCAL_DELIVERED ? 2 : res.cls == LOCAL_TEMPFAIL ? 4 : 5;
		snprintf(lj->out[i].status, sizeof(lj->out[i].status), "%s",
			 res.status ? res.status : "4.3.0");
		snprintf(lj->out[i].diag, sizeof(lj->out[i].diag), "X-ringmx; %s", res.diag);
	}
	free(b.p);
	return 0;
}

bool dlv_local_start(struct deliver *d, struct djob *job)
{
	const struct config_hop *h = &job->route->hops[0];
	struct dlocal *lj = calloc(1, sizeof(*lj));
	int rc;

	if (!lj || !(lj->out = calloc(job->nrcpt, sizeof(lj->out[0])))) {
		free(lj);
		return false;
	}
	lj->job = job;
	lj->base = h->path;
	lj->mbox = h->kind == CONFIG_HOP_MBOX;
	lj->segfd = job->segfd;
	rc = hpool_submit_job(d->pool, d->core.shard, 1, local_job, lj);
	if (rc < 0) {
		free(lj->out);
		free(lj);
		return false;
	}
	d->helper_jobs++;
	return true;
}

void dlv_local_done(struct deliver *d, struct dlocal *lj)
{
	struct djob *job = lj->job;

	for (uint32_t i = 0; i < job->nrcpt; i++)
		dlv_rcpt_result(d, job, i, lj->out[i].cls, lj->out[i].status, lj->out[i].diag);
	free(lj->out);
	free(lj);
	dlv_job_done(d, job);
}
