"""The mount raises its own readahead, so sequential readers get 1 MiB requests, not 128 KiB."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from encfs_pacs.fs.mount import READ_AHEAD_KB, _mount_device


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may change a mount's readahead (sysfs)")
def test_the_mount_reads_ahead_one_mib(mounted) -> None:  # type: ignore[no-untyped-def]
    device = _mount_device(str(mounted.mountpoint))
    assert device is not None
    setting = Path("/sys/class/bdi") / device / "read_ahead_kb"
    deadline = time.monotonic() + 10
    while int(setting.read_text()) != READ_AHEAD_KB and time.monotonic() < deadline:
        time.sleep(0.05)  # set by a thread of the daemon right after the mount came up
    assert int(setting.read_text()) == READ_AHEAD_KB
    (mounted.mountpoint / "f").write_bytes(b"x" * 3_000_000)
    assert (mounted.mountpoint / "f").read_bytes() == b"x" * 3_000_000
