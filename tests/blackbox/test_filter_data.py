"""The data stage of the filter chains (issue 11) against the real binary:
the matchers known after the end of data (header by name, by unfolded
value, by equality; body regex over the first 64 KiB with the DATA stuffing
taken off; the real size; the number of accepted recipients), every action
there (a disconnect refuses the message and closes), add_header with its
%{fields} as delivered (after our Received:, before the client's header, in
a Maildir, at an SMTP next hop whose SIZE= counts it, in `queue show`), and
the submission rules for authenticated sessions (Message-ID, Date,
received_hide_client).  A data chain decides whether a whole message is
accepted; what an admin writes must be what is refused, and a delivered
message must carry exactly the fields the chain added.  Hostile input is in
test_filter_data_attack.py."""

import json
import mailbox
import os
import re
import subprocess

import pytest

from conftest import (DELIVERY_TIMEOUT_S, HOSTNAME, RINGMX_BIN, delivery_overrides, dot_stuff,
                      queued_id, route, strip_received, submit, wait_for, wait_queue_empty)
from conftest import new_mid
from nexthop import nexthop  # noqa: F401  (fixture)
from test_filters import events, plain, users_over
from test_local_delivery import maildir_keys

SENDER = "sender@client.example"
RCPT = "rcpt@accepted.example"
LOCAL = "alice@local.example"
SLOW = {"retry_s": [3600], "max_age_s": 86400}


# --------------------------------------------------------------------------
# helpers (test_filter_data_attack.py and test_filter_actions.py import them)


def msg(headers, body=b"hello\r\n"):
    """A CRLF message: header lines (bytes or str, without CRLF), blank line, body."""
    head = b"".join((h.encode() if isinstance(h, str) else h) + b"\r\n" for h in headers)
    return head + b"\r\n" + (body.encode() if isinstance(body, str) else body)


def transact(c, body, sender=SENDER, rcpts=(RCPT,), bdat=False, mail_params=""):
    """One transaction on an open session (EHLO done): the reply after the data.
    body is the message as the client means it (CRLF lines, not stuffed)."""
    c.expect("MAIL FROM:<%s>%s" % (sender, mail_params), "250")
    for r in rcpts:
        c.expect("RCPT TO:<%s>" % r, "250")
    if bdat:
        c.send(b"BDAT %d LAST\r\n" % len(body) + body)
    else:
        c.expect("DATA", "354")
        c.send(dot_stuff(body) + b".\r\n")
    return c.reply()


def rejects(texts):
    """A data chain: one rule per (cond, text), each rejecting with 550 5.7.1 text."""
    return [{"if": cond, "then": {"reject": "550 5.7.1 " + text}} for cond, text in texts]


# Many refusals in one session: past limits.errors (10) it would be dropped.
MANY_ERRORS = {"limits": {"errors": 1000, "soft_errors": 1000}}


def judge(srv, client_factory, cases, bdat=False):
    """Each (message, expected) in one session: expected is a reject text or
    None (queued).  Returns the queue IDs of the accepted ones."""
    c = client_factory(srv.port, timeout=30)
    c.ehlo()
    qids = []
    for i, (body, want) in enumerate(cases):
        r = transact(c, body, bdat=bdat)
        if want is None:
            qids.append(queued_id(r))
        else:
            assert r.last == "550 5.7.1 " + want, "case %d (%r...): %r" % (i, body[:60], r)
    c.cmd("QUIT")
    return qids


def field_lines(raw):
    """The header fields of a message (CRLF or LF), each unfolded, in order."""
    raw = raw.replace(b"\r\n", b"\n")
    head = raw.split(b"\n\n", 1)[0]
    out = []
    for ln in head.split(b"\n"):
        if ln[:1] in (b" ", b"\t") and out:
            out[-1] += b" " + ln.strip()
        else:
            out.append(ln)
    return out


ADD_ALL = {"name": "X-Filter",
           "value": "ip=%{client_ip} helo=%{helo} from=%{sender} l=%{listener} "
                    "u=%{auth_user} h=%{hostname} q=%{qid}"}


def add_header_chain(extra=None):
    return [{"then": {"add_header": [ADD_ALL, {"name": "X-Second", "value": "two"}]}}] + (
        extra or [])


