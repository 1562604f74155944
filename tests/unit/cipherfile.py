"""Whole-file sealing and opening built from the crypto primitives, for format tests.

The store does the same chunk by chunk through a backing descriptor; these helpers keep the
format tests independent of any file system so they can run on byte strings.
"""

from __future__ import annotations

from collections.abc import Callable

from encfs_pacs.crypto import keys
from encfs_pacs.crypto.chunks import FileCipher, Layout, decode_header, encode_header


class Key:
    """One volume's key material, as the store derives it from a master key."""

    def __init__(self, master: bytes) -> None:
        self.master = master
        self.key_id = keys.key_id(master)
        self.content_root = keys.content_key(master)

    def cipher(self, file_id: bytes) -> FileCipher:
        return FileCipher(self.content_root, self.key_id, file_id)


def seal(
    key: Key,
    layout: Layout,
    file_id: bytes,
    plaintext: bytes,
    nonce: Callable[[int], bytes] | None = None,
) -> bytes:
    """Header plus every chunk; ``nonce(i)`` fixes chunk i's nonce (known-answer tests only)."""
    cipher = key.cipher(file_id)
    cs = layout.chunk_size
    count = layout.chunk_count(len(plaintext))
    parts = [encode_header(file_id)]
    for i in range(count):
        parts.append(
            cipher.encrypt_chunk(i, plaintext[i * cs:(i + 1) * cs], i == count - 1,
                                 None if nonce is None else nonce(i))
        )
    return b"".join(parts)


def unseal(key: Key, layout: Layout, blob: bytes) -> bytes:
    """Authenticate and decrypt a whole file; IntegrityError for anything not sealed by ``key``."""
    size = layout.plaintext_size(len(blob))
    cipher = key.cipher(decode_header(blob))
    count = layout.chunk_count(size)
    step = layout.stored_chunk_size
    out = []
    for i in range(count):
        start = layout.chunk_offset(i)
        out.append(cipher.decrypt_chunk(i, blob[start:start + step], i == count - 1))
    return b"".join(out)
