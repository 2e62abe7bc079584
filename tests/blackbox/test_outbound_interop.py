"""Outbound interoperability: what real next hops do that a client must expect.

- A hop may keep the transaction open after refusing the message at its end
  (Postfix after an smtpd_end_of_data_restrictions reject): the pooled
  connection gets RSET (and its 250) before it carries the next message, and
  a 503 anywhere in a transaction means the hop is out of step with us, never
  a verdict on the message: the connection goes and the message is tried
  again at once on a fresh one (a second 503 defers it).
- A hop may take only so many recipients per transaction ("452 4.5.3 too
  many recipients", RFC 5321 4.5.3.1.10; 552 read as temporary too): the rest
  go in the next transactions at once, in the same attempt, never on the
  retry schedule.
- RFC 1870 SIZE counts the message without dot-stuffing and without the
  terminator: SIZE=, the hop's limit check and every logged size use that,
  so a message exactly at a hop's limit goes.

The programmable next hop (nexthop.py) plays each hop.  Schedules are slow
(retry_s [3600]): a message deferred here stays deferred, so "delivered at
once" is seen as an empty queue, never as a time."""

import json
import math
import re
import threading

import pytest

from conftest import (DELIVERY_TIMEOUT_S, SMTPClient, delivery_overrides, dot_stuff,
                      dsn_transactions, log_events, make_message, queued_id, route,
                      strip_received, submit, wait_dsn, wait_for, wait_log, wait_queue_empty,
                      wait_state)
from conftest import new_mid, submit_pipelined
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)

SENDER = "sender@sender.example"
RCPT = "rcpt@accepted.example"
SLOW_RETRY = {"retry_s": [3600], "max_age_s": 86400}


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


def wait_outcome(srv, qid):
    """Wait until qid's attempt is logged: delivered, deferred or bounced."""
    wait_for(lambda: any(log_events(srv, e, qid) for e in ("delivered", "deferred", "bounced")),
             DELIVERY_TIMEOUT_S, "an outcome for %s" % qid)


def attempts_logged(srv, qid):
    """The attempts= of qid's event=done line."""
    [line] = wait_log(srv, "done", qid)
    return int(re.search(r"\battempts=(\d+)", line).group(1))


def verbs(conn):
    return [c.split(" ", 1)[0].upper() for c in conn.commands]


def conn_by_id(nh, cid):
    [c] = [c for c in nh.connections() if c.id == cid]
    return c


# --------------------------------------------------------------------------
# item 1: a refused message leaves no transaction open on a pooled connection

REFUSALS = {
    "451": "451 4.7.1 <%s>: Sender address rejected: try again later",
    "554": "554 5.7.1 <%s>: Sender address rejected: Access denied",
}


def held_refusal(reply):
    """A "message" reply for the refused sender that the hop holds back until
    the test releases it: the test queues the next message while the refused
    one holds the route's only connection, so that message waits for exactly
    this connection (no idle timer is raced).  Returns (reply callable,
    entered event, release event)."""
    entered, release = threading.Event(), threading.Event()

    def answer(ctx):
        entered.set()
        release.wait(DELIVERY_TIMEOUT_S)
        return reply
    return answer, entered, release


def refused_then_innocent(srv, nh, refused, entered, release):
    """Queue a message from the refused sender, then (while the hop holds its
    end-of-data reply) an innocent one to the same route.  Returns their
    (qid, Message-ID, body) pairs."""
    mid_a, mid_b = new_mid("refused"), new_mid("innocent")
    body_b = make_message(mid_b, "innocent")
    try:
        qa = submit(srv.port, make_message(mid_a, "refused at end of data", sender=refused),
                    refused, [RCPT])
        assert entered.wait(DELIVERY_TIMEOUT_S), "the refused message never reached its end"
        qb = submit(srv.port, body_b, SENDER, [RCPT])
    finally:
        release.set()
    return (qa, mid_a), (qb, mid_b, body_b)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
