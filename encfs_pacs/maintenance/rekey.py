"""Changing what unlocks a volume (passwd) and printable recovery keys.

Neither touches an image: the master key stays, only its wrapping changes (passwd) or a
copy of it is printed for the safe (recovery key). Each returns an audit event (a dict)
for :func:`encfs_pacs.maintenance.events.audit_event`, authenticated with the master key.
"""

from __future__ import annotations

import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import store
from ..crypto import keys, recovery_key
from ..crypto.volume_config import VolumeConfig
from ..errors import KeySourceError, UsageError
from .events import Event, authenticate, make_event
from .locking import maintenance_lock

RECOVERY = "recovery-key"


@dataclass(frozen=True)
class OldSecret:
    """How the current key is proven: a passphrase/keyfile, or a recovery key file."""

    secret: store.Secret | None = None
    recovery_file: Path | None = None

    @property
    def kind(self) -> str:
        return RECOVERY if self.recovery_file is not None else (self.secret.kind if self.secret else "none")


def read_recovery_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise KeySourceError(f"recovery key file {path} does not exist") from None
    except PermissionError:
        raise KeySourceError(f"cannot read recovery key file {path}: permission denied") from None
    except IsADirectoryError:
        raise KeySourceError(f"recovery key file {path} is a folder, not a file") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"encfs-pacs: warning: recovery key file {path} is readable by other users; chmod 600 it",
              file=sys.stderr)
    return text


def master_key_from_recovery_file(backing: Path, path: Path) -> bytes:
    """The master key from a file of recovery shares (one line each, any M of the set).

    RecoveryKeyError if a share is mistyped, of another volume or set, or too few are given;
    never a wrong key (the result is checked against the volume's key ID)."""
    config = store.read_config(backing)
    return recovery_key.recover(recovery_key.parse_text(read_recovery_file(path)), config.key_id)


def unlock_master(backing: Path, old: OldSecret) -> tuple[VolumeConfig, bytes]:
    if old.recovery_file is not None:
        return store.read_config(backing), master_key_from_recovery_file(backing, old.recovery_file)
    if old.secret is None:
        raise UsageError("no current passphrase, keyfile or recovery key given")
    return store.read_master_key(backing, old.secret)


def open_volume(backing: Path, old: OldSecret) -> store.Volume:
    """A volume unlocked by a passphrase, keyfile or recovery key file."""
    if old.recovery_file is not None:
        master = master_key_from_recovery_file(backing, old.recovery_file)
        return store.unlock_with_master_key(backing, master)
    if old.secret is None:
        raise UsageError("no passphrase, keyfile or recovery key given")
    return store.unlock(backing, old.secret)


def change_secret(backing: Path, old: OldSecret, new: store.Secret,
                  scrypt_log_n: int = keys.DEFAULT_SCRYPT_LOG_N) -> Event:
    """passwd: unwrap with ``old`` and rewrap under ``new`` (fresh salt), atomically.

    Under the maintenance lock, so two passwd runs cannot interleave their read and write.
    Returns the audit event."""
    with maintenance_lock(backing, exclusive=True, what="passwd"):
        before, master = unlock_master(backing, old)
        after = store.rewrap_master_key(backing, master, new, scrypt_log_n)
    return authenticate(make_event(
        "volume-key-changed", outcome="success", backing=str(backing.resolve()),
        key_id=after.key_id.hex(), unlocked_with=old.kind, old_kdf=before.kdf, new_kdf=after.kdf,
        data_reencrypted=False), master)


def create_recovery_key(backing: Path, old: OldSecret, shares: int, threshold: int
                        ) -> tuple[VolumeConfig, list[recovery_key.Share], Event]:
    """Shares of the master key, any ``threshold`` of ``shares`` recover it; and the event."""
    if not 1 <= threshold <= shares <= 255:
        raise UsageError("need 1 <= --threshold <= --shares <= 255")
    if threshold == 1 and shares > 1:
        raise UsageError("--threshold 1 would make every share the whole key: "
                         "print one key (--shares 1) and store copies, or use --threshold 2 or more")
    config, master = unlock_master(backing, old)
    made = recovery_key.make_shares(master, config.key_id, shares, threshold)
    event = make_event("recovery-key-created", outcome="success", backing=str(backing.resolve()),
                       key_id=config.key_id.hex(), unlocked_with=old.kind, shares=shares,
                       threshold=threshold)
    return config, made, authenticate(event, master)
