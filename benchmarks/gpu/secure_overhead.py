"""Issue 13 item 2, "masking off the critical path": what secure aggregation adds to a round, measured
through the one engine (`securefed simulate`'s Simulation, in-process backend: the holders train one
after another on the one GPU, as the gpu-* presets run them).

    # on the lent H200 (16 cores), from the repository root, .whl/ carried (see README.md):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu/secure_overhead.py --out $OUT [--host-too]
    # here, on the CPU (a tiny model, same code path, same JSON):
    PYTHONPATH=$PWD python benchmarks/gpu/secure_overhead.py --tiny --out /tmp/so   # 20m/tiny models, ~4 min

Two cases, each a pair of runs at the same seed, plain aggregation then secure aggregation:

  overhead  125m × 8 holders, K = 64 local steps, batch 16 × 1024 tokens, 2 rounds (use --rounds 3+).
            Figure: the secure round over the plain round, both steady state (the median of rounds
            2..; round 1 carries torch.compile and the allocator's warm-up). Done when ≤ 1.10 (old path:
            2.56). Before the measured pair a discarded one-round plain run warms the process (until
            stop 31 the plain run went first cold and the secure one after it warm: RESULTS.md (zr13)).
  share     1.3b × 3 holders (the gpu-1.3b recipe: K = 4, batch 4 × 2048), secure, 2 rounds.
            Figure: the aggregation stage's share of the steady-state round (metrics.jsonl
            stage_seconds: offer, secagg_keys, train = θ out + K steps + encoding, aggregate).
            Done when ≤ 0.10 (old: 0.80).

Timing only: the corpus is the Python standard library (`data.source: stdlib`, holders' rows cycle),
the tokenizer a 32768-token BPE trained on the stdlib's public part, so the models have the gpu-*
presets' sizes. No evaluation inside the measured rounds (eval_every and rounds far beyond the 2
run; `stop_after_round` ends the run without the final export), no holder checkpoints.
Writes OUT/secure_overhead.json, OUT/secure_overhead.log and each run's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

log = logging.getLogger("secure_overhead")

COMMON = ["baseline=false", "federation.weighting=tokens", "federation.eval_every=1000", "federation.rounds=1000",
          "federation.checkpoint_every=1000", "privacy.mode=none", "privacy.clip=100.0", "data.source=stdlib",
          "data.partition=iid", "data.tokenizer=train", "data.eval_fraction=0.002", "outer.name=fedavg", "outer.lr=1.0"]
CASES = {   # name -> (overrides, rounds); the GPU cases use the gpu-* presets' trainer settings (compile, fused)
    "overhead": (["model.preset=125m", "federation.n_holders=8", "train.local_steps=64", "train.batch_size=16",
                  "data.seq_len=1024", "data.vocab_size=32768", "data.max_sources=16",
                  "data.max_bytes_per_source=1000000", "train.lr=0.0015", "train.warmup_steps=10",
                  "train.eval_batch_size=16", "train.compile=true"], 2),
    "share": (["model.preset=1.3b", "federation.n_holders=3", "train.local_steps=4", "train.batch_size=4",
               "data.seq_len=2048", "data.vocab_size=32768", "data.max_sources=16",
               "data.max_bytes_per_source=1000000", "train.lr=0.0003", "train.warmup_steps=2",
               "train.eval_batch_size=4", "train.compile=true"], 2),
}
TINY = {    # the same shapes of run on the CPU: 8 holders of the 20m model (P ≈ 16M), 2 steps of 2 × 64 tokens,
            # so that what secure aggregation adds (P-sized work) is not lost in the training time
    "overhead": (["model.preset=20m", "federation.n_holders=8", "train.local_steps=2", "train.batch_size=2",
                  "data.seq_len=64", "data.vocab_size=2048", "data.max_sources=8", "data.max_bytes_per_source=100000",
                  "train.lr=0.001", "train.warmup_steps=1", "train.eval_batch_size=16", "train.compile=false"], 2),
    "share": (["model.preset=tiny", "federation.n_holders=3", "train.local_steps=2", "train.batch_size=4",
               "data.seq_len=64", "data.vocab_size=2048", "data.max_sources=3", "data.max_bytes_per_source=100000",
               "train.lr=0.001", "train.warmup_steps=1", "train.eval_batch_size=16", "train.compile=false"], 2),
}


MODES = {   # run name -> overrides: plain; secure with the holders' default (auto: clip + round on a CUDA training
            # device, secagg.md §6.6); secure with clip + round on the host (numpy; the path of RESULTS.md (c13))
    "plain": ["aggregation.mode=plain"],
    "secagg": ["aggregation.mode=secagg"],
    "secagg-host": ["aggregation.mode=secagg", "train.encode_on=host"],
}


def run(name: str, overrides: list[str], rounds: int, mode: str, out: Path, backend: str = "inproc") -> dict:
    """One `securefed simulate` run through the engine; its per-round rows (metrics.jsonl)."""
    from securefed.federation.simulation import Simulation
    from securefed.runtime.config import load_run_config

    cfg = load_run_config(preset="demo", overrides=COMMON + overrides + MODES[mode])
    run_dir = out / f"{name}-{mode}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    Simulation(cfg, run_dir, progress=False, backend=backend, stop_after_round=rounds).run()
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = {"wall_seconds": round(wall, 2), "rounds": [_round(r) for r in rows],
               "model_params": _params(run_dir)}
    shutil.copy(run_dir / "metrics.jsonl", out / f"{name}-{mode}.metrics.jsonl")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)     # the θ the run leaves: not needed, large
    log.info("%s %s: %s", name, mode, json.dumps(summary))
    return summary


def _params(run_dir: Path) -> int | None:
    import torch

    from securefed.runtime.rundir import RunDir

    try:
        return int(torch.load(RunDir(run_dir).checkpoint_file, weights_only=True)["dim"])
    except (OSError, KeyError, RuntimeError):
        return None


def _round(row: dict) -> dict:
    st = row.get("stage_seconds", {})
    seconds = row["seconds"] - st.get("evaluate", 0.0)       # the round without an evaluation
    return {"round": row["round"], "seconds": round(seconds, 3), "stage_seconds": st,
            "aggregate_seconds": row.get("aggregate_seconds"), "survived": row["clients_survived"], "aborted": row.get("aborted"), "train_loss": row.get("train_loss")}


def steady(rounds: list[dict]) -> dict:
    """Steady state: round 1 also pays for compilation and first allocations, so it is left out; of rounds
    2.. the one of median length (one round where only 2 ran: a single sample, the last)."""
    if any(r["aborted"] for r in rounds):
        raise RuntimeError(f"a measured round aborted: {rounds}")
    later = sorted(rounds[1:] or rounds, key=lambda r: r["seconds"])
    return later[(len(later) - 1) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "secure_overhead_out"))
    ap.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (this script's own test)")
    ap.add_argument("--cases", default="overhead,share", help="comma-separated: overhead, share")
    ap.add_argument("--host-too", action="store_true",
                    help="overhead: also the secure run with clip + round on the host (train.encode_on=host)")
    ap.add_argument("--share-plain", action="store_true",
                    help="share: also the plain run, to tell whether the secure round's train stage is longer "
                         "(mask expansion runs on the host while the holders train, secagg.md §6.5)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds per run instead of each case's 2 (1: round 1 only, which also pays for compilation; "
                         "its aggregate stage is the steady one's, its train stage is not)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the discarded one-round plain run before the measured runs (default: run it, so "
                         "that neither measured run starts on caches the other one warmed: RESULTS.md (zr13))")
    ap.add_argument("--backend", choices=("inproc", "grpc"), default="inproc",
                    help="grpc: the coordinator and each holder in its own process over gRPC (what a deployment "
                         "runs; RESULTS.md (r13): its masked stage was 10x the in-process one at 125m x 3 on 2 cores)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="one more config override for every run (after the case's own; repeatable)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SECUREFED_CACHE", str(out / "cache") if a.tiny else "/tmp/sf-cache")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=[logging.FileHandler(out / "secure_overhead.log"), logging.StreamHandler()])
    for noisy in ("securefed.holder", "securefed.coordinator", "securefed.channel.inproc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    cases = TINY if a.tiny else CASES
    result = {"tiny": a.tiny, "backend": a.backend, "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "cases": {}}
    t0 = time.perf_counter()
    for name in a.cases.split(","):
        overrides, rounds = cases[name]
        rounds = a.rounds or rounds
        modes = (("plain", "secagg") + (("secagg-host",) if a.host_too else ())) if name == "overhead" \
            else (("plain",) if a.share_plain else ()) + ("secagg",)
        overrides = overrides + a.set
        warm = None
        if not a.no_warmup:   # compile caches, CUDA context, allocator, cuDNN: warmed by a run that is not measured
            warm = run(name, overrides, 1, "plain", out, a.backend)
            warm["discarded"] = True
        got = {m: run(name, overrides, rounds, m, out, a.backend) for m in modes}
        case = {"overrides": overrides, "rounds_run": rounds, "runs": got, "warmup_run": warm,
                "steady": "median round of rounds 2.. of each run (the last where only 2 ran)"}
        sec = steady(got["secagg"]["rounds"])
        if name == "overhead":
            plain = steady(got["plain"]["rounds"])
            case.update(plain_round_s=plain["seconds"], secure_round_s=sec["seconds"],
                        ratio=round(sec["seconds"] / plain["seconds"], 4), target=1.10, old=2.56)
            if "secagg-host" in got:
                host = steady(got["secagg-host"]["rounds"])["seconds"]
                case.update(secure_host_encode_round_s=host, ratio_host_encode=round(host / plain["seconds"], 4))
        else:
            st = sec["stage_seconds"]
            case.update(secure_round_s=sec["seconds"], aggregate_s=st.get("aggregate"),
                        aggregate_share=round(st.get("aggregate", 0.0) / sec["seconds"], 4),
                        keys_and_aggregate_share=round((st.get("aggregate", 0.0) + st.get("secagg_keys", 0.0))
                                                       / sec["seconds"], 4), target=0.10, old=0.80)
            if "plain" in got:   # the same round without secure aggregation: is the secure train stage longer?
                plain = steady(got["plain"]["rounds"])
                case.update(plain_round_s=plain["seconds"],
                            secure_over_plain=round(sec["seconds"] / plain["seconds"], 4),
                            train_stage_secure_over_plain=round(st["train"] / plain["stage_seconds"]["train"], 4))
        result["cases"][name] = case
        log.info("%s: %s", name, {k: v for k, v in case.items() if k not in ("runs", "overrides", "warmup_run")})
        (out / "secure_overhead.json").write_text(json.dumps(result, indent=1) + "\n")   # after each case
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "secure_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({n: {k: v for k, v in c.items() if k not in ("runs", "overrides", "warmup_run")} for n, c in result["cases"].items()}))


if __name__ == "__main__":
    main()
