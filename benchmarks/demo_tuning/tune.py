"""One federated-vs-centralized tuning run of the demo's data, model and shape (prints one JSON line).

    python benchmarks/demo_tuning/tune.py [key=value ...]      e.g.  lr=0.004 b1=0.8 minlr=1.0 warm=30

The defaults are the FIRST-session demo settings (lr 0.003, warmup 10, cosine to 0.1, beta1 0.9,
beta2 0.95, clip 1.0), the base of benchmarks/demo_tuning.md's tables; the shipped demo is
``minlr=1.0 warm=30 lr=0.004 b1=0.8 b2=0.99 clip=0.5`` with the baseline at ``lr=0.003`` (fed=0). This
script loops rounds itself (in the clear, no run directory) so that one run costs only the training.

Same data pipeline, model, LocalTrainer and OuterOptimizer as `securefed simulate`, aggregation in the
clear (secure aggregation changes the sum by < n/scale; the demo itself runs it). Keys and defaults are
in ``a`` below (R rounds, K local steps, n holders, bs holder batch, olr outer lr, b1/b2 AdamW betas,
clip inner grad-clip, minlr cosine floor, warm warmup steps, fed=0 / central=0 to skip a side; d/L
override the model width/depth; resetm scales each holder's AdamW first moment by 1 - resetm between
rounds; n=1 cbs=16 fed=0 gives one holder's own trajectory). THREADS sets torch threads; STDLIB_DIR points the stdlib corpus at a
copy of another Python's Lib (to replay this machine's corpus elsewhere).
"""
import sys, math, time, json, dataclasses, os, torch
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
if os.environ.get("STDLIB_DIR"):
    from pathlib import Path
    import securefed.training.data.stdlib as S
    S.stdlib_dir = lambda: Path(os.environ["STDLIB_DIR"])
from securefed.training.data import DataConfig, prepare_federated_data
from securefed.training.models import build_model, ModelPreset
from securefed.training.trainer import LocalTrainer, TrainConfig
from securefed.training.outer import OuterOptimizer, OuterConfig
from securefed.training.flat import get_flat, set_flat
a = dict(R=16, K=6, lr=0.003, outer="fedavg", olr=1.0, mom=0.9, bs=16, warm=10, minlr=0.1,
         part="by_source", ms=8, mb=400000, central=1, reset=0, wd=0.1, cbs=0, n=4, model="tiny",
         weighting="tokens", seq=128, olr_warm=0, b2=0.95, clip=1.0, seed=0, fed=1, b1=0.9, d=0, L=0, resetm=0.0)
for kv in sys.argv[1:]:
    k, v = kv.split("="); a[k] = type(a[k])(v) if not isinstance(a[k], str) else v
R, K, n = a["R"], a["K"], a["n"]
if a["d"] or a["L"]:
    a["model"] = ModelPreset("x", d_model=a["d"] or 128, n_layers=a["L"] or 4, n_heads=max(1, (a["d"] or 128) // 32), max_seq_len=512)
dc = DataConfig(partition=a["part"], max_sources=a["ms"], max_bytes_per_source=a["mb"], seq_len=a["seq"])
d = prepare_federated_data(dc, n_holders=n, seed=a["seed"], progress=False)
tc = TrainConfig(local_steps=K, batch_size=a["bs"], lr=a["lr"], warmup_steps=a["warm"], min_lr_ratio=a["minlr"],
                 accelerator="cpu", reset_optimizer=bool(a["reset"]), weight_decay=a["wd"], beta2=a["b2"], beta1=a["b1"], grad_clip=a["clip"])
m = build_model(a["model"], vocab_size=4096, seq_len=a["seq"], seed=a["seed"]); tr = LocalTrainer(m, tc)
oo = OuterOptimizer(get_flat(m), OuterConfig(name=a["outer"], lr=a["olr"], momentum=a["mom"]))
hs = [tr.new_holder(i + 1, d.holder_train[i], seed=a["seed"], total_steps=R * K) for i in range(n)]
t = time.time(); curve = []
for r in range(R if a["fed"] else 0):
    ds = [h.train_round(oo.params.clone()) for h in hs]
    if a["resetm"]:  # experiment: damp each holder's AdamW first moment between rounds (1.0 = zero it)
        for h in hs:
            for st in h.optimizer.state.values():
                st["exp_avg"].mul_(1.0 - a["resetm"])
    if a["weighting"] == "tokens":
        tot = sum(u.tokens for u in ds); mean = sum(u.delta * u.tokens for u in ds) / tot
    else:
        mean = sum(u.delta for u in ds) / len(ds)
    if a["olr_warm"]:
        oo.opt.param_groups[0]["lr"] = a["olr"] * min(1.0, (r + 1) / a["olr_warm"])
    oo.step(mean)
    if (r + 1) % 4 == 0 or r == R - 1:
        set_flat(m, oo.params); curve.append(round(math.exp(tr.evaluate(d.eval_global)), 1))
fed = curve[-1] if curve else None; tf = time.time() - t
res = dict(args={k: (v if not isinstance(v, ModelPreset) else f"d{v.d_model}L{v.n_layers}") for k, v in a.items()}, fed=fed, fed_curve=curve, fed_s=round(tf, 1), )
if a["central"]:
    tc2 = dataclasses.replace(tc, batch_size=a["cbs"] or a["bs"] * n)
    steps = R * K * (a["bs"] * n) // (a["cbs"] or a["bs"] * n)
    m2 = build_model(a["model"], vocab_size=4096, seq_len=a["seq"], seed=a["seed"]); tr2 = LocalTrainer(m2, tc2)
    h = tr2.new_holder(0, d.central_train, seed=a["seed"], total_steps=steps, local_steps=steps)
    t = time.time(); h.train_round(get_flat(m2)); cl = math.exp(tr2.evaluate(d.eval_global))
    res.update(central=round(cl, 1), ratio=round(fed / cl, 3) if fed else None, central_s=round(time.time() - t, 1))
print(json.dumps(res), flush=True)
