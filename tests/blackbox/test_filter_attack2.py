"""Filter chains, second attack round (issue 11): defects found by reading
and running the data stage, file tables and the transaction state.  Each
test states the behaviour the spec or the code's own contract promises and
fails while the defect is there.

- a header field after the first 64 KiB of the header section is never seen
  by the header matcher, so a quarantine rule is evaded by padding;
- a capture that fills exactly on the DATA terminator keeps the
  terminator's CR, so the body matcher sees a byte the message never had;
- add_header expands %{fields} into a header line longer than 998 octets
  (RFC 5322 2.1.1); a next hop that enforces it refuses the message;
- add_header accepts a field name starting with '.', which the prepend sends
  unstuffed: the next hop's un-stuffing eats the dot;
- a transaction tag set by a refused MAIL leaks into the next EHLO's chain;
- a file table whose path becomes a FIFO blocks the main thread in open():
  SIGTERM is never handled;
- a rewrite_sender table value with CR LF becomes the envelope sender:
  extra SMTP commands at the next hop, extra lines in `queue show`;
- a header rule runs its regex once per field of that name with no total
  bound: ~1250 fields in 64 KiB stall the shard for a second;
- `filter explain --ip` cuts a long argument into another, valid address.
"""

import os
import signal
import subprocess
import time

from conftest import HOSTNAME, dot_stuff, queued_id, route, delivery_overrides
from nexthop import nexthop  # noqa: F401  (fixture)

SUBJECT_RULE = {"data": [{"if": {"header": {"name": "Subject", "regex": "(?i)invoice"}},
                          "then": {"quarantine": "suspect"}}]}


def _data(c, body):
    c.ehlo()
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<r@accepted.example>", "250")
    c.expect("DATA", "354")
    c.send(dot_stuff(body) + b".\r\n")
    return c.reply(timeout=30)


def test_subject_after_64k_of_headers_is_still_judged(ringmx, client_factory):
    # The capture's contract (session_data.c): "a filter must never pass
    # what it could not see".  A header section longer than the capture
    # must not let a header rule be skipped: the message is quarantined,
    # or refused, but never queued as if it had no such field.
    srv = ringmx({"filters": SUBJECT_RULE})
    pad = b"".join(b"X-Pad-%05d: %s\r\n" % (i, b"p" * 60) for i in range(1100))  # ~80 KiB
    assert len(pad) > 65536
    body = pad + b"Subject: your invoice\r\n\r\nhello\r\n"
    r = _data(client_factory(srv.port), body)
    if r.code == 250:
        q = srv.queue_list()
        qid = queued_id(r)
        assert q[qid].get("quarantine") == "suspect", (
            "a Subject after 64 KiB of header fields evaded the header rule: %r" % q[qid])
    else:
        assert r.code in (451, 452, 552, 554), r


def test_capture_full_on_the_terminator_keeps_no_terminator_byte(ringmx, client_factory):
    # A DATA body always ends with CRLF: nothing in it can end in a bare CR.
    srv = ringmx({"filters": {"data": [
        {"if": {"body": {"regex": "\\r\\z"}}, "then": {"reject": "554 5.7.1 ends in a bare CR"}}]}})
    head = b"Subject: exact\r\n\r\n"
    # The capture holds the message without stuffing: make it 65535 octets,
    # so the terminator's "." is dropped and its CR is octet 65536.
    line = b"y" * 78 + b"\r\n"
    body = head
    while len(body) + len(line) <= 65535 - 4:
        body += line
    body += b"z" * (65535 - len(body) - 2) + b"\r\n"
    assert len(body) == 65535
    r = _data(client_factory(srv.port), body)
    assert r.code == 250, "a body that ends in CRLF matched \\r\\z: %r" % r


def _delivering(ringmx, nexthop, filters, **kw):
    nh = nexthop(check_protocol=False)
    over = delivery_overrides([route("accepted.example", nh)], filters=filters, **kw)
    return ringmx(over), nh


def test_add_header_line_stays_within_998_octets(ringmx, nexthop, client_factory):
    srv, nh = _delivering(ringmx, nexthop, {"data": [{"add_header": {
        "name": "X-Seen-Helo", "value": "%{helo} %{helo} %{helo} %{helo}"}}]})
    c = client_factory(srv.port)
    c.ehlo("h" * 250)
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<r@accepted.example>", "250")
    c.expect("DATA", "354")
    c.send(b"Subject: long\r\n\r\nhi\r\n.\r\n")
    queued_id(c.reply(timeout=30))
    nh.wait_messages(1, timeout=30)
    data = nh.messages()[0].data
    longest = max(len(ln) for ln in data.split(b"\r\n"))
    assert longest <= 998, "a header line of %d octets was added (RFC 5322 2.1.1: 998)" % longest


def test_add_header_name_with_a_leading_dot_is_refused_at_load(ringmx):
    # ".Tag" is a valid field name (RFC 5322 ftext), but a line's first dot
    # is stuffing on the wire: the compiler refuses it rather than have
    # delivery lose it (it once reached the next hop as "Tag: v").
    srv = ringmx({"filters": {"data": [{"add_header": {"name": ".Tag", "value": "v"}}]}},
                 start=False)
    chk = subprocess.run([os.environ.get("RINGMX_BIN", "build/ringmx"), "--check-config",
                          srv.config_path], capture_output=True, timeout=30)
    assert chk.returncode == 1, chk
    assert chk.stderr.startswith(b"filters.data[0].add_header.name: "), chk.stderr


