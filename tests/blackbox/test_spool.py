"""The spool under pressure: segments rotate and every message survives a
restart across them; a full disk gets 452 4.3.1 for the message that does
not fit, loses nothing acknowledged, and mail flows again once there is
room."""

import os
import subprocess

import pytest

from conftest import (RINGMX_BIN, SMTPClient, delivery_overrides, dot_stuff, queued_id, route,
                      strip_received, wait_for, wait_state)
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)


def _body(i, size):
    head = b"Subject: spool %d\r\nMessage-ID: <s%d@test>\r\n\r\n" % (i, i)
    line = b"%05d abcdefghijklmnopqrstuvwxyz0123456789\r\n"
    out = bytearray(head)
    n = 0
    while len(out) < size:
        out += line % n
        n += 1
    return bytes(out)


def _send(port, body):
    c = SMTPClient(port, timeout=20)
    try:
        c.ehlo()
        return c.send_message(dot_stuff(body))
    finally:
        c.close()


def test_rotation_and_restart(ringmx):
    # 1 MiB segments, 40 messages of 100 KB: several rotations per shard.
    srv = ringmx({"spool": {"segment_size": 1 << 20}})
    sent = {}
    for i in range(40):
        body = _body(i, 100_000)
        sent[queued_id(_send(srv.port, body))] = body
    segs = [f for _, _, files in os.walk(srv.config["spool"]["path"]) for f in files
            if f.endswith(".seg")]
    assert len(segs) >= 4, segs
    srv.restart()
    listed = srv.queue_list()
    assert set(listed) == set(sent)
    for qid, body in sent.items():
        assert strip_received(srv.queue_show(qid)[1])[1] == body


@pytest.fixture
def tiny_fs(tmpfs):
    """A 4 MiB tmpfs: a disk that fills up."""
    return tmpfs(4)


def test_full_disk_refuses_and_loses_nothing(ringmx, tiny_fs):
    # The room made later: deleting segments would free nothing while
    # ringmx holds them open for their queued messages.
    ballast = os.path.join(tiny_fs, "ballast")
    with open(ballast, "wb") as f:
        f.write(b"\0" * (256 << 10))
    spool = os.path.join(tiny_fs, "spool")
    srv = ringmx({"shards": 1, "spool": {"path": spool, "segment_size": 1 << 20}})
    acked, refused = {}, 0
    for i in range(80):  # 80 x 100 KB cannot fit in 4 MiB
        body = _body(i, 100_000)
        r = _send(srv.port, body)
        if r.code == 250:
            acked[queued_id(r)] = body
        else:
            assert r.startswith("452 4.3.1") or r.startswith("451 4.3.0"), r
            refused += 1
    assert refused > 0, "the disk never filled"
    assert acked, "nothing fitted at all"
    # Everything acknowledged is intact, before and after a restart.
    for qid, body in acked.items():
        assert strip_received(srv.queue_show(qid)[1])[1] == body
    srv.restart()
    assert set(srv.queue_list()) == set(acked)
    # Make room (an operator removing other files) and mail flows again.
    os.unlink(ballast)
    r = _send(srv.port, _body(999, 10_000))
    assert r.code == 250, r


def _fill(srv):
    """Send 100 KB messages until the disk refuses one; the acked ones."""
    acked = {}
    for i in range(80):  # 80 x 100 KB cannot fit in 4 MiB
        body = _body(i, 100_000)
        r = _send(srv.port, body)
        if r.code != 250:
            assert r.startswith("452 4.3.1") or r.startswith("451 4.3.0"), r
            return acked
        acked[queued_id(r)] = body
    raise AssertionError("the disk never filled")


def test_control_answered_when_the_disk_is_full(ringmx, nexthop, tiny_fs):
    # A queue command is answered once its record is durable.  With
    # the disk full the segment is sealed and no new one opens, so the
    # record never found a place and ringmxctl waited for ever -- and with
    # it the main thread, which also takes SIGTERM.
    ballast = os.path.join(tiny_fs, "ballast")
    with open(ballast, "wb") as f:
        f.write(b"\0" * (1 << 20))
    nh = nexthop(rules=[Rule("message", "451 4.3.0 not now")])
    srv = ringmx(delivery_overrides(
        [route(["accepted.example"], nh)], delivery={"retry_s": [3600]}, shards=1,
        spool={"path": os.path.join(tiny_fs, "spool"), "segment_size": 1 << 20}))
    first = queued_id(_send(srv.port, _body(0, 1000)))
    wait_state(srv, first, "deferred")
    acked = _fill(srv)
    # Records may still fit in the segment's last page; the one that does
    # not seals it (after a 452 it is sealed already).  Each is answered.
    for _ in range(300):
        r = srv.ctl_run("queue", "hold", first, timeout=20)
        if r.returncode != 0:
            break
    err = r.stderr.decode(errors="replace")
    assert err.startswith("ERR hold: No space left on device"), (r.returncode, err)
    state = srv.queue_list()[first]["state"]
    # From now on no segment takes records: refused at once, nothing changed.
    for op in ("release", "delete", "bounce", "flush", "hold"):
        r = srv.ctl_run("queue", op, first, timeout=20)
        err = r.stderr.decode(errors="replace")
        assert r.returncode == 1 and err.startswith("ERR %s: No space left on device" % op), \
            "queue %s with the disk full: rc=%d %r" % (op, r.returncode, err)
    wait_for(lambda: "spool cannot write" in srv.all_logs(), 10, "the refusals logged")
    assert srv.queue_list()[first]["state"] == state, "a refused command changed state"
    # Room again: a segment opens (retried once a second) and commands work.
    os.unlink(ballast)
    wait_for(lambda: srv.ctl_run("queue", "hold", first).returncode == 0, 30,
             "queue hold once the disk has room")
    srv.restart()
    listed = srv.queue_list()
    assert listed[first]["state"] == "held", listed[first]
    assert set(acked) <= set(listed), "acknowledged mail lost"


def test_second_process_on_the_same_spool_is_refused(ringmx):
    # Two writers on one spool would corrupt it (and SO_REUSEPORT would even
    # let the second share the port): the second refuses to start.
    first = ringmx()
    other = ringmx({"spool": {"path": first.config["spool"]["path"]}}, start=False)
    proc = subprocess.run([RINGMX_BIN, "-c", other.config_path], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=30, cwd=other.dir)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, err
    assert "is in use by another ringmx process" in err, err
    # The first one is untouched.
    r = _send(first.port, _body(1, 1000))
    assert r.code == 250, r
