"""Shamir t-of-m secret sharing of 32-byte secrets over GF(2^521 − 1) (protocols/secagg.md §3.5).

Shamir, "How to share a secret", CACM 1979. The Mersenne prime p = 2^521 − 1 exceeds every 32-byte
secret, so a secret is embedded as its big-endian integer and recovered exactly. Shares are
(x, y) with x = holder id ≥ 1 and y serialized as 66 big-endian bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from securefed.primitives.rng import Entropy

__all__ = ["PRIME", "SHARE_BYTES", "SECRET_BYTES", "split", "reconstruct", "share_to_bytes", "share_from_bytes"]

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32
_MAX_X = (1 << 31) - 1


def _check_xs(xs: Iterable[int]) -> list[int]:
    out = list(xs)
    for x in out:
        if not isinstance(x, int) or isinstance(x, bool):
            raise TypeError("share x-coordinates must be ints")
        if not 1 <= x <= _MAX_X:
            raise ValueError(f"share x-coordinate {x} outside [1, 2^31-1]")
    if len(set(out)) != len(out):
        raise ValueError("share x-coordinates must be distinct")
    return out


def _random_field_element(entropy: Entropy) -> int:
    # rejection sampling: 66 random bytes masked to 521 bits is uniform on [0, 2^521); reject p itself
    # (the only value ≥ p), so the result is exactly uniform on GF(p).
    while True:
        v = int.from_bytes(entropy.random_bytes(SHARE_BYTES), "big") & PRIME
        if v < PRIME:
            return v


def split(secret: bytes, *, threshold: int, xs: Iterable[int], entropy: Entropy) -> dict[int, int]:
    """Shares {x: f(x)} of ``secret`` with f of degree threshold−1 and f(0) = secret."""
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError("secret must be bytes")
    if len(secret) != SECRET_BYTES:
        raise ValueError("secret must be 32 bytes")
    xs = _check_xs(xs)
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise TypeError("threshold must be an int")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}] (number of shares), got {threshold}")
    coeffs = [int.from_bytes(secret, "big")] + [_random_field_element(entropy) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner; t ≤ a few hundred
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


@functools.lru_cache(maxsize=1024)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis at 0: λ_i = Π_{j≠i} x_j / (x_j − x_i) mod p (public: depends on the ids only)."""
    out = []
    for i in xs:
        num, den = 1, 1
        for j in xs:
            if j != i:
                num = num * j % PRIME
                den = den * (j - i) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)


def reconstruct(shares: Mapping[int, int], *, threshold: int) -> bytes:
    """f(0) from exactly ``threshold`` shares (the first ``threshold`` by x if more are given)."""
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise ValueError("threshold must be a positive int")
    xs = sorted(_check_xs(shares.keys()))
    if len(xs) < threshold:
        raise ValueError(f"need {threshold} shares, got {len(xs)}")
    xs = xs[:threshold]
    for x in xs:
        y = shares[x]
        if not isinstance(y, int) or not 0 <= y < PRIME:
            raise ValueError("share value outside the field")
    secret = 0
    for x, lam in zip(xs, _lagrange_at_zero(tuple(xs))):
        secret = (secret + shares[x] * lam) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ValueError("shares are inconsistent: reconstructed value is not a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(y: int) -> bytes:
    if not isinstance(y, int) or not 0 <= y < PRIME:
        raise ValueError("share value outside the field")
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(b: bytes) -> int:
    if not isinstance(b, (bytes, bytearray)):
        raise TypeError("share must be bytes")
    if len(b) != SHARE_BYTES:
        raise ValueError(f"share must be {SHARE_BYTES} bytes")
    y = int.from_bytes(b, "big")
    if y >= PRIME:
        raise ValueError("share value outside the field")
    return y
