"""Caller identity from /proc: real processes for what the kernel really shows, and a fake /proc
tree (IdentityResolver(proc=...)) for races and states that are hard to produce on demand.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from encfs_pacs.policy import identity
from encfs_pacs.policy.identity import IdentityResolver, file_sha256, start_time, systemd_unit

SLEEP = shutil.which("sleep") or "/usr/bin/sleep"


def sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _wait_until_exec_is_complete(pid: int) -> None:
    # Popen returns once execve() has closed its CLOEXEC pipe, which happens before the kernel
    # has set up the new argv: /proc/PID/cmdline can still be empty for an instant.
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.001)


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start child processes that are always killed and reaped."""
    children: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(argv, stdin=kw.pop("stdin", subprocess.DEVNULL),
                                 stderr=subprocess.DEVNULL, **kw)
        children.append(child)
        _wait_until_exec_is_complete(child.pid)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


# ------------------------------------------------------------------------------ real /proc

def test_resolve_this_process() -> None:
    resolver = IdentityResolver()
    me = resolver.resolve(os.getpid(), os.getuid(), os.getgid())
    assert me.unidentified is None, me.unidentified
    # /proc/PID/exe is the file actually running: the venv's python is a symlink to it.
    assert me.exe == os.path.realpath(sys.executable)
    assert me.sha256 == sha(os.path.realpath(sys.executable))
    assert me.argv == tuple(arg for arg in sys.orig_argv if arg)
    assert (me.pid, me.tgid, me.uid, me.gid) == (os.getpid(), os.getpid(), os.getuid(), os.getgid())
    assert me.user == pwd.getpwuid(os.getuid()).pw_name
    assert me.groups == frozenset(os.getgroups())
    assert me.unit == systemd_unit(Path("/proc/self/cgroup").read_text())
    assert me.start_time == start_time(os.getpid()) > 0
    again = IdentityResolver().resolve(os.getpid(), os.getuid(), os.getgid())
    assert again.start_time == me.start_time
    assert me.process_key == (os.getpid(), me.start_time)


class ParkedThread:
    """A thread of this process that waits until it is ended (always ended by the fixture)."""

    def __init__(self) -> None:
        ready, self._done = threading.Event(), threading.Event()
        found: list[int] = []

        def worker() -> None:
            found.append(threading.get_native_id())
            ready.set()
            self._done.wait(10)

        self._thread = threading.Thread(target=worker)
        self._thread.start()
        ready.wait(10)
        self.tid = found[0]

    def end(self) -> None:
        """Let it finish, and wait until the OS thread is gone too (join() returns when
        Python's side of the thread is done, a moment before)."""
        self._done.set()
        self._thread.join()
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/self/task/{self.tid}"):
            assert time.monotonic() < deadline
            time.sleep(0.001)


@pytest.fixture
def parked() -> Iterator[ParkedThread]:
    thread = ParkedThread()
    yield thread
    thread.end()


def test_resolve_a_thread_gives_its_process(parked: ParkedThread) -> None:
    """FUSE passes the calling thread's id: the process key must be the process's, not the thread's."""
    caller = IdentityResolver().resolve(parked.tid, os.getuid(), os.getgid())
    assert parked.tid != os.getpid()
    assert caller.unidentified is None, caller.unidentified
    assert caller.pid == parked.tid
    assert caller.tgid == os.getpid()
    assert caller.process_key == (os.getpid(), start_time(os.getpid()))


def test_resolve_a_child_program(spawn: Any) -> None:
    child = spawn(SLEEP, "30")
    caller = IdentityResolver().resolve(child.pid, 0, 0)
    assert caller.unidentified is None, caller.unidentified
    assert caller.exe == os.path.realpath(SLEEP)
    assert caller.sha256 == file_sha256(SLEEP) == sha(os.path.realpath(SLEEP))
    assert caller.argv == (SLEEP, "30")
    assert caller.start_time == start_time(child.pid)
    assert caller.traced is None
    # Another process of the same program is another process.
    other = spawn(SLEEP, "31")
    second = IdentityResolver().resolve(other.pid, 0, 0)
    assert second.sha256 == caller.sha256
    assert second.process_key != caller.process_key


