"""The control socket.

The socket file: whatever is at the path and is not a socket (a regular
file, a directory, a symlink) is refused and left alone; a socket another
instance answers on is refused and that instance keeps answering; a stale
socket (nothing answers) is replaced; the socket has mode 0600 from the
moment it appears (checked as soon as the path exists, under umask 0).

Serving: a client that stops reading a large answer holds neither `ping`
nor SIGTERM, and is dropped after the stall bound with a log line; at most
CONTROL_CLIENTS_MAX clients are served at once (one more gets "ERR busy");
a client that sends no command is dropped after the read bound."""

import os
import pty
import select
import signal
import socket
import stat
import subprocess
import tty

import pytest

from conftest import RINGMXCTL_BIN, STOP_TIMEOUT_S, submit, wait_for, wait_log
from logparse import parse_kv

CONTROL_CLIENTS_MAX = 8  # src/control.h
CONTROL_STALL_S = 5  # CONTROL_STALL_MS
CONTROL_READ_S = 5  # CONTROL_READ_MS
BIG = 4 * 1024 * 1024  # a `queue show` answer no socket buffer holds


def refused_start(srv):
    """Start srv, expect exit 1 during start-up; returns its stderr."""
    srv.start(wait=False)
    rc = srv.proc.wait(timeout=30)
    srv._reap(rc, "start refused")
    assert rc == 1, "ringmx exited %r, expected 1 (refused):\n%s" % (rc, srv.log_text())
    return srv.log_text()


def unix_client(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


# --------------------------------------------------------------------------
# the socket file


@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "dangling"])
def test_not_a_socket_at_the_path_is_refused_and_kept(ringmx, tmp_path, kind):
    srv = ringmx(start=False)
    path = srv.sock_path
    target = tmp_path / "target"
    target.write_bytes(b"precious\n")
    os.chmod(target, 0o644)
    if kind == "file":
        with open(path, "wb") as f:
            f.write(b"not a socket\n")
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "symlink":
        os.symlink(str(target), path)
    else:
        os.symlink(str(tmp_path / "nowhere"), path)
    before = os.lstat(path)
    err = refused_start(srv)
    assert "control.socket: %s exists and is" % path in err and "refusing" in err, err
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode), "the path was touched"
    if kind == "file":
        assert open(path, "rb").read() == b"not a socket\n"
    if kind in ("symlink", "dangling"):
        assert os.readlink(path) == str(target if kind == "symlink" else tmp_path / "nowhere")
    assert target.read_bytes() == b"precious\n" and stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert not os.path.exists(str(tmp_path / "nowhere"))


def test_second_instance_refused_first_keeps_its_socket(ringmx):
    first = ringmx()
    ino = os.lstat(first.sock_path).st_ino
    second = ringmx({"control": {"socket": first.sock_path}}, start=False)
    err = refused_start(second)
    assert "control socket %s is in use by another process" % first.sock_path in err, err
    assert os.lstat(first.sock_path).st_ino == ino, "the first instance's socket was replaced"
    assert first.ctl("ping") == b"pong\n"


def test_stale_socket_is_replaced(ringmx):
    srv = ringmx(start=False)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(srv.sock_path)  # bound, never listening, closed: nothing answers on it
    s.close()
    srv.start()
    assert srv.ctl("ping") == b"pong\n"
    wait_log(srv, "control_stale_removed", timeout=10)


