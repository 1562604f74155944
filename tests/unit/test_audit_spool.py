"""The audit spool: maintenance events queued in the volume and ingested into the mount's trail.

Writer side (``queue_event``), the checks on the mount's side (``examine``: MAC, format,
malformed files), and the ingester against a real ``AuditLog``: order, idempotence, a crash
between the record and the removal of its file, a trail that is not durable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from encfs_pacs.audit import AuditLog, iter_records, open_audit_log, read_anchor, spool, verify
from encfs_pacs.audit.canonical import canonical
from encfs_pacs.audit.spool import (
    FORMAT,
    MAC_DOMAIN,
    STALE_TMP_SECONDS,
    SpoolIngester,
    examine,
    ingester_running,
    queue_event,
    rejected_path,
    spool_path,
    wait_until_ingested,
)
from encfs_pacs.crypto.keys import audit_spool_key
from encfs_pacs.maintenance import events

from .auditkit import FIXTURE_MASTER_KEY

MK = FIXTURE_MASTER_KEY
OTHER_KEY = bytes(range(1, 33))


@pytest.fixture
def trail(backing: Path, log_path: Path) -> Iterator[AuditLog]:
    writer = open_audit_log(log_path, backing, MK, commit_interval=0.01)
    yield writer
    writer.close()


def event(n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"event": "volume-key-changed", "outcome": "success", "who": {"uid": 0, "user": "root"},
            "object": {"backing": "/srv/v"}, "n": n, **extra}


def payloads(log_path: Path) -> list[dict[str, Any]]:
    return list(iter_records([log_path]))


def spool_files(backing: Path) -> list[str]:
    return sorted(os.listdir(spool_path(backing)))


def ingest_all(backing: Path, trail: AuditLog, log_path: Path | None = None) -> int:
    ingester = SpoolIngester(backing, trail, MK, log_path)
    return ingester.ingest()


# ---------------------------------------------------------------------------- queueing


def test_an_entry_is_private_time_ordered_canonical_and_authenticated(backing: Path) -> None:
    first = queue_event(backing, event(1), MK, now_ns=lambda: 2_000)
    second = queue_event(backing, event(2), MK, now_ns=lambda: 10_000)
    assert spool_path(backing).stat().st_mode & 0o777 == 0o700
    assert first.path.stat().st_mode & 0o777 == 0o600
    # Fixed-width time first: text order is time order (2 000 ns sorts before 10 000 ns).
    assert spool_files(backing) == [first.path.name, second.path.name]
    assert first.path.name == f"{2_000:020d}-{first.entry_id}.json" and first.entry_id != second.entry_id
    raw = first.path.read_bytes()
    body = json.loads(raw)
    assert raw == canonical(body) + b"\n" and body["format"] == FORMAT and body["payload"] == event(1)
    unsigned = {k: v for k, v in body.items() if k != "mac"}
    expected = hmac.new(audit_spool_key(MK), MAC_DOMAIN + canonical(unsigned), hashlib.sha256).hexdigest()
    assert body["mac"] == expected
    assert MK.hex() not in raw.decode() and audit_spool_key(MK).hex() not in raw.decode()
    assert not list(spool_path(backing).glob("*.tmp"))


@pytest.mark.parametrize("bad", [{"event": "x", "seq": 3}, {"event": "x", "time": "now"},
                                 {"event": "x", "ratio": 0.5}, {"outcome": "no event"}])
def test_a_payload_the_log_would_refuse_is_refused_when_queued(backing: Path, bad: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        queue_event(backing, bad, MK)
    assert not spool_path(backing).exists() or spool_files(backing) == []


def test_the_spool_folder_must_not_be_a_symlink(backing: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    spool_path(backing).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        queue_event(backing, event(), MK)
    assert os.listdir(tmp_path / "elsewhere") == []


# ---------------------------------------------------------------------------- examining


def test_examine_accepts_its_own_entries_only(backing: Path) -> None:
    queued = queue_event(backing, event(), MK)
    good = examine(spool_path(backing), queued.path.name, audit_spool_key(MK))
    assert good.action == "delete" and good.record is not None
    assert good.record["spool"] == {"id": queued.entry_id, "file": queued.path.name, "authenticated": True}
    forged = examine(spool_path(backing), queued.path.name, audit_spool_key(OTHER_KEY))
    assert forged.action == "reject" and forged.record is not None
    assert forged.record["event"] == "security-alert" and forged.record["alert"] is True
    assert forged.record["claimed"] == event() and "does not verify" in forged.record["spool"]["problem"]


def test_an_edited_entry_fails_its_mac(backing: Path) -> None:
    queued = queue_event(backing, event(user="alice"), MK)
    body = json.loads(queued.path.read_bytes())
    body["payload"]["outcome"] = "error"  # re-canonicalised: only the MAC can tell
    queued.path.write_bytes(canonical(body) + b"\n")
    verdict = examine(spool_path(backing), queued.path.name, audit_spool_key(MK))
    assert verdict.record is not None and verdict.record["event"] == "security-alert"
    assert verdict.action == "reject"


def test_entries_without_a_mac_are_claims_not_events(backing: Path) -> None:
    queued = queue_event(backing, event(), None)
    verdict = examine(spool_path(backing), queued.path.name, audit_spool_key(MK))
    assert verdict.record is not None and verdict.record["event"] == "security-alert"
    assert verdict.record["claimed"]["event"] == "volume-key-changed"
    assert "no MAC" in verdict.record["detail"] and verdict.action == "delete"


def test_an_unsigned_policy_edit_is_recorded_as_itself_marked_unauthenticated(backing: Path) -> None:
    """`allow` never holds the volume key: its edits are routine, not alerts — but a policy edit
    whose MAC is present and wrong is still a forgery."""
    key = audit_spool_key(MK)
    edit = event(event="policy-edit", action="add")
    unsigned = examine(spool_path(backing), queue_event(backing, edit, None).path.name, key)
    assert unsigned.record is not None and unsigned.record["event"] == "policy-edit"
    assert unsigned.record["spool"]["authenticated"] is False and "alert" not in unsigned.record
    forged = examine(spool_path(backing), queue_event(backing, edit, OTHER_KEY).path.name, key)
    assert forged.record is not None and forged.record["event"] == "security-alert"


def test_fresh_temporary_files_are_left_for_their_writer(backing: Path) -> None:
    folder = spool_path(backing)
    folder.mkdir(mode=0o700)
    (folder / ("00000000000000000001-" + "ab" * 16 + ".json.tmp")).write_bytes(b'{"half')
    name = os.listdir(folder)[0]
    assert examine(folder, name, audit_spool_key(MK)).action == "wait"
    stale = examine(folder, name, audit_spool_key(MK), now=time.time() + STALE_TMP_SECONDS + 1)
    assert stale.action == "reject" and stale.record is not None and "unfinished" in stale.record["detail"]


# ---------------------------------------------------------------------------- ingesting


def test_ingest_records_entries_in_time_order_then_removes_them(backing: Path, trail: AuditLog,
                                                                log_path: Path) -> None:
    for n, at in ((3, 30), (1, 10), (2, 20)):  # queued out of order: the names decide
        queue_event(backing, event(n), MK, now_ns=lambda at=at: at)
    assert ingest_all(backing, trail) == 3
    assert spool_files(backing) == []
    recorded = payloads(log_path)
    assert [r["n"] for r in recorded] == [1, 2, 3]
    assert all(r["spool"]["authenticated"] for r in recorded)


def test_ingest_is_idempotent(backing: Path, trail: AuditLog, log_path: Path) -> None:
    queue_event(backing, event(1), MK)
    ingester = SpoolIngester(backing, trail, MK, log_path)
    assert ingester.ingest() == 1
    assert ingester.ingest() == 0
    queue_event(backing, event(2), MK)
    assert ingester.ingest() == 1
    assert [r["n"] for r in payloads(log_path)] == [1, 2]


def test_forged_unsigned_and_malformed_files_are_alerts_and_moved_aside(backing: Path, trail: AuditLog,
                                                                        log_path: Path) -> None:
    forged = queue_event(backing, event(1), OTHER_KEY, now_ns=lambda: 1)
    unsigned = queue_event(backing, event(2), None, now_ns=lambda: 2)
    folder = spool_path(backing)
    (folder / ("00000000000000000003-" + "cd" * 16 + ".json")).write_bytes(b"not json\n")
    (folder / "note.txt").write_text("hello")
    (folder / ("00000000000000000004-" + "ef" * 16 + ".json")).symlink_to("/etc/passwd")
    (folder / ("00000000000000000005-" + "01" * 16 + ".json")).write_bytes(b"x" * (70 * 1024))
    assert ingest_all(backing, trail) == 6
    recorded = payloads(log_path)
    assert [r["event"] for r in recorded] == ["security-alert"] * 6
    assert all(r["alert"] is True for r in recorded)
    assert recorded[0]["claimed"]["n"] == 1 and recorded[1]["claimed"]["n"] == 2
    assert not any(r.get("n") for r in recorded)  # never recorded as the events they claim
    assert spool_files(backing) == []
    moved = sorted(os.listdir(rejected_path(backing)))
    assert forged.path.name in moved and unsigned.path.name not in moved  # the claim is in the trail
    assert "note.txt" in moved and len(moved) == 5
    assert rejected_path(backing).stat().st_mode & 0o777 == 0o700
    assert verify([log_path], read_anchor(backing), live=True).intact


def run_a_mount_s_ingester(backing: Path, log_path: Path) -> None:
    """What a mount does with the spool: start (a first pass), then stop (a last one)."""
    writer = open_audit_log(log_path, backing, MK, commit_interval=0.01)
    ingester = SpoolIngester(backing, writer, MK, log_path)
    try:
        ingester.start()
    finally:
        ingester.stop()
        writer.close()


def test_a_crash_between_record_and_removal_records_the_event_once(backing: Path, log_path: Path) -> None:
    queued = queue_event(backing, event(7), MK)
    saved = queued.path.read_bytes()
    writer = open_audit_log(log_path, backing, MK, commit_interval=0.01)
    SpoolIngester(backing, writer, MK, log_path).ingest()
    writer.close()
    queued.path.write_bytes(saved)  # as if the mount died after the flush, before the unlink
    run_a_mount_s_ingester(backing, log_path)
    assert [r.get("n") for r in payloads(log_path)] == [7]
    assert spool_files(backing) == []


def test_after_a_crash_only_the_entries_the_log_holds_are_skipped(backing: Path, log_path: Path) -> None:
    recorded = [queue_event(backing, event(n), MK) for n in (1, 2, 3)]
    saved = {entry.path: entry.path.read_bytes() for entry in recorded}
    writer = open_audit_log(log_path, backing, MK, commit_interval=0.01)
    SpoolIngester(backing, writer, MK, log_path).ingest()
    writer.close()
    for path in list(saved)[:2]:
        path.write_bytes(saved[path])  # two of three files outlived their records
    queue_event(backing, event(4), MK)  # and one is new
    run_a_mount_s_ingester(backing, log_path)
    assert [r.get("n") for r in payloads(log_path)] == [1, 2, 3, 4]
    assert spool_files(backing) == []


def test_without_the_log_to_compare_a_crash_duplicates_but_never_loses(backing: Path, trail: AuditLog,
                                                                       log_path: Path) -> None:
    queued = queue_event(backing, event(8), MK)
    saved = queued.path.read_bytes()
    ingest_all(backing, trail)
    queued.path.write_bytes(saved)
    ingest_all(backing, trail)  # a new ingester that does not know the log: records it again
    recorded = [r for r in payloads(log_path) if r.get("n") == 8]
    assert len(recorded) == 2 and recorded[0]["spool"]["id"] == recorded[1]["spool"]["id"]


class BrokenTrail:
    """A trail whose records never become durable (a full disk)."""

    def __init__(self) -> None:
        self.appended: list[dict[str, Any]] = []

    def append(self, payload: dict[str, Any], *, droppable: bool = True) -> None:
        self.appended.append(payload)

    def flush(self, timeout: float | None = None) -> None:
        from encfs_pacs.errors import AuditUnavailable
        raise AuditUnavailable("disk full")

    failed = None


class FullTrail:
    """A fail-open trail far behind: beyond ``room`` it drops droppable records and refuses
    the others, as AuditLog.append does."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.kept: list[dict[str, Any]] = []
        self.dropped = 0

    def append(self, payload: dict[str, Any], *, droppable: bool = True) -> None:
        if len(self.kept) < self.room:
            self.kept.append(payload)
        elif droppable:
            self.dropped += 1
        else:
            from encfs_pacs.errors import AuditUnavailable
            raise AuditUnavailable("the audit writer is far behind")

    def flush(self, timeout: float | None = None) -> None:
        return None

    failed = None


