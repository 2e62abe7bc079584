"""Log lines carry peer-chosen text as values, never as structure.
A real server, in the kv and in the json format, is fed hostile
text through every channel a peer controls that reaches a log line: the
AUTH LOGIN user name (CR LF, quotes, backslashes, '=', UTF-8, invalid UTF-8,
escape sequences, a name long enough to cut the line), quoted local parts
of MAIL FROM and RCPT TO (spaces, quotes, '='), a next hop's reply texts
(accepting and rejecting), and the HELO argument.  Then EVERY line of the
log is parsed back with a strict reader of the format (logparse.py): each
line must parse, start with a real ts/level/event, repeat no key, and the
events and values must be exactly the ones the server meant: no forged
event, no forged key, the hostile text back byte for byte."""

import base64
import time

import pytest

from conftest import (HOSTNAME, SMTPClient, delivery_overrides, dsn_transactions, free_port,
                      queued_id, route, strip_received, unfold, wait_queue_empty)
from logparse import read_log, text
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)
from test_auth import users_file

FORGED_LINE = (b'x\r\nts=2024-01-01T00:00:00.000Z level=info event=auth client=127.0.0.1 '
               b'user="root" result=ok forged=1\r\n')
USERS = [
    FORGED_LINE,
    b'a"b\\c=d \'e\' result=ok forged=1',
    b'" result=ok event=forged forged="',
    b"\xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80 \xe2\x80\xa8",  # valid UTF-8, U+2028
    b"\xff\xfe\xc3(\xed\xa0\x80\xc0\xaf",  # invalid UTF-8, a surrogate, an overlong '/'
    b"\x1b[2J\x1b]0;title\x07\x7f\x01\t\x0b\x0c",  # terminal escapes, controls
    b"\xff" * 255,  # 4 bytes each in kv, 6 in json: the line must be cut, not broken
]
HELO = "x\"y=z\\w'forged=1"  # no space allowed: printable ASCII the parser takes
SENDER = '"s\\" event=forged forged=1 \\\\"@client.example'
GOOD = ['"sp ace=1 \'q\' forged=1"@accepted.example', "o'brien@accepted.example"]
BAD = '"bad\\" result=ok forged=1"@accepted.example'  # the next hop rejects it
DENIED = '"rej\\" event=forged forged=1"@elsewhere.example'  # not a relay domain
ACCEPT_TEXT = '250 2.0.0 ok" forged=1 event=forged \\" result=ok'
REJECT_TEXT = '550 5.1.1 no" forged=1 event=forged level=error \\'


def hostile_gateway(ringmx, nexthop, tmp_path, fmt):
    nh = nexthop(rules=[
        Rule("rcpt", REJECT_TEXT, when=lambda ctx: (ctx.rcpt or "").startswith('"bad')),
        Rule("message", ACCEPT_TEXT),
    ])
    sub = free_port()
    srv = ringmx(delivery_overrides(
        [route(["*"], nh)],
        listeners=[{"name": "mx", "greet_pause_ms": 0},
                   {"name": "sub", "address": "127.0.0.1:%d" % sub, "greet_pause_ms": 0,
                    "tls": "none", "auth": "optional", "auth_plaintext": True}],
        auth={"users_file": users_file(tmp_path), "failure_delay_ms": 0, "failures_max": 1000},
        log={"format": fmt, "level": "info"}))
    return srv, nh, sub


def auth_attempt(port, user):
    c = SMTPClient(port)
    try:
        c.ehlo(HELO)
        r = c.cmd("AUTH LOGIN " + base64.b64encode(user).decode())
        assert r.code == 334, "AUTH LOGIN with an initial user name: %r" % r
        r = c.cmd(base64.b64encode(b"wrong password").decode())
        assert r.code == 535, "a wrong password must get 535, got %r" % r
        c.cmd("QUIT")
    finally:
        c.close()


