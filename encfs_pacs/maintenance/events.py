"""Audit events of maintenance commands, and where they go: the volume's audit spool.

Every maintenance operation (init, passwd, recovery-key create/check, a mount unlocked with
the recovery key, import, export, fsck) builds its event with :func:`make_event` — a record
payload: event, outcome, who ran it (uid, user, audit login uid and session), the program,
the volume, and the command's own fields — and hands it to :func:`audit_event`. That queues
it in ``BACKING/.encfs-pacs/audit-spool/`` (``encfs_pacs.audit.spool``), authenticated with a
key derived from the master key when the command had it (:func:`authenticate`). The running
mount records it in its tamper-evident trail within about a second; with no mount running,
the next mount records it before serving. ``audit_event`` says which happened.

Events never hold key material or passphrases: only what changed, who ran it and the outcome.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..audit.records import utc_text
from ..audit.spool import PICKUP_SECONDS, Queued, ingester_running, queue_event, wait_until_ingested

log = logging.getLogger("encfs_pacs.audit.spool")

RECORDED = "recorded in the audit trail of the running mount"
QUEUED = "queued for the audit trail of {backing}; it is recorded at the next mount (with an audit log)"
SLOW = ("queued for the audit trail of {backing}; the running mount has not recorded it within "
        "{seconds:.0f} s (it will, or the next mount does)")
RECOVERY_KEY = "recovery-key"  # rekey.RECOVERY (not imported: rekey imports this module)
NOT_QUEUED = "NOT recorded in the audit trail: the audit spool of {backing} cannot be written ({why})"


class Event(dict[str, Any]):
    """An event payload; ``authenticate`` attaches the spool key of the volume it concerns."""

    master_key: bytes | None = None


def _proc_int(name: str) -> int | None:
    try:
        return int(Path(f"/proc/self/{name}").read_text().strip())
    except (OSError, ValueError):
        return None


def _who() -> dict[str, Any]:
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    who: dict[str, Any] = {"uid": uid, "gid": os.getgid(), "user": user,
                           # The audit login uid survives sudo and su: the person behind root.
                           "loginuid": _proc_int("loginuid"), "session": _proc_int("sessionid")}
    if os.environ.get("SUDO_USER"):
        who["sudo_user"] = os.environ["SUDO_USER"]  # a hint only: the environment is the caller's
    return who


def make_event(event: str, *, backing: str | Path | None = None, outcome: str = "success",
               **fields: Any) -> Event:
    """An event payload: name, outcome, who ran the command, the program, the volume, ``fields``.

    ``outcome``: ``success``, ``error`` (the command failed), ``incomplete``, ``clean``,
    ``damaged``. ``queued_at`` is when the command made it (the record's ``time`` is when the
    trail recorded it). Field names must not be envelope names (time, seq, …)."""
    payload = Event({"event": event, "outcome": outcome, "who": _who(),
                     "program": {"pid": os.getpid(), "exe": sys.executable,
                                 "command": "encfs-pacs"},
                     "queued_at": utc_text(datetime.now(UTC)), **fields})
    if backing is not None:
        payload["object"] = {"backing": os.path.abspath(backing)}
    if fields.get("unlocked_with") == RECOVERY_KEY:
        payload["alert"] = True  # the safe was opened: an auditor should see every use
    return payload


def authenticate(event: Event, master_key: bytes) -> Event:
    """Let ``audit_event`` MAC the event with the volume's spool key (the key is only kept
    on this object until then)."""
    event.master_key = master_key
    return event


def queue(event: dict[str, Any], backing: Path | None = None) -> Queued | str:
    """Write ``event`` to its volume's spool (MACed if ``authenticate`` was called): the
    Queued entry, or why it could not be written (never raises: the command's work is done)."""
    master_key = getattr(event, "master_key", None)
    target = backing or Path(event.get("object", {}).get("backing", ""))
    log.debug("audit event: %s", json.dumps(event, sort_keys=True, default=str))
    try:
        return queue_event(target, dict(event), master_key)
    except (OSError, ValueError, TypeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        log.error("audit event not queued (%s): %s", why, json.dumps(event, sort_keys=True, default=str))
        return NOT_QUEUED.format(backing=target, why=why)
    finally:
        if isinstance(event, Event):
            event.master_key = None


def audit_event(event: dict[str, Any], backing: Path | None = None,
                wait_seconds: float = PICKUP_SECONDS) -> str:
    """Queue ``event`` for the audit trail of its volume; returns where it went, in words.

    If a mount of the volume is ingesting, waits up to ``wait_seconds`` for it to record the
    event. Never raises for a spool that cannot be written: the answer says so.
    """
    queued = queue(event, backing)
    if isinstance(queued, str):
        return queued
    target = queued.path.parent.parent.parent
    if not ingester_running(target):
        return QUEUED.format(backing=target)
    if wait_until_ingested(queued, wait_seconds):
        return RECORDED
    return SLOW.format(backing=target, seconds=wait_seconds)
