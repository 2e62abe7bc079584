"""TLS 1.3 key update floods (RFC 8446 4.6.3) from a peer that never reads.

Each KeyUpdate with update_requested makes the receiver's TLS layer write an
answer of its own.  A peer that floods such requests and never reads fills
that output: reading on must stop until it is sent, and wolfSSL must never be
left holding output it could not hand over (with its own output pending,
wolfSSL 5.5.4 read past its output buffer: the ASan build caught it in
tls_io_send on the server side).  Both sides are attacked: clients of the
server, and a next hop that the delivery client talks to (whose read loop
went round without end while the TLS layer took nothing).

Python's ssl module has no call for KeyUpdate, so the tests call OpenSSL's
SSL_key_update() on the SSL object of the socket (ctypes); they check that
they found the right object first and skip, saying why, if not."""

import socket
import ssl
import threading
import time

import pytest

from conftest import (SMTPClient, delivery_overrides, make_message, route, submit, wait_for,
                      wait_log)
from tlsutil import certs, client_context, libssl, recv_reply, ssl_pointer  # noqa: F401

MX = "mx.test"
HOP = "hop.test"
SSL_KEY_UPDATE_REQUESTED = 1
SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE = 2, 3


def _flood(lib, t, quiet_s=1.5, limit_s=60):
    """Key update requests, never reading, until the peer has taken none
    for quiet_s (it stopped reading, or it is gone).  Returns how many went."""
    p = ssl_pointer(lib, t)
    t.setblocking(False)
    sent, last = 0, time.monotonic()
    end = last + limit_s
    while time.monotonic() - last < quiet_s and time.monotonic() < end:
        # Refused while the previous one is unwritten; the handshake call
        # flushes it.
        lib.SSL_key_update(p, SSL_KEY_UPDATE_REQUESTED)
        r = lib.SSL_do_handshake(p)
        if r == 1:
            sent += 1
            last = time.monotonic()
            continue
        if lib.SSL_get_error(p, r) not in (SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE):
            break  # the peer closed the connection
        time.sleep(0.005)  # pacing while the socket is full, not a synchronisation
    return sent


def _served(port):
    """A fresh client gets a whole transaction through (a spinning or dead
    shard would not answer)."""
    c = SMTPClient(port, timeout=30)
    try:
        assert c.ehlo().code == 250
    finally:
        c.close()


def test_clients_flooding_key_updates_never_reading(ringmx, certs):
    """Twelve clients, each held open, flood key update requests with a
    4 KiB receive window: the server stops reading each once its answers
    are stuck, and stays up and serving."""
    lib = libssl()
    cert, key = certs.leaf(MX)
    # A flooder whose answers are stuck is not parked: it keeps up to
    # inq_cap (recv_buffers / 8, at most 8) receive buffers until its idle
    # limit.  With 16 buffers, twelve of them could hold all 16 and starve
    # the next client's EHLO, one run in four (a known defect, in the stop
    # note); 128 buffers leave 32 free whatever they hold.
    srv = ringmx({"shards": 1, "io": {"recv_buffers": 128}, "limits": {"idle_s": 120},
                  "tls": {"certificates": [{"cert": cert, "key": key, "names": [MX]}]}})
    held = []
    try:
        for i in range(12):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            assert recv_reply(s)[0].startswith("220 ")
            s.sendall(b"EHLO tls.example\r\n")
            recv_reply(s)
            s.sendall(b"STARTTLS\r\n")
            assert recv_reply(s) == ["220 2.0.0 Ready to start TLS"]
            ctx = client_context(ca=certs.ca, min_version=ssl.TLSVersion.TLSv1_3)
            t = ctx.wrap_socket(s, server_hostname=MX)
            held.append(t)
            t.sendall(b"EHLO tls.example\r\n")
            assert recv_reply(t)[-1].startswith("250 ")
            assert _flood(lib, t) > 0
            assert srv.proc.poll() is None, "the server died during flood %d:\n%s" % (
                i + 1, srv.log_tail(30))
        _served(srv.port)
        mid = "ku-after@client.example"
        qid = submit(srv.port, make_message(mid, "after the flood"))
        assert qid
    finally:
        for t in held:
            t.close()
    assert srv.proc.poll() is None


def _command(s):
    """One command line from the client (up to CRLF)."""
    buf = b""
    while not buf.endswith(b"\r\n"):
        b = s.recv(1)
        if not b:
            raise ConnectionError("closed after %r" % buf)
        buf += b
    return buf


class _FloodingHop:
    """A next hop that answers up to the TLS EHLO, then floods key update
    requests and never reads again."""

    def __init__(self, lib, cert, key):
        self.lib = lib
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(cert, key)
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(4)
        self.port = self.ls.getsockname()[1]
        self.sent = 0
        self.flooded = threading.Event()
        self.error = None
        self.conns = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            s, _ = self.ls.accept()
            self.conns.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(30)
            s.sendall(b"220 hop.test ESMTP\r\n")
            _command(s)  # EHLO
            s.sendall(b"250-hop.test\r\n250 STARTTLS\r\n")
            _command(s)  # STARTTLS
            s.sendall(b"220 2.0.0 go ahead\r\n")
            t = self.ctx.wrap_socket(s, server_side=True)
            self.conns.append(t)
            _command(t)  # EHLO inside TLS
            t.sendall(b"250-hop.test\r\n250 PIPELINING\r\n")
            self.sent = _flood(self.lib, t, quiet_s=2.0)
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            self.flooded.set()

    def close(self):
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass
        self.ls.close()


def test_next_hop_flooding_key_updates_never_reading(ringmx, certs):
    """The delivery client answers a hop's key update requests until its
    output is stuck, then waits for the send instead of going round; the
    shard keeps serving, and the message stays queued for a retry."""
    lib = libssl()
    cert, key = certs.leaf(HOP)
    hop = _FloodingHop(lib, cert, key)
    try:
        r = route("accepted.example", "smtp://127.0.0.1:%d" % hop.port)
        r["tls"] = "required"
        srv = ringmx(delivery_overrides([r], delivery={"command_timeout_s": 30},
                                        shards=1))
        qid = submit(srv.port, make_message("ku-hop@client.example", "to a flooding hop"))
        assert hop.flooded.wait(90), "the hop never got to flood"
        assert hop.error is None, repr(hop.error) + srv.log_tail(30)
        if hop.sent == 0:
            pytest.skip("no key update went out (SSL_key_update refused)")
        assert srv.proc.poll() is None, srv.log_tail(30)
        _served(srv.port)
        hop.close()
        wait_log(srv, "deferred", qid, timeout=60)
        assert srv.proc.poll() is None
    finally:
        hop.close()
