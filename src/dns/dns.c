/*
 * dns — MX resolution with c-ares on the shard's ring.  See dns.h.
 *
 * Three parts:
 *  - sockets: c-ares tells us through its socket-state callback which fds it
 *    has and whether it wants to read or write; each gets one one-shot
 *    IORING_OP_POLL_ADD for exactly those events; its completion runs
 *    ares_process_fd() on that fd and re-arms.  A slot is reused only when
 *    c-ares has closed its fd and its poll has come back, and every arming
 *    has its own generation, so a completion or a cancel can only ever
 *    concern the poll it was made for (anything else is dropped).
 *  - clock: one IORING_OP_TIMEOUT armed for ares_timeout(); its completion
 *    runs ares_process_fd(BAD, BAD), which is how c-ares retransmits and
 *    gives up.  Re-armed (cancel + new generation) only when c-ares needs to
 *    wake earlier than the timer in flight.
 *  - queries: a fixed table; each MX resolution walks FREE -> MX -> ADDR ->
 *    DONE -> FREE (or MX -> DONE).  A finished one waits on the done list
 *    and its callback fires at the end of dns_complete(), outside c-ares,
 *    so a callback may start new lookups.
 */
#include "dns/dns.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* c-ares holds at most one UDP and one TCP socket per server; a closed one
 * keeps its slot until its cancelled poll comes back, hence twice that. */
#define DNS_SOCKS_MAX (4 * DNS_SERVERS_MAX)
/* DNS flag day 2020: an EDNS buffer that avoids IP fragmentation, so big
 * MX sets come over UDP instead of falling back to TCP (RFC 6891 6.2.5). */
#define DNS_EDNS_UDP_SIZE 1232
/* MX records examined in one answer: the low 16 bits of the sort key. */
#define DNS_MX_SCAN_MAX 65535u
#define DNS_LABEL_MAX	63 /* RFC 1035 2.3.4 */

static_assert(DNS_QUERIES_MAX <= 65536, "query index fits the table");
static_assert(DNS_MX_MAX <= 255, "host index fits a uint8_t");
static_assert(DNS_ADDR_MAX >= 2, "room for one address of each family");

enum dns_q_state { DQ_FREE, DQ_MX, DQ_ADDR, DQ_DONE };

struct dns_sock {
	ares_socket_t fd;
	uint16_t gen;	 /* of the poll in flight (one per arming) */
	bool open;	 /* c-ares owns fd (has not told us it closed it) */
	bool armed;	 /* a poll is in flight */
	bool cancelling; /* and a cancel of it too */
	bool want_read, want_write;
	uint32_t armed_events; /* what the poll in flight waits for */
};

struct dns_query;

/* The argument of one A or AAAA request. */
struct dns_req {
	struct dns_query *q;
	uint8_t host;
	bool v6;
};

/* Per-host work beyond what the result shows. */
struct dns_host_work {
	struct dns_req req[2]; /* [0] A, [1] AAAA */
	int ares_status[2];
	uint32_t n[2];
	bool truncated[2];
	uint8_t done; /* requests answered, of 2 */
	struct in_addr v4[DNS_ADDR_MAX];
	struct in6_addr v6[DNS_ADDR_MAX];
};

struct dns_query {
	enum dns_q_state state;
	uint32_t pending; /* c-ares requests not called back yet */
	struct dns *d;
	struct dns_query *done_next;
	dns_mx_cb cb;
	void *arg;
	uint64_t seed;	       /* randomness for equal preferences */
	int first_temp_status; /* ares status of the first temporary failure */
	uint8_t first_temp_host;
	char domain[DNS_NAME_MAX + 1];
	struct dns_mx_result res;
	struct dns_host_work work[DNS_MX_MAX];
};

struct dns {
	struct ring *ring;
	ares_channel ch;
	bool stopping;
	bool wake_armed;
	bool timer_armed;
	uint16_t timer_gen;
	uint32_t inflight; /* our SQEs whose completions are still to come */
	uint32_t active;   /* queries not FREE */
	uint32_t depth;	   /* > 0 inside dns_complete/dns_shutdown */
	uint64_t timer_deadline_ms;
	uint64_t rng;
	struct __kernel_timespec timer_ts;
	struct dns_query *done_head, *done_tail;
	struct dns_sock socks[DNS_SOCKS_MAX];
	struct dns_query queries[DNS_QUERIES_MAX];
};

