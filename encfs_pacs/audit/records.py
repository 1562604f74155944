"""The record envelope: line layout, record hash, seal signatures, control-record types.

One record per line (docs/audit-format.md §2-§4):

    <canonical JSON of the record without "hash", its closing "}" replaced by>,"hash":"<hex>"}\\n

``hash`` is SHA-256 of the canonical bytes without it, so a line carries the proof of its own
content; the next record's ``prev`` repeats it, which chains the records. Seals (checkpoint,
epoch, rotate, stop) carry ``sig``: Ed25519 over SEAL_DOMAIN + the canonical bytes of the
record without ``hash`` and ``sig`` -- including ``seq`` and ``prev``, i.e. the chain head.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

from .canonical import NotCanonical, canonical, parse_canonical

FORMAT_VERSION = 1
SEAL_DOMAIN = b"encfs-pacs audit v1 seal\n"
GENESIS_PREV = "0" * 64  # prev of seq 0: there is no record before it

# Control records: written by the writer only, identified by an "audit" member.
START, LINK, RESUME, CHECKPOINT, EPOCH, ROTATE, STOP = (
    "start", "link", "resume", "checkpoint", "epoch", "rotate", "stop")
SEALS = frozenset({CHECKPOINT, EPOCH, ROTATE, STOP})
CONTROL_TYPES = frozenset({START, LINK, RESUME}) | SEALS
CONTROL_EVENTS = frozenset(f"audit-{kind}" for kind in CONTROL_TYPES)

_HASH_MEMBER = b',"hash":"'
_SUFFIX_LEN = len(_HASH_MEMBER) + 64 + 2  # ,"hash":"<64 hex>"}
_HEX64 = re.compile(rb"[0-9a-f]{64}")
TIME_PATTERN = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def utc_text(moment: datetime) -> str:
    """RFC 3339, UTC, microseconds, "Z": fixed width, so text order is time order."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_line(record: dict[str, Any]) -> tuple[bytes, str]:
    """The line for ``record`` (which has no "hash" yet) and its hash."""
    body = canonical(record)
    digest = sha256_hex(body)
    return body[:-1] + _HASH_MEMBER + digest.encode("ascii") + b'"}\n', digest


def seal_message(record: dict[str, Any]) -> bytes:
    """What a seal's signature covers: the record without its hash and signature."""
    unsigned = {key: value for key, value in record.items() if key not in ("hash", "sig")}
    return SEAL_DOMAIN + canonical(unsigned)


def decode_line(line: bytes) -> dict[str, Any]:
    """Parse one line (without its newline) strictly; raises NotCanonical saying what is wrong.

    The returned record includes "hash", checked against the content.
    """
    if len(line) <= _SUFFIX_LEN or line[-_SUFFIX_LEN:-_SUFFIX_LEN + len(_HASH_MEMBER)] != _HASH_MEMBER \
            or not line.endswith(b'"}'):
        raise NotCanonical('does not end with its "hash" member (not an encfs-pacs audit record, '
                           "or the line was cut)")
    digest = line[-66:-2]
    if not _HEX64.fullmatch(digest):
        raise NotCanonical('"hash" is not 64 lowercase hex digits')
    body = line[:-_SUFFIX_LEN] + b"}"
    record = parse_canonical(body)
    if "hash" in record:
        raise NotCanonical('"hash" appears twice')
    if sha256_hex(body) != digest.decode("ascii"):
        raise HashMismatch("its content does not match its hash: the record was edited")
    record["hash"] = digest.decode("ascii")
    return record


class HashMismatch(NotCanonical):
    """Well-formed, but the content is not what was hashed: an edit."""


def control_type(record: dict[str, Any]) -> str | None:
    control = record.get("audit")
    return control.get("type") if isinstance(control, dict) else None
