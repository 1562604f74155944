"""Every error encfs-pacs reports to a person, in one place.

Each class carries an exit code and a message written for a hospital admin: what went
wrong and what to do next. The CLI prints ``str(error)`` as one line and exits with
``error.exit_code``; the FUSE adapter maps these to errno values in one function.
Exit codes are part of the CLI contract (scripts check them): never renumber.
"""

from __future__ import annotations

import errno


class EncfsPacsError(Exception):
    """Base class: a problem the user can act on (no traceback is shown)."""

    exit_code = 2
    errno = errno.EIO

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(EncfsPacsError):
    exit_code = 2
    errno = errno.EINVAL


class WrongPassphrase(EncfsPacsError):
    exit_code = 10


class NotAVolume(EncfsPacsError):
    exit_code = 11


class UnsupportedFormat(EncfsPacsError):
    exit_code = 12


class CorruptConfig(EncfsPacsError):
    exit_code = 13


class BackingMissing(EncfsPacsError):
    exit_code = 14
    errno = errno.ENOENT


class BackingNotEmpty(EncfsPacsError):
    exit_code = 15


class MountpointError(EncfsPacsError):
    exit_code = 16


class MountFailed(EncfsPacsError):
    exit_code = 17


class KeySourceError(EncfsPacsError):
    exit_code = 18


class UnmountFailed(EncfsPacsError):
    exit_code = 19


class IntegrityError(EncfsPacsError):
    """Stored ciphertext failed authentication: reads fail with EIO, never return wrong bytes."""

    exit_code = 20
    errno = errno.EIO


class ReservedName(EncfsPacsError):
    """The volume's own metadata directory cannot be reached or shadowed through the mount."""

    exit_code = 2
    errno = errno.EPERM


INTERNAL_ERROR_EXIT_CODE = 70  # EX_SOFTWARE: a bug; the CLI prints a traceback for it


class PolicyInvalid(EncfsPacsError):
    """A policy file that cannot be put in force: the message names file, line and problem."""

    exit_code = 21
    errno = errno.EINVAL


class AccessDenied(EncfsPacsError):
    """The allow-list refused an operation (EACCES to the caller, audited)."""

    exit_code = 22
    errno = errno.EACCES


class AuditUnavailable(EncfsPacsError):
    """The audit log cannot be written: fail closed (the operation is refused with EACCES).

    The message says why (disk full, read-only, removed, key store missing…) and what to do.
    """

    exit_code = 23
    errno = errno.EACCES


class AuditTampered(EncfsPacsError):
    """An audit log failed verification: edited, truncated, reordered, unsealed, foreign or
    incomplete. The message names the first bad record (file, line, seq)."""

    exit_code = 24
    errno = errno.EIO


# Maintenance commands (import, export, fsck, passwd, recovery-key): exit codes 25-29.


class TransferIncomplete(EncfsPacsError):
    """import/export copied what it could; some files failed (listed). Rerun to resume."""

    exit_code = 25


class VolumeDamaged(EncfsPacsError):
    """fsck found files whose stored bytes fail authentication or cannot be a valid file."""

    exit_code = 26


class RecoveryKeyError(EncfsPacsError):
    """A recovery key or share is mistyped, damaged, from another volume or set, or too few."""

    exit_code = 27


class DestinationNotEmpty(EncfsPacsError):
    """export into a folder that already holds files (and --resume was not given)."""

    exit_code = 28


class VolumeBusy(EncfsPacsError):
    """Another maintenance command (import, passwd...) holds the volume's maintenance lock."""

    exit_code = 29


class ConfigInvalid(EncfsPacsError):
    """A mount config file (--config) that cannot be used: names file, key and expectation."""

    exit_code = 30
    errno = errno.EINVAL


class KeyServiceError(EncfsPacsError):
    """The key service (PKCS#11 HSM or KMIP server) refused: wrong PIN or client certificate,
    the key missing, revoked or destroyed, or a different key. Nothing is mounted or created."""

    exit_code = 32


class KeyServiceUnreachable(KeyServiceError):
    """The key service cannot be asked now (server down or refusing connections, TLS failure,
    PKCS#11 module missing): a retry may work once it is back. Running mounts are unaffected."""

    exit_code = 31
