"""The audit log writer: thread-safe appends, group commit, seals, epochs, rotation, failures.

``append`` (called from many FUSE threads) only validates and copies the payload, stamps it
and queues it: it never waits for the disk, so a PACS read is not slowed by audit I/O. One
writer thread chains the queued records (seq, prev, hash), adds seals, writes each batch with
one write() and makes it durable with one fsync() -- at most ``commit_interval`` after the
first record of the batch (0.2 s by default; "at least once a second").

If the log cannot be written the writer keeps every record (in memory, in order) and retries;
``append`` then raises AuditUnavailable (fail closed: the file system refuses the operation)
unless the log was opened with ``fail_open=True``, which keeps accepting records (the caller
decides whether file access goes on; the mount refuses it unless --audit-fail-open).
Nothing is dropped silently: when the log is writable again a security-alert record states
the outage, the operations refused and any records lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..crypto.keys import audit_key_store_key
from ..durable import fsync_dir
from ..errors import AuditUnavailable
from .canonical import check_payload
from .chain import Chainer, Stamp
from .records import ROTATE, STOP, utc_text
from .signing import (
    EpochKey,
    KeyGen,
    KeyStore,
    create_key_store,
    key_store_path,
    load_key_store,
    random_seed,
)
from .verify import ChainState, ChainVerifier, LogFile, _Bad, _decode, read_log_file

log = logging.getLogger("encfs_pacs.audit")

DEFAULT_ROTATE_BYTES = 64 * 1024 * 1024
DEFAULT_CHECKPOINT_INTERVAL = 1.0
DEFAULT_CHECKPOINT_RECORDS = 1000
DEFAULT_COMMIT_INTERVAL = 0.2
DEFAULT_EPOCH_SECONDS = 3600.0
DEFAULT_MAX_PENDING = 100_000
RETRY_INTERVAL = 1.0  # between attempts while the log cannot be written
REPLACED = "(removed or replaced while in use)"  # prev_file of a link after someone moved the log
# Called with whole lines once they are durable, in log order, and the chain id (forward.py).
Forward = Callable[[bytes, str], None]


@dataclass(frozen=True)
class AuditSettings:
    """Tunables; see open_audit_log for their meaning."""

    fail_open: bool = False
    rotate_bytes: int | None = DEFAULT_ROTATE_BYTES
    rotate_seconds: float | None = None
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    checkpoint_records: int = DEFAULT_CHECKPOINT_RECORDS
    commit_interval: float = DEFAULT_COMMIT_INTERVAL
    epoch_seconds: float | None = DEFAULT_EPOCH_SECONDS
    epoch_checkpoints: int | None = None
    max_pending: int = DEFAULT_MAX_PENDING


@dataclass
class _Hooks:
    """Injected clocks and randomness: real by default; fixed in known-answer tests."""

    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    mono: Callable[[], int] = time.monotonic_ns
    keygen: KeyGen = random_seed
    new_chain_id: Callable[[], str] = lambda: uuid.uuid4().hex


def _explain(exc: OSError, path: Path, fail_open: bool = False) -> str:
    """Why the log cannot be written and what to do, for the admin reading the error."""
    reasons = {
        errno.ENOSPC: "the disk holding it is full: free space",
        errno.EDQUOT: "the disk quota of this user is exhausted: raise it or free space",
        errno.EROFS: "its file system is read-only: remount it read-write",
        errno.EACCES: "permission denied: the log and its folder must be writable by the mount's user",
        errno.EPERM: "operation not permitted (an immutable or append-only attribute?)",
        errno.EIO: "the disk reported an I/O error: check it (dmesg)",
        errno.EFBIG: "the file is too large for this file system or process limit: rotate the log",
    }
    why = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    if fail_open:
        # Only the cause: whether file access goes on is the caller's choice (the mount keeps
        # this mode for buffering and refuses access itself when fail-closed); the writer's own
        # log line adds that records are kept in memory.
        return f"the audit log {path} cannot be written ({why})"
    return (f"the audit log {path} cannot be written ({why}); file operations are refused until it can "
            "be (fail-closed; mount with --audit-fail-open to keep serving without a complete log)")


class AuditLog:
    """A tamper-evident audit log. Build it with ``open_audit_log``."""

    def __init__(self, path: Path, store: KeyStore, store_key: bytes, chainer: Chainer, fd: int,
                 settings: AuditSettings, hooks: _Hooks, lock_fd: int,
                 forward: Forward | None = None) -> None:
        self.path = path
        self._forward = forward
        self._outbox = bytearray()  # lines written but not yet fsynced: forwarded once durable
        self.settings = settings
        self._store, self._store_key, self._chainer = store, store_key, chainer
        self._fd, self._lock_fd = fd, lock_fd
        self._hooks = hooks
        self._file_size = os.fstat(fd).st_size
        self._file_opened_ns = hooks.mono()
        self._epoch_started_ns = hooks.mono()
        self._epoch_checkpoints = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: list[dict[str, Any]] = []
        self._accepted = 0  # payload records taken by append
        self._durable = 0  # payload records on disk (fsynced)
        self._chained_unsynced = 0  # payload records chained since the last successful fsync
        self._unwritten = b""  # chained lines not yet written (after a failed write)
        self._needs_fsync = False
        self._retiring: EpochKey | None = None  # old key, erased once its successor is durable
        self._endorsed: dict[str, Any] | None = None  # where the new key was endorsed
        self._rotating: str | None = None  # rotated name, once the rotate seal is written
        self._link_line: bytes | None = None  # the next file's link record, made once per rotation
        self._next_key: EpochKey | None = None  # saved as pending, not yet endorsed in the log
        self._failure: AuditUnavailable | None = None
        self._failure_since: str | None = None
        self._fsync_broken = False
        self._refused = 0  # appends refused while failed (fail-closed)
        self._lost = 0  # records dropped because the queue was full (fail-open only)
        self._commits = 0
        self._last_commit_ns = 0
        self._alert_note: str | None = None  # a security alert the next commit writes
        self._outage_note: str | None = None
        self._lost_reported = 0
        self._stop_chained = False
        self._head_saved = False
        self._close_attempts = 0
        self._flush_wanted = False
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audit-log-writer", daemon=True)

    # -- the API the file system uses ----------------------------------------------------

    def append(self, payload: dict[str, Any], *, droppable: bool = True) -> None:
        """Queue one record. Raises AuditUnavailable when the log cannot be written (fail
        closed), TypeError/ValueError for a payload that is not JSON without floats.

        ``droppable=False``: even a fail-open log refuses the record (AuditUnavailable) rather
        than drop it when its queue is full; for a caller that keeps the record and retries
        (the audit spool, whose file goes once its record is durable)."""
        record = check_payload(payload)
        with self._lock:
            if self._closed and self._failure is not None:  # the writer thread is gone
                raise AuditUnavailable(self._failure.message)
            if self._closing:
                raise AuditUnavailable(f"the audit log {self.path} is closed")
            if self._failure is not None and not self.settings.fail_open:
                self._refused += 1
                raise AuditUnavailable(self._failure.message)  # a fresh one: no shared traceback
            if len(self._queue) >= self.settings.max_pending:
                self._overflow(droppable)
                return
            record["time"] = utc_text(self._hooks.clock())
            record["mono_ns"] = self._hooks.mono()
            self._queue.append(record)
            self._accepted += 1
            if len(self._queue) == 1:
                self._cond.notify_all()

    def _overflow(self, droppable: bool) -> None:
        """The writer is far behind (a stalled disk). Called with the lock held."""
        message = (f"the audit writer is {len(self._queue)} records behind: the disk holding {self.path} "
                   "is stalled or too slow")
        if not self.settings.fail_open:
            self._refused += 1
            raise AuditUnavailable(message + "; file operations are refused until it catches up")
        if not droppable:  # refused, not lost: its sender keeps it and sends it again
            raise AuditUnavailable(message + "; the record stays with its sender")
        self._lost += 1
        if self._lost == 1 or self._lost % 10_000 == 0:
            log.error("%s: %d audit record(s) lost so far (fail-open); the log will say so", message,
                      self._lost)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record appended before this call is on disk (written and fsynced).

        Raises AuditUnavailable if that fails (fail-closed), or after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target, commits = self._accepted, self._commits
            self._flush_wanted = True
            self._cond.notify_all()
            while self._durable < target:
                if self._failure is not None and self._commits > commits:
                    if self.settings.fail_open:
                        return
                    raise AuditUnavailable(self._failure.message)
                if self._closed:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise AuditUnavailable(f"the audit log {self.path} did not reach the disk within "
                                           f"{timeout} s (a stalled disk?)")
                self._cond.wait(remaining if remaining is not None else 1.0)

    def close(self) -> None:
        """Seal the log with a stop record, fsync it, and stop the writer thread. Idempotent.

        Raises AuditUnavailable if records could not be written (they are named in the daemon
        log); the log is closed either way.
        """
        with self._lock:
            if self._closing:
                already = True
            else:
                already, self._closing = False, True
                self._cond.notify_all()
        if already:
            self._thread.join()
            return
        self._thread.join()
        failure = self._failure
        if failure is not None and (self._unwritten or self._queue):
            raise AuditUnavailable(failure.message)

    @property
    def failed(self) -> AuditUnavailable | None:
        """The current failure (None while the log is writable)."""
        return self._failure

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"accepted": self._accepted, "durable": self._durable, "queued": len(self._queue),
                    "refused": self._refused, "lost": self._lost, "seq": self._chainer.seq,
                    "epoch": self._chainer.key.epoch}

    # -- the writer thread ---------------------------------------------------------------

    def _start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    self._wait_for_work()
                    batch, self._queue = self._queue, []
                    closing, self._flush_wanted = self._closing, False
                self._commit(batch, closing)
                if closing and (self._failure is None or self._gave_up_closing()):
                    break
        except BaseException as exc:  # a bug: fail closed rather than lose records quietly
            log.exception("the audit writer stopped on an internal error")
            with self._lock:
                self._failure = AuditUnavailable(f"the audit writer stopped on an internal error ({exc!r}); "
                                                 "remount to restart it")
                self._cond.notify_all()
        finally:
            self._shutdown()

    def _gave_up_closing(self) -> bool:
        """While closing, retry a failed log a few times, then report what is lost."""
        self._close_attempts += 1
        if self._close_attempts < 3:
            time.sleep(self.settings.commit_interval)
            return False
        pending = len(self._queue) + self._chained_unsynced
        log.error("closing the audit log %s: %d record(s) could not be written: %s", self.path, pending,
                  self._failure)
        return True

    def _wait_for_work(self) -> None:
        """Sleep until a commit is due. Called with the lock held."""
        while not self._closing:
            if self._flush_wanted or self._alert_note is not None or self._outage_note is not None:
                return
            now = self._hooks.mono()
            if self._failure is not None:  # retry slowly; nothing else can happen meanwhile
                due = [self._last_commit_ns + int(RETRY_INTERVAL * 1e9)]
            else:
                due = [self._next_seal_ns(), self._next_epoch_ns(), self._next_rotation_ns()]
                if self._queue:
                    due.append(self._last_commit_ns + int(self.settings.commit_interval * 1e9))
            deadlines = [d for d in due if d is not None]
            if deadlines and min(deadlines) <= now:
                return
            timeout = (min(deadlines) - now) / 1e9 if deadlines else None
            self._cond.wait(None if timeout is None else min(max(timeout, 0.001), 1.0))

    def _next_seal_ns(self) -> int | None:
        since = self._chainer.unsealed_since_ns
        return None if since is None else since + int(self.settings.checkpoint_interval * 1e9)

    def _next_epoch_ns(self) -> int | None:
        seconds = self.settings.epoch_seconds
        if seconds is None or self._retiring is not None:
            return None
        return self._epoch_started_ns + int(seconds * 1e9)

    def _next_rotation_ns(self) -> int | None:
        seconds = self.settings.rotate_seconds
        return None if seconds is None else self._file_opened_ns + int(seconds * 1e9)

    def _stamp(self) -> Stamp:
        return Stamp(utc_text(self._hooks.clock()), self._hooks.mono())

    def _commit(self, batch: list[dict[str, Any]], closing: bool) -> None:
        """Chain ``batch`` and make it durable; on an OSError keep everything for a retry."""
        self._last_commit_ns = self._hooks.mono()
        try:
            self._settle()  # what an earlier failed commit left
            self._check_file_identity()
            lines = self._chain(batch, closing)
            batch.clear()
            self._write(lines)
            self._sync()
            self._after_durable()
            self._maybe_rotate(closing)
        except OSError as exc:
            self._failed(exc, batch)
        else:
            self._recovered()
        with self._lock:
            self._commits += 1
            self._cond.notify_all()

    def _settle(self) -> None:
        if self._unwritten:
            self._write(b"")
        if self._needs_fsync:
            self._sync()
        self._after_durable()
        if self._rotating is not None:
            self._finish_rotation()

    def _chain(self, batch: list[dict[str, Any]], closing: bool) -> bytes:
        """The lines for ``batch`` and the seals due. Raises nothing once it has chained a
        record: the chain state and the returned bytes must stay in step."""
        now = self._hooks.mono()
        if self._epoch_due(now) and not closing and self._retiring is None:
            self._prepare_epoch()
        chainer, out = self._chainer, []
        if self._lost_reported < self._lost or self._outage_note or self._alert_note:
            out.append(chainer.add(self._outage_record()))
        for record in batch:
            out.append(chainer.add(record))
            self._chained_unsynced += 1
            if chainer.unsealed >= self.settings.checkpoint_records:
                out.append(self._checkpoint())
        seal_at = self._next_seal_ns()
        if seal_at is not None and now >= seal_at and not closing:
            out.append(self._checkpoint())
        if self._next_key is not None:
            out.append(self._endorse_next_key())
        if closing and not self._stop_chained:
            out.append(chainer.stop(self._stamp()))
            self._stop_chained = True
        return b"".join(out)

    def _checkpoint(self) -> bytes:
        self._epoch_checkpoints += 1
        return self._chainer.checkpoint(self._stamp())

    def _epoch_due(self, now: int) -> bool:
        at = self._next_epoch_ns()
        many = self.settings.epoch_checkpoints
        return (at is not None and now >= at) or (many is not None and self._epoch_checkpoints >= many)

    def _prepare_epoch(self, strict: bool = False) -> None:
        """A fresh key, saved as pending in the key store before the log may name it."""
        new = EpochKey(self._chainer.key.epoch + 1, self._hooks.keygen())
        self._store.pending = new.seal(self._store_key, self._store.anchor)
        try:
            self._store.save()
        except OSError as exc:  # the volume's disk, not the log's: try again next interval
            new.erase()
            self._store.pending = None
            if strict:
                raise
            self._epoch_started_ns = self._hooks.mono()
            log.error("cannot save the next audit key in %s (%s): the key change is postponed",
                      self._store.path, exc.strerror)
            return
        self._next_key = new

    def _endorse_next_key(self) -> bytes:
        """The epoch record: the current key signs the next; the old key is erased once the
        record is durable and the key store promoted (_after_durable)."""
        new, self._next_key = self._next_key, None
        assert new is not None
        old = self._chainer.key
        line = self._chainer.epoch(self._stamp(), new)
        self._retiring = old
        self._endorsed = {"chain": self._chainer.chain, "seq": self._chainer.seq - 1,
                          "hash": self._chainer.prev}
        self._epoch_started_ns, self._epoch_checkpoints = self._hooks.mono(), 0
        return line

    def _after_durable(self, strict: bool = False) -> None:
        """Runs once everything chained is on disk: promote the new key, erase the old one.

        A key store that cannot be saved is retried at the next commit (``strict``: raise):
        until then the store still holds the old key with the new one pending, which the
        next start resolves from the log (docs/audit-format.md §7).
        """
        try:
            self._promote_and_record_head()
        except OSError as exc:
            if strict:
                raise
            log.error("cannot update the audit key store %s (%s): retrying", self._store.path, exc.strerror)

    def _promote_and_record_head(self) -> None:
        if self._retiring is not None and not self._unwritten and not self._needs_fsync:
            assert self._endorsed is not None and self._store.pending is not None
            store = self._store
            store.current, store.pending = store.pending, None
            store.last_epoch = dict(self._endorsed)
            store.head = {**self._endorsed, "stopped": False}
            store.save()
            self._retiring.erase()
            self._retiring, self._endorsed = None, None
        if self._stop_chained and not self._head_saved and not self._unwritten and not self._needs_fsync:
            self._store.head = {"chain": self._chainer.chain, "seq": self._chainer.seq - 1,
                                "hash": self._chainer.prev, "stopped": True}
            self._store.save()
            self._head_saved = True

    # -- file I/O ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Append ``data`` after anything a failed write left; keeps what is not written."""
        pending = memoryview(self._unwritten + data)
        self._unwritten = b""
        try:
            while pending:
                written = os.write(self._fd, pending)
                self._outbox += pending[:written]
                pending = pending[written:]
                self._file_size += written
                self._needs_fsync = True
        finally:
            self._unwritten = bytes(pending)

    def _sync(self) -> None:
        if not self._needs_fsync:
            self._publish()
            return
        try:
            os.fsync(self._fd)
        except OSError:
            # After a failed fsync Linux may drop the dirty pages and report success next time
            # ("fsyncgate"): the log's durability is unknown until the next mount.
            self._fsync_broken = True
            raise
        self._needs_fsync = False
        with self._lock:
            self._durable += self._chained_unsynced
            self._chained_unsynced = 0
        self._publish()

    def _publish(self) -> None:
        """The one point where committed lines leave the writer: hand every whole line that is
        now on disk to the forwarder (which only queues them: it never blocks this thread)."""
        end = self._outbox.rfind(b"\n") + 1
        if not end:
            return
        data = bytes(self._outbox[:end])
        del self._outbox[:end]
        if self._forward is not None:
            try:
                self._forward(data, self._chainer.chain)
            except Exception:  # forwarding is best effort: never the local log's problem
                log.exception("forwarding audit records failed")

    def _check_file_identity(self) -> None:
        """Someone removed or renamed the active log: continue the chain in a new file."""
        try:
            on_path = os.stat(self.path)
            mine = os.fstat(self._fd)
            if (on_path.st_dev, on_path.st_ino) == (mine.st_dev, mine.st_ino):
                return
        except FileNotFoundError:
            on_path = None
        if on_path is not None:  # keep whatever was put there: it may be evidence
            os.rename(self.path, self.path.with_name(
                f"{self.path.name}.replaced-{self._hooks.clock().strftime('%Y%m%dT%H%M%S.%fZ')}"))
        log.error("the audit log %s was removed or replaced while in use: starting a new file; the "
                  "trail will show the gap", self.path)
        self._alert_note = (f"the active audit log {self.path} was removed or replaced by someone else "
                            "while the volume was mounted; records before this point are in that file")
        self._rotating = REPLACED
        self._write(self._chainer.rotate(self._stamp(), None))
        self._sync()
        self._finish_rotation()

    def _outage_record(self) -> dict[str, Any]:
        parts = [note for note in (self._alert_note, self._outage_note) if note]
        lost = self._lost - self._lost_reported
        if lost:
            parts.append(f"{lost} record(s) were lost because the log could not keep up (fail-open)")
        self._alert_note = self._outage_note = None
        self._lost_reported = self._lost
        stamp = self._stamp()
        return {"event": "security-alert", "outcome": "error", "alert": True, "errno": None,
                "detail": "; ".join(parts), "lost": lost, "time": stamp.time, "mono_ns": stamp.mono_ns}

    def _failed(self, exc: OSError, unchained: list[dict[str, Any]]) -> None:
        error = AuditUnavailable(_explain(exc, self.path, self.settings.fail_open))
        if self._fsync_broken:
            error = AuditUnavailable(
                f"fsync of the audit log {self.path} failed ({exc.strerror}): records may not be on disk. "
                "Check the disk (dmesg), then remount; file operations are refused until then")
        with self._lock:
            self._queue[:0] = unchained  # keep order: they go first next time
            first = self._failure is None
            self._failure = error
            if first:
                self._failure_since = utc_text(self._hooks.clock())
                self._refused = 0
        if first:
            buffering = self.settings.fail_open and not self._fsync_broken
            log.error("%s%s", error, "; records are kept in memory until it can be" if buffering else "")

    def _recovered(self) -> None:
        if self._failure is None or self._fsync_broken:
            return
        with self._lock:
            refused, since = self._refused, self._failure_since
            reason, self._failure = str(self._failure), None
        log.warning("the audit log %s is writable again", self.path)
        mode = ("fail-open: records were kept in memory and written late" if self.settings.fail_open
                else f"{refused} file operation(s) were refused (fail-closed)")
        self._outage_note = f"the audit log could not be written from {since}: {reason}; {mode}"
        with self._lock:
            self._cond.notify_all()

    def _maybe_rotate(self, closing: bool) -> None:
        if closing or self._rotating is not None:
            return
        big = self.settings.rotate_bytes is not None and self._file_size >= self.settings.rotate_bytes
        at = self._next_rotation_ns()
        if not big and not (at is not None and self._hooks.mono() >= at):
            return
        name = self._rotated_name()
        try:
            # A second name first: the active path never disappears, so a crash at any step
            # leaves a state the next start completes (docs/audit-format.md §6).
            os.link(self.path, self.path.with_name(name), follow_symlinks=False)
        except OSError as exc:
            log.warning("cannot rotate the audit log %s (%s): rotation is off until remount", self.path,
                        exc.strerror)
            self.settings = dataclasses.replace(self.settings, rotate_bytes=None, rotate_seconds=None)
            return
        self._rotating = name
        self._write(self._chainer.rotate(self._stamp(), name))
        self._sync()
        self._finish_rotation()

    def _rotated_name(self) -> str:
        base = f"{self.path.name}.{self._hooks.clock().strftime('%Y%m%dT%H%M%SZ')}"
        name, n = base, 1
        while self.path.with_name(name).exists():
            n += 1
            name = f"{base}-{n}"
        return name

    def _finish_rotation(self) -> None:
        """A new active file beginning with a link record, swapped in with one rename. The
        link line is made once, so a retry after a failure writes the same record."""
        assert self._rotating is not None
        if self._link_line is None:
            self._link_line = self._chainer.link(self._stamp(), self._rotating)
        fd, size = create_linked_file(self.path, self._link_line)
        self._outbox += self._link_line
        self._publish()
        self._rotating, self._link_line = None, None
        old = self._fd
        self._fd, self._file_size = fd, size
        self._file_opened_ns = self._hooks.mono()
        with contextlib.suppress(OSError):
            os.close(old)

    def _shutdown(self, close_lock: bool = True) -> None:
        with self._lock:
            self._closed = True
            self._cond.notify_all()
        for key in (self._retiring, self._next_key, self._chainer.key):
            if key is not None:
                key.erase()
        self._store_key = b""
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if close_lock:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)


