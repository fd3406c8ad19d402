"""The coordinator's privacy write-ahead log around the moment a round's sum is revealed (federation.md §6).

An audit killed the coordinator after the holders had sent their unmask shares (the sum revealed and applied) but
before the old WAL checkpoint, which came after the outer step and evaluation: the resumed run recorded the round
as aborted, its server ledger had no entry for it (ε 6.77 against 7.99 uninterrupted) and `verify` passed. Now the
WAL is written before any unmask request (before the CKKS decryption, once plain updates are in): a crash after
the reveal completes the round's accounting on restart and discards its update; and `verify` fails a run where a
holder settled a round the server ledger lacks.
"""

import json

import pytest

from securefed.federation.simulation import Simulation
from securefed.privacy.ledger import read_ledger
from securefed.runtime.config import load_run_config
from securefed.training.outer import OuterOptimizer


class _Crash(Exception):
    pass


@pytest.mark.parametrize("mode", ["secagg", "plain", "ckks+secagg"])
def test_a_crash_after_the_sum_is_revealed_keeps_the_rounds_spend(tmp_path, tiny_run, monkeypatch, mode):
    over = tiny_run + ["federation.rounds=3", f"aggregation.mode={mode}", "privacy.mode=central",
                       f"aggregation.ckks.enabled={str(mode == 'ckks+secagg').lower()}",
                       "privacy.mechanism=gaussian", "privacy.noise_multiplier=1.0", "privacy.clip=1.0",
                       "federation.weighting=uniform", "privacy.force_unlearnable=true"]
    cfg = load_run_config(overrides=over)
    run = tmp_path / "run"
    real = OuterOptimizer.step
    calls = []

    def step(self, *a, **k):            # the sum of round 2 is decoded and about to move the model: crash here
        calls.append(1)
        if len(calls) == 2:
            raise _Crash
        return real(self, *a, **k)
    monkeypatch.setattr(OuterOptimizer, "step", step)
    with pytest.raises(_Crash):
        Simulation(cfg, run, progress=False, threads_per_holder=1).run()
    monkeypatch.setattr(OuterOptimizer, "step", real)
    Simulation(cfg, run, resume=True, progress=False, threads_per_holder=1).run()
    ledger = read_ledger(run / "privacy" / "ledger.jsonl")
    assert [e["round"] for e in ledger] == [1, 2, 3]                  # round 2's spend is in the ledger, once
    rows = {r["round"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert "sum was revealed" in rows[2]["aborted"]                   # its update was discarded, and said so
    assert (rows[2]["epsilon"], rows[2]["delta"]) == (ledger[1]["epsilon"], ledger[1]["delta"])   # and its charge
    from securefed.cli import main
    assert main(["verify", str(run)]) == 0


def test_a_crash_after_a_ckks_sum_with_a_holder_lost_before_its_masked_input_verifies(tmp_path, tiny_run, monkeypatch):
    """ckks+secagg: holder 1 (seeded dropouts) is in the CKKS part of round 1's sum but not the masked part (A \\ B).
    A crash after the reveal completes the round from the WAL with A charged and n_masked = |B|, the count the
    others settled at — so the resumed run verifies."""
    over = tiny_run + ["federation.rounds=2", "federation.n_holders=5", "data.max_sources=5",
                       "federation.weighting=uniform", "aggregation.mode=ckks+secagg", "aggregation.ckks.enabled=true",
                       "privacy.mode=central", "privacy.mechanism=gaussian", "privacy.noise_multiplier=1.0",
                       "privacy.clip=1.0", "privacy.force_unlearnable=true", "federation.dropout_rate=0.4"]
    cfg = load_run_config(overrides=over)
    run = tmp_path / "run"
    real = OuterOptimizer.step

    def step(self, *a, **k):            # round 1's sum is revealed and about to move the model
        raise _Crash
    monkeypatch.setattr(OuterOptimizer, "step", step)
    with pytest.raises(_Crash):
        Simulation(cfg, run, progress=False, threads_per_holder=1).run()
    monkeypatch.setattr(OuterOptimizer, "step", real)
    Simulation(cfg, run, resume=True, progress=False, threads_per_holder=1).run()
    (first, *_) = read_ledger(run / "privacy" / "ledger.jsonl")
    assert first["round"] == 1 and 1 in first["survivors"] and first["n_masked"] == first["n_survivors"] - 1
    from securefed.cli import main
    assert main(["verify", str(run)]) == 0


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_around_the_ledger_append_leaves_no_metrics_row_without_its_epsilon(tmp_path, tiny_run, monkeypatch,
                                                                                   when):
    """A crash review killed the coordinator after the checkpoint that holds round 1's metrics row (and its pending
    accounting) but before the row got its ε and δ from the ledger entry — before the append (the restart completes
    the accounting) or after it (the entry is there): either way the row stayed without them in metrics.jsonl. The
    restart fills them (and adaptive clipping's noised fraction) from the server entry, as the uninterrupted round
    would have."""
    from securefed.privacy.round import RoundPrivacy

    over = tiny_run + ["federation.rounds=2", "privacy.mode=central", "privacy.mechanism=gaussian",
                       "privacy.noise_multiplier=1.0", "privacy.clip=1.0", "privacy.adaptive_clip=true",
                       "federation.weighting=uniform", "privacy.force_unlearnable=true"]
    cfg = load_run_config(overrides=over)
    run = tmp_path / "run"
    real = RoundPrivacy.finish

    def finish(self, **kw):             # round 1's accounting, as run_round (not a restart's completion) calls it
        crash = self.round_index == 1 and not kw.get("completing")
        if crash and when == "before":
            raise _Crash
        entry = real(self, **kw)
        if crash:
            raise _Crash
        return entry
    monkeypatch.setattr(RoundPrivacy, "finish", finish)
    with pytest.raises(_Crash):
        Simulation(cfg, run, progress=False, threads_per_holder=1).run()
    assert len(read_ledger(run / "privacy" / "ledger.jsonl")) == (0 if when == "before" else 1)
    monkeypatch.setattr(RoundPrivacy, "finish", real)
    Simulation(cfg, run, resume=True, progress=False, threads_per_holder=1).run()
    ledger = {e["round"]: e for e in read_ledger(run / "privacy" / "ledger.jsonl")}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == sorted(ledger) == [1, 2] and not rows[0].get("aborted")
    for row in rows:
        e = ledger[row["round"]]
        assert (row["epsilon"], row["delta"], row["noisy_clip_fraction"]) == \
               (e["epsilon"], e["delta"], e["noisy_within_clip_fraction"])
    from securefed.cli import main
    assert main(["verify", str(run)]) == 0


def test_verify_notes_a_metrics_row_without_the_epsilon_the_ledger_charged(tmp_path, tiny_run, capsys):
    """Runs left by earlier versions keep such rows: verify says so (a note: nothing false is stated), and still
    fails a row whose ε differs from the ledger's."""
    from securefed.cli import main

    over = tiny_run + ["federation.rounds=2", "privacy.mode=central", "privacy.mechanism=gaussian",
                       "privacy.noise_multiplier=1.0", "privacy.clip=1.0", "federation.weighting=uniform",
                       "privacy.force_unlearnable=true"]
    run = tmp_path / "run"
    Simulation(load_run_config(overrides=over), run, progress=False, threads_per_holder=1).run()
    assert main(["verify", str(run)]) == 0 and "metrics.jsonl" not in capsys.readouterr().out
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    eps = rows[0].pop("epsilon")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["verify", str(run)]) == 0
    assert f"note: metrics.jsonl states no epsilon after round 1, which the server ledger charged (epsilon {eps:.6g} " \
           "after round 1): the ledger is the record" in capsys.readouterr().out
    rows[0]["epsilon"] = eps * 2
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["verify", str(run)]) == 1


