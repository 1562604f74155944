"""The monthly review report builder (encfs_pacs/audit/html_report.py) on synthetic records."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest

from encfs_pacs.audit.html_report import Period, ReportOptions, build_report, integrity_status, summarize
from encfs_pacs.audit.verify import ChainSummary, Problem, VerifyReport

from .test_audit_query import access

UTC_ONLY = ReportOptions(tz=UTC)  # after-hours judged in UTC: independent of this machine's TZ
EVIL_PATH = "/studies/<script>alert(1)</script>.dcm"
EVIL_PATIENT = '"><img src=x onerror=alert(2)>'


def at(moment: datetime | str, payload: dict[str, Any]) -> dict[str, Any]:
    text = moment if isinstance(moment, str) else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {**payload, "time": text}


def day(d: int, hour: int = 10, minute: int = 0) -> datetime:
    return datetime(2026, 11, d, hour, minute, tzinfo=UTC)  # 2026-11-02 is a Monday


def evil_access() -> dict[str, Any]:
    record = access("mallory & co", "/tmp/<b>x</b>", EVIL_PATIENT, outcome="denied")
    record["object"]["path"] = EVIL_PATH
    return record


def month_records() -> list[dict[str, Any]]:
    """A month with one of everything; weekday working-hours accesses unless stated."""
    records = [
        at("2026-10-31T23:59:59.999999Z", access("yamada", "/usr/bin/dcmdump", "EDGE-BEFORE")),
        at("2026-11-01T00:00:00.000000Z", {"event": "mount", "outcome": "allowed",
                                           "object": {"path": "/mnt/pacs", "backing": "/srv/enc"},
                                           "program": {"pid": 1, "exe": "/usr/bin/python3"},
                                           "detail": "policy /etc/encfs-pacs/policy.toml"}),
        at(day(2, 9), {"event": "policy-load", "outcome": "allowed", "detail": "/etc/encfs-pacs/policy.toml",
                       "policy": {"source": "/etc/encfs-pacs/policy.toml", "sha256": "ab" * 32,
                                  "rules": ["orthanc", "viewer"]}}),
        at(day(2, 10), access("orthanc", "/usr/sbin/Orthanc", "PAT-1", event="create", op="create")),
        at(day(2, 10, 1), access("orthanc", "/usr/sbin/Orthanc", "PAT-1")),
        at(day(2, 10, 2), {**access("orthanc", "/usr/sbin/Orthanc", "PAT-1", event="release"),
                           "bytes_read": 1000, "bytes_written": 0}),
        at(day(2, 11), access("orthanc", "/usr/sbin/Orthanc", "PAT-2", study="9.9")),
        at(day(3, 11), access("yamada", "/usr/bin/cat", "PAT-1", outcome="denied")),
        at(day(3, 11, 5), access("yamada", "/usr/bin/cat", "PAT-1", outcome="denied")),
        at(day(3, 23), access("yamada", "/usr/bin/dcmdump", "PAT-3")),  # after hours
        at(day(7, 12), access("yamada", "/usr/bin/dcmdump", "PAT-4")),  # Saturday
        at(day(4, 10), evil_access()),
        at(day(5, 9), {"event": "policy-reload", "outcome": "allowed", "detail": "file changed",
                       "policy": {"source": "p", "sha256": "cd" * 32, "rules": ["orthanc"]},
                       "changes": {"added": [], "removed": ["viewer"], "changed": []}}),
        at(day(5, 9, 1), {"event": "security-alert", "outcome": "allowed", "rule": "break-glass-1",
                          "alert": True, "detail": "temporary or alerting rule break-glass-1 in force"}),
        at(day(6, 9), {"event": "security-alert", "outcome": "error", "alert": True, "errno": None,
                       "detail": "the audit log could not be written", "lost": 3}),
        at(day(6, 10), {"event": "integrity-failure", "outcome": "error", "alert": True, "errno": 5,
                        "object": {"path": "/studies/broken.dcm"},
                        "detail": "chunk 3 failed authentication"}),
        at(day(9, 10), {"event": "volume-key-changed", "outcome": "success", "uid": 0, "user": "root"}),
        at(day(9, 11), {"event": "volume-checked", "outcome": "clean", "uid": 0, "user": "root"}),
        at(day(9, 12), {"event": "something-new", "outcome": "allowed"}),
        # Spool-delivered maintenance events carry "who" like accesses do, but are not accesses.
        at(day(9, 13), {"event": "policy-edit", "outcome": "success", "who": {"uid": 0, "user": "root"},
                        "action": "add", "rule": {"id": "viewer-2"}, "policy_sha256": "ef" * 32,
                        "spool": {"id": "1" * 32, "file": "x.json", "authenticated": False}}),
        at(day(9, 14), {"event": "recovery-key-used", "outcome": "success", "alert": True,
                        "who": {"uid": 0, "user": "root"}, "purpose": "mount"}),
        at("2026-11-30T23:59:59.999999Z", {"event": "unmount", "outcome": "allowed",
                                           "object": {"path": "/mnt/pacs"}}),
        at("2026-12-01T00:00:00.000000Z", access("yamada", "/usr/bin/dcmdump", "EDGE-AFTER")),
    ]
    # A bulk burst: 21 patients in 5 minutes by one user and program (threshold: more than 20).
    records += [at(day(10, 10) + timedelta(seconds=15 * i),
                   access("curious", "/usr/bin/dcmdump", f"BULK-{i}")) for i in range(21)]
    return sorted(records, key=lambda r: r["time"])


NOVEMBER = Period(2026, 11)


class Text(HTMLParser):
    """What a browser shows: the text nodes, and every tag name seen."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)


