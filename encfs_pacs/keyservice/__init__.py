"""Keys from a central key service: a PKCS#11 HSM or a KMIP server (docs/key-services.md).

A key-service volume's master key is wrapped (AES-256-GCM, exactly as for a keyfile) by a
random 32-byte wrapping key, and that wrapping key is sealed by a key that never leaves the
service: the HSM's or KMIP server's own Encrypt/Decrypt. The volume config records where that
key is (``reference``: no secret); the PIN or client certificate stays on each host and is
named by the ``--kms`` URI (or the mount config's ``kms`` key):

    pkcs11:token=TOKEN;object=KEY-LABEL?module-path=/usr/lib/VENDOR/libpkcs11.so&pin-source=file:/etc/encfs-pacs/hsm.pin
    kmip://HOST:5696/KEY-UID?ca=/etc/encfs-pacs/kmip-ca.pem&cert=/etc/encfs-pacs/kmip.crt&key=/etc/encfs-pacs/kmip.key

The PKCS#11 form is RFC 7512's (token, object, module-path, pin-source). At mount, the parts
the volume config already records may be left out (``pkcs11:?pin-source=file:/etc/...``);
a location given (module path, host, port) overrides the recorded one, and a key name given
must be the recorded one. Secrets never come from the URI itself: ``pin-value`` is refused.

This module only parses and opens; the services' protocols live in ``pkcs11`` and ``kmip``
(imported when used, so a host without python-pkcs11 or PyKMIP still runs everything else).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from ..crypto.volume_config import KDF_KMIP, KDF_PKCS11, SERVICE_REFERENCE, VolumeConfig
from ..errors import KeySourceError, UsageError

if TYPE_CHECKING:  # the store is not needed to parse a URI (config validation uses this module)
    from ..store import KeyService

DEFAULT_KMIP_PORT = 5696
SERVICE_KINDS = (KDF_PKCS11, KDF_KMIP)
# Reference fields naming the key itself: a mount may not point them elsewhere. The others
# (module path, host, port) say where the service is reached from this host.
IDENTITY_FIELDS = {KDF_PKCS11: ("token", "key_label"), KDF_KMIP: ("key_uid",)}
URI_FORMS = ("pkcs11:token=TOKEN;object=KEY-LABEL?module-path=/path/to/vendor-pkcs11.so"
             "&pin-source=file:/path/to/pin  or  kmip://HOST:PORT/KEY-UID?ca=CA.pem&cert=CLIENT.crt"
             "&key=CLIENT.key")


@dataclass(frozen=True)
class ServiceSpec:
    """A parsed ``--kms`` URI: reference fields given (maybe only some) and credential paths."""

    kind: str
    reference: dict[str, str | int] = field(default_factory=dict)
    credentials: dict[str, Path] = field(default_factory=dict)  # pin | ca, cert, key


def _bad(uri: str, problem: str) -> UsageError:
    # The URI holds no secret (pin-value is refused), so it may be repeated in the message.
    return UsageError(f"--kms {uri!r}: {problem}; expected {URI_FORMS}")


def _path(uri: str, name: str, value: str) -> Path:
    if value.startswith("file:"):
        value = value.removeprefix("file:").removeprefix("//")
    if not value.startswith("/"):
        raise _bad(uri, f"{name} must be an absolute path (or file:/absolute/path)")
    return Path(value)


def _parse_pkcs11(uri: str) -> ServiceSpec:
    body = uri.removeprefix("pkcs11:")
    path_part, _, query = body.partition("?")
    names = {"token": "token", "object": "key_label"}
    reference: dict[str, str | int] = {}
    for attribute in filter(None, path_part.split(";")):
        name, sep, value = attribute.partition("=")
        if name == "type" and unquote(value) == "secret-key":
            continue
        if not sep or name not in names or not value:
            raise _bad(uri, f"unsupported path attribute {name!r} (give token= and object=)")
        reference[names[name]] = unquote(value)
    credentials: dict[str, Path] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "module-path":
            reference["module"] = str(_path(uri, name, value))
        elif name == "pin-source":
            credentials["pin"] = _path(uri, name, value)
        elif name == "pin-value":
            raise _bad(uri, "pin-value would put the PIN on the command line; use pin-source=file:/path")
        else:
            raise _bad(uri, f"unsupported query attribute {name!r} (module-path, pin-source)")
    return ServiceSpec(KDF_PKCS11, reference, credentials)


def _parse_kmip(uri: str, normalised: str) -> ServiceSpec:
    try:
        parts = urlsplit(normalised)
        port = parts.port
    except ValueError as exc:
        raise _bad(uri, str(exc)) from None
    reference: dict[str, str | int] = {}
    if parts.hostname:
        reference["host"] = parts.hostname
        reference["port"] = port or DEFAULT_KMIP_PORT
    elif port:
        raise _bad(uri, "a port without a host")
    uid = unquote(parts.path.lstrip("/"))
    if uid:
        reference["key_uid"] = uid
    credentials: dict[str, Path] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in ("ca", "cert", "key"):
            raise _bad(uri, f"unsupported query attribute {name!r} (ca, cert, key)")
        credentials[name] = _path(uri, name, value)
    return ServiceSpec(KDF_KMIP, reference, credentials)


def parse_uri(uri: str) -> ServiceSpec:
    """A ``--kms`` URI, or UsageError naming what is wrong with it."""
    if uri.startswith("pkcs11:"):
        return _parse_pkcs11(uri)
    if uri.startswith("kmip:"):  # "kmip:?ca=..." (mount: location and key from the volume) too
        return _parse_kmip(uri, "kmip://" + uri.removeprefix("kmip:").removeprefix("//"))
    raise _bad(uri, "not a pkcs11: or kmip:// URI")


def resolve(spec: ServiceSpec, config: VolumeConfig | None) -> dict[str, str | int]:
    """The full reference to use: at init the URI's (all of it needed); at mount the volume's,
    with the URI's location overriding and its key name checked against the volume's."""
    if config is None:
        missing = [name for name in SERVICE_REFERENCE[spec.kind] if name not in spec.reference]
        if missing:
            raise UsageError(f"--kms: a new volume needs the key service's {', '.join(missing)} "
                             f"in the URI; expected {URI_FORMS}")
        return dict(spec.reference)
    if config.service is None or config.kdf != spec.kind:
        has = {"scrypt": "passphrase", "keyfile": "keyfile"}.get(config.kdf, f"{config.kdf} key service")
        raise UsageError(f"--kms names a {spec.kind} key service, but this volume is unlocked with a {has}")
    recorded = dict(config.service.reference)
    for name in IDENTITY_FIELDS[spec.kind]:
        if name in spec.reference and spec.reference[name] != recorded[name]:
            raise UsageError(f"--kms names {name} {spec.reference[name]!r}, but this volume's key is "
                             f"{name} {recorded[name]!r} (leave it out of the URI to use the recorded one)")
    return {**recorded, **spec.reference}


def read_pin(path: Path) -> bytes:
    """The PIN: the file's first line (a systemd credential file works as well)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeySourceError(f"PIN file {path} does not exist") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise KeySourceError(f"cannot read PIN file {path}: {exc.strerror}") from None
    pin = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if not pin:
        raise KeySourceError(f"PIN file {path} is empty (the first line is used)")
    return pin


