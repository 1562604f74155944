"""Progress reporting: the library calls these methods; the CLI draws them on a terminal."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, files: int, nbytes: int) -> None:
        """Totals, once known (after the counting pass)."""

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        """Work done since the last call (bytes during a file, then one file at its end)."""

    def finish(self) -> None:
        """No more calls follow."""


class NoProgress:
    def start(self, files: int, nbytes: int) -> None:
        pass

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass
