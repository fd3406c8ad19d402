"""CPU tests of the pure parts of benchmarks/gpu/study.py (row design: equal tokens and eval points on
both sides, pairing) and build_corpus.py (source mapping, documents keep every byte of every file)."""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

_GPU = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", _GPU / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


study = _load("study")
corpus = _load("build_corpus")


def _args(**kw):
    base = dict(size="20m", side="fed", partition="iid", outer="nesterov", outer_lr=0.7, h=32, inner_lr_ratio=0.5,
                central_lr=None, tokens=1e8, evals=12, eval_fraction=0.01, seed=0, fused="auto", secure=False,
                clip=1e6, corpus="/c", set=None, momentum=0.9, momentum_warmup=0, preset="gpu-20m", backend="inproc", ray_cpus_per_holder=3.0)
    base.update(kw)
    return argparse.Namespace(**base)


def _sets(sets):
    return dict(s.split("=", 1) for s in sets)


def test_fed_and_central_rows_see_the_same_tokens_at_the_same_eval_points():
    fed_sets, fed = study.overrides(_args(side="fed"))
    cen_sets, cen = study.overrides(_args(side="central"))
    f, c = _sets(fed_sets), _sets(cen_sets)
    # tokens per round: holders x batch x H x seq on both sides; same rounds, same eval cadence
    assert int(f["federation.n_holders"]) * int(f["train.batch_size"]) == int(c["train.batch_size"])
    assert int(c["federation.n_holders"]) == 1 and f["train.local_steps"] == c["train.local_steps"]
    assert fed["rounds"] == cen["rounds"] and f["federation.eval_every"] == c["federation.eval_every"]
    assert fed["rounds"] * fed["tokens_per_round"] >= 1e8
    # the centralized side is plain continuous training: FedAvg with outer lr 1, the central lr
    assert c["outer.name"] == "fedavg" and float(c["outer.lr"]) == 1.0
    assert float(f["train.lr"]) == pytest.approx(0.5 * float(c["train.lr"]))
    assert f["aggregation.mode"] == "plain" and _sets(study.overrides(_args(secure=True))[0])["aggregation.mode"] == "secagg"
    assert c["data.source"] == "/c/pile" and c["data.tokenizer"] == "/c/tokenizer"


def test_pairing_at_equal_tokens_and_partner_names():
    fed = [{"tokens_seen": 10, "eval_ppl": 30.0}, {"tokens_seen": 20}, {"tokens_seen": 30, "eval_ppl": 12.0}]
    cen = [{"tokens_seen": 10, "eval_ppl": 20.0}, {"tokens_seen": 30, "eval_ppl": 10.0}]
    curve = study.pair_curves(fed, cen)
    assert [p["tokens"] for p in curve] == [10, 30] and curve[-1]["ratio"] == pytest.approx(1.2)
    name = study.row_name(_args())
    assert name == "20m-iid-fed-nesterov-olr0.7-h32-ilr0.5-t1e+08-s0"
    assert study.partner_of(name) == "20m-iid-central-*-t1e+08-s0"
    warm = study.row_name(_args(momentum_warmup=28))
    assert warm == "20m-iid-fed-nesterov-olr0.7-h32-ilr0.5-mw28-t1e+08-s0" and study.partner_of(warm) == study.partner_of(name)
    assert _sets(study.overrides(_args(momentum_warmup=28))[0])["outer.momentum_warmup"] == "28"
    # an outer momentum other than 0.9 is in the name (the 0.9 rows keep theirs) and in the config
    m8 = study.row_name(_args(momentum=0.8, momentum_warmup=28))
    assert m8 == "20m-iid-fed-nesterov-olr0.7-h32-ilr0.5-m0.8-mw28-t1e+08-s0" and study.partner_of(m8) == study.partner_of(name)
    assert _sets(study.overrides(_args(momentum=0.8))[0])["outer.momentum"] == "0.8"
    assert study.partner_of(name.replace("-iid-", "-by_source-")) == "20m-iid-central-*-t1e+08-s0"


