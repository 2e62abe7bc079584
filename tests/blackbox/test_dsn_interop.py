"""Interoperability of DSNs and SMTPUTF8 with real next hops, end to end
through the real binary:

- SMTPUTF8 (RFC 6531 3.4): a message sent with SMTPUTF8 needs it at the next
  hop only when an envelope address of that transaction or its header
  section is not ASCII; an all-ASCII one goes on without the parameter to a
  hop that lacks SMTPUTF8 (Dovecot 2.3 LMTP), one that really needs it is
  still bounced with 5.6.7 (no downgrade is built).
- NOTIFY=SUCCESS (RFC 3461 4.1, 5.2.2.2): a hop that does not offer DSN
  cannot report success, so ringmx does: "relayed" for an SMTP hop,
  "delivered" for LMTP and Maildir/mbox (the final delivery).  A DSN hop
  gets NOTIFY passed on and no report comes from ringmx.
- DSN details (RFC 3464, RFC 6533): UTF-8 reply text kept in the UTF-8
  report and '?' in the 7-bit one, ORCPT and ENVID shown xtext-decoded,
  Remote-MTA for the hop that answered.

Every server routes "sender.example" to a second next hop, so the DSNs can
be read there (a DSN is the transaction whose MAIL FROM is <>)."""

import base64
import os
import re
import subprocess

import pytest

from conftest import (DELIVERY_TIMEOUT_S, Dsn, SMTPClient, check_dsn, delivery_overrides,
                      dsn_transactions, make_message, route, strip_received, submit, wait_dsn,
                      wait_log, wait_queue_empty)
from conftest import new_mid
from dnszone import dns  # noqa: F401  (fixture)
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)

SENDER = "sender@sender.example"
RCPT = "rcpt@accepted.example"


def gateway(ringmx, nexthop, hop=None, bounce_hop=None, routes=(), relay=(), delivery=None,
            **extra):
    """A server whose accepted.example goes to a fresh next hop (NextHop kwargs
    in hop) and sender.example to a bounce hop (kwargs in bounce_hop).  routes
    are added in front.  Returns (server, hop, bounce hop)."""
    nh = nexthop(**(hop or {}))
    bounce = nexthop(**(bounce_hop or {}))
    rts = list(routes) + [route("accepted.example", nh), route("sender.example", bounce)]
    srv = ringmx(delivery_overrides(rts, relay, delivery, **extra))
    return srv, nh, bounce


def _rcpt_params(t, rcpt):
    for k, v in t.rcpt_params.items():
        if k.lower() == rcpt.lower():
            return v
    raise AssertionError("no RCPT %s in %r" % (rcpt, t.rcpt_params))


UTF8_BODY_HEADERS = (b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     b"Content-Transfer-Encoding: 8bit\r\n")
UTF8_BODY = "Gr\u00fc\u00dfe aus M\u00fcnchen \u2013 na\u00efve caf\u00e9\r\n".encode("utf-8")


# --------------------------------------------------------------------------
# item 5: SMTPUTF8 only where the message really needs it


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_smtputf8_ascii_message_goes_to_hop_without_smtputf8(ringmx, nexthop, lmtp):
    """The SMTPUTF8 flag alone (ASCII addresses and header fields, a UTF-8
    body) is no reason to bounce: sent without the parameter, body intact."""
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"smtputf8": False, "lmtp": lmtp})
    mid = new_mid("u8ascii")
    body = make_message(mid, "ascii header fields", UTF8_BODY, UTF8_BODY_HEADERS)
    qid = submit(srv.port, body, SENDER, [RCPT], mail_params="SMTPUTF8 BODY=8BITMIME")
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert "SMTPUTF8" not in t.mail_params, \
        "SMTPUTF8 sent to a hop that does not offer it: %r" % t.mail_params
    assert (t.mail_params.get("BODY") or "").upper() == "8BITMIME", t.mail_params
    assert [r.lower() for r in t.delivered] == [RCPT]
    assert strip_received(t.data)[1] == body, "the message was altered on the way"
    wait_queue_empty(srv)
    wait_log(srv, "delivered", qid)
    assert dsn_transactions(bounce) == [], "an all-ASCII SMTPUTF8 message bounced"


