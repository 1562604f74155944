"""Verify audit logs (docs/audit-format.md §8) and read their records in order.

The verifier trusts nothing in the files but the mathematics: every line is parsed strictly
and must be canonical, every hash is recomputed, sequence numbers must be contiguous, every
seal's Ed25519 signature is checked under the epoch key endorsed by the previous epoch's key,
back to the anchor. It stops at the first bad record and names it (file, line, seq, what).

Two lessons from journald's forward-secure sealing (CVE-2023-31438/31439), where verification
passed for truncated logs and for entries after the last seal: (1) a log is intact only if it
ends with a stop seal -- a truncated log, or one cut back to an earlier seal, is not; (2)
records after the last seal are never reported as verified: ``live=True`` accepts them for a
running mount but counts and reports them as unsealed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuditTampered
from .canonical import NotCanonical
from .records import (
    CONTROL_EVENTS,
    CONTROL_TYPES,
    EPOCH,
    FORMAT_VERSION,
    GENESIS_PREV,
    LINK,
    RESUME,
    ROTATE,
    SEALS,
    START,
    STOP,
    TIME_PATTERN,
    HashMismatch,
    control_type,
    decode_line,
    seal_message,
)
from .signing import verify_signature

# Problem kinds (stable: --json consumers may switch on them).
SYNTAX, EDITED, DELETED, REORDERED, CHAIN, FORGED, UNSEALED, TRUNCATED, APPENDED, FOREIGN, \
    MISSING_FILE, UNREADABLE = ("syntax", "edited", "deleted", "reordered", "chain", "forged",
                                "unsealed", "truncated", "appended", "foreign", "missing-file",
                                "unreadable")


@dataclass
class Problem:
    kind: str
    message: str
    file: str | None = None
    line: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        where = ":".join(str(part) for part in (self.file, self.line) if part is not None)
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        return f"{where}{seq}: {self.message}" if where else self.message


@dataclass
class ChainSummary:
    chain: str
    anchor: str
    files: list[str]
    first_seq: int
    last_seq: int
    first_time: str
    last_time: str
    epochs: tuple[int, int]
    ended: str  # "stop", or the type of the last seal followed by unsealed records
    last_seal_seq: int | None
    last_seal_time: str | None
    unsealed: int
    continues: dict[str, Any] | None


@dataclass
class VerifyReport:
    """The verdict. ``intact`` is the only thing a script needs; the rest explains it."""

    intact: bool
    anchored: bool
    live: bool
    anchor: str | None  # the anchor the logs were checked against (given, or declared if not)
    problem: Problem | None = None
    chains: list[ChainSummary] = field(default_factory=list)
    records: int = 0
    unsealed: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """A human summary, most important first."""
        if self.problem is not None:
            out = [f"TAMPERED or incomplete: {self.problem}"]
        elif not self.anchored:
            out = ["internally consistent but NOT anchored: anyone can write a consistent log; "
                   "check it against the volume's anchor with --anchor (encfs-pacs audit anchor BACKING)"]
        elif self.unsealed:
            out = [f"intact up to the last seal; the {self.unsealed} record(s) after it are NOT yet "
                   "sealed (live log): they are not verified"]
        else:
            out = ["intact: every record hashed, chained and sealed back to the anchor"]
        for chain in self.chains:
            out.append(f"chain {chain.chain}: seq {chain.first_seq}..{chain.last_seq} in "
                       f"{len(chain.files)} file(s), {chain.first_time} .. {chain.last_time}, "
                       f"key epochs {chain.epochs[0]}..{chain.epochs[1]}, ends with {chain.ended}")
        if self.anchor:
            out.append(f"anchor: {self.anchor}" + ("" if self.anchored else " (declared by the log itself)"))
        out.extend(f"warning: {warning}" for warning in self.warnings)
        return out


class _Bad(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


# ---------------------------------------------------------------------------- reading files


@dataclass
class _Line:
    number: int
    raw: bytes


@dataclass
class LogFile:
    """One file's lines; ``torn`` holds trailing bytes after the last newline (a cut write)."""

    path: Path
    lines: list[_Line]
    torn: bytes = b""
    first: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return str(self.path)


