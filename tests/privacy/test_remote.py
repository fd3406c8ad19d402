"""A remote holder encodes from the public round spec exactly as the in-process encoder does, and keeps its
own budget: it refuses past its cap, charges a release at the worst case before sending, settles it at the
signed survivor count, and its ε is RDP over each round's effective event (settled, else released)."""

import dataclasses
import json

import numpy as np
import pytest

from securefed.privacy import DPConfig, PrivacySession, read_ledger
from securefed.privacy.holder_ledger import holder_effective_events
from securefed.privacy.remote import HolderBudget, RoundSpec, round_spec, spec_encode, spec_holder_event
from securefed.primitives.rng import DeterministicEntropy

T_MIN = 3   # the fewest survivors secure aggregation allows for a cohort of 4 (default threshold): the worst case


def _session(tmp_path, cfg, rounds=3):
    return PrivacySession(cfg, population=20, cohort_size=4, rounds_planned=rounds, sampling="poisson",
                          ledger_dir=tmp_path)


@pytest.mark.parametrize("cfg", [DPConfig(), DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0),
                                 DPConfig(mode="distributed", mechanism="skellam", noise_multiplier=1.0, adaptive_clip=True)])
def test_spec_encode_matches_in_process_encode(tmp_path, cfg):
    rp = _session(tmp_path, cfg).begin_round(1, cohort=[1, 2, 3, 4], dim=300)
    spec = round_spec(rp)
    assert isinstance(spec, RoundSpec) and spec.round == 1 and spec.participants == (1, 2, 3, 4)
    wire = RoundSpec.from_dict(json.loads(json.dumps(spec.to_dict())))   # it crosses the wire as JSON
    assert wire == spec
    x = np.random.default_rng(0).normal(size=300).astype(np.float32)
    a, ia = rp.encode(2, x, DeterministicEntropy.from_int(9))
    b, ib = spec_encode(wire, x, DeterministicEntropy.from_int(9))
    assert np.array_equal(a, b) and ia == ib
    assert "secret" not in json.dumps(spec.to_dict())


def test_holder_budget_refuses_past_its_cap_and_survives_restart(tmp_path):
    cfg = DPConfig(mode="distributed", noise_multiplier=1.0)
    s = _session(tmp_path / "srv", cfg, rounds=9)
    budget = HolderBudget(tmp_path / "h.jsonl", holder_id=2, cap=6.0, delta=s.delta, run_id="r1")
    joined, statuses = 0, []
    for r in range(1, 10):
        rp = s.begin_round(r, cohort=[1, 2, 3, 4], dim=300)
        spec = round_spec(rp)
        ok, proj = budget.admits(spec, min_survivors=T_MIN)
        if ok:
            before = budget.epsilon()
            budget.release(spec, min_survivors=T_MIN)           # charged at t_min shares, before sending
            assert budget.epsilon() == pytest.approx(proj) and proj > before
            budget.settle(spec, survivors=4)                     # the signed survivor list had all 4
            assert budget.epsilon() < proj                       # more noise shares in the sum: less ε
            joined += 1
            statuses += ["released", "settled"]
        else:
            assert proj > 6.0
            budget.refuse(r, f"joining would take this holder to epsilon {proj:.4g}", spec)
            statuses.append("refused")
        rp.finish(survivors=[1, 2, 3, 4], clip_infos={})
    assert 1 <= joined < 9 and budget.epsilon() <= 6.0
    # the worst-case projection of one more round crosses the cap; the settled one alone may not
    assert budget.projected(spec_holder_event(spec, T_MIN)) > 6.0
    again = HolderBudget(tmp_path / "h.jsonl", holder_id=2, cap=6.0, delta=s.delta, run_id="r1")
    assert again.epsilon() == pytest.approx(budget.epsilon())
    assert again.released_rounds() == set(range(1, joined + 1))
    entries = read_ledger(tmp_path / "h.jsonl")
    assert [e["status"] for e in entries] == statuses
    assert all(e["reason"] for e in entries if e["status"] == "refused")
    with pytest.raises(ValueError, match="already released"):   # a holder releases each round once (H7)
        again.release(dataclasses.replace(spec, round=1), min_survivors=T_MIN)


def test_epsilon_is_over_effective_events_settled_else_released(tmp_path):
    """A crash between release and settle leaves the conservative (t_min) charge; a settle replaces it."""
    s = _session(tmp_path / "srv", DPConfig(mode="distributed", noise_multiplier=1.0))
    b = HolderBudget(tmp_path / "h.jsonl", holder_id=1, cap=None, delta=s.delta, run_id="r")
    specs = []
    for r in (1, 2):
        rp = s.begin_round(r, cohort=[1, 2, 3, 4], dim=64)
        specs.append(round_spec(rp))
        rp.finish(survivors=[1, 2, 3, 4], clip_infos={})
    b.release(specs[0], min_survivors=T_MIN)
    b.settle(specs[0], survivors=4)
    b.release(specs[1], min_survivors=T_MIN)                    # killed before its unmask stage: never settled
    events = holder_effective_events(read_ledger(tmp_path / "h.jsonl"))
    assert events == [spec_holder_event(specs[0], 4), spec_holder_event(specs[1], T_MIN)]
    assert b.epsilon() == pytest.approx(b.acc.epsilon(s.delta))
    fresh = HolderBudget(tmp_path / "h.jsonl", holder_id=1, cap=None, delta=s.delta, run_id="r")
    assert fresh.epsilon() == pytest.approx(b.epsilon())
    with pytest.raises(ValueError, match="not released"):
        b.settle(dataclasses.replace(specs[1], round=3), survivors=4)
    with pytest.raises(ValueError, match="not the ledger of holder"):
        HolderBudget(tmp_path / "h.jsonl", holder_id=2, cap=None, delta=s.delta)


def test_bad_specs_are_refused(tmp_path):
    s = _session(tmp_path, DPConfig(mode="distributed", noise_multiplier=1.0), rounds=2)
    spec = round_spec(s.begin_round(1, cohort=[1, 2, 3, 4], dim=64))
    d = spec.to_dict()
    for key, bad in [("version", 2), ("mode", "weird"), ("scale", -1.0), ("n_shares", "4"), ("participants", [2, 1]),
                     ("mechanism", "gaussian"), ("seed", "XYZ"), ("delta", 1.5), ("unknown", 1)]:
        with pytest.raises(ValueError):
            RoundSpec.from_dict(dict(d, **{key: bad}))
    with pytest.raises(ValueError, match="missing"):
        RoundSpec.from_dict({k: v for k, v in d.items() if k != "dim"})
    with pytest.raises(TypeError):      # only a validated RoundSpec is encoded, never a dict off the wire
        spec_encode(d, np.zeros(64, np.float32), DeterministicEntropy.from_int(0))
    with pytest.raises(ValueError, match="delta"):
        HolderBudget(tmp_path / "h.jsonl", holder_id=1, cap=1.0, delta=0.5).admits(dataclasses.replace(spec, delta=0.4))
