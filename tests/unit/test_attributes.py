"""Attributes as the mount shows them: the plaintext size, the copy into libfuse's struct stat,
and directory listings that carry only what readdir passes on (type and inode)."""

from __future__ import annotations

import ctypes
import os
import stat
from pathlib import Path

import mfusepy

from encfs_pacs.fs._binding import EncfsFUSE, fill_stat
from encfs_pacs.store import Attributes

from .storekit import small_volume


def test_fill_stat_copies_every_field_the_kernel_gets(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"x" * 5000)
    os.utime(target, ns=(1_700_000_000_123_456_789, 1_600_000_000_987_654_321))
    st = os.lstat(target)
    out = mfusepy.c_stat()
    ctypes.memset(ctypes.byref(out), 0xAB, ctypes.sizeof(out))  # no field may keep garbage
    fill_stat(out, Attributes(st, 4321))
    assert (out.st_dev, out.st_ino, out.st_nlink, out.st_mode, out.st_uid, out.st_gid, out.st_rdev) == (
        st.st_dev, st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid, st.st_rdev)
    assert out.st_size == 4321  # the plaintext size, not the stored one
    assert (out.st_blksize, out.st_blocks) == (st.st_blksize, st.st_blocks)
    assert (out.st_atimespec.tv_sec, out.st_atimespec.tv_nsec) == (1_700_000_000, 123_456_789)
    assert (out.st_mtimespec.tv_sec, out.st_mtimespec.tv_nsec) == (1_600_000_000, 987_654_321)
    assert out.st_ctimespec.tv_sec * 10**9 + out.st_ctimespec.tv_nsec == st.st_ctime_ns


def test_fill_stat_keeps_a_device_number() -> None:
    null = os.stat("/dev/null")  # a character device: its st_rdev is not 0
    out = mfusepy.c_stat()
    fill_stat(out, Attributes(null, 0))
    assert stat.S_ISCHR(out.st_mode)
    assert out.st_rdev == null.st_rdev != 0


def test_getattr_through_the_binding_reports_the_plaintext_size(tmp_path: Path) -> None:
    volume = small_volume(tmp_path)
    handle = volume.create("/f", 0o100644, os.O_WRONLY)
    handle.write(b"y" * 10_000, 0)
    handle.close()

    class Operations:
        def getattr(self, path: str | None, fi: object = None) -> Attributes:
            assert path == "/f" and fi is None
            return volume.getattr(path)

    fuse = EncfsFUSE.__new__(EncfsFUSE)  # no mount: only the callback is exercised
    fuse.operations, fuse.encoding, fuse.errors, fuse.raw_fi = Operations(), "utf-8", "surrogateescape", True
    out = mfusepy.c_stat()
    # getattr_fuse_3 is what mfusepy registers for libfuse 3's getattr; it calls fgetattr
    assert fuse.getattr_fuse_3(b"/f", ctypes.pointer(out), None) == 0
    assert out.st_size == 10_000
    assert os.lstat(volume.backing / "f").st_size > 10_000  # header and tags on disk


def test_listing_gives_type_and_inode_without_hidden_names(tmp_path: Path) -> None:
    volume = small_volume(tmp_path)
    volume.mkdir("/dir", 0o755)
    volume.create("/file", 0o100644, os.O_WRONLY).close()
    volume.symlink("/link", "file")
    volume.mknod("/fifo", stat.S_IFIFO | 0o600, 0)
    (volume.backing / ".fuse_hidden0001").write_bytes(b"")
    fd = volume.open_dir("/")
    try:
        listed = {entry.name: entry for entry in volume.list_dir(fd)}
    finally:
        os.close(fd)
    assert set(listed) == {"dir", "file", "link", "fifo"}  # not the volume's metadata folder
    expected = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "link": stat.S_IFLNK, "fifo": stat.S_IFIFO}
    for name, kind in expected.items():
        assert listed[name].type_bits == kind, name
        assert listed[name].inode == os.lstat(volume.backing / name).st_ino, name
