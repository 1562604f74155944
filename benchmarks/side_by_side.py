"""Side by side on one backing disk: the raw directory, gocryptfs and encfs-pacs (plain, and with
the allow-list and audit log on). Prints medians, ratios to raw and to gocryptfs and the issue's
targets as a table, and saves everything as JSON. Needs root (mounts, dropping the page cache).

    make bench                                  # full run: 3 interleaved repeats, ~15 min
    make bench BENCH_ARGS=--quick               # smoke run: small sizes, 1 repeat
    .venv/bin/python benchmarks/side_by_side.py --systems raw,plain --workloads sequential

Every mount it makes is unmounted when it ends, also on errors and Ctrl-C / SIGTERM.
See docs/performance.md for what each workload does and the figures of a real run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from sidebyside import orthanc, report, systems
from sidebyside.systems import System, SystemSpec
from sidebyside.workloads import QUICK_SIZES, WORKLOADS, Context, Sizes

REPO = Path(__file__).resolve().parent.parent
WorkloadFn = Callable[[Context, System], dict[str, float]]


def parse_args() -> argparse.Namespace:
    names = [spec.name for spec in systems.SYSTEMS]
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and 1 repeat (smoke run)")
    parser.add_argument("--repeats", type=int, help="repeats of every measurement (default 3, quick 1)")
    parser.add_argument("--systems", default=",".join(names), help=f"comma-separated subset of {names}")
    parser.add_argument("--workloads", default=",".join([*WORKLOADS, "orthanc"]),
                        help=f"comma-separated subset of {[*WORKLOADS, 'orthanc']}")
    parser.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc ingest")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the systems' folders go (the backing disk); default /var/tmp")
    parser.add_argument("--json", type=Path, help="result file (default benchmarks/results/…json)")
    parser.add_argument("--chunk-size", type=int, default=65536, help="encfs-pacs chunk size")
    parser.add_argument("--read-ahead-kb", type=int,
                        help="experiment: set every FUSE mount's readahead (sysfs) after mounting")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (logs, audit logs, and the CT study, metadata "
                             "and Orthanc files: several GiB)")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.systems = [name for name in args.systems.split(",") if name]
    args.workloads = [name for name in args.workloads.split(",") if name]
    unknown = set(args.systems) - set(names) | set(args.workloads) - {*WORKLOADS, "orthanc"}
    if unknown:
        parser.error(f"unknown system or workload: {', '.join(sorted(unknown))}")
    if args.no_orthanc and "orthanc" in args.workloads:
        args.workloads.remove("orthanc")
    return args


def choose_systems(wanted: list[str]) -> tuple[list[SystemSpec], dict[str, str]]:
    mount_help = systems.mount_help_text()
    chosen, skipped = [], {}
    for spec in systems.SYSTEMS:
        if spec.name not in wanted:
            continue
        reason = systems.skip_reason(spec, mount_help)
        if reason:
            skipped[spec.name] = reason
            print(f"skipping {spec.name}: {reason}")
        else:
            chosen.append(spec)
    return chosen, skipped


@contextlib.contextmanager
def stop_cleanly_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP end the run through the same finally blocks as Ctrl-C (no mount left)."""
    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Run:
    """One benchmark run: the systems, the collected figures and everything to record."""

    def __init__(self, args: argparse.Namespace, specs: list[SystemSpec], workdir: Path) -> None:
        self.args = args
        self.specs = specs
        self.workdir = workdir
        self.sizes: Sizes = QUICK_SIZES if args.quick else Sizes()
        self.systems: list[System] = []
        self.runs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.errors: list[dict[str, str]] = []
        self.notes: list[str] = []
        self.caches_dropped = True
        self.machine: dict[str, object] = {}
        self.context = Context(self.sizes, self.cold)
        self.workloads: dict[str, WorkloadFn] = {
            name: WORKLOADS[name] for name in args.workloads if name in WORKLOADS}

    def cold(self, system: System) -> None:
        system.remount()
        if not systems.drop_caches() and self.caches_dropped:
            self.caches_dropped = False
            self.notes.append("the page cache could not be dropped (not root?): cold reads are warm")

    def set_up(self) -> None:
        self.machine = report.machine_info(self.workdir, REPO)
        secret = systems.write_secret(self.workdir / "secret")
        placeholders: dict[str, str] = {}
        if any("{policy}" in flag for spec in self.specs for flag in spec.mount_flags):
            placeholders["policy"] = str(systems.write_policy(self.workdir / "policy",
                                                              systems.policy_programs()))
        if "orthanc" in self.args.workloads:
            self.add_orthanc()
        for spec in self.specs:
            system = systems.make_system(spec, self.workdir, secret, placeholders, self.args.chunk_size)
            self.systems.append(system)
            system.set_read_ahead_kb = self.args.read_ahead_kb
            system.setup()
            system.mount()

    def add_orthanc(self) -> None:
        reason = orthanc.skip_reason()
        if reason:
            self.notes.append(f"Orthanc ingest skipped: {reason}")
            print(f"skipping the Orthanc ingest: {reason}")
            return
        count = self.sizes.orthanc_instances
        sources = self.workdir / "study-source"
        orthanc.generate_study(sources, count)
        counter = iter(range(1_000_000))
        self.workloads["orthanc"] = lambda _ctx, system: orthanc.ingest(system, sources, count, next(counter))

    def measure(self) -> None:
        for repeat in range(self.args.repeats):
            # Rotate the order so that no system always runs right after the same neighbour.
            shift = repeat % len(self.systems)
            order = self.systems[shift:] + self.systems[:shift]
            for name, workload in self.workloads.items():
                for system in order:
                    self.measure_one(repeat, name, workload, system)

    def measure_one(self, repeat: int, name: str, workload: WorkloadFn, system: System) -> None:
        earlier = set(system.path.iterdir())  # other workloads' kept files stay (fresh_folder)
        try:
            figures = workload(self.context, system)
        except Exception as exc:  # noqa: BLE001 - recorded and shown; the other systems go on
            self.errors.append({"repeat": str(repeat), "workload": name, "system": system.name,
                                "error": f"{type(exc).__name__}: {exc}"})
            print(f"  ERROR {name} on {system.name}: {type(exc).__name__}: {exc}", flush=True)
            system.recover()
            for leftover in set(system.path.iterdir()) - earlier:
                with contextlib.suppress(OSError):
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            return
        for key, value in figures.items():
            self.runs[key][system.name].append(value)
        shown = "  ".join(f"{key}={report.fmt_number(value)}" for key, value in figures.items())
        print(f"  [{repeat + 1}/{self.args.repeats}] {name:<10} {system.name:<10} {shown}", flush=True)

    def close(self) -> None:
        for system in self.systems:
            system.close()
        left = systems.sweep_mounts(self.workdir)
        if left:
            print(f"warning: forced lazy unmount of {', '.join(left)}", file=sys.stderr)

    def document(self, table: dict[str, dict[str, report.Cell]], started: float,
                 load_start: tuple[float, ...]) -> dict[str, object]:
        return {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "command": sys.argv,
            "quick": self.args.quick,
            "repeats": self.args.repeats,
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "page_cache_dropped": self.caches_dropped,
            "sizes": dataclasses.asdict(self.sizes),
            "chunk_size": self.args.chunk_size,
            "read_ahead_kb_set": self.args.read_ahead_kb,
            "machine": self.machine,
            "systems": {s.name: {"description": s.spec.description, "kind": s.spec.kind,
                                 "mount_flags": list(s.spec.mount_flags), "mounts": s.mounts,
                                 "read_ahead_kb": s.read_ahead_kb,
                                 "daemon_peak_rss_mib": round(s.peak_hwm_kib / 1024, 1) or None}
                        for s in self.systems},
            "results": {metric: {system: cell.as_json() for system, cell in cells.items()}
                        for metric, cells in table.items()},
            "errors": self.errors,
            "notes": self.notes,
        }


