"""A hostile client against one shard: nothing it sends may stall the shard, hold
the shared receive buffers, take every transaction, or keep a slot for ever
(ARCHITECTURE.md invariant 8).  Each test ends by showing that a fresh client
is served at once."""

import resource
import socket
import threading
import time

import pytest

from conftest import SMTPClient, queued_id, wait_for, wait_log
from tlsutil import certs, client_context, recv_reply  # noqa: F401

ONE_SHARD = {"shards": 1}
FRESH_TIMEOUT_S = 5.0  # a fresh client on an idle server answers well within this


def assert_fresh_client_served(server, what):
    """A new connection gets its banner and an EHLO answer: the shard is alive."""
    try:
        c = SMTPClient(server.port, timeout=FRESH_TIMEOUT_S)
    except AssertionError as e:
        raise AssertionError("after %s, a fresh client got no banner: %s" % (what, e)) from None
    try:
        assert c.banner.code == 220, "after %s: banner %r" % (what, c.banner)
        r = c.cmd("EHLO fresh.example")
        assert r.code == 250, "after %s: EHLO answered %r" % (what, r)
    finally:
        c.close()


def data_tx(c):
    """One complete DATA transaction (the body scanner ends in its final state)."""
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<r@accepted.example>", "250")
    c.expect("DATA", "354")
    c.send(b"Subject: one\r\n\r\nbody\r\n.\r\n")
    queued_id(c.reply())


def bdat_tx(c, size=0):
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<r@accepted.example>", "250")
    body = b"Subject: b\r\n\r\n" + b"x" * max(0, size - 16) + b"\r\n" if size else b""
    c.send(b"BDAT %d LAST\r\n" % len(body) + body)
    queued_id(c.reply())


# ---------------------------------------------------------------- A1: refused chunks

def _outside(c):
    data_tx(c)
    return b"BDAT 5\r\nHELLO", "503"


def _after_mail_only(c):
    data_tx(c)
    c.expect("MAIL FROM:<a@client.example>", "250")
    return b"BDAT 5\r\nHELLO", "554"


def _after_refused_rcpt(c):
    data_tx(c)
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<x@elsewhere.example>", "554")
    return b"BDAT 5\r\nHELLO", "554"


def _after_bdat_last(c):
    bdat_tx(c, size=40)
    return b"BDAT 5\r\nHELLO", "503"


def _after_bdat_0_last(c):
    bdat_tx(c, size=0)
    return b"BDAT 5\r\nHELLO", "503"


def _refused_bdat_0_last(c):
    data_tx(c)
    return b"BDAT 0 LAST\r\n", "503"


def _data_then_bdat_last_refused(c):
    data_tx(c)
    return b"BDAT 5 LAST\r\nHELLO", "503"


def _no_prior_message(c):
    return b"BDAT 5\r\nHELLO", "503"


def _two_refused_chunks(c):
    data_tx(c)
    c.send(b"BDAT 3\r\nabc")
    assert c.reply().code == 503
    return b"BDAT 4\r\nwxyz", "503"


REFUSED_CHUNKS = [
    ("outside_transaction", _outside),
    ("after_mail_only", _after_mail_only),
    ("after_refused_rcpt", _after_refused_rcpt),
    ("after_bdat_last", _after_bdat_last),
    ("after_bdat_0_last", _after_bdat_0_last),
    ("refused_bdat_0_last", _refused_bdat_0_last),
    ("data_then_bdat_last", _data_then_bdat_last_refused),
    ("no_prior_message", _no_prior_message),
    ("two_refused_chunks", _two_refused_chunks),
]


@pytest.mark.parametrize("name,setup", REFUSED_CHUNKS, ids=[n for n, _ in REFUSED_CHUNKS])
def test_refused_chunk_never_stalls_the_shard(ringmx, client_factory, name, setup):
    s = ringmx(ONE_SHARD)
    c = client_factory(s.port)
    c.ehlo()
    chunk, code = setup(c)
    c.send(chunk)
    r = c.reply()
    assert r.startswith(code), "%s: refused chunk answered %r, expected %s" % (name, r, code)
    # In step: the chunk's bytes were read, not taken as commands.
    assert c.cmd("NOOP").last == "250 2.0.0 Ok", "%s: session out of step" % name
    assert_fresh_client_served(s, name)
    # And the same session can still send mail.
    c.expect("RSET", "250")
    data_tx(c)


