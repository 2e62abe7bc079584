"""A programmable SMTP (RFC 5321) / LMTP (RFC 2033) next hop for black-box tests.

Stdlib only: one accept thread and one thread per connection, blocking sockets.
It stores every transaction that reaches the end of its message data (DATA or
BDAT ... LAST), in memory and optionally as files, and can be told what to
answer per phase and per recipient, when to drop the connection, and how long
to wait before a reply.

    nh = NextHop(lmtp=False, pipelining=True, size=10485760, rules=[
        Rule("rcpt", "550 5.1.1 No such user", rcpt="bad@accepted.example"),
        Rule("message", "451 4.3.0 Try again later", times=2),   # 451, 451, then 250
        Rule("mail", drop=True, times=1),                         # first MAIL: connection dropped
        Rule("data", delay=2.0),                                  # slow 354
    ]).start()
    nh.port                     # loopback port; nh.address is "127.0.0.1:PORT"
    nh.wait_messages(3, timeout=10)
    nh.messages()               # accepted Transactions (>= one recipient got 2xx)
    nh.by_message_id("<id@x>")  # accepted Transactions with that Message-ID (with or without <>)
    nh.stop()

Phases a Rule can name: "connect" (the greeting), "ehlo" (EHLO/HELO/LHLO),
"mail", "rcpt", "data" (the reply to the DATA command; 354 by default),
"bdat" (a BDAT chunk that is not LAST), "message" (the reply after the message
data: after the final dot or BDAT LAST; in LMTP mode it is evaluated once per
recipient, with ctx.rcpt set, giving one reply each), "rset", "noop", "quit",
"starttls" (only when STARTTLS is offered; a 2xx reply starts the handshake,
anything else leaves the session in plain text).

Rule(phase, reply=None, drop=False, delay=0, rcpt=None, sender=None,
     times=None, skip=0, when=None, raw=False, midbody=None, keep_txn=False):
  reply   full reply line(s), e.g. "451 4.3.0 Later" ("\\n" between the lines of
          a multi-line reply), or a callable(ctx) -> line or None (None: default).
          Several complete lines ("250 Ok\\n250 Ok") are several replies: the
          way to send a reply nobody asked for.
  raw     True: reply is bytes sent exactly as given (no line ends added, none
          required; b"" sends nothing), in the same write as the replies queued
          before it.  The session decides as if it had answered with the first
          line of those bytes.  For a misbehaving hop or a man in the middle:
              Rule("starttls", b"220 2.0.0 Ready\\r\\n250 ", raw=True)  # bytes after the 220
              Rule("rcpt", b"", raw=True, rcpt="b@x.example")           # a reply left out
  midbody "data" phase only: bytes sent once the 354 went out and the first
          octets of message data arrived (a reply in the middle of the body);
          the session then stops reading until the hop is stopped, so the
          client is still sending its body when those bytes reach it (give it
          a body larger than the socket buffers, a few MiB)
  keep_txn "message" phase only: the transaction stays open after this reply
          (sender, recipients), as Postfix leaves it after an
          smtpd_end_of_data_restrictions reject: a MAIL before RSET then gets
          "503 5.5.1 Error: nested MAIL command"
  drop    True: close the connection instead of replying (replies due before it
          are sent first); "rst": the same with a TCP reset
  delay   seconds to wait before replying (or dropping)
  rcpt    only for this recipient (or any of a list); case-insensitive, no <>.
          In SMTP "message" phase: if the transaction has that recipient.
  sender  only for this MAIL FROM address
  when    extra predicate callable(ctx) -> bool
  times   apply to the first `times` matches only (after `skip`), then fall
          through to later rules and finally to the default reply
A command is answered by the first rule that matches and is in its window.
A 421 reply closes the connection after it is sent.  Rules can be changed
while running: nh.set_rules([...]), nh.add_rule(rule).

STARTTLS (RFC 3207), server side:
    nh = NextHop(tls=(certfile, keyfile), tls_min_version=ssl.TLSVersion.TLSv1_2,
                 tls_max_version=None)
  tls=None (the default): STARTTLS is not offered and answers 502.  With tls
  (a (certfile, keyfile) tuple, or a ready ssl.SSLContext), EHLO/LHLO offer
  STARTTLS until TLS is active; "STARTTLS" answers "220 2.0.0 Ready to start TLS"
  and the handshake follows on the same connection.  The session then starts
  over: EHLO state and any transaction are forgotten (MAIL before the next EHLO
  gets 503) and STARTTLS is no longer offered (a second one gets 503).
  STARTTLS is refused with 503 inside a mail transaction and 501 with an
  argument.  Bytes the client sent after the STARTTLS line without waiting for
  the 220 are discarded unprocessed and recorded as a protocol error.
  nh.set_extensions(starttls=False) stops offering it on a TLS-capable hop.
  Per connection: info.tls_version ("TLSv1.3"), info.tls_cipher (OpenSSL cipher
  name) or None, and info.tls_error (str) when the handshake failed (the
  connection is then closed, closed_by "tls"; nh.tls_errors() lists them; a
  failed handshake is not a protocol error of the client).  Every Transaction
  has tls_version / tls_cipher of the connection it came over (None: plain).
  After the 221 to QUIT on a TLS session the hop sends its close_notify and
  waits for the client's: info.tls_shutdown is "close_notify" when it came,
  else what ended the session instead ("SSLEOFError: ..." for a client that
  just closed the socket; told apart only with the hop's own context, not
  with a ready SSLContext passed as tls).

Protocol findings about the client are recorded per connection and in
nh.errors() (violations: pipelining not offered or past a command that must end
a group, message data sent before 354, MAIL/RCPT parameters of extensions not
offered, BDAT without CHUNKING, bare CR or LF in DATA, 8-bit data to a hop
without 8BITMIME or without BODY=8BITMIME, non-ASCII addresses without
SMTPUTF8, data over SIZE) and nh.warnings() (lines over 998 octets).  The
pytest fixture fails the test at teardown if there are errors, unless it was
created with check_protocol=False.

Fixture (import it into the test module: `from nexthop import nexthop, Rule  # noqa: F401`):
    def test_x(nexthop):
        nh = nexthop(lmtp=True, rules=[...])   # started; stopped at teardown

CLI for manual use:
    python3 nexthop.py --port 2526 [--lmtp] [--store DIR] [--no-pipelining]
        [--reply 'rcpt:bad@x.example=550 5.1.1 No such user'] [--reply 'message*2=451 4.3.0 Later']
        [--drop mail] [--tls CERT KEY]
"""