def test_refused_mail_tag_does_not_reach_the_next_helo(ringmx, client_factory):
    srv = ringmx({"filters": {
        "mail": [{"if": {"sender_domain": "bad.example"},
                  "then": {"tag": "bad", "reject": "550 5.7.1 bad sender"}}],
        "helo": [{"if": {"tag": "bad"}, "then": {"reject": "550 5.7.1 tag leaked into helo"}}]}})
    c = client_factory(srv.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@bad.example>").last == "550 5.7.1 bad sender"
    r = c.cmd("EHLO client.example")
    assert r.code == 250, "a refused MAIL's transaction tag was seen at the next EHLO: %r" % r


def test_file_table_turned_fifo_does_not_hang_the_main_thread(ringmx, tmp_path, client_factory):
    table = tmp_path / "blocked"
    table.write_text("198.51.100.0/24\n")
    srv = ringmx({"tables": {"blocked": {"file": str(table)}},
                  "filters": {"connect": [{"if": {"client_ip": {"table": "blocked"}},
                                           "then": "reject"}]}})
    fifo = tmp_path / "blocked.fifo"
    os.mkfifo(fifo)
    os.rename(fifo, table)  # an admin's mistake, or a hostile file in a shared dir
    time.sleep(3.5)         # the refresh looks once a second and waits for a still file
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    try:
        rc = srv.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        # Unblock the open() so the teardown can end the server.
        fd = os.open(table, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        rc = None
    assert rc is not None, "SIGTERM not handled within 10 s: main thread blocked on the FIFO"
    srv._reap(rc, "signal 15")
    assert rc == 0 and time.monotonic() - t0 < 10


def test_rewrite_sender_value_cannot_inject_smtp_commands(ringmx, nexthop, client_factory):
    # flt.h: flt_rewrite_sender gives 0 "when ... the value is not an
    # address".  A table value with CR LF (an inline JSON string; a file
    # table line can carry a bare CR) is no address: it must be refused at
    # load, or left unused; it must never reach the next hop's MAIL FROM as
    # extra command lines, nor `queue show` as extra envelope lines.
    nh = nexthop(check_protocol=False)
    over = delivery_overrides(
        [route("accepted.example", nh)],
        tables={"canon": {"inline": {
            "a@sender.example": "b@x.example>\r\nRSET\r\nMAIL_FROM:<evil@x.example"}}},
        filters={"mail": [{"if": {"sender_domain": "sender.example"},
                           "then": {"rewrite_sender": {"table": "canon"}}}]})
    srv = ringmx(over, start=False)
    chk = subprocess.run([os.environ.get("RINGMX_BIN", "build/ringmx"), "--check-config",
                          srv.config_path], capture_output=True, timeout=30)
    if chk.returncode == 1 and b"tables.canon" in chk.stderr:
        return  # refused at load: fine
    srv.start()
    c = client_factory(srv.port)
    c.ehlo()
    c.expect("MAIL FROM:<a@sender.example>", "250")
    c.expect("RCPT TO:<r@accepted.example>", "250")
    c.expect("DATA", "354")
    c.send(b"Subject: r\r\n\r\nhi\r\n.\r\n")
    queued_id(c.reply(timeout=30))
    nh.wait_messages(1, timeout=30)
    t = nh.messages()[0]
    assert "\r" not in t.mail_from and "\n" not in t.mail_from and ">" not in t.mail_from, t
    # Not an address: the sender stays as it was, and the server says so.
    assert t.mail_from == "a@sender.example", t.mail_from
    assert not nh.errors(), nh.errors()
    assert srv.stop() == 0
    assert "event=sender_rewritten" not in srv.log_text()


def test_many_header_fields_against_a_backtracking_regex_do_not_stall_the_shard(
        ringmx, client_factory):
    # Invariant 8: nothing a peer sends can stall a shard.  The match limit
    # bounds one regex call, but a header rule runs once per field of that
    # name, and 64 KiB hold ~1250 of them: the calls add up with no bound.
    import threading
    srv = ringmx({"shards": 1, "filters": {"data": [
        {"if": {"header": {"name": "Subject", "regex": "^(\\w+\\s?)*$"}},
         "then": {"reject": "554 5.7.1 r%d" % i}} for i in range(4)]}})
    fld = b"Subject: " + b"a" * 40 + b"!\r\n"
    body = fld * (65000 // len(fld)) + b"\r\nhi\r\n"
    other = client_factory(srv.port, timeout=60)
    other.ehlo()
    c = client_factory(srv.port, timeout=120)
    c.ehlo()
    c.expect("MAIL FROM:<a@sender.example>", "250")
    c.expect("RCPT TO:<r@accepted.example>", "250")
    c.expect("DATA", "354")
    worst = [0.0]
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            t = time.monotonic()
            other.cmd("NOOP")
            worst[0] = max(worst[0], time.monotonic() - t)
    th = threading.Thread(target=probe)
    th.start()
    try:
        for _ in range(3):
            c.send(body + b".\r\n")
            assert c.reply(timeout=120).code == 250
            c.expect("MAIL FROM:<a@sender.example>", "250")
            c.expect("RCPT TO:<r@accepted.example>", "250")
            c.expect("DATA", "354")
    finally:
        stop.set()
        th.join()
    assert worst[0] < 0.5, "a NOOP on the same shard waited %.2fs behind header regexes" % worst[0]


def test_explain_does_not_cut_an_ip_into_another_one(ringmx):
    # control_explain copies --ip into a 46-byte buffer with snprintf and
    # parses what is left: a longer, invalid argument is explained as the
    # valid address its first 45 characters spell.
    srv = ringmx({"filters": {"connect": [{"if": {"client_ip": "255.255.255.255"},
                                           "then": "reject"}]}})
    r = srv.ctl_run("filter", "explain", "--ip",
                    "0000:0000:0000:0000:0000:ffff:255.255.255.255junk")
    assert r.returncode != 0 or b"ERR" in r.stdout + r.stderr, (
        "an invalid --ip was explained as another address: %r" % r.stdout)
