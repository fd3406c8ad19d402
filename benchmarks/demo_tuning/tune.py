"""One federated-vs-centralized tuning run of the demo's data, model and shape (prints one JSON line).

    python benchmarks/demo_tuning/tune.py [key=value ...]      e.g.  lr=0.004 b1=0.8 minlr=1.0 warm=30

It is `securefed simulate` — the one round engine (securefed/federation), secure aggregation and all —
with the short keys below mapped to config overrides, in a throw-away run directory. The defaults are
the FIRST-session demo settings (lr 0.003, warmup 10, cosine to 0.1, beta1 0.9, beta2 0.95, clip 1.0),
the base of benchmarks/demo_tuning.md's tables; the shipped demo is
``minlr=1.0 warm=30 lr=0.004 b1=0.8 b2=0.99 clip=0.5 clr=0.003``.

Keys: R rounds, K local steps, n holders, bs holder batch, lr holder lr, clr the baseline's own lr (0:
the holders'), cbs the baseline's batch (0: n·bs), outer fedavg|fedmom|nesterov, olr outer lr, mom
outer momentum, warm warmup steps, minlr cosine floor, b1/b2 AdamW betas, wd weight decay, clip inner
grad-clip, reset AdamW reset per round (0/1), part iid|by_source|dirichlet, ms max sources, mb max
bytes per source, seq sequence length, weighting tokens|uniform, seed, central 0 to skip the baseline,
agg secagg|plain|ckks+secagg. THREADS sets torch threads; STDLIB_DIR points the stdlib corpus at a copy
of another Python's Lib (to replay this machine's corpus elsewhere). Rows of benchmarks/demo_tuning.md
that used experiment-only hooks of the old hand-written loop (resetm, olr_warm, d/L model overrides)
are recorded in results.jsonl; they no longer replay.
"""
import json
import os
import sys
import tempfile
import time

import torch

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
if os.environ.get("STDLIB_DIR"):
    from pathlib import Path

    import securefed.training.data.stdlib as S
    S.stdlib_dir = lambda: Path(os.environ["STDLIB_DIR"])
from securefed.federation.simulation import Simulation  # noqa: E402
from securefed.runtime.config import load_run_config  # noqa: E402

a = dict(R=16, K=6, lr=0.003, clr=0.0, outer="fedavg", olr=1.0, mom=0.9, bs=16, warm=10, minlr=0.1, part="by_source",
         ms=8, mb=400000, central=1, reset=0, wd=0.1, cbs=0, n=4, weighting="tokens", seq=128, b2=0.95, clip=1.0,
         seed=0, b1=0.9, agg="secagg")
for kv in sys.argv[1:]:
    k, v = kv.split("=", 1)
    if k not in a:
        sys.exit(f"tune.py: unknown key {k!r}; keys: {sorted(a)}")
    a[k] = type(a[k])(v)
overrides = [
    f"federation.rounds={a['R']}", f"train.local_steps={a['K']}", f"federation.n_holders={a['n']}",
    f"train.batch_size={a['bs']}", f"train.lr={a['lr']}", f"outer.name={a['outer']}", f"outer.lr={a['olr']}",
    f"outer.momentum={a['mom']}", f"train.warmup_steps={a['warm']}", f"train.min_lr_ratio={a['minlr']}",
    f"train.beta1={a['b1']}", f"train.beta2={a['b2']}", f"train.weight_decay={a['wd']}", f"train.grad_clip={a['clip']}",
    f"train.reset_optimizer={bool(a['reset'])}", f"data.partition={a['part']}", f"data.max_sources={a['ms']}",
    f"data.max_bytes_per_source={a['mb']}", f"data.seq_len={a['seq']}", f"federation.weighting={a['weighting']}",
    f"seed={a['seed']}", f"baseline={bool(a['central'])}", f"baseline_lr={a['clr'] or None}",
    f"baseline_batch_size={a['cbs'] or None}", f"aggregation.mode={a['agg']}", "federation.eval_every=4",
    "train.accelerator=cpu",
] + (["aggregation.ckks.enabled=true"] if a["agg"] == "ckks+secagg" else [])
t = time.time()
with tempfile.TemporaryDirectory() as tmp:
    s = Simulation(load_run_config(overrides=overrides), f"{tmp}/run", progress=False).run()
print(json.dumps({"args": a, "fed": s.get("fed_eval_ppl"), "central": s.get("central_eval_ppl"),
                  "ratio": s.get("fed_over_central_ppl"), "seconds": round(time.time() - t, 1)}), flush=True)
