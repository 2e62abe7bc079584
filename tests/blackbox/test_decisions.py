"""The decision point answers later as well as at once: with the error
tarpit on (limits.soft_errors / error_delay_ms), every decision of a
session past its soft error limit waits for a ring timer, and the session
still answers every command, in order, with the same verdicts."""

import re

from conftest import dot_stuff, queued_id

TARPIT = {"limits": {"errors": 50, "soft_errors": 2, "error_delay_ms": 300}}


def _pending(srv):
    return re.findall(r"event=decision_pending client=\S+ stage=(\w+) wait_ms=(\d+)",
                      srv.log_text())


def _make_errors(c, n):
    for _ in range(n):
        assert c.cmd("FOO").startswith("500")


def test_no_tarpit_before_soft_limit(ringmx, client_factory):
    srv = ringmx(TARPIT)
    c = client_factory(srv.port)
    c.ehlo()
    _make_errors(c, 1)
    assert c.cmd("MAIL FROM:<a@client.example>").startswith("250 2.1.0")
    assert srv.stop() == 0
    assert _pending(srv) == []


def test_pipelined_group_waits_and_stays_in_order(ringmx, client_factory):
    srv = ringmx(TARPIT)
    c = client_factory(srv.port)
    c.ehlo()
    _make_errors(c, 2)
    c.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<x@accepted.example>\r\n"
           b"RCPT TO:<y@elsewhere.example>\r\nRCPT TO:<z@accepted.example>\r\nNOOP\r\n")
    # A 300 ms wait per decision: nothing can be answered within 100 ms.
    assert not c.data_available(0.1), "the tarpit did not hold the first answer"
    r = c.replies(5, timeout=20)
    assert r[0].startswith("250 2.1.0"), r
    assert r[1].startswith("250 2.1.5"), r
    assert r[2].startswith("554 5.7.1"), r
    assert r[3].startswith("250 2.1.5"), r
    assert r[4].startswith("250 2.0.0"), r
    assert srv.stop() == 0
    stages = [s for s, _ in _pending(srv)]
    assert stages == ["mail", "rcpt", "rcpt", "rcpt"], stages
    assert all(ms == "300" for _, ms in _pending(srv))


def test_data_stage_decision_then_commit(ringmx, client_factory):
    srv = ringmx(TARPIT)
    c = client_factory(srv.port)
    c.ehlo()
    _make_errors(c, 2)
    body = b"Subject: tarpit\r\n\r\n.leading dot\r\nbody\r\n"
    c.start_mail(ehlo=False)
    assert c.cmd("DATA").startswith("354")
    c.send(dot_stuff(body) + b".\r\n")
    qid = queued_id(c.reply(timeout=20))
    assert qid in srv.queue_list()
    assert srv.stop() == 0
    assert "data" in [s for s, _ in _pending(srv)]


def test_ehlo_decision_waits_too(ringmx, client_factory):
    srv = ringmx(TARPIT)
    c = client_factory(srv.port)
    c.ehlo()
    _make_errors(c, 2)
    r = c.cmd("EHLO again.example", timeout=20)
    assert r.startswith("250") and "PIPELINING" in str(r), r
    assert srv.stop() == 0
    assert [s for s, _ in _pending(srv)] == ["helo"]


def test_client_leaves_while_decision_pending(ringmx, client_factory):
    # The timer is cancelled with the connection; the server stays healthy
    # (the fixture checks a clean exit and no sanitizer report).
    srv = ringmx(TARPIT)
    c = client_factory(srv.port)
    c.ehlo()
    _make_errors(c, 2)
    c.send(b"MAIL FROM:<a@client.example>\r\n")
    c.close()
    d = client_factory(srv.port)
    d.ehlo()
    assert d.cmd("MAIL FROM:<b@client.example>").startswith("250 2.1.0")
