/*
 * filters/match_rx — regexes for the matchers (prog.h): PCRE2, compiled at
 * load and JIT-compiled where the machine allows.
 *
 * A regex meets hostile text (a HELO, an address, later headers and
 * bodies), so every match runs under limits: a pattern that backtracks
 * catastrophically stops at the match limit and counts as "no match"
 * instead of holding the shard.  A pattern can lower these limits with
 * (*LIMIT_MATCH=n) but not raise them.  The match data and the limits live
 * once per thread (made at its first match, freed when it exits), so a
 * match allocates nothing.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "filters/prog.h"

#define RX_MATCH_LIMIT 100000 /* backtracking steps per match */
#define RX_DEPTH_LIMIT 1000
#define RX_HEAP_LIMIT  1024 /* KiB of backtracking memory (interpreter) */

struct flt_rx {
	pcre2_code *code;
};

struct rx_thread {
	pcre2_match_data *md;
	pcre2_match_context *mc;
};

static pthread_key_t rx_key;
static pthread_once_t rx_once = PTHREAD_ONCE_INIT;

static void rx_thread_free(void *p)
{
	struct rx_thread *t = p;

	pcre2_match_data_free(t->md);
	pcre2_match_context_free(t->mc);
	free(t);
}

static void rx_key_make(void)
{
	if (pthread_key_create(&rx_key, rx_thread_free) != 0)
		abort(); /* only at the first match; no key means no matching at all */
}

static struct rx_thread *rx_thread(void)
{
	struct rx_thread *t;

	pthread_once(&rx_once, rx_key_make);
	t = pthread_getspecific(rx_key);
	if (t)
		return t;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->md = pcre2_match_data_create(1, NULL);
	t->mc = pcre2_match_context_create(NULL);
	if (!t->md || !t->mc || pthread_setspecific(rx_key, t) != 0) {
		rx_thread_free(t);
		return NULL;
	}
	pcre2_set_match_limit(t->mc, RX_MATCH_LIMIT);
	pcre2_set_depth_limit(t->mc, RX_DEPTH_LIMIT);
	pcre2_set_heap_limit(t->mc, RX_HEAP_LIMIT);
	return t;
}

struct flt_rx *flt_rx_new(const char *pattern, char *err, size_t err_len)
{
	struct flt_rx *rx = calloc(1, sizeof(*rx));
	int code;
	PCRE2_SIZE off;

	if (!rx) {
		snprintf(err, err_len, "out of memory");
		return NULL;
	}
	rx->code = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, 0, &code, &off, NULL);
	if (!rx->code) {
		PCRE2_UCHAR msg[160];

		pcre2_get_error_message(code, msg, sizeof(msg));
		snprintf(err, err_len, "bad regex at offset %zu: %s", (size_t)off, (char *)msg);
		free(rx);
		return NULL;
	}
	/* Without JIT (an unsupported CPU, or a pattern JIT refuses) the
	 * interpreter runs it, under the same limits. */
	(void)pcre2_jit_compile(rx->code, PCRE2_JIT_COMPLETE);
	return rx;
}

void flt_rx_free(struct flt_rx *rx)
{
	if (!rx)
		return;
	pcre2_code_free(rx->code);
	free(rx);
}

bool flt_rx_match(const struct flt_rx *rx, const char *v, size_t len)
{
	struct rx_thread *t = rx_thread();

	if (!t)
		return false;
	/* < 0: no match, or a limit hit (PCRE2_ERROR_MATCHLIMIT...): both
	 * mean the rule does not hold. */
	return pcre2_match(rx->code, (PCRE2_SPTR)v, len, 0, 0, t->md, t->mc) >= 0;
}
