"""The service path end to end: mount --config, a systemd credential, sd_notify, status.

systemd itself is not needed: $CREDENTIALS_DIRECTORY and $NOTIFY_SOCKET are set by hand,
exactly as systemd sets them for a Type=notify unit with LoadCredential=.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import OPEN_POLICY, PASSPHRASE, force_unmount, is_fuse_mounted, run_cli, write_policy

pytestmark = pytest.mark.integration


@pytest.fixture
def service_setup(tmp_path: Path, volume: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "pacs.pass").write_text(PASSPHRASE + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    mountpoint = tmp_path / "plain"
    mountpoint.mkdir()
    write_policy(tmp_path / "policy.toml", OPEN_POLICY.format(uid=os.geteuid()))
    config_file = tmp_path / "orthanc.toml"
    # Relative paths: resolved against the config's folder, not the test's working folder.
    config_file.write_text(f'backing = "{volume.name}"\nmountpoint = "plain"\ncredential = "pacs.pass"\n'
                           'policy = "policy.toml"\naudit_log = "audit.jsonl"\nlog_file = "daemon.log"\n')
    paths = {"config": config_file, "mountpoint": mountpoint, "backing": volume,
             "audit": tmp_path / "audit.jsonl", "policy": tmp_path / "policy.toml"}
    try:
        yield paths
    finally:
        if is_fuse_mounted(mountpoint):
            run_cli("unmount", mountpoint, check=False)
        if is_fuse_mounted(mountpoint):
            force_unmount(mountpoint)
            pytest.fail("the mount had to be removed with fusermount3 -uz", pytrace=False)


def test_mount_from_config_with_credential_then_status(service_setup: dict[str, Path]) -> None:
    mountpoint = service_setup["mountpoint"]
    run_cli("mount", "--config", service_setup["config"])
    assert is_fuse_mounted(mountpoint)
    (mountpoint / "study.dcm").write_bytes(b"DICM" * 100)
    assert (mountpoint / "study.dcm").read_bytes() == b"DICM" * 100

    report = json.loads(run_cli("status", mountpoint, "--json").stdout)
    assert len(report["mounts"]) == 1
    entry = report["mounts"][0]
    assert entry["mountpoint"] == str(mountpoint) and entry["backing"] == str(service_setup["backing"])
    assert entry["daemon_running"] is True and isinstance(entry["pid"], int)
    assert entry["policy"]["path"] == str(service_setup["policy"])
    assert entry["policy"]["rules"] == 2 and len(entry["policy"]["sha256"]) == 64
    assert entry["audit"]["path"] == str(service_setup["audit"]) and entry["audit"]["size"] > 0
    assert entry["audit"]["denied_last_hour"] == 0

    text = run_cli("status").stdout
    assert str(mountpoint) in text and "policy.toml" in text

    run_cli("unmount", mountpoint)
    assert not is_fuse_mounted(mountpoint)
    stopped = run_cli("status", mountpoint, "--json", check=False)
    assert stopped.returncode == 3 and json.loads(stopped.stdout)["mounts"] == []


def test_command_line_overrides_config(service_setup: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    run_cli("mount", "--config", service_setup["config"], service_setup["backing"], other)
    try:
        assert is_fuse_mounted(other) and not is_fuse_mounted(service_setup["mountpoint"])
    finally:
        run_cli("unmount", other, check=False)
        if is_fuse_mounted(other):
            force_unmount(other)


def test_bad_config_exits_30_naming_key(service_setup: dict[str, Path]) -> None:
    service_setup["config"].write_text(service_setup["config"].read_text() + "audit_fail_opn = true\n")
    result = run_cli("mount", "--config", service_setup["config"], check=False)
    assert result.returncode == 30
    assert str(service_setup["config"]) in result.stderr and "audit_fail_opn" in result.stderr


def test_missing_credentials_directory(service_setup: dict[str, Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    result = run_cli("mount", "--config", service_setup["config"], check=False)
    assert result.returncode == 18 and "CREDENTIALS_DIRECTORY is not set" in result.stderr
    assert not is_fuse_mounted(service_setup["mountpoint"])


def test_foreground_notifies_ready_then_stopping(service_setup: dict[str, Path], tmp_path: Path) -> None:
    """What systemd sees from Type=notify: READY=1 only once the mount answers, STOPPING=1 at the end."""
    mountpoint = service_setup["mountpoint"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify.sock"))
        listener.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
        daemon = subprocess.Popen([sys.executable, "-m", "encfs_pacs", "mount", "--config",
                                   str(service_setup["config"]), "--foreground"],
                                  env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        try:
            ready = listener.recv(4096).decode()
            assert ready.startswith("READY=1\n") and f"MAINPID={daemon.pid}" in ready
            # READY came after the kernel mount: the volume is usable at this moment.
            assert is_fuse_mounted(mountpoint)
            (mountpoint / "a").write_bytes(b"x")
            run_cli("unmount", "--config", service_setup["config"])  # the unit's ExecStop=
            assert listener.recv(4096).decode().startswith("STOPPING=1\n")
            assert daemon.wait(timeout=60) == 0
        finally:
            if daemon.poll() is None:
                daemon.terminate()
                daemon.wait(timeout=60)
            assert daemon.stdout is not None
            daemon.stdout.close()


# ---------------------------------------------------------------------------- the unit's capabilities

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "encfs-pacs@.service"


def unit_capabilities() -> list[str]:
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("CapabilityBoundingSet="))
    return [cap.removeprefix("CAP_").lower() for cap in line.split("=", 1)[1].split()]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the unit runs the daemon as root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.parametrize("dropped", [None, "sys_ptrace", "chown", "dac_override"])
def test_unit_capability_set_is_enough_and_each_cap_is_needed(
        service_setup: dict[str, Path], dropped: str | None) -> None:
    """The daemon under exactly the unit's CapabilityBoundingSet serves another user (write,
    chown to that user, read back through the allow-list); without CAP_SYS_PTRACE the caller
    cannot be identified and is denied, without CAP_CHOWN the new file cannot get its owner,
    without CAP_DAC_OVERRIDE it cannot read the caller's /proc/PID/environ (mode 0400)."""
    caps = [cap for cap in unit_capabilities() if cap != dropped]
    assert dropped is None or len(caps) == len(unit_capabilities()) - 1
    # The config's policy (conftest's OPEN_POLICY) grants the test runner and uid 65534 everything.
    mountpoint = service_setup["mountpoint"]
    bounding = ",".join(["-all", *(f"+{cap}" for cap in caps)])
    # The mount's root shows the backing folder's mode: open it to the other user up front (a
    # chmod through the mount would itself need the identification under test).
    service_setup["backing"].chmod(0o777)
    command = ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--ambient-caps=-all",
               sys.executable, "-m", "encfs_pacs", "mount", "--config", str(service_setup["config"])]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    daemon = json.loads(run_cli("status", mountpoint, "--json").stdout)["mounts"][0]["pid"]
    status_line = next(x for x in Path(f"/proc/{daemon}/status").read_text().splitlines()
                       if x.startswith("CapBnd:"))
    assert int(status_line.split()[1], 16).bit_count() == len(caps)
    root = os.open(mountpoint, os.O_PATH | os.O_DIRECTORY)
    try:
        shell = subprocess.run(["/bin/sh", "-c", f"echo scan > /proc/self/fd/{root}/new.dcm && "
                                                 f"cat /proc/self/fd/{root}/new.dcm"],
                               user=65534, group=65534, extra_groups=[], pass_fds=(root,),
                               capture_output=True, text=True, timeout=60, check=False)
    finally:
        os.close(root)
    if dropped is None:
        assert shell.returncode == 0 and shell.stdout == "scan\n", shell.stderr
        assert (mountpoint / "new.dcm").stat().st_uid == 65534
    else:
        assert shell.returncode != 0, f"still works without CAP_{dropped.upper()}: {shell.stdout}"
        if dropped == "chown":  # the daemon's lchown to the caller is refused
            assert "Operation not permitted" in shell.stderr
        else:  # /proc/PID/exe (ptrace check) or /proc/PID/environ (mode 0400 of the caller)
            log = (service_setup["config"].parent / "daemon.log").read_text()
            assert "caller not identified" in log and "uid 65534" in log
