"""The file systems compared, as data, and how to set up, mount and unmount each of them.

Add a variant by adding a ``SystemSpec`` to ``SYSTEMS``. An encfs-pacs variant names the
``mount`` flags it needs in ``requires_flags``; when the installed ``encfs-pacs mount --help``
lacks one, the variant is skipped and the reason printed (flags still being built on main).
Placeholders in ``mount_flags``: ``{policy}`` (an allow-list granting the programs the benchmark
runs, made by ``encfs-pacs allow add``) and ``{audit_log}`` (a fresh file in the system's folder).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MOUNT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SystemSpec:
    name: str
    description: str
    kind: str  # "raw" | "gocryptfs" | "encfs-pacs"
    mount_flags: tuple[str, ...] = ()
    requires_flags: tuple[str, ...] = ()
    baseline: str | None = None  # the variant whose figures give this one's cost (policy, audit)


SYSTEMS: tuple[SystemSpec, ...] = (
    SystemSpec("raw", "the backing directory itself (the limit)", "raw"),
    SystemSpec("gocryptfs", "Debian gocryptfs, default options", "gocryptfs"),
    SystemSpec("plain", "encfs-pacs, allow-list and audit off", "encfs-pacs",
               ("--no-policy", "--no-audit"), ("--no-policy", "--no-audit")),
    # Separates the allow-list's cost from the audit log's while both exist.
    SystemSpec("allowlist", "encfs-pacs, allow-list on, audit off", "encfs-pacs",
               ("--policy", "{policy}", "--no-audit"), ("--policy", "--no-audit"), baseline="plain"),
    SystemSpec("guarded", "encfs-pacs, allow-list and audit on", "encfs-pacs",
               ("--policy", "{policy}", "--audit-log", "{audit_log}"), ("--policy", "--audit-log"),
               baseline="plain"),
    # What several servers on one NAS pay for close-to-open consistency (docs/shared-storage.md):
    # no page cache across opens, 0 s kernel timeouts, a file lock and fstat per read/write.
    SystemSpec("shared", "encfs-pacs --shared-storage, allow-list and audit off", "encfs-pacs",
               ("--no-policy", "--no-audit", "--shared-storage"), ("--shared-storage",), baseline="plain"),
)


def encfs_pacs_command() -> str:
    """The encfs-pacs of the interpreter running us (the worktree's venv), else the PATH's."""
    beside = Path(sys.executable).parent / "encfs-pacs"
    return str(beside) if beside.exists() else (shutil.which("encfs-pacs") or "encfs-pacs")


def missing_flags(spec: SystemSpec, help_text: str) -> list[str]:
    return [flag for flag in spec.requires_flags
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text)]


def skip_reason(spec: SystemSpec, mount_help: str | None) -> str | None:
    """Why ``spec`` cannot run on this machine, or None."""
    if spec.kind == "gocryptfs" and shutil.which("gocryptfs") is None:
        return "gocryptfs is not installed (make bench installs it)"
    if spec.kind != "encfs-pacs":
        return None
    if mount_help is None:
        return "`encfs-pacs mount --help` failed"
    missing = missing_flags(spec, mount_help)
    if missing:
        return f"`encfs-pacs mount` has no {', '.join(missing)} yet"
    return None


def mount_help_text() -> str | None:
    result = subprocess.run([encfs_pacs_command(), "mount", "--help"], capture_output=True, text=True,
                            check=False)
    return result.stdout if result.returncode == 0 else None


# ---------------------------------------------------------------------------- mount table


def mountpoints() -> set[str]:
    found = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            field = line.split(" ")[4]
            found.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field))
    return found


def read_ahead_kb(path: Path) -> int | None:
    """The kernel's readahead for the file system at ``path``: for a FUSE mount, the size of the
    read requests its daemon gets for sequential reads."""
    device = os.stat(path).st_dev
    try:
        return int(Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb").read_text())
    except (OSError, ValueError):
        return None


def set_read_ahead_kb(path: Path, kib: int) -> None:
    device = os.stat(path).st_dev
    Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb").write_text(f"{kib}\n")


def force_unmount(mountpoint: Path) -> None:
    """Last resort: lazy unmount, so no mount is left behind whatever happened."""
    if str(mountpoint) in mountpoints():
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True, check=False)
    if str(mountpoint) in mountpoints():
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def sweep_mounts(under: Path) -> list[str]:
    """Unmount everything mounted below ``under``; returns what had to be removed."""
    prefix = str(under).rstrip("/") + "/"
    left = sorted((m for m in mountpoints() if m.startswith(prefix)), reverse=True)
    for mountpoint in left:
        force_unmount(Path(mountpoint))
    return left


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if we die, even by SIGKILL (no orphan keeps a mount busy)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_for(condition, timeout: float, step: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def end_process(pid: int, timeout: float = 10.0) -> None:
    """Wait for a daemon we started to exit; TERM, then KILL it if it does not."""
    def gone() -> bool:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return True
        return state in ("Z", "X")

    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if wait_for(gone, timeout if sig is None else 5.0):
            return


# ---------------------------------------------------------------------------- daemon figures


@dataclass(frozen=True)
class DaemonSample:
    cpu_s: float  # user + system time of the whole process (all threads)
    hwm_kib: int  # peak resident set (VmHWM)


def sample_daemon(pid: int | None) -> DaemonSample | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # after the ")" field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    hwm = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return DaemonSample(cpu, int(hwm.group(1)) if hwm else 0)


# ---------------------------------------------------------------------------- systems


class System:
    """One file system under test, set up in ``root``; ``path`` is where workloads run."""

    def __init__(self, spec: SystemSpec, root: Path, secret_file: Path, placeholders: dict[str, str]) -> None:
        self.spec = spec
        self.root = root
        self.secret_file = secret_file
        self.placeholders = placeholders
        self.path = root / "mnt"
        self.daemon_pid: int | None = None
        self.read_ahead_kb: int | None = None  # as found after the last mount
        self.set_read_ahead_kb: int | None = None  # an experiment: set it after every mount
        self.peak_hwm_kib = 0
        self.mounts = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def setup(self) -> None:
        self.path.mkdir(parents=True)

    def mount(self) -> None:
        self.mounts += 1
        self._mount()
        if self.spec.kind != "raw" and self.set_read_ahead_kb is not None:
            set_read_ahead_kb(self.path, self.set_read_ahead_kb)
        self.read_ahead_kb = read_ahead_kb(self.path)

    def _mount(self) -> None:
        pass

    def unmount(self) -> None:
        pass

    def sample(self) -> DaemonSample | None:
        figures = sample_daemon(self.daemon_pid)
        if figures is not None:
            self.peak_hwm_kib = max(self.peak_hwm_kib, figures.hwm_kib)
        return figures

    def remount(self) -> None:
        self.unmount()
        self.mount()

    def recover(self) -> None:
        """After a failed workload: make sure the system is mounted and usable again."""
        with contextlib.suppress(Exception):
            self.unmount()
        force_unmount(self.path)
        self.daemon_pid = None
        self.mount()

    def close(self) -> None:
        """Unmount for good; never raises, never leaves the mount behind."""
        try:
            self.unmount()
        except Exception as exc:  # noqa: BLE001 - reported, then the lazy unmount below
            print(f"warning: unmounting {self.name} failed ({exc}); forcing it", file=sys.stderr)
        finally:
            force_unmount(self.path)
            if self.daemon_pid is not None:
                end_process(self.daemon_pid)
                self.daemon_pid = None


class RawSystem(System):
    """The backing directory itself: what the disk can do, the limit for everyone."""


class GocryptfsSystem(System):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.cipher = self.root / "cipher"
        self.log = self.root / "gocryptfs.log"
        self.process: subprocess.Popen[bytes] | None = None

    def setup(self) -> None:
        super().setup()
        self.cipher.mkdir()
        # A low scrypt cost only shortens mounting; it changes nothing in the data path.
        subprocess.run(["gocryptfs", "-init", "-q", "-scryptn", "10", "-passfile", str(self.secret_file),
                        str(self.cipher)], check=True, capture_output=True)

    def _mount(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["gocryptfs", "-fg", "-q", "-passfile", str(self.secret_file), str(self.cipher),
                 str(self.path)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=die_with_parent)
        process = self.process
        ready = wait_for(lambda: str(self.path) in mountpoints() or process.poll() is not None,
                         MOUNT_TIMEOUT_S)
        if not ready or process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-500:]
            self.close()
            raise RuntimeError(f"gocryptfs did not mount: {tail}")
        self.daemon_pid = process.pid

    def unmount(self) -> None:
        if self.process is None:
            return
        self.sample()
        subprocess.run(["fusermount3", "-u", str(self.path)], check=True, capture_output=True)
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                end_process(self.process.pid)
            self.process = None
            self.daemon_pid = None


class EncfsPacsSystem(System):
    def __init__(self, *args, chunk_size: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.backing = self.root / "backing"
        self.log = self.root / "encfs-pacs.log"
        self.chunk_size = chunk_size
        self.command = encfs_pacs_command()

    def setup(self) -> None:
        super().setup()
        subprocess.run([self.command, "init", str(self.backing), "--passphrase-file", str(self.secret_file),
                        "--chunk-size", str(self.chunk_size), "--scrypt-log-n", "10"],
                       check=True, capture_output=True)

    def mount_flags(self) -> list[str]:
        return [flag.format(**self.placeholders) for flag in self.spec.mount_flags]

    def _mount(self) -> None:
        result = subprocess.run(
            [self.command, "mount", str(self.backing), str(self.path), "--passphrase-file",
             str(self.secret_file), "--log-file", str(self.log), *self.mount_flags()],
            capture_output=True, text=True, check=False, timeout=MOUNT_TIMEOUT_S + 10)
        if result.returncode != 0:
            raise RuntimeError(f"encfs-pacs mount failed: {result.stderr.strip()}")
        found = re.search(r"daemon pid (\d+)", result.stdout)
        self.daemon_pid = int(found.group(1)) if found else None

    def unmount(self) -> None:
        if self.daemon_pid is None and str(self.path) not in mountpoints():
            return
        self.sample()
        result = subprocess.run([self.command, "unmount", str(self.path)], capture_output=True, text=True,
                                check=False, timeout=90)
        pid, self.daemon_pid = self.daemon_pid, None
        if pid is not None:
            end_process(pid)
        if result.returncode != 0:
            raise RuntimeError(f"encfs-pacs unmount failed: {result.stderr.strip()}")


def make_system(spec: SystemSpec, workdir: Path, secret_file: Path, placeholders: dict[str, str],
                chunk_size: int) -> System:
    root = workdir / spec.name
    root.mkdir()
    values = {**placeholders, "audit_log": str(root / "audit.log")}
    if spec.kind == "raw":
        return RawSystem(spec, root, secret_file, values)
    if spec.kind == "gocryptfs":
        return GocryptfsSystem(spec, root, secret_file, values)
    return EncfsPacsSystem(spec, root, secret_file, values, chunk_size=chunk_size)


def write_secret(directory: Path) -> Path:
    """A throw-away passphrase for this run only, in a 0600 file (never printed)."""
    directory.mkdir(mode=0o700)
    path = directory / "passphrase"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(24) + "\n")
    return path


def write_policy(directory: Path, programs: list[str]) -> Path:
    """An allow-list as a site would write it: one rule per program, its SHA-256 pinned.

    The folder is private (0700) because the mount refuses a policy others could change."""
    directory.mkdir(mode=0o700)
    path = directory / "policy.toml"
    user = str(os.geteuid())
    for number, exe in enumerate(programs):
        subprocess.run([encfs_pacs_command(), "allow", "add", "--policy", str(path), "--exe", exe,
                        "--id", f"bench-{number}-{Path(exe).name}", "--user", user],
                       check=True, capture_output=True, text=True)
    return path


def policy_programs() -> list[str]:
    """Every program that touches the mount during the benchmark (as /proc/PID/exe shows it)."""
    programs = [os.path.realpath(sys.executable)]
    for tool in ("ls", "find", "Orthanc"):
        found = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
        if found:
            programs.append(os.path.realpath(found))
    return list(dict.fromkeys(programs))


def drop_caches() -> bool:
    """Write back and drop the page cache, dentries and inodes (needs root); False if refused."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True
