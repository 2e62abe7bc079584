/* config_tls: the tls, auth, listener tls/auth/auth_plaintext and route tls/ca_file keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"
#include "config_testlib.h" /* test JSON is single-quoted: see there */

/* Throwaway files in a temp dir: the loader only checks that they are
 * readable, so their contents do not matter (no TLS library is called). */
static char g_dir[64];
static char g_cert[128], g_key[128], g_cert2[128], g_key2[128], g_users[128], g_ca[128];

static void file_make(char *out, size_t out_len, const char *name, const char *content)
{
	snprintf(out, out_len, "%s/%s", g_dir, name);
	int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
	close(fd);
}

static int files_setup(void **state)
{
	(void)state;
	snprintf(g_dir, sizeof(g_dir), "/tmp/rmx-config-tls-XXXXXX");
	if (mkdtemp(g_dir) == NULL)
		return -1;
	file_make(g_cert, sizeof(g_cert), "mx.pem", "-----BEGIN CERTIFICATE-----\n");
	file_make(g_key, sizeof(g_key), "mx.key", "-----BEGIN PRIVATE KEY-----\n");
	file_make(g_cert2, sizeof(g_cert2), "b.pem", "not a certificate");
	file_make(g_key2, sizeof(g_key2), "b.key", "not a key");
	file_make(g_users, sizeof(g_users), "users", "# no users\n");
	file_make(g_ca, sizeof(g_ca), "ca.pem", "-----BEGIN CERTIFICATE-----\n");
	return 0;
}

static int files_teardown(void **state)
{
	(void)state;
	const char *files[] = {g_cert, g_key, g_cert2, g_key2, g_users, g_ca};
	for (size_t i = 0; i < COUNT(files); i++)
		unlink(files[i]);
	rmdir(g_dir);
	return 0;
}

/* '"tls": {"certificates": [one certificate]}' for the throwaway files. */
static char g_tls_one[512];

static const char *tls_one(void)
{
	snprintf(g_tls_one, sizeof(g_tls_one),
		 "'tls': {'certificates': [{'cert': '%s', 'key': '%s', 'names': "
		 "['mx.example.net']}]}",
		 g_cert, g_key);
	return g_tls_one;
}

/* tmpl with "@CERT", "@KEY" and "@CA" replaced by the throwaway files. */
static char *subst(const char *tmpl)
{
	static const struct {
		const char *token;
		const char *value;
	} tokens[] = {{"@CERT", g_cert}, {"@KEY", g_key}, {"@CA", g_ca}};
	char *out = malloc(JSON_MAX);
	assert_non_null(out);
	size_t used = 0;
	while (*tmpl != '\0') {
		size_t i = 0;
		while (i < COUNT(tokens) && strncmp(tmpl, tokens[i].token, strlen(tokens[i].token)))
			i++;
		const char *piece = i < COUNT(tokens) ? tokens[i].value : tmpl;
		size_t n = i < COUNT(tokens) ? strlen(piece) : 1;
		assert_true(used + n < JSON_MAX);
		memcpy(out + used, piece, n);
		used += n;
		tmpl += i < COUNT(tokens) ? strlen(tokens[i].token) : 1;
	}
	out[used] = '\0';
	return out;
}

/* expect_section_errs, with the tokens of subst replaced in each case first. */
static void expect_section_errs_subst(const char *section, const struct err_case *cases, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char *value = subst(cases[i].json);
		expect_err(cases[i].err, "{" LISTENER ", '%s': %s}", section, value);
		free(value);
	}
}

/* ---- defaults ------------------------------------------------------------ */

static void test_defaults_without_tls(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok("{" LISTENER "}");
	const struct config_listener *l = &cfg->listeners[0];
	assert_int_equal(l->tls, CONFIG_TLS_NONE);
	assert_int_equal(l->auth, CONFIG_AUTH_NONE);
	assert_false(l->auth_plaintext);
	assert_int_equal(cfg->tls.cert_count, 0);
	assert_string_equal(cfg->tls.min_version, "1.2");
	assert_null(cfg->tls.ciphers);
	assert_null(cfg->auth.users_file);
	config_free(cfg);

	/* empty sections and an empty certificate list mean the same */
	cfg = load_ok("{" LISTENER ", 'tls': {'certificates': []}, 'auth': {}}");
	assert_int_equal(cfg->listeners[0].tls, CONFIG_TLS_NONE);
	assert_int_equal(cfg->tls.cert_count, 0);
	assert_string_equal(cfg->tls.min_version, "1.2");
	assert_null(cfg->auth.users_file);
	config_free(cfg);

	cfg = default_ok();
	assert_int_equal(cfg->listeners[0].tls, CONFIG_TLS_NONE);
	assert_int_equal(cfg->listeners[0].auth, CONFIG_AUTH_NONE);
	assert_int_equal(cfg->routes[0].tls, CONFIG_RTLS_NONE); /* maildir: */
	assert_null(cfg->routes[0].ca_file);
	config_free(cfg);
}

