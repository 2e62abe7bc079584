"""IPv6 clients are counted per /64 by every per-client limit (one subscriber
gets a whole /64), and an IPv6 client is written as an RFC 5321 address
literal.  Loopback has only ::1, so each test runs in a network namespace of
its own (unshare -n) with documentation addresses on lo."""

import os
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

PRELUDE = r'''
import os, socket, subprocess, sys
sys.path.insert(0, sys.argv[1])
import conftest
from conftest import SMTPClient
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
ADDRS = ["2001:db8:1::1", "2001:db8:1::a", "2001:db8:1::b", "2001:db8:1::c",
         "2001:db8:1:0:ffff::d", "2001:db8:2::1"]
for a in ADDRS:
    subprocess.run(["ip", "-6", "addr", "add", a + "/64", "dev", "lo", "nodad"], check=True)

def v6_client(port, src, timeout=10):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("2001:db8:1::1", port))
    c = SMTPClient.__new__(SMTPClient)
    c.timeout, c.sock, c.buf, c.eof = timeout, s, b"", False
    c.banner = c.reply()
    return c

def server(over):
    port6 = conftest.free_port()
    base = {"shards": 1, "listeners": [
        {"name": "mx", "greet_pause_ms": 0},
        {"name": "mx6", "address": "[::]:%d" % port6, "greet_pause_ms": 0}]}
    s = conftest.Server(conftest.deep_merge(base, over))
    s.start()
    return s, port6

def finish(s):
    rc = s.stop()
    assert rc == 0, "ringmx exited %r:\n%s" % (rc, s.log_tail())
    bad = [l for l in s.all_logs().splitlines() if any(m in l for m in conftest.SANITIZER_MARKERS)]
    assert not bad, bad
'''

CONN_LIMIT = PRELUDE + r'''
s, port6 = server({"limits": {"connections_per_ip": 2}})
try:
    held = [v6_client(port6, "2001:db8:1::a"), v6_client(port6, "2001:db8:1::b")]
    for c in held:
        assert c.banner.code == 220, c.banner
    # A third address of the same /64 is the same client.
    for src in ("2001:db8:1::c", "2001:db8:1:0:ffff::d"):
        c = v6_client(port6, src)
        assert c.banner.startswith("421 4.7.0"), "%s, 3rd of one /64: %r" % (src, c.banner)
        c.close()
    # Another /64 is another client.
    c = v6_client(port6, "2001:db8:2::1")
    assert c.banner.code == 220, "another /64 refused: %r" % c.banner
    c.close()
    held[0].cmd("QUIT")
    held[0].close()
    # Its slot is free again once the first one left.
    conftest.wait_for(lambda: v6_client(port6, "2001:db8:1::c").banner.code == 220, 10,
                      "a slot of the /64 after one client left")
    conftest.wait_for(lambda: "reason=connections_per_ip" in s.all_logs(), 10,
                      "the refusal's log line")
finally:
    finish(s)
print("INNER OK")
'''

RECEIVED = PRELUDE + r'''
s, port6 = server({})
try:
    c = v6_client(port6, "2001:db8:1::a")
    c.ehlo("[IPv6:2001:db8:1::a]")
    qid = conftest.queued_id(c.send_message(b"Subject: v6\r\n\r\nhi\r\n", ehlo=False))
    c.cmd("QUIT")
    env, msg = s.queue_show(qid)
    first = conftest.unfold(conftest.strip_received(msg)[0]).decode()
    assert "from [IPv6:2001:db8:1::a] ([IPv6:2001:db8:1::a])" in first, first
    # Logs keep the plain form.
    conftest.wait_for(lambda: "client=2001:db8:1::a" in s.all_logs(), 10, "client= in the log")
finally:
    finish(s)
print("INNER OK")
'''


def run_in_netns(script):
    with tempfile.TemporaryDirectory(prefix="rmxv6") as d:
        env = dict(os.environ, TMPDIR=d)
        r = subprocess.run(["unshare", "-n", sys.executable, "-c", script, HERE],
                           capture_output=True, timeout=120, env=env)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    if r.returncode != 0 and "unshare failed" in out:
        pytest.skip("cannot make a network namespace: " + out[-300:])
    assert r.returncode == 0 and "INNER OK" in out, out[-6000:]


def test_connections_per_ip_counts_ipv6_by_64():
    run_in_netns(CONN_LIMIT)


def test_received_writes_ipv6_address_literal():
    run_in_netns(RECEIVED)
