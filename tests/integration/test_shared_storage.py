"""Two daemons on one backing folder (--shared-storage): like two NFS clients of one share.

The ACQ and WAS servers of a hospital mount one volume on a NAS. Here both daemons run on this
machine over a local folder (this kernel cannot mount NFS; docs/shared-storage.md says what
that leaves untested). Each test writes through mount A and checks mount B: after a close, an
open on B sees the new size and bytes; names that appear, move or go are seen at once; a race
of creates and writes from several processes on both mounts ends in byte-exact files that
fsck authenticates, with O_EXCL kept across the mounts.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TEST_SCRYPT_LOG_N, Mounted, run_cli

from encfs_pacs import store

from . import shared_worker

pytestmark = pytest.mark.integration

CHUNK = 65536  # the volume fixture's chunk size (the default)
CACHE_QUIET_S = store.CACHE_QUIET_NS / 1e9
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17]


def shared_pair(mount_volume: Callable[..., Mounted]) -> tuple[Mounted, Mounted]:
    acq = mount_volume(None, "--shared-storage", "--audit-host", "acq")
    was = mount_volume(None, "--shared-storage", "--audit-host", "was")
    return acq, was


def write(path: Path, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as out:
        out.write(data)


def fsck_clean(m: Mounted) -> None:
    result = run_cli("fsck", m.backing, "--passphrase-file", m.passphrase_file, "--json", check=False)
    assert result.returncode == 0, f"fsck found damage:\n{result.stdout}{result.stderr}"


def test_close_to_open_every_size_and_rewrite_is_seen_on_the_other_mount(
        mount_volume: Callable[..., Mounted]) -> None:
    a, b = shared_pair(mount_volume)
    for size in SIZES + list(reversed(SIZES)):  # growing, then shrinking rewrites of one file
        data = os.urandom(size)
        write(a.mountpoint / "image.dcm", data)
        assert os.stat(b.mountpoint / "image.dcm").st_size == size
        assert (b.mountpoint / "image.dcm").read_bytes() == data
    # the other way round, and a same-size rewrite (only the bytes change)
    first, second = os.urandom(CHUNK + 5), os.urandom(CHUNK + 5)
    write(b.mountpoint / "back.dcm", first)
    assert (a.mountpoint / "back.dcm").read_bytes() == first
    write(b.mountpoint / "back.dcm", second)
    assert (a.mountpoint / "back.dcm").read_bytes() == second
    fsck_clean(a)


def test_append_truncate_rename_unlink_mkdir_are_seen_without_remounting(
        mount_volume: Callable[..., Mounted]) -> None:
    a, b = shared_pair(mount_volume)
    base = os.urandom(CHUNK + 100)
    write(a.mountpoint / "f", base)
    assert (b.mountpoint / "f").read_bytes() == base  # B has it cached now (attributes, pages)
    tail = os.urandom(2 * CHUNK)
    write(a.mountpoint / "f", tail, "ab")
    assert (b.mountpoint / "f").read_bytes() == base + tail
    os.truncate(a.mountpoint / "f", 1000)
    assert os.stat(b.mountpoint / "f").st_size == 1000
    assert (b.mountpoint / "f").read_bytes() == base[:1000]
    os.rename(a.mountpoint / "f", a.mountpoint / "g")
    assert not (b.mountpoint / "f").exists() and (b.mountpoint / "g").read_bytes() == base[:1000]
    (a.mountpoint / "study").mkdir()
    assert (b.mountpoint / "study").is_dir() and "study" in os.listdir(b.mountpoint)
    os.rename(a.mountpoint / "g", a.mountpoint / "study" / "g")
    assert os.listdir(b.mountpoint / "study") == ["g"]
    os.unlink(a.mountpoint / "study" / "g")
    assert not (b.mountpoint / "study" / "g").exists() and os.listdir(b.mountpoint / "study") == []
    (a.mountpoint / "study").rmdir()
    assert not (b.mountpoint / "study").exists()
    fsck_clean(a)


def test_pages_kept_for_an_unchanged_file_are_dropped_once_the_other_mount_rewrites_it(
        mount_volume: Callable[..., Mounted]) -> None:
    """B keeps its page cache across opens of a file that was quiet (a warm PACS re-read);
    a same-size rewrite on A must still be seen at B's next open. (Two safeguards catch it
    here: the daemon's signature check and, since attributes are never cached, the kernel's
    own mtime check. A rewrite within one timestamp tick, which only the daemon's quiet-period
    rule catches, cannot be produced on demand: tests/unit/test_shared_store.py covers it.)"""
    a, b = shared_pair(mount_volume)
    old, new = os.urandom(3 * CHUNK), os.urandom(3 * CHUNK)
    write(a.mountpoint / "prior.dcm", old)
    time.sleep(CACHE_QUIET_S + 0.5)
    assert (b.mountpoint / "prior.dcm").read_bytes() == old  # B's first open: remembered
    time.sleep(CACHE_QUIET_S + 0.5)
    assert (b.mountpoint / "prior.dcm").read_bytes() == old  # quiet and unchanged: cache kept
    write(a.mountpoint / "prior.dcm", new)  # same size
    assert (b.mountpoint / "prior.dcm").read_bytes() == new


def test_a_handle_held_open_on_one_mount_follows_rewrites_on_the_other(
        mount_volume: Callable[..., Mounted]) -> None:
    """No cached size or header turns into a damaged file (the single-host mount would write
    chunk 1 as the final chunk here, in front of A's chunk 2)."""
    a, b = shared_pair(mount_volume)
    write(a.mountpoint / "f", b"a" * (CHUNK + 10))
    with open(b.mountpoint / "f", "r+b", buffering=0) as held:
        write(a.mountpoint / "f", b"g" * CHUNK, "ab")  # A grows the file past B's idea of it
        held.seek(CHUNK)
        held.write(b"B" * CHUNK)
        write(a.mountpoint / "f", b"n" * 5000)  # truncated and rewritten: a new file ID
        held.seek(4990)
        held.write(b"Z" * 20)
    expected = b"n" * 4990 + b"Z" * 20
    assert (a.mountpoint / "f").read_bytes() == expected
    assert (b.mountpoint / "f").read_bytes() == expected
    fsck_clean(a)


def test_concurrent_creates_and_writes_from_both_mounts_end_byte_exact(
        mount_volume: Callable[..., Mounted]) -> None:
    a, b = shared_pair(mount_volume)
    (a.mountpoint / "excl").mkdir()
    workers = 4  # two processes on each mount
    start_at = time.time() + 1.5  # every worker starts at once, after all have been started
    procs = [subprocess.Popen([sys.executable, shared_worker.__file__,
                               str((a if w % 2 == 0 else b).mountpoint), str(w), str(workers),
                               str(start_at), "7"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(workers)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"worker failed: {err}"
        results.append(json.loads(out))
    winners = {name: [w for w, r in enumerate(results) if name in r["won"]]
               for name in shared_worker.EXCL_NAMES}
    assert all(len(won) == 1 for won in winners.values()), f"O_EXCL broken across the mounts: {winners}"
    for m in (a, b):
        for name, (worker,) in winners.items():
            assert (m.mountpoint / name).read_bytes() == shared_worker.claim_content(worker), name
        for name in shared_worker.STRIPED:
            data = (m.mountpoint / name).read_bytes()
            assert data == shared_worker.pattern(name, shared_worker.STRIPED_SIZE), \
                f"{name} on {m.mountpoint.name}: a stripe was lost or garbled"
        for w in range(workers):
            own = f"own-{w}.bin"
            assert (m.mountpoint / own).read_bytes() == shared_worker.pattern(own, shared_worker.OWN_SIZE)
    fsck_clean(a)


def test_passwd_while_both_are_mounted(mount_volume: Callable[..., Mounted], tmp_path: Path) -> None:
    a, b = shared_pair(mount_volume)
    write(a.mountpoint / "before", b"before passwd")
    new = tmp_path / "new.pass"
    new.write_text("the new passphrase of the shared volume\n")
    new.chmod(0o600)
    run_cli("passwd", a.backing, "--passphrase-file", a.passphrase_file, "--new-passphrase-file", new,
            "--scrypt-log-n", TEST_SCRYPT_LOG_N)
    write(b.mountpoint / "after", b"written on B after passwd")  # fresh opens on both still work
    assert (a.mountpoint / "after").read_bytes() == b"written on B after passwd"
    assert (b.mountpoint / "before").read_bytes() == b"before passwd"
    run_cli("fsck", a.backing, "--passphrase-file", new)  # and the new passphrase opens it
    # The passwd event is recorded once, in one server's trail (only the mount that holds the
    # audit spool's lock ingests it).
    spool = a.backing / ".encfs-pacs" / "audit-spool"
    deadline = time.monotonic() + 30
    while any(spool.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    a.unmount()
    b.unmount()
    recorded = [r for m in (a, b) for r in m.audit_records() if r.get("event") == "volume-key-changed"]
    assert len(recorded) == 1, recorded


def test_status_shows_the_shared_storage_mode(mount_volume: Callable[..., Mounted]) -> None:
    a, _b = shared_pair(mount_volume)
    entries = json.loads(run_cli("status", a.mountpoint, "--json").stdout)["mounts"]
    assert [e["shared_storage"] for e in entries] == [True]
    assert "--shared-storage" in run_cli("status", a.mountpoint).stdout


def test_two_mounts_sharing_one_audit_key_store_are_refused_with_the_fix(
        mount_volume: Callable[..., Mounted]) -> None:
    mount_volume(None, "--shared-storage")
    with pytest.raises(AssertionError, match="--audit-host"):
        mount_volume(None, "--shared-storage")


def test_each_host_signs_its_own_verifiable_audit_trail(mount_volume: Callable[..., Mounted]) -> None:
    a, b = shared_pair(mount_volume)
    write(a.mountpoint / "f", b"x")
    assert (b.mountpoint / "f").read_bytes() == b"x"
    a.unmount()
    b.unmount()
    for m, host in ((a, "acq"), (b, "was")):
        anchor = run_cli("audit", "anchor", m.backing, "--host", host).stdout.strip()
        assert m.audit_log is not None
        run_cli("audit", "verify", m.audit_log, "--anchor", anchor)
    assert (run_cli("audit", "anchor", a.backing, "--host", "acq").stdout
            != run_cli("audit", "anchor", a.backing, "--host", "was").stdout)


HOLD_LOCK = """
import fcntl, sys
f = open(sys.argv[1], "r+b")
fcntl.lockf(f, fcntl.LOCK_EX, 10, 100)  # bytes 100..109
print("locked", flush=True)
sys.stdin.readline()
f.close()  # closing drops the process's locks (POSIX), here through libfuse's flush
print("closed", flush=True)
sys.stdin.readline()
"""


def test_applications_fcntl_locks_reach_the_other_mount(mount_volume: Callable[..., Mounted]) -> None:
    a, b = shared_pair(mount_volume)
    write(a.mountpoint / "db", b"x" * 1000)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(a.mountpoint / "db")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        for m in (b, a):  # the other mount, and another process on the holder's own mount
            with open(m.mountpoint / "db", "r+b") as other:
                with pytest.raises(BlockingIOError):
                    fcntl.lockf(other, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 105)
                fcntl.lockf(other, fcntl.LOCK_SH | fcntl.LOCK_NB, 10, 0)  # bytes 0..9: free
                answer = fcntl.fcntl(other, fcntl.F_GETLK, struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 0, 0, 0))
                kind, _whence, start, length, _pid = struct.unpack("hhqqi4x", answer)
                assert (kind, start, length) == (fcntl.F_WRLCK, 100, 10)
        with open(b.mountpoint / "db", "r+b") as waiter:
            holder.stdin.write("\n")
            holder.stdin.flush()
            fcntl.lockf(waiter, fcntl.LOCK_EX, 5, 105)  # waits until the holder's close, if needed
            assert holder.stdout.readline().strip() == "closed"
            fcntl.lockf(waiter, fcntl.LOCK_UN, 5, 105)
    finally:
        holder.kill()
        holder.wait(timeout=30)
