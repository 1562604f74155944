"""Operator commands: create a volume, mount it, unmount it."""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
from pathlib import Path

import click
from click.core import ParameterSource

from .. import config as config_schema
from .. import store
from ..access import NullAudit, open_gate
from ..audit import forward
from ..crypto import keys, volume_config
from ..errors import MountFailed, UsageError
from ..maintenance import events
from ..policy.loader import DEFAULT_POLICY_PATH
from . import UnstattedPath
from .keysource import (
    credential_option,
    keyfile_option,
    kms_option,
    passphrase_file_option,
    secret_from_options,
)

DEFAULT_AUDIT_DIR = Path("/var/log/encfs-pacs")


@click.command()
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@passphrase_file_option
@keyfile_option
@kms_option
@click.option("--chunk-size", type=int, default=volume_config.DEFAULT_CHUNK_SIZE, show_default=True,
              help="Plaintext bytes per encrypted chunk (power of two, 4096..1048576).")
@click.option("--scrypt-log-n", type=int, default=keys.DEFAULT_SCRYPT_LOG_N, show_default=True,
              hidden=True, help="scrypt cost as log2(N); lower only for tests and demos.")
@click.option("--print-recovery-key", is_flag=True,
              help="Also print a recovery key (the master key as typeable lines) for the safe.")
@click.option("--shares", type=click.IntRange(1, 255), default=1, show_default=True,
              help="With --print-recovery-key: split it among N key holders.")
@click.option("--threshold", type=click.IntRange(1, 255), default=None,
              help="With --print-recovery-key: any M shares recover the key (default: all N).")
def init(backing: Path, passphrase_file: Path | None, keyfile: Path | None, kms: str | None, chunk_size: int,
         scrypt_log_n: int, print_recovery_key: bool, shares: int, threshold: int | None) -> None:
    """Create a new encrypted volume in the empty folder BACKING.

    \b
    Example:
      encfs-pacs init /srv/pacs-encrypted --passphrase-file /root/pacs.pass
      encfs-pacs init /srv/pacs-encrypted --print-recovery-key --shares 5 --threshold 3
      encfs-pacs init /srv/pacs-encrypted --print-recovery-key --kms \\
        'pkcs11:token=pacs;object=pacs-volume?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/encfs-pacs/hsm.pin'
    """
    from ..audit import create_anchor
    from ..maintenance import rekey
    from .maintenance import echo_recovery_key, record

    if not print_recovery_key and (shares != 1 or threshold is not None):
        raise UsageError("--shares and --threshold go with --print-recovery-key")
    needed = shares if threshold is None else threshold
    if not needed <= shares or (needed == 1 and shares > 1):  # before anything is created
        raise UsageError("give --threshold between 2 and --shares (or --shares 1 for a single key)")
    secret = secret_from_options(passphrase_file, keyfile, confirm=True, kms=kms)
    config = store.create_volume(backing, secret, chunk_size=chunk_size, scrypt_log_n=scrypt_log_n)
    master_key = store.unlock(backing, secret).master_key
    anchor = create_anchor(backing, master_key)
    click.echo(f"created volume in {backing} (key ID {config.key_id.hex()}, "
               f"{config.chunk_size // 1024} KiB chunks)")
    click.echo(f"audit anchor (public key for 'encfs-pacs audit verify --anchor'): {anchor.hex()}")
    if secret.service is not None:
        click.echo(f"the volume's key is sealed by {secret.service}: without that key (or a recovery "
                   "key) the images cannot be decrypted; back it up by the key service's own procedure")
    else:
        click.echo("keep the passphrase or keyfile safe: without it the images cannot be decrypted")
    record(events.authenticate(events.make_event(
        "volume-created", backing=str(backing.absolute()), key_id=config.key_id.hex(),
        chunk_size=config.chunk_size, kdf=config.kdf, audit_anchor=anchor.hex(),
        recovery_key_printed=print_recovery_key), master_key))
    if print_recovery_key:
        _, made, event = rekey.create_recovery_key(backing, rekey.OldSecret(secret), shares, needed)
        record(event)
        echo_recovery_key(backing, config.key_id, made, needed)


def syslog_handler(target: str) -> logging.Handler:
    """A handler for a ``syslog`` key that is a local socket path (network collectors are served
    by the mount daemon's forwarder, encfs_pacs/audit/forward.py, which also sends the audit trail)."""
    # Python defers a failed connect to every later emit (a traceback per line): check first.
    if not stat.S_ISSOCK(os.stat(target).st_mode):
        raise OSError(f"{target} is not a socket")
    return logging.handlers.SysLogHandler(address=target)


def configure_logging(log_file: Path | None, foreground: bool, verbose: bool,
                      syslog: str | None = None) -> None:
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
    if syslog is not None and not forward.is_network_target(syslog):
        try:
            extra = syslog_handler(syslog)
        except OSError as exc:  # the daemon still logs to its main handler
            root.warning("cannot log to syslog target %s: %s", syslog, exc)
        else:
            extra.setFormatter(logging.Formatter(
                "encfs-pacs[%(process)d]: %(levelname)s %(name)s: %(message)s"))
            root.addHandler(extra)


