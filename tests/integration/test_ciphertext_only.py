"""What reaches the backing disk is ciphertext only, and altered ciphertext is refused.

File *names* are stored in plaintext in format v1 (docs/file-format.md), so these tests keep
identifying data out of names and look for it in the stored bytes.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

pytestmark = pytest.mark.integration

CHUNK, HEADER, OVERHEAD = 65536, 24, 28
STORED_CHUNK = CHUNK + OVERHEAD
MARKER = b"PATIENT^MARKER"
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


def stored_files(backing: Path) -> list[Path]:
    return sorted(p for p in backing.rglob("*") if p.is_file())


def write_sample_files(mnt: Path) -> dict[str, bytes]:
    """Plaintexts written through the mount, by their mount-relative name."""
    files = {
        "one-marker": MARKER,
        "many-markers": MARKER * (3 * CHUNK // len(MARKER) + 7),
        "study/series/image1": CT_SMALL.read_bytes(),
        "zeros": bytes(2 * CHUNK + 10),
    }
    (mnt / "study" / "series").mkdir(parents=True)
    for name, data in files.items():
        if name == "study/series/image1":
            shutil.copyfile(CT_SMALL, mnt / name)
        else:
            (mnt / name).write_bytes(data)
    with open(mnt / "sparse", "wb") as f:  # a gap written by seeking past the end
        f.seek(5 * CHUNK)
        f.write(MARKER)
    files["sparse"] = bytes(5 * CHUNK) + MARKER
    return files


def test_backing_holds_no_plaintext(mounted) -> None:
    patient_name = str(pydicom.dcmread(CT_SMALL).PatientName).encode()
    assert patient_name and patient_name in CT_SMALL.read_bytes()  # the test data does contain it
    files = write_sample_files(mounted.mountpoint)
    for name, data in files.items():
        assert (mounted.mountpoint / name).read_bytes() == data
    mounted.unmount()

    stored = [path for path in stored_files(mounted.backing) if not path.name.startswith("audit-key.")]
    assert len(stored) == len(files) + 1  # plus .encfs-pacs/volume.json (the audit key store is
    # checked by the audit tests: it holds a public key and an encrypted private key)
    for path in stored:
        raw = path.read_bytes()
        for needle in (MARKER, MARKER[:8], patient_name):
            assert needle not in raw, f"{needle!r} found in {path}"
    # 4-byte needles turn up by chance in about 1 MB of random bytes (it happened), so they are
    # looked for only in the DICOM file's own ciphertext (39 KB: a chance match is ~1e-5)
    stored_dicom = (mounted.backing / "study" / "series" / "image1").read_bytes()
    for needle in (b"DICM", b"1CT1"):  # the DICOM magic and the patient ID
        assert needle not in stored_dicom, f"{needle!r} found in the stored DICOM file"
        if path.name != "volume.json":
            assert raw[:4] == b"EPAC"
            # zeros are encrypted too (no holes, no zero runs): a gap or a zero image leaks nothing
            assert bytes(16) not in raw[HEADER:], f"a run of zero bytes in {path}"
            assert path.stat().st_blocks * 512 >= path.stat().st_size - 4096, f"{path} is sparse"


def test_same_plaintext_never_gives_the_same_ciphertext(mounted) -> None:
    mnt, backing = mounted.mountpoint, mounted.backing
    data = MARKER * 10000
    (mnt / "a").write_bytes(data)
    (mnt / "b").write_bytes(data)
    first = (backing / "a").read_bytes()
    assert first != (backing / "b").read_bytes()  # different file IDs, keys and nonces
    with open(mnt / "a", "r+b") as f:  # rewrite the same bytes in place
        f.write(data[:CHUNK])
    second = (backing / "a").read_bytes()
    assert second[:HEADER] == first[:HEADER]  # same file ...
    assert second[HEADER:HEADER + 12] != first[HEADER:HEADER + 12]  # ... but a fresh nonce for chunk 0
    assert second[HEADER:HEADER + STORED_CHUNK] != first[HEADER:HEADER + STORED_CHUNK]


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[HEADER + STORED_CHUNK + 1000] ^= 0x01  # a ciphertext byte inside chunk 1
    path.write_bytes(raw)


def _truncate_at_chunk_boundary(path: Path) -> None:
    # drop the final chunk: the remaining last chunk was not sealed as final (the cut gocryptfs misses)
    os.truncate(path, HEADER + 2 * STORED_CHUNK)


def _swap_chunks(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    c0 = raw[HEADER:HEADER + STORED_CHUNK]
    raw[HEADER:HEADER + STORED_CHUNK] = raw[HEADER + STORED_CHUNK:HEADER + 2 * STORED_CHUNK]
    raw[HEADER + STORED_CHUNK:HEADER + 2 * STORED_CHUNK] = c0
    path.write_bytes(raw)


def _replace_with_other_file(path: Path) -> None:
    # a whole valid file of the same volume moved over another: the file ID differs, so the
    # chunks would still authenticate for *that* file only; this one keeps its header
    other = path.with_name("many-markers").read_bytes()
    raw = path.read_bytes()
    path.write_bytes(raw[:HEADER] + other[HEADER:HEADER + len(raw) - HEADER])


@pytest.mark.parametrize("tamper", [_flip_byte, _truncate_at_chunk_boundary, _swap_chunks,
                                    _replace_with_other_file])
def test_tampered_file_reads_as_eio_and_others_still_read(mounted, tamper) -> None:
    mnt = mounted.mountpoint
    files = write_sample_files(mnt)
    victim = "victim.bin"
    victim_data = os.urandom(2 * CHUNK + 5000)  # three chunks, the last one partial
    (mnt / victim).write_bytes(victim_data)
    mounted.unmount()

    tamper(mounted.backing / victim)
    mounted.mount()
    with pytest.raises(OSError) as info:
        (mnt / victim).read_bytes()
    assert info.value.errno == errno.EIO
    for name, data in files.items():  # one damaged file does not take the volume down
        assert (mnt / name).read_bytes() == data
    assert "integrity failure" in mounted.log()
    assert victim in mounted.log()  # the log names the damaged file for the admin
