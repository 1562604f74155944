"""Questions an auditor asks of the audit trail: who touched which patient, when, with what.

Reads records with ``iter_records`` (hash-checked lines, no signature check: that is
``verify``'s job, run it first). A log that is tampered with or cut mid-way does not stop the
answer: ``load`` returns the records read so far and the problem (file, line), for the caller
to show next to the result.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any

from ..errors import AuditTampered
from .verify import _Bad, _first_records, iter_records

Record = dict[str, Any]
DENIED_OUTCOMES = frozenset({"denied", "learn-denied"})
ORIGIN = "origin"  # added by load() when logs of several folders (hosts) are merged


# ---------------------------------------------------------------------------- record fields


def record_time(record: Record) -> datetime:
    return datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _sub(record: Record, key: str) -> dict[str, Any]:
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def dicom(record: Record) -> dict[str, Any]:
    value = _sub(record, "object").get("dicom")
    return value if isinstance(value, dict) else {}


def patient_of(record: Record) -> str | None:
    value = dicom(record).get("PatientID")
    return str(value) if value not in (None, "") else None


def study_of(record: Record) -> str | None:
    value = dicom(record).get("StudyInstanceUID")
    return str(value) if value not in (None, "") else None


def user_of(record: Record) -> str:
    """The user name, else the uid ("" when the record has no caller: mount, policy-load)."""
    who = _sub(record, "who")
    if who.get("user"):
        return str(who["user"])
    return str(who["uid"]) if who.get("uid") is not None else ""


def exe_of(record: Record) -> str:
    return str(_sub(record, "program").get("exe") or "")


def program_name(record: Record) -> str:
    return os.path.basename(exe_of(record))


def path_of(record: Record) -> str:
    return str(_sub(record, "object").get("path") or "")


def action_of(record: Record) -> str:
    """What was done to the file, in a disclosure report's words."""
    event, op = record.get("event"), record.get("op")
    if record.get("outcome") in DENIED_OUTCOMES:
        return "denied"
    if event == "open":
        return "write" if op == "write" else "read"
    if event == "release":
        return "close"
    return {"create": "store", "delete": "delete", "rename": "rename", "truncate": "modify",
            "setattr": "modify", "list": "list"}.get(str(event), str(event))


# ---------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    """Records of the given logs ordered by time, and why reading stopped early (or None)."""

    records: list[Record]
    problem: str | None = None


def load(paths: Iterable[Path]) -> Loaded:
    """Every payload record of ``paths`` (any number of trails), merged by time.

    A file that is not readable as a log at all (empty, foreign, beginning cut off) is left
    out so the other files still answer; reading stops at the first bad line of the rest (of
    that folder). When the files come from several folders -- one per host, as ``audit
    collect`` writes them -- each record gets ``origin``: the name of its file's folder, so a
    merged view shows which host every record came from.
    """
    good, problems = _usable(list(paths))
    folders: dict[Path, list[Path]] = {}
    for path in good:
        folders.setdefault(Path(os.path.abspath(path)).parent, []).append(path)
    records: list[Record] = []
    for folder, members in folders.items():
        try:
            for record in iter_records(members):
                if len(folders) > 1:
                    record[ORIGIN] = folder.name
                records.append(record)
        except AuditTampered as exc:
            problems.append(str(exc))
    records.sort(key=lambda r: str(r.get("time", "")))  # fixed-width UTC text: text order is time order
    return Loaded(records, "; ".join(problems) or None)


def _usable(paths: list[Path]) -> tuple[list[Path], list[str]]:
    good, problems = [], []
    for path in paths:
        try:
            _first_records([path])
        except _Bad as bad:
            problems.append(f"audit log {bad.problem}: file skipped (check it with: encfs-pacs audit verify)")
        else:
            good.append(path)
    return good, problems


# ---------------------------------------------------------------------------- filtering


