"""The report's words: facts pulled from the run files, and the plain-language sections."""

from __future__ import annotations

import math
from typing import Any

from securefed.privacy.accountant import epsilon_text
from securefed.privacy.holder_ledger import RECORD_RELATION
from securefed.report import privacy_checks, record_level, rounds
from securefed.report.record_level import NOT_PRIVATE
from securefed.runtime.health import format_ppl

MECH_WORDS = {
    "none": "no differential privacy: updates are clipped and quantized, but no noise is added (ε = ∞)",
    "gaussian": "the Gaussian mechanism at a trusted aggregator (central DP): the server adds N(0, σ²C²) to the sum",
    "ddgauss": "the distributed discrete Gaussian (Kairouz, Liu, Steinke 2021): each holder adds its share of integer "
               "Gaussian noise before secure aggregation, so the server only ever sees a noised sum",
    "skellam": "the distributed Skellam mechanism (Agarwal, Kairouz, Liu 2021): each holder adds its share of integer "
               "Skellam noise before secure aggregation, so the server only ever sees a noised sum",
}


def _find(d: Any, key: str) -> Any:
    """First value of ``key`` anywhere in a nested config mapping (None if absent)."""
    if isinstance(d, dict):
        if key in d:
            return d[key]
        for v in d.values():
            r = _find(v, key)
            if r is not None:
                return r
    return None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "∞" if math.isinf(v) else f"{v:.4g}"
    if v == "inf":
        return "∞"
    return "—" if v is None else str(v)


def _sentence(t: str) -> str:
    return t[:1].upper() + t[1:] + "."


def facts(run: dict) -> dict:
    es = run["ledger"]["entries"]
    last = es[-1] if es else {}
    metrics = run["metrics"]
    cfg = run["config"]
    priv = cfg.get("privacy", {}) if isinstance(cfg.get("privacy"), dict) else {}
    agg = metrics[-1].get("aggregation") if metrics else _find(cfg.get("aggregation", {}), "mode")
    mode = last.get("mode", priv.get("mode", "unknown"))
    # δ and the neighbouring relation qualify a holder-level ε; without holder-level DP the ledger still carries the
    # configured ones beside ε = inf, which report.json repeated (an accountant review): stated only with DP, as in
    # summary.json
    holder_dp = mode in ("central", "distributed")
    return {
        "mode": mode,
        "mechanism": last.get("mechanism", "unknown"),
        "privacy_unit": last.get("privacy_unit", "holder"),
        "neighbouring_relation": last.get("neighbouring_relation", "unknown") if holder_dp else None,
        "epsilon": last.get("epsilon", "unknown") if es else "unknown",
        "delta": last.get("delta") if holder_dp else None,
        "noise_multiplier": last.get("noise_multiplier"),
        "target_epsilon": priv.get("target_epsilon") if holder_dp else None,
        "clip_first": es[0].get("clip") if es else priv.get("clip"),
        "clip_last": last.get("next_clip"),
        "adaptive_clip": priv.get("adaptive_clip"),
        "ring_bits": last.get("ring_bits"),
        "population": last.get("population"),
        "cohort_size_planned": last.get("cohort_size_planned"),
        "sampling": last.get("sampling"),
        "sampling_rate": last.get("sampling_rate"),
        "rounds_recorded": len(es),
        "reexecuted_rounds": sum(1 for e in es if e.get("reexecuted")),
        "accountant": last.get("accountant_version", last.get("accountant")),
        "aggregation": agg,
        "secagg_threshold": _find(cfg.get("aggregation", {}), "threshold_fraction") or _find(cfg.get("aggregation", {}), "threshold"),
        "server_epsilon_cap": priv.get("server_epsilon_cap"),
        "holder_epsilon_cap": priv.get("holder_epsilon_cap"),
        "fed_eval_ppl": run["summary"].get("fed_eval_ppl"),
        "central_eval_ppl": run["summary"].get("central_eval_ppl"),
        "central_lr": run["summary"].get("central_lr"),
        "central_batch_size": run["summary"].get("central_batch_size"),
        "fed_eval_loss": next((m["eval_loss"] for m in reversed(metrics) if m.get("eval_loss") is not None), None),
        "central_eval_loss": next((b["eval_loss"] for b in reversed(run["baseline"]) if b.get("eval_loss") is not None), None),
        "tokens": run["summary"].get("tokens"),
        "rounds": rounds.rounds_that_updated(run),
        "rounds_planned": _find(cfg.get("federation", {}), "rounds"),
        **record_level.record_facts(run),
    }


