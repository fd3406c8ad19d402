"""A public DP-SGD sampling rate (train.dp_sgd.sample_rate; protocols/dp.md §10.3).

With q = B/N the record-level ε a holder sends the coordinator every round (and signs in each release) is a
function of its row count N: an audit read N off ε (B 4, σ 1, 4 steps: 2.6537 at N 30, 2.7145 at 29, 2.8475
at 27), so removing a document showed. With a public q, ε and the accountant's history do not depend on N,
the batch is Poisson at q, and B only divides the noised sum, uncapped by the data.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from securefed.privacy.preflight import RecordLevel, preflight  # noqa: E402
from securefed.privacy.config import DPConfig  # noqa: E402
from securefed.training.config import DPSGDConfig, TrainConfig  # noqa: E402
from securefed.training.trainer import LocalTrainer  # noqa: E402

V, T = 64, 12


def _trainer(rate):
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    tc = TrainConfig(accelerator="cpu", precision="32-true", batch_size=4, local_steps=4, fused="off",
                     dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=rate))
    return LocalTrainer(transformers.LlamaForCausalLM(cfg).float(), tc)


def _round(trainer, n):
    data = torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(n))
    h = trainer.new_holder(0, data, seed=0, total_steps=8, dp_secret_seed=3)
    from securefed.training.flat import get_flat

    up = h.train_round(get_flat(trainer.raw_model))
    return h, up


def test_with_a_public_rate_the_record_level_epsilon_does_not_depend_on_the_row_count():
    t = _trainer(0.1)
    (h30, u30), (h27, u27), (h3, u3) = (_round(t, n) for n in (30, 27, 3))
    assert u30.record_epsilon == u27.record_epsilon == u3.record_epsilon
    assert h30.dp_history() == h27.dp_history() == h3.dp_history() == [[1.0, 0.1, 4]]
    assert h3.batch_size == 4                          # the divisor is the public B, not min(B, N) = 3
    # without it the same holders' ε differ with N: the leak the public rate closes
    t = _trainer(None)
    eps = [_round(t, n)[1].record_epsilon for n in (30, 29, 27)]
    assert len(set(eps)) == 3


def test_a_public_rate_samples_each_row_at_that_rate():
    t = _trainer(0.25)
    data = torch.arange(400 * T).remainder(V).view(400, T)
    h = t.new_holder(0, data, seed=0, total_steps=8, dp_secret_seed=5)
    sizes = [len(h._next_batch()[0]) for _ in range(300)]
    assert abs(sum(sizes) / len(sizes) - 100) < 3        # E[batch] = q·N = 100, whatever B (4)


def test_the_pre_flight_uses_the_public_rate_and_says_when_the_rate_reveals_the_record_count():
    pub = preflight(DPConfig(), population=4, cohort_size=4, rounds=4, dim=1000, sampling="fixed",
                    record_level=RecordLevel(1.0, 1.0, 1e-5, 32, 850, 48, sample_rate=0.01))
    assert pub.record_level["sample_rate"] == 0.01
    assert not any("reveals" in line for line in pub.lines())
    own = preflight(DPConfig(), population=4, cohort_size=4, rounds=4, dim=1000, sampling="fixed",
                    record_level=RecordLevel(1.0, 1.0, 1e-5, 32, 850, 48))
    assert any("record count, which its record-level ε (sent to the coordinator every round) reveals" in line
               for line in own.lines())


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, float("nan"), True, "0.1"])
def test_a_sample_rate_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match="sample_rate must be a number in"):
        DPSGDConfig(enabled=True, sample_rate=bad)


def test_per_document_the_pre_flight_signal_is_one_clip_per_document_not_per_row():
    """A document's k rows share one C: per step the clipped sum holds about q·documents clips, not q·rows. The demo's
    holders (20–33 documents in ~900 rows) printed the per-row 18.3 for a unit that then ended at perplexity 4,936."""
    rows = RecordLevel(1.0, 1.0, 1e-5, 64, 900, 96)
    docs = RecordLevel(1.0, 1.0, 1e-5, 64, 900, 96, unit="document", max_documents=33, documents=20)
    a = preflight(DPConfig(), population=4, cohort_size=4, rounds=8, dim=10_000, sampling="fixed", record_level=rows)
    b = preflight(DPConfig(), population=4, cohort_size=4, rounds=8, dim=10_000, sampling="fixed", record_level=docs)
    assert b.record_level["noise_to_signal"] == pytest.approx(a.record_level["noise_to_signal"] * 900 / 20)
    assert b.record_level["epsilon_planned"] == a.record_level["epsilon_planned"]      # the same events, per document


def test_a_holder_signs_a_public_rate_only_when_every_step_it_holds_ran_at_it():
    """PV-56: the report's membership exception is decided by what each holder signs, so the signed sample_rate must
    be true of every step the accountant holds: a restart that set sample_rate over steps at q = B/N (whose ε, sent
    every round, already gave the count away) signs none; and a ledger entry whose history contradicts the rate it
    signs does not verify."""
    from securefed.privacy.holder_ledger import public_sample_rate, record_level_entry, record_level_problem
    from securefed.training.flat import get_flat

    data = torch.randint(0, V, (30, T), generator=torch.Generator().manual_seed(1))
    counted = _trainer(None)
    h = counted.new_holder(0, data, seed=0, total_steps=8, dp_secret_seed=3)
    h.train_round(get_flat(counted.raw_model))
    assert h.dp_public_rate is None
    public = _trainer(0.1)
    p = public.new_holder(0, data, seed=0, total_steps=8, dp_secret_seed=3)
    p.train_round(get_flat(public.raw_model))
    assert p.dp_public_rate == 0.1
    resumed = public.new_holder(0, data, seed=0, total_steps=8, dp_secret_seed=3)
    resumed.load_state_dict(h.state_dict())          # the count-q steps come along
    resumed.train_round(get_flat(public.raw_model))
    assert resumed.dp_history()[0][1] == pytest.approx(4 / 30) and resumed.dp_public_rate is None
    signed = [{"status": "released", "round": r, "seq": r, "record_level": record_level_entry(
        [[1.0, 0.1, 4 * r]], 1e-5, sample_rate=0.1)} for r in (1, 2)]
    assert record_level_problem(signed) is None and public_sample_rate(signed) == 0.1
    assert public_sample_rate([signed[0], {"record_level": record_level_entry([[1.0, 0.1, 8]], 1e-5)}]) is None
    lie = {"status": "released", "round": 1, "seq": 1, "record_level": record_level_entry([[1.0, 0.1, 4]], 1e-5,
                                                                                         sample_rate=0.05)}
    assert "sample_rate" in (record_level_problem([lie]) or "")


def test_the_membership_exception_follows_what_each_holder_signed_not_the_coordinators_config(tmp_path, tiny_run, capsys):
    """PV-56: config.yaml (the coordinator's) set a public train.dp_sgd.sample_rate, but holder 2 ran its own
    holder.yaml's DP-SGD at q = B/N — its ε sent every round gave its record count away — and the report and verify
    said nothing: the exception was read from config.yaml. It is now read from the rates the holders signed."""
    from securefed.cli import main
    from securefed.federation.simulation import Simulation
    from securefed.runtime.config import load_run_config

    run = tmp_path / "run"
    over = tiny_run + ["train.dp_sgd.enabled=true", "train.dp_sgd.noise_multiplier=1.0", "train.dp_sgd.delta=1.0e-4",
                       "train.dp_sgd.sample_rate=0.02"]
    cfg = load_run_config(overrides=over)
    Simulation(cfg, run, progress=False, threads_per_holder=1,
               holder_overrides={2: {"dp_sgd": {"sample_rate": None}}}).run()
    assert main(["verify", str(run)]) == 0
    out = capsys.readouterr().out
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    md = (run / "report" / "report.md").read_text()
    said = "Except for membership: holder-2 samples at q = batch size / its own record count"
    assert said in md and said in out
    assert "holder-1 samples" not in md and "holder-2 samples at q = batch size / its own record count, so" in md