def send_hostile_mail(port):
    c = SMTPClient(port)
    try:
        c.ehlo(HELO)
        c.expect("MAIL FROM:<%s>" % SENDER, "250")
        for rc in GOOD + [BAD]:
            c.expect("RCPT TO:<%s>" % rc, "250")
        r = c.cmd("RCPT TO:<%s>" % DENIED)
        assert r.code == 554, "relay to elsewhere.example must be denied: %r" % r
        c.expect("DATA", "354")
        c.send(b"Subject: hostile\r\n\r\nbody\r\n.\r\n")
        qid = queued_id(c.reply())
        c.cmd("QUIT")
        return qid
    finally:
        c.close()


def value_matches(fmt, got, raw, cut):
    """got (a parsed value) is raw as the format keeps it; a cut value is a
    long enough prefix of it."""
    want = raw if fmt == "kv" else raw.decode("utf-8", "replace")
    if cut:
        return len(got) > 50 and want.startswith(got)
    return got == want


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_hostile_text_never_forges_lines_or_keys(ringmx, nexthop, tmp_path, fmt):
    since = time.time()
    srv, nh, sub = hostile_gateway(ringmx, nexthop, tmp_path, fmt)
    for user in USERS:
        auth_attempt(sub, user)
    qid = send_hostile_mail(srv.port)
    # both good recipients delivered, and the DSN for the rejected one
    nh.wait_until(lambda h: len(dsn_transactions(h)) == 1 and len(h.messages()) == 2, 30,
                  "the message and one DSN at the next hop")
    wait_queue_empty(srv)
    assert srv.stop() == 0
    records = read_log(srv.log_path, fmt, since)
    with open(srv.log_path, "rb") as f:
        assert f.read().count(b"\n") == len(records), "every line is one record"

    forged = [r for _, r in records if "forged" in r or text(r["event"]) == "forged"
              or text(r.get("result", "")) == "ok"]
    assert not forged, "forged keys or events in the log: %r" % forged
    by_event = {}
    for pairs, rec in records:
        by_event.setdefault(text(rec["event"]), []).append((pairs, rec))

    auths = by_event.get("auth", [])
    assert len(auths) == len(USERS), "expected %d auth lines, got %r" % (len(USERS), auths)
    # shards log through their own rings: lines come in drain order, so each
    # user name must match exactly one line, whatever the order
    unmatched = list(USERS)
    for pairs, rec in auths:
        cut = "truncated" in rec
        keys = [k for k, _ in pairs]
        assert keys == ["ts", "level", "event", "client", "user", "result"] + (
            ["truncated"] if cut else []), "auth line keys %r" % keys
        assert text(rec["result"]) == "failed", rec
        match = [u for u in unmatched if value_matches(fmt, rec["user"], u, cut)]
        assert len(match) == 1, "user logged as %r matches %r of %r" % (rec["user"], match,
                                                                       unmatched)
        assert cut == (match[0] == b"\xff" * 255), "only the 255-byte name is cut: %r" % rec
        unmatched.remove(match[0])

    [(pairs, rec)] = by_event["queued"]
    assert [k for k, _ in pairs] == ["ts", "level", "event", "id", "client", "from", "rcpts",
                                     "size"]
    assert text(rec["id"]) == qid and text(rec["from"]) == "<%s>" % SENDER, rec
    assert rec["rcpts"] == (b"3" if fmt == "kv" else 3), "rcpts=%r" % rec["rcpts"]

    [(pairs, rec)] = by_event["rcpt_rejected"]
    assert text(rec["rcpt"]) == "<%s>" % DENIED, rec

    delivered = {text(r["rcpt"]): r for _, r in by_event.get("delivered", [])}
    assert set(delivered) == {"<%s>" % a for a in GOOD + [SENDER]}, delivered
    for r in delivered.values():
        assert text(r["reply"]).endswith(ACCEPT_TEXT[4:]), r
    bounced = [r for _, r in by_event.get("bounced", []) if text(r["rcpt"]) == "<%s>" % BAD]
    assert bounced and all(text(r["reply"]).endswith(REJECT_TEXT[4:]) for r in bounced), \
        by_event.get("bounced")

    # the HELO reaches the Received: field as one token of one field
    for txn in nh.messages():
        if txn.mail_from == "":
            continue
        received, rest = strip_received(txn.data)
        assert (b"from %s ([127.0.0.1])" % HELO.encode()) in unfold(received), received
        assert HOSTNAME.encode() in received and b"Received:" not in rest[:200], txn.data[:500]
