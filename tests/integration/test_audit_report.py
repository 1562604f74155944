"""The monthly review report and the exports from the audit log of a real mount."""

from __future__ import annotations

import html
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Mounted, run_cli  # tests/conftest.py: shared helpers

from .test_allow_list import Agent, allow_pacs, denied

pytestmark = pytest.mark.integration

HOSTILE_NAME = "<script>alert(1)</script>.dcm"  # a folder "<script>alert(1)<" and a file in it


def cells_of(page: str, anchor: str) -> list[list[str]]:
    start = page.index(f'<h2 id="{anchor}">')
    end = page.find("<h2 ", start + 1)
    rows = re.findall(r"<tr>(.*?)</tr>", page[start:end if end > 0 else None])
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in rows]


def agent(folder: Path, name: str) -> Agent:
    """A copy of agent.py under its own name, as test_allow_list's fixtures make them."""
    script = folder / f"{name}_agent.py"
    shutil.copy(Path(__file__).with_name("agent.py"), script)
    return Agent(script)


def test_monthly_report_from_a_real_mount(tmp_path: Path, mount_volume: Callable[..., Mounted]) -> None:
    import pydicom

    folder = tmp_path / "bin"
    folder.mkdir()
    pacs, rogue = agent(folder, "pacs"), agent(folder, "rogue")
    policy = tmp_path / "etc" / "policy.toml"
    allow_pacs(policy)
    m = mount_volume(policy)
    source = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    patient = str(pydicom.dcmread(source, stop_before_pixels=True).PatientID)
    target = str(m.mountpoint / HOSTILE_NAME)  # a file name is attacker-controlled text
    results = pacs.run({"op": "mkdir", "path": str(m.mountpoint / "<script>alert(1)<")},
                       {"op": "create_new", "path": target, "data": source.read_bytes().hex()},
                       {"op": "read", "path": target})
    assert all(r["ok"] for r in results), results
    assert denied(rogue.run({"op": "read", "path": target})[0])
    assert denied(rogue.run({"op": "read", "path": target})[0])
    m.unmount()

    records = m.audit_records()
    month = records[0]["time"][:7]
    anchor = run_cli("audit", "anchor", m.backing).stdout.split()[-1]
    out = tmp_path / "review.html"
    result = run_cli("audit", "report", m.audit_log, "--period", month, "--html", out, "--anchor", anchor)
    assert f"records in {month} (UTC); logs intact" in result.stderr
    page = out.read_text()
    assert "INTACT: every record of the logs" in page and "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.dcm" in page

    in_month = [r for r in records if r["time"].startswith(month)]
    operations = [r for r in in_month if isinstance(r.get("who"), dict) and r["event"] != "release"]
    summary = dict(row for row in cells_of(page, "summary") if len(row) == 2)
    assert summary["Records in the period"] == str(len(in_month))
    assert summary["File operations"] == str(len(operations))
    assert summary["Denied operations"] == str(sum(r["outcome"] == "denied" for r in operations)) != "0"
    assert summary["Mounts and unmounts"] == "2" and summary["Policy loads, reloads and changes"] == "1"
    escaped_path = html.escape(f"/{HOSTILE_NAME}")
    hostile = [row for row in cells_of(page, "denials")[1:] if row[2] == escaped_path]
    assert hostile and hostile[0][3] == html.escape(patient) and int(hostile[0][4]) == 2

    # The same log through the exports: every ATNA message and FHIR resource of a real mount.
    atna = run_cli("audit", "export", "--format", "atna", m.audit_log).stdout.splitlines()
    fhir = json.loads(run_cli("audit", "export", "--format", "fhir", m.audit_log).stdout)
    assert len(atna) == len(fhir["entry"]) == len(records)
    _validate_exports(atna, fhir)


def _validate_exports(atna: list[str], fhir: dict) -> None:
    from unit.test_audit_export_schema import fhir_problems, load_schema  # tests/ is on sys.path

    etree = pytest.importorskip("lxml.etree")
    schema = load_schema()
    for line in atna:
        assert schema.validate(etree.fromstring(line.encode())), (line, schema.error_log)
    for entry in fhir["entry"]:
        assert fhir_problems(entry["resource"]) == []
