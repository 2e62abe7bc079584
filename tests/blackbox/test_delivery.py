"""The delivery engine, end to end: accepted mail goes out over SMTP/LMTP to
the next hops of `routes` (tests/blackbox/nexthop.py plays them), with
failover, retries on delivery.retry_s, bounces as RFC 3464 DSNs (parsed with
the email package), queue control (list/flush/hold/release/delete/bounce) and
MX routing against a real DNS server (dnszone.py).

Every server here routes "sender.example" (the envelope sender's domain) to a
second next hop, so bounces can be read there: a DSN is the transaction whose
MAIL FROM is <>.  Schedules are short (retry_s [1]) unless a test needs a
message to stay deferred (retry_s [3600], then `queue flush`)."""

import re
import threading

import pytest

from conftest import (DELIVERY_TIMEOUT_S, HOSTNAME, check_dsn, delivery_overrides,
                      dot_stuff, dsn_transactions, log_events, make_message,
                      parse_queue_time, queued_id, route, strip_received, submit, wait_dsn,
                      wait_for, wait_log, wait_queue, wait_queue_empty, wait_state)
from conftest import new_mid
from dnszone import closed_dns_port, dns  # noqa: F401  (fixtures)
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)

SENDER = "sender@sender.example"
RCPT = "rcpt@accepted.example"
# A message deferred once stays deferred for the test (next attempt in an
# hour, well inside max_age_s) until a queue command moves it.
SLOW_RETRY = {"retry_s": [3600], "max_age_s": 86400}


def gateway(ringmx, nexthop, hop=None, routes=(), relay=(), delivery=None, dns_cfg=None,
            **extra):
    """A server whose accepted.example goes to a fresh next hop (NextHop kwargs
    in hop) and sender.example to a bounce hop.  routes are added in front.
    Returns (server, hop, bounce hop)."""
    nh = nexthop(**(hop or {}))
    bounce = nexthop()
    rts = list(routes) + [route("accepted.example", nh), route("sender.example", bounce)]
    srv = ringmx(delivery_overrides(rts, relay, delivery, dns_cfg, **extra))
    return srv, nh, bounce


def ctl_one_line(srv, *args):
    """A queue control command that must exit 0 and print exactly one line."""
    out = srv.ctl(*args)
    lines = out.decode("utf-8", "replace").splitlines()
    assert len(lines) == 1, "ringmxctl %s printed %r, expected one line" % (" ".join(args), out)
    return lines[0]


def assert_ctl_fails(srv, *args):
    r = srv.ctl_run(*args)
    assert r.returncode != 0, "ringmxctl %s exited 0 (stdout %r), expected an error" % (
        " ".join(args), r.stdout)


# Lines that need dot-stuffing on the wire, a folded header field, a line of
# exactly 998 octets, trailing white space, and a last line that is a lone dot.
DOT_BODY = (b".leading dot\r\n"
            b"..two dots\r\n"
            b".\r\n"
            b". space after the dot\r\n"
            b"middle . dot\r\n"
            b"\r\n"
            b"trailing white space \t \r\n"
            b"\tstarts with a tab\r\n"
            + b"x" * 998 + b"\r\n"
            b"...\r\n"
            b".\r\n")
FOLDED = b"X-Folded: first part\r\n\tsecond part\r\n"


# --------------------------------------------------------------------------
# relay end to end


@pytest.mark.parametrize("hop_chunking", [True, False], ids=["hop-chunking", "hop-no-chunking"])
def test_relay_data_bytes_intact(ringmx, nexthop, hop_chunking):
    srv, nh, _ = gateway(ringmx, nexthop, hop={"chunking": hop_chunking})
    mid = new_mid("data")
    body = make_message(mid, "dots over DATA", DOT_BODY, FOLDED)
    qid = submit(srv.port, body, SENDER, [RCPT])
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    received, rest = strip_received(t.data)
    assert rest == body, "message changed on the way:\nsent %r\ngot  %r" % (body, rest)
    assert HOSTNAME.encode() in received, "our Received field is not first: %r" % received
    assert t.mail_from == SENDER
    assert [r.lower() for r in t.rcpts] == [RCPT]
    if not hop_chunking:
        assert t.via == "DATA"
    if t.via == "DATA":
        assert t.raw == dot_stuff(t.data), "DATA not dot-stuffed correctly on the wire"
    wait_queue_empty(srv)
    wait_log(srv, "delivered", qid)
    assert nh.message_ids()[mid] == 1, "delivered more than once: %r" % nh.message_ids()


