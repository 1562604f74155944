"""`encfs-pacs status`: what is mounted, by which daemon, under which policy, and how the audit
trail looks (size, denials in the last hour). Read-only: it never writes the log or the policy.

Sources: the kernel's mount table (fuse.encfs-pacs entries) and the runtime registry the daemon
writes when its mount is ready (/run/encfs-pacs as root, $XDG_RUNTIME_DIR/encfs-pacs otherwise).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from ..errors import EncfsPacsError
from . import UnstattedPath

FSTYPE = "fuse.encfs-pacs"  # "fuse." + the subtype the daemon mounts with
NOT_MOUNTED_EXIT_CODE = 3  # like `systemctl status`: the thing asked about is not running
DENIAL_WINDOW = timedelta(hours=1)


def _mount_table() -> dict[str, str]:
    """Mount point -> source (the backing folder, as the daemon's fsname) of encfs-pacs mounts."""
    from ..fs.mount import mount_table

    return {entry.mountpoint: entry.source for entry in mount_table() if entry.fstype == FSTYPE}


def _registry() -> dict[str, dict[str, Any]]:
    """Mount point -> the daemon's registry record (unreadable or foreign files are skipped)."""
    from ..fs.mount import runtime_dir

    records: dict[str, dict[str, Any]] = {}
    try:
        files = sorted(runtime_dir().glob("*.json"))
    except OSError:
        return records
    for path in files:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("mountpoint"), str):
            records[record["mountpoint"]] = record
    return records


