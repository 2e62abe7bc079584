"""A real authoritative DNS server (NSD) on a free loopback port, serving test
zones written from Python, plus a small stdlib-only DNS query helper.

NSD (Debian package `nsd`, installed by tools/bootstrap.sh) is started in the
foreground from a generated nsd.conf in a temp dir, as root, with no chroot,
no privilege drop, no database and no control channel, listening on
127.0.0.1:PORT over UDP and TCP.  Every name of `records` goes into a single
root zone ".", so NSD answers authoritatively (AA) for all of them and answers
NXDOMAIN for any other name, as a real DNS tree would.

    srv = DnsServer({
        "mx.example":       [("MX", 10, "mail1.mx.example"), ("MX", 20, "mail2.mx.example")],
        "mail1.mx.example": [("A", "127.0.0.1")],
        "mail2.mx.example": [("A", "127.0.0.2"), ("AAAA", "::1")],
        "nullmx.example":   [("MX", 0, ".")],          # RFC 7505 null MX
        "implicit.example": [("A", "127.0.0.1")],      # no MX: implicit MX
    })
    srv.start()
    srv.address            # "127.0.0.1:PORT" (for ringmx's "dns": {"servers": [...]})
    query(srv.address, "mx.example", "MX").answers  # [("MX", 10, "mail1.mx.example"), ...]
    srv.update({...})      # rewrite the zone, reload (SIGHUP), wait until only it is served
    srv.stop()

Record tuples: ("A", ip) ("AAAA", ip) ("MX", pref, host) ("CNAME", host)
("NS", host) ("TXT", text) ("PTR", host) ("SRV", prio, weight, port, host).
Names are absolute, with or without the final dot ("." is the root).  A TTL
other than 60 s: end the tuple with an options dict, ("A", ip, {"ttl": 5}).

Pytest fixtures (import them into the test module:
`from dnszone import dns, dns_server  # noqa: F401`):
  dns          factory: dns(records) -> "127.0.0.1:PORT"; the DnsServer objects
               are in dns.servers.  Stopped at teardown.
  dns_server   factory: dns_server(records) -> DnsServer (started).

If the nsd binary is missing the fixtures skip the test with the reason.
Waits are polls with deadlines; servers are stopped by PID (SIGTERM, then SIGKILL).
"""

import ctypes
import ipaddress
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import pytest

NSD_BIN = os.environ.get("NSD_BIN") or shutil.which("nsd") or "/usr/sbin/nsd"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
DEFAULT_TTL = 60

# --------------------------------------------------------------------------
# DNS wire format (RFC 1035): just enough to query and read answers

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
         "AAAA": 28, "SRV": 33, "ANY": 255}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _encode_name(name):
    name = name.rstrip(".")
    out = b""
    if name:
        for label in name.split("."):
            raw = label.encode("idna") if any(ord(c) > 127 for c in label) else label.encode()
            if not 0 < len(raw) < 64:
                raise ValueError("bad DNS label in %r" % name)
            out += bytes([len(raw)]) + raw
    return out + b"\0"


def _read_name(msg, pos):
    """(name without final dot, '.' for the root; position after the name)."""
    labels = []
    end = None
    hops = 0
    while True:
        n = msg[pos]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = pos + 2
            pos = ((n & 0x3F) << 8) | msg[pos + 1]
            hops += 1
            if hops > 64:
                raise ValueError("DNS name compression loop")
            continue
        pos += 1
        if n == 0:
            break
        labels.append(msg[pos:pos + n].decode("latin-1"))
        pos += n
    return (".".join(labels) or "."), (end if end is not None else pos)


class Response:
    def __init__(self, rcode, aa, tc, answers, authority, raw):
        self.rcode = rcode          # "NOERROR", "NXDOMAIN", ...
        self.aa = aa                # authoritative answer flag
        self.tc = tc                # truncated flag
        self.answers = answers      # [("MX", 10, "mail1.mx.example"), ("A", "127.0.0.1"), ...]
        self.authority = authority  # same form, authority section
        self.raw = raw

    def __repr__(self):
        return "Response(%s aa=%s answers=%r)" % (self.rcode, self.aa, self.answers)


