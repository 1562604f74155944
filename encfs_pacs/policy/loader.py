"""Policy files: TOML text -> a validated Policy, or PolicyInvalid naming file, line and problem.

One table of known keys (``RULE_KEYS``) drives parsing, defaults and the messages, so the file
format and its checks cannot drift apart. Users and groups are resolved to ids when the policy
is loaded, so a typo ("orthnac") is an error at load time, not a silent never-matching rule.
"""

from __future__ import annotations

import grp
import hashlib
import math
import posixpath
import pwd
import re
import tomllib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import PolicyInvalid
from .guard import REMEMBER_SECONDS
from .model import CIPHERTEXT_OPS, GRANTABLE_OPS, Op, Policy, RateLimit, Rule, View

POLICY_VERSION = 1
DEFAULT_POLICY_PATH = Path("/etc/encfs-pacs/policy.toml")
RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

# key -> (expected TOML type(s), what it means): the schema of one [[rule]] table.
RULE_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "id": (str, "unique name of the rule (letters, digits, . _ -)"),
    "exe": (str, "absolute path of the executable"),
    "sha256": (str, "SHA-256 of the executable, 64 lowercase hex digits (pinned by `allow add`)"),
    "user": ((str, int), "user name or uid of the caller"),
    "group": ((str, int), "group name or gid the caller belongs to"),
    "unit": (str, "systemd unit of the caller, e.g. orthanc.service"),
    "args": (str, "shell-style pattern over the caller's command line, words joined by spaces"),
    "path": (str, "folder inside the mount the rule applies to, e.g. /db (default /)"),
    "ops": (list, f"operations granted, any of {', '.join(GRANTABLE_OPS)} (default all)"),
    "view": (str, "plaintext, ciphertext (raw encrypted bytes, read-only) or deny"),
    "write_once": (bool, "existing files cannot be overwritten, truncated, renamed or deleted"),
    "write_once_grace_seconds": ((int, float), "seconds a new file stays writable by its creator"),
    "max_changes": (int, "rate guard: rewrites/renames/deletes allowed per window"),
    "window_seconds": ((int, float), "rate guard: the window in seconds"),
    "allow_traced": (bool, "allow even if a debugger or LD_PRELOAD may control the program"),
    "expires": (datetime, "end of a temporary rule, with time zone, e.g. 2026-11-29T18:00:00Z"),
    "reason": (str, "why the rule exists (required for temporary rules)"),
    "alert": (bool, "every use of the rule is a security alert"),
    "comment": (str, "free text"),
}
TOP_LEVEL_KEYS = {"version", "rule"}

UserLookup = Callable[[str], int]


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def rule_lines(text: str) -> list[int]:
    """1-based line numbers of each [[rule]] header, in order (not those inside multi-line strings)."""
    lines, open_quote = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if open_quote is None and re.match(r"^\s*\[\[\s*rule\s*\]\]", line):
            lines.append(number)
        for quote in re.findall(r'"""|\'\'\'', line.split("#", 1)[0] if open_quote is None else line):
            if open_quote is None:
                open_quote = quote
            elif quote == open_quote:
                open_quote = None
    return lines


