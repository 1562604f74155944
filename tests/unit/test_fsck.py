"""fsck finds each kind of damage (naming the chunk), each kind of leftover, and changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from encfs_pacs import store
from encfs_pacs.maintenance import fsck, importer

from . import sample_tree
from .test_fixture_volumes import FIXTURES, VOLUMES

SECRET = store.Secret("passphrase", b"fsck tests: not a secret")
CS = 4096  # small chunks: many chunks per sample file


@pytest.fixture
def volume(tmp_path: Path) -> store.Volume:
    backing = tmp_path / "backing"
    store.create_volume(backing, SECRET, chunk_size=CS, scrypt_log_n=10)
    volume = store.unlock(backing, SECRET)
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("a.bin", "b.bin"):
        (plain / name).write_bytes(os.urandom(5 * CS + 100))  # 6 chunks each
    (plain / "exact.bin").write_bytes(os.urandom(3 * CS))
    (plain / "empty").write_bytes(b"")
    shutil.copy(sample_tree.PYDICOM_SAMPLES / "CT_small.dcm", plain / "ct.dcm")
    assert importer.import_tree(plain, volume).ok
    return volume


def stored(volume: store.Volume, name: str) -> Path:
    return volume.backing / name


def edit(path: Path, change) -> None:  # noqa: ANN001
    data = bytearray(path.read_bytes())
    change(data)
    path.write_bytes(bytes(data))


def damaged(result: fsck.FsckResult) -> dict[str, fsck.Finding]:
    return {f.path: f for f in result.damaged}


def test_clean_volume(volume: store.Volume) -> None:
    result = fsck.fsck(volume)
    assert result.clean and not result.leftovers
    assert result.files_checked == 5
    assert result.chunks_checked == 6 + 6 + 3 + 1 + volume.layout.chunk_count(
        (sample_tree.PYDICOM_SAMPLES / "CT_small.dcm").stat().st_size)
    json.dumps(result.as_dict())


@pytest.mark.parametrize("chunk", [0, 2, 5])
def test_flipped_byte_names_the_chunk(volume: store.Volume, chunk: int) -> None:
    offset = volume.layout.chunk_offset(chunk) + 40
    edit(stored(volume, "a.bin"), lambda d: d.__setitem__(offset, d[offset] ^ 0x80))
    result = fsck.fsck(volume)
    finding = damaged(result)["a.bin"]
    assert finding.kind == "authentication" and finding.bad_chunks == [chunk]
    end = min((chunk + 1) * CS, 5 * CS + 100)
    assert finding.lost_bytes == [(chunk * CS, end)]
    assert list(damaged(result)) == ["a.bin"]


def test_truncated_at_a_chunk_boundary(volume: store.Volume) -> None:
    path = stored(volume, "a.bin")
    os.truncate(path, volume.layout.chunk_offset(3))  # chunks 0..2 remain: a valid length
    finding = damaged(fsck.fsck(volume))["a.bin"]
    assert finding.kind == "truncated" and "after chunk 2" in finding.detail and finding.bad_chunks == [2]


def test_truncated_mid_chunk(volume: store.Volume) -> None:
    path = stored(volume, "a.bin")
    os.truncate(path, volume.layout.chunk_offset(2) + 10)
    finding = damaged(fsck.fsck(volume))["a.bin"]
    assert finding.kind == "impossible-length" and "truncated mid-chunk" in finding.detail
    assert "ends after chunk 1" in finding.detail


def test_cut_to_nothing_and_to_the_header(volume: store.Volume) -> None:
    os.truncate(stored(volume, "a.bin"), 0)
    os.truncate(stored(volume, "b.bin"), 24)
    found = damaged(fsck.fsck(volume))
    assert found["a.bin"].kind == "malformed-header"
    assert found["b.bin"].kind == "impossible-length"


def test_bytes_appended(volume: store.Volume) -> None:
    with open(stored(volume, "exact.bin"), "ab") as out:
        out.write(os.urandom(28))  # an empty "chunk" after full ones: a length no file has
    finding = damaged(fsck.fsck(volume))["exact.bin"]
    assert finding.kind == "impossible-length" and "appended" in finding.detail


def test_swapped_chunks_between_two_files(volume: store.Volume) -> None:
    a, b = stored(volume, "a.bin"), stored(volume, "b.bin")
    start, end = volume.layout.chunk_offset(1), volume.layout.chunk_offset(2)
    da, db = bytearray(a.read_bytes()), bytearray(b.read_bytes())
    da[start:end], db[start:end] = db[start:end], da[start:end]
    a.write_bytes(bytes(da))
    b.write_bytes(bytes(db))
    found = damaged(fsck.fsck(volume))
    assert found["a.bin"].bad_chunks == [1] and found["b.bin"].bad_chunks == [1]


def test_swapped_chunks_within_a_file(volume: store.Volume) -> None:
    def swap(d: bytearray) -> None:
        one, two = volume.layout.chunk_offset(1), volume.layout.chunk_offset(2)
        three = volume.layout.chunk_offset(3)
        d[one:three] = d[two:three] + d[one:two]

    edit(stored(volume, "b.bin"), swap)
    assert damaged(fsck.fsck(volume))["b.bin"].bad_chunks == [1, 2]


def test_malformed_header(volume: store.Volume) -> None:
    edit(stored(volume, "ct.dcm"), lambda d: d.__setitem__(slice(0, 4), b"XXXX"))
    finding = damaged(fsck.fsck(volume))["ct.dcm"]
    assert finding.kind == "malformed-header" and "magic" in finding.detail


def test_file_id_changed_fails_every_chunk(volume: store.Volume) -> None:
    edit(stored(volume, "b.bin"), lambda d: d.__setitem__(10, d[10] ^ 1))
    assert damaged(fsck.fsck(volume))["b.bin"].bad_chunks == list(range(6))


def test_leftovers_are_reported_not_damage(volume: store.Volume) -> None:
    meta = volume.backing / store.META_DIR
    (meta / "orphans").mkdir()
    (meta / "orphans" / ".fuse_hidden000a").write_bytes(b"x")
    (meta / "volume.json.tmp").write_bytes(b"{}")
    (meta / "import-staging").mkdir()
    (meta / "import-staging" / "1-2.part").write_bytes(b"half")
    (meta / "stray").write_bytes(b"?")
    (volume.backing / ".fuse_hidden0001").write_bytes(b"x")
    result = fsck.fsck(volume)
    assert result.clean
    assert sorted(f.path for f in result.leftovers) == sorted([
        ".encfs-pacs/orphans/.fuse_hidden000a", ".encfs-pacs/volume.json.tmp",
        ".encfs-pacs/import-staging/1-2.part", ".encfs-pacs/stray", ".fuse_hidden0001"])


def test_audit_files_are_known_and_waiting_events_listed(volume: store.Volume) -> None:
    from encfs_pacs.audit import create_anchor
    from encfs_pacs.audit.spool import queue_event, rejected_path

    create_anchor(volume.backing, volume.master_key)  # audit-key.json: part of every volume
    queued = queue_event(volume.backing, {"event": "volume-checked", "outcome": "clean"}, volume.master_key)
    rejected_path(volume.backing).mkdir(mode=0o700)
    (rejected_path(volume.backing) / "forged.json").write_bytes(b"{}")
    result = fsck.fsck(volume)
    assert result.clean
    found = {f.path: f.detail for f in result.leftovers}
    assert set(found) == {f".encfs-pacs/audit-spool/{queued.path.name}",
                          ".encfs-pacs/audit-spool-rejected/forged.json"}
    assert "waiting for the next mount" in found[f".encfs-pacs/audit-spool/{queued.path.name}"]
    assert "security alert" in found[".encfs-pacs/audit-spool-rejected/forged.json"]


def tree_state(root: Path) -> dict[str, tuple]:
    """Every inode's mode, size and times, and file contents read with O_NOATIME (so taking
    the state does not itself change the access times it records)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ["."]:
            path = Path(dirpath) / name
            st = path.lstat()
            content = None
            if path.is_file():
                fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
                try:
                    content = hashlib.sha256(os.read(fd, st.st_size + 1)).hexdigest()
                finally:
                    os.close(fd)
            state[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_atime_ns,
                                content)
    return state


