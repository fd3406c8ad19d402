"""The centralized baseline shows its steps (a "baseline" phase that ends at N/N) and showing them
does not change its numbers."""

import io
import math
from types import SimpleNamespace

import torch

from securefed.progress import Progress
from securefed.runtime import baseline
from securefed.runtime.config import load_run_config


def _data(vocab=512, seq=32):
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(central_train=torch.randint(0, vocab, (64, seq), generator=g),
                           eval_global=torch.randint(0, vocab, (8, seq), generator=g), tokenizer=[0] * vocab)


def _cfg():
    return load_run_config(overrides=["data.vocab_size=512", "data.seq_len=32", "train.batch_size=2",
                                      "train.warmup_steps=1", "baseline_batch_size=2", "train.accelerator=cpu"])


def test_baseline_reports_each_step_and_matches_unchunked(monkeypatch):
    cfg, data = _cfg(), _data()
    points = [64 * 3, 64 * 7]  # tokens: 2 sequences x 32 tokens per step -> 3 and 7 steps
    out = io.StringIO()
    prog = Progress(stream=out, ticker=False, min_interval_s=0.0)
    monkeypatch.setattr(baseline, "_MAX_UPDATES", 7)  # one step per trainer call
    curve = baseline.run_centralized_baseline(cfg, data, points, progress=prog)
    lines = out.getvalue().splitlines()
    assert lines[0] == "centralized baseline: started (0/7)"
    assert [f"centralized baseline {i}/7" in "\n".join(lines) for i in range(1, 8)] == [True] * 7
    assert lines[-1].startswith("centralized baseline: 7/7 done in")
    assert set(prog.phase_seconds) == {"baseline"} and prog.phase_seconds["baseline"] > 0
    assert [r["step"] for r in curve] == [3, 7] and [r["tokens_seen"] for r in curve] == points
    assert all(math.isfinite(r["train_loss"]) and r["eval_ppl"] == math.exp(r["eval_loss"]) for r in curve)

    monkeypatch.setattr(baseline, "_MAX_UPDATES", 1)  # chunk = all 7 steps: one trainer call per eval point
    whole = baseline.run_centralized_baseline(cfg, data, points, progress=Progress(enabled=False))
    assert [r["eval_loss"] for r in whole] == [r["eval_loss"] for r in curve]  # bit-identical
