/* Pins the helper pool: per-shard routing and eventfd, -EAGAIN bounds, stop with work in flight. */
#include <crypt.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cmocka.h>

#include "auth/users.h"
#include "hpool/hpool.h"

/* Under ThreadSanitizer: ck_ring copies ring entries with plain memcpy and
 * orders them with ck_pr fences written in inline assembly, which TSan
 * cannot see.  The pool annotates the hand-over of each request itself
 * (pool.c), so only the copies inside ck_ring are silenced here. */
#if defined(__SANITIZE_THREAD__)
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
	return "race:_ck_ring_enqueue_mp\nrace:_ck_ring_dequeue_mc\nrace:_ck_ring_dequeue_sc\n";
}
#endif

/* ---- helpers ------------------------------------------------------------------ */

static char *hash_of(const char *prefix, unsigned long cost, const char *pw)
{
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	struct crypt_data cd;
	memset(&cd, 0, sizeof(cd));
	assert_non_null(crypt_gensalt_rn(prefix, cost, NULL, 0, setting, sizeof(setting)));
	const char *h = crypt_r(pw, setting, &cd);
	assert_non_null(h);
	return strdup(h);
}

/* alice (SHA-512, 1000 rounds) and bob (bcrypt, cost 4): cheap on purpose. */
static struct auth_users *test_users(void)
{
	char *a = hash_of("$6$", 1000, "alice-pw"), *b = hash_of("$2b$", 4, "bob-pw");
	char text[512];
	snprintf(text, sizeof(text), "alice:%s\nbob:%s\n", a, b);
	struct auth_users *u = NULL;
	char err[AUTH_USERS_ERR_MAX];
	assert_int_equal(auth_users_parse(text, strlen(text), &u, err, sizeof(err)), 0);
	free(a), free(b);
	return u;
}

static struct hpool *make_pool(uint32_t threads, uint32_t shards, uint32_t queue, uint32_t inflight)
{
	struct hpool_config cfg = {
	    .threads = threads, .shards = shards, .queue_size = queue, .shard_inflight = inflight};
	struct hpool *p = NULL;
	assert_int_equal(hpool_create(&cfg, &p), 0);
	assert_non_null(p);
	return p;
}

static int make_efd(void)
{
	int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	assert_true(fd >= 0);
	return fd;
}

/* Wait up to timeout_ms for the eventfd, return the counter read (0 on
 * timeout). */
