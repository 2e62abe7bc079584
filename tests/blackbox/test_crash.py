"""Crash test (ARCHITECTURE.md invariant 2): kill -9 while 16 clients send;
after restart every message that got "250 ... queued as ID" is listed with its
bytes intact, and nothing listed is corrupt or foreign.  Done twice on the same
spool."""

import os
import random
import re
import smtplib
import threading
import time

from conftest import parse_show, strip_received

THREADS = 16
PER_THREAD = 10
SIZE_MIN = 20_000
SIZE_MAX = 100_000
ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_()"
TABLE = bytes(ALPHABET[i % len(ALPHABET)] for i in range(256))
MID_RE = re.compile(rb"(?im)^Message-ID:[ \t]*(<[^>\r\n]+>)")


def make_message(rnd, mid):
    target = rnd.randint(SIZE_MIN, SIZE_MAX)
    head = (b"From: load@client.example\r\nTo: sink@accepted.example\r\n"
            b"Subject: crash test " + mid.encode() + b"\r\nMessage-ID: " + mid.encode() +
            b"\r\n\r\n")
    parts = [head]
    size = len(head)
    while size < target:
        ln = rnd.randbytes(rnd.randint(0, 150)).translate(TABLE)
        if rnd.random() < 0.03:
            ln = b"." + ln  # exercises dot-stuffing on the wire
        parts.append(ln + b"\r\n")
        size += len(ln) + 2
    return b"".join(parts)


class Load:
    """Sends messages from THREADS sessions; records every acknowledgement."""

    def __init__(self, port, round_no, rnd):
        self.port = port
        self.cond = threading.Condition()
        self.acked = {}      # mid -> qid
        self.sent = {}       # mid -> body (every message we tried to send)
        self.errors = []     # (time, thread, repr(exception or reply))
        self.done = 0
        self.plan = []
        nonce = "%08x" % rnd.getrandbits(32)
        for t in range(THREADS):
            msgs = []
            for i in range(PER_THREAD):
                mid = "<crash-r%d-t%d-m%d-%s@client.example>" % (round_no, t, i, nonce)
                body = make_message(rnd, mid)
                self.sent[mid] = body
                msgs.append((mid, body))
            self.plan.append(msgs)
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True)
                        for t in range(THREADS)]

    def run(self, t):
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as s:
                s.ehlo("loader%d.example" % t)
                for mid, body in self.plan[t]:
                    code, resp = s.mail("load@client.example")
                    if code != 250:
                        raise RuntimeError("MAIL: %d %r" % (code, resp))
                    code, resp = s.rcpt("sink@accepted.example")
                    if code != 250:
                        raise RuntimeError("RCPT: %d %r" % (code, resp))
                    code, resp = s.data(body)
                    if code != 250:
                        raise RuntimeError("DATA: %d %r" % (code, resp))
                    m = re.match(rb"^2\.0\.0 Ok: queued as ([0-9A-F]{16})$", resp)
                    if not m:
                        raise RuntimeError("DATA reply without queue ID: %r" % resp)
                    with self.cond:
                        self.acked[mid] = m.group(1).decode()
                        self.cond.notify_all()
        except Exception as e:  # the kill makes every session fail somewhere
            with self.cond:
                self.errors.append((time.monotonic(), t, repr(e)))
        finally:
            with self.cond:
                self.done += 1
                self.cond.notify_all()

    def start(self):
        for th in self.threads:
            th.start()

    def wait_acked(self, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.acked) < n and self.done < THREADS:
                left = deadline - time.monotonic()
                assert left > 0, "only %d messages acknowledged within %.0fs (errors: %r)" % (
                    len(self.acked), timeout, self.errors[:5])
                self.cond.wait(left)
            return len(self.acked)

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for th in self.threads:
            th.join(max(0.1, deadline - time.monotonic()))
        alive = [th for th in self.threads if th.is_alive()]
        assert not alive, "%d client threads still running after the kill" % len(alive)