def sections(run: dict, f: dict) -> list:
    led = run["ledger"]
    dp = f["mode"] in ("central", "distributed")
    rec = record_level.on(f)
    ver = run.get("verification")
    verdict = (f"Verified: {len(led['entries'])} entries, hash chain intact, head {led['head']}." if led["ok"]
               else f"NOT VERIFIED — {led['error']}. Treat every privacy number in this report as untrustworthy.")
    integrity = [verdict] + ([ver.banner()] if ver is not None and led["ok"] else []) + (
        [f"Problem: {p}" for p in ver.problems] + [f"Note: {n}" for n in ver.notes] if ver is not None else [])
    eps_words = (f"After {f['rounds_recorded']} recorded rounds the federation has spent ε = {epsilon_text(f['epsilon'])} at "
                 f"δ = {_fmt(f['delta'])}." + rounds.charged_aborted_words(run, f) + rounds.over_target_words(run, f) if dp
                 else "Holder-level differential privacy was off in this run: the holder-level ε is infinite (the "
                      "record-level guarantee is stated separately below)." if rec
                 else "Differential privacy was off in this run: ε is infinite.")
    if not led["ok"]:  # fail closed: a ledger that does not verify states no ε
        eps_words = "No ε is stated: the privacy records do not verify (see Ledger integrity)."
    if dp and isinstance(f["delta"], (int, float)) and f["delta"] > 1e-3:
        eps_words += (f" WARNING: δ = {_fmt(f['delta'])} is large (the population is small): with probability up to δ the "
                      "guarantee may fail entirely; treat this run as a demonstration, not as meaningful protection.")
    trust = trust_words(f)
    holders = run["holders"]
    # a ledger that could not be read, not one whose ε is withheld because the run's records do not verify (PV-41)
    broken = [name for name, h in holders.items() if not h.get("ok") and not h.get("withheld")]
    owns = [h["own_epsilon"] for h in holders.values() if h.get("ok") and isinstance(h.get("own_epsilon"), (int, float))]
    # own ledgers a verifier lacks (a deployment keeps them with the holders); a local holder without one released nothing
    missing = [name for name, h in holders.items() if h.get("ok") and h.get("own_epsilon") is None
               and not (h.get("state_dir") and not h.get("own_ledger"))]
    if broken and dp:  # never state a maximum that silently leaves out a ledger we could not read
        eps_words += (f" The largest ε in any holder's own ledger is unknown: the ledger of {', '.join(broken)} "
                      "is broken.")
    elif owns and dp and led["ok"]:
        eps_words += (f" The largest ε in any holder's own signed ledger (no amplification) is {epsilon_text(max(owns))}"
                      + (f" (the own ledgers of {', '.join(missing)} are not in this directory)." if missing else "."))
    elif dp and led["ok"] and (views := [h["view_epsilon"] for h in holders.values() if h.get("ok") and h.get("in_cohort")]):
        eps_words += (" No holder's own ledger is in this directory (securefed verify --holder-ledger checks them); the "
                      f"largest ε in the server's view of any holder (no amplification) is {epsilon_text(max(views))}, which a "
                      "holder's own ledger can only exceed.")
    hrows = holder_rows(holders)
    params = [["parameter", "value"]] + [[k, epsilon_text(f[k]) if k == "epsilon" else _fmt(f[k])] for k in (
        "mode", "mechanism", "noise_multiplier", "target_epsilon", "clip_first", "clip_last", "adaptive_clip", "ring_bits", "population",
        "cohort_size_planned", "sampling", "sampling_rate", "delta", "epsilon", "server_epsilon_cap", "holder_epsilon_cap",
        "accountant", "rounds_recorded", "reexecuted_rounds") if dp or k not in ("delta", "target_epsilon")]  # no δ without DP
    if rec and f.get("dp_sgd"):
        params += [[f"dp_sgd.{k}", _fmt(v)] for k, v in f["dp_sgd"].items()]
    nist = [["factor (NIST SP 800-226)", "this run"],
            ["unit of privacy", unit_words(f, dp, rec)],
            ["privacy parameters ε, δ", parameter_words(f, dp, rec, led["ok"])],
            ["neighbouring relation", relation_words(f, dp, rec)],
            ["accounting", f"{_fmt(f['accountant'])}; composition over all recorded rounds, re-executed rounds counted again"
             + ("; record level: each holder's Opacus RDP accountant over its DP-SGD steps" if rec else "")],
            ["trust model / threat", trust],
            ["implementation", implementation_words(f, dp, rec)
             + ("; hash-chained, fsync'ed ledgers verified when this report was made" if led["ok"] and not broken
                else "; hash-chained, fsync'ed ledgers — verification FAILED when this report was made (see above)")]]
    train = [["figure", "value"], ["federated eval perplexity", format_ppl(f["fed_eval_ppl"], f["fed_eval_loss"])],
             ["centralized baseline eval perplexity", format_ppl(f["central_eval_ppl"], f["central_eval_loss"])],
             ["centralized baseline inner lr / batch", f"{_fmt(f['central_lr'])} / {_fmt(f['central_batch_size'])}"],
             ["tokens", _fmt(f["tokens"])],
             ["rounds that updated the model", _fmt(f["rounds"])]]
    mech = _sentence(MECH_WORDS.get(f["mechanism"], str(f["mechanism"]))) if dp else _sentence(no_dp_mechanism(f, rec))
    if dp and f.get("deterministic_secrets"):
        mech += (f" {NOT_PRIVATE}: deterministic_secrets is on, so every noise sample is derived from the configuration's "
                 f"seed ({_fmt(f.get('seed'))}, in config.yaml): whoever reads it can subtract the noise.")
    rounds_sec = rounds.rounds_section(run, f)
    pre = privacy_checks.preflight_blocks(run["run_dir"], f.get("aggregation"))
    return [
        ("Ledger integrity", integrity),
        ("What was protected, in plain words", protection_words(f, dp, eps_words) + record_level.protection_blocks(f)),
        ("Mechanism", [mech] + ([record_level.mechanism_words(f)] if rec else [])),
        ("Trust model", [trust]),
        ("Weights", [rounds.sensitivity_words(run) if dp else "DP is off: holder weights follow the run's configured weighting."]),
        ("Parameters", [("table", params)]),
        ("NIST SP 800-226 factors", [("table", nist)]),
        ("Holder budgets", [("table", hrows)] if len(hrows) > 1 else ["No holder is known to this run directory."]),
        ("Refusals, caps and δ, in plain words", privacy_checks.plain_words(run, f) or ["No holder was refused and no cap applied."]),
        *([rounds_sec] if rounds_sec else []),
        *([("Pre-flight check", pre)] if pre is not None else []),
        ("Training", [("table", train)]),
    ]


