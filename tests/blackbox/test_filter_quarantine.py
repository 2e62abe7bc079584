"""Quarantine (issue 11's message action) against the real binary: a
message a rule quarantines at mail, rcpt or data is accepted and queued
held under its name; `queue list` (and `--quarantine`), `queue show` and
the queued log line name it; it is not delivered, flushed, retried or
expired while held, across restarts; `queue release` delivers it (by its
route, when a rule chose one) and it stays released after a restart, even
partly delivered; `queue hold`, `bounce` and `delete` work on it; the last
rule that quarantines wins and nothing leaks into the next transaction.
A quarantine is where an admin parks mail that must not go out: a leak is a
delivered spam or a data breach, a loss is a lost legitimate message."""

import re

import pytest

from conftest import (DELIVERY_TIMEOUT_S, check_dsn, delivery_overrides, env_get, log_events,
                      queued_id, route, wait_dsn, wait_log, wait_queue, wait_queue_empty)
from nexthop import Rule, nexthop  # noqa: F401  (fixture)
from test_filter_actions import RCPT, marked, send_one
from test_filter_data import SENDER, SLOW, msg, transact
from test_filters import rule_events

QUARANTINE = {"data": [{"if": {"header": {"name": "X-Review"}}, "then": {"quarantine": "review"}}]}


def test_quarantine_held_until_released(ringmx, nexthop, client_factory):
    nh = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], filters=QUARANTINE))
    hmid, held = marked("held", ["X-Review: 1"])
    qid = send_one(srv, client_factory, held)
    fmid, free = marked("free")
    send_one(srv, client_factory, free)
    nh.wait_message_id(fmid, DELIVERY_TIMEOUT_S)  # the queue runs, and skips the held one
    q = wait_queue(srv, lambda q: set(q) == {qid}, DELIVERY_TIMEOUT_S, "only the held one")
    assert q[qid].get("state") == "held" and q[qid].get("quarantine") == "review", q
    out = srv.ctl("queue", "list", "--quarantine").decode()
    assert [ln.split()[0] for ln in out.splitlines() if ln.strip()] == [qid], out
    env, _ = srv.queue_show(qid)
    assert env_get(env, "quarantine") == ["review"], env
    lines = [ln for ln in log_events(srv, "queued", qid)]
    assert len(lines) == 1 and re.search(r"\bquarantine=review\b", lines[0]), lines
    assert nh.by_message_id(hmid) == [], "a quarantined message was delivered"
    # a restart keeps it held
    srv.restart()
    q = srv.queue_list()
    assert q[qid].get("state") == "held" and q[qid].get("quarantine") == "review", q
    assert nh.by_message_id(hmid) == []
    srv.ctl("queue", "release", qid)
    [t] = nh.wait_message_id(hmid, DELIVERY_TIMEOUT_S)
    assert t.mail_from == SENDER and [r.lower() for r in t.rcpts] == [RCPT]
    wait_queue_empty(srv)
    wait_log(srv, "delivered", qid)
    assert srv.stop() == 0


def test_quarantine_list_only_and_delete(ringmx, client_factory, closed_port):
    srv = ringmx(delivery_overrides([route("accepted.example", "smtp://127.0.0.1:%d"
                                           % closed_port())], delivery=SLOW, filters=QUARANTINE))
    _, held = marked("held", ["X-Review: yes"])
    _, free = marked("free")
    q1 = send_one(srv, client_factory, held)
    q2 = send_one(srv, client_factory, free)
    q = srv.queue_list()
    assert set(q) == {q1, q2}, q
    assert "quarantine" not in q[q2], q
    out = srv.ctl("queue", "list", "--quarantine").decode()
    ids = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
    assert ids == [q1], out
    assert "quarantine=review" in out
    srv.ctl("queue", "delete", q1)
    wait_queue(srv, lambda q: set(q) == {q2}, DELIVERY_TIMEOUT_S, "the quarantined one deleted")
    assert srv.ctl("queue", "list", "--quarantine").decode().strip() == ""
    srv.restart()
    assert set(srv.queue_list()) == {q2}, "a deleted message came back"
    assert srv.stop() == 0


