"""Encrypt an existing plaintext folder (a PACS storage tree) into a volume.

Crash safety comes from the order of steps for each file::

    encrypt into .encfs-pacs/import-staging/<n>.part   (invisible through the mount)
    owner, mode, times of the source on the staged file; fsync
    drop it from the page cache, decrypt it again and compare SHA-256 with the source
    rename into place                                  (the file appears whole, or not at all)
    fsync the folder (once per folder: tree.DirSyncer; always before deleting a source)
    only then, with --remove-source: unlink the source if it is still the version imported

So a file present under its name in the volume is complete, verified, and carries the
source's size and modification time. A rerun therefore skips every file whose copy has the
same size and mtime (rsync's quick check), deletes the staging leftovers of the interrupted
run, and carries on. No journal is needed: the volume itself is the record of what is done.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import stat
import time
from pathlib import Path

from ..errors import IntegrityError, UsageError
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
    count,
    create_exclusive,
    describe,
    drop_cache,
    open_source,
    preserve_owners,
    same_version,
    walk,
)

STAGING_DIR = "import-staging"


class SourceChanged(Exception):
    """The source file changed while it was read: probably still being written."""


class VerifyFailed(Exception):
    """The encrypted copy did not decrypt to the bytes that were read."""


def staging_dir(volume: Volume) -> Path:
    return volume.backing / META_DIR / STAGING_DIR


def check_paths(source: Path, volume: Volume) -> None:
    if not source.is_dir():
        raise UsageError(f"{source} is not a folder: import copies a folder tree into the volume")
    src, backing = os.path.realpath(source), os.path.realpath(volume.backing)
    for inner, outer in ((backing, src), (src, backing)):
        if inner == outer or inner.startswith(outer.rstrip("/") + "/"):
            raise UsageError(f"{source} and the volume {volume.backing} overlap: import from a "
                             "folder outside the volume into a volume outside the folder")


class Importer:
    def __init__(self, source: Path, volume: Volume, *, remove_source: bool = False,
                 replace_changed: bool = False, progress: Progress | None = None) -> None:
        self.source = source
        self.volume = volume
        self.remove_source = remove_source
        self.replace_changed = replace_changed
        self.progress = progress or NoProgress()
        self.summary = Summary()
        self.owners = preserve_owners()
        self.staging = staging_dir(volume)
        self._names = itertools.count()
        self._links: dict[tuple[int, int], str] = {}  # source inode -> volume path of its copy
        self._dirs: list[Entry] = []
        self._ticked = 0  # plaintext bytes of the current file already shown as progress
        self._dirsync = DirSyncer()

    # -- the run -----------------------------------------------------------------------------

    def run(self, count_first: bool = True) -> Summary:
        check_paths(self.source, self.volume)
        started = time.monotonic()
        with maintenance_lock(self.volume.backing, exclusive=True, what="import"):
            self._clear_staging()
            if count_first:
                self.progress.start(*count(self.source))
            try:
                for entry in walk(self.source, self._walk_error, self._skip_reserved):
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

    def _clear_staging(self) -> None:
        """Half-written copies of an interrupted run: never visible, now deleted."""
        self.staging.mkdir(mode=0o700, exist_ok=True)
        for leftover in self.staging.iterdir():
            leftover.unlink()
            self.summary.leftovers_removed += 1

    def _walk_error(self, rel: str, exc: OSError) -> None:
        self.summary.failed.append(Failure(rel, f"cannot read: {describe(exc)}"))

    def _skip_reserved(self, rel: str) -> bool:
        """Reserved names fail once, and the walk does not descend into them."""
        reserved = self._reserved(rel)
        if reserved:
            self.summary.failed.append(Failure(rel, reserved))
        return reserved is not None

    def _one(self, entry: Entry) -> None:
        try:
            handler = {"directory": self._directory, "file": self._file, "symlink": self._symlink,
                       "fifo": self._fifo}.get(entry.kind)
            if handler is None:
                self.summary.not_copied.append(
                    Failure(entry.rel, f"a {entry.kind} is not copied (a volume holds no device "
                                       "nodes, and a socket belongs to a running program)"))
                return
            self._ticked = 0
            handler(entry)
        except (OSError, IntegrityError, SourceChanged, VerifyFailed) as exc:
            self._failed(entry, exc)
        if entry.kind == "file":  # done, skipped or failed: the bar moves past it either way
            self.progress.advance(files=1, nbytes=max(0, entry.st.st_size - self._ticked))

    def _failed(self, entry: Entry, exc: BaseException) -> None:
        self.summary.failed.append(Failure(entry.rel or ".", describe(exc)))
        if isinstance(exc, OSError) and exc.errno in FATAL_ERRNOS:
            self.summary.stopped = (f"stopped at {entry.rel}: {describe(exc)}; free space or fix the "
                                    "cause, then run the same import again to resume")

    @staticmethod
    def _reserved(rel: str) -> str | None:
        if rel.split("/", 1)[0] == META_DIR:
            return f"the name {META_DIR} is reserved at the top of a volume; rename it and import again"
        if rel.rsplit("/", 1)[-1].startswith(FUSE_HIDDEN_PREFIX):
            return f"names starting with {FUSE_HIDDEN_PREFIX} are reserved by FUSE and would be hidden"
        return None

    # -- entries -----------------------------------------------------------------------------

    def _directory(self, entry: Entry) -> None:
        if not entry.rel:
            return  # the volume's root keeps its own mode (0700) and owner
        target = self.volume.backing_path(entry.mount_path)
        try:
            existing = os.lstat(target)
        except FileNotFoundError:
            # 0700 while we fill it; its own mode comes last (a 0555 folder would refuse files)
            self.volume.mkdir(entry.mount_path, 0o700)
            self._dirsync.changed(os.path.dirname(target))
        else:
            if not stat.S_ISDIR(existing.st_mode):
                raise FileExistsError(errno.EEXIST, "exists in the volume and is not a folder")
            if not os.access(target, os.W_OK | os.X_OK):
                os.chmod(target, stat.S_IMODE(existing.st_mode) | stat.S_IRWXU)
        self._dirs.append(entry)

    def _finish_directories(self) -> None:
        """Folder metadata last, deepest first: adding files changed their times."""
        for entry in reversed(self._dirs):
            try:
                apply_to_path(self.volume.backing_path(entry.mount_path), entry.st, self.owners)
                self._count_owner(entry)
                self.summary.directories += 1
            except OSError as exc:
                self._failed(entry, exc)
            if self.remove_source:
                with contextlib.suppress(OSError):  # only folders the import emptied
                    os.rmdir(self.source / entry.rel)

    def _symlink(self, entry: Entry) -> None:
        link_target = os.readlink(self.source / entry.rel)
        path = self.volume.backing_path(entry.mount_path)
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            self.volume.symlink(entry.mount_path, link_target)
            apply_to_path(path, entry.st, self.owners)
            self._dirsync.changed(os.path.dirname(path))
            self._count_owner(entry)
        else:
            if not stat.S_ISLNK(existing.st_mode) or os.readlink(path) != link_target:
                raise FileExistsError(errno.EEXIST, "exists in the volume with other content")
        self.summary.symlinks += 1
        if self.remove_source:
            self._remove_source(entry)

    def _fifo(self, entry: Entry) -> None:
        path = self.volume.backing_path(entry.mount_path)
        if not os.path.lexists(path):
            self.volume.mknod(entry.mount_path, stat.S_IFIFO | 0o600, 0)
            apply_to_path(path, entry.st, self.owners)

    def _file(self, entry: Entry) -> None:
        target = self.volume.backing_path(entry.mount_path)
        try:
            existing: os.stat_result | None = os.lstat(target)
        except FileNotFoundError:
            existing = None
        if existing is not None and self._already_done(entry, existing, target):
            return
        inode = (entry.st.st_dev, entry.st.st_ino)
        first = self._links.get(inode) if entry.st.st_nlink > 1 else None
        if first is not None and existing is None:
            self.volume.link(entry.mount_path, first)
            self._dirsync.changed(os.path.dirname(target))
            self.summary.hard_links += 1
            if self.remove_source:
                self._remove_source(entry)
            return
        self._copy(entry, target)
        if entry.st.st_nlink > 1:
            self._links.setdefault(inode, entry.mount_path)

    def _already_done(self, entry: Entry, existing: os.stat_result, target: str) -> bool:
        """True if the copy in the volume is this version of the source (then skipped)."""
        if not stat.S_ISREG(existing.st_mode):
            raise FileExistsError(errno.EEXIST, "exists in the volume and is not a file")
        try:
            size = self.volume.layout.plaintext_size(existing.st_size)
        except IntegrityError:
            size = -1  # a damaged copy is never "done"
        if size == entry.st.st_size and existing.st_mtime_ns == entry.st.st_mtime_ns:
            if self.remove_source:
                self._verify_existing(entry, target)
                self._remove_source(entry)
            self.summary.skipped_files += 1
            self.summary.skipped_bytes += entry.st.st_size
            if entry.st.st_nlink > 1:
                self._links.setdefault((entry.st.st_dev, entry.st.st_ino), entry.mount_path)
            return True
        if not self.replace_changed:
            raise FileExistsError(
                errno.EEXIST, "differs from the copy already in the volume (size or modification "
                "time); not replaced without --replace-changed")
        return False

    def _verify_existing(self, entry: Entry, target: str) -> None:
        """Before deleting a source that an earlier run imported: compare the contents."""
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            stored = codec.plaintext_digest(self.volume, fd)
        finally:
            os.close(fd)
        src = open_source(self.source / entry.rel)
        try:
            digest, size = hashlib.sha256(), 0
            while block := os.read(src, 4 << 20):
                digest.update(block)
                size += len(block)
        finally:
            os.close(src)
        if stored != (size, digest.hexdigest()):
            raise VerifyFailed("the copy in the volume has the same size and time but other content; "
                               "source kept")

    def _copy(self, entry: Entry, target: str) -> None:
        staged = self.staging / f"{os.getpid()}-{next(self._names)}.part"
        src = open_source(self.source / entry.rel)
        try:
            before = os.fstat(src)
            dst = create_exclusive(staged)
            try:
                def tick(n: int) -> None:
                    self._ticked += n
                    self.progress.advance(nbytes=n)

                size, digest = codec.seal(self.volume, src, dst, tick)
                after = os.fstat(src)
                if not same_version(before, after) or size != after.st_size:
                    raise SourceChanged("changed while it was read (still being written?); not imported, "
                                        "run the import again later")
                apply_to_fd(dst, before, self.owners)  # the version read, even if not the one listed
                self._verify(dst, size, digest)
            finally:
                os.close(dst)
            os.rename(staged, target)
        except BaseException:
            with contextlib.suppress(OSError):
                staged.unlink()
            raise
        finally:
            os.close(src)
        self._dirsync.changed(os.path.dirname(target))
        self.summary.files_done += 1
        self.summary.bytes_done += size
        self._count_owner(entry)
        if self.remove_source:
            self._remove_source(entry, before)

    def _verify(self, dst: int, size: int, digest: str) -> None:
        os.fsync(dst)
        drop_cache(dst)
        if os.fstat(dst).st_size != self.volume.layout.ciphertext_size(size):
            raise VerifyFailed("the encrypted copy has a wrong length after writing")
        if codec.plaintext_digest(self.volume, dst) != (size, digest):
            raise VerifyFailed("the encrypted copy does not decrypt to the source bytes")

    def _remove_source(self, entry: Entry, imported: os.stat_result | None = None) -> None:
        """Unlink the source only if it is still the version that was imported."""
        path = self.source / entry.rel
        now = os.lstat(path)
        if not same_version(imported or entry.st, now):
            raise SourceChanged("changed after it was imported; source kept")
        self._dirsync.sync()  # the copy's name must be on disk before the source goes
        os.unlink(path)
        self.summary.sources_removed += 1

    def _count_owner(self, entry: Entry) -> None:
        if not self.owners and (entry.st.st_uid, entry.st.st_gid) != (os.geteuid(), os.getegid()):
            self.summary.owners_not_kept += 1


def import_tree(source: Path, volume: Volume, *, remove_source: bool = False,
                replace_changed: bool = False, progress: Progress | None = None,
                count_first: bool = True) -> Summary:
    """Encrypt the folder ``source`` into ``volume`` (see the module docstring)."""
    importer = Importer(source, volume, remove_source=remove_source, replace_changed=replace_changed,
                        progress=progress)
    return importer.run(count_first=count_first)