def create_linked_file(path: Path, line: bytes) -> tuple[int, int]:
    """Write ``path``.new holding ``line`` (a link record), fsync, rename it over ``path``;
    return its fd and size."""
    tmp = path.with_name(path.name + ".new")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd, len(line)


# ---------------------------------------------------------------------------- opening


@dataclass
class _Tail:
    """What the active file tells a starting writer."""

    state: ChainState
    log_file: LogFile
    seals: dict[int, str]


def _inspect(path: Path) -> _Tail | None:
    """Verify the active file on its own (hashes, seq, signatures) and return where it ends."""
    try:
        file = read_log_file(path)
    except _Bad as bad:
        raise AuditUnavailable(f"cannot read the audit log {path}: {bad.problem.message}") from None
    if not file.lines:
        return None
    verifier = ChainVerifier(expected_anchor=None, trust_link_start=True)
    seals: dict[int, str] = {}
    try:
        for position, line in enumerate(file.lines):
            record = _decode(file, line)
            if position == 0:
                verifier.begin_file(file, record, line)
            verifier.feed(file, line, record)
            if "sig" in record:
                seals[record["seq"]] = record["hash"]
    except _Bad as bad:
        raise AuditUnavailable(
            f"the audit log {path} fails verification at {bad.problem}: it may have been tampered with. "
            f"Keep it as evidence, move it aside (mv {path} {path}.suspect) and mount again: a new log "
            "starts that continues the trail") from None
    assert verifier.state is not None
    return _Tail(verifier.state, file, seals)


