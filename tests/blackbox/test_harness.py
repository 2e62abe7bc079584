"""The harness itself (conftest.py): what the other tests rely on."""

import os


def test_start_after_kill9_waits_for_the_new_server(ringmx):
    # kill -9 leaves the control socket file behind.  Server.start() must
    # not take it for the new process's: wait_ready would return before the
    # new process listens on it, and the next ringmxctl would find nobody.
    srv = ringmx()
    for _ in range(20):  # the window is a few ms wide: try it often
        srv.kill9()
        assert os.path.exists(srv.sock_path), "kill -9 left no socket file to test with"
        srv.start()
        r = srv.ctl_run("queue", "list")
        assert r.returncode == 0, "ringmxctl right after start(): rc=%d %r" % (
            r.returncode, r.stderr)
