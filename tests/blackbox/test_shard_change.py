"""Every segment on disk is loaded, whatever the shard count.

Mail is queued (deferred: the next hop answers 451) under 2 shards, then
under 1, then under 3.  Each change of `shards` restarts the server; the
directories of shards that no longer run are adopted (logged), so every
message queued so far is listed after each restart.  When the next hop
takes mail, every message arrives exactly once (counted by Message-ID) and
the queue ends empty."""

import json
import os

from conftest import (delivery_overrides, make_message, route, submit, wait_log,
                      wait_queue_empty)
from nexthop import Rule, nexthop  # noqa: F401  (nexthop is a fixture)


def set_shards(srv, n):
    srv.config["shards"] = n
    with open(srv.config_path, "w") as f:
        json.dump(srv.config, f, indent=2)


def queue_some(srv, tag, n, prefixes_wanted=1):
    """Submit n messages (more, up to 4n, until ids of prefixes_wanted shards
    are seen: SO_REUSEPORT spreads connections, not evenly); {qid: mid}."""
    out = {}
    for i in range(4 * n):
        mid = "%s-%d@shards.test" % (tag, i)
        out[submit(srv.port, make_message(mid))] = mid
        if len(out) >= n and len({q[:2] for q in out}) >= prefixes_wanted:
            break
    assert len({q[:2] for q in out}) >= prefixes_wanted, \
        "mail did not reach %d shards: %r" % (prefixes_wanted, sorted(out))
    return out


def segment_dirs(srv):
    spool = srv.config["spool"]["path"]
    return sorted(d for d in os.listdir(spool) if d.isdigit())


def test_shards_2_to_1_to_3_loses_nothing(ringmx, nexthop):
    nh = nexthop(rules=[Rule("message", "451 4.3.0 not now")])
    srv = ringmx(delivery_overrides([route("accepted.example", nh)], shards=2))
    queued = queue_some(srv, "two", 8, prefixes_wanted=2)
    assert segment_dirs(srv) == ["0", "1"]

    srv.stop()
    set_shards(srv, 1)
    srv.start()
    assert set(srv.queue_list()) == set(queued), "mail of the dropped shard is stranded"
    assert segment_dirs(srv) == ["0"], "shard 1's directory was not adopted"
    wait_log(srv, "spool_adopt")
    queued.update(queue_some(srv, "one", 4))

    srv.stop()
    set_shards(srv, 3)
    srv.start()
    assert set(srv.queue_list()) == set(queued)
    queued.update(queue_some(srv, "three", 6))
    assert set(srv.queue_list()) == set(queued)

    nh.set_rules([])
    srv.ctl("queue", "flush")
    nh.wait_until(lambda h: set(queued.values()) <= set(h.message_ids()), 60,
                  "every queued message at the next hop")
    wait_queue_empty(srv)
    counts = nh.message_ids()
    assert {m: c for m, c in counts.items() if c != 1} == {}, "delivered more than once"
    assert set(counts) == set(queued.values()), "unknown mail delivered"
