"""Reads into and writes from caller buffers (the FUSE layer passes views of libfuse's own
request buffers): same bytes as a plain model, nothing written outside the asked range, and
nothing of the caller's buffer kept after the call returns."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from encfs_pacs.errors import IntegrityError

from .storekit import small_volume

CHUNK = 4096
GUARD = b"\xa5" * 16


def read_into_guarded(handle, size: int, offset: int) -> bytes:  # type: ignore[no-untyped-def]
    """read_into a view inside a larger buffer; the bytes around it must stay untouched."""
    buffer = bytearray(GUARD + b"\x5a" * size + GUARD)
    count = handle.read_into(memoryview(buffer)[len(GUARD):len(GUARD) + size], offset)
    assert buffer[:len(GUARD)] == GUARD and buffer[-len(GUARD):] == GUARD
    assert buffer[len(GUARD) + count:-len(GUARD)] == b"\x5a" * (size - count)  # beyond the count too
    return bytes(buffer[len(GUARD):len(GUARD) + count])


@pytest.mark.parametrize("seed", range(6))
def test_random_writes_from_views_and_reads_into_views_match_a_model(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    volume = small_volume(tmp_path, CHUNK)
    model = bytearray()
    handle = volume.create("/f", 0o644, os.O_RDWR)
    try:
        for _ in range(60):
            offset = rng.randrange(0, len(model) + 2 * CHUNK)
            data = bytearray(rng.randbytes(rng.choice([1, 17, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])))
            expected = bytes(data)
            assert handle.write(memoryview(data), offset) == len(data)
            data[:] = b"\xff" * len(data)  # libfuse reuses its buffer once the call returned
            model.extend(bytes(max(0, offset + len(expected) - len(model))))
            model[offset:offset + len(expected)] = expected
            for _ in range(3):
                at = rng.randrange(0, len(model) + CHUNK)
                size = rng.choice([1, CHUNK // 2, CHUNK, CHUNK + 3, 4 * CHUNK, len(model) + 10])
                assert read_into_guarded(handle, size, at) == bytes(model[at:at + size])
        assert handle.read(len(model) + 1, 0) == bytes(model)
    finally:
        handle.close()


def test_read_into_a_damaged_chunk_raises(tmp_path: Path) -> None:
    volume = small_volume(tmp_path, CHUNK)
    handle = volume.create("/f", 0o644, os.O_RDWR)
    handle.write(os.urandom(3 * CHUNK), 0)
    handle.close()
    backing = tmp_path / "b" / "f"
    stored = bytearray(backing.read_bytes())
    stored[24 + (CHUNK + 28) + 100] ^= 1  # a byte inside the second chunk's ciphertext
    backing.write_bytes(stored)
    handle = volume.open("/f", os.O_RDONLY)
    try:
        assert len(read_into_guarded(handle, CHUNK, 0)) == CHUNK  # the first chunk is intact
        for size, offset in ((3 * CHUNK, 0), (CHUNK, CHUNK), (10, CHUNK + 5)):  # whole and partial
            with pytest.raises(IntegrityError):
                handle.read_into(memoryview(bytearray(size)), offset)
    finally:
        handle.close()