@pytest.mark.parametrize("code", sorted(REFUSALS))
def test_refused_message_then_rset_before_reuse(ringmx, nexthop, code, pipelining):
    """Postfix keeps the transaction after an end-of-data reject: without
    RSET the next message on the connection gets "503 nested MAIL" and was
    bounced, though its sender did nothing wrong."""
    refused = "refused@sender.example"
    answer, entered, release = held_refusal(REFUSALS[code] % refused)
    srv, nh, bounce = gateway(ringmx, nexthop, shards=1, delivery={"connections_per_route": 1},
                              hop={"pipelining": pipelining, "rules": [
                                  Rule("message", answer, sender=refused, keep_txn=True)]})
    (qa, mid_a), (qb, mid_b, body_b) = refused_then_innocent(srv, nh, refused, entered, release)
    wait_outcome(srv, qa)
    if code == "451":
        f = wait_state(srv, qa, "deferred")
        assert f["attempts"] == "1" and "451 4.7.1" in f.get("error", ""), f
    else:
        wait_log(srv, "bounced", qa)
    [ta] = txns_of(nh, mid_a)
    assert not ta.accepted, ta
    # the innocent message waited for the route's one connection, and went
    # over it once the refused one was done
    wait_outcome(srv, qb)
    assert not log_events(srv, "bounced", qb), \
        "an innocent sender's message bounced after another was refused:\n%s" % srv.log_tail(20)
    [tb] = nh.wait_message_id(mid_b, DELIVERY_TIMEOUT_S)
    assert strip_received(tb.data)[1] == body_b
    assert tb.conn_id == ta.conn_id, \
        "the second message did not reuse the connection (conns %r)" % nh.connections()
    v = verbs(conn_by_id(nh, ta.conn_id))
    data = v.index("DATA")
    assert v[data + 1:data + 3] == ["RSET", "MAIL"], \
        "after the refused message: %r, expected RSET then MAIL" % v
    wait_log(srv, "delivered", qb)
    assert attempts_logged(srv, qb) == 1
    if code == "451":
        assert not dsn_transactions(bounce), "a DSN although nothing bounced"


def test_refused_message_rset_refused_closes(ringmx, nexthop):
    """An RSET that does not get its 250 leaves the hop's state unknown: the
    connection is not reused (QUIT), the next message goes on a new one."""
    refused = "refused@sender.example"
    answer, entered, release = held_refusal(REFUSALS["451"] % refused)
    srv, nh, bounce = gateway(ringmx, nexthop, shards=1, delivery={"connections_per_route": 1},
                              hop={"rules": [
                                  Rule("message", answer, sender=refused, keep_txn=True),
                                  Rule("rset", "502 5.5.2 Error: command not recognized")]})
    (qa, mid_a), (qb, mid_b, body_b) = refused_then_innocent(srv, nh, refused, entered, release)
    wait_state(srv, qa, "deferred")
    [tb] = nh.wait_message_id(mid_b, DELIVERY_TIMEOUT_S)
    assert strip_received(tb.data)[1] == body_b
    [ta] = txns_of(nh, mid_a)
    assert tb.conn_id != ta.conn_id, "reused after its RSET was refused: %r" % nh.connections()
    v = verbs(conn_by_id(nh, ta.conn_id))
    data = v.index("DATA")
    assert v[data + 1:] == ["RSET", "QUIT"], v
    wait_log(srv, "delivered", qb)
    assert not log_events(srv, "bounced", qb) and dsn_transactions(bounce) == []


