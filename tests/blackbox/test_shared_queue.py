"""The shared delivery queue: attempts go on one
lock-free queue that every shard takes from, so one shard's mail is also
delivered by the other shard's outbound connections when its own are busy.

All messages come in over one SMTP session, so one shard owns them all (the
top byte of the queue ID).  With one outbound connection per shard and a
next hop that holds its answer to the message data until told, the owner's
connection is busy with its first message while the rest are submitted; the
other shard must open its own connection for some of them (the test waits
for two held at once).  Every message arrives exactly once and the queue ends
empty; the log names the shard that delivered each recipient."""

import re
import threading

from conftest import (SMTPClient, delivery_overrides, dot_stuff, make_message, queued_id,
                      route, strip_received, wait_for, wait_queue_empty)
from nexthop import Rule, nexthop  # noqa: F401

N = 24


def submit_all(srv):
    """N messages over one SMTP session: {queue ID: (Message-ID, body)}."""
    c = SMTPClient(srv.port)
    try:
        c.ehlo()
        sent = {}
        for i in range(N):
            mid = "shared-%d@client.example" % i
            body = make_message(mid, "shared %d" % i)
            c.expect("MAIL FROM:<sender@sender.example>", "250")
            c.expect("RCPT TO:<rcpt@accepted.example>", "250")
            c.expect("DATA", "354")
            c.send(dot_stuff(body) + b".\r\n")
            sent[queued_id(c.reply())] = (mid, body)
        c.cmd("QUIT")
    finally:
        c.close()
    return sent


def test_other_shard_delivers_when_the_owner_is_busy(ringmx, nexthop):
    gate = threading.Event()
    held = set()  # next-hop connections waiting at the gate

    def hold(ctx):
        held.add(ctx.conn.id)
        gate.wait(60)
        return None  # then the default 250

    nh = nexthop(rules=[Rule("message", hold)])
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], shards=2,
                                    delivery={"connections_per_route": 2}))
    try:
        sent = submit_all(srv)
        # one connection per shard: two held at once means both shards run
        # the owner's mail (a condition, not "the hop is slow enough")
        wait_for(lambda: len(held) >= 2, 60, "both shards' connections at the next hop")
    finally:
        gate.set()
    owners = {qid[:2] for qid in sent}
    assert len(owners) == 1, "one session, one owning shard: %r" % owners
    nh.wait_messages(N, timeout=60)
    wait_queue_empty(srv, timeout=60)
    for qid, (mid, body) in sent.items():
        got = nh.by_message_id(mid)
        assert len(got) == 1, "%s arrived %d times" % (mid, len(got))
        assert strip_received(got[0].data)[1] == body
    owner = int(owners.pop(), 16)
    # Shards queue their log lines for the main thread to write (log.h), so
    # an empty queue does not mean the last "delivered" line is written yet.
    # Exit writes every queued line: read the log after an orderly stop.
    assert srv.stop() == 0, srv.log_tail()
    runners = [int(m) for m in re.findall(r"event=delivered id=[0-9A-F]{16} rcpt=<[^>]*> "
                                          r"shard=(\d+)", srv.log_text())]
    assert len(runners) == N, runners
    assert any(r != owner for r in runners), \
        "every message was delivered by its owning shard %d: %r" % (owner, runners)
