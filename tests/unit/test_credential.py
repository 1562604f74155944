"""systemd credentials as key source, without systemd: $CREDENTIALS_DIRECTORY set by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from encfs_pacs.cli.keysource import secret_from_credential, secret_from_options
from encfs_pacs.errors import KeySourceError


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_32_bytes_is_a_keyfile(creds: Path) -> None:
    key = bytes(range(32))
    (creds / "pacs.key").write_bytes(key)
    secret = secret_from_credential("pacs.key")
    assert secret.kind == "keyfile" and secret.value == key


def test_other_sizes_are_a_passphrase_first_line(creds: Path) -> None:
    (creds / "pacs.pass").write_bytes(b"correct horse battery staple\r\nignored\n")
    secret = secret_from_options(None, None, confirm=False, credential="pacs.pass")
    assert secret.kind == "passphrase" and secret.value == b"correct horse battery staple"
    # A 32-character passphrase written with echo (trailing newline) is 33 bytes: a passphrase.
    (creds / "p32").write_bytes(b"a" * 32 + b"\n")
    assert secret_from_credential("p32").kind == "passphrase"


def test_empty_credential(creds: Path) -> None:
    (creds / "empty").write_bytes(b"\n")
    with pytest.raises(KeySourceError, match="credential 'empty' is empty"):
        secret_from_credential("empty")


def test_unset_credentials_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(KeySourceError, match=r"\$CREDENTIALS_DIRECTORY is not set.*LoadCredential=pacs.key:"):
        secret_from_credential("pacs.key")


def test_missing_credential_names_the_unit_line(creds: Path) -> None:
    with pytest.raises(KeySourceError, match="not in \\$CREDENTIALS_DIRECTORY.*LoadCredential=pacs.key:"):
        secret_from_credential("pacs.key")


def test_names_cannot_leave_the_folder(creds: Path) -> None:
    (creds.parent / "outside").write_bytes(b"secret\n")
    for name in ("../outside", ".."):
        with pytest.raises(KeySourceError, match="not a plain file name"):
            secret_from_credential(name)


def test_only_one_key_source(creds: Path, tmp_path: Path) -> None:
    with pytest.raises(KeySourceError, match="only one of"):
        secret_from_options(tmp_path / "p", None, confirm=False, credential="x")
