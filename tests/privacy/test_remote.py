"""A remote holder encodes from the public round spec exactly as the in-process encoder does, and keeps its own budget."""

import json

import numpy as np
import pytest

from securefed.privacy import DPConfig, PrivacySession, read_ledger
from securefed.privacy.remote import HolderBudget, round_spec, spec_encode, spec_holder_event
from securefed.primitives.rng import DeterministicEntropy


@pytest.mark.parametrize("cfg", [DPConfig(), DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0),
                                 DPConfig(mode="distributed", mechanism="skellam", noise_multiplier=1.0, adaptive_clip=True)])
def test_spec_encode_matches_in_process_encode(tmp_path, cfg):
    s = PrivacySession(cfg, population=20, cohort_size=4, rounds_planned=3, sampling="poisson", ledger_dir=tmp_path)
    rp = s.begin_round(0, cohort=[1, 2, 3, 4], dim=300)
    spec = json.loads(json.dumps(round_spec(rp)))  # it crosses the wire as JSON
    x = np.random.default_rng(0).normal(size=300).astype(np.float32)
    a, ia = rp.encode(2, x, DeterministicEntropy.from_int(9))
    b, ib = spec_encode(spec, x, DeterministicEntropy.from_int(9))
    assert np.array_equal(a, b) and ia == ib
    assert "secret" not in json.dumps(spec)


def test_holder_budget_refuses_past_its_cap_and_survives_restart(tmp_path):
    cfg = DPConfig(mode="distributed", noise_multiplier=1.0)
    s = PrivacySession(cfg, population=20, cohort_size=4, rounds_planned=9, sampling="poisson", ledger_dir=tmp_path / "srv")
    budget = HolderBudget(tmp_path / "h.jsonl", holder_id=2, cap=6.0, delta=s.delta)
    joined = 0
    for r in range(9):
        rp = s.begin_round(r, cohort=[1, 2, 3, 4], dim=300)
        spec = round_spec(rp)
        if budget.admits(spec):
            budget.record(spec, status="included", survivors=4)
            joined += 1
        else:
            budget.record(spec, status="refused")
        rp.finish(survivors=[1, 2, 3, 4], clip_infos={})
    assert 1 <= joined < 9 and budget.epsilon() <= 6.0
    assert budget.acc.epsilon(s.delta, [spec_holder_event(spec)]) > 6.0
    again = HolderBudget(tmp_path / "h.jsonl", holder_id=2, cap=6.0, delta=s.delta)
    assert again.epsilon() == pytest.approx(budget.epsilon())
    assert [e["status"] for e in read_ledger(tmp_path / "h.jsonl")] == ["included"] * joined + ["refused"] * (9 - joined)


def test_bad_specs_are_refused(tmp_path):
    s = PrivacySession(DPConfig(mode="distributed", noise_multiplier=1.0), population=20, cohort_size=4, rounds_planned=2,
                       sampling="poisson", ledger_dir=tmp_path)
    spec = round_spec(s.begin_round(0, cohort=[1, 2, 3, 4], dim=64))
    for key, bad in [("version", 2), ("mode", "weird"), ("scale", -1.0), ("n_shares", "4")]:
        with pytest.raises(ValueError):
            spec_encode(dict(spec, **{key: bad}), np.zeros(64, np.float32), DeterministicEntropy.from_int(0))
    with pytest.raises(ValueError, match="delta"):
        HolderBudget(tmp_path / "h.jsonl", holder_id=1, cap=1.0, delta=0.5).admits(dict(spec, delta=0.4))