# ---------------------------------------------------------------- A2: declared size

@pytest.mark.parametrize("size", [10001, 99999999999, 18446744073709551615])
def test_bdat_declared_over_limit_refused_at_once(ringmx, client_factory, size):
    s = ringmx(dict(ONE_SHARD, limits={"message_size": 10000}))
    c = client_factory(s.port)
    c.ehlo()
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<r@accepted.example>", "250")
    c.send(b"BDAT %d LAST\r\n" % size)
    replies = c.replies_until_closed()
    assert [r.last[:9] for r in replies] == ["552 5.3.4"], \
        "BDAT %d over a 10000-byte limit: %r, expected 552 5.3.4 then close" % (size, replies)
    assert s.queue_list() == {}
    assert_fresh_client_served(s, "an oversized BDAT")


def test_bdat_chunks_adding_up_over_limit(ringmx, client_factory):
    s = ringmx(dict(ONE_SHARD, limits={"message_size": 10000}))
    c = client_factory(s.port)
    c.ehlo()
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<r@accepted.example>", "250")
    c.send(b"BDAT 6000\r\n" + b"a" * 5998 + b"\r\n")
    assert c.reply().startswith("250"), "first chunk within the limit refused"
    c.send(b"BDAT 6000 LAST\r\n")
    replies = c.replies_until_closed()
    assert [r.last[:9] for r in replies] == ["552 5.3.4"], replies
    assert s.queue_list() == {}


def test_bdat_exactly_at_limit_accepted(ringmx, client_factory):
    s = ringmx(dict(ONE_SHARD, limits={"message_size": 10000}))
    c = client_factory(s.port)
    c.ehlo()
    c.expect("MAIL FROM:<a@client.example>", "250")
    c.expect("RCPT TO:<r@accepted.example>", "250")
    body = b"Subject: x\r\n\r\n" + (b"y" * 98 + b"\r\n") * 99
    body += b"z" * (10000 - len(body) - 2) + b"\r\n"
    assert len(body) == 10000
    c.send(b"BDAT 4000\r\n" + body[:4000] + b"BDAT 6000 LAST\r\n" + body[4000:])
    assert c.reply().startswith("250")
    queued_id(c.reply())


def test_bdat_huge_outside_transaction_refused_at_once(ringmx, client_factory):
    s = ringmx(dict(ONE_SHARD, limits={"message_size": 10000}))
    c = client_factory(s.port)
    c.ehlo()
    c.send(b"BDAT 99999999999\r\n")
    replies = c.replies_until_closed()
    assert [r.last[:9] for r in replies] == ["552 5.3.4"], replies


# ---------------------------------------------------------------- A3: buffer hoarding

TARPIT = {"shards": 1, "io": {"recv_buffers": 16},
          "limits": {"error_delay_ms": 20000, "soft_errors": 1}}


def _nodelay_client(port):
    c = SMTPClient(port, timeout=10)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def _dribble(c, data, gap_s=0.01):
    """One segment per byte (the pattern that took one receive buffer each)."""
    for b in data:
        c.send(bytes([b]))
        time.sleep(gap_s)  # spacing of the attack's segments, not a synchronisation


def test_tarpitted_clients_hold_no_receive_buffers(ringmx, client_factory):
    s = ringmx(TARPIT)
    attackers = []
    for _ in range(6):
        a = _nodelay_client(s.port)
        attackers.append(a)
        a.send(b"XYZZY\r\n")
        assert a.reply().code == 500
        a.send(b"HELO bot.example\r\n")  # tarpitted: answered after 20 s
    for a in attackers:
        _dribble(a, b"NOOP\r\n"[:7] + b"x" * 12)
    # 6 clients x 19 one-byte segments would hold more than the 16 buffers.
    assert_fresh_client_served(s, "tarpitted clients dribbling one-byte segments")
    for a in attackers:
        a.close()


