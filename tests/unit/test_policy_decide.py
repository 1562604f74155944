"""The pure allow-list decision: a table of rules x callers x requests, and the trace.

Callers are built by hand (no /proc), so every identity attribute can be varied on its own:
a test that changes one attribute and expects the opposite outcome proves that attribute is
actually checked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from encfs_pacs.policy.decide import Decision, decide, path_within
from encfs_pacs.policy.model import GRANTABLE_OPS, Caller, Op, Policy, Request, Rule, View

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SHA_PACS = "a" * 64
SHA_OTHER = "b" * 64
SHA_PYTHON = "c" * 64
PACS_EXE = "/opt/pacs/bin/server"
PYTHON = "/usr/bin/python3"

PACS = Caller(
    pid=100, uid=1000, gid=1000, tgid=100, groups=frozenset({1000, 2000}), user="pacs",
    exe=PACS_EXE, sha256=SHA_PACS, unit="pacs.service",
    argv=(PACS_EXE, "--config", "/etc/pacs.json"), start_time=5000,
)
CP = Caller(pid=200, uid=1001, gid=1001, tgid=200, groups=frozenset({1001}), user="eve",
            exe="/usr/bin/cp", sha256=SHA_OTHER, unit=None, argv=("cp", "-r", "/mnt", "/tmp"),
            start_time=6000)
APP_PY = replace(PACS, exe=PYTHON, sha256=SHA_PYTHON,
                 argv=(PYTHON, "/opt/pacs/app.py", "--serve"))
EVIL_PY = replace(APP_PY, argv=(PYTHON, "/tmp/evil.py", "/opt/pacs/app.py"))


def caller(base: Caller = PACS, **changes: object) -> Caller:
    return replace(base, **changes)


def req(op: Op = Op.READ, path: str = "/db/study/1.dcm", **kw: object) -> Request:
    return Request(op, path, **kw)


def policy(*rules: Rule) -> Policy:
    return Policy(rules=rules, source="test.toml")


def run(rules: tuple[Rule, ...] | Rule, who: Caller, request: Request, now: datetime = NOW) -> Decision:
    rules = rules if isinstance(rules, tuple) else (rules,)
    return decide(policy(*rules), who, request, now)


@dataclass(frozen=True)
class Case:
    name: str
    rule: Rule
    caller: Caller
    request: Request
    allowed: bool
    why_not: str = ""  # expected fragment of the trace line when the rule is skipped


PINNED = Rule("pacs", exe=PACS_EXE, sha256=SHA_PACS)
INTERPRETER = Rule("app", exe=PYTHON, sha256=SHA_PYTHON, args=f"{PYTHON} /opt/pacs/app.py*")

CASES = [
    # executable path and content
    Case("exe+sha match", PINNED, PACS, req(), True),
    Case("replaced binary: same path, other content", PINNED, caller(sha256=SHA_OTHER), req(), False,
         "pinned SHA-256"),
    Case("binary without a hash (unreadable)", PINNED, caller(sha256=None), req(), False, "SHA-256"),
    Case("other executable", PINNED, CP, req(), False, "executable is /usr/bin/cp"),
    Case("exe only rule, any content", Rule("p", exe=PACS_EXE), caller(sha256=SHA_OTHER), req(), True),
    # user
    Case("uid match", Rule("u", uid=1000, user="pacs"), PACS, req(), True),
    Case("uid mismatch names the user", Rule("u", uid=1000, user="pacs"), CP, req(), False,
         "user is uid 1001, rule wants pacs"),
    Case("uid 0 rule is not 'unset'", Rule("u", uid=0, user="root"), PACS, req(), False, "uid 1000"),
    # groups
    Case("primary group", Rule("g", gid=1000, group="pacs"), caller(groups=frozenset()), req(), True),
    Case("supplementary group", Rule("g", gid=2000, group="imaging"), PACS, req(), True),
    Case("not in group", Rule("g", gid=2000, group="imaging"), CP, req(), False,
         "not in group imaging"),
    # systemd unit
    Case("unit match", Rule("s", unit="pacs.service"), PACS, req(), True),
    Case("other unit", Rule("s", unit="pacs.service"), caller(unit="cron.service"), req(), False,
         "systemd unit is cron.service"),
    Case("no unit at all", Rule("s", unit="pacs.service"), CP, req(), False, "systemd unit is none"),
    # interpreters: the binary is the same, the script decides
    Case("interpreter, allowed script", INTERPRETER, APP_PY, req(), True),
    Case("interpreter, other script naming the allowed one later", INTERPRETER, EVIL_PY, req(), False,
         "command line does not match"),
    Case("pattern is case-sensitive", replace(INTERPRETER, args=f"{PYTHON} /opt/pacs/App.py*"),
         APP_PY, req(), False, "command line"),
    # path prefix
    Case("prefix itself", Rule("d", path="/a"), PACS, req(path="/a"), True),
    Case("below prefix", Rule("d", path="/a"), PACS, req(path="/a/b/c"), True),
    Case("'/a' does not cover '/ab'", Rule("d", path="/a"), PACS, req(path="/ab"), False,
         "path /ab is outside /a"),
    Case("'/a' does not cover '/ab/c'", Rule("d", path="/a"), PACS, req(path="/ab/c"), False, "outside"),
    Case("root prefix covers all", Rule("d", path="/"), PACS, req(path="/x/y"), True),
    # seeing the folders above a prefix, but not listing or reading them
    Case("STAT of root above prefix", Rule("d", path="/db/studies"), PACS, req(Op.STAT, "/"), True),
    Case("STAT of parent above prefix", Rule("d", path="/db/studies"), PACS, req(Op.STAT, "/db"), True),
    Case("LIST of parent above prefix", Rule("d", path="/db/studies"), PACS, req(Op.LIST, "/db"), False,
         "outside"),
    Case("READ of a file above prefix", Rule("d", path="/db/studies"), PACS, req(Op.READ, "/db"), False,
         "outside"),
    Case("STAT of a sibling is not an ancestor", Rule("d", path="/db/studies"), PACS,
         req(Op.STAT, "/db/other"), False, "outside"),
    Case("STAT of '/d' is not an ancestor of '/db'", Rule("d", path="/db"), PACS, req(Op.STAT, "/d"), False,
         "outside"),
    # operation subsets
    Case("granted op", Rule("r", ops=frozenset({Op.READ, Op.LIST})), PACS, req(Op.LIST, "/db"), True),
    Case("ungranted op", Rule("r", ops=frozenset({Op.READ, Op.LIST})), PACS, req(Op.WRITE), False,
         "operation write not granted (grants list, read)"),
    Case("STAT with any grant", Rule("r", ops=frozenset({Op.CREATE})), PACS, req(Op.STAT), True),
    Case("STAT with no grant", Rule("r", ops=frozenset()), PACS, req(Op.STAT), False, "grants nothing"),
    # tracing
    Case("traced caller", Rule("t"), caller(traced="it is being traced by process 9 (debugger/ptrace)"),
         req(), False, "controlled by another program: it is being traced by process 9"),
    Case("LD_PRELOAD caller", Rule("t"), caller(traced="it was started with LD_PRELOAD set"), req(), False,
         "LD_PRELOAD"),
    Case("traced caller, allow_traced", Rule("t", allow_traced=True),
         caller(traced="it is being traced by process 9 (debugger/ptrace)"), req(), True),
    # temporary (break-glass) rules
    Case("expired", Rule("bg", expires=NOW - timedelta(seconds=1), reason="x"), PACS, req(), False,
         "expired at 2026-05-01T11:59:59+00:00"),
    Case("expires exactly now", Rule("bg", expires=NOW, reason="x"), PACS, req(), False, "expired"),
    Case("not yet expired", Rule("bg", expires=NOW + timedelta(hours=2), reason="x"), PACS, req(), True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_single_rule_table(case: Case) -> None:
    decision = run(case.rule, case.caller, case.request)
    assert decision.allowed is case.allowed, decision
    if case.allowed:
        assert decision.rule_id == case.rule.id
        assert decision.view is View.PLAINTEXT
        assert decision.trace == ()
    else:
        # The only rule was skipped: deny by default, and the trace says why.
        assert decision.rule is None
        assert decision.view is View.DENY
        assert "deny by default" in decision.reason
        assert len(decision.trace) == 1
        assert decision.trace[0].startswith(f"rule {case.rule.id}: ")
        assert case.why_not in decision.trace[0]


@pytest.mark.parametrize("prefix,path,inside", [
    ("/", "/", True), ("/", "/x", True), ("/a", "/a", True), ("/a", "/a/", True), ("/a", "/a/b", True),
    ("/a", "/ab", False), ("/a/b", "/a", False), ("/a b", "/a b/c", True), ("/a", "/b/a", False),
])
def test_path_within(prefix: str, path: str, inside: bool) -> None:
    assert path_within(path, prefix) is inside


def test_every_grantable_op_is_decided_separately() -> None:
    for granted in GRANTABLE_OPS:
        rule = Rule("one", ops=frozenset({granted}))
        for op in GRANTABLE_OPS:
            assert run(rule, PACS, req(op)).allowed is (op is granted), (granted, op)


def test_first_matching_rule_decides() -> None:
    rules = (
        Rule("raw", exe=PACS_EXE, view=View.CIPHERTEXT, ops=frozenset({Op.READ, Op.LIST})),
        Rule("plain", exe=PACS_EXE),
    )
    read = run(rules, PACS, req(Op.READ))
    assert (read.allowed, read.view, read.rule_id) == (True, View.CIPHERTEXT, "raw")
    # The first rule matches the caller but does not grant WRITE: the next one decides.
    write = run(rules, PACS, req(Op.WRITE))
    assert (write.allowed, write.view, write.rule_id) == (True, View.PLAINTEXT, "plain")
    assert write.trace == ("rule raw: operation write not granted (grants list, read)",)
    # Order matters: the same rules reversed give plaintext reads.
    assert run(rules[::-1], PACS, req(Op.READ)).view is View.PLAINTEXT


def test_view_deny_rule_denies_and_names_itself() -> None:
    rules = (Rule("no-cp", exe="/usr/bin/cp", view=View.DENY), Rule("everyone"))
    denied = run(rules, CP, req())
    assert (denied.allowed, denied.view, denied.rule_id) == (False, View.DENY, "no-cp")
    assert "rule no-cp denies" in denied.reason
    # The deny rule does not match the PACS, which falls through to the general rule.
    allowed = run(rules, PACS, req())
    assert (allowed.allowed, allowed.rule_id) == (True, "everyone")
    assert allowed.trace == ("rule no-cp: executable is /opt/pacs/bin/server, rule wants /usr/bin/cp",)


def test_deny_rule_scoped_to_a_folder_leaves_the_rest() -> None:
    rules = (Rule("no-secret", exe="/usr/bin/cp", path="/secret", view=View.DENY),
             Rule("cp-all", exe="/usr/bin/cp"))
    assert run(rules, CP, req(Op.READ, "/secret/x")).rule_id == "no-secret"
    assert not run(rules, CP, req(Op.READ, "/secret/x")).allowed
    assert run(rules, CP, req(Op.READ, "/public/x")).allowed
    assert run(rules, CP, req(Op.LIST, "/")).allowed
    assert not run(rules, CP, req(Op.STAT, "/secret")).allowed


def test_deny_rule_scoped_to_a_folder_does_not_deny_stat_of_its_ancestors() -> None:
    rules = (Rule("no-secret", exe="/usr/bin/cp", path="/secret", view=View.DENY),
             Rule("cp-all", exe="/usr/bin/cp"))
    decision = run(rules, CP, req(Op.STAT, "/"))
    assert decision.allowed, decision.reason
    assert decision.rule_id == "cp-all"


def test_ciphertext_view() -> None:
    rule = Rule("backup", exe="/usr/bin/restic", view=View.CIPHERTEXT, ops=frozenset({Op.READ, Op.LIST}))
    restic = caller(exe="/usr/bin/restic")
    decision = run(rule, restic, req(Op.READ))
    assert (decision.allowed, decision.view) == (True, View.CIPHERTEXT)
    assert not run(rule, restic, req(Op.WRITE)).allowed


def test_no_rules_denies_by_default() -> None:
    decision = run((), PACS, req())
    assert (decision.allowed, decision.view, decision.rule) == (False, View.DENY, None)
    assert decision.reason == "no rule allows this (deny by default)"
    assert decision.trace == ()


def test_unidentified_caller_matches_not_even_a_rule_without_conditions() -> None:
    anyone = Rule("anyone")
    assert run(anyone, PACS, req()).allowed  # the rule matches every identified caller
    ghost = caller(unidentified="process 100 is gone", exe=None, sha256=None)
    decision = run(anyone, ghost, req())
    assert (decision.allowed, decision.rule) == (False, None)
    assert decision.reason == "caller not identified: process 100 is gone"


def test_expired_break_glass_rule_falls_through_to_later_rules() -> None:
    rules = (Rule("bg", exe="/usr/bin/cp", expires=NOW - timedelta(minutes=1), reason="incident"),
             Rule("cp-read", exe="/usr/bin/cp", ops=frozenset({Op.READ})))
    assert run(rules, CP, req(Op.READ)).rule_id == "cp-read"
    assert not run(rules, CP, req(Op.WRITE)).allowed
    # Before it expired, the break-glass rule granted writes.
    earlier = NOW - timedelta(hours=1)
    assert run(rules, CP, req(Op.WRITE), now=earlier).rule_id == "bg"


def test_trace_explains_every_skipped_rule_in_order() -> None:
    rules = (
        Rule("r-exe", exe="/usr/bin/cp"),
        Rule("r-sha", exe=PACS_EXE, sha256=SHA_OTHER),
        Rule("r-user", uid=0, user="root"),
        Rule("r-path", path="/other"),
        Rule("r-ops", ops=frozenset({Op.LIST})),
        Rule("r-expired", expires=NOW - timedelta(days=1), reason="old"),
        Rule("r-ok", exe=PACS_EXE, sha256=SHA_PACS, uid=1000, path="/db"),
        Rule("r-never-tried"),
    )
    decision = run(rules, PACS, req(Op.READ, "/db/1.dcm"))
    assert (decision.allowed, decision.rule_id) == (True, "r-ok")
    assert [line.partition(":")[0] for line in decision.trace] == [
        "rule r-exe", "rule r-sha", "rule r-user", "rule r-path", "rule r-ops", "rule r-expired"]
    expected = ["executable is /opt/pacs/bin/server, rule wants /usr/bin/cp", "pinned SHA-256",
                "user is uid 1000, rule wants root", "path /db/1.dcm is outside /other",
                "operation read not granted", "expired at"]
    for line, fragment in zip(decision.trace, expected, strict=True):
        assert fragment in line, line


def test_trace_is_kept_on_denial() -> None:
    rules = (Rule("a", exe="/usr/bin/cp"), Rule("b", uid=0))
    decision = run(rules, PACS, req())
    assert not decision.allowed
    assert [line.split(":")[0] for line in decision.trace] == ["rule a", "rule b"]


# ------------------------------------------------------------------------------ write-once

WRITE_ONCE = Rule("store", exe=PACS_EXE, write_once=True, write_once_grace_seconds=60.0)


@pytest.mark.parametrize("op", [Op.WRITE, Op.DELETE, Op.RENAME, Op.SETATTR])
def test_write_once_refuses_changes_to_stored_files(op: Op) -> None:
    decision = run(WRITE_ONCE, PACS, req(op, existing=True))
    assert (decision.allowed, decision.rule_id) == (False, "store")
    assert "write-once" in decision.reason and str(op) in decision.reason
    # Without write_once, the same rule allows it: the flag is what refuses.
    assert run(replace(WRITE_ONCE, write_once=False), PACS, req(op, existing=True)).allowed


@pytest.mark.parametrize("op", [Op.READ, Op.LIST, Op.STAT])
def test_write_once_keeps_reading(op: Op) -> None:
    assert run(WRITE_ONCE, PACS, req(op, existing=True)).allowed


@pytest.mark.parametrize("op", [Op.CREATE, Op.WRITE, Op.RENAME])
def test_write_once_allows_new_files(op: Op) -> None:
    assert run(WRITE_ONCE, PACS, req(op, existing=False)).allowed


@pytest.mark.parametrize("age,allowed", [(0.0, True), (5.0, True), (59.9, True), (60.5, False),
                                         (3600.0, False)])
def test_write_once_grace_for_the_creator(age: float, allowed: bool) -> None:
    for op in (Op.WRITE, Op.SETATTR, Op.RENAME, Op.DELETE):
        decision = run(WRITE_ONCE, PACS, req(op, existing=True, created_by_caller_ago=age))
        assert decision.allowed is allowed, (op, age)


def test_write_once_grace_zero() -> None:
    rule = replace(WRITE_ONCE, write_once_grace_seconds=0.0)
    assert not run(rule, PACS, req(Op.WRITE, created_by_caller_ago=0.5)).allowed


def test_write_once_other_process_gets_no_grace() -> None:
    # The gate passes created_by_caller_ago=None when another process created the file.
    assert not run(WRITE_ONCE, PACS, req(Op.WRITE, existing=True, created_by_caller_ago=None)).allowed


def test_write_once_denial_is_final_even_if_a_later_rule_would_allow() -> None:
    rules = (WRITE_ONCE, Rule("anything-goes", exe=PACS_EXE))
    decision = run(rules, PACS, req(Op.DELETE))
    assert (decision.allowed, decision.rule_id) == (False, "store")
