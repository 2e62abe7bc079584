"""Large uploads at every receive-buffer setting.

Any io.recv_buffers and io.recv_buffer_size the config accepts must carry a
message of any size over every transport (plaintext, STARTTLS, implicit
TLS): a connection whose session does not consume for a moment (a spool
write, a commit, no user buffer for TLS plaintext) is stopped
(backpressure), never closed with event=input_overrun and never left
hanging until idle_s.  Each case uploads 10 MB from 8 clients at once to
one shard (one buffer pool) and compares every stored message byte for
byte.  At 16 buffers of 1 MiB the 16 user buffers for TLS plaintext are all
held by spool writes at once: a connection that gets one back must see its
bytes written in the same loop turn, or the upload crawls at one batch per
tick and ends at idle_s.

A burst of more receive buffers than a connection may hold, arriving in one
batch of completions while the session is busy committing, is backpressure
too: a pipelining client is answered in full."""

import base64
import hashlib
import smtplib
import socket
import ssl
import threading

import pytest

from conftest import SMTPClient, free_port, queued_id, strip_received
from tlsutil import certs, client_context, recv_reply  # noqa: F401

MX = "mx.test"
SIZE = 10 * 1000 * 1000
CLIENTS = 8
UPLOAD_TIMEOUT_S = 120  # per client, a slow ASan build included


def _body(seed, size):
    """CRLF lines of base64 (no leading dots), distinct per client."""
    raw = hashlib.shake_256(b"upload-%d" % seed).digest(size * 3 // 4)
    text = base64.encodebytes(raw)  # 76-column LF lines
    head = b"Subject: upload %d\r\n\r\n" % seed
    return head + text.replace(b"\n", b"\r\n")[:size - len(head)].rsplit(b"\r\n", 1)[0] + b"\r\n"


def _server(ringmx, certs, buffers, size, **limits):
    """One shard (so all 8 clients share one buffer pool), STARTTLS on the
    main listener and implicit TLS on a second one (srv.smtps_port)."""
    cert, key = certs.leaf(MX)
    io = {}
    if buffers is not None:
        io["recv_buffers"] = buffers
    if size is not None:
        io["recv_buffer_size"] = size
    smtps_port = free_port()
    srv = ringmx({"shards": 1, "io": io,
                  "limits": dict({"message_size": 16 * 1024 * 1024, "idle_s": 60}, **limits),
                  "tls": {"certificates": [{"cert": cert, "key": key, "names": [MX]}]},
                  "listeners": [{"name": "mx", "greet_pause_ms": 0},
                                {"name": "smtps", "address": "127.0.0.1:%d" % smtps_port,
                                 "greet_pause_ms": 0, "tls": "implicit"}]})
    srv.smtps_port = smtps_port
    return srv


def _upload_plain(srv, body, certs):
    c = SMTPClient(srv.port, timeout=UPLOAD_TIMEOUT_S)
    try:
        r = c.send_message(body)
        qid = queued_id(r)
        assert c.cmd("QUIT").code == 221
        return qid
    finally:
        c.close()


def _transaction(s, body):
    """MAIL, RCPT, DATA and QUIT on a smtplib session: the queue id."""
    s.ehlo("client.example")
    assert s.mail("sender@client.example")[0] == 250
    assert s.rcpt("rcpt@accepted.example")[0] == 250
    code, msg = s.data(body)
    assert code == 250, (code, msg)
    qid = queued_id("250 " + msg.decode())  # smtplib strips the code
    assert s.quit()[0] == 221
    return qid


def _upload_starttls(srv, body, certs):
    ctx = client_context(ca=certs.ca, check_hostname=False)
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=UPLOAD_TIMEOUT_S) as s:
        s.ehlo("client.example")
        assert s.starttls(context=ctx)[0] == 220
        return _transaction(s, body)


def _upload_smtps(srv, body, certs):
    ctx = client_context(ca=certs.ca, check_hostname=False)
    with smtplib.SMTP_SSL("127.0.0.1", srv.smtps_port, context=ctx,
                          timeout=UPLOAD_TIMEOUT_S) as s:
        return _transaction(s, body)


UPLOADS = {"plain": _upload_plain, "starttls": _upload_starttls, "smtps": _upload_smtps}
# (io.recv_buffers, io.recv_buffer_size): None is the default (1024, 16384).
SETTINGS = [(16, 4096), (16, None), (16, 1048576), (128, None), (None, 4096), (None, None)]


@pytest.mark.parametrize("transport", sorted(UPLOADS))
@pytest.mark.parametrize("buffers,bufsize", SETTINGS,
                         ids=["%s-%s" % (b or "dflt", s or "dflt") for b, s in SETTINGS])
