#!/usr/bin/env bash
# The inner learning rate under record-level DP-SGD, on the CPU `dp-sgd` preset (benchmarks/RESULTS.md (E48)).
# Every DP-SGD row at LM scale ran at lr 3e-3, the rate tuned without DP; this asks whether DP-SGD wants another.
#   rows: lr in LRS × {DP-SGD σ 1 (record-level ε 1.54), σ 0.531 (ε 8), none} × {random init, public init}, each a
#   `securefed simulate --preset dp-sgd` run, two at a time; the public model is public_init.sh's ($PUB, built by
#   that script first when missing). Then the table: each row's perplexity, and each DP row against the best
#   non-private row of its init (the tuned baseline), at its own lr and at lr 3e-3.
# OUT (default /tmp/sf-dp-lr) holds the runs; ≈ 35 min for the 24 rows on 2 cores (the public-init rows are the slower).
set -eu
OUT=${OUT:-/tmp/sf-dp-lr}
PUB=${PUB:-/tmp/sf-public-init}
PY=${PY:-python3}
LRS=${LRS:-0.001 0.003 0.01 0.03}
mkdir -p "$OUT"
[ -d "$PUB/pub/model" ] || OUT="$PUB" PY="$PY" bash "$(dirname "$0")/public_init.sh"
run() {   # run <name> <set…>
  [ -f "$OUT/$1/summary.json" ] || $PY -m securefed.cli simulate --preset dp-sgd --out "$OUT/$1" --quiet "${@:2}" \
    > "$OUT/$1.log" 2>&1 || { echo "$1 failed:"; tail -n 5 "$OUT/$1.log"; return 1; }; }
for init in random public; do
  init_set=(); [ $init = public ] && init_set=(--set model.init_from="$PUB/pub/model")
  for lr in $LRS; do
    run "eps1.54-$init-lr$lr" --set train.lr=$lr "${init_set[@]}" &
    run "eps8-$init-lr$lr" --set train.lr=$lr --set train.dp_sgd.noise_multiplier=0.531005859375 "${init_set[@]}" &
    wait
    run "none-$init-lr$lr" --set train.lr=$lr --set train.dp_sgd.enabled=false "${init_set[@]}"
    echo "lr $lr $init done"
  done
done
$PY - "$OUT" $LRS <<'PY'
import json, sys
from pathlib import Path
out, lrs = Path(sys.argv[1]), sys.argv[2:]
rows = {}
for p in sorted(out.glob("*/summary.json")):
    s = json.loads(p.read_text())
    rows[p.parent.name] = {k: s.get(k) for k in ("fed_eval_ppl", "start_eval_ppl", "tokens", "record_epsilon_reported_max",
                                                 "init_from", "init_sha256")}
table = {}
print(f"{'init':7s} {'row':6s} " + " ".join(f"{'lr ' + lr:>9s}" for lr in lrs) + "   best lr: ppl (x best no-DP)   at 3e-3")
for init in ("random", "public"):
    best_none = min(rows[f"none-{init}-lr{lr}"]["fed_eval_ppl"] for lr in lrs)
    for eps in ("none", "eps1.54", "eps8"):
        ppl = {lr: rows[f"{eps}-{init}-lr{lr}"]["fed_eval_ppl"] for lr in lrs}
        lr_best = min(ppl, key=ppl.get)
        table[f"{eps}-{init}"] = {"ppl": ppl, "best_lr": lr_best, "ratio_best": ppl[lr_best] / best_none,
                                  "ratio_at_3e-3": ppl.get("0.003", float("nan")) / best_none}
        print(f"{init:7s} {eps:6s} " + " ".join(f"{ppl[lr]:9.1f}" for lr in lrs)
              + f"   {lr_best}: {ppl[lr_best]:.1f} (x{ppl[lr_best] / best_none:.2f})   x{table[f'{eps}-{init}']['ratio_at_3e-3']:.2f}")
(out / "table.json").write_text(json.dumps({"rows": rows, "table": table}, indent=1) + "\n")
print(f"wrote {out / 'table.json'}")
PY