const char *dns_status_name(enum dns_status s)
{
	switch (s) {
	case DNS_OK:
		return "OK";
	case DNS_NULLMX:
		return "NULLMX";
	case DNS_NXDOMAIN:
		return "NXDOMAIN";
	case DNS_NOADDR:
		return "NOADDR";
	case DNS_TEMPFAIL:
		return "TEMPFAIL";
	}
	return "?";
}

static uint64_t dns_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* splitmix64: the mixer for per-record sort keys and the seed stream.  Not
 * for secrets; RFC 5321 5.1 only asks that load be spread. */
static uint64_t dns_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t dns_rng_next(struct dns *d)
{
	d->rng += 0x9e3779b97f4a7c15ull;
	return dns_mix64(d->rng);
}

/* ---- ring plumbing ----------------------------------------------------------- */

static uint32_t dns_sock_slot(const struct dns *d, const struct dns_sock *s)
{
	return (uint32_t)(s - d->socks);
}

static uint64_t dns_sock_ud(const struct dns *d, const struct dns_sock *s)
{
	return ring_ud(DNS_OP_POLL, 0, s->gen, dns_sock_slot(d, s));
}

static uint32_t dns_sock_events(const struct dns_sock *s)
{
	return (s->want_read ? POLLIN : 0u) | (s->want_write ? POLLOUT : 0u);
}

static void dns_sock_arm(struct dns *d, struct dns_sock *s)
{
	struct io_uring_sqe *sqe = ring_sqe(d->ring);

	assert(s->open && !s->armed);
	/* A new generation per arming: a cancel aimed at an earlier poll of
	 * this slot can never hit this one. */
	s->gen++;
	s->armed_events = dns_sock_events(s);
	assert(s->armed_events != 0);
	io_uring_prep_poll_add(sqe, s->fd, s->armed_events);
	io_uring_sqe_set_data64(sqe, dns_sock_ud(d, s));
	s->armed = true;
	d->inflight++;
}

/* The poll comes back (-ECANCELED, or fired meanwhile) to dns_on_poll,
 * which frees the slot or re-arms it with what c-ares wants by then. */
static void dns_sock_cancel(struct dns *d, struct dns_sock *s)
{
	if (!s->armed || s->cancelling)
		return;
	ring_prep_cancel(d->ring, dns_sock_ud(d, s), ring_ud(DNS_OP_CANCEL, 0, 0, 0));
	s->cancelling = true;
	d->inflight++;
}

static void dns_wake(struct dns *d)
{
	struct io_uring_sqe *sqe;

	if (d->wake_armed)
		return;
	sqe = ring_sqe(d->ring);
	io_uring_prep_nop(sqe);
	io_uring_sqe_set_data64(sqe, ring_ud(DNS_OP_WAKE, 0, 0, 0));
	d->wake_armed = true;
	d->inflight++;
}

/* Keep one timer armed no later than c-ares's next deadline.  A timer that
 * would fire too late is cancelled and replaced; its completion carries the
 * old generation and is ignored. */
static void dns_timer_sync(struct dns *d)
{
	struct timeval tv, *tvp;
	uint64_t ms, deadline;

	if (d->stopping)
		return;
	tvp = ares_timeout(d->ch, NULL, &tv);
	if (!tvp)
		return; /* nothing in flight in c-ares */
	/* Round up: firing a little late costs nothing, early means a wasted
	 * wake-up and another timer. */
	ms = (uint64_t)tvp->tv_sec * 1000u + ((uint64_t)tvp->tv_usec + 999u) / 1000u;
	deadline = dns_now_ms() + ms;
	if (d->timer_armed && d->timer_deadline_ms <= deadline)
		return;
	if (d->timer_armed) {
		ring_prep_cancel(d->ring, ring_ud(DNS_OP_TIMER, 0, d->timer_gen, 0),
				 ring_ud(DNS_OP_CANCEL, 0, 0, 0));
		d->inflight++;
	}
	d->timer_gen++;
	d->timer_ts.tv_sec = (long long)(ms / 1000u);
	d->timer_ts.tv_nsec = (long long)(ms % 1000u) * 1000000;
	ring_prep_timeout(d->ring, &d->timer_ts, ring_ud(DNS_OP_TIMER, 0, d->timer_gen, 0));
	d->timer_armed = true;
	d->timer_deadline_ms = deadline;
	d->inflight++;
}

