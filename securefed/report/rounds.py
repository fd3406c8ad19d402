"""The report's words about rounds: which did not update the model and why, which were charged anyway,
which holders were outside the masked sum (ckks+secagg's ``ckks_only``, secure aggregation's
``secagg_dropped``), and what the clip telemetry does and does not show (protocols/federation.md §4.1, dp.md §9)."""

from __future__ import annotations

from typing import Any

from securefed.report.privacy_checks import fmt_number, one_line

__all__ = ["aborted_rounds", "charged_aborted_words", "lost_rounds", "resume_words", "rounds_that_updated",
           "rounds_section", "clip_words", "sensitivity_words"]

_UNCHARGED = ("empty", "none")   # events that add nothing to ε (an empty distributed round; DP off)


def aborted_rounds(run: dict) -> list[dict]:
    """[{round, reason, charged}] for every metrics row that records an aborted round; ``charged``: the server
    ledger's entry for that round carries an event that adds to ε (None when the ledger does not say)."""
    by_round = {}
    for e in run["ledger"]["entries"]:
        by_round[e.get("round")] = e
    out = []
    for m in run["metrics"]:
        if not m.get("aborted"):
            continue
        e = by_round.get(m.get("round"))
        mech = (e.get("event") or {}).get("mechanism") if isinstance(e, dict) else None
        out.append({"round": m.get("round"), "reason": one_line(m["aborted"]),
                    "charged": None if mech is None else mech not in _UNCHARGED})
    return out


def lost_rounds(run: dict) -> list[dict]:
    """[{rounds, model_after_round, resumed_at_round}] for each lossy resume in summary.json's ``model_restarts``
    (federation.md §6: a coordinator resumed with federation.checkpoint_every > 1 goes on from an older model file,
    so the updates of the rounds completed since are not in θ); ``rounds``: those completed rounds, aborted ones left
    out (they never moved the model). An entry of another shape is reported as such, never skipped."""
    aborted = {m.get("round") for m in run["metrics"] if m.get("aborted")}
    restarts = (run.get("summary") or {}).get("model_restarts") or []
    out, declared = [], set()   # a round an earlier resume declared lost is not lost again (older coordinators
    # re-declared it on a second resume, and the report counted it twice)
    for r in restarts if isinstance(restarts, list) else [restarts]:
        try:
            lo, hi = (int(x) for x in r["lost_rounds"])
            after, at = int(r["model_after_round"]), int(r["resumed_at_round"])
        except (TypeError, ValueError, KeyError):
            raise ValueError(f"model_restarts entry {r!r} is not "
                             "{resumed_at_round, model_after_round, lost_rounds: [first, last]}") from None
        rounds = [x for x in range(lo, hi + 1) if x not in aborted and x not in declared]
        declared.update(rounds)
        out.append({"rounds": rounds, "model_after_round": after, "resumed_at_round": at})
    return out


def resume_words(run: dict) -> str:
    """Whether the run was stopped and resumed, when, and what each resume cost, from summary.json's ``resumes`` (the
    coordinator's record, kept in its checkpoint: federation.md §6): a round in flight is aborted (charged or not, as
    its ledger entry says: aborted_rounds), a lossy resume's rounds are lost (lost_rounds). Neither the report nor
    summary.json said a run had been resumed at all (a compliance review): a signer reads the run's history here."""
    summary = run.get("summary") or {}
    if not summary:
        return "not stated: the run did not finish (no summary.json)"
    resumes = summary.get("resumes")
    if resumes is None:
        return "not recorded (summary.json from before resumes were recorded)"
    if not isinstance(resumes, list) or not all(isinstance(r, dict) for r in resumes):
        raise ValueError(f"resumes {resumes!r} is not a list of {{resumed_at_round, in_flight_round}}")
    if not resumes:
        return "no: it ran from its start to its end without being stopped and resumed"
    charged = {a["round"]: a["charged"] for a in aborted_rounds(run)}
    no_dp = not any((e.get("event") or {}).get("mechanism") not in _UNCHARGED for e in run["ledger"]["entries"]
                    if isinstance(e, dict))
    lost = {lr["resumed_at_round"]: lr for lr in lost_rounds(run)}
    each = []
    for r in resumes:
        at, flight = r.get("resumed_at_round"), r.get("in_flight_round")
        costs = []
        if flight is not None:
            spend = {True: "; it is charged in the federation's ε",
                     False: "; the run has no DP, so no round is charged" if no_dp else "; nothing was charged for it",
                     None: "; no ledger entry for it"}[charged.get(flight)]
            costs.append(f"round {flight} was in flight when it stopped: aborted, its update not in the model{spend}")
        lr = lost.get(at)
        if lr and lr["rounds"]:
            costs.append(f"the updates of round{'s' if len(lr['rounds']) > 1 else ''} "
                         f"{', '.join(map(str, lr['rounds']))} were lost (the model went on from its state after round "
                         f"{lr['model_after_round']}; their privacy spend stays charged)")
        each.append(f"at round {fmt_number(at)} (" + ("; ".join(costs) if costs else
                    "nothing lost: no round aborted, lost or run twice") + ")")
    n = len(resumes)
    return (f"yes: stopped and resumed from its checkpoint {'once' if n == 1 else f'{n} times'}, "
            + "; ".join(each) + ". Every privacy ledger was verified and continued on each resume, nothing counted "
            "twice (protocols/dp.md §8)")