def holder_rows(holders: dict) -> list[list]:
    """The Holder budgets table: every holder the run directory knows, sampled or not. "own" is the holder's own
    signed ledger (recomputed by verify); the server's view is the coordinator's record of it, a separate column."""
    rows = [["holder", "holder-level ε (own signed ledger)", "holder-level ε (server's view)", "cap (own ledger)",
             "rounds included", "refused", "dropped"]]
    for name, h in holders.items():
        if not h.get("ok"):
            err = h["error"]
            rows.append([name, err if h.get("withheld") else "LEDGER BROKEN: " + err, "", "", "", "", ""])
            continue
        own = (epsilon_text(h["own_epsilon"]) if h.get("own_epsilon") is not None
               else "0 (no own ledger: it released nothing)" if h.get("state_dir") and not h.get("own_ledger")
               else "not in this directory (securefed verify --holder-ledger)")
        view = epsilon_text(h["view_epsilon"]) if h.get("in_cohort") else "0 (never in a cohort)"
        cap = "—" if not h.get("own_ledger") else ("none set" if h.get("cap") is None else _fmt(h["cap"]))
        refused = h.get("refused", 0)
        if h.get("not_asked"):   # drawn into a cohort too small to be offered the round: it refused nothing
            refused = f"{refused} (+{h['not_asked']} drawn but never asked: cohort below 3)"
        rows.append([name, own, view, cap, h.get("included", 0), refused, h.get("dropped", 0)])
    return rows


