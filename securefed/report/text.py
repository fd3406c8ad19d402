"""The report's words: facts pulled from the run files, and the plain-language sections."""

from __future__ import annotations

import math
from typing import Any

from securefed.report import privacy_checks

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
    return {
        "mode": last.get("mode", priv.get("mode", "unknown")),
        "mechanism": last.get("mechanism", "unknown"),
        "privacy_unit": last.get("privacy_unit", "holder"),
        "neighbouring_relation": last.get("neighbouring_relation", "unknown"),
        "epsilon": last.get("epsilon", "unknown") if es else "unknown",
        "delta": last.get("delta"),
        "noise_multiplier": last.get("noise_multiplier"),
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
        "tokens": run["summary"].get("tokens"),
        "rounds": run["summary"].get("rounds", len(metrics)),
    }


def sections(run: dict, f: dict) -> list:
    led = run["ledger"]
    dp = f["mode"] in ("central", "distributed")
    ver = run.get("verification")
    verdict = (f"Verified: {len(led['entries'])} entries, hash chain intact, head {led['head']}." if led["ok"]
               else f"NOT VERIFIED — {led['error']}. Treat every privacy number in this report as untrustworthy.")
    integrity = [verdict] + ([ver.banner()] if ver is not None and led["ok"] else []) + (
        [f"Problem: {p}" for p in ver.problems] + [f"Note: {n}" for n in ver.notes] if ver is not None else [])
    eps_words = (f"After {f['rounds_recorded']} recorded rounds the federation has spent ε = {_fmt(f['epsilon'])} at "
                 f"δ = {_fmt(f['delta'])}." if dp else "Differential privacy was off in this run: ε is infinite.")
    if not led["ok"]:  # fail closed: a ledger that does not verify states no ε
        eps_words = "No ε is stated: the privacy records do not verify (see Ledger integrity)."
    if dp and isinstance(f["delta"], (int, float)) and f["delta"] > 1e-3:
        eps_words += (f" WARNING: δ = {_fmt(f['delta'])} is large (the population is small): with probability up to δ the "
                      "guarantee may fail entirely; treat this run as a demonstration, not as meaningful protection.")
    trust = {
        "distributed": "The server is not trusted with individual updates: secure aggregation shows it only the sum of "
                       f"the survivors' masked vectors (aggregation: {_fmt(f['aggregation'])}; secure aggregation "
                       f"threshold: {_fmt(f['secagg_threshold'])}). The DP guarantee assumes the holders whose inputs "
                       "are in the sum added their noise shares honestly; noise missing because holders dropped out is "
                       "accounted (each round's ε uses the survivors' actual noise). Holders colluding with the server "
                       "remove their own shares from the noise: the guarantee degrades to that of the honest shares.",
        "central": "The aggregator is trusted: it sees the (securely aggregated or plain) sum before adding the Gaussian "
                   "noise. The guarantee protects holders against everyone who sees the model, not against the aggregator.",
        "none": trust_without_dp(f),
    }.get(f["mode"], "unknown mode")
    holders = run["holders"]
    worst = max((h["epsilon"] for h in holders.values() if h.get("ok")), default=None)
    broken = [name for name, h in holders.items() if not h.get("ok")]
    if broken and dp:  # never state a maximum that silently leaves out a ledger we could not read
        eps_words += (f" The largest ε in any holder's own ledger is unknown: the ledger of {', '.join(broken)} "
                      "is broken.")
    elif worst is not None and dp:
        eps_words += f" The largest ε in any holder's own ledger (no amplification) is {_fmt(worst)}."
    hrows = [["holder", "ε (own ledger)", "cap", "rounds included", "refused", "dropped"]]
    for name, h in holders.items():
        if h.get("ok"):
            hrows.append([name, _fmt(h["epsilon"]), _fmt(h["cap"]), h["included"], h["refused"], h["dropped"]])
        else:
            hrows.append([name, "LEDGER BROKEN: " + h["error"], "", "", "", ""])
    params = [["parameter", "value"]] + [[k, _fmt(f[k])] for k in (
        "mode", "mechanism", "noise_multiplier", "clip_first", "clip_last", "adaptive_clip", "ring_bits", "population",
        "cohort_size_planned", "sampling", "sampling_rate", "delta", "epsilon", "server_epsilon_cap", "holder_epsilon_cap",
        "accountant", "rounds_recorded", "reexecuted_rounds") if dp or k != "delta"]  # no δ without DP
    nist = [["factor (NIST SP 800-226)", "this run"],
            ["unit of privacy", "one data holder (all of its records together): the guarantee covers a holder's whole "
             "contribution, which is stronger than record-level DP. Optional DP-SGD adds a record-level guarantee inside a holder."],
            ["privacy parameters ε, δ", f"ε = {_fmt(f['epsilon'])}, δ = {_fmt(f['delta'])} (δ < 1/population)" if dp
             else "none: differential privacy was off (ε = ∞)"],
            ["neighbouring relation", f"{_fmt(f['neighbouring_relation'])} one holder ({_fmt(f['sampling'])} sampling of cohorts)"],
            ["accounting", f"{_fmt(f['accountant'])}; composition over all recorded rounds, re-executed rounds counted again"],
            ["trust model / threat", trust],
            ["implementation", ("noise from the OS CSPRNG (never a seeded library RNG); " if dp else "") + (
                "integer noise and modular ring arithmetic (no floating-point noise in the released sum)"
                if f["mode"] == "distributed" else "continuous float64 Gaussian noise at the server (floating-point "
                "effects on the noise are not mitigated)" if f["mode"] == "central" else "no noise (DP off)")
             + ("; hash-chained, fsync'ed ledgers verified when this report was made" if led["ok"] and not broken
                else "; hash-chained, fsync'ed ledgers — verification FAILED when this report was made (see above)")]]
    train = [["figure", "value"], ["federated eval perplexity", _fmt(f["fed_eval_ppl"])],
             ["centralized baseline eval perplexity", _fmt(f["central_eval_ppl"])],
             ["centralized baseline inner lr / batch", f"{_fmt(f['central_lr'])} / {_fmt(f['central_batch_size'])}"],
             ["tokens", _fmt(f["tokens"])],
             ["rounds", _fmt(f["rounds"])]]
    return [
        ("Ledger integrity", integrity),
        ("What was protected, in plain words", protection_words(f, dp, eps_words)),
        ("Mechanism", [_sentence(MECH_WORDS.get(f["mechanism"], str(f["mechanism"])))]),
        ("Trust model", [trust]),
        ("Weights", ["With DP on, every holder's update has the same weight (uniform averaging: the sum is divided by the "
                     "planned cohort size), so the sensitivity used by the accountant is the true one: one holder moves the "
                     "sum by at most C." if dp else "DP is off: holder weights follow the run's configured weighting."]),
        ("Parameters", [("table", params)]),
        ("NIST SP 800-226 factors", [("table", nist)]),
        ("Holder budgets", [("table", hrows)] if len(hrows) > 1 else ["No holder ledgers found."]),
        ("Refusals, caps and δ, in plain words", privacy_checks.plain_words(run, f) or ["No holder was refused and no cap applied."]),
        *([("Pre-flight check", pre)] if (pre := privacy_checks.preflight_blocks(run["run_dir"])) is not None else []),
        ("Training", [("table", train)]),
    ]


