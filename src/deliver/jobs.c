/*
 * deliver/jobs — one attempt of one message: its recipients grouped by
 * route into jobs (a ticket on the shared queue), routing and MX, the jobs'
 * answers, the wait for a connection, and the ticket going back to its
 * owner.  Thread: the shard's; a ticket may be another shard's (only its
 * m->res[] is written then).
 */
#include "deliver/engine.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns/dns.h"
#include "log/log.h"

/* Diagnostics are cut to their fields on purpose (they end up in DSNs and
 * log lines of bounded size). */
#pragma GCC diagnostic ignored "-Wformat-truncation"

/* ---- attempts --------------------------------------------------------------------- */

static const char *rcpt_domain(const struct spool_rcpt *r, const char *fallback, size_t *len)
{
	for (uint32_t i = r->addr.len; i > 0; i--)
		if (r->addr.ptr[i - 1] == '@') {
			*len = r->addr.len - i;
			return r->addr.ptr + i;
		}
	*len = strlen(fallback); /* <Postmaster> */
	return fallback;
}

/* Copy s into out[cap] NUL-terminated, cut before a UTF-8 character that
 * does not fit whole (a reply may hold UTF-8; the DSN keeps it). */
static void copy_text(char *out, size_t cap, const char *s)
{
	size_t n = strlen(s), k = n < cap ? n : cap - 1;

	if (k < n) {
		while (k > 0 && ((unsigned char)s[k] & 0xc0) == 0x80)
			k--;
	}
	memcpy(out, s, k);
	out[k] = '\0';
}

void dlv_set_res(struct qmsg *m, uint32_t r, int cls, const char *status, const char *diag)
{
	struct qrcpt_res *res = &m->res[r];

	res->cls = (uint8_t)cls;
	res->success = QRCPT_SUCCESS_NONE;
	res->mta[0] = '\0';
	snprintf(res->status, sizeof(res->status), "%s", status);
	copy_text(res->diag, sizeof(res->diag), diag);
}

static_assert(sizeof(((struct qrcpt_res *)0)->mta) >= sizeof(((struct dhop *)0)->host) &&
		  sizeof(((struct qrcpt_res *)0)->mta) >= INET6_ADDRSTRLEN + 7,
	      "qrcpt_res.mta holds an MX name and an IPv6 address literal");

/* RFC 3464 2.3.5: the MTA that answered for the job's recipients: the MX
 * host's name when reached through MX, else the address literal of the
 * hop in RFC 5321 4.1.3 form.  None for local delivery, or when no hop
 * was reached (every one failed: the job is past its last). */
static void job_remote_mta(const struct djob *job, char *out, size_t cap)
{
	char ip[INET6_ADDRSTRLEN] = "";

	out[0] = '\0';
	if (job->cur >= job->nhops)
		return;
	const struct dhop *h = &job->hops[job->cur];
	if (job->route->hops[0].kind == CONFIG_HOP_MX) {
		snprintf(out, cap, "%s", h->host);
	} else if (h->addr.ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&h->addr)->sin6_addr, ip,
			  sizeof(ip));
		snprintf(out, cap, "[IPv6:%s]", ip);
	} else {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)&h->addr)->sin_addr, ip,
			  sizeof(ip));
		snprintf(out, cap, "[%s]", ip);
	}
}

/* RFC 3461 5.2.2.2 and 4.1: who reports a success.  A hop that offered
 * DSN got NOTIFY and reports itself; otherwise we do: "relayed" when an
 * SMTP hop took it, "delivered" when LMTP or a mailbox was the final
 * delivery. */
static enum qrcpt_success job_success(const struct djob *job)
{
	enum config_hop_kind kind = job->route->hops[0].kind;

	if (kind == CONFIG_HOP_MAILDIR || kind == CONFIG_HOP_MBOX)
		return QRCPT_SUCCESS_DELIVERED;
	assert(job->cur < job->nhops);
	if (job->hop_dsn)
		return QRCPT_SUCCESS_NONE;
	return job->hops[job->cur].lmtp ? QRCPT_SUCCESS_DELIVERED : QRCPT_SUCCESS_RELAYED;
}

