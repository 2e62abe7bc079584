"""File tables (issue 11, step 2): `"tables": {"NAME": {"file": PATH}}`
against the real binary.

The common use is recipient verification: a list of valid mailboxes that
another system writes out, and a gateway that refuses the rest at RCPT.
What a mail admin counts on, and what is tested here:
 - the file's format: one key per line ("key" or "key value", the value
   ignored), blank lines and '#' comments skipped; keys used like an
   inline table's (addresses and "@domain", domains and "*.suffix",
   networks);
 - a bad file is refused at load, naming the table and the line;
 - a changed file (written anew and renamed over, or rewritten in place)
   is read again while the server runs: new recipients accepted, removed
   ones refused, with event=table_reloaded;
 - a change that does not load (bad entry, NUL byte, the file deleted or
   replaced by a directory) keeps the old contents, and says so once per
   change (event=table_reload_failed), not once a second;
 - swapping the file under SMTP load drops no session and answers every
   RCPT with the old or the new verdict, never anything else.

Reloads are waited for by polling the log for their line with a deadline;
a check "the server looked at the file again and said nothing" waits for
two reloads of another table, which take at least two more looks."""

import collections
import os
import socket
import threading
import time
import traceback

import pytest

from conftest import SMTPClient, dot_stuff, queued_id, wait_for
from logparse import parse_kv, text
from test_check_config import check, start_fails, write

# A change is picked up within ~2-3 s; this deadline is generous (ASan).
RELOAD_S = 20.0
NO_SUCH_USER = "550 5.1.1 no such user"
VERIFY = {"if": {"rcpt_domain": "accepted.example", "not": {"rcpt": {"table": "valid"}}},
          "then": {"reject": NO_SUCH_USER, "tarpit_ms": 300}}
BODY = b"Subject: file tables\r\n\r\nhello\r\n"


# --------------------------------------------------------------------------
# helpers


def put(path, lines, inplace=False):
    """Write the table file: lines (str, or bytes as they are).  By default a
    new file renamed over the old (what a generator script does); inplace
    rewrites the same inode (what an editor without backup files does)."""
    data = lines if isinstance(lines, bytes) else "".join(ln + "\n" for ln in lines).encode()
    path = str(path)
    if inplace:
        with open(path, "wb") as f:
            f.write(data)
        return
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def table_events(srv, event, table):
    """event=EVENT lines for table NAME, as dicts, in order (whole lines only)."""
    out = []
    for line in srv.log_text().split("\n")[:-1]:
        if (" event=%s " % event) in line:
            kv = {k: text(v) for k, v in parse_kv(line)}
            if kv.get("table") == table:
                out.append(kv)
    return out


def wait_table(srv, event, table, n):
    """Wait until the log holds n event=EVENT lines for table; returns them."""
    try:
        return wait_for(lambda: len(table_events(srv, event, table)) >= n
                        and table_events(srv, event, table),
                        RELOAD_S, "%d x event=%s table=%s" % (n, event, table), interval=0.05)
    except AssertionError as e:
        raise AssertionError("%s\n--- log tail ---\n%s" % (e, srv.log_tail(30))) from None


def rcpt_codes(port, rcpts, ehlo="client.example", sender="s@client.example"):
    """One session: MAIL, then each RCPT; {rcpt: last reply line}."""
    c = SMTPClient(port, timeout=20)
    try:
        c.ehlo(ehlo)
        c.expect("MAIL FROM:<%s>" % sender, "250")
        out = {r: c.cmd("RCPT TO:<%s>" % r).last for r in rcpts}
        c.expect("QUIT", "221")
        return out
    finally:
        c.close()


def verdicts(port, rcpts):
    """{rcpt: 'ok' | 'nouser' | the reply} for RCPTs to accepted.example."""
    out = {}
    for r, line in rcpt_codes(port, rcpts).items():
        out[r] = ("ok" if line.startswith("250 2.1.5") else
                  "nouser" if line == NO_SUCH_USER else line)
    return out


def connect_from(port, src, timeout=10.0):
    """An SMTPClient from loopback address src (the banner not read yet)."""
    c = SMTPClient.__new__(SMTPClient)
    c.timeout, c.buf, c.eof, c.banner = timeout, b"", False, None
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                      source_address=(src, 0))
    return c


