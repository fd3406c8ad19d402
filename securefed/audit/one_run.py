"""One-run privacy audit with canary clients (Steinke, Nasr, Jagielski, NeurIPS 2023 "Privacy Auditing
with One (1) Training Run"; canary clients with a cosine/projection statistic as in Andrew et al., ICLR
2024 "One-shot Empirical Privacy Estimation for Federated Learning").

m canary holders are drawn; each is included in the run independently with probability ½. A canary
holder's update is C·u_c, u_c a random unit direction in R^P (nearly orthogonal to everything else).
The run releases, each round, the decoded secure sum of all participants (real clip → DP encoder →
ring → decoder of securefed.privacy). The auditor scores each canary by ⟨Σ_r release_r, u_c⟩, guesses
"in" for the k highest and "out" for the k lowest, and counts correct guesses v out of r = 2k.

Bound (SNJ 2023, Thm. 3.1 for pure ε; the δ term is handled conservatively by p ≤ p_ε + δ): under
(ε, δ)-DP w.r.t. one holder (add/remove), v is stochastically dominated by Binomial(r, p_ε + δ),
p_ε = e^ε/(1+e^ε). The reported ε_lo is the largest ε with P[Binomial(r, p_ε+δ) ≥ v] ≤ β/|K|, maximised
over a fixed grid K of guess counts (Bonferroni), i.e. it holds with confidence 1 − β.
Ring sums are added directly (Σ_i y_i mod 2^k): secure aggregation returns exactly that sum
(tests/secagg), and running SecAgg with hundreds of parties would only cost time.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import binom

from securefed.primitives.rng import DeterministicEntropy

__all__ = ["snj_lower_bound", "OneRunResult", "one_run_audit"]


def snj_lower_bound(correct: int, guesses: int, *, beta: float, delta: float = 0.0) -> float:
    """Largest ε such that P[Binomial(guesses, e^ε/(1+e^ε) + δ) ≥ correct] ≤ beta (0 if none)."""
    if guesses <= 0 or not 0 <= correct <= guesses:
        raise ValueError("need 0 <= correct <= guesses and guesses >= 1")
    if not 0 < beta < 1:
        raise ValueError("beta must be in (0, 1)")

    def tail(eps: float) -> float:
        p = min(1.0, math.exp(eps) / (1.0 + math.exp(eps)) + delta)
        return float(binom.sf(correct - 1, guesses, p))  # P[X >= correct]

    if tail(0.0) > beta:
        return 0.0
    lo, hi = 0.0, 50.0
    for _ in range(80):  # tail(ε) increases with ε: bisect for the crossing
        mid = (lo + hi) / 2
        if tail(mid) <= beta:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class OneRunResult:
    mode: str
    target_epsilon: float | None
    accountant_epsilon: float
    delta: float
    epsilon_lower_bound: float
    confidence: float
    canaries: int
    included: int
    rounds: int
    dim: int
    best_guesses: int
    best_correct: int
    mean_score_in: float
    mean_score_out: float


def one_run_audit(*, mode: str, target_epsilon: float | None = None, canaries: int = 200, dim: int = 4096,
                  rounds: int = 3, background: int = 8, beta: float = 0.05, delta: float = 1e-5,
                  seed: int = 0, guess_grid: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5)) -> OneRunResult:
    """Run the canary-client audit through securefed's privacy encoders; ``mode`` none|central|distributed."""
    from securefed.privacy import DPConfig, PrivacySession

    rng = np.random.default_rng(seed)
    u = rng.standard_normal((canaries, dim)).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)                   # (m, P) unit canary directions
    included = rng.random(canaries) < 0.5
    bg = rng.standard_normal((background, dim)).astype(np.float32)  # ordinary holders: other directions
    bg /= np.linalg.norm(bg, axis=1, keepdims=True)
    ids_in = [int(c) + 1 for c in np.flatnonzero(included)]
    ids_bg = list(range(canaries + 1, canaries + background + 1))
    cohort = ids_in + ids_bg
    if mode == "none":
        cfg = DPConfig(mode="none", clip=1.0)
    elif mode == "central":
        cfg = DPConfig(mode="central", mechanism="gaussian", clip=1.0, target_epsilon=target_epsilon, delta=delta)
    else:
        cfg = DPConfig(mode="distributed", mechanism="ddgauss", clip=1.0, target_epsilon=target_epsilon, delta=delta)
    total = np.zeros(dim, dtype=np.float64)
    with tempfile.TemporaryDirectory() as tmp:
        # q = 1 under Poisson sampling: add/remove neighbours, no amplification — the relation SNJ audits
        sess = PrivacySession(cfg, population=len(cohort), cohort_size=len(cohort), rounds_planned=rounds,
                              sampling="poisson", ledger_dir=Path(tmp))
        for r in range(rounds):
            rp = sess.begin_round(r, cohort=cohort, dim=dim)
            ring_sum, infos = None, {}
            for h in cohort:
                vec = u[h - 1] if h <= canaries else bg[h - canaries - 1]
                y, infos[h] = rp.encode(h, vec, DeterministicEntropy.from_int(seed * 1_000_003 + r * 100_003 + h))
                ring_sum = y.copy() if ring_sum is None else np.add(ring_sum, y, out=ring_sum)
            rp.ring.reduce(ring_sum)
            total += rp.decode(ring_sum, survivors=cohort, entropy=DeterministicEntropy.from_int(seed + 17 * r + 1))
            rp.finish(survivors=cohort, clip_infos=infos)
        eps_acc = sess.epsilon_spent()[0] if cfg.dp_on else math.inf
    scores = u.astype(np.float64) @ total                              # (m,) projection statistic
    order = np.argsort(-scores)
    best = (0.0, 0, 0)
    for frac in guess_grid:
        k = max(1, int(frac * canaries / 2))
        correct = int(included[order[:k]].sum() + (~included[order[-k:]]).sum())
        eps = snj_lower_bound(correct, 2 * k, beta=beta / len(guess_grid), delta=delta)
        if eps >= best[0]:
            best = (eps, 2 * k, correct)
    return OneRunResult(mode, target_epsilon, float(eps_acc), delta, best[0], 1 - beta, canaries, len(ids_in), rounds,
                        dim, best[1], best[2], float(scores[included].mean()), float(scores[~included].mean()))