# ---------------------------------------------------------------- mode-matching words (issue 16)
def _quantized(f: dict) -> str:
    return "clipped and quantized" if f.get("aggregation") != "plain" else "clipped (plain aggregation sums floats)"


def no_dp_mechanism(f: dict, rec: bool) -> str:
    if rec:
        return (f"no holder-level differential privacy: updates are {_quantized(f)}, but no holder-level noise is added "
                "(holder-level ε = ∞)")
    return f"no differential privacy: updates are {_quantized(f)}, but no noise is added (ε = ∞)"


def update_protection(f: dict) -> str:
    """Who sees each holder's update, true to the aggregation mode."""
    agg = f.get("aggregation")
    if agg == "plain":
        return ("Nothing hides the individual updates: under plain aggregation the coordinator sees each holder's "
                "clipped update.")
    if agg == "ckks+secagg":
        return ("What hides the individual updates from the coordinator is secure aggregation alone: pairwise masking, "
                "and CKKS for the routed small tensors, whose key every holder shares (see Trust model).")
    if agg == "secagg":
        return "What hides the individual updates from the coordinator is secure aggregation alone (see Trust model)."
    return f"Aggregation {_fmt(agg)}: see Trust model for who sees the individual updates."


def memorization_words(f: dict) -> str:
    """What a reader must be told plainly when neither holder-level nor record-level DP ran: whatever hides the
    updates in transit, nothing bounds what the released model itself retains of the training text."""
    out = ("WARNING: without differential privacy the released model can memorize its training text and reproduce "
           "parts of it verbatim — names, identifiers, whole records — to anyone who can query it or read its weights.")
    if f.get("aggregation") in ("secagg", "ckks+secagg"):
        out += (" Secure aggregation does not prevent this: it hides each holder's update from the coordinator, not "
                "what the trained model retains.")
    return out


