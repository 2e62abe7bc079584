"""Receive-buffer exhaustion is backpressure, not an error: with a provided
buffer ring far smaller than the data in flight, every message still
arrives intact (a recv that finds no buffer ends with ENOBUFS and is re-armed once
buffers come back)."""

import hashlib
import re
import threading

from conftest import SMTPClient, queued_id, strip_received


def _body(i, size):
    out = bytearray(b"Subject: backpressure %d\r\n\r\n" % i)
    n = 0
    while len(out) < size:
        out += b"%08d %s\r\n" % (n, hashlib.sha1(b"%d-%d" % (i, n)).hexdigest().encode())
        n += 1
    return bytes(out)


def test_tiny_buffer_ring_loses_nothing(ringmx):
    # 16 buffers of 4 KiB per shard, 24 clients sending 200 KB each at once.
    srv = ringmx({"shards": 1, "io": {"recv_buffers": 16, "recv_buffer_size": 4096}})
    results, errors = {}, []

    def send(i):
        try:
            c = SMTPClient(srv.port, timeout=30)
            c.ehlo()
            body = _body(i, 200_000)
            r = c.send_message(body)
            results[i] = (queued_id(r), body)
            c.cmd("QUIT")
            c.close()
        except Exception as e:  # reported below with the client number
            errors.append("client %d: %r" % (i, e))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 24
    for i, (qid, body) in results.items():
        _, stored = srv.queue_show(qid)
        assert strip_received(stored)[1] == body, "message %d differs" % i
    assert srv.stop() == 0
    m = re.search(r"event=shard_stop shard=0 .*recv_enobufs=(\d+)", srv.log_text())
    assert m, srv.log_tail()
    assert int(m.group(1)) > 0, "the buffer ring never ran dry: the test did not test backpressure"