def _lock_file(path: Path, what: str, hint: str = "") -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AuditUnavailable(f"{what} is in use by another encfs-pacs process (one writer per "
                               f"volume and per log){hint}") from None
    return fd


def _make_folder(folder: Path) -> None:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(mode=0o700)
        os.chmod(created, 0o700)  # mkdir honours the umask


def open_audit_log(path: Path, backing: Path, master_key: bytes, *, fail_open: bool = False,
                   rotate_bytes: int | None = DEFAULT_ROTATE_BYTES, rotate_seconds: float | None = None,
                   checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
                   checkpoint_records: int = DEFAULT_CHECKPOINT_RECORDS,
                   commit_interval: float = DEFAULT_COMMIT_INTERVAL,
                   epoch_seconds: float | None = DEFAULT_EPOCH_SECONDS,
                   epoch_checkpoints: int | None = None, max_pending: int = DEFAULT_MAX_PENDING,
                   forward: Forward | None = None, host: str | None = None,
                   _hooks: _Hooks | None = None) -> AuditLog:
    """Open (or create) the audit log of the volume at ``backing`` and start its writer.

    - ``path``: the active log file (created 0600, missing folders 0700). An existing log is
      verified and continued (same chain, next seq); a crash's torn last line is cut off and
      the crash is recorded. A missing log starts a new file (continuing the chain if a rotated
      file holds its end, or a new chain that names the previous one).
    - ``master_key`` opens the audit key store; only a key derived from it is kept.
    - ``fail_open``: keep serving when the log cannot be written (default: refuse).
    - ``rotate_bytes`` / ``rotate_seconds``: start a new file past this size / age (None: never).
    - ``checkpoint_interval`` / ``checkpoint_records``: seal at most this long after the first
      unsealed record / after this many records.
    - ``commit_interval``: fsync at most this long after a record is appended.
    - ``epoch_seconds`` / ``epoch_checkpoints``: a new signing key after this long / this many
      checkpoints (and at every open).
    - ``max_pending``: records queued before appends are refused (fail-open: lost, and counted).
    - ``forward(lines, chain)``: called on the writer thread with every line once it is durable
      (seals and control records included), e.g. ``SyslogForwarder.audit_lines``; it must not block.
    - ``host``: use this host's own key store and anchor in the volume (``--audit-host``: each
      of several mounts of one volume on shared storage signs its own trail); None: the
      volume-wide store, one writer per volume.

    Raises AuditUnavailable if the log or the key store cannot be used (the message says why).
    """
    settings = AuditSettings(fail_open, rotate_bytes, rotate_seconds, checkpoint_interval, checkpoint_records,
                             commit_interval, epoch_seconds, epoch_checkpoints, max_pending)
    hooks = _hooks or _Hooks()
    path = Path(os.path.abspath(path))
    backing = Path(os.path.abspath(backing))
    if not (backing / ".encfs-pacs").is_dir():
        raise AuditUnavailable(f"{backing} is not an encfs-pacs volume (no .encfs-pacs folder)")
    store_path = key_store_path(backing, host)
    if host is not None:
        _make_folder(store_path.parent)
    what = f"the audit trail of {backing}" + (f" for host {host}" if host else "")
    hint = (" (give each server that mounts this volume its own --audit-host NAME)" if host is None
            else " (is another server using the same --audit-host name?)")
    lock_fd = _lock_file(store_path.with_name("audit-key.lock"), what, hint)
    try:
        return _open(path, backing, master_key, settings, hooks, lock_fd, forward, host)
    except BaseException:
        os.close(lock_fd)
        raise