# A 503 in each place of a transaction where it shows the hop out of step.
OUT_OF_STEP = {
    "mail": Rule("mail", "503 5.5.1 Error: nested MAIL command", times=1),
    "rcpt": Rule("rcpt", "503 5.5.1 Error: need MAIL command", times=1),
    "data": Rule("data", "503 5.5.1 Error: bad sequence of commands", times=1),
    "dot": Rule("message", "503 5.5.1 Error: bad sequence of commands", times=1),
}


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "no-pipelining"])
@pytest.mark.parametrize("where", sorted(OUT_OF_STEP))
def test_503_retried_at_once_on_fresh_connection(ringmx, nexthop, where, pipelining):
    rule = OUT_OF_STEP[where]
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"pipelining": pipelining, "rules": [
        Rule(rule.phase, rule.reply, times=1)]})
    mid = new_mid("oos-" + where)
    body = make_message(mid, "503 to " + where)
    qid = submit(srv.port, body, SENDER, [RCPT])
    wait_outcome(srv, qid)
    assert not log_events(srv, "bounced", qid), \
        "a 503 (out of step) bounced the message:\n%s" % srv.log_tail(20)
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert strip_received(t.data)[1] == body
    wait_queue_empty(srv)
    assert attempts_logged(srv, qid) == 1
    assert not log_events(srv, "deferred", qid), "deferred instead of retried at once"
    conns = nh.connections()
    assert len(conns) == 2 and t.conn_id == conns[1].id, \
        "expected the retry on a second, fresh connection: %r" % conns
    # the hop's thread notes the close when it reads the EOF: wait for it
    nh.wait_until(lambda s: s.connections()[0].ended is not None, DELIVERY_TIMEOUT_S,
                  "the out-of-step connection to close")
    assert conns[0].closed_by == "client", "the out-of-step connection was kept: %r" % conns
    assert nh.message_ids()[mid] == 1
    errs = wait_log(srv, "outbound_error")
    assert any("503" in e and "out of step" in e for e in errs), errs
    assert dsn_transactions(bounce) == []


def test_503_twice_defers_never_bounces(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [
        Rule("mail", "503 5.5.1 Error: nested MAIL command")]})
    mid = new_mid("oos-twice")
    qid = submit(srv.port, make_message(mid, "503 every time"), SENDER, [RCPT])
    wait_outcome(srv, qid)
    assert not log_events(srv, "bounced", qid), \
        "a 503 (out of step) bounced the message:\n%s" % srv.log_tail(20)
    f = wait_state(srv, qid, "deferred")
    assert f["attempts"] == "1", f
    assert "503 5.5.1" in f.get("error", ""), f
    [line] = log_events(srv, "deferred", qid)
    assert "status=4.5.1" in line, "a 503 deferral must carry a 4.x.x status: %r" % line
    assert nh.mail_commands == 2 and nh.connection_count == 2, \
        "expected one retry on one fresh connection: %d MAILs, %r" % (
            nh.mail_commands, nh.connections())
    assert dsn_transactions(bounce) == []


# --------------------------------------------------------------------------
# item 4: recipients over the hop's limit go in the next transactions at once

def rcpt_list(n, tag="r"):
    return ["%s%04d@accepted.example" % (tag, i) for i in range(n)]


def over_limit(limit, reply):
    """The hop takes limit recipients per transaction, then answers reply."""
    return Rule("rcpt", reply, when=lambda ctx: len(ctx.rcpts) >= limit)


def delivered_once(txns, rcpts):
    got = [r.lower() for t in txns for r in t.delivered]
    assert len(got) == len(set(got)), "a recipient got the message twice"
    missing = set(rcpts) - set(got)
    assert not missing, "%d recipients never delivered, e.g. %r" % (
        len(missing), sorted(missing)[:3])


OVERFLOW = [
    ("452-pipelining", {"pipelining": True}, "452 4.5.3 Error: too many recipients"),
    ("452-no-pipelining", {"pipelining": False}, "452 4.5.3 Error: too many recipients"),
    ("452-no-esc", {"enhancedstatuscodes": False}, "452 Too many recipients"),
    ("552-5.5.3", {}, "552 5.5.3 Error: too many recipients"),
    ("lmtp", {"lmtp": True}, "452 4.5.3 Error: too many recipients"),
]