def protection_words(f: dict, dp: bool, eps_words: str) -> list[str]:
    """The "What was protected" paragraphs, true to the run's privacy mode."""
    if not dp:
        rec = record_level.on(f)
        q = "" if f.get("aggregation") == "plain" else " and quantized"
        if rec:   # its update does carry DP-SGD noise: only the holder-level noise is absent
            first = (f"Privacy unit: {f['privacy_unit']} — each data holder's pseudo-gradient in a round is clipped to L2 "
                     f"norm C = {_fmt(f['clip_first'])}{q}, and no holder-level noise is added to it: holder-level "
                     "differential privacy was off, so the released models carry no formal guarantee about a holder's "
                     "data as a whole (the record-level guarantee is below). ")
        else:
            first = (f"Privacy unit: {f['privacy_unit']} — each data holder's pseudo-gradient in a round is clipped to L2 "
                     f"norm C = {_fmt(f['clip_first'])}{q}, but no noise is added: differential privacy was off, so the "
                     "released models carry no formal guarantee about any holder's data. ")
            return [first + update_protection(f), eps_words, memorization_words(f)]
        return [first + update_protection(f), eps_words]
    q1 = f.get("sampling_rate") == 1 or f.get("sampling_rate") == 1.0
    # whom a holder's own ε holds against (PV-37): under distributed DP the noise is added by the holders before anything
    # leaves them, so even against the coordinator; under central DP the aggregator sees the sum before it adds the
    # noise (under plain aggregation, each holder's clipped update), so against it no holder-level ε holds at all
    if f.get("mode") == "central":
        seen = ("each holder's clipped update" if f.get("aggregation") == "plain" else "the sum of the updates")
        valid = ("valid against anyone who sees the released models and knows who took part, but not against the "
                 f"aggregator: central DP's server sees {seen} before it adds the noise (see Trust model)")
    else:
        valid = "valid even against the coordinator"
    unknown_q = f.get("sampling_rate") is None   # no verified ledger entry: nothing says whether cohorts were sampled
    two = ("Two ε are kept: the ledger above is the guarantee for the released models; each holder's own ledger counts "
           f"only the rounds its data was in ({valid}). Whether the cohorts were sampled, and so whether the "
           "federation's ε is amplified by sampling, is not stated: no verified ledger entry records the sampling rate."
           if unknown_q else
           "Two ε are kept: the ledger above is the guarantee for the released models; each holder's own ledger counts "
           f"only the rounds its data was in ({valid}). Here q = 1: every holder is in every "
           "cohort, so neither ε has amplification by sampling." if q1 else
           "Two ε are kept: the ledger above is the guarantee for the released models, with amplification by the random "
           "choice of cohorts (valid against anyone who does not know the cohorts); each holder's own ledger counts only "
           f"the rounds its data was in, without that amplification ({valid}). The ledger "
           "files themselves list who took part in each round, and this report's Holder budgets table says how many "
           "rounds each holder was in (its rounds, and its own ε, which grows with them): keep both with the "
           "coordinator's records; against a reader of either only the holder ε holds. To show the amplified ε "
           "to others, show the federation's ε and the models, not the ledgers or this table (protocols/dp.md §11).")
    weak = record_level.weak_epsilon_words("holder-level", [f.get("epsilon")]) if "No ε is stated" not in eps_words else ""
    return ([holder_level_lead(f), eps_words] + ([weak] if weak else []) + [two]
            + ([] if q1 or unknown_q else [sampling_words(f)]))


# the two runs the holder-level (ε, δ) compares, by the ledger's neighbouring relation (protocols/dp.md §2)
RELATION_WORDS = {
    "replace-one": ("the run with one holder's data and the run with another holder's data in its place (replace-one: "
                    "the population is public, so which holders took part is not hidden; the ledgers and this report "
                    "name them)"),
    "zero-out (add/remove)": ("the run with one holder's real update and the run with a zero update in its place "
                              "(zero-out: the holder takes part in both, so whether it took part is not hidden; the "
                              "ledgers and this report name who did)"),
    "add/remove": "the run with one holder's data and the run without it (add/remove one holder)",
}


def _up_3g(v: float) -> str:
    """``v`` > 0 at three significant digits rounded UP (e^ε as a bound, never below it: PV-47), in ``g`` form."""
    if not math.isfinite(v):
        return "∞"
    scale = 10.0 ** (math.floor(math.log10(v)) - 2)
    return f"{math.ceil(v / scale * (1 - 1e-12)) * scale:.3g}"


def holder_level_lead(f: dict) -> str:
    """The first sentence of "What was protected" under holder-level DP: who adds the noise, after whom, and what the
    (ε, δ) bounds, with e^ε as a number — never "reveals little" whatever ε is, never "hidden by noise" where the
    aggregator saw the updates first, and never "whether a holder took part" where the neighbouring relation keeps
    participation the same in both runs (PV-38)."""
    if f.get("mode") == "central":
        noised = ("then noised by the aggregator after it has seen "
                  + ("each holder's clipped update (plain aggregation)" if f.get("aggregation") == "plain"
                     else "their sum"))
    else:
        noised = "then noised by each holder before it leaves (its share of the noise of the sum)"
    rel = RELATION_WORDS.get(f.get("neighbouring_relation"),
                             f"two runs under the ledger's neighbouring relation ({_fmt(f.get('neighbouring_relation'))})")
    eps = f.get("epsilon")
    eps = float(eps) if isinstance(eps, (int, float)) and not isinstance(eps, bool) else None
    factor = ("e^ε (ε below)" if eps is None else "an unbounded factor (ε = ∞)" if math.isinf(eps)
              else f"a factor e^ε = e^{epsilon_text(eps)} ≤ {_up_3g(math.exp(eps))}")
    lead = (f"Privacy unit: {f['privacy_unit']} — each data holder's entire pseudo-gradient in a round is bounded in "
            f"size (clipped to L2 norm C) and {noised}. To whoever sees only the released models, the probability of "
            f"any outcome differs by at most {factor}, plus δ, between {rel}.")
    return lead + (" " + update_protection(f) if f.get("mode") == "central" and f.get("aggregation") == "plain" else "")


