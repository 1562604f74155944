"""The access gate without a mount: fake resolver, a list as the audit trail, injected clocks."""

from __future__ import annotations

import errno
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from encfs_pacs.access import AccessGate, Grant, NullAudit, open_gate
from encfs_pacs.errors import AccessDenied, IntegrityError
from encfs_pacs.policy.guard import RateGuard, RecentCreations
from encfs_pacs.policy.holder import PolicyHolder
from encfs_pacs.policy.model import Caller, Op, Policy, RateLimit, Rule, View

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
PACS_EXE = "/opt/pacs/bin/server"
PACS = Caller(pid=100, uid=1000, gid=1000, tgid=100, groups=frozenset({2000, 1000}), user="pacs",
              exe=PACS_EXE, sha256="a" * 64, unit="pacs.service", argv=(PACS_EXE, "--serve"),
              loginuid=1000, session=3, start_time=5000)
PACS_WORKER = replace(PACS, pid=101, tgid=100)  # another thread of the same process
PACS_2 = replace(PACS, pid=110, tgid=110, start_time=5100)  # a second PACS process
CP = Caller(pid=200, uid=1001, gid=1001, tgid=200, user="eve", exe="/usr/bin/cp", sha256="b" * 64,
            argv=("cp", "-r", "/mnt/db", "/tmp"), start_time=6000)
GHOST = Caller(pid=300, uid=1001, gid=1001, unidentified="process 300 is gone")


class FakeResolver:
    """Callers by pid; the pid in the FUSE context selects who is asking."""

    def __init__(self, *callers: Caller) -> None:
        self.callers = {c.pid: c for c in callers}
        self.calls: list[tuple[int, int, int]] = []

    def resolve(self, pid: int, uid: int, gid: int, reuse_within: float = 0.0) -> Caller:
        self.calls.append((pid, uid, gid))
        return self.callers[pid]


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def ctx(caller: Caller) -> tuple[int, int, int]:
    return (caller.uid, caller.gid, caller.pid)


def make_gate(*rules: Rule, learn: bool = False, allow_all: bool = False,
              now: datetime = NOW) -> tuple[AccessGate, list[dict[str, Any]], Clock]:
    audit: list[dict[str, Any]] = []
    holder = PolicyHolder(None, audit.append, policy=Policy(rules=rules, source="test.toml"))
    gate = AccessGate(holder, audit, learn=learn, allow_all=allow_all,
                      resolver=FakeResolver(PACS, PACS_WORKER, PACS_2, CP, GHOST),  # type: ignore[arg-type]
                      clock=lambda: now)
    clock = Clock()
    gate.created = RecentCreations(clock)
    gate.rate_guard = RateGuard(clock)
    return gate, audit, clock


def reuse_pid(gate: AccessGate, caller: Caller) -> Caller:
    """From now on the caller's pid belongs to a new process (same program, later start)."""
    reused = replace(caller, start_time=(caller.start_time or 0) + 1)
    gate.resolver.callers[reused.pid] = reused  # type: ignore[attr-defined]
    return reused


def test_fake_resolver_sees_the_fuse_context() -> None:
    gate, _, _ = make_gate(Rule("pacs", exe=PACS_EXE))
    gate.authorize((1000, 1000, 110), Op.READ, "/db/1.dcm")
    assert gate.resolver.calls == [(110, 1000, 1000)]  # type: ignore[attr-defined]


PACS_RULE = Rule("pacs", exe=PACS_EXE, sha256="a" * 64, path="/db")


def test_allowed_returns_a_grant_with_view_and_rule() -> None:
    gate, audit, _ = make_gate(PACS_RULE)
    grant = gate.authorize(ctx(PACS_2), Op.READ, "/db/1.dcm", event="open")
    assert isinstance(grant, Grant)
    assert (grant.view, grant.decision.rule_id, grant.path, grant.op) == (View.PLAINTEXT, "pacs", "/db/1.dcm",
                                                                          Op.READ)
    assert grant.caller is PACS_2
    assert not [r for r in audit if r["outcome"] != "allowed"]


def test_ciphertext_grant() -> None:
    gate, _, _ = make_gate(Rule("backup", exe="/usr/bin/cp", view=View.CIPHERTEXT,
                                ops=frozenset({Op.READ, Op.LIST})))
    assert gate.authorize(ctx(CP), Op.READ, "/db/1.dcm").view is View.CIPHERTEXT