# Command-line parameter -> config key (the rest have the same name).
_PARAM_TO_KEY = {"policy_file": "policy"}


def _command_line_values(ctx: click.Context) -> dict[str, object]:
    """The options the user actually typed (not click's defaults): they override the file."""
    given = {}
    for name, value in ctx.params.items():
        key = _PARAM_TO_KEY.get(name, name)
        if key in config_schema.SCHEMA and ctx.get_parameter_source(name) in (
                ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) and value is not None:
            given[key] = value.absolute() if isinstance(value, Path) else value
    return given


def resolve_mount_config(ctx: click.Context, config_file: Path | None) -> config_schema.MountConfig:
    """The file's values (if --config), overridden by what was typed, validated as a whole."""
    if config_file is None:
        base = config_schema.MountConfig(config_schema.defaults(), "command line")
        return config_schema.merge(base, _command_line_values(ctx), error=UsageError)
    return config_schema.merge(config_schema.load(config_file), _command_line_values(ctx))


def unlock_volume(backing: Path, settings: config_schema.MountConfig) -> store.Volume:
    source = settings.key_source()
    if source is not None and source[0] == "recovery_key_file":
        from ..maintenance import rekey

        return rekey.open_volume(backing, rekey.OldSecret(recovery_file=source[1]))
    return store.unlock(backing, secret_from_options(
        settings["passphrase_file"], settings["keyfile"], confirm=False, credential=settings["credential"],
        kms=settings["kms"], volume=store.read_config(backing)))


@click.command()
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Mount configuration file (TOML, see config/encfs-pacs.toml.example). "
                   "BACKING, MOUNTPOINT and options given on the command line override it.")
@passphrase_file_option
@keyfile_option
@credential_option
@kms_option
@click.option("--recovery-key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Unlock with the recovery key file (share lines) instead of the passphrase.")
@click.option("--foreground", "-f", is_flag=True,
              help="Stay in the foreground (systemd Type=notify: READY=1 once usable).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Daemon log (default: stderr in the foreground, syslog in the background).")
@click.option("--syslog", metavar="TARGET",
              help='Syslog collector "udp://HOST:PORT" or "tcp://HOST:PORT": receives every audit record '
                   '(RFC 5424) and the daemon log. A socket path ("/dev/log"): the daemon log only.')
@click.option("--syslog-hostname", metavar="NAME",
              help="HOSTNAME in the messages to the collector (default: this host's name).")
@click.option("--verbose/--no-verbose", "-v", default=None, help="Log debug details.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, path_type=Path),
              default=DEFAULT_POLICY_PATH, show_default=True,
              help="Allow-list in force (reloaded when it changes, or on SIGHUP).")
@click.option("--no-policy/--with-policy", default=None,
              help="Give every process plaintext (testing only: no protection against ransomware); "
                   "--with-policy overrides no_policy = true of a --config file.")
@click.option("--audit-log", type=click.Path(dir_okay=False, path_type=Path),
              help="Append-only, tamper-evident access log (default: "
                   "/var/log/encfs-pacs/<mountpoint>.audit.jsonl).")
@click.option("--no-audit/--with-audit", default=None,
              help="Keep no audit trail (testing only); --with-audit overrides the file's no_audit.")
@click.option("--audit-fail-open/--audit-fail-closed", default=None,
              help="Keep serving when the audit log cannot be written (default: refuse access, "
                   "--audit-fail-closed).")
@click.option("--learn/--no-learn", default=None,
              help="Deny nothing; record every access the policy would deny "
                   "(then: encfs-pacs policy suggest); --no-learn overrides the file's learn = true.")
@click.option("--shared-storage/--single-host", default=None,
              help="Other servers mount the same backing folder (NAS): close-to-open consistency "
                   "and file locks instead of kernel caching (docs/shared-storage.md); "
                   "--single-host overrides the file's shared_storage = true.")
@click.option("--audit-host", metavar="NAME",
              help="This server's own audit key store and anchor in the volume (needed when "
                   "several servers mount one volume with audit logs).")
@click.pass_context
def mount(ctx: click.Context, config_file: Path | None, foreground: bool, **_: object) -> None:
    """Mount the volume BACKING as plaintext on MOUNTPOINT.

    Only processes allowed by the policy (--policy, default /etc/encfs-pacs/policy.toml) get
    plaintext; everything else is denied with EACCES and audited. Returns once the mount is
    ready, unless --foreground is given. SIGTERM or SIGINT to the daemon, or 'encfs-pacs
    unmount', unmounts cleanly; SIGHUP reloads the policy.

    With --config FILE, BACKING, MOUNTPOINT and every option come from the file; whatever is
    also given on the command line overrides the file (a key source given here replaces the
    file's).

    \b
    Example:
      encfs-pacs allow add --policy /etc/encfs-pacs/policy.toml --exe /usr/sbin/Orthanc
      encfs-pacs mount /srv/pacs-encrypted /var/lib/orthanc/db --passphrase-file /root/pacs.pass
      encfs-pacs mount --config /etc/encfs-pacs/orthanc.toml --foreground   # systemd
    """
    settings = resolve_mount_config(ctx, config_file)
    _mount(settings, foreground)


