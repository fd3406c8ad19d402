#!/usr/bin/env bash
# Issue 15, item 4: record-level DP-SGD at LM scale, one lease call on one H200 (< 8 min, machine start aside):
#
#   bash benchmarks/privacy/dpsgd_lm.sh              # repository root there; carry .whl/ and .cache/gpu-text
#   TINY=1 PYTHON=.venv/bin/python OUT=/tmp/o bash benchmarks/privacy/dpsgd_lm.sh   # CPU, end to end, ~10 min
#
# What it runs (driver: benchmarks/privacy/dpsgd_lm.py; results page: benchmarks/privacy/dpsgd_lm.md):
#  1. throughput (GPU, random tokens, batch 32 × 1024): the non-private trainer (compile + Liger), the same
#     eager, DP-SGD with ghost clipping (book-keeping; and with Opacus' second backward), DP-SGD with
#     per-sample gradients — while 2. runs on the CPU (say so: the GPU is otherwise idle, the CPU is busy)
#  2. the issue-14 corpus (benchmarks/gpu/build_corpus.py from the carried linux subset; 68 sources,
#     hash acd8b060…), tokenized once with the rows' data config
#  3. four rows side by side on the one GPU, each exactly `securefed simulate` with secure aggregation:
#     20m, 4 holders IID (61,305 records each), FedAvg, K = 8 local steps × 2 rounds = 16 DP-SGD steps
#     per holder, expected (Poisson) batch 128 = 4 ghost slices of 32, lr 3e-3 (warmup 2), C = 1,
#     δ = 1e-5 (≤ 1/records); equal tokens: 8.39M per row. ε = ∞ is the non-private trainer at the
#     same batch. σ below: Opacus RDP (the holders' own accountant) at q = 128/61305 and 16 steps,
#     calibrated on CPU beforehand with
#       python benchmarks/privacy/dpsgd_lm.py calibrate --records 61305 --batch 128 --steps 16
#     (ε at these σ: 0.9997, 2.9958, 7.9933). Rows evaluate every round; one that the deadline stops
#     still pairs at the last round every row reached.
#  4. summary.json (+ each row's metrics.jsonl, summary.json, ledger, log) under $OUT
# ROWS may also name infb: a second non-private row at its own batch NP_BATCH (dividing H·BATCH) with H·BATCH/NP_BATCH
#   local steps a round, so the same tokens; summarize compares every row with the best non-private row and with
#   the non-private row of its own plan (RESULTS.md (zt15): 3.80× against 1.45×).
# NP_MICRO=N: the ε = ∞ row's step in slices of N sequences (train.micro_batch_size; batch 2,048 does not fit one forward).
# DP_MICRO=N: the DP rows' Poisson batches in ghost-clipping slices of N (default 32; 128 with Liger's block kernels runs
#   1.19× faster at 39 GiB, RESULTS.md (zp15); the clipped sum is the same for any slicing, up to rounding).
# PUBLIC_INIT=1 (GPU): every row starts from a public initial model (model.init_from, protocols/dp.md §13) that
#   `dpsgd_lm.py pretrain` first trains centrally on the corpus' public/ text (the tokenizer's, no holder's; PUBLIC_TOKENS,
#   default 4e7); rows named eps8-pub, eps-inf-pub, …. Give it an S of its own so its rows pair only with each other.
# ROWS="inf 8,3 1" runs ∞ and 8 side by side, then 3 and 1 (default: all four at once). Longer than a call: start
# it detached (setsid nohup … &) with OUT on the machine's disk and DEADLINE past the call; pack $OUT in a later call.
set -u
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
# ROWS is checked before anything is built (see the row loop below)
IFS=, read -r -a WAVES <<< "${ROWS:-inf 8 3 1}"
for r in ${WAVES[*]}; do case $r in inf|infb|8|3|1) ;; *) echo "ROWS: unknown row '$r' (inf, infb, 8, 3, 1)"; exit 2 ;; esac; done
# infb: the non-private row at its own batch NP_BATCH with the same tokens (H·B/NP_BATCH local steps a round)
if [[ " ${WAVES[*]} " == *infb* ]]; then
  if [ "${TINY:-0}" = 1 ]; then B=16 H=2; else B=${BATCH:-128} H=${H:-8}; fi
  [ "${NP_BATCH:-0}" -gt 0 ] 2>/dev/null && [ $(( H * B % NP_BATCH )) = 0 ] || {
    echo "ROWS has infb: set NP_BATCH to a batch that divides H·BATCH = $(( H * B )) (the same tokens per round)"; exit 2; }
  NP_H=$(( H * B / NP_BATCH ))
