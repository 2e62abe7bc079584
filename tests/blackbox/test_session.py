"""SMTP commands, extensions, sequencing, syntax, pipelining, early talkers."""

import smtplib
import socket
import time

import pytest

from conftest import HOSTNAME, QID_RE, SMTPClient, queued_id


# ---------------------------------------------------------------- greeting


def test_banner_default(server, client_factory):
    c = client_factory(server.port)
    assert c.banner.code == 220
    assert len(c.banner.lines) == 1
    assert c.banner.first == "220 gw.test ESMTP ringmx", c.banner


def test_banner_configured(ringmx, client_factory):
    s = ringmx({"listeners": [{"name": "mx", "banner": "Hello there", "greet_pause_ms": 0}]})
    c = client_factory(s.port)
    assert c.banner.first == "220 gw.test ESMTP Hello there", c.banner


def test_banner_of_the_shipped_example(ringmx, client_factory):
    """doc/examples/gateway.json greets as doc/config.md says: the host name
    once, first (it used to read "220 mx1.example.org ESMTP mx1.example.org ESMTP")."""
    import json
    import os
    from conftest import ROOT
    with open(os.path.join(ROOT, "doc", "examples", "gateway.json")) as f:
        ex = json.load(f)
    banner = ex["listeners"][0]["banner"]
    s = ringmx({"hostname": ex["hostname"],
                "listeners": [{"name": "mx", "banner": banner, "greet_pause_ms": 0}]})
    c = client_factory(s.port)
    assert c.banner.first == "220 %s ESMTP %s" % (ex["hostname"], banner), c.banner
    assert c.banner.first.count(ex["hostname"]) == 1, "host name repeated: %r" % c.banner


def test_banner_longest_that_fits(ringmx, client_factory):
    """The longest banner (399) with a host name that leaves it exactly 512
    octets: sent whole, never cut."""
    host = "h" * 49 + "." + "h" * 50
    s = ringmx({"hostname": host,
                "listeners": [{"name": "mx", "banner": "b" * 399, "greet_pause_ms": 0}]})
    c = client_factory(s.port)
    assert c.banner.first == "220 %s ESMTP %s" % (host, "b" * 399), c.banner
    assert len(c.banner.first) + 2 == 512


# ---------------------------------------------------------------- EHLO / HELO


def test_ehlo_keywords_smtplib(server):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
        code, msg = s.ehlo("client.example")
        assert code == 250
        f = s.esmtp_features
        for kw in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                   "chunking", "dsn"):
            assert kw in f, "EHLO lacks %s: %r" % (kw.upper(), f)
        assert f["size"].strip() == str(server.config["limits"]["message_size"]), f
        assert "starttls" not in f, "STARTTLS offered before it exists: %r" % f
        assert "auth" not in f, "AUTH offered before it exists: %r" % f


def test_ehlo_raw_format(server, client_factory):
    c = client_factory(server.port)
    r = c.cmd("EHLO client.example")
    assert r.code == 250
    assert len(r.lines) > 1, "EHLO reply should be multi-line: %r" % r
    assert r.first.startswith("250-gw.test"), r
    assert all(ln.startswith("250-") for ln in r.lines[:-1]) and r.last.startswith("250 "), r
    kws = [ln[4:].split()[0].upper() for ln in r.lines[1:]]
    assert len(kws) == len(set(kws)), "duplicate EHLO keywords %r" % kws


def test_helo(server, client_factory):
    c = client_factory(server.port)
    r = c.cmd("HELO client.example")
    assert r.first.startswith("250 gw.test"), r
    assert len(r.lines) == 1


def test_ehlo_without_argument(server, client_factory):
    c = client_factory(server.port)
    r = c.cmd("EHLO")
    assert r.code == 501, r


def test_verbs_case_insensitive(server, client_factory):
    c = client_factory(server.port)
    assert c.cmd("ehlo client.example").code == 250
    assert c.cmd("mail from:<a@client.example>").startswith("250 2.1.0")
    assert c.cmd("rCpT To:<b@accepted.example>").startswith("250 2.1.5")


# ---------------------------------------------------------------- basic commands


