"""The shipped unit file: systemd itself checks it (systemd-analyze verify), and the settings
the README promises are there (and the ones that would hide the mount are not)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "encfs-pacs@.service"
INSTALLED_COMMAND = "/usr/local/bin/encfs-pacs"


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this venv's console script.
    command = Path(sys.executable).with_name("encfs-pacs")
    if not command.exists():
        pytest.skip(f"{command} is missing (run make setup)")
    instance = tmp_path / "encfs-pacs@pacs.service"  # a template is verified through an instance
    instance.write_text(UNIT.read_text().replace(INSTALLED_COMMAND, str(command)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(instance)],
                            capture_output=True, text=True, timeout=120, check=False)
    # verify warns about unknown keys but still exits 0: any output at all is a finding.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


def test_unit_promises() -> None:
    unit = settings()
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == [f"{INSTALLED_COMMAND} mount --config /etc/encfs-pacs/%i.toml --foreground"]
    assert unit["ExecStop"] == [f"{INSTALLED_COMMAND} unmount --config /etc/encfs-pacs/%i.toml"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["DeviceAllow"] == ["/dev/fuse rw"]
    assert unit["LoadCredential"] == ["encfs-pacs.key:/etc/encfs-pacs/%i.key"]
    # Any of these gives the daemon a private mount namespace: the FUSE mount would then be
    # invisible to the PACS, which would write plaintext into the bare mountpoint folder.
    for hides_the_mount in ("ProtectSystem", "PrivateTmp", "ProtectHome", "ReadWritePaths",
                            "ReadOnlyPaths", "PrivateDevices", "PrivateMounts", "ProtectKernelTunables",
                            "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
                            "ProtectProc", "InaccessiblePaths", "TemporaryFileSystem", "BindPaths",
                            "MountFlags", "DynamicUser"):
        assert hides_the_mount not in unit, hides_the_mount