def check_added(fields, qid, auth_user=""):
    """fields (field_lines) start with our Received:, then the two added ones."""
    assert fields[0].startswith(b"Received: from client.example"), fields[:3]
    assert b"id " + qid.encode() in fields[0], fields[0]
    want = ("X-Filter: ip=127.0.0.1 helo=client.example from=%s l=mx u=%s h=%s q=%s"
            % (SENDER, auth_user, HOSTNAME, qid)).encode()
    assert fields[1] == want, "first added field %r, expected %r" % (fields[1], want)
    assert fields[2] == b"X-Second: two", fields[2]


# --------------------------------------------------------------------------
# matchers


def test_header_matchers(ringmx, client_factory):
    srv = ringmx({**MANY_ERRORS, "filters": {"data": rejects([
        ({"header": {"name": "x-exists"}}, "exists"),
        ({"header": {"name": "Subject", "regex": "^folded subject here$"}}, "folded"),
        ({"header": {"name": "X-Trim", "regex": "^core$"}}, "trimmed"),
        ({"header": {"name": "X-Value", "value": ["Alpha", "beta"]}}, "value-list"),
        ({"header": {"name": "x-single", "value": "One Two"}}, "value-one"),
        ({"header": {"name": "X-Case", "regex": "^lower$"}}, "case-sensitive"),
    ])}})
    cases = [
        (msg(["X-EXISTS: whatever"]), "exists"),
        (msg(["X-Exists:"]), "exists"),  # an empty field is still a field of that name
        (msg(["X-Exists-Not: 1", "X-Exist: 2"]), None),
        (msg(["Subject: none"], "X-Exists: only in the body\r\n"), None),
        (msg(["Subject: folded", " subject", " here"]), "folded"),
        (msg(["Subject: folded subject here and more"]), None),
        (msg(["X-Trim: \t  core \t "]), "trimmed"),
        (msg(["X-Trim: co", " re"]), None),  # unfolded: "co re"
        (msg(["X-Value: BETA"]), "value-list"),
        (msg(["X-Value: alpha"]), "value-list"),
        (msg(["X-Value: alpha beta"]), None),  # equality, not a substring
        (msg(["X-Value: gamma", "X-Other: beta"]), None),
        (msg(["X-Value: gamma", "x-value: Beta"]), "value-list"),  # any field of the name
        (msg(["X-Single: one two"]), "value-one"),
        (msg(["X-Case: LOWER"]), None),  # a regex is case-sensitive without (?i)
        (msg(["X-Case: lower"]), "case-sensitive"),
        (msg(["Subject: plain"]), None),
    ]
    qids = judge(srv, client_factory, cases)
    assert len(qids) == sum(1 for _, w in cases if w is None)
    assert srv.stop() == 0
    data = [e for e in events(srv) if e.get("stage") == "data"]
    assert len(data) == sum(1 for _, w in cases if w), data
    assert all(e["action"] == "reject" and e["client"] == "127.0.0.1" for e in data), data


def test_our_received_is_not_seen(ringmx, client_factory):
    srv = ringmx({**MANY_ERRORS, "filters": {"data": rejects([
        ({"header": {"name": "Received"}}, "received"),
        ({"header": {"name": "Subject", "regex": "ringmx|gw\\.test"}}, "ours"),
    ])}})
    judge(srv, client_factory, [
        (msg(["Subject: plain"]), None),
        (msg(["Received: from elsewhere by mx.example; Mon, 7 Dec 2026 00:00:00 +0000",
              "Subject: x"]), "received"),
    ])
    assert srv.stop() == 0


