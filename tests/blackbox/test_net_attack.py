"""The connection layer (src/net) under a hostile next hop.

The delivery client talks to next hops it does not control: every byte they
send (plaintext or inside TLS), their timing, their closes and their TCP
behaviour are the attacker's.  These tests play such hops with a scripted
server of their own (plain sockets, Python's ssl, OpenSSL's SSL_key_update
through ctypes as in test_tls_key_update.py) and check what the gateway does
with them: a command's deadline is not moved by traffic that is no answer
(TLS records without plaintext, a handshake dribbled a byte at a time, a
reply that never completes), a connection in any state ends on SIGTERM,
and a hop that resets or ends TLS in the middle of a session never makes a
message count as delivered.

Each scripted hop serves connections one thread each and records, per
connection, how it ended; the tests stop it by closing its sockets."""

import select
import socket
import ssl
import struct
import threading

import pytest

from conftest import (SMTPClient, delivery_overrides, log_events, make_message, new_mid, route,
                      submit, wait_for, wait_log, wait_state)
from test_tls_key_update import SSL_KEY_UPDATE_REQUESTED
from nexthop import nexthop  # noqa: F401  (nexthop is a fixture)
from tlsutil import certs, libssl, ssl_pointer  # noqa: F401  (certs is a fixture)

HOP = "hop.test"
SLOW_RETRY = {"retry_s": [3600], "max_age_s": 86400}
CMD_TIMEOUT_S = 2
# Far beyond CMD_TIMEOUT_S: a deadline that works fires long before it.
WAIT_S = 30
PACE_S = 0.25  # the hop's trickle: well inside CMD_TIMEOUT_S


def _line(s):
    """One command line (to CRLF) from a plain or TLS socket; b"" at EOF."""
    buf = b""
    while not buf.endswith(b"\r\n"):
        b = s.recv(1)
        if not b:
            return b""
        buf += b
    return buf


def _closed(s, wait):
    """Whether the peer closed s (EOF or reset) within wait seconds.  What
    it sent meanwhile is read and dropped (a TLS socket answers key updates
    inside its recv)."""
    r, _, _ = select.select([s], [], [], wait)
    if not r:
        return False
    try:
        return s.recv(4096) == b""
    except ssl.SSLWantReadError:
        return False
    except (OSError, ssl.SSLError):
        return True


class ScriptedHop:
    """An SMTP next hop offering STARTTLS whose session runs `script(hop, s)`
    once the TLS session is set up and the EHLO inside it answered (or, with
    tls_wrap=False, right after the 220 to STARTTLS, on the plain socket).
    The script returns how the session ended; hop.ends lists them."""

    def __init__(self, cert, key, script, tls_wrap=True, rcvbuf=None):
        self.rcvbuf = rcvbuf
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(cert, key)
        self.script = script
        self.tls_wrap = tls_wrap
        self.stop = threading.Event()
        self.ends = []
        self.ready = []  # states the sessions reached
        self.errors = []
        self.socks = []
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]
        self.url = "smtp://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            self.socks.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        try:
            s.settimeout(WAIT_S)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            s.sendall(b"220 hop.test ESMTP\r\n")
            _line(s)  # EHLO
            s.sendall(b"250-hop.test\r\n250 STARTTLS\r\n")
            if not _line(s).upper().startswith(b"STARTTLS"):
                raise AssertionError("no STARTTLS")
            s.sendall(b"220 2.0.0 go ahead\r\n")
            if self.tls_wrap:
                s = self.ctx.wrap_socket(s, server_side=True)
                self.socks.append(s)
                _line(s)  # EHLO inside TLS
                s.sendall(b"250 hop.test\r\n")
            self.ends.append(self.script(self, s))
        except Exception as e:  # reported by the test
            self.errors.append(repr(e))

    def wait_end(self, n=1):
        wait_for(lambda: len(self.ends) >= n, WAIT_S, "the hop session to end")
        return self.ends[n - 1]

    def close(self):
        self.stop.set()
        for s in self.socks + [self.ls]:
            try:
                s.close()
            except OSError:
                pass


# ---- hop scripts ------------------------------------------------------------


def _key_updates_no_reply(lib):
    """After MAIL: no reply ever, a key update request (update_requested)
    every PACE_S instead, until the gateway closes."""

    def script(hop, t):
        _line(t)  # MAIL
        p = ssl_pointer(lib, t)
        t.setblocking(False)  # recv gives back after the answers to the updates
        hop.ready.append("mail")
        while not hop.stop.is_set():
            lib.SSL_key_update(p, SSL_KEY_UPDATE_REQUESTED)
            if lib.SSL_do_handshake(p) != 1:
                return "closed by the gateway"
            if _closed(t, PACE_S):
                return "closed by the gateway"
        return "stopped"

    return script


