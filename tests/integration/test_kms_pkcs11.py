"""A volume whose key is in an HSM: SoftHSM2 through its PKCS#11 module, driven by the CLI.

Each test gets its own SoftHSM2 token folder and config ($SOFTHSM2_CONF, inherited by the CLI
subprocesses) with one token and one non-extractable AES-256 key (tests/softhsm.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import (  # tests/conftest.py: shared helpers
    Mounted,
    is_fuse_mounted,
    mount_with_kms,
    run_cli,
    write_kms_mount_config,
)
from softhsm import KEY_LABEL, PIN, TOKEN, Hsm, softhsm_token, softhsm_unavailable  # tests/softhsm.py

from encfs_pacs.audit.spool import spool_path

from .test_cli import assert_clean_error

pytestmark = pytest.mark.integration

_why_not = softhsm_unavailable()
if _why_not is not None:
    pytest.skip(_why_not, allow_module_level=True)


@pytest.fixture
def hsm(tmp_path: Path) -> Iterator[Hsm]:
    with softhsm_token(tmp_path / "softhsm") as made:
        yield made


@dataclass
class KmsMounted(Mounted):
    """Mounted with the HSM key, no policy and no audit trail: the key tests need neither."""

    def mount(self) -> None:
        run_cli("mount", self.backing, self.mountpoint, "--kms", self.kms, "--log-file", self.log_file,
                "--no-policy", "--no-audit", *self.extra_args)


@pytest.fixture
def backing(tmp_path: Path, hsm: Hsm) -> Path:
    path = tmp_path / "backing"
    run_cli("init", path, "--kms", hsm.uri())
    return path


def _kms_mount(backing: Path, mountpoint: Path, tmp_path: Path, uri: str) -> KmsMounted:
    return KmsMounted(backing=backing, mountpoint=mountpoint, log_file=tmp_path / "daemon.log", kms=uri)


def test_init_mount_write_and_remount(backing: Path, mountpoint: Path, tmp_path: Path, hsm: Hsm) -> None:
    text = (backing / ".encfs-pacs" / "volume.json").read_text()
    assert '"algorithm": "pkcs11"' in text and KEY_LABEL in text
    assert PIN not in text and str(hsm.pin_file) not in text  # only the non-secret reference
    m = _kms_mount(backing, mountpoint, tmp_path, hsm.mount_uri())
    m.mount()
    try:
        assert m.is_mounted
        (mountpoint / "study").mkdir()
        (mountpoint / "study" / "image.dcm").write_bytes(b"DICM" * 5000)
        m.unmount()
        m.mount()
        assert (mountpoint / "study" / "image.dcm").read_bytes() == b"DICM" * 5000
    finally:
        if m.is_mounted:
            m.unmount()
    assert "Traceback" not in m.log()


def test_wrong_pin_mounts_nothing(backing: Path, mountpoint: Path, tmp_path: Path, hsm: Hsm) -> None:
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("000000\n")
    result = mount_with_kms(backing, mountpoint, hsm.mount_uri(wrong), check=False)
    assert_clean_error(result, 32, "refused the PIN")
    assert not is_fuse_mounted(mountpoint)


def test_init_with_a_wrong_pin_creates_nothing(tmp_path: Path, hsm: Hsm) -> None:
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("000000\n")
    result = run_cli("init", tmp_path / "new", "--kms", hsm.uri(pin_file=wrong), check=False)
    assert_clean_error(result, 32, "refused the PIN")
    assert not (tmp_path / "new").exists()


def test_init_with_a_missing_key_creates_nothing(tmp_path: Path, hsm: Hsm) -> None:
    result = run_cli("init", tmp_path / "new", "--kms", hsm.uri(object="no-such-key"), check=False)
    assert_clean_error(result, 32, "no AES key labelled 'no-such-key'")
    assert not (tmp_path / "new").exists()


def test_deleted_key_mounts_nothing(backing: Path, mountpoint: Path, hsm: Hsm) -> None:
    hsm.delete_key()
    result = mount_with_kms(backing, mountpoint, hsm.mount_uri(), check=False)
    assert_clean_error(result, 32, f"no AES key labelled '{KEY_LABEL}'", "recovery key")
    assert not is_fuse_mounted(mountpoint)


def test_missing_token_is_unreachable(backing: Path, mountpoint: Path, hsm: Hsm) -> None:
    hsm.remove_token()
    result = mount_with_kms(backing, mountpoint, hsm.mount_uri(), check=False)
    assert_clean_error(result, 31, f"token '{TOKEN}'", "present")
    assert not is_fuse_mounted(mountpoint)


def test_missing_module_is_unreachable(backing: Path, mountpoint: Path, hsm: Hsm) -> None:
    uri = f"pkcs11:?module-path=/usr/lib/no-such-vendor/libpkcs11.so&pin-source=file:{hsm.pin_file}"
    result = mount_with_kms(backing, mountpoint, uri, check=False)
    assert_clean_error(result, 31, "cannot load the PKCS#11 module")
    assert not is_fuse_mounted(mountpoint)


def test_no_key_source_says_to_use_kms(backing: Path, mountpoint: Path) -> None:
    result = run_cli("mount", backing, mountpoint, "--no-policy", "--no-audit", check=False)
    assert_clean_error(result, 18, "pkcs11 key service", "--kms")


def test_config_file_and_a_running_mount_outlives_the_hsm(backing: Path, mountpoint: Path, tmp_path: Path,
                                                         hsm: Hsm) -> None:
    """mount --config with the kms key; once mounted, the master key is in memory: losing the
    HSM does not stop the running mount, only the next mount."""
    config = write_kms_mount_config(tmp_path, backing, mountpoint, hsm.mount_uri())
    run_cli("mount", "--config", config)
    try:
        (mountpoint / "a.txt").write_text("before")
        hsm.remove_token()
        (mountpoint / "b.txt").write_text("after the HSM went away")
        assert (mountpoint / "a.txt").read_text() == "before"
        run_cli("unmount", mountpoint)
        result = run_cli("mount", "--config", config, check=False)
        assert_clean_error(result, 31, "token")
        assert not is_fuse_mounted(mountpoint)
    finally:
        if is_fuse_mounted(mountpoint):
            run_cli("unmount", mountpoint, check=False)


def test_passwd_moves_a_passphrase_volume_into_the_hsm_and_maintenance_uses_it(
        tmp_path: Path, mountpoint: Path, hsm: Hsm) -> None:
    passphrase = tmp_path / "old.pass"
    passphrase.write_text("an old passphrase\n")
    passphrase.chmod(0o600)
    backing = tmp_path / "backing"
    run_cli("init", backing, "--passphrase-file", passphrase, "--scrypt-log-n", "10")
    before = json.loads((backing / ".encfs-pacs" / "volume.json").read_text())
    result = run_cli("passwd", backing, "--passphrase-file", passphrase, "--new-kms", hsm.uri(),
                     "--scrypt-log-n", "10")
    assert "key service" in result.stdout
    after = json.loads((backing / ".encfs-pacs" / "volume.json").read_text())
    assert after["kdf"]["algorithm"] == "pkcs11" and after["key_id"] == before["key_id"]  # no re-encryption
    assert_clean_error(run_cli("mount", backing, mountpoint, "--passphrase-file", passphrase, "--no-policy",
                               "--no-audit", check=False), 2, "pkcs11 key service")
    fsck = run_cli("fsck", backing, "--kms", hsm.mount_uri(), "--json")
    assert fsck.returncode == 0
    queued = [json.loads(f.read_text())["payload"] for f in spool_path(backing).iterdir()]
    checked = [event for event in queued if event["event"] == "volume-checked"]
    assert [event["unlocked_with"] for event in checked] == ["pkcs11"]  # not "passphrase"
    shares = run_cli("recovery-key", "create", backing, "--kms", hsm.mount_uri()).stdout
    assert "RECOVERY KEY" in shares
    recovery = tmp_path / "recovery.txt"
    recovery.write_text(shares)
    recovery.chmod(0o600)
    hsm.delete_key()  # the HSM key is lost: the recovery key still opens the volume
    run_cli("recovery-key", "check", backing, "--recovery-key-file", recovery)
    assert_clean_error(run_cli("fsck", backing, "--kms", hsm.mount_uri(), check=False), 32, "no AES key")


def test_recovery_key_printed_at_init_mounts_after_the_hsm_key_is_lost(tmp_path: Path, mountpoint: Path,
                                                                       hsm: Hsm) -> None:
    backing = tmp_path / "backing"
    printed = run_cli("init", backing, "--kms", hsm.uri(), "--print-recovery-key").stdout
    assert "# encfs-pacs RECOVERY KEY" in printed
    recovery = tmp_path / "recovery.txt"
    recovery.write_text(printed[printed.index("# encfs-pacs RECOVERY KEY"):])  # the part for the safe
    recovery.chmod(0o600)
    hsm.delete_key()
    assert_clean_error(mount_with_kms(backing, mountpoint, hsm.mount_uri(), check=False), 32, "no AES key")
    run_cli("mount", backing, mountpoint, "--recovery-key-file", recovery, "--no-policy", "--no-audit")
    try:
        (mountpoint / "still.txt").write_text("readable with the recovery key")
    finally:
        run_cli("unmount", mountpoint)