# ---------------------------------------------------------------- mode-matching words (issue 16)
def protection_words(f: dict, dp: bool, eps_words: str) -> list[str]:
    """The "What was protected" paragraphs, true to the run's privacy mode."""
    if not dp:
        return [f"Privacy unit: {f['privacy_unit']} — each data holder's pseudo-gradient in a round is clipped to L2 norm "
                f"C = {_fmt(f['clip_first'])} and quantized, but no noise is added: differential privacy was off, so the "
                "released models carry no formal guarantee about any holder's data. What protects the individual updates "
                "is secure aggregation alone (see Trust model).", eps_words]
    return [f"Privacy unit: {f['privacy_unit']} — each data holder's entire pseudo-gradient in a round is bounded in size "
            f"(clipped to L2 norm C) and then hidden by noise, so the released models reveal little about whether any one "
            f"holder took part.", eps_words,
            "Two ε are kept: the ledger above is the guarantee for the released models, with amplification by the random "
            "choice of cohorts (valid against anyone who does not know the cohorts); each holder's own ledger counts only "
            "the rounds its data was in, without that amplification (valid even against the coordinator). The ledger "
            "files themselves list who took part in each round: keep them with the coordinator's records; against a "
            "reader of the ledger only the holder ε holds.", sampling_words(f)]


def sampling_words(f: dict) -> str:
    """What the amplified ε takes on trust (protocols/dp.md §2.1), and where the unamplified ε is."""
    rate = (f"q = {_fmt(f['cohort_size_planned'])}/{_fmt(f['population'])} = {_fmt(f['sampling_rate'])}"
            if f.get("sampling_rate") is not None else "the stated sampling rate")
    return (f"The federation's ε above assumes the coordinator sampled the cohorts honestly and secretly at {rate} "
            f"({_fmt(f['sampling'])} sampling): amplification by sampling trusts the coordinator's sampler. `securefed "
            "verify` checks the population against the roster and the population each holder signed, and the cohort "
            "memberships the holders' own ledgers witness against q (see Ledger integrity); it cannot check that the "
            "draws were secret. The holders' own ε, which needs no such trust, is in the Holder budgets table below.")


def trust_without_dp(f: dict) -> str:
    if f.get("aggregation") == "plain":
        return ("No DP noise and no secure aggregation (aggregation: plain, a baseline only): the server sees every "
                "holder's clipped update, and nothing bounds inference from the released models.")
    return ("No DP noise: protection rests on secure aggregation alone (the server sees only sums), which bounds "
            "no inference from the released models.")