@pytest.mark.parametrize("hop_chunking", [True, False], ids=["hop-chunking", "hop-no-chunking"])
def test_relay_bdat_bytes_intact(ringmx, nexthop, client_factory, hop_chunking):
    srv, nh, _ = gateway(ringmx, nexthop, hop={"chunking": hop_chunking})
    mid = new_mid("bdat")
    body = make_message(mid, "dots over BDAT", DOT_BODY, FOLDED)
    # split so that the second chunk starts with a line that starts with "."
    cut = body.index(b"\r\n.leading") + 2
    first, last = body[:cut], body[cut:]
    assert last.startswith(b".")
    c = client_factory(srv.port)
    r = c.ehlo()
    assert any(ln[4:].upper() == "CHUNKING" for ln in r.lines), "CHUNKING not offered: %r" % r
    c.expect("MAIL FROM:<%s>" % SENDER, "250")
    c.expect("RCPT TO:<%s>" % RCPT, "250")
    c.send(b"BDAT %d\r\n" % len(first) + first)
    assert c.reply().code == 250
    c.send(b"BDAT %d LAST\r\n" % len(last) + last)
    qid = queued_id(c.reply())
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    _, rest = strip_received(t.data)
    assert rest == body, "message changed on the way:\nsent %r\ngot  %r" % (body, rest)
    if not hop_chunking:
        assert t.via == "DATA"
    if t.via == "DATA":
        assert t.raw == dot_stuff(t.data), "BDAT-received body not dot-stuffed for DATA"
    wait_queue_empty(srv)
    wait_log(srv, "delivered", qid)


def test_several_recipients_one_transaction(ringmx, nexthop):
    srv, nh, _ = gateway(ringmx, nexthop)
    rcpts = ["a@accepted.example", "b@accepted.example", "c@accepted.example"]
    mid = new_mid("multi")
    body = make_message(mid, "three recipients")
    submit(srv.port, body, SENDER, rcpts)
    nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    wait_queue_empty(srv)
    txns = nh.by_message_id(mid)
    assert len(txns) == 1, "one message for one next hop went out as %d transactions: %r" % (
        len(txns), txns)
    assert sorted(r.lower() for r in txns[0].delivered) == rcpts
    assert strip_received(txns[0].data)[1] == body


def test_pipelining_used_when_offered(ringmx, nexthop):
    srv, nh, _ = gateway(ringmx, nexthop, hop={"pipelining": True})
    rcpts = ["p1@accepted.example", "p2@accepted.example", "p3@accepted.example"]
    mid = new_mid("pipe")
    submit(srv.port, make_message(mid, "pipelined"), SENDER, rcpts)
    nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    wait_queue_empty(srv)
    conns = [c for c in nh.connections() if c.transactions]
    assert conns, "no connection carried the message"
    assert sum(c.pipelined for c in conns) > 0, \
        "the hop offers PIPELINING but MAIL/RCPT/DATA came one at a time: %r" % conns
    # protocol violations (pipelining past DATA, ...) fail the nexthop fixture