/* A certificate turns STARTTLS on for every listener that does not say. */
static void test_defaults_with_certificate(void **state)
{
	(void)state;
	static const char listeners[] =
	    "'listeners': [{'name': 'a', 'address': '0.0.0.0:25'},"
	    " {'name': 'b', 'address': '0.0.0.0:26', 'tls': 'none'},"
	    " {'name': 'c', 'address': '0.0.0.0:465', 'tls': 'implicit'},"
	    " {'tls': 'starttls', 'name': 'd', 'address': '0.0.0.0:587'}]";
	for (int order = 0; order < 2; order++) {
		/* key order never matters: tls before or after the listeners */
		struct rmx_config *cfg = order == 0 ? load_ok("{%s, %s}", listeners, tls_one())
						    : load_ok("{%s, %s}", tls_one(), listeners);
		assert_int_equal(cfg->listener_count, 4);
		assert_int_equal(cfg->listeners[0].tls, CONFIG_TLS_STARTTLS);
		assert_int_equal(cfg->listeners[1].tls, CONFIG_TLS_NONE);
		assert_int_equal(cfg->listeners[2].tls, CONFIG_TLS_IMPLICIT);
		assert_int_equal(cfg->listeners[3].tls, CONFIG_TLS_STARTTLS);
		assert_int_equal(cfg->tls.cert_count, 1);
		assert_string_equal(cfg->tls.certs[0].cert, g_cert);
		assert_string_equal(cfg->tls.certs[0].key, g_key);
		assert_int_equal(cfg->tls.certs[0].name_count, 1);
		assert_string_equal(cfg->tls.certs[0].names[0], "mx.example.net");
		assert_string_equal(cfg->tls.min_version, "1.2");
		assert_null(cfg->tls.ciphers);
		config_free(cfg);
	}
}

/* The example of the product spec, file names replaced by the temp files. */
static void test_spec_example(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok(
	    "{'tls': {'certificates': [{'cert': '%s', 'key': '%s', 'names': ['mx.example.net']}],"
	    "         'min_version': '1.2', 'ciphers': 'TLS13-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-"
	    "GCM-SHA256'},"
	    " 'listeners': ["
	    "  {'name': 'mx',          'address': '0.0.0.0:25',  'tls': 'starttls', 'auth': "
	    "'none'},"
	    "  {'name': 'submission',  'address': '0.0.0.0:587', 'tls': 'starttls', 'auth': "
	    "'required'},"
	    "  {'name': 'submissions', 'address': '0.0.0.0:465', 'tls': 'implicit', 'auth': "
	    "'required'}],"
	    " 'auth': {'users_file': '%s'},"
	    " 'routes': [{'domains': ['*'], 'to': 'mx', 'tls': 'opportunistic', 'ca_file': '%s'}]}",
	    g_cert, g_key, g_users, g_ca);
	assert_int_equal(cfg->listeners[0].tls, CONFIG_TLS_STARTTLS);
	assert_int_equal(cfg->listeners[0].auth, CONFIG_AUTH_NONE);
	assert_int_equal(cfg->listeners[1].tls, CONFIG_TLS_STARTTLS);
	assert_int_equal(cfg->listeners[1].auth, CONFIG_AUTH_REQUIRED);
	assert_int_equal(cfg->listeners[2].tls, CONFIG_TLS_IMPLICIT);
	assert_int_equal(cfg->listeners[2].auth, CONFIG_AUTH_REQUIRED);
	for (uint32_t i = 0; i < 3; i++)
		assert_false(cfg->listeners[i].auth_plaintext);
	assert_string_equal(cfg->tls.ciphers,
			    "TLS13-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256");
	assert_string_equal(cfg->auth.users_file, g_users);
	assert_int_equal(cfg->routes[0].tls, CONFIG_RTLS_OPPORTUNISTIC);
	assert_string_equal(cfg->routes[0].ca_file, g_ca);
	config_free(cfg);
}

/* ---- each key and choice ------------------------------------------------- */

static void test_listener_choices(void **state)
{
	(void)state;
	static const struct {
		const char *tls, *auth;
		enum config_tls_mode want_tls;
		enum config_auth_mode want_auth;
	} cases[] = {
	    {"none", "none", CONFIG_TLS_NONE, CONFIG_AUTH_NONE},
	    {"starttls", "optional", CONFIG_TLS_STARTTLS, CONFIG_AUTH_OPTIONAL},
	    {"implicit", "required", CONFIG_TLS_IMPLICIT, CONFIG_AUTH_REQUIRED},
	    {"starttls", "required", CONFIG_TLS_STARTTLS, CONFIG_AUTH_REQUIRED},
	};
	for (size_t i = 0; i < COUNT(cases); i++) {
		struct rmx_config *cfg =
		    load_ok("{'listeners': [{'name': 'x', 'address': '192.0.2.1:25', 'tls': '%s', "
			    "'auth': '%s'}], %s, 'auth': {'users_file': '%s'}}",
			    cases[i].tls, cases[i].auth, tls_one(), g_users);
		assert_int_equal(cfg->listeners[0].tls, cases[i].want_tls);
		assert_int_equal(cfg->listeners[0].auth, cases[i].want_auth);
		config_free(cfg);
	}
}

