"""Auditor commands: show a volume's audit anchor, verify audit logs. No secret is needed."""

from __future__ import annotations

import base64
import json
import os
import socket
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from .. import config as config_schema
from .. import durable, store
from ..audit import export, html_report, parse_public_key, query, read_anchor, verify
from ..errors import AuditTampered, AuditUnavailable, UsageError


@click.group("audit")
def audit_group() -> None:
    """Check the audit trail (tamper evidence) without any key that decrypts images."""


@audit_group.command("anchor")
@click.argument("backing", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (hex and base64).")
@click.option("--host", "host", default=None, metavar="NAME",
              help="The anchor of the server that mounts BACKING with --audit-host NAME (shared storage).")
def anchor_command(backing: Path, as_json: bool, host: str | None) -> None:
    """Print the volume's audit anchor: the public key every log of BACKING is verified against.

    Keep a copy away from the server (in the audit file, printed, in a password manager):
    `audit verify --anchor` with that copy proves the logs were not rewritten on the server.

    \b
    Example:
      encfs-pacs audit anchor /srv/pacs-enc > /secure/place/pacs-enc.anchor
      encfs-pacs audit anchor /mnt/nas/pacs-enc --host acq-server
    """
    store.read_config(backing)  # a clear error if BACKING is not a volume
    if host is not None and not config_schema.HOST_NAME.match(host):
        raise UsageError(f"--host {host!r} is not a host name (letters, digits, _ . -)")
    anchor = read_anchor(backing, host)
    if anchor is None:
        if host is not None:
            raise AuditUnavailable(f"{backing} has no audit anchor for host {host} yet: it is created at "
                                   f"that host's first mount with --audit-host {host}")
        raise AuditUnavailable(f"{backing} has no audit anchor yet: it is created by 'encfs-pacs init', or "
                               "for older volumes at the first mount with an audit log")
    if as_json:
        named = {"host": host} if host else {}
        click.echo(json.dumps({"backing": str(backing), **named, "anchor": anchor.hex(),
                               "anchor_base64": base64.b64encode(anchor).decode("ascii")}))
    else:
        click.echo(anchor.hex())


def _anchor_from(value: str) -> bytes:
    """--anchor takes the key itself, or a file holding it (as `audit anchor` writes it)."""
    text = value
    path = Path(value)
    if len(value) not in (44, 64) and path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return parse_public_key(text)
    except ValueError as exc:
        raise UsageError(f"--anchor {value!r}: {exc}") from None


@audit_group.command("verify")
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--anchor", "anchor_text", metavar="KEY",
              help="The volume's anchor (hex or base64, or a file holding it): without it the logs can "
                   "only be checked for internal consistency.")
@click.option("--live", is_flag=True, help="The log belongs to a running mount: accept (and count) records "
                                           "not yet sealed at its end.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_context
def verify_command(ctx: click.Context, logs: tuple[Path, ...], anchor_text: str | None, live: bool,
                   as_json: bool) -> None:
    """Check audit LOGs: every record hashed, chained, sealed, from the anchor to a stop seal.

    Give every file of the trail (rotated files too, in any order). Exit 0 only if intact;
    24 names the first bad record (edited, deleted, reordered, truncated, unsealed, forged,
    foreign or missing file). Without --anchor a consistent log is reported as NOT anchored
    (exit 0, with a warning): anyone can write a consistent log from scratch.

    \b
    Examples:
      encfs-pacs audit verify --anchor "$(cat /secure/place/pacs-enc.anchor)" /var/log/encfs-pacs/audit.log*
      encfs-pacs audit verify --live --anchor 3b6a27bc... /var/log/encfs-pacs/audit.log
    """
    anchor = _anchor_from(anchor_text) if anchor_text else None
    report = verify(list(logs), anchor, live=live)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        if not report.intact:
            ctx.exit(AuditTampered.exit_code)
        return
    lines = report.lines()
    if report.problem is not None:
        for line in lines[1:]:
            click.echo(line)
        raise AuditTampered(f"audit log not intact: {report.problem}")
    for line in lines:
        click.echo(line)


@audit_group.command("collect")
@click.argument("syslog_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
def collect_command(syslog_file: Path, outdir: Path) -> None:
    """Rebuild each host's audit log files from a syslog collector's file (RFC 5424 lines).

    Every forwarded message holds one audit line byte for byte and the sending host's name:
    the lines are grouped per host and chain, ordered, de-duplicated and split at rotations
    into OUTDIR/HOST/CHAIN-FIRSTSEQ.audit.jsonl, which `audit verify` checks as they are (a
    message lost or edited on the way shows as a deleted or edited record). `audit query` and
    `audit report` given several OUTDIR/HOST folders merge them by time and show each record's
    host (the folder name).

    \b
    Example:
      encfs-pacs audit collect /var/log/remote/encfs-pacs.log /srv/audit/central
      encfs-pacs audit verify --anchor "$(cat acq.anchor)" /srv/audit/central/pacs-acq/*
      encfs-pacs audit query /srv/audit/central/*/* --patient PAT-0001
    """
    from ..audit.collect import collect

    report = collect(syslog_file, outdir)
    for line in report.lines():
        click.echo(line)


# ---------------------------------------------------------------------------- query, report, export

_READ_FIRST = ("Reads records (each line's hash is checked) but does not check signatures: run "
               "`encfs-pacs audit verify` on the same files first.")
_LOGS = click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))


