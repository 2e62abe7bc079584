/*
 * deliver/oc_state — the states of an outbound connection: their names
 * and which transitions are legal.  Pure (no ring, no connection), so the
 * table is unit tested on its own; outbound.c's oc_enter_state() asserts
 * every transition against it.
 *
 * The machine (outbound.c):
 *   free -> connecting -> banner -> ehlo [-> helo] [-> starttls ->
 *   tls_handshake -> ehlo] -> idle; a transaction is idle (or the end of
 *   the last one: dot, rset) -> mail -> rcpt -> data -> body -> dot, and a
 *   refusal on the way goes to rset.  quit [-> tls_close] ends a session
 *   that is in step; closing ends any other, and frees the slot.
 */
#include <assert.h>

#include "deliver/internal.h"

#define B(s) (1u << (s))

/* Every state but free may break off: an I/O error, a timeout, a reply
 * that breaks the accounting (oc_fail closes the connection). */
#define TO_CLOSING B(OC_CLOSING)

/* A transaction ends (oc_tx_end) with the next one on the same
 * connection, the connection idle, or QUIT. */
#define TX_END (B(OC_MAIL) | B(OC_IDLE) | B(OC_QUIT) | TO_CLOSING)

static const uint32_t legal[OC_STATE_COUNT] = {
    /* A slot whose socket or buffer could not be had is freed at once. */
    [OC_FREE] = B(OC_CONNECTING) | B(OC_FREE),
    [OC_CONNECTING] = B(OC_BANNER) | TO_CLOSING,
    /* A refused greeting is answered with QUIT (RFC 5321 3.1). */
    [OC_BANNER] = B(OC_EHLO) | B(OC_QUIT) | TO_CLOSING,
    /* EHLO refused with 5xx: HELO (RFC 5321 4.1.1.1); STARTTLS only
     * after EHLO offered it (RFC 3207 4). */
    [OC_EHLO] = B(OC_HELO) | B(OC_STARTTLS) | B(OC_IDLE) | TO_CLOSING,
    [OC_HELO] = B(OC_IDLE) | TO_CLOSING,
    /* A refused STARTTLS under an opportunistic route: plaintext. */
    [OC_STARTTLS] = B(OC_TLS_HS) | B(OC_IDLE) | TO_CLOSING,
    /* RFC 3207 4.2: EHLO again inside TLS. */
    [OC_TLS_HS] = B(OC_EHLO) | TO_CLOSING,
    /* oc_ready passes through idle on its way to the first transaction;
     * a message the hop cannot take leaves it idle again (tx_check). */
    [OC_IDLE] = B(OC_IDLE) | B(OC_MAIL) | B(OC_QUIT) | TO_CLOSING,
    /* A refused MAIL with nothing else sent: RSET at once. */
    [OC_MAIL] = B(OC_RCPT) | B(OC_RSET) | TO_CLOSING,
    /* No recipient taken: RSET instead of DATA. */
    [OC_RCPT] = B(OC_DATA) | B(OC_RSET) | TO_CLOSING,
    [OC_DATA] = B(OC_BODY) | B(OC_RSET) | TO_CLOSING,
    [OC_BODY] = B(OC_DOT) | TO_CLOSING,
    /* A refused message: RSET before the connection carries another. */
    [OC_DOT] = B(OC_RSET) | TX_END,
    [OC_RSET] = TX_END,
    /* RFC 8446 6.1: our close_notify goes out before the close. */
    [OC_QUIT] = B(OC_TLS_CLOSE) | TO_CLOSING,
    [OC_TLS_CLOSE] = TO_CLOSING,
    /* The slot is freed once nothing is in flight (oc_reap). */
    [OC_CLOSING] = B(OC_FREE),
};

static_assert(OC_STATE_COUNT <= 32, "a state's legal successors are one uint32_t");

bool oc_state_legal(enum oc_state from, enum oc_state to)
{
	return (unsigned)from < OC_STATE_COUNT && (unsigned)to < OC_STATE_COUNT &&
	       (legal[from] & B(to)) != 0;
}

const char *oc_state_name(enum oc_state st)
{
	static const char *const names[OC_STATE_COUNT] = {
	    [OC_FREE] = "free",
	    [OC_CONNECTING] = "connecting",
	    [OC_BANNER] = "banner",
	    [OC_EHLO] = "ehlo",
	    [OC_HELO] = "helo",
	    [OC_STARTTLS] = "starttls",
	    [OC_TLS_HS] = "tls_handshake",
	    [OC_IDLE] = "idle",
	    [OC_MAIL] = "mail",
	    [OC_RCPT] = "rcpt",
	    [OC_DATA] = "data",
	    [OC_BODY] = "body",
	    [OC_DOT] = "dot",
	    [OC_RSET] = "rset",
	    [OC_QUIT] = "quit",
	    [OC_TLS_CLOSE] = "tls_close",
	    [OC_CLOSING] = "closing",
	};

	assert((unsigned)st < OC_STATE_COUNT && names[st] != NULL);
	return names[st];
}