static void test_tls_keys(void **state)
{
	(void)state;
	/* two certificates, names lower-cased, a wildcard, min_version 1.3 */
	struct rmx_config *cfg = load_ok(
	    "{" LISTENER ", 'tls': {'min_version': '1.3', 'ciphers': 'TLS13-AES256-GCM-SHA384',"
	    " 'certificates': [{'names': ['MX.Example.NET', '*.Example.Net', 'localhost'],"
	    " 'key': '%s', 'cert': '%s'}, {'cert': '%s', 'key': '%s', 'names': "
	    "['mx.example.org']}]}}",
	    g_key, g_cert, g_cert2, g_key2);
	assert_int_equal(cfg->tls.cert_count, 2);
	const struct config_cert *a = &cfg->tls.certs[0], *b = &cfg->tls.certs[1];
	assert_string_equal(a->cert, g_cert);
	assert_string_equal(a->key, g_key);
	assert_int_equal(a->name_count, 3);
	assert_string_equal(a->names[0], "mx.example.net");
	assert_string_equal(a->names[1], "*.example.net");
	assert_string_equal(a->names[2], "localhost");
	assert_string_equal(b->cert, g_cert2);
	assert_string_equal(b->key, g_key2);
	assert_int_equal(b->name_count, 1);
	assert_string_equal(b->names[0], "mx.example.org");
	assert_string_equal(cfg->tls.min_version, "1.3");
	assert_string_equal(cfg->tls.ciphers, "TLS13-AES256-GCM-SHA384");
	assert_int_equal(cfg->listeners[0].tls, CONFIG_TLS_STARTTLS);
	config_free(cfg);
}

/* A relative path is checked against the working directory. */
static void test_relative_paths(void **state)
{
	(void)state;
	char cwd[4096];
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(chdir(g_dir), 0);
	struct rmx_config *cfg = load_ok(
	    "{" LISTENER ", 'tls': {'certificates': [{'cert': 'mx.pem', 'key': './mx.key',"
	    " 'names': ['mx.example.net']}]}, 'auth': {'users_file': 'users'},"
	    " 'routes': [{'domains': ['*'], 'to': 'mx', 'tls': 'verify', 'ca_file': 'ca.pem'}]}");
	assert_string_equal(cfg->tls.certs[0].cert, "mx.pem");
	assert_string_equal(cfg->tls.certs[0].key, "./mx.key");
	assert_string_equal(cfg->auth.users_file, "users");
	assert_string_equal(cfg->routes[0].ca_file, "ca.pem");
	config_free(cfg);
	expect_err("tls.certificates[0].cert: nope.pem: No such file or directory",
		   "{" LISTENER ", 'tls': {'certificates': [{'cert': 'nope.pem', 'key': 'mx.key',"
		   " 'names': ['mx.example.net']}]}}");
	assert_int_equal(chdir(cwd), 0);
}

static void test_auth_users_file(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok("{'auth': {'users_file': '%s'}, 'listeners': [{'name': "
					 "'s', 'address': '127.0.0.1:2587', 'auth': 'optional',"
					 " 'auth_plaintext': true}]}",
					 g_users);
	assert_string_equal(cfg->auth.users_file, g_users);
	assert_int_equal(cfg->listeners[0].auth, CONFIG_AUTH_OPTIONAL);
	assert_int_equal(cfg->listeners[0].tls, CONFIG_TLS_NONE);
	config_free(cfg);
	/* a users_file that no listener uses is loaded all the same */
	cfg = load_ok("{" LISTENER ", 'auth': {'users_file': '%s'}}", g_users);
	assert_string_equal(cfg->auth.users_file, g_users);
	config_free(cfg);
}

/* ---- auth_plaintext: loopback only --------------------------------------- */

static void test_auth_plaintext_loopback(void **state)
{
	(void)state;
	static const char *const ok[] = {"127.0.0.1:2525", "127.1.2.3:2525", "[::1]:2525",
					 "[::ffff:127.0.0.1]:2525"};
	for (size_t i = 0; i < COUNT(ok); i++) {
		struct rmx_config *cfg =
		    load_ok("{'listeners': [{'name': 't', 'auth_plaintext': true, 'address': '%s',"
			    " 'auth': 'required'}], 'auth': {'users_file': '%s'}}",
			    ok[i], g_users);
		assert_true(cfg->listeners[0].auth_plaintext);
		assert_int_equal(cfg->listeners[0].tls, CONFIG_TLS_NONE);
		config_free(cfg);
	}
	static const char *const refused[] = {
	    "0.0.0.0:25",	"*:25",		"192.0.2.1:25",	       "[::]:25",
	    "[2001:db8::1]:25", "128.0.0.1:25", "[::ffff:10.0.0.1]:25"};
	for (size_t i = 0; i < COUNT(refused); i++) {
		/* the key comes before the address: checked once both are read */
		expect_err("listeners[1].auth_plaintext: allowed only on a loopback address",
			   "{'listeners': [{'name': 'a', 'address': '127.0.0.1:1'},"
			   " {'name': 't', 'auth_plaintext': true, 'address': '%s'}]}",
			   refused[i]);
	}
	/* false is the default and allowed anywhere */
	struct rmx_config *cfg = load_ok(
	    "{'listeners': [{'name': 'a', 'address': '0.0.0.0:25', 'auth_plaintext': false}]}");
	assert_false(cfg->listeners[0].auth_plaintext);
	config_free(cfg);
}

