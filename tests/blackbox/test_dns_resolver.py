"""The MX resolver (src/dns) against a real DNS server: NSD on loopback serving
test zones (dnszone.py), driven through tests/dns_probe (src/dns on a real
io_uring ring).  RFC 5321 5.1 (MX by preference, equal preferences randomised,
implicit MX), RFC 7505 (null MX), failures that are permanent or temporary,
and the named bounds DNS_QUERIES_MAX, DNS_MX_MAX, DNS_ADDR_MAX.

The probe is the one next to the ringmx under test (dirname(RINGMX_BIN)/tests/
dns_probe, so tests/run.sh exercises both the strict and the ASan build), or
RINGMX_DNS_PROBE.  Each run must exit 0 with no sanitizer report: the probe
aborts on a callback that fires synchronously or more than once."""

import os
import re
import socket
import subprocess
import time

import pytest

from conftest import RINGMX_BIN, SANITIZER_MARKERS
from dnszone import closed_dns_port, dns  # noqa: F401  (fixtures)

PROBE = os.environ.get("RINGMX_DNS_PROBE") or os.path.join(
    os.path.dirname(os.path.abspath(RINGMX_BIN)), "tests", "dns_probe")
PROBE_RUN_TIMEOUT_S = 60
TIMEOUT_MS = 300  # per try; with 2 tries one request gives up after 300 + 600 ms
TRIES = 2
HOST_RE = re.compile(r"^(\d+):(.+)\[(.*)\](\+?)$")

pytestmark = pytest.mark.skipif(
    not os.access(PROBE, os.X_OK),
    reason="dns_probe not built at %s (meson compile builds tests/dns_probe)" % PROBE)


class Host:
    def __init__(self, token):
        m = HOST_RE.match(token)
        assert m, "bad host token %r" % token
        self.pref = int(m.group(1))
        self.name = m.group(2)
        inner = m.group(3)
        self.fail = inner[1:] if inner.startswith("!") else None
        self.addrs = [] if self.fail else inner.split(",")
        self.addr_truncated = m.group(4) == "+"

    def __repr__(self):
        return "%d:%s[%s]" % (self.pref, self.name, self.fail or ",".join(self.addrs))


class Result:
    """One probe line: DOMAIN status=S [implicit] [mx_truncated] [mx=H H ...] [why=...]"""

    def __init__(self, line):
        head, _, self.why = line.partition(" why=")
        toks = head.split()
        self.domain = toks[0]
        assert toks[1].startswith("status="), line
        self.status = toks[1][len("status="):]
        self.flags = set()
        self.hosts = []
        for i, t in enumerate(toks[2:], 2):
            if t.startswith("mx="):
                self.hosts = [Host(t[3:])] + [Host(x) for x in toks[i + 1:]]
                break
            self.flags.add(t)
        self.line = line

    @property
    def mx(self):
        return [(h.pref, h.name, h.fail or h.addrs) for h in self.hosts]

    def __repr__(self):
        return self.line


def probe(server, domains, timeout_ms=TIMEOUT_MS, tries=TRIES, extra=()):
    """Run the probe; (results in argument order, elapsed seconds)."""
    cmd = [PROBE, "-t", str(timeout_ms), "-r", str(tries)] + list(extra) + [server] + \
        list(domains)
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_RUN_TIMEOUT_S)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, "dns_probe exit %d\nstdout:\n%s\nstderr:\n%s" % (
        p.returncode, p.stdout, p.stderr)
    for marker in SANITIZER_MARKERS:
        assert marker not in p.stderr, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == len(domains), p.stdout
    results = [Result(line) for line in lines]
    assert [r.domain for r in results] == list(domains)
    return results, elapsed


def probe_one(server, domain, **kw):
    return probe(server, [domain], **kw)[0][0]


