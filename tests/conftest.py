"""Shared fixtures: a fresh volume made by the CLI, and a real FUSE mount of it.

The mount fixtures drive the operator CLI exactly as an operator would
(``python -m encfs_pacs init/mount/unmount``), always unmount in teardown, and fail the test
if the daemon logged an internal error or a traceback. A session-level check fails the run if
any FUSE mount under pytest's temporary folders is still mounted at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from syslog_collector import RSYSLOG_MISSING, Collector, rsyslogd_path, running_rsyslog

from encfs_pacs.fs.mount import mounted_fuse_filesystems

PASSPHRASE = "integration tests: not a real secret"
TEST_SCRYPT_LOG_N = "12"  # the hidden low-cost KDF option: unlocking takes milliseconds
CLI_TIMEOUT = 120


def _fuse_unavailable() -> str | None:
    """Why a real mount is impossible here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE kernel support in this environment)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (install the fuse3 package)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs a real FUSE mount")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _fuse_unavailable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"integration test skipped: {reason}")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------------------- the CLI


def run_cli(*args: str | os.PathLike[str], check: bool = True,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``encfs-pacs`` with this interpreter (works in any venv, no console script needed)."""
    result = subprocess.run([sys.executable, "-m", "encfs_pacs", *map(str, args)],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"encfs-pacs {' '.join(map(str, args))} failed with exit code "
                             f"{result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def fuse_mounts() -> list[str]:
    """Mount points of every FUSE file system visible to this process."""
    return list(mounted_fuse_filesystems())


def is_fuse_mounted(path: Path) -> bool:
    return os.path.realpath(path) in fuse_mounts()


def force_unmount(path: Path) -> None:
    """Last resort: lazy unmount, which also detaches a mount whose daemon died."""
    subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, check=False, timeout=60)


# ---------------------------------------------------------------------------- fixtures


# The POSIX suites run under a real allow-list (so every request goes through caller
# identification and the decision), granting everything to the test runner and to the
# unprivileged user some tests switch to. Policy tests write their own policies.
OPEN_POLICY = """version = 1
[[rule]]
id = "test-runner"
user = {uid}

[[rule]]
id = "unprivileged-test-user"
user = 65534
"""


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@dataclass
class Mounted:
    """A volume mounted through the CLI. ``unmount``/``mount`` allow remount tests.

    The key comes from ``passphrase_file`` or, for a volume whose key is in a key service,
    from ``kms`` (a ``--kms`` URI with this host's credentials)."""

    backing: Path
    mountpoint: Path
    log_file: Path
    passphrase_file: Path | None = None
    policy_file: Path | None = None
    extra_args: tuple[str, ...] = ()
    audit_log: Path | None = None  # default: next to the daemon log
    kms: str | None = None

    def __post_init__(self) -> None:
        if self.audit_log is None:
            self.audit_log = self.log_file.with_name(self.log_file.stem + ".audit.jsonl")

    def mount(self) -> None:
        policy = ("--policy", self.policy_file) if self.policy_file else ("--no-policy",)
        key = ("--kms", self.kms) if self.kms else ("--passphrase-file", str(self.passphrase_file))
        run_cli("mount", self.backing, self.mountpoint, *key, "--log-file", self.log_file,
                "--audit-log", str(self.audit_log), *policy, *self.extra_args)

    def audit_records(self) -> list[dict]:
        """The payload records of the audit log so far (control records left out)."""
        import json

        assert self.audit_log is not None
        if not self.audit_log.exists():
            return []
        records = [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]
        return [r for r in records if "audit" not in r]

    def unmount(self) -> None:
        """Clean unmount via the CLI (waits for the daemon to finish); fails the test if refused."""
        run_cli("unmount", self.mountpoint)
        assert not is_fuse_mounted(self.mountpoint), f"{self.mountpoint} is still mounted after unmount"

    @property
    def is_mounted(self) -> bool:
        return is_fuse_mounted(self.mountpoint)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Collector]:
    """A real rsyslogd on 127.0.0.1 (udp and tcp) writing what it receives to a file."""
    if rsyslogd_path() is None:
        pytest.skip(RSYSLOG_MISSING)
    with running_rsyslog(tmp_path / "rsyslog") as collector:
        yield collector


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    """An empty folder to mount on; whatever is still mounted there is unmounted at the end."""
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    if is_fuse_mounted(path) and run_cli("unmount", path, check=False).returncode != 0:
        force_unmount(path)


def write_passphrase_file(directory: Path) -> Path:
    """PASSPHRASE in ``directory``/passphrase.txt, created 0600 (encfs-pacs warns otherwise)."""
    path = directory / "passphrase.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(PASSPHRASE + "\n")
    return path


def init_volume(backing: Path, passphrase_file: Path) -> Path:
    """``encfs-pacs init`` with the low test scrypt cost."""
    run_cli("init", backing, "--passphrase-file", passphrase_file, "--scrypt-log-n", TEST_SCRYPT_LOG_N)
    return backing


def mount_with_kms(backing: Path, mountpoint: Path, uri: str, check: bool = True
                   ) -> subprocess.CompletedProcess[str]:
    """Mount a key-service volume without allow-list and audit (the key is what is tested)."""
    return run_cli("mount", backing, mountpoint, "--kms", uri, "--no-policy", "--no-audit", check=check)


def write_kms_mount_config(directory: Path, backing: Path, mountpoint: Path, uri: str) -> Path:
    """A `mount --config` file for a key-service volume, without allow-list and audit."""
    config = directory / "mount.toml"
    config.write_text(f'backing = "{backing}"\nmountpoint = "{mountpoint}"\nkms = "{uri}"\n'
                      f'no_policy = true\nno_audit = true\nlog_file = "{directory / "daemon.log"}"\n')
    return config


@pytest.fixture
def passphrase_file(tmp_path: Path) -> Path:
    return write_passphrase_file(tmp_path)


@pytest.fixture
def volume(tmp_path: Path, passphrase_file: Path) -> Path:
    """A fresh, empty volume created with ``encfs-pacs init`` (low scrypt cost)."""
    reason = _fuse_unavailable()
    if reason is not None:
        pytest.skip(reason)
    return init_volume(tmp_path / "backing", passphrase_file)


@pytest.fixture
def mounted(tmp_path: Path, volume: Path, passphrase_file: Path) -> Iterator[Mounted]:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    policy = write_policy(tmp_path / "policy.toml", OPEN_POLICY.format(uid=os.geteuid()))
    # ENCFS_PACS_TEST_MOUNT_ARGS="--shared-storage" runs the suites on a mount with other settings
    extra = tuple(os.environ.get("ENCFS_PACS_TEST_MOUNT_ARGS", "").split())
    m = Mounted(backing=volume, mountpoint=mountpoint, log_file=tmp_path / "daemon.log",
                passphrase_file=passphrase_file, policy_file=policy, extra_args=extra)
    try:
        m.mount()  # inside the try: a mount that half-succeeded is cleaned up too
        yield m
    finally:
        unmount_problem = _teardown_unmount(m)
        log = m.log()
        if "internal error" in log or "Traceback" in log:
            pytest.fail(f"the mount daemon logged an internal error:\n{log}", pytrace=False)
        if unmount_problem:
            pytest.fail(unmount_problem, pytrace=False)


@pytest.fixture
def mount_volume(tmp_path: Path, volume: Path, passphrase_file: Path) -> Iterator[Callable[..., Mounted]]:
    """Factory: mount the test's volume with a given policy file (None: --no-policy) and extra
    mount options; everything it mounted is unmounted at teardown, like ``mounted``."""
    made: list[Mounted] = []

    def mount(policy_file: Path | None, *extra_args: str) -> Mounted:
        mountpoint = tmp_path / f"mnt{len(made)}"
        mountpoint.mkdir()
        m = Mounted(backing=volume, mountpoint=mountpoint, log_file=tmp_path / f"daemon{len(made)}.log",
                    passphrase_file=passphrase_file, policy_file=policy_file, extra_args=extra_args)
        made.append(m)
        m.mount()
        return m

    yield mount
    problems = []
    for m in made:
        problem = _teardown_unmount(m)
        if problem:
            problems.append(problem)
        log = m.log()
        if "internal error" in log or "Traceback" in log:
            problems.append(f"the mount daemon logged an internal error:\n{log}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def _teardown_unmount(m: Mounted) -> str | None:
    """Unmount whatever state the test left; return a complaint if the clean way failed."""
    if not m.is_mounted:
        return None
    result = run_cli("unmount", m.mountpoint, check=False)
    if result.returncode == 0 and not m.is_mounted:
        return None
    force_unmount(m.mountpoint)
    return (f"'encfs-pacs unmount {m.mountpoint}' failed at teardown (exit {result.returncode}: "
            f"{result.stderr.strip()}); a lazy fusermount3 -uz was needed")


@pytest.fixture(scope="session", autouse=True)
def no_mount_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = os.path.realpath(tmp_path_factory.getbasetemp())
    yield
    left = [p for p in fuse_mounts() if p == base or p.startswith(base + os.sep)]
    for point in left:
        force_unmount(Path(point))  # do not leave the machine dirty, but do report it
    if left:
        pytest.fail(f"FUSE mounts left behind at the end of the session: {left}", pytrace=False)