/* ---- listener errors ----------------------------------------------------- */

static void test_listener_errors(void **state)
{
	(void)state;
	static const struct {
		const char *keys, *err;
	} cases[] = {
	    {"'tls': 'STARTTLS'",
	     "listeners[0].tls: expected \"none\", \"starttls\" or \"implicit\""},
	    {"'tls': 'ssl'", "listeners[0].tls: expected \"none\", \"starttls\" or \"implicit\""},
	    {"'tls': true", "listeners[0].tls: expected \"none\", \"starttls\" or \"implicit\""},
	    {"'tls': null", "listeners[0].tls: expected \"none\", \"starttls\" or \"implicit\""},
	    {"'auth': 'yes'", "listeners[0].auth: expected \"none\", \"optional\" or \"required\""},
	    {"'auth': {}", "listeners[0].auth: expected \"none\", \"optional\" or \"required\""},
	    {"'auth_plaintext': 'true'", "listeners[0].auth_plaintext: expected true or false"},
	    {"'auth_plaintext': 1", "listeners[0].auth_plaintext: expected true or false"},
	    {"'auth_plaintext': null", "listeners[0].auth_plaintext: expected true or false"},
	    {"'Tls': 'none'", "listeners[0].Tls: unknown key"},
	    {"'tls': 'none', 'tls': 'none'", "listeners[0].tls: duplicate key (line 1)"},
	};
	for (size_t i = 0; i < COUNT(cases); i++)
		expect_err(cases[i].err,
			   "{'listeners': [{'name': 'x', 'address': '127.0.0.1:25', %s}]}",
			   cases[i].keys);
}

/* Checks across sections run once the whole file is read, in listener
 * order, tls before auth. */
static void test_cross_checks(void **state)
{
	(void)state;
	expect_err("listeners[0].tls: needs tls.certificates",
		   "{'listeners': [{'name': 'x', 'address': '127.0.0.1:25', 'tls': 'starttls'}]}");
	expect_err("listeners[1].tls: needs tls.certificates",
		   "{'listeners': [{'name': 'x', 'address': '127.0.0.1:25', 'tls': 'none'},"
		   " {'name': 'y', 'address': '127.0.0.1:465', 'tls': 'implicit'}],"
		   " 'tls': {'certificates': []}}");
	expect_err("listeners[0].tls: needs tls.certificates",
		   "{'listeners': [{'name': 'x', 'address': '127.0.0.1:25', 'tls': 'starttls',"
		   " 'auth': 'required'}]}");
	expect_err("listeners[0].auth: needs auth.users_file",
		   "{'listeners': [{'name': 'x', 'address': '127.0.0.1:25', 'auth': 'optional'}]}");
	expect_err("listeners[1].auth: needs auth.users_file",
		   "{%s, 'auth': {}, 'listeners': [{'name': 'x', 'address': '127.0.0.1:25'},"
		   " {'name': 'y', 'address': '127.0.0.1:587', 'auth': 'required'}]}",
		   tls_one());
	expect_err("listeners[0].auth: needs auth.users_file",
		   "{'listeners': [{'name': 'x', 'address': '127.0.0.1:25', 'auth': 'required',"
		   " 'auth_plaintext': true}]}");
	/* AUTH that could never be offered: no TLS on the listener and no
	 * auth_plaintext (required would refuse every MAIL) */
	static const char *const never[] = {"required", "optional"};
	for (size_t i = 0; i < COUNT(never); i++) {
		expect_err("listeners[0].auth: needs TLS on the listener (tls \"starttls\" or "
			   "\"implicit\") or auth_plaintext: AUTH is never offered in clear",
			   "{'listeners': [{'name': 'x', 'address': '192.0.2.1:587', 'tls': 'none',"
			   " 'auth': '%s'}], %s, 'auth': {'users_file': '%s'}}",
			   never[i], tls_one(), g_users);
		expect_err(
		    "listeners[0].auth: needs TLS on the listener (tls \"starttls\" or "
		    "\"implicit\") or auth_plaintext: AUTH is never offered in clear",
		    "{'listeners': [{'name': 'x', 'address': '127.0.0.1:587', 'auth': '%s'}],"
		    " 'auth': {'users_file': '%s'}}",
		    never[i], g_users);
	}
	/* implicit TLS with a greeting pause is allowed */
	struct rmx_config *cfg = load_ok("{'listeners': [{'name': 'x', 'address': '127.0.0.1:465',"
					 " 'tls': 'implicit', 'greet_pause_ms': 500}], %s}",
					 tls_one());
	assert_int_equal(cfg->listeners[0].tls, CONFIG_TLS_IMPLICIT);
	assert_int_equal(cfg->listeners[0].greet_pause_ms, 500);
	config_free(cfg);
}

/* ---- tls errors ---------------------------------------------------------- */

