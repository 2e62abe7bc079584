"""Start-up probe: with io_uring disabled by the kernel, ringmx refuses to
start with one clear line instead of failing later in a shard."""

import os
import shutil
import subprocess

import pytest

from conftest import RINGMX_BIN, Server

SYSCTL = "/proc/sys/kernel/io_uring_disabled"


def _writable():
    return os.path.exists(SYSCTL) and os.access(SYSCTL, os.W_OK)


@pytest.mark.skipif(not _writable(), reason="kernel.io_uring_disabled missing or not writable "
                    "(needs Linux 6.6+ and root)")
def test_io_uring_disabled_gives_one_clear_line():
    srv = Server(name="probe")
    with open(SYSCTL) as f:
        saved = f.read().strip()
    try:
        with open(SYSCTL, "w") as f:
            f.write("2")  # 2: io_uring_setup fails for every process
        proc = subprocess.run([RINGMX_BIN, "-c", srv.config_path], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=20, cwd=srv.dir)
    finally:
        with open(SYSCTL, "w") as f:
            f.write(saved)
    shutil.rmtree(srv.dir, ignore_errors=True)
    err = proc.stderr.decode(errors="replace").strip().splitlines()
    assert proc.returncode == 1
    fatal = [l for l in err if l.startswith("ringmx:")]
    assert len(fatal) == 1, err
    assert "io_uring is unavailable" in fatal[0]
    assert "io_uring_disabled" in fatal[0]