fi
S=${S:-/tmp/sf-dpsgd}
# The lease returns at most 8 files: on the GPU everything is written to $O and comes back as one archive
# ($OUT/dpsgd_lm.tgz) beside summary.json and throughput.json; in TINY mode $O is $OUT itself.
if [ "${TINY:-0}" = 1 ]; then O=$OUT; else O=$S/out; fi
mkdir -p "$S" "$OUT" "$O"
# TOKEN_CACHE: where the corpus' token ids are cached (by corpus and tokenizer hash, so rows of any S may share it):
# benchmarks/gpu/chain.sh points it at long_pair.sh's, so a DP job after an issue-14 job tokenizes nothing again
export PYTHONUNBUFFERED=1 SECUREFED_CACHE=${TOKEN_CACHE:-$S/cache} TOKENIZERS_PARALLELISM=true
D=benchmarks/privacy/dpsgd_lm.py
# DP_UNIT=document|group: the DP rows protect one document (train.dp_sgd.unit, protocols/dp.md §10.2; rows named eps8-document)
# (every row then holds out the same documents, data.eval_split=independent, so all rows share one eval set).
# prepare then counts the document-packed rows the DP rows sample from, and unless SIGMAS is given the σ for
# ε = 1 / 3 / 8 are calibrated here, on this machine, at the smallest holder's rows (q = BATCH / rows, H·ROUNDS steps)
U=${DP_UNIT:+-$DP_UNIT}; USET=(); UPREP=(--unit "${DP_UNIT:-sequence}"); [ -n "${DP_UNIT:-}" ] && USET=(--set "train.dp_sgd.unit=$DP_UNIT")
EVSET=(); [ -n "${DP_UNIT:-}" ] && EVSET=(--set data.eval_split=independent)
# DP_BC=1: the DP rows with DP-AdamBC (train.dp_sgd.adam_bias_correction, protocols/dp.md §10.6), named eps8-bc, …
BCS=""; [ "${DP_BC:-0}" = 1 ] && { BCS=-bc; USET+=(--set train.dp_sgd.adam_bias_correction=true); }
# DP_LR=X: the DP rows at inner lr X instead of 3e-3, the rate tuned without DP (named eps8-lr0.01, …): on the CPU
# dp-sgd preset DP-SGD's best lr was above the non-private one (benchmarks/RESULTS.md (E48), benchmarks/privacy/dp_lr.sh)
[ -n "${DP_LR:-}" ] && { BCS=$BCS-lr$DP_LR; USET+=(--lr "$DP_LR"); }
# NP_LR=X: the non-private row at inner lr X (named eps-inf-lr0.01): its own lr, for a tuned partner (run 12)
NPS=""; NPSET=(); [ -n "${NP_LR:-}" ] && { NPS=-lr$NP_LR; NPSET=(--lr "$NP_LR"); }
if [ "${TINY:-0}" = 1 ]; then
  P=${PYTHON:-python3}; export PYTHONPATH=$PWD
  COMMON=(--tiny --batch 16 --micro 8 --h 2 --rounds 2 --runs "$S/runs" "${EVSET[@]}")
  TP=(--size tiny --vocab 4096 --seq 128 --batch 8 --warmup 1 --steps 3 --windows 1)
  DEADLINE=${DEADLINE:-900}
  $P $D prepare "${COMMON[@]}" "${UPREP[@]}" --out "$O/prepare.json" || exit 1
  N=$($P -c "import json,sys; print(min(json.load(open(sys.argv[1]))['records_per_holder']))" "$O/prepare.json")
  # tiny: σ from the accountant at this corpus' smallest holder (the GPU σ below are frozen)
  read -r SIG1 SIG3 SIG8 < <($P $D calibrate --records "$N" --batch 16 --steps 4 2>/dev/null |
    $P -c "import json,sys; s=json.load(sys.stdin)['sigma']; print(s['1'], s['3'], s['8'])")
  $P $D throughput "${TP[@]}" --out "$O/throughput.json" > "$O/throughput.log" 2>&1
  echo "throughput rc=$? $(el)s"