def test_hop_without_pipelining(ringmx, nexthop):
    srv, nh, _ = gateway(ringmx, nexthop, hop={"pipelining": False})
    rcpts = ["n1@accepted.example", "n2@accepted.example"]
    mids = [new_mid("nopipe"), new_mid("nopipe")]
    for mid in mids:
        submit(srv.port, make_message(mid, "not pipelined"), SENDER, rcpts)
    for mid in mids:
        [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
        assert sorted(r.lower() for r in t.delivered) == rcpts
    wait_queue_empty(srv)
    assert all(c.pipelined == 0 for c in nh.connections()), \
        "pipelined to a hop without PIPELINING: %r" % nh.connections()
    assert nh.errors() == []


# --------------------------------------------------------------------------
# LMTP


def test_lmtp_per_recipient_results(ringmx, nexthop):
    lmtp = nexthop(lmtp=True, rules=[
        Rule("message", "550 5.1.1 <bad@lmtp.example> No such user", rcpt="bad@lmtp.example"),
        Rule("message", "451 4.3.0 Try again later", rcpt="later@lmtp.example", times=1),
    ])
    srv, nh, bounce = gateway(ringmx, nexthop, routes=[route("lmtp.example", lmtp)],
                              relay=["lmtp.example"])
    rcpts = ["ok@lmtp.example", "bad@lmtp.example", "later@lmtp.example"]
    mid = new_mid("lmtp")
    body = make_message(mid, "lmtp", to="ok@lmtp.example")
    qid = submit(srv.port, body, SENDER, rcpts)

    # ok: delivered at once; later: deferred, then delivered on the retry
    lmtp.wait_until(lambda h: h.delivered_to("ok@lmtp.example"), DELIVERY_TIMEOUT_S,
                    "ok@lmtp.example delivered")
    lmtp.wait_until(lambda h: h.delivered_to("later@lmtp.example"), DELIVERY_TIMEOUT_S,
                    "later@lmtp.example delivered on the retry")
    # bad: bounced, with a DSN naming only that recipient
    [dsn_txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(dsn_txn, SENDER)
    assert d.final_recipients() == ["bad@lmtp.example"], d.recipients
    r = d.recipient("bad@lmtp.example")
    assert r["action"].lower() == "failed", r
    assert r["status"] == "5.1.1", r
    assert "550" in r.get("diagnostic-code", "") and "No such user" in r["diagnostic-code"], r

    wait_queue_empty(srv)
    assert len(lmtp.delivered_to("ok@lmtp.example")) == 1, "ok@ delivered again on the retry"
    assert len(lmtp.delivered_to("later@lmtp.example")) == 1
    first = lmtp.transactions()[0]
    assert sorted(x.lower() for x in first.rcpts) == sorted(rcpts)
    for t in lmtp.transactions()[1:]:
        assert "ok@lmtp.example" not in [x.lower() for x in t.rcpts], \
            "retry included a recipient that was already delivered: %r" % t
        assert "bad@lmtp.example" not in [x.lower() for x in t.rcpts], \
            "retry included a bounced recipient: %r" % t
    for t in lmtp.messages():
        assert strip_received(t.data)[1] == body
    wait_log(srv, "deferred", qid)
    wait_log(srv, "bounced", qid)
    wait_log(srv, "delivered", qid)


# --------------------------------------------------------------------------
# failover


def test_failover_first_hop_refuses_connections(ringmx, nexthop, closed_port):
    second = nexthop()
    closed = closed_port()  # nothing listens there, nor will
    srv, nh, _ = gateway(ringmx, nexthop, relay=["backup.example"], routes=[
        route("backup.example", ["smtp://127.0.0.1:%d" % closed, second])])
    mid = new_mid("failover-closed")
    qid = submit(srv.port, make_message(mid, "failover"), SENDER, ["x@backup.example"])
    [t] = second.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert [r.lower() for r in t.delivered] == ["x@backup.example"]
    wait_queue_empty(srv)
    wait_log(srv, "delivered", qid)
    assert nh.transaction_count == 0


def test_failover_first_hop_421_at_connect(ringmx, nexthop):
    first = nexthop(rules=[Rule("connect", "421 4.3.2 Service not available, closing")])
    second = nexthop()
    srv, _, _ = gateway(ringmx, nexthop, relay=["backup.example"], routes=[
        route("backup.example", [first, second])])
    mid = new_mid("failover-421")
    submit(srv.port, make_message(mid, "failover 421"), SENDER, ["x@backup.example"])
    [t] = second.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert [r.lower() for r in t.delivered] == ["x@backup.example"]
    wait_queue_empty(srv)
    assert first.connection_count >= 1, "the first hop of the list was never tried"
    assert first.transaction_count == 0 and first.mail_commands == 0, \
        "a transaction was attempted after a 421 greeting"


def test_all_hops_down_deferred(ringmx, nexthop, closed_port):
    a, b = closed_port(), closed_port()
    srv, _, bounce = gateway(ringmx, nexthop, relay=["backup.example"], routes=[
        route("backup.example", ["smtp://127.0.0.1:%d" % a, "smtp://127.0.0.1:%d" % b])])
    qid = submit(srv.port, make_message(new_mid("down"), "down"), SENDER, ["x@backup.example"])
    f = wait_state(srv, qid, "deferred")
    assert int(f["attempts"]) >= 1, f
    assert f.get("error"), "deferred without an error text: %r" % f
    wait_log(srv, "deferred", qid)
    assert dsn_transactions(bounce) == [], "bounced instead of deferred"


# --------------------------------------------------------------------------
# retries


def test_retry_after_4xx_at_message_then_delivered(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [
        Rule("message", "451 4.3.0 Try again later", times=2)]})
    mid = new_mid("retry")
    body = make_message(mid, "retry")
    qid = submit(srv.port, body, SENDER, [RCPT])
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert strip_received(t.data)[1] == body
    wait_queue_empty(srv)
    txns = [x for x in nh.transactions() if (x.message_id or "").strip("<>") == mid]
    assert [x.replies[0][1][:3] for x in txns] == ["451", "451", "250"], \
        "expected two 451s then a 250: %r" % txns
    wait_for(lambda: len(log_events(srv, "deferred", qid)) >= 2, DELIVERY_TIMEOUT_S,
             "two deferrals logged")
    wait_log(srv, "delivered", qid)
    assert dsn_transactions(bounce) == []


def test_deferred_listing_then_flush_one(ringmx, nexthop):
    srv, nh, _ = gateway(ringmx, nexthop, delivery=SLOW_RETRY, hop={"rules": [
        Rule("rcpt", "451 4.3.0 Not yet", times=1)]})
    mid = new_mid("flush1")
    body = make_message(mid, "flush one")
    qid = submit(srv.port, body, SENDER, [RCPT])
    f = wait_state(srv, qid, "deferred")
    assert f["attempts"] == "1", f
    assert "451 4.3.0 Not yet" in f.get("error", ""), f
    assert f["from"] == "<%s>" % SENDER, f
    assert f["rcpts"] == "1", f
    assert int(f["size"]) > len(body), f  # with our Received field
    arrival = int(f["arrival"])
    nxt = parse_queue_time(f["next"])
    assert nxt is not None and nxt >= arrival + 3000, \
        "next attempt %r not on the retry_s [3600] schedule (arrival %d)" % (f["next"], arrival)
    # a deferred message still shows as today
    env, stored = srv.queue_show(qid)
    assert strip_received(stored)[1] == body
    ctl_one_line(srv, "queue", "flush", qid)
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert strip_received(t.data)[1] == body
    wait_queue_empty(srv)
    wait_log(srv, "delivered", qid)


def test_flush_all(ringmx, nexthop):
    srv, nh, _ = gateway(ringmx, nexthop, delivery=SLOW_RETRY, hop={"rules": [
        Rule("rcpt", "451 4.3.0 Not yet", times=2)]})
    mids = [new_mid("flushall"), new_mid("flushall")]
    qids = [submit(srv.port, make_message(m, "flush all"), SENDER, [RCPT]) for m in mids]
    for q in qids:
        wait_state(srv, q, "deferred")
    ctl_one_line(srv, "queue", "flush")
    for m in mids:
        nh.wait_message_id(m, DELIVERY_TIMEOUT_S)
    wait_queue_empty(srv)


# --------------------------------------------------------------------------
# bounces


@pytest.mark.parametrize("ret", [None, "HDRS", "FULL"])
def test_bounce_after_5xx_at_rcpt(ringmx, nexthop, ret):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [
        Rule("rcpt", "550 5.1.1 <nouser@accepted.example>: Recipient address rejected",
             rcpt="nouser@accepted.example")]})
    mid = new_mid("bounce")
    body = make_message(mid, "will bounce", b"the body line that only RET=FULL returns\r\n")
    qid = submit(srv.port, body, SENDER, ["nouser@accepted.example"],
                 mail_params="RET=%s" % ret if ret else "")
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    assert d.final_recipients() == ["nouser@accepted.example"], d.recipients
    r = d.recipient("nouser@accepted.example")
    assert r["action"].lower() == "failed", r
    assert r["status"] == "5.1.1", r
    diag = r.get("diagnostic-code", "")
    assert "550" in diag and "Recipient address rejected" in diag, \
        "Diagnostic-Code lacks the remote reply: %r" % r
    assert HOSTNAME in d.per_message.get("reporting-mta", ""), d.per_message
    assert SENDER in (d.msg["To"] or ""), "DSN To: %r" % d.msg["To"]
    returned = d.returned_bytes()
    assert returned is not None, "DSN returns nothing of the original: %r" % d.part_types
    assert b"Message-ID: <%s>" % mid.encode() in returned, returned[:500]
    if ret == "FULL":
        assert d.returned_type == "message/rfc822", d.part_types
        assert b"the body line that only RET=FULL returns" in returned
    else:
        assert d.returned_type == "text/rfc822-headers", d.part_types
        assert b"the body line that only RET=FULL returns" not in returned
    wait_queue_empty(srv)
    wait_log(srv, "bounced", qid)
    assert nh.by_message_id(mid) == []


