"""One maintenance command at a time per volume (an advisory flock in the metadata folder).

import and passwd take it exclusively; export and fsck take it shared, and only if the lock
file already exists: they must not write to a volume (it may be a read-only backup copy).
The mount does not take it: importing into a mounted volume is allowed (docs/maintenance.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError, VolumeBusy
from ..store import META_DIR

LOCK_FILE = "maintenance.lock"


def lock_path(backing: Path) -> Path:
    return backing / META_DIR / LOCK_FILE


@contextlib.contextmanager
def maintenance_lock(backing: Path, exclusive: bool, what: str) -> Iterator[None]:
    path = lock_path(backing)
    try:
        if exclusive:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if exclusive:
            raise
        yield  # no lock file: no exclusive command has ever run, and we must not create one
        return
    except OSError as exc:
        if not exclusive:
            raise
        raise UsageError(f"{what} must write to the volume, but cannot create {path}: {exc.strerror} "
                         "(a read-only copy can only be checked or exported)") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VolumeBusy(
                f"another encfs-pacs maintenance command (import or passwd) is working on {backing}; "
                f"wait for it to finish before running {what}") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock
