#!/usr/bin/env bash
# Issue 14: one 20m pair at ~20 tokens per parameter (464M tokens per side, 1.85 epochs of the 251M-token
# corpus) — the regime Photon, DiLoCo and Charles et al. compare in — with the sweep's best federated setting
# (benchmarks/RESULTS.md (f14): FedAvg, outer lr 1, inner lr = central lr 3e-3, H = 8). Both rows side by side
# on one H200, ≈ 15 min: longer than one lease call, so the rows run detached (setsid) and two calls share them
# while the machine stays warm (give it no idle gap over 30 s between the calls):
#
#   bash benchmarks/gpu/long_pair.sh start     # corpus, tokenizer, both rows detached; waits ≤ 520 s, reports
#   bash benchmarks/gpu/long_pair.sh wait      # waits ≤ 560 s more, then packs $OUT/long_pair.tgz
#
# carry [".whl", ".cache/gpu-text"]. `wait` may be repeated; a cold machine has lost the rows (start again).
# OUTER / OUTER_LR / MOMENTUM / INNER_RATIO / MOMENTUM_WARMUP choose the federated row's optimizers (default: FedAvg, outer lr 1,
# momentum 0.9 where the outer optimizer has one, inner = central lr).
# CENTRAL_LR sets the centralized row's lr (default: the size's, study.py SIZES; the row's name carries it).
# PARTITION=by_source makes the federated row non-IID (the centralized row is always the pooled, IID one); SEED (default 0) both rows' seed.
# SIZE (default 20m; 75m, 125m) and TOKENS choose the model and the tokens per side; SKIP_CENTRAL=1 / SKIP_FED=1 run
# one side only (a larger model's two sides may not fit one lease: each side is its own process, and rows of the
# same size, tokens and seed pair across leases).
# FED_BACKEND=ray runs the federated row's holders as Ray actors sharing the GPU (RESULTS.md (m13)); Ray is too big
# to travel with the corpus, so a call before `start` installs it (carry [".whl", ".cache/ray"] from pack_ray.sh):
#   mkdir -p /tmp/site && tar xJf .cache/ray/ray-slim.tar.xz -C /tmp/site && \
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .cache/ray/wheels/*.whl
set -u
S=/tmp/sf
R=$S/long
T=${TOKENS:-4.64e8}
H=${H:-8}
SIZE=${SIZE:-20m}
case $SIZE in 20m|75m|125m) ;; *) echo "SIZE: 20m, 75m or 125m"; exit 2 ;; esac
export PYTHONUNBUFFERED=1 SECUREFED_CACHE=$S/cache TOKENIZERS_PARALLELISM=true PYTHONPATH=/tmp/site:$PWD
mkdir -p $R/logs
t0=$(date +%s)
status() {
  python3 - "$R" <<'PY'
import json, glob, os, sys
for d in sorted(glob.glob(sys.argv[1] + "/*/")):
    f = d + "metrics.jsonl"
    if os.path.exists(f):
        rows = [json.loads(x) for x in open(f)]
        ev = [(r["round"], r["tokens_seen"], round(r["eval_ppl"], 2)) for r in rows if "eval_ppl" in r]
        print(os.path.basename(d.rstrip("/")), "rounds", len(rows), "evals", ev[-3:],
              "done" if os.path.exists(d + "summary.json") else "")
PY
}
running() { pgrep -f "study.py run" > /dev/null; }
case "${1:-}" in
start)
  if [ "${FED_BACKEND:-inproc}" = ray ] && ! python3 -c "import ray" 2>/dev/null; then
    echo "FED_BACKEND=ray: Ray is not installed in /tmp/site on this machine (see the header: one call carrying .cache/ray)"; exit 4; fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  [ -f $S/corpus/build.json ] || python3 benchmarks/gpu/build_corpus.py build $S/corpus --linux .cache/gpu-text/linux-subset.tar.xz > $R/logs/build.log 2>&1
  python3 benchmarks/gpu/study.py prepare --size "$SIZE" --corpus $S/corpus --runs $R --out $R/prepare.json 2>&1 | tail -n 1
  echo "prepared $(( $(date +%s) - t0 ))s"
  common=(--size "$SIZE" --tokens "$T" --evals 12 --seed "${SEED:-0}" --corpus $S/corpus --runs $R
          --set federation.checkpoint_every=25)
  # SKIP_CENTRAL=1: the centralized row of this schedule is already in benchmarks/gpu/raw/issue14/long_pair_h32/
  [ "${SKIP_CENTRAL:-0}" = 1 ] || \
    setsid nohup python3 benchmarks/gpu/study.py run --side central --partition iid ${CENTRAL_LR:+--central-lr "$CENTRAL_LR"} "${common[@]}" > $R/logs/central.log 2>&1 < /dev/null &
  [ "${SKIP_FED:-0}" = 1 ] || \
    setsid nohup python3 benchmarks/gpu/study.py run --side fed --partition "${PARTITION:-iid}" --outer "${OUTER:-fedavg}" --outer-lr "${OUTER_LR:-1.0}" --momentum "${MOMENTUM:-0.9}" \
    --inner-lr-ratio "${INNER_RATIO:-1.0}" --momentum-warmup "${MOMENTUM_WARMUP:-0}" --h "$H" --backend "${FED_BACKEND:-inproc}" "${common[@]}" > $R/logs/fed.log 2>&1 < /dev/null &
  limit=${START_LIMIT:-520} ;;   # START_LIMIT=570: a row alone on the GPU (≈ 115 s corpus + 111 × 4.1 s) in one call
wait)
  ls $R/*/metrics.jsonl > /dev/null 2>&1 || running || {
    echo "no rows on this machine: it went cold since 'start' (everything under /tmp is gone); run 'start' again"; exit 3; }
  limit=560 ;;
*) echo "usage: $0 start|wait"; exit 2 ;;
esac
sleep 20
while running && [ $(( $(date +%s) - t0 )) -lt $limit ]; do sleep 15; done
status
if running; then echo "still running after $(( $(date +%s) - t0 ))s: call '$0 wait' again"
elif [ "$(ls $R/*/summary.json 2>/dev/null | wc -l)" -ge "$(ls $R/*/metrics.jsonl 2>/dev/null | wc -l)" ]; then echo "every row finished"
else echo "a row stopped without its summary: see logs/ in the archive"; fi
(cd $R && tar czf $OUT/long_pair.tgz */metrics.jsonl */summary.json *.cmd.json logs prepare.json 2>/dev/null)
