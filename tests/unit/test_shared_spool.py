"""The audit spool with two mounts of one volume (--shared-storage): one ingests, once.

Each server has its own trail (--audit-host). Both would otherwise poll the one spool folder and
could record a maintenance event twice, or wait seconds at mount for a lock the other holds for
its whole life. With ``shared=True`` only the holder of the folder's lock ingests; the other
takes over when it stops.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from encfs_pacs.audit import AuditLog, iter_records, open_audit_log
from encfs_pacs.audit.spool import SpoolIngester, queue_event, spool_path

from .auditkit import FIXTURE_MASTER_KEY

MK = FIXTURE_MASTER_KEY


@pytest.fixture
def trails(backing: Path, tmp_path: Path) -> Iterator[dict[str, AuditLog]]:
    made = {host: open_audit_log(tmp_path / host / "audit.log", backing, MK, commit_interval=0.01, host=host)
            for host in ("acq", "was")}
    yield made
    for writer in made.values():
        writer.close()


def event(n: int) -> dict[str, object]:
    return {"event": "volume-key-changed", "outcome": "success", "who": {"uid": 0, "user": "root"},
            "object": {"backing": "/srv/v"}, "n": n}


def recorded(tmp_path: Path, host: str) -> list[int]:
    return [r["n"] for r in iter_records([tmp_path / host / "audit.log"])
            if r.get("event") == "volume-key-changed"]


def test_one_mount_ingests_and_the_other_takes_over_when_it_stops(
        backing: Path, trails: dict[str, AuditLog], tmp_path: Path) -> None:
    queue_event(backing, event(1), MK)
    first = SpoolIngester(backing, trails["acq"], MK, poll_seconds=0.05, shared=True)
    second = SpoolIngester(backing, trails["was"], MK, poll_seconds=0.05, shared=True)
    assert first.start() == 1
    started = time.monotonic()
    assert second.start() == 0  # not the ingester: returns at once instead of waiting for the lock
    assert time.monotonic() - started < 1.0
    try:
        queue_event(backing, event(2), MK)
        deadline = time.monotonic() + 10
        while list(spool_path(backing).iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        first.stop()
        queue_event(backing, event(3), MK)  # now only the second mount is there
        deadline = time.monotonic() + 10
        while list(spool_path(backing).iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        first.stop()
        second.stop()
    for writer in trails.values():
        writer.flush(5)
    assert recorded(tmp_path, "acq") == [1, 2]
    assert recorded(tmp_path, "was") == [3]
