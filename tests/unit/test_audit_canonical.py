"""Canonical JSON (RFC 8785 style) and the strict line format of audit records."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encfs_pacs.audit import text
from encfs_pacs.audit.canonical import (
    NotCanonical,
    _copy,
    _Invalid,
    canonical,
    check_payload,
    parse_canonical,
    repaired,
)
from encfs_pacs.audit.records import HashMismatch, decode_line, encode_line, seal_message


def test_rfc8785_member_order_is_by_utf16_code_units() -> None:
    """RFC 8785 §3.2.3's example: U+1F600 (surrogates D83D DE00) sorts before U+FB33."""
    value = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
             "1": "One", "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control",
             "\u00f6": "Latin Small Letter O With Diaeresis"}
    keys = list(json.loads(canonical(value)))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_rfc8785_string_escapes() -> None:
    """RFC 8785 §3.2.2.2: only quote, backslash and controls are escaped; lowercase \\u00xx."""
    value = "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/"
    assert canonical([value]) == '["€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"]'.encode()
    assert canonical(["\b\t\f\r\x7f\u2028"]) == '["\\b\\t\\f\\r\x7f\u2028"]'.encode()


def test_no_whitespace_and_nested_sorting() -> None:
    assert canonical({"b": [1, {"z": None, "a": True}], "a": -0}) == b'{"a":0,"b":[1,{"a":true,"z":null}]}'


def test_big_integers_are_exact() -> None:
    assert canonical({"inode": 2**64 - 1}) == b'{"inode":18446744073709551615}'


def test_lone_surrogate_has_no_canonical_form() -> None:
    with pytest.raises(ValueError, match="not valid Unicode"):
        canonical({"path": "/a\udcff"})
    assert text("/a\udcff.dcm") == "/a\\xff.dcm"
    assert text("/患者.dcm") == "/患者.dcm"


@pytest.mark.parametrize("raw", [
    b'{"a": 1}', b'{"b":1,"a":2}', b'{"a":1,"a":1}', b'{"a":1.0}', b'{"a":1e3}', b'{"a":NaN}',
    b'{"a":"\\u00e9"}', b'{"a":"\\/"}', b'[1]', b'{"a":1}\n', b"\xff", b'{"a":"\\ud800"}',
])
def test_parse_rejects_anything_but_the_canonical_bytes(raw: bytes) -> None:
    with pytest.raises(NotCanonical):
        parse_canonical(raw)


def test_payload_rules() -> None:
    assert check_payload({"event": "open", "t": (1, 2)}) == {"event": "open", "t": [1, 2]}
    for bad in ({"event": "x", "v": float("nan")}, {"event": "x", "v": {1, 2}}, {"event": ""}):
        with pytest.raises((TypeError, ValueError)):
            check_payload(bad)


def test_line_layout_and_hash() -> None:
    line, digest = encode_line({"seq": 0, "event": "x"})
    assert line == b'{"event":"x","seq":0,"hash":"' + digest.encode() + b'"}\n'
    assert decode_line(line[:-1])["hash"] == digest
    with pytest.raises(HashMismatch):
        decode_line(line[:-1].replace(b'"x"', b'"y"'))
    with pytest.raises(NotCanonical, match="hash"):
        decode_line(b'{"event":"x","seq":0}')


def test_seal_message_excludes_hash_and_sig() -> None:
    record = {"seq": 3, "sig": "ab", "hash": "cd", "audit": {"type": "checkpoint", "epoch": 1}}
    assert seal_message(record) == (b'encfs-pacs audit v1 seal\n'
                                    b'{"audit":{"epoch":1,"type":"checkpoint"},"seq":3}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_canonical_round_trip(value: dict[str, Any]) -> None:
    try:
        raw = canonical(value)
    except ValueError:  # hypothesis text may hold lone surrogates: no UTF-8 form
        return
    assert parse_canonical(raw) == value
    assert canonical(json.loads(raw)) == raw


any_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(), st.floats(), st.binary(max_size=3),
                     st.sampled_from(["\udcff", "caf\u00e9", "/bad\udc80.dcm"]))
any_value = st.recursive(any_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner), st.frozensets(st.integers(), max_size=2),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers(), st.just("\udcff")), inner, max_size=3)),
    max_leaves=12)


@settings(max_examples=300)
@given(value=any_value)
def test_fast_payload_check_accepts_and_copies_exactly_what_the_explaining_one_does(value: object) -> None:
    """check_payload copies without naming members and walks again only to explain a refusal:
    both walks must agree on every value."""
    try:
        explained = _copy(value, "payload")
    except (TypeError, ValueError):
        with pytest.raises(_Invalid):
            _copy(value, None)
    else:
        assert _copy(value, None) == explained


@settings(max_examples=300)
@given(value=any_value)
def test_a_repaired_value_is_always_accepted(value: object) -> None:
    """What the audit worker writes for a record built wrong (canonical.repaired) never fails again."""
    assert _copy(repaired(value), "payload") == repaired(value)
