"""DATA and BDAT bodies as stored: byte-exact, dot-unstuffed, 8-bit, the
Received: header, mail-loop bound, and the queue list/show control commands."""

import email.utils
import random
import re
import smtplib
import time

import pytest

from conftest import (HOSTNAME, QID_RE, SMTPClient, dot_stuff, env_get, env_one, queued_id,
                      strip_received, unfold)


def smtplib_send(port, body, sender="sender@client.example", rcpts=("rcpt@accepted.example",),
                 mail_options=(), rcpt_options=(), helo="client.example"):
    """Send with smtplib (which dot-stuffs); return the queue ID from the DATA reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo(helo)
        code, resp = s.mail(sender, list(mail_options))
        assert code == 250, (code, resp)
        for r in rcpts:
            code, resp = s.rcpt(r, list(rcpt_options))
            assert code == 250, (r, code, resp)
        code, resp = s.data(body)
        assert code == 250, (code, resp)
        text = resp.decode("latin-1")
        m = re.match(r"^2\.0\.0 Ok: queued as ([0-9A-F]{16})$", text)
        assert m, "DATA reply %d %r is not '250 2.0.0 Ok: queued as <ID>'" % (code, text)
        return m.group(1)


def stored_body(server, qid):
    env, msg = server.queue_show(qid)
    received, rest = strip_received(msg)
    return env, received, rest


# ---------------------------------------------------------------- byte-exact


def test_stored_bytes_exact_with_dots(server):
    body = (b"From: a@client.example\r\nTo: rcpt@accepted.example\r\nSubject: dots\r\n"
            b"Message-ID: <dots@client.example>\r\n\r\n"
            b".leading dot\r\n..two dots\r\n.\r\n...\r\nmiddle . dot\r\n \r\n\tTab\r\nend\r\n")
    qid = smtplib_send(server.port, body)
    assert QID_RE.match(qid)
    _, _, rest = stored_body(server, qid)
    assert rest == body, "stored bytes differ:\nsent   %r\nstored %r" % (body, rest)


def test_stored_bytes_raw_dot_stuffed(server, client_factory):
    c = client_factory(server.port)
    body = b"Subject: raw\r\n\r\n.hidden\r\n.\r\n..x\r\nlast line\r\n"
    qid = queued_id(c.send_message(dot_stuff(body)))
    _, _, rest = stored_body(server, qid)
    assert rest == body


def test_large_message_intact(server):
    rnd = random.Random(4242)
    lines = []
    size = 0
    while size < 900_000:
        ln = bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz .,-0123456789")
                   for _ in range(rnd.randint(0, 200)))
        if rnd.random() < 0.05:
            ln = b"." + ln
        lines.append(ln)
        size += len(ln) + 2
    body = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    qid = smtplib_send(server.port, body)
    _, _, rest = stored_body(server, qid)
    assert len(rest) == len(body) and rest == body, "900 KB message not stored intact"


def test_8bitmime_stored_exact(server):
    body = ("Subject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            "caf\u00e9 \u00fcber stra\u00dfe \u65e5\u672c\r\n").encode("utf-8")
    body += bytes(range(0x80, 0x100)) + b"\r\n"
    qid = smtplib_send(server.port, body, mail_options=["BODY=8BITMIME"])
    _, _, rest = stored_body(server, qid)
    assert rest == body


def test_body_7bit_param_accepted(server):
    qid = smtplib_send(server.port, b"Subject: 7\r\n\r\nplain\r\n", mail_options=["BODY=7BIT"])
    assert qid in server.queue_list()


def test_smtputf8_message(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<j\u00f6rg@client.example> SMTPUTF8 BODY=8BITMIME").startswith("250")
    assert c.cmd("RCPT TO:<\u00e9l\u00e8ve@accepted.example>").startswith("250")
    assert c.cmd("DATA").code == 354
    body = "Subject: \u00e9t\u00e9\r\n\r\nbonjour \u00e9l\u00e8ve\r\n".encode("utf-8")
    c.send(body + b".\r\n")
    qid = queued_id(c.reply())
    env, _, rest = stored_body(server, qid)
    assert rest == body
    assert any("\u00e9l\u00e8ve@accepted.example" in v for v in env_get(env, "rcpt")), env


# ---------------------------------------------------------------- Received:


def test_received_header(server):
    body = b"Subject: rcvd\r\n\r\nx\r\n"
    before = time.time()
    qid = smtplib_send(server.port, body, helo="helo-name.example")
    _, received, rest = stored_body(server, qid)
    assert rest == body
    line = unfold(received).decode("latin-1")
    assert line.startswith("Received: from helo-name.example ("), line
    assert "by gw.test" in line, line
    assert re.search(r"\bid %s\b" % qid, line), "queue ID not in %r" % line
    assert "127.0.0.1" in line, "client address not in %r" % line
    assert ";" in line
    date = line.rsplit(";", 1)[1].strip()
    dt = email.utils.parsedate_to_datetime(date)
    assert dt.tzinfo is not None, "date without zone: %r" % date
    assert abs(dt.timestamp() - before) < 300, "Received date %r is not now" % date
    for ln in received.split(b"\r\n"):
        assert len(ln) <= 998, "Received: line longer than 998 octets"


def _received_lines(n):
    return b"".join(b"Received: from hop%d.example by hop%d.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                    % (i, i + 1) for i in range(n))


def test_received_50_accepted(server, client_factory):
    c = client_factory(server.port)
    body = _received_lines(50) + b"Subject: loop?\r\n\r\nx\r\n"
    qid = queued_id(c.send_message(body))
    _, _, rest = stored_body(server, qid)
    assert rest == body


def test_received_51_refused_as_loop(server, client_factory):
    c = client_factory(server.port)
    body = _received_lines(51) + b"Subject: loop\r\n\r\nx\r\n"
    r = c.send_message(body)
    assert r.startswith("554 5.4.6"), r
    assert server.queue_list() == {}
    # session in sync
    assert c.cmd("NOOP").last == "250 2.0.0 Ok"


def test_received_lowercase_counted(server, client_factory):
    c = client_factory(server.port)
    body = _received_lines(51).replace(b"Received:", b"received:") + b"\r\nx\r\n"
    r = c.send_message(body)
    assert r.startswith("554 5.4.6"), r


def test_received_in_body_not_counted(server, client_factory):
    c = client_factory(server.port)
    body = b"Subject: quoted loop\r\n\r\n" + _received_lines(60)
    qid = queued_id(c.send_message(body))
    assert qid in server.queue_list()


# ---------------------------------------------------------------- BDAT


def test_bdat_two_chunks(server, client_factory):
    c = client_factory(server.port)
    c.start_mail()
    content = b"Subject: bdat\r\n\r\nline one\r\n.\r\n..dots stay\r\nlast\r\n"
    a, b = content[:10], content[10:]
    c.send(b"BDAT %d\r\n" % len(a) + a + b"BDAT %d LAST\r\n" % len(b) + b)
    r1, r2 = c.replies(2)
    assert r1.startswith("250 2.0.0"), r1
    qid = queued_id(r2)
    _, _, rest = stored_body(server, qid)
    assert rest == content, "BDAT bytes not stored verbatim: %r" % rest


def test_bdat_spec_example(server, client_factory):
    c = client_factory(server.port)
    c.start_mail()
    c.send(b"BDAT 10\r\nSubject: x" b"BDAT 5 LAST\r\n\r\n\r\nA")
    r1, r2 = c.replies(2)
    assert r1.startswith("250 2.0.0"), r1
    qid = queued_id(r2)
    _, _, rest = stored_body(server, qid)
    assert rest == b"Subject: x\r\n\r\nA"


def test_bdat_single_last_and_zero_last(server, client_factory):
    c = client_factory(server.port)
    c.start_mail()
    content = b"Subject: one chunk\r\n\r\nbody\r\n"
    c.send(b"BDAT %d LAST\r\n" % len(content) + content)
    qid1 = queued_id(c.reply())
    c.start_mail(ehlo=False)
    c.send(b"BDAT %d\r\n" % len(content) + content + b"BDAT 0 LAST\r\n")
    r1, r2 = c.replies(2)
    assert r1.startswith("250 2.0.0"), r1
    qid2 = queued_id(r2)
    assert qid1 != qid2
    for q in (qid1, qid2):
        assert stored_body(server, q)[2] == content


def test_bdat_pipelined_with_envelope(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    content = b"Subject: p\r\n\r\npipelined bdat\r\n"
    c.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<r@accepted.example>\r\n"
           b"BDAT %d LAST\r\n" % len(content) + content + b"NOOP\r\n")
    rs = c.replies(4)
    assert rs[0].startswith("250 2.1.0") and rs[1].startswith("250 2.1.5"), rs
    qid = queued_id(rs[2])
    assert rs[3].last == "250 2.0.0 Ok"
    assert stored_body(server, qid)[2] == content


def test_bdat_bad_size(server, client_factory):
    c = client_factory(server.port)
    c.start_mail()
    for line in ("BDAT", "BDAT x", "BDAT 5 FIRST", "BDAT -1"):
        r = c.cmd(line)
        assert r.code == 501, "%s -> %r" % (line, r)


# ---------------------------------------------------------------- queue list / show


def test_queue_show_envelope(server, client_factory):
    c = client_factory(server.port)
    c.cmd("EHLO envelope-helo.example")
    assert c.cmd("MAIL FROM:<sender@client.example> RET=HDRS ENVID=abc+2Bdef").startswith("250")
    assert c.cmd("RCPT TO:<x@accepted.example> NOTIFY=SUCCESS,FAILURE "
                 "ORCPT=rfc822;x@accepted.example").startswith("250")
    assert c.cmd("RCPT TO:<y@a.sub.example>").startswith("250")
    assert c.cmd("DATA").code == 354
    body = b"Subject: env\r\n\r\nenvelope test\r\n"
    c.send(body + b".\r\n")
    qid = queued_id(c.reply())
    env, msg = server.queue_show(qid)
    keys = {k for k, _ in env}
    for k in ("id", "from", "rcpt", "size", "helo", "client", "arrival", "envid", "ret"):
        assert k in keys, "queue show lacks %r: %r" % (k, env)
    assert env_one(env, "id") == qid
    assert "sender@client.example" in env_one(env, "from")
    assert env_one(env, "helo") == "envelope-helo.example"
    assert "127.0.0.1" in env_one(env, "client")
    assert env_one(env, "envid") in ("abc+2Bdef", "abc+def"), env
    assert env_one(env, "ret").upper() == "HDRS", env
    size = int(env_one(env, "size"))
    assert len(body) <= size <= len(msg), "size %d vs body %d / stored %d" % (
        size, len(body), len(msg))
    rcpts = env_get(env, "rcpt")
    assert len(rcpts) == 2, rcpts
    rx = [r for r in rcpts if "x@accepted.example" in r.split()[0]]
    assert rx, rcpts
    m = re.search(r"\bnotify=(\S+)", rx[0])
    assert m, rx
    notify = m.group(1).upper().split(",")
    assert sorted(notify) == ["FAILURE", "SUCCESS"], "notify value %r in %r" % (m.group(1), rx[0])
    assert "orcpt=" in rx[0] and "rfc822;x@accepted.example" in rx[0], rx
    ry = [r for r in rcpts if "y@a.sub.example" in r]
    assert ry and "notify=" not in ry[0] and "orcpt=" not in ry[0], ry
    assert strip_received(msg)[1] == body


def test_queue_list_format(server):
    qid = smtplib_send(server.port, b"Subject: l\r\n\r\nlist\r\n", sender="lister@client.example",
                       rcpts=("a@accepted.example", "b@accepted.example", "c@x.sub.example"))
    raw = server.ctl("queue", "list").decode()
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].split()[0] == qid, raw
    kv = server.queue_list()[qid]
    assert kv.get("from") == "<lister@client.example>", kv
    assert kv.get("rcpts") == "3", kv
    assert "size" in kv and int(kv["size"]) > 0, kv


def test_queue_show_unknown_id(server):
    for bad in ("0000000000000001", "FFFFFFFFFFFFFFFE"):
        r = server.ctl_run("queue", "show", bad)
        assert r.returncode == 1, "queue show %s: exit %d, stdout %r" % (bad, r.returncode, r.stdout)
        assert r.stderr.strip(), "queue show %s: no message on stderr" % bad
    r = server.ctl_run("queue", "show", "NOTANID")
    assert r.returncode != 0 and r.stderr.strip(), r


def test_queue_empty(server):
    assert server.ctl("queue", "list").strip() == b""


def test_every_ack_listed_immediately(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    seen = set()
    for i in range(20):
        qid = queued_id(c.send_message(b"Subject: %d\r\n\r\nmsg %d\r\n" % (i, i), ehlo=False))
        assert qid not in seen, "queue ID reused: %s" % qid
        seen.add(qid)
        assert qid in server.queue_list(), "acknowledged %s not in queue list" % qid
    assert set(server.queue_list()) == seen


def test_queue_survives_restart(server):
    body = b"Subject: restart\r\n\r\nkeep me\r\n"
    qid = smtplib_send(server.port, body)
    server.restart()
    assert qid in server.queue_list()
    assert stored_body(server, qid)[2] == body
    # IDs stay unique after a restart
    qid2 = smtplib_send(server.port, body)
    assert qid2 != qid
    assert set(server.queue_list()) == {qid, qid2}


def test_durability_none_still_queues(ringmx):
    s = ringmx({"spool": {"durability": "none"}})
    body = b"Subject: unsafe\r\n\r\nx\r\n"
    qid = smtplib_send(s.port, body)
    assert stored_body(s, qid)[2] == body
