"""The FUSE adapter: translates kernel requests into Volume calls. No logic of its own.

Errors are mapped to errno in exactly one place (``_errno_boundary``): OSError keeps its
errno, EncfsPacsError carries its own (IntegrityError -> EIO, logged with the path), and an
unexpected exception is logged with its traceback and answered EIO rather than crashing the
mount under a running PACS.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import EncfsPacsError, IntegrityError
from ..store import OpenFile, Volume
from ._binding import FuseOSError, Operations, fuse_get_context

log = logging.getLogger("encfs_pacs.fs")
F = TypeVar("F", bound=Callable[..., Any])

def _errno_boundary(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: EncryptedOperations, *args: Any) -> Any:
        try:
            return method(self, *args)
        except OSError:
            raise
        except IntegrityError as exc:
            log.error("integrity failure on %s: %s — the stored ciphertext was altered or damaged; "
                      "the read was refused with EIO", _describe(args), exc)
            raise FuseOSError(exc.errno) from None
        except EncfsPacsError as exc:
            log.warning("%s %s refused: %s", method.__name__, _describe(args), exc)
            raise FuseOSError(exc.errno) from None
        except Exception:
            log.exception("internal error in %s %s", method.__name__, _describe(args))
            raise FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _describe(args: tuple[Any, ...]) -> str:
    return repr(args[0]) if args and isinstance(args[0], str) else ""


class EncryptedOperations(Operations):
    """fusepy/mfusepy operations with ``raw_fi=True``: ``fi`` is the kernel's fuse_file_info."""

    use_ns = True

    def __init__(self, volume: Volume, on_ready: Callable[[], None] | None = None,
                 set_owner: bool = False) -> None:
        self.volume = volume
        self._on_ready = on_ready
        self._set_owner = set_owner
        self._handles: dict[int, OpenFile] = {}
        self._next_handle = 1
        self._handles_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.use_ino = 1  # st_ino from the backing file: hard links and `find -inum` work
            # hard_remove stays off: with it, libfuse's high-level API answers fstat() on an
            # unlinked open file with ESTALE. Instead libfuse renames such a file to
            # .fuse_hidden*, which the volume hides from listings (see Volume.list_dir/rmdir).
        log.info("mounted volume %s", self.volume.describe())
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        with self._handles_lock:
            handles, self._handles = list(self._handles.values()), {}
        for handle in handles:
            handle.close()
        log.info("unmounted volume %s", self.volume.describe())

    # -- helpers -----------------------------------------------------------------------------

    def _owner(self) -> tuple[int, int] | None:
        """When the daemon runs as root for other users, new files belong to the caller."""
        if not self._set_owner:
            return None
        uid, gid, _pid = fuse_get_context()
        return uid, gid

    def _register(self, handle: OpenFile, fi: Any) -> int:
        with self._handles_lock:
            number = self._next_handle
            self._next_handle += 1
            self._handles[number] = handle
        fi.fh = number
        return 0

    def _handle(self, fi: Any) -> OpenFile:
        try:
            return self._handles[fi.fh]
        except KeyError:
            raise FuseOSError(errno.EBADF) from None

    # -- attributes and directories ------------------------------------------------------------

    @_errno_boundary
    def getattr(self, path: str | None, fi: Any = None) -> dict[str, float]:
        if fi is not None and fi.fh in self._handles:
            return self._handles[fi.fh].stat()
        if path is None:
            raise FuseOSError(errno.ENOENT)
        return self.volume.getattr(path)

    @_errno_boundary
    def opendir(self, path: str) -> int:
        return self.volume.open_dir(path)  # the backing directory's descriptor is our handle

    @_errno_boundary
    def readdir(self, path: str | None, dir_fd: int) -> list[Any]:
        return [".", "..", *((name, attrs, 0) for name, attrs in self.volume.list_dir(dir_fd))]

    @_errno_boundary
    def releasedir(self, path: str | None, dir_fd: int) -> int:
        os.close(dir_fd)
        return 0

    @_errno_boundary
    def statfs(self, path: str) -> dict[str, int]:
        return self.volume.statfs()

    @_errno_boundary
    def mkdir(self, path: str, mode: int) -> int:
        self.volume.mkdir(path, mode, self._owner())
        return 0

    @_errno_boundary
    def rmdir(self, path: str) -> int:
        self.volume.rmdir(path)
        return 0

    @_errno_boundary
    def unlink(self, path: str) -> int:
        self.volume.unlink(path)
        return 0

    @_errno_boundary
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self.volume.rename(old, new, flags)
        return 0

    @_errno_boundary
    def symlink(self, path: str, target: str) -> int:
        self.volume.symlink(path, target, self._owner())
        return 0

    @_errno_boundary
    def readlink(self, path: str) -> str:
        return self.volume.readlink(path)

    @_errno_boundary
    def link(self, path: str, existing: str) -> int:
        self.volume.link(path, existing)
        return 0

    @_errno_boundary
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self.volume.mknod(path, mode, dev, self._owner())
        return 0

    @_errno_boundary
    def chmod(self, path: str | None, mode: int) -> int:
        if path is None:
            raise FuseOSError(errno.ENOENT)
        self.volume.chmod(path, mode)
        return 0

    @_errno_boundary
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        if path is None:
            raise FuseOSError(errno.ENOENT)
        self.volume.chown(path, uid, gid)
        return 0

    @_errno_boundary
    def utimens(self, path: str | None, times: tuple[int | None, int | None]) -> int:
        """``times`` as decoded by _binding.EncfsFUSE: ns, None for UTIME_OMIT, now already resolved."""
        if path is None:
            raise FuseOSError(errno.ENOENT)
        self.volume.utimens(path, *times)
        return 0

    @_errno_boundary
    def fsyncdir(self, path: str | None, datasync: int, dir_fd: int) -> int:
        os.fsync(dir_fd)
        return 0

    # -- files -------------------------------------------------------------------------------

    @_errno_boundary
    def open(self, path: str, fi: Any) -> int:
        return self._register(self.volume.open(path, fi.flags), fi)

    @_errno_boundary
    def create(self, path: str, mode: int, fi: Any) -> int:
        return self._register(self.volume.create(path, mode, fi.flags, self._owner()), fi)

    @_errno_boundary
    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        return self._handle(fi).read(size, offset)

    @_errno_boundary
    def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
        return self._handle(fi).write(data, offset)

    @_errno_boundary
    def truncate(self, path: str | None, length: int, fi: Any = None) -> int:
        if fi is not None and fi.fh in self._handles:
            self._handles[fi.fh].truncate(length)
        elif path is None:
            raise FuseOSError(errno.ENOENT)
        else:
            self.volume.truncate(path, length)
        return 0

    @_errno_boundary
    def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
        self._handle(fi).fsync(bool(datasync))
        return 0

    @_errno_boundary
    def release(self, path: str | None, fi: Any) -> int:
        with self._handles_lock:
            handle = self._handles.pop(fi.fh, None)
        if handle is not None:
            handle.close()
        return 0

    # Deliberately not implemented, so libfuse answers ENOSYS once and the kernel stops asking
    # or handles it itself: getxattr/setxattr (security.capability is probed on every write),
    # ioctl (the kernel turns ENOSYS into ENOTTY for isatty()), lock/flock (kernel-local POSIX
    # locks are correct for a single-host mount), access (default_permissions checks modes).