def test_files_stay_until_their_record_is_durable(backing: Path, trail: AuditLog, log_path: Path) -> None:
    queue_event(backing, event(9), MK)
    broken = BrokenTrail()
    ingester = SpoolIngester(backing, broken, MK)
    assert ingester.ingest() == 0 and ingester.ingest() == 0
    assert len(broken.appended) == 1  # not appended again on every pass while it is pending
    assert len(spool_files(backing)) == 1
    assert ingest_all(backing, trail) == 1  # the next mount (a working disk) records it
    assert [r["n"] for r in payloads(log_path)] == [9]


def test_events_a_full_trail_cannot_take_stay_queued_and_are_never_dropped(backing: Path) -> None:
    for n in range(3):
        queue_event(backing, event(n), MK)
    trail = FullTrail(room=2)
    ingester = SpoolIngester(backing, trail, MK)
    assert ingester.ingest() == 2  # the third is refused, not dropped: its file stays
    assert trail.dropped == 0
    assert len(spool_files(backing)) == 1
    trail.room = 10  # the log caught up
    assert ingester.ingest() == 1
    assert spool_files(backing) == []
    assert [r["n"] for r in trail.kept] == [0, 1, 2]


def test_entries_appended_before_a_failed_flush_are_settled_only_when_durable(backing: Path) -> None:
    for n in range(2):
        queue_event(backing, event(n), MK)
    trail = FullTrail(room=10)
    trail.failed = "disk stalled"  # type: ignore[assignment]
    ingester = SpoolIngester(backing, trail, MK)
    assert ingester.ingest() == 0
    assert len(spool_files(backing)) == 2
    trail.failed = None  # type: ignore[assignment]
    assert ingester.ingest() == 2
    assert [r["n"] for r in trail.kept] == [0, 1]  # appended once, kept by the trail


