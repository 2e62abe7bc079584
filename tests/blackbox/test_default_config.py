"""The README's start command: ringmx on its embedded default config delivers
mail for localhost into ./maildir under its working directory.

The embedded default listens on 127.0.0.1:2525, which a benchmark peer
(Postfix) may hold on this machine, so the check runs in a network namespace
of its own (unshare -n: a private loopback)."""

import os
import subprocess
import sys
import tempfile

from conftest import RINGMX_BIN

INNER = r'''
import mailbox, os, signal, smtplib, subprocess, sys, time
bin, d = sys.argv[1], sys.argv[2]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
log = open(os.path.join(d, "stderr.log"), "wb")
proc = subprocess.Popen([bin], cwd=d, stdout=log, stderr=subprocess.STDOUT)
try:
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join(d, "ringmx.sock")):
        assert time.monotonic() < deadline, "server not up"
        time.sleep(0.05)
    s = smtplib.SMTP("127.0.0.1", 2525, timeout=20)
    s.sendmail("someone@client.example", ["you@localhost"],
               b"Subject: default\r\nMessage-ID: <def-1@client.example>\r\n\r\n.dot\r\n")
    s.quit()
    md = os.path.join(d, "maildir", "localhost", "you")
    while not (os.path.isdir(os.path.join(md, "new")) and os.listdir(os.path.join(md, "new"))):
        assert time.monotonic() < deadline + 20, "no file in ./maildir"
        time.sleep(0.05)
    msgs = list(mailbox.Maildir(md, create=False))
    assert len(msgs) == 1, msgs
    m = msgs[0]
    assert m["Message-ID"] == "<def-1@client.example>", m["Message-ID"]
    assert m["Delivered-To"] == "you@localhost", m["Delivered-To"]
    assert m.get_payload() == ".dot\n", repr(m.get_payload())
finally:
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=20)
    log.close()
assert rc == 0, open(os.path.join(d, "stderr.log")).read()[-2000:]
print("INNER OK")
'''


def test_embedded_default_delivers_into_maildir():
    with tempfile.TemporaryDirectory(prefix="rmxdef") as d:
        r = subprocess.run(["unshare", "-n", sys.executable, "-c", INNER, RINGMX_BIN, d],
                           capture_output=True, timeout=90)
        out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        log = os.path.join(d, "stderr.log")
        if os.path.exists(log):
            out += "\n--- ringmx log ---\n" + open(log, errors="replace").read()[-3000:]
        assert r.returncode == 0 and "INNER OK" in out, out
