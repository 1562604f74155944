"""Issue 9 end to end: ACQ -> NAS -> WAS with keys from an HSM and one merged, verified audit view.

One volume (the "NAS" folder) whose master key is wrapped by a non-extractable AES key in a
SoftHSM2 token (``init --kms``). Two encfs-pacs daemons mount it at once, as the acquisition
server (ACQ) and the workstation server (WAS) would: each with ``--shared-storage``, its own
``--audit-host``, its own allow-list and audit log, both forwarding their records over TCP to
one real rsyslogd on 127.0.0.1 with their own ``--syslog-hostname``.

- ACQ's allow-list: only Orthanc (hash-pinned) in /orthanc. Orthanc, in its own network
  namespace, stores pydicom's sample files on the ACQ mount.
- WAS's allow-list: the tests' reader (pydicom) and dcmdump, read and list only. While both
  mounts are live they read the stored files byte for byte; ``cat`` and the test process
  itself (programs on no rule) are denied.
- After both unmounts: ``audit collect`` rebuilds each host's trail from rsyslog's file; each
  host's collected trail and its local log verify against that host's anchor (and not against
  the other host's); ``audit query`` over both hosts' logs shows ACQ's store and WAS's read of
  the same patient/study in one time-ordered view with host names, and WAS's denials.

Everything started here (Orthanc, both mounts, rsyslogd, the token's environment) is stopped
in teardown in reverse order, whatever failed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from conftest import Mounted, run_cli
from softhsm import Hsm, softhsm_token, softhsm_unavailable
from syslog_collector import Collector

from .conftest import ORTHANC, PYTHON, NetNamespace, read, running_orthanc, site_policy, unmount_all
from .pacs import tool
from .studies import pydicom_sample, sha256

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

HOSTS = ("acq", "was")
POLICIES = {"acq": ("orthanc",), "was": ("e2e-reader", "dcmdump-was")}
SAMPLES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")  # three patients, three studies


@dataclass
class Servers:
    backing: Path
    workdir: Path
    acq: Mounted
    was: Mounted

    def local_log(self, host: str) -> Path:
        log = getattr(self, host).audit_log
        assert log is not None
        return log


@pytest.fixture
def hsm(tmp_path: Path) -> Iterator[Hsm]:
    reason = softhsm_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with softhsm_token(tmp_path / "softhsm") as made:
        yield made


@pytest.fixture
def servers(tmp_path: Path, hsm: Hsm, rsyslog: Collector) -> Iterator[Servers]:
    """The volume, keyed by the HSM, mounted by ACQ and WAS (torn down before the collector
    and the token: the fixtures it depends on)."""
    backing = tmp_path / "nas"
    run_cli("init", backing, "--kms", hsm.uri())
    assert json.loads((backing / ".encfs-pacs" / "volume.json").read_text())["kdf"]["algorithm"] == "pkcs11"
    made: list[Mounted] = []
    try:
        for host in HOSTS:
            # Each server's own disk: its policy, daemon log and audit log. The audit log sits
            # in a folder named after the host, so `audit query` labels its records with it.
            disk = tmp_path / host
            (disk / "log" / host).mkdir(parents=True)
            made.append(Mounted(
                backing=backing, mountpoint=disk / "mnt", log_file=disk / "log" / "daemon.log",
                kms=hsm.mount_uri(), policy_file=site_policy(disk / "etc" / "policy.toml", POLICIES[host]),
                audit_log=disk / "log" / host / "audit.jsonl",
                extra_args=("--shared-storage", "--audit-host", host,
                            "--syslog", rsyslog.target("tcp"), "--syslog-hostname", host)))
            made[-1].mountpoint.mkdir()
            made[-1].mount()
        yield Servers(backing, tmp_path, *made)
    finally:
        problems = unmount_all(made)
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


def test_acq_stores_was_reads_one_merged_verified_audit_view(servers: Servers, rsyslog: Collector,
                                                              netns: NetNamespace) -> None:
    acq_root, was_root = servers.acq.mountpoint / "orthanc", servers.was.mountpoint / "orthanc"
    sources = [pydicom_sample(name) for name in SAMPLES]
    with running_orthanc(netns, acq_root, servers.workdir) as orthanc:
        stored = {}  # storage path (relative to the Orthanc folder) -> the file sent
        for source in sources:
            stored[orthanc.storage_path(orthanc.upload(source)["ID"])] = source
        assert orthanc.errors() == []
        # Both mounts live, Orthanc still running: WAS reads what ACQ stored, no remount, no wait.
        _was_reads_byte_exact(was_root, stored)
        _was_denies_others(was_root / next(iter(stored)))
    servers.acq.unmount()
    servers.was.unmount()

    central = servers.workdir / "central"
    _collect_when_complete(servers, rsyslog, central)
    anchors = {host: run_cli("audit", "anchor", servers.backing, "--host", host).stdout.strip()
               for host in HOSTS}
    assert anchors["acq"] != anchors["was"]
    for host in HOSTS:
        collected = sorted((central / host).iterdir())
        run_cli("audit", "verify", "--anchor", anchors[host], *collected)
        run_cli("audit", "verify", "--anchor", anchors[host], servers.local_log(host))
        other = anchors["was" if host == "acq" else "acq"]  # a host's chain is not the other's
        assert run_cli("audit", "verify", "--anchor", other, *collected, check=False).returncode == 24

    ct = pydicom.dcmread(sources[0])
    for logs in (sorted(central.glob("*/*")), [servers.local_log(host) for host in HOSTS]):
        _merged_view_shows_acq_store_then_was_read(logs, ct.PatientID, ct.StudyInstanceUID,
                                                  ct.SOPInstanceUID)


def _was_reads_byte_exact(was_root: Path, stored: dict[str, Path]) -> None:
    on_was = read("files", root=str(was_root / "storage"))
    for relative, source in stored.items():
        assert on_was[relative.removeprefix("storage/")]["sha256"] == sha256(source.read_bytes()), source.name
    answers = read("dicom", paths=[str(was_root / p) for p in stored], defer_size=1024)
    for relative, source in stored.items():
        want, got = pydicom.dcmread(source), answers[str(was_root / relative)]
        assert (got["sop_instance_uid"], got["patient_name"]) == (want.SOPInstanceUID, str(want.PatientName))
    for relative, source in stored.items():
        dump = subprocess.run([tool("dcmdump"), str(was_root / relative)], capture_output=True, text=True,
                              timeout=120, check=False, stdin=subprocess.DEVNULL)
        assert dump.returncode == 0, dump.stderr
        assert str(pydicom.dcmread(source).SOPInstanceUID) in dump.stdout


def _was_denies_others(path: Path) -> None:
    """Programs on no rule of WAS's allow-list: cat, and this test process (Python without
    the reader's command line); neither gets a byte."""
    cat = subprocess.run([tool("cat"), str(path)], capture_output=True, timeout=60, check=False,
                         stdin=subprocess.DEVNULL)
    assert cat.returncode != 0 and cat.stdout == b"" and b"Permission denied" in cat.stderr
    with pytest.raises(PermissionError):
        path.read_bytes()
    with pytest.raises(PermissionError):
        (path.parent / "ransom.note").write_bytes(b"pay")