/* ---- c-ares socket callbacks ---------------------------------------------------- */

static struct dns_sock *dns_sock_find(struct dns *d, ares_socket_t fd)
{
	for (uint32_t i = 0; i < DNS_SOCKS_MAX; i++)
		if (d->socks[i].open && d->socks[i].fd == fd)
			return &d->socks[i];
	return NULL;
}

static struct dns_sock *dns_sock_free_slot(struct dns *d)
{
	for (uint32_t i = 0; i < DNS_SOCKS_MAX; i++)
		if (!d->socks[i].open && !d->socks[i].armed)
			return &d->socks[i];
	return NULL;
}

/* c-ares made a socket (before connecting it).  Refusing it when the table
 * is full makes c-ares count that server as failed for this try, instead of
 * holding a socket nobody polls. */
static int dns_on_sock_create(ares_socket_t fd, int type, void *data)
{
	struct dns *d = data;

	(void)fd;
	(void)type;
	return dns_sock_free_slot(d) ? 0 : -1;
}

/* readable/writable: what c-ares wants from fd now; both 0: it is closing
 * fd.  Called from inside c-ares (query start, ares_process_fd,
 * ares_destroy). */
static void dns_on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
	struct dns *d = data;
	struct dns_sock *s = dns_sock_find(d, fd);

	if (!readable && !writable) {
		if (s) {
			s->open = false;
			dns_sock_cancel(d, s);
		}
		return;
	}
	if (!s) {
		s = dns_sock_free_slot(d);
		/* dns_on_sock_create refused sockets beyond the table, and
		 * nothing else takes a slot between the two callbacks. */
		assert(s);
		s->fd = fd;
		s->open = true;
		s->cancelling = false;
	}
	s->want_read = readable != 0;
	s->want_write = writable != 0;
	if (!s->armed)
		dns_sock_arm(d, s);
	else if (s->armed_events != dns_sock_events(s))
		dns_sock_cancel(d, s); /* re-armed with the new events on return */
}

/* ---- queries: states and delivery ----------------------------------------------- */

static void dns_q_enter(struct dns_query *q, enum dns_q_state to)
{
	static const bool legal[4][4] = {
	    [DQ_FREE] = {[DQ_MX] = true},
	    [DQ_MX] = {[DQ_ADDR] = true, [DQ_DONE] = true},
	    [DQ_ADDR] = {[DQ_DONE] = true},
	    [DQ_DONE] = {[DQ_FREE] = true},
	};

	assert(legal[q->state][to]);
	q->state = to;
}

static void dns_q_finish(struct dns_query *q)
{
	struct dns *d = q->d;

	assert(q->pending == 0);
	dns_q_enter(q, DQ_DONE);
	q->done_next = NULL;
	if (d->done_tail)
		d->done_tail->done_next = q;
	else
		d->done_head = q;
	d->done_tail = q;
	/* Finished outside dns_complete (c-ares answered inside
	 * dns_resolve_mx): a NOP completion brings us back to deliver. */
	if (d->depth == 0)
		dns_wake(d);
}

static void dns_q_fail(struct dns_query *q, enum dns_status st, const char *fmt, ...)
{
	va_list ap;

	q->res.status = st;
	va_start(ap, fmt);
	vsnprintf(q->res.why, sizeof(q->res.why), fmt, ap);
	va_end(ap);
	dns_q_finish(q);
}

static void dns_deliver(struct dns *d)
{
	struct dns_query *q;

	assert(d->depth > 0);
	while ((q = d->done_head) != NULL) {
		d->done_head = q->done_next;
		if (!d->done_head)
			d->done_tail = NULL;
		q->res.domain = q->domain;
		q->cb(q->arg, &q->res);
		dns_q_enter(q, DQ_FREE);
		assert(d->active > 0);
		d->active--;
	}
}

