"""Export audit records for other tools: flat CSV, and FHIR R4 AuditEvent resources.

Event codes follow DICOM PS3.15 Annex A.5 / IHE ATNA (code system DCM): file accesses are
110103 "DICOM Instances Accessed" with action C/R/U/D, mount/unmount 110100 "Application
Activity" (110120 start / 110121 stop), denials, alerts and policy or key changes 110113
"Security Alert". 110105 "DICOM Study Deleted" is not used: deleting one file is not
deleting a study, and the log cannot tell when a study's last instance is gone.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from .query import DENIED_OUTCOMES, Record, _sub, dicom, exe_of, program_name, user_of

CSV_COLUMNS = ("time", "seq", "event", "outcome", "errno", "op", "rule", "view", "alert", "user", "uid",
               "gid", "loginuid", "session", "exe", "pid", "sha256", "unit", "argv", "path", "new_path",
               "inode", "patient_id", "study_uid", "sop_uid", "modality", "bytes_read", "bytes_written",
               "detail", "hash")


def csv_row(record: Record) -> dict[str, Any]:
    who, program, obj, tags = _sub(record, "who"), _sub(record, "program"), _sub(record, "object"), \
        dicom(record)
    argv = program.get("argv")
    argv_text = json.dumps(argv, ensure_ascii=False) if argv is not None else None
    return {
        **{key: record.get(key) for key in ("time", "seq", "event", "outcome", "errno", "op", "rule", "view",
                                            "alert", "bytes_read", "bytes_written", "detail", "hash")},
        "user": who.get("user"), "uid": who.get("uid"), "gid": who.get("gid"),
        "loginuid": who.get("loginuid"), "session": who.get("session"),
        "exe": program.get("exe"), "pid": program.get("pid"), "sha256": program.get("sha256"),
        "unit": program.get("unit"), "argv": argv_text,
        "path": obj.get("path"), "new_path": obj.get("new_path"), "inode": obj.get("inode"),
        "patient_id": tags.get("PatientID"), "study_uid": tags.get("StudyInstanceUID"),
        "sop_uid": tags.get("SOPInstanceUID"), "modality": tags.get("Modality"),
    }


def to_csv(records: Iterable[Record]) -> str:
    """One row per record, the columns of CSV_COLUMNS (argv as a JSON list)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({key: "" if value is None else value for key, value in csv_row(record).items()})
    return out.getvalue()


# ---------------------------------------------------------------------------- FHIR R4

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ACTIVITY, START, STOP = ("110100", "Application Activity"), ("110120", "Application Start"), \
    ("110121", "Application Stop")
ACCESSED, ALERT = ("110103", "DICOM Instances Accessed"), ("110113", "Security Alert")
SECURITY_CONFIGURATION = ("110129", "Security Configuration")
_CONFIG_EVENTS = frozenset({"policy-load", "policy-reload", "policy-change", "policy-rejected", "key-change",
                            # maintenance commands' key events (recorded from the audit spool)
                            "volume-created", "volume-key-changed", "recovery-key-created",
                            "recovery-key-checked", "recovery-key-used"})
_ALERT_EVENTS = frozenset({"security-alert", "integrity-failure"})


def _coding(pair: tuple[str, str]) -> dict[str, str]:
    return {"system": DCM, "code": pair[0], "display": pair[1]}


def _action(record: Record) -> str:
    """FHIR AuditEvent.action: C create, R read, U update, D delete, E execute."""
    event = record.get("event")
    if event == "create":
        return "C"
    if event == "delete":
        return "D"
    if event in ("rename", "truncate", "setattr") or record.get("op") == "write" \
            or (event == "release" and record.get("bytes_written")):
        return "U"
    return "R"


def _classify(record: Record) -> tuple[tuple[str, str], tuple[str, str] | None, str]:
    """(type, subtype or None, action) of a record."""
    event = record.get("event")
    if event == "mount":
        return ACTIVITY, START, "E"
    if event == "unmount":
        return ACTIVITY, STOP, "E"
    if event in _CONFIG_EVENTS:
        return ALERT, SECURITY_CONFIGURATION, "E"
    if record.get("alert") or event in _ALERT_EVENTS or record.get("outcome") in DENIED_OUTCOMES:
        return ALERT, None, "E"
    return ACCESSED, None, _action(record)


def _outcome(record: Record) -> str:
    """0 success, 4 minor failure (refused), 8 serious failure (error)."""
    codes = {"allowed": "0", "denied": "4", "learn-denied": "0", "error": "8"}
    return codes.get(str(record.get("outcome")), "0")