def test_every_resume_is_recorded_with_what_it_cost_in_the_summary_and_the_report(tmp_path, tiny_run, monkeypatch):
    """A compliance review: neither summary.json nor the report said a run had been stopped and resumed, so a signer
    could not tell a run that ran through from one resumed twice. The coordinator now records each resume in its
    checkpoint (``resumes``: the round it went on at, the round in flight if any), summary.json carries it, and the
    report's Run table states it with its cost. Here: stopped cleanly after round 1 (lossless), then crashed in round
    2 after its sum was revealed (aborted, charged), then run to its end."""
    over = tiny_run + ["federation.rounds=3", "privacy.mode=central", "privacy.mechanism=gaussian",
                       "privacy.noise_multiplier=1.0", "privacy.clip=1.0", "federation.weighting=uniform",
                       "privacy.force_unlearnable=true"]
    cfg = load_run_config(overrides=over)
    run = tmp_path / "run"
    assert Simulation(cfg, run, progress=False, threads_per_holder=1, stop_after_round=1).run() == {"stopped_after_round": 1}
    real = OuterOptimizer.step

    def step(self, *a, **k):            # round 2's sum is decoded and about to move the model: crash here
        raise _Crash
    monkeypatch.setattr(OuterOptimizer, "step", step)
    with pytest.raises(_Crash):
        Simulation(cfg, run, resume=True, progress=False, threads_per_holder=1).run()
    monkeypatch.setattr(OuterOptimizer, "step", real)
    Simulation(cfg, run, resume=True, progress=False, threads_per_holder=1).run()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumes"] == [{"resumed_at_round": 2, "in_flight_round": None},
                                  {"resumed_at_round": 3, "in_flight_round": 2}]
    md = (run / "report" / "report.md").read_text()
    said = ("| stopped and resumed | yes: stopped and resumed from its checkpoint 2 times, at round 2 (nothing lost: no "
            "round aborted, lost or run twice); at round 3 (round 2 was in flight when it stopped: aborted, its update "
            "not in the model; it is charged in the federation's ε). Every privacy ledger was verified and continued on "
            "each resume, nothing counted twice (protocols/dp.md §8) |")
    assert said in md
    assert json.loads((run / "report" / "report.json").read_text())["run"]["resumes"].startswith("yes: stopped and resumed")
    from securefed.report.rounds import resume_words

    assert resume_words({"summary": {"resumes": []}, "metrics": [], "ledger": {"entries": []}}).startswith("no: it ran")
    assert resume_words({"summary": {"rounds": 3}, "metrics": [], "ledger": {"entries": []}}).startswith("not recorded")