#define NAME_ENTRY	"expected a host name like \"mx.example.net\" or \"*.example.net\""
#define ONE_CERT(names) "{'cert': '@CERT', 'key': '@KEY', 'names': " names "}"

/* The value of "tls", with @CERT and @KEY. */
static const struct err_case tls_errs[] = {
    {"[]", "tls: expected a JSON object"},
    {"'on'", "tls: expected a JSON object"},
    {"{'certificate': []}", "tls.certificate: unknown key"},
    {"{'certificates': {}}", "tls.certificates: expected an array of at most 16 certificates"},
    {"{'certificates': '@CERT'}", "tls.certificates: expected an array of at most 16 certificates"},
    {"{'certificates': ['@CERT']}", "tls.certificates[0]: expected a JSON object"},
    {"{'certificates': [{}]}", "tls.certificates[0].cert: required key missing"},
    {"{'certificates': [{'cert': '@CERT', 'names': ['a.example']}]}",
     "tls.certificates[0].key: required key missing"},
    {"{'certificates': [{'cert': '@CERT', 'key': '@KEY'}]}",
     "tls.certificates[0].names: required key missing"},
    {"{'certificates': [{'key': '@KEY', 'names': ['a.example']}]}",
     "tls.certificates[0].cert: required key missing"},
    {"{'certificates': [" ONE_CERT("['a.example']") ", {'cert': '@CERT', 'key': '@KEY',"
						    " 'names': ['b.example'], 'chain': '@CERT'}]}",
     "tls.certificates[1].chain: unknown key"},
    /* files: readable at load, the error names the key and the file */
    {"{'certificates': [{'cert': '/nonexistent/mx.pem', 'key': '@KEY', 'names': ['a.example']}]}",
     "tls.certificates[0].cert: /nonexistent/mx.pem: No such file or directory"},
    {"{'certificates': [" ONE_CERT(
	 "['a.example']") ", {'cert': '@CERT',"
			  " 'key': '/nonexistent/b.key', 'names': ['b.example']}]}",
     "tls.certificates[1].key: /nonexistent/b.key: No such file or directory"},
    {"{'certificates': [{'cert': '', 'key': '@KEY', 'names': ['a.example']}]}",
     "tls.certificates[0].cert: expected a non-empty string of at most 4095 bytes"},
    {"{'certificates': [{'cert': 5, 'key': '@KEY', 'names': ['a.example']}]}",
     "tls.certificates[0].cert: expected a non-empty string of at most 4095 bytes"},
    {"{'certificates': [{'cert': '@CERT\\u0000x', 'key': '@KEY', 'names': ['a.example']}]}",
     "tls.certificates[0].cert: expected a non-empty string of at most 4095 bytes"},
    {"{'certificates': [{'cert': '@CERT', 'key': ['@KEY'], 'names': ['a.example']}]}",
     "tls.certificates[0].key: expected a non-empty string of at most 4095 bytes"},
    /* names */
    {"{'certificates': [" ONE_CERT("[]") "]}",
     "tls.certificates[0].names: expected an array of 1..32 host names"},
    {"{'certificates': [" ONE_CERT("'a.example'") "]}",
     "tls.certificates[0].names: expected an array of 1..32 host names"},
    {"{'certificates': [" ONE_CERT("['a.example', 5]") "]}",
     "tls.certificates[0].names[1]: " NAME_ENTRY},
    {"{'certificates': [" ONE_CERT("['a.example', '']") "]}",
     "tls.certificates[0].names[1]: " NAME_ENTRY},
    {"{'certificates': [" ONE_CERT("['*']") "]}", "tls.certificates[0].names[0]: " NAME_ENTRY},
    {"{'certificates': [" ONE_CERT("['*.']") "]}", "tls.certificates[0].names[0]: " NAME_ENTRY},
    {"{'certificates': [" ONE_CERT("['*.*.example']") "]}",
     "tls.certificates[0].names[0]: " NAME_ENTRY},
    {"{'certificates': [" ONE_CERT("['a.*.example']") "]}",
     "tls.certificates[0].names[0]: " NAME_ENTRY},
    {"{'certificates': [" ONE_CERT("['*a.example']") "]}",
     "tls.certificates[0].names[0]: " NAME_ENTRY},
    {"{'certificates': [" ONE_CERT("['mx.example.net.']") "]}",
     "tls.certificates[0].names[0]: " NAME_ENTRY},
    {"{'certificates': [" ONE_CERT("['mx..example.net']") "]}",
     "tls.certificates[0].names[0]: " NAME_ENTRY},
    {"{'certificates': [" ONE_CERT("['192.0.2.1']") "]}",
     "tls.certificates[0].names[0]: " NAME_ENTRY},
    {"{'certificates': [" ONE_CERT("['mx example']") "]}",
     "tls.certificates[0].names[0]: " NAME_ENTRY},
    {"{'certificates': [" ONE_CERT("['mx_1.example']") "]}",
     "tls.certificates[0].names[0]: " NAME_ENTRY},
    /* unique over all certificates, after lower-casing */
    {"{'certificates': [" ONE_CERT("['a.example', 'b.example', 'A.example']") "]}",
     "tls.certificates[0].names[2]: expected a unique name, \"a.example\" is already in "
     "tls.certificates[0]"},
    {"{'certificates': [" ONE_CERT("['a.example', '*.b.example']") ", " ONE_CERT(
	 "['c.example', '*.B.example']") "]}",
     "tls.certificates[1].names[1]: expected a unique name, \"*.b.example\" is already in "
     "tls.certificates[0]"},
    /* min_version and ciphers */
    {"{'min_version': '1.1'}", "tls.min_version: expected \"1.2\" or \"1.3\""},
    {"{'min_version': '1.0'}", "tls.min_version: expected \"1.2\" or \"1.3\""},
    {"{'min_version': 'TLSv1.2'}", "tls.min_version: expected \"1.2\" or \"1.3\""},
    {"{'min_version': 1.2}", "tls.min_version: expected \"1.2\" or \"1.3\""},
    {"{'min_version': ''}", "tls.min_version: expected \"1.2\" or \"1.3\""},
    {"{'ciphers': ''}", "tls.ciphers: expected a non-empty string of at most 4096 bytes"},
    {"{'ciphers': ['TLS13-AES128-GCM-SHA256']}",
     "tls.ciphers: expected a non-empty string of at most 4096 bytes"},
    {"{'ciphers': null}", "tls.ciphers: expected a non-empty string of at most 4096 bytes"},
    {"{'min_version': '1.2', 'min_version': '1.3'}", "tls.min_version: duplicate key (line 1)"},
};

