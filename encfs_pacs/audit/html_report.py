"""The monthly audit review report: one self-contained HTML page an auditor reads in a browser.

Pure: records (as ``query.load`` returns them) and the verifier's verdict in, an HTML string
out; no file or clock access here (``encfs-pacs audit report --period`` does the I/O). The
numbers come from ``query`` (filters, after-hours rule, bulk-access finding) and the integrity
verdict from ``verify``: this module only counts, groups and lays out.

Every value that comes from a log -- file names, patient IDs, user and program names, rule
details -- is attacker-controlled (anyone may name a file ``<script>...``): all of it goes
through ``_e`` (html.escape); the page has no script, no external fetch, and a CSP that forbids
both, so even a missed escape could not run code or call home.

The sections follow what the review requirements ask for (docs/audit-queries.md):
MHLW "Guidelines for the Security Management of Medical Information Systems" v6.0 (access
logging, periodic review of access logs, protection of logs against tampering and deletion,
access control) and HIPAA 45 CFR §164.312(b) (audit controls), §164.308(a)(1)(ii)(D)
(information system activity review) and §164.312(a)(1) (access control).
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from . import query
from .query import Record
from .records import utc_text
from .verify import VerifyReport

# ---------------------------------------------------------------------------- the period


_PERIOD = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True)
class Period:
    """One calendar month in UTC: [start, end)."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Period:
        match = _PERIOD.fullmatch(text.strip())
        if match is None or not 1 <= int(match[2]) <= 12 or int(match[1]) < 1970:
            raise ValueError(f"{text!r}: expected YYYY-MM (a month, e.g. 2026-11)")
        return cls(int(match[1]), int(match[2]))

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """The first instant after the period (exclusive)."""
        year, month = (self.year + 1, 1) if self.month == 12 else (self.year, self.month + 1)
        return datetime(year, month, 1, tzinfo=UTC)

    def select(self, records: Iterable[Record]) -> list[Record]:
        """The records of this month: since inclusive, until exclusive (query.Filter)."""
        return list(query.Filter(since=self.start, until=self.end).apply(records))


@dataclass(frozen=True)
class ReportOptions:
    work_hours: tuple[int, int] = (8, 18)  # after-hours rule of query.after_hours
    tz: tzinfo | None = None  # None: this machine's local time, as `audit query --after-hours`
    bulk_patients: int = 20
    bulk_window: timedelta = timedelta(minutes=10)
    max_rows: int = 500  # per detail table; the rest is counted, and `audit query` lists it


# ---------------------------------------------------------------------------- classifying


MOUNT_EVENTS = frozenset({"mount", "unmount"})
POLICY_EVENTS = frozenset({"policy-load", "policy-reload", "policy-change", "policy-rejected", "policy-edit"})
KEY_EVENTS = frozenset({"key-change", "volume-key-changed", "passphrase-changed", "recovery-key-created",
                        "recovery-key-checked", "recovery-key-used", "volume-created"})
MAINTENANCE_EVENTS = frozenset({"volume-import", "volume-export", "volume-checked", "fsck", "import",
                                "export"})
INTEGRITY_EVENTS = frozenset({"integrity-failure"})
# A release is the close summary of an open (bytes through the handle): not a second access.
NOT_AN_OPERATION = frozenset({"release"})


def is_access(record: Record) -> bool:
    """A file-system request by an identified caller (allowed or not)."""
    return isinstance(record.get("who"), dict) and record.get("event") not in (
        MOUNT_EVENTS | POLICY_EVENTS | KEY_EVENTS | MAINTENANCE_EVENTS | INTEGRITY_EVENTS)


def is_denied(record: Record) -> bool:
    return record.get("outcome") in query.DENIED_OUTCOMES


def _is_policy(record: Record) -> bool:
    # A security alert naming a rule is the policy holder announcing a break-glass rule in force.
    return record.get("event") in POLICY_EVENTS or (
        record.get("event") == "security-alert" and bool(record.get("rule")) and not is_access(record))


def _classified(record: Record) -> bool:
    """Shown in one of the sections (anything else is counted under "Other events")."""
    return (is_access(record) or _is_policy(record) or _is_outage(record)
            or record.get("event") in MOUNT_EVENTS | KEY_EVENTS | MAINTENANCE_EVENTS | INTEGRITY_EVENTS)