def parsed(page: str) -> Text:
    parser = Text()
    parser.feed(page)
    return parser


def test_period_parse_and_bounds() -> None:
    assert Period.parse("2026-11") == NOVEMBER
    assert NOVEMBER.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert NOVEMBER.end == datetime(2026, 12, 1, tzinfo=UTC)
    assert Period.parse("2026-12").end == datetime(2027, 1, 1, tzinfo=UTC)
    for bad in ("2026-13", "2026-1", "202611", "2026-11-01", "November", "", "2026-00"):
        with pytest.raises(ValueError, match="expected YYYY-MM"):
            Period.parse(bad)


def test_period_filter_is_exact() -> None:
    records = [at(t, {"event": "x"}) for t in ("2026-10-31T23:59:59.000000Z", "2026-10-31T23:59:59.999999Z",
                                               "2026-11-01T00:00:00.000000Z", "2026-11-30T23:59:59.999999Z",
                                               "2026-12-01T00:00:00.000000Z")]
    assert [r["time"][:10] for r in NOVEMBER.select(records)] == ["2026-11-01", "2026-11-30"]


def test_summary_counts() -> None:
    s = summarize(month_records(), NOVEMBER, UTC_ONLY)
    assert s.records == len(month_records()) - 2  # the two edge records are outside
    # operations: create, open, open(PAT-2), 2 denied cat, 2 dcmdump, the evil denial, 21 bulk (no release)
    assert s.operations == 8 + 21
    assert s.denied == 3
    assert s.patients == {"PAT-1", "PAT-2", "PAT-3", "PAT-4", EVIL_PATIENT} | {f"BULK-{i}" for i in range(21)}
    orthanc = s.users["orthanc"]
    assert (orthanc.operations, orthanc.patients, orthanc.studies, orthanc.denied) == (3, {"PAT-1", "PAT-2"},
                                                                                       {"1.2.3", "9.9"}, 0)
    yamada = s.users["yamada"]
    assert (yamada.operations, yamada.denied, yamada.after_hours) == (4, 2, 2)
    assert yamada.programs == {"cat", "dcmdump"}
    assert s.programs["/usr/sbin/Orthanc"].bytes_read == 1000
    assert [(d.user, d.exe, d.count) for d in s.denials] == [
        ("yamada", "/usr/bin/cat", 2), ("mallory & co", "/tmp/<b>x</b>", 1)]
    assert s.after_hours == 2 and [(a.user, a.operations) for a in s.after_hours_rows] == [("yamada", 2)]
    assert [(f.user, len(f.patients)) for f in s.bulk] == [("curious", 21)]
    assert [r["event"] for r in s.policy] == ["policy-load", "policy-reload", "security-alert", "policy-edit"]
    assert [r["event"] for r in s.keys] == ["volume-key-changed", "recovery-key-used"]
    assert [r["event"] for r in s.maintenance] == ["volume-checked"]
    assert [r["event"] for r in s.mounts] == ["mount", "unmount"]
    assert [r.get("lost") for r in s.outages] == [3]
    assert [r["object"]["path"] for r in s.integrity_failures] == ["/studies/broken.dcm"]
    assert dict(s.other) == {"something-new": 1}


def test_after_hours_follows_the_time_zone() -> None:
    """Tokyo is UTC+9: 23:00 UTC Tuesday is 08:00 Wednesday (working hours), 10:00-11:00 UTC is
    19:00-20:00 (after hours), Saturday stays Saturday."""
    from zoneinfo import ZoneInfo

    utc = summarize(month_records(), NOVEMBER, UTC_ONLY)
    tokyo = summarize(month_records(), NOVEMBER, ReportOptions(tz=ZoneInfo("Asia/Tokyo")))
    assert (utc.users["yamada"].after_hours, tokyo.users["yamada"].after_hours) == (2, 3)
    assert (utc.users["orthanc"].after_hours, tokyo.users["orthanc"].after_hours) == (0, 3)
    page = build_report(month_records(), NOVEMBER, options=ReportOptions(tz=ZoneInfo("Asia/Tokyo")))
    assert "time zone Asia/Tokyo" in page