def test_bounce_after_max_age(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, delivery={"retry_s": [1], "max_age_s": 2},
                              hop={"rules": [Rule("rcpt", "451 4.2.0 Mailbox busy")]})
    mid = new_mid("expire")
    qid = submit(srv.port, make_message(mid, "expires"), SENDER, [RCPT])
    [txn] = wait_dsn(bounce, SENDER, timeout=DELIVERY_TIMEOUT_S + 10)
    d = check_dsn(txn, SENDER)
    r = d.recipient(RCPT)
    assert r["action"].lower() == "failed", r
    assert r["status"][0] in "45", r
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", txn.data)
    assert "Mailbox busy" in r.get("diagnostic-code", "") or b"Mailbox busy" in unfolded, \
        "the DSN does not give the last remote reply: %r" % r
    wait_queue_empty(srv)
    assert nh.mail_commands >= 2, "bounced before it was retried (%d attempts)" % nh.mail_commands
    wait_log(srv, "deferred", qid)
    wait_log(srv, "bounced", qid)


def test_notify_never_gives_no_dsn(ringmx, nexthop):
    rej = Rule("rcpt", "550 5.1.1 No such user", rcpt=["never@accepted.example",
                                                       "default@accepted.example"])
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [rej]})
    mid = new_mid("never")
    qid = submit(srv.port, make_message(mid, "notify never"), SENDER,
                 ["never@accepted.example", "default@accepted.example"],
                 rcpt_params={"never@accepted.example": "NOTIFY=NEVER"})
    # the recipient without NOTIFY gets its DSN; the NOTIFY=NEVER one is not in it
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    assert d.final_recipients() == ["default@accepted.example"], \
        "NOTIFY=NEVER recipient reported: %r" % d.recipients
    wait_queue_empty(srv)
    wait_log(srv, "bounced", qid)
    # the DSN is queued before the original is finished: with the queue empty,
    # any other DSN would have arrived by now
    assert len(dsn_transactions(bounce)) == 1, dsn_transactions(bounce)


