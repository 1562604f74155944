"""Helpers for the audit tests: a backing folder, deterministic writers, and log surgery.

The surgery functions are what an attacker with write access to the log (but not the key)
can do: edit bytes, recompute hashes and re-chain, cut, reorder, append, sign with a key of
their own. Each tamper test applies one and expects verify() to name the first bad record.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from encfs_pacs.audit import open_audit_log
from encfs_pacs.audit.canonical import canonical
from encfs_pacs.audit.records import SEAL_DOMAIN
from encfs_pacs.audit.signing import create_key_store
from encfs_pacs.audit.writer import AuditLog, _Hooks

FIXTURE_MASTER_KEY = bytes(range(32))  # test data only
FIXTURE_CHAIN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
FIXTURE_START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_backing(root: Path, name: str = "backing") -> Path:
    """Just enough of a volume for the audit code: its metadata folder."""
    backing = root / name
    (backing / ".encfs-pacs").mkdir(parents=True, mode=0o700)
    return backing


class FakeTime:
    """A clock that advances 1 ms per reading; monotonic time follows it without advancing,
    so the writer thread's own polling does not change what is written."""

    def __init__(self, start: datetime = FIXTURE_START) -> None:
        self.now = start
        self.ticks = 0

    def clock(self) -> datetime:
        self.ticks += 1
        self.now += timedelta(milliseconds=1)
        return self.now

    def mono(self) -> int:
        return 1_000_000_000 + self.ticks * 1_000_000


def seeded_keys(label: bytes) -> Iterator[bytearray]:
    n = 0
    while True:
        yield bytearray(hashlib.sha256(label + b" key %d" % n).digest())
        n += 1


def fixed_hooks(label: bytes = b"encfs-pacs audit fixture v1", chain: str = FIXTURE_CHAIN,
                fake: FakeTime | None = None) -> tuple[_Hooks, Iterator[bytearray]]:
    fake = fake or FakeTime()
    keys = seeded_keys(label)
    return _Hooks(clock=fake.clock, mono=fake.mono, keygen=lambda: next(keys),
                  new_chain_id=lambda: chain), keys


def open_fixed(path: Path, backing: Path, hooks: _Hooks, **settings: Any) -> AuditLog:
    """A writer whose output depends only on what is appended (deterministic)."""
    options = {"checkpoint_records": 4, "checkpoint_interval": 1e6, "epoch_seconds": None,
               "commit_interval": 0.005, "rotate_bytes": None}
    options.update(settings)
    return open_audit_log(path, backing, FIXTURE_MASTER_KEY, _hooks=hooks, **options)


def sample_payloads() -> list[dict[str, Any]]:
    """What the lead's access gate sends (docs/audit-format.md §3), with awkward text."""
    who = {"uid": 999, "gid": 999, "groups": [999], "user": "orthanc", "loginuid": 4294967295,
           "session": 4294967295}
    orthanc = {"pid": 4242, "tgid": 4242, "exe": "/usr/sbin/Orthanc", "sha256": "5e" * 32,
               "unit": "orthanc.service", "argv": ["Orthanc", "/etc/orthanc/"]}
    cat = {"pid": 5151, "tgid": 5151, "exe": "/usr/bin/cat", "sha256": "ca" * 32, "unit": "session-3.scope",
           "argv": ["cat", "studies/1.2.840.113619/ct1.dcm"]}
    admin = {"uid": 1000, "gid": 1000, "groups": [1000, 27], "user": "yamada", "loginuid": 1000,
             "session": 3}
    dicom = {"PatientID": "PAT-0001", "StudyInstanceUID": "1.2.840.113619.2.1",
             "SOPInstanceUID": "1.2.840.113619.2.1.1", "Modality": "CT"}
    return [
        {"event": "mount", "outcome": "allowed", "object": {"path": "/var/lib/orthanc/db",
                                                           "backing": "/srv/pacs-enc"},
         "program": {"pid": 100, "exe": "/usr/bin/python3"}, "detail": "policy /etc/encfs-pacs/policy.toml"},
        {"event": "policy-load", "outcome": "allowed", "detail": "policy loaded: 3 rules, sha256 ab12"},
        {"event": "open", "outcome": "allowed", "errno": None, "rule": "orthanc", "op": "read",
         "view": "plaintext", "who": who, "program": orthanc,
         "object": {"path": "/studies/1.2.840.113619/ct1.dcm", "inode": 2**40 + 7, "dicom": dicom}},
        {"event": "release", "outcome": "allowed", "errno": None, "rule": "orthanc", "op": "read",
         "view": "plaintext", "who": who, "program": orthanc,
         "object": {"path": "/studies/1.2.840.113619/ct1.dcm", "inode": 2**40 + 7, "dicom": dicom},
         "bytes_read": 527_416, "bytes_written": 0},
        {"event": "create", "outcome": "allowed", "errno": None, "rule": "orthanc", "op": "create",
         "view": "plaintext", "who": who, "program": orthanc,
         "object": {"path": "/studies/患者/画像 1.dcm", "inode": 1234}},
        {"event": "rename", "outcome": "allowed", "errno": None, "rule": "orthanc", "op": "rename",
         "view": "plaintext", "who": who, "program": orthanc,
         "object": {"path": "/studies/tmp-1.dcm", "new_path": "/studies/\U0001f4f7 final.dcm",
                    "inode": 1235}},
        {"event": "deny", "outcome": "denied", "errno": 13, "rule": None, "op": "read", "view": None,
         "who": admin, "program": cat, "object": {"path": "/studies/1.2.840.113619/ct1.dcm"},
         "alert": False},
        {"event": "integrity-failure", "outcome": "error", "alert": True, "errno": 5,
         "object": {"path": "/studies/broken.dcm"}, "detail": "chunk 3 failed authentication\t(tag)"},
        {"event": "setattr", "outcome": "error", "errno": 1, "rule": "orthanc", "op": "setattr",
         "who": who, "program": orthanc, "object": {"path": "/studies/x.dcm", "inode": 99},
         "detail": 'quote " backslash \\ control \u0001 and U+2028 \u2028'},
        {"event": "list", "outcome": "allowed", "errno": None, "rule": "orthanc", "op": "list",
         "who": who, "program": orthanc, "object": {"path": "/studies"}},
    ]


