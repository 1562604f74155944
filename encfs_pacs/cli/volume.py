"""Operator commands: create a volume, mount it, unmount it."""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

import click

from .. import store
from ..access import NullAudit, open_gate
from ..crypto import keys, volume_config
from ..errors import UsageError
from ..policy.loader import DEFAULT_POLICY_PATH
from .keysource import keyfile_option, passphrase_file_option, secret_from_options

DEFAULT_AUDIT_DIR = Path("/var/log/encfs-pacs")


@click.command()
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@passphrase_file_option
@keyfile_option
@click.option("--chunk-size", type=int, default=volume_config.DEFAULT_CHUNK_SIZE, show_default=True,
              help="Plaintext bytes per encrypted chunk (power of two, 4096..1048576).")
@click.option("--scrypt-log-n", type=int, default=keys.DEFAULT_SCRYPT_LOG_N, show_default=True,
              hidden=True, help="scrypt cost as log2(N); lower only for tests and demos.")
def init(backing: Path, passphrase_file: Path | None, keyfile: Path | None, chunk_size: int,
         scrypt_log_n: int) -> None:
    """Create a new encrypted volume in the empty folder BACKING.

    \b
    Example:
      encfs-pacs init /srv/pacs-encrypted --passphrase-file /root/pacs.pass
    """
    secret = secret_from_options(passphrase_file, keyfile, confirm=True)
    config = store.create_volume(backing, secret, chunk_size=chunk_size, scrypt_log_n=scrypt_log_n)
    from ..audit import create_anchor

    anchor = create_anchor(backing, store.unlock(backing, secret).master_key)
    click.echo(f"created volume in {backing} (key ID {config.key_id.hex()}, "
               f"{config.chunk_size // 1024} KiB chunks)")
    click.echo(f"audit anchor (public key for 'encfs-pacs audit verify --anchor'): {anchor.hex()}")
    click.echo("keep the passphrase or keyfile safe: without it the images cannot be decrypted")


def configure_logging(log_file: Path | None, foreground: bool, verbose: bool) -> None:
    root = logging.getLogger("encfs_pacs")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.handlers.clear()
    if log_file is not None:
        handler: logging.Handler = logging.FileHandler(log_file)
        os.chmod(log_file, 0o600)
    elif foreground:
        handler = logging.StreamHandler()
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter(
        "%(asctime)s encfs-pacs[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


@click.command()
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@passphrase_file_option
@keyfile_option
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground (systemd, debugging).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Daemon log (default: stderr in the foreground, syslog in the background).")
@click.option("--verbose", "-v", is_flag=True, help="Log debug details.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, path_type=Path),
              default=DEFAULT_POLICY_PATH, show_default=True,
              help="Allow-list in force (reloaded when it changes, or on SIGHUP).")
@click.option("--no-policy", is_flag=True,
              help="Give every process plaintext (testing only: no protection against ransomware).")
@click.option("--audit-log", type=click.Path(dir_okay=False, path_type=Path),
              help="Append-only, tamper-evident access log (default: "
                   "/var/log/encfs-pacs/<mountpoint>.audit.jsonl).")
@click.option("--no-audit", is_flag=True, help="Keep no audit trail (testing only).")
@click.option("--audit-fail-open", is_flag=True,
              help="Keep serving when the audit log cannot be written (default: refuse access).")
@click.option("--learn", is_flag=True,
              help="Deny nothing; record every access the policy would deny "
                   "(then: encfs-pacs policy suggest).")
def mount(backing: Path, mountpoint: Path, passphrase_file: Path | None, keyfile: Path | None,
          foreground: bool, log_file: Path | None, verbose: bool, policy_file: Path,
          no_policy: bool, audit_log: Path | None, no_audit: bool, audit_fail_open: bool,
          learn: bool) -> None:
    """Mount the volume BACKING as plaintext on MOUNTPOINT.

    Only processes allowed by the policy (--policy, default /etc/encfs-pacs/policy.toml) get
    plaintext; everything else is denied with EACCES and audited. Returns once the mount is
    ready, unless --foreground is given. SIGTERM or SIGINT to the daemon, or 'encfs-pacs
    unmount', unmounts cleanly; SIGHUP reloads the policy.

    \b
    Example:
      encfs-pacs allow add --policy /etc/encfs-pacs/policy.toml --exe /usr/sbin/Orthanc
      encfs-pacs mount /srv/pacs-encrypted /var/lib/orthanc/db --passphrase-file /root/pacs.pass
    """
    from ..fs import mount as fs_mount  # imports the FUSE binding: only when mounting

    if no_policy and learn:
        raise UsageError("--learn needs a policy to compare against; drop --no-policy")
    if no_audit and (audit_log or audit_fail_open or learn):
        raise UsageError("--no-audit cannot be combined with --audit-log, --audit-fail-open or --learn "
                         "(learn mode reports through the audit trail)")
    audit_path = None if no_audit else (audit_log or default_audit_log(mountpoint)).absolute()
    # Absolute from here on: the daemon's working folder is not ours (libfuse may chdir to /).
    backing, mountpoint = backing.absolute(), mountpoint.absolute()
    store.read_config(backing)  # report a missing or foreign volume before asking for a secret
    fs_mount.check_mountpoint(mountpoint, backing)
    # The daemon must find the policy again on reload, whatever its working folder.
    gate = open_gate(None if no_policy else policy_file.absolute(), NullAudit(), learn=learn)
    volume = store.unlock(backing, secret_from_options(passphrase_file, keyfile, confirm=False))
    if foreground:
        configure_logging(log_file, foreground=True, verbose=verbose)
        fs_mount.serve(volume, mountpoint, gate, audit_log=audit_path, audit_fail_open=audit_fail_open)
        return
    pid = fs_mount.mount_in_background(
        volume, mountpoint, gate, log_file,
        lambda: configure_logging(log_file, foreground=False, verbose=verbose),
        audit_log=audit_path, audit_fail_open=audit_fail_open)
    click.echo(f"mounted {backing} on {mountpoint} (daemon pid {pid})")


def default_audit_log(mountpoint: Path) -> Path:
    name = os.path.abspath(mountpoint).strip("/").replace("/", "-") or "root"
    return DEFAULT_AUDIT_DIR / f"{name}.audit.jsonl"


@click.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))  # no stat: the mount may deny us
def unmount(mountpoint: Path) -> None:
    """Unmount MOUNTPOINT and wait for its daemon to finish.

    \b
    Example:
      encfs-pacs unmount /var/lib/orthanc/db
    """
    from ..fs import mount as fs_mount

    fs_mount.unmount(mountpoint)
    click.echo(f"unmounted {mountpoint}")
