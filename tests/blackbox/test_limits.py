"""Every named bound of ARCHITECTURE.md invariant 5, with its RFC reply."""

import os
import time

import pytest

from conftest import SMTPClient, queued_id, wait_for


# ---------------------------------------------------------------- command line


def test_command_line_512_ok_513_refused(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    # 512 octets including CRLF: allowed (RFC 5321 4.5.3.1.4).
    line = b"NOOP " + b"x" * (512 - 2 - 5)
    assert len(line) + 2 == 512
    r = c.cmd(line)
    assert r.last == "250 2.0.0 Ok", "512-octet command line refused: %r" % r
    line = b"NOOP " + b"x" * (513 - 2 - 5)
    r = c.cmd(line)
    assert r.startswith("500 5.5.2"), "513-octet command line: %r" % r
    # session continues, in sync
    assert c.cmd("NOOP").last == "250 2.0.0 Ok"


def test_very_long_command_line(server, client_factory):
    # 64 KiB without a line end: refused once the LF comes, never buffered.
    c = client_factory(server.port)
    c.ehlo()
    c.send(b"MAIL FROM:<" + b"a" * 65536 + b"@client.example>\r\n")
    r = c.reply()
    assert r.startswith("500 5.5.2"), r
    assert c.cmd("NOOP").last == "250 2.0.0 Ok"
    assert c.cmd("RCPT TO:<x@accepted.example>").startswith("503"), "overlong MAIL was run"


# ---------------------------------------------------------------- text line


def test_text_line_1000_ok(server, client_factory):
    c = client_factory(server.port)
    body = b"Subject: long\r\n\r\n" + b"y" * 998 + b"\r\n"
    qid = queued_id(c.send_message(body))
    assert qid in server.queue_list()


def test_text_line_over_1000_refused(server, client_factory):
    c = client_factory(server.port)
    body = b"Subject: long\r\n\r\n" + b"y" * 999 + b"\r\nend\r\n"
    r = c.send_message(body)
    assert r.code in (550, 554) and r.enhanced == "5.6.0", "over-long text line: %r" % r
    assert server.queue_list() == {}, "message with an over-long line was queued"
    # the session is in sync: a following transaction works
    qid = queued_id(c.send_message(b"Subject: ok\r\n\r\nfine\r\n", ehlo=False))
    assert list(server.queue_list()) == [qid]


# ---------------------------------------------------------------- message size


def test_size_declared_too_big(ringmx, client_factory):
    s = ringmx({"limits": {"message_size": 10000}})
    c = client_factory(s.port)
    c.ehlo()
    r = c.cmd("MAIL FROM:<a@client.example> SIZE=10001")
    assert r.startswith("552 5.3.4"), r
    assert c.cmd("MAIL FROM:<a@client.example> SIZE=10000").startswith("250 2.1.0")


def test_size_actual_too_big(ringmx, client_factory):
    s = ringmx({"limits": {"message_size": 10000}})
    c = client_factory(s.port)
    c.start_mail()
    assert c.cmd("DATA").code == 354
    big = b"Subject: big\r\n\r\n" + (b"z" * 98 + b"\r\n") * 200  # ~20 KB
    c.send(big)
    # No reply before the end of the data (that would desynchronise a client).
    assert not c.data_available(0.3), "reply before end of data: %r" % c.buf
    c.send(b".\r\n")
    r = c.reply()
    assert r.startswith("552 5.3.4"), r
    assert s.queue_list() == {}, "oversized message queued"
    qid = queued_id(c.send_message(b"Subject: small\r\n\r\nok\r\n", ehlo=False))
    assert list(s.queue_list()) == [qid]


def test_size_bdat_too_big(ringmx, client_factory):
    s = ringmx({"limits": {"message_size": 10000}})
    c = client_factory(s.port)
    c.start_mail()
    chunk = b"q" * 6000 + b"\r\n"
    c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
    r1 = c.reply()
    assert r1.startswith("250"), "first chunk within the limit: %r" % r1
    # The declared size takes the message over the limit: refused at once,
    # and closed (the chunk cannot be skipped without reading it).
    c.send(b"BDAT %d LAST\r\n" % len(chunk))
    replies = c.replies_until_closed()
    assert [r.last[:9] for r in replies] == ["552 5.3.4"], replies
    assert s.queue_list() == {}


# ---------------------------------------------------------------- recipients


def test_recipients_limit(ringmx, client_factory):
    s = ringmx({"limits": {"recipients": 3}})
    c = client_factory(s.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.example>").startswith("250")
    for i in range(3):
        assert c.cmd("RCPT TO:<r%d@accepted.example>" % i).last == "250 2.1.5 Ok"
    for i in range(3, 5):
        r = c.cmd("RCPT TO:<r%d@accepted.example>" % i)
        assert r.startswith("452 4.5.3"), "recipient %d over the limit: %r" % (i + 1, r)
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: r\r\n\r\nx\r\n.\r\n")
    qid = queued_id(c.reply())
    listed = s.queue_list()
    assert listed[qid].get("rcpts") == "3", listed


# ---------------------------------------------------------------- errors


def test_errors_limit(ringmx, client_factory):
    s = ringmx({"limits": {"errors": 3}})
    c = client_factory(s.port)
    c.ehlo()
    for i in range(2):
        assert c.cmd("BOGUS%d" % i).startswith("500 5.5.2")
    c.send(b"BOGUS2\r\n")
    rs = c.replies_until_closed(10)
    assert rs, "no reply and no 421 when the error limit was reached"
    assert rs[-1].startswith("421 4.7.0"), rs
    assert len(rs) <= 2 and all(r.code in (500, 421) for r in rs), rs


# ---------------------------------------------------------------- timeouts


def test_idle_timeout(ringmx, client_factory):
    s = ringmx({"limits": {"idle_s": 2}})
    c = client_factory(s.port)
    c.ehlo()
    t0 = time.monotonic()
    rs = c.replies_until_closed(15)
    waited = time.monotonic() - t0
    assert [r.code for r in rs] == [421], rs
    assert rs[0].startswith("421 4.4.2"), rs
    assert waited >= 1.5, "idle timeout fired after %.2fs, idle_s is 2" % waited


def test_idle_timeout_during_data(ringmx, client_factory):
    s = ringmx({"limits": {"idle_s": 2}})
    c = client_factory(s.port)
    c.start_mail()
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: stalled\r\n\r\npartial")
    rs = c.replies_until_closed(15)
    assert rs and rs[-1].startswith("421 4.4.2"), rs
    assert s.queue_list() == {}


def _cmd_or_closed(c, line, timeout=5):
    """Send a command and read its reply; None when the server closed first."""
    try:
        c.send(line.encode() + b"\r\n")
    except OSError:
        pass  # closed by the server: what it sent before is still readable
    try:
        return c.reply(timeout=timeout)
    except EOFError:
        return None


def test_session_timeout(ringmx, client_factory):
    s = ringmx({"limits": {"idle_s": 60, "session_s": 2}})
    c = client_factory(s.port)
    c.ehlo()
    t0 = time.monotonic()
    final = None
    # Keep the session busy so only the session bound can end it.
    while time.monotonic() < t0 + 15:
        r = _cmd_or_closed(c, "NOOP")
        if r is None or r.code != 250:
            final = r
            break
        assert r.last == "250 2.0.0 Ok", r
        if c.data_available(0.2):
            final = c.reply(timeout=5)
            break
    assert final is not None, "session ended without a 421 (or not within 15 s)"
    assert final.startswith("421 4.4.2"), final
    assert time.monotonic() - t0 >= 1.5
    assert c.read_until_closed(5) == b""


def test_commands_limit(ringmx, client_factory):
    s = ringmx({"limits": {"commands": 5}})
    c = client_factory(s.port)
    got = []
    for i in range(8):
        r = _cmd_or_closed(c, "NOOP")
        if r is None:
            break
        got.append(r)
        if r.code == 421:
            break
    assert got and got[-1].startswith("421 4.7.0"), got
    assert len(got) <= 6, "more than limits.commands commands served: %r" % got
    assert len(got) >= 5, "closed before limits.commands commands: %r" % got
    assert c.read_until_closed(5) == b""


# ---------------------------------------------------------------- connections


def _connect_all(port, n):
    out = []
    for _ in range(n):
        c = SMTPClient(port)
        assert c.banner.first.startswith("220 "), c.banner
        out.append(c)
    return out


def test_connections_per_ip(ringmx):
    s = ringmx({"limits": {"connections_per_ip": 3}})
    held = []
    try:
        held = _connect_all(s.port, 3)
        extra = SMTPClient(s.port, read_banner=False)
        held.append(extra)
        rs = extra.replies_until_closed(10)
        assert len(rs) == 1 and rs[0].startswith("421 4.7.0"), rs
        # the held sessions are unaffected
        for c in held[:3]:
            assert c.cmd("NOOP").last == "250 2.0.0 Ok"
        # a slot comes back when one session ends
        assert held[0].cmd("QUIT").code == 221
        held[0].read_until_closed(5)

        def banner_again():
            c = SMTPClient(s.port, read_banner=False)
            held.append(c)
            r = c.reply()
            return r if r.code == 220 else None
        wait_for(banner_again, 10, "a connection slot to be released")
        # The log may be written asynchronously: await the line.
        def refused_line():
            return [ln for ln in s.log_text().splitlines()
                    if "refused" in ln and "127.0.0.1" in ln]
        try:
            wait_for(refused_line, 5, "a 'refused' log line")
        except AssertionError:
            raise AssertionError("no log line with 'refused' and the client address within 5 s:\n"
                                 + s.log_text()[-2000:])
    finally:
        for c in held:
            c.close()


def test_connections_total(ringmx):
    s = ringmx({"shards": 1, "limits": {"connections": 4, "connections_per_ip": 100}})
    held = []
    try:
        held = _connect_all(s.port, 4)
        extra = SMTPClient(s.port, read_banner=False)
        held.append(extra)
        rs = extra.replies_until_closed(10)
        assert len(rs) == 1 and rs[0].startswith("421 4.3.2"), rs
        for c in held[:4]:
            assert c.cmd("NOOP").last == "250 2.0.0 Ok"
    finally:
        for c in held:
            c.close()


def test_transactions_limit(ringmx, client_factory):
    s = ringmx({"limits": {"transactions": 2}})
    c = client_factory(s.port)
    c.ehlo()
    queued_id(c.send_message(b"Subject: 1\r\n\r\n1\r\n", ehlo=False))
    queued_id(c.send_message(b"Subject: 2\r\n\r\n2\r\n", ehlo=False))
    r = c.cmd("MAIL FROM:<a@client.example>")
    assert r.code // 100 in (4, 5), "third transaction with transactions=2: %r" % r
    assert len(s.queue_list()) == 2


def test_refused_connections_leak_no_descriptor(ringmx):
    # Clients that reset before their 421 arrives make the server's send fail;
    # the close linked behind it must still run (IOSQE_IO_HARDLINK).
    import socket
    import struct

    s = ringmx({"shards": 1, "limits": {"connections_per_ip": 1}})
    held = SMTPClient(s.port)
    fds_before = len(os.listdir("/proc/%d/fd" % s.pid))
    n = 200
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST

    # Accept is FIFO: once a polite client behind the burst has its own 421,
    # every connection of the burst that reached accept() was handled.
    probe = SMTPClient(s.port, read_banner=False)
    rs = probe.replies_until_closed(10)
    assert len(rs) == 1 and rs[0].startswith("421 4.7.0"), rs
    wait_for(lambda: s.log_text().count("reason=connections_per_ip") >= 2, 5,
             "the refusals to be logged")

    def fds_settled():
        return len(os.listdir("/proc/%d/fd" % s.pid)) <= fds_before + 2
    wait_for(fds_settled, 10, "the refused connections' descriptors to be closed")
    assert held.cmd("NOOP").last == "250 2.0.0 Ok"
    held.close()
