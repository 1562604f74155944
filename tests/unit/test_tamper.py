"""Every kind of tampering with stored ciphertext is detected, never read as wrong bytes.

Two levels: the crypto format on byte strings (every class, plus any bit flip and any
truncation), and the store on a real backing folder, through Volume.open/read/write as the
FUSE adapter calls them. What the format cannot detect (a whole file replaced by an older
version of itself, files swapped or renamed as a whole) is listed in docs/file-format.md.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encfs_pacs import store
from encfs_pacs.crypto.chunks import CHUNK_OVERHEAD, HEADER_BYTES, Layout
from encfs_pacs.errors import IntegrityError

from .cipherfile import Key, seal, unseal

# ------------------------------------------------------------------------- byte-level edits


def flip(blob: bytes, position: int, mask: int = 0x01) -> bytes:
    out = bytearray(blob)
    out[position] ^= mask
    return bytes(out)


@dataclass(frozen=True)
class Parts:
    """A sealed file cut into its header and stored chunks."""

    header: bytes
    chunks: list[bytes]

    @classmethod
    def of(cls, blob: bytes, layout: Layout) -> Parts:
        body, step = blob[HEADER_BYTES:], layout.stored_chunk_size
        return cls(blob[:HEADER_BYTES], [body[i:i + step] for i in range(0, len(body), step)])

    def join(self) -> bytes:
        return self.header + b"".join(self.chunks)


@dataclass(frozen=True)
class Case:
    """The file under attack, a second file of the same size in the same volume (``sibling``)
    and a file with the same plaintext in another volume (``foreign``)."""

    blob: bytes
    sibling: bytes
    foreign: bytes
    layout: Layout

    def parts(self, which: str = "blob") -> Parts:
        return Parts.of(getattr(self, which), self.layout)

    def chunk_start(self, index: int) -> int:
        return self.layout.chunk_offset(index)

    def final_index(self) -> int:
        return len(self.parts().chunks) - 1


def _swap_chunks(c: Case, i: int, j: int) -> bytes:
    p = c.parts()
    p.chunks[i], p.chunks[j] = p.chunks[j], p.chunks[i]
    return p.join()


def _replace_chunk(c: Case, index: int, source: str) -> bytes:
    p = c.parts()
    p.chunks[index] = c.parts(source).chunks[index]
    return p.join()


def _drop_chunk(c: Case, index: int) -> bytes:
    p = c.parts()
    del p.chunks[index]
    return p.join()


def _duplicate_chunk(c: Case, index: int, into: int) -> bytes:
    p = c.parts()
    p.chunks[into] = p.chunks[index]
    return p.join()


def _zero_chunk(c: Case, index: int) -> bytes:
    p = c.parts()
    p.chunks[index] = bytes(len(p.chunks[index]))  # gocryptfs would read this as a hole
    return p.join()


# name -> (edit, index of a chunk that must no longer read; None if the whole file breaks)
TAMPERS: dict[str, tuple[Callable[[Case], bytes], int | None]] = {
    "header-magic-bitflip": (lambda c: flip(c.blob, 0), None),
    "header-version-bitflip": (lambda c: flip(c.blob, 4), None),
    "header-flags-bitflip": (lambda c: flip(c.blob, 6), None),
    "header-file-id-bitflip": (lambda c: flip(c.blob, 8 + 5, 0x80), None),
    "nonce-bitflip-first-chunk": (lambda c: flip(c.blob, c.chunk_start(0)), 0),
    "nonce-bitflip-final-chunk": (lambda c: flip(c.blob, c.chunk_start(c.final_index()) + 11), "final"),
    "body-bitflip": (lambda c: flip(c.blob, c.chunk_start(1) + 12 + 1000, 0x10), 1),
    "tag-bitflip-first-chunk": (lambda c: flip(c.blob, c.chunk_start(1) - 1), 0),
    "tag-bitflip-final-chunk": (lambda c: flip(c.blob, len(c.blob) - 16), "final"),
    "chunk-zeroed": (lambda c: _zero_chunk(c, 1), 1),
    "chunk-swap-within-file": (lambda c: _swap_chunks(c, 0, 1), 0),
    "chunk-duplicated": (lambda c: _duplicate_chunk(c, 0, 1), 1),
    "chunk-from-other-file": (lambda c: _replace_chunk(c, 1, "sibling"), 1),
    "chunk-from-other-volume": (lambda c: _replace_chunk(c, 1, "foreign"), 1),
    "final-chunk-from-other-file": (lambda c: _replace_chunk(c, c.final_index(), "sibling"), "final"),
    "whole-file-from-other-volume": (lambda c: c.foreign, None),
    "header-of-other-file": (lambda c: c.parts("sibling").header + c.blob[HEADER_BYTES:], None),
    "first-chunk-dropped": (lambda c: _drop_chunk(c, 0), 0),
    "middle-chunk-dropped": (lambda c: _drop_chunk(c, 1), 1),
    # After a cut the chunk before it becomes the apparent final chunk and fails there: reads
    # past the new end see end-of-file, but a reader reaching it gets an error, not a short file.
    "truncated-at-chunk-boundary": (lambda c: c.blob[:c.chunk_start(c.final_index())], 2),
    "truncated-at-first-chunk-boundary": (lambda c: c.blob[:c.chunk_start(1)], 0),
    "truncated-mid-chunk": (lambda c: c.blob[:c.chunk_start(2) + 500], 2),
    "truncated-by-one-byte": (lambda c: c.blob[:-1], "final"),
    "truncated-to-nonce-and-tag": (lambda c: c.blob[:c.chunk_start(2) + CHUNK_OVERHEAD], 1),
    "appended-one-byte": (lambda c: c.blob + b"\0", None),
    "appended-empty-chunk-size": (lambda c: c.blob + bytes(CHUNK_OVERHEAD), None),
    "appended-copy-of-final-chunk": (lambda c: c.blob + c.parts().chunks[-1], None),
    "appended-other-file-final-chunk": (lambda c: c.blob + c.parts("sibling").chunks[-1], None),
}
# Cut below the first chunk: the crypto layer and the store both refuse these lengths.
SHORT_CUTS = {"truncated-to-header-only": HEADER_BYTES, "truncated-to-nothing": 0,
              "truncated-inside-first-nonce": HEADER_BYTES + 5}


# ------------------------------------------------------------------------------ crypto level

LAYOUT = Layout(4096)
SIZE = 3 * 4096 + 100  # three full chunks and a short final one


@pytest.fixture(scope="module")
def case() -> Case:
    rng = random.Random(20240601)
    here, there = Key(rng.randbytes(32)), Key(rng.randbytes(32))
    plain, other_plain = rng.randbytes(SIZE), rng.randbytes(SIZE)
    file_id = rng.randbytes(16)
    return Case(
        blob=seal(here, LAYOUT, file_id, plain),
        sibling=seal(here, LAYOUT, rng.randbytes(16), other_plain),
        # Same file ID, same positions, same plaintext: only the volume key differs.
        foreign=seal(there, LAYOUT, file_id, plain),
        layout=LAYOUT,
    )


@pytest.fixture(scope="module")
def key(case: Case) -> Key:
    return Key(random.Random(20240601).randbytes(32))


def test_case_is_intact(case: Case, key: Key) -> None:
    assert len(unseal(key, LAYOUT, case.blob)) == SIZE
    assert len(case.parts().chunks) == 4


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_crypto_detects(name: str, case: Case, key: Key) -> None:
    tampered = TAMPERS[name][0](case)
    assert tampered != case.blob
    with pytest.raises(IntegrityError):
        unseal(key, LAYOUT, tampered)


@pytest.mark.parametrize("name", sorted(SHORT_CUTS))
def test_crypto_detects_short_cuts(name: str, case: Case, key: Key) -> None:
    with pytest.raises(IntegrityError):
        unseal(key, LAYOUT, case.blob[:SHORT_CUTS[name]])


def test_key_id_alone_binds_chunks_to_the_volume(case: Case, key: Key) -> None:
    """Same content key, same file ID and position: a different key ID still fails, so the key
    ID in the associated data is doing work of its own."""
    from encfs_pacs.crypto.chunks import FileCipher

    file_id = case.parts().header[8:]
    honest = FileCipher(key.content_root, key.key_id, file_id)
    stored = honest.encrypt_chunk(0, b"pixel data", final=True)
    assert honest.decrypt_chunk(0, stored, True) == b"pixel data"
    other = FileCipher(key.content_root, flip(key.key_id, 0), file_id)
    with pytest.raises(IntegrityError):
        other.decrypt_chunk(0, stored, True)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, HEADER_BYTES + 3 * 4124 + 128 - 1), bit=st.integers(0, 7))
def test_crypto_detects_any_bit_flip(case: Case, key: Key, position: int, bit: int) -> None:
    with pytest.raises(IntegrityError):
        unseal(key, LAYOUT, flip(case.blob, position, 1 << bit))


def test_crypto_detects_every_truncation_length(key: Key) -> None:
    """Exhaustive for a two-chunk file: no shorter length opens, at a boundary or not."""
    blob = seal(key, LAYOUT, bytes(16), bytes(range(256)) * 16 + b"tail")
    assert unseal(key, LAYOUT, blob)
    for length in range(len(blob)):
        with pytest.raises(IntegrityError):
            unseal(key, LAYOUT, blob[:length])


def test_crypto_detects_truncation_of_an_exact_multiple(key: Key) -> None:
    """Two full chunks: dropping the second leaves a well-formed one-chunk file, which only the
    final flag in the associated data tells apart (gocryptfs cannot)."""
    blob = seal(key, LAYOUT, bytes(16), bytes(2 * 4096))
    cut = blob[:LAYOUT.chunk_offset(1)]
    assert LAYOUT.plaintext_size(len(cut)) == 4096  # the length alone looks fine
    with pytest.raises(IntegrityError):
        unseal(key, LAYOUT, cut)


# ------------------------------------------------------------------------------- store level

SECRET = store.Secret("passphrase", b"tamper tests")


def _make_volume(backing: Path, chunk_size: int) -> store.Volume:
    store.create_volume(backing, SECRET, chunk_size=chunk_size, scrypt_log_n=10)
    return store.unlock(backing, SECRET)


def _put(volume: store.Volume, path: str, data: bytes) -> None:
    handle = volume.create(path, 0o644, os.O_WRONLY)
    try:
        handle.write(data, 0)
    finally:
        handle.close()


@dataclass
class StoreCase:
    volume: store.Volume
    backing: Path
    plain: bytes
    layout: Layout

    def read(self, size: int, offset: int, path: str = "/a.dcm") -> bytes:
        handle = self.volume.open(path, os.O_RDONLY)
        try:
            return handle.read(size, offset)
        finally:
            handle.close()

    def assert_never_wrong(self, broken_chunk: int | str | None) -> None:
        """The whole file does not read; every other read returns correct bytes or fails; the
        damaged chunk itself never reads."""
        cs = self.layout.chunk_size
        with pytest.raises(IntegrityError):
            self.read(len(self.plain) + 1, 0)
        for index in range(self.layout.chunk_count(len(self.plain))):
            for offset, size in ((index * cs, cs), (index * cs + 7, 1)):
                try:
                    got = self.read(size, offset)
                except IntegrityError:
                    continue
                assert got == self.plain[offset:offset + len(got)], f"wrong bytes at {offset}"
        if broken_chunk is not None:
            final = self.layout.chunk_count(len(self.plain)) - 1
            index = final if broken_chunk == "final" else int(broken_chunk)
            with pytest.raises(IntegrityError):
                self.read(cs, index * cs)


@pytest.fixture(params=[4096, 65536], ids=["4K", "64K"])
def store_case(request: pytest.FixtureRequest, tmp_path: Path) -> StoreCase:
    cs = request.param
    rng = random.Random(cs)
    plain = rng.randbytes(3 * cs + 100)
    volume = _make_volume(tmp_path / "vol", cs)
    _put(volume, "/a.dcm", plain)
    _put(volume, "/b.dcm", rng.randbytes(len(plain)))
    other = _make_volume(tmp_path / "other", cs)
    _put(other, "/a.dcm", plain)
    return StoreCase(volume, tmp_path / "vol", plain, volume.layout)


def _tamper_backing(sc: StoreCase, edit: Callable[[Case], bytes]) -> None:
    target = sc.backing / "a.dcm"
    case = Case(
        blob=target.read_bytes(),
        sibling=(sc.backing / "b.dcm").read_bytes(),
        foreign=(sc.backing.parent / "other" / "a.dcm").read_bytes(),
        layout=sc.layout,
    )
    tampered = edit(case)
    assert tampered != case.blob
    target.write_bytes(tampered)


def test_store_case_reads_back(store_case: StoreCase) -> None:
    assert store_case.read(len(store_case.plain) + 10, 0) == store_case.plain
    assert store_case.read(5, store_case.layout.chunk_size - 2) == store_case.plain[
        store_case.layout.chunk_size - 2:store_case.layout.chunk_size + 3]


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_store_read_detects(name: str, store_case: StoreCase) -> None:
    edit, broken = TAMPERS[name]
    _tamper_backing(store_case, edit)
    store_case.assert_never_wrong(broken)


@pytest.mark.parametrize("name", sorted(SHORT_CUTS))
def test_store_read_detects_short_cuts(name: str, store_case: StoreCase) -> None:
    _tamper_backing(store_case, lambda c: c.blob[:SHORT_CUTS[name]])
    store_case.assert_never_wrong(None)


def test_store_whole_file_swap_with_other_volume(store_case: StoreCase) -> None:
    shutil.copyfile(store_case.backing.parent / "other" / "a.dcm", store_case.backing / "a.dcm")
    store_case.assert_never_wrong(0)


def test_store_good_chunks_still_read_around_a_damaged_one(store_case: StoreCase) -> None:
    """Damage is local: an image with one bad chunk fails there, its other chunks still read."""
    _tamper_backing(store_case, TAMPERS["body-bitflip"][0])
    cs = store_case.layout.chunk_size
    assert store_case.read(cs, 0) == store_case.plain[:cs]
    assert store_case.read(cs, 2 * cs) == store_case.plain[2 * cs:3 * cs]


# Writes that must read existing bytes (a partial chunk, the old final chunk) must refuse to
# re-encrypt tampered data, or the damage would be laundered into an authentic chunk.


def _write(sc: StoreCase, data: bytes, offset: int) -> None:
    handle = sc.volume.open("/a.dcm", os.O_RDWR)
    try:
        handle.write(data, offset)
    finally:
        handle.close()


def _truncate(sc: StoreCase, length: int) -> None:
    sc.volume.truncate("/a.dcm", length)


@pytest.mark.parametrize(
    ("name", "operation"),
    [
        ("body-bitflip", lambda sc: _write(sc, b"xy", sc.layout.chunk_size + 10)),
        ("tag-bitflip-final-chunk", lambda sc: _write(sc, b"more", len(sc.plain))),  # append
        ("tag-bitflip-final-chunk", lambda sc: _write(sc, b"more", len(sc.plain) + 9000)),  # past EOF
        ("truncated-at-chunk-boundary", lambda sc: _write(sc, b"more", 3 * sc.layout.chunk_size)),
        ("body-bitflip", lambda sc: _truncate(sc, sc.layout.chunk_size + 10)),  # shrink into it
        ("tag-bitflip-final-chunk", lambda sc: _truncate(sc, len(sc.plain) + 1)),  # grow
        ("header-file-id-bitflip", lambda sc: _write(sc, b"x", 0)),
    ],
    ids=["partial-write", "append", "write-past-eof", "append-after-cut", "shrink", "grow", "header"],
)
def test_store_write_refuses_tampered_data(
    name: str, operation: Callable[[StoreCase], None], store_case: StoreCase
) -> None:
    _tamper_backing(store_case, TAMPERS[name][0])
    with pytest.raises(IntegrityError):
        operation(store_case)
    with pytest.raises(IntegrityError):
        store_case.read(len(store_case.plain) + 1, 0)


def test_store_reports_an_empty_chunk_appended_to_whole_chunks(tmp_path: Path) -> None:
    volume = _make_volume(tmp_path / "vol", 4096)
    plain = bytes(range(256)) * 32  # exactly two chunks
    _put(volume, "/a.dcm", plain)
    with open(tmp_path / "vol" / "a.dcm", "ab") as backing:
        backing.write(bytes(CHUNK_OVERHEAD))
    handle = volume.open("/a.dcm", os.O_RDONLY)
    try:
        got = handle.read(len(plain) + 100, 0)
    except IntegrityError:
        return
    finally:
        handle.close()
    assert got == plain  # never wrong bytes, even today ...
    pytest.fail("... but the appended bytes went unnoticed")
