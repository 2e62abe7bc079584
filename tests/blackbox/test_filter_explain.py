"""`ringmxctl filter explain` (issue 11): the compiled chains of the running
server asked about a made-up session, stage by stage.

An admin runs explain to learn what the gateway will do with a client
before a real one comes, so the answer must be what a real session gets:
the same rule paths, verdicts and expanded replies, the relay policy first
at rcpt, the per-listener chain for --listener, a refusal at
connect/helo/mail ending the session, a refused AUTH going on
unauthenticated, rcpt_count counting only accepted recipients, a file
table's contents as last reloaded.  And it must be harmless: no
event=filter lines in the log, no sleeping for tarpits (a 300 s tarpit is
reported, not waited), clear errors for bad arguments (exit 1, "ERR filter
explain: ..."), a too-long command refused without a crash, and correct
answers while the server is under SMTP load."""

import socket
import threading
import traceback

import pytest

from conftest import SMTPClient, dot_stuff, free_port, queued_id, wait_for
from test_filter_tables import NO_SUCH_USER, put, wait_table

BODY = b"Subject: explain\r\n\r\nhello\r\n"


def config(tmp_path, valid=("a@accepted.example", "b@accepted.example", "c@accepted.example",
                            "d@accepted.example"), rcpt_tarpit=200):
    """A chain at every stage, a file table, and a second listener `sub`
    with its own rcpt chain (its other stages are the top-level ones)."""
    path = tmp_path / "valid.txt"
    put(path, list(valid))
    over = {
        "listeners": [
            {"name": "mx", "greet_pause_ms": 0},
            {"name": "sub", "address": "127.0.0.1:%d" % free_port(), "greet_pause_ms": 0,
             "filters": {"rcpt": [{"if": {"rcpt_domain": "accepted.example"},
                                   "then": {"reject": "550 5.7.1 not on this port"}}]}}],
        "tables": {"valid": {"file": str(path)}},
        "filters": {
            "connect": [
                {"if": {"client_ip": "10.9.9.0/24"},
                 "then": {"reject": "554 5.7.1 %{client_ip} is blocked"}},
                {"if": {"client_ip": "10.1.0.0/16"}, "tarpit_ms": 200},
                {"if": {"client_ip": "10.2.0.0/16"}, "then": "accept"}],
            "helo": [{"if": {"helo": "*.bad.example"},
                      "then": {"tempfail": "450 4.7.1 helo %{helo} later"}}],
            "auth": [{"if": {"auth_user": "mallory"}, "then": {"reject": "535 5.7.8 not you"}}],
            "mail": [
                {"if": {"sender": "<>"},
                 "then": {"reject": "550 5.7.1 no bounces from %{client_ip}"}},
                {"if": {"auth_user": True, "not": {"sender": {"matches_login": True}}},
                 "then": {"reject": "553 5.7.1 not your address"}},
                {"if": {"tls": False, "sender_domain": "secure.example"},
                 "then": {"reject": "530 5.7.0 tls required"}},
                {"if": {"tls": {"version": "1.2"}, "sender_domain": "secure.example"},
                 "then": {"reject": "550 5.7.1 tls 1.3 required"}}],
            "rcpt": [
                {"if": {"rcpt_domain": "accepted.example", "not": {"rcpt": {"table": "valid"}}},
                 "then": {"reject": NO_SUCH_USER, "tarpit_ms": rcpt_tarpit}},
                {"if": {"rcpt_count": {"gt": 3}},
                 "then": {"tempfail": "452 4.5.3 too many recipients"}}]}}
    return over, path


def explain(srv, *args, timeout=60):
    """The lines of a successful explain (ringmxctl consumed its "OK")."""
    out = srv.ctl("filter", "explain", *args, timeout=timeout).decode()
    assert out.endswith("\n"), out
    return out.splitlines()


