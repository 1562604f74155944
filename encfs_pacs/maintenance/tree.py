"""Walking a plain folder tree and copying metadata (mode, owner, times) exactly."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Errors after which every further file would fail the same way: stop instead of listing
# thousands of identical failures (the run can be resumed once the cause is fixed).
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


@dataclass(frozen=True)
class Entry:
    rel: str  # relative path with "/" separators; "" for the root itself
    st: os.stat_result

    @property
    def kind(self) -> str:
        mode = self.st.st_mode
        if stat.S_ISDIR(mode):
            return "directory"
        if stat.S_ISREG(mode):
            return "file"
        if stat.S_ISLNK(mode):
            return "symlink"
        if stat.S_ISFIFO(mode):
            return "fifo"
        if stat.S_ISSOCK(mode):
            return "socket"
        return "device"

    @property
    def mount_path(self) -> str:
        return "/" + self.rel


@dataclass
class Failure:
    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def walk(root: Path, on_error: Callable[[str, OSError], None],
         skip: Callable[[str], bool] = lambda rel: False) -> Iterator[Entry]:
    """Every entry under ``root`` (root first), parents before children, names sorted, never
    following symlinks. A folder that cannot be listed is reported and skipped."""
    stack = [""]
    yield Entry("", os.stat(root))  # the folder given may be reached through a symlink
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            on_error(rel or ".", exc)
            continue
        subdirs = []
        for child in children:
            child_rel = f"{rel}/{child.name}" if rel else child.name
            if skip(child_rel):
                continue
            try:
                entry = Entry(child_rel, child.stat(follow_symlinks=False))
            except OSError as exc:
                on_error(child_rel, exc)
                continue
            yield entry
            if entry.kind == "directory":
                subdirs.append(child_rel)
        stack.extend(reversed(subdirs))  # depth first, in name order


def count(root: Path, skip: Callable[[str], bool] = lambda rel: False) -> tuple[int, int]:
    """(regular files, their bytes) under root: the totals for the progress bar."""
    files = nbytes = 0
    for entry in walk(root, lambda rel, exc: None, skip):
        if entry.kind == "file":
            files += 1
            nbytes += entry.st.st_size
    return files, nbytes


def preserve_owners() -> bool:
    """Only root can give files to other users; others keep their own uid silently."""
    return os.geteuid() == 0


def apply_to_fd(fd: int, st: os.stat_result, owners: bool) -> None:
    """Owner, then mode (chown clears set-uid bits), then times: the last write to ``fd``."""
    if owners:
        os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def apply_to_path(path: str | Path, st: os.stat_result, owners: bool) -> None:
    """The same for a folder, symlink or FIFO, by path (a symlink itself, never its target)."""
    if owners:
        os.lchown(path, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def open_source(path: str | Path) -> int:
    """Read without updating the source's access time where allowed (O_NOATIME needs
    ownership or CAP_FOWNER; fall back silently), never through a symlink."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


def same_version(a: os.stat_result, b: os.stat_result) -> bool:
    """The same file, unchanged: inode, size, modification and change times."""
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirSyncer:
    """Makes renames durable with one fsync per folder instead of one per file.

    Files are renamed into a folder one after another; its fsync is deferred until the run
    moves on to another folder (or ends, or is about to delete a source). A crash can then
    lose only the latest renames, whose files are simply redone by the next run: a file is
    visible only once complete, so losing its rename never exposes a partial file."""

    def __init__(self) -> None:
        self._pending: list[str] = []

    def changed(self, folder: str | Path) -> None:
        folder = str(folder)
        if folder not in self._pending:
            if self._pending:
                self.sync()
            self._pending.append(folder)

    def sync(self) -> None:
        for folder in self._pending:
            fsync_dir(folder)
        self._pending.clear()


def create_exclusive(path: str | Path) -> int:
    """A new private file for writing and reading back; reading it must not touch its
    access time, which is set to the source's before the verification read."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME, 0o600)
    except PermissionError:
        return os.open(path, flags, 0o600)


def drop_cache(fd: int) -> None:
    """After fsync, evict the file's pages so a verification read comes from the disk."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f" ({exc.filename})" if exc.filename else "")
    return str(exc) or type(exc).__name__


@dataclass
class Summary:
    """What an import or export did: the CLI prints it, --json emits it."""

    files_done: int = 0
    bytes_done: int = 0
    skipped_files: int = 0
    skipped_bytes: int = 0
    directories: int = 0
    symlinks: int = 0
    hard_links: int = 0
    failed: list[Failure] = field(default_factory=list)
    not_copied: list[Failure] = field(default_factory=list)  # sockets, devices: by design
    sources_removed: int = 0
    leftovers_removed: int = 0
    owners_not_kept: int = 0
    stopped: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped is None

    def rates(self) -> tuple[float, float]:
        """(MB/s, files/s) of the files actually copied."""
        if self.seconds <= 0:
            return 0.0, 0.0
        return self.bytes_done / 1e6 / self.seconds, self.files_done / self.seconds

    def as_dict(self) -> dict[str, Any]:
        mb_s, files_s = self.rates()
        return {
            "ok": self.ok, "files_done": self.files_done, "bytes_done": self.bytes_done,
            "skipped_files": self.skipped_files, "skipped_bytes": self.skipped_bytes,
            "directories": self.directories, "symlinks": self.symlinks, "hard_links": self.hard_links,
            "failed": [f.as_dict() for f in self.failed],
            "not_copied": [f.as_dict() for f in self.not_copied],
            "sources_removed": self.sources_removed, "leftovers_removed": self.leftovers_removed,
            "owners_not_kept": self.owners_not_kept, "stopped": self.stopped,
            "seconds": round(self.seconds, 3), "mb_per_second": round(mb_s, 2),
            "files_per_second": round(files_s, 1),
        }