else
  P=python3; export PYTHONPATH=/tmp/site:$PWD
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  # the corpus h_sweep.sh built on the same warm machine is reused (same build, same content hash)
  C=$S/corpus; [ -f /tmp/sf/corpus/build.json ] && C=/tmp/sf/corpus
  # the plan: expected batch, local steps, rounds, σ for ε = 1 / 3 / 8 and the records they were calibrated at
  # (defaults: run 1, 2026-12-03, 16 steps — too short to learn, see dpsgd_lm.md; the longer plan is there)
  B=${BATCH:-128} H=${H:-8} R=${ROUNDS:-2} PLANNED=${PLANNED:-61305}
  read -r SIG1 SIG3 SIG8 <<< "${SIGMAS:-0.8643 0.5509 0.3691}"
  COMMON=(--corpus "$C" --batch "$B" --micro "${DP_MICRO:-32}" --h "$H" --rounds "$R" --lr 3e-3 --warmup 2 --runs "$S/runs"
          "${EVSET[@]}")
  TP=(--size 20m --vocab 32768 --seq 1024 --batch 32 --warmup 3 --steps 50 --windows 3)
  DEADLINE=${DEADLINE:-465}
  ( { [ -f "$C/build.json" ] || python3 benchmarks/gpu/build_corpus.py build "$C" --linux .cache/gpu-text/linux-subset.tar.xz > "$O/build.log" 2>&1; } &&
    $P $D prepare "${COMMON[@]}" "${UPREP[@]}" --out "$O/prepare.json" > "$O/prepare.log" 2>&1 ) &
  CORPUS=$!
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$O/gpu.txt" 2>&1
  if [ "${SKIP_THROUGHPUT:-0}" = 1 ]; then echo "throughput skipped (SKIP_THROUGHPUT=1)"; else
    $P $D throughput "${TP[@]}" --out "$O/throughput.json" > "$O/throughput.log" 2>&1
    echo "throughput rc=$? $(el)s"
  fi
  wait $CORPUS; rc=$?; echo "corpus + tokenize rc=$rc $(el)s"; [ $rc = 0 ] || { tail -n 20 "$O"/build.log "$O"/prepare.log; exit 1; }
fi
cat "$O/prepare.json"
if [ "${TINY:-0}" != 1 ] && [ -n "${DP_UNIT:-}" ] && [ -z "${SIGMAS:-}" ]; then
  PLANNED=$($P -c "import json,sys; print(min(json.load(open(sys.argv[1]))['records_per_holder']))" "$O/prepare.json")
  read -r SIG1 SIG3 SIG8 < <($P $D calibrate --records "$PLANNED" --batch "$B" --steps $(( H * R )) | tee "$O/calibrate.json" |
    $P -c "import json,sys; s=json.load(sys.stdin)['sigma']; print(s['1'], s['3'], s['8'])")
  echo "sigma calibrated here for DP_UNIT=$DP_UNIT at $PLANNED rows, batch $B, $(( H * R )) steps"