def build_fixture(dest: Path) -> dict[str, Any]:
    """The checked-in known-answer log (tests/fixtures/audit-v1): four runs (the third
    crashes with a torn write, the fourth resumes), one rotation.

    Deterministic: fixed keys, clock and chain id, a commit per record (flush), count-based
    checkpoints only. Returns what the test pins (anchor, files).
    """
    dest.mkdir(parents=True, exist_ok=True)
    backing = make_backing(dest.parent / (dest.name + ".backing"))
    fake = FakeTime()
    hooks, keys = fixed_hooks(fake=fake)
    create_key_store(backing, FIXTURE_MASTER_KEY, hooks.keygen)
    path = dest / "audit.log"
    writer = open_fixed(path, backing, hooks, rotate_bytes=6000)
    for payload in sample_payloads():
        writer.append(payload)
        writer.flush()
    writer.close()
    writer = open_fixed(path, backing, hooks, rotate_bytes=6000)
    for payload in sample_payloads()[:3]:
        writer.append(payload)
        writer.flush()
    writer.close()
    # Run 3 "crashes": its log and key store as they were before close, plus a torn write.
    writer = open_fixed(path, backing, hooks, rotate_bytes=6000)
    for payload in sample_payloads()[2:4]:
        writer.append(payload)
        writer.flush()
    crashed_log, crashed_store = path.read_bytes(), (backing / ".encfs-pacs" / "audit-key.json").read_bytes()
    writer.close()
    path.write_bytes(crashed_log + b'{"errno":null,"event":"open","mono_ns":10')
    (backing / ".encfs-pacs" / "audit-key.json").write_bytes(crashed_store)
    writer = open_fixed(path, backing, hooks, rotate_bytes=6000)  # run 4 resumes after the crash
    writer.append(sample_payloads()[-1])
    writer.close()
    anchor = json.loads((backing / ".encfs-pacs" / "audit-key.json").read_text())["anchor"]
    (dest / "anchor.hex").write_text(anchor + "\n")
    shutil.rmtree(backing)
    return {"anchor": anchor, "files": sorted(p.name for p in dest.iterdir())}


# ---------------------------------------------------------------------------- log surgery


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines_of(path)]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def encode(record: dict[str, Any]) -> bytes:
    """A record line as the writer would make it (hash recomputed)."""
    body = {k: v for k, v in record.items() if k != "hash"}
    raw = canonical(body)
    digest = hashlib.sha256(raw).hexdigest()
    return raw[:-1] + b',"hash":"' + digest.encode() + b'"}\n'


def rechain(records: list[dict[str, Any]], start: int, *, renumber: bool = False,
            signer: Ed25519PrivateKey | None = None) -> list[bytes]:
    """Recompute prev/hash (and seq, and with ``signer`` every seal) from index ``start`` on:
    what an attacker without the real key does to hide an edit."""
    out = [encode(r) for r in records[:start]]
    prev = records[start - 1]["hash"] if start else "0" * 64
    for index in range(start, len(records)):
        record = dict(records[index])
        record["prev"] = prev
        if renumber:
            record["seq"] = (records[start - 1]["seq"] + 1 + index - start) if start else index
        if signer is not None and "sig" in record:
            unsigned = {k: v for k, v in record.items() if k not in ("hash", "sig")}
            record["sig"] = signer.sign(SEAL_DOMAIN + canonical(unsigned)).hex()
        line = encode(record)
        record["hash"] = json.loads(line)["hash"]
        records[index] = record
        prev = record["hash"]
        out.append(line)
    return out


def index_of(records: list[dict[str, Any]], predicate: Any, nth: int = 0) -> int:
    hits = [i for i, r in enumerate(records) if predicate(r)]
    return hits[nth]


def kind(record: dict[str, Any]) -> str | None:
    control = record.get("audit")
    return control.get("type") if isinstance(control, dict) else None


def copy_state(backing: Path, log_dir: Path, dest: Path) -> tuple[Path, Path]:
    """Snapshot the key store and the logs as a crash would leave them."""
    dest.mkdir()
    shutil.copytree(backing, dest / backing.name)
    shutil.copytree(log_dir, dest / log_dir.name)
    return dest / backing.name, dest / log_dir.name


def fsync_count(monkeypatch: Any) -> list[int]:
    """Count os.fsync calls on regular files (the log), keeping the real fsync."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until true or ``timeout`` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
