"""Inbound TLS: STARTTLS (RFC 3207) and implicit TLS
(RFC 8314) with real clients: Python's ssl/smtplib, openssl s_client and
swaks.  Certificates come from tlsutil (made per test session)."""

import re
import smtplib
import socket
import ssl
import subprocess

import pytest

from conftest import SMTPClient, queued_id, strip_received, wait_for  # noqa: F401
from tlsutil import certs, client_context, peer_common_name, recv_reply  # noqa: F401

MX = "mx.test"
OTHER = "other.test"


def tls_config(certs, implicit_port=None, extra_certs=()):
    cert, key = certs.leaf(MX)
    cl = [{"cert": cert, "key": key, "names": [MX]}]
    for name in extra_certs:
        c, k = certs.leaf(name, rsa=True)
        cl.append({"cert": c, "key": k, "names": [name]})
    over = {"tls": {"certificates": cl}}
    return over


def start(ringmx, certs, **kw):
    srv = ringmx(tls_config(certs, **kw))
    return srv


def raw(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert recv_reply(s)[0].startswith("220 ")
    return s


def ehlo(sock, name="client.example"):
    sock.sendall(("EHLO %s\r\n" % name).encode())
    return recv_reply(sock)


def starttls(sock, certs, server_hostname=MX, **ctxkw):
    sock.sendall(b"STARTTLS\r\n")
    assert recv_reply(sock) == ["220 2.0.0 Ready to start TLS"]
    ctx = client_context(ca=certs.ca, **ctxkw)
    return ctx.wrap_socket(sock, server_hostname=server_hostname)


def send_cmd(sock, line):
    sock.sendall(line.encode() + b"\r\n")
    return recv_reply(sock)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_starttls_smtplib_both_versions_and_received(ringmx, certs, version):
    srv = start(ringmx, certs)
    ctx = client_context(ca=certs.ca, min_version=version, max_version=version,
                         check_hostname=False)
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=20) as s:
        s.ehlo("client.example")
        assert s.has_extn("starttls")
        code, _ = s.starttls(context=ctx)
        assert code == 220
        assert s.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                    ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        s.ehlo("client.example")
        assert not s.has_extn("starttls"), "STARTTLS offered again inside TLS"
        body = b"Subject: tls\r\n\r\n.leading dot\r\nbody\r\n"
        s.sendmail("a@client.example", ["x@accepted.example"], body)
    [qid] = list(srv.queue_list())
    msg = srv.queue_show(qid)[1]
    received, rest = strip_received(msg)
    received = received.decode("utf-8", "replace")
    assert rest == body
    want = "TLSv1.3" if version == ssl.TLSVersion.TLSv1_3 else "TLSv1.2"
    assert re.search(r"\(using %s with cipher [A-Z0-9_-]+\)" % want, received), received
    assert " with ESMTPS id " in received, received
    wait_for(lambda: re.search(r"event=tls client=127\.0\.0\.1 version=%s" % want,
                               srv.log_text()), 10, "the event=tls line (logs are written async)")


def test_state_forgotten_after_starttls(ringmx, certs):
    srv = start(ringmx, certs)
    s = raw(srv.port)
    assert any("STARTTLS" in ln for ln in ehlo(s))
    t = starttls(s, certs)
    # EHLO again is required: MAIL first is refused
    assert send_cmd(t, "MAIL FROM:<a@client.example>")[0].startswith("503 ")
    lines = ehlo(t)
    assert lines[0].startswith("250-") and not any("STARTTLS" in ln for ln in lines)
    assert send_cmd(t, "STARTTLS")[0].startswith("503 "), "a second STARTTLS"
    assert send_cmd(t, "MAIL FROM:<a@client.example>")[0].startswith("250 ")
    t.close()


def test_starttls_argument_and_transaction(ringmx, certs):
    srv = start(ringmx, certs)
    s = raw(srv.port)
    ehlo(s)
    assert send_cmd(s, "STARTTLS now")[0].startswith("501 ")
    assert send_cmd(s, "MAIL FROM:<a@client.example>")[0].startswith("250 ")
    assert send_cmd(s, "STARTTLS")[0].startswith("503 "), "STARTTLS inside a transaction"
    assert send_cmd(s, "RSET")[0].startswith("250 ")
    t = starttls(s, certs)
    assert ehlo(t)[0].startswith("250-")
    t.close()


@pytest.mark.parametrize("inject,probe,expect", [
    # the injected RSET would be answered before our EHLO
    (b"STARTTLS\r\nRSET\r\n", "EHLO client.example", "250-"),
    # the injected EHLO would let MAIL through
    (b"STARTTLS\r\nEHLO x\r\n", "MAIL FROM:<a@client.example>", "503 "),
    # the injected MAIL would let RCPT through (after our EHLO)
    (b"starttls\r\nmail from:<a@b.example>\r\n", "RCPT TO:<x@accepted.example>", "503 "),
])
def test_starttls_injection_discarded(ringmx, certs, inject, probe, expect):
    srv = start(ringmx, certs)
    s = raw(srv.port)
    ehlo(s)
    s.sendall(inject)  # one write: the commands after STARTTLS share its packet
    assert recv_reply(s) == ["220 2.0.0 Ready to start TLS"]
    t = client_context(ca=certs.ca).wrap_socket(s, server_hostname=MX)
    if probe.startswith("RCPT"):
        assert ehlo(t)[0].startswith("250-")
    lines = send_cmd(t, probe)
    assert lines[0].startswith(expect), "injected command was executed: %r" % lines
    t.close()
    wait_for(lambda: "event=starttls_injection" in srv.log_text(), 10, "the injection logged")


