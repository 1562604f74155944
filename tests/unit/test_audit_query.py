"""audit query / report / export over logs written by the real audit writer."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from encfs_pacs.audit import export, query
from encfs_pacs.audit.signing import create_key_store

from .auditkit import (
    FIXTURE_MASTER_KEY,
    FakeTime,
    fixed_hooks,
    lines_of,
    make_backing,
    open_fixed,
    sample_payloads,
    write_lines,
)

MONDAY = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC


def access(user: str, exe: str, patient: str | None, *, event: str = "open", op: str = "read",
           outcome: str = "allowed", study: str = "1.2.3", sop: str = "1.2.3.1") -> dict[str, Any]:
    obj: dict[str, Any] = {"path": f"/studies/{patient}/{sop}.dcm"}
    if patient is not None:
        obj["dicom"] = {"PatientID": patient, "StudyInstanceUID": study, "SOPInstanceUID": sop,
                        "Modality": "CT"}
    return {"event": event, "outcome": outcome, "errno": 13 if outcome == "denied" else None, "op": op,
            "rule": None if outcome == "denied" else "r1", "view": "plaintext",
            "who": {"uid": 1000 if user == "yamada" else 999, "gid": 1000, "groups": [1000], "user": user,
                    "loginuid": 1000, "session": 3},
            "program": {"pid": 42, "tgid": 42, "exe": exe, "sha256": "ab" * 32, "unit": "x.service",
                        "argv": [exe]},
            "object": obj}


def write_log(root: Path, timed: list[tuple[datetime, dict[str, Any]]], name: str = "a",
              chain: str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0") -> Path:
    """A log made by the real writer, each payload appended at its given wall-clock time."""
    backing = make_backing(root, f"backing-{name}")
    fake = FakeTime()
    hooks, _ = fixed_hooks(fake=fake, chain=chain)
    create_key_store(backing, FIXTURE_MASTER_KEY, hooks.keygen)
    path = root / f"{name}.log"
    fake.now = timed[0][0] - timedelta(seconds=1)
    writer = open_fixed(path, backing, hooks)
    for moment, payload in timed:
        fake.now = moment - timedelta(milliseconds=1)  # the clock adds 1 ms per reading
        writer.append(payload)
    writer.close()
    return path


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return write_log(tmp_path, [
        (MONDAY, access("orthanc", "/usr/sbin/Orthanc", "PAT-1", event="create", op="create")),
        (MONDAY + timedelta(minutes=1), access("orthanc", "/usr/sbin/Orthanc", "PAT-1")),
        (MONDAY + timedelta(minutes=2), access("yamada", "/usr/bin/cat", "PAT-1", outcome="denied")),
        (MONDAY + timedelta(hours=10), access("yamada", "/usr/bin/dcmdump", "PAT-2", study="9.9")),
        (MONDAY + timedelta(days=1), access("orthanc", "/usr/sbin/Orthanc", "PAT-1", event="delete",
                                            op="delete")),
    ])


def cli(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "encfs_pacs", "audit", *map(str, args)], capture_output=True,
                          text=True, check=False, timeout=60, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"})


# ---------------------------------------------------------------------------- query


def test_load_skips_control_records_and_keeps_times(log: Path) -> None:
    loaded = query.load([log])
    assert loaded.problem is None
    assert [r["event"] for r in loaded.records] == ["create", "open", "open", "open", "delete"]
    assert query.record_time(loaded.records[0]) == MONDAY


@pytest.mark.parametrize(("criteria", "expected"), [
    ({"patient": "PAT-1"}, [0, 1, 2, 4]),
    ({"study": "9.9"}, [3]),
    ({"user": "yamada"}, [2, 3]),
    ({"user": "999"}, [0, 1, 4]),
    ({"program": "dcmdump"}, [3]),
    ({"program": "/usr/sbin/Orthanc"}, [0, 1, 4]),
    ({"denied": True}, [2]),
    ({"since": MONDAY + timedelta(minutes=1), "until": MONDAY + timedelta(hours=10)}, [1, 2]),
    ({"after_hours": True, "tz": UTC}, [3]),  # 20:00 on Monday; the rest is 10:00-10:02, Tuesday 10:00
    ({"after_hours": True, "tz": UTC, "work_hours": (8, 21)}, []),
    ({"patient": "PAT-1", "user": "yamada"}, [2]),
])
def test_filters(log: Path, criteria: dict[str, Any], expected: list[int]) -> None:
    records = query.load([log]).records
    hits = list(query.Filter(**criteria).apply(records))
    assert hits == [records[i] for i in expected]


def test_after_hours_weekend_and_timezone() -> None:
    saturday_noon = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert query.after_hours(saturday_noon, tz=UTC)
    assert not query.after_hours(MONDAY, tz=UTC)
    from datetime import timezone
    tokyo = timezone(timedelta(hours=9))
    assert query.after_hours(MONDAY, tz=tokyo)  # 19:00 in Tokyo


def test_parse_when() -> None:
    assert query.parse_when("2026-11-30") == datetime(2026, 11, 30, tzinfo=UTC)
    assert query.parse_when("2026-11-30", end=True) == datetime(2026, 12, 1, tzinfo=UTC)
    assert query.parse_when("2026-11-30T19:15+09:00") == datetime(2026, 11, 30, 10, 15, tzinfo=UTC)
    assert query.parse_when("2026-11-30T10:15Z") == datetime(2026, 11, 30, 10, 15, tzinfo=UTC)
    with pytest.raises(ValueError, match="not an ISO date"):
        query.parse_when("yesterday")
    assert query.parse_work_hours("7-19") == (7, 19)
    with pytest.raises(ValueError):
        query.parse_work_hours("18-8")


def test_several_trails_are_merged_by_time(tmp_path: Path) -> None:
    first = write_log(tmp_path, [(MONDAY, access("a", "/bin/x", "P1")),
                                 (MONDAY + timedelta(minutes=2), access("a", "/bin/x", "P3"))], name="a")
    second = write_log(tmp_path, [(MONDAY + timedelta(minutes=1), access("b", "/bin/y", "P2"))], name="b",
                       chain="11" * 16)
    records = query.load([first, second]).records
    assert [query.patient_of(r) for r in records] == ["P1", "P2", "P3"]


def test_tampered_log_gives_the_records_before_it_and_names_the_line(log: Path) -> None:
    lines = lines_of(log)
    index = next(i for i, line in enumerate(lines) if b"dcmdump" in line)
    lines[index] = lines[index].replace(b"PAT-2", b"PAT-3")
    write_lines(log, lines)
    loaded = query.load([log])
    assert [r["event"] for r in loaded.records] == ["create", "open", "open"]
    assert loaded.problem is not None and f"{log}:{index + 1} " in loaded.problem
    assert "audit verify" in loaded.problem


def test_cli_query(log: Path) -> None:
    result = cli("query", log, "--patient", "PAT-1", "--denied")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["time", "user", "program", "event", "outcome", "path", "patient", "study"]
    assert len(lines) == 2 and "yamada" in lines[1] and " cat " in lines[1] and "denied" in lines[1]
    assert "1 of 5 records" in result.stderr
    as_json = cli("query", log, "--after-hours", "--json")
    exes = [json.loads(line)["program"]["exe"] for line in as_json.stdout.splitlines()]
    assert exes == ["/usr/bin/dcmdump"]
    assert cli("query", log, "--since", "never").returncode == 2


def test_cli_query_on_a_cut_log_warns_and_fails(log: Path) -> None:
    data = log.read_bytes()
    log.write_bytes(data[: len(data) // 2])  # cut mid-line: the active file of a crashed mount looks so
    other = log.with_name("zzz.log")
    other.write_text("not an audit log\n")
    result = cli("query", log, other)
    assert result.returncode == 24
    assert "Traceback" not in result.stderr
    assert "WARNING" in result.stderr and f"{other}:1" in result.stderr and "audit verify" in result.stderr
    assert "PAT-1" in result.stdout  # the good file still answers


# ---------------------------------------------------------------------------- reports


def test_patient_summary(log: Path) -> None:
    records = list(query.Filter(patient="PAT-1").apply(query.load([log]).records))
    summary = query.patient_summary(records)
    assert summary["records"] == 4
    assert summary["actions"] == {"store": 1, "read": 1, "denied": 1, "delete": 1}
    assert summary["users"] == {"orthanc": 3, "yamada": 1}
    assert summary["studies"] == {"1.2.3": 4}
    assert summary["instances"] == 1


def test_cli_report_patient(log: Path) -> None:
    result = cli("report", log, "--patient", "PAT-1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.index("4 records") < out.index("actions:") < out.index("2026-11-30 10:00:00")
    assert "PAT-2" not in out and "9.9" not in out
    assert cli("report", log).returncode == 2  # no report asked for


def _burst(user: str, exe: str, start: datetime, patients: int, step: timedelta) -> list:
    return [(start + i * step, access(user, exe, f"P{i:03d}")) for i in range(patients)]


def test_bulk_access_finds_one_burst_and_ignores_slow_or_small_ones(tmp_path: Path) -> None:
    timed = _burst("yamada", "/usr/bin/cp", MONDAY, 30, timedelta(seconds=10))  # 30 in 5 min
    timed += _burst("orthanc", "/usr/sbin/Orthanc", MONDAY, 30, timedelta(minutes=1))  # 30 in 30 min
    timed += _burst("tanaka", "/usr/bin/cp", MONDAY, 20, timedelta(seconds=1))  # exactly the limit
    timed.sort(key=lambda pair: pair[0])
    records = query.load([write_log(tmp_path, timed)]).records
    findings = query.bulk_access(records, patients=20, window=timedelta(minutes=10))
    assert [(f.user, f.program, len(f.patients), f.records) for f in findings] == [
        ("yamada", "/usr/bin/cp", 30, 30)]
    assert findings[0].first == MONDAY and findings[0].last == MONDAY + timedelta(seconds=290)
    wide = query.bulk_access(records, patients=20, window=timedelta(minutes=40))
    assert {f.user for f in wide} == {"yamada", "orthanc"}


def test_bulk_access_separates_two_bursts(tmp_path: Path) -> None:
    timed = _burst("y", "/bin/cp", MONDAY, 5, timedelta(seconds=1))
    timed += _burst("y", "/bin/cp", MONDAY + timedelta(hours=1), 5, timedelta(seconds=1))
    records = query.load([write_log(tmp_path, timed)]).records
    findings = query.bulk_access(records, patients=3, window=timedelta(minutes=1))
    assert len(findings) == 2 and all(len(f.patients) == 5 for f in findings)


def test_cli_report_bulk(tmp_path: Path) -> None:
    log = write_log(tmp_path, _burst("yamada", "/usr/bin/cp", MONDAY, 6, timedelta(seconds=5)))
    result = cli("report", log, "--bulk", "--bulk-patients", "5", "--bulk-minutes", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"user": "yamada", "program": "/usr/bin/cp",
                                          "first": MONDAY.isoformat(),
                                          "last": (MONDAY + timedelta(seconds=25)).isoformat(),
                                          "patients": 6, "records": 6}]
    assert "0 bulk accesses" in cli("report", log, "--bulk").stdout  # default 20 patients


# ---------------------------------------------------------------------------- export


@pytest.fixture
def sample_log(tmp_path: Path) -> Path:
    payloads = sample_payloads() + [{"event": "unmount", "outcome": "allowed",
                                     "program": {"pid": 100, "exe": "/usr/bin/python3"}},
                                    access("orthanc", "/usr/sbin/Orthanc", "P1", event="delete", op="delete")]
    return write_log(tmp_path, [(MONDAY + timedelta(seconds=i), p) for i, p in enumerate(payloads)])


def test_csv_one_flat_row_per_record(sample_log: Path) -> None:
    records = query.load([sample_log]).records
    rows = list(csv.DictReader(io.StringIO(export.to_csv(records))))
    assert len(rows) == len(records) == len(sample_payloads()) + 2
    assert tuple(rows[0]) == export.CSV_COLUMNS
    opened = next(r for r in rows if r["event"] == "open")
    assert opened["patient_id"] == "PAT-0001" and opened["exe"] == "/usr/sbin/Orthanc"
    assert json.loads(opened["argv"]) == ["Orthanc", "/etc/orthanc/"]
    renamed = next(r for r in rows if r["event"] == "rename")
    assert renamed["new_path"] == "/studies/\U0001f4f7 final.dcm"
    assert next(r for r in rows if r["event"] == "setattr")["detail"].startswith('quote " backslash')


def check_fhir_audit_event(resource: dict[str, Any]) -> None:
    """The FHIR R4 AuditEvent elements with cardinality 1.. and the types they must have."""
    assert resource["resourceType"] == "AuditEvent"
    assert set(resource["type"]) >= {"system", "code"}
    datetime.fromisoformat(resource["recorded"].replace("Z", "+00:00"))
    assert resource["recorded"].endswith("Z")  # an instant carries its zone
    assert resource["agent"] and all(isinstance(agent["requestor"], bool) for agent in resource["agent"])
    assert sum(agent["requestor"] for agent in resource["agent"]) == 1
    assert resource["source"]["observer"]
    assert resource.get("action", "C") in {"C", "R", "U", "D", "E"}
    assert resource.get("outcome", "0") in {"0", "4", "8", "12"}
    assert len(resource["id"]) <= 64
    for entity in resource.get("entity", []):
        for detail in entity.get("detail", []):
            assert set(detail) == {"type", "valueString"}


def test_fhir_bundle(sample_log: Path) -> None:
    records = query.load([sample_log]).records
    bundle = export.to_fhir_bundle(records, "encfs-pacs@test")
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    for entry in bundle["entry"]:
        assert entry["fullUrl"].startswith("urn:uuid:")
        check_fhir_audit_event(entry["resource"])
    resources = [entry["resource"] for entry in bundle["entry"]]
    by_record = dict(zip([r["event"] for r in records], resources, strict=True))
    mount, unmount = by_record["mount"], by_record["unmount"]
    assert (mount["type"]["code"], mount["subtype"][0]["code"]) == ("110100", "110120")
    assert unmount["subtype"][0]["code"] == "110121"
    opened = by_record["open"]
    assert (opened["type"]["code"], opened["action"], opened["outcome"]) == ("110103", "R", "0")
    assert [a["name"] for a in opened["agent"]] == ["orthanc", "Orthanc"]
    assert opened["agent"][0]["requestor"] is True and opened["agent"][1]["requestor"] is False
    patient, study = opened["entity"][0], opened["entity"][1]
    assert (patient["type"]["code"], patient["role"]["code"], patient["what"]["identifier"]["value"]) == \
        ("1", "1", "PAT-0001")
    assert (study["type"]["code"], study["role"]["code"]) == ("2", "3")
    assert study["what"]["identifier"]["type"]["coding"][0]["code"] == "110180"
    assert {"type": "SOPInstanceUID", "valueString": "1.2.840.113619.2.1.1"} in study["detail"]
    assert by_record["create"]["action"] == "C" and by_record["delete"]["action"] == "D"
    assert by_record["rename"]["action"] == "U"
    denied = by_record["deny"]
    assert (denied["type"]["code"], denied["outcome"]) == ("110113", "4")
    assert by_record["integrity-failure"]["type"]["code"] == "110113"
    assert by_record["policy-load"]["subtype"][0]["code"] == "110129"


def test_cli_export(sample_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "events.json"
    result = cli("export", "--format", "fhir", sample_log, "--output", out, "--observer", "pacs1")
    assert result.returncode == 0, result.stderr
    bundle = json.loads(out.read_text())
    assert out.stat().st_mode & 0o777 == 0o600  # it names patients, whatever the umask
    assert len(bundle["entry"]) == len(sample_payloads()) + 2
    assert bundle["entry"][0]["resource"]["source"]["observer"] == {"display": "pacs1"}
    as_csv = cli("export", "--format", "csv", sample_log)
    assert as_csv.returncode == 0 and as_csv.stdout.startswith("time,seq,event,")


def check_atna_message(root: ET.Element) -> None:
    """The elements and attributes DICOM PS3.15 A.5.1 requires of every AuditMessage."""
    assert root.tag == "AuditMessage"
    event = root.find("EventIdentification")
    assert event is not None
    assert event.get("EventActionCode") in {"C", "R", "U", "D", "E"}
    assert event.get("EventOutcomeIndicator") in {"0", "4", "8", "12"}
    datetime.fromisoformat(str(event.get("EventDateTime")).replace("Z", "+00:00"))
    event_id = event.find("EventID")
    assert event_id is not None and event_id.get("csd-code") and event_id.get("codeSystemName") == "DCM"
    participants = root.findall("ActiveParticipant")
    assert participants and all(p.get("UserID") and p.get("UserIsRequestor") in ("true", "false")
                                for p in participants)
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID")


def test_atna_messages(sample_log: Path) -> None:
    records = query.load([sample_log]).records
    lines = export.to_atna(records, "pacs1").splitlines()
    assert len(lines) == len(records)
    messages = [ET.fromstring(line) for line in lines]
    for message in messages:
        check_atna_message(message)
    opened = messages[[r["event"] for r in records].index("open")]
    event = opened.find("EventIdentification")
    assert event is not None and event.get("EventActionCode") == "R"
    objects = opened.findall("ParticipantObjectIdentification")
    assert [(o.get("ParticipantObjectID"), o.get("ParticipantObjectTypeCode"),
             o.get("ParticipantObjectTypeCodeRole")) for o in objects] == [
        ("PAT-0001", "1", "1"), ("1.2.840.113619.2.1", "2", "3"),
        ("file:///studies/1.2.840.113619/ct1.dcm", "2", None)]
    assert [o.findtext("ParticipantObjectName") for o in objects] == [
        "PAT-0001", "1.2.840.113619.2.1", "/studies/1.2.840.113619/ct1.dcm"]
    instance = objects[1].find("ParticipantObjectDescription/SOPClass/Instance")
    assert instance is not None and instance.get("UID") == "1.2.840.113619.2.1.1"
    mount = messages[0].find("EventIdentification/EventTypeCode")
    assert mount is not None and mount.get("csd-code") == "110120"


def test_cli_export_atna(sample_log: Path) -> None:
    result = cli("export", "--format", "atna", sample_log, "--observer", "pacs1")
    assert result.returncode == 0, result.stderr
    first = ET.fromstring(result.stdout.splitlines()[0])
    source = first.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "pacs1"
