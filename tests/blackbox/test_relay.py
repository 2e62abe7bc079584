"""Relay policy: recipients accepted only for relay.domains (loopback is not in
relay.networks); null sender, Postmaster, source routes and %/! hacks."""

import pytest

from conftest import SMTPClient, env_get, queued_id


def rcpt_reply(port, rcpt, sender="a@client.example", mail_params=""):
    c = SMTPClient(port)
    try:
        c.ehlo()
        r = c.cmd("MAIL FROM:<%s>%s" % (sender, mail_params))
        assert r.startswith("250 2.1.0"), r
        return c.cmd("RCPT TO:%s" % rcpt)
    finally:
        c.close()


ACCEPTED = [
    "<user@accepted.example>",
    "<user@ACCEPTED.Example>",
    "<user@a.sub.example>",
    "<user@a.b.sub.example>",
    "<user@A.Sub.EXAMPLE>",
    "<Postmaster>",
    "<postmaster>",
    "<@x.example:user@accepted.example>",
    "<@x.example,@y.example:user@accepted.example>",
    "<user%other.example@accepted.example>",
    "<other.example!user@accepted.example>",
    '<"quoted user"@accepted.example>',
]

DENIED = [
    "<user@other.example>",
    "<user@sub.example>",
    "<user@xsub.example>",
    "<user@xaccepted.example>",
    "<user@accepted.example.evil>",
    "<user@accepted.examplex>",
    "<postmaster@other.example>",
    "<@accepted.example:user@other.example>",
    "<user@[127.0.0.1]>",
]


@pytest.mark.parametrize("rcpt", ACCEPTED)
def test_rcpt_accepted(server, rcpt):
    r = rcpt_reply(server.port, rcpt)
    assert r.last == "250 2.1.5 Ok", "%s -> %r" % (rcpt, r)


@pytest.mark.parametrize("rcpt", DENIED)
def test_rcpt_relay_denied(server, rcpt):
    r = rcpt_reply(server.port, rcpt)
    assert r.startswith("554 5.7.1"), "%s -> %r" % (rcpt, r)
    assert "Relay access denied" in r.last, r


def test_relay_denied_case_variants(server):
    # a denied domain stays denied in any case
    r = rcpt_reply(server.port, "<user@OTHER.example>")
    assert r.startswith("554 5.7.1"), r


def test_percent_domain_hack_refused(server):
    r = rcpt_reply(server.port, "<user@other.example%accepted.example>")
    assert r.code // 100 == 5, r


def test_null_sender_accepted(server, client_factory):
    c = client_factory(server.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<>").last == "250 2.1.0 Ok"
    assert c.cmd("RCPT TO:<user@accepted.example>").last == "250 2.1.5 Ok"
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: bounce\r\n\r\nx\r\n.\r\n")
    qid = queued_id(c.reply())
    env, _ = server.queue_show(qid)
    assert env_get(env, "from") in (["<>"], [""]), env


def test_sender_domain_not_relevant(server):
    # the sender's domain does not matter for relaying, only the recipient's
    r = rcpt_reply(server.port, "<user@accepted.example>", sender="x@other.example")
    assert r.last == "250 2.1.5 Ok", r
    r = rcpt_reply(server.port, "<user@other.example>", sender="x@accepted.example")
    assert r.startswith("554 5.7.1"), r


def _queue_one(server, rcpt):
    c = SMTPClient(server.port)
    try:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@client.example>").startswith("250")
        r = c.cmd("RCPT TO:%s" % rcpt)
        assert r.startswith("250 2.1.5"), r
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: r\r\n\r\nx\r\n.\r\n")
        return queued_id(c.reply())
    finally:
        c.close()


def test_source_route_dropped_in_envelope(server):
    qid = _queue_one(server, "<@x.example,@y.example:user@accepted.example>")
    env, _ = server.queue_show(qid)
    rcpts = env_get(env, "rcpt")
    assert len(rcpts) == 1, env
    assert "user@accepted.example" in rcpts[0], rcpts
    assert "x.example" not in rcpts[0] and "y.example" not in rcpts[0], \
        "source route kept in the envelope: %r" % rcpts


@pytest.mark.parametrize("addr", ["user%other.example@accepted.example",
                                  "other.example!user@accepted.example"])
def test_hacks_stay_local_part(server, addr):
    qid = _queue_one(server, "<%s>" % addr)
    env, _ = server.queue_show(qid)
    rcpts = env_get(env, "rcpt")
    assert len(rcpts) == 1 and addr in rcpts[0], "envelope recipient %r, expected %r" % (rcpts, addr)


def test_postmaster_in_envelope(server):
    qid = _queue_one(server, "<Postmaster>")
    env, _ = server.queue_show(qid)
    rcpts = env_get(env, "rcpt")
    assert len(rcpts) == 1 and "postmaster" in rcpts[0].lower(), rcpts


def test_relay_network_client_allowed(ringmx, client_factory):
    # With loopback in relay.networks any recipient domain is accepted.
    s = ringmx({"relay": {"networks": ["127.0.0.0/8"]}})
    c = client_factory(s.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.example>").startswith("250")
    r = c.cmd("RCPT TO:<user@other.example>")
    assert r.last == "250 2.1.5 Ok", r


def test_no_relay_domains_denies_all(ringmx, client_factory):
    s = ringmx({"relay": {"domains": [], "networks": []}})
    c = client_factory(s.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.example>").startswith("250")
    assert c.cmd("RCPT TO:<user@accepted.example>").startswith("554 5.7.1")
    # Postmaster is always accepted (RFC 5321 4.5.1)
    assert c.cmd("RCPT TO:<Postmaster>").last == "250 2.1.5 Ok"
