"""passwd and recovery keys at the store level: rewrap only, atomically, and audited.

Crash safety is tested by making each step of the config replacement fail (as a crash
there would leave the disk) and checking which secret unlocks afterwards: always the old
or the new one, never neither. A subprocess SIGKILL loop is in tests/integration.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest

from encfs_pacs import store
from encfs_pacs.crypto import recovery_key
from encfs_pacs.errors import KeySourceError, RecoveryKeyError, UsageError, VolumeBusy, WrongPassphrase
from encfs_pacs.maintenance import fsck, rekey
from encfs_pacs.maintenance.locking import lock_path

from .test_fixture_volumes import FIXTURES, MANIFEST, VOLUMES, _walk

OLD = store.Secret("passphrase", b"old passphrase: test only")
NEW = store.Secret("passphrase", b"new passphrase: test only")
LOG_N = 10


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    path = tmp_path / "backing"
    store.create_volume(path, OLD, scrypt_log_n=LOG_N)
    volume = store.unlock(path, OLD)
    handle = volume.create("/image.dcm", 0o644, os.O_WRONLY)
    try:
        handle.write(b"DICM" * 50_000, 0)
    finally:
        handle.close()
    return path


def unlocks(backing: Path, secret: store.Secret) -> bool:
    try:
        volume = store.unlock(backing, secret)
    except (WrongPassphrase, UsageError):  # UsageError: a passphrase for a keyfile volume
        return False
    handle = volume.open("/image.dcm", os.O_RDONLY)
    try:
        assert handle.read(300_000, 0) == b"DICM" * 50_000
    finally:
        handle.close()
    return True


def change(backing: Path, old: store.Secret = OLD, new: store.Secret = NEW) -> dict:
    return rekey.change_secret(backing, rekey.OldSecret(old), new, LOG_N)


def test_passwd_rewraps_only(backing: Path) -> None:
    before = json.loads(store.config_path(backing).read_text())
    data_before = (backing / "image.dcm").read_bytes()
    event = change(backing)
    after = json.loads(store.config_path(backing).read_text())
    assert unlocks(backing, NEW) and not unlocks(backing, OLD)
    assert (backing / "image.dcm").read_bytes() == data_before  # nothing re-encrypted
    for key in ("key_id", "chunk_size", "features", "version", "created", "format"):
        assert after[key] == before[key]
    assert after["kdf"]["salt"] != before["kdf"]["salt"]  # a new salt, not the old one reused
    assert len(base64.b64decode(after["kdf"]["salt"])) == 32
    assert after["wrapped_master_key"] != before["wrapped_master_key"]
    assert store.config_path(backing).stat().st_mode & 0o777 == 0o600
    assert not (backing / ".encfs-pacs" / "volume.json.tmp").exists()
    assert event["event"] == "volume-key-changed" and event["outcome"] == "success"
    assert event["key_id"] == before["key_id"] and event["unlocked_with"] == "passphrase"
    assert event["data_reencrypted"] is False
    text = json.dumps(event)
    assert "passphrase: test only" not in text  # never a secret in an audit event


def test_same_passphrase_gets_fresh_salt(backing: Path) -> None:
    salt = json.loads(store.config_path(backing).read_text())["kdf"]["salt"]
    change(backing, OLD, OLD)
    assert json.loads(store.config_path(backing).read_text())["kdf"]["salt"] != salt
    assert unlocks(backing, OLD)


def test_wrong_old_secret_changes_nothing(backing: Path) -> None:
    raw = store.config_path(backing).read_bytes()
    with pytest.raises(WrongPassphrase):
        change(backing, store.Secret("passphrase", b"not it"))
    assert store.config_path(backing).read_bytes() == raw


def test_passphrase_to_keyfile_and_back(backing: Path) -> None:
    keyfile = store.Secret("keyfile", os.urandom(32))
    change(backing, OLD, keyfile)
    assert json.loads(store.config_path(backing).read_text())["kdf"] == {"algorithm": "keyfile"}
    assert unlocks(backing, keyfile) and not unlocks(backing, OLD)
    with pytest.raises(UsageError, match="keyfile"):  # the volume now wants a keyfile
        store.unlock(backing, NEW)
    change(backing, keyfile, NEW)
    assert unlocks(backing, NEW)


def test_bad_new_keyfile_is_refused_before_writing(backing: Path) -> None:
    raw = store.config_path(backing).read_bytes()
    with pytest.raises(KeySourceError):
        change(backing, OLD, store.Secret("keyfile", b"short"))
    assert store.config_path(backing).read_bytes() == raw


# ------------------------------------------------------------------------- crash safety


class Crash(Exception):
    pass


def _crash(*args: object, **kwargs: object) -> None:
    raise Crash("simulated crash")


def test_crash_while_writing_the_temp_file_keeps_the_old_secret(backing: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.os, "fsync", _crash)  # the temp file is written but never synced
    with pytest.raises(Crash):
        change(backing)
    monkeypatch.undo()
    assert unlocks(backing, OLD) and not unlocks(backing, NEW)


def test_crash_before_the_rename_keeps_the_old_secret(backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.os, "replace", _crash)
    with pytest.raises(Crash):
        change(backing)
    monkeypatch.undo()
    assert unlocks(backing, OLD) and not unlocks(backing, NEW)
    # the synced temp file is the new config, whole: a crash here leaves a complete leftover
    leftover = backing / ".encfs-pacs" / "volume.json.tmp"
    assert json.loads(leftover.read_text())["key_id"] == store.read_config(backing).key_id.hex()
    # fsck names it, and the next passwd simply replaces it
    result = fsck.fsck(store.unlock(backing, OLD))
    assert result.clean and [f.path for f in result.leftovers] == [".encfs-pacs/volume.json.tmp"]
    change(backing)
    assert unlocks(backing, NEW) and not leftover.exists()


def test_crash_after_the_rename_has_the_new_secret(backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "_fsync_dir", _crash)  # renamed, folder not yet synced
    with pytest.raises(Crash):
        change(backing)
    monkeypatch.undo()
    assert unlocks(backing, NEW) and not unlocks(backing, OLD)


def test_every_step_leaves_exactly_one_working_secret(backing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash at the n-th system call of the config replacement, for every n until it succeeds."""
    real_write = store._write_file_atomically
    names = ("open", "write", "fchmod", "fsync", "close", "replace")
    current = OLD
    for step in range(1, 40):
        count = 0

        def crashing_write(path: Path, data: bytes, mode: int = 0o600, _step: int = step) -> None:
            """The real function, with its n-th call into os raising (only inside it: the
            lock's descriptor is released as a crashed process would release it)."""
            originals = {name: getattr(store.os, name) for name in names}

            def wrap(name: str):  # noqa: ANN202
                def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
                    nonlocal count
                    count += 1
                    if count == _step:
                        raise Crash(name)
                    return originals[name](*args, **kwargs)
                return call

            for name in names:
                setattr(store.os, name, wrap(name))
            try:
                real_write(path, data, mode)
            finally:
                for name, original in originals.items():
                    setattr(store.os, name, original)

        monkeypatch.setattr(store, "_write_file_atomically", crashing_write)
        target = NEW if current is OLD else OLD
        crashed = False
        try:
            rekey.change_secret(backing, rekey.OldSecret(current), target, LOG_N)
        except Crash:
            crashed = True
        monkeypatch.undo()
        works = [s for s in (OLD, NEW) if unlocks(backing, s)]
        assert len(works) == 1, (step, works)
        if not crashed:
            assert works == [target] and step > 5  # it did crash at each earlier step
            break
        current = works[0]
    else:
        pytest.fail("the replacement never completed")


