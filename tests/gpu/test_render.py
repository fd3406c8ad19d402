"""CPU-only tests of benchmarks/gpu/render.py's pure parts (the GPU scripts themselves need a GPU)."""

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "render.py"
_spec = importlib.util.spec_from_file_location("gpu_render", _PATH)
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)


def test_ddp_bytes_ring_allreduce():
    # 8 workers, 1e6 fp32 params, 8 steps: 8 · 2·7/8 · 1e6 · 4 = 56e6 bytes sent per worker
    assert render.ddp_bytes_per_worker(1_000_000, 8, 8) == pytest.approx(56e6)
    assert render.ddp_bytes_per_worker(1_000_000, 8, 1) == 0.0


def test_reduction_factor_is_1_75_k_for_8_workers_and_4_byte_uploads():
    # one 4-byte-per-parameter upload vs K steps of fp32 all-reduce: 2·(7/8)·K = 1.75·K
    assert render.reduction_factor(1000, 48, 8, 4000) == pytest.approx(1.75 * 48)
    with pytest.raises(ValueError):
        render.reduction_factor(1000, 48, 8, 0)


def test_throughput_rows_pairs_loops_and_ratios():
    rows = [
        {"preset": "125m", "batch": 32, "mode": "eager", "loop": "plain", "tokens_per_s": 100.0, "mfu_6n": 0.2,
         "mfu_6n_attn": 0.25},
        {"preset": "125m", "batch": 32, "mode": "eager", "loop": "securefed", "tokens_per_s": 80.0,
         "steady_tokens_per_s": 96.0, "mfu_6n": 0.16, "mfu_6n_attn": 0.2, "flat_copy_seconds": 1.0, "seconds": 5.0},
        {"preset": "350m", "batch": 16, "mode": "compile", "loop": "plain", "tokens_per_s": 50.0},
    ]
    out = render.throughput_rows(rows)
    assert [r["preset"] for r in out] == ["125m", "350m"]
    assert out[0]["ratio"] == pytest.approx(0.8) and out[0]["steady_ratio"] == pytest.approx(0.96)
    assert out[0]["mfu_ours_steady"] == pytest.approx(0.16 * 96 / 80)
    assert "ratio" not in out[1]  # securefed side missing: no ratio invented


def test_fed_central_ratio_and_render(tmp_path):
    study = {"model_params": 10, "run_seconds": 1.0, "rounds": [{"tokens_seen": 5, "eval_ppl": 30.0}],
             "baseline_curve": [{"tokens_seen": 5, "eval_ppl": 20.0}],
             "summary": {"fed_eval_ppl": 30.0, "central_eval_ppl": 20.0, "tokens": 5, "unigram_eval_ppl": 99.0}}
    assert render.fed_central(study)["ratio"] == pytest.approx(1.5)
    res = tmp_path / "res"
    res.mkdir()
    (res / "b-20m.json").write_text(json.dumps(study))
    text = render.render(res, tmp_path / "out")
    assert "| 20m | 10 | 5 | 30.00 | 20.00 | 1.500 |" in text
    assert (tmp_path / "out" / "ppl_vs_tokens.png").stat().st_size > 0
