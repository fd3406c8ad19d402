"""Issue 17: one holder on one GPU vs DDP vs FSDP over the GPUs of a host, and 8 holders on 8 GPUs (Ray).

    python benchmarks/gpu/fsdp.py all --gpus 8 --gib 139 --out benchmarks/gpu/fsdp.json   # every case below
    python benchmarks/gpu/fsdp.py ray --gpus 8 --out benchmarks/gpu/fsdp_ray.json        # the Ray round
    python benchmarks/gpu/fsdp.py all --tiny --out /tmp/fsdp.json                         # CPU, 2 processes

Cases (``all``; each its own process group, run one after another as subprocesses of this driver):
  1.3b on one GPU, 1.3b under DDP on N GPUs, 1.3b under FSDP on N GPUs, and for each strategy the
  largest preset (7b, 2.7b, 1.3b) whose computed memory (securefed.training.memory, + 8 GiB for the CUDA
  context and fragmentation) fits --gib; a case that fails (out of memory) is recorded with its error
  and the next smaller preset is tried. FSDP tries activation checkpointing off first, then on.
A case (``train``) is HolderTrainer.train_round — the holder's real inner loop — on random token ids
(throughput does not depend on the text), one warm-up round (compilation), then three timed rounds of K
steps (the median reported; K = 32 by default); θ goes in and Δ comes out as the holder does it (under FSDP: shard by shard, never gathered).

Row (``--out``, a JSON list; reruns replace rows of the same case):
  {"strategy", "gpus", "params", "tokens_per_s", "mfu", "peak_gib_per_gpu", ...extras}
  MFU = tokens/s · (6·N_matmul + 12·L·d·T) / (989e12 · gpus)   (as benchmarks/gpu/throughput.py)
  peak_gib_per_gpu: the largest torch.cuda.max_memory_allocated over the ranks (None on CPU)

``ray``: `securefed simulate --backend ray --ray-gpus-per-holder 1` with the gpu-125m preset and 8
holders (one per GPU), 2 rounds; the row has each round's seconds from metrics.jsonl.

--tiny: the same logic on CPU (gloo, 2 processes, the tiny preset, short rows); Ray: 4 CPU holders on
the demo data. It checks the plumbing, not the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEAK_BF16 = 989e12          # H100/H200 dense bf16
CONTEXT_GIB = 8.0           # CUDA context, allocator fragmentation, compile workspaces: not in the estimate
VOCAB, SEQ = 32768, 2048
BATCH = {"1.3b": 8, "2.7b": 8, "7b": 4, "tiny": 4}        # sequences per GPU per step
LARGEST_FIRST = ("7b", "2.7b", "1.3b")
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ pure (CPU-tested)
def flops_per_token(preset: str, vocab: int, seq: int) -> float:
    """6·N_matmul + 12·L·d·T: the matmul parameters (head included, input embedding not) and attention."""
    from securefed.training.config import get_preset
    from securefed.training.memory import parameters

    p = get_preset(preset)
    total, _, _ = parameters(p, vocab)
    n_matmul = total - (0 if p.tie_embeddings else vocab * p.d_model)
    return 6.0 * n_matmul + 12.0 * p.n_layers * p.d_model * seq


def make_row(*, strategy: str, gpus: int, preset: str, params: int, tokens: int, seconds: float,
             flops: float, peak_gib: float | None, **extra) -> dict:
    tps = tokens / seconds
    return {"strategy": strategy, "gpus": gpus, "params": params, "tokens_per_s": tps,
            "mfu": tps * flops / (PEAK_BF16 * gpus), "peak_gib_per_gpu": peak_gib, "preset": preset, **extra}


def fits(preset: str, strategy: str, gpus: int, *, gib: float, ac: bool, vocab: int = VOCAB, seq: int = SEQ) -> bool:
    from securefed.training.memory import estimate

    e = estimate(preset, vocab_size=vocab, seq_len=seq, batch_per_gpu=BATCH[preset], gpus=gpus,
                 strategy=strategy, activation_checkpointing=ac)
    return e.total / 2**30 + CONTEXT_GIB <= gib


def plan(gpus: int, gib: float, *, tiny: bool = False) -> list[list[dict]]:
    """Groups of cases: a group's cases are tried in order until one succeeds (largest first)."""
    if tiny:
        base = {"preset": "tiny", "seq": 32, "vocab": 512, "steps": 2}
        return [[dict(base, strategy=s, gpus=1 if s == "single" else gpus, ac=False, role="1.3b-equivalent")]
                for s in ("single", "ddp", "fsdp")] + [[dict(base, strategy="fsdp", gpus=gpus, ac=True, role="largest")]]
    base = {"seq": SEQ, "vocab": VOCAB, "steps": 32}
    groups = [[dict(base, preset="1.3b", strategy=s, gpus=1 if s == "single" else gpus, ac=False, role="1.3b")]
              for s in ("single", "ddp", "fsdp")]
    for s in ("single", "ddp", "fsdp"):
        n = 1 if s == "single" else gpus
        group = [dict(base, preset=p, strategy=s, gpus=n, ac=ac, role="largest")
                 for p in LARGEST_FIRST for ac in (False, True) if fits(p, s, n, gib=gib, ac=ac)]
        if group and group[0]["preset"] != "1.3b":
            groups.append(group)
    return groups


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    """--out as a JSON list; a row replaces an earlier one of the same (strategy, gpus, preset, ac)."""
    key = lambda r: (r.get("strategy"), r.get("gpus"), r.get("preset"), r.get("activation_checkpointing"))
    old = json.loads(path.read_text()) if path.exists() else []
    new_keys = {key(r) for r in rows}
    out = [r for r in old if key(r) not in new_keys] + rows
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


