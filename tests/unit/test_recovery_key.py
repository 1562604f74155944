"""The printable recovery key: encoding, typo detection, wrong volume/set, M-of-N recovery."""

from __future__ import annotations

import itertools
import re
import secrets

import pytest

from encfs_pacs.crypto import keys, recovery_key
from encfs_pacs.crypto.recovery_key import b32decode, b32encode, make_shares, parse_line, parse_text, recover
from encfs_pacs.errors import RecoveryKeyError


@pytest.fixture
def master() -> bytes:
    return keys.new_master_key()


def lines_of(shares: list[recovery_key.Share]) -> list[tuple[int, recovery_key.Share]]:
    return [(i + 1, parse_line(s.line())) for i, s in enumerate(shares)]


def test_base32_round_trip_and_alphabet() -> None:
    for length in (1, 5, 7, 40):
        data = secrets.token_bytes(length)
        text = b32encode(data)
        assert set(text) <= set(recovery_key.ALPHABET)
        assert b32decode(text, length) == data
        assert b32decode(text.lower(), length) == data
    assert not set("ILOU") & set(recovery_key.ALPHABET)
    # known answer: 0x00..0x04 in Crockford base32
    assert b32encode(bytes([0, 1, 2, 3, 4])) == "000G40R4"


def test_line_layout(master: bytes) -> None:
    kid = keys.key_id(master)
    [share] = make_shares(master, kid)
    line = share.line()
    assert re.fullmatch(
        rf"encfs-pacs-recovery-1 volume-{kid[:4].hex()} share-1 need-1 ([0-9A-Z]{{4}}-){{15}}[0-9A-Z]{{4}}",
        line), line
    assert master.hex() not in line  # encoded, not hex: a grep for the key in hex finds nothing
    assert "need-1" in line and repr(share).count(master.hex()) == 0


def test_single_key_recovers(master: bytes) -> None:
    kid = keys.key_id(master)
    shares = make_shares(master, kid)
    assert recover(lines_of(shares), kid) == master


@pytest.mark.parametrize(("n", "m"), [(3, 2), (5, 3), (4, 4)])
def test_any_m_of_n_recovers_and_m_minus_1_does_not(master: bytes, n: int, m: int) -> None:
    kid = keys.key_id(master)
    shares = make_shares(master, kid, n, m)
    numbered = lines_of(shares)
    for subset in itertools.combinations(numbered, m):
        assert recover(list(subset), kid) == master
    for subset in itertools.combinations(numbered, m - 1):
        with pytest.raises(RecoveryKeyError, match=f"needs {m}"):
            recover(list(subset), kid)
    assert recover(numbered, kid) == master  # all of them: extra shares are checked, not harmful


def test_retyped_forms_are_accepted(master: bytes) -> None:
    kid = keys.key_id(master)
    [share] = make_shares(master, kid)
    line = share.line()
    head, body = line.rsplit(" ", 1)
    sloppy = "  " + head.upper().replace("ENCFS-PACS-RECOVERY-1", "encfs-pacs-recovery-1") + \
        "  " + body.lower().replace("-", " ").replace("0", "o").replace("1", "l") + "  "
    assert parse_line(sloppy).y == share.y


def test_every_single_character_typo_is_detected(master: bytes) -> None:
    kid = keys.key_id(master)
    [share] = make_shares(master, kid, 3, 2)[:1]
    line = share.line()
    head, body = line.rsplit(" ", 1)
    positions = [i for i, c in enumerate(body) if c != "-"]
    for i in positions:
        for replacement in "0A":
            if body[i] == replacement:
                continue
            typo = body[:i] + replacement + body[i + 1:]
            with pytest.raises(RecoveryKeyError, match="mistyped or damaged"):
                parse_line(f"{head} {typo}")


@pytest.mark.parametrize("edit", [
    lambda line: line.replace("share-1", "share-2"),
    lambda line: line.replace("need-2", "need-3"),
])
def test_edited_header_fields_fail_the_checksum(master: bytes, edit) -> None:
    kid = keys.key_id(master)
    line = make_shares(master, kid, 3, 2)[0].line()
    with pytest.raises(RecoveryKeyError, match="checksum"):
        parse_line(edit(line))


@pytest.mark.parametrize(("text", "message"), [
    ("hello", "not an encfs-pacs recovery key line"),
    ("encfs-pacs-recovery-2 volume-00000000 share-1 need-1 0000", "not an encfs-pacs recovery key"),
    ("encfs-pacs-recovery-1 volume-0000 share-1 need-1 0000", "8 hex digits"),
    ("encfs-pacs-recovery-1 volume-00000000 share-0 need-1 0000", "1..255"),
    ("encfs-pacs-recovery-1 volume-00000000 share-1 need-1 0000-0000", "characters instead of 64"),
    ("encfs-pacs-recovery-1 volume-00000000 share-1 need-1 " + "U" * 64, "not in the recovery key alphabet"),
])
def test_malformed_lines(text: str, message: str) -> None:
    with pytest.raises(RecoveryKeyError, match=message):
        parse_line(text)


def test_share_of_another_volume_is_named(master: bytes) -> None:
    other = keys.new_master_key()
    shares = make_shares(other, keys.key_id(other))
    with pytest.raises(RecoveryKeyError, match=f"belongs to volume {keys.key_id(other)[:4].hex()}"):
        recover(lines_of(shares), keys.key_id(master))


def test_shares_of_two_sets_do_not_mix(master: bytes) -> None:
    kid = keys.key_id(master)
    first, second = make_shares(master, kid, 3, 2), make_shares(master, kid, 3, 2)
    with pytest.raises(RecoveryKeyError, match="another recovery key set"):
        recover(lines_of([first[0], second[1]]), kid)


def test_duplicate_share_counts_once(master: bytes) -> None:
    kid = keys.key_id(master)
    shares = make_shares(master, kid, 3, 2)
    with pytest.raises(RecoveryKeyError, match="1 different share"):
        recover(lines_of([shares[0], shares[0]]), kid)


def test_inconsistent_extra_share_is_named(master: bytes) -> None:
    """A share that passes its checksum but was altered consistently (an attacker, not a typo)
    is caught by the extra-share check when more than M shares are given."""
    kid = keys.key_id(master)
    shares = make_shares(master, kid, 3, 2)
    bad_y = bytes([shares[2].y[0] ^ 0x55]) + shares[2].y[1:]
    forged = recovery_key.Share(shares[2].key_id_prefix, 3, 2, shares[2].set_id, bad_y)
    with pytest.raises(RecoveryKeyError, match="line.* 3 do not fit"):
        recover(lines_of([shares[0], shares[1], forged]), kid)
    # with exactly M shares the forgery gives a wrong key, which the key ID refuses
    with pytest.raises(RecoveryKeyError, match="does not unlock this volume"):
        recover(lines_of([shares[0], forged]), kid)


def test_recovery_file_text_skips_comments(master: bytes) -> None:
    kid = keys.key_id(master)
    shares = make_shares(master, kid, 2, 2)
    text = "# a comment\n\n" + shares[0].line() + "\n   # another\n" + shares[1].line() + "\n"
    numbered = parse_text(text)
    assert [n for n, _ in numbered] == [3, 5]
    assert recover(numbered, kid) == master
    with pytest.raises(RecoveryKeyError, match="no share line"):
        parse_text("# only comments\n")
    with pytest.raises(RecoveryKeyError, match="line 2: "):
        parse_text(shares[0].line() + "\ngarbage\n")


def test_make_shares_refuses_a_wrong_key_length() -> None:
    with pytest.raises(ValueError):
        make_shares(b"short", bytes(16))
