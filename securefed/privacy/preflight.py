"""Pre-flight check: can this privacy configuration learn anything, and what will it cost? (protocols/dp.md §12)

Pure: from the resolved configuration pieces (no data, no model, no files) it computes, per round,
- the noise std per coordinate of the *decoded mean* the outer optimizer applies:
      √((z_Δ·C)² + n/(4γ²)) / m           (DP noise + rounding noise of n encodings, over m = cohort)
- the signal per coordinate of the clipped mean: s/√d with s = min(C, typical update norm) — what a
  mean of m aligned updates of norm s puts on an average coordinate;
- their ratio (noise-to-signal), the release ε of one round and of the planned rounds, and a holder's
  own ε (no amplification) over every round (the most it can join: PV-33).

It decides ``learnable``: the ratio must be at most √R (R planned rounds). That is optimistic — it
assumes the signal adds up coherently over R rounds while the noise adds up as √R — so a refusal is a
configuration that cannot learn even then (4 holders, a 1.4M-parameter model: ratio 300–800). A
configuration that is not learnable is refused unless forced (``force``, from ``privacy.force_unlearnable``).

A configured cap that the planned rounds will reach is a warning, not a refusal (``warnings``): the server
cap stops the federation before the round that would exceed it, a holder cap makes each holder refuse from
the round its own ε (assuming the fewest survivors it accepts) would exceed it; the warning names that round.

Parameters that give no guarantee at all raise :class:`PreflightError`, one error listing all of them:
δ ≥ 1/population, a holder cap below one round's cost (every holder would refuse every round), a server
cap below one round's cost, record-level DP-SGD with σ = 0 or δ > 1/records.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, Sequence

from securefed.privacy.accountant import ACCOUNTANT_SCHEME, SCHEMES, Accountant, RoundEvent, epsilon_text
from securefed.privacy.config import DPConfig, default_delta
from securefed.privacy.encoders import DiscretePlan
from securefed.privacy.events import quantized_sensitivity, round_event
from securefed.privacy.session import calibrate_sigma, plan_round, plan_sigma_b

__all__ = ["PreflightError", "RecordLevel", "Preflight", "preflight"]


class PreflightError(ValueError):
    """The privacy parameters give no guarantee (the message lists every reason)."""


@dataclass(frozen=True)
class RecordLevel:
    """Record-level DP-SGD inside one holder (``train.dp_sgd``), as the check needs it; the check takes one per
    holder (each at its own batch, steps and records) and states the one with the largest ε."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    batch_size: int  # expected (Poisson) batch
    records: int  # the rows this holder's batches are sampled from (q = batch / records)
    steps: int  # DP-SGD steps of this holder over the planned run (its K × every planned round: the most it can join, PV-33)
    max_records: int | None = None  # sequences of the largest holder: δ ≤ 1/records must hold for it too
    # unit=document (dp.md §10.2): ``records``/``max_records`` stay the rows the batches are sampled from, and
    # δ ≤ 1/documents is checked against the largest holder's documents instead
    unit: str = "sequence"
    max_documents: int | None = None
    sample_rate: float | None = None   # train.dp_sgd.sample_rate: a public q (else B / records, dp.md §10.3)
    documents: int | None = None       # unit=document / group: this holder's units (its signal per step)
    padded_rows: int | None = None     # train.dp_sgd.hide_batch_size: the rows every step pads to (dp.md §10.4)
    epsilon_cap: float | None = None   # train.dp_sgd.epsilon_cap: the holder refuses a round that would pass it (§10.5)
    rounds_steps: int | None = None    # DP-SGD steps of one round it joins (for the cap; default: steps)
    holder: int | None = None          # whose numbers these are (one RecordLevel per holder: the check states the worst)


