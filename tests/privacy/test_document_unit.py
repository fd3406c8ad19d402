"""DP-SGD with one document as the privacy unit (train.dp_sgd.unit: document; protocols/dp.md §10.2).

The properties: document packing puts each document in rows of its own, so removing a document removes
exactly its rows; through the trainer's own DP-SGD step (both clippings, noise 0, SGD at lr 1 so the step
is the clipped sum), removing a document moves the clipped sum by at most C — where sequence-level clipping
of the same rows moves it by up to k·C; padding is no token and no target; the unit is signed, verified,
shown, and a holder refuses a config whose unit differs from what it already spent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from securefed.privacy.dpsgd import attach_dp_sgd  # noqa: E402
from securefed.privacy.holder_ledger import record_level_entry, record_level_problem  # noqa: E402
from securefed.training.config import DPSGDConfig, TrainConfig  # noqa: E402
from securefed.training.data.packing import PAD, document_row_counts, pack_documents  # noqa: E402
from securefed.training.trainer import LocalTrainer  # noqa: E402

V, T, EOS, C = 64, 12, 1, 1e-3

docs_strategy = st.lists(st.integers(0, 4 * T), min_size=1, max_size=12).map(
    lambda lens: [np.arange(2, 2 + n) % (V - 2) + 2 for n in lens])


@settings(max_examples=150, deadline=None)
@given(docs=docs_strategy, cap=st.one_of(st.none(), st.integers(1, 3)), drop=st.integers(0, 11))
def test_each_document_gets_rows_of_its_own_and_removing_one_removes_exactly_its_rows(docs, cap, drop):
    rows, unit = pack_documents(docs, seq_len=T, eos_id=EOS, max_rows=cap)
    counts = document_row_counts([d.size for d in docs], seq_len=T, max_rows=cap)
    assert rows.shape == (int(counts.sum()), T) and unit.tolist() == np.repeat(np.arange(len(docs)), counts).tolist()
    for j, d in enumerate(docs):
        mine = rows[unit == j].reshape(-1).numpy()
        want = np.concatenate([d, [EOS]])[: mine.size]
        assert mine[: want.size].tolist() == want.tolist()            # the document's own tokens, in order
        assert (mine[want.size:] == PAD).all()                        # then only padding, in its last row
        if counts[j]:
            assert (mine != PAD).sum() >= 2 or counts[j] == 0         # every row set holds a next-token target
        full = d.size + 1
        assert counts[j] == min(full // T + (full % T >= 2), cap or 10**9)
    j = drop % len(docs)
    rest = docs[:j] + docs[j + 1:]
    rows2, _ = pack_documents(rest, seq_len=T, eos_id=EOS, max_rows=cap)
    assert torch.equal(rows2, rows[unit != j])                       # neighbours differ in exactly j's rows


def _tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).float()


def _clipped_sum(clipping: str, rows: torch.Tensor, scale: torch.Tensor | None, clip: float) -> torch.Tensor:
    """The trainer's own DP-SGD step on ``rows`` with noise 0 and SGD: (θ_before − θ_after)/lr is the clipped sum
    Σ_r min(1, s_r·C/‖g_r‖)·g_r (expected batch size 1); lr 100/C makes the step large against θ's rounding."""
    cfg = TrainConfig(accelerator="cpu", precision="32-true", batch_size=4, fused="off",
                      dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=0.0, max_grad_norm=clip, clipping=clipping,
                                         unit="document"))
    trainer = LocalTrainer(_tiny_llama(), cfg)
    lr = 100.0 / clip
    _, opt, _ = attach_dp_sgd(trainer._gsm, torch.optim.SGD(trainer.raw_model.parameters(), lr=lr),
                              noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=1, sample_rate=0.5)
    before = torch.cat([p.detach().reshape(-1).clone() for p in trainer.raw_model.parameters()]).double()
    trainer._step_fn(opt, rows, scale)
    after = torch.cat([p.detach().reshape(-1) for p in trainer.raw_model.parameters()]).double()
    return (before - after) / lr


