"""The audit writer: durability (group commit), concurrency, failures, resume, keys, rotation."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from encfs_pacs.audit import create_anchor, iter_records, open_audit_log, read_anchor, verify
from encfs_pacs.audit.signing import KeyStore, key_store_path
from encfs_pacs.audit.writer import AuditLog
from encfs_pacs.errors import AuditUnavailable

from .auditkit import (
    FIXTURE_MASTER_KEY,
    fixed_hooks,
    kind,
    lines_of,
    make_backing,
    open_fixed,
    records_of,
    wait_for,
)

MK = FIXTURE_MASTER_KEY


def open_log(path: Path, backing: Path, **options: Any) -> AuditLog:
    options.setdefault("commit_interval", 0.02)
    return open_audit_log(path, backing, MK, **options)


def anchor_of(backing: Path) -> bytes:
    anchor = read_anchor(backing)
    assert anchor is not None
    return anchor


def payload(n: int, **extra: Any) -> dict[str, Any]:
    return {"event": "open", "outcome": "allowed", "op": "read", "object": {"path": f"/s/{n}.dcm",
                                                                            "inode": n}, **extra}


def control_records(path: Path, type_: str) -> list[dict[str, Any]]:
    return [r for r in records_of(path) if kind(r) == type_]


class LogFaults:
    """Makes write()/fsync() fail with a chosen errno, for the log file only."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, log_path: Path) -> None:
        self.write_errno: int | None = None
        self.fsync_errno: int | None = None
        self.block = threading.Event()
        self.block.set()
        self.fsyncs = 0
        real_write, real_fsync = os.write, os.fsync
        target = str(log_path.parent)

        def is_log(fd: int) -> bool:
            try:
                return os.readlink(f"/proc/self/fd/{fd}").startswith(target)
            except OSError:
                return False

        def write(fd: int, data: Any) -> int:
            if self.write_errno is not None and is_log(fd):
                raise OSError(self.write_errno, os.strerror(self.write_errno))
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if is_log(fd):
                self.block.wait()
                self.fsyncs += 1
                if self.fsync_errno is not None:
                    raise OSError(self.fsync_errno, os.strerror(self.fsync_errno))
            real_fsync(fd)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch, log_path: Path) -> LogFaults:
    return LogFaults(monkeypatch, log_path)


# ---------------------------------------------------------------------------- files and keys


