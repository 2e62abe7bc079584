"""The submission rules of the data stage (issue 11) against the real
binary: an authenticated session's message without Message-ID or Date gets
them right after our Received: (RFC 6409 8.2, 8.3; add_message_id_date),
one that has them gets none, an unauthenticated one never does; and
received_hide_client leaves the client, its TLS and its login out of our
Received: for authenticated sessions only.  A submission port's users
expect well-formed messages and private trace fields; a relay must not
touch what it did not originate."""

import re

import pytest

from conftest import (DELIVERY_TIMEOUT_S, HOSTNAME, delivery_overrides, queued_id, route,
                      strip_received, wait_queue_empty)
from conftest import new_mid
from nexthop import nexthop  # noqa: F401  (fixture)
from test_auth import MX, USERS, tls_client, users_file
from test_filter_data import SLOW, add_header_chain, field_lines, msg, transact
from test_filters import plain, users_over
from tlsutil import certs  # noqa: F401  (fixture)



def auth_hop(ringmx, nexthop, tmp_path, **listener):
    nh = nexthop()
    over = users_over(tmp_path, ["carol"])
    over["listeners"][0].update(listener)
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], **over))
    return srv, nh


def deliver_one(srv, nh, client_factory, headers, login=True, bdat=False):
    """Send one message (marked with an X-Mark: field) and return (qid,
    Transaction at the hop)."""
    mark = new_mid("mark")
    c = client_factory(srv.port)
    c.ehlo()
    if login:
        assert c.cmd(plain("carol")).code == 235
    qid = queued_id(transact(c, msg(["X-Mark: " + mark] + headers), bdat=bdat))
    nh.wait_until(lambda h: any(t.header("X-Mark") == mark for t in h.messages()),
                  DELIVERY_TIMEOUT_S, "the message %s" % mark)
    [t] = [t for t in nh.messages() if t.header("X-Mark") == mark]
    return qid, t


DATE_RE = re.compile(rb"^Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), [ 0-9]?\d "
                     rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                     rb"\d\d:\d\d:\d\d \+0000$")


def test_submission_gets_message_id_and_date(ringmx, nexthop, client_factory, tmp_path):
    srv, nh = auth_hop(ringmx, nexthop, tmp_path)
    qid, t = deliver_one(srv, nh, client_factory, ["Subject: bare"])
    f = field_lines(t.data)
    assert f[0].startswith(b"Received: ") and b"(authenticated as carol)" in f[0], f[0]
    added = f[1:3]
    mids = [x for x in added if x.startswith(b"Message-ID: ")]
    dates = [x for x in added if x.startswith(b"Date: ")]
    assert len(mids) == 1 and len(dates) == 1, "expected Message-ID and Date after Received: %r" % f
    m = re.match(rb"^Message-ID: <([0-9A-F]{16})\.(\d+)@" + re.escape(HOSTNAME.encode()) + rb">$",
                 mids[0])
    assert m and m.group(1) == qid.encode(), mids[0]
    assert DATE_RE.match(dates[0]), dates[0]
    assert f[3].startswith(b"X-Mark: "), f
    assert t.mail_params.get("SIZE") == str(len(t.data))
    # a message that has both gets neither; one that has one gets the other
    _, t2 = deliver_one(srv, nh, client_factory,
                        ["Message-ID: <own@client.example>", "date: Mon, 7 Dec 2026 00:00:00 +0000"])
    f2 = field_lines(t2.data)
    assert f2[1].startswith(b"X-Mark: "), f2
    assert sum(x.lower().startswith(b"message-id:") for x in f2) == 1
    assert sum(x.lower().startswith(b"date:") for x in f2) == 1
    _, t3 = deliver_one(srv, nh, client_factory, ["MESSAGE-ID: <own2@client.example>"])
    f3 = field_lines(t3.data)
    assert DATE_RE.match(f3[1]) and f3[2].startswith(b"X-Mark: "), f3
    assert sum(x.lower().startswith(b"message-id:") for x in f3) == 1
    _, t5 = deliver_one(srv, nh, client_factory, ["Subject: over bdat"], bdat=True)
    f5 = field_lines(t5.data)
    assert sorted(x.split(b":", 1)[0].lower() for x in f5[1:3]) == [b"date", b"message-id"], f5
    # unauthenticated: never
    _, t4 = deliver_one(srv, nh, client_factory, ["Subject: anon"], login=False)
    f4 = field_lines(t4.data)
    assert f4[1].startswith(b"X-Mark: "), f4
    assert not any(x.lower().startswith((b"message-id:", b"date:")) for x in f4), f4
    wait_queue_empty(srv)
    assert srv.stop() == 0


