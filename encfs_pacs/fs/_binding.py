"""The one import of the FUSE binding (mfusepy on libfuse3), plus fixes to its wrapper.

mfusepy loads libfuse2 first when both are installed; libfuse3 gives larger requests and
``hard_remove``, so we ask for it explicitly before the import.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # noqa: E402
from mfusepy import FUSE, FuseOSError, Operations, fuse_get_context  # noqa: E402

from ..store import Attributes  # noqa: E402

__all__ = ["EncfsFUSE", "FuseOSError", "Operations", "fuse_get_context", "fill_stat", "LIBFUSE_VERSION"]

LIBFUSE_VERSION = f"{mfusepy.fuse_version_major}.{mfusepy.fuse_version_minor}"

# utimensat(2) special nanosecond values (linux/stat.h)
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2


def _timespec_ns(ts: mfusepy.c_timespec, now_ns: int) -> int | None:
    if ts.tv_nsec == _UTIME_OMIT:
        return None
    if ts.tv_nsec == _UTIME_NOW:
        return now_ns
    return ts.tv_sec * 10**9 + ts.tv_nsec


# libfuse's worker threads are not Python threads, so every ctypes callback made on one creates
# a Python thread state on entry and destroys it on return: ~50 µs of every request here (a
# stat of a missing name in a minimal mfusepy file system: 132 -> 75 µs per round trip). One
# extra PyGILState_Ensure per worker, never released, keeps the state for the thread's life;
# each callback then only takes and drops the GIL. The flag lives in that thread state's own
# dict (threading.local), so it is set exactly when the state is kept. A kept state is freed
# only with the process: libfuse must not end workers while mounted (fs/mount.py FUSE_WORKERS).
# Side effect: threading.local data now lasts from one request to the next on a worker.
_gilstate_ensure = ctypes.pythonapi.PyGILState_Ensure
_kept = threading.local()


def keep_python_thread_state() -> None:
    """Called first in every callback: the calling OS thread keeps its Python thread state."""
    if not getattr(_kept, "state", False):
        _kept.state = True
        _gilstate_ensure()


def fill_stat(out: mfusepy.c_stat, attributes: Attributes) -> None:
    """Copy a name's attributes into libfuse's struct stat. libfuse hands every field of it that
    the kernel's fuse_attr has on to the kernel (convert_stat); each of those is set here."""
    st = attributes.stat
    out.st_dev = st.st_dev
    out.st_ino = st.st_ino
    out.st_nlink = st.st_nlink
    out.st_mode = st.st_mode
    out.st_uid = st.st_uid
    out.st_gid = st.st_gid
    out.st_rdev = st.st_rdev
    out.st_size = attributes.size
    out.st_blksize = st.st_blksize
    out.st_blocks = st.st_blocks
    out.st_atimespec.tv_sec, out.st_atimespec.tv_nsec = divmod(st.st_atime_ns, 1_000_000_000)
    out.st_mtimespec.tv_sec, out.st_mtimespec.tv_nsec = divmod(st.st_mtime_ns, 1_000_000_000)
    out.st_ctimespec.tv_sec, out.st_ctimespec.tv_nsec = divmod(st.st_ctime_ns, 1_000_000_000)


def _view(buf, size: int) -> memoryview:  # type: ignore[no-untyped-def]
    """A writable byte view of libfuse's request buffer: valid only until the callback returns,
    so nothing may keep it (or a slice of it) beyond that."""
    return memoryview((ctypes.c_ubyte * size).from_address(ctypes.addressof(buf.contents))).cast("B")


class EncfsFUSE(FUSE):
    """mfusepy's FUSE class with ftruncate's handle, rename flags, utimensat's NOW/OMIT,
    attributes copied straight into struct stat, reads and writes on libfuse's own buffers, and
    worker threads that keep their Python thread state.

    mfusepy drops renameat2 flags (so `mv -n` would silently overwrite), folds UTIME_NOW /
    UTIME_OMIT into bogus nanosecond counts (so `touch` would set strange times) and calls
    truncate without the handle."""

    def _wrapper(self, func, *args, **kwargs):  # type: ignore[no-untyped-def]
        keep_python_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def fgetattr(self, path: bytes | None, buf, fip) -> int:  # type: ignore[no-untyped-def]
        # mfusepy goes through a dict of 12 keys and setattr by name for every stat: on the
        # hottest request (every lookup, stat and create asks it) a direct copy is cheaper.
        fi = (fip.contents if self.raw_fi else fip.contents.fh) if fip else None
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        fill_stat(buf.contents, self.operations.getattr(decoded, fi))
        return 0

    def read(self, path: bytes | None, buf, size: int, offset: int, fip) -> int:  # type: ignore[no-untyped-def]
        # mfusepy copies the bytes a read returns into libfuse's buffer; decrypting straight
        # into that buffer saves the copy, and the join of the decrypted chunks before it.
        fi = fip.contents if self.raw_fi else fip.contents.fh
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.read_into(decoded, _view(buf, size), offset, fi)

    def write(self, path: bytes | None, buf, size: int, offset: int, fip) -> int:  # type: ignore[no-untyped-def]
        # mfusepy copies libfuse's buffer into a bytes object first; the store only reads the
        # data before the call returns, so a view of the buffer is enough.
        fi = fip.contents if self.raw_fi else fip.contents.fh
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.write(decoded, _view(buf, size), offset, fi)

    def truncate_fuse_3(self, path: bytes | None, length: int, fip) -> int:  # type: ignore[no-untyped-def]
        # mfusepy drops the file handle of ftruncate(); an unlinked open file has no usable path
        fi = fip.contents if fip else None
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.truncate(decoded, length, fi)

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename(old.decode(self.encoding, self.errors),
                                      new.decode(self.encoding, self.errors), flags)

    def utimens_fuse_3(self, path: bytes | None, buf, fip) -> int:  # type: ignore[no-untyped-def]
        now = time.time_ns()
        times = (now, now) if not buf else (
            _timespec_ns(buf.contents.actime, now), _timespec_ns(buf.contents.modtime, now))
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.utimens(decoded, times)
