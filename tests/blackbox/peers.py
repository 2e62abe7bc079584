"""Real peers for the black-box tests: private instances of the software that
ringmx's users run next to it, from Debian's packages (tools/bootstrap.sh
installs them), each started by the test on free loopback ports in a temp
dir of its own and stopped by its PID at teardown.

    Postfix       postfix(**opts) -> PostfixPeer: a private instance (its own
                  config_directory, queue_directory, data_directory and log
                  file; master(8) run in the foreground, not through the
                  system's "postfix start").  As next hop it delivers the
                  domains in `domains` to Maildirs with virtual(8); as client
                  it relays everything it takes to `relayhost`.
    Dovecot LMTP  dovecot(**opts) -> DovecotPeer: a private dovecot(1) in the
                  foreground (-F) with only an LMTP listener, a passwd-file
                  userdb and passdb, Maildirs under its temp dir and the
                  quota plugin.
    msmtp, swaks  run per call (msmtp_send, swaks_send); nothing to stop.

A peer whose package is missing, or that cannot start on this machine (not
root, a start-up error), skips the test and says why: never a silent pass.
A peer is ready when it greets on its port with its own host name (unique
per instance); one whose port another program took meanwhile is started
again on another port.  Every process started here is its own session
leader (so it never signals the test runner's process group) and gets
SIGKILL if the test runner dies; at teardown the master gets SIGTERM by its
PID, then its whole process group SIGKILL, whether the test passed or not.
Nothing here reads or changes the system's Postfix or Dovecot (their config,
queue, or running daemons).

Bytes: Maildir files (Postfix virtual, Dovecot) hold the message with LF line
ends and the store's own trace fields on top (Return-Path, Delivered-To,
Received, ...).  stored_message() splits a delivered file at ringmx's own
Received: field, so a test compares everything from there on, byte for byte,
with what was sent (CRLF turned to LF).
"""

import ctypes
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import HOSTNAME, free_port, wait_for

START_TIMEOUT_S = 60.0  # an upper bound only: a loaded machine starts slowly
START_ATTEMPTS = 3  # starts on a fresh port when the last one was taken meanwhile
STOP_TIMEOUT_S = 10.0

POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
POSTFIX_CMD = "/usr/sbin/postfix"
DOVECOT_CMD = "/usr/sbin/dovecot"
DOVECOT_LMTP = "/usr/lib/dovecot/lmtp"
DOVECOT_QUOTA = "/usr/lib/dovecot/modules/lib10_quota_plugin.so"

# A body that exercises the transparency of every hop (RFC 5321 4.5.2 and
# 4.5.3.1.6, RFC 6152): lines that start with a dot (a lone dot among them,
# which a hop that forgets to stuff would take for the end of data), a line of
# exactly 998 octets, every octet 0x80..0xff, trailing white space and an
# empty line.  CRLF line ends, no bare CR or LF (those are not SMTP data).
EIGHT_BIT = bytes(range(0x80, 0x100))
PEER_BODY = (b".leading dot\r\n"
             b"..two dots\r\n"
             b".\r\n"
             b"...\r\n"
             b". a dot and a space\r\n"
             b"\r\n"
             b"trailing white space \t \r\n"
             + b"x" * 998 + b"\r\n"
             + b"8-bit: " + EIGHT_BIT[:64] + b"\r\n"
             + EIGHT_BIT[64:] + b"\r\n"
             + b"." + b"d" * 997 + b"\r\n"
             b"last line\r\n"
             b".\r\n")


def peer_message(mid, sender, to, subject="peer test", body=PEER_BODY):
    """A complete CRLF message with every header a store might otherwise add
    (Date, Message-ID, From), so nothing is added on the way."""
    head = ("Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
            "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
            "Content-Transfer-Encoding: 8bit\r\n" % (sender, to, subject, mid))
    return head.encode("ascii") + b"\r\n" + body


def lf(data):
    return data.replace(b"\r\n", b"\n")


# --------------------------------------------------------------------------
# process handling


def _die_with_parent():
    """preexec_fn: SIGKILL the peer when the test runner dies (a run killed
    by its time bound must not leave peers behind)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def package_version(pkg):
    """The installed Debian package's version, or None."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", pkg],
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.startswith("install ok installed"):
        return None
    return r.stdout.split()[-1]


def require(pkg, *paths):
    """Skip (saying why) unless the package is installed and its files exist."""
    if package_version(pkg) is None:
        pytest.skip("peer %s not installed (tools/bootstrap.sh installs it)" % pkg)
    for p in paths:
        if not os.path.exists(p):
            pytest.skip("peer %s: %s missing" % (pkg, p))


