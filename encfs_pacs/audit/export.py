"""Export audit records for other tools: flat CSV, and FHIR R4 AuditEvent resources.

Event codes follow DICOM PS3.15 Annex A.5 / IHE ATNA (code system DCM): file accesses are
110103 "DICOM Instances Accessed" with action C/R/U/D, mount/unmount 110100 "Application
Activity" (110120 start / 110121 stop), denials, alerts and policy or key changes 110113
"Security Alert", the import/export commands 110107 "Import" / 110106 "Export".
110105 "DICOM Study Deleted" is not used: deleting one file is not deleting a study, and the
log cannot tell when a study's last instance is gone.
"""

from __future__ import annotations

import csv
import io
import json
import re
import urllib.parse
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
# Whole-volume transfers by the maintenance commands (DICOM's own event types for them).
IMPORT, EXPORT = ("110107", "Import"), ("110106", "Export")
_CONFIG_EVENTS = frozenset({"policy-load", "policy-reload", "policy-change", "policy-rejected", "key-change",
                            # maintenance commands' key events (recorded from the audit spool)
                            "volume-created", "volume-key-changed", "recovery-key-created",
                            "recovery-key-checked", "recovery-key-used", "policy-edit"})
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
    if event == "volume-import":
        return IMPORT, None, "C"
    if event == "volume-export":
        return EXPORT, None, "R"
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


def _description(record: Record) -> str:
    return str(record.get("detail") or f"{record.get('event')} {record.get('outcome', '')}".strip())


def audit_event(record: Record, observer: str) -> dict[str, Any]:
    """One FHIR R4 AuditEvent for one record; its id is the record's hash."""
    kind, subtype, action = _classify(record)
    resource: dict[str, Any] = {"resourceType": "AuditEvent", "id": record["hash"], "type": _coding(kind)}
    if subtype:
        resource["subtype"] = [_coding(subtype)]
    resource.update({"action": action, "recorded": record["time"], "outcome": _outcome(record)})
    resource["outcomeDesc"] = _description(record)
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


# Characters XML 1.0 cannot carry at all (not even as &#N;): C0 controls but tab/LF/CR,
# surrogates, U+FFFE/U+FFFF; and line breaks (CR, LF, NEL, U+2028, U+2029), which would split a
# one-message-per-line export (ElementTree leaves them raw in element text). File names and
# DICOM values may hold any of them: they are attacker-controlled.
_NOT_XML = re.compile("[^\t\x20-\x84\x86-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: Any) -> str:
    """``value`` as one line of text XML can hold: other characters written as \\xNN or
    \\uNNNN, as audit.text writes undecodable bytes."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}",
                        str(value))


def _code(parent: ET.Element, tag: str, pair: tuple[str, str], system: str = "DCM") -> None:
    ET.SubElement(parent, tag, {"csd-code": pair[0], "codeSystemName": system, "originalText": pair[1]})


def _object(root: ET.Element, object_id: str, type_code: str, role: str | None, id_type: tuple[str, str],
            system: str, name: str) -> ET.Element:
    """A ParticipantObjectIdentification, children in the order the schema's group demands.

    The A.5.1 schema requires a ParticipantObjectName or a ParticipantObjectQuery in every
    participant object. The log holds no patient or study name (by design: no more PHI than
    needed), so the name repeats the identifier, or for a file is its path."""
    attributes = {"ParticipantObjectID": xml_text(object_id), "ParticipantObjectTypeCode": type_code}
    if role:
        attributes["ParticipantObjectTypeCodeRole"] = role
    element = ET.SubElement(root, "ParticipantObjectIdentification", attributes)
    _code(element, "ParticipantObjectIDTypeCode", id_type, system)
    ET.SubElement(element, "ParticipantObjectName").text = xml_text(name)
    return element


def atna_message(record: Record, source: str) -> str:
    """One DICOM PS3.15 A.5 AuditMessage (the XML an ATNA audit repository receives), same
    codes as the FHIR export; valid against the A.5.1 schema (tests/fixtures/dicom-audit-message.rnc)."""
    kind, subtype, action = _classify(record)
    root = ET.Element("AuditMessage")
    event = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action, "EventDateTime": record["time"],
        "EventOutcomeIndicator": _outcome(record)})
    _code(event, "EventID", kind)
    if subtype:
        _code(event, "EventTypeCode", subtype)
    ET.SubElement(event, "EventOutcomeDescription").text = xml_text(_description(record))
    for agent in _agents(record):
        user_id = agent["who"].get("identifier", {}).get("value") or agent["who"]["display"]
        attributes = {"UserID": xml_text(user_id),
                      "UserIsRequestor": "true" if agent["requestor"] else "false"}
        if agent.get("altId"):
            attributes["AlternativeUserID"] = xml_text(agent["altId"])
        if agent.get("name"):
            attributes["UserName"] = xml_text(agent["name"])
        ET.SubElement(root, "ActiveParticipant", attributes)
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": xml_text(source)})
    tags = dicom(record)
    if tags.get("PatientID"):
        _object(root, str(tags["PatientID"]), "1", "1", ("2", "Patient Number"), "RFC-3881",
                str(tags["PatientID"]))
    if tags.get("StudyInstanceUID"):
        study = _object(root, str(tags["StudyInstanceUID"]), "2", "3", ("110180", "Study Instance UID"),
                        "DCM", str(tags["StudyInstanceUID"]))
        if tags.get("SOPInstanceUID"):  # the schema nests instances in their SOP class
            described = ET.SubElement(study, "ParticipantObjectDescription")
            sop_class = ET.SubElement(described, "SOPClass", {"NumberOfInstances": "1"})
            ET.SubElement(sop_class, "Instance", {"UID": xml_text(tags["SOPInstanceUID"])})
    path = _sub(record, "object").get("path")
    if path:  # the file itself, as the FHIR export's third entity: URI of the path in the volume
        _object(root, "file://" + urllib.parse.quote(str(path), safe="/"), "2", None, ("12", "URI"),
                "RFC-3881", str(path))
    return ET.tostring(root, encoding="unicode")


def to_atna(records: Iterable[Record], source: str) -> str:
    """One AuditMessage per line (no enclosing element: each line is what syslog would carry)."""
    return "".join(atna_message(record, source) + "\n" for record in records)