def test_full_transaction_replies(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<sender@client.example>").last == "250 2.1.0 Ok"
    assert c.cmd("RCPT TO:<rcpt@accepted.example>").last == "250 2.1.5 Ok"
    r = c.cmd("DATA")
    assert r.code == 354, r
    c.send(b"Subject: t\r\n\r\nhello\r\n.\r\n")
    r = c.reply()
    qid = queued_id(r)
    assert qid in server.queue_list()
    r = c.cmd("QUIT")
    assert r.startswith("221 2.0.0"), r
    assert c.read_until_closed(5) == b"", "bytes after 221"


@pytest.mark.parametrize("line,expect", [
    ("RSET", "250 2.0.0 Ok"),
    ("NOOP", "250 2.0.0 Ok"),
    ("NOOP some argument", "250 2.0.0 Ok"),
])
def test_rset_noop(server, client_factory, line, expect):
    c = client_factory(server.port)
    c.ehlo()
    r = c.cmd(line)
    assert r.last == expect, r


@pytest.mark.parametrize("line,prefix", [
    ("VRFY someone", "252 2.5.2"),
    ("EXPN list", "502 5.5.1"),
    ("HELP", "214 2.0.0"),
    ("STARTTLS", "502 5.5.1"),
    ("AUTH PLAIN AHVzZXIAcGFzcw==", "502 5.5.1"),
])
def test_other_commands(server, client_factory, line, prefix):
    c = client_factory(server.port)
    c.ehlo()
    r = c.cmd(line)
    assert r.startswith(prefix), "%s -> %r, expected %r" % (line, r, prefix)
    # the session goes on
    assert c.cmd("NOOP").last == "250 2.0.0 Ok"


def test_quit_closes(server, client_factory):
    c = client_factory(server.port)
    r = c.cmd("QUIT")
    assert r.startswith("221 2.0.0"), r
    assert c.read_until_closed(5) == b""


def test_enhanced_codes_on_every_reply(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    lines = ["NOOP", "RSET", "VRFY x", "HELP", "BOGUS", "MAIL FROM:<a@client.example>",
             "RCPT TO:<b@accepted.example>", "RCPT TO:<b@denied.example>", "RSET",
             "DATA", "EXPN x"]
    for ln in lines:
        r = c.cmd(ln)
        assert r.enhanced, "%s -> reply without enhanced status code: %r" % (ln, r)
        assert r.enhanced[0] == str(r.code)[0], "class mismatch %r" % r


# ---------------------------------------------------------------- sequencing


def test_mail_before_helo(server, client_factory):
    c = client_factory(server.port)
    r = c.cmd("MAIL FROM:<a@client.example>")
    assert r.startswith("503 5.5.1"), r


def test_rcpt_before_mail(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("RCPT TO:<b@accepted.example>").startswith("503 5.5.1")


def test_data_before_mail(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("DATA").startswith("503 5.5.1")


def test_data_without_accepted_rcpt(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.example>").startswith("250")
    assert c.cmd("RCPT TO:<b@denied.example>").startswith("554")
    r = c.cmd("DATA")
    assert r.startswith("554 5.5.1"), r
    # no body mode was entered: a command still works
    assert c.cmd("NOOP").last == "250 2.0.0 Ok"


def test_second_mail_in_transaction(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.example>").startswith("250")
    assert c.cmd("MAIL FROM:<b@client.example>").startswith("503 5.5.1")
    # the first transaction is intact
    assert c.cmd("RCPT TO:<b@accepted.example>").startswith("250 2.1.5")


def test_rset_clears_transaction(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.example>").startswith("250")
    assert c.cmd("RCPT TO:<b@accepted.example>").startswith("250")
    assert c.cmd("RSET").last == "250 2.0.0 Ok"
    assert c.cmd("RCPT TO:<b@accepted.example>").startswith("503 5.5.1")
    assert c.cmd("MAIL FROM:<a@client.example>").startswith("250 2.1.0")


def test_ehlo_resets_transaction(server, client_factory):
    # RFC 5321 4.1.4: EHLO in a transaction clears it like RSET.
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.example>").startswith("250")
    c.ehlo()
    assert c.cmd("RCPT TO:<b@accepted.example>").startswith("503 5.5.1")


def test_bdat_without_mail_consumes_chunk(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    # The 6 chunk bytes are a command; they must be eaten, not run.
    c.send(b"BDAT 6\r\nNOOP\r\n")
    r = c.reply()
    assert r.startswith("503 5.5.1"), r
    c.send(b"RSET\r\nQUIT\r\n")
    rs = c.replies_until_closed(10)
    assert [x.code for x in rs] == [250, 221], "session out of sync after refused BDAT: %r" % rs


def test_data_after_bdat(server, client_factory):
    c = client_factory(server.port)
    c.start_mail()
    c.send(b"BDAT 5\r\nabcde")
    assert c.reply().startswith("250 2.0.0")
    r = c.cmd("DATA")
    assert r.startswith("503 5.5.1"), r


# ---------------------------------------------------------------- syntax


@pytest.mark.parametrize("line,prefix", [
    ("FROBNICATE", "500 5.5.2"),
    ("MAIL FROM:sender@client.example", "501 5.1.7"),
    ("MAIL FROM:<sender@client.example", "501 5.1.7"),
    ("MAIL FROM:<sender@@client.example>", "501 5.1.7"),
    ("MAIL TO:<sender@client.example>", "501 5.5.4"),
    ("MAIL", "501 5.5.4"),
    ("MAIL FROM:<sender@client.example> FOO=bar", "555 5.5.4"),
    ("MAIL FROM:<sender@client.example> BODY=BINARYMIME", "504"),
    ("MAIL FROM:<sender@client.example> SIZE=abc", "501"),
])
def test_mail_syntax(server, client_factory, line, prefix):
    c = client_factory(server.port)
    c.ehlo()
    r = c.cmd(line)
    assert r.startswith(prefix), "%s -> %r, expected %r" % (line, r, prefix)
    # no transaction was opened
    assert c.cmd("RCPT TO:<b@accepted.example>").startswith("503"), "refused MAIL opened a transaction"


@pytest.mark.parametrize("line,prefix", [
    ("RCPT TO:b@accepted.example", "501 5.1.3"),
    ("RCPT TO:<b@accepted.example", "501 5.1.3"),
    ("RCPT TO:<>", "501 5.1.3"),
    ("RCPT FROM:<b@accepted.example>", "501 5.5.4"),
    ("RCPT TO:<b@accepted.example> FOO=bar", "555 5.5.4"),
])
def test_rcpt_syntax(server, client_factory, line, prefix):
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.example>").startswith("250")
    r = c.cmd(line)
    assert r.startswith(prefix), "%s -> %r, expected %r" % (line, r, prefix)


def test_data_with_argument(server, client_factory):
    c = client_factory(server.port)
    c.start_mail()
    r = c.cmd("DATA x")
    assert r.code == 501, r
    # still in the transaction, not in body mode
    assert c.cmd("DATA").code == 354


# ---------------------------------------------------------------- SMTPUTF8 / DSN


def test_smtputf8_address(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    r = c.cmd("MAIL FROM:<j\u00f6rg@client.example> SMTPUTF8")
    assert r.startswith("250 2.1.0"), r
    r = c.cmd("RCPT TO:<\u00e9l\u00e8ve@accepted.example>")
    assert r.startswith("250 2.1.5"), r


def test_non_ascii_without_smtputf8(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    r = c.cmd("MAIL FROM:<j\u00f6rg@client.example>")
    assert r.startswith("553 5.6.7"), r


def test_non_ascii_rcpt_without_smtputf8(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.example>").startswith("250")
    r = c.cmd("RCPT TO:<\u00e9l\u00e8ve@accepted.example>")
    assert r.startswith("553 5.6.7"), r


def test_dsn_params_accepted(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.example> RET=HDRS ENVID=abc+2Bdef").startswith("250 2.1.0")
    r = c.cmd("RCPT TO:<x@accepted.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@accepted.example")
    assert r.startswith("250 2.1.5"), r
    assert c.cmd("RCPT TO:<y@accepted.example> NOTIFY=NEVER").startswith("250 2.1.5")


@pytest.mark.parametrize("mail,rcpt,codes", [
    ("MAIL FROM:<a@client.example> ENVID=abc+zzdef", None, (501,)),
    ("MAIL FROM:<a@client.example> ENVID=ab=c", None, (501,)),
    ("MAIL FROM:<a@client.example> RET=SOMETIMES", None, (501, 555)),
    (None, "RCPT TO:<x@accepted.example> NOTIFY=NEVER,SUCCESS", (501,)),
    (None, "RCPT TO:<x@accepted.example> NOTIFY=SOMETIMES", (501, 555)),
    (None, "RCPT TO:<x@accepted.example> ORCPT=rfc822;x+zz@accepted.example", (501,)),
])
def test_dsn_params_invalid(server, client_factory, mail, rcpt, codes):
    c = client_factory(server.port)
    c.ehlo()
    if mail:
        r = c.cmd(mail)
        assert r.code in codes, "%s -> %r, expected %r" % (mail, r, codes)
    else:
        assert c.cmd("MAIL FROM:<a@client.example>").startswith("250")
        r = c.cmd(rcpt)
        assert r.code in codes, "%s -> %r, expected %r" % (rcpt, r, codes)


def test_duplicate_parameter(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    r = c.cmd("MAIL FROM:<a@client.example> SIZE=10 SIZE=20")
    assert r.startswith("501"), r


# ---------------------------------------------------------------- pipelining


def test_pipelined_group_one_write(server, client_factory):
    c = client_factory(server.port)
    c.send(b"EHLO client.example\r\n"
           b"MAIL FROM:<a@client.example>\r\n"
           b"RCPT TO:<r1@accepted.example>\r\n"
           b"RCPT TO:<r2@denied.example>\r\n"
           b"RCPT TO:<r3@accepted.example>\r\n"
           b"DATA\r\n")
    rs = c.replies(6)
    assert rs[0].code == 250 and rs[0].first.startswith("250-gw.test"), rs[0]
    assert rs[1].last == "250 2.1.0 Ok", rs[1]
    assert rs[2].last == "250 2.1.5 Ok", rs[2]
    assert rs[3].startswith("554 5.7.1"), rs[3]
    assert rs[4].last == "250 2.1.5 Ok", rs[4]
    assert rs[5].code == 354, rs[5]
    assert not c.data_available(0.3), "extra bytes after the 354: %r" % c.buf
    # end of data and the next pipelined transaction in one write
    c.send(b"Subject: one\r\n\r\nbody one\r\n.\r\n"
           b"MAIL FROM:<b@client.example>\r\n"
           b"RCPT TO:<r4@accepted.example>\r\n"
           b"DATA\r\n")
    rs = c.replies(4)
    q1 = queued_id(rs[0])
    assert rs[1].last == "250 2.1.0 Ok", rs
    assert rs[2].last == "250 2.1.5 Ok", rs
    assert rs[3].code == 354, rs
    c.send(b"Subject: two\r\n\r\nbody two\r\n.\r\nQUIT\r\n")
    rs = c.replies_until_closed(10)
    assert len(rs) == 2, rs
    q2 = queued_id(rs[0])
    assert rs[1].startswith("221 2.0.0")
    assert q1 != q2
    listed = server.queue_list()
    assert q1 in listed and q2 in listed, listed
    assert listed[q1].get("rcpts") == "2", listed[q1]


def test_pipelined_errors_keep_order(server, client_factory):
    c = client_factory(server.port)
    c.send(b"EHLO client.example\r\nRCPT TO:<x@accepted.example>\r\nBOGUS\r\n"
           b"MAIL FROM:<a@client.example>\r\nNOOP\r\nRSET\r\nVRFY x\r\n")
    rs = c.replies(7)
    assert [r.code for r in rs] == [250, 503, 500, 250, 250, 250, 252], rs
    assert rs[3].last == "250 2.1.0 Ok"


def test_pipelined_byte_by_byte(server, client_factory):
    # The parser must be incremental: a command split over many segments.
    c = client_factory(server.port)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for b in b"EHLO client.example\r\nNOOP\r\n":
        c.send(bytes([b]))
    rs = c.replies(2)
    assert rs[0].code == 250 and rs[1].last == "250 2.0.0 Ok", rs


# ---------------------------------------------------------------- early talker


def test_early_talker_refused(ringmx):
    s = ringmx({"listeners": [{"name": "mx", "greet_pause_ms": 500}]})
    c = SMTPClient(s.port, read_banner=False)
    try:
        c.send(b"EHLO impatient.example\r\n")
        rs = c.replies_until_closed(10)
        assert rs, "no reply to early talker"
        assert rs[-1].startswith("554 5.5.0") or rs[0].startswith("554 5.5.0"), rs
        assert all(r.code != 250 for r in rs), "early talker got served: %r" % rs
    finally:
        c.close()


def test_polite_client_served_with_greet_pause(ringmx):
    s = ringmx({"listeners": [{"name": "mx", "greet_pause_ms": 500}]})
    t0 = time.monotonic()
    c = SMTPClient(s.port, read_banner=True)
    try:
        waited = time.monotonic() - t0
        assert c.banner.first.startswith("220 gw.test"), c.banner
        assert waited >= 0.4, "banner arrived before greet_pause_ms (%.3fs)" % waited
        assert c.cmd("EHLO polite.example").code == 250
        assert c.cmd("QUIT").startswith("221")
    finally:
        c.close()


def test_full_smtplib_sendmail(server):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
        s.ehlo("client.example")
        refused = s.sendmail("a@client.example", ["b@accepted.example", "c@x.sub.example"],
                             b"Subject: smtplib\r\n\r\nhi\r\n")
        assert refused == {}
        code, resp = s.noop()
        assert code == 250
    assert len(server.queue_list()) == 1
