"""The filters' message actions (issue 11) against the real binary, but
quarantine (in test_filter_quarantine.py): route (every recipient by a
named route, one that may have no domains), bcc (an archive
recipient with NOTIFY=NEVER, never added twice), rewrite_sender (the
envelope sender by a table, at the next hop and in a Maildir's
Return-Path; never the null sender), sender.matches_login through a table,
"the last rule that says wins" across the mail, rcpt and data stages, and
the actions a refused recipient or MAIL takes back.  These actions change
where a message goes and who it claims to be from: a route or copy must
reach exactly the messages its rule chose, and a rewrite must hit exactly
the senders the table names."""

import json
import mailbox
import os
import re
import subprocess

from conftest import (DELIVERY_TIMEOUT_S, HOSTNAME, RINGMX_BIN, check_dsn, delivery_overrides,
                      log_events, queued_id, route, wait_dsn, wait_for, wait_log,
                      wait_queue_empty)
from conftest import new_mid
from nexthop import Rule, nexthop  # noqa: F401  (fixture)
from test_filter_data import LOCAL, MANY_ERRORS, SENDER, msg, transact
from test_filters import plain, users_over
from test_local_delivery import maildir_keys

RCPT = "rcpt@accepted.example"


def marked(tag, headers=()):
    """A message with a unique Message-ID: (its id with <>, the bytes)."""
    mid = new_mid(tag)
    return "<%s>" % mid, msg(["Message-ID: <%s>" % mid, "Subject: " + tag] + list(headers))


def send_one(srv, client_factory, body, sender=SENDER, rcpts=(RCPT,), login=None):
    c = client_factory(srv.port)
    c.ehlo()
    if login:
        assert c.cmd(plain(login)).code == 235
    qid = queued_id(transact(c, body, sender=sender, rcpts=rcpts))
    c.cmd("QUIT")
    return qid


def check_config(tmp_path, over):
    """ringmx --check-config on a minimal config plus over: (exit code, output)."""
    cfg = {"hostname": HOSTNAME, "listeners": [{"name": "mx", "address": "127.0.0.1:2525"}],
           "relay": {"domains": ["accepted.example"]}, "spool": {"path": str(tmp_path / "s")}}
    cfg.update(over)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    r = subprocess.run([RINGMX_BIN, "--check-config", str(path)], capture_output=True, timeout=30)
    return r.returncode, (r.stdout + r.stderr).decode()


# --------------------------------------------------------------------------
# route


def test_route_by_name(ringmx, nexthop, client_factory):
    normal, special = nexthop(), nexthop()
    srv = ringmx(delivery_overrides(
        [{"name": "special", "to": special.url}, route("accepted.example", normal)],
        filters={"mail": [{"if": {"sender": "vip@client.example"}, "then": {"route": "special"}}],
                 "data": [{"if": {"header": {"name": "X-Route"}}, "then": {"route": "special"}}]}))
    m1, b1 = marked("vip")
    m2, b2 = marked("plain")
    m3, b3 = marked("hdr", ["X-Route: 1"])
    send_one(srv, client_factory, b1, sender="vip@client.example",
             rcpts=[RCPT, "other@accepted.example"])
    send_one(srv, client_factory, b2)
    send_one(srv, client_factory, b3)
    [t1] = special.wait_message_id(m1, DELIVERY_TIMEOUT_S)
    assert sorted(r.lower() for r in t1.rcpts) == ["other@accepted.example", RCPT], t1
    special.wait_message_id(m3, DELIVERY_TIMEOUT_S)
    normal.wait_message_id(m2, DELIVERY_TIMEOUT_S)
    wait_queue_empty(srv)
    assert normal.by_message_id(m1) == [] and normal.by_message_id(m3) == []
    assert special.by_message_id(m2) == [], "a named route without domains took domain mail"
    assert srv.stop() == 0