def _parse_rr(msg, pos):
    name, pos = _read_name(msg, pos)
    rtype, _cls, ttl, rdlen = struct.unpack("!HHIH", msg[pos:pos + 10])
    pos += 10
    rd = msg[pos:pos + rdlen]
    tname = TYPE_NAMES.get(rtype, "TYPE%d" % rtype)
    if rtype == 1:
        data = (str(ipaddress.IPv4Address(rd)),)
    elif rtype == 28:
        data = (str(ipaddress.IPv6Address(rd)),)
    elif rtype == 15:
        data = (struct.unpack("!H", rd[:2])[0], _read_name(msg, pos + 2)[0])
    elif rtype in (2, 5, 12):
        data = (_read_name(msg, pos)[0],)
    elif rtype == 16:
        parts, i = [], 0
        while i < len(rd):
            parts.append(rd[i + 1:i + 1 + rd[i]].decode("utf-8", "replace"))
            i += 1 + rd[i]
        data = ("".join(parts),)
    elif rtype == 33:
        prio, weight, port = struct.unpack("!HHH", rd[:6])
        data = (prio, weight, port, _read_name(msg, pos + 6)[0])
    elif rtype == 6:
        mname, p = _read_name(msg, pos)
        rname, p = _read_name(msg, p)
        data = (mname, rname) + struct.unpack("!IIIII", msg[p:p + 20])
    else:
        data = (rd,)
    return (name, ttl, (tname,) + data), pos + rdlen


def parse_response(msg, qid=None):
    ident, flags, qd, an, ns, _ar = struct.unpack("!HHHHHH", msg[:12])
    if qid is not None and ident != qid:
        raise ValueError("DNS reply id %d does not match query id %d" % (ident, qid))
    pos = 12
    for _ in range(qd):
        _, pos = _read_name(msg, pos)
        pos += 4
    sections = []
    for count in (an, ns):
        rrs = []
        for _ in range(count):
            rr, pos = _parse_rr(msg, pos)
            rrs.append(rr)
        sections.append(rrs)
    return Response(RCODES.get(flags & 0xF, str(flags & 0xF)), bool(flags & 0x0400),
                    bool(flags & 0x0200), [rr[2] for rr in sections[0]],
                    [rr[2] for rr in sections[1]], msg)


def _split_addr(server):
    if isinstance(server, tuple):
        return server
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def query(server, name, qtype="A", tcp=False, timeout=2.0):
    """Send one query (RD set) to server ("127.0.0.1:PORT" or (host, port)) and
    return a Response.  Raises socket.timeout / OSError when nothing answers."""
    host, port = _split_addr(server)
    qid = random.randrange(65536)
    pkt = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _encode_name(name) + \
        struct.pack("!HH", TYPES[qtype.upper()], 1)
    deadline = time.monotonic() + timeout
    if tcp:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(pkt)) + pkt)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = s.recv(65536)
                if not chunk:
                    raise OSError("DNS server closed the TCP connection early")
                buf += chunk
            return parse_response(buf[2:2 + struct.unpack("!H", buf[:2])[0]], qid)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        s.send(pkt)
        while True:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            msg = s.recv(65535)
            if len(msg) >= 12 and struct.unpack("!H", msg[:2])[0] == qid:
                return parse_response(msg, qid)


# --------------------------------------------------------------------------
# zone file


def _fqdn(name):
    name = name.strip()
    if name in ("", "."):
        return "."
    return name.rstrip(".") + "."


