"""Final delivery into Maildir and mbox (routes "maildir:BASE" / "mbox:BASE"),
read back with Python's mailbox module.  Layout: Maildir at
BASE/<domain>/<local>/{tmp,new,cur}, mbox at BASE/<domain>/<local>; each
message gets Return-Path and Delivered-To prepended and LF line ends; mbox
quotes From_ lines (mboxrd).  The spool ends empty."""

import mailbox
import os
import re

from conftest import (DELIVERY_TIMEOUT_S, delivery_overrides, lf, make_message, route, submit,
                      wait_for, wait_log, wait_queue_empty)
from conftest import new_mid
from nexthop import nexthop  # noqa: F401  (nexthop is a fixture)

SENDER = "sender@sender.example"

BODY = (b"Line one.\r\n"
        b".leading dot, stuffed on the wire\r\n"
        b"..two dots\r\n"
        b"\r\n"
        b"trailing space \r\n"
        b"last line\r\n")


def local_server(ringmx, base, kind, domain, extra_routes=(), relay=()):
    os.makedirs(base, exist_ok=True)
    rts = [route(domain, "%s:%s" % (kind, base))] + list(extra_routes)
    return ringmx(delivery_overrides(rts, [domain] + list(relay)))


def maildir_keys(path):
    """Keys of the Maildir at path (empty while it does not exist yet)."""
    if not all(os.path.isdir(os.path.join(path, d)) for d in ("tmp", "new", "cur")):
        return []  # not yet (or only partly) created
    return mailbox.Maildir(path, factory=None, create=False).keys()


def split_local(raw):
    """A locally delivered message (LF lines): ({first two field names: value},
    the Received field, the rest)."""
    lines = raw.split(b"\n")
    top = {}
    for ln in lines[:2]:
        name, _, value = ln.partition(b":")
        top[name.decode().lower()] = value.strip().decode()
    rest = b"\n".join(lines[2:])
    assert rest.startswith(b"Received:"), "no Received field after the two added fields: %r" % (
        raw[:300],)
    pos = 0
    while True:
        eol = rest.index(b"\n", pos)
        pos = eol + 1
        if rest[pos:pos + 1] not in (b" ", b"\t"):
            return top, rest[:pos], rest[pos:]


def test_maildir_two_recipients(ringmx, tmp_path):
    base = str(tmp_path / "maildir")
    srv = local_server(ringmx, base, "maildir", "local.example")
    mid = new_mid("maildir")
    body = make_message(mid, "to a Maildir", BODY, to="alice@local.example")
    rcpts = ["alice@local.example", "bob@local.example"]
    qid = submit(srv.port, body, SENDER, rcpts)
    boxes = {r: os.path.join(base, "local.example", r.split("@")[0]) for r in rcpts}
    for r, path in boxes.items():
        wait_for(lambda: maildir_keys(path), DELIVERY_TIMEOUT_S, "a message in %s" % path)
    wait_queue_empty(srv)
    wait_log(srv, "delivered", qid)
    for r, path in boxes.items():
        for sub in ("tmp", "new", "cur"):
            assert os.path.isdir(os.path.join(path, sub)), "%s/%s missing" % (path, sub)
        md = mailbox.Maildir(path, factory=None, create=False)
        keys = md.keys()
        assert len(keys) == 1, "%s holds %d messages, expected 1" % (path, len(keys))
        assert os.listdir(os.path.join(path, "tmp")) == [], "tmp/ not empty after delivery"
        raw = md.get_bytes(keys[0])
        assert b"\r" not in raw, "CR in a locally delivered message: %r" % raw[:200]
        top, received, rest = split_local(raw)
        assert top.get("return-path") == "<%s>" % SENDER, top
        assert top.get("delivered-to", "").lower() == r, top
        assert rest == lf(body), "stored message differs:\n%r\n%r" % (rest, lf(body))
        msg = md.get_message(keys[0])
        assert msg["Message-ID"] == "<%s>" % mid
        assert msg["Delivered-To"].lower() == r