def read_log_file(path: Path) -> LogFile:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Bad(Problem(UNREADABLE, f"cannot read: {exc.strerror}", str(path))) from None
    pieces = data.split(b"\n")
    torn = pieces.pop()  # b"" when the file ends with a newline
    return LogFile(path, [_Line(number, raw) for number, raw in enumerate(pieces, 1)], torn)


def _decode(file: LogFile, line: _Line) -> dict[str, Any]:
    try:
        record = decode_line(line.raw)
    except HashMismatch as exc:
        raise _Bad(Problem(EDITED, str(exc), file.name, line.number, _loose_seq(line.raw))) from None
    except NotCanonical as exc:
        raise _Bad(Problem(SYNTAX, f"not a valid audit record: {exc}", file.name, line.number,
                           _loose_seq(line.raw))) from None
    _check_envelope(record, file, line)
    return record


def _loose_seq(raw: bytes) -> int | None:
    """Best-effort seq of a bad line, only to name it in the report."""
    try:
        seq = json.loads(raw).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def _check_envelope(record: dict[str, Any], file: LogFile, line: _Line) -> None:
    def bad(what: str) -> _Bad:
        return _Bad(Problem(SYNTAX, what, file.name, line.number, _int_or_none(record.get("seq"))))

    seq, prev, mono = record.get("seq"), record.get("prev"), record.get("mono_ns")
    if not _is_int(seq) or seq < 0:
        raise bad("'seq' is missing or not a non-negative integer")
    if not isinstance(prev, str) or len(prev) != 64 or not _is_hex(prev):
        raise bad("'prev' is missing or not 64 lowercase hex digits")
    if not isinstance(record.get("time"), str) or not TIME_PATTERN.fullmatch(record["time"]):
        raise bad("'time' is missing or not UTC RFC 3339 with microseconds (2026-01-02T03:04:05.000006Z)")
    if not _is_int(mono) or mono < 0:
        raise bad("'mono_ns' is missing or not a non-negative integer")
    event = record.get("event")
    if not isinstance(event, str) or not event:
        raise bad("'event' is missing")
    kind = control_type(record)
    if "audit" in record or event in CONTROL_EVENTS:
        if kind not in CONTROL_TYPES or event != f"audit-{kind}":
            raise bad(f"control record with unknown type {kind!r} or mismatched event {event!r}")
        if ("sig" in record) != (kind in SEALS):
            raise bad("a seal must carry 'sig' and nothing else may")
    elif "sig" in record:
        raise bad("'sig' on a record that is not a seal")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or_none(value: Any) -> int | None:
    return value if _is_int(value) else None


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


# ---------------------------------------------------------------------------- one chain


@dataclass
class ChainState:
    """What the verifier knows after the last record it accepted (the writer resumes from it)."""

    chain: str
    anchor: bytes
    epoch: int
    public: bytes
    seq: int  # expected next seq
    prev: str  # hash of the last record
    first_seq: int
    first_time: str
    first_epoch: int
    continues: dict[str, Any] | None
    files: list[str] = field(default_factory=list)
    last_type: str | None = None  # control type of the last record (None: a payload record)
    last_content_type: str | None = None  # same, but a link record does not count
    last_time: str = ""
    last_mono: int = 0
    last_seal: tuple[int, str, str, int] | None = None  # seq, type, time, line
    unsealed: int = 0  # records since the last seal (link records excluded)
    unsealed_from: tuple[str, int, int] | None = None  # file, line, seq of the first unsealed
    stopped: bool = False  # the last seal was a stop and no resume followed yet
    need_epoch: bool = False  # a start/resume must be followed by an epoch seal
    epoch_records: dict[int, tuple[str, int, str]] = field(default_factory=dict)  # seq -> hash, epoch, pub
    records: int = 0


def _control(record: dict[str, Any]) -> dict[str, Any]:
    return record["audit"]


