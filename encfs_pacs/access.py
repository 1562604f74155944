"""The access gate: caller -> policy decision -> audit record, for the FUSE adapter.

Everything the file system asks before touching the volume lives here, so the FUSE layer
stays a thin translation and this logic is testable without a mount. Decisions are taken at
open/create and for each metadata operation; a read or write on an open handle costs nothing
here. Every denial is audited; so is every open, create, delete, rename, truncate and setattr
that was allowed, with its outcome.
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .audit.canonical import text
from .errors import AccessDenied, EncfsPacsError
from .policy.decide import Decision, decide, stored_before
from .policy.guard import RateGuard, RecentCreations
from .policy.holder import PolicyHolder
from .policy.identity import IdentityResolver
from .policy.model import DESTRUCTIVE_OPS, Caller, Op, Policy, Request, View

log = logging.getLogger("encfs_pacs.access")
STAT_REUSE_SECONDS = 0.2
# Audit events after which a file's DICOM header may no longer be readable at its path.
CHANGES_STORED_FILES = frozenset({"delete", "rename", "truncate"})


_ALLOW_ALL = Decision(True, View.PLAINTEXT, None, "--no-policy: every process is allowed")


class AuditSink(Protocol):
    def append(self, payload: dict[str, Any]) -> None: ...


class NullAudit:
    """No audit trail configured: records go nowhere (the mount says so at start)."""

    def append(self, payload: dict[str, Any]) -> None:
        return None


@dataclass
class Grant:
    """What an allowed open established; kept with the handle for its release summary."""

    caller: Caller
    decision: Decision
    path: str
    op: Op
    bytes_read: int = 0
    bytes_written: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def view(self) -> View:
        return self.decision.view


def who(caller: Caller) -> dict[str, Any]:
    return {"uid": caller.uid, "gid": caller.gid, "groups": sorted(caller.groups), "user": caller.user,
            "loginuid": caller.loginuid, "session": caller.session}


def program(caller: Caller) -> dict[str, Any]:
    return {"pid": caller.pid, "tgid": caller.tgid, "exe": caller.exe, "sha256": caller.sha256,
            "unit": caller.unit, "argv": list(caller.argv)}


class AccessGate:
    """Decides and audits. ``policy_holder`` None with ``allow_all`` means --no-policy."""

    def __init__(self, holder: PolicyHolder, audit: AuditSink, *, learn: bool = False,
                 allow_all: bool = False, resolver: IdentityResolver | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.holder = holder
        self.audit = audit
        holder.on_event = lambda payload: self.audit.append(payload)  # follows a later audit swap
        self.learn = learn
        self.allow_all = allow_all
        self.resolver = resolver or IdentityResolver()
        self.created = RecentCreations()
        self.rate_guard = RateGuard()
        self._clock = clock

    @property
    def policy(self) -> Policy:
        return self.holder.policy

    # -- decisions -------------------------------------------------------------------------

    def authorize(self, context: tuple[int, int, int], op: Op, path: str, *, existing: bool = True,
                  event: str | None = None) -> Grant:
        """Decide one access; raises AccessDenied (EACCES) after auditing the denial.

        ``context`` is the FUSE request's (uid, gid, pid). ``event`` names the audit event
        written for a denial (default: the operation).
        """
        uid, gid, pid = context
        if self.allow_all and (op is Op.STAT or isinstance(self.audit, NullAudit)):
            # --no-policy: nothing to decide and allowed stats are not recorded (nor is anything
            # without an audit log), so reading /proc would only cost time (45 % of the
            # daemon's time on small-file creates).
            return Grant(Caller(pid=pid, uid=uid, gid=gid), _ALLOW_ALL, path, op)
        if op is not Op.STAT:
            self._audit_must_work()
        # Attribute lookups come in bursts (ls -l, find, path walks): for them a check of the
        # same thread within the last 0.2 s is enough (the kernel itself caches attributes 1 s).
        caller = self.resolver.resolve(pid, uid, gid, STAT_REUSE_SECONDS if op is Op.STAT else 0.0)
        request = Request(op, path, existing,
                          self.created.age_for(path, caller.process_key) if existing else None)
        decision = self._decide(caller, request)
        if not decision.allowed:
            return self._refuse(caller, request, decision, event)
        if decision.rule is not None and decision.rule.alert:
            self._record("security-alert", caller, decision, path, outcome="allowed", op=op,
                         detail=f"break-glass/alerting rule {decision.rule.id} used: "
                                f"{decision.rule.reason or 'no reason given'}", alert=True)
        return Grant(caller, decision, path, op)

    def _decide(self, caller: Caller, request: Request) -> Decision:
        if self.allow_all:
            return _ALLOW_ALL
        blocked = self.rate_guard.blocked(caller.process_key)
        if blocked is not None:
            return Decision(False, View.DENY, None, blocked)
        decision = decide(self.policy, caller, request, self._clock())
        rule = decision.rule
        if (decision.allowed and rule is not None and rule.rate_limit is not None
                and request.op in DESTRUCTIVE_OPS and stored_before(rule, request)):
            # Only files stored earlier count: a PACS finishing (renaming, fixing up) the files
            # it is storing right now is not rewriting the archive.
            tripped = self.rate_guard.count(caller.process_key, rule.id, rule.rate_limit.changes,
                                            rule.rate_limit.seconds)
            if tripped is not None:
                self._record("security-alert", caller, decision, request.path, outcome="denied",
                             op=request.op, detail=tripped, alert=True)
                return Decision(False, View.DENY, rule, tripped, decision.trace)
        return decision

    def _refuse(self, caller: Caller, request: Request, decision: Decision, event: str | None) -> Grant:
        if self.learn:
            self._record(event or str(request.op), caller, decision, request.path,
                         outcome="learn-denied", op=request.op, errno=errno_module.EACCES,
                         detail=f"learn mode, would deny: {decision.reason}")
            log.info("learn mode: would deny %s %s to %s: %s", request.op, request.path,
                     caller.describe(), decision.reason)
            return Grant(caller, Decision(True, View.PLAINTEXT, None, "learn mode"), request.path, request.op)
        self._record(event or str(request.op), caller, decision, request.path, outcome="denied",
                     op=request.op, errno=errno_module.EACCES, detail=decision.reason)
        log.warning("denied %s %s to %s: %s", request.op, request.path, caller.describe(), decision.reason)
        raise AccessDenied(f"{request.op} {request.path} denied to {caller.describe()}: {decision.reason}")

    # -- audit records ----------------------------------------------------------------------

    def _audit_must_work(self) -> None:
        """Fail closed: no access the audit trail cannot record (unless --audit-fail-open)."""
        check = getattr(self.audit, "check", None)
        if check is not None:
            check()

    def _tags_before_change(self, path: str) -> dict[str, str] | None:
        tags_now = getattr(self.audit, "tags_now", None)
        return tags_now(path) if tags_now is not None else None

    def _record(self, event: str, caller: Caller, decision: Decision | None, path: str, *,
                outcome: str, op: Op | None = None, errno: int | None = None, **extra: Any) -> None:
        if isinstance(self.audit, NullAudit):
            return  # no trail: building the record would be work for nothing on every open
        payload: dict[str, Any] = {
            "event": event, "outcome": outcome, "errno": errno,
            "op": str(op) if op is not None else None,
            "rule": decision.rule_id if decision is not None else None,
            "view": str(decision.view) if decision is not None else None,
            "who": who(caller), "program": program(caller), "object": {"path": text(path)},
        }
        if caller.unidentified is not None:
            payload["program"]["unidentified"] = caller.unidentified
        # Names may hold bytes that are not UTF-8 (mfusepy decodes with surrogateescape): the
        # log takes them only as \xNN escapes (docs/audit-format.md).
        payload["object"].update({key: text(value) if isinstance(value, str) else value
                                  for key, value in extra.pop("object", {}).items()})
        payload.update(extra)
        self.audit.append(payload)

    @contextlib.contextmanager
    def audited(self, grant: Grant, event: str, **extra: Any) -> Iterator[None]:
        """Run an allowed operation and record its outcome (the errno if it failed)."""
        if event in CHANGES_STORED_FILES:  # after the change the header may be gone
            tags = self._tags_before_change(grant.path)
            if tags:
                extra["object"] = {**extra.get("object", {}), "dicom": tags}
        try:
            yield
        except OSError as exc:
            self._record(event, grant.caller, grant.decision, grant.path, outcome="error",
                         op=grant.op, errno=exc.errno, **extra)
            raise
        except EncfsPacsError as exc:
            self._record(event, grant.caller, grant.decision, grant.path, outcome="error",
                         op=grant.op, errno=exc.errno, detail=str(exc), **extra)
            raise
        self._record(event, grant.caller, grant.decision, grant.path, outcome="allowed", op=grant.op,
                     **extra)

    def record_release(self, grant: Grant, inode: int | None) -> None:
        self._record("release", grant.caller, grant.decision, grant.path, outcome="allowed", op=grant.op,
                     bytes_read=grant.bytes_read, bytes_written=grant.bytes_written,
                     object={"inode": inode})

    def record_integrity_failure(self, path: str, detail: str) -> None:
        self.audit.append({"event": "integrity-failure", "outcome": "error", "alert": True,
                           "errno": errno_module.EIO, "object": {"path": text(path)}, "detail": text(detail)})

    # -- bookkeeping for write-once ---------------------------------------------------------

    def created_by(self, grant: Grant, path: str) -> None:
        if self.allow_all:
            return  # --no-policy: no write-once rule will ever ask
        self.created.remember(path, grant.caller.process_key)

    def renamed(self, old: str, new: str) -> None:
        self.created.moved(old, new)

    def removed(self, path: str) -> None:
        self.created.forget(path)


def open_gate(policy_path: Path | None, audit: AuditSink, *, learn: bool = False) -> AccessGate:
    """Load the policy (or --no-policy when ``policy_path`` is None) and build the gate."""
    holder = PolicyHolder(policy_path, audit.append)
    return AccessGate(holder, audit, learn=learn, allow_all=policy_path is None)
