#!/usr/bin/env bash
# Issue 17 on one multi-GPU host (8 × H200 expected), from the repository root there:
#
#   bash benchmarks/gpu/fsdp.sh cases   # 1.3b on one GPU / DDP / FSDP, then the largest preset that fits
#                                       # each (computed memory, largest first, smaller on failure)
#                                       #   -> benchmarks/gpu/fsdp.json (rows appended/replaced per case)
#   bash benchmarks/gpu/fsdp.sh ray     # 8 holders × 125m, one per GPU, 2 rounds on Ray
#                                       #   -> benchmarks/gpu/fsdp_ray.json (needs .corpus/, gpu-125m preset)
#   bash benchmarks/gpu/fsdp.sh tiny    # the same logic on CPU (2 gloo processes; Ray with 4 CPU holders)
#
# The cases run one after another (each its own process group); a 7b compile + two rounds take minutes, so
# on a leased machine give each call one stage (CASE_TIMEOUT bounds one case). GIB: one GPU's memory.
set -eu
STAGE=${1:-cases}
GPUS=${GPUS:-$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)}
GIB=${GIB:-139}
CASE_TIMEOUT=${CASE_TIMEOUT:-1800}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
case "$STAGE" in
  cases) python benchmarks/gpu/fsdp.py all --gpus "$GPUS" --gib "$GIB" --case-timeout "$CASE_TIMEOUT" \
           --out benchmarks/gpu/fsdp.json ;;
  ray)   python benchmarks/gpu/fsdp.py ray --gpus "$GPUS" --case-timeout "$CASE_TIMEOUT" \
           --out benchmarks/gpu/fsdp_ray.json ;;
  tiny)  python benchmarks/gpu/fsdp.py all --tiny --out "${OUT:-/tmp}/fsdp_tiny.json"
         python benchmarks/gpu/fsdp.py ray --tiny --out "${OUT:-/tmp}/fsdp_ray_tiny.json" ;;
  *) echo "usage: $0 cases|ray|tiny" >&2; exit 2 ;;
esac
