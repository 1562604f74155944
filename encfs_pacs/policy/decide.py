"""The allow-list decision: a pure function of (policy, caller, request, time).

Rules are tried in order; the first rule whose conditions all hold and which grants the
operation decides. A matching rule with view ``deny`` denies. No matching rule: denied
(deny by default). A caller whose identity could not be established matches nothing.
The ``trace`` explains, rule by rule, why each earlier rule did not decide: that is what
`allow check` prints for an admin.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime

from .model import DESTRUCTIVE_OPS, Caller, Op, Policy, Request, Rule, View


@dataclass(frozen=True)
class Decision:
    allowed: bool
    view: View
    rule: Rule | None
    reason: str
    trace: tuple[str, ...] = ()

    @property
    def rule_id(self) -> str | None:
        return self.rule.id if self.rule is not None else None


def path_within(path: str, prefix: str) -> bool:
    """True if ``path`` is ``prefix`` or below it ('/a/b' is within '/a', '/ab' is not)."""
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix + "/")


def _path_matches(rule: Rule, request: Request) -> bool:
    if path_within(request.path, rule.path):
        return True
    # Seeing the attributes of the folders above a rule's prefix is needed to reach it at all.
    # Only for granting rules: a deny rule for /secret must not hide / from everyone.
    return request.op is Op.STAT and rule.view is not View.DENY and path_within(rule.path, request.path)


def _grants(rule: Rule, op: Op) -> bool:
    # Any rule that grants something lets its caller see attributes where it applies.
    return bool(rule.ops) if op is Op.STAT else op in rule.ops


def mismatch(rule: Rule, caller: Caller, request: Request, now: datetime) -> str | None:
    """Why ``rule`` does not apply to this caller and request, or None if it does."""
    if rule.expires is not None and now >= rule.expires:
        return f"expired at {rule.expires.isoformat()}"
    if rule.exe is not None and caller.exe != rule.exe:
        return f"executable is {caller.exe}, rule wants {rule.exe}"
    if rule.sha256 is not None and caller.sha256 != rule.sha256:
        return "executable content differs from the pinned SHA-256 (binary replaced or updated?)"
    if rule.uid is not None and caller.uid != rule.uid:
        return f"user is uid {caller.uid}, rule wants {rule.user or rule.uid}"
    if rule.gid is not None and caller.gid != rule.gid and rule.gid not in caller.groups:
        return f"caller is not in group {rule.group or rule.gid}"
    if rule.unit is not None and caller.unit != rule.unit:
        return f"systemd unit is {caller.unit or 'none'}, rule wants {rule.unit}"
    if rule.args is not None and not fnmatch.fnmatchcase(" ".join(caller.argv), rule.args):
        return f"command line does not match {rule.args!r}"
    if not _path_matches(rule, request):
        return f"path {request.path} is outside {rule.path}"
    if not _grants(rule, request.op):
        return f"operation {request.op} not granted (grants {', '.join(sorted(rule.ops)) or 'nothing'})"
    if caller.traced is not None and not rule.allow_traced:
        return f"caller may be controlled by another program: {caller.traced}"
    return None


def decide(policy: Policy, caller: Caller, request: Request, now: datetime) -> Decision:
    if caller.unidentified is not None:
        return Decision(False, View.DENY, None, f"caller not identified: {caller.unidentified}")
    trace: list[str] = []
    for rule in policy.rules:
        why_not = mismatch(rule, caller, request, now)
        if why_not is not None:
            trace.append(f"rule {rule.id}: {why_not}")
            continue
        return _apply(rule, request, tuple(trace))
    return Decision(False, View.DENY, None, "no rule allows this (deny by default)", tuple(trace))


def _apply(rule: Rule, request: Request, trace: tuple[str, ...]) -> Decision:
    if rule.view is View.DENY:
        return Decision(False, View.DENY, rule, f"rule {rule.id} denies", trace)
    if rule.write_once and request.op in DESTRUCTIVE_OPS and stored_before(rule, request):
        return Decision(False, View.DENY, rule,
                        f"rule {rule.id} makes stored files write-once: {request.op} of an existing "
                        "file is refused", trace)
    return Decision(True, rule.view, rule, f"rule {rule.id} allows {request.op}", trace)


def stored_before(rule: Rule, request: Request) -> bool:
    """True for a file that already existed, unless its creator is still within the grace period."""
    if not request.existing:
        return False
    age = request.created_by_caller_ago
    return age is None or age > rule.write_once_grace_seconds
