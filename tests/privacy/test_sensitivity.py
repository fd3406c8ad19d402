"""The accountant's sensitivity bounds what is actually noised, in every mode (protocols/dp.md §6.4).

What the noise covers: central mode noises the server's *decoded* sum of quantized updates, distributed
mode the holders' rounded integer vectors. Randomised rounding lengthens a vector (up to γC + √d), so the
accountant must use a bound on the rounded norm, not C. These tests measure realised norms against the
bound each ledger entry records and the accountant charges.
"""

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from securefed.primitives.quantize import dequantize_sum, from_ring, plan_quantization, quantize
from securefed.primitives.rng import DeterministicEntropy
from securefed.privacy import DPConfig, PrivacySession
from securefed.privacy.accountant import Accountant, RoundEvent
from securefed.privacy.clipping import l2_clip
from securefed.privacy.encoders import DiscretePlan
from securefed.privacy.events import plan_record


def _update(kind: str, dim: int, clip: float, seed: int) -> np.ndarray:
    """Inputs that stress rounding: spread (every coordinate rounds), half-integer fractions, one-hot, random."""
    rng = np.random.default_rng(seed)
    if kind == "flat":
        x = np.ones(dim)
    elif kind == "onehot":
        x = np.zeros(dim)
        x[seed % dim] = 1.0
    elif kind == "signs":
        x = rng.choice([-1.0, 1.0], size=dim)
    else:
        x = rng.normal(size=dim)
    return (x / np.linalg.norm(x) * clip * 3.0).astype(np.float32)  # norm 3C: clipping brings it to C


def _decoded_norm(rp, h: int, delta: np.ndarray, seed: int) -> float:
    """Norm of what one holder adds to the noised quantity, in the units the event's sensitivity uses."""
    e = DeterministicEntropy.from_int(seed)
    if isinstance(rp.plan, DiscretePlan):  # integer units, before its noise share
        clipped, info = rp.clip(h, delta)
        r = rp.plan.integer_vector(clipped, not info.clipped, e).astype(np.float64)
        return float(np.linalg.norm(r))
    ring_vec, _ = rp.encode(h, delta, e)
    return float(np.linalg.norm(dequantize_sum(ring_vec, rp.plan, np.float64)))  # real units: q_i / γ


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=st.integers(12, 32), n=st.integers(2, 1000), mode=st.sampled_from(["none", "central", "ddgauss", "skellam"]),
       dim=st.integers(1, 3000), kind=st.sampled_from(["flat", "onehot", "signs", "normal"]),
       sampling=st.sampled_from(["poisson", "fixed"]), adaptive=st.booleans(), clip=st.floats(0.01, 100.0),
       seed=st.integers(0, 10**6))
def test_realised_norm_never_exceeds_the_accounted_sensitivity(tmp_path_factory, bits, n, mode, dim, kind, sampling,
                                                                adaptive, clip, seed):
    if mode == "none":
        cfg = DPConfig(clip=clip, ring_bits=bits)
    elif mode == "central":
        cfg = DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.3, clip=clip, ring_bits=bits,
                       adaptive_clip=adaptive)
    else:
        cfg = DPConfig(mode="distributed", mechanism=mode, noise_multiplier=1.3, clip=clip, ring_bits=bits,
                       adaptive_clip=adaptive)
    s = PrivacySession(cfg, population=n, cohort_size=n, rounds_planned=5, sampling=sampling,
                       ledger_dir=tmp_path_factory.mktemp("l"))
    try:
        rp = s.begin_round(1, cohort=list(range(n)), dim=dim)
    except ValueError as e:  # a ring too small for this cohort is refused before anything is encoded
        assert "ring" in str(e)
        return
    delta = _update(kind, dim, clip, seed)
    realised = max(_decoded_norm(rp, h, delta, seed + h) for h in (0, n - 1))
    entry = rp.finish(survivors=list(rp.participants), clip_infos={})
    ev = RoundEvent.from_dict(entry["event"])
    plan = entry["plan"]
    if isinstance(rp.plan, DiscretePlan):
        assert realised <= ev.l2  # the integer-unit sensitivity the DDGauss/Skellam RDP uses
        assert realised / rp.plan.scale <= plan["sensitivity_l2"] * (1 + 1e-12)
    else:
        assert realised <= plan["sensitivity_l2"]
        if mode == "central" and not adaptive:
            # the accountant's multiplier is noise std over a sensitivity at least the realised norm
            assert plan["noise_std"] / ev.noise_multiplier >= realised
            assert ev.noise_multiplier <= 1.3


