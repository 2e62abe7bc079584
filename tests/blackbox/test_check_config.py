"""--check-config fails on everything start-up would refuse (so its "config ok"
can be trusted), and warns, one line each and still exit 0, about settings
that load but are probably wrong.

Every broken case is run both ways: --check-config must exit 1 naming the
key, and a real start must fail too (what --check-config refuses must really
be fatal, and what start-up refuses must be caught by the check)."""

import json
import os
import subprocess

import pytest

from conftest import RINGMX_BIN, base_config, deep_merge, free_port
from tlsutil import certs  # noqa: F401


def write(tmp_path, over, name="c.json"):
    cfg = deep_merge(base_config(str(tmp_path), free_port()), over)
    path = os.path.join(str(tmp_path), name)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def check(path):
    r = subprocess.run([RINGMX_BIN, "--check-config", path], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def start_fails(path, cwd):
    """Start for real; it must exit non-zero during start-up.  Returns its output."""
    p = subprocess.Popen([RINGMX_BIN, "-c", path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError("ringmx started with a config --check-config refuses")
    assert p.returncode != 0, out
    return out.decode(errors="replace")


def tls_over(cert, key):
    return {"tls": {"certificates": [{"cert": cert, "key": key, "names": ["mx.test"]}]}}


def broken_cases(tmp_path, certs):
    """(name, overrides, expected text in the error)."""
    a_cert, _ = certs.leaf("mx.test")
    _, b_key = certs.leaf("other.test")
    r_cert, _ = certs.leaf("rsa-a.test", rsa=True)
    _, r_key = certs.leaf("rsa-b.test", rsa=True)
    not_ca = os.path.join(str(tmp_path), "not-a-ca.pem")
    with open(not_ca, "w") as f:
        f.write("no certificate in here\n")
    key_only = os.path.join(str(tmp_path), "key-only.pem")
    with open(b_key) as src, open(key_only, "w") as f:
        f.write(src.read())
    a_file = os.path.join(str(tmp_path), "a-file")
    with open(a_file, "w") as f:
        f.write("x")
    return [
        ("ecdsa_key_mismatch", tls_over(a_cert, b_key), "tls.certificates[0]"),
        ("rsa_key_mismatch", tls_over(r_cert, r_key), "tls.certificates[0]"),
        ("ca_file_not_pem", {"routes": [{"domains": ["*"], "to": "smtp://127.0.0.1:25",
                                         "tls": "verify", "ca_file": not_ca}]},
         "routes[0]"),
        ("ca_file_key_only", {"routes": [{"domains": ["*"], "to": "smtp://127.0.0.1:25",
                                          "tls": "verify", "ca_file": key_only}]},
         "routes[0]"),
        ("control_dir_under_a_file", {"control": {"socket": os.path.join(a_file, "ctl.sock")}},
         "control.socket"),
        ("control_socket_is_a_file", {"control": {"socket": a_file}}, "control.socket"),
        ("spool_under_a_file", {"spool": {"path": os.path.join(a_file, "spool")}},
         "spool.path"),
        ("spool_is_a_file", {"spool": {"path": a_file}}, "spool.path"),
        ("maildir_under_a_file", {"routes": [{"domains": ["*"],
                                              "to": "maildir:" + os.path.join(a_file, "md")}]},
         "routes[0].to"),
        ("auth_never_offered", {"listeners": [{"name": "sub", "tls": "none",
                                               "address": "127.0.0.1:%d" % free_port(),
                                               "auth": "required", "greet_pause_ms": 0}],
                                "auth": {"users_file": a_file}},
         "listeners[0].auth"),
        ("log_file_dir_missing", {"log": {"file": os.path.join(str(tmp_path), "no", "x.log")}},
         "log.file"),
        ("log_file_is_a_directory", {"log": {"file": str(tmp_path)}}, "log.file"),
        ("address_not_on_this_host", {"listeners": [{"name": "mx", "greet_pause_ms": 0,
                                                     "address": "192.0.2.77:2525"}]},
         "listeners[0] (mx)"),
    ]


CASE_NAMES = ["ecdsa_key_mismatch", "rsa_key_mismatch", "ca_file_not_pem", "ca_file_key_only",
              "control_dir_under_a_file", "control_socket_is_a_file", "spool_under_a_file",
              "spool_is_a_file", "maildir_under_a_file", "auth_never_offered",
              "log_file_dir_missing", "log_file_is_a_directory", "address_not_on_this_host"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_check_config_refuses_what_start_refuses(tmp_path, certs, case):
    [(name, over, want)] = [c for c in broken_cases(tmp_path, certs) if c[0] == case]
    path = write(tmp_path, over)
    rc, out, err = check(path)
    assert rc == 1, "%s: --check-config exited %d (stdout %r, stderr %r)" % (name, rc, out, err)
    assert want in err, "%s: error does not name %s: %r" % (name, want, err)
    assert "config ok" not in out
    text = start_fails(path, str(tmp_path))
    assert want in text, "%s: start-up failed without naming %s:\n%s" % (name, want, text[-2000:])


def test_spool_on_read_only_fs(tmp_path):
    ro = os.path.join(str(tmp_path), "ro")
    os.mkdir(ro)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs: %r" % r.stderr)
    try:
        path = write(tmp_path, {"spool": {"path": os.path.join(ro, "spool")}})
        rc, out, err = check(path)
        assert rc == 1 and "spool.path" in err, (rc, out, err)
        assert "spool.path" in start_fails(path, str(tmp_path))
    finally:
        subprocess.run(["umount", ro], capture_output=True)


def test_missing_control_directory_is_made_at_start(ringmx, tmp_path):
    sock = os.path.join(str(tmp_path), "run", "ringmx", "ctl.sock")
    s = ringmx({"control": {"socket": sock}})
    assert os.path.exists(sock), "control socket not made in a new directory"
    assert s.ctl("ping") is not None


# ---------------------------------------------------------------- warnings

def warnings_of(tmp_path, over, users=None):
    path = write(tmp_path, over)
    rc, out, err = check(path)
    assert rc == 0, "a config that only deserves warnings was refused: %r" % err
    assert "config ok" in out
    return [ln for ln in err.splitlines() if ln.startswith("warning: ")]


def test_no_warnings_for_a_sound_config(tmp_path):
    assert warnings_of(tmp_path, {"routes": [{"domains": ["*"], "to": "smtp://192.0.2.1:25"}]}) == []


@pytest.mark.parametrize("over,want", [
    ({"routes": [{"domains": ["accepted.example"], "to": "smtp://192.0.2.1:25"}]},
     "relay.domains: mail for *.sub.example is accepted but no route delivers it"),
    ({"routes": [{"domains": ["*.sub.example"], "to": "smtp://192.0.2.1:25"}]},
     "relay.domains: mail for accepted.example is accepted but no route delivers it"),
    ({"routes": [{"domains": ["*"], "to": "smtp://192.0.2.1:25"}],
      "relay": {"networks": ["0.0.0.0/0"]}}, "relay.networks[0]: 0.0.0.0/0"),
    ({"routes": [{"domains": ["*"], "to": "smtp://192.0.2.1:25"}],
      "relay": {"networks": ["192.0.2.0/24", "::/0"]}}, "relay.networks[1]: ::/0"),
], ids=["unrouted_suffix", "unrouted_exact", "open_relay_v4", "open_relay_v6"])
def test_warnings(tmp_path, over, want):
    w = warnings_of(tmp_path, over)
    assert len(w) == 1 and want in w[0], w


def test_warning_route_to_own_listener(tmp_path):
    port = free_port()
    w = warnings_of(tmp_path, {
        "listeners": [{"name": "mx", "address": "127.0.0.1:%d" % port, "greet_pause_ms": 0},
                      {"name": "any", "address": "*:%d" % (port + 1), "greet_pause_ms": 0}],
        "routes": [{"domains": ["accepted.example"], "to": "smtp://127.0.0.1:%d" % port},
                   {"domains": ["*"], "to": "lmtp://127.0.0.1:%d" % (port + 1)}]})
    assert len(w) == 2, w
    assert "routes[0].to" in w[0] and "own listener mx" in w[0], w
    assert "routes[1].to" in w[1] and "own listener any" in w[1], w


def test_warning_empty_users_file(tmp_path):
    users = os.path.join(str(tmp_path), "users")
    open(users, "w").close()
    w = warnings_of(tmp_path, {"routes": [{"domains": ["*"], "to": "smtp://192.0.2.1:25"}],
                               "auth": {"users_file": users}})
    assert len(w) == 1 and "auth.users_file" in w[0] and "no user" in w[0], w


def test_warnings_are_logged_at_start(ringmx):
    s = ringmx({"relay": {"networks": ["0.0.0.0/0"]}})
    from conftest import wait_for
    wait_for(lambda: "event=config_warning" in s.log_text(), 10, "a config_warning line")
    assert "0.0.0.0/0" in s.log_text()
