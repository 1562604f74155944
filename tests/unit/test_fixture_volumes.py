"""Volumes made by encfs-pacs v1 (tests/fixtures) must open with every later version.

The fixtures were made once by tests/fixtures/make_fixture_volumes.py and are never remade:
if this test fails, the code can no longer read archives that exist in hospitals. Fix the
code, not the fixture. Each test works on a copy, so a buggy version cannot alter them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from encfs_pacs import store
from encfs_pacs.errors import WrongPassphrase

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIXTURE_SECRET = b"fixture volume v1 - not a real secret"  # not a real secret: test data only
MANIFEST: dict[str, dict[str, Any]] = json.loads(
    (FIXTURES / "volume-v1-manifest.json").read_text(encoding="utf-8"))["entries"]

VOLUMES = {
    # name: (secret, chunk size, kdf)
    "volume-v1-scrypt": (lambda: store.Secret("passphrase", FIXTURE_SECRET), 65536, "scrypt"),
    "volume-v1-keyfile": (
        lambda: store.Secret("keyfile", (FIXTURES / "volume-v1-keyfile.unlock.bin").read_bytes()),
        4096, "keyfile"),
}


@pytest.fixture(params=sorted(VOLUMES))
def fixture_volume(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    copy = tmp_path / request.param
    shutil.copytree(FIXTURES / request.param, copy, symlinks=True)
    return request.param, copy


def _walk(volume: store.Volume, path: str = "/") -> dict[str, dict[str, Any]]:
    """Every entry as the mount would show it, found through the volume's own listing."""
    found: dict[str, dict[str, Any]] = {}
    fd = volume.open_dir(path)
    try:
        entries = list(volume.list_dir(fd))
    finally:
        os.close(fd)
    for entry in entries:
        child = path.rstrip("/") + "/" + entry.name
        mode = entry.type_bits
        if stat.S_ISDIR(mode):
            found[child] = {"type": "directory"}
            found.update(_walk(volume, child))
        elif stat.S_ISLNK(mode):
            found[child] = {"type": "symlink", "target": volume.readlink(child)}
        else:
            assert stat.S_ISREG(mode), child
            size = volume.getattr(child).size  # what a stat through the mount shows
            handle = volume.open(child, os.O_RDONLY)
            try:
                data = handle.read(size + 4096, 0)
            finally:
                handle.close()
            assert len(data) == size, f"{child}: stat size and content disagree"
            found[child] = {"type": "file", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return found


def test_manifest_covers_the_required_cases() -> None:
    files = {p: e for p, e in MANIFEST.items() if e["type"] == "file"}
    sizes = {e["size"] for e in files.values()}
    assert {0, 1, 65536, 65537} <= sizes and any(190_000 < s < 210_000 for s in sizes)
    assert any(p.endswith(".dcm") for p in files)
    assert any(e["type"] == "symlink" for e in MANIFEST.values())
    assert any(p.count("/") >= 3 for p in files)  # a nested directory


def test_fixture_reads_back_exactly(fixture_volume: tuple[str, Path]) -> None:
    name, backing = fixture_volume
    secret, _, _ = VOLUMES[name]
    volume = store.unlock(backing, secret())
    assert _walk(volume) == MANIFEST


def test_fixture_partial_reads(fixture_volume: tuple[str, Path]) -> None:
    """Reads at chunk boundaries and in the middle, as a PACS serving a frame would do."""
    name, backing = fixture_volume
    secret, chunk_size, _ = VOLUMES[name]
    volume = store.unlock(backing, secret())
    handle = volume.open("/about-200KB.bin", os.O_RDONLY)
    try:
        whole = handle.read(300_000, 0)
        for offset in (0, chunk_size - 1, chunk_size, 3 * chunk_size + 5, len(whole) - 3):
            assert handle.read(10, offset) == whole[offset:offset + 10]
        assert handle.read(10, len(whole)) == b""
    finally:
        handle.close()
    assert hashlib.sha256(whole).hexdigest() == MANIFEST["/about-200KB.bin"]["sha256"]


def test_fixture_dicom_parses(fixture_volume: tuple[str, Path]) -> None:
    pydicom = pytest.importorskip("pydicom")
    import io

    name, backing = fixture_volume
    volume = store.unlock(backing, VOLUMES[name][0]())
    path = "/studies/1.2.840.113619/series-1/CT_small.dcm"
    handle = volume.open(path, os.O_RDONLY)
    try:
        data = handle.read(MANIFEST[path]["size"], 0)
    finally:
        handle.close()
    dataset = pydicom.dcmread(io.BytesIO(data))
    assert dataset.Modality == "CT"


def test_fixture_config(fixture_volume: tuple[str, Path]) -> None:
    name, backing = fixture_volume
    _, chunk_size, kdf = VOLUMES[name]
    config = store.read_config(backing)
    assert (config.version, config.chunk_size, config.kdf) == (1, chunk_size, kdf)
    assert config.features == ("aes256gcm-chunks", "plaintext-names")
    if kdf == "scrypt":
        assert config.scrypt is not None and config.scrypt.log_n == 10


def test_fixture_refuses_a_wrong_secret(fixture_volume: tuple[str, Path]) -> None:
    name, backing = fixture_volume
    wrong = (store.Secret("passphrase", FIXTURE_SECRET + b"!") if VOLUMES[name][2] == "scrypt"
             else store.Secret("keyfile", bytes(32)))
    with pytest.raises(WrongPassphrase):
        store.unlock(backing, wrong)


def test_fixture_is_ciphertext_only(fixture_volume: tuple[str, Path]) -> None:
    _, backing = fixture_volume
    for path, entry in MANIFEST.items():
        if entry["type"] == "file" and entry["size"] >= 64:
            assert entry["sha256"] != hashlib.sha256((backing / path.lstrip("/")).read_bytes()).hexdigest()
    dicom = (backing / "studies/1.2.840.113619/series-1/CT_small.dcm").read_bytes()
    assert b"DICM" not in dicom


@pytest.mark.parametrize("name", sorted(VOLUMES))
def test_fixture_survives_a_git_checkout(name: str) -> None:
    """Git drops empty directories and keeps only the x bit: the checked-in tree must hold
    exactly the manifest plus the config, with no empty folder and no leftover temp file."""
    root = FIXTURES / name
    on_disk = set()
    for dirpath, dirnames, filenames in os.walk(root):
        assert dirnames or filenames, f"{dirpath} is empty: git would not keep it"
        for entry in dirnames + filenames:
            full = Path(dirpath) / entry
            if not (full.is_dir() and not full.is_symlink()):
                on_disk.add("/" + str(full.relative_to(root)))
    expected = {p for p, e in MANIFEST.items() if e["type"] != "directory"}
    assert on_disk == expected | {"/.encfs-pacs/volume.json"}
