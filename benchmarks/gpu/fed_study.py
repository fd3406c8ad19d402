"""(b, c, d) One `securefed simulate` run, in process, with a per-round time breakdown.

    python benchmarks/gpu/fed_study.py --preset gpu-125m --set federation.rounds=4 --out runs/gpu/b-125m \
        --result results/b-125m.json [--stop-after-round N]

It is exactly `securefed simulate --preset ... --set ... --out ...` (same Simulation object, same run
directory), plus timers wrapped around the three phases of a round: local training of every holder
(CUDA-synchronised), aggregation (encode + secure sum + decode, or the plain sum) and the rest
(evaluation, outer step, ledger, checkpoint). It also records the peak GPU memory of the process and
the resolved config. --stop-after-round skips the centralized baseline, model export and report (what
the overhead and 1.3B runs want); without it the run ends with the baseline at equal tokens.
The result JSON is rewritten after every round, so a run cut short still leaves its rounds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import securefed.runtime.simulate as simmod
from securefed.runtime.config import load_run_config
from securefed.training.trainer import HolderTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", required=True, help="run directory")
    ap.add_argument("--result", required=True, help="JSON file with the timings and the summary")
    ap.add_argument("--stop-after-round", type=int, default=None)
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    cfg = load_run_config(preset=args.preset, overrides=tuple(args.overrides))
    cuda = torch.cuda.is_available()
    timers = {"train": 0.0, "aggregate": 0.0}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    orig_train, orig_agg = HolderTrainer.train_round, simmod.aggregate_round

    def timed_train(self, theta):
        sync()
        t = time.perf_counter()
        out = orig_train(self, theta)
        sync()
        timers["train"] += time.perf_counter() - t
        return out

    def timed_agg(*a, **k):
        t = time.perf_counter()
        out = orig_agg(*a, **k)
        timers["aggregate"] += time.perf_counter() - t
        return out

    HolderTrainer.train_round = timed_train
    simmod.aggregate_round = timed_agg

    result = {"label": args.label, "preset": args.preset, "overrides": args.overrides,
              "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "rounds": [], "status": "running"}
    res_path = Path(args.result)
    res_path.parent.mkdir(parents=True, exist_ok=True)

    def dump() -> None:
        result["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        res_path.write_text(json.dumps(result, indent=1, default=str) + "\n")

    t0 = time.perf_counter()
    sim = simmod.Simulation(cfg, args.out, progress=False, stop_after_round=args.stop_after_round)
    result["setup_seconds"] = time.perf_counter() - t0
    result["model_params"] = sim.dim
    result["n_holders"] = cfg.federation.n_holders
    result["holder_train_rows"] = [int(x.shape[0]) for x in sim.data.holder_train]
    result["holder_sources"] = [list(s) for s in sim.data.holder_sources]
    result["eval_rows"] = int(sim.data.eval_global.shape[0])
    dump()

    orig_round = sim.run_round

    def timed_round(r: int) -> dict:
        timers["train"] = timers["aggregate"] = 0.0
        row = orig_round(r)
        row = dict(row, train_seconds=timers["train"], aggregate_seconds=timers["aggregate"],
                   other_seconds=row["seconds"] - timers["train"] - timers["aggregate"])
        result["rounds"].append(row)
        dump()
        return row

    sim.run_round = timed_round
    t0 = time.perf_counter()
    summary = sim.run()
    result["run_seconds"] = time.perf_counter() - t0
    result["summary"] = summary
    baseline = Path(args.out) / "baseline" / "metrics.jsonl"
    if baseline.exists():
        result["baseline_curve"] = [json.loads(x) for x in baseline.read_text().splitlines() if x.strip()]
    result["status"] = "done"
    dump()
    print(json.dumps({k: result.get(k) for k in ("label", "run_seconds", "peak_gpu_mem_gib", "summary")}, default=str))


if __name__ == "__main__":
    main()
