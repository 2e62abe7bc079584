"""Self-tests of the test next hop (nexthop.py) with real clients: smtplib and raw
sockets.  They need no ringmx binary."""

import json
import os
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from conftest import SMTPClient, free_port, wait_for
from nexthop import NextHop, Rule, nexthop  # noqa: F401  (nexthop is a fixture)

HERE = os.path.dirname(os.path.abspath(__file__))


def msg(mid, body="Hello.\r\n", extra=""):
    return ("From: a@client.example\r\nTo: b@accepted.example\r\nSubject: test\r\n"
            "Message-ID: <%s>\r\n%s\r\n%s" % (mid, extra, body))


def ehlo(c, verb="EHLO"):
    r = c.cmd("%s client.example" % verb)
    assert r.code == 250, r
    return r


# --------------------------------------------------------------------------
# plain SMTP


def test_smtplib_plain(nexthop):
    nh = nexthop()
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
        s.ehlo("client.example")
        for ext in ("pipelining", "8bitmime", "smtputf8", "dsn", "size", "chunking"):
            assert s.has_extn(ext), ext
        assert s.esmtp_features["size"] == "10485760"
        refused = s.sendmail("a@client.example", ["b@accepted.example", "c@accepted.example"],
                             msg("plain@test"))
        assert refused == {}
    [t] = nh.wait_messages(1)
    assert t.mail_from == "a@client.example"
    assert "SIZE" in t.mail_params
    assert t.rcpts == ["b@accepted.example", "c@accepted.example"]
    assert t.delivered == t.rcpts
    assert t.via == "DATA"
    assert t.data == msg("plain@test").encode()
    assert t.helo == "client.example"
    assert t.message_id == "<plain@test>"
    assert t.replies[0][1].startswith("250 2.0.0 Ok: queued as")
    assert nh.by_message_id("plain@test") == [t]
    assert nh.by_message_id("<plain@test>") == [t]
    assert nh.message_ids() == {"plain@test": 1}
    nh.wait_idle(5)
    [c] = nh.connections()
    assert c.closed_by == "quit" and c.transactions == 1
    assert nh.connection_count == 1 and nh.transaction_count == 1 and nh.mail_commands == 1
    assert nh.errors() == []


def test_dot_stuffing_stored_unstuffed(nexthop):
    nh = nexthop()
    body = ".leading dot\r\n..two dots\r\n.\r\nx\r\n. \r\nend\r\n"
    # smtplib does the stuffing
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
        s.sendmail("a@client.example", ["b@accepted.example"], msg("dots1@test", body))
    # and a raw client, byte for byte
    c = SMTPClient(nh.port)
    ehlo(c)
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<b@accepted.example>", "250")
    c.expect("DATA", "354")
    stuffed = msg("dots2@test", body).replace("\r\n.", "\r\n..")
    c.send(stuffed + ".\r\n")
    assert c.reply().code == 250
    c.expect("QUIT", "221")
    c.close()
    t1, t2 = nh.wait_messages(2)
    assert t1.data == msg("dots1@test", body).encode()
    assert t2.data == msg("dots2@test", body).encode()
    assert b"\r\n..leading dot\r\n...two dots\r\n..\r\n" in t2.raw
    assert b"\r\n.leading dot\r\n..two dots\r\n.\r\nx\r\n" in t2.data


def test_empty_message_and_leading_dot(nexthop):
    nh = nexthop()
    c = SMTPClient(nh.port)
    ehlo(c)
    for content in (b".\r\n", b"..x\r\n.\r\n"):
        c.expect("MAIL FROM:<>", "250")
        c.expect("RCPT TO:<b@accepted.example>", "250")
        c.expect("DATA", "354")
        c.send(content)
        assert c.reply().code == 250
    c.close()
    t1, t2 = nh.wait_messages(2)
    assert t1.data == b"" and t1.mail_from == ""
    assert t2.data == b".x\r\n" and t2.raw == b"..x\r\n"