def test_a_long_queue_goes_to_the_trail_in_batches(backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "INGEST_BATCH", 2)
    for n in range(5):
        queue_event(backing, event(n), MK)
    flushed_after: list[int] = []
    trail = FullTrail(room=100)
    trail.flush = lambda timeout=None: flushed_after.append(len(trail.kept))  # type: ignore[method-assign]
    assert SpoolIngester(backing, trail, MK).ingest() == 5
    assert flushed_after == [2, 4, 5]
    assert [r["n"] for r in trail.kept] == [0, 1, 2, 3, 4]


def test_a_running_ingester_picks_up_new_events_and_can_be_detected(backing: Path, trail: AuditLog,
                                                                    log_path: Path) -> None:
    assert not ingester_running(backing)
    ingester = SpoolIngester(backing, trail, MK, log_path, poll_seconds=0.05)
    ingester.start()
    try:
        assert ingester_running(backing)
        queued = queue_event(backing, event(10), MK)
        assert wait_until_ingested(queued, timeout=5)
    finally:
        ingester.stop()
    assert not ingester_running(backing)
    assert [r["n"] for r in payloads(log_path)] == [10]


# ---------------------------------------------------------------------------- the commands' side


def test_audit_event_says_queued_without_a_mount_and_recorded_with_one(backing: Path, trail: AuditLog,
                                                                       log_path: Path) -> None:
    made = events.authenticate(events.make_event("volume-checked", backing=backing, outcome="clean"), MK)
    assert events.audit_event(made) == events.QUEUED.format(backing=backing)
    assert made.master_key is None  # the key is not kept once the entry is written
    ingester = SpoolIngester(backing, trail, MK, log_path, poll_seconds=0.05)
    ingester.start()
    try:
        again = events.authenticate(events.make_event("volume-checked", backing=backing, outcome="clean"), MK)
        assert events.audit_event(again) == events.RECORDED
    finally:
        ingester.stop()
    recorded = payloads(log_path)
    assert [r["event"] for r in recorded] == ["volume-checked", "volume-checked"]
    who = recorded[0]["who"]
    assert who["uid"] == os.getuid() and isinstance(who["user"], str)
    assert recorded[0]["object"] == {"backing": str(backing)} and "queued_at" in recorded[0]