/* ---- address lookups (second round) ---------------------------------------------- */

static bool dns_ares_temporary(int st)
{
	return st != ARES_SUCCESS && st != ARES_ENODATA && st != ARES_ENOTFOUND &&
	       st != ARES_EBADNAME;
}

/* One answer's A or AAAA records into w; asks for one more than we keep
 * to learn whether the answer had more. */
static int dns_addr_parse(struct dns_host_work *w, bool v6, const unsigned char *abuf, int alen)
{
	struct ares_addrttl a[DNS_ADDR_MAX + 1];
	struct ares_addr6ttl a6[DNS_ADDR_MAX + 1];
	int n = DNS_ADDR_MAX + 1, st;

	if (v6)
		st = ares_parse_aaaa_reply(abuf, alen, NULL, a6, &n);
	else
		st = ares_parse_a_reply(abuf, alen, NULL, a, &n);
	if (st != ARES_SUCCESS)
		return st;
	if (n == 0)
		return ARES_ENODATA;
	w->truncated[v6] = n > DNS_ADDR_MAX;
	w->n[v6] = n > DNS_ADDR_MAX ? DNS_ADDR_MAX : (uint32_t)n;
	for (uint32_t i = 0; i < w->n[v6]; i++) {
		if (v6)
			memcpy(&w->v6[i], &a6[i].ip6addr, sizeof(w->v6[i]));
		else
			w->v4[i] = a[i].ipaddr;
	}
	return ARES_SUCCESS;
}

/* IPv4 and IPv6 interleaved, IPv4 first: both families get tried early
 * even when one has many addresses, and a host that publishes AAAA without
 * working IPv6 does not delay every delivery (RFC 5321 5.1 leaves the order
 * of a host's addresses to the client). */
static void dns_host_finish(struct dns_query *q, uint32_t i)
{
	struct dns_mx_host *h = &q->res.hosts[i];
	struct dns_host_work *w = &q->work[i];
	uint32_t k4 = 0, k6 = 0;

	while (h->addr_count < DNS_ADDR_MAX && (k4 < w->n[0] || k6 < w->n[1])) {
		struct dns_addr *a = &h->addrs[h->addr_count++];

		memset(a, 0, sizeof(*a));
		if (k4 < w->n[0] && (k4 <= k6 || k6 == w->n[1])) {
			a->v4.sin_family = AF_INET;
			a->v4.sin_addr = w->v4[k4++];
		} else {
			a->v6.sin6_family = AF_INET6;
			a->v6.sin6_addr = w->v6[k6++];
		}
	}
	h->addr_truncated = w->truncated[0] || w->truncated[1] || k4 < w->n[0] || k6 < w->n[1];
	if (h->addr_count > 0)
		h->status = DNS_OK;
	else if (dns_ares_temporary(w->ares_status[0]) || dns_ares_temporary(w->ares_status[1]))
		h->status = DNS_TEMPFAIL;
	else if (w->ares_status[0] == ARES_ENOTFOUND && w->ares_status[1] == ARES_ENOTFOUND)
		h->status = DNS_NXDOMAIN;
	else
		h->status = DNS_NOADDR;
}

/* Every host answered: RFC 5321 5.1 — usable if any host has an address;
 * "none of them usable" is an error, temporary if any lookup was. */
static void dns_q_conclude(struct dns_query *q)
{
	const struct dns_mx_result *r = &q->res;
	bool temp = false;

	if (q->d->stopping) {
		dns_q_fail(q, DNS_TEMPFAIL, "resolver shut down");
		return;
	}
	for (uint32_t i = 0; i < r->host_count; i++) {
		if (r->hosts[i].status == DNS_OK) {
			q->res.status = DNS_OK;
			dns_q_finish(q);
			return;
		}
		temp |= r->hosts[i].status == DNS_TEMPFAIL;
	}
	if (temp)
		dns_q_fail(q, DNS_TEMPFAIL, "no MX host of %s resolved: %s: %s", q->domain,
			   r->hosts[q->first_temp_host].name, ares_strerror(q->first_temp_status));
	else if (r->implicit_mx)
		dns_q_fail(q, DNS_NOADDR, "%s has no MX and no A/AAAA records", q->domain);
	else
		dns_q_fail(q, DNS_NOADDR, "no MX host of %s has an address", q->domain);
}

