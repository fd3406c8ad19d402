"""Is the stated sampling rate plausible? The holders' own ledgers as witnesses (protocols/dp.md §2.1).

The release ε is amplified by the sampling rate q = cohort_size_planned / population, both stated by the
coordinator. One holder cannot check q in one round, but its own signed ledger records every round it was
in a cohort and answered (``refused``, ``released``, ``settled``: protocols/dp.md §7.2). Under honest
sampling at q, holder h is in round r's cohort with probability q_r, so the number of witnessed
memberships T = Σ_h |{r : h witnessed r}| over k holders and R rounds is at most a sum of k·R
Bernoulli(q_r) indicators:

- Poisson sampling: the indicators are independent;
- fixed-size sampling (a uniform m-subset each round): within a round they are negatively associated
  (Joag-Dev & Proschan 1983: permutation distributions are), independent across rounds;
- a witnessed membership implies a sampled one (a holder records nothing for a round it was not offered),
  so T is at most the sum of the sampled indicators: rounds a holder was offered but left no entry for
  (accepted, then the round aborted before its release) only lower T.

For either, the Chernoff–Hoeffding bound holds (Hoeffding 1963, Thm. 1 and its MGF argument; for negatively
associated indicators the MGF of the sum is at most the product of the MGFs, Dubhashi & Ranjan 1998,
"Balls and bins"): for t ≥ E[S],

    P(S ≥ t) ≤ inf_{λ ≥ 0} exp(−λt) · Π_r ((1 − q_r) + q_r·e^λ)^{k}

so a bound below ``ALARM`` has probability below ``ALARM`` under honest sampling, whatever R, k and q
(the bound is ≥ the exact tail; with few rounds it simply cannot get that small: ``min_log_bound`` tells).
Pure functions: no ledger reading here (``verify`` does that).
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["ALARM", "chernoff_log_tail", "min_log_bound", "expected_memberships", "witnessed_memberships"]

# One false alarm in a million honest runs at most (the Chernoff bound overstates the exact tail, so far fewer in
# practice); an inflated population is caught long before: 4 holders each in every one of 3 rounds at a claimed
# q = 2/10,000 give a bound of e^-102.
ALARM = 1e-6


def _check(t: int, rounds: Sequence[tuple[int, float]]) -> None:
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"t must be an int >= 0, got {t!r}")
    for n, q in rounds:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"a round's trial count must be an int >= 0, got {n!r}")
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"a sampling rate must be in [0, 1], got {q!r}")


def _log_mgf(lam: float, rounds: Sequence[tuple[int, float]]) -> float:
    """Σ_r n_r · log((1 − q_r) + q_r·e^λ), stable for large λ (log-sum-exp)."""
    total = 0.0
    for n, q in rounds:
        if n == 0 or q == 0.0:
            continue
        if q == 1.0:
            total += n * lam
            continue
        a, b = math.log1p(-q), math.log(q) + lam
        hi = max(a, b)
        total += n * (hi + math.log(math.exp(a - hi) + math.exp(b - hi)))
    return total


def expected_memberships(rounds: Sequence[tuple[int, float]]) -> float:
    return sum(n * q for n, q in rounds)


def min_log_bound(rounds: Sequence[tuple[int, float]]) -> float:
    """log P(S = every trial) = Σ n_r·log q_r: the smallest value ``chernoff_log_tail`` can return. When it is
    ≥ log ALARM the check cannot fire whatever the ledgers witness (too few rounds or holders: no power)."""
    _check(0, rounds)
    return sum(n * math.log(q) if q > 0 else (-math.inf if n else 0.0) for n, q in rounds)


def chernoff_log_tail(t: int, rounds: Sequence[tuple[int, float]]) -> float:
    """log of the Chernoff bound on P(S ≥ t), S a sum of n_r Bernoulli(q_r) indicators per round r (module doc);
    0.0 when t ≤ E[S] (no evidence of too many memberships), −∞ when t exceeds the number of trials."""
    _check(t, rounds)
    by_rate: dict[float, int] = {}
    for n, q in rounds:            # the bound depends only on how many trials each rate has
        by_rate[q] = by_rate.get(q, 0) + n
    rounds = [(n, q) for q, n in by_rate.items()]
    n_total = sum(n for n, _ in rounds)
    if t > n_total:
        return -math.inf
    if t <= expected_memberships(rounds):
        return 0.0
    if t == n_total:               # λ → ∞: the bound is the exact P(S = n) = Π q_r^{n_r}
        return min_log_bound(rounds)

    def slope(lam: float) -> float:   # d/dλ of log MGF − λt: increasing in λ (the MGF is log-convex)
        s = 0.0
        for n, q in rounds:
            if n and q > 0:
                s += n * q / (q + (1 - q) * math.exp(-lam))
        return s - t

    lo, hi = 0.0, 1.0
    while slope(hi) < 0:          # t < n_total, so the slope becomes positive at a finite λ
        lo, hi = hi, hi * 2
    for _ in range(100):          # bisection: the minimiser of the convex exponent
        mid = 0.5 * (lo + hi)
        if slope(mid) < 0:
            lo = mid
        else:
            hi = mid
    lam = 0.5 * (lo + hi)
    return min(0.0, _log_mgf(lam, rounds) - lam * t)


def witnessed_memberships(server: Sequence[dict], owns: dict[int, Sequence[dict]],
                          holders: frozenset[int] | set[int]) -> tuple[int, list[tuple[int, float]]]:
    """(T, [(k, q_r) per round]) from verified records: T = the distinct (holder, round) pairs that ``holders``'
    own ledgers (``owns``: holder → entries) hold any entry for; the rounds are those of the server ledger and
    every witnessed one, each with its stated ``sampling_rate`` (a round only holders witnessed — the coordinator
    stopped before its entry — gets the largest stated rate: the benefit of the doubt goes to the coordinator).
    A holder in ``holders`` without a ledger counts zero memberships: leaving out the holders that were never
    sampled would make the rest look over-sampled."""
    rates: dict[int, float] = {}
    for e in server:
        rates[int(e["round"])] = max(rates.get(int(e["round"]), 0.0), float(e["sampling_rate"]))
    if not rates:
        return 0, []
    top = max(rates.values())
    seen: set[tuple[int, int]] = set()
    for h in holders:
        for e in owns.get(h, ()):
            seen.add((h, int(e["round"])))
    for _, r in seen:
        rates.setdefault(r, top)
    k = len(holders)
    return len(seen), [(k, q) for _, q in sorted(rates.items())]
