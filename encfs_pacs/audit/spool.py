"""The audit spool: events of maintenance commands waiting for the mount's audit trail.

Only the running mount may write the volume's audit trail (it holds ``audit-key.lock``), and a
maintenance command run while nothing is mounted does not know which log file the next mount
uses. So ``passwd``, ``recovery-key``, ``init``, ``import``, ``export``, ``fsck`` … queue their
event in the volume itself, ``BACKING/.encfs-pacs/audit-spool/`` (0700), and the mount ingests
the spool into its trail: once at start, before serving, then about once a second, and a
last time at unmount (docs/audit-format.md §3.1).

- One file per event, ``<time_ns, 20 digits>-<id, 32 hex>.json``, written atomically
  (``durable.write_file_atomically``): names sort in time order, ``id`` is unique.
- Content: the canonical JSON of ``{"format", "id", "payload", "mac"}`` plus a newline.
  ``mac`` is HMAC-SHA256 under ``crypto.keys.audit_spool_key(master_key)`` over MAC_DOMAIN and
  the canonical JSON without ``mac``: a process that can write the folder but lacks the key
  cannot pass off an event as a maintenance command's. A command that never got the key (a
  wrong passphrase) queues ``"mac": null``.
- Ingesting an entry whose MAC verifies appends its payload plus a ``spool`` member (id, file
  name). An entry without a MAC, with a wrong MAC, or a file that is not an entry at all is
  recorded as a ``security-alert`` (the claim quoted under ``claimed``), never as the event;
  files that are not entries or fail the MAC are moved to ``audit-spool-rejected/`` as evidence.
- A spool file is deleted only after its record is durable (``AuditLog.flush``). A crash
  between the two would record the event twice; the next mount skips an authenticated entry
  whose id the active log already holds, so that is rare too (a rotation in between defeats it).

While a mount ingests it holds an exclusive ``flock`` on the spool folder, so a command can tell
(``ingester_running``) whether its event is about to be recorded or waits for the next mount.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import logging
import mmap
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..crypto.keys import audit_spool_key
from ..durable import fsync_dir, write_file_atomically
from ..errors import AuditUnavailable
from .canonical import NotCanonical, canonical, check_payload, parse_canonical
from .signing import META_DIR

log = logging.getLogger("encfs_pacs.audit.spool")

SPOOL_DIR = "audit-spool"
REJECTED_DIR = "audit-spool-rejected"
FORMAT = "encfs-pacs audit spool v1"
MAC_DOMAIN = b"encfs-pacs audit spool v1 mac\n"
MAX_ENTRY_BYTES = 64 * 1024  # a maintenance event is < 2 KiB; bigger is not ours
STALE_TMP_SECONDS = 60.0  # a NAME.tmp older than this was left by a command that died writing it
POLL_SECONDS = 1.0
PICKUP_SECONDS = 3.0  # how long a command waits for a running mount to record its event
FLUSH_SECONDS = 10.0
# Entries appended before each flush: a long queue (a migration's thousands of imports made
# while unmounted) goes to the log in steps instead of filling its queue at once.
INGEST_BATCH = 1000
_NAME = re.compile(r"^(?P<ns>\d{20})-(?P<id>[0-9a-f]{32})\.json$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_LOGGED_ID = re.compile(rb'"id":"([0-9a-f]{32})"')  # a spool entry's id in a log record
_MEMBERS = frozenset({"format", "id", "payload", "mac"})


def spool_path(backing: Path) -> Path:
    return backing / META_DIR / SPOOL_DIR


def rejected_path(backing: Path) -> Path:
    return backing / META_DIR / REJECTED_DIR


def _private_folder(folder: Path) -> None:
    """Create ``folder`` 0700 or check an existing one is a private folder of ours."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, f"{folder} is not a folder (a symlink?)")
    if info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"{folder} belongs to uid {info.st_uid}, not to us")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)  # mkdir honours the umask; others must not list pending events


