/* Pins the outbound connection's state machine: every state has a name, the
 * path of a delivery is legal, and the shortcuts that would skip a step of
 * the protocol are not. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "deliver/internal.h"

static void test_names(void **unused)
{
	(void)unused;
	for (int s = 0; s < OC_STATE_COUNT; s++) {
		const char *n = oc_state_name((enum oc_state)s);

		assert_non_null(n);
		assert_true(n[0] != '\0');
		/* A bare log value: lower case, digits and '_' only. */
		assert_int_equal(strspn(n, "abcdefghijklmnopqrstuvwxyz0123456789_"), strlen(n));
		for (int t = 0; t < s; t++)
			assert_string_not_equal(n, oc_state_name((enum oc_state)t));
	}
	assert_string_equal(oc_state_name(OC_EHLO), "ehlo");
	assert_string_equal(oc_state_name(OC_TLS_HS), "tls_handshake");
}

/* A whole session, STARTTLS and two transactions, in order. */
static void test_delivery_path(void **unused)
{
	(void)unused;
	static const enum oc_state path[] = {
	    OC_FREE, OC_CONNECTING, OC_BANNER, OC_EHLO, OC_STARTTLS,  OC_TLS_HS,  OC_EHLO,
	    OC_IDLE, OC_MAIL,	    OC_RCPT,   OC_DATA, OC_BODY,      OC_DOT,	  OC_MAIL,
	    OC_RCPT, OC_RSET,	    OC_IDLE,   OC_QUIT, OC_TLS_CLOSE, OC_CLOSING, OC_FREE,
	};

	for (size_t i = 1; i < sizeof(path) / sizeof(path[0]); i++)
		assert_true(oc_state_legal(path[i - 1], path[i]));
	/* The refusals: HELO after EHLO, RSET after a refused MAIL, DATA or dot,
	 * plaintext after a refused STARTTLS. */
	assert_true(oc_state_legal(OC_EHLO, OC_HELO));
	assert_true(oc_state_legal(OC_MAIL, OC_RSET));
	assert_true(oc_state_legal(OC_DATA, OC_RSET));
	assert_true(oc_state_legal(OC_DOT, OC_RSET));
	assert_true(oc_state_legal(OC_STARTTLS, OC_IDLE));
	assert_true(oc_state_legal(OC_BANNER, OC_QUIT));
}

/* Any live state may break off; a free or closing one has nothing to close. */
static void test_closing(void **unused)
{
	(void)unused;
	for (int s = 0; s < OC_STATE_COUNT; s++) {
		bool live = s != OC_FREE && s != OC_CLOSING;

		assert_int_equal(oc_state_legal((enum oc_state)s, OC_CLOSING), live);
	}
	/* Only a closed connection frees its slot (or one that never connected). */
	for (int s = 0; s < OC_STATE_COUNT; s++)
		assert_int_equal(oc_state_legal((enum oc_state)s, OC_FREE),
				 s == OC_CLOSING || s == OC_FREE);
}

static void test_illegal(void **unused)
{
	(void)unused;
	/* The body only after 354 to DATA, the dot only after the body. */
	assert_false(oc_state_legal(OC_RCPT, OC_BODY));
	assert_false(oc_state_legal(OC_MAIL, OC_DATA));
	assert_false(oc_state_legal(OC_DATA, OC_DOT));
	/* No transaction before the greeting, EHLO and the handshake are done
	 * (RFC 3207 4.2: nothing sent in plaintext survives into TLS). */
	assert_false(oc_state_legal(OC_BANNER, OC_MAIL));
	assert_false(oc_state_legal(OC_TLS_HS, OC_IDLE));
	assert_false(oc_state_legal(OC_TLS_HS, OC_MAIL));
	assert_false(oc_state_legal(OC_HELO, OC_STARTTLS));
	/* A closing connection never comes back; a quitting one only closes. */
	assert_false(oc_state_legal(OC_CLOSING, OC_IDLE));
	assert_false(oc_state_legal(OC_QUIT, OC_IDLE));
	assert_false(oc_state_legal(OC_TLS_CLOSE, OC_QUIT));
	assert_false(oc_state_legal(OC_FREE, OC_BANNER));
	/* Out of range never passes. */
	assert_false(oc_state_legal((enum oc_state)OC_STATE_COUNT, OC_FREE));
	assert_false(oc_state_legal(OC_FREE, (enum oc_state)OC_STATE_COUNT));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_names),
	    cmocka_unit_test(test_delivery_path),
	    cmocka_unit_test(test_closing),
	    cmocka_unit_test(test_illegal),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
