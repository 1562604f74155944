"""Forwarding the audit trail (and the daemon log) to a syslog collector (docs/audit-format.md §13).

Every committed audit line becomes one RFC 5424 message whose MSG is the line itself, byte for
byte (BOM-prefixed UTF-8, no newline), so a collector's copy can be verified like the local
file (``encfs-pacs audit collect``). Transports: UDP, one datagram per message (RFC 5426), and
TCP with octet-counting framing (RFC 6587 §3.4.1).

The writer thread hands lines over with ``SyslogForwarder.audit_lines``, which only appends to
a bounded queue and never waits: a slow or dead collector can never block or fail the file
system or the local log. One sender thread formats, connects (with backoff) and sends. When
the queue is full, messages are dropped and counted; the count goes into the local trail as a
``syslog-dropped`` record (through the ``report`` callback) and into the daemon log.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .records import TIME_PATTERN, utc_text

log = logging.getLogger("encfs_pacs.syslog")

APP_NAME = "encfs-pacs"
MSGID_AUDIT = "audit"  # one message per audit line
MSGID_LOG = "log"  # the daemon's own log (python logging)
# Private SD-ID "name@PEN". encfs-pacs has no IANA Private Enterprise Number of its own; 32473 is
# the number RFC 5612 reserves for documentation (RFC 5424's examples use it).
SD_ID = "encfs-pacs@32473"
NILVALUE = "-"
BOM = b"\xef\xbb\xbf"
FACILITY_DAEMON = 3
FACILITY_AUTHPRIV = 10  # security/authorization messages: rsyslog keeps them in a private file
SEVERITY_CRITICAL, SEVERITY_ERROR, SEVERITY_WARNING, SEVERITY_NOTICE, SEVERITY_INFO, SEVERITY_DEBUG = (
    2, 3, 4, 5, 6, 7)
UDP_MAX = 65507  # the largest UDP payload over IPv4 (RFC 5426 §3.2: larger messages are cut)
DEFAULT_QUEUE_LIMIT = 10_000
DROPPED_EVENT = "syslog-dropped"

_HOSTNAME = re.compile(r"^[\x21-\x7e]{1,255}$")  # RFC 5424 §6.2.4: PRINTUSASCII
_HOST = re.compile(r"^[A-Za-z0-9_.-]{1,253}$")
_TARGET = re.compile(r"^(?P<scheme>udp|tcp)://(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:/\[\]]+)):"
                     r"(?P<port>[0-9]{1,5})$")
TARGET_EXPECTED = ('"udp://HOST:PORT" or "tcp://HOST:PORT" (HOST a name, an IPv4 address or [IPv6]; '
                   'PORT 1-65535), or an absolute socket path like "/dev/log" (daemon log only)')


# ---------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A network collector: ``udp://HOST:PORT`` or ``tcp://HOST:PORT``."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_target(text: str) -> Target:
    """``udp://HOST:PORT`` / ``tcp://HOST:PORT`` -> Target; ValueError says what is expected."""
    match = _TARGET.match(text)
    if match is None:
        raise ValueError(f"syslog target {text!r} is not valid; expected {TARGET_EXPECTED}")
    port = int(match["port"])
    host = match["v6"] or match["host"]
    if match["v6"]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"syslog target {text!r}: [{host}] is not an IPv6 address") from None
    elif not _HOST.match(host):
        raise ValueError(f"syslog target {text!r}: {host!r} is not a host name or IPv4 address")
    if not 0 < port < 65536:
        raise ValueError(f"syslog target {text!r}: port {port} is not in 1-65535")
    return Target(match["scheme"], host, port)


def is_network_target(text: str) -> bool:
    return text.startswith(("udp://", "tcp://"))


def check_hostname(name: str) -> str:
    """RFC 5424 HOSTNAME: 1-255 printable US-ASCII characters, no space."""
    if not _HOSTNAME.match(name):
        raise ValueError(f"syslog host name {name!r} is not valid; expected 1-255 printable ASCII "
                         "characters without spaces (e.g. pacs-acq.hospital.example)")
    return name