def test_central_epsilon_at_16_bits_100_holders_covers_the_realised_norm(tmp_path):
    # 16-bit ring, 100 holders: γC = 32767 // 100 − 1 = 326 integer steps for the clip bound, so rounding
    # 300,000 coordinates adds ≈ √(d/6) ≈ 224 steps of length: the decoded update is ≈ 1.2·C long
    n, dim, rounds = 100, 300_000, 50
    cfg = DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0, clip=1.0, ring_bits=16, delta=1e-5)
    s = PrivacySession(cfg, population=1000, cohort_size=n, rounds_planned=rounds, sampling="poisson", ledger_dir=tmp_path)
    rp = s.begin_round(1, cohort=list(range(n)), dim=dim)
    realised = max(_decoded_norm(rp, h, _update("normal", dim, 1.0, h), h) for h in range(3))
    assert realised > 1.15  # the old accountant charged C = 1: an under-report by this factor
    entry = rp.finish(survivors=list(rp.participants), clip_infos={})
    ev = RoundEvent.from_dict(entry["event"])
    ours = Accountant().epsilon(s.delta, [ev] * rounds)
    # dp-accounting's RDP at the realised norm: the noise std is σC = 1 over sensitivity `realised`
    acc = RdpAccountant()
    acc.compose(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.0 / realised)), rounds)
    at_realised = acc.get_epsilon(s.delta)
    old = Accountant().epsilon(s.delta, [RoundEvent("gaussian", "poisson", 0.1, 1.0)] * rounds)
    assert ours >= at_realised > 1.3 * old


def test_quantize_refuses_any_norm_above_the_clip_so_the_ring_cannot_wrap():
    # 32-bit ring, one client: γC = 2^31 − 2. A one-hot update of norm C·(1 + 1e-6) (accepted before)
    # would encode to γC·(1 + 1e-6) ≈ 2^31 + 2147 > 2^31 − 1 and decode with the wrong sign.
    plan = plan_quantization(clip=1.0, ring_bits=32, max_clients=1)
    x = np.zeros(8)
    x[3] = 1.0 + 1e-6
    with pytest.raises(ValueError, match="exceeds the clip"):
        quantize(x, plan, DeterministicEntropy.from_int(0))
    x[3] = 1.0 + 1e-12
    with pytest.raises(ValueError, match="exceeds the clip"):
        quantize(x, plan, DeterministicEntropy.from_int(0))
    # what the promise means: max_clients one-hot updates of norm exactly C sum without wrapping
    for bits, n in [(32, 1), (16, 100), (12, 1000), (20, 7)]:
        plan = plan_quantization(clip=1.0, ring_bits=bits, max_clients=n)
        x = np.zeros(4)
        x[0] = 1.0
        acc = np.zeros(4, plan.ring.dtype)
        for i in range(n):
            np.add(acc, quantize(x, plan, DeterministicEntropy.from_int(i)), out=acc)
        plan.ring.reduce(acc)
        assert 0 < from_ring(acc, plan.ring)[0] <= n * plan.max_abs_per_client < 2 ** (bits - 1)


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 500), rel=st.floats(-1e-5, 1e-5), seed=st.integers(0, 10**6))
@example(dim=109, rel=0.0, seed=0)   # ‖x‖ = 1.0 in numpy's pairwise sum, 1.0000000000000002 in BLAS's (stop 46)
def test_l2_clip_output_is_always_accepted_by_quantize(dim, rel, seed):
    # updates whose norm is within float error of C: l2_clip's float32 output never exceeds C
    rng = np.random.default_rng(seed)
    x = rng.normal(size=dim)
    x = x / np.linalg.norm(x) * (1.0 + rel)
    y, info = l2_clip(x.astype(np.float64), 1.0)
    assert float(np.linalg.norm(y.astype(np.float64))) <= 1.0
    # `clipped` says the norm exceeded C; within a few ulps of C two summation orders (numpy's pairwise sum, which
    # l2_clip takes on every host, and BLAS's, which np.linalg.norm takes) may disagree, and either answer is right
    ref = math.sqrt(math.fsum(float(v) * float(v) for v in x))    # ‖x‖ from the correctly rounded sum of squares
    if abs(ref - 1.0) > 1e-14:
        assert info.clipped == (ref > 1.0)
    assert abs(info.norm - ref) <= 1e-14
    quantize(y, plan_quantization(clip=1.0, ring_bits=32, max_clients=3), DeterministicEntropy.from_int(seed))