def _agents(record: Record) -> list[dict[str, Any]]:
    who = _sub(record, "who")
    agents: list[dict[str, Any]] = []
    if who:
        user = user_of(record)
        agents.append({"who": {"identifier": {"value": user}, "display": f"{user} (uid {who.get('uid')})"},
                       "altId": str(who.get("uid")), "name": user, "requestor": True})
    exe = exe_of(record)
    if exe:
        agent: dict[str, Any] = {"who": {"display": exe}, "name": program_name(record),
                                 "requestor": not agents}
        pid = _sub(record, "program").get("pid")
        if pid is not None:
            agent["altId"] = f"pid {pid}"
        agents.append(agent)
    if not agents:  # FHIR needs one: the file system itself acted
        agents.append({"who": {"display": "encfs-pacs"}, "name": "encfs-pacs", "requestor": True})
    return agents


def _entities(record: Record) -> list[dict[str, Any]]:
    tags, entities = dicom(record), []
    if tags.get("PatientID"):
        entities.append({"what": {"identifier": {"value": str(tags["PatientID"])}},
                         "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                         "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}})
    if tags.get("StudyInstanceUID"):
        study: dict[str, Any] = {
            "what": {"identifier": {"type": {"coding": [_coding(("110180", "Study Instance UID"))]},
                                    "value": str(tags["StudyInstanceUID"])}},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "3", "display": "Report"}}
        details = [{"type": key, "valueString": str(tags[key])} for key in ("SOPInstanceUID", "Modality")
                   if tags.get(key)]
        if details:
            study["detail"] = details
        entities.append(study)
    path = _sub(record, "object").get("path")
    if path:
        entities.append({"type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                         "name": str(path)})
    return entities


def audit_event(record: Record, observer: str) -> dict[str, Any]:
    """One FHIR R4 AuditEvent for one record; its id is the record's hash."""
    kind, subtype, action = _classify(record)
    resource: dict[str, Any] = {"resourceType": "AuditEvent", "id": record["hash"], "type": _coding(kind)}
    if subtype:
        resource["subtype"] = [_coding(subtype)]
    resource.update({"action": action, "recorded": record["time"], "outcome": _outcome(record)})
    description = record.get("detail") or f"{record.get('event')} {record.get('outcome', '')}".strip()
    resource["outcomeDesc"] = str(description)
    resource["agent"] = _agents(record)
    resource["source"] = {"observer": {"display": observer},
                          "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                                    "code": "4", "display": "Application Server"}]}
    entities = _entities(record)
    if entities:
        resource["entity"] = entities
    return resource


def to_fhir_bundle(records: Iterable[Record], observer: str) -> dict[str, Any]:
    """A FHIR R4 Bundle (type collection) of AuditEvents, one per record."""
    entries = [{"fullUrl": f"urn:uuid:{uuid.UUID(hex=record['hash'][:32])}",
                "resource": audit_event(record, observer)} for record in records]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


# ---------------------------------------------------------------------------- DICOM / ATNA XML


def _code(parent: ET.Element, tag: str, pair: tuple[str, str], system: str = "DCM") -> None:
    ET.SubElement(parent, tag, {"csd-code": pair[0], "codeSystemName": system, "originalText": pair[1]})


def atna_message(record: Record, source: str) -> str:
    """One DICOM PS3.15 A.5 AuditMessage (the XML an ATNA audit repository receives), same
    codes as the FHIR export."""
    kind, subtype, action = _classify(record)
    root = ET.Element("AuditMessage")
    event = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action, "EventDateTime": record["time"],
        "EventOutcomeIndicator": _outcome(record)})
    _code(event, "EventID", kind)
    if subtype:
        _code(event, "EventTypeCode", subtype)
    for agent in _agents(record):
        user_id = agent["who"].get("identifier", {}).get("value") or agent["who"]["display"]
        attributes = {"UserID": str(user_id),
                      "UserIsRequestor": "true" if agent["requestor"] else "false"}
        if agent.get("altId"):
            attributes["AlternativeUserID"] = str(agent["altId"])
        if agent.get("name"):
            attributes["UserName"] = str(agent["name"])
        ET.SubElement(root, "ActiveParticipant", attributes)
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source})
    tags = dicom(record)
    if tags.get("PatientID"):
        patient = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(tags["PatientID"]), "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1"})
        _code(patient, "ParticipantObjectIDTypeCode", ("2", "Patient Number"), "RFC-3881")
    if tags.get("StudyInstanceUID"):
        study = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(tags["StudyInstanceUID"]), "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _code(study, "ParticipantObjectIDTypeCode", ("110180", "Study Instance UID"))
        if tags.get("SOPInstanceUID"):
            described = ET.SubElement(study, "ParticipantObjectDescription")
            ET.SubElement(described, "Instance", {"UID": str(tags["SOPInstanceUID"])})
    return ET.tostring(root, encoding="unicode")


def to_atna(records: Iterable[Record], source: str) -> str:
    """One AuditMessage per line (no enclosing element: each line is what syslog would carry)."""
    return "".join(atna_message(record, source) + "\n" for record in records)
