"""The encrypted file format: a header, then authenticated fixed-size chunks.

Layout of one backing file (all integers little-endian; see docs/file-format.md)::

    header  : magic "EPAC" (4) | format version u16 | flags u16 (0) | file ID (16)   = 24 bytes
    chunk i : nonce (12) | AES-256-GCM ciphertext (<= chunk_size) | tag (16)

Every chunk but the last holds exactly ``chunk_size`` plaintext bytes; the last holds
0..chunk_size bytes and is *marked final in its associated data*. An empty file is a header
plus one empty final chunk. The associated data binds each chunk to the volume key ID, the
file ID, its index and its final flag, so a chunk moved to another position, another file or
another volume, a chunk dropped, or a file cut at any byte (chunk boundary included — the
case gocryptfs cannot detect) fails authentication. All-zero chunks are *not* holes (unlike
gocryptfs): zeroing ciphertext is tampering and reads as an error.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError
from .keys import file_key

Buffer: TypeAlias = bytes | bytearray | memoryview

MAGIC = b"EPAC"
FILE_FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHH16s")
HEADER_BYTES = _HEADER.size  # 24
FILE_ID_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
CHUNK_OVERHEAD = NONCE_BYTES + TAG_BYTES  # 28
_AAD = struct.Struct("<4sH16s16sQB")


def new_file_id() -> bytes:
    return secrets.token_bytes(FILE_ID_BYTES)


def encode_header(file_id: bytes) -> bytes:
    return _HEADER.pack(MAGIC, FILE_FORMAT_VERSION, 0, file_id)


def decode_header(raw: bytes) -> bytes:
    """Return the file ID, or raise IntegrityError for anything that is not our v1 header."""
    if len(raw) < HEADER_BYTES:
        raise IntegrityError("file header is truncated")
    magic, version, flags, file_id = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise IntegrityError("file header has a wrong magic (not an encfs-pacs file, or damaged)")
    if version != FILE_FORMAT_VERSION or flags != 0:
        raise IntegrityError(f"file header has unsupported version {version} / flags {flags:#x}")
    return file_id


@dataclass(frozen=True)
class Layout:
    """Size arithmetic between plaintext and ciphertext for one chunk size."""

    chunk_size: int

    @property
    def stored_chunk_size(self) -> int:
        return self.chunk_size + CHUNK_OVERHEAD

    def chunk_count(self, plain_size: int) -> int:
        """Chunks stored for a file of this size: never zero (an empty file has one final chunk)."""
        return max(1, -(-plain_size // self.chunk_size))

    def ciphertext_size(self, plain_size: int) -> int:
        return HEADER_BYTES + plain_size + self.chunk_count(plain_size) * CHUNK_OVERHEAD

    def plaintext_size(self, cipher_size: int) -> int:
        """Exact plaintext size; IntegrityError if no valid file can have this length."""
        body = cipher_size - HEADER_BYTES
        if body < CHUNK_OVERHEAD:
            raise IntegrityError(f"file is truncated ({cipher_size} bytes: less than a header and a chunk)")
        full, tail = divmod(body, self.stored_chunk_size)
        if tail == 0:
            return full * self.chunk_size
        if tail < CHUNK_OVERHEAD:
            raise IntegrityError(f"file is truncated mid-chunk ({cipher_size} bytes)")
        # An empty final chunk after full chunks is never written (a file of n*chunk_size bytes
        # ends with a full final chunk). Without this check, 28 bytes appended to such a file
        # would map to the same plaintext size as the untouched file, so the two ciphertext
        # sizes would not be distinguishable and the appended bytes would go unnoticed.
        if tail == CHUNK_OVERHEAD and full > 0:
            raise IntegrityError(f"file has bytes appended after its final chunk ({cipher_size} bytes)")
        return full * self.chunk_size + tail - CHUNK_OVERHEAD

    def plaintext_size_lenient(self, cipher_size: int) -> int:
        """Size to show in stat() for a damaged file, so listings keep working; reads still fail."""
        try:
            return self.plaintext_size(cipher_size)
        except IntegrityError:
            body = max(0, cipher_size - HEADER_BYTES)
            full, tail = divmod(body, self.stored_chunk_size)
            return full * self.chunk_size + max(0, tail - CHUNK_OVERHEAD)

    def chunk_offset(self, index: int) -> int:
        return HEADER_BYTES + index * self.stored_chunk_size


class FileCipher:
    """Encrypts and authenticates the chunks of one file (one file ID, one derived key)."""

    __slots__ = ("_aead", "_key_id", "_file_id")

    def __init__(self, content_root: bytes, key_id: bytes, file_id: bytes) -> None:
        self._aead = AESGCM(file_key(content_root, file_id))
        self._key_id = key_id
        self._file_id = file_id

    def _aad(self, index: int, final: bool) -> bytes:
        return _AAD.pack(MAGIC, FILE_FORMAT_VERSION, self._key_id, self._file_id, index, final)

    def encrypt_chunk(self, index: int, plaintext: bytes, final: bool, nonce: bytes | None = None) -> bytes:
        """``nonce`` is only for known-answer tests; production always draws a fresh random one."""
        nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, self._aad(index, final))

    def encrypt_chunk_into(self, index: int, plaintext: Buffer, final: bool, out: memoryview) -> None:
        """Seal ``plaintext`` straight into ``out`` (exactly len(plaintext) + CHUNK_OVERHEAD
        bytes): a write of many chunks fills one buffer instead of joining a copy of each."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        out[:NONCE_BYTES] = nonce
        self._aead.encrypt_into(nonce, plaintext, self._aad(index, final), out[NONCE_BYTES:])

    def decrypt_chunk(self, index: int, stored: Buffer, final: bool) -> bytes:
        _check_length(index, stored)
        try:
            return self._aead.decrypt(stored[:NONCE_BYTES], stored[NONCE_BYTES:], self._aad(index, final))
        except InvalidTag:
            raise _authentication_failed(index) from None

    def decrypt_chunk_into(self, index: int, stored: Buffer, final: bool, out: memoryview) -> None:
        """Open ``stored`` straight into ``out`` (exactly its plaintext length), e.g. the FUSE
        reply buffer. On failure ``out`` is zeroed: the decryption writes before it checks the
        tag, and unauthenticated plaintext must not linger where a caller might pass it on."""
        _check_length(index, stored)
        try:
            self._aead.decrypt_into(stored[:NONCE_BYTES], stored[NONCE_BYTES:], self._aad(index, final), out)
        except InvalidTag:
            out[:] = bytes(len(out))
            raise _authentication_failed(index) from None


def _check_length(index: int, stored: Buffer) -> None:
    if len(stored) < CHUNK_OVERHEAD:
        raise IntegrityError(f"chunk {index} is truncated")


def _authentication_failed(index: int) -> IntegrityError:
    return IntegrityError(f"chunk {index} failed authentication (altered, moved, from another file or "
                          "volume, or the file was truncated)")