static void test_tls_errors(void **state)
{
	(void)state;
	expect_section_errs_subst("tls", tls_errs, COUNT(tls_errs));
}

/* Named bounds: 16 certificates, 32 names, 253-byte names, 4096-byte cipher
 * lists; one more of each is refused. */
static void test_tls_bounds(void **state)
{
	(void)state;
	char *certs = malloc(JSON_MAX / 2);
	assert_non_null(certs);
	size_t used = (size_t)snprintf(certs, JSON_MAX / 2, "[");
	for (int i = 0; i < CONFIG_CERTS_MAX; i++)
		used += (size_t)snprintf(certs + used, JSON_MAX / 2 - used,
					 "%s{'cert': '%s', 'key': '%s', 'names': ['c%d.example']}",
					 i ? "," : "", g_cert, g_key, i);
	snprintf(certs + used, JSON_MAX / 2 - used, "]");
	struct rmx_config *cfg = load_ok("{" LISTENER ", 'tls': {'certificates': %s}}", certs);
	assert_int_equal(cfg->tls.cert_count, CONFIG_CERTS_MAX);
	assert_string_equal(cfg->tls.certs[15].names[0], "c15.example");
	config_free(cfg);
	snprintf(certs + used, JSON_MAX / 2 - used,
		 ",{'cert': '%s', 'key': '%s', 'names': ['x.example']}]", g_cert, g_key);
	expect_err("tls.certificates: expected an array of at most 16 certificates",
		   "{" LISTENER ", 'tls': {'certificates': %s}}", certs);

	char names[4096];
	used = (size_t)snprintf(names, sizeof(names), "[");
	for (int i = 0; i < 32; i++)
		used += (size_t)snprintf(names + used, sizeof(names) - used, "%s'n%d.example'",
					 i ? "," : "", i);
	snprintf(names + used, sizeof(names) - used, "]");
	cfg = load_ok("{" LISTENER ", 'tls': {'certificates': [{'cert': '%s', 'key': '%s',"
		      " 'names': %s}]}}",
		      g_cert, g_key, names);
	assert_int_equal(cfg->tls.certs[0].name_count, 32);
	assert_string_equal(cfg->tls.certs[0].names[31], "n31.example");
	config_free(cfg);
	snprintf(names + used, sizeof(names) - used, ",'n32.example']");
	expect_err("tls.certificates[0].names: expected an array of 1..32 host names",
		   "{" LISTENER ", 'tls': {'certificates': [{'cert': '%s', 'key': '%s',"
		   " 'names': %s}]}}",
		   g_cert, g_key, names);

	/* 253 bytes, counting the "*." of a wildcard */
	char *label = repeat('a', 63);
	char name[300], name250[300];
	snprintf(name, sizeof(name), "%s.%s.%s.%.59s", label, label, label, label);
	snprintf(name250, sizeof(name250), "%s.%s.%s.%.58s", label, label, label, label);
	assert_int_equal(strlen(name), 251);
	assert_int_equal(strlen(name250), 250);
	cfg = load_ok("{" LISTENER ", 'tls': {'certificates': [{'cert': '%s', 'key': '%s',"
		      " 'names': ['*.%s', 'b.%s']}]}}",
		      g_cert, g_key, name, name);
	assert_int_equal(strlen(cfg->tls.certs[0].names[0]), 253);
	config_free(cfg);
	expect_err("tls.certificates[0].names[0]: " NAME_ENTRY,
		   "{" LISTENER ", 'tls': {'certificates': [{'cert': '%s', 'key': '%s',"
		   " 'names': ['*.a.%s']}]}}",
		   g_cert, g_key, name250);
	expect_err("tls.certificates[0].names[1]: " NAME_ENTRY,
		   "{" LISTENER ", 'tls': {'certificates': [{'cert': '%s', 'key': '%s',"
		   " 'names': ['x.example', 'bb.%s']}]}}",
		   g_cert, g_key, name);
	free(label);

	char *ciphers = repeat('A', 4096);
	cfg = load_ok("{" LISTENER ", 'tls': {'ciphers': '%s'}}", ciphers);
	assert_int_equal(strlen(cfg->tls.ciphers), 4096);
	config_free(cfg);
	expect_err("tls.ciphers: expected a non-empty string of at most 4096 bytes",
		   "{" LISTENER ", 'tls': {'ciphers': '%sA'}}", ciphers);
	free(ciphers), free(certs);
}

