"""The fixed CPU-side cost of an in-process federated round at a realistic θ size, with training made negligible
(benchmarks/round_overhead.md): `securefed simulate --preset gpu-75m` on the stdlib corpus, 4 holders, plain
aggregation, K = 1 step of 1 row of 32 tokens, run in this process under cProfile.

    .venv/bin/python benchmarks/round_overhead.py --label before --out benchmarks/raw/round_overhead/before-1.json
    .venv/bin/python benchmarks/round_overhead.py --summarize benchmarks/raw/round_overhead/*.json
    .venv/bin/python benchmarks/round_overhead.py --items 52180160 --out benchmarks/raw/round_overhead/items.json

Writes one JSON: the metrics rows' stage_seconds per round, their per-stage minimum over rounds 2..R (round 1
warms caches and allocators; the last round also evaluates, a lap of its own), and the cumulative seconds per
round of the functions that make up the non-training work (cProfile, the whole run divided by the rounds).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # this checkout's securefed, not whichever one the virtual environment installed

SETTINGS = [
    "data.source=stdlib", "data.tokenizer=train", "data.seq_len=32", "data.max_sources=8",
    "data.max_bytes_per_source=100000", "data.eval_fraction=0.01", "train.local_steps=1", "train.batch_size=1",
    "train.compile=false", "train.warmup_steps=0", "federation.eval_every=1000", "aggregation.mode=plain",
    "baseline=false", "outer.momentum_warmup=0",
]

# functions whose cumulative time is reported (file suffix, function name): what a round spends outside the step
WATCH = [
    ("federation/coordinator.py", "run_round"),
    ("federation/holder.py", "model_sha256"),
    ("federation/holder.py", "_on_model"),
    ("federation/holder.py", "_on_plan"),
    ("federation/holder.py", "_on_plain_upload"),
    ("federation/aggregation.py", "plain_sum"),
    ("federation/coordinator.py", "_checkpoint"),
    ("federation/coordinator.py", "_save_model"),
    ("training/trainer.py", "train_round"),
    ("training/trainer.py", "_train_step"),
    ("federation/holder.py", "end_round"),
    ("federation/holder.py", "announce_model"),
    ("training/flat.py", "set_flat"),
    ("training/outer.py", "step"),
    ("privacy/clipping.py", "l2_clip"),
    ("privacy/clipping.py", "sum_sq_f64"),
    ("federation/holder.py", "_all_finite"),
]


def items(params: int, holders: int, repeat: int, out: str) -> None:
    """Each non-training host step of a plain in-process round, alone, at ``params`` coordinates: the minimum of
    ``repeat`` timings (robust to a shared machine's other load), and the seconds per round (× how often a round
    runs it) of the code before and after this change. Uses the project's own functions where the step is one."""
    import hashlib

    import numpy as np
    import torch

    from securefed.federation import holder as holder_mod
    from securefed.primitives.quantize import sum_sq_f64
    from securefed.primitives.spans import for_spans
    from securefed.training.outer import OuterOptimizer
    from securefed.training.config import OuterConfig

    rng = np.random.default_rng(0)
    theta = (rng.standard_normal(params) * 0.02).astype(np.float32)
    delta = (rng.standard_normal(params) * 1e-4).astype(np.float32)
    theta_b, delta_b = theta.tobytes(), delta.tobytes()
    total = np.zeros(params)

    def best(fn) -> float:
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return round(min(ts), 4)

    theta_t = torch.from_numpy(theta)

    def to_model():   # train_round's θ copy (the CPU device): .to(copy=True), as set_flat's source
        theta_t.to("cpu", torch.float32, copy=True)

    def sgd_step():   # OuterOptimizer.step less its finiteness check
        outer.theta.grad = mean
        outer.opt.step()
        outer.theta.grad = None

    outer = OuterOptimizer(torch.from_numpy(theta), OuterConfig(name="nesterov", lr=0.7, momentum=0.9))
    mean = torch.from_numpy(delta.copy())
    rows = [  # (item, who, per round, before s, after s)
        ("θ to bytes + SHA-256 (coordinator)", "C", 1,
         best(lambda: hashlib.sha256(theta.tobytes()).hexdigest()),
         best(lambda: holder_mod.announce_model(theta))),
        ("SHA-256 of θ received (H4)", "H", holders, best(lambda: hashlib.sha256(theta_b).hexdigest()), None),
        ("copy of read-only θ (astype)", "H", holders, best(lambda: np.frombuffer(theta_b, "<f4").astype(np.float32)),
         None),
        ("θ copied for the model (.to copy=True)", "H", holders, best(to_model), "same"),
        ("Δ finite? (np.isfinite)", "H", holders, best(lambda: np.isfinite(delta).all()), "same"),
        ("‖Δ‖ for the clip (sum_sq_f64)", "H", holders, best(lambda: sum_sq_f64(delta)), "same"),
        ("upload Δ to bytes", "H", holders, best(lambda: delta.tobytes()), "same"),
        ("‖Δ‖ again at the coordinator (sum_sq_f64)", "C", holders,
         best(lambda: sum_sq_f64(np.frombuffer(delta_b, "<f4"))), "same"),
        ("Σ += Δ in float64 (for_spans)", "C", holders,
         best(lambda: for_spans(params, lambda lo, hi: np.add(total[lo:hi], delta[lo:hi], out=total[lo:hi]))), "same"),
        ("Σ to float32", "C", 1, best(lambda: total.astype(np.float32)), "same"),
        ("noise_plain_sum copy (privacy none)", "C", 1, best(lambda: delta.copy()), None),
        ("outer: torch.isfinite(mean).all()", "C", 1, best(lambda: bool(torch.isfinite(mean).all())),
         best(lambda: bool(np.isfinite(mean.numpy()).all()))),
        ("outer: Nesterov SGD step", "C", 1, best(sgd_step), "same"),
    ]
    table = []
    for item, who, n, before, after in rows:
        after = before if after == "same" else (0.0 if after is None else after)
        table.append({"item": item, "who": who, "times_per_round": n, "before_s": before, "after_s": after,
                      "before_per_round": round(n * before, 3), "after_per_round": round(n * after, 3)})
    res = {"params": params, "theta_mb": round(4 * params / 1e6, 1), "holders": holders, "repeat": repeat,
           "items": table, "before_per_round": round(sum(r["before_per_round"] for r in table), 3),
           "after_per_round": round(sum(r["after_per_round"] for r in table), 3)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"| item (P = {params:,}, {res['theta_mb']} MB) | who | × per round | before s | after s | before s/round "
          "| after s/round |\n|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['item']} | {r['who']} | {r['times_per_round']} | {r['before_s']:.3f} | {r['after_s']:.3f} | "
              f"{r['before_per_round']:.3f} | {r['after_per_round']:.3f} |")
    print(f"| **sum** | | | | | **{res['before_per_round']:.3f}** | **{res['after_per_round']:.3f}** |")


