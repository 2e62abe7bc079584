"""Attacks on the redesign of the delivery client and the queue runtime: a
hostile next hop answering in ways the state machine and the TLS input loop
must survive without a crash, a stall or a changed outcome.

Python's ssl module has no call for TLS 1.3 KeyUpdate, so these tests call
OpenSSL's SSL_key_update() through ctypes as test_tls_key_update.py does
(and skip, saying why, where that is not possible)."""

import base64
import os
import shutil
import socket
import ssl
import threading
import warnings

import pytest

from conftest import (SMTPClient, delivery_overrides, log_events, make_message, route, submit,
                      wait_for, wait_log)
from test_tls_key_update import SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE, _command
from tlsutil import certs, libssl, ssl_pointer  # noqa: F401  (certs is a fixture)

HOP = "hop.test"
# Key update requests the hop sends in one flight with its reply to the
# final dot.  Each is a record of 27 octets under TLS 1.3 (5 header, 6
# inner, 16 tag) and makes the client's TLS layer write an answer of the
# same size: 145 of them (3915 octets) fit the layer's input buffer (4 KiB)
# whole, with the reply behind them, and their answers pass the output room
# reading needs (tls.c TLS_READ_OUT_ROOM), so the layer stops reading with
# the reply still inside it.
KEY_UPDATES = 145


def _read_data(t):
    """The message data up to and including the final dot."""
    buf = b""
    while not buf.endswith(b"\r\n.\r\n"):
        b = t.recv(65536)
        if not b:
            raise ConnectionError("closed in the message data")
        buf += b
    return buf


class _KeyUpdateReplyHop:
    """A next hop that puts its reply to the final dot behind a burst of key
    update requests, all in one TCP segment (corked), then waits for the
    client's next command and answers QUIT.  A well-behaved peer may send
    key updates at any time (RFC 8446 4.6.3); the reply still answers the
    dot."""

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
        self.after_dot = None  # the client's command after the reply to the dot
        self.done = threading.Event()
        self.error = None
        self.conns = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _burst(self, t):
        """KEY_UPDATES key update requests and the reply, corked into one
        segment."""
        p = ssl_pointer(self.lib, t)
        t.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        for _ in range(KEY_UPDATES):
            if self.lib.SSL_key_update(p, 1) != 1:
                break
            r = self.lib.SSL_do_handshake(p)
            if r != 1 and self.lib.SSL_get_error(p, r) not in (SSL_ERROR_WANT_READ,
                                                                 SSL_ERROR_WANT_WRITE):
                break
            self.sent += 1
        t.sendall(b"250 2.0.0 Ok: queued behind key updates\r\n")
        t.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    def _run(self):
        try:
            s, _ = self.ls.accept()
            self.conns.append(s)
            s.settimeout(60)
            s.sendall(b"220 hop.test ESMTP\r\n")
            _command(s)  # EHLO
            s.sendall(b"250-hop.test\r\n250 STARTTLS\r\n")
            _command(s)  # STARTTLS
            s.sendall(b"220 2.0.0 go ahead\r\n")
            t = self.ctx.wrap_socket(s, server_side=True)
            self.conns.append(t)
            _command(t)  # EHLO inside TLS (no PIPELINING: one command at a time)
            t.sendall(b"250 hop.test\r\n")
            _command(t)  # MAIL
            t.sendall(b"250 2.1.0 Ok\r\n")
            _command(t)  # RCPT
            t.sendall(b"250 2.1.5 Ok\r\n")
            _command(t)  # DATA
            t.sendall(b"354 go on\r\n")
            _read_data(t)
            self._burst(t)
            self.after_dot = _command(t)
            if self.after_dot.upper().startswith(b"QUIT"):
                t.sendall(b"221 2.0.0 Bye\r\n")
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            self.done.set()

    def close(self):
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass
        self.ls.close()