def _mount(settings: config_schema.MountConfig, foreground: bool) -> None:
    from ..fs import mount as fs_mount  # imports the FUSE binding: only when mounting
    from ..fs import notify

    # Absolute from here on: the daemon's working folder is not ours (libfuse may chdir to /).
    backing, mountpoint = settings["backing"].absolute(), settings["mountpoint"].absolute()
    audit_path = None if settings["no_audit"] else (
        settings["audit_log"] or default_audit_log(mountpoint)).absolute()
    log_file, verbose, syslog = settings["log_file"], settings["verbose"], settings["syslog"]
    collector = syslog if syslog is not None and forward.is_network_target(syslog) else None
    store.read_config(backing)  # report a missing or foreign volume before asking for a secret
    fs_mount.check_mountpoint(mountpoint, backing)
    # The daemon must find the policy again on reload, whatever its working folder.
    gate = open_gate(None if settings["no_policy"] else settings["policy"].absolute(), NullAudit(),
                     learn=settings["learn"])
    volume = unlock_volume(backing, settings)
    if settings["shared_storage"]:
        try:
            volume.enable_shared_storage()
        except OSError as exc:
            raise MountFailed(
                f"--shared-storage needs advisory file locks on {backing}, which refuses them "
                f"({exc.strerror}); on NFS mount with locking (NFSv4, or lockd for NFSv3; not 'nolock')"
            ) from None
    audit_host = settings["audit_host"]
    recovery = _queue_recovery_use(volume, mountpoint, settings)
    if foreground:
        configure_logging(log_file, foreground=True, verbose=verbose, syslog=syslog)
        try:
            fs_mount.serve(volume, mountpoint, gate,
                           on_ready=lambda: notify.ready(f"serving {backing} on {mountpoint}"),
                           audit_log=audit_path, audit_fail_open=settings["audit_fail_open"],
                           syslog=collector, syslog_hostname=settings["syslog_hostname"],
                           audit_host=audit_host)
        finally:
            # Reached once the kernel mount is gone; the audit log is sealed by now.
            notify.stopping(f"unmounted {mountpoint}")
        return
    pid = fs_mount.mount_in_background(
        volume, mountpoint, gate, log_file,
        lambda: configure_logging(log_file, foreground=False, verbose=verbose, syslog=syslog),
        audit_log=audit_path, audit_fail_open=settings["audit_fail_open"],
        syslog=collector, syslog_hostname=settings["syslog_hostname"], audit_host=audit_host)
    click.echo(f"mounted {backing} on {mountpoint} (daemon pid {pid})")
    if recovery is not None:
        # The daemon records the spool before it serves, so by now the event is in the trail.
        where = ("not recorded: the spool could not be written" if isinstance(recovery, str) else
                 events.QUEUED.format(backing=backing) if recovery.path.exists() else
                 "recorded in the audit trail of this mount")
        click.echo(f"audit: use of the recovery key {where}", err=True)


def _queue_recovery_use(volume: store.Volume, mountpoint: Path,
                        settings: config_schema.MountConfig) -> events.Queued | str | None:
    """A mount unlocked with the recovery key is a break-glass event: queued (authenticated)
    for the trail before the daemon starts, whose first spool pass records it."""
    source = settings.key_source()
    if source is None or source[0] != "recovery_key_file":
        return None
    return events.queue(events.authenticate(events.make_event(
        "recovery-key-used", backing=str(volume.backing.absolute()), purpose="mount",
        mountpoint=str(mountpoint), key_id=volume.config.key_id.hex(), unlocked_with=events.RECOVERY_KEY),
        volume.master_key))


def default_audit_log(mountpoint: Path) -> Path:
    name = os.path.abspath(mountpoint).strip("/").replace("/", "-") or "root"
    return DEFAULT_AUDIT_DIR / f"{name}.audit.jsonl"


@click.command()
@click.argument("mountpoint", type=UnstattedPath(), required=False)  # no stat: may deny us
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Unmount the mountpoint named in this mount configuration file (systemd ExecStop=).")
def unmount(mountpoint: Path | None, config_file: Path | None) -> None:
    """Unmount MOUNTPOINT and wait for its daemon to finish.

    \b
    Example:
      encfs-pacs unmount /var/lib/orthanc/db
      encfs-pacs unmount --config /etc/encfs-pacs/orthanc.toml
    """
    from ..fs import mount as fs_mount

    if mountpoint is None and config_file is None:
        raise UsageError("give MOUNTPOINT or --config FILE")
    if mountpoint is None:
        mountpoint = config_schema.load(config_file)["mountpoint"]
    fs_mount.unmount(mountpoint)
    click.echo(f"unmounted {mountpoint}")
