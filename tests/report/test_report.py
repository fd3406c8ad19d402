"""The report renders from a synthetic run directory, embeds its plots, and flags a broken ledger."""

import argparse
import base64
import json

import numpy as np
import pytest
import yaml

from securefed.commands import report as report_cmd
from securefed.privacy import DPConfig, PrivacySession
from securefed.primitives.rng import DeterministicEntropy
from securefed.report import render_report


@pytest.fixture
def run_dir(tmp_path):
    rd = tmp_path / "run"
    # δ = 0.1 < 1/6 (the old default 6^-1.1 = 0.139 is no longer the default): a large δ the report must warn about
    cfg = DPConfig(mode="distributed", noise_multiplier=1.0, clip=1.0, holder_epsilon_cap=4.0, delta=0.1)
    (rd / "privacy").mkdir(parents=True)
    (rd / "config.yaml").write_text(yaml.safe_dump({"privacy": {"mode": "distributed", "clip": 1.0},
                                                    "aggregation": {"mode": "secagg", "secagg": {"threshold": 0.6}}}))
    s = PrivacySession(cfg, population=6, cohort_size=4, rounds_planned=3, sampling="poisson", ledger_dir=rd / "privacy")
    rng = np.random.default_rng(0)
    metrics = []
    for r in range(3):
        rp = s.begin_round(r, cohort=[0, 1, 2, 3], dim=64)
        e = DeterministicEntropy.from_int(r)
        encs = {}
        infos = {}
        for h in rp.participants:
            encs[h], infos[h] = rp.encode(h, rng.normal(size=64).astype(np.float32) * 0.2, e)
        total = np.zeros(rp.encoded_dim, rp.ring.dtype)
        for h in rp.participants:
            total = total + encs[h]
        rp.decode(total, survivors=rp.participants, entropy=e)
        ent = rp.finish(survivors=rp.participants, clip_infos=infos)
        metrics.append({"round": r, "clients_sampled": 4, "clients_survived": len(rp.participants), "train_loss": 5 - r,
                        "eval_loss": 5 - r, "eval_ppl": float(np.exp(5 - r)), "tokens_seen": 1000 * (r + 1), "bytes_up": 1,
                        "bytes_down": 1, "seconds": 1.0, "aggregation": "secagg", "clip_fraction": ent["clip_fraction"]})
    (rd / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (rd / "summary.json").write_text(json.dumps({"fed_eval_ppl": 20.1, "central_eval_ppl": 15.0, "rounds": 3, "tokens": 3000}))
    (rd / "baseline").mkdir()
    (rd / "baseline" / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "tokens_seen": 1000 * i, "eval_loss": 4.0,
                                                                        "eval_ppl": 54.6}) + "\n" for i in range(1, 4)))
    return rd


def test_report_renders_all_outputs(run_dir):
    rep = render_report(run_dir)
    out = run_dir / "report"
    for name in ("report.json", "report.md", "report.html", "epsilon.png", "perplexity.png", "clip_fraction.png"):
        assert (out / name).is_file()
    assert rep["ledger_ok"] and rep["facts"]["mechanism"] == "ddgauss" and rep["facts"]["secagg_threshold"] == 0.6
    assert 0 < float(rep["facts"]["epsilon"]) < 100
    md = (out / "report.md").read_text()
    for phrase in ("Kairouz, Liu, Steinke", "WARNING: δ", "largest ε in the server's view of any holder", "Privacy unit", "hash chain intact", "NIST SP 800-226", "uniform averaging", "honestly", "neighbouring relation"):
        assert phrase in md
    html = (out / "report.html").read_text()
    png = base64.b64encode((out / "epsilon.png").read_bytes()).decode()
    assert html.count("data:image/png;base64,") == 3 and png in html and "src='epsilon.png'" not in html
    assert json.loads((out / "report.json").read_text())["ledger_head"] == rep["ledger_head"]


def test_broken_chain_is_flagged_loudly(run_dir):
    p = run_dir / "privacy" / "ledger.jsonl"
    lines = p.read_text().splitlines(keepends=True)
    p.write_text(lines[0] + lines[2])
    code = report_cmd.run(argparse.Namespace(run_dir=str(run_dir), out=None))
    assert code == 1
    html = (run_dir / "report" / "report.html").read_text()
    assert "class='alarm'" in html and "NOT VERIFIED" in html
    assert "NOT VERIFIED" in (run_dir / "report" / "report.md").read_text()


def test_command_registers_and_handles_missing_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    report_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["report", str(tmp_path / "nope")])
    assert args.func(args) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    # issue 16: an empty directory is not a run: one clear error, nothing written (was: a full report, exit 1)
    assert report_cmd.run(argparse.Namespace(run_dir=str(empty), out=None)) == 2
    assert "is not a securefed run directory" in capsys.readouterr().err and list(empty.iterdir()) == []
    # a run without a ledger (metrics only) is still rendered, and flagged
    (empty / "metrics.jsonl").write_text('{"round": 1, "train_loss": 5.0}\n')
    assert report_cmd.run(argparse.Namespace(run_dir=str(empty), out=None)) == 1
    assert "no privacy ledger" in (empty / "report" / "report.md").read_text()
