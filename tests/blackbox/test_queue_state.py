"""Queue state across restarts and delay notices.

- A deferred message keeps its attempts, next attempt and last error across a
  restart (the RCPT_STATE records), and a recipient already delivered is not
  delivered again.
- delivery.delay_notice_s: one "delayed" DSN (RFC 3464 Action: delayed) for
  recipients that asked for NOTIFY=DELAY or gave no NOTIFY, none for those
  whose NOTIFY excludes DELAY."""

from conftest import (check_dsn, delivery_overrides, make_message, route, submit, wait_dsn,
                      wait_for, wait_state)
from nexthop import Rule, nexthop  # noqa: F401

SENDER = "sender@sender.example"
OK_RCPT = "ok@accepted.example"
LATER = "later@accepted.example"


def test_state_survives_restart(ringmx, nexthop):
    nh = nexthop(rules=[Rule("rcpt", "451 4.2.0 Mailbox busy", rcpt=LATER)])
    bounce = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh),
                                     route("sender.example", bounce)],
                                    relay_domains=["sender.example"],
                                    delivery={"retry_s": [1, 3600]}))
    mid = "state-1@client.example"
    qid = submit(srv.port, make_message(mid, "state"), SENDER, [OK_RCPT, LATER])
    # the first attempt delivers OK_RCPT; the second (1 s later) defers LATER for an hour
    wait_for(lambda: srv.queue_list().get(qid, {}).get("attempts") == "2", 30,
             "two attempts")
    before = wait_state(srv, qid, "deferred")
    assert before["rcpts"] == "1", before
    assert "451 4.2.0 Mailbox busy" in before["error"], before
    srv.restart()
    after = srv.queue_list()[qid]
    for k in ("state", "attempts", "next", "rcpts", "error", "arrival"):
        assert after[k] == before[k], (k, before, after)
    nh.set_rules([])
    srv.ctl("queue", "flush", qid)
    wait_for(lambda: qid not in srv.queue_list(), 30, "the message finished")
    got = [sorted(r.lower() for r in t.delivered) for t in nh.by_message_id(mid)]
    assert sorted(got) == [[LATER], [OK_RCPT]], "each recipient exactly once: %r" % got
    assert bounce.transaction_count == 0


def test_delay_notice(ringmx, nexthop):
    nh = nexthop(rules=[Rule("rcpt", "451 4.2.0 Mailbox busy")])
    bounce = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh),
                                     route("sender.example", bounce)],
                                    relay_domains=["sender.example"],
                                    delivery={"retry_s": [1], "delay_notice_s": 2}))
    delay_rcpt, quiet_rcpt = "delay@accepted.example", "quiet@accepted.example"
    qid = submit(srv.port, make_message("delay-1@client.example", "delay"), SENDER,
                 [delay_rcpt, quiet_rcpt],
                 rcpt_params={delay_rcpt: "NOTIFY=DELAY,FAILURE", quiet_rcpt: "NOTIFY=FAILURE"})
    [t] = wait_dsn(bounce, SENDER, 1, timeout=30)
    d = check_dsn(t, SENDER)
    assert d.final_recipients() == [delay_rcpt], d.recipients
    r = d.recipient(delay_rcpt)
    assert r["action"].lower() == "delayed", r
    assert r["status"].startswith("4."), r
    assert "will-retry-until" in r, r
    # one notice only, and the message is still queued
    wait_for(lambda: int(srv.queue_list()[qid]["attempts"]) >= 5, 30, "more attempts")
    assert len([x for x in bounce.messages() if x.mail_from == ""]) == 1
    assert srv.queue_list()[qid]["state"] in ("deferred", "queued", "active")


def test_delay_notice_by_default_unless_notify_excludes_it(ringmx, nexthop):
    """RFC 3461 4.1 leaves the default to the server: with delay_notice_s set,
    a recipient without NOTIFY gets the notice; NOTIFY=FAILURE or NEVER not."""
    nh = nexthop(rules=[Rule("rcpt", "451 4.2.0 Mailbox busy")])
    bounce = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh),
                                     route("sender.example", bounce)],
                                    relay_domains=["sender.example"],
                                    delivery={"retry_s": [1], "delay_notice_s": 2}))
    plain, delay = "plain@accepted.example", "delay@accepted.example"
    failure, never = "failure@accepted.example", "never@accepted.example"
    qid = submit(srv.port, make_message("delay-2@client.example", "delay"), SENDER,
                 [plain, delay, failure, never],
                 rcpt_params={delay: "NOTIFY=DELAY", failure: "NOTIFY=FAILURE",
                              never: "NOTIFY=NEVER"})
    [t] = wait_dsn(bounce, SENDER, 1, timeout=30)
    d = check_dsn(t, SENDER)
    assert d.final_recipients() == sorted([delay, plain]), d.recipients
    for r in (plain, delay):
        assert d.recipient(r)["action"].lower() == "delayed", d.recipients
    wait_for(lambda: int(srv.queue_list()[qid]["attempts"]) >= 5, 30, "more attempts")
    assert len([x for x in bounce.messages() if x.mail_from == ""]) == 1
