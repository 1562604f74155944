"""The FUSE adapter: kernel requests -> access gate -> Volume calls. No logic of its own.

Each request that names a path is first put to the access gate (caller identity, allow-list
decision, audit record); reads and writes on an open handle cost no policy work. Errors are
mapped to errno in exactly one place (``_errno_boundary``): OSError keeps its errno,
EncfsPacsError carries its own (AccessDenied -> EACCES, IntegrityError -> EIO and an audit
record), and an unexpected exception is logged with its traceback and answered EIO rather
than crashing the mount under a running PACS.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..access import AccessGate, Grant
from ..errors import AccessDenied, EncfsPacsError, IntegrityError
from ..policy.model import Op, View
from ..store import FUSE_HIDDEN_PREFIX, Attributes, CiphertextFile, OpenFile, Volume
from ._binding import FuseOSError, Operations, fuse_get_context

log = logging.getLogger("encfs_pacs.fs")
F = TypeVar("F", bound=Callable[..., Any])

# Shared storage (Volume.shared, docs/shared-storage.md): how long the kernel may trust a name
# lookup or a file's attributes without asking the daemon. 0 s gives NFS's close-to-open rule
# and more: every open and stat reaches the daemon, so a file another mount closed is seen with
# its new size, and deleted, renamed or new names at once. A single-host mount keeps libfuse's
# defaults (1 s), which are correct there because every change goes through that mount.
SHARED_ENTRY_TIMEOUT = 0.0
SHARED_ATTR_TIMEOUT = 0.0


def _errno_boundary(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: EncryptedOperations, *args: Any) -> Any:
        try:
            return method(self, *args)
        except OSError:
            raise
        except AccessDenied as exc:  # already logged and audited by the gate
            raise FuseOSError(exc.errno) from None
        except IntegrityError as exc:
            log.error("integrity failure on %s: %s — the stored ciphertext was altered or damaged; "
                      "the read was refused with EIO", _describe(args), exc)
            self.gate.record_integrity_failure(_describe(args), str(exc))
            raise FuseOSError(exc.errno) from None
        except EncfsPacsError as exc:
            log.warning("%s %s refused: %s", method.__name__, _describe(args), exc)
            raise FuseOSError(exc.errno) from None
        except Exception:
            log.exception("internal error in %s %s", method.__name__, _describe(args))
            raise FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def _describe(args: tuple[Any, ...]) -> str:
    return args[0] if args and isinstance(args[0], str) else ""


def _open_ops(flags: int) -> list[Op]:
    mode = flags & os.O_ACCMODE
    ops = [] if mode == os.O_WRONLY else [Op.READ]
    if mode != os.O_RDONLY or flags & os.O_TRUNC:
        ops.append(Op.WRITE)
    return ops


@dataclass
class Handle:
    file: OpenFile | CiphertextFile
    grant: Grant


class EncryptedOperations(Operations):
    """fusepy/mfusepy operations with ``raw_fi=True``: ``fi`` is the kernel's fuse_file_info.

    ``getattr`` answers with store.Attributes, not fusepy's dict: _binding.EncfsFUSE copies
    them into libfuse's struct stat itself."""

    use_ns = True

    def __init__(self, volume: Volume, gate: AccessGate, on_ready: Callable[[], None] | None = None,
                 set_owner: bool = False) -> None:
        self.volume = volume
        self.gate = gate
        self._on_ready = on_ready
        self._set_owner = set_owner
        self._handles: dict[int, Handle] = {}
        self._next_handle = 1
        self._handles_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            if self.volume.shared:
                config.entry_timeout = SHARED_ENTRY_TIMEOUT
                config.attr_timeout = SHARED_ATTR_TIMEOUT
                config.negative_timeout = 0.0  # (libfuse's default too: a new name shows at once)
            config.use_ino = 1  # st_ino from the backing file: hard links and `find -inum` work
            # hard_remove stays off: with it, libfuse's high-level API answers fstat() on an
            # unlinked open file with ESTALE. Instead libfuse renames such a file to
            # .fuse_hidden*, which the volume hides from listings (see Volume.list_dir/rmdir).
        mode = " (shared storage: close-to-open, 0 s timeouts, file locks)" if self.volume.shared else ""
        log.info("mounted volume %s%s", self.volume.describe(), mode)
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        with self._handles_lock:
            handles, self._handles = list(self._handles.values()), {}
        for handle in handles:
            handle.file.close()
        log.info("unmounted volume %s", self.volume.describe())

    # -- helpers -----------------------------------------------------------------------------

    def _allow(self, op: Op, path: str, *, existing: bool = True, event: str | None = None) -> Grant:
        return self.gate.authorize(fuse_get_context(), op, path, existing=existing, event=event)

    def _owner(self) -> tuple[int, int] | None:
        """When the daemon runs as root for other users, new files belong to the caller."""
        if not self._set_owner:
            return None
        uid, gid, _pid = fuse_get_context()
        return uid, gid

    def _register(self, handle: Handle, fi: Any) -> int:
        with self._handles_lock:
            number = self._next_handle
            self._next_handle += 1
            self._handles[number] = handle
        fi.fh = number
        return 0

    def _handle(self, fi: Any) -> Handle:
        try:
            return self._handles[fi.fh]
        except KeyError:
            raise FuseOSError(errno.EBADF) from None

    # -- attributes and directories ------------------------------------------------------------

    @_errno_boundary
    def getattr(self, path: str | None, fi: Any = None) -> Attributes:
        if fi is not None and fi.fh in self._handles:
            return self._handles[fi.fh].file.stat()
        if path is None:
            raise FuseOSError(errno.ENOENT)
        if not _is_hidden(path):
            # (libfuse itself probes .fuse_hidden* names, in the caller's name, to find a free
            # one before hiding a file that is unlinked while open: refusing the probe would turn
            # the delete decision into EBUSY. Such names hold already-deleted files only.)
            self._allow(Op.STAT, path, event="stat")
        return self.volume.getattr(path)

    @_errno_boundary
    def opendir(self, path: str) -> int:
        self._allow(Op.LIST, path, event="list")
        return self.volume.open_dir(path)  # the backing directory's descriptor is our handle

    @_errno_boundary
    def readdir(self, path: str | None, dir_fd: int) -> list[Any]:
        # (name, attributes, offset 0): libfuse passes on only the type and, with use_ino, the
        # inode number; the attributes themselves come with each name's LOOKUP.
        return [".", "..", *((entry.name, {"st_mode": entry.type_bits, "st_ino": entry.inode}, 0)
                             for entry in self.volume.list_dir(dir_fd))]

    @_errno_boundary
    def releasedir(self, path: str | None, dir_fd: int) -> int:
        os.close(dir_fd)
        return 0

    @_errno_boundary
    def statfs(self, path: str) -> dict[str, int]:
        return self.volume.statfs()  # free space reveals nothing about the images: no check

    @_errno_boundary
    def mkdir(self, path: str, mode: int) -> int:
        grant = self._allow(Op.CREATE, path, existing=False, event="mkdir")
        with self.gate.audited(grant, "mkdir"):
            self.volume.mkdir(path, mode, self._owner())
        self.gate.created_by(grant, path)
        return 0

    @_errno_boundary
    def rmdir(self, path: str) -> int:
        grant = self._allow(Op.DELETE, path, event="rmdir")
        with self.gate.audited(grant, "rmdir"):
            self.volume.rmdir(path)
        self.gate.removed(path)
        return 0

    @_errno_boundary
    def unlink(self, path: str) -> int:
        if _is_hidden(path):
            # libfuse removing a file that was unlinked while open, at its last close: the
            # delete itself was decided and audited when the program unlinked it (see rename).
            self.volume.unlink(path)
            return 0
        grant = self._allow(Op.DELETE, path, event="delete")
        with self.gate.audited(grant, "delete"):
            self.volume.unlink(path)
        self.gate.removed(path)
        return 0

    @_errno_boundary
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if _is_hidden(new):
            # How libfuse unlinks a file that is still open: for the caller it is a delete.
            grant = self._allow(Op.DELETE, old, event="delete")
            with self.gate.audited(grant, "delete", detail="still open: removed at its last close"):
                self.volume.rename(old, new, flags)
            self.gate.removed(old)
            return 0
        grant = self._allow(Op.RENAME, old, event="rename")
        self._allow(Op.RENAME, new, existing=self.volume.exists(new), event="rename")
        with self.gate.audited(grant, "rename", object={"new_path": new}):
            self.volume.rename(old, new, flags)
        self.gate.renamed(old, new)
        return 0

    @_errno_boundary
    def symlink(self, path: str, target: str) -> int:
        grant = self._allow(Op.CREATE, path, existing=False, event="symlink")
        with self.gate.audited(grant, "symlink"):
            self.volume.symlink(path, target, self._owner())
        return 0

    @_errno_boundary
    def readlink(self, path: str) -> str:
        self._allow(Op.STAT, path, event="readlink")
        return self.volume.readlink(path)

    @_errno_boundary
    def link(self, path: str, existing: str) -> int:
        # A second name can move a file out of a rule's folder, so the old name must be
        # renamable too: a hard link must not be a way around write-once or path rules.
        self._allow(Op.RENAME, existing, event="link")
        grant = self._allow(Op.CREATE, path, existing=False, event="link")
        with self.gate.audited(grant, "link", object={"target": existing}):
            self.volume.link(path, existing)
        return 0

    @_errno_boundary
    def mknod(self, path: str, mode: int, dev: int) -> int:
        grant = self._allow(Op.CREATE, path, existing=False, event="mknod")
        with self.gate.audited(grant, "mknod"):
            self.volume.mknod(path, mode, dev, self._owner())
        return 0

    @_errno_boundary
    def chmod(self, path: str | None, mode: int) -> int:
        if path is None:
            raise FuseOSError(errno.ENOENT)
        grant = self._allow(Op.SETATTR, path, event="setattr")
        with self.gate.audited(grant, "setattr", detail=f"chmod {mode & 0o7777:o}"):
            self.volume.chmod(path, mode)
        return 0

    @_errno_boundary
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        if path is None:
            raise FuseOSError(errno.ENOENT)
        grant = self._allow(Op.SETATTR, path, event="setattr")
        with self.gate.audited(grant, "setattr", detail=f"chown {uid}:{gid}"):
            self.volume.chown(path, uid, gid)
        return 0

    @_errno_boundary
    def utimens(self, path: str | None, times: tuple[int | None, int | None]) -> int:
        """``times`` as decoded by _binding.EncfsFUSE: ns, None for UTIME_OMIT, now already resolved."""
        if path is None:
            raise FuseOSError(errno.ENOENT)
        grant = self._allow(Op.SETATTR, path, event="setattr")
        with self.gate.audited(grant, "setattr", detail="utimens"):
            self.volume.utimens(path, *times)
        return 0

    @_errno_boundary
    def fsyncdir(self, path: str | None, datasync: int, dir_fd: int) -> int:
        os.fsync(dir_fd)
        return 0

    # -- files -------------------------------------------------------------------------------

    @_errno_boundary
    def open(self, path: str, fi: Any) -> int:
        grants = [self._allow(op, path, event="open") for op in _open_ops(fi.flags)]
        grant = grants[0]
        if any(g.view is View.CIPHERTEXT for g in grants):
            if len(grants) > 1 or grant.op is not Op.READ:
                raise FuseOSError(errno.EACCES)  # the ciphertext view is read-only
            # Direct I/O: this handle never reads or fills the page cache, so plaintext cached
            # for an allowed reader cannot reach it (and its ciphertext cannot reach them).
            fi.direct_io = 1
            with self.gate.audited(grant, "open", detail="ciphertext view"):
                file: OpenFile | CiphertextFile = self.volume.open_ciphertext(path)
        else:
            with self.gate.audited(grant, "open", detail=_mode(fi.flags)):
                file = self.volume.open(path, fi.flags)
            # Keep the file's cached pages across opens (warm re-reads 3x faster): every change
            # goes through this mount, so the cache is never stale, and only allowed plaintext
            # handles read through it (denied callers get no handle, ciphertext ones direct I/O).
            # On shared storage another mount may have changed the file: keep the pages only
            # if the backing file is provably unchanged since this name's last open (libfuse's
            # auto_cache idea, made safe against coarse timestamps: Volume.cache_still_valid);
            # without keep_cache the kernel drops them at this open (close-to-open).
            fi.keep_cache = int(not self.volume.shared or self.volume.cache_still_valid(file, path))
        return self._register(Handle(file, grants[-1]), fi)

    @_errno_boundary
    def create(self, path: str, mode: int, fi: Any) -> int:
        exists = self.volume.exists(path)
        grant = self._allow(Op.WRITE if exists else Op.CREATE, path, existing=exists, event="create")
        with self.gate.audited(grant, "create", detail=_mode(fi.flags)):
            file = self.volume.create(path, mode, fi.flags, self._owner())
        if not exists:
            self.gate.created_by(grant, path)
        return self._register(Handle(file, grant), fi)

    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        # The mount calls read_into (see _binding.EncfsFUSE.read); mfusepy registers READ with
        # libfuse only if this method exists, and it reads the same way for any other caller.
        out = memoryview(bytearray(size))
        return bytes(out[:self.read_into(path, out, offset, fi)])

    @_errno_boundary
    def read_into(self, path: str | None, out: memoryview, offset: int, fi: Any) -> int:
        """READ: up to len(out) bytes at ``offset`` into libfuse's reply buffer (see _binding)."""
        handle = self._handle(fi)
        count = handle.file.read_into(out, offset)
        handle.grant.bytes_read += count
        return count

    @_errno_boundary
    def write(self, path: str | None, data: memoryview, offset: int, fi: Any) -> int:
        handle = self._handle(fi)
        if not isinstance(handle.file, OpenFile):
            raise FuseOSError(errno.EBADF)
        written = handle.file.write(data, offset)
        handle.grant.bytes_written += written
        return written

    @_errno_boundary
    def truncate(self, path: str | None, length: int, fi: Any = None) -> int:
        if fi is not None and fi.fh in self._handles:
            file = self._handles[fi.fh].file
            if not isinstance(file, OpenFile):
                raise FuseOSError(errno.EBADF)
            file.truncate(length)  # the handle was opened for writing: allowed then
            return 0
        if path is None:
            raise FuseOSError(errno.ENOENT)
        grant = self._allow(Op.WRITE, path, event="truncate")
        with self.gate.audited(grant, "truncate", detail=f"to {length} bytes"):
            self.volume.truncate(path, length)
        return 0

    @_errno_boundary
    def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
        file = self._handle(fi).file
        if isinstance(file, OpenFile):
            file.fsync(bool(datasync))
        return 0

    @_errno_boundary
    def release(self, path: str | None, fi: Any) -> int:
        with self._handles_lock:
            handle = self._handles.pop(fi.fh, None)
        if handle is not None:
            try:
                inode: int | None = handle.file.inode
            except OSError:
                inode = None
            handle.file.close()
            self.gate.record_release(handle.grant, inode)
        return 0

    # Deliberately not implemented, so libfuse answers ENOSYS once and the kernel stops asking
    # or handles it itself: getxattr/setxattr (security.capability is probed on every write),
    # ioctl (the kernel turns ENOSYS into ENOTTY for isatty()), lock/flock (kernel-local POSIX
    # locks are correct for a single-host mount; SharedStorageOperations forwards fcntl locks
    # on shared storage), access (default_permissions checks modes).


