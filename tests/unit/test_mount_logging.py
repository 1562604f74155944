"""The config's syslog target: daemon log lines reach a local syslog socket as well."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from encfs_pacs.cli.volume import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    logger = logging.getLogger("encfs_pacs")
    handlers, level = list(logger.handlers), logger.level
    yield
    for handler in logger.handlers:
        handler.close()
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_syslog_target_receives_the_daemon_log(tmp_path: Path, restore_logging: None) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(tmp_path / "log"))
        server.settimeout(5)
        configure_logging(tmp_path / "daemon.log", foreground=True, verbose=False,
                          syslog=str(tmp_path / "log"))
        logging.getLogger("encfs_pacs.mount").warning("policy reloaded")
        message = server.recv(4096).decode()
    assert message.startswith("<12>") and "encfs-pacs[" in message and "policy reloaded" in message
    assert "policy reloaded" in (tmp_path / "daemon.log").read_text()  # the main log still gets it


def test_unreachable_syslog_target_does_not_stop_logging(tmp_path: Path, restore_logging: None) -> None:
    configure_logging(tmp_path / "daemon.log", foreground=True, verbose=False,
                      syslog=str(tmp_path / "missing"))
    logging.getLogger("encfs_pacs.mount").warning("still logged")
    text = (tmp_path / "daemon.log").read_text()
    assert "cannot log to syslog target" in text and "still logged" in text