def test_linux_sources_and_documents_keep_every_file():
    assert corpus.linux_source_of("fs/ext4/inode.c") == "linux-fs"
    assert corpus.linux_source_of("drivers/gpu/drm/amd/include/asic_reg/x.h") is None   # generated headers left out
    assert corpus.linux_source_of("fs/ext4/inode.o") is None
    files = [(f"f{i}.py", ("line %d\n" % i) * (40 * i + 1)) for i in range(30)]
    files.append(("big.c", "x = 1;\n" * 400_000))                                          # 2.8 MB: cut into pieces
    docs = corpus.chunk_documents(files, doc_bytes=2_000)
    joined = "".join(docs)
    for rel, text in files[:30]:
        assert f"<<< {rel} >>>\n{text}" in joined
    pieces = [d for d in docs if "<<< big.c >>>" in d]
    assert len(pieces) >= 3 and all(len(p) <= corpus.PIECE_BYTES + 64 for p in pieces)
    assert sum(p.count("x = 1;\n") for p in pieces) == 400_000


def test_a_federated_row_is_compared_with_its_best_centralized_partner():
    def pair(fed, central, fed_ppl, central_ppl):
        last = {"tokens": 100, "fed_ppl": fed_ppl, "central_ppl": central_ppl, "ratio": fed_ppl / central_ppl}
        return {"fed": fed, "central": central, "curve": [last], "final": last, "complete": True}

    pairs = [pair("a", "c-lr1", 30.0, 15.0), pair("a", "c-lr2", 30.0, 12.0),
             pair("b", "c-lr1", 20.0, 15.0), pair("b", "c-lr2", 20.0, 12.0), pair("x", "c-lr1", 1.0, 1.0) | {"final": None}]
    tuned = study.tuned_pairs(pairs)
    # the lower central perplexity wins (a tuned baseline can only raise the ratio); sorted by ratio; no final: dropped
    assert [(p["fed"], p["central"]) for p in tuned] == [("b", "c-lr2"), ("a", "c-lr2")]
    assert tuned[0]["final"]["ratio"] == pytest.approx(20 / 12)


def test_a_row_without_a_centralized_row_at_its_seed_pairs_with_the_given_seeds_and_says_so(tmp_path, capsys):
    def row(name, ppls):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            "".join(json.dumps({"round": i + 1, "tokens_seen": 100 * (i + 1), "eval_ppl": p}) + "\n"
                    for i, p in enumerate(ppls)))
    row("20m-iid-central-lr0.003-t1e+08-s0", [20.0, 10.0])
    row("20m-iid-fed-fedavg-olr1-h32-ilr1-t1e+08-s0", [30.0, 12.0])
    row("20m-iid-fed-fedavg-olr1-h32-ilr1-t1e+08-s1", [33.0, 11.0])

    def summarize(central_seed):
        out = tmp_path / f"s{central_seed}.json"
        study.cmd_summarize(argparse.Namespace(runs=str(tmp_path), out=str(out), plot=None, central_seed=central_seed))
        return {p["fed"][-2:]: p for p in json.loads(out.read_text())["pairs"]}
    assert set(summarize(None)) == {"s0"}              # by default a row pairs only at its own seed
    pairs = summarize(0)
    assert pairs["s1"]["central"].endswith("-s0") and pairs["s1"]["central_other_seed"] is True
    assert pairs["s1"]["final"]["ratio"] == pytest.approx(1.1) and pairs["s0"]["central_other_seed"] is False
    assert "(another seed)" in capsys.readouterr().out


def test_a_ray_row_asks_simulate_for_a_quarter_gpu_per_holder_and_central_rows_refuse_it():
    from securefed.cli import build_parser
    from securefed.commands.simulate import _ray_options

    a = _args(backend="ray", ray_cpus_per_holder=3.0)
    sets, _ = study.overrides(a)
    args = build_parser().parse_args(study.simulate_argv(a, Path("/r/x"), sets))
    opts = _ray_options(args)
    assert args.backend == "ray" and (opts.gpus_per_holder, opts.cpus_per_holder, opts.object_store_mb) == (0.25, 3.0, 8192)
    assert args.overrides == sets and str(args.out) == "/r/x"
    plain = build_parser().parse_args(study.simulate_argv(_args(backend="inproc"), Path("/r/y"), sets))
    assert plain.backend == "inproc" and _ray_options(plain) is None
    with pytest.raises(SystemExit, match="federated rows"):
        study.simulate_argv(_args(side="central", backend="ray", ray_cpus_per_holder=3.0), Path("/r/z"), sets)


@pytest.mark.parametrize("kw", [dict(side="central"), dict(outer="fedavg", outer_lr=1.0), dict(),
                                dict(momentum_warmup=28), dict(momentum=0.8, momentum_warmup=28), dict(size="75m"),
                                dict(size="125m", outer="fedavg")])
