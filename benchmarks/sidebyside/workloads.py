"""Workloads shaped like PACS use, and the figures (metrics) they produce.

Every workload works below the mount of the system under test and returns {metric key:
value}. The many-file workloads (CT study, metadata, and the Orthanc ingest) leave their files
in place until the run ends (see ``fresh_folder``); the sequential and random workloads' single
large file is removed afterwards (untimed). "Cold" means: the system is remounted (a new
daemon, empty caches of its own) and the kernel's page cache is dropped. Write phases end
durable: the last file is fsync'ed, or the backing file system is synced (syncfs), inside the
timed region, so no system can win by leaving data in memory.
"""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .systems import System

MIB = 1 << 20
GIB = 1 << 30
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Sizes:
    seq_mib: int = 1024
    study_files: int = 500
    study_kib: int = 512
    meta_dirs: int = 50
    meta_files: int = 5000
    meta_bytes: int = 1024
    rand_mib: int = 256
    rand_reads: int = 20000
    orthanc_instances: int = 200


QUICK_SIZES = Sizes(seq_mib=64, study_files=50, meta_dirs=10, meta_files=500, rand_mib=32,
                    rand_reads=2000, orthanc_instances=10)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: float | None = None  # issue 8: ratio to gocryptfs measured in the same run
    limit: float | None = None  # an absolute bound (daemon RSS)
    daemons_only: bool = False  # a figure of the FUSE daemon: no raw-disk row


METRICS: tuple[Metric, ...] = (
    Metric("seq_write", "sequential write", "MB/s", True, 1.0),
    Metric("seq_read", "sequential read (cold)", "MB/s", True, 1.5),
    Metric("study_write", "CT study write", "files/s", True, 1.2),
    Metric("study_read", "CT study read (cold)", "files/s", True, 1.1),
    Metric("study_reread", "CT study re-read (warm)", "files/s", True, 2.0),
    Metric("meta_create", "small-file create", "files/s", True, 0.9),
    Metric("meta_ls", "ls -lR (cold)", "s", False, 1.0),
    Metric("meta_find", "find (cold)", "s", False, 1.5),
    Metric("meta_stat", "stat all (cold)", "s", False),
    Metric("rand4k", "random 4 KiB reads (cold)", "reads/s", True, 1.0),
    Metric("orthanc_ingest", "Orthanc REST ingest", "inst/s", True),
    Metric("cpu_write", "daemon CPU, sequential write", "s/GiB", False, daemons_only=True),
    Metric("cpu_read", "daemon CPU, sequential read", "s/GiB", False, daemons_only=True),
    Metric("rss_stream", "daemon peak RSS while streaming", "MiB", False, limit=200.0,
           daemons_only=True),
)
METRIC_BY_KEY = {metric.key: metric for metric in METRICS}


@dataclass
class Context:
    sizes: Sizes
    cold: Callable[[System], None]  # remount + drop the page cache
    block: bytes = field(default_factory=lambda: os.urandom(MIB))


# ---------------------------------------------------------------------------- helpers


def fresh_folder(system: System, stem: str) -> Path:
    """A folder name not used yet in this run: ``stem``, ``stem-2``, ...

    Many-file workloads keep their files until the whole work folder is removed at the end of
    the run. On an ext4 without a journal (this machine's), the inodes of files deleted in the
    last 1-6 minutes are skipped when new files are created, and the skipping costs time per
    create that grows with the number deleted: measured here, raw creates fell from ~55 000
    to ~1 700 files/s and gocryptfs's from ~4 200 to ~1 250 after earlier runs removed their
    5 000 files. Removing each repeat's files would make one system's create figure depend on
    which system deleted files just before it."""
    candidate, number = system.path / stem, 1
    while candidate.exists():
        number += 1
        candidate = system.path / f"{stem}-{number}"
    return candidate


def syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def make_durable(system: System) -> None:
    """Flush the mount, then the backing file system the daemon wrote into."""
    syncfs(system.path)
    syncfs(system.root)


def read_whole(path: Path, buffer: bytearray) -> int:
    """Read a file to its end with one reusable buffer (no allocation per call, like dd)."""
    view = memoryview(buffer)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            got = os.readv(fd, [view])
            if got == 0:
                return total
            total += got
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes | memoryview) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def check(condition: bool, message: str) -> None:
    """A figure is only worth printing if the work was really done."""
    if not condition:
        raise RuntimeError(message)


def cpu_per_gib(before: object, after: object, nbytes: int) -> float | None:
    if before is None or after is None:
        return None
    return (after.cpu_s - before.cpu_s) / (nbytes / GIB)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- workloads


