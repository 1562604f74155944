"""Key-service volumes without the services: the config form (frozen by fixtures), the --kms
URI, and how the store uses a KeyService. The real HSM and KMIP server are in
tests/integration/test_kms_pkcs11.py and test_kms_kmip.py."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from encfs_pacs import config as config_schema
from encfs_pacs import keyservice, store
from encfs_pacs.crypto import volume_config
from encfs_pacs.errors import (
    ConfigInvalid,
    CorruptConfig,
    KeyServiceError,
    KeySourceError,
    UnsupportedFormat,
    UsageError,
)
from encfs_pacs.keyservice import kmip as kmip_client

from .softkms import SoftKmip, SoftPkcs11
from .test_fixture_volumes import FIXTURES, MANIFEST, _walk

# The stand-in services' keys the fixtures were made with (tests/fixtures/make_kms_fixtures.py).
PKCS11_KEY = bytes.fromhex("6b6d732066697874757265202d20706b637331312068736d206b6579202d2031")
KMIP_KEY = bytes.fromhex("6b6d732066697874757265202d206b6d697020736572766572206b6579202d32")
SERVICES = {"pkcs11": lambda: SoftPkcs11(PKCS11_KEY), "kmip": lambda: SoftKmip(KMIP_KEY)}


def _fixture_copy(tmp_path: Path, kind: str) -> Path:
    copy = tmp_path / "volume"
    shutil.copytree(FIXTURES / "volume-v1-keyfile", copy, symlinks=True)
    shutil.copyfile(FIXTURES / f"volume-v1-keyfile.{kind}.json", store.config_path(copy))
    return copy


# ---------------------------------------------------------------------------- frozen form


@pytest.mark.parametrize("kind", sorted(SERVICES))
def test_fixture_opens_and_reads_every_file(tmp_path: Path, kind: str) -> None:
    copy = _fixture_copy(tmp_path, kind)
    volume = store.unlock(copy, store.Secret.from_service(SERVICES[kind]()))
    assert volume.config.kdf == kind
    assert _walk(volume) == MANIFEST


@pytest.mark.parametrize("kind", sorted(SERVICES))
def test_fixture_fields_are_as_documented(kind: str) -> None:
    doc = json.loads((FIXTURES / f"volume-v1-keyfile.{kind}.json").read_text())
    expected = {"pkcs11": {"algorithm", "module", "token", "key_label", "mechanism", "iv", "sealed_key"},
                "kmip": {"algorithm", "host", "port", "key_uid", "mechanism", "iv", "sealed_key"}}[kind]
    assert set(doc["kdf"]) == expected
    raw = (FIXTURES / f"volume-v1-keyfile.{kind}.json").read_bytes()
    assert volume_config.parse(raw).to_json() == raw  # parse and write agree byte for byte


def test_cbc_garbage_is_reported_as_the_service_key_not_a_passphrase(tmp_path: Path) -> None:
    copy = _fixture_copy(tmp_path, "kmip")
    config = store.read_config(copy)
    assert config.service is not None

    class WrongServer(SoftKmip):
        def unseal(self, iv: bytes, sealed: bytes, associated_data: bytes) -> bytes:
            return bytes(32)  # what a server with another key under that UID would give back

    with pytest.raises(KeyServiceError, match="does not open this volume"):
        store.unlock(copy, store.Secret.from_service(WrongServer(KMIP_KEY)))


def test_a_key_service_volume_refuses_a_passphrase_and_says_what_opens_it(tmp_path: Path) -> None:
    copy = _fixture_copy(tmp_path, "pkcs11")
    with pytest.raises(UsageError, match="pkcs11 key service"):
        store.unlock(copy, store.Secret("passphrase", b"x"))
    with pytest.raises(UsageError, match="pkcs11 key service"):
        store.unlock(copy, store.Secret.from_service(SoftKmip(KMIP_KEY)))


def test_a_keyfile_volume_refuses_a_key_service(tmp_path: Path) -> None:
    copy = tmp_path / "volume"
    shutil.copytree(FIXTURES / "volume-v1-keyfile", copy, symlinks=True)
    with pytest.raises(UsageError, match="--keyfile"):
        store.unlock(copy, store.Secret.from_service(SoftPkcs11(PKCS11_KEY)))


def test_create_rewrap_and_back(tmp_path: Path) -> None:
    """init with a service, passwd to a keyfile and back: the key ID and data stay."""
    hsm = SoftPkcs11(bytes(range(32)))
    backing = tmp_path / "backing"
    made = store.create_volume(backing, store.Secret.from_service(hsm))
    assert made.kdf == "pkcs11" and made.service is not None
    assert made.service.reference == hsm.reference
    config, master = store.read_master_key(backing, store.Secret.from_service(hsm))
    keyfile = store.Secret("keyfile", bytes(32))
    assert store.rewrap_master_key(backing, master, keyfile).service is None
    store.unlock(backing, keyfile)
    back = store.rewrap_master_key(backing, master, store.Secret.from_service(hsm))
    assert back.key_id == config.key_id and back.service is not None
    assert back.service.iv != made.service.iv  # a fresh IV and wrapping key on every wrap


def test_a_failing_service_creates_nothing(tmp_path: Path) -> None:
    class Down(SoftPkcs11):
        def seal(self, plaintext: bytes, associated_data: bytes) -> tuple[bytes, bytes]:
            raise KeyServiceError("down")

    backing = tmp_path / "backing"
    with pytest.raises(KeyServiceError):
        store.create_volume(backing, store.Secret.from_service(Down(bytes(32))))
    assert not backing.exists()


# ---------------------------------------------------------------------------- strict parsing


def _edited(kind: str, **changes: Any) -> bytes:
    doc = json.loads((FIXTURES / f"volume-v1-keyfile.{kind}.json").read_text())
    for key, value in changes.items():
        if value is None:
            del doc["kdf"][key]
        else:
            doc["kdf"][key] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("kind", "changes", "error"), [
    ("pkcs11", {"pin": "1234"}, UnsupportedFormat),  # an unknown field may change meaning
    ("pkcs11", {"mechanism": "CKM_AES_KEY_WRAP_PAD"}, UnsupportedFormat),
    ("kmip", {"mechanism": "AES-GCM"}, UnsupportedFormat),
    ("pkcs11", {"token": None}, CorruptConfig),
    ("pkcs11", {"key_label": ""}, CorruptConfig),
    ("kmip", {"port": 0}, CorruptConfig),
    ("kmip", {"port": "5696"}, CorruptConfig),
    ("kmip", {"key_uid": 42}, CorruptConfig),
    ("pkcs11", {"iv": base64.b64encode(bytes(16)).decode()}, CorruptConfig),
    ("kmip", {"sealed_key": base64.b64encode(bytes(32)).decode()}, CorruptConfig),
    ("kmip", {"iv": "not base64!"}, CorruptConfig),
])
def test_damaged_or_foreign_service_entries_are_refused(kind: str, changes: dict[str, Any],
                                                        error: type[Exception]) -> None:
    with pytest.raises(error):
        volume_config.parse(_edited(kind, **changes))


# ---------------------------------------------------------------------------- --kms URIs

HSM_URI = ("pkcs11:token=pacs;object=pacs%20volume?module-path=/usr/lib/softhsm/libsofthsm2.so"
           "&pin-source=file:/etc/encfs-pacs/hsm.pin")


def test_pkcs11_uri_rfc7512() -> None:
    spec = keyservice.parse_uri(HSM_URI)
    assert spec.kind == "pkcs11"
    assert spec.reference == {"token": "pacs", "key_label": "pacs volume",
                              "module": "/usr/lib/softhsm/libsofthsm2.so"}
    assert spec.credentials == {"pin": Path("/etc/encfs-pacs/hsm.pin")}


def test_kmip_uri() -> None:
    spec = keyservice.parse_uri("kmip://kms.hospital.example:15696/4f1c-77?ca=/etc/ca.pem"
                                "&cert=/etc/c.crt&key=/etc/c.key")
    assert spec.reference == {"host": "kms.hospital.example", "port": 15696, "key_uid": "4f1c-77"}
    assert set(spec.credentials) == {"ca", "cert", "key"}
    assert keyservice.parse_uri("kmip://kms/1").reference["port"] == 5696
    assert keyservice.parse_uri("kmip:?ca=/a&cert=/b&key=/c").reference == {}


@pytest.mark.parametrize(("uri", "words"), [
    ("pkcs11:token=t;object=k?pin-value=1234", "pin-value"),  # never a PIN on the command line
    ("pkcs11:token=t;object=k?pin-source=hsm.pin", "absolute"),
    ("pkcs11:slot-id=3", "slot-id"),
    ("pkcs11:token=t?module-name=softhsm2", "module-name"),
    ("kmip://kms/1?password=x", "password"),
    ("kmip://kms:99999/1", "out of range"),
    ("vault://kms/1", "not a pkcs11"),
])
def test_bad_uris_are_usage_errors(uri: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        keyservice.parse_uri(uri)


def test_init_needs_the_whole_reference() -> None:
    with pytest.raises(UsageError, match="module"):
        keyservice.resolve(keyservice.parse_uri("pkcs11:token=t;object=k"), None)


def test_mount_fills_in_the_recorded_key_and_refuses_another(tmp_path: Path) -> None:
    config = store.read_config(_fixture_copy(tmp_path, "pkcs11"))
    assert keyservice.resolve(keyservice.parse_uri("pkcs11:?pin-source=/p"), config) == {
        "module": "/usr/lib/softhsm/libsofthsm2.so", "token": "pacs", "key_label": "pacs-volume"}
    moved = keyservice.resolve(keyservice.parse_uri("pkcs11:?module-path=/opt/hsm/lib.so"), config)
    assert moved["module"] == "/opt/hsm/lib.so"  # this host's module path wins
    with pytest.raises(UsageError, match="pacs-volume"):
        keyservice.resolve(keyservice.parse_uri("pkcs11:object=other"), config)
    with pytest.raises(UsageError, match="pkcs11"):
        keyservice.resolve(keyservice.parse_uri("kmip://kms/1"), config)


def test_credentials_are_read_from_files(tmp_path: Path) -> None:
    config = store.read_config(_fixture_copy(tmp_path, "pkcs11"))
    with pytest.raises(KeySourceError, match="pin-source"):
        keyservice.open_service(keyservice.parse_uri("pkcs11:"), config)
    with pytest.raises(KeySourceError, match="does not exist"):
        keyservice.open_service(keyservice.parse_uri(f"pkcs11:?pin-source={tmp_path}/none"), config)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(KeySourceError, match="empty"):
        keyservice.open_service(keyservice.parse_uri(f"pkcs11:?pin-source={tmp_path}/empty"), config)
    kmip = store.read_config(_fixture_copy(tmp_path / "k", "kmip"))
    with pytest.raises(KeySourceError, match="cert=/path, key=/path"):
        keyservice.open_service(keyservice.parse_uri("kmip:?ca=/etc/hostname"), kmip)


# ---------------------------------------------------------------------------- the config key


def test_config_file_kms_key(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('backing = "/b"\nmountpoint = "/m"\nkms = "pkcs11:?pin-source=file:/etc/hsm.pin"\n')
    loaded = config_schema.load(path)
    assert loaded.key_source() == ("kms", "pkcs11:?pin-source=file:/etc/hsm.pin")
    path.write_text('backing = "/b"\nmountpoint = "/m"\nkms = "pkcs11:?pin-value=1234"\n')
    with pytest.raises(ConfigInvalid, match="pin-value"):
        config_schema.load(path)
    path.write_text('backing = "/b"\nmountpoint = "/m"\nkms = "kmip://k/1"\nkeyfile = "/k"\n')
    with pytest.raises(ConfigInvalid, match="at most one"):
        config_schema.load(path)


# ---------------------------------------------------------------------------- KMIP server names


def _certificate(*names: x509.GeneralName) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms.hospital.example")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(key.public_key()).serial_number(1).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=1)))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(("names", "host", "expected"), [
    ((x509.DNSName("kms.hospital.example"),), "kms.hospital.example", True),
    ((x509.DNSName("KMS.hospital.example."),), "kms.hospital.example", True),
    ((x509.DNSName("*.hospital.example"),), "kms.hospital.example", True),
    ((x509.DNSName("*.hospital.example"),), "a.kms.hospital.example", False),  # one label only
    ((x509.DNSName("*.hospital.example"),), "hospital.example", False),
    ((x509.DNSName("other.hospital.example"),), "kms.hospital.example", False),
    ((x509.IPAddress(ipaddress.ip_address("10.0.0.5")),), "10.0.0.5", True),
    ((x509.DNSName("10.0.0.5"),), "10.0.0.5", False),  # an address must be an iPAddress entry
    ((x509.IPAddress(ipaddress.ip_address("10.0.0.5")),), "10.0.0.6", False),
    ((), "kms.hospital.example", False),  # the common name alone does not count
])
def test_kmip_server_certificate_must_name_the_host(names: tuple[x509.GeneralName, ...], host: str,
                                                    expected: bool) -> None:
    assert kmip_client._names_host(_certificate(*names), host) is expected