static void dns_on_addr(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_req *rq = arg;
	struct dns_query *q = rq->q;
	struct dns_host_work *w = &q->work[rq->host];

	(void)timeouts;
	assert(q->state == DQ_ADDR && q->pending > 0 && w->done < 2);
	if (status == ARES_SUCCESS && !q->d->stopping)
		status = dns_addr_parse(w, rq->v6, abuf, alen);
	w->ares_status[rq->v6] = status;
	if (dns_ares_temporary(status) && q->first_temp_status == ARES_SUCCESS) {
		q->first_temp_status = status;
		q->first_temp_host = rq->host;
	}
	if (++w->done == 2)
		dns_host_finish(q, rq->host);
	if (--q->pending == 0)
		dns_q_conclude(q);
}

/* Second round: A and AAAA of every host, all in parallel.  One extra
 * count holds the query open while requests go out, since c-ares may
 * answer one inside ares_query (a name it cannot encode). */
static void dns_hosts_start(struct dns_query *q)
{
	struct dns *d = q->d;

	dns_q_enter(q, DQ_ADDR);
	q->pending = 1;
	for (uint32_t i = 0; i < q->res.host_count; i++) {
		for (int v6 = 0; v6 < 2; v6++) {
			struct dns_req *rq = &q->work[i].req[v6];

			rq->q = q;
			rq->host = (uint8_t)i;
			rq->v6 = v6 != 0;
			q->pending++;
			ares_query(d->ch, q->res.hosts[i].name, ns_c_in, v6 ? ns_t_aaaa : ns_t_a,
				   dns_on_addr, rq);
		}
	}
	if (--q->pending == 0)
		dns_q_conclude(q);
}

/* ---- MX answer (first round) ----------------------------------------------------- */

static void dns_host_add(struct dns_query *q, uint16_t pref, const char *name)
{
	uint32_t i = q->res.host_count++;
	struct dns_mx_host *h = &q->res.hosts[i];
	struct dns_host_work *w = &q->work[i];

	assert(i < DNS_MX_MAX);
	h->preference = pref;
	h->status = DNS_TEMPFAIL; /* until its lookups say otherwise */
	h->addr_count = 0;
	h->addr_truncated = false;
	snprintf(h->name, sizeof(h->name), "%s", name);
	memset(w, 0, sizeof(*w));
}

static bool dns_is_root(const char *name)
{
	return name[0] == '\0' || strcmp(name, ".") == 0;
}

/* Sort key: preference, then random bits (RFC 5321 5.1: equal preferences
 * "MUST" be randomised to spread the load), then the record's index, which
 * makes every key distinct. */
static uint64_t dns_mx_key(const struct dns_query *q, uint16_t pref, uint32_t index)
{
	return (uint64_t)pref << 48 | (dns_mix64(q->seed + index) & 0xffffffffu) << 16 | index;
}

/* Keep the DNS_MX_MAX smallest keys, in order: one pass over the list per
 * host kept, no allocation.  Returns how many deliverable records there
 * were (root targets excluded). */
static uint32_t dns_mx_select(struct dns_query *q, const struct ares_mx_reply *mx)
{
	uint64_t prev = 0;
	uint32_t real = 0;

	for (uint32_t k = 0; k < DNS_MX_MAX; k++) {
		const struct ares_mx_reply *best = NULL;
		uint64_t best_key = UINT64_MAX;
		uint32_t idx = 0;

		real = 0;
		for (const struct ares_mx_reply *m = mx; m && idx < DNS_MX_SCAN_MAX;
		     m = m->next, idx++) {
			uint64_t key;

			if (dns_is_root(m->host))
				continue;
			real++;
			key = dns_mx_key(q, m->priority, idx);
			if ((k > 0 && key <= prev) || key >= best_key)
				continue;
			best = m;
			best_key = key;
		}
		if (!best)
			break;
		dns_host_add(q, best->priority, best->host);
		prev = best_key;
	}
	return real;
}

