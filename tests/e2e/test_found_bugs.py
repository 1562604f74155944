"""File-system behaviour that the PACS workload tripped over, reduced to minimal tests.

Found while running Orthanc under the allow-list (test_orthanc.py): a program on no rule that
unlinks Orthanc's SQLite index while Orthanc holds it open gets EBUSY instead of EACCES. The
delete is still refused (the file stays), but the caller sees the wrong error and the audit
records a denied ``stat`` of a ``.fuse_hidden*`` name instead of a denied ``delete``.

Why: the mount keeps libfuse's ``hard_remove`` off, so libfuse's high-level ``unlink`` of an open
file first looks for a free hidden name (``getattr`` of ``.fuse_hiddenXXXX`` candidates) and then
renames the file to it; the file system's ``rename`` maps that to a DELETE decision. But the
``getattr`` probe already runs as the caller, the policy denies it (EACCES, not ENOENT), libfuse's
``hidden_name()`` gives up and ``hide_node()`` returns -EBUSY before the DELETE decision is made.
Needs no PACS software: ``tail -f`` holds the file open.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Mounted, run_cli, write_policy

from .pacs import tool

pytestmark = pytest.mark.integration

_UNLINK = """
import os, sys
try:
    os.unlink(sys.argv[1])
    print(0)
except OSError as e:
    print(e.errno)
"""


def outsider_unlink(path: Path) -> int:
    """errno of a Python one-liner (on no rule) unlinking ``path``; 0 if it succeeded."""
    result = subprocess.run([sys.executable, "-c", _UNLINK, str(path)], capture_output=True, text=True,
                            timeout=60, check=True)
    return int(result.stdout)


def held_open(path: Path) -> subprocess.Popen[bytes]:
    """``tail -f path``, returned once it has the file open."""
    process = subprocess.Popen([tool("tail"), "-f", str(path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        fds = Path(f"/proc/{process.pid}/fd")
        if any(os.readlink(fd) == str(path) for fd in fds.iterdir()):
            return process
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.05)
    process.kill()
    raise AssertionError("tail did not open the file")


@pytest.fixture
def store(tmp_path: Path, mount_volume: Callable[..., Mounted]) -> Mounted:
    """A mount where cp may store files and tail may read them; nothing else is allowed."""
    policy = write_policy(tmp_path / "policy.toml", "version = 1\n")
    for rule, program, ops in (("writer", "cp", "create,write"), ("reader", "tail", "read")):
        run_cli("allow", "add", "--policy", policy, "--id", rule, "--exe", tool(program), "--ops", ops)
    m = mount_volume(policy)
    source = tmp_path / "index"
    source.write_bytes(b"SQLite format 3\0" + bytes(4080))
    for name in ("closed", "open"):
        subprocess.run([tool("cp"), str(source), str(m.mountpoint / name)], check=True, timeout=60)
    return m


def test_outsider_unlinking_a_closed_file_gets_eacces(store: Mounted) -> None:
    assert outsider_unlink(store.mountpoint / "closed") == errno.EACCES
    assert (store.backing / "closed").is_file()


@pytest.mark.xfail(strict=True, reason="bug: unlink of a file open elsewhere is refused with EBUSY, "
                   "not EACCES, and audited as a denied stat of .fuse_hidden* (libfuse hide_node)")
def test_outsider_unlinking_a_file_open_elsewhere_gets_eacces(store: Mounted) -> None:
    holder = held_open(store.mountpoint / "open")
    try:
        result = outsider_unlink(store.mountpoint / "open")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (store.backing / "open").is_file(), "the delete went through"
    assert result == errno.EACCES, f"got {errno.errorcode.get(result, result)}"
