"""Interoperability of DSNs and SMTPUTF8 with real next hops (issue 9, items
3, 5 and 8), end to end through the real binary:

- SMTPUTF8 (RFC 6531 3.4): a message sent with SMTPUTF8 needs it at the next
  hop only when an envelope address of that transaction or its header
  section is not ASCII; an all-ASCII one goes on without the parameter to a
  hop that lacks SMTPUTF8 (Dovecot 2.3 LMTP), one that really needs it is
  still bounced with 5.6.7 (no downgrade is built).
- NOTIFY=SUCCESS (RFC 3461 4.1, 5.2.2.2): a hop that does not offer DSN
  cannot report success, so ringmx does: "relayed" for an SMTP hop,
  "delivered" for LMTP and Maildir/mbox (the final delivery).  A DSN hop
  gets NOTIFY passed on and no report comes from ringmx.
- DSN details (RFC 3464, RFC 6533): UTF-8 reply text kept in the UTF-8
  report and '?' in the 7-bit one, ORCPT and ENVID shown xtext-decoded,
  Remote-MTA for the hop that answered.

Every server routes "sender.example" to a second next hop, so the DSNs can
be read there (a DSN is the transaction whose MAIL FROM is <>)."""

import itertools
import os

import pytest

from conftest import (DELIVERY_TIMEOUT_S, check_dsn, delivery_overrides, dsn_transactions,
                      make_message, route, strip_received, submit, wait_dsn, wait_log,
                      wait_queue_empty)
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)

SENDER = "sender@sender.example"
RCPT = "rcpt@accepted.example"
_seq = itertools.count(1)


def new_mid(tag):
    return "%s-%d-%d@client.example" % (tag, os.getpid(), next(_seq))


def gateway(ringmx, nexthop, hop=None, bounce_hop=None, routes=(), relay=(), delivery=None,
            **extra):
    """A server whose accepted.example goes to a fresh next hop (NextHop kwargs
    in hop) and sender.example to a bounce hop (kwargs in bounce_hop).  routes
    are added in front.  Returns (server, hop, bounce hop)."""
    nh = nexthop(**(hop or {}))
    bounce = nexthop(**(bounce_hop or {}))
    rts = list(routes) + [route("accepted.example", nh), route("sender.example", bounce)]
    srv = ringmx(delivery_overrides(rts, relay, delivery, **extra))
    return srv, nh, bounce


UTF8_BODY_HEADERS = (b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     b"Content-Transfer-Encoding: 8bit\r\n")
UTF8_BODY = "Gr\u00fc\u00dfe aus M\u00fcnchen \u2013 na\u00efve caf\u00e9\r\n".encode("utf-8")


# --------------------------------------------------------------------------
# item 5: SMTPUTF8 only where the message really needs it


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_smtputf8_ascii_message_goes_to_hop_without_smtputf8(ringmx, nexthop, lmtp):
    """The SMTPUTF8 flag alone (ASCII addresses and header fields, a UTF-8
    body) is no reason to bounce: sent without the parameter, body intact."""
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"smtputf8": False, "lmtp": lmtp})
    mid = new_mid("u8ascii")
    body = make_message(mid, "ascii header fields", UTF8_BODY, UTF8_BODY_HEADERS)
    qid = submit(srv.port, body, SENDER, [RCPT], mail_params="SMTPUTF8 BODY=8BITMIME")
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert "SMTPUTF8" not in t.mail_params, \
        "SMTPUTF8 sent to a hop that does not offer it: %r" % t.mail_params
    assert (t.mail_params.get("BODY") or "").upper() == "8BITMIME", t.mail_params
    assert [r.lower() for r in t.delivered] == [RCPT]
    assert strip_received(t.data)[1] == body, "the message was altered on the way"
    wait_queue_empty(srv)
    wait_log(srv, "delivered", qid)
    assert dsn_transactions(bounce) == [], "an all-ASCII SMTPUTF8 message bounced"


def test_smtputf8_passed_on_where_offered(ringmx, nexthop):
    srv, nh, _ = gateway(ringmx, nexthop, hop={"smtputf8": True})
    mid = new_mid("u8pass")
    submit(srv.port, make_message(mid, "ascii", UTF8_BODY, UTF8_BODY_HEADERS), SENDER, [RCPT],
           mail_params="SMTPUTF8 BODY=8BITMIME")
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert "SMTPUTF8" in t.mail_params, t.mail_params
    wait_queue_empty(srv)


