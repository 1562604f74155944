"""The chunk format: known answers, size arithmetic and round trips (docs/file-format.md).

The known-answer vectors were computed once with the v1 code and are frozen here: if any of
them changes, the on-disk format changed, and every existing volume would become unreadable.
"""

from __future__ import annotations

import hashlib
import random
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from encfs_pacs.crypto import chunks, keys
from encfs_pacs.crypto.chunks import (
    CHUNK_OVERHEAD,
    HEADER_BYTES,
    FileCipher,
    Layout,
    decode_header,
    encode_header,
    new_file_id,
)
from encfs_pacs.crypto.volume_config import ALLOWED_CHUNK_SIZES, VolumeConfig
from encfs_pacs.errors import IntegrityError, WrongPassphrase

from .cipherfile import Key, seal, unseal

CHUNK_SIZES = sorted(ALLOWED_CHUNK_SIZES)

# ------------------------------------------------------------------ known-answer vectors (v1)

KAT_MASTER = bytes(range(32))
KAT_FILE_ID = bytes(range(0x40, 0x50))
KAT_KEY_ID = "cc80a06b432cafb309431c3432378608"
KAT_CONTENT_KEY = "599bc3e68318d97a0b73a34dcb0949f701a318f3241b38018babafe35d263fd7"
KAT_FILE_KEY = "de2e4d1a37e72df92b89be65a94b35f3fa45589dbdb78adccde85040c4f76a9e"
KAT_SMALL_PLAIN = b"encfs-pacs known-answer test\n"
KAT_SMALL_FILE = (
    "4550414301000000404142434445464748494a4b4c4d4e4f"  # header: EPAC, v1, flags 0, file ID
    "a0a0a0a0a0a0a0a0a0a0a0a0"  # nonce of chunk 0
    "cf0fbf348082d6827b6b56ece5dcbcbb10bf98a124b9bf481ed251c9df"  # ciphertext (29 bytes)
    "bc873481ea9d82d6bf5de6f26ae3eaf4"  # tag
)
KAT_EMPTY_FILE = (
    "4550414301000000404142434445464748494a4b4c4d4e4f"
    "a0a0a0a0a0a0a0a0a0a0a0a0"
    "eb38382c1cbd2aa09a3a545fb3fb9285"  # tag only: an empty file is one empty final chunk
)
KAT_TWO_CHUNK_SHA256 = "abcb9d0df894e6a9313686b5bb06fae623e970ee41e3127ea1db8ef9072b8eda"
KAT_TWO_CHUNK_TAIL = "a1a1a1a1a1a1a1a1a1a1a1a155c7c442d49c3bc192dd7cd04c3d2ca5983645ba27972e"
KAT_SCRYPT_WRAPPING_KEY = "861d5696877e2339e51597577c91a48d5aff6512f82f948b2a24d9b08bccb07c"
KAT_WRAP_AAD = (
    b'encfs-pacs master key|{"chunk_size":65536,"features":["aes256gcm-chunks","plaintext-names"],'
    b'"key_id":"cc80a06b432cafb309431c3432378608","version":1}'
)
KAT_SEALED_MASTER = (
    "6aeaf5fa9b0739d47c78164e61ad0d1a7268724b1e693a67eda34ad98238a909"
    "b545d708dab8c1dde93c05827b6d7933"
)


def kat_nonce(index: int) -> bytes:
    return bytes([0xA0 + index]) * 12


def two_chunk_plain() -> bytes:
    return bytes(i % 251 for i in range(4096 + 7))


def test_key_derivations_are_frozen() -> None:
    content = keys.content_key(KAT_MASTER)
    assert keys.key_id(KAT_MASTER).hex() == KAT_KEY_ID
    assert content.hex() == KAT_CONTENT_KEY
    assert keys.file_key(content, KAT_FILE_ID).hex() == KAT_FILE_KEY


def test_small_file_known_answer() -> None:
    blob = seal(Key(KAT_MASTER), Layout(65536), KAT_FILE_ID, KAT_SMALL_PLAIN, kat_nonce)
    assert blob.hex() == KAT_SMALL_FILE
    assert unseal(Key(KAT_MASTER), Layout(65536), bytes.fromhex(KAT_SMALL_FILE)) == KAT_SMALL_PLAIN


def test_empty_file_known_answer() -> None:
    blob = seal(Key(KAT_MASTER), Layout(65536), KAT_FILE_ID, b"", kat_nonce)
    assert blob.hex() == KAT_EMPTY_FILE
    assert len(blob) == HEADER_BYTES + CHUNK_OVERHEAD == 52


