"""Attacks on the inbound connection handling: parking (the stash, its
overflow, unparking), send deadlines, BDAT bounds and STARTTLS with input held
while parked.  Each test is one attack; what it must not achieve is in its
assert messages.

Some attacks need a client whose replies the server cannot send: the server's
socket send buffer full and the client's window closed.  _stuck_client()
makes one deterministically on loopback: it never reads, sends HELP one batch
at a time and watches the server's socket (ss) until the send buffer is at the
kernel's hard cap (net.ipv4.tcp_wmem max, so autotuning cannot grow it again)
and a send of it is seen blocked, with the server's own output buffer far from
full; a command sent then is parsed while the send in flight cannot finish.
Servers it is used with log at debug level (it watches for its probes).
Those tests run in a network namespace whose TCP send buffers are 4 KiB
(small_buffers_net), so the fill takes a few rounds even on a loaded machine."""

import base64
import ctypes
import fcntl
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import termios
import threading

import pytest

from conftest import SMTPClient, queued_id, strip_received, wait_for, wait_log
from tlsutil import certs, client_context, recv_reply  # noqa: F401

import test_ipv6_clients

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


def _server_skmem(port, cport):
    """skmem of the server's end of 127.0.0.1:cport -> port (ss), or None."""
    out = subprocess.run(["ss", "-tnmH", "( sport = :%d and dport = :%d )" % (port, cport)],
                         capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"skmem:\(([^)]*)\)", out)
    return {k: int(v) for k, v in re.findall(r"([a-z]+)(\d+)", m.group(1))} if m else None


TCP_ESTABLISHED = 1


def _server_queues(port, cport):
    """(send queue, receive queue, TCP state) of the server's end of
    127.0.0.1:cport -> port (/proc/net/tcp: cheap enough to ask after every
    batch), or None."""
    local, remote = ":%04X" % port, ":%04X" % cport
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            if p[1].endswith(local) and p[2].endswith(remote):
                tx, rx = p[4].split(":")
                return int(tx, 16), int(rx, 16), int(p[3], 16)
    return None


def _outq(sock):
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def _fionread(sock):
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