def _dribble_handshake(hop, s):
    """After the 220 to STARTTLS: the server's handshake flight, one byte
    every PACE_S, until the gateway closes."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = hop.ctx.wrap_bio(inc, out, server_side=True)
    flight = b""
    while not flight:
        data = s.recv(65536)
        if not data:
            return "closed before the ClientHello"
        inc.write(data)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        flight = out.read()
    hop.ready.append("handshake")
    for i in range(len(flight)):
        if hop.stop.is_set():
            return "stopped"
        try:
            s.sendall(flight[i:i + 1])
        except OSError:
            return "closed by the gateway"
        if _closed(s, PACE_S):
            return "closed by the gateway"
    return "handshake sent whole"


def _trickled_reply(hop, t):
    """After MAIL: a reply that never completes, one byte every PACE_S (a
    512-octet line would take two minutes), until the gateway closes."""
    _line(t)  # MAIL
    hop.ready.append("mail")
    t.setblocking(False)
    chunk = b"250 "
    while not hop.stop.is_set():
        try:
            t.sendall(chunk)
        except (OSError, ssl.SSLError):
            return "closed by the gateway"
        chunk = b"x"
        if _closed(t, PACE_S):
            return "closed by the gateway"
    return "stopped"


def _stop_reading_in_body(hop, t):
    """MAIL, RCPT and DATA accepted, then the hop reads no more: the
    gateway's body send stays stuck until the hop is stopped."""
    for reply in (b"250 2.1.0 ok", b"250 2.1.5 ok", b"354 go on"):
        _line(t)
        t.sendall(reply + b"\r\n")
    hop.ready.append("body")
    hop.stop.wait(WAIT_S * 4)
    return "stopped"


def _gateway(ringmx, hop, **delivery):
    r = route("accepted.example", hop.url)
    r["tls"] = "required"
    d = dict(SLOW_RETRY, command_timeout_s=CMD_TIMEOUT_S)
    d.update(delivery)
    return ringmx(delivery_overrides([r], delivery=d, shards=1))


def _assert_timed_out(srv, hop, qid, state):
    """The command's deadline fired: the message is deferred for a timeout
    in that state, and the hop saw the connection end."""
    f = wait_state(srv, qid, "deferred", timeout=WAIT_S)
    assert "timeout" in f.get("error", ""), (f, srv.log_tail(30))
    errs = log_events(srv, "outbound_error")
    assert any("timeout (state %s)" % state in e for e in errs), (errs, srv.log_tail(30))
    assert not log_events(srv, "delivered", qid)
    assert hop.wait_end() == "closed by the gateway", hop.ends
    assert hop.errors == [], hop.errors


# ---- deadlines --------------------------------------------------------------


def test_key_updates_do_not_hold_a_command_open(ringmx, certs):
    """A hop that never answers MAIL but sends a TLS 1.3 KeyUpdate (with
    update_requested) every quarter second: records that carry no reply
    (and the answers they draw) are no progress, so MAIL still times out
    after command_timeout_s.  Before, each record moved the deadline and the
    connection and its message were held for as long as the hop liked."""
    script = _key_updates_no_reply(libssl())

    hop = ScriptedHop(*certs.leaf(HOP), script)
    try:
        srv = _gateway(ringmx, hop)
        qid = submit(srv.port, make_message(new_mid("ku-trickle"), "key updates, no reply"))
        _assert_timed_out(srv, hop, qid, "mail")
    finally:
        hop.close()


def test_dribbled_handshake_times_out(ringmx, certs):
    """A hop that answers STARTTLS and then sends its TLS handshake one byte
    every quarter second: the handshake is bounded by the command timeout,
    not moved by each byte (tls.h: a peer that trickles is bounded by the
    caller's deadline).  Before, it lasted as long as the dribble."""

    hop = ScriptedHop(*certs.leaf(HOP), _dribble_handshake, tls_wrap=False)
    try:
        srv = _gateway(ringmx, hop)
        qid = submit(srv.port, make_message(new_mid("hs-dribble"), "dribbled handshake"))
        _assert_timed_out(srv, hop, qid, "tls_handshake")
    finally:
        hop.close()


def test_trickled_reply_times_out(ringmx, certs):
    """A hop that answers MAIL one byte every quarter second and never ends
    the line: bytes that complete no reply are no progress, so MAIL times
    out after command_timeout_s.  Before, each byte moved the deadline and a
    reply could take as long as its longest line allowed, times the
    timeout, per command."""

    hop = ScriptedHop(*certs.leaf(HOP), _trickled_reply)
    try:
        srv = _gateway(ringmx, hop)
        qid = submit(srv.port, make_message(new_mid("reply-trickle"), "trickled reply"))
        _assert_timed_out(srv, hop, qid, "mail")
    finally:
        hop.close()


# ---- shutdown -----------------------------------------------------------------


