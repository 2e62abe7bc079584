"""ringmx delivering over LMTP (RFC 2033) to a real Dovecot (Debian's
dovecot-lmtpd, a private instance per test from peers.py) with a passwd-file
userdb, Maildirs and the quota plugin.  LMTP answers once per recipient after
the message, so one message meets every outcome at once: saved, unknown user
(550 at RCPT), over quota (552 5.2.2, or 452 4.2.2 with quota_full_tempfail),
and a mailbox it cannot write (451).  Delivered copies are compared byte for
byte with what was sent."""

import os
import re


from conftest import check_dsn, submit, wait_dsn, wait_for, wait_log, wait_queue_empty, wait_state
from conftest import new_mid
from nexthop import nexthop  # noqa: F401  (fixture)
from peers import (SENDER, dovecot, gateway, header_names, lf, peer_message,  # noqa: F401
                   stored_message)

DOM = "lmtp.example"
GOOD = "good@lmtp.example"
GOOD2 = "second@lmtp.example"
UNKNOWN = "nobody-here@lmtp.example"
FULL = "full@lmtp.example"
FULL_TEMP = "full-temp@lmtp.example"
LOCKED = "locked@lmtp.example"
SLOW_RETRY = {"retry_s": [3600], "max_age_s": 86400}
TINY_QUOTA = {"quota_rule": "*:storage=1K"}  # smaller than any test message


def check_dovecot_copy(stored, msg, dc, rcpt):
    """A message as Dovecot's LMTP saved it: Return-Path and its Received:
    on top, then ringmx's Received:, then exactly the message (LF lines)."""
    trace, ours, rest = stored_message(stored)
    assert rest == lf(msg), "Dovecot stored other bytes than were sent:\n%r\n!=\n%r" % (
        rest[-1500:], lf(msg)[-1500:])
    # Dovecot adds Delivered-To only when the transaction had one recipient
    names = header_names(trace)
    assert names in (["Return-Path", "Received"], ["Return-Path", "Delivered-To", "Received"]), \
        trace
    if "Delivered-To" in names:
        assert b"\nDelivered-To: " + rcpt.encode() + b"\n" in trace, trace
    assert trace.startswith(b"Return-Path: <" + SENDER.encode() + b">\n"), trace
    assert re.search(rb"(?m)^Received: from gw\.test \(\[127\.0\.0\.1\]\)\n\tby "
                     + re.escape(dc.hostname.encode()) + rb" with LMTP\n", trace), trace
    assert ours.startswith(b"Received: from "), ours


def test_ringmx_to_dovecot_lmtp_bytes_exact(ringmx, nexthop, dovecot):
    dc = dovecot(users={GOOD: {}, GOOD2: {}})
    srv, bounce = gateway(ringmx, nexthop, dc, [DOM])
    msg = peer_message(new_mid("dc-bytes"), SENDER, GOOD)
    qid = submit(srv.port, msg, SENDER, [GOOD, GOOD2], mail_params="BODY=8BITMIME")
    for rcpt in (GOOD, GOOD2):
        [stored] = dc.wait_messages(rcpt, 1)
        check_dovecot_copy(stored, msg, dc, rcpt)
    wait_queue_empty(srv)
    # shard lines reach the log through the main thread: wait for both
    wait_for(lambda: len(re.findall(r"event=delivered id=%s " % qid, srv.all_logs())) == 2, 10,
             "two delivered lines")
    assert bounce.transaction_count == 0, bounce.transactions()


def test_dovecot_unknown_user_and_over_quota_bounce(ringmx, nexthop, dovecot):
    """550 5.1.1 at RCPT (unknown user) and 552 5.2.2 after the message (over
    quota) fail those two recipients, in one DSN that carries Dovecot's
    replies; the good recipient gets the message once."""
    dc = dovecot(users={GOOD: {}, FULL: TINY_QUOTA})
    srv, bounce = gateway(ringmx, nexthop, dc, [DOM], delivery=SLOW_RETRY)
    msg = peer_message(new_mid("dc-fail"), SENDER, GOOD)
    qid = submit(srv.port, msg, SENDER, [UNKNOWN, GOOD, FULL], mail_params="BODY=8BITMIME")
    [stored] = dc.wait_messages(GOOD, 1)
    check_dovecot_copy(stored, msg, dc, GOOD)
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    assert d.final_recipients() == sorted([UNKNOWN, FULL]), d.recipients
    unknown, full = d.recipient(UNKNOWN), d.recipient(FULL)
    assert unknown["action"].lower() == "failed" and unknown["status"] == "5.1.1", unknown
    assert "550 5.1.1" in unknown.get("diagnostic-code", "") and \
        "User doesn't exist" in unknown["diagnostic-code"], unknown
    assert full["action"].lower() == "failed" and full["status"] == "5.2.2", full
    assert "552 5.2.2" in full.get("diagnostic-code", "") and \
        "Quota exceeded" in full["diagnostic-code"], full
    wait_queue_empty(srv)
    wait_log(srv, "delivered", qid)
    assert dc.messages(FULL) == []
    assert len(dc.messages(GOOD)) == 1


