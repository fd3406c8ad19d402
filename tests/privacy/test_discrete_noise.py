"""Statistical tests of the secret-noise samplers (fixed seeds, tolerances of ≥ 5 standard errors)."""

import math
import time

import numpy as np
import pytest
from scipy import stats

from securefed.primitives import discrete_noise as dn
from securefed.primitives.rng import DeterministicEntropy

N = 400_000


def _dgauss_moments(sigma: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Exact variance and pmf of N_Z(0, σ²) by direct summation of exp(−k²/2σ²)."""
    if sigma > 50:  # Var = σ² up to a relative e^{−2π²σ²} (CKS 2020 Prop. 19 and its converse)
        return sigma**2, np.zeros(0), np.zeros(0)
    k = np.arange(-int(40 * sigma) - 10, int(40 * sigma) + 11)
    w = np.exp(-(k.astype(np.float64) ** 2) / (2 * sigma**2))
    p = w / w.sum()
    return float((p * k**2).sum()), k, p


@pytest.mark.parametrize("sigma", [0.5, 1.3, 7.0, 250.0, 1.4e8])
def test_discrete_gaussian_mean_and_variance(sigma):
    x = dn.discrete_gaussian(DeterministicEntropy.from_int(11), N, sigma)
    var, _, _ = _dgauss_moments(sigma)
    assert x.dtype == np.int64 and x.shape == (N,)
    assert abs(x.mean()) < 5 * math.sqrt(var / N)
    # Var of the sample variance ≈ (μ4 − σ⁴)/N ≈ 2σ⁴/N for a near-Gaussian law
    assert abs(x.var() / var - 1) < 5 * math.sqrt(2 / N)


def test_discrete_gaussian_pmf_chi_square():
    sigma = 2.0
    x = dn.discrete_gaussian(DeterministicEntropy.from_int(5), N, sigma)
    _, k, p = _dgauss_moments(sigma)
    keep = p * N > 20
    obs = np.array([(x == v).sum() for v in k[keep]])
    exp = p[keep] * N
    chi2 = ((obs - exp) ** 2 / exp).sum()
    assert chi2 < stats.chi2.ppf(1 - 1e-4, keep.sum() - 1)


@pytest.mark.parametrize("variance", [0.7, 6.0, 40.0, 1e4, 1e9, 1e16, 6e17])
def test_skellam_mean_and_variance(variance):
    x = dn.skellam(DeterministicEntropy.from_int(3), N, variance)
    assert abs(x.mean()) < 5 * math.sqrt(variance / N)
    # Skellam excess kurtosis is 1/μ: Var(s²) ≈ (2σ⁴ + σ²)/N
    assert abs(x.var() / variance - 1) < 5 * math.sqrt((2 + 1 / variance) / N)


@pytest.mark.parametrize("lam", [0.3, 4.0, 10.0, 37.5])
def test_poisson_pmf_chi_square(lam):
    x = dn.poisson(DeterministicEntropy.from_int(9), N, lam)
    k = np.arange(0, int(lam + 12 * math.sqrt(lam) + 10))
    p = stats.poisson.pmf(k, lam)
    keep = p * N > 20
    obs = np.array([(x == v).sum() for v in k[keep]])
    exp = p[keep] * N
    assert ((obs - exp) ** 2 / exp).sum() < stats.chi2.ppf(1 - 1e-4, keep.sum() - 1)


def test_discrete_laplace_law():
    t = 3.0
    x = dn.discrete_laplace(DeterministicEntropy.from_int(1), N, t)
    # P(y) ∝ e^{−|y|/t}: Var = 2r/(1−r)² with r = e^{−1/t}
    r = math.exp(-1 / t)
    assert abs(x.var() / (2 * r / (1 - r) ** 2) - 1) < 0.02


def test_million_coordinates_in_seconds():
    e = DeterministicEntropy.from_int(2)
    t0 = time.perf_counter()
    dn.discrete_gaussian(e, 1_000_000, 1e5)
    dn.skellam(e, 1_000_000, 1e10)
    assert time.perf_counter() - t0 < 6.0


def test_replay_is_deterministic_and_zero_noise_is_zero():
    a = dn.discrete_gaussian(DeterministicEntropy.from_int(4), 1000, 3.0)
    b = dn.discrete_gaussian(DeterministicEntropy.from_int(4), 1000, 3.0)
    assert np.array_equal(a, b)
    assert not dn.discrete_gaussian(DeterministicEntropy.from_int(4), 1000, 0.0).any()


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_bad_parameters_refused(bad):
    e = DeterministicEntropy.from_int(0)
    with pytest.raises(ValueError, match="sigma"):
        dn.discrete_gaussian(e, 10, bad)
    with pytest.raises(ValueError, match="variance"):
        dn.skellam(e, 10, bad)
    with pytest.raises(TypeError, match="n must be an int"):
        dn.poisson(e, 2.5, 1.0)


class _ConstantEntropy:
    """Returns the same byte forever: if the output is constant, the sampler used no other randomness."""

    def random_bytes(self, n):
        return b"\x5a" * n


def test_samplers_draw_only_from_the_entropy():
    state = np.random.get_state()[1].copy()
    a = dn.discrete_gaussian(_ConstantEntropy(), 200, 4.0)
    b = dn.skellam(_ConstantEntropy(), 200, 50.0)
    assert len(set(a.tolist())) == 1 and len(set(b.tolist())) == 1
    assert np.array_equal(state, np.random.get_state()[1])  # numpy's global RNG untouched
