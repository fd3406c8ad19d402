"""Which tensors go through CKKS and which through pairwise masking (protocols/ckks.md §2).

A flat parameter vector is the concatenation, in model order, of the named tensors given to
:func:`plan_routes`. The plan says, for every tensor, its index range in that flat vector and
its route: ``"ckks"`` (summed as real numbers under CKKS, no quantization) or ``"secagg"``
(quantized and pairwise masked). The CKKS tensors are concatenated in order into one vector of
``ckks_size`` values and cut into ``ceil(ckks_size / slots)`` ciphertexts, ``slots = N / 2``: a
tensor may straddle two ciphertexts, which is what makes the packing tight (the lower bound).

Default: routing disabled, so every tensor goes through pairwise masking and CKKS's weaker trust
assumption (threat_models/ckks.md) is never in play. Enabled, a tensor goes to CKKS when it is not
matched by ``exclude`` and either is matched by ``include`` or has ``<= max_elements`` elements.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

__all__ = ["RoutingPolicy", "RouteEntry", "RoutePlan", "plan_routes", "MAX_LOG_Q_128"]

# HE security standard (Albrecht et al., homomorphicencryption.org, 2018), Table 1, classical
# 128-bit security, ternary secret: largest log2(Q) for each ring degree N. SEAL enforces the
# same table (CoeffModulus.MaxBitCount(N, tc128)) when the context is built.
MAX_LOG_Q_128 = {8192: 218, 16384: 438}


@dataclass(frozen=True)
class RoutingPolicy:
    """CKKS routing and parameters (protocols/ckks.md §2, §4). Loadable by configio.from_dict."""

    enabled: bool = False
    max_elements: int = 4096
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    poly_modulus_degree: Literal[8192, 16384] = 8192
    # protocols/ckks.md §4: two 60-bit data primes (fresh ciphertexts are only added, never
    # multiplied, so no rescaling levels) and one 60-bit special prime; log Q = 180 <= 218 at
    # N = 8192. Scale 2^80 leaves 2^38 of headroom for |sum| and room for noise flooding.
    scale_bits: int = 80
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60, 60)
    rotate_key_every_rounds: int = 1
    key_scope: Literal["cohort", "roster"] = "cohort"
    # noise flooding of the decrypted aggregate before release (§4.3): sigma = 2^(flood - scale_bits)
    decrypt_flood_bits: int = 40
    # §5.3: the decryptor refuses an aggregate of fewer holders, and (verify_aggregate) rebuilds
    # the sum from the survivors' signed uploads instead of trusting the server's sum
    min_survivors: int = 2
    verify_aggregate: bool = True

    def __post_init__(self) -> None:
        for name in ("enabled", "verify_aggregate"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool")
        for name in ("max_elements", "scale_bits", "rotate_key_every_rounds", "decrypt_flood_bits",
                     "min_survivors"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int")
        for name in ("include", "exclude"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not all(isinstance(p, str) and p for p in v):
                raise TypeError(f"{name} must be a tuple of non-empty glob strings")
        if self.max_elements < 0:
            raise ValueError("max_elements must be >= 0")
        if self.poly_modulus_degree not in MAX_LOG_Q_128:
            raise ValueError(f"poly_modulus_degree must be one of {sorted(MAX_LOG_Q_128)}")
        if self.key_scope not in ("cohort", "roster"):
            raise ValueError("key_scope must be 'cohort' or 'roster'")
        sizes = self.coeff_mod_bit_sizes
        if not isinstance(sizes, tuple) or not all(isinstance(b, int) and not isinstance(b, bool) for b in sizes):
            raise TypeError("coeff_mod_bit_sizes must be a tuple of ints")
        if len(sizes) < 2 or not all(20 <= b <= 60 for b in sizes):
            raise ValueError("coeff_mod_bit_sizes needs >= 2 primes (data..., special), each 20..60 bits")
        if not 20 <= self.scale_bits <= self.data_bits - 2:
            raise ValueError("scale_bits must be in [20, sum(coeff_mod_bit_sizes[:-1]) - 2]")
        if sum(sizes) > MAX_LOG_Q_128[self.poly_modulus_degree]:
            raise ValueError(
                f"coeff_mod_bit_sizes sum to {sum(sizes)} bits > {MAX_LOG_Q_128[self.poly_modulus_degree]}"
                f", the 128-bit limit for N = {self.poly_modulus_degree}"
            )
        if self.min_survivors < 2:   # D2 (ckks.md): a decryption of one upload is that holder's own update
            raise ValueError("min_survivors must be >= 2: a sum of one upload is that holder's update")
        if self.rotate_key_every_rounds < 1:
            raise ValueError("rotate_key_every_rounds must be >= 1")
        if not 0 <= self.decrypt_flood_bits <= self.scale_bits:
            raise ValueError("decrypt_flood_bits must be in [0, scale_bits]")

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        """log2 of the data modulus a fresh ciphertext lives under (all primes but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def capacity(self) -> float:
        """Largest |Σ x| per slot that decodes without wrapping (§4.2): 2^(data_bits - scale_bits - 2)."""
        return float(2 ** (self.data_bits - self.scale_bits - 2))

    def error_bound(self, n: int, max_abs: float) -> float:
        """Documented bound on |decrypted sum - plaintext sum| per coordinate (protocols/ckks.md §4.4)
        for ``n`` inputs with |x| <= ``max_abs``: flooding (8 sigma) + per-input encryption noise
        (2^16 / scale, measured <= 2^14.3) + float64 encode/decode error (n * max_abs * 2^-44)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError("n must be a positive int")
        flood = 8.0 * 2.0 ** (self.decrypt_flood_bits - self.scale_bits) if self.decrypt_flood_bits else 0.0
        return flood + n * (2.0 ** (16 - self.scale_bits) + 2.0**-44 * max(1.0, float(max_abs)))

    def routes_to_ckks(self, name: str, numel: int) -> bool:
        if not self.enabled or any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return False
        return any(fnmatch.fnmatchcase(name, p) for p in self.include) or numel <= self.max_elements


@dataclass(frozen=True)
class RouteEntry:
    name: str
    shape: tuple[int, ...]
    numel: int
    offset: int  # start index in the flat parameter vector
    route: Literal["ckks", "secagg"]
    ckks_offset: int | None  # start index in the packed CKKS vector (None for secagg)


@dataclass(frozen=True)
class RoutePlan:
    entries: tuple[RouteEntry, ...]
    slots: int

    @property
    def total_size(self) -> int:
        return sum(e.numel for e in self.entries)

    @property
    def ckks_size(self) -> int:
        return sum(e.numel for e in self.entries if e.route == "ckks")

    @property
    def secagg_size(self) -> int:
        return self.total_size - self.ckks_size

    @property
    def n_ciphertexts(self) -> int:
        return math.ceil(self.ckks_size / self.slots)

    def ranges(self, route: str) -> tuple[tuple[int, int], ...]:
        """Merged half-open [start, stop) ranges of the flat vector that take ``route``."""
        out: list[list[int]] = []
        for e in self.entries:
            if e.route != route or e.numel == 0:
                continue
            if out and out[-1][1] == e.offset:
                out[-1][1] = e.offset + e.numel
            else:
                out.append([e.offset, e.offset + e.numel])
        return tuple((a, b) for a, b in out)

    def _index(self, route: str) -> np.ndarray:
        parts = [np.arange(a, b, dtype=np.int64) for a, b in self.ranges(route)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def index_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ckks indices, secagg indices) into the flat vector, int64, each in plan order."""
        return self._index("ckks"), self._index("secagg")

    def split(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ckks part, secagg part) of a flat vector of ``total_size`` values, in plan order."""
        flat = np.asarray(flat)
        if flat.ndim != 1 or flat.shape[0] != self.total_size:
            raise ValueError(f"flat must have shape ({self.total_size},), got {flat.shape}")
        return flat[self._index("ckks")], flat[self._index("secagg")]

    def merge(self, ckks_part: np.ndarray, secagg_part: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`split` (float64)."""
        ckks_part, secagg_part = np.asarray(ckks_part), np.asarray(secagg_part)
        if ckks_part.shape != (self.ckks_size,):
            raise ValueError(f"ckks_part must have shape ({self.ckks_size},), got {ckks_part.shape}")
        if secagg_part.shape != (self.secagg_size,):
            raise ValueError(f"secagg_part must have shape ({self.secagg_size},), got {secagg_part.shape}")
        out = np.empty(self.total_size, dtype=np.float64)
        out[self._index("ckks")] = ckks_part
        out[self._index("secagg")] = secagg_part
        return out

    def to_json(self) -> dict:
        return {
            "slots": self.slots,
            "total_size": self.total_size,
            "ckks_size": self.ckks_size,
            "secagg_size": self.secagg_size,
            "n_ciphertexts": self.n_ciphertexts,
            "tensors": [
                {
                    "name": e.name,
                    "shape": list(e.shape),
                    "numel": e.numel,
                    "offset": e.offset,
                    "route": e.route,
                    "ciphertexts": None if e.ckks_offset is None or e.numel == 0 else [
                        e.ckks_offset // self.slots, (e.ckks_offset + e.numel - 1) // self.slots
                    ],
                }
                for e in self.entries
            ],
        }

    def to_text(self) -> str:
        rows = [("tensor", "shape", "elements", "route", "ciphertexts")]
        for t in self.to_json()["tensors"]:
            cts = "" if t["ciphertexts"] is None else "{}-{}".format(*t["ciphertexts"])
            rows.append((t["name"], "x".join(map(str, t["shape"])) or "()", str(t["numel"]), t["route"], cts))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(
            f"ckks: {self.ckks_size} values in {self.n_ciphertexts} ciphertext(s) of {self.slots} slots;"
            f" secagg: {self.secagg_size} values"
        )
        return "\n".join(lines)

    def dumps_json(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def plan_routes(named_shapes: Sequence[tuple[str, tuple[int, ...]]], policy: RoutingPolicy) -> RoutePlan:
    """Route each named tensor (in flat-vector order) by ``policy`` (protocols/ckks.md §2)."""
    if not isinstance(policy, RoutingPolicy):
        raise TypeError("policy must be a RoutingPolicy")
    entries: list[RouteEntry] = []
    seen: set[str] = set()
    offset = ckks_offset = 0
    for item in named_shapes:
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str):
            raise TypeError("named_shapes must be a sequence of (name, shape) pairs")
        name, shape = item[0], tuple(item[1])
        if name in seen:
            raise ValueError(f"named_shapes: duplicate tensor name {name!r}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"named_shapes: shape of {name!r} must be non-negative ints, got {shape}")
        seen.add(name)
        numel = math.prod(shape)
        ckks = policy.routes_to_ckks(name, numel)
        entries.append(RouteEntry(name, shape, numel, offset, "ckks" if ckks else "secagg", ckks_offset if ckks else None))
        offset += numel
        ckks_offset += numel if ckks else 0
    return RoutePlan(tuple(entries), policy.slots)
