"""Shamir secret sharing over GF(2^8): field arithmetic against FIPS-197, and M-of-N recovery."""

from __future__ import annotations

import itertools
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encfs_pacs.crypto import shamir


def slow_mul(a: int, b: int) -> int:
    """Schoolbook carry-less product reduced mod 0x11b: an independent reference."""
    product = 0
    for bit in range(8):
        if (b >> bit) & 1:
            product ^= a << bit
    for bit in range(15, 7, -1):
        if (product >> bit) & 1:
            product ^= 0x11B << (bit - 8)
    return product


def test_fips197_worked_examples() -> None:
    # FIPS-197 section 4.2: {57} . {83} = {c1}, and {57} . {13} = {fe}
    assert shamir.gf_mul(0x57, 0x83) == 0xC1
    assert shamir.gf_mul(0x57, 0x13) == 0xFE
    # the AES S-box is built on the inverse: {53}^-1 = {ca} (FIPS-197 section 5.1.1 example)
    assert shamir.gf_inv(0x53) == 0xCA


def test_multiplication_matches_the_reference_for_every_pair() -> None:
    for a in range(256):
        for b in range(256):
            assert shamir.gf_mul(a, b) == slow_mul(a, b), (a, b)


def test_every_nonzero_element_has_its_inverse() -> None:
    for a in range(1, 256):
        assert shamir.gf_mul(a, shamir.gf_inv(a)) == 1, a
    with pytest.raises(ZeroDivisionError):
        shamir.gf_inv(0)


@pytest.mark.parametrize(("n", "m"), [(1, 1), (2, 2), (3, 2), (5, 3), (5, 5), (7, 4)])
def test_any_m_shares_recover_the_secret(n: int, m: int) -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, n, m)
    assert [x for x, _ in shares] == list(range(1, n + 1))
    for subset in itertools.combinations(shares, m):
        assert shamir.combine(list(subset)) == secret
        # order of the shares does not matter
        assert shamir.combine(list(reversed(subset))) == secret


@pytest.mark.parametrize(("n", "m"), [(3, 2), (5, 3), (5, 5)])
def test_m_minus_one_shares_do_not_recover_the_secret(n: int, m: int) -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, n, m)
    for subset in itertools.combinations(shares, m - 1):
        assert shamir.combine(list(subset)) != secret


def test_m_minus_one_shares_say_nothing_about_a_byte() -> None:
    """Information-theoretic hiding: with 2-of-3, share 1 alone is uniform whatever the secret.
    For a fixed secret byte, over all 256 polynomials the value at x=1 takes every value once."""
    for secret_byte in (0, 1, 0x80, 0xFF):
        values = {secret_byte ^ shamir.gf_mul(c, 1) for c in range(256)}
        assert len(values) == 256


def test_shares_are_fresh_each_time() -> None:
    secret = bytes(32)
    assert shamir.split(secret, 3, 2) != shamir.split(secret, 3, 2)
    # threshold 1: every share is the secret itself (degree-0 polynomial)
    assert shamir.split(secret, 2, 1) == [(1, secret), (2, secret)]


def test_a_changed_share_gives_a_wrong_secret_and_is_found_by_consistency() -> None:
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 4, 2)
    x, y = shares[3]
    damaged = shares[:3] + [(x, bytes([y[0] ^ 1]) + y[1:])]
    assert shamir.inconsistent(damaged, 2) == [x]
    assert shamir.inconsistent(shares, 2) == []
    assert shamir.combine([shares[0], damaged[3]]) != secret


@pytest.mark.parametrize(("n", "m"), [(0, 0), (2, 3), (256, 2), (3, 0)])
def test_bad_parameters_are_refused(n: int, m: int) -> None:
    with pytest.raises(ValueError):
        shamir.split(b"x" * 32, n, m)


def test_bad_share_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        shamir.combine([(1, b"a"), (1, b"b")])
    with pytest.raises(ValueError, match="lengths"):
        shamir.combine([(1, b"a"), (2, b"bb")])
    with pytest.raises(ValueError, match="1..255"):
        shamir.combine([(0, b"a")])
    with pytest.raises(ValueError, match="no shares"):
        shamir.combine([])


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=1, max_size=40), data=st.data())
def test_property_random_subsets(secret: bytes, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 10))
    m = data.draw(st.integers(1, n))
    shares = shamir.split(secret, n, m)
    chosen = data.draw(st.permutations(shares))[:m]
    assert shamir.combine(chosen) == secret