def test_denied_raises_eacces_and_audits_once() -> None:
    gate, audit, _ = make_gate(PACS_RULE)
    with pytest.raises(AccessDenied) as info:
        gate.authorize(ctx(CP), Op.READ, "/db/1.dcm", event="open")
    assert info.value.errno == errno.EACCES
    assert "/db/1.dcm" in str(info.value) and "pid 200" in str(info.value)
    (record,) = audit
    assert record["event"] == "open"
    assert (record["outcome"], record["errno"], record["op"], record["rule"], record["view"]) == (
        "denied", 13, "read", None, "deny")
    assert record["who"] == {"uid": 1001, "gid": 1001, "groups": [], "user": "eve", "loginuid": None,
                             "session": None}
    assert record["program"] == {"pid": 200, "tgid": 200, "exe": "/usr/bin/cp", "sha256": "b" * 64,
                                 "unit": None, "argv": ["cp", "-r", "/mnt/db", "/tmp"]}
    assert record["object"] == {"path": "/db/1.dcm"}
    assert "deny by default" in record["detail"]


def test_denial_event_defaults_to_the_operation() -> None:
    gate, audit, _ = make_gate()
    with pytest.raises(AccessDenied):
        gate.authorize(ctx(CP), Op.DELETE, "/db/1.dcm")
    assert audit[0]["event"] == "delete"


def test_denial_by_a_deny_rule_names_the_rule() -> None:
    gate, audit, _ = make_gate(Rule("no-cp", exe="/usr/bin/cp", view=View.DENY), Rule("all"))
    with pytest.raises(AccessDenied):
        gate.authorize(ctx(CP), Op.LIST, "/", event="list")
    assert [(r["outcome"], r["rule"]) for r in audit] == [("denied", "no-cp")]
    gate.authorize(ctx(PACS_2), Op.LIST, "/")


def test_who_lists_groups_sorted() -> None:
    gate, audit, _ = make_gate()
    with pytest.raises(AccessDenied):
        gate.authorize(ctx(PACS_2), Op.READ, "/x")
    assert audit[0]["who"]["groups"] == [1000, 2000]
    assert (audit[0]["who"]["loginuid"], audit[0]["who"]["session"]) == (1000, 3)


def test_unidentified_caller_is_denied_and_the_reason_recorded() -> None:
    gate, audit, _ = make_gate(Rule("anyone"))
    with pytest.raises(AccessDenied, match="not identified"):
        gate.authorize(ctx(GHOST), Op.READ, "/db/1.dcm")
    (record,) = audit
    assert record["outcome"] == "denied"
    assert record["program"]["unidentified"] == "process 300 is gone"
    assert record["program"]["exe"] is None


def test_learn_mode_allows_but_records_what_it_would_deny() -> None:
    gate, audit, _ = make_gate(PACS_RULE, learn=True)
    grant = gate.authorize(ctx(CP), Op.WRITE, "/db/1.dcm", event="open")
    assert grant.decision.allowed and grant.view is View.PLAINTEXT
    (record,) = audit
    assert (record["event"], record["outcome"], record["errno"], record["op"]) == (
        "open", "learn-denied", 13, "write")
    assert record["detail"].startswith("learn mode, would deny: ")
    assert record["program"]["exe"] == "/usr/bin/cp"
    # What the policy allows is not reported.
    gate.authorize(ctx(PACS_2), Op.WRITE, "/db/1.dcm")
    assert len(audit) == 1


def test_no_policy_allows_everyone_without_records() -> None:
    gate, audit, _ = make_gate(allow_all=True)
    for caller in (CP, GHOST):
        grant = gate.authorize(ctx(caller), Op.DELETE, "/db/1.dcm")
        assert grant.decision.allowed and grant.view is View.PLAINTEXT
    assert audit == []


def test_no_policy_and_no_audit_trail_reads_no_identity() -> None:
    class Refuse:
        def resolve(self, *args: Any) -> Caller:
            raise AssertionError("/proc read although nothing needs the caller's identity")

    gate = AccessGate(PolicyHolder(None, NullAudit().append), NullAudit(), allow_all=True,
                      resolver=Refuse())  # type: ignore[arg-type]
    for op in (Op.CREATE, Op.READ, Op.DELETE, Op.STAT):
        assert gate.authorize((0, 0, 4242), op, "/db/1.dcm").decision.allowed
    gate.audit = []  # type: ignore[assignment]  # an audit trail (as the mount sets it): needed again
    with pytest.raises(AssertionError, match="/proc read"):
        gate.authorize((0, 0, 4242), Op.CREATE, "/db/1.dcm")