def test_every_row_kind_loads_on_its_preset(kw):
    """A row's overrides on top of its preset (gpu-20m's own outer optimizer is Nesterov with a 56-round warmup,
    RESULTS.md (B48)) give a valid config whose outer optimizer is the row's, warmup included."""
    from securefed.runtime.config import load_run_config

    a = _args(**kw)
    a.preset = f"gpu-{a.size}"
    sets, _ = study.overrides(a)
    cfg = load_run_config(preset=a.preset, overrides=tuple(sets))
    want = ("fedavg", 1.0, 0) if a.side == "central" else (a.outer, a.outer_lr, a.momentum_warmup)
    assert (cfg.outer.name, cfg.outer.lr, cfg.outer.momentum_warmup) == want
    if a.side == "fed" and a.outer != "fedavg":
        assert cfg.outer.momentum == a.momentum


def test_dpsgd_lm_public_initial_model_is_one_central_trajectory_on_public_text_and_rows_start_from_it(tmp_path):
    """PUBLIC_INIT=1 (protocols/dp.md §13): `dpsgd_lm.py pretrain` is one holder, plain aggregation, FedAvg at lr 1
    (one AdamW trajectory) on CORPUS/public with the rows' tokenizer and model, for about --tokens; a row given
    model.init_from loads it."""
    from securefed.runtime.config import load_run_config
    from securefed.training.models import build_model

    spec = importlib.util.spec_from_file_location("dpsgd_lm", _GPU.parent / "privacy" / "dpsgd_lm.py")
    dp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dp)
    a = argparse.Namespace(corpus="/c", size="20m", tokens=4e7, batch=64, h=64, lr=3e-3, warmup=20, seed=0)
    preset, sets = dp.pretrain_sets(a)
    cfg = load_run_config(preset=preset, overrides=tuple(sets))
    assert (cfg.federation.n_holders, cfg.aggregation.mode, cfg.outer.name, cfg.outer.lr, cfg.baseline) == (
        1, "plain", "fedavg", 1.0, False)
    assert (cfg.data.source, cfg.data.tokenizer, cfg.model.preset) == ("/c/public", "/c/tokenizer", "20m")
    assert cfg.federation.rounds * cfg.train.local_steps * cfg.train.batch_size * 1024 == 40 * 2**20   # ≥ 4e7 tokens
    assert not cfg.train.dp_sgd.enabled and cfg.federation.eval_every == cfg.federation.rounds
    build_model("tiny", vocab_size=64, seq_len=32, seed=0).save_pretrained(tmp_path / "m", safe_serialization=True)
    row = argparse.Namespace(tiny=False, size="20m", corpus="/c", seed=0, batch=512, micro=128, np_micro=512, h=32,
                             rounds=4, lr=3e-3, warmup=2, sigma=0.4947, clipping="ghost",
                             set=[f"model.init_from={tmp_path / 'm'}"])
    assert load_run_config(preset="gpu-20m", overrides=tuple(dp.row_sets(row)[1])).model.init_from == str(tmp_path / "m")


def test_dpsgd_lm_rows_load_on_gpu_20m():
    """benchmarks/privacy/dpsgd_lm.py's rows are FedAvg on gpu-20m's data and trainer, DP-SGD on or off."""
    from securefed.runtime.config import load_run_config

    spec = importlib.util.spec_from_file_location("dpsgd_lm", _GPU.parent / "privacy" / "dpsgd_lm.py")
    dp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dp)
    for sigma in (None, 0.6586):
        a = argparse.Namespace(tiny=False, size="20m", corpus="/c", seed=0, batch=2048, micro=32, np_micro=512, h=4,
                               rounds=4, lr=3e-3, warmup=2, sigma=sigma, clipping="ghost", set=None)
        preset, sets = dp.row_sets(a)
        cfg = load_run_config(preset=preset, overrides=tuple(sets))
        assert (cfg.outer.name, cfg.outer.momentum_warmup) == ("fedavg", 0)
        assert cfg.train.dp_sgd.enabled == (sigma is not None)
        # the non-private row accumulates in slices of 512 (train.micro_batch_size); the DP rows slice by 32
        assert (cfg.train.micro_batch_size, cfg.train.dp_sgd.micro_batch_size) == ((512, None) if sigma is None
                                                                                  else (None, 32))