def test_notify_never_only_recipient(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [
        Rule("rcpt", "550 5.1.1 No such user")]})
    qid = submit(srv.port, make_message(new_mid("never1"), "notify never"), SENDER,
                 ["never@accepted.example"],
                 rcpt_params={"never@accepted.example": "NOTIFY=NEVER"})
    wait_log(srv, "bounced", qid)
    wait_queue_empty(srv)
    assert dsn_transactions(bounce) == [] and bounce.transaction_count == 0, \
        "DSN sent despite NOTIFY=NEVER: %r" % bounce.transactions()


def test_null_sender_bounce_is_dropped(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [
        Rule("rcpt", "550 5.1.1 No such user")]})
    qid = submit(srv.port, make_message(new_mid("dbl"), "a bounce that bounces",
                                        sender="MAILER-DAEMON@client.example"),
                 "", [RCPT])
    wait_log(srv, "double_bounce")
    wait_queue_empty(srv)
    assert nh.transaction_count == 0
    assert bounce.transaction_count == 0 and bounce.connection_count == 0, \
        "a bounce of a bounce was sent: %r" % bounce.transactions()
    assert not [t for t in nh.transactions() if t.mail_from == ""]
    assert qid  # acknowledged, then dropped


# --------------------------------------------------------------------------
# no route


def test_no_route_stays_deferred(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, relay=["noroute.example"])
    mid = new_mid("noroute")
    body = make_message(mid, "no route")
    qid = submit(srv.port, body, SENDER, ["x@noroute.example"])
    f = wait_state(srv, qid, "deferred")
    assert "no route" in f.get("error", "").lower(), f
    # still queued, bytes intact, nothing sent anywhere
    _, stored = srv.queue_show(qid)
    assert strip_received(stored)[1] == body
    assert nh.transaction_count == 0 and dsn_transactions(bounce) == []


def test_no_route_for_one_recipient_of_two(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, relay=["noroute.example"])
    mid = new_mid("noroute2")
    qid = submit(srv.port, make_message(mid, "half routed"), SENDER,
                 [RCPT, "x@noroute.example"])
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert [r.lower() for r in t.delivered] == [RCPT]
    f = wait_queue(srv, lambda q: "no route" in q.get(qid, {}).get("error", "").lower()
                   and q[qid].get("state") == "deferred", DELIVERY_TIMEOUT_S,
                   "%s deferred with 'no route'" % qid)[qid]
    assert f["state"] == "deferred", f
    assert dsn_transactions(bounce) == []


# --------------------------------------------------------------------------
# queue control