def test_fsck_changes_nothing_not_even_access_times(volume: store.Volume) -> None:
    edit(stored(volume, "a.bin"), lambda d: d.__setitem__(100, d[100] ^ 1))
    # access times older than the modification time: relatime would update them on a read
    for path in volume.backing.rglob("*"):
        if path.is_file():
            st = path.stat()
            os.utime(path, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))
    before = tree_state(volume.backing)
    assert tree_state(volume.backing) == before  # the check itself does not disturb
    result = fsck.fsck(volume)
    assert not result.clean
    assert tree_state(volume.backing) == before
    # the control: an ordinary read does update these access times, so the test can fail
    (volume.backing / "a.bin").read_bytes()
    assert tree_state(volume.backing) != before


@pytest.mark.parametrize("name", sorted(VOLUMES))
def test_fixture_volumes_are_clean(name: str, tmp_path: Path) -> None:
    copy = tmp_path / name
    shutil.copytree(FIXTURES / name, copy, symlinks=True)
    result = fsck.fsck(store.unlock(copy, VOLUMES[name][0]()))
    assert result.clean and not result.leftovers and result.files_checked == 8


def test_quarantine_moves_damaged_files_only_when_asked(volume: store.Volume, tmp_path: Path) -> None:
    edit(stored(volume, "a.bin"), lambda d: d.__setitem__(volume.layout.chunk_offset(4) + 50, 0))
    os.truncate(stored(volume, "exact.bin"), volume.layout.chunk_offset(1))
    damaged_a = stored(volume, "a.bin").read_bytes()
    dest = tmp_path / "quarantine"
    result, moved = fsck.fsck_and_quarantine(volume, dest)
    assert not result.clean and sorted(moved) == ["a.bin", "exact.bin"]
    assert not stored(volume, "a.bin").exists() and not stored(volume, "exact.bin").exists()
    assert (dest / "a.bin").read_bytes() == damaged_a  # ciphertext kept as found
    lines = [json.loads(line) for line in (dest / fsck.QUARANTINE_REPORT).read_text().splitlines()]
    by_path = {line["path"]: line for line in lines}
    assert by_path["a.bin"]["bad_chunks"] == [4] and by_path["a.bin"]["lost_bytes"] == [[4 * CS, 5 * CS]]
    assert by_path["exact.bin"]["kind"] == "truncated"
    after = fsck.fsck(volume)
    assert after.clean and after.files_checked == 3
    # a second damaged file of the same name does not overwrite the first in quarantine
    edit(stored(volume, "b.bin"), lambda d: d.__setitem__(30, d[30] ^ 1))
    os.rename(stored(volume, "b.bin"), stored(volume, "a.bin"))
    _, moved = fsck.fsck_and_quarantine(volume, dest)
    assert moved == ["a.bin"] and (dest / "a.bin.1").exists() and (dest / "a.bin").read_bytes() == damaged_a


def test_quarantine_folder_must_be_outside_the_volume(volume: store.Volume) -> None:
    from encfs_pacs.errors import UsageError

    with pytest.raises(UsageError, match="outside the volume"):
        fsck.fsck_and_quarantine(volume, volume.backing / "q")
