"""Chunk-size trade-off, measured on the store (no FUSE): prints a table of MB/s and reads/s.

    .venv/bin/python benchmarks/chunk_size.py [--mib 64]

Sequential write and read move 1 MiB per call (the request size libfuse3 hands us for large
writes); random reads are 4 KiB at random offsets (what dcmdump-style seeking costs).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from encfs_pacs import store

SECRET = store.Secret("passphrase", b"benchmark")


def measure(chunk_size: int, mib: int, repeats: int) -> dict[str, float]:
    results: dict[str, list[float]] = {"write": [], "read": [], "rand4k": []}
    block = os.urandom(1 << 20)
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            backing = Path(tmp) / "b"
            store.create_volume(backing, SECRET, chunk_size=chunk_size, scrypt_log_n=10)
            volume = store.unlock(backing, SECRET)
            handle = volume.create("/f", 0o600, os.O_RDWR)
            start = time.perf_counter()
            for i in range(mib):
                handle.write(block, i << 20)
            handle.fsync(False)
            results["write"].append(mib / (time.perf_counter() - start))
            start = time.perf_counter()
            for i in range(mib):
                handle.read(1 << 20, i << 20)
            results["read"].append(mib / (time.perf_counter() - start))
            rng = random.Random(1)
            count = 5000
            start = time.perf_counter()
            for _ in range(count):
                handle.read(4096, rng.randrange(0, (mib << 20) - 4096))
            results["rand4k"].append(count / (time.perf_counter() - start))
            handle.close()
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'chunk':>8} {'write MiB/s':>12} {'read MiB/s':>11} {'rand4k reads/s':>15}   "
          f"(medians of {args.repeats}, {args.mib} MiB file, page cache warm)")
    for chunk_size in (4096, 16384, 65536, 262144, 1048576):
        r = measure(chunk_size, args.mib, args.repeats)
        print(f"{chunk_size // 1024:>6}Ki {r['write']:>12.0f} {r['read']:>11.0f} {r['rand4k']:>15.0f}")


if __name__ == "__main__":
    main()