def test_audit_event_never_fails_the_command(tmp_path: Path) -> None:
    made = events.make_event("volume-checked", backing=tmp_path / "no-volume-here" / "x")
    assert events.audit_event(made).startswith("NOT recorded")


def test_a_recovery_key_use_is_flagged_for_auditors() -> None:
    assert events.make_event("volume-import", unlocked_with="recovery-key")["alert"] is True
    assert "alert" not in events.make_event("volume-import", unlocked_with="passphrase")


def test_spool_key_known_answer() -> None:
    """HKDF-SHA256(master 00..1f, info "encfs-pacs v1 audit spool mac"): a label change would
    make every queued entry of an older version a forgery (docs/file-format.md §4)."""
    assert audit_spool_key(bytes(range(32))).hex() == \
        "11633e5005f7d139dd363b02f9f6b6681cb243d945267fe0a9292dd6c36703e6"
    assert audit_spool_key(bytes(range(32))) != audit_spool_key(bytes(32))


def test_a_file_that_cannot_be_removed_is_not_recorded_again_each_pass(
        backing: Path, trail: AuditLog, log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queued = queue_event(backing, event(11), MK)
    ingester = SpoolIngester(backing, trail, MK, log_path)
    real_unlink = Path.unlink

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", refuse)
    ingester.ingest()
    ingester.ingest()
    assert queued.path.exists()
    monkeypatch.setattr(Path, "unlink", real_unlink)
    ingester.ingest()  # the removal is retried, the record is not repeated
    assert not queued.path.exists()
    assert [r["n"] for r in payloads(log_path)] == [11]