def test_reply_to_dot_behind_key_updates_is_taken(ringmx, certs):
    """The TLS layer stops reading when its answers to key updates fill its
    output; once they are sent it must read on, though every received octet
    was already handed to it (none waits in the client's own buffer).  The
    hop's 250 behind the key updates then delivers the message; left unread,
    the client waited for a reply it had, timed out in state dot, deferred a
    delivered message and sent it again on the retry (a duplicate)."""
    lib = libssl()
    cert, key = certs.leaf(HOP)
    hop = _KeyUpdateReplyHop(lib, cert, key)
    try:
        r = route("accepted.example", "smtp://127.0.0.1:%d" % hop.port)
        r["tls"] = "required"
        srv = ringmx(delivery_overrides([r], delivery={"command_timeout_s": 10}, shards=1))
        qid = submit(srv.port, make_message("ku-dot@client.example", "reply behind updates"))
        wait_for(lambda: hop.done.is_set() or log_events(srv, "deferred", qid), 60,
                 "the hop's session ended or the message was deferred")
        assert hop.error is None or hop.sent == KEY_UPDATES, repr(hop.error)
        if hop.sent < KEY_UPDATES:
            pytest.skip("only %d key updates went out (SSL_key_update refused)" % hop.sent)
        assert not log_events(srv, "deferred", qid), \
            "deferred although the hop accepted it:\n%s" % srv.log_tail(30)
        wait_log(srv, "delivered", qid, timeout=30)
        assert hop.done.wait(30) and hop.error is None, repr(hop.error) + srv.log_tail(30)
        assert hop.after_dot.upper().startswith(b"QUIT"), hop.after_dot
        assert srv.proc.poll() is None, srv.log_tail(30)
    finally:
        hop.close()


def test_restart_with_a_stray_copy_of_a_segment(ringmx):
    """A file in the spool whose name only begins like a segment's (an
    operator's copy, "0000000000000001.seg.orig") is not a second segment 1:
    the start-up scans take the same names recovery does, so the process
    comes up with its queue instead of dying on the queue's own assertion
    (every segment once in the live-count table)."""
    srv = ringmx()
    mid = "stray-seg@client.example"
    qid = submit(srv.port, make_message(mid, "queued across a restart"))
    srv.stop()
    spool = srv.config["spool"]["path"]
    copies = 0
    for root, _, files in os.walk(spool):
        for f in files:
            if f.endswith(".seg"):
                shutil.copyfile(os.path.join(root, f), os.path.join(root, f + ".orig"))
                copies += 1
    assert copies > 0, "no segment file under %s" % spool
    srv.start()
    assert srv.proc.poll() is None, srv.log_tail(30)
    assert qid in srv.queue_list(), srv.log_tail(30)


def test_stop_with_password_checks_still_queued(ringmx, tmp_path):
    """SIGTERM while AUTH checks wait for the helper threads longer than the
    shards' stop grace: the shards leave with checks still queued, the pool
    then cancels them (and finishes the running ones) as it stops.  Their
    completions must not go to the shards' wake-up eventfds, closed by then:
    a write there failed with EBADF, the helper's assertion aborted the
    process on its way out (or, with the descriptor number reused, eight
    bytes went into whatever file had it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    # bcrypt at the highest cost the users_file takes: about a second or
    # more per check, two helper threads, so 40 checks (under the per-IP
    # connection limit) outlast the 10 s grace several times over
    h = crypt.crypt("right", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 15))
    assert h.startswith("$2b$15$"), h
    users = tmp_path / "users"
    users.write_text("carol:%s\n" % h)
    srv = ringmx({"shards": 1,
                  "auth": {"users_file": str(users), "failure_delay_ms": 100,
                           "failures_max": 100},
                  "listeners": [{"name": "plain", "greet_pause_ms": 0, "tls": "none",
                                 "auth": "required", "auth_plaintext": True}]})
    creds = base64.b64encode(b"\0carol\0wrong").decode()
    conns = []
    try:
        for _ in range(40):
            c = SMTPClient(srv.port, timeout=60)
            c.ehlo()
            c.send("AUTH PLAIN %s\r\n" % creds)
            conns.append(c)
        # the helpers are at work (one check answered), the rest wait
        wait_log(srv, "auth", timeout=120)
        rc = srv.stop(timeout=60)
        log = srv.log_text()
        assert rc == 0 and "Assertion" not in log, \
            "exit code %r at the stop:\n%s" % (rc, srv.log_tail(8))
    finally:
        for c in conns:
            c.close()
