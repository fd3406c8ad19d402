"""Record-level DP-SGD at LM scale (issue 15, item 4): the driver behind benchmarks/privacy/dpsgd_lm.sh.

  calibrate   σ for each target record-level ε at the planned steps (Opacus RDP, the holders' own accountant)
  prepare     tokenize the corpus once with exactly the rows' data config (fills $SECUREFED_CACHE)
  throughput  tokens/s of one trainer step at a fixed batch (random tokens): the non-private trainer
              (compile + Liger), the same eager, DP-SGD ghost clipping (book-keeping; and with Opacus'
              second backward), DP-SGD per-sample gradients
  row         one study row: exactly `securefed simulate` (4 holders, secure aggregation) with or without
              train.dp_sgd; RUNS/<name>.cmd.json holds the argv
  summarize   every row's perplexity at the last round all rows reached (equal tokens), its record ε,
              and the throughput table -> one JSON

Every row evaluates every round, so a row cut short by the time limit still pairs at equal tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

N_HOLDERS, DELTA, CLIP = 4, 1e-5, 1.0


def calibrate(*, records: int, batch: int, steps: int, targets: list[float]) -> dict[str, float]:
    """σ such that the holder's Opacus RDP accountant reports ε(δ = 1e-5) <= target after ``steps``
    Poisson steps at q = batch / records (what the trainer's accountant will compute)."""
    from opacus.accountants.utils import get_noise_multiplier

    q = batch / records
    return {f"{eps:g}": get_noise_multiplier(target_epsilon=eps, target_delta=DELTA, sample_rate=q, steps=steps,
                                              accountant="rdp", epsilon_tolerance=0.005) for eps in targets}


def _corpus_sets(a: argparse.Namespace, part: str) -> list[str]:
    """The GPU rows' model and data: --size on build_corpus.py's CORPUS/<part> (pile, or public) with its tokenizer."""
    c = Path(a.corpus)
    return [f"model.preset={a.size}", f"data.source={c / part}", f"data.tokenizer={c / 'tokenizer'}",
            "data.partition=iid", "data.max_sources=null", "data.max_bytes_per_source=1000000000",
            "data.seq_len=1024", "data.eval_fraction=0.01", "train.eval_batch_size=64"]


def row_sets(a: argparse.Namespace) -> tuple[str, list[str]]:
    """(preset, --set overrides) of one row; --tiny: the CPU demo data and model."""
    if a.tiny:
        preset = "dp-sgd"
        sets = ["model.preset=tiny", "data.max_bytes_per_source=200000", "data.seq_len=128", "train.accelerator=cpu",
                "train.precision=32-true"]
    else:
        preset = "gpu-20m"
        sets = _corpus_sets(a, "pile") + ["data.token_cache=true"]   # the issue-14 corpus: tokenized once for every row
    sets += [f"seed={a.seed}", f"train.local_steps={a.h}", f"train.batch_size={a.batch}", f"train.lr={a.lr}",
             f"train.warmup_steps={a.warmup}", "train.min_lr_ratio=0.1", "train.grad_clip=1.0",
             f"federation.n_holders={N_HOLDERS}", f"federation.rounds={a.rounds}", "federation.eval_every=1",
             "federation.weighting=uniform", "federation.checkpoint_every=100", "baseline=false",
             "privacy.mode=none", "privacy.clip=1000", "aggregation.mode=secagg", "outer.name=fedavg", "outer.lr=1.0",
             "outer.momentum_warmup=0"]   # gpu-20m's own outer optimizer is Nesterov with a warmup
    if a.sigma is None:   # the non-private trainer, as users run it (compile + Liger on the GPU)
        sets += ["train.dp_sgd.enabled=false", f"train.compile={'false' if a.tiny else 'true'}"]
        if a.np_micro:    # gradient accumulation: the same step in slices (a batch too big for one forward)
            sets.append(f"train.micro_batch_size={a.np_micro}")
    else:
        sets += ["train.dp_sgd.enabled=true", "train.compile=false", f"train.dp_sgd.clipping={a.clipping}",
                 f"train.dp_sgd.noise_multiplier={a.sigma}", f"train.dp_sgd.max_grad_norm={CLIP}",
                 "train.dp_sgd.delta=1.0e-5"]  # YAML reads "1e-05" as a string
        if a.clipping == "ghost" and a.micro:
            sets.append(f"train.dp_sgd.micro_batch_size={a.micro}")
    return preset, sets + list(a.set or [])


def pretrain_sets(a: argparse.Namespace) -> tuple[str, list[str]]:
    """(preset, --set overrides) of the public initial model (model.init_from, protocols/dp.md §13): the rows'
    model and tokenizer trained centrally — one holder, plain aggregation, FedAvg at lr 1, which is one AdamW
    trajectory — on CORPUS/public, the public text the tokenizer was trained on (build_corpus.py), for --tokens."""
    rounds = max(1, math.ceil(a.tokens / (a.batch * a.h * 1024)))
    return "gpu-20m", _corpus_sets(a, "public") + [
        f"seed={a.seed}", f"train.local_steps={a.h}", f"train.batch_size={a.batch}", f"train.lr={a.lr}",
        f"train.warmup_steps={a.warmup}", "train.min_lr_ratio=0.1", "train.grad_clip=1.0", "train.compile=true",
        "train.dp_sgd.enabled=false", "federation.n_holders=1", f"federation.rounds={rounds}",
        f"federation.eval_every={rounds}", "federation.checkpoint_every=100", "baseline=false", "privacy.mode=none",
        "privacy.clip=1e6", "aggregation.mode=plain", "outer.name=fedavg", "outer.lr=1.0", "outer.momentum_warmup=0"]


def cmd_pretrain(a: argparse.Namespace) -> None:
    from securefed.cli import main as securefed_main

    preset, sets = pretrain_sets(a)
    argv = ["simulate", "--preset", preset, "--out", a.out, "--quiet", *[x for s in sets for x in ("--set", s)]]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{a.out}.cmd.json").write_text(json.dumps({"argv": argv, "args": vars(a)}, indent=1))
    print(f"[dpsgd_lm] public initial model: securefed {' '.join(argv)}", flush=True)
    t = time.perf_counter()
    rc = securefed_main(argv)
    print(f"[dpsgd_lm] public initial model: rc={rc} in {time.perf_counter() - t:.0f} s", flush=True)
    sys.exit(rc)


def cmd_calibrate(a: argparse.Namespace) -> None:
    sig = calibrate(records=a.records, batch=a.batch, steps=a.steps, targets=a.eps)
    print(json.dumps({"records": a.records, "batch": a.batch, "steps": a.steps, "delta": DELTA, "sigma": sig}))


def cmd_prepare(a: argparse.Namespace) -> None:
    from securefed.federation.data import eval_split_for, record_counts
    from securefed.runtime.config import load_run_config
    from securefed.training.data import prepare_federated_data

    preset, sets = row_sets(a)
    cfg = load_run_config(preset=preset, overrides=tuple(sets))
    # what a DP row of this --unit samples from: its data config split and packed as the holders will
    dp = dataclasses.replace(cfg.train.dp_sgd, enabled=True, unit=a.unit)
    t = time.perf_counter()
    data = prepare_federated_data(cfg.data, n_holders=N_HOLDERS, seed=cfg.seed, progress=False,
                                  eval_split=eval_split_for(dp, cfg.data))
    rows, units = record_counts(data, n_holders=N_HOLDERS, dp_sgd=dp, seq_len=cfg.data.seq_len)
    # records_per_holder: the rows each holder's Poisson rate is set against (q = batch / rows), what σ is
    # calibrated at; units_per_holder: the protected records (rows, documents or groups) δ is set against
    out = {"content_hash": data.manifest["content_hash"], "unit": a.unit, "records_per_holder": rows,
           "units_per_holder": units, "eval_sequences": int(data.eval_global.shape[0]),
           "unigram_eval_ppl": data.unigram_eval_ppl, "seconds": round(time.perf_counter() - t, 1)}
    print(json.dumps(out))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


def cmd_row(a: argparse.Namespace) -> None:
    from securefed.cli import main as securefed_main

    preset, sets = row_sets(a)
    argv = ["simulate", "--preset", preset, "--out", str(Path(a.runs) / a.name), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    Path(a.runs).mkdir(parents=True, exist_ok=True)
    (Path(a.runs) / f"{a.name}.cmd.json").write_text(json.dumps({"argv": argv, "args": vars(a)}, indent=1))
    print(f"[dpsgd_lm] {a.name}: securefed {' '.join(argv)}", flush=True)
    t = time.perf_counter()
    rc = securefed_main(argv)
    print(f"[dpsgd_lm] {a.name}: rc={rc} in {time.perf_counter() - t:.0f} s", flush=True)
    sys.exit(rc)


def _one_mode(mode: str, a: argparse.Namespace) -> dict:
    """Time ``a.steps`` trainer steps on a fixed (batch, seq) batch of random tokens; one mode."""
    import torch

    from securefed.training.config import DPSGDConfig, TrainConfig
    from securefed.training.models import build_model
    from securefed.training.trainer import LocalTrainer

    cuda = torch.cuda.is_available()
    dp = mode.startswith("dp-")
    cfg = TrainConfig(local_steps=1, batch_size=a.batch, lr=1e-3, warmup_steps=0, accelerator="cuda" if cuda else "cpu",
                      compile=mode == "np-trainer" and cuda,
                      fused="auto" if mode in ("np-trainer", "np-liger", "dp-ghost-fused", "dp-ghost-fused-compiled") else "off",
                      dp_sgd=DPSGDConfig(enabled=dp, noise_multiplier=1.0, max_grad_norm=CLIP,
                                         clipping="ghost" if mode.startswith("dp-ghost") else "per_sample",
                                         micro_batch_size=a.micro if mode.startswith("dp-ghost") else None))
    model = build_model(a.size, vocab_size=a.vocab, seq_len=a.seq, seed=0)
    trainer = LocalTrainer(model, cfg)
    if mode == "dp-ghost-2bwd":   # Opacus' own second backward instead of book-keeping (reference)
        trainer._gsm.book_keeping = False
    if mode == "dp-ghost-fused-compiled":
        # experiment, not a trainer setting: regional compile of the decoder blocks with Opacus' hooks in them.
        # Dynamo breaks the graph at every hooked Linear ("module-level backward hooks require compiled
        # autograd"), so only the pieces between them fuse; on the CPU the clipped sum is unchanged (1e-9)
        from securefed.training.fused import compile_blocks

        compile_blocks(model)
    data = torch.randint(0, a.vocab, (max(4 * a.batch, 256), a.seq), generator=torch.Generator().manual_seed(0))
    holder = trainer.new_holder(0, data, seed=0, total_steps=10**6, dp_secret_seed=1 if dp else None)
    x = data[: a.batch].to(trainer.fabric.device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(a.warmup):
        trainer._step_fn(holder.optimizer, x)
    sync()
    windows = []   # several windows of a.steps steps: one short window swung the batch-32 trainer by ±25 % (zo15)
    for _ in range(a.windows):
        t = time.perf_counter()
        for _ in range(a.steps):
            loss = trainer._step_fn(holder.optimizer, x)
        float(loss)
        sync()
        windows.append(time.perf_counter() - t)
    sec = statistics.median(windows)
    if a.profile:   # where a step's time goes (after the timed steps, so the timing above is unprofiled)
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for _ in range(2):
                loss = trainer._step_fn(holder.optimizer, x)
            float(loss)
            sync()
        Path(a.profile).mkdir(parents=True, exist_ok=True)
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        (Path(a.profile) / f"{mode}-b{a.batch}.txt").write_text(
            prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70) + "\n")
    out = {"mode": mode, "batch": a.batch, "micro": cfg.dp_sgd.micro_batch_size, "seq": a.seq, "steps": a.steps,
           "seconds": round(sec, 3), "windows_s": [round(w, 4) for w in windows],
           "tokens_per_s": a.steps * a.batch * a.seq / sec, "fused": trainer.fused,
           "compiled": "blocks, hooks inside" if mode == "dp-ghost-fused-compiled" else trainer.compiled,
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
    del trainer, holder, model
    if cuda:
        torch.cuda.empty_cache()
    return out


def cmd_throughput(a: argparse.Namespace) -> None:
    rows = []
    for mode in a.modes.split(","):
        try:
            rows.append(_one_mode(mode, a))
        except Exception as e:  # noqa: BLE001 - one mode failing (e.g. out of memory) must not lose the others
            rows.append({"mode": mode, "error": f"{type(e).__name__}: {e}"[:500]})
        print(json.dumps(rows[-1]), flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")


def _read(d: Path) -> dict:
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (d / "metrics.jsonl").exists() else []
    cmd = json.loads((d.parent / f"{d.name}.cmd.json").read_text())
    return {"rows": rows, "args": cmd["args"], "argv": cmd["argv"]}


def cmd_summarize(a: argparse.Namespace) -> None:
    """Every row at the largest token count all rows evaluated at (equal tokens, whatever each row's batch and
    steps), and its perplexity over two non-private references there: the best non-private row (the issue's
    "non-private run at equal tokens": a reviewer takes the better one) and the non-private row of its own plan
    (same batch and local steps), where there is one. stop 32 (RESULTS.md (zt15)) had both: 3.80x and 1.45x."""
    runs = {d.name: _read(d) for d in sorted(Path(a.runs).iterdir()) if d.is_dir() and (d.parent / f"{d.name}.cmd.json").exists()}
    evald = {n: {r["tokens_seen"]: r for r in v["rows"] if r.get("eval_ppl") is not None} for n, v in runs.items()}
    # equal tokens: the most tokens every row that evaluated at all reached (a row with none is listed, empty)
    reached = [set(e) for e in evald.values() if e]
    common = set.intersection(*reached) if reached else set()
    at = max(common) if common else None
    table = []
    for n, v in runs.items():
        r = evald[n].get(at, {})
        last = v["rows"][-1] if v["rows"] else {}
        table.append({"row": n, "sigma": v["args"]["sigma"], "clipping": v["args"]["clipping"] if v["args"]["sigma"] is not None else None,
                      "batch": v["args"]["batch"], "local_steps": v["args"]["h"],
                      "round": r.get("round"), "tokens": r.get("tokens_seen"), "eval_ppl": r.get("eval_ppl"),
                      "record_epsilon": r.get("record_epsilon_max"), "rounds_done": last.get("round"),
                      "round_seconds": [round(x["seconds"], 1) for x in v["rows"]]})
    private = [t for t in table if t["sigma"] is None and t["eval_ppl"]]
    best = min(private, key=lambda t: t["eval_ppl"], default=None)
    for t in table:
        same = next((p for p in private if (p["batch"], p["local_steps"]) == (t["batch"], t["local_steps"])), None)
        t["ppl_ratio"] = t["eval_ppl"] / best["eval_ppl"] if best and t["eval_ppl"] else None
        t["ppl_ratio_same_plan"] = t["eval_ppl"] / same["eval_ppl"] if same and t["eval_ppl"] else None
    tp = json.loads(Path(a.throughput).read_text()) if a.throughput and Path(a.throughput).exists() else []
    ref = {r["mode"]: r.get("tokens_per_s") for r in tp}
    for r in tp:
        if r.get("tokens_per_s") and ref.get("np-trainer"):
            r["vs_np_trainer"] = r["tokens_per_s"] / ref["np-trainer"]
        if r.get("tokens_per_s") and ref.get("np-eager"):
            r["vs_np_eager"] = r["tokens_per_s"] / ref["np-eager"]
    out = {"equal_tokens": at, "best_non_private": best["row"] if best else None, "rows": table, "throughput": tp,
           "delta": DELTA, "max_grad_norm": CLIP}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"equal tokens: {at:,}" if at else "equal tokens: none (some row never evaluated)")
    print(f"{'row':<20}{'σ':>7}{'batch':>6}{'H':>4}{'round':>6}{'ppl':>9}{'×best np':>9}{'×np plan':>9}{'ε':>8}")
    for t in table:
        f = lambda v, s: format(v, s) if isinstance(v, (int, float)) else "-".rjust(int(s.split(".")[0].rstrip(",d")))  # noqa: E731
        print(f"{t['row']:<20}{f(t['sigma'], '7.3f')}{f(t['batch'], '6d')}{f(t['local_steps'], '4d')}{f(t['round'], '6d')}"
              f"{f(t['eval_ppl'], '9.2f')}{f(t['ppl_ratio'], '9.2f')}{f(t['ppl_ratio_same_plan'], '9.2f')}"
              f"{f(t['record_epsilon'], '8.2f')}")
    for r in tp:
        print(json.dumps(r))


def _curves_of_run(run: Path) -> dict[str, dict]:
    """{row: {"args": …, "points": [(tokens, eval_ppl)], "eps": ε at the end or None}} of one committed run folder:
    the rows in its .tgz files (<row>.metrics.jsonl, or <row>/metrics.jsonl as benchmarks/gpu/chain.sh copies
    them, beside <row>.cmd.json) and loose beside them."""
    import tarfile

    files: dict[str, bytes] = {}
    for t in sorted(run.glob("*.tgz")):
        with tarfile.open(t) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.endswith((".metrics.jsonl", ".cmd.json")):
                    files[Path(m.name).name] = tar.extractfile(m).read()
                elif m.isfile() and Path(m.name).name == "metrics.jsonl":  # chain.sh's copy: <row>/metrics.jsonl
                    files[Path(m.name).parent.name + ".metrics.jsonl"] = tar.extractfile(m).read()
    for f in sorted(run.glob("*.metrics.jsonl")) + sorted(run.glob("*.cmd.json")):
        files[f.name] = f.read_bytes()
    rows = _curves_of_console(run / "console.txt") if (run / "console.txt").exists() else {}
    for name, b in files.items():
        if not name.endswith(".metrics.jsonl") or name.replace(".metrics.jsonl", ".cmd.json") not in files:
            continue
        row = name.removesuffix(".metrics.jsonl")
        ms = [json.loads(x) for x in b.decode().splitlines() if x.strip()]
        args = json.loads(files[row + ".cmd.json"])["args"]
        pts = [(m["tokens_seen"], m["eval_ppl"]) for m in ms if m.get("eval_ppl") is not None]
        eps = next((m["record_epsilon_max"] for m in reversed(ms) if m.get("record_epsilon_max") is not None), None)
        rows[row] = {"args": args, "points": pts, "eps": eps}
    return rows


def _curves_of_console(path: Path) -> dict[str, dict]:
    """A run whose files were lost with its machine (run 4) survives as the console its call printed: the command
    in its header (BATCH, H, ROUNDS, SIGMAS), then each row's metrics lines, cut at 300 characters. The points are
    the lines whose eval_ppl and round are both still visible; tokens = round × 4 holders × H × BATCH × 1,024."""
    import re

    text = path.read_text()
    b, h, r = (int(re.search(rf"\b{k}=(\d+)", text).group(1)) for k in ("BATCH", "H", "ROUNDS"))
    sig = dict(zip(("1", "3", "8"), map(float, re.search(r'SIGMAS="([^"]+)"', text).group(1).split())))
    rows, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"\S*/runs/([^/]+)/metrics\.jsonl$", line.strip())
        if m:
            cur = m.group(1)
            eps = cur.removeprefix("eps")
            rows[cur] = {"args": {"batch": b, "h": h, "rounds": r, "sigma": sig.get(eps)}, "points": [],
                         "eps": float(eps) if eps in sig else None}
            continue
        e, rd = re.search(r'"eval_ppl": ([0-9.]+),', line), re.search(r'"round": (\d+)', line)
        if cur and e and rd:
            rows[cur]["points"].append((int(rd.group(1)) * N_HOLDERS * h * b * 1024, float(e.group(1))))
    return rows


def cmd_plot(a: argparse.Namespace) -> None:
    """Eval perplexity vs tokens for every committed ε row (each run folder under --raw), one colour per ε, one
    line style per plan (expected batch × steps per holder), the unigram level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = Path(a.raw)
    fig, ax = plt.subplots(figsize=(12, 5.5))
    colours = {None: "k", 8: "C0", 3: "C1", 1: "C3"}
    plans: dict[str, tuple[str, str]] = {}
    for run in sorted(d for d in raw.iterdir() if d.is_dir()):
        for row, r in sorted(_curves_of_run(run).items()):
            g = r["args"]
            if not r["points"] or g.get("cmd") == "pretrain":   # the public initial model: its own text, not an ε row
                continue
            plan = f"{g['batch']:,} × {g['h'] * g['rounds']}"
            ls, mk = plans.setdefault(plan, (["-", "--", ":", "-."][len(plans) % 4], "osD^vP"[len(plans) % 6]))
            eps = None if g["sigma"] is None else round(r["eps"] or 0)
            lr = f", lr {g['lr']:g}" if g.get("lr") not in (None, 0.003) else ""   # every row before run 12: 3e-3
            bc = ", DP-AdamBC" if "train.dp_sgd.adam_bias_correction=true" in (g.get("set") or []) else ""
            pub = ", from a public model" if any(str(x).startswith("model.init_from=") for x in g.get("set") or []) else ""
            label = f"{'∞' if eps is None else f'ε = {eps}'}, batch × steps {plan}{lr}{bc}{pub} ({run.name})"
            ax.plot(*zip(*r["points"]), ls, marker=mk, markersize=3.5, color=colours.get(eps, "C4"), label=label)
    ax.axhline(a.unigram, color="0.5", linestyle="--", linewidth=0.8, label=f"unigram ({a.unigram:,.0f})")
    ax.set(xscale="log", yscale="log", xlabel="training tokens (all holders)", ylabel="eval perplexity",
           title="record-level DP-SGD, 20m, 4 holders, secure aggregation (δ = 1e-5)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # beside the axes: 20+ rows hid curves
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    plt.close(fig)
    print(f"wrote {a.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("--records", type=int, required=True)
    c.add_argument("--batch", type=int, required=True)
    c.add_argument("--steps", type=int, required=True)
    c.add_argument("--eps", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    for name in ("prepare", "row"):
        p = sub.add_parser(name)
        p.add_argument("--tiny", action="store_true", help="CPU: tiny model on the Python stdlib corpus")
        p.add_argument("--size", default="20m")
        p.add_argument("--corpus", default=".corpus")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--batch", type=int, default=128, help="expected (Poisson) batch per holder step")
        p.add_argument("--micro", type=int, default=32, help="ghost: sequences per forward/backward slice")
        p.add_argument("--np-micro", type=int, default=None,
                       help="the non-private row: sequences per slice of its step (train.micro_batch_size)")
        p.add_argument("--h", type=int, default=8, help="local steps per round")
        p.add_argument("--rounds", type=int, default=2)
        p.add_argument("--lr", type=float, default=3e-3)
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--sigma", type=float, default=None, help="DP-SGD noise multiplier (absent: non-private)")
        p.add_argument("--clipping", default="ghost", choices=("ghost", "per_sample"))
        p.add_argument("--set", action="append", help="extra securefed --set KEY=VALUE")
        p.add_argument("--name", default="row")
        p.add_argument("--runs", default="runs/dpsgd-lm")
        p.add_argument("--out", default=None)
        if name == "prepare":
            p.add_argument("--unit", default="sequence", choices=("sequence", "document", "group"),
                           help="the DP rows' train.dp_sgd.unit: count the rows they sample from")
    t = sub.add_parser("throughput")
    t.add_argument("--size", default="20m")
    t.add_argument("--vocab", type=int, default=32768)
    t.add_argument("--seq", type=int, default=1024)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--micro", type=int, default=None,
                   help="ghost modes: sequences per forward/backward slice of the batch (default: the whole batch)")
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--steps", type=int, default=30, help="steps per timed window")
    t.add_argument("--windows", type=int, default=3, help="timed windows per mode; tokens/s from the median")
    t.add_argument("--profile", default=None, help="folder: a torch.profiler table per mode (2 more steps)")
    t.add_argument("--modes", default="np-trainer,np-eager,dp-ghost,dp-ghost-2bwd,dp-per_sample",
                   help="np-trainer (Liger head + compiled blocks), np-liger (Liger head + blocks, eager), np-eager, "
                        "dp-ghost (plain kernels), dp-ghost-fused (Liger block kernels: what train.fused=auto runs), "
                        "dp-ghost-fused-compiled (experiment: the blocks compiled with the hooks inside), "
                        "dp-ghost-2bwd (Opacus' second backward), dp-per_sample")
    t.add_argument("--out", required=True)
    s = sub.add_parser("summarize")
    s.add_argument("--runs", required=True)
    s.add_argument("--throughput", default=None)
    s.add_argument("--out", required=True)
    pl = sub.add_parser("plot", help="perplexity vs tokens of every committed ε row (run 4 survives only as a console)")
    pl.add_argument("--raw", default=str(REPO / "benchmarks" / "privacy" / "raw" / "dpsgd_lm"))
    pl.add_argument("--unigram", type=float, default=1057.05, help="the corpus' unigram eval perplexity (prepare.json)")
    pl.add_argument("--out", required=True)
    pt = sub.add_parser("pretrain", help="the public initial model the PUBLIC_INIT=1 rows start from (dp.md §13)")
    pt.add_argument("--corpus", required=True, help="build_corpus.py's OUT (its public/ and tokenizer/)")
    pt.add_argument("--size", default="20m")
    pt.add_argument("--tokens", type=float, default=4e7)
    pt.add_argument("--batch", type=int, default=64)
    pt.add_argument("--h", type=int, default=64, help="steps per round (one holder: rounds only set evaluations)")
    pt.add_argument("--lr", type=float, default=3e-3)
    pt.add_argument("--warmup", type=int, default=20)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--out", required=True, help="the run directory; its model/ is the rows' model.init_from")
    a = ap.parse_args()
    {"calibrate": cmd_calibrate, "prepare": cmd_prepare, "row": cmd_row, "throughput": cmd_throughput,
     "summarize": cmd_summarize, "plot": cmd_plot, "pretrain": cmd_pretrain}[a.cmd](a)


if __name__ == "__main__":
    main()
