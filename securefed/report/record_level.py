"""The report's words about record-level DP-SGD inside the holders (protocols/dp.md §7.2, §10) and about
where the run's secret randomness came from (``deterministic_secrets``: runtime/parties.py).

The record-level ε stated is only ever ``Verification.record_level``: recomputed by `verify` from the
history each holder signed with its releases. When the privacy records do not verify, none is stated."""

from __future__ import annotations

from typing import Any

from securefed.privacy.accountant import epsilon_text
from securefed.report.privacy_checks import fmt_number

__all__ = ["record_facts", "mechanism_words", "protection_blocks", "noise_source_words", "coordinator_exceptions",
           "weak_epsilon_words", "WEAK_EPSILON",
           "record_unit_words", "timing_delta_words", "count_holders", "NOT_PRIVATE"]

NOT_PRIVATE = "NOT private: for tests"


def record_facts(run: dict) -> dict:
    """{"dp_sgd": the configured train.dp_sgd (enabled, noise_multiplier, max_grad_norm, delta, clipping, unit,
    max_rows_per_document) or None, "record_level": {holder id (str): {"epsilon", "delta", "steps", "unit"}} from
    the verified own ledgers, or None when
    the records do not verify (fail closed), "deterministic_secrets", "seed"}."""
    cfg = run.get("config") or {}
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    sgd = train.get("dp_sgd") if isinstance(train.get("dp_sgd"), dict) else None
    v = run.get("verification")
    ok = v is not None and v.ok and run["ledger"]["ok"]
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    return {"dp_sgd": dict({k: sgd.get(k) for k in ("enabled", "noise_multiplier", "max_grad_norm", "delta", "clipping",
                                                     "unit", "max_rows_per_document", "sample_rate",
                                                     "hide_batch_size")},
                           unit_field=data.get("unit_field"))
            if sgd else None,
            "record_level": {str(h): dict(r) for h, r in sorted(v.record_level.items())} if ok else None,
            "deterministic_secrets": cfg.get("deterministic_secrets") is True, "seed": cfg.get("seed")}


# what one record is, by train.dp_sgd.unit (dp.md §10.2)
UNIT_NAMES = {"sequence": "training sequence", "document": "document", "group": "group of documents"}


def record_unit_words(f: dict) -> str:
    """What one record is in this run, for the NIST table's unit and relation rows: from the units the holders'
    verified signed releases name (in network mode each holder's own holder.yaml decides), else config.yaml's
    (PV-53: the rows said "one training record" and "add/remove one training record" in document and group runs)."""
    sgd = f.get("dp_sgd") or {}
    signed = {str(h): (r.get("unit") or "sequence") for h, r in (f.get("record_level") or {}).items()}
    fields = {r.get("unit_field") for r in (f.get("record_level") or {}).values() if r.get("unit") == "group"}
    field = fields.pop() if len(fields) == 1 and None not in fields else sgd.get("unit_field")

    def one(u: str) -> str:
        return (f"one {UNIT_NAMES.get(u, u)}" + (f" sharing a {field or 'data.unit_field'} value (e.g. one patient)"
                                                  if u == "group" else " (a packed row)" if u == "sequence" else ""))
    units = set(signed.values()) or {sgd.get("unit") or "sequence"}
    if len(units) == 1:
        return one(units.pop())
    return "; ".join(f"holder-{h}: {one(u)}" for h, u in sorted(signed.items()))


def on(f: dict) -> bool:
    """Record-level DP-SGD ran (configured, or recorded in a verified own ledger)."""
    return bool((f.get("dp_sgd") or {}).get("enabled")) or bool(f.get("record_level"))


def noise_source_words(f: dict) -> str:
    """Where DP-SGD's batches and noise came from, with its limit (dp.md §10)."""
    if f.get("deterministic_secrets"):
        return (f"{NOT_PRIVATE} — deterministic_secrets is on: each holder's DP-SGD generators are seeded from the "
                f"configuration's seed ({fmt_number(f.get('seed'))}, in config.yaml), so whoever reads it can recompute every "
                "Poisson batch and every noise sample: no record-level guarantee holds against them.")
    return ("The Poisson batches and the Gaussian noise come from torch generators seeded with 64 bits from os.urandom "
            "per holder trainer (never from the run's seed). Limit (protocols/dp.md §10): torch's generators are not "
            "CSPRNGs and the noise is floating point (Opacus' secure_mode is not used).")


