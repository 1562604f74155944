"""Orthanc (the Debian binary, unmodified) with its storage area and SQLite index on the mount.

The promise to hospitals: the PACS runs on the mount exactly as on a plain disk, while the disk
holds only ciphertext and programs not on the allow-list get nothing. The site policy
(conftest.py) allows /usr/sbin/Orthanc, hash-pinned, in /orthanc only.

The archive (stored once per module, uploads and a C-STORE push running at the same time): a
two-series CT study, one series sent through the REST API and one by C-STORE (storescu); a
second patient's CT series by C-STORE; six full-size 512x512 slices (0.5 MB, several chunks
each) and five of pydicom's sample files (CT, MR, JPEG 2000, RLE, RT dose) through REST. Orthanc keeps files
stored through REST byte for byte; for C-STORE it writes its own file meta header, so those
are compared element by element and pixel byte by pixel byte.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest

from .conftest import PYTHON, Site
from .pacs import HTTPError, Orthanc, tool
from .studies import Study, pixel_runs, pydicom_sample, sha256, write_ct_study

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SAMPLES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "rtdose.dcm")
DOWNLOAD_THREADS = 4  # Orthanc serves HTTP from many threads: concurrent reads of the mount
UPLOAD_THREADS = 3


@dataclass
class Archive:
    studies: list[Study]
    sources: dict[str, Path] = field(default_factory=dict)  # Orthanc instance ID -> file sent
    via_rest: set[str] = field(default_factory=set)         # IDs whose stored bytes = file sent

    @property
    def patient_names(self) -> list[str]:
        return sorted({str(pydicom.dcmread(p, stop_before_pixels=True).PatientName)
                       for p in self.sources.values()})


def lookup_instance(orthanc: Orthanc, sop_instance_uid: str) -> str:
    matches = [m for m in orthanc.post("/tools/lookup", sop_instance_uid.encode()) if m["Type"] == "Instance"]
    assert len(matches) == 1, f"instance {sop_instance_uid} not found in Orthanc: {matches}"
    return matches[0]["ID"]


@pytest.fixture(scope="module")
def archive(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Archive:
    folder = tmp_path_factory.mktemp("studies")
    alpha = write_ct_study(folder / "alpha", patient_name="E2E^ALPHA^CT", patient_id="E2E-ALPHA-1",
                           series_count=2, slices=24, size=64)
    bravo = write_ct_study(folder / "bravo", patient_name="E2E^BRAVO", patient_id="E2E-BRAVO-2",
                           series_count=1, slices=30, size=128)
    # Real CT slices are 512x512 (0.5 MB): several 64 KiB chunks per file, unlike the rest.
    golf = write_ct_study(folder / "golf", patient_name="E2E^GOLF^LARGE", patient_id="E2E-GOLF-6",
                          series_count=1, slices=6, size=512)
    archive = Archive(studies=[alpha, bravo, golf])
    by_rest = [*alpha.series[0].files, *golf.files, *map(pydicom_sample, SAMPLES)]
    by_cstore = [*alpha.series[1].files, *bravo.files]
    # A modality pushes while a user uploads: Orthanc writes files and its index concurrently.
    with ThreadPoolExecutor(UPLOAD_THREADS + 1) as pool:
        pushed = pool.submit(orthanc.storescu, by_cstore)
        for path, answer in zip(by_rest, pool.map(orthanc.upload, by_rest), strict=True):
            archive.sources[answer["ID"]] = path
            archive.via_rest.add(answer["ID"])
        pushed.result()
    for path in by_cstore:
        archive.sources[lookup_instance(orthanc, pydicom.dcmread(path).SOPInstanceUID)] = path
    return archive


@pytest.fixture
def pacs(orthanc: Orthanc, site: Site) -> Orthanc:
    """Orthanc running on a mounted volume, whatever an earlier test left behind."""
    if not site.mounted.is_mounted:
        site.mounted.mount()
    if not orthanc.running:
        orthanc.start()
    return orthanc


def same_dicom(downloaded: bytes, source: Path) -> bool:
    """Same data set (every element, pixel bytes included), whatever the file meta header."""
    got, want = pydicom.dcmread(io.BytesIO(downloaded)), pydicom.dcmread(source)
    return got == want and got.get("PixelData") == want.get("PixelData")


def download_all(orthanc: Orthanc, ids: list[str]) -> dict[str, bytes]:
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        return dict(zip(ids, pool.map(lambda i: orthanc.download(f"/instances/{i}/file"), ids), strict=True))


def assert_archive_intact(orthanc: Orthanc, site: Site, archive: Archive) -> dict[str, bytes]:
    """Every instance downloads as it was stored and equals its file on the mount."""
    downloads = download_all(orthanc, list(archive.sources))
    for instance, source in archive.sources.items():
        if instance in archive.via_rest:
            assert downloads[instance] == source.read_bytes(), f"{source.name}: download differs from upload"
        else:
            assert same_dicom(downloads[instance], source), f"{source}: C-STORE'd instance differs"
    paths = {instance: orthanc.storage_path(instance) for instance in archive.sources}
    on_mount = site.read("files", root=str(orthanc.root / "storage"))
    for instance, path in paths.items():
        relative = path.removeprefix("storage/")
        assert on_mount[relative]["sha256"] == sha256(downloads[instance]), \
            f"{path}: the file on the mount is not what Orthanc serves"
    return downloads


# ---------------------------------------------------------------------------- storing and finding


def assert_found_with_tags(orthanc: Orthanc, archive: Archive) -> None:
    """Every instance has its tags; every study is found by patient (REST and C-FIND)."""
    for instance, source in archive.sources.items():
        want = pydicom.dcmread(source, stop_before_pixels=True)
        tags = orthanc.get(f"/instances/{instance}/simplified-tags")
        for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"):
            assert tags.get(keyword) == str(want.get(keyword, "")), f"{source.name}: {keyword}"
        assert tags.get("PatientName") == str(want.PatientName)

    for study in archive.studies:
        found = orthanc.post("/tools/find", {"Level": "Study", "Query": {"PatientID": study.patient_id},
                                             "Expand": True})
        assert [f["MainDicomTags"]["StudyInstanceUID"] for f in found] == [study.uid]
        answers = [orthanc.get(f"/series/{s}") for s in found[0]["Series"]]
        series = {a["MainDicomTags"]["SeriesInstanceUID"]: len(a["Instances"]) for a in answers}
        assert series == {s.uid: len(s.files) for s in study.series}
        # The same through the DICOM network, as a viewer queries a PACS.
        assert study.uid in orthanc.findscu_studies(study.patient_id)


def test_studies_stored_via_rest_and_cstore_are_found_with_their_tags(pacs: Orthanc,
                                                                      archive: Archive) -> None:
    assert_found_with_tags(pacs, archive)
    assert pacs.errors() == []


def test_after_a_restart_everything_is_found_and_downloads_byte_identical(pacs: Orthanc, site: Site,
                                                                 archive: Archive) -> None:
    before = assert_archive_intact(pacs, site, archive)
    pacs.restart()  # a restart re-opens the SQLite index (WAL) and re-reads every file
    assert_found_with_tags(pacs, archive)
    after = assert_archive_intact(pacs, site, archive)
    assert after == before

    # pydicom reading Orthanc's files on the mount, pixel data deferred and read by reopening.
    # The same reads of the original files (off the mount) are the reference.
    paths = {i: str(pacs.root / pacs.storage_path(i)) for i in archive.sources}
    read = site.read("dicom", paths=list(paths.values()), defer_size=1024)
    reference = site.read("dicom", paths=[str(p) for p in archive.sources.values()], defer_size=1024)
    for instance, source in archive.sources.items():
        answer, want = read[paths[instance]], reference[str(source)]
        assert answer == want, f"{source.name}: pydicom reads something else from the mount"
    deferred_pixels = [a for a in read.values() if "7FE00010" in a["deferred"]]
    assert len(deferred_pixels) >= len(archive.sources) - 2, "pixel data should be deferred (not the "\
        "encapsulated JPEG 2000 and RLE samples: pydicom cannot defer undefined lengths)"
    assert pacs.errors() == []


# ---------------------------------------------------------------------------- deleting, remounting


def test_deleting_a_series_removes_its_files_and_a_remount_keeps_the_rest(
        pacs: Orthanc, site: Site, archive: Archive, tmp_path: Path) -> None:
    charlie = write_ct_study(tmp_path / "charlie", patient_name="E2E^CHARLIE", patient_id="E2E-CHARLIE-3",
                             series_count=2, slices=20, size=64)
    stored = {path: pacs.upload(path) for path in charlie.files}
    doomed_series = stored[charlie.series[0].files[0]]["ParentSeries"]
    doomed = {stored[p]["ID"]: pacs.storage_path(stored[p]["ID"]) for p in charlie.series[0].files}
    kept = {stored[p]["ID"]: p for p in charlie.series[1].files}
    kept_paths = [pacs.storage_path(i) for i in kept]
    all_paths = [*doomed.values(), *kept_paths]
    assert all(site.read("exists", paths=[str(pacs.root / p) for p in all_paths]).values())
    assert all((site.backing / "orthanc" / p).is_file() for p in all_paths)

    pacs.delete(f"/series/{doomed_series}")

    with pytest.raises(HTTPError, match="HTTP 404"):
        pacs.get(f"/series/{doomed_series}")
    exists = site.read("exists", paths=[str(pacs.root / p) for p in all_paths])
    assert [p for p in doomed.values() if exists[str(pacs.root / p)]] == [], "deleted, still on the mount"
    assert [p for p in kept_paths if not exists[str(pacs.root / p)]] == [], "a kept file went"
    assert [p for p in doomed.values() if (site.backing / "orthanc" / p).exists()] == [], \
        "deleted files still in the backing folder"

    # Stop, unmount, remount: the index is sound and agrees with the storage area.
    assert pacs.stop() == 0, pacs.log_tail()
    site.remount()
    index = site.read("sqlite", path=str(pacs.root / "index" / "index"))
    assert index["integrity"] == ["ok"]
    stored_files = site.read("files", root=str(pacs.root / "storage"))
    # Every file the index names is there (after a crash, as in the test below, the storage
    # area may also hold files Orthanc wrote but never indexed: that is Orthanc's behaviour).
    assert set(index["attachment_uuids"]) <= {Path(name).name for name in stored_files}
    assert index["attachment_uuids"], "the index lists no attachment: test broken"
    assert {Path(p).name for p in doomed.values()}.isdisjoint(index["attachment_uuids"])
    assert {Path(p).name for p in doomed.values()}.isdisjoint(Path(name).name for name in stored_files)
    hidden = [p for p in (site.backing / "orthanc").rglob(".fuse_hidden*")]
    assert hidden == [], f"unlinked files left behind in the backing folder: {hidden}"

    pacs.start()
    for instance in doomed:
        with pytest.raises(HTTPError, match="HTTP 404"):
            pacs.get(f"/instances/{instance}")
    for instance, source in kept.items():
        assert pacs.download(f"/instances/{instance}/file") == source.read_bytes()
    assert_archive_intact(pacs, site, archive)
    assert pacs.errors() == []


def test_orthanc_recovers_its_index_on_the_mount_after_being_killed_mid_ingest(
        pacs: Orthanc, site: Site, archive: Archive, tmp_path: Path) -> None:
    india = write_ct_study(tmp_path / "india", patient_name="E2E^INDIA", patient_id="E2E-INDIA-8",
                           series_count=1, slices=50, size=128)
    stored: dict[Path, str] = {}
    for path in india.files:  # one upload after the other; the crash comes in the middle
        stored[path] = pacs.upload(path)["ID"]
        if len(stored) == 30:
            break
    with ThreadPoolExecutor(1) as pool:  # a modality still pushing the rest when Orthanc dies
        pushing = pool.submit(pacs.storescu, india.files[30:])
        deadline = time.monotonic() + 60
        while pacs.get("/statistics")["CountInstances"] < len(archive.sources) + 35:
            assert time.monotonic() < deadline and not pushing.done(), "the push did not progress"
            time.sleep(0.05)
        pacs.kill()
        with contextlib.suppress(AssertionError):  # storescu fails: its peer vanished
            pushing.result()

    pacs.start()  # SQLite recovers from the WAL left on the mount
    for path, instance in stored.items():
        assert pacs.download(f"/instances/{instance}/file") == path.read_bytes()
    listed = pacs.post("/tools/find", {"Level": "Instance", "Query": {"PatientID": "E2E-INDIA-8"}})
    assert len(listed) >= 30
    for instance in listed:  # whatever the index lists (pushed ones too) is complete and readable
        assert pydicom.dcmread(io.BytesIO(pacs.download(f"/instances/{instance}/file"))).PixelData
    assert_archive_intact(pacs, site, archive)
    assert pacs.stop() == 0, pacs.log_tail()
    assert site.read("sqlite", path=str(pacs.root / "index" / "index"))["integrity"] == ["ok"]
    pacs.start()


# ---------------------------------------------------------------------------- what the disk holds


def test_backing_folder_holds_no_plaintext(pacs: Orthanc, site: Site, archive: Archive) -> None:
    needles = {f"patient name {n!r}": n.encode() for n in archive.patient_names}
    for study in archive.studies:
        for path in study.files[::6]:
            needles |= {f"pixel bytes of {path.parent.name}/{path.name} #{k}": run
                        for k, run in enumerate(pixel_runs(path))}
    # The needles are real: the plaintext on the mount (storage area and index) contains them.
    plaintext = site.read("grep", root=str(pacs.root), needles=[n.hex() for n in needles.values()])
    seen = {bytes.fromhex(n) for answer in plaintext.values() for n in answer["needles"]}
    assert seen == set(needles.values()), "some needles are not in the plaintext: the test would be void"
    index_files = {name: a for name, a in plaintext.items() if name.startswith("index/")}
    assert any(a["needles"] for a in index_files.values()), "the index should hold patient names"
    assert index_files["index/index"]["head"] == b"SQLite format 3\0".hex()
    dicom_files = [name for name, a in plaintext.items() if a["at128"] == b"DICM".hex()]
    assert len(dicom_files) >= len(archive.sources)

    stored = site.backing_files("orthanc")
    assert len(stored) == len(plaintext), "every plaintext file has its encrypted file on disk"
    assert site.plaintext_in_backing(needles) == []


# ---------------------------------------------------------------------------- the allow-list


_OUTSIDER = """
import json, os, sys
image, index, storage = sys.argv[1:4]
def attempt(action):
    try:
        action()
        return "done"
    except OSError as e:
        return e.errno