# What makes a message really need SMTPUTF8, one thing at a time: each is
# bounced 5.6.7 at a hop without SMTPUTF8 and never offered to it.
NEEDS_UTF8 = {
    "header-field": dict(
        sender=SENDER, rcpt=RCPT,
        body=lambda mid: make_message(mid, "Gr\u00fc\u00dfe", b"ascii body\r\n",
                                      UTF8_BODY_HEADERS)),
    "folded-header-field": dict(
        sender=SENDER, rcpt=RCPT,
        body=lambda mid: make_message(mid, "x", b"ascii body\r\n",
                                      "X-Note: first line\r\n\tM\u00fcller\r\n")),
    "sender": dict(
        sender="j\u00f6rg@sender.example", rcpt=RCPT,
        body=lambda mid: make_message(mid, "ascii", b"body\r\n", sender="jorg@sender.example")),
    "recipient": dict(
        sender=SENDER, rcpt="\u7528\u6237@accepted.example",
        body=lambda mid: make_message(mid, "ascii", b"body\r\n", to="user@accepted.example")),
}


@pytest.mark.parametrize("case", sorted(NEEDS_UTF8))
def test_smtputf8_really_needed_still_bounces(ringmx, nexthop, case):
    c = NEEDS_UTF8[case]
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"smtputf8": False})
    mid = new_mid("u8need")
    qid = submit(srv.port, c["body"](mid), c["sender"], [c["rcpt"]],
                 mail_params="SMTPUTF8 BODY=8BITMIME")
    [txn] = wait_dsn(bounce, c["sender"])
    d = check_dsn(txn, c["sender"])
    [r] = d.recipients
    assert r["action"].lower() == "failed" and r["status"] == "5.6.7", r
    wait_queue_empty(srv)
    wait_log(srv, "bounced", qid)
    assert nh.mail_commands == 0, "a message that needs SMTPUTF8 was offered to a hop without it"


def test_smtputf8_decided_per_transaction(ringmx, nexthop):
    """One message, two next hops: the ASCII recipient goes to the hop
    without SMTPUTF8 plainly, the UTF-8 one to the hop that has it."""
    u8hop = nexthop(smtputf8=True)
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"smtputf8": False},
                              routes=[route("utf8.example", u8hop)],
                              relay=["utf8.example"])
    u8rcpt = "\u7528\u6237@utf8.example"
    mid = new_mid("u8split")
    body = make_message(mid, "two hops", UTF8_BODY, UTF8_BODY_HEADERS,
                        to="undisclosed-recipients:;")
    submit(srv.port, body, SENDER, [RCPT, u8rcpt], mail_params="SMTPUTF8 BODY=8BITMIME")
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    [u] = u8hop.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert "SMTPUTF8" not in t.mail_params and [r.lower() for r in t.delivered] == [RCPT]
    assert "SMTPUTF8" in u.mail_params and u.delivered == [u8rcpt.lower()], u
    wait_queue_empty(srv)
    assert dsn_transactions(bounce) == []


def test_dsn_of_ascii_smtputf8_message_reaches_hop_without_smtputf8(ringmx, nexthop):
    """The DSN about an SMTPUTF8 message is in the RFC 6533 form; with an
    ASCII sender its own envelope and header fields are ASCII, so the
    sender's hop needs no SMTPUTF8 to take it (it used to be refused 5.6.7
    and dropped as a double bounce)."""
    srv, nh, bounce = gateway(ringmx, nexthop,
                              hop={"rules": [Rule("rcpt", "550 5.1.1 No such user")]},
                              bounce_hop={"smtputf8": False})
    mid = new_mid("u8dsn")
    qid = submit(srv.port, make_message(mid, "ascii", UTF8_BODY, UTF8_BODY_HEADERS), SENDER,
                 [RCPT], mail_params="SMTPUTF8 BODY=8BITMIME")
    [txn] = wait_dsn(bounce, SENDER)
    assert "SMTPUTF8" not in txn.mail_params, txn.mail_params
    d = check_dsn(txn, SENDER)
    assert d.part_types[1] == "message/global-delivery-status", d.part_types
    assert d.recipient(RCPT)["status"] == "5.1.1"
    wait_queue_empty(srv)
    wait_log(srv, "bounced", qid)
