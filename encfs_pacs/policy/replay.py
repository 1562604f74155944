"""Recorded decisions turned into advice: rule suggestions (learn mode) and policy simulation.

Both read audit records (JSON Lines, see docs/audit-format.md): each access record carries
the caller (``who``, ``program``), the operation, the path and the outcome, which is enough
to ask a different policy the same question again.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .decide import Decision, decide
from .model import GRANTABLE_OPS, Caller, Op, Policy, Request

# Audit events whose object did not exist before the operation (write-once cares).
CREATING_EVENTS = {"create", "mkdir", "symlink", "link", "mknod"}
ACCESS_OUTCOMES = {"allowed", "denied", "learn-denied"}


def read_records(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read audit log {path}: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise UsageError(f"{path} line {number}: not a JSON audit record "
                                 "(check it with: encfs-pacs audit verify)") from None
            if isinstance(record, dict):
                yield record


def is_access(record: dict[str, Any]) -> bool:
    return (record.get("op") in {op.value for op in Op} and record.get("outcome") in ACCESS_OUTCOMES
            and isinstance(record.get("program"), dict) and isinstance(record.get("object"), dict))


def caller_of(record: dict[str, Any]) -> Caller:
    who, program = record.get("who") or {}, record["program"]
    return Caller(
        pid=int(program.get("pid") or 0), uid=int(who.get("uid", -1)), gid=int(who.get("gid", -1)),
        tgid=program.get("tgid"), groups=frozenset(who.get("groups") or ()), user=who.get("user"),
        exe=program.get("exe"), sha256=program.get("sha256"), unit=program.get("unit"),
        argv=tuple(program.get("argv") or ()), unidentified=program.get("unidentified"))


def request_of(record: dict[str, Any]) -> Request:
    return Request(Op(record["op"]), record["object"]["path"],
                   existing=record.get("event") not in CREATING_EVENTS)


def record_time(record: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return datetime.now(UTC)


# ---------------------------------------------------------------------------- simulation


@dataclass
class Change:
    kind: str  # "newly denied" | "newly allowed"
    program: str
    user: str
    op: str
    path: str
    old: str
    new: str
    count: int = 0


@dataclass
class Simulation:
    replayed: int = 0
    unchanged: int = 0
    changes: dict[tuple[str, ...], Change] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "unchanged": self.unchanged,
                "changes": [vars(change) for change in self.changes.values()]}


def simulate(policy: Policy, records: Iterable[dict[str, Any]]) -> Simulation:
    """Replay recorded accesses against ``policy``; collect where the answer would differ."""
    result = Simulation()
    for record in records:
        if not is_access(record):
            continue
        result.replayed += 1
        was_allowed = record["outcome"] == "allowed"
        decision = decide(policy, caller_of(record), request_of(record), record_time(record))
        if decision.allowed == was_allowed:
            result.unchanged += 1
            continue
        kind = "newly allowed" if decision.allowed else "newly denied"
        program = record["program"].get("exe") or "unknown"
        user = str((record.get("who") or {}).get("user") or (record.get("who") or {}).get("uid"))
        key = (kind, program, user, record["op"], record["object"]["path"])
        change = result.changes.setdefault(key, Change(
            kind, program, user, record["op"], record["object"]["path"],
            old=f"{record['outcome']} ({record.get('rule') or 'no rule'})", new=_explain(decision)))
        change.count += 1
    return result


def _explain(decision: Decision) -> str:
    if decision.allowed or not decision.trace:
        return decision.reason
    return f"{decision.reason}: " + "; ".join(decision.trace)


# ---------------------------------------------------------------------------- suggestions


@dataclass
class Suggestion:
    exe: str | None
    sha256: str | None
    user: str | None
    unit: str | None
    ops: set[str] = field(default_factory=set)
    paths: Counter[str] = field(default_factory=Counter)
    argv_examples: set[str] = field(default_factory=set)
    stat_paths: set[str] = field(default_factory=set)
    count: int = 0

    @property
    def path(self) -> str:
        return common_folder(list(self.paths) or sorted(self.stat_paths))


def common_folder(paths: list[str]) -> str:
    if not paths:
        return "/"
    folders = [p if len(paths) == 1 and p.endswith("/") else posixpath.dirname(p) or "/" for p in paths]
    common = posixpath.commonpath(folders)
    return common or "/"


def suggest(records: Iterable[dict[str, Any]], include_denied: bool = False) -> list[Suggestion]:
    """Group what learn mode would have denied by program and user: one proposed rule each."""
    wanted = {"learn-denied", "denied"} if include_denied else {"learn-denied"}
    groups: dict[tuple[Any, ...], Suggestion] = {}
    for record in records:
        if not is_access(record) or record["outcome"] not in wanted:
            continue
        program, who = record["program"], record.get("who") or {}
        if program.get("unidentified"):
            continue  # nothing stable to name in a rule
        key = (program.get("exe"), program.get("sha256"), who.get("user") or who.get("uid"),
               program.get("unit"))
        item = groups.setdefault(key, Suggestion(*key))
        item.count += 1
        op = record["op"]
        item.ops.add("list" if op == Op.STAT else op)
        if op != Op.STAT:  # the folders above a rule's path are visible anyway
            item.paths[record["object"]["path"]] += 1
        else:
            item.stat_paths.add(record["object"]["path"])
        if program.get("argv"):
            item.argv_examples.add(" ".join(program["argv"])[:200])
    return sorted(groups.values(), key=lambda s: -s.count)


def suggestion_toml(item: Suggestion, rule_id: str) -> str:
    lines = [f"# {item.count} access(es) would have been denied; review before adding."]
    if item.argv_examples:
        lines.append("# command lines seen: " + " | ".join(sorted(item.argv_examples)[:3]))
    lines.append("[[rule]]")
    lines.append(f'id = "{rule_id}"')
    for key, value in (("exe", item.exe), ("sha256", item.sha256), ("user", item.user), ("unit", item.unit)):
        if value is not None:
            lines.append(f"{key} = {json.dumps(value)}")
    lines.append(f'path = "{item.path}"')
    ops = [op for op in GRANTABLE_OPS if op in item.ops]
    lines.append("ops = [" + ", ".join(f'"{op}"' for op in ops) + "]")
    return "\n".join(lines)
