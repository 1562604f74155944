"""Where the secret that unlocks a volume comes from: a file, a keyfile or a prompt.

Secrets never come from the command line itself (argv is world-readable in /proc).
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from pathlib import Path

import click

from ..errors import KeySourceError
from ..store import Secret

passphrase_file_option = click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
    help="Read the passphrase from the first line of FILE (keep it mode 0600).")
keyfile_option = click.option(
    "--keyfile", type=click.Path(dir_okay=False, path_type=Path),
    help="Use a 32-byte binary keyfile instead of a passphrase.")


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


def secret_from_options(passphrase_file: Path | None, keyfile: Path | None, confirm: bool) -> Secret:
    if passphrase_file and keyfile:
        raise KeySourceError("give either --passphrase-file or --keyfile, not both")
    if keyfile:
        return Secret("keyfile", _read(keyfile, "keyfile"))
    if passphrase_file:
        first_line = _read(passphrase_file, "passphrase file").split(b"\n", 1)[0].removesuffix(b"\r")
        if not first_line:
            raise KeySourceError(f"passphrase file {passphrase_file} is empty (the first line is used)")
        return Secret("passphrase", first_line)
    return Secret("passphrase", _prompt(confirm))


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