def _is_outage(record: Record) -> bool:
    """The writer's own alerts: the log was unavailable, replaced, or records were lost."""
    return record.get("event") == "security-alert" and not _is_policy(record) and not is_access(record)


# ---------------------------------------------------------------------------- the numbers


@dataclass
class UserRow:
    user: str
    operations: int = 0
    denied: int = 0
    after_hours: int = 0
    patients: set[str] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)
    programs: set[str] = field(default_factory=set)


@dataclass
class ProgramRow:
    exe: str
    operations: int = 0
    denied: int = 0
    after_hours: int = 0
    patients: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    binaries: set[str] = field(default_factory=set)  # SHA-256 of the executable: >1 = replaced
    bytes_read: int = 0
    bytes_written: int = 0


@dataclass
class DenialRow:
    user: str
    exe: str
    path: str
    outcome: str
    count: int = 0
    ops: set[str] = field(default_factory=set)
    patients: set[str] = field(default_factory=set)
    first: str = ""
    last: str = ""


@dataclass
class AfterHoursRow:
    user: str
    exe: str
    operations: int = 0
    patients: set[str] = field(default_factory=set)
    first: str = ""
    last: str = ""


@dataclass
class Summary:
    """What the report shows, computed from the period's records (tests check these)."""

    period: Period
    records: int
    operations: int
    denied: int
    after_hours: int
    patients: set[str]
    users: dict[str, UserRow]
    programs: dict[str, ProgramRow]
    denials: list[DenialRow]
    after_hours_rows: list[AfterHoursRow]
    bulk: list[query.BulkFinding]
    alert_accesses: list[Record]
    policy: list[Record]
    keys: list[Record]
    maintenance: list[Record]
    mounts: list[Record]
    outages: list[Record]
    integrity_failures: list[Record]
    other: Counter[str]
    first_time: str | None  # of all records given, not only the period's: the logs' coverage
    last_time: str | None


def summarize(records: Sequence[Record], period: Period, options: ReportOptions = ReportOptions()) -> Summary:
    inside = period.select(records)
    accesses = [r for r in inside if is_access(r)]
    operations = [r for r in accesses if r.get("event") not in NOT_AN_OPERATION]
    late = [r for r in operations
            if query.after_hours(query.record_time(r), options.work_hours, options.tz)]
    late_ids = {id(r) for r in late}
    times = [str(r["time"]) for r in records if r.get("time")]
    return Summary(
        period=period, records=len(inside), operations=len(operations),
        denied=sum(is_denied(r) for r in operations), after_hours=len(late),
        patients={p for r in operations if (p := query.patient_of(r))},
        users=_by_user(accesses, late_ids), programs=_by_program(accesses, late_ids),
        denials=_denials([r for r in operations if is_denied(r)]),
        after_hours_rows=_after_hours(late),
        bulk=query.bulk_access(operations, patients=options.bulk_patients, window=options.bulk_window),
        alert_accesses=[r for r in operations if r.get("alert")],
        policy=[r for r in inside if _is_policy(r)],
        keys=[r for r in inside if r.get("event") in KEY_EVENTS],
        maintenance=[r for r in inside if r.get("event") in MAINTENANCE_EVENTS],
        mounts=[r for r in inside if r.get("event") in MOUNT_EVENTS],
        outages=[r for r in inside if _is_outage(r)],
        integrity_failures=[r for r in inside if r.get("event") in INTEGRITY_EVENTS],
        other=Counter(str(r.get("event")) for r in inside if not _classified(r)),
        first_time=min(times, default=None), last_time=max(times, default=None),
    )


def _by_user(accesses: list[Record], late: set[int]) -> dict[str, UserRow]:
    rows: dict[str, UserRow] = {}
    for record in accesses:
        row = rows.setdefault(query.user_of(record) or "-", UserRow(query.user_of(record) or "-"))
        if record.get("event") not in NOT_AN_OPERATION:
            row.operations += 1
            row.denied += is_denied(record)
            row.after_hours += id(record) in late
        _add_ids(row.patients, row.studies, record)
        row.programs.add(query.program_name(record) or "-")
    return dict(sorted(rows.items(), key=lambda item: (-item[1].operations, item[0])))