def test_parallel_10mb_uploads(ringmx, certs, buffers, bufsize, transport):
    srv = _server(ringmx, certs, buffers, bufsize)
    upload = UPLOADS[transport]
    results, errors = {}, []

    def one(i):
        try:
            body = _body(i, SIZE)
            results[i] = (upload(srv, body, certs), hashlib.sha256(body).digest(),
                          len(body))
        except Exception as e:  # reported below with the client number
            errors.append("client %d: %r" % (i, e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(UPLOAD_TIMEOUT_S + 30)
    log = srv.log_text()
    assert "event=input_overrun" not in log, "a well-behaved upload was cut off"
    assert not errors, errors
    assert len(results) == CLIENTS
    for i, (qid, digest, n) in sorted(results.items()):
        stored = strip_received(srv.queue_show(qid)[1])[1]
        assert len(stored) == n and hashlib.sha256(stored).digest() == digest, \
            "message %d stored differently (%d bytes, sent %d)" % (i, len(stored), n)


# ------------------------------------------------------------------ one burst

BURST_RCPTS = 6000
BURST_BODY = b"Subject: burst\r\n\r\nsent in one write with what follows\r\n"


def _burst():
    """A message by BDAT LAST and, in the same write, the next transaction's
    MAIL and 6000 RCPTs (240 KB): it arrives while the first is committed."""
    return (b"MAIL FROM:<a@client.example>\r\nRCPT TO:<r@accepted.example>\r\n"
            b"BDAT %d LAST\r\n" % len(BURST_BODY) + BURST_BODY
            + b"MAIL FROM:<b@client.example>\r\n"
            + b"".join(b"RCPT TO:<member%04d@accepted.example>\r\n" % i
                       for i in range(BURST_RCPTS)))


class _TLSPipe:
    """A STARTTLS session driven through memory BIOs: the burst is encrypted
    up front and written by one thread while this one reads the replies (one
    SSL object is never used by two threads at once)."""

    def __init__(self, port, certs):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        assert recv_reply(self.sock)[0].startswith("220 ")
        self.sock.sendall(b"EHLO burst.example\r\n")
        recv_reply(self.sock)
        self.sock.sendall(b"STARTTLS\r\n")
        assert recv_reply(self.sock) == ["220 2.0.0 Ready to start TLS"]
        self.inb, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context(ca=certs.ca).wrap_bio(self.inb, self.outb,
                                                        server_hostname=MX)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outb.read())
                self._pull()
        self.sock.sendall(self.outb.read())
        self.buf = b""

    def _pull(self):
        chunk = self.sock.recv(65536)
        assert chunk, "closed by the server"
        self.inb.write(chunk)

    def encrypt(self, data):
        self.tls.write(data)
        return self.outb.read()

    def replies(self, n):
        out = []
        while len(out) < n:
            while b"\r\n" not in self.buf:
                try:
                    self.buf += self.tls.read(65536)
                except ssl.SSLWantReadError:
                    self._pull()
            line, self.buf = self.buf.split(b"\r\n", 1)
            if line[3:4] != b"-":
                out.append(line.decode("latin-1"))
        return out


def _send_while_reading(send, data, read, n):
    sender = threading.Thread(target=send, args=(data,), daemon=True)
    sender.start()
    try:
        return read(n)
    finally:
        sender.join(timeout=60)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
@pytest.mark.parametrize("buffers", [16, None], ids=["16", "dflt"])
def test_burst_while_committing(ringmx, certs, buffers, tls):
    srv = _server(ringmx, certs, buffers, None, recipients=BURST_RCPTS, commands=100000)
    n = 4 + BURST_RCPTS
    if tls:
        t = _TLSPipe(srv.port, certs)
        t.sock.sendall(t.encrypt(b"EHLO burst.example\r\n"))
        assert t.replies(1)[0].startswith("250 ")
        replies = _send_while_reading(t.sock.sendall, t.encrypt(_burst()), t.replies, n)
        t.sock.sendall(t.encrypt(b"QUIT\r\n"))
        assert t.replies(1) == ["221 2.0.0 Bye"]
        t.sock.close()
    else:
        c = SMTPClient(srv.port, timeout=30)
        c.ehlo()
        replies = [r.last for r in _send_while_reading(c.send, _burst(), c.replies, n)]
        assert c.cmd("QUIT").code == 221
        c.close()
    assert "event=input_overrun" not in srv.log_text(), "a pipelining client was cut off"
    assert replies[:2] == ["250 2.1.0 Ok", "250 2.1.5 Ok"], replies[:4]
    qid = queued_id(replies[2])
    # The envelope's encoded size bounds the recipients (SPOOL_ENV_MAX):
    # the rest get 452 (RFC 5321 4.5.3.1.10), in order, and nothing else.
    rcpts = replies[4:]
    accepted = rcpts.count("250 2.1.5 Ok")
    assert replies[3] == "250 2.1.0 Ok", replies[3]
    assert accepted >= 1000 and rcpts == ["250 2.1.5 Ok"] * accepted + [
        "452 4.5.3 Error: too many recipients"] * (BURST_RCPTS - accepted), \
        "replies to the RCPTs: %r" % sorted(set(rcpts))
    assert strip_received(srv.queue_show(qid)[1])[1] == BURST_BODY
