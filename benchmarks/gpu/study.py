"""(3) The fed-vs-central study, one command per row, driven through the `securefed simulate` CLI.

A row is one `securefed simulate` run (in process: ``securefed.cli.main([...])``); nothing of the
simulation is patched. Timing and perplexity come from what every run writes:
RUN_DIR/metrics.jsonl (round, seconds, eval_ppl, tokens_seen), RUN_DIR/summary.json and
RUN_DIR/data_manifest.json (the corpus content hash and tokenizer hash every result records).

    # one federated row and its centralized partner (same size / partition / seed / tokens)
    python3 benchmarks/gpu/study.py run --size 20m --side fed --partition iid --tokens 2e8 --seed 0 \\
        --corpus /tmp/sf/corpus --runs /tmp/sf/runs
    python3 benchmarks/gpu/study.py run --size 20m --side central --partition iid --tokens 2e8 --seed 0 \\
        --corpus /tmp/sf/corpus --runs /tmp/sf/runs
    # fill the token cache once before starting rows side by side
    python3 benchmarks/gpu/study.py prepare --size 20m --corpus /tmp/sf/corpus
    # pair rows at equal tokens, write the result table / headline figures
    python3 benchmarks/gpu/study.py summarize --runs /tmp/sf/runs --out study.json

The federated side: 4 holders, each with a batch of ``batch`` sequences, H = ``--h`` local AdamW
steps per round, the outer optimizer (``--outer fedavg``, the default since the 20m sweep, or ``nesterov`` momentum 0.9,
optionally warmed up: ``--momentum-warmup``, the best at 20 tokens per parameter, RESULTS.md (v14)) on the
averaged pseudo-gradient. The centralized side is the same `securefed simulate` with ONE holder that
holds all the training data, batch 4x (the federation's global batch), FedAvg with outer lr 1 (so θ
after a round is exactly the holder's θ: continuous AdamW training, optimizer state kept) and the
same rounds of H steps, hence evaluated at exactly the same token counts as the federated run. It is
the computation of `simulate`'s built-in baseline (run_centralized_baseline: LocalTrainer on the
union of the holders' rows), run as its own process so that both sides advance side by side and a
run cut short still leaves a comparable curve. Rows here aggregate in plain mode (say so in results)
unless ``--secure`` is given. ``--backend ray`` runs a federated row's holders as Ray actors that share the
GPU and train at the same time (the row's name and numbers do not depend on the backend; its .cmd.json says).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# per model size: sequence length, per-holder batch, centralized lr (the federated inner lr is
# --inner-lr-ratio x that, DiLoCo's guidance: about half), warmup (steps)
SIZES = {
    "20m": dict(seq=1024, batch=32, central_lr=3e-3, warmup=60),
    "75m": dict(seq=1024, batch=32, central_lr=2e-3, warmup=80),
    "125m": dict(seq=1024, batch=32, central_lr=1.5e-3, warmup=100),
}
N_HOLDERS = 4


def row_name(a: argparse.Namespace) -> str:
    if a.side == "central":
        parts = [a.size, a.partition, "central", f"lr{a.central_lr or SIZES[a.size]['central_lr']:g}"]
    else:
        parts = [a.size, a.partition, "fed", a.outer, f"olr{a.outer_lr:g}", f"h{a.h}", f"ilr{a.inner_lr_ratio:g}"]
        if a.outer != "fedavg" and a.momentum != 0.9:      # 0.9 (every row before stop 30) stays unnamed
            parts.append(f"m{a.momentum:g}")
        if a.momentum_warmup:
            parts.append(f"mw{a.momentum_warmup}")
        if a.secure:
            parts.append("secagg")
    parts += [f"t{a.tokens:.3g}", f"s{a.seed}"]
    return "-".join(parts)


def overrides(a: argparse.Namespace) -> tuple[list[str], dict]:
    s = SIZES[a.size]
    central_lr = a.central_lr or s["central_lr"]
    fed = a.side == "fed"
    holders = N_HOLDERS if fed else 1
    batch = s["batch"] if fed else N_HOLDERS * s["batch"]
    tokens_per_round = N_HOLDERS * a.h * s["batch"] * s["seq"]       # equal on both sides
    rounds = max(1, math.ceil(a.tokens / tokens_per_round))
    eval_every = max(1, rounds // a.evals)
    corpus = Path(a.corpus)
    sets = [
        f"seed={a.seed}", f"model.preset={a.size}",
        f"data.source={corpus / 'pile'}", f"data.tokenizer={corpus / 'tokenizer'}",
        "data.token_cache=true",   # the public issue-14 corpus: `prepare` tokenizes once, every row reads the cache
        f"data.partition={a.partition if fed else 'iid'}", "data.max_sources=null",
        "data.max_bytes_per_source=1000000000", f"data.seq_len={s['seq']}", f"data.eval_fraction={a.eval_fraction}",
        f"train.local_steps={a.h}", f"train.batch_size={batch}",
        f"train.lr={central_lr * (a.inner_lr_ratio if fed else 1.0)}", f"train.warmup_steps={s['warmup']}",
        "train.min_lr_ratio=0.1", "train.weight_decay=0.1", "train.beta1=0.9", "train.beta2=0.95",
        "train.grad_clip=1.0", "train.compile=true", f"train.fused={a.fused}", "train.eval_batch_size=64",
        f"federation.n_holders={holders}", f"federation.rounds={rounds}", f"federation.eval_every={eval_every}",
        "federation.weighting=tokens", "baseline=false", "privacy.mode=none",
        f"privacy.clip={a.clip}",  # clipping applies in every mode: large = no clipping (rows record clip_fraction)
        f"aggregation.mode={'secagg' if (fed and a.secure) else 'plain'}",
    ]
    if fed:
        sets += [f"outer.name={a.outer}", f"outer.lr={a.outer_lr}", f"outer.momentum={a.momentum}",
                 f"outer.momentum_warmup={a.momentum_warmup}"]   # always: the preset may carry its own warmup
    else:
        sets += ["outer.name=fedavg", "outer.lr=1.0", "outer.momentum_warmup=0"]
    info = dict(rounds=rounds, eval_every=eval_every, tokens_per_round=tokens_per_round, holders=holders,
                batch=batch, inner_lr=central_lr * (a.inner_lr_ratio if fed else 1.0), central_lr=central_lr)
    return sets + list(a.set or []), info


def cmd_prepare(a: argparse.Namespace) -> None:
    """Tokenize the corpus once (fills $SECUREFED_CACHE), with the data config every row uses."""
    from securefed.runtime.config import load_run_config
    from securefed.training.data import prepare_federated_data

    a.side, a.partition, a.h, a.tokens, a.evals = "fed", "iid", 32, 1e6, 1
    sets, _ = overrides(a)
    cfg = load_run_config(preset=a.preset, overrides=tuple(sets))
    t = time.perf_counter()
    data = prepare_federated_data(cfg.data, n_holders=N_HOLDERS, seed=cfg.seed, progress=False)
    m = data.manifest
    out = {"content_hash": m["content_hash"], "tokenizer_hash": m["tokenizer"]["hash"],
           "train_tokens": int(data.central_train.numel()), "eval_tokens": m["eval"]["tokens"],
           "sources": len(m["sources"]), "unigram_eval_ppl": data.unigram_eval_ppl, "seconds": time.perf_counter() - t}
    print(json.dumps(out))
    if a.out:
        Path(a.out).write_text(json.dumps(dict(out, manifest=m), indent=1) + "\n")


def simulate_argv(a: argparse.Namespace, run_dir: Path, sets: list[str]) -> list[str]:
    """The `securefed simulate` command line of one row (without --resume)."""
    argv = ["simulate", "--preset", a.preset, "--out", str(run_dir), "--quiet"]
    if a.backend == "ray":   # the holders train at the same time, each in its own process with a share of the GPU
        if a.side != "fed":
            raise SystemExit("--backend ray is for federated rows: the centralized side has one holder")
        argv += ["--backend", "ray", "--ray-gpus-per-holder", f"{1 / N_HOLDERS:g}",
                 "--ray-cpus-per-holder", f"{a.ray_cpus_per_holder:g}", "--ray-object-store-mb", "8192"]
    for s in sets:
        argv += ["--set", s]
    return argv


def cmd_run(a: argparse.Namespace) -> None:
    from securefed.cli import main as securefed_main

    name = row_name(a)
    run_dir = Path(a.runs) / name
    sets, info = overrides(a)
    argv = simulate_argv(a, run_dir, sets)
    resume = (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists()
    if resume and not _resumes_exactly(run_dir):
        # the newest model file is older than the last accounted round (federation.checkpoint_every > 1): the
        # engine would resume from it and lose the rounds since, which makes the curve a splice of two runs
        # (2026-12-02: rows of the first h_sweep call). A study row starts again instead; the old one is kept.
        aside = run_dir.with_name(f"{name}.incomplete-{int(time.time())}")
        run_dir.rename(aside)
        print(f"[study] {name}: its checkpoint would lose rounds; moved to {aside.name}, starting again", flush=True)
        resume = False
    if resume:
        argv.append("--resume")
    (Path(a.runs) / f"{name}.cmd.json").write_text(json.dumps({"argv": argv, "info": info, "args": vars(a)}, indent=1))
    print(f"[study] {name}: {info} resume={resume}", flush=True)
    t = time.perf_counter()
    rc = securefed_main(argv)
    print(f"[study] {name}: rc={rc} in {time.perf_counter() - t:.0f} s", flush=True)
    sys.exit(rc)


def _resumes_exactly(run_dir: Path) -> bool:
    """True when the run's newest model file holds the state after its last finished round."""
    import torch

    from securefed.runtime.rundir import RunDir

    ck = RunDir(run_dir).checkpoints
    try:
        st = torch.load(RunDir(run_dir).checkpoint_file, weights_only=True)
        heavy = torch.load(ck / st["model_file"], weights_only=True)
        return int(heavy["after_round"]) >= int(st["next_round"]) - 1
    except (OSError, KeyError, RuntimeError, ValueError, TypeError):
        return False


