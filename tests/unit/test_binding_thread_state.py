"""The FUSE binding keeps one Python thread state per libfuse worker (fs/_binding.py).

A real mount with C worker threads is in tests/integration/test_binding_threads.py."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from encfs_pacs.fs import _binding
from encfs_pacs.fs._binding import EncfsFUSE


def test_each_thread_keeps_its_state_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(_binding, "_gilstate_ensure", lambda: calls.append(threading.get_native_id()))
    monkeypatch.setattr(_binding, "_kept", threading.local())

    def requests(count: int) -> None:
        for _ in range(count):
            _binding.keep_python_thread_state()

    workers = [threading.Thread(target=requests, args=(5,)) for _ in range(3)]
    for worker in workers:
        worker.start()
        worker.join()
    requests(2)
    assert len(calls) == 4  # one per thread (three workers and this one), not one per request
    assert calls[-1] == threading.get_native_id()


def test_every_callback_keeps_the_state_before_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """The override of mfusepy's private ``_wrapper`` is really in the call path (a rename in
    mfusepy would make it dead code), and it runs before the operation."""
    order: list[str] = []
    monkeypatch.setattr(_binding, "keep_python_thread_state", lambda: order.append("keep"))
    fuse = object.__new__(EncfsFUSE)  # no mount: only the wrapper is exercised

    def getattr_operation(path: bytes) -> int:
        order.append(f"operation {path!r}")
        return 7

    assert fuse._wrapper(getattr_operation, b"/x") == 7
    assert order == ["keep", "operation b'/x'"]


def test_workers_are_never_ended_while_mounted(tmp_path: Any) -> None:
    """A worker libfuse ended would leave its kept state behind: idle workers are all kept."""
    from encfs_pacs.fs.mount import fuse_options

    class Volume:
        backing = tmp_path

    options = fuse_options(Volume(), as_root=False)  # type: ignore[arg-type]
    assert options["max_idle_threads"] == options["max_threads"] >= 4