def test_body_regex(ringmx, client_factory):
    filler = b"".join(b"%05d filler line to pass the mark ............................\r\n" % i
                      for i in range(1200))  # about 84 KiB
    assert len(filler) > 70000
    srv = ringmx({**MANY_ERRORS, "filters": {"data": rejects([
        ({"body": {"regex": "(?m)^\\.\\r$"}}, "lone-dot"),
        ({"body": {"regex": "(?m)^\\.\\.x"}}, "stuffing-seen"),
        ({"body": {"regex": "header-only-word"}}, "header-seen"),
        ({"body": {"regex": "body-word"}}, "body-word"),
        ({"body": {"regex": "(?i)^CASE"}}, "case"),
    ])}})
    judge(srv, client_factory, [
        (msg(["Subject: a"], b"first\r\n.\r\nlast\r\n"), "lone-dot"),  # ".." on the wire
        (msg(["Subject: a"], b"..x\r\n.y\r\n"), "stuffing-seen"),  # "...x" on the wire
        (msg(["Subject: a"], b".x\r\n"), None),  # "..x" on the wire, ".x" in the message
        (msg(["X-H: header-only-word"], b"nothing\r\n"), None),
        (msg(["Subject: a"], b"a body-word here\r\n"), "body-word"),
        (msg(["Subject: a"], b"case first\r\n"), "case"),
        (msg(["Subject: a"], filler[:60000] + b"body-word\r\n"), "body-word"),
        # past the first 64 KiB of the message: not seen (the spec's bound)
        (msg(["Subject: a"], filler + b"body-word\r\n"), None),
        (msg(["Subject: a"], b""), None),  # an empty body
    ])
    assert srv.stop() == 0


def test_body_regex_over_bdat_sees_no_stuffing(ringmx, client_factory):
    # BDAT carries the message as it is: a line ".." stays "..".
    srv = ringmx({**MANY_ERRORS, "filters": {"data": rejects([
        ({"body": {"regex": "(?m)^\\.\\.\\r$"}}, "two-dots"),
        ({"body": {"regex": "(?m)^\\.\\r$"}}, "one-dot"),
    ])}})
    judge(srv, client_factory, [
        (msg(["Subject: a"], b"..\r\n"), "two-dots"),
        (msg(["Subject: a"], b".\r\nmore\r\n"), "one-dot"),
        (msg(["Subject: a"], b"none\r\n"), None),
    ], bdat=True)
    assert srv.stop() == 0


def test_size_is_the_real_size(ringmx, client_factory):
    body = msg(["Subject: size"], b".dot\r\n..two\r\n" + b"x" * 200 + b"\r\n")
    n = len(body)
    assert len(dot_stuff(body)) > n
    srv = ringmx({**MANY_ERRORS, "filters": {"data": rejects([
        ({"size": n}, "exact"),
        ({"size": {"gt": n + 100, "lt": n + 200}}, "range"),
    ])}})
    c = client_factory(srv.port)
    c.ehlo()
    # the DATA stuffing is not counted, nor the declared SIZE=
    assert transact(c, body, mail_params=" SIZE=%d" % (n * 10)).last == "550 5.7.1 exact"
    assert transact(c, body, bdat=True).last == "550 5.7.1 exact"
    assert transact(c, body + b"a\r\n").code == 250
    assert transact(c, body + b"y" * 148 + b"\r\n", bdat=True).last == "550 5.7.1 range"
    assert transact(c, body + b"y" * 148 + b"\r\n").last == "550 5.7.1 range"
    assert srv.stop() == 0


def test_rcpt_count_is_the_accepted_recipients(ringmx, client_factory):
    srv = ringmx({**MANY_ERRORS, "filters": {
        "rcpt": [{"if": {"rcpt": "no@accepted.example"}, "then": "reject"}],
        "data": rejects([
            ({"rcpt_count": 3}, "three"),
            ({"rcpt_count": {"ge": 4}}, "four-plus"),
        ])}})
    c = client_factory(srv.port)
    c.ehlo()
    body = msg(["Subject: n"])
    c.expect("MAIL FROM:<%s>" % SENDER, "250")
    for r in ("a@accepted.example", "b@accepted.example"):
        c.expect("RCPT TO:<%s>" % r, "250")
    c.expect("RCPT TO:<x@elsewhere.example>", "554")  # refused by the relay policy
    c.expect("RCPT TO:<no@accepted.example>", "550")  # refused by a rule
    c.expect("DATA", "354")
    c.send(body + b".\r\n")
    assert c.reply().code == 250
    rc = ["%s@accepted.example" % x for x in "abc"]
    assert transact(c, body, rcpts=rc).last == "550 5.7.1 three"
    assert transact(c, body, rcpts=rc + ["d@accepted.example"]).last == "550 5.7.1 four-plus"
    assert transact(c, body, rcpts=rc, bdat=True).last == "550 5.7.1 three"
    assert srv.stop() == 0


