"""The operator CLI: every bad input is one clear line on stderr and a distinct exit code,
and the good paths (prompting, signals, permissions) behave as the README says."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from encfs_pacs.fs.mount import is_mounted

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"


def cli(*args: str | Path, stdin: int | None = subprocess.DEVNULL, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "encfs_pacs", *map(str, args)], capture_output=True,
                          text=True, stdin=stdin, timeout=timeout, check=False)


def mount_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Mount without an allow-list: these tests are about the operator CLI, not the policy."""
    return cli("mount", *args, "--no-policy", "--no-audit")


def assert_clean_error(result: subprocess.CompletedProcess[str], exit_code: int, *words: str) -> None:
    """One line on stderr naming the problem, the documented exit code, and no traceback."""
    assert result.returncode == exit_code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("encfs-pacs: error: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "unlock.txt"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def backing(tmp_path: Path, secret: Path) -> Path:
    path = tmp_path / "backing"
    result = cli("init", path, "--passphrase-file", secret, "--scrypt-log-n", "10")
    assert result.returncode == 0, result.stderr
    return path


def test_init_creates_private_backing_and_config(backing: Path) -> None:
    assert backing.stat().st_mode & 0o777 == 0o700
    config = backing / ".encfs-pacs" / "volume.json"
    assert config.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in config.read_text()


def test_init_refuses_non_empty_folder(tmp_path: Path, secret: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "CT1.dcm").write_bytes(b"x")
    assert_clean_error(cli("init", folder, "--passphrase-file", secret), 15, "not empty")
    assert sorted(os.listdir(folder)) == ["CT1.dcm"]


def test_init_refuses_missing_parent(tmp_path: Path, secret: Path) -> None:
    assert_clean_error(cli("init", tmp_path / "no" / "such", "--passphrase-file", secret), 14, "parent")


def test_init_without_terminal_or_file_refuses(tmp_path: Path) -> None:
    result = cli("init", tmp_path / "b")
    assert_clean_error(result, 18, "not a terminal", "--passphrase-file")
    assert not (tmp_path / "b").exists()


def _run_on_terminal(args: list[str], answers: list[str], timeout: float = 60) -> tuple[int, str]:
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
            piece = os.read(fd, 1024)
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


def test_init_prompts_twice_on_a_terminal(tmp_path: Path, secret: Path, mountpoint: Path) -> None:
    code, output = _run_on_terminal(["init", str(tmp_path / "b"), "--scrypt-log-n", "10"],
                                    [PASSWORD, PASSWORD])
    assert code == 0, output
    assert output.count("assphrase:") == 2
    # the prompted passphrase really is the volume's passphrase
    assert mount_cli(tmp_path / "b", mountpoint, "--passphrase-file", secret).returncode == 0
    assert cli("unmount", mountpoint).returncode == 0


def test_init_prompt_mismatch_creates_nothing(tmp_path: Path) -> None:
    code, output = _run_on_terminal(["init", str(tmp_path / "b")], [PASSWORD, PASSWORD + "x"])
    assert code == 18, output
    assert "differ" in output
    assert not (tmp_path / "b").exists()


def test_wrong_passphrase_mounts_nothing(backing: Path, mountpoint: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not it\n")
    wrong.chmod(0o600)
    assert_clean_error(mount_cli(backing, mountpoint, "--passphrase-file", wrong), 10, "wrong passphrase")
    assert not is_mounted(mountpoint)


def test_keyfile_volume_refuses_passphrase(tmp_path: Path, secret: Path, mountpoint: Path) -> None:
    keyfile = tmp_path / "volume.bin"
    keyfile.write_bytes(os.urandom(32))
    keyfile.chmod(0o600)
    assert cli("init", tmp_path / "kb", "--keyfile", keyfile).returncode == 0
    assert_clean_error(mount_cli(tmp_path / "kb", mountpoint, "--passphrase-file", secret), 2, "--keyfile")
    result = mount_cli(tmp_path / "kb", mountpoint, "--keyfile", keyfile)
    assert result.returncode == 0, result.stderr
    assert cli("unmount", mountpoint).returncode == 0


def test_short_keyfile_is_refused(tmp_path: Path) -> None:
    keyfile = tmp_path / "short.bin"
    keyfile.write_bytes(b"0" * 16)
    keyfile.chmod(0o600)
    assert_clean_error(cli("init", tmp_path / "kb", "--keyfile", keyfile), 18, "32 bytes")


def test_missing_backing(tmp_path: Path, secret: Path, mountpoint: Path) -> None:
    assert_clean_error(mount_cli(tmp_path / "nothere", mountpoint, "--passphrase-file", secret), 14,
                       "does not exist")


def test_backing_not_a_volume(tmp_path: Path, secret: Path, mountpoint: Path) -> None:
    (tmp_path / "plain").mkdir()
    assert_clean_error(mount_cli(tmp_path / "plain", mountpoint, "--passphrase-file", secret), 11,
                       "not an encfs-pacs volume")


def test_corrupted_config(backing: Path, secret: Path, mountpoint: Path) -> None:
    (backing / ".encfs-pacs" / "volume.json").write_text("{ this is not json")
    assert_clean_error(mount_cli(backing, mountpoint, "--passphrase-file", secret), 13, "damaged")


def test_newer_format_version_is_refused(backing: Path, secret: Path, mountpoint: Path) -> None:
    config = backing / ".encfs-pacs" / "volume.json"
    doc = json.loads(config.read_text())
    doc["version"] = 99
    config.write_text(json.dumps(doc))
    assert_clean_error(mount_cli(backing, mountpoint, "--passphrase-file", secret), 12, "version 99")
    assert not is_mounted(mountpoint)


def test_unknown_feature_flag_is_refused(backing: Path, secret: Path, mountpoint: Path) -> None:
    config = backing / ".encfs-pacs" / "volume.json"
    doc = json.loads(config.read_text())
    doc["features"].append("time-travel")
    config.write_text(json.dumps(doc))
    assert_clean_error(mount_cli(backing, mountpoint, "--passphrase-file", secret), 12, "time-travel")


def test_mountpoint_not_empty(backing: Path, secret: Path, mountpoint: Path) -> None:
    (mountpoint / "somefile").write_text("x")
    assert_clean_error(mount_cli(backing, mountpoint, "--passphrase-file", secret), 16, "not empty")


def test_mountpoint_missing(backing: Path, secret: Path, tmp_path: Path) -> None:
    assert_clean_error(mount_cli(backing, tmp_path / "nomnt", "--passphrase-file", secret), 16,
                       "does not exist")


def test_already_mounted_then_unmount_twice(backing: Path, secret: Path, mountpoint: Path) -> None:
    assert mount_cli(backing, mountpoint, "--passphrase-file", secret).returncode == 0
    assert_clean_error(mount_cli(backing, mountpoint, "--passphrase-file", secret), 16, "already mounted")
    unmounted = cli("unmount", mountpoint)
    assert unmounted.returncode == 0, unmounted.stderr
    assert not is_mounted(mountpoint)
    assert_clean_error(cli("unmount", mountpoint), 19, "not mounted")


def test_unmount_busy_says_so(backing: Path, secret: Path, mountpoint: Path) -> None:
    assert mount_cli(backing, mountpoint, "--passphrase-file", secret).returncode == 0
    handle = open(mountpoint / "open-file", "w")  # noqa: SIM115 - held open on purpose
    try:
        assert_clean_error(cli("unmount", mountpoint), 19, "busy")
        assert is_mounted(mountpoint)
    finally:
        handle.close()
    assert cli("unmount", mountpoint).returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_foreground_daemon_cleanly(backing: Path, secret: Path, mountpoint: Path,
                                                   signum: int) -> None:
    daemon = subprocess.Popen([sys.executable, "-m", "encfs_pacs", "mount", str(backing), str(mountpoint),
                               "--passphrase-file", str(secret), "--foreground", "--no-policy",
                               "--no-audit"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mountpoint):
            assert daemon.poll() is None, daemon.stdout.read() if daemon.stdout else ""
            assert time.monotonic() < deadline, "mount did not come up"
            time.sleep(0.05)
        (mountpoint / "kept.txt").write_text("survives the signal")
        daemon.send_signal(signum)
        output, _ = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, output
    assert "Traceback" not in output
    assert not is_mounted(mountpoint)
    assert mount_cli(backing, mountpoint, "--passphrase-file", secret).returncode == 0
    assert (mountpoint / "kept.txt").read_text() == "survives the signal"
    assert cli("unmount", mountpoint).returncode == 0


def test_mount_without_a_policy_file_refuses_and_says_how(backing: Path, secret: Path, mountpoint: Path,
                                                          tmp_path: Path) -> None:
    missing = tmp_path / "etc" / "policy.toml"
    assert_clean_error(cli("mount", backing, mountpoint, "--passphrase-file", secret, "--policy", missing),
                       21, str(missing), "allow add")
    assert not is_mounted(mountpoint)


def test_mount_refuses_a_policy_file_others_can_edit(backing: Path, secret: Path, mountpoint: Path,
                                                     tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("version = 1\n")
    policy.chmod(0o666)
    assert_clean_error(cli("mount", backing, mountpoint, "--passphrase-file", secret, "--policy", policy),
                       21, "writable by group or others")
    assert not is_mounted(mountpoint)


def test_help_of_every_command_shows_an_example() -> None:
    for command in ("init", "mount", "unmount", "demo"):
        result = cli(command, "--help")
        assert result.returncode == 0
        assert "Example:" in result.stdout, command


def test_demo_runs_and_cleans_up() -> None:
    result = cli("demo", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "read back byte-identical" in result.stdout
    assert "found in 0 files" in result.stdout
    work = result.stdout.split("Creating a throw-away encrypted volume in ", 1)[1].split("/backing")[0]
    assert not Path(work).exists()


def test_init_prints_a_recovery_key_split_among_key_holders(tmp_path: Path, secret: Path) -> None:
    result = cli("init", tmp_path / "rb", "--passphrase-file", secret, "--scrypt-log-n", "10",
                 "--print-recovery-key", "--shares", "3", "--threshold", "2")
    assert result.returncode == 0, result.stderr
    shares = [line for line in result.stdout.splitlines() if line.startswith("encfs-pacs-recovery-")]
    assert len(shares) == 3 and "KEEP IT IN A SAFE" in result.stdout
    two = tmp_path / "two-shares.txt"
    two.write_text("\n".join(shares[1:]) + "\n")
    two.chmod(0o600)
    assert cli("recovery-key", "check", tmp_path / "rb", "--recovery-key-file", two).returncode == 0
    one = tmp_path / "one-share.txt"
    one.write_text(shares[0] + "\n")
    one.chmod(0o600)
    assert_clean_error(cli("recovery-key", "check", tmp_path / "rb", "--recovery-key-file", one), 27)
    assert_clean_error(cli("init", tmp_path / "rc", "--passphrase-file", secret, "--print-recovery-key",
                           "--shares", "2", "--threshold", "3"), 2, "--threshold")
    assert not (tmp_path / "rc").exists()
