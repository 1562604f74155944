"""The gate's audit sink: order kept, DICOM tags added off the request thread, fail closed."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from encfs_pacs.audit.canonical import check_payload
from encfs_pacs.audit.enrich import EnrichingAudit
from encfs_pacs.errors import AuditUnavailable, EncfsPacsError


class FakeWriter:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.broken: Exception | None = None
        self.closed = False
        self.gate = threading.Event()
        self.gate.set()

    def append(self, payload: dict[str, Any]) -> None:
        self.gate.wait(10)
        if self.broken is not None:
            raise self.broken
        self.records.append(payload)

    def close(self) -> None:
        self.closed = True


class FakeTags:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def tags(self, path: str) -> dict[str, str] | None:
        self.asked.append(path)
        return {"PatientID": "P-" + path.rsplit("/", 1)[-1]} if path.endswith(".dcm") else None


def record(event: str, path: str) -> dict[str, Any]:
    return {"event": event, "outcome": "allowed", "object": {"path": path}}


def test_order_is_kept_and_opens_get_patient_tags_from_the_worker() -> None:
    writer, tags = FakeWriter(), FakeTags()
    sink = EnrichingAudit(writer, tags)  # type: ignore[arg-type]
    writer.gate.clear()  # the writer is slow: appends must not wait for it
    for number in range(50):
        sink.append(record("open", f"/s/{number}.dcm"))
    sink.append(record("delete", "/s/x.dcm"))
    sink.append(record("open", "/notes.txt"))
    assert writer.records == []  # nothing written yet, and append did not block
    writer.gate.set()
    sink.flush()
    assert [r["object"]["path"] for r in writer.records] == [
        *(f"/s/{n}.dcm" for n in range(50)), "/s/x.dcm", "/notes.txt"]
    assert writer.records[7]["object"]["dicom"] == {"PatientID": "P-7.dcm"}
    assert "dicom" not in writer.records[50]["object"]  # deletes: looked up by the caller, before
    assert "dicom" not in writer.records[51]["object"]
    assert "/s/x.dcm" not in tags.asked
    sink.close()
    assert writer.closed


def test_fail_closed_until_the_log_works_again() -> None:
    writer = FakeWriter()
    sink = EnrichingAudit(writer, None)  # type: ignore[arg-type]
    sink.check()
    writer.broken = OSError(28, "No space left on device")
    sink.append(record("open", "/a"))
    sink.flush()
    with pytest.raises(EncfsPacsError, match="No space left"):
        sink.check()
    writer.broken = None
    sink.append(record("deny", "/b"))
    sink.flush()
    sink.check()  # recovered
    assert [r["object"]["path"] for r in writer.records] == ["/b"]
    sink.close()


def test_fail_open_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    writer = FakeWriter()
    sink = EnrichingAudit(writer, None, fail_open=True)  # type: ignore[arg-type]
    writer.broken = OSError(5, "Input/output error")
    sink.append(record("open", "/lost-record"))
    sink.flush()
    sink.check()  # no exception: the admin chose --audit-fail-open
    assert "NOT written" in caplog.text and "/lost-record" in caplog.text
    sink.close()


def test_a_buffering_writer_outage_refuses_access_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    """The mount opens the writer in its buffering (fail-open) mode and refuses access itself:
    the refusal must not read "serving continues", and the daemon log says it once per outage."""
    from encfs_pacs.errors import AuditUnavailable

    writer = FakeWriter()
    sink = EnrichingAudit(writer, None)  # type: ignore[arg-type]
    writer.failed = AuditUnavailable(  # type: ignore[attr-defined]
        "the audit log /l cannot be written (the disk holding it is full: free space)")
    for _ in range(3):
        with pytest.raises(AuditUnavailable) as refused:
            sink.check()
        assert "access refused because the audit log /l cannot be written" in str(refused.value)
        assert "kept in memory" not in str(refused.value)
    assert caplog.text.count("file access is refused until the audit log") == 1
    writer.failed = None  # type: ignore[attr-defined]
    sink.check()
    writer.failed = AuditUnavailable("the audit log /l cannot be written (EIO)")  # type: ignore[attr-defined]
    with pytest.raises(AuditUnavailable):
        sink.check()
    assert caplog.text.count("file access is refused until the audit log") == 2  # a new outage
    sink.close()


def test_records_from_many_threads_are_all_written_in_each_threads_order() -> None:
    """Request threads queue without a lock while the worker drains in batches: no record may
    fall between the worker's wake-up and its drain."""
    writer = FakeWriter()
    sink = EnrichingAudit(writer, None)  # type: ignore[arg-type]
    per_thread = 2_000

    def request_thread(name: str) -> None:
        for number in range(per_thread):
            sink.append(record("create", f"/{name}/{number}"))
            if number % 500 == 0:
                sink.flush()

    threads = [threading.Thread(target=request_thread, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.flush()
    for i in range(4):
        written = [r["object"]["path"] for r in writer.records if r["object"]["path"].startswith(f"/t{i}/")]
        assert written == [f"/t{i}/{n}" for n in range(per_thread)]
    sink.close()


def test_a_full_queue_holds_the_request_thread_until_the_worker_catches_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("encfs_pacs.audit.enrich.QUEUE_LIMIT", 10)
    writer = FakeWriter()
    writer.gate.clear()  # the log is stalled
    sink = EnrichingAudit(writer, None)  # type: ignore[arg-type]
    done = threading.Event()

    def request_thread() -> None:
        for number in range(30):
            sink.append(record("create", f"/{number}"))
        done.set()

    threading.Thread(target=request_thread, daemon=True).start()
    assert not done.wait(0.5)  # back-pressure: it waits instead of piling records up
    writer.gate.set()
    assert done.wait(10)
    sink.flush()
    assert [r["object"]["path"] for r in writer.records] == [f"/{n}" for n in range(30)]
    sink.close()


def test_a_record_the_log_refuses_is_written_repaired(caplog: pytest.LogCaptureFixture) -> None:
    """No access goes unrecorded because its record was built wrong (a bug elsewhere)."""

    class CheckingWriter(FakeWriter):
        def append(self, payload: dict[str, Any]) -> None:
            super().append(check_payload(payload))  # the real log's validation

    writer = CheckingWriter()
    sink = EnrichingAudit(writer, None)  # type: ignore[arg-type]
    sink.append(record("create", "/a"))
    sink.append({**record("open", "/caf\udce9.dcm"), "size": 1.5})
    sink.append(record("create", "/b"))
    sink.append({"event": "", "outcome": "allowed"})  # cannot be repaired: logged, not written
    sink.flush()
    assert [r["object"]["path"] for r in writer.records] == ["/a", "/caf\\xe9.dcm", "/b"]
    repaired = writer.records[1]
    assert repaired["size"] == "1.5" and "not valid Unicode" in repaired["repaired"]
    assert "audit record repaired before writing" in caplog.text
    assert "audit record NOT written (malformed)" in caplog.text
    sink.check()  # a record built wrong is a bug to fix, not a reason to refuse every access
    sink.close()


def test_records_reach_the_log_without_a_flush() -> None:
    """A record queued while the worker is busy wakes it again: none waits for a flush. The next
    record is queued the moment the last one arrived, i.e. while the worker finishes its drain."""
    writer = FakeWriter()
    sink = EnrichingAudit(writer, None)  # type: ignore[arg-type]
    for number in range(60):
        sink.append(record("create", f"/{number}"))
        deadline = time.monotonic() + 1
        while len(writer.records) <= number and time.monotonic() < deadline:
            time.sleep(0.0002)
        assert len(writer.records) == number + 1, f"record {number} waited for a flush"
    sink.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the point
def test_a_worker_that_dies_fails_closed(caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenTags:
        def tags(self, path: str) -> None:
            raise RuntimeError("a bug in the DICOM lookup")

    monkeypatch.setattr("encfs_pacs.audit.enrich.QUEUE_LIMIT", 5)
    writer = FakeWriter()
    sink = EnrichingAudit(writer, BrokenTags())  # type: ignore[arg-type]
    sink.check()
    sink.append(record("open", "/s/1.dcm"))
    sink._worker.join(5)
    assert not sink._worker.is_alive()
    assert "the audit worker stopped on an internal error" in caplog.text
    with pytest.raises(AuditUnavailable, match="audit worker has stopped"):
        sink.check()  # the gate refuses access rather than serve without a trail
    for number in range(5):
        sink.append(record("create", f"/{number}"))
    with pytest.raises(AuditUnavailable):  # and does not pile records up without end
        sink.append(record("create", "/one-too-many"))
    sink.close()
