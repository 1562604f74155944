"""SQLite in WAL mode on the mount, as a PACS index (Orthanc) uses it.

WAL mode needs shared mmap of the -shm file, POSIX locks between processes, ftruncate and
fsync; the failures it provokes (SIGBUS, SQLITE_IOERR_SHMMAP, "database disk image is
malformed") typically show only after a restart, so the test remounts and writes again.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TRANSACTIONS, ROWS_PER_TRANSACTION = 120, 25
TOTAL = TRANSACTIONS * ROWS_PER_TRANSACTION

_WRITER = """
import hashlib, random, sqlite3, sys
db, transactions, per, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
con = sqlite3.connect(db, timeout=60, isolation_level=None)
con.execute("PRAGMA synchronous=FULL")
rnd = random.Random(seed)
for t in range(transactions):
    con.execute("BEGIN IMMEDIATE")
    for _ in range(per):
        blob = rnd.randbytes(rnd.randint(10, 6000))
        con.execute("INSERT INTO images(tx, blob, digest) VALUES (?, ?, ?)",
                    (t, blob, hashlib.sha256(blob).hexdigest()))
    con.execute("COMMIT")
con.close()
print("wrote", transactions * per)
"""

_READER = """
import hashlib, random, sqlite3, sys, time
db, per, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
con = sqlite3.connect(db, timeout=60, isolation_level=None)
assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
rnd, last, seen, deadline = random.Random(0), -1, set(), time.monotonic() + 240
while time.monotonic() < deadline:
    con.execute("BEGIN")  # one snapshot for the count and the row check
    (count,) = con.execute("SELECT count(*) FROM images").fetchone()
    assert count % per == 0, f"saw a partial transaction: {count} rows"
    assert count >= last, f"count went back from {last} to {count}"
    if count:
        row_id = rnd.randint(1, count)
        blob, digest = con.execute("SELECT blob, digest FROM images WHERE id = ?", (row_id,)).fetchone()
        assert hashlib.sha256(blob).hexdigest() == digest, f"row {row_id} is damaged"
    con.execute("COMMIT")
    last = count
    seen.add(count)
    if count == total:
        break
con.close()
print(len(seen), last)
"""


def _create(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        con.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, tx INTEGER, blob BLOB, digest TEXT)")
        con.commit()
    finally:
        con.close()


def _check(db: Path, expected_rows: int) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT count(*) FROM images").fetchone()[0] == expected_rows
        for row_id, blob, digest in con.execute("SELECT id, blob, digest FROM images"):
            assert hashlib.sha256(blob).hexdigest() == digest, f"row {row_id} is damaged"
        per_transaction = dict(con.execute("SELECT tx, count(*) FROM images GROUP BY tx").fetchall())
        assert per_transaction == {tx: expected_rows // TRANSACTIONS for tx in range(TRANSACTIONS)}
    finally:
        con.close()


def _count(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT count(*) FROM images").fetchone()[0]
    finally:
        con.close()


def _run_writer_and_reader(db: Path, seed: int) -> None:
    """A writer process commits TRANSACTIONS transactions while a reader process polls."""
    before = _count(db)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(TRANSACTIONS),
                               str(ROWS_PER_TRANSACTION), str(seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(db), str(ROWS_PER_TRANSACTION),
                               str(before + TOTAL)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, w_err = writer.communicate(timeout=240)
        r_out, r_err = reader.communicate(timeout=240)
    finally:
        for process in (writer, reader):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert writer.returncode == 0, w_err
    assert reader.returncode == 0, r_err
    distinct_counts, last = map(int, r_out.split())
    assert last == before + TOTAL == _count(db)
    # the reader saw the table grow: it really ran while the writer committed
    assert distinct_counts >= 3, f"the reader saw only {distinct_counts} different row counts"


def test_sqlite_wal_concurrent_writer_and_reader_survive_remount(mounted) -> None:
    db = mounted.mountpoint / "index" / "index.sqlite"
    db.parent.mkdir()
    _create(db)
    _run_writer_and_reader(db, seed=1)
    _check(db, TOTAL)
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # ftruncate of the -wal file
    finally:
        con.close()
    _check(db, TOTAL)

    mounted.unmount()  # only a restart exposes most mmap/-shm problems
    mounted.mount()
    _check(db, TOTAL)
    _run_writer_and_reader(db, seed=2)  # and the volume keeps working as an index after the restart
    _check(db, 2 * TOTAL)

    mounted.unmount()
    mounted.mount()
    _check(db, 2 * TOTAL)