def load_policy(path: Path) -> Policy:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PolicyInvalid(f"policy file {path} does not exist: create it with "
                            f"`encfs-pacs allow add --policy {path} --exe PROGRAM`") from None
    except OSError as exc:
        raise PolicyInvalid(f"policy file {path} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyInvalid(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_policy(text, str(path))


def parse_policy(text: str, source: str, uid_of: UserLookup = _uid, gid_of: UserLookup = _gid) -> Policy:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyInvalid(f"{source}: not valid TOML: {exc}") from None
    unknown = set(document) - TOP_LEVEL_KEYS
    if unknown:
        raise PolicyInvalid(f"{source}: unknown top-level key {sorted(unknown)[0]!r} "
                            "(expected `version = 1` and [[rule]] tables)")
    version = document.get("version")
    if type(version) is not int or version != POLICY_VERSION:  # True == 1.0 == 1 in Python
        raise PolicyInvalid(f"{source}: `version = {POLICY_VERSION}` is required at the top "
                            f"(found {version!r}); this encfs-pacs reads version "
                            f"{POLICY_VERSION} policies")
    tables = document.get("rule", [])
    if not isinstance(tables, list):
        raise PolicyInvalid(f"{source}: `rule` must be written as [[rule]] tables")
    lines = rule_lines(text)
    rules: list[Rule] = []
    warnings: list[str] = []
    for index, table in enumerate(tables):
        line = lines[index] if index < len(lines) else None
        where = f"{source} line {line}" if line else f"{source} rule #{index + 1}"
        rule = _parse_rule(table, where, line, uid_of, gid_of)
        if any(existing.id == rule.id for existing in rules):
            raise PolicyInvalid(f"{where}: rule id {rule.id!r} is used twice; ids must be unique")
        if rule.exe is not None and rule.sha256 is None:
            warnings.append(f"{where} (rule {rule.id}): executable {rule.exe} is not pinned by "
                            "SHA-256; any program copied to that path matches")
        if rule.exe is None and rule.args is not None:
            warnings.append(f"{where} (rule {rule.id}): an argv pattern without `exe` can be "
                            "imitated by any program")
        rules.append(rule)
    return Policy(rules=tuple(rules), source=source,
                  digest=hashlib.sha256(text.encode()).hexdigest(), warnings=tuple(warnings))


def _parse_rule(table: Any, where: str, line: int | None, uid_of: UserLookup, gid_of: UserLookup) -> Rule:
    if not isinstance(table, dict):
        raise PolicyInvalid(f"{where}: a rule must be a [[rule]] table")
    if isinstance(table.get("id"), str) and RULE_ID.match(table["id"]):
        where = f"{where} (rule {table['id']})"
    for key, value in table.items():
        if key not in RULE_KEYS:
            raise PolicyInvalid(f"{where}: unknown key {key!r} (known: {', '.join(RULE_KEYS)})")
        expected, meaning = RULE_KEYS[key]
        if isinstance(value, bool) and expected in (int, (int, float), (str, int)) or \
                not isinstance(value, expected):
            raise PolicyInvalid(f"{where}: {key} = {value!r} is not valid: expected {meaning}")
    rule_id = table.get("id")
    if rule_id is None:
        raise PolicyInvalid(f"{where}: every rule needs an `id` ({RULE_KEYS['id'][1]})")
    if not RULE_ID.match(rule_id):
        raise PolicyInvalid(f"{where}: id {rule_id!r} is not valid: {RULE_KEYS['id'][1]}")
    fields: dict[str, Any] = {"id": rule_id, "line": line}
    for parse in (_identity_fields, _scope_fields, _control_fields):
        fields.update(parse(table, where, uid_of, gid_of))
    rule = Rule(**fields)
    if rule.view is View.CIPHERTEXT and not rule.ops <= CIPHERTEXT_OPS:
        extra = ", ".join(sorted(rule.ops - CIPHERTEXT_OPS))
        raise PolicyInvalid(f"{where}: a ciphertext view is read-only; remove {extra} from ops "
                            "(allowed: read, list)")
    return rule


def _identity_fields(table: dict[str, Any], where: str, uid_of: UserLookup,
                     gid_of: UserLookup) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    exe = table.get("exe")
    if exe is not None:
        if not exe.startswith("/") or posixpath.normpath(exe) != exe:
            raise PolicyInvalid(f"{where}: exe {exe!r} must be an absolute, normalised path")
        fields["exe"] = exe
    sha = table.get("sha256")
    if sha is not None:
        if not SHA256_HEX.match(sha):
            raise PolicyInvalid(f"{where}: sha256 {sha!r} is not valid: {RULE_KEYS['sha256'][1]}")
        fields["sha256"] = sha
    if "user" in table:
        fields["user"] = str(table["user"])
        fields["uid"] = _lookup(table["user"], uid_of, where, "user")
    if "group" in table:
        fields["group"] = str(table["group"])
        fields["gid"] = _lookup(table["group"], gid_of, where, "group")
    for key in ("unit", "args"):
        if key in table:
            fields[key] = table[key]
    return fields


def _lookup(value: str | int, lookup: UserLookup, where: str, kind: str) -> int:
    if isinstance(value, int):
        if value < 0:
            raise PolicyInvalid(f"{where}: {kind} {value} is not a valid id")
        return value
    try:
        return lookup(value)
    except KeyError:
        raise PolicyInvalid(f"{where}: no {kind} named {value!r} on this host") from None


def normalise_mount_path(path: str) -> str | None:
    """'/a/b/' -> '/a/b'; None if not absolute or if it has '.' or '..' parts."""
    if not path.startswith("/"):
        return None
    parts = [part for part in path.split("/") if part]
    if any(part in (".", "..") for part in parts):
        return None
    return "/" + "/".join(parts)


def _scope_fields(table: dict[str, Any], where: str, *_: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if "path" in table:
        path = normalise_mount_path(table["path"])
        if path is None:
            raise PolicyInvalid(f"{where}: path {table['path']!r} must start with / and have no . or .. "
                                "parts (it is a folder inside the mount, e.g. /db)")
        fields["path"] = path
    if "ops" in table:
        ops = []
        for op in table["ops"]:
            if not isinstance(op, str) or op not in {o.value for o in GRANTABLE_OPS}:
                raise PolicyInvalid(f"{where}: unknown operation {op!r} in ops "
                                    f"(known: {', '.join(GRANTABLE_OPS)})")
            ops.append(Op(op))
        fields["ops"] = frozenset(ops)
    if "view" in table:
        if table["view"] not in {v.value for v in View}:
            raise PolicyInvalid(f"{where}: view {table['view']!r} is not valid: {RULE_KEYS['view'][1]}")
        fields["view"] = View(table["view"])
    return fields


def _control_fields(table: dict[str, Any], where: str, *_: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {key: table[key] for key in ("write_once", "allow_traced", "alert",
                                                          "comment", "reason") if key in table}
    if "write_once_grace_seconds" in table:
        grace = float(table["write_once_grace_seconds"])
        if not math.isfinite(grace) or not 0 <= grace <= REMEMBER_SECONDS:
            raise PolicyInvalid(f"{where}: write_once_grace_seconds must be between 0 and "
                                f"{REMEMBER_SECONDS:g} (a mount remembers which process created "
                                "which file for that long)")
        fields["write_once_grace_seconds"] = grace
    if ("max_changes" in table) != ("window_seconds" in table):
        raise PolicyInvalid(f"{where}: the rate guard needs both max_changes and window_seconds")
    if "max_changes" in table:
        changes, seconds = table["max_changes"], float(table["window_seconds"])
        if changes < 1 or not math.isfinite(seconds) or seconds <= 0:
            raise PolicyInvalid(f"{where}: max_changes must be at least 1 and window_seconds above 0")
        fields["rate_limit"] = RateLimit(changes, seconds)
    if "expires" in table:
        expires = table["expires"]
        if expires.tzinfo is None:
            raise PolicyInvalid(f"{where}: expires = {expires} needs a time zone (e.g. append Z for UTC)")
        if not table.get("reason"):
            raise PolicyInvalid(f"{where}: a temporary rule (expires) must say why in `reason`")
        fields["expires"] = expires
    return fields
