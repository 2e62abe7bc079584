"""Outbound reply accounting (invariant 9): a next hop
or a man in the middle that sends bytes the client did not ask for can never
make a message count as delivered.  Each reply is matched against the
commands in flight; a reply with none in flight, more replies than commands,
a reply that cannot answer its command (a 250 to DATA, a 354 to RCPT) or any
byte after the 220 to STARTTLS closes the connection and defers the message
with the reason, and the message goes out intact once the hop behaves.

The programmable next hop (nexthop.py) plays the attacker: raw rules put
bytes on the wire exactly as given, multi-line rule replies add replies
nobody asked for, midbody sends a reply while the body is going out."""

import re

import pytest

from conftest import (DELIVERY_TIMEOUT_S, delivery_overrides, log_events, make_message, route,
                      strip_received, submit, wait_log, wait_queue_empty, wait_state)
from conftest import new_mid
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)
from tlsutil import certs  # noqa: F401  (certs is a fixture)

SENDER = "sender@sender.example"
RCPT = "rcpt@accepted.example"
# A deferred message stays deferred (next try in an hour) until `queue flush`.
SLOW_RETRY = {"retry_s": [3600], "max_age_s": 86400}
VIOLATION = "protocol violation"


def start(ringmx, nexthop, rules, hop=None, tls=None, certs=None, limits=None):
    """A gateway whose accepted.example goes to one next hop with these rules;
    tls: None or a route policy ("opportunistic", "verify")."""
    hop = dict(hop or {})
    if tls is not None:
        # the certificate names 127.0.0.1: an IP route is checked against the IP
        hop["tls"] = certs.leaf("127.0.0.1")
    nh = nexthop(rules=rules, **hop)
    r = route("accepted.example", nh)
    if tls is not None:
        r["tls"] = tls
        if tls == "verify":
            r["ca_file"] = certs.ca
    extra = {"limits": limits} if limits else {}
    srv = ringmx(delivery_overrides([r], delivery=SLOW_RETRY, **extra))
    return srv, nh


def assert_deferred_not_delivered(srv, nh, qid, mid, reason, hop_got_it=False):
    """The message is deferred with reason (a regex) in its queue error, was
    never logged delivered and, unless the hop got it, was not stored there."""
    f = wait_state(srv, qid, "deferred")
    assert re.search(reason, f.get("error", "")), \
        "deferred for the wrong reason (want /%s/): %r\n%s" % (reason, f, srv.log_tail(30))
    # log lines of one shard come out in order: once its "deferred" line is
    # there, a "delivered" line of the same attempt would be too
    wait_log(srv, "deferred", qid)
    assert not log_events(srv, "delivered", qid), \
        "logged delivered although the hop broke the protocol:\n%s" % srv.log_tail(30)
    errs = log_events(srv, "outbound_error")
    assert any(re.search(reason, e) for e in errs), \
        "no outbound_error line naming /%s/: %r" % (reason, errs)
    if not hop_got_it:
        assert nh.by_message_id(mid) == [], "the hop stored it: %r" % nh.by_message_id(mid)


def deliver_later(srv, nh, qid, mid, body, rcpts=(RCPT,), tls=False):
    """The hop behaves again: `queue flush` delivers the message, bytes intact."""
    nh.set_rules([])
    before = len(nh.by_message_id(mid))
    srv.ctl("queue", "flush", qid)
    nh.wait_until(lambda h: len(h.by_message_id(mid)) > before, DELIVERY_TIMEOUT_S,
                  "the deferred message delivered after the hop behaves")
    t = nh.by_message_id(mid)[-1]
    assert strip_received(t.data)[1] == body, "message changed on the way"
    assert sorted(r.lower() for r in t.delivered) == sorted(rcpts)
    if tls:
        assert t.tls_version in ("TLSv1.2", "TLSv1.3"), t
    wait_log(srv, "delivered", qid)
    wait_queue_empty(srv)


# --------------------------------------------------------------------------
# item 8: bytes after the 220 to STARTTLS (the client-side CVE-2011-0411)

INJECTED = {
    "partial-reply": b"250 ",                 # the parser would keep it across the handshake
    "continuation": b"250-",
    "whole-reply": b"250 2.0.0 Ok\r\n",        # a complete extra reply in the same read
    "one-octet": b"2",
}


@pytest.mark.parametrize("policy", ["opportunistic", "verify"])
@pytest.mark.parametrize("inject", sorted(INJECTED), ids=sorted(INJECTED))
def test_starttls_response_injection(ringmx, nexthop, certs, policy, inject):
    rules = [Rule("starttls", b"220 2.0.0 Ready to start TLS\r\n" + INJECTED[inject],
                  raw=True)]
    srv, nh = start(ringmx, nexthop, rules, tls=policy, certs=certs)
    mid = new_mid("stls-" + inject)
    body = make_message(mid, "starttls injection")
    qid = submit(srv.port, body, SENDER, [RCPT])
    assert_deferred_not_delivered(srv, nh, qid, mid, VIOLATION + r".*STARTTLS")
    assert not any(t.tls_version and t.mail_from is not None for t in nh.transactions()), \
        "a transaction went on after the injected bytes: %r" % nh.transactions()
    deliver_later(srv, nh, qid, mid, body, tls=True)


# --------------------------------------------------------------------------
# item 9: replies counted against the commands in flight

