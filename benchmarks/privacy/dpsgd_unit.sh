#!/usr/bin/env bash
# Record-level DP-SGD per training sequence vs per document (protocols/dp.md §10.2) on the demo's data, at the
# same σ, batch and steps (so the same accountant events and ε — per row for one, per document for the other).
# Rows (ROWS, space-separated): seq | doc | doc8 (max_rows_per_document=8) | doc4. Each row is one
# `securefed simulate --preset dp-sgd` run; its summary, metrics and holders' signed record-level entries are
# copied to $OUT/<row>/, then `dpsgd_unit.py` writes $OUT/table.md. CPU: ≈ 15 min a row on two cores. Every
# row holds out the same documents (data.eval_split=independent), so their perplexities are on one eval set.
#   OUT=benchmarks/privacy/raw/dpsgd_unit ROWS="seq doc doc8" bash benchmarks/privacy/dpsgd_unit.sh
set -euo pipefail
OUT=${OUT:-benchmarks/privacy/raw/dpsgd_unit}
ROWS=${ROWS:-"seq doc doc8"}
SF=${SF:-.venv/bin/securefed}
PY=${PY:-.venv/bin/python}
COMMON=(--preset dp-sgd --set train.dp_sgd.noise_multiplier=${SIGMA:-1.0} --set train.batch_size=${BATCH:-64}
        --set train.lr=${LR:-0.02} --set federation.rounds=${ROUNDS:-8} --set train.dp_sgd.clipping=${CLIPPING:-ghost}
        --set train.precision=32-true --set data.eval_split=independent)   # one eval set for every row (dp.md §10.2)
mkdir -p "$OUT"
for row in $ROWS; do
  case $row in
    seq) extra=() ;;
    doc) extra=(--set train.dp_sgd.unit=document) ;;
    doc*) extra=(--set train.dp_sgd.unit=document --set train.dp_sgd.max_rows_per_document=${row#doc}) ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
  run=$(mktemp -d)/run
  start=$(date +%s)
  "$SF" simulate "${COMMON[@]}" "${extra[@]}" --out "$run" > "$OUT/$row.log" 2>&1
  mkdir -p "$OUT/$row"
  cp "$run/summary.json" "$run/metrics.jsonl" "$run/preflight.json" "$OUT/$row/"
  for h in "$run"/holders/*/; do
    id=$(basename "$h")
    grep '"released"' "$h/ledger.jsonl" | tail -1 > "$OUT/$row/holder-$id-last-release.json" || true
    cp "$h/data_manifest.json" "$OUT/$row/holder-$id-data_manifest.json"
  done
  "$SF" verify "$run" > "$OUT/$row/verify.txt" 2>&1 || echo "verify failed for $row" >> "$OUT/$row/verify.txt"
  echo "$row $(( $(date +%s) - start )) s" >> "$OUT/wall.txt"
done
"$PY" benchmarks/privacy/dpsgd_unit.py "$OUT"
