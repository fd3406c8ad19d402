"""A holder sharded over 2 real CPU processes (FSDP2 on gloo, issue 17) gives the unsharded holder's Δ.

The worker (fsdp_worker.py) trains two rounds with train.strategy=fsdp, devices=2, batch 2 per rank and
activation checkpointing on; the reference here is one process, batch 4, the same rows in the same
order (rank r's rows are r·2 … r·2+1 of each step's 4), so the averaged gradients agree to float
rounding and so do both rounds' Δ. The shard-wise masked upload (each rank masks its own pieces at
their flat offsets, streamed to rank 0 in order) must equal masking the gathered Δ in one piece, word
for word.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from securefed.primitives.prg import accumulate_masks
from securefed.primitives.quantize import RingSpec

sys.path.insert(0, str(Path(__file__).parent))
import fsdp_worker as w  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(Path(w.__file__)), str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return out


def test_fsdp_delta_equals_unsharded_delta(fsdp_run):
    torch.set_num_threads(1)
    trainer, holder, theta0 = w.setup(1, "auto")
    u1 = holder.train_round(theta0)
    u2 = holder.train_round(theta0 - u1.delta)
    info = json.loads((fsdp_run / "info.json").read_text())
    assert info["world"] == 2 and min(info["pieces_per_rank"]) > 0 and info["tokens"] == u2.tokens
    for got, ref in ((np.load(fsdp_run / "delta1.npy"), u1.delta), (np.load(fsdp_run / "delta2.npy"), u2.delta)):
        ref = ref.numpy()
        assert got.shape == ref.shape and np.abs(ref).max() > 1e-4          # it trained
        # AdamW divides by √v: a coordinate whose gradient is near zero magnifies the rounding of a different
        # reduction order (gloo's reduce-scatter vs one process's sum) — seen: 5 of 17160 off by ≤ 1.4e-6
        # against steps of lr = 3e-3. So: every coordinate within 1e-3 of one step, nearly all within 1e-7.
        np.testing.assert_allclose(got, ref, rtol=0, atol=3e-6)
        assert np.mean(np.abs(got - ref) > 1e-7) < 1e-3
    assert info["loss"][0] == pytest.approx(u1.mean_loss, rel=1e-5)


def test_fsdp_shardwise_masked_upload_equals_whole_vector_masking(fsdp_run):
    d2 = np.load(fsdp_run / "delta2.npy")
    whole = accumulate_masks(w.quantize(d2), w.KEYS, RingSpec(32), chunk_elements=1000)
    assert np.array_equal(np.load(fsdp_run / "masked2.npy"), whole)
