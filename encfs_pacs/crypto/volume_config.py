"""The volume config document (``.encfs-pacs/volume.json`` in the backing folder).

A small JSON document: format version, feature flags, chunk size, key ID, KDF parameters and
the wrapped master key. Parsing is strict: an unknown version or feature flag means a newer
(or foreign) tool made this volume, and guessing would risk the archive, so we refuse.
The wrapped key's associated data covers the version, features, chunk size and key ID, so
editing any of them makes unlocking fail instead of silently mis-reading data.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptConfig, UnsupportedFormat
from .keys import KEY_ID_BYTES, MASTER_KEY_BYTES, WRAP_NONCE_BYTES, ScryptParams

FORMAT_NAME = "encfs-pacs volume"
CONFIG_VERSION = 1
DEFAULT_CHUNK_SIZE = 64 * 1024
FEATURE_CHUNKS = "aes256gcm-chunks"
FEATURE_PLAINTEXT_NAMES = "plaintext-names"
# Every feature this version understands. A future "encrypted-names" flag would be added here;
# a volume carrying a flag missing from this set is refused (see parse()).
KNOWN_FEATURES = frozenset({FEATURE_CHUNKS, FEATURE_PLAINTEXT_NAMES})
REQUIRED_FEATURES = frozenset({FEATURE_CHUNKS})
ALLOWED_CHUNK_SIZES = frozenset(2**k for k in range(12, 21))  # 4 KiB .. 1 MiB

KDF_SCRYPT = "scrypt"
KDF_KEYFILE = "keyfile"
# The wrapping key is sealed by a key service whose own key never leaves it (docs/key-services.md).
KDF_PKCS11 = "pkcs11"
KDF_KMIP = "kmip"
# kind -> (the service's mechanism, its IV length, its ciphertext length for the 32-byte
# wrapping key). PKCS#11: CKM_AES_GCM with a 16-byte tag; KMIP: AES-CBC with PKCS#5 padding
# (PyKMIP's client cannot pass GCM's associated data; the outer AES-GCM wrap authenticates).
SERVICE_MECHANISMS = {KDF_PKCS11: ("CKM_AES_GCM", 12, 48), KDF_KMIP: ("AES-CBC-PKCS5", 16, 48)}
# kind -> the non-secret reference fields and their JSON types (what the service key is called).
SERVICE_REFERENCE = {
    KDF_PKCS11: {"module": str, "token": str, "key_label": str},
    KDF_KMIP: {"host": str, "port": int, "key_uid": str},
}


@dataclass(frozen=True)
class ServiceKey:
    """The wrapping key as sealed by a key service, and where that service's key is.

    ``reference`` holds no secret (module path, token and key label; or host, port and key
    unique identifier): PINs and client certificates stay on each host."""

    reference: dict[str, str | int]
    iv: bytes
    sealed: bytes


def service_associated_data(key_id: bytes) -> bytes:
    """What the service binds to its ciphertext where its mechanism can (PKCS#11 AES-GCM), so
    one volume's sealed wrapping key does not unseal as another's."""
    return b"encfs-pacs wrapping key|" + key_id.hex().encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class VolumeConfig:
    key_id: bytes
    kdf: str
    scrypt: ScryptParams | None
    wrap_nonce: bytes
    wrapped_key: bytes
    chunk_size: int = DEFAULT_CHUNK_SIZE
    features: tuple[str, ...] = (FEATURE_CHUNKS, FEATURE_PLAINTEXT_NAMES)
    version: int = CONFIG_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # informational keys, e.g. "created"
    service: ServiceKey | None = None  # kdf "pkcs11" / "kmip" only

    def wrap_associated_data(self) -> bytes:
        bound = {
            "chunk_size": self.chunk_size,
            "features": sorted(self.features),
            "key_id": self.key_id.hex(),
            "version": self.version,
        }
        return b"encfs-pacs master key|" + json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> bytes:
        kdf: dict[str, Any] = {"algorithm": self.kdf}
        if self.scrypt is not None:
            kdf.update(log_n=self.scrypt.log_n, r=self.scrypt.r, p=self.scrypt.p, salt=_b64(self.scrypt.salt))
        if self.service is not None:
            kdf.update(self.service.reference)
            kdf.update(mechanism=SERVICE_MECHANISMS[self.kdf][0], iv=_b64(self.service.iv),
                       sealed_key=_b64(self.service.sealed))
        doc = {
            "format": FORMAT_NAME,
            "version": self.version,
            "features": list(self.features),
            "chunk_size": self.chunk_size,
            "key_id": self.key_id.hex(),
            "kdf": kdf,
            "wrapped_master_key": {"nonce": _b64(self.wrap_nonce), "ciphertext": _b64(self.wrapped_key)},
            **self.extra,
        }
        return (json.dumps(doc, indent=2) + "\n").encode()


def _field(doc: dict[str, Any], name: str, kind: type, where: str = "") -> Any:
    if name not in doc:
        raise CorruptConfig(f"volume config is damaged: {where}{name!r} is missing")
    value = doc[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CorruptConfig(f"volume config is damaged: {where}{name!r} must be a {kind.__name__}")
    return value


def _unb64(doc: dict[str, Any], name: str, where: str) -> bytes:
    try:
        return base64.b64decode(_field(doc, name, str, where), validate=True)
    except ValueError:
        raise CorruptConfig(f"volume config is damaged: {where}{name!r} is not valid base64") from None


def parse(raw: bytes) -> VolumeConfig:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptConfig(f"volume config is damaged: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise CorruptConfig("volume config is damaged: it is not an encfs-pacs volume config")
    version = _field(doc, "version", int)
    if version != CONFIG_VERSION:
        raise UnsupportedFormat(
            f"this volume has format version {version}; this encfs-pacs understands version "
            f"{CONFIG_VERSION} only: upgrade encfs-pacs to open it"
        )
    features = _field(doc, "features", list)
    # Checked before the membership test below: an unhashable entry (a JSON object or list)
    # would otherwise escape as a TypeError, i.e. an internal error instead of CorruptConfig.
    if not all(isinstance(f, str) for f in features):
        raise CorruptConfig("volume config is damaged: 'features' must be a list of strings")
    unknown = sorted(str(f) for f in features if f not in KNOWN_FEATURES)
    if unknown:
        raise UnsupportedFormat(
            f"this volume uses feature(s) {', '.join(unknown)} that this encfs-pacs does not know: "
            "upgrade encfs-pacs to open it"
        )
    missing = sorted(REQUIRED_FEATURES - set(features))
    if missing:
        raise UnsupportedFormat(f"volume config lacks required feature(s) {', '.join(missing)}")
    chunk_size = _field(doc, "chunk_size", int)
    if chunk_size not in ALLOWED_CHUNK_SIZES:
        raise CorruptConfig(f"volume config is damaged: chunk_size {chunk_size} is not a power of two 4K..1M")
    try:
        key_id = bytes.fromhex(_field(doc, "key_id", str))
    except ValueError:
        raise CorruptConfig("volume config is damaged: 'key_id' is not hexadecimal") from None
    # The chunk AAD packs the key ID into a fixed 16-byte field, which would silently pad or cut
    # an ID of another length: refuse it here rather than rely on unlock failing later.
    if len(key_id) != KEY_ID_BYTES:
        raise CorruptConfig(f"volume config is damaged: 'key_id' must be {KEY_ID_BYTES} bytes")
    kdf_doc = _field(doc, "kdf", dict)
    algorithm = _field(kdf_doc, "algorithm", str, "kdf.")
    scrypt, service = None, None
    if algorithm == KDF_SCRYPT:
        scrypt = ScryptParams(
            salt=_unb64(kdf_doc, "salt", "kdf."),
            log_n=_field(kdf_doc, "log_n", int, "kdf."),
            r=_field(kdf_doc, "r", int, "kdf."),
            p=_field(kdf_doc, "p", int, "kdf."),
        )
        if not (10 <= scrypt.log_n <= 24 and 1 <= scrypt.r <= 64 and 1 <= scrypt.p <= 16):
            raise CorruptConfig("volume config is damaged: scrypt parameters out of range")
    elif algorithm in SERVICE_MECHANISMS:
        service = _service_key(algorithm, kdf_doc)
    elif algorithm != KDF_KEYFILE:
        raise UnsupportedFormat(f"this volume's key is wrapped with {algorithm!r}, which this version lacks")
    wrapped = _field(doc, "wrapped_master_key", dict)
    wrap_nonce = _unb64(wrapped, "nonce", "wrapped_master_key.")
    wrapped_key = _unb64(wrapped, "ciphertext", "wrapped_master_key.")
    # A nonce of another length made AESGCM raise ValueError at unlock (an internal error with
    # a traceback); the sealed key is always the 32-byte master key plus a 16-byte tag.
    if len(wrap_nonce) != WRAP_NONCE_BYTES or len(wrapped_key) != MASTER_KEY_BYTES + 16:
        raise CorruptConfig("volume config is damaged: 'wrapped_master_key' has a wrong length")
    known = {"format", "version", "features", "chunk_size", "key_id", "kdf", "wrapped_master_key"}
    return VolumeConfig(
        key_id=key_id,
        kdf=algorithm,
        scrypt=scrypt,
        wrap_nonce=wrap_nonce,
        wrapped_key=wrapped_key,
        chunk_size=chunk_size,
        features=tuple(features),
        version=version,
        extra={k: v for k, v in doc.items() if k not in known},
        service=service,
    )


def _service_key(algorithm: str, kdf_doc: dict[str, Any]) -> ServiceKey:
    """The kdf object of a key-service volume. Exactly the documented fields: an unknown one
    may change how the key is used, so it is refused like an unknown feature."""
    fields = SERVICE_REFERENCE[algorithm]
    allowed = {"algorithm", "mechanism", "iv", "sealed_key", *fields}
    unknown = sorted(set(kdf_doc) - allowed)
    if unknown:
        raise UnsupportedFormat(f"this volume's key service entry has field(s) {', '.join(unknown)} "
                                "that this encfs-pacs does not know: upgrade encfs-pacs to open it")
    mechanism, iv_bytes, sealed_bytes = SERVICE_MECHANISMS[algorithm]
    if _field(kdf_doc, "mechanism", str, "kdf.") != mechanism:
        raise UnsupportedFormat(f"this volume's {algorithm} key uses mechanism {kdf_doc['mechanism']!r}; "
                                f"this encfs-pacs knows {mechanism!r} only")
    reference = {name: _field(kdf_doc, name, kind, "kdf.") for name, kind in fields.items()}
    if any(value == "" for value in reference.values()) or not 0 < reference.get("port", 1) < 65536:
        raise CorruptConfig(f"volume config is damaged: an empty or out-of-range {algorithm} reference")
    iv, sealed = _unb64(kdf_doc, "iv", "kdf."), _unb64(kdf_doc, "sealed_key", "kdf.")
    if len(iv) != iv_bytes or len(sealed) != sealed_bytes:
        raise CorruptConfig("volume config is damaged: 'kdf.iv' or 'kdf.sealed_key' has a wrong length")
    return ServiceKey(reference=reference, iv=iv, sealed=sealed)
