"""Mounting and unmounting: checks, the daemon's life cycle, and the runtime registry.

``serve`` runs the FUSE loop in the calling process until the file system is unmounted
(fusermount3 -u, or SIGTERM/SIGINT, which libfuse turns into a clean unmount).
``mount_in_background`` forks a daemon and returns only once the kernel has initialised the
mount (FUSE ``init`` has run), or raises with the daemon's reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..access import AccessGate
from ..audit.dicom import DicomTagCache
from ..audit.enrich import EnrichingAudit
from ..audit.forward import ForwardingLogHandler, SyslogForwarder, parse_target
from ..audit.spool import SpoolIngester, spool_path
from ..errors import MountFailed, MountpointError, UnmountFailed
from ..store import Volume
from ._binding import EncfsFUSE
from .operations import EncryptedOperations, SharedStorageOperations

log = logging.getLogger("encfs_pacs.mount")
READY_TIMEOUT_SECONDS = 60.0
# The kernel's readahead for a FUSE mount starts at 128 KiB, so a sequential reader's file
# arrives as 128 KiB requests, each a Python round trip. 1 MiB requests read a cold 512 MiB file
# about twice as fast here (docs/performance.md); more gained nothing. Root only (sysfs).
READ_AHEAD_KB = 1024
# libfuse worker threads: enough for a PACS's parallel readers and writers. Each keeps its Python
# thread state for good (fs/_binding.py), so libfuse must never end one while mounted: its idle
# limit is the same number (fuse_options).
FUSE_WORKERS = 16
# glibc malloc, the daemon's settings (mallopt(3)). With its defaults, a 1 MiB request buffer
# (a write's sealed chunks, the stored chunks a read decrypts) comes from mmap and goes back
# at free, or the worker's arena is trimmed: every request faults its buffers' pages in again
# (~200 000 page faults per GiB written, up to half the daemon's CPU). glibc raises its
# thresholds by itself only after certain frees, so a mount was fast or slow by chance (1 GiB
# written, measured when writes still made four 1 MiB copies: 320-490 MiB/s, 0.73-1.44 s
# system CPU; fixed: 530-630, 0.37-0.58 s).
# Fixed thresholds keep freed buffers for reuse: the heap holds what the busiest moment needed.
MALLOC_MMAP_THRESHOLD = 4 << 20  # above the largest request (1 MiB) and its sealed form
MALLOC_TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h parameter numbers


def keep_request_buffers_mapped() -> bool:
    """Fixed glibc malloc thresholds for the daemon (see MALLOC_MMAP_THRESHOLD); False where
    the C library has no mallopt (not glibc), which costs speed only."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        log.debug("no mallopt in this C library: malloc keeps its default thresholds")
        return False
    # mallopt returns 1 on success
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))


def raise_open_file_limit() -> int:
    """Raise the daemon's soft limit on open files to its hard limit; returns the new limit.

    Every file a PACS holds open through the mount is a backing descriptor here, and the
    identity check keeps a pidfd per recent caller thread (policy/identity.py): systemd's
    default soft limit of 1024 would make a busy archive fail with EMFILE long before the
    hard limit (524 288 under systemd) is near."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= soft:  # (Linux caps the hard limit at nr_open: never RLIM_INFINITY here)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard


# ---------------------------------------------------------------------------- mount table


def _unescape_mountinfo(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, the fields we use."""

    device: str  # "major:minor"
    mountpoint: str
    fstype: str  # "fuse.encfs-pacs", "ext4", ...
    source: str  # for our mounts the daemon's fsname: the backing folder