def check_readable(path: Path, what: str) -> str:
    if not path.is_file():
        raise KeySourceError(f"{what} {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise KeySourceError(f"cannot read {what} {path}: permission denied")
    return str(path)


def open_service(spec: ServiceSpec, config: VolumeConfig | None = None) -> KeyService:
    """A client for the service the URI (and, at mount, the volume config) names. Nothing is
    contacted yet: the first seal/unseal connects, so errors surface where the key is used."""
    reference = resolve(spec, config)
    if spec.kind == KDF_PKCS11:
        from .pkcs11 import Pkcs11Service

        if "pin" not in spec.credentials:
            raise KeySourceError("--kms pkcs11: give the token's user PIN as pin-source=file:/path/to/pin "
                                 "(a file only root can read, or a systemd credential's path)")
        return Pkcs11Service(str(reference["module"]), str(reference["token"]), str(reference["key_label"]),
                             read_pin(spec.credentials["pin"]))
    from .kmip import KmipService

    missing = [name for name in ("ca", "cert", "key") if name not in spec.credentials]
    if missing:
        raise KeySourceError(f"--kms kmip: give {', '.join(f'{m}=/path' for m in missing)} in the URI "
                             "(the CA of the KMIP server, this host's client certificate and its key)")
    paths = {name: check_readable(spec.credentials[name], f"KMIP {name} file")
             for name in ("ca", "cert", "key")}
    return KmipService(str(reference["host"]), int(reference["port"]), str(reference["key_uid"]), **paths)
