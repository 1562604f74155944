"""Whole files through the v1 format (docs/file-format.md section 3), streamed on descriptors.

The store encrypts chunk by chunk at arbitrary offsets for the mount; maintenance works on
whole files front to back, so it streams: read a batch, seal or open its chunks, write.
The same functions serve import (seal, then verify by opening), export (open) and fsck
(check every chunk and report all failures instead of stopping at the first).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..crypto.chunks import (
    CHUNK_OVERHEAD,
    HEADER_BYTES,
    FileCipher,
    decode_header,
    encode_header,
    new_file_id,
)
from ..errors import IntegrityError
from ..store import Volume

BATCH_CHUNKS = 64  # chunks read and written per system call (4 MiB at 64 KiB chunks)

Tick = Callable[[int], None]  # called with the plaintext bytes just handled (progress)


def _noop(_: int) -> None:
    pass


def read_full(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes; shorter only at end of file."""
    parts, missing = [], size
    while missing:
        part = os.read(fd, missing)
        if not part:
            break
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


def write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def seal(volume: Volume, src: int, dst: int, tick: Tick = _noop) -> tuple[int, str]:
    """Encrypt ``src`` from its position to end of file into ``dst`` (empty, at offset 0) as a
    complete encrypted file. Returns (plaintext size, SHA-256 hex of the plaintext).

    Which chunk is final is decided by end of file, not by a size taken beforehand, so a
    source that grows or shrinks while it is read still gives a well-formed file; the caller
    compares sizes and times before and after to notice the change."""
    cs = volume.layout.chunk_size
    file_id = new_file_id()
    cipher = volume.cipher_for(file_id)
    digest = hashlib.sha256()
    write_all(dst, encode_header(file_id))
    index, size, carry = 0, 0, b""
    while True:
        block = read_full(src, cs * BATCH_CHUNKS)
        if not block:
            break
        digest.update(block)
        size += len(block)
        data = carry + block if carry else block
        # Keep at least one byte back: the last chunk is sealed only once end of file says it
        # is final (a file of exactly n chunks ends with a full final chunk).
        full = (len(data) - 1) // cs
        view, step = memoryview(data), cs + CHUNK_OVERHEAD
        sealed = bytearray(full * step)  # each chunk sealed in place: no copy per chunk, no join
        into = memoryview(sealed)
        for i in range(full):
            cipher.encrypt_chunk_into(index + i, view[i * cs:(i + 1) * cs], False,
                                      into[i * step:(i + 1) * step])
        write_all(dst, sealed)
        index += full
        carry = data[full * cs:]
        tick(len(block))
    write_all(dst, cipher.encrypt_chunk(index, carry, final=True))
    return size, digest.hexdigest()


@dataclass
class Report:
    """What reading every chunk of one stored file found (fsck)."""

    plain_size: int = 0
    length_problem: str | None = None  # a length no valid file can have
    header_problem: str | None = None
    bad_chunks: list[int] = field(default_factory=list)
    chunk_count: int = 0
    cut_after: int | None = None  # the file ends after this chunk, which was not its final one

    @property
    def ok(self) -> bool:
        return not (self.length_problem or self.header_problem or self.bad_chunks)


def _chunk_batches(volume: Volume, fd: int, plain_size: int) -> Iterator[tuple[int, list[memoryview]]]:
    """(first index, stored chunks) in batches; the last chunk is whatever bytes remain (short
    if the file was cut: it then fails authentication)."""
    layout = volume.layout
    count = layout.chunk_count(plain_size)
    step = layout.stored_chunk_size
    index = 0
    while index < count:
        n = min(BATCH_CHUNKS, count - index)
        raw = os.pread(fd, n * step, layout.chunk_offset(index))
        view = memoryview(raw)
        yield index, [view[i * step:(i + 1) * step] for i in range(n)]
        index += n


def open_chunks(volume: Volume, fd: int, tick: Tick = _noop) -> Iterator[bytes]:
    """Plaintext of a stored file, chunk batch by chunk batch; IntegrityError (naming the
    chunk) at the first byte that fails authentication or a length no valid file can have."""
    stored_size = os.fstat(fd).st_size
    plain_size = volume.layout.plaintext_size(stored_size)
    cipher = volume.cipher_for(decode_header(os.pread(fd, HEADER_BYTES, 0)))
    final = volume.layout.chunk_count(plain_size) - 1
    for first, chunks in _chunk_batches(volume, fd, plain_size):
        plain = b"".join(cipher.decrypt_chunk(first + i, c, first + i == final) for i, c in enumerate(chunks))
        tick(len(plain))
        yield plain


def plaintext_digest(volume: Volume, fd: int, tick: Tick = _noop) -> tuple[int, str]:
    """(size, SHA-256 hex) of a stored file's plaintext; IntegrityError if any chunk fails."""
    digest, size = hashlib.sha256(), 0
    for block in open_chunks(volume, fd, tick):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def check(volume: Volume, fd: int, tick: Tick = _noop) -> Report:
    """Authenticate every chunk and report every failure (fsck); never raises IntegrityError."""
    layout = volume.layout
    stored_size = os.fstat(fd).st_size
    report = Report()
    try:
        report.plain_size = layout.plaintext_size(stored_size)
    except IntegrityError as exc:
        report.length_problem = str(exc)
        report.plain_size = layout.plaintext_size_lenient(stored_size)
    try:
        cipher = volume.cipher_for(decode_header(os.pread(fd, HEADER_BYTES, 0)))
    except IntegrityError as exc:
        report.header_problem = str(exc)
        return report
    if stored_size < HEADER_BYTES + CHUNK_OVERHEAD:
        return report  # no chunk at all: the length problem says it
    final = layout.chunk_count(report.plain_size) - 1
    report.chunk_count = final + 1
    for first, chunks in _chunk_batches(volume, fd, report.plain_size):
        for i, stored in enumerate(chunks):
            index = first + i
            try:
                cipher.decrypt_chunk(index, stored, index == final)
            except IntegrityError:
                report.bad_chunks.append(index)
                # A last chunk that opens as a middle chunk: the chunks after it are missing
                # (cut at a chunk boundary, the case the final flag exists for).
                if index == final and _opens(cipher, index, stored, final=False):
                    report.cut_after = index
        tick(sum(max(0, len(c) - CHUNK_OVERHEAD) for c in chunks))
    return report


def _opens(cipher: FileCipher, index: int, stored: memoryview, final: bool) -> bool:
    try:
        cipher.decrypt_chunk(index, stored, final)
    except IntegrityError:
        return False
    return True
