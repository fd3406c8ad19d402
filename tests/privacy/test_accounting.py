"""Accountants: golden values, hand-checked formulas, and the dp-accounting cross-check (within 1%).

Golden values were computed with this code (opacus 1.6.0, dp-accounting 0.6.0) and frozen; the
cross-checks are what make them trustworthy.
"""

import math

import dp_accounting as dpa
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from securefed.privacy import rdp as R
from securefed.privacy.accountant import Accountant, RoundEvent, calibrate_noise_multiplier

DELTA = 1e-5


DPA_ORDERS = [1.05, 1.1, 1.25, 1.5, 1.75] + list(range(2, 65)) + [80, 96, 128, 256]


def _dpa_rdp(event, count, relation=dpa.NeighboringRelation.ADD_OR_REMOVE_ONE):
    acc = RdpAccountant(DPA_ORDERS, neighboring_relation=relation)
    acc.compose(event, count)
    return acc.get_epsilon(DELTA)


@pytest.mark.parametrize("q,sigma,steps", [(0.01, 1.1, 1000), (0.1, 0.8, 50), (1.0, 2.0, 10)])
def test_poisson_gaussian_rdp_matches_dp_accounting(q, sigma, steps):
    ours = Accountant("rdp").epsilon(DELTA, [RoundEvent("gaussian", "poisson", q, sigma)] * steps)
    theirs = _dpa_rdp(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)
    assert ours == pytest.approx(theirs, rel=0.01)


def test_golden_poisson_gaussian():
    # Abadi et al. 2016 style setting: q = 0.01, σ = 1.1, 1000 steps, δ = 1e-5
    assert Accountant().epsilon(DELTA, [RoundEvent("gaussian", "poisson", 0.01, 1.1)] * 1000) == pytest.approx(1.725290818044953, rel=1e-9)


def test_prv_matches_dp_accounting_pld():
    ours = Accountant("prv").epsilon(DELTA, [RoundEvent("gaussian", "poisson", 0.1, 1.0)] * 100)
    pld = PLDAccountant()
    pld.compose(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.0)), 100)
    assert ours == pytest.approx(pld.get_epsilon(DELTA), rel=0.01)


def test_fixed_size_gaussian_matches_dp_accounting_replace_one():
    # replace-one sensitivity of a sum of C-clipped vectors is 2C: σ relative to it is σ/2
    ours = Accountant().epsilon(DELTA, [RoundEvent("gaussian", "fixed", 0.01, 2.2)] * 1000)
    theirs = _dpa_rdp(dpa.SampledWithoutReplacementDpEvent(1000, 10, dpa.GaussianDpEvent(1.1)), 1000,
                      dpa.NeighboringRelation.REPLACE_ONE)
    assert ours == pytest.approx(theirs, rel=0.01)
    # our general WBK Thm. 9 bound applied to the Gaussian agrees with dp-accounting's Thm. 27
    general = R.wor_subsampled_rdp(lambda a: a / (2 * 1.1**2), 0.01)
    assert R.eps_from_rdp(1000 * general, DELTA)[0] == pytest.approx(theirs, rel=0.01)


WBK_ORDERS = [float(a) for a in range(2, 65)]


