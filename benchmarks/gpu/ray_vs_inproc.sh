#!/usr/bin/env bash
# Issue 13 on the H200: 8 holders on one GPU, the in-process backend (holders one after another) vs Ray
# (one actor process per holder, 1/8 of the GPU each, training at the same time), wall time per round of the
# same `securefed simulate` config through benchmarks/ray/bench_ray.py (secure aggregation, stdlib data, one
# source per holder). Build Ray for that machine here first (bash benchmarks/gpu/pack_ray.sh), then one call:
#
#   SIZE=20m K=16 bash benchmarks/gpu/ray_vs_inproc.sh      # carry [".whl", ".cache/ray"]; ≈ 4 min at 20m
#   SIZE=125m K=64 B=16 bash benchmarks/gpu/ray_vs_inproc.sh # the issue-13 setting: ≈ 6 min (RESULTS.md (zc13))
#
# Rows are appended to $OUT/ray_vs_inproc.jsonl (one per backend; bench_ray.py's record), logs beside it.
set -u
SIZE=${SIZE:-20m}; K=${K:-16}; ROUNDS=${ROUNDS:-3}; B=${B:-16}
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TOKENIZERS_PARALLELISM=true
OUT=${OUT:-/tmp/ray_vs_inproc}; mkdir -p "$OUT" /tmp/site
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl .cache/ray/wheels/*.whl || exit 1
[ -d /tmp/site/ray ] || tar xJf .cache/ray/ray-slim.tar.xz -C /tmp/site || exit 1
echo "installed $(( $(date +%s) - t0 ))s"
common=(--holders 8 --rounds "$ROUNDS" --set "model.preset=$SIZE" --set data.seq_len=1024 --set data.vocab_size=32768
        --set "train.batch_size=$B" --set "train.local_steps=$K" --set train.compile=true
        --set data.max_sources=16 --set data.max_bytes_per_source=1000000 --set train.eval_batch_size=16 --out "$OUT/ray_vs_inproc.jsonl")
python3 benchmarks/ray/bench_ray.py --backend inproc --threads 2 --tag "h200-inproc-8-$SIZE" "${common[@]}" > "$OUT/inproc.log" 2>&1
echo "inproc rc=$? $(( $(date +%s) - t0 ))s"; tail -n 3 "$OUT/inproc.log"
python3 benchmarks/ray/bench_ray.py --backend ray --gpus-per-holder 0.125 --cpus-per-holder 2 --threads 2 \
  --object-store-mb 16384 --tag "h200-ray-8-$SIZE" "${common[@]}" > "$OUT/ray.log" 2>&1
echo "ray rc=$? $(( $(date +%s) - t0 ))s"; tail -n 3 "$OUT/ray.log"
python3 - "$OUT/ray_vs_inproc.jsonl" <<'PY'
import json, sys
rows = {r["backend"]: r for r in map(json.loads, open(sys.argv[1]))}
for b, r in rows.items():
    print(b, "round_s", r["round_s"], "to_first_round_s", r["to_first_round_s"], "sha", r["model_sha256"][:12])
if len(rows) == 2:
    warm = lambda r: r["round_s"][1:] or r["round_s"]                  # round 1 carries compilation
    mean = lambda r: sum(warm(r)) / len(warm(r))
    print("ray_over_inproc_round (mean of rounds 2..)", round(mean(rows["ray"]) / mean(rows["inproc"]), 3))
PY