def test_two_chunk_file_known_answer() -> None:
    blob = seal(Key(KAT_MASTER), Layout(4096), KAT_FILE_ID, two_chunk_plain(), kat_nonce)
    assert len(blob) == 24 + (12 + 4096 + 16) + (12 + 7 + 16)
    assert hashlib.sha256(blob).hexdigest() == KAT_TWO_CHUNK_SHA256
    assert blob[24 + 4124:].hex() == KAT_TWO_CHUNK_TAIL


def test_scrypt_wrapping_key_is_frozen() -> None:
    params = keys.ScryptParams(salt=bytes(range(32)), log_n=10)
    assert keys.wrapping_key_from_passphrase(b"known-answer test", params).hex() == KAT_SCRYPT_WRAPPING_KEY


def test_wrap_associated_data_is_frozen() -> None:
    config = VolumeConfig(key_id=bytes.fromhex(KAT_KEY_ID), kdf="scrypt", scrypt=None,
                          wrap_nonce=b"", wrapped_key=b"")
    assert config.wrap_associated_data() == KAT_WRAP_AAD
    # Feature order in the document does not matter: the associated data sorts them.
    reordered = VolumeConfig(key_id=config.key_id, kdf="scrypt", scrypt=None, wrap_nonce=b"",
                             wrapped_key=b"", features=tuple(reversed(config.features)))
    assert reordered.wrap_associated_data() == KAT_WRAP_AAD


def test_sealed_master_key_known_answer() -> None:
    wrapping = bytes.fromhex(KAT_SCRYPT_WRAPPING_KEY)
    sealed = bytes.fromhex(KAT_SEALED_MASTER)
    kid = bytes.fromhex(KAT_KEY_ID)
    assert keys.unwrap_master_key(bytes(12), sealed, wrapping, KAT_WRAP_AAD, kid) == KAT_MASTER
    with pytest.raises(WrongPassphrase):
        keys.unwrap_master_key(bytes(12), sealed, wrapping, KAT_WRAP_AAD.replace(b"65536", b"04096"), kid)
    with pytest.raises(WrongPassphrase):  # right wrapping key, but the config names another key
        keys.unwrap_master_key(bytes(12), sealed, wrapping, KAT_WRAP_AAD, bytes(16))


# ------------------------------------------------- an independent implementation of the spec


