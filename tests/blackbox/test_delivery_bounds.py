"""Bounds of the delivery engine and bad input to queue control:
messages_per_connection ends a connection (QUIT) after exactly that many
messages; queue commands without an ID, with a malformed or unknown one, or
an unknown verb get a clear error and a non-zero exit."""

import collections

from conftest import (delivery_overrides, make_message, route, submit, wait_queue_empty)
from nexthop import Rule, nexthop  # noqa: F401

N = 7


def test_messages_per_connection_and_connections_per_route(ringmx, nexthop):
    nh = nexthop(rules=[Rule("message", delay=0.05)])
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], shards=1,
                                    delivery={"messages_per_connection": 2,
                                              "connections_per_route": 1}))
    mids = ["bound-%d@client.example" % i for i in range(N)]
    for m in mids:
        submit(srv.port, make_message(m, "bound"))
    nh.wait_messages(N, timeout=60)
    wait_queue_empty(srv)
    per_conn = collections.Counter(t.conn_id for t in nh.messages())
    assert max(per_conn.values()) == 2, "messages per connection: %r" % per_conn
    assert len(per_conn) >= (N + 1) // 2, per_conn
    # each connection ended with QUIT from ringmx, not a drop
    assert all(c.closed_by == "quit" for c in nh.connections()
               if c.transactions == 2), nh.connections()


def test_queue_control_bad_input(ringmx):
    srv = ringmx()
    for args, want in ((("queue", "hold"), "ERR usage: queue hold ID"),
                       (("queue", "delete", "XYZ"), "ERR bad queue ID"),
                       (("queue", "bounce", "0" * 16), "ERR no such message"),
                       (("queue", "frobnicate", "0" * 16), "ERR unknown command")):
        r = srv.ctl_run(*args)
        assert r.returncode != 0, args
        assert want in (r.stdout + r.stderr).decode(), (args, r)
