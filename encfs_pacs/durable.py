"""Crash-safe file replacement, shared by the volume config, the audit key store and policies.

Write a temporary file next to the target, fsync it, rename it over the target, fsync the
folder: after a crash at any point the old file or the new one exists, whole. (A crash before
the rename leaves ``NAME.tmp``, complete or not; the next write replaces it.) No imports from
the project: the audit trail, which stands alone, uses it too.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_file_atomically(path: Path, data: bytes, mode: int = 0o600, *, sync_folder: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # an older leftover may have other permissions
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_folder:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