def test_pipelining_replies_in_order(nexthop):
    nh = nexthop(rules=[Rule("rcpt", "550 5.1.1 No such user", rcpt="bad@accepted.example")])
    c = SMTPClient(nh.port)
    ehlo(c)
    c.send("MAIL FROM:<a@client.example> BODY=8BITMIME\r\nRCPT TO:<b@accepted.example>\r\n"
           "RCPT TO:<bad@accepted.example>\r\nRCPT TO:<c@accepted.example> NOTIFY=FAILURE,DELAY\r\n"
           "DATA\r\n")
    rs = c.replies(5)
    assert [r.code for r in rs] == [250, 250, 550, 250, 354], rs
    assert rs[2].last == "550 5.1.1 No such user"
    c.send(msg("pipe@test") + ".\r\nQUIT\r\n")
    rs = c.replies_until_closed()
    assert [r.code for r in rs] == [250, 221], rs
    [t] = nh.wait_messages(1)
    assert t.rcpts == ["b@accepted.example", "c@accepted.example"]
    assert t.rcpt_params["c@accepted.example"] == {"NOTIFY": "FAILURE,DELAY"}
    assert t.mail_params == {"BODY": "8BITMIME"}
    assert [a[2][:3] for a in t.rcpt_attempts] == ["250", "550", "250"]
    nh.wait_idle(5)
    [conn] = nh.connections()
    assert conn.pipelined >= 4, conn
    assert nh.errors() == []


def test_pipelining_violations_are_recorded(nexthop):
    nh = nexthop(pipelining=False, check_protocol=False)
    c = SMTPClient(nh.port)
    ehlo(c)
    c.send("MAIL FROM:<a@client.example>\r\nRCPT TO:<b@accepted.example>\r\n")
    assert [r.code for r in c.replies(2)] == [250, 250]
    c.send("DATA\r\n" + msg("early@test") + ".\r\n")  # content before the 354
    assert [r.code for r in c.replies(2)] == [354, 250]
    c.close()
    nh.wait_messages(1)
    errs = "\n".join(nh.errors())
    assert "pipelined but PIPELINING was not offered" in errs
    assert "message data sent before the 354 reply" in errs


def test_content_findings(nexthop):
    nh = nexthop(eightbitmime=True, check_protocol=False)
    c = SMTPClient(nh.port)
    ehlo(c)
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<b@accepted.example>", "250")
    c.expect("DATA", "354")
    c.send(b"Subject: x\r\n\r\nbare\nLF and 8 bit \xc3\xa9\r\n" + b"y" * 1200 + b"\r\n.\r\n")
    assert c.reply().code == 250
    c.close()
    nh.wait_messages(1)
    errs = "\n".join(nh.errors())
    assert "bare LF in DATA" in errs
    assert "8-bit message data without BODY=8BITMIME" in errs
    assert "line longer than 998" in "\n".join(nh.warnings())


def test_bdat_chunks(nexthop):
    nh = nexthop()
    c = SMTPClient(nh.port)
    ehlo(c)
    part1 = b"Message-ID: <bdat@test>\r\nSubject: chunks\r\n\r\n"
    part2 = b".not stuffed\r\n.\r\nbinary \x00\xff end\r\n"
    c.send(b"MAIL FROM:<a@client.example> BODY=8BITMIME\r\nRCPT TO:<b@accepted.example>\r\n"
           + b"BDAT %d\r\n" % len(part1) + part1 + b"BDAT %d LAST\r\n" % len(part2) + part2)
    rs = c.replies(4)
    assert [r.code for r in rs] == [250, 250, 250, 250], rs
    c.expect("QUIT", "221")
    c.close()
    [t] = nh.wait_messages(1)
    assert t.via == "BDAT"
    assert t.chunks == [len(part1), len(part2)]
    assert t.data == t.raw == part1 + part2
    assert t.message_id == "<bdat@test>"
    assert nh.errors() == []


def test_bdat_without_chunking_is_an_error(nexthop):
    nh = nexthop(chunking=False, check_protocol=False)
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
        s.ehlo("client.example")
        assert not s.has_extn("chunking")
        s.mail("a@client.example")
        s.rcpt("b@accepted.example")
        s.send(b"BDAT 3 LAST\r\nabc")
        code, _ = s.getreply()
        assert code == 502
    assert any("CHUNKING was not offered" in e for e in nh.errors())


def test_sessions_answering_at_once_get_distinct_queued_ids(nexthop):
    # Two sessions end their data before either is stored: each "queued as"
    # number must still be its own (it was the count of stored ones + 1).
    both = threading.Barrier(2, timeout=20)

    def together(ctx):
        both.wait()
        return None  # the default 250 ... queued as NH...

    nh = nexthop(rules=[Rule("message", together)])
    replies = []

    def send(i):
        with smtplib.SMTP("127.0.0.1", nh.port, timeout=20) as s:
            s.ehlo("client.example")
            s.mail("a@client.example")
            s.rcpt("b@accepted.example")
            replies.append(s.data(msg("together-%d@test" % i))[1].decode())
    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(replies) == 2, replies
    assert all(r.startswith("2.0.0 Ok: queued as NH") for r in replies), replies
    assert replies[0] != replies[1], replies


