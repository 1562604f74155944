"""`encfs-pacs status` helpers: denials counted from a real audit log, policy file summary."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

from encfs_pacs.cli.status import audit_state, policy_state

from .auditkit import FIXTURE_START, fixed_hooks, make_backing, open_fixed


def _payload(outcome: str) -> dict[str, object]:
    return {"event": "deny" if "denied" in outcome else "open", "outcome": outcome, "op": "read",
            "object": {"path": "/db/a.dcm"}}


def test_denials_in_the_last_hour_are_counted(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    hooks, _ = fixed_hooks()  # the fake clock starts at FIXTURE_START, 1 ms per record
    writer = open_fixed(log_path, make_backing(tmp_path), hooks)
    for outcome in ("denied", "allowed", "denied", "learn-denied", "denied", "allowed"):
        writer.append(_payload(outcome))
    writer.close()

    state = audit_state(str(log_path), now=FIXTURE_START + timedelta(minutes=30))
    assert state is not None and state["size"] == log_path.stat().st_size
    assert state["denied_last_hour"] == 3 and state["learn_denied_last_hour"] == 1
    later = audit_state(str(log_path), now=FIXTURE_START + timedelta(hours=2))
    assert later is not None and later["denied_last_hour"] == 0


def test_tampered_or_missing_log_is_reported_not_raised(tmp_path: Path) -> None:
    missing = audit_state(str(tmp_path / "none.jsonl"))
    assert missing is not None and "error" in missing
    log_path = tmp_path / "audit.jsonl"
    hooks, _ = fixed_hooks()
    writer = open_fixed(log_path, make_backing(tmp_path), hooks)
    writer.append(_payload("denied"))
    writer.close()
    log_path.write_text(log_path.read_text().replace('"denied"', '"allowed"'))
    tampered = audit_state(str(log_path))
    assert tampered is not None and "audit log" in tampered["error"]
    assert "denied_last_hour" not in tampered


def test_policy_summary(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('version = 1\n[[rule]]\nid = "a"\nuser = 0\n[[rule]]\nid = "b"\nuser = 0\n')
    state = policy_state(str(policy))
    assert state == {"path": str(policy), "sha256": hashlib.sha256(policy.read_bytes()).hexdigest(),
                     "rules": 2}
    assert policy_state(None) is None
    policy.write_text("version = 1\n[[rule]]\nid = 3\n")
    assert "error" in (policy_state(str(policy)) or {})


def test_syslog_drops_recorded_in_the_trail_are_summed(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    hooks, _ = fixed_hooks()
    writer = open_fixed(log_path, make_backing(tmp_path), hooks)
    writer.append(_payload("allowed"))
    for dropped in (5, 7):  # what SyslogForwarder.report_drops writes
        writer.append({"event": "syslog-dropped", "outcome": "error", "dropped": dropped, "truncated": 0})
    writer.close()
    state = audit_state(str(log_path), now=FIXTURE_START + timedelta(hours=5))
    assert state is not None and state["syslog_dropped"] == 12
