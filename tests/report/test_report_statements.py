"""What the report and the console tell a compliance officer, statement by statement (audit C): each test
renders a signed run (tests/report/signed_run.py) or calls the wording function, and asserts the exact sentence."""

import json
import math

import pytest

from securefed.cli import main
from securefed.privacy import DPConfig
from securefed.privacy.accountant import epsilon_text
from securefed.privacy.holder_ledger import record_level_entry
from securefed.privacy.preflight import preflight
from securefed.report import privacy_checks, render_report, rounds, text
from securefed.report.privacy_checks import verify_run
from securefed.runtime.health import RunHealth, format_ppl, update_shortfall
from tests.report.signed_run import make_signed_run

DP_SGD = {"train": {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5}}}


def _md(rd):
    return (rd / "report" / "report.md").read_text()


# ------------------------------------------------------------------------------------------ H1
def test_record_level_dp_sgd_is_stated_per_holder_and_never_called_no_noise(tmp_path, capsys):
    rd = tmp_path / "run"
    make_signed_run(rd, cfg=DPConfig(clip=1.0), own_cap=None, dp_sgd_steps=2, config=DP_SGD)   # holder-level DP off
    assert main(["report", str(rd)]) == 0
    md = _md(rd)
    # no holder-level DP: report.json states no holder-level δ or relation beside ε = inf (the ledger carries the
    # configured ones; an accountant review found them repeated there), as summary.json
    facts = json.loads((rd / "report" / "report.json").read_text())["facts"]
    assert facts["epsilon"] == "inf" and facts["delta"] is None and facts["neighbouring_relation"] is None
    # holder h signs σ = 1, q = 0.01·h, 2 steps per release, 4 releases: 8 steps (signed_run.py)
    eps = {h: record_level_entry([[1.0, 0.01 * h, 8]], 1e-5)["epsilon"] for h in (1, 2, 3, 4)}
    assert "Record-level guarantee (DP-SGD), separate from the holder-level one:" in md
    assert "| holder | record-level ε (cumulative, per record) | δ | DP-SGD steps | unit (one record) |" in md
    for h, e in eps.items():   # shown rounded up (epsilon_text): never below the bound (1.02638 → 1.027)
        shown = f"{math.ceil(e * 1000) / 1000:.4g}" if e < 10 else None
        assert f"| holder-{h} | {shown} | 1e-05 | 8 | sequence |" in md and float(shown) >= e
    assert "no noise is added (ε = ∞)" not in md and "What protects the individual updates is secure aggregation alone" not in md
    assert ("No holder-level differential privacy: updates are clipped and quantized, but no holder-level noise is added "
            "(holder-level ε = ∞).") in md
    assert "but no noise is added" not in md and "No DP noise" not in md
    assert "<th>record-level ε (cumulative, per record)</th>" in (rd / "report" / "report.html").read_text()
    assert ("Limit (protocols/dp.md §10): torch's generators are not CSPRNGs and the noise is floating point") in md
    rep = json.loads((rd / "report" / "report.json").read_text())
    assert rep["facts"]["record_level"]["3"] == {"epsilon": eps[3], "delta": 1e-5, "steps": 8, "unit": "sequence",
                                                     "padded_rows": None, "unit_field": None, "sample_rate": None}
    assert rep["verification"]["record_level"]["3"]["steps"] == 8
    out = capsys.readouterr().out
    assert "privacy: holder-level epsilon=inf (holder-level differential privacy off)" in out
    assert f"privacy: holder 2 record-level epsilon={eps[2]:.6g} delta=1e-05 after 8 DP-SGD steps" in out


def test_record_level_epsilon_is_withheld_when_the_records_do_not_verify(tmp_path):
    rd = tmp_path / "run"
    make_signed_run(rd, cfg=DPConfig(clip=1.0), own_cap=None, dp_sgd_steps=2, config=DP_SGD)
    (rd / "privacy" / "end.json").unlink()   # no signed end-of-run record: not verified (dp.md §7.4)
    rep = render_report(rd)
    md = _md(rd)
    assert ("Record-level guarantee (DP-SGD): no record-level ε is stated: the privacy records do not verify "
            "(see Ledger integrity).") in md
    assert "| DP-SGD steps |" not in md and rep["facts"]["record_level"] is None and rep["verification"]["record_level"] == {}


