"""Orthanc ingest: a generated CT study sent to Orthanc's REST API, Orthanc's storage and index
on the system under test (instances/s).

Orthanc binds every interface, so it runs inside ``unshare --net`` (only a private loopback),
on a non-default port; the client (``orthanc_client.py``) runs in the same namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from .systems import System, die_with_parent

HTTP_PORT = 18042
DICOM_PORT = 14242
CLIENT = Path(__file__).with_name("orthanc_client.py")
TIMEOUT_S = 900


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)


def skip_reason() -> str | None:
    if orthanc_binary() is None:
        return "Orthanc is not installed (make bench installs it)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is missing (util-linux, iproute2)"
    return None


def generate_study(folder: Path, count: int) -> list[Path]:
    """``count`` CT slices of 512×512 16-bit pixels (512 KiB each), one series, one study."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    pixels = os.urandom(512 * 512 * 2)
    paths = []
    for number in range(1, count + 1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.Modality = "BENCH^CT", "BENCH-0001", "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20250101", "120000", "BENCH1"
        ds.SeriesNumber, ds.InstanceNumber = 1, number
        ds.ImagePositionPatient = [0, 0, number * 1.25]
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        path = folder / f"CT{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _config(system: System, folder: Path) -> Path:
    config = {
        "Name": f"bench-{system.name}",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": HTTP_PORT,
        "DicomPort": DICOM_PORT,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        # Otherwise Orthanc keeps instances in RAM and never re-reads storage.
        "MaximumStorageCacheSize": 0,
        "SyncStorageArea": True,
        "StorageCompression": False,
        "Plugins": [],
    }
    path = system.root / "orthanc.json"  # on the backing disk, not on the mount
    path.write_text(json.dumps(config, indent=2))
    return path


def ingest(system: System, sources: Path, expected: int, run: int) -> dict[str, float]:
    folder = system.path / f"orthanc-{run}"
    (folder / "storage").mkdir(parents=True)
    (folder / "db").mkdir()
    config = _config(system, folder)
    command = ["unshare", "--net", "--", sys.executable, str(CLIENT), "--orthanc", str(orthanc_binary()),
               "--config", str(config), "--port", str(HTTP_PORT), "--sources", str(sources),
               "--expect", str(expected), "--log", str(system.root / f"orthanc-{run}.log")]
    # Own session: on a timeout the client and its Orthanc are ended together, by group id,
    # so no Orthanc is left holding the mount busy.
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True, preexec_fn=die_with_parent)
    try:
        out, err = client.communicate(timeout=TIMEOUT_S)
    finally:
        if client.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(client.pid, signal.SIGKILL)
            client.wait()
    if client.returncode != 0:
        raise RuntimeError(f"Orthanc ingest failed: {err.strip()[-800:]}")
    result = json.loads(out.strip().splitlines()[-1])
    # The folder stays until the run ends, like the other many-file workloads'
    # (workloads.fresh_folder says why).
    return {"orthanc_ingest": float(result["instances_per_s"])}