@dataclass(frozen=True)
class Preflight:
    ok: bool  # learnable, or forced
    learnable: bool
    forced: bool
    reasons: tuple[str, ...]
    mode: str
    mechanism: str
    population: int
    cohort_size: int
    rounds: int
    dim: int
    sampling: str
    clip: float
    delta: float
    noise_multiplier: float  # σ (calibrated from target_epsilon when that was given)
    noise_std_mean: float  # per coordinate of the decoded mean, real units
    signal_per_coordinate: float
    noise_to_signal: float
    learnable_limit: float  # √R
    sensitivity_inflation: float  # accounted sensitivity / C (rounding; 1 for the plain float path)
    epsilon_per_round: float
    epsilon_planned: float
    holder_epsilon_planned: float
    record_level: dict | None = field(default=None)
    ring_bits: int = 32
    warnings: tuple[str, ...] = ()  # caps the planned rounds will reach (the run stops or holders refuse early)
    accountant_scheme: int = ACCOUNTANT_SCHEME  # the scheme the run accounts with (a resumed run keeps its own)

    @property
    def verdict(self) -> str:
        if self.learnable:
            return "learnable"
        return "not learnable: forced to train anyway" if self.forced else "not learnable: refused"

    def lines(self) -> list[str]:
        f = _fmt
        out = [f"pre-flight privacy check ({self.mode}{'' if self.mode == 'none' else ', ' + self.mechanism}): {self.verdict}"]
        if self.mode != "none":
            out.append(f"  noise per coordinate of the decoded mean {f(self.noise_std_mean)} vs clipped signal "
                       f"{f(self.signal_per_coordinate)} (C/√d with C = {f(self.clip)}, d = {self.dim}): noise/signal "
                       f"{f(self.noise_to_signal)} (learnable up to √R = {f(self.learnable_limit)})")
            out.append(f"  σ = {f(self.noise_multiplier)}, δ = {self.delta:.3g}; ε per round {epsilon_text(self.epsilon_per_round)}, "
                       f"after {self.rounds} rounds {epsilon_text(self.epsilon_planned)} (a holder's own, no amplification, "
                       f"{'if it is in all ' + str(self.rounds) + ' cohorts' if self.cohort_size < self.population else 'over them'}"
                       f": {epsilon_text(self.holder_epsilon_planned)})")
            if self.accountant_scheme != ACCOUNTANT_SCHEME:
                out.append(f"  accounted under scheme /{self.accountant_scheme}, which this run's ledger began with "
                           f"(new runs: /{ACCOUNTANT_SCHEME}; protocols/dp.md §6.5)")
            if self.sensitivity_inflation > 1.01:
                out.append(f"  rounding in a {self.ring_bits}-bit ring makes the sensitivity {f(self.sensitivity_inflation)}×C: "
                           "more ring bits would cost less privacy")
        else:   # the check does not know the aggregation mode: plain shows each update to the coordinator
            out.append(f"  {'no holder-level DP noise' if self.record_level else 'no DP noise'} (holder-level ε = ∞): "
                       "nothing bounds what the released models reveal about a holder's data as a whole; the "
                       "coordinator sees each update unless secure aggregation (aggregation.mode secagg or ckks+secagg) "
                       "hides it")
        if self.record_level:
            r = self.record_level
            doc = r.get("unit") in ("document", "group")
            per = {"document": "document (whole documents sampled; a document of k rows clipped to C/k per row)",
                   "group": "group of documents sharing a data.unit_field value (whole groups sampled; a group of k rows "
                            "clipped to C/k per row)"}.get(r.get("unit"), "training sequence (packed rows: a document is "
                                                                         "not one record)")
            if (r.get("holders") or 1) > 1 and r.get("holder") is not None:
                out.append(f"  the largest record-level ε of {r['holders']} holders is holder-{r['holder']}'s, each checked "
                           "at its own batch, local steps and records:")
            every = (f" (if it is in all {self.rounds} cohorts: a holder joins about {math.ceil(self.rounds * self.cohort_size / self.population)}"
                     " on average, and nothing but its own cap stops it joining more)"
                     if self.cohort_size < self.population else "")
            out.append(f"  record-level DP-SGD: σ = {f(r['noise_multiplier'])}, batch {r['batch_size']} of {r['records']} "
                       f"{'document-packed rows' if doc else 'records'}, {r['steps']} steps{every}: ε "
                       f"{epsilon_text(r['epsilon_planned'])} at δ = {r['delta']:.3g} per {per}"
                       f"; per-step noise/signal {f(r['noise_to_signal'])}")
            if not r.get("public_sample_rate"):
                out.append(f"  record-level sampling rate q = batch / records = {f(r['sample_rate'])} depends on each holder's "
                           "record count, which its record-level ε (sent to the coordinator every round) reveals; set "
                           "train.dp_sgd.sample_rate to a public q to keep the count private (protocols/dp.md §10.3)")
            if r.get("epsilon_cap") is None:
                out.append("  no record-level cap (train.dp_sgd.epsilon_cap): the run's batch size, local steps and rounds "
                           "decide each holder's record-level ε (dp.md §10.5)")
            elif r.get("cap_round"):
                out.append(f"  train.dp_sgd.epsilon_cap = {f(r['epsilon_cap'])} will be reached: "
                           f"{'holder-' + str(r['holder']) if r.get('holder') is not None else 'a holder'} refuses its "
                           f"{r['cap_round']}{_nth(r['cap_round'])} round and every later one (each would pass the cap)")
            else:
                out.append(f"  record-level cap train.dp_sgd.epsilon_cap = {f(r['epsilon_cap'])}: not reached by the plan")
            if r.get("padded_rows"):
                from securefed.privacy.dpsgd import HIDE_TAIL, timing_delta

                # a preflight.json written before PV-34 has no timing_delta: the worst holder's numbers give it
                td = r.get("timing_delta", timing_delta(r["epsilon_planned"], r["steps"]))

                by = r.get("padded_rows_by_holder")
                rows = (", ".join(f"holder-{h} {p}" for h, p in by.items()) if by else f"at least {r['padded_rows']} rows "
                        f"({r['padded_rows'] / r['batch_size']:.2f}× the expected batch)")
                out.append(f"  record-level batch size hidden: every DP-SGD step runs one padded batch ({rows}), "
                           "whatever its Poisson draw, rounded up to whole ghost slices (train.dp_sgd.micro_batch_size; "
                           f"under bf16 without it, whole batches); a batch that outgrows it shows, so against anyone "
                           f"timing the replies the record-level δ is larger by at most (1 + e^ε) × steps × "
                           f"{HIDE_TAIL:g} = {td:.3g} at the planned ε (dp.md §10.4)")
            else:
                out.append("  record-level batch size NOT hidden: a step's compute, so a reply's timing, grows with its "
                           "Poisson batch; train.dp_sgd.hide_batch_size pads every step to one size (dp.md §10.4)")
        out.extend("  " + r for r in self.reasons)
        out.extend("  WARNING: " + w for w in self.warnings)
        return out

    def to_dict(self) -> dict:
        """Strict JSON (no NaN/∞: ∞ is the string "inf")."""
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["warnings"] = list(self.warnings)
        d["verdict"] = self.verdict
        d["lines"] = self.lines()
        return _strict(d)