def _zone_text(records, serial):
    lines = ["$ORIGIN .", "$TTL %d" % DEFAULT_TTL,
             ". IN SOA ns.dnszone.test. hostmaster.dnszone.test. %d 3600 600 86400 %d"
             % (serial, DEFAULT_TTL),
             ". IN NS ns.dnszone.test.",
             "ns.dnszone.test. IN A 127.0.0.1"]
    for name, rrs in records.items():
        owner = _fqdn(name)
        for rr in rrs:
            rr = tuple(rr)
            opts = rr[-1] if rr and isinstance(rr[-1], dict) else {}
            if opts:
                rr = rr[:-1]
            ttl = int(opts.get("ttl", DEFAULT_TTL))
            t = rr[0].upper()
            if t == "A":
                data = str(ipaddress.IPv4Address(rr[1]))
            elif t == "AAAA":
                data = str(ipaddress.IPv6Address(rr[1]))
            elif t == "MX":
                data = "%d %s" % (int(rr[1]), _fqdn(rr[2]))
            elif t in ("CNAME", "NS", "PTR"):
                data = _fqdn(rr[1])
            elif t == "TXT":
                data = '"%s"' % str(rr[1]).replace("\\", "\\\\").replace('"', '\\"')
            elif t == "SRV":
                data = "%d %d %d %s" % (int(rr[1]), int(rr[2]), int(rr[3]), _fqdn(rr[4]))
            else:
                raise ValueError("unsupported record type %r for %s" % (rr[0], name))
            lines.append("%s %d IN %s %s" % (owner, ttl, t, data))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# the server