def default_hostname() -> str:
    """This host's name as the kernel knows it (no DNS lookup: that could hang a mount)."""
    name = socket.gethostname() or "localhost"
    cleaned = "".join(ch if "\x21" <= ch <= "\x7e" else "_" for ch in name)[:255]
    return cleaned or "localhost"


# ---------------------------------------------------------------------------- RFC 5424


def pri(facility: int, severity: int) -> str:
    return f"<{facility * 8 + severity}>"


def sd_escape(value: str) -> str:
    """RFC 5424 §6.3.3: '"', '\\' and ']' inside PARAM-VALUE are escaped with a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def structured_data(params: list[tuple[str, str]]) -> str:
    inner = "".join(f' {name}="{sd_escape(value)}"' for name, value in params)
    return f"[{SD_ID}{inner}]"


def audit_severity(record: dict[str, Any]) -> int:
    """Alerts and errors: warning; denials: notice; everything else: informational."""
    if record.get("alert") is True or record.get("outcome") == "error":
        return SEVERITY_WARNING
    if record.get("outcome") in ("denied", "learn-denied"):
        return SEVERITY_NOTICE
    return SEVERITY_INFO


def _header(priority: str, timestamp: str, hostname: str, procid: str, msgid: str) -> str:
    return f"{priority}1 {timestamp} {hostname} {APP_NAME} {procid} {msgid}"


def _fit(prefix: Callable[[str | None], bytes], body: bytes, limit: int | None) -> tuple[bytes, bool]:
    """``prefix(None) + BOM + body``, or, if over ``limit`` octets, a prefix that says the body was
    cut (``truncated="<original octets>"``) and the body cut at a UTF-8 character boundary."""
    head = prefix(None) + BOM
    if limit is None or len(head) + len(body) <= limit:
        return head + body, False
    head = prefix(str(len(body))) + BOM
    cut = max(limit - len(head), 0)
    while 0 < cut < len(body) and body[cut] & 0xC0 == 0x80:  # not inside a multi-byte character
        cut -= 1
    return head + body[:cut], True


def format_audit(line: bytes, chain: str, hostname: str, procid: str, *, limit: int | None = None,
                 facility: int = FACILITY_AUTHPRIV) -> tuple[bytes, bool]:
    """One audit line (without its newline) as an RFC 5424 message; (message, truncated)."""
    record = json.loads(line)
    timestamp = record.get("time")
    if not isinstance(timestamp, str) or not TIME_PATTERN.fullmatch(timestamp):
        timestamp = NILVALUE
    params = [("seq", str(record.get("seq"))), ("chain", chain), ("event", str(record.get("event")))]
    if isinstance(record.get("outcome"), str):
        params.append(("outcome", record["outcome"]))
    params.append(("hash", str(record.get("hash"))))
    head = _header(pri(facility, audit_severity(record)), timestamp, hostname, procid, MSGID_AUDIT)

    def prefix(truncated: str | None) -> bytes:
        extra = [] if truncated is None else [("truncated", truncated)]
        return f"{head} {structured_data(params + extra)} ".encode()

    return _fit(prefix, line, limit)


def log_severity(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return SEVERITY_CRITICAL
    if levelno >= logging.ERROR:
        return SEVERITY_ERROR
    if levelno >= logging.WARNING:
        return SEVERITY_WARNING
    return SEVERITY_INFO if levelno >= logging.INFO else SEVERITY_DEBUG


def format_log(levelno: int, created: float, text: str, hostname: str, procid: str, *,
               limit: int | None = None) -> tuple[bytes, bool]:
    """A daemon log line as an RFC 5424 message (facility daemon, MSGID "log", no SD)."""
    timestamp = utc_text(datetime.fromtimestamp(created, UTC))
    head = _header(pri(FACILITY_DAEMON, log_severity(levelno)), timestamp, hostname, procid, MSGID_LOG)

    def prefix(truncated: str | None) -> bytes:
        sd = NILVALUE if truncated is None else structured_data([("truncated", truncated)])
        return f"{head} {sd} ".encode()

    return _fit(prefix, text.encode("utf-8", "backslashreplace"), limit)


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 §3.4.1 octet counting: "MSG-LEN SP SYSLOG-MSG"."""
    return str(len(message)).encode("ascii") + b" " + message


