"""Ray vs in-process: wall time per round of one config, and large SecAgg+ cohorts with dropouts.

Each run is `securefed simulate` (federation/simulation.py) with the given overrides — the same engine,
only the channel differs — so the round times come from the run's own metrics.jsonl (``seconds`` per
row: offer → train → aggregate → evaluate; ``stage_seconds`` splits it). Also recorded: the time to the
first round (Ray: starting one Python process per holder and loading its data), the peak memory of the
holders (Ray: proportional set size of the actor processes, /proc/<pid>/smaps_rollup, sampled every
second; in-process: the driver's peak RSS), and the run's survivors per round.

    python benchmarks/ray/bench_ray.py --backend inproc --holders 8 --threads 2 --tag inproc-8
    python benchmarks/ray/bench_ray.py --backend ray --holders 8 --tag ray-8
    python benchmarks/ray/bench_ray.py --backend ray --holders 100 --set aggregation.secagg.neighbours=0 \\
        --set federation.dropout_rate=0.1 --rounds 1 --tag ray-100-drop10

One JSON line per run is appended to benchmarks/ray/results.jsonl (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

# the 8-holder setting: the demo's model and training recipe (tiny preset, vocab 4096, rows of 128, K = 6,
# batch 16), 8 stdlib sources (one per holder), no baseline, evaluation only after the last round
BASE = ["model.preset=tiny", "data.source=stdlib", "data.partition=by_source", "data.max_sources=8",
        "data.max_bytes_per_source=200000", "data.vocab_size=4096", "data.seq_len=128", "train.local_steps=6",
        "train.batch_size=16", "baseline=false", "network.join=3600", "network.train=3600", "network.control=600",
        "network.upload=1800"]


def _actor_pss_mib() -> float:
    """Σ PSS of this machine's Ray holder-actor processes (their proctitle is ray::HolderActor...)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if not open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::HolderActor"):
                continue
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=("inproc", "ray"), required=True)
    ap.add_argument("--holders", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per holder (--threads-per-holder)")
    ap.add_argument("--cpus-per-holder", type=float, help="--ray-cpus-per-holder (default: an equal share)")
    ap.add_argument("--gpus-per-holder", type=float, default=0.0,
                    help="--ray-gpus-per-holder (0.125: eight holders share one GPU; benchmarks/gpu/ray_vs_inproc.sh)")
    ap.add_argument("--object-store-mb", type=int, default=512, help="--ray-object-store-mb (local start)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.jsonl")))
    args = ap.parse_args()

    from securefed.federation.ray_cluster import RayOptions
    from securefed.federation.simulation import Simulation
    from securefed.runtime.config import load_run_config

    overrides = BASE + [f"federation.n_holders={args.holders}", f"federation.rounds={args.rounds}",
                        f"federation.eval_every={args.rounds}", f"data.cache_dir={Path(tempfile.gettempdir()) / 'sf-bench-ray-cache'}"]
    if args.holders > 8:   # more holders than stdlib sources: split the documents at random
        overrides += ["data.partition=iid", "data.max_sources=200"]
    cfg = load_run_config(overrides=overrides + args.overrides)
    out = Path(tempfile.mkdtemp(prefix=f"sf-bench-{args.tag}-"))
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            peak[0] = max(peak[0], _actor_pss_mib())
    t0 = time.perf_counter()
    opts = (RayOptions(cpus_per_holder=args.cpus_per_holder, gpus_per_holder=args.gpus_per_holder,
                       object_store_mb=args.object_store_mb)
            if args.backend == "ray" else None)
    sim = Simulation(cfg, out / "run", progress=True, backend=args.backend, threads_per_holder=args.threads,
                     ray_options=opts)
    t_setup = time.perf_counter() - t0
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summary = sim.run()
    stop.set()
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    round_s = sum(r["seconds"] for r in rows)
    rec = {
        "tag": args.tag, "backend": args.backend, "holders": args.holders, "rounds": args.rounds,
        "threads_per_holder": args.threads, "overrides": args.overrides, "model_params": summary["model_params"],
        "ray": summary.get("ray"), "wall_s": round(wall, 1), "setup_s": round(t_setup, 1),
        "rounds_s": round(round_s, 1), "to_first_round_s": round(wall - round_s - summary["phase_seconds"].get("report", 0), 1),
        "round_s": [round(r["seconds"], 2) for r in rows],
        "stage_s": [r.get("stage_seconds") for r in rows],
        "survivors": [(r["clients_survived"], r["clients_sampled"]) for r in rows],
        "aborted": [r.get("aborted") for r in rows if r.get("aborted")],
        "holders_peak_pss_mib": round(peak[0]) if args.backend == "ray" else None,
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "model_sha256": summary["model_sha256"], "eval_ppl": summary["fed_eval_ppl"],
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "cores": len(os.sched_getaffinity(0)),
    }
    with open(args.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec, indent=1))
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
