"""Syslog forwarding: the RFC 5424 formatter, the UDP/TCP forwarder, and the writer's hook.

The collectors here are plain sockets on 127.0.0.1; tests/integration/test_syslog_rsyslog.py
does the same against a real rsyslogd.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from encfs_pacs.audit import verify
from encfs_pacs.audit.collect import collect
from encfs_pacs.audit.forward import (
    BOM,
    SD_ID,
    ForwardingLogHandler,
    SyslogForwarder,
    Target,
    check_hostname,
    format_audit,
    format_log,
    octet_frame,
    parse_message,
    parse_target,
    sd_escape,
)

from .auditkit import FIXTURE_MASTER_KEY, make_backing, wait_for

LINE = (b'{"event":"open","mono_ns":5,"object":{"path":"/PAT-1/\xc3\xa9.dcm"},"outcome":"allowed","prev":"'
        + b"0" * 64 + b'","seq":7,"time":"2026-11-30T10:15:00.123456Z","hash":"' + b"a" * 64 + b'"}')


# ---------------------------------------------------------------------------- targets


@pytest.mark.parametrize(("text", "expected"), [
    ("udp://127.0.0.1:514", Target("udp", "127.0.0.1", 514)),
    ("tcp://loghost.example:6514", Target("tcp", "loghost.example", 6514)),
    ("tcp://[::1]:514", Target("tcp", "::1", 514)),
])
def test_targets(text: str, expected: Target) -> None:
    assert parse_target(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["loghost:514", "udp://loghost", "udp://loghost:0", "udp://loghost:65536",
                                  "http://loghost:514", "tcp://[zz]:514", "udp://a b:514", "tcp://::1:514"])
def test_bad_targets_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="syslog target") as caught:
        parse_target(text)
    assert repr(text) in str(caught.value)


def test_hostname_must_be_printable_ascii() -> None:
    assert check_hostname("pacs-acq.hospital.example") == "pacs-acq.hospital.example"
    for bad in ("", "two words", "tab\there", "é", "x" * 256):
        with pytest.raises(ValueError, match="host name"):
            check_hostname(bad)


# ---------------------------------------------------------------------------- RFC 5424 format


def test_audit_message_layout() -> None:
    message, cut = format_audit(LINE, "c" * 32, "pacs-acq", "4242")
    assert not cut
    head, _, rest = message.partition(b" [")
    # facility authpriv (10) * 8 + informational (6) = 86; VERSION 1; the record's own time
    assert head == b"<86>1 2026-11-30T10:15:00.123456Z pacs-acq encfs-pacs 4242 audit"
    sd, _, msg = rest.partition(b"] ")
    assert sd.decode() == (f'{SD_ID} seq="7" chain="{"c" * 32}" event="open" outcome="allowed" '
                           f'hash="{"a" * 64}"')
    assert msg == BOM + LINE  # the exact canonical line, BOM-prefixed UTF-8, no newline


@pytest.mark.parametrize(("record", "pri"), [
    ({"outcome": "denied"}, 85),  # authpriv.notice
    ({"outcome": "learn-denied"}, 85),
    ({"outcome": "error"}, 84),  # authpriv.warning
    ({"outcome": "allowed", "alert": True}, 84),
    ({"outcome": "allowed"}, 86),  # authpriv.info
    ({}, 86),  # control records (seals) have no outcome
])
def test_severity_follows_the_outcome(record: dict[str, Any], pri: int) -> None:
    line = json.dumps({"event": "x", "seq": 1, "hash": "h", **record}).encode()
    assert format_audit(line, "c", "h", "1")[0].startswith(f"<{pri}>1 ".encode())


def test_sd_values_are_escaped_and_parse_back() -> None:
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    tricky = 'ev"il] \\x'
    line = json.dumps({"event": tricky, "outcome": "o]", "seq": 3, "hash": "h"}).encode()
    message, _ = format_audit(line, "chain", "host", "1")
    assert b'event="ev\\"il\\] \\\\x"' in message
    parsed = parse_message(message)
    assert parsed.sd[SD_ID]["event"] == tricky and parsed.sd[SD_ID]["outcome"] == "o]"
    assert parsed.msg == line and parsed.hostname == "host" and parsed.msgid == "audit"


def test_a_message_cut_inside_its_structured_data_is_a_parse_error() -> None:
    """What `audit collect` catches (ValueError), never an IndexError from reading past the end."""
    message, _ = format_audit(b'{"event":"x","seq":1,"hash":"h"}', "chain", "host", "1")
    head = message[:message.index(b"[")]
    for cut in (b'[encfs-pacs@32473 seq="1"', b'[encfs-pacs@32473 seq="1" ', b"[encfs-pacs@32473"):
        with pytest.raises(ValueError):
            parse_message(head + cut)


def test_bad_or_missing_time_is_nil() -> None:
    line = json.dumps({"event": "x", "seq": 1, "hash": "h", "time": "yesterday"}).encode()
    assert format_audit(line, "c", "h", "1")[0].startswith(b"<86>1 - h encfs-pacs 1 audit [")


def test_oversized_message_is_cut_at_a_character_boundary_and_says_so() -> None:
    line = json.dumps({"event": "x", "seq": 1, "hash": "h", "detail": "é" * 400},
                      ensure_ascii=False).encode()
    whole, cut = format_audit(line, "c", "h", "1")
    assert not cut
    for limit in range(300, 320):  # every cut position, including inside a 2-byte character
        message, cut = format_audit(line, "c", "h", "1", limit=limit)
        assert cut and len(message) <= limit
        parsed = parse_message(message)
        assert parsed.sd[SD_ID]["truncated"] == str(len(line))
        parsed.msg.decode("utf-8")  # still valid UTF-8
        assert line.startswith(parsed.msg)
    assert format_audit(line, "c", "h", "1", limit=len(whole)) == (whole, False)


def test_octet_counting_frame() -> None:
    message = "<86>1 - h a p m - é".encode()
    assert octet_frame(message) == str(len(message)).encode() + b" " + message
    assert octet_frame(message).startswith(b"20 ")  # 20 octets for 19 characters


def test_daemon_log_message() -> None:
    message, _ = format_log(40, 1_700_000_000.5, "ERROR encfs_pacs.mount: disk full", "h", "9")
    assert message == (b"<27>1 2023-11-14T22:13:20.500000Z h encfs-pacs 9 log - " + BOM
                       + b"ERROR encfs_pacs.mount: disk full")  # daemon (3) * 8 + error (3)


# ---------------------------------------------------------------------------- collectors


class UdpCollector:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.target = Target("udp", "127.0.0.1", self.sock.getsockname()[1])

    def receive(self, n: int) -> list[bytes]:
        return [self.sock.recv(70_000) for _ in range(n)]


class TcpCollector:
    """Accepts connections and splits octet-counted frames; ``read=False`` stalls the sender."""

    def __init__(self, port: int = 0, read: bool = True) -> None:
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen()
        self.target = Target("tcp", "127.0.0.1", self.server.getsockname()[1])
        self.messages: list[bytes] = []
        self.connections: list[socket.socket] = []
        self.read = read
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.1)
        while not self.stopped:
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections.append(conn)
            if self.read:
                threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b" " in buffer:
                size, _, rest = buffer.partition(b" ")
                if len(rest) < int(size):
                    break
                self.messages.append(rest[:int(size)])
                buffer = rest[int(size):]

    def close(self) -> None:
        self.stopped = True
        self.thread.join()
        for conn in self.connections:
            with contextlib.suppress(OSError):  # a FIN now, even with a reader blocked in recv()
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.server.close()


@pytest.fixture
def tcp_collector() -> Iterator[TcpCollector]:
    collector = TcpCollector()
    yield collector
    collector.close()


def lines(n: int, start: int = 0) -> bytes:
    return b"".join(json.dumps({"event": "open", "seq": i, "hash": "h"}).encode() + b"\n"
                    for i in range(start, start + n))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------- the forwarder


def test_udp_one_datagram_per_line() -> None:
    collector = UdpCollector()
    forwarder = SyslogForwarder(collector.target, "host-a").start()
    try:
        forwarder.audit_lines(lines(3), "chain1")
        received = [parse_message(m) for m in collector.receive(3)]
    finally:
        forwarder.close()
        collector.sock.close()
    assert [json.loads(m.msg)["seq"] for m in received] == [0, 1, 2]
    assert {m.hostname for m in received} == {"host-a"}
    assert forwarder.stats()["sent"] == 3


def test_udp_to_nobody_goes_on_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    forwarder = SyslogForwarder(Target("udp", "127.0.0.1", free_port()), "h").start()
    try:
        for i in range(20):
            forwarder.audit_lines(lines(5, start=i * 5), "c")
            time.sleep(0.005)
        assert wait_for(lambda: forwarder.stats()["sent"] == 100 and not forwarder.stats()["queued"])
    finally:
        forwarder.close(timeout=0.5)
    assert forwarder.stats()["last_error"] is not None  # the ICMP errors were seen
    warnings = [r for r in caplog.records if r.name == "encfs_pacs.syslog" and r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cannot be counted" in warnings[0].getMessage()


def test_udp_oversized_message_is_truncated_and_reported() -> None:
    collector = UdpCollector()
    reports: list[dict[str, Any]] = []
    forwarder = SyslogForwarder(collector.target, "h", udp_max=300, report=reports.append,
                                report_interval=0.1).start()
    try:
        forwarder.audit_lines(json.dumps({"event": "x", "seq": 0, "hash": "h", "d": "z" * 1000}).encode()
                              + b"\n", "c")
        (datagram,) = collector.receive(1)
        assert len(datagram) <= 300 and parse_message(datagram).sd[SD_ID]["truncated"]
        assert wait_for(lambda: bool(reports))
    finally:
        forwarder.close()
        collector.sock.close()
    assert reports[0]["event"] == "syslog-dropped" and reports[0]["truncated"] == 1
    assert forwarder.stats()["truncated"] == 1


def test_tcp_octet_counted_in_order(tcp_collector: TcpCollector) -> None:
    forwarder = SyslogForwarder(tcp_collector.target, "host-b").start()
    try:
        forwarder.audit_lines(lines(200), "c")
        assert wait_for(lambda: len(tcp_collector.messages) == 200)
    finally:
        forwarder.close()
    assert [json.loads(parse_message(m).msg)["seq"] for m in tcp_collector.messages] == list(range(200))


def test_dead_collector_never_blocks_and_drops_are_counted() -> None:
    reports: list[dict[str, Any]] = []
    forwarder = SyslogForwarder(Target("tcp", "127.0.0.1", free_port()), "h", queue_limit=50,
                                report=reports.append, report_interval=0.2).start()
    try:
        started = time.monotonic()
        for i in range(20):
            forwarder.audit_lines(lines(10, start=i * 10), "c")
        assert time.monotonic() - started < 0.5  # queueing only, whatever the collector does
        stats = forwarder.stats()
        assert stats["dropped"] == 150 and stats["queued"] + stats["sent"] <= 50 and not stats["sent"]
        assert wait_for(lambda: sum(r["dropped"] for r in reports) == 150)
        assert reports[0]["target"] == forwarder.target.__str__() and reports[0]["alert"] is True
    finally:
        started = time.monotonic()
        forwarder.close(timeout=0.5)
    assert time.monotonic() - started < 3  # close gives up on a dead collector
    assert forwarder.stats()["dropped"] == 200  # what was still queued at close counts too


def test_settle_records_what_a_dead_collector_never_got() -> None:
    reports: list[dict[str, Any]] = []
    forwarder = SyslogForwarder(Target("tcp", "127.0.0.1", free_port()), "h", report=reports.append).start()
    try:
        forwarder.audit_lines(lines(30), "c")  # fits the queue: nothing dropped yet
        assert wait_for(lambda: forwarder.stats()["last_error"] is not None)
        assert forwarder.stats()["dropped"] == 0 and not reports
        started = time.monotonic()
        forwarder.settle(timeout=0.3)
        assert time.monotonic() - started < 2
        assert [r["dropped"] for r in reports] == [30]  # queued ones and the one being retried
    finally:
        forwarder.close(timeout=0.3)
    assert forwarder.stats()["dropped"] == 30 and len(reports) == 1


def test_settle_waits_for_a_live_collector(tcp_collector: TcpCollector) -> None:
    reports: list[dict[str, Any]] = []
    forwarder = SyslogForwarder(tcp_collector.target, "h", report=reports.append).start()
    try:
        forwarder.audit_lines(lines(500), "c")
        forwarder.settle(timeout=10)
        assert forwarder.stats()["sent"] == 500 and not reports
    finally:
        forwarder.close()


def test_stalled_collector_never_blocks_the_producer() -> None:
    collector = TcpCollector(read=False)  # accepts, never reads: the send buffer fills up
    forwarder = SyslogForwarder(collector.target, "h", queue_limit=100, send_timeout=0.5).start()
    try:
        big = json.dumps({"event": "x", "seq": 0, "hash": "h", "d": "z" * 60_000}).encode() + b"\n"
        started = time.monotonic()
        for _ in range(300):
            forwarder.audit_lines(big, "c")
        assert time.monotonic() - started < 1.0
        assert forwarder.stats()["dropped"] > 0
    finally:
        forwarder.close(timeout=0.5)
        collector.close()


def test_reconnects_when_the_collector_comes_back() -> None:
    port = free_port()
    reports: list[dict[str, Any]] = []
    forwarder = SyslogForwarder(Target("tcp", "127.0.0.1", port), "h", queue_limit=5, backoff_min=0.05,
                                backoff_max=0.2, report=reports.append).start()
    collector = None
    try:
        forwarder.audit_lines(lines(8), "c")  # 5 queued, 3 dropped
        assert wait_for(lambda: forwarder.stats()["last_error"] is not None)
        collector = TcpCollector(port=port)
        assert wait_for(lambda: len(collector.messages) == 5)
        assert wait_for(lambda: bool(reports))  # recorded soon after the collector is back
        assert reports[0]["dropped"] == 3
        # A collector restart: the closed connection is noticed before the next message.
        collector.close()
        collector = TcpCollector(port=port)
        time.sleep(0.1)
        forwarder.audit_lines(lines(2, start=100), "c")
        assert wait_for(lambda: len(collector.messages) == 2)
    finally:
        forwarder.close(timeout=1)
        if collector is not None:
            collector.close()


def test_log_handler_forwards_the_daemon_log_but_not_its_own_complaints(tcp_collector: TcpCollector) -> None:
    import logging

    forwarder = SyslogForwarder(tcp_collector.target, "h").start()
    handler = ForwardingLogHandler(forwarder)
    logger = logging.getLogger("encfs_pacs")
    logger.addHandler(handler)
    try:
        logging.getLogger("encfs_pacs.mount").warning("policy reloaded")
        logging.getLogger("encfs_pacs.syslog").warning("collector unreachable")
        assert wait_for(lambda: len(tcp_collector.messages) >= 1)
        time.sleep(0.1)
    finally:
        logger.removeHandler(handler)
        forwarder.close()
    (message,) = [parse_message(m) for m in tcp_collector.messages]
    assert message.msgid == "log" and message.pri == 28 and message.msg.endswith(b"policy reloaded")


# ---------------------------------------------------------------------------- the writer's hook


def trail_files(active: Path) -> list[Path]:
    """The files of a trail in chain order (by the seq of their first record)."""
    files = [*active.parent.glob(active.name + ".*"), active]
    return sorted(files, key=lambda f: json.loads(f.read_bytes().split(b"\n", 1)[0])["seq"])


def test_forwarded_lines_equal_the_local_files_across_rotation(tmp_path: Path) -> None:
    from encfs_pacs.audit import open_audit_log

    backing = make_backing(tmp_path)
    received: list[tuple[bytes, str]] = []
    path = tmp_path / "logs" / "audit.log"
    writer = open_audit_log(path, backing, FIXTURE_MASTER_KEY, rotate_bytes=4000, commit_interval=0.005,
                            forward=lambda data, chain: received.append((data, chain)))
    for n in range(60):
        writer.append({"event": "open", "outcome": "allowed", "n": n, "object": {"path": f"/f{n}"}})
        writer.flush()  # one commit each: rotation happens between commits
    writer.close()
    files = trail_files(path)
    assert len(files) > 2  # it rotated
    assert b"".join(data for data, _ in received) == b"".join(f.read_bytes() for f in files)
    assert len({chain for _, chain in received}) == 1
    assert all(data.endswith(b"\n") for data, _ in received)  # whole lines only


def test_a_failing_forwarder_does_not_hurt_the_local_log(tmp_path: Path) -> None:
    from encfs_pacs.audit import open_audit_log

    def broken(data: bytes, chain: str) -> None:
        raise RuntimeError("collector code bug")

    path = tmp_path / "audit.log"
    writer = open_audit_log(path, make_backing(tmp_path), FIXTURE_MASTER_KEY, forward=broken)
    writer.append({"event": "open", "outcome": "allowed"})
    writer.close()
    assert verify([path]).intact


def test_collect_rebuilds_verifiable_files_per_host(tmp_path: Path) -> None:
    """Two hosts' forwarded streams, interleaved, duplicated and with foreign lines, split back."""
    from encfs_pacs.audit import open_audit_log, read_anchor

    collector_file, anchors = [], {}
    for host in ("acq", "was"):
        backing = make_backing(tmp_path, f"backing-{host}")
        messages: list[bytes] = []

        def hook(data: bytes, chain: str, host: str = host, messages: list[bytes] = messages) -> None:
            for line in data.splitlines():
                messages.append(format_audit(line, chain, host, "1")[0])

        writer = open_audit_log(tmp_path / host / "audit.log", backing, FIXTURE_MASTER_KEY, rotate_bytes=3000,
                                commit_interval=0.005, forward=hook)
        for n in range(40):
            writer.append({"event": "open", "outcome": "allowed", "n": n})
            writer.flush()
        writer.close()
        collector_file.append(messages)
        anchors[host] = read_anchor(backing)
    merged = [m for pair in zip(*collector_file, strict=False) for m in pair]
    merged += collector_file[0][len(merged) // 2:] + collector_file[1][len(merged) // 2:]
    merged.insert(3, merged[2])  # a duplicate (resent after a reconnect)
    merged.insert(5, b"<13>1 - other sshd 1 - - Accepted publickey")
    source = tmp_path / "collector.log"
    source.write_bytes(b"".join(m + b"\n" for m in merged))

    report = collect(source, tmp_path / "central")
    assert sorted(report.files) == ["acq", "was"] and report.duplicates == 1 and report.other == 1
    for host in ("acq", "was"):
        files = report.files[host]
        assert len(files) > 1  # split at the rotations
        result = verify(files, anchors[host])
        assert result.intact, result.problem
        local = trail_files(tmp_path / host / "audit.log")
        assert b"".join(f.read_bytes() for f in files) == b"".join(f.read_bytes() for f in local)
    # Merged, each record says which host (folder) it came from.
    from encfs_pacs.audit import query

    merged_view = query.load([*report.files["acq"], *report.files["was"]])
    assert merged_view.problem is None and len(merged_view.records) == 80
    assert {r["origin"] for r in merged_view.records if r.get("n") == 3} == {"acq", "was"}
    times = [r["time"] for r in merged_view.records]
    assert times == sorted(times)
    # One edited line on the collector fails verification of that host.
    text = source.read_bytes().replace(b'"n":7,', b'"n":8,', 1)
    source.write_bytes(text)
    report = collect(source, tmp_path / "central2")
    assert not all(verify(report.files[h], anchors[h]).intact for h in ("acq", "was"))