def _hex_field(control: dict[str, Any], name: str, size: int) -> str:
    value = control.get(name)
    if not isinstance(value, str) or len(value) != 2 * size or not _is_hex(value):
        raise ValueError(f"'{name}' is not {2 * size} lowercase hex digits")
    return value


class ChainVerifier:
    """Feeds the records of one chain, in order, through every check."""

    def __init__(self, *, expected_anchor: bytes | None, trust_link_start: bool = False) -> None:
        self.expected_anchor = expected_anchor
        self.trust_link_start = trust_link_start  # the writer resuming from its active file only
        self.state: ChainState | None = None

    # -- file boundaries ----------------------------------------------------------------

    def begin_file(self, file: LogFile, record: dict[str, Any], line: _Line) -> None:
        kind, state = control_type(record), self.state
        where = (file.name, line.number, record["seq"])
        if state is None:
            if kind == START:
                self._begin_chain(record, file, line)
            elif kind == LINK and self.trust_link_start:
                self._begin_chain(record, file, line, from_link=True)
            elif kind == LINK:
                previous = record["audit"].get("prev_file")
                raise _Bad(Problem(MISSING_FILE, f"this file continues from {previous!r} "
                                   f"(records before seq {record['seq']}), which was not given: "
                                   "verify needs every file of the log, oldest first", *where))
            else:
                raise _Bad(Problem(TRUNCATED, "the file does not begin with a start or link record: "
                                   "its beginning was cut off, or it is not an audit log", *where))
            state = self.state
            assert state is not None
            state.files.append(file.name)
            return
        if state.last_type != ROTATE:
            raise _Bad(Problem(TRUNCATED, f"{state.files[-1]} ends at seq {state.seq - 1} without a rotate "
                               "seal, yet another file follows: records were cut from its end",
                               state.files[-1], None, state.seq - 1))
        if kind != LINK:
            raise _Bad(Problem(SYNTAX, "a rotated log file must begin with a link record", *where))
        if record["seq"] > state.seq:
            raise _Bad(Problem(MISSING_FILE, f"records seq {state.seq}..{record['seq'] - 1} are missing: the "
                               f"file before this one ({record['audit'].get('prev_file')!r}) was not given",
                               *where))
        state.files.append(file.name)

    # -- records ------------------------------------------------------------------------

    def feed(self, file: LogFile, line: _Line, record: dict[str, Any]) -> None:
        state = self.state
        assert state is not None
        seq, kind = record["seq"], control_type(record)
        where = (file.name, line.number, seq)
        if seq != state.seq:
            raise _Bad(self._sequence_problem(file, line, record))
        if record["prev"] != state.prev:
            raise _Bad(Problem(CHAIN, f"'prev' does not match the hash of seq {seq - 1}: the record "
                               "before this one was replaced, or records were removed or inserted and "
                               "the rest renumbered", *where))
        if state.last_type == ROTATE and kind != LINK:
            raise _Bad(Problem(APPENDED, "a record follows the rotate seal in the same file: written "
                               "by someone without the key", *where))
        if state.stopped and kind not in (RESUME, LINK):
            stop = state.last_seal[0] if state.last_seal else "?"
            raise _Bad(Problem(APPENDED, f"record after the stop seal (seq {stop}) that is not a resume: "
                               "appended by someone without the key", *where))
        # A resume may follow a start/resume whose epoch record was lost in a crash (torn write).
        if state.need_epoch and kind not in (EPOCH, LINK, RESUME):
            raise _Bad(Problem(FORGED, "a start or resume record must be followed by a signed epoch "
                               "record: these records were not written by the audit writer", *where))
        try:
            self._check_control(kind, record, state, file, line)
        except ValueError as exc:
            raise _Bad(Problem(SYNTAX, f"bad {kind} record: {exc}", *where)) from None
        self._advance(state, record, kind, file, line)

    def _sequence_problem(self, file: LogFile, line: _Line, record: dict[str, Any]) -> Problem:
        state = self.state
        assert state is not None
        seq, expected = record["seq"], state.seq
        where = (file.name, line.number, seq)
        later = _find_seq(file, line.number, expected)
        if later is not None:
            return Problem(REORDERED, f"records are out of order: seq {expected} should come here but "
                           f"is at line {later}", *where)
        if seq > expected:
            return Problem(DELETED, f"seq jumps from {expected - 1} to {seq}: "
                           f"{seq - expected} record(s) deleted", *where)
        return Problem(REORDERED, f"seq goes back from {expected - 1} to {seq}: records duplicated "
                       "or out of order", *where)

    def _begin_chain(self, record: dict[str, Any], file: LogFile, line: _Line,
                     from_link: bool = False) -> None:
        where = (file.name, line.number, record["seq"])
        control = _control(record)
        try:
            if control.get("format") != FORMAT_VERSION:
                raise _Bad(Problem(SYNTAX, f"audit format {control.get('format')!r} is not known to this "
                                   "encfs-pacs (upgrade it)", *where))
            chain = _hex_field(control, "chain", 16)
            anchor = bytes.fromhex(_hex_field(control, "anchor", 32))
            public = bytes.fromhex(_hex_field(control, "public", 32))
            epoch = control.get("epoch")
            if not _is_int(epoch) or epoch < 0:
                raise ValueError("'epoch' is not a non-negative integer")
            continues = None if from_link else control.get("continues")
            if not from_link:
                if record["seq"] != 0 or record["prev"] != GENESIS_PREV:
                    raise ValueError("a start record has seq 0 and an all-zero prev")
                if continues is None and (epoch != 0 or public != anchor):
                    raise ValueError("a new trail starts at epoch 0 with the anchor as its key")
                if continues is not None:
                    _check_continues(continues)
        except ValueError as exc:
            raise _Bad(Problem(SYNTAX, f"bad {control.get('type')} record: {exc}", *where)) from None
        if self.expected_anchor is not None and anchor != self.expected_anchor:
            raise _Bad(Problem(FOREIGN, f"this log belongs to another audit trail: its anchor is "
                               f"{anchor.hex()}, not {self.expected_anchor.hex()} (another volume, or a "
                               "forged log)", *where))
        self.state = ChainState(chain=chain, anchor=anchor, epoch=epoch, public=public,
                                seq=record["seq"], prev=record["prev"], first_seq=record["seq"],
                                first_time=record["time"], first_epoch=epoch, continues=continues)
        if from_link:
            self.state.last_type = ROTATE  # what a link follows

    def _check_control(self, kind: str | None, record: dict[str, Any], state: ChainState,
                       file: LogFile, line: _Line) -> None:
        where = (file.name, line.number, record["seq"])
        if kind is None:
            return
        control = _control(record)
        if kind == START:
            if record["seq"] != state.first_seq or line.number != 1:
                raise ValueError("a start record may only begin a log")
            return
        if kind == LINK:
            if line.number != 1:
                raise ValueError("a link record may only begin a file")
            if control.get("format") != FORMAT_VERSION:
                raise ValueError(f"audit format {control.get('format')!r} is not known")
            if (control.get("chain") != state.chain or control.get("anchor") != state.anchor.hex()):
                raise _Bad(Problem(FOREIGN, "this file belongs to another log chain (chain or anchor "
                                   "differs from the file before it): swapped or foreign file", *where))
            if control.get("epoch") != state.epoch or control.get("public") != state.public.hex():
                raise _Bad(Problem(FORGED, "the link names a signing key other than the chain's current "
                                   "one", *where))
            return
        if kind == RESUME:
            clean, unsealed = control.get("clean"), control.get("unsealed")
            if not isinstance(clean, bool) or not _is_int(unsealed) or not _is_int(control.get("torn_bytes")):
                raise ValueError("'clean', 'unsealed' and 'torn_bytes' are required")
            if clean != (state.last_content_type == STOP) or unsealed != state.unsealed:
                raise _Bad(Problem(FORGED, "the resume record misstates how the previous run ended "
                                   f"(it says clean={clean}, unsealed={unsealed}; the log shows "
                                   f"clean={state.last_content_type == STOP}, unsealed={state.unsealed})",
                                   *where))
            return
        # a seal: checkpoint, epoch, rotate, stop
        epoch = control.get("epoch")
        expected_epoch = state.epoch + 1 if kind == EPOCH else state.epoch
        if epoch != expected_epoch:
            raise _Bad(Problem(FORGED, f"{kind} seal names key epoch {epoch!r}, but the current epoch "
                               f"is {state.epoch}", *where))
        if kind == EPOCH:
            _hex_field(control, "public", 32)
        try:
            signature = bytes.fromhex(record["sig"]) if isinstance(record["sig"], str) else b""
        except ValueError:
            signature = b""
        if len(signature) != 64 or not verify_signature(state.public, signature, seal_message(record)):
            since = (f"since the previous seal (seq {state.last_seal[0]})" if state.last_seal
                     else "since the start")
            raise _Bad(Problem(FORGED, f"the {kind} seal's signature is not valid under key epoch "
                               f"{state.epoch}: the records {since} were altered, or the seal was forged "
                               "by someone without the key", *where))

    def _advance(self, state: ChainState, record: dict[str, Any], kind: str | None, file: LogFile,
                 line: _Line) -> None:
        seq = record["seq"]
        state.seq, state.prev = seq + 1, record["hash"]
        state.last_type, state.last_time, state.last_mono = kind, record["time"], record["mono_ns"]
        state.records += 1
        if kind == LINK:
            return
        state.last_content_type = kind
        if kind in (START, RESUME):
            state.need_epoch, state.stopped = True, False
        if kind in SEALS:
            state.last_seal = (seq, kind, record["time"], line.number)
            state.unsealed, state.unsealed_from = 0, None
            state.stopped = kind == STOP
            state.need_epoch = False
            if kind == EPOCH:
                state.epoch += 1
                state.public = bytes.fromhex(_control(record)["public"])
                state.epoch_records[seq] = (record["hash"], state.epoch, state.public.hex())
        else:
            if state.unsealed == 0:
                state.unsealed_from = (file.name, line.number, seq)
            state.unsealed += 1

    def finish(self, live: bool) -> None:
        """The end of the chain's last file."""
        state = self.state
        assert state is not None
        if state.last_type == ROTATE:
            raise _Bad(Problem(MISSING_FILE, f"the log was rotated after seq {state.seq - 1}, but the next "
                               "file was not given", state.files[-1], None, state.seq - 1))
        if state.last_content_type == STOP:
            return
        if live and state.last_seal is not None and not state.need_epoch:
            return  # a running mount: the unsealed tail is counted and reported, not verified
        if state.need_epoch:
            raise _Bad(Problem(FORGED, "the log ends with a start or resume record that no signed epoch "
                               "record follows", state.files[-1], None, state.seq - 1))
        if state.unsealed_from is not None:
            name, number, seq = state.unsealed_from
            raise _Bad(Problem(UNSEALED, f"the log ends without a stop seal: this record and the "
                               f"{state.unsealed - 1} after it are not sealed (truncated log, records "
                               "appended without the key, or the writer crashed; for a running mount "
                               "use --live)", name, number, seq))
        seal = state.last_seal
        raise _Bad(Problem(TRUNCATED, f"the log ends at a {seal[1] if seal else '?'} seal, not a stop "
                           "seal: it was truncated, or it is still being written (use --live)",
                           state.files[-1], seal[3] if seal else None, state.seq - 1))


