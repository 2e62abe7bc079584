"""Attacks on outbound transactions, DSNs and message sizes that found
defects: each test failed before its fix.

- A BDAT body whose last octet is CR has no final CRLF (the case
  SPOOL_ENV_NO_FINAL_CRLF was made for), but that CR is bare (RFC 5321
  2.3.8): it was taken, and relayed with DATA as "\\r\\r\\n.\\r\\n", a bare CR
  at the next hop, which strict servers refuse.  It is refused like any
  other bare CR.
- A report too large for one DSN is split at DSN_RCPT_MAX recipients; each
  part carried the whole message under RET=FULL, so one message to many
  refused recipients came back to its (possibly forged) sender as many
  full copies: a backscatter amplifier.  The content goes back once, in
  the first DSN that reports a failure; the others return the header
  section."""


import pytest

import re

from conftest import (SMTPClient, check_dsn, delivery_overrides, log_events,
                      make_message, queued_id, route, submit, wait_dsn, wait_log,
                      wait_queue_empty, wait_state)
from conftest import new_mid, submit_pipelined
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)

SENDER = "sender@sender.example"
RCPT = "rcpt@accepted.example"
SLOW_RETRY = {"retry_s": [3600], "max_age_s": 86400}


def gateway(ringmx, nexthop, hop=None, delivery=None, **extra):
    """accepted.example to a fresh next hop, sender.example to a bounce hop;
    slow retries.  Returns (server, hop, bounce hop)."""
    nh = nexthop(**(hop or {}))
    bounce = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh),
                                     route("sender.example", bounce)],
                                    delivery=dict(SLOW_RETRY, **(delivery or {})), **extra))
    return srv, nh, bounce


def bdat(port, chunks):
    """One transaction whose message goes in BDAT chunks (the last one LAST);
    returns the reply to the last chunk."""
    c = SMTPClient(port)
    try:
        c.ehlo()
        c.expect("MAIL FROM:<%s>" % SENDER, "250")
        c.expect("RCPT TO:<%s>" % RCPT, "250")
        for i, ch in enumerate(chunks):
            last = i == len(chunks) - 1
            c.send(b"BDAT %d%s\r\n" % (len(ch), b" LAST" if last else b"") + ch)
            r = c.reply()
            if not last:
                assert r.code == 250, r
        c.cmd("QUIT")
        return r
    finally:
        c.close()


# --------------------------------------------------------------------------
# a BDAT body that ends with CR


@pytest.mark.parametrize("chunks", [
    [b"abc\r"],                # the last line's CR without its LF
    [b"abc\r\n.\r"],           # a "." line, as a smuggling attempt would end
    [b"abc\r\n", b"\r"],       # the CR alone in the LAST chunk
], ids=["text-cr", "dot-cr", "cr-chunk"])
def test_bdat_ending_in_cr_is_a_bare_cr(ringmx, nexthop, chunks):
    srv, nh, _ = gateway(ringmx, nexthop)
    mid = new_mid("bdat-cr")
    chunks = [make_message(mid) + chunks[0]] + chunks[1:]
    r = bdat(srv.port, chunks)
    assert r.code == 554 and r.enhanced == "5.6.0", r
    assert "bare CR" in r.last, r
    # Refused, so nothing is queued and nothing reaches the hop (the hop
    # fixture fails the test on any bare CR it sees).
    assert srv.queue_list() == {}
    assert nh.transactions() == []


def test_bdat_cr_then_lf_in_the_next_chunk_is_crlf(ringmx, nexthop):
    """The CR of a CRLF split between chunks is no bare CR."""
    srv, nh, _ = gateway(ringmx, nexthop)
    mid = new_mid("bdat-split-crlf")
    body = make_message(mid) + b"abc\r\n"
    r = bdat(srv.port, [body[:-1], body[-1:]])
    assert r.code == 250, r
    qid = queued_id(r)
    [t] = nh.wait_message_id(mid, 30)
    assert t.data.endswith(b"abc\r\n") and qid


# --------------------------------------------------------------------------
# a report split over several DSNs returns the content once


def test_split_report_returns_the_message_once(ringmx, nexthop):
    n = 1100   # two DSNs: 1000 and 100
    rcpts = ["u%04d@accepted.example" % i for i in range(n)]
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [
        Rule("rcpt", "550 5.1.1 No such user")]}, limits={"recipients": n})
    mid = new_mid("split-ret")
    big = b"".join(b"line %05d of the body that must come back only once\r\n" % i
                   for i in range(2000))
    submit(srv.port, make_message(mid, "many refused", big), SENDER, rcpts,
           mail_params="RET=FULL", timeout=60)
    txns = wait_dsn(bounce, SENDER, n=2)
    dsns = [check_dsn(t, SENDER) for t in txns]
    assert sorted(len(d.recipients) for d in dsns) == [100, 1000]
    full = [d for d in dsns if d.returned_type == "message/rfc822"]
    assert len(full) == 1, "RET=FULL content returned %d times: %r" % (
        len(full), [d.returned_type for d in dsns])
    assert big in full[0].raw
    for d in dsns:
        if d is not full[0]:
            assert d.returned_type == "text/rfc822-headers", d.part_types
            assert b"Message-ID: <%s>" % mid.encode() in d.returned_bytes()
            assert b"line 00000 of the body" not in d.raw
    wait_queue_empty(srv)