def test_smtputf8_passed_on_where_offered(ringmx, nexthop):
    srv, nh, _ = gateway(ringmx, nexthop, hop={"smtputf8": True})
    mid = new_mid("u8pass")
    submit(srv.port, make_message(mid, "ascii", UTF8_BODY, UTF8_BODY_HEADERS), SENDER, [RCPT],
           mail_params="SMTPUTF8 BODY=8BITMIME")
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert "SMTPUTF8" in t.mail_params, t.mail_params
    wait_queue_empty(srv)


# What makes a message really need SMTPUTF8, one thing at a time: each is
# bounced 5.6.7 at a hop without SMTPUTF8 and never offered to it.
NEEDS_UTF8 = {
    "header-field": dict(
        sender=SENDER, rcpt=RCPT,
        body=lambda mid: make_message(mid, "Gr\u00fc\u00dfe", b"ascii body\r\n",
                                      UTF8_BODY_HEADERS)),
    "folded-header-field": dict(
        sender=SENDER, rcpt=RCPT,
        body=lambda mid: make_message(mid, "x", b"ascii body\r\n",
                                      "X-Note: first line\r\n\tM\u00fcller\r\n")),
    "sender": dict(
        sender="j\u00f6rg@sender.example", rcpt=RCPT,
        body=lambda mid: make_message(mid, "ascii", b"body\r\n", sender="jorg@sender.example")),
    "recipient": dict(
        sender=SENDER, rcpt="\u7528\u6237@accepted.example",
        body=lambda mid: make_message(mid, "ascii", b"body\r\n", to="user@accepted.example")),
}


@pytest.mark.parametrize("case", sorted(NEEDS_UTF8))
def test_smtputf8_really_needed_still_bounces(ringmx, nexthop, case):
    c = NEEDS_UTF8[case]
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"smtputf8": False})
    mid = new_mid("u8need")
    qid = submit(srv.port, c["body"](mid), c["sender"], [c["rcpt"]],
                 mail_params="SMTPUTF8 BODY=8BITMIME")
    [txn] = wait_dsn(bounce, c["sender"])
    d = check_dsn(txn, c["sender"])
    [r] = d.recipients
    assert r["action"].lower() == "failed" and r["status"] == "5.6.7", r
    wait_queue_empty(srv)
    wait_log(srv, "bounced", qid)
    assert nh.mail_commands == 0, "a message that needs SMTPUTF8 was offered to a hop without it"


def test_smtputf8_decided_per_transaction(ringmx, nexthop):
    """One message, two next hops: the ASCII recipient goes to the hop
    without SMTPUTF8 plainly, the UTF-8 one to the hop that has it."""
    u8hop = nexthop(smtputf8=True)
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"smtputf8": False},
                              routes=[route("utf8.example", u8hop)],
                              relay=["utf8.example"])
    u8rcpt = "\u7528\u6237@utf8.example"
    mid = new_mid("u8split")
    body = make_message(mid, "two hops", UTF8_BODY, UTF8_BODY_HEADERS,
                        to="undisclosed-recipients:;")
    submit(srv.port, body, SENDER, [RCPT, u8rcpt], mail_params="SMTPUTF8 BODY=8BITMIME")
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    [u] = u8hop.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert "SMTPUTF8" not in t.mail_params and [r.lower() for r in t.delivered] == [RCPT]
    assert "SMTPUTF8" in u.mail_params and u.delivered == [u8rcpt.lower()], u
    wait_queue_empty(srv)
    assert dsn_transactions(bounce) == []


def test_dsn_of_ascii_smtputf8_message_reaches_hop_without_smtputf8(ringmx, nexthop):
    """The DSN about an SMTPUTF8 message is in the RFC 6533 form; with an
    ASCII sender its own envelope and header fields are ASCII, so the
    sender's hop needs no SMTPUTF8 to take it (it used to be refused 5.6.7
    and dropped as a double bounce)."""
    srv, nh, bounce = gateway(ringmx, nexthop,
                              hop={"rules": [Rule("rcpt", "550 5.1.1 No such user")]},
                              bounce_hop={"smtputf8": False})
    mid = new_mid("u8dsn")
    qid = submit(srv.port, make_message(mid, "ascii", UTF8_BODY, UTF8_BODY_HEADERS), SENDER,
                 [RCPT], mail_params="SMTPUTF8 BODY=8BITMIME")
    [txn] = wait_dsn(bounce, SENDER)
    assert "SMTPUTF8" not in txn.mail_params, txn.mail_params
    d = check_dsn(txn, SENDER)
    assert d.part_types[1] == "message/global-delivery-status", d.part_types
    assert d.recipient(RCPT)["status"] == "5.1.1"
    wait_queue_empty(srv)
    wait_log(srv, "bounced", qid)