def summarize(paths: list[str]) -> None:
    """Per label, the minimum over its runs of each stage's steady minimum (seconds), as a markdown table."""
    runs: dict[str, list[dict]] = {}
    for p in paths:
        d = json.loads(Path(p).read_text())
        runs.setdefault(d["label"], []).append(d)
    labels = sorted(runs, key=lambda k: k != "before")
    stages = sorted({s for rs in runs.values() for d in rs for s in d["steady_min"]})
    print("| stage | " + " | ".join(f"{k} (min of {len(runs[k])})" for k in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for s in stages:
        print(f"| {s} | " + " | ".join(f"{min(d['steady_min'].get(s, 0.0) for d in runs[k]):.3f}" for k in labels) + " |")
    print("| round (less evaluate) | " + " | ".join(
        f"{min(d['steady_min_round_seconds_less_evaluate'] for d in runs[k]):.3f}" for k in labels) + " |")
    print("| model_sha256 | " + " | ".join(",".join(sorted({d["model_sha256"][:16] for d in runs[k] if "model_sha256" in d}))
                                          for k in labels) + " |")
    # cProfile: the run of least wall time of each label (the others carry the machine's other load), and the range
    # of sum_sq_f64's own time over all runs, which that load swings most
    quiet = {k: min(runs[k], key=lambda d: d["wall_seconds"]) for k in labels}
    fns = sorted({f for d in quiet.values() for f in d["profile_seconds_per_round"]})
    print("\n| cProfile, cumulative s per round, quietest run (wall s) | " +
          " | ".join(f"{k} ({quiet[k]['wall_seconds']:.0f})" for k in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for f in fns:
        print(f"| {f} | " + " | ".join(f"{quiet[k]['profile_seconds_per_round'].get(f, 0.0):.3f}" for k in labels) + " |")
    key = "quantize.py:275:sum_sq_f64"
    print("| sum_sq_f64 own time, min–max over runs | " + " | ".join(
        f"{min(d['profile_top_tottime_per_round'].get(key, 0.0) for d in runs[k]):.2f}–"
        f"{max(d['profile_top_tottime_per_round'].get(key, 0.0) for d in runs[k]):.2f}" for k in labels) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--summarize", nargs="+", metavar="JSON", help="print the table of these runs' results and exit")
    ap.add_argument("--items", type=int, metavar="PARAMS", help="time each host step alone at PARAMS coordinates")
    ap.add_argument("--holders", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--label")
    ap.add_argument("--out")
    ap.add_argument("--preset", default="gpu-75m")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], help="extra KEY=VALUE over SETTINGS")
    args = ap.parse_args()
    if args.summarize:
        return summarize(args.summarize)
    if args.items:
        return items(args.items, args.holders, args.repeat, args.out)
    if not (args.label and args.out):
        ap.error("--label and --out are needed for a run")
    from securefed.cli import main as cli

    sets = [*SETTINGS, f"federation.rounds={args.rounds}", *args.set]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        argv = ["simulate", "--preset", args.preset, "--quiet", "--threads-per-holder", "1", "--out", str(run),
                *[a for s in sets for a in ("--set", s)]]
        prof = cProfile.Profile()
        t = time.perf_counter()
        rc = prof.runcall(cli, argv)
        wall = time.perf_counter() - t
        if rc != 0:
            sys.exit(f"simulate exited {rc}")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run / "summary.json").read_text())
    stats = pstats.Stats(prof).stats
    cum = {}
    for (file, _, name), (_, _, _, ct, _) in stats.items():
        for suffix, fn in WATCH:
            if file.endswith(suffix) and name == fn:
                cum[f"{suffix}:{fn}"] = round(cum.get(f"{suffix}:{fn}", 0.0) + ct / args.rounds, 4)
    steady = rows[1:]
    stages = sorted({k for r in steady for k in r["stage_seconds"]})
    out = {
        "label": args.label, "preset": args.preset, "settings": sets, "model_params": summary["model_params"],
        "theta_mb": round(4 * summary["model_params"] / 1e6, 1), "wall_seconds": round(wall, 2),
        # the exported model's SHA-256: equal before and after a change that must leave the results bit-identical
        "model_sha256": summary["model_sha256"], "fed_eval_ppl": summary["fed_eval_ppl"],
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip(), "securefed": str(Path(sys.modules["securefed"].__file__).parent),
        "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
        "rounds": [{"round": r["round"], "seconds": r["seconds"], "stage_seconds": r["stage_seconds"]} for r in rows],
        "steady_min": {s: min(r["stage_seconds"].get(s, 0.0) for r in steady) for s in stages if s != "evaluate"},
        "steady_min_round_seconds_less_evaluate": min(r["seconds"] - r["stage_seconds"].get("evaluate", 0.0)
                                                       for r in steady),
        "profile_seconds_per_round": cum,
        # the calling thread's own time per round (cProfile sees only it: for_spans' other threads are waited for)
        "profile_top_tottime_per_round": {f"{Path(f).name}:{ln}:{name}": round(tt / args.rounds, 4) for (f, ln, name), (
            _, _, tt, _, _) in sorted(stats.items(), key=lambda kv: -kv[1][2])[:25]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("label", "theta_mb", "model_sha256", "steady_min")}, indent=1))


if __name__ == "__main__":
    main()
