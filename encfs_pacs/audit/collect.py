"""Central audit: rebuild each host's log files from what a syslog collector received.

Each forwarded message carries one audit line byte for byte (its MSG), the sending host
(HOSTNAME) and, in its structured data, the chain id, seq and event (forward.py). ``collect``
groups the messages by host and chain, orders them by seq, drops exact duplicates (a message
sent twice after a reconnect) and starts a new file at every ``link`` record, just as the
writer did at rotation. The files it writes are ordinary audit log files: ``audit verify``
checks them as they are, with the volume's anchor, so the central copy proves itself -- and a
message lost on the way or edited on the collector shows up as a deleted or edited record.

Messages that are not encfs-pacs audit messages (other programs, the daemon log) are skipped;
messages cut to fit a UDP datagram (``truncated``) cannot be verified and are skipped and counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..durable import fsync_dir, write_file_atomically
from .forward import APP_NAME, MSGID_AUDIT, SD_ID, parse_message

_SAFE = re.compile(r"[^A-Za-z0-9_.@+-]")


@dataclass
class _Line:
    seq: int
    event: str
    raw: bytes


@dataclass
class CollectReport:
    """What ``collect`` wrote and what it left out (with the collector file's line numbers)."""

    files: dict[str, list[Path]] = field(default_factory=dict)  # host -> files written
    records: int = 0
    duplicates: int = 0
    other: int = 0  # not encfs-pacs audit messages
    truncated: list[int] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.records} audit records from {len(self.files)} host(s)"]
        for host, files in sorted(self.files.items()):
            out.append(f"  {host}: {len(files)} file(s) in {files[0].parent}" if files else f"  {host}: -")
        if self.duplicates:
            out.append(f"  {self.duplicates} duplicate message(s) dropped (sent twice)")
        if self.other:
            out.append(f"  {self.other} other message(s) skipped (not encfs-pacs audit records)")
        if self.truncated:
            out.append(f"  WARNING: {len(self.truncated)} message(s) were cut to fit a UDP datagram and are "
                       f"left out (collector lines {_some(self.truncated)}): verify will report them missing")
        if self.unreadable:
            out.append(f"  WARNING: {len(self.unreadable)} line(s) are not RFC 5424 encfs-pacs messages "
                       f"(collector lines {_some(self.unreadable)})")
        return out


def _some(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:10]))
    return shown + (", ..." if len(numbers) > 10 else "")


def host_folder(host: str) -> str:
    """A host name as a folder name (HOSTNAME is printable ASCII, but may hold '/')."""
    name = _SAFE.sub("_", host)
    return "_" + name if name.startswith(".") or not name else name


def read_collector_file(lines: Iterable[bytes], report: CollectReport) -> dict[tuple[str, str], list[_Line]]:
    """(host, chain) -> the audit lines received for that chain, in arrival order."""
    trails: dict[tuple[str, str], list[_Line]] = {}
    for number, raw in enumerate(lines, start=1):
        raw = raw.rstrip(b"\n")
        if not raw:
            continue
        try:
            message = parse_message(raw)
        except ValueError:
            report.unreadable.append(number)
            continue
        if message.app_name != APP_NAME or message.msgid != MSGID_AUDIT:
            report.other += 1
            continue
        params = message.sd.get(SD_ID, {})
        if "truncated" in params:
            report.truncated.append(number)
            continue
        try:
            seq, chain = int(params["seq"]), params["chain"]
        except (KeyError, ValueError):
            report.unreadable.append(number)
            continue
        line = _Line(seq, params.get("event", ""), message.msg)
        trails.setdefault((message.hostname, chain), []).append(line)
    return trails


def split_files(received: list[_Line], report: CollectReport) -> list[list[_Line]]:
    """Seq order, exact duplicates dropped, a new file at every link record (as rotation did)."""
    ordered = sorted(received, key=lambda line: line.seq)  # stable: same-seq variants keep arrival order
    files: list[list[_Line]] = []
    previous: _Line | None = None
    for line in ordered:
        if previous is not None and line.seq == previous.seq and line.raw == previous.raw:
            report.duplicates += 1
            continue
        if not files or line.event == "audit-link":
            files.append([])
        files[-1].append(line)
        previous = line
    return files


def collect(source: Path, outdir: Path) -> CollectReport:
    """Split the collector file ``source`` into OUTDIR/HOST/CHAIN-FIRSTSEQ.audit.jsonl files."""
    report = CollectReport()
    with source.open("rb") as stream:
        trails = read_collector_file(stream, report)
    _make_private_dir(outdir)
    for (host, chain), received in sorted(trails.items()):
        folder = outdir / host_folder(host)
        _make_private_dir(folder)
        for lines in split_files(received, report):
            path = folder / f"{host_folder(chain)}-{lines[0].seq:012d}.audit.jsonl"
            # Atomic: a crash or a re-run never leaves a half file that verify would call tampered.
            data = b"".join(line.raw + b"\n" for line in lines)
            write_file_atomically(path, data, 0o600, sync_folder=False)
            report.files.setdefault(host, []).append(path)
            report.records += len(lines)
        fsync_dir(folder)
    return report


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
