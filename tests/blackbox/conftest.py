"""Black-box test harness: starts the real ringmx binary and speaks SMTP to it.

Environment:
  RINGMX_BIN     server binary (default: <repo>/build/ringmx)
  RINGMXCTL_BIN  control client (default: <repo>/build/ringmxctl)
  RINGMX_KEEP=1  keep each server's temp dir (config, spool, logs) after the test

Fixtures:
  ringmx  factory: ringmx(overrides=None) -> Server; overrides is a dict deep-merged
          into the default test config.  Every server started is stopped with
          SIGTERM at teardown; the test then fails unless it exited 0 and its
          stderr log holds no sanitizer report.
  server  one server on the default config.

Everything waits on conditions with deadlines (connect polling, socket
timeouts, process waits); nothing sleeps to synchronise.
"""

import copy
import ctypes
import email
import email.parser
import email.policy
import itertools
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RINGMX_BIN = os.environ.get("RINGMX_BIN", os.path.join(ROOT, "build", "ringmx"))
RINGMXCTL_BIN = os.environ.get("RINGMXCTL_BIN", os.path.join(ROOT, "build", "ringmxctl"))

HOSTNAME = "gw.test"
START_TIMEOUT_S = 20.0  # ASan builds start slower
# The server's own stop grace is 10 s (SHARD_STOP_GRACE_MS); the wait for
# its exit is longer, so a test that ends with a connection stuck for the
# whole grace sees the exit code, not a SIGKILL race.
STOP_TIMEOUT_S = 20.0
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")
QID_RE = re.compile(r"^[0-9A-F]{16}$")
QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-F]{16})$")


# --------------------------------------------------------------------------
# helpers