def sampling_words(f: dict) -> str:
    """What the amplified ε takes on trust (protocols/dp.md §2.1), and where the unamplified ε is."""
    rate = (f"q = {_fmt(f['cohort_size_planned'])}/{_fmt(f['population'])} = {_fmt(f['sampling_rate'])}"
            if f.get("sampling_rate") is not None else "the stated sampling rate")
    return (f"The federation's ε above assumes the coordinator sampled the cohorts honestly and secretly at {rate} "
            f"({_fmt(f['sampling'])} sampling): amplification by sampling trusts the coordinator's sampler. `securefed "
            "verify` checks the population against the roster and the population each holder signed, and the cohort "
            "memberships the holders' own ledgers witness against q (see Ledger integrity); it cannot check that the "
            "draws were secret. The holders' own ε, which needs no such trust, is in the Holder budgets table below."
            + (" WARNING: under Poisson sampling a round whose draw fell below the minimum cohort aborted, so whether a "
               "round ran depended on whether a holder was drawn; the federation's amplified ε does not account for "
               "this and can be too low (a review's exact computation for 6 holders at q = 0.5: ε ≥ 8.19 where 7.999 "
               "was stated; protocols/dp.md §11). securefed now refuses DP with Poisson sampling; the holders' own ε "
               "is not affected." if f.get("sampling") == "poisson" else ""))


CKKS_TRUST = ("CKKS route (protocols/ckks.md): the small tensors routed to CKKS are encrypted under one key that a leader "
              "holder creates and shares with every other key holder; the aggregator holds only a public context, and "
              "one surviving holder, the decryptor, decrypts the sum, floods it with noise and releases it. Any key "
              "holder can decrypt any upload of its key generation: if the aggregator colludes with any one key holder, "
              "every key holder's small-tensor updates of that generation are exposed — weaker than pairwise masking, "
              "which tolerates up to t − 1 colluding holders.")


def trust_words(f: dict) -> str:
    agg = f.get("aggregation")
    if f["mode"] == "distributed":
        t = ("The server is not trusted with individual updates: secure aggregation shows it only the sum of "
             f"the survivors' masked vectors (aggregation: {_fmt(agg)}; secure aggregation "
             f"threshold: {_fmt(f['secagg_threshold'])}). The DP guarantee assumes the holders whose inputs "
             "are in the sum added their noise shares honestly; noise missing because holders dropped out is "
             "accounted (each round's ε uses the survivors' actual noise). Holders colluding with the server "
             "remove their own shares from the noise: the guarantee degrades to that of the honest shares (the ε "
             "that then holds, recomputed from the ledger for 1, 2, 3 and all but one colluding holders of each sum, "
             "is under Refusals, caps and δ).")
    elif f["mode"] == "central":
        sees = ("under plain aggregation it sees each holder's clipped update, then adds the Gaussian noise to their sum"
                if agg == "plain" else "it sees the securely aggregated sum before adding the Gaussian noise")
        t = (f"The aggregator is trusted: {sees}. The guarantee protects holders against everyone who sees the model, "
             "not against the aggregator.")
    elif f["mode"] == "none":
        t = trust_without_dp(f)
    else:
        t = "unknown mode"
    if agg == "ckks+secagg":
        t += " " + CKKS_TRUST
    if record_level.on(f):
        t += (" Record-level DP-SGD inside each holder bounds what anyone, the coordinator included, can infer about "
              "one record (the unit its signed releases name) from what a holder sent (at that holder's record-level ε).")
        for caveat in record_level.coordinator_exceptions(f):   # membership (PV-36), reply timing (PV-40, PV-50)
            t += " " + caveat
    if f.get("deterministic_secrets"):
        t += (f" {NOT_PRIVATE}: deterministic_secrets is on, so every mask and noise sample is derived from the "
              "configuration's seed: whoever reads config.yaml can unmask every update and remove every noise sample.")
    return t


