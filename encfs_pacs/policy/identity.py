"""Who is calling: a FUSE request's pid/uid/gid turned into a Caller from /proc.

Why the care: /proc/PID can change under us. The process may exit and its pid be reused by
another program between two reads, so every resolution reads the start time (field 22 of
/proc/PID/stat) before and after and gives up if it changed. A program may replace itself by
execve() without changing pid or start time, so the executable's identity (device, inode,
size, mtime) is part of the cache key. Hashing an executable costs milliseconds, so the
SHA-256 is cached per (device, inode, size, mtime, ctime): an edited binary gets a new mtime
or ctime and is hashed again; a replaced one has another inode, and the old one running shows
as "(deleted)" and matches no rule.

FUSE passes the calling *thread* id; /proc/TID answers for threads too, and the thread
group id (the process) comes from /proc/TID/status.

The two start-time reads are most of a full check (two /proc/PID/stat reads, ~35 µs each in
the daemon). Where the kernel has thread pidfds (PIDFD_THREAD, Linux 6.9), each worker thread
keeps one per caller thread it has identified (``_Pins``). A pidfd stays with one task: while
it does not poll readable, the pid is still attached to that task (it polls readable once the
task exits, and for good once the pid is freed), so "still not readable" after the /proc reads
proves they were all of the pinned task, with no start-time read at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .model import Caller

PROC = "/proc"
DELETED_SUFFIX = " (deleted)"
# Environment variables that let another library act inside the program (ld.so(8)).
# (LD_LIBRARY_PATH is left out: vendor start scripts set it routinely.)
PRELOAD_VARIABLES = (b"LD_PRELOAD=", b"LD_AUDIT=")
CACHE_SIZE = 4096
PROC_READ_BYTES = 65536
PIDFD_THREAD = os.O_EXCL  # linux/pidfd.h: a pidfd for one thread, not its thread group
# Pidfds kept per worker thread (each an open file descriptor): at most 16 FUSE workers x 16
# (the daemon raises its open-file limit: fs/mount.py raise_open_file_limit).
PINS_PER_THREAD = 16


class Unidentified(Exception):
    """The caller's identity could not be established reliably (the message says why)."""


@dataclass(frozen=True)
class _ExeKey:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def _read(path: str) -> bytes:
    # os.open/os.read: half the cost of open() for these tiny files, read on every request.
    # One read() is enough below the buffer size: a /proc file generates its text per read, so
    # the usual read-until-empty loop would pay for it twice.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, PROC_READ_BYTES)]
        while len(chunks[-1]) == PROC_READ_BYTES:
            chunks.append(os.read(fd, PROC_READ_BYTES))
        return b"".join(chunks)
    finally:
        os.close(fd)


def start_time(pid: int, proc: str = PROC) -> int:
    """Field 22 of /proc/PID/stat: start time in clock ticks after boot."""
    data = _read(f"{proc}/{pid}/stat")
    # The command name (field 2) is in parentheses and may itself contain ") ".
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])


def _status_fields(pid: int, proc: str) -> dict[str, str]:
    fields = {}
    for line in _read(f"{proc}/{pid}/status").decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def systemd_unit(cgroup_text: str) -> str | None:
    """The innermost systemd service or scope in a /proc/PID/cgroup listing (cgroup v2 or v1)."""
    for line in cgroup_text.splitlines():
        hierarchy, _, path = line.partition(":")[2].partition(":")
        if hierarchy not in ("", "name=systemd"):
            continue
        units = [part for part in path.split("/") if part.endswith((".service", ".scope"))]
        if units:
            return units[-1]
    return None


def _optional_int(path: str) -> int | None:
    try:
        value = int(_read(path).strip())
    except (OSError, ValueError):
        return None
    # 4294967295 means "not set" for loginuid and sessionid.
    return None if value == 0xFFFFFFFF else value


class _Pin:
    """A thread pidfd and the start time of its task; closes itself when dropped (a worker
    thread that ends, a resolver that goes away)."""

    __slots__ = ("fd", "start")

    def __init__(self, fd: int, start: int) -> None:
        self.fd = fd
        self.start = start

    def task_alive(self) -> bool:
        """The pid still names this pin's task: the pidfd does not poll readable. (A pidfd
        polls readable once its task has exited, or for good once its pid is detached.)"""
        if self.fd < 0:
            return False
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        events = poller.poll(0)
        if events and events[0][1] & select.POLLNVAL:
            self.fd = -1  # not ours any more (closed behind our back): never close it again
            return False
        return not events

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # also at interpreter exit
            self.close()


