"""CPU tests of the pure parts of benchmarks/gpu/fsdp.py (issue 17): the case plan (1.3b on each
strategy, then the largest preset whose computed memory fits, largest first), the row's arithmetic and
the merge of reruns. The launched cases themselves: `python benchmarks/gpu/fsdp.py all --tiny` (2 CPU
processes; not in the suite, it takes ~2 min)."""

import importlib.util
from pathlib import Path

import pytest

_GPU = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"
spec = importlib.util.spec_from_file_location("gpu_fsdp", _GPU / "fsdp.py")
fsdp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fsdp)


def test_plan_on_eight_h200s():
    groups = fsdp.plan(8, 139.0)
    assert [(g[0]["preset"], g[0]["strategy"], g[0]["gpus"]) for g in groups[:3]] == [
        ("1.3b", "single", 1), ("1.3b", "ddp", 8), ("1.3b", "fsdp", 8)]
    largest = {g[0]["strategy"]: [(c["preset"], c["ac"]) for c in g] for g in groups[3:]}
    # computed (training/memory.py, + 8 GiB context): 7b alone on one GPU needs 134.1 GiB without
    # checkpointing (> 139 − 8) and 103.2 GiB with it; DDP replicates 16P + 4P = 125.2 GiB of states at 7b,
    # + 3.1 checkpointed activations + 8 = 136.3 ≤ 139: on paper only, so 2.7b is next in line if it fails
    assert largest["single"][0] == ("7b", True)
    assert largest["fsdp"][:2] == [("7b", False), ("7b", True)]        # 48.5 / 17.6 GiB per GPU on 8
    assert largest["ddp"][:2] == [("7b", True), ("2.7b", False)]


def test_row_mfu_and_merge(tmp_path):
    f = fsdp.flops_per_token("1.3b", 32768, 2048)
    n_matmul = 1_348_569_088 - 32768 * 2048                           # the input embedding is a lookup
    assert f == 6 * n_matmul + 12 * 24 * 2048 * 2048
    row = fsdp.make_row(strategy="fsdp", gpus=8, preset="1.3b", params=1, tokens=1_000_000, seconds=2.0,
                        flops=f, peak_gib=10.0)
    assert row["tokens_per_s"] == 500_000 and row["mfu"] == pytest.approx(500_000 * f / (989e12 * 8))
    assert set(row) >= {"strategy", "gpus", "params", "tokens_per_s", "mfu", "peak_gib_per_gpu"}
    out = tmp_path / "fsdp.json"
    fsdp.merge_rows(out, [row, dict(row, strategy="ddp")])
    rows = fsdp.merge_rows(out, [dict(row, tokens_per_s=1.0)])           # a rerun replaces its own row only
    assert sorted((r["strategy"], r["tokens_per_s"]) for r in rows) == [("ddp", 500_000), ("fsdp", 1.0)]


def test_tiny_plan_is_cpu_sized():
    groups = fsdp.plan(2, 0.0, tiny=True)
    assert {c["preset"] for g in groups for c in g} == {"tiny"} and max(c["gpus"] for g in groups for c in g) == 2