# (id, next hop kwargs, rules, reason regex).  Each would shift every later
# reply onto the wrong command without the accounting.
SHIFTS = [
    # an extra reply in the greeting's read: taken for the EHLO reply, the real
    # EHLO reply for MAIL's, ... and RCPT's 250 for DATA's
    ("banner-extra", {"pipelining": False},
     [Rule("connect", "220 nexthop.test ESMTP\n250 2.0.0 extra")], "reply.*nothing|more replies"),
    # one RCPT answered twice in a PIPELINING group: RCPT's 250 lands on DATA
    ("pipelined-extra-rcpt", {"pipelining": True},
     [Rule("rcpt", "250 2.1.5 Ok\n250 2.1.5 Ok")], "more replies"),
    # the 354 sent with the RCPT reply, before DATA went out (no PIPELINING)
    ("reply-before-command", {"pipelining": False},
     [Rule("rcpt", "250 2.1.5 Ok\n354 go ahead")], "more replies|reply.*nothing"),
    # a 250 to DATA, where only 354 lets the body go
    ("data-250-pipelined", {"pipelining": True},
     [Rule("data", "250 2.0.0 Ok")], "250 to DATA"),
    ("data-250", {"pipelining": False}, [Rule("data", "250 2.0.0 Ok")], "250 to DATA"),
]


@pytest.mark.parametrize("hop,rules,reason", [s[1:] for s in SHIFTS], ids=[s[0] for s in SHIFTS])
def test_reply_shift_defers(ringmx, nexthop, hop, rules, reason):
    srv, nh = start(ringmx, nexthop, rules, hop=hop)
    mid = new_mid("shift")
    body = make_message(mid, "reply shift")
    qid = submit(srv.port, body, SENDER, [RCPT])
    assert_deferred_not_delivered(srv, nh, qid, mid, VIOLATION + ".*(" + reason + ")")
    deliver_later(srv, nh, qid, mid, body)


def test_pipelined_reply_left_out(ringmx, nexthop):
    """A RCPT reply left out of a PIPELINING group: DATA's 354 would answer
    the second RCPT; a 3xx can never answer RCPT, so the group is broken."""
    second = "second@accepted.example"
    rules = [Rule("rcpt", b"", raw=True, rcpt=second)]
    srv, nh = start(ringmx, nexthop, rules, hop={"pipelining": True})
    mid = new_mid("missing")
    body = make_message(mid, "a reply left out")
    qid = submit(srv.port, body, SENDER, [RCPT, second])
    assert_deferred_not_delivered(srv, nh, qid, mid, VIOLATION + ".*354 to RCPT")
    deliver_later(srv, nh, qid, mid, body, rcpts=(RCPT, second))


def test_extra_reply_after_final_dot(ringmx, nexthop):
    """A second reply behind the one to the final dot: the hop's replies do not
    add up, so the 250 cannot be trusted to be the dot's; the message is sent
    again later (a duplicate at worst, never a loss)."""
    rules = [Rule("message", "250 2.0.0 Ok: queued\n250 2.0.0 Ok", times=1)]
    srv, nh = start(ringmx, nexthop, rules)
    mid = new_mid("after-dot")
    body = make_message(mid, "extra reply after the dot")
    qid = submit(srv.port, body, SENDER, [RCPT])
    assert_deferred_not_delivered(srv, nh, qid, mid, VIOLATION + ".*more replies",
                                  hop_got_it=True)
    deliver_later(srv, nh, qid, mid, body)


def test_lmtp_more_replies_than_recipients(ringmx, nexthop):
    """LMTP answers once per accepted recipient (RFC 2033 4.2); one more reply
    means the per-recipient replies cannot be matched to recipients."""
    lmtp_rcpts = ["a@lmtp.example", "b@lmtp.example"]
    nh = nexthop(lmtp=True, rules=[
        Rule("message", "250 2.1.5 Ok\n250 2.1.5 Ok", rcpt="b@lmtp.example", times=1)])
    srv = ringmx(delivery_overrides([route("lmtp.example", nh)], relay_domains=["lmtp.example"],
                                    delivery=SLOW_RETRY))
    mid = new_mid("lmtp-extra")
    body = make_message(mid, "lmtp extra reply", to=lmtp_rcpts[0])
    qid = submit(srv.port, body, SENDER, lmtp_rcpts)
    assert_deferred_not_delivered(srv, nh, qid, mid, VIOLATION + ".*more replies",
                                  hop_got_it=True)
    deliver_later(srv, nh, qid, mid, body, rcpts=lmtp_rcpts)


def test_reply_while_body_goes_out(ringmx, nexthop):
    """A reply while the body is still going out answers nothing (DATA had its
    354, the final dot is not sent): the connection closes, the message is
    deferred and goes out whole on the next try."""
    rules = [Rule("data", midbody=b"250 2.0.0 Ok: queued\r\n", times=1)]
    # several MiB: more than the kernel's socket buffers can take while the
    # hop does not read, so the client is mid-body when the 250 comes
    srv, nh = start(ringmx, nexthop, rules, hop={"size": 64 << 20},
                    limits={"message_size": 32 << 20})
    mid = new_mid("midbody")
    line = b"x" * 998 + b"\r\n"
    body = make_message(mid, "reply in the middle of the body", line * (8 * 1024 * 1024 // 1000))
    qid = submit(srv.port, body, SENDER, [RCPT], timeout=60.0)
    assert_deferred_not_delivered(srv, nh, qid, mid, VIOLATION + ".*nothing")
    deliver_later(srv, nh, qid, mid, body)