def explain_err(srv, *args):
    """A refused explain: exit 1, one "ERR filter explain: " line; its text."""
    r = srv.ctl_run("filter", "explain", *args)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, (args, r)
    assert r.stdout == b"", (args, r.stdout)
    assert err.startswith("ERR filter explain: ") and err.endswith("\n"), (args, err)
    assert err.count("\n") == 1, (args, err)
    return err[len("ERR filter explain: "):].strip()


def filter_lines(srv):
    return [ln for ln in srv.log_text().splitlines() if " event=filter " in ln]


@pytest.fixture
def srv(ringmx, tmp_path):
    over, _ = config(tmp_path)
    return ringmx(over)


# --------------------------------------------------------------------------
# what it says


def test_whole_session(srv):
    assert explain(srv, "--listener", "mx", "--ip", "10.1.2.3", "--helo", "x.example",
                   "--from", "a@b.example", "--rcpt", "a@accepted.example",
                   "--rcpt", "nobody@accepted.example", "--rcpt", "c@other.example") == [
        "listener mx, client 10.1.2.3",
        "connect: wait 200 ms (filters.connect[1]), accept (default)",
        "helo x.example: accept (default)",
        "mail a@b.example: accept (default)",
        "rcpt a@accepted.example: accept (default)",
        "rcpt nobody@accepted.example: wait 200 ms (filters.rcpt[0]), "
        "reject (filters.rcpt[0]): " + NO_SUCH_USER,
        "rcpt c@other.example: reject (relay policy): "
        "554 5.7.1 <c@other.example>: Relay access denied"]
    assert explain(srv, "--ip", "10.2.0.1")[1:] == ["connect: accept (filters.connect[2])"]
    # A client in relay.networks may relay: the same policy as a session.
    assert explain(srv, "--ip", "192.0.2.7", "--from", "a@b.example",
                   "--rcpt", "c@other.example")[-1] == "rcpt c@other.example: accept (default)"


def test_same_as_a_real_session(srv, client_factory):
    """What explain says of a session is what the server answers it."""
    rcpts = ["a@accepted.example", "nobody@accepted.example", "c@other.example",
             "b@accepted.example", "zed@accepted.example", "c@accepted.example",
             "d@accepted.example"]
    lines = explain(srv, "--ip", "127.0.0.1", "--helo", "client.example",
                    "--from", "s@client.example", *[x for r in rcpts for x in ("--rcpt", r)])
    said = [ln.split(": ", 2)[-1] if "reject" in ln or "tempfail" in ln else "250"
            for ln in lines[4:]]
    c = client_factory(srv.port)
    c.ehlo("client.example")
    c.expect("MAIL FROM:<s@client.example>", "250")
    got = []
    for r in rcpts:
        rep = c.cmd("RCPT TO:<%s>" % r, timeout=20)
        got.append("250" if rep.code == 250 else rep.last)
    assert said == got, (lines, got)
    assert said[-1].startswith("452 4.5.3"), said


def test_refusal_ends_the_session(srv):
    rest = ["--helo", "a.bad.example", "--from", "<>", "--rcpt", "a@accepted.example"]
    assert explain(srv, "--ip", "10.9.9.9", *rest) == [
        "listener mx, client 10.9.9.9",
        "connect: reject (filters.connect[0]): 554 5.7.1 10.9.9.9 is blocked"]
    assert explain(srv, "--ip", "10.3.0.1", *rest)[1:] == [
        "connect: accept (default)",
        "helo a.bad.example: tempfail (filters.helo[0]): 450 4.7.1 helo a.bad.example later"]
    assert explain(srv, "--ip", "10.3.0.1", *rest[2:])[1:] == [
        "connect: accept (default)",
        "mail <>: reject (filters.mail[0]): 550 5.7.1 no bounces from 10.3.0.1"]


def test_absent_inputs_skip_their_stages(srv):
    assert explain(srv, "--ip", "10.3.0.1", "--rcpt", "a@accepted.example") == [
        "listener mx, client 10.3.0.1", "connect: accept (default)"]
    assert explain(srv, "--ip", "10.3.0.1", "--from", "s@client.example",
                   "--rcpt", "a@accepted.example")[1:] == [
        "connect: accept (default)", "mail s@client.example: accept (default)",
        "rcpt a@accepted.example: accept (default)"]
    out = explain(srv, "--ip", "10.3.0.1", "--from", "s@client.example")
    assert [ln.split(" ")[0] for ln in out[1:]] == ["connect:", "mail"], out


