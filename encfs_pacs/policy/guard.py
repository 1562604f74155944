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
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

Clock = Callable[[], float]
ProcessKey = tuple[int, int]


# How long a mount remembers which process created which file: the longest write-once grace a
# policy may give (policy/loader.py refuses more). And how many creations at most: a PACS storing
# 300 images a second creates a million files an hour, which would cost hundreds of MiB; 100 000
# (30-50 MiB) still covers the default 60 s grace at 1 600 creations a second on the mount.
REMEMBER_SECONDS = 3600.0
REMEMBER_MAX = 100_000


class RecentCreations:
    """Paths created by a process, remembered for a grace period.

    Kept in creation order, so forgetting the oldest costs nothing per create: an earlier
    version scanned the whole table at every create once it held 10 000 paths (2-3 ms per
    create at 100 000, and it grew without bound within the hour)."""

    def __init__(self, clock: Clock = time.monotonic, keep_seconds: float = REMEMBER_SECONDS,
                 max_entries: int = REMEMBER_MAX) -> None:
        self._clock = clock
        self._keep_seconds = keep_seconds
        self._max_entries = max_entries
        self._lock = threading.Lock()
        # OrderedDict, not dict: popping a plain dict's first item again and again makes each
        # next(iter()) skip the freed slots before it.
        self._created: OrderedDict[str, tuple[ProcessKey, float]] = OrderedDict()

    def remember(self, path: str, process: ProcessKey) -> None:
        now = self._clock()
        with self._lock:
            self._created.pop(path, None)  # a new creation goes to the end, as the newest
            self._created[path] = (process, now)
            limit = now - self._keep_seconds
            _forget_oldest(self._created, self._max_entries, lambda entry: entry[1] < limit)

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
                # Placed last though older than its neighbours: it is then forgotten a little
                # later than its time, never earlier, and age_for still gives its true age.
                self._created.pop(new, None)
                self._created[new] = entry

    def forget(self, path: str) -> None:
        with self._lock:
            self._created.pop(path, None)

    def __len__(self) -> int:
        return len(self._created)



class RateGuard:
    """Sliding-window counter of destructive operations per process.

    A process that stopped counting is forgotten once its newest event has left the longest
    window used so far: every cron run and script is a new process, and an earlier version
    kept each one's events for the life of the mount (up to 33 KB per process at 1 000
    changes allowed)."""

    def __init__(self, clock: Clock = time.monotonic, max_processes: int = REMEMBER_MAX) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # Ordered by each process's newest event (moved to the end at every count), so the
        # processes that went quiet longest are at the front.
        self._events: OrderedDict[ProcessKey, deque[float]] = OrderedDict()
        self._longest_window = 0.0
        self._max_processes = max_processes
        # Kept for good: a blocked process stays blocked until it exits; there is one entry
        # per security alert, not per process.
        self._blocked: dict[ProcessKey, str] = {}

    def blocked(self, process: ProcessKey) -> str | None:
        """Why the process is blocked, or None."""
        with self._lock:
            return self._blocked.get(process)

    def count(self, process: ProcessKey, rule_id: str, max_changes: int, window_seconds: float) -> str | None:
        """Record one destructive operation; returns the block reason when this one trips the guard."""
        now = self._clock()
        with self._lock:
            events = self._events.pop(process, None)
            if events is None:
                events = deque()
            self._events[process] = events  # (re)placed last: the newest event is now
            events.append(now)
            while events and events[0] < now - window_seconds:
                events.popleft()
            self._longest_window = max(self._longest_window, window_seconds)
            limit = now - self._longest_window
            _forget_oldest(self._events, self._max_processes, lambda times: times[-1] < limit)
            if len(events) <= max_changes:
                return None
            reason = (f"rate guard of rule {rule_id}: more than {max_changes} rewrites, renames or "
                      f"deletes within {window_seconds:g} s; the process is blocked until it exits")
            self._blocked[process] = reason
            self._events.pop(process, None)
            return reason

    def __len__(self) -> int:
        return len(self._events)


def _forget_oldest(table: OrderedDict[Any, Any], max_entries: int, stale: Callable[[Any], bool]) -> None:
    """Trim a table kept oldest first: beyond ``max_entries``, then while its first is stale.
    Costs only what it removes (never a scan of what stays)."""
    while len(table) > max_entries:
        table.popitem(last=False)
    while table and stale(next(iter(table.values()))):
        table.popitem(last=False)
