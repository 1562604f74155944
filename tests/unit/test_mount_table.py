"""One reader of /proc/self/mountinfo (fs/mount.py: mount_table) for the daemon, the test
fixtures and `encfs-pacs status`."""

from __future__ import annotations

from pathlib import Path

import pytest

from encfs_pacs.cli import status
from encfs_pacs.fs import mount

READ_MOUNT_TABLE = mount.mount_table  # before the fixture points it at MOUNTINFO

# Real mountinfo lines (kernel 6.18), with an escaped space and tab in two mount points and a
# second mount stacked on /mnt/pacs.
MOUNTINFO = (
    "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
    "45 22 0:41 / /mnt/pacs rw,nosuid,nodev,relatime shared:20 - fuse.encfs-pacs /srv/enc\\040backing "
    "rw,user_id=0,group_id=0,default_permissions,allow_other\n"
    "46 22 0:42 / /mnt/go\\011fs rw,nosuid,nodev,relatime shared:21 - fuse.gocryptfs /srv/cipher rw\n"
    "47 45 0:43 / /mnt/pacs rw,relatime shared:22 - fuse.encfs-pacs /srv/other rw\n"
)


@pytest.fixture
def mountinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    real = mount.mount_table
    monkeypatch.setattr(mount, "mount_table", lambda: real(str(path)))
    return path


def test_entries_are_parsed_and_unescaped(mountinfo: Path) -> None:
    entries = READ_MOUNT_TABLE(str(mountinfo))
    assert [(e.device, e.mountpoint, e.fstype, e.source) for e in entries] == [
        ("254:0", "/", "ext4", "/dev/vda"),
        ("0:41", "/mnt/pacs", "fuse.encfs-pacs", "/srv/enc backing"),
        ("0:42", "/mnt/go\tfs", "fuse.gocryptfs", "/srv/cipher"),
        ("0:43", "/mnt/pacs", "fuse.encfs-pacs", "/srv/other"),
    ]


def test_fuse_mounts_and_the_device_of_the_top_mount(mountinfo: Path) -> None:
    assert mount.mounted_fuse_filesystems() == {"/mnt/pacs": "fuse.encfs-pacs",
                                                "/mnt/go\tfs": "fuse.gocryptfs"}
    assert mount._mount_device("/mnt/pacs") == "0:43"  # the mount on top, as the kernel sees it
    assert mount._mount_device("/nowhere") is None


def test_status_lists_only_encfs_pacs_mounts_with_their_backing_folder(mountinfo: Path) -> None:
    assert status._mount_table() == {"/mnt/pacs": "/srv/other"}
