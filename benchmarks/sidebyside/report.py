"""Medians, ratios, target marks; the printed table and the JSON document; machine facts."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .systems import SystemSpec
from .workloads import METRICS, Metric

GUARD_COST_LIMIT = 0.10  # issue 8: policy + audit cost at most 10 % against the same mount without


@dataclass
class Cell:
    """One metric on one system: every run's value and what follows from them."""

    runs: list[float]
    median: float
    ratio_raw: float | None = None
    ratio_gocryptfs: float | None = None
    target_mark: str | None = None  # "pass" / "short"
    baseline: str | None = None
    cost: float | None = None  # extra time (or memory, CPU) per unit of work against the baseline
    cost_mark: str | None = None

    def as_json(self) -> dict[str, object]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


def _ratio(value: float, reference: float | None) -> float | None:
    return value / reference if reference else None


def _cost(metric: Metric, value: float, baseline: float) -> float | None:
    if not value or not baseline:
        return None
    return baseline / value - 1 if metric.higher_is_better else value / baseline - 1


def summarise(runs: dict[str, dict[str, list[float]]], specs: dict[str, SystemSpec]
              ) -> dict[str, dict[str, Cell]]:
    """``runs[metric][system]`` -> cells with medians, ratios and marks."""
    table: dict[str, dict[str, Cell]] = {}
    for metric in METRICS:
        values = {system: v for system, v in runs.get(metric.key, {}).items() if v}
        medians = {system: statistics.median(v) for system, v in values.items()}
        cells = {}
        for system, median in medians.items():
            cell = Cell(values[system], median, _ratio(median, medians.get("raw")),
                        _ratio(median, medians.get("gocryptfs")))
            spec = specs[system]
            if spec.kind == "encfs-pacs":
                cell.target_mark = _target_mark(metric, median, cell.ratio_gocryptfs)
            if spec.baseline in medians:
                cell.baseline = spec.baseline
                cell.cost = _cost(metric, median, medians[spec.baseline])
                if cell.cost is not None and not metric.daemons_only:
                    cell.cost_mark = "pass" if cell.cost <= GUARD_COST_LIMIT else "short"
            cells[system] = cell
        if cells:
            table[metric.key] = cells
    return table


def _target_mark(metric: Metric, value: float, ratio: float | None) -> str | None:
    if metric.limit is not None:
        return "pass" if value < metric.limit else "short"
    if metric.target is None or ratio is None:
        return None
    reached = ratio >= metric.target if metric.higher_is_better else ratio <= metric.target
    return "pass" if reached else "short"


def _target_text(metric: Metric) -> str:
    if metric.limit is not None:
        return f"<{metric.limit:g} MiB"
    if metric.target is None:
        return ""
    return f"{'≥' if metric.higher_is_better else '≤'}{metric.target:g}×go"


def fmt_number(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}".replace(",", " ")
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def format_table(table: dict[str, dict[str, Cell]], order: list[str]) -> str:
    header = ("metric", "system", "median", "min..max", "×raw", "×gocryptfs", "target", "",
              "cost vs plain", "≤10%")
    rows: list[tuple[str, ...]] = [header]
    for metric in METRICS:
        cells = table.get(metric.key)
        if not cells:
            continue
        first = True
        for system in order:
            cell = cells.get(system)
            if cell is None:
                continue
            low, high = fmt_number(min(cell.runs)), fmt_number(max(cell.runs))
            spread = "" if len(cell.runs) < 2 else f"{low}..{high}"
            rows.append((
                f"{metric.label} ({metric.unit})" if first else "", system, fmt_number(cell.median), spread,
                _fmt_ratio(cell.ratio_raw), _fmt_ratio(cell.ratio_gocryptfs),
                _target_text(metric) if cell.target_mark else "", cell.target_mark or "",
                "" if cell.cost is None else f"{cell.cost * 100:+.1f} %", cell.cost_mark or ""))
            first = False
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {2, 3, 4, 5, 8}
    lines = []
    for number, row in enumerate(rows):
        parts = [text.rjust(width) if i in right else text.ljust(width)
                 for i, (text, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
        if number == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def _fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


# ---------------------------------------------------------------------------- machine facts


def _command_output(*command: str) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _cpu_model() -> str | None:
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return None
    return found.group(1).strip() if found else None


def _memory_mib() -> int | None:
    try:
        found = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) // 1024 if found else None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(workdir: Path, repo: Path) -> dict[str, object]:
    from encfs_pacs.fs._binding import LIBFUSE_VERSION  # loads libfuse3 the way the mount does

    commit = _command_output("git", "-C", str(repo), "rev-parse", "--short", "HEAD")
    dirty = _command_output("git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no")
    return {
        "kernel": platform.release(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mib": _memory_mib(),
        "python": platform.python_version(),
        "binding": f"mfusepy {_package_version('mfusepy')} on libfuse {LIBFUSE_VERSION}",
        "libfuse3_package": _command_output("dpkg-query", "-W", "-f=${Version}", "libfuse3-3"),
        "gocryptfs": next(iter((_command_output("gocryptfs", "-version") or "").splitlines()), None),
        "encfs_pacs": f"{_package_version('encfs-pacs')} (git {commit}{'+dirty' if dirty else ''})",
        "backing": _command_output("findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T", str(workdir)),
    }