def test_sigterm_with_connections_in_every_state(ringmx, certs, nexthop):
    """SIGTERM while outbound connections sit in the TLS handshake (a
    dribbling hop), inside TLS waiting for a reply (a hop sending key
    updates), in a body send the hop stopped reading, and idle in the pool
    (a hop that took its message).  Their deadlines (command_timeout_s,
    shorter than the shard's stop grace) end the stuck ones, each job goes
    back to the queue and the gateway exits 0 with nothing leaked (the
    ASan build checks); after a restart the three messages it could not
    deliver are still queued and the delivered one is not sent again.
    Before, the dribble and the key updates kept moving their deadlines,
    the shard stopped on its grace with their jobs still held, and those
    jobs leaked."""
    cert, key = certs.leaf(HOP)
    hops = {"hs": ScriptedHop(cert, key, _dribble_handshake, tls_wrap=False),
            "ku": ScriptedHop(cert, key, _key_updates_no_reply(libssl())),
            "body": ScriptedHop(cert, key, _stop_reading_in_body, rcvbuf=4096)}
    good = nexthop()
    try:
        routes = [route("accepted.example", good)]
        for name, hop in hops.items():
            r = route("%s.sub.example" % name, hop.url)
            r["tls"] = "required"
            routes.append(r)
        srv = ringmx(delivery_overrides(routes, delivery=dict(SLOW_RETRY, command_timeout_s=5),
                                        shards=1))
        mid = new_mid("term-idle")
        done = submit(srv.port, make_message(mid, "delivered before the stop"))
        big = b"x" * 998 + b"\r\n"
        stuck = {}
        for name in hops:
            rcpt = "rcpt@%s.sub.example" % name
            body = big * 800 if name == "body" else b"Hello.\r\n"
            stuck[name] = submit(srv.port, make_message(new_mid("term-" + name), name, body=body,
                                                        to=rcpt), rcpts=(rcpt,))
            assert stuck[name]
        good.wait_message_id(mid, timeout=WAIT_S)
        wait_log(srv, "delivered", done)
        for name, hop in hops.items():
            wait_for(lambda: hop.ready, WAIT_S, "the %s hop to hold its connection" % name)
        rc = srv.stop(timeout=30)
        assert rc == 0, srv.log_tail(30)
        assert "SIGKILL" not in srv.exit_codes[-1][2], srv.exit_codes
        for hop in hops.values():
            hop.close()
        srv.start()
        for name, qid in stuck.items():
            f = wait_for(lambda: srv.queue_list().get(qid), WAIT_S, "%s still queued" % qid)
            assert f["state"] in ("deferred", "ready", "active"), (name, f)
        assert len(good.by_message_id(mid)) == 1
        assert done not in srv.queue_list()
    finally:
        for hop in hops.values():
            hop.close()


# ---- a hop that breaks the session --------------------------------------------


def _reset(s):
    """Close with a TCP reset (SO_LINGER 0)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _reset_in_handshake(hop, s):
    """Half the server's handshake flight, then a reset."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = hop.ctx.wrap_bio(inc, out, server_side=True)
    inc.write(s.recv(65536))
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    flight = out.read()
    s.sendall(flight[:len(flight) // 2])
    _reset(s)
    return "reset"


def _close_notify_then_plaintext(hop, t):
    """After MAIL: the hop ends TLS (close_notify) and goes on in plaintext
    as if the session were still one, answering MAIL, RCPT and DATA."""
    _line(t)  # MAIL
    s = t.unwrap()
    s.sendall(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n")
    return "closed by the gateway" if _closed(s, WAIT_S) else "still open"


def _reset_in_body(hop, t):
    """MAIL, RCPT and DATA accepted, some of the body read, then a reset."""
    for reply in (b"250 2.1.0 ok", b"250 2.1.5 ok", b"354 go on"):
        _line(t)
        t.sendall(reply + b"\r\n")
    t.recv(16384)
    _reset(t)
    return "reset"


@pytest.mark.parametrize("script,tls_wrap,state", [
    (_reset_in_handshake, False, "tls_handshake"),
    (_close_notify_then_plaintext, True, "mail"),
    # The whole body and its dot may already sit in the kernel's socket
    # buffers when the reset comes (the hop cannot tell): "dot" is the same
    # break seen after our last byte went.
    (_reset_in_body, True, ("body", "dot")),
], ids=["reset-in-handshake", "close-notify-then-plaintext", "reset-in-body"])
def test_hop_breaks_the_session(ringmx, certs, script, tls_wrap, state):
    """The hop resets the connection in the middle of the TLS handshake or
    of the body, or ends TLS after MAIL and answers on in plaintext: the
    message is deferred in that state (never delivered, nothing read from
    the plaintext), the connection is gone and the gateway serves on."""
    hop = ScriptedHop(*certs.leaf(HOP), script, tls_wrap=tls_wrap)
    try:
        srv = _gateway(ringmx, hop)
        body = b"y" * 998 + b"\r\n"
        states = state if isinstance(state, tuple) else (state,)
        qid = submit(srv.port, make_message(new_mid("break-" + states[0]), states[0],
                                            body=body * 500))
        f = wait_state(srv, qid, "deferred", timeout=WAIT_S)
        errs = log_events(srv, "outbound_error")
        assert any("state=%s " % st in e for e in errs for st in states), (errs,
                                                                            srv.log_tail(30))
        assert not log_events(srv, "delivered", qid), f
        assert hop.wait_end() in ("reset", "closed by the gateway"), hop.ends
        assert hop.errors == [], hop.errors
        c = SMTPClient(srv.port)
        try:
            assert c.ehlo().code == 250
        finally:
            c.close()
        assert srv.proc.poll() is None
    finally:
        hop.close()
