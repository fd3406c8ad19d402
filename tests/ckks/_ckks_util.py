"""Helpers shared by tests/ckks (relative imports: tests/ckks is a package)."""

from __future__ import annotations

import itertools

import numpy as np

from securefed.primitives.rng import DeterministicEntropy

_calls = itertools.count(1)


def entropy_for(holder_id: int) -> DeterministicEntropy:
    """A fresh deterministic stream per call, distinct per (call, holder)."""
    return DeterministicEntropy.from_int(10_000 * next(_calls) + holder_id)


def vectors(n: int, length: int, bound: float = 1.0, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.uniform(-bound, bound, length) for i in range(n)}
