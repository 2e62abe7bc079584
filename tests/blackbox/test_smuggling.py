"""SMTP smuggling (CVE-2023-51764/5/6): only CRLF.CRLF ends DATA; a bare CR,
bare LF or NUL in the body refuses the message after its real end, and never
yields a second message.  Command lines with bare CR/LF are refused."""

import socket

import pytest

from conftest import SMTPClient, queued_id

SMUGGLED = (b"MAIL FROM:<evil@x>\r\n"
            b"RCPT TO:<v@accepted.example>\r\n"
            b"DATA\r\n"
            b"smuggled\r\n")

FAKE_ENDS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r.\n",
    b"\n.\r",
    b"\r\n\n.\n",        # ".\n" after a bare LF
    b"\r\n\n.\r\n",      # ".\r\n" after a bare LF
    b"\r\n\r.\r\n",      # ".\r\n" after a bare CR
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n.\r\r\n",
    b"\r\n.\r\x00\n",
    b"\r\n \r\n.\n",
]


def _ids(v):
    return v.decode("latin-1").encode("unicode_escape").decode()


@pytest.mark.parametrize("fake", FAKE_ENDS, ids=[_ids(f) for f in FAKE_ENDS])
def test_fake_end_of_data(server, client_factory, fake):
    before = server.queue_list()
    c = client_factory(server.port)
    c.start_mail()
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: smuggle\r\n\r\nhello" + fake + SMUGGLED + b".\r\n")
    r = c.reply()
    assert r.startswith("554 5.6.0"), "after the real end of data: %r" % r
    c.send(b"QUIT\r\n")
    rest = c.replies_until_closed(10)
    assert [x.code for x in rest] == [221], \
        "extra replies (smuggled commands ran?): %r" % rest
    after = server.queue_list()
    assert after == before, "queue changed: %r" % {k: after[k] for k in set(after) - set(before)}


@pytest.mark.parametrize("fake", [b"\n.\n", b"\r.\r", b"\r\n\x00.\r\n"],
                         ids=["LF.LF", "CR.CR", "NUL"])
def test_fake_end_split_over_writes(server, client_factory, fake):
    # The scanner keeps its state across segments.
    c = client_factory(server.port)
    c.start_mail()
    assert c.cmd("DATA").code == 354
    payload = b"Subject: smuggle\r\n\r\nhello" + fake + SMUGGLED + b".\r\n"
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(payload)):
        c.send(payload[i:i + 1])
    r = c.reply()
    assert r.startswith("554 5.6.0"), r
    c.send(b"QUIT\r\n")
    assert [x.code for x in c.replies_until_closed(10)] == [221]
    assert server.queue_list() == {}


def test_session_usable_after_refused_body(server, client_factory):
    c = client_factory(server.port)
    c.start_mail()
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: x\r\n\r\nbare\nlf\r\n.\r\n")
    assert c.reply().startswith("554 5.6.0")
    qid = queued_id(c.send_message(b"Subject: y\r\n\r\nclean\r\n", ehlo=False))
    assert list(server.queue_list()) == [qid]


def test_real_end_after_crlf_in_body_is_the_end(server, client_factory):
    # The control: a correct CRLF.CRLF followed by pipelined commands gives a
    # message and then the commands run.
    c = client_factory(server.port)
    c.start_mail()
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: ok\r\n\r\nhello\r\n.\r\nNOOP\r\n")
    qid = queued_id(c.reply())
    assert c.reply().last == "250 2.0.0 Ok"
    assert list(server.queue_list()) == [qid]


def test_command_bare_lf(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    c.send(b"NOOP\nNOOP\r\n")
    r = c.reply()
    assert r.startswith("500 5.5.2"), r
    # A bare LF closes the session (Postfix's smtpd_forbid_bare_newline):
    # the NOOP after it never runs, and nothing more is answered.
    rest = c.replies_until_closed(10)
    assert rest == [], "a command after a bare LF was answered: %r" % rest


def test_command_bare_lf_smuggled_mail(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    c.send(b"MAIL FROM:<a@client.example>\nRCPT TO:<v@accepted.example>\r\n")
    r = c.reply()
    assert r.startswith("500 5.5.2"), r
    c.send(b"QUIT\r\n")
    rest = c.replies_until_closed(10)
    assert all(x.code != 250 for x in rest), "smuggled MAIL/RCPT accepted: %r" % rest


def test_command_bare_cr(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    c.send(b"NOOP\rNOOP\r\n")
    r = c.reply()
    assert r.startswith("500"), r
    c.send(b"QUIT\r\n")
    rest = c.replies_until_closed(10)
    assert rest and rest[-1].code == 221, rest
    assert all(x.code != 250 for x in rest), rest


def test_command_nul(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    r = c.cmd(b"NOOP\x00")
    assert r.code // 100 == 5, r
    assert c.cmd("NOOP").last == "250 2.0.0 Ok"


def test_pipelined_after_data_one_reply_per_command(server, client_factory):
    # Two full transactions and a QUIT in one write: exactly 2+2+... replies.
    c = client_factory(server.port)
    c.ehlo()
    c.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<r@accepted.example>\r\nDATA\r\n")
    rs = c.replies(3)
    assert [r.code for r in rs] == [250, 250, 354], rs
    c.send(b"one\r\n.\r\nMAIL FROM:<b@client.example>\r\nRCPT TO:<r@accepted.example>\r\n"
           b"DATA\r\n")
    rs = c.replies(4)
    assert [r.code for r in rs] == [250, 250, 250, 354], rs
    c.send(b"two\r\n.\r\nQUIT\r\n")
    rs = c.replies_until_closed(10)
    assert [r.code for r in rs] == [250, 221], rs
    assert len(server.queue_list()) == 2