@dataclass(frozen=True)
class Message:
    """A parsed RFC 5424 message (what a collector stored); ``msg`` without the BOM."""

    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: bytes


_HEADER = re.compile(rb"^<(?P<pri>[0-9]{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
                     rb"(?P<msgid>\S+) ")


def parse_message(raw: bytes) -> Message:
    """Parse one RFC 5424 message (one line of a collector's file, without the newline).

    Raises ValueError saying what is wrong. Structured data is decoded (RFC 5424 §6.3.3)."""
    head = _HEADER.match(raw)
    if head is None:
        raise ValueError("not an RFC 5424 message (<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID ...)")
    rest = raw[head.end():].decode("utf-8", "surrogateescape")
    sd: dict[str, dict[str, str]] = {}
    if rest.startswith(NILVALUE):
        rest = rest[1:]
    else:
        while rest.startswith("["):
            name, params, rest = _sd_element(rest)
            sd[name] = params
        if not sd:
            raise ValueError("no STRUCTURED-DATA (neither '-' nor '[...]')")
    if rest and not rest.startswith(" "):
        raise ValueError("no space between STRUCTURED-DATA and MSG")
    msg = rest[1:].encode("utf-8", "surrogateescape")
    return Message(int(head["pri"]), head["ts"].decode("ascii", "replace"), head["host"].decode(
        "ascii", "replace"), head["app"].decode("ascii", "replace"), head["procid"].decode(
        "ascii", "replace"), head["msgid"].decode("ascii", "replace"), sd, msg.removeprefix(BOM))


def _sd_element(text: str) -> tuple[str, dict[str, str], str]:
    """``[ID name="value" ...]rest`` -> (ID, {name: value}, rest)."""
    end_id = min((i for i in (text.find(" "), text.find("]")) if i > 0), default=-1)
    if end_id < 0:
        raise ValueError("unterminated SD-ELEMENT")
    name, i, params = text[1:end_id], end_id, {}
    while i < len(text) and text[i] == " ":
        eq = text.find('="', i)
        if eq < 0:
            raise ValueError(f"bad SD-PARAM in [{name} ...]")
        key, i, value = text[i + 1:eq], eq + 2, []
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in '"\\]':
                i += 1
            value.append(text[i])
            i += 1
        if i >= len(text):
            raise ValueError(f"unterminated value of {key} in [{name} ...]")
        params[key] = "".join(value)
        i += 1
    if i >= len(text) or text[i] != "]":
        raise ValueError(f"SD-ELEMENT [{name} ...] does not end with ']'")
    return name, params, text[i + 1:]


# ---------------------------------------------------------------------------- the forwarder


@dataclass
class _Audit:
    line: bytes
    chain: str


@dataclass
class _Log:
    levelno: int
    created: float
    text: str


