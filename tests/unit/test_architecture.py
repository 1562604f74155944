"""Import direction: crypto <- store <- fs, and only fs touches FUSE (docs: conventions).

Read from the source (AST), so an import inside a function, a relative import and a
dynamic importlib call all count, and nothing is imported to check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import encfs_pacs

PACKAGE_DIR = Path(encfs_pacs.__file__).resolve().parent
FUSE_BINDINGS = {"mfusepy", "fuse", "fusepy", "refuse", "llfuse", "pyfuse3", "fuse3"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module ``module`` imports (``from a import b`` yields a and a.b)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in {"import_module", "__import__"} and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def _modules() -> dict[str, set[str]]:
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name = module_name(path)
        out[name] = imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
    return out


MODULES = _modules()


def _top(name: str) -> str:
    return name.split(".")[0]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(module: str, imported: set[str]) -> list[str]:
    """The layering rules; returns a line per broken rule."""
    bad = []
    for name in sorted(imported):
        if _top(name) in FUSE_BINDINGS and not _within(module, "encfs_pacs.fs"):
            bad.append(f"{module} imports the FUSE binding {name} (only encfs_pacs.fs may)")
        if _within(module, "encfs_pacs.crypto"):
            if _top(name) in {"os", "pathlib", "shutil", "io", "tempfile", "glob"}:
                bad.append(f"{module} imports {name}: crypto is pure, no file system access")
            allowed = name == "encfs_pacs" or any(
                _within(name, f"encfs_pacs.{p}") for p in ("crypto", "errors"))
            if _top(name) == "encfs_pacs" and not allowed:
                bad.append(f"{module} imports {name}: crypto may use only crypto and errors")
        upper = _within(name, "encfs_pacs.fs") or _within(name, "encfs_pacs.cli")
        if module == "encfs_pacs.store" and upper:
            bad.append(f"{module} imports {name}: the store knows nothing of FUSE or the CLI")
        # Network clients for key services stay out of the store (it sees only the KeyService
        # protocol) and never reach up into the CLI or the mount.
        if module == "encfs_pacs.store" and _within(name, "encfs_pacs.keyservice"):
            bad.append(f"{module} imports {name}: the store talks to key services through KeyService only")
        if _within(module, "encfs_pacs.keyservice") and upper:
            bad.append(f"{module} imports {name}: keyservice never imports fs or cli")
        if any(_within(module, f"encfs_pacs.{p}") for p in ("policy", "audit")) and upper:
            bad.append(f"{module} imports {name}: policy and audit never import fs or cli")
        # The audit trail is read by auditors' tools on other machines: it stands on crypto and
        # errors alone (no policy engine, no volume, no access gate).
        if _within(module, "encfs_pacs.audit") and _top(name) == "encfs_pacs" and not (
                name == "encfs_pacs" or any(_within(name, f"encfs_pacs.{p}") for p in AUDIT_MAY_USE)):
            bad.append(f"{module} imports {name}: audit may use only audit, crypto and errors "
                       "(and durable, for crash-safe writes)")
    return bad


AUDIT_MAY_USE = ("audit", "crypto", "errors", "durable")


def test_the_scan_sees_the_package() -> None:
    assert {"encfs_pacs.audit.writer", "encfs_pacs.audit.verify", "encfs_pacs.cli.audit"} <= set(MODULES)
    assert {"encfs_pacs.store", "encfs_pacs.crypto.chunks", "encfs_pacs.crypto.keys",
            "encfs_pacs.crypto.volume_config", "encfs_pacs.errors"} <= set(MODULES)
    assert "encfs_pacs.errors" in MODULES["encfs_pacs.crypto.chunks"]
    assert "encfs_pacs.crypto.chunks" in MODULES["encfs_pacs.store"]


def test_fuse_binding_is_used_where_expected() -> None:
    """Guards the rule below against a silent rename: the fs package does import mfusepy."""
    assert any("mfusepy" in imports for name, imports in MODULES.items() if _within(name, "encfs_pacs.fs"))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_import_direction(module: str) -> None:
    assert violations(module, MODULES[module]) == []


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        ("encfs_pacs.crypto.chunks", "import os", "pure"),
        ("encfs_pacs.crypto.chunks", "from pathlib import Path", "pure"),
        ("encfs_pacs.crypto.chunks", "def f():\n    import os.path", "pure"),
        ("encfs_pacs.crypto.chunks", "from .. import store", "only crypto and errors"),
        ("encfs_pacs.crypto.chunks", "from ..store import Volume", "only crypto and errors"),
        ("encfs_pacs.crypto.keys", "import encfs_pacs.fs", "only crypto and errors"),
        ("encfs_pacs.crypto", "from ..cli import main", "only crypto and errors"),
        ("encfs_pacs.store", "import mfusepy", "FUSE binding"),
        ("encfs_pacs.store", "from .fs.operations import EncryptedOperations", "knows nothing"),
        ("encfs_pacs.store", "from . import cli", "knows nothing"),
        ("encfs_pacs.store", "import importlib\nimportlib.import_module('fuse')", "FUSE binding"),
        ("encfs_pacs.cli.volume", "from fuse import FUSE", "FUSE binding"),
        ("encfs_pacs.policy.rules", "from ..fs import mount", "policy and audit"),
        ("encfs_pacs.audit", "from ..cli import main", "policy and audit"),
        ("encfs_pacs.audit.log", "import encfs_pacs.fs.mount", "policy and audit"),
        ("encfs_pacs.audit.writer", "from ..policy.model import Caller", "only audit, crypto and errors"),
        ("encfs_pacs.audit.writer", "from .. import access", "only audit, crypto and errors"),
        ("encfs_pacs.audit.verify", "from ..store import META_DIR", "only audit, crypto and errors"),
        ("encfs_pacs.audit", "import encfs_pacs.policy", "only audit, crypto and errors"),
        ("encfs_pacs.store", "from .keyservice.kmip import KmipService", "KeyService only"),
        ("encfs_pacs.keyservice.pkcs11", "from ..cli.keysource import credential_path", "never imports"),
        ("encfs_pacs.crypto.volume_config", "from ..keyservice import parse_uri", "only crypto and errors"),
    ],
)
def test_the_rules_catch_violations(module: str, source: str, rule: str) -> None:
    is_package = module in {"encfs_pacs.crypto", "encfs_pacs.audit"}
    found = violations(module, imports_of(source, module, is_package))
    assert found and any(rule in line for line in found), found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("encfs_pacs.crypto.chunks", "from ..errors import IntegrityError\nfrom .keys import file_key"),
        ("encfs_pacs.crypto.keys", "import hmac, secrets\nfrom cryptography.exceptions import InvalidTag"),
        ("encfs_pacs.fs.operations", "import mfusepy\nfrom ..store import Volume"),
        ("encfs_pacs.store", "import os\nfrom .crypto import keys"),
        ("encfs_pacs.cli.volume", "from ..fs import mount"),
        ("encfs_pacs.audit.writer", "from ..crypto.keys import audit_key_store_key\nfrom ..errors import X"),
        ("encfs_pacs.audit.verify", "from .records import decode_line\nfrom . import signing"),
        ("encfs_pacs.cli.audit", "from ..audit import verify"),
    ],
)
def test_the_rules_allow_the_intended_imports(module: str, source: str) -> None:
    assert violations(module, imports_of(source, module)) == []
