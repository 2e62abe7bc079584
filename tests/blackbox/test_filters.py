"""Filter chains (issue 11, step 1; the grammar of doc/design-filters.md)
against the real binary: every stage (connect, helo, auth, mail, rcpt)
with every action, every matcher, tags and how long they live, the
%{field} replies, per-listener chains, the relay policy that no filter can
override, inline tables and the event=filter log line.  What a mail admin
writes in a chain must be what the server does; the hostile-client side is
in test_filters_attack.py."""

import base64
import socket
import ssl
import subprocess

import pytest

from conftest import HOSTNAME, SMTPClient, dot_stuff, free_port, queued_id
from logparse import parse_kv, text
from test_tls import ehlo as tls_ehlo, raw, send_cmd, starttls, tls_config
from tlsutil import certs  # noqa: F401

DEFAULT_REJECT = "550 5.7.1 Rejected by policy"
DEFAULT_TEMPFAIL = "451 4.7.1 Try again later"
DEFAULT_DISCONNECT = "421 4.7.0 %s Closing connection" % HOSTNAME
FELL = "550 5.7.1 fell through"
PASSWORD = "filter pass"
BODY = b"Subject: filters\r\n\r\nhello\r\n"

# --------------------------------------------------------------------------
# helpers (test_filters_attack.py imports them)


@pytest.fixture
def conn():
    """conn(port, src=..., banner=True, ehlo=None) -> an SMTPClient whose
    connection comes from the loopback address src: every 127/8 address is
    this host's, so one server sees several client_ip values."""
    made = []

    def make(port, src="127.0.0.1", banner=True, ehlo=None, timeout=10.0):
        c = SMTPClient.__new__(SMTPClient)
        c.timeout, c.buf, c.eof, c.banner = timeout, b"", False, None
        c.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                          source_address=(src, 0))
        made.append(c)
        if banner:
            c.banner = c.reply()
            assert c.banner.code == 220, c.banner
        if ehlo:
            c.ehlo(ehlo)
        return c

    yield make
    for c in made:
        c.close()


def events(srv):
    """The event=filter lines of srv's log as {key: str} dicts, in order.
    Read after srv.stop(): every shard line is written by then."""
    out = []
    for line in srv.log_text().splitlines():
        if " event=filter " in line:
            out.append({k: text(v) for k, v in parse_kv(line)})
    return out


def rule_events(srv, path):
    return [e for e in events(srv) if e.get("rule") == path]


def users_over(tmp_path, users, auth="optional"):
    """Config overrides: AUTH (PLAIN over plaintext, loopback only) for users,
    all with PASSWORD, no failure delay."""
    h = subprocess.run(["openssl", "passwd", "-6", PASSWORD], capture_output=True,
                       check=True).stdout.decode().strip()
    path = tmp_path / "users"
    path.write_text("".join("%s:%s\n" % (u, h) for u in users))
    return {"auth": {"users_file": str(path), "failure_delay_ms": 0, "failures_max": 1000},
            "listeners": [{"name": "mx", "greet_pause_ms": 0, "tls": "none", "auth": auth,
                           "auth_plaintext": True}]}


def plain(user, password=PASSWORD):
    token = b"\0%s\0%s" % (user.encode(), password.encode())
    return "AUTH PLAIN " + base64.b64encode(token).decode()


def printable_line(reply):
    """Every reply line is one line of printable ASCII within 512 octets."""
    for ln in reply.lines:
        assert all(0x20 <= ord(ch) < 0x7F for ch in ln), "non-printable in reply %r" % ln
        assert len(ln) + 2 <= 512, "reply line of %d octets" % (len(ln) + 2)


# --------------------------------------------------------------------------
# every stage x every action

# (key, action, the reply, or None for the command's own success)
CASES = [
    ("rj", {"reject": "553 5.7.1 given reject"}, "553 5.7.1 given reject"),
    ("rjn", {"reject": "554 no enhanced code"}, "554 5.7.1 no enhanced code"),
    ("rjd", "reject", DEFAULT_REJECT),
    ("tf", {"tempfail": "450 4.7.1 given tempfail"}, "450 4.7.1 given tempfail"),
    ("tfn", {"tempfail": "451 come back"}, "451 4.7.1 come back"),
    ("tfd", "tempfail", DEFAULT_TEMPFAIL),
    ("dc", {"disconnect": "421 4.7.0 given disconnect"}, "421 4.7.0 given disconnect"),
    ("dc5", {"disconnect": "554 5.7.1 go away"}, "554 5.7.1 go away"),
    ("dcd", "disconnect", DEFAULT_DISCONNECT),
    ("acc", "accept", None),
    ("acc2", {"accept": True}, None),
    ("nx", "next", FELL),
    ("nx2", {"next": True}, FELL),
    ("none", None, None),  # no rule names it
]
ACTION = {"rj": "reject", "rjn": "reject", "rjd": "reject", "tf": "tempfail",
          "tfn": "tempfail", "tfd": "tempfail", "dc": "disconnect", "dc5": "disconnect",
          "dcd": "disconnect", "acc": "accept", "acc2": "accept"}
