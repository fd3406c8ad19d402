"""The report stands alone (run id, date, versions, preset, model, holders, tokens, ratio, unigram, phase
times), says what a no-DP run does and does not protect, shows the run's warnings, plots the rounds
as the files number them, and every file it writes is strict JSON."""

import json

import numpy as np
import pytest
import yaml

from securefed import jsonio
from securefed.configio import to_dict
from securefed.privacy import DPConfig, PrivacySession
from securefed.primitives.rng import DeterministicEntropy
from securefed.report import render_report
from securefed.runtime.config import load_run_config


def strict(text):
    return json.loads(text, parse_constant=lambda t: pytest.fail(f"bare {t} in JSON"))


def _no_dp_run(rd, *, rounds=3, ppl=(900.0, 300.0, 150.0), warnings=None, changes=()):
    cfg = load_run_config(overrides=list(changes))
    (rd / "privacy").mkdir(parents=True)
    (rd / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False)
                                    + '# versions: {"securefed": "0.1.0", "torch": "2.13.0"}\n')
    s = PrivacySession(DPConfig(clip=100.0), population=4, cohort_size=4, rounds_planned=rounds, sampling="fixed",
                       ledger_dir=rd / "privacy")
    rng = np.random.default_rng(0)
    metrics = []
    for r in range(1, rounds + 1):
        rp = s.begin_round(r, cohort=[1, 2, 3, 4], dim=16)
        e = DeterministicEntropy.from_int(r)
        encs, infos = {}, {}
        for h in rp.participants:
            encs[h], infos[h] = rp.encode(h, rng.normal(size=16).astype(np.float32), e)
        total = sum(encs.values())
        rp.decode(total, survivors=rp.participants, entropy=e)
        rp.finish(survivors=rp.participants, clip_infos=infos)
        row = {"round": r, "train_loss": 6.0 - r, "eval_ppl": ppl[r - 1], "tokens_seen": 1000 * r, "clip_fraction": 0.25 * r}
        if warnings is not None:
            row["warnings"] = warnings.get(r, [])
        metrics.append(row)
    (rd / "metrics.jsonl").write_text("".join(jsonio.dumps(m) + "\n" for m in metrics))
    summary = {"fed_eval_ppl": ppl[-1], "central_eval_ppl": 120.0, "fed_over_central_ppl": ppl[-1] / 120.0,
               "unigram_eval_ppl": 695.2, "rounds": rounds, "tokens": 1000 * rounds, "epsilon": "inf",
               "model_preset": "tiny", "model_params": 1_400_000, "privacy_mode": "none", "aggregation": "secagg",
               "wall_seconds": 162.0, "phase_seconds": {"data": 2.0, "rounds": 120.0, "baseline": 30.0, "export": 1.0,
                                                        "report": 9.0}}
    (rd / "summary.json").write_text(json.dumps(summary))
    return rd


def test_the_report_stands_alone(tmp_path):
    rd = _no_dp_run(tmp_path / "run-20261130-101500")
    rep = render_report(rd)
    md = (rd / "report" / "report.md").read_text()
    run = rep["run"]
    assert run["run_id"] == "run-20261130-101500" and run["preset"] == "demo" and run["preset_changes"] == []
    assert run["started"].endswith("UTC") and run["finished"].endswith("UTC")
    assert run["versions"] == {"securefed": "0.1.0", "torch": "2.13.0"}
    assert (run["holders"], run["tokens"], run["unigram_eval_ppl"], run["fed_over_central_ppl"]) == (4, 3000, 695.2, 1.25)
    for phrase in ("| run id | run-20261130-101500 |", "| run preset | demo |", "securefed 0.1.0, torch 2.13.0",
                   "tiny, 1,400,000 parameters", "| data holders (cohort per round) | 4 (4) |", "| tokens (federated) | 3,000 |",
                   "| federated / centralized perplexity | 1.25", "| unigram perplexity of the eval set | 695.2",
                   "2 min 42 s (data 2.0 s, rounds 2 min 00 s, baseline 30 s, export 1.0 s, report 9.0 s)"):
        assert phrase in md, phrase
    assert md.index("## Run") < md.index("## Ledger integrity")


