"""One writer process of the shared-storage race test (test_shared_storage.py), run as a script.

    python shared_worker.py MOUNTPOINT WORKER WORKERS START_AT SEED

At START_AT (a time.time() value, so every worker starts together) it:
- tries an O_EXCL create of every name in excl/ and writes its id into the ones it won;
- opens (O_CREAT, no O_TRUNC) every striped file and writes its own 1500-byte stripes of the
  expected content, in random order and random pieces, so read-modify-writes of the same
  chunks and size changes race with the other workers on both mounts;
- writes its own file at random offsets (different files never contend).
Prints a JSON object: {"won": [names]}.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time

EXCL_NAMES = [f"excl/claim-{i}" for i in range(12)]
STRIPED = ["striped-0.bin", "striped-1.bin"]
STRIPE = 1500
STRIPED_SIZE = 5 * 65536 + 1234
OWN_SIZE = 3 * 65536 + 77


def pattern(name: str, size: int) -> bytes:
    """The expected content of a file: deterministic, different for every name and offset."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{name}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def claim_content(worker: int) -> bytes:
    return f"claimed by worker {worker}\n".encode() * 300  # 7 KB: more than one 4 KiB page


def _write_pieces(fd: int, data: bytes, offset: int, rng: random.Random) -> None:
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 2)))
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        os.pwrite(fd, data[start:end], offset + start)


def main() -> None:
    mountpoint, worker, workers, start_at, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        float(sys.argv[4]), int(sys.argv[5])
    rng = random.Random(seed * 1000 + worker)
    time.sleep(max(0.0, start_at - time.time()))
    won = []
    for name in EXCL_NAMES:
        try:
            fd = os.open(os.path.join(mountpoint, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            continue
        try:
            os.write(fd, claim_content(worker))
        finally:
            os.close(fd)
        won.append(name)
    for name in STRIPED:
        content = pattern(name, STRIPED_SIZE)
        mine = [s for s in range(0, STRIPED_SIZE, STRIPE) if (s // STRIPE) % workers == worker]
        rng.shuffle(mine)
        fd = os.open(os.path.join(mountpoint, name), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            for start in mine:
                _write_pieces(fd, content[start:start + STRIPE], start, rng)
        finally:
            os.close(fd)
    own = f"own-{worker}.bin"
    content = pattern(own, OWN_SIZE)
    pieces = [(s, min(s + 9000, OWN_SIZE)) for s in range(0, OWN_SIZE, 9000)]
    rng.shuffle(pieces)
    fd = os.open(os.path.join(mountpoint, own), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        for start, end in pieces:
            os.pwrite(fd, content[start:end], start)
    finally:
        os.close(fd)
    print(json.dumps({"won": won}))


if __name__ == "__main__":
    main()