def limits():
    out = subprocess.run([PROBE, "-l"], capture_output=True, text=True, check=True,
                         timeout=PROBE_RUN_TIMEOUT_S).stdout
    return {k: int(v) for k, v in (kv.split("=") for kv in out.split())}


@pytest.fixture
def silent_udp():
    """A loopback UDP port that receives and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield "127.0.0.1:%d" % s.getsockname()[1]
    s.close()


# --------------------------------------------------------------------------
# RFC 5321 5.1: what the answer means


def test_mx_sorted_by_preference_with_a_and_aaaa(dns):
    srv = dns({
        "mx.example": [("MX", 30, "mail3.mx.example"), ("MX", 10, "mail1.mx.example"),
                       ("MX", 20, "mail2.mx.example")],
        "mail1.mx.example": [("A", "127.0.0.1"), ("AAAA", "::1")],
        "mail2.mx.example": [("A", "127.0.0.2")],
        "mail3.mx.example": [("AAAA", "::3")],
    })
    r = probe_one(srv, "mx.example")
    assert r.status == "OK" and not r.flags, r
    assert r.mx == [(10, "mail1.mx.example", ["127.0.0.1", "::1"]),
                    (20, "mail2.mx.example", ["127.0.0.2"]),
                    (30, "mail3.mx.example", ["::3"])]


def test_final_dot_and_case_are_accepted(dns):
    srv = dns({"mx.example": [("MX", 5, "mail.mx.example")],
               "mail.mx.example": [("A", "127.0.0.7")]})
    r = probe_one(srv, "MX.Example.")
    # the server may echo the question's case through name compression
    assert r.status == "OK" and len(r.hosts) == 1, r
    h = r.hosts[0]
    assert (h.pref, h.name.lower(), h.addrs) == (5, "mail.mx.example", ["127.0.0.7"]), r


def test_implicit_mx_a_only(dns):
    srv = dns({"implicit.example": [("A", "127.0.0.1")]})
    r = probe_one(srv, "implicit.example")
    assert r.status == "OK" and r.flags == {"implicit"}, r
    assert r.mx == [(0, "implicit.example", ["127.0.0.1"])]


def test_implicit_mx_aaaa_only(dns):
    srv = dns({"v6only.example": [("AAAA", "::1")]})
    r = probe_one(srv, "v6only.example")
    assert r.status == "OK" and r.flags == {"implicit"}, r
    assert r.mx == [(0, "v6only.example", ["::1"])]


def test_mx_target_through_cname(dns):
    srv = dns({"cn.example": [("MX", 10, "alias.cn.example")],
               "alias.cn.example": [("CNAME", "real.cn.example")],
               "real.cn.example": [("A", "127.0.0.8")]})
    r = probe_one(srv, "cn.example")
    assert r.status == "OK" and r.mx == [(10, "alias.cn.example", ["127.0.0.8"])], r


def test_null_mx(dns):
    srv = dns({"nullmx.example": [("MX", 0, ".")], "other.example": [("A", "127.0.0.1")]})
    r = probe_one(srv, "nullmx.example")
    assert r.status == "NULLMX" and r.hosts == [], r
    assert "null MX" in r.why


def test_root_target_among_real_hosts_is_skipped(dns):
    srv = dns({"mixed.example": [("MX", 0, "."), ("MX", 10, "mail.mixed.example")],
               "mail.mixed.example": [("A", "127.0.0.9")]})
    r = probe_one(srv, "mixed.example")
    assert r.status == "OK" and r.mx == [(10, "mail.mixed.example", ["127.0.0.9"])], r


def test_nxdomain(dns):
    srv = dns({"exists.example": [("A", "127.0.0.1")]})
    r = probe_one(srv, "nowhere.example")
    assert r.status == "NXDOMAIN" and r.hosts == [], r


def test_host_without_address_is_marked_others_fine(dns):
    srv = dns({
        "part.example": [("MX", 10, "noaddr.part.example"), ("MX", 20, "ok.part.example"),
                         ("MX", 30, "gone.part.example")],
        "noaddr.part.example": [("TXT", "no address here")],
        "ok.part.example": [("A", "127.0.0.5")],
    })
    r = probe_one(srv, "part.example")
    assert r.status == "OK", r
    assert r.mx == [(10, "noaddr.part.example", "NOADDR"),
                    (20, "ok.part.example", ["127.0.0.5"]),
                    (30, "gone.part.example", "NXDOMAIN")]


def test_no_usable_host_is_a_permanent_error(dns):
    srv = dns({"dead.example": [("MX", 10, "gone.dead.example")],
               "txtonly.example": [("TXT", "no mail")]})
    dead, txtonly = probe(srv, ["dead.example", "txtonly.example"])[0]
    assert dead.status == "NOADDR" and dead.mx == [(10, "gone.dead.example", "NXDOMAIN")], dead
    # MX NODATA and no A/AAAA either: the implicit MX is unusable (RFC 5321 5.1)
    assert txtonly.status == "NOADDR" and txtonly.flags == {"implicit"}, txtonly
    assert txtonly.mx == [(0, "txtonly.example", "NOADDR")]


def test_equal_preferences_both_present_in_random_order(dns):
    srv = dns({"eq.example": [("MX", 10, "a.eq.example"), ("MX", 10, "b.eq.example"),
                              ("MX", 5, "first.eq.example")],
               "a.eq.example": [("A", "127.0.0.3")], "b.eq.example": [("A", "127.0.0.4")],
               "first.eq.example": [("A", "127.0.0.2")]})
    results, _ = probe(srv, ["eq.example"] * 40)
    orders = set()
    for r in results:
        assert r.status == "OK", r
        assert r.mx[0] == (5, "first.eq.example", ["127.0.0.2"]), r
        assert sorted(r.mx[1:]) == [(10, "a.eq.example", ["127.0.0.3"]),
                                    (10, "b.eq.example", ["127.0.0.4"])], r
        orders.add(tuple(h.name for h in r.hosts))
    # RFC 5321 5.1 "MUST randomize": 40 resolutions all in one order is 2^-39
    assert len(orders) == 2, orders


# --------------------------------------------------------------------------
# servers that fail


def test_server_that_does_not_answer_is_tempfail_within_timeout(silent_udp):
    r, elapsed = probe(silent_udp, ["mx.example"])
    assert r[0].status == "TEMPFAIL" and "Timeout" in r[0].why, r
    bound = (TIMEOUT_MS + 2 * TIMEOUT_MS) / 1000.0  # c-ares doubles per round
    assert bound * 0.8 <= elapsed < bound + 3.0, elapsed


def test_nothing_listening_is_tempfail(closed_dns_port):
    r, elapsed = probe("127.0.0.1:%d" % closed_dns_port(), ["mx.example"])
    assert r[0].status == "TEMPFAIL", r
    assert elapsed < 5.0


def test_failover_to_the_next_server(dns, silent_udp):
    srv = dns({"mx.example": [("MX", 10, "mail.mx.example")],
               "mail.mx.example": [("A", "127.0.0.1")]})
    r, _ = probe(silent_udp + "," + srv, ["mx.example"])
    assert r[0].status == "OK" and r[0].mx == [(10, "mail.mx.example", ["127.0.0.1"])], r


def test_shutdown_ends_queries_in_flight_with_tempfail(silent_udp):
    r, elapsed = probe(silent_udp, ["a.example", "b.example"], timeout_ms=5000,
                       extra=["-s", "100"])
    assert [x.status for x in r] == ["TEMPFAIL", "TEMPFAIL"], r
    assert all(x.why == "resolver shut down" for x in r), r
    assert elapsed < 4.0


# --------------------------------------------------------------------------
# concurrency and bounds


def test_many_domains_at_once(dns):
    n = 50
    zone = {}
    for i in range(n):
        zone["d%d.many.example" % i] = [("MX", 10, "mx%d.many.example" % i),
                                        ("MX", 20, "backup.many.example")]
        zone["mx%d.many.example" % i] = [("A", "127.0.1.%d" % (i + 1))]
    zone["backup.many.example"] = [("A", "127.0.2.1"), ("AAAA", "::2")]
    zone["implicit.many.example"] = [("A", "127.0.3.1")]
    srv = dns(zone)
    domains = ["d%d.many.example" % i for i in range(n)] + ["implicit.many.example",
                                                            "nx.many.example"]
    results, elapsed = probe(srv, domains)
    for i in range(n):
        assert results[i].status == "OK", results[i]
        assert results[i].mx == [(10, "mx%d.many.example" % i, ["127.0.1.%d" % (i + 1)]),
                                 (20, "backup.many.example", ["127.0.2.1", "::2"])]
    assert results[n].mx == [(0, "implicit.many.example", ["127.0.3.1"])]
    assert results[n + 1].status == "NXDOMAIN"
    assert elapsed < 10.0


def test_queries_max_bound(dns):
    cap = limits()["DNS_QUERIES_MAX"]
    srv = dns({"q%d.example" % i: [("A", "127.0.4.1")] for i in range(cap + 4)})
    domains = ["q%d.example" % i for i in range(cap + 4)]
    results, _ = probe(srv, domains)
    assert [r.status for r in results] == ["OK"] * cap + ["EAGAIN"] * 4


def test_mx_max_bound_large_answer_over_tcp(dns):
    cap = limits()["DNS_MX_MAX"]
    count = cap + 24
    # Long exchange names: the answer outgrows the EDNS UDP size, comes back
    # truncated and c-ares asks again over TCP (a socket that wants to write).
    label = "exchange-with-a-rather-long-name-number-%02d"
    zone = {"big.example": [("MX", 100 - i, (label % i) + ".big.example") for i in range(count)]}
    for i in range(count):
        zone[(label % i) + ".big.example"] = [("A", "127.0.5.%d" % (i + 1))]
    srv = dns(zone)
    r = probe_one(srv, "big.example")
    assert r.status == "OK" and r.flags == {"mx_truncated"}, r
    want = sorted(range(count), key=lambda i: 100 - i)[:cap]
    assert r.mx == [(100 - i, (label % i) + ".big.example", ["127.0.5.%d" % (i + 1)])
                    for i in want]


def test_addr_max_bound_interleaves_families(dns):
    cap = limits()["DNS_ADDR_MAX"]
    v4 = ["127.0.6.%d" % (i + 1) for i in range(cap + 4)]
    v6 = ["2001:db8::6:%d" % (i + 1) for i in range(2)]
    srv = dns({"many-addr.example": [("MX", 10, "mail.many-addr.example")],
               "mail.many-addr.example": [("A", a) for a in v4] + [("AAAA", a) for a in v6]})
    r = probe_one(srv, "many-addr.example")
    assert r.status == "OK", r
    h = r.hosts[0]
    assert len(h.addrs) == cap and h.addr_truncated, r
    got4 = [a for a in h.addrs if ":" not in a]
    got6 = [a for a in h.addrs if ":" in a]
    assert sorted(got6) == sorted(v6) and set(got4) <= set(v4) and len(got4) == cap - 2
    # interleaved, IPv4 first
    assert ":" not in h.addrs[0] and ":" in h.addrs[1] and ":" in h.addrs[3]


def test_names_that_cannot_be_domains_are_refused(dns):
    srv = dns({"ok.example": [("A", "127.0.0.1")]})
    bad = ["a..example", ".", "x" * 64 + ".example", ".".join(["abcdefghi"] * 26),
           "back\\slash.example", "del\x7f.example"]
    results, _ = probe(srv, bad + ["ok.example"])
    assert [r.status for r in results] == ["EINVAL"] * len(bad) + ["OK"], results
