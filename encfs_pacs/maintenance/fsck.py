"""Integrity scan: authenticate every chunk of every file, find leftovers. Read-only.

Damage (the volume is not clean; exit code 26): a file whose header is not ours, whose
length no valid file can have, that was cut at a chunk boundary, or any chunk of which
fails authentication (each such chunk is named, with the plaintext bytes it held), and
files that cannot be read at all.

Leftovers (reported, but the data is intact): staging files of an interrupted import,
``volume.json.tmp`` of an interrupted passwd, files in ``.encfs-pacs/orphans`` and
``.fuse_hidden*`` files (deleted while open; normal while the volume is mounted),
unknown names in ``.encfs-pacs``, device nodes. fsck never deletes them: the command that
owns each one does (the next import, the next mount), or the admin after reading the report.

Nothing is written: files are opened read-only (without updating access times where the
kernel allows), and the maintenance lock is taken shared only if its file already exists.
The one exception is asked for explicitly: :func:`quarantine` (``fsck --quarantine DIR``)
moves each damaged file's ciphertext out of the volume into DIR, with a report of the chunks
it lost, so the PACS sees a missing file instead of read errors.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audit.signing import HOSTS_DIR, KEY_STORE_FILE
from ..audit.spool import REJECTED_DIR, SPOOL_DIR
from ..errors import UsageError
from ..store import CONFIG_FILE, FUSE_HIDDEN_PREFIX, META_DIR, ORPHANS_DIR, Volume
from . import codec
from .exporter import count_volume
from .importer import STAGING_DIR
from .locking import LOCK_FILE, maintenance_lock
from .progress import NoProgress, Progress
from .tree import describe, open_source, walk


@dataclass
class Finding:
    path: str
    kind: str
    detail: str
    bad_chunks: list[int] = field(default_factory=list)
    lost_bytes: list[tuple[int, int]] = field(default_factory=list)  # plaintext [start, end)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind, "detail": self.detail}
        if self.bad_chunks:
            out["bad_chunks"] = self.bad_chunks
            out["lost_bytes"] = [list(r) for r in self.lost_bytes]
        return out


@dataclass
class FsckResult:
    backing: str
    key_id: str
    files_checked: int = 0
    bytes_checked: int = 0
    chunks_checked: int = 0
    damaged: list[Finding] = field(default_factory=list)
    leftovers: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.damaged

    def as_dict(self) -> dict[str, Any]:
        return {"clean": self.clean, "backing": self.backing, "key_id": self.key_id,
                "files_checked": self.files_checked, "bytes_checked": self.bytes_checked,
                "chunks_checked": self.chunks_checked,
                "damaged": [f.as_dict() for f in self.damaged],
                "leftovers": [f.as_dict() for f in self.leftovers], "seconds": round(self.seconds, 3)}


_META_EXPLAINED = {
    CONFIG_FILE + ".tmp": "left by an interrupted config change (init or passwd); volume.json is the "
                          "config in force",
}


AUDIT_LOCK_FILE = "audit-key.lock"  # held by a mount writing the audit trail (audit/writer.py)
_SPOOL_EXPLAINED = {
    SPOOL_DIR: "an audit event of a maintenance command, waiting for the next mount to record it",
    REJECTED_DIR: "a file the mount refused from the audit spool (recorded as a security alert); "
                  "keep it as evidence, then delete it",
}


class Checker:
    def __init__(self, volume: Volume, progress: Progress | None = None) -> None:
        self.volume = volume
        self.progress = progress or NoProgress()
        self.result = FsckResult(str(volume.backing), volume.config.key_id.hex())

    def run(self, count_first: bool = True, locked: bool = False) -> FsckResult:
        """``locked``: the caller already holds the maintenance lock."""
        started = time.monotonic()
        lock = contextlib.nullcontext() if locked else maintenance_lock(
            self.volume.backing, exclusive=False, what="fsck")
        with lock:
            if count_first:
                self.progress.start(*count_volume(self.volume))
            try:
                self._metadata()
                for entry in walk(self.volume.backing, self._unreadable, lambda rel: rel == META_DIR):
                    name = entry.rel.rsplit("/", 1)[-1]
                    if name.startswith(FUSE_HIDDEN_PREFIX):
                        self._leftover(entry.rel, "deleted while open (normal while the volume is "
                                                  "mounted and the file is in use; a leftover otherwise)")
                    elif entry.kind == "file":
                        self._file(entry.rel, entry.st.st_size)
                    elif entry.kind == "device":
                        self._leftover(entry.rel, "a device node: volumes hold none, so it was put into "
                                                  "the backing folder directly")
            finally:
                self.progress.finish()
        self.result.seconds = time.monotonic() - started
        return self.result

    def _leftover(self, path: str, detail: str, kind: str = "leftover") -> None:
        self.result.leftovers.append(Finding(path, kind, detail))

    def _unreadable(self, rel: str, exc: OSError) -> None:
        self.result.damaged.append(Finding(rel, "unreadable", f"cannot be listed: {describe(exc)}"))

    def _metadata(self) -> None:
        meta = self.volume.backing / META_DIR
        for entry in sorted(os.listdir(meta)):
            rel = f"{META_DIR}/{entry}"
            # HOSTS_DIR: the key stores of the servers sharing the volume (--audit-host)
            if entry in (CONFIG_FILE, LOCK_FILE, KEY_STORE_FILE, AUDIT_LOCK_FILE, HOSTS_DIR):
                continue
            if entry in _META_EXPLAINED:
                self._leftover(rel, _META_EXPLAINED[entry])
            elif entry == ORPHANS_DIR and (meta / entry).is_dir():
                for name in sorted(os.listdir(meta / entry)):
                    self._leftover(f"{rel}/{name}", "a deleted file that was still open when a mount "
                                                    "ended; the next mount deletes it")
            elif entry in _SPOOL_EXPLAINED and (meta / entry).is_dir():
                for name in sorted(os.listdir(meta / entry)):
                    self._leftover(f"{rel}/{name}", _SPOOL_EXPLAINED[entry])
            elif entry == STAGING_DIR and (meta / entry).is_dir():
                for name in sorted(os.listdir(meta / entry)):
                    self._leftover(f"{rel}/{name}", "a half-written copy from an interrupted import; "
                                                    "the next import deletes it")
            else:
                self._leftover(rel, "not a file encfs-pacs makes", kind="unknown")

    def _file(self, rel: str, stored_size: int) -> None:
        plain = self.volume.layout.plaintext_size_lenient(stored_size)
        ticked = 0

        def tick(n: int) -> None:
            nonlocal ticked
            ticked += n
            self.progress.advance(nbytes=n)

        try:
            fd = open_source(self.volume.backing / rel)
        except OSError as exc:
            self.result.damaged.append(Finding(rel, "unreadable", f"cannot be opened: {describe(exc)}"))
        else:
            try:
                report = codec.check(self.volume, fd, tick)
            except OSError as exc:
                report = None
                self.result.damaged.append(Finding(rel, "unreadable", f"read failed: {describe(exc)}"))
            finally:
                os.close(fd)
            if report is not None:
                self._judge(rel, report)
        self.result.files_checked += 1
        self.progress.advance(files=1, nbytes=max(0, plain - ticked))

    def _judge(self, rel: str, report: codec.Report) -> None:
        self.result.chunks_checked += report.chunk_count
        self.result.bytes_checked += report.plain_size
        if report.ok:
            return
        cs = self.volume.layout.chunk_size
        lost = [(i * cs, min((i + 1) * cs, report.plain_size)) for i in report.bad_chunks]
        cut = (f"the file ends after chunk {report.cut_after}, which is not its final chunk: "
               "it was cut, later chunks are missing") if report.cut_after is not None else None
        if report.header_problem:
            kind, detail = "malformed-header", report.header_problem + ": no byte of it can be read"
        elif report.length_problem:
            kind, detail = "impossible-length", report.length_problem + (f"; {cut}" if cut else "")
        elif cut:
            kind, detail = "truncated", cut
        else:
            kind, detail = "authentication", (
                f"{len(report.bad_chunks)} of {report.chunk_count} chunk(s) fail authentication "
                "(altered, or moved from another position or file)")
        self.result.damaged.append(Finding(rel, kind, detail, report.bad_chunks, lost))


def fsck(volume: Volume, progress: Progress | None = None, count_first: bool = True) -> FsckResult:
    """Check every file of ``volume``; never modifies it."""
    return Checker(volume, progress).run(count_first=count_first)


QUARANTINE_REPORT = "quarantine-report.jsonl"
_MOVABLE = frozenset({"authentication", "truncated", "impossible-length", "malformed-header"})


def fsck_and_quarantine(volume: Volume, dest: Path, progress: Progress | None = None
                        ) -> tuple[FsckResult, list[str]]:
    """fsck, then move every damaged file out of the volume into ``dest`` (see quarantine)."""
    check_quarantine_dir(volume, dest)
    with maintenance_lock(volume.backing, exclusive=True, what="fsck --quarantine"):
        result = Checker(volume, progress).run(locked=True)
        return result, quarantine(volume, result, dest)


def check_quarantine_dir(volume: Volume, dest: Path) -> None:
    backing, target = os.path.realpath(volume.backing), os.path.realpath(dest)
    if target == backing or target.startswith(backing.rstrip("/") + "/"):
        raise UsageError(f"the quarantine folder {dest} must be outside the volume")
    if not dest.parent.is_dir():
        raise UsageError(f"cannot create {dest}: its parent folder does not exist")


def quarantine(volume: Volume, result: FsckResult, dest: Path) -> list[str]:
    """Move damaged files (their ciphertext, as found) to ``dest``/<same path>, and append a
    JSON line per file to ``dest``/quarantine-report.jsonl: what failed and which plaintext
    byte ranges are lost. The ciphertext is kept, not deleted: a backup of the same file, or
    a later tool, may still recover the chunks that authenticate."""
    dest.mkdir(mode=0o700, exist_ok=True)
    moved = []
    with open(dest / QUARANTINE_REPORT, "a", encoding="utf-8") as report:
        for finding in result.damaged:
            if finding.kind not in _MOVABLE:
                continue
            target = _free_name(dest / finding.path)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            source = volume.backing / finding.path
            try:
                os.rename(source, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:  # another file system: copy, sync, then delete
                    raise
                shutil.copy2(source, target)
                with open(target, "rb") as copied:
                    os.fsync(copied.fileno())
                os.unlink(source)
            report.write(json.dumps({**finding.as_dict(), "moved_to": str(target), "key_id": result.key_id,
                                     "chunk_size": volume.layout.chunk_size}) + "\n")
            report.flush()
            os.fsync(report.fileno())
            moved.append(finding.path)
    return moved


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while os.path.lexists(candidate):
        candidate = path.with_name(f"{path.name}.{n}")
        n += 1
    return candidate