static void dns_mx_take(struct dns_query *q, const struct ares_mx_reply *mx)
{
	uint32_t real = dns_mx_select(q, mx);

	if (real == 0) {
		/* RFC 7505 3: "." as the only exchange: no mail for this domain.
		 * (Several "." records mean the same; RFC 7505 forbids mixing.) */
		dns_q_fail(q, DNS_NULLMX, "%s does not accept mail (null MX, RFC 7505)", q->domain);
		return;
	}
	q->res.mx_truncated = real > q->res.host_count;
	dns_hosts_start(q);
}

static void dns_on_mx(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct dns_query *q = arg;
	struct ares_mx_reply *mx = NULL;

	(void)timeouts;
	assert(q->state == DQ_MX && q->pending == 1);
	q->pending = 0;
	if (q->d->stopping) {
		dns_q_fail(q, DNS_TEMPFAIL, "resolver shut down");
		return;
	}
	if (status == ARES_SUCCESS)
		status = ares_parse_mx_reply(abuf, alen, &mx);
	switch (status) {
	case ARES_SUCCESS:
		dns_mx_take(q, mx);
		break;
	case ARES_ENODATA:
		/* RFC 5321 5.1: no MX records: the domain itself is the
		 * implicit MX, preference 0. */
		q->res.implicit_mx = true;
		dns_host_add(q, 0, q->domain);
		dns_hosts_start(q);
		break;
	case ARES_ENOTFOUND:
		dns_q_fail(q, DNS_NXDOMAIN, "%s does not exist (NXDOMAIN)", q->domain);
		break;
	default:
		dns_q_fail(q, DNS_TEMPFAIL, "MX lookup of %s failed: %s", q->domain,
			   ares_strerror(status));
		break;
	}
	if (mx)
		ares_free_data(mx);
}

/* ---- completions ------------------------------------------------------------------ */

static void dns_on_poll(struct dns *d, uint32_t slot, uint16_t gen, int32_t res)
{
	struct dns_sock *s;
	ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;

	assert(slot < DNS_SOCKS_MAX);
	s = &d->socks[slot];
	if (s->gen != gen || !s->armed)
		return; /* not this slot's poll: stale, drop it */
	s->armed = false;
	s->cancelling = false;
	if (!s->open || d->stopping)
		return; /* c-ares closed fd: the slot is free again */
	if (res == -ECANCELED) {
		dns_sock_arm(d, s); /* cancelled to change the events */
		return;
	}
	/* An error on the poll itself: let c-ares try the fd, it sees the
	 * socket's error and closes it, or its clock ends the request. */
	if (res < 0 || (res & (POLLIN | POLLERR | POLLHUP)))
		rfd = s->want_read ? s->fd : ARES_SOCKET_BAD;
	if (res < 0 || (res & (POLLOUT | POLLERR | POLLHUP)))
		wfd = s->want_write ? s->fd : ARES_SOCKET_BAD;
	ares_process_fd(d->ch, rfd, wfd);
	/* c-ares may have closed fd (slot free, or already taken and armed
	 * for a new socket): arm only an open slot with nothing in flight. */
	if (s->open && !s->armed)
		dns_sock_arm(d, s);
}

