"""Maintenance commands: passwd, recovery-key, import, export, fsck.

The work is done by ``encfs_pacs.maintenance``; this module reads secrets (files or a
terminal prompt, never the command line), draws progress on a terminal, prints summaries
(or --json) and hands each command's audit event to ``maintenance.events.audit_event``, which
queues it for the volume's audit trail; one line on stderr says where it went.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import store
from ..crypto import keys
from ..crypto.recovery_key import Share
from ..crypto.volume_config import KDF_KEYFILE
from ..errors import (
    KeyServiceError,
    KeyServiceUnreachable,
    KeySourceError,
    RecoveryKeyError,
    TransferIncomplete,
    VolumeDamaged,
    WrongPassphrase,
)
from ..maintenance import exporter, importer, rekey
from ..maintenance import fsck as fsck_mod
from ..maintenance.events import audit_event, authenticate, make_event
from ..maintenance.tree import Summary
from .keysource import (
    keyfile_option,
    kms_option,
    passphrase_file_option,
    secret_from_kms,
    secret_from_options,
)

recovery_key_file_option = click.option(
    "--recovery-key-file", type=click.Path(dir_okay=False, path_type=Path),
    help="Unlock with the recovery key instead: a file with one share line per line "
         "(as printed by 'encfs-pacs recovery-key create'; any M of a set).")


# ---------------------------------------------------------------------------- secrets


def _prompt(label: str, confirm_label: str | None = None) -> bytes:
    if not (sys.stdin.isatty() and os.isatty(sys.stdin.fileno())):
        raise KeySourceError(
            "no secret given and standard input is not a terminal: use the file options "
            "(--passphrase-file, --keyfile, ...); see --help")
    first = getpass.getpass(label)
    if not first:
        raise KeySourceError("the passphrase is empty")
    if confirm_label is not None and getpass.getpass(confirm_label) != first:
        raise KeySourceError("the two passphrases differ; nothing was changed")
    return first.encode()


def current_secret(backing: Path, passphrase_file: Path | None, keyfile: Path | None,
                   recovery_key_file: Path | None, kms: str | None = None) -> rekey.OldSecret:
    """What unlocks the volume now: exactly one of the options, or a passphrase prompt."""
    if sum(x is not None for x in (passphrase_file, keyfile, recovery_key_file, kms)) > 1:
        raise KeySourceError("give only one of --passphrase-file, --keyfile, --kms and --recovery-key-file")
    if recovery_key_file is not None:
        return rekey.OldSecret(recovery_file=recovery_key_file)
    config = store.read_config(backing)
    if passphrase_file is not None or keyfile is not None or kms is not None:
        return rekey.OldSecret(secret_from_options(passphrase_file, keyfile, confirm=False, kms=kms,
                                                   volume=config))
    if config.service is not None:
        raise KeySourceError(f"this volume's key is in a {config.kdf} key service: give --kms URI "
                             "(see docs/key-services.md) or --recovery-key-file FILE")
    if config.kdf == KDF_KEYFILE:
        raise KeySourceError("this volume is unlocked with a keyfile: give --keyfile FILE "
                             "(or --recovery-key-file FILE)")
    return rekey.OldSecret(store.Secret("passphrase", _prompt("Current passphrase: ")))


def record(event: dict[str, Any]) -> None:
    """Queue the command's audit event and say where it went (stderr: stdout may be --json)."""
    click.echo(f"audit: {audit_event(event)}", err=True)


def unlock(backing: Path, passphrase_file: Path | None, keyfile: Path | None,
           recovery_key_file: Path | None, kms: str | None = None) -> tuple[store.Volume, str]:
    """The unlocked volume, and what unlocked it (passphrase, keyfile, pkcs11, kmip, recovery
    key) for the command's audit event."""
    store.read_config(backing)  # a missing or foreign volume is reported before any prompt
    old = current_secret(backing, passphrase_file, keyfile, recovery_key_file, kms)
    return rekey.open_volume(backing, old), old.kind


# ---------------------------------------------------------------------------- progress