def test_null_sender_and_ipv6(srv):
    assert explain(srv, "--ip", "2001:db8::1", "--from", "<>")[1:] == [
        "connect: accept (default)",
        "mail <>: reject (filters.mail[0]): 550 5.7.1 no bounces from 2001:db8::1"]
    assert explain(srv, "--ip", "2001:db8::1", "--from", "<x@y.example>")[-1] == \
        "mail <x@y.example>: accept (default)"


def test_auth(srv):
    base = ["--ip", "10.3.0.1", "--helo", "x.example"]
    out = explain(srv, *base, "--auth-user", "alice@x.example", "--from", "alice@x.example",
                  "--rcpt", "c@other.example")
    assert out[3:] == ["auth alice@x.example: accept (default)",
                       "mail alice@x.example: accept (default)",
                       "rcpt c@other.example: accept (default)"], out
    out = explain(srv, *base, "--auth-user", "alice@x.example", "--from", "bob@x.example")
    assert out[-1] == "mail bob@x.example: reject (filters.mail[1]): 553 5.7.1 not your address"
    # A refused login goes on unauthenticated: no login to match, and no relay.
    out = explain(srv, *base, "--auth-user", "mallory", "--from", "bob@x.example",
                  "--rcpt", "c@other.example")
    assert out[3:] == ["auth mallory: reject (filters.auth[0]): 535 5.7.8 not you",
                       "mail bob@x.example: accept (default)",
                       "rcpt c@other.example: reject (relay policy): "
                       "554 5.7.1 <c@other.example>: Relay access denied"], out


def test_rcpt_count_counts_accepted_ones(srv):
    rcpts = ["a@accepted.example", "c@other.example", "nobody@accepted.example",
             "b@accepted.example", "c@accepted.example", "d@accepted.example"]
    out = explain(srv, "--ip", "10.3.0.1", "--from", "s@client.example",
                  *[x for r in rcpts for x in ("--rcpt", r)])
    verdicts = [ln.split(": ", 1)[1].split(" (")[0] for ln in out[3:]]
    assert verdicts == ["accept", "reject", "wait 200 ms", "accept", "accept", "tempfail"], out
    assert out[-1] == ("rcpt d@accepted.example: tempfail (filters.rcpt[1]): "
                       "452 4.5.3 too many recipients")


def test_tls(srv):
    base = ["--ip", "10.3.0.1", "--from", "x@secure.example"]
    assert explain(srv, *base)[-1] == \
        "mail x@secure.example: reject (filters.mail[2]): 530 5.7.0 tls required"
    assert explain(srv, *base, "--tls", "1.2")[-1] == \
        "mail x@secure.example: reject (filters.mail[3]): 550 5.7.1 tls 1.3 required"
    assert explain(srv, *base, "--tls", "1.3")[-1] == "mail x@secure.example: accept (default)"


def test_per_listener_chain(srv):
    args = ["--ip", "10.3.0.1", "--from", "s@client.example", "--rcpt", "a@accepted.example"]
    assert explain(srv, "--listener", "sub", *args) == [
        "listener sub, client 10.3.0.1", "connect: accept (default)",
        "mail s@client.example: accept (default)",
        "rcpt a@accepted.example: reject (listeners[1].filters.rcpt[0]): "
        "550 5.7.1 not on this port"]
    assert explain(srv, "--listener", "mx", *args)[-1] == \
        "rcpt a@accepted.example: accept (default)"
    # sub lists no mail chain: the top-level one runs there.
    assert explain(srv, "--listener", "sub", "--from", "<>")[-1].startswith(
        "mail <>: reject (filters.mail[0]): ")


