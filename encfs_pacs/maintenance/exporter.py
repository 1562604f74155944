"""Decrypt a whole volume into a plain folder: the exit strategy (or a migration).

Mirror image of the import, with the same crash safety: each file is decrypted into
DEST/.encfs-pacs-export-staging/, given the stored owner, mode and times, fsynced, read back
and compared (SHA-256) with what was decrypted, and renamed into place. A file that
fails authentication is not written at all (the failure names the chunk); everything else
is. ``--resume`` skips files already exported (same size and modification time).
The volume is only read: export works on a read-only backup copy of a volume.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import stat
import time
from pathlib import Path

from ..errors import DestinationNotEmpty, IntegrityError, UsageError
from ..store import FUSE_HIDDEN_PREFIX, META_DIR, Volume
from . import codec
from .locking import maintenance_lock
from .progress import NoProgress, Progress
from .tree import (
    FATAL_ERRNOS,
    DirSyncer,
    Entry,
    Failure,
    Summary,
    apply_to_fd,
    apply_to_path,
    create_exclusive,
    describe,
    drop_cache,
    open_source,
    preserve_owners,
    walk,
)

STAGING_DIR = ".encfs-pacs-export-staging"


class VerifyFailed(Exception):
    """The written plaintext did not read back as what was decrypted."""


def _skip_in_volume(rel: str) -> bool:
    return rel == META_DIR


def count_volume(volume: Volume) -> tuple[int, int]:
    files = nbytes = 0
    for entry in walk(volume.backing, lambda rel, exc: None, _skip_in_volume):
        if entry.kind == "file":
            files += 1
            nbytes += volume.layout.plaintext_size_lenient(entry.st.st_size)
    return files, nbytes


class Exporter:
    def __init__(self, volume: Volume, dest: Path, *, resume: bool = False,
                 progress: Progress | None = None) -> None:
        self.volume = volume
        self.dest = dest
        self.resume = resume
        self.progress = progress or NoProgress()
        self.summary = Summary()
        self.owners = preserve_owners()
        self.staging = dest / STAGING_DIR
        self._names = itertools.count()
        self._links: dict[tuple[int, int], Path] = {}
        self._dirs: list[Entry] = []
        self._ticked = 0
        self._dirsync = DirSyncer()

    def run(self, count_first: bool = True) -> Summary:
        self._prepare_dest()
        started = time.monotonic()
        with maintenance_lock(self.volume.backing, exclusive=False, what="export"):
            if count_first:
                self.progress.start(*count_volume(self.volume))
            try:
                for entry in walk(self.volume.backing, self._walk_error, _skip_in_volume):
                    self._one(entry)
                    if self.summary.stopped:
                        break
                self._dirsync.sync()
                self._finish_directories()
            finally:
                self.progress.finish()
                with contextlib.suppress(OSError):
                    self.staging.rmdir()
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _prepare_dest(self) -> None:
        backing, dest = os.path.realpath(self.volume.backing), os.path.realpath(self.dest)
        if dest == backing or dest.startswith(backing.rstrip("/") + "/"):
            raise UsageError(f"{self.dest} is inside the volume {self.volume.backing}: "
                             "export to another folder")
        if self.dest.exists() and not self.dest.is_dir():
            raise UsageError(f"{self.dest} exists and is not a folder")
        if not self.dest.exists():
            if not self.dest.parent.is_dir():
                raise UsageError(f"cannot create {self.dest}: its parent folder does not exist")
            self.dest.mkdir(mode=0o700)
        elif any(self.dest.iterdir()) and not self.resume:
            raise DestinationNotEmpty(
                f"{self.dest} is not empty: export into an empty folder, or give --resume to "
                "continue an interrupted export into it (files already there are kept)")
        self.staging.mkdir(mode=0o700, exist_ok=True)
        for leftover in self.staging.iterdir():
            leftover.unlink()
            self.summary.leftovers_removed += 1

    def _walk_error(self, rel: str, exc: OSError) -> None:
        self.summary.failed.append(Failure(rel, f"cannot read: {describe(exc)}"))

    def _one(self, entry: Entry) -> None:
        name = entry.rel.rsplit("/", 1)[-1]
        if name.startswith(FUSE_HIDDEN_PREFIX):
            self.summary.not_copied.append(
                Failure(entry.rel, "a deleted file still open through a mount (not part of the tree)"))
            return
        if entry.rel == STAGING_DIR:
            self.summary.failed.append(Failure(entry.rel, "this name is used by export itself"))
            return
        handler = {"directory": self._directory, "file": self._file, "symlink": self._symlink,
                   "fifo": self._fifo}.get(entry.kind)
        if handler is None:
            self.summary.not_copied.append(Failure(entry.rel, f"a {entry.kind} is not exported"))
            return
        self._ticked = 0
        try:
            handler(entry)
        except (OSError, IntegrityError, VerifyFailed) as exc:
            self.summary.failed.append(Failure(entry.rel or ".", describe(exc)))
            if isinstance(exc, OSError) and exc.errno in FATAL_ERRNOS:
                self.summary.stopped = (f"stopped at {entry.rel}: {describe(exc)}; "
                                        "fix it and rerun with --resume")
        if entry.kind == "file":
            size = self.volume.layout.plaintext_size_lenient(entry.st.st_size)
            self.progress.advance(files=1, nbytes=max(0, size - self._ticked))

    def _target(self, entry: Entry) -> Path:
        return self.dest / entry.rel if entry.rel else self.dest

    def _directory(self, entry: Entry) -> None:
        if not entry.rel:
            return  # DEST keeps its own mode: the volume root is 0700 by design, not by the data
        target = self._target(entry)
        if not target.is_dir() or target.is_symlink():
            os.mkdir(target, 0o700)
        self._dirs.append(entry)

    def _finish_directories(self) -> None:
        for entry in reversed(self._dirs):
            try:
                apply_to_path(self._target(entry), entry.st, self.owners)
                self.summary.directories += 1
            except OSError as exc:
                self.summary.failed.append(Failure(entry.rel, describe(exc)))

    def _symlink(self, entry: Entry) -> None:
        target = self._target(entry)
        link_target = os.readlink(self.volume.backing / entry.rel)
        if os.path.lexists(target):
            if target.is_symlink() and os.readlink(target) == link_target:
                self.summary.symlinks += 1
                return
            target.unlink()
        os.symlink(link_target, target)
        apply_to_path(target, entry.st, self.owners)
        self.summary.symlinks += 1

    def _fifo(self, entry: Entry) -> None:
        target = self._target(entry)
        if not os.path.lexists(target):
            os.mkfifo(target, 0o600)
            apply_to_path(target, entry.st, self.owners)

    def _file(self, entry: Entry) -> None:
        target = self._target(entry)
        size = self.volume.layout.plaintext_size_lenient(entry.st.st_size)
        with contextlib.suppress(FileNotFoundError):
            existing = os.lstat(target)
            if (stat.S_ISREG(existing.st_mode) and existing.st_size == size
                    and existing.st_mtime_ns == entry.st.st_mtime_ns):
                self.summary.skipped_files += 1
                self.summary.skipped_bytes += size
                self._links.setdefault((entry.st.st_dev, entry.st.st_ino), target)
                return
        first = self._links.get((entry.st.st_dev, entry.st.st_ino)) if entry.st.st_nlink > 1 else None
        if first is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            os.link(first, target)
            self.summary.hard_links += 1
            return
        self._copy(entry, target)
        if entry.st.st_nlink > 1:
            self._links.setdefault((entry.st.st_dev, entry.st.st_ino), target)

    def _copy(self, entry: Entry, target: Path) -> None:
        staged = self.staging / f"{os.getpid()}-{next(self._names)}.part"
        src = open_source(self.volume.backing / entry.rel)
        try:
            dst = create_exclusive(staged)
            try:
                digest, size = hashlib.sha256(), 0
                for block in codec.open_chunks(self.volume, src, self._tick):
                    codec.write_all(dst, block)
                    digest.update(block)
                    size += len(block)
                apply_to_fd(dst, entry.st, self.owners)
                self._verify(dst, size, digest.hexdigest())
            finally:
                os.close(dst)
            os.rename(staged, target)
        except BaseException:
            with contextlib.suppress(OSError):
                staged.unlink()
            raise
        finally:
            os.close(src)
        self._dirsync.changed(target.parent)
        self.summary.files_done += 1
        self.summary.bytes_done += size

    def _tick(self, n: int) -> None:
        self._ticked += n
        self.progress.advance(nbytes=n)

    @staticmethod
    def _verify(fd: int, size: int, digest: str) -> None:
        os.fsync(fd)
        drop_cache(fd)
        check, read = hashlib.sha256(), 0
        offset = 0
        while block := os.pread(fd, 4 << 20, offset):
            check.update(block)
            read += len(block)
            offset += len(block)
        if (read, check.hexdigest()) != (size, digest):
            raise VerifyFailed("the exported file does not read back as written")


def export_volume(volume: Volume, dest: Path, *, resume: bool = False, progress: Progress | None = None,
                  count_first: bool = True) -> Summary:
    """Decrypt every file of ``volume`` into ``dest`` (see the module docstring)."""
    return Exporter(volume, dest, resume=resume, progress=progress).run(count_first=count_first)