def verify(server, acked, sent):
    """Every acknowledged message present and intact; every listed message one we
    sent, intact."""
    listed = server.queue_list()
    missing = [(mid, qid) for mid, qid in acked.items() if qid not in listed]
    assert not missing, "%d acknowledged messages lost after kill -9, e.g. %r" % (
        len(missing), missing[:5])
    by_qid = {qid: mid for mid, qid in acked.items()}
    assert len(by_qid) == len(acked), "one queue ID acknowledged for two messages"
    problems = []
    for qid in listed:
        r = server.ctl_run("queue", "show", qid)
        if r.returncode != 0:
            problems.append("%s: queue show exit %d: %r" % (qid, r.returncode, r.stderr[-300:]))
            continue
        try:
            _, msg = parse_show(r.stdout)
            _, rest = strip_received(msg)
        except AssertionError as e:
            problems.append("%s: %s" % (qid, e))
            continue
        m = MID_RE.search(rest.split(b"\r\n\r\n", 1)[0])
        if not m:
            problems.append("%s: stored message has no Message-ID (corrupt?) %r" % (qid, rest[:200]))
            continue
        mid = m.group(1).decode()
        if mid not in sent:
            problems.append("%s: unknown message %s" % (qid, mid))
            continue
        if rest != sent[mid]:
            problems.append("%s (%s): stored bytes differ (%d stored, %d sent)"
                            % (qid, mid, len(rest), len(sent[mid])))
        if qid in by_qid and by_qid[qid] != mid:
            problems.append("%s: acknowledged for %s but holds %s" % (qid, by_qid[qid], mid))
    assert not problems, "%d bad messages after restart:\n%s" % (len(problems),
                                                                 "\n".join(problems[:20]))
    return listed


def test_kill9_under_load_loses_no_acknowledged_message(ringmx):
    seed = int(os.environ.get("RINGMX_CRASH_SEED", "0")) or random.randrange(1, 1 << 30)
    print("crash test seed: %d (set RINGMX_CRASH_SEED to replay)" % seed)
    rnd = random.Random(seed)
    s = ringmx({"shards": 2, "spool": {"durability": "fsync"},
                "limits": {"connections_per_ip": 100, "idle_s": 120}})
    all_acked = {}
    all_sent = {}
    for round_no in (1, 2):
        load = Load(s.port, round_no, rnd)
        all_sent.update(load.sent)
        total = THREADS * PER_THREAD
        threshold = rnd.randint(total // 10, total // 2)
        load.start()
        got = load.wait_acked(threshold, timeout=180)
        with load.cond:
            pre_kill_errors = list(load.errors)
            done = load.done
        s.kill9()
        load.join(90)
        assert not pre_kill_errors, "round %d: sessions failed before the kill: %r" % (
            round_no, pre_kill_errors[:5])
        assert done < THREADS, "round %d: load finished before the kill (%d acked)" % (
            round_no, got)
        with load.cond:
            all_acked.update(load.acked)
        print("round %d: killed after %d acks (threshold %d), %d acked in total"
              % (round_no, got, threshold, len(load.acked)))
        s.start()
        listed = verify(s, all_acked, all_sent)
        assert len(listed) >= len(all_acked)
    # The restarted server still accepts and commits mail after two crashes.
    with smtplib.SMTP("127.0.0.1", s.port, timeout=30) as c:
        body = b"Subject: after\r\nMessage-ID: <after-crash@client.example>\r\n\r\nok\r\n"
        all_sent["<after-crash@client.example>"] = body
        c.ehlo("after.example")
        c.mail("load@client.example")
        c.rcpt("sink@accepted.example")
        code, resp = c.data(body)
        assert code == 250, (code, resp)
        all_acked["<after-crash@client.example>"] = resp.decode().rsplit(" ", 1)[1]
    verify(s, all_acked, all_sent)
