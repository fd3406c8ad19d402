"""Dropouts at every stage (protocols/secagg.md §8): exact sums for ≥ t survivors, clean abort below."""

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from securefed.secagg import DropoutPlan, SecAggAborted, SecAggConfig, Stage

from tests.secagg.helpers import ring_sum, run

N, T = 10, 6


def _survivor_sets():
    rng = random.Random(3)
    out = []
    for size in (10, 9, 8, 7, 6):
        combos = list(itertools.combinations(range(1, N + 1), size))
        out += rng.sample(combos, min(2, len(combos)))
    return out


@pytest.mark.parametrize("stage", list(Stage), ids=lambda s: s.name)
@pytest.mark.parametrize("survivors", _survivor_sets(), ids=lambda s: f"{len(s)}of10")
def test_dropout_matrix_n10_t6_exact_sum(stage, survivors):
    gone = set(range(1, N + 1)) - set(survivors)
    out, inputs = run(n=N, length=33, dropouts=DropoutPlan(vanish={i: stage for i in gone}), seed=len(survivors))
    assert out.threshold == T
    # dropping at CONSISTENCY/UNMASK happens after the masked input arrived: those inputs stay in the sum
    want = set(survivors) if stage <= Stage.MASK else set(range(1, N + 1))
    assert out.survivors == want and out.dropped == frozenset(range(1, N + 1)) - want
    assert np.array_equal(out.total, ring_sum(inputs, want))


@pytest.mark.parametrize("stage", list(Stage), ids=lambda s: s.name)
def test_below_t_aborts_cleanly(stage):
    plan = DropoutPlan(vanish={i: stage for i in range(1, N - T + 2)})  # 5 left < t = 6
    with pytest.raises(SecAggAborted):
        run(n=N, dropouts=plan)


def test_staggered_dropouts_across_stages():
    plan = DropoutPlan(vanish={1: Stage.SHARE, 2: Stage.MASK, 3: Stage.CONSISTENCY, 4: Stage.UNMASK})
    out, inputs = run(n=N, dropouts=plan)
    assert out.survivors == frozenset(range(3, 11))
    assert np.array_equal(out.total, ring_sum(inputs, range(3, 11)))


@pytest.mark.parametrize("stage", list(Stage), ids=lambda s: s.name)
def test_malformed_message_drops_only_the_offender(stage):
    out, inputs = run(n=N, dropouts=DropoutPlan(malformed={7: stage, 8: stage}))
    want = set(range(1, N + 1)) - ({7, 8} if stage <= Stage.MASK else set())
    assert out.survivors == want
    assert np.array_equal(out.total, ring_sum(inputs, want))


@pytest.mark.parametrize("stage", [Stage.SHARE, Stage.MASK, Stage.UNMASK], ids=lambda s: s.name)
def test_secagg_plus_dropouts(stage):
    cfg = SecAggConfig(neighbours=6)  # n=16: m=7, t=4, t_min=9
    out, inputs = run(n=16, length=40, config=cfg, dropouts=DropoutPlan(vanish={2: stage, 9: stage, 13: stage}))
    want = set(range(1, 17)) - ({2, 9, 13} if stage <= Stage.MASK else set())
    assert out.survivors == want and out.threshold == 4
    assert np.array_equal(out.total, ring_sum(inputs, want))


def test_next_round_is_fresh():
    a, _ = run(n=5, round_index=0, seed=1)
    b, _ = run(n=5, round_index=1, seed=1)
    assert np.array_equal(a.total, b.total)  # same inputs, same sum…
    # …but different keys and session: tested through payloads in test_transcript


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 9), length=st.integers(1, 40), bits=st.sampled_from([16, 17, 24, 31, 32]),
       frac=st.sampled_from([0.5, 0.7, 1.0]), data=st.data())
def test_random_cohorts_exact_or_abort(n, length, bits, frac, data):
    cfg = SecAggConfig(ring_bits=bits, threshold_fraction=frac, chunk_elements=7)
    t_min = cfg.thresholds(n).min_survivors
    vanish = data.draw(st.dictionaries(st.integers(1, n), st.sampled_from(list(Stage)), max_size=n))
    plan = DropoutPlan(vanish=vanish)
    # the complete graph aborts iff some stage's set of senders falls below t_min
    alive = set(range(1, n + 1))
    ok = True
    summed = None
    for stage in Stage:
        alive -= {i for i, s in vanish.items() if s == stage}
        if stage == Stage.MASK:
            summed = set(alive)
        ok &= len(alive) >= t_min
    if not ok:
        with pytest.raises(SecAggAborted):
            run(n=n, length=length, config=cfg, dropouts=plan)
        return
    out, inputs = run(n=n, length=length, config=cfg, dropouts=plan)
    assert out.survivors == summed
    assert np.array_equal(out.total, ring_sum(inputs, summed, bits))
    assert out.total.dtype == (np.uint16 if bits <= 16 else np.uint32)
