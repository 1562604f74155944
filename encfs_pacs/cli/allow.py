"""Admin commands for the allow-list: add, list, remove, check, grant (break-glass).

An edit (add, grant, remove) is also queued for the audit trail of every running mount that
uses the edited policy file (``record_policy_edit``): the mount's own ``policy-reload`` record
says *what* changed; this one says *who* ran which command. The command has no volume key, so
the trail records it as an unverified claim (a ``security-alert`` quoting it, see
audit/spool.py), which is what it is.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..policy.decide import decide
from ..policy.editor import add_rule, remove_rule, unique_id
from ..policy.identity import IdentityResolver, file_sha256
from ..policy.loader import DEFAULT_POLICY_PATH, load_policy, normalise_mount_path
from ..policy.model import GRANTABLE_OPS, Op, Policy, Request, Rule, View

MAX_BREAK_GLASS = timedelta(hours=24)

policy_option = click.option(
    "--policy", "policy_file", type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_POLICY_PATH, show_default=True, help="The policy file to read or change.")


@click.group()
def allow() -> None:
    """Edit and inspect the allow-list (which programs get plaintext)."""


def _executable(path: Path) -> tuple[str, str]:
    """The canonical path (what /proc/PID/exe shows) and SHA-256 of an executable."""
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        raise UsageError(f"{path} is not an existing file: give the program's full path "
                         f"(e.g. $(command -v {path.name}))")
    if not os.access(real, os.X_OK):
        raise UsageError(f"{real} is not executable")
    return real, file_sha256(real)


def _ops(value: str | None) -> list[str] | None:
    if value is None:
        return None
    ops = [op.strip() for op in value.split(",") if op.strip()]
    unknown = [op for op in ops if op not in {o.value for o in GRANTABLE_OPS}]
    if unknown or not ops:
        raise UsageError(f"--ops {value!r}: give a comma-separated list of "
                         f"{', '.join(GRANTABLE_OPS)}")
    return ops


def _mount_path(value: str | None) -> str | None:
    if value is None:
        return None
    path = normalise_mount_path(value)
    if path is None:
        raise UsageError(f"--path {value!r} must be a folder inside the mount starting with /, e.g. /db")
    return path


def _rule_fields(exe: Path | None, user: str | None, group: str | None, unit: str | None,
                 args: str | None, path: str | None) -> dict[str, Any]:
    if not any((exe, user, group, unit)):
        raise UsageError("say whom the rule is for: --exe PROGRAM and/or --user, --group, --unit")
    fields: dict[str, Any] = {}
    if exe is not None:
        fields["exe"], fields["sha256"] = _executable(exe)
    fields["user"] = int(user) if user is not None and user.isdigit() else user
    fields["group"] = int(group) if group is not None and group.isdigit() else group
    fields["unit"], fields["args"], fields["path"] = unit, args, _mount_path(path)
    return fields


def _summary(rule: Rule) -> str:
    who = rule.exe or "any program"
    if rule.sha256:
        who += f" (sha256 {rule.sha256[:12]}…)"
    for label, value in (("user", rule.user), ("group", rule.group), ("unit", rule.unit),
                         ("args", rule.args)):
        if value is not None:
            who += f", {label} {value}"
    ops = ", ".join(op for op in GRANTABLE_OPS if op in rule.ops)
    text = f"rule {rule.id}: {who} may {ops} under {rule.path} ({rule.view})"
    if rule.write_once:
        text += ", write-once"
    if rule.expires:
        text += f", until {rule.expires.isoformat()}"
    return text


@allow.command("add")
@policy_option
@click.option("--exe", type=click.Path(dir_okay=False, path_type=Path),
              help="The program; its SHA-256 is pinned now (a replaced binary stops matching).")
@click.option("--id", "rule_id", help="Rule name (default: from the program or user).")
@click.option("--user", help="Only this user (name or uid).")
@click.option("--group", help="Only members of this group (name or gid).")
@click.option("--unit", help="Only processes of this systemd unit, e.g. orthanc.service.")
@click.option("--args", help="Pattern over the command line, for interpreters: '*dcm4chee*'.")
@click.option("--path", "mount_path", help="Only below this folder of the mount, e.g. /db.")
@click.option("--ops", help=f"Comma-separated subset of {','.join(GRANTABLE_OPS)} (default: all).")
@click.option("--view", type=click.Choice([v.value for v in View]), default=None,
              help="plaintext (default), ciphertext (raw encrypted bytes, read-only) or deny.")
@click.option("--write-once", is_flag=True, help="Stored files cannot be overwritten, renamed or deleted.")
@click.option("--max-changes", type=int, help="Rate guard: rewrites/renames/deletes allowed per window.")
@click.option("--window", "window_seconds", type=float, help="Rate guard window in seconds.")
def allow_add(policy_file: Path, exe: Path | None, rule_id: str | None, user: str | None,
              group: str | None, unit: str | None, args: str | None, mount_path: str | None,
              ops: str | None, view: str | None, write_once: bool, max_changes: int | None,
              window_seconds: float | None) -> None:
    """Add a rule at the end of the policy.

    \b
    Example:
      encfs-pacs allow add --exe /usr/sbin/Orthanc --user orthanc --unit orthanc.service
      encfs-pacs allow add --exe /usr/bin/rsync --user backup --view ciphertext --ops read,list
    """
    fields = _rule_fields(exe, user, group, unit, args, mount_path)
    fields["ops"] = _ops(ops)
    if view == View.CIPHERTEXT and fields["ops"] is None:
        fields["ops"] = ["read", "list"]
    fields["view"] = view
    fields["write_once"] = True if write_once else None
    fields["max_changes"], fields["window_seconds"] = max_changes, window_seconds
    current = _current(policy_file)
    who = Path(fields["exe"]).name.lower() if "exe" in fields else f"user-{user or unit or group}"
    base = rule_id or who
    if rule_id is None:
        rule_id = unique_id({rule.id for rule in current.rules}, base)
    policy = add_rule(policy_file, {"id": rule_id, **fields})
    rule = policy.rule(rule_id)
    assert rule is not None
    click.echo(f"added {_summary(rule)}")
    click.echo(f"in force on running mounts of {policy_file} within a second")
    record_policy_edit(policy_file, "add", rule, policy.digest)


def record_policy_edit(policy_file: Path, action: str, rule: Rule | str, digest: str) -> None:
    """Queue a ``policy-edit`` event for each running mount of ``policy_file``; say where it went."""
    from ..maintenance import events
    from .status import collect

    path = os.path.abspath(policy_file)
    backings = sorted({entry["backing"] for entry in collect()
                       if entry.get("mounted") and entry.get("backing")
                       and (entry.get("policy") or {}).get("path") == path})
    if not backings:
        click.echo(f"audit: no running mount uses {path}: the next mount records the policy it loads "
                   "(policy-load, with its SHA-256)", err=True)
        return
    # Records hold no floats (rate-limit windows are); the reload record has the full rule set.
    details = ({key: value for key, value in rule_as_json(rule).items() if key not in ("rate_limit", "line")}
               if isinstance(rule, Rule) else {"id": rule})
    for backing in backings:
        event = events.make_event("policy-edit", backing=backing, action=action, policy_file=path,
                                  policy_sha256=digest, rule=details)
        click.echo(f"audit: policy edit {events.audit_event(event, Path(backing))}", err=True)


def _current(policy_file: Path) -> Policy:
    return load_policy(policy_file) if policy_file.exists() else Policy(source=str(policy_file))


def _parse_duration(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+)\s*([mhd])\s*", text)
    if match is None:
        raise UsageError(f"--for {text!r}: give a duration like 30m, 2h or 1d")
    amount, unit = int(match[1]), match[2]
    duration = timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: amount})
    if not timedelta(0) < duration <= MAX_BREAK_GLASS:
        raise UsageError(f"--for {text}: break-glass access lasts at most 24h; longer access "
                         "needs a normal rule (encfs-pacs allow add)")
    return duration


@allow.command("grant")
@policy_option
@click.option("--exe", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The program to let in (its SHA-256 is pinned).")
@click.option("--for", "duration", required=True, help="How long: 30m, 2h, 1d (at most 24h).")
@click.option("--reason", required=True, help="Why (ticket, incident, person): recorded in the audit trail.")
@click.option("--user", help="Only this user (name or uid).")
@click.option("--path", "mount_path", help="Only below this folder of the mount.")
@click.option("--ops", help="Comma-separated operations (default: read,list).")
def allow_grant(policy_file: Path, exe: Path, duration: str, reason: str, user: str | None,
                mount_path: str | None, ops: str | None) -> None:
    """Break-glass: let a program in for a limited time. It expires by itself.

    The rule goes first in the policy, and every use is a security alert in the audit trail.

    \b
    Example:
      encfs-pacs allow grant --exe /usr/bin/dcmdump --for 2h --reason "INC-4711 check study"
    """
    if len(reason.strip()) < 5:
        raise UsageError("--reason must say why (at least a few words): it is what an auditor reads")
    expires = (datetime.now(UTC) + _parse_duration(duration)).replace(microsecond=0)
    fields = _rule_fields(exe, user, None, None, None, mount_path)
    fields["ops"] = _ops(ops) or ["read", "list"]
    fields.update(expires=expires, reason=reason.strip(), alert=True)
    taken = {rule.id for rule in _current(policy_file).rules}
    rule_id = unique_id(taken, f"break-glass-{Path(fields['exe']).name.lower()}")
    policy = add_rule(policy_file, {"id": rule_id, **fields}, first=True, action="break-glass grant")
    rule = policy.rule(rule_id)
    assert rule is not None
    click.echo(f"granted {_summary(rule)}")
    click.echo("every use is logged as a security alert; it expires by itself "
               f"(remove earlier with: encfs-pacs allow remove {rule_id})")
    record_policy_edit(policy_file, "break-glass grant", rule, policy.digest)


@allow.command("remove")
@policy_option
@click.argument("rule_id")
def allow_remove(policy_file: Path, rule_id: str) -> None:
    """Remove the rule RULE_ID.

    \b
    Example:
      encfs-pacs allow remove break-glass-dcmdump
    """
    policy = remove_rule(policy_file, rule_id)
    click.echo(f"removed rule {rule_id} from {policy_file}")
    record_policy_edit(policy_file, "remove", rule_id, policy.digest)


def rule_as_json(rule: Rule) -> dict[str, Any]:
    return {"id": rule.id, "exe": rule.exe, "sha256": rule.sha256, "user": rule.user, "group": rule.group,
            "unit": rule.unit, "args": rule.args, "path": rule.path,
            "ops": [op.value for op in GRANTABLE_OPS if op in rule.ops], "view": rule.view.value,
            "write_once": rule.write_once,
            "rate_limit": vars(rule.rate_limit) if rule.rate_limit else None,
            "expires": rule.expires.isoformat() if rule.expires else None, "reason": rule.reason,
            "line": rule.line}


@allow.command("list")
@policy_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def allow_list(policy_file: Path, as_json: bool) -> None:
    """Show the rules in order (the first that matches decides).

    \b
    Example:
      encfs-pacs allow list --policy /etc/encfs-pacs/policy.toml
    """
    policy = load_policy(policy_file)
    if as_json:
        click.echo(json.dumps({"policy": str(policy_file), "sha256": policy.digest,
                               "rules": [rule_as_json(rule) for rule in policy.rules]}, indent=2))
        return
    rows = [("ID", "PROGRAM", "SHA256", "USER", "UNIT/ARGS", "PATH", "OPS", "VIEW", "NOTES")]
    for rule in policy.rules:
        notes = [n for n, on in (("write-once", rule.write_once), ("alert", rule.alert)) if on]
        if rule.rate_limit:
            notes.append(f"max {rule.rate_limit.changes}/{rule.rate_limit.seconds:g}s")
        if rule.expires:
            expired = rule.expires <= datetime.now(UTC)
            notes.append(f"{'expired' if expired else 'until'} {rule.expires.isoformat()}")
        ops = "all" if rule.ops == frozenset(GRANTABLE_OPS) else ",".join(
            op for op in GRANTABLE_OPS if op in rule.ops)
        rows.append((rule.id, rule.exe or "*", (rule.sha256 or "-")[:12], rule.user or rule.group or "*",
                     rule.unit or rule.args or "*", rule.path, ops, rule.view.value, " ".join(notes)))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
    if not policy.rules:
        click.echo("(no rules: every process is denied)")
    for warning in policy.warnings:
        click.echo(f"warning: {warning}", err=True)


def _fs_ids(pid: int) -> tuple[int, int]:
    """The file-system uid/gid the kernel would put in a FUSE request from ``pid``."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        raise UsageError(f"no process {pid} (or /proc/{pid} is unreadable)") from None
    return int(fields["Uid"].split()[3]), int(fields["Gid"].split()[3])