def test_open_gate_without_a_policy_is_no_policy() -> None:
    audit: list[dict[str, Any]] = []
    gate = open_gate(None, audit)
    assert gate.allow_all and not gate.learn
    assert gate.policy.source == "--no-policy"


def test_null_audit_accepts_records() -> None:
    assert NullAudit().append({"event": "x"}) is None


# ------------------------------------------------------------------------------ rate guard

GUARDED = Rule("pacs", exe=PACS_EXE, rate_limit=RateLimit(changes=3, seconds=60.0))


def test_rate_guard_trips_then_blocks_the_process_for_everything() -> None:
    gate, audit, clock = make_gate(GUARDED)
    for number in range(3):
        gate.authorize(ctx(PACS_2), Op.DELETE, f"/db/{number}.dcm", event="delete")
        clock.now += 1
    assert audit == []
    with pytest.raises(AccessDenied, match="rate guard"):
        gate.authorize(ctx(PACS_2), Op.RENAME, "/db/3.dcm", event="rename")
    alert, denial = audit
    assert (alert["event"], alert["outcome"], alert["alert"], alert["rule"]) == (
        "security-alert", "denied", True, "pacs")
    assert "more than 3" in alert["detail"] and alert["object"]["path"] == "/db/3.dcm"
    assert (denial["event"], denial["outcome"], denial["errno"], denial["rule"]) == (
        "rename", "denied", 13, "pacs")
    # Blocked for the rest of its life, reads included, even much later.
    clock.now += 3600
    with pytest.raises(AccessDenied, match="rate guard"):
        gate.authorize(ctx(PACS_2), Op.READ, "/db/9.dcm", event="open")
    assert audit[-1]["outcome"] == "denied" and audit[-1]["event"] == "open"
    assert len([r for r in audit if r["event"] == "security-alert"]) == 1


def test_rate_guard_is_per_process() -> None:
    gate, _, _ = make_gate(GUARDED)
    for number in range(4):
        with pytest.raises(AccessDenied) if number == 3 else _no_error():
            gate.authorize(ctx(PACS_2), Op.WRITE, f"/db/{number}.dcm")
    with pytest.raises(AccessDenied, match="rate guard"):
        gate.authorize(ctx(PACS_2), Op.READ, "/db/0.dcm")
    # Another PACS process, and a new process that got the blocked one's pid, are not blocked.
    gate.authorize(ctx(PACS), Op.WRITE, "/db/0.dcm")
    gate.authorize(ctx(PACS_WORKER), Op.READ, "/db/0.dcm")
    gate.authorize(ctx(reuse_pid(gate, PACS_2)), Op.WRITE, "/db/0.dcm")


def test_rate_guard_ignores_new_files_and_reads() -> None:
    gate, audit, _ = make_gate(GUARDED)
    for number in range(20):
        gate.authorize(ctx(PACS_2), Op.CREATE, f"/db/new{number}.dcm", existing=False)
        gate.authorize(ctx(PACS_2), Op.WRITE, f"/db/new{number}.dcm", existing=False)
        gate.authorize(ctx(PACS_2), Op.READ, f"/db/{number}.dcm")
        gate.authorize(ctx(PACS_2), Op.LIST, "/db")
    assert audit == []


def test_threads_of_one_process_share_its_rate_guard() -> None:
    gate, _, _ = make_gate(GUARDED)
    gate.authorize(ctx(PACS), Op.DELETE, "/db/1.dcm")
    gate.authorize(ctx(PACS_WORKER), Op.DELETE, "/db/2.dcm")
    gate.authorize(ctx(PACS), Op.DELETE, "/db/3.dcm")
    with pytest.raises(AccessDenied, match="rate guard"):
        gate.authorize(ctx(PACS_WORKER), Op.DELETE, "/db/4.dcm")


def test_rate_guard_does_not_count_the_creator_finishing_its_new_files() -> None:
    gate, _, _ = make_gate(replace(GUARDED, write_once=True))
    for number in range(10):
        temp = f"/db/incoming/{number}.part"
        grant = gate.authorize(ctx(PACS_2), Op.CREATE, temp, existing=False)
        gate.created_by(grant, temp)
        gate.authorize(ctx(PACS_2), Op.SETATTR, temp)  # e.g. utimens/chmod after writing
        gate.authorize(ctx(PACS_2), Op.RENAME, temp)
        gate.renamed(temp, f"/db/{number}.dcm")


