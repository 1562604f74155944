"""Master key, key wrapping and key derivation.

The master key is 256 random bits and never leaves memory unwrapped. On disk it is
sealed with AES-256-GCM under a *wrapping key*, which comes either from a passphrase
through scrypt, or directly from a 32-byte keyfile. Changing the passphrase therefore
only rewraps 32 bytes; no image is re-encrypted. Everything else (content keys, the
key ID) is derived from the master key by HKDF with distinct labels, so no key is
ever used for two purposes.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import KeySourceError, WrongPassphrase

MASTER_KEY_BYTES = 32
KEY_ID_BYTES = 16
WRAP_NONCE_BYTES = 12
SALT_BYTES = 32

# scrypt N=2^17, r=8, p=1: ~0.3 s and 128 MiB per unlock on a 2-core server. Higher than
# gocryptfs' 2^16 because a volume is unlocked once per mount, and the passphrase is often
# chosen by a busy admin. Stored in the config, so it can change without breaking old volumes.
DEFAULT_SCRYPT_LOG_N = 17
MIN_SCRYPT_LOG_N = 10  # only tests and the throw-away demo go below the default


@dataclass(frozen=True)
class ScryptParams:
    salt: bytes
    log_n: int = DEFAULT_SCRYPT_LOG_N
    r: int = 8
    p: int = 1

    @classmethod
    def fresh(cls, log_n: int = DEFAULT_SCRYPT_LOG_N) -> ScryptParams:
        return cls(salt=secrets.token_bytes(SALT_BYTES), log_n=log_n)


def new_master_key() -> bytes:
    return secrets.token_bytes(MASTER_KEY_BYTES)


def new_wrapping_key() -> bytes:
    """A random wrapping key, for a key service to seal (it is the keyfile of such a volume)."""
    return secrets.token_bytes(32)


def wrapping_key_from_passphrase(passphrase: bytes, params: ScryptParams) -> bytes:
    if not passphrase:
        raise KeySourceError("the passphrase is empty: choose a non-empty passphrase")
    kdf = Scrypt(salt=params.salt, length=32, n=2**params.log_n, r=params.r, p=params.p)
    return kdf.derive(passphrase)


def wrapping_key_from_keyfile(content: bytes) -> bytes:
    if len(content) != 32:
        raise KeySourceError(
            f"a keyfile must hold exactly 32 bytes (it holds {len(content)}); "
            "create one with: head -c 32 /dev/urandom > FILE && chmod 600 FILE"
        )
    return content


def _hkdf(master_key: bytes, label: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(master_key)


def key_id(master_key: bytes) -> bytes:
    """Public identifier of a master key: names the volume's key in configs and chunk AAD."""
    return _hkdf(master_key, b"encfs-pacs v1 key id", KEY_ID_BYTES)


def content_key(master_key: bytes) -> bytes:
    """Root of all file-content keys (each file's key is derived from it and the file ID)."""
    return _hkdf(master_key, b"encfs-pacs v1 file content")


def audit_key_store_key(master_key: bytes) -> bytes:
    """Seals the audit trail's current Ed25519 epoch key at rest (``.encfs-pacs/audit-key.json``).
    Its own label, so the audit key store can never decrypt or be decrypted as image content."""
    return _hkdf(master_key, b"encfs-pacs v1 audit key store")


def audit_spool_key(master_key: bytes) -> bytes:
    """HMAC key of the audit spool (``.encfs-pacs/audit-spool/``): maintenance commands, which
    hold the master key, authenticate the events they queue for the mount's audit trail, so a
    process that can write the folder but lacks the key cannot pass off an event as theirs."""
    return _hkdf(master_key, b"encfs-pacs v1 audit spool mac")


def file_key(content_root: bytes, file_id: bytes) -> bytes:
    """Per-file AES key. Random 96-bit nonces under one key are safe for about 2^32 chunks;
    a key per file keeps that bound per file instead of per archive (a PACS writes far
    more than 2^32 chunks over its life)."""
    return _hkdf(content_root, b"encfs-pacs v1 file key " + file_id)


def wrap_master_key(master_key: bytes, wrapping_key: bytes, associated_data: bytes) -> tuple[bytes, bytes]:
    nonce = secrets.token_bytes(WRAP_NONCE_BYTES)
    return nonce, AESGCM(wrapping_key).encrypt(nonce, master_key, associated_data)


def unwrap_master_key(
    nonce: bytes, sealed: bytes, wrapping_key: bytes, associated_data: bytes, expected_key_id: bytes
) -> bytes:
    try:
        master_key = AESGCM(wrapping_key).decrypt(nonce, sealed, associated_data)
    except InvalidTag:
        raise WrongPassphrase(
            "cannot unlock the volume: wrong passphrase or keyfile (or its config file was altered)"
        ) from None
    # Constant-time: the key ID is public, but comparing key material byte by byte is a habit
    # that leaks elsewhere, so every secret-derived comparison goes through compare_digest.
    if not hmac.compare_digest(key_id(master_key), expected_key_id):
        raise WrongPassphrase("cannot unlock the volume: the unwrapped key does not match its key ID")
    return master_key