def test_parked_input_is_kept_in_order(ringmx, client_factory):
    s = ringmx({"shards": 1, "io": {"recv_buffers": 16},
                "limits": {"error_delay_ms": 1500, "soft_errors": 1}})
    c = _nodelay_client(s.port)
    try:
        assert c.cmd("XYZZY").code == 500
        c.send(b"EHLO a.example\r\n")  # answered after the tarpit
        _dribble(c, b"NOOP one\r\nRSET\r\nNOOP two\r\n", gap_s=0.005)
        rs = c.replies(4, timeout=20)
        assert [r.code for r in rs] == [250, 250, 250, 250], rs
        assert rs[0].lines[0].startswith("250-gw.test"), "first reply is not EHLO's: %r" % rs
    finally:
        c.close()


def test_parked_clients_flooding_hold_no_buffers(ringmx):
    """Parked clients that go on sending: what arrived before the recv stopped
    is stashed (or, past the stash, the client is closed); the rest waits in
    the client's own TCP window, never in the shared pool."""
    s = ringmx(TARPIT)
    attackers = []
    try:
        for _ in range(4):
            a = _nodelay_client(s.port)
            attackers.append(a)
            assert a.cmd("XYZZY").code == 500
            a.sock.settimeout(2)
            try:  # one burst: several receive buffers' worth at once
                a.send(b"HELO bot.example\r\n" + (b"NOOP " + b"z" * 500 + b"\r\n") * 128)
            except OSError:
                pass  # the server stopped reading, or closed: both are fine
        assert_fresh_client_served(s, "parked clients flooding input")
    finally:
        for a in attackers:
            a.close()


def test_many_tarpitted_clients_cannot_starve_buffers(ringmx):
    """More parked clients than receive buffers, each dribbling."""
    s = ringmx(dict(TARPIT, limits={"error_delay_ms": 20000, "soft_errors": 1,
                                    "connections_per_ip": 200}))
    attackers = []
    try:
        for _ in range(40):
            a = _nodelay_client(s.port)
            attackers.append(a)
            assert a.cmd("XYZZY").code == 500
            a.send(b"HELO bot.example\r\n")
        for i in range(8):
            for a in attackers:
                a.send(b"N" if i % 2 == 0 else b"O")
        assert_fresh_client_served(s, "40 tarpitted clients on 16 receive buffers")
        c = SMTPClient(s.port, timeout=FRESH_TIMEOUT_S)
        try:
            c.ehlo()
            data_tx(c)
        finally:
            c.close()
    finally:
        for a in attackers:
            a.close()


# ---------------------------------------------------------------- A5: transactions

def _raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= n


def test_transactions_not_fewer_than_connections(ringmx):
    n = 1100
    if not _raise_nofile(n + 200):
        pytest.skip("cannot raise RLIMIT_NOFILE to %d" % (n + 200))
    s = ringmx({"shards": 1, "limits": {"connections": n + 10, "connections_per_ip": n + 10}})
    held = []
    try:
        for i in range(n):
            c = SMTPClient(s.port, timeout=20)
            held.append(c)
            c.send(b"EHLO many.example\r\nMAIL FROM:<m%d@client.example>\r\n" % i)
            rs = c.replies(2)
            assert rs[1].code == 250, "connection %d of %d: MAIL answered %r" % (i + 1, n, rs[1])
        assert_fresh_client_served(s, "%d connections parked after MAIL" % n)
    finally:
        for c in held:
            c.close()


# ---------------------------------------------------------------- A7: clients that never read

