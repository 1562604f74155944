"""Failures in the middle of an operation leave the volume as it was (review findings)."""

from __future__ import annotations

import errno
import os
import resource
import signal
from pathlib import Path

import pytest

from encfs_pacs import store

from .storekit import small_volume


@pytest.fixture
def volume(tmp_path: Path) -> store.Volume:
    return small_volume(tmp_path)


@pytest.fixture
def file_size_limit():
    """Make the kernel cut writes short at a byte limit (EFBIG), as a full disk would."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def set_limit(limit: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))

    yield set_limit
    resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
    signal.signal(signal.SIGXFSZ, old_handler)


def test_failed_append_keeps_stored_data_and_size(volume: store.Volume, file_size_limit, tmp_path: Path
                                                  ) -> None:
    handle = volume.create("/study.dcm", 0o600, os.O_RDWR)
    stored = os.urandom(5000)
    handle.write(stored, 0)
    handle.fsync(False)
    backing_size = os.path.getsize(tmp_path / "b" / "study.dcm")
    file_size_limit(backing_size + 3000)  # the append below needs more than that
    with pytest.raises(OSError) as failure:
        handle.write(os.urandom(8000), 5000)
    assert failure.value.errno == errno.EFBIG
    file_size_limit(resource.RLIM_INFINITY)
    assert handle.read(100_000, 0) == stored
    assert os.path.getsize(tmp_path / "b" / "study.dcm") == backing_size
    handle.close()
    reopened = volume.open("/study.dcm", os.O_RDONLY)
    assert reopened.read(100_000, 0) == stored
    reopened.close()


def test_failed_create_leaves_no_file_and_no_state(volume: store.Volume, file_size_limit, tmp_path: Path
                                                   ) -> None:
    file_size_limit(10)  # too small for the header and the empty final chunk
    with pytest.raises(OSError):
        volume.create("/new.dcm", 0o600, os.O_RDWR)
    file_size_limit(resource.RLIM_INFINITY)
    assert not (tmp_path / "b" / "new.dcm").exists()
    assert volume._states == {}


def test_zero_length_write_past_end_does_not_grow(volume: store.Volume) -> None:
    handle = volume.create("/f", 0o600, os.O_RDWR)
    handle.write(b"abc", 0)
    assert handle.write(b"", 10_000) == 0
    assert handle.read(100, 0) == b"abc"
    handle.close()


def test_rename_noreplace_with_non_utf8_name(volume: store.Volume) -> None:
    name = os.fsdecode(b"/caf\xe9.dcm")  # how the binding hands over a Latin-1 name
    volume.create(name, 0o600, os.O_RDWR).close()
    renameat2_noreplace = 1
    volume.rename(name, "/cafe.dcm", renameat2_noreplace)
    assert "cafe.dcm" in os.listdir(volume.backing)
