"""What a record-level DP-SGD holder tells the coordinator, and what it keeps across a restart (an audit, stop 33).

* Its mean training loss over the un-noised Poisson batches is a function of its records that no accountant
  covers: the audit read a canary's membership from it (ε ≥ 2.7 against the 0.10 reported). It is not sent.
* A restart skips a released round (H7), so the record-level accountant's steps of that round must be on disk
  before the release: with checkpoint_every = 2 a stop after round 3 lost 4 of 16 steps, and round 4 reported
  round 3's ε.
"""

import json

import torch

from securefed.federation.simulation import Simulation
from securefed.runtime.config import load_run_config


def _steps(run, h):
    st = torch.load(run / "holders" / str(h) / "trainer.pt", weights_only=True)
    return sum(n for *_, n in st["dp_sgd_accountant"]["history"])


def _signed_steps(run, h):
    from securefed.privacy.ledger import read_ledger

    return [e for e in read_ledger(run / "holders" / str(h) / "ledger.jsonl") if e.get("record_level")][-1][
        "record_level"]["steps"]


def test_dp_sgd_holders_send_no_loss_and_keep_every_released_step_across_a_stop(tmp_path, tiny_run):
    over = tiny_run + ["federation.n_holders=3", "data.max_sources=3", "federation.rounds=3", "federation.checkpoint_every=2",
                       "train.dp_sgd.enabled=true", "train.dp_sgd.noise_multiplier=1.0", "train.dp_sgd.delta=1.0e-4"]
    cfg = load_run_config(overrides=over)
    run = tmp_path / "run"
    Simulation(cfg, run, progress=False, stop_after_round=1, threads_per_holder=1).run()
    # round 1 was released but is not a checkpoint round (2): its 2 steps are on disk all the same
    assert all(_steps(run, h) == 2 for h in (1, 2, 3))
    Simulation(cfg, run, resume=True, progress=False, threads_per_holder=1).run()
    # K = 2 steps × 3 rounds, none lost: the last release signs them (the complete run's trainer.pt is gone, SYS-35)
    assert all(_signed_steps(run, h) == 2 * 3 and not (run / "holders" / str(h) / "trainer.pt").exists()
               for h in (1, 2, 3))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["train_loss"] is None for r in rows)                # never sent
    eps = [r["record_epsilon_max"] for r in rows]
    assert eps[0] < eps[1] < eps[2]                                  # each round's steps are counted
    # summary.json says which ε is which: holder-level none (ε "inf", no δ), record-level per training sequence
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["epsilon"], summary["epsilon_unit"]) == ("inf", "holder")
    assert "delta" not in summary and "neighbouring_relation" not in summary
    assert summary["record_epsilon_reported_max"] == eps[-1] and summary["record_delta"] == 1.0e-4
    assert (summary["record_unit"], summary["record_neighbouring_relation"]) == ("sequence", "add/remove")


def test_a_holder_computes_each_rounds_record_level_epsilon_once_and_signs_the_value_it_reported(tmp_path, tiny_run,
                                                                                              monkeypatch):
    """The record-level ε of a round's history is asked at the end of training and again when the release is signed;
    Opacus computes it in ≈ 0.1–0.3 s (its fractional orders); on the CPU the second computation was most of a DP-SGD
    round's masked-input stage (0.53 → 0.10 s, benchmarks/RESULTS.md (D47); on the GPU that stage is the trainer.pt
    write, (D48)). It is computed once per distinct history, and the ε each holder reported is the one its ledger
    signed."""
    from opacus.accountants import RDPAccountant

    from securefed.privacy import holder_ledger
    from securefed.privacy.ledger import read_ledger

    calls = []
    real = RDPAccountant.get_epsilon
    monkeypatch.setattr(RDPAccountant, "get_epsilon", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    holder_ledger._record_level_epsilon.cache_clear()
    over = tiny_run + ["federation.n_holders=3", "data.max_sources=3", "federation.rounds=2",
                       "train.dp_sgd.enabled=true", "train.dp_sgd.noise_multiplier=1.0", "train.dp_sgd.delta=1.0e-4"]
    run = tmp_path / "run"
    Simulation(load_run_config(overrides=over), run, progress=False, threads_per_holder=1).run()
    histories = set()
    signed = []
    for h in (1, 2, 3):
        released = [e for e in read_ledger(run / "holders" / str(h) / "ledger.jsonl") if e["status"] == "released"]
        assert [e["round"] for e in released] == [1, 2]
        histories |= {json.dumps(e["record_level"]["history"]) for e in released}
        signed.append(max(e["record_level"]["epsilon"] for e in released))
    assert 0 < len(calls) <= len(histories)          # before: 24 here, four per holder and round
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["record_epsilon_max"] == max(signed)


def test_a_dp_sgd_holder_writes_its_trainer_state_once_a_round_and_that_write_holds_the_rounds_steps(tmp_path, tiny_run,
                                                                                                   monkeypatch):
    """The release writes trainer.pt (the accountant's steps must be on disk before the update leaves, H7); the end of
    the round wrote the same state again at every checkpoint round (checkpoint_every = 1: every round). trainer.pt
    holds AdamW's moments (2·P floats: 186 MB at 20m, ≈ 10 GB at 1.3b; by a CPU measurement its release write is
    what a DP-SGD round's masked-input stage adds, benchmarks/RESULTS.md (D48)), so it is written once a round."""
    from securefed.runtime import rundir

    writes, last_steps = [], {}
    real = rundir.atomic_torch_save

    def save(obj, path):
        writes.append((path.parent.name, path.name))
        if path.name == "trainer.pt":   # what the holder's last write held (the complete run then removes it, SYS-35)
            last_steps[path.parent.name] = sum(n for *_, n in obj["dp_sgd_accountant"]["history"])
        return real(obj, path)
    monkeypatch.setattr(rundir, "atomic_torch_save", save)
    over = tiny_run + ["federation.n_holders=3", "data.max_sources=3", "federation.rounds=2", "federation.checkpoint_every=1",
                       "train.dp_sgd.enabled=true", "train.dp_sgd.noise_multiplier=1.0", "train.dp_sgd.delta=1.0e-4"]
    run = tmp_path / "run"
    Simulation(load_run_config(overrides=over), run, progress=False, threads_per_holder=1).run()
    trainer_writes = sorted(w for w in writes if w[1] == "trainer.pt")
    assert trainer_writes == sorted([(str(h), "trainer.pt") for h in (1, 2, 3)] * 2)   # before: 12 (twice a round)
    assert all(last_steps[str(h)] == 2 * 2 for h in (1, 2, 3))    # K = 2 steps × 2 rounds, the last write has both
