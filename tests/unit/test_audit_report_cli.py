"""`encfs-pacs audit report --period YYYY-MM --html FILE` over logs made by the real writer, and
the page rendered by headless Chromium."""

from __future__ import annotations

import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from encfs_pacs.audit import read_anchor

from .auditkit import lines_of, write_lines
from .test_audit_html_report import EVIL_PATH, cells, parsed, section
from .test_audit_query import access, cli, write_log

NOV = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC


def evil(**kwargs: Any) -> dict[str, Any]:
    record = access("yamada", "/usr/bin/cat", "<PAT&1>", **kwargs)
    record["object"]["path"] = EVIL_PATH
    return record


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return write_log(tmp_path, [
        (datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), access("orthanc", "/usr/sbin/Orthanc", "OCTOBER")),
        (NOV, access("orthanc", "/usr/sbin/Orthanc", "PAT-1", event="create", op="create")),
        (NOV + timedelta(minutes=1), access("orthanc", "/usr/sbin/Orthanc", "PAT-1")),
        (NOV + timedelta(minutes=2), evil(outcome="denied")),
        (NOV + timedelta(minutes=3), evil(outcome="denied")),
        (NOV + timedelta(hours=12), access("yamada", "/usr/bin/dcmdump", "PAT-2")),  # 22:00: after hours
        (datetime(2026, 12, 1, tzinfo=UTC), access("orthanc", "/usr/sbin/Orthanc", "DECEMBER")),
    ])


def anchor_of(log: Path) -> str:
    anchor = read_anchor(log.parent / "backing-a")
    assert anchor is not None
    return anchor.hex()


def report(log: Path, out: Path, *extra: Any) -> subprocess.CompletedProcess[str]:
    return cli("report", log, "--period", "2026-11", "--html", out, *extra)


def test_report_of_an_intact_anchored_log(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "review.html"
    result = report(log, out, "--anchor", anchor_of(log))
    assert result.returncode == 0, result.stderr
    assert "5 records in 2026-11" in result.stderr and "logs intact" in result.stderr
    page = out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it names patients
    assert "INTACT" in page and "OCTOBER" not in page and "DECEMBER" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.dcm" in page and "<script" not in page
    assert "&lt;PAT&amp;1&gt;" in page
    assert not list(tmp_path.glob(".review.html*"))  # no temporary file left


def test_without_anchor_the_report_says_not_anchored(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "review.html"
    result = report(log, out)
    assert result.returncode == 0, result.stderr
    assert "NOT ANCHORED" in result.stderr and "NOT ANCHORED" in out.read_text()


def test_a_tampered_log_is_reported_broken_at_its_record(log: Path, tmp_path: Path) -> None:
    lines = lines_of(log)
    index = next(i for i, line in enumerate(lines) if b"PAT-2" in line)
    lines[index] = lines[index].replace(b"PAT-2", b"PAT-9")
    write_lines(log, lines)
    out = tmp_path / "review.html"
    result = report(log, out, "--anchor", anchor_of(log))
    assert result.returncode == 24, result.stderr
    page = out.read_text()
    assert "BROKEN at record seq" in page and f"a.log:{index + 1}" in page and "edited" in page
    assert "results are incomplete" in page


def test_existing_file_is_refused_unless_force(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "review.html"
    out.write_text("keep me")
    result = report(log, out)
    assert result.returncode == 2 and "already exists: give --force" in result.stderr
    assert out.read_text() == "keep me"
    forced = report(log, out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert out.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(("args", "message"), [
    (("--period", "2026-13", "--html", "x.html"), "--period '2026-13': expected YYYY-MM"),
    (("--period", "11/2026", "--html", "x.html"), "expected YYYY-MM"),
    (("--period", "2026-11"), "--period YYYY-MM and --html FILE go together"),
    (("--period", "2026-11", "--html", "x.html", "--timezone", "Mars/Olympus"), "not a time zone name"),
    (("--period", "2026-11", "--html", "x.html", "--work-hours", "18-8"), "--work-hours"),
])
def test_usage_errors(log: Path, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = cli("report", log, *(str(tmp_path / a) if a == "x.html" else a for a in args))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "x.html").exists()


def test_unreadable_log_is_a_clear_error(log: Path, tmp_path: Path) -> None:
    missing = tmp_path / "rotated.log"
    result = cli("report", log, missing, "--period", "2026-11", "--html", tmp_path / "r.html")
    assert result.returncode == 2
    assert f"cannot read audit log {missing}: No such file or directory" in result.stderr
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------------------- in a browser


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium is not installed (apt-get install chromium; `make setup` does)")


def headless(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-extensions", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def test_chromium_renders_the_report(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "review.html"
    assert report(log, out, "--anchor", anchor_of(log)).returncode == 0
    dom = headless(tmp_path, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = parsed(dom.stdout)
    assert "script" not in page.tags and "img" not in page.tags  # the names stayed text
    text = " ".join(page.text)
    for heading in ("Audit log review – 2026-11", "1. Integrity and completeness of the audit trail",
                    "2. Accesses per user and per program", "3. Denied accesses",
                    "4. After-hours and bulk access", "5. Access policy loads and changes",
                    "6. Key, passphrase and maintenance events", "7. Integrity failures of stored images"):
        assert heading in page.text, heading
    assert EVIL_PATH in page.text and "INTACT" in text
    summary = dict(row for row in cells(section(dom.stdout, "summary")) if len(row) == 2)
    assert summary["Records in the period"] == "5" and summary["Denied operations"] == "2"
    assert summary["After-hours operations"] == "1" and summary["Distinct patients touched"] == "3"

    pdf, png = tmp_path / "review.pdf", tmp_path / "review.png"
    printed = headless(tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", out.as_uri())
    assert printed.returncode == 0 and pdf.read_bytes().startswith(b"%PDF-"), printed.stderr[-2000:]
    shot = headless(tmp_path, f"--screenshot={png}", "--window-size=1280,2000", out.as_uri())
    assert shot.returncode == 0 and png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), shot.stderr[-2000:]
