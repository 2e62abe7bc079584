/* outbound_testlib — the engine, a config and a stored message for the
 * outbound client's unit tests (outbound_testlib.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log/log.h"
#include "outbound_testlib.h"
#include "tls/tls.h"

#define OT_MSG_ID   0x0300000000000042ull
#define OT_OTHER_ID 0x0300000000000041ull

/* ---- the engine (deliver/internal.h) --------------------------------------------- */

__attribute__((format(printf, 2, 3))) static void ot_record(struct deliver *d, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(d->calls + d->calls_len, sizeof(d->calls) - d->calls_len, fmt, ap);
	va_end(ap);
	assert_true(n > 0 && (size_t)n < sizeof(d->calls) - d->calls_len);
	d->calls_len += (size_t)n;
}

struct deliver_core *dlv_core(struct deliver *d)
{
	return &d->core;
}

void dlv_rcpt_result(struct deliver *d, struct djob *job, uint32_t i, int cls, const char *status,
		     const char *diag)
{
	assert_true(i < job->nrcpt);
	ot_record(d, "rcpt %u %d %s %s\n", i, cls, status, diag);
}

void dlv_job_hop_failed(struct deliver *d, struct djob *job, const char *why)
{
	(void)job;
	d->job_calls++;
	ot_record(d, "hop_failed %s\n", why);
}

void dlv_job_done(struct deliver *d, struct djob *job)
{
	(void)job;
	d->job_calls++;
	ot_record(d, "done\n");
}

void dlv_job_again(struct deliver *d, struct djob *job)
{
	d->job_calls++;
	ot_record(d, "again%s\n", job->fresh ? " fresh" : "");
}

void dlv_conn_freed(struct deliver *d)
{
	struct djob *job = d->waiting;

	d->conn_freed++;
	d->waiting = NULL;
	if (job)
		ot_record(d, "assign %s\n", oc_assign(d, job) ? "yes" : "no");
}

int dlv_seg_fd(struct deliver *d, uint64_t seq)
{
	(void)d;
	(void)seq;
	fail_msg("dlv_seg_fd: the job carries its segment's fd");
	return -1;
}

const char *ot_calls(struct ot *o)
{
	static char out[OT_CALLS_MAX];
	struct deliver *d = &o->d;

	memcpy(out, d->calls + d->calls_seen, d->calls_len - d->calls_seen);
	out[d->calls_len - d->calls_seen] = '\0';
	d->calls_seen = d->calls_len;
	return out;
}

/* ---- set-up ---------------------------------------------------------------------- */

struct ot *ot_new(void)
{
	struct ot *o = calloc(1, sizeof(*o));
	char why[256];

	assert_non_null(o);
	assert_int_equal(log_setup(LOG_WARN, false, NULL, why, sizeof(why)), 0);
	snprintf(o->cfg.hostname, sizeof(o->cfg.hostname), "%s", OT_HOST);
	o->cfg.shards = 1;
	o->cfg.route_count = 1;
	o->cfg.delivery.connections_per_route = 20;
	o->cfg.delivery.messages_per_connection = 100;
	o->cfg.delivery.connect_timeout_s = 30;
	o->cfg.delivery.command_timeout_s = 300;
	o->d.core.cfg = &o->cfg;
	o->d.core.shards = 1;
	o->d.core.now_ms = 1000000;
	o->d.core.tls_client = o->tls_client;
	o->segfd = -1;
	assert_int_equal(oc_table_init(&o->d), 0);
	return o;
}

void ot_free(struct ot *o)
{
	struct deliver_core *c = &o->d.core;

	for (uint32_t i = 0; i < c->net->nslots; i++) {
		assert_int_equal(c->net->conns[i].late_calls, 0);
		net_close(&c->net->conns[i]);
		if (c->net->conns[i].fread)
			nf_file_read(&c->net->conns[i]);
	}
	nf_reap(c->net);
	assert_int_equal(net_active(c->net), 0);
	/* oc_table_free frees the route contexts and the array: ours is
	 * in struct ot, so it gets a copy. */
	c->tls_client = calloc(1, sizeof(c->tls_client[0]));
	assert_non_null(c->tls_client);
	c->tls_client[0] = o->tls_client[0];
	oc_table_free(&o->d);
	if (o->segfd >= 0)
		close(o->segfd);
	free(o);
}

void ot_tls(struct ot *o, enum config_route_tls policy)
{
	struct tls_params tp = {.role = TLS_ROLE_CLIENT};
	char why[TLS_WHY_MAX];

	if (!o->tls_client[0])
		o->tls_client[0] = tls_ctx_new(&tp, why, sizeof(why));
	if (!o->tls_client[0])
		fail_msg("tls_ctx_new: %s", why);
	o->job.hops[0].tls = (uint8_t)policy;
}

/* ---- the stored message ---------------------------------------------------------- */

