"""Ed25519 epoch keys and the audit key store (``BACKING/.encfs-pacs/audit-key.json``).

The store holds the public *anchor* (epoch 0's public key, plaintext: auditors may copy it
anywhere) and the *current* epoch's private key, sealed with AES-256-GCM under a key derived
from the volume's master key (crypto.keys.audit_key_store_key). An epoch change writes the
next key as *pending*, then the log record that endorses it, then promotes it and drops the
old key: a crash between any two steps leaves a state the next start can resolve (writer.py).
Whoever later steals the master key finds only the current key, so they cannot re-sign
checkpoints of earlier epochs: that is the forward security of the trail.

Erasure is best effort: our copy of a private key lives in a bytearray that is zeroed, and
OpenSSL clears its own copy when the key object is freed; CPython may still hold transient
copies (the bytes AES-GCM decryption returns) until their memory is reused, and the file
system may keep old blocks of a replaced file. docs/audit-format.md §7 says so.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..crypto.keys import audit_key_store_key
from ..durable import write_file_atomically as write_atomically
from ..errors import AuditUnavailable
from .records import utc_text

META_DIR = ".encfs-pacs"  # the volume's metadata folder (store.META_DIR; not imported: layering)
KEY_STORE_FILE = "audit-key.json"
# Shared storage: several mounts of one volume (ACQ and WAS servers on one NAS) each write their
# own log, so each needs its own key store, anchor and writer lock: META_DIR/audit-hosts/NAME/.
HOSTS_DIR = "audit-hosts"
KEY_STORE_FORMAT = "encfs-pacs audit key"
KEY_STORE_VERSION = 1
SEED_BYTES = 32

KeyGen = Callable[[], bytearray]


def random_seed() -> bytearray:
    """32 random bytes read straight into a bytearray, so our only copy can be zeroed."""
    seed = bytearray(SEED_BYTES)
    with open("/dev/urandom", "rb", buffering=0) as source:
        if source.readinto(seed) != SEED_BYTES:
            raise OSError("short read from /dev/urandom")
    return seed


class EpochKey:
    """One epoch's signing key. ``erase()`` forgets it; signing afterwards is a bug."""

    def __init__(self, epoch: int, seed: bytearray) -> None:
        self.epoch = epoch
        self._seed: bytearray | None = seed
        self._key: Ed25519PrivateKey | None = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = self._key.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        if self._key is None:
            raise RuntimeError(f"audit epoch key {self.epoch} was erased and cannot sign")
        return self._key.sign(message)

    def seal(self, store_key: bytes, anchor: bytes) -> dict[str, Any]:
        if self._seed is None:
            raise RuntimeError(f"audit epoch key {self.epoch} was erased")
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(store_key).encrypt(nonce, self._seed, _sealing_aad(anchor, self.epoch, self.public))
        return {"epoch": self.epoch, "public": self.public.hex(), "nonce": _b64(nonce),
                "sealed": _b64(sealed)}

    def erase(self) -> None:
        if self._seed is not None:
            self._seed[:] = bytes(len(self._seed))
        self._seed = None
        self._key = None

    def __repr__(self) -> str:  # never a secret in a traceback or a log line
        return f"EpochKey(epoch={self.epoch}, public={self.public.hex()[:16]}…)"