def _load(logs: tuple[Path, ...]) -> query.Loaded:
    loaded = query.load(logs)
    if loaded.problem:
        click.echo(f"WARNING: stopped reading early, results are incomplete: {loaded.problem}", err=True)
    return loaded


def _finish(ctx: click.Context, loaded: query.Loaded) -> None:
    """A damaged log still gives its answer, but not exit 0."""
    if loaded.problem:
        ctx.exit(AuditTampered.exit_code)


def _when(text: str | None, end: bool = False) -> datetime | None:
    try:
        return query.parse_when(text, end=end) if text else None
    except ValueError as exc:
        raise UsageError(f"--{'until' if end else 'since'}: {exc}") from None


def _work_hours(text: str) -> tuple[int, int]:
    try:
        return query.parse_work_hours(text)
    except ValueError as exc:
        raise UsageError(f"--work-hours {exc}") from None


_TABLE = (("time", 19), ("user", 10), ("program", 12), ("event", 9), ("outcome", 8), ("path", 36),
          ("patient", 12), ("study", 0))


def _row(record: dict) -> list[str]:
    return [str(record.get("time", ""))[:19].replace("T", " "), query.user_of(record) or "-",
            query.program_name(record) or "-", str(record.get("event", "")), str(record.get("outcome", "")),
            query.path_of(record) or "-", query.patient_of(record) or "-", query.study_of(record) or "-"]


def _table(rows: list[list[str]], columns: tuple[tuple[str, int], ...]) -> None:
    for row in [[name for name, _ in columns], *rows]:
        click.echo("  ".join(cell.ljust(width) if width else cell
                             for cell, (_, width) in zip(row, columns, strict=True)).rstrip())