/* A CHUNK record of msg_id with payload p[0..n) at seg[*off]. */
static void put_chunk(struct ot *o, uint8_t *seg, uint64_t *off, uint64_t msg_id, const char *p,
		      uint32_t n)
{
	struct spool_rec_hdr h;

	spool_rec_hdr_init(&h, &o->key, SPOOL_REC_CHUNK, msg_id, n, spool_crc32c(0, p, n));
	memcpy(seg + *off, &h, sizeof(h));
	memcpy(seg + *off + sizeof(h), p, n);
	*off += spool_rec_size(n);
}

/* The segment: its head, then the message in chunks of at most chunk
 * bytes, each followed by a chunk of another message (interleaved, as one
 * shard's sessions write them).  Fills the envelope's chunk fields. */
static void write_segment(struct ot *o, const char *wire, uint32_t wire_len, uint32_t chunk,
			  struct spool_env *e)
{
	static const char other[] = "another session's bytes\r\n";
	uint32_t nchunks = wire_len / chunk + 2;
	size_t cap = sizeof(struct spool_seg_head) +
		     nchunks * (spool_rec_size(chunk) + spool_rec_size(sizeof(other)));
	uint8_t *seg = calloc(1, cap);
	char path[] = "/tmp/ringmx-octest-XXXXXX";
	uint64_t off = sizeof(struct spool_seg_head);

	assert_non_null(seg);
	assert_int_equal(spool_key_new(&o->key), 0);
	spool_seg_head_init((struct spool_seg_head *)seg, 3, 1, &o->key);
	e->first_chunk_off = off;
	for (uint32_t done = 0; done < wire_len;) {
		uint32_t n = wire_len - done < chunk ? wire_len - done : chunk;

		put_chunk(o, seg, &off, OT_MSG_ID, wire + done, n);
		put_chunk(o, seg, &off, OT_OTHER_ID, other, sizeof(other) - 1);
		done += n;
	}
	assert_true(off <= cap);
	e->wire_len = wire_len;
	e->msg_crc = spool_crc32c(0, wire, wire_len);
	if (o->segfd >= 0)
		close(o->segfd); /* the job's previous message */
	o->segfd = mkstemp(path);
	assert_true(o->segfd >= 0);
	unlink(path);
	assert_int_equal(pwrite(o->segfd, seg, off, 0), (ssize_t)off);
	free(seg);
}

static void make_job(struct ot *o, uint32_t n)
{
	struct djob *j = &o->job;
	struct sockaddr_in *sin = (struct sockaddr_in *)&j->hops[0].addr;
	uint8_t tls = j->hops[0].tls;

	memset(j, 0, sizeof(*j));
	j->d = &o->d;
	j->t = &o->tkt;
	j->segfd = o->segfd;
	j->m = &o->m;
	j->rcpt = o->rcpt;
	j->acc = o->acc;
	j->nrcpt = n;
	for (uint32_t i = 0; i < n; i++) {
		o->rcpt[i] = i;
		o->acc[i] = DLV_RT_OPEN;
	}
	snprintf(j->domain, sizeof(j->domain), "test.example");
	sin->sin_family = AF_INET;
	sin->sin_port = htons(25);
	inet_pton(AF_INET, "192.0.2.25", &sin->sin_addr);
	j->hops[0].len = sizeof(*sin);
	j->hops[0].tls = tls;
	snprintf(j->hops[0].name, sizeof(j->hops[0].name), "%s[192.0.2.25]:25", OT_MX);
	snprintf(j->hops[0].host, sizeof(j->hops[0].host), "%s", OT_MX);
	j->nhops = 1;
	o->tkt.m = &o->m;
	o->tkt.segfd = o->segfd;
	o->tkt.segkey = o->key;
	o->tkt.jobs = 1;
}

/* The dots DATA's stuffing added to a stored body (RFC 5321 4.5.2). */
static uint32_t stuffing(const char *p, uint32_t n)
{
	uint32_t dots = 0;

	for (uint32_t i = 0; i + 1 < n; i++)
		if ((i == 0 || p[i - 1] == '\n') && p[i] == '.' && p[i + 1] == '.')
			dots++;
	return dots;
}

