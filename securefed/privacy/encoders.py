"""Holder-side encoders: Δ (float32) -> ring vector, and the server-side decoders.

Distributed discrete path (protocols/dp.md §4; Kairouz, Liu, Steinke 2021, Alg. 1 and 2):
  1. clip to L2 ≤ C (done by the caller, clipping.l2_clip)
  2. rotate: y = H·D·x with the public per-round seed (primitives.hadamard)
  3. scale by γ and round with *conditional* randomised rounding: repeat unbiased stochastic rounding
     until ‖ỹ‖₂ ≤ Δ₂ (KLS 2021 Thm. 1 eq. (2), bias parameter β = e^{−1/2}), so the integer
     sensitivity is Δ₂ and Δ₁ ≤ min(Δ₂², √d·Δ₂) (an integer vector has ‖v‖₁ ≤ ‖v‖₂²)
  4. (adaptive clipping) append one coordinate (b − ½)·w, w even, b = 1[‖Δ‖ ≤ C]
  5. add this holder's noise share: N_Z(0, σ_s²) (DDGauss) or Skellam with variance σ_s² per coordinate,
     σ_s² = (z_Δ·C·γ)² / n so that n shares sum to std z_Δ·C·γ = z_Δ·C in real units
  6. embed in Z_{2^k} (two's complement); the secure sum mod 2^k is "modular clipping"
Decoding: centred lift, divide by γ, inverse rotation.

γ is the largest scale for which the aggregate coordinate stays inside [−2^{k−1}, 2^{k−1}) with
K_STD standard deviations of margin (noise) and K_STD sub-Gaussian widths of the rotated data (a
coordinate of a rotated block of norm ≤ C is sub-Gaussian with variance proxy C²/B). Wrap-around costs
accuracy, never privacy (the modular sum is a post-processing of the noised integer sum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from securefed.primitives import hadamard
from securefed.primitives.discrete_noise import discrete_gaussian, skellam
from securefed.primitives.quantize import (BETA, MAX_ROUNDING_TRIES, RingSpec, accept_threshold, from_ring, rounded_l2_bound,
                                          stochastic_round, sum_sq_f64, to_ring)
from securefed.primitives.rng import Entropy, uniform_float64

__all__ = ["K_STD", "BETA", "DiscretePlan", "plan_discrete", "rounded_l2_bound", "gaussian_noise"]

K_STD = 6.0
MAX_ROUNDING_INFLATION = 2.0  # refuse a ring so small that rounding more than doubles Δ₂


def gaussian_noise(entropy: Entropy, n: int, std: float) -> np.ndarray:
    """Continuous N(0, std²) (Box–Muller on Entropy uniforms), float64, shape (n,)."""
    if std < 0 or not math.isfinite(std):
        raise ValueError("std must be a finite number >= 0")
    m = (n + 1) // 2
    u = uniform_float64(entropy, 2 * m)
    r = np.sqrt(-2.0 * np.log(1.0 - u[:m]))  # 1 − u ∈ (0, 1]
    th = 2.0 * math.pi * u[m:]
    return (np.concatenate((r * np.cos(th), r * np.sin(th)))[:n]) * std


@dataclass(frozen=True)
class DiscretePlan:
    """Everything a holder and the server must agree on to encode/decode one distributed round."""

    mechanism: str  # "ddgauss" | "skellam"
    ring: RingSpec
    dim: int
    clip: float
    scale: float  # γ: integer units per real unit
    data_noise_multiplier: float  # z_Δ (std of the noise on the data coordinates / C)
    n_shares: int  # participants, each adds one share
    bit_weight: int  # w (0: no adaptive-clipping coordinate)
    seed: bytes
    round_index: int

    @property
    def padded(self) -> int:
        return hadamard.padded_dim(self.dim)

    @property
    def encoded_dim(self) -> int:
        return self.padded + (1 if self.bit_weight else 0)

    @property
    def total_std(self) -> float:
        """Std of the summed noise per coordinate, integer units, when all n shares arrive."""
        return self.data_noise_multiplier * self.clip * self.scale

    @property
    def share_std(self) -> float:
        return self.total_std / math.sqrt(self.n_shares)

    @property
    def data_l2(self) -> float:
        return rounded_l2_bound(self.scale * self.clip, self.padded)

    def sensitivity(self) -> tuple[float, float]:
        """(Δ₁, Δ₂) of one holder's integer vector under add/remove, bit coordinate included."""
        l2 = self.data_l2
        l1 = min(l2 * l2, math.sqrt(self.padded) * l2)
        half_w = self.bit_weight / 2.0
        return l1 + half_w, math.sqrt(l2 * l2 + half_w * half_w)

    def encode(self, clipped: np.ndarray, within_clip: bool, entropy: Entropy) -> np.ndarray:
        r = self.integer_vector(clipped, within_clip, entropy)
        if self.mechanism == "ddgauss":
            noise = discrete_gaussian(entropy, r.size, self.share_std)
        else:
            noise = skellam(entropy, r.size, self.share_std**2)
        return to_ring(r + noise, self.ring)

    def integer_vector(self, clipped: np.ndarray, within_clip: bool, entropy: Entropy) -> np.ndarray:
        """Steps 2–4 of §4: the holder's int64 vector before its noise share (what the sensitivity bounds)."""
        x = np.asarray(clipped, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"expected a clipped vector of length {self.dim}, got shape {x.shape}")
        y = hadamard.rotate(x, self.seed, self.round_index) * self.scale
        bound_sq = accept_threshold(self.data_l2, y.size)  # the float64 check implies the exact one
        for _ in range(MAX_ROUNDING_TRIES):
            r = stochastic_round(y, entropy)
            if sum_sq_f64(r) <= bound_sq:   # span by span in float64, the same bits on every host (quantize._span_sq)
                break
        else:  # pragma: no cover - probability ≈ 1e-43
            raise RuntimeError("conditional randomised rounding did not succeed")
        if self.bit_weight:
            r = np.concatenate((r, np.array([(1 if within_clip else -1) * (self.bit_weight // 2)], dtype=np.int64)))
        return r

    def decode(self, ring_sum: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(float32 sum of the survivors' clipped updates + noise, noisy Σ(b − ½) or None)."""
        v = from_ring(np.asarray(ring_sum), self.ring)  # centred lift: modular clipping
        if v.shape != (self.encoded_dim,):
            raise ValueError(f"ring sum must have length {self.encoded_dim}, got shape {v.shape}")
        data = hadamard.unrotate(v[: self.padded].astype(np.float64) / self.scale, self.seed, self.round_index, self.dim)
        bits = float(v[-1]) / self.bit_weight if self.bit_weight else None  # Σ (b − ½) + noise / w
        return data.astype(np.float32), bits


def plan_discrete(
    *,
    mechanism: str,
    ring_bits: int,
    dim: int,
    clip: float,
    data_noise_multiplier: float,
    n_shares: int,
    sigma_b: float | None,
    seed: bytes,
    round_index: int,
) -> DiscretePlan:
    """Pick γ (largest that fits the ring, see module doc) and w; refuse configurations that overflow."""
    if mechanism not in ("ddgauss", "skellam"):
        raise ValueError(f"mechanism must be 'ddgauss' or 'skellam' for distributed noise, got {mechanism!r}")
    if n_shares < 1:
        raise ValueError("n_shares must be >= 1")
    if data_noise_multiplier <= 0:
        raise ValueError("distributed DP needs noise_multiplier > 0")
    ring = RingSpec(ring_bits)
    half = (1 << (ring.bits - 1)) - 1
    z, c, n = data_noise_multiplier, float(clip), n_shares
    b = hadamard.block_size(dim)
    per_coord = c * min(1.0, K_STD / math.sqrt(b))  # sub-Gaussian width of a rotated coordinate
    coef = n * per_coord + K_STD * z * c  # data (aligned worst case) + noise margin, per unit γ
    if sigma_b is not None:
        coef = max(coef, n * z * c / (2.0 * sigma_b) + K_STD * z * c)  # the bit coordinate
    scale = (half - 2 * n) / coef  # 2n: rounding (< 1 per holder) and the even-w rounding of the bit
    if scale * c < 1.0:
        raise ValueError(
            f"ring_bits={ring.bits} is too small for {n} holders at noise_multiplier={z:.4g}: the noisy sum would "
            "overflow Z_2^k before one quantization step fits in the clip bound; use more ring bits"
        )
    w = 0
    if sigma_b is not None:
        w = 2 * max(1, round(z * c * scale / (2.0 * sigma_b)))
    plan = DiscretePlan(mechanism, ring, dim, c, scale, z, n, w, bytes(seed), round_index)
    if plan.data_l2 > MAX_ROUNDING_INFLATION * scale * c:
        raise ValueError(
            f"ring_bits={ring.bits} leaves only {scale * c:.3g} integer steps for the clip bound of {n} holders at "
            f"noise_multiplier={z:.4g}: randomised rounding over {plan.padded} coordinates would inflate the "
            f"sensitivity {plan.data_l2 / (scale * c):.2f}x (limit {MAX_ROUNDING_INFLATION}); use more ring bits"
        )
    if mechanism == "ddgauss" and plan.share_std < 0.5:
        raise ValueError(
            f"per-holder discrete Gaussian std {plan.share_std:.3g} < 1/2 (KLS 2021 Prop. 14 needs >= 1/2): "
            "use more ring bits or a larger noise_multiplier"
        )
    return plan
