"""Maintenance commands' events in the audit trail, through a real mount and the real CLI.

passwd while mounted lands in the live trail (with who ran it and no secret); passwd while
unmounted is queued and recorded at the next mount; init's event reaches the first mount;
a mount with the recovery key is on record; a forged spool entry becomes a security alert;
and ``audit verify`` accepts the trail afterwards.
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import OPEN_POLICY, PASSPHRASE, Mounted, force_unmount, is_fuse_mounted, run_cli, write_policy

from encfs_pacs.audit import read_anchor
from encfs_pacs.audit.canonical import canonical
from encfs_pacs.audit.spool import FORMAT, rejected_path, spool_path

pytestmark = pytest.mark.integration

NEW_PASSPHRASE = "the new passphrase of the audit tests"


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def wait_for_records(m: Mounted, event: str, count: int = 1, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in m.audit_records() if r.get("event") == event]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def verify(m: Mounted) -> None:
    anchor = read_anchor(m.backing)
    assert anchor is not None
    result = run_cli("audit", "verify", m.audit_log, "--anchor", anchor.hex(), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def no_secret_in(path: Path, *secrets: str) -> None:
    data = path.read_bytes()
    for secret in secrets:
        assert secret.encode() not in data, f"a passphrase appears in {path}"


def test_passwd_while_mounted_is_recorded_in_the_live_trail(mount_volume: Callable[..., Mounted],
                                                            passphrase_file: Path, tmp_path: Path) -> None:
    m = mount_volume(None)
    new = secret_file(tmp_path / "new.pass", NEW_PASSPHRASE)
    result = run_cli("passwd", m.backing, "--passphrase-file", passphrase_file, "--new-passphrase-file", new,
                     "--scrypt-log-n", "10")
    assert "recorded in the audit trail of the running mount" in result.stderr
    # "recorded" means durable: the record is in the file when the command returns.
    records = [r for r in m.audit_records() if r["event"] == "volume-key-changed"]
    assert len(records) == 1
    record = records[0]
    assert record["outcome"] == "success" and record["unlocked_with"] == "passphrase"
    assert record["who"]["uid"] == os.getuid()
    assert record["who"]["user"] == pwd.getpwuid(os.getuid()).pw_name
    assert record["spool"]["authenticated"] is True
    assert record["object"]["backing"] == str(m.backing.resolve())
    m.unmount()
    no_secret_in(m.audit_log, PASSPHRASE, NEW_PASSPHRASE)
    verify(m)


def test_passwd_while_unmounted_is_recorded_at_the_next_mount(mount_volume: Callable[..., Mounted],
                                                              volume: Path, passphrase_file: Path,
                                                              tmp_path: Path) -> None:
    new = secret_file(tmp_path / "new.pass", NEW_PASSPHRASE)
    result = run_cli("passwd", volume, "--passphrase-file", passphrase_file, "--new-passphrase-file", new,
                     "--scrypt-log-n", "10")
    assert "queued for the audit trail" in result.stderr and "next mount" in result.stderr
    wrong = run_cli("passwd", volume, "--passphrase-file", passphrase_file, "--new-passphrase-file", new,
                    check=False)  # the old passphrase no longer works: a failed attempt
    assert wrong.returncode == 10 and "queued" in wrong.stderr
    assert len(os.listdir(spool_path(volume))) == 3  # init's event, the change, the failed attempt
    secret_file(passphrase_file, NEW_PASSPHRASE)
    m = mount_volume(None)
    # Recorded (durably) before the mount served anything: there when the mount command returns.
    events = [r["event"] for r in m.audit_records()]
    assert events.index("volume-created") < events.index("volume-key-changed")
    assert wait_for_records(m, "mount")  # the mount record follows (group commit: within a second)
    records = m.audit_records()
    events = [r["event"] for r in records]
    assert events.index("volume-key-changed") < events.index("mount")
    changed = next(r for r in records if r["event"] == "volume-key-changed")
    assert changed["outcome"] == "success" and changed["spool"]["authenticated"] is True
    # The failed attempt had no key to authenticate it: on record as an unverified claim.
    claims = [r for r in records if r.get("claimed", {}).get("event") == "volume-key-changed"]
    assert len(claims) == 1 and claims[0]["event"] == "security-alert" and claims[0]["alert"] is True
    assert claims[0]["claimed"]["outcome"] == "error"
    assert os.listdir(spool_path(volume)) == []
    m.unmount()
    no_secret_in(m.audit_log, PASSPHRASE, NEW_PASSPHRASE)
    verify(m)


def test_a_forged_spool_entry_is_reported_as_an_alert(mount_volume: Callable[..., Mounted],
                                                      volume: Path) -> None:
    m = mount_volume(None)
    # Someone who can write the volume folder but has no key fakes a harmless-looking event.
    entry_id = "ab" * 16
    body = {"format": FORMAT, "id": entry_id, "mac": "00" * 32,
            "payload": {"event": "volume-checked", "outcome": "clean", "who": {"uid": 0, "user": "root"}}}
    name = f"{time.time_ns():020d}-{entry_id}.json"
    (spool_path(volume) / name).write_bytes(canonical(body) + b"\n")
    alerts = wait_for_records(m, "security-alert")
    assert len(alerts) == 1, m.audit_records()
    assert alerts[0]["claimed"]["event"] == "volume-checked" and "does not verify" in alerts[0]["detail"]
    assert not [r for r in m.audit_records() if r["event"] == "volume-checked"]
    assert os.listdir(rejected_path(volume)) == [name]  # kept as evidence
    m.unmount()
    verify(m)


def test_mount_with_the_recovery_key_is_on_record(volume: Path, passphrase_file: Path,
                                                  tmp_path: Path) -> None:
    printed = run_cli("recovery-key", "create", volume, "--passphrase-file", passphrase_file).stdout
    recovery = secret_file(tmp_path / "recovery.txt", printed)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    audit_log = tmp_path / "recovery.audit.jsonl"
    m = Mounted(backing=volume, mountpoint=mountpoint, log_file=tmp_path / "daemon.log",
                passphrase_file=passphrase_file, audit_log=audit_log)
    try:
        result = run_cli("mount", volume, mountpoint, "--recovery-key-file", recovery, "--no-policy",
                         "--log-file", m.log_file, "--audit-log", audit_log)
        assert "recovery key recorded in the audit trail of this mount" in result.stderr
        records = m.audit_records()
        used = [r for r in records if r["event"] == "recovery-key-used"]
        assert len(used) == 1 and used[0]["alert"] is True and used[0]["purpose"] == "mount"
        assert used[0]["spool"]["authenticated"] is True
        created = [r for r in records if r["event"] == "recovery-key-created"]
        assert len(created) == 1 and created[0]["shares"] == 1
    finally:
        if is_fuse_mounted(mountpoint) and run_cli("unmount", mountpoint, check=False).returncode != 0:
            force_unmount(mountpoint)
    data = audit_log.read_text()
    assert all(line.split()[-1] not in data for line in printed.splitlines() if line and line[0] != "#")
    verify(m)
    assert "Traceback" not in m.log()


def test_fsck_and_export_of_a_mounted_volume_are_recorded(mount_volume: Callable[..., Mounted],
                                                          passphrase_file: Path, tmp_path: Path) -> None:
    m = mount_volume(None)
    (m.mountpoint / "a.dcm").write_bytes(b"DICM" * 100)
    fsck = run_cli("fsck", m.backing, "--passphrase-file", passphrase_file, "--json")
    json.loads(fsck.stdout)  # the audit line goes to stderr: --json output stays parseable
    assert "recorded in the audit trail of the running mount" in fsck.stderr
    run_cli("export", m.backing, tmp_path / "out", "--passphrase-file", passphrase_file)
    checked = wait_for_records(m, "volume-checked")
    exported = wait_for_records(m, "volume-export")
    assert checked[0]["outcome"] == "clean" and exported[0]["files"] == 1
    m.unmount()
    verify(m)


def test_a_policy_edit_names_who_made_it_in_the_trail_of_mounts_using_it(
        mount_volume: Callable[..., Mounted], tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "policy.toml", OPEN_POLICY.format(uid=os.geteuid()))
    m = mount_volume(policy)
    result = run_cli("allow", "add", "--policy", policy, "--exe", "/bin/true", "--id", "true-tool")
    assert "audit: policy edit" in result.stderr
    edits = wait_for_records(m, "policy-edit")
    assert len(edits) == 1
    claim = edits[0]
    # No volume key in `allow`: marked unauthenticated, but not an alert (routine admin work).
    assert claim["spool"]["authenticated"] is False and not claim.get("alert")
    assert not [r for r in m.audit_records() if r["event"] == "security-alert"]
    assert claim["action"] == "add" and claim["rule"]["id"] == "true-tool"
    assert claim["who"]["uid"] == os.getuid() and claim["policy_file"] == str(policy)
    # The mount's own record of what changed is still the reload (not duplicated by the edit).
    reloads = wait_for_records(m, "policy-reload")
    assert len(reloads) == 1 and reloads[0]["changes"]["added"] == ["true-tool"]
    assert reloads[0]["policy"]["sha256"] == claim["policy_sha256"]
    other = write_policy(tmp_path / "other.toml", OPEN_POLICY.format(uid=os.geteuid()))
    unused = run_cli("allow", "add", "--policy", other, "--exe", "/bin/true", "--id", "elsewhere")
    assert f"no running mount uses {other}" in unused.stderr
    assert not [r for r in m.audit_records() if r.get("rule", {}).get("id") == "elsewhere"]
    m.unmount()
    verify(m)