def test_released_stays_released_after_restart(ringmx, client_factory, closed_port):
    srv = ringmx(delivery_overrides([route("accepted.example", "smtp://127.0.0.1:%d"
                                           % closed_port())], delivery=SLOW, filters=QUARANTINE))
    _, held = marked("held", ["X-Review: yes"])
    _, other = marked("other", ["X-Review: yes"])
    q1 = send_one(srv, client_factory, held)
    q2 = send_one(srv, client_factory, other)
    srv.ctl("queue", "release", q1)
    wait_queue(srv, lambda q: q[q1].get("state") != "held", DELIVERY_TIMEOUT_S, "q1 released")
    srv.restart()
    q = srv.queue_list()
    assert q[q1].get("state") != "held", "a released message is held again after a restart: %r" % q
    assert q[q2].get("state") == "held" and q[q2].get("quarantine") == "review", q
    out = srv.ctl("queue", "list", "--quarantine").decode()
    assert q2 in out
    assert srv.stop() == 0


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
def test_quarantine_at_each_stage_accepts(ringmx, client_factory, closed_port, stage):
    cond = {"mail": {"sender": "q@client.example"}, "rcpt": {"rcpt": "q@accepted.example"},
            "data": {"header": {"name": "X-Q"}}}[stage]
    chain = [{"if": cond, "then": {"quarantine": "at-" + stage}},
             {"then": {"reject": "550 5.7.1 quarantine did not end the stage"}}]
    srv = ringmx(delivery_overrides([route("accepted.example", "smtp://127.0.0.1:%d"
                                           % closed_port())], delivery=SLOW,
                                    filters={stage: chain}))
    c = client_factory(srv.port)
    c.ehlo()
    qid = queued_id(transact(c, msg(["X-Q: 1"]), sender="q@client.example",
                             rcpts=["q@accepted.example"]))
    q = srv.queue_list()
    assert q[qid].get("quarantine") == "at-" + stage and q[qid].get("state") == "held", q
    assert srv.stop() == 0


def test_last_quarantine_wins_and_leaves_with_the_transaction(ringmx, client_factory,
                                                              closed_port):
    srv = ringmx(delivery_overrides(
        [route("accepted.example", "smtp://127.0.0.1:%d" % closed_port())], delivery=SLOW,
        filters={"mail": [{"if": {"sender_domain": "client.example"}, "then": {"quarantine": "a"}}],
                 "rcpt": [{"if": {"rcpt": "b@accepted.example"}, "then": {"quarantine": "b"}}],
                 "data": [{"if": {"header": {"name": "X-C"}}, "then": {"quarantine": "c"}}]}))
    c = client_factory(srv.port)
    c.ehlo()
    q_a = queued_id(transact(c, msg(["S: 1"])))
    q_b = queued_id(transact(c, msg(["S: 1"]), rcpts=["b@accepted.example", RCPT]))
    q_c = queued_id(transact(c, msg(["X-C: 1"]), rcpts=["b@accepted.example"]))
    q_none = queued_id(transact(c, msg(["X-D: 0"]), sender="x@other.example"))
    # a refused transaction's quarantine does not stay for the next one
    c.expect("MAIL FROM:<y@client.example>", "250")
    c.expect("RSET", "250")
    q_none2 = queued_id(transact(c, msg(["S: 2"]), sender="z@other.example"))
    q = srv.queue_list()
    assert [q[x].get("quarantine") for x in (q_a, q_b, q_c, q_none, q_none2)] == \
        ["a", "b", "c", None, None], q
    assert q[q_none].get("state") != "held" and q[q_none2].get("state") != "held", q
    assert srv.stop() == 0


def test_quarantine_flush_does_not_release(ringmx, nexthop, client_factory):
    nh = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], filters=QUARANTINE))
    hmid, held = marked("held", ["X-Review: 1"])
    qid = send_one(srv, client_factory, held)
    srv.ctl("queue", "flush")
    fmid, free = marked("free")
    send_one(srv, client_factory, free)
    nh.wait_message_id(fmid, DELIVERY_TIMEOUT_S)
    q = srv.queue_list()
    assert q[qid].get("state") == "held" and q[qid].get("quarantine") == "review", q
    assert nh.by_message_id(hmid) == [], "queue flush delivered a quarantined message"
    assert srv.stop() == 0


def test_quarantine_with_route_released_goes_by_the_route(ringmx, nexthop, client_factory):
    normal, special = nexthop(), nexthop()
    srv = ringmx(delivery_overrides(
        [{"name": "special", "to": special.url}, route("accepted.example", normal)],
        filters={"mail": [{"if": {"sender": "vip@client.example"}, "then": {"route": "special"}}],
                 "data": QUARANTINE["data"]}))
    hmid, held = marked("held", ["X-Review: 1"])
    qid = send_one(srv, client_factory, held, sender="vip@client.example")
    q = srv.queue_list()
    assert q[qid].get("quarantine") == "review", q
    srv.restart()
    srv.ctl("queue", "release", qid)
    special.wait_message_id(hmid, DELIVERY_TIMEOUT_S)
    wait_queue_empty(srv)
    assert normal.by_message_id(hmid) == []
    assert srv.stop() == 0