def _die_with_parent():
    """preexec_fn: SIGKILL the server if the test process dies (a run killed by
    its time bound must not leave servers behind)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port():
    """A loopback TCP port that was free a moment ago (bind 0, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_merge(base, over):
    """Return base with over merged in: dicts recursively, everything else replaced.
    A value of None in over deletes the key."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def base_config(dirpath, port):
    return {
        "hostname": HOSTNAME,
        "shards": 2,
        "listeners": [{"name": "mx", "address": "127.0.0.1:%d" % port, "greet_pause_ms": 0}],
        "relay": {"domains": ["accepted.example", "*.sub.example"],
                  "networks": ["192.0.2.0/24"]},
        "limits": {
            "message_size": 1048576,
            "recipients": 100,
            "errors": 10,
            "idle_s": 60,
            "session_s": 600,
            "connections": 1000,
            "connections_per_ip": 100,
            "commands": 10000,
            "received_headers": 50,
            "transactions": 1000,
        },
        "spool": {"path": os.path.join(dirpath, "spool"), "durability": "fsync"},
        "control": {"socket": os.path.join(dirpath, "ctl.sock")},
        "log": {"format": "kv", "level": "info"},
    }


def wait_for(cond, timeout, what, interval=0.02):
    """Poll cond() until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        # Poll interval of a condition wait, bounded by the deadline.
        time.sleep(interval)


def strip_received(msg):
    """Split a stored message into (first Received: field, rest).  The field may be
    folded over several lines (continuations start with SP/HTAB)."""
    assert msg.startswith(b"Received:"), "stored message does not start with Received: %r" % msg[:80]
    pos = 0
    while True:
        eol = msg.find(b"\r\n", pos)
        assert eol >= 0, "unterminated Received: field %r" % msg[:200]
        pos = eol + 2
        if msg[pos:pos + 1] not in (b" ", b"\t"):
            return msg[:pos], msg[pos:]


def unfold(field):
    return re.sub(rb"\r\n[ \t]+", b" ", field).rstrip(b"\r\n")


# --------------------------------------------------------------------------
# raw SMTP client


class Reply:
    def __init__(self, lines):
        self.lines = lines  # full lines including the code, CRLF stripped
        self.code = int(lines[-1][:3])

    @property
    def first(self):
        return self.lines[0]

    @property
    def last(self):
        return self.lines[-1]

    @property
    def enhanced(self):
        m = re.match(r"^\d{3}[ -](\d\.\d{1,3}\.\d{1,3})(?: |$)", self.lines[-1])
        return m.group(1) if m else None

    def startswith(self, prefix):
        return self.lines[-1].startswith(prefix)

    def __repr__(self):
        return "Reply(%r)" % (self.lines,)

    __str__ = __repr__


class SMTPClient:
    """Bytes-level SMTP client: send anything, read replies with deadlines."""

    def __init__(self, port, timeout=10.0, read_banner=True, host="127.0.0.1"):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.eof = False
        self.banner = self.reply() if read_banner else None

    # -- low level
    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self, deadline):
        """Read more bytes; False on EOF.  Raises AssertionError on timeout."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("timed out waiting for server data; have %r" % self.buf[-300:])
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError("timed out waiting for server data; have %r" % self.buf[-300:])
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def readline(self, deadline):
        while b"\r\n" not in self.buf:
            if not self._fill(deadline):
                raise EOFError("connection closed; partial data %r" % self.buf)
        line, self.buf = self.buf.split(b"\r\n", 1)
        assert b"\n" not in line and b"\r" not in line, "bare CR/LF in reply line %r" % line
        return line.decode("latin-1")

    # -- replies
    def reply(self, timeout=None):
        """Read one (possibly multi-line) reply."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        lines = []
        while True:
            line = self.readline(deadline)
            m = re.match(r"^(\d{3})([ -]|$)", line)
            assert m, "malformed reply line %r (previous lines %r)" % (line, lines)
            if lines:
                assert line[:3] == lines[0][:3], "reply code changed mid-reply: %r" % (lines + [line])
            lines.append(line)
            if m.group(2) != "-":
                return Reply(lines)

    def replies(self, n, timeout=None):
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        return [self.reply(timeout=max(0.001, deadline - time.monotonic())) for _ in range(n)]

    def cmd(self, line, timeout=None):
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def expect(self, line, prefix):
        r = self.cmd(line)
        assert r.startswith(prefix), "%r: expected %r, got %r" % (line, prefix, r)
        return r

    def data_available(self, timeout):
        """True if bytes (or EOF) arrive within timeout."""
        if self.buf or self.eof:
            return True
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)

    def read_until_closed(self, timeout=None):
        """Wait for EOF; returns every byte received before it.  Fails on timeout."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while self._fill(deadline):
            pass
        data, self.buf = self.buf, b""
        return data

    def replies_until_closed(self, timeout=None):
        data = self.read_until_closed(timeout)
        out = []
        cur = []
        for raw in data.split(b"\r\n"):
            if not raw:
                continue
            line = raw.decode("latin-1")
            cur.append(line)
            if len(line) < 4 or line[3] != "-":
                out.append(Reply(cur))
                cur = []
        assert not cur, "unterminated multi-line reply before close: %r" % cur
        return out

    def ehlo(self, name="client.example"):
        r = self.cmd("EHLO " + name)
        assert r.code == 250, "EHLO failed: %r" % r
        return r

    def start_mail(self, sender="sender@client.example", rcpts=("rcpt@accepted.example",),
                   ehlo=True):
        if ehlo:
            self.ehlo()
        self.expect("MAIL FROM:<%s>" % sender, "250 2.1.0")
        for rc in rcpts:
            self.expect("RCPT TO:<%s>" % rc, "250 2.1.5")

    def send_message(self, body, sender="sender@client.example",
                     rcpts=("rcpt@accepted.example",), ehlo=True):
        """Full DATA transaction; body is the wire form (already dot-stuffed,
        CRLF lines).  Returns the final reply."""
        self.start_mail(sender, rcpts, ehlo)
        self.expect("DATA", "354")
        self.send(body + b".\r\n")
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def dot_stuff(body):
    """Wire form of CRLF-line bytes for DATA (RFC 5321 4.5.2)."""
    out = re.sub(rb"(?m)^\.", b"..", body)
    return out


def queued_id(reply):
    text = reply.last if isinstance(reply, Reply) else reply
    m = QUEUED_RE.match(text)
    assert m, "expected '250 2.0.0 Ok: queued as <16 hex>', got %r" % (text,)
    return m.group(1)


# --------------------------------------------------------------------------
# the server under test


class Server:
    def __init__(self, overrides=None, name="rmx"):
        self.dir = tempfile.mkdtemp(prefix=name)
        self.port = free_port()
        self.config = deep_merge(base_config(self.dir, self.port), overrides)
        # Overrides may replace listeners wholesale: fill in the port if absent.
        for lst in self.config.get("listeners", []):
            lst.setdefault("address", "127.0.0.1:%d" % self.port)
        self.config_path = os.path.join(self.dir, "ringmx.json")
        with open(self.config_path, "w") as f:
            json.dump(self.config, f, indent=2)
        self.sock_path = self.config["control"]["socket"]
        self.proc = None
        self.starts = 0
        self.log_paths = []
        self.exit_codes = []  # (log index, rc, how) for every stopped process

    # -- lifecycle
    @property
    def log_path(self):
        return self.log_paths[-1]

    @property
    def pid(self):
        return self.proc.pid

    def start(self, wait=True):
        assert self.proc is None, "server already running"
        if self.exit_codes and os.path.exists(self.sock_path):
            # A previous process of this Server was reaped (known dead) and
            # left its socket file (kill -9 does): wait_ready must wait for
            # the new process's socket, not find the old one.
            os.unlink(self.sock_path)
        self.starts += 1
        log_path = os.path.join(self.dir, "stderr.%d.log" % self.starts)
        self.log_paths.append(log_path)
        self._log_f = open(log_path, "wb")
        self.proc = subprocess.Popen([RINGMX_BIN, "-c", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=self._log_f,
                                     stderr=subprocess.STDOUT, cwd=self.dir,
                                     preexec_fn=_die_with_parent)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError("ringmx exited with %d during start-up:\n%s"
                                     % (rc, self.log_tail()))
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
            except OSError:
                if time.monotonic() >= deadline:
                    raise AssertionError("ringmx did not accept on port %d within %.0fs:\n%s"
                                         % (self.port, START_TIMEOUT_S, self.log_tail()))
                time.sleep(0.02)  # poll interval of the connect loop
                continue
            self._polite_quit(s)
            break
        wait_for(lambda: self._ctl_listening() or self.proc.poll() is not None,
                 max(1.0, deadline - time.monotonic()), "control socket %s" % self.sock_path)
        assert self.proc.poll() is None, "ringmx exited during start-up:\n" + self.log_tail()

    def _ctl_listening(self):
        """The control socket takes connections.  Its file appears at bind(),
        a moment before listen(): a connect in between is refused."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(self.sock_path)
            # No command: the server reads EOF and runs nothing.  Reading to
            # its EOF means its control slot is free again, so a test that
            # counts control clients starts from none.
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
            return True
        except OSError:
            return False
        finally:
            s.close()

    @staticmethod
    def _polite_quit(s):
        """Finish the readiness probe cleanly so it frees its slot quickly."""
        try:
            s.settimeout(5.0)
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            s.sendall(b"QUIT\r\n")
            while s.recv(4096):
                pass
        except OSError:
            pass
        finally:
            s.close()

    def _reap(self, rc, how):
        self.exit_codes.append((len(self.log_paths) - 1, rc, how))
        self.proc = None
        self._log_f.close()

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT_S):
        """Signal by PID, wait (kill -9 after timeout); returns the exit code."""
        if self.proc is None:
            return None
        p = self.proc
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            rc = p.wait(timeout=timeout)
            how = "signal %d" % sig
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait(timeout=10)
            how = "signal %d, then SIGKILL after %.0fs" % (sig, timeout)
        self._reap(rc, how)
        return rc

    def kill9(self):
        p = self.proc
        p.kill()
        rc = p.wait(timeout=10)
        self._reap(rc, "SIGKILL (intended)")
        return rc

    def restart(self):
        if self.proc is not None:
            rc = self.stop()
            assert rc == 0, "ringmx exited %r on SIGTERM:\n%s" % (rc, self.log_tail())
        return self.start()

    # -- logs
    def log_text(self, index=-1):
        try:
            with open(self.log_paths[index], "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, IndexError):
            return ""

    def all_logs(self):
        return "".join(self.log_text(i) for i in range(len(self.log_paths)))

    def log_tail(self, n=40, index=-1):
        return "\n".join(self.log_text(index).splitlines()[-n:])

    # -- control
    def ctl_run(self, *args, timeout=30):
        return subprocess.run([RINGMXCTL_BIN, "-s", self.sock_path] + list(args),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)

    def ctl(self, *args, timeout=30):
        """Run ringmxctl, assert exit 0, return stdout as bytes."""
        r = self.ctl_run(*args, timeout=timeout)
        assert r.returncode == 0, "ringmxctl %s exited %d: stderr=%r stdout=%r" % (
            " ".join(args), r.returncode, r.stderr[-500:], r.stdout[-500:])
        return r.stdout

    def queue_list(self):
        """{qid: {key: value}} from `queue list`."""
        out = {}
        for raw in self.ctl("queue", "list").decode("utf-8", "replace").splitlines():
            if not raw.strip():
                continue
            # shlex: a quoted value with spaces (error="451 4.3.0 later") stays one value
            try:
                parts = shlex.split(raw)
            except ValueError as e:
                raise AssertionError("queue list line with bad quoting (%s): %r" % (e, raw)) from None
            qid = parts[0]
            assert QID_RE.match(qid), "queue list line does not start with a queue ID: %r" % raw
            kv = {}
            for p in parts[1:]:
                if "=" in p:
                    k, v = p.split("=", 1)
                    kv[k] = v
            assert qid not in out, "queue ID listed twice: %r" % qid
            out[qid] = kv
        return out

    def queue_show(self, qid):
        """(envelope: list of (key, value), message bytes) from `queue show ID`."""
        return parse_show(self.ctl("queue", "show", qid))


def parse_show(out):
    env = []
    pos = 0
    while True:
        eol = out.find(b"\n", pos)
        assert eol >= 0, "queue show: no empty line after the envelope: %r" % out[:500]
        line = out[pos:eol].rstrip(b"\r")
        pos = eol + 1
        if not line:
            break
        text = line.decode("utf-8", "replace")
        assert ": " in text or text.endswith(":"), "queue show: envelope line not 'key: value': %r" % text
        k, _, v = text.partition(":")
        env.append((k.strip(), v.strip()))
    return env, out[pos:]


def env_get(env, key):
    vals = [v for k, v in env if k == key]
    return vals


def env_one(env, key):
    vals = env_get(env, key)
    assert len(vals) == 1, "envelope key %r: expected one line, got %r in %r" % (key, vals, env)
    return vals[0]


# --------------------------------------------------------------------------
# fixtures


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def ringmx(request):
    servers = []

    def factory(overrides=None, start=True):
        s = Server(overrides)
        servers.append(s)
        if start:
            s.start()
        return s

    yield factory

    problems = []
    for s in servers:
        if s.proc is not None:
            rc = s.stop()
            if rc != 0:
                problems.append("ringmx exited %r on SIGTERM at teardown, expected 0\n%s"
                                % (rc, s.log_tail()))
        for i, rc, how in s.exit_codes:
            if how.startswith("signal") and "SIGKILL" in how:
                problems.append("ringmx did not exit within %.0fs of SIGTERM (%s)"
                                % (STOP_TIMEOUT_S, how))
        for i in range(len(s.log_paths)):
            text = s.log_text(i)
            bad = [ln for ln in text.splitlines() if any(m in ln for m in SANITIZER_MARKERS)]
            if bad:
                problems.append("sanitizer report in %s:\n%s\n--- log tail ---\n%s"
                                % (s.log_paths[i], "\n".join(bad[:20]), s.log_tail(60, i)))
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print("--- ringmx stderr (%s) ---\n%s" % (s.log_path, s.log_tail(60)))
        if os.environ.get("RINGMX_KEEP") != "1" and not problems:
            shutil.rmtree(s.dir, ignore_errors=True)
    assert not problems, "\n\n".join(problems)


@pytest.fixture
def tmpfs():
    """tmpfs(size_mb) -> a fresh tmpfs of that size (a full disk made on
    demand); unmounted at teardown.  Skips the test where root cannot mount."""
    mounts = []

    def make(size_mb):
        d = tempfile.mkdtemp(prefix="rmxfs")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % size_mb, "tmpfs", d],
                           capture_output=True)
        if r.returncode != 0:
            shutil.rmtree(d, ignore_errors=True)
            pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.decode(errors="replace"))
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", "-l", d], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(ringmx):
    return ringmx()


