"""Create and O_TRUNC cut the backing file to 0 before writing the new header
(store.Volume._reset_to_empty): on ext4 that starts writing a new file out at its close
(auto_da_alloc), so a power loss soon after leaves fewer 0-byte (damaged) files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from encfs_pacs import store

from .storekit import small_volume


@pytest.fixture
def volume(tmp_path: Path) -> store.Volume:
    return small_volume(tmp_path)


@pytest.fixture
def truncations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.ftruncate

    def counting(fd: int, length: int) -> None:
        calls.append(length)
        real(fd, length)

    monkeypatch.setattr(os, "ftruncate", counting)
    return calls


def test_create_cuts_the_new_backing_file_to_zero(volume: store.Volume, truncations: list[int]) -> None:
    handle = volume.create("/new.dcm", 0o600, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    handle.write(b"image", 0)
    handle.close()
    assert truncations == [0]
    reopened = volume.open("/new.dcm", os.O_RDONLY)
    assert reopened.read(100, 0) == b"image"
    reopened.close()


def test_o_trunc_of_a_file_with_content_cuts_it(volume: store.Volume, truncations: list[int]) -> None:
    handle = volume.create("/old.dcm", 0o600, os.O_RDWR)
    handle.write(os.urandom(20_000), 0)  # several chunks: the rewrite alone would leave a tail
    handle.close()
    backing_before = os.path.getsize(volume.backing_path("/old.dcm"))
    truncations.clear()
    handle = volume.open("/old.dcm", os.O_RDWR | os.O_TRUNC)
    handle.write(b"new", 0)
    handle.close()
    assert truncations == [0]
    assert os.path.getsize(volume.backing_path("/old.dcm")) < backing_before
    reopened = volume.open("/old.dcm", os.O_RDONLY)
    assert reopened.read(100, 0) == b"new"
    reopened.close()