# --------------------------------------------------------------------------
# programmable behaviour


def test_4xx_first_attempts_then_ok_and_5xx_for_one_recipient(nexthop):
    nh = nexthop(rules=[
        Rule("rcpt", "550 5.1.1 <bad@accepted.example>: No such user", rcpt="BAD@accepted.example"),
        Rule("message", "451 4.3.0 Try again later", times=2),
    ])
    rcpts = ["ok@accepted.example", "bad@accepted.example"]
    codes = []
    for _ in range(3):
        with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
            try:
                refused = s.sendmail("a@client.example", rcpts, msg("retry@test"))
                codes.append(250)
                assert refused == {"bad@accepted.example":
                                   (550, b"5.1.1 <bad@accepted.example>: No such user")}
            except smtplib.SMTPDataError as e:
                codes.append(e.smtp_code)
    assert codes == [451, 451, 250]
    ts = nh.wait_transactions(3)
    assert [t.accepted for t in ts] == [False, False, True]
    assert ts[0].replies == [(None, "451 4.3.0 Try again later")]
    assert all(t.rcpts == ["ok@accepted.example"] for t in ts)
    assert nh.messages() == [ts[2]]
    assert nh.message_ids() == {"retry@test": 1}
    assert nh.delivered_to("OK@accepted.example") == [ts[2]]


def test_per_recipient_temporary_then_ok(nexthop):
    nh = nexthop(rules=[Rule("rcpt", "450 4.2.0 Mailbox busy", rcpt="busy@accepted.example",
                             times=1)])
    c = SMTPClient(nh.port)
    ehlo(c)
    for expect in (450, 250, 250):
        c.expect("MAIL FROM:<a@client.example>", "250")
        assert c.cmd("RCPT TO:<busy@accepted.example>").code == expect
        c.expect("RSET", "250")
    c.close()


def test_drop_at_mail_then_ok(nexthop):
    nh = nexthop(rules=[Rule("mail", drop=True, times=1)])
    with pytest.raises(smtplib.SMTPServerDisconnected):
        with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
            s.sendmail("a@client.example", ["b@accepted.example"], msg("drop1@test"))
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
        s.sendmail("a@client.example", ["b@accepted.example"], msg("drop1@test"))
    nh.wait_messages(1)
    nh.wait_idle(5)
    assert [c.closed_by for c in nh.connections()] == ["drop", "quit"]
    assert nh.transaction_count == 1


def test_drop_after_data_keeps_unacknowledged_copy(nexthop):
    """The next hop got the whole message but the client never saw a reply: the
    transaction is stored with dropped=True and does not count as delivered."""
    nh = nexthop(rules=[Rule("message", drop="rst", times=1)])
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionResetError)):
        with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
            s.sendmail("a@client.example", ["b@accepted.example"], msg("lost@test"))
    [t] = nh.wait_transactions(1)
    assert t.dropped and not t.accepted and t.replies == []
    assert nh.messages() == [] and nh.by_message_id("lost@test") == []


def test_drop_at_connect_and_421(nexthop):
    nh = nexthop(rules=[Rule("connect", drop=True, times=1),
                        Rule("connect", "421 4.3.2 Service shutting down", times=1),
                        Rule("connect", "554 5.3.2 Go away", times=1)])
    c = SMTPClient(nh.port, read_banner=False)
    assert c.read_until_closed(5) == b""
    c.close()
    c = SMTPClient(nh.port, read_banner=False)
    assert c.replies_until_closed(5)[0].last == "421 4.3.2 Service shutting down"
    c.close()
    c = SMTPClient(nh.port)
    assert c.banner.code == 554
    assert c.cmd("EHLO client.example").code == 503
    c.expect("QUIT", "221")
    c.close()
    c = SMTPClient(nh.port)
    assert c.banner.code == 220
    c.close()


def test_421_reply_closes(nexthop):
    nh = nexthop(rules=[Rule("rcpt", "421 4.7.0 Too busy")])
    c = SMTPClient(nh.port)
    ehlo(c)
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<b@accepted.example>", "421")
    assert c.read_until_closed(5) == b""
    c.close()