# Our own Received: field names the authenticated user.  A users_file name
# may be UTF-8 or hold '(' ')' '\\': shown as ASCII, quoted, so the trace
# field we add never makes a message 8-bit or needing SMTPUTF8, and never
# ends its comment early.
AUTH_USERS = {"j\u00f6rg": "pw-j", "a)b(c\\d": "pw-a"}


def auth_gateway(ringmx, nexthop, tmp_path):
    users = tmp_path / "users"
    lines = []
    for name, pw in AUTH_USERS.items():
        h = subprocess.run(["openssl", "passwd", "-6", pw], capture_output=True,
                           check=True).stdout.decode().strip()
        lines.append("%s:%s\n" % (name, h))
    users.write_bytes("".join(lines).encode("utf-8"))
    nh = nexthop(smtputf8=False)
    bounce = nexthop()
    srv = ringmx(delivery_overrides(
        [route("accepted.example", nh), route("sender.example", bounce)],
        auth={"users_file": str(users), "failure_delay_ms": 0},
        listeners=[{"name": "mx", "greet_pause_ms": 0, "tls": "none", "auth": "optional",
                    "auth_plaintext": True}]))
    return srv, nh, bounce


def submit_as(port, user, body, mail_params=""):
    c = SMTPClient(port, timeout=20)
    try:
        c.ehlo()
        plain = b"\0" + user.encode("utf-8") + b"\0" + AUTH_USERS[user].encode()
        c.expect("AUTH PLAIN " + base64.b64encode(plain).decode(), "235")
        c.expect("MAIL FROM:<%s>%s" % (SENDER, " " + mail_params if mail_params else ""), "250")
        c.expect("RCPT TO:<%s>" % RCPT, "250")
        c.expect("DATA", "354")
        c.send(body + b".\r\n")
        c.reply()
        c.cmd("QUIT")
    finally:
        c.close()


@pytest.mark.parametrize("user,shown", [("j\u00f6rg", "j?rg"), ("a)b(c\\d", "a\\)b\\(c\\\\d")],
                         ids=["utf8-name", "parens"])
@pytest.mark.parametrize("params", ["", "SMTPUTF8"], ids=["plain", "smtputf8"])
def test_received_auth_user_stays_ascii(ringmx, nexthop, tmp_path, user, shown, params):
    """The message is all ASCII but for the user name we add: it goes to the
    hop without SMTPUTF8 as 7-bit mail, neither bounced 5.6.7 nor sent with
    8-bit header octets, and the name is shown so the comment stays one."""
    srv, nh, bounce = auth_gateway(ringmx, nexthop, tmp_path)
    mid = new_mid("authrcv")
    submit_as(srv.port, user, make_message(mid, "ascii"), params)
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    received = strip_received(t.data)[0]
    assert all(b < 0x80 for b in t.data), "8-bit octets in an ASCII message: %r" % received
    assert ("(authenticated as %s)" % shown).encode() in received, received
    assert "BODY" not in t.mail_params and "SMTPUTF8" not in t.mail_params, t.mail_params
    wait_queue_empty(srv)
    assert dsn_transactions(bounce) == []


# --------------------------------------------------------------------------
# item 3: NOTIFY=SUCCESS where the next hop cannot report it


def log_order(srv, first, second):
    """True when the log line matching regex `first` comes before the one
    matching `second` (both must be there)."""
    text = srv.log_text()
    a, b = re.search(first, text), re.search(second, text)
    assert a and b, "log lacks %r or %r:\n%s" % (first, second, srv.log_tail())
    return a.start() < b.start()


def check_success_dsn(d, rcpt, action):
    r = d.recipient(rcpt)
    assert r["action"].lower() == action, "expected Action: %s: %r" % (action, r)
    assert r["status"].startswith("2."), r
    assert d.msg["Subject"] == "Successful Mail Delivery Report", d.msg["Subject"]
    # RFC 3461 4.3: RET asks for the content of a failed DSN only
    assert d.returned_type == "text/rfc822-headers", d.part_types
    return r


@pytest.mark.parametrize("lmtp,action", [(False, "relayed"), (True, "delivered")],
                         ids=["smtp-relayed", "lmtp-delivered"])
