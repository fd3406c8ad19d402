#!/usr/bin/env bash
# Issue 13 on the H200 machine: 100 holders as Ray actors, SecAgg+ (auto degree), one round each with 10 %
# and 30 % of the holders dropping out at a random secure-aggregation stage (synthetic-size updates: the
# `tiny` model, vocab 512, rows of 32 tokens, K = 1 — benchmarks/ray/results.md (b)'s CPU setting, there run
# in process because 100 actors need ≈ 45 GiB). Holders train on the CPU (0.15 CPU each: 100 fit 16 cores);
# starting 100 actors takes ≈ 1–2 min (imports), so give the call ≈ 5 min. One call, carry [".whl", ".cache/ray"]
# (from bash benchmarks/gpu/pack_ray.sh):
#
#   bash benchmarks/gpu/ray100.sh                 # -> $OUT/ray100.jsonl (bench_ray.py records), logs beside it
#   HOLDERS=12 RATES=0.3 bash benchmarks/gpu/ray100.sh   # the same, small, on any machine with Ray installed
set -u
HOLDERS=${HOLDERS:-100}; RATES=${RATES:-"0.1 0.3"}; LIMIT=${LIMIT:-270}
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-/tmp/ray100}; mkdir -p "$OUT" /tmp/site
if ! python3 -c "import ray, securefed.federation.holder" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl .cache/ray/wheels/*.whl || exit 1
  [ -d /tmp/site/ray ] || tar xJf .cache/ray/ray-slim.tar.xz -C /tmp/site || exit 1
fi
# 100 actors import torch, Lightning and transformers at once (≈ 11 CPU-s each): on busy cores they do not come up
# in time (RESULTS.md (zg13): load 80–90 from GPU rows beside them). Say so before starting.
read -r load1 _ < /proc/loadavg; cores=$(nproc)
python3 -c "import sys; sys.exit(0 if float('$load1') < $cores / 4 else 1)" ||
  echo "WARNING: load average $load1 on $cores cores: other work is running; the actors may not start within LIMIT=$LIMIT s"
S=(--set data.vocab_size=512 --set data.seq_len=32 --set data.max_bytes_per_source=300000 --set train.local_steps=1
   --set train.batch_size=4 --set aggregation.secagg.neighbours=0 --set train.accelerator=cpu)
for p in $RATES; do
  t0=$(date +%s)
  timeout "$LIMIT" python3 benchmarks/ray/bench_ray.py --backend ray --holders "$HOLDERS" --rounds 1 --cpus-per-holder 0.15 \
    --threads 1 --object-store-mb 8192 "${S[@]}" --set "federation.dropout_rate=$p" \
    --tag "ray-$HOLDERS-secagg+-drop${p#0.}" --out "$OUT/ray100.jsonl" > "$OUT/ray100_$p.log" 2>&1
  echo "p=$p rc=$? $(( $(date +%s) - t0 ))s"
  grep -E "starting holders|welcome|^round|dropped" "$OUT/ray100_$p.log" | tail -n 4
done
python3 - "$OUT/ray100.jsonl" <<'PY'
import json, os, sys
if os.path.exists(sys.argv[1]):
    for r in map(json.loads, open(sys.argv[1])):
        print(r["tag"], "survivors", r["survivors"], "aborted", r["aborted"], "round_s", r["round_s"],
              "to_first_round_s", r["to_first_round_s"], "holders_peak_pss_mib", r["holders_peak_pss_mib"])
PY
