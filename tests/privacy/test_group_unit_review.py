"""A review of train.dp_sgd.unit=group and sample_rate (protocols/dp.md §10.2–10.3): a holder's own config with
unit=group but no data.unit_field is refused when it is loaded; a holder restarted with another grouping field
over steps spent per group is refused; the held-out split never moves one person's removal into other people's
training documents."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from securefed.training.config import DPSGDConfig  # noqa: E402


def _notes(tmp_path: Path, n_people: int = 10, size: int = 700) -> tuple[Path, list[dict]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("[a-m]*.py"))[:12]]
    notes = [t[i:i + size] for t in texts for i in range(0, min(len(t), 6000), size)]
    recs = [{"text": n, "patient": f"p{i % n_people}", "visit": f"v{i}", "source": f"ward{i % 3}"}
            for i, n in enumerate(notes) if n.strip()]
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path, recs


def test_a_holder_config_with_unit_group_and_no_unit_field_is_refused_when_loaded(tmp_path):
    """Before: accepted, and the holder failed only after joining a run and reading its data."""
    from securefed.federation.holder_config import HolderConfig, HolderConfigError, load_holder_config

    with pytest.raises(ValueError, match="dp_sgd.unit=group needs data.unit_field"):
        HolderConfig(holder_id=1, state_dir=str(tmp_path / "s"), dp_sgd=DPSGDConfig(enabled=True, unit="group"))
    y = tmp_path / "holder.yaml"
    y.write_text(f"holder_id: 1\nstate_dir: {tmp_path / 's'}\ndp_sgd: {{enabled: true, unit: group}}\n")
    with pytest.raises(HolderConfigError, match="dp_sgd.unit=group needs data.unit_field"):
        load_holder_config(y)
    HolderConfig(holder_id=1, state_dir=str(tmp_path / "s"), dp_sgd=DPSGDConfig(enabled=True, unit="document"))


def test_a_holder_restarted_with_another_grouping_field_is_refused(tmp_path, fed_cache):
    """Before: the checkpoint and the signed releases recorded only unit=group, so steps spent per patient went
    on per visit with one 'per group' ε for both."""
    from securefed.audit.federation_harness import tiny_federation
    from securefed.federation.holder import HolderStateError
    from securefed.training.data import DataConfig

    corpus, _ = _notes(tmp_path)
    over = ("privacy.mode=distributed", "privacy.mechanism=ddgauss", "privacy.noise_multiplier=1.0", "privacy.clip=1.0",
            "train.dp_sgd.enabled=true", "train.dp_sgd.noise_multiplier=1.0", "train.dp_sgd.delta=1.0e-2",
            "train.dp_sgd.unit=group", "train.dp_sgd.sample_rate=0.2", f"data.source={corpus}",
            "data.unit_field=patient", "data.partition=iid", "data.max_bytes_per_source=null", "data.eval_fraction=0.3",
            "federation.rounds=4")
    fed = tiny_federation(tmp_path / "fed", overrides=over, cache_dir=fed_cache)
    fed.coordinator.run_round(1)
    fed.holders[1]._save_state()
    data = fed.configs[1].data
    dp = fed.configs[1].dp_sgd
    holder = fed.restart_holder(1, data=DataConfig(**{**data.__dict__, "unit_field": "visit"}), dp_sgd=dp)
    with pytest.raises(HolderStateError, match="per group of data.unit_field 'patient', but this holder's config has "
                                               "data.unit_field 'visit'"):
        holder.welcome(fed.coordinator.welcome_for(1))
    holder = fed.restart_holder(1, data=data, dp_sgd=dp)
    holder.welcome(fed.coordinator.welcome_for(1))            # the same field resumes
    assert holder.trainer.dp_steps == 2


def _holder_rows(tmp_path: Path, recs: list[dict], name: str, cache: str, max_rows: int | None = None):
    from securefed.federation.data import forget_corpora, holder_rows
    from securefed.federation.holder_config import HolderConfig
    from securefed.training.data import DataConfig

    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    forget_corpora()
    cfg = HolderConfig(holder_id=1, state_dir=str(tmp_path / "st"), dp_sgd=DPSGDConfig(
        enabled=True, unit="group", delta=1e-3, max_rows_per_document=max_rows), data=DataConfig(
        holder_paths=(str(p),), unit_field="patient", vocab_size=512, seq_len=32, eval_fraction=0.3,
        max_bytes_per_source=None, cache_dir=cache))
    return holder_rows(cfg)


@pytest.mark.parametrize("max_rows", [None, 3])
def test_removing_one_persons_lines_removes_exactly_their_rows_and_no_one_elses(tmp_path, fed_cache, max_rows):
    """A review: the held-out split was split_eval's (a token target over the whole source, JSONL ids numbered by
    line), so removing one patient's lines moved other patients' documents between train and eval: 100 rows of
    D' were in no row of D, and 7–8 other groups' rows changed (10 patients over 3 wards) — the neighbour dataset
    was not D minus one group, and the clipped sum could move by more than C. With data.unit_field each id is held
    out whole by a hash of the id alone."""
    _, recs = _notes(tmp_path)
    full = _holder_rows(tmp_path, recs, "a.jsonl", fed_cache, max_rows)
    assert full.records >= 3
    for g in sorted({r["patient"] for r in recs}):
        nb = _holder_rows(tmp_path, [r for r in recs if r["patient"] != g], "b.jsonl", fed_cache, max_rows)
        if nb.train.shape == full.train.shape:            # g was held out whole: nothing of the training set moves
            assert torch.equal(nb.train, full.train) and torch.equal(nb.units, full.units), g
            continue
        assert nb.records == full.records - 1, g
        gone = [u for u in range(full.records) if torch.equal(full.train[full.units != u], nb.train)]
        assert len(gone) == 1, g                          # D' is D without exactly one group's rows, in order


def test_a_persons_documents_are_all_held_out_or_all_trained_on(tmp_path, fed_cache):
    from securefed.training.data import DataConfig, prepare_federated_data

    corpus, recs = _notes(tmp_path, n_people=12)
    fd = prepare_federated_data(DataConfig(source=str(corpus), unit_field="patient", vocab_size=512, seq_len=32,
                                           eval_fraction=0.3, max_bytes_per_source=None, cache_dir=fed_cache),
                                n_holders=2, seed=0, progress=False)
    trained = {g for gs in fd.holder_groups for g in gs}
    held = sum(s["eval_documents"] for s in fd.manifest["sources"].values())
    assert held and trained and len(trained) < 12
    assert held == sum(1 for r in recs if r["patient"] not in trained)   # every document of the others is held out


def test_a_public_rate_far_from_the_batch_size_is_logged_at_the_holder(caplog):
    """A review: a q chosen for other data ran silently, every step noise alone (q·N < 1) or q·N records at once."""
    from tests.privacy.test_dp_sgd_public_rate import V, T, _trainer

    t = _trainer(0.001)
    with caplog.at_level("WARNING", logger="securefed"):
        t.new_holder(0, torch.randint(0, V, (30, T)), seed=0, total_steps=8, dp_secret_seed=3)
    assert "0.03 records a step in expectation" in caplog.text and "noise alone" in caplog.text
    caplog.clear()
    t = _trainer(0.5)
    with caplog.at_level("WARNING", logger="securefed"):
        t.new_holder(0, torch.randint(0, V, (400, T)), seed=0, total_steps=8, dp_secret_seed=3)
        assert "200 records a step" in caplog.text and "memory" in caplog.text
        caplog.clear()
        t.new_holder(0, torch.randint(0, V, (30, T)), seed=0, total_steps=8, dp_secret_seed=3)
    assert not caplog.text