def test_a_changed_preset_is_named_with_its_changes(tmp_path):
    rd = _no_dp_run(tmp_path / "r", changes=("federation.rounds=3", "seed=7"))
    run = render_report(rd)["run"]
    assert run["preset"] == "demo" and run["preset_changes"] == ["federation.rounds", "seed"]


def test_no_dp_text_matches_the_mode(tmp_path):
    rd = _no_dp_run(tmp_path / "r")
    render_report(rd)
    md = (rd / "report" / "report.md").read_text()
    assert "hidden by noise" not in md and "Two ε are kept" not in md
    assert "differential privacy was off" in md and "no formal guarantee" in md
    assert "| delta |" not in md and "δ =" not in md and "noise from the OS CSPRNG" not in md


def test_recorded_warnings_are_shown_loudly(tmp_path):
    w = "perplexity above start: eval perplexity 310 in round 2 is above its starting value 300; ..."
    rd = _no_dp_run(tmp_path / "r", ppl=(300.0, 310.0, 320.0), warnings={2: [w], 3: [w.replace("round 2", "round 3")]})
    rep = render_report(rd)
    md = (rd / "report" / "report.md").read_text()
    assert md.index("## Warnings raised during the run") < md.index("## Ledger integrity")
    assert "THIS RUN WENT WRONG" in md and "| perplexity above start | round 2, round 3 |" in md
    rounds = [x for x in rep["warnings"] if x["where"] != "run"]   # "run": 3 of the demo's 16 planned rounds ran
    assert [x["where"] for x in rounds] == ["round 2", "round 3"] and all(x["recorded"] for x in rounds)


def test_warnings_are_recomputed_for_rows_that_carry_none(tmp_path):
    rd = _no_dp_run(tmp_path / "r", ppl=(1.2e14, 3e14, 5e14))  # a DP-wrecked model, rows without "warnings"
    rep = render_report(rd)
    kinds = {x["warning"].split(": ")[0] for x in rep["warnings"]}
    # 3 rounds ran of the demo's 16 planned: the run as a whole is flagged too
    assert kinds == {"perplexity above start", "perplexity above unigram", "rounds without an update"}
    assert "Found by re-checking the metrics" in (rd / "report" / "report.md").read_text()
    ok = _no_dp_run(tmp_path / "ok", changes=("federation.rounds=3",))
    assert not any("Warnings" in t for t, _ in render_report(ok)["sections"])


def test_plots_use_the_round_field_as_is(tmp_path, monkeypatch):
    import matplotlib.axes

    seen = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: (seen.append(list(a[0])), real(self, *a, **k))[1])
    render_report(_no_dp_run(tmp_path / "r"))
    assert [1, 2, 3] in seen  # clip fraction and ε over rounds 1..3, never shifted by one
    assert not any(xs == [2, 3, 4] for xs in seen)


def test_every_json_file_the_report_writes_is_strict(tmp_path):
    rd = _no_dp_run(tmp_path / "r", ppl=(float("inf"), 300.0, 150.0))
    (rd / "summary.json").write_text(json.dumps({"fed_eval_ppl": "inf", "epsilon": "inf", "unigram_eval_ppl": 695.2}))
    render_report(rd)
    rep = strict((rd / "report" / "report.json").read_text())
    assert rep["run"]["fed_eval_ppl"] == "inf"


def test_a_run_written_before_strict_json_is_still_readable(tmp_path):
    rd = _no_dp_run(tmp_path / "old")
    (rd / "summary.json").write_text('{"epsilon": Infinity, "fed_eval_ppl": 150.0, "unigram_eval_ppl": 695.2}')
    assert render_report(rd)["run"]["fed_eval_ppl"] == 150.0
    assert "Infinity" not in (rd / "report" / "report.json").read_text()