def test_log_and_folders_are_private(tmp_path: Path, backing: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "var" / "log" / "encfs-pacs" / "audit.log"
        writer = open_log(path, backing)
        writer.append(payload(1))
        writer.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (path.parent, path.parent.parent, path.parent.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_store_path(backing).stat().st_mode) == 0o600


def test_anchor_is_created_once_and_readable_without_a_secret(backing: Path) -> None:
    anchor = create_anchor(backing, MK)
    assert len(anchor) == 32
    assert create_anchor(backing, MK) == anchor  # never replaced
    assert read_anchor(backing) == anchor
    assert anchor.hex() in key_store_path(backing).read_text()


def test_no_private_key_in_clear_in_the_key_store(tmp_path: Path, backing: Path, log_path: Path) -> None:
    hooks, _ = fixed_hooks(label=b"seeds to look for")
    from .auditkit import seeded_keys
    seeds = [bytes(s) for s, _ in zip(seeded_keys(b"seeds to look for"), range(3), strict=False)]
    writer = open_fixed(log_path, backing, hooks)
    writer.close()
    raw = key_store_path(backing).read_bytes()
    import base64
    for seed in seeds:
        assert seed not in raw and seed.hex().encode() not in raw and base64.b64encode(seed) not in raw


def test_older_volume_gets_its_anchor_at_first_start(backing: Path, log_path: Path) -> None:
    assert read_anchor(backing) is None
    writer = open_log(log_path, backing)
    writer.close()
    start = control_records(log_path, "start")[0]
    assert "anchor created now" in start["detail"]
    assert start["audit"]["anchor"] == anchor_of(backing).hex()
    assert verify([log_path], anchor_of(backing)).intact


def test_not_a_volume(tmp_path: Path, log_path: Path) -> None:
    with pytest.raises(AuditUnavailable, match="not an encfs-pacs volume"):
        open_log(log_path, tmp_path)


# ---------------------------------------------------------------------------- durability


def test_group_commit_batches_fsyncs(backing: Path, log_path: Path, faults: LogFaults) -> None:
    writer = open_log(log_path, backing, commit_interval=0.2)
    before = faults.fsyncs
    started = time.monotonic()
    for n in range(3000):
        writer.append(payload(n))
    writer.flush()
    elapsed = time.monotonic() - started
    fsyncs = faults.fsyncs - before
    writer.close()
    assert 1 <= fsyncs <= elapsed / 0.2 + 3, (fsyncs, elapsed)
    assert verify([log_path], anchor_of(backing)).intact


def test_records_reach_the_disk_within_a_second_without_flush(backing: Path, log_path: Path,
                                                              faults: LogFaults) -> None:
    writer = open_log(log_path, backing, commit_interval=0.2)
    before = faults.fsyncs
    writer.append(payload(7, detail="find me"))
    assert wait_for(lambda: faults.fsyncs > before and b"find me" in log_path.read_bytes(), timeout=1.0)
    writer.close()


def test_append_does_not_wait_for_a_slow_disk(backing: Path, log_path: Path, faults: LogFaults) -> None:
    writer = open_log(log_path, backing, commit_interval=0.01)
    faults.block.clear()  # every fsync of the log now hangs until released
    worst = 0.0
    try:
        for n in range(300):
            started = time.perf_counter()
            writer.append(payload(n))
            worst = max(worst, time.perf_counter() - started)
            time.sleep(0.001)
    finally:
        faults.block.set()
    writer.close()
    assert worst < 0.1, f"append blocked {worst:.3f} s while the disk was stalled"
    assert len(list(iter_records([log_path]))) == 300


def test_flush_makes_records_durable(backing: Path, log_path: Path, faults: LogFaults) -> None:
    writer = open_log(log_path, backing, commit_interval=10.0)
    before = faults.fsyncs
    writer.append(payload(1, detail="durable"))
    writer.flush()
    assert faults.fsyncs > before and b"durable" in log_path.read_bytes()
    writer.close()


def test_close_seals_and_is_idempotent(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing)
    writer.append(payload(1))
    writer.close()
    writer.close()
    assert kind(records_of(log_path)[-1]) == "stop"
    with pytest.raises(AuditUnavailable, match="closed"):
        writer.append(payload(2))


def test_many_threads(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing)

    def worker(t: int) -> None:
        for n in range(1000):
            writer.append({"event": "open", "thread": t, "n": n})

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert verify([log_path], anchor_of(backing)).intact
    seen = [(r["thread"], r["n"]) for r in iter_records([log_path]) if r["event"] == "open"]
    assert sorted(seen) == [(t, n) for t in range(8) for n in range(1000)]
    for t in range(8):  # each thread's records keep their order
        assert [n for th, n in seen if th == t] == list(range(1000))


def test_payload_is_copied_and_validated(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing)
    mutable = payload(1, detail="before")
    writer.append(mutable)
    mutable["detail"] = "after"
    mutable["object"]["path"] = "/changed"
    for bad, error, words in [
        ({"event": "open", "size": 1.5}, TypeError, "float"),
        ({"event": "open", "seq": 3}, ValueError, "writer owns"),
        ({"outcome": "allowed"}, ValueError, "'event'"),
        (["event"], TypeError, "dict"),
        ({"event": "open", "data": b"\x00"}, TypeError, "bytes"),
        ({"event": "open", "object": {"path": "/bad\udcff.dcm"}}, ValueError, "text()"),
        ({"event": "open", 1: "x"}, TypeError, "member name"),
    ]:
        with pytest.raises(error, match=words):
            writer.append(bad)  # type: ignore[arg-type]
    writer.close()
    (record,) = list(iter_records([log_path]))
    assert record["detail"] == "before" and record["object"]["path"] == "/s/1.dcm"


# ---------------------------------------------------------------------------- failures


def refused(writer: AuditLog, n: int) -> AuditUnavailable:
    with pytest.raises(AuditUnavailable) as caught:
        writer.append(payload(n))
    return caught.value


def test_fail_closed_when_the_disk_is_full(backing: Path, log_path: Path, faults: LogFaults) -> None:
    writer = open_log(log_path, backing)
    writer.append(payload(1))
    writer.flush()
    faults.write_errno = errno.ENOSPC
    writer.append(payload(2, detail="accepted before the failure was seen"))
    with pytest.raises(AuditUnavailable, match="full"):
        writer.flush()
    error = refused(writer, 3)
    assert error.errno == errno.EACCES and error.exit_code == 23
    assert "full" in str(error) and str(log_path) in str(error) and "--audit-fail-open" in str(error)
    refused(writer, 4)
    faults.write_errno = None  # space freed: the writer retries and recovers on its own

    def accepts() -> bool:
        try:
            writer.append(payload(5, detail="after recovery"))
        except AuditUnavailable:
            return False
        return True

    assert wait_for(accepts, timeout=5.0)
    writer.close()
    report = verify([log_path], anchor_of(backing))
    assert report.intact, report.lines()
    records = list(iter_records([log_path]))
    assert [r["detail"] for r in records if r["event"] == "open" and "detail" in r] == [
        "accepted before the failure was seen", "after recovery"]
    (alert,) = [r for r in records if r["event"] == "security-alert"]
    assert alert["alert"] is True and "full" in alert["detail"]
    assert "file operation(s) were refused" in alert["detail"]


def test_fail_open_keeps_serving_and_loses_nothing(backing: Path, log_path: Path, faults: LogFaults,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    writer = open_log(log_path, backing, fail_open=True)
    faults.write_errno = errno.EIO
    with caplog.at_level(logging.ERROR, logger="encfs_pacs.audit"):
        for n in range(50):
            writer.append(payload(n))  # never raises
        writer.flush()  # returns: fail-open
        assert writer.failed is not None
    assert any("cannot be written" in m for m in caplog.messages)
    faults.write_errno = None
    assert wait_for(lambda: writer.failed is None, timeout=5.0)
    writer.close()
    assert verify([log_path], anchor_of(backing)).intact
    records = list(iter_records([log_path]))
    assert [r["object"]["inode"] for r in records if r["event"] == "open"] == list(range(50))
    (alert,) = [r for r in records if r["event"] == "security-alert"]
    assert "written late" in alert["detail"] and alert["lost"] == 0


def test_fail_open_overflow_is_counted_and_recorded(backing: Path, log_path: Path, faults: LogFaults,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    writer = open_log(log_path, backing, fail_open=True, max_pending=10)
    faults.write_errno = errno.ENOSPC
    writer.append(payload(0))
    assert wait_for(lambda: writer.failed is not None)
    with caplog.at_level(logging.ERROR, logger="encfs_pacs.audit"):
        for n in range(1, 40):
            writer.append(payload(n))
    assert writer.stats()["lost"] == 29  # payload 0 is chained (kept for retry), 1..10 queued
    assert any("lost" in m for m in caplog.messages)
    faults.write_errno = None
    assert wait_for(lambda: writer.failed is None, timeout=5.0)
    writer.close()
    assert verify([log_path], anchor_of(backing)).intact
    alerts = [r for r in iter_records([log_path]) if r["event"] == "security-alert"]
    assert sum(a["lost"] for a in alerts) == 29
    assert any("29 record(s) were lost" in a["detail"] for a in alerts)
    assert len([r for r in iter_records([log_path]) if r["event"] == "open"]) == 11


def fill_the_queue_of_a_stuck_writer(writer: AuditLog, places: int) -> None:
    """Payload 0 is taken by the writer, which then blocks (faults.block); 1..places queue."""
    writer.append(payload(0))
    assert wait_for(lambda: writer.stats()["queued"] == 0)
    for n in range(1, places + 1):
        writer.append(payload(n))


def test_fail_closed_when_the_writer_falls_behind(backing: Path, log_path: Path, faults: LogFaults) -> None:
    writer = open_log(log_path, backing, max_pending=5, commit_interval=0.01)
    faults.block.clear()
    try:
        fill_the_queue_of_a_stuck_writer(writer, 5)
        with pytest.raises(AuditUnavailable, match="behind"):
            writer.append(payload(6))
    finally:
        faults.block.set()
    writer.close()
    assert verify([log_path], anchor_of(backing)).intact


def test_a_full_fail_open_log_refuses_what_must_not_be_dropped(backing: Path, log_path: Path,
                                                               faults: LogFaults) -> None:
    """The audit spool appends with droppable=False: it keeps an event's file until its record
    is durable, so a record dropped instead of refused would be an event lost."""
    writer = open_log(log_path, backing, fail_open=True, max_pending=5, commit_interval=0.01)
    faults.block.clear()
    try:
        fill_the_queue_of_a_stuck_writer(writer, 5)
        with pytest.raises(AuditUnavailable, match="behind"):
            writer.append(payload(6), droppable=False)
        writer.append(payload(7))  # the default under fail-open: dropped and counted
        assert writer.stats()["lost"] == 1
    finally:
        faults.block.set()
    writer.close()
    assert verify([log_path], anchor_of(backing)).intact
    assert [r["object"]["inode"] for r in iter_records([log_path]) if r["event"] == "open"] == list(range(6))


def test_failed_fsync_stays_failed(backing: Path, log_path: Path, faults: LogFaults) -> None:
    writer = open_log(log_path, backing)
    faults.fsync_errno = errno.EIO
    writer.append(payload(1))
    assert wait_for(lambda: writer.failed is not None)
    faults.fsync_errno = None  # Linux may now claim success for pages it dropped
    time.sleep(1.3)  # a retry has happened
    error = refused(writer, 2)
    assert "fsync" in str(error) and "remount" in str(error)
    writer.close()


def test_unusable_location_fails_at_open(tmp_path: Path, backing: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(AuditUnavailable, match="cannot be written"):
        open_log(tmp_path / "afile" / "audit.log", backing)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_fail_closed_on_a_really_full_disk(backing: Path, small_tmpfs: Path) -> None:
    path = small_tmpfs / "audit.log"
    writer = open_log(path, backing)
    error = None
    for n in range(2000):
        try:
            writer.append(payload(n, detail="x" * 500))
        except AuditUnavailable as exc:
            error = exc
            break
        time.sleep(0.001)
    assert error is not None and "full" in str(error)
    with pytest.raises(AuditUnavailable):
        writer.close()
    report = verify([path], anchor_of(backing), live=True)  # what reached the disk is consistent
    assert report.intact or report.problem is not None and report.problem.kind == "truncated"


def test_read_only_location(backing: Path, small_tmpfs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(AuditUnavailable, match="read-only"):
        open_log(small_tmpfs / "audit.log", backing)


def test_log_removed_while_in_use(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing)
    writer.append(payload(1))
    writer.flush()
    log_path.unlink()
    writer.append(payload(2))
    writer.flush()
    writer.close()
    first = records_of(log_path)[0]
    assert kind(first) == "link" and "removed" in first["audit"]["prev_file"]
    alerts = [r for r in iter_records([log_path]) if r["event"] == "security-alert"]
    assert alerts and "removed or replaced" in alerts[0]["detail"]
    assert verify([log_path], anchor_of(backing)).problem.kind == "missing-file"  # the gap shows


def test_log_renamed_while_in_use_stays_verifiable(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing)
    writer.append(payload(1))
    writer.flush()
    moved = log_path.with_name("audit.log.1")
    os.rename(log_path, moved)  # e.g. an external logrotate
    writer.append(payload(2))
    writer.flush()
    writer.close()
    assert kind(records_of(moved)[-1]) == "rotate"
    assert verify([moved, log_path], anchor_of(backing)).intact


def test_file_put_in_place_of_the_log_is_kept(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing)
    writer.flush()
    moved = log_path.with_name("moved")
    os.link(log_path, moved)
    foreign = log_path.with_name("foreign")
    foreign.write_text("someone else's file\n")
    os.rename(foreign, log_path)  # atomic: the path never goes missing
    writer.append(payload(1))
    writer.flush()
    writer.close()
    kept = [p for p in log_path.parent.iterdir() if ".replaced-" in p.name]
    assert len(kept) == 1 and kept[0].read_text() == "someone else's file\n"
    assert verify([moved, log_path], anchor_of(backing)).intact


# ---------------------------------------------------------------------------- resume


def test_resume_continues_the_chain(backing: Path, log_path: Path) -> None:
    for run in range(3):
        writer = open_log(log_path, backing)
        writer.append(payload(run))
        writer.close()
    records = records_of(log_path)
    assert [r["seq"] for r in records] == list(range(len(records)))
    resumes = control_records(log_path, "resume")
    assert [r["audit"]["clean"] for r in resumes] == [True, True]
    epochs = [r["audit"]["epoch"] for r in control_records(log_path, "epoch")]
    assert epochs == [1, 2, 3]
    store = json.loads(key_store_path(backing).read_text())
    assert store["current"]["epoch"] == 3 and store["pending"] is None
    assert store["head"]["stopped"] is True and store["head"]["seq"] == records[-1]["seq"]
    assert verify([log_path], anchor_of(backing)).intact


CRASH_CHILD = """
import os, sys
from pathlib import Path
from encfs_pacs.audit import open_audit_log
log = open_audit_log(Path(sys.argv[1]), Path(sys.argv[2]), bytes(range(32)), commit_interval=0.01,
                     rotate_bytes=int(sys.argv[4]) or None)
for n in range(int(sys.argv[3])):
    log.append({"event": "open", "n": n})
log.flush()
{extra}
os._exit(9)  # a crash: no stop seal, the key never promoted past this run
"""


def crash(log_path: Path, backing: Path, records: int, extra: str = "", rotate_bytes: int = 0) -> None:
    code = CRASH_CHILD.replace("{extra}", extra)
    done = subprocess.run([sys.executable, "-c", code, str(log_path), str(backing), str(records),
                           str(rotate_bytes)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 9, done.stderr


def test_resume_after_a_crash(backing: Path, log_path: Path) -> None:
    crash(log_path, backing, 6)
    live = verify([log_path], anchor_of(backing), live=True)
    assert live.intact and live.unsealed > 0
    writer = open_log(log_path, backing)
    writer.close()
    (resume,) = control_records(log_path, "resume")
    assert resume["audit"]["clean"] is False and resume["audit"]["unsealed"] == live.unsealed
    assert "without a stop seal" in resume["detail"]
    assert verify([log_path], anchor_of(backing)).intact


def test_resume_after_a_torn_write(backing: Path, log_path: Path) -> None:
    crash(log_path, backing, 3)
    torn = b'{"errno":null,"event":"open","mono'
    with open(log_path, "ab") as f:
        f.write(torn)
    writer = open_log(log_path, backing)
    writer.close()
    (resume,) = control_records(log_path, "resume")
    assert resume["audit"]["torn_bytes"] == len(torn)
    assert torn not in log_path.read_bytes()
    assert verify([log_path], anchor_of(backing)).intact


def test_crash_in_the_middle_of_a_rotation(backing: Path, log_path: Path) -> None:
    """Crash after the rotate seal, before the new file: the next start completes it."""
    extra = ("import encfs_pacs.audit.writer as w\n"
             "def boom(*a, **k):\n    os._exit(9)\n"
             "w.create_linked_file = boom\n"
             "log.append({'event': 'open', 'detail': 'x' * 3000})\nlog.flush()\n")
    crash(log_path, backing, 1, extra=extra, rotate_bytes=2000)
    assert kind(records_of(log_path)[-1]) == "rotate"
    writer = open_log(log_path, backing)
    writer.close()
    files = sorted(log_path.parent.glob("audit.log.*"))
    assert len(files) == 1 and kind(records_of(log_path)[0]) == "link"
    assert verify([*files, log_path], anchor_of(backing)).intact


def test_crash_between_the_rotation_link_and_its_seal(backing: Path, log_path: Path) -> None:
    """The rotated name was linked but never sealed: the stray name is removed at start."""
    extra = ("import encfs_pacs.audit.writer as w\n"
             "w.Chainer.rotate = lambda *a, **k: os._exit(9)\n"
             "log.append({'event': 'open', 'detail': 'x' * 3000})\nlog.flush()\n")
    crash(log_path, backing, 1, extra=extra, rotate_bytes=2000)
    assert len(list(log_path.parent.glob("audit.log.*"))) == 1  # a second name of the active file
    writer = open_log(log_path, backing)
    writer.close()
    assert list(log_path.parent.glob("audit.log.*")) == []
    assert verify([log_path], anchor_of(backing)).intact


def test_truncated_log_is_refused_at_start(backing: Path, log_path: Path) -> None:
    """CVE-2023-31438 on the writer side: a log cut back to an earlier seal must not be
    continued (and so silently re-sealed) by the next mount."""
    writer = open_log(log_path, backing, checkpoint_records=3)
    for n in range(12):
        writer.append(payload(n))
    writer.close()
    records = records_of(log_path)
    cut = max(i for i, r in enumerate(records) if kind(r) == "checkpoint")
    log_path.write_bytes(b"".join(lines_of(log_path)[:cut + 1]))
    with pytest.raises(AuditUnavailable, match="truncated"):
        open_log(log_path, backing)


def test_older_copy_of_the_log_is_refused(backing: Path, log_path: Path, tmp_path: Path) -> None:
    writer = open_log(log_path, backing)
    writer.close()
    old = tmp_path / "old.log"
    shutil.copyfile(log_path, old)
    writer = open_log(log_path, backing)
    writer.close()
    shutil.copyfile(old, log_path)
    with pytest.raises(AuditUnavailable, match="epoch"):
        open_log(log_path, backing)


def test_tampered_log_is_refused_at_start(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing)
    writer.append(payload(1, detail="original"))
    writer.close()
    log_path.write_bytes(log_path.read_bytes().replace(b"original", b"modified"))
    with pytest.raises(AuditUnavailable, match="fails verification.*evidence"):
        open_log(log_path, backing)


def test_another_volumes_log_is_refused(tmp_path: Path, backing: Path, log_path: Path) -> None:
    other = make_backing(tmp_path, "other")
    writer = open_log(log_path, other)
    writer.close()
    create_anchor(backing, MK)
    with pytest.raises(AuditUnavailable, match="another volume"):
        open_log(log_path, backing)


def test_missing_key_store_with_an_existing_log_is_refused(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing)
    writer.close()
    key_store_path(backing).unlink()
    with pytest.raises(AuditUnavailable, match="no audit key store"):
        open_log(log_path, backing)
    assert not key_store_path(backing).exists()  # no new anchor was made behind the auditor's back


def test_key_store_of_another_master_key(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing)
    writer.close()
    with pytest.raises(AuditUnavailable, match="cannot be opened"):
        open_audit_log(log_path, backing, bytes(32))


def test_one_writer_per_volume(backing: Path, log_path: Path, tmp_path: Path) -> None:
    writer = open_log(log_path, backing)
    try:
        with pytest.raises(AuditUnavailable, match="in use"):
            open_log(tmp_path / "other.log", backing)
    finally:
        writer.close()


def test_crash_before_the_new_key_was_written_to_the_log(backing: Path, log_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    writer = open_log(log_path, backing)
    writer.close()
    real = AuditLog._write

    def fail(self: AuditLog, data: bytes) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(AuditLog, "_write", fail)
    with pytest.raises(AuditUnavailable):
        open_log(log_path, backing)
    assert json.loads(key_store_path(backing).read_text())["pending"] is not None
    monkeypatch.setattr(AuditLog, "_write", real)
    writer = open_log(log_path, backing)  # the pending key is dropped: the log never named it
    writer.close()
    assert verify([log_path], anchor_of(backing)).intact
    assert json.loads(key_store_path(backing).read_text())["pending"] is None


def test_crash_after_the_new_key_was_logged_but_not_promoted(backing: Path, log_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    writer = open_log(log_path, backing)
    writer.close()
    real, calls = KeyStore.save, []

    def save_then_fail(self: KeyStore) -> None:
        calls.append(1)
        if len(calls) == 2:  # the promotion, after the epoch record reached the log
            raise OSError(errno.EIO, "Input/output error")
        real(self)

    monkeypatch.setattr(KeyStore, "save", save_then_fail)
    with pytest.raises(AuditUnavailable):
        open_log(log_path, backing)
    monkeypatch.setattr(KeyStore, "save", real)
    assert kind(records_of(log_path)[-1]) == "epoch"
    writer = open_log(log_path, backing)  # the log names the pending key: it is promoted
    writer.close()
    assert verify([log_path], anchor_of(backing)).intact
    assert json.loads(key_store_path(backing).read_text())["current"]["epoch"] == 3


def test_new_log_path_continues_the_trail(backing: Path, log_path: Path, tmp_path: Path) -> None:
    writer = open_log(log_path, backing)
    writer.append(payload(1))
    writer.close()
    moved = tmp_path / "elsewhere" / "audit.log"
    writer = open_log(moved, backing)
    writer.append(payload(2))
    writer.close()
    start = control_records(moved, "start")[0]
    assert start["audit"]["continues"]["chain"] == control_records(log_path, "start")[0]["audit"]["chain"]
    assert "give its files to audit verify too" in start["detail"]
    assert verify([log_path, moved], anchor_of(backing)).intact
    alone = verify([moved], anchor_of(backing))
    assert alone.problem is not None and alone.problem.kind == "missing-file"


# ---------------------------------------------------------------------------- seals, epochs, rotation


def test_idle_log_is_sealed_after_the_checkpoint_interval(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing, checkpoint_interval=0.1)
    writer.append(payload(1))
    assert wait_for(lambda: verify([log_path], anchor_of(backing), live=True).unsealed == 0
                    and kind(records_of(log_path)[-1]) == "checkpoint", timeout=3.0)
    writer.close()


def test_checkpoint_every_n_records(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing, checkpoint_records=10, checkpoint_interval=60)
    for n in range(95):
        writer.append(payload(n))
    writer.close()
    assert len(control_records(log_path, "checkpoint")) == 9


def test_epoch_changes_after_m_checkpoints(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing, checkpoint_records=2, epoch_checkpoints=3)
    for n in range(30):
        writer.append(payload(n))
        writer.flush()
    writer.close()
    epochs = [r["audit"]["epoch"] for r in control_records(log_path, "epoch")]
    assert len(epochs) >= 4 and epochs == list(range(1, len(epochs) + 1))
    assert json.loads(key_store_path(backing).read_text())["current"]["epoch"] == epochs[-1]
    assert verify([log_path], anchor_of(backing)).intact


def test_epoch_changes_after_some_time(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing, epoch_seconds=0.2)
    time.sleep(0.7)
    writer.close()
    assert len(control_records(log_path, "epoch")) >= 2
    assert verify([log_path], anchor_of(backing)).intact


def test_rotation_by_size(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing, rotate_bytes=5000)
    for n in range(60):
        writer.append(payload(n))
        if n % 10 == 9:
            writer.flush()  # rotation happens between commits: a file may exceed the size by a batch
    writer.close()
    rotated = sorted(log_path.parent.glob("audit.log.*"))
    assert len(rotated) >= 2
    for path in [*rotated, log_path]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in rotated:
        assert kind(records_of(path)[-1]) == "rotate" and records_of(path)[-1]["audit"]["file"] == path.name
    assert kind(records_of(log_path)[0]) == "link"
    assert verify([*rotated, log_path], anchor_of(backing)).intact
    assert [r["object"]["inode"] for r in iter_records([log_path, *rotated])] == list(range(60))


def test_rotation_by_age(backing: Path, log_path: Path) -> None:
    writer = open_log(log_path, backing, rotate_seconds=0.2)
    writer.append(payload(1))
    time.sleep(0.6)
    writer.append(payload(2))
    writer.close()
    rotated = list(log_path.parent.glob("audit.log.*"))
    assert rotated
    assert verify([*rotated, log_path], anchor_of(backing)).intact


def test_rotation_that_fails_midway_is_retried_with_the_same_link(backing: Path, log_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import encfs_pacs.audit.writer as writer_module
    real, failures = writer_module.create_linked_file, []

    def flaky(path: Path, line: bytes) -> tuple[int, int]:
        if len(failures) < 2:
            failures.append(line)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, line)

    monkeypatch.setattr(writer_module, "create_linked_file", flaky)
    writer = open_log(log_path, backing, rotate_bytes=3000)
    for n in range(20):
        writer.append(payload(n, detail="x" * 200))
    writer.flush()  # the records are on disk; the rotation after them failed
    assert wait_for(lambda: bool(failures) and writer.failed is not None)
    assert "full" in str(writer.failed)
    assert wait_for(lambda: writer.failed is None, timeout=5.0)
    writer.close()
    assert len(failures) == 2 and failures[0] == failures[1]  # the retry wrote the very same link record
    rotated = sorted(log_path.parent.glob("audit.log.*"))
    assert verify([*rotated, log_path], anchor_of(backing)).intact
    assert len([r for r in iter_records([*rotated, log_path]) if r["event"] == "open"]) == 20


def test_key_store_unwritable_postpones_the_key_change(backing: Path, log_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    writer = open_log(log_path, backing, checkpoint_records=2, epoch_checkpoints=2)
    real = KeyStore.save

    def unwritable(self: KeyStore) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(KeyStore, "save", unwritable)
    with caplog.at_level(logging.ERROR, logger="encfs_pacs.audit"):
        for n in range(12):
            writer.append(payload(n))  # the log itself is fine: nothing is refused
            writer.flush()
    assert any("postponed" in m for m in caplog.messages)
    monkeypatch.setattr(KeyStore, "save", real)
    for n in range(12, 20):
        writer.append(payload(n))
        writer.flush()
    writer.close()
    assert len(control_records(log_path, "epoch")) >= 2
    assert json.loads(key_store_path(backing).read_text())["current"]["epoch"] == \
        control_records(log_path, "epoch")[-1]["audit"]["epoch"]
    assert verify([log_path], anchor_of(backing)).intact