# ------------------------------------------------------------------------------------------ H2
def test_holder_budgets_show_the_own_ledger_the_servers_view_own_caps_and_unsampled_holders(tmp_path):
    rd = tmp_path / "run"
    # holder 4 releases in round 2 and drops out: its own ledger keeps the release, the server's view does not;
    # the server's session has no holder caps (as the coordinator runs it): caps only in the own ledgers
    make_signed_run(rd, rounds=3, drop_last_holder_at=2, server_caps=False)
    (rd / "holders" / "5").mkdir()   # holder 5's state directory is here (a simulation's): no ledger, nothing released
    v = verify_run(rd)
    own, view = v.holder_own_epsilon[4], v.holder_view_epsilon[4]
    assert own > view
    render_report(rd)
    md = _md(rd)
    own_s, view_s = epsilon_text(own), epsilon_text(view)   # shown rounded up: never below the bound
    assert float(own_s) >= own and float(view_s) >= view
    assert ("| holder | holder-level ε (own signed ledger) | holder-level ε (server's view) | cap (own ledger) | "
            "rounds included | refused | dropped |") in md
    assert f"| holder-4 | {own_s} | {view_s} | 20 | 2 | 0 | 1 |" in md
    # on the roster (keys.json), never in a cohort: holder 5's directory is here, holder 6's is not
    assert "| holder-5 | 0 (no own ledger: it released nothing) | 0 (never in a cohort) | — | 0 | 0 | 0 |" in md
    assert "| holder-6 | not in this directory (securefed verify --holder-ledger) | 0 (never in a cohort) | — | 0 | 0 | 0 |" in md
    worst = max(v.holder_own_epsilon.values())
    assert (f"The largest ε in any holder's own signed ledger (no amplification) is {epsilon_text(worst)} (the own ledgers of "
            "holder-6 are not in this directory).") in md
    assert "holder-4 has an ε cap of 20:" in md and f"(ε spent, own ledger: {own_s})" in md


# ------------------------------------------------------------------------------------------ H5
def test_deterministic_secrets_are_said_to_be_not_private(tmp_path, capsys):
    rd = tmp_path / "run"
    make_signed_run(rd, config={"deterministic_secrets": True, "seed": 7})
    assert main(["report", str(rd)]) == 0
    md = _md(rd)
    assert "noise from the OS CSPRNG" not in md
    assert ("| implementation | NOT private: for tests: every noise sample and mask is derived from the configuration's "
            "seed (7) (deterministic_secrets);") in md
    assert ("WARNING: deterministic secrets: NOT private: for tests — every noise sample, mask and DP-SGD seed of this "
            "run is derived from the configuration's seed (7, in config.yaml); whoever reads it can recompute them all.") in md
    assert ("securefed report: WARNING: NOT private: for tests — deterministic_secrets derives every noise sample and "
            "mask from the configuration's seed (7)") in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ M1
def test_a_run_whose_every_round_aborted_says_so_prominently(tmp_path):
    rd = tmp_path / "run"
    make_signed_run(rd, abort_rounds=(1, 2, 3, 4))
    rep = render_report(rd)
    md = _md(rd)
    assert ("WARNING: rounds without an update: only 0 of 4 planned rounds updated the model (4 aborted: rounds 1, 2, 3, "
            "4); the model is not what the configuration planned.") in md
    assert md.index("WARNING: rounds without an update") < md.index("## Ledger integrity")
    assert "| 3 | only 0 holders sent masked inputs; t_min is 3 | no |" in md   # distributed: an empty round costs nothing
    assert "| rounds that updated the model / planned | 0 / 4 (4 aborted: see Rounds that did not update the model) |" in md
    assert rep["warnings"][0]["where"] == "run"


def test_central_mode_says_aborted_rounds_are_charged(tmp_path):
    rd = tmp_path / "run"
    make_signed_run(rd, cfg=DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0, clip=1.0, delta=1e-3),
                    abort_rounds=(2,))
    render_report(rd)
    md = _md(rd)
    assert ("Aborted round 2 did not update the model but is charged in this ε. In central mode the server ledger "
            "charges every round it records, aborted ones included (an empty round is charged like any other: "
            "protocols/dp.md §6.4).") in md
    assert "| 2 | only 0 holders sent masked inputs; t_min is 3 | yes |" in md


def test_health_warns_of_an_aborted_round_and_of_a_shortfall():
    assert RunHealth().check({"round": 2, "aborted": "too few"}) == ["round aborted: round 2 did not update the model: too few"]
    rows = [{"round": 1}, {"round": 2, "aborted": "x"}]
    assert update_shortfall(rows, 3) == ("rounds without an update: only 1 of 3 planned rounds updated the model "
                                         "(1 aborted: round 2; 1 never run); the model is not what the configuration planned")
    assert update_shortfall([{"round": 1}], 1) is None