def test_delay_and_callable_reply(nexthop):
    seen = []

    def reply(ctx):
        seen.append((ctx.sender, ctx.rcpt, ctx.params))
        return "550 5.7.1 Sender %s refused" % ctx.sender if ctx.sender == "spam@x.example" else None

    nh = nexthop(rules=[Rule("rcpt", reply), Rule("mail", delay=0.3, sender="slow@client.example")])
    c = SMTPClient(nh.port)
    ehlo(c)
    t0 = time.monotonic()
    c.expect("MAIL FROM:<slow@client.example>", "250")
    assert time.monotonic() - t0 >= 0.3
    c.expect("RCPT TO:<b@accepted.example> ORCPT=rfc822;b@accepted.example", "250")
    c.expect("RSET", "250")
    t0 = time.monotonic()
    c.expect("MAIL FROM:<spam@x.example>", "250")
    assert time.monotonic() - t0 < 0.25
    c.expect("RCPT TO:<b@accepted.example>", "550 5.7.1 Sender spam@x.example refused")
    c.close()
    assert seen[0] == ("slow@client.example", "b@accepted.example",
                       {"ORCPT": "rfc822;b@accepted.example"})


def test_rules_changed_while_running(nexthop):
    nh = nexthop()
    nh.set_rules([Rule("mail", "452 4.3.1 Insufficient system storage")])
    c = SMTPClient(nh.port)
    ehlo(c)
    c.expect("MAIL FROM:<a@client.example>", "452")
    nh.set_rules([])
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.close()


def test_extension_set_and_size(nexthop):
    nh = nexthop(pipelining=False, eightbitmime=False, smtputf8=False, dsn=False, size=1000,
                 chunking=False, enhancedstatuscodes=False, extensions=["X-TEST"],
                 check_protocol=False)
    c = SMTPClient(nh.port)
    r = ehlo(c)
    assert r.lines[1:] == ["250-SIZE 1000", "250 X-TEST"], r
    c.expect("MAIL FROM:<a@client.example> SIZE=1001", "552")
    c.expect("MAIL FROM:<a@client.example> BODY=8BITMIME", "555")
    c.expect("MAIL FROM:<a@client.example> RET=HDRS", "555")
    c.expect("MAIL FROM:<a@client.example> SIZE=999", "250 Ok")
    c.expect("RCPT TO:<b@accepted.example> NOTIFY=NEVER", "555")
    c.expect("RCPT TO:<\u00e9@accepted.example>", "553")
    c.expect("RCPT TO:<b@accepted.example>", "250")
    c.expect("DATA", "354")
    c.send(b"Subject: big\r\n\r\n" + b"x" * 1000 + b"\r\n.\r\n")
    assert c.reply().code == 552
    c.close()
    errs = "\n".join(nh.errors())
    for what in ("BODY not offered", "RET not offered", "NOTIFY not offered",
                 "without SMTPUTF8", "over the advertised SIZE"):
        assert what in errs, (what, errs)
    assert nh.messages() == []


def test_smtputf8_and_8bit(nexthop):
    nh = nexthop()
    body = "Subject: caf\u00e9\r\nMessage-ID: <utf8@test>\r\n\r\nna\u00efve\r\n".encode("utf-8")
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
        s.sendmail("j\u00f6rg@client.example", ["\u00fc@accepted.example"], body,
                   mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    [t] = nh.wait_messages(1)
    assert t.mail_from == "j\u00f6rg@client.example"
    assert t.rcpts == ["\u00fc@accepted.example"]
    assert "SMTPUTF8" in t.mail_params and t.mail_params["BODY"] == "8BITMIME"
    assert t.data == body
    assert nh.errors() == []


# --------------------------------------------------------------------------
# LMTP


def test_lmtp_per_recipient_replies(nexthop):
    nh = nexthop(lmtp=True, rules=[Rule("message", "452 4.2.2 <b@lmtp.example> Mailbox full",
                                        rcpt="b@lmtp.example")])
    c = SMTPClient(nh.port)
    assert "LMTP" in c.banner.last
    assert c.cmd("EHLO client.example").code == 500
    r = ehlo(c, "LHLO")
    assert "250-PIPELINING" in r.lines
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<a@lmtp.example>", "250")
    c.expect("RCPT TO:<b@lmtp.example>", "250")
    c.expect("DATA", "354")
    c.send(msg("lmtp@test") + ".\r\n")
    r1, r2 = c.replies(2)
    assert r1.code == 250 and "a@lmtp.example" in r1.last
    assert r2.last == "452 4.2.2 <b@lmtp.example> Mailbox full"
    c.expect("QUIT", "221")
    c.close()
    [t] = nh.wait_messages(1)
    assert t.lmtp and t.rcpts == ["a@lmtp.example", "b@lmtp.example"]
    assert t.delivered == ["a@lmtp.example"]
    assert [r[0] for r in t.replies] == t.rcpts
    assert nh.url == "lmtp://127.0.0.1:%d" % nh.port


def test_lmtp_pipelined_bdat_and_drop_mid_replies(nexthop):
    nh = nexthop(lmtp=True, rules=[Rule("message", drop=True, rcpt="c@lmtp.example", times=1)])
    c = SMTPClient(nh.port)
    ehlo(c, "LHLO")
    body = msg("lmtp2@test").encode()
    c.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<a@lmtp.example>\r\nRCPT TO:<b@lmtp.example>\r\n"
           b"RCPT TO:<c@lmtp.example>\r\nBDAT %d LAST\r\n" % len(body) + body)
    rs = c.replies_until_closed(5)
    # four command replies, then one per recipient up to the drop
    assert [r.code for r in rs] == [250, 250, 250, 250, 250, 250], rs
    c.close()
    [t] = nh.wait_transactions(1)
    assert t.dropped and t.via == "BDAT" and t.data == body
    assert [r[0] for r in t.replies] == ["a@lmtp.example", "b@lmtp.example"]