def _mac(key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(key, MAC_DOMAIN + canonical(body), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------- queueing (commands)


@dataclass(frozen=True)
class Queued:
    path: Path
    entry_id: str


def queue_event(backing: Path, payload: dict[str, Any], master_key: bytes | None,
                now_ns: Callable[[], int] = time.time_ns) -> Queued:
    """Write one event to the spool of the volume at ``backing``; returns where.

    ``payload`` is a record payload (no envelope names such as ``time`` or ``seq``, no floats,
    never a secret). ``master_key`` None queues it unauthenticated (it is then recorded as an
    unverified claim). Raises OSError if the spool cannot be written, ValueError/TypeError for
    a payload the audit log would refuse.
    """
    record = check_payload(payload)
    folder = spool_path(backing)
    _private_folder(folder)
    entry_id = uuid.uuid4().hex
    body: dict[str, Any] = {"format": FORMAT, "id": entry_id, "payload": record}
    body["mac"] = None if master_key is None else _mac(audit_spool_key(master_key), body)
    path = folder / f"{now_ns():020d}-{entry_id}.json"
    write_file_atomically(path, canonical(body) + b"\n", 0o600)
    return Queued(path, entry_id)


def ingester_running(backing: Path) -> bool:
    """True if a mount of this volume is ingesting its spool now (it holds the folder's lock)."""
    try:
        fd = os.open(spool_path(backing), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        # A shared probe: a mount starting this instant waits a moment for it, never fails.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases the probe's lock
    return False


def wait_until_ingested(queued: Queued, timeout: float = PICKUP_SECONDS) -> bool:
    """True once the mount has recorded the entry (its file is gone) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while queued.path.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------------------- reading (the mount)


@dataclass
class Verdict:
    """What to do with one spool file: the record to append (or None), then "delete" it,
    "reject" it (move aside), or "wait" (a file still being written)."""

    record: dict[str, Any] | None
    action: str
    entry_id: str | None = None


# Events whose command never holds the volume key, so they cannot carry a MAC: recorded as
# themselves (marked unauthenticated), not as an alert — an admin's routine `allow add` must not
# read as an attack in the monthly review. What they claim is cross-checked by the mount's own
# record (a policy edit is followed by the mount's `policy-reload` with the new SHA-256).
UNSIGNED_EVENTS = frozenset({"policy-edit"})


def _reject(name: str, why: str, raw: bytes | None = None, size: int | None = None) -> Verdict:
    spool: dict[str, Any] = {"file": name, "authenticated": False, "problem": why}
    if raw is not None:
        spool["sha256"] = hashlib.sha256(raw).hexdigest()
    if size is not None:
        spool["size"] = size
    return Verdict({"event": "security-alert", "outcome": "error", "alert": True, "spool": spool,
                    "detail": f"audit spool file {name} rejected ({why}); moved to "
                              f"{META_DIR}/{REJECTED_DIR}/ — a maintenance event may be lost or "
                              "someone tried to inject one"}, "reject")


def _claim(entry: dict[str, Any], name: str, problem: str, action: str) -> Verdict:
    payload = entry["payload"]
    who = payload.get("who") if isinstance(payload.get("who"), dict) else {}
    claim = f"{payload.get('event')} by {who.get('user', who.get('uid', '?'))}"
    return Verdict({"event": "security-alert", "outcome": "error", "alert": True,
                    "spool": {"id": entry["id"], "file": name, "authenticated": False, "problem": problem},
                    "claimed": payload,
                    "detail": f"unverified maintenance event in the audit spool ({problem}): it claims "
                              f"{claim}; recorded as a claim, not as the event"}, action, entry["id"])


def examine(folder: Path, name: str, key: bytes, now: float | None = None) -> Verdict:
    """Classify one spool file (see the module docstring)."""
    path = folder / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return Verdict(None, "gone")
    if name.endswith(".tmp"):
        age = (time.time() if now is None else now) - info.st_mtime
        if age < STALE_TMP_SECONDS and stat.S_ISREG(info.st_mode):
            return Verdict(None, "wait")
        return _reject(name, "an unfinished spool file: the command writing it stopped (crash?)",
                       size=info.st_size)
    if not stat.S_ISREG(info.st_mode):
        return _reject(name, "not a regular file")
    match = _NAME.match(name)
    if match is None:
        return _reject(name, "not a spool file name", size=info.st_size)
    if info.st_size > MAX_ENTRY_BYTES:
        return _reject(name, f"{info.st_size} bytes, more than an event can be", size=info.st_size)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_ENTRY_BYTES + 1)
    except OSError as exc:
        return _reject(name, f"unreadable: {exc.strerror}", size=info.st_size)
    entry, problem = _parse(raw, match["id"])
    if entry is None:
        return _reject(name, problem, raw, len(raw))
    body = {k: v for k, v in entry.items() if k != "mac"}
    if entry["mac"] is None and entry["payload"].get("event") in UNSIGNED_EVENTS:
        record = dict(entry["payload"])
        record["spool"] = {"id": entry["id"], "file": name, "authenticated": False}
        return Verdict(record, "delete", entry["id"])
    if entry["mac"] is None:
        return _claim(entry, name, "no MAC: queued without the volume key (e.g. after a wrong "
                                   "passphrase), or injected", "delete")
    if not hmac.compare_digest(_mac(key, body), entry["mac"]):
        return _claim(entry, name, "its MAC does not verify: forged or altered", "reject")
    record = dict(entry["payload"])
    record["spool"] = {"id": entry["id"], "file": name, "authenticated": True}
    return Verdict(record, "delete", entry["id"])


def _parse(raw: bytes, name_id: str) -> tuple[dict[str, Any] | None, str]:
    if not raw.endswith(b"\n") or raw.count(b"\n") != 1:
        return None, "not one line of JSON (cut off?)"
    try:
        entry = parse_canonical(raw[:-1])
    except NotCanonical as exc:
        return None, f"not a spool entry: {exc}"
    if set(entry) != _MEMBERS or entry["format"] != FORMAT:
        return None, f"not a spool entry of format {FORMAT!r}"
    if entry["id"] != name_id:
        return None, "its id differs from its file name"
    payload, mac = entry["payload"], entry["mac"]
    if not isinstance(payload, dict) or not isinstance(payload.get("event"), str) or not payload["event"]:
        return None, "its payload has no event"
    if mac is not None and not (isinstance(mac, str) and _HEX64.match(mac)):
        return None, "its mac is not 64 hex digits"
    try:
        check_payload(payload)
    except (TypeError, ValueError) as exc:
        return None, f"its payload is not a valid record: {exc}"
    return entry, ""


# ---------------------------------------------------------------------------- the ingester


class Trail(Protocol):
    """What the ingester needs of the audit writer (``AuditLog``)."""

    def append(self, payload: dict[str, Any], *, droppable: bool = True) -> None: ...
    def flush(self, timeout: float | None = None) -> None: ...
    @property
    def failed(self) -> Any: ...


class SpoolIngester:
    """Moves spooled events into the trail of a running mount: ``start`` (one pass, before the
    mount serves; then a polling thread), ``stop`` (a last pass). Thread-safe."""

    def __init__(self, backing: Path, trail: Trail, master_key: bytes, log_path: Path | None = None,
                 poll_seconds: float = POLL_SECONDS, shared: bool = False) -> None:
        """``shared``: other mounts (other servers, --shared-storage) may ingest this spool too.
        Then only the mount that holds the folder's lock ingests, so every event lands in one
        trail once; the others try to take the lock at every poll and take over when that
        mount stops."""
        self.folder = spool_path(backing)
        self.rejected = rejected_path(backing)
        self._trail = trail
        self._key = audit_spool_key(master_key)
        self._log_path = log_path
        self._poll = poll_seconds
        self._recorded: set[str] = set()  # ids recorded (durable) by this or an earlier run
        self._appended: dict[str, Verdict] = {}  # file name -> appended, not yet known durable
        self._stuck: dict[str, Verdict] = {}  # recorded, but the file could not be removed
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._shared = shared

    def start(self) -> int:
        """Take the folder's lock, ingest what is waiting, start polling. Returns the count."""
        _private_folder(self.folder)
        self._lock_fd = _try_lock(self.folder) if self._shared else _hold_lock(self.folder)
        self._recorded |= self._ids_in_log()
        count = self.ingest() if self._may_ingest() else 0
        self._thread = threading.Thread(target=self._watch, name="audit-spool", daemon=True)
        self._thread.start()
        return count

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            if self._may_ingest():
                self.ingest()  # what was queued in the last second
        except Exception:  # the mount is ending: say so, never mask the unmount
            log.exception("audit spool: the last pass failed; waiting events stay for the next mount")
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _may_ingest(self) -> bool:
        """Always on a single mount; on shared storage only while holding the folder's lock."""
        if not self._shared:
            return True
        if self._lock_fd is None:
            self._lock_fd = _try_lock(self.folder)
        return self._lock_fd is not None

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                if self._may_ingest():
                    self.ingest()
            except Exception:  # keep polling: a transient error must not end ingestion for good
                log.exception("audit spool: a pass failed; retrying")

    def ingest(self) -> int:
        """One pass: append the waiting entries in name (time) order, a batch at a time; flush;
        then remove the files of the batch. Returns the number of files settled."""
        with self._mutex:
            try:
                names = sorted(os.listdir(self.folder))
            except FileNotFoundError:
                return 0
            settled = 0
            for start in range(0, max(len(names), 1), INGEST_BATCH):
                done, complete = self._ingest_batch(names[start:start + INGEST_BATCH])
                settled += done
                if not complete:
                    break
            return settled

    def _ingest_batch(self, names: list[str]) -> tuple[int, bool]:
        """Append, flush, settle ``names``: (files settled, whether all were). What the trail
        did not take, or did not make durable, stays queued for the next pass."""
        complete = True
        for name in names:
            if name in self._stuck:  # recorded already: only its removal is retried
                self._settle(name, self._stuck[name])
            elif name not in self._appended:
                try:
                    self._take(name)
                except AuditUnavailable as exc:  # full or failing: this and the rest wait
                    log.warning("audit spool: the trail takes no more events now (%s); the rest "
                                "stay queued", exc)
                    complete = False
                    break
        if not self._appended:
            return 0, complete
        try:
            self._trail.flush(FLUSH_SECONDS)
        except Exception as exc:  # AuditUnavailable: keep the files, try again next pass
            log.warning("audit spool: the trail is not durable (%s); %d event(s) stay queued",
                        exc, len(self._appended))
            return 0, False
        if self._trail.failed is not None:
            log.warning("audit spool: the trail cannot be written now; %d event(s) stay queued",
                        len(self._appended))
            return 0, False
        settled, self._appended = self._appended, {}
        for name, verdict in settled.items():
            self._settle(name, verdict)
        with contextlib.suppress(OSError):
            fsync_dir(self.folder)
        return len(settled), complete

    def _take(self, name: str) -> None:
        verdict = examine(self.folder, name, self._key)
        if verdict.action in ("wait", "gone"):
            return
        if verdict.record is not None and verdict.record.get("spool", {}).get("authenticated") \
                and verdict.entry_id in self._recorded:
            log.info("audit spool: %s is already in the trail (a crash before its file was removed)", name)
            verdict = Verdict(None, "delete", verdict.entry_id)
        if verdict.record is not None:
            # Never droppable: the file is removed once the record is durable, so a record the
            # log dropped (fail-open, queue full) would be an event lost with its file.
            try:
                self._trail.append(verdict.record, droppable=False)
            except (TypeError, ValueError) as exc:  # the writer refused it: record that instead
                verdict = _reject(name, f"the audit log refused its payload: {exc}")
                self._trail.append(verdict.record, droppable=False)  # type: ignore[arg-type]
        self._appended[name] = verdict

    def _settle(self, name: str, verdict: Verdict) -> None:
        path = self.folder / name
        try:
            if verdict.action == "reject":
                _private_folder(self.rejected)
                os.rename(path, _free_name(self.rejected, name))
                log.warning("audit spool: moved %s to %s (recorded as a security alert)", name, self.rejected)
            else:
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # recorded: retry the removal each pass, never record it again
            if name not in self._stuck:
                log.error("audit spool: cannot remove %s after recording it (%s); it is not recorded "
                          "again by this mount", path, exc)
            self._stuck[name] = verdict
            return
        self._stuck.pop(name, None)
        if verdict.entry_id is not None and verdict.record is not None \
                and verdict.record.get("spool", {}).get("authenticated"):
            self._recorded.add(verdict.entry_id)

    def _ids_in_log(self) -> set[str]:
        """Ids of waiting entries that the active log already holds: a crash came between
        their record and the removal of their file."""
        try:
            ids = {m["id"] for m in map(_NAME.match, os.listdir(self.folder)) if m}
        except FileNotFoundError:
            return set()
        if not ids or self._log_path is None:
            return set()
        try:
            with open(self._log_path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size == 0:
                    return set()
                with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    # One pass over the log, whatever the number waiting: a search per id
                    # took 18 ms each in a 64 MiB log, and thousands of queued events (a
                    # migration's imports while unmounted) would hold up the mount a minute.
                    found = (match.group(1).decode() for match in _LOGGED_ID.finditer(data))
                    return {entry_id for entry_id in found if entry_id in ids}
        except OSError:
            return set()


def _hold_lock(folder: Path, wait_seconds: float = 5.0) -> int | None:
    """Hold the folder's exclusive lock while ingesting (``ingester_running``). A command's
    probe holds it for microseconds; anything holding it longer only costs the hint."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                log.warning("audit spool: %s stays locked by another process; ingesting without the "
                            "lock (commands will say their event waits for the next mount)", folder)
                os.close(fd)
                return None
            time.sleep(0.01)


def _try_lock(folder: Path) -> int | None:
    """The folder's exclusive lock if free now (shared storage: the ingesting mount), else None."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _free_name(folder: Path, name: str) -> Path:
    candidate, n = folder / name, 0
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = folder / f"{name}.{n}"
    return candidate