def _read_run(d: Path) -> dict:
    metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (d / "metrics.jsonl").exists() else []
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else None
    manifest = json.loads((d / "data_manifest.json").read_text()) if (d / "data_manifest.json").exists() else {}
    cmd = json.loads((d.parent / f"{d.name}.cmd.json").read_text()) if (d.parent / f"{d.name}.cmd.json").exists() else {}
    return {"name": d.name, "metrics": metrics, "summary": summary, "cmd": cmd,
            "corpus_content_hash": manifest.get("content_hash"),
            "tokenizer_hash": manifest.get("tokenizer", {}).get("hash"),
            "train_tokens": sum(h.get("tokens", 0) for h in manifest.get("holders", [])),
            "eval_tokens": manifest.get("eval", {}).get("tokens")}


def pair_curves(fed: list[dict], central: list[dict]) -> list[dict]:
    """fed/central perplexity at every token count where both runs evaluated."""
    c = {m["tokens_seen"]: m["eval_ppl"] for m in central if "eval_ppl" in m}
    return [{"tokens": m["tokens_seen"], "fed_ppl": m["eval_ppl"], "central_ppl": c[m["tokens_seen"]],
             "ratio": m["eval_ppl"] / c[m["tokens_seen"]]}
            for m in fed if "eval_ppl" in m and m["tokens_seen"] in c]