import collections
import email.parser
import email.policy
import json
import os
import re
import select
import socket
import ssl
import struct
import threading
import time

try:
    import pytest
except ImportError:  # the CLI works without pytest
    pytest = None

PHASES = ("connect", "ehlo", "mail", "rcpt", "data", "bdat", "message", "rset", "noop", "quit",
          "starttls")
MAX_COMMAND_LINE = 4096   # longer than RFC 5321's 512 so that long parameter lists get through
RECV_SIZE = 262144
STOP_TIMEOUT_S = 10.0

_ESC_RE = re.compile(r"^(\d{3}[ -])\d\.\d{1,3}\.\d{1,3} ")
_PATH_RE = re.compile(r"^(?:MAIL FROM|RCPT TO):\s*(<[^>]*>|[^\s<>]+)\s*(.*)$", re.I | re.S)


def _norm_addr(a):
    a = a.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1]
    if a.startswith("@") and ":" in a:  # source route
        a = a.split(":", 1)[1]
    return a.lower()


def _norm_mid(m):
    m = (m or "").strip()
    if m.startswith("<") and m.endswith(">"):
        m = m[1:-1]
    return m.strip()


class Rule:
    def __init__(self, phase, reply=None, *, drop=False, delay=0.0, rcpt=None, sender=None,
                 times=None, skip=0, when=None, raw=False, midbody=None, keep_txn=False):
        if phase not in PHASES:
            raise ValueError("unknown phase %r (one of %s)" % (phase, ", ".join(PHASES)))
        if raw:
            if not isinstance(reply, (bytes, str)):
                raise ValueError("raw needs the reply as bytes: %r" % (reply,))
        elif reply is not None and not callable(reply) and not re.match(r"^\d{3}", reply):
            raise ValueError("reply must start with a 3-digit code: %r" % reply)
        if midbody is not None and (phase != "data" or not isinstance(midbody, bytes)):
            raise ValueError("midbody is bytes for the data phase")
        if keep_txn and phase != "message":
            raise ValueError("keep_txn is for the message phase")
        self.keep_txn = keep_txn
        self.raw = raw
        self.midbody = midbody
        self.phase = phase
        self.reply = reply
        self.drop = drop
        self.delay = float(delay)
        if isinstance(rcpt, str):
            rcpt = [rcpt]
        self.rcpts = None if rcpt is None else {_norm_addr(r) for r in rcpt}
        self.sender = None if sender is None else _norm_addr(sender)
        self.times = times
        self.skip = skip
        self.when = when
        self.matched = 0  # matches so far (guarded by the server lock)

    def matches(self, ctx):
        if self.rcpts is not None:
            if ctx.rcpt is not None:
                if _norm_addr(ctx.rcpt) not in self.rcpts:
                    return False
            elif not any(_norm_addr(r) in self.rcpts for r in ctx.rcpts):
                return False
        if self.sender is not None and (ctx.sender is None or _norm_addr(ctx.sender) != self.sender):
            return False
        if self.when is not None and not self.when(ctx):
            return False
        return True

    def __repr__(self):
        return "Rule(%r, %r, drop=%r, delay=%r, rcpt=%r, times=%r, skip=%r)" % (
            self.phase, self.reply, self.drop, self.delay, self.rcpts, self.times, self.skip)


class Ctx:
    """What a rule's reply/when callable sees."""

    def __init__(self, server, conn, phase, line=None, rcpt=None, sender=None, rcpts=(),
                 params=None, data=None):
        self.server = server
        self.conn = conn            # ConnInfo
        self.phase = phase
        self.line = line            # the command line (str), if any
        self.rcpt = rcpt            # this recipient (rcpt phase; LMTP message phase)
        self.sender = sender        # MAIL FROM address of the transaction, if any
        self.rcpts = list(rcpts)    # accepted recipients of the transaction so far
        self.params = params or {}  # MAIL/RCPT parameters
        self.data = data            # message bytes (message phase)


class Transaction:
    """One transaction that reached the end of its message data."""

    def __init__(self):
        self.id = 0
        self.conn_id = 0
        self.time = 0.0
        self.lmtp = False
        self.helo = None
        self.mail_from = None       # address without <> ("" for the null sender)
        self.mail_params = {}       # {"SIZE": "123", "BODY": "8BITMIME", "SMTPUTF8": None, ...}
        self.rcpts = []             # recipients accepted at RCPT, in order
        self.rcpt_params = {}       # {rcpt: {"NOTIFY": "FAILURE", "ORCPT": "rfc822;..."}}
        self.rcpt_attempts = []     # [(rcpt, params, reply line)] for every RCPT
        self.via = None             # "DATA" or "BDAT"
        self.raw = b""              # DATA: bytes as on the wire (dot-stuffed); BDAT: the chunks
        self.data = b""             # the message (un-dot-stuffed)
        self.chunks = []            # BDAT chunk sizes
        self.replies = []           # [(rcpt or None, reply line)] after the data
        self.delivered = []         # recipients with a 2xx final reply
        self.dropped = False        # connection dropped instead of the final reply
        self.tls_version = None     # "TLSv1.3" etc. when it came over STARTTLS, else None
        self.tls_cipher = None      # OpenSSL cipher name, or None
        self.path = None            # file path when stored as files

    @property
    def accepted(self):
        return bool(self.delivered)

    @property
    def message_id(self):
        """The Message-ID header field as sent (with <>), or None; parsed once."""
        if not hasattr(self, "_mid"):
            self._mid = self.header("Message-ID")
        return self._mid

    def headers(self):
        end = self.data.find(b"\r\n\r\n")
        head = self.data if end < 0 else self.data[:end + 4]
        return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)

    def header(self, name):
        v = self.headers().get(name)
        return None if v is None else re.sub(r"\r?\n[ \t]+", " ", str(v)).strip()

    def message(self):
        return email.parser.BytesParser(policy=email.policy.default).parsebytes(self.data)

    def envelope(self):
        return {"id": self.id, "conn_id": self.conn_id, "time": self.time, "lmtp": self.lmtp,
                "helo": self.helo, "mail_from": self.mail_from, "mail_params": self.mail_params,
                "rcpts": self.rcpts, "rcpt_params": self.rcpt_params,
                "rcpt_attempts": [list(a) for a in self.rcpt_attempts], "via": self.via,
                "chunks": self.chunks, "replies": [list(r) for r in self.replies],
                "delivered": self.delivered, "dropped": self.dropped, "size": len(self.data),
                "tls_version": self.tls_version, "tls_cipher": self.tls_cipher}

    def __repr__(self):
        return "Transaction(#%d from=%r rcpts=%r via=%s%s %d bytes replies=%r)" % (
            self.id, self.mail_from, self.rcpts, self.via,
            " over " + self.tls_version if self.tls_version else "", len(self.data), self.replies)