def _open(path: Path, backing: Path, master_key: bytes, settings: AuditSettings, hooks: _Hooks,
          lock_fd: int, forward: Forward | None = None, host: str | None = None) -> AuditLog:
    try:
        _make_folder(path.parent)
    except OSError as exc:
        raise AuditUnavailable(_explain(exc, path)) from None
    tail = _inspect(path) if path.exists() else None
    store = load_key_store(backing, host)
    anchor_created = False
    if store is None:
        if tail is not None:
            raise AuditUnavailable(
                f"the audit log {path} already holds a trail (anchor {tail.state.anchor.hex()[:16]}…), but "
                f"this volume has no audit key store ({key_store_path(backing, host)} is missing): "
                "if the log is another volume's, give this volume its own log; if it is this volume's, "
                "restore the key store from backup (never start a new anchor over an existing trail)")
        store = create_key_store(backing, master_key, hooks.keygen, host)
        anchor_created = True
        if host is None:
            log.warning("created the audit anchor of %s (the volume predates audit support)", backing)
        else:  # the first mount of this volume by this host: its anchor is for the auditors
            log.warning("created the audit anchor of %s for host %s: %s (print it again with: encfs-pacs "
                        "audit anchor %s --host %s)", backing, host, store.anchor.hex(), backing, host)
    store_key = audit_key_store_key(master_key)
    if tail is not None:
        _reconcile(store, tail, path)
    key = store.open_slot(store.current, master_key)
    try:
        return _start_writer(path, store, store_key, key, tail, anchor_created, settings, hooks, lock_fd,
                             forward)
    except OSError as exc:
        key.erase()
        raise AuditUnavailable(_explain(exc, path)) from None
    except BaseException:
        key.erase()
        raise


