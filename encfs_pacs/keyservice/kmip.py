"""A wrapping key sealed by a symmetric key on a KMIP server (PyKMIP's server in the tests).

The server does the work (KMIP Encrypt/Decrypt on the key's unique identifier); the key is
never fetched (no Get), so it can stay non-exportable on the server. The mechanism is AES-CBC
with PKCS#5 padding and a fresh 16-byte IV: PyKMIP's client cannot send GCM's associated data
or tag, and CBC is what every KMIP server offers. The result needs no authentication of its
own: the wrapping key it yields must open the master key's AES-GCM wrap, so a tampered or
foreign ciphertext fails there. A revoked, deactivated or destroyed key is refused by the
server itself (KMIP allows Encrypt/Decrypt on Active keys only).

TLS with a client certificate (mutual TLS), as KMIP requires; the server is checked against
the given CA *and* must name the host in its certificate (PyKMIP's client checks only the CA:
any certificate of that CA, such as another host's client certificate, would pass, and at
init an impostor could then learn the wrapping key). Connection timeout: 10 s, so an
unreachable server fails the mount promptly.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import ssl
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cryptography import x509

from ..crypto.volume_config import KDF_KMIP
from ..errors import KeyServiceError, KeyServiceUnreachable

IV_BYTES = 16
TIMEOUT_SECONDS = 10


class KmipService:
    """store.KeyService for one symmetric key (by unique identifier) on one KMIP server."""

    kind = KDF_KMIP

    def __init__(self, host: str, port: int, key_uid: str, ca: str, cert: str, key: str) -> None:
        self.reference: dict[str, str | int] = {"host": host, "port": port, "key_uid": key_uid}
        self._host, self._port, self._uid = host, port, key_uid
        self._tls = {"ca": ca, "cert": cert, "key": key}

    def __repr__(self) -> str:
        return f"KmipService(host={self._host!r}, port={self._port}, key_uid={self._uid!r})"

    def __str__(self) -> str:
        return f"the key {self._uid!r} on KMIP server {self._host}:{self._port}"

    def seal(self, plaintext: bytes, associated_data: bytes) -> tuple[bytes, bytes]:
        iv = secrets.token_bytes(IV_BYTES)
        with self._client("seal the volume's wrapping key") as (client, params):
            sealed, _ = client.encrypt(plaintext, uid=self._uid, cryptographic_parameters=params,
                                       iv_counter_nonce=iv)
        return iv, bytes(sealed)

    def unseal(self, iv: bytes, sealed: bytes, associated_data: bytes) -> bytes:
        with self._client("unseal the volume's wrapping key") as (client, params):
            return bytes(client.decrypt(sealed, uid=self._uid, cryptographic_parameters=params,
                                        iv_counter_nonce=iv))

    @contextmanager
    def _client(self, purpose: str) -> Iterator[tuple[Any, dict[str, Any]]]:
        try:
            with warnings.catch_warnings():  # PyKMIP imports ciphers that cryptography deprecates
                warnings.simplefilter("ignore")
                from kmip.core import enums
                from kmip.pie.client import ProxyKmipClient
                from kmip.pie.exceptions import KmipOperationFailure
        except ImportError:
            raise KeyServiceUnreachable(
                "KMIP support is not installed: pip install pykmip (see docs/key-services.md)") from None
        _quiet_pykmip()
        where = f"KMIP server {self._host}:{self._port}"
        # config_file=/dev/null: a host's /etc/pykmip/pykmip.conf must not change what we connect to.
        client = ProxyKmipClient(hostname=self._host, port=self._port, config_file="/dev/null",
                                 kmip_version=enums.KMIPVersion.KMIP_1_2, **self._tls)
        client.proxy.timeout = TIMEOUT_SECONDS
        params = {"cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
                  "block_cipher_mode": enums.BlockCipherMode.CBC,
                  "padding_method": enums.PaddingMethod.PKCS5}
        _open(client, where)
        try:
            _check_server_name(client.proxy.socket.getpeercert(binary_form=True), self._host, where)
            yield client, params
        except KmipOperationFailure as exc:
            raise _refusal(exc, enums, where, self._uid, purpose) from None
        except ssl.SSLError as exc:
            raise KeyServiceError(f"TLS with {where} failed while asked to {purpose} ({exc.reason}): "
                                  "the server refused this host's client certificate?") from None
        except OSError as exc:
            raise KeyServiceUnreachable(f"{where} went away while asked to {purpose}: {exc}") from None
        finally:
            with contextlib.suppress(Exception):  # a dead connection cannot be closed cleanly
                client.close()


def _open(client: Any, where: str) -> None:
    try:
        client.open()
    except ssl.SSLCertVerificationError as exc:
        raise KeyServiceError(f"{where} presented a certificate the given CA does not vouch for "
                              f"({exc.verify_message}): check ca= in --kms") from None
    except ssl.SSLError as exc:
        raise KeyServiceError(f"TLS with {where} failed ({exc.reason}): check the client certificate "
                              "and key (cert=, key=) and that the server trusts their CA") from None
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise KeyServiceUnreachable(f"cannot reach {where}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - PyKMIP wraps connect failures in its own types
        raise KeyServiceUnreachable(f"cannot reach {where}: {exc}") from None


def _names_host(certificate: x509.Certificate, host: str) -> bool:
    """RFC 6125 in short: the subjectAltName's IP addresses or DNS names (one leading "*."
    label allowed); the common name is not used, as browsers and Python no longer do."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in names.get_values_for_type(x509.IPAddress)
    except ValueError:
        pass  # a host name, not an address
    host = host.lower().rstrip(".")
    for name in names.get_values_for_type(x509.DNSName):
        name = name.lower().rstrip(".")
        if name == host or (name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]):
            return True
    return False


def _check_server_name(der: bytes | None, host: str, where: str) -> None:
    if der is None or not _names_host(x509.load_der_x509_certificate(der), host):
        raise KeyServiceError(f"{where} presented a certificate of the right CA that does not name "
                              f"{host!r} (subjectAltName): connect by a name or address it carries")


def _refusal(exc: Any, enums: Any, where: str, uid: str, purpose: str) -> KeyServiceError:
    reason = getattr(exc, "reason", None)
    if reason == enums.ResultReason.ITEM_NOT_FOUND:
        return KeyServiceError(f"{where} has no key {uid!r}: it was destroyed or never created (the "
                               "volume cannot be opened without it or a recovery key)")
    if reason == enums.ResultReason.PERMISSION_DENIED:
        return KeyServiceError(f"{where} refused to {purpose} with key {uid!r}: {exc.message} (a revoked, "
                               "deactivated or not yet activated key, or one this client may not use)")
    return KeyServiceError(f"{where} refused to {purpose} with key {uid!r}: {getattr(exc, 'message', exc)}")


def _quiet_pykmip() -> None:
    """PyKMIP logs connection failures itself (to stderr, without a handler): we report them
    as one clear error instead."""
    logger = logging.getLogger("kmip")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    logger.propagate = False
