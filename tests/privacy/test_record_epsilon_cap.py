"""train.dp_sgd.epsilon_cap (protocols/dp.md §10.5): a holder's own bound on its record-level ε.

The coordinator chooses each holder's batch size, local steps and rounds (federation.holder_batch_sizes /
holder_local_steps, or a network coordinator's Welcome), so without a cap it chooses the holder's record-level ε.
With one, the holder refuses, before it trains, every round whose DP-SGD steps would take it past the cap; the
pre-flight check states every holder at its own batch and steps (the worst one), not the configured default's.
"""

from __future__ import annotations

import json
import math

import pytest

from securefed.privacy.holder_ledger import record_level_epsilon

SKEW = ["federation.rounds=4", "train.dp_sgd.enabled=true", "train.dp_sgd.noise_multiplier=1.0",
        "train.dp_sgd.delta=1.0e-4", "federation.holder_local_steps=[2,2,2,8]"]


def _sets(over):
    return [a for o in over for a in ("--set", o)]


def _ledger(run, h):
    return [json.loads(x) for x in (run / "holders" / str(h) / "ledger.jsonl").read_text().splitlines()]


def test_a_holder_refuses_before_training_every_round_that_would_pass_its_record_level_cap(tiny_run, tmp_path, capsys):
    """Holder 4 is given 4x the others' local steps: with a cap of 0.8 it releases rounds 1-2 (ε 0.769, 0.798) and
    refuses 3-4 (0.819 > 0.8) at the offer, so no step past the cap is ever trained; the refusal is signed in its
    own ledger, verified and explained in the report; the other holders, under the cap, release every round."""
    from securefed.cli import main

    run = tmp_path / "run"
    assert main(["simulate", "--out", str(run)] + _sets(tiny_run + SKEW + ["train.dp_sgd.epsilon_cap=0.8"])) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "the largest record-level ε of 4 holders is holder-4's" in text
    assert "train.dp_sgd.epsilon_cap = 0.8 will be reached: holder-4 refuses its 3rd round" in text
    own = _ledger(run, 4)
    released = [e for e in own if e["status"] == "released"]
    refused = [e for e in own if e["status"] == "refused"]
    assert [e["round"] for e in released] == [1, 2] and [e["round"] for e in refused] == [3, 4]
    for e in released:   # what it signed is what it spent, and never past the cap
        rl = e["record_level"]
        assert rl["epsilon"] == pytest.approx(record_level_epsilon(rl["history"], rl["delta"])) and rl["epsilon"] <= 0.8
    assert released[-1]["record_level"]["steps"] == 16          # nothing trained past round 2
    assert all("dp_sgd.epsilon_cap 0.8" in e["reason"] for e in refused)
    for h in (1, 2, 3):
        assert [e["round"] for e in _ledger(run, h) if e["status"] == "released"] == [1, 2, 3, 4]
    assert main(["verify", str(run)]) == 0
    capsys.readouterr()
    report = (run / "report" / "report.md").read_text()
    assert "holder-4 refused round 3 and sent nothing" in report and "dp_sgd.epsilon_cap 0.8" in report


def test_the_pre_flight_states_the_worst_holder_at_its_own_batch_and_steps():
    """The check used train.local_steps and train.batch_size for every holder (an audit of stop 39: holder 4 at 4x
    the steps read ε 0.779 before the run and spent 0.837): each holder is now checked at its own, and the stated ε
    is the largest, at least the one it will spend."""
    from securefed.federation.coordinator import privacy_preflight
    from securefed.runtime.config import load_run_config

    base = ("train.dp_sgd.enabled=true", "train.dp_sgd.delta=1.0e-4", "federation.rounds=4", "train.local_steps=2",
            "train.batch_size=4", "federation.n_holders=4")
    even, skewed = [375] * 4, [375, 300, 375, 375]
    for over, sizes, worst, steps, batch in ((("federation.holder_local_steps=[2,2,2,8]",), even, 4, 32, 4),
                                             (("federation.holder_batch_sizes=[4,4,16,4]",), even, 3, 8, 16),
                                             ((), skewed, 2, 8, 4)):
        cfg = load_run_config(preset="demo", overrides=base + over)
        rec = privacy_preflight(cfg, dim=10_000, records=sizes).record_level
        assert (rec["holder"], rec["steps"], rec["batch_size"], rec["holders"]) == (worst, steps, batch, 4)
        spent = record_level_epsilon([[1.0, batch / sizes[worst - 1], steps]], 1e-4)
        assert rec["epsilon_planned"] >= spent - 1e-9 and rec["epsilon_planned"] == pytest.approx(spent, rel=0.02)


def test_hidden_batches_are_stated_per_holder_where_their_batch_sizes_differ():
    from securefed.federation.coordinator import privacy_preflight
    from securefed.runtime.config import load_run_config

    cfg = load_run_config(preset="demo", overrides=("train.dp_sgd.enabled=true", "train.dp_sgd.clipping=ghost",
                                                    "train.dp_sgd.delta=1.0e-4", "train.dp_sgd.hide_batch_size=true",
                                                    "federation.n_holders=3", "federation.holder_batch_sizes=[8,64,8]"))
    pf = privacy_preflight(cfg, dim=10_000, records=[900, 1000, 900])
    by = pf.record_level["padded_rows_by_holder"]
    assert by == {"1": cfg.train.dp_sgd.padded_batch(8), "2": cfg.train.dp_sgd.padded_batch(64),
                  "3": cfg.train.dp_sgd.padded_batch(8)} and by["1"] < by["2"]
    assert f"holder-1 {by['1']}, holder-2 {by['2']}, holder-3 {by['3']}" in "\n".join(pf.lines())