def test_route_last_rule_wins(ringmx, nexthop, client_factory):
    a, b, normal = nexthop(), nexthop(), nexthop()
    srv = ringmx(delivery_overrides(
        [{"name": "ra", "to": a.url}, {"name": "rb", "to": b.url},
         route("accepted.example", normal)],
        filters={"mail": [{"then": {"route": "ra"}}],
                 "data": [{"if": {"header": {"name": "X-B"}}, "then": {"route": "rb"}}]}))
    ma, ba = marked("a")
    mb, bb = marked("b", ["X-B: 1"])
    send_one(srv, client_factory, ba)
    send_one(srv, client_factory, bb)
    a.wait_message_id(ma, DELIVERY_TIMEOUT_S)
    b.wait_message_id(mb, DELIVERY_TIMEOUT_S)
    wait_queue_empty(srv)
    assert a.by_message_id(mb) == [] and normal.message_count == 0
    assert srv.stop() == 0


def test_unknown_route_name_is_a_load_error(tmp_path):
    rc, out = check_config(tmp_path, {
        "routes": [{"name": "known", "to": "smtp://127.0.0.1:2526"}],
        "filters": {"mail": [{"then": {"route": "known"}},
                             {"if": {"sender": "a@b.example"}, "route": "unknwn"}]}})
    assert rc == 1, out
    assert re.search(r"(?m)^filters\.mail\[1\]\.route: ", out), out
    rc, out = check_config(tmp_path, {
        "routes": [{"name": "known", "to": "smtp://127.0.0.1:2526"}],
        "filters": {"data": [{"then": {"route": "known"}}]}})
    assert rc == 0, out


# --------------------------------------------------------------------------
# bcc


def test_bcc_adds_an_archive_once(ringmx, nexthop, client_factory):
    nh = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], filters={
        "rcpt": [{"if": {"rcpt": "watched@accepted.example"},
                  "then": {"bcc": "archive@accepted.example"}}]}))
    m1, b1 = marked("bcc")
    m2, b2 = marked("already")
    m3, b3 = marked("none")
    send_one(srv, client_factory, b1, rcpts=["watched@accepted.example"])
    send_one(srv, client_factory, b2, rcpts=["ARCHIVE@accepted.example",
                                             "watched@accepted.example"])
    send_one(srv, client_factory, b3)
    [t1] = nh.wait_message_id(m1, DELIVERY_TIMEOUT_S)
    [t2] = nh.wait_message_id(m2, DELIVERY_TIMEOUT_S)
    [t3] = nh.wait_message_id(m3, DELIVERY_TIMEOUT_S)
    assert sorted(r.lower() for r in t1.rcpts) == ["archive@accepted.example",
                                                   "watched@accepted.example"], t1
    arch = [p for r, p in t1.rcpt_params.items() if r.lower() == "archive@accepted.example"]
    assert arch and arch[0].get("NOTIFY") == "NEVER", t1.rcpt_params
    assert sorted(r.lower() for r in t2.rcpts) == ["archive@accepted.example",
                                                   "watched@accepted.example"], \
        "the archive was added twice: %r" % t2
    assert [r.lower() for r in t3.rcpts] == [RCPT]
    wait_queue_empty(srv)
    assert srv.stop() == 0


def test_bcc_gets_no_dsn(ringmx, nexthop, client_factory):
    """The archive copy fails for good next to a real recipient: the sender's
    DSN names the real one only."""
    nh = nexthop(rules=[Rule("rcpt", "550 5.1.1 no archive", rcpt="archive@accepted.example"),
                        Rule("rcpt", "550 5.1.1 no such user", rcpt="gone@accepted.example")])
    bounce = nexthop()
    srv = ringmx(delivery_overrides(
        [route("accepted.example", nh), route("sender.example", bounce)],
        filters={"data": [{"then": {"bcc": "archive@accepted.example"}}]}))
    _, b = marked("dsn")
    qid = send_one(srv, client_factory, b, sender="s@sender.example",
                   rcpts=["gone@accepted.example"])
    [t] = wait_dsn(bounce, "s@sender.example")
    d = check_dsn(t, "s@sender.example")
    assert d.final_recipients() == ["gone@accepted.example"], d.final_recipients()
    wait_queue_empty(srv)
    queued = log_events(srv, "bounce_queued", qid)
    assert len(queued) == 1 and re.search(r"\brcpts=1\b", queued[0]), queued
    assert srv.stop() == 0


