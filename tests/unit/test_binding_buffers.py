"""READ and WRITE on libfuse's own buffers (fs/_binding.py), called as libfuse calls them but
without a mount: a pointer to the request buffer, a size, an offset, a fuse_file_info."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import mfusepy
import pytest

from encfs_pacs.access import NullAudit, open_gate
from encfs_pacs.fs import operations
from encfs_pacs.fs._binding import EncfsFUSE, FuseOSError

from .storekit import small_volume

CHUNK = 4096


@pytest.fixture
def fuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EncfsFUSE:
    monkeypatch.setattr(operations, "fuse_get_context", lambda: (0, 0, os.getpid()))
    binding = EncfsFUSE.__new__(EncfsFUSE)  # the class without mounting anything
    binding.operations = operations.EncryptedOperations(small_volume(tmp_path, CHUNK),
                                                        open_gate(None, NullAudit()))
    binding.raw_fi, binding.encoding, binding.errors = True, "utf-8", "surrogateescape"
    return binding


def create(fuse: EncfsFUSE, path: str) -> mfusepy.fuse_file_info:
    info = mfusepy.fuse_file_info()
    info.flags = os.O_RDWR | os.O_CREAT
    fuse.operations.create(path, 0o644, info)
    return info


def request_buffer(data: bytes | int) -> ctypes.Array[ctypes.c_byte]:
    return (ctypes.c_byte * len(data)).from_buffer_copy(data) if isinstance(data, bytes) else (
        ctypes.c_byte * data)()


def as_pointer(buffer: ctypes.Array[ctypes.c_byte], at: int = 0) -> ctypes._Pointer[ctypes.c_byte]:
    return ctypes.cast(ctypes.byref(buffer, at), ctypes.POINTER(ctypes.c_byte))


def test_write_then_read_through_libfuse_buffers(fuse: EncfsFUSE) -> None:
    info = create(fuse, "/image.dcm")
    data = os.urandom(3 * CHUNK + 100)
    incoming = request_buffer(data)
    assert fuse.write(b"/image.dcm", as_pointer(incoming), len(data), 0, ctypes.pointer(info)) == len(data)
    ctypes.memset(incoming, 0xEE, len(data))  # libfuse reuses the buffer for the next request
    reply = request_buffer(CHUNK * 4 + 64)
    ctypes.memset(reply, 0x5A, len(reply))
    # a read that starts inside a chunk, spans two whole ones and stops at the end of the file
    count = fuse.read(b"/image.dcm", as_pointer(reply, 32), 4 * CHUNK, 100, ctypes.pointer(info))
    assert count == len(data) - 100
    assert bytes(reply)[32:32 + count] == data[100:]
    untouched = bytes(reply)[:32] + bytes(reply)[32 + count:]
    assert untouched == b"\x5a" * (len(reply) - count)
    assert fuse.read(b"/image.dcm", as_pointer(reply), CHUNK, len(data), ctypes.pointer(info)) == 0  # EOF


def test_a_damaged_chunk_is_eio_and_leaves_no_plaintext_in_the_reply(fuse: EncfsFUSE) -> None:
    info = create(fuse, "/image.dcm")
    data = os.urandom(2 * CHUNK)
    fuse.write(b"/image.dcm", as_pointer(request_buffer(data)), len(data), 0, ctypes.pointer(info))
    backing = fuse.operations.volume.backing / "image.dcm"
    stored = bytearray(backing.read_bytes())
    stored[-20] ^= 1  # a byte of the second (final) chunk
    backing.write_bytes(stored)
    fuse.operations.release("/image.dcm", info)
    info = mfusepy.fuse_file_info()
    info.flags = os.O_RDONLY
    fuse.operations.open("/image.dcm", info)
    reply = request_buffer(2 * CHUNK)
    with pytest.raises(FuseOSError) as failure:
        fuse.read(b"/image.dcm", as_pointer(reply), 2 * CHUNK, 0, ctypes.pointer(info))
    assert failure.value.errno == errno.EIO
    assert bytes(reply)[CHUNK:] == bytes(CHUNK)  # decrypted before its tag was checked: wiped