def _check_continues(continues: Any) -> None:
    if not isinstance(continues, dict):
        raise ValueError("'continues' is not an object")
    _hex_field(continues, "chain", 16)
    _hex_field(continues, "hash", 32)
    if not _is_int(continues.get("seq")):
        raise ValueError("'continues.seq' is not an integer")


def _find_seq(file: LogFile, after_line: int, seq: int) -> int | None:
    """The line holding ``seq`` later in this file (reorder diagnosis), cheaply."""
    needle = f'"seq":{seq},'.encode()
    for line in file.lines[after_line:]:
        if needle in line.raw and _loose_seq(line.raw) == seq:
            return line.number
    return None


# ---------------------------------------------------------------------------- many files


@dataclass
class _Group:
    chain: str
    files: list[LogFile]
    continues: dict[str, Any] | None


def _first_records(paths: Iterable[Path]) -> list[LogFile]:
    files = []
    for path in paths:
        file = read_log_file(path)
        if not file.lines:
            raise _Bad(Problem(TRUNCATED if file.torn else SYNTAX,
                               "the file holds no complete record" if file.torn else "the file is empty",
                               file.name, 1 if file.torn else None))
        file.first = _decode(file, file.lines[0])
        if control_type(file.first) not in (START, LINK):
            raise _Bad(Problem(TRUNCATED, "the file does not begin with a start or link record: its "
                               "beginning was cut off, or it is not an audit log", file.name, 1,
                               file.first["seq"]))
        files.append(file)
    return files