def test_hold_and_release(ringmx, nexthop):
    srv, nh, _ = gateway(ringmx, nexthop, delivery=SLOW_RETRY, hop={"rules": [
        Rule("rcpt", "451 4.3.0 Not yet", times=2)]})
    held_mid, other_mid = new_mid("held"), new_mid("other")
    held = submit(srv.port, make_message(held_mid, "held"), SENDER, [RCPT])
    other = submit(srv.port, make_message(other_mid, "other"), SENDER, [RCPT])
    wait_state(srv, held, "deferred")
    wait_state(srv, other, "deferred")

    ctl_one_line(srv, "queue", "hold", held)
    assert wait_state(srv, held, "held")["state"] == "held"
    # flush everything: the other message goes, the held one does not
    ctl_one_line(srv, "queue", "flush")
    nh.wait_message_id(other_mid, DELIVERY_TIMEOUT_S)
    srv.ctl_run("queue", "flush", held)  # may be refused for a held message; must not deliver
    wait_queue(srv, lambda q: other not in q, DELIVERY_TIMEOUT_S, "%s finished" % other)
    q = srv.queue_list()
    assert q.get(held, {}).get("state") == "held", "held message not held: %r" % q
    assert nh.by_message_id(held_mid) == [], "a held message was delivered"

    ctl_one_line(srv, "queue", "release", held)
    # released: delivered at once or at the flush (which may find it gone already)
    srv.ctl_run("queue", "flush", held)
    nh.wait_message_id(held_mid, DELIVERY_TIMEOUT_S)
    wait_queue_empty(srv)
    wait_log(srv, "delivered", held)


def test_delete_without_dsn_and_unknown_ids(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, delivery=SLOW_RETRY, hop={"rules": [
        Rule("rcpt", "451 4.3.0 Not yet")]})
    mid = new_mid("delete")
    qid = submit(srv.port, make_message(mid, "delete me"), SENDER, [RCPT])
    wait_state(srv, qid, "deferred")
    ctl_one_line(srv, "queue", "delete", qid)
    wait_queue_empty(srv)
    assert dsn_transactions(bounce) == [] and bounce.transaction_count == 0, \
        "queue delete sent a DSN"
    assert nh.by_message_id(mid) == []
    # the ID is unknown now; so is a well-formed ID never issued
    never = qid[:2] + "%014X" % ((int(qid[2:], 16) + 0x123457) % (1 << 56))
    for q in (qid, never):
        for verb in ("flush", "hold", "release", "delete", "bounce"):
            assert_ctl_fails(srv, "queue", verb, q)
    assert_ctl_fails(srv, "queue", "hold", "NOT-A-QUEUE-ID")
    assert srv.queue_list() == {}


def test_queue_bounce(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, delivery=SLOW_RETRY, hop={"rules": [
        Rule("rcpt", "451 4.3.0 Not yet")]})
    mid = new_mid("qbounce")
    qid = submit(srv.port, make_message(mid, "bounce by hand"), SENDER, [RCPT])
    wait_state(srv, qid, "deferred")
    ctl_one_line(srv, "queue", "bounce", qid)
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    r = d.recipient(RCPT)
    assert r["action"].lower() == "failed", r
    assert r["status"].startswith("5."), r
    assert b"Message-ID: <%s>" % mid.encode() in (d.returned_bytes() or b"")
    wait_queue_empty(srv)
    wait_log(srv, "bounced", qid)
    assert nh.by_message_id(mid) == []


# --------------------------------------------------------------------------
# connections


def test_connection_reuse(ringmx, nexthop, client_factory):
    gate = threading.Event()

    def hold_first(ctx):
        gate.wait(30)  # the first message's final reply waits for the other four
        return None    # then the default 250

    srv, nh, _ = gateway(ringmx, nexthop, shards=1,
                         delivery={"connections_per_route": 1},
                         hop={"rules": [Rule("message", hold_first, times=1)]})
    mids = [new_mid("reuse") for _ in range(5)]
    try:
        c = client_factory(srv.port)
        c.ehlo()
        for m in mids:
            queued_id(c.send_message(dot_stuff(make_message(m, "reuse")), SENDER, [RCPT],
                                     ehlo=False))
        c.cmd("QUIT")
    finally:
        gate.set()
    for m in mids:
        nh.wait_message_id(m, DELIVERY_TIMEOUT_S)
    wait_queue_empty(srv)
    assert sorted(nh.message_ids()) == sorted(m for m in mids), nh.message_ids()
    conns = nh.connections()
    assert len(conns) < 5, "5 messages to one route took %d connections: %r" % (len(conns), conns)
    assert max(c.transactions for c in conns) >= 2, \
        "no connection carried more than one message: %r" % conns


# --------------------------------------------------------------------------
# what the next hop can take: 8BITMIME, SMTPUTF8, SIZE, DSN