@settings(max_examples=12, deadline=None)
@given(dim=st.sampled_from([1, (1 << 16) - 1, (1 << 16) + 1, 3 * (1 << 16) + 17]), rel=st.floats(-1e-5, 1e-1),
       f32=st.booleans(), seed=st.integers(0, 10**6))
def test_l2_clip_span_by_span_is_the_whole_vector_clip(dim, rel, f32, seed):
    # l2_clip accumulates ‖Δ‖² span by span and scales span by span: the norm is the float64 norm (to summation
    # order), the output the same two products of every coordinate, never above C, an unclipped Δ just cast
    rng = np.random.default_rng(seed)
    x = rng.normal(size=dim)
    x = (x / np.linalg.norm(x) * 2.0 * (1.0 + rel)).astype(np.float32 if f32 else np.float64)
    y, info = l2_clip(x, 2.0)
    ref = float(np.linalg.norm(x.astype(np.float64)))
    assert y.dtype == np.float32 and y.shape == x.shape
    assert abs(info.norm - ref) <= 1e-12 * ref and info.clipped == (info.norm > 2.0)
    if info.norm <= 2.0 * (1 - 1e-6):
        assert y.tobytes() == x.astype(np.float32).tobytes()
    else:
        assert y.tobytes() == (x.astype(np.float64) * (2.0 / info.norm) * (1 - 1e-6)).astype(np.float32).tobytes()
    assert float(np.linalg.norm(y.astype(np.float64))) <= 2.0


@settings(max_examples=12, deadline=None)
@given(dim=st.sampled_from([1, 7, (1 << 16) + 1, 3 * (1 << 16) + 17]), rel=st.floats(0.2, 3.0), seed=st.integers(0, 10**6))
def test_l2_clip_in_place_and_without_a_copy_give_the_copys_values(dim, rel, seed):
    """The plain round's holder clips its own Δ in place and the coordinator reads an update within C where it
    arrived (stop 43: two fewer fresh vectors a holder a round): the same float32 words as the copy, always."""
    x = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    clip = float(np.linalg.norm(x.astype(np.float64))) / rel
    want, info = l2_clip(x, clip)
    view = np.frombuffer(x.tobytes(), dtype="<f4")                 # read only, as the coordinator receives it
    got, info_v = l2_clip(view, clip, copy=False)
    assert got.tobytes() == want.tobytes() and info_v == info
    assert (got is view) == (not info.clipped and info.norm <= clip * (1 - 1e-6))   # a clipped one is a new vector
    own = x.copy()
    got_i, info_i = l2_clip(own, clip, inplace=True)
    assert got_i is own and own.tobytes() == want.tobytes() and info_i == info
    with pytest.raises(ValueError, match="in place"):
        l2_clip(view, clip, inplace=True)                          # never written through a read-only view
    with pytest.raises(ValueError, match="in place"):
        l2_clip(x.astype(np.float64), clip, inplace=True)
    y64, _ = l2_clip(x.astype(np.float64), clip, copy=False)        # not float32: always a float32 vector
    assert y64.dtype == np.float32 and y64.tobytes() == want.tobytes()


def test_conditional_rounding_is_a_hard_bound_and_nearly_unbiased():
    plan = plan_quantization(clip=1.0, ring_bits=16, max_clients=100)  # γC = 326
    dim = 20_000
    x = np.full(dim, 1.0 / math.sqrt(dim))  # every coordinate ≈ 2.3 steps: all of them round
    qs = np.stack([from_ring(quantize(x, plan, DeterministicEntropy.from_int(i)), plan.ring) for i in range(40)])
    norms = np.linalg.norm(qs.astype(np.float64), axis=1)
    assert norms.max() <= plan.l2_bound(dim)
    assert abs(qs.mean() - x[0] * plan.scale) < 0.01  # the conditioning hardly biases the mean
    # the trivial bound γC + √d would allow 1.43·γC; conditional rounding allows at most:
    assert plan.l2_bound(dim) < 1.1 * plan.clip * plan.scale