def test_earlier_matchers_known_at_data(ringmx, client_factory, tmp_path):
    over = users_over(tmp_path, ["carol"])
    over["filters"] = {
        "connect": [{"if": {"client_ip": "127.0.0.1"}, "then": {"tag": "local"}}],
        "data": rejects([
            ({"tag": "local", "helo": "one.example", "sender_domain": "client.example",
              "auth_user": "carol", "listener": "mx", "tls": False}, "all-known"),
            ({"sender": "<>"}, "null-sender"),
        ])}
    srv = ringmx(over)
    c = client_factory(srv.port)
    c.ehlo("one.example")
    body = msg(["Subject: x"])
    assert transact(c, body).code == 250  # not authenticated yet
    assert c.cmd(plain("carol")).code == 235
    assert transact(c, body).last == "550 5.7.1 all-known"
    assert transact(c, body, sender="").last == "550 5.7.1 null-sender"
    c.ehlo("two.example")
    assert transact(c, body).code == 250
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# actions


ACT_CHAIN = [
    {"if": {"header": {"name": "X-Act", "value": "next"}}, "then": "next"},
    {"if": {"header": {"name": "X-Act", "value": "accept"}}, "then": "accept"},
    {"if": {"header": {"name": "X-Act", "value": ["accept", "tag"]}}, "then": {"tag": "seen"}},
    {"if": {"tag": "seen"}, "then": {"reject": "550 5.7.1 tagged"}},
    {"if": {"header": {"name": "X-Act", "value": "reject"}}, "then": "reject"},
    {"if": {"header": {"name": "X-Act", "value": "tempfail"}}, "then": "tempfail"},
    {"if": {"header": {"name": "X-Act", "value": "tarpit"}},
     "then": {"tarpit_ms": 400, "reject": "554 5.7.1 slow"}},
    {"if": {"header": {"name": "X-Act", "value": "disconnect"}},
     "then": {"disconnect": "421 4.7.0 bye"}},
    {"if": {"header": {"name": "X-Act", "value": "disconnect-default"}}, "then": "disconnect"},
    {"if": {"header": {"name": "X-Act"}}, "then": {"reject": "550 5.7.1 fell through"}},
]


@pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
def test_actions(ringmx, client_factory, bdat):
    srv = ringmx({**MANY_ERRORS, "filters": {"data": ACT_CHAIN}})
    c = client_factory(srv.port, timeout=30)
    c.ehlo()
    want = [("next", "550 5.7.1 fell through"), ("tag", "550 5.7.1 tagged"),
            ("reject", "550 5.7.1 Rejected by policy"), ("tempfail", "451 4.7.1 Try again later")]
    for act, reply in want:
        assert transact(c, msg(["X-Act: " + act]), bdat=bdat).last == reply, act
        assert c.cmd("NOOP").code == 250, "session not kept after %s" % act
    qid = queued_id(transact(c, msg(["X-Act: accept"]), bdat=bdat))
    c.expect("MAIL FROM:<%s>" % SENDER, "250")
    c.expect("RCPT TO:<%s>" % RCPT, "250")
    body = msg(["X-Act: tarpit"])
    if bdat:
        c.send(b"BDAT %d LAST\r\n" % len(body) + body)
    else:
        c.expect("DATA", "354")
        c.send(body + b".\r\n")
    assert not c.data_available(0.3), "the tarpit did not hold the reply"
    assert c.reply().last == "554 5.7.1 slow"
    assert c.cmd("RSET").code == 250
    for act, reply in (("disconnect", "421 4.7.0 bye"),
                       ("disconnect-default", "421 4.7.0 %s Closing connection" % HOSTNAME)):
        d = client_factory(srv.port)
        d.ehlo()
        assert transact(d, msg(["X-Act: " + act]), bdat=bdat).last == reply
        assert d.replies_until_closed() == [], "more after the disconnect"
    # only the accepted message is queued
    assert set(srv.queue_list()) == {qid}
    assert srv.stop() == 0
    ev = [(e["rule"], e["action"]) for e in events(srv) if e.get("stage") == "data"]
    assert ("filters.data[1]", "accept") in ev
    assert ("filters.data[6]", "reject") in ev and ("filters.data[7]", "disconnect") in ev
    tarpit = [e for e in events(srv) if e.get("rule") == "filters.data[6]"]
    assert tarpit and tarpit[0].get("tarpit_ms") == "400", tarpit