def mechanism_words(f: dict) -> str:
    """The record-level mechanism, from the configuration ("" when DP-SGD did not run)."""
    if not on(f):
        return ""
    sgd = f.get("dp_sgd") or {}
    # what each holder's verified signed releases say one record was: in network mode config.yaml is the
    # coordinator's, and each holder runs its own holder.yaml's dp_sgd — the signed unit is what ran
    signed = {str(h): (r.get("unit") or "sequence") for h, r in (f.get("record_level") or {}).items()}
    unit = sgd.get("unit") or "sequence"
    # the grouping field the holders signed (their own data.unit_field), else config.yaml's
    fields = {r.get("unit_field") for r in (f.get("record_level") or {}).values() if r.get("unit") == "group"}
    field = fields.pop() if len(fields) == 1 and None not in fields else sgd.get("unit_field")
    whole = {"document": "one record = one document: each document has rows of its own (never shared with another "
                         "document), documents are Poisson-sampled whole, and each of a document's k rows",
             "group": f"one record = all of a holder's documents with the same {field or 'data.unit_field'} "
                      "value (e.g. one patient): each document has rows of its own, a group's documents are Poisson-sampled "
                      "together, and each of a group's k rows"}
    names = UNIT_NAMES
    by_unit: dict[str, list[str]] = {}
    for h, u in signed.items():
        if u != unit:
            by_unit.setdefault(u, []).append(f"holder-{h}")
    differ = "; ".join(f"the signed releases of {', '.join(hs)} record DP-SGD steps per {names.get(u, u)}"
                       for u, hs in by_unit.items())
    if sgd.get("enabled") and unit in whole and by_unit:
        what = (f"Record-level DP-SGD inside each holder (train.dp_sgd, Opacus). config.yaml sets train.dp_sgd.unit="
                f"{unit}, but {differ} (for a training sequence one record is one row of packed text, and no guarantee "
                "is stated for a whole document). The unit column below says what one record is for each holder.")
    elif sgd.get("enabled") and unit in whole:
        what = (f"Record-level DP-SGD inside each holder (train.dp_sgd, Opacus), {whole[unit]} is clipped to L2 norm "
                f"{fmt_number(sgd.get('max_grad_norm'))}/k, so one record moves the clipped sum by at most "
                f"{fmt_number(sgd.get('max_grad_norm'))}; Gaussian noise with multiplier σ = "
                f"{fmt_number(sgd.get('noise_multiplier'))} is added to the sum.")
    elif sgd.get("enabled"):
        what = (f"Record-level DP-SGD inside each holder (train.dp_sgd, Opacus), one record = one training sequence (a row "
                f"of packed text): every local step clips each row's gradient to L2 norm "
                f"{fmt_number(sgd.get('max_grad_norm'))} and adds Gaussian noise with multiplier σ = "
                f"{fmt_number(sgd.get('noise_multiplier'))} to their sum, over Poisson-sampled batches. Rows are cut from "
                "the holder's documents joined end to end, so a document longer than a row, or sharing one, is NOT one "
                "record: no guarantee is stated for a whole document (train.dp_sgd.unit=document gives one).")
        for u, hs in by_unit.items():
            what += (f" The signed releases of {', '.join(hs)} record their steps per {names.get(u, u)} (their own "
                     "train.dp_sgd.unit): the unit column below says what one record is for each holder.")
    else:
        what = ("Record-level DP-SGD inside the holders: their own signed releases record it (this run's config.yaml "
                "does not enable train.dp_sgd, so its parameters are the holders' own).")
    who = count_holders(f)
    if who is None or who:
        whom = _samplers(f, who)
        what += (f" {whom.replace('each', 'Each', 1)} at q = batch size / its own record count, so its record-level ε — sent to the "
                 "coordinator every round and signed in its releases — reveals that count (protocols/dp.md §10.3); "
                 "train.dp_sgd.sample_rate sets a public q instead.")
        if who is None:
            what += " (No verified signed release here records a public q.)"
    else:
        rates = sorted({r.get("sample_rate") for r in (f.get("record_level") or {}).values()})
        what += (f" The sampling rate q = {' / '.join(fmt_number(q) for q in rates)} is public "
                 "(train.dp_sgd.sample_rate, signed in every holder's releases): no holder's ε depends on its record "
                 "count.")
    return what + hiding_words(f) + " " + noise_source_words(f)


def _samplers(f: dict, who: list[str] | None) -> str:
    """Who samples at q = B/N (count_holders' answer, not []), as the subject of a sentence."""
    if who is None or len(who) == len(f.get("record_level") or {}):
        return "each holder samples"
    return ", ".join(f"holder-{h}" for h in who) + (" sample" if len(who) > 1 else " samples")