fi
echo "sigma: eps1=$SIG1 eps3=$SIG3 eps8=$SIG8"
# PUBLIC_INIT=1: the public initial model, then every row from it (suffix -pub)
PUB=""; ISET=()
if [ "${PUBLIC_INIT:-0}" = 1 ]; then
  [ "${TINY:-0}" = 1 ] && { echo "PUBLIC_INIT needs the GPU corpus' public/ text (benchmarks/privacy/public_init.sh is the CPU form)"; exit 2; }
  [ -f "$S/public-init/model/model.safetensors" ] || $P $D pretrain --corpus "$C" --tokens "${PUBLIC_TOKENS:-4e7}" \
      --out "$S/public-init" > "$O/public-init.log" 2>&1 || { echo "public initial model failed"; tail -n 20 "$O/public-init.log"; exit 1; }
  cp "$S/public-init/summary.json" "$O/public-init.summary.json"; cp "$S/public-init/metrics.jsonl" "$O/public-init.metrics.jsonl"
  echo "public initial model $(el)s: $($P -c "import json,sys; s=json.load(open(sys.argv[1])); print('eval ppl', round(s['fed_eval_ppl'], 2), 'on its own public text,', s['tokens'], 'tokens')" "$S/public-init/summary.json")"
  PUB=-pub; ISET=(--set "model.init_from=$S/public-init/model")
fi
[ "${TINY:-0}" = 1 ] || $P -c "import json,sys; n=min(json.load(open(sys.argv[1]))['records_per_holder']); p=int(sys.argv[2]); print(
  'records per holder: min', n, '(as planned)' if n == p else f'- NOT the planned {p}: the sigma above miss their eps; the holders report the true eps')" "$O/prepare.json" "$PLANNED"
# each row stops (SIGINT, then KILL 10 s later) at the deadline; the rounds it finished are on disk
row() { name=$1; shift; left=$(( DEADLINE - $(el) )); [ $left -gt 0 ] || left=1
        timeout -k 10 -s INT $left $P $D row "${COMMON[@]}" --name "$name" "$@" > "$O/$name.log" 2>&1; echo "$name rc=$? $(el)s"; }
# ROWS: which ε rows, in waves separated by commas; a wave's rows run side by side on the GPU (one at a time in
# TINY mode, two CPU cores), waves one after another; a row whose run already has its summary is not run again
one() { case $1 in inf) row "eps-inf$U$NPS$PUB" ${NP_MICRO:+--np-micro "$NP_MICRO"} "${NPSET[@]}" "${ISET[@]}" ;;
                   8) row "eps8$U$BCS$PUB" --sigma "$SIG8" "${USET[@]}" "${ISET[@]}" ;;
                   3) row "eps3$U$BCS$PUB" --sigma "$SIG3" "${USET[@]}" "${ISET[@]}" ;;
                   1) row "eps1$U$BCS$PUB" --sigma "$SIG1" "${USET[@]}" "${ISET[@]}" ;;
                   infb) row "eps-inf-b$NP_BATCH$U$PUB" --batch "$NP_BATCH" --h "$NP_H" ${NP_MICRO:+--np-micro "$NP_MICRO"} "${ISET[@]}" ;; esac; }
for wave in "${WAVES[@]}"; do
  for r in $wave; do
    n=eps$r$U$BCS$PUB; [ "$r" = inf ] && n=eps-inf$U$NPS$PUB; [ "$r" = infb ] && n=eps-inf-b$NP_BATCH$U$PUB
    [ -f "$S/runs/$n/summary.json" ] && { echo "$n: already finished"; continue; }
    if [ "${TINY:-0}" = 1 ]; then one "$r"; else one "$r" & fi
  done
  wait
done
for d in "$S"/runs/*/; do
  n=$(basename "$d"); cp "$d/metrics.jsonl" "$O/$n.metrics.jsonl" 2>/dev/null; cp "$d/summary.json" "$O/$n.summary.json" 2>/dev/null
  cp "$d/privacy/ledger.jsonl" "$O/$n.ledger.jsonl" 2>/dev/null; cp "$S/runs/$n.cmd.json" "$O/" 2>/dev/null
done
$P $D summarize --runs "$S/runs" --throughput "$O/throughput.json" --out "$O/summary.json"
if [ "$O" != "$OUT" ]; then
  cp "$O/summary.json" "$O/throughput.json" "$OUT/" 2>/dev/null; tar czf "$OUT/dpsgd_lm.tgz" -C "$O" .
fi
echo "total $(el)s"