def _thread_pidfds_supported() -> bool:
    """Whether this kernel opens pidfds of single threads (PIDFD_THREAD, Linux 6.9): probed
    once on our own thread, so a caller that vanishes later is never taken for an old kernel."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return False
    try:
        os.close(pidfd_open(threading.get_native_id(), PIDFD_THREAD))
    except OSError:
        return False
    return True


class _Pins:
    """Per worker thread: caller thread id -> _Pin, least recently used first.

    Thread-local, so no pidfd is ever closed by one thread while another polls it."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.supported = _thread_pidfds_supported()

    def _table(self) -> OrderedDict[int, _Pin]:
        table = getattr(self._local, "table", None)
        if table is None:
            table = self._local.table = OrderedDict()
        return table

    def find(self, pid: int) -> _Pin | None:
        """The pin of the task ``pid`` named when it was pinned, if that task still lives."""
        table = self._table()
        pin = table.get(pid)
        if pin is None:
            return None
        if not pin.task_alive():
            del table[pid]
            pin.close()
            return None
        table.move_to_end(pid)
        return pin

    def open(self, pid: int) -> int | None:
        """A new thread pidfd for ``pid``; None if the task is gone already (or no support)."""
        if not self.supported:
            return None
        try:
            return os.pidfd_open(pid, PIDFD_THREAD)
        except OSError:
            return None  # gone (ESRCH; EINVAL on some 6.9-era kernels): checked by reads

    def keep(self, pid: int, pin: _Pin) -> None:
        table = self._table()
        old = table.pop(pid, None)
        if old is not None:
            old.close()
        table[pid] = pin
        while len(table) > PINS_PER_THREAD:
            table.popitem(last=False)[1].close()