def partner_of(name: str) -> str:
    """The centralized row a federated row is compared with (same size, partition, tokens, seed)."""
    p = name.split("-")
    size, part, tok, seed = p[0], p[1], p[-2], p[-1]
    return f"{size}-{part}-central-*-{tok}-{seed}" if part == "iid" else f"{size}-iid-central-*-{tok}-{seed}"


def _central_lr(name: str) -> float | None:
    """The lr a centralized row's name carries (``…-central-lr0.003-…``); None for a name without one."""
    m = re.search(r"-central-lr([0-9.e+-]+?)-t", name)
    return float(m.group(1)) if m else None


def _lrs(t: dict) -> str:
    """The table's centralized-lr cell: the partner's lr, and in brackets every lr tried where there were several."""
    best = f"{t['central_lr']:g}" if t["central_lr"] is not None else "—"
    tried = t["central_lrs_tried"]
    return best if len(tried) < 2 else f"{best} ({', '.join(f'{x:g}' for x in tried)})"


def tuned_pairs(pairs: list[dict]) -> list[dict]:
    """Each federated row against its *tuned* centralized partner: of the centralized rows at several lrs
    (same size, tokens, seed), the one with the lowest perplexity at the last token count both reached."""
    best: dict[str, dict] = {}
    for p in pairs:
        f = p["final"]
        if f is None:
            continue
        cur = best.get(p["fed"])
        if cur is None or f["central_ppl"] < cur["final"]["central_ppl"]:
            best[p["fed"]] = p
    return [best[k] for k in sorted(best, key=lambda k: best[k]["final"]["ratio"])]


