"""Test images for the end-to-end tests: generated multi-slice CT studies and pydicom's samples.

The generated studies are small (64x64 or 128x128 pixels, a few dozen slices) so a Python FUSE
mount stores them in seconds, but they are shaped like real CT series (one file per slice,
positions, rescale, 12-bit pixels in 16-bit words) so Orthanc and DCMTK treat them as such.
Their pixel data is noisy on purpose: any 32-byte run of it is unique, so finding one in the
backing folder would mean plaintext leaked (a flat phantom would match zero-filled blocks).
Everything is derived from a seed: the same call writes the same bytes.
"""

from __future__ import annotations

import hashlib
import random
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# pydicom's bundled test files, read straight from the installed wheel (get_testdata_file()
# may try to download missing files: tests must never touch the network for data).
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def pydicom_sample(name: str) -> Path:
    path = PYDICOM_TEST_FILES / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not shipped with this pydicom version")
    return path


@dataclass
class Series:
    uid: str
    number: int
    description: str
    files: list[Path] = field(default_factory=list)


@dataclass
class Study:
    patient_name: str
    patient_id: str
    uid: str
    series: list[Series] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [f for s in self.series for f in s.files]


def _uid(*parts: object) -> str:
    """A deterministic UID (2.25 + hash of the parts): rerunning a test gives the same files."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _pixels(size: int, seed: str) -> bytes:
    """A 12-bit CT-like slice: a disc of 'tissue' over 'air', with noise everywhere."""
    rnd = random.Random(seed)
    centre, radius2 = size / 2, (size * 0.4) ** 2
    values = array("H")
    for y in range(size):
        for x in range(size):
            inside = (x - centre) ** 2 + (y - centre) ** 2 < radius2
            base = 1064 if inside else 24  # about +40 HU and -1000 HU with intercept -1024
            values.append(base + rnd.randrange(0, 200))
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes()


def _slice(study: Study, series: Series, index: int, size: int) -> Dataset:
    sop_uid = _uid(series.uid, "slice", index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate, ds.StudyTime = "20240115", "093000"
    ds.AccessionNumber = f"ACC{study.patient_id[-6:]}"
    ds.Modality = "CT"
    ds.Manufacturer = "encfs-pacs e2e tests"
    ds.StudyDescription = "CT THORAX (generated)"
    ds.SeriesDescription = series.description
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate, ds.PatientSex = "19600101", "O"
    ds.SliceThickness = "2.5"
    ds.KVP = "120"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = "1"
    ds.SeriesNumber = series.number
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = ["-160", "-160", f"{-index * 2.5:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = _uid(study.uid, "frame of reference")
    ds.SliceLocation = f"{-index * 2.5:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [f"{320 / size:.4f}", f"{320 / size:.4f}"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = _pixels(size, sop_uid)
    return ds


def write_ct_study(folder: Path, *, patient_name: str, patient_id: str, series_count: int = 1,
                   slices: int = 24, size: int = 64) -> Study:
    """Write one CT study, ``series_count`` series of ``slices`` slices, one file per slice
    (``folder/<series number>/<instance number>.dcm``), and describe it."""
    study = Study(patient_name=patient_name, patient_id=patient_id,
                  uid=_uid("study", patient_id, series_count, slices, size))
    for number in range(1, series_count + 1):
        series = Series(uid=_uid(study.uid, "series", number), number=number,
                        description=f"AXIAL {size}x{size} #{number}")
        out = folder / str(number)
        out.mkdir(parents=True, exist_ok=True)
        for index in range(slices):
            path = out / f"{index + 1:03d}.dcm"
            _slice(study, series, index, size).save_as(path, enforce_file_format=True)
            series.files.append(path)
        study.series.append(series)
    return study


def pixel_runs(path: Path, count: int = 4, length: int = 32) -> list[bytes]:
    """``count`` runs of ``length`` bytes spread over a file's pixel data: needles for
    'no plaintext in the backing folder'."""
    data = pydicom.dcmread(path).PixelData
    step = max(1, (len(data) - length) // count)
    return [data[i:i + length] for i in range(0, step * count, step)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
