"""The audit sink the access gate writes to: adds patient and study, keeps order, fails closed.

Records are queued by the FUSE request threads and written by one worker thread, in the order
they were queued. For an open or a release of a regular file the worker looks up the file's
DICOM tags (cached per file version) before writing, so a PACS read never waits for a header
parse. The worker takes records in batches: woken by the first record of a burst, it waits
BATCH_SECONDS for the rest and then writes them all. Waking it for every record made the
request threads and the worker hand the one Python lock (the GIL) back and forth at every
system call, which cost more CPU than the records themselves (docs/performance.md).
For records of operations that remove or change a file (delete, rename, truncate) the caller
looks the tags up *before* the operation, while the file still exists.

If the writer fails (disk full, log removed, …) the sink remembers why; ``check`` then raises it
so the gate refuses new opens (fail closed) — unless ``fail_open`` was chosen, in which case the
failure is logged and the mount keeps serving. A record that could not be written is never
dropped silently: its summary goes to the daemon log.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Protocol

from ..errors import AuditUnavailable, EncfsPacsError
from .canonical import repaired
from .dicom import DicomTagCache

log = logging.getLogger("encfs_pacs.audit")

# Events whose object is looked up by the worker (the file still exists when it runs).
ENRICHED_LATER = frozenset({"open", "release"})
QUEUE_LIMIT = 10_000  # beyond this, request threads wait: back-pressure rather than lost records
# How long the worker lets a burst of records gather once the first one woke it. It delays a
# record by at most this much on its way to the log, whose own commit interval is 0.2 s.
BATCH_SECONDS = 0.005
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
        # deque.append/popleft are atomic: request threads queue a record without taking a lock
        # or waking anybody, unless the worker is asleep (see append).
        self._pending: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._room = threading.Condition()  # signalled after each batch, for back-pressure
        self._failure: Exception | None = None
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._worker.start()

    @property
    def writer(self) -> Writer:
        """The audit log itself (the spool ingester appends to it directly and flushes it)."""
        return self._writer

    # -- used by the gate ------------------------------------------------------------------

    def append(self, payload: dict[str, Any]) -> None:
        if len(self._pending) >= QUEUE_LIMIT:
            self._wait_for_room()
        self._pending.append(payload)
        if not self._wake.is_set():  # (a record queued after the worker's clear sets it again)
            self._wake.set()

    def _wait_for_room(self) -> None:
        with self._room:
            while len(self._pending) >= QUEUE_LIMIT:
                if not self._worker.is_alive():
                    raise self._stopped()
                self._wake.set()
                self._room.wait(0.05)

    def check(self) -> None:
        """Raise the writer's failure if the audit trail is down and we fail closed."""
        failure = getattr(self._writer, "failed", None) or self._failure
        if failure is None and not self._closing and not self._worker.is_alive():
            failure = self._stopped()
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
        handed_over = threading.Event()  # set by the worker once the records before it are written
        self._pending.append(handed_over)
        self._wake.set()
        if not handed_over.wait(timeout):
            log.warning("audit records not yet handed to the log after %.0f s%s", timeout,
                        "" if self._worker.is_alive() else " (its worker has stopped)")
        flush = getattr(self._writer, "flush", None)
        if flush is not None:
            try:
                flush(timeout)
            except (OSError, EncfsPacsError) as exc:
                log.warning("audit records not yet on disk: %s", exc)

    def close(self) -> None:
        self._closing = True
        self._pending.append(_STOP)
        self._wake.set()
        self._worker.join(timeout=60)
        try:
            self._writer.close()
        except (OSError, EncfsPacsError) as exc:
            log.error("closing the audit log failed: %s", exc)

    def _stopped(self) -> AuditUnavailable:
        return AuditUnavailable("the audit worker has stopped (see the daemon log); remount to restart it")

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()  # until the first record of a burst
            time.sleep(BATCH_SECONDS)  # let the rest of it gather
            self._wake.clear()  # before draining: whatever comes after the clear wakes us again
            try:
                while self._pending:
                    item = self._pending.popleft()
                    if item is _STOP:
                        return
                    if isinstance(item, threading.Event):
                        item.set()  # a flush: everything queued before it is written
                    else:
                        self._write(item)
            except BaseException:
                # A bug: fail closed (check() refuses access from now on) rather than go on
                # serving without a trail.
                log.exception("the audit worker stopped on an internal error; file access is refused; "
                              "%d queued record(s) will not be written", len(self._pending))
                raise
            finally:
                with self._room:
                    self._room.notify_all()

    def _append_or_repair(self, payload: dict[str, Any]) -> None:
        """A record the log refuses as built (e.g. a file name that is not UTF-8) is written
        repaired, with a note why, rather than skipped: no access goes unrecorded."""
        try:
            self._writer.append(payload)
            return
        except (TypeError, ValueError) as exc:
            problem = exc
        log.warning("audit record repaired before writing (%s): %s %s", problem, payload.get("event"),
                    payload.get("outcome"))
        try:
            self._writer.append({**repaired(payload), "repaired": str(problem)})
        except (TypeError, ValueError):
            log.exception("audit record NOT written (malformed): %s %s", payload.get("event"),
                          payload.get("outcome"))

    def _write(self, payload: dict[str, Any]) -> None:
        obj = payload.get("object")
        if (self._tags is not None and payload.get("event") in ENRICHED_LATER and isinstance(obj, dict)
                and obj.get("path") and "dicom" not in obj):
            tags = self._tags.tags(obj["path"])
            if tags:
                obj["dicom"] = tags
        try:
            self._append_or_repair(payload)
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
