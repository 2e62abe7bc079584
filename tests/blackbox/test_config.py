"""Config loading: --check-config exit codes and JSON-path error lines, bad
configs refused at start, working example configs."""

import glob
import json
import os
import subprocess
import tempfile
import time

import pytest

from conftest import RINGMX_BIN, ROOT, base_config, deep_merge, free_port


def write_config(tmp_path, cfg, name="c.json"):
    p = tmp_path / name
    if isinstance(cfg, (dict, list)):
        p.write_text(json.dumps(cfg))
    else:
        p.write_text(cfg)
    return str(p)


def check(path, timeout=30):
    r = subprocess.run([RINGMX_BIN, "--check-config", path], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return r.returncode, lines


def good_config(tmp_path):
    return base_config(str(tmp_path), free_port())


def test_check_config_valid(tmp_path):
    rc, lines = check(write_config(tmp_path, good_config(tmp_path)))
    assert rc == 0, "valid config refused: %r" % lines


def test_check_config_full_issue_example(tmp_path):
    # The documented example config, keys and names exactly as documented.
    cfg = {
        "hostname": "gw.test",
        "shards": 2,
        "cpu_affinity": [0, 1],
        "listeners": [{"name": "mx", "address": "127.0.0.1:%d" % free_port(),
                       "banner": "optional text"}],
        "relay": {"domains": ["accepted.example", "*.sub.example"],
                  "networks": ["192.0.2.0/24"]},
        "limits": {"message_size": 10485760, "recipients": 100, "errors": 10,
                   "idle_s": 300, "session_s": 3600, "connections": 10000,
                   "connections_per_ip": 50},
        "spool": {"path": str(tmp_path / "spool"), "durability": "fsync"},
        "control": {"socket": str(tmp_path / "ctl.sock")},
    }
    rc, lines = check(write_config(tmp_path, cfg))
    assert rc == 0, "issue example config refused: %r" % lines


def test_check_config_minimal_object(tmp_path):
    # doc/config.md: only listeners[] (name, address) is required; every other
    # key has a default.
    cfg = {"listeners": [{"name": "mx", "address": "127.0.0.1:%d" % free_port()}]}
    rc, lines = check(write_config(tmp_path, cfg))
    assert rc == 0, "minimal config (listeners only) refused: %r" % lines


def test_check_config_listeners_required(tmp_path):
    rc, lines = check(write_config(tmp_path, {}))
    assert rc == 1, "config without listeners accepted"
    assert len(lines) == 1 and lines[0].startswith("listeners"), lines


BAD = [
    # (id, overrides, expected substring of the single error line)
    ("unknown-top", {"bogus": 1}, "bogus: unknown key"),
    ("unknown-limits", {"limits": {"foo": 1}}, "limits.foo: unknown key"),
    ("unknown-listener", {"listeners": [{"name": "mx", "address": "127.0.0.1:2525",
                                         "colour": "red"}]},
     "listeners[0].colour: unknown key"),
    ("bad-address", {"listeners": [{"name": "mx", "address": "nonsense"}]},
     'listeners[0].address: expected "host:port"'),
    ("bad-address-port", {"listeners": [{"name": "mx", "address": "127.0.0.1:99999"}]},
     "listeners[0].address"),
    ("wrong-type-shards", {"shards": "two"}, "shards:"),
    ("wrong-type-limit", {"limits": {"recipients": "many"}}, "limits.recipients:"),
    ("negative-limit", {"limits": {"message_size": -1}}, "limits.message_size:"),
    ("wrong-type-domains", {"relay": {"domains": "accepted.example"}}, "relay.domains:"),
    ("bad-network", {"relay": {"networks": ["192.0.2.0/33"]}}, "relay.networks[0]"),
    ("bad-durability", {"spool": {"durability": "sometimes"}}, "spool.durability:"),
    ("listeners-not-array", {"listeners": {"name": "mx"}}, "listeners:"),
]


@pytest.mark.parametrize("overrides,expect", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_check_config_errors_name_json_path(tmp_path, overrides, expect):
    cfg = deep_merge(good_config(tmp_path), overrides)
    rc, lines = check(write_config(tmp_path, cfg))
    assert rc == 1, "bad config: expected exit 1, got %d (%r)" % (rc, lines)
    assert len(lines) == 1, "expected exactly one error line, got %r" % lines
    assert expect in lines[0], "error line %r does not contain %r" % (lines[0], expect)


def test_check_config_invalid_json(tmp_path):
    rc, lines = check(write_config(tmp_path, '{"hostname": "gw.test",'))
    assert rc == 1
    assert len(lines) == 1, "expected one error line, got %r" % lines


def test_check_config_not_an_object(tmp_path):
    rc, lines = check(write_config(tmp_path, "[1, 2]"))
    assert rc == 1
    assert len(lines) == 1, "expected one error line, got %r" % lines
    assert lines[0].startswith("(root):"), lines


def test_check_config_missing_file(tmp_path):
    rc, lines = check(str(tmp_path / "does-not-exist.json"))
    assert rc == 1
    assert lines, "no message for a missing config file"


def test_run_with_bad_config_exits_quickly(tmp_path):
    cfg = deep_merge(good_config(tmp_path), {"limits": {"foo": 1}})
    path = write_config(tmp_path, cfg)
    t0 = time.monotonic()
    p = subprocess.Popen([RINGMX_BIN, "-c", path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path))
    try:
        out, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        pytest.fail("ringmx -c bad.json still running after 10 s")
    assert p.returncode != 0, "ringmx started on a bad config"
    assert time.monotonic() - t0 < 10
    text = err.decode("utf-8", "replace")
    assert "limits.foo: unknown key" in text, "stderr lacks the JSON path line: %r" % text
    for m in ("AddressSanitizer", "runtime error:"):
        assert m not in text


def test_run_with_bad_address_names_path(tmp_path):
    cfg = deep_merge(good_config(tmp_path),
                     {"listeners": [{"name": "mx", "address": "127.0.0.1"}]})
    path = write_config(tmp_path, cfg)
    r = subprocess.run([RINGMX_BIN, "-c", path], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=10, cwd=str(tmp_path))
    assert r.returncode != 0
    assert 'listeners[0].address: expected "host:port"' in r.stderr.decode("utf-8", "replace")


def test_doc_examples_are_valid():
    examples = sorted(glob.glob(os.path.join(ROOT, "doc", "examples", "*.json")))
    assert examples, "doc/examples/ holds no *.json config"
    bad = []
    for path in examples:
        rc, lines = check(path)
        if rc != 0:
            bad.append("%s: %r" % (os.path.basename(path), lines))
    assert not bad, "example configs refused by --check-config: %s" % bad