@pytest.mark.parametrize("hop,reply", [o[1:] for o in OVERFLOW], ids=[o[0] for o in OVERFLOW])
def test_too_many_recipients_continue_at_once(ringmx, nexthop, hop, reply):
    limit, n = 100, 1000
    srv, nh, bounce = gateway(ringmx, nexthop, limits={"recipients": n},
                              hop=dict(hop, rules=[over_limit(limit, reply)]))
    rcpts = rcpt_list(n)
    mid = new_mid("many")
    body = make_message(mid, "a thousand recipients")
    qid = submit_pipelined(srv.port, body, SENDER, rcpts)
    # slow retries: a recipient left for the schedule would keep it queued
    wait_queue_empty(srv)
    # the done line comes after any deferral: wait for it, then look
    assert attempts_logged(srv, qid) == 1
    assert not log_events(srv, "deferred", qid), "recipients waited for the retry schedule"
    txns = txns_of(nh, mid)
    assert len(txns) == math.ceil(n / limit), \
        "%d transactions for %d recipients at %d each" % (len(txns), n, limit)
    assert all(t.accepted and len(t.rcpts) <= limit for t in txns), txns
    assert nh.mail_commands == len(txns), "transactions begun and given up"
    delivered_once(txns, rcpts)
    assert all(strip_received(t.data)[1] == body for t in txns)
    # after the first "too many", each transaction offers only what the
    # hop takes: no RCPT is sent to be refused again
    assert sum(len(t.rcpt_attempts) for t in txns[1:]) == n - limit, \
        [len(t.rcpt_attempts) for t in txns]
    assert len({t.conn_id for t in txns}) == 1, "the overflow left the connection"
    assert dsn_transactions(bounce) == []
    assert wait_log(srv, "outbound_rcpt_limit"), "the hop's limit was not logged"


def test_too_many_recipients_then_messages_per_connection(ringmx, nexthop):
    """The overflow goes on as many connections as messages_per_connection
    asks for, still in one attempt."""
    limit, n, per_conn = 100, 1000, 3
    srv, nh, _ = gateway(ringmx, nexthop, limits={"recipients": n},
                         delivery={"messages_per_connection": per_conn},
                         hop={"rules": [over_limit(limit, "452 4.5.3 Error: too many recipients")]})
    rcpts = rcpt_list(n)
    mid = new_mid("many-conns")
    qid = submit_pipelined(srv.port, make_message(mid, "many over few"), SENDER, rcpts)
    wait_queue_empty(srv)
    assert attempts_logged(srv, qid) == 1
    txns = txns_of(nh, mid)
    assert len(txns) == math.ceil(n / limit), txns
    delivered_once(txns, rcpts)
    per = {}
    for t in txns:
        per[t.conn_id] = per.get(t.conn_id, 0) + 1
    assert max(per.values()) <= per_conn, "messages_per_connection exceeded: %r" % per
    assert len(per) == math.ceil(len(txns) / per_conn), per


def test_overflow_and_a_full_mailbox(ringmx, nexthop):
    """A 452 with another enhanced code (4.2.2 mailbox full) is about that
    recipient: it is deferred, never offered again in the overflow
    transactions, while the others go in them."""
    limit, n = 100, 250
    rcpts = rcpt_list(n)
    full = rcpts[7]
    srv, nh, _ = gateway(ringmx, nexthop, limits={"recipients": n}, hop={"rules": [
        Rule("rcpt", "452 4.2.2 Mailbox full", rcpt=full),
        over_limit(limit, "452 4.5.3 Error: too many recipients")]})
    mid = new_mid("full")
    qid = submit_pipelined(srv.port, make_message(mid, "one full mailbox"), SENDER, rcpts)
    f = wait_state(srv, qid, "deferred")
    assert f["attempts"] == "1" and f["rcpts"] == "1", f
    assert "452 4.2.2" in f.get("error", ""), f
    txns = txns_of(nh, mid)
    assert len(txns) == math.ceil((n - 1) / limit), txns
    delivered_once(txns, [r for r in rcpts if r != full])
    offered = [a[0].lower() for t in txns for a in t.rcpt_attempts]
    assert offered.count(full) == 1, "the full mailbox was offered %d times" % offered.count(full)
    [line] = wait_log(srv, "deferred", qid)   # logs lag the queue list
    assert full in line and "452 4.2.2" in line, line


