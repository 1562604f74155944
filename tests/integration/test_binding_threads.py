"""Through a real mount: libfuse's C worker threads keep their Python thread state between
requests (fs/_binding.py), which saves ~50 µs per request.

A minimal file system served by EncfsFUSE answers each lookup with a size that counts the
lookups this worker has handled, kept in a threading.local. A thread state that lives on keeps
the count; one rebuilt per request starts at 1 every time. The control run switches the
keeping off, so the test also shows it can tell the two apart."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SERVER = textwrap.dedent("""
    import errno, os, sys, threading
    from encfs_pacs.fs import _binding
    from encfs_pacs.fs._binding import EncfsFUSE, FuseOSError, Operations
    from encfs_pacs.store import Attributes

    if sys.argv[2] == "off":
        _binding._gilstate_ensure = lambda: None  # what mfusepy alone does

    counter = threading.local()

    class Counting(Operations):
        def getattr(self, path, fh=None):
            if path == "/":
                return Attributes(os.stat(os.path.dirname(__file__)), 4096)
            if not path.startswith("/probe-"):
                raise FuseOSError(errno.ENOENT)
            counter.n = getattr(counter, "n", 0) + 1
            return Attributes(os.stat(__file__), counter.n)  # a regular file's attributes

    EncfsFUSE(Counting(), sys.argv[1], foreground=True, max_threads=4, max_idle_threads=4)
""")


def _lookup_counts(mountpoint: Path, keeping: str, tmp_path: Path) -> list[int]:
    script = tmp_path / "counting_fs.py"
    script.write_text(SERVER)
    errors = tmp_path / "counting_fs.err"
    # A file, not a pipe: a server writing tracebacks into a pipe nobody reads would block.
    with errors.open("wb") as sink:
        server = subprocess.Popen([sys.executable, str(script), str(mountpoint), keeping], stderr=sink)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            assert server.poll() is None, errors.read_text(errors="replace")
            assert time.monotonic() < deadline, "the test file system did not come up"
            time.sleep(0.05)
        # New names each time: every stat is a LOOKUP that reaches a worker.
        return [os.stat(mountpoint / f"probe-{n}").st_size for n in range(200)]
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, check=False, timeout=60)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True, check=False)
            server.wait(timeout=20)


@pytest.mark.integration
def test_workers_keep_their_thread_state_between_requests(mountpoint: Path, tmp_path: Path) -> None:
    counts = _lookup_counts(mountpoint, "on", tmp_path)
    assert max(counts) > 10  # a few workers served 200 lookups, each remembering its count


@pytest.mark.integration
def test_without_keeping_every_request_starts_afresh(mountpoint: Path, tmp_path: Path) -> None:
    counts = _lookup_counts(mountpoint, "off", tmp_path)
    assert set(counts) == {1}
