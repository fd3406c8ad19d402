"""PrivacySession: the facade the runtime calls once per round (protocols/dp.md §3–§8).

    session = PrivacySession(cfg, population=N, cohort_size=m, rounds_planned=R, sampling="poisson", ledger_dir=d)
    rp = session.begin_round(r, cohort=ids, dim=P)        # BudgetExhausted at the server cap
    y_i = rp.encode(i, delta_i, entropy_i)                 # for i in rp.participants (refusers send nothing)
    s = rp.decode(Σ y_i mod 2^k, survivors=S, entropy=e)   # float32 sum, length P
    entry = rp.finish(survivors=S, clip_infos=infos)       # ledgers appended (holders first, then server)

With ``signer`` (the coordinator's Ed25519 identity key) every entry of the server ledger and of the
per-holder view ledgers is signed, and existing ledgers must carry valid signatures under that key
(protocols/dp.md §7.1).

Two ε are kept (protocols/dp.md §6): the *release* ε in RUN_DIR/privacy/ledger.jsonl (amplified by the
client sampling, against anyone who sees the models but not the cohorts) and each holder's own ε in
privacy/holders/holder-<id>.jsonl (no amplification, only rounds whose sum held its data: against the
coordinator, who knows the cohort). The ledgers are the source of truth: a new session on an existing
ledger_dir verifies and replays them, so resume neither loses nor double-counts a release.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Mapping, Sequence

from securefed.primitives.keys import IdentityKey
from securefed.privacy.accountant import (ACCOUNTANT_SCHEME, Accountant, RoundEvent, accountant_version,
                                          calibrate_noise_multiplier, epsilon_text, ledger_scheme)
from securefed.privacy.clipping import bit_noise_std, data_noise_multiplier
from securefed.privacy.config import BudgetExhausted, DPConfig, default_delta
from securefed.privacy.encoders import plan_discrete
from securefed.privacy.events import adaptive_sigma_b, plan_record, round_event
from securefed.privacy.ledger import END_FILE, Ledger, LedgerError, decode_floats, read_ledger, write_end_record
from securefed.privacy.round import RoundPrivacy
from securefed.privacy.verify import check_server_entries, check_view_entries
from securefed.primitives.quantize import plan_quantization

__all__ = ["PrivacySession", "plan_round", "plan_sigma_b", "calibrate_sigma", "run_scheme"]


def _int(name: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def plan_round(config: DPConfig, *, round_index: int, dim: int, n: int, z: float, clip: float, seed: bytes,
               population: int):
    """The encoder plan of one round for n participants (DiscretePlan, or a QuantizationPlan in modes none/central).

    Central mode plans the quantization for the whole ``population``, not for the n who take part
    (protocols/dp.md §6.4): γ, and with it the charged bound S, must not depend on who is in the round —
    the neighbour with n + 1 participants would be quantized at γ(n + 1), whose S(n + 1) > S(n)."""
    if config.mode == "distributed":
        sb = bit_noise_std(n, z) if config.adaptive_clip else None
        zd = z if sb is None else data_noise_multiplier(z, sb)
        return plan_discrete(mechanism=config.mechanism, ring_bits=config.ring_bits, dim=dim, clip=clip,
                             data_noise_multiplier=zd, n_shares=n, sigma_b=sb, seed=seed, round_index=round_index)
    clients = population if config.mode == "central" else n
    return plan_quantization(clip=clip, ring_bits=config.ring_bits, max_clients=max(1, clients))


def plan_sigma_b(config: DPConfig, plan, z: float) -> float | None:
    n = 0 if plan is None else (plan.n_shares if hasattr(plan, "n_shares") else plan.max_clients)
    return adaptive_sigma_b(config.adaptive_clip and config.dp_on, n, z)


def calibrate_sigma(config: DPConfig, *, dim: int, cohort_size: int, rounds: int, sampling: str, q: float, delta: float,
                    population: int, seed: bytes = b"securefed", scheme: int = ACCOUNTANT_SCHEME) -> float:
    """σ for ``config.target_epsilon`` over ``rounds`` rounds of the planned cohort with no dropouts (dp.md §5)."""
    mech = config.mechanism if config.dp_on else "none"

    def eps(z: float) -> float:
        plan = plan_round(config, round_index=0, dim=dim, n=cohort_size, z=z, clip=config.clip, seed=seed,
                          population=population)
        ev = round_event(mode=config.mode, mechanism=mech, sampling=sampling, q=q, z=z, plan=plan, dim=dim,
                         survivors=cohort_size, sigma_b=plan_sigma_b(config, plan, z))
        return Accountant(config.accountant, scheme).epsilon(delta, [ev] * rounds)

    return calibrate_noise_multiplier(eps, config.target_epsilon)


def run_scheme(ledger_dir: str | Path, server_entries: Sequence[dict] | None = None) -> int:
    """The accountant scheme of the run whose ledgers are in ``ledger_dir`` (dp.md §6.5): a resumed run keeps the
    scheme it began with, so its ε never changes under it — its server ledger's; with no server entry yet, the holder
    views of a round whose server entry was never appended (a coordinator stopped between the appends) say which (a
    view must not change scheme either); ACCOUNTANT_SCHEME for a run with neither. ``server_entries``: the server
    ledger's entries, where the caller has read them already. LedgerError if the entries mix schemes or name one this
    code does not recompute (or a ledger is malformed)."""
    d = Path(ledger_dir)
    if server_entries is None:
        server_entries = read_ledger(d / "ledger.jsonl")
    begun = list(server_entries) or [e for p in sorted((d / "holders").glob("holder-*.jsonl")) for e in read_ledger(p)[:1]]
    try:
        return ledger_scheme(begun)
    except ValueError as e:
        raise LedgerError(f"{d / 'ledger.jsonl'}: {e}") from None


class PrivacySession:
    def __init__(
        self,
        config: DPConfig,
        *,
        population: int,
        cohort_size: int,
        rounds_planned: int,
        sampling: Literal["poisson", "fixed"],
        ledger_dir: Path,
        holder_caps: Mapping[int, float] | None = None,
        public_seed: bytes = b"securefed",
        signer: IdentityKey | None = None,
        run_id: str | None = None,
    ) -> None:
        if not isinstance(config, DPConfig):
            raise TypeError("config must be a DPConfig")
        self.config = config
        self.population = _int("population", population, 1)
        self.cohort_size = _int("cohort_size", cohort_size, 1)
        if cohort_size > population:
            raise ValueError(f"cohort_size {cohort_size} exceeds population {population}")
        self.rounds_planned = _int("rounds_planned", rounds_planned, 1)
        if sampling not in ("poisson", "fixed"):
            raise ValueError(f"sampling must be 'poisson' or 'fixed', got {sampling!r}")
        self.sampling = sampling
        self.q = cohort_size / population
        self.delta = config.delta if config.delta is not None else default_delta(population)
        if config.dp_on and self.delta >= 1.0 / population:
            raise ValueError(f"delta {self.delta:.3g} must be < 1/population = {1.0 / population:.3g}")
        if config.accountant == "prv" and sampling != "poisson":
            raise ValueError("accountant 'prv' needs Poisson sampling; fixed-size sampling uses 'rdp'")
        self.holder_caps: dict[int, float] = {}
        for h, cap in (holder_caps or {}).items():
            if isinstance(h, bool) or not isinstance(h, int):
                raise TypeError("holder_caps keys must be int holder ids")
            if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0:
                raise ValueError(f"holder_caps[{h}] must be a number > 0, got {cap!r}")
            self.holder_caps[h] = float(cap)
        if self.holder_caps and not config.dp_on:
            raise ValueError("holder epsilon caps need DP (mode central or distributed)")
        if not isinstance(public_seed, (bytes, bytearray)):
            raise TypeError("public_seed must be bytes")
        self.public_seed = bytes(public_seed)
        if signer is not None and not isinstance(signer, IdentityKey):
            raise TypeError("signer must be a securefed.primitives.keys.IdentityKey")
        self.signer = signer
        if run_id is not None and not isinstance(run_id, str):
            raise TypeError("run_id must be a str")
        self.run_id = run_id
        self.ledger_dir = Path(ledger_dir)
        self._holder_ledgers: dict[int, Ledger] = {}
        self._holder_acc: dict[int, Accountant] = {}
        self._open: RoundPrivacy | None = None
        self._replay()

    # ---------------------------------------------------------------- state from the ledgers
    @property
    def neighbouring(self) -> str:
        if self.sampling == "fixed":
            return "replace-one"
        # distributed noise: the absent holder still runs the protocol with a zero Δ, so the number of
        # noise shares is the same in both worlds (protocols/dp.md §2, "zero-out")
        return "zero-out (add/remove)" if self.config.mode == "distributed" else "add/remove"

    def _replay(self) -> None:
        self.ledger = Ledger(self.ledger_dir / "ledger.jsonl", signer=self.signer)
        self.scheme = run_scheme(self.ledger_dir, self.ledger.entries)   # a resumed run keeps its own (dp.md §6.5)
        self.accountant = Accountant(self.config.accountant, self.scheme)
        self.clip = self.config.clip
        self.noise_multiplier = self.config.noise_multiplier
        for e in self.ledger.entries:
            for key, want in (("mode", self.config.mode), ("mechanism", self._mechanism), ("sampling", self.sampling),
                              ("population", self.population), ("ring_bits", self.config.ring_bits)):
                if e.get(key) != want:
                    raise LedgerError(f"ledger entry {e['seq']} has {key}={e.get(key)!r}, this run has {want!r}")
            if self.config.dp_on and not math.isclose(float(e["delta"]), self.delta, rel_tol=1e-12):
                raise LedgerError(f"ledger entry {e['seq']} was accounted at delta={e['delta']}, this run uses {self.delta}")
            self.accountant.add(RoundEvent.from_dict(e["event"]))
            self.clip = float(e["next_clip"])
            if self.config.dp_on:
                self.noise_multiplier = float(e["noise_multiplier"])
        # every event must follow from its recorded plan and every ε must recompute (dp.md §7.3)
        problems = check_server_entries(self.ledger.entries, str(self.ledger.path))
        if problems:
            raise LedgerError(f"{problems[0]}: refusing to continue from a ledger that does not verify")

    @property
    def _mechanism(self) -> str:
        return "none" if not self.config.dp_on else self.config.mechanism

    def _holder(self, h: int) -> tuple[Ledger, Accountant]:
        if h not in self._holder_ledgers:
            led = Ledger(self.ledger_dir / "holders" / f"holder-{h}.jsonl", signer=self.signer)
            problems = check_view_entries(h, led.entries, str(led.path))
            if problems:
                raise LedgerError(f"{problems[0]}: refusing to continue from a ledger that does not verify")
            acc = Accountant("rdp", self.scheme)
            for e in led.entries:
                if e["status"] == "included":
                    acc.add(RoundEvent.from_dict(e["event"]))
            self._holder_ledgers[h], self._holder_acc[h] = led, acc
        return self._holder_ledgers[h], self._holder_acc[h]

    def holder_included_rounds(self, h: int) -> list[int]:
        """The rounds whose released sum this ledger records holder ``h``'s update in (its view's ``included``
        entries): what a holder rejoining with no state of its own is told it has spent (federation.md §6)."""
        return [int(e["round"]) for e in self._holder(h)[0].entries if e.get("status") == "included"]

    def holder_cap(self, h: int) -> float | None:
        return self.holder_caps.get(h, self.config.holder_epsilon_cap)

    def holder_epsilon(self, h: int) -> float:
        return self._holder(h)[1].epsilon(self.delta)

    def epsilon_spent(self) -> tuple[float, float]:
        return self.accountant.epsilon(self.delta), self.delta

    # ---------------------------------------------------------------- planning
    def _plan(self, round_index: int, dim: int, n: int, z: float, clip: float):
        return plan_round(self.config, round_index=round_index, dim=dim, n=n, z=z, clip=clip, seed=self.public_seed,
                          population=self.population)

    def _sigma_b(self, plan, z: float) -> float | None:
        return plan_sigma_b(self.config, plan, z)

    def _event(self, plan, z: float, survivors: int, *, sampled: bool, dim: int) -> RoundEvent:
        q = self.q if sampled else 1.0  # holder view: same relation, no amplification
        return round_event(mode=self.config.mode, mechanism=self._mechanism, sampling=self.sampling, q=q, z=z, plan=plan,
                           dim=dim, survivors=survivors, sigma_b=self._sigma_b(plan, z))

    def _resolve_sigma(self, dim: int) -> float:
        if self.noise_multiplier is None:  # calibrate once, on the planned cohort, then it is in the ledger
            self.noise_multiplier = calibrate_sigma(self.config, dim=dim, cohort_size=self.cohort_size,
                                                    rounds=self.rounds_planned, sampling=self.sampling, q=self.q,
                                                    delta=self.delta, seed=self.public_seed, population=self.population,
                                                    scheme=self.scheme)
        return self.noise_multiplier

    # ---------------------------------------------------------------- rounds
    def begin_round(self, round_index: int, *, cohort: Sequence[int], dim: int, min_survivors: int | None = None,
                    refused: Mapping[int, str] | Sequence[int] = ()) -> RoundPrivacy:
        """Plan round ``round_index``; refusals by holder caps and the server cap are decided here,
        before anything is encoded. Holder checks assume ``min_survivors`` survivors (default: all).
        ``refused``: cohort members that refused the round themselves (their own caps or policy,
        protocols/federation.md §4), with their reasons if known: not participants, recorded as refused."""
        _int("round_index", round_index, 0)
        _int("dim", dim, 1)
        ids = tuple(cohort)
        for h in ids:
            _int("cohort holder id", h, 0)
        if len(set(ids)) != len(ids):
            raise ValueError("cohort has duplicate holder ids")
        if self._open is not None and self._open.decoded and not self._open.finished:
            raise RuntimeError("the previous round was decoded but not finished: its release must be recorded first")
        cfg = self.config
        z = self._resolve_sigma(dim) if cfg.dp_on else 0.0
        eps_now = self.accountant.epsilon(self.delta)
        if cfg.server_epsilon_cap is not None and eps_now >= cfg.server_epsilon_cap:
            raise BudgetExhausted(f"server epsilon cap {cfg.server_epsilon_cap} already spent (epsilon {epsilon_text(eps_now)})")
        own = dict(refused) if isinstance(refused, Mapping) else {h: "refused the round" for h in refused}
        if not set(own) <= set(ids):
            raise ValueError("refused holders must be members of the cohort")
        participants = [h for h in ids if h not in own]
        refused: list[int] = list(own)
        reasons: dict[int, str] = dict(own)
        while True:  # refusals shrink n, which changes each share: iterate to a fixed point
            n = len(participants)
            # central mode: a plan even for an empty round — the neighbour with one participant is quantized at the
            # population's γ, so the empty round is charged at that S, not at C
            plan = self._plan(round_index, dim, n, z, self.clip) if n or cfg.mode == "central" else None
            newly = []
            for h in participants:
                cap = self.holder_cap(h)
                if cap is None:
                    continue
                m = n if min_survivors is None else max(1, min(n, min_survivors))
                proj = self._holder(h)[1].epsilon(self.delta, [self._event(plan, z, m, sampled=False, dim=dim)])
                if proj > cap:
                    newly.append(h)
                    reasons[h] = (f"joining would take this holder's epsilon to {epsilon_text(proj)} (assuming {m} of {n} survive) "
                                  f"> its cap {cap:.4g}; it has spent {epsilon_text(self.holder_epsilon(h))}")
            if not newly:
                break
            refused.extend(newly)
            participants = [h for h in participants if h not in newly]
        if participants and cfg.server_epsilon_cap is not None:
            proj = self.accountant.epsilon(self.delta, [self._event(plan, z, len(participants), sampled=True, dim=dim)])
            if proj > cfg.server_epsilon_cap:
                raise BudgetExhausted(f"round {round_index} would take the server to epsilon {epsilon_text(proj)} > cap {cfg.server_epsilon_cap}")
        self._open = RoundPrivacy(self, round_index, ids, tuple(participants), tuple(refused), dim, plan, z)
        self._open.refusal_reasons = {h: reasons[h] for h in refused}
        return self._open

    def record(self, rp: RoundPrivacy, survivors: Sequence[int], noisy_fraction: float | None, next_clip: float,
               *, completing: bool = False, in_masked_sum: int | None = None) -> dict:
        """Append holder entries, then the server entry (called by RoundPrivacy.finish).

        ``completing``: this finishes the accounting of a release that already happened (a coordinator
        killed between the holder appends and the server append); a holder whose ledger already holds
        this round is not charged again. Without it, a round that runs again is a new release and is
        charged again."""
        z, surv = rp.noise_multiplier, tuple(sorted(survivors))
        plan_rec = plan_record(rp.plan, rp.dim, z, self._sigma_b(rp.plan, z)) if self.config.dp_on or rp.plan else None
        common = {"version": 1, "round": rp.round_index, "privacy_unit": "holder", "neighbouring_relation": self.neighbouring,
                  "mode": self.config.mode, "mechanism": self._mechanism, "clip": rp.clip_bound, "noise_multiplier": z,
                  "ring_bits": self.config.ring_bits, "delta": self.delta, "accountant": self.config.accountant,
                  "accountant_version": accountant_version(self.config.accountant, self.scheme), "sampling": self.sampling,
                  "plan": plan_rec, "n_survivors": len(surv)}
        if self.run_id is not None:
            common["run_id"] = self.run_id
        hev = self._event(rp.plan, z, len(surv), sampled=False, dim=rp.dim)
        reasons = getattr(rp, "refusal_reasons", {})
        # a run that records a round is not ended: an end record of an earlier end (resumed run) no longer holds
        (self.ledger_dir / END_FILE).unlink(missing_ok=True)
        for h in rp.cohort:
            led, acc = self._holder(h)
            if completing and any(e.get("round") == rp.round_index for e in led.entries):
                continue
            status = "refused" if h in rp.refused else ("included" if h in surv else "dropped")
            if status == "included":
                acc.add(hev)
            reason = reasons.get(h) if status == "refused" else (
                (rp.drop_reasons.get(h, "dropped out") + " before its update was in the sum: nothing of it was released")
                if status == "dropped" else None)
            led.append(dict(common, role="holder", holder_id=h, status=status, event=hev.to_dict(), epsilon=acc.epsilon(self.delta),
                            cap=self.holder_cap(h), accountant="rdp", accountant_version=accountant_version("rdp", self.scheme), reason=reason))
        ev = self._event(rp.plan, z, len(surv), sampled=True, dim=rp.dim)
        self.accountant.add(ev)
        eps = self.accountant.epsilon(self.delta)
        entry = self.ledger.append(dict(
            common, role="server", cohort_size=len(rp.cohort), cohort_size_planned=self.cohort_size, population=self.population,
            sampling_rate=self.q, participants=len(rp.participants), refused=list(rp.refused),
            survivors=list(surv), dim=rp.dim, encoded_dim=rp.encoded_dim, scale=rp.scale,
            noisy_within_clip_fraction=noisy_fraction, next_clip=next_clip, event=ev.to_dict(), epsilon=eps,
            reexecuted=any(e["round"] == rp.round_index for e in self.ledger.entries),
            **({"n_masked": in_masked_sum} if in_masked_sum is not None else {})))
        self.clip = next_clip
        return {k: decode_floats(v) for k, v in entry.items()}

    def close_run(self, *, model_sha256: str | None = None, own_ledgers: dict | None = None) -> dict:
        """Write the signed end-of-run record over every ledger of this session, the holders' own ledgers the
        coordinator can read (``own_ledgers``: holder → path, a simulation's) and the exported model
        (protocols/dp.md §7.4)."""
        return write_end_record(self.ledger_dir, run_id=self.run_id, signer=self.signer, model_sha256=model_sha256,
                                own_ledgers=own_ledgers)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"version": 1, "ledger_entries": len(self.ledger.entries), "ledger_head": self.ledger.head,
                "noise_multiplier": self.noise_multiplier, "clip": self.clip}

    def load_state_dict(self, state: dict) -> None:
        """Check the checkpoint's anchor against the ledger, then rebuild everything from the ledger.

        Entries written after the checkpoint are kept and counted: those releases happened."""
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("privacy state is malformed or of an unknown version")
        n, head = state.get("ledger_entries"), state.get("ledger_head")
        if isinstance(n, bool) or not isinstance(n, int) or not isinstance(head, str):
            raise ValueError("privacy state lacks ledger_entries/ledger_head")
        self._holder_ledgers.clear()
        self._holder_acc.clear()
        self._replay()
        if n > len(self.ledger.entries) or self.ledger.head_at(n) != head:
            raise LedgerError("the ledger does not extend the checkpoint's ledger (entries lost or rewritten)")
        self._open = None

    def summary(self) -> dict:
        eps, delta = self.epsilon_spent()
        return {"epsilon": eps, "delta": delta, "noise_multiplier": self.noise_multiplier, "clip": self.clip,
                "rounds_recorded": len(self.ledger.entries), "ledger_head": self.ledger.head,
                "ledger_signed": self.signer is not None}