def _fmt(v: float) -> str:
    return "∞" if math.isinf(v) else f"{v:.4g}"


def _strict(o):
    if isinstance(o, float) and not math.isfinite(o):
        return "inf" if o > 0 else ("-inf" if o < 0 else None)
    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    return o


def _first_over(cap: float, upto: int, eps_after) -> int | None:
    """The smallest k in 1..upto with eps_after(k) > cap (eps_after is non-decreasing in k), or None."""
    if upto < 1 or not eps_after(upto) > cap:
        return None
    lo, hi = 1, upto
    while lo < hi:
        mid = (lo + hi) // 2
        if eps_after(mid) > cap:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _cap_warnings(config: DPConfig, *, rounds: int, joins: int, q: float, eps_rounds, eps_holder) -> list[str]:
    """Warnings for caps the planned rounds will reach (M6): where the run stops, or holders start refusing."""
    out = []
    cap = config.server_epsilon_cap
    k = _first_over(cap, rounds, eps_rounds) if cap is not None else None
    if k is not None:
        out.append(f"privacy.server_epsilon_cap = {cap:g} is below the planned ε after {rounds} rounds "
                   f"({epsilon_text(eps_rounds(rounds))}): the federation will stop before round {k} (ε after {k} rounds would be "
                   f"{epsilon_text(eps_rounds(k))}), having run {k - 1} of {rounds} planned rounds")
    cap = config.holder_epsilon_cap
    k = _first_over(cap, joins, eps_holder) if cap is not None else None
    if k is not None:
        nth = f"{k}{_nth(k)}"
        when = f"round {k}" if q >= 1 else f"its {nth} round in a cohort (about round {min(rounds, math.ceil(k / q))} at q = {q:.3g})"
        out.append(f"privacy.holder_epsilon_cap = {cap:g} will be reached: a holder refuses a round whose own ε, assuming "
                   f"the fewest survivors it accepts, would exceed its cap ({epsilon_text(eps_holder(k))} at {when}), so each holder "
                   f"stops taking part from {when} on, before the {joins} rounds it may join")
    return out


