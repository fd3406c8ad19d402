"""Privacy/utility study: eval perplexity vs ε, and discrete (16-bit ring) vs continuous noise at one ε.

Drives the real CLI (`securefed simulate`) with --set overrides, one run directory per setting, then
reads each run's summary.json and privacy/ledger.jsonl (the files a reviewer would read) and writes
results.json and results.md beside this script.

    python benchmarks/privacy/study.py --rounds 8 --clip 1.0 --out runs/privacy-study

Settings (all with uniform weights, clip C for every run so the ε = ∞ row is the clipped,
noise-free reference; one extra row without DP and with the preset's clip):
  ε = ∞ | 16 | 8 | 4            distributed discrete Gaussian, 32-bit ring, σ calibrated to ε
  ε = 8, discrete 16-bit        distributed discrete Gaussian, 16-bit ring (privacy.ring_bits and secagg ring_bits)
  ε = 8, continuous             central Gaussian at a trusted aggregator
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def settings(eps_list: list[float], clip: float) -> list[dict]:
    base = [f"privacy.clip={clip}", "federation.weighting=uniform"]
    runs = [{"name": "no DP, preset clip", "eps": math.inf, "sets": ["privacy.mode=none"]},
            {"name": "ε=∞ (clipped, no noise)", "eps": math.inf, "sets": base + ["privacy.mode=none"]}]
    for e in eps_list:
        runs.append({"name": f"ε={e:g} ddgauss 32-bit", "eps": e,
                     "sets": base + ["privacy.mode=distributed", "privacy.mechanism=ddgauss", f"privacy.target_epsilon={e}"]})
    mid = sorted(eps_list)[len(eps_list) // 2]
    runs.append({"name": f"ε={mid:g} ddgauss 16-bit", "eps": mid,
                 "sets": base + ["privacy.mode=distributed", "privacy.mechanism=ddgauss", f"privacy.target_epsilon={mid}",
                                 "privacy.ring_bits=16", "aggregation.secagg.ring_bits=16"]})
    runs.append({"name": f"ε={mid:g} continuous Gaussian (central)", "eps": mid,
                 "sets": base + ["privacy.mode=central", "privacy.mechanism=gaussian", f"privacy.target_epsilon={mid}"]})
    return runs


def run_one(run: dict, out: Path, rounds: int, extra: list[str], timeout: int) -> dict:
    rd = out / run["name"].replace(" ", "_").replace("=", "").replace(",", "").replace("(", "").replace(")", "").replace("∞", "inf").replace("ε", "eps")
    cmd = [sys.executable, "-m", "securefed.cli", "simulate", "--quiet", "--out", str(rd), "--set", f"federation.rounds={rounds}",
           "--set", "baseline=false"]
    for s in run["sets"] + extra:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    row = {"name": run["name"], "target_epsilon": run["eps"], "seconds": round(time.perf_counter() - t0, 1),
           "returncode": proc.returncode, "command": " ".join(cmd[2:])}
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    summary = rd / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        row.update(fed_eval_ppl=s.get("fed_eval_ppl"), epsilon=s.get("epsilon"), delta=s.get("delta"), rounds=s.get("rounds"))
    metrics = rd / "metrics.jsonl"
    if metrics.is_file():
        ms = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        evals = [m["eval_ppl"] for m in ms if m.get("eval_ppl") is not None]
        row["eval_ppl_by_round"] = evals
        row["clip_fraction_mean"] = sum(m.get("clip_fraction", 0) for m in ms) / max(1, len(ms))
    ledger = rd / "privacy" / "ledger.jsonl"
    if ledger.is_file():
        es = [json.loads(x) for x in ledger.read_text().splitlines() if x.strip()]
        if es:
            row.update(noise_multiplier=es[-1]["noise_multiplier"], ledger_epsilon=es[-1]["epsilon"], ring_bits=es[-1]["ring_bits"],
                       mechanism=es[-1]["mechanism"], delta=es[-1]["delta"])
    return row


def fmt(v, nd=4) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return "∞" if v == "inf" else v
    if isinstance(v, float):
        return "∞" if math.isinf(v) else f"{v:.{nd}g}"
    return str(v)


def write_results(rows: list[dict], meta: dict, where: Path = HERE) -> None:
    (where / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    lines = ["# Privacy/utility study (securefed simulate)", "", f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Rounds: {meta['rounds']}, clip C = {meta['clip']}, holders = preset (population = cohort unless overridden)", "",
             "| setting | mechanism | ring bits | σ (noise multiplier) | ε (ledger) | δ | final eval ppl | eval ppl by round | wall s | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ppl_curve = ", ".join(f"{p:.4g}" for p in r.get("eval_ppl_by_round", [])[-4:])
        lines.append(f"| {r['name']} | {fmt(r.get('mechanism'))} | {fmt(r.get('ring_bits'))} | {fmt(r.get('noise_multiplier'))} | "
                     f"{fmt(r.get('ledger_epsilon'))} | {fmt(r.get('delta'), 3)} | {fmt(r.get('fed_eval_ppl'))} | {ppl_curve} | "
                     f"{r['seconds']} | {'ok' if r['returncode'] == 0 else r.get('error', 'failed')} |")
    lines += ["", meta.get("notes", "")]
    (where / "results.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--eps", type=float, nargs="+", default=[16.0, 8.0, 4.0])
    ap.add_argument("--out", default="runs/privacy-study")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra override for every run")
    ap.add_argument("--only", type=int, nargs="*", help="indices of settings to run")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--machine", default=os.uname().nodename)
    ap.add_argument("--notes", default="")
    ap.add_argument("--results-dir", default=str(HERE), help="where results.json/results.md go")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = settings(args.eps, args.clip)
    rows = []
    meta = {"command": "python " + " ".join(sys.argv), "machine": args.machine, "rounds": args.rounds, "clip": args.clip,
            "notes": args.notes}
    for i, run in enumerate(runs):
        if args.only and i not in args.only:
            continue
        rows.append(run_one(run, out, args.rounds, args.extra, args.timeout))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "command"}), flush=True)
        write_results(rows, meta, Path(args.results_dir))  # after every run: partial results survive a timeout
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