@pytest.mark.parametrize("q", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("z", [0.5, 1.5, 4.0])
def test_wbk_thm27_equals_dp_accountings_where_its_float64_differences_are_exact(q, z):
    """Scheme /3's fixed-size Gaussian (rdp.wor_gaussian_rdp): the bound dp-accounting computes
    (``_compute_rdp_sample_wor_gaussian``, the unsampled curve's minimum applied to both), per order."""
    from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_sample_wor_gaussian

    ours = R.wor_gaussian_rdp(q, z, WBK_ORDERS)
    theirs = np.minimum(np.asarray(_compute_rdp_sample_wor_gaussian(q, z, WBK_ORDERS)), np.asarray(WBK_ORDERS) / (2 * z * z))
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_wbk_thm27_forward_differences_are_exact_where_float64_loses_every_digit():
    """At z = 32 dp-accounting's float64 differences read Δ^32 φ(0) ≈ e^{−17.8}; exactly it is e^{−68.93}. Ours agree
    with a second exact computation at twice the digits, and so the bound is never above dp-accounting's or Thm. 9's."""
    import mpmath
    from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_sample_wor_gaussian

    z = 32.0
    ld = R._log_even_diffs(z, 64)
    with mpmath.workdps(2000):
        phi = [mpmath.exp(mpmath.mpf(m * (m - 1)) / (2 * mpmath.mpf(z) ** 2)) for m in range(65)]
        for j in (2, 8, 32, 64):
            exact = mpmath.fsum((-1) ** (j - i) * mpmath.binomial(j, i) * phi[i] for i in range(j + 1))
            assert ld[j // 2] == pytest.approx(float(mpmath.log(exact)), rel=1e-12, abs=1e-12)
    assert ld[16] == pytest.approx(-68.9298, abs=1e-4)
    for q in (0.01, 0.1):
        ours = R.wor_gaussian_rdp(q, z, WBK_ORDERS)
        thm9 = R.wor_subsampled_rdp(lambda a: a / (2 * z * z), q, WBK_ORDERS)
        dpa_ = np.asarray(_compute_rdp_sample_wor_gaussian(q, z, WBK_ORDERS))
        # dp-accounting's float64 differences err either way by ~1e-11 where they are still near-exact (q 0.1, α 64:
        # ours 7.1e-12 above theirs with numpy 2.4.6 / scipy 1.17.1); where they lose every digit, ours is far below
        assert np.all(ours <= thm9 * (1 + 1e-12)) and np.all(ours <= dpa_ * (1 + 1e-10))
        assert ours[-1] < 0.5 * thm9[-1]                 # where it matters: high orders at large σ


@pytest.mark.parametrize("q", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("nm", [1.0, 4.0, 16.0, 64.0])
def test_wbk_thm27_is_never_below_the_renyi_divergence_of_the_worst_pair(q, nm):
    """Soundness, independent of any accountant: replace-one, a fixed-size cohort, C = 1, the others' sum 0:
    P = q N(+1, σ²) + (1−q) N(0, σ²) and Q = q N(−1, σ²) + (1−q) N(0, σ²) are neighbouring outputs, so
    D_α(P‖Q) (a numerical integral on a fine grid) is at most the mechanism's RDP at α."""
    from scipy.special import logsumexp
    from scipy.stats import norm

    orders = [2.0, 3.0, 4.0, 8.0, 16.0, 32.0]
    ours = R.wor_gaussian_rdp(q, nm / 2, orders)          # z relative to the replace-one sensitivity 2C
    for a, bound in zip(orders, ours):
        w = 12 * nm + 2 * a / nm * 2 + 4
        x, dx = np.linspace(-w, w, 400_001, retstep=True)
        lp = np.logaddexp(math.log(q) + norm.logpdf(x, 1, nm), math.log1p(-q) + norm.logpdf(x, 0, nm))
        lq = np.logaddexp(math.log(q) + norm.logpdf(x, -1, nm), math.log1p(-q) + norm.logpdf(x, 0, nm))
        d = float(logsumexp(a * lp + (1 - a) * lq) + math.log(dx)) / (a - 1)
        assert d <= bound * (1 + 1e-6) + 1e-12, (a, d, bound)


def test_scheme_2_ledgers_still_recompute_and_a_run_keeps_its_scheme():
    """dp.md §6.5: /3 prices a fixed-size cohort's Gaussian by Thm. 27; a /2 ledger is recomputed by Thm. 9."""
    from securefed.privacy.accountant import ACCOUNTANT_SCHEME, accountant_version, ledger_scheme, scheme_of

    ev = [RoundEvent("gaussian", "fixed", 0.05, 64.0)] * 100
    assert ACCOUNTANT_SCHEME == 3
    old, new = Accountant("rdp", 2).epsilon(DELTA, ev), Accountant("rdp", 3).epsilon(DELTA, ev)
    assert old == pytest.approx(1.26941, abs=1e-4) and new == pytest.approx(0.11088, abs=1e-4)   # RESULTS (A35)
    same = [RoundEvent("gaussian", "fixed", 1.0, 2.0), RoundEvent("ddgauss", "fixed", 0.05, 1.0, l1=5000.0, l2=100.0,
                                                                  share_std=40.0, n_shares=10, dim=1024)]
    assert Accountant("rdp", 2).epsilon(DELTA, same) == Accountant("rdp", 3).epsilon(DELTA, same)
    assert scheme_of(accountant_version("rdp", 2)) == 2 and ledger_scheme([]) == 3
    with pytest.raises(ValueError, match="mixes accountant schemes"):
        ledger_scheme([{"accountant_version": accountant_version("rdp", 2)},
                       {"accountant_version": accountant_version("rdp", 3)}])
    with pytest.raises(ValueError, match="recomputes schemes /2, /3 only"):
        scheme_of("securefed-rdp/1 (opacus 1.6.0, dp-accounting 0.6.0)")


def test_general_poisson_bound_is_valid_and_not_tighter_than_the_exact_gaussian():
    exact = R.eps_from_rdp(1000 * R.poisson_gaussian_rdp(0.01, 1.1), DELTA)[0]
    general = R.eps_from_rdp(1000 * R.poisson_subsampled_rdp(lambda a: a / (2 * 1.1**2), 0.01), DELTA)[0]
    assert exact <= general < 1.3 * exact  # Zhu–Wang Thm. 6 is an upper bound, and a useful one


def test_kls_tau_by_hand():
    # τ = 10 Σ_{k=1}^{9} exp(−2π²·0.25·k/(k+1)) ≈ 10 × 0.23453
    assert R.ddgauss_tau(0.5, 10) == pytest.approx(2.3453253192467702, rel=1e-12)
    assert R.ddgauss_tau(3.0, 1) == 0.0


def test_ddgauss_approaches_the_gaussian_when_tau_vanishes():
    # 10 shares of σ=40 on Δ₂=100: effective z = √10·40/100; τ ≈ 1e-6900, so Prop. 14 ≈ Gaussian RDP
    ddg = R.eps_from_rdp(R.ddgauss_rdp(l1=5000.0, l2=100.0, sigma=40.0, n=10, dim=1024), DELTA)[0]
    gauss = _dpa_rdp(dpa.GaussianDpEvent(math.sqrt(10) * 40 / 100), 1)
    assert ddg == pytest.approx(gauss, rel=0.01)
    assert ddg == pytest.approx(3.627851872825227, rel=1e-9)  # golden


def test_ddgauss_small_sigma_pays_tau():
    # at σ = 1/2 the τ terms dominate: strictly more than the Gaussian-equivalent RDP
    r = R.ddgauss_rdp(l1=4.0, l2=2.0, sigma=0.5, n=10, dim=16, orders=[2.0])
    assert r[0] > 2.0 * 4.0 / (2 * 10 * 0.25)
    with pytest.raises(ValueError, match="1/2"):
        R.ddgauss_rdp(l1=4.0, l2=2.0, sigma=0.49, n=10, dim=16)


def test_skellam_formula_by_hand_and_gaussian_limit():
    # α=2: 2·9/40 + min((3·9+60)/1600, 30/40) = 0.45 + 0.054375;  α=3: 0.675 + 0.065625
    r = R.skellam_rdp(l1=10.0, l2=3.0, variance=20.0, orders=[2.0, 3.0, 2.5])
    assert r[0] == pytest.approx(0.504375) and r[1] == pytest.approx(0.740625) and math.isinf(r[2])
    sk = R.eps_from_rdp(R.skellam_rdp(l1=5000.0, l2=100.0, variance=16000.0), DELTA)[0]
    gauss = _dpa_rdp(dpa.GaussianDpEvent(math.sqrt(16000) / 100), 1)
    assert sk == pytest.approx(gauss, rel=0.01)


def test_golden_composed_discrete_events():
    ddg = RoundEvent("ddgauss", "poisson", 0.05, 1.0, l1=5000.0, l2=100.0, share_std=40.0, n_shares=10, dim=1024)
    assert Accountant().epsilon(DELTA, [ddg] * 50) == pytest.approx(2.5264260310131164, rel=1e-9)
    sk = RoundEvent("skellam", "fixed", 0.05, 1.0, l1=5000.0, l2=100.0, variance=16000.0, dim=1024)
    assert Accountant().epsilon(DELTA, [sk] * 50) == pytest.approx(13.083603691165143, rel=1e-9)


def test_fewer_noise_shares_cost_more():
    full = RoundEvent("ddgauss", "none", 1.0, 1.0, l1=5000.0, l2=100.0, share_std=40.0, n_shares=10, dim=1024)
    short = RoundEvent("ddgauss", "none", 1.0, 1.0, l1=5000.0, l2=100.0, share_std=40.0, n_shares=6, dim=1024)
    assert Accountant().epsilon(DELTA, [short]) > Accountant().epsilon(DELTA, [full]) * 1.2


def test_calibration_hits_the_target_and_matches_dp_accounting():
    def eps(s):
        return Accountant().epsilon(DELTA, [RoundEvent("gaussian", "poisson", 0.01, s)] * 1000)

    sigma = calibrate_noise_multiplier(eps, 1.0)
    assert eps(sigma) <= 1.0 < eps(sigma * 0.995)
    assert sigma == pytest.approx(1.5133914878901196, rel=2e-3)
    from dp_accounting import mechanism_calibration as mc

    theirs = mc.calibrate_dp_mechanism(
        lambda: RdpAccountant(DPA_ORDERS), lambda s: dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(s)), 1000),
        1.0, DELTA, mc.LowerEndpointAndGuess(0.3, 1.0), tol=1e-4)
    assert sigma == pytest.approx(theirs, rel=0.01)


def test_bad_input():
    with pytest.raises(ValueError, match="target_epsilon"):
        calibrate_noise_multiplier(lambda s: 1.0, 0.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        RoundEvent("gaussian", "poisson", 0.1, -1.0)
    with pytest.raises(ValueError, match="q"):
        RoundEvent("gaussian", "poisson", 0.0, 1.0)
    with pytest.raises(ValueError, match="prv"):
        Accountant("prv").add(RoundEvent("ddgauss", "poisson", 0.1, 1.0, l1=1, l2=1, share_std=1, n_shares=1, dim=1))
    with pytest.raises(ValueError, match="malformed"):
        RoundEvent.from_dict({"mechanism": "gaussian"})
    assert math.isinf(Accountant().epsilon(DELTA, [RoundEvent("none")]))
    assert np.isinf(R.eps_from_rdp(np.full(len(R.ORDERS), np.inf), DELTA)[0])


def test_fixed_size_relation_doubles_sensitivity_even_without_sampling():
    # replace-one: a holder's Δ can move the sum by 2C, so at q = 1 the Gaussian with σ costs what σ/2 costs under add/remove
    fixed = Accountant().epsilon(DELTA, [RoundEvent("gaussian", "fixed", 1.0, 2.0)])
    assert fixed == pytest.approx(Accountant().epsilon(DELTA, [RoundEvent("gaussian", "none", 1.0, 1.0)]), rel=1e-9)
    kw = dict(share_std=40.0, n_shares=10, dim=1024)
    ddg_fixed = Accountant().epsilon(DELTA, [RoundEvent("ddgauss", "fixed", 1.0, 1.0, l1=5000.0, l2=100.0, **kw)])
    ddg_double = Accountant().epsilon(DELTA, [RoundEvent("ddgauss", "none", 1.0, 1.0, l1=10000.0, l2=200.0, **kw)])
    assert ddg_fixed == pytest.approx(ddg_double, rel=1e-9)


@pytest.mark.parametrize("events,golden,rel", [
    ([RoundEvent("gaussian", "poisson", 0.1, 1.0)] * 100, 7.057056439561377, 1e-6),  # Opacus PRV (see below)
    ([RoundEvent("gaussian", "fixed", 0.01, 2.2)] * 1000, 3.189998778360638, 1e-9),
    ([RoundEvent("ddgauss", "fixed", 0.05, 1.0, l1=5000.0, l2=100.0, share_std=40.0, n_shares=10, dim=1024)] * 50, 13.083099023840058, 1e-9),
    ([RoundEvent("ddgauss", "none", 1.0, 1.0, l1=5000.0, l2=100.0, share_std=40.0, n_shares=10, dim=1024)] * 5, 9.337861628831662, 1e-9),
    ([RoundEvent("skellam", "poisson", 0.05, 1.0, l1=5000.0, l2=100.0, variance=16000.0, dim=1024)] * 50, 2.526647534827558, 1e-9),
    ([RoundEvent("gaussian", "none", 1.0, 3.0)] * 20, 7.532306073276111, 1e-9),
])
def test_golden_every_accountant_path(events, golden, rel):
    kind = "prv" if golden == 7.057056439561377 else "rdp"
    assert Accountant(kind).epsilon(DELTA, events) == pytest.approx(golden, rel=rel)


def test_fixed_size_events_with_little_noise_are_accounted_and_calibrate():
    # An audit: WBK Thm. 9's min{4(e^{ε(2)} − 1), 2e^{ε(2)}} overflowed a float for σ ≲ 0.075 (ε(2) = 4/σ² > 709),
    # and calibration's first probe is σ = 0.05, so every `sampling: fixed` run with a target_epsilon raised
    # OverflowError at its first round. dp-accounting's Thm. 27 (REPLACE_ONE, σ/2) gives the same value here:
    # at q = 0.1, σ = 0.05 one round costs ε ≈ 1606.2 at δ = 1e-5
    ours = Accountant().epsilon(DELTA, [RoundEvent("gaussian", "fixed", 0.1, 0.05)])
    theirs = RdpAccountant(list(R.ORDERS), neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    theirs.compose(dpa.SampledWithoutReplacementDpEvent(1000, 100, dpa.GaussianDpEvent(0.025)))
    assert ours == pytest.approx(theirs.get_epsilon(DELTA), rel=1e-9) and ours == pytest.approx(1606.2146080984219, rel=1e-9)

    def eps(s):
        return Accountant().epsilon(DELTA, [RoundEvent("gaussian", "fixed", 0.05, s)] * 100)

    sigma = calibrate_noise_multiplier(eps, 1.0)
    assert eps(sigma) <= 1.0 < eps(sigma * 0.995)


def test_epsilon_is_never_negative():
    # An audit: the RDP conversion (Opacus' get_privacy_spent) goes below 0 for a tiny curve at a large δ — ε = −0.22
    # for one Gaussian round with σ = 1000 at δ = 0.2 (allowed up to 1/population: 4 holders) — below any true ε;
    # dp-accounting states 0 there, as securefed now does on every path: holder-level RDP and PRV, record-level
    from securefed.privacy.holder_ledger import record_level_entry

    theirs = RdpAccountant(list(R.ORDERS))
    theirs.compose(dpa.GaussianDpEvent(1000.0))
    assert theirs.get_epsilon(0.2) == 0.0
    for kind in ("rdp", "prv"):
        assert Accountant(kind).epsilon(0.2, [RoundEvent("gaussian", "none", 1.0, 1000.0)]) == 0.0
        assert Accountant(kind).epsilon(0.01, [RoundEvent("gaussian", "poisson", 0.01, 50.0)]) == 0.0
    assert record_level_entry([[50.0, 0.01, 1]], 0.01)["epsilon"] == 0.0
    # where the conversion is positive nothing changes (golden of test_golden_poisson_gaussian)
    assert Accountant().epsilon(DELTA, [RoundEvent("gaussian", "poisson", 0.01, 1.1)] * 1000) == pytest.approx(1.725290818044953, rel=1e-12)


def test_calibration_probes_no_noise_far_below_its_answer():
    # An audit: calibration evaluated ε at σ = 0.05 first, whatever the target, and Opacus' PRV needs > 5 GB for that at
    # q = 0.01 over 100 rounds (MemoryError under a 6 GB limit): accountant "prv" with a target_epsilon could not
    # calibrate a 100-round run. The lower end is now probed only where the answer may lie below it; same results
    probes = []

    def eps(s):
        probes.append(s)
        return Accountant().epsilon(DELTA, [RoundEvent("gaussian", "poisson", 0.01, s)] * 1000)

    assert calibrate_noise_multiplier(eps, 1.0) == 1.5133914878901196   # the value before, step for step
    assert min(probes) > 0.4                                           # sqrt(0.05 · 4): the first midpoint
    # a target the lower end meets still searches below it, as before
    assert calibrate_noise_multiplier(lambda s: Accountant().epsilon(DELTA, [RoundEvent("gaussian", "none", 1.0, s)]),
                                      500.0) == 0.037004409558799196
    prv = lambda s: Accountant("prv").epsilon(DELTA, [RoundEvent("gaussian", "poisson", 0.01, s)] * 100)  # noqa: E731
    assert prv(calibrate_noise_multiplier(prv, 1.0)) <= 1.0


def test_the_clamp_at_zero_never_turns_a_nan_epsilon_into_zero(monkeypatch):
    # Review: ε was clamped with max(0.0, ε), and max(0.0, nan) is 0.0 — a conversion that failed (NaN) would have
    # been stated as ε = 0, perfect privacy, on every clamped path. Only ε < 0 is raised to 0; NaN stays NaN
    import opacus.accountants.analysis.rdp as opacus_rdp
    from opacus.accountants import PRVAccountant, RDPAccountant

    from securefed.privacy.holder_ledger import record_level_entry

    assert R.clamp_epsilon(-0.2) == 0.0 and R.clamp_epsilon(1.5) == 1.5 and math.isinf(R.clamp_epsilon(math.inf))
    assert math.isnan(R.clamp_epsilon(math.nan))
    monkeypatch.setattr(opacus_rdp, "get_privacy_spent", lambda **kw: (math.nan, 2.0))
    assert math.isnan(R.eps_from_rdp(np.full(len(R.ORDERS), 0.5), DELTA)[0])
    monkeypatch.setattr(PRVAccountant, "get_epsilon", lambda self, **kw: math.nan)
    assert math.isnan(Accountant("prv").epsilon(DELTA, [RoundEvent("gaussian", "poisson", 0.01, 1.0)]))
    monkeypatch.setattr(RDPAccountant, "get_epsilon", lambda self, delta, **kw: math.nan)
    assert not record_level_entry([[1.0, 0.01, 1]], DELTA)["epsilon"] == 0.0


@given(st.floats(min_value=1e-9, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_a_shown_epsilon_is_never_below_the_bound_and_at_most_one_last_digit_above(eps):
    """An accountant review: the report showed "ε = 13.04" for 13.0449, the console "10.8" for 10.8017 — rounded to
    nearest, below the accountant's bound. epsilon_text rounds up at 4 significant digits."""
    from securefed.privacy.accountant import epsilon_text

    shown = float(epsilon_text(eps))
    assert shown >= eps * (1 - 1e-12)
    assert shown - eps <= 10 ** (math.floor(math.log10(eps)) - 3) * (1 + 1e-9)


def test_epsilon_text_examples():
    from securefed.privacy.accountant import epsilon_text

    assert [epsilon_text(v) for v in (13.0449, 10.8017, 8.0, 7.9957, float("inf"), "inf", None)] == \
        ["13.05", "10.81", "8", "7.996", "∞", "∞", "—"]