def test_split_report_returns_the_message_with_the_first_failure(ringmx, nexthop):
    """The content goes back once, but it does go back: when the first DSN
    reports successes only (which carry the header section), the first one
    with a failure returns it."""
    n, ok = 1100, 1000
    rcpts = ["u%04d@accepted.example" % i for i in range(n)]
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"dsn": False, "rules": [
        Rule("rcpt", "550 5.1.1 No such user", rcpt=rcpts[ok:])]}, limits={"recipients": n})
    mid = new_mid("split-ret-fail")
    submit(srv.port, make_message(mid, "relayed, then refused", b"the body to return\r\n"),
           SENDER, rcpts, mail_params="RET=FULL",
           rcpt_params={r: "NOTIFY=SUCCESS,FAILURE" for r in rcpts}, timeout=60)
    dsns = [check_dsn(t, SENDER) for t in wait_dsn(bounce, SENDER, n=2)]
    by_action = {tuple(sorted({r["action"].lower() for r in d.recipients})): d for d in dsns}
    assert sorted(by_action) == [("failed",), ("relayed",)], sorted(by_action)
    assert len(by_action[("relayed",)].recipients) == ok
    assert by_action[("relayed",)].returned_type == "text/rfc822-headers"
    failed = by_action[("failed",)]
    assert failed.returned_type == "message/rfc822", failed.part_types
    assert b"the body to return" in failed.raw
    wait_queue_empty(srv)


# --------------------------------------------------------------------------
# recipients over the limit, at a hop that takes one message per connection


def attempts_logged(srv, qid):
    [line] = wait_log(srv, "done", qid)
    return int(re.search(r"\battempts=(\d+)", line).group(1))


LIMIT = 2
RCPTS = ["r%d@accepted.example" % i for i in range(7)]


def over_limit():
    return Rule("rcpt", "452 4.5.3 Error: too many recipients",
                when=lambda ctx: len(ctx.rcpts) >= LIMIT)


ONE_PER_CONN = {
    "421": lambda: Rule("mail", "421 4.3.2 Too many messages for this connection",
                        when=lambda ctx: ctx.conn.transactions >= 1),
    "close": lambda: Rule("mail", drop=True, when=lambda ctx: ctx.conn.transactions >= 1),
}


@pytest.mark.parametrize("how", sorted(ONE_PER_CONN))
def test_overflow_goes_on_at_a_hop_of_one_message_per_connection(ringmx, nexthop, how):
    srv, nh, _ = gateway(ringmx, nexthop, limits={"recipients": len(RCPTS)},
                         hop={"rules": [over_limit(), ONE_PER_CONN[how]()]})
    mid = new_mid("one-per-conn-" + how)
    qid = submit_pipelined(srv.port, make_message(mid, "one message per connection"), SENDER, RCPTS)
    wait_queue_empty(srv)   # slow retries: a deferral would keep it queued
    assert attempts_logged(srv, qid) == 1
    assert not log_events(srv, "deferred", qid), "recipients waited for the retry schedule"
    txns = [t for t in nh.messages() if (t.message_id or "").strip("<>") == mid]
    got = sorted(r.lower() for t in txns for r in t.delivered)
    assert got == sorted(RCPTS), "delivered %r" % got
    # one transaction per connection, each with what the hop takes
    assert len(txns) == 4 and len({t.conn_id for t in txns}) == 4, txns
    assert all(len(t.delivered) <= LIMIT for t in txns), txns


def test_hop_that_takes_nobody_on_a_fresh_connection_is_deferred(ringmx, nexthop):
    """Going again is earned by progress: a hop that refuses every MAIL after
    its first transaction gets one fresh connection, then the rest wait."""
    srv, nh, _ = gateway(ringmx, nexthop, limits={"recipients": len(RCPTS)}, hop={"rules": [
        over_limit(),
        Rule("mail", "421 4.3.2 Busy", when=lambda ctx: ctx.server.message_count >= 1)]})
    mid = new_mid("one-then-none")
    qid = submit_pipelined(srv.port, make_message(mid, "then nobody"), SENDER, RCPTS)
    f = wait_state(srv, qid, "deferred")
    assert f["attempts"] == "1" and f["rcpts"] == str(len(RCPTS) - LIMIT), f
    assert "421" in f.get("error", ""), f
    [t] = [t for t in nh.messages() if (t.message_id or "").strip("<>") == mid]
    assert len(t.delivered) == LIMIT
    # the first transaction, its continuation, and one on a fresh connection
    assert nh.mail_commands == 3, nh.mail_commands
    assert nh.connection_count == 2, nh.connections()