# rows' gradient norms on this data are 2.4–8.6: at C = 10 some rows are clipped and some are not, at 1e-3 all are
@pytest.mark.parametrize("clip", [1e-3, 10.0])
@pytest.mark.parametrize("clipping", ["per_sample", "ghost"])
def test_removing_a_document_moves_the_clipped_sum_by_at_most_c_through_the_trainer(clipping, clip):
    gen = np.random.default_rng(0)
    lens = [5, 3 * T + 4, 13, 2 * T, 2]          # rows: 1, 4, 2, 2 (2·T tokens + EOS: the last piece has 1), 1
    docs = [gen.integers(2, V, size=n) for n in lens]
    rows, unit = pack_documents(docs, seq_len=T, eos_id=EOS)
    assert torch.bincount(unit).tolist() == [1, 4, 2, 2, 1] and (rows == PAD).any()
    scale = (1.0 / torch.bincount(unit).double())[unit].float()
    full = _clipped_sum(clipping, rows, scale, clip)
    for j in range(len(docs)):
        mine, keep = unit == j, unit != j
        own = _clipped_sum(clipping, rows[mine], scale[mine], clip)
        rest = _clipped_sum(clipping, rows[keep], scale[keep], clip)
        # each row's clipped share depends on that row alone (no batch-wide normalisation couples them) ...
        torch.testing.assert_close(full, rest + own, rtol=1e-4, atol=1e-5 * clip)
        # ... and one document's shares add up to at most C
        assert float(own.norm()) <= clip * (1 + 1e-5), (j, float(own.norm()) / clip)
        assert float((full - rest).norm()) <= clip * (1 + 1e-4)
    # the same rows clipped one row = one record: the 4-row document moves the sum by far more than C
    if clip < 1:
        seq_full = _clipped_sum(clipping, rows, torch.ones(len(rows)), clip)
        keep = unit != 1
        moved = float((seq_full - _clipped_sum(clipping, rows[keep], torch.ones(int(keep.sum())), clip)).norm())
        assert moved > 1.5 * clip


def test_padding_is_neither_input_nor_target():
    from securefed.training.fused import per_record_nll

    torch.manual_seed(1)
    ids = torch.randint(2, V, (2, T))
    padded = ids.clone()
    padded[1, 7:] = PAD
    logits = torch.randn(2, T, V)
    got = per_record_nll(logits, padded)
    want = torch.nn.functional.cross_entropy(logits[1, :6], ids[1, 1:7])       # targets 1..6: the real tokens
    torch.testing.assert_close(got[1], want)
    torch.testing.assert_close(per_record_nll(logits, ids)[0], got[0])        # an unpadded row: unchanged


def test_the_holder_samples_whole_documents_at_q_over_rows():
    cfg = TrainConfig(accelerator="cpu", precision="32-true", batch_size=3, fused="off", local_steps=1,
                      dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=C, unit="document"))
    trainer = LocalTrainer(_tiny_llama(), cfg)
    unit = torch.tensor([0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 5])          # 6 documents of 1–4 rows
    rows = torch.randint(2, V, (len(unit), T), generator=torch.Generator().manual_seed(0))
    rows[:, 0] = torch.arange(len(unit)) + 2                          # a row's first token names it
    h = trainer.new_holder(0, rows, seed=0, total_steps=10, dp_secret_seed=7, units=unit)
    counts = torch.bincount(unit)
    seen = torch.zeros(len(counts))
    n = 600
    for _ in range(n):
        x, scale = h._next_batch()
        idx = x[:, 0] - 2
        assert torch.equal(rows[idx], x)
        picked = unit[idx].unique()
        assert len(idx) == int(counts[picked].sum())                     # a sampled document comes with all its rows
        torch.testing.assert_close(scale, 1.0 / counts[unit[idx]].float())   # each of its k rows: bound C/k
        seen[picked] += 1
    q = 3 / len(rows)                                                    # q = B / rows: B rows expected per step
    assert ((seen / n - q).abs() < 0.07).all(), seen / n
    assert h.accountant is not None and h._next_batch is not None


def test_bad_units_and_settings_are_refused():
    with pytest.raises(ValueError, match="unit must be 'sequence', 'document' or 'group'"):
        DPSGDConfig(enabled=True, unit="patient")
    with pytest.raises(ValueError, match="applies to train.dp_sgd.unit=document or group only"):
        DPSGDConfig(enabled=True, max_rows_per_document=2)
    with pytest.raises(ValueError, match="max_rows_per_document must be >= 1"):
        DPSGDConfig(enabled=True, unit="document", max_rows_per_document=0)
    cfg = TrainConfig(accelerator="cpu", precision="32-true", batch_size=2, fused="off",
                      dp_sgd=DPSGDConfig(enabled=True, unit="document"))
    trainer = LocalTrainer(_tiny_llama(), cfg)
    rows, unit = pack_documents([np.arange(2, 30), np.arange(2, 9)], seq_len=T, eos_id=EOS)
    with pytest.raises(ValueError, match="numbered 0, 1"):
        trainer.new_holder(0, rows, seed=0, total_steps=1, units=unit.flip(0))


def test_the_unit_is_signed_and_may_not_change_within_a_run():
    a = record_level_entry([[1.0, 0.01, 10]], 1e-5, unit="document")
    assert a["unit"] == "document"
    entries = [{"status": "released", "round": 1, "holder_id": 1, "record_level": a},
               {"status": "released", "round": 2, "holder_id": 1,
                "record_level": record_level_entry([[1.0, 0.01, 20]], 1e-5, unit="sequence")}]
    assert record_level_problem(entries[:1]) is None
    assert "privacy unit changed from document to sequence" in record_level_problem(entries)
    with pytest.raises(ValueError, match="unit must be one of"):
        record_level_entry([[1.0, 0.01, 10]], 1e-5, unit="row")


