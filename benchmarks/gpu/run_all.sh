#!/usr/bin/env bash
# Every GPU measurement of benchmarks/gpu in one command (sized for one lease call of < 10 minutes).
#
#   RES=/tmp/gpu-results bash benchmarks/gpu/run_all.sh      # from the repository root, .corpus/ built
#
# With 2+ GPUs: one holder on 2 GPUs (DDP) first, alone; then GPU 0 runs (a) the throughput table
# and after it (d) the 1.3B round, while GPU 1 runs (b) fed-vs-central for 20m/75m/125m and (c)
# secagg-vs-plain rounds at 125m n=8 side by side (their perplexities, bytes, peak memory and the
# CPU-side aggregation times do not depend on sharing the GPU; their training seconds do, and are
# reported as such). With 1 GPU: (a) first, then the rest side by side on that GPU.
# Results go to $RES (JSON per study + logs), packed into $PACK (a .tgz) every 20 s so a cut run
# still leaves them.
set -u
RES=${RES:-/tmp/gpu-results}
PACK=${PACK:-$RES.tgz}
T_STUDY=${T_STUDY:-420}
T_TP=${T_TP:-420}
TP_DEADLINE=${TP_DEADLINE:-330}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1 SECUREFED_CACHE=${SECUREFED_CACHE:-/tmp/sfcache}
export TOKENIZERS_PARALLELISM=true
NGPU=$(python3 -c 'import torch; print(torch.cuda.device_count())')
echo "GPUs: $NGPU"
(while true; do tar czf "$PACK.tmp" -C "$RES" . 2>/dev/null && mv -f "$PACK.tmp" "$PACK"; sleep 20; done) &
PACKER=$!

if [ "$NGPU" -ge 2 ]; then
  timeout 100 python3 benchmarks/gpu/multi_gpu_holder.py --devices 2 --out "$RES/ddp.json" > "$RES/ddp.log" 2>&1
  echo "ddp rc=$?"; tail -c 1500 "$RES/ddp.log"
  TP_GPU=0; ST_GPU=1
else
  TP_GPU=0; ST_GPU=0
fi

study() {  # name preset [extra args...]
  local name=$1 preset=$2; shift 2
  CUDA_VISIBLE_DEVICES=${GPU:-$ST_GPU} OMP_NUM_THREADS=4 timeout "$T_STUDY" python3 benchmarks/gpu/fed_study.py \
    --preset "$preset" --out "/tmp/sfruns/$name" --result "$RES/$name.json" --label "$name" "$@" \
    > "$RES/$name.log" 2>&1
  echo "$name rc=$?"
}

# (a), then (d) on the same GPU: the 1.3B round needs ~63 GiB and must not share a GPU with (b)/(c)
# (it ran out of memory beside them once).
( CUDA_VISIBLE_DEVICES=$TP_GPU timeout "$T_TP" python3 benchmarks/gpu/throughput.py --out "$RES/throughput.jsonl" \
    --deadline "$TP_DEADLINE" > "$RES/throughput.log" 2>&1
  if [ "$NGPU" -ge 2 ]; then GPU=$TP_GPU study d-1.3b gpu-1.3b --stop-after-round 1; fi ) &
TP=$!
if [ "$NGPU" -lt 2 ]; then wait $TP; fi

PIDS=""
if [ "$NGPU" -lt 2 ]; then study d-1.3b gpu-1.3b --stop-after-round 1 & PIDS="$PIDS $!"; fi
for s in 20m 75m 125m; do study "b-$s" "gpu-$s" & PIDS="$PIDS $!"; done
( study c-secagg gpu-125m --stop-after-round 1 --set federation.n_holders=8 --set data.partition=iid \
    --set federation.rounds=1 --set train.local_steps=8 --set train.batch_size=8 --set data.seq_len=2048 \
    --set baseline=false
  study c-plain gpu-125m --stop-after-round 1 --set federation.n_holders=8 --set data.partition=iid \
    --set federation.rounds=1 --set train.local_steps=8 --set train.batch_size=8 --set data.seq_len=2048 \
    --set baseline=false --set aggregation.mode=plain ) & PIDS="$PIDS $!"
wait $PIDS
if [ "$NGPU" -ge 2 ]; then wait $TP; fi
kill $PACKER 2>/dev/null
tar czf "$PACK" -C "$RES" .
nvidia-smi --query-gpu=index,name,memory.used,clocks.sm,clocks.max.sm,power.draw --format=csv
echo "== throughput"; cat "$RES/throughput.jsonl" 2>/dev/null | cut -c1-400
for f in "$RES"/*.log; do echo "== $f"; tail -n 3 "$f" | cut -c1-600; done