def _die_with_parent():
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_udp_tcp_port():
    """A loopback port free for both TCP and UDP a moment ago."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free UDP+TCP loopback port")


def nsd_available():
    return os.path.isfile(NSD_BIN) and os.access(NSD_BIN, os.X_OK)


class DnsServer:
    """NSD serving `records` on 127.0.0.1:port (UDP and TCP)."""

    def __init__(self, records=None, port=0, keep_dir=False):
        self.records = dict(records or {})
        self.port = port
        self.keep_dir = keep_dir or os.environ.get("RINGMX_KEEP") == "1"
        self.dir = tempfile.mkdtemp(prefix="dnszone-")
        self.proc = None
        self.serial = 1
        self.conf_path = os.path.join(self.dir, "nsd.conf")
        self.zone_path = os.path.join(self.dir, "root.zone")
        self.log_path = os.path.join(self.dir, "nsd.log")
        self.stderr_path = os.path.join(self.dir, "nsd.stderr")

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _write_conf(self):
        d = self.dir
        conf = "\n".join([
            "server:",
            "  ip-address: 127.0.0.1",
            "  port: %d" % self.port,
            '  username: ""',
            '  chroot: ""',
            '  zonesdir: "%s"' % d,
            '  database: ""',
            '  zonelistfile: "%s/zone.list"' % d,
            '  xfrdfile: "%s/xfrd.state"' % d,
            '  xfrdir: "%s"' % d,
            '  pidfile: "%s/nsd.pid"' % d,
            '  logfile: "%s"' % self.log_path,
            "  server-count: 1",
            "  verbosity: 1",
            "  do-ip6: no",
            "  hide-version: yes",
            "remote-control:",
            "  control-enable: no",
            "zone:",
            '  name: "."',
            '  zonefile: "root.zone"',
            ""])
        with open(self.conf_path, "w") as f:
            f.write(conf)

    def _write_zone(self):
        tmp = self.zone_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(_zone_text(self.records, self.serial))
        os.rename(tmp, self.zone_path)

    def _serving(self, serial):
        try:
            r = query(self.address, ".", "SOA", timeout=0.25)
        except OSError:
            return False
        return r.rcode == "NOERROR" and r.answers and r.answers[0][0] == "SOA" \
            and r.answers[0][3] == serial

    def log_tail(self, n=30):
        out = []
        for p in (self.stderr_path, self.log_path):
            try:
                with open(p, "rb") as f:
                    out += f.read().decode("utf-8", "replace").splitlines()[-n:]
            except OSError:
                pass
        return "\n".join(out)

    def start(self):
        if not nsd_available():
            raise FileNotFoundError("nsd not found at %s (Debian package nsd)" % NSD_BIN)
        assert self.proc is None, "DNS server already running"
        fixed = self.port != 0
        self._write_zone()
        for attempt in range(5):
            if not fixed:
                self.port = _free_udp_tcp_port()
            self._write_conf()
            with open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen([NSD_BIN, "-d", "-c", self.conf_path],
                                             cwd=self.dir, stdin=subprocess.DEVNULL,
                                             stdout=err, stderr=err,
                                             preexec_fn=_die_with_parent)
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if self._serving(self.serial):
                    return self
                if self.proc.poll() is not None:
                    self.proc = None
                    break  # most likely lost the port to someone else: try another
                if time.monotonic() >= deadline:
                    self.stop()
                    raise AssertionError("nsd did not answer on %s within %.0fs:\n%s"
                                         % (self.address, START_TIMEOUT_S, self.log_tail()))
                time.sleep(0.02)  # poll interval of the readiness probe
            if fixed:
                break
        raise AssertionError("nsd exited during start-up (port %d):\n%s" % (self.port, self.log_tail()))

    def _server_pids(self):
        """PIDs of the query-answering processes ("nsd: server N") under our nsd."""
        parents, names = {}, {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    stat = f.read()
            except OSError:
                continue  # gone meanwhile
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":  # a zombie answers nothing
                parents[int(d)], names[int(d)] = int(fields[1]), comm
        out = set()
        for pid, name in names.items():
            if not name.startswith("nsd: server"):
                continue
            p = pid
            while p in parents and p != self.proc.pid:
                p = parents[p]
            if p == self.proc.pid:
                out.add(pid)
        return out

    def update(self, records):
        """Replace every record and wait until NSD serves the new zone, and only it.

        On SIGHUP NSD starts new server processes with the new zone and only
        then tells the old ones to quit, so for a while both read the same
        sockets and a query may get either zone.  One answer with the new
        serial is therefore not enough: wait until the old servers are gone."""
        assert self.proc is not None, "DNS server not running"
        old = self._server_pids()
        assert old, "no 'nsd: server' process under nsd pid %d: cannot tell when a reload " \
            "is complete (NSD process names changed?)" % self.proc.pid
        self.records = dict(records)
        self.serial += 1
        self._write_zone()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._serving(self.serial) or old & self._server_pids():
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                raise AssertionError("nsd did not serve only zone serial %d (old servers "
                                     "still running: %r):\n%s"
                                     % (self.serial, sorted(old & self._server_pids()),
                                        self.log_tail()))
            time.sleep(0.02)  # poll interval of the reload probe

    def stop(self):
        """SIGTERM by PID, SIGKILL after STOP_TIMEOUT_S; removes the temp dir."""
        p, self.proc = self.proc, None
        if p is not None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# fixtures


def _skip_without_nsd():
    if not nsd_available():
        pytest.skip("nsd is not installed (Debian package nsd, installed by tools/bootstrap.sh); "
                    "DNS tests need a real authoritative server")


def _factory_fixture(result):
    servers = []

    def factory(records=None, port=0):
        _skip_without_nsd()
        s = DnsServer(records, port=port)
        servers.append(s)
        s.start()
        return result(s)

    factory.servers = servers
    try:
        yield factory
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def closed_dns_port():
    """closed_dns_port() -> a loopback port where nothing answers DNS until the
    test ends: UDP gets "port unreachable", TCP a reset.  _free_udp_tcp_port()
    is free only for a moment (another test run's NSD may bind it next); this
    one stays held: a TCP socket bound but not listening, and a UDP socket
    bound and connected elsewhere, so the kernel gives it no other sender's
    datagrams.  Neither sets SO_REUSEADDR: nobody else can bind the port."""
    held = []

    def make():
        for _ in range(50):
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(t)
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(u)
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue  # UDP side taken: another port
            u.connect(("127.0.0.1", 9))  # never sends; only filters what it receives
            return port
        raise RuntimeError("no loopback port free for both UDP and TCP")

    yield make
    for s in held:
        s.close()


@pytest.fixture
def dns_server():
    """dns_server(records) -> started DnsServer; all stopped at teardown."""
    yield from _factory_fixture(lambda s: s)


@pytest.fixture
def dns():
    """dns(records) -> "127.0.0.1:PORT"; the servers are in dns.servers."""
    yield from _factory_fixture(lambda s: s.address)
