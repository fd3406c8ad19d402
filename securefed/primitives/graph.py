"""Share/mask neighbour graphs: complete (SecAgg) or circulant k-regular (SecAgg+).

protocols/secagg.md §4. Bell et al., CCS 2020, §3: a random O(log n)-degree graph suffices; we use
the Harary/circulant graph on a pseudo-random ordering of the cohort, so every node has degree
exactly d and the graph is a deterministic function of (cohort, seed) that every party recomputes.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable

__all__ = ["NeighbourGraph", "resolve_degree", "AUTO_COMPLETE_MAX"]

AUTO_COMPLETE_MAX = 64


def resolve_degree(neighbours: int | None, n: int) -> int:
    """Graph degree d for cohort size n (n−1 means complete)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError("cohort size must be a positive int")
    if neighbours is None:
        return n - 1
    if not isinstance(neighbours, int) or isinstance(neighbours, bool):
        raise TypeError("neighbours must be an int or None")
    if neighbours == 0:  # auto
        if n <= AUTO_COMPLETE_MAX:
            return n - 1
        d = 2 * math.ceil(3 * math.log2(n))
    elif neighbours >= 2:
        d = neighbours + (neighbours % 2)
    else:
        raise ValueError("neighbours must be None, 0 (auto) or >= 2")
    return min(n - 1, d)


class NeighbourGraph:
    """Undirected graph over the cohort; ``neighbours(i)`` excludes i."""

    def __init__(self, cohort: Iterable[int], degree: int, seed: bytes) -> None:
        ids = sorted(cohort)
        if len(set(ids)) != len(ids) or not ids:
            raise ValueError("cohort must be a non-empty set of distinct ids")
        n = len(ids)
        if not isinstance(degree, int) or not 0 <= degree <= n - 1:
            raise ValueError(f"degree must be in [0, {n - 1}]")
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
            raise ValueError("seed must be 32 bytes")
        self.cohort = tuple(ids)
        self.degree = degree
        self.complete = degree == n - 1
        if self.complete:
            self._adj = {i: frozenset(ids) - {i} for i in ids}
            return
        if degree % 2:
            raise ValueError("a non-complete graph needs an even degree")
        order = sorted(ids, key=lambda i: hashlib.sha256(bytes(seed) + struct.pack(">I", i)).digest())
        half = degree // 2
        adj: dict[int, set[int]] = {i: set() for i in ids}
        for pos, i in enumerate(order):
            for off in range(1, half + 1):
                j = order[(pos + off) % n]
                adj[i].add(j)
                adj[j].add(i)
        self._adj = {i: frozenset(v) for i, v in adj.items()}

    def neighbours(self, i: int) -> frozenset[int]:
        try:
            return self._adj[i]
        except KeyError:
            raise ValueError(f"{i} is not in the cohort") from None

    def holders(self, i: int) -> frozenset[int]:
        """H(i) = N(i) ∪ {i}: who holds shares of i's secrets."""
        return self.neighbours(i) | {i}