# --------------------------------------------------------------------------
# STARTTLS (RFC 3207)


@pytest.fixture
def hop_cert(tmp_path):
    """(certfile, keyfile): a self-signed P-256 certificate for nexthop.test."""
    cert, key = str(tmp_path / "hop.pem"), str(tmp_path / "hop.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-subj", "/CN=nexthop.test",
                    "-addext", "subjectAltName=DNS:nexthop.test", "-days", "2"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def tls_client_context(cert, **kw):
    """Trusts exactly the hop's certificate; smtplib names the server 127.0.0.1."""
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def raw_starttls(c, cert, **kw):
    """STARTTLS on a raw SMTPClient: 220, then the handshake; c talks TLS afterwards."""
    r = c.cmd("STARTTLS")
    assert r.last == "220 2.0.0 Ready to start TLS", r
    assert c.buf == b""
    c.sock = tls_client_context(cert, **kw).wrap_socket(c.sock, server_hostname="nexthop.test")
    return c.sock


def test_starttls_smtplib(nexthop, hop_cert):
    nh = nexthop(tls=hop_cert)
    cert, _ = hop_cert
    # several TLS records, 8-bit content, dot lines: arrives byte for byte
    body = "".join(".line %d caf\u00e9 %s\r\n" % (i, "x" * 70) for i in range(5000))
    content = msg("tls@test", body).encode("utf-8")
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
        s.ehlo("client.example")
        assert s.has_extn("starttls")
        code, _ = s.starttls(context=tls_client_context(cert))
        assert code == 220
        s.ehlo("client.example")
        assert not s.has_extn("starttls"), s.esmtp_features
        assert s.has_extn("pipelining") and s.has_extn("chunking")
        assert s.sendmail("a@client.example", ["b@accepted.example"], content,
                          mail_options=["BODY=8BITMIME"]) == {}
    [t] = nh.wait_messages(1)
    assert t.tls_version in ("TLSv1.2", "TLSv1.3"), t.tls_version
    assert t.tls_cipher
    assert t.data == content
    assert t.helo == "client.example"
    assert t.envelope()["tls_version"] == t.tls_version
    nh.wait_idle(5)
    [c] = nh.connections()
    assert (c.tls_version, c.tls_cipher, c.tls_error) == (t.tls_version, t.tls_cipher, None)
    assert c.closed_by == "quit"
    assert nh.errors() == [] and nh.tls_errors() == []


def test_starttls_starts_a_new_session(nexthop, hop_cert):
    nh = nexthop(tls=hop_cert)
    cert, _ = hop_cert
    c = SMTPClient(nh.port)
    r = ehlo(c)
    assert "250-STARTTLS" in r.lines or "250 STARTTLS" in r.lines, r
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("STARTTLS", "503 5.5.1 Error: MAIL transaction in progress")
    c.expect("RSET", "250")
    c.expect("STARTTLS now", "501")
    tsock = raw_starttls(c, cert)
    version, cipher = tsock.version(), tsock.cipher()[0]
    assert version in ("TLSv1.2", "TLSv1.3")
    # the greeting is forgotten
    c.expect("MAIL FROM:<a@client.example>", "503")
    r = ehlo(c)
    assert not any("STARTTLS" in ln for ln in r.lines), r
    c.expect("STARTTLS", "503 5.5.1 Error: TLS already active")
    # pipelined commands and BDAT over TLS
    body = msg("tls-bdat@test").encode()
    c.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@accepted.example>\r\n"
           b"BDAT %d LAST\r\n" % len(body) + body)
    assert [r.code for r in c.replies(3)] == [250, 250, 250]
    c.expect("QUIT", "221")
    c.close()
    [t] = nh.wait_messages(1)
    assert t.via == "BDAT" and t.data == body
    assert (t.tls_version, t.tls_cipher) == (version, cipher)
    assert nh.errors() == []


