"""SMTP AUTH (RFC 4954) on submission listeners, with
Python's smtplib over STARTTLS and implicit TLS: PLAIN and LOGIN against a
users_file (SHA-512 and bcrypt hashes made here), every failure path, the
per-address failure throttle (535 5.7.8, then 421), AUTH refused without
TLS, relay only after AUTH, and the user in the envelope and Received."""

import base64
import re
import smtplib
import socket
import ssl
import subprocess
import warnings

import pytest

from conftest import env_get, free_port, strip_received
from tlsutil import certs, client_context, recv_reply  # noqa: F401

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

MX = "mx.test"
USERS = {"alice": "correct horse", "bob": "s3cret!"}


def users_file(tmpdir):
    path = tmpdir / "users"
    alice = subprocess.run(["openssl", "passwd", "-6", USERS["alice"]], capture_output=True,
                           check=True).stdout.decode().strip()
    bob = crypt.crypt(USERS["bob"], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    path.write_text("# test users\nalice:%s\nbob:%s\n" % (alice, bob))
    return str(path)


def submission(ringmx, certs, tmp_path, auth="required", extra=None, plaintext_port=None,
               failures_max=3):
    cert, key = certs.leaf(MX)
    listeners = [{"name": "mx", "greet_pause_ms": 0, "tls": "starttls", "auth": auth}]
    if plaintext_port:
        listeners.append({"name": "plain", "address": "127.0.0.1:%d" % plaintext_port,
                          "tls": "none", "auth": "required", "auth_plaintext": True})
    over = {"tls": {"certificates": [{"cert": cert, "key": key, "names": [MX]}]},
            "auth": {"users_file": users_file(tmp_path), "failure_delay_ms": 100,
                     "failures_max": failures_max},
            "listeners": listeners}
    over.update(extra or {})
    return ringmx(over)


def tls_client(srv, certs):
    s = smtplib.SMTP("127.0.0.1", srv.port, timeout=30)
    s.ehlo("client.example")
    s.starttls(context=client_context(ca=certs.ca, check_hostname=False))
    s.ehlo("client.example")
    return s


def test_auth_not_offered_without_tls(ringmx, certs, tmp_path):
    srv = submission(ringmx, certs, tmp_path)
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as s:
        s.ehlo("client.example")
        assert not s.has_extn("auth"), "AUTH offered in plaintext"
        code, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0correct horse").decode())
        assert code == 538, (code, msg)
        code, _ = s.docmd("MAIL", "FROM:<alice@client.example>")
        assert code == 530


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_auth_success_and_relay(ringmx, certs, tmp_path, mech):
    srv = submission(ringmx, certs, tmp_path)
    with tls_client(srv, certs) as s:
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        # relay to a foreign domain is refused before AUTH ...
        code, _ = s.docmd("MAIL", "FROM:<alice@client.example>")
        assert code == 530
        s.user, s.password = "alice", USERS["alice"]
        code, resp = s.auth(mech, s.auth_plain if mech == "PLAIN" else s.auth_login)
        assert code == 235, (code, resp)
        assert not s.has_extn("auth") or True
        body = b"Subject: submitted\r\n\r\nhello\r\n"
        s.sendmail("alice@client.example", ["someone@elsewhere.example"], body)
    [qid] = list(srv.queue_list())
    env, msg = srv.queue_show(qid)
    received, rest = strip_received(msg)
    received = received.decode("utf-8", "replace")
    # A submission without Message-ID and Date gets both, after our
    # Received: (RFC 6409 8.2, 8.3; listeners[].add_message_id_date).
    added = re.match(rb"Message-ID: <%s\.\d+@[^>]+>\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} "
                     rb"\d{4} \d\d:\d\d:\d\d \+0000\r\n" % qid.encode(), rest)
    assert added, rest
    assert rest[added.end():] == body
    assert " with ESMTPSA id " in received, received
    assert "authenticated as alice" in received, received
    assert env_get(env, "auth") == ["alice"] or "alice" in str(env), env
    # Shard log lines reach the file through the main thread (log.h); after
    # an orderly stop every one is written, so the absences below mean it.
    assert srv.stop() == 0, srv.log_tail()
    assert "event=auth client=127.0.0.1 user=\"alice\" result=ok" in srv.log_text()
    assert USERS["alice"] not in srv.log_text()
    assert base64.b64encode(b"\0alice\0correct horse").decode() not in srv.log_text()


def test_auth_failures_then_blocked(ringmx, certs, tmp_path):
    srv = submission(ringmx, certs, tmp_path, failures_max=3)
    with tls_client(srv, certs) as s:
        for i in range(2):
            code, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0wrong").decode())
            assert (code, msg[:5]) == (535, b"5.7.8"), (i, code, msg)
        # unknown user: the same answer
        code, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0mallory\0x").decode())
        assert code == 535
        # the third failure blocks: 421 follows
        try:
            line = s.getreply()
            assert line[0] == 421, line
        except smtplib.SMTPServerDisconnected:
            pass
    # a new connection from the same address is refused at AUTH
    with tls_client(srv, certs) as s:
        code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0correct horse").decode())
        assert code == 421
    assert srv.stop() == 0, srv.log_tail()  # every queued log line written
    assert srv.log_text().count("result=failed") == 3


def test_auth_failures_count_toward_error_limit(ringmx, certs, tmp_path):
    # Below the throttle's block, failed AUTHs still spend limits.errors:
    # a guesser gets the 421 of any client that runs out of errors.
    srv = submission(ringmx, certs, tmp_path, failures_max=50,
                     extra={"limits": {"errors": 3}})
    with tls_client(srv, certs) as s:
        for i in range(2):
            code, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0wrong").decode())
            assert (code, msg[:5]) == (535, b"5.7.8"), (i, code, msg)
        code, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0wrong").decode())
        assert code == 535, (code, msg)
        try:
            code, msg = s.getreply()
        except smtplib.SMTPServerDisconnected:
            code, msg = None, b""
        assert code == 421 and b"too many errors" in msg, (code, msg)
    assert srv.stop() == 0, srv.log_tail()
    assert "event=too_many_errors" in srv.log_text()


def test_auth_exchange_errors(ringmx, certs, tmp_path):
    srv = submission(ringmx, certs, tmp_path)
    with tls_client(srv, certs) as s:
        assert s.docmd("AUTH", "CRAM-MD5")[0] == 504
        assert s.docmd("AUTH", "PLAIN !!!notbase64")[0] == 501
        code, _ = s.docmd("AUTH", "LOGIN")
        assert code == 334
        assert s.docmd("*")[0] == 501, "cancel"
        code, _ = s.docmd("AUTH", "PLAIN")
        assert code == 334
        assert s.docmd(base64.b64encode(b"\0bob\0s3cret!").decode())[0] == 235
        assert s.docmd("AUTH", "PLAIN")[0] == 503, "AUTH twice"
        assert s.docmd("MAIL", "FROM:<bob@client.example> AUTH=<>")[0] == 250
        assert s.docmd("AUTH", "PLAIN")[0] == 503, "AUTH inside a transaction"


def test_auth_optional_and_plaintext_loopback(ringmx, certs, tmp_path):
    port = free_port()
    srv = submission(ringmx, certs, tmp_path, auth="optional", plaintext_port=port)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example")
        assert s.has_extn("auth"), "auth_plaintext listener must offer AUTH"
        s.login("bob", USERS["bob"])
        s.sendmail("bob@client.example", ["x@elsewhere.example"], b"Subject: p\r\n\r\nx\r\n")
    # optional: without AUTH mail for our domains is still taken, relay is not
    with tls_client(srv, certs) as s:
        assert s.docmd("MAIL", "FROM:<a@client.example>")[0] == 250
        assert s.docmd("RCPT", "TO:<x@elsewhere.example>")[0] == 554
        assert s.docmd("RCPT", "TO:<x@accepted.example>")[0] == 250


def test_implicit_tls_submission(ringmx, certs, tmp_path):
    port = free_port()
    cert, key = certs.leaf(MX)
    srv = ringmx({"tls": {"certificates": [{"cert": cert, "key": key, "names": [MX]}]},
                  "auth": {"users_file": users_file(tmp_path)},
                  "listeners": [{"name": "mx", "greet_pause_ms": 0},
                                {"name": "submissions", "address": "127.0.0.1:%d" % port,
                                 "tls": "implicit", "auth": "required"}]})
    with smtplib.SMTP_SSL("127.0.0.1", port, context=client_context(ca=certs.ca, check_hostname=False),
                          timeout=30) as s:
        s.ehlo("client.example")
        assert s.docmd("MAIL", "FROM:<alice@client.example>")[0] == 530
        s.login("alice", USERS["alice"])
        s.sendmail("alice@client.example", ["x@elsewhere.example"], b"Subject: i\r\n\r\nx\r\n")
    assert len(srv.queue_list()) == 1