SRC = {k: "127.0.0.%d" % (10 + i) for i, (k, _, _) in enumerate(CASES)}
SUCCESS = {"connect": 220, "helo": 250, "auth": 235, "mail": 250, "rcpt": 250}


def stage_value(stage, key):
    return {"connect": SRC[key], "helo": key + ".example", "auth": key,
            "mail": key + "@client.example", "rcpt": key + "@accepted.example"}[stage]


def stage_chain(stage):
    m = {"connect": "client_ip", "helo": "helo", "auth": "auth_user", "mail": "sender",
         "rcpt": "rcpt"}[stage]
    chain = [{"if": {m: stage_value(stage, k)}, "then": act} for k, act, _ in CASES if act]
    chain.append({"if": {m: [stage_value(stage, k) for k in ("acc", "acc2", "nx", "nx2")]},
                  "then": {"reject": FELL}})
    return chain


def reach(conn, srv, stage, key):
    """A new session run up to the stage's command for key: (client, reply)."""
    if stage == "connect":
        c = conn(srv.port, src=SRC[key], banner=False)
        return c, c.reply()
    c = conn(srv.port)
    if stage == "helo":
        return c, c.cmd("EHLO " + stage_value(stage, key))
    c.ehlo()
    if stage == "auth":
        return c, c.cmd(plain(key))
    if stage == "mail":
        return c, c.cmd("MAIL FROM:<%s>" % stage_value(stage, key))
    c.expect("MAIL FROM:<a@client.example>", "250 2.1.0")
    return c, c.cmd("RCPT TO:<%s>" % stage_value(stage, key))


@pytest.mark.parametrize("stage", ["connect", "helo", "auth", "mail", "rcpt"])
def test_stage_actions(ringmx, conn, tmp_path, stage):
    over = {"filters": {stage: stage_chain(stage)}}
    if stage == "auth":
        over.update(users_over(tmp_path, [k for k, _, _ in CASES]))
    srv = ringmx(over)
    for key, act, want in CASES:
        c, r = reach(conn, srv, stage, key)
        if want is None:
            assert r.code == SUCCESS[stage], "%s %s: %r" % (stage, key, r)
            assert c.cmd("NOOP").code == 250
            continue
        assert r.last == want, "%s %s: %r" % (stage, key, r)
        if stage == "connect" or key.startswith("dc"):
            # reply, then the connection closes (at connect: instead of the banner)
            assert c.replies_until_closed() == [], "%s %s: more after the reply" % (stage, key)
        else:
            assert c.cmd("NOOP").code == 250, "%s %s: session not kept" % (stage, key)
        if stage == "auth" and key[:2] in ("rj", "tf", "nx"):
            # the login was refused: the session is still unauthenticated
            assert c.cmd(plain("none")).code == 235, "%s %s" % (stage, key)
    assert srv.stop() == 0
    for i, (key, act, want) in enumerate(CASES[:-1]):
        got = rule_events(srv, "filters.%s[%d]" % (stage, i))
        if key.startswith("nx"):
            assert all(e["action"] == "next" for e in got), got
            continue
        assert len(got) == 1, "%s: %r" % (key, events(srv))
        assert got[0]["stage"] == stage and got[0]["action"] == ACTION[key], got
        assert got[0]["client"] == (SRC[key] if stage == "connect" else "127.0.0.1"), got
        if want is not None:
            assert got[0]["reply"] == want, got
    fell = rule_events(srv, "filters.%s[%d]" % (stage, len(CASES) - 1))
    assert [e["action"] for e in fell] == ["reject", "reject"], fell