def _collect_when_complete(servers: Servers, collector: Collector, central: Path) -> None:
    """Wait until rsyslog has every line of both local logs (TCP: nothing is dropped), then
    rebuild each host's trail from its file and compare it with the host's own log."""
    for host in HOSTS:
        local = servers.local_log(host).read_bytes()
        count = local.count(b"\n")
        collector.wait_for(lambda host=host, count=count: len(collector.messages(host)) >= count,
                           f"{host}'s {count} audit lines")
    out = run_cli("audit", "collect", collector.out, central).stdout
    assert "audit records from 2 host(s)" in out, out
    for host in HOSTS:
        collected = b"".join(f.read_bytes() for f in sorted((central / host).iterdir()))
        assert collected == servers.local_log(host).read_bytes(), f"{host}: the collector's copy differs"


def _merged_view_shows_acq_store_then_was_read(logs: list[Path], patient: str, study: str, sop: str) -> None:
    table = run_cli("audit", "query", *logs, "--patient", patient).stdout.splitlines()
    assert table[0].split()[:2] == ["host", "time"], table[0]
    assert {"acq", "was"} <= {row.split()[0] for row in table[1:]}, table

    records = [json.loads(line) for line in run_cli("audit", "query", *logs, "--json").stdout.splitlines()]
    times = [r["time"] for r in records]
    assert times == sorted(times), "the merged view is not in time order"
    assert {r["origin"] for r in records} == set(HOSTS)

    def of_sop(r: dict) -> bool:
        dicom = (r.get("object") or {}).get("dicom") or {}
        return (dicom.get("SOPInstanceUID"), dicom.get("PatientID"), dicom.get("StudyInstanceUID")) == (
            sop, patient, study)

    stores = [i for i, r in enumerate(records) if r["origin"] == "acq" and r["event"] == "release"
              and r["program"]["exe"] == ORTHANC and of_sop(r)]
    reads = [i for i, r in enumerate(records) if r["origin"] == "was" and r["event"] == "open"
             and r["outcome"] == "allowed" and r["program"]["exe"] == PYTHON and of_sop(r)]
    assert stores and reads, "ACQ's store or WAS's read of the instance is missing from the merged view"
    assert stores[0] < reads[0], "WAS read the instance before ACQ stored it?"
    denied = [r for r in records if r["outcome"] == "denied"]
    assert denied and {r["origin"] for r in denied} == {"was"}
    assert {r["program"]["exe"] for r in denied} == {tool("cat"), PYTHON}, denied
    assert "denied" in run_cli("audit", "query", *logs, "--denied").stdout
