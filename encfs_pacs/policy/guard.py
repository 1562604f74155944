"""Ransomware controls that need memory of the recent past (the decision itself stays pure).

``RecentCreations`` lets a write-once rule tell "a file this process is still storing" from
"an image stored earlier": the PACS may write, fix up and rename a file it just created, but
no one may rewrite or remove it afterwards. ``RateGuard`` counts how many existing files a
process rewrites, renames or deletes; above the rule's limit the process is blocked for the
rest of its life (ransomware does not slow down when asked), and the caller raises an alert.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]
ProcessKey = tuple[int, int]


class RecentCreations:
    """Paths created by a process, remembered for a grace period."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._created: dict[str, tuple[ProcessKey, float]] = {}

    def remember(self, path: str, process: ProcessKey) -> None:
        with self._lock:
            self._created[path] = (process, self._clock())
            if len(self._created) > 10_000:
                self._forget_older_than(3600.0)

    def age_for(self, path: str, process: ProcessKey) -> float | None:
        """Seconds since ``process`` created ``path``, or None if it did not (or forgot)."""
        with self._lock:
            entry = self._created.get(path)
        if entry is None or entry[0] != process:
            return None
        return self._clock() - entry[1]

    def moved(self, old: str, new: str) -> None:
        with self._lock:
            entry = self._created.pop(old, None)
            if entry is not None:
                self._created[new] = entry

    def forget(self, path: str) -> None:
        with self._lock:
            self._created.pop(path, None)

    def _forget_older_than(self, seconds: float) -> None:
        limit = self._clock() - seconds
        for path in [p for p, (_, when) in self._created.items() if when < limit]:
            del self._created[path]


class RateGuard:
    """Sliding-window counter of destructive operations per process."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._events: dict[ProcessKey, deque[float]] = {}
        self._blocked: dict[ProcessKey, str] = {}

    def blocked(self, process: ProcessKey) -> str | None:
        """Why the process is blocked, or None."""
        with self._lock:
            return self._blocked.get(process)

    def count(self, process: ProcessKey, rule_id: str, max_changes: int, window_seconds: float) -> str | None:
        """Record one destructive operation; returns the block reason when this one trips the guard."""
        now = self._clock()
        with self._lock:
            events = self._events.setdefault(process, deque())
            events.append(now)
            while events and events[0] < now - window_seconds:
                events.popleft()
            if len(events) <= max_changes:
                return None
            reason = (f"rate guard of rule {rule_id}: more than {max_changes} rewrites, renames or "
                      f"deletes within {window_seconds:g} s; the process is blocked until it exits")
            self._blocked[process] = reason
            self._events.pop(process, None)
            return reason