# ------------------------------------------------------------------------------------ one case (launched)
def train_case(a: argparse.Namespace) -> None:
    import torch

    from securefed.training.flat import get_flat
    from securefed.training.models import build_model
    from securefed.training.trainer import LocalTrainer, TrainConfig

    cuda = torch.cuda.is_available() and not a.cpu
    strategy = {"single": "auto", "ddp": "ddp", "fsdp": "fsdp"}[a.strategy]
    devices = 1 if a.strategy == "single" else a.gpus
    model = build_model(a.preset, vocab_size=a.vocab, seq_len=a.seq, seed=0)
    theta0 = get_flat(model)                 # θ as the coordinator would send it (host memory)
    params = theta0.numel()
    cfg = TrainConfig(local_steps=a.steps, batch_size=a.batch, lr=2e-4, warmup_steps=1,
                      accelerator="cuda" if cuda else "cpu", devices=devices, strategy=strategy,
                      activation_checkpointing=a.ac, compile=cuda, fused="auto")
    trainer = LocalTrainer(model, cfg)       # launches the other ranks (devices > 1)
    fabric = trainer.fabric
    world = fabric.world_size
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, a.vocab, (a.batch * world * a.steps * 2, a.seq), generator=g)
    holder = trainer.new_holder(1, rows, seed=0, total_steps=4 * a.steps)

    def one_round(theta):
        fabric.barrier()
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        u = holder.train_round(theta)
        if cuda:
            torch.cuda.synchronize()
        fabric.barrier()
        return u, time.perf_counter() - t

    u1, t1 = one_round(theta0)               # warm-up: compilation, allocator, NCCL communicators
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rounds = []                              # three measured rounds, the median reported (one 8-step round of
    for _ in range(3):                       # ≈ 3 s, 0.9 s of it θ in / Δ out, was too short a sample: (zr13))
        u2, t = one_round(theta0)
        rounds.append(t)
    t2 = sorted(rounds)[1]
    peak = torch.tensor(torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0, device=fabric.device)
    peak = float(fabric.all_reduce(peak, reduce_op="max"))
    delta_sq = u2.shard.sq_norm_local() if u2.shard is not None else float(u2.delta.double().pow(2).sum())
    finite = torch.tensor(float(delta_sq == delta_sq and delta_sq != float("inf")), device=fabric.device)
    finite = bool(float(fabric.all_reduce(finite, reduce_op="min")))
    if fabric.global_rank == 0:
        from securefed.training.memory import estimate

        est = estimate(a.preset, vocab_size=a.vocab, seq_len=a.seq, batch_per_gpu=a.batch, gpus=devices,
                       strategy=a.strategy, activation_checkpointing=a.ac)
        row = make_row(strategy=a.strategy, gpus=devices, preset=a.preset, params=params, tokens=u2.tokens,
                       seconds=t2, flops=flops_per_token(a.preset, a.vocab, a.seq), peak_gib=peak if cuda else None,
                       activation_checkpointing=a.ac, batch_per_gpu=a.batch, seq=a.seq, steps=a.steps,
                       warmup_round_s=t1, round_s=t2, rounds_s=rounds, estimate_gib_per_gpu=est.total / 2**30,
                       delta_finite=finite, train_loss=u2.mean_loss,
                       device=torch.cuda.get_device_name() if cuda else "cpu")
        Path(a.row).write_text(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------ drivers
def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def run_all(a: argparse.Namespace) -> list[dict]:
    rows = []
    for group in plan(a.gpus, a.gib, tiny=a.tiny):
        for case in group:
            with tempfile.TemporaryDirectory() as tmp:
                row_file = Path(tmp) / "row.json"
                cmd = [sys.executable, __file__, "train", "--strategy", case["strategy"], "--gpus", str(case["gpus"]),
                       "--preset", case["preset"], "--seq", str(case["seq"]), "--vocab", str(case["vocab"]),
                       "--steps", str(case["steps"]), "--batch", str(BATCH[case["preset"]]), "--row", str(row_file)]
                cmd += ["--ac"] if case["ac"] else []
                cmd += ["--cpu"] if a.tiny else []
                t = time.perf_counter()
                p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=a.case_timeout)
                if p.returncode == 0 and row_file.exists():
                    row = dict(json.loads(row_file.read_text()), role=case["role"])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    break
                err = (p.stderr or "").strip().splitlines()[-1:] or [f"exit {p.returncode}"]
                print(f"case {case} failed after {time.perf_counter() - t:.0f}s: {err[0]}", file=sys.stderr, flush=True)
                rows.append({"strategy": case["strategy"], "gpus": case["gpus"], "preset": case["preset"],
                             "activation_checkpointing": case["ac"], "role": case["role"], "error": err[0][-500:]})
    merge_rows(Path(a.out), rows)
    return rows