class IdentityResolver:
    """Resolves and caches caller identities; safe to use from many FUSE threads.

    Checked on every request: the process (pid and start time), its executable (an execve of
    another program) and its command line (an interpreter exec-ing another script keeps pid,
    start time and executable). Re-read at most ``refresh_seconds`` apart: groups, systemd
    unit, a debugger attached later (TracerPid), the environment (LD_PRELOAD) — reading them
    on every stat() would double the cost of metadata requests.
    """

    def __init__(self, proc: str = PROC, refresh_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._proc = proc
        self._refresh = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._callers: OrderedDict[tuple[object, ...], tuple[Caller, float]] = OrderedDict()
        self._recent: OrderedDict[int, tuple[Caller, tuple[int, int], float]] = OrderedDict()
        self._hashes: OrderedDict[_ExeKey, str] = OrderedDict()
        self._users: dict[int, str | None] = {}
        # Only for the real /proc: a pidfd names a real task, a test's fake /proc tree does not.
        self._pins = _Pins() if proc == PROC else None

    def resolve(self, pid: int, uid: int, gid: int, reuse_within: float = 0.0) -> Caller:
        """The caller of a request. ``reuse_within`` > 0 accepts this thread's identity if it
        was fully checked that recently (for attribute lookups only: a burst of stat() calls
        from `ls -l` then costs one /proc check, not one per name)."""
        if reuse_within > 0:
            recent = self._recent.get(pid)
            if recent is not None and recent[1] == (uid, gid) and self._clock() - recent[2] <= reuse_within:
                return recent[0]
        try:
            caller = self._resolve(pid, uid, gid)
        except Unidentified as exc:
            return Caller(pid=pid, uid=uid, gid=gid, user=self._user_name(uid), unidentified=str(exc))
        # Least recently checked first out, not all at once: thread ids of exited programs
        # fill the table, and a clear made every busy thread pay a full check again.
        with self._lock:
            self._recent.pop(pid, None)
            self._recent[pid] = (caller, (uid, gid), self._clock())
            while len(self._recent) > CACHE_SIZE:
                self._recent.popitem(last=False)
        return caller

    def _resolve(self, pid: int, uid: int, gid: int) -> Caller:
        if pid <= 0:
            raise Unidentified("the request carries no process id (the caller is outside this "
                               "mount's pid namespace or is the kernel)")
        before, pin = self._pinned_start_time(pid)
        exe_key, exe = self._executable(pid)
        command_line = self._command_line(pid)
        key = (pid, before, exe_key, uid, gid, command_line)
        now = self._clock()
        with self._lock:
            entry = self._callers.get(key)
            if entry is not None:
                self._callers.move_to_end(key)
        if entry is None or now - entry[1] > self._refresh:
            entry = (self._build(pid, uid, gid, before, exe_key, exe, command_line), now)
        # The pid could have been reused while we read: the task must not have exited (pinned),
        # or the start time must not have moved.
        if (not pin.task_alive() if pin is not None else self._start_time(pid) != before):
            raise Unidentified(f"process {pid} exited and its pid was reused while identifying it")
        with self._lock:
            self._callers[key] = entry
            while len(self._callers) > CACHE_SIZE:
                self._callers.popitem(last=False)
        return entry[0]

    def _pinned_start_time(self, pid: int) -> tuple[int, _Pin | None]:
        """The start time of the task ``pid`` names now, and its pin if it has one.

        A new pin's pidfd is opened before the start time is read: the check after the other
        /proc reads (``_resolve``: the pin still names a live task) then covers this read too,
        so the pid named the pinned task all along. A pin whose task died meanwhile fails that
        check and is dropped at its next use."""
        pins = self._pins
        if pins is None:
            return self._start_time(pid), None
        pin = pins.find(pid)
        if pin is not None:
            return pin.start, pin
        pidfd = pins.open(pid)
        if pidfd is None:
            return self._start_time(pid), None
        pin = _Pin(pidfd, 0)  # owns the descriptor from here on, also if the read below fails
        pin.start = self._start_time(pid)
        pins.keep(pid, pin)
        return pin.start, pin

    def _command_line(self, pid: int) -> bytes:
        try:
            return _read(f"{self._proc}/{pid}/cmdline")
        except OSError as exc:
            raise Unidentified(f"/proc/{pid} became unreadable while identifying it ({exc})") from None

    def _start_time(self, pid: int) -> int:
        try:
            return start_time(pid, self._proc)
        except (OSError, ValueError, IndexError) as exc:
            raise Unidentified(f"process {pid} is gone or /proc/{pid}/stat is unreadable ({exc})") from None

    def _executable(self, pid: int) -> tuple[_ExeKey, str]:
        link = f"{self._proc}/{pid}/exe"
        try:
            exe = os.readlink(link)
            st = os.stat(link)  # follows to the file actually running, even if renamed
        except OSError as exc:
            raise Unidentified(f"the executable of process {pid} cannot be read ({exc.strerror})") from None
        if exe.endswith(DELETED_SUFFIX):
            raise Unidentified(f"process {pid} runs a deleted or replaced executable ({exe})")
        return _ExeKey(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), exe

    def _build(self, pid: int, uid: int, gid: int, started: int, exe_key: _ExeKey, exe: str,
               command_line: bytes) -> Caller:
        # command_line: the bytes the cache key holds, so the argv a rule sees is the one cached
        proc = f"{self._proc}/{pid}"
        try:
            status = _status_fields(pid, self._proc)
            tgid = int(status.get("Tgid", pid))
            argv = tuple(arg.decode(errors="surrogateescape")
                         for arg in command_line.split(b"\0") if arg)
            unit = systemd_unit(_read(f"{proc}/cgroup").decode(errors="replace"))
            environ = _read(f"{self._proc}/{tgid}/environ")
        except (OSError, ValueError) as exc:
            raise Unidentified(f"/proc/{pid} became unreadable while identifying it ({exc})") from None
        groups = frozenset(int(g) for g in status.get("Groups", "").split())
        tracer = int(status.get("TracerPid", "0") or 0)
        return Caller(
            pid=pid, uid=uid, gid=gid, tgid=tgid, groups=groups, user=self._user_name(uid),
            exe=exe, sha256=self._sha256(pid, exe_key), unit=unit, argv=argv,
            loginuid=_optional_int(f"{proc}/loginuid"), session=_optional_int(f"{proc}/sessionid"),
            start_time=self._process_start(tgid, pid, started),
            traced=_traced(tracer, environ))

    def _process_start(self, tgid: int, pid: int, thread_start: int) -> int:
        if tgid == pid:
            return thread_start
        try:
            return start_time(tgid, self._proc)
        except (OSError, ValueError, IndexError):
            raise Unidentified(f"the process of thread {pid} is gone") from None

    def _sha256(self, pid: int, exe_key: _ExeKey) -> str:
        with self._lock:
            digest = self._hashes.get(exe_key)
        if digest is not None:
            return digest
        link = f"{self._proc}/{pid}/exe"
        try:
            with open(link, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
                st = os.fstat(f.fileno())
        except OSError as exc:
            raise Unidentified(f"the executable of process {pid} cannot be read ({exc.strerror})") from None
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (
                exe_key.dev, exe_key.ino, exe_key.size, exe_key.mtime_ns, exe_key.ctime_ns):
            raise Unidentified(f"the executable of process {pid} changed while it was being hashed")
        with self._lock:
            self._hashes[exe_key] = digest
            while len(self._hashes) > CACHE_SIZE:
                self._hashes.popitem(last=False)
        return digest

    def _user_name(self, uid: int) -> str | None:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = None
        return self._users[uid]


def _traced(tracer_pid: int, environ: bytes) -> str | None:
    if tracer_pid:
        return f"it is being traced by process {tracer_pid} (debugger/ptrace)"
    for entry in environ.split(b"\0"):
        if entry.startswith(PRELOAD_VARIABLES) and entry.partition(b"=")[2]:
            return f"it was started with {entry.partition(b'=')[0].decode()} set"
    return None


def file_sha256(path: str) -> str:
    """SHA-256 of a file, as pinned by `allow add`."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