def test_no_data_chain_no_change(ringmx, nexthop):
    """Without a data chain the message goes through byte for byte (our
    Received: first), as before the data stage existed."""
    nh = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh)],
                                    filters={"mail": [{"if": {"sender": "<>"}, "then": "reject"}]}))
    mid = new_mid("plain")
    body = msg(["Message-ID: <%s>" % mid, "Subject: plain"], b".dot\r\nbody\r\n")
    submit(srv.port, body, SENDER, [RCPT])
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    _, rest = strip_received(t.data)
    assert rest == body
    assert t.mail_params.get("SIZE") == str(len(t.data))
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# add_header


def test_add_header_in_a_maildir(ringmx, client_factory, tmp_path):
    base = str(tmp_path / "md")
    os.makedirs(base)
    srv = ringmx(delivery_overrides([route("local.example", "maildir:" + base)],
                                    ["local.example"],
                                    filters={"data": add_header_chain()}))
    body = msg(["Message-ID: <%s>" % new_mid("md"), "Subject: to a maildir"], b"body\r\n")
    c = client_factory(srv.port)
    c.ehlo()
    qid = queued_id(transact(c, body, rcpts=[LOCAL]))
    path = os.path.join(base, "local.example", "alice")
    wait_for(lambda: maildir_keys(path), DELIVERY_TIMEOUT_S, "a message in %s" % path)
    wait_queue_empty(srv)
    md = mailbox.Maildir(path, factory=None, create=False)
    [key] = md.keys()
    raw = md.get_bytes(key)
    lines = raw.split(b"\n")
    assert lines[0] == b"Return-Path: <%s>" % SENDER.encode(), lines[:3]
    assert lines[1].lower() == b"delivered-to: " + LOCAL.encode(), lines[:3]
    fields = field_lines(b"\n".join(lines[2:]))
    check_added(fields, qid)
    rest = b"\n".join(lines[2:]).split(b"X-Second: two\n", 1)[1]
    assert rest == body.replace(b"\r\n", b"\n"), "the client's message changed: %r" % rest
    assert srv.stop() == 0


@pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
def test_add_header_at_an_smtp_next_hop(ringmx, nexthop, client_factory, bdat):
    nh = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh)],
                                    filters={"data": add_header_chain()}))
    mid = new_mid("nh")
    body = msg(["Message-ID: <%s>" % mid, "Subject: relayed"], b".dot\r\nbody\r\n")
    c = client_factory(srv.port)
    c.ehlo()
    qid = queued_id(transact(c, body, bdat=bdat))
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    received, rest = strip_received(t.data)
    assert HOSTNAME.encode() in received
    added = ("X-Filter: ip=127.0.0.1 helo=client.example from=%s l=mx u= h=%s q=%s\r\n"
             "X-Second: two\r\n" % (SENDER, HOSTNAME, qid)).encode()
    assert rest == added + body, "got %r" % rest[:400]
    assert t.mail_params.get("SIZE") == str(len(t.data)), \
        "SIZE=%s but %d octets came" % (t.mail_params.get("SIZE"), len(t.data))
    assert t.mail_from == SENDER
    wait_queue_empty(srv)
    assert srv.stop() == 0


def test_add_header_in_queue_show(ringmx, client_factory, closed_port):
    srv = ringmx(delivery_overrides([route("accepted.example", "smtp://127.0.0.1:%d"
                                           % closed_port())], delivery=SLOW,
                                    filters={"data": add_header_chain()}))
    body = msg(["Subject: shown"], b"body\r\n")
    c = client_factory(srv.port)
    c.ehlo()
    qid = queued_id(transact(c, body))
    env, shown = srv.queue_show(qid)
    assert env, "queue show printed no envelope"
    fields = field_lines(shown)
    check_added(fields, qid)
    assert shown.replace(b"\r\n", b"\n").endswith(body.replace(b"\r\n", b"\n")), shown
    assert srv.stop() == 0


