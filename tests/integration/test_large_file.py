"""A large file (mammography tomosynthesis size) round trip through the mount."""

from __future__ import annotations

import hashlib
import os
import random
import time

import pytest

pytestmark = pytest.mark.integration

MIB = 1 << 20
CHUNK, HEADER, OVERHEAD = 65536, 24, 28
SIZE = 200 * MIB + 12345  # not a multiple of the chunk size: the final chunk is partial
SEED = 20240601


def block(index: int) -> bytes:
    """Block ``index`` of the file (1 MiB, the last one shorter): reproducible, so the test never
    holds 200 MB in memory and can recompute any range."""
    length = min(MIB, SIZE - index * MIB)
    return random.Random(SEED + index).randbytes(length)


def expected_range(offset: int, length: int) -> bytes:
    out = bytearray()
    while length > 0:
        index, within = divmod(offset, MIB)
        piece = block(index)[within:within + length]
        out += piece
        offset, length = offset + len(piece), length - len(piece)
    return bytes(out)


def test_large_file_round_trip(mounted) -> None:
    path = mounted.mountpoint / "tomo" / "breast-tomo.dcm"
    path.parent.mkdir()
    written = hashlib.sha256()
    started = time.monotonic()
    with open(path, "wb", buffering=0) as f:
        for index in range(-(-SIZE // MIB)):
            data = block(index)
            written.update(data)
            assert f.write(data) == len(data)
        os.fsync(f.fileno())
    write_seconds = time.monotonic() - started

    assert os.stat(path).st_size == SIZE
    chunks = -(-SIZE // CHUNK)
    stored = mounted.backing / "tomo" / "breast-tomo.dcm"
    assert stored.stat().st_size == HEADER + SIZE + chunks * OVERHEAD

    mounted.unmount()  # read back from the encrypted file, not from the kernel's page cache
    mounted.mount()
    read_back = hashlib.sha256()
    started = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        total = 0
        while piece := f.read(MIB):
            read_back.update(piece)
            total += len(piece)
    read_seconds = time.monotonic() - started
    assert total == SIZE
    assert read_back.hexdigest() == written.hexdigest()

    rnd = random.Random(SEED)
    offsets = [rnd.randrange(SIZE - 4096) for _ in range(40)]
    offsets += [CHUNK - 2048, 1000 * CHUNK - 1, SIZE - 4096, SIZE - 100]  # boundaries and the tail
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in offsets:
            assert os.pread(fd, 4096, offset) == expected_range(offset, min(4096, SIZE - offset)), offset
    finally:
        os.close(fd)
    print(f"200 MiB: write {SIZE / MIB / write_seconds:.0f} MiB/s, "
          f"read {SIZE / MIB / read_seconds:.0f} MiB/s")