def _reconcile(store: KeyStore, tail: _Tail, path: Path) -> None:
    """The active file and the key store must describe the same trail at the same point."""
    state = tail.state
    if state.anchor != store.anchor:
        raise AuditUnavailable(f"the audit log {path} belongs to another volume (anchor "
                               f"{state.anchor.hex()[:16]}…): give this volume its own log")
    if store.pending is not None:
        # The last start crashed between writing the next key and promoting it (writer.py).
        if state.public.hex() == store.pending["public"] and state.epoch == store.pending["epoch"]:
            store.current, store.pending = store.pending, None
            endorsed = max(state.epoch_records) if state.epoch_records else None
            if endorsed is not None:
                store.last_epoch = {"chain": state.chain, "seq": endorsed,
                                    "hash": state.epoch_records[endorsed][0]}
                store.head = {**store.last_epoch, "stopped": False}
        else:
            store.pending = None
        store.save()
    if state.public != store.public or state.epoch != store.epoch:
        raise AuditUnavailable(
            f"the audit log {path} is signed up to key epoch {state.epoch}, but the volume's audit key is at "
            f"epoch {store.epoch}: the log was truncated, replaced by an older copy, or the key store was "
            "restored from an older backup. Keep the log as evidence, move it aside and mount again")
    head = store.head
    if head is not None and head.get("chain") == state.chain:
        last = state.seq - 1
        if last < head["seq"] or (head["seq"] >= state.first_seq
                                  and tail.seals.get(head["seq"]) != head["hash"]):
            raise AuditUnavailable(
                f"the audit log {path} ends at seq {last}, but it was sealed up to seq {head['seq']}: it was "
                "truncated or rewritten. Keep it as evidence, move it aside and mount again")
    elif head is not None:
        raise AuditUnavailable(f"the audit log {path} holds chain {state.chain}, but this volume's trail "
                               f"continues in chain {head.get('chain')}: use that log (or move this one "
                               "aside)")


