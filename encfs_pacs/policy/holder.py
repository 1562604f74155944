"""The policy in force, reloaded when its file changes (or on SIGHUP) without unmounting.

A reload that fails validation leaves the previous policy in force and reports exactly why.
A policy file that someone other than root (or the daemon's user) could edit is refused: it
would let any local program grant itself plaintext.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import PolicyInvalid
from .loader import load_policy
from .model import Policy, Rule

log = logging.getLogger("encfs_pacs.policy")
POLL_SECONDS = 1.0
EventSink = Callable[[dict[str, Any]], None]


def check_file_safety(path: Path) -> None:
    """Refuse a policy file (or its folder) that an unprivileged user could change."""
    for target in (path, path.parent):
        try:
            st = os.stat(target)
        except OSError as exc:
            raise PolicyInvalid(f"policy file {path} cannot be read: {exc.strerror}") from None
        if st.st_uid not in (0, os.geteuid()):
            raise PolicyInvalid(f"{target} belongs to uid {st.st_uid}: the policy and its folder must "
                                f"belong to root (chown root {target})")
        sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if st.st_mode & 0o022 and not sticky_dir:
            raise PolicyInvalid(f"{target} is writable by group or others: anyone could allow "
                                f"themselves (chmod go-w {target})")


def load_checked(path: Path) -> Policy:
    if not path.exists():
        return load_policy(path)  # raises, saying how to create one
    check_file_safety(path)
    return load_policy(path)


def rule_changes(old: Policy, new: Policy) -> dict[str, list[str]]:
    old_rules = {rule.id: _comparable(rule) for rule in old.rules}
    new_rules = {rule.id: _comparable(rule) for rule in new.rules}
    return {
        "added": sorted(set(new_rules) - set(old_rules)),
        "removed": sorted(set(old_rules) - set(new_rules)),
        "changed": sorted(i for i in set(old_rules) & set(new_rules) if old_rules[i] != new_rules[i]),
    }


def _comparable(rule: Rule) -> Rule:
    from dataclasses import replace
    return replace(rule, line=None)


class PolicyHolder:
    """Thread-safe access to the current policy, with a polling reloader thread."""

    def __init__(self, path: Path | None, on_event: EventSink, policy: Policy | None = None) -> None:
        self.path = path
        self.on_event = on_event  # where reload/change/expiry records go (the gate's audit sink)
        self._lock = threading.Lock()
        self._policy = policy if policy is not None else (
            load_checked(path) if path is not None else Policy(source="--no-policy"))
        self._stamp = self._file_stamp()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._expired: set[str] = set()

    @property
    def policy(self) -> Policy:
        return self._policy

    def _file_stamp(self) -> tuple[int, int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def start(self) -> None:
        self.on_event(self._load_event("policy-load", self._policy))
        if self.path is not None:
            self._thread = threading.Thread(target=self._watch, name="policy-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            if self._file_stamp() != self._stamp:
                self.reload("file changed")
            self._report_expiries()

    def reload(self, why: str) -> bool:
        """Load the file again; keep the old policy if the new one is invalid. True if replaced."""
        assert self.path is not None
        with self._lock:
            self._stamp = self._file_stamp()
            try:
                new = load_checked(self.path)
            except PolicyInvalid as exc:
                log.error("policy reload (%s) rejected, the previous policy stays in force: %s", why, exc)
                self.on_event({"event": "policy-rejected", "outcome": "error", "alert": True,
                                "detail": f"{why}: {exc}; previous policy {self._policy.digest[:16]} "
                                          "stays in force"})
                return False
            old, self._policy = self._policy, new
        changes = rule_changes(old, new)
        log.info("policy reloaded (%s): %s", why, changes)
        self.on_event(self._load_event("policy-reload", new, detail=why, changes=changes))
        for rule_id in changes["added"] + changes["changed"]:
            rule = new.rule(rule_id)
            if rule is not None and (rule.expires is not None or rule.alert):
                self.on_event({"event": "security-alert", "outcome": "allowed", "rule": rule.id,
                                "alert": True, "detail": f"temporary or alerting rule {rule.id} in force "
                                f"until {rule.expires.isoformat() if rule.expires else 'removed'}: "
                                f"{rule.reason or 'no reason given'}"})
        return True

    def _report_expiries(self) -> None:
        now = datetime.now(UTC)
        for rule in self._policy.rules:
            if rule.expires is not None and rule.expires <= now and rule.id not in self._expired:
                self._expired.add(rule.id)
                self.on_event({"event": "policy-change", "outcome": "allowed", "rule": rule.id,
                                "alert": True, "detail": f"temporary rule {rule.id} expired at "
                                                         f"{rule.expires.isoformat()}"})

    @staticmethod
    def _load_event(event: str, policy: Policy, **extra: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"event": event, "outcome": "allowed",
                                   "detail": extra.pop("detail", None) or policy.source,
                                   "policy": {"source": policy.source, "sha256": policy.digest,
                                              "rules": [rule.id for rule in policy.rules]}}
        payload.update(extra)
        return payload