def _nth(k: int) -> str:
    return "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")


def _record_levels(levels: RecordLevel | Sequence[RecordLevel], dim: int, problems: list[str]) -> dict | None:
    """Record-level DP-SGD of every holder (one RecordLevel each: its own batch, steps and records, as
    federation.holder_batch_sizes / holder_local_steps give them): each one's problems, and the numbers of the
    holder whose planned ε is the largest (the check states the worst, never the configured default's)."""
    levels = [levels] if isinstance(levels, RecordLevel) else list(levels)
    if not levels:
        return None
    found: list[dict] = []
    for r in levels:
        own: list[str] = []
        found.append(_record_level(r, dim, own))
        problems.extend(p for p in own if p not in problems)
    if any(not d for d in found):
        return {}
    worst = max(found, key=lambda d: (d["epsilon_planned"], d["noise_to_signal"]))
    out = dict(worst, holders=len(found))
    # dp.md §10.4 rule 4 (PV-34): the timing channel's extra δ, (1 + e^ε)·steps·HIDE_TAIL, is largest at the holder whose
    # ε and steps give the most — not necessarily the one with the largest ε (another may run more steps)
    from securefed.privacy.dpsgd import timing_delta

    hidden = [timing_delta(d["epsilon_planned"], d["steps"]) for d in found if d.get("padded_rows")]
    if hidden:
        out["timing_delta"] = max(hidden)
    pads = {d["holder"]: d["padded_rows"] for d in found}
    if len(set(pads.values())) > 1:
        out["padded_rows_by_holder"] = {str(h): p for h, p in pads.items()}
    return out


