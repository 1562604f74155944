"""Readers of one inode run side by side; a writer still never lets them see a half-written chunk."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from encfs_pacs import store

from .storekit import small_volume

CHUNK = 4096


@pytest.fixture
def volume(tmp_path: Path) -> store.Volume:
    return small_volume(tmp_path, CHUNK)


def test_readers_overlap(volume: store.Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two reads of one file are inside the backing pread at the same time (they used to queue)."""
    writer = volume.create("/s.dcm", 0o600, os.O_RDWR)
    writer.write(b"a" * CHUNK * 4, 0)
    both_inside, overlapped = threading.Barrier(2, timeout=2), threading.Event()
    real_pread = os.pread

    def slow_pread(fd: int, size: int, offset: int) -> bytes:
        try:
            both_inside.wait()  # passes only when the other read is in its pread too
            overlapped.set()
        except threading.BrokenBarrierError:
            pass
        return real_pread(fd, size, offset)

    readers = [volume.open("/s.dcm", os.O_RDONLY) for _ in range(2)]
    readers[0].read(1, 0)  # the cipher is set up (its header pread is not the one we time)
    monkeypatch.setattr(store.os, "pread", slow_pread)
    threads = [threading.Thread(target=r.read, args=(CHUNK, 0)) for r in readers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    monkeypatch.undo()
    assert overlapped.is_set()
    for handle in (*readers, writer):
        handle.close()


def test_reads_during_rewrites_see_old_or_new_data_only(volume: store.Volume) -> None:
    size = CHUNK * 8
    writer = volume.create("/s.dcm", 0o600, os.O_RDWR)
    writer.write(b"a" * size, 0)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_loop() -> None:
        handle = volume.open("/s.dcm", os.O_RDONLY)
        try:
            while not stop.is_set():
                data = handle.read(size, 0)
                # Each rewrite covers whole chunks with one letter: a torn read would mix them
                # inside a chunk, or fail authentication (IntegrityError).
                for start in range(0, len(data), CHUNK):
                    chunk = data[start:start + CHUNK]
                    assert chunk == chunk[:1] * len(chunk), "a chunk mixes two writes"
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)
        finally:
            handle.close()

    threads = [threading.Thread(target=read_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 1.5
    letter = 0
    while time.monotonic() < deadline and not errors:
        letter = (letter + 1) % 26
        writer.write(bytes([97 + letter]) * size, 0)
        writer.truncate(size - CHUNK // 2)  # the final chunk changes too
        writer.write(bytes([97 + letter]) * (CHUNK // 2), size - CHUNK // 2)
    stop.set()
    for thread in threads:
        thread.join(10)
    writer.close()
    assert errors == []