def _start_writer(path: Path, store: KeyStore, store_key: bytes, key: EpochKey, tail: _Tail | None,
                  anchor_created: bool, settings: AuditSettings, hooks: _Hooks, lock_fd: int,
                  forward: Forward | None = None) -> AuditLog:
    stamp = lambda: Stamp(utc_text(hooks.clock()), hooks.mono())  # noqa: E731
    lines: list[bytes] = []
    on_disk = b""  # a link line written before the writer exists (forwarded with the rest)
    fd: int
    if tail is not None and tail.state.last_type == ROTATE:
        # A rotation was cut short by a crash: finish it, then resume in the new file.
        state = tail.state
        chainer = Chainer(chain=state.chain, anchor=store.anchor, key=key, seq=state.seq, prev=state.prev)
        rotated = _rotated_name_from(tail) or f"{path.name}.unnamed"
        if not path.with_name(rotated).exists():
            os.link(path, path.with_name(rotated), follow_symlinks=False)
        on_disk = chainer.link(stamp(), rotated)
        fd, _ = create_linked_file(path, on_disk)
        _flock_log(fd, path)
        lines.append(_resume(chainer, state, stamp(), torn=0))
    elif tail is not None:
        state = tail.state
        chainer = Chainer(chain=state.chain, anchor=store.anchor, key=key, seq=state.seq, prev=state.prev)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
        _flock_log(fd, path)
        torn = len(tail.log_file.torn)
        if torn:
            log.warning("the audit log %s ended with a torn record (%d bytes) from a crash: cut off",
                        path, torn)
            os.ftruncate(fd, os.fstat(fd).st_size - torn)
        lines.append(_resume(chainer, state, stamp(), torn=torn))
        if os.fstat(fd).st_nlink > 1:
            _drop_unsealed_rotation_name(path, fd)
    else:
        chainer = Chainer(chain=hooks.new_chain_id(), anchor=store.anchor, key=key)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        _flock_log(fd, path)
        if os.fstat(fd).st_size:
            os.ftruncate(fd, 0)  # only a torn first line was there (a crash at creation)
        os.fchmod(fd, 0o600)
        continues = store.last_epoch
        detail = None
        if anchor_created:
            detail = "audit anchor created now: this volume was made before audit support"
        elif continues is not None:
            detail = (f"a new log for this volume: the trail before it is in chain {continues['chain']} "
                      "(give its files to audit verify too)")
        lines.append(chainer.start(stamp(), continues, detail))
        fsync_dir(path.parent)
    writer = AuditLog(path, store, store_key, chainer, fd, settings, hooks, lock_fd, forward)
    writer._outbox += on_disk
    try:
        writer._prepare_epoch(strict=True)
        lines.append(writer._endorse_next_key())
        writer._write(b"".join(lines))
        writer._sync()
        writer._after_durable(strict=True)
    except BaseException:
        writer._shutdown(close_lock=False)  # the caller closes the volume lock
        raise
    writer._start()
    return writer