def test_the_report_counts_a_lost_round_once_and_says_a_run_without_dp_charges_nothing():
    """A review: summary.json of an older coordinator declared round 1 lost on two resumes ([1, 1], then [1, 2] with
    round 2 aborted), and the report added them up (2 lost); and in a run without DP a round aborted on a resume read
    "nothing was charged for it", as if a budget existed. The report now counts each lost round once, and says a
    run without DP charges no round."""
    from securefed.report.rounds import lost_rounds, resume_words

    none = {"event": {"mechanism": "none"}}
    run = {"summary": {"rounds": 1, "resumes": [{"resumed_at_round": 3, "in_flight_round": 2},
                                                {"resumed_at_round": 4, "in_flight_round": 3}],
                       "model_restarts": [{"resumed_at_round": 3, "model_after_round": 0, "lost_rounds": [1, 1]},
                                          {"resumed_at_round": 4, "model_after_round": 0, "lost_rounds": [1, 2]}]},
           "metrics": [{"round": 1}, {"round": 2, "aborted": "restarted"}, {"round": 3, "aborted": "restarted"},
                       {"round": 4}],
           "ledger": {"entries": [dict(none, round=r) for r in (1, 2, 3, 4)]}}
    assert [lr["rounds"] for lr in lost_rounds(run)] == [[1], []]
    said = resume_words(run)
    assert said.count("the run has no DP, so no round is charged") == 2 and "nothing was charged" not in said
    assert said.count("were lost") == 1 and "the updates of round 1 were lost" in said

