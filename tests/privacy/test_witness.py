"""The sampling-rate plausibility check (securefed/privacy/witness.py, protocols/dp.md §2.1).

The bound must never be below the exact tail (so an alarm is never more likely than ALARM under honest
sampling), honest Poisson and fixed-size sampling must never raise it, and an overstated population must."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from securefed.privacy import witness as W


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 300), q=st.floats(1e-4, 0.9999), frac=st.floats(0, 1))
def test_the_chernoff_bound_is_never_below_the_exact_binomial_tail(n, q, frac):
    t = round(frac * n)
    exact = stats.binom.sf(t - 1, n, q)                 # P(S >= t)
    bound = math.exp(W.chernoff_log_tail(t, [(n, q)]))
    assert bound >= exact * (1 - 1e-9) - 1e-300, (n, q, t, bound, exact)


@settings(max_examples=100, deadline=None)
@given(rounds=st.lists(st.tuples(st.integers(1, 6), st.floats(0.01, 0.99)), min_size=1, max_size=8), frac=st.floats(0, 1))
def test_with_a_rate_per_round_the_bound_covers_the_exact_poisson_binomial_tail(rounds, frac):
    pmf = np.array([1.0])
    for n, q in rounds:                                  # the exact distribution by convolution
        pmf = np.convolve(pmf, stats.binom.pmf(np.arange(n + 1), n, q))
    t = round(frac * (len(pmf) - 1))
    exact = float(pmf[t:].sum())
    assert math.exp(W.chernoff_log_tail(t, rounds)) >= exact * (1 - 1e-9) - 1e-300


def _honest_memberships(rng, *, population, cohort, holders, rounds, sampling) -> int:
    """Memberships the ledgers of ``holders`` of the population witness under honest sampling."""
    if sampling == "poisson":   # each holder independently at q in every round
        return int(rng.binomial(holders * rounds, cohort / population))
    # fixed: a uniform cohort-subset per round; how many of the k witnessed holders it holds is hypergeometric
    return int(rng.hypergeometric(holders, population - holders, cohort, size=rounds).sum())


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
@pytest.mark.parametrize("population,cohort,holders,rounds", [
    (4, 1, 4, 3), (4, 2, 4, 200), (6, 4, 6, 50), (100, 10, 100, 500), (100, 10, 7, 1000), (10_000, 100, 50, 2000),
    (20, 19, 20, 100)])
def test_honest_sampling_never_raises_the_alarm_and_its_p_values_are_conservative(sampling, population, cohort, holders,
                                                                                 rounds):
    """2,000 honest runs of each shape: no alarm (each has probability ≤ 10⁻⁶), and the bound is a valid p-value
    at a level where it must sometimes fire: at most 5 % of runs fall below 0.05 (binomial slack: 8 %)."""
    rng = np.random.default_rng([population, cohort, holders, rounds, sampling == "fixed"])
    trials = [(holders, cohort / population)] * rounds
    logs = [W.chernoff_log_tail(_honest_memberships(rng, population=population, cohort=cohort, holders=holders,
                                                    rounds=rounds, sampling=sampling), trials) for _ in range(2000)]
    assert min(logs) > math.log(W.ALARM)
    assert np.mean(np.array(logs) < math.log(0.05)) <= 0.08


@settings(max_examples=200, deadline=None)
@given(population=st.integers(2, 5000), data=st.data(), rounds=st.integers(1, 400), seed=st.integers(0, 2**32 - 1),
       sampling=st.sampled_from(["poisson", "fixed"]))
def test_property_honest_sampling_of_any_shape_passes(population, data, rounds, seed, sampling):
    cohort = data.draw(st.integers(1, population))
    holders = data.draw(st.integers(1, population))
    t = _honest_memberships(np.random.default_rng(seed), population=population, cohort=cohort, holders=holders,
                            rounds=rounds, sampling=sampling)
    assert W.chernoff_log_tail(t, [(holders, cohort / population)] * rounds) > math.log(W.ALARM)


def test_an_overstated_population_is_flagged_and_a_mild_one_only_given_enough_rounds():
    # the flaw: 4 real holders, each in every cohort, under a claimed population of 10,000 and cohort of 2
    q = 2 / 10_000
    assert W.chernoff_log_tail(4, [(4, q)]) == pytest.approx(4 * math.log(q))        # one round: e^-34
    assert W.chernoff_log_tail(4, [(4, q)]) < math.log(W.ALARM)
    # a rate overstated twofold (half of each cohort claimed as 1 in 4): 50 % memberships at q = 1/4
    mild = [(4, 0.25)]
    assert W.chernoff_log_tail(2 * 3, mild * 3) > math.log(W.ALARM)    # 3 rounds: no evidence yet, no false alarm
    assert W.chernoff_log_tail(2 * 100, mild * 100) < math.log(W.ALARM)   # 100 rounds: 200 of 400, e^-57.5
    # KL(0.5 ‖ 0.25) = ½ ln 2 + ½ ln(2/3) = 0.1438 nats per trial: 400 trials give e^-57.5
    assert W.chernoff_log_tail(200, mild * 100) == pytest.approx(-400 * (0.5 * math.log(2) + 0.5 * math.log(2 / 3)))


def test_tiny_runs_have_no_power_and_the_edges_are_exact():
    assert W.min_log_bound([(4, 0.5)] * 2) == pytest.approx(8 * math.log(0.5))     # -5.5: above log 1e-6
    assert W.min_log_bound([(4, 0.5)] * 2) > math.log(W.ALARM)
    assert W.chernoff_log_tail(0, [(4, 0.5)]) == 0.0 and W.chernoff_log_tail(2, [(4, 0.5)]) == 0.0   # at or below E[S]
    assert W.chernoff_log_tail(5, [(4, 0.5)]) == -math.inf                          # more memberships than chances
    assert W.chernoff_log_tail(4, [(4, 1.0)]) == 0.0                                # full participation: nothing odd
    for bad in ((-1, [(4, 0.5)]), (1, [(4, 1.5)]), (1, [(-2, 0.5)]), (True, [(4, 0.5)])):
        with pytest.raises(ValueError):
            W.chernoff_log_tail(*bad)


def test_witnessed_memberships_counts_distinct_rounds_and_silent_holders_as_zero():
    server = [{"round": 1, "sampling_rate": 0.5}, {"round": 2, "sampling_rate": 0.5}, {"round": 4, "sampling_rate": 0.25}]
    owns = {1: [{"round": 1}, {"round": 1}, {"round": 2}], 2: [{"round": 5}], 9: [{"round": 1}]}
    t, rounds = W.witnessed_memberships(server, owns, {1, 2, 3})
    # (1,1), (1,2), (2,5): holder 1's released+settled of round 1 is one membership; holder 3 (no ledger) counts 0;
    # holder 9 is not among the holders; round 5 has no server entry: the largest stated rate, 0.5
    assert t == 3 and rounds == [(3, 0.5), (3, 0.5), (3, 0.25), (3, 0.5)]
    assert W.witnessed_memberships([], owns, {1}) == (0, [])