def test_notify_success_hop_without_dsn(ringmx, nexthop, lmtp, action):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"dsn": False, "lmtp": lmtp})
    mid = new_mid("succ")
    qid = submit(srv.port, make_message(mid, "success report", b"body only RET=FULL returns\r\n"),
                 SENDER, [RCPT, "quiet@accepted.example"], mail_params="RET=FULL ENVID=ENV-1a+2Bx",
                 rcpt_params={RCPT: "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Btag@accepted.example"})
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert "NOTIFY" not in _rcpt_params(t, RCPT), "DSN parameters sent to a hop without DSN"
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    assert d.final_recipients() == [RCPT], \
        "only the NOTIFY=SUCCESS recipient is reported: %r" % d.recipients
    r = check_success_dsn(d, RCPT, action)
    assert r.get("remote-mta") == "dns; [127.0.0.1]", r
    assert r.get("original-recipient") == "rfc822;orig+tag@accepted.example", r
    assert d.per_message.get("original-envelope-id") == "ENV-1a+x", d.per_message
    assert b"body only RET=FULL returns" not in d.returned_bytes()
    assert b"Message-ID: <%s>" % mid.encode() in d.returned_bytes()
    wait_queue_empty(srv)
    # Durable before done: the report is queued before the original's
    # recipients are final (so a crash repeats the delivery, never loses it)
    assert log_order(srv, r"event=bounce_queued id=%s .*action=success" % qid,
                     r"event=done id=%s" % qid)
    assert len(dsn_transactions(bounce)) == 1, dsn_transactions(bounce)
    assert len(nh.by_message_id(mid)) == 1, "delivered more than once"


def test_notify_success_passed_to_dsn_hop(ringmx, nexthop):
    """A hop that offers DSN gets NOTIFY and reports itself: no DSN from us."""
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"dsn": True})
    mid = new_mid("succdsn")
    qid = submit(srv.port, make_message(mid, "dsn hop"), SENDER, [RCPT],
                 rcpt_params={RCPT: "NOTIFY=SUCCESS"})
    [t] = nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    assert (_rcpt_params(t, RCPT).get("NOTIFY") or "").upper() == "SUCCESS"
    wait_queue_empty(srv)
    wait_log(srv, "done", qid)
    # a DSN is queued before its original is done: with the queue empty, a
    # DSN would have arrived by now
    assert dsn_transactions(bounce) == [] and bounce.connection_count == 0


@pytest.mark.parametrize("sender,params", [
    ("", "NOTIFY=SUCCESS"),                # null sender: never a DSN
    (SENDER, "NOTIFY=FAILURE,DELAY"),      # SUCCESS not asked for
    (SENDER, ""),                          # no NOTIFY: failures only
    (SENDER, "NOTIFY=NEVER"),
], ids=["null-sender", "notify-failure", "no-notify", "notify-never"])
def test_no_success_dsn(ringmx, nexthop, sender, params):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"dsn": False})
    mid = new_mid("nosucc")
    qid = submit(srv.port, make_message(mid, "no report", sender=sender or "x@client.example"),
                 sender, [RCPT], rcpt_params={RCPT: params})
    nh.wait_message_id(mid, DELIVERY_TIMEOUT_S)
    wait_queue_empty(srv)
    wait_log(srv, "done", qid)
    assert dsn_transactions(bounce) == [] and bounce.connection_count == 0, \
        bounce.transactions()


def test_success_and_failure_in_one_report(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"dsn": False, "rules": [
        Rule("rcpt", "550 5.1.1 No such user", rcpt="nouser@accepted.example")]})
    mid = new_mid("mixed")
    submit(srv.port, make_message(mid, "mixed", b"the body\r\n"), SENDER,
           [RCPT, "nouser@accepted.example"], mail_params="RET=FULL",
           rcpt_params={RCPT: "NOTIFY=SUCCESS,FAILURE"})
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    assert d.final_recipients() == ["nouser@accepted.example", RCPT], d.recipients
    assert d.recipient(RCPT)["action"].lower() == "relayed"
    assert d.recipient("nouser@accepted.example")["action"].lower() == "failed"
    assert d.returned_type == "message/rfc822", "RET=FULL applies to the failure"
    wait_queue_empty(srv)
    assert len(dsn_transactions(bounce)) == 1


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_notify_success_local_delivery(ringmx, nexthop, tmp_path, kind):
    base = str(tmp_path / kind)
    os.makedirs(base)
    bounce = nexthop()
    srv = ringmx(delivery_overrides([route("local.example", "%s:%s" % (kind, base)),
                                     route("sender.example", bounce)], ["local.example"]))
    mid = new_mid("succlocal")
    qid = submit(srv.port, make_message(mid, "local", to="alice@local.example"), SENDER,
                 ["alice@local.example"], rcpt_params={"alice@local.example": "NOTIFY=SUCCESS"})
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    r = check_success_dsn(d, "alice@local.example", "delivered")
    assert "remote-mta" not in r, "no remote MTA for a local delivery: %r" % r
    wait_queue_empty(srv)
    wait_log(srv, "delivered", qid)
    assert log_order(srv, r"event=bounce_queued id=%s " % qid, r"event=done id=%s" % qid)


