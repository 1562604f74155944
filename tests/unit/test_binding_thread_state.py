"""The FUSE binding keeps one Python thread state per libfuse worker (fs/_binding.py)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from encfs_pacs.fs import _binding


def test_each_thread_keeps_its_state_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(_binding, "_gilstate_ensure", lambda: calls.append(threading.get_native_id()))
    monkeypatch.setattr(_binding, "_threads_keeping_state", set())

    def requests(count: int) -> None:
        for _ in range(count):
            _binding.keep_python_thread_state()

    workers = [threading.Thread(target=requests, args=(5,)) for _ in range(3)]
    for worker in workers:
        worker.start()
        worker.join()  # one after another: the OS could reuse a finished thread's id otherwise
    requests(2)
    assert len(calls) == 4  # one per thread (three workers and this one), not one per request
    assert calls[-1] == threading.get_native_id()


def test_the_extra_reference_really_keeps_a_state() -> None:
    """The real PyGILState_Ensure on a Python thread: nested, so the state stays and the GIL
    is handed back normally (the thread goes on running Python afterwards)."""
    done = threading.Event()

    def worker() -> None:
        _binding.keep_python_thread_state()
        _binding.keep_python_thread_state()
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=10)
    assert done.is_set() and not thread.is_alive()


def test_workers_are_never_ended_while_mounted(tmp_path: Any) -> None:
    """A worker libfuse ended would leave its kept state behind: idle workers are all kept."""
    from encfs_pacs.fs.mount import fuse_options

    class Volume:
        backing = tmp_path

    options = fuse_options(Volume(), as_root=False)  # type: ignore[arg-type]
    assert options["max_idle_threads"] == options["max_threads"] >= 4