def touch_other(srv, path, n):
    """Change the `other` table's file and wait for its n-th reload: the
    main thread has looked at every file at least twice more since."""
    put(path, ["other%d.example" % n])
    wait_table(srv, "table_reloaded", "other", n)


def two_tables(tmp_path, valid_lines):
    """Config with the verifying `valid` table and a second file table
    `other` (helo names) used by a rule that never matches in these tests."""
    valid, other = tmp_path / "valid.txt", tmp_path / "other.txt"
    put(valid, valid_lines)
    put(other, ["other0.example"])
    over = {"tables": {"valid": {"file": str(valid)}, "other": {"file": str(other)}},
            "filters": {"helo": [{"if": {"helo": {"table": "other"}}, "then": "reject"}],
                        "rcpt": [VERIFY]}}
    return over, valid, other


# --------------------------------------------------------------------------
# the format, and load errors


def test_recipient_verification_from_file(ringmx, client_factory, tmp_path):
    path = tmp_path / "valid.txt"
    put(path, ["# mailboxes of accepted.example, written by the directory export",
               "a@accepted.example",
               "B@Accepted.Example   x@accepted.example",
               "",
               "   # d@accepted.example is commented out",
               "\tc@accepted.example\t",
               "   ",
               "last@accepted.example"])
    srv = ringmx({"tables": {"valid": {"file": str(path)}}, "filters": {"rcpt": [VERIFY]}})
    c = client_factory(srv.port)
    c.ehlo()
    c.expect("MAIL FROM:<s@client.example>", "250 2.1.0")
    for ok in ("a@accepted.example", "b@accepted.example", "C@ACCEPTED.EXAMPLE",
               "last@accepted.example"):
        r = c.cmd("RCPT TO:<%s>" % ok)
        assert r.startswith("250 2.1.5"), (ok, r)
    for bad in ("nobody@accepted.example", "x@accepted.example", "d@accepted.example",
                "#@accepted.example"):
        c.send("RCPT TO:<%s>\r\n" % bad)
        # The 300 ms tarpit: nothing can be answered within 100 ms.
        assert not c.data_available(0.1), "no tarpit before refusing %s" % bad
        r = c.reply(timeout=20)
        assert r.last == NO_SUCH_USER, (bad, r)
    # The relay policy stays first: another domain is not a verification matter.
    assert c.cmd("RCPT TO:<a@other.example>").startswith("554 5.7.1"), "relayed"
    c.expect("DATA", "354")
    c.send(dot_stuff(BODY) + b".\r\n")
    queued_id(c.reply(timeout=20))
    c.expect("QUIT", "221")
    assert srv.stop() == 0
    refusals = [ln for ln in srv.log_text().splitlines()
                if " event=filter " in ln and "rule=filters.rcpt[0]" in ln]
    assert len(refusals) == 4, refusals
    assert all("action=reject" in ln and "tarpit_ms=300" in ln for ln in refusals), refusals


