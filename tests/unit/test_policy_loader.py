"""Policy files: a full valid file parses to the expected rules; every bad file is refused with a
message naming the file, the line of the offending [[rule]], the rule and the key. Also the
PolicyHolder: hot reload keeps the old policy on a bad edit, and unsafe files are refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from encfs_pacs.errors import PolicyInvalid
from encfs_pacs.policy import holder as holder_module
from encfs_pacs.policy.holder import PolicyHolder, check_file_safety, load_checked
from encfs_pacs.policy.loader import load_policy, parse_policy, rule_lines
from encfs_pacs.policy.model import Op, Policy, RateLimit, Rule, View

SRC = "/etc/encfs-pacs/test-policy.toml"
SHA = "0123456789abcdef" * 4
USERS = {"pacs": 1500, "backup": 1600}
GROUPS = {"imaging": 2500}


def parse(text: str) -> Policy:
    # dict.__getitem__ raises KeyError for an unknown name, as pwd.getpwnam does.
    return parse_policy(text, SRC, uid_of=USERS.__getitem__, gid_of=GROUPS.__getitem__)


def refused(text: str) -> str:
    with pytest.raises(PolicyInvalid) as info:
        parse(text)
    assert info.value.exit_code == 21
    message = str(info.value)
    assert "\n" not in message  # one line for the CLI
    return message


FULL = f'''# encfs-pacs allow-list
version = 1

[[rule]]
id = "pacs-server"
exe = "/opt/pacs/bin/server"
sha256 = "{SHA}"
user = "pacs"
group = "imaging"
unit = "pacs.service"
args = "/opt/pacs/bin/server *"
path = "/db/"
ops = ["read", "write", "create", "list"]
view = "plaintext"
write_once = true
write_once_grace_seconds = 30
max_changes = 100
window_seconds = 60.5
allow_traced = false
comment = "the PACS itself"

  [[ rule ]]   # a backup agent copies the encrypted bytes
id = "backup"
exe = "/usr/bin/restic"
sha256 = "{SHA}"
user = 0
group = 0
path = "/"
ops = ["read", "list"]
view = "ciphertext"

[[rule]]
id = "break-glass.cp_1"
exe = "/usr/bin/cp"
expires = 2026-11-29T18:00:00+01:00
reason = "incident 42: restore a study"
alert = true
allow_traced = true
ops = []

[[rule]]
id = "viewer"
args = "*viewer*"
view = "deny"
'''


def test_full_policy_parses_to_the_expected_rules() -> None:
    policy = parse(FULL)
    assert policy.source == SRC
    assert policy.digest == hashlib.sha256(FULL.encode()).hexdigest()
    assert policy.rules == (
        Rule(id="pacs-server", exe="/opt/pacs/bin/server", sha256=SHA, uid=1500, user="pacs", gid=2500,
             group="imaging", unit="pacs.service", args="/opt/pacs/bin/server *", path="/db",
             ops=frozenset({Op.READ, Op.WRITE, Op.CREATE, Op.LIST}), view=View.PLAINTEXT,
             write_once=True, write_once_grace_seconds=30.0, rate_limit=RateLimit(100, 60.5),
             allow_traced=False, comment="the PACS itself", line=4),
        Rule(id="backup", exe="/usr/bin/restic", sha256=SHA, uid=0, user="0", gid=0, group="0", path="/",
             ops=frozenset({Op.READ, Op.LIST}), view=View.CIPHERTEXT, line=22),
        Rule(id="break-glass.cp_1", exe="/usr/bin/cp",
             expires=datetime(2026, 11, 29, 17, 0, tzinfo=UTC), reason="incident 42: restore a study",
             alert=True, allow_traced=True, ops=frozenset(), line=32),
        Rule(id="viewer", args="*viewer*", view=View.DENY, line=41),
    )
    assert policy.rule("backup") is policy.rules[1]
    assert policy.rule("nope") is None


def test_defaults_of_a_minimal_rule() -> None:
    rule = parse('version = 1\n[[rule]]\nid = "r"\n').rules[0]
    assert rule == Rule(id="r", line=2)
    assert rule.ops == frozenset({Op.READ, Op.WRITE, Op.CREATE, Op.DELETE, Op.RENAME, Op.SETATTR, Op.LIST})
    assert Op.STAT not in rule.ops
    assert (rule.path, rule.view, rule.write_once, rule.rate_limit) == ("/", View.PLAINTEXT, False, None)


def test_empty_policy_is_valid_and_denies_everything() -> None:
    policy = parse("version = 1\n")
    assert policy.rules == () and policy.warnings == ()


def test_warnings_for_unpinned_exe_and_argv_without_exe() -> None:
    policy = parse(FULL)
    assert len(policy.warnings) == 2
    unpinned, imitable = policy.warnings
    assert f"{SRC} line 32" in unpinned and "break-glass.cp_1" in unpinned
    assert "/usr/bin/cp" in unpinned and "SHA-256" in unpinned
    assert f"{SRC} line 41" in imitable and "viewer" in imitable and "imitated" in imitable
    pinned = parse(f'version = 1\n[[rule]]\nid = "a"\nexe = "/usr/bin/cp"\nsha256 = "{SHA}"\n')
    assert pinned.warnings == ()


def test_rule_lines_finds_headers_only() -> None:
    text = 'version = 1\n# [[rule]] in a comment\n[[rule]]\nid="a"\n  [[ rule ]] # x\nid="b"\n[rules]\n'
    assert rule_lines(text) == [3, 5]


# ------------------------------------------------------------------------------ bad rules

GOOD_FIRST = f'''version = 1

# the PACS
[[rule]]
id = "good"
exe = "/usr/bin/true"
sha256 = "{SHA}"

[[rule]]
'''
BAD_LINE = 9  # the second [[rule]] header above


def second_rule(body: str) -> str:
    text = GOOD_FIRST + body + "\n"
    assert text.splitlines()[BAD_LINE - 1] == "[[rule]]"
    return text


# (test id, body of the bad second rule, fragments the message must contain besides file and line)
BAD_RULES = [
    ("bad sha256", f'id = "bad"\nexe = "/usr/bin/x"\nsha256 = "{SHA[:-1]}"', ["sha256"]),
    ("uppercase sha256", f'id = "bad"\nexe = "/usr/bin/x"\nsha256 = "{SHA.upper()}"',
     ["sha256", "lowercase"]),
    ("relative exe", 'id = "bad"\nexe = "bin/server"', ["exe", "'bin/server'", "absolute"]),
    ("exe not normalised", 'id = "bad"\nexe = "/usr/bin/../bin/x"', ["exe", "normalised"]),
    ("path ../x", 'id = "bad"\npath = "../x"', ["path", "'../x'"]),
    ("path db", 'id = "bad"\npath = "db"', ["path", "'db'"]),
    ("path with ..", 'id = "bad"\npath = "/db/../etc"', ["path"]),
    ("path with .", 'id = "bad"\npath = "/db/./x"', ["path"]),
    ("unknown op", 'id = "bad"\nops = ["read", "execute"]', ["ops", "'execute'"]),
    ("stat is internal", 'id = "bad"\nops = ["stat"]', ["ops", "'stat'"]),
    ("bad view", 'id = "bad"\nview = "clear"', ["view", "'clear'"]),
    ("ciphertext with write ops", 'id = "bad"\nview = "ciphertext"\nops = ["read", "write", "delete"]',
     ["ciphertext", "delete, write"]),
    ("ciphertext with default ops", 'id = "bad"\nview = "ciphertext"', ["ciphertext", "ops"]),
    ("unknown user", 'id = "bad"\nuser = "orthnac"', ["user", "'orthnac'"]),
    ("unknown group", 'id = "bad"\ngroup = "imagin"', ["group", "'imagin'"]),
    ("negative uid", 'id = "bad"\nuser = -1', ["user", "-1"]),
    ("negative gid", 'id = "bad"\ngroup = -5', ["group", "-5"]),
    ("expires without time zone", 'id = "bad"\nexpires = 2026-11-29T18:00:00\nreason = "x"',
     ["expires", "time zone"]),
    ("expires without reason", 'id = "bad"\nexpires = 2026-11-29T18:00:00Z', ["expires", "reason"]),
    ("expires with empty reason", 'id = "bad"\nexpires = 2026-11-29T18:00:00Z\nreason = ""', ["reason"]),
    ("only max_changes", 'id = "bad"\nmax_changes = 10', ["max_changes", "window_seconds"]),
    ("only window_seconds", 'id = "bad"\nwindow_seconds = 10', ["max_changes", "window_seconds"]),
    ("zero max_changes", 'id = "bad"\nmax_changes = 0\nwindow_seconds = 10', ["max_changes"]),
    ("zero window", 'id = "bad"\nmax_changes = 3\nwindow_seconds = 0', ["window_seconds"]),
    ("negative grace", 'id = "bad"\nwrite_once = true\nwrite_once_grace_seconds = -1',
     ["write_once_grace_seconds"]),
    ("grace beyond what a mount remembers", 'id = "bad"\nwrite_once = true\nwrite_once_grace_seconds = 3601',
     ["write_once_grace_seconds", "between 0 and 3600"]),
    ("duplicate id", 'id = "good"', ["rule id 'good'", "twice"]),
]


@pytest.mark.parametrize("body,fragments", [c[1:] for c in BAD_RULES], ids=[c[0] for c in BAD_RULES])
def test_bad_rule_names_file_line_rule_and_key(body: str, fragments: list[str]) -> None:
    message = refused(second_rule(body))
    assert message.startswith(f"{SRC} line {BAD_LINE}"), message
    if 'id = "bad"' in body:
        assert message.startswith(f"{SRC} line {BAD_LINE} (rule bad): "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# The type of each value is checked before the rule's id is read: these name the file, line and
# key, but not the rule.
NO_ID_YET = [
    ("unknown rule key", 'id = "bad"\nexecutable = "/usr/bin/x"', ["'executable'", "known: id, exe"]),
    ("user = true", 'id = "bad"\nuser = true', ["user = True", "user name or uid"]),
    ("group = 1.5", 'id = "bad"\ngroup = 1.5', ["group = 1.5"]),
    ('ops = "read"', 'id = "bad"\nops = "read"', ["ops = 'read'", "operations granted"]),
    ("exe = 5", 'id = "bad"\nexe = 5', ["exe = 5"]),
    ("write_once = 1", 'id = "bad"\nwrite_once = 1', ["write_once = 1"]),
    ("max_changes = true", 'id = "bad"\nmax_changes = true\nwindow_seconds = 5', ["max_changes = True"]),
    ("max_changes = 2.5", 'id = "bad"\nmax_changes = 2.5\nwindow_seconds = 5', ["max_changes = 2.5"]),
    ("window_seconds = true", 'id = "bad"\nmax_changes = 2\nwindow_seconds = true', ["window_seconds"]),
    ("expires as a date", 'id = "bad"\nexpires = 2026-11-29\nreason = "x"', ["expires", "time zone"]),
    ("expires as a string", 'id = "bad"\nexpires = "2026-11-29T18:00:00Z"\nreason = "x"', ["expires"]),
    ("alert = 'yes'", 'id = "bad"\nalert = "yes"', ["alert = 'yes'"]),
]


@pytest.mark.parametrize("body,fragments", [c[1:] for c in NO_ID_YET], ids=[c[0] for c in NO_ID_YET])
def test_wrong_type_or_unknown_key_names_file_line_and_key(body: str, fragments: list[str]) -> None:
    message = refused(second_rule(body))
    assert message.startswith(f"{SRC} line {BAD_LINE} (rule bad): "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("body", ['id = "bad"\nexecutable = "/x"', 'id = "bad"\nuser = true',
                                  'id = "bad"\nops = "read"'])
def test_wrong_type_or_unknown_key_names_the_rule(body: str) -> None:
    assert "(rule bad)" in refused(second_rule(body)).replace(SRC, "")


@pytest.mark.parametrize("body,fragments", [
    ('exe = "/usr/bin/x"', ["needs an `id`"]),
    ('id = "has space"', ["id 'has space'", "letters, digits"]),
    ('id = ""', ["id ''"]),
    ('id = 5', ["id = 5"]),
    ('id = "-starts-with-dash"', ["'-starts-with-dash'"]),
], ids=["missing id", "id with space", "empty id", "numeric id", "id starting with dash"])
def test_bad_or_missing_id(body: str, fragments: list[str]) -> None:
    message = refused(second_rule(body))
    assert message.startswith(f"{SRC} line {BAD_LINE}:"), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_error_in_the_first_of_three_rules_names_its_line() -> None:
    text = 'version = 1\n\n[[rule]]\nid = "one"\nview = "nope"\n\n[[rule]]\nid = "two"\n[[rule]]\nid = "3"\n'
    assert refused(text).startswith(f"{SRC} line 3 (rule one):")


def test_error_in_the_last_rule_names_its_line() -> None:
    text = 'version = 1\n\n[[rule]]\nid = "one"\n\n[[rule]]\nid = "two"\n\n\n[[rule]]\nid = "3"\npath = "x"\n'
    assert refused(text).startswith(f"{SRC} line 10 (rule 3):")


def test_rule_header_inside_a_multiline_string_does_not_shift_lines() -> None:
    text = ('version = 1\n[[rule]]\nid = "one"\ncomment = """copied from the old file:\n[[rule]]\n"""\n'
            '\n[[rule]]\nid = "two"\nview = "nope"\n')
    assert refused(text).startswith(f"{SRC} line 8 (rule two):")


# ------------------------------------------------------------------------------ bad documents

@pytest.mark.parametrize("text,fragments", [
    ('version = 1\n\n[[rule]]\nid = "x"\nexe = "/usr/bin/x\n', ["not valid TOML", "line 5"]),
    ('version = 1\nversion = 1\n', ["not valid TOML", "line 2"]),
    ('[[rule]]\nid = "x"\n', ["version = 1", "None"]),
    ('version = 2\n', ["version = 1", "found 2"]),
    ('version = "1"\n', ["version = 1", "found '1'"]),
    ('version = 1\nrules = []\n', ["unknown top-level key 'rules'"]),
    ('version = 1\n[options]\nlearn = true\n', ["unknown top-level key 'options'"]),
    ('version = 1\nrule = "x"\n', ["[[rule]] tables"]),
    ('version = 1\nrule = ["x"]\n', ["rule #1", "[[rule]] table"]),
], ids=["toml syntax", "duplicate key", "missing version", "version 2", "version string",
        "unknown top-level key", "unknown table", "rule not a table", "rule array of strings"])
def test_bad_document(text: str, fragments: list[str]) -> None:
    message = refused(text)
    assert message.startswith(SRC), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("value", ["true", "1.0"])
def test_version_of_the_wrong_type(value: str) -> None:
    refused(f"version = {value}\n")


def test_nan_grace_is_refused() -> None:
    refused('version = 1\n[[rule]]\nid = "x"\nwrite_once = true\nwrite_once_grace_seconds = nan\n')


def test_nested_list_in_ops_is_policy_invalid() -> None:
    refused('version = 1\n[[rule]]\nid = "x"\nops = [["read"]]\n')


def test_ops_with_a_number_is_an_unknown_operation() -> None:
    assert "unknown operation 1" in refused('version = 1\n[[rule]]\nid = "x"\nops = [1]\n')


def test_user_and_group_lookups_are_used() -> None:
    seen: list[str] = []

    def uid_of(name: str) -> int:
        seen.append(name)
        return 4242

    policy = parse_policy('version = 1\n[[rule]]\nid = "x"\nuser = "someone"\n', SRC, uid_of=uid_of)
    assert seen == ["someone"]
    assert (policy.rules[0].uid, policy.rules[0].user) == (4242, "someone")


def test_load_policy_reads_a_file_with_real_user_lookup(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('version = 1\n[[rule]]\nid = "root-only"\nuser = "root"\ngroup = "root"\n')
    policy = load_policy(path)
    assert policy.source == str(path)
    assert (policy.rules[0].uid, policy.rules[0].gid) == (0, 0)


def test_load_policy_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(PolicyInvalid, match=f"{re.escape(str(missing))} does not exist.*allow add"):
        load_policy(missing)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'version = 1\n# \xff\xfe\n')
    with pytest.raises(PolicyInvalid, match=f"{re.escape(str(binary))}: not UTF-8 text \\(byte 14\\)"):
        load_policy(binary)
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[[rule]]\nid = "x"\nuser = "no-such-user-here-xyz"\n')
    with pytest.raises(PolicyInvalid, match=f"{re.escape(str(bad))} line 2 .*no user named"):
        load_policy(bad)


# ------------------------------------------------------------------------------ holder

V1 = 'version = 1\n\n[[rule]]\nid = "keep"\nexe = "/usr/bin/a"\n\n[[rule]]\nid = "edit"\nuser = 0\n' \
     '\n[[rule]]\nid = "drop"\nexe = "/usr/bin/c"\n'


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    folder = tmp_path / "etc"
    folder.mkdir(mode=0o755)
    return write(folder / "policy.toml", V1)


def events_of(kind: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def test_reload_with_a_valid_change_replaces_the_policy(policy_file: Path) -> None:
    events: list[dict[str, Any]] = []
    holder = PolicyHolder(policy_file, on_event=events.append)
    old = holder.policy
    assert [r.id for r in old.rules] == ["keep", "edit", "drop"]
    # Move "keep" down (its line changes, nothing else), change "edit", drop "drop", add "new".
    write(policy_file, 'version = 1\n\n\n[[rule]]\nid = "edit"\nuser = 0\nops = ["read"]\n'
                       '\n[[rule]]\nid = "keep"\nexe = "/usr/bin/a"\n\n[[rule]]\nid = "new"\n')
    assert holder.reload("test") is True
    assert [r.id for r in holder.policy.rules] == ["edit", "keep", "new"]
    assert holder.policy.digest != old.digest
    (reload,) = events_of("policy-reload", events)
    assert reload["outcome"] == "allowed" and reload["detail"] == "test"
    assert reload["changes"] == {"added": ["new"], "removed": ["drop"], "changed": ["edit"]}
    assert reload["policy"] == {"source": str(policy_file), "sha256": holder.policy.digest,
                                "rules": ["edit", "keep", "new"]}
    assert events_of("security-alert", events) == []


def test_invalid_edit_keeps_the_old_policy(policy_file: Path) -> None:
    events: list[dict[str, Any]] = []
    holder = PolicyHolder(policy_file, on_event=events.append)
    old = holder.policy
    write(policy_file, V1 + '\n[[rule]]\nid = "typo"\nview = "plain"\n')
    assert holder.reload("test") is False
    assert holder.policy is old
    (rejected,) = events
    assert rejected["event"] == "policy-rejected" and rejected["outcome"] == "error"
    assert rejected["alert"] is True
    assert f"{policy_file} line 15 (rule typo)" in rejected["detail"]
    assert "view 'plain'" in rejected["detail"]
    assert old.digest[:16] in rejected["detail"] and "stays in force" in rejected["detail"]
    # Fixing the file then takes effect.
    write(policy_file, V1 + '\n[[rule]]\nid = "typo"\nview = "plaintext"\n')
    assert holder.reload("fixed") is True
    assert holder.policy.rule("typo") is not None


@pytest.mark.parametrize("damage", ["delete", "group-writable", "syntax"])
def test_reload_refusals_keep_the_old_policy(policy_file: Path, damage: str) -> None:
    events: list[dict[str, Any]] = []
    holder = PolicyHolder(policy_file, on_event=events.append)
    old = holder.policy
    if damage == "delete":
        policy_file.unlink()
    elif damage == "group-writable":
        write(policy_file, 'version = 1\n').chmod(0o664)
    else:
        write(policy_file, 'version = 1\n[[rule\n')
    assert holder.reload("test") is False
    assert holder.policy is old
    assert [e["event"] for e in events] == ["policy-rejected"]


def test_reload_alerts_on_new_temporary_or_alerting_rules(policy_file: Path) -> None:
    events: list[dict[str, Any]] = []
    holder = PolicyHolder(policy_file, on_event=events.append)
    until = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    write(policy_file, V1 + f'\n[[rule]]\nid = "bg"\nexe = "/usr/bin/cp"\nexpires = {until.isoformat()}\n'
                            'reason = "ticket 7"\n')
    assert holder.reload("test")
    (alert,) = events_of("security-alert", events)
    assert alert["rule"] == "bg" and alert["alert"] is True
    assert "ticket 7" in alert["detail"] and until.isoformat() in alert["detail"]


def test_expiry_is_reported_once(policy_file: Path) -> None:
    events: list[dict[str, Any]] = []
    past = datetime.now(UTC) - timedelta(minutes=1)
    write(policy_file, V1 + f'\n[[rule]]\nid = "bg"\nexpires = {past.isoformat()}\nreason = "x"\n')
    holder = PolicyHolder(policy_file, on_event=events.append)
    holder._report_expiries()
    holder._report_expiries()
    (expired,) = events
    assert expired["event"] == "policy-change" and expired["rule"] == "bg"
    assert "expired" in expired["detail"]


def test_watcher_reloads_an_edited_file(policy_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(holder_module, "POLL_SECONDS", 0.02)
    events: list[dict[str, Any]] = []
    holder = PolicyHolder(policy_file, on_event=events.append)
    holder.start()
    try:
        assert [e["event"] for e in events] == ["policy-load"]
        write(policy_file, 'version = 1\n[[rule]]\nid = "only"\n')
        deadline = time.monotonic() + 5
        while holder.policy.rule("only") is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        holder.stop()
    assert [r.id for r in holder.policy.rules] == ["only"]
    assert events_of("policy-reload", events)[0]["detail"] == "file changed"


def test_no_policy_holder() -> None:
    holder = PolicyHolder(None, on_event=lambda e: None)
    assert holder.policy.rules == () and holder.policy.source == "--no-policy"


# ------------------------------------------------------------------------------ file safety

@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o620, 0o602])
def test_group_or_world_writable_policy_is_refused(policy_file: Path, mode: int) -> None:
    policy_file.chmod(mode)
    with pytest.raises(PolicyInvalid, match="writable by group or others.*chmod go-w"):
        check_file_safety(policy_file)
    with pytest.raises(PolicyInvalid, match="writable by group or others"):
        PolicyHolder(policy_file, on_event=lambda e: None)


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o444, 0o640])
def test_safe_modes_are_accepted(policy_file: Path, mode: int) -> None:
    policy_file.chmod(mode)
    check_file_safety(policy_file)
    assert load_checked(policy_file).rule("keep") is not None


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@needs_root
@pytest.mark.parametrize("target", ["file", "folder"])
def test_policy_owned_by_another_user_is_refused(policy_file: Path, target: str) -> None:
    os.chown(policy_file if target == "file" else policy_file.parent, 65534, 65534)
    with pytest.raises(PolicyInvalid, match="belongs to uid 65534.*chown root"):
        check_file_safety(policy_file)


def test_world_writable_folder_is_refused_unless_sticky(policy_file: Path) -> None:
    policy_file.parent.chmod(0o777)
    with pytest.raises(PolicyInvalid, match=f"{re.escape(str(policy_file.parent))} is writable"):
        check_file_safety(policy_file)
    policy_file.parent.chmod(0o1777)  # like /tmp: others cannot replace root's file
    check_file_safety(policy_file)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyInvalid, match="cannot be read"):
        check_file_safety(tmp_path / "nope.toml")
    with pytest.raises(PolicyInvalid, match="does not exist"):
        load_checked(tmp_path / "nope.toml")


def test_grace_of_exactly_the_remembered_hour_is_accepted() -> None:
    policy = parse('version = 1\n[[rule]]\nid = "x"\nwrite_once = true\nwrite_once_grace_seconds = 3600\n')
    assert policy.rules[0].write_once_grace_seconds == 3600.0
