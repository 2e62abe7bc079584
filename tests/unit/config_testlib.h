/*
 * config_testlib — helpers shared by the src/config/config.c tests (config_load.c, config_relay.c,
 * config_routes.c, config_tls.c): load a config from JSON written in the test, and check
 * that it loads, or that it is refused with exactly the one-line error expected.
 *
 * Test JSON is written with single quotes: the text is formatted (printf-style, at most
 * JSON_MAX - 1 bytes), then every ' in it is turned into " before loading, so the cases stay
 * readable.  A test that needs a ' in its JSON calls config_load_string itself.
 *
 * Failures are cmocka assertions, so call these from a running test; a failure message shows
 * the error and the JSON (its first 2000 bytes).  Whatever a function returns in malloc'd
 * memory, the caller frees: a config with config_free, anything else with free.
 */
#ifndef RINGMX_TESTS_CONFIG_TESTLIB_H
#define RINGMX_TESTS_CONFIG_TESTLIB_H

#include <stddef.h>

#include "config/config.h"

/* The one listener every config needs, for the cases about other keys. */
#define LISTENER "'listeners': [{'name': 'mx', 'address': '127.0.0.1:2525'}]"

/* The formatted JSON of one call, NUL included, at most. */
#define JSON_MAX (1024 * 1024)

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- loading ------------------------------------------------------------- */

/* Loads the JSON; NULL, and the error in err (CONFIG_ERR_MAX bytes), when it is refused. */
__attribute__((format(printf, 2, 3))) struct rmx_config *try_load(char *err, const char *fmt, ...);

/* Loads the JSON; fails the test, with the error, when it is refused. */
__attribute__((format(printf, 1, 2))) struct rmx_config *load_ok(const char *fmt, ...);

/* config_default(); fails the test, with the error, when it does not load. */
struct rmx_config *default_ok(void);

/* ---- refusals ------------------------------------------------------------ */

/* Fails the test unless the JSON is refused with exactly the error want. */
__attribute__((format(printf, 2, 3))) void expect_err(const char *want, const char *fmt, ...);

/* One input that must be refused, and its error. */
struct err_case {
	const char *json; /* single-quoted; what it is depends on the function it goes to */
	const char *err;
};

/* expect_err for every case, each json being a whole document. */
void expect_errs(const struct err_case *cases, size_t n);

#define EXPECT_ERRS(cases) expect_errs(cases, COUNT(cases))

/* expect_err for every case, each json being the value of the top-level key `section`
 * beside LISTENER: {LISTENER, 'section': json}. */
void expect_section_errs(const char *section, const struct err_case *cases, size_t n);

#define EXPECT_SECTION_ERRS(section, cases) expect_section_errs(section, cases, COUNT(cases))

/* ---- text ---------------------------------------------------------------- */

/* n copies of ch, NUL-terminated. */
char *repeat(char ch, size_t n);

#endif
