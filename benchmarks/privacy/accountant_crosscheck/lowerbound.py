"""Lower bounds on the TRUE ε of a Gaussian sum under a given pair of output distributions (1-D mixtures).

For the pair (P, Q) of mixtures of unit-variance-scaled Gaussians, the privacy loss L = log p/q is evaluated on
a fine x grid; each cell's mass under P is put at the *smallest* L on the cell (optimistic rounding, so every
hockey-stick divergence is under-estimated), tails beyond ±W are dropped, and dp-accounting composes the
rounded PMF (optimistic truncation). Hence the ε returned is ≤ the true ε of the pair, and the pair is one
neighbouring pair of the mechanism: a lower bound on the mechanism's true ε.
"""
import math
import numpy as np
from scipy.special import logsumexp, log_ndtr
from scipy.stats import norm
from dp_accounting.pld.privacy_loss_distribution import PrivacyLossDistribution


def _logpdf_mix(x, means, weights, s):
    lw = np.log(np.asarray(weights, dtype=np.float64))
    comps = np.stack([lw[i] + norm.logpdf(x, loc=m, scale=s) for i, m in enumerate(means)])
    return logsumexp(comps, axis=0)


def pair_pld(p_means, p_w, q_means, q_w, s, interval=1e-3, ncell=400_000):
    """Optimistic (lower) PLD of L = log p/q under P."""
    lo = min(min(p_means), min(q_means)) - 40 * s
    hi = max(max(p_means), max(q_means)) + 40 * s
    edges = np.linspace(lo, hi, ncell + 1)
    # mass of each cell under P (cdf differences, exact)
    cdf = sum(w * norm.cdf(edges, loc=m, scale=s) for m, w in zip(p_means, p_w))
    mass = np.diff(cdf)
    mass = np.clip(mass, 0, None)
    Ledge = _logpdf_mix(edges, p_means, p_w, s) - _logpdf_mix(edges, q_means, q_w, s)
    mids = 0.5 * (edges[:-1] + edges[1:])
    Lmid = _logpdf_mix(mids, p_means, p_w, s) - _logpdf_mix(mids, q_means, q_w, s)
    Lmin = np.minimum(np.minimum(Ledge[:-1], Ledge[1:]), Lmid)  # L is smooth; the cell is tiny
    # guard against non-monotone cells: shave a little more (still a lower bound)
    Lmin = Lmin - np.abs(Ledge[1:] - Ledge[:-1]) * 0.01
    k = np.floor(Lmin / interval).astype(np.int64)
    keep = mass > 0
    ks, inv = np.unique(k[keep], return_inverse=True)
    probs = np.bincount(inv, weights=mass[keep])
    pmf = {int(a): float(b) for a, b in zip(ks, probs) if b > 0}
    return PrivacyLossDistribution.create_from_rounded_probability(pmf, 0.0, interval, pessimistic_estimate=False)


def lower_eps(pld, T, deltas):
    comp = pld.self_compose(T, tail_mass_truncation=1e-15) if T > 1 else pld
    return [comp.get_epsilon_for_delta(d) for d in deltas]


def wor_pm_pair(q, sigma):
    """Replace-one, sampling without replacement, sum of C-clipped values (C = 1), others zero:
    P = q N(+1, σ²) + (1−q) N(0, σ²),  Q = q N(−1, σ²) + (1−q) N(0, σ²)."""
    if q >= 1:
        return [1.0], [1.0], [-1.0], [1.0]
    return [1.0, 0.0], [q, 1 - q], [-1.0, 0.0], [q, 1 - q]