def test_starttls_lmtp(nexthop, hop_cert):
    nh = nexthop(lmtp=True, tls=hop_cert)
    cert, _ = hop_cert
    c = SMTPClient(nh.port)
    assert "250-STARTTLS" in ehlo(c, "LHLO").lines
    raw_starttls(c, cert)
    c.expect("MAIL FROM:<a@client.example>", "503 5.5.1 Error: send LHLO first")
    ehlo(c, "LHLO")
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<a@lmtp.example>", "250")
    c.expect("DATA", "354")
    c.send(msg("lmtp-tls@test") + ".\r\n")
    assert c.reply().code == 250
    c.close()
    [t] = nh.wait_messages(1)
    assert t.lmtp and t.tls_version in ("TLSv1.2", "TLSv1.3")


def test_starttls_rules_454_and_drop(nexthop, hop_cert):
    nh = nexthop(tls=hop_cert, rules=[Rule("starttls", "454 4.7.0 TLS not available", times=1),
                                      Rule("starttls", drop=True, times=1)])
    cert, _ = hop_cert
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
        s.ehlo("client.example")
        with pytest.raises(smtplib.SMTPResponseException) as ei:
            s.starttls(context=tls_client_context(cert))
        assert (ei.value.smtp_code, ei.value.smtp_error) == (454, b"4.7.0 TLS not available")
        # the session goes on in plain text
        s.sendmail("a@client.example", ["b@accepted.example"], msg("plain-after-454@test"))
    with pytest.raises(smtplib.SMTPServerDisconnected):
        with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
            s.ehlo("client.example")
            s.starttls(context=tls_client_context(cert))
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:  # rules used up
        s.ehlo("client.example")
        s.starttls(context=tls_client_context(cert))
        s.sendmail("a@client.example", ["b@accepted.example"], msg("tls-third@test"))
    t1, t2 = nh.wait_messages(2)
    assert t1.message_id == "<plain-after-454@test>" and t1.tls_version is None
    assert t2.message_id == "<tls-third@test>" and t2.tls_version in ("TLSv1.2", "TLSv1.3")
    nh.wait_idle(5)
    assert [c.closed_by for c in nh.connections()] == ["quit", "drop", "quit"]
    assert nh.tls_errors() == []


def test_no_starttls_without_tls(nexthop, hop_cert):
    nh = nexthop()
    c = SMTPClient(nh.port)
    r = ehlo(c)
    assert not any("STARTTLS" in ln for ln in r.lines), r
    c.expect("STARTTLS", "502 5.5.1 Error: STARTTLS not offered")
    c.expect("MAIL FROM:<a@client.example>", "250")  # still greeted, still plain
    c.close()
    assert nh.connections()[0].tls_version is None
    # a TLS-capable hop told to stop offering it
    nh2 = nexthop(tls=hop_cert)
    nh2.set_extensions(starttls=False)
    c = SMTPClient(nh2.port)
    assert not any("STARTTLS" in ln for ln in ehlo(c).lines)
    c.expect("STARTTLS", "502")
    c.close()
    with pytest.raises(ValueError):
        nh.set_extensions(starttls=True)


def test_starttls_discards_input_sent_before_220(nexthop, hop_cert):
    """RFC 3207: plain-text bytes after STARTTLS must not be acted upon after the
    handshake (the command-injection class of bugs); sending them is an error."""
    nh = nexthop(tls=hop_cert, check_protocol=False)
    cert, _ = hop_cert
    c = SMTPClient(nh.port)
    ehlo(c)
    c.send("STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")  # one segment, one read
    r = c.reply()
    assert r.code == 220, r
    c.sock = tls_client_context(cert).wrap_socket(c.sock, server_hostname="nexthop.test")
    ehlo(c)
    c.expect("RCPT TO:<b@accepted.example>", "503 5.5.1 Error: need MAIL command")
    c.close()
    nh.wait_idle(5)
    [conn] = nh.connections()
    assert not any("injected" in cmd for cmd in conn.commands), conn.commands
    assert any("sent after STARTTLS before the TLS handshake" in e for e in nh.errors()), nh.errors()