@pytest.mark.parametrize("args,what", [
    (["--sender", "a@b.example"], None),
    (["--ip"], None),
    (["--from", "a@b.example", "--rcpt"], None),
    (["--ip", "10.0.0.300"], "--ip"),
    (["--ip", "localhost"], "--ip"),
    (["--ip", "10.0.0.0/8"], "--ip"),
    # 46 characters whose first 45 are an address: refused, not cut short.
    (["--ip", "0000:0000:0000:0000:0000:0000:192.168.100.2009"], "--ip"),
    (["--listener", "nosuch"], "listener"),
    (["--tls", "1.1"], "--tls"),
    (["--tls", "yes"], "--tls"),
    (["--message", "/nonexistent/message.eml"], "--message"),
    (["--message", "/etc"], "--message"),
    (["--helo", "two words"], None),
], ids=["unknown_option", "missing_value", "missing_rcpt_value", "bad_ip", "ip_name",
        "ip_network", "ip_cut_to_an_address", "unknown_listener", "tls_1_1", "tls_word",
        "message_missing", "message_directory", "value_with_space"])
def test_bad_arguments(srv, args, what):
    why = explain_err(srv, *args)
    if what:
        assert what in why, why


# --------------------------------------------------------------------------
# the data stage, on a message file


def test_message_explains_the_data_stage(ringmx, tmp_path):
    """--message FILE runs the data stage on the file (LF lines taken as
    CRLF): the deciding rule and its message actions, or the header fields
    it adds; no accepted recipient, no data stage."""
    srv = ringmx({"filters": {"data": [
        {"if": {"header": {"name": "Subject", "regex": "(?i)invoice"}},
         "then": {"quarantine": "suspect"}},
        {"if": {"body": {"regex": "BUY NOW\\r\\n"}}, "then": {"tempfail": "451 4.7.1 later"}},
        {"add_header": {"name": "X-Gateway", "value": "seen %{listener}"}}]}})
    bad = tmp_path / "bad.eml"
    bad.write_bytes(b"Subject: your INVOICE\n\nhello\n")
    spam = tmp_path / "spam.eml"
    spam.write_bytes(b"Subject: hi\n\nBUY NOW\n")
    good = tmp_path / "good.eml"
    good.write_bytes(b"Subject: hi\r\n\r\nhello\r\n")
    base = ["--helo", "client.example", "--from", "a@client.example",
            "--rcpt", "r@accepted.example"]
    out = explain(srv, *base, "--message", str(bad))
    assert out[-1] == "data: accept (filters.data[0]), quarantine suspect", out
    out = explain(srv, *base, "--message", str(spam))
    assert out[-1] == "data: tempfail (filters.data[1]): 451 4.7.1 later", out
    out = explain(srv, *base, "--message", str(good))
    assert out[-2:] == ["data: accept (default)", "  adds: X-Gateway: seen mx"], out
    out = explain(srv, "--helo", "client.example", "--from", "a@client.example",
                  "--rcpt", "x@elsewhere.example", "--message", str(good))
    assert out[-1] == "data: not reached (no recipient accepted)", out
    assert filter_lines(srv) == []


def test_message_with_a_header_section_past_64k(ringmx, tmp_path):
    srv = ringmx({"filters": {"data": [
        {"if": {"header": {"name": "Subject", "regex": "x"}}, "then": "reject"}]}})
    big = tmp_path / "big.eml"
    big.write_bytes(b"".join(b"X-Pad-%d: %s\n" % (i, b"p" * 60) for i in range(1200)) +
                    b"Subject: x\n\nbody\n")
    out = explain(srv, "--helo", "c.example", "--from", "a@c.example",
                  "--rcpt", "r@accepted.example", "--message", str(big))
    assert out[-1] == ("data: reject (header section): 552 5.3.4 Error: header section "
                       "too large to be checked"), out


# --------------------------------------------------------------------------
# what it does not do