@allow.command("check")
@policy_option
@click.option("--pid", type=int, required=True, help="A running process to check.")
@click.option("--path", "mount_path", default="/", show_default=True, help="Path inside the mount.")
@click.option("--op", type=click.Choice([op.value for op in GRANTABLE_OPS]), default="read",
              show_default=True, help="Operation to check.")
def allow_check(policy_file: Path, pid: int, mount_path: str, op: str) -> None:
    """Explain which rule decides for a running process, and why the others do not.

    Exit status 0 if allowed, 1 if denied.

    \b
    Example:
      encfs-pacs allow check --pid $(pidof Orthanc) --path /db/index --op write
    """
    policy = load_policy(policy_file)
    path = _mount_path(mount_path) or "/"
    uid, gid = _fs_ids(pid)
    caller = IdentityResolver().resolve(pid, uid, gid)
    click.echo(f"process {pid}: {caller.exe or '?'} uid {uid} ({caller.user or '?'}) "
               f"unit {caller.unit or '-'}")
    if caller.sha256:
        click.echo(f"  sha256 {caller.sha256}")
    if caller.argv:
        click.echo(f"  command line: {' '.join(caller.argv)[:300]}")
    decision = decide(policy, caller, Request(Op(op), path), datetime.now(UTC))
    for line in decision.trace:
        click.echo(f"  skipped {line}")
    verdict = "ALLOWED" if decision.allowed else "DENIED"
    click.echo(f"{verdict}: {op} {path}: {decision.reason}"
               + (f" (view {decision.view})" if decision.allowed else ""))
    if not decision.allowed:
        raise click.exceptions.Exit(1)
