"""Learn-mode suggestions and policy simulation over recorded access records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encfs_pacs.errors import UsageError
from encfs_pacs.policy.loader import parse_policy
from encfs_pacs.policy.replay import common_folder, read_records, simulate, suggest, suggestion_toml

PACS = {"pid": 10, "tgid": 10, "exe": "/usr/sbin/Orthanc", "sha256": "aa" * 32, "unit": "orthanc.service",
        "argv": ["/usr/sbin/Orthanc", "/etc/orthanc"]}
SCRIPT = {"pid": 20, "tgid": 20, "exe": "/usr/bin/python3.11", "sha256": "bb" * 32, "unit": None,
          "argv": ["python3", "/opt/tools/export.py"]}
ROOT = {"uid": 0, "gid": 0, "user": "root", "groups": []}


def record(program: dict, op: str, path: str, outcome: str, event: str = "open", rule: str | None = None
           ) -> dict:
    return {"seq": 1, "time": "2026-11-29T10:00:00Z", "event": event, "op": op, "outcome": outcome,
            "rule": rule, "who": ROOT, "program": program, "object": {"path": path}}


def test_suggest_groups_learned_denials_into_one_rule_per_program() -> None:
    records = [record(PACS, "read", "/storage/ab/cd/1.dcm", "learn-denied"),
               record(PACS, "create", "/storage/ab/ef/2.dcm", "learn-denied", event="create"),
               record(PACS, "stat", "/storage/ab", "learn-denied", event="stat"),
               record(SCRIPT, "read", "/storage/ab/cd/1.dcm", "denied"),  # real denials: opt-in only
               {"event": "mount", "outcome": "allowed"}]
    items = suggest(records)
    assert len(items) == 1
    item = items[0]
    assert (item.exe, item.sha256, item.user, item.unit) == (PACS["exe"], PACS["sha256"], "root",
                                                             "orthanc.service")
    assert item.ops == {"read", "create", "list"} and item.count == 3
    text = suggestion_toml(item, "orthanc")
    policy = parse_policy("version = 1\n" + text, "suggested", uid_of=lambda name: 0)
    rule = policy.rules[0]
    assert rule.exe == PACS["exe"] and rule.path == "/storage/ab" and rule.unit == "orthanc.service"
    assert {op.value for op in rule.ops} == {"read", "create", "list"}
    assert len(suggest(records, include_denied=True)) == 2


def test_common_folder() -> None:
    assert common_folder(["/a/b/1", "/a/c/2"]) == "/a"
    assert common_folder(["/a/b/1"]) == "/a/b"
    assert common_folder(["/x", "/y/z"]) == "/"
    assert common_folder([]) == "/"


def test_simulate_lists_newly_denied_and_newly_allowed() -> None:
    records = [record(PACS, "read", "/storage/1.dcm", "allowed", rule="old"),
               record(PACS, "write", "/db/index", "allowed", rule="old"),
               record(PACS, "write", "/db/index", "allowed", rule="old"),
               record(SCRIPT, "read", "/storage/1.dcm", "denied"),
               record(SCRIPT, "read", "/storage/2.dcm", "allowed", rule="old")]
    new = parse_policy(f"""version = 1
[[rule]]
id = "pacs-read"
exe = "/usr/sbin/Orthanc"
sha256 = "{'aa' * 32}"
ops = ["read", "list"]
[[rule]]
id = "export"
exe = "/usr/bin/python3.11"
args = "* /opt/tools/export.py"
path = "/storage"
""", "new.toml")
    result = simulate(new, records)
    assert result.replayed == 5 and result.unchanged == 2
    changes = {(c.kind, c.program, c.op, c.path): c.count for c in result.changes.values()}
    assert changes == {("newly denied", "/usr/sbin/Orthanc", "write", "/db/index"): 2,
                       ("newly allowed", "/usr/bin/python3.11", "read", "/storage/1.dcm"): 1}
    denied = next(c for c in result.changes.values() if c.kind == "newly denied")
    assert "not granted" in denied.new and denied.old == "allowed (old)"
    json.dumps(result.as_json())  # serialisable for --json


def test_simulate_respects_write_once_for_created_files() -> None:
    records = [record(PACS, "create", "/storage/new.dcm", "allowed", event="create"),
               record(PACS, "delete", "/storage/old.dcm", "allowed", event="delete")]
    new = parse_policy(f"""version = 1
[[rule]]
id = "images"
exe = "/usr/sbin/Orthanc"
sha256 = "{'aa' * 32}"
write_once = true
""", "new.toml")
    result = simulate(new, records)
    assert [(c.kind, c.op) for c in result.changes.values()] == [("newly denied", "delete")]


def test_read_records_rejects_garbage_with_file_and_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(json.dumps(record(PACS, "read", "/a", "allowed")) + "\n{not json\n")
    with pytest.raises(UsageError, match="audit.log line 2"):
        list(read_records([log]))
    with pytest.raises(UsageError, match="cannot read"):
        list(read_records([tmp_path / "missing.log"]))
