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
keeps one per caller thread it has identified: a pidfd refers to one task for good, and polls
readable once that task has exited, so "not exited" after the /proc reads proves they were of
the same task as before, with no start-time read at all (see ``_Pins``).
"""

from __future__ import annotations

import errno
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


class _Pins:
    """Per worker thread: caller thread id -> (pidfd, start time), least recently used first.

    Thread-local, so no pidfd is ever closed by one thread while another polls it."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.supported = True  # False once the kernel refuses thread pidfds

    def _table(self) -> OrderedDict[int, tuple[int, int]]:
        table = getattr(self._local, "table", None)
        if table is None:
            table = self._local.table = OrderedDict()
        return table

    def start_time(self, pid: int) -> tuple[int, int] | None:
        """(pidfd, start time) of a task pinned earlier that has not exited since."""
        table = self._table()
        entry = table.get(pid)
        if entry is None:
            return None
        if exited(entry[0]):
            del table[pid]
            os.close(entry[0])
            return None
        table.move_to_end(pid)
        return entry

    def open(self, pid: int) -> int | None:
        """A new thread pidfd for ``pid``, or None where there is none (old kernel, gone)."""
        if not self.supported:
            return None
        try:
            return os.pidfd_open(pid, PIDFD_THREAD)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS):
                self.supported = False  # before Linux 6.9: start-time reads only
            return None

    def keep(self, pid: int, pidfd: int, started: int) -> None:
        table = self._table()
        old = table.pop(pid, None)
        if old is not None:
            os.close(old[0])
        table[pid] = (pidfd, started)
        while len(table) > PINS_PER_THREAD:
            os.close(table.popitem(last=False)[1][0])


def exited(pidfd: int) -> bool:
    """A pidfd polls readable once its task has exited."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


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
        self._recent: dict[int, tuple[Caller, tuple[int, int], float]] = {}
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
        if len(self._recent) > CACHE_SIZE:
            self._recent.clear()
        self._recent[pid] = (caller, (uid, gid), self._clock())
        return caller

    def _resolve(self, pid: int, uid: int, gid: int) -> Caller:
        if pid <= 0:
            raise Unidentified("the request carries no process id (the caller is outside this "
                               "mount's pid namespace or is the kernel)")
        before, pidfd = self._pinned_start_time(pid)
        exe_key, exe = self._executable(pid)
        key = (pid, before, exe_key, uid, gid, self._command_line(pid))
        now = self._clock()
        with self._lock:
            entry = self._callers.get(key)
            if entry is not None:
                self._callers.move_to_end(key)
        if entry is None or now - entry[1] > self._refresh:
            entry = (self._build(pid, uid, gid, before, exe_key, exe), now)
        # The pid could have been reused while we read: the task must not have exited (pinned),
        # or the start time must not have moved.
        if (exited(pidfd) if pidfd is not None else self._start_time(pid) != before):
            raise Unidentified(f"process {pid} exited and its pid was reused while identifying it")
        with self._lock:
            self._callers[key] = entry
            while len(self._callers) > CACHE_SIZE:
                self._callers.popitem(last=False)
        return entry[0]

    def _pinned_start_time(self, pid: int) -> tuple[int, int | None]:
        """The start time of the task ``pid`` names now, and its pidfd if it is pinned.

        A new pin is taken between two start-time reads that agree: the pid named one task all
        along, so the pidfd opened in between is that task's."""
        pins = self._pins
        if pins is None:
            return self._start_time(pid), None
        pinned = pins.start_time(pid)
        if pinned is not None:
            return pinned[1], pinned[0]
        before = self._start_time(pid)
        pidfd = pins.open(pid)
        if pidfd is None:
            return before, None
        try:
            same = self._start_time(pid) == before
        except Unidentified:
            os.close(pidfd)
            raise
        if not same:
            os.close(pidfd)
            raise Unidentified(f"process {pid} exited and its pid was reused while identifying it")
        pins.keep(pid, pidfd, before)
        return before, pidfd

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

    def _build(self, pid: int, uid: int, gid: int, started: int, exe_key: _ExeKey, exe: str) -> Caller:
        proc = f"{self._proc}/{pid}"
        try:
            status = _status_fields(pid, self._proc)
            tgid = int(status.get("Tgid", pid))
            argv = tuple(arg.decode(errors="surrogateescape")
                         for arg in _read(f"{proc}/cmdline").split(b"\0") if arg)
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
