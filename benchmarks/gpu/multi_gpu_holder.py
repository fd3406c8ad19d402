"""One data holder training one round on several GPUs (Lightning Fabric DDP), checked and timed.

    python benchmarks/gpu/multi_gpu_holder.py --devices 2 --preset 125m --batch 32 --steps 20 --out r.json

The holder's LocalTrainer is built with TrainConfig(devices=N, strategy="ddp"); Fabric re-launches this
script once per GPU. The holder's training rows come from the same offline corpus as the federated
runs (its first holder's shard). Each rank takes its own slice of world·batch rows per step
(HolderTrainer._next_batch), so a step sees N·batch sequences. Checks: after the round every rank
holds the same parameters (SHA-256 of the flat vector, gathered), Δ is finite and non-zero, and the
held-out loss fell. Throughput: the first round warms up, then ``--timed-rounds`` rounds (default 3) are
timed and the median taken. A speed-up is a ratio of two runs of this script, ``--devices N`` against
``--devices 1`` with the same preset, batch and steps: both sides then time the same thing (whole rounds,
θ in and Δ out included, after the same warm-up). Issue 8's published 1.69× / 1.74× divided one whole
second round by a steady-state figure from another script, which understates the gain (RESULTS.md (zr13)).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from securefed.runtime.config import load_run_config
from securefed.training.data import prepare_federated_data
from securefed.training.flat import flat_hash, get_flat
from securefed.training.models import build_model
from securefed.training.trainer import LocalTrainer, TrainConfig


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=2)
    # FSDP (sharded Δ, never one replica per rank) is benchmarks/gpu/fsdp.py (issue 17)
    ap.add_argument("--strategy", default="ddp", choices=["ddp"])
    ap.add_argument("--preset", default="125m")
    ap.add_argument("--run-preset", default="gpu-125m", help="run preset whose data section is used")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32, help="sequences per GPU per step")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--timed-rounds", type=int, default=3, help="rounds timed after the warm-up round (median)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    cfg = load_run_config(preset=args.run_preset, overrides=(f"data.seq_len={args.seq}",))
    data = prepare_federated_data(cfg.data, n_holders=cfg.federation.n_holders, seed=0, progress=False)
    rows = data.holder_train[0]
    strategy = args.strategy if args.devices > 1 else "auto"     # one device: the baseline of a speed-up
    tcfg = TrainConfig(local_steps=args.steps, batch_size=args.batch, lr=6e-4, warmup_steps=2,
                       devices=args.devices, strategy=strategy, eval_batch_size=16)
    model = build_model(args.preset, vocab_size=len(data.tokenizer), seq_len=args.seq, seed=0)
    trainer = LocalTrainer(model, tcfg)  # launches the other ranks
    fabric = trainer.fabric
    holder = trainer.new_holder(1, rows, seed=0, total_steps=(1 + max(1, args.timed_rounds)) * args.steps)
    theta0 = get_flat(trainer.raw_model)
    eval_rows = data.eval_global[:64]
    loss0 = trainer.evaluate(eval_rows)

    fabric.barrier()
    t = time.perf_counter()
    u1 = holder.train_round(theta0)
    _sync()
    t_first = time.perf_counter() - t
    theta = theta0 - u1.delta
    seconds = []
    for _ in range(max(1, args.timed_rounds)):
        fabric.barrier()
        t = time.perf_counter()
        u2 = holder.train_round(theta)
        _sync()
        seconds.append(time.perf_counter() - t)
        theta = theta - u2.delta
    t_round = statistics.median(seconds)
    loss2 = trainer.evaluate(eval_rows)

    h = torch.tensor(list(flat_hash(get_flat(trainer.raw_model))), dtype=torch.uint8, device=fabric.device)
    hashes = fabric.all_gather(h)
    same = bool((hashes == hashes[0]).all()) if hashes.ndim == 2 else True
    if fabric.global_rank == 0:
        res = {
            "devices": args.devices, "strategy": strategy, "preset": args.preset, "seq": args.seq,
            "batch_per_gpu": args.batch, "global_batch": args.batch * fabric.world_size, "steps": args.steps,
            "world_size": fabric.world_size, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "tokens_per_round": u2.tokens, "first_round_seconds": t_first, "timed_round_seconds": seconds,
            "round_seconds_median": t_round, "tokens_per_s": u2.tokens / t_round,
            "tokens_per_s_per_gpu": u2.tokens / t_round / fabric.world_size,
            "ranks_identical_after_round": same, "delta_norm": float(u2.delta.norm()),
            "delta_finite": bool(torch.isfinite(u2.delta).all()),
            "eval_loss_before": loss0, "eval_loss_after_rounds": loss2,
            "train_loss_first_round": u1.mean_loss, "train_loss_last_round": u2.mean_loss,
            "ok": same and math.isfinite(loss2) and loss2 < loss0 and float(u2.delta.norm()) > 0,
            "peak_mem_gib_rank0": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        }
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