print(json.dumps({
    "read image": attempt(lambda: open(image, "rb").read()),
    "read index": attempt(lambda: open(index, "rb").read(4096)),
    "overwrite index": attempt(lambda: open(index, "r+b").write(bytes(4096))),
    "truncate image": attempt(lambda: os.truncate(image, 0)),
    "delete image": attempt(lambda: os.unlink(image)),
    "delete index": attempt(lambda: os.unlink(index)),
    "rename index": attempt(lambda: os.rename(index, index + ".locked")),
    "chmod index": attempt(lambda: os.chmod(index, 0)),
    "list storage": attempt(lambda: os.listdir(storage)),
    "create in storage": attempt(lambda: open(os.path.join(storage, "RESTORE-FILES.txt"), "xb").close()),
}))
"""


def denied(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and "Permission denied" in result.stderr


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(map(str, argv)), capture_output=True, text=True, errors="replace",
                          timeout=120, check=False, stdin=subprocess.DEVNULL)


def test_programs_not_allowed_cannot_read_or_damage_orthanc_files_while_it_runs(
        pacs: Orthanc, site: Site, archive: Archive, tmp_path: Path) -> None:
    instance = next(iter(archive.via_rest))
    image, index = pacs.root / pacs.storage_path(instance), pacs.root / "index" / "index"
    storage = image.parent
    before = site.read("files", root=str(pacs.root / "storage"))

    assert denied(run(tool("cat"), image))
    assert denied(run(tool("dd"), f"if={image}", "of=/dev/null"))
    assert denied(run(tool("dd"), "if=/dev/zero", f"of={index}", "bs=4096", "count=1", "conv=notrunc"))
    assert denied(run(tool("cp"), index, tmp_path / "stolen-index"))
    assert run(tool("rm"), "-rf", pacs.root).returncode != 0  # (rm reports EACCES on the listing as EISDIR)
    assert not (tmp_path / "stolen-index").exists()
    # An allowed program outside its folder is an outsider too (dcmdump: /incoming only).
    assert run(tool("dcmdump"), image).returncode != 0
    one_liner = run(PYTHON, "-c", _OUTSIDER, image, index, storage)
    assert one_liner.returncode == 0, one_liner.stderr
    outcome = json.loads(one_liner.stdout)
    # ("delete index" unlinks a file Orthanc holds open: libfuse's hidden-rename path, which
    # once answered EBUSY; see test_denied_unlink_of_a_file_open_elsewhere_is_eacces.)
    assert outcome == dict.fromkeys(outcome, errno.EACCES)
    with pytest.raises(PermissionError):  # this test process is on no rule either
        os.listdir(pacs.root)

    # Orthanc noticed nothing: its files are unchanged, it still stores, finds and serves.
    assert site.read("files", root=str(pacs.root / "storage")) == before
    delta = write_ct_study(tmp_path / "delta", patient_name="E2E^DELTA", patient_id="E2E-DELTA-4",
                           series_count=2, slices=3)
    added = pacs.upload(delta.series[0].files[0])["ID"]
    assert pacs.download(f"/instances/{added}/file") == delta.series[0].files[0].read_bytes()
    pacs.storescu(delta.series[1].files)
    assert len(pacs.post("/tools/find", {"Level": "Instance", "Query": {"PatientID": "E2E-DELTA-4"}})) == 4
    assert_archive_intact(pacs, site, archive)
    assert pacs.get("/statistics")["CountInstances"] >= len(archive.sources) + 4
    assert pacs.errors() == []


# ---------------------------------------------------------------------------- audit trail


def _audited_studies(site: Site) -> set[tuple[str, str, str]]:
    """(event, PatientID, StudyInstanceUID) of every audited access by Orthanc so far."""
    seen = set()
    assert site.mounted.audit_log is not None
    for line in site.mounted.audit_log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # the line being written right now
            continue
        dicom = (record.get("object") or {}).get("dicom")
        if dicom and (record.get("program") or {}).get("exe") == "/usr/sbin/Orthanc":
            seen.add((record["event"], dicom.get("PatientID"), dicom.get("StudyInstanceUID")))
    return seen


def test_every_orthanc_access_is_audited_with_its_patient_and_study(pacs: Orthanc, site: Site,
                                                                    archive: Archive) -> None:
    """Orthanc writes no audit trail of its own; through the mount it gets one: who (Orthanc,
    hash-pinned) stored and read which patient's study."""
    download_all(pacs, list(archive.sources))  # reads of every stored file
    wanted = {(study.patient_id, study.uid) for study in archive.studies}
    deadline = time.monotonic() + 20  # group commit: records reach the disk within about a second
    while True:
        seen = _audited_studies(site)
        stored = {(p, s) for event, p, s in seen if event == "release"}
        read = {(p, s) for event, p, s in seen if event == "open"}
        if wanted <= stored and wanted <= read or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert wanted <= stored, f"stores not audited with patient/study: {wanted - stored}"
    assert wanted <= read, f"reads not audited with patient/study: {wanted - read}"
