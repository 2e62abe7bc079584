"""Crash test of the delivery engine: kill -9 three times while 16 clients send
and the engine delivers to a next hop.  After the last restart every message
that got "250 ... queued as ID" arrives at the next hop at least once, intact
(counted by Message-ID: a kill between the hop's 250 and our record may
deliver twice, never zero times), nothing unknown arrives, and the queue ends
empty."""

import os
import random
import re
import smtplib
import socket
import threading
import time

from conftest import (delivery_overrides, route, strip_received, wait_for, wait_queue_empty)
from nexthop import nexthop  # noqa: F401  (nexthop is a fixture)

THREADS = 16
PER_THREAD = 40
LOAD_S = 20.0          # the clients stop sending after this long, sent or not
KILLS = 3
SIZE_MIN = 500
SIZE_MAX = 12_000
ARRIVE_TIMEOUT_S = 180.0
ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_()"
TABLE = bytes(ALPHABET[i % len(ALPHABET)] for i in range(256))


def make_message(rnd, mid):
    target = rnd.randint(SIZE_MIN, SIZE_MAX)
    head = (b"From: load@client.example\r\nTo: sink@accepted.example\r\n"
            b"Subject: delivery crash " + mid.encode() + b"\r\nMessage-ID: <" + mid.encode() +
            b">\r\n\r\n")
    parts = [head]
    size = len(head)
    while size < target:
        ln = rnd.randbytes(rnd.randint(0, 120)).translate(TABLE)
        if rnd.random() < 0.05:
            ln = b"." + ln  # dot-stuffing on both sides
        parts.append(ln + b"\r\n")
        size += len(ln) + 2
    return b"".join(parts)


