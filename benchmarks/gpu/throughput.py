"""(a) Local-trainer throughput and MFU vs a plain PyTorch loop, same model / batch / seq len.

Both sides: the Llama-style preset from securefed.training.models (SDPA attention), bf16 autocast,
fused AdamW (betas 0.9/0.95, wd 0.1), gradient-norm clip 1.0, random token ids (throughput does not
depend on the text). "ours" is HolderTrainer.train_round on Lightning Fabric (bf16-mixed), timed over
one round of K steps *including* the per-round θ load (set_flat) and Δ computation (get_flat); the
steady-state column subtracts that per-round flat-copy time, measured separately.

FLOPs per token (reported both ways):
    6·N                    N = parameters doing matmuls (lm_head counted, input embedding not)
    6·N + 12·L·d·T         + attention scores and values (QKᵀ and AV, fwd+bwd, no causal discount)
MFU = FLOPs/token · tokens/s / 989e12 (H200 dense bf16 peak).

    python benchmarks/gpu/throughput.py --out results.jsonl --cases 125m:32,350m:16,1.3b:8 --modes eager,compile

Each measurement is appended to --out as one JSON line as soon as it is done (resumable: cases already
in the file are skipped); --deadline stops starting new cases after that many seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from securefed.training.flat import get_flat, set_flat
from securefed.training.models import build_model, get_preset
from securefed.training.trainer import LocalTrainer, TrainConfig

PEAK_BF16 = 989e12


def matmul_params(model: torch.nn.Module) -> int:
    total = sum(p.numel() for p in model.parameters())
    if not model.config.tie_word_embeddings:
        total -= model.get_input_embeddings().weight.numel()  # a lookup, not a matmul
    return total


def flops_per_token(n_matmul: int, preset: str, seq: int) -> tuple[float, float]:
    p = get_preset(preset)
    return 6.0 * n_matmul, 6.0 * n_matmul + 12.0 * p.n_layers * p.d_model * seq


def _sync() -> None:
    torch.cuda.synchronize()


def plain(preset: str, batch: int, seq: int, vocab: int, steps: int, warmup: int, compile_: bool, data) -> dict:
    with torch.device("cuda"):  # initialise on the GPU: a 1.3B CPU init costs more than the timing
        model = build_model(preset, vocab_size=vocab, seq_len=seq, seed=0)
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step(i: int) -> None:
        x = data[(i * batch) % (data.shape[0] - batch):][:batch].cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    _sync()
    t_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync()
    dt = time.perf_counter() - t0
    n = matmul_params(model)
    del model, fwd, opt
    return {"tokens_per_s": steps * batch * seq / dt, "seconds": dt, "warmup_seconds": t_warm, "n_matmul": n}


def ours(preset: str, batch: int, seq: int, vocab: int, steps: int, warmup: int, compile_: bool, data) -> dict:
    with torch.device("cuda"):
        model = build_model(preset, vocab_size=vocab, seq_len=seq, seed=0)
    cfg = TrainConfig(local_steps=steps, batch_size=batch, warmup_steps=0, lr=1e-4, compile=compile_)
    trainer = LocalTrainer(model, cfg)
    holder = trainer.new_holder(1, data, seed=0, total_steps=10**6)
    theta = get_flat(trainer.raw_model)
    t0 = time.perf_counter()
    holder.local_steps = warmup
    holder.train_round(theta)
    _sync()
    t_warm = time.perf_counter() - t0
    holder.local_steps = steps
    t0 = time.perf_counter()
    holder.train_round(theta)
    _sync()
    dt = time.perf_counter() - t0
    # the per-round flat copies alone (θ in, θ out), what a round costs besides its K steps
    t0 = time.perf_counter()
    set_flat(trainer.raw_model, theta)
    get_flat(trainer.raw_model)
    _sync()
    t_flat = time.perf_counter() - t0
    n = matmul_params(trainer.raw_model)
    del trainer, holder, model
    return {"n_matmul": n, "tokens_per_s": steps * batch * seq / dt, "seconds": dt, "warmup_seconds": t_warm,
            "flat_copy_seconds": t_flat, "steady_tokens_per_s": steps * batch * seq / max(dt - t_flat, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="125m:32,1.3b:8,350m:16", help="preset:batch,...")
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (0: 20 / 15 / 10 by size)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds; start no new case after it")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t_start = time.perf_counter()
    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["preset"], r["batch"], r["mode"], r["loop"]))
    gen = torch.Generator().manual_seed(0)
    for case in args.cases.split(","):
        preset, batch = case.split(":")
        batch = int(batch)
        steps = args.steps or {"125m": 20, "350m": 15}.get(preset, 10)
        data = torch.randint(0, args.vocab, (4 * batch, args.seq), generator=gen)
        for mode in args.modes.split(","):
            for loop, fn in (("plain", plain), ("securefed", ours)):
                if (preset, batch, mode, loop) in done:
                    continue
                if time.perf_counter() - t_start > args.deadline:
                    print(f"deadline: skipping {preset} {mode} {loop}", flush=True)
                    continue
                torch.cuda.reset_peak_memory_stats()
                try:
                    r = fn(preset, batch, args.seq, args.vocab, steps, args.warmup, mode == "compile", data)
                except Exception as e:  # record and go on: one failing case must not lose the others
                    r = {"error": f"{type(e).__name__}: {e}"[:500]}
                r.update(preset=preset, batch=batch, seq=args.seq, vocab=args.vocab, mode=mode, loop=loop,
                         steps=steps, peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
                         device=torch.cuda.get_device_name(), torch=torch.__version__)
                if "n_matmul" in r:
                    f6, fattn = flops_per_token(r["n_matmul"], preset, args.seq)
                    r.update(mfu_6n=f6 * r["tokens_per_s"] / PEAK_BF16, mfu_6n_attn=fattn * r["tokens_per_s"] / PEAK_BF16)
                with out.open("a") as fh:
                    fh.write(json.dumps(r) + "\n")
                print(json.dumps(r), flush=True)
                gc.collect()
                torch.cuda.empty_cache()
                torch._dynamo.reset()


if __name__ == "__main__":
    main()
