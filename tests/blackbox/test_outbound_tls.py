"""Outbound STARTTLS to next hops per route policy: a
next hop with its own certificate (made by the test suite), each policy of
routes[].tls, and the TLS result logged per delivery."""

import re

from conftest import (delivery_overrides, make_message, route, strip_received, submit,
                      wait_for, wait_log, wait_state)
from nexthop import Rule, nexthop  # noqa: F401
from tlsutil import certs  # noqa: F401

HOP = "hop.test"


def tls_route(nh, policy, ca_file=None):
    r = route("accepted.example", nh)
    r["tls"] = policy
    if ca_file:
        r["ca_file"] = ca_file
    return r


def send_one(srv, mid):
    body = make_message(mid, "tls")
    return submit(srv.port, body), body


def test_opportunistic_uses_starttls_when_offered(ringmx, nexthop, certs):
    cert, key = certs.leaf(HOP)
    nh = nexthop(tls=(cert, key))
    srv = ringmx(delivery_overrides([tls_route(nh, "opportunistic")]))
    qid, body = send_one(srv, "otls-1@client.example")
    [t] = nh.wait_message_id("otls-1@client.example", 30)
    assert t.tls_version in ("TLSv1.2", "TLSv1.3"), t
    assert strip_received(t.data)[1] == body
    line = wait_log(srv, "delivered", qid)
    assert re.search(r'tls="TLSv1\.[23] \S+ unverified"', srv.log_text()), srv.log_text()
    assert re.search(r"event=outbound_tls .*policy=opportunistic .*verified=no", srv.log_text())
    del line


def test_opportunistic_plaintext_when_not_offered(ringmx, nexthop):
    nh = nexthop()  # no STARTTLS
    srv = ringmx(delivery_overrides([tls_route(nh, "opportunistic")]))
    qid, body = send_one(srv, "otls-2@client.example")
    [t] = nh.wait_message_id("otls-2@client.example", 30)
    assert t.tls_version is None
    wait_log(srv, "delivered", qid)
    assert 'tls="none"' in srv.log_text()


def test_none_never_starttls(ringmx, nexthop, certs):
    cert, key = certs.leaf(HOP)
    nh = nexthop(tls=(cert, key))
    srv = ringmx(delivery_overrides([tls_route(nh, "none")]))
    send_one(srv, "otls-3@client.example")
    [t] = nh.wait_message_id("otls-3@client.example", 30)
    assert t.tls_version is None, "STARTTLS used under tls none"


def test_required_defers_without_starttls_then_delivers(ringmx, nexthop, certs):
    cert, key = certs.leaf(HOP)
    nh = nexthop(tls=(cert, key))
    nh.set_extensions(starttls=False)
    srv = ringmx(delivery_overrides([tls_route(nh, "required")],
                                    delivery={"retry_s": [3600], "max_age_s": 86400}))
    qid, body = send_one(srv, "otls-4@client.example")
    f = wait_state(srv, qid, "deferred")
    assert "does not offer STARTTLS" in f["error"], f
    assert nh.message_count == 0, "delivered in clear under tls required"
    nh.set_extensions(starttls=True)
    srv.ctl("queue", "flush", qid)
    [t] = nh.wait_message_id("otls-4@client.example", 30)
    assert t.tls_version in ("TLSv1.2", "TLSv1.3")
    assert strip_received(t.data)[1] == body


def test_verify_with_ca_file(ringmx, nexthop, certs):
    # the hop's certificate names 127.0.0.1 (an IP route is checked against the IP)
    cert, key = certs.leaf("127.0.0.1")
    nh = nexthop(tls=(cert, key))
    srv = ringmx(delivery_overrides([tls_route(nh, "verify", ca_file=certs.ca)]))
    qid, body = send_one(srv, "otls-5@client.example")
    [t] = nh.wait_message_id("otls-5@client.example", 30)
    assert t.tls_version in ("TLSv1.2", "TLSv1.3")
    wait_log(srv, "delivered", qid)
    assert re.search(r"event=outbound_tls .*policy=verify .*verified=yes", srv.log_text())


def test_verify_fails_on_wrong_name_and_unknown_ca(ringmx, nexthop, certs):
    cert, key = certs.leaf(HOP)  # names hop.test, not 127.0.0.1
    nh = nexthop(tls=(cert, key))
    srv = ringmx(delivery_overrides([tls_route(nh, "verify", ca_file=certs.ca)],
                                    delivery={"retry_s": [3600], "max_age_s": 86400}))
    qid, _ = send_one(srv, "otls-6@client.example")
    f = wait_state(srv, qid, "deferred")
    assert "TLS" in f["error"], f
    assert nh.message_count == 0, "delivered despite a certificate that does not verify"


def test_bad_ca_file_refuses_start(tmp_path):
    """A ca_file that is readable but holds no certificate stops the start,
    naming the route (the contexts are built before the shards run)."""
    import json
    import os
    import subprocess
    from conftest import RINGMX_BIN, base_config, deep_merge, free_port
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("this is not a certificate\n")
    cfg = deep_merge(base_config(str(tmp_path), free_port()),
                     {"routes": [{"domains": ["*"], "to": "smtp://127.0.0.1:25",
                                  "tls": "verify", "ca_file": str(bad)}]})
    path = os.path.join(str(tmp_path), "c.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.run([RINGMX_BIN, "-c", path], stdin=subprocess.DEVNULL, capture_output=True,
                       cwd=str(tmp_path), timeout=30)
    text = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode != 0, text
    assert "routes[0]: TLS client" in text, text