def test_overflow_stops_when_a_transaction_takes_nobody(ringmx, nexthop):
    """Each overflow transaction must take someone to earn the next: a hop
    that takes 100 and then refuses every recipient as "too many" gets one
    fruitless transaction, and the rest are deferred with its reply."""
    limit, n = 100, 250
    srv, nh, _ = gateway(ringmx, nexthop, limits={"recipients": n}, hop={"rules": [
        Rule("rcpt", "452 4.5.3 Error: too many recipients",
             when=lambda ctx: len(ctx.rcpts) >= limit or ctx.conn.transactions >= 1)]})
    rcpts = rcpt_list(n)
    mid = new_mid("stuck")
    qid = submit_pipelined(srv.port, make_message(mid, "a hop that stops taking"), SENDER, rcpts)
    f = wait_state(srv, qid, "deferred")
    assert f["attempts"] == "1" and f["rcpts"] == str(n - limit), f
    assert "452 4.5.3" in f.get("error", ""), f
    [t] = txns_of(nh, mid)
    assert len(t.delivered) == limit
    assert nh.mail_commands == 2, \
        "expected the first transaction and one that took nobody, got %d MAILs" % nh.mail_commands
    # logs lag the queue list: wait for every deferral line
    deferred = wait_for(lambda: [x for x in [log_events(srv, "deferred", qid)]
                                 if len(x) >= n - limit], DELIVERY_TIMEOUT_S,
                        "%d deferral lines" % (n - limit))[0]
    assert len(deferred) == n - limit and all("status=4.5.3" in x for x in deferred), deferred[:2]


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


# --------------------------------------------------------------------------
# ringmx as the next hop of ringmx: the limits one side announces and
# enforces are the ones the other side respects (items 4 and 7 end to end)

def chain(ringmx, nexthop, downstream_limits, downstream_start=True):
    """upstream -> downstream -> sink.  The upstream takes 1,000 recipients;
    the downstream has downstream_limits (its default takes 100).  Returns
    (upstream, downstream, sink, bounce hop)."""
    sink, bounce = nexthop(), nexthop()
    down = ringmx(delivery_overrides([route("accepted.example", sink)],
                                     delivery=SLOW_RETRY, limits=downstream_limits),
                  start=downstream_start)
    up = ringmx(delivery_overrides([route("accepted.example", "smtp://127.0.0.1:%d" % down.port),
                                    route("sender.example", bounce)],
                                   delivery=SLOW_RETRY, limits={"recipients": 1000}))
    return up, down, sink, bounce


def test_chain_downstream_recipient_limit(ringmx, nexthop):
    """The downstream ringmx answers "452 4.5.3" past its 100 recipients:
    the upstream hands it 250 in three transactions, in one attempt."""
    n = 250
    up, down, sink, bounce = chain(ringmx, nexthop, {"recipients": 100})
    rcpts = rcpt_list(n)
    mid = new_mid("chain-many")
    body = make_message(mid, "through two gateways")
    qid = submit_pipelined(up.port, body, SENDER, rcpts)
    wait_queue_empty(up)
    assert attempts_logged(up, qid) == 1
    assert not log_events(up, "deferred", qid), "recipients waited for the retry schedule"
    wait_queue_empty(down)
    # logs lag the queue list: wait for the downstream's queued lines
    queued = wait_for(lambda: [x for x in [log_events(down, "queued")] if len(x) >= 3],
                      DELIVERY_TIMEOUT_S, "the downstream's queued lines")[0]
    assert len(queued) == math.ceil(n / 100), queued
    txns = txns_of(sink, mid)
    delivered_once(txns, rcpts)
    for t in txns:
        _, rest = strip_received(t.data)   # the downstream's
        assert strip_received(rest)[1] == body   # the upstream's
    assert dsn_transactions(bounce) == []


def test_chain_message_exactly_at_downstream_size(ringmx, nexthop):
    """The downstream's message_size is exactly the size of the message
    (as the upstream relays it, stuffed lines and all): it goes through."""
    up, down, sink, bounce = chain(ringmx, nexthop, {}, downstream_start=False)
    mid = new_mid("chain-size")
    body = make_message(mid, "exactly at the limit downstream", DOTTED)
    qid = submit(up.port, body, SENDER, [RCPT])
    size = int(wait_state(up, qid, "deferred")["size"])   # the downstream is not up yet
    down.config["limits"]["message_size"] = size
    with open(down.config_path, "w") as f:
        json.dump(down.config, f, indent=2)
    down.start()
    up.ctl("queue", "flush")
    [t] = sink.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    _, rest = strip_received(t.data)
    received_up, rest = strip_received(rest)
    assert rest == body
    assert len(received_up) + len(body) == size, "the upstream's size is not the message's"
    wait_log(up, "delivered", qid)
    assert dsn_transactions(bounce) == []