def _by_program(accesses: list[Record], late: set[int]) -> dict[str, ProgramRow]:
    rows: dict[str, ProgramRow] = {}
    for record in accesses:
        exe = query.exe_of(record) or "-"
        row = rows.setdefault(exe, ProgramRow(exe))
        if record.get("event") not in NOT_AN_OPERATION:
            row.operations += 1
            row.denied += is_denied(record)
            row.after_hours += id(record) in late
        _add_ids(row.patients, None, record)
        row.users.add(query.user_of(record) or "-")
        sha = query._sub(record, "program").get("sha256")
        if sha:
            row.binaries.add(str(sha))
        row.bytes_read += _int(record.get("bytes_read"))
        row.bytes_written += _int(record.get("bytes_written"))
    return dict(sorted(rows.items(), key=lambda item: (-item[1].operations, item[0])))


def _add_ids(patients: set[str], studies: set[str] | None, record: Record) -> None:
    if (patient := query.patient_of(record)) is not None:
        patients.add(patient)
    if studies is not None and (study := query.study_of(record)) is not None:
        studies.add(study)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _denials(denied: list[Record]) -> list[DenialRow]:
    rows: dict[tuple[str, str, str, str], DenialRow] = {}
    for record in denied:
        key = (query.user_of(record) or "-", query.exe_of(record) or "-", query.path_of(record) or "-",
               str(record.get("outcome")))
        row = rows.setdefault(key, DenialRow(*key, first=str(record["time"])))
        row.count += 1
        row.ops.add(str(record.get("op") or record.get("event")))
        _add_ids(row.patients, None, record)
        row.last = str(record["time"])
    return sorted(rows.values(), key=lambda row: (-row.count, row.user, row.exe, row.path))


def _after_hours(late: list[Record]) -> list[AfterHoursRow]:
    rows: dict[tuple[str, str], AfterHoursRow] = {}
    for record in late:
        key = (query.user_of(record) or "-", query.exe_of(record) or "-")
        row = rows.setdefault(key, AfterHoursRow(*key, first=str(record["time"])))
        row.operations += 1
        _add_ids(row.patients, None, record)
        row.last = str(record["time"])
    return sorted(rows.values(), key=lambda row: (-row.operations, row.user, row.exe))


# ---------------------------------------------------------------------------- integrity verdict


def integrity_status(report: VerifyReport | None) -> tuple[str, str]:
    """(state, sentence): state is intact, not-anchored, unsealed, broken or not-checked."""
    if report is None:
        return "not-checked", "The logs were not verified: run encfs-pacs audit verify --anchor KEY."
    if report.problem is not None:
        problem = report.problem
        where = f"record seq {problem.seq}" if problem.seq is not None else "a record"
        place = ":".join(str(part) for part in (problem.file, problem.line) if part is not None)
        return "broken", (f"BROKEN at {where}{f' ({place})' if place else ''}: {problem.kind}: "
                          f"{problem.message}. Records from this point on are not trustworthy.")
    if not report.anchored:
        return "not-anchored", ("Internally consistent but NOT ANCHORED: the chain was not checked against "
                                "the volume's anchor key, so a log rewritten from scratch would pass. "
                                "Give --anchor KEY (encfs-pacs audit anchor BACKING).")
    if report.unsealed:
        return "unsealed", (f"Intact up to the last seal; {report.unsealed} record(s) after it are not "
                            "sealed yet (live log) and are not verified.")
    return "intact", (f"INTACT: every record of the logs ({report.records}, seals and other control "
                      f"records included) hashed, chained and signed back to the anchor {report.anchor}.")


# ---------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    """Every value from a log is text, never markup."""
    return html.escape("" if value is None else str(value), quote=True)


