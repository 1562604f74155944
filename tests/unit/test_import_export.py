"""import and export at the store level (no mount): round trip, resume, verification,
--remove-source, conflicts, source changes, disk full, special files, progress."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import stat
from pathlib import Path

import pytest

from encfs_pacs import store
from encfs_pacs.errors import DestinationNotEmpty, UsageError, VolumeBusy
from encfs_pacs.maintenance import codec, exporter, fsck, importer
from encfs_pacs.maintenance.locking import maintenance_lock

from . import sample_tree

SECRET = store.Secret("passphrase", b"import tests: not a secret")


@pytest.fixture
def volume(tmp_path: Path) -> store.Volume:
    store.create_volume(tmp_path / "backing", SECRET, scrypt_log_n=10)
    return store.unlock(tmp_path / "backing", SECRET)


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    return sample_tree.build(tmp_path / "plain")


def visible_files(volume: store.Volume) -> dict[str, bytes]:
    """Plaintext of every file under its name in the volume (what a mount would show)."""
    out = {}
    for entry_path in volume.backing.rglob("*"):
        rel = str(entry_path.relative_to(volume.backing))
        if rel.split("/")[0] == store.META_DIR or entry_path.is_symlink() or not entry_path.is_file():
            continue
        fd = os.open(entry_path, os.O_RDONLY)
        try:
            out[rel] = b"".join(codec.open_chunks(volume, fd))
        finally:
            os.close(fd)
    return out


class Recorder:
    def __init__(self) -> None:
        self.totals: tuple[int, int] | None = None
        self.files = self.nbytes = 0
        self.finished = False

    def start(self, files: int, nbytes: int) -> None:
        self.totals = (files, nbytes)

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        self.nbytes += nbytes

    def finish(self) -> None:
        self.finished = True


def test_round_trip_keeps_tree_content_and_metadata(volume: store.Volume, plain: Path,
                                                    tmp_path: Path) -> None:
    before = sample_tree.snapshot(plain)
    progress = Recorder()
    summary = importer.import_tree(plain, volume, progress=progress)
    assert summary.ok, summary.as_dict()
    files = sample_tree.regular_files(plain)
    assert summary.files_done + summary.hard_links == len(files)
    assert summary.hard_links == 1 and summary.symlinks == 1
    assert summary.bytes_done == sum(len(v) for k, v in files.items() if k != "hardlink.dcm")
    assert progress.totals == (len(files), sum(len(v) for v in files.values()))
    assert (progress.files, progress.nbytes) == progress.totals and progress.finished
    assert visible_files(volume) == files
    # the backing holds ciphertext under the same names, with the plaintext metadata
    assert b"DICM" not in (volume.backing / "samples" / "CT_small.dcm").read_bytes()
    assert sample_tree.snapshot(plain) == before  # the source is untouched
    private = (volume.backing / "private.dcm").stat()
    assert stat.S_IMODE(private.st_mode) == 0o600 and private.st_mtime_ns == 1_500_000_000_987_654_321
    assert os.readlink(volume.backing / "latest.dcm") == "studies/1.2.840.1/series-1/IM0001.dcm"
    assert (volume.backing / "hardlink.dcm").stat().st_ino == \
        (volume.backing / "studies/1.2.840.1/series-1/IM0001.dcm").stat().st_ino
    assert stat.S_IMODE((volume.backing / "readonly-folder").stat().st_mode) == 0o555
    assert not (volume.backing / ".encfs-pacs" / "import-staging").exists()
    assert fsck.fsck(volume).clean
    # and back out again: export gives exactly the source tree
    dest = tmp_path / "exported"
    summary = exporter.export_volume(volume, dest)
    assert summary.ok, summary.as_dict()
    assert sample_tree.snapshot(dest) == before
    linked = dest / "studies/1.2.840.1/series-1/IM0001.dcm"
    assert (dest / "hardlink.dcm").stat().st_ino == linked.stat().st_ino


def test_rerun_skips_finished_files_without_rewriting_them(volume: store.Volume, plain: Path) -> None:
    importer.import_tree(plain, volume)
    stored = {p: (p.stat().st_ino, p.stat().st_ctime_ns, p.read_bytes())
              for p in volume.backing.rglob("*.dcm") if not p.is_symlink()}
    summary = importer.import_tree(plain, volume)
    assert summary.ok and summary.files_done == 0
    assert summary.skipped_files == len(sample_tree.regular_files(plain))
    for path, (ino, ctime, data) in stored.items():
        st = path.stat()
        assert (st.st_ino, st.st_ctime_ns, path.read_bytes()) == (ino, ctime, data), path


def test_interrupted_run_resumes(volume: store.Volume, plain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop the import at the 40th file (an exception from inside the copy, after its staged
    file was written); a rerun does the rest and the result equals the source."""
    real_seal, calls = codec.seal, {"n": 0}

    def seal_then_die(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        result = real_seal(*args, **kwargs)
        if calls["n"] == 40:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(codec, "seal", seal_then_die)
    with pytest.raises(KeyboardInterrupt):
        importer.import_tree(plain, volume)
    monkeypatch.undo()
    partial = visible_files(volume)
    files = sample_tree.regular_files(plain)
    assert 30 < len(partial) < len(files)
    assert all(files[k] == v for k, v in partial.items())  # nothing half-written is visible
    summary = importer.import_tree(plain, volume)
    assert summary.ok and summary.skipped_files == len(partial)
    assert visible_files(volume) == files


def test_staging_leftovers_are_deleted_and_counted(volume: store.Volume, plain: Path) -> None:
    staging = importer.staging_dir(volume)
    staging.mkdir()
    (staging / "123-4.part").write_bytes(b"EPAC half a file")
    summary = importer.import_tree(plain, volume)
    assert summary.leftovers_removed == 1 and not staging.exists()


def test_verification_failure_keeps_the_source_and_writes_nothing(
        volume: store.Volume, plain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = codec.plaintext_digest

    def wrong_for_ct(vol, fd, tick=None):  # noqa: ANN001, ANN202
        size, digest = real(vol, fd)
        return (size, "0" * 64) if size == (plain / "samples/CT_small.dcm").stat().st_size else (size, digest)

    monkeypatch.setattr(codec, "plaintext_digest", wrong_for_ct)
    summary = importer.import_tree(plain, volume, remove_source=True)
    failed = {f.path: f.reason for f in summary.failed}
    assert "does not decrypt to the source bytes" in failed["samples/CT_small.dcm"]
    assert (plain / "samples/CT_small.dcm").exists()  # not removed
    assert not (volume.backing / "samples/CT_small.dcm").exists()  # not visible
    assert not importer.staging_dir(volume).exists()  # the staged copy was deleted
    assert not summary.ok


def test_remove_source_deletes_only_verified_files(volume: store.Volume, plain: Path) -> None:
    files = sample_tree.regular_files(plain)
    summary = importer.import_tree(plain, volume, remove_source=True)
    assert summary.ok, summary.as_dict()
    assert summary.sources_removed == len(files) + 1  # + the symlink
    assert visible_files(volume) == files
    assert not any(p.is_file() for p in plain.rglob("*"))
    assert not list(plain.iterdir())  # emptied folders are removed too


def test_remove_source_on_a_rerun_verifies_content_first(volume: store.Volume, plain: Path) -> None:
    importer.import_tree(plain, volume)
    # same size and time, other content: the quick check passes, the content check must not
    target = volume.backing / "exactly-64KiB.bin"
    st = target.stat()
    # flip the byte rather than write a fixed one: the content is random and could hold it already
    flipped = bytes([(plain / "exactly-64KiB.bin").read_bytes()[10] ^ 0xFF])
    handle = volume.open("/exactly-64KiB.bin", os.O_RDWR)
    try:
        handle.write(flipped, 10)
    finally:
        handle.close()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    summary = importer.import_tree(plain, volume, remove_source=True)
    assert [f.path for f in summary.failed] == ["exactly-64KiB.bin"]
    assert (plain / "exactly-64KiB.bin").exists()
    assert not (plain / "private.dcm").exists()


def test_conflicting_file_is_not_replaced_unless_asked(volume: store.Volume, plain: Path) -> None:
    handle = volume.create("/private.dcm", 0o644, os.O_WRONLY)
    try:
        handle.write(b"another file already in the volume", 0)
    finally:
        handle.close()
    summary = importer.import_tree(plain, volume)
    assert [f.path for f in summary.failed] == ["private.dcm"]
    assert "not replaced without --replace-changed" in summary.failed[0].reason
    assert visible_files(volume)["private.dcm"] == b"another file already in the volume"
    summary = importer.import_tree(plain, volume, replace_changed=True)
    assert summary.ok and summary.files_done == 1
    assert visible_files(volume)["private.dcm"] == (plain / "private.dcm").read_bytes()


def test_source_changing_during_read_is_not_imported(volume: store.Volume, plain: Path) -> None:
    target = plain / "two-chunks-plus-one.bin"

    class Appender(Recorder):
        def advance(self, files: int = 0, nbytes: int = 0) -> None:
            super().advance(files, nbytes)
            if nbytes == target.stat().st_size:  # its one read batch just went through
                with open(target, "ab") as out:
                    out.write(b"more")

    summary = importer.import_tree(plain, volume, progress=Appender())
    failed = {f.path: f.reason for f in summary.failed}
    assert "changed while it was read" in failed["two-chunks-plus-one.bin"]
    assert not (volume.backing / "two-chunks-plus-one.bin").exists()
    summary = importer.import_tree(plain, volume)
    assert summary.ok and summary.files_done == 1
    assert visible_files(volume)["two-chunks-plus-one.bin"] == target.read_bytes()


def test_disk_full_stops_and_resumes(volume: store.Volume, plain: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real, written = codec.write_all, {"n": 0}

    def full_after_a_while(fd: int, data: bytes) -> None:
        written["n"] += 1
        if written["n"] > 60:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(codec, "write_all", full_after_a_while)
    summary = importer.import_tree(plain, volume)
    assert summary.stopped and "No space left" in summary.stopped and len(summary.failed) == 1
    monkeypatch.undo()
    partial = visible_files(volume)
    assert partial and all(sample_tree.regular_files(plain)[k] == v for k, v in partial.items())
    summary = importer.import_tree(plain, volume)
    assert summary.ok and visible_files(volume) == sample_tree.regular_files(plain)


def test_special_and_reserved_entries(volume: store.Volume, tmp_path: Path) -> None:
    plain = tmp_path / "odd"
    plain.mkdir()
    (plain / ".encfs-pacs").mkdir()
    (plain / ".encfs-pacs" / "volume.json").write_text("{}")  # reported once, not descended into
    (plain / "sub").mkdir()
    (plain / "sub" / ".encfs-pacs").write_bytes(b"an ordinary name below the top")
    (plain / ".fuse_hidden0001").write_bytes(b"x")
    os.mkfifo(plain / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(plain / "sock"))
    try:
        summary = importer.import_tree(plain, volume)
    finally:
        sock.close()
    assert sorted(f.path for f in summary.failed) == [".encfs-pacs", ".fuse_hidden0001"]
    assert [f.path for f in summary.not_copied] == ["sock"]
    assert stat.S_ISFIFO((volume.backing / "fifo").lstat().st_mode)
    assert visible_files(volume) == {"sub/.encfs-pacs": b"an ordinary name below the top"}


def test_overlapping_folders_are_refused(volume: store.Volume, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="overlap"):
        importer.import_tree(tmp_path, volume)
    inner = volume.backing / "inside"
    inner.mkdir()
    with pytest.raises(UsageError, match="overlap"):
        importer.import_tree(inner, volume)
    with pytest.raises(UsageError, match="not a folder"):
        importer.import_tree(tmp_path / "missing", volume)


def test_import_refuses_while_another_holds_the_lock(volume: store.Volume, plain: Path) -> None:
    with maintenance_lock(volume.backing, exclusive=True, what="test"), pytest.raises(VolumeBusy):
        importer.import_tree(plain, volume)


# ------------------------------------------------------------------------- export


def test_export_refuses_non_empty_destination(volume: store.Volume, plain: Path, tmp_path: Path) -> None:
    importer.import_tree(plain, volume)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "something").write_text("x")
    with pytest.raises(DestinationNotEmpty):
        exporter.export_volume(volume, dest)
    with pytest.raises(UsageError, match="inside the volume"):
        exporter.export_volume(volume, volume.backing / "out")


def test_export_resume_and_damaged_file(volume: store.Volume, plain: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    importer.import_tree(plain, volume)
    damaged = volume.backing / "two-chunks-plus-one.bin"
    raw = bytearray(damaged.read_bytes())
    raw[volume.layout.chunk_offset(1) + 100] ^= 1
    damaged.write_bytes(bytes(raw))
    dest = tmp_path / "dest"
    real, calls = codec.open_chunks, {"n": 0}

    def die_at_20(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(codec, "open_chunks", die_at_20)
    with pytest.raises(KeyboardInterrupt):
        exporter.export_volume(volume, dest)
    monkeypatch.undo()
    with pytest.raises(DestinationNotEmpty):
        exporter.export_volume(volume, dest)
    summary = exporter.export_volume(volume, dest, resume=True)
    assert summary.skipped_files >= 18
    assert [f.path for f in summary.failed] == ["two-chunks-plus-one.bin"]
    assert "chunk 1 failed authentication" in summary.failed[0].reason
    assert not (dest / "two-chunks-plus-one.bin").exists()  # no partial plaintext
    expected = sample_tree.regular_files(plain)
    del expected["two-chunks-plus-one.bin"]
    assert sample_tree.regular_files(dest) == expected
    assert not (dest / exporter.STAGING_DIR).exists()


def test_sha256_of_stored_file_matches_source(volume: store.Volume, plain: Path) -> None:
    importer.import_tree(plain, volume)
    fd = os.open(volume.backing / "samples" / "CT_small.dcm", os.O_RDONLY)
    try:
        size, digest = codec.plaintext_digest(volume, fd)
    finally:
        os.close(fd)
    data = (plain / "samples" / "CT_small.dcm").read_bytes()
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())


def test_source_given_through_a_symlink(volume: store.Volume, plain: Path, tmp_path: Path) -> None:
    link = tmp_path / "archive-link"
    os.symlink(plain, link)
    summary = importer.import_tree(link, volume)
    assert summary.ok and visible_files(volume) == sample_tree.regular_files(plain)
