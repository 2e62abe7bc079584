"""Outbound interoperability (issue 9): what real next hops do that a client
must expect.

- RFC 1870 SIZE counts the message without dot-stuffing and without the
  terminator: SIZE=, the hop's limit check and every logged size use that,
  so a message exactly at a hop's limit goes.

The programmable next hop (nexthop.py) plays each hop.  Schedules are slow
(retry_s [3600]): a message deferred here stays deferred, so "delivered at
once" is seen as an empty queue, never as a time."""

import itertools
import os

import pytest

from conftest import (DELIVERY_TIMEOUT_S, SMTPClient, delivery_overrides, dot_stuff,
                      log_events, make_message, queued_id, route, strip_received, submit,
                      wait_dsn, wait_log, wait_queue_empty, wait_state)
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)

SENDER = "sender@sender.example"
RCPT = "rcpt@accepted.example"
SLOW_RETRY = {"retry_s": [3600], "max_age_s": 86400}
_seq = itertools.count(1)


def new_mid(tag):
    return "%s-%d-%d@client.example" % (tag, os.getpid(), next(_seq))


def gateway(ringmx, nexthop, hop=None, delivery=None, limits=None, shards=None):
    """A server whose accepted.example goes to a fresh next hop (NextHop kwargs
    in hop) and sender.example to a bounce hop; slow retries.  Returns
    (server, hop, bounce hop)."""
    nh = nexthop(**(hop or {}))
    bounce = nexthop()
    extra = {}
    if limits:
        extra["limits"] = limits
    if shards:
        extra["shards"] = shards
    srv = ringmx(delivery_overrides([route("accepted.example", nh),
                                     route("sender.example", bounce)],
                                    delivery=dict(SLOW_RETRY, **(delivery or {})), **extra))
    return srv, nh, bounce


def txns_of(nh, mid):
    """Every transaction (accepted or not) that carried Message-ID mid."""
    return [t for t in nh.transactions() if (t.message_id or "").strip("<>") == mid]


# --------------------------------------------------------------------------
# item 7: SIZE is the message without stuffing and without the terminator

# Lines that are dot-stuffed on the wire: each adds a dot DATA carries and
# the message does not have.
DOTTED = b"".join(b".line %d\r\n" % i for i in range(200)) + b"..\r\n.\r\nlast\r\n"


def submit_bdat(port, body):
    c = SMTPClient(port)
    try:
        c.ehlo()
        c.expect("MAIL FROM:<%s>" % SENDER, "250")
        c.expect("RCPT TO:<%s>" % RCPT, "250")
        c.send(b"BDAT %d LAST\r\n" % len(body) + body)
        qid = queued_id(c.reply())
        c.cmd("QUIT")
        return qid
    finally:
        c.close()


@pytest.mark.parametrize("via", ["data", "bdat-no-final-crlf"])
def test_size_param_and_logged_size_are_the_message(ringmx, nexthop, via):
    srv, nh, _ = gateway(ringmx, nexthop, hop={"chunking": False})
    mid = new_mid("size-" + via)
    body = make_message(mid, "dotted lines", DOTTED)
    if via == "data":
        qid = submit(srv.port, body, SENDER, [RCPT])
        want = body
    else:
        body = body + b"no line end"   # the last line has no CRLF
        qid = submit_bdat(srv.port, body)
        want = body + b"\r\n"          # DATA gives it one (RFC 5321 4.1.1.4)
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert strip_received(t.data)[1] == want
    assert t.via == "DATA"
    assert t.mail_params.get("SIZE") == str(len(t.data)), \
        "SIZE=%s for a message of %d octets (RFC 1870: no stuffing, no terminator)" % (
            t.mail_params.get("SIZE"), len(t.data))
    [queued] = wait_log(srv, "queued", qid)
    assert "size=%d " % len(t.data) in queued + " ", \
        "logged %r for a message of %d octets" % (queued, len(t.data))
    wait_queue_empty(srv)


def test_message_exactly_at_hop_size_limit(ringmx, nexthop):
    """A hop that enforces SIZE takes a message exactly at its limit (and the
    queue shows that size); one octet more is refused before MAIL."""
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [
        Rule("connect", "421 4.3.2 Not now")]})
    mid_at, mid_over = new_mid("at-limit"), new_mid("over-limit")
    body_at = make_message(mid_at, "exactly at the limit", DOTTED)
    body_over = make_message(mid_over, "over the limit", DOTTED + b"x" * 40 + b"\r\n")
    q_at = submit(srv.port, body_at, SENDER, [RCPT])
    q_over = submit(srv.port, body_over, SENDER, [RCPT])
    sizes = {}
    for q in (q_at, q_over):
        f = wait_state(srv, q, "deferred")
        _, stored = srv.queue_show(q)
        sizes[q] = len(stored)
        assert f["size"] == str(len(stored)), \
            "queue list size=%s for a message of %d octets" % (f["size"], len(stored))
    limit = sizes[q_at]
    assert sizes[q_over] > limit
    nh.set_extensions(size=limit)
    nh.set_rules([])
    srv.ctl("queue", "flush")
    [t] = nh.wait_message_id(mid_at, DELIVERY_TIMEOUT_S)
    assert len(t.data) == limit and t.mail_params.get("SIZE") == str(limit), \
        (len(t.data), t.mail_params)
    assert strip_received(t.data)[1] == body_at
    wait_log(srv, "delivered", q_at)
    [dsn] = wait_dsn(bounce, SENDER)
    assert mid_over in dsn.data.decode("utf-8", "replace")
    wait_log(srv, "bounced", q_over)
    [line] = log_events(srv, "bounced", q_over)
    assert "status=5.3.4" in line and ("of %d octets" % sizes[q_over]) in line, line
    assert txns_of(nh, mid_over) == [], "the oversized message was offered to the hop"
    wait_queue_empty(srv)


def test_own_size_limit_counts_no_stuffing(ringmx, nexthop, client_factory):
    """limits.message_size is RFC 1870's size too: a message exactly at it
    is taken however many of its lines DATA stuffs; one octet more is not."""
    limit = 4096
    srv, nh, _ = gateway(ringmx, nexthop, limits={"message_size": limit})
    head = b"Subject: at the limit\r\n\r\n" + DOTTED
    rest = limit - len(head)
    while rest > 100:
        head += b"x" * 78 + b"\r\n"
        rest -= 80
    at = head + b"y" * (rest - 2) + b"\r\n"
    over = head + b"y" * (rest - 1) + b"\r\n"
    assert len(at) == limit and len(over) == limit + 1
    c = client_factory(srv.port)
    r = c.send_message(dot_stuff(at), SENDER, [RCPT])
    assert r.code == 250, "a message of exactly message_size octets refused: %r" % r
    r = c.send_message(dot_stuff(over), SENDER, [RCPT], ehlo=False)
    assert r.code == 552, "a message one octet over message_size: %r" % r
