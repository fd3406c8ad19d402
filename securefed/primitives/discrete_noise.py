"""Integer-valued noise for distributed DP: discrete Gaussian, discrete Laplace, Poisson, Skellam.

Every sampler draws *only* from an :class:`~securefed.primitives.rng.Entropy` (uniform floats with
53 random bits via ``uniform_float64``), never from a seeded library RNG: the noise is secret.

Approach (vectorised rejection, numpy): draw a batch of candidates for all still-missing outputs at
once, keep the accepted ones, repeat for the rest. Each pass costs a few array operations, so ~1e6
coordinates take well under a second (``benchmarks/privacy`` is not needed for that: see the test).

- Discrete Laplace Lap_Z(t), P(y) ∝ exp(−|y|/t): the difference of two i.i.d. geometric variables with
  ratio e^{−1/t}, each drawn by inversion G = ⌊−t·ln U⌋, U ∈ (0, 1].
- Discrete Gaussian N_Z(0, σ²), P(y) ∝ exp(−y²/(2σ²)): Canonne, Kamath, Steinke 2020, "The Discrete
  Gaussian for Differential Privacy", Algorithm 3 — propose Y ~ Lap_Z(t) with t = ⌊σ⌋ + 1 and accept
  with probability exp(−(|Y| − σ²/t)² / (2σ²)). The algorithm is exact; this implementation evaluates
  the acceptance probabilities in float64 (as TensorFlow Privacy's sampler does) rather than in exact
  rational arithmetic, so the output law is exact up to ~2^-53 relative error per step.
- Poisson(λ): inversion by sequential search for λ < 10, and for λ ≥ 10 the PTRS transformed-rejection
  method of Hörmann 1993 ("The transformed rejection method for generating Poisson random variables",
  Insurance: Mathematics and Economics 12), the same method numpy uses — again evaluated in float64.
- Skellam with variance μ: Poisson(μ/2) − Poisson(μ/2) (Agarwal, Kairouz, Liu 2021, §3).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln

from securefed.primitives.rng import Entropy, uniform_float64

__all__ = ["discrete_laplace", "discrete_gaussian", "poisson", "skellam"]


def _check(n: int, param: float, name: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError("n must be an int")
    if n < 0:
        raise ValueError("n must be >= 0")
    if not isinstance(param, (int, float)) or isinstance(param, bool):
        raise TypeError(f"{name} must be a number")
    if not math.isfinite(param) or param < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {param}")


def _uniform_open(entropy: Entropy, n: int) -> np.ndarray:
    """Uniform floats in (0, 1] (safe to take the log of)."""
    return 1.0 - uniform_float64(entropy, n)


def discrete_laplace(entropy: Entropy, n: int, t: float) -> np.ndarray:
    """``n`` i.i.d. draws with P(y) ∝ exp(−|y|/t) over the integers, int64, shape (n,)."""
    _check(n, t, "t")
    if t == 0:
        return np.zeros(n, dtype=np.int64)
    # P(⌊−t ln U⌋ ≥ k) = P(U ≤ e^{−k/t}) = e^{−k/t}: a geometric variable with ratio e^{−1/t}
    g = np.floor(-t * np.log(_uniform_open(entropy, 2 * n))).astype(np.int64)
    return g[:n] - g[n:]


def discrete_gaussian(entropy: Entropy, n: int, sigma: float) -> np.ndarray:
    """``n`` i.i.d. draws from N_Z(0, σ²) (CKS 2020 Algorithm 3), int64, shape (n,).

    Note Var[N_Z(0, σ²)] ≤ σ² (CKS 2020 Prop. 19), with equality up to e^{−2π²σ²} for σ ≳ 1.
    """
    _check(n, sigma, "sigma")
    out = np.zeros(n, dtype=np.int64)
    if sigma == 0 or n == 0:
        return out
    t = math.floor(sigma) + 1
    s2 = float(sigma) ** 2
    filled = 0
    while filled < n:
        need = n - filled
        m = int(need * 1.6) + 16  # acceptance rate is ≥ ~0.6 for every σ, so one or two passes
        y = discrete_laplace(entropy, m, float(t))
        u = uniform_float64(entropy, m)
        accept = u < np.exp(-((np.abs(y) - s2 / t) ** 2) / (2.0 * s2))
        got = y[accept][:need]
        out[filled : filled + got.size] = got
        filled += got.size
    return out


def _poisson_small(entropy: Entropy, n: int, lam: float) -> np.ndarray:
    """Inversion by sequential search (λ < 10): smallest k with F(k) ≥ U."""
    u = uniform_float64(entropy, n)
    k = np.zeros(n, dtype=np.int64)
    p = math.exp(-lam)
    cdf = p
    j = 0
    active = u >= cdf
    while active.any() and j < 1000:  # F(1000) = 1 to double precision for λ < 10
        j += 1
        p *= lam / j
        k += active
        cdf += p
        active &= u >= cdf
    return k


def _log_poisson_pmf(k: np.ndarray, lam: float) -> np.ndarray:
    """log P(K = k) for K ~ Poisson(λ), accurate also for λ ~ 1e16 (where −λ + k ln λ − ln k! cancels).

    For k ≥ 10: with x = k − λ, log p = x − k·log1p(x/λ) − ½ln(2πk) − (1/(12k) − 1/(360k³) + 1/(1260k⁵))
    (Stirling series for ln k!, error < 1e-12), every term of moderate size.
    """
    k = k.astype(np.float64)
    kk = np.maximum(k, 10.0)
    x = kk - lam
    stable = x - kk * np.log1p(x / lam) - 0.5 * np.log(2 * math.pi * kk) - (1 / (12 * kk) - 1 / (360 * kk**3) + 1 / (1260 * kk**5))
    direct = -lam + np.maximum(k, 0) * math.log(lam) - gammaln(np.maximum(k, 0) + 1)
    return np.where(k >= 10, stable, direct)


def _poisson_ptrs(entropy: Entropy, n: int, lam: float) -> np.ndarray:
    """PTRS of Hörmann 1993 (λ ≥ 10), vectorised over the outputs still missing.

    The candidate is formed as ⌊λ⌋ + an offset of moderate size, so it stays exact in int64 even
    where float64 cannot hold λ + 0.43 to integer precision (λ ≳ 2^52).
    """
    slam = math.sqrt(lam)
    lam_int = math.floor(lam)
    lam_frac = lam - lam_int
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    out = np.zeros(n, dtype=np.int64)
    filled = 0
    while filled < n:
        need = n - filled
        m = int(need * 1.15) + 16  # PTRS accepts ≥ ~0.9 of candidates for λ ≥ 10
        uv = uniform_float64(entropy, 2 * m)
        u = uv[:m] - 0.5
        v = uv[m:]
        us = 0.5 - np.abs(u)
        off = np.floor((2 * a / np.maximum(us, 1e-300) + b) * u + lam_frac + 0.43)  # k − ⌊λ⌋
        k = lam_int + off.astype(np.int64)
        quick = (us >= 0.07) & (v <= vr)
        valid = (k >= 0) & ~((us < 0.013) & (v > us))
        with np.errstate(divide="ignore", invalid="ignore"):
            lhs = np.log(np.maximum(v, 1e-300)) + math.log(invalpha) - np.log(a / (us * us) + b)
            rhs = _log_poisson_pmf(k, lam)
        accept = quick | (valid & (lhs <= rhs))
        got = k[accept][:need]
        out[filled : filled + got.size] = got
        filled += got.size
    return out


def poisson(entropy: Entropy, n: int, lam: float) -> np.ndarray:
    """``n`` i.i.d. Poisson(λ) draws, int64, shape (n,)."""
    _check(n, lam, "lam")
    if lam == 0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    return _poisson_small(entropy, n, float(lam)) if lam < 10 else _poisson_ptrs(entropy, n, float(lam))


def skellam(entropy: Entropy, n: int, variance: float) -> np.ndarray:
    """``n`` i.i.d. symmetric Skellam draws with the given variance μ: Poisson(μ/2) − Poisson(μ/2)."""
    _check(n, variance, "variance")
    half = float(variance) / 2.0
    return poisson(entropy, n, half) - poisson(entropy, n, half)