def _label(name: str) -> str:
    """A row's name without its token count, with its seed: 20m-iid-fed-…-mw28 s1."""
    return name.split("-t")[0] + " " + name.rsplit("-", 1)[1]


def plot_rows(rows: dict, pairs: list[dict], out: Path) -> None:
    """Perplexity vs tokens for every row (federated solid, centralized dashed), and fed/central vs tokens
    against the tuned centralized partner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    fed_names = sorted(n for n in rows if "-central-" not in n)
    color = {n: plt.cm.tab20(i % 20) for i, n in enumerate(fed_names)}   # one colour per row in both panels
    centrals = sorted(n for n in rows if "-central-" in n)
    color |= {n: str(0.55 * i / max(1, len(centrals) - 1)) for i, n in enumerate(centrals)}   # black to grey
    for name, r in sorted(rows.items()):
        pts = [(m["tokens_seen"], m["eval_ppl"]) for m in r["metrics"] if "eval_ppl" in m]
        if not pts:
            continue
        central = "-central-" in name
        label = _label(name)
        if len({n.split("-", 1)[0] for n in rows}) == 1:    # one model size: its name says nothing
            label = label.split("-", 1)[1]
        ax.plot(*zip(*pts), "s--" if central else "o-", color=color[name],
                label=label, markersize=3, linewidth=1.4 if central else 1.0)
    for p in tuned_pairs(pairs):
        pts = [(c["tokens"], c["ratio"]) for c in p["curve"]]
        other = f" vs central {p['central'].rsplit('-', 1)[1]}" if p.get("central_other_seed") else ""
        bx.plot(*zip(*pts), "o-", markersize=3, label=_label(p["fed"]) + other, color=color[p["fed"]])
    bx.axhline(1.07, color="k", linestyle=":", linewidth=1, label="goal 1.07")
    for axis, ylabel, title in ((ax, "held-out perplexity", "perplexity vs tokens (centralized dashed)"),
                                (bx, "fed / tuned centralized perplexity", "ratio vs tokens")):
        axis.set(xlabel="training tokens per side", ylabel=ylabel, title=title, yscale="log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6.5)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def pair_all(runs: Path, rows: dict, central_seed: int | None) -> list[dict]:
    """Every federated row in ``rows`` (read from ``runs``) with each centralized row of the same size, tokens and
    seed (or, where it has none, ``central_seed``'s, marked), compared at every token count both evaluated."""
    pairs = []
    for name, r in rows.items():
        if "-fed-" not in name:
            continue
        cands = sorted(runs.glob(partner_of(name)))
        other_seed = not cands and central_seed is not None
        if other_seed:    # no centralized row at this seed: the given seed's (marked in the pair)
            cands = sorted(runs.glob(partner_of(name).rsplit("-s", 1)[0] + f"-s{central_seed}"))
        for cdir in cands:
            c = rows.get(cdir.name)
            if not c:
                continue
            curve = pair_curves(r["metrics"], c["metrics"])
            last = curve[-1] if curve else None
            pairs.append({"fed": name, "central": cdir.name, "central_other_seed": other_seed, "curve": curve,
                          "final": last, "complete": bool(r["summary"] and c["summary"]),
                          "corpus_content_hash": r["corpus_content_hash"], "tokenizer_hash": r["tokenizer_hash"],
                          "aggregation": r["metrics"][-1].get("aggregation") if r["metrics"] else None})
    return pairs


def cmd_summarize(a: argparse.Namespace) -> None:
    runs = Path(a.runs)
    rows = {d.name: _read_run(d) for d in sorted(runs.iterdir()) if d.is_dir() and (d / "metrics.jsonl").exists()}
    pairs = pair_all(runs, rows, a.central_seed)
    tuned = tuned_pairs(pairs)
    out = {"pairs": pairs, "tuned": [{"fed": p["fed"], "central": p["central"], "final": p["final"],
                                      "central_other_seed": p.get("central_other_seed", False)} for p in tuned],
           "runs": {k: {kk: v for kk, v in r.items() if kk != "metrics"} | {"metrics": r["metrics"]}
                    for k, r in rows.items()}}
    Path(a.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    if a.plot:
        plot_rows(rows, pairs, Path(a.plot))
    print("each federated row against its tuned centralized partner (the lowest central perplexity at that point)")
    print(f"{'federated row':58s} {'tokens':>11s} {'fed':>8s} {'central':>8s} {'ratio':>6s}  central row")
    for p in tuned:
        f = p["final"]
        print(f"{p['fed']:58s} {f['tokens']:11,d} {f['fed_ppl']:8.2f} {f['central_ppl']:8.2f} {f['ratio']:6.3f}  "
              f"{p['central']}{'' if p['complete'] else '  (partial)'}"
              f"{'  (another seed)' if p.get('central_other_seed') else ''}")


def collect_rows(raw: Path, into: Path) -> dict[str, str]:
    """Every study row committed under ``raw`` — row folders, and the archives the lease scripts return
    (long_pair.tgz, h_sweep.tgz, row.tgz, …) — as INTO/<row>/{metrics.jsonl, summary.json}. A row found more
    than once (a call's partial archive beside the final one) keeps its longest copy. Archives are read member
    by member, never extracted. Returns {row: where its copy came from}."""
    import tarfile

    found: dict[str, tuple[int, str, dict[str, bytes]]] = {}

    def offer(row: str, files: dict[str, bytes], where: str) -> None:
        n = files.get("metrics.jsonl", b"").count(b"\n")
        if row not in found or n > found[row][0] or (n == found[row][0] and "summary.json" in files):
            found[row] = (n, where, files)

    for f in sorted(raw.rglob("metrics.jsonl")):
        d = f.parent
        offer(d.name, {k: (d / k).read_bytes() for k in ("metrics.jsonl", "summary.json") if (d / k).exists()},
              str(d.relative_to(raw)))
    for t in sorted(raw.rglob("*.tgz")):
        with tarfile.open(t) as tar:
            per: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if m.isfile() and len(parts) >= 2 and parts[-1] in ("metrics.jsonl", "summary.json"):
                    per.setdefault(parts[-2], {})[parts[-1]] = tar.extractfile(m).read()
        for row, files in per.items():
            if "metrics.jsonl" in files:
                offer(row, files, str(t.relative_to(raw)))
    for row, (_, _, files) in found.items():
        (into / row).mkdir(parents=True, exist_ok=True)
        for k, b in files.items():
            (into / row / k).write_bytes(b)
    return {row: where for row, (_, where, _) in sorted(found.items())}


def parse_row(name: str) -> dict:
    """The settings a row's name carries (row_name's inverse): size, partition, side, outer, …, tokens, seed."""
    p = name.split("-")
    out = {"size": p[0], "partition": p[1], "side": p[2], "seed": int(p[-1][1:]), "tokens_planned": float(p[-2][1:])}
    if p[2] == "fed":
        out |= {"outer": p[3], "outer_lr": float(p[4][3:]), "h": int(p[5][1:]), "inner_lr_ratio": float(p[6][3:]),
                "momentum": 0.9 if p[3] != "fedavg" else 0.0, "momentum_warmup": 0, "secure": False}
        for x in p[7:-2]:
            if x.startswith("mw"):
                out["momentum_warmup"] = int(x[2:])
            elif x.startswith("m"):
                out["momentum"] = float(x[1:])
            elif x == "secagg":
                out["secure"] = True
    return out


GOALS = {"20m": 1.07, "75m": 1.07, "125m": 1.05}    # issue 14: fed/central perplexity, IID


def cmd_table(a: argparse.Namespace) -> None:
    """The study table from the committed raw results: every federated row against its tuned centralized partner,
    at the last token count both reached, with tokens per parameter, seed and the goal; and the ratio vs model
    size (rows at ≥ 5 tokens per parameter, the issue's floor at 75m / 125m)."""
    import tempfile

    raw = Path(a.raw)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        sources = collect_rows(raw, runs)
        rows = {d.name: _read_run(d) for d in sorted(runs.iterdir()) if (d / "metrics.jsonl").exists()
                and parse_row(d.name)["tokens_planned"] >= a.min_tokens}
        pairs = pair_all(runs, rows, a.central_seed)
    params = {n: r["summary"]["model_params"] for n, r in rows.items() if r["summary"] and r["summary"].get("model_params")}
    size_params = {}
    for n, v in params.items():
        size_params.setdefault(n.split("-")[0], v)
    table = []
    for p in tuned_pairs(pairs):
        f, meta = p["final"], parse_row(p["fed"])
        # the centralized lrs this row was paired with: the table names the best and every one tried
        tried = sorted({_central_lr(q["central"]) for q in pairs if q["fed"] == p["fed"] and q["final"]} - {None})
        n_params = size_params.get(meta["size"])
        complete = p["complete"] and f["tokens"] >= 0.99 * meta["tokens_planned"]
        table.append(meta | {"fed": p["fed"], "central": p["central"], "central_other_seed": p["central_other_seed"],
                             "tokens": f["tokens"], "params": n_params,
                             "tokens_per_param": f["tokens"] / n_params if n_params else None,
                             "fed_ppl": f["fed_ppl"], "central_ppl": f["central_ppl"], "ratio": f["ratio"],
                             "central_lr": _central_lr(p["central"]), "central_lrs_tried": tried,
                             "complete": complete, "goal": GOALS.get(meta["size"]) if meta["partition"] == "iid" else None,
                             "source": sources[p["fed"]], "central_source": sources[p["central"]]})
    table.sort(key=lambda t: (t["params"] or 0, -t["tokens"], t["ratio"]))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    where = str(raw.resolve().relative_to(REPO)) if raw.resolve().is_relative_to(REPO) else str(raw)
    (out / "study_table.json").write_text(json.dumps({"raw": where, "command": "python3 benchmarks/gpu/study.py table "
                                                      "--out benchmarks/gpu --plot benchmarks/gpu/ratio_vs_size.png",
                                                      "rows": table}, indent=1) + "\n")
    lines = ["| size | partition | outer optimizer | H | seed | tokens | tokens / param | fed | central | central lr (tried) "
             "| **fed / central** | goal | raw |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        opt = "FedAvg" if t["outer"] == "fedavg" else f"Nesterov {t['outer_lr']:g} / {t['momentum']:g}"
        if t["outer"] != "fedavg" and t["momentum_warmup"]:
            opt += f", warmup {t['momentum_warmup']}"
        if t["inner_lr_ratio"] != 1:
            opt += f", inner lr × {t['inner_lr_ratio']:g}"
        if t["outer"] == "fedavg" and t["outer_lr"] != 1:
            opt += f" lr {t['outer_lr']:g}"
        if t["secure"]:
            opt += ", secure aggregation"
        seed = f"{t['seed']}" + (f" (central s{a.central_seed})" if t["central_other_seed"] else "")
        tpp = f"{t['tokens_per_param']:.1f}" if t["tokens_per_param"] else "—"   # no summary of that size yet
        flags = "" if t["complete"] else " (partial)"
        goal = f"≤ {t['goal']}" if t["goal"] else ("non-IID ≤ 1.03 × IID" if t["partition"] != "iid" else "")
        lines.append(f"| {t['size']} | {t['partition']} | {opt} | {t['h']} | {seed} | {t['tokens'] / 1e6:,.1f}M | "
                     f"{tpp} | {t['fed_ppl']:.3f} | {t['central_ppl']:.3f} | {_lrs(t)} | **{t['ratio']:.3f}**{flags} | "
                     f"{goal} | `{t['source']}` |")
    (out / "study_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if a.plot:
        plot_sizes(table, Path(a.plot))


def plot_sizes(table: list[dict], out: Path) -> None:
    """fed/central vs model parameters for the complete rows at ≥ 5 tokens per parameter, by recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6))
    shown = [t for t in table if t["complete"] and t["params"] and t["tokens_per_param"] >= 4.9]   # 75m: 4.99
    styles = {("iid", True): ("o", "C0", "IID, Nesterov + momentum warmup"),
              ("iid", False): ("x", "C3", "IID, other optimizers"),
              ("by_source", True): ("^", "C2", "non-IID (by source), Nesterov + momentum warmup"),
              ("by_source", False): ("v", "C1", "non-IID (by source), other optimizers")}
    used, placed = set(), []
    ratios = [t["ratio"] for t in shown] or [1.0]
    step = 0.03 * max(max(ratios) - min(ratios), 0.05)   # about one label's height on this axis
    for t in sorted(shown, key=lambda t: (t["params"], t["ratio"])):
        key = (t["partition"], t["outer"] != "fedavg" and bool(t["momentum_warmup"]))
        m, c, label = styles[key]
        ax.plot(t["params"], t["ratio"], m, color=c, markersize=7, label=None if key in used else label)
        used.add(key)
        text = f"s{t['seed']}, H {t['h']}, {t['tokens_per_param']:.0f} tok/param"
        if t["outer"] != "fedavg" and t["momentum"] != 0.9:
            text += f", β {t['momentum']:g}"
        # labels of near-equal ratios at one size would overprint: step each one up past the last
        dy = 0.0
        for n, r in placed:
            if n == t["params"] and abs(t["ratio"] + dy - r) < step:
                dy = r + step - t["ratio"]
        placed.append((t["params"], t["ratio"] + dy))
        ax.annotate(text, (t["params"], t["ratio"]), xytext=(t["params"] * 1.05, t["ratio"] + dy), fontsize=6.5,
                    va="center", arrowprops={"arrowstyle": "-", "linewidth": 0.4, "color": "0.5"} if dy else None)
    for size, g in GOALS.items():
        n = next((t["params"] for t in table if t["size"] == size and t["params"]), None)
        if n:
            ax.plot([n / 1.25, n * 1.25], [g, g], "k-", linewidth=1.5, label="goal (IID)" if size == "20m" else None)
    ax.set(xscale="log", xlabel="model parameters", ylabel="fed / tuned centralized perplexity",
           title="issue 14: federated vs centralized at the end of each schedule")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "prepare"):
        p = sub.add_parser(name)
        p.add_argument("--size", choices=sorted(SIZES), default="20m")
        p.add_argument("--side", choices=("fed", "central"), default="fed")
        p.add_argument("--partition", choices=("iid", "by_source"), default="iid")
        # defaults: the 20m sweep's best at 67M tokens (benchmarks/RESULTS.md (f14)): FedAvg, outer lr 1, inner lr =
        # central lr. The best at 20 tokens per parameter (v14) is --outer nesterov --outer-lr 0.7 --momentum-warmup
        # 28 (a quarter of its 111 rounds); the defaults stay, so that every recorded command keeps its meaning
        p.add_argument("--outer", choices=("nesterov", "fedavg"), default="fedavg")
        p.add_argument("--outer-lr", type=float, default=1.0)
        p.add_argument("--momentum", type=float, default=0.9, help="outer momentum (Nesterov / FedMom)")
        p.add_argument("--momentum-warmup", type=int, default=0,
                       help="outer rounds over which the momentum rises from 0 to --momentum (RESULTS.md (s14))")
        p.add_argument("--h", type=int, default=32, help="local steps per round")
        p.add_argument("--inner-lr-ratio", type=float, default=1.0, help="federated inner lr / centralized lr")
        p.add_argument("--central-lr", type=float, default=None)
        p.add_argument("--tokens", type=float, default=2e8, help="tokens per side (both sides see the same)")
        p.add_argument("--evals", type=int, default=12, help="about this many evaluations per run")
        p.add_argument("--eval-fraction", type=float, default=0.01)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--clip", type=float, default=1e6, help="privacy.clip, the L2 bound on each Δ (1e6: never binds; the plan of a 32-bit ring allows <= ~5e8)")
        p.add_argument("--fused", default="auto")
        p.add_argument("--secure", action="store_true", help="secure aggregation (default: plain mode)")
        p.add_argument("--backend", choices=("inproc", "ray"), default="inproc",
                       help="ray: the 4 holders as Ray actors sharing the GPU, training at the same time "
                            "(RESULTS.md (m13): 1.75x faster rounds at 20m x 8); Ray from benchmarks/gpu/pack_ray.sh")
        p.add_argument("--ray-cpus-per-holder", type=float, default=3.0)
        p.add_argument("--preset", default="gpu-20m")
        p.add_argument("--corpus", default=".corpus")
        p.add_argument("--runs", default="runs/gpu-study")
        p.add_argument("--out", default=None)
        p.add_argument("--set", action="append", help="extra securefed --set KEY=VALUE")
    s = sub.add_parser("summarize")
    s.add_argument("--runs", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--plot", default=None, help="PNG: perplexity vs tokens for every row, and fed/central vs tokens")
    s.add_argument("--central-seed", type=int, default=None,
                   help="pair a federated row that has no centralized row at its own seed with this seed's")
    t = sub.add_parser("table", help="the study table and the ratio vs model size, from the committed raw results")
    t.add_argument("--raw", default=str(Path(__file__).resolve().parent / "raw" / "issue14"))
    t.add_argument("--out", required=True, help="folder: study_table.md, study_table.json")
    t.add_argument("--plot", default=None, help="PNG: fed/central vs model parameters")
    t.add_argument("--min-tokens", type=float, default=1e8,
                   help="rows planned for at least this many tokens per side (default: not the 67M-token sweep of "
                        "RESULTS.md (f14), whose rows were resumed across calls and are paired in h_sweep_20m.json)")
    t.add_argument("--central-seed", type=int, default=0,
                   help="pair a federated row that has no centralized row at its own seed with this seed's (marked)")
    a = ap.parse_args()
    if a.cmd in ("run", "prepare"):
        a.preset = a.preset if a.preset != "gpu-20m" else f"gpu-{a.size}"
        Path(a.runs).mkdir(parents=True, exist_ok=True)
    {"run": cmd_run, "prepare": cmd_prepare, "summarize": cmd_summarize, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
