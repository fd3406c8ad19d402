#!/usr/bin/env bash
# Run many tune.py configurations side by side on a many-core host (how benchmarks/demo_tuning.md's
# sweeps 1-3 ran on the lent H200 machine's CPU; the runs are CPU-only and bit-identical to this machine's).
#   bash benchmarks/demo_tuning/sweep_device.sh CONFIGS_FILE PARALLEL   (from the repository root)
# One configuration per line of CONFIGS_FILE (key=value ...). Results append to $OUT/results.jsonl.
# Another Python's stdlib is another corpus: carry a copy of this machine's (ignored folder .tune/stdlib,
# made with `find $LIB -name '*.py' ... | tar`) and the packages missing there as wheels in .whl/.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export STDLIB_DIR=$PWD/.tune/stdlib SECUREFED_CACHE=/tmp/sfcache THREADS=${THREADS:-2} OMP_NUM_THREADS=${THREADS:-2} PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=
nproc
# prewarm tokenizer/tokens caches for each distinct data config
python3 benchmarks/demo_tuning/tune.py R=1 K=1 central=0 > /dev/null 2>$OUT/prewarm.err || tail -20 $OUT/prewarm.err
grep -v '^#' "$1" | grep . | xargs -P "$2" -I{} sh -c 'python3 benchmarks/demo_tuning/tune.py {} >> $OUT/results.jsonl 2>>$OUT/err.log || echo "FAIL {}" >> $OUT/results.jsonl'
cat $OUT/results.jsonl | python3 -c "
import sys,json
for l in sys.stdin:
    if l.startswith('FAIL'): print(l.strip()); continue
    r=json.loads(l); a=r['args']; d={k:v for k,v in a.items() if v!={'R':16,'K':6,'lr':0.003,'outer':'fedavg','olr':1.0,'mom':0.9,'bs':16,'warm':10,'minlr':0.1,'part':'by_source','ms':8,'mb':400000,'central':1,'reset':0,'wd':0.1,'cbs':0,'n':4,'model':'tiny','weighting':'tokens','seq':128,'olr_warm':0,'b2':0.95,'clip':1.0,'seed':0,'fed':1,'b1':0.9,'d':0,'L':0}.get(k)}
    print(d, r['fed'], r.get('central'), r.get('ratio'), r['fed_curve'], r['fed_s'], r.get('central_s'))
"
