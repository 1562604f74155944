"""The audit trail: a tamper-evident JSON Lines log of every access (docs/audit-format.md).

Public API (everything else is internal):

- ``open_audit_log(path, backing, master_key, ...) -> AuditLog``: the writer a mount uses;
  ``AuditLog.append(payload)``, ``.flush()``, ``.close()``.
- ``create_anchor(backing, master_key) -> bytes`` (at ``init``), ``read_anchor(backing)``.
- ``verify(paths, anchor=None, live=False) -> VerifyReport`` for auditors (no secret needed).
- ``iter_records(paths)`` for tools that read the log (query, policy simulate).
- ``text(str)``: makes a file name with undecodable bytes safe for a record.
- ``forward.SyslogForwarder`` (RFC 5424 to a syslog collector; ``open_audit_log(...,
  forward=forwarder.audit_lines)``) and ``collect.collect`` (per-host logs from a collector's file).
- ``spool``: maintenance commands queue events in the volume (``queue_event``); the mount
  records them (``SpoolIngester``), see audit/spool.py.
"""

from .canonical import text
from .signing import create_anchor, parse_public_key, read_anchor
from .verify import Problem, VerifyReport, iter_records, verify
from .writer import AuditLog, open_audit_log

__all__ = ["AuditLog", "Problem", "VerifyReport", "create_anchor", "iter_records", "open_audit_log",
           "parse_public_key", "read_anchor", "text", "verify"]
