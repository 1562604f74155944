"""Shamir secret sharing over GF(2^8), byte by byte (as in SLIP-39 and HashiCorp Vault).

Each byte of the secret is the constant term of its own random polynomial of degree
``threshold - 1``; share ``x`` (1..255) holds the value of every polynomial at ``x``. Any
``threshold`` shares give the polynomials back by Lagrange interpolation; fewer give no
information at all about the secret (every secret is equally consistent with them).

The field is GF(2^8) with the AES reduction polynomial x^8 + x^4 + x^3 + x + 1 (0x11b), so
the arithmetic can be checked against FIPS-197's worked examples. Multiplication is a
shift-and-add loop with masks instead of log/exp tables: table look-ups indexed by secret
bytes are the classic cache-timing leak. (Python integers give no timing guarantee anyway;
this runs offline, once, on the admin's machine, not in a server loop.)

Written here rather than taken from PyPI: the arithmetic is ~40 lines, and the candidates
either use another field and a 16-byte secret (pycryptodome's Shamir) or impose their own
word-list share format and a passphrase layer (shamir-mnemonic / SLIP-39), while our share
lines must carry the volume's key ID; see encfs_pacs/crypto/recovery_key.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

MAX_SHARES = 255  # x = 1..255; x = 0 is the secret itself


def gf_mul(a: int, b: int) -> int:
    """Product in GF(2^8) mod 0x11b, without branches or tables that depend on the operands."""
    product = 0
    for _ in range(8):
        product ^= a & -(b & 1)  # add a when the low bit of b is set
        carry = -(a >> 7)  # all ones when a overflows on the shift below
        a = ((a << 1) ^ (0x11B & carry)) & 0xFF
        b >>= 1
    return product


def gf_inv(a: int) -> int:
    """Multiplicative inverse: a^254 (a^255 = 1 for a != 0). The inverse of 0 is undefined."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    result, power = 1, a
    for bit in range(8):  # 254 = 0b11111110: a fixed sequence of squarings and products
        if (254 >> bit) & 1:
            result = gf_mul(result, power)
        power = gf_mul(power, power)
    return result


def _lagrange_weights(xs: Sequence[int], at: int) -> list[int]:
    """w_i = prod_{j != i} (at - x_j) / (x_i - x_j); subtraction is XOR in GF(2^8)."""
    weights = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = gf_mul(numerator, at ^ xj)
                denominator = gf_mul(denominator, xi ^ xj)
        weights.append(gf_mul(numerator, gf_inv(denominator)))
    return weights


def _check_points(shares: Sequence[tuple[int, bytes]]) -> None:
    if not shares:
        raise ValueError("no shares given")
    xs = [x for x, _ in shares]
    if any(not 1 <= x <= MAX_SHARES for x in xs):
        raise ValueError("share numbers must be 1..255")
    if len(set(xs)) != len(xs):
        raise ValueError("the same share number appears twice")
    if len({len(y) for _, y in shares}) != 1:
        raise ValueError("shares have different lengths")


def split(secret: bytes, shares: int, threshold: int) -> list[tuple[int, bytes]]:
    """``shares`` pairs (x, y) with x = 1..shares, any ``threshold`` of which give ``secret``."""
    if not 1 <= threshold <= shares <= MAX_SHARES:
        raise ValueError("need 1 <= threshold <= shares <= 255")
    # coefficients[k][i]: coefficient of x^(k+1) in byte i's polynomial; fresh randomness per call
    coefficients = [secrets.token_bytes(len(secret)) for _ in range(threshold - 1)]
    out = []
    for x in range(1, shares + 1):
        y = bytearray(secret)
        power = 1
        for row in coefficients:
            power = gf_mul(power, x)
            for i, c in enumerate(row):
                y[i] ^= gf_mul(c, power)
        out.append((x, bytes(y)))
    return out


def interpolate(shares: Sequence[tuple[int, bytes]], at: int = 0) -> bytes:
    """The value at ``at`` (0: the secret) of the polynomials through exactly these shares."""
    _check_points(shares)
    weights = _lagrange_weights([x for x, _ in shares], at)
    out = bytearray(len(shares[0][1]))
    for weight, (_, y) in zip(weights, shares, strict=True):
        for i, byte in enumerate(y):
            out[i] ^= gf_mul(weight, byte)
    return bytes(out)


def combine(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """The secret from ``threshold`` shares (more are allowed only if they are consistent:
    use :func:`inconsistent` first). With fewer than the threshold the result is garbage
    that cannot be told from a secret; the caller must check it (we check the key ID)."""
    return interpolate(shares, 0)


def inconsistent(shares: Sequence[tuple[int, bytes]], threshold: int) -> list[int]:
    """x of every share beyond the first ``threshold`` that does not lie on their polynomials."""
    _check_points(shares)
    base = list(shares[:threshold])
    return [x for x, y in shares[threshold:] if interpolate(base, x) != y]
