"""Fixtures shared by unit-test modules (a module's own fixture of the same name wins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .auditkit import make_backing


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    """A backing folder with a volume config and the audit key store (audit tests; modules
    that need another kind of backing folder define their own)."""
    return make_backing(tmp_path)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "audit.log"
