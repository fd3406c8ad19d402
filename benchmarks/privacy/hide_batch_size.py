"""Issue 15 (PV-30): does a DP-SGD step's time show its Poisson batch size, with and without
train.dp_sgd.hide_batch_size (protocols/dp.md §10.4)?

Per mode, the trainer's own HolderTrainer runs STEPS DP-SGD steps (ghost clipping, slices of MICRO) of one model on
one holder's rows; each step's Poisson batch size and wall time are recorded. Reported: the Pearson correlation of
time with batch size, the slope (seconds per record) and a least-squares estimate of each step's batch size from its
time alone (what a coordinator timing replies could read), and the median step time of each mode (hiding's cost).

    python benchmarks/privacy/hide_batch_size.py --out benchmarks/privacy/raw/hide_batch_size/cpu.json
    (CPU, tiny Llama, ≈ 1 min; --size 20m --vocab 32768 --seq 1024 --batch 128 --micro 32 on a GPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def run_mode(hide: bool, a: argparse.Namespace) -> dict:
    import torch

    from securefed.training.config import DPSGDConfig, TrainConfig
    from securefed.training.models import build_model
    from securefed.training.trainer import LocalTrainer

    cuda = torch.cuda.is_available()
    cfg = TrainConfig(accelerator="cuda" if cuda else "cpu", precision="bf16-mixed" if cuda else "32-true",
                      batch_size=a.batch, local_steps=a.steps, fused="off", lr=1e-3,
                      dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0, clipping="ghost",
                                         micro_batch_size=a.micro, hide_batch_size=hide))
    trainer = LocalTrainer(build_model(a.size, vocab_size=a.vocab, seq_len=a.seq, seed=0), cfg)
    data = torch.randint(0, a.vocab, (a.rows, a.seq), generator=torch.Generator().manual_seed(0))
    h = trainer.new_holder(0, data, seed=0, total_steps=a.steps + a.warmup, dp_secret_seed=11)
    sizes, times = [], []
    orig_draw, orig_ghost = h._dp_draw, trainer._ghost_step
    pending: dict = {}

    def draw():
        mask = orig_draw()
        pending["n"] = int(mask.sum())
        return mask

    def timed_ghost(*args, **kw):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = orig_ghost(*args, **kw)
        if cuda:
            torch.cuda.synchronize()
        sizes.append(pending["n"])
        times.append(time.perf_counter() - t)
        return out

    h._dp_draw = draw
    trainer._ghost_step = trainer._step_fn = timed_ghost
    flat = torch.cat([p.detach().reshape(-1) for p in trainer.raw_model.parameters()]).float()
    h.local_steps = a.warmup
    h.train_round(flat)                       # warm-up: allocator, kernels
    sizes.clear(), times.clear()
    h.local_steps = a.steps
    h.train_round(flat)
    # empty draws take _dp_empty_step without hiding (not timed above): they are the fastest steps of all
    n = len(sizes)
    mx, my = statistics.fmean(sizes), statistics.fmean(times)
    sxx = sum((x - mx) ** 2 for x in sizes)
    sxy = sum((x - mx) * (y - my) for x, y in zip(sizes, times))
    syy = sum((y - my) ** 2 for y in times)
    r = sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else 0.0
    slope = sxy / sxx if sxx > 0 else 0.0
    # a coordinator's best linear estimate of each batch size from its step's time alone (least squares of batch on
    # time, fitted on this very run: its best case); its error is the batch's sd when time says nothing
    est = [mx + sxy / syy * (y - my) for y in times] if syy > 0 else [mx] * n
    rmse = (sum((e - x) ** 2 for e, x in zip(est, sizes)) / n) ** 0.5
    return {"hide_batch_size": hide, "steps_timed": n, "padded_rows": h.dp_padded_rows,
            "batch_mean": mx, "batch_sd": statistics.pstdev(sizes), "batch_min": min(sizes), "batch_max": max(sizes),
            "step_s_mean": my, "step_s_median": statistics.median(times), "step_s_sd": statistics.pstdev(times),
            "pearson_r_time_vs_batch": r,
            "slope_s_per_record": slope, "batch_from_time_rmse": rmse,
            "pairs": [[x, round(y, 6)] for x, y in zip(sizes, times)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32, help="expected Poisson batch (q = batch / rows)")
    ap.add_argument("--micro", type=int, default=8, help="ghost slice")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = [run_mode(hide, a) for hide in (False, True)]
    import torch

    out = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
           "args": vars(a), "modes": rows,
           "hidden_over_plain_step_time_median": rows[1]["step_s_median"] / rows[0]["step_s_median"]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    for m in rows:
        print(f"hide={m['hide_batch_size']!s:5}  batch {m['batch_min']}–{m['batch_max']} (mean {m['batch_mean']:.1f}, "
              f"sd {m['batch_sd']:.1f}), padded {m['padded_rows']}: step median {m['step_s_median'] * 1e3:.1f} ms "
              f"(sd {m['step_s_sd'] * 1e3:.2f}), r(time, batch) {m['pearson_r_time_vs_batch']:+.3f}, batch read off "
              f"the time ± {m['batch_from_time_rmse']:.1f} records")
    print(f"hidden / plain median step time: {out['hidden_over_plain_step_time_median']:.2f}; wrote {a.out}")


if __name__ == "__main__":
    main()
