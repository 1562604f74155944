"""The chain head: turns records into hashed, sealed lines. Pure (no I/O, no clock).

The writer drives one Chainer from its single writer thread; the fixture generator and the
tests drive one directly, which is how the format is pinned by known-answer tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .records import (
    CHECKPOINT,
    EPOCH,
    FORMAT_VERSION,
    GENESIS_PREV,
    LINK,
    RESUME,
    ROTATE,
    SEALS,
    START,
    STOP,
    encode_line,
    seal_message,
)
from .signing import EpochKey


@dataclass
class Stamp:
    """When a record was made: UTC text and monotonic nanoseconds."""

    time: str
    mono_ns: int


class Chainer:
    """Sequence numbers, the hash chain and seals for one chain."""

    def __init__(self, *, chain: str, anchor: bytes, key: EpochKey, seq: int = 0,
                 prev: str = GENESIS_PREV) -> None:
        self.chain = chain
        self.anchor = anchor
        self.key = key
        self.seq = seq  # of the next record
        self.prev = prev  # hash of the last record
        self.unsealed = 0  # records since the last seal
        self.unsealed_since_ns: int | None = None  # monotonic time of the first unsealed record

    # -- plain records ------------------------------------------------------------------

    def add(self, record: dict[str, Any]) -> bytes:
        """Chain a record that already holds its payload, time and mono_ns."""
        record["seq"] = self.seq
        record["prev"] = self.prev
        line, digest = encode_line(record)
        self.seq += 1
        self.prev = digest
        if self.unsealed == 0:
            self.unsealed_since_ns = record["mono_ns"]
        self.unsealed += 1
        return line

    def _control(self, kind: str, stamp: Stamp, fields: dict[str, Any], detail: str | None = None,
                 key: EpochKey | None = None) -> bytes:
        record: dict[str, Any] = {"event": f"audit-{kind}", "time": stamp.time, "mono_ns": stamp.mono_ns,
                                  "audit": {"type": kind, **fields}, "seq": self.seq, "prev": self.prev}
        if detail:
            record["detail"] = detail
        if kind in SEALS:
            signer = key or self.key
            record["sig"] = signer.sign(seal_message(record)).hex()
        line, digest = encode_line(record)
        self.seq += 1
        self.prev = digest
        if kind in SEALS:
            self.unsealed, self.unsealed_since_ns = 0, None
        else:
            if self.unsealed == 0:
                self.unsealed_since_ns = stamp.mono_ns
            self.unsealed += 1
        return line

    # -- control records (docs/audit-format.md §5) ----------------------------------------

    def start(self, stamp: Stamp, continues: dict[str, Any] | None, detail: str | None = None) -> bytes:
        return self._control(START, stamp, {
            "format": FORMAT_VERSION, "chain": self.chain, "anchor": self.anchor.hex(),
            "epoch": self.key.epoch, "public": self.key.public.hex(), "continues": continues}, detail)

    def link(self, stamp: Stamp, prev_file: str) -> bytes:
        return self._control(LINK, stamp, {
            "format": FORMAT_VERSION, "chain": self.chain, "anchor": self.anchor.hex(),
            "epoch": self.key.epoch, "public": self.key.public.hex(), "prev_file": prev_file})

    def resume(self, stamp: Stamp, *, clean: bool, unsealed: int, torn_bytes: int, detail: str) -> bytes:
        return self._control(RESUME, stamp, {"clean": clean, "unsealed": unsealed,
                                             "torn_bytes": torn_bytes}, detail)

    def checkpoint(self, stamp: Stamp) -> bytes:
        return self._control(CHECKPOINT, stamp, {"epoch": self.key.epoch})

    def stop(self, stamp: Stamp) -> bytes:
        return self._control(STOP, stamp, {"epoch": self.key.epoch})

    def rotate(self, stamp: Stamp, file: str | None) -> bytes:
        """The last record of a file; ``file`` is the name it keeps once rotated (None: unknown)."""
        return self._control(ROTATE, stamp, {"epoch": self.key.epoch, "file": file})

    def epoch(self, stamp: Stamp, new_key: EpochKey) -> bytes:
        """Endorse ``new_key`` with the current key; from here on, seals use ``new_key``.

        The caller erases the old key once this line is durable (and the key store updated).
        """
        if new_key.epoch != self.key.epoch + 1:
            raise ValueError(f"epoch {new_key.epoch} cannot follow epoch {self.key.epoch}")
        line = self._control(EPOCH, stamp, {"epoch": new_key.epoch, "public": new_key.public.hex()},
                             key=self.key)
        self.key = new_key
        return line