def test_tls_version_limits_and_failed_handshake(nexthop, hop_cert):
    nh = nexthop(tls=hop_cert, tls_max_version=ssl.TLSVersion.TLSv1_2)
    cert, _ = hop_cert
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
        s.starttls(context=tls_client_context(cert))
        s.sendmail("a@client.example", ["b@accepted.example"], msg("tls12@test"))
    [t] = nh.wait_messages(1)
    assert t.tls_version == "TLSv1.2"
    # a client that insists on TLS 1.3 cannot agree with it
    c = SMTPClient(nh.port)
    ehlo(c)
    with pytest.raises(ssl.SSLError):
        raw_starttls(c, cert, minimum_version=ssl.TLSVersion.TLSv1_3)
    c.close()
    nh.wait_idle(5)
    conn = nh.connections()[1]
    assert conn.closed_by == "tls" and conn.tls_version is None, conn
    assert conn.tls_error and "SSLError" in conn.tls_error
    assert nh.tls_errors() == ["conn 2: " + conn.tls_error]
    assert nh.errors() == []  # a failed handshake is not a protocol error
    # and one that does not speak TLS at all after the 220
    nh3 = nexthop(tls=hop_cert, tls_min_version=ssl.TLSVersion.TLSv1_3)
    c = SMTPClient(nh3.port)
    c.expect("STARTTLS", "220")
    c.send("EHLO client.example\r\n")
    c.read_until_closed(5)
    c.close()
    nh3.wait_idle(5)
    assert nh3.connections()[0].closed_by == "tls" and nh3.tls_errors()


def test_stop_closes_tls_connections_promptly(nexthop, hop_cert):
    nh = nexthop(tls=hop_cert)
    cert, _ = hop_cert
    idle = SMTPClient(nh.port)  # TLS up, then idle
    raw_starttls(idle, cert)
    ehlo(idle)
    stuck = SMTPClient(nh.port)  # the 220, then no handshake: the hop waits in it
    stuck.expect("STARTTLS", "220")
    nh.wait_until(lambda s: s.connections()[0].tls_version, 5, "first handshake")
    t0 = time.monotonic()
    nh.stop()
    assert time.monotonic() - t0 < 3.0
    assert idle.read_until_closed(5) == b""
    assert stuck.read_until_closed(5) == b""
    idle.close()
    stuck.close()
    assert [c.closed_by for c in nh.connections()] == ["stop", "stop"]
    assert nh.active == 0


# --------------------------------------------------------------------------
# scale, files, restart, CLI


def test_concurrent_clients(nexthop):
    nh = nexthop()
    nclients, per = 40, 5
    failures = []
    barrier = threading.Barrier(nclients, timeout=10)

    def client(i):
        try:
            with smtplib.SMTP("127.0.0.1", nh.port, timeout=10) as s:
                barrier.wait()
                for j in range(per):
                    s.sendmail("a@client.example", ["b@accepted.example"],
                               msg("c%d.%d@test" % (i, j), "x" * 5000 + "\r\n"))
        except Exception as e:  # collected and reported below
            failures.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(nclients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures, failures[:5]
    nh.wait_messages(nclients * per, timeout=10)
    ids = nh.message_ids()
    assert len(ids) == nclients * per and set(ids.values()) == {1}
    assert nh.max_active == nclients
    assert nh.connection_count == nclients
    assert nh.by_message_id("c7.3@test")[0].data.endswith(b"x" * 5000 + b"\r\n")


def test_store_dir(nexthop, tmp_path):
    nh = nexthop(store_dir=str(tmp_path / "store"))
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
        s.sendmail("a@client.example", ["b@accepted.example"], msg("file@test"))
    [t] = nh.wait_messages(1)
    with open(t.path, "rb") as f:
        assert f.read() == t.data
    with open(t.path[:-4] + ".json") as f:
        env = json.load(f)
    assert env["mail_from"] == "a@client.example" and env["rcpts"] == ["b@accepted.example"]
    assert env["delivered"] == ["b@accepted.example"]


def test_stop_and_restart_on_same_port(nexthop):
    nh = nexthop()
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
        s.sendmail("a@client.example", ["b@accepted.example"], msg("r1@test"))
    c = SMTPClient(nh.port)  # an open connection must not hold stop() up
    port = nh.port
    nh.stop()
    assert c.read_until_closed(5) == b""
    c.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    nh.start()
    assert nh.port == port
    with smtplib.SMTP("127.0.0.1", nh.port, timeout=5) as s:
        s.sendmail("a@client.example", ["b@accepted.example"], msg("r2@test"))
    assert set(nh.wait_messages(2) and nh.message_ids()) == {"r1@test", "r2@test"}


def test_other_loopback_address():
    """Each MX host of a test zone can be its own loopback address."""
    with NextHop(host="127.0.0.3") as nh:
        c = SMTPClient(nh.port, host="127.0.0.3")
        assert c.banner.code == 220
        c.close()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.4", nh.port), timeout=2).close()


def test_cli_stops_cleanly_as_soon_as_it_is_ready():
    # The ready line promises that SIGTERM is handled (exit 0): a harness stops
    # it by PID right after reading that line.  Several rounds, as the window
    # before the handlers are installed is short.
    for i in range(10):
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "nexthop.py"), "--port",
                              str(free_port())], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            line = p.stdout.readline().decode()
            assert line.startswith("nexthop: SMTP on 127.0.0.1:"), line
        finally:
            p.terminate()  # by PID
            out, _ = p.communicate(timeout=10)
        assert p.returncode == 0, "round %d: exit %r %r" % (i, p.returncode, out)