void dlv_rcpt_result(struct deliver *d, struct djob *job, uint32_t i, int cls, const char *status,
		     const char *diag)
{
	struct qmsg *m = job->m;
	uint32_t r = job->rcpt[i];
	struct spool_rcpt rc;
	char id[SPOOL_QID_LEN + 1];

	dlv_set_res(m, r, cls, status, diag);
	job_remote_mta(job, m->res[r].mta, sizeof(m->res[r].mta));
	if (cls == 2)
		m->res[r].success = (uint8_t)job_success(job);
	spool_env_rcpt(&m->env, r, &rc);
	dlv_qid(m->id, id);
	log_msg(LOG_INFO,
		"event=%s id=%s rcpt=<%.*s> shard=%u relay=%s tls=\"%s\" status=%s reply=\"%s\"",
		cls == 2   ? "delivered"
		: cls == 5 ? "bounced"
			   : "deferred",
		id, (int)rc.addr.len, rc.addr.ptr, d->core.shard,
		job->nhops ? job->hops[job->cur < job->nhops ? job->cur : 0].name
			   : job->route->hops[0].text,
		job->tls_info[0] ? job->tls_info : "none", status, diag);
}

static void job_free(struct djob *job)
{
	free(job->rcpt);
	free(job);
}

void dlv_job_done(struct deliver *d, struct djob *job)
{
	struct qmsg *m = job->m;

	for (uint32_t i = 0; i < job->nrcpt; i++)
		if (m->res[job->rcpt[i]].cls == 0)
			dlv_rcpt_result(d, job, i, 4, "4.4.1",
					job->last_err[0] ? job->last_err : "no answer");
	struct dticket *t = job->t;

	job_free(job);
	if (--t->jobs == 0)
		dlv_ticket_done(d, t);
}

void dlv_job_hop_failed(struct deliver *d, struct djob *job, const char *why)
{
	snprintf(job->last_err, sizeof(job->last_err), "X-ringmx; %s: %s", job->hops[job->cur].name,
		 why);
	job->cur++;
	dlv_job_go(d, job);
}

void dlv_job_again(struct deliver *d, struct djob *job)
{
	assert(job->cur < job->nhops);
	dlv_job_go(d, job);
}

void dlv_conn_freed(struct deliver *d)
{
	d->kick = true;
}

static void wait_add(struct deliver *d, struct djob *job)
{
	job->waiting = true;
	job->next = NULL;
	job->prev = d->wait_tail;
	if (d->wait_tail)
		d->wait_tail->next = job;
	else
		d->wait_head = job;
	d->wait_tail = job;
}

void dlv_wait_del(struct deliver *d, struct djob *job)
{
	if (job->prev)
		job->prev->next = job->next;
	else
		d->wait_head = job->next;
	if (job->next)
		job->next->prev = job->prev;
	else
		d->wait_tail = job->prev;
	job->waiting = false;
	job->next = job->prev = NULL;
}

/* ---- MX ------------------------------------------------------------------------------- */

static void mx_done(void *arg, const struct dns_mx_result *res)
{
	struct djob *job = arg;
	struct deliver *d = job->d;
	char diag[DLV_ERR_MAX];

	job->dns_wait = false;
	if (res->status == DNS_NULLMX || res->status == DNS_NXDOMAIN || res->status == DNS_NOADDR) {
		const char *st = res->status == DNS_NULLMX ? "5.1.10" : "5.1.2";

		snprintf(diag, sizeof(diag), "X-ringmx; %s: %s", res->domain,
			 res->status == DNS_NULLMX
			     ? "the domain accepts no mail (null MX, RFC 7505)"
			 : res->why[0] ? res->why
				       : dns_status_name(res->status));
		for (uint32_t i = 0; i < job->nrcpt; i++)
			dlv_rcpt_result(d, job, i, 5, st, diag);
		dlv_job_done(d, job);
		return;
	}
	if (res->status != DNS_OK) {
		snprintf(job->last_err, sizeof(job->last_err), "X-ringmx; DNS for %s: %s",
			 res->domain, res->why[0] ? res->why : dns_status_name(res->status));
		dlv_job_done(d, job);
		return;
	}
	job->nhops = 0;
	for (uint32_t h = 0; h < res->host_count; h++) {
		const struct dns_mx_host *mh = &res->hosts[h];

		for (uint32_t a = 0; a < mh->addr_count && job->nhops < DLV_HOPS_MAX; a++) {
			struct dhop *hp = &job->hops[job->nhops++];
			char ip[INET6_ADDRSTRLEN];

			memset(hp, 0, sizeof(*hp));
			if (mh->addrs[a].sa.sa_family == AF_INET6) {
				hp->addr = (struct sockaddr_storage){0};
				memcpy(&hp->addr, &mh->addrs[a].v6, sizeof(mh->addrs[a].v6));
				((struct sockaddr_in6 *)&hp->addr)->sin6_port = htons(25);
				hp->len = sizeof(struct sockaddr_in6);
				inet_ntop(AF_INET6, &mh->addrs[a].v6.sin6_addr, ip, sizeof(ip));
			} else {
				memcpy(&hp->addr, &mh->addrs[a].v4, sizeof(mh->addrs[a].v4));
				((struct sockaddr_in *)&hp->addr)->sin_port = htons(25);
				hp->len = sizeof(struct sockaddr_in);
				inet_ntop(AF_INET, &mh->addrs[a].v4.sin_addr, ip, sizeof(ip));
			}
			snprintf(hp->name, sizeof(hp->name), "%.60s[%s]:25", mh->name, ip);
			snprintf(hp->host, sizeof(hp->host), "%s", mh->name);
			hp->tls = (uint8_t)job->route->tls;
			hp->route = (uint16_t)(job->route - d->core.cfg->routes);
		}
	}
	job->cur = 0;
	dlv_job_go(d, job);
}