class _no_error:  # noqa: N801 - reads like pytest.raises at the call site
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


# ------------------------------------------------------------------------------ break-glass

BREAK_GLASS = Rule("bg", exe="/usr/bin/cp", expires=NOW + timedelta(hours=2), reason="incident 42",
                   alert=True)


def test_break_glass_use_is_a_security_alert() -> None:
    gate, audit, _ = make_gate(BREAK_GLASS)
    grant = gate.authorize(ctx(CP), Op.READ, "/db/1.dcm", event="open")
    assert grant.decision.rule_id == "bg"
    (alert,) = audit
    assert (alert["event"], alert["outcome"], alert["alert"], alert["rule"], alert["op"]) == (
        "security-alert", "allowed", True, "bg", "read")
    assert "incident 42" in alert["detail"]
    assert alert["program"]["exe"] == "/usr/bin/cp" and alert["object"]["path"] == "/db/1.dcm"
    gate.authorize(ctx(CP), Op.READ, "/db/2.dcm")
    assert len(audit) == 2  # every use


def test_expired_break_glass_is_denied() -> None:
    gate, audit, _ = make_gate(BREAK_GLASS, now=NOW + timedelta(hours=3))
    with pytest.raises(AccessDenied):
        gate.authorize(ctx(CP), Op.READ, "/db/1.dcm")
    assert [r["outcome"] for r in audit] == ["denied"]


def test_non_alerting_rule_use_is_not_an_alert() -> None:
    gate, audit, _ = make_gate(replace(BREAK_GLASS, alert=False))
    gate.authorize(ctx(CP), Op.READ, "/db/1.dcm")
    assert audit == []


# ------------------------------------------------------------------------------ write-once

STORE = Rule("store", exe=PACS_EXE, write_once=True, write_once_grace_seconds=60.0)


def test_write_once_grace_belongs_to_the_creating_process() -> None:
    gate, audit, clock = make_gate(STORE)
    grant = gate.authorize(ctx(PACS_2), Op.CREATE, "/db/new.dcm", existing=False)
    gate.created_by(grant, "/db/new.dcm")
    clock.now += 10
    gate.authorize(ctx(PACS_2), Op.WRITE, "/db/new.dcm")  # the creator, within its grace
    with pytest.raises(AccessDenied, match="write-once"):
        gate.authorize(ctx(PACS), Op.WRITE, "/db/new.dcm")  # another process of the same program
    with pytest.raises(AccessDenied, match="write-once"):
        gate.authorize(ctx(PACS_2), Op.DELETE, "/db/other.dcm")  # a file it did not create
    clock.now += 60
    with pytest.raises(AccessDenied, match="write-once"):
        gate.authorize(ctx(PACS_2), Op.SETATTR, "/db/new.dcm")  # grace is over
    assert [r["outcome"] for r in audit] == ["denied"] * 3
    assert {r["rule"] for r in audit} == {"store"}


def test_write_once_grace_is_lost_to_a_reused_pid() -> None:
    gate, _, _ = make_gate(STORE)
    grant = gate.authorize(ctx(PACS_2), Op.CREATE, "/db/new.dcm", existing=False)
    gate.created_by(grant, "/db/new.dcm")
    reused = reuse_pid(gate, PACS_2)
    with pytest.raises(AccessDenied, match="write-once"):
        gate.authorize(ctx(reused), Op.WRITE, "/db/new.dcm")


def test_write_once_rename_keeps_grace_and_remove_forgets() -> None:
    gate, _, _ = make_gate(STORE)
    grant = gate.authorize(ctx(PACS_2), Op.CREATE, "/db/tmp.part", existing=False)
    gate.created_by(grant, "/db/tmp.part")
    gate.authorize(ctx(PACS_2), Op.RENAME, "/db/tmp.part")
    gate.renamed("/db/tmp.part", "/db/final.dcm")
    gate.authorize(ctx(PACS_2), Op.WRITE, "/db/final.dcm")
    with pytest.raises(AccessDenied):
        gate.authorize(ctx(PACS_2), Op.WRITE, "/db/tmp.part")
    gate.removed("/db/final.dcm")
    with pytest.raises(AccessDenied):
        gate.authorize(ctx(PACS_2), Op.WRITE, "/db/final.dcm")


