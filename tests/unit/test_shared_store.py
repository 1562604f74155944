"""Two Volume objects on one backing folder: what two daemons on shared storage do, without FUSE.

Each Volume stands for one mount (its own FileState caches). With shared storage enabled a
change made through one is seen by the other's already-open handles at the next read or
write, and a create never clobbers a file the other made. The last test shows the failure
the switch exists for: without it, a stale cached size turns into a damaged file.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from encfs_pacs import store
from encfs_pacs.errors import CorruptConfig, IntegrityError
from encfs_pacs.store import Secret

SECRET = Secret("passphrase", b"unit tests: not a real secret")
CHUNK = 4096


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    path = tmp_path / "backing"
    store.create_volume(path, SECRET, chunk_size=CHUNK, scrypt_log_n=10)
    return path


def mount(backing: Path, shared: bool = True) -> store.Volume:
    volume = store.unlock(backing, SECRET)
    if shared:
        volume.enable_shared_storage()
    return volume


def read_all(volume: store.Volume, path: str) -> bytes:
    handle = volume.open(path, os.O_RDONLY)
    try:
        return handle.read(1 << 24, 0)
    finally:
        handle.close()


def write(volume: store.Volume, path: str, data: bytes, offset: int = 0, flags: int = os.O_RDWR) -> None:
    handle = volume.open(path, flags)
    try:
        handle.write(data, offset)
    finally:
        handle.close()


def test_open_handle_sees_growth_and_rewrite_made_elsewhere(backing: Path) -> None:
    a, b = mount(backing), mount(backing)
    a.create("/f", 0o600, os.O_RDWR).close()
    write(a, "/f", b"a" * (3 * CHUNK + 10))
    held = b.open("/f", os.O_RDWR)  # B's cached size: 3 chunks + 10
    try:
        write(a, "/f", b"g" * (2 * CHUNK), 3 * CHUNK + 10)  # A grows: B's "final" chunk is not final now
        assert held.read(1 << 20, 0) == b"a" * (3 * CHUNK + 10) + b"g" * (2 * CHUNK)
        # A truncates to zero and rewrites (new file ID, new header) while B keeps its handle
        write(a, "/f", b"n" * 5000, flags=os.O_RDWR | os.O_TRUNC)
        held.write(b"B" * 10, 4995)  # B grows the file across the new final chunk
        assert held.stat().size == 5005
    finally:
        held.close()
    assert read_all(a, "/f") == b"n" * 4995 + b"B" * 10
    assert a.getattr("/f").size == 5005


def test_create_never_clobbers_a_file_made_by_the_other_mount(backing: Path) -> None:
    a, b = mount(backing), mount(backing)
    # B lost the O_EXCL race on the backing file and opened it before A wrote its header:
    # the file is 0 bytes, which shared storage reads as "empty, being created".
    fd = os.open(backing / "new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    early = b.open("/new", os.O_RDWR)
    try:
        assert early.read(100, 0) == b""
        early.write(b"from B", 0)  # B writes the header itself, under the file lock
    finally:
        early.close()
    # A's create (which found the file made) and A's exclusive create (which must fail)
    handle = a.create("/new", 0o600, os.O_RDWR)
    handle.close()
    with pytest.raises(FileExistsError):
        a.create("/new", 0o600, os.O_RDWR | os.O_EXCL)
    assert read_all(a, "/new") == b"from B"


def test_config_replaced_by_passwd_elsewhere_is_reread(backing: Path) -> None:
    a = mount(backing)
    config, master = store.read_master_key(backing, SECRET)
    store.rewrap_master_key(backing, master, Secret("passphrase", b"new unit secret"), scrypt_log_n=10)
    a.create("/after", 0o600, os.O_RDWR).close()  # a fresh open after passwd still works
    assert a.config.wrapped_key == store.read_config(backing).wrapped_key != config.wrapped_key


def test_config_naming_another_key_refuses_opens(backing: Path, tmp_path: Path) -> None:
    a = mount(backing)
    other = tmp_path / "other"
    store.create_volume(other, SECRET, chunk_size=CHUNK, scrypt_log_n=10)
    os.replace(other / ".encfs-pacs" / "volume.json", backing / ".encfs-pacs" / "volume.json")
    with pytest.raises(CorruptConfig):
        a.create("/x", 0o600, os.O_RDWR)


def test_without_shared_storage_a_stale_size_damages_the_file(backing: Path) -> None:
    """Why the switch exists: the single-host mount trusts its cached size."""
    a, b = mount(backing, shared=False), mount(backing, shared=False)
    a.create("/f", 0o600, os.O_RDWR).close()
    write(a, "/f", b"a" * (CHUNK + 10))
    held = b.open("/f", os.O_RDWR)
    try:
        write(a, "/f", b"g" * CHUNK, CHUNK + 10)  # grows; B still believes chunk 1 is final
        # B replaces chunk 1 whole (nothing to read back) and seals it as the final chunk,
        # while A's chunk 2 follows it on disk: the write "succeeds", the file is damaged.
        held.write(b"B" * CHUNK, CHUNK)
    finally:
        held.close()
    with pytest.raises(IntegrityError):
        read_all(mount(backing, shared=False), "/f")


def test_cache_is_trusted_only_for_a_file_unchanged_and_quiet_since_the_last_open(
        backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = mount(backing), mount(backing)
    a.create("/f", 0o600, os.O_RDWR).close()
    write(a, "/f", b"1" * 100)

    def valid() -> bool:
        handle = b.open("/f", os.O_RDONLY)
        try:
            return b.cache_still_valid(handle, "/f")
        finally:
            handle.close()

    assert not valid()  # first open of this name: nothing cached to trust
    # Unchanged but changed just before that open: a same-tick change could hide, so no.
    assert not valid()
    later = time.time_ns() + 2 * store.CACHE_QUIET_NS
    monkeypatch.setattr(store.time, "time_ns", lambda: later)
    assert not valid()  # the last mark was still taken too soon after the change
    assert valid()  # quiet for long enough before the last mark, and unchanged since
    write(a, "/f", b"2" * 100)  # same size, other bytes, from the other mount
    assert not valid()


def test_a_full_table_of_cache_marks_forgets_the_least_recently_opened_name(
        backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "CACHE_MARKS_MAX", 2)
    a, b = mount(backing), mount(backing)
    for name in ("/hot", "/g", "/h"):
        a.create(name, 0o600, os.O_RDWR).close()
        write(a, name, b"1" * 100)

    def valid(name: str) -> bool:
        handle = b.open(name, os.O_RDONLY)
        try:
            return b.cache_still_valid(handle, name)
        finally:
            handle.close()

    valid("/hot")
    later = time.time_ns() + 2 * store.CACHE_QUIET_NS
    monkeypatch.setattr(store.time, "time_ns", lambda: later)
    valid("/hot")  # marked quiet: trusted from now on
    valid("/g")
    assert valid("/hot")
    valid("/h")  # the table is over full: /g, opened least recently, goes (not everything)
    assert valid("/hot")
    assert not valid("/g")


def test_application_locks_of_one_mount_conflict_with_the_other(backing: Path) -> None:
    a, b = mount(backing), mount(backing)
    a.create("/db", 0o600, os.O_RDWR).close()
    mine, theirs = a.open("/db", os.O_RDWR), b.open("/db", os.O_RDWR)
    try:
        mine.set_lock(owner=1, kind=fcntl.F_WRLCK, start=100, length=10, wait=False)
        with pytest.raises(BlockingIOError):
            theirs.set_lock(owner=1, kind=fcntl.F_RDLCK, start=105, length=1, wait=False)
        assert theirs.test_lock(owner=1, kind=fcntl.F_RDLCK, start=0, length=0) == (fcntl.F_WRLCK, 100, 10)
        theirs.set_lock(owner=1, kind=fcntl.F_WRLCK, start=0, length=100, wait=False)  # not overlapping
        # the daemon's own chunk locks and the applications' never meet
        theirs.write(b"still writable", 0)
        mine.set_lock(owner=1, kind=fcntl.F_UNLCK, start=0, length=0, wait=False)  # all of owner 1's
        theirs.set_lock(owner=1, kind=fcntl.F_WRLCK, start=105, length=1, wait=True)
    finally:
        mine.close()
        theirs.close()
    assert read_all(a, "/db") == b"still writable"


def test_a_same_tick_rewrite_elsewhere_is_caught_by_the_header(backing: Path) -> None:
    """O_TRUNC and a rewrite to the same size within one timestamp tick leave size, mtime and
    ctime as they were; the new file ID in the header still shows the change."""
    a, b = mount(backing), mount(backing)
    a.create("/f", 0o600, os.O_RDWR).close()
    write(a, "/f", b"1" * (CHUNK + 100))
    held = b.open("/f", os.O_RDWR)
    try:
        assert held.read(10, 0) == b"1" * 10  # B caches size and cipher (file ID)
        write(a, "/f", b"2" * (CHUNK + 100), flags=os.O_RDWR | os.O_TRUNC)
        # what a coarse clock can do: B's remembered signature equals the rewritten file's
        held.state.seen = store.signature(os.fstat(held.fd))
        assert held.read(10, CHUNK) == b"2" * 10  # authentication failed once, re-read
        held.state.seen = store.signature(os.fstat(held.fd))
        write(a, "/f", b"3" * (CHUNK + 100), flags=os.O_RDWR | os.O_TRUNC)
        held.state.seen = store.signature(os.fstat(held.fd))
        held.write(b"B" * 10, 5)  # must be sealed under the newest file ID
    finally:
        held.close()
    assert read_all(a, "/f") == b"3" * 5 + b"B" * 10 + b"3" * (CHUNK + 85)
