#!/usr/bin/env bash
# Record-level DP-SGD from a public initial model (model.init_from, protocols/dp.md §13) against from random
# weights, on the CPU `dp-sgd` preset (benchmarks/RESULTS.md (D45)). ≈ 20 min on 2 cores.
#   1. the public corpus: the stdlib's single-file modules, the text the public tokenizer is trained on (no holder's
#      data: the holders hold stdlib packages), as a corpus directory of one source;
#   2. the public model: the demo's model trained centrally on it (1 holder, plain, 60 rounds of 6 steps, 737k tokens);
#   3. six dp-sgd runs: DP-SGD at the preset's σ 1 (record-level ε 1.54) and at σ 0.531 (ε 8: `dpsgd_lm.py calibrate
#      --records 850 --batch 16 --steps 48`, the smallest holder) and none × random init / public init; the table.
# OUT (default /tmp/sf-public-init) holds everything.
set -eu
OUT=${OUT:-/tmp/sf-public-init}
PY=${PY:-python3}
mkdir -p "$OUT"
$PY - "$OUT/public" <<'PY'
import sys
from pathlib import Path
from securefed.training.data.stdlib import tokenizer_corpus
out = Path(sys.argv[1]) / "stdlib-modules"
out.mkdir(parents=True, exist_ok=True)
for d in tokenizer_corpus():
    (out / Path(d.doc_id).name).write_text(d.text, encoding="utf-8")
PY
[ -f "$OUT/pub/summary.json" ] || $PY -m securefed.cli simulate --preset demo --out "$OUT/pub" --quiet \
  --set data.source="$OUT/public" --set data.max_sources=null --set data.max_bytes_per_source=null \
  --set federation.n_holders=1 --set aggregation.mode=plain --set baseline=false --set federation.rounds=60 \
  --set federation.eval_every=10 > "$OUT/pub.log"
run() {   # run <name> <set…>: the dp-sgd preset with these overrides, two at a time
  [ -f "$OUT/$1/summary.json" ] || $PY -m securefed.cli simulate --preset dp-sgd --out "$OUT/$1" --quiet "${@:2}" > "$OUT/$1.log"; }
done_or_stop() {   # a pair's runs both finished, or the first that did not is named with its log's end
  for n in "$@"; do [ -f "$OUT/$n/summary.json" ] || { echo "$n failed:"; tail -n 5 "$OUT/$n.log"; exit 1; }; done; }
run dp-random & run none-random --set train.dp_sgd.enabled=false & wait; done_or_stop dp-random none-random
run dp-public --set model.init_from="$OUT/pub/model" & \
  run none-public --set model.init_from="$OUT/pub/model" --set train.dp_sgd.enabled=false & wait
done_or_stop dp-public none-public
run dp8-random --set train.dp_sgd.noise_multiplier=0.531005859375 & \
  run dp8-public --set train.dp_sgd.noise_multiplier=0.531005859375 --set model.init_from="$OUT/pub/model" & wait
done_or_stop dp8-random dp8-public
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
names = ("dp-random", "dp8-random", "none-random", "dp-public", "dp8-public", "none-public")
s = {n: json.loads((out / n / "summary.json").read_text()) for n in names}
print(f"{'init':8s} {'start':>8s} {'no DP':>8s}  DP-SGD at record-level eps: ppl (x no DP, share of no DP's gain)")
for init in ("random", "public"):
    no, line = s[f"none-{init}"], []
    for dp in (s[f"dp-{init}"], s[f"dp8-{init}"]):
        gain = (dp["start_eval_ppl"] - dp["fed_eval_ppl"]) / (no["start_eval_ppl"] - no["fed_eval_ppl"])
        line.append(f"eps {dp['record_epsilon_reported_max']:.2f}: {dp['fed_eval_ppl']:.1f} "
                    f"(x{dp['fed_eval_ppl'] / no['fed_eval_ppl']:.2f}, {gain:.0%})")
    print(f"{init:8s} {no['start_eval_ppl']:8.1f} {no['fed_eval_ppl']:8.1f}  " + "; ".join(line))
(out / "table.json").write_text(json.dumps({k: {kk: v.get(kk) for kk in ("start_eval_ppl", "fed_eval_ppl", "tokens",
    "record_epsilon_reported_max", "init_from", "init_sha256")} for k, v in s.items()}, indent=1) + "\n")
PY
