"""A read-only open asks the kernel to start reading the backing file's first MiB at once
(store.Volume.open): the reader's first request comes right after, and a cold PACS study read
gains the time between (docs/performance.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from encfs_pacs import store

from .storekit import small_volume


@pytest.fixture
def advice(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    calls: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, what: int) -> None:
        calls.append((offset, length, what))
        real(fd, offset, length, what)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    return calls


def test_a_read_only_open_prefetches_the_start_of_the_file(tmp_path: Path,
                                                           advice: list[tuple[int, int, int]]) -> None:
    volume = small_volume(tmp_path)
    writer = volume.create("/image.dcm", 0o600, os.O_RDWR | os.O_CREAT)
    writer.write(b"pixels" * 1000, 0)
    writer.close()
    assert advice == []  # creating and writing prefetch nothing
    volume.open("/image.dcm", os.O_RDWR).close()
    assert advice == []
    reader = volume.open("/image.dcm", os.O_RDONLY)
    try:
        assert advice == [(0, store.PREFETCH_BYTES, os.POSIX_FADV_WILLNEED)]
        assert reader.read(6000, 0) == b"pixels" * 1000
    finally:
        reader.close()


def test_a_refused_hint_does_not_fail_the_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = small_volume(tmp_path)
    volume.create("/image.dcm", 0o600, os.O_RDWR | os.O_CREAT).close()

    def refusing(fd: int, offset: int, length: int, what: int) -> None:
        raise OSError(29, "Illegal seek")  # as for a pipe; some file systems refuse others

    monkeypatch.setattr(os, "posix_fadvise", refusing)
    volume.open("/image.dcm", os.O_RDONLY).close()


def test_the_dicom_tag_lookup_prefetches_nothing(tmp_path: Path,
                                                 advice: list[tuple[int, int, int]]) -> None:
    from pydicom.data import get_testdata_file

    from encfs_pacs.audit.dicom import DicomTagCache

    volume = small_volume(tmp_path)
    image = volume.create("/ct.dcm", 0o600, os.O_RDWR | os.O_CREAT)
    image.write(Path(get_testdata_file("CT_small.dcm")).read_bytes(), 0)  # type: ignore[arg-type]
    image.close()
    tags = DicomTagCache(volume).tags("/ct.dcm")
    assert tags is not None and tags["PatientID"]  # the file was read, as DICOM
    assert advice == []