def test_8bit_to_hop_without_8bitmime(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"eightbitmime": False})
    mid = new_mid("8bit")
    text = "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u2013 na\u00efve\r\n"
    body = make_message(mid, "eight bit", text.encode("utf-8"),
                        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Content-Transfer-Encoding: 8bit\r\n")
    submit(srv.port, body, SENDER, [RCPT], mail_params="BODY=8BITMIME")
    wait_for(lambda: dsn_transactions(bounce, SENDER) or nh.by_message_id(mid),
             DELIVERY_TIMEOUT_S, "a DSN or a converted delivery")
    wait_queue_empty(srv)
    got = nh.by_message_id(mid)
    if got:
        # converted (RFC 6152 3): 7-bit on the wire, the same text decoded
        [t] = got
        assert not re.search(rb"[\x80-\xff]", t.data), "8-bit data sent to a 7-bit hop"
        m = t.message()
        decoded = m.get_content() if not m.is_multipart() else None
        assert decoded is not None and decoded.replace("\r\n", "\n") == text.replace("\r\n", "\n"), \
            "converted message does not decode to the original text: %r" % decoded
        assert dsn_transactions(bounce) == []
    else:
        [txn] = dsn_transactions(bounce, SENDER)
        d = check_dsn(txn, SENDER)
        r = d.recipient(RCPT)
        assert r["action"].lower() == "failed", r
        assert r["status"].startswith("5.6."), "expected a 5.6.x status: %r" % r


def test_smtputf8_to_hop_without_smtputf8(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"smtputf8": False})
    mid = new_mid("utf8")
    rcpt = "\u7528\u6237@accepted.example"
    body = make_message(mid, "utf8 address", "Gr\u00fc\u00dfe\r\n".encode("utf-8"),
                        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Content-Transfer-Encoding: 8bit\r\n", to=rcpt)
    qid = submit(srv.port, body, SENDER, [rcpt], mail_params="SMTPUTF8 BODY=8BITMIME")
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    assert len(d.recipients) == 1, d.recipients
    r = d.recipients[0]
    assert r["action"].lower() == "failed", r
    assert r["status"] == "5.6.7", "expected 5.6.7: %r" % r
    wait_queue_empty(srv)
    wait_log(srv, "bounced", qid)
    assert nh.transaction_count == 0 and nh.mail_commands == 0, \
        "SMTPUTF8 mail offered to a hop without SMTPUTF8"


def test_size_over_hop_limit_bounces(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"size": 10000})
    mid = new_mid("size")
    body = make_message(mid, "too big for the hop", b"0123456789abcdef" * 20 + b"\r\n")
    body = body + (b"y" * 78 + b"\r\n") * 400  # about 32 KB
    qid = submit(srv.port, body, SENDER, [RCPT])
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    r = d.recipient(RCPT)
    assert r["action"].lower() == "failed", r
    assert r["status"] == "5.3.4", "expected 5.3.4: %r" % r
    wait_queue_empty(srv)
    wait_log(srv, "bounced", qid)
    assert nh.by_message_id(mid) == []


def _rcpt_params(t, rcpt):
    for k, v in t.rcpt_params.items():
        if k.lower() == rcpt.lower():
            return v
    raise AssertionError("no RCPT %s in %r" % (rcpt, t.rcpt_params))


def test_dsn_parameters_passed_to_dsn_hop(ringmx, nexthop):
    srv, nh, _ = gateway(ringmx, nexthop, hop={"dsn": True})
    mid = new_mid("dsnparams")
    submit(srv.port, make_message(mid, "dsn params"), SENDER, [RCPT],
           mail_params="RET=HDRS ENVID=envid-42.x",
           rcpt_params={RCPT: "NOTIFY=FAILURE,DELAY ORCPT=rfc822;orig-rcpt@accepted.example"})
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert t.mail_params.get("RET", "").upper() == "HDRS", t.mail_params
    assert t.mail_params.get("ENVID") == "envid-42.x", t.mail_params
    p = _rcpt_params(t, RCPT)
    assert set((p.get("NOTIFY") or "").upper().split(",")) == {"FAILURE", "DELAY"}, p
    orcpt = p.get("ORCPT") or ""
    assert orcpt.lower().startswith("rfc822;") and orcpt.split(";", 1)[1] == \
        "orig-rcpt@accepted.example", p
    wait_queue_empty(srv)