static void dns_on_timer(struct dns *d, uint16_t gen)
{
	if (gen != d->timer_gen)
		return; /* a timer we replaced */
	d->timer_armed = false;
	if (d->stopping)
		return;
	ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

void dns_complete(struct dns *d, uint64_t ud, int32_t res)
{
	assert(dns_op_owned(ring_ud_op(ud)));
	assert(d->inflight > 0);
	d->inflight--;
	d->depth++;
	switch (ring_ud_op(ud)) {
	case DNS_OP_POLL:
		dns_on_poll(d, ring_ud_slot(ud), ring_ud_gen(ud), res);
		break;
	case DNS_OP_TIMER:
		dns_on_timer(d, ring_ud_gen(ud));
		break;
	case DNS_OP_CANCEL:
		break;
	case DNS_OP_WAKE:
		d->wake_armed = false;
		break;
	default:
		abort();
	}
	dns_deliver(d);
	d->depth--;
	dns_timer_sync(d);
}

/* ---- the public calls ------------------------------------------------------------ */

/* Length without a final dot, or 0 when name cannot be a domain (RFC 1035
 * 2.3.4 sizes; printable ASCII only: U-labels arrive as A-labels,
 * RFC 5890, and c-ares would escape anything else). */
static size_t dns_name_check(const char *name)
{
	size_t len = strnlen(name, DNS_NAME_MAX + 2), label = 0;

	if (len > 0 && name[len - 1] == '.')
		len--;
	if (len == 0 || len > DNS_NAME_MAX)
		return 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];

		if (c == '.') {
			if (label == 0)
				return 0;
			label = 0;
		} else if (c <= ' ' || c >= 0x7f || c == '\\' || ++label > DNS_LABEL_MAX) {
			return 0;
		}
	}
	return label == 0 ? 0 : len;
}

static struct dns_query *dns_q_alloc(struct dns *d)
{
	for (uint32_t i = 0; i < DNS_QUERIES_MAX; i++)
		if (d->queries[i].state == DQ_FREE)
			return &d->queries[i];
	return NULL;
}

int dns_resolve_mx(struct dns *d, const char *domain, dns_mx_cb cb, void *arg)
{
	struct dns_query *q;
	size_t len;

	assert(cb);
	if (d->stopping)
		return -ESHUTDOWN;
	len = dns_name_check(domain);
	if (len == 0)
		return -EINVAL;
	q = dns_q_alloc(d);
	if (!q)
		return -EAGAIN;
	assert(d->active < DNS_QUERIES_MAX);
	memcpy(q->domain, domain, len);
	q->domain[len] = '\0';
	q->d = d;
	q->cb = cb;
	q->arg = arg;
	q->seed = dns_rng_next(d);
	q->first_temp_status = ARES_SUCCESS;
	q->first_temp_host = 0;
	q->res.status = DNS_TEMPFAIL;
	q->res.implicit_mx = false;
	q->res.mx_truncated = false;
	q->res.host_count = 0;
	q->res.why[0] = '\0';
	dns_q_enter(q, DQ_MX);
	d->active++;
	q->pending = 1;
	ares_query(d->ch, q->domain, ns_c_in, ns_t_mx, dns_on_mx, q);
	dns_timer_sync(d);
	return 0;
}

uint32_t dns_active(const struct dns *d)
{
	return d->active;
}

bool dns_busy(const struct dns *d)
{
	return d->inflight > 0;
}

void dns_shutdown(struct dns *d)
{
	if (d->stopping)
		return;
	d->stopping = true;
	d->depth++;
	/* Ends every c-ares request (ARES_EDESTRUCTION: our callbacks finish
	 * their queries as "shut down") and closes its sockets, which cancels
	 * their polls through dns_on_sock_state. */
	ares_destroy(d->ch);
	d->ch = NULL;
	for (uint32_t i = 0; i < DNS_SOCKS_MAX; i++) {
		d->socks[i].open = false;
		dns_sock_cancel(d, &d->socks[i]);
	}
	if (d->timer_armed) {
		ring_prep_cancel(d->ring, ring_ud(DNS_OP_TIMER, 0, d->timer_gen, 0),
				 ring_ud(DNS_OP_CANCEL, 0, 0, 0));
		d->inflight++;
	}
	dns_deliver(d);
	d->depth--;
	assert(d->active == 0);
}

void dns_free(struct dns *d)
{
	if (!d)
		return;
	dns_shutdown(d);
	free(d);
}

/* ---- set-up ----------------------------------------------------------------------- */

static int g_lib_status = ARES_SUCCESS;
static pthread_once_t g_lib_once = PTHREAD_ONCE_INIT;

/* c-ares 1.18's library init is not thread-safe; shards start in parallel. */
static void dns_lib_init(void)
{
	g_lib_status = ares_library_init(ARES_LIB_INIT_ALL);
}