def sequential(ctx: Context, system: System) -> dict[str, float]:
    """One large file written with 1 MiB writes and fsync, then read cold with 1 MiB reads."""
    size = ctx.sizes.seq_mib * MIB
    path = system.path / "seq.bin"

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(ctx.sizes.seq_mib):
                check(os.write(fd, ctx.block) == MIB, "short write")
            os.fsync(fd)
        finally:
            os.close(fd)

    figures: dict[str, float] = {}
    before = system.sample()
    seconds = timed(write)
    after = system.sample()
    figures["seq_write"] = size / seconds / 1e6
    hwm = [s.hwm_kib for s in (after,) if s is not None]
    if (cpu := cpu_per_gib(before, after, size)) is not None:
        figures["cpu_write"] = cpu
    ctx.cold(system)
    buffer = bytearray(MIB)
    before = system.sample()
    start = time.perf_counter()
    got = read_whole(path, buffer)
    seconds = time.perf_counter() - start
    after = system.sample()
    check(got == size, f"read {got} bytes of {size}")
    check(bytes(buffer[:64]) == ctx.block[:64], "read back different bytes")
    figures["seq_read"] = size / seconds / 1e6
    if (cpu := cpu_per_gib(before, after, size)) is not None:
        figures["cpu_read"] = cpu
    hwm += [s.hwm_kib for s in (after,) if s is not None]
    if hwm:
        figures["rss_stream"] = max(hwm) / 1024
    path.unlink()
    return figures


def ct_study(ctx: Context, system: System) -> dict[str, float]:
    """Store a CT study (many 512 KiB files), read it cold, then re-read it warm."""
    count, size = ctx.sizes.study_files, ctx.sizes.study_kib * 1024
    folder = fresh_folder(system, "study")
    data = (ctx.block * (size // MIB + 1))[:size]
    names = [folder / f"CT.1.2.840.{i:05d}.dcm" for i in range(count)]

    def store() -> None:
        folder.mkdir()
        for name in names:
            write_file(name, data)
        make_durable(system)

    buffer = bytearray(size + 4096)

    def read_all() -> None:
        for name in names:
            check(read_whole(name, buffer) == size, f"{name.name}: short read")

    figures = {"study_write": count / timed(store)}
    ctx.cold(system)
    figures["study_read"] = count / timed(read_all)
    figures["study_reread"] = count / timed(read_all)
    return figures


def metadata(ctx: Context, system: System) -> dict[str, float]:
    """Many small files in a few folders: create, then cold `ls -lR`, `find` and stat of all."""
    root = fresh_folder(system, "meta")
    per_dir = ctx.sizes.meta_files // ctx.sizes.meta_dirs
    folders = [root / f"d{d:03d}" for d in range(ctx.sizes.meta_dirs)]
    names = [folder / f"f{f:04d}.txt" for folder in folders for f in range(per_dir)]
    data = ctx.block[:ctx.sizes.meta_bytes]

    def create() -> None:
        root.mkdir()
        for folder in folders:
            folder.mkdir()
        for name in names:
            write_file(name, data)
        make_durable(system)

    def run(*command: str) -> None:
        result = subprocess.run(command, capture_output=True, check=False)
        check(result.returncode == 0, f"{command[0]} failed: {result.stderr.decode(errors='replace')}")
        check(result.stdout.count(b"\n") >= len(names), f"{command[0]} listed too few entries")

    def stat_all() -> None:
        for name in names:
            check(os.stat(name).st_size == len(data), f"{name}: wrong size")

    figures = {"meta_create": len(names) / timed(create)}
    ctx.cold(system)
    figures["meta_ls"] = timed(lambda: run("ls", "-lR", str(root)))
    ctx.cold(system)
    figures["meta_find"] = timed(lambda: run("find", str(root)))
    ctx.cold(system)
    figures["meta_stat"] = timed(stat_all)
    return figures


def random_reads(ctx: Context, system: System) -> dict[str, float]:
    """4 KiB preads at random aligned offsets of a file read cold (dcmdump-style seeking)."""
    path = system.path / "random.bin"
    size = ctx.sizes.rand_mib * MIB
    write_file(path, ctx.block * ctx.sizes.rand_mib)
    make_durable(system)
    ctx.cold(system)
    offsets = [4096 * n for n in random.Random(8).choices(range(size // 4096), k=ctx.sizes.rand_reads)]
    buffer = bytearray(4096)

    def read() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            for offset in offsets:
                check(os.preadv(fd, [buffer], offset) == 4096, "short random read")
        finally:
            os.close(fd)

    figures = {"rand4k": len(offsets) / timed(read)}
    offset = offsets[-1] % MIB
    check(bytes(buffer) == ctx.block[offset:offset + 4096], "random read returned different bytes")
    path.unlink()
    return figures


WORKLOADS: dict[str, Callable[[Context, System], dict[str, float]]] = {
    "sequential": sequential,
    "study": ct_study,
    "metadata": metadata,
    "random": random_reads,
}