class SyslogForwarder:
    """Sends audit lines and daemon log lines to one collector, off the caller's thread.

    ``report(payload)`` is called (from the sender thread, or from ``report_drops``) with a
    ``syslog-dropped`` audit payload when messages were dropped or truncated; the mount points
    it at the audit log, so the local trail says where the central copy has gaps.
    """

    def __init__(self, target: Target, hostname: str | None = None, *,
                 queue_limit: int = DEFAULT_QUEUE_LIMIT, udp_max: int = UDP_MAX,
                 connect_timeout: float = 2.0, send_timeout: float = 5.0, backoff_min: float = 0.5,
                 backoff_max: float = 30.0, report_interval: float = 60.0,
                 report: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.target = target
        self.hostname = check_hostname(hostname) if hostname else default_hostname()
        self.report = report
        self._procid = str(os.getpid())
        self._limit = udp_max if target.scheme == "udp" else None
        self._queue_limit = queue_limit
        self._connect_timeout, self._send_timeout = connect_timeout, send_timeout
        self._backoff_min, self._backoff_max = backoff_min, backoff_max
        self._report_interval = report_interval
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[_Audit | _Log] = deque()
        self._closing = False
        self._close_deadline = 0.0
        self._sock: socket.socket | None = None
        self._backoff = backoff_min
        self._next_attempt = 0.0
        self._down_since: float | None = None
        self._last_error: str | None = None
        self._counts = {"sent": 0, "dropped": 0, "truncated": 0}
        self._unreported = {"dropped": 0, "truncated": 0}
        self._last_report = time.monotonic()
        self._current: bytes | None = None  # the message being sent (retried until it goes)
        self._abandon = False
        self._udp_warned: float | None = None
        self._thread = threading.Thread(target=self._run, name="syslog-forwarder", daemon=True)

    # -- producers (never block) ---------------------------------------------------------

    def audit_lines(self, data: bytes, chain: str) -> None:
        """The audit writer's hook: ``data`` holds whole lines as written (and fsynced) locally."""
        self._put([_Audit(line, chain) for line in data.split(b"\n") if line])

    def log_line(self, levelno: int, created: float, text: str) -> None:
        self._put([_Log(levelno, created, text)])

    def _put(self, items: list[_Audit | _Log]) -> None:
        with self._lock:
            room = self._queue_limit - len(self._queue)
            if self._closing and not self._thread.is_alive():
                room = 0
            taken = items[:max(room, 0)]
            self._queue.extend(taken)
            lost = len(items) - len(taken)
            if lost:
                self._counts["dropped"] += lost
                self._unreported["dropped"] += lost
            if taken:
                self._cond.notify()

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> SyslogForwarder:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued for at most ``timeout`` seconds, then stop; what is left is
        counted as dropped and named in the daemon log (the audit log is closed by then)."""
        with self._lock:
            self._closing = True
            self._close_deadline = time.monotonic() + timeout
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout + self._send_timeout + 1.0)
        with self._lock:
            left = len(self._queue)
            self._queue.clear()
            self._counts["dropped"] += left
            self._unreported["dropped"] += left
            unreported = dict(self._unreported)
        if unreported["dropped"] or unreported["truncated"]:
            log.error("syslog forwarding to %s: %d message(s) dropped and %d truncated that the audit trail "
                      "does not record (at unmount)", self.target, unreported["dropped"],
                      unreported["truncated"])

    def settle(self, timeout: float = 3.0) -> None:
        """Before the audit log is sealed: let what is queued go out for up to ``timeout``
        seconds; whatever is still undelivered then is dropped, counted and recorded in the
        trail (``syslog-dropped``), so the local log says how much the collector is missing."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (self._queue or self._current is not None) and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.1))
            left = len(self._queue)
            self._queue.clear()
            if self._current is not None and self._sock is None:  # retrying a dead collector
                left += 1
                self._abandon = True
            self._counts["dropped"] += left
            self._unreported["dropped"] += left
        self.report_drops()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self._counts, "queued": len(self._queue), "connected": self._sock is not None,
                    "target": str(self.target), "last_error": self._last_error}

    def report_drops(self) -> None:
        """Write a ``syslog-dropped`` record now if anything was dropped or cut since the last one."""
        with self._lock:
            dropped, truncated = self._unreported["dropped"], self._unreported["truncated"]
            if not dropped and not truncated:
                return
            self._unreported = {"dropped": 0, "truncated": 0}
            self._last_report = time.monotonic()
            total = self._counts["dropped"]
        payload = {"event": DROPPED_EVENT, "outcome": "error", "errno": None, "alert": True,
                   "dropped": dropped, "dropped_total": total, "truncated": truncated,
                   "target": str(self.target),
                   "detail": (f"{dropped} message(s) for the syslog collector {self.target} were dropped "
                              f"(collector unreachable or too slow) and {truncated} were cut to fit a UDP "
                              "datagram: the collector's copy of the trail has gaps; this log is complete")}
        if self.report is None:
            log.error("%s", payload["detail"])
            return
        try:
            self.report(payload)
        except Exception as exc:  # the local log is down: the daemon log says it instead
            log.error("%s (could not be recorded in the audit log: %s)", payload["detail"], exc)

    # -- the sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._abandon:  # settle() gave it up (and counted it)
                        self._current, self._abandon = None, False
                    current = self._current
                if current is None:
                    item = self._next_item()
                    if item is None:
                        return
                    current = self._format(item)
                    with self._lock:
                        self._current = current
                    if current is None:
                        continue
                if self._deadline_passed():
                    with self._lock:
                        if not self._abandon:
                            self._counts["dropped"] += 1
                            self._unreported["dropped"] += 1
                    return
                if self._send(current):
                    with self._lock:
                        self._current = None
                        self._cond.notify_all()  # settle() waits for an empty queue
                else:  # the collector is down: the trail must still learn about drops
                    self._maybe_report()
        except BaseException:  # a bug: say so, and let producers keep going (they drop)
            log.exception("the syslog forwarder stopped on an internal error")
        finally:
            self._disconnect()

    def _next_item(self) -> _Audit | _Log | None:
        """The next queued message (None once closing and empty); records drops when due."""
        while True:
            with self._lock:
                if not self._queue and not self._closing and not self._report_due():
                    self._cond.wait(self._report_wait())
                item = self._queue.popleft() if self._queue else None
                if item is not None:
                    self._current = b""  # taken, not yet sent: settle() must not think it is done
                closing, due = self._closing, self._report_due()
            if due:
                self.report_drops()
            if item is not None:
                return item
            if closing:
                return None

    def _maybe_report(self) -> None:
        with self._lock:
            due = self._report_due()
        if due:
            self.report_drops()

    def _report_wait(self) -> float | None:
        """Idle: sleep until a message comes; with drops to record, look again twice a second."""
        return 0.5 if self._unreported["dropped"] or self._unreported["truncated"] else None

    def _report_due(self) -> bool:
        """Drops are recorded every report_interval, and soon after the collector is back (at
        most once a second, so a collector that keeps up only barely does not flood the log)."""
        if not (self._unreported["dropped"] or self._unreported["truncated"]) or self._closing:
            return False
        since = time.monotonic() - self._last_report
        back = self._sock is not None and self._down_since is None
        return since >= self._report_interval or (back and since >= 1.0)

    def _deadline_passed(self) -> bool:
        return self._closing and time.monotonic() >= self._close_deadline

    def _format(self, item: _Audit | _Log) -> bytes | None:
        try:
            if isinstance(item, _Audit):
                message, cut = format_audit(item.line, item.chain, self.hostname, self._procid,
                                            limit=self._limit)
            else:
                message, cut = format_log(item.levelno, item.created, item.text, self.hostname,
                                          self._procid, limit=self._limit)
        except ValueError as exc:  # not JSON: cannot happen for the writer's lines
            log.error("not forwarded to syslog (cannot format it: %s)", exc)
            with self._lock:
                self._counts["dropped"] += 1
                self._unreported["dropped"] += 1
            return None
        if cut:
            with self._lock:
                self._counts["truncated"] += 1
                self._unreported["truncated"] += 1
        return message

    def _send(self, message: bytes) -> bool:
        """One attempt: connect if needed (respecting the backoff), send. True once sent."""
        if self._sock is None and not self._connect():
            return False
        assert self._sock is not None
        try:
            if self.target.scheme == "udp":
                self._sock.send(message)
            else:
                self._check_peer_open(self._sock)
                self._sock.sendall(octet_frame(message))
        except ConnectionRefusedError as exc:
            if self.target.scheme != "udp":
                self._lost_connection(exc)
                return False
            self._udp_refused(exc)  # about an earlier datagram; this one was not sent: again
            return False
        except OSError as exc:
            self._lost_connection(exc)
            return False
        with self._lock:
            self._counts["sent"] += 1
        if self._down_since is not None:
            log.warning("syslog collector %s reachable again after %.0f s", self.target,
                        time.monotonic() - self._down_since)
            self._down_since = None
            self._backoff = self._backoff_min
        return True

    def _udp_refused(self, exc: OSError) -> None:
        """An ICMP "port unreachable" for an earlier datagram: nobody listens at the collector.
        UDP cannot tell how many datagrams were lost, so say so (at most every 10 minutes)
        instead of counting; the socket stays as it is (a reconnect would not help)."""
        now = time.monotonic()
        with self._lock:
            self._last_error = exc.strerror or str(exc)
        if self._udp_warned is None or now - self._udp_warned >= 600:
            self._udp_warned = now
            log.warning("syslog collector %s refuses datagrams (nothing listens there?): audit records sent "
                        "by UDP are being lost and cannot be counted; use tcp:// to have losses counted",
                        self.target)

    @staticmethod
    def _check_peer_open(sock: socket.socket) -> None:
        """A collector that closed the connection is noticed before the next message is
        written into a dead socket (which would be lost without an error)."""
        # poll, not select: select() refuses descriptors from 1024 on, and the daemon raises
        # its open-file limit far beyond that (fs/mount.py raise_open_file_limit)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if poller.poll(0):
            data = sock.recv(4096, socket.MSG_DONTWAIT)
            if not data:
                raise ConnectionResetError("the collector closed the connection")

    def _connect(self) -> bool:
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            with self._lock:  # sleep, but wake up for close(); closing ends at its deadline
                if self._closing:
                    wait = min(wait, self._close_deadline - time.monotonic())
                if wait > 0:
                    self._cond.wait(wait)
            return False
        kind = socket.SOCK_DGRAM if self.target.scheme == "udp" else socket.SOCK_STREAM
        try:
            family, socktype, proto, _, address = socket.getaddrinfo(
                self.target.host, self.target.port, type=kind)[0]
            sock = socket.socket(family, socktype, proto)
            try:
                sock.settimeout(self._connect_timeout)
                sock.connect(address)
                sock.settimeout(self._send_timeout)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            self._lost_connection(exc)
            return False
        with self._lock:
            self._sock = sock
        return True

    def _lost_connection(self, exc: OSError) -> None:
        self._disconnect()
        now = time.monotonic()
        reason = exc.strerror or str(exc) or type(exc).__name__
        if self._down_since is None:
            self._down_since = now
            log.warning("syslog collector %s unreachable (%s): retrying with backoff; audit records queue "
                        "meanwhile (up to %d, then they are dropped and counted)", self.target, reason,
                        self._queue_limit)
        with self._lock:
            self._last_error = reason
        self._next_attempt = now + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)

    def _disconnect(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class ForwardingLogHandler(logging.Handler):
    """Sends the daemon log to the collector too (MSGID "log"), never blocking the caller."""

    def __init__(self, forwarder: SyslogForwarder) -> None:
        super().__init__()
        self.forwarder = forwarder
        # The forwarder's own complaints about the collector would feed back into it.
        self.addFilter(lambda record: not record.name.startswith(log.name))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.levelname} {record.name}: {record.getMessage()}"
            self.forwarder.log_line(record.levelno, record.created, text)
        except Exception:
            self.handleError(record)
