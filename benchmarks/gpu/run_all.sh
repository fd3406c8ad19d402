#!/usr/bin/env bash
# The GPU measurements of benchmarks/gpu on one machine (1+ GPUs), from the repository root, with the
# corpus built (build_corpus.py build $CORPUS) and the wheels of README.md installed. Each row is its
# own command; each writes as it goes (throughput: a JSON line per case; study rows: metrics.jsonl per
# round), so a run cut short keeps what it did. Sized for more than one lease call: run pieces with
# ONLY=throughput|study|secure|round.
#
#   CORPUS=/tmp/sf/corpus RES=/tmp/gpu-results bash benchmarks/gpu/run_all.sh
set -u
RES=${RES:-/tmp/gpu-results}
CORPUS=${CORPUS:-.corpus}
RUNS=${RUNS:-$RES/runs}
TOKENS=${TOKENS:-464000000}        # 20 tokens per parameter at 20m (23.2M parameters)
ONLY=${ONLY:-all}
mkdir -p "$RES" "$RUNS"
export PYTHONUNBUFFERED=1 SECUREFED_CACHE=${SECUREFED_CACHE:-/tmp/sfcache} TOKENIZERS_PARALLELISM=true

if [ "$ONLY" = all ] || [ "$ONLY" = throughput ]; then
  python3 benchmarks/gpu/throughput.py --out "$RES/throughput.jsonl" --cases \
    125m:32:plain:off:none:auto:20,125m:64:trainer:head:blocks:auto:64,125m:64:plain:head:blocks:auto:64,1.3b:8:plain:off:none:auto:10,1.3b:16:trainer:head:blocks:auto:64,1.3b:16:plain:head:blocks:auto:64 \
    > "$RES/throughput.log" 2>&1
  tail -n 12 "$RES/throughput.log"
fi

row() { python3 benchmarks/gpu/study.py run --corpus "$CORPUS" --runs "$RUNS" "$@" > "$RUNS/last.log" 2>&1; echo "row $* rc=$?"; }

if [ "$ONLY" = all ] || [ "$ONLY" = study ]; then
  python3 benchmarks/gpu/study.py prepare --size 20m --corpus "$CORPUS" --out "$RES/prepare.json"
  for seed in 0 1 2; do
    row --size 20m --side central --tokens "$TOKENS" --seed $seed
    row --size 20m --side fed --outer fedavg --outer-lr 1.0 --inner-lr-ratio 1.0 --tokens "$TOKENS" --seed $seed
    row --size 20m --side fed --outer nesterov --outer-lr 0.7 --inner-lr-ratio 1.0 --tokens "$TOKENS" --seed $seed
  done
  for h in 128 512; do row --size 20m --side fed --outer nesterov --outer-lr 0.7 --h $h --inner-lr-ratio 1.0 --tokens "$TOKENS"; done
  row --size 20m --side fed --partition by_source --outer nesterov --outer-lr 0.7 --inner-lr-ratio 1.0 --tokens "$TOKENS"
fi

if [ "$ONLY" = all ] || [ "$ONLY" = secure ]; then  # secure aggregation must not change the result
  row --size 20m --side fed --outer fedavg --outer-lr 1.0 --inner-lr-ratio 1.0 --tokens 1e8 --clip 1000
  row --size 20m --side fed --outer fedavg --outer-lr 1.0 --inner-lr-ratio 1.0 --tokens 1e8 --clip 1000 --secure
fi

if [ "$ONLY" = all ] || [ "$ONLY" = round ]; then   # one secure round of the 1.3b preset (issue 8 (d))
  python3 -c 'import sys; from securefed.cli import main; sys.exit(main())' simulate --preset gpu-1.3b \
    --set federation.rounds=1 --set baseline=false --out "$RES/d-1.3b" --quiet > "$RES/d-1.3b.log" 2>&1
  echo "1.3b round rc=$?"
fi
python3 benchmarks/gpu/study.py summarize --runs "$RUNS" --out "$RES/study.json"
