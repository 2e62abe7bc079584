"""The data stage against hostile clients: client-chosen text expanded into
an added header field (an 8-bit sender or login must come out as '?' and
never end the line), 8-bit header values under a regex, a header section
larger than the 64 KiB the stage reads, a regex that backtracks
catastrophically over a 60 KiB body, BDAT chunks cut anywhere deciding as
DATA does, and pipelined messages in one session each judged alone (tags,
quarantine and added fields of one must not leak into the next).  A data
chain is where spam and policy decisions are made on content the attacker
writes: none of it may crash the server, stall a shard or smuggle a header
line into a stored message."""

import re

import pytest

from conftest import delivery_overrides, dot_stuff, queued_id, route
from test_filter_data import MANY_ERRORS, SENDER, SLOW, field_lines, msg, transact
from test_filters import plain, users_over


def held_server(ringmx, closed_port, data, **extra):
    """A server whose accepted.example goes to a closed port, retried in an
    hour: accepted messages stay in the queue for `queue show`."""
    return ringmx(delivery_overrides([route("accepted.example", "smtp://127.0.0.1:%d"
                                            % closed_port())], delivery=SLOW,
                                     filters={"data": data}, **extra))


def printable_fields(raw):
    """Every line of the header section is printable ASCII (or a fold)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    for ln in head.split(b"\r\n"):
        assert all(0x20 <= b < 0x7F or b == 0x09 for b in ln), "non-printable in %r" % ln
    return head


def test_hostile_fields_in_an_added_header(ringmx, client_factory, closed_port, tmp_path):
    over = users_over(tmp_path, ["caf\u00e9", "plain"])
    srv = held_server(ringmx, closed_port, [{"then": {"add_header": {
        "name": "X-Who", "value": "<%{sender}|%{helo}|%{auth_user}>"}}}], **over)
    c = client_factory(srv.port)
    r = c.cmd("EHLO h\u00e9lo.example")  # 8-bit HELO: refused or taken, never in a header raw
    helo_ok = r.code == 250
    if not helo_ok:
        c.ehlo("client.example")
    assert c.cmd(plain("caf\u00e9")).code == 235
    sender = "j\u00f6rg\u00e9@client.example"
    qid = queued_id(transact(c, msg(["Subject: x"]), sender=sender, mail_params=" SMTPUTF8"))
    long_sender = "a" * 60 + "@" + ".".join(["d" * 60] * 3) + ".example"
    qid2 = queued_id(transact(c, msg(["Subject: y"]), sender=long_sender))
    _, shown = srv.queue_show(qid)
    head = printable_fields(shown)
    [who] = [f for f in field_lines(head + b"\r\n\r\n") if f.startswith(b"X-Who:")]
    m = re.match(rb"^X-Who: <([^|]*)\|([^|]*)\|([^|]*)>$", who)
    assert m, who
    assert m.group(1) == b"j?rg?@client.example" or re.match(rb"^j\?+rg\?+@client\.example$",
                                                             m.group(1)), who
    assert re.match(rb"^caf\?+$", m.group(3)), who
    if helo_ok:
        assert re.match(rb"^h\?+lo\.example$", m.group(2)), who
    _, shown2 = srv.queue_show(qid2)
    printable_fields(shown2)
    [who2] = [f for f in field_lines(shown2) if f.startswith(b"X-Who:")]
    assert who2.startswith(b"X-Who: <%s|" % long_sender.encode()), who2
    assert c.cmd("NOOP").code == 250
    assert srv.stop() == 0


def test_8bit_header_values_under_a_regex(ringmx, client_factory):
    srv = ringmx({"filters": {"data": [
        {"if": {"header": {"name": "Subject", "regex": "caf.+ au lait"}},
         "then": {"reject": "550 5.7.1 coffee"}},
        {"if": {"header": {"name": "X-Bin", "value": "\u00ff"}},
         "then": {"reject": "550 5.7.1 binary"}},
    ]}})
    c = client_factory(srv.port)
    c.ehlo()
    assert transact(c, msg([b"Subject: caf\xc3\xa9 au lait"])).last == "550 5.7.1 coffee"
    r = transact(c, msg([b"X-Bin: \xff\xfe\x80"]))
    assert r.code in (250, 550), r
    r = transact(c, msg([b"X-Bin: \xc3\xbf"]))
    assert r.code in (250, 550), r
    assert transact(c, msg([b"Subject: \xff\xfe"])).code == 250
    assert c.cmd("NOOP").code == 250
    assert srv.stop() == 0


TOO_LARGE = "552 5.3.4 Error: header section too large to be checked"


def test_header_section_past_64k(ringmx, client_factory):
    """The stage reads the first 64 KiB: a field after that mark is never
    seen.  doc/filters.md: a header section that does not end within them is
    refused (552) where the data chain has a header or body test, since what
    the chain could not see it must not pass.  Beyond that: no crash, and
    the server goes on serving."""
    srv = ringmx({"filters": {"data": [
        {"if": {"header": {"name": "X-Late"}}, "then": {"reject": "550 5.7.1 late seen"}},
        {"if": {"header": {"name": "X-Early"}}, "then": {"reject": "550 5.7.1 early seen"}},
        {"if": {"body": {"regex": "needle"}}, "then": {"reject": "550 5.7.1 body seen"}},
    ]}, **MANY_ERRORS})
    filler = ["X-Fill-%05d: %s" % (i, "f" * 70) for i in range(1000)]  # about 85 KiB
    c = client_factory(srv.port, timeout=30)
    c.ehlo()
    assert transact(c, msg(filler + ["X-Late: 1"], b"needle\r\n")).last == TOO_LARGE
    assert transact(c, msg(filler + ["X-Late: 1"], b"needle\r\n"),
                    bdat=True).last == TOO_LARGE
    # a late field that would let the message pass does not make it pass
    assert transact(c, msg(["X-Early: 1"] + filler)).last in (TOO_LARGE, "550 5.7.1 early seen")
    # one field of 10 KiB folded over many lines, past the 4096-octet value cut,
    # in a header section that ends within the 64 KiB: judged as usual
    big = ["X-Big: start"] + [" " + "v" * 70] * 150 + [" end"]
    assert transact(c, msg(big + ["X-Late: 1"])).last == "550 5.7.1 late seen"
    assert transact(c, msg(big + ["X-Early: 1"])).last == "550 5.7.1 early seen"
    # a 64 KiB header section that ends just inside the mark: judged, body unseen
    near = ["X-Fill-%05d: %s" % (i, "f" * 70) for i in range(750)]
    head = msg(near)
    assert 60000 < len(head) < 65536, len(head)
    r = transact(c, msg(near + ["X-Late: 1"], b"needle\r\n"))
    assert r.last == "550 5.7.1 late seen", r
    d = client_factory(srv.port)
    d.ehlo()
    assert transact(d, msg(["Subject: after"])).code == 250
    assert srv.stop() == 0


def test_header_section_past_64k_without_content_tests(ringmx, client_factory):
    """A data chain that reads no header or body keeps no copy: a big header
    section is accepted as before."""
    srv = ringmx({"filters": {"data": [{"if": {"size": {"gt": 10000000}}, "then": "reject"}]}})
    filler = ["X-Fill-%05d: %s" % (i, "f" * 70) for i in range(1000)]
    c = client_factory(srv.port, timeout=30)
    c.ehlo()
    assert transact(c, msg(filler)).code == 250
    assert srv.stop() == 0


def test_backtracking_body_regex(ringmx, client_factory):
    """A regex that backtracks catastrophically over a 60 KiB body counts as
    no match (doc/filters.md: a step limit) and the server keeps serving."""
    srv = ringmx({"filters": {"data": [
        {"if": {"body": {"regex": "(?s)(x+x+)+y"}}, "then": {"reject": "550 5.7.1 rx"}},
        {"if": {"header": {"name": "Subject", "regex": "^(a|a?)+$"}},
         "then": {"reject": "550 5.7.1 subject rx"}},
    ]}})
    body = (b"x" * 900 + b"\r\n") * 66
    assert len(body) > 59000
    c = client_factory(srv.port, timeout=60)
    c.ehlo()
    assert transact(c, msg(["Subject: ok"], b"xxxy\r\n")).last == "550 5.7.1 rx"
    r = transact(c, msg(["Subject: ok"], body))
    assert r.code == 250, r
    r = transact(c, msg(["Subject: " + "a" * 900 + "!"], b"z\r\n"), bdat=True)
    assert r.code == 250, r
    d = client_factory(srv.port)
    d.ehlo()
    assert transact(d, msg(["Subject: other"])).code == 250
    assert c.cmd("NOOP").code == 250
    assert srv.stop() == 0


def bdat_chunks(c, body, cuts):
    """Send body as BDAT chunks cut at the offsets in cuts; the final reply."""
    pos = 0
    for cut in cuts:
        c.send(b"BDAT %d\r\n" % (cut - pos) + body[pos:cut])
        r = c.reply()
        assert r.code == 250, r
        pos = cut
    c.send(b"BDAT %d LAST\r\n" % (len(body) - pos) + body[pos:])
    return c.reply()


SAME_CHAIN = [
    {"if": {"header": {"name": "X-A", "value": "1"}}, "then": {"reject": "550 5.7.1 a"}},
    {"if": {"header": {"name": "Subject", "regex": "^split across$"}},
     "then": {"reject": "550 5.7.1 folded"}},
    {"if": {"body": {"regex": "(?m)^\\.hidden"}}, "then": {"reject": "550 5.7.1 dot"}},
    {"if": {"body": {"regex": "X-A: 1"}}, "then": {"reject": "550 5.7.1 body header"}},
    {"if": {"size": {"gt": 2000}}, "then": {"tempfail": "451 4.7.1 big"}},
]
SAME_CASES = [
    msg(["X-A: 1"]),
    msg(["X-a:   1  "]),
    msg(["Subject: split", " across"]),
    msg(["Subject: x"], b".hidden line\r\n"),
    msg(["Subject: x"], b"X-A: 1\r\n"),
    msg(["Subject: x"], b"y" * 900 + b"\r\n" + b"y" * 900 + b"\r\n" + b"y" * 900 + b"\r\n"),
    msg(["Subject: x", "X-A: 2"], b"clean\r\n"),
]


def test_bdat_and_data_decide_the_same(ringmx, client_factory):
    srv = ringmx({"filters": {"data": SAME_CHAIN}, **MANY_ERRORS})
    c = client_factory(srv.port, timeout=30)
    c.ehlo()
    got = {"data": [], "bdat": [], "bdat-cut": []}
    for body in SAME_CASES:
        got["data"].append(transact(c, body).last[:20])
        got["bdat"].append(transact(c, body, bdat=True).last[:20])
        c.expect("MAIL FROM:<%s>" % SENDER, "250")
        c.expect("RCPT TO:<rcpt@accepted.example>", "250")
        # cuts inside the first line, at the blank line, and byte by byte near it
        sep = body.index(b"\r\n\r\n")
        cuts = sorted({3, sep + 1, sep + 2, sep + 3, sep + 4} - {0, len(body)})
        got["bdat-cut"].append(bdat_chunks(c, body, [x for x in cuts if x < len(body)]).last[:20])
    assert got["data"] == got["bdat"] == got["bdat-cut"], got
    assert [g[:3] for g in got["data"]] == ["550", "550", "550", "550", "550", "451", "250"], got
    assert srv.stop() == 0


PIPE_CHAIN = [
    {"if": {"header": {"name": "X-Spam", "value": "yes"}},
     "then": {"tag": "spam", "add_header": {"name": "X-Was-Spam", "value": "yes"}}},
    {"if": {"tag": "spam", "header": {"name": "X-Second"}},
     "then": {"reject": "550 5.7.1 tag leaked"}},
    {"if": {"tag": "spam"}, "then": {"quarantine": "spam"}},
]


@pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
def test_pipelined_messages_judged_alone(ringmx, client_factory, closed_port, bdat):
    srv = held_server(ringmx, closed_port, PIPE_CHAIN)
    m1 = msg(["X-Spam: yes", "Subject: one"])
    m2 = msg(["X-Second: 1", "Subject: two"])
    m3 = msg(["X-Spam: yes", "X-Second: 1", "Subject: three"])  # the control: it is refused
    c = client_factory(srv.port, timeout=30)
    c.ehlo()
    env = "MAIL FROM:<%s>\r\nRCPT TO:<rcpt@accepted.example>\r\n" % SENDER
    if bdat:
        wire = b"".join(env.encode() + b"BDAT %d LAST\r\n" % len(m) + m for m in (m1, m2, m3))
        c.send(wire)
        rs = c.replies(9)
        data_replies = [rs[2], rs[5], rs[8]]
    else:
        c.send(env + "DATA\r\n")
        rs = c.replies(3)
        assert rs[2].code == 354, rs
        # the end of one message and the next transaction in one write
        c.send(dot_stuff(m1) + b".\r\n" + env.encode() + b"DATA\r\n")
        rs += c.replies(4)
        assert rs[6].code == 354, rs
        c.send(dot_stuff(m2) + b".\r\n" + env.encode() + b"DATA\r\n")
        rs += c.replies(4)
        assert rs[10].code == 354, rs
        c.send(dot_stuff(m3) + b".\r\n")
        rs.append(c.reply())
        data_replies = [rs[3], rs[7], rs[11]]
    assert data_replies[2].last == "550 5.7.1 tag leaked", rs
    q1, q2 = queued_id(data_replies[0]), queued_id(data_replies[1])
    q = srv.queue_list()
    assert q[q1].get("quarantine") == "spam" and q[q1].get("state") == "held", q
    assert "quarantine" not in q[q2] and q[q2].get("state") != "held", q
    _, s1 = srv.queue_show(q1)
    _, s2 = srv.queue_show(q2)
    assert b"X-Was-Spam: yes\r\n" in s1.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
    assert b"X-Was-Spam" not in s2, s2[:600]
    assert srv.stop() == 0


@pytest.mark.parametrize("bdat", [False, True], ids=["data", "bdat"])
def test_nothing_runs_after_a_data_disconnect(ringmx, client_factory, bdat):
    """A disconnect at data refuses the message and closes: the commands and
    the next message pipelined behind it are never run."""
    srv = ringmx({"filters": {"data": [
        {"if": {"header": {"name": "X-Bye"}}, "then": {"disconnect": "421 4.7.0 bye"}}]}})
    c = client_factory(srv.port, timeout=30)
    c.ehlo()
    env = "MAIL FROM:<%s>\r\nRCPT TO:<rcpt@accepted.example>\r\n" % SENDER
    m1, m2 = msg(["X-Bye: 1"]), msg(["Subject: next"])
    if bdat:
        c.send(env.encode() + b"BDAT %d LAST\r\n" % len(m1) + m1 + env.encode() +
               b"BDAT %d LAST\r\n" % len(m2) + m2)
        rs = c.replies(3)
    else:
        c.send(env + "DATA\r\n")
        rs = c.replies(3)
        assert rs[2].code == 354
        c.send(dot_stuff(m1) + b".\r\n" + env.encode() + b"DATA\r\n" + m2 + b".\r\n")
        rs.append(c.reply())
    assert rs[-1].last == "421 4.7.0 bye", rs
    assert c.replies_until_closed() == [], "the server answered after its disconnect"
    assert srv.queue_list() == {}, "a message was queued after the disconnect"
    assert srv.stop() == 0


def test_header_only_and_unterminated_messages(ringmx, client_factory):
    """A message with no blank line (all header) and one whose last line has
    no CRLF (BDAT) are judged like the others."""
    srv = ringmx({"filters": {"data": [
        {"if": {"header": {"name": "X-A", "value": "1"}}, "then": {"reject": "550 5.7.1 a"}},
        {"if": {"body": {"regex": "X-A"}}, "then": {"reject": "550 5.7.1 in the body"}}]},
        **MANY_ERRORS})
    c = client_factory(srv.port)
    c.ehlo()
    assert transact(c, b"Subject: x\r\nX-A: 1\r\n").last == "550 5.7.1 a"
    assert transact(c, b"Subject: x\r\nX-A: 1\r\n", bdat=True).last == "550 5.7.1 a"
    r = transact(c, b"Subject: x\r\nX-A: 1", bdat=True)
    assert r.last == "550 5.7.1 a", r
    assert transact(c, b"\r\nX-A: 1\r\n").last == "550 5.7.1 in the body"
    assert srv.stop() == 0


def test_added_field_never_longer_than_998(ringmx, client_factory, closed_port):
    """A client-chosen sender expanded several times into one added field:
    whatever is done with it (cut, folded or left out), no stored header
    line may pass 998 octets (RFC 5322 2.1.1; RFC 5321 4.5.3.1.6 makes a
    next hop, ringmx itself included, refuse lines over 1000)."""
    srv = held_server(ringmx, closed_port, [{"then": {"add_header": [
        {"name": "X-Long", "value": "%{sender} %{sender} %{sender} %{sender} %{sender}"},
        {"name": "X-" + "n" * 62, "value": "x" * 380 + "%{sender}%{sender}"}]}}])
    sender = "s" * 62 + "@" + ".".join(["d" * 60] * 3) + ".example"
    assert len(sender) == 253
    c = client_factory(srv.port)
    c.ehlo()
    qid = queued_id(transact(c, msg(["Subject: long"]), sender=sender))
    _, shown = srv.queue_show(qid)
    head = shown.split(b"\r\n\r\n", 1)[0]
    long_lines = [(len(ln), ln[:40]) for ln in head.split(b"\r\n") if len(ln) > 998]
    assert not long_lines, "header lines over 998 octets: %r" % long_lines
    assert c.cmd("NOOP").code == 250
    assert srv.stop() == 0


def test_a_field_repeated_a_thousand_times(ringmx, client_factory):
    """doc/filters.md: a header test looks at the first 16 fields of its
    name, so a client repeating a field cannot make one regex run a
    thousand times; a match in a later copy is not seen."""
    srv = ringmx({"filters": {"data": [
        {"if": {"header": {"name": "X-Rep", "regex": "^(a|a?)+hit$"}},
         "then": {"reject": "550 5.7.1 hit"}}]}, **MANY_ERRORS})
    c = client_factory(srv.port, timeout=30)
    c.ehlo()
    reps = ["X-Rep: " + "a" * 40] * 1000
    assert transact(c, msg(["X-Rep: hit"] + reps[:15])).last == "550 5.7.1 hit"
    assert transact(c, msg(reps[:15] + ["X-Rep: hit"])).last == "550 5.7.1 hit"
    assert transact(c, msg(reps[:16] + ["X-Rep: hit"])).code == 250
    assert transact(c, msg(reps + ["X-Rep: hit"])).code == 250
    d = client_factory(srv.port)
    d.ehlo()
    assert transact(d, msg(["Subject: other"])).code == 250
    assert srv.stop() == 0
