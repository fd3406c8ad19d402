"""Distributed discrete noise through the real secure-aggregation protocol, with dropouts.

The decoded sum of the survivors' encodings carries noise of variance σ²C²·|S|/n (the shares of the
|S| survivors of n participants), and that shortfall is what the ledger accounts.
"""

import math

import numpy as np
import pytest

from securefed.privacy import DPConfig, PrivacySession
from securefed.primitives.rng import DeterministicEntropy
from securefed.secagg import DropoutPlan, Roster, SecAggConfig, Stage, generate_identity, run_secagg_round

DIM, N, SIGMA = 2000, 6, 2.0


@pytest.mark.parametrize("mechanism,vanish", [("ddgauss", {}), ("skellam", {}), ("ddgauss", {5: Stage.MASK, 6: Stage.MASK})])
def test_noise_through_secagg_has_the_target_variance(tmp_path, mechanism, vanish):
    ids = {i: generate_identity(DeterministicEntropy.from_int(500 + i)) for i in range(1, N + 1)}
    roster = Roster.from_identities(ids)
    cfg = DPConfig(mode="distributed", mechanism=mechanism, noise_multiplier=SIGMA, clip=1.0)
    s = PrivacySession(cfg, population=20, cohort_size=N, rounds_planned=4, sampling="poisson", ledger_dir=tmp_path)
    rp = s.begin_round(0, cohort=list(ids), dim=DIM)
    rng = np.random.default_rng(3)
    xs = {h: (rng.normal(size=DIM) * 0.02).astype(np.float32) for h in ids}
    enc, infos = {}, {}
    for h in ids:
        enc[h], infos[h] = rp.encode(h, xs[h], DeterministicEntropy.from_int(40 + h))
    out = run_secagg_round(enc, config=SecAggConfig(ring_bits=32), round_index=0, session_context=b"ctx" * 11,
                           identities=ids, roster=roster, entropy_for=lambda i: DeterministicEntropy.from_int(900 + i),
                           dropouts=DropoutPlan(vanish=vanish))
    surv = sorted(out.survivors)
    assert surv == [h for h in ids if h not in vanish]
    total = rp.decode(out.total, survivors=surv, entropy=DeterministicEntropy.from_int(1))
    err = total.astype(np.float64) - sum(rp.clip(h, xs[h])[0].astype(np.float64) for h in surv)
    target = SIGMA * math.sqrt(len(surv) / N)  # std of the survivors' summed shares (C = 1)
    # sample std of 2000 near-Gaussian values: relative standard error ≈ 1/√4000 ≈ 1.6%
    assert np.std(err) == pytest.approx(target, rel=0.08)
    assert abs(np.mean(err)) < 5 * target / math.sqrt(DIM)
    entry = rp.finish(survivors=surv, clip_infos=infos)
    assert entry["n_survivors"] == len(surv)
    if mechanism == "ddgauss":
        assert entry["event"]["n_shares"] == len(surv)
    else:  # a sum of |S| Skellam shares is Skellam with |S| times the share variance
        assert entry["event"]["variance"] == pytest.approx(len(surv) * rp.plan.share_std**2)