def require_root(what):
    if os.geteuid() != 0:
        pytest.skip("%s needs root to run a private instance (its processes change user)" % what)


def wait_banner(port, proc, what, log_tail, hostname):
    """Wait until the peer answers on port with its own 220 greeting (one
    that names `hostname`: not another program's that took the port).
    Returns None, or why the peer did not start (with its log)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    banner = b"220 " + hostname.encode() + b" "
    while True:
        rc = proc.poll()
        if rc is not None:
            return "%s exited with %d during start-up:\n%s" % (what, rc, log_tail())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
                s.settimeout(5.0)
                line = s.recv(512)
                if line.startswith(banner):
                    s.sendall(b"QUIT\r\n")
                    return None
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return "%s did not greet as %s on port %d within %.0fs:\n%s" % (
                what, hostname, port, START_TIMEOUT_S, log_tail())
        time.sleep(0.05)  # poll interval of the connect loop


def port_in_use(port):
    """After a peer failed to start: is its port held by another program?
    free_port() only knows that the port was free a moment ago, so another
    program may have bound it since; the peer is then started again on
    another port.  (Postfix's master reports a failed bind only to syslog.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def peer_hostname(name):
    """A host name for one instance, unique so that its greeting and its
    Received: fields cannot be mistaken for another instance's."""
    return "%s-%s.peer.test" % (name, secrets.token_hex(3))


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_process(proc, timeout=STOP_TIMEOUT_S):
    """SIGTERM the peer's master by its PID and wait; its process group (the
    master leads it: start_new_session) gets SIGKILL if the master does not
    go, and afterwards for any child that outlived it."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait(timeout=10)
    _kill_group(proc.pid)
    return proc.returncode


def stop_peers(peers):
    """Fixture teardown: stop every peer (even when one of them fails to),
    then remove its temp dir unless RINGMX_KEEP=1."""
    errors = []
    for p in peers:
        try:
            p.stop()
        except Exception as e:  # noqa: BLE001 (the others are stopped all the same)
            errors.append("%s in %s: %r" % (type(p).__name__, p.dir, e))
        if os.environ.get("RINGMX_KEEP") != "1":
            shutil.rmtree(p.dir, ignore_errors=True)
    assert not errors, "peers that did not stop: %s" % errors


def _chown(path, user):
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def _tail(path, n=40):
    try:
        with open(path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError as e:
        return "(no log: %s)" % e


def maildir_files(maildir):
    """Files in new/ and cur/ of a Maildir, sorted by name."""
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(maildir, sub)
        if os.path.isdir(d):
            out += [os.path.join(d, f) for f in os.listdir(d)]
    return sorted(out)


def read_maildir(maildir, skip=None):
    out = []
    for p in maildir_files(maildir):
        if skip and skip in os.path.basename(p):
            continue
        with open(p, "rb") as f:
            out.append(f.read())
    return out


def stored_message(stored, hostname=HOSTNAME):
    """Split a delivered file into (trace fields the store and the hops after
    ringmx added, ringmx's Received: field, the rest).  ringmx's field is the
    first Received: field whose `by` names ringmx's host name."""
    m = re.search(rb"(?m)^Received: from [^\n]*(?:\n[ \t][^\n]*)*", stored)
    while m is not None:
        field = m.group(0)
        if re.search(rb"\bby " + re.escape(hostname.encode()) + rb"\b", field):
            end = m.end() + 1
            return stored[:m.start()], field + b"\n", stored[end:]
        m = re.compile(rb"(?m)^Received: from [^\n]*(?:\n[ \t][^\n]*)*").search(stored, m.end())
    raise AssertionError("no Received: field by %s in the stored message:\n%r"
                         % (hostname, stored[:3000]))


def header_names(block):
    """Field names of a header block (LF or CRLF lines), in order."""
    return [ln.split(b":", 1)[0].decode("latin-1") for ln in re.split(rb"\r?\n", block)
            if ln and ln[:1] not in (b" ", b"\t")]


# --------------------------------------------------------------------------
# Postfix


POSTFIX_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class _Peer:
    """What Postfix and Dovecot instances share: their log, and waiting for
    mail in a Maildir (messages(addr) is the subclass's)."""

    kind = "peer"

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        return _tail(self.log_path, n)

    def wait_messages(self, addr, n, timeout=30.0):
        try:
            wait_for(lambda: len(self.messages(addr)) >= n, timeout,
                     "%d message(s) in %s's Maildir" % (n, addr), interval=0.05)
        except AssertionError as e:
            raise AssertionError("%s\n--- %s log ---\n%s" % (e, self.kind, self.log_tail())) from None
        return self.messages(addr)


class PostfixPeer(_Peer):
    """A private Postfix instance on 127.0.0.1:port.

    domains       delivered by virtual(8) to Maildirs: mailbox(addr) is the
                  Maildir of a user of `users` (other recipients there: 550)
    relayhost     "[127.0.0.1]:PORT": relay everything else there (as client)
    main          extra main.cf settings {name: value}
    maps          {name: "key value\\n..."}: texthash maps in the config dir,
                  named in main as texthash:{config}/name
    """

    kind = "postfix"

    def __init__(self, domains=(), users=(), relayhost=None, main=None, maps=None,
                 name="pf"):
        self.dir = tempfile.mkdtemp(prefix="rmx" + name)
        os.chmod(self.dir, 0o755)  # postfix and nobody walk into it
        self.conf = os.path.join(self.dir, "conf")
        self.queue = os.path.join(self.dir, "queue")
        self.data = os.path.join(self.dir, "data")
        self.mail = os.path.join(self.dir, "mail")
        self.log_path = os.path.join(self.dir, "maillog")
        for d in (self.conf, self.queue, self.data, self.mail):
            os.mkdir(d, 0o755)
        _chown(self.data, "postfix")
        _chown(self.mail, "nobody")
        self.port = None  # chosen at start()
        self.hostname = peer_hostname(name)
        self.domains = list(domains)
        self.users = list(users)
        self.proc = None
        mailbox_lines = "".join("%s %s/\n" % (u, self._rel(u)) for u in self.users)
        maps = dict(maps or {})
        maps["vmailbox"] = mailbox_lines
        for mname, text in maps.items():
            with open(os.path.join(self.conf, mname), "w") as f:
                f.write(text)
        cfg = {
            "compatibility_level": "3.6",
            "myhostname": self.hostname,
            "mydomain": "peer.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "queue_directory": self.queue,
            "data_directory": self.data,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": "postfix-" + os.path.basename(self.dir),
            "maillog_file": self.log_path,
            "maillog_file_prefixes": self.dir,
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "smtp_bind_address": "127.0.0.1",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 no local delivery in this test instance",
            "alias_maps": "",
            "alias_database": "",
            # Nothing leaves loopback, nothing is looked up in DNS.
            "smtp_dns_support_level": "disabled",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            # Header rewriting only for local submissions: mail over SMTP is
            # stored as it came (the byte comparisons rely on it).
            "local_header_rewrite_clients": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "virtual_mailbox_domains": " ".join(self.domains),
            "virtual_mailbox_base": self.mail,
            "virtual_mailbox_maps": "texthash:" + os.path.join(self.conf, "vmailbox"),
            "virtual_uid_maps": "static:%d" % pwd.getpwnam("nobody").pw_uid,
            "virtual_gid_maps": "static:%d" % pwd.getpwnam("nobody").pw_gid,
            "delay_warning_time": "0",
            "bounce_queue_lifetime": "1d",
            "maximal_queue_lifetime": "1d",
            # Retry quickly: a test waits on the outcome, not on a schedule.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        if relayhost:
            cfg["relayhost"] = relayhost
        for k, v in (main or {}).items():
            cfg[k] = v.replace("{config}", self.conf) if isinstance(v, str) else v
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            for k, v in cfg.items():
                f.write("%s = %s\n" % (k, v))

    @staticmethod
    def _rel(addr):
        local, domain = addr.split("@", 1)
        return "%s/%s" % (domain, local)

    def mailbox(self, addr):
        return os.path.join(self.mail, self._rel(addr))

    def messages(self, addr):
        return read_maildir(self.mailbox(addr))

    @property
    def url(self):
        return "smtp://127.0.0.1:%d" % self.port

    def wait_log(self, pattern, n=1, timeout=30.0):
        """Wait until the instance's log matches the regex at least n times;
        returns every match (findall).  Daemons log through postlogd, a
        moment after the fact, so a test waits for lines, never reads once."""
        rx = re.compile(pattern)
        try:
            return wait_for(lambda: len(rx.findall(self.log_text())) >= n and
                            rx.findall(self.log_text()), timeout,
                            "%d postfix log line(s) /%s/" % (n, pattern), interval=0.05)
        except AssertionError as e:
            raise AssertionError("%s\n--- postfix log ---\n%s" % (e, self.log_tail())) from None

    def queue_files(self):
        """Files in the queue that still wait for delivery."""
        out = []
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for root, _, files in os.walk(os.path.join(self.queue, sub)):
                out += [os.path.join(root, f) for f in files]
        return out

    def start(self):
        # `postfix check` makes the queue's subdirectories with the owners
        # and modes the daemons expect (post-install create-missing, the
        # documented way to set up a second instance); it reads only this
        # instance's config and touches only its directories.
        self._write_master_cf(free_port())
        r = subprocess.run([POSTFIX_CMD, "-c", self.conf, "check"], capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            pytest.skip("postfix check failed for a private instance: %s %s\n%s"
                        % (r.stdout, r.stderr, self.log_tail()))
        for attempt in range(START_ATTEMPTS):
            if attempt:
                self._write_master_cf(free_port())
            err = self._start_master()
            if err is None:
                return self
            self.stop()
            if not port_in_use(self.port):
                break
            err += "\n(port %d was taken by another program)" % self.port
        pytest.skip("postfix private instance cannot start here: " + err)

    def _write_master_cf(self, port):
        self.port = port
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(port=port))

    def _start_master(self):
        """Start master(8) in the foreground (-d); its own session, so that
        its SIGTERM to its process group reaches its children and nothing
        else.  Returns None once it greets, else why not."""
        self._out = open(os.path.join(self.dir, "master.out"), "ab")
        self.proc = subprocess.Popen([POSTFIX_MASTER, "-c", self.conf, "-d"],
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=self.dir,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        return wait_banner(self.port, self.proc, "postfix master", self._start_log,
                           self.hostname)

    def _start_log(self):
        return self.log_tail() + "\n" + _tail(os.path.join(self.dir, "master.out"))

    def stop(self):
        if self.proc is None:
            return None
        try:
            return stop_process(self.proc)
        finally:
            self.proc = None
            self._out.close()

    def sendmail(self, sender, rcpts, message, timeout=30):
        """Inject with this instance's sendmail(1) (postdrop, then pickup)."""
        return subprocess.run(["/usr/sbin/sendmail", "-C", self.conf, "-f", sender, "-i", "--"]
                              + list(rcpts), input=message, capture_output=True,
                              timeout=timeout)


@pytest.fixture
def postfix():
    require("postfix", POSTFIX_MASTER, POSTFIX_CMD)
    require_root("postfix")
    peers = []

    def make(**kw):
        p = PostfixPeer(**kw)
        peers.append(p)
        return p.start()

    yield make
    stop_peers(peers)


# --------------------------------------------------------------------------
# Dovecot LMTP


DOVECOT_CONF = """\
# A private Dovecot: LMTP only, on 127.0.0.1:{port}; everything under {dir}.
instance_name = {instance}
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
debug_log_path = {dir}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
mail_plugins = quota
lmtp_save_to_detail_mailbox = no
lmtp_rcpt_check_quota = no
postmaster_address = postmaster@{hostname}
hostname = {hostname}
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = {dir}/users
}}
userdb {{
  driver = passwd-file
  args = {dir}/users
}}
plugin {{
  quota = maildir:User quota
  quota_rule = *:storage=100M
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0600
  }}
}}
{extra}
"""


class DovecotPeer(_Peer):
    """A private Dovecot with an LMTP listener on 127.0.0.1:port.

    users  {addr: {extra userdb fields}}: each gets a Maildir under the
           temp dir, owned by nobody; e.g. {"quota_rule": "*:storage=1K"}.
           Any other recipient is unknown (Dovecot answers 550 at RCPT).
    extra  more dovecot.conf text"""

    kind = "dovecot"

    def __init__(self, users, extra="", name="dc"):
        self.dir = tempfile.mkdtemp(prefix="rmx" + name)
        os.chmod(self.dir, 0o755)  # the mail user walks into it
        self.port = None  # chosen at start()
        self.hostname = peer_hostname(name)
        self.extra = extra
        self.log_path = os.path.join(self.dir, "dovecot.log")
        self.users = dict(users)
        self.uid = pwd.getpwnam("nobody").pw_uid
        self.gid = pwd.getpwnam("nobody").pw_gid
        for d in ("run", "state", "home"):
            os.mkdir(os.path.join(self.dir, d), 0o755)
        for addr in self.users:
            h = self.home(addr)
            os.makedirs(h)
            _chown(h, "nobody")
        self.write_users()
        self.conf = os.path.join(self.dir, "dovecot.conf")
        self.proc = None

    def _write_conf(self, port):
        self.port = port
        with open(self.conf, "w") as f:
            f.write(DOVECOT_CONF.format(port=port, dir=self.dir, hostname=self.hostname,
                                        instance="rmx-" + os.path.basename(self.dir),
                                        extra=self.extra))

    def home(self, addr):
        return os.path.join(self.dir, "home", addr.lower())

    def maildir(self, addr):
        return os.path.join(self.home(addr), "Maildir")

    def write_users(self):
        """Write the passwd-file (userdb and passdb)."""
        lines = []
        for addr, fields in self.users.items():
            extra = " ".join("userdb_%s=%s" % kv for kv in sorted(fields.items()))
            lines.append("%s:{PLAIN}unused:%d:%d::%s::%s\n"
                         % (addr.lower(), self.uid, self.gid, self.home(addr), extra))
        tmp = os.path.join(self.dir, "users.tmp")
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.chmod(tmp, 0o644)
        os.rename(tmp, os.path.join(self.dir, "users"))

    def fill(self, addr, size):
        """Put a message of `size` octets into the user's Maildir (as a user
        whose box is already near its quota)."""
        md = self.maildir(addr)
        for d in (md, md + "/cur", md + "/new", md + "/tmp"):
            os.makedirs(d, exist_ok=True)
            os.chown(d, self.uid, self.gid)
        path = os.path.join(md, "cur", "1.filler.peer:2,S")
        with open(path, "wb") as f:
            f.write(b"Subject: filler\n\n" + b"f" * (size - 18) + b"\n")
        os.chown(path, self.uid, self.gid)

    def empty(self, addr):
        """The user deletes the filler, as a mail client would; removing
        maildirsize makes Dovecot count the Maildir again at the next save
        (Maildir++ quota, which is what a client's expunge updates)."""
        md = self.maildir(addr)
        os.unlink(os.path.join(md, "cur", "1.filler.peer:2,S"))
        try:
            os.unlink(os.path.join(md, "maildirsize"))
        except FileNotFoundError:
            pass

    def messages(self, addr):
        """Messages Dovecot saved for addr (not a filler)."""
        return read_maildir(self.maildir(addr), skip=".filler.")

    @property
    def url(self):
        return "lmtp://127.0.0.1:%d" % self.port

    def start(self):
        for _ in range(START_ATTEMPTS):
            self._write_conf(free_port())
            err = self._start_master()
            if err is None:
                return self
            self.stop()
            if not port_in_use(self.port):
                break
            err += "\n(port %d was taken by another program)" % self.port
        pytest.skip("dovecot private instance cannot start here: " + err)

    def _start_master(self):
        """dovecot -F: the master in the foreground, its own session (its
        children are in its process group).  Returns None once LMTP greets,
        else why not."""
        self._out = open(os.path.join(self.dir, "dovecot.out"), "ab")
        self.proc = subprocess.Popen([DOVECOT_CMD, "-F", "-c", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=self.dir,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        return wait_banner(self.port, self.proc, "dovecot", lambda: self.log_tail() + "\n"
                           + _tail(os.path.join(self.dir, "dovecot.out")), self.hostname)

    def stop(self):
        if self.proc is None:
            return None
        try:
            return stop_process(self.proc)
        finally:
            self.proc = None
            self._out.close()


@pytest.fixture
def dovecot():
    require("dovecot-core", DOVECOT_CMD, DOVECOT_QUOTA)
    require("dovecot-lmtpd", DOVECOT_LMTP)
    require_root("dovecot")
    peers = []

    def make(**kw):
        p = DovecotPeer(**kw)
        peers.append(p)
        return p.start()

    yield make
    stop_peers(peers)


# --------------------------------------------------------------------------
# ringmx in front of a peer


SENDER = "sender@sender.example"


def gateway(ringmx, nexthop, to, domains, delivery=None, route_extra=None, **extra):
    """A ringmx that routes `domains` to `to` (a peer's url) and the envelope
    sender's domain, sender.example, to a programmable next hop where its
    bounces (DSNs) are read.  Returns (server, bounce hop)."""
    from conftest import delivery_overrides, route
    bounce = nexthop()
    r = route(domains, to)
    r.update(route_extra or {})
    srv = ringmx(delivery_overrides([r, route("sender.example", bounce)], relay_domains=domains,
                                    delivery=delivery, **extra))
    return srv, bounce
