"""Pure Rényi-DP math: per-mechanism RDP curves, subsampling amplification, conversion to (ε, δ).

No state and no I/O (the accountant composes; the ledger stores). All curves are evaluated on the
fixed order grid :data:`ORDERS`; composition is addition of curves (Mironov 2017, Prop. 1).

Mechanisms, each for ONE release, sensitivities in the units of the noise:
- Gaussian with Poisson sampling: Mironov, Talwar, Zhang 2019 (sampled Gaussian mechanism), computed
  by Opacus' ``compute_rdp``. Without replacement (replace-one): Wang, Balle, Kasiviswanathan 2019,
  Thm. 27, with its forward differences in exact arithmetic (mpmath; :func:`wor_gaussian_rdp`).
- Sum of n discrete Gaussians N_Z(0, σ²) (distributed discrete Gaussian): Kairouz, Liu, Steinke 2021,
  arXiv:2102.06387 Proposition 14 (Thm. 1 is its zCDP corollary):
      D_α ≤ min{ αΔ₂²/(2nσ²) + τd,  (α/2)(Δ₂²/(nσ²) + 2Δ₁τ/(√n σ) + τ²d),  (α/2)(Δ₂/(√n σ) + τ√d)² },
      τ = 10 Σ_{k=1}^{n−1} exp(−2π²σ² k/(k+1)),  valid for σ ≥ 1/2.
- Skellam with variance μ: Agarwal, Kairouz, Liu 2021 (NeurIPS), Thm. 3.5 / Cor. 3.6, integer α > 1:
      ε(α) ≤ αΔ₂²/(2μ) + min{ ((2α−1)Δ₂² + 6Δ₁)/(4μ²), 3Δ₁/(2μ) }.
- Poisson subsampling of any mechanism (add/remove): Zhu & Wang 2019 (ICML), Thm. 6 general upper
  bound, integer α ≥ 2.
- Sampling without replacement of any mechanism (replace-one): Wang, Balle, Kasiviswanathan 2019
  (AISTATS), Thm. 9 with ε(∞) = ∞, integer α ≥ 2.
Conversion RDP → (ε, δ): Canonne, Kamath, Steinke 2020 Prop. 12 / Asoodeh et al. 2020 (Opacus'
``get_privacy_spent``).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, Sequence

import numpy as np
from scipy.special import gammaln, logsumexp

__all__ = [
    "ORDERS",
    "gaussian_rdp",
    "poisson_gaussian_rdp",
    "wor_gaussian_rdp",
    "ddgauss_tau",
    "ddgauss_rdp",
    "skellam_rdp",
    "poisson_subsampled_rdp",
    "wor_subsampled_rdp",
    "eps_from_rdp",
    "clamp_epsilon",
]

# fractional orders help large ε; integers up to 256 serve small ε and the integer-only bounds
ORDERS: tuple[float, ...] = (1.05, 1.1, 1.25, 1.5, 1.75) + tuple(float(a) for a in range(2, 257))

RdpFn = Callable[[float], float]


def _orders(orders: Sequence[float] | None) -> np.ndarray:
    return np.asarray(ORDERS if orders is None else orders, dtype=np.float64)


def gaussian_rdp(noise_multiplier: float, orders: Sequence[float] | None = None) -> np.ndarray:
    """Gaussian mechanism, no sampling: α / (2 z²) with z = noise std / L2 sensitivity."""
    a = _orders(orders)
    if noise_multiplier == 0:
        return np.full_like(a, np.inf)
    return a / (2.0 * noise_multiplier**2)


def poisson_gaussian_rdp(q: float, noise_multiplier: float, orders: Sequence[float] | None = None) -> np.ndarray:
    """Sampled Gaussian mechanism (Mironov et al. 2019) through Opacus ``compute_rdp`` (add/remove)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    a = _orders(orders)
    if q >= 1.0:
        return gaussian_rdp(noise_multiplier, a)
    return np.asarray(compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=1, orders=list(a)), dtype=np.float64)


