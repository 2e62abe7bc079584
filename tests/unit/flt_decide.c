/* The decision point: relay policy per stage, and the tarpit's PENDING answer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <string.h>

#include "config/config.h"
#include "filters/flt.h"

static struct rmx_config *load(const char *json)
{
	char err[CONFIG_ERR_MAX];
	struct rmx_config *cfg = config_load_string(json, err, sizeof(err));

	if (!cfg)
		fail_msg("config: %s", err);
	return cfg;
}

static const char *const base =
    "{\"hostname\": \"gw.test\", \"listeners\": [{\"name\": \"mx\", \"address\": "
    "\"127.0.0.1:2525\"}], \"relay\": {\"domains\": [\"ok.example\"], \"networks\": "
    "[\"192.0.2.0/24\"]}, \"limits\": {\"soft_errors\": 3, \"error_delay_ms\": 250}}";

static struct sockaddr_in addr_of(const char *ip)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};

	inet_pton(AF_INET, ip, &sa.sin_addr);
	return sa;
}

static int decide_rcpt(struct rmx_config *cfg, const char *ip, const char *domain, uint32_t errors,
		       struct flt_verdict *v)
{
	struct sockaddr_in sa = addr_of(ip);
	struct flt_input in = {.cfg = cfg,
			       .client = (struct sockaddr *)&sa,
			       .client_ip = ip,
			       .rcpt_domain = domain,
			       .rcpt_domain_len = strlen(domain),
			       .rcpt = domain,
			       .rcpt_len = strlen(domain),
			       .errors = errors};
	struct flt_state st = {0};
	int rc = flt_decide(FLT_STAGE_RCPT, &in, &st, v);

	if (rc == FLT_PENDING) {
		struct flt_verdict w = *v;

		/* the wait is over: the verdict made before it stands */
		assert_int_equal(flt_resume(FLT_STAGE_RCPT, &in, &st, &w), FLT_DONE);
		assert_int_equal(w.delay_ms, 0);
		assert_int_equal(w.action, v->action);
	}
	return rc;
}

static void relay_by_domain_or_network(void **state)
{
	struct rmx_config *cfg = load(base);
	struct flt_verdict v;

	(void)state;
	assert_int_equal(decide_rcpt(cfg, "198.51.100.1", "ok.example", 0, &v), FLT_DONE);
	assert_int_equal(v.action, FLT_ACCEPT);
	assert_int_equal(decide_rcpt(cfg, "198.51.100.1", "other.example", 0, &v), FLT_DONE);
	assert_int_equal(v.action, FLT_REJECT);
	assert_true(strncmp(v.reply, "554 5.7.1 ", 10) == 0);
	assert_int_equal(decide_rcpt(cfg, "192.0.2.9", "other.example", 0, &v), FLT_DONE);
	assert_int_equal(v.action, FLT_ACCEPT);
	/* <Postmaster>: no domain, always ours (RFC 5321 4.5.1). */
	assert_int_equal(decide_rcpt(cfg, "198.51.100.1", "", 0, &v), FLT_DONE);
	assert_int_equal(v.action, FLT_ACCEPT);
	config_free(cfg);
}

static void tarpit_from_soft_limit(void **state)
{
	struct rmx_config *cfg = load(base);
	struct flt_verdict v;

	(void)state;
	assert_int_equal(decide_rcpt(cfg, "198.51.100.1", "ok.example", 2, &v), FLT_DONE);
	assert_int_equal(decide_rcpt(cfg, "198.51.100.1", "other.example", 3, &v), FLT_PENDING);
	assert_int_equal(v.delay_ms, 250);
	assert_int_equal(v.action, FLT_REJECT); /* decided now, told later */
	config_free(cfg);
}

static void tarpit_off_by_default(void **state)
{
	struct rmx_config *cfg = load("{\"listeners\": [{\"name\": \"mx\", \"address\": "
				      "\"127.0.0.1:2525\"}], \"hostname\": \"gw.test\"}");
	struct flt_verdict v;

	(void)state;
	assert_int_equal(cfg->limits.error_delay_ms, 0);
	assert_int_equal(decide_rcpt(cfg, "198.51.100.1", "localhost", 1000, &v), FLT_DONE);
	config_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(relay_by_domain_or_network),
	    cmocka_unit_test(tarpit_from_soft_limit),
	    cmocka_unit_test(tarpit_off_by_default),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
