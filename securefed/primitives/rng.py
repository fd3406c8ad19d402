"""Injectable randomness.

Everything secret (masks seeds, stochastic rounding, DP noise) draws from an ``Entropy``
object passed in by the caller: :class:`SystemEntropy` (``os.urandom``) in production,
:class:`DeterministicEntropy` (AES-256-CTR keystream from a 32-byte seed) in tests so that
runs replay bit for bit. Never numpy/torch global RNGs for anything secret.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "Entropy",
    "SystemEntropy",
    "DeterministicEntropy",
    "uniform_uint64",
    "uniform_float64",
    "PrefetchedEntropy",
]


@runtime_checkable
class Entropy(Protocol):
    """A source of random bytes."""

    def random_bytes(self, n: int) -> bytes:  # pragma: no cover - protocol
        ...


class SystemEntropy:
    """The operating system's CSPRNG, stretched for bulk draws.

    Requests up to 64 bytes (keys, seeds) come straight from ``os.urandom``. Bulk requests (rounding
    bits, noise: megabytes per round) come from an AES-256-CTR keystream keyed by 32 fresh
    ``os.urandom`` bytes — the CTR_DRBG construction of NIST SP 800-90A without derivation function —
    re-keyed from the OS every 2^30 bytes, because ``os.urandom`` alone costs more than the masking.
    """

    _RESEED_BYTES = 1 << 30
    _DIRECT_MAX = 64

    def __init__(self) -> None:
        self._enc = None
        self._used = 0

    def random_bytes(self, n: int) -> bytes:
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError("n must be an int")
        if n < 0:
            raise ValueError("n must be >= 0")
        if n <= self._DIRECT_MAX:
            return os.urandom(n)
        if self._enc is None or self._used + n > self._RESEED_BYTES:
            self._enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(b"\x00" * 16)).encryptor()
            self._used = 0
        self._used += n
        return self._enc.update(bytes(n))


class DeterministicEntropy:
    """AES-256-CTR keystream under a fixed 32-byte seed: reproducible, for tests and replay.

    Not for production secrets: anyone who knows the seed knows every output.
    """

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, (bytes, bytearray)):
            raise TypeError("seed must be bytes")
        if len(seed) != 32:
            raise ValueError("seed must be exactly 32 bytes")
        self._enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(b"\x00" * 16)).encryptor()

    @classmethod
    def from_int(cls, seed: int) -> "DeterministicEntropy":
        if not isinstance(seed, int) or seed < 0:
            raise ValueError("seed must be a non-negative int")
        return cls(seed.to_bytes(32, "big"))

    def random_bytes(self, n: int) -> bytes:
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError("n must be an int")
        if n < 0:
            raise ValueError("n must be >= 0")
        return self._enc.update(b"\x00" * n)


class PrefetchedEntropy:
    """``inner``'s first draws, of sizes known in advance, made ahead of time on a caller's executor
    (a holder draws its rounding bits while it trains, protocols/secagg.md §6.5).

    It returns exactly the bytes ``inner`` would have returned, in the same order: the prefetched draws
    first (each request must have the announced size, else ValueError: the order would be lost), then
    ``inner`` itself. ``discard()`` drops what was drawn and not used.
    """

    def __init__(self, inner: Entropy, sizes: list[int], executor) -> None:
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in sizes):
            raise ValueError("sizes must be non-negative ints")
        self._inner, self._ready = inner, None
        self._future = executor.submit(lambda: [inner.random_bytes(n) for n in sizes][::-1])

    def random_bytes(self, n: int) -> bytes:
        if self._future is not None:
            self._ready, self._future = self._future.result(), None
        if self._ready:
            if len(self._ready[-1]) != n:
                raise ValueError(f"a draw of {n} bytes where {len(self._ready[-1])} were prefetched")
            return self._ready.pop()
        return self._inner.random_bytes(n)

    def discard(self) -> None:
        if self._future is not None:
            self._future.cancel()
            if not self._future.cancelled():
                self._future.result()
        self._future, self._ready = None, None


def uniform_uint64(entropy: Entropy, n: int) -> np.ndarray:
    """``n`` independent uniform 64-bit unsigned integers, shape (n,)."""
    return np.frombuffer(entropy.random_bytes(8 * n), dtype="<u8").copy()


def uniform_float64(entropy: Entropy, n: int) -> np.ndarray:
    """``n`` independent uniform floats in [0, 1) with 53 bits of precision, shape (n,)."""
    # top 53 bits of a uniform 64-bit integer, times 2^-53: exactly the float64 grid in [0,1)
    return (uniform_uint64(entropy, n) >> np.uint64(11)).astype(np.float64) * (2.0**-53)
