"""The harness's ports (conftest.py, dnszone.py): a test that needs "nothing listens
here" must keep it so while it runs, even with other test runs on the machine."""

import socket

import pytest

from conftest import free_port
from dnszone import closed_dns_port, query  # noqa: F401  (closed_dns_port is a fixture)


def _stranger_listens(port):
    """Another process's next hop taking the port (NextHop binds the same way)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_free_port_can_be_taken_by_anyone():
    # Why free_port() is not "nothing listens there": it is free for anyone.
    assert _stranger_listens(free_port())


def test_closed_port_refuses_and_cannot_be_taken(closed_port):
    port = closed_port()
    assert not _stranger_listens(port), "another process could listen on the closed port"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_closed_dns_port_refuses_and_cannot_be_taken(closed_dns_port):
    port = closed_dns_port()
    assert not _stranger_listens(port), "another process could listen on the TCP side"
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError):
            u.bind(("127.0.0.1", port))
    finally:
        u.close()
    with pytest.raises(ConnectionRefusedError):  # ICMP port unreachable, not silence
        query("127.0.0.1:%d" % port, "mx.example", "MX", timeout=5)
    with pytest.raises(ConnectionRefusedError):
        query("127.0.0.1:%d" % port, "mx.example", "MX", tcp=True, timeout=5)
