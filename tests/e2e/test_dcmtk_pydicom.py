"""DCMTK's storescp receiving onto the mount; dcmdump and pydicom reading from it.

The reference is the same program on a plain disk: a second storescp, in the same private
network, receives exactly the same associations into a folder off the mount. "No change to
operations" means the mount must end up with the same bytes, and the readers must see the same
thing in both places. The site policy (conftest.py) lets storescp write and dcmdump read in
/incoming only.

Known limit, by design of format v1 (plaintext names): storescp names files after the SOP
Instance UID (``CT.1.2.840...``), so those UIDs are visible in the backing folder; patient
names and contents are not (checked below). Sorting options such as ``storescp -sp``
(folders named after the patient) would put patient names on disk: do not use them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from .conftest import Site
from .pacs import NetNamespace, StoreSCP, tool
from .studies import Study, pixel_runs, pydicom_sample, sha256, write_ct_study

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# Uncompressed samples: storescu cannot send a compressed file unless the receiver proposes
# its transfer syntax (the generated CT covers the bulk; these add real-world variety:
# implicit VR, big endian, RT dose, private tags).
SAMPLES = ("CT_small.dcm", "rtdose.dcm", "MR_small_bigendian.dcm", "SC_rgb_small_odd.dcm")


@dataclass
class Received:
    """What both storescp instances received: on the mount and on a plain disk."""

    mount_dir: Path
    plain_dir: Path
    study: Study  # 64x64 slices
    large: Study  # 512x512 slices
    sources: list[Path]
    overwritten: Path  # the source whose instance arrived twice: first larger, then smaller

    def names(self) -> list[str]:
        return sorted(p.name for p in self.plain_dir.iterdir())

    @property
    def generated(self) -> list[Path]:
        return [*self.study.files, *self.large.files]


def smaller_copy(source: Path, target: Path) -> Path:
    """The same SOP instance re-sent smaller (a corrected, cropped image): the receiver must
    overwrite the first file completely (O_TRUNC), leaving no stale tail."""
    ds = pydicom.dcmread(source)
    ds.Rows = ds.Columns = 16
    ds.PixelData = ds.PixelData[: 16 * 16 * 2]
    ds.SeriesDescription = "CROPPED RESEND"
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.fixture(scope="module")
def received(site: Site, netns: NetNamespace, tmp_path_factory: pytest.TempPathFactory) -> Received:
    work = tmp_path_factory.mktemp("dcmtk")
    study = write_ct_study(work / "echo", patient_name="E2E^ECHO^DCMTK", patient_id="E2E-ECHO-5",
                           series_count=1, slices=40, size=64)
    large = write_ct_study(work / "hotel", patient_name="E2E^HOTEL^LARGE", patient_id="E2E-HOTEL-7",
                           series_count=1, slices=4, size=512)  # 0.5 MB files: several chunks each
    first = study.files[0]
    resend = smaller_copy(first, work / "resend.dcm")
    plain_dir = work / "plain-incoming"
    plain_dir.mkdir()
    mount_dir = site.mkdir("incoming")
    receivers = [StoreSCP(netns, mount_dir, site.workdir / "storescp-mount.log", port=11113, aet="ONMOUNT"),
                 StoreSCP(netns, plain_dir, work / "storescp-plain.log", port=11114, aet="ONDISK")]
    sources = [*study.files, *large.files, *map(pydicom_sample, SAMPLES)]
    try:
        for receiver in receivers:
            receiver.start()
            receiver.send(sources)
            receiver.send([resend])  # a second association: overwrites the first slice
    finally:
        for receiver in receivers:
            receiver.stop()
    assert "overwriting" in receivers[1].log(), "the reference run did not overwrite: test setup broken"
    return Received(mount_dir=mount_dir, plain_dir=plain_dir, study=study, large=large, sources=sources,
                    overwritten=resend)


def test_storescp_writes_the_same_bytes_onto_the_mount_as_onto_a_plain_disk(site: Site,
                                                                            received: Received) -> None:
    on_mount = site.read("files", root=str(received.mount_dir))
    on_disk = {p.name: {"size": p.stat().st_size, "sha256": sha256(p.read_bytes())}
               for p in received.plain_dir.iterdir()}
    assert len(on_disk) == len(received.sources)  # one file per SOP instance; the resend replaced one
    assert on_mount == on_disk
    # The overwritten file holds the smaller resend, entirely.
    uid = pydicom.dcmread(received.overwritten).SOPInstanceUID
    name = next(n for n in on_disk if n.endswith(uid))
    ds = pydicom.dcmread(received.plain_dir / name)
    assert (ds.Rows, ds.SeriesDescription) == (16, "CROPPED RESEND")
    assert sorted(p.name for p in (site.backing / "incoming").iterdir()) == sorted(on_disk)


def dcmdump(*args: str | Path) -> str:
    result = subprocess.run([tool("dcmdump"), *map(str, args)], capture_output=True, text=True,
                            errors="replace", timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"dcmdump {args} failed: {result.stderr}"
    return result.stdout + result.stderr


@pytest.mark.parametrize("options", [(), ("-M",), ("+P", "PatientName", "+P", "SOPInstanceUID")],
                         ids=["full", "load-short", "search"])
def test_dcmdump_reads_received_files_from_the_mount(received: Received, options: tuple[str, ...]) -> None:
    for name in received.names():
        on_mount = dcmdump(*options, received.mount_dir / name)
        assert on_mount == dcmdump(*options, received.plain_dir / name), name
        assert "PatientName" in on_mount


def test_dcmdump_extracts_the_exact_pixel_data_from_the_mount(received: Received, tmp_path: Path) -> None:
    compared = 0
    for name in received.names():
        ds = pydicom.dcmread(received.plain_dir / name)
        if ds.file_meta.TransferSyntaxUID.is_compressed or "PixelData" not in ds:
            continue
        out = tmp_path / name
        out.mkdir()
        dcmdump("+W", out, received.mount_dir / name)
        raw = list(out.iterdir())
        assert len(raw) == 1, f"{name}: dcmdump wrote {raw}"
        if ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian and ds.BitsAllocated > 8:
            continue  # dcmdump writes pixels in the machine's byte order: compare sizes only
        assert raw[0].read_bytes() == ds.PixelData, f"{name}: pixel data differs"
        compared += 1
    assert compared >= len(received.generated)


def test_pydicom_deferred_reads_from_the_mount(site: Site, received: Received) -> None:
    names = received.names()
    on_mount = site.read("dicom", paths=[str(received.mount_dir / n) for n in names], defer_size=512)
    on_disk = site.read("dicom", paths=[str(received.plain_dir / n) for n in names], defer_size=512)
    for name in names:
        assert on_mount[str(received.mount_dir / name)] == on_disk[str(received.plain_dir / name)], name
    deferred = [a for a in on_mount.values() if "7FE00010" in a["deferred"]]
    assert len(deferred) >= len(received.generated), "pixel data should have been read deferred"


def test_received_files_are_ciphertext_on_disk(site: Site, received: Received) -> None:
    names = {str(pydicom.dcmread(p, stop_before_pixels=True).PatientName) for p in received.sources}
    needles = {f"patient name {n!r}": n.encode() for n in names if len(n) >= 6}
    for path in [*received.study.files[1::5], *received.large.files]:  # (slice 1 was replaced)
        needles |= {f"pixel bytes of {path.name} #{k}": run for k, run in enumerate(pixel_runs(path))}
    # The needles are in the plaintext files (else the check below would be void).
    plain = b"".join(p.read_bytes() for p in received.plain_dir.iterdir())
    assert [label for label, needle in needles.items() if needle not in plain] == []
    assert len(site.backing_files("incoming")) == len(received.names())
    assert site.plaintext_in_backing(needles) == []