# --------------------------------------------------------------------------
# item 8: DSN details

U8_REPLY = "550 5.2.2 Postfach voll \u2013 M\u00fcller"


def test_utf8_reply_kept_in_utf8_dsn(ringmx, nexthop):
    """UTF-8 reply text reaches the RFC 6533 report as UTF-8; what a hop
    could use to reach a terminal or add a field never does: C0 and C1
    controls (U+009B is CSI), malformed octets."""
    raw = U8_REPLY.encode() + b" \xc2\x9b31m\x1b[0m \xff\xc3\r\n"
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [Rule("rcpt", raw, raw=True)]})
    submit(srv.port, make_message(new_mid("u8reply"), "ascii", UTF8_BODY, UTF8_BODY_HEADERS),
           SENDER, [RCPT], mail_params="SMTPUTF8 BODY=8BITMIME")
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    assert d.part_types[1] == "message/global-delivery-status", d.part_types
    diag = re.sub(rb"\r\n[ \t]+", b" ", txn.data)
    want = "Diagnostic-Code: smtp; 550 5.2.2 Postfach voll \u2013 M\u00fcller ??31m?[0m ??\r\n"
    assert want.encode() in diag, "the UTF-8 reply text is not in the UTF-8 report: %r" % txn.data
    assert b"\xc2\x9b" not in txn.data and b"\x1b" not in txn.data, txn.data
    wait_queue_empty(srv)


def test_utf8_reply_sanitised_in_7bit_dsn(ringmx, nexthop):
    """The 7-bit report stays 7-bit: one '?' per character, no raw octets;
    control bytes and malformed UTF-8 from the hop never get through."""
    raw = (U8_REPLY.encode() + b" \xff\x1b[31m\xc3\r\n")
    srv, nh, bounce = gateway(ringmx, nexthop,
                              hop={"rules": [Rule("rcpt", raw, raw=True)]})
    submit(srv.port, make_message(new_mid("u8seven"), "ascii"), SENDER, [RCPT])
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    assert d.part_types[1] == "message/delivery-status", d.part_types
    assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]", txn.data), \
        "8-bit or control octets in a 7-bit DSN: %r" % txn.data
    r = d.recipient(RCPT)
    assert r.get("diagnostic-code") == \
        "smtp; 550 5.2.2 Postfach voll ? M?ller ??[31m?", r
    wait_queue_empty(srv)


def test_envid_orcpt_decoded_in_bounce(ringmx, nexthop):
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [
        Rule("rcpt", "550 5.1.1 No such user")]})
    submit(srv.port, make_message(new_mid("xtext"), "xtext"), SENDER, [RCPT],
           mail_params="ENVID=ENV-1a+2Bx+3Dy",
           rcpt_params={RCPT: "ORCPT=rfc822;orig+2Btag+3Dz@accepted.example"})
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    assert d.per_message.get("original-envelope-id") == "ENV-1a+x=y", d.per_message
    r = d.recipient(RCPT)
    assert r.get("original-recipient") == "rfc822;orig+tag=z@accepted.example", r
    assert r.get("remote-mta") == "dns; [127.0.0.1]", r
    wait_queue_empty(srv)


def test_envid_with_control_bytes_not_decoded(ringmx, nexthop):
    """An ENVID or ORCPT that decodes to CR LF is shown as sent (xtext is
    visible ASCII): no header field can be injected into the report."""
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [
        Rule("rcpt", "550 5.1.1 No such user")]})
    submit(srv.port, make_message(new_mid("xtextbad"), "xtext"), SENDER, [RCPT],
           mail_params="ENVID=a+0D+0ABcc:+20x@evil.example",
           rcpt_params={RCPT: "ORCPT=rfc822;b+0D+0AX-Evil:+20y@accepted.example"})
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    assert d.per_message.get("original-envelope-id") == "a+0D+0ABcc:+20x@evil.example"
    assert d.recipient(RCPT).get("original-recipient") == \
        "rfc822;b+0D+0AX-Evil:+20y@accepted.example"
    assert b"\r\nBcc:" not in txn.data and b"\r\nX-Evil:" not in txn.data
    wait_queue_empty(srv)