static uint64_t efd_wait(int fd, int timeout_ms)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	if (poll(&pfd, 1, timeout_ms) <= 0)
		return 0;
	uint64_t v = 0;
	if (read(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
		return 0;
	return v;
}

/* Reap until want completions arrived for shard 0 (or 10 s passed). */
static uint32_t reap_n(struct hpool *p, int efd, struct hpool_done *out, uint32_t want,
		       uint64_t *wakes)
{
	uint32_t got = 0;
	for (int spins = 0; got < want && spins < 1000; spins++) {
		*wakes += efd_wait(efd, 10);
		got += hpool_reap(p, 0, out + got, want - got);
	}
	return got;
}

/* A job that holds its helper until released, to fill the queue behind it. */
struct gate {
	sem_t started;
	sem_t release;
};

static int gate_job(void *arg)
{
	struct gate *g = arg;
	sem_post(&g->started);
	while (sem_wait(&g->release) != 0)
		;
	return 42;
}

static void gate_init(struct gate *g)
{
	sem_init(&g->started, 0, 0);
	sem_init(&g->release, 0, 0);
}

static void gate_destroy(struct gate *g)
{
	sem_destroy(&g->started);
	sem_destroy(&g->release);
}

static atomic_int jobs_run;

static int count_job(void *arg)
{
	atomic_fetch_add(&jobs_run, 1);
	return (int)(intptr_t)arg;
}

/* ---- two shards, many verifications ------------------------------------------- */

#define PER_SHARD 600

struct fake_shard {
	struct hpool *p;
	struct auth_users *users;
	uint32_t idx;
	int efd;
	uint8_t seen[PER_SHARD];
	uint32_t done, eagain, errors;
	uint64_t wakes;
};

/* seq % 3: right password, wrong password, unknown user. */
static int expected(uint32_t seq)
{
	static const int r[] = {AUTH_VERIFY_OK, AUTH_VERIFY_BAD_PASSWORD, AUTH_VERIFY_NO_USER};
	return r[seq % 3];
}

static int shard_submit(struct fake_shard *s, uint32_t seq)
{
	static const char *const user[] = {"alice", "bob", "mallory"};
	static const char *const pass[] = {"alice-pw", "alice-pw", "bob-pw"};
	const char *u = user[seq % 3], *pw = pass[seq % 3];
	/* Odd shards check bob where even ones check alice, so both kinds of
	 * hash run from both shards. */
	if (s->idx % 2 == 1 && seq % 3 == 0)
		u = "bob", pw = "bob-pw";
	uint64_t cookie = (uint64_t)s->idx << 32 | seq;
	return auth_users_submit_verify(s->p, s->idx, cookie, s->users, u, strlen(u), pw,
					strlen(pw));
}

static void shard_reap(struct fake_shard *s)
{
	struct hpool_done d[8];
	uint32_t n;
	while ((n = hpool_reap(s->p, s->idx, d, 8)) > 0) {
		for (uint32_t i = 0; i < n; i++) {
			uint32_t shard = (uint32_t)(d[i].cookie >> 32), seq = (uint32_t)d[i].cookie;
			if (shard != s->idx || seq >= PER_SHARD || s->seen[seq] ||
			    d[i].kind != HPOOL_INLINE || d[i].result != expected(seq) ||
			    d[i].arg != NULL) {
				s->errors++;
				continue;
			}
			s->seen[seq] = 1;
			s->done++;
		}
	}
}

/* The loop of a shard, reduced: submit until backpressure, then sleep on
 * the eventfd, drain the completion ring, repeat.  No cmocka asserts off
 * the main thread: failures are counted and checked there. */
static void *shard_main(void *arg)
{
	struct fake_shard *s = arg;
	uint32_t next = 0;
	while (s->done < PER_SHARD) {
		while (next < PER_SHARD) {
			int rc = shard_submit(s, next);
			if (rc == -EAGAIN) {
				s->eagain++;
				break;
			}
			if (rc != 0)
				s->errors++;
			next++;
		}
		s->wakes += efd_wait(s->efd, 20);
		shard_reap(s);
	}
	s->wakes += efd_wait(s->efd, 0);
	return NULL;
}

static void test_two_shards_many_verifications(void **state)
{
	(void)state;
	struct auth_users *users = test_users();
	struct hpool *p = make_pool(4, 2, 64, 48);
	struct fake_shard sh[2];
	pthread_t th[2];
	for (uint32_t i = 0; i < 2; i++) {
		memset(&sh[i], 0, sizeof(sh[i]));
		sh[i] = (struct fake_shard){.p = p, .users = users, .idx = i, .efd = make_efd()};
		assert_int_equal(hpool_shard_attach(p, i, sh[i].efd), 0);
	}
	for (uint32_t i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, shard_main, &sh[i]), 0);
	for (uint32_t i = 0; i < 2; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	for (uint32_t i = 0; i < 2; i++) {
		print_message("shard %u: %u done, %u EAGAIN, eventfd total %llu\n", i, sh[i].done,
			      sh[i].eagain, (unsigned long long)sh[i].wakes);
		assert_int_equal(sh[i].errors, 0);
		assert_int_equal(sh[i].done, PER_SHARD);
		/* One eventfd increment per completion, on the right shard's fd. */
		assert_int_equal(sh[i].wakes, PER_SHARD);
		for (uint32_t k = 0; k < PER_SHARD; k++)
			assert_int_equal(sh[i].seen[k], 1);
		close(sh[i].efd);
	}
	hpool_destroy(p);
	auth_users_unref(users);
}

/* ---- generic jobs ----------------------------------------------------------------- */

static void test_generic_jobs(void **state)
{
	(void)state;
	struct hpool *p = make_pool(3, 1, 32, 16);
	int efd = make_efd();
	assert_int_equal(hpool_shard_attach(p, 0, efd), 0);
	atomic_store(&jobs_run, 0);
	for (intptr_t i = 0; i < 16; i++)
		assert_int_equal(hpool_submit_job(p, 0, (uint64_t)(1000 + i), count_job, (void *)i),
				 0);
	struct hpool_done d[16];
	uint64_t wakes = 0;
	assert_int_equal(reap_n(p, efd, d, 16, &wakes), 16);
	uint32_t mask = 0;
	for (int i = 0; i < 16; i++) {
		intptr_t a = (intptr_t)d[i].arg;
		assert_int_equal(d[i].kind, HPOOL_JOB);
		assert_int_equal(d[i].cookie, 1000 + a);
		assert_int_equal(d[i].result, a); /* fn's return, unchanged */
		mask |= 1u << a;
	}
	assert_int_equal(mask, 0xffff);
	assert_int_equal(atomic_load(&jobs_run), 16);
	hpool_destroy(p);
	close(efd);
}

/* A shard without an eventfd polls: completions still arrive. */
static void test_no_eventfd_polls(void **state)
{
	(void)state;
	struct hpool *p = make_pool(1, 1, 8, 4);
	assert_int_equal(hpool_submit_job(p, 0, 7, count_job, (void *)(intptr_t)5), 0);
	struct hpool_done d;
	uint32_t n = 0;
	for (int i = 0; i < 10000 && n == 0; i++) {
		n = hpool_reap(p, 0, &d, 1);
		if (n == 0)
			usleep(100);
	}
	assert_int_equal(n, 1);
	assert_int_equal(d.result, 5);
	hpool_destroy(p);
}

/* An inline job runs on the pool's own copy of its data: what the caller
 * does to its buffer after the submit does not reach the job. */
struct inline_data {
	uint32_t magic;
	char text[16];
};

static int inline_job(void *data, bool cancelled)
{
	const struct inline_data *d = data;
	if (cancelled)
		return -ECANCELED;
	return d->magic == 0xfeedu && strcmp(d->text, "kept") == 0 ? 7 : -EBADMSG;
}

static void test_inline_job_runs_on_a_copy(void **state)
{
	(void)state;
	struct hpool *p = make_pool(1, 1, 4, 4);
	int efd = make_efd();
	hpool_shard_attach(p, 0, efd);
	struct gate g;
	gate_init(&g);
	assert_int_equal(hpool_submit_job(p, 0, 0, gate_job, &g), 0);
	sem_wait(&g.started); /* the inline job waits until the buffer is changed */
	struct inline_data in = {.magic = 0xfeedu, .text = "kept"};
	assert_int_equal(hpool_submit_inline(p, 0, 9, inline_job, &in, sizeof(in)), 0);
	memset(&in, 0, sizeof(in));
	sem_post(&g.release);
	struct hpool_done d[2];
	uint64_t wakes = 0;
	assert_int_equal(reap_n(p, efd, d, 2, &wakes), 2);
	assert_int_equal(d[1].cookie, 9);
	assert_int_equal(d[1].kind, HPOOL_INLINE);
	assert_int_equal(d[1].result, 7);
	assert_null(d[1].arg);
	/* Too much data is refused, and nothing runs. */
	static char big[HPOOL_DATA_MAX + 1];
	assert_int_equal(hpool_submit_inline(p, 0, 10, inline_job, big, sizeof(big)), -EINVAL);
	hpool_destroy(p);
	gate_destroy(&g);
	close(efd);
}

/* ---- bounds ----------------------------------------------------------------------- */

/* queue_size 4 holds 3 (ck_ring keeps a slot free): with the only helper
 * held by a gate, the fourth waiting request is refused with -EAGAIN. */
static void test_request_ring_full(void **state)
{
	(void)state;
	struct hpool *p = make_pool(1, 1, 4, 16);
	int efd = make_efd();
	hpool_shard_attach(p, 0, efd);
	struct gate g;
	gate_init(&g);
	assert_int_equal(hpool_submit_job(p, 0, 0, gate_job, &g), 0);
	sem_wait(&g.started); /* the helper holds the gate job; the ring is empty */
	for (intptr_t i = 1; i <= 3; i++)
		assert_int_equal(hpool_submit_job(p, 0, (uint64_t)i, count_job, (void *)i), 0);
	assert_int_equal(hpool_submit_job(p, 0, 4, count_job, NULL), -EAGAIN);
	struct auth_users *users = test_users();
	assert_int_equal(auth_users_submit_verify(p, 0, 5, users, "alice", 5, "alice-pw", 8),
			 -EAGAIN);
	sem_post(&g.release);
	struct hpool_done d[4];
	uint64_t wakes = 0;
	assert_int_equal(reap_n(p, efd, d, 4, &wakes), 4);
	assert_int_equal(d[0].result, 42);
	/* Room again. */
	assert_int_equal(auth_users_submit_verify(p, 0, 6, users, "alice", 5, "alice-pw", 8), 0);
	assert_int_equal(reap_n(p, efd, d, 1, &wakes), 1);
	assert_int_equal(d[0].cookie, 6);
	assert_int_equal(d[0].result, AUTH_VERIFY_OK);
	hpool_destroy(p);
	auth_users_unref(users);
	gate_destroy(&g);
	close(efd);
}

/* A shard may have shard_inflight requests out (submitted, not reaped),
 * even when the request ring has room; reaping frees a slot. */
static void test_shard_inflight_max(void **state)
{
	(void)state;
	struct hpool *p = make_pool(1, 2, 64, 2);
	int efd = make_efd();
	hpool_shard_attach(p, 0, efd);
	struct gate g;
	gate_init(&g);
	assert_int_equal(hpool_submit_job(p, 0, 0, gate_job, &g), 0);
	sem_wait(&g.started);
	assert_int_equal(hpool_submit_job(p, 0, 1, count_job, NULL), 0);
	assert_int_equal(hpool_submit_job(p, 0, 2, count_job, NULL), -EAGAIN);
	/* The other shard has its own slots. */
	assert_int_equal(hpool_submit_job(p, 1, 3, count_job, NULL), 0);
	sem_post(&g.release);
	struct hpool_done d[2];
	uint64_t wakes = 0;
	assert_int_equal(reap_n(p, efd, d, 1, &wakes), 1);
	assert_int_equal(hpool_submit_job(p, 0, 4, count_job, NULL), 0);
	hpool_destroy(p);
	gate_destroy(&g);
	close(efd);
}

static void test_bad_arguments(void **state)
{
	(void)state;
	struct hpool *p = NULL;
	struct hpool_config bad[] = {
	    {.threads = 0, .shards = 1, .queue_size = 8, .shard_inflight = 1},
	    {.threads = HPOOL_THREADS_MAX + 1, .shards = 1, .queue_size = 8, .shard_inflight = 1},
	    {.threads = 1, .shards = 0, .queue_size = 8, .shard_inflight = 1},
	    {.threads = 1, .shards = HPOOL_SHARDS_MAX + 1, .queue_size = 8, .shard_inflight = 1},
	    {.threads = 1, .shards = 1, .queue_size = 6, .shard_inflight = 1},
	    {.threads = 1, .shards = 1, .queue_size = 1, .shard_inflight = 1},
	    {.threads = 1, .shards = 1, .queue_size = HPOOL_QUEUE_MAX * 2, .shard_inflight = 1},
	    {.threads = 1, .shards = 1, .queue_size = 8, .shard_inflight = 0},
	    {.threads = 1, .shards = 1, .queue_size = 8, .shard_inflight = HPOOL_INFLIGHT_MAX + 1},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(hpool_create(&bad[i], &p), -EINVAL);
		assert_null(p);
	}
	p = make_pool(1, 1, 8, 2);
	struct auth_users *users = test_users();
	char big[AUTH_PASS_MAX + 1] = {0};
	assert_int_equal(hpool_shard_attach(p, 1, -1), -EINVAL);
	assert_int_equal(hpool_submit_job(p, 1, 0, count_job, NULL), -EINVAL);
	assert_int_equal(auth_users_submit_verify(p, 0, 0, users, "u", 1, big, sizeof(big)),
			 -EINVAL);
	assert_int_equal(auth_users_submit_verify(p, 0, 0, users, big, AUTH_USER_MAX + 1, "p", 1),
			 -EINVAL);
	hpool_destroy(p);
	auth_users_unref(users);
}

/* ---- shutdown ----------------------------------------------------------------------- */

struct stopper {
	struct hpool *p;
	enum hpool_stop_mode mode;
};

static void *stop_main(void *arg)
{
	struct stopper *s = arg;
	hpool_stop(s->p, s->mode);
	return NULL;
}

/* Hold the only helper, queue jobs and checks, start hpool_stop(mode) on
 * another thread, wait until submits are refused, then release: what
 * happens to the queued work depends on the mode. */
static void stop_with_work_in_flight(enum hpool_stop_mode mode)
{
	struct hpool *p = make_pool(1, 1, 64, 64);
	int efd = make_efd();
	hpool_shard_attach(p, 0, efd);
	struct auth_users *users = test_users();
	struct gate g;
	gate_init(&g);
	atomic_store(&jobs_run, 0);
	assert_int_equal(hpool_submit_job(p, 0, 0, gate_job, &g), 0);
	sem_wait(&g.started);
	for (intptr_t i = 1; i <= 5; i++)
		assert_int_equal(hpool_submit_job(p, 0, (uint64_t)i, count_job, (void *)i), 0);
	assert_int_equal(auth_users_submit_verify(p, 0, 6, users, "alice", 5, "alice-pw", 8), 0);
	assert_int_equal(auth_users_submit_verify(p, 0, 7, users, "bob", 3, "nope", 4), 0);
	pthread_t th;
	struct stopper st = {.p = p, .mode = mode};
	assert_int_equal(pthread_create(&th, NULL, stop_main, &st), 0);
	/* Submits accepted while the stopper starts are queued work too. */
	uint32_t total = 8, rc;
	while ((rc = (uint32_t)-hpool_submit_job(p, 0, total, count_job, NULL)) == 0) {
		total++;
		usleep(200);
	}
	assert_int_equal(rc, ESHUTDOWN);
	assert_int_equal(auth_users_submit_verify(p, 0, 99, users, "alice", 5, "alice-pw", 8),
			 -ESHUTDOWN);
	sem_post(&g.release);
	assert_int_equal(pthread_join(th, NULL), 0);
	/* Everything accepted has completed and was signalled before the join. */
	struct hpool_done d[64];
	assert_int_equal(hpool_reap(p, 0, d, 64), total);
	assert_int_equal(efd_wait(efd, 0), total);
	for (uint32_t i = 0; i < total; i++) {
		int want = d[i].cookie == 0	       ? 42
			   : mode == HPOOL_STOP_CANCEL ? -ECANCELED
			   : d[i].cookie == 6	       ? AUTH_VERIFY_OK
			   : d[i].cookie == 7	       ? AUTH_VERIFY_BAD_PASSWORD
			   : d[i].cookie <= 5	       ? (int)d[i].cookie
						       : 0;
		assert_int_equal(d[i].result, want);
	}
	assert_int_equal(atomic_load(&jobs_run), mode == HPOOL_STOP_CANCEL ? 0 : (int)total - 3);
	hpool_stop(p, mode); /* idempotent */
	hpool_destroy(p);
	/* The pool dropped its references even for cancelled checks: this
	 * is the last one (LeakSanitizer would see a leak otherwise). */
	auth_users_unref(users);
	gate_destroy(&g);
	close(efd);
}

static void test_stop_cancel_with_work_in_flight(void **state)
{
	(void)state;
	stop_with_work_in_flight(HPOOL_STOP_CANCEL);
}

static void test_stop_drain_with_work_in_flight(void **state)
{
	(void)state;
	stop_with_work_in_flight(HPOOL_STOP_DRAIN);
}

/* A reload drops the caller's table while checks against it are queued:
 * they finish on the old table (ASan would see a use after free). */
static void test_reload_while_in_flight(void **state)
{
	(void)state;
	struct hpool *p = make_pool(2, 1, 16, 8);
	int efd = make_efd();
	hpool_shard_attach(p, 0, efd);
	struct auth_users *old = test_users();
	for (uint64_t i = 0; i < 8; i++)
		assert_int_equal(auth_users_submit_verify(p, 0, i, old, "bob", 3, "bob-pw", 6), 0);
	auth_users_unref(old);
	struct hpool_done d[8];
	uint64_t wakes = 0;
	assert_int_equal(reap_n(p, efd, d, 8, &wakes), 8);
	for (int i = 0; i < 8; i++)
		assert_int_equal(d[i].result, AUTH_VERIFY_OK);
	hpool_destroy(p);
	close(efd);
}

/* Destroy without stop and without reaping: nothing leaks, nothing hangs. */
static void test_destroy_unreaped(void **state)
{
	(void)state;
	struct hpool *p = make_pool(2, 2, 16, 8);
	struct auth_users *users = test_users();
	for (uint64_t i = 0; i < 6; i++)
		assert_int_equal(
		    auth_users_submit_verify(p, (uint32_t)(i % 2), i, users, "alice", 5, "x", 1),
		    0);
	hpool_destroy(p);
	auth_users_unref(users);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_two_shards_many_verifications),
	    cmocka_unit_test(test_generic_jobs),
	    cmocka_unit_test(test_inline_job_runs_on_a_copy),
	    cmocka_unit_test(test_no_eventfd_polls),
	    cmocka_unit_test(test_request_ring_full),
	    cmocka_unit_test(test_shard_inflight_max),
	    cmocka_unit_test(test_bad_arguments),
	    cmocka_unit_test(test_stop_cancel_with_work_in_flight),
	    cmocka_unit_test(test_stop_drain_with_work_in_flight),
	    cmocka_unit_test(test_reload_while_in_flight),
	    cmocka_unit_test(test_destroy_unreaped),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