class ConnInfo:
    def __init__(self, cid, peer):
        self.id = cid
        self.peer = peer
        self.started = time.monotonic()
        self.ended = None
        self.helo = None
        self.commands = []          # command lines received (str), in order
        self.transactions = 0       # transactions that reached the end of data
        self.pipelined = 0          # commands received before the previous reply was sent
        self.errors = []
        self.warnings = []
        self.closed_by = None       # "client" (EOF), "quit", "drop", "421", "stop", "timeout",
        #                             "tls" (failed handshake)
        self.tls_version = None     # after a STARTTLS handshake: "TLSv1.2", "TLSv1.3"
        self.tls_cipher = None      # OpenSSL cipher name, e.g. "TLS_AES_256_GCM_SHA384"
        self.tls_error = None       # str: why the STARTTLS handshake failed
        self.tls_shutdown = None    # after QUIT on TLS: "close_notify", or what came instead

    def __repr__(self):
        return "ConnInfo(#%d cmds=%d txns=%d pipelined=%d tls=%s closed_by=%s errors=%r)" % (
            self.id, len(self.commands), self.transactions, self.pipelined,
            self.tls_version or ("failed" if self.tls_error else "no"), self.closed_by,
            self.errors)


class _Drop(Exception):
    pass


class _Closed(Exception):
    pass


