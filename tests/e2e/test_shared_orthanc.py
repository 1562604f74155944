"""ACQ -> NAS -> WAS: Orthanc stores on one mount, a workstation reads on another, both live.

Two encfs-pacs daemons mount one backing folder with --shared-storage (here both on this
machine, over a local folder: this kernel cannot mount NFS). The acquisition server's mount
runs Orthanc (the Debian binary) with its storage area and index; the workstation's mount is
read by pydicom (the tests' allowed reader) and DCMTK's dcmdump, each under its own allow-list
entry and audit trail (--audit-host acq / was). Every instance Orthanc stored must read back
on the WAS mount byte for byte, without remounting, and a deletion on ACQ must show on WAS.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from conftest import Mounted, init_volume, write_passphrase_file

from .conftest import DEFAULT_SITE_RULES, NetNamespace, Site, running_orthanc, site_policy, unmount_all
from .pacs import Orthanc, tool
from .studies import pydicom_sample, sha256, write_ct_study

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@dataclass
class SharedSites:
    acq: Site
    was: Site


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedSites]:
    workdir = tmp_path_factory.mktemp("shared-site")
    passphrase = write_passphrase_file(workdir)
    backing = init_volume(workdir / "nas-backing", passphrase)
    policy = site_policy(workdir / "etc" / "policy.toml", (*DEFAULT_SITE_RULES, "dcmdump-was"))
    made: list[Mounted] = []
    try:
        for host in ("acq", "was"):
            mountpoint = workdir / f"mnt-{host}"
            mountpoint.mkdir()
            made.append(Mounted(backing=backing, mountpoint=mountpoint, log_file=workdir / f"{host}.log",
                                passphrase_file=passphrase, policy_file=policy,
                                extra_args=("--shared-storage", "--audit-host", host)))
            made[-1].mount()
        yield SharedSites(Site(made[0], workdir), Site(made[1], workdir))
    finally:
        problems = unmount_all(made)
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def acq_orthanc(sites: SharedSites, netns: NetNamespace) -> Iterator[Orthanc]:
    with running_orthanc(netns, sites.acq.mnt / "orthanc", sites.acq.workdir) as server:
        yield server


def test_orthanc_on_acq_and_readers_on_was(sites: SharedSites, acq_orthanc: Orthanc,
                                           tmp_path: Path) -> None:
    was_storage = sites.was.mnt / "orthanc" / "storage"
    # 512x512 slices (0.5 MB, several chunks each) and a pydicom sample, stored through REST,
    # which Orthanc keeps byte for byte.
    study = write_ct_study(tmp_path / "ct", patient_name="SHARED^NAS^CT", patient_id="SHARED-1",
                           series_count=1, slices=4, size=512)
    sent = [*study.files, pydicom_sample("MR_small.dcm")]
    sources = {acq_orthanc.upload(path)["ID"]: path for path in sent}
    on_was = sites.was.read("files", root=str(was_storage))  # no remount, no wait
    paths = {}
    for instance, source in sources.items():
        relative = acq_orthanc.storage_path(instance).removeprefix("storage/")
        paths[instance] = relative
        assert on_was[relative]["sha256"] == sha256(source.read_bytes()), f"{source.name} differs on WAS"

    # pydicom on WAS: tags and pixels as sent
    answers = sites.was.read("dicom", paths=[str(was_storage / p) for p in paths.values()], defer_size=1024)
    for instance, source in sources.items():
        want = pydicom.dcmread(source)
        got = answers[str(was_storage / paths[instance])]
        assert got["sop_instance_uid"] == want.SOPInstanceUID
        assert got["pixel_sha256"] == hashlib.sha256(want.PixelData).hexdigest()

    # DCMTK on WAS
    first = next(iter(sources))
    dump = subprocess.run([tool("dcmdump"), str(was_storage / paths[first])], capture_output=True, text=True,
                          timeout=120, check=False)
    assert dump.returncode == 0, dump.stderr
    assert str(pydicom.dcmread(sources[first]).SOPInstanceUID) in dump.stdout

    # A deletion on ACQ is seen on WAS at once; a new store too (the second close-to-open)
    acq_orthanc.delete(f"/instances/{first}")
    assert sites.was.read("exists", paths=[str(was_storage / paths[first])]) == {
        str(was_storage / paths[first]): False}
    late = write_ct_study(tmp_path / "late", patient_name="SHARED^LATE", patient_id="SHARED-2",
                          series_count=1, slices=1, size=256).files[0]
    late_id = acq_orthanc.upload(late)["ID"]
    relative = acq_orthanc.storage_path(late_id).removeprefix("storage/")
    assert sites.was.read("files", root=str(was_storage))[relative]["sha256"] == sha256(late.read_bytes())
    assert acq_orthanc.errors() == []
