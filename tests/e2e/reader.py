"""The e2e tests' own inspection program: reads files on the mount and prints one JSON answer.

The test process itself is on no allow-list rule (it sees the mount as an outsider would);
this script is, through a rule on the Python interpreter plus its command line
(``* */e2e/reader.py *``), read and list only. Usage: ``python reader.py ACTION JSON-ARGS``.

Actions:
  files   {"root"}                        every regular file below root: size and SHA-256
  exists  {"paths"}                       which paths exist
  grep    {"root", "needles"}             for every file below root: which needles (hex) it
                                          contains, and its bytes 0-15 and 128-131 (hex)
  dicom   {"paths", "defer_size"}         pydicom with deferred reads: which elements were
                                          deferred, then their values (read by reopening)
  sqlite  {"path"}                        integrity check and row counts of a SQLite file
                                          (opened immutable: no locks, no -shm, no writes)
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
from typing import Any


def files(root: str) -> dict[str, Any]:
    found = {}
    for folder, _, names in os.walk(root, onerror=_raise):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                data = f.read()
            digest = hashlib.sha256(data).hexdigest()
            found[os.path.relpath(path, root)] = {"size": len(data), "sha256": digest}
    return found


def exists(paths: list[str]) -> dict[str, bool]:
    return {path: os.path.exists(path) for path in paths}


def grep(root: str, needles: list[str]) -> dict[str, Any]:
    wanted = [bytes.fromhex(n) for n in needles]
    found = {}
    for folder, _, names in os.walk(root, onerror=_raise):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                data = f.read()
            found[os.path.relpath(path, root)] = {
                "needles": [n.hex() for n in wanted if n in data],
                "head": data[:16].hex(),
                "at128": data[128:132].hex(),
            }
    return found


def dicom(paths: list[str], defer_size: int) -> dict[str, Any]:
    import pydicom  # only this action needs it

    answers = {}
    for path in paths:
        ds = pydicom.dcmread(path, defer_size=defer_size)
        # Before any access, large values are still placeholders pointing into the file
        # (get_item(keep_deferred=True) does not load them; ds[tag] would) ...
        tags = list(ds.keys())  # iterating the data set itself would load every value
        deferred = [f"{tag:08X}" for tag in tags if _is_deferred(ds, tag)]
        # ... and touching one reopens the file by name and seeks to it.
        pixels = ds.PixelData if "PixelData" in ds else b""
        answers[path] = {
            "deferred": deferred,
            "patient_name": str(ds.get("PatientName", "")),
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
            "pixel_sha256": hashlib.sha256(pixels).hexdigest(),
            "pixel_bytes": len(pixels),
        }
    return answers


def _is_deferred(ds: Any, tag: Any) -> bool:
    raw = ds.get_item(tag, keep_deferred=True)
    return getattr(raw, "value", 0) is None and getattr(raw, "length", 0) > 0


def sqlite(path: str) -> dict[str, Any]:
    con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        integrity = [row[0] for row in con.execute("PRAGMA integrity_check")]
        tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        counts = {table: con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}
        uuids = []
        if "AttachedFiles" in tables:
            uuids = sorted(row[0] for row in con.execute("SELECT uuid FROM AttachedFiles"))
        return {"integrity": integrity, "counts": counts, "attachment_uuids": uuids}
    finally:
        con.close()


def _raise(error: OSError) -> None:
    raise error


ACTIONS = {"files": files, "exists": exists, "grep": grep, "dicom": dicom, "sqlite": sqlite}


def main() -> None:
    action, arguments = sys.argv[1], json.loads(sys.argv[2])
    json.dump(ACTIONS[action](**arguments), sys.stdout)


if __name__ == "__main__":
    main()