def test_bad_bcc_is_a_load_error(tmp_path):
    rc, out = check_config(tmp_path, {"filters": {"rcpt": [{"then": {"bcc": "not an address"}}]}})
    assert rc == 1 and re.search(r"(?m)^filters\.rcpt\[0\]\.then\.bcc: ", out), out


# --------------------------------------------------------------------------
# rewrite_sender


REWRITE = {"tables": {"rw": {"inline": {"old@client.example": "new@client.example",
                                        "@legacy.example": "@modern.example"}}},
           "filters": {"mail": [{"then": {"rewrite_sender": {"table": "rw"}}}]}}


def test_rewrite_sender_at_the_next_hop(ringmx, nexthop, client_factory):
    nh = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], **REWRITE))
    cases = [("old@client.example", "new@client.example"),
             ("OLD@client.example", "new@client.example"),
             ("bob@legacy.example", "bob@modern.example"),
             ("Eve@LEGACY.Example", "Eve@modern.example"),
             ("other@client.example", "other@client.example"),
             ("", "")]
    mids = []
    for sender, _ in cases:
        m, b = marked("rw")
        mids.append(m)
        send_one(srv, client_factory, b, sender=sender)
    for (sender, want), m in zip(cases, mids):
        [t] = nh.wait_message_id(m, DELIVERY_TIMEOUT_S)
        assert t.mail_from.lower() == want.lower(), "%r -> %r, expected %r" % (
            sender, t.mail_from, want)
    wait_queue_empty(srv)
    rewritten = log_events(srv, "sender_rewritten")
    assert len(rewritten) == 4, rewritten
    assert any("to=<bob@modern.example>" in ln for ln in rewritten), rewritten
    assert srv.stop() == 0


def test_rewrite_sender_in_a_maildir(ringmx, client_factory, tmp_path):
    base = str(tmp_path / "md")
    os.makedirs(base)
    srv = ringmx(delivery_overrides([route("local.example", "maildir:" + base)],
                                    ["local.example"], **REWRITE))
    send_one(srv, client_factory, msg(["Subject: rw"]), sender="carl@legacy.example",
             rcpts=[LOCAL])
    path = os.path.join(base, "local.example", "alice")
    wait_for(lambda: maildir_keys(path), DELIVERY_TIMEOUT_S, "a message in %s" % path)
    md = mailbox.Maildir(path, factory=None, create=False)
    [k] = md.keys()
    raw = md.get_bytes(k)
    assert raw.split(b"\n")[0] == b"Return-Path: <carl@modern.example>", raw[:200]
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# sender.matches_login with a table


def test_matches_login_through_a_table(ringmx, client_factory, tmp_path):
    over = users_over(tmp_path, ["carol", "dave", "erin", "frank", "g@client.example"])
    over.update(MANY_ERRORS)
    over["tables"] = {"logins": {"inline": {"shared@client.example": "carol, dave",
                                            "@team.example": "erin frank,carol"}}}
    over["filters"] = {"mail": [
        {"if": {"auth_user": True, "not": {"sender": {"matches_login": {"table": "logins"}}}},
         "then": {"reject": "553 5.7.1 <%{sender}> is not yours, %{auth_user}"}}]}
    srv = ringmx(over)
    cases = [("carol", "shared@client.example", True), ("dave", "SHARED@client.example", True),
             ("frank", "shared@client.example", False), ("erin", "x@team.example", True),
             ("frank", "y@team.example", True), ("dave", "z@team.example", False),
             ("g@client.example", "g@client.example", True),
             ("g@client.example", "shared@client.example", False),
             ("carol", "carol@client.example", False), (None, "shared@client.example", True)]
    for login, sender, ok in cases:
        c = client_factory(srv.port)
        c.ehlo()
        if login:
            assert c.cmd(plain(login)).code == 235
        r = c.cmd("MAIL FROM:<%s>" % sender)
        if ok:
            assert r.code == 250, (login, sender, r)
        else:
            assert r.last == "553 5.7.1 <%s> is not yours, %s" % (sender, login), (login, sender, r)
        c.close()
    assert srv.stop() == 0