Cell = Any
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans JP",sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#1a1a1a}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #2b4a6f;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}table{border-collapse:collapse;width:100%;margin:.5em 0 1em}
th,td{border:1px solid #c8ccd2;padding:.25em .5em;text-align:left;vertical-align:top;word-break:break-word}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.req{background:#f6f8fa;border-left:4px solid #2b4a6f;padding:.4em .8em;margin:.5em 0;font-size:.92em}
.status{padding:.6em 1em;border-radius:4px;font-weight:600;margin:.5em 0}
.intact{background:#e3f4e1;border:1px solid #4a8a3f}.broken{background:#fbe3e1;border:1px solid #b3261e}
.not-anchored,.unsealed,.not-checked{background:#fff4d6;border:1px solid #b78a00}
.none{color:#555;font-style:italic}.note{color:#555;font-size:.92em}code{font-size:.95em}
@media print{body{margin:0;max-width:none}h2{page-break-after:avoid}tr{page-break-inside:avoid}}
"""

_MHLW = "MHLW Guidelines for the Security Management of Medical Information Systems v6.0"
_REQUIREMENTS: dict[str, tuple[str, str]] = {
    "integrity": (
        "access logs are protected against tampering, deletion and unauthorised addition, "
        "and their record of time is reliable.",
        "HIPAA §164.312(b) Audit controls: mechanisms that record and examine activity in systems that "
        "contain or use ePHI (a record that can be trusted)."),
    "coverage": (
        "access to medical information is recorded (access logs are kept); gaps in logging "
        "are themselves to be reviewed.",
        "HIPAA §164.312(b) Audit controls: activity is recorded; outages of recording are findings."),
    "access": (
        "access logs are reviewed periodically (who accessed which patient's information, "
        "when, with which program).",
        "HIPAA §164.308(a)(1)(ii)(D) Information system activity review: regular review of audit "
        "logs and access reports."),
    "denials": (
        "access control by user and role; attempts outside granted rights are reviewed.",
        "HIPAA §164.312(a)(1) Access control; §164.308(a)(1)(ii)(D) review of security-relevant "
        "activity."),
    "unusual": (
        "periodic review of access logs for inappropriate access (unusual hours, unusual volume).",
        "HIPAA §164.308(a)(1)(ii)(D) Information system activity review (security incident tracking)."),
    "policy": (
        "access rights are managed and changes to them are recorded and reviewed.",
        "HIPAA §164.312(a)(1) Access control: only persons or software programs granted access rights."),
    "keys": (
        "management of authentication credentials and encryption keys; maintenance is recorded.",
        "HIPAA §164.312(b) Audit controls; §164.308(a)(1)(ii)(D) activity review."),
    "data": (
        "integrity of stored medical information (detecting alteration or damage).",
        "HIPAA §164.308(a)(1)(ii)(D) security incident tracking (a failed authentication of stored "
        "image data is a possible incident)."),
}


def _req(topic: str) -> str:
    mhlw, hipaa = _REQUIREMENTS[topic]
    return f'<div class="req"><b>MHLW guideline v6.0:</b> {_e(mhlw)}<br><b>HIPAA:</b> {_e(hipaa)}</div>'


@dataclass(frozen=True)
class _Tables:
    """Tables of escaped cells, at most ``limit`` rows each (the rest counted)."""

    limit: int

    def __call__(self, headers: Sequence[str], rows: Iterable[Sequence[Cell]], empty: str,
                 numeric: Iterable[int] = ()) -> str:
        rows, right = list(rows), frozenset(numeric)
        if not rows:
            return f'<p class="none">{_e(empty)}</p>'
        head = "".join(f"<th>{_e(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f'<td class="n">{_e(c)}</td>' if i in right else f"<td>{_e(c)}</td>"
                                        for i, c in enumerate(row)) + "</tr>" for row in rows[:self.limit])
        more = (f'<p class="note">{len(rows) - self.limit} more row(s) not shown: list them with '
                "<code>encfs-pacs audit query</code>.</p>" if len(rows) > self.limit else "")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _names(values: Iterable[str], at_most: int = 8) -> str:
    ordered = sorted(values)
    shown = ", ".join(ordered[:at_most])
    return shown + (f", … (+{len(ordered) - at_most})" if len(ordered) > at_most else "")


def _t(text: Any) -> str:
    """A record time, shortened for tables (UTC, to the second)."""
    return str(text or "")[:19].replace("T", " ")


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _event_rows(records: list[Record], extra: Callable[[Record], list[Cell]]) -> list[list[Cell]]:
    return [[_t(r.get("time")), r.get("event"), r.get("outcome"), *extra(r), r.get("detail") or ""]
            for r in records]


def _policy_extra(record: Record) -> list[Cell]:
    policy = record.get("policy") if isinstance(record.get("policy"), dict) else {}
    changes = record.get("changes") if isinstance(record.get("changes"), dict) else {}
    change_text = "; ".join(f"{kind}: {', '.join(map(str, ids))}" for kind, ids in changes.items()
                            if isinstance(ids, list) and ids)
    rule = record.get("rule") or ""
    if isinstance(rule, dict):  # a policy-edit names the rule it added/removed, and who did it
        rule = str(rule.get("id") or "")
        change_text = f"{record.get('action') or 'edit'} by {query.user_of(record) or '?'}"
    sha256 = policy.get("sha256") or record.get("policy_sha256") or ""
    return [rule, str(sha256)[:16],
            len(policy["rules"]) if isinstance(policy.get("rules"), list) else "", change_text]


def _by_whom(record: Record) -> list[Cell]:
    return [query.user_of(record) or str(record.get("user") or record.get("uid") or "")]


def _tz_name(options: ReportOptions, period: Period) -> str:
    moment = period.start.astimezone(options.tz)
    return str(getattr(options.tz, "key", None) or moment.tzname() or moment.strftime("%z"))


def build_report(records: Sequence[Record], period: Period, *, integrity: VerifyReport | None = None,
                 sources: Sequence[str] = (), read_problem: str | None = None,
                 options: ReportOptions = ReportOptions(), generated: datetime | None = None) -> str:
    """The whole page. ``records``: every payload record read from the logs (all months: the
    period is selected here); ``integrity``: verify()'s verdict on the same files."""
    s = summarize(records, period, options)
    state, sentence = integrity_status(integrity)
    table = _Tables(options.max_rows)
    parts = [_head(s, state, sentence, sources, read_problem, options, generated),
             _section_integrity(s, integrity, state, sentence, read_problem, table),
             _section_access(s, table), _section_denials(s, table), _section_unusual(s, options, table),
             _section_policy(s, table), _section_keys(s, table), _section_data(s, table)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'\">"
            f"<title>Audit review {_e(period.label)} (UTC) – encfs-pacs</title><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


_SECTIONS = (("1. Integrity and completeness of the audit trail", "integrity"),
             ("2. Accesses per user and per program", "access"), ("3. Denied accesses", "denials"),
             ("4. After-hours and bulk access", "unusual"), ("5. Access policy loads and changes", "policy"),
             ("6. Key, passphrase and maintenance events", "keys"),
             ("7. Integrity failures of stored images", "data"))


def _head(s: Summary, state: str, sentence: str, sources: Sequence[str], read_problem: str | None,
          options: ReportOptions, generated: datetime | None) -> str:
    p = s.period
    numbers = [
        ["Integrity of the logs", state], ["Records in the period", s.records],
        ["File operations", s.operations], ["Distinct patients touched", len(s.patients)],
        ["Users", len(s.users)], ["Programs", len(s.programs)], ["Denied operations", s.denied],
        ["After-hours operations", s.after_hours], ["Bulk-access findings", len(s.bulk)],
        ["Policy loads, reloads and changes", len(s.policy)],
        ["Key, passphrase and maintenance events", len(s.keys) + len(s.maintenance)],
        ["Mounts and unmounts", len(s.mounts)], ["Audit outages", len(s.outages)],
        ["Integrity failures of stored images", len(s.integrity_failures)]]
    table = _Tables(len(numbers))
    warning = (f'<div class="status broken">Reading stopped early, results are incomplete: '
               f"{_e(read_problem)}</div>" if read_problem else "")
    return (f"<h1>Audit log review – {_e(p.label)}</h1>"
            f"<p>Period (UTC): <b>{_e(_utc(p.start))}</b> to <b>{_e(_utc(p.end))}</b> (end excluded). "
            "All times in this report are UTC.</p>"
            f"<p class=\"note\">Generated {_e(_utc(generated) if generated else '-')} by encfs-pacs from "
            f"{len(sources)} log file(s): {_e(', '.join(sources) or '-')}. After hours = outside "
            f"{options.work_hours[0]}:00–{options.work_hours[1]}:00 or on Saturday/Sunday, time zone "
            f"{_e(_tz_name(options, p))}.</p>"
            f'<div class="status {_e(state)}">{_e(sentence)}</div>{warning}'
            "<h2 id=\"summary\">Summary</h2>" + table(["Item", "Value"], numbers, "", numeric=[1])
            + "<h3>What each section answers</h3>"
            + f'<p class="note">MHLW guideline v6.0: the {_e(_MHLW)} (Japan, Ministry of Health, Labour '
              "and Welfare). HIPAA: the Security Rule, 45 CFR Part 164 Subpart C. The requirements are "
              "paraphrased; the guideline's own wording governs.</p>"
            + table(["Section", "MHLW guideline v6.0", "HIPAA"],
                    [[title, *_REQUIREMENTS[topic]] for title, topic in _SECTIONS], ""))


def _section_integrity(s: Summary, report: VerifyReport | None, state: str, sentence: str,
                       read_problem: str | None, table: _Tables) -> str:
    chains = [[c.chain, f"{c.first_seq}..{c.last_seq}", len(c.files), _t(c.first_time), _t(c.last_time),
               f"{c.epochs[0]}..{c.epochs[1]}", c.ended] for c in (report.chains if report else [])]
    coverage = ""
    if s.first_time and s.last_time:
        gaps = []
        if s.first_time > utc_text(s.period.start):
            gaps.append("the logs begin after the period starts: earlier records of this month may be in "
                        "files not given")
        if s.last_time < utc_text(s.period.end):
            gaps.append("the logs end before the period ends")
        coverage = (f"<p>The logs given hold records from {_e(_t(s.first_time))} to {_e(_t(s.last_time))}"
                    f"{'; ' + _e('; '.join(gaps)) if gaps else ''}.</p>")
    mounts = _event_rows(s.mounts, lambda r: [query.path_of(r), query._sub(r, "object").get("backing")])
    outages = _event_rows(s.outages, lambda r: [r.get("lost")])
    return ("<h2 id=\"integrity\">1. Integrity and completeness of the audit trail</h2>" + _req("integrity")
            + f'<h3>Verification of the log files</h3><div class="status {_e(state)}">{_e(sentence)}</div>'
            + (f'<p class="status broken">{_e(read_problem)}</p>' if read_problem else "")
            + table(["Chain", "Seq", "Files", "First record", "Last record", "Key epochs", "Ends with"],
                    chains, "No chain summary (the logs could not be verified).", numeric=[2])
            + coverage + _req("coverage")
            + "<h3 id=\"mounts\">Mounts and unmounts (recording started / stopped)</h3>"
            + table(["Time", "Event", "Outcome", "Mount point", "Backing", "Detail"], mounts,
                    "No mount or unmount in this period.")
            + "<h3 id=\"outages\">Audit outages and losses</h3>"
            + table(["Time", "Event", "Outcome", "Records lost", "Detail"], outages,
                    "No audit outage recorded in this period."))


def _section_access(s: Summary, table: _Tables) -> str:
    users = [[u.user, u.operations, len(u.patients), len(u.studies), u.denied, u.after_hours,
              _names(u.programs)] for u in s.users.values()]
    programs = [[p.exe, p.operations, len(p.patients), _names(p.users), p.denied, p.after_hours,
                 len(p.binaries), p.bytes_read, p.bytes_written] for p in s.programs.values()]
    return ("<h2 id=\"access\">2. Accesses per user and per program</h2>" + _req("access")
            + '<p class="note">File operations: open, create, delete, rename, truncate, setattr, list and '
              "the like, allowed or denied (a release, the close of an opened file, is not counted "
              "again; its bytes are). Patients: distinct DICOM PatientIDs of the files touched.</p>"
            + "<h3 id=\"per-user\">Per user</h3>"
            + table(["User", "Operations", "Patients", "Studies", "Denied", "After hours", "Programs"],
                    users, "No file access in this period.", numeric=[1, 2, 3, 4, 5])
            + "<h3 id=\"per-program\">Per program</h3>"
            + table(["Program", "Operations", "Patients", "Users", "Denied", "After hours",
                     "Binaries (SHA-256)", "Bytes read", "Bytes written"], programs,
                    "No file access in this period.", numeric=[1, 2, 4, 5, 6, 7, 8])
            + '<p class="note">More than one binary for a program means its executable changed during '
              "the month (an update, or a replaced binary): check it.</p>")


def _section_denials(s: Summary, table: _Tables) -> str:
    rows = [[d.user, d.exe, d.path, _names(d.patients), d.count, _names(d.ops), d.outcome, _t(d.first),
             _t(d.last)] for d in s.denials]
    return ("<h2 id=\"denials\">3. Denied accesses</h2>" + _req("denials")
            + f"<p>{s.denied} denied operation(s) in {len(s.denials)} group(s) (user, program, file). "
              "<i>learn-denied</i>: learn mode, would have been denied.</p>"
            + table(["User", "Program", "File", "Patient", "Count", "Operations", "Outcome", "First", "Last"],
                    rows, "No denied access in this period.", numeric=[4]))


def _section_unusual(s: Summary, options: ReportOptions, table: _Tables) -> str:
    late = [[a.user, a.exe, a.operations, len(a.patients), _t(a.first), _t(a.last)]
            for a in s.after_hours_rows]
    bulk = [[f.user or "-", f.program or "-", len(f.patients), f.records, _t(f.first.isoformat()),
             _t(f.last.isoformat())] for f in s.bulk]
    alerts = [[_t(r.get("time")), query.user_of(r) or "-", query.exe_of(r) or "-", query.path_of(r),
               query.patient_of(r), r.get("rule"), r.get("detail")] for r in s.alert_accesses]
    minutes = int(options.bulk_window.total_seconds() // 60)
    return ("<h2 id=\"unusual\">4. After-hours and bulk access</h2>" + _req("unusual")
            + "<h3 id=\"after-hours\">After-hours access</h3>"
            + f"<p>{s.after_hours} operation(s) outside working hours.</p>"
            + table(["User", "Program", "Operations", "Patients", "First", "Last"], late,
                    "No after-hours access in this period.", numeric=[2, 3])
            + f"<h3 id=\"bulk\">Bulk-access findings</h3><p>One user with one program touching more than "
              f"{options.bulk_patients} distinct patients within {minutes} minutes.</p>"
            + table(["User", "Program", "Patients", "Records", "First", "Last"], bulk,
                    "No bulk access in this period.", numeric=[2, 3])
            + "<h3 id=\"alerts\">Accesses flagged as alerts (break-glass or alerting rules)</h3>"
            + table(["Time", "User", "Program", "File", "Patient", "Rule", "Detail"], alerts,
                    "No access flagged as an alert in this period."))


def _section_policy(s: Summary, table: _Tables) -> str:
    return ("<h2 id=\"policy\">5. Access policy loads and changes</h2>" + _req("policy")
            + table(["Time", "Event", "Outcome", "Rule", "Policy SHA-256", "Rules", "Changes", "Detail"],
                    _event_rows(s.policy, _policy_extra), "No policy load or change in this period."))


def _section_keys(s: Summary, table: _Tables) -> str:
    return ("<h2 id=\"keys\">6. Key, passphrase and maintenance events</h2>" + _req("keys")
            + "<h3>Keys and passphrases</h3>"
            + table(["Time", "Event", "Outcome", "By", "Detail"], _event_rows(s.keys, _by_whom),
                    "No key or passphrase event in this period.")
            + "<h3>Maintenance (import, export, fsck)</h3>"
            + table(["Time", "Event", "Outcome", "By", "Detail"], _event_rows(s.maintenance, _by_whom),
                    "No maintenance event in this period.")
            + "<h3>Other events</h3>"
            + table(["Event", "Records"], [list(item) for item in s.other.most_common()],
                    "None: every record of the period is in a section above.", numeric=[1]))


def _section_data(s: Summary, table: _Tables) -> str:
    rows = [[_t(r.get("time")), query.path_of(r), r.get("errno"), r.get("detail")]
            for r in s.integrity_failures]
    return ("<h2 id=\"data-integrity\">7. Integrity failures of stored images</h2>" + _req("data")
            + table(["Time", "File", "errno", "Detail"], rows, "No integrity failure in this period."))
