"""Write-once memory of recent creations, and the per-process rate guard (clocks injected)."""

from __future__ import annotations

import pytest

from encfs_pacs.policy.guard import RateGuard, RecentCreations

A = (100, 5000)  # (tgid, start time)
B = (200, 6000)
A_REUSED = (100, 9000)  # same pid, another process


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------ RecentCreations

def test_age_of_a_created_path() -> None:
    clock = Clock()
    recent = RecentCreations(clock)
    recent.remember("/db/1.dcm", A)
    assert recent.age_for("/db/1.dcm", A) == 0.0
    clock.now += 12.5
    assert recent.age_for("/db/1.dcm", A) == 12.5


def test_other_process_or_path_has_no_age() -> None:
    recent = RecentCreations(Clock())
    recent.remember("/db/1.dcm", A)
    assert recent.age_for("/db/1.dcm", B) is None
    assert recent.age_for("/db/1.dcm", A_REUSED) is None  # pid reuse is another process
    assert recent.age_for("/db/2.dcm", A) is None
    assert recent.age_for("/db", A) is None


def test_creating_again_resets_owner_and_age() -> None:
    clock = Clock()
    recent = RecentCreations(clock)
    recent.remember("/db/1.dcm", A)
    clock.now += 50
    recent.remember("/db/1.dcm", B)
    assert recent.age_for("/db/1.dcm", A) is None
    assert recent.age_for("/db/1.dcm", B) == 0.0


def test_moved_keeps_owner_and_age() -> None:
    clock = Clock()
    recent = RecentCreations(clock)
    recent.remember("/db/tmp/1.part", A)
    clock.now += 3
    recent.moved("/db/tmp/1.part", "/db/1.dcm")
    assert recent.age_for("/db/tmp/1.part", A) is None
    assert recent.age_for("/db/1.dcm", A) == 3.0
    recent.moved("/db/never-created", "/db/x")  # unknown source: nothing to move
    assert recent.age_for("/db/x", A) is None


def test_forget() -> None:
    recent = RecentCreations(Clock())
    recent.remember("/db/1.dcm", A)
    recent.remember("/db/2.dcm", A)
    recent.forget("/db/1.dcm")
    recent.forget("/db/unknown")
    assert recent.age_for("/db/1.dcm", A) is None
    assert recent.age_for("/db/2.dcm", A) == 0.0


def test_memory_is_bounded_by_forgetting_old_entries() -> None:
    clock = Clock()
    recent = RecentCreations(clock)
    recent.remember("/old", A)
    clock.now += 4000  # older than an hour by the time the table is full
    for number in range(10_000):
        recent.remember(f"/new/{number}", A)
    assert recent.age_for("/old", A) is None
    assert recent.age_for("/new/0", A) == 0.0
    assert recent.age_for("/new/9999", A) == 0.0


def test_entries_older_than_the_horizon_are_forgotten_at_the_next_create() -> None:
    clock = Clock()
    recent = RecentCreations(clock, keep_seconds=100.0)
    recent.remember("/a", A)
    clock.now += 60
    recent.remember("/b", A)
    clock.now += 41  # /a is 101 s old, /b 41 s
    recent.remember("/c", B)
    assert recent.age_for("/a", A) is None
    assert recent.age_for("/b", A) == 41.0
    assert len(recent) == 2


def test_creating_again_makes_the_entry_the_newest() -> None:
    clock = Clock()
    recent = RecentCreations(clock, keep_seconds=100.0)
    recent.remember("/a", A)
    clock.now += 60
    recent.remember("/b", A)
    recent.remember("/a", A)  # created again: 0 s old now, kept behind /b
    clock.now += 41
    recent.remember("/c", A)
    assert recent.age_for("/a", A) == 41.0
    assert recent.age_for("/b", A) == 41.0


def test_a_moved_entry_keeps_its_age_and_is_never_forgotten_early() -> None:
    clock = Clock()
    recent = RecentCreations(clock, keep_seconds=100.0)
    recent.remember("/tmp/a.part", A)
    clock.now += 50
    recent.remember("/b", A)
    recent.moved("/tmp/a.part", "/a")  # older than /b, now after it in the table
    clock.now += 40
    recent.remember("/c", A)
    assert recent.age_for("/a", A) == 90.0
    clock.now += 11  # /a 101 s (behind /b, 51 s): forgotten once /b goes, not before
    recent.remember("/d", A)
    assert recent.age_for("/a", A) == 101.0
    assert recent.age_for("/b", A) == 51.0


def test_moving_onto_a_remembered_name_replaces_it() -> None:
    clock = Clock()
    recent = RecentCreations(clock)
    recent.remember("/a", B)
    clock.now += 5
    recent.remember("/tmp/x", A)
    recent.moved("/tmp/x", "/a")
    assert recent.age_for("/a", B) is None
    assert recent.age_for("/a", A) == 0.0
    assert len(recent) == 1


