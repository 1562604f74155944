"""Software stand-ins for a key service, computing exactly what the real one computes.

They freeze the documented key-service wrap (docs/file-format.md, "Key services"): a PKCS#11
token's CKM_AES_GCM (12-byte IV, associated data, 16-byte tag appended) and a KMIP server's
AES-CBC with PKCS#5 padding. The volume fixtures made with them are opened by the same code
path a real HSM or KMIP server goes through (store.KeyService); the integration tests run the
real services (SoftHSM2, PyKMIP's server)."""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from encfs_pacs.crypto.volume_config import KDF_KMIP, KDF_PKCS11


class SoftPkcs11:
    kind = KDF_PKCS11

    def __init__(self, hsm_key: bytes, module: str = "/usr/lib/softhsm/libsofthsm2.so",
                 token: str = "pacs", key_label: str = "pacs-volume") -> None:
        self.hsm_key = hsm_key
        self.reference: dict[str, str | int] = {"module": module, "token": token, "key_label": key_label}
        self.calls = 0

    def seal(self, plaintext: bytes, associated_data: bytes) -> tuple[bytes, bytes]:
        self.calls += 1
        iv = secrets.token_bytes(12)
        return iv, AESGCM(self.hsm_key).encrypt(iv, plaintext, associated_data)

    def unseal(self, iv: bytes, sealed: bytes, associated_data: bytes) -> bytes:
        self.calls += 1
        return AESGCM(self.hsm_key).decrypt(iv, sealed, associated_data)


class SoftKmip:
    kind = KDF_KMIP

    def __init__(self, server_key: bytes, host: str = "kms.example.org", port: int = 5696,
                 key_uid: str = "42") -> None:
        self.server_key = server_key
        self.reference: dict[str, str | int] = {"host": host, "port": port, "key_uid": key_uid}

    def seal(self, plaintext: bytes, associated_data: bytes) -> tuple[bytes, bytes]:
        iv = secrets.token_bytes(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plaintext) + padder.finalize()
        encryptor = Cipher(algorithms.AES(self.server_key), modes.CBC(iv)).encryptor()
        return iv, encryptor.update(padded) + encryptor.finalize()

    def unseal(self, iv: bytes, sealed: bytes, associated_data: bytes) -> bytes:
        decryptor = Cipher(algorithms.AES(self.server_key), modes.CBC(iv)).decryptor()
        padded = decryptor.update(sealed) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
