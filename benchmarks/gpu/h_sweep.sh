#!/usr/bin/env bash
# Issue 14, study item 3 at 20m: H (local steps per round) swept at FedAvg, and Nesterov outer lr, against
# the centralized run at equal tokens (67.1M per side, 2.9 tokens/parameter), all six rows side by side on
# one H200 in one lease call (< 9 min with the machine's start). Plain aggregation (secure_pair.sh shows
# secure ≡ plain within run-to-run noise). From the repository root there, .whl/ and the linux subset carried:
#
#   bash benchmarks/gpu/h_sweep.sh             # (a) H = 8 / 32 / 128 at FedAvg; Nesterov outer lr 0.3 / 0.7
#   SWEEP=b bash benchmarks/gpu/h_sweep.sh     # (b) outer lr 2, inner lr x2, the paper recipe, central lr 6e-3, non-IID
#   SWEEP=c bash benchmarks/gpu/h_sweep.sh     # (c) inner lr x0.5 at H 8 / 32, H 16, central lr 1.5e-3, non-IID at H 8
#
# Rows share the GPU, so their seconds are not a clean timing; their curves are the comparison.
# Everything comes back as one archive ($OUT/h_sweep.tgz: metrics.jsonl, summary.json, cmd.json and log per row;
# the lease returns at most 8 files, so the logs travel inside it).
set -u
S=/tmp/sf
T=${TOKENS:-6.71e7}
export PYTHONUNBUFFERED=1 SECUREFED_CACHE=$S/cache TOKENIZERS_PARALLELISM=true PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
mkdir -p $S $S/hs/logs
L=$S/hs/logs
t0=$(date +%s)
[ -f $S/corpus/build.json ] || python3 benchmarks/gpu/build_corpus.py build $S/corpus --linux .cache/gpu-text/linux-subset.tar.xz > $L/build.log 2>&1
python3 benchmarks/gpu/study.py prepare --size 20m --corpus $S/corpus --runs $S/hs --out $OUT/prepare.json 2>&1 | tail -n 1
echo "prepared $(( $(date +%s) - t0 ))s"
row() { timeout ${ROW_LIMIT:-400} python3 benchmarks/gpu/study.py run --size 20m --partition iid --tokens $T --evals 8 --seed 0 \
          --corpus $S/corpus --runs $S/hs --set federation.checkpoint_every=1000 "$@"; }
if [ "${SWEEP:-a}" = a ]; then   # H at FedAvg, and the Nesterov outer lr (2026-12-02 late)
  row --side central                                                   > $L/central.log 2>&1 &
  row --side fed --outer fedavg --outer-lr 1.0 --inner-lr-ratio 1.0 --h 8   > $L/fedavg-h8.log 2>&1 &
  row --side fed --outer fedavg --outer-lr 1.0 --inner-lr-ratio 1.0 --h 32  > $L/fedavg-h32.log 2>&1 &
  row --side fed --outer fedavg --outer-lr 1.0 --inner-lr-ratio 1.0 --h 128 > $L/fedavg-h128.log 2>&1 &
  row --side fed --outer nesterov --outer-lr 0.3 --inner-lr-ratio 1.0 --h 32 > $L/nesterov-0.3.log 2>&1 &
  row --side fed --outer nesterov --outer-lr 0.7 --inner-lr-ratio 1.0 --h 32 > $L/nesterov-0.7.log 2>&1 &
elif [ "${SWEEP}" = c ]; then    # c: (b) found every larger step worse: smaller inner steps, H 16, a lower central lr, non-IID at H 8
  row --side central --central-lr 0.0015                                > $L/central-lr1.5e-3.log 2>&1 &
  row --side fed --outer fedavg --outer-lr 1.0 --inner-lr-ratio 0.5 --h 8  > $L/fedavg-ilr0.5-h8.log 2>&1 &
  row --side fed --outer fedavg --outer-lr 1.0 --inner-lr-ratio 0.5 --h 32 > $L/fedavg-ilr0.5-h32.log 2>&1 &
  row --side fed --outer fedavg --outer-lr 1.5 --inner-lr-ratio 0.5 --h 32 > $L/fedavg-olr1.5-ilr0.5-h32.log 2>&1 &
  row --side fed --outer fedavg --outer-lr 1.0 --inner-lr-ratio 1.0 --h 16 > $L/fedavg-h16.log 2>&1 &
  row --side fed --partition by_source --outer fedavg --outer-lr 1.0 --inner-lr-ratio 1.0 --h 8 > $L/fedavg-h8-by_source.log 2>&1 &
elif [ "${SWEEP}" = b ]; then    # b: what (a) pointed at — the holders' Adam steps on 4x smaller batches are shorter,
                                # so try larger inner or outer steps; the paper's recipe; a tuned central lr; non-IID
  row --side central --central-lr 0.006                                 > $L/central-lr6e-3.log 2>&1 &
  row --side fed --outer fedavg --outer-lr 2.0 --inner-lr-ratio 1.0 --h 32 > $L/fedavg-olr2-h32.log 2>&1 &
  row --side fed --outer fedavg --outer-lr 1.0 --inner-lr-ratio 2.0 --h 32 > $L/fedavg-ilr2-h32.log 2>&1 &
  row --side fed --outer nesterov --outer-lr 0.7 --inner-lr-ratio 0.5 --h 32 > $L/nesterov-0.7-ilr0.5.log 2>&1 &
  row --side fed --outer nesterov --outer-lr 0.7 --inner-lr-ratio 1.0 --h 8 --set outer.momentum=0.6 > $L/nesterov-0.7-m0.6-h8.log 2>&1 &
  row --side fed --partition by_source --outer fedavg --outer-lr 1.0 --inner-lr-ratio 1.0 --h 32 > $L/fedavg-h32-by_source.log 2>&1 &
else
  echo "SWEEP must be a, b or c"; exit 2
fi
wait
echo "rows done $(( $(date +%s) - t0 ))s"
(cd $S/hs && tar czf $OUT/h_sweep.tgz */metrics.jsonl */summary.json *.cmd.json logs 2>/dev/null)
python3 - <<'PY'
import json, glob, os
for d in sorted(glob.glob("/tmp/sf/hs/*/")):
    f = d + "metrics.jsonl"
    if not os.path.exists(f):
        continue
    rows = [json.loads(x) for x in open(f)]
    ev = [(r["round"], r["tokens_seen"], round(r["eval_ppl"], 2)) for r in rows if "eval_ppl" in r]
    print(os.path.basename(d.rstrip("/")), ev[-3:])
PY