def test_a_document_level_run_through_the_cli_signs_verifies_and_reports_its_unit(tmp_path, tiny_run, capsys):
    """simulate → verify → report with train.dp_sgd.unit=document: the pre-flight names the unit, every holder
    signs it with each release, verify recomputes the ε per document and the report says what one record is."""
    import json

    from securefed.cli import main

    run = tmp_path / "run"
    over = tiny_run + ["federation.rounds=2", "train.dp_sgd.enabled=true", "train.dp_sgd.noise_multiplier=1.0",
                       "train.dp_sgd.delta=1.0e-4", "train.dp_sgd.unit=document", "train.dp_sgd.max_rows_per_document=3"]
    assert main(["simulate", "--out", str(run)] + [a for o in over for a in ("--set", o)]) == 0
    out = capsys.readouterr()
    assert "per document (whole documents sampled" in out.out + out.err
    man = json.loads((run / "holders" / "1" / "data_manifest.json").read_text())["holders"][0]
    unit = man["dp_sgd_unit"]
    assert unit["unit"] == "document" and unit["max_rows_per_document"] == 3 and unit["rows"] <= 3 * unit["documents"]
    own = [json.loads(x) for x in (run / "holders" / "1" / "ledger.jsonl").read_text().splitlines()]
    rl = [e["record_level"] for e in own if e.get("status") == "released"]
    assert rl and all(r["unit"] == "document" for r in rl) and rl[-1]["steps"] == 2 * 2
    q = rl[-1]["history"][0][1]
    assert q == pytest.approx(4 / unit["rows"])          # documents sampled at B / rows
    assert main(["verify", str(run)]) == 0
    assert "record-level epsilon=" in (o := capsys.readouterr().out) and "(add/remove neighbours, one document; recomputed" in o
    assert main(["report", str(run)]) == 0
    text = (run / "report" / "report.md").read_text()
    assert "one record = one document" in text and "| document |" in text


def _doc_rows(tmp_path, recs, name, cache, **data):
    import json

    from securefed.federation.data import forget_corpora, holder_rows
    from securefed.federation.holder_config import HolderConfig
    from securefed.training.data import DataConfig

    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    forget_corpora()
    cfg = HolderConfig(holder_id=1, state_dir=str(tmp_path / "st"), dp_sgd=DPSGDConfig(
        enabled=True, unit="document", delta=1e-3), data=DataConfig(**{
            "holder_paths": (str(p),), "vocab_size": 512, "seq_len": 32, "eval_fraction": 0.3, "cache_dir": cache,
            **data}))
    return holder_rows(cfg)


def test_removing_one_document_from_a_holders_own_file_removes_exactly_its_rows(tmp_path, fed_cache):
    """The held-out split must not tie documents together: split_eval's token target and JSONL's line-numbered
    ids moved other documents between train and eval when one line was removed (the review of unit=group found
    it for ids; unit=document had it too). Under unit=document each document is held out by a hash of its text."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("[a-m]*.py"))[:8]]
    recs = [{"text": t[i:i + 900], "source": f"s{n % 2}"} for n, t in enumerate(texts) for i in range(0, 4500, 900)]
    full = _doc_rows(tmp_path, recs, "a.jsonl", fed_cache)
    moved_any = False
    for j in range(0, len(recs), 3):
        nb = _doc_rows(tmp_path, recs[:j] + recs[j + 1:], "b.jsonl", fed_cache)
        if nb.train.shape == full.train.shape and torch.equal(nb.train, full.train):
            continue                                        # j was held out: the training set is unchanged
        moved_any = True
        assert nb.records == full.records - 1, j
        gone = [u for u in range(full.records) if torch.equal(full.train[full.units != u], nb.train)]
        assert len(gone) == 1, j                            # D' is D without exactly one document's rows, in order
    assert moved_any


def test_a_capped_holder_is_refused_under_a_document_unit(tmp_path, fed_cache):
    from securefed.training.data.documents import DataError

    recs = [{"text": ("word " * 200) + str(i)} for i in range(40)]
    with pytest.raises(DataError, match="the data caps left documents out"):
        _doc_rows(tmp_path, recs, "c.jsonl", fed_cache, max_bytes_per_holder=20000)
    assert _doc_rows(tmp_path, recs, "c.jsonl", fed_cache).records > 0


def test_a_token_budget_split_under_a_document_unit_is_one_config_error(tmp_path, capsys):
    from securefed.cli import main

    code = main(["simulate", "--out", str(tmp_path / "r"), "--set", "train.dp_sgd.enabled=true",
                 "--set", "train.dp_sgd.unit=document", "--set", "data.eval_split=budget"])
    assert code == 2 and "needs data.eval_split independent" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