class NextHop:
    def __init__(self, lmtp=False, host="127.0.0.1", port=0, hostname="nexthop.test",
                 pipelining=True, eightbitmime=True, smtputf8=True, dsn=True, size=10485760,
                 chunking=True, enhancedstatuscodes=True, extensions=(), rules=(),
                 store_dir=None, idle_timeout=120.0, tls=None, tls_min_version=None,
                 tls_max_version=None):
        self.lmtp = lmtp
        self.host = host
        self.port = port
        self.hostname = hostname
        self.ext = {"PIPELINING": pipelining, "8BITMIME": eightbitmime, "SMTPUTF8": smtputf8,
                    "DSN": dsn, "SIZE": size, "CHUNKING": chunking,
                    "ENHANCEDSTATUSCODES": enhancedstatuscodes, "STARTTLS": tls is not None}
        self.extra_ext = list(extensions)
        self.tls = tls                          # None, (certfile, keyfile) or an ssl.SSLContext
        self.tls_min_version = tls_min_version  # ssl.TLSVersion or None
        self.tls_max_version = tls_max_version
        self._tls_ctx = self._make_tls_context()  # bad cert/key paths fail here, not mid-session
        self.rules = list(rules)
        self.store_dir = store_dir
        self.idle_timeout = idle_timeout
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._lsock = None
        self._wake = None
        self._accept_thread = None
        self._threads = set()
        self._socks = {}
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self):
        """Forget every connection, transaction and counter (rules keep their counts)."""
        with self._cond:
            self._txns = []
            self._conns = []
            self.active = 0
            self.max_active = 0
            self.mail_commands = 0
            self.aborted_data = 0   # connections that ended inside message data
            self._queued_ids = 0    # last "queued as NH..." number given

    @property
    def address(self):
        return "%s:%d" % (self.host, self.port)

    @property
    def url(self):
        return "%s://%s:%d" % ("lmtp" if self.lmtp else "smtp", self.host, self.port)

    def set_rules(self, rules):
        with self._cond:
            self.rules = list(rules)

    def add_rule(self, rule):
        with self._cond:
            self.rules.append(rule)

    def set_extensions(self, **kw):
        """set_extensions(pipelining=False, size=1000, ...) for later EHLOs."""
        names = {"pipelining": "PIPELINING", "eightbitmime": "8BITMIME", "smtputf8": "SMTPUTF8",
                 "dsn": "DSN", "size": "SIZE", "chunking": "CHUNKING",
                 "enhancedstatuscodes": "ENHANCEDSTATUSCODES", "starttls": "STARTTLS"}
        if kw.get("starttls") and self._tls_ctx is None:
            raise ValueError("starttls=True needs a NextHop created with tls=(cert, key)")
        with self._cond:
            for k, v in kw.items():
                self.ext[names[k]] = v

    # accessors (copies, safe from any thread)
    def transactions(self):
        with self._cond:
            return list(self._txns)

    def messages(self):
        """Transactions where at least one recipient got a 2xx final reply."""
        with self._cond:
            return [t for t in self._txns if t.accepted]

    def connections(self):
        with self._cond:
            return list(self._conns)

    @property
    def connection_count(self):
        with self._cond:
            return len(self._conns)

    @property
    def transaction_count(self):
        with self._cond:
            return len(self._txns)

    @property
    def message_count(self):
        with self._cond:
            return sum(1 for t in self._txns if t.accepted)

    def by_message_id(self, mid):
        m = _norm_mid(mid)
        return [t for t in self.messages() if _norm_mid(t.message_id) == m]

    def message_ids(self):
        """Counter {Message-ID without <>: times accepted}."""
        return collections.Counter(_norm_mid(t.message_id) for t in self.messages())

    def delivered_to(self, rcpt):
        r = _norm_addr(rcpt)
        return [t for t in self.messages() if r in (_norm_addr(x) for x in t.delivered)]

    def errors(self):
        with self._cond:
            return ["conn %d: %s" % (c.id, e) for c in self._conns for e in c.errors]

    def warnings(self):
        with self._cond:
            return ["conn %d: %s" % (c.id, e) for c in self._conns for e in c.warnings]

    def tls_errors(self):
        """Failed STARTTLS handshakes: ["conn N: reason"]."""
        with self._cond:
            return ["conn %d: %s" % (c.id, c.tls_error) for c in self._conns if c.tls_error]

    def _make_tls_context(self):
        if self.tls is None:
            return None
        if isinstance(self.tls, ssl.SSLContext):
            ctx = self.tls
        else:
            certfile, keyfile = self.tls
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            # Python sets this by default: an EOF without close_notify would
            # pass for one, and info.tls_shutdown could not tell them apart.
            ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
        if self.tls_min_version is not None:
            ctx.minimum_version = self.tls_min_version
        if self.tls_max_version is not None:
            ctx.maximum_version = self.tls_max_version
        return ctx

    # waits (condition variable, deadline)
    def wait_until(self, pred, timeout, what="condition"):
        """Wait until pred(self) is true (re-checked on every change); returns its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                v = pred(self)
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("nexthop: timed out after %.1fs waiting for %s "
                                         "(%d connections, %d transactions, %d accepted)"
                                         % (timeout, what, len(self._conns), len(self._txns),
                                            sum(1 for t in self._txns if t.accepted)))
                self._cond.wait(left)

    def wait_messages(self, n, timeout=10.0):
        self.wait_until(lambda s: sum(1 for t in s._txns if t.accepted) >= n, timeout,
                        "%d accepted messages" % n)
        return self.messages()

    def wait_transactions(self, n, timeout=10.0):
        self.wait_until(lambda s: len(s._txns) >= n, timeout, "%d transactions" % n)
        return self.transactions()

    def wait_message_id(self, mid, timeout=10.0):
        m = _norm_mid(mid)
        self.wait_until(lambda s: any(t.accepted and _norm_mid(t.message_id) == m for t in s._txns),
                        timeout, "Message-ID %s" % mid)
        return self.by_message_id(mid)

    def wait_connections(self, n, timeout=10.0):
        self.wait_until(lambda s: len(s._conns) >= n, timeout, "%d connections" % n)

    def wait_idle(self, timeout=10.0):
        """Wait until no connection is open."""
        self.wait_until(lambda s: s.active == 0, timeout, "all connections closed")

    # ------------------------------------------------------------------ lifecycle
    def start(self):
        assert self._lsock is None, "already started"
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(1024)
        self.port = s.getsockname()[1]
        self._lsock = s
        self._stop.clear()
        self._wake = os.pipe()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="nexthop-accept",
                                               daemon=True)
        self._accept_thread.start()
        return self

    def stop(self, timeout=STOP_TIMEOUT_S):
        """Close the listener and every connection; the port is kept for start()."""
        if self._lsock is None:
            return
        self._stop.set()
        os.write(self._wake[1], b"x")
        self._accept_thread.join(timeout)
        self._lsock.close()
        self._lsock = None
        with self._cond:
            socks = list(self._socks.values())
            threads = list(self._threads)
        for cs in socks:
            try:
                cs.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.01, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        for fd in self._wake:
            os.close(fd)
        self._wake = None
        if alive:
            raise AssertionError("nexthop: connection threads still running after stop: %r" % alive)

    def restart(self):
        self.stop()
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _accept_loop(self):
        poller = select.poll()
        poller.register(self._lsock, select.POLLIN)
        poller.register(self._wake[0], select.POLLIN)
        while not self._stop.is_set():
            ready = {fd for fd, _ in poller.poll()}
            if self._stop.is_set():
                break
            if self._lsock.fileno() not in ready:
                continue
            try:
                cs, peer = self._lsock.accept()
            except OSError:
                continue
            cs.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cs.settimeout(self.idle_timeout)
            with self._cond:
                cid = len(self._conns) + 1
                info = ConnInfo(cid, peer)
                self._conns.append(info)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                t = threading.Thread(target=self._serve, args=(cs, info),
                                     name="nexthop-conn-%d" % cid, daemon=True)
                self._threads.add(t)
                self._socks[t] = cs
                self._cond.notify_all()
            t.start()

    def _serve(self, cs, info):
        sess = None
        try:
            sess = _Session(self, cs, info)
            sess.run()
        except Exception as e:  # a bug here must not go unnoticed
            with self._cond:
                info.errors.append("nexthop internal error: %r" % (e,))
            raise
        finally:
            # after STARTTLS: the SSLSocket and the shutdown handle (a dup of
            # the TCP socket) as well; cs itself is then detached
            for s in ([sess.sock] + sess.extra_socks if sess is not None else []) + [cs]:
                try:
                    s.close()
                except OSError:
                    pass
            with self._cond:
                info.ended = time.monotonic()
                self.active -= 1
                t = threading.current_thread()
                self._threads.discard(t)
                self._socks.pop(t, None)
                self._cond.notify_all()

    # ------------------------------------------------------------------ helpers for sessions
    def _decide(self, phase, ctx):
        with self._cond:
            rules = [r for r in self.rules if r.phase == phase]
            for r in rules:
                if not r.matches(ctx):
                    continue
                idx = r.matched
                r.matched += 1
                if idx < r.skip or (r.times is not None and idx >= r.skip + r.times):
                    continue
                return r
        return None

    def _next_queued_id(self):
        """The number for a "queued as NH..." reply: taken under the lock, so
        sessions answering at once never share one."""
        with self._cond:
            self._queued_ids += 1
            return self._queued_ids

    def _store(self, txn, info):
        txn.message_id  # parse outside the lock
        with self._cond:
            txn.id = len(self._txns) + 1
            txn.conn_id = info.id
            txn.time = time.time()
            if self.store_dir:
                os.makedirs(self.store_dir, exist_ok=True)
                base = os.path.join(self.store_dir, "%06d" % txn.id)
                with open(base + ".eml", "wb") as f:
                    f.write(txn.data)
                with open(base + ".json", "w") as f:
                    json.dump(txn.envelope(), f, indent=1)
                txn.path = base + ".eml"
            self._txns.append(txn)
            info.transactions += 1
            self._cond.notify_all()


class _Session:
    """One connection: a command loop with an input buffer and batched replies."""

    def __init__(self, server, sock, info):
        self.srv = server
        self.sock = sock
        self.info = info
        self.buf = bytearray()
        self.out = []
        self.eof = False
        self.greeted = False
        self.banner_ok = True
        self.prev_verb = None
        self.pending_at_read = False
        self.rule = None        # the rule that gave the last reply (_answer)
        self.tls_active = False
        self.extra_socks = []   # sockets to close at the end besides self.sock
        self._reset_txn()

    # -- io
    def _recv(self):
        if self.eof:
            raise _Closed()
        try:
            # a blocking read with the idle timeout, on the SSLSocket after
            # STARTTLS: it returns data the SSL layer has already buffered, so
            # nothing waits on the raw descriptor (no select())
            chunk = self.sock.recv(RECV_SIZE)
        except socket.timeout:
            self.info.closed_by = "timeout"
            self._send_now("421 4.4.2 %s Error: timeout exceeded" % self.srv.hostname)
            raise _Closed()
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise _Closed()
        self.buf += chunk

    def _flush(self):
        if self.out:
            data = b"".join(x if isinstance(x, bytes) else x.encode("utf-8") for x in self.out)
            self.out = []
            try:
                self.sock.sendall(data)
            except OSError:
                self.eof = True
                raise _Closed()

    def _send_now(self, line):
        self._queue(line)
        try:
            self._flush()
        except _Closed:
            pass

    def _queue(self, text):
        for ln in text.split("\n"):
            self.out.append(ln.rstrip("\r") + "\r\n")

    def _error(self, msg):
        with self.srv._cond:
            self.info.errors.append(msg)

    def _warning(self, msg):
        with self.srv._cond:
            self.info.warnings.append(msg)

    def _readline(self):
        """A command line (str, without line end).  Flushes pending replies before blocking."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                break
            if len(self.buf) > MAX_COMMAND_LINE:
                # discard the overlong line up to its end
                self._flush()
                self._queue("500 5.5.2 Error: line too long")
                while True:
                    del self.buf[:]
                    self._flush()
                    self._recv()
                    j = self.buf.find(b"\n")
                    if j >= 0:
                        del self.buf[:j + 1]
                        return None
            start = len(self.buf)
            self._flush()
            self._recv()
        # replies not yet sent while this line was already here: the client pipelined
        self.pending_at_read = bool(self.out)
        raw = bytes(self.buf[:i + 1])
        del self.buf[:i + 1]
        if not raw.endswith(b"\r\n"):
            self._error("command line ends in bare LF: %r" % raw[:80])
        line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        return line

    def _read_exact(self, n):
        while len(self.buf) < n:
            self._flush()
            self._recv()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _read_data(self):
        """Message content up to CRLF.CRLF: (raw stuffed bytes incl. final CRLF, unstuffed)."""
        start = 0
        while True:
            if self.buf[:3] == b".\r\n":  # empty message
                del self.buf[:3]
                return b"", b""
            i = self.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                break
            start = max(0, len(self.buf) - 4)
            self._recv()
        raw = bytes(self.buf[:i + 2])
        del self.buf[:i + 5]
        lines = raw.split(b"\r\n")
        data = b"\r\n".join(ln[1:] if ln[:1] == b"." else ln for ln in lines)
        return raw, data

    def _drop(self, how):
        try:
            self._flush()
        except _Closed:
            pass
        if how == "rst":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.info.closed_by = "drop"
        raise _Drop()

    # -- replies through rules
    def _dflt(self, line):
        if not self.srv.ext["ENHANCEDSTATUSCODES"]:
            line = _ESC_RE.sub(r"\1", line)
        return line

    def _answer(self, phase, default, **ctxkw):
        """Reply for phase: the first matching rule's, else default.  Returns the
        reply text (queued, not yet sent); raises _Drop for a drop rule.  The
        rule that answered (or None) is left in self.rule."""
        ctx = Ctx(self.srv, self.info, phase, sender=self.mail_from, rcpts=self.rcpts, **ctxkw)
        rule = self.srv._decide(phase, ctx)
        self.rule = rule
        reply = None
        if rule is not None:
            if rule.delay:
                self._flush()
                self.srv._stop.wait(rule.delay)
                if self.srv._stop.is_set():
                    raise _Closed()
            if rule.drop:
                self._drop(rule.drop)
            if rule.raw:
                raw = rule.reply if isinstance(rule.reply, bytes) else rule.reply.encode()
                self.out.append(raw)
                return raw.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
            reply = rule.reply(ctx) if callable(rule.reply) else rule.reply
        if reply is None:
            reply = self._dflt(default)
        self._queue(reply)
        return reply

    # -- transaction state
    def _reset_txn(self):
        self.mail_from = None
        self.mail_params = {}
        self.rcpts = []
        self.rcpt_params = {}
        self.rcpt_attempts = []
        self.chunks = []
        self.bdat_buf = bytearray()
        self.bdat_failed = False

    def _parse_params(self, s):
        params = {}
        for p in s.split():
            k, eq, v = p.partition("=")
            params[k.upper()] = v if eq else None
        return params

    def _check_addr(self, addr, params, what):
        if any(ord(c) > 127 for c in addr):
            if not self.srv.ext["SMTPUTF8"]:
                self._error("%s non-ASCII address %r to a hop without SMTPUTF8" % (what, addr))
                return "553 5.6.7 Error: non-ASCII address without SMTPUTF8 support"
            if what == "MAIL" and "SMTPUTF8" not in params:
                self._error("MAIL non-ASCII address %r without the SMTPUTF8 parameter" % addr)
                return "553 5.6.7 Error: non-ASCII address needs SMTPUTF8"
            if what == "RCPT" and "SMTPUTF8" not in self.mail_params:
                self._error("RCPT non-ASCII address %r in a transaction without SMTPUTF8" % addr)
                return "553 5.6.7 Error: non-ASCII address needs SMTPUTF8"
        return None

    def _check_mail_params(self, params):
        ext = self.srv.ext
        for k, v in params.items():
            ok = {"SIZE": bool(ext["SIZE"]), "BODY": bool(ext["8BITMIME"]),
                  "SMTPUTF8": bool(ext["SMTPUTF8"]), "RET": bool(ext["DSN"]),
                  "ENVID": bool(ext["DSN"])}.get(k, False)
            if not ok:
                self._error("MAIL parameter %s not offered by the hop" % k)
                return "555 5.5.4 Error: unsupported MAIL parameter %s" % k
            if k == "BODY" and (v or "").upper() not in ("7BIT", "8BITMIME"):
                self._error("MAIL BODY=%s not offered by the hop" % v)
                return "555 5.5.4 Error: unsupported BODY type %s" % v
            if k == "SIZE":
                if not (v or "").isdigit():
                    return "501 5.5.4 Error: bad SIZE parameter"
                if ext["SIZE"] and int(v) > int(ext["SIZE"]):
                    return "552 5.3.4 Error: message too big for this hop"
        return None

    def _check_rcpt_params(self, params):
        for k in params:
            if k not in ("NOTIFY", "ORCPT") or not self.srv.ext["DSN"]:
                self._error("RCPT parameter %s not offered by the hop" % k)
                return "555 5.5.4 Error: unsupported RCPT parameter %s" % k
        return None

    def _check_content(self, raw, data, via):
        ext = self.srv.ext
        if via == "DATA":
            crlf = raw.count(b"\r\n")
            if raw.count(b"\n") != crlf:
                self._error("bare LF in DATA")
            if raw.count(b"\r") != crlf:
                self._error("bare CR in DATA")
            if raw and max(len(ln) for ln in raw.split(b"\r\n")) > 998:
                self._warning("line longer than 998 octets in DATA")
        if re.search(rb"[\x80-\xff]", data):
            if not ext["8BITMIME"]:
                self._error("8-bit message data sent to a hop without 8BITMIME")
            elif (self.mail_params.get("BODY") or "").upper() != "8BITMIME" \
                    and "SMTPUTF8" not in self.mail_params:
                self._error("8-bit message data without BODY=8BITMIME")
        if ext["SIZE"] and len(data) > int(ext["SIZE"]):
            self._error("message of %d octets over the advertised SIZE %s" % (len(data), ext["SIZE"]))
            return "552 5.3.4 Error: message too big for this hop"
        return None

    # -- the session
    def run(self):
        try:
            self._session()
            if self.info.closed_by is None:
                self.info.closed_by = "quit"
        except _Drop:
            pass
        except _Closed:
            if self.info.closed_by is None:
                self.info.closed_by = "stop" if self.srv._stop.is_set() else "client"
            if self.mail_from is not None and (self.chunks or self.in_data):
                with self.srv._cond:
                    self.srv.aborted_data += 1
        finally:
            try:
                self._flush()
            except _Closed:
                pass

    in_data = False

    def _finish(self, via, raw, data):
        """End of message data: per-transaction (SMTP) or per-recipient (LMTP) replies."""
        txn = Transaction()
        txn.lmtp = self.srv.lmtp
        txn.helo = self.info.helo
        txn.mail_from = self.mail_from
        txn.mail_params = dict(self.mail_params)
        txn.rcpts = list(self.rcpts)
        txn.rcpt_params = dict(self.rcpt_params)
        txn.rcpt_attempts = list(self.rcpt_attempts)
        txn.via = via
        txn.raw = raw
        txn.data = data
        txn.chunks = list(self.chunks)
        txn.tls_version = self.info.tls_version
        txn.tls_cipher = self.info.tls_cipher
        problem = self._check_content(raw, data, via)
        keep = False
        try:
            if self.srv.lmtp:
                for i, r in enumerate(txn.rcpts):
                    reply = self._answer("message", problem or "250 2.1.5 <%s> Ok: delivered" % r,
                                         rcpt=r, data=data)
                    keep |= self.rule is not None and self.rule.keep_txn
                    txn.replies.append((r, reply))
                    if reply.startswith("2"):
                        txn.delivered.append(r)
            else:
                n = self.srv._next_queued_id()
                reply = self._answer("message", problem or "250 2.0.0 Ok: queued as NH%06d" % n,
                                     data=data)
                keep = self.rule is not None and self.rule.keep_txn
                txn.replies.append((None, reply))
                if reply.startswith("2"):
                    txn.delivered = list(txn.rcpts)
        except _Drop:
            txn.dropped = True
            txn.delivered = []
            self.srv._store(txn, self.info)
            raise
        self.srv._store(txn, self.info)
        if keep:
            self.chunks = []  # the data is gone; MAIL and RCPTs stay, as in Postfix
            self.bdat_buf = bytearray()
        else:
            self._reset_txn()
        if any(r[1].startswith("421") for r in txn.replies):
            self._close_421()

    def _close_421(self):
        self._flush()
        self.info.closed_by = "421"
        raise _Drop()

    def _session(self):
        srv = self.srv
        host = srv.hostname
        banner = self._answer("connect", "220 %s %s nexthop" % (host, "LMTP" if srv.lmtp else "ESMTP"))
        self._flush()
        if banner.startswith("421"):
            self._close_421()
        self.banner_ok = banner.startswith("220")
        while True:
            line = self._readline()
            if line is None:
                continue
            with srv._cond:
                self.info.commands.append(line)
            verb = line.split(" ", 1)[0].upper()
            if self.pending_at_read:
                self.info.pipelined += 1
                if not srv.ext["PIPELINING"]:
                    self._error("command %r pipelined but PIPELINING was not offered" % line[:60])
                elif self.prev_verb in ("EHLO", "HELO", "LHLO", "DATA", "QUIT", "NOOP", "VRFY",
                                        "EXPN", "STARTTLS", "AUTH"):
                    self._error("command %r pipelined after %s, which must end a group"
                                % (line[:60], self.prev_verb))
            self.prev_verb = verb
            if not self.banner_ok and verb != "QUIT":
                self._queue("503 5.5.1 Error: no service")
                continue
            if verb == "QUIT":
                self._answer("quit", "221 2.0.0 Bye")
                self._flush()
                self.info.closed_by = "quit"
                self._tls_shutdown()
                return
            handler = getattr(self, "_cmd_" + verb.lower(), None)
            if handler is None or verb.startswith("_"):
                self._queue(self._dflt("502 5.5.2 Error: command not recognized"))
                continue
            handler(line)

    # -- commands
    def _hello(self, line, verb):
        srv = self.srv
        arg = line[len(verb):].strip()
        if not arg:
            self._queue(self._dflt("501 5.5.4 Syntax: %s hostname" % verb))
            return
        if (verb == "LHLO") != bool(srv.lmtp):
            self._queue(self._dflt("500 5.5.1 Error: %s not accepted in %s mode"
                                   % (verb, "LMTP" if srv.lmtp else "SMTP")))
            return
        self._reset_txn()
        lines = ["250-" + srv.hostname]
        if verb != "HELO":
            ext = srv.ext
            for name in ("PIPELINING", "SIZE", "STARTTLS", "8BITMIME", "SMTPUTF8", "DSN",
                         "CHUNKING", "ENHANCEDSTATUSCODES"):
                if name == "STARTTLS":
                    if self._starttls_offered():
                        lines.append("250-STARTTLS")
                elif name == "SIZE" and ext["SIZE"]:
                    lines.append("250-SIZE %d" % int(ext["SIZE"]))
                elif name != "SIZE" and ext[name]:
                    lines.append("250-" + name)
            lines += ["250-" + e for e in srv.extra_ext]
        lines[-1] = "250 " + lines[-1][4:]
        reply = self._answer("ehlo", "\n".join(lines), line=line)
        if reply.startswith("2"):
            self.greeted = True
            self.info.helo = arg
        elif reply.startswith("421"):
            self._close_421()

    def _cmd_ehlo(self, line):
        self._hello(line, "EHLO")

    def _cmd_helo(self, line):
        self._hello(line, "HELO")

    def _cmd_lhlo(self, line):
        self._hello(line, "LHLO")

    def _cmd_mail(self, line):
        if not self.greeted:
            self._queue(self._dflt("503 5.5.1 Error: send %s first" % ("LHLO" if self.srv.lmtp else "EHLO")))
            return
        if self.mail_from is not None:
            self._queue(self._dflt("503 5.5.1 Error: nested MAIL command"))
            return
        m = _PATH_RE.match(line)
        if not m or not line.upper().startswith("MAIL FROM:"):
            self._queue(self._dflt("501 5.5.4 Syntax: MAIL FROM:<address>"))
            return
        addr = m.group(1).strip("<>")
        if addr.startswith("@") and ":" in addr:
            addr = addr.split(":", 1)[1]
        params = self._parse_params(m.group(2))
        problem = self._check_mail_params(params) or self._check_addr(addr, params, "MAIL")
        self.mail_from = addr  # the rule sees the sender of this MAIL command
        try:
            reply = self._answer("mail", problem or "250 2.1.0 Ok", line=line, params=params)
        finally:
            self.mail_from = None
        with self.srv._cond:
            self.srv.mail_commands += 1
        if reply.startswith("2"):
            self._reset_txn()
            self.mail_from = addr
            self.mail_params = params
        elif reply.startswith("421"):
            self._close_421()

    def _cmd_rcpt(self, line):
        if self.mail_from is None:
            self._queue(self._dflt("503 5.5.1 Error: need MAIL command"))
            return
        m = _PATH_RE.match(line)
        if not m or not line.upper().startswith("RCPT TO:") or m.group(1) == "<>":
            self._queue(self._dflt("501 5.5.4 Syntax: RCPT TO:<address>"))
            return
        addr = m.group(1).strip("<>")
        if addr.startswith("@") and ":" in addr:
            addr = addr.split(":", 1)[1]
        params = self._parse_params(m.group(2))
        problem = self._check_rcpt_params(params) or self._check_addr(addr, params, "RCPT")
        reply = self._answer("rcpt", problem or "250 2.1.5 Ok", line=line, rcpt=addr, params=params)
        self.rcpt_attempts.append((addr, params, reply))
        if reply.startswith("2"):
            self.rcpts.append(addr)
            self.rcpt_params[addr] = params
        elif reply.startswith("421"):
            self._close_421()

    def _cmd_data(self, line):
        if line.strip().upper() != "DATA":
            self._queue(self._dflt("501 5.5.4 Syntax: DATA"))
            return
        if self.mail_from is None:
            self._queue(self._dflt("503 5.5.1 Error: need MAIL command"))
            return
        if self.chunks:
            self._queue(self._dflt("503 5.5.1 Error: DATA after BDAT"))
            return
        if not self.rcpts:
            self._queue(self._dflt("554 5.5.1 Error: no valid recipients"))
            return
        reply = self._answer("data", "354 End data with <CR><LF>.<CR><LF>", line=line)
        if not reply.startswith("354"):
            if reply.startswith("421"):
                self._close_421()
            return
        if self.buf:
            self._error("message data sent before the 354 reply (%r)" % bytes(self.buf[:40]))
        self._flush()
        self.in_data = True
        if self.rule is not None and self.rule.midbody is not None:
            self._midbody(self.rule.midbody)
        raw, data = self._read_data()
        self.in_data = False
        self.prev_verb = None  # the reply to the final dot is what the client waits for
        self._finish("DATA", raw, data)

    def _midbody(self, data):
        """Send data once the body has begun, then read no more until the hop
        stops: the client meets these bytes while its body is still going out."""
        if not self.buf:
            self._recv()
        try:
            self.sock.sendall(data)
        except OSError:
            pass
        self.srv._stop.wait(self.srv.idle_timeout)
        self.info.closed_by = "stop" if self.srv._stop.is_set() else "timeout"
        raise _Drop()

    def _cmd_bdat(self, line):
        parts = line.split()
        if len(parts) not in (2, 3) or not parts[1].isdigit() or \
                (len(parts) == 3 and parts[2].upper() != "LAST"):
            self._queue(self._dflt("501 5.5.4 Syntax: BDAT size [LAST]"))
            return
        n = int(parts[1])
        last = len(parts) == 3
        chunk = self._read_exact(n)
        if not self.srv.ext["CHUNKING"]:
            self._error("BDAT sent but CHUNKING was not offered")
            self._queue(self._dflt("502 5.5.1 Error: BDAT not offered"))
            return
        if self.mail_from is None:
            self._queue(self._dflt("503 5.5.1 Error: need MAIL command"))
            return
        if not self.rcpts:
            self._queue(self._dflt("554 5.5.1 Error: no valid recipients"))
            return
        if self.bdat_failed:
            self._queue(self._dflt("503 5.5.1 Error: BDAT after a failed chunk, RSET first"))
            return
        self.chunks.append(n)
        self.bdat_buf += chunk
        if not last:
            self.in_data = True
            reply = self._answer("bdat", "250 2.0.0 Ok: %d octets" % n, line=line)
            if not reply.startswith("2"):
                self.bdat_failed = True
                if reply.startswith("421"):
                    self._close_421()
            return
        self.in_data = False
        data = bytes(self.bdat_buf)
        self._finish("BDAT", data, data)

    def _cmd_rset(self, line):
        self._reset_txn()
        r = self._answer("rset", "250 2.0.0 Ok", line=line)
        if r.startswith("421"):
            self._close_421()

    def _cmd_noop(self, line):
        r = self._answer("noop", "250 2.0.0 Ok", line=line)
        if r.startswith("421"):
            self._close_421()

    def _cmd_vrfy(self, line):
        self._queue(self._dflt("252 2.0.0 Cannot VRFY user"))

    def _starttls_offered(self):
        return self.srv._tls_ctx is not None and bool(self.srv.ext["STARTTLS"]) \
            and not self.tls_active

    def _cmd_starttls(self, line):
        srv = self.srv
        if srv._tls_ctx is None or not srv.ext["STARTTLS"]:
            self._queue(self._dflt("502 5.5.1 Error: STARTTLS not offered"))
            return
        if self.tls_active:
            self._queue(self._dflt("503 5.5.1 Error: TLS already active"))
            return
        if line.strip().upper() != "STARTTLS":
            self._queue(self._dflt("501 5.5.4 Syntax: STARTTLS"))
            return
        if self.mail_from is not None:
            self._queue(self._dflt("503 5.5.1 Error: MAIL transaction in progress"))
            return
        reply = self._answer("starttls", "220 2.0.0 Ready to start TLS", line=line)
        if not reply.startswith("2"):
            # the session goes on in plain text; commands the client pipelined
            # after STARTTLS are answered (and flagged by the pipelining check)
            if reply.startswith("421"):
                self._close_421()
            return
        # RFC 3207 sections 4.2 and 5: the client must wait for the 220 before
        # it sends anything, and nothing received in plain text after the
        # command may be processed once TLS is up: discard it
        if self.buf:
            self._error("%d octets sent after STARTTLS before the TLS handshake (%r); discarded"
                        % (len(self.buf), bytes(self.buf[:40])))
            del self.buf[:]
        self._flush()
        self._start_tls()

    def _start_tls(self):
        srv = self.srv
        raw = self.sock
        # stop() wakes a session by shutting down its socket.  wrap_socket()
        # detaches `raw` and the handshake runs before it returns, so register
        # a duplicate descriptor of the same TCP socket first: shutdown() on
        # it ends the handshake and every later read just as well.
        handle = raw.dup()
        self.extra_socks.append(handle)
        with srv._cond:
            srv._socks[threading.current_thread()] = handle
        if srv._stop.is_set():  # stop() may have taken its snapshot before the swap
            self.info.closed_by = "stop"
            raise _Closed()
        try:
            tsock = srv._tls_ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=True)
        except (OSError, ValueError) as e:  # ssl.SSLError, timeouts, resets, EOF
            with srv._cond:
                self.info.tls_error = "%s: %s" % (type(e).__name__, e)
            self.info.closed_by = "stop" if srv._stop.is_set() else "tls"
            self.eof = True
            raise _Drop()
        self.sock = tsock
        self.tls_active = True
        with srv._cond:
            self.info.tls_version = tsock.version()
            self.info.tls_cipher = (tsock.cipher() or (None,))[0]
            srv._cond.notify_all()
        # a new session: forget the greeting and any transaction
        self.greeted = False
        self.info.helo = None
        self._reset_txn()
        self.prev_verb = None

    def _tls_shutdown(self):
        """After the 221 of a TLS session: close_notify both ways (RFC 8446
        6.1); records whether the client's came (stop() ends the wait)."""
        if not self.tls_active:
            return
        try:
            self.sock.unwrap()
            result = "close_notify"
        except (OSError, ValueError) as e:  # ssl.SSLEOFError, resets, timeouts
            result = "%s: %s" % (type(e).__name__, e)
        with self.srv._cond:
            self.info.tls_shutdown = result
            self.srv._cond.notify_all()

    def _cmd_auth(self, line):
        self._queue(self._dflt("502 5.5.1 Error: AUTH not offered"))


