"""The coordinator's privacy write-ahead log around the moment a round's sum is revealed (federation.md §6).

An audit killed the coordinator after the holders had sent their unmask shares (the sum revealed and applied) but
before the old WAL checkpoint, which came after the outer step and evaluation: the resumed run recorded the round
as aborted, its server ledger had no entry for it (ε 6.77 against 7.99 uninterrupted) and `verify` passed. Now the
WAL is written before any unmask request (before the CKKS decryption, once plain updates are in): a crash after
the reveal completes the round's accounting on restart and discards its update; and `verify` fails a run where a
holder settled a round the server ledger lacks.
"""

import json

import pytest

from securefed.federation.simulation import Simulation
from securefed.privacy.ledger import read_ledger
from securefed.runtime.config import load_run_config
from securefed.training.outer import OuterOptimizer


class _Crash(Exception):
    pass


@pytest.mark.parametrize("mode", ["secagg", "plain", "ckks+secagg"])
def test_a_crash_after_the_sum_is_revealed_keeps_the_rounds_spend(tmp_path, tiny_run, monkeypatch, mode):
    over = tiny_run + ["federation.rounds=3", f"aggregation.mode={mode}", "privacy.mode=central",
                       f"aggregation.ckks.enabled={str(mode == 'ckks+secagg').lower()}",
                       "privacy.mechanism=gaussian", "privacy.noise_multiplier=1.0", "privacy.clip=1.0",
                       "federation.weighting=uniform", "privacy.force_unlearnable=true"]
    cfg = load_run_config(overrides=over)
    run = tmp_path / "run"
    real = OuterOptimizer.step
    calls = []

    def step(self, *a, **k):            # the sum of round 2 is decoded and about to move the model: crash here
        calls.append(1)
        if len(calls) == 2:
            raise _Crash
        return real(self, *a, **k)
    monkeypatch.setattr(OuterOptimizer, "step", step)
    with pytest.raises(_Crash):
        Simulation(cfg, run, progress=False, threads_per_holder=1).run()
    monkeypatch.setattr(OuterOptimizer, "step", real)
    Simulation(cfg, run, resume=True, progress=False, threads_per_holder=1).run()
    rounds = [e["round"] for e in read_ledger(run / "privacy" / "ledger.jsonl")]
    assert rounds == [1, 2, 3]                                        # round 2's spend is in the ledger, once
    rows = {r["round"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert "sum was revealed" in rows[2]["aborted"]                   # its update was discarded, and said so
    from securefed.cli import main
    assert main(["verify", str(run)]) == 0


def test_a_crash_after_a_ckks_sum_with_a_holder_lost_before_its_masked_input_verifies(tmp_path, tiny_run, monkeypatch):
    """ckks+secagg: holder 1 (seeded dropouts) is in the CKKS part of round 1's sum but not the masked part (A \\ B).
    A crash after the reveal completes the round from the WAL with A charged and n_masked = |B|, the count the
    others settled at — so the resumed run verifies."""
    over = tiny_run + ["federation.rounds=2", "federation.n_holders=5", "data.max_sources=5",
                       "federation.weighting=uniform", "aggregation.mode=ckks+secagg", "aggregation.ckks.enabled=true",
                       "privacy.mode=central", "privacy.mechanism=gaussian", "privacy.noise_multiplier=1.0",
                       "privacy.clip=1.0", "privacy.force_unlearnable=true", "federation.dropout_rate=0.4"]
    cfg = load_run_config(overrides=over)
    run = tmp_path / "run"
    real = OuterOptimizer.step

    def step(self, *a, **k):            # round 1's sum is revealed and about to move the model
        raise _Crash
    monkeypatch.setattr(OuterOptimizer, "step", step)
    with pytest.raises(_Crash):
        Simulation(cfg, run, progress=False, threads_per_holder=1).run()
    monkeypatch.setattr(OuterOptimizer, "step", real)
    Simulation(cfg, run, resume=True, progress=False, threads_per_holder=1).run()
    (first, *_) = read_ledger(run / "privacy" / "ledger.jsonl")
    assert first["round"] == 1 and 1 in first["survivors"] and first["n_masked"] == first["n_survivors"] - 1
    from securefed.cli import main
    assert main(["verify", str(run)]) == 0