def test_add_header_only_for_an_accepted_message(ringmx, nexthop, client_factory):
    """add_header from a rule that ran, even when a later rule accepts; a
    rule that did not hold adds nothing."""
    nh = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], filters={"data": [
        {"if": {"header": {"name": "X-Spam", "value": "yes"}},
         "then": {"add_header": {"name": "X-Flag", "value": "spam"}}},
        {"if": {"header": {"name": "X-Drop"}}, "then": "reject"},
        {"then": {"add_header": {"name": "X-Always", "value": "%{listener}"}}},
    ]}))
    c = client_factory(srv.port)
    c.ehlo()
    m1, m2 = new_mid("a"), new_mid("b")
    queued_id(transact(c, msg(["Message-ID: <%s>" % m1, "X-Spam: YES"])))
    queued_id(transact(c, msg(["Message-ID: <%s>" % m2, "X-Spam: no"])))
    assert transact(c, msg(["X-Spam: yes", "X-Drop: 1"])).code == 550
    [t1] = nh.wait_message_id(m1, DELIVERY_TIMEOUT_S)
    [t2] = nh.wait_message_id(m2, DELIVERY_TIMEOUT_S)
    f1, f2 = field_lines(t1.data), field_lines(t2.data)
    assert f1[1:3] == [b"X-Flag: spam", b"X-Always: mx"], f1[:4]
    assert f2[1] == b"X-Always: mx" and b"X-Flag: spam" not in f2, f2[:4]
    wait_queue_empty(srv)
    assert srv.stop() == 0


def test_remove_header_refused_at_load(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"hostname": HOSTNAME, "listeners": [
        {"name": "mx", "address": "127.0.0.1:2525"}], "spool": {"path": str(tmp_path / "s")},
        "filters": {"data": [{"remove_header": {"name": "X-Spam"}}]}}))
    r = subprocess.run([RINGMX_BIN, "--check-config", str(path)], capture_output=True, timeout=30)
    out = (r.stdout + r.stderr).decode()
    assert r.returncode == 1, out
    assert re.search(r"(?m)^filters\.data\[0\]\.remove_header: .*not built yet", out), out


def test_per_listener_data_chain(ringmx, client_factory, closed_port):
    """A listener's data chain replaces the top-level one for that listener
    only; its add_header shows in what that listener's messages carry."""
    from conftest import free_port
    sub_port = free_port()
    srv = ringmx(delivery_overrides(
        [route("accepted.example", "smtp://127.0.0.1:%d" % closed_port())], delivery=SLOW,
        filters={"data": [{"if": {"header": {"name": "X-Top"}},
                           "then": {"reject": "550 5.7.1 top chain"}}]},
        listeners=[{"name": "mx", "greet_pause_ms": 0},
                   {"name": "sub", "greet_pause_ms": 0, "address": "127.0.0.1:%d" % sub_port,
                    "filters": {"data": [
                        {"if": {"header": {"name": "X-Sub"}},
                         "then": {"reject": "550 5.7.1 sub chain"}},
                        {"then": {"add_header": {"name": "X-Via", "value": "%{listener}"}}}]}}]))
    c = client_factory(srv.port)
    c.ehlo()
    assert transact(c, msg(["X-Top: 1"])).last == "550 5.7.1 top chain"
    q_mx = queued_id(transact(c, msg(["X-Sub: 1"])))
    d = client_factory(sub_port)
    d.ehlo()
    assert transact(d, msg(["X-Sub: 1"])).last == "550 5.7.1 sub chain"
    q_sub = queued_id(transact(d, msg(["X-Top: 1"])))
    _, s_mx = srv.queue_show(q_mx)
    _, s_sub = srv.queue_show(q_sub)
    assert b"X-Via" not in s_mx, s_mx[:400]
    f = field_lines(s_sub)
    assert f[0].startswith(b"Received: ") and f[1] == b"X-Via: sub", f[:3]
    assert srv.stop() == 0
    # two sessions, maybe on two shards: their lines come in either order
    paths = sorted(e["rule"] for e in events(srv) if e.get("stage") == "data")
    assert paths == ["filters.data[0]", "listeners[1].filters.data[0]"], paths