def test_at_most_max_entries_the_oldest_go_first() -> None:
    clock = Clock()
    recent = RecentCreations(clock, max_entries=3)
    for number in range(5):
        recent.remember(f"/f{number}", A)
        clock.now += 1
    assert len(recent) == 3
    assert [recent.age_for(f"/f{number}", A) for number in range(5)] == [None, None, 3.0, 2.0, 1.0]


# ------------------------------------------------------------------------------ RateGuard

def test_trips_at_max_plus_one_within_the_window() -> None:
    clock = Clock()
    guard = RateGuard(clock)
    for _ in range(3):
        assert guard.count(A, "pacs", 3, 10.0) is None
        clock.now += 1
    assert guard.blocked(A) is None
    reason = guard.count(A, "pacs", 3, 10.0)
    assert reason is not None
    assert "rule pacs" in reason and "more than 3" in reason and "10 s" in reason
    assert guard.blocked(A) == reason


def test_spread_beyond_the_window_never_trips() -> None:
    clock = Clock()
    guard = RateGuard(clock)
    for _ in range(50):
        assert guard.count(A, "pacs", 2, 10.0) is None
        clock.now += 5.5  # at most two events in any 10 s
    assert guard.blocked(A) is None


def test_old_events_leave_the_window() -> None:
    clock = Clock()
    guard = RateGuard(clock)
    for _ in range(3):
        assert guard.count(A, "pacs", 3, 10.0) is None
    clock.now += 10.5  # the burst above is now outside the window
    for _ in range(3):
        assert guard.count(A, "pacs", 3, 10.0) is None
    assert guard.count(A, "pacs", 3, 10.0) is not None


def test_blocked_process_stays_blocked() -> None:
    clock = Clock()
    guard = RateGuard(clock)
    for _ in range(2):
        guard.count(A, "pacs", 1, 60.0)
    reason = guard.blocked(A)
    assert reason is not None
    clock.now += 86_400  # a day later, without further activity
    assert guard.blocked(A) == reason
    guard.count(A, "pacs", 1, 60.0)
    assert guard.blocked(A) == reason


def test_processes_are_counted_separately() -> None:
    guard = RateGuard(Clock())
    for _ in range(3):
        assert guard.count(A, "pacs", 3, 10.0) is None
        assert guard.count(B, "pacs", 3, 10.0) is None
        assert guard.count(A_REUSED, "pacs", 3, 10.0) is None
    assert guard.count(A, "pacs", 3, 10.0) is not None
    assert guard.blocked(A) is not None
    assert guard.blocked(B) is None
    assert guard.blocked(A_REUSED) is None  # a new process that got the same pid
    assert guard.count(B, "pacs", 3, 10.0) is not None


@pytest.mark.parametrize("limit", [1, 5, 100])
def test_exactly_limit_changes_are_allowed(limit: int) -> None:
    guard = RateGuard(Clock())
    assert all(guard.count(A, "r", limit, 1.0) is None for _ in range(limit))
    assert guard.count(A, "r", limit, 1.0) is not None


def test_a_process_that_went_quiet_is_forgotten_after_the_window() -> None:
    clock = Clock()
    guard = RateGuard(clock)
    guard.count(A, "pacs", 3, 10.0)
    clock.now += 5
    guard.count(B, "pacs", 3, 10.0)
    clock.now += 6  # A's only event is 11 s old, B's 6 s
    guard.count(B, "pacs", 3, 10.0)
    assert len(guard) == 1
    for _ in range(3):  # A starts afresh: nothing old counts against it
        assert guard.count(A, "pacs", 3, 10.0) is None


def test_a_process_counting_again_stays_remembered() -> None:
    clock = Clock()
    guard = RateGuard(clock)
    guard.count(A, "pacs", 3, 10.0)
    guard.count(B, "pacs", 3, 10.0)
    clock.now += 8
    guard.count(A, "pacs", 3, 10.0)  # A is now the most recent, B the quietest
    clock.now += 3
    guard.count(A, "pacs", 3, 10.0)  # B (11 s quiet) goes, A's two recent events stay
    assert len(guard) == 1
    assert guard.count(A, "pacs", 3, 10.0) is None  # events at 8, 11, 11 s: three in the window
    assert guard.count(A, "pacs", 3, 10.0) is not None  # the fourth trips


def test_the_longest_window_in_use_decides_when_to_forget() -> None:
    clock = Clock()
    guard = RateGuard(clock)
    guard.count(A, "archive", 3, 100.0)
    clock.now += 20
    guard.count(B, "scratch", 3, 10.0)  # a short window must not drop A's 20 s old event
    assert len(guard) == 2


def test_at_most_max_processes_the_quietest_go_first() -> None:
    clock = Clock()
    guard = RateGuard(clock, max_processes=2)
    for process in (A, B, A_REUSED):
        guard.count(process, "pacs", 3, 10.0)
        clock.now += 1
    assert len(guard) == 2
    for _ in range(3):  # A was forgotten: its earlier event no longer counts
        assert guard.count(A, "pacs", 3, 10.0) is None
