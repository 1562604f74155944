"""A plaintext PACS-like archive for import/export tests, built from pydicom's bundled samples.

Only the files inside the installed package are used (pydicom's get_testdata_files() would
try to download more). Extras cover what a real storage folder can hold: nested folders,
an empty file, exact chunk-size multiples, a symlink, a hard link, odd modes and times.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pydicom

PYDICOM_SAMPLES = Path(pydicom.__file__).resolve().parent / "data" / "test_files"


def build(root: Path, extras: bool = True) -> Path:
    shutil.copytree(PYDICOM_SAMPLES, root / "samples", symlinks=True)
    if extras:
        study = root / "studies" / "1.2.840.1" / "series-1"
        study.mkdir(parents=True)
        shutil.copy2(PYDICOM_SAMPLES / "CT_small.dcm", study / "IM0001.dcm")
        (study / "empty").write_bytes(b"")
        (root / "exactly-64KiB.bin").write_bytes(os.urandom(65536))
        (root / "two-chunks-plus-one.bin").write_bytes(os.urandom(2 * 65536 + 1))
        os.symlink("studies/1.2.840.1/series-1/IM0001.dcm", root / "latest.dcm")
        os.link(study / "IM0001.dcm", root / "hardlink.dcm")
        private = root / "private.dcm"
        private.write_bytes(b"DICM" + os.urandom(1000))
        private.chmod(0o600)
        os.utime(private, ns=(1_000_000_123, 1_500_000_000_987_654_321))
        readonly = root / "readonly-folder"
        readonly.mkdir()
        (readonly / "inside.dcm").write_bytes(os.urandom(3000))
        readonly.chmod(0o555)
    return root


def snapshot(root: Path, times: bool = True) -> dict[str, Any]:
    """Everything import/export must preserve: type, content hash, mode, mtime, link target.
    Folder times are compared too: they are set after their contents."""
    found: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            entry: dict[str, Any] = {"mode": stat.S_IMODE(st.st_mode), "type": stat.S_IFMT(st.st_mode)}
            if times and not stat.S_ISLNK(st.st_mode):
                entry["mtime_ns"] = st.st_mtime_ns
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
                entry.pop("mode")
            elif stat.S_ISREG(st.st_mode):
                entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                entry["size"] = st.st_size
            found[rel] = entry
    return found


def regular_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}
