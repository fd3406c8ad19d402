#!/usr/bin/env bash
# Issue 14 on one H200, in two lease calls (each < 10 min), from the repository root there:
#
#   call 1: bash benchmarks/gpu/run_issue14.sh start     # throughput matrix (foreground, cores 0-5);
#           in the background (own session, cores 6-15): corpus build + tokenization, then, once the
#           GPU is free, the 20m IID pair (fed and central side by side), sized to end STUDY_LEN
#           seconds after the matrix ended (the length of call 2)
#   call 2: bash benchmarks/gpu/run_issue14.sh collect   # GPU correctness tests beside the study,
#           waits for the pair (or the deadline), packs everything under $OUT
#
# Needs .whl/ (liger-kernel 0.8.5 + securefed's CPU-only deps as cp312 wheels) and
# .cache/gpu-text/linux-subset.tar.xz (build_corpus.py pack-linux) carried along.
set -u
MODE=${1:-start}
S=/tmp/sf
STUDY_LEN=${STUDY_LEN:-510}       # the pair must be done this many seconds after the throughput matrix
CALL2=${CALL2:-555}               # collect returns at most this many seconds after it starts
TP_DEADLINE=${TP_DEADLINE:-370}   # throughput: start no new case after this many seconds
export PYTHONUNBUFFERED=1 SECUREFED_CACHE=$S/cache TOKENIZERS_PARALLELISM=true
export PYTHONPATH=/tmp/site:$PWD

CASES=125m:32:plain:off:none:auto:20
CASES=$CASES,125m:64:trainer:head:blocks:auto:64
CASES=$CASES,125m:64:plain:head:blocks:auto:64
CASES=$CASES,20m:32:trainer:head:blocks:auto:20:1024
CASES=$CASES,1.3b:8:plain:off:none:auto:10
CASES=$CASES,1.3b:16:trainer:head:blocks:auto:12
CASES=$CASES,125m:64:trainer:head:blocks:cudnn:64
CASES=$CASES,1.3b:16:trainer:head:blocks:cudnn:12
CASES=$CASES,125m:32:trainer:all:none:auto:20
CASES=$CASES,125m:32:trainer:all:blocks:auto:20
CASES=$CASES,125m:32:trainer:head:blocks:auto:20
CASES=$CASES,1.3b:8:trainer:all:none:auto:12
CASES=$CASES,1.3b:16:plain:head:blocks:auto:12
CASES=$CASES,125m:32:plain:off:model:auto:20

case "$MODE" in
start)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  mkdir -p $S; date +%s > $S/t0
  { nvidia-smi --query-gpu=name,driver_version,memory.used,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch, transformers, triton, liger_kernel, lightning; from importlib.metadata import version; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__, \
'liger', version('liger-kernel'), 'lightning', lightning.__version__)"; nproc; } > $OUT/env.txt 2>&1
  setsid nohup bash benchmarks/gpu/run_issue14.sh bg > $S/bg.log 2>&1 < /dev/null &
  taskset -c 0-5 timeout 540 python3 benchmarks/gpu/throughput.py --out $OUT/tp.jsonl --cases "$CASES" \
    --deadline "$TP_DEADLINE" > $OUT/tp.log 2>&1
  echo "throughput rc=$?"
  cp $OUT/tp.jsonl $S/tp.jsonl 2>/dev/null; touch $S/tp.done
  cp $S/bg.log $OUT/bg.log; cp $S/corpus/build.json $OUT/build.json 2>/dev/null
  cat $OUT/env.txt; grep -v '^{' $OUT/tp.log | tail -n 40; tail -n 8 $S/bg.log
  ;;