def test_rewritten_sender_gets_the_bounce(ringmx, nexthop, client_factory):
    nh = nexthop(rules=[Rule("rcpt", "550 5.1.1 no such user", rcpt="gone@accepted.example")])
    bounce = nexthop()
    srv = ringmx(delivery_overrides(
        [route("accepted.example", nh), route("sender.example", bounce)],
        tables={"rw": {"inline": {"@legacy.example": "@sender.example"}}},
        filters={"rcpt": [{"then": {"rewrite_sender": {"table": "rw"}}}]}))
    _, b = marked("rwdsn")
    send_one(srv, client_factory, b, sender="carl@legacy.example",
             rcpts=["gone@accepted.example"])
    [t] = wait_dsn(bounce, "carl@sender.example")
    d = check_dsn(t, "carl@sender.example")
    assert d.final_recipients() == ["gone@accepted.example"]
    wait_queue_empty(srv)
    assert srv.stop() == 0


def test_refused_recipient_takes_back_its_actions(ringmx, nexthop, client_factory):
    """doc/filters.md: a recipient refused by a later rule takes back the
    message actions its own rules set; its tags stay."""
    nh, special = nexthop(), nexthop()
    srv = ringmx(delivery_overrides(
        [{"name": "special", "to": special.url}, route("accepted.example", nh)],
        filters={"rcpt": [
            {"if": {"rcpt": "x@accepted.example"},
             "then": {"bcc": "archive@accepted.example", "route": "special", "tag": "had_x"}},
            {"if": {"rcpt": "x@accepted.example"}, "then": "reject"}],
            "data": [{"if": {"tag": "had_x", "header": {"name": "X-Check"}},
                      "then": {"add_header": {"name": "X-Had-X", "value": "yes"}}}]}))
    m1, b1 = marked("takeback", ["X-Check: 1"])
    c = client_factory(srv.port)
    c.ehlo()
    c.expect("MAIL FROM:<%s>" % SENDER, "250")
    c.expect("RCPT TO:<%s>" % RCPT, "250")
    c.expect("RCPT TO:<x@accepted.example>", "550")
    c.expect("DATA", "354")
    c.send(b1 + b".\r\n")
    queued_id(c.reply())
    [t] = nh.wait_message_id(m1, DELIVERY_TIMEOUT_S)
    assert [r.lower() for r in t.rcpts] == [RCPT], "a refused recipient's bcc stayed: %r" % t
    assert t.header("X-Had-X") == "yes", "the refused recipient's tag was dropped too"
    wait_queue_empty(srv)
    assert special.message_count == 0, "a refused recipient's route stayed"
    assert srv.stop() == 0