static int dns_channel_init(struct dns *d, uint32_t timeout_ms, uint32_t tries, char *why,
			    size_t why_len)
{
	struct ares_options o;
	int rc;
	/* Each option set here is one /etc/resolv.conf or RES_OPTIONS can no
	 * longer change (c-ares reads them only for what is unset). */
	int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_NDOTS |
		   ARES_OPT_DOMAINS | ARES_OPT_LOOKUPS | ARES_OPT_SOCK_STATE_CB | ARES_OPT_EDNSPSZ |
		   ARES_OPT_NOROTATE;

	memset(&o, 0, sizeof(o));
	/* NOSEARCH: MX names and exchanges are fully qualified (RFC 5321 2.3.5);
	 * a search list could make a typo resolve in our own domain.
	 * NOALIASES: no HOSTALIASES file read on the shard thread. */
	o.flags = ARES_FLAG_EDNS | ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
	o.timeout = (int)timeout_ms;
	o.tries = (int)tries;
	o.ndots = 1;
	o.domains = NULL;
	o.ndomains = 0;
	o.lookups = (char *)"b"; /* DNS only: no /etc/hosts read per lookup */
	o.sock_state_cb = dns_on_sock_state;
	o.sock_state_cb_data = d;
	o.ednspsz = DNS_EDNS_UDP_SIZE;
	rc = ares_init_options(&d->ch, &o, mask);
	if (rc != ARES_SUCCESS) {
		snprintf(why, why_len, "c-ares init: %s", ares_strerror(rc));
		return rc == ARES_ENOMEM ? -ENOMEM : -EINVAL;
	}
	ares_set_socket_callback(d->ch, dns_on_sock_create, d);
	return 0;
}

static int dns_servers_set(struct dns *d, const char *servers, char *why, size_t why_len)
{
	struct ares_addr_port_node *list = NULL;
	uint32_t n = 0;
	int rc;

	if (servers && servers[0]) {
		rc = ares_set_servers_ports_csv(d->ch, servers);
		if (rc != ARES_SUCCESS) {
			snprintf(why, why_len, "dns servers \"%s\": %s", servers,
				 ares_strerror(rc));
			return -EINVAL;
		}
	}
	rc = ares_get_servers_ports(d->ch, &list);
	if (rc != ARES_SUCCESS) {
		snprintf(why, why_len, "dns servers: %s", ares_strerror(rc));
		return -ENOMEM;
	}
	for (const struct ares_addr_port_node *s = list; s; s = s->next)
		n++;
	ares_free_data(list);
	if (n == 0 || n > DNS_SERVERS_MAX) {
		snprintf(why, why_len, "dns servers \"%s\": %u servers, expected 1 to %u",
			 servers && servers[0] ? servers : "(from /etc/resolv.conf)", n,
			 DNS_SERVERS_MAX);
		return -EINVAL;
	}
	return 0;
}

int dns_new(struct dns **out, struct ring *r, const char *servers, uint32_t timeout_ms,
	    uint32_t tries, char *why, size_t why_len)
{
	struct dns *d;
	uint64_t seed;
	int rc;

	*out = NULL;
	if (timeout_ms == 0 || timeout_ms > INT_MAX || tries == 0 || tries > INT_MAX) {
		snprintf(why, why_len, "dns: timeout_ms and tries must be positive");
		return -EINVAL;
	}
	pthread_once(&g_lib_once, dns_lib_init);
	if (g_lib_status != ARES_SUCCESS) {
		snprintf(why, why_len, "c-ares library init: %s", ares_strerror(g_lib_status));
		return -ENOMEM;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		snprintf(why, why_len, "dns: out of memory");
		return -ENOMEM;
	}
	d->ring = r;
	if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed))
		seed = dns_now_ms() ^ (uint64_t)(uintptr_t)d;
	d->rng = seed;
	rc = dns_channel_init(d, timeout_ms, tries, why, why_len);
	if (rc == 0) {
		rc = dns_servers_set(d, servers, why, why_len);
		if (rc < 0)
			ares_destroy(d->ch);
	}
	if (rc < 0) {
		free(d);
		return rc;
	}
	*out = d;
	return 0;
}