def _spec_hkdf(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def _spec_aad(key_id: bytes, file_id: bytes, index: int, final: bool) -> bytes:
    # docs/file-format.md, "Chunk associated data": 47 bytes.
    version = (1).to_bytes(2, "little")
    return b"EPAC" + version + key_id + file_id + index.to_bytes(8, "little") + bytes([final])


def test_docs_spec_reproduces_the_known_answers() -> None:
    """Rebuild the vectors from docs/file-format.md alone, without the encfs_pacs code."""
    key_id = _spec_hkdf(KAT_MASTER, b"encfs-pacs v1 key id", 16)
    content = _spec_hkdf(KAT_MASTER, b"encfs-pacs v1 file content")
    file_key = _spec_hkdf(content, b"encfs-pacs v1 file key " + KAT_FILE_ID)
    assert (key_id.hex(), content.hex(), file_key.hex()) == (KAT_KEY_ID, KAT_CONTENT_KEY, KAT_FILE_KEY)

    header = b"EPAC" + struct.pack("<HH", 1, 0) + KAT_FILE_ID
    aead = AESGCM(file_key)
    small = header + kat_nonce(0) + aead.encrypt(kat_nonce(0), KAT_SMALL_PLAIN,
                                                 _spec_aad(key_id, KAT_FILE_ID, 0, True))
    assert small.hex() == KAT_SMALL_FILE

    plain = two_chunk_plain()
    two = (header
           + kat_nonce(0) + aead.encrypt(kat_nonce(0), plain[:4096], _spec_aad(key_id, KAT_FILE_ID, 0, False))
           + kat_nonce(1) + aead.encrypt(kat_nonce(1), plain[4096:], _spec_aad(key_id, KAT_FILE_ID, 1, True)))
    assert hashlib.sha256(two).hexdigest() == KAT_TWO_CHUNK_SHA256

    wrapping = bytes.fromhex(KAT_SCRYPT_WRAPPING_KEY)
    assert AESGCM(wrapping).encrypt(bytes(12), KAT_MASTER, KAT_WRAP_AAD).hex() == KAT_SEALED_MASTER


def test_format_constants() -> None:
    assert (chunks.MAGIC, chunks.FILE_FORMAT_VERSION) == (b"EPAC", 1)
    assert (HEADER_BYTES, chunks.NONCE_BYTES, chunks.TAG_BYTES, CHUNK_OVERHEAD) == (24, 12, 16, 28)
    assert min(CHUNK_SIZES) == 4096 and max(CHUNK_SIZES) == 2**20 and len(CHUNK_SIZES) == 9


# ------------------------------------------------------------------------------ file header


def test_header_round_trip_and_random_file_ids() -> None:
    file_id = new_file_id()
    assert len(file_id) == 16 and new_file_id() != file_id
    assert decode_header(encode_header(file_id)) == file_id
    assert decode_header(encode_header(file_id) + b"chunk bytes follow") == file_id


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        encode_header(bytes(16))[:23],
        b"EPAD" + encode_header(bytes(16))[4:],  # magic
        b"EPAC\x02\x00\x00\x00" + bytes(16),  # version 2
        b"EPAC\x00\x00\x00\x00" + bytes(16),  # version 0
        b"EPAC\x01\x00\x01\x00" + bytes(16),  # a flag bit
        b"EPAC\x01\x00\x00\x80" + bytes(16),
    ],
    ids=["empty", "short", "magic", "version2", "version0", "flag-low", "flag-high"],
)
def test_bad_headers_are_integrity_errors(raw: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_header(raw)


# ------------------------------------------------------------------------- size arithmetic


@pytest.mark.parametrize(
    ("plain", "cipher"),
    [(0, 52), (1, 53), (4096, 4148), (4097, 4148 + 29), (8192, 24 + 2 * 4124), (8193, 24 + 2 * 4124 + 29)],
)
def test_ciphertext_size_examples(plain: int, cipher: int) -> None:
    layout = Layout(4096)
    assert layout.ciphertext_size(plain) == cipher
    assert layout.plaintext_size(cipher) == plain


def test_chunk_count_and_offsets() -> None:
    layout = Layout(65536)
    sizes = (0, 1, 65535, 65536, 65537, 131072, 131073)
    assert [layout.chunk_count(n) for n in sizes] == [1, 1, 1, 1, 2, 2, 3]
    assert layout.stored_chunk_size == 65564
    assert [layout.chunk_offset(i) for i in range(3)] == [24, 24 + 65564, 24 + 2 * 65564]


@settings(max_examples=300)
@given(cs=st.sampled_from(CHUNK_SIZES), chunks_=st.integers(0, 1000), delta=st.integers(-3, 3))
def test_plaintext_size_inverts_ciphertext_size(cs: int, chunks_: int, delta: int) -> None:
    layout = Layout(cs)
    n = max(0, chunks_ * cs + delta)
    assert layout.plaintext_size(layout.ciphertext_size(n)) == n


@settings(max_examples=300)
@given(cs=st.sampled_from(CHUNK_SIZES), cipher=st.integers(0, 4 * (2**20 + 28) + 100))
def test_every_ciphertext_size_is_valid_exactly_once_or_impossible(cs: int, cipher: int) -> None:
    layout = Layout(cs)
    try:
        plain = layout.plaintext_size(cipher)
    except IntegrityError:
        lenient = layout.plaintext_size_lenient(cipher)
        assert lenient >= 0 and layout.ciphertext_size(lenient) != cipher
        return
    assert layout.ciphertext_size(plain) == cipher
    assert layout.plaintext_size_lenient(cipher) == plain


def test_valid_ciphertext_sizes_are_exactly_the_images_of_plaintext_sizes() -> None:
    """Exhaustive over three and a half chunks of 4 KiB: no other length is accepted."""
    layout = Layout(4096)
    limit = layout.ciphertext_size(3 * 4096 + 2048)
    images = {layout.ciphertext_size(n) for n in range(3 * 4096 + 2048 + 1)}
    accepted = set()
    for cipher in range(limit + 1):
        try:
            layout.plaintext_size(cipher)
        except IntegrityError:
            continue
        accepted.add(cipher)
    assert accepted == images


@pytest.mark.parametrize(
    "cipher",
    [
        0, 1, 23, 24, 51,  # shorter than a header and an empty chunk
        24 + 4124 + 1, 24 + 4124 + 27,  # a chunk's nonce and tag cannot be split
        24 + 4124 + 28,  # an empty chunk after a full one is never written (appended bytes)
        24 + 3 * 4124 + 28,
    ],
)
def test_impossible_sizes_raise(cipher: int) -> None:
    with pytest.raises(IntegrityError):
        Layout(4096).plaintext_size(cipher)


# ----------------------------------------------------------------------------- round trips


@settings(max_examples=60, deadline=None)
@given(
    cs=st.sampled_from(CHUNK_SIZES),
    full_chunks=st.integers(0, 3),
    delta=st.integers(-2, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_around_chunk_boundaries(cs: int, full_chunks: int, delta: int, seed: int) -> None:
    rng = random.Random(seed)
    plain = rng.randbytes(max(0, full_chunks * cs + delta))
    key, layout, file_id = Key(rng.randbytes(32)), Layout(cs), rng.randbytes(16)
    blob = seal(key, layout, file_id, plain)
    assert len(blob) == layout.ciphertext_size(len(plain))
    assert layout.plaintext_size(len(blob)) == len(plain)
    assert unseal(key, layout, blob) == plain
    if len(plain) >= 16:
        assert plain[:64] not in blob  # it is encrypted, not copied


@settings(max_examples=100)
@given(data=st.binary(max_size=300), index=st.integers(0, 2**64 - 1), final=st.booleans())
def test_chunk_round_trip_any_index(data: bytes, index: int, final: bool) -> None:
    cipher = Key(KAT_MASTER).cipher(KAT_FILE_ID)
    stored = cipher.encrypt_chunk(index, data, final)
    assert len(stored) == len(data) + CHUNK_OVERHEAD
    assert cipher.decrypt_chunk(index, stored, final) == data
    with pytest.raises(IntegrityError):
        cipher.decrypt_chunk(index, stored, not final)
    with pytest.raises(IntegrityError):
        cipher.decrypt_chunk(index ^ 1, stored, final)


@settings(max_examples=100)
@given(data=st.binary(max_size=300), index=st.integers(0, 2**64 - 1), final=st.booleans())
def test_chunk_into_buffers_is_the_same_format(data: bytes, index: int, final: bool) -> None:
    """Sealing and opening in place (the FUSE read/write path) read and write exactly what
    encrypt_chunk/decrypt_chunk do, and touch no byte outside the slice they are given."""
    cipher = Key(KAT_MASTER).cipher(KAT_FILE_ID)
    sealed = bytearray(b"\xee" * (len(data) + CHUNK_OVERHEAD + 8))
    cipher.encrypt_chunk_into(index, memoryview(data), final, memoryview(sealed)[4:-4])
    assert sealed[:4] == sealed[-4:] == b"\xee" * 4
    stored = bytes(sealed[4:-4])
    assert cipher.decrypt_chunk(index, stored, final) == data
    opened = bytearray(b"\xdd" * (len(data) + 8))
    cipher.decrypt_chunk_into(index, memoryview(stored), final, memoryview(opened)[4:-4])
    assert opened == b"\xdd" * 4 + data + b"\xdd" * 4
    with pytest.raises(IntegrityError):
        cipher.decrypt_chunk_into(index, stored, not final, memoryview(opened)[4:-4])
    tampered = bytearray(stored)
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(IntegrityError):
        cipher.decrypt_chunk_into(index, tampered, final, memoryview(opened)[4:-4])
    with pytest.raises(ValueError):  # a buffer of the wrong size is a programming error, refused
        cipher.decrypt_chunk_into(index, stored, final, memoryview(bytearray(len(data) + 1)))


def test_nonces_are_fresh() -> None:
    cipher = Key(KAT_MASTER).cipher(KAT_FILE_ID)
    sealed = {cipher.encrypt_chunk(0, b"same plaintext", True) for _ in range(50)}
    assert len(sealed) == 50
    assert len({s[:12] for s in sealed}) == 50


def test_file_keys_differ_per_file_and_per_volume() -> None:
    content = keys.content_key(KAT_MASTER)
    assert keys.file_key(content, bytes(16)) != keys.file_key(content, bytes(15) + b"\1")
    assert keys.content_key(bytes(32)) != content
    assert keys.key_id(bytes(32)) != keys.key_id(KAT_MASTER)
    # Key ID and content key come from one master key under distinct labels.
    assert keys.key_id(KAT_MASTER) != content[:16]


def test_truncated_stored_chunk() -> None:
    cipher = FileCipher(keys.content_key(KAT_MASTER), keys.key_id(KAT_MASTER), KAT_FILE_ID)
    with pytest.raises(IntegrityError):
        cipher.decrypt_chunk(0, bytes(27), True)
    with pytest.raises(IntegrityError):
        cipher.decrypt_chunk_into(0, bytes(27), True, memoryview(bytearray(0)))


def test_docs_state_the_labels_and_vectors() -> None:
    """docs/file-format.md quotes every HKDF label of crypto/keys.py and the vectors above."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "file-format.md").read_text(encoding="utf-8")
    source = (root / "encfs_pacs" / "crypto" / "keys.py").read_text(encoding="utf-8")
    labels = {node.value.decode() for node in ast.walk(ast.parse(source))
              if isinstance(node, ast.Constant) and isinstance(node.value, bytes)
              and node.value.startswith(b"encfs-pacs")}
    assert labels == {"encfs-pacs v1 key id", "encfs-pacs v1 file content", "encfs-pacs v1 file key ",
                      "encfs-pacs v1 audit key store", "encfs-pacs v1 audit spool mac"}
    for label in labels:
        assert f'"{label.strip()}"' in doc
    small = KAT_SMALL_FILE[48 + 24:]  # the worked example: ciphertext, then tag
    vectors = (KAT_KEY_ID, KAT_CONTENT_KEY, KAT_FILE_KEY, KAT_WRAP_AAD.decode(), small[:-32], small[-32:])
    for vector in vectors:
        assert vector in doc
