"""Audit events of maintenance commands.

The tamper-evident audit writer (``encfs_pacs.audit``) is not wired into these commands yet.
Every maintenance operation builds its event as a dict and hands it to :func:`audit_event`;
wiring the audit log means replacing this function's body (e.g. ``writer.append(event)``),
nothing else. Until then the event is only logged (logger ``encfs_pacs.audit.pending``).
Events never hold key material or passphrases: only what changed, who ran it and the outcome.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("encfs_pacs.audit.pending")


def make_event(event: str, **fields: Any) -> dict[str, Any]:
    """An event record: name, UTC time, who ran the command, and the given fields."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return {"event": event, "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "uid": uid, "user": user, "pid": os.getpid(), **fields}


def audit_event(event: dict[str, Any]) -> None:
    """HOOK for the audit writer: currently only logs the event (see module docstring)."""
    log.info("audit event (not yet in the audit log): %s", json.dumps(event, sort_keys=True))