@pytest.mark.parametrize("kw", [
    dict(side="central"), dict(side="central", partition="iid", central_lr=2e-3, size="75m", tokens=3.52e8, seed=2),
    dict(outer="fedavg", outer_lr=1.0, inner_lr_ratio=1.0, h=8),
    dict(momentum=0.8, momentum_warmup=28, inner_lr_ratio=1.0, partition="by_source", secure=True, seed=1),
    dict(momentum_warmup=21, size="75m", tokens=3.52e8),
])
def test_parse_row_reads_back_what_row_name_wrote(kw):
    a = _args(**kw)
    meta = study.parse_row(study.row_name(a))
    assert (meta["size"], meta["side"], meta["seed"]) == (a.size, a.side, a.seed)
    assert meta["tokens_planned"] == pytest.approx(a.tokens, rel=1e-2)
    assert meta["partition"] == a.partition
    if a.side == "fed":
        assert (meta["outer"], meta["outer_lr"], meta["h"], meta["inner_lr_ratio"], meta["momentum_warmup"],
                meta["secure"]) == (a.outer, a.outer_lr, a.h, a.inner_lr_ratio, a.momentum_warmup, a.secure)
        assert meta["momentum"] == (0.0 if a.outer == "fedavg" else a.momentum)


def test_table_collects_rows_from_folders_and_archives_keeping_the_longest_copy(tmp_path):
    import tarfile

    def metrics(n, ppl0):
        return "".join(json.dumps({"round": i + 1, "tokens_seen": 100 * (i + 1), "eval_ppl": ppl0 / (i + 1)}) + "\n"
                       for i in range(n))
    raw = tmp_path / "raw"
    cen, fed = "20m-iid-central-lr0.003-t4e+02-s0", "20m-iid-fed-nesterov-olr0.7-h32-ilr1-mw28-t4e+02-s0"
    (raw / "a" / cen).mkdir(parents=True)
    (raw / "a" / cen / "metrics.jsonl").write_text(metrics(4, 20.0))
    (raw / "a" / cen / "summary.json").write_text(json.dumps({"model_params": 40}))
    stage = tmp_path / "stage"
    for name, n, ppl0 in ((fed, 4, 22.0), (cen, 2, 99.0)):       # the archive's central copy is shorter: not used
        (stage / name).mkdir(parents=True)
        (stage / name / "metrics.jsonl").write_text(metrics(n, ppl0))
    (stage / fed / "summary.json").write_text(json.dumps({"model_params": 40}))
    (raw / "b").mkdir()
    with tarfile.open(raw / "b" / "long_pair.tgz", "w:gz") as tar:
        tar.add(stage / fed, arcname=fed)
        tar.add(stage / cen, arcname=cen)
    into = tmp_path / "rows"
    sources = study.collect_rows(raw, into)
    assert sources == {cen: f"a/{cen}", fed: "b/long_pair.tgz"}
    out = tmp_path / "out"
    study.cmd_table(argparse.Namespace(raw=str(raw), out=str(out), plot=str(out / "p.png"), central_seed=0, min_tokens=0))
    (row,) = json.loads((out / "study_table.json").read_text())["rows"]
    assert row["ratio"] == pytest.approx(1.1) and row["tokens"] == 400 and row["tokens_per_param"] == 10
    assert row["complete"] and row["goal"] == 1.07 and row["momentum_warmup"] == 28
    assert "**1.100**" in (out / "study_table.md").read_text() and (out / "p.png").stat().st_size > 0


def test_table_pairs_each_row_with_its_best_centralized_lr_and_names_every_lr_tried(tmp_path):
    """Two centralized rows at different lrs (75m's 2e-3 and 3e-3, RESULTS.md (A40)): the ratio is taken against
    the better one, and the table says which lr that was and which were tried."""
    def metrics(ppl):
        return "".join(json.dumps({"round": i + 1, "tokens_seen": 100 * (i + 1), "eval_ppl": ppl / (i + 1)}) + "\n"
                       for i in range(3))
    raw = tmp_path / "raw" / "x"
    fed = "75m-iid-fed-nesterov-olr0.7-h32-ilr1-mw21-t3e+02-s0"
    for name, ppl in ((fed, 33.0), ("75m-iid-central-lr0.002-t3e+02-s0", 30.0),
                      ("75m-iid-central-lr0.003-t3e+02-s0", 31.5)):
        (raw / name).mkdir(parents=True)
        (raw / name / "metrics.jsonl").write_text(metrics(ppl))
        (raw / name / "summary.json").write_text(json.dumps({"model_params": 60}))
    out = tmp_path / "out"
    study.cmd_table(argparse.Namespace(raw=str(tmp_path / "raw"), out=str(out), plot=None, central_seed=0, min_tokens=0))
    (row,) = json.loads((out / "study_table.json").read_text())["rows"]
    assert row["ratio"] == pytest.approx(1.1) and row["central_lr"] == 0.002
    assert row["central_lrs_tried"] == [0.002, 0.003]
    assert "| 0.002 (0.002, 0.003) | **1.100** |" in (out / "study_table.md").read_text()
    assert study._central_lr("20m-iid-central-t4e+02-s0") is None