def test_domain_and_network_forms(ringmx, conn_from, tmp_path):
    """A domain table ("x" and "*.suffix") used at helo and mail, an
    address table with "@domain" at rcpt, a network table at connect."""
    doms, team, nets = tmp_path / "doms", tmp_path / "team", tmp_path / "nets"
    put(doms, ["spam.example", "*.bad.example  # a comment after the key is its value"])
    put(team, ["@team.sub.example", "boss@x.sub.example"])
    put(nets, ["127.0.0.2", "# 127.0.0.3", "127.0.0.64/26 the lab", "2001:db8::/32"])
    srv = ringmx({
        "tables": {"doms": {"file": str(doms)}, "team": {"file": str(team)},
                   "nets": {"file": str(nets)}},
        "filters": {
            "connect": [{"if": {"client_ip": {"table": "nets"}},
                         "then": {"reject": "554 5.7.1 %{client_ip} blocked"}}],
            "helo": [{"if": {"helo": {"table": "doms"}}, "then": {"reject": "550 5.7.1 helo"}}],
            "mail": [{"if": {"sender_domain": {"table": "doms"}},
                      "then": {"reject": "550 5.7.1 sender"}}],
            "rcpt": [{"if": {"rcpt_domain": "*.sub.example", "not": {"rcpt": {"table": "team"}}},
                      "then": {"reject": "550 5.1.1 unknown"}}]}})
    for src, blocked in (("127.0.0.2", True), ("127.0.0.3", False), ("127.0.0.63", False),
                         ("127.0.0.64", True), ("127.0.0.127", True), ("127.0.0.128", False)):
        c = conn_from(srv.port, src)
        if blocked:
            rs = c.replies_until_closed()
            assert [r.last for r in rs] == ["554 5.7.1 %s blocked" % src], (src, rs)
        else:
            assert c.reply().code == 220, src
            c.expect("QUIT", "221")
    c = conn_from(srv.port, "127.0.0.1")
    assert c.reply().code == 220
    for name, ok in (("spam.example", False), ("SPAM.Example", False), ("x.bad.example", False),
                     ("a.b.bad.example", False), ("bad.example", True), ("ham.example", True)):
        r = c.cmd("EHLO " + name)
        assert (r.code == 250) == ok, (name, r)
    for sender, ok in (("u@spam.example", False), ("u@y.bad.example", False),
                       ("u@bad.example", True)):
        r = c.cmd("MAIL FROM:<%s>" % sender)
        assert (r.code == 250) == ok, (sender, r)
        if ok:
            c.expect("RSET", "250")
    c.expect("MAIL FROM:<u@ham.example>", "250")
    for rcpt, ok in (("anyone@team.sub.example", True), ("Boss@X.sub.example", True),
                     ("other@x.sub.example", False), ("boss@team2.sub.example", False)):
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        assert r.code == (250 if ok else 550), (rcpt, r)
    c.expect("QUIT", "221")
    assert srv.stop() == 0


def test_crlf_file_without_final_newline(ringmx, tmp_path):
    """A list exported on Windows: CRLF lines, no newline after the last."""
    path = tmp_path / "valid.txt"
    put(path, b"# export\r\na@accepted.example\r\n\r\nb@accepted.example value\r\n"
              b"last@accepted.example")
    srv = ringmx({"tables": {"valid": {"file": str(path)}}, "filters": {"rcpt": [VERIFY]}})
    rcpts = ["a@accepted.example", "b@accepted.example", "last@accepted.example",
             "value@accepted.example"]
    assert verdicts(srv.port, rcpts) == dict(zip(rcpts, ["ok", "ok", "ok", "nouser"]))
    assert srv.stop() == 0


def test_big_file_reloaded(ringmx, tmp_path):
    """100,000 mailboxes, replaced by another 100,000: all of the new list
    is used, none of the old."""
    path = tmp_path / "valid.txt"
    n = 100000
    put(path, ["old%d@accepted.example" % i for i in range(n)])
    srv = ringmx({"tables": {"valid": {"file": str(path)}}, "filters": {"rcpt": [VERIFY]}})
    probe = ["old0@accepted.example", "old%d@accepted.example" % (n - 1),
             "new0@accepted.example", "new%d@accepted.example" % (n - 1)]
    assert verdicts(srv.port, probe) == dict(zip(probe, ["ok", "ok", "nouser", "nouser"]))
    put(path, ["new%d@accepted.example" % i for i in range(n)])
    ev = wait_table(srv, "table_reloaded", "valid", 1)
    assert ev[0]["entries"] == str(n), ev
    assert verdicts(srv.port, probe) == dict(zip(probe, ["nouser", "nouser", "ok", "ok"]))
    assert srv.stop() == 0


@pytest.mark.parametrize("case", ["bad_entry", "nul_byte", "directory", "cidr_host_bits"])
def test_bad_file_refused_at_load(tmp_path, case):
    path = str(tmp_path / "t.txt")
    use = {"rcpt": {"table": "t"}}
    if case == "bad_entry":
        put(path, ["# valid users", "a@accepted.example", "", "not-an-address"])
        where = "line 4"
    elif case == "nul_byte":
        put(path, b"a@accepted.example\nb@acc\0epted.example\n")
        where = "line 2"
    elif case == "directory":
        os.mkdir(path)
        where = None
    else:
        put(path, ["10.0.0.0/8", "192.0.2.1/24"])
        use = {"client_ip": {"table": "t"}}
        where = "line 2"
    stage = "connect" if "client_ip" in use else "rcpt"
    cfg = write(tmp_path, {"tables": {"t": {"file": path}},
                           "filters": {stage: [{"if": use, "then": "reject"}]}})
    rc, _, err = check(cfg)
    assert rc == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("tables.t.file: ")]
    assert len(lines) == 1, err
    if where:
        assert lines[0].startswith("tables.t.file: %s: " % where), lines[0]
    out = start_fails(cfg, str(tmp_path))
    assert "tables.t.file: " in out, out