def test_cli_prints_every_transaction_before_it_exits():
    # Nobody reads its output while the mail flows, so the pipe fills and the
    # CLI falls behind (each line carries a ~900-byte Message-ID); stopped
    # then, it still prints every stored transaction on its way out.
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "nexthop.py"), "--port",
                          str(free_port())], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    n = 100
    try:
        line = p.stdout.readline().decode()
        assert line.startswith("nexthop: SMTP on 127.0.0.1:"), line
        c = SMTPClient(int(line.split(":")[2]))
        ehlo(c)
        for i in range(n):
            c.expect("MAIL FROM:<a@client.example>", "250")
            c.expect("RCPT TO:<b@accepted.example>", "250")
            c.expect("DATA", "354")
            c.send(msg("%s-%d@test" % ("x" * 900, i)) + ".\r\n")
            assert c.reply().code == 250
        c.close()
    finally:
        p.terminate()  # by PID
        out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out[-2000:]
    missing = [i for i in range(n) if b"-%d@test>" % i not in out]
    assert not missing, "transactions not printed: %r" % missing


def test_cli(tmp_path):
    port = free_port()
    store = str(tmp_path / "cli")
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "nexthop.py"), "--port", str(port),
                          "--lmtp", "--store", store, "--reply", "message:b@lmtp.example=550 5.1.1 Nope"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        line = p.stdout.readline().decode()
        assert line.startswith("nexthop: LMTP on 127.0.0.1:%d" % port), line
        c = SMTPClient(port)
        ehlo(c, "LHLO")
        c.send("MAIL FROM:<a@client.example>\r\nRCPT TO:<a@lmtp.example>\r\nRCPT TO:<b@lmtp.example>\r\n")
        assert [r.code for r in c.replies(3)] == [250, 250, 250]
        c.expect("DATA", "354")
        c.send(msg("cli@test") + ".\r\n")
        assert [r.code for r in c.replies(2)] == [250, 550]
        c.close()
        wait_for(lambda: os.path.exists(os.path.join(store, "000001.json")), 5, "stored file")
    finally:
        p.terminate()  # by PID
        out, _ = p.communicate(timeout=10)
    assert p.returncode == 0, out
    assert b"id=<cli@test>" in out and b"550 5.1.1 Nope" in out


def test_cli_tls(tmp_path, hop_cert):
    port = free_port()
    cert, key = hop_cert
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "nexthop.py"), "--port", str(port),
                          "--tls", cert, key],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        line = p.stdout.readline().decode()
        assert line.startswith("nexthop: SMTP on 127.0.0.1:%d with STARTTLS" % port), line
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
            s.starttls(context=tls_client_context(cert))
            s.sendmail("a@client.example", ["b@accepted.example"], msg("cli-tls@test"))
        line = p.stdout.readline().decode()
        assert "id=<cli-tls@test>" in line and " over TLSv1." in line, line
    finally:
        p.terminate()  # by PID
        out, _ = p.communicate(timeout=10)
    assert p.returncode == 0, out
