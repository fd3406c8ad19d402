#!/usr/bin/env bash
# Issue 14, "secure aggregation must not change the result": one 20m federated row run twice at the same
# seed — plain aggregation and secure aggregation — side by side on one H200, through the one engine
# (`securefed simulate`, study.py rows). One lease call (< 8 min with the machine's start):
#
#   bash benchmarks/gpu/secure_pair.sh        # from the repository root there; .whl/ and the linux subset carried
#
# Both rows: 4 holders IID, FedAvg (outer lr 1), H = 32, inner lr = central (the better row of the first
# pair), 16.8M tokens = 4 rounds, evaluated every round; privacy.clip = 1000 (never binds: ‖Δ‖ stays far
# below it, and it sets the quantization step 2^31/4/1000 ≈ 5.4e5 steps per unit). The rows share the GPU,
# so their round seconds are not a clean timing (say so); their curves are the comparison.
set -u
S=/tmp/sf
export PYTHONUNBUFFERED=1 SECUREFED_CACHE=$S/cache TOKENIZERS_PARALLELISM=true PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
mkdir -p $S
t0=$(date +%s)
python3 benchmarks/gpu/build_corpus.py build $S/corpus --linux .cache/gpu-text/linux-subset.tar.xz > $OUT/build.log 2>&1
echo "corpus rc=$? $(( $(date +%s) - t0 ))s"
python3 benchmarks/gpu/study.py prepare --size 20m --corpus $S/corpus --runs $S/runs --out $OUT/prepare.json 2>&1 | tail -n 1
echo "prepare $(( $(date +%s) - t0 ))s"
row() { python3 benchmarks/gpu/study.py run --size 20m --side fed --partition iid --outer fedavg --outer-lr 1.0 \
          --inner-lr-ratio 1.0 --h 32 --tokens 1.68e7 --evals 4 --seed 0 --clip 1000 --corpus $S/corpus --runs $S/runs \
          --set federation.checkpoint_every=100 "$@"; }
row > $OUT/plain.log 2>&1 &
P1=$!
row --secure > $OUT/secure.log 2>&1 &
P2=$!
wait $P1; echo "plain rc=$? $(( $(date +%s) - t0 ))s"
wait $P2; echo "secure rc=$? $(( $(date +%s) - t0 ))s"
for d in $S/runs/*/; do n=$(basename $d); cp $d/metrics.jsonl $OUT/$n.metrics.jsonl 2>/dev/null; cp $d/summary.json $OUT/$n.summary.json 2>/dev/null; done
python3 - <<'PY'
import json, glob, os
for f in sorted(glob.glob(os.environ["OUT"] + "/*.metrics.jsonl")):
    rows = [json.loads(x) for x in open(f)]
    print(os.path.basename(f), [(r["round"], round(r.get("eval_ppl", 0), 3), r["aggregation"], round(r["seconds"], 1),
                                 r.get("stage_seconds", {}).get("aggregate")) for r in rows])
PY
tail -n 3 $OUT/plain.log $OUT/secure.log
