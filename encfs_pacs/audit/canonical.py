"""Canonical JSON for audit records (RFC 8785 style) and the strict line parser.

A record is hashed and signed over its canonical bytes, so the same record must always
serialize to the same bytes, in any program and any language: object members sorted by the
UTF-16 code units of their names, no whitespace, strings escaped exactly as ECMAScript's
``JSON.stringify`` does (only ``"``, ``\\`` and control characters; everything else is raw
UTF-8). Floats are forbidden: RFC 8785 formats numbers as IEEE doubles, which is where
canonicalizers disagree; integers are written as exact decimal digits (docs/audit-format.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NoReturn

# Top-level member names the writer owns. A payload carrying one would spoof the envelope.
ENVELOPE_KEYS = frozenset({"seq", "time", "mono_ns", "prev", "hash", "audit", "sig"})

_dumps_fast = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                               allow_nan=False, check_circular=False).encode
_dump_string = json.JSONEncoder(ensure_ascii=False).encode


def _exact(value: Any) -> str:
    """Slow path: sorts member names by UTF-16 code units, as RFC 8785 §3.2.3 says."""
    if isinstance(value, dict):
        members = sorted(value.items(), key=lambda item: item[0].encode("utf-16-be"))
        return "{" + ",".join(_dump_string(k) + ":" + _exact(v) for k, v in members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_exact(v) for v in value) + "]"
    return _dumps_fast(value)


def canonical(value: Any) -> bytes:
    """The canonical UTF-8 bytes of a JSON value that holds no floats (see ``check_payload``).

    Raises ValueError for text that is not valid Unicode (a lone surrogate, e.g. a file name
    decoded with surrogateescape): it has no UTF-8 form, so it cannot be hashed reproducibly.
    """
    text = _dumps_fast(value)
    if text.isascii():  # nearly every record; a C scan, where max(raw) cost 8 us per record
        return text.encode("ascii")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"audit record holds text that is not valid Unicode ({exc.reason}); "
                         "pass file names through encfs_pacs.audit.text()") from None
    # Python sorts names by code point, RFC 8785 by UTF-16 unit; they differ only when names
    # hold characters >= U+E000 (UTF-8 lead bytes 0xEE..0xF4). Rare, so check the bytes.
    if max(raw) >= 0xEE:
        raw = _exact(value).encode("utf-8")
    return raw


def text(value: str) -> str:
    """A str safe for a record: undecodable bytes (surrogateescape) become ``\\xNN`` escapes."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def repaired(value: Any) -> Any:
    """A copy of any payload that check_payload accepts: undecodable text escaped (``text``),
    and what records cannot hold (floats, bytes, sets, …) written as its repr. For a record
    built wrong, so that the access it records is still written (audit/enrich.py)."""
    if isinstance(value, str):
        return text(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, dict):
        return {text(str(key)): repaired(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [repaired(item) for item in value]
    return text(repr(value))


def check_payload(payload: Any) -> dict[str, Any]:
    """A private deep copy of a caller's payload, or TypeError/ValueError saying what is wrong.

    Copying means a caller that reuses or mutates its dict after ``append`` cannot change a
    record waiting to be written.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"an audit payload is a dict, not {type(payload).__name__}")
    event = payload.get("event")
    if not isinstance(event, str) or not event:
        raise ValueError("an audit payload needs an 'event' (non-empty string)")
    reserved = ENVELOPE_KEYS.intersection(payload)
    if reserved:
        raise ValueError(f"audit payload uses member(s) the writer owns: {sorted(reserved)}")
    try:
        return _copy(payload, None)
    except _Invalid:
        return _copy(payload, "payload")  # walks it again to say where and what: raises


class _Invalid(Exception):
    """A refusal found by a walk that does not name locations (see _copy)."""


def _copy(value: Any, where: str | None) -> Any:
    """Validated deep copy. ``where`` names the member for error messages; None skips building
    those names (the per-record path, two records per file a PACS opens, where the names cost
    more than the copy) and raises _Invalid on a refusal instead."""
    if isinstance(value, str):
        if not value.isascii():  # (inline: almost every string is ASCII)
            _check_text(value, where)
        return value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _refuse(where, TypeError,
                        lambda key=key: f"audit {where}: member name {key!r} is not a string")
            if not key.isascii():
                _check_text(key, where)
            out[key] = _copy(item, where and f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        inner = where and f"{where}[]"
        return [_copy(item, inner) for item in value]
    if isinstance(value, float):
        _refuse(where, TypeError, lambda: f"audit {where} is a float ({value!r}): floats are not allowed "
                "in records (their canonical form is ambiguous); use an integer or a string")
    _refuse(where, TypeError, lambda: f"audit {where} is a {type(value).__name__}, which JSON cannot hold")


def _refuse(where: str | None, error: type[Exception], message: Callable[[], str]) -> NoReturn:
    if where is None:
        raise _Invalid
    raise error(message())


def _check_text(value: str, where: str | None) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _refuse(where, ValueError, lambda: f"audit {where} holds text that is not valid Unicode "
                "(undecodable bytes in a file name?): pass it through encfs_pacs.audit.text()")


class NotCanonical(ValueError):
    """A line that is not exactly the canonical form of the JSON it holds."""


def _no_float(token: str) -> Any:
    raise NotCanonical(f"number {token} is not an integer (records hold no floats)")


def _no_constant(token: str) -> Any:
    raise NotCanonical(f"{token} is not JSON")


_decoder = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_constant)


def parse_canonical(raw: bytes) -> dict[str, Any]:
    """Parse one object and insist that ``raw`` is its canonical form (byte for byte).

    Comparing against a re-serialization rejects in one step: whitespace, escapes written
    differently, unsorted or duplicate members (JSON keeps the last; the bytes then differ).
    """
    try:
        text_ = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotCanonical("not valid UTF-8") from None
    try:
        value = _decoder.decode(text_)
    except NotCanonical:
        raise
    except ValueError as exc:
        raise NotCanonical(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise NotCanonical("not a JSON object")
    try:
        again = canonical(value)
    except ValueError as exc:
        raise NotCanonical(str(exc)) from None
    if again != raw:
        raise NotCanonical("not in canonical form (whitespace, member order, escapes or duplicate "
                           "members differ from what the writer produces)")
    return value
