"""(a) Trainer throughput / MFU vs a plain PyTorch loop, same model / batch / seq len, one process.

A case is ``preset:batch:loop:fused:compile:sdpa:K[:seq]`` (seq: default --seq):
  loop     plain   — a plain loop: bf16 autocast, fused AdamW (0.9/0.95, wd 0.1), grad-norm clip 1.0
           trainer — HolderTrainer.train_round on Lightning Fabric (bf16-mixed), ONE round of K steps,
                     timed whole: θ_global in (host->device, set_flat), K steps, Δ formed on the device
                     and copied out into pinned memory
  fused    off | all | head   Liger kernels (securefed.training.fused; 'all' = loss + blocks)
  compile  none | blocks | model   regional compile of the decoder layers, or the whole model
  sdpa     auto | cudnn       attention kernel preference
  K        timed steps (after 3 warm-up steps / a 3-step warm-up round, which include compilation)
Model: the Llama-style preset (securefed.training.models, SDPA attention), vocab 32768, seq 2048,
random token ids (throughput does not depend on the text).

MFU = tokens/s · (6·N_matmul + 12·L·d·T) / 989e12  (N_matmul: parameters in matmuls, the LM head
included, the input embedding not; 12·L·d·T: attention scores and values, fwd+bwd, no causal
discount; 989e12: H100/H200 dense bf16 peak). ``mfu_6n`` omits the attention term.

    python benchmarks/gpu/throughput.py --out tp.jsonl \\
        --cases 125m:32:plain:off:none:auto:20,125m:64:trainer:head:blocks:auto:64

Each measurement is appended to --out as one JSON line when done (rerun skips cases already there);
--deadline (seconds) stops starting new cases; a failing case is recorded and the rest go on.
The last lines printed are a table and every trainer/plain pair's ratio (same case but the loop).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

PEAK_BF16 = 989e12


def matmul_params(model: torch.nn.Module) -> int:
    total = sum(p.numel() for p in model.parameters())
    if not model.config.tie_word_embeddings:
        total -= model.get_input_embeddings().weight.numel()  # a lookup, not a matmul
    return total


def flops_per_token(n_matmul: int, preset: str, seq: int) -> tuple[float, float]:
    from securefed.training.models import get_preset

    p = get_preset(preset)
    return 6.0 * n_matmul, 6.0 * n_matmul + 12.0 * p.n_layers * p.d_model * seq


def parse_case(text: str, seq: int = 2048) -> dict:
    parts = text.split(":")
    preset, batch, loop, fused, compile_, sdpa, k = parts[:7]
    assert loop in ("plain", "trainer") and fused in ("off", "all", "head")
    assert compile_ in ("none", "blocks", "model") and sdpa in ("auto", "cudnn")
    seq = int(parts[7]) if len(parts) > 7 else seq
    return dict(preset=preset, batch=int(batch), loop=loop, fused=fused, compile=compile_, sdpa=sdpa, k=int(k), seq=seq)


def case_key(c: dict) -> str:
    return ":".join(str(c[k]) for k in ("preset", "batch", "loop", "fused", "compile", "sdpa", "k", "seq"))


def _model(preset: str, vocab: int, seq: int):
    from securefed.training.models import build_model

    with torch.device("cuda"):  # initialise on the GPU: a 1.3B CPU init costs more than the timing
        return build_model(preset, vocab_size=vocab, seq_len=seq, seed=0)


def run_plain(c: dict, seq: int, vocab: int, warmup: int, data: torch.Tensor) -> dict:
    from securefed.training import fused

    model = _model(c["preset"], vocab, seq)
    if c["fused"] != "off":
        fused.apply_liger(model, blocks=c["fused"] == "all")
    fwd = model
    if c["compile"] == "blocks":
        fused.compile_blocks(model)
    elif c["compile"] == "model":
        fwd = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    b = c["batch"]
    pinned = data.pin_memory()

    def step(i: int) -> None:
        j = (i * b) % (data.shape[0] - b + 1)
        x = pinned[j : j + b].to("cuda", non_blocking=True)
        with fused.sdpa_context(c["sdpa"]):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(input_ids=x, labels=x).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    t_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(c["k"]):
        step(i)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "warmup_seconds": t_warm, "n_matmul": matmul_params(model)}


def run_trainer(c: dict, seq: int, vocab: int, warmup: int, data: torch.Tensor) -> dict:
    from securefed.training.flat import get_flat
    from securefed.training.trainer import LocalTrainer, TrainConfig

    model = _model(c["preset"], vocab, seq)
    cfg = TrainConfig(local_steps=c["k"], batch_size=c["batch"], warmup_steps=0, lr=1e-4,
                      compile=c["compile"] != "none", compile_scope="model" if c["compile"] == "model" else "blocks",
                      fused=c["fused"], sdpa_backend=c["sdpa"])
    trainer = LocalTrainer(model, cfg)
    holder = trainer.new_holder(1, data, seed=0, total_steps=10**6)
    theta = get_flat(trainer.raw_model)

    def round_(k: int):
        holder.local_steps = k
        t0 = time.perf_counter()
        upd = holder.train_round(theta)      # θ in, k steps, Δ out (pinned): one federated round
        torch.cuda.synchronize()
        return time.perf_counter() - t0, upd

    t_warm, upd = round_(warmup)             # compiles, allocates the pinned Δ buffer (cached after)
    del upd
    smalls = []
    for _ in range(3):                       # the round's fixed cost = t_small − 2 steps; median of 3 short rounds
        t, upd = round_(2)
        smalls.append(t)
        del upd
    t_small = sorted(smalls)[1]
    dt, upd = round_(c["k"])
    assert upd.delta.is_pinned() and torch.isfinite(upd.delta).all()
    per_step = (dt - t_small) / (c["k"] - 2)
    return {"seconds": dt, "warmup_seconds": t_warm, "n_matmul": matmul_params(trainer.raw_model),
            "fused_used": trainer.fused, "compiled_used": trainer.compiled, "params": int(theta.numel()),
            "mean_loss": upd.mean_loss, "step_seconds": per_step, "round_io_seconds": t_small - 2 * per_step}


def table(rows: list[dict]) -> str:
    lines = [f"{'case':48s} {'tok/s':>9s} {'MFU':>6s} {'round':>9s} {'io s':>5s} {'GiB':>5s}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['case']:48s} ERROR {r['error'][:70]}")
        else:
            lines.append(f"{r['case']:48s} {r['tokens_per_s']:9.0f} {100 * r['mfu']:5.1f}% {r['round_tokens_per_s']:9.0f} "
                         f"{r.get('round_io_seconds', 0):5.2f} {r['peak_mem_gib']:5.1f}")
    by = {r["case"]: r for r in rows if "error" not in r}
    for key, r in by.items():
        c = parse_case(key)
        if c["loop"] == "trainer":
            other = case_key(dict(c, loop="plain"))
            if other in by:
                lines.append(f"round/plain {key}: {r['round_tokens_per_s'] / by[other]['tokens_per_s']:.3f} "
                             f"(steady {r['tokens_per_s'] / by[other]['tokens_per_s']:.3f})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", required=True, help="comma-separated preset:batch:loop:fused:compile:sdpa:K")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds; start no new case after it")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t_start = time.perf_counter()
    out = Path(args.out)
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    done = {r["case"] for r in rows}
    try:
        import liger_kernel
        liger_version = getattr(liger_kernel, "__version__", None)
        if liger_version is None:
            from importlib.metadata import version
            liger_version = version("liger-kernel")
    except Exception:
        liger_version = None
    gen = torch.Generator().manual_seed(0)
    for text in args.cases.split(","):
        c = parse_case(text, args.seq)
        seq = c["seq"]
        key = case_key(c)
        if key in done:
            continue
        if time.perf_counter() - t_start > args.deadline:
            print(f"deadline: skipping {key}", flush=True)
            continue
        data = torch.randint(0, args.vocab, (4 * c["batch"], seq), generator=gen)
        torch.cuda.reset_peak_memory_stats()
        try:
            r = (run_trainer if c["loop"] == "trainer" else run_plain)(c, seq, args.vocab, args.warmup, data)
            tok = c["batch"] * seq
            f6, fattn = flops_per_token(r["n_matmul"], c["preset"], seq)
            # steady state: per-step time (the trainer's from two rounds' difference); round: K steps
            # with θ in and Δ out included (= steady for the plain loop, which has no round)
            step = r.get("step_seconds", r["seconds"] / c["k"])
            r.update(tokens_per_s=tok / step, mfu=fattn * tok / step / PEAK_BF16, mfu_6n=f6 * tok / step / PEAK_BF16,
                     round_tokens_per_s=c["k"] * tok / r["seconds"])
        except Exception as e:  # record and go on: one failing case must not lose the others
            r = {"error": f"{type(e).__name__}: {e}"[:800]}
        r.update(case=key, **c, vocab=args.vocab, peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
                 device=torch.cuda.get_device_name(), torch=torch.__version__, liger=liger_version,
                 wall_since_start=time.perf_counter() - t_start)
        rows.append(r)
        with out.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        print(json.dumps(r), flush=True)
        gc.collect()
        torch.cuda.empty_cache()
        torch._dynamo.reset()
    print(table(rows), flush=True)


if __name__ == "__main__":
    main()