def test_socket_mode_is_0600_from_the_start(ringmx):
    srv = ringmx(start=False)
    old = os.umask(0)  # inherited: a socket created with the umask's mode would be 0777
    try:
        srv.start(wait=False)
    finally:
        os.umask(old)

    def first_sight():
        try:
            return os.lstat(srv.sock_path)
        except FileNotFoundError:
            assert srv.proc.poll() is None, "ringmx exited:\n" + srv.log_text()
            return None
    st = wait_for(first_sight, 30, "the control socket", interval=0.0005)
    assert stat.S_ISSOCK(st.st_mode), oct(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, "socket appeared with mode %o" % stat.S_IMODE(
        st.st_mode)
    srv.wait_ready()
    assert srv.ctl("ping") == b"pong\n"


def test_socket_removed_at_exit_only_if_ours(ringmx):
    srv = ringmx()
    assert srv.stop() == 0
    assert not os.path.exists(srv.sock_path), "own socket left behind at exit"
    srv.start()
    os.rename(srv.sock_path, srv.sock_path + ".moved")
    with open(srv.sock_path, "wb") as f:  # someone else's file now at the path
        f.write(b"theirs\n")
    assert srv.stop() == 0
    assert open(srv.sock_path, "rb").read() == b"theirs\n", "exit removed a file not ours"


# --------------------------------------------------------------------------
# serving


@pytest.fixture
def big_server(ringmx):
    srv = ringmx({"limits": {"message_size": 2 * BIG}})
    line = b"x" * 998 + b"\r\n"
    qid = submit(srv.port, b"Subject: big\r\n\r\n" + line * (BIG // len(line)), timeout=60)
    return srv, qid


def stuck_reader(srv, qid):
    """A client that asks for the big message and reads nothing; returns once
    the server is writing the answer."""
    s = unix_client(srv.sock_path)
    s.sendall(b"queue show %s\n" % qid.encode())
    r, _, _ = select.select([s], [], [], 20)
    assert r, "no answer started within 20s"
    return s


def test_stuck_reader_holds_neither_ping_nor_the_log_and_is_dropped(big_server):
    srv, qid = big_server
    s = stuck_reader(srv, qid)
    try:
        r = srv.ctl_run("ping", timeout=10)
        assert r.returncode == 0 and r.stdout == b"pong\n", r
        # the main thread still drains the shards' log lines
        small = submit(srv.port, b"Subject: small\r\n\r\nx\r\n")
        wait_log(srv, "queued", small, timeout=10)
        lines = wait_log(srv, "control_dropped", timeout=CONTROL_STALL_S + 15)
        assert "reason=stalled" in lines[0] and 'command="queue show %s"' % qid in lines[0], lines
        got = 0
        s.settimeout(10)
        while True:  # the answer ends (EOF) short of the whole message
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        assert 0 < got < BIG, "stuck reader got %d bytes" % got
    finally:
        s.close()
    # a reader that reads gets all of it
    out = srv.ctl("queue", "show", qid, timeout=60)
    assert out.count(b"x" * 998) == BIG // 1000, "a full reader got %d bytes" % len(out)


def test_stuck_reader_does_not_delay_sigterm(big_server):
    srv, qid = big_server
    s = stuck_reader(srv, qid)
    try:
        rc = srv.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S)
        assert rc == 0, "exit %r with a stuck control reader" % rc
        assert "SIGKILL" not in srv.exit_codes[-1][2], srv.exit_codes
    finally:
        s.close()


def test_clients_bounded_and_idle_ones_dropped(ringmx):
    srv = ringmx()
    idle = [unix_client(srv.sock_path) for _ in range(CONTROL_CLIENTS_MAX)]
    try:
        extra = unix_client(srv.sock_path)
        extra.settimeout(CONTROL_READ_S - 1)  # the answer comes now, not after an idle timeout
        assert extra.recv(200).startswith(b"ERR busy"), "client over the bound not refused"
        extra.close()
        wait_log(srv, "control_dropped", timeout=10)
        # the idle clients are answered and closed after the read bound
        for s in idle:
            s.settimeout(CONTROL_READ_S + 15)
            buf = b""
            while True:
                chunk = s.recv(200)
                if not chunk:
                    break
                buf += chunk
            assert buf == b"ERR expected one command line\n", buf
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: srv.log_text().count("reason=idle") == CONTROL_CLIENTS_MAX, 10,
             "%d idle drops logged" % CONTROL_CLIENTS_MAX)
    assert srv.log_text().count("reason=busy") == 1
    assert srv.ctl("ping") == b"pong\n"


# --------------------------------------------------------------------------
# sibling: `queue list` lines carry the sender a client chose


HOSTILE_SENDERS = [
    '"a b=c state=held next=0 error=x"@client.example',
    "o'brien@client.example",
    '"q\\" size=1 \\\\"@client.example',
    '"j\u00f6rg \u00e9"@client.example',  # SMTPUTF8
]


def test_queue_list_keeps_each_sender_in_its_field(server):
    want = {}
    for sender in HOSTILE_SENDERS:
        params = "SMTPUTF8" if any(ord(ch) > 127 for ch in sender) else ""
        qid = submit(server.port, b"Subject: q\r\n\r\nx\r\n", sender=sender, mail_params=params)
        want[qid] = ("<%s>" % sender).encode("utf-8")
    lines = server.ctl("queue", "list").split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == len(want), lines
    for line in lines[:-1]:
        qid, _, rest = line.partition(b" ")
        pairs = parse_kv(rest)
        assert [k for k, _ in pairs] == ["size", "from", "rcpts", "arrival", "state",
                                         "attempts", "next", "error"], line
        assert dict(pairs)["from"] == want[qid.decode()], line


# --------------------------------------------------------------------------
# sibling: `queue show` prints a message a stranger wrote


ESCAPES = b"Subject: \x1b]0;owned\x07\x1b[2J\r\n\r\nbody \x1b[31mred\x7f\x01\r\n"


def ctl_on_a_terminal(srv, *args):
    """ringmxctl's stdout on a pseudo-terminal (raw mode: no newline
    translation); returns what the terminal got."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    try:
        p = subprocess.run([RINGMXCTL_BIN, "-s", srv.sock_path] + list(args), stdout=slave,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=30)
        assert p.returncode == 0, p
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal has no writer left
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_queue_show_on_a_terminal_shows_control_bytes_as_text(server):
    qid = submit(server.port, ESCAPES)
    shown = ctl_on_a_terminal(server, "queue", "show", qid)
    assert b"\x1b" not in shown and b"\x07" not in shown and b"\x7f" not in shown, shown
    assert b"Subject: ^[]0;owned^G^[[2J\r\n" in shown and b"body ^[[31mred^?^A\r\n" in shown, shown
    # a pipe gets the stored bytes
    _, msg = server.queue_show(qid)
    assert ESCAPES in msg, msg
