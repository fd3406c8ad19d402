"""L2 clipping of pseudo-gradients, and adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021).

Fixed clipping (McMahan et al. 2018, DP-FedAvg): Δ ← Δ · min(1, C / ‖Δ‖₂).

Adaptive clipping ("Differentially Private Learning with Adaptive Clipping", NeurIPS 2021, Alg. 1):
every holder also reports b_i = 1[‖Δ_i‖₂ ≤ C]; the server forms the noisy fraction
b̄ = (Σ b_i + N(0, σ_b²)) / m and updates C ← C · exp(−η (b̄ − γ)) (geometric update, η = 0.2, the
paper's default), which tracks the γ-quantile of the update norms.
Privacy of the pair (noised sum of Δ with std z_Δ·C, noised count with std σ_b): Andrew et al. §3.2 —
the pair is a Gaussian mechanism with noise multiplier z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2) (bits are centred,
b − ½, sensitivity ½). We keep the *accounted* z at the configured/calibrated value and inflate the
data noise to z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2); this needs z < 2σ_b.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from securefed.primitives.quantize import SPAN, sum_sq_f64
from securefed.primitives.spans import for_spans

__all__ = ["ClipInfo", "CLIP_MARGIN", "l2_clip", "clippable_in_place", "ADAPTIVE_LR", "bit_noise_std", "data_noise_multiplier", "adaptive_update"]

ADAPTIVE_LR = 0.2
CLIP_MARGIN = 1 - 1e-6   # a clipped update is scaled to C·CLIP_MARGIN: float32 rounding cannot push it above C


@dataclass(frozen=True)
class ClipInfo:
    """Norm of a holder's update before clipping, and whether clipping changed it."""

    norm: float
    clipped: bool


def clippable_in_place(delta: np.ndarray) -> bool:
    """Whether ``l2_clip(delta, …, inplace=True)`` accepts ``delta``: a writable, contiguous float32 vector."""
    return delta.dtype == np.float32 and delta.flags.writeable and delta.flags.c_contiguous


def l2_clip(delta: np.ndarray, clip: float, *, inplace: bool = False,
            copy: bool = True) -> tuple[np.ndarray, ClipInfo]:
    """Flat float32 copy of ``delta`` scaled to L2 norm ≤ clip (unless ``inplace`` or ``copy=False`` say otherwise).

    The norm is accumulated in float64 span by span (as privacy.device_encode does on the GPU), and a
    clipped vector is formed span by span from the same two float64 products, so no float64 copy of the
    whole update is ever made (at 125m that was 0.84 GB written and read per holder, twice per plain round:
    benchmarks/secagg/host_passes.py).

    ``inplace``: ``delta`` (a writable, contiguous float32 vector the caller owns) is scaled where it is and
    returned. ``copy=False``: a float32 ``delta`` within the bound is returned itself (it may be read-only), a
    clipped one as a new vector. Either way the values are exactly those of the copy: each fresh vector of a
    plain round cost a page-faulting pass over it (0.12–0.2 s per 23M coordinates on 2 cores, stop 43)."""
    if not isinstance(delta, np.ndarray):
        raise TypeError("delta must be a numpy array")
    if delta.ndim != 1:
        raise ValueError("delta must be a flat (1-D) vector")
    if not isinstance(clip, (int, float)) or isinstance(clip, bool) or not math.isfinite(clip) or clip <= 0:
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    if inplace and not clippable_in_place(delta):
        raise ValueError("clipping in place needs a writable, contiguous float32 vector")
    n = delta.shape[0]
    norm = math.sqrt(sum_sq_f64(delta))
    if not math.isfinite(norm):
        raise ValueError("delta contains non-finite values")
    if norm <= clip * CLIP_MARGIN:  # float32 rounding (relative 2^-24 per coordinate) keeps it below C
        if inplace or (not copy and delta.dtype == np.float32):
            return delta, ClipInfo(norm=norm, clipped=False)
        y = np.empty(n, np.float32)
        for_spans(n, lambda lo, hi: np.copyto(y[lo:hi], delta[lo:hi], casting="unsafe"))   # = astype(float32)
        return y, ClipInfo(norm=norm, clipped=False)
    y = delta if inplace else np.empty(n, np.float32)   # in place: each span is read into its buffer before it is written
    # scale a hair below C so float32 rounding cannot push the norm above C (quantize allows no slack)
    a = clip / norm

    def scale(lo: int, hi: int) -> None:                      # each thread its own float64 span buffer
        buf = np.empty(min(hi - lo, SPAN), np.float64)
        for s in range(lo, hi, SPAN):
            c = buf[: min(SPAN, hi - s)]
            c[...] = delta[s : s + c.shape[0]]
            np.multiply(c, a, out=c)
            np.multiply(c, CLIP_MARGIN, out=c)                # privacy.device_encode repeats these two products
            y[s : s + c.shape[0]] = c
    for_spans(n, scale, align=SPAN)
    return y, ClipInfo(norm=norm, clipped=norm > clip)


def bit_noise_std(expected_clients: float, noise_multiplier: float) -> float:
    """σ_b for the clipped-fraction count: Andrew et al. suggest m/20; we use max(m/20, z).

    max(·, z) keeps z_Δ finite for small cohorts (z < 2σ_b always holds), at the price of a
    noisier quantile estimate; the data noise then grows by at most √(4/3) (when σ_b = z).
    """
    return max(float(expected_clients) / 20.0, float(noise_multiplier))


def data_noise_multiplier(noise_multiplier: float, sigma_b: float) -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (Andrew et al. 2021, §3.2)."""
    if noise_multiplier <= 0:
        raise ValueError("noise_multiplier must be > 0 for adaptive clipping with DP")
    if noise_multiplier >= 2 * sigma_b:
        raise ValueError(f"adaptive clipping needs noise_multiplier < 2*sigma_b ({2 * sigma_b:.4g}); got {noise_multiplier}")
    return (noise_multiplier**-2 - (2 * sigma_b) ** -2) ** -0.5


def adaptive_update(clip: float, noisy_fraction: float, target_quantile: float, lr: float = ADAPTIVE_LR) -> float:
    """Geometric update C ← C · exp(−η (b̄ − γ)); b̄ is clamped to [0, 1] (post-processing)."""
    b = min(1.0, max(0.0, float(noisy_fraction)))
    return float(clip * math.exp(-lr * (b - target_quantile)))