/* ---- jobs ------------------------------------------------------------------------------ */

void dlv_job_go(struct deliver *d, struct djob *job)
{
	enum config_hop_kind kind = job->route->hops[0].kind;

	if (kind == CONFIG_HOP_MAILDIR || kind == CONFIG_HOP_MBOX) {
		if (!dlv_local_start(d, job))
			wait_add(d, job);
		return;
	}
	if (job->cur >= job->nhops) {
		if (!job->last_err[0])
			snprintf(job->last_err, sizeof(job->last_err), "X-ringmx; no next hop");
		dlv_job_done(d, job);
		return;
	}
	if (!oc_assign(d, job))
		wait_add(d, job);
}

static void job_start(struct deliver *d, struct djob *job)
{
	const struct config_route *rt = job->route;

	if (rt->hops[0].kind == CONFIG_HOP_MX) {
		int rc = dns_resolve_mx(d->dns, job->domain, mx_done, job);

		if (rc == 0) {
			job->dns_wait = true;
			return;
		}
		snprintf(job->last_err, sizeof(job->last_err), "X-ringmx; DNS for %s: %s",
			 job->domain, rc == -EINVAL ? "not a domain name" : strerror(-rc));
		if (rc == -EINVAL) {
			for (uint32_t i = 0; i < job->nrcpt; i++)
				dlv_rcpt_result(d, job, i, 5, "5.1.2", job->last_err);
		}
		dlv_job_done(d, job);
		return;
	}
	if (rt->hops[0].kind == CONFIG_HOP_SMTP || rt->hops[0].kind == CONFIG_HOP_LMTP) {
		for (uint32_t h = 0; h < rt->hop_count && h < DLV_HOPS_MAX; h++) {
			struct dhop *hp = &job->hops[h];

			memset(hp, 0, sizeof(*hp));
			memcpy(&hp->addr, &rt->hops[h].addr, rt->hops[h].addr_len);
			hp->len = rt->hops[h].addr_len;
			hp->lmtp = rt->hops[h].kind == CONFIG_HOP_LMTP;
			snprintf(hp->name, sizeof(hp->name), "%s", rt->hops[h].text);
			hp->tls = (uint8_t)rt->tls;
			hp->route = (uint16_t)(rt - d->core.cfg->routes);
			/* An IP route: a certificate is checked against the address. */
			getnameinfo((struct sockaddr *)&hp->addr, hp->len, hp->host,
				    sizeof(hp->host), NULL, 0, NI_NUMERICHOST);
		}
		job->nhops = rt->hop_count;
	}
	dlv_job_go(d, job);
}

/* Run a ticket (ours or another shard's): group its pending recipients by
 * route into jobs and start them.  Writes only m->res[]. */