def section(page: str, anchor: str) -> str:
    """The HTML from the heading with this id to the next h2."""
    start = page.index(f'<h2 id="{anchor}">')
    end = page.find("<h2 ", start + 1)
    return page[start:end if end > 0 else None]


def cells(fragment: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", fragment)
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in rows]


def test_sections_and_numbers_in_the_page() -> None:
    page = build_report(month_records(), NOVEMBER, options=UTC_ONLY, sources=["audit.log"],
                        generated=datetime(2026, 12, 1, 9, tzinfo=UTC))
    assert "2026-11-01T00:00:00Z" in page and "2026-12-01T00:00:00Z" in page and "(UTC)" in page
    for anchor in ("summary", "integrity", "access", "denials", "unusual", "policy", "keys",
                   "data-integrity"):
        assert f'<h2 id="{anchor}">' in page
    for requirement in ("§164.312(b)", "§164.308(a)(1)(ii)(D)", "MHLW guideline v6.0"):
        assert requirement in page
    summary = dict(row for row in cells(section(page, "summary")) if len(row) == 2)
    assert summary["File operations"] == "29" and summary["Denied operations"] == "3"
    assert summary["Bulk-access findings"] == "1" and summary["Audit outages"] == "1"
    assert summary["Records in the period"] == str(len(month_records()) - 2)
    users = {row[0]: row for row in cells(section(page, "access"))}
    assert users["yamada"][1:6] == ["4", "3", "1", "2", "2"]  # operations, patients, studies, denied, late
    assert "EDGE-BEFORE" not in page and "EDGE-AFTER" not in page
    assert "break-glass-1" in section(page, "policy") and "removed: viewer" in section(page, "policy")
    assert "volume-key-changed" in section(page, "keys") and "something-new" in section(page, "keys")
    assert "chunk 3 failed authentication" in section(page, "data-integrity")


def test_every_value_is_escaped() -> None:
    page = build_report(month_records(), NOVEMBER, options=UTC_ONLY, sources=["<i>log</i>"])
    assert "<script" not in page.lower() and "<img" not in page.lower() and "<b>x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.dcm" in page
    shown = "".join(parsed(page).text)
    assert EVIL_PATH in shown  # the browser shows the name as text
    assert "/tmp/<b>x</b>" in shown and "mallory & co" in shown and "<i>log</i>" in shown
    assert set(parsed(page).tags) <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3",
                                      "p", "b", "i", "div", "table", "thead", "tbody", "tr", "th", "td",
                                      "code", "br"}


def test_self_contained() -> None:
    page = build_report(month_records(), NOVEMBER, options=UTC_ONLY)
    tree = parsed(page)
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(tree.tags)
    assert not [name for name, _ in tree.attrs if name in ("src", "href", "action") or name.startswith("on")]
    style = page[page.index("<style>"):page.index("</style>")]
    assert "@import" not in style and "url(" not in style
    assert "default-src 'none'" in page  # CSP: nothing could be fetched even if injected


def test_empty_month_says_so_and_warns_about_coverage() -> None:
    before = build_report(month_records(), Period(2025, 1), options=UTC_ONLY)
    assert "No file access in this period." in before and "No denied access in this period." in before
    assert "the logs begin after the period starts" in before
    assert "the logs end before the period ends" not in before
    after = build_report(month_records(), Period(2027, 1), options=UTC_ONLY)
    assert "the logs end before the period ends" in after
    assert "the logs begin after the period starts" not in after
    inside = build_report(month_records(), NOVEMBER, options=UTC_ONLY)  # logs span Oct 31 .. Dec 1
    assert "the logs begin after" not in inside and "the logs end before" not in inside


def chain() -> ChainSummary:
    return ChainSummary(chain="c" * 32, anchor="a" * 64, files=["audit.log"], first_seq=0, last_seq=99,
                        first_time="2026-11-01T00:00:00.000000Z", last_time="2026-11-30T00:00:00.000000Z",
                        epochs=(0, 3), ended="stop", last_seal_seq=99, last_seal_time=None, unsealed=0,
                        continues=None)


@pytest.mark.parametrize(("report", "state", "words"), [
    (VerifyReport(True, True, False, "a" * 64, chains=[chain()], records=100), "intact", "INTACT"),
    (VerifyReport(True, False, False, "a" * 64, chains=[chain()], records=100), "not-anchored",
     "NOT ANCHORED"),
    (VerifyReport(False, True, False, "a" * 64,
                  problem=Problem("edited", "its content does not match its hash", "audit.log", 42, 41)),
     "broken", "BROKEN at record seq 41 (audit.log:42): edited"),
    (None, "not-checked", "not verified"),
])
def test_integrity_status(report: VerifyReport | None, state: str, words: str) -> None:
    assert integrity_status(report)[0] == state
    assert words in integrity_status(report)[1]
    page = build_report(month_records(), NOVEMBER, integrity=report, options=UTC_ONLY)
    assert f'<div class="status {state}">' in page and words in page
