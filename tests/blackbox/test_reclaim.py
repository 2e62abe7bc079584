"""Spool reclaim: segments are deleted once every message in them is finished,
and a message deferred for long is moved forward so it does not pin old
segments.  Disk use stays bounded by what is really queued.

The soak: one message whose recipient is always deferred, then a stream of
messages that are delivered, over many 1 MiB segments.  The segment files left
at the end stay few (not one per MiB sent), the deferred message is still
queued with its bytes intact (same queue ID), and it survives a restart."""

import glob
import os

from conftest import (SMTPClient, delivery_overrides, log_events, make_message, route,
                      strip_received, submit, wait_for, wait_log, wait_state)
from nexthop import Rule, nexthop  # noqa: F401

STUCK = "stuck@accepted.example"
STREAM = 48                 # messages of ~100 KB: ~5 MB, about five 1 MiB segments
BODY_LINE = b"x" * 98 + b"\r\n"


def segments(srv):
    return sorted(glob.glob(os.path.join(srv.config["spool"]["path"], "*", "*.seg")))


def spool_bytes(srv):
    return sum(os.path.getsize(p) for p in segments(srv))


def test_segments_reclaimed_and_deferred_message_moved_forward(ringmx, nexthop):
    nh = nexthop(rules=[Rule("rcpt", "451 4.2.0 Mailbox busy", rcpt=STUCK)])
    srv = ringmx(delivery_overrides(
        [route("accepted.example", nh)],
        delivery={"retry_s": [3600]},
        shards=1, spool={"segment_size": 1 << 20}))
    stuck_body = make_message("stuck-1@client.example", "stuck", body=b"keep me\r\n" * 50)
    stuck = submit(srv.port, stuck_body, rcpts=[STUCK])
    wait_state(srv, stuck, "deferred")

    body = BODY_LINE * 1000
    for i in range(STREAM):
        submit(srv.port, make_message("stream-%d@client.example" % i, "s%d" % i, body=body))
    wait_for(lambda: nh.message_count >= STREAM, 60, "the stream delivered")
    sent_mb = STREAM * len(body) / (1 << 20)

    # The stuck message is re-written forward, then the old segments go.
    wait_log(srv, "moved", stuck, timeout=30)
    wait_for(lambda: len(segments(srv)) <= 3, 30,
             "old segments reclaimed (have %r)" % segments(srv))
    assert spool_bytes(srv) <= 3 * (1 << 20) + (256 << 10), \
        "spool holds %d bytes after %.1f MiB went through" % (spool_bytes(srv), sent_mb)

    q = srv.queue_list()
    assert list(q) == [stuck], q
    assert q[stuck]["state"] == "deferred" and q[stuck]["rcpts"] == "1", q
    assert strip_received(srv.queue_show(stuck)[1])[1] == stuck_body

    # After a restart the moved copy is the one that counts.
    srv.restart()
    q = srv.queue_list()
    assert list(q) == [stuck], q
    assert strip_received(srv.queue_show(stuck)[1])[1] == stuck_body
    nh.set_rules([])
    srv.ctl("queue", "flush", stuck)
    [t] = nh.wait_message_id("stuck-1@client.example", 30)
    assert strip_received(t.data)[1] == stuck_body
    assert [r.lower() for r in t.delivered] == [STUCK]
    wait_for(lambda: srv.queue_list() == {}, 30, "an empty queue")


REFUSED = 16                # messages of ~600 KB, each refused: ~9.6 MB, several rotations


def refused_body(i):
    """A ~600 KB message whose last line has a bare LF: 554 5.6.0 at the end
    of data, after its bytes went to the spool (SMTP smuggling,
    CVE-2023-51764)."""
    return (b"Subject: refused %d\r\nMessage-ID: <refused-%d@client.example>\r\n\r\n" % (i, i)
            + BODY_LINE * 6000 + b"bare\nlf\r\n")


def test_segments_of_refused_mail_reclaimed(ringmx):
    # A segment no committed message ever landed in was never
    # known to the delivery engine, so it was never deleted while the
    # server ran: a stream of refused mail filled the disk.
    srv = ringmx({"shards": 1, "spool": {"segment_size": 1 << 20}})
    spool_dir = os.path.join(srv.config["spool"]["path"], "0")
    for i in range(REFUSED):
        c = SMTPClient(srv.port, timeout=30)
        try:
            r = c.send_message(refused_body(i))
            assert r.startswith("554 5.6.0"), "refused message %d: %r" % (i, r)
            c.cmd("QUIT")
        finally:
            c.close()
    wait_for(lambda: len(log_events(srv, "spool_rotate")) >= 3, 30,
             "three segment rotations (have %r)" % log_events(srv, "spool_rotate"))
    # Only the current segment (and the one it took over from, until it is
    # closed) may stay: nothing live is in any of them.
    wait_for(lambda: len(segments(srv)) <= 2, 30,
             "segments of refused mail reclaimed (have %r)" % segments(srv))
    assert all(os.path.dirname(p) == spool_dir for p in segments(srv)), segments(srv)
    assert srv.queue_list() == {}
    # Mail still flows into the segment that is left.
    c = SMTPClient(srv.port, timeout=30)
    try:
        r = c.send_message(make_message("after@client.example", "after"))
        assert r.code == 250, r
    finally:
        c.close()