static void test_auth_errors(void **state)
{
	(void)state;
	expect_err("auth: expected a JSON object", "{" LISTENER ", 'auth': '%s'}", g_users);
	expect_err("auth.users: unknown key", "{" LISTENER ", 'auth': {'users': '%s'}}", g_users);
	expect_err("auth.users_file: /nonexistent/users: No such file or directory",
		   "{" LISTENER ", 'auth': {'users_file': '/nonexistent/users'}}");
	expect_err("auth.users_file: expected a non-empty string of at most 4095 bytes",
		   "{" LISTENER ", 'auth': {'users_file': ''}}");
	expect_err("auth.users_file: expected a non-empty string of at most 4095 bytes",
		   "{" LISTENER ", 'auth': {'users_file': null}}");
	expect_err("auth.users_file: duplicate key (line 1)",
		   "{" LISTENER ", 'auth': {'users_file': '%s', 'users_file': '%s'}}", g_users,
		   g_users);
}

/* Unreadable, not only missing (root reads everything: skipped then). */
static void test_unreadable_file(void **state)
{
	(void)state;
	if (geteuid() == 0) {
		print_message("skipped: running as root, access(R_OK) always succeeds\n");
		return;
	}
	char path[128];
	file_make(path, sizeof(path), "locked.pem", "x");
	assert_int_equal(chmod(path, 0), 0);
	char want[256];
	snprintf(want, sizeof(want), "tls.certificates[0].key: %s: Permission denied", path);
	expect_err(want,
		   "{" LISTENER ", 'tls': {'certificates': [{'cert': '%s', 'key': '%s',"
		   " 'names': ['a.example']}]}}",
		   g_cert, path);
	unlink(path);
}

/* ---- routes -------------------------------------------------------------- */

static void test_route_tls(void **state)
{
	(void)state;
	struct rmx_config *cfg = load_ok(
	    "{" LISTENER ", 'routes': ["
	    " {'domains': ['a.example'], 'to': 'mx'},"
	    " {'domains': ['b.example'], 'to': 'smtp://192.0.2.1:25', 'tls': 'none'},"
	    " {'domains': ['c.example'], 'to': 'lmtp://192.0.2.1:24', 'tls': 'opportunistic'},"
	    " {'domains': ['d.example'], 'to': ['smtp://192.0.2.1:25', 'smtp://192.0.2.2:25'],"
	    "  'tls': 'required'},"
	    " {'domains': ['e.example'], 'tls': 'verify', 'to': 'mx', 'ca_file': '%s'},"
	    " {'domains': ['f.example'], 'ca_file': '%s', 'to': 'smtp://192.0.2.1:25'},"
	    " {'domains': ['g.example'], 'to': 'maildir:/m'},"
	    " {'domains': ['h.example'], 'to': 'mbox:/m', 'tls': 'none'}]}",
	    g_ca, g_ca);
	static const enum config_route_tls want[] = {
	    CONFIG_RTLS_OPPORTUNISTIC, CONFIG_RTLS_NONE,   CONFIG_RTLS_OPPORTUNISTIC,
	    CONFIG_RTLS_REQUIRED,      CONFIG_RTLS_VERIFY, CONFIG_RTLS_OPPORTUNISTIC,
	    CONFIG_RTLS_NONE,	       CONFIG_RTLS_NONE,
	};
	assert_int_equal(cfg->route_count, COUNT(want));
	for (size_t i = 0; i < COUNT(want); i++) {
		assert_int_equal(cfg->routes[i].tls, want[i]);
		if (i == 4 || i == 5)
			assert_string_equal(cfg->routes[i].ca_file, g_ca);
		else
			assert_null(cfg->routes[i].ca_file);
	}
	config_free(cfg);
}

#define RTLS_CHOICES "expected \"none\", \"opportunistic\", \"required\" or \"verify\""
#define LOCAL_TLS    "expected \"none\": a maildir: or mbox: route has no TLS"

