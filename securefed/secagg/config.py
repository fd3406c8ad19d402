"""SecAggConfig and the threshold rules (protocols/secagg.md §2, §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from securefed.primitives.graph import resolve_degree
from securefed.primitives.quantize import MAX_RING_BITS, MIN_RING_BITS

__all__ = ["SecAggConfig", "Thresholds", "threshold_for"]


def threshold_for(m: int, fraction: float) -> int:
    """t = max(2, ⌊m/2⌋+1, ⌈f·m⌉): always a strict majority of the m share holders (§2)."""
    return max(2, m // 2 + 1, math.ceil(fraction * m - 1e-12))


@dataclass(frozen=True)
class Thresholds:
    threshold: int      # t: Shamir threshold over the m = d+1 holders of each secret
    min_survivors: int  # t_min: fewest holders in any of U1..U4 before the round aborts
    degree: int         # d: n−1 for the complete graph


@dataclass(frozen=True)
class SecAggConfig:
    """Configuration of one secure-aggregation round; loadable by ``securefed.configio.from_dict``.

    ring_bits: k, the ring Z_{2^k} (16..32). threshold_fraction: f ∈ [0.5, 1]; the thresholds are
    t = max(2, ⌊m/2⌋+1, ⌈f·m⌉) over m = d+1 share holders and t_min = the same rule over the cohort n
    (for n=10, f=0.5: t = t_min = 6). neighbours: None = complete graph (SecAgg); 0 = auto (complete
    for n ≤ 64, else degree 2·⌈3·log2 n⌉); d ≥ 2 = SecAgg+ graph of degree d (rounded up to even).
    chunk_elements: the words each mask-expansion task covers (tasks run on worker threads); each task streams
      its range through a scratch of at most min(4·chunk_elements, 1 MiB) bytes (prg.CACHE_BLOCK_BYTES).
    """

    ring_bits: int = 32
    threshold_fraction: float = 0.5
    neighbours: int | None = None
    chunk_elements: int = 1 << 20

    def __post_init__(self) -> None:
        if not isinstance(self.ring_bits, int) or isinstance(self.ring_bits, bool):
            raise TypeError("ring_bits must be an int")
        if not MIN_RING_BITS <= self.ring_bits <= MAX_RING_BITS:
            raise ValueError(f"ring_bits must be in [{MIN_RING_BITS}, {MAX_RING_BITS}], got {self.ring_bits}")
        if not isinstance(self.threshold_fraction, (int, float)) or isinstance(self.threshold_fraction, bool):
            raise TypeError("threshold_fraction must be a number")
        if not 0.5 <= self.threshold_fraction <= 1.0:
            raise ValueError(f"threshold_fraction must be in [0.5, 1], got {self.threshold_fraction}")
        if self.neighbours is not None:
            if not isinstance(self.neighbours, int) or isinstance(self.neighbours, bool):
                raise TypeError("neighbours must be an int or None")
            if self.neighbours == 1 or self.neighbours < 0:
                raise ValueError("neighbours must be None, 0 (auto) or >= 2")
        if not isinstance(self.chunk_elements, int) or isinstance(self.chunk_elements, bool):
            raise TypeError("chunk_elements must be an int")
        if self.chunk_elements < 1:
            raise ValueError("chunk_elements must be >= 1")

    def thresholds(self, n: int) -> Thresholds:
        """(t, t_min, d) for a cohort of n holders; ValueError if the cohort is too small."""
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError("cohort size must be an int")
        if n < 3:
            raise ValueError(f"secure aggregation needs a cohort of at least 3 holders, got {n}")
        d = resolve_degree(self.neighbours, n)
        return Thresholds(threshold_for(d + 1, self.threshold_fraction), threshold_for(n, self.threshold_fraction), d)