def _drop_unsealed_rotation_name(path: Path, fd: int) -> None:
    """A crash between the rotation's hard link and its seal left a second name for the active
    file; the rotation never happened, so that name goes (the content stays under ``path``)."""
    mine = os.fstat(fd)
    for entry in os.scandir(path.parent):
        if entry.name.startswith(path.name + ".") and entry.name != path.name:
            st = entry.stat(follow_symlinks=False)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                log.warning("removing %s: a second name of the active audit log left by an interrupted "
                            "rotation", entry.path)
                os.unlink(entry.path)


def _flock_log(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AuditUnavailable(f"the audit log {path} is in use by another encfs-pacs process") from None


def _rotated_name_from(tail: _Tail) -> str | None:
    last = _decode(tail.log_file, tail.log_file.lines[-1])
    name = last.get("audit", {}).get("file")
    return name if isinstance(name, str) and "/" not in name and name not in ("", ".", "..") else None


def _resume(chainer: Chainer, state: ChainState, stamp: Stamp, torn: int) -> bytes:
    clean = state.last_content_type == STOP
    detail = ("audit resumed after a clean stop" if clean else
              f"the previous run ended without a stop seal (crash, kill or power loss): its last "
              f"{state.unsealed} record(s) were not sealed and are sealed from here on"
              + (f"; a torn record of {torn} bytes was cut off" if torn else ""))
    return chainer.resume(stamp, clean=clean, unsealed=state.unsealed, torn_bytes=torn, detail=detail)