def test_client_that_never_reads_loses_its_slot(ringmx):
    s = ringmx({"shards": 1, "limits": {"idle_s": 2, "connections_per_ip": 1,
                                        "commands": 10000000}})
    hog = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    hog.connect(("127.0.0.1", s.port))
    # The greeting is the last thing it reads: a client that talks before it
    # is refused as an early talker, which is not the attack tested here.
    assert recv_reply(hog, timeout=20)[0].startswith("220 ")
    hog.settimeout(None)  # blocking again: the flood's sendall waits for room
    stop = threading.Event()

    def flood():
        """HELP (a 90-byte reply for 6 bytes) in small paced batches, never
        reading; sendall blocks once the server stops reading."""
        batch = b"HELP\r\n" * 100
        try:
            while not stop.is_set():
                hog.sendall(batch)
                time.sleep(0.002)  # pacing of the attack, not a synchronisation
        except OSError:
            pass  # closed by the server, or shut down by the test
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        wait_log(s, "send_timeout", timeout=60)

        def admitted():
            c = SMTPClient(s.port, timeout=5)
            try:
                return c.banner.code == 220
            finally:
                c.close()
        wait_for(admitted, 10, "the stuck client's slot to be freed (connections_per_ip 1)",
                 interval=0.2)
    finally:
        stop.set()
        try:
            hog.shutdown(socket.SHUT_RDWR)  # wakes a sendall blocked in the thread
        except OSError:
            pass
        t.join(timeout=10)
        hog.close()


# ---------------------------------------------------------------- A3 over TLS

def _tls_session(port, certs):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert recv_reply(s)[0].startswith("220 ")
    s.sendall(b"EHLO tls.example\r\n")
    recv_reply(s)
    s.sendall(b"STARTTLS\r\n")
    assert recv_reply(s) == ["220 2.0.0 Ready to start TLS"]
    return client_context(ca=certs.ca).wrap_socket(s, server_hostname="mx.test")


def _tls_server(ringmx, certs, delay_ms, buffers=16):
    cert, key = certs.leaf("mx.test")
    return ringmx({"shards": 1, "io": {"recv_buffers": buffers},
                   "limits": {"error_delay_ms": delay_ms, "soft_errors": 1},
                   "tls": {"certificates": [{"cert": cert, "key": key, "names": ["mx.test"]}]}})


def _read_replies(sock, n, timeout=20):
    """n replies (each a list of lines), however the server batched them."""
    deadline = time.monotonic() + timeout
    buf, out, cur = b"", [], []
    while len(out) < n:
        while b"\r\n" not in buf:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            assert chunk, "closed after %r" % out
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        cur.append(line.decode("latin-1"))
        if line[3:4] != b"-":
            out.append(cur)
            cur = []
    assert not buf, "more than %d replies: %r" % (n, buf)
    return out


def test_parked_tls_input_is_kept_in_order(ringmx, certs):
    srv = _tls_server(ringmx, certs, 1500)
    t = _tls_session(srv.port, certs)
    try:
        t.sendall(b"XYZZY\r\n")
        assert recv_reply(t)[0].startswith("500")
        t.sendall(b"EHLO again.example\r\n")  # answered after the tarpit
        for part in (b"NOOP one\r\n", b"RSET\r\n", b"NOOP two\r\n"):
            for b in part:  # one TLS record per byte
                t.sendall(bytes([b]))
        rs = _read_replies(t, 4)
        assert rs[0][0].startswith("250-"), "first reply is not EHLO's: %r" % rs
        assert [r[-1] for r in rs[1:]] == ["250 2.0.0 Ok"] * 3, rs
    finally:
        t.close()


def test_tarpitted_tls_clients_hold_no_buffers(ringmx, certs):
    srv = _tls_server(ringmx, certs, 20000)
    held = []
    try:
        for _ in range(8):
            t = _tls_session(srv.port, certs)
            held.append(t)
            t.sendall(b"XYZZY\r\n")
            assert recv_reply(t)[0].startswith("500")
            t.sendall(b"EHLO bot.example\r\n")
            for b in b"NOOP\r\nNOOP\r\n":
                t.sendall(bytes([b]))
        assert_fresh_client_served(srv, "tarpitted TLS clients sending one record per byte")
        fresh = _tls_session(srv.port, certs)
        try:
            fresh.sendall(b"EHLO fresh.example\r\n")
            assert recv_reply(fresh)[0].startswith("250"), "fresh TLS client not served"
        finally:
            fresh.close()
    finally:
        for t in held:
            t.close()