def _record_level(r: RecordLevel, dim: int, problems: list[str]) -> dict:
    # priced by the holder's own accountant (Opacus RDP, its default orders): what the holder signs, what its cap
    # refuses against (dp.md §10.5) and what verify recomputes. This module's order grid differs from Opacus' (an
    # audit: σ 6, 2 steps at q 0.0107 read ε 0.0114 here and 0.0659 there, so "cap 0.06 not reached" while every
    # holder refused every round)
    from securefed.privacy.holder_ledger import record_level_epsilon

    if r.noise_multiplier <= 0:
        problems.append("train.dp_sgd.noise_multiplier is 0: DP-SGD without noise gives no guarantee (ε = ∞)")
    if r.records < 1 or r.batch_size < 1 or r.steps < 0:
        problems.append("record-level DP-SGD needs records >= 1, batch_size >= 1 and steps >= 0")
        return {}
    largest = max(r.records, r.max_records or 0)   # δ ≤ 1/N binds hardest at the largest holder (an audit: it was
    what = "records"                                 # checked at the smallest, and the largest then failed mid-run)
    if r.unit in ("document", "group"):
        largest, what = max(1, r.max_documents or 0), "documents" if r.unit == "document" else "groups"
    if r.delta > 1.0 / largest:
        problems.append(f"train.dp_sgd.delta = {r.delta:g} exceeds 1/{what} = 1/{largest} of the largest holder: "
                        f"no meaningful record-level guarantee for its {what}; use delta <= 1/{what}")
    q = r.sample_rate if r.sample_rate is not None else min(1.0, r.batch_size / r.records)
    eps = math.inf
    if r.noise_multiplier > 0 and r.steps > 0:
        eps = record_level_epsilon([[r.noise_multiplier, q, r.steps]], r.delta)
    elif r.steps == 0:
        eps = 0.0
    cap_round = None   # dp.md §10.5: the first of its rounds the holder refuses under train.dp_sgd.epsilon_cap
    per_round = r.rounds_steps or r.steps
    if r.epsilon_cap is not None and r.noise_multiplier > 0 and per_round > 0 and eps > r.epsilon_cap:
        def after(k: int) -> float:
            return record_level_epsilon([[r.noise_multiplier, q, k * per_round]], r.delta)

        if after(1) > r.epsilon_cap:
            who = "" if r.holder is None else f" of holder {r.holder}"
            problems.append(f"train.dp_sgd.epsilon_cap = {r.epsilon_cap:g} is below the record-level cost of one round"
                            f"{who} ({epsilon_text(after(1))} for its {per_round} DP-SGD steps): it would refuse every round")
        else:
            cap_round = _first_over(r.epsilon_cap, max(1, r.steps // per_round), after)
    # per step: noise std σ·C_rec per coordinate of the summed clipped gradients vs the sum of E[batch] = q·N clipped
    # gradients' C_rec/√d each (with q = B/N: σ·√d/B; the divisor of the sum scales both alike). Under unit=document
    # or group a unit's k rows share one C_rec, so the signal is q·(units), not q·(rows): far less per step
    units = r.documents if r.unit in ("document", "group") and r.documents else r.records
    nts = r.noise_multiplier * math.sqrt(dim) / max(q * units, 1e-12)
    return {"noise_multiplier": r.noise_multiplier, "max_grad_norm": r.max_grad_norm, "delta": r.delta,
            "batch_size": r.batch_size, "records": r.records, "steps": r.steps, "sample_rate": q, "unit": r.unit,
            "epsilon_planned": eps, "noise_to_signal": nts, "public_sample_rate": r.sample_rate is not None,
            "padded_rows": r.padded_rows, "holder": r.holder, "epsilon_cap": r.epsilon_cap, "cap_round": cap_round}


def preflight(config: DPConfig, *, population: int, cohort_size: int, rounds: int, dim: int,
              sampling: Literal["poisson", "fixed"], typical_update_norm: float | None = None,
              min_survivors: int | None = None, record_level: RecordLevel | Sequence[RecordLevel] | None = None,
              force: bool | None = None, scheme: int = ACCOUNTANT_SCHEME) -> Preflight:
    """The pre-flight check (module doc). Raises PreflightError for parameters that give no guarantee.
    ``force`` (default: ``config.force_unlearnable``) lets a configuration that cannot learn train anyway.
    ``scheme``: the accountant scheme the run accounts with — a resumed run's is the one its ledger began with
    (session.run_scheme; dp.md §6.5), so that every ε here, σ calibrated from a target ε included, is the ledger's."""
    if not isinstance(config, DPConfig):
        raise TypeError("config must be a DPConfig")
    if isinstance(scheme, bool) or scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    for name, v in (("population", population), ("cohort_size", cohort_size), ("rounds", rounds), ("dim", dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if cohort_size > population:
        raise ValueError(f"cohort_size {cohort_size} exceeds population {population}")
    if sampling not in ("poisson", "fixed"):
        raise ValueError(f"sampling must be 'poisson' or 'fixed', got {sampling!r}")
    force = config.force_unlearnable if force is None else bool(force)
    problems: list[str] = []
    q = cohort_size / population
    delta = config.delta if config.delta is not None else default_delta(population)
    if config.dp_on and delta >= 1.0 / population:
        problems.append(f"privacy.delta = {delta:g} is at least 1/population = 1/{population}: no meaningful guarantee "
                        "(a mechanism that publishes one holder's whole update with probability δ satisfies it)")
    m = cohort_size
    mech = config.mechanism if config.dp_on else "none"
    z = 0.0
    if config.dp_on:
        z = config.noise_multiplier if config.noise_multiplier is not None else calibrate_sigma(
            config, dim=dim, cohort_size=m, rounds=rounds, sampling=sampling, q=q, delta=delta, population=population,
            scheme=scheme)
    plan = plan_round(config, round_index=1, dim=dim, n=m, z=z, clip=config.clip, seed=b"securefed/preflight",
                      population=population)
    sb = plan_sigma_b(config, plan, z)

    def ev(surv: int, qq: float) -> RoundEvent:
        return round_event(mode=config.mode, mechanism=mech, sampling=sampling, q=qq, z=z, plan=plan, dim=dim,
                           survivors=surv, sigma_b=sb)

    if isinstance(plan, DiscretePlan):
        z_data, gamma, infl = plan.data_noise_multiplier, plan.scale, plan.sensitivity()[1] / (plan.scale * plan.clip)
    else:
        z_data = (z if sb is None else (z**-2 - (2 * sb) ** -2) ** -0.5) if config.dp_on else 0.0
        gamma, infl = plan.scale, quantized_sensitivity(plan, dim) / plan.clip
    noise_mean = math.sqrt((z_data * config.clip) ** 2 + m / (4.0 * gamma**2)) / m
    s = config.clip if typical_update_norm is None else min(config.clip, float(typical_update_norm))
    signal = s / math.sqrt(dim)
    ratio = noise_mean / signal
    limit = math.sqrt(rounds)
    acc, holder_acc = Accountant(config.accountant, scheme), Accountant("rdp", scheme)   # as the session's ledgers
    eps_round = acc.epsilon(delta, [ev(m, q)]) if config.dp_on else math.inf
    eps_planned = acc.epsilon(delta, [ev(m, q)] * rounds) if config.dp_on else math.inf
    # a holder's own ε at the most rounds it can join: every one (PV-33). Under cohort sampling a holder drawn more
    # often than the expected ⌈R·q⌉ spends more, and nothing but its own cap stops it
    joins = rounds
    surv_min = m if min_survivors is None else max(1, min(m, min_survivors))
    holder_one = holder_acc.epsilon(delta, [ev(surv_min, 1.0)]) if config.dp_on else math.inf
    holder_planned = holder_acc.epsilon(delta, [ev(m, 1.0)] * joins) if config.dp_on else math.inf
    if config.holder_epsilon_cap is not None and holder_one > config.holder_epsilon_cap:
        problems.append(f"privacy.holder_epsilon_cap = {config.holder_epsilon_cap:g} is below the cost of one round to a "
                        f"holder ({epsilon_text(holder_one)}): every holder would refuse every round")
    if config.server_epsilon_cap is not None and eps_round > config.server_epsilon_cap:
        problems.append(f"privacy.server_epsilon_cap = {config.server_epsilon_cap:g} is below the cost of one round "
                        f"({epsilon_text(eps_round)}): the federation would stop before its first round")
    rec = _record_levels(record_level, dim, problems) if record_level is not None else None
    warns = _cap_warnings(config, rounds=rounds, joins=joins, q=q,
                          eps_rounds=lambda k: acc.epsilon(delta, [ev(m, q)] * k),
                          eps_holder=lambda k: holder_acc.epsilon(delta, [ev(m, 1.0)] * (k - 1) + [ev(surv_min, 1.0)])
                          ) if config.dp_on and not problems else []
    if problems:
        raise PreflightError("privacy parameters give no guarantee: " + "; ".join(problems))
    reasons: list[str] = []
    learnable = ratio <= limit
    if not learnable:
        need = math.ceil(m * ratio / limit)
        reasons.append(f"refused: the DP noise on each coordinate of the mean is {ratio:.3g}× the largest signal a "
                       f"clipped update can carry there; even if the signal added up over all {rounds} rounds the noise "
                       f"would win (limit √R = {limit:.3g}). Holder-level DP needs about {need} holders per round for "
                       f"this model, or a larger ε; with few holders ask for record-level DP-SGD (train.dp_sgd) inside "
                       "each holder instead (README, Differential privacy).")
        if force:
            reasons.append("privacy.force_unlearnable is set: training anyway, as a demonstration of the mechanism")
    return Preflight(ok=learnable or force, learnable=learnable, forced=bool(force) and not learnable, reasons=tuple(reasons),
                     mode=config.mode, mechanism=mech, population=population, cohort_size=m, rounds=rounds, dim=dim,
                     sampling=sampling, clip=config.clip, delta=delta, noise_multiplier=z, noise_std_mean=noise_mean,
                     signal_per_coordinate=signal, noise_to_signal=ratio, learnable_limit=limit,
                     sensitivity_inflation=infl, epsilon_per_round=eps_round, epsilon_planned=eps_planned,
                     holder_epsilon_planned=holder_planned, record_level=rec, ring_bits=config.ring_bits,
                     warnings=tuple(warns), accountant_scheme=scheme)
