"""`audit export` checked against the published structures, not only our own reading of them.

- FHIR: every AuditEvent and the Bundle are parsed by ``fhir.resources`` (pydantic models
  generated from HL7's StructureDefinitions; R4B's AuditEvent and Bundle are R4's). It checks
  element names, types, cardinality and primitive formats; it does not check required value-set
  bindings or id length, so those few are checked here from the R4 specification.
- ATNA: every AuditMessage is validated with lxml's RELAX NG against the DICOM PS3.15 A.5.1
  schema (tests/fixtures/dicom-audit-message.rnc), converted from compact syntax by rnc2rng.
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from encfs_pacs.audit import export, query

from .auditkit import sample_payloads
from .test_audit_query import MONDAY, access, write_log

lxml_etree = pytest.importorskip("lxml.etree", reason="lxml is a test dependency: make setup")
rnc2rng = pytest.importorskip("rnc2rng", reason="rnc2rng is a test dependency: make setup")
r4b_auditevent = pytest.importorskip("fhir.resources.R4B.auditevent",
                                     reason="fhir.resources is a test dependency: make setup")
r4b_bundle = pytest.importorskip("fhir.resources.R4B.bundle")

SCHEMA = Path(__file__).parents[1] / "fixtures" / "dicom-audit-message.rnc"


def load_schema() -> Any:
    """The A.5.1 schema as an lxml RelaxNG validator."""
    # The standard writes value descriptions as "## ..." after each choice, the last one before
    # "}" where no pattern follows; rnc2rng (strictly per the RELAX NG compact grammar) only
    # accepts "##" documentation in front of a pattern. Turning them into plain "#" comments
    # removes annotations only: no pattern of the schema changes.
    text = re.sub(r"##", "#", SCHEMA.read_text(encoding="utf-8"))
    rng = rnc2rng.dumps(rnc2rng.loads(text))
    return lxml_etree.RelaxNG(lxml_etree.fromstring(rng.encode("utf-8")))


@pytest.fixture(scope="module")
def schema() -> Any:
    return load_schema()


def hostile() -> list[dict[str, Any]]:
    """Values a file name or a DICOM header can carry that XML and HTML cannot take as is."""
    record = access("yamada", "/usr/bin/cat", 'P\x01<x>&"\u2028', outcome="denied", sop="1.2.3.\x7f4")
    record["object"]["path"] = "/studies/<script>alert(1)</script>\n\x1b[31m\u2029 \U0001f4f7.dcm"
    record["detail"] = "line one\nline two\r\x00"
    return [record, {"event": "policy-rejected", "outcome": "error", "alert": True,
                     "detail": "policy.toml line 3: bad \x0c value"},
            {"event": "key-change", "outcome": "allowed", "detail": "passphrase changed"},
            access("yamada", "/usr/bin/cat", "P2", outcome="learn-denied"),
            {"event": "security-alert", "outcome": "error", "alert": True, "detail": "log unavailable",
             "lost": 4}]


def maintenance() -> list[dict[str, Any]]:
    """Events of maintenance commands as the audit spool delivers them (who ran it, no file)."""
    who = {"uid": 0, "user": "root", "loginuid": 1000, "session": 3}
    spool = {"id": "a" * 32, "file": "x.json", "authenticated": True}
    return [{"event": "volume-import", "outcome": "success", "who": who, "spool": spool,
             "files": 3, "bytes": 1536, "source": "/srv/plain-pacs"},
            {"event": "volume-export", "outcome": "success", "who": who, "spool": spool,
             "files": 3, "destination": "/srv/exit"},
            {"event": "policy-edit", "outcome": "success", "who": who, "action": "add",
             "rule": {"id": "viewer"}, "spool": {**spool, "authenticated": False}}]


def test_maintenance_transfers_use_dicoms_import_and_export_event_ids(records: list[dict]) -> None:
    by_event = {r["event"]: r for r in records}
    ids = {name: lxml_etree.fromstring(export.atna_message(by_event[name], "pacs1").encode("utf-8"))
           .find("EventIdentification/EventID").get("csd-code")
           for name in ("volume-import", "volume-export", "policy-edit")}
    assert ids == {"volume-import": "110107", "volume-export": "110106", "policy-edit": "110113"}


@pytest.fixture
def records(tmp_path: Path) -> list[dict[str, Any]]:
    payloads = [*sample_payloads(), {"event": "unmount", "outcome": "allowed",
                                     "program": {"pid": 100, "exe": "/usr/bin/python3"}},
                access("orthanc", "/usr/sbin/Orthanc", "P1", event="delete", op="delete"),
                *maintenance(), *hostile()]
    log = write_log(tmp_path, [(MONDAY + timedelta(seconds=i), p) for i, p in enumerate(payloads)])
    loaded = query.load([log])
    assert loaded.problem is None and len(loaded.records) == len(payloads)
    return loaded.records


# ---------------------------------------------------------------------------- ATNA / DICOM


def problems(schema: Any, xml: str) -> list[str]:
    document = lxml_etree.fromstring(xml.encode("utf-8"))
    return [] if schema.validate(document) else [str(error) for error in schema.error_log]


def test_every_atna_message_is_valid_against_the_dicom_schema(schema: Any, records: list[dict]) -> None:
    lines = export.to_atna(records, "encfs-pacs@test").split("\n")
    assert lines.pop() == "" and len(lines) == len(records)  # one message per line, whatever the names
    for record, line in zip(records, lines, strict=True):
        assert problems(schema, line) == [], (record["event"], line)


def test_hostile_values_stay_text_and_round_trip_escaped(schema: Any, records: list[dict]) -> None:
    line = export.atna_message(records[-5], "pacs1")
    message = lxml_etree.fromstring(line.encode("utf-8"))
    names = [o.findtext("ParticipantObjectName") for o in message.iter("ParticipantObjectIdentification")]
    assert names[0] == 'P\\x01<x>&"\\u2028'
    assert names[-1] == "/studies/<script>alert(1)</script>\\x0a\\x1b[31m\\u2029 \U0001f4f7.dcm"
    description = message.findtext("EventIdentification/EventOutcomeDescription")
    assert description == "line one\\x0aline two\\x0d\\x00"
    assert not list(message.iter("script"))


def test_the_schema_rejects_what_the_old_export_wrote(schema: Any, records: list[dict]) -> None:
    """The export before this check: no ParticipantObjectName, Instance straight in the
    description. Both are schema violations; so are a wrong outcome code and a missing source."""
    opened = next(r for r in records if r["event"] == "open")
    good = export.atna_message(opened, "pacs1")
    assert problems(schema, good) == []
    no_name = re.sub(r"<ParticipantObjectName>[^<]*</ParticipantObjectName>", "", good)
    assert any("ParticipantObjectName" in p for p in problems(schema, no_name))
    flat = re.sub(r'<SOPClass NumberOfInstances="1">(<Instance UID="[^"]*" />)</SOPClass>', r"\1", good)
    assert flat != good and problems(schema, flat)
    assert problems(schema, good.replace('EventOutcomeIndicator="0"', 'EventOutcomeIndicator="3"'))
    assert problems(schema, re.sub(r"<AuditSourceIdentification [^>]*/>", "", good))
    assert problems(schema, good.replace('EventDateTime="2026', 'EventDateTime="yesterday'))


# ---------------------------------------------------------------------------- FHIR R4(B)

ACTIONS, OUTCOMES = {"C", "R", "U", "D", "E"}, {"0", "4", "8", "12"}  # R4 required bindings
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def fhir_problems(resource: dict[str, Any]) -> list[str]:
    try:
        r4b_auditevent.AuditEvent.model_validate(resource)
    except Exception as exc:  # pydantic.ValidationError: what the StructureDefinition forbids
        return [str(exc)]
    found = []
    if resource.get("action") not in ACTIONS | {None}:
        found.append(f"action {resource['action']!r} is not in the required value set AuditEventAction")
    if resource.get("outcome") not in OUTCOMES | {None}:
        found.append(f"outcome {resource['outcome']!r} is not in the required value set AuditEventOutcome")
    if not FHIR_ID.fullmatch(str(resource.get("id", "x"))):
        found.append("id is not a FHIR id")
    return found


def test_every_fhir_audit_event_and_the_bundle_parse(records: list[dict]) -> None:
    bundle = export.to_fhir_bundle(records, "encfs-pacs@test")
    for record, entry in zip(records, bundle["entry"], strict=True):
        assert fhir_problems(entry["resource"]) == [], record["event"]
    parsed = r4b_bundle.Bundle.model_validate(bundle)
    assert len(parsed.entry) == len(records)
    assert {type(entry.resource).__name__ for entry in parsed.entry} == {"AuditEvent"}
    again = r4b_bundle.Bundle.model_validate_json(parsed.model_dump_json())  # FHIR JSON round trip
    assert again.entry[0].resource.id == records[0]["hash"]


@pytest.mark.parametrize(("breakage", "expected"), [
    (lambda r: r.pop("agent"), "agent"),
    (lambda r: r.pop("source"), "source"),
    (lambda r: r.__setitem__("recordedAt", r["recorded"]), "recordedAt"),
    (lambda r: r.__setitem__("recorded", "2026-11-30T10:00:00"), "recorded"),  # an instant needs a zone
    (lambda r: r.__setitem__("type", [r["type"]]), "type"),  # R4: one Coding, not a list
    (lambda r: r["entity"][0].__setitem__("detail", [{"type": "n", "valueInteger": 3}]), "valueInteger"),
    (lambda r: r.__setitem__("action", "X"), "AuditEventAction"),
    (lambda r: r.__setitem__("outcome", "3"), "AuditEventOutcome"),
])
def test_a_broken_audit_event_is_rejected(records: list[dict], breakage: Any, expected: str) -> None:
    opened = next(r for r in records if r["event"] == "open")
    resource = copy.deepcopy(export.audit_event(opened, "pacs1"))
    assert fhir_problems(resource) == []
    breakage(resource)
    found = fhir_problems(resource)
    assert found and expected in " ".join(found)


def test_a_broken_bundle_is_rejected(records: list[dict]) -> None:
    bundle = export.to_fhir_bundle(records[:3], "pacs1")
    bundle["entry"][1]["resource"]["agent"] = "nobody"
    with pytest.raises(ValueError, match="agent"):
        r4b_bundle.Bundle.model_validate(bundle)