def _group(files: list[LogFile]) -> list[_Group]:
    by_chain: dict[str, list[LogFile]] = {}
    for file in files:
        assert file.first is not None
        chain = str(file.first["audit"].get("chain"))
        by_chain.setdefault(chain, []).append(file)
    groups = []
    for chain, members in by_chain.items():
        members.sort(key=lambda f: f.first["seq"] if f.first else 0)
        for a, b in zip(members, members[1:], strict=False):
            if a.first and b.first and a.first["seq"] == b.first["seq"]:
                raise _Bad(Problem(REORDERED, f"{a.name} and {b.name} both begin at seq {a.first['seq']}: "
                                   "the same file given twice, or a copy that diverged", b.name, 1,
                                   b.first["seq"]))
        head = members[0].first or {}
        continues = head.get("audit", {}).get("continues") if control_type(head) == START else None
        if not isinstance(continues, dict):  # a bad value is reported when the chain is verified
            continues = None
        groups.append(_Group(chain, members, continues))
    # A chain that continues another is verified after it (the epoch record it names).
    ordered: list[_Group] = []
    pending = list(groups)
    while pending:
        ready = [g for g in pending if g.continues is None
                 or any(o.chain == g.continues.get("chain") for o in ordered)
                 or not any(o.chain == g.continues.get("chain") for o in pending)]
        if not ready:
            ready = pending[:1]
        for group in ready:
            ordered.append(group)
            pending.remove(group)
    return ordered


