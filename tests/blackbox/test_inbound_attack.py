"""Attacks on the inbound connection handling: parking (the stash, its
overflow, unparking), send deadlines, BDAT bounds and STARTTLS with input held
while parked.  Each test is one attack; what it must not achieve is in its
assert messages.

Some attacks need a client whose replies the server cannot send: the server's
socket send buffer full and the client's window closed.  _stuck_client()
makes one deterministically on loopback: it never reads, sends HELP one batch
at a time and watches the server's socket (ss) until the send buffer is at the
kernel's hard cap (net.ipv4.tcp_wmem max, so autotuning cannot grow it again)
and full, then until a send is seen blocked, with the server's own output
buffer almost empty; a command sent then is parsed while the send in flight
cannot finish.  Servers it is used with log at debug level (its probes)."""

import base64
import fcntl
import re
import shutil
import signal
import socket
import struct
import subprocess
import termios

import pytest

from conftest import SMTPClient, wait_for, wait_log

FRESH_TIMEOUT_S = 5.0


def assert_fresh_client_served(server, what):
    """The process is alive and a new client gets its banner and an EHLO answer."""
    assert server.proc.poll() is None, "after %s the server died:\n%s" % (
        what, server.log_tail(30))
    c = SMTPClient(server.port, timeout=FRESH_TIMEOUT_S)
    try:
        assert c.banner.code == 220, "after %s: banner %r" % (what, c.banner)
        assert c.cmd("EHLO fresh.example").code == 250, "after %s: EHLO refused" % what
    finally:
        c.close()


# ---------------------------------------------------------------- a stuck client

def _wmem_max():
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


def _server_socket(port, cport):
    """skmem of the server's end of the connection 127.0.0.1:cport -> port, plus
    its send queue (bytes the kernel holds), or None once it is gone."""
    out = subprocess.run(["ss", "-tnmH", "( sport = :%d and dport = :%d )" % (port, cport)],
                         capture_output=True, text=True, timeout=10).stdout
    q = re.search(r"^\S+\s+\d+\s+(\d+)\s", out, re.M)
    m = re.search(r"skmem:\(([^)]*)\)", out)
    if not q or not m:
        return None
    d = {k: int(v) for k, v in re.findall(r"([a-z]+)(\d+)", m.group(1))}
    d["sendq"] = int(q.group(1))
    return d


def _fionread(sock):
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


