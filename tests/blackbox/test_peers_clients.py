"""Submission into ringmx by the command-line clients people use: msmtp
(GnuTLS) and swaks (Perl, Net::SSLeay), each with STARTTLS and SMTP AUTH on
a submission listener (auth required; users file as in test_auth.py).  The
stored message must be byte for byte the one the client was given:
dot-leading lines, a 998-octet line, every 8-bit octet."""

import os
import re
import subprocess

import pytest

from conftest import env_get, strip_received
from peers import PEER_BODY, peer_message, require
from test_auth import USERS, users_file
from tlsutil import certs  # noqa: F401  (fixture)

MX = "mx.test"
FROM = "alice@client.example"
RCPT = "someone@elsewhere.example"  # a foreign domain: relayed only after AUTH


def submission(ringmx, certs, tmp_path):
    cert, key = certs.leaf(MX)
    return ringmx({"tls": {"certificates": [{"cert": cert, "key": key, "names": [MX]}]},
                   "auth": {"users_file": users_file(tmp_path), "failure_delay_ms": 100},
                   "listeners": [{"name": "submission", "greet_pause_ms": 0, "tls": "starttls",
                                  "auth": "required"}]})


def check_stored(srv, msg, user="alice"):
    """One message queued: ringmx's Received: (ESMTPSA, the user), then
    exactly msg."""
    q = srv.queue_list()
    assert len(q) == 1, q
    env, stored = srv.queue_show(list(q)[0])
    ours, rest = strip_received(stored)
    ours = ours.replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    assert b" with ESMTPSA " in ours, ours
    assert b"authenticated as " + user.encode() in ours, ours
    assert rest == msg, "stored other bytes than the client was given:\n%r\n!=\n%r" % (
        rest[-1500:], msg[-1500:])
    return env


# --------------------------------------------------------------------------
# msmtp


def msmtp_config(tmp_path, srv, certs, password):
    """A private msmtp config (mode 0600: msmtp refuses a password in a file
    others can read).  No header is added: the message has them all."""
    path = tmp_path / "msmtprc"
    path.write_text(
        "defaults\n"
        "logfile %s\n"
        "account rmx\n"
        "host 127.0.0.1\n"
        "port %d\n"
        "domain client.example\n"
        "tls on\n"
        "tls_starttls on\n"
        "tls_trust_file %s\n"
        "tls_host_override %s\n"
        "auth plain\n"
        "user alice\n"
        "password %s\n"
        "from %s\n"
        "set_from_header off\n"
        "set_date_header off\n"
        % (tmp_path / "msmtp.log", srv.port, certs.ca, MX, password, FROM))
    os.chmod(path, 0o600)
    return str(path)


def msmtp(conf, message, *rcpts):
    return subprocess.run(["msmtp", "-C", conf, "-a", "rmx", "--"] + list(rcpts),
                          input=message, capture_output=True, timeout=60)


@pytest.fixture
def need_msmtp():
    require("msmtp", "/usr/bin/msmtp")


def test_msmtp_submission_bytes_exact(ringmx, certs, tmp_path, need_msmtp):
    srv = submission(ringmx, certs, tmp_path)
    conf = msmtp_config(tmp_path, srv, certs, USERS["alice"])
    msg = peer_message("msmtp-1@client.example", FROM, RCPT)
    r = msmtp(conf, msg, RCPT)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    env = check_stored(srv, msg)
    assert env_get(env, "auth") == ["alice"], env
    log = (tmp_path / "msmtp.log").read_text()
    assert "exitcode=EX_OK" in log and "tls=on" in log and "auth=on" in log, log


def test_msmtp_wrong_password_nothing_queued(ringmx, certs, tmp_path, need_msmtp):
    srv = submission(ringmx, certs, tmp_path)
    conf = msmtp_config(tmp_path, srv, certs, "not the password")
    r = msmtp(conf, peer_message("msmtp-2@client.example", FROM, RCPT), RCPT)
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert b"535" in r.stderr, r.stderr
    assert srv.queue_list() == {}


def test_msmtp_starttls_session_ends_cleanly(ringmx, certs, tmp_path, need_msmtp):
    """msmtp --serverinfo: EHLO, STARTTLS, EHLO, QUIT; GnuTLS has nothing to
    say about the session or its end."""
    srv = submission(ringmx, certs, tmp_path)
    conf = msmtp_config(tmp_path, srv, certs, USERS["alice"])
    r = subprocess.run(["msmtp", "-C", conf, "-a", "rmx", "--serverinfo"],
                       capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 0, out
    assert re.search(r"Supported authentication methods:\s+PLAIN LOGIN\b", out), out
    assert re.search(r"TLS session parameters:\s+\(TLS1\.[23]\)", out), out
    assert re.search(r"Subject:\s+CN=mx\.test\s", out), out
    assert not re.search(r"(?i)TLS.*(error|warning)|non-properly terminated", out), out


def test_tls_close_notify_after_221(ringmx, certs, tmp_path):
    """After 221 the server ends TLS with close_notify (RFC 8446 6.1) before
    closing TCP, so a client can tell the end from a cut (a truncation
    attack).  OpenSSL's s_client reports a missing one ("unexpected eof
    while reading") where msmtp, swaks and Postfix stop reading at 221."""
    srv = submission(ringmx, certs, tmp_path)
    r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                        "127.0.0.1:%d" % srv.port, "-servername", MX, "-CAfile", certs.ca,
                        "-verify_return_error", "-quiet", "-ign_eof"],
                       input=b"EHLO client.example\r\nQUIT\r\n", capture_output=True, timeout=30)
    out = r.stdout.decode(errors="replace")
    err = r.stderr.decode(errors="replace")
    assert "221 2.0.0" in out, out + err
    assert "unexpected eof" not in err, err
    assert r.returncode == 0, err


# --------------------------------------------------------------------------
# swaks

# swaks takes a lone "." as the last line of its data for the end of data
# (its documented "closing dot is allowed"), so its message ends on another
# line; every other line of PEER_BODY is kept.
SWAKS_BODY = PEER_BODY + b"after the last dot\r\n"


@pytest.fixture
def need_swaks():
    require("swaks", "/usr/bin/swaks")
    require("libnet-ssleay-perl")


def swaks(srv, certs, tmp_path, msg, mech, password):
    """swaks ends the data with CRLF "." CRLF itself: its file holds the
    message without the last line's CRLF."""
    assert msg.endswith(b"\r\n")
    data = tmp_path / "message.eml"
    data.write_bytes(msg[:-2])
    return subprocess.run(["swaks", "--server", "127.0.0.1:%d" % srv.port, "--tls",
                           "--tls-verify", "--tls-ca-path", certs.ca, "--tls-sni", MX,
                           "--helo", "client.example", "--from", FROM, "--to", RCPT,
                           "--auth", mech, "--auth-user", "alice", "--auth-password", password,
                           "--data", "@" + str(data)],
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_submission_bytes_exact(ringmx, certs, tmp_path, need_swaks, mech):
    srv = submission(ringmx, certs, tmp_path)
    msg = peer_message("swaks-%s@client.example" % mech, FROM, RCPT, body=SWAKS_BODY)
    r = swaks(srv, certs, tmp_path, msg, mech, USERS["alice"])
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert re.search(r"(?m)^<~  235 ", out), out  # the AUTH went over TLS (<~ marks TLS)
    assert re.search(r"(?m)^<~  250 2\.0\.0 Ok: queued as [0-9A-F]{16}$", out), out
    env = check_stored(srv, msg)
    assert env_get(env, "auth") == ["alice"], env