@pytest.fixture
def client_factory():
    clients = []

    def make(port, **kw):
        c = SMTPClient(port, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def closed_port():
    """closed_port() -> a loopback port that refuses connections until the test
    ends.  A free_port() number is only free for a moment: another test run on
    the machine may listen there next.  This one stays bound (no SO_REUSEADDR,
    so nobody else can bind it) and never listens, so a SYN gets a reset."""
    held = []

    def make():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.append(s)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

    yield make
    for s in held:
        s.close()


# --------------------------------------------------------------------------
# delivery helpers (test_delivery.py, test_local_delivery.py,
# test_delivery_crash.py)

DELIVERY_TIMEOUT_S = 30.0  # a delivery (or a bounce) that should happen "now"

# A fast schedule: retries after 1 s, nothing expires during a test.
FAST_DELIVERY = {"retry_s": [1], "max_age_s": 600, "connect_timeout_s": 5,
                 "command_timeout_s": 60}

BASE_RELAY_DOMAINS = ["accepted.example", "*.sub.example"]


def delivery_overrides(routes, relay_domains=(), delivery=None, dns=None, **extra):
    """Config overrides for a server that delivers: routes as given, relay.domains
    the base list plus relay_domains, delivery = FAST_DELIVERY updated with
    delivery, dns when given, and anything else in extra (deep-merged)."""
    over = {"routes": list(routes),
            "relay": {"domains": BASE_RELAY_DOMAINS + [d for d in relay_domains
                                                       if d not in BASE_RELAY_DOMAINS]},
            "delivery": dict(FAST_DELIVERY, **(delivery or {}))}
    if dns is not None:
        over["dns"] = dns
    return deep_merge(over, extra)


def route(domains, to):
    """One routes[] entry; to is a URL string, a NextHop (its url) or a list of them."""
    def url(x):
        return x if isinstance(x, str) else x.url
    if isinstance(domains, str):
        domains = [domains]
    return {"domains": list(domains),
            "to": [url(x) for x in to] if isinstance(to, (list, tuple)) else url(to)}


def make_message(mid, subject="test", body=b"Hello.\r\n", extra_headers=b"",
                 sender="sender@sender.example", to="rcpt@accepted.example"):
    """A CRLF message with a Message-ID (mid without <>); body and
    extra_headers are bytes (CRLF lines)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(extra_headers, str):
        extra_headers = extra_headers.encode("utf-8")
    head = ("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s>\r\n"
            % (sender, to, subject, mid)).encode("utf-8")
    return head + extra_headers + b"\r\n" + body


def submit(port, body, sender="sender@sender.example", rcpts=("rcpt@accepted.example",),
           mail_params="", rcpt_params=None, timeout=20.0):
    """One SMTP session, one DATA transaction; body is the message (CRLF lines,
    not stuffed).  mail_params: text after MAIL FROM:<...>; rcpt_params:
    {rcpt: text after RCPT TO:<...>}.  Returns the queue ID."""
    c = SMTPClient(port, timeout=timeout)
    try:
        c.ehlo()
        c.expect("MAIL FROM:<%s>%s" % (sender, " " + mail_params if mail_params else ""),
                 "250")
        for rc in rcpts:
            p = (rcpt_params or {}).get(rc, "")
            c.expect("RCPT TO:<%s>%s" % (rc, " " + p if p else ""), "250")
        c.expect("DATA", "354")
        c.send(dot_stuff(body) + b".\r\n")
        qid = queued_id(c.reply())
        c.cmd("QUIT")
        return qid
    finally:
        c.close()


def submit_pipelined(port, body, sender, rcpts):
    """One DATA transaction with many recipients, pipelined (RFC 2920); its
    queue ID."""
    c = SMTPClient(port, timeout=60)
    try:
        c.ehlo()
        cmds = ["MAIL FROM:<%s>" % sender] + ["RCPT TO:<%s>" % r for r in rcpts]
        c.send("".join(x + "\r\n" for x in cmds))
        for x, r in zip(cmds, c.replies(len(cmds))):
            assert r.code == 250, "%s: %r" % (x, r)
        c.expect("DATA", "354")
        c.send(dot_stuff(body) + b".\r\n")
        qid = queued_id(c.reply())
        c.cmd("QUIT")
        return qid
    finally:
        c.close()


_mid_seq = itertools.count(1)


def new_mid(tag):
    """A Message-ID unique in this run."""
    return "%s-%d-%d@client.example" % (tag, os.getpid(), next(_mid_seq))


def wait_queue(server, pred, timeout, what):
    """Poll `queue list` until pred(listing) is true; returns the listing.  The
    failure message shows the last listing."""
    last = [None]

    def cond():
        last[0] = server.queue_list()
        return pred(last[0])
    try:
        wait_for(cond, timeout, what, interval=0.05)
    except AssertionError as e:
        raise AssertionError("%s; last queue list: %r\n--- log tail ---\n%s"
                             % (e, last[0], server.log_tail(30))) from None
    return last[0]


def wait_queue_empty(server, timeout=DELIVERY_TIMEOUT_S):
    return wait_queue(server, lambda q: q == {}, timeout, "an empty queue")


def wait_state(server, qid, state, timeout=DELIVERY_TIMEOUT_S):
    """Wait until qid is listed with state=STATE; returns its fields."""
    q = wait_queue(server, lambda q: q.get(qid, {}).get("state") == state, timeout,
                   "%s state=%s" % (qid, state))
    return q[qid]


def log_event_re(event, qid=None):
    """Regex for a kv log line 'event=EVENT ... id=QID'."""
    return re.compile(r"(?m)^.*\bevent=%s\b%s.*$" % (
        re.escape(event), r"[^\n]*\bid=%s\b" % re.escape(qid) if qid else ""))


def wait_log(server, event, qid=None, timeout=DELIVERY_TIMEOUT_S):
    """Wait until the server's logs (all runs) hold event=EVENT [id=QID]; returns
    the matching lines."""
    rx = log_event_re(event, qid)
    try:
        return wait_for(lambda: rx.findall(server.all_logs()), timeout,
                        "log event=%s%s" % (event, " id=" + qid if qid else ""), interval=0.05)
    except AssertionError as e:
        raise AssertionError("%s\n--- log tail ---\n%s" % (e, server.log_tail(40))) from None


def log_events(server, event, qid=None):
    return log_event_re(event, qid).findall(server.all_logs())


def parse_queue_time(v):
    """next=UNIX|- of `queue list` -> int or None."""
    return None if v in (None, "-", "") else int(v)


class Dsn:
    """An RFC 3464 delivery status notification, parsed with the email package.

    msg            the whole DSN (email.message.Message, compat32)
    report_type    the multipart/report report-type parameter
    part_types     content types of the top-level parts, in order
    per_message    {lower-case field: value} of the first status block
    recipients     [{lower-case field: value}] of the per-recipient blocks
    returned       the third part (or None); returned_type its content type
    raw            the bytes"""

    def __init__(self, raw):
        self.raw = raw
        self.msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        assert self.msg.get_content_type() == "multipart/report", \
            "DSN is not multipart/report: %r\n%r" % (self.msg.get_content_type(), raw[:2000])
        self.report_type = self.msg.get_param("report-type")
        parts = self.msg.get_payload()
        assert isinstance(parts, list) and len(parts) >= 2, "DSN has fewer than 2 parts: %r" % raw[:3000]
        self.parts = parts
        self.part_types = [p.get_content_type() for p in parts]
        status = [p for p in parts if p.get_content_type() in
                  ("message/delivery-status", "message/global-delivery-status")]
        assert len(status) == 1, "DSN needs one message/delivery-status part, has %r" % self.part_types
        self.status_part = status[0]
        blocks = self._status_blocks(raw, self.msg.get_boundary(), status[0].get_content_type())
        assert len(blocks) >= 2, "delivery-status part has %d blocks, needs per-message " \
            "and per-recipient fields: %r" % (len(blocks), blocks)
        self.per_message = blocks[0]
        self.recipients = blocks[1:]
        for r in self.recipients:  # "Status: 5.1.1 (comment)" -> "5.1.1"
            if r.get("status"):
                r["status-raw"] = r["status"]
                r["status"] = r["status"].split()[0]
        self.returned = parts[2] if len(parts) >= 3 else None
        self.returned_type = self.returned.get_content_type() if self.returned is not None else None

    @staticmethod
    def _status_blocks(raw, boundary, ctype):
        """The status part's body split into blocks of fields (RFC 3464 2.1),
        each parsed with the email header parser."""
        assert boundary, "multipart/report without a boundary"
        delim = b"--" + boundary.encode("latin-1")
        body = None
        for piece in raw.split(delim)[1:]:
            if piece.startswith(b"--"):
                break
            nl = piece.find(b"\n")  # the rest of the boundary line
            piece = piece[nl + 1:] if nl >= 0 else b""
            head_end = piece.find(b"\r\n\r\n")
            sep = 4
            if head_end < 0:
                head_end, sep = piece.find(b"\n\n"), 2
            if head_end < 0:
                continue
            hdrs = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
                piece[:head_end + sep])
            if (hdrs.get_content_type() or "") == ctype:
                body = piece[head_end + sep:]
                break
        assert body is not None, "status part %s not found in the raw DSN" % ctype
        text = body.replace(b"\r\n", b"\n")
        blocks = []
        for chunk in re.split(rb"\n[ \t]*\n", text):
            if not chunk.strip():
                continue
            h = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
                chunk.strip(b"\n") + b"\n\n")
            fields = {k.lower(): re.sub(r"\r?\n[ \t]+", " ", str(v)).strip() for k, v in h.items()}
            assert fields, "unparsable status block %r" % chunk
            blocks.append(fields)
        return blocks

    def recipient(self, addr):
        """The per-recipient block whose Final-Recipient is addr (case-insensitive)."""
        want = addr.lower()
        for r in self.recipients:
            fr = r.get("final-recipient", "")
            if fr.split(";", 1)[-1].strip().strip("<>").lower() == want:
                return r
        raise AssertionError("no Final-Recipient %s in the DSN: %r" % (addr, self.recipients))

    def final_recipients(self):
        return sorted(r.get("final-recipient", "").split(";", 1)[-1].strip().strip("<>").lower()
                      for r in self.recipients)

    def returned_bytes(self):
        """The third part's content as bytes (headers for text/rfc822-headers,
        the message for message/rfc822)."""
        if self.returned is None:
            return None
        if self.returned.is_multipart():  # message/rfc822: one sub-message
            sub = self.returned.get_payload()
            return sub[0].as_bytes() if sub else b""
        return self.returned.get_payload(decode=True) or b""


def check_dsn(txn, sender):
    """txn is a next-hop Transaction that should be a DSN to sender: null
    reverse-path, one recipient, a multipart/report of type delivery-status.
    Returns the parsed Dsn."""
    assert txn.mail_from == "", "DSN not sent from <>: MAIL FROM:<%s>" % txn.mail_from
    assert [r.lower() for r in txn.rcpts] == [sender.lower()], \
        "DSN recipients %r, expected [%r]" % (txn.rcpts, sender)
    d = Dsn(txn.data)
    assert d.report_type == "delivery-status", \
        "multipart/report report-type=%r, expected delivery-status" % d.report_type
    assert d.part_types[0] == "text/plain", "first DSN part %r, expected text/plain" % d.part_types
    assert d.part_types[1] in ("message/delivery-status", "message/global-delivery-status"), \
        "second DSN part %r" % d.part_types
    assert "reporting-mta" in d.per_message, \
        "per-message fields lack Reporting-MTA: %r" % d.per_message
    for r in d.recipients:
        for k in ("final-recipient", "action", "status"):
            assert k in r, "per-recipient block lacks %s: %r" % (k, r)
        assert re.match(r"^[245]\.\d{1,3}\.\d{1,3}$", r["status"].split()[0]), \
            "bad Status %r" % r["status"]
    return d


def dsn_transactions(nh, rcpt=None):
    """Accepted transactions from <> at next hop nh (optionally to rcpt)."""
    out = [t for t in nh.messages() if t.mail_from == ""]
    if rcpt is not None:
        out = [t for t in out if rcpt.lower() in (r.lower() for r in t.rcpts)]
    return out


def wait_dsn(nh, rcpt, n=1, timeout=DELIVERY_TIMEOUT_S):
    """Wait until nh accepted n DSNs (MAIL FROM:<>) for rcpt; returns them."""
    nh.wait_until(lambda h: len(dsn_transactions(h, rcpt)) >= n, timeout,
                  "%d DSN(s) from <> to %s" % (n, rcpt))
    return dsn_transactions(nh, rcpt)


def lf(data):
    """CRLF -> LF (what local delivery stores)."""
    return data.replace(b"\r\n", b"\n")