def test_failed_handshake_closes_never_plaintext(ringmx, certs):
    srv = start(ringmx, certs)
    s = raw(srv.port)
    ehlo(s)
    s.sendall(b"STARTTLS\r\n")
    assert recv_reply(s) == ["220 2.0.0 Ready to start TLS"]
    s.sendall(b"EHLO plaintext.example\r\n")  # not a ClientHello
    s.settimeout(10)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert b"250" not in data, "answered in plaintext after STARTTLS: %r" % data
    wait_for(lambda: "event=tls_failed" in srv.log_text(), 10, "the failure logged")


def test_sni_picks_certificate(ringmx, certs):
    srv = start(ringmx, certs, extra_certs=[OTHER])
    for name in (MX, OTHER):
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            s = raw(srv.port)
            ehlo(s)
            t = starttls(s, certs, server_hostname=name, min_version=version,
                         max_version=version)
            assert peer_common_name(t) == name
            t.close()


def test_implicit_tls_listener(ringmx, certs):
    from conftest import free_port
    port = free_port()
    srv = ringmx(dict(tls_config(certs), listeners=[
        {"name": "mx", "greet_pause_ms": 0},
        {"name": "smtps", "address": "127.0.0.1:%d" % port, "tls": "implicit"}]))
    ctx = client_context(ca=certs.ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw_s:
        with ctx.wrap_socket(raw_s, server_hostname=MX) as t:
            assert recv_reply(t)[0].startswith("220 ")
            lines = ehlo(t)
            assert not any("STARTTLS" in ln for ln in lines)
            assert send_cmd(t, "STARTTLS")[0].startswith("502 ")
    ctx = client_context(ca=certs.ca, check_hostname=False)
    with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=20) as s:
        s.sendmail("a@client.example", ["x@accepted.example"], b"Subject: smtps\r\n\r\nhi\r\n")
    assert len(srv.queue_list()) == 1


def test_openssl_s_client_starttls(ringmx, certs):
    srv = start(ringmx, certs)
    r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                        "127.0.0.1:%d" % srv.port, "-servername", MX, "-CAfile", certs.ca,
                        "-verify_return_error", "-quiet"],
                       input=b"EHLO c.example\r\nQUIT\r\n", capture_output=True, timeout=30)
    out = r.stdout.decode(errors="replace")
    assert "250-gw.test" in out or "250 " in out, out + r.stderr.decode(errors="replace")
    assert "221 2.0.0 Bye" in out, out


def test_swaks_tls(ringmx, certs):
    srv = start(ringmx, certs)
    r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % srv.port, "--tls",
                        "--from", "a@client.example", "--to", "x@accepted.example",
                        "--tls-verify", "--tls-ca-path", certs.ca, "--tls-sni", MX,
                        "--helo", "swaks.example"],
                       capture_output=True, timeout=60)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert re.search(r"250 2\.0\.0 Ok: queued as [0-9A-F]{16}", out), out


def test_check_config_loads_certificates_and_users(certs, tmp_path):
    from conftest import RINGMX_BIN
    import json
    cert, key = certs.leaf(MX)
    other_cert, other_key = certs.leaf(OTHER, rsa=True)
    users = tmp_path / "users"
    users.write_text("alice:$2b$31$abcdefghijklmnopqrstuu5P7.Jb8I0fS3MqY1qY0Zq1m7yQ7aDq\n")

    def check(tls_certs, users_file=None):
        cfg = {"listeners": [{"name": "s", "address": "127.0.0.1:1", "tls": "starttls"}],
               "tls": {"certificates": tls_certs}}
        if users_file:
            cfg["auth"] = {"users_file": users_file}
        path = tmp_path / "c.json"
        path.write_text(json.dumps(cfg))
        r = subprocess.run([RINGMX_BIN, "--check-config", str(path)], capture_output=True,
                           timeout=30)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    assert check([{"cert": cert, "key": key, "names": [MX]}])[0] == 0
    rc, out = check([{"cert": cert, "key": other_key, "names": [MX]}])
    assert rc == 1 and "tls.certificates[0]" in out, out
    rc, out = check([{"cert": cert, "key": key, "names": [MX]}], str(users))
    assert rc == 1 and "users_file:1" in out, out


def test_handshake_timeout_closes(ringmx, certs):
    cert, key = certs.leaf(MX)
    srv = ringmx({"tls": {"certificates": [{"cert": cert, "key": key, "names": [MX]}],
                          "handshake_timeout_s": 1}})
    s = raw(srv.port)
    ehlo(s)
    s.sendall(b"STARTTLS\r\n")
    assert recv_reply(s) == ["220 2.0.0 Ready to start TLS"]
    s.settimeout(30)  # a bound for the test, far above the 1 s under test
    assert s.recv(4096) == b"", "the server kept a stalled handshake open"
    wait_for(lambda: "event=tls_failed client=127.0.0.1 stage=handshake error=timeout"
             in srv.log_text(), 10, "the timeout logged")
