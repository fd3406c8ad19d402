"""Randomised Hadamard rotation y = H·D·x (Kairouz, Liu, Steinke 2021, §4 "flattening").

- D: diagonal ±1 signs from a *public* per-round seed (everyone must use the same D so that the sum of
  rotated vectors is the rotation of the sum); derived with a labelled SHA-256 and expanded with the
  AES-CTR keystream of :class:`DeterministicEntropy`. The signs are not secret: flattening only makes
  modular wrap-around unlikely (a utility matter); privacy never depends on them.
- H: the orthonormal Walsh–Hadamard matrix (H = Hᵀ = H⁻¹), applied by the fast transform in
  O(d log d). The vector is zero-padded and cut into blocks of ``block_size(d)`` coordinates (a power
  of two, at most 2^16) and every block is rotated on its own: a block-diagonal orthonormal map, so
  ‖y‖₂ = ‖x‖₂ exactly and the padding overhead stays below one block (< 65 536 coordinates).
- Inverse: x = D·H·y, then drop the padding.
"""

from __future__ import annotations

import hashlib

import numpy as np

from securefed.primitives.rng import DeterministicEntropy

__all__ = ["MAX_BLOCK", "block_size", "padded_dim", "sign_vector", "fwht", "rotate", "unrotate"]

MAX_BLOCK = 1 << 16
_LABEL = b"securefed/dp/v1/hadamard-signs"


def _check_dim(d: int) -> None:
    if not isinstance(d, int) or isinstance(d, bool):
        raise TypeError("dim must be an int")
    if d < 1:
        raise ValueError("dim must be >= 1")


def block_size(d: int) -> int:
    """Power-of-two block length: next power of two ≥ d, capped at MAX_BLOCK."""
    _check_dim(d)
    return min(MAX_BLOCK, 1 << (d - 1).bit_length())


def padded_dim(d: int) -> int:
    """Length of the rotated vector: d rounded up to a whole number of blocks."""
    b = block_size(d)
    return -(-d // b) * b


def sign_vector(seed: bytes, round_index: int, n: int) -> np.ndarray:
    """±1.0 signs (float64, shape (n,)) from the public seed and round, domain-separated."""
    if not isinstance(seed, (bytes, bytearray)):
        raise TypeError("seed must be bytes")
    if not isinstance(round_index, int) or round_index < 0:
        raise ValueError("round_index must be a non-negative int")
    key = hashlib.sha256(_LABEL + b"|" + bytes(seed) + b"|" + round_index.to_bytes(8, "big")).digest()
    bits = np.unpackbits(np.frombuffer(DeterministicEntropy(key).random_bytes((n + 7) // 8), dtype=np.uint8))[:n]
    return 1.0 - 2.0 * bits.astype(np.float64)


def fwht(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh–Hadamard transform along the last axis (length a power of two)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    lead = x.shape[:-1]
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.reshape(y.shape[0], n // (2 * h), 2, h)  # (rows, pairs of half-blocks, 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = np.stack((a + b, a - b), axis=2)
        h *= 2
    return (y.reshape(*lead, n) / np.sqrt(n)).astype(np.float64)


def rotate(x: np.ndarray, seed: bytes, round_index: int) -> np.ndarray:
    """H·D·pad(x): float64, shape (padded_dim(len(x)),)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError("rotate expects a flat vector")
    d = x.size
    p, b = padded_dim(d), block_size(d)
    z = np.zeros(p, dtype=np.float64)
    z[:d] = x
    z *= sign_vector(seed, round_index, p)
    return fwht(z.reshape(p // b, b)).reshape(p)


def unrotate(y: np.ndarray, seed: bytes, round_index: int, dim: int) -> np.ndarray:
    """Exact inverse of :func:`rotate`: D·H·y, truncated to the first ``dim`` coordinates."""
    y = np.asarray(y, dtype=np.float64)
    p, b = padded_dim(dim), block_size(dim)
    if y.shape != (p,):
        raise ValueError(f"expected a rotated vector of length {p}, got shape {y.shape}")
    x = fwht(y.reshape(p // b, b)).reshape(p) * sign_vector(seed, round_index, p)
    return x[:dim]
