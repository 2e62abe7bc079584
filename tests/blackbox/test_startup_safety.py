"""Start-up must not share a listening address with anyone: SO_REUSEPORT would
let the kernel split the address's connections between ringmx and the other
process."""

import json
import os
import socket
import subprocess

from conftest import RINGMX_BIN, SMTPClient

START_FAIL_TIMEOUT_S = 20


def start_expect_failure(server):
    """Start server; it must exit 1 during start-up.  Returns its log."""
    server.start(wait=False)
    try:
        rc = server.proc.wait(timeout=START_FAIL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.stop()
        raise AssertionError("ringmx started although its address was taken:\n"
                             + server.log_tail())
    server._reap(rc, "exited")
    assert rc == 1, "exit %r, expected 1:\n%s" % (rc, server.log_tail())
    return server.log_text()


def test_second_instance_on_same_address_refused(ringmx):
    first = ringmx()
    second = ringmx({"listeners": [{"name": "mx", "address": "127.0.0.1:%d" % first.port,
                                    "greet_pause_ms": 0}]}, start=False)
    log = start_expect_failure(second)
    assert "already in use" in log and "listeners[0] (mx)" in log, log
    # The first still takes every connection.
    for _ in range(8):
        c = SMTPClient(first.port)
        assert c.banner.code == 220
        c.cmd("QUIT")
        c.close()


def test_foreign_reuseport_listener_refused(ringmx):
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen(8)
    try:
        port = other.getsockname()[1]
        s = ringmx({"listeners": [{"name": "mx", "address": "127.0.0.1:%d" % port,
                                   "greet_pause_ms": 0}]}, start=False)
        log = start_expect_failure(s)
        assert "already in use" in log, log
    finally:
        other.close()


def test_wildcard_and_specific_on_one_port_refused(tmp_path):
    path = os.path.join(tmp_path, "overlap.json")
    conf = {"hostname": "gw.test",
            "listeners": [{"name": "any", "address": "*:2599"},
                          {"name": "lo", "address": "127.0.0.1:2599"}],
            "spool": {"path": os.path.join(tmp_path, "spool")},
            "control": {"socket": os.path.join(tmp_path, "ctl.sock")}}
    with open(path, "w") as f:
        json.dump(conf, f)
    r = subprocess.run([RINGMX_BIN, "--check-config", path], capture_output=True, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 1, (r.returncode, err)
    assert "listeners[1].address" in err and "overlaps" in err, err
