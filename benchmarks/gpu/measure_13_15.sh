#!/usr/bin/env bash
# One lease call (< 8 min on a warm or cold H200; carry .whl): the three timing measurements that
# issue 13 and issue 15 left unmeasured on a GPU, one after another so that none shares the GPU:
#  1. issue 13: clip + conditional rounding of one holder's Δ on the host vs on the training GPU
#     (benchmarks/gpu/device_encode.py, 125m and 350m sizes)
#  2. issue 13: the secure round over the plain round at 125m × 8 holders, with the holders now clipping and
#     rounding on the GPU (benchmarks/gpu/secure_overhead.py --cases overhead; train.encode_on=auto)
#  3. issue 15: DP-SGD throughput with ghost clipping vs the non-private trainer (the bf16-autocast fix of
#     securefed/privacy/ghost.py; benchmarks/privacy/dpsgd_lm.py throughput)
# Everything comes back as $OUT/measure_13_15.tgz plus the three JSON files.
#   bash benchmarks/gpu/measure_13_15.sh
set -u
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
W=/tmp/m1315; mkdir -p $W
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD SECUREFED_CACHE=$W/cache TOKENIZERS_PARALLELISM=true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $W/gpu.txt 2>&1
timeout -k 5 ${T_ENCODE:-150} python3 benchmarks/gpu/device_encode.py --out $W/device_encode.json > $W/device_encode.log 2>&1
echo "device_encode rc=$? $(el)s"; tail -n 3 $W/device_encode.log
timeout -k 5 ${T_OVERHEAD:-330} python3 benchmarks/gpu/secure_overhead.py --cases overhead --out $W/so > $W/so.log 2>&1
echo "secure_overhead rc=$? $(el)s"; grep -h "ratio\|secure_over_plain" $W/so/secure_overhead.json 2>/dev/null | head -4
timeout -k 5 ${T_THROUGHPUT:-120} python3 benchmarks/privacy/dpsgd_lm.py throughput --size 20m --vocab 32768 --seq 1024 \
  --batch 32 --warmup 3 --steps 50 --windows 3 --out $W/throughput.json > $W/throughput.log 2>&1
echo "throughput rc=$? $(el)s"
python3 -c "import json,sys; [print(r['mode'], round(r['tokens_per_s'])) for r in json.load(open(sys.argv[1]))]" $W/throughput.json 2>/dev/null
cp $W/device_encode.json $W/throughput.json $OUT/ 2>/dev/null; cp $W/so/secure_overhead.json $OUT/ 2>/dev/null
tar czf $OUT/measure_13_15.tgz -C $W --exclude cache . ; echo "total $(el)s"
