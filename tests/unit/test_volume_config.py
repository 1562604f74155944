"""The volume config document and the volume lifecycle (create, read, unlock).

Parsing is strict: a newer format is UnsupportedFormat (upgrade), a damaged document is
CorruptConfig, and the fields that decide how data is read (version, features, chunk size,
key ID) are bound to the wrapped master key, so editing them fails the unlock.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encfs_pacs import errors, store
from encfs_pacs.crypto import keys, volume_config
from encfs_pacs.crypto.chunks import Layout
from encfs_pacs.crypto.keys import ScryptParams
from encfs_pacs.crypto.volume_config import (
    ALLOWED_CHUNK_SIZES,
    FEATURE_CHUNKS,
    FEATURE_PLAINTEXT_NAMES,
    VolumeConfig,
    parse,
)
from encfs_pacs.errors import (
    BackingMissing,
    BackingNotEmpty,
    CorruptConfig,
    KeySourceError,
    NotAVolume,
    UnsupportedFormat,
    UsageError,
    WrongPassphrase,
)

PASS = store.Secret("passphrase", b"correct horse battery staple")

# ----------------------------------------------------------------------------- round trips


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _doc(**changes: Any) -> dict[str, Any]:
    """A valid scrypt config document; ``changes`` are dotted paths -> new value (or DELETE)."""
    doc: dict[str, Any] = {
        "format": "encfs-pacs volume",
        "version": 1,
        "features": ["aes256gcm-chunks", "plaintext-names"],
        "chunk_size": 65536,
        "key_id": "00112233445566778899aabbccddeeff",
        "kdf": {"algorithm": "scrypt", "log_n": 17, "r": 8, "p": 1, "salt": _b64(bytes(32))},
        "wrapped_master_key": {"nonce": _b64(bytes(12)), "ciphertext": _b64(bytes(48))},
        "created": "2024-06-01T12:00:00Z",
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        target = doc
        for name in parents:
            target = target[name]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return doc


DELETE = object()


def _raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_valid_document_parses() -> None:
    config = parse(_raw(_doc()))
    assert config.version == 1
    assert config.features == (FEATURE_CHUNKS, FEATURE_PLAINTEXT_NAMES)
    assert config.chunk_size == 65536
    assert config.key_id == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert config.kdf == "scrypt"
    assert config.scrypt == ScryptParams(salt=bytes(32), log_n=17, r=8, p=1)
    assert (config.wrap_nonce, config.wrapped_key) == (bytes(12), bytes(48))
    assert config.extra == {"created": "2024-06-01T12:00:00Z"}


def test_keyfile_document_has_no_scrypt_parameters() -> None:
    doc = _doc(kdf={"algorithm": "keyfile"})
    config = parse(_raw(doc))
    assert config.kdf == "keyfile" and config.scrypt is None
    assert json.loads(config.to_json())["kdf"] == {"algorithm": "keyfile"}


@settings(max_examples=100)
@given(
    key_id=st.binary(min_size=16, max_size=16),
    salt=st.binary(min_size=1, max_size=64),
    log_n=st.integers(10, 24),
    r=st.integers(1, 64),
    p=st.integers(1, 16),
    nonce=st.binary(min_size=12, max_size=12),
    wrapped=st.binary(min_size=48, max_size=48),
    chunk_size=st.sampled_from(sorted(ALLOWED_CHUNK_SIZES)),
    names=st.booleans(),
    keyfile=st.booleans(),
    extra=st.dictionaries(st.text(min_size=1).map(lambda s: "x-" + s), st.text() | st.integers(), max_size=3),
)
def test_serialise_parse_round_trip(
    key_id: bytes, salt: bytes, log_n: int, r: int, p: int, nonce: bytes, wrapped: bytes,
    chunk_size: int, names: bool, keyfile: bool, extra: dict[str, Any],
) -> None:
    config = VolumeConfig(
        key_id=key_id,
        kdf="keyfile" if keyfile else "scrypt",
        scrypt=None if keyfile else ScryptParams(salt=salt, log_n=log_n, r=r, p=p),
        wrap_nonce=nonce,
        wrapped_key=wrapped,
        chunk_size=chunk_size,
        features=(FEATURE_CHUNKS, FEATURE_PLAINTEXT_NAMES) if names else (FEATURE_CHUNKS,),
        extra=extra,
    )
    raw = config.to_json()
    assert parse(raw) == config
    assert parse(raw).to_json() == raw
    assert raw.endswith(b"\n")


# ----------------------------------------------------------------------- newer formats: upgrade


@pytest.mark.parametrize("version", [0, 2, 99, -1])
def test_unknown_version_is_unsupported(version: int) -> None:
    with pytest.raises(UnsupportedFormat, match="upgrade"):
        parse(_raw(_doc(version=version)))


def test_newer_version_is_unsupported_whatever_else_it_holds() -> None:
    """A v2 document may look nothing like v1: the version decides before any other field."""
    with pytest.raises(UnsupportedFormat):
        parse(_raw({"format": "encfs-pacs volume", "version": 2, "features": {"new": "shape"}}))


@pytest.mark.parametrize("features", [
    ["aes256gcm-chunks", "plaintext-names", "encrypted-names"],
    ["aes256gcm-chunks", "Plaintext-Names"],
    ["xchacha-chunks"],
])
def test_unknown_feature_is_unsupported(features: list[str]) -> None:
    with pytest.raises(UnsupportedFormat):
        parse(_raw(_doc(features=features)))


@pytest.mark.parametrize("features", [[], ["plaintext-names"]])
def test_missing_required_feature_is_unsupported(features: list[str]) -> None:
    with pytest.raises(UnsupportedFormat, match="aes256gcm-chunks"):
        parse(_raw(_doc(features=features)))


def test_unknown_kdf_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormat, match="argon2id"):
        parse(_raw(_doc(kdf={"algorithm": "argon2id", "salt": _b64(bytes(16))})))


# ----------------------------------------------------------------------------- damaged documents


@pytest.mark.parametrize("raw", [
    b"", b"{", b"\xff\xfe\x00garbage", b"null", b"[]", b'"encfs-pacs volume"', b"1",
    b'{"format": "gocryptfs"}', b'{"version": 1}',
])
def test_not_a_config_document(raw: bytes) -> None:
    with pytest.raises(CorruptConfig):
        parse(raw)


REQUIRED = ["version", "features", "chunk_size", "key_id", "kdf", "wrapped_master_key", "kdf.algorithm",
            "kdf.salt", "kdf.log_n", "kdf.r", "kdf.p", "wrapped_master_key.nonce",
            "wrapped_master_key.ciphertext"]


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_field_is_corrupt(field: str) -> None:
    with pytest.raises(CorruptConfig, match=field.split(".")[-1]):
        parse(_raw(_doc(**{field: DELETE})))


@pytest.mark.parametrize(("field", "value"), [
    ("version", "1"), ("version", True), ("version", 1.0), ("version", None),
    ("features", "aes256gcm-chunks"), ("features", {"aes256gcm-chunks": True}),
    ("features", ["aes256gcm-chunks", 1]), ("features", ["aes256gcm-chunks", {}]),
    ("features", ["aes256gcm-chunks", ["plaintext-names"]]),
    ("chunk_size", "65536"), ("chunk_size", 65536.0), ("chunk_size", True), ("chunk_size", 1000),
    ("chunk_size", 2048), ("chunk_size", 2**21), ("chunk_size", 0), ("chunk_size", -65536),
    ("key_id", 5), ("key_id", ["00"]),
    ("kdf", "scrypt"), ("kdf", ["scrypt"]), ("kdf.algorithm", 1),
    ("kdf.log_n", "17"), ("kdf.log_n", 9), ("kdf.log_n", 25), ("kdf.r", 0), ("kdf.r", 65),
    ("kdf.p", 0), ("kdf.p", 17), ("kdf.p", False), ("kdf.salt", 123),
    ("wrapped_master_key", "x"), ("wrapped_master_key.nonce", None),
])
def test_ill_typed_or_out_of_range_field_is_corrupt(field: str, value: Any) -> None:
    with pytest.raises(CorruptConfig):
        parse(_raw(_doc(**{field: value})))


@pytest.mark.parametrize(("field", "value"), [
    ("kdf.salt", "not base64!"), ("kdf.salt", "AAA"), ("kdf.salt", "AA AA"),
    ("wrapped_master_key.nonce", "%%%%"), ("wrapped_master_key.ciphertext", "A"),
    ("wrapped_master_key.nonce", _b64(b"")), ("wrapped_master_key.nonce", _b64(bytes(16))),
    ("wrapped_master_key.ciphertext", _b64(bytes(32))), ("wrapped_master_key.ciphertext", _b64(bytes(64))),
    ("key_id", "zz112233445566778899aabbccddeeff"), ("key_id", "0011223"),
    ("key_id", "00112233"), ("key_id", "00112233445566778899aabbccddeeff00"), ("key_id", ""),
])
def test_bad_encoding_or_length_is_corrupt(field: str, value: str) -> None:
    with pytest.raises(CorruptConfig):
        parse(_raw(_doc(**{field: value})))


# --------------------------------------------------------------------- creating and unlocking


def _create(backing: Path, secret: store.Secret = PASS, **kwargs: Any) -> VolumeConfig:
    kwargs.setdefault("scrypt_log_n", 10)
    return store.create_volume(backing, secret, **kwargs)


def _put_and_get(volume: store.Volume, data: bytes) -> bytes:
    handle = volume.create("/img.dcm", 0o600, os.O_WRONLY)
    handle.write(data, 0)
    handle.close()
    handle = volume.open("/img.dcm", os.O_RDONLY)
    try:
        return handle.read(len(data) + 1, 0)
    finally:
        handle.close()


def test_create_then_unlock_and_read(tmp_path: Path) -> None:
    config = _create(tmp_path / "vol", chunk_size=8192)
    assert store.read_config(tmp_path / "vol") == config
    volume = store.unlock(tmp_path / "vol", PASS)
    assert _put_and_get(volume, b"\x01" * 20000) == b"\x01" * 20000
    reopened = store.unlock(tmp_path / "vol", PASS)
    handle = reopened.open("/img.dcm", os.O_RDONLY)
    assert handle.read(5, 8190) == b"\x01" * 5
    handle.close()
    assert (tmp_path / "vol" / "img.dcm").stat().st_size == Layout(8192).ciphertext_size(20000)


def test_created_config_document(tmp_path: Path) -> None:
    _create(tmp_path / "vol")
    doc = json.loads(store.config_path(tmp_path / "vol").read_text())
    assert set(doc) == {"format", "version", "features", "chunk_size", "key_id", "kdf",
                        "wrapped_master_key", "created"}
    assert doc["format"] == "encfs-pacs volume" and doc["version"] == 1
    assert doc["features"] == ["aes256gcm-chunks", "plaintext-names"]
    assert doc["chunk_size"] == 65536
    assert len(bytes.fromhex(doc["key_id"])) == 16
    assert doc["kdf"]["algorithm"] == "scrypt"
    assert (doc["kdf"]["log_n"], doc["kdf"]["r"], doc["kdf"]["p"]) == (10, 8, 1)
    assert len(base64.b64decode(doc["kdf"]["salt"])) == 32
    assert len(base64.b64decode(doc["wrapped_master_key"]["nonce"])) == 12
    assert len(base64.b64decode(doc["wrapped_master_key"]["ciphertext"])) == 48


def test_default_scrypt_cost_is_recorded(tmp_path: Path) -> None:
    assert keys.DEFAULT_SCRYPT_LOG_N == 17
    with pytest.raises(UsageError):
        _create(tmp_path / "a", scrypt_log_n=keys.MIN_SCRYPT_LOG_N - 1)
    with pytest.raises(UsageError):
        _create(tmp_path / "b", scrypt_log_n=25)


def test_wrong_passphrase(tmp_path: Path) -> None:
    _create(tmp_path / "vol")
    with pytest.raises(WrongPassphrase):
        store.unlock(tmp_path / "vol", store.Secret("passphrase", b"correct horse battery stapler"))


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeySourceError):
        _create(tmp_path / "vol", store.Secret("passphrase", b""))


def _edit(backing: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = store.config_path(backing)
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))


@pytest.mark.parametrize("change", [
    lambda d: d.update(chunk_size=4096),
    lambda d: d.update(chunk_size=131072),
    lambda d: d.update(features=["aes256gcm-chunks"]),
    lambda d: d.update(features=d["features"] + ["aes256gcm-chunks"]),  # a duplicate flag
    lambda d: d.update(key_id="00" * 16),
    lambda d: d["kdf"].update(log_n=11),
    lambda d: d["kdf"].update(salt=_b64(bytes(32))),
    lambda d: d["wrapped_master_key"].update(nonce=_b64(bytes(12))),
], ids=["chunk_size-smaller", "chunk_size-larger", "features-dropped", "features-duplicated",
        "key_id", "scrypt-cost", "salt", "wrap-nonce"])
def test_edited_config_fails_unlock(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    backing = tmp_path / "vol"
    _create(backing)
    store.unlock(backing, PASS)
    _edit(backing, change)
    store.read_config(backing)  # still a well-formed document ...
    with pytest.raises(WrongPassphrase):  # ... but the wrapped key no longer opens
        store.unlock(backing, PASS)


@pytest.mark.parametrize("change", [
    lambda d: d.update(features=list(reversed(d["features"]))),
    lambda d: d.update(created="1999-01-01T00:00:00Z"),
    lambda d: d.update(comment="radiology archive 2"),
], ids=["features-reordered", "created", "extra-key"])
def test_edits_outside_the_bound_fields_still_unlock(
    tmp_path: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    backing = tmp_path / "vol"
    _create(backing)
    _edit(backing, change)
    assert _put_and_get(store.unlock(backing, PASS), b"data") == b"data"


def test_wrap_associated_data_covers_the_format_fields() -> None:
    base = parse(_raw(_doc()))
    variants = [
        VolumeConfig(**{**base.__dict__, "chunk_size": 4096}),
        VolumeConfig(**{**base.__dict__, "features": (FEATURE_CHUNKS,)}),
        VolumeConfig(**{**base.__dict__, "key_id": bytes(16)}),
        VolumeConfig(**{**base.__dict__, "version": 2}),
    ]
    assert len({v.wrap_associated_data() for v in [base, *variants]}) == 5


# ------------------------------------------------------------------------------------ keyfiles


def test_keyfile_volume(tmp_path: Path) -> None:
    secret = store.Secret("keyfile", bytes(range(100, 132)))
    config = _create(tmp_path / "vol", secret)
    assert config.kdf == "keyfile" and config.scrypt is None
    doc = json.loads(store.config_path(tmp_path / "vol").read_text())
    assert doc["kdf"] == {"algorithm": "keyfile"}
    assert _put_and_get(store.unlock(tmp_path / "vol", secret), b"x" * 70000) == b"x" * 70000
    with pytest.raises(WrongPassphrase):
        store.unlock(tmp_path / "vol", store.Secret("keyfile", bytes(range(101, 133))))
    with pytest.raises(UsageError):  # a passphrase cannot open a keyfile volume, and vice versa
        store.unlock(tmp_path / "vol", PASS)


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_keyfile_of_wrong_length(tmp_path: Path, length: int) -> None:
    with pytest.raises(KeySourceError, match="32 bytes"):
        _create(tmp_path / "new", store.Secret("keyfile", bytes(length)))
    _create(tmp_path / "vol", store.Secret("keyfile", bytes(32)))
    with pytest.raises(KeySourceError):
        store.unlock(tmp_path / "vol", store.Secret("keyfile", bytes(length)))


def test_keyfile_cannot_open_passphrase_volume(tmp_path: Path) -> None:
    _create(tmp_path / "vol")
    with pytest.raises(UsageError):
        store.unlock(tmp_path / "vol", store.Secret("keyfile", bytes(32)))


def test_secret_repr_hides_the_value() -> None:
    assert "battery" not in repr(PASS) and "hidden" in repr(PASS)


# ---------------------------------------------------------------------------- backing folders


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_sets_private_modes(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _create(tmp_path / "new")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new") == 0o700
    assert _mode(tmp_path / "new" / store.META_DIR) == 0o700
    assert _mode(store.config_path(tmp_path / "new")) == 0o600
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [store.META_DIR]
    assert sorted(p.name for p in (tmp_path / "new" / store.META_DIR).iterdir()) == ["volume.json"]


def test_create_in_existing_empty_folder_tightens_its_mode(tmp_path: Path) -> None:
    backing = tmp_path / "existing"
    backing.mkdir()
    backing.chmod(0o755)
    _create(backing)
    assert _mode(backing) == 0o700


@pytest.mark.parametrize("name", ["study.dcm", ".hidden", "sub/"])
def test_create_refuses_non_empty_folder(tmp_path: Path, name: str) -> None:
    backing = tmp_path / "full"
    backing.mkdir()
    if name.endswith("/"):
        (backing / name).mkdir()
    else:
        (backing / name).write_bytes(b"x")
    with pytest.raises(BackingNotEmpty):
        _create(backing)
    assert not (backing / store.META_DIR).exists()


def test_create_twice_is_refused(tmp_path: Path) -> None:
    config = _create(tmp_path / "vol")
    with pytest.raises(BackingNotEmpty):
        _create(tmp_path / "vol")
    assert store.read_config(tmp_path / "vol") == config


def test_create_refuses_file_missing_parent_and_bad_chunk_size(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UsageError):
        _create(tmp_path / "file")
    with pytest.raises(BackingMissing):
        _create(tmp_path / "no" / "such" / "vol")
    with pytest.raises(UsageError):
        _create(tmp_path / "vol", chunk_size=3000)
    assert not (tmp_path / "vol").exists()


def test_read_config_of_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BackingMissing):
        store.read_config(tmp_path / "absent")
    with pytest.raises(BackingMissing):
        store.unlock(tmp_path / "absent", PASS)


def test_read_config_of_non_volume(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "img.dcm").write_bytes(b"DICM")
    with pytest.raises(NotAVolume):
        store.read_config(tmp_path / "plain")
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(NotAVolume):
        store.read_config(tmp_path / "afile")


def test_read_config_of_damaged_document(tmp_path: Path) -> None:
    _create(tmp_path / "vol")
    store.config_path(tmp_path / "vol").write_bytes(b'{"format": "encfs-pacs volume", "version": 1')
    with pytest.raises(CorruptConfig):
        store.unlock(tmp_path / "vol", PASS)


def test_exit_codes_are_the_documented_contract() -> None:
    codes = {
        errors.WrongPassphrase: 10, errors.NotAVolume: 11, errors.UnsupportedFormat: 12,
        errors.CorruptConfig: 13, errors.BackingMissing: 14, errors.BackingNotEmpty: 15,
        errors.KeySourceError: 18, errors.IntegrityError: 20,
    }
    assert {cls: cls.exit_code for cls in codes} == codes
    assert volume_config.CONFIG_VERSION == 1