void dlv_ticket_run(struct deliver *d, struct dticket *t)
{
	struct qmsg *m = t->m;
	struct djob *jobs[64];
	uint32_t njobs = 0;

	assert(m != NULL && t->owner < d->core.shards);
	d->running++;
	for (uint32_t r = 0; r < m->env.rcpt_count; r++) {
		struct spool_rcpt rc;
		const struct config_route *rt;
		const char *dom;
		size_t dlen;
		char domain[SMTP_DOMAIN_MAX + 1];
		struct djob *job = NULL;

		if (m->rst[r] != SPOOL_RCPT_PENDING && m->rst[r] != SPOOL_RCPT_DEFERRED)
			continue;
		spool_env_rcpt(&m->env, r, &rc);
		dom = rcpt_domain(&rc, d->core.cfg->hostname, &dlen);
		snprintf(domain, sizeof(domain), "%.*s", (int)dlen, dom);
		/* A filter's choice first; a route no longer in the config
		 * (the config changed) leaves the choice to the domain. */
		rt = m->env.route.len
			 ? config_route_by_name(d->core.cfg, m->env.route.ptr, m->env.route.len)
			 : NULL;
		if (!rt)
			rt = config_route_find(d->core.cfg, domain, strlen(domain));
		if (!rt) {
			char diag[DLV_ERR_MAX];

			snprintf(diag, sizeof(diag), "X-ringmx; no route for domain %s", domain);
			dlv_set_res(m, r, 4, "4.3.5", diag);
			continue;
		}
		for (uint32_t j = 0; j < njobs; j++)
			if (jobs[j]->route == rt && (rt->hops[0].kind != CONFIG_HOP_MX ||
						     strcasecmp(jobs[j]->domain, domain) == 0))
				job = jobs[j];
		if (!job && njobs < 64) {
			job = calloc(1, sizeof(*job));
			if (job)
				job->rcpt = malloc(m->env.rcpt_count * (sizeof(uint32_t) + 1));
			if (!job || !job->rcpt) {
				free(job);
				job = NULL;
			} else {
				job->acc = (uint8_t *)(job->rcpt + m->env.rcpt_count);
				job->d = d;
				job->t = t;
				job->segfd = t->segfd;
				job->m = m;
				job->route = rt;
				snprintf(job->domain, sizeof(job->domain), "%s", domain);
				jobs[njobs++] = job;
			}
		}
		if (!job) {
			dlv_set_res(m, r, 4, "4.3.0", "X-ringmx; out of resources, will retry");
			continue;
		}
		job->acc[job->nrcpt] = 0;
		job->rcpt[job->nrcpt++] = r;
	}
	t->jobs = njobs + 1; /* held until every job started */
	for (uint32_t j = 0; j < njobs; j++)
		job_start(d, jobs[j]);
	if (--t->jobs == 0)
		dlv_ticket_done(d, t);
}

/* Owner: a ticket came back; its answers become the message's state. */
static void ticket_apply(struct deliver *d, struct dticket *t)
{
	struct qmsg *m = t->m;

	assert(t->owner == d->core.shard && d->tickets_out > 0);
	free(t);
	d->tickets_out--;
	/* A delivery whose success we report stays pending until that report
	 * is durable, as a bounce does (report_settle). */
	for (uint32_t i = 0; i < m->env.rcpt_count; i++)
		if (m->res[i].cls == 2 && !dlv_success_reported(m, i))
			qmsg_rcpt_set(m, i, SPOOL_RCPT_DELIVERED);
	dlv_attempt_finish(d, m);
}

/* Every job of the ticket answered: back to its owner. */
void dlv_ticket_done(struct deliver *d, struct dticket *t)
{
	assert(d->running > 0 && t->jobs == 0);
	d->running--;
	if (t->owner == d->core.shard) {
		ticket_apply(d, t);
		return;
	}
	dq_hand_back(d->shared, t->owner, t);
}

void deliver_wake(struct deliver *d)
{
	struct dticket *t;

	while ((t = dq_take_back(d->shared, d->core.shard)) != NULL)
		ticket_apply(d, t);
}

/* Owner: an attempt of m goes on the shared queue.  false when the queue
 * is full (m stays ready for the next turn). */
bool dlv_attempt_begin(struct deliver *d, struct qmsg *m)
{
	struct dticket *t;

	if (!m->res)
		m->res = calloc(m->env.rcpt_count ? m->env.rcpt_count : 1, sizeof(*m->res));
	t = calloc(1, sizeof(*t));
	if (!m->res || !t || d->tickets_out >= DQ_OUT_MAX) {
		free(t);
		return false;
	}
	for (uint32_t r = 0; r < m->env.rcpt_count; r++)
		m->res[r].cls = 0;
	t->m = m;
	t->owner = d->core.shard;
	t->segfd = dlv_seg_fd(d, m->seq);
	qseg_key(&d->segs, m->seq, &t->segkey);
	if (!dq_put(d->shared, t)) {
		free(t);
		return false;
	}
	dlv_list_set(d, m, QW_ACTIVE);
	m->attempts++;
	d->tickets_out++;
	assert(d->tickets_out <= DQ_OUT_MAX);
	return true;
}
