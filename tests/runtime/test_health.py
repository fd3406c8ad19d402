"""RunHealth warns while a run goes wrong: non-finite loss, perplexity above its start or above unigram."""

import math

import pytest

from securefed.runtime.health import KINDS, RunHealth, warning_kind


def kinds(ws):
    return [warning_kind(w) for w in ws]


def test_a_healthy_run_raises_nothing():
    h = RunHealth(unigram_ppl=695.2)
    for r, ppl in enumerate([900.0, 400.0, 200.0, 150.0], start=1):
        assert h.check({"round": r, "train_loss": 5.0, "eval_loss": math.log(ppl), "eval_ppl": ppl}) == []
    assert h.check({"round": 5, "train_loss": 4.9}) == []  # no eval this round


def test_perplexity_rising_above_its_start():
    h = RunHealth(unigram_ppl=1e6)
    assert h.check({"round": 1, "eval_ppl": 300.0}) == []  # the first evaluation sets the start
    ws = h.check({"round": 2, "eval_ppl": 310.0})
    assert kinds(ws) == ["perplexity above start"] and "310 in round 2" in ws[0] and "300" in ws[0]
    assert RunHealth(start_ppl=4096.0).check({"round": 1, "eval_ppl": 5000.0}) != []  # given start: checked at once


def test_dp_wrecked_model_warns_while_it_runs():
    # the README's DP example: perplexity 1.2e14 against a unigram perplexity of 695
    h = RunHealth(unigram_ppl=695.2, rounds_planned=4)
    assert h.check({"round": 1, "train_loss": 9.0, "eval_ppl": 1.2e14}) == []  # a first evaluation may be high
    ws = h.check({"round": 2, "eval_ppl": 3e14})
    assert kinds(ws) == ["perplexity above start", "perplexity above unigram"]
    assert "3e+14 in round 2" in ws[1] and "695.2" in ws[1] and "not improving" in ws[1]
    # with the untrained model's perplexity as the start (about the vocabulary size) it is caught at once
    assert kinds(RunHealth(unigram_ppl=695.2, start_ppl=4100.0).check({"round": 1, "eval_ppl": 1.2e14})) == [
        "perplexity above start"]


def test_above_unigram_when_it_rose_back_or_at_the_last_round():
    h = RunHealth(unigram_ppl=100.0, rounds_planned=5)
    assert [kinds(h.check({"round": r, "eval_ppl": p})) for r, p in ((1, 400.0), (2, 90.0), (3, 80.0))] == [[], [], []]
    ws = h.check({"round": 4, "eval_ppl": 110.0})
    assert "perplexity above unigram" in kinds(ws) and "was below it before" in ws[-1]
    late = RunHealth(unigram_ppl=100.0, rounds_planned=2)
    assert late.check({"round": 1, "eval_ppl": 400.0}) == []
    ws = late.check({"round": 2, "eval_ppl": 150.0})  # still improving, but the run is over
    assert kinds(ws) == ["perplexity above unigram"] and "last planned round" in ws[0]


@pytest.mark.parametrize("row", [
    {"round": 3, "train_loss": float("nan")},
    {"round": 3, "train_loss": "nan"},          # as strict JSON writes it
    {"round": 3, "eval_loss": float("inf"), "eval_ppl": float("inf")},
    {"step": 40, "train_loss": "-inf"},
])
def test_non_finite_loss(row):
    ws = RunHealth(unigram_ppl=100.0, start_ppl=50.0).check(row)
    assert kinds(ws)[0] == "non-finite loss" and ("round 3" in ws[0] or "step 40" in ws[0])
    assert all(k in KINDS for k in kinds(ws))


def test_bad_reference_values_are_refused():
    with pytest.raises(ValueError, match="unigram_ppl"):
        RunHealth(unigram_ppl=0)
    with pytest.raises(ValueError, match="start_ppl"):
        RunHealth(start_ppl="big")
