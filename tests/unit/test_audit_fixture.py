"""Known answers for the audit format: the checked-in audit-v1 log (tests/fixtures).

- The fixture verifies against its anchor with today's code (logs kept for six years must
  keep verifying), and an edited copy fails at exactly the edited record.
- The writer, given the fixture's fixed keys, clock and chain id, reproduces it byte for byte:
  any change to the record format shows up here first.
- An independent verifier written from docs/audit-format.md alone (hashlib, json and the
  Ed25519 primitive; none of encfs_pacs.audit) accepts the fixture: the spec is sufficient.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from encfs_pacs.audit import iter_records, verify

from .auditkit import build_fixture, lines_of, write_lines

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "audit-v1"
ANCHOR = bytes.fromhex("2f16cd9d54eec71e9d6f160b00777be308f4a13052dfdc42e3769284ded49dbe")
FILES = ["audit.log.20260102T030405Z", "audit.log.20260102T030405Z-2", "audit.log"]  # chain order
LAST_SEQ = 32


def fixture_files(root: Path = FIXTURE) -> list[Path]:
    return [root / name for name in FILES]


def test_the_fixture_verifies_against_its_anchor() -> None:
    assert (FIXTURE / "anchor.hex").read_text().strip() == ANCHOR.hex()
    report = verify(fixture_files(), ANCHOR)
    assert report.intact and report.anchored, report.lines()
    assert report.records == LAST_SEQ + 1
    (chain,) = report.chains
    assert (chain.first_seq, chain.last_seq, chain.epochs, chain.ended) == (0, LAST_SEQ, (0, 4), "stop")


def test_pinned_head() -> None:
    """The last record's hash covers everything before it: one value pins the whole fixture."""
    last = json.loads(lines_of(FIXTURE / "audit.log")[-1])
    assert last["seq"] == LAST_SEQ
    assert last["hash"] == "bc704465116aadc1abb5100181f03391f501a2163d6131292d798e66ab4dfedd"


def test_the_fixture_covers_every_record_type() -> None:
    types = [r.get("audit", {}).get("type") for r in iter_records(fixture_files(), include_control=True)]
    assert {"start", "epoch", "checkpoint", "rotate", "link", "stop", "resume"} <= set(types)
    resumes = [r["audit"] for r in iter_records(fixture_files(), include_control=True)
               if r["event"] == "audit-resume"]
    assert [r["clean"] for r in resumes] == [True, True, False]
    assert resumes[-1]["torn_bytes"] == 41


def test_files_in_any_order() -> None:
    assert verify(list(reversed(fixture_files())), ANCHOR).intact


def test_an_edited_copy_fails_at_the_edited_record(tmp_path: Path) -> None:
    copy = tmp_path / "audit-v1"
    shutil.copytree(FIXTURE, copy)
    target = copy / "audit.log.20260102T030405Z"
    lines = lines_of(target)
    number = next(i for i, line in enumerate(lines) if b"PAT-0001" in line)
    lines[number] = lines[number].replace(b"PAT-0001", b"PAT-0002")
    write_lines(target, lines)
    report = verify(fixture_files(copy), ANCHOR)
    assert not report.intact
    problem = report.problem
    assert problem is not None
    assert (problem.kind, problem.file, problem.line, problem.seq) == (
        "edited", str(target), number + 1, json.loads(lines[number])["seq"])


def test_the_writer_reproduces_the_fixture(tmp_path: Path) -> None:
    made = build_fixture(tmp_path / "audit-v1")
    assert made["anchor"] == ANCHOR.hex()
    for name in [*FILES, "anchor.hex"]:
        assert (tmp_path / "audit-v1" / name).read_bytes() == (FIXTURE / name).read_bytes(), name


# ---------------------------------------------------------------------------- the spec alone


def spec_canonical(value: Any) -> bytes:
    """docs/audit-format.md §2: sorted members, no whitespace, JSON.stringify escapes, UTF-8."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return b"{" + b",".join(spec_canonical(k) + b":" + spec_canonical(v) for k, v in items) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(spec_canonical(v) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def spec_verify(paths: list[Path], anchor: bytes) -> int:
    """Hash chain, seq, epoch keys and seal signatures, as §3-§5 and §8 describe them."""
    prev, seq, key, last = "0" * 64, 0, anchor, None
    for path in paths:
        for line in path.read_bytes().splitlines():
            record = json.loads(line)
            body = {k: v for k, v in record.items() if k != "hash"}
            assert line == spec_canonical(body)[:-1] + b',"hash":"' + record["hash"].encode() + b'"}'
            assert hashlib.sha256(spec_canonical(body)).hexdigest() == record["hash"]
            assert (record["seq"], record["prev"]) == (seq, prev)
            if "sig" in record:
                unsigned = {k: v for k, v in body.items() if k != "sig"}
                message = b"encfs-pacs audit v1 seal\n" + spec_canonical(unsigned)
                Ed25519PublicKey.from_public_bytes(key).verify(bytes.fromhex(record["sig"]), message)
                if record["audit"]["type"] == "epoch":
                    key = bytes.fromhex(record["audit"]["public"])
            prev, seq, last = record["hash"], seq + 1, record
    assert last is not None and last["audit"]["type"] == "stop"
    return seq


def test_the_spec_alone_verifies_the_fixture() -> None:
    assert spec_verify(fixture_files(), ANCHOR) == LAST_SEQ + 1


def test_the_spec_verifier_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    copy = tmp_path / "audit-v1"
    shutil.copytree(FIXTURE, copy)
    with pytest.raises(InvalidSignature):
        spec_verify(fixture_files(copy), bytes.fromhex("3b6a27bcceb6a42d62a3a8d02a6f0d73"
                                                       "653215771de243a63ac048a18b59da29"))


def test_key_store_key_and_sealing_follow_the_spec(tmp_path: Path) -> None:
    """docs/audit-format.md §7: HKDF label, AES-GCM with the documented associated data."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from encfs_pacs.audit.signing import create_key_store

    from .auditkit import FIXTURE_MASTER_KEY, make_backing, seeded_keys

    store_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                     info=b"encfs-pacs v1 audit key store").derive(FIXTURE_MASTER_KEY)
    assert store_key.hex() == "36db4e5a4ae9f430f8bf6da7cad3ab21ea337c0fb3d2b23a7c6db56356e1a32c"
    doc = (Path(__file__).resolve().parents[2] / "docs" / "audit-format.md").read_text(encoding="utf-8")
    assert store_key.hex() in doc and "encfs-pacs v1 audit key store" in doc
    seeds = seeded_keys(b"spec")
    seed = bytes(next(seeded_keys(b"spec")))
    store = create_key_store(make_backing(tmp_path), FIXTURE_MASTER_KEY, lambda: next(seeds))
    current = store.current
    aad = f"encfs-pacs audit key|{store.anchor.hex()}|0|{current['public']}".encode()
    nonce, sealed = base64.b64decode(current["nonce"]), base64.b64decode(current["sealed"])
    opened = AESGCM(store_key).decrypt(nonce, sealed, aad)
    assert opened == seed