def default_json_path(quick: bool) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return REPO / "benchmarks" / "results" / f"side-by-side-{stamp}{'-quick' if quick else ''}.json"


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("warning: not root: mounting may fail and the page cache cannot be dropped", file=sys.stderr)
    started, load_start = time.time(), os.getloadavg()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in load_start)} on {os.cpu_count()} CPUs")
    specs, skipped = choose_systems(args.systems)
    workdir = Path(tempfile.mkdtemp(prefix="encfs-pacs-bench-", dir=args.dir))
    run = Run(args, specs, workdir)
    try:
        with stop_cleanly_on_signals():
            run.set_up()
            run.measure()
    finally:
        run.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    table = report.summarise(run.runs, {spec.name: spec for spec in specs})
    document = run.document(table, started, load_start)
    document["skipped"] = skipped
    print()
    print(report.format_table(table, [s.name for s in run.systems]))
    print()
    for note in [*run.notes, *(f"skipped {k}: {v}" for k, v in skipped.items())]:
        print(f"note: {note}")
    for error in run.errors:
        print(f"ERROR (repeat {int(error['repeat']) + 1}) {error['workload']} on {error['system']}: "
              f"{error['error']}")
    peaks = ", ".join(f"{s.name} {s.peak_hwm_kib / 1024:.0f} MiB" for s in run.systems if s.peak_hwm_kib)
    print(f"daemon peak RSS over the whole run: {peaks}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    path = args.json or default_json_path(args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"saved {path}" + (f"; work folder kept in {workdir}" if args.keep else ""))
    return 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