class StuckClient:
    """A client the server cannot send to (see the module docstring)."""

    def __init__(self, server):
        if not shutil.which("ss"):
            pytest.skip("needs ss (iproute2) to watch the server's socket")
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", server.port))
        self.cport = self.sock.getsockname()[1]
        c = SMTPClient.__new__(SMTPClient)
        c.timeout, c.sock, c.buf, c.eof = 10, self.sock, b"", False
        assert c.reply().code == 220
        assert c.cmd("EHLO stuck.example").code == 250
        self.help_len = len(c.cmd("HELP").last) + 2
        assert not c.buf
        self.expected = 0  # reply bytes owed since here
        self.consumed = 0  # of them read (only to let the congestion window grow)
        self._fill()

    def _in_kernel(self):
        """Reply bytes the kernel took: in the server's send queue, in ours, or read."""
        d = _server_socket(self.server.port, self.cport)
        assert d is not None, "the server closed the filling client:\n" + self.server.log_tail()
        return d, d["sendq"] + _fionread(self.sock) + self.consumed

    def _state(self):
        d, k = self._in_kernel()
        if k >= self.expected:
            return "sent"
        if d["w"] >= d["tb"]:
            return "full" if d["tb"] >= self.cap else "full_below_cap"
        return None

    def _probe(self):
        """A command pair the server logs (state changes, debug level), so we
        know it was parsed; its replies stay owed."""
        n = self.server.log_text().count("to=mail")
        self.sock.sendall(b"MAIL FROM:<probe@client.example>\r\nRSET\r\n")
        self.expected += len(b"250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n")
        wait_for(lambda: self.server.log_text().count("to=mail") > n, 20, "a probe parsed")

    def _blocked(self):
        """Full is not enough: a small send may still fit the tail of the last
        packet.  Blocked: two probes later (the first one's send was tried by
        then) the kernel took nothing more."""
        _, k0 = self._in_kernel()
        self._probe()
        self._probe()
        return self._in_kernel()[1] == k0

    def _fill(self):
        self.cap = _wmem_max()
        for _ in range(200000):
            d, _ = self._in_kernel()
            n = max(1, min(2000, (d["tb"] - d["w"]) // 300))
            self.sock.sendall(b"HELP\r\n" * n)
            self.expected += n * self.help_len
            st = wait_for(self._state, 20, "the server to answer a HELP batch")
            if st == "full" and self._blocked():
                return
            if st == "full_below_cap":
                # Autotuning could still grow the buffer: let some data
                # flow so the congestion window (and with it the cap) grows.
                self.consumed += len(self.sock.recv(65536))
        raise AssertionError("the server's send buffer never filled")

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


@pytest.fixture
def stuck_clients():
    made = []

    def make(server):
        c = StuckClient(server)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# ------------------------------------- A1: a closed session's decision arrives late
#
# A session waiting for a tarpitted decision is closed (stash overrun, or
# shutdown) while its 421 cannot be sent.  The decision's timer then fires on
# a session in state QUIT: it must be dropped, not finish MAIL (an illegal
# QUIT -> MAIL transition aborts the whole server) or the message.

# debug: the stuck client's probes are seen in the state-change log lines.
TARPIT = {"shards": 1, "log": {"level": "debug"}, "limits": {"error_delay_ms": 500, "soft_errors": 1, "idle_s": 3,
                                  "commands": 10000000}}
JUNK = b"NOOP\r\n" * 3500  # more than the 16 KiB stash

LATE_DECISIONS = [
    ("mail", b"XYZZY\r\nMAIL FROM:<a@client.example>\r\n"),
    ("data", b"MAIL FROM:<a@client.example>\r\nRCPT TO:<r@accepted.example>\r\nXYZZY\r\n"
             b"BDAT 5 LAST\r\nhello"),
]


@pytest.mark.parametrize("stage,pipeline", LATE_DECISIONS, ids=[s for s, _ in LATE_DECISIONS])
def test_overrun_while_tarpitted_and_unread(ringmx, stuck_clients, stage, pipeline):
    s = ringmx(TARPIT)
    c = stuck_clients(s)
    c.send(pipeline + JUNK)
    wait_log(s, "input_overrun")
    assert "stage=%s" % stage in s.log_text(), "the %s decision was not pending" % stage
    # The 421 cannot go out; the send deadline (idle_s) ends the connection,
    # well after the 500 ms decision timer fired.
    wait_for(lambda: s.proc.poll() is not None or "event=send_timeout" in s.log_text(), 30,
             "the stuck connection's send deadline")
    assert_fresh_client_served(s, "a %s decision due on a closed session" % stage)
    assert s.queue_list() == {}, "a message of a closed session was queued"


def test_sigterm_while_tarpitted_and_unread(ringmx, stuck_clients):
    s = ringmx(dict(TARPIT, limits=dict(TARPIT["limits"], error_delay_ms=1500, idle_s=4)))
    c = stuck_clients(s)
    c.send(b"XYZZY\r\nMAIL FROM:<a@client.example>\r\n")
    wait_log(s, "decision_pending")
    rc = s.stop(timeout=30)
    assert rc == 0, "SIGTERM during a tarpit, client not reading: exit %r\n%s" % (
        rc, s.log_tail(20))


def test_auth_result_of_a_closed_session_is_dropped(ringmx, stuck_clients, tmp_path):
    """The password check of a session closed meanwhile answers nothing: no
    235 after the 421, no authenticated session."""
    users = tmp_path / "users"
    h = subprocess.run(["openssl", "passwd", "-6", "pw"], capture_output=True, check=True,
                       timeout=30).stdout.decode().strip()
    users.write_text("alice:%s\n" % h)
    s = ringmx({"shards": 1, "log": {"level": "debug"},
                "limits": {"idle_s": 3, "commands": 10000000},
                "auth": {"users_file": str(users)},
                "listeners": [{"name": "mx", "greet_pause_ms": 0, "tls": "none",
                               "auth": "optional", "auth_plaintext": True}]})
    c = stuck_clients(s)
    c.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0pw") + b"\r\n" + JUNK)
    wait_log(s, "input_overrun")
    wait_for(lambda: s.proc.poll() is not None or "event=send_timeout" in s.log_text(), 30,
             "the stuck connection's send deadline")
    assert_fresh_client_served(s, "a password check of a closed session")
    late = [ln for ln in s.log_text().splitlines() if "event=auth " in ln]
    assert not late, "a closed session still took its AUTH result: %r" % late