@pytest.mark.parametrize("name", sorted(VOLUMES))
def test_fixture_volumes_still_open_after_passwd(name: str, tmp_path: Path) -> None:
    copy = tmp_path / name
    shutil.copytree(FIXTURES / name, copy, symlinks=True)
    old = VOLUMES[name][0]()
    rekey.change_secret(copy, rekey.OldSecret(old), NEW, LOG_N)
    assert _walk(store.unlock(copy, NEW)) == MANIFEST
    with pytest.raises((WrongPassphrase, UsageError)):
        store.unlock(copy, old)
    keyfile = store.Secret("keyfile", os.urandom(32))
    rekey.change_secret(copy, rekey.OldSecret(NEW), keyfile, LOG_N)
    assert _walk(store.unlock(copy, keyfile)) == MANIFEST
    assert fsck.fsck(store.unlock(copy, keyfile)).clean


def test_passwd_waits_for_no_one_but_refuses_a_busy_volume(backing: Path) -> None:
    fd = os.open(lock_path(backing), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(VolumeBusy):
            change(backing)
    finally:
        os.close(fd)
    change(backing)
    assert unlocks(backing, NEW)


# ------------------------------------------------------------------------- recovery keys


def write_shares(path: Path, shares: list[recovery_key.Share]) -> Path:
    path.write_text("# test shares\n" + "".join(s.line() + "\n" for s in shares))
    path.chmod(0o600)
    return path


def test_recovery_shares_set_a_new_passphrase(backing: Path, tmp_path: Path) -> None:
    config, shares, event = rekey.create_recovery_key(backing, rekey.OldSecret(OLD), 5, 3)
    assert event["shares"] == 5 and event["threshold"] == 3 and "line" not in json.dumps(event)
    file = write_shares(tmp_path / "three.txt", [shares[4], shares[0], shares[2]])
    event = rekey.change_secret(backing, rekey.OldSecret(recovery_file=file), NEW, LOG_N)
    assert event["unlocked_with"] == "recovery-key"
    assert unlocks(backing, NEW) and not unlocks(backing, OLD)
    # the master key did not change, so the same shares still work after the passphrase change
    assert rekey.master_key_from_recovery_file(backing, file) == store.read_master_key(backing, NEW)[1]
    volume = rekey.open_volume(backing, rekey.OldSecret(recovery_file=file))
    handle = volume.open("/image.dcm", os.O_RDONLY)
    try:
        assert handle.read(8, 0) == b"DICMDICM"
    finally:
        handle.close()


def test_too_few_shares_change_nothing(backing: Path, tmp_path: Path) -> None:
    _, shares, _ = rekey.create_recovery_key(backing, rekey.OldSecret(OLD), 5, 3)
    raw = store.config_path(backing).read_bytes()
    file = write_shares(tmp_path / "two.txt", shares[:2])
    with pytest.raises(RecoveryKeyError, match="needs 3"):
        rekey.change_secret(backing, rekey.OldSecret(recovery_file=file), NEW, LOG_N)
    assert store.config_path(backing).read_bytes() == raw


def test_recovery_key_of_another_volume_is_refused(backing: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    store.create_volume(other, OLD, scrypt_log_n=LOG_N)
    _, shares, _ = rekey.create_recovery_key(other, rekey.OldSecret(OLD), 1, 1)
    file = write_shares(tmp_path / "other.txt", shares)
    with pytest.raises(RecoveryKeyError, match="belongs to volume"):
        rekey.master_key_from_recovery_file(backing, file)


def test_unlock_with_a_wrong_master_key_is_refused(backing: Path) -> None:
    with pytest.raises(WrongPassphrase):
        store.unlock_with_master_key(backing, os.urandom(32))
    with pytest.raises(WrongPassphrase):
        store.rewrap_master_key(backing, os.urandom(32), NEW, LOG_N)


@pytest.mark.parametrize(("n", "m"), [(3, 1), (2, 3), (0, 0)])
def test_bad_split_parameters(backing: Path, n: int, m: int) -> None:
    with pytest.raises(UsageError):
        rekey.create_recovery_key(backing, rekey.OldSecret(OLD), n, m)