def count_holders(f: dict) -> list[str] | None:
    """dp.md §10.3: the holders whose DP-SGD q = batch / records, a function of their record count — from the
    holders' verified signed releases (each runs its own holder.yaml's train.dp_sgd: config.yaml is the
    coordinator's word, PV-56): [] when every holder signed a public q (or none ran DP-SGD); None (every holder)
    when DP-SGD is configured but no verified signed release says which q ran (records that do not verify, or a
    network run's directory without the holders' own ledgers)."""
    rl = f.get("record_level")
    if rl:
        return sorted((h for h, r in rl.items() if r.get("sample_rate") is None), key=lambda h: int(h))
    return None if (f.get("dp_sgd") or {}).get("enabled") else []


def hiding_words(f: dict) -> str:
    """Whether a step's compute showed its Poisson batch size (dp.md §10.4): per holder from its verified signed
    releases (each signs the rows it padded to; its own holder.yaml decides in network mode). Hiding is never
    stated from config.yaml alone: without a verified signed release (records that do not verify, or a network run
    whose holders' own ledgers are not here) the configured setting is named, not claimed to have run."""
    signed = {str(h): r.get("padded_rows") for h, r in (f.get("record_level") or {}).items()}
    if signed:
        hidden = sorted(h for h, rows in signed.items() if rows)
        shown = sorted(h for h, rows in signed.items() if not rows)
    elif (f.get("dp_sgd") or {}).get("hide_batch_size"):
        return (" config.yaml sets train.dp_sgd.hide_batch_size, but no verified signed release of a holder records "
                "a padded batch (each holder's own dp_sgd decides what it runs), so this report cannot state that a "
                "step's compute did not show its Poisson batch size (protocols/dp.md §10.4).")
    else:
        hidden, shown = [], ["every holder"]

    def names(hs: list[str]) -> str:
        return ", ".join(h if h == "every holder" else f"holder-{h}" for h in hs)

    out = ""
    if hidden:
        out += (f" Every DP-SGD step of {names(hidden)} ran one padded batch (train.dp_sgd.hide_batch_size), so a step's "
                "compute did not show how many records its Poisson draw took (protocols/dp.md §10.4).")
    if shown:
        out += (f" A DP-SGD step's compute grows with its Poisson batch, so the time a reply of {names(shown)} took shows "
                "roughly how many records it drew, outside the accountant (protocols/dp.md §10.4); "
                "train.dp_sgd.hide_batch_size pads every step to one size.")
    return out


def timing_delta_words(rl: dict) -> str:
    """dp.md §10.4 rule 4: a hidden holder's Poisson batch outgrows its pad with probability ≤ HIDE_TAIL a step, and
    that step's compute shows; against an observer of reply times its δ is larger by at most (1 + e^ε)·steps ×
    HIDE_TAIL, at its record-level ε (dpsgd.timing_delta; PV-34: steps × HIDE_TAIL alone understated it)."""
    from securefed.privacy.dpsgd import HIDE_TAIL, timing_delta

    extra = {h: timing_delta(float(r.get("epsilon") or 0.0), int(r.get("steps") or 0))
             for h, r in rl.items() if r.get("padded_rows")}
    if not extra:
        return ""
    each = ", ".join(f"holder-{h} {fmt_number(x)}" for h, x in extra.items())
    return (f"Timing: a step whose Poisson batch outgrew its padded batch (probability ≤ {HIDE_TAIL:g} a step) ran longer "
            f"and showed it, so against anyone timing the replies each of these holders' record-level δ is larger by at "
            f"most (1 + e^ε) × its steps × {HIDE_TAIL:g}, at its ε above: {each} (protocols/dp.md §10.4).")


def count_caveat(f: dict) -> str:
    """PV-36: with q = batch / records (train.dp_sgd.sample_rate unset, dp.md §10.3) the guarantee "against the
    coordinator" does not cover whether a record is there: the ε each holder sends every round and the q it signs are
    functions of its record count, and a record (a document of k rows, a group) moves that count. Who: the holders
    whose verified signed releases record no public q (count_holders; PV-56: it was config.yaml's word, so a
    holder running its own q = B/N under a coordinator config with a public rate had no caveat). "" when none."""
    who = count_holders(f)
    if who == []:
        return ""
    whom = _samplers(f, who)
    unverified = " (no verified signed release here records a public q)" if who is None else ""
    return (f"Except for membership: {whom} at q = batch size / its own record count{unverified}, and the ε it sends "
            "the coordinator every round and the q it signs give that count away, so the coordinator — and any reader "
            "of the ledgers — who knows the rest of a holder's data can tell whether one record (a document of k rows, a "
            "group) was added or removed; against them the guarantee covers what a record changes in the updates, not "
            "whether it is there. train.dp_sgd.sample_rate (a public q) closes this (protocols/dp.md §10.3).")