def test_quarantine_then_data_reject_leaves_nothing(ringmx, client_factory, closed_port):
    srv = ringmx(delivery_overrides(
        [route("accepted.example", "smtp://127.0.0.1:%d" % closed_port())], delivery=SLOW,
        filters={"mail": [{"if": {"sender": "q@client.example"}, "then": {"quarantine": "mq"}}],
                 "data": [{"if": {"header": {"name": "X-No"}}, "then": "reject"}]}))
    c = client_factory(srv.port)
    c.ehlo()
    assert transact(c, msg(["X-No: 1"]), sender="q@client.example").code == 550
    qid = queued_id(transact(c, msg(["S: 1"]), sender="p@client.example"))
    q = srv.queue_list()
    assert set(q) == {qid} and "quarantine" not in q[qid] and q[qid].get("state") != "held", q
    assert srv.stop() == 0


def test_released_partly_delivered_stays_released(ringmx, nexthop, client_factory):
    """Released, delivered to one recipient and deferred for the other: what
    stays in the queue is not held again, also after a restart."""
    nh = nexthop(rules=[Rule("rcpt", "451 4.3.0 later", rcpt="later@accepted.example")])
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], delivery=SLOW,
                                    filters=QUARANTINE))
    hmid, held = marked("partly", ["X-Review: 1"])
    qid = send_one(srv, client_factory, held, rcpts=[RCPT, "later@accepted.example"])
    srv.ctl("queue", "release", qid)
    [t] = nh.wait_message_id(hmid, DELIVERY_TIMEOUT_S)
    assert [r.lower() for r in t.delivered] == [RCPT], t
    q = wait_queue(srv, lambda q: len(q) == 1 and all(
        v.get("state") == "deferred" for v in q.values()), DELIVERY_TIMEOUT_S, "deferred")
    srv.restart()
    q = srv.queue_list()
    assert len(q) == 1 and all(v.get("state") != "held" for v in q.values()), \
        "the released message is held again after a restart: %r" % q
    assert srv.stop() == 0


def test_quarantine_hold_again_and_bounce(ringmx, nexthop, client_factory, closed_port):
    bounce = nexthop()
    srv = ringmx(delivery_overrides(
        [route("accepted.example", "smtp://127.0.0.1:%d" % closed_port()),
         route("sender.example", bounce)], delivery=SLOW, filters=QUARANTINE))
    _, b = marked("hb", ["X-Review: 1"])
    qid = send_one(srv, client_factory, b, sender="s@sender.example")
    srv.ctl("queue", "release", qid)
    wait_queue(srv, lambda q: q[qid].get("state") != "held", DELIVERY_TIMEOUT_S, "released")
    q = srv.queue_list()
    assert q[qid].get("quarantine") == "review", "a released message lost its name: %r" % q
    srv.ctl("queue", "hold", qid)
    wait_queue(srv, lambda q: q[qid].get("state") == "held", DELIVERY_TIMEOUT_S, "held again")
    srv.ctl("queue", "bounce", qid)
    [t] = wait_dsn(bounce, "s@sender.example")
    check_dsn(t, "s@sender.example")
    wait_queue(srv, lambda q: qid not in q, DELIVERY_TIMEOUT_S, "bounced and gone")
    assert srv.stop() == 0
    got = rule_events(srv, "filters.data[0]")
    assert got and got[0]["action"] == "quarantine", got


def test_quarantine_does_not_expire_while_held(ringmx, nexthop, client_factory, closed_port):
    """A held message waits for an operator: a message sent after it to the
    same dead route expires and bounces (max_age_s 2), the quarantined one
    is still there, held, with no bounce."""
    bounce = nexthop()
    srv = ringmx(delivery_overrides(
        [route("accepted.example", "smtp://127.0.0.1:%d" % closed_port()),
         route("sender.example", bounce)],
        delivery={"retry_s": [1], "max_age_s": 2}, filters=QUARANTINE))
    _, held = marked("old", ["X-Review: 1"])
    qid = send_one(srv, client_factory, held, sender="held@sender.example")
    _, ctl = marked("control")
    send_one(srv, client_factory, ctl, sender="control@sender.example")
    wait_dsn(bounce, "control@sender.example")
    q = srv.queue_list()
    assert q.get(qid, {}).get("state") == "held", "the quarantined message expired: %r" % q
    assert [t for t in bounce.messages() if "held@sender.example" in
            [r.lower() for r in t.rcpts]] == [], "a held message bounced"
    assert srv.stop() == 0
