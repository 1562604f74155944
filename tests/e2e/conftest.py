"""Fixtures for the end-to-end tests: a PACS site on an encfs-pacs mount under an allow-list.

Module-scoped (starting a mount and Orthanc once per module keeps the group fast); teardown
runs in dependency order whatever the tests did: Orthanc and storescp stop first, then the
volume is unmounted, then the network namespace goes.

The site's policy allows exactly the programs the PACS needs, each pinned by SHA-256:
Orthanc in /orthanc (its storage area and its SQLite index), storescp writing and dcmdump
reading in /incoming, ``mkdir`` creating folders (the operator preparing the volume), and the
tests' own reader (tests/e2e/reader.py: read and list only). Everything else — the test
process itself, cat, dd, a Python one-liner — is denied.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Mounted, _teardown_unmount, init_volume, run_cli, write_passphrase_file

from .pacs import ORTHANC, NetNamespace, Orthanc, missing_pacs_software, tool

READER = Path(__file__).with_name("reader.py")
PYTHON = os.path.realpath(sys.executable)  # what /proc/PID/exe shows: the rule's exe
READER_ARGS = "* */e2e/reader.py *"  # the interpreter alone identifies nothing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = missing_pacs_software()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"end-to-end test skipped: {reason}")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


# The site's allow-list rules: id -> `allow add` options (each program pinned by its hash).
SITE_RULES: dict[str, tuple[str, ...]] = {
    "orthanc": ("--exe", ORTHANC, "--path", "/orthanc"),
    "storescp": ("--exe", "storescp", "--path", "/incoming"),
    "dcmdump": ("--exe", "dcmdump", "--path", "/incoming", "--ops", "read,list"),
    "folders": ("--exe", "mkdir", "--ops", "create"),
    "e2e-reader": ("--exe", PYTHON, "--args", READER_ARGS, "--ops", "read,list"),
    # A workstation's viewer stand-in (shared storage): DCMTK reading Orthanc's stored files.
    "dcmdump-was": ("--exe", "dcmdump", "--path", "/orthanc", "--ops", "read,list"),
}
DEFAULT_SITE_RULES = ("orthanc", "storescp", "dcmdump", "folders", "e2e-reader")


def site_policy(path: Path, rules: tuple[str, ...] = DEFAULT_SITE_RULES) -> Path:
    """Write the site's allow-list (``rules``: ids of SITE_RULES) with the admin CLI, which pins
    each program's hash."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    for rule in rules:
        options = list(SITE_RULES[rule])
        exe = options.index("--exe") + 1
        options[exe] = options[exe] if os.path.isabs(options[exe]) else tool(options[exe])
        run_cli("allow", "add", "--policy", path, "--id", rule, *options)
    return path


@dataclass
class Site:
    """A mounted volume with the site policy. ``mnt``: the plaintext view; ``backing``: the disk."""

    mounted: Mounted
    workdir: Path

    @property
    def mnt(self) -> Path:
        return self.mounted.mountpoint

    @property
    def backing(self) -> Path:
        return self.mounted.backing

    def mkdir(self, relative: str) -> Path:
        """Create a folder on the mount the way an operator would (with mkdir(1))."""
        path = self.mnt / relative
        subprocess.run([tool("mkdir"), str(path)], check=True, capture_output=True, timeout=60)
        return path

    def read(self, action: str, **arguments: Any) -> Any:
        """Run the allowed reader program (tests/e2e/reader.py) on the mount."""
        return read(action, **arguments)

    def remount(self) -> None:
        self.mounted.unmount()
        self.mounted.mount()

    def backing_files(self, below: str = "") -> dict[str, bytes]:
        """The stored (encrypted) files under ``below``, read straight from the backing folder
        (the volume's own metadata folder excluded)."""
        root = self.backing / below
        return {str(p.relative_to(self.backing)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and ".encfs-pacs" not in p.relative_to(self.backing).parts}

    def plaintext_in_backing(self, needles: dict[str, bytes]) -> list[str]:
        """Every trace of plaintext on the disk: a needle inside a stored file, a DICOM preamble
        ('DICM' at offset 128), a SQLite header, or a needle in a file or folder name."""
        findings = []
        for name, data in self.backing_files().items():
            findings += [f"{name}: contains {label}" for label, needle in needles.items() if needle in data]
            if data[128:132] == b"DICM":
                findings.append(f"{name}: DICOM preamble ('DICM' at offset 128)")
            if data.startswith(b"SQLite format 3\0"):
                findings.append(f"{name}: SQLite header")
        for path in self.backing.rglob("*"):
            findings += [f"{path}: name contains {label}" for label, needle in needles.items()
                         if needle in os.fsencode(path.name)]
        return findings


def read(action: str, **arguments: Any) -> Any:
    import json

    # Run through the venv's interpreter (sys.executable) so pydicom is importable; the kernel
    # resolves it to the same binary (PYTHON) that the rule pins.
    result = subprocess.run([sys.executable, str(READER), action, json.dumps(arguments)], capture_output=True,
                            text=True, timeout=300, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise AssertionError(f"reader {action} failed:\n{result.stderr}")
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def netns() -> Iterator[NetNamespace]:
    namespace = NetNamespace()
    try:
        yield namespace
    finally:
        namespace.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("site")
    passphrase = write_passphrase_file(workdir)
    backing = init_volume(workdir / "backing", passphrase)
    mountpoint = workdir / "mnt"
    mountpoint.mkdir()
    mounted = Mounted(backing=backing, mountpoint=mountpoint, log_file=workdir / "daemon.log",
                      passphrase_file=passphrase, policy_file=site_policy(workdir / "etc" / "policy.toml"))
    try:
        mounted.mount()
        yield Site(mounted=mounted, workdir=workdir)
    finally:
        problems = unmount_all([mounted])
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


def unmount_all(mounts: list[Mounted]) -> list[str]:
    """Unmount every mount whatever state it is in; the complaints (unclean unmount, a daemon
    that logged an internal error) for the caller to fail with after all are down."""
    problems = [p for p in map(_teardown_unmount, mounts) if p]
    problems += [f"{m.log_file.name} logged an internal error:\n{m.log()}" for m in mounts
                 if "internal error" in m.log() or "Traceback" in m.log()]
    return problems


@contextmanager
def running_orthanc(netns: NetNamespace, root: Path, workdir: Path) -> Iterator[Orthanc]:
    """Orthanc with its storage and index under ``root`` (a mount), stopped on exit; a crash
    at shutdown (SIGBUS on a mapped file, a failed final checkpoint) fails the test."""
    server = Orthanc(netns, root, workdir)
    try:
        server.start()
        yield server
    finally:
        code = server.stop()
    if code not in (None, 0):
        pytest.fail(f"Orthanc exited with {code} when stopped:\n{server.log_tail()}", pytrace=False)


@pytest.fixture(scope="module")
def orthanc(site: Site, netns: NetNamespace) -> Iterator[Orthanc]:
    with running_orthanc(netns, site.mnt / "orthanc", site.workdir) as server:
        yield server