# --------------------------------------------------------------------------
# reloads


@pytest.mark.parametrize("how", ["rename", "inplace"])
def test_changed_file_is_read_again(ringmx, tmp_path, how):
    path = tmp_path / "valid.txt"
    put(path, ["a@accepted.example", "b@accepted.example"])
    srv = ringmx({"tables": {"valid": {"file": str(path)}}, "filters": {"rcpt": [VERIFY]}})
    rcpts = ["a@accepted.example", "b@accepted.example", "c@accepted.example"]
    assert verdicts(srv.port, rcpts) == {rcpts[0]: "ok", rcpts[1]: "ok", rcpts[2]: "nouser"}
    # A session open across the reload sees the new contents at its next RCPT.
    early = SMTPClient(srv.port, timeout=20)
    try:
        early.ehlo()
        early.expect("MAIL FROM:<s@client.example>", "250")
        put(path, ["# a left", "b@accepted.example", "c@accepted.example  new"],
            inplace=how == "inplace")
        ev = wait_table(srv, "table_reloaded", "valid", 1)
        assert ev[0]["file"] == str(path) and ev[0]["entries"] == "2", ev
        assert early.cmd("RCPT TO:<c@accepted.example>").startswith("250 2.1.5")
        assert early.cmd("RCPT TO:<a@accepted.example>", timeout=20).last == NO_SUCH_USER
        early.expect("QUIT", "221")
    finally:
        early.close()
    assert verdicts(srv.port, rcpts) == {rcpts[0]: "nouser", rcpts[1]: "ok", rcpts[2]: "ok"}
    # And again: every change is picked up, not only the first.
    put(path, ["a@accepted.example"], inplace=how == "inplace")
    ev = wait_table(srv, "table_reloaded", "valid", 2)
    assert ev[1]["entries"] == "1", ev
    assert verdicts(srv.port, rcpts) == {rcpts[0]: "ok", rcpts[1]: "nouser", rcpts[2]: "nouser"}
    assert srv.stop() == 0
    assert table_events(srv, "table_reload_failed", "valid") == []


def test_bad_change_keeps_old_contents_logged_once(ringmx, tmp_path):
    over, valid, other = two_tables(tmp_path, ["a@accepted.example", "b@accepted.example"])
    srv = ringmx(over)
    rcpts = ["a@accepted.example", "b@accepted.example", "c@accepted.example"]
    old = {rcpts[0]: "ok", rcpts[1]: "ok", rcpts[2]: "nouser"}
    # c added, a removed, and a bad line: nothing of it may take effect.
    put(valid, ["b@accepted.example", "c@accepted.example", "not-an-address"])
    ev = wait_table(srv, "table_reload_failed", "valid", 1)
    assert ev[0]["file"] == str(valid), ev
    assert "line 3" in ev[0]["error"], ev
    assert verdicts(srv.port, rcpts) == old
    touch_other(srv, other, 1)
    touch_other(srv, other, 2)
    assert len(table_events(srv, "table_reload_failed", "valid")) == 1, \
        "a failed reload is logged again while the file did not change:\n" + srv.log_tail(20)
    # A second bad change (a NUL byte) is a new change: logged again, still old.
    put(valid, b"c@accepted.example\nb@accepted\0.example\n")
    ev = wait_table(srv, "table_reload_failed", "valid", 2)
    assert "line 2" in ev[1]["error"], ev
    assert verdicts(srv.port, rcpts) == old
    # Fixed: the new contents at last.
    put(valid, ["b@accepted.example", "c@accepted.example"])
    ev = wait_table(srv, "table_reloaded", "valid", 1)
    assert ev[0]["entries"] == "2", ev
    assert verdicts(srv.port, rcpts) == {rcpts[0]: "nouser", rcpts[1]: "ok", rcpts[2]: "ok"}
    assert srv.stop() == 0
    assert len(table_events(srv, "table_reload_failed", "valid")) == 2


