#!/usr/bin/env python3
"""perf/tls_load.py - SMTP load client with STARTTLS (stdlib only).

smtp-source cannot do TLS, so perf/bench.sh (MODE=tls) drives the targets with
this. Two modes:

load (default): SESSIONS worker processes send MSGS messages of SIZE bytes in
  all. Each message, by default, has a connection of its own, as smtp-source
  sends them: banner, EHLO, STARTTLS, (handshake), EHLO, MAIL, RCPT, DATA,
  the body, QUIT. --reuse K sends up to K messages per connection (RSET-free:
  the next MAIL follows the 250 of the previous DATA). Workers take the next
  message number from a shared counter, so a slow session does not hold back
  the others. Bounded by MSGS and by --timeout (seconds for the whole run;
  each socket operation also times out after --io-timeout).

idle (--idle N): open N sessions one after the other, each up to the EHLO
  after the TLS handshake (or only EHLO with --no-tls), write "READY n" to
  --ready-file (and stdout), hold them until SIGTERM/SIGINT or --hold seconds,
  then send QUIT on each and close. Used to measure the server's memory per
  idle session.

Output (load): human lines starting with "#", then one line
  TLSLOAD key=value ...
with accepted, failed, wall_s, rate (accepted / wall), client_cpu_s (user+sys
of this process and its workers, from getrusage), the TLS version and cipher
seen, and the first error messages.

TLS: no certificate verification (self-signed test certificates), SNI from
--sni, versions 1.2..1.3 (--tls-max 1.2 to cap), full handshake on every
connection unless --resume (then each worker offers the session of its
previous connection).
"""
import argparse
import multiprocessing as mp
import os
import resource
import signal
import socket
import ssl
import sys
import time


class SMTPError(Exception):
    pass