def timing_caveat(rl: dict | None) -> str:
    """PV-40: the guarantee "against the coordinator" assumes each Poisson batch secret, but a holder whose signed
    releases record no padded batch shows its batch sizes in the time its replies take (dp.md §10.4). "" when every
    holder padded. Without a verified signed release (``rl`` None or empty) no padding is claimed (hiding_words)."""
    if not rl:
        return ("Nor against whoever times the holders' replies (the coordinator does), unless a holder padded its "
                "steps: no verified signed release here records a padded batch, and an unpadded step's time shows "
                "roughly how many records its Poisson draw took, which the accountant assumes secret "
                "(train.dp_sgd.hide_batch_size; protocols/dp.md §10.4).")
    shown = sorted(h for h, r in rl.items() if not r.get("padded_rows"))
    if not shown:
        return ""
    return (f"Nor, for {', '.join(f'holder-{h}' for h in shown)}, against whoever times its replies (the coordinator "
            "does): its steps were not padded, so a reply's time shows roughly how many records each Poisson draw took, "
            "which the accountant assumes secret; train.dp_sgd.hide_batch_size closes this (protocols/dp.md §10.4).")


def coordinator_exceptions(f: dict) -> list[str]:
    """What the record-level guarantee "against the coordinator" does not cover (PV-36 membership by the record count,
    PV-40 reply timing), the one source for every place that states that guarantee: the "What was protected" paragraph,
    the Trust model and the NIST table's trust row (PV-50: the last two named only the count)."""
    return [c for c in (count_caveat(f), timing_caveat(f.get("record_level"))) if c]


# the README's own ceiling ("ask for ... ε ≤ 8"): above it the report says plainly that the guarantee is weak
WEAK_EPSILON = 8.0


def weak_epsilon_words(level: str, epsilons: list) -> str:
    """A plain warning when the largest finite ``level`` ε is above WEAK_EPSILON ("" otherwise): the report stated
    ε = 18.61 per record with no word that such an ε bounds almost nothing (review C)."""
    import math

    vals = [float(e) for e in epsilons if isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e)]
    if not vals or max(vals) <= WEAK_EPSILON:
        return ""
    eps = max(vals)
    factor = f"{math.exp(eps):.3g}" if eps < 700 else "an astronomically large number"
    return (f"WARNING: a {level} ε of {epsilon_text(eps)} is a WEAK guarantee: it lets the probability of any outcome "
            f"differ by a factor up to e^ε ≈ {factor} between the two compared runs, which rules out little (ε ≤ 1 is "
            f"usually read as strong; the README asks for ε ≤ {WEAK_EPSILON:g}). Do not describe this run as giving "
            "meaningful protection at this level.")


def protection_blocks(f: dict) -> list:
    """The record-level guarantee, labelled apart from the holder-level one: per holder, cumulative over the
    DP-SGD steps its signed releases record, per record (its signed unit), at its δ ([] when DP-SGD did not run)."""
    if not on(f):
        return []
    rl = f.get("record_level")
    if rl is None:
        return ["Record-level guarantee (DP-SGD): no record-level ε is stated: the privacy records do not verify "
                "(see Ledger integrity)."]
    if not rl:
        return ["Record-level guarantee (DP-SGD): no holder's own ledger in this directory records a DP-SGD release, "
                "so no record-level ε is stated."]
    head = ("Record-level guarantee (DP-SGD), separate from the holder-level one: each single record of a holder — the "
            "unit column says whether a record is a training sequence (a packed row), a whole document or a group of "
            "documents about one person — is protected "
            "by that holder's record-level (ε, δ) below, against anyone who sees what the holder "
            "sent — its updates and every model built from them, the coordinator included (protocols/dp.md §10). Each ε "
            "is cumulative over the DP-SGD steps the holder's signed releases record (all of them, unless its state "
            "predates releases that carry them: protocols/dp.md §11), per record (the unit column), recomputed from the "
            "DP-SGD history the holder signed with each release.")
    for caveat in coordinator_exceptions(f):
        head += " " + caveat
    rows = [["holder", "record-level ε (cumulative, per record)", "δ", "DP-SGD steps", "unit (one record)"]]
    rows += [[f"holder-{h}", epsilon_text(r.get("epsilon")), fmt_number(r.get("delta")), fmt_number(r.get("steps")),
              r.get("unit") or "sequence"] for h, r in rl.items()]
    out: list = [head, ("table", rows)]
    weak = weak_epsilon_words("record-level", [r.get("epsilon") for r in rl.values()])
    if weak:
        out.append(weak)
    timing = timing_delta_words(rl)
    if timing:
        out.append(timing)
    if f.get("deterministic_secrets"):
        out.append(noise_source_words(f))
    return out