def verify_signature(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _sealing_aad(anchor: bytes, epoch: int, public: bytes) -> bytes:
    # Binds the sealed key to its volume, epoch and public key: a sealed blob copied between
    # slots or volumes fails to open instead of signing under the wrong identity.
    return f"encfs-pacs audit key|{anchor.hex()}|{epoch}|{public.hex()}".encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def key_store_path(backing: Path, host: str | None = None) -> Path:
    """The volume-wide key store, or host ``host``'s own (``--audit-host``, shared storage)."""
    if host is None:
        return backing / META_DIR / KEY_STORE_FILE
    return backing / META_DIR / HOSTS_DIR / host / KEY_STORE_FILE


@dataclass
class KeyStore:
    """The parsed key store. Private keys stay sealed until ``open_slot``."""

    path: Path
    anchor: bytes
    current: dict[str, Any]
    pending: dict[str, Any] | None = None
    last_epoch: dict[str, Any] | None = None  # where the current key was endorsed: chain, seq, hash
    head: dict[str, Any] | None = None  # latest known sealed point: chain, seq, hash, stopped
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return int(self.current["epoch"])

    @property
    def public(self) -> bytes:
        return bytes.fromhex(self.current["public"])

    def open_slot(self, slot: dict[str, Any], master_key: bytes) -> EpochKey:
        epoch, public = int(slot["epoch"]), bytes.fromhex(slot["public"])
        try:
            seed = bytearray(AESGCM(audit_key_store_key(master_key)).decrypt(
                base64.b64decode(slot["nonce"]), base64.b64decode(slot["sealed"]),
                _sealing_aad(self.anchor, epoch, public)))
        except (InvalidTag, binascii.Error, ValueError):
            raise AuditUnavailable(
                f"the audit key store {self.path} cannot be opened with this volume's key (it was "
                "altered, or copied from another volume): restore it from backup") from None
        key = EpochKey(epoch, seed)
        if key.public != public:
            key.erase()
            raise AuditUnavailable(f"the audit key store {self.path} is damaged (epoch {epoch} key "
                                   "does not match its public key): restore it from backup")
        return key

    def to_json(self) -> bytes:
        doc = {"format": KEY_STORE_FORMAT, "version": KEY_STORE_VERSION, "anchor": self.anchor.hex(),
               "created": self.created, "current": self.current, "pending": self.pending,
               "last_epoch": self.last_epoch, "head": self.head, **self.extra}
        return (json.dumps(doc, indent=2) + "\n").encode()

    def save(self) -> None:
        write_atomically(self.path, self.to_json())


def load_key_store(backing: Path, host: str | None = None) -> KeyStore | None:
    """The key store, None if the volume has none yet; AuditUnavailable if unreadable."""
    path = key_store_path(backing, host)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditUnavailable(f"cannot read the audit key store {path}: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
        if doc.get("format") != KEY_STORE_FORMAT:
            raise ValueError("not an audit key store")
        if doc.get("version") != KEY_STORE_VERSION:
            raise AuditUnavailable(f"the audit key store {path} has version {doc.get('version')!r}, "
                                   "which this encfs-pacs does not know: upgrade encfs-pacs")
        known = {"format", "version", "anchor", "created", "current", "pending", "last_epoch", "head"}
        store = KeyStore(path=path, anchor=bytes.fromhex(doc["anchor"]), current=dict(doc["current"]),
                         pending=doc.get("pending"), last_epoch=doc.get("last_epoch"),
                         head=doc.get("head"), created=str(doc.get("created", "")),
                         extra={k: v for k, v in doc.items() if k not in known})
        if len(store.anchor) != 32 or len(store.public) != 32:
            raise ValueError("key length")
    except AuditUnavailable:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise AuditUnavailable(f"the audit key store {path} is damaged (not the JSON document "
                               "encfs-pacs writes): restore it from backup") from None
    return store


def create_key_store(backing: Path, master_key: bytes, keygen: KeyGen = random_seed,
                     host: str | None = None) -> KeyStore:
    """A new key store whose epoch-0 public key is the anchor. Refuses to replace one."""
    path = key_store_path(backing, host)
    if not (backing / META_DIR).is_dir():
        raise AuditUnavailable(f"{backing} has no {META_DIR} folder: it is not an encfs-pacs volume")
    if host is not None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        raise AuditUnavailable(f"{path} already exists: an audit anchor is never replaced")
    key = EpochKey(0, keygen())
    try:
        store = KeyStore(path=path, anchor=key.public, current=key.seal(audit_key_store_key(master_key),
                                                                         key.public),
                         created=utc_text(datetime.now(UTC)))
    finally:
        key.erase()
    store.save()
    return store


def create_anchor(backing: Path, master_key: bytes) -> bytes:
    """Create the volume's audit anchor (called by ``init``); returns its public key (32 bytes).

    Idempotent: if the volume already has an anchor it is returned unchanged (replacing it
    would orphan every log signed under it).
    """
    existing = load_key_store(backing)
    if existing is not None:
        return existing.anchor
    return create_key_store(backing, master_key).anchor


def read_anchor(backing: Path, host: str | None = None) -> bytes | None:
    """The volume's public anchor (or host ``host``'s), None if there is none yet. No secret."""
    store = load_key_store(backing, host)
    return None if store is None else store.anchor


def parse_public_key(text: str) -> bytes:
    """An Ed25519 public key given as 64 hex digits or 44 base64 characters."""
    value = text.strip()
    try:
        raw = bytes.fromhex(value) if len(value) == 64 else base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise ValueError("an anchor is an Ed25519 public key: 64 hex digits or 44 base64 characters "
                         "(as printed by: encfs-pacs audit anchor BACKING)")
    return raw
