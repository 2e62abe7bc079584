"""TLS sessions end with close_notify, both ways.

RFC 8446 6.1 and RFC 5246 7.2.1: each side sends close_notify before it
closes its end, so the peer can tell the end of the session from a
truncation.  Without it Exim logs "TLS connection was non-properly
terminated" on every delivery and strict clients (OpenSSL 3, Python's ssl
with suppress_ragged_eofs=False) see an unexpected EOF.

Server side: after the 221 to QUIT, after a 421 that ends the session, and
in answer to the client's own close_notify, over STARTTLS and implicit TLS,
TLS 1.2 and 1.3; in TLS 1.3 the client's close_notify closes only its
write side, so what it sent before is answered first.  Client side: the next hop receives ringmx's close_notify
after QUIT."""

import socket
import ssl
import subprocess

import pytest

from conftest import (delivery_overrides, free_port, make_message, route, submit, wait_for,
                      wait_log)
from nexthop import nexthop  # noqa: F401
from tlsutil import certs, client_context, libssl, recv_reply, ssl_pointer  # noqa: F401

MX = "mx.test"
HOP = "hop.test"
VERSIONS = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}


def _server(ringmx, certs, **limits):
    """STARTTLS on the main listener, implicit TLS on srv.smtps_port."""
    cert, key = certs.leaf(MX)
    port = free_port()
    srv = ringmx({"tls": {"certificates": [{"cert": cert, "key": key, "names": [MX]}]},
                  "limits": limits,
                  "listeners": [{"name": "mx", "greet_pause_ms": 0},
                                {"name": "smtps", "address": "127.0.0.1:%d" % port,
                                 "greet_pause_ms": 0, "tls": "implicit"}]})
    srv.smtps_port = port
    return srv


def _cmd(sock, line):
    sock.sendall(line.encode() + b"\r\n")
    return recv_reply(sock)


def _session(srv, certs, transport, version):
    """An established TLS session after EHLO, as a strict client: a read
    that meets the end of the stream without close_notify raises
    SSLEOFError instead of returning b"" (suppress_ragged_eofs=False)."""
    ctx = client_context(ca=certs.ca, min_version=VERSIONS[version],
                         max_version=VERSIONS[version])
    # Python's default takes an EOF for close_notify (OpenSSL 3's
    # SSL_OP_IGNORE_UNEXPECTED_EOF); a strict client does not.
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    port = srv.smtps_port if transport == "smtps" else srv.port
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if transport == "starttls":
        assert recv_reply(raw)[0].startswith("220 ")
        assert _cmd(raw, "EHLO client.example")[-1].startswith("250 ")
        assert _cmd(raw, "STARTTLS")[0].startswith("220 ")
    t = ctx.wrap_socket(raw, server_hostname=MX, suppress_ragged_eofs=False)
    if transport == "smtps":
        assert recv_reply(t)[0].startswith("220 ")
    assert t.version() == ("TLSv1.2" if version == "tls12" else "TLSv1.3")
    assert _cmd(t, "EHLO client.example")[-1].startswith("250 ")
    return t


def _assert_clean_end(t, after):
    """The next read is the server's close_notify (b""), not an EOF."""
    try:
        tail = t.recv(4096)
    except ssl.SSLEOFError as e:
        pytest.fail("no close_notify after %s: %s" % (after, e))
    assert tail == b"", "bytes after %s: %r" % (after, tail)


PARAMS = [(tr, v) for tr in ("starttls", "smtps") for v in VERSIONS]
IDS = ["%s-%s" % p for p in PARAMS]


@pytest.mark.parametrize("transport,version", PARAMS, ids=IDS)
def test_close_notify_after_221(ringmx, certs, transport, version):
    srv = _server(ringmx, certs)
    t = _session(srv, certs, transport, version)
    assert _cmd(t, "QUIT") == ["221 2.0.0 Bye"]
    _assert_clean_end(t, "221")
    t.close()


@pytest.mark.parametrize("transport,version", PARAMS, ids=IDS)
def test_close_notify_after_421(ringmx, certs, transport, version):
    """A session the server ends (here: limits.errors) ends TLS just as
    cleanly: the 421, then close_notify."""
    srv = _server(ringmx, certs, errors=2)
    t = _session(srv, certs, transport, version)
    assert _cmd(t, "XYZZY")[0].startswith("500 ")
    t.sendall(b"XYZZY\r\n")
    buf = b""
    while b"421 " not in buf or not buf.endswith(b"\r\n"):
        chunk = t.recv(4096)
        assert chunk, "closed after %r" % buf
        buf += chunk
    lines = buf.decode().splitlines()
    assert [ln[:4] for ln in lines] == ["500 ", "421 "], lines
    _assert_clean_end(t, "421")
    t.close()