def rounds_that_updated(run: dict) -> int:
    """Rounds whose update is in the final model: those completed (summary.json's ``rounds``; counted from metrics for
    a run without one) less those a lossy resume dropped (lost_rounds)."""
    n = (run.get("summary") or {}).get("rounds")
    if not isinstance(n, int) or isinstance(n, bool):
        n = len({m.get("round") for m in run["metrics"] if not m.get("aborted")})
    return n - len({x for lr in lost_rounds(run) for x in lr["rounds"]})


def charged_aborted_words(run: dict, f: dict) -> str:
    """Said beside the federation's ε: aborted rounds the server ledger charges anyway ("" when none)."""
    charged = [a["round"] for a in aborted_rounds(run) if a["charged"]]
    if not charged:
        return ""
    which = ", ".join(map(str, charged))
    why = (" In central mode the server ledger charges every round it records, aborted ones included (an empty round "
           "is charged like any other: protocols/dp.md §6.4)." if f.get("mode") == "central" else "")
    return (f" Aborted round{'s' if len(charged) > 1 else ''} {which} did not update the model but "
            f"{'are' if len(charged) > 1 else 'is'} charged in this ε." + why)


def over_target_words(run: dict, f: dict) -> str:
    """Said beside the federation's ε when it is above the configured privacy.target_epsilon ("" otherwise): σ was
    calibrated for the planned rounds with every planned noise share in every sum (dp.md §5), but each round is
    charged at the noise actually present (§6.1), so a signer who approved the target reads why the run spent more."""
    target, eps = f.get("target_epsilon"), f.get("epsilon")
    if not isinstance(target, (int, float)) or not isinstance(eps, (int, float)) or eps <= target:
        return ""
    short = [e["round"] for e in run["ledger"]["entries"]
             if isinstance(e.get("event"), dict) and e["event"].get("mechanism") not in ("empty", "gaussian", "none")
             and isinstance(e.get("cohort_size_planned"), int) and e["event"].get("n_shares", 0) < e["cohort_size_planned"]]
    why = (f" Round{'s' if len(short) > 1 else ''} {', '.join(map(str, short))} summed fewer noise shares than the "
           "planned cohort's (holders dropped out or were not drawn), and every round is charged at the noise actually "
           "present (protocols/dp.md §6.1)." if short else "")
    cap = ("" if f.get("server_epsilon_cap") is not None
           else " No privacy.server_epsilon_cap was set, so nothing stopped the run at the target.")
    return (f" This is ABOVE the target ε = {fmt_number(float(target))} that the noise was calibrated for (over "
            f"{fmt_number(f.get('rounds_planned'))} planned rounds, every planned holder's noise share in every sum)."
            + why + cap)