def test_dpsgd_lm_plot_reads_archived_loose_and_console_rows(tmp_path):
    """dpsgd_lm.py plot: rows from a run's archive and loose files (metrics + argv), and from a console whose
    files were lost, where only the lines with both eval_ppl and round visible count."""
    import tarfile

    spec = importlib.util.spec_from_file_location("dpsgd_lm", _GPU.parent / "privacy" / "dpsgd_lm.py")
    dp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dp)
    raw = tmp_path / "raw"
    run = raw / "run9"
    stage = tmp_path / "stage"
    stage.mkdir()
    for row, sigma, eps in (("eps8", 0.5, 7.9), ("eps-inf", None, None)):
        m = [{"round": i, "tokens_seen": 100 * i, "eval_ppl": 50.0 / i} | ({"record_epsilon_max": eps} if eps else {})
             for i in (1, 2)]
        (stage / f"{row}.metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in m))
        (stage / f"{row}.cmd.json").write_text(json.dumps({"args": {"batch": 64, "h": 2, "rounds": 2, "sigma": sigma}}))
    run.mkdir(parents=True)
    with tarfile.open(run / "dpsgd_lm.tgz", "w:gz") as tar:
        for f in ("eps8.metrics.jsonl", "eps8.cmd.json"):
            tar.add(stage / f, arcname=f"./{f}")
    for f in ("eps-inf.metrics.jsonl", "eps-inf.cmd.json"):
        (run / f).write_bytes((stage / f).read_bytes())
    rows = dp._curves_of_run(run)
    assert rows["eps8"]["points"] == [(100, 50.0), (200, 25.0)] and rows["eps8"]["eps"] == 7.9
    assert rows["eps-inf"]["args"]["sigma"] is None
    # benchmarks/gpu/chain.sh returns the runs folder as it is: <row>/metrics.jsonl beside <row>.cmd.json
    chained = raw / "run8"
    chained.mkdir()
    with tarfile.open(chained / "dpsgd_runs.tgz", "w:gz") as tar:
        tar.add(stage / "eps8.metrics.jsonl", arcname="eps8-bc/metrics.jsonl")
        tar.add(stage / "eps8.cmd.json", arcname="eps8-bc.cmd.json")
    ch = dp._curves_of_run(chained)
    assert list(ch) == ["eps8-bc"] and ch["eps8-bc"]["points"] == [(100, 50.0), (200, 25.0)]
    # PUBLIC_INIT=1's archive also holds the public initial model's own curve (dpsgd_lm.py pretrain: no rounds, no
    # sigma in its argv): read, but not an ε row, so the plot leaves it out (it stopped the plot, stop 48)
    pub = raw / "run10"
    pub.mkdir()
    (stage / "public-init.cmd.json").write_text(json.dumps({"args": {"cmd": "pretrain", "batch": 64, "h": 2}}))
    with tarfile.open(pub / "dpsgd_pub_runs.tgz", "w:gz") as tar:
        tar.add(stage / "eps8.metrics.jsonl", arcname="public-init/metrics.jsonl")
        tar.add(stage / "public-init.cmd.json", arcname="public-init.cmd.json")
    assert list(dp._curves_of_run(pub)) == ["public-init"]
    old = raw / "run4"
    old.mkdir()
    (old / "console.txt").write_text(
        '#   ROWS="inf 8" BATCH=512 H=8 ROUNDS=4 SIGMAS="1.0 0.6 0.45" SKIP_THROUGHPUT=1\n'
        "/tmp/x/runs/eps8/metrics.jsonl\n"
        '{"aggregation": "secagg", "eval_ppl": 16133\n'                    # cut before its round: not a point
        '{"eval_ppl": 1619.4, "record_epsilon_max": 7.6, "round": 3\n')
    con = dp._curves_of_run(old)
    assert con["eps8"]["points"] == [(3 * 4 * 8 * 512 * 1024, 1619.4)] and con["eps8"]["args"]["sigma"] == 0.45
    dp.cmd_plot(argparse.Namespace(raw=str(raw), unigram=1000.0, out=str(tmp_path / "p.png")))
    assert (tmp_path / "p.png").stat().st_size > 0