def test_bcc_not_added_past_the_recipient_limit(ringmx, nexthop, client_factory):
    nh = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], limits={"recipients": 2},
                                    filters={"data": [{"bcc": "archive@accepted.example"}]}))
    m1, b1 = marked("full")
    m2, b2 = marked("room")
    q1 = send_one(srv, client_factory, b1, rcpts=["a@accepted.example", "b@accepted.example"])
    send_one(srv, client_factory, b2, rcpts=["a@accepted.example"])
    [t1] = nh.wait_message_id(m1, DELIVERY_TIMEOUT_S)
    [t2] = nh.wait_message_id(m2, DELIVERY_TIMEOUT_S)
    assert sorted(r.lower() for r in t1.rcpts) == ["a@accepted.example", "b@accepted.example"]
    assert sorted(r.lower() for r in t2.rcpts) == ["a@accepted.example",
                                                   "archive@accepted.example"]
    wait_log(srv, "bcc_not_added", q1)
    assert srv.stop() == 0


def test_rules_see_the_sender_as_written(ringmx, nexthop, client_factory):
    """The rewrite happens at commit: later rules see the sender the client wrote."""
    nh = nexthop()
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], **{
        "tables": REWRITE["tables"],
        "filters": {"mail": REWRITE["filters"]["mail"],
                    "rcpt": [{"if": {"sender": "new@client.example"},
                              "then": {"reject": "550 5.7.1 saw the new sender"}}],
                    "data": [{"if": {"sender": "old@client.example"},
                              "then": {"add_header": {"name": "X-Seen", "value": "%{sender}"}}}]}}))
    m, b = marked("asis")
    send_one(srv, client_factory, b, sender="old@client.example")
    [t] = nh.wait_message_id(m, DELIVERY_TIMEOUT_S)
    assert t.mail_from == "new@client.example"
    assert t.header("X-Seen") == "old@client.example", t.header("X-Seen")
    assert srv.stop() == 0


def test_refused_mail_leaves_no_message_action(ringmx, nexthop, client_factory):
    """A MAIL refused by a later rule starts no transaction: the bcc, route
    and rewrite its earlier rules set must not reach the next transaction."""
    nh, special = nexthop(), nexthop()
    srv = ringmx(delivery_overrides(
        [{"name": "special", "to": special.url}, route("accepted.example", nh)],
        tables={"rw": {"inline": {"@client.example": "@rewritten.example"}}},
        filters={"mail": [
            {"if": {"sender": "bad@client.example"},
             "then": {"bcc": "archive@accepted.example", "route": "special",
                      "rewrite_sender": {"table": "rw"}}},
            {"if": {"sender": "bad@client.example"}, "then": "reject"}]}))
    m, b = marked("clean")
    c = client_factory(srv.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<bad@client.example>").code == 550
    queued_id(transact(c, b, sender="good@client.example"))
    [t] = nh.wait_message_id(m, DELIVERY_TIMEOUT_S)
    assert [r.lower() for r in t.rcpts] == [RCPT], "a refused MAIL's bcc stayed: %r" % t
    assert t.mail_from == "good@client.example", "a refused MAIL's rewrite stayed: %r" % t
    wait_queue_empty(srv)
    assert special.message_count == 0, "a refused MAIL's route stayed"
    assert srv.stop() == 0


def test_bcc_outside_the_relay_domains(ringmx, nexthop, client_factory):
    """The config chose the bcc address, not the client: the relay policy
    does not apply to it (doc/filters.md), while a client naming the same
    address is refused."""
    nh, arch = nexthop(), nexthop()
    srv = ringmx(delivery_overrides(
        [route("accepted.example", nh), route("archive.example", arch)],
        filters={"data": [{"bcc": "copy@archive.example"}]}))
    m, b = marked("outside")
    c = client_factory(srv.port)
    c.ehlo()
    c.expect("MAIL FROM:<%s>" % SENDER, "250")
    c.expect("RCPT TO:<copy@archive.example>", "554")
    c.cmd("RSET")
    queued_id(transact(c, b))
    [t] = arch.wait_message_id(m, DELIVERY_TIMEOUT_S)
    assert [r.lower() for r in t.rcpts] == ["copy@archive.example"], t
    nh.wait_message_id(m, DELIVERY_TIMEOUT_S)
    wait_queue_empty(srv)
    assert srv.stop() == 0