@pytest.mark.parametrize("lmtp", [False, True], ids=["smtp", "lmtp"])
def test_remote_mta_ipv6_route(ringmx, nexthop, lmtp):
    try:
        nh = nexthop(host="::1", lmtp=lmtp, rules=[Rule("rcpt", "550 5.1.1 No such user")])
    except OSError as e:
        pytest.skip("no IPv6 loopback: %s" % e)
    bounce = nexthop()
    srv = ringmx(delivery_overrides(
        [route("accepted.example", "%s://[::1]:%d" % ("lmtp" if lmtp else "smtp", nh.port)),
         route("sender.example", bounce)]))
    submit(srv.port, make_message(new_mid("v6"), "v6"), SENDER, [RCPT])
    [txn] = wait_dsn(bounce, SENDER)
    r = check_dsn(txn, SENDER).recipient(RCPT)
    assert r.get("remote-mta") == "dns; [IPv6:::1]", r
    wait_queue_empty(srv)


def test_remote_mta_mx_name(ringmx, nexthop, dns):
    try:
        mx = nexthop(host="127.0.0.2", port=25, rules=[Rule("rcpt", "550 5.1.1 No such user")])
    except OSError as e:
        pytest.skip("cannot listen on 127.0.0.2:25 for the MX host: %s" % e)
    addr = dns({"mx.example": [("MX", 10, "mail.mx.example")],
                "mail.mx.example": [("A", "127.0.0.2")]})
    bounce = nexthop()
    srv = ringmx(delivery_overrides([route("sender.example", bounce), route("*", "mx")],
                                    ["mx.example"],
                                    dns={"servers": [addr], "timeout_ms": 1000, "tries": 2}))
    submit(srv.port, make_message(new_mid("mxname"), "mx"), SENDER, ["x@mx.example"])
    [txn] = wait_dsn(bounce, SENDER)
    r = check_dsn(txn, SENDER).recipient("x@mx.example")
    assert r.get("remote-mta") == "dns; mail.mx.example", r
    assert mx.connection_count >= 1, "the refusal did not come from the MX host"
    wait_queue_empty(srv)


def test_no_remote_mta_when_no_hop_answered(ringmx, nexthop, closed_port):
    """Remote-MTA names the MTA that answered; when none did, there is none."""
    port = closed_port()
    bounce = nexthop()
    srv = ringmx(delivery_overrides(
        [route("accepted.example", "smtp://127.0.0.1:%d" % port),
         route("sender.example", bounce)], delivery={"retry_s": [1], "max_age_s": 2}))
    submit(srv.port, make_message(new_mid("nohop"), "no hop"), SENDER, [RCPT])
    [txn] = wait_dsn(bounce, SENDER, timeout=DELIVERY_TIMEOUT_S + 10)
    r = check_dsn(txn, SENDER).recipient(RCPT)
    assert r["action"].lower() == "failed" and "remote-mta" not in r, r
    wait_queue_empty(srv)


def test_more_recipients_than_one_dsn_holds(ringmx, nexthop):
    """DSN_RCPT_MAX (1000) results fit one DSN: 1100 refused recipients get
    two DSNs, one after the other, and the message leaves the queue (it
    used to fail to build, -E2BIG, and stay queued for ever)."""
    n = 1100
    rcpts = ["u%04d@accepted.example" % i for i in range(n)]
    srv, nh, bounce = gateway(ringmx, nexthop, hop={"rules": [
        Rule("rcpt", "550 5.1.1 No such user")]}, limits={"recipients": n})
    qid = submit(srv.port, make_message(new_mid("many"), "many"), SENDER, rcpts, timeout=60)
    txns = wait_dsn(bounce, SENDER, n=2)
    got = []
    for t in txns:
        d = check_dsn(t, SENDER)
        assert all(r["action"].lower() == "failed" for r in d.recipients)
        got.append(len(d.recipients))
    assert sorted(got) == [n - 1000, 1000], got
    assert sorted(r for t in txns for r in Dsn(t.data).final_recipients()) == rcpts
    wait_queue_empty(srv)
    assert len(dsn_transactions(bounce)) == 2
    wait_log(srv, "done", qid)