/* The value of "routes"; @CA is a readable CA file. */
static const struct err_case route_errs[] = {
    {"[{'domains': ['a.example'], 'to': 'mx'}, {'domains': ['b.example'], 'to': 'mx',"
     " 'tls': {}}]",
     "routes[1].tls: " RTLS_CHOICES},
    {"[{'domains': ['a.example'], 'to': 'mx', 'tls': true}]", "routes[0].tls: " RTLS_CHOICES},
    {"[{'domains': ['a.example'], 'to': 'mx', 'tls': 'Verify'}]", "routes[0].tls: " RTLS_CHOICES},
    {"[{'domains': ['a.example'], 'to': 'mx', 'tls': 'dane'}]", "routes[0].tls: " RTLS_CHOICES},
    /* a local store has no TLS: only "none", whatever the key order */
    {"[{'domains': ['a.example'], 'to': 'maildir:/m', 'tls': 'opportunistic'}]",
     "routes[0].tls: " LOCAL_TLS},
    {"[{'tls': 'required', 'domains': ['a.example'], 'to': 'maildir:/m'}]",
     "routes[0].tls: " LOCAL_TLS},
    {"[{'domains': ['a.example'], 'to': 'mx'}, {'domains': ['*'], 'to': ['mbox:/x'],"
     " 'tls': 'verify'}]",
     "routes[1].tls: " LOCAL_TLS},
    /* ca_file: readable, and only where a handshake would use it */
    {"[{'domains': ['a.example'], 'to': 'mx', 'ca_file': '/nonexistent/ca.pem'}]",
     "routes[0].ca_file: /nonexistent/ca.pem: No such file or directory"},
    {"[{'domains': ['a.example'], 'to': 'mx', 'ca_file': ''}]",
     "routes[0].ca_file: expected a non-empty string of at most 4095 bytes"},
    {"[{'domains': ['a.example'], 'to': 'mx', 'ca_file': ['@CERT']}]",
     "routes[0].ca_file: expected a non-empty string of at most 4095 bytes"},
    {"[{'domains': ['a.example'], 'to': 'maildir:/m', 'ca_file': '@CERT'}]",
     "routes[0].ca_file: not used by a maildir: or mbox: route"},
    {"[{'domains': ['a.example'], 'to': 'mbox:/m', 'tls': 'none', 'ca_file': '@CERT'}]",
     "routes[0].ca_file: not used by a maildir: or mbox: route"},
    {"[{'domains': ['a.example'], 'to': 'smtp://192.0.2.1:25', 'tls': 'none',"
     " 'ca_file': '@CERT'}]",
     "routes[0].ca_file: not used with tls \"none\""},
    {"[{'domains': ['a.example'], 'to': 'mx', 'tls': 'verify', 'tls': 'none'}]",
     "routes[0].tls: duplicate key (line 1)"},
    /* failures after a CA path was allocated (valgrind: nothing leaks) */
    {"[{'domains': ['a.example'], 'to': 'mx', 'ca_file': '@CERT'},"
     " {'domains': ['b.example'], 'ca_file': '@CERT', 'to': 'maildir:/m'}]",
     "routes[1].ca_file: not used by a maildir: or mbox: route"},
    {"[{'domains': ['a.example'], 'ca_file': '@CERT', 'to': 'nowhere'}]",
     "routes[0].to: expected \"smtp://IP:port\", \"lmtp://IP:port\", \"mx\", "
     "\"maildir:/path\" or \"mbox:/path\""},
};

static void test_route_errors(void **state)
{
	(void)state;
	expect_section_errs_subst("routes", route_errs, COUNT(route_errs));
}

/* Failures half-way through a certificate list (valgrind: nothing leaks). */
static void test_partial_failures(void **state)
{
	(void)state;
	char *tls =
	    subst("{'ciphers': 'X', 'min_version': '1.3', 'certificates': ["
		  "{'cert': '@CERT', 'key': '@KEY', 'names': ['a.example', 'b.example']},"
		  "{'cert': '@CERT', 'key': '@KEY', 'names': ['c.example', 'd.example', '-']}]}");
	expect_err("tls.certificates[1].names[2]: " NAME_ENTRY,
		   "{" LISTENER ", 'tls': %s, 'auth': {'users_file': '%s'}}", tls, g_users);
	free(tls);
	expect_err("listeners[0].auth: needs auth.users_file",
		   "{'listeners': [{'name': 'x', 'address': '127.0.0.1:25', 'auth': 'required'}],"
		   " 'tls': {'ciphers': 'X', 'certificates': [{'cert': '%s', 'key': '%s',"
		   " 'names': ['a.example']}]}}",
		   g_cert, g_key);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults_without_tls),
	    cmocka_unit_test(test_defaults_with_certificate),
	    cmocka_unit_test(test_spec_example),
	    cmocka_unit_test(test_listener_choices),
	    cmocka_unit_test(test_tls_keys),
	    cmocka_unit_test(test_relative_paths),
	    cmocka_unit_test(test_auth_users_file),
	    cmocka_unit_test(test_auth_plaintext_loopback),
	    cmocka_unit_test(test_listener_errors),
	    cmocka_unit_test(test_cross_checks),
	    cmocka_unit_test(test_tls_errors),
	    cmocka_unit_test(test_tls_bounds),
	    cmocka_unit_test(test_auth_errors),
	    cmocka_unit_test(test_unreadable_file),
	    cmocka_unit_test(test_route_tls),
	    cmocka_unit_test(test_route_errors),
	    cmocka_unit_test(test_partial_failures),
	};
	return cmocka_run_group_tests(tests, files_setup, files_teardown);
}
