"""Changing a policy file for the admin CLI: add, remove, break-glass grants.

Edits go through tomlkit so the admin's own comments and layout survive. Every edit is
validated as a whole policy *before* it is written, is written atomically (temporary file,
fsync, rename), and is serialised against concurrent edits by a lock file, so a running
mount never reloads a half-written or invalid policy.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomlkit

from ..durable import write_file_atomically
from ..errors import PolicyInvalid
from .loader import POLICY_VERSION, parse_policy
from .model import Policy

NEW_POLICY_HEADER = """\
# encfs-pacs allow-list. Rules are tried in order; the first that matches the calling
# program and grants the operation decides. No matching rule: denied and audited.
# Edit with `encfs-pacs allow add/remove/grant` or by hand; `encfs-pacs policy validate`
# checks a file; a running mount reloads it within a second (or on SIGHUP).
"""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_document(path: Path) -> tomlkit.TOMLDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        document = tomlkit.parse(NEW_POLICY_HEADER)
        document.add("version", POLICY_VERSION)
        return document
    parse_policy(text, str(path))  # refuse to build on a file that is already broken
    return tomlkit.parse(text)


def _write(path: Path, document: tomlkit.TOMLDocument) -> Policy:
    text = tomlkit.dumps(document)
    policy = parse_policy(text, str(path))  # never write a policy the mount would reject
    write_file_atomically(path, text.encode("utf-8"))
    return policy


def _rule_table(fields: dict[str, Any], note: str) -> Any:
    table = tomlkit.table()
    table.comment(note)
    for key, value in fields.items():
        if value is not None:
            table.add(key, sorted(value) if isinstance(value, (set, frozenset)) else value)
    return table


def _stamp(action: str) -> str:
    when = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return f"{action} by {getpass.getuser()} at {when}"


def unique_id(taken: set[str], base: str) -> str:
    """A valid rule id from ``base`` (a program or user name) that is not in ``taken``."""
    base = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).strip("-._") or "rule"
    base = base[:56]
    if base not in taken:
        return base
    number = 2
    while f"{base}-{number}" in taken:
        number += 1
    return f"{base}-{number}"


def add_rule(path: Path, fields: dict[str, Any], *, first: bool = False, action: str = "added") -> Policy:
    """Append (or with ``first``, prepend) one rule; returns the new policy."""
    with _locked(path):
        document = _read_document(path)
        current = parse_policy(tomlkit.dumps(document), str(path))
        if current.rule(fields["id"]) is not None:
            raise PolicyInvalid(f"{path}: a rule with id {fields['id']!r} exists already "
                                f"(remove it first: encfs-pacs allow remove {fields['id']})")
        rules = document.get("rule")
        if rules is None:
            rules = tomlkit.aot()
            document.append("rule", rules)
        table = _rule_table(fields, _stamp(action))
        if first:
            rules.insert(0, table)
        else:
            rules.append(table)
        return _write(path, document)


def remove_rule(path: Path, rule_id: str) -> Policy:
    with _locked(path):
        if not path.exists():
            raise PolicyInvalid(f"policy file {path} does not exist")
        document = _read_document(path)
        rules = document.get("rule") or []
        index = next((i for i, table in enumerate(rules) if table.get("id") == rule_id), None)
        if index is None:
            known = ", ".join(str(table.get("id")) for table in rules) or "none"
            raise PolicyInvalid(f"{path}: no rule with id {rule_id!r} (rules: {known})")
        del rules[index]
        if not rules:
            del document["rule"]
        return _write(path, document)