class SharedStorageOperations(EncryptedOperations):
    """With --shared-storage: applications' fcntl (POSIX) locks also go to the backing file, so
    programs on the other mounts (other hosts, through NFS) see them (docs/shared-storage.md).

    A separate class because libfuse asks the kernel to forward locks only if ``lock`` exists:
    a single-host mount keeps the kernel's own, faster lock handling. flock() stays local."""

    @_errno_boundary
    def lock(self, path: str | None, fi: Any, cmd: int, lock: Any) -> int:
        file = self._handle(fi).file
        if not isinstance(file, OpenFile):
            raise FuseOSError(errno.ENOLCK)  # the read-only ciphertext view takes no locks
        request = lock.contents
        if request.l_whence != os.SEEK_SET or request.l_start < 0 or request.l_len < 0:
            raise FuseOSError(errno.EINVAL)  # libfuse passes absolute, positive ranges
        if cmd == fcntl.F_GETLK:
            found = file.test_lock(fi.lock_owner, request.l_type, request.l_start, request.l_len)
            if found is None:
                request.l_type = fcntl.F_UNLCK
            else:
                request.l_type, request.l_start, request.l_len = found
                request.l_pid = 0  # the holder may be on another host: no pid to show
            return 0
        if cmd not in (fcntl.F_SETLK, fcntl.F_SETLKW):
            raise FuseOSError(errno.EINVAL)
        file.set_lock(fi.lock_owner, request.l_type, request.l_start, request.l_len,
                      wait=cmd == fcntl.F_SETLKW)
        return 0


def _is_hidden(path: str) -> bool:
    return path.rpartition("/")[2].startswith(FUSE_HIDDEN_PREFIX)


def _mode(flags: int) -> str:
    mode = {os.O_RDONLY: "read", os.O_WRONLY: "write", os.O_RDWR: "read-write"}[flags & os.O_ACCMODE]
    extras = [name for flag, name in ((os.O_TRUNC, "truncate"), (os.O_APPEND, "append"),
                                      (os.O_CREAT, "create"), (os.O_EXCL, "exclusive")) if flags & flag]
    return "+".join([mode, *extras])
