"""Two-process FSDP holder for tests/training/test_fsdp_holder.py (not collected: no test_ prefix).

    python tests/training/fsdp_worker.py OUT_DIR

Fabric's launcher re-runs this script as rank 1 (CPU and gloo; CUDA and NCCL when
SECUREFED_FSDP_TEST_ACCELERATOR=cuda). Both ranks build the same tiny model from
the same seed, train two rounds under train.strategy=fsdp, and rank 0 writes Δ of each round (gathered
piece by piece) and the shard-wise masked upload of round 2 to OUT_DIR.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from securefed.primitives.quantize import RingSpec, to_ring
from securefed.training.config import ModelPreset
from securefed.training.flat import get_flat
from securefed.training.models import build_model
from securefed.training.trainer import LocalTrainer, TrainConfig

# vocab 67 and width 24: dim-0 chunks of 34/33 rows and pieces that start off any 16-byte block
PRESET = ModelPreset("fsdp-test", d_model=24, n_layers=2, n_heads=2, max_seq_len=16, tie_embeddings=False)
VOCAB, SEQ = 67, 16
KEYS = [(b"s" * 32, 1), (b"p" * 32, -1)]
SCALE = 2.0**20
ACCELERATOR = os.environ.get("SECUREFED_FSDP_TEST_ACCELERATOR", "cpu")   # tests/gpu/test_fsdp_gpu.py: cuda


def setup(devices: int, strategy: str):
    torch.manual_seed(0)
    data = torch.randint(0, VOCAB, (24, SEQ))
    model = build_model(PRESET, vocab_size=VOCAB, seq_len=SEQ, seed=0)
    theta0 = get_flat(model)
    # fp32 everywhere (also on CUDA): the comparison is of sharding, not of bf16 rounding
    cfg = TrainConfig(local_steps=3, batch_size=4 // devices, lr=3e-3, warmup_steps=0, accelerator=ACCELERATOR,
                      precision="32-true", fused="off",
                      devices=devices, strategy=strategy, activation_checkpointing=strategy == "fsdp")
    trainer = LocalTrainer(model, cfg)
    return trainer, trainer.new_holder(1, data, seed=0, total_steps=6), theta0


def quantize(x: np.ndarray) -> np.ndarray:
    return to_ring(np.rint(x.astype(np.float64) * SCALE).astype(np.int64), RingSpec(32))


def main() -> None:
    out = Path(sys.argv[1])
    trainer, holder, theta0 = setup(2, "fsdp")
    rank = trainer.fabric.global_rank
    u1 = holder.train_round(theta0)
    d1 = u1.shard.to_flat()                       # collective: both ranks take part
    theta1 = theta0 - d1 if rank == 0 else torch.empty_like(theta0)
    theta1 = trainer.fabric.broadcast(theta1, src=0)
    u2 = holder.train_round(theta1)
    d2 = u2.shard.to_flat()
    words = [(lo, w) for lo, w in u2.shard.masked_stream(quantize, KEYS, RingSpec(32), chunk_elements=7)]
    mine = [(p.lo, p.hi) for p, _ in u2.shard.pieces]
    ranges = trainer.fabric.all_gather(torch.tensor(len(mine)))
    if rank == 0:
        masked = np.concatenate([w for _, w in words])
        assert [lo for lo, _ in words] == sorted(lo for lo, _ in words)
        np.save(out / "delta1.npy", d1.numpy())
        np.save(out / "delta2.npy", d2.numpy())
        np.save(out / "masked2.npy", masked)
        (out / "info.json").write_text(json.dumps({
            "world": trainer.fabric.world_size, "pieces_per_rank": ranges.tolist(),
            "loss": [u1.mean_loss, u2.mean_loss], "tokens": u2.tokens}))
    trainer.fabric.barrier()
    # an orderly end of the process group: left to interpreter teardown, gloo's threads were sometimes still
    # joinable when destroyed ("terminate called without an active exception", SIGABRT) — seen once in the
    # full suite on 2 loaded cores
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)   # the results are on disk; skip the rest of interpreter teardown (threads of torch/gloo)