def test_dsn_parameters_not_sent_to_hop_without_dsn(ringmx, nexthop):
    srv, nh, _ = gateway(ringmx, nexthop, hop={"dsn": False})
    mid = new_mid("nodsn")
    submit(srv.port, make_message(mid, "no dsn at the hop"), SENDER, [RCPT],
           mail_params="RET=FULL ENVID=envid-43",
           rcpt_params={RCPT: "NOTIFY=FAILURE ORCPT=rfc822;orig@accepted.example"})
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert "RET" not in t.mail_params and "ENVID" not in t.mail_params, t.mail_params
    p = _rcpt_params(t, RCPT)
    assert "NOTIFY" not in p and "ORCPT" not in p, p
    wait_queue_empty(srv)
    assert nh.errors() == []


# --------------------------------------------------------------------------
# MX routing


def mx_gateway(ringmx, nexthop, dns_addr, domains, **dns_extra):
    """Route "*" to mx; sender.example to a bounce hop."""
    bounce = nexthop()
    d = {"servers": [dns_addr], "timeout_ms": 1000, "tries": 2}
    d.update(dns_extra)
    srv = ringmx(delivery_overrides([route("sender.example", bounce), route("*", "mx")],
                                    domains, dns=d))
    return srv, bounce


def test_null_mx_bounces_5_1_10(ringmx, nexthop, dns):
    addr = dns({"nullmx.example": [("MX", 0, ".")]})
    srv, bounce = mx_gateway(ringmx, nexthop, addr, ["nullmx.example"])
    qid = submit(srv.port, make_message(new_mid("nullmx"), "null mx"), SENDER,
                 ["x@nullmx.example"])
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    r = d.recipient("x@nullmx.example")
    assert r["action"].lower() == "failed", r
    assert r["status"] == "5.1.10", "null MX (RFC 7505) must bounce 5.1.10: %r" % r
    wait_queue_empty(srv)
    wait_log(srv, "bounced", qid)


def test_nxdomain_bounces(ringmx, nexthop, dns):
    addr = dns({"other.example": [("A", "127.0.0.1")]})
    srv, bounce = mx_gateway(ringmx, nexthop, addr, ["nxdomain.example"])
    qid = submit(srv.port, make_message(new_mid("nx"), "nxdomain"), SENDER,
                 ["x@nxdomain.example"])
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    r = d.recipient("x@nxdomain.example")
    assert r["action"].lower() == "failed", r
    assert r["status"].startswith("5."), r
    wait_queue_empty(srv)
    wait_log(srv, "bounced", qid)


def test_dns_server_down_defers(ringmx, nexthop, closed_dns_port):
    port = closed_dns_port()  # nothing answers there, nor will
    srv, bounce = mx_gateway(ringmx, nexthop, "127.0.0.1:%d" % port, ["mx.example"],
                             timeout_ms=200, tries=1)
    qid = submit(srv.port, make_message(new_mid("dnsdown"), "dns down"), SENDER,
                 ["x@mx.example"])
    f = wait_state(srv, qid, "deferred")
    assert int(f["attempts"]) >= 1, f
    assert f.get("error"), f
    wait_log(srv, "deferred", qid)
    assert dsn_transactions(bounce) == [], "bounced on a DNS time-out"


@pytest.mark.parametrize("domain", ["mx.example", "implicit.example", "pref.example"])
def test_mx_delivery_to_port_25(ringmx, nexthop, dns, domain):
    try:
        mx = nexthop(host="127.0.0.2", port=25)
    except OSError as e:
        pytest.skip("cannot listen on 127.0.0.2:25 for the MX host: %s" % e)
    addr = dns({
        "mx.example": [("MX", 10, "mail.mx.example")],
        "mail.mx.example": [("A", "127.0.0.2")],
        "implicit.example": [("A", "127.0.0.2")],  # no MX: the domain itself
        # the preferred MX refuses connections (nothing on 127.0.0.3:25)
        "pref.example": [("MX", 20, "up.pref.example"), ("MX", 10, "down.pref.example")],
        "down.pref.example": [("A", "127.0.0.3")],
        "up.pref.example": [("A", "127.0.0.2")],
    })
    srv, bounce = mx_gateway(ringmx, nexthop, addr, [domain])
    mid = new_mid("mx")
    body = make_message(mid, "via mx")
    qid = submit(srv.port, body, SENDER, ["x@" + domain])
    [t] = mx.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert [r.lower() for r in t.delivered] == ["x@" + domain]
    assert strip_received(t.data)[1] == body
    wait_queue_empty(srv)
    wait_log(srv, "delivered", qid)
    assert dsn_transactions(bounce) == []