def _verify_group(group: _Group, anchor: bytes | None, live: bool, done: dict[str, ChainState],
                  report: VerifyReport) -> ChainState:
    """``live`` only for a chain no other chain continues: an abandoned chain is not running."""
    verifier = ChainVerifier(expected_anchor=anchor)
    for index, file in enumerate(group.files):
        last_file = index == len(group.files) - 1
        for position, line in enumerate(file.lines):
            record = file.first if position == 0 and file.first is not None else _decode(file, line)
            if position == 0:
                verifier.begin_file(file, record, line)
            verifier.feed(file, line, record)
        if file.torn:
            if not (live and last_file):
                raise _Bad(Problem(TRUNCATED, "the last line is incomplete (a cut or torn write)",
                                   file.name, len(file.lines) + 1))
            report.warnings.append(f"{file.name}: an incomplete last line ({len(file.torn)} bytes) was "
                                   "ignored: it is being written")
    state = verifier.state
    assert state is not None
    if state.continues is not None:
        _check_continuation(state, group, done)
    verifier.finish(live)
    return state


def _check_continuation(state: ChainState, group: _Group, done: dict[str, ChainState]) -> None:
    continues = state.continues or {}
    first = group.files[0]
    where = (first.name, 1, state.first_seq)
    earlier = done.get(continues["chain"])
    if earlier is None:
        raise _Bad(Problem(MISSING_FILE, f"this log continues the audit trail of chain {continues['chain']} "
                           f"(whose key epoch {state.first_epoch} was endorsed at its seq "
                           f"{continues['seq']}); that chain's files were not given", *where))
    endorsed = earlier.epoch_records.get(continues["seq"])
    if endorsed is None or endorsed[0] != continues["hash"] or endorsed[1] != state.first_epoch \
            or endorsed[2] != (first.first or {}).get("audit", {}).get("public"):
        raise _Bad(Problem(FORGED, f"the start record names a key that chain {continues['chain']} did not "
                           f"endorse at seq {continues['seq']}", *where))
    if earlier.anchor != state.anchor:
        raise _Bad(Problem(FOREIGN, "this chain and the one it continues have different anchors", *where))


