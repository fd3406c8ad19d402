#!/usr/bin/env bash
# The CPU analog of RESULTS.md (s14): does outer Nesterov fall behind FedAvg early on this machine too, and does a
# momentum warmup (outer.momentum_warmup) remove that? Tiny model on the demo's stdlib data, 4 holders IID,
# H = 8, 48 rounds, cosine to 0.1, plain aggregation, no baseline; ≈ 7.5 min per row on 2 cores, rows one after
# another (a row whose summary exists is skipped). Each row: OUT/<name>/metrics.jsonl (eval every 6 rounds).
#
#   bash benchmarks/outer_momentum_cpu.sh OUT fedavg "nest07 --set outer.name=nesterov --set outer.lr=0.7 --set train.lr=0.0015"
set -u
OUT=$1; shift
mkdir -p "$OUT"
C=(--preset demo --quiet --set data.partition=iid --set train.local_steps=8 --set federation.rounds=48
   --set federation.eval_every=6 --set train.min_lr_ratio=0.1 --set aggregation.mode=plain --set baseline=false
   --set train.lr=0.003)
for spec in "$@"; do
  read -r -a a <<< "$spec"; name=${a[0]}
  [ -f "$OUT/$name/summary.json" ] && { echo "$name: done"; continue; }
  t0=$(date +%s)
  ${PYTHON:-.venv/bin/python} -m securefed.cli simulate "${C[@]}" "${a[@]:1}" --out "$OUT/$name" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - t0 ))s"
done
# the curves, printed and plotted (OUT/curves.png; PLOT=path to put it elsewhere)
${PYTHON:-.venv/bin/python} - "$OUT" "${PLOT:-$OUT/curves.png}" <<'PY'
import json, pathlib, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(7, 4.5))
for d in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    f = d / "metrics.jsonl"
    if f.exists():
        ev = [(r["round"], r["eval_ppl"]) for r in map(json.loads, open(f)) if "eval_ppl" in r]
        print(d.name, [(k, round(p, 1)) for k, p in ev])
        ax.plot(*zip(*ev), marker="o", ms=3, label=d.name, ls="--" if d.name == "central" else "-")
ax.set(yscale="log", xlabel="round (4 holders x 8 steps x 16 x 128 tokens)", ylabel="held-out perplexity",
       title="tiny model, stdlib, 4 holders IID: outer optimizer and momentum warmup")
ax.grid(alpha=0.3); ax.legend(fontsize=8)
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=110)
PY