def test_mail_and_rcpt_reject_keep_the_transaction_straight(ringmx, client_factory):
    srv = ringmx({"filters": {
        "mail": [{"if": {"sender": "no@client.example"}, "then": "reject"}],
        "rcpt": [{"if": {"rcpt": "no@accepted.example"}, "then": "reject"}]}})
    c = client_factory(srv.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<no@client.example>").last == DEFAULT_REJECT
    assert c.cmd("RCPT TO:<yes@accepted.example>").code == 503, "a refused MAIL began a transaction"
    c.expect("MAIL FROM:<yes@client.example>", "250 2.1.0")
    assert c.cmd("RCPT TO:<no@accepted.example>").last == DEFAULT_REJECT
    c.expect("RCPT TO:<yes@accepted.example>", "250 2.1.5")
    c.expect("DATA", "354")
    c.send(dot_stuff(BODY) + b".\r\n")
    qid = queued_id(c.reply())
    env, _ = srv.queue_show(qid)
    rcpts = [v.strip("<>") for k, v in env if k == "rcpt"]
    assert rcpts == ["yes@accepted.example"], env


# --------------------------------------------------------------------------
# tarpits


def test_tarpit_alone_waits_then_the_next_rule_runs(ringmx, client_factory):
    srv = ringmx({"filters": {"mail": [
        {"if": {"sender_domain": ["slow.example", "slowbad.example"]}, "tarpit_ms": 500},
        {"if": {"sender_domain": "slowbad.example"}, "then": {"reject": "550 5.7.1 after wait"}}]}})
    c = client_factory(srv.port)
    c.ehlo()
    c.send("MAIL FROM:<a@slowbad.example>\r\n")
    assert not c.data_available(0.25), "the tarpit did not hold the reply"
    assert c.reply().last == "550 5.7.1 after wait"
    c.send("MAIL FROM:<a@slow.example>\r\n")
    assert not c.data_available(0.25), "the tarpit did not hold the reply"
    assert c.reply().startswith("250 2.1.0"), "tarpit alone must not decide"
    c.expect("RSET", "250")
    assert c.cmd("MAIL FROM:<a@fast.example>").startswith("250 2.1.0")
    assert srv.stop() == 0
    tp = rule_events(srv, "filters.mail[0]")
    assert len(tp) == 2 and all(e.get("tarpit_ms") == "500" for e in tp), events(srv)
    assert [e["action"] for e in rule_events(srv, "filters.mail[1]")] == ["reject"]


def test_tarpit_with_reject(ringmx, client_factory):
    srv = ringmx({"filters": {"rcpt": [
        {"if": {"rcpt": "slow@accepted.example"},
         "then": {"reject": "550 5.7.1 slow no", "tarpit_ms": 500}}]}})
    c = client_factory(srv.port)
    c.start_mail()
    c.send("RCPT TO:<slow@accepted.example>\r\n")
    assert not c.data_available(0.25), "the tarpit did not hold the reply"
    assert c.reply().last == "550 5.7.1 slow no"
    c.expect("RCPT TO:<fast@accepted.example>", "250 2.1.5")
    assert srv.stop() == 0
    [e] = rule_events(srv, "filters.rcpt[0]")
    assert (e["action"], e["tarpit_ms"], e["reply"]) == ("reject", "500", "550 5.7.1 slow no"), e


def test_tarpit_at_connect_delays_the_banner(ringmx, conn):
    srv = ringmx({"filters": {"connect": [{"if": {"client_ip": "127.0.0.2"}, "tarpit_ms": 500}]}})
    slow = conn(srv.port, src="127.0.0.2", banner=False)
    fast = conn(srv.port)  # the other client is not held
    assert fast.banner.code == 220
    assert not slow.data_available(0.25), "the banner was not held"
    assert slow.reply().code == 220
    slow.ehlo()
    assert srv.stop() == 0
    [e] = rule_events(srv, "filters.connect[0]")
    assert e["client"] == "127.0.0.2" and e["tarpit_ms"] == "500", e


# --------------------------------------------------------------------------
# tags


def test_session_tags_last_the_session(ringmx, conn):
    srv = ringmx({"filters": {
        "connect": [{"if": {"client_ip": "127.0.0.2"}, "then": {"tag": "fromtwo", "accept": True}}],
        "helo": [{"if": {"helo": "tagged.example"}, "then": {"tag": ["h1", "h2"], "accept": True}}],
        "rcpt": [{"if": {"all": [{"tag": "fromtwo"}, {"rcpt": "x@accepted.example"}]},
                  "then": {"reject": "550 5.7.1 tag from connect"}},
                 {"if": {"all": [{"tag": "h2"}, {"rcpt": "y@accepted.example"}]},
                  "then": {"reject": "550 5.7.1 tag from helo"}}]}})
    plain_c = conn(srv.port, ehlo="other.example")
    plain_c.expect("MAIL FROM:<a@client.example>", "250")
    plain_c.expect("RCPT TO:<x@accepted.example>", "250 2.1.5")
    plain_c.expect("RCPT TO:<y@accepted.example>", "250 2.1.5")
    c = conn(srv.port, src="127.0.0.2", ehlo="tagged.example")
    for rset in ("message", "RSET", None):
        c.expect("MAIL FROM:<a@client.example>", "250")
        assert c.cmd("RCPT TO:<x@accepted.example>").last == "550 5.7.1 tag from connect"
        assert c.cmd("RCPT TO:<y@accepted.example>").last == "550 5.7.1 tag from helo"
        c.expect("RCPT TO:<z@accepted.example>", "250 2.1.5")
        if rset == "message":
            c.expect("DATA", "354")
            c.send(dot_stuff(BODY) + b".\r\n")
            queued_id(c.reply())
        elif rset:
            c.expect("RSET", "250")
    assert srv.stop() == 0


def test_transaction_tags_forgotten_after_rset_and_message(ringmx, client_factory):
    srv = ringmx({"filters": {
        "mail": [{"if": {"sender_domain": "tagme.example"}, "then": {"tag": "tx", "accept": True}}],
        "rcpt": [{"if": {"rcpt": "trap@accepted.example"},
                  "then": {"tag": "trapped", "reject": "550 5.1.1 no such user"}},
                 {"if": {"tag": "trapped"}, "then": {"reject": "550 5.7.1 trapped earlier"}},
                 {"if": {"all": [{"tag": "tx"}, {"rcpt": "flag@accepted.example"}]},
                  "then": {"reject": "550 5.7.1 tx tag"}}]}})
    c = client_factory(srv.port)
    c.ehlo()
    for end in ("message", "RSET"):
        c.expect("MAIL FROM:<a@tagme.example>", "250")
        c.expect("RCPT TO:<ok@accepted.example>", "250 2.1.5")
        assert c.cmd("RCPT TO:<flag@accepted.example>").last == "550 5.7.1 tx tag"
        if end == "message":
            c.expect("DATA", "354")
            c.send(dot_stuff(BODY) + b".\r\n")
            queued_id(c.reply())
        else:
            c.expect("RSET", "250")
        c.expect("MAIL FROM:<a@client.example>", "250")
        assert c.cmd("RCPT TO:<flag@accepted.example>").startswith("250 2.1.5"), \
            "the transaction tag outlived the %s" % end
        c.expect("RSET", "250")
    # a tag set at rcpt lasts the rest of the transaction, not longer
    c.expect("MAIL FROM:<a@client.example>", "250")
    assert c.cmd("RCPT TO:<trap@accepted.example>").last == "550 5.1.1 no such user"
    assert c.cmd("RCPT TO:<ok@accepted.example>").last == "550 5.7.1 trapped earlier"
    c.expect("RSET", "250")
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<ok@accepted.example>", "250 2.1.5")
    assert srv.stop() == 0


def test_tag_alone_goes_on_to_the_next_rule(ringmx, client_factory):
    # The spec says so of tarpit_ms alone; a tag alone decides nothing either.
    srv = ringmx({"filters": {"mail": [
        {"if": {"sender_domain": "t.example"}, "tag": "seen"},
        {"if": {"sender": "bad@t.example"}, "then": "reject"}],
        "rcpt": [{"if": {"tag": "seen"}, "then": {"reject": "550 5.7.1 seen"}}]}})
    c = client_factory(srv.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<bad@t.example>").last == DEFAULT_REJECT
    c.expect("MAIL FROM:<good@t.example>", "250 2.1.0")
    assert c.cmd("RCPT TO:<x@accepted.example>").last == "550 5.7.1 seen"
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# matchers


@pytest.mark.parametrize("cidr,hit", [
    ("127.0.0.0/8", True), ("127.0.0.1", True), ("127.0.0.0/31", True),
    (["10.0.0.0/8", "127.0.0.1/32"], True), ("10.0.0.0/8", False),
    ("127.0.0.2/32", False), ("128.0.0.0/1", False), ("::1/128", False),
    ("2001:db8::/32", False)])
def test_client_ip_cidr(ringmx, client_factory, cidr, hit):
    srv = ringmx({"filters": {"connect": [
        {"if": {"client_ip": cidr}, "then": {"reject": "554 5.7.1 no service for %{client_ip}"}}]}})
    c = client_factory(srv.port, read_banner=False)
    r = c.reply()
    if hit:
        assert r.last == "554 5.7.1 no service for 127.0.0.1", r
        assert c.replies_until_closed() == []
    else:
        assert r.code == 220, r
    assert srv.stop() == 0


def test_listener_names(ringmx, client_factory):
    sub = free_port()
    srv = ringmx({"listeners": [
        {"name": "mx", "greet_pause_ms": 0},
        {"name": "sub", "address": "127.0.0.1:%d" % sub, "greet_pause_ms": 0}],
        "filters": {"connect": [{"if": {"listener": "sub"}, "then": "tempfail"}],
                    "mail": [{"if": {"listener": ["mx", "sub"]},
                              "then": {"reject": "550 5.7.1 on %{listener}"}}]}})
    r = client_factory(sub, read_banner=False).reply()
    assert r.last == DEFAULT_TEMPFAIL, r
    c = client_factory(srv.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@client.example>").last == "550 5.7.1 on mx"
    assert srv.stop() == 0


def test_helo_matchers(ringmx, client_factory):
    srv = ringmx({"filters": {"helo": [
        {"if": {"helo": "bad.example"}, "then": {"reject": "550 5.7.1 exact"}},
        {"if": {"helo": ["one.example", "two.example"]}, "then": {"reject": "550 5.7.1 set"}},
        {"if": {"helo": "*.dyn.example"}, "then": {"reject": "550 5.7.1 suffix"}},
        {"if": {"helo": {"regex": "^[0-9]+-[0-9]+\\.pool\\."}}, "then": {"reject": "550 5.7.1 rx"}},
        {"if": {"helo": {"regex": "(?i)^localhost$"}}, "then": {"reject": "550 5.7.1 rxi"}}]}})
    cases = {"bad.example": "exact", "BAD.Example": "exact", "sub.bad.example": None,
             "xbad.example": None, "two.example": "set", "One.Example": "set",
             "a.dyn.example": "suffix", "a.b.DYN.example": "suffix", "dyn.example": None,
             "xdyn.example": None, "10-1.pool.isp.example": "rx",
             "10-1.POOL.isp.example": None, "x10-1.pool.example": None,
             "LocalHost": "rxi", "localhost.example": None}
    for helo, want in cases.items():
        c = client_factory(srv.port)
        r = c.cmd("EHLO " + helo)
        if want:
            assert r.last == "550 5.7.1 " + want, "%s: %r" % (helo, r)
        else:
            assert r.code == 250, "%s: %r" % (helo, r)
        c.close()
    assert srv.stop() == 0


def _mail_cases(srv, client_factory, cases, prefix="MAIL FROM:", setup=None):
    c = client_factory(srv.port)
    c.ehlo()
    for arg, want in cases:
        if setup:
            c.expect(setup, "250")
        r = c.cmd(prefix + arg)
        if want:
            assert r.last == "550 5.7.1 " + want, "%s: %r" % (arg, r)
        else:
            assert r.code == 250, "%s: %r" % (arg, r)
        c.expect("RSET", "250")


def test_sender_matchers(ringmx, client_factory):
    srv = ringmx({"filters": {"mail": [
        {"if": {"sender": ["x@a.example", "y@a.example"]}, "then": {"reject": "550 5.7.1 set"}},
        {"if": {"sender_domain": "*.spam.example"}, "then": {"reject": "550 5.7.1 suffix"}},
        {"if": {"sender": "@bulk.example"}, "then": {"reject": "550 5.7.1 at"}},
        {"if": {"sender_domain": "exact.example"}, "then": {"reject": "550 5.7.1 domain"}},
        {"if": {"sender": {"regex": "^noreply-[0-9]+@"}}, "then": {"reject": "550 5.7.1 rx"}},
        {"if": {"sender": ""}, "then": {"reject": "550 5.7.1 null"}}]}})
    _mail_cases(srv, client_factory, [
        ("<x@a.example>", "set"), ("<Y@A.Example>", "set"), ("<z@a.example>", None),
        ("<u@mx.spam.example>", "suffix"), ("<u@spam.example>", None),
        ("<u@bulk.example>", "at"), ("<u@sub.bulk.example>", None), ("<u@BULK.example>", "at"),
        ("<u@exact.example>", "domain"), ("<u@a.exact.example>", None),
        ("<noreply-12@x.example>", "rx"), ("<NOREPLY-12@x.example>", None),
        ("<>", "null"), ("<a@client.example>", None)])
    assert srv.stop() == 0


@pytest.mark.parametrize("null", ["", "<>"])
def test_null_sender_spellings(ringmx, client_factory, null):
    srv = ringmx({"filters": {"mail": [{"if": {"sender": null}, "then": "tempfail"}]}})
    _c = client_factory(srv.port)
    _c.ehlo()
    assert _c.cmd("MAIL FROM:<>").last == DEFAULT_TEMPFAIL
    assert _c.cmd("MAIL FROM:<a@client.example>").startswith("250 2.1.0")
    assert srv.stop() == 0


def test_rcpt_matchers(ringmx, client_factory):
    srv = ringmx({"filters": {"rcpt": [
        {"if": {"rcpt": "boss@accepted.example"}, "then": {"reject": "550 5.7.1 exact"}},
        {"if": {"rcpt_domain": "x.sub.example"}, "then": {"reject": "550 5.7.1 domain"}},
        {"if": {"rcpt": "@y.sub.example"}, "then": {"reject": "550 5.7.1 at"}},
        {"if": {"rcpt_domain": "*.z.sub.example"}, "then": {"reject": "550 5.7.1 suffix"}},
        {"if": {"rcpt": {"regex": "^list-"}}, "then": {"reject": "550 5.7.1 rx"}}]}})
    _mail_cases(srv, client_factory, [
        ("<boss@accepted.example>", "exact"), ("<BOSS@Accepted.Example>", "exact"),
        ("<boss2@accepted.example>", None), ("<u@x.sub.example>", "domain"),
        ("<u@a.x.sub.example>", None), ("<u@y.sub.example>", "at"), ("<u@a.y.sub.example>", None),
        ("<u@a.z.sub.example>", "suffix"), ("<u@z.sub.example>", None),
        ("<list-a@accepted.example>", "rx"), ("<u@accepted.example>", None)],
        prefix="RCPT TO:", setup="MAIL FROM:<a@client.example>")
    assert srv.stop() == 0


def test_rcpt_count(ringmx, client_factory):
    srv = ringmx({"filters": {"rcpt": [
        {"if": {"rcpt_count": {"gt": 2}}, "then": {"tempfail": "452 4.5.3 Too many recipients"}},
        {"if": {"rcpt_count": 1, "rcpt": "second@accepted.example"},
         "then": {"reject": "550 5.7.1 not first"}}]}})
    c = client_factory(srv.port)
    c.ehlo()
    c.expect("MAIL FROM:<a@client.example>", "250")
    assert c.cmd("RCPT TO:<second@accepted.example>").last == "550 5.7.1 not first"
    c.expect("RCPT TO:<r1@accepted.example>", "250 2.1.5")
    # refused recipients do not count: neither the filter's nor the relay policy's
    assert c.cmd("RCPT TO:<r@elsewhere.example>").code == 554
    c.expect("RCPT TO:<second@accepted.example>", "250 2.1.5")
    assert c.cmd("RCPT TO:<r3@accepted.example>").last == "452 4.5.3 Too many recipients"
    assert c.cmd("RCPT TO:<r4@accepted.example>").last == "452 4.5.3 Too many recipients"
    c.expect("RSET", "250")
    c.expect("MAIL FROM:<a@client.example>", "250")
    for i in (1, 2):
        c.expect("RCPT TO:<n%d@accepted.example>" % i, "250 2.1.5")
    assert c.cmd("RCPT TO:<n3@accepted.example>").code == 452
    assert srv.stop() == 0


def test_size(ringmx, client_factory):
    srv = ringmx({"filters": {"mail": [
        {"if": {"size": {"gt": 1000}}, "then": {"reject": "552 5.3.4 too big for policy"}},
        {"if": {"size": 0}, "then": {"reject": "550 5.7.1 declare a size"}},
        {"if": {"size": {"ge": 100, "le": 200}}, "then": {"reject": "550 5.7.1 in range"}}]}})
    _c = client_factory(srv.port)
    _c.ehlo()
    for params, want in ((" SIZE=5000", "552 5.3.4 too big for policy"), (" SIZE=1001", "552"),
                         (" SIZE=1000", "250 2.1.0"), ("", "550 5.7.1 declare a size"),
                         (" SIZE=150", "550 5.7.1 in range"), (" SIZE=201", "250 2.1.0")):
        r = _c.cmd("MAIL FROM:<a@client.example>" + params)
        assert r.startswith(want), "%r: %r" % (params, r)
        _c.expect("RSET", "250")
    assert srv.stop() == 0


def test_tls_matcher(ringmx, certs):
    over = tls_config(certs)
    over["filters"] = {"mail": [
        {"if": {"tls": False}, "then": {"reject": "530 5.7.0 Must issue a STARTTLS command first"}},
        {"if": {"tls": {"version": "1.2"}}, "then": {"reject": "550 5.7.1 tls12"}},
        {"if": {"tls": {"version": ["1.0", "1.3"]}}, "then": {"reject": "550 5.7.1 tls13"}}]}
    srv = ringmx(over)
    s = raw(srv.port)
    tls_ehlo(s)
    assert send_cmd(s, "MAIL FROM:<a@client.example>") == [
        "530 5.7.0 Must issue a STARTTLS command first"]
    for v, want in ((ssl.TLSVersion.TLSv1_2, "550 5.7.1 tls12"),
                    (ssl.TLSVersion.TLSv1_3, "550 5.7.1 tls13")):
        s = raw(srv.port)
        tls_ehlo(s)
        t = starttls(s, certs, min_version=v, max_version=v)
        tls_ehlo(t)
        assert send_cmd(t, "MAIL FROM:<a@client.example>") == [want]
        t.close()
    assert srv.stop() == 0


def test_auth_user_and_matches_login(ringmx, client_factory, tmp_path):
    over = users_over(tmp_path, ["alice@client.example", "bob"])
    over["filters"] = {"mail": [
        {"if": {"auth_user": True, "sender": {"matches_login": True}}, "then": "accept"},
        {"if": {"auth_user": "BOB"}, "then": {"reject": "550 5.7.1 bob may not send"}},
        {"if": {"auth_user": True}, "then": {"reject": "550 5.7.1 %{auth_user} is not %{sender}"}},
        {"if": {"sender": {"matches_login": True}}, "then": {"reject": "550 5.7.1 unreachable"}},
        {"if": {"auth_user": False, "sender_domain": "nologin.example"},
         "then": {"reject": "550 5.7.1 log in first"}}]}
    srv = ringmx(over)
    c = client_factory(srv.port)
    c.ehlo()
    # not authenticated: matches_login is false, auth_user false holds
    c.expect("MAIL FROM:<alice@client.example>", "250 2.1.0")
    c.expect("RSET", "250")
    assert c.cmd("MAIL FROM:<a@nologin.example>").last == "550 5.7.1 log in first"
    assert c.cmd(plain("alice@client.example")).code == 235
    c.expect("MAIL FROM:<ALICE@Client.Example>", "250 2.1.0")
    c.expect("RSET", "250")
    assert c.cmd("MAIL FROM:<mallory@client.example>").last == \
        "550 5.7.1 alice@client.example is not mallory@client.example"
    c.expect("MAIL FROM:<a@nologin.example>", "550 5.7.1 alice@client.example is not")
    b = client_factory(srv.port)
    b.ehlo()
    assert b.cmd(plain("bob")).code == 235
    assert b.cmd("MAIL FROM:<bob@client.example>").last == "550 5.7.1 bob may not send"
    assert srv.stop() == 0


def test_not_all_any(ringmx, client_factory):
    srv = ringmx({"filters": {"rcpt": [
        {"if": {"all": [{"any": [{"rcpt_domain": "accepted.example"},
                                 {"rcpt_domain": "a.sub.example"}]},
                        {"not": {"sender_domain": "friend.example"}}]},
         "then": {"reject": "550 5.7.1 all-any-not"}},
        # several keys in one object must all hold
        {"if": {"sender_domain": "friend.example", "rcpt": "@b.sub.example"},
         "then": {"reject": "550 5.7.1 both"}},
        {"if": {"not": {"any": [{"rcpt_domain": "b.sub.example"}, {"rcpt_domain": "c.sub.example"},
                                {"rcpt_domain": "accepted.example"}]}},
         "then": {"reject": "550 5.7.1 none of"}}]}})
    c = client_factory(srv.port)
    c.ehlo()
    for sender, rcpt, want in (
            ("a@client.example", "u@accepted.example", "all-any-not"),
            ("a@client.example", "u@a.sub.example", "all-any-not"),
            ("a@client.example", "u@b.sub.example", None),
            ("a@client.example", "u@d.sub.example", "none of"),
            ("a@friend.example", "u@accepted.example", None),
            ("a@friend.example", "u@a.sub.example", "none of"),
            ("a@friend.example", "u@b.sub.example", "both"),
            ("a@client.example", "u@c.sub.example", None)):
        c.expect("MAIL FROM:<%s>" % sender, "250")
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        if want:
            assert r.last == "550 5.7.1 " + want, (sender, rcpt, r)
        else:
            assert r.startswith("250 2.1.5"), (sender, rcpt, r)
        c.expect("RSET", "250")
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# replies, listeners, relay, tables, logs


def test_reply_fields(ringmx, client_factory):
    srv = ringmx({"filters": {"rcpt": [{"if": {"rcpt": "fields@accepted.example"}, "then": {
        "reject": "550 5.7.1 ip=%{client_ip} helo=%{helo} from=%{sender} to=%{rcpt}"
                  " on=%{listener} host=%{hostname} 100% {x}"}}]}})
    c = client_factory(srv.port)
    c.ehlo("fields.client.example")
    c.expect("MAIL FROM:<someone@client.example>", "250")
    r = c.cmd("RCPT TO:<fields@accepted.example>")
    assert r.lines == ["550 5.7.1 ip=127.0.0.1 helo=fields.client.example "
                       "from=someone@client.example to=fields@accepted.example on=mx "
                       "host=%s 100%% {x}" % HOSTNAME], r
    assert srv.stop() == 0
    [e] = rule_events(srv, "filters.rcpt[0]")
    assert e["reply"] == r.last, e


def test_per_listener_chain_replaces_that_stage_only(ringmx, client_factory):
    sub, bare = free_port(), free_port()
    srv = ringmx({"listeners": [
        {"name": "mx", "greet_pause_ms": 0},
        {"name": "sub", "address": "127.0.0.1:%d" % sub, "greet_pause_ms": 0,
         "filters": {"rcpt": [{"if": {"rcpt": "@accepted.example"},
                               "then": {"reject": "550 5.7.1 sub rcpt"}}]}},
        {"name": "bare", "address": "127.0.0.1:%d" % bare, "greet_pause_ms": 0,
         "filters": {"rcpt": []}}],
        "filters": {
            "mail": [{"if": {"sender": "@x.example"}, "then": {"reject": "550 5.7.1 top mail"}}],
            "rcpt": [{"then": {"reject": "550 5.7.1 top rcpt"}}]}})
    want = {srv.port: "550 5.7.1 top rcpt", sub: "550 5.7.1 sub rcpt", bare: None}
    for port, rcpt_want in want.items():
        c = client_factory(port)
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@x.example>").last == "550 5.7.1 top mail", port
        c.expect("MAIL FROM:<a@client.example>", "250")
        r = c.cmd("RCPT TO:<u@accepted.example>")
        assert (r.last == rcpt_want) if rcpt_want else r.startswith("250 2.1.5"), (port, r)
        c.close()
    assert srv.stop() == 0
    assert [e["action"] for e in rule_events(srv, "listeners[1].filters.rcpt[0]")] == ["reject"]
    assert len(rule_events(srv, "filters.rcpt[0]")) == 1
    assert len(rule_events(srv, "filters.mail[0]")) == 3


def test_relay_policy_stays_first(ringmx, client_factory):
    srv = ringmx({"filters": {"rcpt": [
        {"if": {"rcpt_domain": "elsewhere.example"}, "then": {"accept": True}},
        {"then": "accept"}]}})
    c = client_factory(srv.port)
    c.ehlo()
    c.expect("MAIL FROM:<a@client.example>", "250")
    for rcpt in ("u@elsewhere.example", "u@other.example"):
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        assert r.startswith("554 5.7.1") and "Relay access denied" in r.last, r
    c.expect("RCPT TO:<u@accepted.example>", "250 2.1.5")
    assert srv.stop() == 0
    # the refused recipients never reached the chain
    assert rule_events(srv, "filters.rcpt[0]") == []
    assert [e["action"] for e in rule_events(srv, "filters.rcpt[1]")] == ["accept"]


def test_inline_tables(ringmx, conn):
    srv = ringmx({"tables": {
        "far": {"inline": ["192.0.2.0/24", "2001:db8::/32"]},
        "loop": {"inline": ["10.0.0.0/8", "127.0.0.2"]},
        "vips": {"inline": ["boss@accepted.example", "ceo@accepted.example"]},
        "doms": {"inline": ["x.sub.example", "*.y.sub.example"]},
        "unused": {"inline": ["nothing.example"]}},
        "filters": {
            "connect": [{"if": {"client_ip": {"table": "far"}}, "then": "reject"},
                        {"if": {"client_ip": {"table": "loop"}},
                         "then": {"tag": "inloop", "accept": True}}],
            "rcpt": [{"if": {"tag": "inloop", "rcpt": {"table": "vips"}},
                      "then": {"reject": "550 5.7.1 vip from %{client_ip}"}},
                     {"if": {"rcpt_domain": {"table": "doms"}},
                      "then": {"reject": "550 5.7.1 dom"}}]}})
    for src, rcpt, want in (("127.0.0.2", "boss@accepted.example", "vip from 127.0.0.2"),
                            ("127.0.0.2", "CEO@Accepted.Example", "vip from 127.0.0.2"),
                            ("127.0.0.2", "other@accepted.example", None),
                            ("127.0.0.1", "boss@accepted.example", None),
                            ("127.0.0.1", "u@x.sub.example", "dom"),
                            ("127.0.0.1", "u@a.y.sub.example", "dom"),
                            ("127.0.0.1", "u@y.sub.example", None)):
        c = conn(srv.port, src=src, ehlo="client.example")
        c.expect("MAIL FROM:<a@client.example>", "250")
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        assert (r.last == "550 5.7.1 " + want) if want else r.startswith("250 2.1.5"), \
            (src, rcpt, r)
        c.close()
    assert srv.stop() == 0


def test_log_line(ringmx, client_factory):
    srv = ringmx({"filters": {"rcpt": [
        {"if": {"rcpt": "a@accepted.example"}, "then": "next"},
        {"if": {"rcpt": "b@accepted.example"}, "then": {"tempfail": "451 4.7.1 b later"}},
        {"if": {"rcpt": "c@accepted.example"}, "then": {"reject": "550 5.1.1 no c \"quoted\""}}]}})
    c = client_factory(srv.port)
    c.ehlo()
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<a@accepted.example>", "250")
    c.expect("RCPT TO:<z@accepted.example>", "250")
    assert c.cmd("RCPT TO:<b@accepted.example>").code == 451
    assert c.cmd("RCPT TO:<c@accepted.example>").code == 550
    assert srv.stop() == 0
    got = [e for e in events(srv) if e["action"] != "next"]
    for e in got:
        keys = list(e)
        assert keys[:3] == ["ts", "level", "event"], e
        assert keys.index("client") < keys.index("stage") < keys.index("rule") < \
            keys.index("action"), "fields out of the documented order: %r" % keys
    want = [("filters.rcpt[1]", "tempfail", "451 4.7.1 b later"),
            ("filters.rcpt[2]", "reject", '550 5.1.1 no c "quoted"')]
    assert [(e["rule"], e["action"], e["reply"]) for e in got] == want, got
    assert all(e["client"] == "127.0.0.1" and e["stage"] == "rcpt" for e in got), got