@audit_group.command("query", epilog=_READ_FIRST)
@_LOGS
@click.option("--patient", metavar="ID", help="DICOM PatientID.")
@click.option("--study", metavar="UID", help="DICOM StudyInstanceUID.")
@click.option("--user", metavar="U", help="User name or uid.")
@click.option("--program", metavar="EXE", help="Executable: full path or file name.")
@click.option("--denied", is_flag=True, help="Only refused accesses (also learn-mode would-be denials).")
@click.option("--since", metavar="T", help="From this ISO date/time (UTC unless an offset is given).")
@click.option("--until", metavar="T", help="Before this ISO date/time; a bare date includes that whole day.")
@click.option("--after-hours", is_flag=True, help="Only outside working hours (local time) or on weekends.")
@click.option("--work-hours", default="8-18", show_default=True, metavar="START-END",
              help="Working hours for --after-hours, local time.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.pass_context
def query_command(ctx: click.Context, logs: tuple[Path, ...], patient: str | None, study: str | None,
                  user: str | None, program: str | None, denied: bool, since: str | None, until: str | None,
                  after_hours: bool, work_hours: str, as_json: bool) -> None:
    """List the access records of LOGs that match every given filter, oldest first.

    Files of several trails may be given: records are merged by time. Logs from several folders
    (one per host, as `audit collect` writes them) get a host column: the folder's name.

    \b
    Examples:
      encfs-pacs audit query /var/log/encfs-pacs/*.jsonl* --patient PAT-0001
      encfs-pacs audit query audit.log* --denied --since 2026-11-01 --until 2026-11-30
      encfs-pacs audit query audit.log* --after-hours --work-hours 7-19 --json
    """
    wanted = query.Filter(patient=patient, study=study, user=user, program=program, denied=denied,
                          since=_when(since), until=_when(until, end=True), after_hours=after_hours,
                          work_hours=_work_hours(work_hours))
    loaded = _load(logs)
    hits = list(wanted.apply(loaded.records))
    if as_json:
        for record in hits:
            click.echo(json.dumps(record, ensure_ascii=False))
    elif any(query.ORIGIN in record for record in hits):  # several hosts: say which one
        rows = [[str(record.get(query.ORIGIN, "-")), *_row(record)] for record in hits]
        _table(rows, (("host", 12), *_TABLE))
        click.echo(f"{len(hits)} of {len(loaded.records)} records", err=True)
    else:
        _table([_row(record) for record in hits], _TABLE)
        click.echo(f"{len(hits)} of {len(loaded.records)} records", err=True)
    _finish(ctx, loaded)


def _counts(title: str, counts: dict[str, int]) -> None:
    click.echo(f"  {title}:")
    for name, count in counts.items():
        click.echo(f"    {count:6d}  {name}")


def _patient_report(loaded: query.Loaded, patient: str, as_json: bool) -> None:
    records = list(query.Filter(patient=patient).apply(loaded.records))
    summary = query.patient_summary(records)
    if as_json:
        report = {"patient": patient, "summary": summary, "records": records}
        click.echo(json.dumps(report, ensure_ascii=False))
        return
    click.echo(f"Accesses to the images of patient {patient}")
    click.echo(f"  {summary['records']} records from {summary['first'] or '-'} to {summary['last'] or '-'}, "
               f"{len(summary['studies'])} studies, {summary['instances']} instances")
    for title in ("actions", "users", "programs", "studies"):
        _counts(title, summary[title])
    click.echo("")
    columns = (("time", 19), ("user", 10), ("program", 12), ("action", 7), ("outcome", 8), ("study", 28),
               ("instance", 0))
    _table([[str(r["time"])[:19].replace("T", " "), query.user_of(r) or "-", query.program_name(r) or "-",
             query.action_of(r), str(r.get("outcome", "")), query.study_of(r) or "-",
             str(query.dicom(r).get("SOPInstanceUID") or "-")] for r in records], columns)


def _bulk_report(loaded: query.Loaded, patients: int, minutes: int, as_json: bool) -> None:
    findings = query.bulk_access(loaded.records, patients=patients, window=timedelta(minutes=minutes))
    if as_json:
        click.echo(json.dumps([finding.to_dict() for finding in findings]))
        return
    click.echo(f"{len(findings)} bulk accesses (more than {patients} patients within {minutes} min "
               "by one user with one program)")
    _table([[f.first.strftime("%Y-%m-%d %H:%M:%S"), f.last.strftime("%Y-%m-%d %H:%M:%S"), f.user or "-",
             f.program or "-", str(len(f.patients)), str(f.records)] for f in findings],
           (("first", 19), ("last", 19), ("user", 10), ("program", 24), ("patients", 8), ("records", 0)))


def _period_options(text: str | None, html: Path | None) -> html_report.Period | None:
    if (text is None) != (html is None):
        raise UsageError("--period YYYY-MM and --html FILE go together (the monthly review report)")
    if text is None:
        return None
    try:
        return html_report.Period.parse(text)
    except ValueError as exc:
        raise UsageError(f"--period {exc}") from None


def _timezone(name: str | None) -> tzinfo | None:
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--timezone {name!r}: not a time zone name (e.g. Asia/Tokyo, UTC)") from None


def _check_readable(logs: tuple[Path, ...]) -> None:
    """The review report refuses logs it cannot read, rather than leaving them out."""
    for log in logs:
        try:
            with open(log, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"cannot read audit log {log}: {exc.strerror or exc}") from None


def _write_new(path: Path, data: bytes, force: bool) -> None:
    """Write the whole file next to ``path`` first, then put it in place in one step: a reader
    never sees half a report. Without ``force`` an existing file is never replaced (a hard link
    fails if the name exists, even if it appeared after the check). 0600: it names patients."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        durable.write_file_atomically(tmp, data, 0o600, sync_folder=False)
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise UsageError(f"{path} already exists: give --force to replace it") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    durable.fsync_dir(path.parent)


def _monthly_report(ctx: click.Context, logs: tuple[Path, ...], period: html_report.Period, html: Path,
                    anchor_text: str | None, force: bool, options: html_report.ReportOptions) -> None:
    if html.exists() and not force:
        raise UsageError(f"{html} already exists: give --force to replace it")
    _check_readable(logs)
    anchor = _anchor_from(anchor_text) if anchor_text else None
    integrity = verify(list(logs), anchor)
    loaded = _load(logs)
    page = html_report.build_report(loaded.records, period, integrity=integrity,
                                    sources=[str(log) for log in logs], read_problem=loaded.problem,
                                    options=options, generated=datetime.now(UTC))
    _write_new(html, page.encode("utf-8"), force)
    state, sentence = html_report.integrity_status(integrity)
    inside = len(period.select(loaded.records))
    click.echo(f"wrote {html}: {inside} records in {period.label} (UTC); logs {state}", err=True)
    if state != "intact":
        click.echo(f"WARNING: {sentence}", err=True)
    if state == "broken":
        ctx.exit(AuditTampered.exit_code)
    _finish(ctx, loaded)


@audit_group.command("report", epilog=_READ_FIRST)
@_LOGS
@click.option("--patient", metavar="ID", help="Every access to this patient's images (disclosure request).")
@click.option("--bulk", is_flag=True, help="Users/programs touching many patients in a short time.")
@click.option("--bulk-patients", default=20, show_default=True, type=click.IntRange(min=1),
              help="--bulk and --period: more than this many distinct patients...")
@click.option("--bulk-minutes", default=10, show_default=True, type=click.IntRange(min=1),
              help="--bulk and --period: ...within this many minutes.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report (--patient, --bulk).")
@click.option("--period", metavar="YYYY-MM", help="Monthly review report of this month (UTC), with --html.")
@click.option("--html", "html", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="--period: write the review report here (one self-contained HTML page, mode 0600).")
@click.option("--anchor", "anchor_text", metavar="KEY",
              help="--period: verify the logs against the volume's anchor (hex, base64 or a file).")
@click.option("--force", is_flag=True, help="--period: replace FILE if it exists (atomically).")
@click.option("--work-hours", default="8-18", show_default=True, metavar="START-END",
              help="--period: working hours for the after-hours section.")
@click.option("--timezone", "timezone_name", metavar="NAME",
              help="--period: time zone of the working hours (default: this machine's, TZ).")
@click.pass_context
def report_command(ctx: click.Context, logs: tuple[Path, ...], patient: str | None, bulk: bool,
                   bulk_patients: int, bulk_minutes: int, as_json: bool, period: str | None,
                   html: Path | None, anchor_text: str | None, force: bool, work_hours: str,
                   timezone_name: str | None) -> None:
    """Reports over LOGs: --patient ID (who accessed that patient's images, when, with which
    program, what was done; summary counts first), --bulk, and --period YYYY-MM --html FILE:
    the monthly review report for auditors (integrity of the logs checked with the verifier,
    accesses per user and program, denials, after-hours and bulk access, policy, key and
    maintenance events, mounts, audit outages, integrity failures), organised by what the MHLW
    guideline v6.0 and HIPAA §164.312(b) / §164.308(a)(1)(ii)(D) ask for. FILE is refused if it
    exists unless --force; it is written whole, then put in place (never half-written).

    \b
    Examples:
      encfs-pacs audit report --patient PAT-0001 /var/log/encfs-pacs/*.jsonl*
      encfs-pacs audit report --bulk --bulk-patients 50 --bulk-minutes 5 audit.log*
      encfs-pacs audit report audit.log* --period 2026-11 --html review-2026-11.html \\
          --anchor "$(cat /secure/place/pacs-enc.anchor)" --timezone Asia/Tokyo
    """
    month = _period_options(period, html)
    if not patient and not bulk and month is None:
        raise UsageError("say which report: --patient ID, --bulk and/or --period YYYY-MM --html FILE")
    if month is not None and html is not None:
        options = html_report.ReportOptions(work_hours=_work_hours(work_hours), tz=_timezone(timezone_name),
                                            bulk_patients=bulk_patients,
                                            bulk_window=timedelta(minutes=bulk_minutes))
        _monthly_report(ctx, logs, month, html, anchor_text, force, options)
    if not patient and not bulk:
        return
    loaded = _load(logs)
    if patient:
        _patient_report(loaded, patient, as_json)
    if bulk:
        _bulk_report(loaded, bulk_patients, bulk_minutes, as_json)
    _finish(ctx, loaded)


@audit_group.command("export", epilog=_READ_FIRST)
@_LOGS
@click.option("--format", "fmt", type=click.Choice(["csv", "fhir", "atna"]), required=True,
              help="csv: one flat row per record; fhir: a FHIR R4 Bundle of AuditEvents (DICOM/ATNA codes); "
                   "atna: one DICOM AuditMessage XML per line.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
@click.option("--observer", default=None,
              help="FHIR source.observer / ATNA AuditSourceID (default: encfs-pacs@<hostname>).")
@click.pass_context
def export_command(ctx: click.Context, logs: tuple[Path, ...], fmt: str, output: Path | None,
                   observer: str | None) -> None:
    """Export every access record of LOGs (merged by time): CSV, FHIR R4 AuditEvents or ATNA XML.

    \b
    Examples:
      encfs-pacs audit export --format csv audit.log* --output accesses.csv
      encfs-pacs audit export --format fhir audit.log* > audit-events.json
    """
    loaded = _load(logs)
    source = observer or f"encfs-pacs@{socket.gethostname()}"
    if fmt == "csv":
        text = export.to_csv(loaded.records)
    elif fmt == "atna":
        text = export.to_atna(loaded.records, source)
    else:
        text = json.dumps(export.to_fhir_bundle(loaded.records, source), ensure_ascii=False, indent=1) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        # Whole or not at all, and 0600 like the monthly report: the export names patients.
        durable.write_file_atomically(output, text.encode("utf-8"), 0o600)
    _finish(ctx, loaded)