def test_maildir_and_smtp_in_one_message(ringmx, nexthop, tmp_path):
    nh = nexthop()
    base = str(tmp_path / "maildir")
    srv = local_server(ringmx, base, "maildir", "local.example",
                       extra_routes=[route("accepted.example", nh)])
    mid = new_mid("mixed")
    body = make_message(mid, "one local, one relayed", BODY)
    submit(srv.port, body, SENDER, ["carol@local.example", "rcpt@accepted.example"])
    path = os.path.join(base, "local.example", "carol")
    wait_for(lambda: maildir_keys(path), DELIVERY_TIMEOUT_S, "a message in %s" % path)
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert [r.lower() for r in t.delivered] == ["rcpt@accepted.example"], \
        "the local recipient was relayed too: %r" % t
    wait_queue_empty(srv)
    assert len(maildir_keys(path)) == 1


def test_mbox_from_quoting_and_two_messages(ringmx, tmp_path):
    base = str(tmp_path / "mbox")
    srv = local_server(ringmx, base, "mbox", "box.example")
    body_text = (b"First line.\r\n"
                 b"From the start of a line\r\n"
                 b">From already quoted\r\n"
                 b"Not From at the start\r\n"
                 b".From after a dot\r\n"
                 b"last\r\n")
    mids = [new_mid("mbox"), new_mid("mbox")]
    bodies = [make_message(m, "to an mbox", body_text, to="dave@box.example") for m in mids]
    qids = [submit(srv.port, b, SENDER, ["dave@box.example", "erin@box.example"])
            for b in bodies]
    paths = {r: os.path.join(base, "box.example", r) for r in ("dave", "erin")}

    def count(path):
        if not os.path.isfile(path):
            return 0
        return len(mailbox.mbox(path, create=False).keys())
    for path in paths.values():
        wait_for(lambda: count(path) >= 2, DELIVERY_TIMEOUT_S, "two messages in %s" % path)
    wait_queue_empty(srv)
    for q in qids:
        wait_log(srv, "delivered", q)
    for r, path in paths.items():
        with open(path, "rb") as f:
            raw_file = f.read()
        assert b"\r" not in raw_file, "CR in the mbox file"
        from_lines = [ln for ln in raw_file.split(b"\n") if ln.startswith(b"From ")]
        assert len(from_lines) == 2, "From_ lines %r: a body line was not quoted" % from_lines
        for ln in from_lines:
            assert ln.startswith(b"From %s " % SENDER.encode()), ln
        box = mailbox.mbox(path, create=False)
        keys = box.keys()
        assert len(keys) == 2, "%s holds %d messages" % (path, len(keys))
        got_mids = []
        for k in keys:
            raw = box.get_bytes(k)
            top, received, rest = split_local(raw)
            assert top.get("return-path") == "<%s>" % SENDER, top
            assert top.get("delivered-to", "").lower() == "%s@box.example" % r, top
            m = re.search(rb"(?m)^Message-ID: <([^>]+)>", rest)
            assert m, rest[:300]
            got_mids.append(m.group(1).decode())
            sent = lf(bodies[mids.index(m.group(1).decode())])
            # mboxrd: a line matching ^>*From  gets one more '>'
            quoted = re.sub(rb"(?m)^(>*From )", rb">\1", sent)
            assert rest.rstrip(b"\n") == quoted.rstrip(b"\n"), \
                "stored message differs:\n%r\n%r" % (rest, quoted)
            assert b"\n>From the start of a line\n" in rest
            assert b"\n>>From already quoted\n" in rest
            assert b"\nNot From at the start\n" in rest
            assert b"\n.From after a dot\n" in rest
        assert sorted(got_mids) == sorted(mids)


def test_maildir_domain_folded_local_part_kept(ringmx, tmp_path):
    base = str(tmp_path / "maildir")
    srv = local_server(ringmx, base, "maildir", "local.example")
    mid = new_mid("case")
    submit(srv.port, make_message(mid, "case"), SENDER, ["Frank@LOCAL.Example"])
    path = os.path.join(base, "local.example", "Frank")
    wait_for(lambda: maildir_keys(path), DELIVERY_TIMEOUT_S, "a message in %s" % path)
    wait_queue_empty(srv)
    assert sorted(os.listdir(base)) == ["local.example"], os.listdir(base)
    assert sorted(os.listdir(os.path.join(base, "local.example"))) == ["Frank"]
