"""Printable recovery key: the master key (or Shamir shares of it) as lines a person can type.

One share per line (docs/maintenance.md, "Recovery key format")::

    encfs-pacs-recovery-1 volume-9c9989a0 share-2 need-3 ABCD-EFGH-...-WXYZ   (16 groups of 4)

- ``volume-``: the first 4 bytes of the volume's key ID, so a share of another volume is
  named as such instead of failing as a typo;
- ``share-`` x (1..255) and ``need-`` the threshold M (1: the line is the whole key);
- the body: Crockford base32 of 40 bytes = set ID (2) | share value y (32) | check (6).
  The set ID is random per ``recovery-key create``: shares of two different splittings of the
  same key do not combine, and are refused by name rather than giving a wrong key.
  ``check`` = SHA-256(domain | key-ID prefix | x | M | set ID | y)[:6] catches typos (any
  error is missed with probability 2^-48) and a share line edited to another volume or number.

Crockford's alphabet has no I, L, O or U; on input O reads as 0, I and L as 1, and case,
spaces and dashes are ignored, so a key read aloud or retyped from paper still parses.
The recovered master key is then checked against the full 16-byte key ID (HKDF), which
catches everything the checksums cannot (e.g. M shares that are each well-formed but were
never issued together).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from ..errors import RecoveryKeyError
from . import shamir
from .keys import key_id as derive_key_id

MAGIC = "encfs-pacs-recovery-1"
_DOMAIN = b"encfs-pacs recovery key v1\0"
KEY_ID_PREFIX_BYTES = 4
SET_ID_BYTES = 2
CHECK_BYTES = 6
SECRET_BYTES = 32
BODY_BYTES = SET_ID_BYTES + SECRET_BYTES + CHECK_BYTES  # 40 bytes = 320 bits = 64 characters
GROUP = 4

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
_DECODE = {c: i for i, c in enumerate(ALPHABET)} | {"O": 0, "I": 1, "L": 1}
_LINE = re.compile(
    r"^\s*(?P<magic>\S+)\s+volume-(?P<volume>[0-9a-fA-F]+)\s+share-(?P<x>\d+)\s+need-(?P<m>\d+)\s+"
    r"(?P<body>.+?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Share:
    key_id_prefix: bytes
    x: int
    threshold: int
    set_id: bytes
    y: bytes

    def __repr__(self) -> str:  # a share is key material: keep it out of tracebacks and logs
        return f"Share(volume={self.key_id_prefix.hex()}, x={self.x}, threshold={self.threshold})"

    def checksum(self) -> bytes:
        data = (_DOMAIN + self.key_id_prefix + bytes([self.x, self.threshold]) + self.set_id + self.y)
        return hashlib.sha256(data).digest()[:CHECK_BYTES]

    def line(self) -> str:
        body = b32encode(self.set_id + self.y + self.checksum())
        groups = "-".join(body[i:i + GROUP] for i in range(0, len(body), GROUP))
        return f"{MAGIC} volume-{self.key_id_prefix.hex()} share-{self.x} need-{self.threshold} {groups}"


def b32encode(data: bytes) -> str:
    """Crockford base32, most significant bits first; 5 bytes -> 8 characters, no padding."""
    bits = int.from_bytes(data, "big")
    count = -(-len(data) * 8 // 5)
    bits <<= count * 5 - len(data) * 8
    return "".join(ALPHABET[(bits >> (5 * (count - 1 - i))) & 31] for i in range(count))


def b32decode(text: str, length: int) -> bytes:
    """Inverse of b32encode for ``length`` bytes; ValueError names the first bad character."""
    cleaned = [c for c in text.upper() if c not in "- \t"]
    count = -(-length * 8 // 5)
    if len(cleaned) != count:
        raise ValueError(f"it has {len(cleaned)} characters instead of {count}")
    bits = 0
    for position, char in enumerate(cleaned, 1):
        if char not in _DECODE:
            raise ValueError(f"character {position} ({char!r}) is not in the recovery key alphabet")
        bits = (bits << 5) | _DECODE[char]
    padding = count * 5 - length * 8
    if bits & ((1 << padding) - 1):
        raise ValueError("its last character is not one a recovery key can end with")
    return (bits >> padding).to_bytes(length, "big")


def make_shares(master_key: bytes, key_id: bytes, shares: int = 1, threshold: int = 1) -> list[Share]:
    """Split the master key into ``shares`` lines, any ``threshold`` of which recover it."""
    if len(master_key) != SECRET_BYTES:
        raise ValueError("a master key is 32 bytes")
    set_id = secrets.token_bytes(SET_ID_BYTES)
    prefix = key_id[:KEY_ID_PREFIX_BYTES]
    return [Share(prefix, x, threshold, set_id, y) for x, y in shamir.split(master_key, shares, threshold)]


def parse_line(line: str, where: str = "") -> Share:
    """One share line; RecoveryKeyError says which part is wrong (``where``: e.g. "line 3: ")."""
    match = _LINE.match(line)
    if match is None or match["magic"].lower() != MAGIC:
        raise RecoveryKeyError(
            f"{where}not an encfs-pacs recovery key line (expected '{MAGIC} volume-... share-N "
            "need-M XXXX-XXXX-...')")
    if len(match["volume"]) != 2 * KEY_ID_PREFIX_BYTES:
        raise RecoveryKeyError(f"{where}the volume ID must be {2 * KEY_ID_PREFIX_BYTES} hex digits")
    x, threshold = int(match["x"]), int(match["m"])
    if not 1 <= x <= shamir.MAX_SHARES or not 1 <= threshold <= shamir.MAX_SHARES:
        raise RecoveryKeyError(f"{where}share and need numbers must be 1..255")
    try:
        raw = b32decode(match["body"], BODY_BYTES)
    except ValueError as exc:
        raise RecoveryKeyError(f"{where}the key is mistyped or damaged: {exc}") from None
    share = Share(bytes.fromhex(match["volume"]), x, threshold, raw[:SET_ID_BYTES],
                  raw[SET_ID_BYTES:SET_ID_BYTES + SECRET_BYTES])
    if not hmac.compare_digest(share.checksum(), raw[-CHECK_BYTES:]):
        raise RecoveryKeyError(
            f"{where}the checksum does not match: the share was mistyped or damaged "
            "(compare it character by character with the paper copy)")
    return share


def parse_text(text: str) -> list[tuple[int, Share]]:
    """Every share in a recovery file with its line number; blank and '#' lines are skipped."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            found.append((number, parse_line(line, f"line {number}: ")))
    if not found:
        raise RecoveryKeyError("the recovery key file holds no share line")
    return found