def trust_without_dp(f: dict) -> str:
    lead = "No holder-level DP noise" if record_level.on(f) else "No DP noise"
    if f.get("aggregation") == "plain":
        return (f"{lead} and no secure aggregation (aggregation: plain, a baseline only): the server sees every "
                "holder's clipped update, and nothing bounds holder-level inference from the released models.")
    return (f"{lead}: protection of a holder's update rests on secure aggregation alone (the server sees only sums), "
            "which bounds no holder-level inference from the released models.")


def unit_words(f: dict, dp: bool, rec: bool) -> str:
    record = record_level.record_unit_words(f) if rec else ""
    if dp:
        return ("one data holder (all of its records together): the guarantee covers a holder's whole contribution, "
                "which is stronger than record-level DP." + (f" Record-level DP-SGD adds a guarantee per record inside "
                                                             f"each holder: {record}." if rec else ""))
    if rec:
        return (f"one record inside a holder (record-level DP-SGD): {record}; no holder-level guarantee: holder-level "
                "DP was off")
    return "none: differential privacy was off"


def relation_words(f: dict, dp: bool, rec: bool) -> str:
    """The NIST table's neighbouring relation: the ledger's holder-level one only with holder-level DP (without it a
    relation bounds nothing; the row read "— one holder"), and the record-level one with DP-SGD."""
    if not dp and not rec:
        return "none: differential privacy was off"
    holder = (f"holder level: {_fmt(f['neighbouring_relation'])}, one holder ({_fmt(f['sampling'])} sampling of cohorts)"
              if dp else "holder level: none (holder-level DP was off)")
    return holder + (f"; record level: {RECORD_RELATION} one record, {record_level.record_unit_words(f)} "
                     "(Poisson batches)" if rec else "")


def parameter_words(f: dict, dp: bool, rec: bool, ok: bool) -> str:
    if not ok:
        return "not stated: the privacy records do not verify"
    out = "none: differential privacy was off (ε = ∞)" if not dp and not rec else (
        "holder level: none (ε = ∞)" if not dp else f"ε = {epsilon_text(f['epsilon'])}, δ = {_fmt(f['delta'])}")
    d, n = f.get("delta"), f.get("population")
    if dp and isinstance(d, (int, float)) and isinstance(n, int) and n > 0:
        out += f" (δ < 1/population = 1/{n})" if d < 1 / n else f" (δ ≥ 1/population = 1/{n}: no meaningful guarantee)"
    elif dp:
        out += " (whether δ < 1/population could not be checked)"
    if rec:
        out += "; record level: per holder, in What was protected"
    return out


def implementation_words(f: dict, dp: bool, rec: bool) -> str:
    if f.get("deterministic_secrets"):
        src = (f"{NOT_PRIVATE}: every noise sample and mask is derived from the configuration's seed "
               f"({_fmt(f.get('seed'))}) (deterministic_secrets); ")
    else:
        src = "noise from the OS CSPRNG (never a seeded library RNG); " if dp else ""
    out = src + ("integer noise and modular ring arithmetic (no floating-point noise in the released sum)"
                 if f["mode"] == "distributed" else "continuous float64 Gaussian noise at the server (floating-point "
                 "effects on the noise are not mitigated)" if f["mode"] == "central" else "no holder-level noise (DP off)")
    if rec:
        out += ("; record-level DP-SGD: floating-point Gaussian noise from torch generators, which are not CSPRNGs "
                "(protocols/dp.md §10)")
    return out
