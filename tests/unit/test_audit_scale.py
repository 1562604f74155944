"""100 000 records: written through the real writer, then verified; prints the measured rates.

The figures are measurements on this machine (2 shared cores), printed so the report and
docs/audit-format.md can quote them; the assertions only bound them loosely.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from encfs_pacs.audit import iter_records, open_audit_log, read_anchor, verify

from .auditkit import FIXTURE_MASTER_KEY, make_backing, sample_payloads

RECORDS = 100_000


def test_hundred_thousand_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backing = make_backing(tmp_path)
    path = tmp_path / "audit.log"
    payloads = [p for p in sample_payloads() if p["event"] in ("open", "release", "deny", "create")]
    writer = open_audit_log(path, backing, FIXTURE_MASTER_KEY, rotate_bytes=None)
    latencies = []
    started = time.perf_counter()
    for n in range(RECORDS):
        before = time.perf_counter()
        writer.append(payloads[n % len(payloads)])
        latencies.append(time.perf_counter() - before)
    appended = time.perf_counter()
    writer.close()
    written = time.perf_counter()
    anchor = read_anchor(backing)
    report = verify([path], anchor)
    verified = time.perf_counter()
    assert report.intact, report.lines()
    payload_records = sum(1 for _ in iter_records([path]))
    assert payload_records == RECORDS
    latencies.sort()
    figures = (f"audit: {RECORDS} records, {path.stat().st_size / RECORDS:.0f} bytes each; "
               f"append {RECORDS / (appended - started):,.0f}/s "
               f"(p50 {latencies[RECORDS // 2] * 1e6:.0f} us, "
               f"p99 {latencies[RECORDS * 99 // 100] * 1e6:.0f} us, "
               f"max {latencies[-1] * 1e3:.1f} ms); written+fsynced {RECORDS / (written - started):,.0f}/s; "
               f"verify {report.records / (verified - written):,.0f} records/s")
    with capsys.disabled():
        print("\n" + figures)
    assert verified - started < 60, figures