def test_no_log_lines_and_no_sleep(ringmx, tmp_path, client_factory):
    """A 300 s tarpit is reported, not slept (ringmxctl's timeout is 60 s),
    and explains log no event=filter line, while a real session's refusal
    with the same rule does."""
    over, _ = config(tmp_path, rcpt_tarpit=300000)
    srv = ringmx(over)
    for _ in range(3):
        out = explain(srv, "--ip", "10.9.9.9")
        assert out[-1].startswith("connect: reject (filters.connect[0])"), out
        out = explain(srv, "--ip", "10.1.0.1", "--helo", "a.bad.example")
        assert out[-1].startswith("helo a.bad.example: tempfail"), out
        out = explain(srv, "--ip", "10.1.0.1", "--from", "s@client.example",
                      "--rcpt", "nobody@accepted.example", timeout=60)
        assert out[-1] == ("rcpt nobody@accepted.example: wait 300000 ms (filters.rcpt[0]), "
                           "reject (filters.rcpt[0]): " + NO_SUCH_USER), out
    assert filter_lines(srv) == []
    c = client_factory(srv.port)
    c.ehlo()
    assert c.cmd("MAIL FROM:<>").last.startswith("550 5.7.1 no bounces from 127.0.0.1")
    c.expect("QUIT", "221")
    assert srv.stop() == 0
    lines = filter_lines(srv)
    assert len(lines) == 1 and "rule=filters.mail[0]" in lines[0], lines


def test_sees_the_reloaded_file_table(ringmx, tmp_path):
    over, path = config(tmp_path, valid=["a@accepted.example"])
    srv = ringmx(over)
    args = ["--ip", "10.3.0.1", "--from", "s@client.example",
            "--rcpt", "a@accepted.example", "--rcpt", "new@accepted.example"]
    out = explain(srv, *args)
    assert out[-2:] == ["rcpt a@accepted.example: accept (default)",
                        "rcpt new@accepted.example: wait 200 ms (filters.rcpt[0]), "
                        "reject (filters.rcpt[0]): " + NO_SUCH_USER], out
    put(path, ["new@accepted.example"])
    wait_table(srv, "table_reloaded", "valid", 1)
    out = explain(srv, *args)
    assert out[-2:] == ["rcpt a@accepted.example: wait 200 ms (filters.rcpt[0]), "
                        "reject (filters.rcpt[0]): " + NO_SUCH_USER,
                        "rcpt new@accepted.example: accept (default)"], out
    assert srv.stop() == 0


def test_explain_while_the_table_is_swapped(ringmx, tmp_path):
    """explain runs continuously (each on a new control thread) while the
    file table is swapped 4 times: every answer is the old or the new one,
    and once a reload is logged, the new one."""
    over, path = config(tmp_path, valid=["a@accepted.example", "flip@accepted.example"])
    srv = ringmx(over)
    args = ["--ip", "10.3.0.1", "--from", "s@client.example",
            "--rcpt", "a@accepted.example", "--rcpt", "flip@accepted.example"]
    ok = "rcpt flip@accepted.example: accept (default)"
    no = ("rcpt flip@accepted.example: wait 200 ms (filters.rcpt[0]), "
          "reject (filters.rcpt[0]): " + NO_SUCH_USER)
    stop = threading.Event()
    seen, errors = [], []

    def runner():
        try:
            while not stop.is_set():
                out = explain(srv, *args)
                assert out[-2] == "rcpt a@accepted.example: accept (default)", out
                assert out[-1] in (ok, no), out
                seen.append(out[-1])
        except BaseException:
            errors.append(traceback.format_exc())

    t = threading.Thread(target=runner, daemon=True)
    t.start()
    try:
        for k in range(1, 5):
            put(path, ["a@accepted.example"] + ([] if k % 2 else ["flip@accepted.example"]))
            wait_table(srv, "table_reloaded", "valid", k)
            assert explain(srv, *args)[-1] == (no if k % 2 else ok)
            assert not errors, errors
    finally:
        stop.set()
        t.join(timeout=120)
    assert not t.is_alive() and not errors, errors
    assert ok in seen and no in seen
    assert srv.stop() == 0


# --------------------------------------------------------------------------
# attack side


