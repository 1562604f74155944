"""A real rsyslogd on 127.0.0.1 as the central syslog collector of the audit-forwarding tests.

Shared by tests/integration/test_syslog_rsyslog.py and tests/e2e/test_two_servers.py.
``running_rsyslog(folder)`` starts rsyslogd with imudp + imtcp on free loopback ports and an
omfile action in RFC 5424 format, in its own work folder (no imuxsock/imklog, so nothing else of
this machine gets in); it returns once both inputs answer and always stops the daemon on exit.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from encfs_pacs.audit.forward import parse_message

RSYSLOG_CONF = """\
global(workDirectory="{work}" maxMessageSize="64k" net.enableDNS="off"
       parser.escapeControlCharactersOnReceive="off")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
action(type="omfile" file="{out}" template="RSYSLOG_SyslogProtocol23Format")
"""


RSYSLOG_MISSING = "rsyslogd is not installed (apt-get install rsyslog; the Makefile's APT_PACKAGES has it)"


def rsyslogd_path() -> str | None:
    return shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Collector:
    udp: int
    tcp: int
    out: Path

    def target(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.udp if scheme == 'udp' else self.tcp}"

    def lines(self) -> list[bytes]:
        try:
            return [line for line in self.out.read_bytes().split(b"\n") if line]
        except FileNotFoundError:
            return []

    def messages(self, host: str, msgid: str = "audit") -> list[bytes]:
        """MSG of every message from ``host`` with ``msgid``, in the collector's order."""
        found = []
        for line in self.lines():
            message = parse_message(line)
            if message.hostname == host and message.msgid == msgid:
                found.append(message.msg)
        return found

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                tail = "\n".join(line.decode(errors="replace") for line in self.lines()[-20:])
                raise AssertionError(f"rsyslog did not write {what} within {timeout} s; it holds:\n{tail}")
            time.sleep(0.05)


@contextmanager
def running_rsyslog(folder: Path) -> Iterator[Collector]:
    """rsyslogd writing every message it receives to ``folder``/collected.log; needs
    ``rsyslogd_path()`` (callers skip without it)."""
    binary = rsyslogd_path()
    assert binary is not None, RSYSLOG_MISSING
    (folder / "work").mkdir(parents=True)
    collector = Collector(free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM),
                          folder / "collected.log")
    conf = folder / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(work=folder / "work", udp=collector.udp, tcp=collector.tcp,
                                        out=collector.out))
    with open(folder / "rsyslogd.out", "wb") as output:
        process = subprocess.Popen([binary, "-n", "-f", str(conf), "-i", str(folder / "rsyslogd.pid")],
                                   stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_until_listening(collector, process, folder)
        yield collector
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until_listening(collector: Collector, process: subprocess.Popen[bytes], folder: Path) -> None:
    """Probe both inputs until a probe message of each is in the output file."""
    deadline = time.monotonic() + 15
    for scheme in ("udp", "tcp"):
        probe = f"<13>1 - probe test - - - ready-{scheme}".encode()
        while probe[-9:] not in b"".join(collector.lines()):
            if process.poll() is not None:
                raise AssertionError(f"rsyslogd exited ({process.returncode}): "
                                     + (folder / "rsyslogd.out").read_text(errors="replace"))
            if time.monotonic() > deadline:
                raise AssertionError(f"rsyslogd's {scheme} input did not answer within 15 s")
            try:
                if scheme == "udp":
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                        sock.sendto(probe, ("127.0.0.1", collector.udp))
                else:
                    with socket.create_connection(("127.0.0.1", collector.tcp), timeout=1) as sock:
                        sock.sendall(f"{len(probe)} ".encode() + probe)
            except OSError:
                pass
            time.sleep(0.1)
