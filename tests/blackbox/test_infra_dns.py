"""Self-tests of the test DNS server (dnszone.py: NSD on a loopback port) with the
stdlib query helper and, when installed, dig.  They need no ringmx binary."""

import shutil
import subprocess

import pytest

from dnszone import (DnsServer, _free_udp_tcp_port, dns, dns_server,  # noqa: F401  (fixtures)
                     nsd_available, query)

ZONE = {
    "mx.example": [("MX", 10, "mail1.mx.example"), ("MX", 20, "mail2.mx.example.")],
    "mail1.mx.example": [("A", "127.0.0.1")],
    "mail2.mx.example": [("A", "127.0.0.2"), ("AAAA", "::1")],
    "nullmx.example": [("MX", 0, ".")],
    "implicit.example": [("A", "127.0.0.1")],
    "v6only.example": [("AAAA", "::1")],
    "alias.example": [("CNAME", "implicit.example")],
    "short.example": [("A", "127.0.0.9", {"ttl": 5}), ("TXT", 'v=spf1 "quoted" -all')],
}


@pytest.fixture
def zone(dns_server):
    return dns_server(ZONE)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_mx_a_aaaa_and_null_mx(zone, tcp):
    q = lambda name, t: query(zone.address, name, t, tcp=tcp)  # noqa: E731
    r = q("mx.example", "MX")
    assert r.rcode == "NOERROR" and r.aa
    assert sorted(r.answers) == [("MX", 10, "mail1.mx.example"), ("MX", 20, "mail2.mx.example")]
    assert q("mail1.mx.example", "A").answers == [("A", "127.0.0.1")]
    assert q("mail2.mx.example", "A").answers == [("A", "127.0.0.2")]
    assert q("mail2.mx.example", "AAAA").answers == [("AAAA", "::1")]
    assert q("nullmx.example", "MX").answers == [("MX", 0, ".")]
    assert q("v6only.example", "AAAA").answers == [("AAAA", "::1")]
    assert q("alias.example", "A").answers == [("CNAME", "implicit.example"), ("A", "127.0.0.1")]
    assert q("short.example", "TXT").answers == [("TXT", 'v=spf1 "quoted" -all')]


def test_implicit_mx_nodata_and_nxdomain(zone):
    r = query(zone.address, "implicit.example", "MX")
    assert r.rcode == "NOERROR" and r.answers == []  # no MX: the A record is the implicit MX
    assert r.authority and r.authority[0][0] == "SOA"
    assert query(zone.address, "implicit.example", "A").answers == [("A", "127.0.0.1")]
    r = query(zone.address, "nowhere.example", "MX")
    assert r.rcode == "NXDOMAIN" and r.aa and r.answers == []
    assert query(zone.address, "Mail1.MX.Example", "A").answers == [("A", "127.0.0.1")]


def test_ttl(zone):
    r = query(zone.address, "short.example", "A")
    assert r.answers == [("A", "127.0.0.9")]
    # the TTL is in the raw answer: check through the parser's RR reader
    from dnszone import _parse_rr, _read_name
    _, pos = _read_name(r.raw, 12)
    (name, ttl, _), _ = _parse_rr(r.raw, pos + 4)
    assert name == "short.example" and ttl == 5


@pytest.mark.skipif(not shutil.which("dig"), reason="dig not installed (Debian package bind9-dnsutils)")
def test_dig(zone):
    def dig(*args):
        r = subprocess.run(["dig", "@127.0.0.1", "-p", str(zone.port), "+short", "+time=2",
                            "+tries=1"] + list(args), capture_output=True, timeout=10)
        assert r.returncode == 0, r
        return sorted(r.stdout.decode().split("\n"))[1:]

    assert dig("mx.example", "MX") == ["10 mail1.mx.example.", "20 mail2.mx.example."]
    assert dig("nullmx.example", "MX") == ["0 ."]
    assert dig("mail2.mx.example", "AAAA") == ["::1"]
    assert dig("+tcp", "mail1.mx.example", "A") == ["127.0.0.1"]


def test_update_is_served(zone):
    zone.update({"mx.example": [("MX", 5, "other.example")], "other.example": [("A", "127.0.0.5")]})
    # update() returns once only the new zone is served: no query after it, over
    # either transport, may still reach a server process holding the old zone
    for i in range(40):
        tcp = bool(i % 2)
        assert query(zone.address, "mx.example", "MX", tcp=tcp).answers == \
            [("MX", 5, "other.example")], "query %d (tcp=%s)" % (i, tcp)
        assert query(zone.address, "nullmx.example", "MX", tcp=tcp).rcode == "NXDOMAIN"


def test_dns_fixture_address_and_stop(dns):
    addr = dns({"a.example": [("A", "127.0.0.1")]})
    host, port = addr.split(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert query(addr, "a.example", "A").answers == [("A", "127.0.0.1")]
    [srv] = dns.servers
    assert srv.address == addr
    srv.stop()
    with pytest.raises(OSError):  # refused (ICMP) or timed out: nothing answers
        query(addr, "a.example", "A", timeout=0.5)


def test_two_servers_side_by_side(dns):
    a = dns({"x.example": [("A", "127.0.0.1")]})
    b = dns({"x.example": [("A", "127.0.0.2")]})
    assert a != b
    assert query(a, "x.example").answers == [("A", "127.0.0.1")]
    assert query(b, "x.example").answers == [("A", "127.0.0.2")]


@pytest.mark.skipif(not nsd_available(), reason="nsd not installed")
def test_context_manager_and_fixed_port():
    port = _free_udp_tcp_port()
    with DnsServer({"p.example": [("A", "127.0.0.1")]}, port=port) as srv:
        assert srv.address == "127.0.0.1:%d" % port
        assert query(srv.address, "p.example").answers == [("A", "127.0.0.1")]