void ot_message_n(struct ot *o, const char *from, const char *const *rcpts, const char *body,
		  uint32_t blen, bool stuffed, uint32_t chunk)
{
	struct spool_rcpt r[OT_RCPTS_MAX] = {0};
	struct spool_env e = {0};
	char *wire = malloc(blen + 3);
	uint32_t n = 0;
	size_t enc_len;

	assert_non_null(wire);
	while (rcpts[n]) {
		assert_true(n < OT_RCPTS_MAX);
		r[n].addr = (struct spool_str){rcpts[n], (uint32_t)strlen(rcpts[n])};
		r[n].notify = o->notify;
		if (o->orcpt)
			r[n].orcpt = (struct spool_str){o->orcpt, (uint32_t)strlen(o->orcpt)};
		n++;
	}
	/* DATA form: the stored bytes end with the terminator, which msg_len
	 * does not count (record.h). */
	memcpy(wire, body, blen);
	if (stuffed)
		memcpy(wire + blen, ".\r\n", 3);
	write_segment(o, wire, blen + (stuffed ? 3 : 0), chunk, &e);
	free(wire);
	e.id = OT_MSG_ID;
	e.arrival_s = 1700000000;
	e.msg_len = blen;
	e.stuff_len = stuffed ? stuffing(body, blen) : 0;
	e.flags = (stuffed ? SPOOL_ENV_STUFFED : 0) | SPOOL_ENV_HDR_ASCII;
	e.mail_from = (struct spool_str){from, (uint32_t)strlen(from)};
	e.rcpt_count = n;
	e.rcpts = r;
	enc_len = spool_env_encode(&e, o->enc, sizeof(o->enc));
	assert_true(enc_len > 0);
	memset(&o->m, 0, sizeof(o->m));
	assert_int_equal(spool_env_decode(o->enc, enc_len, &o->m.env), 0);
	o->m.id = OT_MSG_ID;
	o->m.enc = o->enc;
	o->m.enc_len = (uint32_t)enc_len;
	make_job(o, n);
}

void ot_message(struct ot *o, const char *from, const char *const *rcpts, const char *body,
		bool stuffed)
{
	uint32_t blen = (uint32_t)strlen(body);

	/* Two chunks of the message, another's between them. */
	ot_message_n(o, from, rcpts, body, blen, stuffed, (blen + 3) / 2 + 1);
}

/* ---- driving --------------------------------------------------------------------- */

struct net_conn *ot_assign(struct ot *o)
{
	struct net_table *t = o->d.core.net;
	uint32_t opened = t->opened;

	assert_true(oc_assign(&o->d, &o->job));
	assert_int_equal(t->opened, opened + 1);
	for (uint32_t i = 0; i < t->nslots; i++)
		if (t->conns[i].state == NF_CONNECTING && t->conns[i].proto == &o->d.core.oc[i])
			if (o->d.core.oc[i].job == &o->job)
				return &t->conns[i];
	fail_msg("oc_assign opened no connection for the job");
	return NULL;
}

enum oc_state ot_state(struct ot *o, const struct net_conn *nc)
{
	return o->d.core.oc[nc->slot].state;
}

void ot_expect_send(struct net_conn *nc, const char *want)
{
	const char *got = nf_sending(nc);

	assert_non_null(got);
	assert_string_equal(got, want);
	nf_sent(nc, 0);
}

void ot_expect_no_send(const struct net_conn *nc)
{
	const char *got = nf_sending(nc);

	if (got)
		fail_msg("unexpected send: \"%s\"", got);
}

struct net_conn *ot_ready(struct ot *o, const char *ehlo_reply)
{
	struct net_conn *nc = ot_assign(o);

	nf_connected(nc, 0);
	ot_expect_no_send(nc); /* the server speaks first */
	assert_int_equal(ot_state(o, nc), OC_BANNER);
	nf_recv(nc, "220 " OT_MX " ESMTP\r\n");
	ot_expect_send(nc, "EHLO " OT_HOST "\r\n");
	assert_int_equal(ot_state(o, nc), OC_EHLO);
	nf_recv(nc, ehlo_reply);
	return nc;
}

const char *ot_body(struct net_conn *nc)
{
	static char out[NF_TRANS_MAX + 1];
	size_t len = 0;

	out[0] = '\0';
	while (nc->fread || nc->sending) {
		if (nc->fread) {
			nf_file_read(nc);
			continue;
		}
		assert_true(nc->sent_len <= NF_TRANS_MAX - len);
		memcpy(out + len, nc->sent, nc->sent_len + 1);
		len += nc->sent_len;
		nf_sent(nc, 0);
	}
	return out;
}

const char *const ot_one[] = {"a@test.example", NULL};
const char *const ot_three[] = {"a@test.example", "b@test.example", "c@test.example", NULL};

struct ot *ot_with(const char *const *rcpts)
{
	struct ot *o = ot_new();

	ot_message(o, FROM, rcpts, BODY, true);
	return o;
}

void ot_closed(struct ot *o, struct net_conn *nc)
{
	assert_int_equal(nc->state, NF_CLOSING);
	assert_int_equal(nf_reap(o->d.core.net), 1);
	assert_int_equal(ot_state(o, nc), OC_FREE);
	assert_int_equal(net_active(o->d.core.net), 0);
}

void ot_body_goes(struct ot *o, struct net_conn *nc)
{
	assert_int_equal(ot_state(o, nc), OC_BODY);
	assert_string_equal(ot_body(nc), BODY_WIRE);
	assert_int_equal(ot_state(o, nc), OC_DOT);
}