def _human(nbytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError("unreachable")


class TerminalProgress:
    """click's bar on stderr (percent and ETA by bytes) plus files, bytes and rate.

    Redrawn at most ten times a second: a PACS tree has millions of small files."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None
        self.files = self.nbytes = self.total_files = self.total_bytes = 0
        self._pending = 0
        self._last = 0.0
        self._started = time.monotonic()

    def start(self, files: int, nbytes: int) -> None:
        self.total_files, self.total_bytes = files, nbytes
        self._started = time.monotonic()
        self.bar = click.progressbar(length=max(nbytes, 1), label=self.label, file=sys.stderr,
                                     show_eta=True, show_percent=True, width=20,
                                     item_show_func=lambda _: self.status())
        self.bar.__enter__()

    def status(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        return (f"{self.files}/{self.total_files} files  {_human(self.nbytes)}/{_human(self.total_bytes)}"
                f"  {_human(self.nbytes / elapsed)}/s")

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        self.nbytes += nbytes
        self._pending += nbytes
        now = time.monotonic()
        if self.bar is not None and (now - self._last >= 0.1 or self.files == self.total_files):
            self.bar.update(self._pending, current_item=self.files)
            self._pending, self._last = 0, now

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.update(self._pending, current_item=self.files)
            self.bar.__exit__(None, None, None)
            self.bar = None


def progress_for(label: str, json_output: bool) -> TerminalProgress | None:
    """A bar only on a terminal and never with --json (conventions.md)."""
    if json_output or not sys.stderr.isatty():
        return None
    return TerminalProgress(label)


# ---------------------------------------------------------------------------- passwd


@click.command()
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@passphrase_file_option
@keyfile_option
@kms_option
@recovery_key_file_option
@click.option("--new-passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help="The new passphrase: first line of FILE.")
@click.option("--new-keyfile", type=click.Path(dir_okay=False, path_type=Path),
              help="Unlock with this 32-byte keyfile from now on.")
@click.option("--new-kms", metavar="URI",
              help="Have this key service (HSM or KMIP server) seal the key from now on "
                   "(URI as for init --kms).")
@click.option("--scrypt-log-n", type=int, default=keys.DEFAULT_SCRYPT_LOG_N, show_default=True,
              hidden=True, help="scrypt cost for a new passphrase; lower only for tests.")
def passwd(backing: Path, passphrase_file: Path | None, keyfile: Path | None, kms: str | None,
           recovery_key_file: Path | None, new_passphrase_file: Path | None, new_keyfile: Path | None,
           new_kms: str | None, scrypt_log_n: int) -> None:
    """Change the passphrase or keyfile of the volume BACKING.

    Only the wrapping of the master key changes (new salt): no image is re-encrypted, the
    volume may stay mounted, and a crash at any moment leaves either the old or the new
    secret working. Without file options it prompts (the new passphrase twice).
    Copies of the old volume.json (backups) still open with the old secret.

    \b
    Examples:
      encfs-pacs passwd /srv/pacs-encrypted --passphrase-file old.pass --new-passphrase-file new.pass
      encfs-pacs passwd /srv/pacs-encrypted --recovery-key-file shares.txt   # lost passphrase
      encfs-pacs passwd /srv/pacs-encrypted --passphrase-file old.pass --new-kms 'pkcs11:...'
    """
    store.read_config(backing)
    old = current_secret(backing, passphrase_file, keyfile, recovery_key_file, kms)
    if new_kms is not None:
        if new_passphrase_file is not None or new_keyfile is not None:
            raise KeySourceError("give only one of --new-passphrase-file, --new-keyfile and --new-kms")
        new = secret_from_kms(new_kms, None)  # the URI names the key: it may differ from the old one
    elif new_passphrase_file is not None or new_keyfile is not None:
        new = secret_from_options(new_passphrase_file, new_keyfile, confirm=False)
    else:
        new = store.Secret("passphrase", _prompt("New passphrase: ", "Repeat new passphrase: "))
    try:
        event = rekey.change_secret(backing, old, new, scrypt_log_n)
    except (WrongPassphrase, RecoveryKeyError, KeyServiceError) as exc:
        # A failed unlock attempt (not a typo in the options; an HSM refusing the PIN counts, an
        # unreachable one does not). Unauthenticated, as no key was unlocked: the trail records
        # it as an unverified claim.
        if not isinstance(exc, KeyServiceUnreachable):
            record(make_event("volume-key-changed", outcome="error", backing=str(backing.absolute()),
                              unlocked_with=old.kind, reason=str(exc)))
        raise
    record(event)
    what = f"key service ({new.service})" if new.service is not None else (
        "keyfile" if new.kind == "keyfile" else "passphrase")
    click.echo(f"changed the {what} of {backing} "
               f"(key ID {event['key_id']}); no data was re-encrypted")
    click.echo("old copies of .encfs-pacs/volume.json (in backups) still open with the old secret")


# ---------------------------------------------------------------------------- recovery key


@click.group("recovery-key")
def recovery_key_group() -> None:
    """Printable backup of the master key, for the hospital's safe."""


@recovery_key_group.command("create")
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@passphrase_file_option
@keyfile_option
@kms_option
@click.option("--shares", type=click.IntRange(1, 255), default=1, show_default=True,
              help="Split the key into N shares, one per key holder.")
@click.option("--threshold", type=click.IntRange(1, 255), default=None,
              help="Any M shares recover the key; fewer reveal nothing (default: all N).")
def recovery_key_create(backing: Path, passphrase_file: Path | None, keyfile: Path | None, kms: str | None,
                        shares: int, threshold: int | None) -> None:
    """Print a recovery key for BACKING: the master key as typeable lines.

    Whoever holds the recovery key (or M of its shares) can decrypt the whole archive and
    set a new passphrase ('encfs-pacs passwd --recovery-key-file'), whatever the current
    passphrase. Print it, put each share in a different safe, and do not keep it on disk.
    The output is itself a valid --recovery-key-file.

    \b
    Examples:
      encfs-pacs recovery-key create /srv/pacs-encrypted --passphrase-file /root/pacs.pass
      encfs-pacs recovery-key create /srv/pacs-encrypted --shares 5 --threshold 3
    """
    store.read_config(backing)
    old = current_secret(backing, passphrase_file, keyfile, None, kms)
    threshold = shares if threshold is None else threshold
    config, made, event = rekey.create_recovery_key(backing, old, shares, threshold)
    record(event)
    echo_recovery_key(backing, config.key_id, made, threshold)


def echo_recovery_key(backing: Path, key_id: bytes, made: list[Share], threshold: int) -> None:
    """Print shares with the safe-keeping warning; the whole output is a --recovery-key-file.
    (For 'init --print-recovery-key': rekey.create_recovery_key after create_volume, then this.)"""
    click.echo(f"# encfs-pacs RECOVERY KEY for volume {key_id.hex()}")
    click.echo(f"# folder {backing.absolute()}")
    if len(made) == 1:
        click.echo("# This line IS the volume's master key. Anyone who has it can decrypt every image.")
    else:
        click.echo(f"# {len(made)} shares; any {threshold} of them together are the volume's master key.")
        click.echo(f"# Give each share to a different key holder. Fewer than {threshold} reveal nothing.")
    click.echo("# KEEP IT IN A SAFE. Do not store it on this server, in e-mail or next to backups.")
    click.echo("# Test it now: encfs-pacs recovery-key check BACKING --recovery-key-file FILE")
    for share in made:
        click.echo(share.line())
    click.echo("# end of recovery key")


@recovery_key_group.command("check")
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@click.option("--recovery-key-file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The shares to test, one line each.")
def recovery_key_check(backing: Path, recovery_key_file: Path) -> None:
    """Test that the shares in a file recover BACKING's key (nothing is changed).

    \b
    Example:
      encfs-pacs recovery-key check /srv/pacs-encrypted --recovery-key-file typed-shares.txt
    """
    master = rekey.master_key_from_recovery_file(backing, recovery_key_file)
    record(authenticate(make_event("recovery-key-checked", outcome="success", backing=str(backing.absolute()),
                                   key_id=store.read_config(backing).key_id.hex(),
                                   unlocked_with=rekey.RECOVERY), master))
    click.echo(f"the recovery key in {recovery_key_file} unlocks {backing}")


# ---------------------------------------------------------------------------- import / export


def _print_summary(summary: Summary, verb: str, json_output: bool) -> None:
    if json_output:
        click.echo(json.dumps(summary.as_dict(), indent=2))
        return
    mb_s, files_s = summary.rates()
    click.echo(f"{verb} {summary.files_done} file(s) ({_human(summary.bytes_done)}) in "
               f"{summary.seconds:.1f} s ({mb_s:.1f} MB/s, {files_s:.0f} files/s)")
    click.echo(f"skipped {summary.skipped_files} file(s) already done ({_human(summary.skipped_bytes)}); "
               f"{summary.directories} folder(s), {summary.symlinks} symlink(s), "
               f"{summary.hard_links} hard link(s)")
    if summary.leftovers_removed:
        click.echo(f"deleted {summary.leftovers_removed} half-written file(s) left by an interrupted run")
    if summary.sources_removed:
        click.echo(f"removed {summary.sources_removed} source file(s) after their copy was verified")
    if summary.owners_not_kept:
        click.echo(f"note: {summary.owners_not_kept} item(s) belong to other users; "
                   "run as root to keep owners")
    for title, items in (("not copied", summary.not_copied), ("FAILED", summary.failed)):
        if items:
            click.echo(f"{title}: {len(items)}")
            for item in items:
                click.echo(f"  {item.path}: {item.reason}")
    if summary.stopped:
        click.echo(summary.stopped)


def _finish_transfer(summary: Summary, what: str, volume: store.Volume, event: str, **fields: Any) -> None:
    record(authenticate(make_event(event, outcome="success" if summary.ok else "incomplete",
                                   backing=str(volume.backing.absolute()), files=summary.files_done,
                                   bytes=summary.bytes_done, skipped=summary.skipped_files,
                                   failed=len(summary.failed), **fields), volume.master_key))
    if not summary.ok:
        raise TransferIncomplete(
            f"{len(summary.failed)} item(s) could not be {what} (listed above); fix the cause and run "
            "the same command again: finished files are not redone")


@click.command("import")
@click.argument("plain_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@passphrase_file_option
@keyfile_option
@kms_option
@recovery_key_file_option
@click.option("--remove-source", is_flag=True,
              help="Delete each source file once its encrypted copy is verified and synced.")
@click.option("--replace-changed", is_flag=True,
              help="Re-import files whose copy in the volume differs in size or modification time.")
@click.option("--json", "json_output", is_flag=True, help="Print the summary as JSON.")
def import_command(plain_dir: Path, backing: Path, passphrase_file: Path | None, keyfile: Path | None,
                   kms: str | None, recovery_key_file: Path | None, remove_source: bool,
                   replace_changed: bool, json_output: bool) -> None:
    """Encrypt the plain folder PLAIN_DIR into the volume BACKING (made by 'encfs-pacs init').

    Every file is encrypted to a hidden staging name, synced, decrypted again and compared
    (SHA-256) with the source, then renamed into place with its owner, mode and times. If the
    import is interrupted (crash, power loss, Ctrl-C), run the same command again: finished
    files are skipped, half-written ones were never visible and are deleted. The source is
    never touched unless --remove-source is given.

    \b
    Example:
      encfs-pacs init /srv/pacs-encrypted --passphrase-file /root/pacs.pass
      encfs-pacs import /var/lib/orthanc/db /srv/pacs-encrypted --passphrase-file /root/pacs.pass
    """
    volume, unlocked_with = unlock(backing, passphrase_file, keyfile, recovery_key_file, kms)
    summary = importer.import_tree(plain_dir, volume, remove_source=remove_source,
                                   replace_changed=replace_changed,
                                   progress=progress_for("importing", json_output))
    _print_summary(summary, "imported", json_output)
    _finish_transfer(summary, "imported", volume, "volume-import", source=str(plain_dir.absolute()),
                     remove_source=remove_source, sources_removed=summary.sources_removed,
                     unlocked_with=unlocked_with)


@click.command("export")
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@passphrase_file_option
@keyfile_option
@kms_option
@recovery_key_file_option
@click.option("--resume", is_flag=True, help="Continue an interrupted export into DEST.")
@click.option("--json", "json_output", is_flag=True, help="Print the summary as JSON.")
def export_command(backing: Path, dest: Path, passphrase_file: Path | None, keyfile: Path | None,
                   kms: str | None, recovery_key_file: Path | None, resume: bool, json_output: bool) -> None:
    """Decrypt the volume BACKING into the plain folder DEST (which must be empty).

    DEST then holds every image in PLAINTEXT: protect it accordingly. Files that fail
    authentication are not written and are listed. The volume is only read.

    \b
    Example:
      encfs-pacs export /srv/pacs-encrypted /mnt/migration/pacs --passphrase-file /root/pacs.pass
    """
    volume, unlocked_with = unlock(backing, passphrase_file, keyfile, recovery_key_file, kms)
    summary = exporter.export_volume(volume, dest, resume=resume,
                                     progress=progress_for("exporting", json_output))
    _print_summary(summary, "exported", json_output)
    _finish_transfer(summary, "exported", volume, "volume-export", destination=str(dest.absolute()),
                     unlocked_with=unlocked_with)


# ---------------------------------------------------------------------------- fsck


def _print_fsck(result: fsck_mod.FsckResult) -> None:
    click.echo(f"checked {result.files_checked} file(s), {_human(result.bytes_checked)} in "
               f"{result.chunks_checked} chunk(s), in {result.seconds:.1f} s")
    for finding in result.damaged:
        line = f"DAMAGED   {finding.path}: {finding.kind}: {finding.detail}"
        if finding.bad_chunks:
            shown = ", ".join(f"{i} (bytes {a}-{b - 1})" for i, (a, b) in
                              zip(finding.bad_chunks[:8], finding.lost_bytes[:8], strict=False))
            more = f" and {len(finding.bad_chunks) - 8} more" if len(finding.bad_chunks) > 8 else ""
            line += f"; bad chunk(s): {shown}{more}"
        click.echo(line)
    for finding in result.leftovers:
        click.echo(f"LEFTOVER  {finding.path}: {finding.detail}")
    if result.clean:
        click.echo("the volume is clean" + (f" ({len(result.leftovers)} leftover(s) listed above)"
                                            if result.leftovers else ""))


@click.command("fsck")
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@passphrase_file_option
@keyfile_option
@kms_option
@recovery_key_file_option
@click.option("--json", "json_output", is_flag=True, help="Print the report as JSON.")
@click.option("--quarantine", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="MOVE each damaged file out of the volume into DIR (ciphertext kept, with a report "
                   "of the lost chunks), so the PACS sees it missing instead of read errors.")
def fsck_command(backing: Path, passphrase_file: Path | None, keyfile: Path | None,
                 kms: str | None, recovery_key_file: Path | None, json_output: bool,
                 quarantine: Path | None) -> None:
    """Read and authenticate every chunk of every file in BACKING; change nothing.

    Exit 0: every file is intact (leftovers such as staging files of an interrupted import
    are listed but do not count as damage). Exit 26: damaged files, each listed with the
    chunks (and plaintext bytes) that fail. Without --quarantine nothing is changed, so it
    also works on a read-only copy of a volume.

    \b
    Example:
      encfs-pacs fsck /srv/pacs-encrypted --passphrase-file /root/pacs.pass --json
    """
    volume, unlocked_with = unlock(backing, passphrase_file, keyfile, recovery_key_file, kms)
    progress = progress_for("checking", json_output)
    moved: list[str] = []
    if quarantine is None:
        result = fsck_mod.fsck(volume, progress)
    else:
        result, moved = fsck_mod.fsck_and_quarantine(volume, quarantine, progress)
    if json_output:
        click.echo(json.dumps({**result.as_dict(), "quarantined": moved}, indent=2))
    else:
        _print_fsck(result)
        for path in moved:
            click.echo(f"MOVED     {path} -> {quarantine / path}")
    record(authenticate(make_event("volume-checked", outcome="clean" if result.clean else "damaged",
                                   backing=str(backing.absolute()), damaged=len(result.damaged),
                                   leftovers=len(result.leftovers), quarantined=moved,
                                   unlocked_with=unlocked_with),
                        volume.master_key))
    if not result.clean:
        where = f"; {len(moved)} moved to {quarantine}" if moved else ""
        raise VolumeDamaged(f"{len(result.damaged)} damaged file(s) in {backing} (listed above){where}")


COMMANDS = (passwd, recovery_key_group, import_command, export_command, fsck_command)
