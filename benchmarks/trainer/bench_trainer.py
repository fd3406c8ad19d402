"""Local trainer throughput vs a plain PyTorch loop on the same model, batch and sequence length.

Both sides: same Llama-style model from the preset, AdamW, gradient-norm clip 1.0, same precision
(fp32 on CPU, bf16 autocast on CUDA). The securefed side is HolderTrainer.train_round (Lightning
Fabric), which also loads θ_global and computes Δ each round: that per-round overhead is included.
Runs alternate (plain, ours, plain, ours, ...) so drift hits both; we report the median tokens/s of
each and their ratio.

    python benchmarks/trainer/bench_trainer.py --preset tiny --batch 16 --seq 128 --steps 24 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from securefed.training.flat import get_flat
from securefed.training.models import build_model, count_parameters
from securefed.training.trainer import LocalTrainer, TrainConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(model, data, *, steps, batch, device, lr, autocast_dtype):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")
    model.train()
    _sync(device)
    t = time.perf_counter()
    for i in range(steps):
        x = data[(i * batch) % (data.shape[0] - batch):][:batch].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return steps * batch * data.shape[1] / (time.perf_counter() - t)


def ours(trainer, holder, theta, *, steps, batch, seq):
    device = trainer.fabric.device
    _sync(device)
    t = time.perf_counter()
    holder.train_round(theta)
    _sync(device)
    return steps * batch * seq / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    autocast_dtype = torch.bfloat16 if cuda else None
    data = torch.randint(0, args.vocab, (max(4 * args.batch, 64), args.seq), generator=torch.Generator().manual_seed(0))

    plain_model = build_model(args.preset, vocab_size=args.vocab, seq_len=args.seq, seed=0).to(device)
    cfg = TrainConfig(local_steps=args.steps, batch_size=args.batch, warmup_steps=0, lr=1e-3)
    our_model = build_model(args.preset, vocab_size=args.vocab, seq_len=args.seq, seed=0)
    trainer = LocalTrainer(our_model, cfg)
    holder = trainer.new_holder(1, data, seed=0, total_steps=10**6)
    theta = get_flat(trainer.raw_model)

    # warm-up both (allocator, kernels)
    plain_loop(plain_model, data, steps=2, batch=args.batch, device=device, lr=1e-3, autocast_dtype=autocast_dtype)
    holder.local_steps = 2
    ours(trainer, holder, theta, steps=2, batch=args.batch, seq=args.seq)
    holder.local_steps = args.steps
    p, o = [], []
    for _ in range(args.repeats):
        p.append(plain_loop(plain_model, data, steps=args.steps, batch=args.batch, device=device, lr=1e-3,
                            autocast_dtype=autocast_dtype))
        o.append(ours(trainer, holder, theta, steps=args.steps, batch=args.batch, seq=args.seq))
    res = {
        "preset": args.preset, "params": count_parameters(plain_model), "batch": args.batch, "seq": args.seq,
        "steps_per_round": args.steps, "repeats": args.repeats, "device": torch.cuda.get_device_name() if cuda else
        f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
        "plain_tokens_per_s": statistics.median(p), "securefed_tokens_per_s": statistics.median(o),
        "ratio": statistics.median(o) / statistics.median(p), "plain_all": p, "securefed_all": o,
    }
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