def wor_gaussian_rdp(q: float, noise_multiplier: float, orders: Sequence[float] | None = None) -> np.ndarray:
    """Gaussian with sampling without replacement (replace-one): Wang, Balle, Kasiviswanathan 2019, Thm. 27,
    integer orders (others -> inf), with the forward differences computed exactly (:func:`_log_even_diffs`).

    ``noise_multiplier`` z is relative to the replace-one sensitivity (2C for a sum of C-clipped vectors), so the
    unsampled curve is ε(α) = α/(2z²). For integer α ≥ 2, with φ(ℓ) = e^{(ℓ−1)ε(ℓ)} = e^{ℓ(ℓ−1)/(2z²)}:

        ε'(α) ≤ 1/(α−1) · log[ 1 + q² C(α,2) min{4(e^{ε(2)} − 1), 2e^{ε(2)}}
                                + Σ_{j=3}^{α} q^j C(α,j) min{4 √(Δ^{2⌊j/2⌋}φ(0) · Δ^{2⌈j/2⌉}φ(0)), 2e^{(j−1)ε(j)}} ]

    (the j ≥ 3 terms of Thm. 9 are the second argument of each min; Thm. 27 holds for the Gaussian, whose φ has
    non-negative even forward differences). Minimum with the unsampled curve, which bounds any q. dp-accounting
    computes the same bound (``_compute_rdp_sample_wor_gaussian``) with the differences in float64, where they
    lose every digit at z ≳ 16 (Δ^{32}φ(0) at z = 32: e^{−68.9} exactly, e^{−17.8} in float64): its value is
    sound there but looser, and ours equals it where its differences are accurate (tests/privacy).
    """
    a = _orders(orders)
    if noise_multiplier == 0:
        return np.full_like(a, np.inf)
    z = float(noise_multiplier)
    base = a / (2.0 * z * z)
    if q >= 1.0:
        return base
    out = np.full_like(a, np.inf)
    ints = [int(x) for x in a if x == math.floor(x) and x >= 2]
    if not ints:
        return out
    top = max(ints)
    top_even = top + (top % 2)
    ld = _log_even_diffs(z, top_even)           # ld[k] = log Δ^{2k} φ(0)
    lq = math.log(q)
    log_m2 = _log_second_term(1.0 / (z * z))    # ε(2) = 1/z²
    js = np.arange(3, top + 1, dtype=np.int64)
    # the j-th term without q^j C(α, j): min{log 4 + (ld[⌊j/2⌋] + ld[⌈j/2⌉])/2, log 2 + (j−1)ε(j)}
    core = np.minimum(math.log(4.0) + 0.5 * (ld[js // 2] + ld[(js + 1) // 2]),
                      math.log(2.0) + (js - 1) * js / (2.0 * z * z))
    for i, x in enumerate(a):
        if x != math.floor(x) or x < 2:
            continue
        al = int(x)
        terms = [0.0, 2 * lq + float(_log_comb(al, np.array(2.0))) + log_m2]
        if al >= 3:
            j = js[: al - 2]
            terms.extend(list(core[: al - 2] + j * lq + _log_comb(al, j.astype(np.float64))))
        out[i] = min(float(logsumexp(terms)) / (al - 1), float(base[i]))
    return out


@functools.lru_cache(maxsize=256)
def _log_even_diffs(z: float, n: int) -> np.ndarray:
    """log Δ^{2k} φ(0) for k = 0..n/2, φ(ℓ) = exp(ℓ(ℓ−1)/(2z²)), Δ the forward difference, in exact arithmetic.

    Δ^j φ(0) = Σ_i (−1)^{j−i} C(j, i) φ(i) cancels terms as large as 2^j·φ(j) down to a value that at large z is
    near (2z²)^{−j/2}. The difference table's rounding error at level j is below j·2^j·max φ·10^{−digits}; the
    digits are raised until that is 10^{−20} of every even difference, so the logs are exact to float64. Even
    differences of φ are positive: φ(ℓ) = e^{−1/(8z²)} e^{(ℓ−½)²/(2z²)}, whose even derivatives are positive
    everywhere, and Δ^{2k}φ(0) = φ^{(2k)}(ξ) for some ξ (the mean-value form of a forward difference)."""
    import mpmath

    log10_phi = [m * (m - 1) / (2.0 * z * z) / math.log(10.0) for m in range(n + 1)]
    digits = 40 + math.ceil(n * math.log10(2.0) + (n / 2.0) * max(0.0, math.log10(2.0 * z * z)))
    for _ in range(6):
        with mpmath.workdps(digits):
            two_z2 = 2 * mpmath.mpf(z) ** 2
            row = [mpmath.exp(mpmath.mpf(m * (m - 1)) / two_z2) for m in range(n + 1)]
            out, need = np.empty(n // 2 + 1), 0.0
            out[0] = 0.0                                      # Δ^0 φ(0) = φ(0) = 1
            for j in range(1, n + 1):
                row = [row[i + 1] - row[i] for i in range(len(row) - 1)]
                if j % 2 == 0:
                    if row[0] <= 0:        # impossible for exact values (see above): more digits, or refuse
                        need = math.inf
                        break
                    lg = float(mpmath.log10(row[0]))
                    # max φ over 0..j is φ(j) (φ(0) = φ(1) = 1, increasing after)
                    need = max(need, math.log10(j) + j * math.log10(2.0) + log10_phi[j] - lg + 20)
                    out[j // 2] = lg * math.log(10.0)
        if need <= digits:
            out.setflags(write=False)
            return out
        digits = int(min(max(2 * digits, need + 20), 1e6)) if math.isfinite(need) else 2 * digits
    raise ArithmeticError(f"the forward differences of WBK Thm. 27 at z = {z} did not converge")


def ddgauss_tau(sigma: float, n: int) -> float:
    """τ of KLS 2021 Thm. 1: 10 Σ_{k=1}^{n−1} exp(−2π²σ² k/(k+1))."""
    k = np.arange(1, n, dtype=np.float64)
    return float(10.0 * np.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1)).sum())


def ddgauss_rdp(*, l1: float, l2: float, sigma: float, n: int, dim: int, orders: Sequence[float] | None = None) -> np.ndarray:
    """RDP of Σ_{i≤n} N_Z(0, σ²)^d added to an integer query (KLS 2021 Prop. 14)."""
    if sigma < 0.5:
        raise ValueError(f"KLS 2021 Prop. 14 needs a per-share discrete Gaussian sigma >= 1/2, got {sigma}")
    if n < 1:
        raise ValueError("n (number of noise shares) must be >= 1")
    a = _orders(orders)
    tau = ddgauss_tau(sigma, n)
    r = l2**2 / (n * sigma**2)
    s = math.sqrt(n) * sigma
    b1 = a * r / 2.0 + tau * dim
    b2 = a / 2.0 * (r + 2.0 * l1 * tau / s + tau**2 * dim)
    b3 = a / 2.0 * (l2 / s + tau * math.sqrt(dim)) ** 2
    return np.minimum(np.minimum(b1, b2), b3)


def skellam_rdp(*, l1: float, l2: float, variance: float, orders: Sequence[float] | None = None) -> np.ndarray:
    """RDP of Skellam noise with the given variance μ (AKL 2021 Thm. 3.5); non-integer orders -> inf."""
    if variance <= 0:
        raise ValueError("Skellam variance must be > 0")
    a = _orders(orders)
    mu = float(variance)
    extra = np.minimum(((2 * a - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu))
    out = a * l2**2 / (2 * mu) + extra
    return np.where(a == np.floor(a), out, np.inf)


def _log_comb(n: int, k: np.ndarray) -> np.ndarray:
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def poisson_subsampled_rdp(base: RdpFn, q: float, orders: Sequence[float] | None = None) -> np.ndarray:
    """Zhu & Wang 2019 Thm. 6 (general upper bound, add/remove), integer orders; others -> inf.

    ε'(α) ≤ 1/(α−1) · log[ (1−q)^{α−1}(αq − q + 1) + C(α,2) q² (1−q)^{α−2} e^{ε(2)}
                            + 3 Σ_{l=3}^{α} C(α,l) q^l (1−q)^{α−l} e^{(l−1)ε(l)} ]
    The unsampled curve is also a bound, so the minimum of the two is returned.
    """
    a_all = _orders(orders)
    out = np.full_like(a_all, np.inf)
    if q >= 1.0:
        return np.array([base(float(a)) for a in a_all])
    lq, l1q = math.log(q), math.log1p(-q)
    top = int(max(a_all))
    eps_int = {l: base(float(l)) for l in range(2, top + 1)}
    for i, a in enumerate(a_all):
        if a != math.floor(a) or a < 2:
            continue
        al = int(a)
        terms = [(al - 1) * l1q + math.log(al * q - q + 1), float(_log_comb(al, np.array(2.0))) + 2 * lq + (al - 2) * l1q + eps_int[2]]
        ls = np.arange(3, al + 1)
        if ls.size:
            e = np.array([eps_int[int(l)] for l in ls])
            terms.extend(list(math.log(3) + _log_comb(al, ls.astype(np.float64)) + ls * lq + (al - ls) * l1q + (ls - 1) * e))
        out[i] = min(float(logsumexp(terms)) / (al - 1), eps_int[al])
    return out


def wor_subsampled_rdp(base: RdpFn, q: float, orders: Sequence[float] | None = None) -> np.ndarray:
    """Wang, Balle, Kasiviswanathan 2019 Thm. 9 with ε(∞) = ∞ (replace-one), integer orders.

    ε'(α) ≤ 1/(α−1) · log[ 1 + q² C(α,2) min{4(e^{ε(2)} − 1), 2e^{ε(2)}} + Σ_{j=3}^{α} 2 q^j C(α,j) e^{(j−1)ε(j)} ]
    ``base`` must be the curve under replace-one sensitivity. Minimum with the unsampled curve.
    """
    a_all = _orders(orders)
    out = np.full_like(a_all, np.inf)
    if q >= 1.0:
        return np.array([base(float(a)) for a in a_all])
    lq = math.log(q)
    top = int(max(a_all))
    eps_int = {l: base(float(l)) for l in range(2, top + 1)}
    log_m2 = _log_second_term(eps_int[2])
    for i, a in enumerate(a_all):
        if a != math.floor(a) or a < 2:
            continue
        al = int(a)
        terms = [0.0, 2 * lq + float(_log_comb(al, np.array(2.0))) + log_m2]
        js = np.arange(3, al + 1)
        if js.size:
            e = np.array([eps_int[int(j)] for j in js])
            terms.extend(list(math.log(2.0) + js * lq + _log_comb(al, js.astype(np.float64)) + (js - 1) * e))
        out[i] = min(float(logsumexp(terms)) / (al - 1), eps_int[al])
    return out


def _log_second_term(e2: float) -> float:
    """log min{4(e^{ε(2)} − 1), 2e^{ε(2)}}, the j = 2 term of WBK 2019 Thms. 9 and 27: expm1 for small ε(2);
    log(e^{ε2} − 1) = ε2 + log(1 − e^{−ε2}) for large ε(2), where e^{ε2} overflows a float (σ ≲ 0.075, which
    calibration's first probe at σ = 0.05 reaches)."""
    log_em1 = (math.log(math.expm1(e2)) if e2 < 1.0 else e2 + math.log1p(-math.exp(-e2))) if e2 > 0 else -math.inf
    return min(math.log(4.0) + log_em1, math.log(2.0) + e2)


def eps_from_rdp(rdp: np.ndarray, delta: float, orders: Sequence[float] | None = None) -> tuple[float, float]:
    """(ε, best order) at δ from a composed RDP curve (Opacus ``get_privacy_spent``)."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    a = _orders(orders)
    rdp = np.asarray(rdp, dtype=np.float64)
    if not np.isfinite(rdp).any():
        return math.inf, float("nan")
    if np.all(rdp == 0):  # nothing released: ε = 0 (Opacus' conversion would add a positive offset)
        return 0.0, float("nan")
    finite = np.isfinite(rdp)
    with warnings.catch_warnings():  # Opacus warns when the best order is at an end of the grid
        warnings.simplefilter("ignore", UserWarning)
        eps, best = get_privacy_spent(orders=list(a[finite]), rdp=list(rdp[finite]), delta=delta)
    # (ε, δ)-DP is stated for ε ≥ 0: at a large δ a tiny curve converts to ε < 0 (σ = 1000, δ = 0.2: −0.22), which
    # is below any mechanism's true ε; dp-accounting's conversion clamps at 0 the same way
    return clamp_epsilon(eps), float(best)


def clamp_epsilon(eps: float) -> float:
    """ε < 0 stated as 0 ((ε, δ)-DP is stated for ε ≥ 0); NaN stays NaN — ``max(0.0, nan)`` is 0.0, which would
    state a failed conversion as perfect privacy."""
    eps = float(eps)
    return 0.0 if eps < 0.0 else eps
