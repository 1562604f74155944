"""Patient and study for audit records, read from DICOM headers through the encrypted volume."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest

from encfs_pacs import store
from encfs_pacs.audit.dicom import AUDITED_TAGS, WHOLE_FILE_BYTES, DicomTagCache

SECRET = store.Secret("passphrase", b"unit tests")
SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture
def volume(tmp_path: Path) -> store.Volume:
    backing = tmp_path / "backing"
    store.create_volume(backing, SECRET, scrypt_log_n=10)
    return store.unlock(backing, SECRET)


def put(volume: store.Volume, path: str, data: bytes) -> None:
    handle = volume.create(path, 0o644, os.O_WRONLY)
    handle.write(data, 0)
    handle.close()


def test_tags_of_a_real_ct_image(volume: store.Volume) -> None:
    source = SAMPLES / "CT_small.dcm"
    expected = pydicom.dcmread(source, stop_before_pixels=True)
    put(volume, "/ct.dcm", source.read_bytes())
    tags = DicomTagCache(volume).tags("/ct.dcm")
    assert tags == {"PatientID": str(expected.PatientID),
                    "StudyInstanceUID": str(expected.StudyInstanceUID),
                    "SOPInstanceUID": str(expected.SOPInstanceUID), "Modality": "CT"}


def test_not_dicom_missing_and_directories_give_none(volume: store.Volume) -> None:
    put(volume, "/notes.txt", b"x" * 500)
    volume.mkdir("/folder", 0o755)
    cache = DicomTagCache(volume)
    assert cache.tags("/notes.txt") is None
    assert cache.tags("/folder") is None
    assert cache.tags("/missing.dcm") is None


def test_damaged_header_gives_none_not_an_error(volume: store.Volume) -> None:
    data = bytearray((SAMPLES / "CT_small.dcm").read_bytes())
    data[140:400] = b"\xff" * 260  # garbage right after the DICM marker
    put(volume, "/bad.dcm", bytes(data))
    assert DicomTagCache(volume).tags("/bad.dcm") is None


def test_read_once_per_file_version(volume: store.Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    source = SAMPLES / "MR_small.dcm"
    put(volume, "/mr.dcm", source.read_bytes())
    cache = DicomTagCache(volume)
    opened = []
    real_open = volume.open
    monkeypatch.setattr(volume, "open", lambda *a, **kw: opened.append(a) or real_open(*a, **kw))
    first = cache.tags("/mr.dcm")
    for _ in range(5):
        assert cache.tags("/mr.dcm") == first
    assert len(opened) == 1
    # a new version of the file (other content, other mtime) is read again
    handle = real_open("/mr.dcm", os.O_WRONLY | os.O_TRUNC)
    handle.write((SAMPLES / "CT_small.dcm").read_bytes(), 0)
    handle.close()
    os.utime(volume.backing_path("/mr.dcm"), ns=(1, 1))
    assert cache.tags("/mr.dcm")["Modality"] == "CT"
    assert len(opened) == 2


def test_only_the_header_is_read(volume: store.Volume, tmp_path: Path) -> None:
    """A 30 MB multi-frame image costs a header read, not a full decrypt."""
    source = SAMPLES / "CT_small.dcm"
    big = tmp_path / "big.dcm"
    shutil.copy(source, big)
    with open(big, "ab") as out:  # trailing bytes after the pixel data: never read by the parser
        out.write(b"\0" * (30 << 20))
    put(volume, "/big.dcm", big.read_bytes())
    reads: list[int] = []
    real_open = volume.open

    def counting_open(*args: Any, **kwargs: Any) -> store.OpenFile:
        handle = real_open(*args, **kwargs)
        real_read = handle.read
        handle.read = lambda size, offset: reads.append(size) or real_read(size, offset)  # type: ignore
        return handle

    volume.open = counting_open  # type: ignore[method-assign]
    assert DicomTagCache(volume).tags("/big.dcm")["Modality"] == "CT"
    assert sum(reads) < 1 << 20


@pytest.mark.parametrize("data", [b"not an image" * 100, b"\0" * 128 + b"DICM" + b"\0" * 64])
def test_the_lookup_leaves_the_atime_alone(volume: store.Volume, data: bytes) -> None:
    """The audit trail's own header read is not an access: an old atime stays (relatime
    would otherwise set it to now, as `touch -m` + stat showed)."""
    put(volume, "/f", data)
    backing = volume.backing_path("/f")
    os.utime(backing, ns=(1_000_000_001_123_456_789, 1_100_000_002_987_654_321))
    DicomTagCache(volume).tags("/f")
    assert os.stat(backing).st_atime_ns == 1_000_000_001_123_456_789


def dcmread_tags(source: Path) -> dict[str, str] | None:
    """What pydicom's own dcmread makes of the audited tags (the lookup stops earlier)."""
    try:
        dataset = pydicom.dcmread(source, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not a Part 10 file: the lookup says None too
        return None
    tags = {tag: str(dataset.get(tag)) for tag in AUDITED_TAGS if dataset.get(tag) not in (None, "")}
    return tags or None


@pytest.mark.parametrize("whole_file_bytes", [WHOLE_FILE_BYTES, 0], ids=["in-memory", "streamed"])
def test_every_sample_gives_the_tags_dcmread_gives(volume: store.Volume, monkeypatch: pytest.MonkeyPatch,
                                                   whole_file_bytes: int) -> None:
    """Stopping after the last audited tag, in memory or streamed, changes no answer: explicit and
    implicit VR, big endian, deflated, compressed pixel data, sequences, files without meta."""
    monkeypatch.setattr("encfs_pacs.audit.dicom.WHOLE_FILE_BYTES", whole_file_bytes)
    samples = sorted(SAMPLES.glob("*.dcm"))
    assert len(samples) > 50
    cache = DicomTagCache(volume)
    for number, source in enumerate(samples):
        put(volume, f"/{number}.dcm", source.read_bytes())
        assert cache.tags(f"/{number}.dcm") == dcmread_tags(source), source.name