@pytest.mark.parametrize("transport,version", PARAMS, ids=IDS)
def test_client_close_notify_is_answered(ringmx, certs, transport, version):
    """The client ends the session with close_notify and waits for the
    server's (a bidirectional shutdown, as RFC 5246 7.2.1 requires)."""
    srv = _server(ringmx, certs)
    t = _session(srv, certs, transport, version)
    try:
        plain = t.unwrap()
    except ssl.SSLError as e:
        pytest.fail("the server did not answer close_notify: %r" % e)
    plain.close()
    # and the server goes on serving
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    assert recv_reply(c)[0].startswith("220 ")
    assert _cmd(c, "QUIT") == ["221 2.0.0 Bye"]
    c.close()


@pytest.mark.parametrize("transport", ["starttls", "smtps"])
def test_tls13_close_notify_behind_the_dot_still_gets_its_250(ringmx, certs, transport):
    """In TLS 1.3 a close_notify closes the client's write side only (RFC
    8446 6.1): it still reads.  A client that sends its message's final "."
    and close_notify in one flight gets the message's 250, then the
    server's close_notify.  Dropping the 250 (the TLS 1.2 rule) would make
    the client send a queued message again."""
    lib = libssl()
    srv = _server(ringmx, certs)
    t = _session(srv, certs, transport, "tls13")
    p = ssl_pointer(lib, t)
    assert _cmd(t, "MAIL FROM:<sender@client.example>")[0].startswith("250 ")
    assert _cmd(t, "RCPT TO:<rcpt@accepted.example>")[0].startswith("250 ")
    assert _cmd(t, "DATA")[0].startswith("354 ")
    # One segment for the last body record and the close_notify, so the
    # server reads them together, before the message is committed.
    t.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    t.sendall(b"Subject: half-close\r\n\r\nbody\r\n.\r\n")
    assert lib.SSL_shutdown(p) == 0  # ours sent, the server's not yet read
    t.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    reply = recv_reply(t)
    assert reply and reply[0].startswith("250 2.0.0 Ok: queued as "), reply
    # Having sent ours, OpenSSL reports the server's close_notify as
    # SSLZeroReturnError; a bare EOF would be SSLEOFError.
    with pytest.raises(ssl.SSLZeroReturnError):
        t.recv(4096)
    t.close()
    wait_log(srv, "queued")


@pytest.mark.parametrize("transport", ["starttls", "smtps"])
def test_tls13_close_notify_behind_pipelined_commands(ringmx, certs, transport):
    """Pipelined commands and close_notify in one segment: every command is
    answered, in order, then the server's close_notify ends the stream."""
    lib = libssl()
    srv = _server(ringmx, certs)
    t = _session(srv, certs, transport, "tls13")
    p = ssl_pointer(lib, t)
    t.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    t.sendall(b"NOOP\r\nRSET\r\nNOOP\r\n")  # no QUIT: the close_notify ends it
    assert lib.SSL_shutdown(p) == 0
    t.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    t.settimeout(10)
    got = b""
    with pytest.raises(ssl.SSLZeroReturnError):  # the server's close_notify
        while True:
            chunk = t.recv(4096)
            assert chunk, "a bare EOF after %r" % got
            got += chunk
    assert [ln[:4] for ln in got.decode().splitlines()] == ["250 "] * 3, got
    t.close()


def test_openssl_s_client_sees_close_notify(ringmx, certs):
    """OpenSSL's own client: after QUIT it reports the server's close_notify
    ("DONE" with -ign_eof, and no "unexpected eof" error)."""
    srv = _server(ringmx, certs)
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % srv.smtps_port,
                        "-servername", MX, "-CAfile", certs.ca, "-verify_return_error",
                        "-ign_eof", "-crlf", "-msg"],
                       input=b"EHLO c.example\nQUIT\n", capture_output=True, timeout=30)
    out = r.stdout.decode(errors="replace")
    err = r.stderr.decode(errors="replace")
    assert "221 2.0.0 Bye" in out, out + err
    assert "unexpected eof" not in (out + err).lower(), err
    # -msg traces every record: the server's alert after the 221
    received_alerts = [ln for ln in out.splitlines() if ln.startswith("<<<") and "Alert" in ln]
    assert received_alerts, "no alert record from the server after QUIT:\n" + out[-2000:]


# ------------------------------------------------------------------ outbound


def test_next_hop_gets_close_notify_after_quit(ringmx, nexthop, certs):
    cert, key = certs.leaf(HOP)
    nh = nexthop(tls=(cert, key))
    r = route("accepted.example", nh)
    r["tls"] = "opportunistic"
    srv = ringmx(delivery_overrides([r]))
    body = make_message("close-1@client.example", "close_notify")
    submit(srv.port, body)
    [t] = nh.wait_message_id("close-1@client.example", 30)
    assert t.tls_version in ("TLSv1.2", "TLSv1.3"), t
    # ringmx's shutdown sends QUIT on its idle pooled connection at once.
    assert srv.stop(timeout=30) == 0
    wait_for(lambda: all(c.tls_shutdown for c in nh.connections() if c.tls_version), 30,
             "the next hop's TLS shutdown")
    conns = [c for c in nh.connections() if c.tls_version]
    assert conns, nh.connections()
    assert [c.tls_shutdown for c in conns] == ["close_notify"] * len(conns), \
        "the next hop saw %r" % [c.tls_shutdown for c in conns]
