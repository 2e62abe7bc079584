"""Bytes a client sends can never pass for spool records.

The attack: a client's message body is made of well-formed records -- a
DONE for a message that was acknowledged (it would be deleted unsent) and a
COMMIT for a message of the attacker's choosing (it would be queued to any
recipient, past relay policy) -- in the record framing an attacker can read
about (version 1, unkeyed CRC32C) and in the current framing under a guessed
key of zeros.  The disk then fills while such bodies are written (a short
write cuts one of them), and the server restarts.  Nothing forged may be
loaded: the acknowledged message is still queued and delivered, the forged
one never appears."""

import os
import struct

import pytest

from conftest import SMTPClient, delivery_overrides, make_message, queued_id, route, submit
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)

MAGIC = 0x52584D52
REC_CHUNK, REC_COMMIT, REC_DONE = 2, 3, 5


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def siphash24(key, msg):
    """SipHash-2-4, as record.h uses it (key: 16 bytes)."""
    mask = (1 << 64) - 1

    def rotl(x, b):
        return ((x << b) | (x >> (64 - b))) & mask

    k0, k1 = struct.unpack("<QQ", key)
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D,
         k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def rnd():
        v[0] = (v[0] + v[1]) & mask; v[1] = rotl(v[1], 13) ^ v[0]; v[0] = rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & mask; v[3] = rotl(v[3], 16) ^ v[2]
        v[0] = (v[0] + v[3]) & mask; v[3] = rotl(v[3], 21) ^ v[0]
        v[2] = (v[2] + v[1]) & mask; v[1] = rotl(v[1], 17) ^ v[2]; v[2] = rotl(v[2], 32)

    n = len(msg)
    words = [struct.unpack("<Q", msg[i:i + 8])[0] for i in range(0, n - n % 8, 8)]
    tail = msg[n - n % 8:]
    words.append((n << 56 & mask) | int.from_bytes(tail, "little"))
    for m in words:
        v[3] ^= m
        rnd(); rnd()
        v[0] ^= m
    v[2] ^= 0xFF
    for _ in range(4):
        rnd()
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def pad8(b):
    return b + b"\0" * (-len(b) % 8)


def rec_v1(rtype, msg_id, payload=b""):
    h = struct.pack("<IBBHIIQI", MAGIC, rtype, 0, 0, len(payload), crc32c(payload), msg_id, 0)
    return pad8(h + struct.pack("<I", crc32c(h)) + payload)


def rec_v2(rtype, msg_id, payload=b"", key=b"\0" * 16):
    h = struct.pack("<IBBHIIQ", MAGIC, rtype, 0, 0, len(payload), crc32c(payload), msg_id)
    return pad8(h + struct.pack("<Q", siphash24(key, h)) + payload)


def forged_envelope(msg_id, rcpt):
    """A version-1 envelope (record.c) of an empty message: first_chunk_off 1
    (no chunk to point at), so its body "verifies" without any chunk."""
    fixed = struct.pack("<BBBBIQqQQQQII", 1, 0, 0, 0, 0, msg_id, 1700000000, 0, 0, 1, 0, 0, 1)
    strs = b"".join(struct.pack("<H", len(s)) + s
                    for s in (b"mx", b"203.0.113.9", b"evil", b"attacker@evil.example", b"", b""))
    table = struct.pack("<IHHB", 0, len(rcpt), 0, 0)
    return fixed + strs + table + rcpt


def attack_body(victim_id, forged_id, rcpt):
    env = forged_envelope(forged_id, rcpt)
    group = b""
    for mk in (rec_v1, rec_v2):
        group += mk(REC_DONE, victim_id) + mk(REC_COMMIT, forged_id, env)
    # The body lands at an offset the client does not know: one copy per
    # alignment, so one of them sits on the 8-byte grid.
    unit = b"".join(b"\0" * k + group for k in range(8))
    # Over SPOOL_CHUNK_TARGET (256 KiB): written before the end of the body
    # is seen, whatever the verdict on it then.
    return unit * (300_000 // len(unit) + 1)


@pytest.fixture
def tiny_fs(tmpfs):
    """A 3 MiB tmpfs: a disk that fills up."""
    return tmpfs(3)


def restart_after_kill(srv, room=None):
    """kill -9, then start (after removing the file room, if given).  The
    dead process's control socket file stays behind; removed first, so
    waiting for the socket waits for the new one."""
    srv.kill9()
    if room:
        os.unlink(room)
    if os.path.exists(srv.sock_path):
        os.unlink(srv.sock_path)
    srv.start()


def send_raw(port, body):
    """One BDAT transaction (RFC 3030: octets as they are) with a body of
    arbitrary bytes; the final reply."""
    c = SMTPClient(port, timeout=30)
    try:
        c.start_mail(rcpts=("rcpt@accepted.example",))
        c.send(b"BDAT %d LAST\r\n" % len(body) + body)
        return c.reply()
    finally:
        c.close()


def test_forged_records_after_disk_full_are_never_loaded(ringmx, tiny_fs, nexthop):
    nh = nexthop(rules=[Rule("message", "451 4.3.0 not yet")])
    # The operator's room for the restart: a full disk has none for the
    # new segment ringmx opens at start-up.
    ballast = os.path.join(tiny_fs, "ballast")
    with open(ballast, "wb") as f:
        f.write(b"\0" * (64 << 10))
    spool = os.path.join(tiny_fs, "spool")
    srv = ringmx(delivery_overrides([route("accepted.example", nh)],
                                    shards=1, spool={"path": spool, "segment_size": 1 << 20}))
    victim = submit(srv.port, make_message("victim@test"))
    vid = int(victim, 16)
    forged_id = vid + 0x1000
    forged = "%016X" % forged_id
    body = attack_body(vid, forged_id, b"target@elsewhere.example")
    replies = [send_raw(srv.port, body) for _ in range(40)]
    full = [r for r in replies if r.startswith("452 4.3.1")]
    assert full, "the disk never filled: %r" % replies[-3:]
    for r in replies:
        # NUL octets: refused at the end, but written to the spool first.
        assert r.code in (452, 451, 554), r
    restart_after_kill(srv, room=ballast)
    q = srv.queue_list()
    assert victim in q, "forged DONE deleted the acknowledged message: %r" % q
    assert forged not in q, "a forged COMMIT was loaded: %r" % q
    assert set(q) == {victim}, q
    # The next hop takes mail again: the victim is delivered, nothing else.
    nh.set_rules([])
    srv.ctl("queue", "flush")
    nh.wait_until(lambda h: h.by_message_id("victim@test"), 30, "the victim delivered")
    assert all(t.rcpts == ["rcpt@accepted.example"] for t in nh.messages()), nh.messages()