# --------------------------------------------------------------------------
# pytest fixture


if pytest is not None:
    @pytest.fixture
    def nexthop(request):
        """Factory: nexthop(check_protocol=True, **NextHop kwargs) -> started NextHop.
        All are stopped at teardown; with check_protocol, protocol errors the
        client made fail the test."""
        hops = []

        def factory(check_protocol=True, **behaviour):
            nh = NextHop(**behaviour)
            nh.check_protocol = check_protocol
            hops.append(nh)
            return nh.start()

        factory.hops = hops
        yield factory
        problems = []
        for nh in hops:
            nh.stop()
            errs = nh.errors()
            if nh.check_protocol and errs:
                problems.append("next hop %s saw protocol errors:\n  %s" % (nh.url, "\n  ".join(errs[:30])))
        assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------
# CLI


def _parse_reply_spec(spec, drop=False):
    """'PHASE[:RCPT][*N]=LINE' (or for --drop 'PHASE[:RCPT][*N]')."""
    head, _, line = spec.partition("=")
    times = None
    if "*" in head:
        head, n = head.rsplit("*", 1)
        times = int(n)
    phase, _, rcpt = head.partition(":")
    return Rule(phase, None if drop else line, drop=drop, rcpt=rcpt or None, times=times)


def main(argv=None):
    import argparse
    import signal as _signal
    ap = argparse.ArgumentParser(description="SMTP/LMTP capture next hop for tests")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2526)
    ap.add_argument("--lmtp", action="store_true")
    ap.add_argument("--store", metavar="DIR", help="also write each message as DIR/NNNNNN.eml + .json")
    ap.add_argument("--size", type=int, default=10485760, help="SIZE to advertise (0: none)")
    for name in ("pipelining", "8bitmime", "smtputf8", "dsn", "chunking", "enhancedstatuscodes"):
        ap.add_argument("--no-" + name, action="store_true", help="do not advertise " + name.upper())
    ap.add_argument("--reply", action="append", default=[], metavar="PHASE[:RCPT][*N]=LINE")
    ap.add_argument("--drop", action="append", default=[], metavar="PHASE[:RCPT][*N]")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"),
                    help="offer STARTTLS with this certificate chain and key (PEM files)")
    a = ap.parse_args(argv)
    rules = [_parse_reply_spec(s) for s in a.reply] + [_parse_reply_spec(s, True) for s in a.drop]
    # Before the ready line: whoever reads it may stop us by PID at once.
    done = threading.Event()
    for sig in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(sig, lambda *_: done.set())
    nh = NextHop(lmtp=a.lmtp, host=a.host, port=a.port, size=a.size,
                 pipelining=not a.no_pipelining, eightbitmime=not getattr(a, "no_8bitmime"),
                 smtputf8=not a.no_smtputf8, dsn=not a.no_dsn, chunking=not a.no_chunking,
                 enhancedstatuscodes=not a.no_enhancedstatuscodes, rules=rules,
                 store_dir=a.store, tls=tuple(a.tls) if a.tls else None).start()
    print("nexthop: %s on %s%s" % ("LMTP" if a.lmtp else "SMTP", nh.address,
                                   " with STARTTLS" if a.tls else ""), flush=True)
    shown = 0

    def show_new():
        nonlocal shown
        for t in nh.transactions()[shown:]:
            print("#%d conn %d from=<%s> rcpts=%s %s%s %d bytes id=%s -> %s" % (
                t.id, t.conn_id, t.mail_from, t.rcpts, t.via,
                " over %s (%s)" % (t.tls_version, t.tls_cipher) if t.tls_version else "",
                len(t.data), t.message_id,
                "; ".join(r for _, r in t.replies) or "(dropped)"), flush=True)
            shown = t.id
    while not done.is_set():
        try:
            nh.wait_until(lambda s: len(s._txns) > shown, 0.5)
        except AssertionError:
            continue
        show_new()
    nh.stop()
    show_new()  # stored before the stop but not shown yet: every one is printed
    for e in nh.errors():
        print("protocol error: " + e)
    for e in nh.tls_errors():
        print("TLS handshake failed: " + e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