def test_a_cap_below_one_rounds_record_level_cost_is_one_clear_error(tiny_run, tmp_path, capsys):
    from securefed.cli import main

    run = tmp_path / "run"
    rc = main(["simulate", "--out", str(run)] + _sets(tiny_run + SKEW + ["train.dp_sgd.epsilon_cap=0.5"]))
    err = capsys.readouterr().err
    assert rc != 0 and "train.dp_sgd.epsilon_cap = 0.5 is below the record-level cost of one round" in err
    assert "it would refuse every round" in err and not (run / "holders").exists()


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, True, "8"])
def test_a_cap_that_is_no_number_is_refused_at_load(bad):
    from securefed.training.config import DPSGDConfig

    with pytest.raises(ValueError, match="epsilon_cap"):
        DPSGDConfig(enabled=True, epsilon_cap=bad)
    assert DPSGDConfig(enabled=True, epsilon_cap=8).epsilon_cap == 8


def test_with_no_cap_the_holder_says_who_decides_its_record_level_epsilon(tiny_run, tmp_path, caplog):
    import logging

    from securefed.cli import main

    caplog.set_level(logging.WARNING, logger="securefed.holder")
    run = tmp_path / "run"
    assert main(["simulate", "--out", str(run)] + _sets(tiny_run + SKEW[1:4] + ["federation.rounds=1"])) == 0
    said = [r.getMessage() for r in caplog.records if "no dp_sgd.epsilon_cap" in r.getMessage()]
    assert len(said) == 4 and "the coordinator's batch size, local steps and rounds decide" in said[0]
    # the ε it states is its signed one after the run's one round, rounded up (epsilon_text), never to nearest below it
    # ("%.4g": 1.018 logged for the 1.01849 a holder then signed, a compliance review)
    import json
    import re

    from securefed.privacy.accountant import epsilon_text

    for msg in said:
        h = int(re.match(r"holder (\d+):", msg).group(1))
        signed = [json.loads(line) for line in (run / "holders" / str(h) / "ledger.jsonl").read_text().splitlines()]
        eps = [e["record_level"]["epsilon"] for e in signed if e.get("record_level")][-1]
        assert f"record-level epsilon ({epsilon_text(eps)} at delta" in msg


@pytest.mark.parametrize("sigma, q, cap, refuses", [(6.0, 0.0107, 0.06, None),   # every round refused: an error
                                                    (1.0, 0.02, 0.9, 2),          # round 1 runs (0.892), round 2 not
                                                    (4.0, 0.01, 0.0672, 4)])      # it stated 0.0286 after 6: "not reached"
def test_the_pre_flight_prices_record_level_steps_with_the_holders_own_accountant(sigma, q, cap, refuses):
    """The check priced DP-SGD steps on its own RDP order grid, the holder (and verify) on Opacus': at σ 6 it stated
    ε 0.0114 for one round and "cap 0.06 not reached by the plan" while every holder, at 0.0659, refused every round; at q 0.02 it
    stated 0.909 for one round and refused the run (cap 0.9) that the holders would run a round of (0.892). It
    states what the holder signs and names the round the holder refuses (dp.md §10.5)."""
    from securefed.privacy.config import DPConfig
    from securefed.privacy.preflight import PreflightError, RecordLevel, preflight

    k, joins, delta = 2, 6, 1e-4
    spent = [record_level_epsilon([[sigma, q, k * j]], delta) for j in range(1, joins + 1)]
    holder_refuses = next((j for j in range(1, joins + 1) if spent[j - 1] > cap), None)
    rec = RecordLevel(sigma, 1.0, delta, 4, 400, k * joins, sample_rate=q, epsilon_cap=cap, rounds_steps=k, holder=1)
    kw = dict(population=4, cohort_size=4, rounds=joins, dim=10_000, sampling="fixed", force=True)
    if refuses is None:
        assert holder_refuses == 1
        with pytest.raises(PreflightError, match="below the record-level cost of one round"):
            preflight(DPConfig(), record_level=rec, **kw)
        return
    got = preflight(DPConfig(), record_level=rec, **kw).record_level
    assert got["epsilon_planned"] == pytest.approx(spent[-1], rel=1e-9)
    assert got["cap_round"] == holder_refuses == refuses


def test_the_pre_flight_projects_a_sampled_holder_over_every_round_it_can_join():
    """PV-33: with cohorts of 3 of 4 holders over 8 rounds the check priced each holder at the expected ⌈8·3/4⌉ = 6
    rounds (ε 1.2551 for holder 4, σ 1, q 16/850, 6 steps), but a holder drawn into every cohort trains 8 rounds and
    spends 1.2795 (dp-accounting 0.6.0 RdpAccountant, Poisson-sampled Gaussian, 8 steps, δ 1e-5) with no cap to stop
    it: an audit's run had holder 2 in all 8 cohorts. The check now states the most a holder can spend."""
    from securefed.federation.coordinator import privacy_preflight
    from securefed.runtime.config import load_run_config

    cfg = load_run_config(preset="dp-sgd", overrides=("federation.rounds=8", "train.local_steps=1",
                                                      "federation.clients_per_round=3"))
    pf = privacy_preflight(cfg, dim=10_000, records=[1214, 1203, 1014, 850])
    rec = pf.record_level
    every = 1.27951543100789            # independent: dp-accounting, [[1.0, 16/850, 8]] at δ 1e-5
    assert (rec["holder"], rec["steps"]) == (4, 8)
    assert rec["epsilon_planned"] >= every and rec["epsilon_planned"] == pytest.approx(every, rel=0.01)
    assert "if it is in all 8 cohorts" in "\n".join(pf.lines())