def parse_when(text: str, *, end: bool = False) -> datetime:
    """An ISO date or date-time; without an offset it is UTC (the log's time). A bare date
    given as an end bound means the end of that day."""
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date or date-time (e.g. 2026-11-30 or "
                         "2026-11-30T10:15, 2026-11-30T19:15+09:00)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_work_hours(text: str) -> tuple[int, int]:
    """'8-18' -> (8, 18): working hours [8:00, 18:00) local time."""
    try:
        start, stop = (int(part) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"{text!r}: expected START-END hours, e.g. 8-18") from None
    if not 0 <= start < stop <= 24:
        raise ValueError(f"{text!r}: hours must satisfy 0 <= START < END <= 24")
    return start, stop


def after_hours(moment: datetime, work_hours: tuple[int, int] = (8, 18), tz: tzinfo | None = None) -> bool:
    """Outside working hours or on a weekend, in ``tz`` (default: this machine's local time)."""
    local = moment.astimezone(tz)
    if local.weekday() >= 5:
        return True
    start, stop = work_hours
    return not time(start) <= local.time() < (time(stop) if stop < 24 else time.max)


@dataclass(frozen=True)
class Filter:
    """All given criteria must hold (None / False: not a criterion)."""

    patient: str | None = None
    study: str | None = None
    user: str | None = None
    program: str | None = None  # full path or basename of the executable
    denied: bool = False
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    after_hours: bool = False
    work_hours: tuple[int, int] = (8, 18)
    tz: tzinfo | None = None  # for after_hours; None = local time

    def matches(self, record: Record) -> bool:
        checks = (
            self.patient is None or patient_of(record) == self.patient,
            self.study is None or study_of(record) == self.study,
            self.user is None or self.user in (user_of(record), str(_sub(record, "who").get("uid"))),
            self.program is None or self.program in (exe_of(record), program_name(record)),
            not self.denied or record.get("outcome") in DENIED_OUTCOMES,
        )
        if not all(checks):
            return False
        if self.since or self.until or self.after_hours:
            moment = record_time(record)
            if (self.since and moment < self.since) or (self.until and moment >= self.until):
                return False
            if self.after_hours and not after_hours(moment, self.work_hours, self.tz):
                return False
        return True

    def apply(self, records: Iterable[Record]) -> Iterator[Record]:
        return (record for record in records if self.matches(record))


# ---------------------------------------------------------------------------- bulk access


@dataclass
class BulkFinding:
    """One user with one program touching more than the threshold of distinct patients."""

    user: str
    program: str
    first: datetime
    last: datetime
    patients: set[str] = field(default_factory=set)
    records: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "program": self.program, "first": self.first.isoformat(),
                "last": self.last.isoformat(), "patients": len(self.patients), "records": self.records}


def bulk_access(records: Iterable[Record], *, patients: int = 20,
                window: timedelta = timedelta(minutes=10)) -> list[BulkFinding]:
    """Bursts where one (user, program) touched more than ``patients`` distinct patients
    within ``window``; overlapping windows of one burst are merged into one finding."""
    by_key: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
    for record in records:
        patient = patient_of(record)
        if patient is not None:
            by_key.setdefault((user_of(record), exe_of(record)), []).append((record_time(record), patient))
    findings: list[BulkFinding] = []
    for (user, exe), hits in by_key.items():
        findings.extend(_bursts(user, exe, sorted(hits), patients, window))
    return sorted(findings, key=lambda f: f.first)


def _bursts(user: str, exe: str, hits: list[tuple[datetime, str]], limit: int,
            window: timedelta) -> list[BulkFinding]:
    inside: deque[tuple[datetime, str]] = deque()
    counts: Counter[str] = Counter()
    found: list[BulkFinding] = []
    for moment, patient in hits:
        inside.append((moment, patient))
        counts[patient] += 1
        while moment - inside[0][0] > window:
            _, gone = inside.popleft()
            counts[gone] -= 1
            if not counts[gone]:
                del counts[gone]
        if len(counts) <= limit:
            continue
        start = inside[0][0]
        if found and start <= found[-1].last:  # the same burst goes on
            burst = found[-1]
        else:
            burst = BulkFinding(user, exe, start, moment)
            found.append(burst)
            burst.records = len(inside) - 1
        burst.last = moment
        burst.records += 1
        burst.patients.update(counts)
    return found


# ---------------------------------------------------------------------------- disclosure report


def patient_summary(records: list[Record]) -> dict[str, Any]:
    """Counts for the top of a disclosure report (records already filtered to one patient)."""
    return {
        "records": len(records),
        "first": records[0]["time"] if records else None,
        "last": records[-1]["time"] if records else None,
        "actions": dict(Counter(action_of(r) for r in records).most_common()),
        "users": dict(Counter(user_of(r) or "-" for r in records).most_common()),
        "programs": dict(Counter(exe_of(r) or "-" for r in records).most_common()),
        "studies": dict(Counter(study_of(r) or "-" for r in records).most_common()),
        "instances": len({dicom(r).get("SOPInstanceUID") for r in records} - {None}),
    }