def test_directory_in_place_of_the_file_keeps_old_contents(ringmx, tmp_path):
    over, valid, other = two_tables(tmp_path, ["a@accepted.example"])
    srv = ringmx(over)
    rcpts = ["a@accepted.example", "c@accepted.example"]
    os.unlink(str(valid))
    os.mkdir(str(valid))
    ev = wait_table(srv, "table_reload_failed", "valid", 1)
    assert ev[0]["file"] == str(valid), ev
    assert verdicts(srv.port, rcpts) == {rcpts[0]: "ok", rcpts[1]: "nouser"}
    touch_other(srv, other, 1)
    touch_other(srv, other, 2)
    assert len(table_events(srv, "table_reload_failed", "valid")) == 1, srv.log_tail(20)
    os.rmdir(str(valid))
    put(valid, ["c@accepted.example"])
    wait_table(srv, "table_reloaded", "valid", 1)
    assert verdicts(srv.port, rcpts) == {rcpts[0]: "nouser", rcpts[1]: "ok"}
    assert srv.stop() == 0


def test_deleted_file_keeps_old_contents(ringmx, tmp_path):
    over, valid, other = two_tables(tmp_path, ["a@accepted.example"])
    srv = ringmx(over)
    rcpts = ["a@accepted.example", "c@accepted.example"]
    os.unlink(str(valid))
    # Two reloads of the other table: the deleted file was looked at since.
    touch_other(srv, other, 1)
    touch_other(srv, other, 2)
    assert verdicts(srv.port, rcpts) == {rcpts[0]: "ok", rcpts[1]: "nouser"}
    failed = table_events(srv, "table_reload_failed", "valid")
    # The file comes back with other contents: those are read.
    put(valid, ["c@accepted.example"])
    wait_table(srv, "table_reloaded", "valid", 1)
    assert verdicts(srv.port, rcpts) == {rcpts[0]: "nouser", rcpts[1]: "ok"}
    assert srv.stop() == 0
    # A deleted file is a change that does not load: said once.
    assert len(failed) == 1 and failed[0]["file"] == str(valid), \
        "deleting the table file was not logged once as table_reload_failed: %r\n%s" % (
            failed, srv.log_text())


def test_client_ip_table_file_reloaded(ringmx, conn_from, tmp_path):
    nets = tmp_path / "nets"
    put(nets, ["127.0.0.2", "127.0.0.64/26"])
    srv = ringmx({"tables": {"nets": {"file": str(nets)}},
                  "filters": {"connect": [{"if": {"client_ip": {"table": "nets"}},
                                           "then": {"reject": "554 5.7.1 go away"}}]}})

    def blocked(src):
        c = conn_from(srv.port, src)
        r = c.reply()
        if r.code == 220:
            c.expect("QUIT", "221")
            return False
        assert r.last == "554 5.7.1 go away", r
        assert c.read_until_closed() == b""
        return True

    srcs = ["127.0.0.2", "127.0.0.3", "127.0.0.70"]
    assert [blocked(s) for s in srcs] == [True, False, True]
    put(nets, ["127.0.0.3/32", "# the lab is fine now"])
    ev = wait_table(srv, "table_reloaded", "nets", 1)
    assert ev[0]["entries"] == "1", ev
    assert [blocked(s) for s in srcs] == [False, True, False]
    # A network with host bits set is a bad entry: the old contents stay.
    put(nets, ["127.0.0.2/24"])
    wait_table(srv, "table_reload_failed", "nets", 1)
    assert [blocked(s) for s in srcs] == [False, True, False]
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# under load