def test_submission_fields_turned_off(ringmx, nexthop, client_factory, tmp_path):
    srv, nh = auth_hop(ringmx, nexthop, tmp_path, add_message_id_date=False)
    _, t = deliver_one(srv, nh, client_factory, ["Subject: bare"])
    f = field_lines(t.data)
    assert f[1].startswith(b"X-Mark: "), f
    assert not any(x.lower().startswith((b"message-id:", b"date:")) for x in f), f
    assert srv.stop() == 0


def test_submission_fields_after_added_headers(ringmx, nexthop, client_factory, tmp_path):
    nh = nexthop()
    over = users_over(tmp_path, ["carol"])
    srv = ringmx(delivery_overrides([route("accepted.example", nh)],
                                    filters={"data": add_header_chain()}, **over))
    qid, t = deliver_one(srv, nh, client_factory, ["Subject: both"])
    f = field_lines(t.data)
    assert f[0].startswith(b"Received: "), f
    names = [x.split(b":", 1)[0].lower() for x in f[1:5]]
    assert sorted(names) == [b"date", b"message-id", b"x-filter", b"x-second"], f[:6]
    assert f[5].startswith(b"X-Mark: "), f
    xf = [x for x in f if x.startswith(b"X-Filter: ")][0]
    assert b" u=carol " in xf, xf
    assert t.mail_params.get("SIZE") == str(len(t.data))
    assert srv.stop() == 0


@pytest.mark.parametrize("hide", [True, False], ids=["hidden", "shown"])
def test_received_hide_client(ringmx, nexthop, client_factory, tmp_path, hide):
    srv, nh = auth_hop(ringmx, nexthop, tmp_path,
                       **({"received_hide_client": True} if hide else {}))
    qid, t = deliver_one(srv, nh, client_factory, ["Message-ID: <h@client.example>",
                                                   "Date: Mon, 7 Dec 2026 00:00:00 +0000"])
    received, _ = strip_received(t.data)
    flat = received.replace(b"\r\n", b" ")
    if hide:
        assert re.match(rb"^Received: by " + re.escape(HOSTNAME.encode()) +
                        rb" \(ringmx\) with ESMTPS?A id " + qid.encode() + rb"\b", flat), received
        for leak in (b"127.0.0.1", b"client.example", b"authenticated", b"carol"):
            assert leak not in received, "%r in %r" % (leak, received)
    else:
        assert flat.startswith(b"Received: from client.example ([127.0.0.1])"), received
        assert b"(authenticated as carol)" in received and b"id " + qid.encode() in received
    # an unauthenticated message keeps its client in the trace either way
    _, t2 = deliver_one(srv, nh, client_factory, ["Subject: anon"], login=False)
    r2, _ = strip_received(t2.data)
    assert r2.startswith(b"Received: from client.example ([127.0.0.1])"), r2
    assert srv.stop() == 0
def test_received_hide_client_over_tls(ringmx, certs, tmp_path):
    """On a STARTTLS submission port: "with ESMTPSA", and neither the client
    nor its TLS cipher nor its login in our Received:."""
    cert, key = certs.leaf(MX)
    srv = ringmx(delivery_overrides(
        [route("elsewhere.example", "smtp://127.0.0.1:1")], delivery=SLOW,
        tls={"certificates": [{"cert": cert, "key": key, "names": [MX]}]},
        auth={"users_file": users_file(tmp_path), "failure_delay_ms": 0},
        listeners=[{"name": "mx", "greet_pause_ms": 0, "tls": "starttls", "auth": "required",
                    "received_hide_client": True}]))
    body = b"Subject: private\r\n\r\nhello\r\n"
    with tls_client(srv, certs) as s:
        s.login("alice", USERS["alice"])
        s.sendmail("alice@client.example", ["someone@elsewhere.example"], body)
    [qid] = list(srv.queue_list())
    _, shown = srv.queue_show(qid)
    received, _ = strip_received(shown)
    flat = received.replace(b"\r\n", b" ")
    assert re.match(rb"^Received: by " + re.escape(HOSTNAME.encode()) +
                    rb" \(ringmx\) with ESMTPSA id " + qid.encode() + rb"\b", flat), received
    for leak in (b"127.0.0.1", b"client.example", b"alice", b"cipher", b"using"):
        assert leak not in received, "%r in %r" % (leak, received)
    assert srv.stop() == 0