class Conn:
    """One SMTP connection: line-buffered replies over a plain or TLS socket."""

    def __init__(self, host, port, io_timeout):
        self.sock = socket.create_connection((host, port), timeout=io_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.tls = None

    def reply(self, expect):
        """Read one (possibly multi-line) reply; raise unless its code starts with expect."""
        lines = []
        while True:
            i = self.buf.find(b"\r\n")
            if i < 0:
                if len(self.buf) > 65536:
                    raise SMTPError("reply line too long")
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise SMTPError("connection closed by server%s" % (" after " + lines[-1].decode("latin-1") if lines else ""))
                self.buf += chunk
                continue
            line, self.buf = self.buf[:i], self.buf[i + 2:]
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                break
        code = lines[-1][:3].decode("latin-1")
        if not code.startswith(expect):
            raise SMTPError("expected %sxx, got: %s" % (expect, lines[-1].decode("latin-1", "replace")[:200]))
        return lines

    def cmd(self, line, expect):
        self.sock.sendall(line)
        return self.reply(expect)

    def starttls(self, ctx, sni, session=None):
        lines = self.cmd(b"STARTTLS\r\n", "2")
        if self.buf:
            raise SMTPError("server sent data after 220 to STARTTLS")
        self.sock = ctx.wrap_socket(self.sock, server_hostname=sni, session=session)
        self.tls = self.sock
        return lines

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def make_ctx(tls_max):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3 if tls_max == "1.3" else ssl.TLSVersion.TLSv1_2
    return ctx


def open_session(a, ctx, session=None):
    """Connect, banner, EHLO, [STARTTLS, EHLO]. Returns the Conn."""
    c = Conn(a.host, a.port, a.io_timeout)
    try:
        c.reply("2")
        ehlo = c.cmd(b"EHLO " + a.helo.encode() + b"\r\n", "2")
        if not a.no_tls:
            if not any(l[4:].upper().startswith(b"STARTTLS") for l in ehlo):
                raise SMTPError("server does not offer STARTTLS")
            c.starttls(ctx, a.sni, session)
            c.cmd(b"EHLO " + a.helo.encode() + b"\r\n", "2")
    except BaseException:
        c.close()
        raise
    return c


def build_message(a):
    """A SIZE-byte message (headers + 78-byte lines), ending CRLF; no line starts with '.'."""
    head = ("From: <%s>\r\nTo: <%s>\r\nSubject: tls_load %d bytes\r\n\r\n" % (a.sender, a.rcpt, a.size)).encode()
    n = max(a.size - len(head), 2)
    line = b"x" * 76 + b"\r\n"
    body = line * (n // len(line))
    rest = n - len(body)
    if rest >= 2:
        body += b"y" * (rest - 2) + b"\r\n"
    return head + body


def worker(wid, a, counter, go, deadline_box, results):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = make_ctx(a.tls_max)
    msg = build_message(a) + b".\r\n"
    mail = ("MAIL FROM:<%s> SIZE=%d\r\n" % (a.sender, len(msg))).encode()
    rcpt = ("RCPT TO:<%s>\r\n" % a.rcpt).encode()
    acc = fail = conns = resumed = 0
    errors = {}
    tlsinfo = ""
    session = None
    go.wait()
    deadline = deadline_box.value
    c = None
    in_conn = 0

    def claim():
        with counter.get_lock():
            if counter.value <= 0:
                return False
            counter.value -= 1
            return True

    while time.time() < deadline and claim():
        try:
            if c is None:
                c = open_session(a, ctx, session if a.resume else None)
                conns += 1
                in_conn = 0
                if c.tls is not None:
                    if not tlsinfo:
                        ci = c.tls.cipher()
                        tlsinfo = "%s/%s" % (c.tls.version(), ci[0] if ci else "?")
                    if a.resume:
                        resumed += bool(c.tls.session_reused)
                        session = c.tls.session
            c.cmd(mail, "2")
            c.cmd(rcpt, "2")
            c.cmd(b"DATA\r\n", "3")
            c.sock.sendall(msg)
            c.reply("2")
            acc += 1
            in_conn += 1
            if in_conn >= a.reuse:
                try:
                    c.cmd(b"QUIT\r\n", "2")
                except (OSError, SMTPError):
                    pass
                c.close()
                c = None
        except (OSError, SMTPError, ssl.SSLError) as e:
            fail += 1
            k = "%s: %s" % (type(e).__name__, str(e)[:160])
            errors[k] = errors.get(k, 0) + 1
            if c is not None:
                c.close()
                c = None
    if c is not None:
        try:
            c.cmd(b"QUIT\r\n", "2")
        except (OSError, SMTPError, ssl.SSLError):
            pass
        c.close()
    results.put((wid, acc, fail, conns, tlsinfo, errors, time.time(), resumed))


def sys_ticks():
    """(busy, total) jiffies of the whole machine from /proc/stat (as the peers' lib.sh sys_ticks), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        return busy, busy + v[3] + v[4]
    except (OSError, ValueError, IndexError):
        return None


def run_load(a):
    counter = mp.Value("q", a.msgs)
    go = mp.Event()
    deadline_box = mp.Value("d", 0.0)
    results = mp.Queue()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = resource.getrusage(resource.RUSAGE_SELF)
    procs = [mp.Process(target=worker, args=(i, a, counter, go, deadline_box, results), daemon=True) for i in range(a.sessions)]
    for p in procs:
        p.start()
    time.sleep(0.2)   # let the workers reach go.wait()
    k0 = sys_ticks()
    t0 = time.time()
    deadline_box.value = t0 + a.timeout
    go.set()
    got = []
    # collect results before joining (a full pipe would block a worker's exit)
    while len(got) < len(procs) and time.time() < t0 + a.timeout + a.io_timeout + 5:
        try:
            got.append(results.get(timeout=0.5))
        except Exception:
            if not any(p.is_alive() for p in procs) and results.empty():
                break
    t1 = time.time()
    k1 = sys_ticks()
    busy = 100.0 * (k1[0] - k0[0]) / (k1[1] - k0[1]) if k0 and k1 and k1[1] > k0[1] else -1
    for p in procs:
        p.join(timeout=2)
        if p.is_alive():
            p.kill()
            p.join(timeout=2)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s1 = resource.getrusage(resource.RUSAGE_SELF)
    acc = sum(g[1] for g in got)
    fail = sum(g[2] for g in got)
    conns = sum(g[3] for g in got)
    resumed = sum(g[7] for g in got)
    tlsinfo = next((g[4] for g in got if g[4]), "none" if a.no_tls else "?")
    errors = {}
    for g in got:
        for k, v in g[5].items():
            errors[k] = errors.get(k, 0) + v
    last = max((g[6] for g in got), default=t1)
    wall = (last if got else t1) - t0
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime) + (s1.ru_utime - s0.ru_utime) + (s1.ru_stime - s0.ru_stime)
    lost = len(procs) - len(got)
    timed_out = acc + fail < a.msgs
    rate = acc / wall if wall > 0 else 0.0
    print("# %s:%d %d sessions x %d msgs of %d bytes, %s, %s" % (
        a.host, a.port, a.sessions, a.msgs, a.size, "plaintext" if a.no_tls else "STARTTLS " + tlsinfo,
        "one message per connection" if a.reuse == 1 else "up to %d messages per connection" % a.reuse))
    print("# accepted %d/%d (failed %d) in %.3fs -> %.1f msg/s; %d connections%s; client CPU %.2fs (%.3f ms/msg); machine busy %.0f%%" % (
        acc, a.msgs, fail, wall, rate, conns, " (%d resumed TLS sessions)" % resumed if a.resume else "", cpu, 1000 * cpu / acc if acc else 0, busy))
    for k, v in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        print("# error x%d: %s" % (v, k))
    if lost:
        print("# %d worker(s) did not report (killed)" % lost)
    st = []
    if fail:
        st.append("FAILED")
    if timed_out:
        st.append("TIMEOUT")
    if lost:
        st.append("LOST_WORKERS")
    if acc != a.msgs:
        st.append("PARTIAL_ACCEPT")
    first_err = next(iter(sorted(errors.items(), key=lambda kv: -kv[1])), ("", 0))[0]
    print("TLSLOAD port=%d sessions=%d msgs=%d size=%d reuse=%d tls=%s accepted=%d failed=%d conns=%d resumed=%d wall_s=%.3f rate=%.1f "
          "client_cpu_s=%.2f busy_pct=%.0f t0=%.6f status=%s first_error=%s" % (
              a.port, a.sessions, a.msgs, a.size, a.reuse, "none" if a.no_tls else tlsinfo, acc, fail, conns, resumed, wall, rate,
              cpu, busy, t0, "+".join(st) or "OK", first_err.replace(" ", "_")[:120] or "-"))
    sys.stdout.flush()
    return 0 if not st else 1


def run_idle(a):
    stop = {"flag": False}

    def on_sig(_s, _f):
        stop["flag"] = True
    signal.signal(signal.SIGTERM, on_sig)
    signal.signal(signal.SIGINT, on_sig)
    ctx = make_ctx(a.tls_max)
    conns = []
    errors = 0
    t_end = time.time() + a.timeout
    for _ in range(a.idle):
        if stop["flag"] or time.time() > t_end:
            break
        try:
            conns.append(open_session(a, ctx))
        except (OSError, SMTPError, ssl.SSLError) as e:
            errors += 1
            print("# idle: session failed: %s: %s" % (type(e).__name__, e), flush=True)
            if errors > 10:
                break
    tlsinfo = "none"
    if conns and conns[0].tls is not None:
        ci = conns[0].tls.cipher()
        tlsinfo = "%s/%s" % (conns[0].tls.version(), ci[0] if ci else "?")
    line = "READY %d errors=%d tls=%s" % (len(conns), errors, tlsinfo)
    if a.ready_file:
        with open(a.ready_file + ".tmp", "w") as f:
            f.write(line + "\n")
        os.rename(a.ready_file + ".tmp", a.ready_file)
    print(line, flush=True)
    t_hold = time.time() + a.hold
    while not stop["flag"] and time.time() < t_hold:
        time.sleep(0.05)
    quit_ok = 0
    for c in conns:
        try:
            c.sock.settimeout(2)
            c.cmd(b"QUIT\r\n", "2")
            quit_ok += 1
        except (OSError, SMTPError, ssl.SSLError):
            pass
        c.close()
    print("IDLEDONE sessions=%d quit_ok=%d errors=%d" % (len(conns), quit_ok, errors), flush=True)
    return 0 if errors == 0 and quit_ok == len(conns) else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-s", "--sessions", type=int, default=16, help="worker processes (parallel sessions)")
    p.add_argument("-m", "--msgs", type=int, default=1000, help="messages in all")
    p.add_argument("-l", "--size", type=int, default=100000, help="message size in bytes (headers + body)")
    p.add_argument("--reuse", type=int, default=1, help="messages per connection (default 1, as smtp-source)")
    p.add_argument("--resume", action="store_true", help="resume the previous TLS session of the worker")
    p.add_argument("--no-tls", action="store_true", help="plaintext (no STARTTLS)")
    p.add_argument("--tls-max", choices=("1.2", "1.3"), default="1.3")
    p.add_argument("--sni", default="mx.test")
    p.add_argument("--helo", default="tlsload.test")
    p.add_argument("-f", "--from", dest="sender", default="a@example.com")
    p.add_argument("-t", "--to", dest="rcpt", default="b@example.net")
    p.add_argument("--timeout", type=float, default=60, help="seconds for the whole run (load) or for opening (idle)")
    p.add_argument("--io-timeout", type=float, default=30, help="seconds per socket operation")
    p.add_argument("--idle", type=int, default=0, help="idle mode: open this many sessions and hold them")
    p.add_argument("--hold", type=float, default=60, help="idle mode: hold at most this long (SIGTERM ends it sooner)")
    p.add_argument("--ready-file", default="", help="idle mode: write the READY line here once all are open")
    a = p.parse_args()
    if a.sessions < 1 or a.msgs < 0 or a.size < 64 or a.reuse < 1:
        p.error("need sessions >= 1, msgs >= 0, size >= 64, reuse >= 1")
    if a.idle:
        return run_idle(a)
    return run_load(a)


if __name__ == "__main__":
    sys.exit(main())