def test_dovecot_temporary_failures_defer_then_deliver_once(ringmx, nexthop, dovecot):
    """452 4.2.2 (over quota with quota_full_tempfail) and 451 (a Maildir the
    user cannot write) defer those two recipients only; once the quota is
    raised and the directory writable, a retry delivers each exactly once and
    the recipient saved the first time gets no second copy."""
    dc = dovecot(users={GOOD: {}, LOCKED: {},
                        FULL_TEMP: {"quota_rule": "*:storage=5K", "quota_full_tempfail": "yes"}})
    dc.fill(FULL_TEMP, 4000)  # 4000 + the message > 5 KiB > the message alone
    # the user's home exists but belongs to root: Dovecot, running as the
    # user, cannot make its Maildir there
    locked_home = dc.home(LOCKED)
    os.chown(locked_home, 0, 0)
    srv, bounce = gateway(ringmx, nexthop, dc, [DOM], delivery=SLOW_RETRY)
    msg = peer_message(new_mid("dc-temp"), SENDER, GOOD)
    qid = submit(srv.port, msg, SENDER, [GOOD, FULL_TEMP, LOCKED], mail_params="BODY=8BITMIME")
    [stored] = dc.wait_messages(GOOD, 1)
    check_dovecot_copy(stored, msg, dc, GOOD)
    f = wait_state(srv, qid, "deferred")
    assert re.search(r"\b45[12] 4\.", f.get("error", "")), f
    def deferred_lines():
        return [ln for ln in srv.all_logs().splitlines() if "event=deferred id=%s " % qid in ln]
    deferred = wait_for(lambda: len(deferred_lines()) >= 2 and deferred_lines(), 10,
                        "two deferred lines")
    assert len(deferred) == 2, deferred
    text = "\n".join(deferred)
    assert re.search(r"rcpt=<%s> .*reply=\"\w+; 452 4\.2\.2 .*Quota exceeded" % FULL_TEMP,
                     text), text
    assert re.search(r"rcpt=<%s> .*reply=\"\w+; 451 4\." % LOCKED, text), text
    assert bounce.transaction_count == 0, bounce.transactions()
    # the causes go away: the full user deletes mail, the home is given
    # back to its user
    dc.empty(FULL_TEMP)
    os.chown(locked_home, dc.uid, dc.gid)
    srv.ctl("queue", "flush", qid)
    for rcpt in (FULL_TEMP, LOCKED):
        [stored] = dc.wait_messages(rcpt, 1)
        check_dovecot_copy(stored, msg, dc, rcpt)
    wait_queue_empty(srv)
    assert len(dc.messages(GOOD)) == 1, "the saved recipient got the retry too"
    assert bounce.transaction_count == 0, bounce.transactions()


def test_dovecot_ascii_message_taken_with_smtputf8(ringmx, nexthop, dovecot):
    """Dovecot 2.3's LMTP does not offer SMTPUTF8.  A message whose envelope
    and header are all ASCII does not need it (RFC 6531 3.4 forbids only
    sending UTF-8 addresses or headers to such a server), so it must be
    delivered, not bounced, when its client happened to say SMTPUTF8."""
    dc = dovecot(users={GOOD: {}})
    srv, bounce = gateway(ringmx, nexthop, dc, [DOM], delivery=SLOW_RETRY)
    msg = peer_message(new_mid("dc-utf8"), SENDER, GOOD)
    submit(srv.port, msg, SENDER, [GOOD], mail_params="SMTPUTF8 BODY=8BITMIME")
    wait_for(lambda: dc.messages(GOOD) or bounce.transaction_count, 30,
             "delivery to Dovecot or a bounce")
    assert bounce.transaction_count == 0, [t.data[-1500:] for t in bounce.transactions()]
    [stored] = dc.messages(GOOD)
    check_dovecot_copy(stored, msg, dc, GOOD)


def test_dovecot_utf8_address_bounces_5_6_7(ringmx, nexthop, dovecot):
    """A UTF-8 recipient needs SMTPUTF8, which Dovecot 2.3's LMTP does not
    offer: ringmx bounces it (5.6.7) and never sends it in clear ASCII."""
    dc = dovecot(users={GOOD: {}})
    srv, bounce = gateway(ringmx, nexthop, dc, [DOM], delivery=SLOW_RETRY)
    rcpt = "\u00fcser@lmtp.example"
    msg = peer_message(new_mid("dc-utf8addr"), SENDER, GOOD)
    submit(srv.port, msg, SENDER, [rcpt], mail_params="SMTPUTF8 BODY=8BITMIME")
    [txn] = wait_dsn(bounce, SENDER)
    d = check_dsn(txn, SENDER)
    assert [r["status"] for r in d.recipients] == ["5.6.7"], d.recipients
    wait_queue_empty(srv)
    assert "saved mail" not in dc.log_text(), dc.log_tail()


def test_dovecot_notify_success_gives_delivered_dsn(ringmx, nexthop, dovecot):
    """RCPT ... NOTIFY=SUCCESS, delivered into Dovecot (a final delivery over
    LMTP, a hop without DSN): RFC 3461 5.2.2 / 6.2 ask the last DSN-aware MTA
    for a success DSN, Action: delivered (or relayed), Status 2.x.x."""
    dc = dovecot(users={GOOD: {}})
    srv, bounce = gateway(ringmx, nexthop, dc, [DOM], delivery=SLOW_RETRY)
    msg = peer_message(new_mid("dc-notify"), SENDER, GOOD)
    submit(srv.port, msg, SENDER, [GOOD], mail_params="BODY=8BITMIME",
           rcpt_params={GOOD: "NOTIFY=SUCCESS"})
    [stored] = dc.wait_messages(GOOD, 1)
    check_dovecot_copy(stored, msg, dc, GOOD)
    # A DSN is queued before the message it reports on is done, so once the
    # queue is empty any DSN has reached the bounce hop.
    wait_queue_empty(srv)
    assert bounce.transaction_count == 1, "no success DSN:\n" + srv.log_tail()
    [txn] = bounce.transactions()
    d = check_dsn(txn, SENDER)
    r = d.recipient(GOOD)
    assert r["action"].lower() in ("delivered", "relayed") and r["status"].startswith("2."), r