bg)
  T0=$(cat $S/t0)
  echo "[bg] corpus build $(date +%T)"
  taskset -c 6-15 python3 benchmarks/gpu/build_corpus.py build $S/corpus --linux .cache/gpu-text/linux-subset.tar.xz
  echo "[bg] tokenize $(date +%T)"
  taskset -c 6-15 python3 benchmarks/gpu/study.py prepare --size 20m --corpus $S/corpus --runs $S/runs --out $S/prepare.json \
    2>&1 | grep -v Warning | tail -n 3
  echo "[bg] waiting for the GPU $(date +%T)"
  while [ ! -e $S/tp.done ] && [ "$(date +%s)" -lt $((T0 + 560)) ]; do sleep 2; done
  END=$(( $( [ -e $S/tp.done ] && stat -c %Y $S/tp.done || date +%s ) + STUDY_LEN )); echo $END > $S/study_end
  # tokens per side: both sides share the GPU until END, 120 s of start-up each, 70 % of the
  # trainer's measured 20m rate; a multiple of the round's tokens; at most 20 tokens per parameter
  TOK=$(python3 - "$S/tp.jsonl" "$END" <<'EOF'
import json, sys, time
rate = 1.0e6
try:
    for line in open(sys.argv[1]):
        r = json.loads(line)
        if r.get("preset") == "20m" and "tokens_per_s" in r:
            rate = r["tokens_per_s"]
except OSError:
    pass
left = int(sys.argv[2]) - time.time() - 120
per_round = 4 * 32 * 32 * 1024
tok = max(8, min(110, int(0.7 * rate * left / 2 / per_round))) * per_round
print(tok)
EOF
)
  echo "[bg] study pair at $TOK tokens per side $(date +%T)"
  for side in fed central; do
    python3 benchmarks/gpu/study.py run --size 20m --side $side --partition iid --tokens $TOK --seed 0 \
      --corpus $S/corpus --runs $S/runs > $S/$side.log 2>&1 &
  done
  wait
  python3 benchmarks/gpu/study.py summarize --runs $S/runs --out $S/study.json
  echo "[bg] done $(date +%T)"; touch $S/study.done
  ;;
collect)
  START=$(date +%s)
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_fused_gpu.py > $OUT/gputest.log 2>&1
  echo "gpu tests rc=$?"
  END=$(cat $S/study_end 2>/dev/null || echo $((START + CALL2)))
  LIMIT=$(( END + 25 < START + CALL2 ? END + 25 : START + CALL2 ))
  while [ ! -e $S/study.done ] && [ "$(date +%s)" -lt $LIMIT ]; do sleep 3; done
  [ -e $S/study.done ] || python3 benchmarks/gpu/study.py summarize --runs $S/runs --out $S/study.json
  cp $S/study.json $S/bg.log $S/prepare.json $OUT/ 2>/dev/null
  cp $S/corpus/build.json $OUT/build.json 2>/dev/null
  tar czf $OUT/runs.tgz -C $S fed.log central.log \
    $(cd $S && ls -d runs/*/metrics.jsonl runs/*/summary.json runs/*/config.yaml runs/*/data_manifest.json runs/*.cmd.json 2>/dev/null)
  tail -n 12 $OUT/gputest.log; tail -n 6 $S/bg.log; tail -n 3 $S/fed.log $S/central.log
  python3 benchmarks/gpu/study.py summarize --runs $S/runs --out /tmp/sf/study2.json
  ;;
row)
  # a fresh machine: corpus again (same inputs -> same content hash, checked against $EXPECT_HASH),
  # then ONE study row ($ROW_ARGS), cut at $ROW_TIMEOUT seconds; metrics come back either way
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  mkdir -p $S
  python3 benchmarks/gpu/build_corpus.py build $S/corpus --linux .cache/gpu-text/linux-subset.tar.xz > $S/build.log 2>&1
  tail -n 1 $S/build.log
  grep -q "${EXPECT_HASH:-none}" $S/build.log && echo "corpus hash as expected" || echo "CORPUS HASH DIFFERS"
  timeout "${ROW_TIMEOUT:-420}" python3 benchmarks/gpu/study.py run $ROW_ARGS --corpus $S/corpus --runs $S/runs \
    > $S/row.log 2>&1
  echo "row rc=$?"
  cp $S/corpus/build.json $OUT/build.json
  tar czf $OUT/row.tgz -C $S row.log $(cd $S && ls -d runs/*/metrics.jsonl runs/*/summary.json runs/*/config.yaml \
    runs/*/data_manifest.json runs/*.cmd.json 2>/dev/null)
  grep -v Warning $S/row.log | tail -n 4
  for f in $S/runs/*/metrics.jsonl; do echo $f; cut -c1-200 $f | grep eval_ppl | tail -n 3; done
  ;;
esac