def mount_table(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """Every mount visible to this process, in the kernel's order (a later mount on the same
    mount point hides the earlier ones)."""
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            left, _, right = line.rstrip("\n").partition(" - ")
            fields, tail = left.split(" "), right.split(" ")
            entries.append(MountEntry(device=fields[2], mountpoint=_unescape_mountinfo(fields[4]),
                                      fstype=tail[0],
                                      source=_unescape_mountinfo(tail[1]) if len(tail) > 1 else ""))
    return entries


def mounted_fuse_filesystems() -> dict[str, str]:
    """Mount point -> file system type for every FUSE mount visible to this process."""
    return {entry.mountpoint: entry.fstype for entry in mount_table() if entry.fstype.startswith("fuse")}


def _mount_device(mountpoint: str) -> str | None:
    """The "major:minor" of the file system mounted on ``mountpoint`` (the last one there)."""
    devices = [entry.device for entry in mount_table() if entry.mountpoint == mountpoint]
    return devices[-1] if devices else None


def raise_read_ahead(mountpoint: str, kb: int = READ_AHEAD_KB) -> None:
    """Let the kernel read ahead ``kb`` on this mount (never lowers a larger setting).

    Runs on its own thread once the mount is up: statvfs (answered by the daemon, no access
    decision, no audit record) returns only after the kernel has taken libfuse's INIT reply,
    which would otherwise cap the setting back to 128 KiB."""
    try:
        os.statvfs(mountpoint)
        device = _mount_device(mountpoint)
        if device is None:
            return
        setting = Path("/sys/class/bdi") / device / "read_ahead_kb"
        if int(setting.read_text()) < kb:
            setting.write_text(str(kb))
            log.debug("readahead of %s raised to %d KiB", mountpoint, kb)
    except (OSError, ValueError) as exc:  # not root, no sysfs: the kernel default stays
        log.debug("readahead of %s left as it is: %s", mountpoint, exc)


def is_mounted(mountpoint: Path) -> bool:
    return os.path.abspath(mountpoint) in mounted_fuse_filesystems() or os.path.ismount(mountpoint)


def check_mountpoint(mountpoint: Path, backing: Path) -> None:
    path = Path(os.path.abspath(mountpoint))
    if is_mounted(path):
        raise MountpointError(f"{path} is already mounted (unmount it first: encfs-pacs unmount {path})")
    if not path.exists():
        raise MountpointError(f"mountpoint {path} does not exist: create it first (mkdir -p {path})")
    if not path.is_dir():
        raise MountpointError(f"mountpoint {path} is not a folder")
    if any(path.iterdir()):
        raise MountpointError(
            f"mountpoint {path} is not empty: mounting would hide its files; use an empty folder")
    backing = backing.resolve()
    if path == backing or backing in path.parents or path in backing.parents:
        raise MountpointError("the mountpoint and the backing folder must not contain each other")


# ---------------------------------------------------------------------------- runtime registry


def runtime_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/encfs-pacs")
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/encfs-pacs-{os.geteuid()}"
    return Path(base) / "encfs-pacs"


def _registry_file(mountpoint: Path) -> Path:
    name = os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"
    return runtime_dir() / f"{name}.json"


def _register(mountpoint: Path, volume: Volume, gate: AccessGate | None = None,
              audit_log: Path | None = None, syslog: SyslogForwarder | None = None) -> None:
    """Record the daemon's pid for `unmount` to wait on, and what is in force for `status`.

    Best effort: never fails the mount."""
    directory = runtime_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(directory)
        # Without XDG_RUNTIME_DIR the folder is under /tmp, where another user could have
        # planted it (or a symlink in it) to make us overwrite a file of theirs choosing.
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            log.warning("not recording the daemon in %s: it is not a private folder of ours", directory)
            return
        record = {"pid": os.getpid(), "mountpoint": os.path.abspath(mountpoint),
                  "backing": str(volume.backing),
                  "policy": None if gate is None or gate.holder.path is None else str(gate.holder.path),
                  "learn": bool(gate is not None and gate.learn),
                  "shared_storage": volume.shared,
                  "audit_log": None if audit_log is None else os.path.abspath(audit_log),
                  "syslog": None if syslog is None else str(syslog.target),
                  "syslog_hostname": None if syslog is None else syslog.hostname}
        fd = os.open(_registry_file(mountpoint), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(record) + "\n")
    except OSError as exc:
        log.warning("could not record the daemon in %s: %s", directory, exc)


def registered_daemon(mountpoint: Path) -> dict[str, object] | None:
    try:
        return json.loads(_registry_file(mountpoint).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- serving


def _reload_on_sighup(gate: AccessGate) -> None:
    """SIGHUP reloads the policy. libfuse would treat SIGHUP as "unmount", so the signal is
    blocked in every thread (the FUSE workers inherit the mask) and taken by one waiter."""
    if gate.holder.path is None:
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

    def wait_for_hangups() -> None:
        while True:
            signal.sigwait({signal.SIGHUP})
            gate.holder.reload("SIGHUP")

    threading.Thread(target=wait_for_hangups, name="sighup", daemon=True).start()


def _mount_event(event: str, volume: Volume, mountpoint: Path, gate: AccessGate) -> dict[str, object]:
    return {"event": event, "outcome": "allowed",
            "object": {"path": os.path.abspath(mountpoint), "backing": str(volume.backing)},
            "program": {"pid": os.getpid(), "exe": sys.executable},
            "detail": ("learn mode: nothing is denied" if gate.learn else
                       "no policy: every process gets plaintext" if gate.allow_all else
                       f"policy {gate.policy.source}")}


def open_audit(volume: Volume, audit_log: Path, *, fail_open: bool,
               forwarder: SyslogForwarder | None = None, host: str | None = None) -> EnrichingAudit:
    """The volume's audit trail, with patient and study added from DICOM headers; with a
    ``forwarder``, every committed line also goes to the syslog collector.

    Opened in the daemon itself (its writer thread would not survive the fork); a failure
    reaches the mount command through the ready pipe and nothing is mounted."""
    from ..audit import open_audit_log

    # The writer itself always keeps records it cannot write yet (in memory, up to its limit):
    # records of accesses the gate let through just before an outage must not be lost. Failing
    # closed is the gate's job: it asks the sink before every access (EnrichingAudit.check).
    writer = open_audit_log(audit_log, volume.backing, volume.master_key, fail_open=True,
                            forward=None if forwarder is None else forwarder.audit_lines, host=host)
    if forwarder is not None:
        forwarder.report = writer.append  # syslog-dropped records: straight to the writer, never blocks
    return EnrichingAudit(writer, DicomTagCache(volume), fail_open=fail_open)


def start_forwarder(target: str | None, hostname: str | None) -> SyslogForwarder | None:
    """The syslog forwarder for a udp:// or tcp:// target (None: no collector), which also
    takes the daemon log. Started in the daemon: threads do not survive the fork."""
    if target is None:
        return None
    forwarder = SyslogForwarder(parse_target(target), hostname).start()
    logging.getLogger("encfs_pacs").addHandler(ForwardingLogHandler(forwarder))
    log.info("forwarding the audit trail and the daemon log to %s as host %s", forwarder.target,
             forwarder.hostname)
    return forwarder


def stop_forwarder(forwarder: SyslogForwarder | None) -> None:
    """After the audit log is sealed: send what is queued (a few seconds at most), then stop."""
    if forwarder is None:
        return
    forwarder.close(timeout=2.0)  # settle() has already waited for a slow collector
    logger = logging.getLogger("encfs_pacs")
    for handler in list(logger.handlers):
        if isinstance(handler, ForwardingLogHandler) and handler.forwarder is forwarder:
            logger.removeHandler(handler)


def start_spool(volume: Volume, audit: EnrichingAudit, audit_log: Path) -> SpoolIngester | None:
    """Record the events maintenance commands queued in the volume (audit/spool.py), then keep
    polling for new ones. A spool that cannot be read is an alert in the trail, not a failed
    mount: the trail of file accesses matters more than waiting maintenance events."""
    ingester = SpoolIngester(volume.backing, audit.writer, volume.master_key, audit_log,  # type: ignore[arg-type]
                             shared=volume.shared)
    try:
        count = ingester.start()
    except OSError as exc:
        log.error("cannot ingest the audit spool of %s: %s", volume.backing, exc)
        audit.append({"event": "security-alert", "outcome": "error", "alert": True,
                      "detail": f"the audit spool {spool_path(volume.backing)} cannot be read ({exc}): "
                                "events of maintenance commands stay unrecorded"})
        return None
    if count:
        log.info("recorded %d queued maintenance event(s) from the audit spool", count)
    return ingester


def fuse_options(volume: Volume, as_root: bool) -> dict[str, object]:
    """The libfuse mount options of a volume's mount."""
    options: dict[str, object] = {
        "fsname": str(volume.backing).replace(",", "_"),
        "subtype": "encfs-pacs",
        # The kernel enforces file modes against the *calling* user, so a root daemon serving a
        # PACS service user does not turn every file world-writable.
        "default_permissions": True,
        # libfuse 3.14 rejects its own "unset" idle-thread default with a warning on every
        # mount; explicit limits silence it. Idle workers are kept, not ended and restarted:
        # each keeps its Python thread state (fs/_binding.py), ~50 µs saved on every request.
        "max_threads": FUSE_WORKERS,
        "max_idle_threads": FUSE_WORKERS,
    }
    if as_root:
        options["allow_other"] = True  # the PACS runs as its own user, not as root
    return options


def serve(volume: Volume, mountpoint: Path, gate: AccessGate, on_ready: Callable[[], None] | None = None,
          audit_log: Path | None = None, audit_fail_open: bool = False, syslog: str | None = None,
          syslog_hostname: str | None = None, audit_host: str | None = None) -> None:
    """Run the file system until it is unmounted. Blocks. ``syslog``: a udp:// or tcp:// collector.

    ``audit_host``: sign the audit log with this host's own key store in the volume (shared
    storage: every mount of one volume has its own). Shared storage itself is switched on in
    ``volume`` (Volume.enable_shared_storage) before this is called."""
    _reload_on_sighup(gate)  # first: threads started later inherit the blocked SIGHUP
    log.debug("open-file limit %d", raise_open_file_limit())
    if not keep_request_buffers_mapped():
        log.info("malloc thresholds left at their defaults (no glibc mallopt): large requests "
                 "may be slower")
    forwarder = start_forwarder(syslog, syslog_hostname)
    try:
        _serve(volume, mountpoint, gate, on_ready, audit_log, audit_fail_open, forwarder, audit_host)
    finally:
        stop_forwarder(forwarder)


def _serve(volume: Volume, mountpoint: Path, gate: AccessGate, on_ready: Callable[[], None] | None,
           audit_log: Path | None, audit_fail_open: bool, forwarder: SyslogForwarder | None,
           audit_host: str | None = None) -> None:
    as_root = os.geteuid() == 0
    ingester = None
    if audit_log is not None:
        audit = open_audit(volume, audit_log, fail_open=audit_fail_open, forwarder=forwarder,
                           host=audit_host)
        gate.audit = audit
        ingester = start_spool(volume, audit, audit_log)  # before serving: queued events first
    gate.holder.start()
    for warning in gate.policy.warnings:
        log.warning("policy: %s", warning)

    came_up = False

    def ready() -> None:
        nonlocal came_up
        came_up = True
        _register(mountpoint, volume, gate, audit_log, forwarder)
        gate.audit.append(_mount_event("mount", volume, mountpoint, gate))
        threading.Thread(target=raise_read_ahead, args=(os.path.abspath(mountpoint),),
                         name="read-ahead", daemon=True).start()
        if on_ready is not None:
            on_ready()

    stale = volume.remove_stale_orphans()
    if stale:
        log.info("removed %d unlinked file(s) left open by a previous mount that did not end cleanly", stale)
    kind = SharedStorageOperations if volume.shared else EncryptedOperations
    operations = kind(volume, gate, on_ready=ready, set_owner=as_root)
    options = fuse_options(volume, as_root)
    try:
        EncfsFUSE(operations, os.path.abspath(mountpoint), raw_fi=True, foreground=True, **options)
    except RuntimeError as exc:
        if came_up:
            # libfuse reports the loop ended by SIGTERM/SIGINT as error 8 after it has already
            # unmounted cleanly: for us that is the normal way to stop.
            log.info("stopped by a signal; the mount was removed cleanly")
            return
        raise MountFailed(f"the kernel refused the mount on {mountpoint} (libfuse error {exc}); "
                          "is fuse3 installed and /dev/fuse usable?") from None
    finally:
        with contextlib.suppress(OSError):
            _registry_file(mountpoint).unlink()
        gate.holder.stop()
        if ingester is not None:
            ingester.stop()  # a last pass: events queued in the final second
        if came_up:
            gate.audit.append(_mount_event("unmount", volume, mountpoint, gate))
        if forwarder is not None and audit_log is not None:
            gate.audit.flush()  # the unmount record is committed, then forwarded
            forwarder.settle()  # what cannot reach the collector is recorded while the trail is open
        close_audit = getattr(gate.audit, "close", None)
        if close_audit is not None:
            close_audit()  # seals the log: a stop checkpoint, then fsync


def _detach_stdio(log_file: Path | None) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    out = devnull if log_file is None else os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)


def mount_in_background(volume: Volume, mountpoint: Path, gate: AccessGate, log_file: Path | None,
                        configure_logging: Callable[[], None], audit_log: Path | None = None,
                        audit_fail_open: bool = False, syslog: str | None = None,
                        syslog_hostname: str | None = None, audit_host: str | None = None) -> int:
    """Fork the daemon; return its pid once the mount is usable."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        code = 1
        try:
            os.setsid()
            configure_logging()

            def ready() -> None:
                # Only now let go of the caller's stdout/stderr: a parent reading our output
                # (a test, a script) would otherwise wait for the daemon to exit.
                _detach_stdio(log_file)
                os.write(write_end, b"OK\n")

            serve(volume, mountpoint, gate, on_ready=ready, audit_log=audit_log,
                  audit_fail_open=audit_fail_open, syslog=syslog, syslog_hostname=syslog_hostname,
                  audit_host=audit_host)
            code = 0
        except BaseException as exc:  # report any reason to the waiting parent, then die
            with contextlib.suppress(OSError):
                os.write(write_end, f"ERR {exc}\n".encode())
            log.error("mount daemon stopped: %s", exc)
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        answer = _read_line(read_end, READY_TIMEOUT_SECONDS)
    finally:
        os.close(read_end)
    if answer == "OK":
        return pid
    if not answer:
        _, status = os.waitpid(pid, os.WNOHANG)
        answer = f"the mount daemon exited without mounting (status {status})" if status else (
            f"the mount was not ready within {READY_TIMEOUT_SECONDS:.0f} s")
    raise MountFailed(answer.removeprefix("ERR "))


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        piece = os.read(fd, 4096)
        if not piece:
            break
        data += piece
    return data.decode(errors="replace").strip()


# ---------------------------------------------------------------------------- unmounting


def unmount(mountpoint: Path, timeout: float = 30.0) -> None:
    """Unmount and wait for the daemon to finish (so its last writes and logs are done)."""
    path = os.path.abspath(mountpoint)
    if not is_mounted(Path(path)):
        raise UnmountFailed(f"{path} is not mounted")
    daemon = registered_daemon(Path(path))
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    command = [tool, "-u", path] if tool else ["umount", path]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.strip() or result.stdout.strip()
        if "busy" in reason.lower():
            raise UnmountFailed(f"{path} is busy: a program still uses files there; stop it "
                                f"(find it with: fuser -vm {path}) and unmount again")
        raise UnmountFailed(f"cannot unmount {path}: {reason}")
    if daemon and isinstance(daemon.get("pid"), int):
        _wait_for_exit(int(daemon["pid"]), timeout)


def _has_exited(pid: int) -> bool:
    """True once ``pid`` is gone *or a zombie*. The daemon is not our child (the mount command
    that forked it has exited), so its zombie lingers until init reaps it; an init that reaps
    late or never (a container's PID 1) would otherwise hold up every unmount until the timeout."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat_file:
            state = stat_file.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def _wait_for_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if _has_exited(pid):
            return
        time.sleep(0.02)
    log.warning("mount daemon %d is still running %.0f s after unmount", pid, timeout)
