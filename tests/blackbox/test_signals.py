"""Signals an operator or a tool sends: SIGHUP, SIGUSR1,
SIGUSR2 and SIGPIPE never stop the server nor lose the log lines its shard
threads still hold; SIGHUP says reload is not built; SIGUSR1 reopens
log.file (logrotate: move the file, then signal) and every line lands in
the old file or the new one, exactly once."""

import os
import signal
import time

import pytest

from conftest import SMTPClient, submit, wait_for, wait_log
from logparse import read_log, text

# what each signal leaves in the log (None: nothing)
SIGNAL_LINES = [
    (signal.SIGHUP, "reload"),
    (signal.SIGUSR1, "log_reopen"),
    (signal.SIGUSR2, "signal"),
    (signal.SIGPIPE, None),
]


def session(port):
    """One short SMTP session; its client port (the connect line names it)."""
    c = SMTPClient(port)
    try:
        c.ehlo()
        cport = c.sock.getsockname()[1]
        c.cmd("QUIT")
        c.read_until_closed()
        return cport
    finally:
        c.close()


def test_signals_keep_the_server_and_its_log(ringmx):
    since = time.time()
    srv = ringmx({"log": {"level": "debug"}})
    ports = []
    for sig, event in SIGNAL_LINES:
        # the session's lines are still in its shard's ring when the signal comes
        ports.append(session(srv.port))
        os.kill(srv.pid, sig)
        if event:
            wait_log(srv, event, timeout=10)
        r = srv.ctl_run("ping", timeout=10)
        assert srv.proc.poll() is None, "%s stopped the server:\n%s" % (sig.name, srv.log_tail())
        assert r.returncode == 0 and r.stdout == b"pong\n", "ping after %s: %r" % (sig.name, r)
    assert srv.stop() == 0
    records = [rec for _, rec in read_log(srv.log_path, "kv", since)]
    events = [text(r["event"]) for r in records]
    connected = {int(r["port"]) for r in records if text(r["event"]) == "connect"}
    assert set(ports) <= connected, "connect lines lost: %r not in %r" % (ports, connected)
    assert events.count("disconnect") == events.count("connect"), events
    reload = [r for r in records if text(r["event"]) == "reload"]
    assert len(reload) == 1 and text(reload[0]["status"]) == "unsupported", reload
    reopen = [r for r in records if text(r["event"]) == "log_reopen"]
    assert len(reopen) == 1 and text(reopen[0]["status"]) == "skipped", reopen
    assert events.count("stopped") == 1


def test_sigusr1_reopens_the_log_file(ringmx, tmp_path):
    since = time.time()
    path = str(tmp_path / "ringmx.log")
    srv = ringmx({"log": {"file": path}})
    first = submit(srv.port, b"Subject: one\r\n\r\nx\r\n")
    wait_for(lambda: ("id=%s" % first) in open(path).read(), 10, "the first message logged")
    os.rename(path, path + ".1")  # logrotate moves the file ...
    os.kill(srv.pid, signal.SIGUSR1)  # ... then signals
    wait_for(lambda: os.path.exists(path) and "event=log_reopen status=ok" in open(path).read(),
             10, "a new log file at %s" % path)
    second = submit(srv.port, b"Subject: two\r\n\r\nx\r\n")
    assert srv.stop() == 0
    assert srv.log_text() == "", "log lines on stderr with log.file set: %r" % srv.log_text()

    old = [rec for _, rec in read_log(path + ".1", "kv", since)]
    new = [rec for _, rec in read_log(path, "kv", since)]

    def queued(recs):
        return [text(r["id"]) for r in recs if text(r["event"]) == "queued"]
    assert queued(old) == [first] and queued(new) == [second], (queued(old), queued(new))
    assert [text(r["event"]) for r in old].count("started") == 1
    assert [text(r["event"]) for r in new].count("stopped") == 1
    assert os.stat(path).st_mode & 0o077 in (0o040, 0o000), oct(os.stat(path).st_mode)


@pytest.mark.parametrize("where", ["dir", "missing"])
def test_log_file_that_cannot_be_opened_stops_the_start(ringmx, tmp_path, where):
    path = str(tmp_path) if where == "dir" else str(tmp_path / "no" / "such" / "ringmx.log")
    srv = ringmx({"log": {"file": path}}, start=False)
    srv.start(wait=False)
    rc = srv.proc.wait(timeout=20)
    srv._reap(rc, "start refused")
    assert rc == 1, "start with log.file %s: exit %r" % (path, rc)
    assert "log.file: %s" % path in srv.log_text(), srv.log_text()
