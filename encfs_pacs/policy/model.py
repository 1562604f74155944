"""Rule and policy types of the allow-list (no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Op(enum.StrEnum):
    """Operations a rule can grant. ``STAT`` is internal: seeing a name's attributes."""

    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    RENAME = "rename"
    SETATTR = "setattr"
    LIST = "list"
    STAT = "stat"


GRANTABLE_OPS: tuple[Op, ...] = (Op.READ, Op.WRITE, Op.CREATE, Op.DELETE, Op.RENAME, Op.SETATTR, Op.LIST)
# Operations that change or remove what is already stored: write-once and the rate guard act on them.
DESTRUCTIVE_OPS = frozenset({Op.WRITE, Op.DELETE, Op.RENAME, Op.SETATTR})
# A ciphertext view is a raw, read-only copy for backup agents.
CIPHERTEXT_OPS = frozenset({Op.READ, Op.LIST})


class View(enum.StrEnum):
    PLAINTEXT = "plaintext"
    CIPHERTEXT = "ciphertext"
    DENY = "deny"


@dataclass(frozen=True)
class RateLimit:
    """At most ``changes`` rewrites/renames/deletes of existing files per ``seconds``."""

    changes: int
    seconds: float


@dataclass(frozen=True)
class Rule:
    """One allow-list rule. Every condition that is set must hold for the rule to match."""

    id: str
    exe: str | None = None
    sha256: str | None = None
    uid: int | None = None
    user: str | None = None  # as written in the file, for messages
    gid: int | None = None
    group: str | None = None
    unit: str | None = None
    args: str | None = None  # fnmatch pattern over the command line joined by single spaces
    path: str = "/"
    ops: frozenset[Op] = frozenset(GRANTABLE_OPS)
    view: View = View.PLAINTEXT
    write_once: bool = False
    write_once_grace_seconds: float = 60.0
    rate_limit: RateLimit | None = None
    allow_traced: bool = False  # a debugger or LD_PRELOAD may act for the program: deny unless set
    expires: datetime | None = None  # break-glass rules end by themselves
    reason: str | None = None
    alert: bool = False  # every use is a security alert (break-glass)
    comment: str | None = None
    line: int | None = None  # where the rule starts in its file, for messages


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    source: str = "<none>"
    digest: str = ""  # SHA-256 of the file's bytes: names the version in audit records
    warnings: tuple[str, ...] = field(default=())

    def rule(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)


@dataclass(frozen=True)
class Caller:
    """Who is asking, as established from the FUSE request and /proc.

    ``unidentified`` holds the reason when identity could not be established reliably (the
    process exited, its pid was reused, its executable was deleted or replaced, /proc was
    unreadable); such a caller matches no rule and is denied.
    """

    pid: int
    uid: int
    gid: int
    tgid: int | None = None
    groups: frozenset[int] = frozenset()
    user: str | None = None
    exe: str | None = None
    sha256: str | None = None
    unit: str | None = None
    argv: tuple[str, ...] = ()
    loginuid: int | None = None
    session: int | None = None
    start_time: int | None = None  # clock ticks since boot of the process (tgid)
    traced: str | None = None  # why another program may act for this one (debugger, LD_PRELOAD)
    unidentified: str | None = None

    @property
    def process_key(self) -> tuple[int, int]:
        """Identifies one process for its lifetime (pids are reused, start times are not)."""
        return (self.tgid or self.pid, self.start_time or 0)

    def describe(self) -> str:
        program = self.exe or "unknown program"
        return f"pid {self.pid} ({program}, uid {self.uid})"


@dataclass(frozen=True)
class Request:
    """One access to decide: ``path`` is inside the mount ('/' is its root)."""

    op: Op
    path: str
    existing: bool = True  # the object exists already (write-once cares)
    # Seconds since this same process created the object during this mount, if it did:
    # a write-once rule lets the creator finish storing a file within its grace period.
    created_by_caller_ago: float | None = None