class StuckClient:
    """A client the server cannot send to (see the module docstring)."""

    ROUND = 38  # HELPs per careful round (3420 reply bytes, below 4096 - 512)

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

    def _in_kernel(self):
        """Reply bytes the kernel took: in the server's send queue, in ours, or read."""
        q = _server_queues(self.server.port, self.cport)
        assert q is not None, "the server closed the filling client:\n" + self.server.log_tail()
        return q[0] + _fionread(self.sock) + self.consumed

    def _skmem(self):
        d = _server_skmem(self.server.port, self.cport)
        assert d is not None, "the server closed the filling client:\n" + self.server.log_tail()
        return d

    def _send_helps(self, n):
        self.sock.sendall(b"HELP\r\n" * n)
        self.expected += n * self.help_len

    def _probe(self):
        """A command pair the server logs (state changes, debug level): once
        its lines are out, everything sent before it was parsed."""
        seen = self.server.log_text().count("to=mail")
        self.sock.sendall(b"MAIL FROM:<probe@client.example>\r\nRSET\r\n")
        self.expected += len(b"250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n")
        wait_for(lambda: self.server.log_text().count("to=mail") > seen, 20, "a probe parsed")

    def _blocked(self):
        """Are replies owed that the kernel did not take?  After two probes:
        the first one's parse, and the send tried at the end of that loop
        turn, came before the second one's parse."""
        self._probe()
        owed = self.expected
        self._probe()
        return self._in_kernel() < owed

    def fill(self):
        cap = _wmem_max()
        # Fast: up to half the send buffer every send finishes at once.
        while True:
            d = self._skmem()
            if d["w"] * 2 >= d["tb"]:
                break
            self._send_helps(max(1, min(2000, (d["tb"] // 2 - d["w"]) // 300)))
            wait_for(lambda: self._in_kernel() >= self.expected, 20, "a HELP batch sent")
        # Careful: rounds small enough that the replies of one blocked round
        # and two probes still leave the server's 4 KiB buffer room to parse.
        for _ in range(100000):
            self._send_helps(self.ROUND)
            try:
                # Only a shortcut: the probes below decide.
                wait_for(lambda: self._in_kernel() >= self.expected, 0.2, "a round sent",
                         interval=0.001)
                continue
            except AssertionError:
                pass
            if not self._blocked():
                continue
            if self._skmem()["tb"] >= cap:
                return  # and autotuning cannot make room any more
            # Below the cap a later ACK could grow the buffer: take every
            # reply owed, so data flows and the congestion window (with it
            # the buffer) grows, and the server's own buffer is empty again.
            while self._in_kernel() < self.expected or _fionread(self.sock):
                self.consumed += len(self.sock.recv(65536))
        raise AssertionError("the server's send buffer never filled")

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


CLONE_NEWNET = 0x40000000
SMALL_TCP_MEM = "4096 4096 4096"


@pytest.fixture
def small_buffers_net():
    """Run the test in a network namespace of its own whose TCP buffers are
    4 KiB and cannot grow (net.ipv4.tcp_wmem/tcp_rmem are per namespace).
    Filling a stuck client then takes a few rounds, not megabytes: on a
    loaded machine a long fill outlasted the server's send deadline and its
    parking of clients that do not read.  The server, ss and the clients
    started in the test body inherit it; the test process goes back after."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            pytest.skip("cannot make a network namespace: %s" % os.strerror(ctypes.get_errno()))
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)
            with open("/proc/sys/net/ipv4/tcp_wmem", "w") as f:
                f.write(SMALL_TCP_MEM)
            with open("/proc/sys/net/ipv4/tcp_wmem") as f:
                assert f.read().split() == SMALL_TCP_MEM.split(), "tcp_wmem is not per namespace"
            yield
        finally:
            assert libc.setns(home, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(home)


@pytest.fixture
def stuck_clients(small_buffers_net):
    made = []

    def make(server):
        c = StuckClient(server)
        made.append(c)  # closed even when filling fails: the server must not wait on it
        c.fill()
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
# idle_s bounds the stuck send from the moment it blocks, which is during
# the fill: it must outlast a fill on a loaded machine (ASan, 2 cores).
TARPIT = {"shards": 1, "log": {"level": "debug"}, "limits": {"error_delay_ms": 500, "soft_errors": 1, "idle_s": 8,
                                  "commands": 10000000}}
JUNK = b"NOOP\r\n" * 3500  # more than the 16 KiB stash
# Each recv takes one buffer, and a parked connection's recv is cancelled at
# once: what it holds when it parks is the rest of the buffer its waiting
# command came in.  So for that to overflow the stash, the buffer must be
# larger than the stash (the one write of pipeline and JUNK lands in it).
OVERRUN_IO = {"recv_buffer_size": 65536}

LATE_DECISIONS = [
    ("mail", b"XYZZY\r\nMAIL FROM:<a@client.example>\r\n"),
    ("data", b"MAIL FROM:<a@client.example>\r\nRCPT TO:<r@accepted.example>\r\nXYZZY\r\n"
             b"BDAT 5 LAST\r\nhello"),
]


@pytest.mark.parametrize("stage,pipeline", LATE_DECISIONS, ids=[s for s, _ in LATE_DECISIONS])
def test_overrun_while_tarpitted_and_unread(ringmx, stuck_clients, stage, pipeline):
    s = ringmx(dict(TARPIT, io=OVERRUN_IO))
    c = stuck_clients(s)
    c.send(pipeline + JUNK)
    wait_log(s, "input_overrun")
    assert "stage=%s" % stage in s.log_text(), "the %s decision was not pending" % stage
    # The 421 cannot go out; the send deadline (idle_s) ends the connection,
    # well after the 500 ms decision timer fired.
    wait_for(lambda: s.proc.poll() is not None or "event=send_timeout" in s.log_text(), 60,
             "the stuck connection's send deadline")
    assert_fresh_client_served(s, "a %s decision due on a closed session" % stage)
    assert s.queue_list() == {}, "a message of a closed session was queued"


def test_sigterm_while_tarpitted_and_unread(ringmx, stuck_clients):
    s = ringmx(dict(TARPIT, limits=dict(TARPIT["limits"], error_delay_ms=1500, idle_s=9)))
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
    s = ringmx({"shards": 1, "log": {"level": "debug"}, "io": OVERRUN_IO,
                "limits": {"idle_s": 8, "commands": 10000000},
                "auth": {"users_file": str(users)},
                "listeners": [{"name": "mx", "greet_pause_ms": 0, "tls": "none",
                               "auth": "optional", "auth_plaintext": True}]})
    c = stuck_clients(s)
    c.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0pw") + b"\r\n" + JUNK)
    wait_log(s, "input_overrun")
    wait_for(lambda: s.proc.poll() is not None or "event=send_timeout" in s.log_text(), 60,
             "the stuck connection's send deadline")
    assert_fresh_client_served(s, "a password check of a closed session")
    late = [ln for ln in s.log_text().splitlines() if "event=auth " in ln]
    assert not late, "a closed session still took its AUTH result: %r" % late


# ------------------------------- A2: a pipelining client that reads is never cut off
#
# RFC 2920 3.2: the server must not lose a client's pipelined input.  A group
# whose replies outgrow the server's 4 KiB output buffer fills it for a
# moment while the send is in flight; a client that reads them is not a
# client that does not read, and must not be parked (its pending commands
# squeezed into the stash, the connection closed with 421 when they do not
# fit).  The client here writes from one thread and reads from another, as
# RFC 2920 5 asks.

def _pipeline_reading(c, group, n_replies):
    sender = threading.Thread(target=c.send, args=(group,), daemon=True)
    sender.start()
    try:
        return c.replies(n_replies, timeout=30)
    finally:
        sender.join(timeout=30)


@pytest.mark.parametrize("buffer_size", [16384, 4096])
def test_large_rcpt_group_of_a_reading_client(ringmx, client_factory, buffer_size):
    n = 1000
    s = ringmx({"shards": 1, "io": {"recv_buffer_size": buffer_size},
                "limits": {"recipients": n}})
    c = client_factory(s.port, timeout=30)
    c.ehlo()
    group = b"MAIL FROM:<list@client.example>\r\n" + b"".join(
        b"RCPT TO:<member%d@accepted.example>\r\n" % i for i in range(n)) + b"DATA\r\n"
    rs = _pipeline_reading(c, group, n + 2)
    codes = [r.code for r in rs]
    assert codes == [250] * (n + 1) + [354], "replies to MAIL, %d RCPT, DATA: %r" % (
        n, sorted(set((i, x) for i, x in enumerate(codes) if x != 250))[:5])
    c.send(b"Subject: list\r\n\r\nbody\r\n.\r\n")
    assert c.reply().startswith("250 2.0.0 Ok: queued as ")
    assert "input_overrun" not in s.log_text()


def test_pipelined_replies_keep_their_order(ringmx, client_factory):
    s = ringmx({"shards": 1, "limits": {"commands": 100000}})
    c = client_factory(s.port, timeout=30)
    c.ehlo()
    cmds = [(b"NOOP", "250 2.0.0 Ok"), (b"VRFY postmaster", "252 2.5.2"),
            (b"HELP", "214 2.0.0"), (b"RSET", "250 2.0.0 Ok")]
    n = 4000
    group = b"".join(cmds[i % 4][0] + b"\r\n" for i in range(n))
    rs = _pipeline_reading(c, group, n)
    wrong = [(i, r.last) for i, r in enumerate(rs) if not r.last.startswith(cmds[i % 4][1])]
    assert not wrong, "replies out of order (first ones): %r" % wrong[:5]
    assert c.cmd("QUIT").code == 221


def test_clients_that_stop_reading_give_back_their_buffers(ringmx, stuck_clients):
    """The other side of A2: clients that do not read, each holding receive
    buffers full of commands it cannot parse, are parked (or, past the
    stash, closed) soon, not at their send deadline: a fresh client whose
    EHLO needs a buffer of the same pool is served."""
    s = ringmx({"shards": 1, "log": {"level": "debug"}, "io": {"recv_buffers": 16},
                "limits": {"idle_s": 120, "commands": 10000000}})
    hogs = [stuck_clients(s) for _ in range(4)]
    for h in hogs:
        # About 5 receive buffers' worth of commands it cannot parse: held
        # (no parking) or stashed past its end (closed), never all dropped
        # as more than CONN_INQ_MAX buffers would be.
        h.send(b"HELP\r\n" * 13000)
    # All of it has left the clients, so the server received it.
    wait_for(lambda: all(_outq(h.sock) == 0 for h in hogs), 30, "the hogs' input sent")
    assert_fresh_client_served(s, "four clients that do not read, 16 receive buffers")


# ------------------------------------------- A3: the replies due before a 421
#
# A pipelined group: a message (BDAT LAST), then a tarpitted MAIL and more
# input than the stash.  The overrun's 421 must come after the replies
# already due -- the 250 of the message queued in the same group above all:
# a client that never sees it sends the message again (a duplicate).

def test_overrun_keeps_the_queued_reply(ringmx, client_factory):
    s = ringmx({"shards": 1, "limits": {"error_delay_ms": 1000, "soft_errors": 1}})
    c = client_factory(s.port)
    c.ehlo()
    c.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<r@accepted.example>\r\n"
           b"BDAT 5 LAST\r\nhello"
           b"XYZZY\r\nMAIL FROM:<b@client.example>\r\n" + JUNK)
    replies = [r.last for r in c.replies_until_closed()]
    assert len(replies) == 5 and replies[4].startswith("421 4.7.0"), replies
    qid = queued_id(replies[2])  # the message's 250, not dropped for the 421
    assert replies[3].startswith("500"), replies
    assert list(s.queue_list()) == [qid]


# ---------------------------------------------- A4: SIGTERM and a tarpitted message
#
# A message whose data-stage decision is tarpitted is not being committed
# yet: shutdown must close it with 421 like any waiting session, not keep
# the process for its whole grace period and drop it without a word.

def test_sigterm_closes_a_tarpitted_message(ringmx, client_factory):
    s = ringmx({"shards": 1, "limits": {"error_delay_ms": 60000, "soft_errors": 1}})
    c = client_factory(s.port, timeout=30)
    c.ehlo()
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<r@accepted.example>", "250")
    assert c.cmd("XYZZY").code == 500
    c.send(b"BDAT 5 LAST\r\nhello")
    wait_log(s, "decision_pending")
    s.proc.send_signal(signal.SIGTERM)
    replies = [r.last for r in c.replies_until_closed(timeout=30)]
    assert replies and replies[-1].startswith("421 4.3.2"), \
        "a tarpitted message at shutdown got %r, expected 421" % replies
    assert s.stop(timeout=30) == 0


# -------------------------------------------------- A5: what the stash holds
#
# Input that arrives while a session is parked waits in its stash and is fed
# when the wait ends.  It must be fed as what the session expects then: body
# bytes of a BDAT chunk stay body bytes, commands after STARTTLS are
# discarded (CVE-2011-0411), never run inside TLS.

TARPIT_SHORT = {"shards": 1, "limits": {"error_delay_ms": 300, "soft_errors": 1}}


def test_bdat_body_in_the_stash_is_stored_verbatim(ringmx, client_factory):
    s = ringmx(TARPIT_SHORT)
    c = client_factory(s.port, timeout=30)
    c.ehlo()
    assert c.cmd("XYZZY").code == 500  # every decision is tarpitted from now on
    # Body bytes that read as commands, a dot line, a lone "." chunk edge.
    body1 = b"Subject: x\r\n\r\nQUIT\r\nRSET\r\nMAIL FROM:<evil@client.example>\r\n.\r\n"
    body2 = b"STARTTLS\r\n.\r\nDATA\r\n"
    c.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<r@accepted.example>\r\n"
           b"BDAT %d\r\n" % len(body1) + body1 + b"BDAT %d LAST\r\n" % len(body2) + body2 +
           b"NOOP\r\n")
    rs = c.replies(5, timeout=30)
    assert [r.code for r in rs] == [250, 250, 250, 250, 250], rs
    assert rs[2].last == "250 2.0.0 %d octets received" % len(body1), rs
    qid = queued_id(rs[3])
    _, msg = s.queue_show(qid)
    assert strip_received(msg)[1] == body1 + body2, "stored body differs: %r" % msg[-200:]
    assert "decision_pending" in s.log_text(), "nothing was parked"


def test_starttls_injection_in_the_stash_discarded(ringmx, certs):
    cert, key = certs.leaf("mx.test")
    s = ringmx(dict(TARPIT_SHORT, tls={"certificates": [
        {"cert": cert, "key": key, "names": ["mx.test"]}]}))
    c = SMTPClient(s.port, timeout=30)
    try:
        c.ehlo()
        assert c.cmd("XYZZY").code == 500
        # The EHLO parks the session; STARTTLS and the injected MAIL wait in
        # its stash (one write: they share a packet).
        c.send(b"EHLO again.example\r\nSTARTTLS\r\nMAIL FROM:<evil@client.example>\r\n")
        rs = c.replies(2)
        assert rs[0].code == 250 and rs[1].last == "220 2.0.0 Ready to start TLS", rs
        assert not c.buf, "bytes after the 220: %r" % c.buf
        t = client_context(ca=certs.ca).wrap_socket(c.sock, server_hostname="mx.test")
        t.sendall(b"EHLO tls.example\r\n")
        assert recv_reply(t, timeout=20)[0].startswith("250-")
        t.sendall(b"RCPT TO:<r@accepted.example>\r\n")
        lines = recv_reply(t, timeout=20)
        assert lines[0].startswith("503 "), "the injected MAIL ran inside TLS: %r" % lines
        t.close()
        wait_log(s, "starttls_injection")
    finally:
        c.close()


@pytest.mark.parametrize("state", ["greeted", "mail", "after_refused_chunk", "rcpt_tls"])
def test_huge_bdat_in_every_state_is_refused_at_once(ringmx, certs, state):
    cert, key = certs.leaf("mx.test")
    s = ringmx({"shards": 1, "limits": {"message_size": 10000},
                "tls": {"certificates": [{"cert": cert, "key": key, "names": ["mx.test"]}]}})
    c = SMTPClient(s.port, timeout=30)
    try:
        if state != "greeted":
            c.ehlo()
        if state == "mail":
            c.expect("MAIL FROM:<a@client.example>", "250")
        if state == "after_refused_chunk":
            c.send(b"BDAT 3\r\nabc")  # refused (no transaction), its bytes read
            assert c.reply().code == 503
        if state == "rcpt_tls":
            c.send(b"STARTTLS\r\n")
            assert c.reply().code == 220
            t = client_context(ca=certs.ca).wrap_socket(c.sock, server_hostname="mx.test")
            t.sendall(b"EHLO tls.example\r\nMAIL FROM:<a@client.example>\r\n"
                      b"RCPT TO:<r@accepted.example>\r\nBDAT 99999999999 LAST\r\n")
            data = b""
            while True:
                chunk = t.recv(65536)
                if not chunk:
                    break
                data += chunk
            assert data.rstrip().split(b"\r\n")[-1].startswith(b"552 5.3.4"), data
            return
        c.send(b"BDAT 18446744073709551615 LAST\r\n")
        rs = [r.last for r in c.replies_until_closed()]
        assert [r[:9] for r in rs] == ["552 5.3.4"], rs
        assert_fresh_client_served(s, "BDAT 2^64-1 in state %s" % state)
    finally:
        c.close()


# --------------------------------------------- A6: a client that half-closes
#
# RFC 5321 4.1.1.10: a client may close once it has sent QUIT; one that only
# shuts down its sending side (FIN) still reads the replies.  The server
# must answer everything it received before the FIN: dropping the replies
# when the message is already being committed leaves it queued while the
# client, never seeing its 250, sends it again.

HALF_CLOSE = [
    ("bdat", {}, b""),
    ("data", {}, None),
    ("tarpitted", {"limits": {"error_delay_ms": 300, "soft_errors": 1}}, b"XYZZY\r\n"),
]


@pytest.mark.parametrize("kind,over,before", HALF_CLOSE, ids=[k for k, _, _ in HALF_CLOSE])
def test_half_closed_client_gets_every_reply(ringmx, client_factory, kind, over, before):
    s = ringmx(dict({"shards": 1}, **over))
    c = client_factory(s.port, timeout=30)
    c.ehlo()
    if kind == "data":
        group = (b"MAIL FROM:<a@client.example>\r\nRCPT TO:<r@accepted.example>\r\nDATA\r\n"
                 b"Subject: h\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        codes = [250, 250, 354, 250, 221]
    else:
        group = before + (b"MAIL FROM:<a@client.example>\r\nRCPT TO:<r@accepted.example>\r\n"
                          b"BDAT 7 LAST\r\nhello\r\nQUIT\r\n")
        codes = ([500] if before else []) + [250, 250, 250, 221]
    c.send(group)
    c.sock.shutdown(socket.SHUT_WR)
    rs = c.replies_until_closed()
    assert [r.code for r in rs] == codes, "replies after a FIN: %r" % [r.last for r in rs]
    assert list(s.queue_list()) == [queued_id(rs[-2])]


# ----------------------------------------------- A7: the listener probe at start
#
# The probe refuses to start when another process holds a listener address.
# The previous instance of this very server is not another process: its
# listening sockets may outlive it by a few milliseconds (io_uring tears its
# ring down, and the requests holding them, after the process is gone), so a
# restart (systemctl restart) must not be refused.

def test_quick_restarts_are_not_refused(ringmx):
    s = ringmx({"shards": 2})
    for i in range(8):
        c = SMTPClient(s.port)
        c.ehlo()  # a session in progress at each stop
        s.restart()
        c.close()
    assert_fresh_client_served(s, "eight quick restarts")


# ------------------------------------------------- A8: more parked clients than buffers

def test_parked_clients_all_resume_when_user_buffers_run_out(ringmx, tmp_path):
    """60 clients park while their password is checked, each with a message
    and 12 KB of commands pipelined behind AUTH.  On resume each stash goes
    into one of only 16 user buffers, held while the message commits: many
    find none (checked once with a log line there: ~40 of 60) and must be
    retried, never forgotten; all get every reply in order."""
    users = tmp_path / "users"
    h = subprocess.run(["openssl", "passwd", "-6", "pw"], capture_output=True, check=True,
                       timeout=30).stdout.decode().strip()
    users.write_text("alice:%s\n" % h)
    s = ringmx({"shards": 1, "io": {"recv_buffers": 16}, "auth": {"users_file": str(users)},
                "limits": {"connections_per_ip": 100},
                "listeners": [{"name": "mx", "greet_pause_ms": 0, "tls": "none",
                               "auth": "optional", "auth_plaintext": True}]})
    clients = []
    try:
        for _ in range(60):
            c = SMTPClient(s.port, timeout=60)
            clients.append(c)
            c.ehlo()
        for i, c in enumerate(clients):
            c.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0pw") + b"\r\n"
                   b"MAIL FROM:<c%d@client.example>\r\nRCPT TO:<r@accepted.example>\r\n"
                   b"BDAT 8 LAST\r\nclient%02d" % (i, i) + b"NOOP\r\n" * 2000 + b"QUIT\r\n")
        qids = set()
        for i, c in enumerate(clients):
            rs = c.replies_until_closed(timeout=60)
            codes = [r.code for r in rs]
            assert codes == [235, 250, 250, 250] + [250] * 2000 + [221], \
                "client %d: %r" % (i, codes[:8])
            qids.add(queued_id(rs[3]))
        assert set(s.queue_list()) == qids and len(qids) == 60
    finally:
        for c in clients:
            c.close()


# ------------------------------------------------------ A9: the IPv6 /64 count
#
# Clients of one /64 come and go, refused or not, closing before or after
# the banner: the /64's count must come back to zero each time (never leak,
# never go below), so the limit still admits exactly connections_per_ip.

V6_CHURN = test_ipv6_clients.PRELUDE + r'''
import random
s, port6 = server({"limits": {"connections_per_ip": 2}})
try:
    rnd = random.Random(7)
    srcs = ["2001:db8:1::a", "2001:db8:1::b", "2001:db8:1::c", "2001:db8:1:0:ffff::d"]

    def both_slots():
        """Two clients of the /64 admitted (the last round's may still be
        leaving: retried until they are gone)."""
        a = v6_client(port6, rnd.choice(srcs))
        b = v6_client(port6, rnd.choice(srcs))
        if a.banner.code == 220 and b.banner.code == 220:
            return [a, b]
        a.close(); b.close()
        return None
    for round_ in range(30):
        held = conftest.wait_for(both_slots, 10, "both slots of the /64, round %d" % round_)
        for _ in range(rnd.randint(0, 2)):  # more of the same /64: refused
            c = v6_client(port6, rnd.choice(srcs))
            assert c.banner.startswith("421 4.7.0"), c.banner
            held.append(c)
        for c in held:  # leave in different ways
            if rnd.random() < 0.5:
                c.send(b"QUIT\r\n")
            c.close()
    # After all of it, exactly two again.
    held = conftest.wait_for(both_slots, 10, "both slots at the end")
    third = v6_client(port6, srcs[2])
    assert third.banner.startswith("421 4.7.0"), third.banner
finally:
    finish(s)
print("INNER OK")
'''


def test_ipv6_64_count_never_leaks():
    test_ipv6_clients.run_in_netns(V6_CHURN)
