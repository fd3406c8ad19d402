#!/usr/bin/env bash
# One lease, several GPU jobs one after another with no idle GPU between them (benchmarks/gpu/README.md, "Order for
# the next lease").
# The jobs run detached on the machine; every call polls and copies what has finished into its $OUT, so a lease
# that ends early still returns the rows it completed.
#
#   bash benchmarks/gpu/chain.sh start   # installs the wheels, builds the corpus, starts the chain; polls ≤ LIMIT s
#   bash benchmarks/gpu/chain.sh poll    # polls ≤ LIMIT s more (repeat while the machine stays warm)
#
# carry [".whl", ".cache/gpu-text"]. JOBS names the jobs, run in that order, each alone on the GPU (the default since
# stop 52: "2dpub 2dpubbc", ≈ 1,100 s — h16bs ran in stop 52; a lease with ≈ 400 s left after a job: a second
# `start` with one DP job, which then reuses the corpus; the DP jobs evaluate every round, so a row cut short still
# compares at the rounds it reached):
#   issue 14 (the schedule is fixed by the tokens, so a row cut short still compares at the evaluations it reached):
#   - m75h16: the 75m IID federated row at H = 16 on the 352.3M-token schedule (5 tokens per parameter, 168 rounds,
#     Nesterov 0.7 / 0.9, the momentum warmed up over the first quarter, 42; plain aggregation) — against the
#     centralized 75m row at lr 2e-3 of benchmarks/gpu/raw/issue14/central_75m (same schedule, seed 0). Ran in stop 45:
#     1,607 s with the corpus (7.9 s a round). m75h16bs: the same row split by source (the non-IID cell at 75m).
#   - h16, h16s1, h16s2: the 20m IID federated row at H = 16 on the 465.6M-token schedule (222 rounds, Nesterov
#     0.7 / 0.9, the momentum warmed up over 56), seed 0 / 1 / 2 — against seed 0's centralized row
#     (raw/issue14/long_pair_h32; no other centralized seed was run, as for H = 32's seeds). ≈ 1,060 s each with the
#     corpus (stop 44). h16bs: seed 0 split by source (20m's non-IID cell at H = 16).
#   issue 15 (20m, 4 holders, ε = 8, δ = 1e-5, 268.4M tokens):
#   - 2d: ε = 8 at batch 512 × 128 steps per holder (σ 0.4947); 2dbc: the same with DP-AdamBC (row eps8-bc);
#     2dinf: their non-private partner (run 7's eps-inf-b512 repeated). ≈ 350 s each.
#   - 2dpub: 2d and its non-private partner, both from a public initial model (model.init_from, protocols/dp.md §13)
#     trained first on the corpus' public text (40M tokens): rows eps8-pub, then eps-inf-pub — one after the other:
#     side by side (stop 46) the non-private row held 45 GiB and eps8-pub's per-sample embedding gradient ran out of
#     the H100's memory at its first step. ≈ 85 s of data, 154 s of public model, ≈ 350 + 145 s of rows (stop 46).
#     PUB_ROWS=8 runs eps8-pub alone (a short lease): its partner is then stop 46's eps-inf-pub (raw run9_pub).
#     Stop 47 ran eps8-pub alone (52.01, 3.44x stop 46's eps-inf-pub). 2dpubbc: eps8-bc-pub, DP-AdamBC from the same
#     public model (≈ 350 s more; reuses 2dpub's public model and data when it runs after 2dpub in one lease).
#   - 2dlrbc: 2dlr with DP-AdamBC (row eps8-bc-lr0.01); 2dinflr: the non-private partner at lr NP_LR (default 0.01,
#     row eps-inf-lr0.01): run 12 (stop 49) read ε = 8 at lr 1e-2 717.3 (3e-3: 871.6; 3e-2 worse); run 13 (stop 50)
#     DP-AdamBC at 1e-2 615.4 (2e-2: 725.5) and the non-private row at 1e-2 253.2 (at 3e-3: 160.3, the partner).
#   - 2dlr / 2dpublr: 2d / 2dpub's ε = 8 row at inner lr DP_LR (default 0.01) instead of 3e-3 (rows eps8-lr0.01,
#     eps8-lr0.01-pub): on the CPU preset DP-SGD's best lr was above the non-private one (RESULTS.md (E48)).
set -u
LIMIT=${LIMIT:-560}
t0=$(date +%s)
L=/tmp/chain
mkdir -p $L
collect() {
  cp $L/chain.log "$OUT/" 2>/dev/null
  [ -f /tmp/sf-dpsgd/main.log ] && cp /tmp/sf-dpsgd/main.log "$OUT/dpsgd_main.log"
  [ -d /tmp/sf-dpsgd/b512 ] && cp -r /tmp/sf-dpsgd/b512/. "$OUT/" 2>/dev/null
  # the issue-14 row's progress, even unfinished
  [ -d /tmp/sf/long ] && (cd /tmp/sf/long && tar czf "$OUT/long_pair.tgz" */metrics.jsonl */summary.json *.cmd.json logs prepare.json 2>/dev/null)
  # the DP rows' progress, even unfinished
  [ -d /tmp/sf-dpsgd/runs ] && (cd /tmp/sf-dpsgd/runs && tar czf "$OUT/dpsgd_runs.tgz" */metrics.jsonl */summary.json *.cmd.json 2>/dev/null)
  # 2dpub's (its own S: its rows pair only with each other), the public initial model's run included
  [ -d /tmp/sf-dpsgd-pub/b512 ] && mkdir -p "$OUT/pub" && cp -r /tmp/sf-dpsgd-pub/b512/. "$OUT/pub/" 2>/dev/null
  [ -d /tmp/sf-dpsgd-pub/runs ] && (cd /tmp/sf-dpsgd-pub && tar czf "$OUT/dpsgd_pub_runs.tgz" runs/*/metrics.jsonl \
    runs/*/summary.json runs/*.cmd.json public-init/metrics.jsonl public-init/summary.json public-init.cmd.json 2>/dev/null)
}
progress() {   # each row's rounds done / planned, its recent pace and what is left, so a call can tell what will finish
  python3 - /tmp/sf/long /tmp/sf-dpsgd/runs /tmp/sf-dpsgd-pub/runs <<'PY'
import glob, json, os, statistics, sys
for root in sys.argv[1:]:
    for cmd in sorted(glob.glob(root + "/*.cmd.json")):
        row = cmd[:-len(".cmd.json")]
        try:
            argv = json.load(open(cmd))["argv"]
            planned = next(int(x.split("=", 1)[1]) for x in argv if x.startswith("federation.rounds="))
            rows = [json.loads(x) for x in open(row + "/metrics.jsonl")] if os.path.exists(row + "/metrics.jsonl") else []
        except (OSError, ValueError, KeyError, StopIteration) as e:
            print(f"{os.path.basename(row)}: unreadable ({e})")
            continue
        done = "done" if os.path.exists(row + "/summary.json") else ""
        pace = statistics.median(r["seconds"] for r in rows[-5:]) if rows else None
        ev = [round(r["eval_ppl"], 2) for r in rows if "eval_ppl" in r][-1:]
        left = f", ~{pace * (planned - len(rows)):.0f} s left at {pace:.2f} s/round" if pace and not done else ""
        print(f"{os.path.basename(row)}: round {len(rows)}/{planned}{left}, last eval {ev or '-'} {done}")
PY
}
case "${1:-}" in
start)
  if pgrep -f "[c]hain.sh run" > /dev/null; then echo "the chain is already running"; else
    (setsid nohup bash "$0" run > $L/chain.log 2>&1 < /dev/null &); fi ;;
poll) ;;
run)
  el() { echo $(( $(date +%s) - t0 )); }
  export PYTHONPATH=/tmp/site:$PWD
  # once a machine: a second `start` on a warm machine found them there (pip printed 19 "already exists" lines)
  [ -f /tmp/site/.installed ] || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .whl/*.whl && touch /tmp/site/.installed; } || exit 1
  # one corpus for both scripts: dpsgd_lm.sh reuses /tmp/sf/corpus when it is there
  [ -f /tmp/sf/corpus/build.json ] || python3 benchmarks/gpu/build_corpus.py build /tmp/sf/corpus \
    --linux .cache/gpu-text/linux-subset.tar.xz > $L/build.log 2>&1 || { echo "corpus failed"; tail -n 20 $L/build.log; exit 1; }
  echo "corpus $(el)s"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  long() {   # long <name> <env…>: one federated row of long_pair.sh, waited for (never two jobs on the GPU at once)
    local name=$1; shift
    mkdir -p /tmp/sf-lp
    env SKIP_CENTRAL=1 START_LIMIT=3000 OUTER=nesterov OUTER_LR=0.7 INNER_RATIO=1.0 OUT=/tmp/sf-lp "$@" \
      bash benchmarks/gpu/long_pair.sh start >> $L/long_pair.log 2>&1; echo "$name done $(el)s"; }
  D2=(BATCH=512 H=32 ROUNDS=4 DP_MICRO=128 NP_MICRO=512 PLANNED=61074 SIGMAS="1.0571 0.7001 0.4947"
      SKIP_THROUGHPUT=1 DEADLINE=1000 OUT=/tmp/sf-dpsgd/b512 TOKEN_CACHE=/tmp/sf/cache)   # long_pair.sh's token ids
  mkdir -p /tmp/sf-dpsgd/b512
  for job in ${JOBS:-m75h16bs}; do
    case $job in
      m75h16) long $job SIZE=75m TOKENS=3.52e8 H=16 MOMENTUM_WARMUP=42 ;;
      m75h16bs) long $job SIZE=75m TOKENS=3.52e8 H=16 MOMENTUM_WARMUP=42 PARTITION=by_source ;;
      h16) long $job H=16 MOMENTUM_WARMUP=56 SEED=0 ;;
      h16s1) long $job H=16 MOMENTUM_WARMUP=56 SEED=1 ;;
      h16s2) long $job H=16 MOMENTUM_WARMUP=56 SEED=2 ;;
      h16bs) long $job H=16 MOMENTUM_WARMUP=56 SEED=0 PARTITION=by_source ;;
      2d) env "${D2[@]}" ROWS="8" bash benchmarks/privacy/dpsgd_lm.sh >> /tmp/sf-dpsgd/main.log 2>&1; echo "2d eps8 done $(el)s" ;;
      2dbc) env "${D2[@]}" DP_BC=1 ROWS="8" bash benchmarks/privacy/dpsgd_lm.sh >> /tmp/sf-dpsgd/main.log 2>&1; echo "2d' eps8-bc done $(el)s" ;;
      2dinf) env "${D2[@]}" ROWS="inf" bash benchmarks/privacy/dpsgd_lm.sh >> /tmp/sf-dpsgd/main.log 2>&1; echo "2d inf done $(el)s" ;;
      2dpub) mkdir -p /tmp/sf-dpsgd-pub/b512
             env "${D2[@]}" PUBLIC_INIT=1 S=/tmp/sf-dpsgd-pub OUT=/tmp/sf-dpsgd-pub/b512 ROWS="${PUB_ROWS:-8,inf}" \
               bash benchmarks/privacy/dpsgd_lm.sh >> /tmp/sf-dpsgd/main.log 2>&1; echo "2d from a public init done $(el)s" ;;
      2dpubbc) mkdir -p /tmp/sf-dpsgd-pub/b512   # after 2dpub in the same lease: its public model, its rows' partner
             env "${D2[@]}" PUBLIC_INIT=1 DP_BC=1 S=/tmp/sf-dpsgd-pub OUT=/tmp/sf-dpsgd-pub/b512 ROWS="8" \
               bash benchmarks/privacy/dpsgd_lm.sh >> /tmp/sf-dpsgd/main.log 2>&1; echo "2d' from a public init done $(el)s" ;;
      2dlr) env "${D2[@]}" DP_LR=${DP_LR:-0.01} ROWS="8" bash benchmarks/privacy/dpsgd_lm.sh >> /tmp/sf-dpsgd/main.log 2>&1
            echo "2d at lr ${DP_LR:-0.01} done $(el)s" ;;
      2dlrbc) env "${D2[@]}" DP_LR=${DP_LR:-0.01} DP_BC=1 ROWS="8" bash benchmarks/privacy/dpsgd_lm.sh >> /tmp/sf-dpsgd/main.log 2>&1
            echo "2d' at lr ${DP_LR:-0.01} done $(el)s" ;;
      2dinflr) env "${D2[@]}" NP_LR=${NP_LR:-0.01} ROWS="inf" bash benchmarks/privacy/dpsgd_lm.sh >> /tmp/sf-dpsgd/main.log 2>&1
            echo "2d inf at lr ${NP_LR:-0.01} done $(el)s" ;;
      2dpublr) mkdir -p /tmp/sf-dpsgd-pub/b512   # after 2dpub in the same lease, as 2dpubbc
             env "${D2[@]}" PUBLIC_INIT=1 DP_LR=${DP_LR:-0.01} S=/tmp/sf-dpsgd-pub OUT=/tmp/sf-dpsgd-pub/b512 ROWS="8" \
               bash benchmarks/privacy/dpsgd_lm.sh >> /tmp/sf-dpsgd/main.log 2>&1; echo "2d from a public init at lr ${DP_LR:-0.01} done $(el)s" ;;
      *) echo "unknown job $job (m75h16, m75h16bs, h16, h16s1, h16s2, h16bs, 2d, 2dbc, 2dinf, 2dpub, 2dpubbc, 2dlr, 2dlrbc, 2dinflr, 2dpublr)" ;;
    esac
  done
  echo "chain finished $(el)s"
  exit 0 ;;
*) echo "usage: $0 start|poll"; exit 2 ;;
esac
sleep 10
while pgrep -f "[c]hain.sh run" > /dev/null && [ $(( $(date +%s) - t0 )) -lt "$LIMIT" ]; do
  sleep 20; collect
done
collect
echo "--- after $(( $(date +%s) - t0 ))s:"; cat $L/chain.log
tail -n 5 /tmp/sf-dpsgd/main.log 2>/dev/null; tail -n 4 $L/long_pair.log 2>/dev/null
progress | tee "$OUT/progress.txt"
pgrep -f "[c]hain.sh run" > /dev/null && echo "chain still running" || echo "chain not running"