def run_ray(a: argparse.Namespace) -> dict:
    """One federation of n holders, one per GPU, on Ray; each round's seconds from metrics.jsonl."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        if a.tiny:
            sets = ["federation.n_holders=4", "federation.rounds=2", "baseline=false", "data.max_sources=4",
                    "data.max_bytes_per_source=30000", "data.vocab_size=512", "data.seq_len=32", "train.local_steps=2",
                    "train.batch_size=4", "train.accelerator=cpu"]
            flags = ["--preset", "demo", "--backend", "ray"]
        else:
            sets = [f"federation.n_holders={a.gpus}", "federation.rounds=2", "baseline=false"]
            flags = ["--preset", "gpu-125m", "--backend", "ray", "--ray-gpus-per-holder", "1"]
        cmd = [sys.executable, "-c", "import sys; from securefed.cli import main; sys.exit(main(sys.argv[1:]))",
               "simulate", *flags, "--out", str(out), "--quiet", *[x for s in sets for x in ("--set", s)]]
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=a.case_timeout)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            row = {"ray": True, "error": (p.stderr.strip().splitlines() or ["?"])[-1][-500:]}
        else:
            metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            n = int(sets[0].split("=")[1])
            row = {"ray": True, "holders": n, "gpus": 0 if a.tiny else a.gpus, "preset": "tiny" if a.tiny else "125m",
                   "round_seconds": [m["seconds"] for m in metrics], "wall_seconds": wall,
                   "tokens_per_round": metrics[-1].get("tokens_seen", 0) // max(1, len(metrics))}
    print(json.dumps(row), flush=True)
    Path(a.out).write_text(json.dumps(row, indent=1) + "\n")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="one case (Fabric launches its ranks)")
    tr.add_argument("--strategy", choices=["single", "ddp", "fsdp"], required=True)
    tr.add_argument("--gpus", type=int, default=1)
    tr.add_argument("--preset", default="1.3b")
    tr.add_argument("--seq", type=int, default=SEQ)
    tr.add_argument("--vocab", type=int, default=VOCAB)
    tr.add_argument("--batch", type=int, default=8, help="sequences per GPU per step")
    tr.add_argument("--steps", type=int, default=32)
    tr.add_argument("--ac", action="store_true", help="activation checkpointing")
    tr.add_argument("--cpu", action="store_true")
    tr.add_argument("--row", required=True)
    for name in ("all", "ray"):
        p = sub.add_parser(name)
        p.add_argument("--gpus", type=int, default=8)
        p.add_argument("--gib", type=float, default=139.0, help="memory of one GPU")
        p.add_argument("--tiny", action="store_true", help="CPU plumbing check (2 processes, tiny preset)")
        p.add_argument("--case-timeout", type=int, default=1800)
        p.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cmd == "train":
        train_case(a)
    elif a.cmd == "all":
        if a.tiny:
            a.gpus = 2
        run_all(a)
    else:
        run_ray(a)


if __name__ == "__main__":
    main()