@pytest.mark.parametrize("rel", [0.5, 1.0, 3.0])
def test_threaded_l2_clip_is_the_serial_one_bit_for_bit(monkeypatch, rel):
    """l2_clip's norm and its scaling pass run across threads (primitives/spans.py): the same float32 vector."""
    from securefed.primitives import spans
    from securefed.privacy.clipping import l2_clip

    x = np.random.default_rng(3).standard_normal(3 * 65536 + 11).astype(np.float32)
    clip = float(np.linalg.norm(x.astype(np.float64))) / rel
    monkeypatch.setattr(spans, "MIN_SPAN", 1 << 62)
    want, info = l2_clip(x, clip)
    monkeypatch.setattr(spans, "MIN_SPAN", 5)
    monkeypatch.setattr(spans, "host_threads", lambda: 4)
    got, info2 = l2_clip(x, clip)
    assert got.tobytes() == want.tobytes() and info == info2 and info.clipped == (rel > 1.0)


def test_central_mode_plans_the_ring_for_the_population_whoever_takes_part(tmp_path):
    """An audit (stop 33): central mode planned γ for the round's realised n, so the neighbour with n + 1
    participants was quantized at γ(n + 1), whose bound S(n + 1) exceeds the S(n) the round was charged at —
    ε under-reported by 2 % at 16 bits / 100 holders, 11 % at 12 bits with one holder. Now γ is planned for
    the population: the plan, the charged multiplier and so ε are the same whoever takes part, an empty round
    included (its neighbour with one participant is quantized at the same γ)."""
    cfg = DPConfig(mode="central", mechanism="gaussian", clip=1.0, noise_multiplier=1.0, ring_bits=16)
    s = PrivacySession(cfg, population=100, cohort_size=10, rounds_planned=4, sampling="poisson", ledger_dir=tmp_path)
    d = 1000
    plans = {n: s.begin_round(1, cohort=list(range(n)), dim=d).plan for n in (0, 1, 50, 51, 100)}
    assert {p.max_clients for p in plans.values()} == {100} and len({p.scale for p in plans.values()}) == 1
    zs = {n: s._event(p, 1.0, n, sampled=True, dim=d).noise_multiplier for n, p in plans.items()}
    assert len(set(zs.values())) == 1 and zs[0] < 1.0          # charged at S(population) > C, the empty round too
    # the charged bound covers what a holder's contribution can reach in any cohort up to the population
    for n in (1, 51, 100):
        own = plan_quantization(clip=1.0, ring_bits=16, max_clients=n)
        assert own.l2_bound(d) / own.scale <= plans[0].l2_bound(d) / plans[0].scale


def test_central_adaptive_noise_is_the_accounted_one_whoever_takes_part(tmp_path):
    """An audit (accounting review): with adaptive clipping the central server drew its noise with σ_b of the
    round's realised participants n (data noise z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) included) while every ledger
    entry, holder and verifier accounted σ_b of the plan (the population N, dp.md §6.4). The noise then was not
    the accounted mechanism, and its variance moved with n — so with whether one holder took part: neighbouring
    releases differ in the variance of P coordinates, a Rényi divergence ≈ Pα(Δv/v)²/4 the accountant never
    charged (z = 1, n = 100 → 101 of N = 1000: Δv/v ≈ 2·10⁻⁴, ≈ 1·α per round at P = 10⁸ against α/2 charged).
    Now the server noises with the plan's σ_b: the same for every cohort, and the one the ledger records."""
    cfg = DPConfig(mode="central", mechanism="gaussian", clip=1.0, noise_multiplier=1.0, ring_bits=32, adaptive_clip=True)
    s = PrivacySession(cfg, population=1000, cohort_size=100, rounds_planned=4, sampling="poisson", ledger_dir=tmp_path)
    rps = {n: s.begin_round(1, cohort=list(range(n)), dim=64) for n in (0, 30, 100, 101)}
    noise = {(rp.sigma_b, rp.data_noise_multiplier, rp.aggregate_noise_std) for rp in rps.values()}
    assert len(noise) == 1                                   # the same mechanism whoever takes part
    sigma_b, z_data, _ = noise.pop()
    assert sigma_b == 50.0                                   # max(N/20, z): the plan's, public
    rec = plan_record(rps[100].plan, 64, 1.0, s._sigma_b(rps[100].plan, 1.0))
    assert (rec["sigma_b"], rec["data_noise_multiplier"]) == (sigma_b, z_data)   # what the ledger states
    assert z_data == pytest.approx((1.0 - 1.0 / (4 * 50.0**2)) ** -0.5, rel=1e-15)