def _daemon_running(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat_file:
            state = stat_file.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def policy_state(path: str | None) -> dict[str, Any] | None:
    """The policy file as it is on disk now: path, SHA-256, rule count (or the load error)."""
    if path is None:
        return None
    from ..policy.loader import load_policy

    try:
        policy = load_policy(Path(path))
    except EncfsPacsError as exc:
        return {"path": path, "error": str(exc)}
    return {"path": path, "sha256": policy.digest, "rules": len(policy.rules)}


def audit_state(path: str | None, now: datetime | None = None) -> dict[str, Any] | None:
    """Size of the active audit file and the denials it records in the last hour."""
    if path is None:
        return None
    from ..audit import iter_records

    state: dict[str, Any] = {"path": path}
    try:
        state["size"] = os.stat(path).st_size
    except OSError as exc:
        state["error"] = exc.strerror or str(exc)
        return state
    # Record times are fixed-width RFC 3339 UTC strings, so text order is time order.
    since = ((now or datetime.now(UTC)) - DENIAL_WINDOW).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    denied = learn_denied = syslog_dropped = 0
    try:
        for record in iter_records([Path(path)]):
            if record.get("event") == "syslog-dropped" and isinstance(record.get("dropped"), int):
                syslog_dropped += record["dropped"]  # over the whole active file, not just the hour
            if str(record.get("time", "")) < since:
                continue
            if record.get("outcome") == "denied":
                denied += 1
            elif record.get("outcome") == "learn-denied":
                learn_denied += 1
    except EncfsPacsError as exc:  # tampered or unreadable: say so, still show the rest
        state["error"] = str(exc)
        return state
    except OSError as exc:
        state["error"] = exc.strerror or str(exc)
        return state
    state["denied_last_hour"] = denied
    state["learn_denied_last_hour"] = learn_denied
    state["syslog_dropped"] = syslog_dropped
    return state


def collect(mountpoint: Path | None = None) -> list[dict[str, Any]]:
    """One entry per encfs-pacs mount (or stale registry record), optionally just MOUNTPOINT."""
    table, registry = _mount_table(), _registry()
    points = sorted(set(table) | set(registry))
    if mountpoint is not None:
        wanted = os.path.abspath(mountpoint)
        points = [p for p in points if p == wanted]
    entries = []
    for point in points:
        record = registry.get(point, {})
        pid = record.get("pid")
        known = "policy" in record and "audit_log" in record
        entries.append({
            "mountpoint": point,
            "mounted": point in table,
            "backing": record.get("backing") or table.get(point),
            "pid": pid if isinstance(pid, int) else None,
            "daemon_running": _daemon_running(pid),
            "learn": bool(record.get("learn", False)),
            "shared_storage": bool(record.get("shared_storage", False)),
            "policy": policy_state(record.get("policy")) if known else None,
            "audit": audit_state(record.get("audit_log")) if known else None,
            "syslog": record.get("syslog"),
            # Records of daemons started before status existed hold only pid and backing.
            "details_known": known,
        })
    # A registry record without a mount is a daemon that died without cleaning up: show it only
    # when it is still running (otherwise it is just a stale file).
    return [e for e in entries if e["mounted"] or e["daemon_running"]]


def _describe(entry: dict[str, Any]) -> list[str]:
    state = "mounted" if entry["mounted"] else "NOT MOUNTED (daemon still running)"
    lines = [f"{entry['mountpoint']}: {state}",
             f"  backing:   {entry['backing']}",
             "  daemon:    " + (f"pid {entry['pid']}" + ("" if entry["daemon_running"] else " (not running)")
                                 if entry["pid"] else "unknown (no registry record visible to this user)")]
    if entry["details_known"]:
        lines += [_policy_line(entry), _audit_line(entry["audit"])]
        if entry.get("syslog"):
            dropped = (entry["audit"] or {}).get("syslog_dropped")
            lines.append(f"  syslog:    {entry['syslog']}" + (
                f" ({dropped} message(s) dropped, per the active audit file)" if dropped else ""))
        if entry["shared_storage"]:
            lines.append("  sharing:   --shared-storage (other servers may mount this volume)")
    else:
        lines.append("  policy, audit log: unknown (no registry details; daemon of an older version "
                     "or another user)")
    return lines


def _policy_line(entry: dict[str, Any]) -> str:
    policy = entry["policy"]
    if policy is None:
        return "  policy:    none (--no-policy: every process gets plaintext)"
    if "error" in policy:
        return f"  policy:    {policy['path']}: {policy['error']}"
    mode = " [learn mode: nothing denied]" if entry["learn"] else ""
    return (f"  policy:    {policy['path']} ({policy['rules']} rules, "
            f"sha256 {policy['sha256'][:16]}...){mode}")


def _audit_line(audit: dict[str, Any] | None) -> str:
    if audit is None:
        return "  audit log: none (--no-audit)"
    if "error" in audit:
        return f"  audit log: {audit['path']}: {audit['error']}"
    return (f"  audit log: {audit['path']} ({audit['size']} bytes); last hour: "
            f"{audit['denied_last_hour']} denied, {audit['learn_denied_last_hour']} would-be denied")


@click.command()
@click.argument("mountpoint", required=False, type=UnstattedPath())  # no stat: may deny us
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts.")
def status(mountpoint: Path | None, as_json: bool) -> None:
    """Show mounted volumes: daemon, backing, policy in force, audit log, recent denials.

    The policy is shown as its file is on disk now (path, SHA-256, rule count). Denials are
    counted from the active audit file (records with outcome "denied" in the last hour); a
    non-root user sees only what it may read. Exit code 3 when MOUNTPOINT (or, without it,
    any encfs-pacs volume) is not mounted.

    \b
    Example:
      encfs-pacs status
      encfs-pacs status /var/lib/orthanc/db --json
    """
    entries = collect(mountpoint)
    if as_json:
        click.echo(json.dumps({"mounts": entries}, indent=2))
    elif not entries:
        click.echo(f"{mountpoint} is not an encfs-pacs mount" if mountpoint
                   else "no encfs-pacs volume is mounted")
    else:
        click.echo("\n".join(line for entry in entries for line in _describe(entry)))
    if not any(entry["mounted"] for entry in entries):
        raise click.exceptions.Exit(NOT_MOUNTED_EXIT_CODE)
