"""Maintenance commands through the real CLI: import killed with SIGKILL and resumed (then
checked through a real mount), progress on a terminal, passwd and recovery keys (prompts,
SIGKILL during passwd), fsck and export exit codes, disk full on a small tmpfs."""

from __future__ import annotations

import json
import os
import pty
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PASSPHRASE, run_cli  # tests/conftest.py: shared helpers
from unit import sample_tree  # tests/ is on sys.path (rootdir conftest); shared tree builder

from encfs_pacs import store
from encfs_pacs.errors import UsageError, WrongPassphrase
from encfs_pacs.maintenance import codec, importer

pytestmark = pytest.mark.integration

NEW_PASSPHRASE = "a new passphrase for the maintenance tests"


def popen_cli(*args: str | os.PathLike[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "encfs_pacs", *map(str, args)], text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def visible_plaintext(backing: Path, passphrase: str = PASSPHRASE) -> dict[str, bytes]:
    """Plaintext of every file visible under its own name in the backing folder."""
    volume = store.unlock(backing, store.Secret("passphrase", passphrase.encode()))
    out = {}
    for path in backing.rglob("*"):
        rel = str(path.relative_to(backing))
        if rel.split("/")[0] == store.META_DIR or path.is_symlink() or not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            out[rel] = b"".join(codec.open_chunks(volume, fd))
        finally:
            os.close(fd)
    return out


def unlocks_with(backing: Path, passphrase: str) -> bool:
    try:
        store.unlock(backing, store.Secret("passphrase", passphrase.encode()))
    except (WrongPassphrase, UsageError):
        return False
    return True


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    root = sample_tree.build(tmp_path / "plain")
    # a large file, so that a kill lands in the middle of writing one
    with open(root / "m-large-series.bin", "wb") as out:
        for _ in range(12):
            out.write(os.urandom(4 << 20))
    return root


def staged_bytes(backing: Path) -> int:
    try:
        return max((p.stat().st_size for p in (backing / ".encfs-pacs" / "import-staging").iterdir()),
                   default=0)
    except FileNotFoundError:
        return 0


def assert_nothing_half_written(backing: Path, plain: Path) -> dict[str, bytes]:
    visible = visible_plaintext(backing)
    source = sample_tree.regular_files(plain)
    for rel, data in visible.items():
        assert data == source[rel], f"{rel} is visible in the volume but not identical to its source"
    return visible


# ------------------------------------------------------------------------- import, SIGKILL, resume


def test_import_killed_mid_file_resumes_and_mounts_identical(
        volume: Path, passphrase_file: Path, plain: Path, mount_volume) -> None:  # noqa: ANN001
    expected = sample_tree.snapshot(plain)
    source = sample_tree.regular_files(plain)
    # 1) SIGKILL while a large file is half written to its staging name
    proc = popen_cli("import", plain, volume, "--passphrase-file", passphrase_file)
    deadline = time.monotonic() + 60
    while staged_bytes(volume) < (8 << 20) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the import finished before it could be killed"
    assert staged_bytes(volume) > 0  # killed mid-file: a half-written staging file exists...
    first = assert_nothing_half_written(volume, plain)  # ...and nothing half-written is visible
    assert 0 < len(first) < len(source) and "m-large-series.bin" not in first
    # 2) more kills at random moments of the following runs
    rng = random.Random(6)
    for _ in range(2):
        proc = popen_cli("import", plain, volume, "--passphrase-file", passphrase_file)
        time.sleep(rng.uniform(0.3, 0.8))
        proc.kill()
        proc.communicate()
        assert_nothing_half_written(volume, plain)
    # 3) the rerun finishes, redoing nothing that was finished
    done_before = len(visible_plaintext(volume))
    result = run_cli("import", plain, volume, "--passphrase-file", passphrase_file, "--json")
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["failed"] == []
    assert summary["skipped_files"] >= done_before - 1  # a hard link counts once
    assert summary["files_done"] + summary["skipped_files"] + summary["hard_links"] == len(source)
    assert visible_plaintext(volume) == source
    assert not (volume / ".encfs-pacs" / "import-staging").exists()
    assert sample_tree.snapshot(plain) == expected  # the source was not touched
    # 4) through a real mount, the tree is the source tree: content, modes, times, links
    mounted = mount_volume(None)
    assert sample_tree.snapshot(mounted.mountpoint) == expected
    assert run_cli("fsck", volume, "--passphrase-file", passphrase_file).returncode == 0


def test_import_progress_on_a_terminal(volume: Path, passphrase_file: Path, tmp_path: Path) -> None:
    plain = sample_tree.build(tmp_path / "plain")
    code, output = run_on_terminal(["import", str(plain), str(volume), "--passphrase-file",
                                    str(passphrase_file)], [])
    assert code == 0, output
    files = len(sample_tree.regular_files(plain))
    assert "importing" in output and "100%" in output
    # (the bar is redrawn at most ten times a second, so which count is drawn last varies)
    assert f"/{files} files" in output and "/s" in output
    assert f"imported {files - 1} file(s)" in output  # one is a hard link


def test_import_without_terminal_prints_no_bar(volume: Path, passphrase_file: Path, tmp_path: Path) -> None:
    plain = sample_tree.build(tmp_path / "plain", extras=False)
    result = run_cli("import", plain, volume, "--passphrase-file", passphrase_file)
    assert "%" not in result.stderr and "importing" not in result.stderr
    assert result.stdout.startswith("imported ")


def test_import_into_a_mounted_volume(volume: Path, passphrase_file: Path, tmp_path: Path,
                                      mount_volume) -> None:  # noqa: ANN001
    """A hospital can mount first, point the PACS at it, and import the old archive then."""
    mounted = mount_volume(None)
    (mounted.mountpoint / "new-study.dcm").write_bytes(b"DICM written by the PACS")
    plain = sample_tree.build(tmp_path / "plain", extras=False)
    run_cli("import", plain, volume, "--passphrase-file", passphrase_file)
    for rel, data in sample_tree.regular_files(plain).items():
        assert (mounted.mountpoint / rel).read_bytes() == data
    assert (mounted.mountpoint / "new-study.dcm").read_bytes() == b"DICM written by the PACS"


def test_import_failures_exit_25_and_name_the_file(volume: Path, passphrase_file: Path,
                                                   tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "ok.dcm").write_bytes(b"fine")
    (plain / ".encfs-pacs").mkdir()
    result = run_cli("import", plain, volume, "--passphrase-file", passphrase_file, check=False)
    assert result.returncode == 25, result.stderr
    assert ".encfs-pacs: the name .encfs-pacs is reserved" in result.stdout
    # stderr: where the import's audit event went, then the error as the last line.
    assert result.stderr.startswith("audit: queued for the audit trail")
    assert result.stderr.splitlines()[-1].startswith("encfs-pacs: error: 1 item(s) could not be imported")
    assert visible_plaintext(volume) == {"ok.dcm": b"fine"}


def test_import_wrong_passphrase(volume: Path, tmp_path: Path) -> None:
    wrong = secret_file(tmp_path / "wrong", "not the passphrase")
    plain = sample_tree.build(tmp_path / "plain", extras=False)
    result = run_cli("import", plain, volume, "--passphrase-file", wrong, check=False)
    assert result.returncode == 10 and "wrong passphrase" in result.stderr
    assert visible_plaintext(volume) == {}


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "small"
    point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(point)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_disk_full_stops_cleanly_and_resumes(small_tmpfs: Path, passphrase_file: Path,
                                            tmp_path: Path) -> None:
    backing = small_tmpfs / "backing"
    run_cli("init", backing, "--passphrase-file", passphrase_file, "--scrypt-log-n", "10")
    plain = sample_tree.build(tmp_path / "plain", extras=False)  # ~2.6 MB: does not fit in 2 MB
    result = run_cli("import", plain, backing, "--passphrase-file", passphrase_file, check=False)
    assert result.returncode == 25, result.stdout + result.stderr
    assert "No space left on device" in result.stdout and "run the same import again" in result.stdout
    assert_nothing_half_written(backing, plain)
    assert not (backing / ".encfs-pacs" / "import-staging").exists()
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    result = run_cli("import", plain, backing, "--passphrase-file", passphrase_file, "--json")
    assert json.loads(result.stdout)["skipped_files"] > 0
    assert visible_plaintext(backing) == sample_tree.regular_files(plain)


# ------------------------------------------------------------------------- passwd and recovery keys


def run_on_terminal(args: list[str], answers: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, typing each answer after each 'passphrase:' prompt."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "encfs_pacs", *args])
    output, pending, answered = b"", list(answers), 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 0.5)[0]:
            continue
        try:
            piece = os.read(fd, 4096)
        except OSError:
            break
        if not piece:
            break
        output += piece
        if pending and output.lower().count(b"passphrase:") > answered:
            os.write(fd, pending.pop(0).encode() + b"\n")
            answered += 1
    if time.monotonic() >= deadline:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_passwd_prompts_old_once_and_new_twice(volume: Path) -> None:
    code, output = run_on_terminal(["passwd", str(volume), "--scrypt-log-n", "10"],
                                   [PASSPHRASE, NEW_PASSPHRASE, NEW_PASSPHRASE])
    assert code == 0, output
    assert "Current passphrase:" in output and "New passphrase:" in output and "Repeat new" in output
    assert NEW_PASSPHRASE not in output and PASSPHRASE not in output  # nothing echoed
    assert unlocks_with(volume, NEW_PASSPHRASE) and not unlocks_with(volume, PASSPHRASE)


def test_passwd_prompt_mismatch_changes_nothing(volume: Path) -> None:
    raw = store.config_path(volume).read_bytes()
    code, output = run_on_terminal(["passwd", str(volume)], [PASSPHRASE, NEW_PASSPHRASE, "typo"])
    assert code == 18 and "differ" in output
    assert store.config_path(volume).read_bytes() == raw


@pytest.mark.parametrize(("extra", "code", "words"), [
    ((), 18, "not a terminal"),
    (("--keyfile", "KEY"), 18, "only one of"),
    (("--recovery-key-file", "MISSING"), 18, "does not exist"),
])
def test_passwd_bad_inputs(volume: Path, passphrase_file: Path, tmp_path: Path, extra: tuple[str, ...],
                           code: int, words: str) -> None:
    new = secret_file(tmp_path / "new", NEW_PASSPHRASE)
    args = [a.replace("KEY", str(tmp_path / "k")).replace("MISSING", str(tmp_path / "nothing"))
            for a in extra]
    if "--keyfile" in args:
        (tmp_path / "k").write_bytes(os.urandom(32))
        args = ["--passphrase-file", str(passphrase_file), *args]
    result = run_cli("passwd", volume, *args, "--new-passphrase-file", new, check=False)
    assert result.returncode == code, result.stderr
    assert words in result.stderr and result.stderr.count("\n") == 1
    assert unlocks_with(volume, PASSPHRASE)


def test_passwd_wrong_old_passphrase(volume: Path, tmp_path: Path) -> None:
    wrong = secret_file(tmp_path / "wrong", "wrong")
    new = secret_file(tmp_path / "new", NEW_PASSPHRASE)
    result = run_cli("passwd", volume, "--passphrase-file", wrong, "--new-passphrase-file", new, check=False)
    assert result.returncode == 10
    assert unlocks_with(volume, PASSPHRASE) and not unlocks_with(volume, NEW_PASSPHRASE)


def test_passwd_killed_at_random_moments_leaves_one_working_secret(volume: Path, tmp_path: Path) -> None:
    files = {PASSPHRASE: secret_file(tmp_path / "a", PASSPHRASE),
             NEW_PASSPHRASE: secret_file(tmp_path / "b", NEW_PASSPHRASE)}
    rng = random.Random(66)
    current, outcomes = PASSPHRASE, {"old": 0, "new": 0}
    for _ in range(12):
        target = NEW_PASSPHRASE if current == PASSPHRASE else PASSPHRASE
        proc = popen_cli("passwd", volume, "--passphrase-file", files[current], "--new-passphrase-file",
                         files[target], "--scrypt-log-n", "10")
        time.sleep(rng.uniform(0.15, 0.6))  # interpreter start-up is ~0.2 s; the write follows
        proc.kill()
        proc.communicate()
        works = [p for p in (PASSPHRASE, NEW_PASSPHRASE) if unlocks_with(volume, p)]
        assert len(works) == 1, works
        outcomes["new" if works[0] == target else "old"] += 1
        current = works[0]
    assert sum(outcomes.values()) == 12


def test_recovery_key_split_check_and_passwd_then_mount(volume: Path, passphrase_file: Path,
                                                        tmp_path: Path, mount_volume) -> None:  # noqa: ANN001
    result = run_cli("recovery-key", "create", volume, "--passphrase-file", passphrase_file,
                     "--shares", "5", "--threshold", "3")
    out = result.stdout
    assert "KEEP IT IN A SAFE" in out and "any 3 of them" in out
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 5 and all(" need-3 " in line for line in lines)
    master = store.read_master_key(volume, store.Secret("passphrase", PASSPHRASE.encode()))[1]
    assert master.hex() not in out and master.hex().upper() not in out
    # the whole printout is a valid recovery file
    whole = secret_file(tmp_path / "all.txt", out)
    assert run_cli("recovery-key", "check", volume, "--recovery-key-file", whole).returncode == 0
    two = secret_file(tmp_path / "two.txt", "\n".join(lines[3:]))
    result = run_cli("recovery-key", "check", volume, "--recovery-key-file", two, check=False)
    assert result.returncode == 27 and "needs 3" in result.stderr
    typo = lines[0][:-1] + ("0" if lines[0][-1] != "0" else "1")
    bad = secret_file(tmp_path / "typo.txt", "\n".join([typo, lines[1], lines[2]]))
    result = run_cli("recovery-key", "check", volume, "--recovery-key-file", bad, check=False)
    assert result.returncode == 27 and "line 1: the checksum does not match" in result.stderr
    # the passphrase is lost: three key holders set a new one
    three = secret_file(tmp_path / "three.txt", "\n".join([lines[4], lines[1], lines[2]]))
    new = secret_file(tmp_path / "new", NEW_PASSPHRASE)
    result = run_cli("passwd", volume, "--recovery-key-file", three, "--new-passphrase-file", new,
                     "--scrypt-log-n", "10")
    assert "changed the passphrase" in result.stdout
    assert unlocks_with(volume, NEW_PASSPHRASE) and not unlocks_with(volume, PASSPHRASE)
    # and the volume mounts with the new passphrase (the fixture's file now holds it)
    secret_file(passphrase_file, NEW_PASSPHRASE)
    mounted = mount_volume(None)
    (mounted.mountpoint / "after-recovery.dcm").write_bytes(b"DICM")
    assert (mounted.mountpoint / "after-recovery.dcm").read_bytes() == b"DICM"


def test_recovery_key_of_another_volume(volume: Path, passphrase_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run_cli("init", other, "--passphrase-file", passphrase_file, "--scrypt-log-n", "10")
    printed = run_cli("recovery-key", "create", other, "--passphrase-file", passphrase_file).stdout
    file = secret_file(tmp_path / "other.txt", printed)
    result = run_cli("import", tmp_path, volume, "--recovery-key-file", file, check=False)
    assert result.returncode == 27 and "belongs to volume" in result.stderr


# ------------------------------------------------------------------------- fsck and export


def test_fsck_and_export_exit_codes(volume: Path, passphrase_file: Path, tmp_path: Path) -> None:
    plain = sample_tree.build(tmp_path / "plain")
    run_cli("import", plain, volume, "--passphrase-file", passphrase_file)
    clean = run_cli("fsck", volume, "--passphrase-file", passphrase_file, "--json")
    report = json.loads(clean.stdout)
    assert report["clean"] and report["files_checked"] == len(sample_tree.regular_files(plain))
    # export round trip, then refuse a non-empty destination
    dest = tmp_path / "out"
    run_cli("export", volume, dest, "--passphrase-file", passphrase_file)
    assert sample_tree.snapshot(dest) == sample_tree.snapshot(plain)
    again = run_cli("export", volume, dest, "--passphrase-file", passphrase_file, check=False)
    assert again.returncode == 28 and "--resume" in again.stderr
    resumed = run_cli("export", volume, dest, "--passphrase-file", passphrase_file, "--resume", "--json")
    assert json.loads(resumed.stdout)["files_done"] == 0
    # tamper: one flipped bit in chunk 1 of a file
    target = volume / "two-chunks-plus-one.bin"
    data = bytearray(target.read_bytes())
    data[24 + 65536 + 28 + 500] ^= 0x04
    target.write_bytes(bytes(data))
    damaged = run_cli("fsck", volume, "--passphrase-file", passphrase_file, "--json", check=False)
    assert damaged.returncode == 26
    report = json.loads(damaged.stdout)
    assert [(d["path"], d["kind"], d["bad_chunks"]) for d in report["damaged"]] == [
        ("two-chunks-plus-one.bin", "authentication", [1])]
    human = run_cli("fsck", volume, "--passphrase-file", passphrase_file, check=False)
    assert "DAMAGED   two-chunks-plus-one.bin" in human.stdout and "bytes 65536-131071" in human.stdout
    shutil.rmtree(dest)
    exported = run_cli("export", volume, dest, "--passphrase-file", passphrase_file, check=False)
    assert exported.returncode == 25 and "chunk 1 failed authentication" in exported.stdout
    assert not (dest / "two-chunks-plus-one.bin").exists()
    # only --quarantine changes the volume: the damaged file moves out, the rest is clean
    moved = run_cli("fsck", volume, "--passphrase-file", passphrase_file, "--quarantine",
                    tmp_path / "quarantine", check=False)
    assert moved.returncode == 26 and "MOVED     two-chunks-plus-one.bin" in moved.stdout
    assert (tmp_path / "quarantine" / "two-chunks-plus-one.bin").read_bytes() == bytes(data)
    assert run_cli("fsck", volume, "--passphrase-file", passphrase_file).returncode == 0


def test_staging_dir_name_matches_the_importer() -> None:
    """fsck and docs name .encfs-pacs/import-staging; keep the tests' path in step."""
    assert importer.STAGING_DIR == "import-staging"


@pytest.fixture
def read_only_view(volume: Path, tmp_path: Path) -> Iterator[Path]:
    """The volume seen through a read-only bind mount, as a backup copy on read-only media."""
    view = tmp_path / "read-only"
    view.mkdir()
    done = subprocess.run(["mount", "--bind", str(volume), str(view)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {done.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield view
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def test_read_only_copy_can_be_checked_and_exported(volume: Path, passphrase_file: Path, tmp_path: Path,
                                                    read_only_view: Path) -> None:
    plain = sample_tree.build(tmp_path / "plain", extras=False)
    run_cli("import", plain, volume, "--passphrase-file", passphrase_file)  # leaves the lock file
    assert run_cli("fsck", read_only_view, "--passphrase-file", passphrase_file).returncode == 0
    run_cli("export", read_only_view, tmp_path / "out", "--passphrase-file", passphrase_file)
    assert sample_tree.regular_files(tmp_path / "out") == sample_tree.regular_files(plain)
    refused = run_cli("import", plain, read_only_view, "--passphrase-file", passphrase_file, check=False)
    assert refused.returncode == 2 and "Read-only file system" in refused.stderr
    assert "Traceback" not in refused.stderr