def test_many_recipients_within_the_line(srv):
    """As many --rcpt as the 512-byte command line holds: each one explained."""
    rcpts, n = [], len("filter explain --ip 10.3.0.1 --from s@client.example\n")
    while True:
        r = "u%d@accepted.example" % len(rcpts)
        if n + len(" --rcpt ") + len(r) > 511:
            break
        rcpts.append(r)
        n += len(" --rcpt ") + len(r)
    assert len(rcpts) > 10
    out = explain(srv, "--ip", "10.3.0.1", "--from", "s@client.example",
                  *[x for r in rcpts for x in ("--rcpt", r)])
    assert len(out) == 3 + len(rcpts), out
    assert all(ln.startswith("rcpt u%d@accepted.example: wait 200 ms" % i)
               for i, ln in enumerate(out[3:])), out


def test_too_long_argument_list_is_a_clear_error(srv):
    """Over the 512-byte command line: refused, saying why, not a crash and
    not a usage text that suggests the syntax was wrong."""
    args = [x for i in range(60) for x in ("--rcpt", "user%d@accepted.example" % i)]
    r = srv.ctl_run("filter", "explain", "--from", "s@client.example", *args)
    assert r.returncode > 0, r  # refused, and not killed by a signal
    err = r.stderr.decode(errors="replace")
    assert r.stdout == b"", r.stdout
    assert "too long" in err.lower() or "too many" in err.lower(), \
        "the error does not say the command is too long: %r" % err
    assert explain(srv, "--ip", "10.3.0.1")[-1] == "connect: accept (default)"


def test_raw_command_over_the_line_limit(srv):
    """A client that bypasses ringmxctl and sends a 4 KiB explain line: no
    part of it is run (no "OK", no explanation); the answer is an ERR line,
    or the connection is reset (the server closes with the rest unread);
    the server stays up and answers the next command."""
    line = b"filter explain" + b"".join(b" --rcpt u%d@accepted.example" % i
                                        for i in range(200)) + b"\n"
    assert len(line) > 4096
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    got = b""
    try:
        s.connect(srv.sock_path)
        s.sendall(line)
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    assert got == b"" or got.startswith(b"ERR "), got
    assert b"OK" not in got and b"rcpt " not in got, got
    assert srv.proc.poll() is None
    assert explain(srv, "--ip", "10.3.0.1")[-1] == "connect: accept (default)"


def test_explain_under_smtp_load(srv):
    """8 clients send mail without a pause while explain runs 30 times: every
    explain gives the same answer, every message is queued."""
    args = ["--ip", "10.1.2.3", "--helo", "x.example", "--from", "s@client.example",
            "--rcpt", "a@accepted.example", "--rcpt", "nobody@accepted.example"]
    want = explain(srv, *args)
    stop = threading.Event()
    errors, counts = [], [0] * 8

    def worker(i):
        try:
            while not stop.is_set():
                c = SMTPClient(srv.port, timeout=60)
                try:
                    c.ehlo("load%d.example" % i)
                    for _ in range(20):
                        if stop.is_set():
                            break
                        c.expect("MAIL FROM:<s%d@client.example>" % i, "250 2.1.0")
                        c.expect("RCPT TO:<b@accepted.example>", "250 2.1.5")
                        c.expect("DATA", "354")
                        c.send(dot_stuff(BODY) + b".\r\n")
                        queued_id(c.reply())
                        counts[i] += 1
                    c.expect("QUIT", "221")
                finally:
                    c.close()
        except BaseException:
            errors.append("client %d: %s" % (i, traceback.format_exc()))

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for t in ts:
        t.start()
    try:
        wait_for(lambda: errors or all(counts), 30, "every client to queue a message")
        for _ in range(30):
            assert explain(srv, *args) == want
    finally:
        stop.set()
        for t in ts:
            t.join(timeout=120)
    assert not any(t.is_alive() for t in ts), "a client is stuck"
    assert not errors, "\n".join(errors)
    assert srv.stop() == 0
    assert not any("nobody@accepted.example" in ln for ln in filter_lines(srv))