def test_exited_process_is_unidentified() -> None:
    child = subprocess.Popen([SLEEP, "0"])
    child.wait(timeout=10)
    caller = IdentityResolver().resolve(child.pid, 0, 0)
    assert caller.unidentified is not None
    assert f"process {child.pid} is gone" in caller.unidentified
    assert (caller.exe, caller.sha256) == (None, None)


def _counting_start_times(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    real = identity.start_time

    def counted(pid: int, proc: str = identity.PROC) -> int:
        reads.append(pid)
        return real(pid, proc)

    monkeypatch.setattr(identity, "start_time", counted)
    return reads


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _require_pins(resolver: IdentityResolver) -> None:
    """Thread pidfds exist from Linux 6.9: there they must be used, before it the reads stay."""
    release = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    assert resolver._pins is not None
    if release < (6, 9):
        assert not resolver._pins.supported
        pytest.skip("this kernel has no thread pidfds (PIDFD_THREAD, Linux 6.9): start times are read")
    assert resolver._pins.supported


def test_a_pinned_caller_costs_no_start_time_read(spawn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _counting_start_times(monkeypatch)
    resolver = IdentityResolver()
    _require_pins(resolver)
    child = spawn(SLEEP, "30")
    first = resolver.resolve(child.pid, 0, 0)
    assert reads == [child.pid]  # pidfd first, then one read, then the pidfd still live
    again = resolver.resolve(child.pid, 0, 0)
    assert reads == [child.pid]  # the pidfd proves it is the same task
    assert again.unidentified is None and again.process_key == first.process_key


def test_a_pinned_caller_that_exits_is_not_taken_for_its_pid(spawn: Any) -> None:
    resolver = IdentityResolver()
    child = spawn(SLEEP, "30")
    assert resolver.resolve(child.pid, 0, 0).unidentified is None
    child.kill()
    child.wait(timeout=10)  # reaped: the pid is free for anyone
    caller = resolver.resolve(child.pid, 0, 0)
    assert caller.unidentified is not None and f"process {child.pid} is gone" in caller.unidentified


def test_a_pinned_thread_that_exits_is_seen(parked: ParkedThread, monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = IdentityResolver()
    _require_pins(resolver)
    reads = _counting_start_times(monkeypatch)
    for _ in range(2):
        assert resolver.resolve(parked.tid, os.getuid(), os.getgid()).unidentified is None
    assert reads.count(parked.tid) == 1  # a thread (not its process's leader) is pinned too
    parked.end()
    caller = resolver.resolve(parked.tid, os.getuid(), os.getgid())
    assert caller.unidentified is not None  # its pidfd polls readable: a fresh check finds nothing


def test_pid_reuse_while_reading_is_caught_by_the_pin(spawn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check after the /proc reads: the pinned task has exited by then."""
    resolver = IdentityResolver()
    _require_pins(resolver)
    child = spawn(SLEEP, "30")
    assert resolver.resolve(child.pid, 0, 0).unidentified is None
    real_command_line = IdentityResolver._command_line

    def exit_while_reading(self: IdentityResolver, pid: int) -> bytes:
        line = real_command_line(self, pid)
        child.kill()
        child.wait(timeout=10)
        return line

    monkeypatch.setattr(IdentityResolver, "_command_line", exit_while_reading)
    caller = resolver.resolve(child.pid, 0, 0)
    assert caller.unidentified is not None and "pid was reused" in caller.unidentified


def test_without_thread_pidfds_start_times_are_read_twice(spawn: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(identity.os, "pidfd_open", refused)
    reads = _counting_start_times(monkeypatch)
    resolver = IdentityResolver()
    child = spawn(SLEEP, "30")
    for _ in range(2):
        assert resolver.resolve(child.pid, 0, 0).unidentified is None
    assert reads == [child.pid] * 4  # before and after, every time (Linux before 6.9)
    assert resolver._pins is not None and not resolver._pins.supported


def test_pins_per_worker_thread_are_bounded(spawn: Any) -> None:
    resolver = IdentityResolver()
    children = [spawn(SLEEP, "30") for _ in range(identity.PINS_PER_THREAD + 3)]
    before = _open_fds()
    for child in children:
        assert resolver.resolve(child.pid, 0, 0).unidentified is None
    assert _open_fds() - before <= identity.PINS_PER_THREAD  # the oldest pidfds were closed


def test_a_caller_gone_before_its_pin_does_not_switch_pins_off() -> None:
    resolver = IdentityResolver()
    _require_pins(resolver)
    child = subprocess.Popen([SLEEP, "0"])
    child.wait(timeout=10)
    assert resolver.resolve(child.pid, 0, 0).unidentified is not None
    assert resolver._pins is not None and resolver._pins.supported


def test_pidfds_are_closed_when_their_owner_goes(spawn: Any) -> None:
    import gc

    child = spawn(SLEEP, "30")
    baseline = _open_fds()
    resolver = IdentityResolver()
    _require_pins(resolver)
    assert resolver.resolve(child.pid, 0, 0).unidentified is None
    assert _open_fds() == baseline + 1
    del resolver  # a gate built for one command and dropped
    gc.collect()
    assert _open_fds() == baseline

    resolver = IdentityResolver()
    worker = threading.Thread(target=lambda: resolver.resolve(child.pid, 0, 0))
    worker.start()  # a thread that pins, then ends: its table goes with it
    worker.join()
    gc.collect()
    assert _open_fds() == baseline


def test_a_pin_whose_task_is_gone_before_the_read_is_closed(spawn: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = IdentityResolver()
    _require_pins(resolver)
    child = spawn(SLEEP, "30")
    baseline = _open_fds()

    def gone(pid: int, proc: str = identity.PROC) -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(identity, "start_time", gone)
    assert resolver.resolve(child.pid, 0, 0).unidentified is not None
    assert _open_fds() == baseline  # the pidfd opened for it was closed again


def test_child_started_with_ld_preload_is_traced(spawn: Any) -> None:
    child = spawn(SLEEP, "30", env={"LD_PRELOAD": "/nonexistent/lib.so", "PATH": "/usr/bin:/bin"})
    caller = IdentityResolver().resolve(child.pid, 0, 0)
    assert caller.unidentified is None
    assert caller.traced == "it was started with LD_PRELOAD set"


def test_deleted_executable_is_unidentified(spawn: Any, tmp_path: Path) -> None:
    copy = tmp_path / "mysleep"
    shutil.copy2(SLEEP, copy)
    child = spawn(str(copy), "30")  # Popen returns after the exec succeeded
    resolver = IdentityResolver()
    before = resolver.resolve(child.pid, 0, 0)
    assert before.exe == str(copy) and before.sha256 == sha(SLEEP)
    copy.unlink()
    after = resolver.resolve(child.pid, 0, 0)
    assert after.unidentified is not None
    assert "(deleted)" in after.unidentified and "deleted or replaced" in after.unidentified
    assert after.exe is None


def test_replaced_executable_is_unidentified(spawn: Any, tmp_path: Path) -> None:
    copy = tmp_path / "mysleep"
    shutil.copy2(SLEEP, copy)
    child = spawn(str(copy), "30")
    resolver = IdentityResolver()
    assert resolver.resolve(child.pid, 0, 0).unidentified is None
    # An "update" that renames a new file over the old path: the running image is the old one.
    new = tmp_path / "mysleep.new"
    new.write_bytes(Path(SLEEP).read_bytes() + b"\0")
    os.replace(new, copy)
    after = resolver.resolve(child.pid, 0, 0)
    assert after.unidentified is not None and "(deleted)" in after.unidentified


def _ptrace_seize(pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    PTRACE_SEIZE = 0x4206
    if libc.ptrace(PTRACE_SEIZE, pid, None, None) != 0:
        err = ctypes.get_errno()
        pytest.skip(f"ptrace is not permitted here ({errno.errorcode.get(err, err)})")


def _wait_for_tracer(pid: int) -> None:
    deadline = time.monotonic() + 5
    while "TracerPid:\t0\n" in Path(f"/proc/{pid}/status").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_traced_child_is_traced(spawn: Any) -> None:
    child = spawn(SLEEP, "30")
    _ptrace_seize(child.pid)
    _wait_for_tracer(child.pid)
    caller = IdentityResolver().resolve(child.pid, 0, 0)
    assert caller.unidentified is None
    assert caller.traced == f"it is being traced by process {os.getpid()} (debugger/ptrace)"


def test_debugger_attached_after_first_access_is_seen_at_the_next_refresh(spawn: Any) -> None:
    child = spawn(SLEEP, "30")
    resolver = IdentityResolver(refresh_seconds=0.2)
    assert resolver.resolve(child.pid, 0, 0).traced is None
    _ptrace_seize(child.pid)
    _wait_for_tracer(child.pid)
    time.sleep(0.3)
    assert resolver.resolve(child.pid, 0, 0).traced is not None


EXEC_AGAIN = ("import os, sys; sys.stdin.readline(); os.execv(sys.executable, "
              "[sys.executable, '-c', 'import time; time.sleep(30)', 'second-script'])")


def _is_second_program(cmdline: bytes) -> bool:
    return cmdline.endswith(b"\0second-script\0") and b"first-script" not in cmdline


def test_interpreter_exec_of_another_script_is_seen(spawn: Any) -> None:
    child = spawn(sys.executable, "-c", EXEC_AGAIN, "first-script", stdin=subprocess.PIPE)
    resolver = IdentityResolver()
    first = resolver.resolve(child.pid, 0, 0)
    assert first.argv[-1] == "first-script"
    child.stdin.write(b"go\n")
    child.stdin.flush()
    deadline = time.monotonic() + 10
    # (the first program's own code mentions 'second-script': wait for the first to be gone)
    # (during the exec the command line is briefly empty: wait for the new one itself)
    while not _is_second_program(Path(f"/proc/{child.pid}/cmdline").read_bytes()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = resolver.resolve(child.pid, 0, 0)
    assert second.start_time == first.start_time and second.exe == first.exe  # the same process
    assert second.argv[-1] == "second-script"


# ------------------------------------------------------------------------------ fake /proc

class FakeProc:
    """A /proc-like tree: just the files the resolver reads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()

    def add(self, pid: int, exe: Path | str, *, start: int = 5000, tgid: int | None = None,
            comm: str = "server", argv: tuple[str, ...] = ("/opt/pacs/server", "--serve"),
            cgroup: str = "0::/system.slice/pacs.service\n", environ: bytes | None = b"PATH=/usr/bin\0",
            tracer: int = 0, groups: str = "1000 2000", loginuid: str | None = "1000",
            sessionid: str | None = "3") -> Path:
        folder = self.root / str(pid)
        folder.mkdir()
        self.set_start(pid, start, comm)
        (folder / "status").write_text(
            f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{tgid or pid}\nNgid:\t0\n"
            f"Pid:\t{pid}\nPPid:\t1\nTracerPid:\t{tracer}\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n"
            f"FDSize:\t64\nGroups:\t{groups} \n")
        (folder / "cmdline").write_bytes(b"".join(arg.encode() + b"\0" for arg in argv))
        (folder / "cgroup").write_text(cgroup)
        if environ is not None:
            (folder / "environ").write_bytes(environ)
        for name, value in (("loginuid", loginuid), ("sessionid", sessionid)):
            if value is not None:
                (folder / name).write_text(value)
        os.symlink(exe, folder / "exe")
        return folder

    def set_start(self, pid: int, start: int, comm: str = "server") -> None:
        # Fields 3.. after "(comm) ": state, then 18 numbers, then field 22 = start time.
        rest = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 30
        (self.root / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "server"
    path.write_bytes(b"#!/bin/false\n" + b"x" * 4096)
    path.chmod(0o755)
    return path


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts every SHA-256 of an executable the resolver computes."""
    calls: list[str] = []
    real = hashlib.file_digest

    def counting(fileobj: Any, digest: Any) -> Any:
        calls.append(os.readlink(f"/proc/self/fd/{fileobj.fileno()}"))
        return real(fileobj, digest)

    monkeypatch.setattr(identity.hashlib, "file_digest", counting)
    return calls


def test_fake_proc_resolves_every_field(proc: FakeProc, program: Path) -> None:
    proc.add(100, program, argv=("/opt/pacs/server", "--config", "a b.json", ""))
    caller = IdentityResolver(str(proc.root)).resolve(100, 0, 0)
    assert caller.unidentified is None, caller.unidentified
    assert (caller.pid, caller.tgid, caller.uid, caller.gid, caller.user) == (100, 100, 0, 0, "root")
    assert caller.exe == str(program)
    assert caller.sha256 == sha(program)
    assert caller.unit == "pacs.service"
    assert caller.argv == ("/opt/pacs/server", "--config", "a b.json")
    assert caller.groups == frozenset({1000, 2000})
    assert (caller.loginuid, caller.session, caller.start_time) == (1000, 3, 5000)
    assert caller.traced is None


def test_unknown_uid_has_no_user_name(proc: FakeProc, program: Path) -> None:
    proc.add(100, program)
    unknown = 4_000_000_000
    assert all(entry.pw_uid != unknown for entry in pwd.getpwall())
    caller = IdentityResolver(str(proc.root)).resolve(100, unknown, 0)
    assert (caller.uid, caller.user) == (unknown, None)


def test_start_time_parses_a_command_name_with_parentheses(proc: FakeProc, program: Path) -> None:
    proc.add(100, program, start=777, comm="evil) S 1 2 3 (x")
    assert start_time(100, str(proc.root)) == 777
    assert IdentityResolver(str(proc.root)).resolve(100, 0, 0).start_time == 777


def test_thread_of_a_process(proc: FakeProc, program: Path) -> None:
    proc.add(200, program, start=4000, environ=b"LD_PRELOAD=/tmp/hook.so\0")
    proc.add(201, program, start=4100, tgid=200, environ=None)  # threads share the process's environ
    caller = IdentityResolver(str(proc.root)).resolve(201, 0, 0)
    assert caller.unidentified is None, caller.unidentified
    assert (caller.pid, caller.tgid, caller.start_time, caller.process_key) == (201, 200, 4000, (200, 4000))
    assert caller.traced == "it was started with LD_PRELOAD set"


@pytest.mark.parametrize("pid", [0, -1])
def test_request_without_a_pid(proc: FakeProc, pid: int) -> None:
    caller = IdentityResolver(str(proc.root)).resolve(pid, 1000, 1000)
    assert caller.unidentified is not None and "no process id" in caller.unidentified
    assert (caller.uid, caller.gid) == (1000, 1000)


def test_missing_process(proc: FakeProc) -> None:
    caller = IdentityResolver(str(proc.root)).resolve(999, 0, 0)
    assert caller.unidentified is not None and "process 999 is gone" in caller.unidentified


def test_unreadable_executable_link(proc: FakeProc, program: Path) -> None:
    (proc.add(100, program) / "exe").unlink()  # kernel threads have no exe
    caller = IdentityResolver(str(proc.root)).resolve(100, 0, 0)
    assert caller.unidentified is not None
    assert "executable of process 100 cannot be read" in caller.unidentified


def test_deleted_suffix_in_fake_proc(proc: FakeProc, tmp_path: Path) -> None:
    # On real /proc the link still opens; here a file literally named so stands in for it.
    ghost = tmp_path / "server (deleted)"
    ghost.write_bytes(b"old")
    proc.add(100, ghost)
    caller = IdentityResolver(str(proc.root)).resolve(100, 0, 0)
    assert caller.unidentified is not None and "deleted or replaced" in caller.unidentified


@pytest.mark.parametrize("missing", ["cmdline", "status", "cgroup", "environ"])
def test_proc_files_vanishing_while_identifying(proc: FakeProc, program: Path, missing: str) -> None:
    (proc.add(100, program) / missing).unlink()
    caller = IdentityResolver(str(proc.root)).resolve(100, 0, 0)
    assert caller.unidentified is not None
    assert "/proc/100 became unreadable" in caller.unidentified


def test_pid_reused_between_the_two_reads(proc: FakeProc, program: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    proc.add(100, program, start=5000)
    real_status = identity._status_fields

    def status_then_reuse(pid: int, root: str) -> dict[str, str]:
        fields = real_status(pid, root)
        proc.set_start(100, 9999)  # the process exits and a new one gets pid 100
        return fields

    monkeypatch.setattr(identity, "_status_fields", status_then_reuse)
    caller = IdentityResolver(str(proc.root)).resolve(100, 0, 0)
    assert caller.unidentified is not None
    assert "pid was reused" in caller.unidentified


def test_pid_reuse_is_detected_on_a_cached_identity(proc: FakeProc, program: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    proc.add(100, program, start=5000)
    resolver = IdentityResolver(str(proc.root))
    assert resolver.resolve(100, 0, 0).unidentified is None  # now cached
    starts = iter([5000, 6000])
    monkeypatch.setattr(identity, "start_time", lambda pid, root: next(starts))
    caller = resolver.resolve(100, 0, 0)
    assert caller.unidentified is not None and "pid was reused" in caller.unidentified


def test_reused_pid_gets_a_fresh_identity(proc: FakeProc, program: Path, tmp_path: Path) -> None:
    proc.add(100, program, start=5000)
    resolver = IdentityResolver(str(proc.root))
    first = resolver.resolve(100, 0, 0)
    # Later: pid 100 belongs to another program, started later.
    other = tmp_path / "ransom"
    other.write_bytes(b"encrypt everything")
    (proc.root / "100" / "exe").unlink()
    os.symlink(other, proc.root / "100" / "exe")
    (proc.root / "100" / "cmdline").write_bytes(b"ransom\0--all\0")
    proc.set_start(100, 8000)
    second = resolver.resolve(100, 0, 0)
    assert (second.exe, second.sha256, second.argv, second.start_time) == (
        str(other), sha(other), ("ransom", "--all"), 8000)
    assert second.process_key != first.process_key


def test_reused_pid_of_the_same_program_gets_a_fresh_identity(proc: FakeProc, program: Path) -> None:
    """Same executable, same pid, later start: the cache must not hand out the old argv/environ."""
    folder = proc.add(100, program, start=5000, argv=("server", "--ward", "a"))
    resolver = IdentityResolver(str(proc.root))
    assert resolver.resolve(100, 0, 0).argv == ("server", "--ward", "a")
    (folder / "cmdline").write_bytes(b"server\0--ward\0b\0")
    (folder / "environ").write_bytes(b"LD_PRELOAD=/tmp/hook.so\0")
    proc.set_start(100, 7000)
    second = resolver.resolve(100, 0, 0)
    assert (second.argv, second.start_time) == (("server", "--ward", "b"), 7000)
    assert second.traced == "it was started with LD_PRELOAD set"


def test_hashing_happens_once_per_executable_version(proc: FakeProc, program: Path,
                                                     hash_calls: list[str]) -> None:
    proc.add(100, program)
    proc.add(101, program, start=5100)  # another process of the same program
    resolver = IdentityResolver(str(proc.root))
    first = resolver.resolve(100, 0, 0)
    for _ in range(5):
        assert resolver.resolve(100, 0, 0).sha256 == first.sha256
    assert resolver.resolve(101, 0, 0).sha256 == first.sha256
    assert hash_calls == [str(program)]
    # Edit the (not running) file in place: same inode and size, new content.
    time.sleep(0.02)  # file times have coarse (jiffy) resolution
    inode = program.stat().st_ino
    with open(program, "r+b") as f:
        f.seek(100)
        f.write(b"Y")
    assert program.stat().st_ino == inode
    edited = resolver.resolve(100, 0, 0)
    assert edited.sha256 == sha(program) != first.sha256
    assert resolver.resolve(101, 0, 0).sha256 == edited.sha256
    assert len(hash_calls) == 2


def test_edit_that_keeps_mtime_is_still_seen(proc: FakeProc, program: Path, hash_calls: list[str]) -> None:
    """`touch -r` can restore mtime after an edit; ctime cannot be set back."""
    proc.add(100, program)
    resolver = IdentityResolver(str(proc.root))
    first = resolver.resolve(100, 0, 0)
    st = program.stat()
    time.sleep(0.02)
    with open(program, "r+b") as f:
        f.write(b"#")  # rewrite the first byte with another one
        f.seek(20)
        f.write(b"z")
    os.utime(program, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert program.stat().st_mtime_ns == st.st_mtime_ns
    assert resolver.resolve(100, 0, 0).sha256 == sha(program) != first.sha256
    assert len(hash_calls) == 2


def test_executable_changing_while_hashed(proc: FakeProc, program: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    proc.add(100, program)
    real = hashlib.file_digest

    def append_then_hash(fileobj: Any, digest: Any) -> Any:
        with open(program, "ab") as f:
            f.write(b"more")
        return real(fileobj, digest)

    monkeypatch.setattr(identity.hashlib, "file_digest", append_then_hash)
    caller = IdentityResolver(str(proc.root)).resolve(100, 0, 0)
    assert caller.unidentified is not None and "changed while it was being hashed" in caller.unidentified


@pytest.mark.parametrize("environ,traced", [
    (b"PATH=/bin\0LD_PRELOAD=/tmp/x.so\0", "it was started with LD_PRELOAD set"),
    (b"LD_AUDIT=/tmp/a.so\0HOME=/\0", "it was started with LD_AUDIT set"),
    (b"LD_PRELOAD=\0", None),  # set but empty: nothing is preloaded
    (b"LD_LIBRARY_PATH=/opt/pacs/lib\0", None),
    (b"XLD_PRELOAD=/tmp/x.so\0MY_LD_PRELOAD=1\0", None),
    (b"", None),
])
def test_preload_variables(proc: FakeProc, program: Path, environ: bytes, traced: str | None) -> None:
    proc.add(100, program, environ=environ)
    caller = IdentityResolver(str(proc.root)).resolve(100, 0, 0)
    assert caller.unidentified is None
    assert caller.traced == traced


def test_tracer_pid(proc: FakeProc, program: Path) -> None:
    proc.add(100, program, tracer=4321)
    caller = IdentityResolver(str(proc.root)).resolve(100, 0, 0)
    assert caller.unidentified is None
    assert caller.traced == "it is being traced by process 4321 (debugger/ptrace)"


@pytest.mark.parametrize("value,expected", [
    ("4294967295", None), ("1000", 1000), ("0", 0), ("garbage", None), (None, None),
])
def test_loginuid_and_session(proc: FakeProc, program: Path, value: str | None, expected: int | None) -> None:
    proc.add(100, program, loginuid=value, sessionid=value)
    caller = IdentityResolver(str(proc.root)).resolve(100, 0, 0)
    assert caller.unidentified is None
    assert (caller.loginuid, caller.session) == (expected, expected)


@pytest.mark.parametrize("cgroup,unit", [
    ("0::/system.slice/orthanc.service\n", "orthanc.service"),
    ("0::/system.slice/orthanc.service/sub\n", "orthanc.service"),
    ("0::/system.slice/orthanc.service/payload/worker-1\n", "orthanc.service"),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-term-42.scope\n",
     "app-gnome-term-42.scope"),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/dcmtk.service\n", "dcmtk.service"),
    ("0::/\n", None),
    ("0::/docker/0123abcd\n", None),
    ("", None),
    # cgroup v1: only the name=systemd hierarchy names the unit
    ("12:cpu,cpuacct:/system.slice/other.service\n4:memory:/x.service\n"
     "1:name=systemd:/system.slice/orthanc.service\n", "orthanc.service"),
    ("11:pids:/system.slice/cron.service\n1:name=systemd:/\n", None),
    # hybrid: v1 name=systemd plus the unified hierarchy
    ("1:name=systemd:/system.slice/pacs.service\n0::/system.slice/pacs.service\n", "pacs.service"),
    ("0::/system.slice/pacs.service.d/x\n", None),
])
def test_systemd_unit(cgroup: str, unit: str | None) -> None:
    assert systemd_unit(cgroup) == unit


def test_unit_comes_from_the_cgroup_file(proc: FakeProc, program: Path) -> None:
    proc.add(100, program, cgroup="5:cpuset:/\n1:name=systemd:/system.slice/orthanc.service/sub\n")
    assert IdentityResolver(str(proc.root)).resolve(100, 0, 0).unit == "orthanc.service"


def test_tracer_appearing_later_is_seen_within_the_refresh_interval(proc: FakeProc, program: Path) -> None:
    folder = proc.add(100, program)
    now = [1000.0]
    resolver = IdentityResolver(str(proc.root), refresh_seconds=1.0, clock=lambda: now[0])
    assert resolver.resolve(100, 0, 0).traced is None
    status = (folder / "status").read_text().replace("TracerPid:\t0", "TracerPid:\t4321")
    (folder / "status").write_text(status)
    now[0] += 0.5
    assert resolver.resolve(100, 0, 0).traced is None  # cached: /proc/PID/status is not re-read
    now[0] += 0.6
    assert resolver.resolve(100, 0, 0).traced is not None


def test_attribute_bursts_reuse_a_fresh_check_of_the_same_thread(proc: FakeProc, program: Path) -> None:
    folder = proc.add(100, program)
    now = [50.0]
    resolver = IdentityResolver(str(proc.root), clock=lambda: now[0])
    first = resolver.resolve(100, 0, 0)
    (folder / "cmdline").write_bytes(b"other\0program\0")  # an exec: only a full check sees it
    now[0] += 0.1
    assert resolver.resolve(100, 0, 0, reuse_within=0.2) is first  # no /proc read in the burst
    assert resolver.resolve(100, 1, 1, reuse_within=0.2).argv == ("other", "program")  # other uid
    now[0] += 0.3
    assert resolver.resolve(100, 0, 0, reuse_within=0.2).argv == ("other", "program")  # too old
    assert resolver.resolve(100, 0, 0).argv == ("other", "program")  # never reused without asking


def test_a_full_table_of_recent_checks_lets_only_the_oldest_go(
        proc: FakeProc, program: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "CACHE_SIZE", 2)
    folders = {pid: proc.add(pid, program) for pid in (100, 101, 102, 103)}
    now = [50.0]
    resolver = IdentityResolver(str(proc.root), clock=lambda: now[0])
    checked = {pid: resolver.resolve(pid, 0, 0) for pid in (100, 101, 102, 103)}
    for folder in folders.values():  # an exec in each: a reused check still shows the old argv
        (folder / "cmdline").write_bytes(b"other\0program\0")
    assert resolver.resolve(103, 0, 0, reuse_within=0.2) is checked[103]
    # The second newest is still there (emptying the whole table made it pay a full check).
    assert resolver.resolve(102, 0, 0, reuse_within=0.2) is checked[102]
    assert resolver.resolve(100, 0, 0, reuse_within=0.2).argv == ("other", "program")  # let go