def _check_anchors(files: list[LogFile], anchor: bytes | None) -> None:
    """Every file names its trail's anchor in its first record: a foreign file shows at once."""
    expected = anchor.hex() if anchor is not None else None
    for file in files:
        declared = (file.first or {}).get("audit", {}).get("anchor")
        if expected is None:
            expected = declared
        elif declared != expected:
            whose = "the given anchor" if anchor is not None else f"the anchor of {files[0].name}"
            raise _Bad(Problem(FOREIGN, f"this file belongs to another audit trail: its anchor is "
                               f"{declared}, not {whose} ({expected}): another volume's log, or forged",
                               file.name, 1, (file.first or {}).get("seq")))


def _summary(state: ChainState) -> ChainSummary:
    seal = state.last_seal
    ended = "stop" if state.last_content_type == STOP else (
        f"{state.unsealed} unsealed record(s) after a {seal[1] if seal else '?'} seal")
    return ChainSummary(
        chain=state.chain, anchor=state.anchor.hex(), files=list(state.files), first_seq=state.first_seq,
        last_seq=state.seq - 1, first_time=state.first_time, last_time=state.last_time,
        epochs=(state.first_epoch, state.epoch), ended=ended,
        last_seal_seq=seal[0] if seal else None, last_seal_time=seal[2] if seal else None,
        unsealed=state.unsealed, continues=state.continues)


def verify(paths: list[Path], anchor: bytes | None = None, live: bool = False) -> VerifyReport:
    """Check audit log files (every file of the trail; any order). Never raises for bad logs."""
    report = VerifyReport(intact=False, anchored=anchor is not None, live=live,
                          anchor=anchor.hex() if anchor else None)
    if not paths:
        report.problem = Problem(UNREADABLE, "no log files given")
        return report
    done: dict[str, ChainState] = {}
    try:
        files = _first_records(paths)
        _check_anchors(files, anchor)
        groups = _group(files)
        continued = {str(g.continues.get("chain")) for g in groups if isinstance(g.continues, dict)}
        for group in groups:
            state = _verify_group(group, anchor, live and group.chain not in continued, done, report)
            done[state.chain] = state
            report.chains.append(_summary(state))
            report.records += state.records
            report.unsealed += state.unsealed
    except _Bad as bad:
        report.problem = bad.problem
        return report
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # A safety net: every malformed input should be caught above with a precise message.
        report.problem = Problem(SYNTAX, f"not an audit log (malformed: {exc!r})")
        return report
    if anchor is None and report.chains:
        report.anchor = report.chains[0].anchor
    report.intact = True
    if report.unsealed:
        report.warnings.append(f"{report.unsealed} record(s) after the last seal are not yet sealed "
                               "(live log): they are not verified until the next checkpoint")
    return report


# ---------------------------------------------------------------------------- reading


def iter_records(paths: Iterable[Path], *, include_control: bool = False) -> Iterator[dict[str, Any]]:
    """Every record of the given log files, in chain order (files may be given in any order).

    Strict: each line is parsed, canonical and matches its hash, or AuditTampered names it.
    Sequence and signatures are not checked here (that is ``verify``); control records
    (``audit-*`` events) are skipped unless ``include_control``.
    """
    try:
        groups = _group(_first_records(list(paths)))
        last = groups[-1].files[-1] if groups else None
        for group in groups:
            for file in group.files:
                for line in file.lines:
                    record = _decode(file, line)
                    if include_control or "audit" not in record:
                        yield record
                if file.torn and file is not last:  # the active file may be mid-write
                    raise _Bad(Problem(TRUNCATED, "the last line is incomplete", file.name,
                                       len(file.lines) + 1))
    except _Bad as bad:
        raise AuditTampered(f"audit log {bad.problem} (check it with: encfs-pacs audit verify)") from None