def recover(numbered: list[tuple[int, Share]], key_id: bytes) -> bytes:
    """The master key from parsed shares of the volume with ``key_id``; RecoveryKeyError
    (never a wrong key) if they belong elsewhere, do not fit together or are too few."""
    prefix = key_id[:KEY_ID_PREFIX_BYTES]
    for number, share in numbered:
        if share.key_id_prefix != prefix:
            raise RecoveryKeyError(
                f"line {number}: this share belongs to volume {share.key_id_prefix.hex()}, "
                f"not to this volume ({prefix.hex()})")
    first_line, first = numbered[0]
    unique: dict[int, tuple[int, Share]] = {}
    for number, share in numbered:
        if (share.set_id, share.threshold) != (first.set_id, first.threshold):
            raise RecoveryKeyError(
                f"line {number}: this share is from another recovery key set than line {first_line} "
                "(made by a different 'recovery-key create'); use shares of one set only")
        seen = unique.get(share.x)
        if seen is not None and seen[1].y != share.y:
            raise RecoveryKeyError(f"lines {seen[0]} and {number} are both share {share.x} but differ")
        unique.setdefault(share.x, (number, share))
    points = [(share.x, share.y) for _, share in unique.values()]
    if len(points) < first.threshold:
        raise RecoveryKeyError(
            f"{len(points)} different share(s) given; this recovery key needs {first.threshold}")
    bad = shamir.inconsistent(points, first.threshold)
    if bad:
        lines = ", ".join(str(unique[x][0]) for x in bad)
        raise RecoveryKeyError(f"share(s) on line(s) {lines} do not fit the others")
    master = shamir.combine(points[:first.threshold])
    if not hmac.compare_digest(derive_key_id(master), key_id):
        raise RecoveryKeyError("the recovered key does not unlock this volume (its key ID differs)")
    return master