def _accepting(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Load:
    """THREADS sessions sending until PER_THREAD messages each or LOAD_S;
    a session cut by a kill reconnects once the server accepts again."""

    def __init__(self, port, rnd, nonce):
        self.port = port
        self.cond = threading.Condition()
        self.acked = {}     # mid -> body: got 250 queued
        self.sent = {}      # mid -> body: every message we began to send
        self.cut = []       # (thread, repr) sessions that failed at the network level
        self.rejected = []  # (thread, mid, code, reply): SMTP-level refusals
        self.done = 0
        self.deadline = time.monotonic() + LOAD_S
        self.seeds = [rnd.getrandbits(64) for _ in range(THREADS)]
        self.nonce = nonce
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True)
                        for t in range(THREADS)]

    def _session(self, t, rnd, state):
        with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as s:
            s.ehlo("loader%d.example" % t)
            while state["i"] < PER_THREAD and time.monotonic() < self.deadline:
                mid = "dcrash-t%d-m%d-%s@client.example" % (t, state["i"], self.nonce)
                state["i"] += 1
                body = make_message(rnd, mid)
                with self.cond:
                    self.sent[mid] = body
                code, resp = s.mail("load@client.example")
                if code != 250:
                    self._reject(t, mid, "MAIL", code, resp)
                    s.rset()
                    continue
                code, resp = s.rcpt("sink@accepted.example")
                if code != 250:
                    self._reject(t, mid, "RCPT", code, resp)
                    s.rset()
                    continue
                code, resp = s.data(body)
                if code != 250:
                    self._reject(t, mid, "DATA", code, resp)
                    continue
                if not re.match(rb"^2\.0\.0 Ok: queued as [0-9A-F]{16}$", resp):
                    self._reject(t, mid, "DATA", code, resp)
                    continue
                with self.cond:
                    self.acked[mid] = body
                    self.cond.notify_all()

    def _reject(self, t, mid, stage, code, resp):
        with self.cond:
            self.rejected.append((t, mid, stage, code, resp))

    def run(self, t):
        rnd = random.Random(self.seeds[t])
        state = {"i": 0}
        try:
            while state["i"] < PER_THREAD and time.monotonic() < self.deadline:
                try:
                    self._session(t, rnd, state)
                except (OSError, smtplib.SMTPException) as e:  # the kill cuts sessions
                    with self.cond:
                        self.cut.append((t, repr(e)))
                    # wait (bounded by the load deadline) until the server is back
                    while time.monotonic() < self.deadline and not _accepting(self.port):
                        time.sleep(0.05)  # poll interval of the reconnect loop
        finally:
            with self.cond:
                self.done += 1
                self.cond.notify_all()

    def start(self):
        for th in self.threads:
            th.start()

    def wait_acked(self, n, timeout):
        """Until n messages are acknowledged or every thread is done."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.acked) < n and self.done < THREADS:
                left = deadline - time.monotonic()
                assert left > 0, "only %d messages acknowledged within %.0fs (cut %r, rejected %r)" % (
                    len(self.acked), timeout, self.cut[:5], self.rejected[:5])
                self.cond.wait(left)
            return len(self.acked)

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for th in self.threads:
            th.join(max(0.1, deadline - time.monotonic()))
        alive = [th for th in self.threads if th.is_alive()]
        assert not alive, "%d client threads still running" % len(alive)


def test_kill9_during_delivery_every_acknowledged_message_arrives(ringmx, nexthop):
    seed = int(os.environ.get("RINGMX_CRASH_SEED", "0")) or random.randrange(1, 1 << 30)
    print("delivery crash test seed: %d (set RINGMX_CRASH_SEED to replay)" % seed)
    rnd = random.Random(seed)
    nh = nexthop()
    srv = ringmx(delivery_overrides(
        [route("accepted.example", nh)],
        delivery={"retry_s": [1], "max_age_s": 3600, "connect_timeout_s": 5,
                  "command_timeout_s": 30},
        shards=2, spool={"durability": "fsync"},
        limits={"connections_per_ip": 200, "idle_s": 120}))

    load = Load(srv.port, rnd, "%08x" % rnd.getrandbits(32))
    load.start()
    kills = []
    # random moments spread over the load: after a random number of
    # acknowledgements, and once the engine has delivered something since the
    # last start
    total = THREADS * PER_THREAD
    points = sorted(rnd.sample(range(total // 20, total * 8 // 10), KILLS))
    for k, point in enumerate(points):
        got = load.wait_acked(point, timeout=120)
        delivered_before = nh.message_count
        wait_for(lambda: nh.message_count > delivered_before or load.done == THREADS, 60,
                 "a delivery before kill %d" % (k + 1))
        srv.kill9()
        kills.append((got, nh.message_count))
        srv.start()
    load.join(LOAD_S + 120)
    with load.cond:
        acked = dict(load.acked)
        sent = dict(load.sent)
        rejected = list(load.rejected)
    print("kills at (acked, delivered): %r; %d sent, %d acknowledged, %d sessions cut"
          % (kills, len(sent), len(acked), len(load.cut)))
    assert not rejected, "the server refused messages: %r" % rejected[:5]
    assert acked, "nothing was acknowledged"

    # every acknowledged message arrives at least once
    def missing():
        ids = nh.message_ids()
        return [m for m in acked if ids[m] == 0]
    try:
        wait_for(lambda: not missing(), ARRIVE_TIMEOUT_S, "every acknowledged message at the hop",
                 interval=0.2)
    except AssertionError:
        lost = missing()
        raise AssertionError("%d of %d acknowledged messages never arrived, e.g. %r\nqueue: %r"
                             % (len(lost), len(acked), lost[:5], srv.queue_list())) from None
    wait_queue_empty(srv, timeout=60)

    # intact, and nothing foreign
    problems = []
    by_mid = {}
    for t in nh.messages():
        mid = (t.message_id or "").strip().strip("<>")
        by_mid.setdefault(mid, []).append(t)
    for mid, txns in by_mid.items():
        if mid not in sent:
            problems.append("unknown message %r arrived" % mid)
            continue
        for t in txns:
            try:
                rest = strip_received(t.data)[1]
            except AssertionError as e:
                problems.append("%s: %s" % (mid, e))
                continue
            if rest != sent[mid]:
                problems.append("%s: bytes differ (%d arrived, %d sent)"
                                % (mid, len(rest), len(sent[mid])))
        for t in txns:
            if [r.lower() for r in t.delivered] != ["sink@accepted.example"]:
                problems.append("%s: delivered to %r" % (mid, t.delivered))
    assert not problems, "%d problems:\n%s" % (len(problems), "\n".join(problems[:20]))
    dups = sum(len(v) - 1 for v in by_mid.values())
    print("%d distinct messages arrived, %d duplicates (at-least-once)" % (len(by_mid), dups))
