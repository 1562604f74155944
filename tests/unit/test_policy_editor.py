"""Policy edits for the admin CLI: comments survive, invalid results are never written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from encfs_pacs.errors import PolicyInvalid
from encfs_pacs.policy.editor import add_rule, remove_rule, unique_id
from encfs_pacs.policy.loader import load_policy

SHA = "ab" * 32


def test_first_add_creates_a_private_valid_policy(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "policy.toml"
    policy = add_rule(path, {"id": "orthanc", "exe": "/usr/sbin/Orthanc", "sha256": SHA,
                             "ops": {"read", "list"}})
    assert [rule.id for rule in policy.rules] == ["orthanc"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_policy(path).rules[0].sha256 == SHA
    assert "version = 1" in path.read_text()


def test_admin_comments_survive_and_first_puts_a_rule_on_top(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('version = 1\n# keep me: ticket 42\n[[rule]]\nid = "a"\nuser = 0  # root jobs\n')
    add_rule(path, {"id": "b", "user": 0})
    policy = add_rule(path, {"id": "urgent", "user": 0, "expires": None}, first=True)
    assert [rule.id for rule in policy.rules] == ["urgent", "a", "b"]
    text = path.read_text()
    assert "# keep me: ticket 42" in text and "# root jobs" in text


def test_duplicate_id_and_invalid_rule_leave_the_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    add_rule(path, {"id": "a", "user": 0})
    before = path.read_bytes()
    with pytest.raises(PolicyInvalid, match="exists already"):
        add_rule(path, {"id": "a", "user": 0})
    with pytest.raises(PolicyInvalid, match="unknown operation"):
        add_rule(path, {"id": "c", "user": 0, "ops": ["fly"]})
    assert path.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_refuses_to_edit_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("version = 1\n[[rule]]\nid = 'x'\nbogus = 1\n")
    with pytest.raises(PolicyInvalid, match="bogus"):
        add_rule(path, {"id": "b", "user": 0})


def test_remove(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    add_rule(path, {"id": "a", "user": 0})
    add_rule(path, {"id": "b", "user": 0})
    assert [rule.id for rule in remove_rule(path, "a").rules] == ["b"]
    with pytest.raises(PolicyInvalid, match="no rule with id 'zzz'.*rules: b"):
        remove_rule(path, "zzz")
    assert remove_rule(path, "b").rules == ()
    assert load_policy(path).rules == ()


def test_unique_id() -> None:
    assert unique_id(set(), "Orthanc") == "Orthanc"
    assert unique_id({"orthanc"}, "orthanc") == "orthanc-2"
    assert unique_id({"orthanc", "orthanc-2"}, "orthanc") == "orthanc-3"
    assert unique_id(set(), "my prog!") == "my-prog"
    assert unique_id(set(), "///") == "rule"
