"""The encrypted volume: plaintext file operations on top of the ciphertext backing folder.

This module knows nothing of FUSE. It takes mount-relative paths ("/a/b.dcm"), returns
plain Python values and raises exceptions (OSError from the backing file system, or an
EncfsPacsError such as IntegrityError); the FUSE adapter maps those to errno values.

Concurrency: every open backing inode has one ``FileState`` shared by all handles and hard
links to it. Its lock serialises read-modify-write of chunks against reads, so a reader never
sees half of a rewritten chunk, and its cached plaintext size stays exact while the file is
open. On a single-host mount readers of one inode run side by side (``FileState.readers``,
the kernel's readahead sends several at once) and a writer waits for them and runs alone.
Different files never contend.

Shared storage (``Volume.enable_shared_storage``, docs/shared-storage.md): when other mounts,
possibly on other hosts, use the same backing folder, every read and write also takes an
advisory OFD lock on the backing file (read lock / write lock) and re-checks the backing file's
size, mtime and ctime under it: if another mount changed the file, the cached size and per-file
header are dropped and read again. A 0-byte backing file is then an empty file whose creator
has not written its header yet (whoever takes the write lock first writes it). Applications'
fcntl locks are forwarded to the backing file too (OpenFile.set_lock).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hmac
import json
import os
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, Protocol

from . import durable
from .crypto import keys, volume_config
from .crypto.chunks import (
    CHUNK_OVERHEAD,
    HEADER_BYTES,
    Buffer,
    FileCipher,
    Layout,
    decode_header,
    encode_header,
    new_file_id,
)
from .crypto.volume_config import (
    KDF_KEYFILE,
    KDF_SCRYPT,
    SERVICE_MECHANISMS,
    ServiceKey,
    VolumeConfig,
    service_associated_data,
)
from .errors import (
    BackingMissing,
    BackingNotEmpty,
    CorruptConfig,
    IntegrityError,
    KeyServiceError,
    NotAVolume,
    ReservedName,
    UsageError,
    WrongPassphrase,
)

META_DIR = ".encfs-pacs"  # at the backing root; hidden from and unreachable through the mount
CONFIG_FILE = "volume.json"
ORPHANS_DIR = "orphans"  # in META_DIR: unlinked-but-open files whose directory was removed
# libfuse renames a file that is unlinked while open to ".fuse_hidden<id>" and deletes it at the
# last close; such names are internal and never listed.
FUSE_HIDDEN_PREFIX = ".fuse_hidden"
GROW_BATCH = 64  # chunks encrypted per write when a file grows by truncate/sparse write (4 MiB at 64K)
# Shared storage: the byte range of the backing file our advisory locks cover. Not "to the end
# of the file" (l_len 0): applications' own fcntl locks are forwarded above it (plaintext
# offset + LOCK_SPAN, OpenFile.set_lock), where they never conflict with ours.
LOCK_SPAN = 1 << 62
# Shared storage, page cache kept across opens (Volume.cache_still_valid): a file is trusted
# unchanged by its size, mtime and ctime only once it had been quiet this long when they were
# taken, because a second change within one timestamp tick (coarse file system clocks) or
# within the clock skew between hosts would leave all three the same (git's "racy clean" rule).
CACHE_QUIET_NS = 3 * 10**9
CACHE_MARKS_MAX = 100_000  # remembered (file, name) signatures; forgetting one only costs a re-read
PREFETCH_BYTES = 1 << 20  # what a read-only open asks the disk for at once (Volume.open)
# Shared storage: applications' fcntl locks waiting at once (each blocks a daemon thread; the
# mount has 16). More waiters get ENOLCK instead of stalling every other request.
MAX_LOCK_WAITERS = 8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


class KeyService(Protocol):
    """A key that never leaves a key service (an HSM through PKCS#11, a KMIP server): it seals
    and unseals the volume's 32-byte wrapping key. Implemented in encfs_pacs.keyservice."""

    kind: str  # volume_config.KDF_PKCS11 or KDF_KMIP
    reference: dict[str, str | int]  # non-secret: recorded in the volume config

    def seal(self, plaintext: bytes, associated_data: bytes) -> tuple[bytes, bytes]:
        """(iv, ciphertext); KeyServiceError (or KeyServiceUnreachable) if it cannot."""
        ...

    def unseal(self, iv: bytes, sealed: bytes, associated_data: bytes) -> bytes:
        ...


@dataclass(frozen=True)
class Secret:
    """What unlocks a volume. ``kind`` is "passphrase", "keyfile", or a key service's kind
    ("pkcs11", "kmip": then ``service`` does the work and ``value`` is empty). ``value`` is
    never logged."""

    kind: str
    value: bytes
    service: KeyService | None = None

    def __repr__(self) -> str:  # keeps secrets out of tracebacks and debug logs
        return f"Secret(kind={self.kind!r}, value=<{len(self.value)} bytes hidden>)"

    @classmethod
    def from_service(cls, service: KeyService) -> Secret:
        return cls(service.kind, b"", service)


# ---------------------------------------------------------------------------- volume lifecycle


def config_path(backing: Path) -> Path:
    return backing / META_DIR / CONFIG_FILE


def _write_file_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """durable.write_file_atomically, the folder synced through this module's name (tests
    simulate a crash between the rename and the folder sync by replacing it)."""
    durable.write_file_atomically(path, data, mode, sync_folder=False)
    _fsync_dir(path.parent)


_fsync_dir = durable.fsync_dir


def _describe(kind: str) -> str:
    if kind in SERVICE_MECHANISMS:
        return f"its {kind} key service (--kms, see docs/key-services.md)"
    wanted = {"passphrase": "a passphrase (--passphrase-file or the prompt)", "keyfile": "--keyfile"}
    return wanted.get(kind, kind)


def _wrapping_key(secret: Secret, config: VolumeConfig) -> bytes:
    if config.service is not None and secret.service is not None and secret.kind == config.kdf:
        return secret.service.unseal(config.service.iv, config.service.sealed,
                                     service_associated_data(config.key_id))
    if config.kdf == KDF_SCRYPT and secret.kind == "passphrase":
        assert config.scrypt is not None
        return keys.wrapping_key_from_passphrase(secret.value, config.scrypt)
    if config.kdf == KDF_KEYFILE and secret.kind == "keyfile":
        return keys.wrapping_key_from_keyfile(secret.value)
    raise UsageError(f"this volume is unlocked with {_describe(config.kdf)}, not {_describe(secret.kind)}")


def _new_wrap(secret: Secret, key_id: bytes, scrypt_log_n: int
              ) -> tuple[str, keys.ScryptParams | None, ServiceKey | None, bytes]:
    """The config's kdf, scrypt and service fields for a new wrap under ``secret``, and its
    wrapping key. A key service seals a fresh random wrapping key (envelope): the master key's
    own wrap, and so its associated data, stay exactly as for a keyfile."""
    if secret.service is not None:
        wrapping = keys.new_wrapping_key()
        iv, sealed = secret.service.seal(wrapping, service_associated_data(key_id))
        service = ServiceKey(reference=dict(secret.service.reference), iv=iv, sealed=sealed)
        return secret.kind, None, service, wrapping
    if secret.kind == "passphrase":
        scrypt = keys.ScryptParams.fresh(scrypt_log_n)
        return KDF_SCRYPT, scrypt, None, keys.wrapping_key_from_passphrase(secret.value, scrypt)
    return KDF_KEYFILE, None, None, keys.wrapping_key_from_keyfile(secret.value)


def _unwrap(config: VolumeConfig, secret: Secret) -> bytes:
    """The master key. For a key-service volume a wrong result means the service holds another
    key under that name (or the config was edited): said as such, not as a wrong passphrase."""
    wrapping = _wrapping_key(secret, config)
    try:
        return keys.unwrap_master_key(config.wrap_nonce, config.wrapped_key, wrapping,
                                      config.wrap_associated_data(), config.key_id)
    except WrongPassphrase:
        if config.service is None:
            raise
        raise KeyServiceError(
            f"the {config.kdf} key service answered, but its key does not open this volume: the key "
            "named in the volume config was replaced by another of the same name, or the config was "
            "altered") from None


def create_volume(
    backing: Path,
    secret: Secret,
    chunk_size: int = volume_config.DEFAULT_CHUNK_SIZE,
    scrypt_log_n: int = keys.DEFAULT_SCRYPT_LOG_N,
) -> VolumeConfig:
    """Create an empty volume in ``backing`` (created 0700 if missing; must be empty)."""
    if backing.exists():
        if not backing.is_dir():
            raise UsageError(f"{backing} exists and is not a directory")
        if any(backing.iterdir()):
            raise BackingNotEmpty(
                f"{backing} is not empty: a volume is created in an empty folder "
                "(to encrypt existing images into a new volume, use 'encfs-pacs import')"
            )
    elif not backing.parent.is_dir():
        raise BackingMissing(f"cannot create {backing}: its parent folder {backing.parent} does not exist")
    if chunk_size not in volume_config.ALLOWED_CHUNK_SIZES:
        raise UsageError(f"chunk size {chunk_size} is not a power of two between 4096 and 1048576")
    if not keys.MIN_SCRYPT_LOG_N <= scrypt_log_n <= 24:
        raise UsageError(f"scrypt cost 2^{scrypt_log_n} is outside 2^{keys.MIN_SCRYPT_LOG_N}..2^24")
    master = keys.new_master_key()
    # Wrapped before anything is created: a key service that is down or refuses leaves no folder.
    kdf, scrypt, service, wrapping = _new_wrap(secret, keys.key_id(master), scrypt_log_n)
    draft = VolumeConfig(
        key_id=keys.key_id(master), kdf=kdf, scrypt=scrypt, service=service, wrap_nonce=b"", wrapped_key=b"",
        chunk_size=chunk_size, extra={"created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
    )
    nonce, sealed = keys.wrap_master_key(master, wrapping, draft.wrap_associated_data())
    config = VolumeConfig(**{**draft.__dict__, "wrap_nonce": nonce, "wrapped_key": sealed})
    backing.mkdir(mode=0o700, exist_ok=True)
    os.chmod(backing, 0o700)  # mkdir honours umask and an existing folder keeps its mode
    meta = backing / META_DIR
    meta.mkdir(mode=0o700)
    _write_file_atomically(config_path(backing), config.to_json())
    _fsync_dir(backing)
    return config


def read_config(backing: Path) -> VolumeConfig:
    if not backing.exists():
        raise BackingMissing(f"backing folder {backing} does not exist")
    if not backing.is_dir():
        raise NotAVolume(f"{backing} is not a folder, so it is not an encfs-pacs volume")
    path = config_path(backing)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotAVolume(
            f"{backing} is not an encfs-pacs volume (no {META_DIR}/{CONFIG_FILE}); "
            "create one with 'encfs-pacs init'"
        ) from None
    except PermissionError:
        raise CorruptConfig(f"cannot read {path}: permission denied (run as the volume's owner)") from None
    return volume_config.parse(raw)


def unlock(backing: Path, secret: Secret) -> Volume:
    config = read_config(backing)
    return Volume(backing, config, _unwrap(config, secret))


def read_master_key(backing: Path, secret: Secret) -> tuple[VolumeConfig, bytes]:
    """The volume's config and unwrapped master key (for passwd and recovery-key creation)."""
    config = read_config(backing)
    return config, _unwrap(config, secret)


def unlock_with_master_key(backing: Path, master_key: bytes) -> Volume:
    """Open a volume with its master key itself (from a recovery key), not a wrapping secret."""
    config = read_config(backing)
    if not hmac.compare_digest(keys.key_id(master_key), config.key_id):
        raise WrongPassphrase("cannot unlock the volume: this key does not match the volume's key ID")
    return Volume(backing, config, master_key)


def rewrap_master_key(backing: Path, master_key: bytes, new_secret: Secret,
                      scrypt_log_n: int = keys.DEFAULT_SCRYPT_LOG_N) -> VolumeConfig:
    """Seal the master key under ``new_secret`` (fresh salt and nonce) and replace the config
    atomically: after a crash at any point either the old or the new secret unlocks the volume.

    Nothing but the KDF and the wrapped key changes: the key ID, chunk size, features and
    informational fields stay, so no file is re-encrypted. The new document is checked to
    unlock with ``new_secret`` before it replaces the old one, and again after."""
    old = read_config(backing)
    if not hmac.compare_digest(keys.key_id(master_key), old.key_id):
        raise WrongPassphrase("cannot change the key: the master key does not match this volume")
    if not keys.MIN_SCRYPT_LOG_N <= scrypt_log_n <= 24:
        raise UsageError(f"scrypt cost 2^{scrypt_log_n} is outside 2^{keys.MIN_SCRYPT_LOG_N}..2^24")
    kdf, scrypt, service, wrapping = _new_wrap(new_secret, old.key_id, scrypt_log_n)
    draft = VolumeConfig(**{**old.__dict__, "kdf": kdf, "scrypt": scrypt, "service": service})
    nonce, sealed = keys.wrap_master_key(master_key, wrapping, draft.wrap_associated_data())
    new = VolumeConfig(**{**draft.__dict__, "wrap_nonce": nonce, "wrapped_key": sealed})
    document = new.to_json()
    _check_unlocks(volume_config.parse(document), new_secret)  # never write a config we cannot open
    _write_file_atomically(config_path(backing), document)
    _check_unlocks(read_config(backing), new_secret)
    return new


def _check_unlocks(config: VolumeConfig, secret: Secret) -> None:
    _unwrap(config, secret)


# ---------------------------------------------------------------------------- open files


Signature = tuple[int, int, int]


def signature(st: os.stat_result) -> Signature:
    """What changes whenever a backing file's bytes change (the NFS client's revalidation key)."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _flock(kind: int, start: int, length: int) -> bytes:
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, start, length, 0)  # struct flock, l_pid 0


def _range_lock(fd: int, kind: int) -> None:
    """Take (F_RDLCK/F_WRLCK, waiting) or drop (F_UNLCK) our OFD lock on a backing file.

    OFD locks belong to the open file description, not the process: closing another
    descriptor of the same file does not drop them (as it would a classic POSIX lock), and
    NFSv4 forwards them to the server, so mounts on other hosts see them."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock(kind, 0, LOCK_SPAN))


class FileState:
    """Shared by every handle on one backing inode: lock, cipher and exact plaintext size."""

    def __init__(self, volume: Volume, fd: int, key: tuple[int, int]) -> None:
        self.volume = volume
        self.key = key
        self.lock = threading.RLock()
        # Reads of a single-host mount share the inode: the kernel's readahead sends several
        # requests for one file at once, and one exclusive lock made their backing preads
        # queue behind one another. A reader registers here with ``lock`` held (so no writer
        # is active) and runs without it; a writer holds ``lock`` and waits for the readers.
        self.readers = 0
        self.readers_done = threading.Condition(threading.Lock())
        self.refs = 0
        self.lock_depth = 0  # nesting of OpenFile._locked (changed only with self.lock held)
        # Shared storage: applications' lock owner -> [backing descriptor holding its locks,
        # requests of that owner in progress] (OpenFile.set_lock)
        self.owners: dict[int, list[int]] = {}
        self._cipher: FileCipher | None = None
        self.header = b""  # the per-file header self._cipher was made from
        self.damage: IntegrityError | None = None
        self.size = 0
        self.seen: Signature = (0, 0, 0)  # the backing file as it was when size was derived
        self.load(os.fstat(fd))

    def load(self, st: os.stat_result) -> None:
        """Derive the plaintext size from the backing file's stored size."""
        self.seen = signature(st)
        self.damage = None
        if st.st_size == 0 and self.volume.shared:
            self.size = 0  # just created by another mount, which has not written the header yet
            return
        # A length no valid file can have (cut inside the first chunk, say) would otherwise
        # read as a short or empty file: remember it and refuse every access until rewritten.
        try:
            self.size = self.volume.layout.plaintext_size(st.st_size)
        except IntegrityError as exc:
            self.damage = exc
            self.size = self.volume.layout.plaintext_size_lenient(st.st_size)

    def refresh(self, st: os.stat_result) -> None:
        """Shared storage, under the file lock: forget what another mount has changed since."""
        if signature(st) != self.seen:
            self.reload(st)

    def reload(self, st: os.stat_result) -> None:
        """Size and header from the backing file again (an O_TRUNC elsewhere gave the file a
        new file ID and header)."""
        self.load(st)
        self.reset_cipher(None, b"")

    def size_for(self, st: os.stat_result) -> int | None:
        """The cached size if it still describes ``st`` (always so on a single-host mount)."""
        if not self.volume.shared or signature(st) == self.seen:
            return self.size
        return None

    @property
    def blank(self) -> bool:
        """Shared storage: a 0-byte backing file (created elsewhere, header not yet written)."""
        return self.volume.shared and self.seen[0] == 0

    def close_owners(self) -> None:
        """The last handle closed: every lock of every owner goes with its descriptor."""
        with self.lock:
            owners, self.owners = self.owners, {}
        for fd, _busy in owners.values():
            os.close(fd)

    def check(self) -> None:
        if self.damage is not None:
            raise self.damage

    def cipher(self, fd: int) -> FileCipher:
        if self._cipher is None:
            header = os.pread(fd, HEADER_BYTES, 0)
            self._cipher = self.volume.cipher_for(decode_header(header))
            self.header = header
        return self._cipher

    def reset_cipher(self, cipher: FileCipher | None, header: bytes) -> None:
        self._cipher = cipher
        self.header = header

    def recheck_header(self, fd: int) -> None:
        """Shared storage, before a write: a truncation and rewrite by another mount to the
        same stored size within one timestamp tick leaves the signature unchanged but gives
        the file a new ID; chunks sealed under the old one would be unreadable."""
        if self._cipher is not None and os.pread(fd, HEADER_BYTES, 0) != self.header:
            self._cipher = None


class OpenFile:
    """One open handle: a read-write backing descriptor plus the inode's shared state."""

    def __init__(self, volume: Volume, fd: int, state: FileState, flags: int) -> None:
        self.volume = volume
        self.fd = fd
        self.state = state
        self.append = bool(flags & os.O_APPEND)
        self.layout = volume.layout
        # Chosen once per open, not per read or write: a volume is switched to shared storage
        # before it is mounted, and the single-host flavour is one context manager less.
        self._locked: Callable[..., contextlib.AbstractContextManager[None]] = (
            self._locked_on_shared_storage if volume.shared else self._shared_or_exclusive)

    @contextlib.contextmanager
    def _locked_on_shared_storage(self, write: bool) -> Iterator[None]:
        """The inode's thread lock and the backing file's advisory lock, under which the
        cached size and header are re-checked against the backing file."""
        state = self.state
        with state.lock:
            outer = state.lock_depth == 0
            if outer:
                _range_lock(self.fd, fcntl.F_WRLCK if write else fcntl.F_RDLCK)
            state.lock_depth += 1
            try:
                if outer:
                    state.refresh(os.fstat(self.fd))
                    if write:
                        state.recheck_header(self.fd)
                yield
                if write and outer:
                    state.seen = signature(os.fstat(self.fd))  # our own change is not news
            finally:
                state.lock_depth -= 1
                if outer:
                    _range_lock(self.fd, fcntl.F_UNLCK)

    @contextlib.contextmanager
    def _shared_or_exclusive(self, write: bool) -> Iterator[None]:
        """Single-host mount: readers of one inode run side by side, a writer alone."""
        state = self.state
        if write:
            with state.lock:
                with state.readers_done:
                    while state.readers:
                        state.readers_done.wait()
                yield
            return
        with state.lock, state.readers_done:
            state.readers += 1
        try:
            yield
        finally:
            with state.readers_done:
                state.readers -= 1
                if not state.readers:
                    state.readers_done.notify_all()

    # -- reading -----------------------------------------------------------------------------

    def read(self, size: int, offset: int) -> bytes:
        out = memoryview(bytearray(size))
        return bytes(out[:self.read_into(out, offset)])

    def read_into(self, out: memoryview, offset: int) -> int:
        """Decrypt up to len(out) plaintext bytes at ``offset`` straight into ``out`` (the FUSE
        reply buffer); returns how many. On IntegrityError the read failed as a whole: chunks
        before the damaged one are in ``out``, the damaged one is zeroed (decrypt_chunk_into)."""
        with self._locked(write=False):
            try:
                return self._read_into_locked(out, offset)
            except IntegrityError:
                if not self.volume.shared:
                    raise
                # Maybe a same-tick rewrite elsewhere (see FileState.recheck_header) left us a
                # stale size or file ID: read everything again once; real damage fails again.
                self.state.reload(os.fstat(self.fd))
                return self._read_into_locked(out, offset)

    def _read_into_locked(self, out: memoryview, offset: int) -> int:
        self.state.check()
        file_size = self.state.size
        end = min(offset + len(out), file_size)
        if offset >= end:
            return 0
        cs = self.layout.chunk_size
        cipher, chunks = self._stored_chunks(offset // cs, (end - 1) // cs, file_size)
        for index, stored, final in chunks:
            chunk_start = index * cs
            lo, hi = max(offset, chunk_start), min(end, chunk_start + cs)
            target = out[lo - offset:hi - offset]
            if lo == chunk_start and hi - lo == len(stored) - CHUNK_OVERHEAD:
                cipher.decrypt_chunk_into(index, stored, final, target)  # no copy of the chunk
            else:  # the request starts or ends inside this chunk
                target[:] = cipher.decrypt_chunk(index, stored, final)[lo - chunk_start:hi - chunk_start]
        return end - offset

    def _stored_chunks(self, first: int, last: int,
                       file_size: int) -> tuple[FileCipher, list[tuple[int, memoryview, bool]]]:
        """Chunks first..last (inclusive) of a file of ``file_size`` plaintext bytes, as stored,
        read with one pread: (index, stored bytes, is final) each, and the file's cipher."""
        layout = self.layout
        cipher = self.state.cipher(self.fd)
        final_index = layout.chunk_count(file_size) - 1
        start = layout.chunk_offset(first)
        want = layout.ciphertext_size(file_size) - start if last == final_index else (
            layout.chunk_offset(last + 1) - start)
        raw = os.pread(self.fd, want, start)
        if len(raw) != want:
            raise IntegrityError(f"file is shorter than its size says (chunk {first}..{last} missing)")
        step = layout.stored_chunk_size
        view = memoryview(raw)
        return cipher, [(i, view[(i - first) * step:(i - first + 1) * step], i == final_index)
                        for i in range(first, last + 1)]

    def _read_chunks(self, first: int, last: int, file_size: int) -> list[bytes]:
        """Decrypt chunks first..last (inclusive) of a file of ``file_size`` plaintext bytes."""
        cipher, chunks = self._stored_chunks(first, last, file_size)
        return [cipher.decrypt_chunk(index, stored, final) for index, stored, final in chunks]

    # -- writing -----------------------------------------------------------------------------

    def write(self, data: Buffer, offset: int) -> int:
        data = memoryview(data).cast("B")  # bytes, whatever the caller's view counts in
        if not data:  # a zero-length write past the end must not grow the file
            return 0
        with self._locked(write=True):
            if self.state.blank:
                self.volume._reset_to_empty(self)
            self.state.check()
            if self.append:
                offset = self.state.size
            if offset > self.state.size:
                self._grow(offset)  # POSIX: the gap reads as zeros (stored encrypted, not as holes)
            self._write_at(offset, data)  # read before this returns: a view of the caller's buffer is fine
        return len(data)

    def truncate(self, length: int) -> None:
        with self._locked(write=True):
            # A damaged file can always be emptied and reused, as with O_TRUNC.
            if length == 0 or self.state.blank:
                self.volume._reset_to_empty(self)
                if length == 0:
                    return
            self.state.check()
            if length > self.state.size:
                self._grow(length)
            elif length < self.state.size:
                self._shrink(length)

    def _grow(self, new_size: int) -> None:
        batch = GROW_BATCH * self.layout.chunk_size
        while self.state.size < new_size:
            self._write_at(self.state.size, bytes(min(batch, new_size - self.state.size)))

    def _shrink(self, new_size: int) -> None:
        layout, cs = self.layout, self.layout.chunk_size
        last = layout.chunk_count(new_size) - 1
        keep = new_size - last * cs
        tail = self._read_chunks(last, last, self.state.size)[0][:keep]
        cipher = self.state.cipher(self.fd)
        self._pwrite_all(cipher.encrypt_chunk(last, tail, final=True), layout.chunk_offset(last))
        os.ftruncate(self.fd, layout.ciphertext_size(new_size))
        self.state.size = new_size

    def _write_at(self, offset: int, data: Buffer) -> None:
        """Write ``data`` at ``offset`` <= size: re-encrypt exactly the chunks it touches."""
        if not data:
            return
        layout, cs = self.layout, self.layout.chunk_size
        old_size = self.state.size
        end = offset + len(data)
        new_size = max(old_size, end)
        old_final = layout.chunk_count(old_size) - 1
        new_final = layout.chunk_count(new_size) - 1
        first, last = offset // cs, (end - 1) // cs
        # The old final chunk loses its "final" mark when the file grows past it, so it is
        # re-encrypted even if no new byte lands in it (otherwise truncation detection breaks).
        start = min(first, old_final) if new_final > old_final else first
        cipher = self.state.cipher(self.fd)
        data = memoryview(data)  # slices below are views, not copies
        # Every chunk is sealed straight into its place in one buffer, written with one pwrite.
        sealed = bytearray(layout.chunk_offset(last) + CHUNK_OVERHEAD + min(cs, new_size - last * cs)
                           - layout.chunk_offset(start))
        into = memoryview(sealed)
        for index in range(start, last + 1):
            chunk_start = index * cs
            chunk_end = min(chunk_start + cs, new_size)
            if offset <= chunk_start and end >= chunk_end:
                plain: bytearray | memoryview = data[chunk_start - offset:chunk_end - offset]
            else:  # a chunk the write covers in part: its old bytes, the new ones over them
                plain = bytearray(chunk_end - chunk_start)  # zeros where the file grows
                if index <= old_final:
                    _, ((_, stored, final),) = self._stored_chunks(index, index, old_size)
                    cipher.decrypt_chunk_into(index, stored, final,
                                              memoryview(plain)[:len(stored) - CHUNK_OVERHEAD])
                lo, hi = max(offset, chunk_start), min(end, chunk_end)
                if lo < hi:
                    plain[lo - chunk_start:hi - chunk_start] = data[lo - offset:hi - offset]
            at = layout.chunk_offset(index) - layout.chunk_offset(start)
            cipher.encrypt_chunk_into(index, plain, index == new_final,
                                      into[at:at + chunk_end - chunk_start + CHUNK_OVERHEAD])
        # A write that fails half-way (disk full, file size limit) must not cost data that was
        # already stored: keep the old final chunk's ciphertext to put back, and cut the file
        # back to its old length, so the file stays exactly as it was before this write.
        old_final_offset = layout.chunk_offset(old_final)
        saved_final = (os.pread(self.fd, layout.stored_chunk_size, old_final_offset)
                       if start <= old_final <= last else None)
        try:
            self._pwrite_all(sealed, layout.chunk_offset(start))
        except OSError:
            if saved_final is not None:
                self._pwrite_all(saved_final, old_final_offset)
            if new_size > old_size:
                os.ftruncate(self.fd, layout.ciphertext_size(old_size))
            raise
        self.state.size = new_size

    def _pwrite_all(self, data: Buffer, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    # -- applications' locks (shared storage) ------------------------------------------------

    @contextlib.contextmanager
    def _owner_fd(self, owner: int) -> Iterator[int]:
        """The backing descriptor that holds ``owner``'s locks on this file (one open file
        description per owner, so owners conflict with each other as processes do)."""
        state = self.state
        with state.lock:
            entry = state.owners.get(owner)
            if entry is None:
                entry = state.owners[owner] = [_reopen(self.fd), 0]
            entry[1] += 1
        try:
            yield entry[0]
        finally:
            with state.lock:
                entry[1] -= 1

    def test_lock(self, owner: int, kind: int, start: int, length: int) -> tuple[int, int, int] | None:
        """F_GETLK: the (kind, start, length) of a lock that would conflict, or None."""
        with self._owner_fd(owner) as fd:
            answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(kind, LOCK_SPAN + start, length))
        found, _whence, found_start, found_length, _pid = struct.unpack("hhqqi4x", answer)
        if found == fcntl.F_UNLCK:
            return None
        return found, max(0, found_start - LOCK_SPAN), found_length

    def set_lock(self, owner: int, kind: int, start: int, length: int, wait: bool) -> None:
        """F_SETLK / F_SETLKW for an application's lock owner, on the backing file: the other
        mounts (and, through NFS, the other hosts) see it. Plaintext offsets are mapped above
        LOCK_SPAN, clear of the daemon's own locks."""
        request = _flock(kind, LOCK_SPAN + start, length)
        with self._owner_fd(owner) as fd:
            if not wait or kind == fcntl.F_UNLCK:
                try:
                    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
                except PermissionError:  # POSIX allows either; callers test for EAGAIN
                    raise BlockingIOError(errno.EAGAIN, "locked by another process") from None
            else:
                with self.volume.lock_waiter():
                    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, request)
        if kind == fcntl.F_UNLCK and start == 0 and length == 0:
            self._forget_owner(owner)  # everything released (libfuse does this at each close)

    def _forget_owner(self, owner: int) -> None:
        with self.state.lock:
            entry = self.state.owners.get(owner)
            if entry is None or entry[1] > 0:  # another request of this owner is in progress
                return
            del self.state.owners[owner]
        os.close(entry[0])

    # -- the rest ----------------------------------------------------------------------------

    def fsync(self, datasync: bool) -> None:
        (os.fdatasync if datasync else os.fsync)(self.fd)

    def stat(self) -> Attributes:
        st = os.fstat(self.fd)
        return self.volume.attributes(st, self.state.size_for(st))

    @property
    def inode(self) -> int:
        return self.state.key[1]

    def close(self) -> None:
        try:
            if self.volume.release_state(self.state):
                self.state.close_owners()
                self.volume.remove_closed_orphan(self.state.key)
        finally:
            os.close(self.fd)  # whatever the cleanup did, the descriptor must not leak


def _quiet_and_unchanged(mark: tuple[Signature, int], st: os.stat_result) -> bool:
    """A cache mark (signature, when taken) still vouches for the file ``st`` describes."""
    seen, taken = mark
    quiet_since = taken - CACHE_QUIET_NS
    # mtime too, not only ctime: `touch -d <future>` can put mtime after ctime.
    return seen == signature(st) and st.st_mtime_ns < quiet_since and st.st_ctime_ns < quiet_since


def _open_backing(path: str, flags: int) -> int:
    """os.open; O_NOATIME (the audit trail's own header reads must not change the atime
    programs see) is dropped where the kernel refuses it: only the owner or root may ask."""
    try:
        return os.open(path, flags)
    except PermissionError:
        if not flags & os.O_NOATIME:
            raise
        return os.open(path, flags & ~os.O_NOATIME)


def _reopen(fd: int) -> int:
    """A new open file description of the file behind ``fd`` (read-write if we may)."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except PermissionError:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


# ---------------------------------------------------------------------------- the volume


class Attributes(NamedTuple):
    """What the mount shows for a name: the backing file's stat, with the plaintext size."""

    stat: os.stat_result
    size: int  # plaintext bytes for a regular file, else the backing st_size


class ListedEntry(NamedTuple):
    """A directory entry as readdir reports it: the kernel takes only the type and inode
    from it (attributes come from a LOOKUP per name), so no stat is made for it."""

    name: str
    type_bits: int  # stat.S_IFMT part of st_mode
    inode: int


def _type_bits(entry: os.DirEntry[str]) -> int:
    # is_* answer from the directory's own d_type, without a stat, on ext4, xfs, btrfs, NFS
    if entry.is_symlink():
        return stat.S_IFLNK
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    return stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)  # fifo, socket, device


class CiphertextFile:
    """A read-only handle on a file's stored (encrypted) bytes: the view for backup agents."""

    def __init__(self, volume: Volume, fd: int) -> None:
        self._volume = volume
        self._fd = fd

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def read_into(self, out: memoryview, offset: int) -> int:
        return os.preadv(self._fd, [out], offset)

    def stat(self) -> Attributes:
        # Attributes stay those of the plaintext file: the kernel keeps one size per inode for
        # every process, and a ciphertext size would truncate plaintext readers' views.
        return self._volume.attributes(os.fstat(self._fd))

    @property
    def inode(self) -> int:
        return os.fstat(self._fd).st_ino

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Volume:
    def __init__(self, backing: Path, config: VolumeConfig, master_key: bytes) -> None:
        self.backing = backing.resolve()
        self.config = config
        self.layout = Layout(config.chunk_size)
        self._key_id = config.key_id
        self._content_root = keys.content_key(master_key)
        # Kept for the audit trail, whose signing-key store is sealed under a key derived from
        # it (audit/signing.py). Never logged: Volume has no repr that would show it.
        self.master_key = master_key
        self._states: dict[tuple[int, int], FileState] = {}
        self._states_lock = threading.Lock()
        # (dev, ino) -> path of files moved to the orphans folder by this mount (see rmdir)
        self._orphaned: dict[tuple[int, int], str] = {}
        self._root = str(self.backing)
        self.shared = False  # other mounts use the same backing folder (enable_shared_storage)
        self._config_seen: Signature | None = None
        self._lock_waiters = threading.BoundedSemaphore(MAX_LOCK_WAITERS)
        # (dev, ino, mount path) -> (signature, when it was taken in ns): see cache_still_valid
        self._cache_marks: OrderedDict[tuple[int, int, str], tuple[Signature, int]] = OrderedDict()
        self._cache_marks_lock = threading.Lock()

    # -- shared storage ----------------------------------------------------------------------

    def enable_shared_storage(self) -> None:
        """Behave like one NFS client of several: lock and re-check files, watch the config.

        Call before serving any request. Fails (OSError) if the backing file system refuses
        advisory locks (an NFS mount without lockd / with ``nolock``): serving without them
        could interleave two mounts' chunk rewrites into a corrupt file."""
        fd = os.open(config_path(self.backing), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            _range_lock(fd, fcntl.F_RDLCK)
            _range_lock(fd, fcntl.F_UNLCK)
            self._config_seen = signature(os.fstat(fd))
        finally:
            os.close(fd)
        self.shared = True

    def cache_still_valid(self, handle: OpenFile, path: str) -> bool:
        """Shared storage, at open: may what this mount cached of ``path`` at earlier opens
        still be served? NFS's close-to-open revalidation: yes if the backing file's size,
        mtime and ctime are those seen at the last open of this name and the file had been
        quiet for CACHE_QUIET_NS by then (see CACHE_QUIET_NS); otherwise the caller drops
        the cache and this open's signature is remembered for the next one.

        Keyed by name too: two hard links have separate kernel caches, filled at different times."""
        st = os.fstat(handle.fd)
        key, now = (st.st_dev, st.st_ino, path), time.time_ns()
        # Least recently opened names go first when the table is full. (Emptying it at once, as
        # before, dropped the kernel's cache of every hot file at their next opens together.)
        with self._cache_marks_lock:
            mark = self._cache_marks.get(key)
            trusted = mark is not None and _quiet_and_unchanged(mark, st)
            if not trusted:
                self._cache_marks[key] = (signature(st), now)
            self._cache_marks.move_to_end(key)
            while len(self._cache_marks) > CACHE_MARKS_MAX:
                self._cache_marks.popitem(last=False)
        return trusted
        return False

    @contextlib.contextmanager
    def lock_waiter(self) -> Iterator[None]:
        """A place among the applications' lock waits (OpenFile.set_lock); ENOLCK if full."""
        if not self._lock_waiters.acquire(blocking=False):
            raise OSError(errno.ENOLCK, f"more than {MAX_LOCK_WAITERS} programs wait for file locks")
        try:
            yield
        finally:
            self._lock_waiters.release()

    def check_config(self) -> None:
        """Shared storage: re-read the volume config when another host replaced it (passwd).

        What this mount holds in memory (master key, key ID, chunk size) must still be the
        volume's: a config naming another key or chunk size refuses the open instead of
        writing files no other mount could read."""
        if not self.shared:
            return
        st = os.stat(config_path(self.backing))
        if signature(st) == self._config_seen:
            return
        fresh = read_config(self.backing)
        if fresh.key_id != self._key_id or fresh.chunk_size != self.config.chunk_size:
            raise CorruptConfig(
                f"the volume config of {self._root} changed under this mount: it now names another "
                "key or chunk size; refusing access to avoid writing unreadable files "
                "(unmount and mount again)")
        self.config = fresh
        self._config_seen = signature(st)

    def cipher_for(self, file_id: bytes) -> FileCipher:
        return FileCipher(self._content_root, self._key_id, file_id)

    # -- paths -------------------------------------------------------------------------------

    def backing_path(self, path: str, lookup: bool = False) -> str:
        """Map a mount path to its backing path. The single place names are translated, so
        name encryption (a future feature flag) changes this function and nothing else."""
        relative = path.lstrip("/")
        if relative.split("/", 1)[0] == META_DIR:
            if lookup:
                raise FileNotFoundError(errno.ENOENT, "reserved name", path)
            raise ReservedName(f"{META_DIR} is reserved for the volume's own metadata")
        return os.path.join(self._root, relative) if relative else self._root

    # -- file states -------------------------------------------------------------------------

    def _attach(self, fd: int, flags: int) -> OpenFile:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with self._states_lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = FileState(self, fd, key)
            state.refs += 1
        return OpenFile(self, fd, state, flags)

    def release_state(self, state: FileState) -> bool:
        """Drop one handle's reference; True if it was the inode's last open handle."""
        with self._states_lock:
            state.refs -= 1
            if state.refs == 0:
                del self._states[state.key]
                return True
            return False

    def _open_size(self, st: os.stat_result) -> int | None:
        state = self._states.get((st.st_dev, st.st_ino))
        return None if state is None else state.size_for(st)

    # -- attributes --------------------------------------------------------------------------

    def attributes(self, st: os.stat_result, plain_size: int | None = None) -> Attributes:
        if not stat.S_ISREG(st.st_mode):
            return Attributes(st, st.st_size)
        if plain_size is None:
            plain_size = self._open_size(st)
        return Attributes(st, plain_size if plain_size is not None
                          else self.layout.plaintext_size_lenient(st.st_size))

    def getattr(self, path: str) -> Attributes:
        try:
            return self.attributes(os.lstat(self.backing_path(path, lookup=True)))
        except FileNotFoundError:
            return self.attributes(os.lstat(self._orphan_of(path)))

    def _orphans(self) -> str:
        return os.path.join(self._root, META_DIR, ORPHANS_DIR)

    def _orphan_of(self, path: str) -> str:
        """Where a hidden unlinked-open file went if its directory was removed (see rmdir)."""
        name = os.path.basename(path)
        if not name.startswith(FUSE_HIDDEN_PREFIX):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return os.path.join(self._orphans(), name)

    def open_dir(self, path: str) -> int:
        """A descriptor on the backing directory: listing by descriptor keeps working when the
        directory is renamed or removed while open, as on a local disk."""
        return os.open(self.backing_path(path, lookup=True), os.O_RDONLY | os.O_DIRECTORY)

    def list_dir(self, dir_fd: int) -> Iterator[ListedEntry]:
        at_root = os.path.samestat(os.fstat(dir_fd), os.stat(self._root))
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                if (at_root and entry.name == META_DIR) or entry.name.startswith(FUSE_HIDDEN_PREFIX):
                    continue
                try:
                    yield ListedEntry(entry.name, _type_bits(entry), entry.inode())
                except FileNotFoundError:  # removed while we listed: skip, as ls would
                    continue

    def statfs(self) -> dict[str, int]:
        sv = os.statvfs(self._root)
        return {name: getattr(sv, name) for name in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
            "f_flag", "f_namemax")}

    # -- files -------------------------------------------------------------------------------

    def open(self, path: str, flags: int, prefetch: bool = True) -> OpenFile:
        """``prefetch``: a read-only open starts reading the first MiB from disk at once (off
        for a reader that looks at a few bytes only, such as the DICOM tag lookup)."""
        # Backing files are opened read-write for any write access: partial chunk writes must
        # read the chunk back, and a write-only backing fd under a shared mmap (SQLite -shm)
        # makes the PACS die with SIGBUS.
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        self.check_config()
        fd = _open_backing(self.backing_path(path),
                           (os.O_RDWR if writing else os.O_RDONLY) | os.O_NOFOLLOW | (flags & os.O_NOATIME))
        if prefetch and not writing:
            # A reader's first request follows the open within microseconds; the disk starts now.
            # Only a hint: a backing file system that refuses it must not fail the open.
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, PREFETCH_BYTES, os.POSIX_FADV_WILLNEED)
        try:
            handle = self._attach(fd, flags)
        except BaseException:
            os.close(fd)
            raise
        if flags & os.O_TRUNC:
            try:
                self._reset_to_empty(handle)
            except BaseException:
                handle.close()
                raise
        return handle

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.backing_path(path))

    def open_ciphertext(self, path: str) -> CiphertextFile:
        fd = os.open(self.backing_path(path), os.O_RDONLY | os.O_NOFOLLOW)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", path)
        return CiphertextFile(self, fd)

    def create(self, path: str, mode: int, flags: int, owner: tuple[int, int] | None = None) -> OpenFile:
        target = self.backing_path(path)
        self.check_config()
        try:
            fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o7777)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            return self.open(path, flags)  # lost a create race: behave like open(O_CREAT)
        handle = None
        try:
            os.fchmod(fd, mode & 0o7777)
            if owner is not None:
                os.fchown(fd, *owner)
            handle = self._attach(fd, flags)
            # Shared storage: another mount may have opened the new file and written its
            # header (or data) before we took the lock; that is kept, not clobbered.
            self._reset_to_empty(handle, only_if_blank=self.shared)
        except BaseException:
            if handle is not None:
                handle.close()  # also drops the shared state, which an inode reuse would inherit
            else:
                os.close(fd)
            os.unlink(target)
            raise
        return handle

    def _reset_to_empty(self, handle: OpenFile, only_if_blank: bool = False) -> None:
        """Give the file a fresh file ID and one empty final chunk (create and O_TRUNC).

        A new file ID means no chunk of the old content can ever be replayed into the new one.
        ``only_if_blank``: leave a file alone that already has a header (shared-storage create)."""
        state = handle.state
        with handle._locked(write=True):
            if only_if_blank and os.fstat(handle.fd).st_size != 0:
                return
            file_id = new_file_id()
            cipher = self.cipher_for(file_id)
            header = encode_header(file_id)
            # Also on a new, empty file, deliberately: ext4 takes a truncate to 0 as "this file
            # is being replaced" and starts writing it out at its last close (auto_da_alloc).
            # Without it a new file's blocks wait for writeback (~30 s), and a power loss in
            # that window leaves a 0-byte backing file, which reads as damaged (EIO, integrity
            # alert). Skipping it saved daemon time per create but no measurable throughput
            # (docs/performance.md, "Tried, and dropped").
            os.ftruncate(handle.fd, 0)
            handle._pwrite_all(header + cipher.encrypt_chunk(0, b"", final=True), 0)
            state.reset_cipher(cipher, header)
            state.size = 0
            state.damage = None

    def truncate(self, path: str, length: int) -> None:
        handle = self.open(path, os.O_RDWR)
        try:
            handle.truncate(length)
        finally:
            handle.close()

    # -- namespace ---------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int, owner: tuple[int, int] | None = None) -> None:
        target = self.backing_path(path)
        os.mkdir(target, mode & 0o7777)
        os.chmod(target, mode & 0o7777)
        if owner is not None:
            os.lchown(target, *owner)

    def rmdir(self, path: str) -> None:
        target = self.backing_path(path)
        try:
            os.rmdir(target)
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY or not self._orphan_hidden_files(target):
                raise
            os.rmdir(target)

    def _orphan_hidden_files(self, directory: str) -> bool:
        """If only files that are unlinked but still open remain in ``directory`` (it would be
        empty on a local disk), move them aside (their handles keep working) and return True."""
        names = os.listdir(directory)
        if not all(name.startswith(FUSE_HIDDEN_PREFIX) for name in names):
            return False
        os.makedirs(self._orphans(), mode=0o700, exist_ok=True)
        for name in names:
            moved = os.path.join(self._orphans(), name)
            os.rename(os.path.join(directory, name), moved)
            st = os.lstat(moved)
            with self._states_lock:
                self._orphaned[(st.st_dev, st.st_ino)] = moved
        return True

    def unlink(self, path: str) -> None:
        try:
            os.unlink(self.backing_path(path))
        except FileNotFoundError:
            os.unlink(self._orphan_of(path))

    def remove_closed_orphan(self, key: tuple[int, int]) -> None:
        """Delete an orphan (see rmdir) once its last handle closes.

        libfuse would unlink the .fuse_hidden file at the last close, but after its directory
        was removed libfuse has no path for it any more and skips the unlink: without this the
        deleted file's ciphertext stayed in the backing folder until the next mount. Orphans
        are remembered in memory, so an ordinary close costs no file system call here."""
        with self._states_lock:
            path = self._orphaned.pop(key, None)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def remove_stale_orphans(self) -> int:
        """At mount no file is open, so orphans left by a crash can go. Returns how many.

        Not on shared storage: the orphans may be files another mount still has open."""
        if self.shared:
            return 0
        try:
            names = os.listdir(self._orphans())
        except FileNotFoundError:
            return 0
        for name in names:
            os.unlink(os.path.join(self._orphans(), name))
        return len(names)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        source, target = self.backing_path(old), self.backing_path(new)
        if not flags:
            try:
                os.rename(source, target)
            except OSError as exc:
                # A directory renamed over a directory that holds only unlinked-but-open files:
                # on a local disk the target is empty and is replaced (found by test_model).
                if exc.errno != errno.ENOTEMPTY or not self._orphan_hidden_files(target):
                    raise
                os.rename(source, target)
            return
        # RENAME_NOREPLACE / RENAME_EXCHANGE (mv -n, atomic swaps) need renameat2, which
        # Python's os module lacks; the backing file system decides whether it supports them.
        at_fdcwd = -100
        # fsencode: names that are not valid UTF-8 arrive surrogate-escaped from the binding
        if _libc.renameat2(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), flags) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), new)

    def symlink(self, path: str, target: str, owner: tuple[int, int] | None = None) -> None:
        link = self.backing_path(path)
        os.symlink(target, link)  # link targets are names: stored in plaintext like all names (v1)
        if owner is not None:
            os.lchown(link, *owner)

    def readlink(self, path: str) -> str:
        return os.readlink(self.backing_path(path, lookup=True))

    def link(self, path: str, existing: str) -> None:
        os.link(self.backing_path(existing), self.backing_path(path), follow_symlinks=False)

    def chmod(self, path: str, mode: int) -> None:
        target = self.backing_path(path)
        if stat.S_ISLNK(os.lstat(target).st_mode):
            return  # Linux has no symlink modes
        os.chmod(target, mode & 0o7777)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.lchown(self.backing_path(path), uid, gid)

    def utimens(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        """Set times in nanoseconds; None keeps that time unchanged (utimensat's UTIME_OMIT)."""
        target = self.backing_path(path)
        if atime_ns is None or mtime_ns is None:
            st = os.lstat(target)
            atime_ns = st.st_atime_ns if atime_ns is None else atime_ns
            mtime_ns = st.st_mtime_ns if mtime_ns is None else mtime_ns
        os.utime(target, ns=(atime_ns, mtime_ns), follow_symlinks=False)

    def mknod(self, path: str, mode: int, dev: int, owner: tuple[int, int] | None = None) -> None:
        if stat.S_ISREG(mode):
            self.create(path, mode, os.O_WRONLY | os.O_EXCL, owner).close()
            return
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise PermissionError(errno.EPERM, "device files are not allowed in a volume", path)
        target = self.backing_path(path)
        os.mknod(target, mode, dev)
        if owner is not None:
            os.lchown(target, *owner)


    def describe(self) -> str:
        """One line for logs: which volume, never any key material."""
        return json.dumps({"backing": self._root, "key_id": self._key_id.hex(),
                           "chunk_size": self.layout.chunk_size})
