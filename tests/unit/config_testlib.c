/* Helpers shared by the src/config/config.c tests; the contracts are in config_testlib.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_testlib.h"

/* fmt formatted into a new JSON_MAX buffer, every ' turned into ". */
static char *json_vformat(const char *fmt, va_list ap)
{
	char *buf = malloc(JSON_MAX);
	assert_non_null(buf);
	int n = vsnprintf(buf, JSON_MAX, fmt, ap);
	assert_true(n >= 0 && n < JSON_MAX);
	for (char *p = buf; *p != '\0'; p++)
		if (*p == '\'')
			*p = '"';
	return buf;
}

/* Loads the JSON and fails the test unless it goes as wanted: when want is NULL, it loads
 * (the config is returned); otherwise it is refused with exactly the error want. */
static struct rmx_config *load_checked(const char *want, const char *fmt, va_list ap)
{
	char err[CONFIG_ERR_MAX];
	char *json = json_vformat(fmt, ap);
	struct rmx_config *cfg = config_load_string(json, err, sizeof(err));
	if (want == NULL && cfg == NULL)
		fail_msg("unexpected error: %s\n  json: %.2000s", err, json);
	if (want != NULL && cfg != NULL)
		fail_msg("loaded, expected error: %s\n  json: %.2000s", want, json);
	if (want != NULL && strcmp(err, want) != 0)
		fail_msg("error:    %s\nexpected: %s\n  json: %.2000s", err, want, json);
	free(json);
	return cfg;
}

/* ---- loading ------------------------------------------------------------- */

struct rmx_config *try_load(char *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *json = json_vformat(fmt, ap);
	va_end(ap);
	struct rmx_config *cfg = config_load_string(json, err, CONFIG_ERR_MAX);
	free(json);
	return cfg;
}

struct rmx_config *load_ok(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	struct rmx_config *cfg = load_checked(NULL, fmt, ap);
	va_end(ap);
	return cfg;
}

struct rmx_config *default_ok(void)
{
	char err[CONFIG_ERR_MAX];
	struct rmx_config *cfg = config_default(err, sizeof(err));
	if (cfg == NULL)
		fail_msg("config_default: %s", err);
	return cfg;
}

/* ---- refusals ------------------------------------------------------------ */

void expect_err(const char *want, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	load_checked(want, fmt, ap);
	va_end(ap);
}

void expect_errs(const struct err_case *cases, size_t n)
{
	for (size_t i = 0; i < n; i++)
		expect_err(cases[i].err, "%s", cases[i].json);
}

void expect_section_errs(const char *section, const struct err_case *cases, size_t n)
{
	for (size_t i = 0; i < n; i++)
		expect_err(cases[i].err, "{" LISTENER ", '%s': %s}", section, cases[i].json);
}

/* ---- text ---------------------------------------------------------------- */

char *repeat(char ch, size_t n)
{
	char *s = malloc(n + 1);
	assert_non_null(s);
	memset(s, ch, n);
	s[n] = '\0';
	return s;
}