def test_without_a_policy_creations_are_not_remembered() -> None:
    # --no-policy: no write-once rule can ask, so remembering would be memory and time for nothing
    gate, _, _ = make_gate(allow_all=True)
    grant = gate.authorize(ctx(PACS_2), Op.CREATE, "/db/new.dcm", existing=False)
    gate.created_by(grant, "/db/new.dcm")
    assert len(gate.created) == 0
    policed, _, _ = make_gate(STORE)
    grant = policed.authorize(ctx(PACS_2), Op.CREATE, "/db/new.dcm", existing=False)
    policed.created_by(grant, "/db/new.dcm")
    assert len(policed.created) == 1


# ------------------------------------------------------------------------------ audited()

def _grant(gate: AccessGate) -> Grant:
    return gate.authorize(ctx(PACS_2), Op.WRITE, "/db/1.dcm", event="open")


def test_audited_records_success() -> None:
    gate, audit, _ = make_gate(PACS_RULE)
    grant = _grant(gate)
    with gate.audited(grant, "truncate", size=0):
        pass
    (record,) = audit
    assert (record["event"], record["outcome"], record["errno"], record["op"], record["rule"]) == (
        "truncate", "allowed", None, "write", "pacs")
    assert record["size"] == 0 and record["object"] == {"path": "/db/1.dcm"}
    assert record["program"]["pid"] == PACS_2.pid


def test_audited_records_an_oserror_and_reraises() -> None:
    gate, audit, _ = make_gate(PACS_RULE)
    grant = _grant(gate)
    with pytest.raises(OSError) as info, gate.audited(grant, "delete"):
        raise OSError(errno.ENOSPC, "full")
    assert info.value.errno == errno.ENOSPC
    (record,) = audit
    assert (record["event"], record["outcome"], record["errno"]) == ("delete", "error", errno.ENOSPC)


def test_audited_records_a_library_error_with_its_errno() -> None:
    gate, audit, _ = make_gate(PACS_RULE)
    grant = _grant(gate)
    with pytest.raises(IntegrityError), gate.audited(grant, "open"):
        raise IntegrityError("chunk 3 failed authentication")
    (record,) = audit
    assert (record["outcome"], record["errno"]) == ("error", errno.EIO)
    assert record["detail"] == "chunk 3 failed authentication"


def test_release_and_integrity_records() -> None:
    gate, audit, _ = make_gate(PACS_RULE)
    grant = _grant(gate)
    grant.bytes_read, grant.bytes_written = 10, 20
    gate.record_release(grant, inode=77)
    gate.record_integrity_failure("/db/1.dcm", "tag mismatch")
    release, integrity = audit
    assert (release["event"], release["bytes_read"], release["bytes_written"]) == ("release", 10, 20)
    assert release["object"] == {"path": "/db/1.dcm", "inode": 77}
    assert (integrity["event"], integrity["errno"], integrity["alert"]) == (
        "integrity-failure", errno.EIO, True)


def test_policy_change_takes_effect_at_the_next_decision() -> None:
    gate, _, _ = make_gate()
    with pytest.raises(AccessDenied):
        gate.authorize(ctx(PACS_2), Op.READ, "/db/1.dcm")
    gate.holder._policy = Policy(rules=(PACS_RULE,), source="new.toml")  # what a reload does
    gate.authorize(ctx(PACS_2), Op.READ, "/db/1.dcm")


def test_names_that_are_not_utf8_reach_the_trail_escaped() -> None:
    """mfusepy decodes file names with surrogateescape; the log takes such bytes only as \\xNN."""
    gate, audit, _ = make_gate(PACS_RULE)
    with pytest.raises(AccessDenied):
        gate.authorize(ctx(CP), Op.READ, "/db/caf\udce9.dcm", event="open")
    grant = gate.authorize(ctx(PACS), Op.RENAME, "/db/a\udcff.dcm", event="rename")
    with gate.audited(grant, "rename", object={"new_path": "/db/b\udcfe.dcm"}):
        pass
    gate.record_integrity_failure("/db/c\udcfd.dcm", "chunk 0 of /db/c\udcfd.dcm failed")
    paths = [r["object"].get("path") for r in audit]
    assert paths == ["/db/caf\\xe9.dcm", "/db/a\\xff.dcm", "/db/c\\xfd.dcm"]
    assert audit[1]["object"]["new_path"] == "/db/b\\xfe.dcm"
    assert audit[2]["detail"] == "chunk 0 of /db/c\\xfd.dcm failed"
