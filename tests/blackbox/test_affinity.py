"""cpu_affinity pins shard i to cpu_affinity[i]; without it shards float."""

import os

import pytest

from conftest import wait_for


def _shard_threads(pid):
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        # io_uring's worker threads (iou-wrk-*) come and go: one listed
        # here may be gone before its files are read.
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                comm = f.read().strip()
            if not comm.startswith("ringmx-shard"):
                continue
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                allowed = [l.split(":", 1)[1].strip() for l in f
                           if l.startswith("Cpus_allowed_list:")][0]
        except FileNotFoundError:
            continue
        out[int(comm[len("ringmx-shard"):])] = allowed
    return out


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs two CPUs")
def test_shards_pinned_as_configured(ringmx):
    srv = ringmx({"shards": 2, "cpu_affinity": [1, 0]})
    wait_for(lambda: len(_shard_threads(srv.pid)) == 2, 10, "both shard threads")
    assert _shard_threads(srv.pid) == {0: "1", 1: "0"}


def test_shards_unpinned_by_default(ringmx):
    srv = ringmx({"shards": 2})
    wait_for(lambda: len(_shard_threads(srv.pid)) == 2, 10, "both shard threads")
    with open("/proc/%d/status" % srv.pid) as f:
        process = [l.split(":", 1)[1].strip() for l in f if l.startswith("Cpus_allowed_list:")][0]
    assert _shard_threads(srv.pid) == {0: process, 1: process}