def rounds_section(run: dict, f: dict) -> tuple[str, list] | None:
    """"Rounds that did not update the model, and holders outside the masked sum" (None when there is nothing)."""
    blocks: list = []
    ab = aborted_rounds(run)
    if ab:
        dp = f.get("mode") in ("central", "distributed")
        rows = [["round", "why it aborted"] + (["charged in the federation's ε"] if dp else [])]
        for a in ab:
            rows.append([fmt_number(a["round"]), a["reason"]] + ([{True: "yes", False: "no", None: "no ledger entry"}[a["charged"]]]
                                                          if dp else []))
        blocks.append(f"{len(ab)} round{'s' if len(ab) > 1 else ''} aborted: the model did not move in "
                      f"{'them' if len(ab) > 1 else 'it'} (metrics.jsonl, field aborted).")
        blocks.append(("table", rows))
        if f.get("aggregation") == "ckks+secagg":
            blocks.append("Under ckks+secagg the CKKS-routed tensors' sum is decrypted before the masked stage: a round "
                          "that aborted in the masked stage had already released that sum, though the model did not move.")
    for lr in lost_rounds(run):
        if lr["rounds"]:
            which = ", ".join(map(str, lr["rounds"]))
            blocks.append(f"Round{'s' if len(lr['rounds']) > 1 else ''} {which} completed, but "
                          f"{'their updates were' if len(lr['rounds']) > 1 else 'its update was'} lost: the coordinator "
                          f"resumed at round {lr['resumed_at_round']} from the model saved after round "
                          f"{lr['model_after_round']} (federation.checkpoint_every > 1). "
                          f"{'Their' if len(lr['rounds']) > 1 else 'Its'} privacy spend stays accounted; the curve "
                          "before and after is not one run.")
    ckks = [(m.get("round"), m["ckks_only"]) for m in run["metrics"] if m.get("ckks_only")]
    if ckks:
        blocks.append("ckks_only (metrics.jsonl): holders in the CKKS part of the sum only — their masked input never "
                      "arrived, but their CKKS-routed tensors were decrypted into the model, so they are charged for the "
                      "round like every survivor (protocols/federation.md §4.1 step 6): "
                      + "; ".join(f"round {r}: holder{'s' if len(hs) > 1 else ''} {', '.join(map(str, hs))}" for r, hs in ckks)
                      + ".")
    dropped = [(m.get("round"), m["secagg_dropped"]) for m in run["metrics"] if m.get("secagg_dropped")]
    if dropped:
        blocks.append("secagg_dropped (metrics.jsonl): holders that shared their secure-aggregation keys but sent no "
                      "masked input; the others' shares removed their pairwise masks, and nothing of their masked update "
                      "is in the sum (protocols/secagg.md §8)"
                      + (" — under ckks+secagg one may still be in the CKKS part (see ckks_only)"
                         if f.get("aggregation") == "ckks+secagg" else "") + ": "
                      + "; ".join(f"round {r}: holder{'s' if len(hs) > 1 else ''} {', '.join(map(str, hs))}"
                                  for r, hs in dropped) + ".")
    return ("Rounds that did not update the model, and holders outside the masked sum", blocks) if blocks else None


def clip_words(run: dict, f: dict) -> list[str]:
    """What the clip telemetry means: adaptive clipping's noisy fraction, and why the clip plot may be empty."""
    out = []
    fr = [e.get("noisy_within_clip_fraction") for e in run["ledger"]["entries"]]
    fr = [x for x in fr if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if fr:
        span = fmt_number(min(fr)) if min(fr) == max(fr) else f"{fmt_number(min(fr))} to {fmt_number(max(fr))}"
        out.append(f"Adaptive clipping (Andrew et al. 2021, protocols/dp.md §9) moved the clip from "
                   f"{fmt_number(f.get('clip_first'))} to {fmt_number(f.get('clip_last'))}, following each round's "
                   f"noisy_within_clip_fraction (here {span}): a noised count of the holders "
                   "whose update was within the clip, over the cohort. The noise keeps each holder's answer private, so "
                   "the estimate can fall outside [0, 1]; it is not a measured fraction.")
    if not any(isinstance(m.get("clip_fraction"), (int, float)) for m in run["metrics"]):
        out.append("The clip fraction plot is empty: " + (
            "under distributed DP a holder does not tell the server whether clipping changed its update (the server "
            "must not learn it), so no clip fraction exists." if f.get("mode") == "distributed"
            else "no round of this run recorded a clip fraction (aborted rounds record none)."))
    return out


def sensitivity_words(run: dict) -> str:
    """How far one holder moves the sum: S, the accounted (quantized) bound ≥ C (protocols/dp.md §6.4)."""
    ratios = []
    for e in run["ledger"]["entries"]:
        plan = e.get("plan") if isinstance(e.get("plan"), dict) else {}
        s, c = plan.get("sensitivity_l2"), plan.get("clip")
        if isinstance(s, (int, float)) and isinstance(c, (int, float)) and c > 0:
            ratios.append(s / c)
    worst = f" (largest S/C in this run's ledger: {max(ratios):.7g})" if ratios else ""
    return ("With DP on, every holder's update has the same weight (uniform averaging: the sum is divided by the planned "
            "cohort size), so one holder moves the sum by at most S, the sensitivity the accountant charges: the bound "
            "on the quantized, rounded update, S ≥ C (protocols/dp.md §6.4)" + worst + ".")
