"""A queue control command is answered OK only once its record
is durable.  Each command below is followed at once by kill -9; after the
restart the state it announced is there."""

import os

from conftest import delivery_overrides, make_message, route, submit, wait_dsn, wait_state
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)


def restart_after_kill(srv):
    srv.kill9()
    if os.path.exists(srv.sock_path):  # the dead process's socket file
        os.unlink(srv.sock_path)
    srv.start()


def deferred_server(ringmx, nh):
    # A long retry: nothing changes on its own during the test.
    return ringmx(delivery_overrides([route(["accepted.example", "sender.example"], nh)],
                                     delivery={"retry_s": [3600]}, shards=1))


def queue_deferred(srv, mid):
    qid = submit(srv.port, make_message(mid))
    wait_state(srv, qid, "deferred")
    return qid


def test_hold_and_release_survive_kill(ringmx, nexthop):
    nh = nexthop(rules=[Rule("message", "451 4.3.0 not now", rcpt="rcpt@accepted.example")])
    srv = deferred_server(ringmx, nh)
    qid = queue_deferred(srv, "hold@ctl.test")
    srv.ctl("queue", "hold", qid)
    restart_after_kill(srv)
    assert srv.queue_list()[qid]["state"] == "held", "hold lost in a crash after its OK"
    srv.ctl("queue", "release", qid)
    restart_after_kill(srv)
    assert srv.queue_list()[qid]["state"] != "held", "release lost in a crash after its OK"


def test_delete_survives_kill(ringmx, nexthop):
    nh = nexthop(rules=[Rule("message", "451 4.3.0 not now", rcpt="rcpt@accepted.example")])
    srv = deferred_server(ringmx, nh)
    keep = queue_deferred(srv, "keep@ctl.test")
    gone = queue_deferred(srv, "gone@ctl.test")
    srv.ctl("queue", "delete", gone)
    restart_after_kill(srv)
    assert set(srv.queue_list()) == {keep}, "a deleted message came back after a crash"
    nh.set_rules([])
    srv.ctl("queue", "flush")
    nh.wait_until(lambda h: h.by_message_id("keep@ctl.test"), 30, "the kept message")
    assert not nh.by_message_id("gone@ctl.test"), "a deleted message was delivered"


def test_bounce_survives_kill(ringmx, nexthop):
    nh = nexthop(rules=[Rule("message", "451 4.3.0 not now", rcpt="rcpt@accepted.example")])
    srv = deferred_server(ringmx, nh)
    qid = queue_deferred(srv, "bounce@ctl.test")
    srv.ctl("queue", "bounce", qid)
    restart_after_kill(srv)
    # The DSN was queued before or after the kill (its first attempt may
    # have died with the process: flush, the retry is an hour away).
    srv.ctl("queue", "flush")
    wait_dsn(nh, "sender@sender.example")
    nh.set_rules([])
    srv.ctl("queue", "flush")
    nh.wait_until(lambda h: not any(q == qid for q in srv.queue_list()), 30,
                  "the bounced message gone")
    assert not nh.by_message_id("bounce@ctl.test"), "a bounced message was delivered"


def test_flush_survives_kill(ringmx, nexthop):
    nh = nexthop(rules=[Rule("message", "451 4.3.0 not now", rcpt="rcpt@accepted.example")])
    srv = deferred_server(ringmx, nh)
    qid = queue_deferred(srv, "flush@ctl.test")
    nh.set_rules([Rule("connect", drop=True)])  # the flushed attempt fails: still queued
    srv.ctl("queue", "flush", qid)
    srv.kill9()
    nh.set_rules([])
    if os.path.exists(srv.sock_path):
        os.unlink(srv.sock_path)
    srv.start()
    # next was reset on disk: the restarted server tries it now, not in an hour.
    nh.wait_until(lambda h: h.by_message_id("flush@ctl.test"), 30, "the flushed message")
