"""The audit sink the access gate writes to: adds patient and study, keeps order, fails closed.

Records are queued by the FUSE request threads and written by one worker thread, in the order
they were queued. For an open or a release of a regular file the worker looks up the file's
DICOM tags (cached per file version) before writing, so a PACS read never waits for a header
parse. For records of operations that remove or change a file (delete, rename, truncate) the
caller looks the tags up *before* the operation, while the file still exists.

If the writer fails (disk full, log removed, …) the sink remembers why; ``check`` then raises it
so the gate refuses new opens (fail closed) — unless ``fail_open`` was chosen, in which case the
failure is logged and the mount keeps serving. A record that could not be written is never
dropped silently: its summary goes to the daemon log.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Protocol

from ..errors import AuditUnavailable, EncfsPacsError
from .dicom import DicomTagCache

log = logging.getLogger("encfs_pacs.audit")

# Events whose object is looked up by the worker (the file still exists when it runs).
ENRICHED_LATER = frozenset({"open", "release"})
QUEUE_LIMIT = 10_000  # beyond this, request threads wait: back-pressure rather than lost records
_STOP = object()


class Writer(Protocol):
    def append(self, payload: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class EnrichingAudit:
    def __init__(self, writer: Writer, tags: DicomTagCache | None, *, fail_open: bool = False) -> None:
        self._writer = writer
        self._tags = tags
        self._fail_open = fail_open
        self._refusal_logged = False  # one log line per outage, not one per refused open
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_LIMIT)
        self._failure: Exception | None = None
        self._worker = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._worker.start()

    @property
    def writer(self) -> Writer:
        """The audit log itself (the spool ingester appends to it directly and flushes it)."""
        return self._writer

    # -- used by the gate ------------------------------------------------------------------

    def append(self, payload: dict[str, Any]) -> None:
        self._queue.put(payload)

    def check(self) -> None:
        """Raise the writer's failure if the audit trail is down and we fail closed."""
        failure = getattr(self._writer, "failed", None) or self._failure
        if failure is None:
            self._refusal_logged = False
            return
        if not self._fail_open:
            # The writer keeps records in memory meanwhile (it runs in its fail-open mode for
            # that); its failure names only the cause, which is what the refused caller needs.
            reason = str(failure)
            if not self._refusal_logged:
                self._refusal_logged = True
                log.error("file access is refused until the audit log can be written again (fail-closed)")
            raise AuditUnavailable(f"access refused because {reason}; free the space or fix the log "
                                   "(or mount with --audit-fail-open to serve without a trail)")

    def tags_now(self, path: str) -> dict[str, str] | None:
        return self._tags.tags(path) if self._tags is not None else None

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every record queued so far is on disk (or the writer failed/timed out)."""
        self._queue.join()
        flush = getattr(self._writer, "flush", None)
        if flush is not None:
            try:
                flush(timeout)
            except (OSError, EncfsPacsError) as exc:
                log.warning("audit records not yet on disk: %s", exc)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._worker.join(timeout=60)
        try:
            self._writer.close()
        except (OSError, EncfsPacsError) as exc:
            log.error("closing the audit log failed: %s", exc)

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if payload is _STOP:
                    return
                self._write(payload)
            finally:
                self._queue.task_done()

    def _write(self, payload: dict[str, Any]) -> None:
        obj = payload.get("object")
        if (self._tags is not None and payload.get("event") in ENRICHED_LATER and isinstance(obj, dict)
                and obj.get("path") and "dicom" not in obj):
            tags = self._tags.tags(obj["path"])
            if tags:
                obj["dicom"] = tags
        try:
            self._writer.append(payload)
        except (OSError, EncfsPacsError) as exc:
            if self._failure is None:
                log.error("the audit log cannot be written (%s); %s", exc,
                          "continuing without it (--audit-fail-open)" if self._fail_open
                          else "new opens are refused until it works again")
            self._failure = exc if isinstance(exc, EncfsPacsError) else AuditUnavailable(
                f"the audit log cannot be written: {exc}")
            log.error("audit record NOT written: %s %s %s", payload.get("event"), payload.get("outcome"),
                      (obj or {}).get("path") if isinstance(obj, dict) else "")
        else:
            if self._failure is not None:
                log.warning("the audit log is writable again")
                self._failure = None