def test_file_table_swapped_under_load(ringmx, tmp_path):
    """8 clients send mail without a pause, each to its own recipient (valid
    in every version of the file) and to flip@ (valid in the even versions
    only), while the file is swapped 10 times.  A flip RCPT sent after a
    version's reload was logged and answered before the next file was
    written must get that version's answer; every other one gets one of the
    two; every message is queued; no session drops.  A 100 ms tarpit on
    flip@ (a rule that waits and goes on) paces the clients, which bounds
    the count of messages."""
    threads_n, swaps, per_session, max_msgs = 8, 10, 40, 20000
    path = tmp_path / "valid.txt"
    stable = ["t%d@accepted.example" % i for i in range(threads_n)]
    flip = "flip@accepted.example"

    def version(k):
        lines = ["# version %d" % k] + stable + ["pad%d-%d@accepted.example" % (k, j)
                                                 for j in range(k * 7)]
        return lines + [flip] if k % 2 == 0 else lines

    put(path, version(0))
    # Every refused flip@ is a session error: the limit is above a session's count.
    srv = ringmx({"limits": {"errors": 1000},
                  "tables": {"valid": {"file": str(path)}},
                  "filters": {"rcpt": [{"if": {"rcpt": flip}, "tarpit_ms": 100},
                                       {"if": VERIFY["if"], "then": {"reject": NO_SUCH_USER}}]}})
    stop = threading.Event()
    lock = threading.Lock()
    flips = []        # (sent at, answered at, code, line)
    errors = []
    stats = collections.Counter()

    def worker(i):
        try:
            while not stop.is_set() and stats["messages"] < max_msgs:
                c = SMTPClient(srv.port, timeout=60)
                try:
                    c.ehlo("load%d.example" % i)
                    for _ in range(per_session):
                        if stop.is_set():
                            break
                        c.expect("MAIL FROM:<s%d@client.example>" % i, "250 2.1.0")
                        c.expect("RCPT TO:<%s>" % stable[i], "250 2.1.5")
                        t0 = time.monotonic()
                        r = c.cmd("RCPT TO:<%s>" % flip)
                        with lock:
                            flips.append((t0, time.monotonic(), r.code, r.last))
                        c.expect("DATA", "354")
                        c.send(dot_stuff(BODY) + b".\r\n")
                        queued_id(c.reply())
                        with lock:
                            stats["messages"] += 1
                    c.expect("QUIT", "221")
                    assert c.read_until_closed() == b""
                    with lock:
                        stats["sessions"] += 1
                finally:
                    c.close()
        except BaseException:
            with lock:
                errors.append("client %d: %s" % (i, traceback.format_exc()))

    def seen_since(t):
        with lock:
            return bool(errors) or any(a >= t for a, _, _, _ in flips)

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads_n)]
    for t in ts:
        t.start()
    windows = []  # (version, from, to): flip RCPTs sent and answered in it see that version
    try:
        start = time.monotonic()
        for k in range(1, swaps + 2):
            wait_for(lambda: seen_since(start), RELOAD_S, "a flip RCPT under version %d" % (k - 1))
            assert not errors, "\n".join(errors)
            windows.append((k - 1, start, time.monotonic()))
            if k > swaps:
                break
            put(path, version(k))
            ev = wait_table(srv, "table_reloaded", "valid", k)
            assert ev[-1]["entries"] == str(len(version(k)) - 1), ev[-1]
            start = time.monotonic()
    finally:
        stop.set()
        for t in ts:
            t.join(timeout=120)
    assert not any(t.is_alive() for t in ts), "a client is stuck"
    assert not errors, "\n".join(errors)
    assert stats["messages"] == len(flips) and stats["sessions"] >= threads_n, \
        (stats, len(flips))
    inside = collections.Counter()
    wrong = []
    for k, a, b in windows:
        for t0, t1, code, line in flips:
            if a <= t0 and t1 < b:
                inside[k] += 1
                if code != (250 if k % 2 == 0 else 550):
                    wrong.append((k, line))
    assert wrong == [], wrong[:10]
    assert sorted(inside) == list(range(swaps + 1)), inside
    other = [line for _, _, _, line in flips
             if not (line.startswith("250 2.1.5") or line == NO_SUCH_USER)]
    assert other == [], other[:10]
    assert srv.stop() == 0
    assert len(table_events(srv, "table_reloaded", "valid")) == swaps
    assert table_events(srv, "table_reload_failed", "valid") == []


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture
def conn_from():
    made = []

    def make(port, src):
        c = connect_from(port, src)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