# ------------------------------------------------------------------------------------------ M2
def test_an_overflowed_perplexity_is_shown_as_overflow(tmp_path):
    assert format_ppl(1.0142320547350045e304, 107100.0) == "overflow (loss 1.071e+05)"
    assert format_ppl(float("nan"), float("nan")) == "overflow (loss nan)"
    assert format_ppl(148.0) == "148" and format_ppl(float("inf")) == "overflow (loss not recorded)"
    rd = tmp_path / "run"
    make_signed_run(rd)
    rows = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.update(eval_ppl=1.0142320547350045e304, eval_loss=107100.0)
    rows[1]["warnings"] = ["perplexity above start: eval perplexity 1.014e+304 in round 2 is above its starting value 512.7"]
    (rd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = json.loads((rd / "summary.json").read_text())
    (rd / "summary.json").write_text(json.dumps({**summary, "fed_eval_ppl": 1.0142320547350045e304}))
    render_report(rd)
    md = _md(rd)
    assert "| federated eval perplexity | overflow (loss 1.071e+05) |" in md
    assert "| eval perplexity: federated / centralized | overflow (loss 1.071e+05) / — |" in md
    assert "eval perplexity overflow (loss 1.071e+05) in round 2 is above its starting value 512.7" in md
    assert "1.014e+304" not in md


# ------------------------------------------------------------------------------------------ M3, M4
def test_words_follow_the_real_aggregation_mode(tmp_path):
    f = {"mode": "central", "aggregation": "plain", "secagg_threshold": None}
    assert text.trust_words(f).startswith("The aggregator is trusted: under plain aggregation it sees each holder's "
                                          "clipped update, then adds the Gaussian noise to their sum.")
    assert "securely aggregated or plain" not in text.trust_words(f)
    assert text.update_protection({"aggregation": "plain"}) == (
        "Nothing hides the individual updates: under plain aggregation the coordinator sees each holder's clipped update.")
    assert text.no_dp_mechanism({"aggregation": "plain"}, False) == (
        "no differential privacy: updates are clipped (plain aggregation sums floats), but no noise is added (ε = ∞)")
    pf = preflight(DPConfig(clip=1.0), population=4, cohort_size=4, rounds=3, dim=64, sampling="fixed")
    assert "secure aggregation still hides each update" not in "\n".join(pf.lines())
    assert ("  no DP noise (holder-level ε = ∞): nothing bounds what the released models reveal about a holder's data as "
            "a whole; the coordinator sees each update unless secure aggregation (aggregation.mode secagg or ckks+secagg) "
            "hides it") in pf.lines()
    # a preflight.json written before this wording: the report says what the run's aggregation did
    (tmp_path / "preflight.json").write_text(json.dumps({"mode": "none", "lines": [
        "pre-flight privacy check (none): learnable", "  no DP noise (holder-level ε = ∞); secure aggregation still hides each update"]}))
    assert privacy_checks.preflight_blocks(tmp_path, "plain")[1] == (
        "  no DP noise (holder-level ε = ∞); under plain aggregation the coordinator sees each update")


def test_ckks_trust_and_the_ckks_only_and_secagg_dropped_rows_are_explained():
    f = {"mode": "none", "aggregation": "ckks+secagg"}
    assert ("Any key holder can decrypt any upload of its key generation: if the aggregator colludes with any one key "
            "holder, every key holder's small-tensor updates of that generation are exposed") in text.trust_words(f)
    run = {"ledger": {"entries": []}, "metrics": [{"round": 1, "ckks_only": [1], "secagg_dropped": [1]}, {"round": 2}]}
    title, blocks = rounds.rounds_section(run, f)
    assert ("ckks_only (metrics.jsonl): holders in the CKKS part of the sum only — their masked input never arrived, but "
            "their CKKS-routed tensors were decrypted into the model, so they are charged for the round like every "
            "survivor (protocols/federation.md §4.1 step 6): round 1: holder 1.") in blocks
    assert any(b.startswith("secagg_dropped (metrics.jsonl): holders that shared their secure-aggregation keys but sent "
                            "no masked input") and b.endswith("round 1: holder 1.") for b in blocks)


# ------------------------------------------------------------------------------------------ M6
def test_preflight_warns_where_a_cap_will_stop_the_run():
    base = dict(mode="distributed", target_epsilon=8.0, clip=1.0, delta=1e-5, force_unlearnable=True)
    kw = dict(population=4, cohort_size=4, rounds=3, dim=918656, sampling="fixed", min_survivors=3)
    pf = preflight(DPConfig(**base, holder_epsilon_cap=6.0), **kw)   # the audit's run: holders refused rounds 2 and 3
    # (6.9055… after 2 rounds, shown rounded up: "6.905" was below the bound)
    assert pf.ok and pf.warnings == (
        "privacy.holder_epsilon_cap = 6 will be reached: a holder refuses a round whose own ε, assuming the fewest "
        "survivors it accepts, would exceed its cap (6.906 at round 2), so each holder stops taking part from round 2 "
        "on, before the 3 rounds it may join",)
    assert "  WARNING: privacy.holder_epsilon_cap = 6 will be reached" in "\n".join(pf.lines())
    pf = preflight(DPConfig(**base, server_epsilon_cap=6.0), **kw)
    assert pf.warnings == ("privacy.server_epsilon_cap = 6 is below the planned ε after 3 rounds (7.996): the federation "
                           "will stop before round 2 (ε after 2 rounds would be 6.343), having run 1 of 3 planned rounds",)
    assert preflight(DPConfig(**base, holder_epsilon_cap=100.0), **kw).warnings == ()
    assert pf.to_dict()["warnings"] == list(pf.warnings)


# ------------------------------------------------------------------------------------------ low
def test_q_one_sensitivity_delta_and_clip_words(tmp_path):
    rd = tmp_path / "run"
    make_signed_run(rd, population=4)   # q = 4/4
    render_report(rd)
    md = _md(rd)
    assert ("Here q = 1: every holder is in every cohort, so neither ε has amplification by sampling.") in md
    assert "amplification by the random choice of cohorts" not in md
    assert "one holder moves the sum by at most S, the sensitivity the accountant charges: the bound on the quantized, " \
           "rounded update, S ≥ C (protocols/dp.md §6.4) (largest S/C in this run's ledger:" in md
    assert "by at most C." not in md
    assert "(δ < 1/population = 1/4)" in md
    assert ("The clip fraction plot is empty: under distributed DP a holder does not tell the server whether clipping "
            "changed its update (the server must not learn it), so no clip fraction exists.") in md
    f = {"epsilon": 1.0, "delta": None, "population": 4}
    assert text.parameter_words(f, True, False, True) == "ε = 1, δ = — (whether δ < 1/population could not be checked)"
    f = {"ledger": {"entries": [{"noisy_within_clip_fraction": -0.4165}, {"noisy_within_clip_fraction": 1.056}]},
         "metrics": [{"clip_fraction": 0.5}]}
    assert rounds.clip_words(f, {"clip_first": 1.0, "clip_last": 1.105})[0].endswith(
        "(here -0.4165 to 1.056): a noised count of the holders whose update was within the clip, over the cohort. The "
        "noise keeps each holder's answer private, so the estimate can fall outside [0, 1]; it is not a measured fraction.")


def test_verify_prints_no_delta_without_dp(tmp_path, capsys):
    rd = tmp_path / "run"
    make_signed_run(rd, cfg=DPConfig(clip=1.0), own_cap=None)
    main(["verify", str(rd)])
    out = capsys.readouterr().out
    assert "privacy: holder-level epsilon=inf (differential privacy off; 4 recorded events)" in out
    assert "delta=" not in out


@pytest.mark.parametrize("sampling_rate", [1.0, 0.5])
@pytest.mark.parametrize("aggregation", ["plain", "secagg"])
def test_a_central_dp_holder_epsilon_is_never_said_to_hold_against_the_aggregator(aggregation, sampling_rate):
    """PV-37: under central DP the aggregator sees the sum (plain: each clipped update) before it adds the noise, so no
    holder-level ε holds against it; the "Two ε are kept" paragraph said each holder's own ε was "valid even against the
    coordinator" in every mode, contradicting the Trust model section. Distributed DP keeps the sentence."""
    from securefed.report.text import protection_words

    f = {"privacy_unit": "holder", "aggregation": aggregation, "sampling_rate": sampling_rate, "sampling": "poisson",
         "cohort_size_planned": 2, "population": 4}
    central = " ".join(protection_words(dict(f, mode="central"), True, "ε words"))
    assert "valid even against the coordinator" not in central and "not against the aggregator" in central
    assert ("each holder's clipped update" in central) == (aggregation == "plain")
    if aggregation == "secagg":
        dist = " ".join(protection_words(dict(f, mode="distributed"), True, "ε words"))
        assert "valid even against the coordinator" in dist and "not against the aggregator" not in dist


def test_the_record_level_guarantee_against_the_coordinator_excludes_membership_when_q_is_not_public():
    """PV-36: with q = B/N (train.dp_sgd.sample_rate unset) the ε a holder sends every round and the q it signs are
    functions of its record count N: for σ 1, batch 4, 6 steps at δ 1e-3 (Opacus RDP, as the holder signs) ε reads
    0.398051 at N = 659 rows and 0.398230 at 658, so removing even one row shows, and a document of k rows moves N by k
    (an audit's holder: 659 rows with one 400-row document). The report said the record-level guarantee held against the
    coordinator without exception; it now says it does not cover membership unless q is public."""
    from securefed.privacy.holder_ledger import record_level_epsilon
    from securefed.report.record_level import protection_blocks
    from securefed.report.text import trust_words

    assert record_level_epsilon([[1.0, 4 / 659, 6]], 1e-3) == pytest.approx(0.3980509879648306, rel=1e-9)
    assert record_level_epsilon([[1.0, 4 / 658, 6]], 1e-3) == pytest.approx(0.39822994540126766, rel=1e-9)
    for q, caveat in ((None, True), (0.01, False)):
        rl = {"1": {"epsilon": 0.398, "delta": 1e-3, "steps": 6, "unit": "document", "sample_rate": q}}
        f = {"dp_sgd": {"enabled": True, "sample_rate": q}, "record_level": rl, "mode": "none", "aggregation": "secagg",
             "secagg_threshold": 2}
        head = " ".join(b for b in protection_blocks(f) if isinstance(b, str))
        assert ("the coordinator included" in head) and (("Except for membership" in head) == caveat)
        assert ("Except for membership" in trust_words(f)) == caveat   # the same sentence (coordinator_exceptions)


@pytest.mark.parametrize("mode, aggregation, relation", [
    ("central", "secagg", "replace-one"), ("central", "plain", "replace-one"), ("central", "secagg", "add/remove"),
    ("distributed", "secagg", "replace-one"), ("distributed", "secagg", "zero-out (add/remove)")])
def test_the_holder_level_lead_states_e_to_the_epsilon_and_what_the_neighbours_differ_in(mode, aggregation, relation):
    """PV-38: the lead of "What was protected" said the models "reveal little about whether any one holder took part"
    in every holder-level DP run: at the review's central run (σ 1, q = 1, 3 rounds, replace-one) ε = 22.13 (dp-accounting
    agrees), e^ε ≈ 4.07e9, nothing "little"; under replace-one (fixed cohorts) and zero-out (distributed, Poisson) a
    holder takes part in both neighbouring runs, so participation is not what ε protects; and a central run's
    updates are not "hidden by noise" from the aggregator, who sees them first (under plain aggregation, each one)."""
    f = {"privacy_unit": "holder", "mode": mode, "aggregation": aggregation, "neighbouring_relation": relation,
         "epsilon": 22.126645431335483, "sampling_rate": 1.0}
    lead = text.protection_words(f, True, "ε words")[0]
    assert "reveal little" not in lead and "hidden by noise" not in lead
    # exp(22.1266) = 4.0687e9, rounded up like every shown ε (PV-47): never a factor below the bound
    assert "differs by at most a factor e^ε = e^22.13 ≤ 4.07e+09, plus δ, between " in lead
    from securefed.report.text import _up_3g
    assert [_up_3g(x) for x in (math.exp(8), 1.6487, 2.0, 1234.0)] == ["2.99e+03", "1.65", "2", "1.24e+03"]
    took_part_hidden = relation == "add/remove"
    assert ("whether it took part is not hidden" in lead or "which holders took part is not hidden" in lead) \
        == (not took_part_hidden)
    if relation == "add/remove":
        assert lead.endswith("between the run with one holder's data and the run without it (add/remove one holder).")
    if mode == "central":
        seen = "each holder's clipped update (plain aggregation)" if aggregation == "plain" else "their sum"
        assert f"then noised by the aggregator after it has seen {seen}." in lead
        assert ("Nothing hides the individual updates: under plain aggregation the coordinator sees each holder's "
                "clipped update." in lead) == (aggregation == "plain")
    else:
        assert "then noised by each holder before it leaves (its share of the noise of the sum)." in lead
    # no verified ε (records that do not verify): no number, and still no "reveal little"
    assert "differs by at most e^ε (ε below), plus δ" in text.holder_level_lead(dict(f, epsilon="unknown"))


def test_a_holder_drawn_into_a_cohort_too_small_to_be_offered_is_not_said_to_refuse(tmp_path):
    """PV-39: under Poisson cohorts a draw of fewer than 3 holders cannot run secure aggregation; the coordinator sends
    no Offer and records each drawn holder as "refused" with reason "no answer". The review's run (6 holders, q = 0.5,
    distributed DP) drew 1 holder in rounds 1 and 2, and the report said "holder-6 refused round 1 and sent nothing:
    no answer" and counted a refusal in the Holder budgets table: the holder was never asked."""
    views = {"holder-6": [{"round": 1, "status": "refused", "reason": "no answer", "epsilon": 0.0, "cap": None},
                          {"round": 3, "status": "included", "reason": None, "epsilon": 4.75, "cap": None}],
             "holder-5": [{"round": 3, "status": "refused", "reason": "no answer", "epsilon": 0.0, "cap": None}]}
    metrics = [{"round": 1, "clients_sampled": 1, "aggregation": "secagg", "aborted": "0 of 1 sampled holders took part: too few"},
               {"round": 3, "clients_sampled": 3, "aggregation": "secagg"}]
    assert privacy_checks.not_asked_rounds(metrics) == {1}
    assert privacy_checks.not_asked_rounds([dict(metrics[0], aggregation="plain")]) == set()   # plain offers any cohort
    lines = privacy_checks.refusal_lines(views, None, 3, 3, {}, privacy_checks.not_asked_rounds(metrics))
    assert not any(line.startswith("holder-6 refused round 1") for line in lines)
    assert ("holder-6 was drawn into round 1's cohort but never asked: the cohort was below the 3 holders secure "
            "aggregation needs, so the coordinator aborted the round before offering it to anyone (the ledger records "
            "this as refused, reason \"no answer\"); the holder refused nothing, sent nothing and spent nothing.") in lines
    assert "holder-5 refused round 3 and sent nothing: no answer." in lines   # offered (cohort of 3), did not answer
    rows = text.holder_rows({"holder-6": {"ok": True, "own_epsilon": 4.75, "view_epsilon": 4.75, "in_cohort": True,
                                          "own_ledger": True, "cap": None, "included": 1, "refused": 0, "not_asked": 1,
                                          "dropped": 0}})
    assert rows[1][5] == "0 (+1 drawn but never asked: cohort below 3)"


def test_the_record_level_guarantee_against_the_coordinator_excludes_reply_timing_when_batches_are_not_padded():
    """PV-40: the record-level paragraph said each record is protected "against anyone who sees what the holder sent
    ..., the coordinator included" while the Mechanism section said the same holders' reply times show their Poisson
    batch sizes outside the accountant (the review's sequence-unit run: no holder padded). The paragraph now names the
    unpadded holders and says the guarantee does not hold against whoever times their replies."""
    from securefed.report.record_level import protection_blocks

    rl = {"1": {"epsilon": 1.6607, "delta": 1e-5, "steps": 6, "unit": "sequence", "padded_rows": None},
          "2": {"epsilon": 1.8883, "delta": 1e-5, "steps": 6, "unit": "sequence", "padded_rows": 64}}
    f = {"dp_sgd": {"enabled": True, "sample_rate": 0.01}, "record_level": rl}
    head = protection_blocks(f)[0]
    assert ("Nor, for holder-1, against whoever times its replies (the coordinator does): its steps were not padded, so "
            "a reply's time shows roughly how many records each Poisson draw took, which the accountant assumes secret; "
            "train.dp_sgd.hide_batch_size closes this (protocols/dp.md §10.4).") in head
    rl["1"]["padded_rows"] = 64
    assert "whoever times its replies" not in protection_blocks(f)[0]


def test_an_unfinished_run_neither_calls_the_holders_ledgers_broken_nor_claims_amplification(tmp_path):
    """PV-41: a run stopped with Ctrl-C (the review's: distributed DP, 4 holders, q = 1, 2 of 4 rounds) has no signed
    end-of-run record, so every ε is withheld — and the report said "the ledger of holder-1, holder-2, holder-3,
    holder-4 is broken" (they verify; the run is unfinished) and that the federation's ε had "amplification by the
    random choice of cohorts" at "the stated sampling rate (— sampling)", for a run where every holder was in every
    cohort: the withheld entries left the sampling rate unknown, and unknown read as sampled."""
    rd = tmp_path / "run"
    make_signed_run(rd, population=4)   # q = 4/4
    (rd / "privacy" / "end.json").unlink()   # as an interrupted run leaves it (dp.md §7.4)
    render_report(rd)
    md = _md(rd)
    assert "is broken" not in md and "No ε is stated: the privacy records do not verify (see Ledger integrity)." in md
    assert "amplification by the random choice of cohorts" not in md and "honestly and secretly" not in md
    assert ("Whether the cohorts were sampled, and so whether the federation's ε is amplified by sampling, is not "
            "stated: no verified ledger entry records the sampling rate.") in md


@pytest.mark.parametrize("mode", ["distributed", "central"])
def test_a_sampled_runs_report_says_its_holder_table_reveals_participation(mode):
    """Under sampling (q < 1) the federation's ε is amplified only against readers who do not know the cohorts. The
    report's Holder budgets table gives each holder's rounds and its own ε (a function of them), so the report must
    say that its own table, like the ledgers, is a record against whose reader only the holder ε holds; at q = 1
    there is no amplification to lose and the sentence is not needed."""
    from securefed.report.text import protection_words

    f = {"privacy_unit": "holder", "aggregation": "secagg", "sampling": "poisson", "cohort_size_planned": 2,
         "population": 4, "mode": mode}
    sampled = " ".join(protection_words(dict(f, sampling_rate=0.5), True, "ε words"))
    assert "this report's Holder budgets table says how many rounds each holder was in" in sampled
    assert "against a reader of either only the holder ε holds" in sampled
    every = " ".join(protection_words(dict(f, sampling_rate=1.0), True, "ε words"))
    assert "Holder budgets table says" not in every and "neither ε has amplification by sampling" in every


def test_every_epsilon_in_the_report_tables_and_plain_words_is_rounded_up(tmp_path):
    """A compliance review (stop 51): PV-47 routed the report's sentences through epsilon_text, but the Parameters
    table ("epsilon 34.66" for 34.664), the plain words' "at least the server's view of it (5.32)" for 5.32014, and the
    pre-flight table ("record-level epsilon_planned 1.018" for 1.01849, beside "ε 1.019" in its own text) still rounded
    to nearest at 4 digits, below the accountant's bound."""
    rd = tmp_path / "run"
    make_signed_run(rd, cfg=DPConfig(mode="distributed", noise_multiplier=0.8, clip=1.0, delta=1e-5))
    eps = json.loads((rd / "privacy" / "ledger.jsonl").read_text().splitlines()[-1])["epsilon"]
    assert f"{eps:.4g}" != epsilon_text(eps) and float(f"{eps:.4g}") < eps   # σ 0.8: 34.664 → "34.66" was shown
    (rd / "preflight.json").write_text(json.dumps({
        "mode": "distributed", "verdict": "learnable", "epsilon_per_round": 5.320141714610793, "epsilon_planned": eps,
        "holder_epsilon_planned": eps, "record_level": {"epsilon_planned": 1.0184861530483595, "delta": 1e-5}}))
    assert main(["report", str(rd)]) == 0
    md = _md(rd)
    assert f"| epsilon | {epsilon_text(eps)} |" in md
    v = verify_run(rd)
    for h, view in v.holder_view_epsilon.items():
        assert f"at least the server's view of it ({epsilon_text(view)})." in md
    for k, e in [("epsilon_per_round", 5.320141714610793), ("epsilon_planned", eps), ("holder_epsilon_planned", eps),
                 ("record-level epsilon_planned", 1.0184861530483595)]:
        assert f"| {k} | {epsilon_text(e)} |" in md and float(epsilon_text(e)) >= e
    html = (rd / "report" / "report.html").read_text()
    assert f"<td>{epsilon_text(eps)}</td>" in html and f"<td>{eps:.4g}</td>" not in html


@pytest.mark.parametrize("mode, dp_sgd, row", [
    ("none", False, "| neighbouring relation | none: differential privacy was off |"),
    ("none", True, "| neighbouring relation | holder level: none (holder-level DP was off); record level: add/remove one "
                   "record, one training sequence (a packed row) (Poisson batches) |"),
    ("distributed", False, "| neighbouring relation | holder level: replace-one, one holder (fixed sampling of cohorts) |")])
def test_the_nist_neighbouring_relation_names_a_holder_level_relation_only_with_holder_level_dp(tmp_path, mode, dp_sgd,
                                                                                               row):
    """A compliance review (stop 51): without holder-level DP the NIST table's relation row read "— one holder (fixed
    sampling of cohorts)", a relation with no name for a guarantee that does not exist."""
    rd = tmp_path / "run"
    cfg = DPConfig(clip=1.0) if mode == "none" else DPConfig(mode=mode, noise_multiplier=1.0, clip=1.0, delta=1e-5)
    make_signed_run(rd, cfg=cfg, **({"own_cap": None} if mode == "none" else {}),
                    **({"dp_sgd_steps": 2, "config": DP_SGD} if dp_sgd else {}))
    assert main(["report", str(rd)]) == 0
    md = _md(rd)
    assert row in md and "| — one holder" not in md


def test_an_epsilon_above_the_calibration_target_says_so_and_why(tmp_path):
    """A compliance review (stop 51): σ calibrated to target_epsilon 8 over 3 rounds; holders dropped out in rounds 1
    and 3, and the federation's ε, charged at the noise actually present (dp.md §6.1), ended at 9.087. The report
    stated 9.087 and, in its pre-flight section, "after 3 rounds 7.996", with no word that the run passed the target a
    signer approved, nor why."""
    rd = tmp_path / "run"
    # σ calibrated to 30 over 4 rounds of 4; holder 4 drops out in round 2 (3 noise shares): 31.67 > 30
    make_signed_run(rd, cfg=DPConfig(mode="distributed", target_epsilon=30.0, clip=1.0, delta=1e-5),
                    drop_last_holder_at=2, config={"privacy": {"target_epsilon": 30.0}})
    eps = json.loads((rd / "privacy" / "ledger.jsonl").read_text().splitlines()[-1])["epsilon"]
    assert eps > 30.0
    assert main(["report", str(rd)]) == 0
    md = _md(rd)
    assert (f"the federation has spent ε = {epsilon_text(eps)} at δ = 1e-05. This is ABOVE the target ε = 30 that the "
            "noise was calibrated for (over 4 planned rounds, every planned holder's noise share in every sum). Round 2 "
            "summed fewer noise shares than the planned cohort's (holders dropped out or were not drawn), and every round "
            "is charged at the noise actually present (protocols/dp.md §6.1). No privacy.server_epsilon_cap was set, so "
            "nothing stopped the run at the target.") in md
    assert "| target_epsilon | 30 |" in md
    assert json.loads((rd / "report" / "report.json").read_text())["facts"]["target_epsilon"] == 30.0
    # at or below the target, nothing is added
    rd2 = tmp_path / "run2"
    make_signed_run(rd2, cfg=DPConfig(mode="distributed", target_epsilon=30.0, clip=1.0, delta=1e-5),
                    config={"privacy": {"target_epsilon": 30.0}})
    assert main(["report", str(rd2)]) == 0
    assert "ABOVE the target" not in _md(rd2)


def test_a_dropout_is_said_in_plain_words_with_the_reason_its_ledger_records():
    """A compliance review: a holder whose local training diverged refuses its Plan after the secure-aggregation keys —
    to the protocol a dropout, which the server's view ledger records as "dropped" with the holder's own reason — and
    the Holder budgets table said "refused 0, dropped 1" while the plain words said nothing of it. Each dropout is now
    said with the reason the ledger records, a holder's rounds grouped by reason."""
    diverged = ("refused the plan: its local training diverged: the update is not finite (a lower train.lr?) before "
                "its update was in the sum: nothing of it was released")
    gone = "dropped out before its update was in the sum: nothing of it was released"
    views = {"holder-2": [{"round": 1, "status": "dropped", "reason": diverged, "epsilon": 0.0, "cap": None},
                          {"round": 2, "status": "dropped", "reason": gone, "epsilon": 0.0, "cap": None},
                          {"round": 3, "status": "dropped", "reason": gone, "epsilon": 0.0, "cap": None}],
             "holder-1": [{"round": 1, "status": "included", "reason": None, "epsilon": 1.0, "cap": None}]}
    lines = privacy_checks.refusal_lines(views, None, 3, 3, {}, set())
    assert f"holder-2 dropped out of round 1: {diverged}." in lines
    assert f"holder-2 dropped out of rounds 2, 3: {gone}." in lines
    assert not any(line.startswith("holder-1") for line in lines)


def test_the_trust_model_and_the_nist_trust_row_state_the_record_level_exceptions_the_plain_words_state(tmp_path):
    """PV-50: "What was protected" excepted reply timing from the record-level guarantee against the coordinator for
    holders whose steps were not padded (PV-40), while the Trust model and the NIST table's trust row, which a signer
    reads as the threat model, said DP-SGD bounds what "anyone, the coordinator included" can infer, naming only the
    record-count exception. All three now state the exceptions from one function (record_level.coordinator_exceptions)."""
    from securefed.report.record_level import coordinator_exceptions

    rd = tmp_path / "run"
    make_signed_run(rd, cfg=DPConfig(clip=1.0), own_cap=None, dp_sgd_steps=2, config=DP_SGD)   # nobody padded
    render_report(rd)
    md = _md(rd)
    timing = ("Nor, for holder-1, holder-2, holder-3, holder-4, against whoever times its replies (the coordinator "
              "does): its steps were not padded")
    protected = md.split("## What was protected, in plain words")[1].split("## ")[0]
    trust = md.split("## Trust model")[1].split("## ")[0]
    nist = next(line for line in md.splitlines() if line.startswith("| trust model / threat |"))
    for where in (protected, trust, nist):
        assert timing in where and "Except for membership" in where
    html = (rd / "report" / "report.html").read_text()
    assert html.count("against whoever times its replies") == 3
    # the one source: with every holder padded and a public q nothing is excepted; unverified records claim no padding
    rl = {"1": {"epsilon": 1.0, "delta": 1e-5, "steps": 6, "unit": "document", "padded_rows": 64, "sample_rate": 0.01}}
    assert coordinator_exceptions({"dp_sgd": {"enabled": True, "sample_rate": 0.01}, "record_level": rl}) == []
    unverified = coordinator_exceptions({"dp_sgd": {"enabled": True, "sample_rate": 0.01, "hide_batch_size": True},
                                         "record_level": None})
    # PV-56: unverified records claim no public q either (config.yaml's sample_rate is the coordinator's word)
    assert len(unverified) == 2 and "no verified signed release here records a padded batch" in unverified[1]
    assert "no verified signed release here records a public q" in unverified[0]
    from securefed.report.record_level import mechanism_words

    for none in (None, {}):   # records that do not verify; a network run's directory without the holders' ledgers
        words = mechanism_words({"dp_sgd": {"enabled": True, "sample_rate": 0.01}, "record_level": none})
        assert "No verified signed release here records a public q." in words and "is public" not in words
    one = rl["1"]
    mixed = {"1": dict(one), "2": dict(one, sample_rate=None), "3": dict(one, sample_rate=None)}
    words = mechanism_words({"dp_sgd": {"enabled": True, "sample_rate": 0.01}, "record_level": mixed})
    assert "holder-2, holder-3 sample at q = batch size / its own record count" in words
    assert coordinator_exceptions({"dp_sgd": {"enabled": False}, "record_level": {"1": dict(one, sample_rate=None)}})[0] \
        .startswith("Except for membership: each holder samples")   # config.yaml without DP-SGD: the holders' word


def test_a_poisson_sampled_dp_run_recorded_earlier_is_told_its_amplified_epsilon_can_be_too_low():
    """PV-58: runs recorded before DP with Poisson cohorts was refused carry an amplified ε that does not account for
    rounds aborted by a draw below the minimum cohort; their report says so. Fixed-size cohorts are not flagged."""
    from securefed.report.text import sampling_words

    f = {"sampling": "poisson", "sampling_rate": 0.5, "cohort_size_planned": 3, "population": 6}
    said = sampling_words(f)
    assert "WARNING: under Poisson sampling a round whose draw fell below the minimum cohort aborted" in said
    assert "can be too low" in said and "protocols/dp.md §11" in said
    assert "WARNING" not in sampling_words(dict(f, sampling="fixed"))
