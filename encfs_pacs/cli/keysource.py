"""Where the secret that unlocks a volume comes from: a file, a keyfile, a systemd
credential or a prompt.

Secrets never come from the command line itself (argv is world-readable in /proc).

A systemd credential (LoadCredential=/LoadCredentialEncrypted=NAME:...) is read from
$CREDENTIALS_DIRECTORY/NAME. Its kind is decided by size: exactly 32 bytes is a keyfile (what
``head -c 32 /dev/urandom`` makes), anything else is a passphrase file (its first line). A
passphrase of exactly 32 characters must therefore end with a newline in the credential
(``echo`` adds one; ``printf %s`` does not).
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from pathlib import Path

import click

from ..crypto.volume_config import KDF_PKCS11, VolumeConfig
from ..errors import KeySourceError
from ..store import Secret

passphrase_file_option = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
    help="Read the passphrase from the first line of FILE (keep it mode 0600).")
credential_option = click.option(
    "--credential", metavar="NAME",
    help="Read the key from the systemd credential NAME ($CREDENTIALS_DIRECTORY/NAME): "
         "32 bytes = keyfile, otherwise a passphrase (first line).")
keyfile_option = click.option(
    "--keyfile", type=click.Path(dir_okay=False, path_type=Path),
    help="Use a 32-byte binary keyfile instead of a passphrase.")
kms_option = click.option(
    "--kms", metavar="URI",
    help="Key from a key service: 'pkcs11:token=T;object=KEY?module-path=/lib.so&pin-source=file:/pin' "
         "(HSM) or 'kmip://HOST:PORT/KEY-UID?ca=F&cert=F&key=F'. Files only: no PIN in the URI. "
         "See docs/key-services.md.")


def _read(path: Path, what: str) -> bytes:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeySourceError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise KeySourceError(f"cannot read {what} {path}: permission denied") from None
    except IsADirectoryError:
        raise KeySourceError(f"{what} {path} is a folder, not a file") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        click.echo(f"encfs-pacs: warning: {what} {path} is readable by other users; chmod 600 it",
                   err=True)
    return data


KEYFILE_SIZE = 32


def credential_path(name: str) -> Path:
    """$CREDENTIALS_DIRECTORY/NAME, or KeySourceError saying what is missing."""
    if not name or "/" in name or name in (".", ".."):
        raise KeySourceError(f"credential name {name!r} is not a plain file name")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise KeySourceError(
            f"credential {name!r} asked for, but $CREDENTIALS_DIRECTORY is not set: run the mount "
            f"from a systemd unit with LoadCredential={name}:/path/to/secret "
            "(or LoadCredentialEncrypted=), or use --passphrase-file/--keyfile")
    path = Path(directory) / name
    if not path.is_file():
        raise KeySourceError(
            f"credential {name!r} is not in $CREDENTIALS_DIRECTORY ({directory}): check the unit's "
            f"LoadCredential={name}:... line (the name before the colon must be {name!r})")
    return path


def secret_from_credential(name: str) -> Secret:
    """The secret in systemd credential NAME: 32 bytes = keyfile, else passphrase (first line)."""
    path = credential_path(name)
    # systemd makes the credentials folder private to the unit; no mode warning here.
    try:
        data = path.read_bytes()
    except PermissionError:
        raise KeySourceError(f"cannot read credential {name!r} ({path}): permission denied") from None
    if len(data) == KEYFILE_SIZE:
        return Secret("keyfile", data)
    return _first_line(data, f"credential {name!r}")


def _first_line(data: bytes, what: str) -> Secret:
    first_line = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if not first_line:
        raise KeySourceError(f"{what} is empty (the first line is used)")
    return Secret("passphrase", first_line)


def secret_from_kms(uri: str, volume: VolumeConfig | None) -> Secret:
    """A key-service secret from a --kms URI; ``volume`` is None at init (the URI names it all),
    else the volume's config (which records the key: the URI may give only credentials)."""
    from .. import keyservice

    return Secret.from_service(keyservice.open_service(keyservice.parse_uri(uri), volume))


def secret_from_options(passphrase_file: Path | None, keyfile: Path | None, confirm: bool,
                        credential: str | None = None, kms: str | None = None,
                        volume: VolumeConfig | None = None) -> Secret:
    """The one secret the options give (the prompt if none). ``volume``: the volume's config
    when it exists (mount), so a key-service volume is told to use --kms instead of a prompt."""
    if sum(x is not None for x in (passphrase_file, keyfile, credential, kms)) > 1:
        raise KeySourceError("give only one of --passphrase-file, --keyfile, --credential and --kms")
    if kms is not None:
        return secret_from_kms(kms, volume)
    if volume is not None and volume.service is not None and not (passphrase_file or keyfile or credential):
        raise KeySourceError(
            f"this volume's key is in a {volume.kdf} key service: give --kms URI with this host's "
            f"credentials (e.g. {_kms_example(volume.kdf)}) or --recovery-key-file; see docs/key-services.md")
    if credential is not None:
        return secret_from_credential(credential)
    if keyfile:
        return Secret("keyfile", _read(keyfile, "keyfile"))
    if passphrase_file:
        return _first_line(_read(passphrase_file, "passphrase file"), f"passphrase file {passphrase_file}")
    return Secret("passphrase", _prompt(confirm))


def _kms_example(kind: str) -> str:
    if kind == KDF_PKCS11:
        return "'pkcs11:?pin-source=file:/etc/encfs-pacs/hsm.pin'"
    return "'kmip:?ca=/etc/encfs-pacs/kmip-ca.pem&cert=/etc/encfs-pacs/kmip.crt&key=/etc/encfs-pacs/kmip.key'"


def _prompt(confirm: bool) -> bytes:
    if not (sys.stdin.isatty() and os.isatty(sys.stdin.fileno())):
        raise KeySourceError(
            "no passphrase given and standard input is not a terminal: "
            "use --passphrase-file FILE or --keyfile FILE")
    first = getpass.getpass("Passphrase: ")
    if not first:
        raise KeySourceError("the passphrase is empty")
    if confirm and getpass.getpass("Repeat passphrase: ") != first:
        raise KeySourceError("the two passphrases differ; nothing was created")
    return first.encode()
