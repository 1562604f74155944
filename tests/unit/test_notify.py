"""sd_notify: real AF_UNIX datagram sockets stand in for systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from encfs_pacs.fs import notify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_ready_reaches_a_path_socket(listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.getsockname())
    assert notify.ready("serving /srv/enc on /srv/plain")
    lines = listener.recv(4096).decode().split("\n")
    assert lines == ["READY=1", "STATUS=serving /srv/enc on /srv/plain", f"MAINPID={os.getpid()}"]


def test_stopping_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"encfs-pacs-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.stopping("unmounted /srv/plain")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=unmounted /srv/plain"


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready("x") is False


def test_a_dead_socket_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert notify.status("x") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/name")
    assert notify.status("x") is False
