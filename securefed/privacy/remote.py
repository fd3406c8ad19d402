"""The holder's side of a round's privacy: the public round spec, the one update encoder, the holder's own budget.

The coordinator publishes a :class:`RoundSpec` (protocols/dp.md §6.2; nothing secret: C, σ, δ, the
ring, γ, the share count n, the public rotation seed). A holder rebuilds the encoder from it
(:func:`spec_plan`) and encodes its Δ with :func:`spec_encode` — the only Δ → ring encoder in
securefed: ``RoundPrivacy.encode`` is this function applied to :func:`round_spec` of the round.

:class:`HolderBudget` is the holder's own hash-chained ledger and ε cap (protocols/federation.md §5).
The holder projects a round's cost from the spec it will itself encode with, assuming only the
fewest survivors the protocol allows (t_min: fewer noise shares, larger ε), and refuses before
training when the cap would be crossed. It charges a release durably *before* sending anything
that carries its data (``released``, at the worst case) and may settle it once the survivor list
is signed (``settled``, at the actual survivor count); a crash between the two leaves the
conservative charge. ε = RDP over each round's effective event (settled if present, else released).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from securefed.privacy.accountant import Accountant, RoundEvent, accountant_version
from securefed.privacy.clipping import ClipInfo, l2_clip
from securefed.privacy.encoders import DiscretePlan
from securefed.privacy.events import adaptive_sigma_b, round_event
from securefed.privacy.holder_ledger import holder_effective_events
from securefed.privacy.ledger import Ledger
from securefed.primitives.quantize import QuantizationPlan, RingSpec, plan_quantization, quantize
from securefed.primitives.rng import Entropy

__all__ = ["SPEC_VERSION", "RoundSpec", "round_spec", "spec_plan", "spec_encode", "spec_holder_event", "HolderBudget"]

SPEC_VERSION = 1
_MAX_SEED = 64
_UNSET_DELTA = 1e-5


@dataclass(frozen=True)
class RoundSpec:
    """The public description of one round's privacy plan (protocols/dp.md §6.2)."""

    round: int
    mode: Literal["none", "central", "distributed"]
    mechanism: Literal["none", "gaussian", "ddgauss", "skellam"]
    dim: int
    clip: float
    ring_bits: int
    noise_multiplier: float
    delta: float
    sampling: Literal["poisson", "fixed"]
    participants: tuple[int, ...]
    scale: float
    n_shares: int
    data_noise_multiplier: float = 0.0     # distributed only
    bit_weight: int = 0                    # distributed only (adaptive clipping coordinate)
    seed: str = ""                         # distributed only: the public rotation seed, hex
    adaptive_clip: bool = False            # the clip moves between rounds (its noisy count shares the noise)
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        def num(name: str, lo: float, hi: float = math.inf) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or not math.isfinite(v):
                raise ValueError(f"round spec field {name!r} must be a finite number in [{lo}, {hi}], got {v!r}")

        def integer(name: str, lo: int, hi: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"round spec field {name!r} must be an int in [{lo}, {hi}], got {v!r}")

        if isinstance(self.version, bool) or self.version != SPEC_VERSION:
            raise ValueError(f"round spec version {self.version!r} is not {SPEC_VERSION}")
        if not isinstance(self.seed, str):
            raise ValueError("round spec field 'seed' must be a string of lowercase hex")
        integer("round", 0, 2**31)
        integer("dim", 1, 2**40)
        integer("ring_bits", 1, 64)
        integer("n_shares", 1, 1 << 20)
        integer("bit_weight", 0, 1 << 30)
        for name in ("clip", "noise_multiplier", "scale", "data_noise_multiplier"):
            num(name, 0.0)
        num("delta", 0.0, 1.0)
        if self.clip <= 0 or self.scale <= 0:
            raise ValueError("round spec: clip and scale must be > 0")
        if self.mode not in ("none", "central", "distributed") or self.sampling not in ("poisson", "fixed"):
            raise ValueError(f"round spec has unknown mode {self.mode!r} or sampling {self.sampling!r}")
        want = {"none": ("none",), "central": ("gaussian",), "distributed": ("ddgauss", "skellam")}[self.mode]
        if self.mechanism not in want:
            raise ValueError(f"round spec: mechanism {self.mechanism!r} does not fit mode {self.mode!r}")
        ids = self.participants
        if not isinstance(ids, tuple) or any(isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < 2**31 for h in ids):
            raise ValueError("round spec: participants must be a tuple of holder ids")
        if len(set(ids)) != len(ids) or list(ids) != sorted(ids):
            raise ValueError("round spec: participants must be sorted and distinct")
        if self.mode == "distributed":
            if self.data_noise_multiplier <= 0 or self.noise_multiplier <= 0:
                raise ValueError("round spec: a distributed plan needs noise")
            if not 0 < len(self.seed) <= 2 * _MAX_SEED or len(self.seed) % 2 or any(c not in "0123456789abcdef" for c in self.seed):
                raise ValueError(f"round spec: seed must be 1 to {_MAX_SEED} bytes of lowercase hex")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["participants"] = list(self.participants)
        return d

    @classmethod
    def from_dict(cls, d: object) -> "RoundSpec":
        if not isinstance(d, dict):
            raise ValueError("round spec must be a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        if not set(d) <= names or not {"round", "mode", "dim"} <= set(d):
            raise ValueError(f"round spec has unknown or missing fields: {sorted(set(d) ^ names)[:6]}")
        d = dict(d)
        if isinstance(d.get("participants"), list):
            d["participants"] = tuple(d["participants"])
        for k in ("clip", "noise_multiplier", "scale", "data_noise_multiplier", "delta"):  # JSON may drop ".0"
            if isinstance(d.get(k), int) and not isinstance(d.get(k), bool):
                d[k] = float(d[k])
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"round spec: {e}") from None

    def min_survivors(self, threshold_min: int | None) -> int:
        """Shares assumed in the sum for a worst-case projection: t_min, clamped to [1, n]."""
        n = self.n_shares
        return n if threshold_min is None else max(1, min(n, threshold_min))


def round_spec(rp) -> RoundSpec:
    """The public description of a :class:`~securefed.privacy.round.RoundPrivacy`."""
    s = rp._s
    common = dict(round=rp.round_index, mode=s.config.mode, dim=rp.dim, clip=float(rp.clip_bound),
                  ring_bits=rp.ring.bits, noise_multiplier=float(rp.noise_multiplier), delta=float(s.delta),
                  sampling=s.sampling, participants=tuple(sorted(rp.participants)),
                  adaptive_clip=bool(s.config.adaptive_clip and s.config.dp_on))
    if isinstance(rp.plan, DiscretePlan):
        p = rp.plan
        return RoundSpec(mechanism=p.mechanism, scale=float(p.scale), n_shares=p.n_shares,
                         data_noise_multiplier=float(p.data_noise_multiplier), bit_weight=int(p.bit_weight),
                         seed=p.seed.hex(), **common)
    # central mode: n_shares is the population the quantization was planned for (dp.md §6.4), ≥ the participants
    n = rp.plan.max_clients if s.config.mode == "central" else max(1, len(rp.participants))
    return RoundSpec(mechanism="gaussian" if s.config.mode == "central" else "none", scale=float(rp.scale),
                     n_shares=n, **common)


def spec_plan(spec: RoundSpec) -> DiscretePlan | QuantizationPlan:
    """Rebuild the encoder plan (DiscretePlan, or a QuantizationPlan in modes none/central)."""
    if not isinstance(spec, RoundSpec):
        raise TypeError("spec must be a RoundSpec")
    if spec.mode == "distributed":
        plan = DiscretePlan(spec.mechanism, RingSpec(spec.ring_bits), spec.dim, spec.clip, spec.scale,
                            spec.data_noise_multiplier, spec.n_shares, spec.bit_weight, bytes.fromhex(spec.seed), spec.round)
        if plan.mechanism == "ddgauss" and plan.share_std < 0.5:
            raise ValueError("round spec gives a discrete Gaussian share below 1/2")
        return plan
    # plan_quantization refuses a scale that could wrap the ring for n_shares holders
    return plan_quantization(clip=spec.clip, ring_bits=spec.ring_bits, max_clients=spec.n_shares, scale=spec.scale)


def spec_encode(spec: RoundSpec, delta: np.ndarray, entropy: Entropy, *,
                clipped: tuple[np.ndarray, ClipInfo] | None = None, executor=None) -> tuple[np.ndarray, ClipInfo]:
    """float32 Δ → ring vector: clip to C, [rotate + discrete noise share], quantize (protocols/dp.md §3).

    ``clipped``: an already clipped (part of a) update and the ClipInfo of the whole Δ — the hybrid
    route quantizes only its masked part (protocols/ckks.md §routing), with the same plan. ``executor``:
    threads for the rounding (``quantize``; the same bits)."""
    plan = spec_plan(spec)
    if clipped is None:
        if not isinstance(delta, np.ndarray) or delta.shape != (spec.dim,):
            raise ValueError(f"delta must be a flat numpy vector of length {spec.dim}")
        x, info = l2_clip(delta, spec.clip)
    else:
        x, info = clipped
    if isinstance(plan, DiscretePlan):
        return plan.encode(x, not info.clipped, entropy), info
    return quantize(x, plan, entropy, executor=executor), info


def spec_holder_event(spec: RoundSpec, survivors: int | None = None) -> RoundEvent:
    """The holder-view event (no amplification) if ``survivors`` shares end in the sum (default: all) —
    the same ``events.round_event`` the server's accountant and the verifier use (protocols/dp.md §6.4:
    in central mode the sensitivity is that of the quantized contribution, not C)."""
    plan = spec_plan(spec)
    m = spec.n_shares if survivors is None else survivors
    n = plan.n_shares if isinstance(plan, DiscretePlan) else plan.max_clients
    sigma_b = adaptive_sigma_b(spec.adaptive_clip and spec.mode != "none", n, spec.noise_multiplier)
    return round_event(mode=spec.mode, mechanism=spec.mechanism, sampling=spec.sampling, q=1.0, z=spec.noise_multiplier,
                       plan=plan, dim=spec.dim, survivors=m, sigma_b=sigma_b)


def _accountant(entries: list[dict]) -> Accountant:
    acc = Accountant("rdp")
    for ev in holder_effective_events(entries):
        acc.add(ev)
    return acc


class HolderBudget:
    """A holder's own ledger and ε cap (protocols/federation.md §5): refuse, release, settle."""

    def __init__(self, ledger_path: str | Path, *, holder_id: int, cap: float | None, delta: float | None,
                 run_id: str = "", signer=None, anchor=None, population: int | None = None) -> None:
        """``delta``: this holder's δ; None adopts the first DP plan's δ (:meth:`adopt_delta`), fixed after.
        ``anchor()``: called before and after every append, to record the ledger's length and head elsewhere
        (the holder's state file: a ledger cut back or deleted is then refused on restart, dp.md §7.2).
        ``population``: the size of the roster this holder knows, signed into every entry (protocols/dp.md §2.1:
        the N of the sampling rate the server's ε is amplified by; verify holds the server's claim to it)."""
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0):
            raise ValueError("cap must be a number > 0 or None")
        if population is not None and (isinstance(population, bool) or not isinstance(population, int) or population < 1):
            raise ValueError(f"population must be an int >= 1 or None, got {population!r}")
        self.population = population
        if delta is not None and not 0 < delta < 1:
            raise ValueError("delta must be in (0, 1)")
        self.holder_id, self.cap, self.run_id = holder_id, cap, run_id
        self._anchor = anchor or (lambda: None)
        self.ledger = Ledger(ledger_path, signer=signer)   # signed with the holder's own key (dp.md §7.2)
        for e in self.ledger.entries:
            if e.get("holder_id") != holder_id:
                raise ValueError(f"{ledger_path} is not the ledger of holder {holder_id}")
        charged = {float(e["delta"]) for e in self.ledger.entries if e.get("status") in ("released", "settled")
                   and e.get("mode") not in (None, "none")}
        if len(charged) > 1 or (delta is not None and charged and charged != {float(delta)}):
            raise ValueError(f"{ledger_path} was accounted at delta {sorted(charged)}, not {delta}")
        self.delta = float(delta) if delta is not None else (charged.pop() if charged else None)
        self._rebuild()

    def adopt_delta(self, delta: float) -> bool:
        """Fix δ on the first DP plan if the holder set none; False if δ is already fixed to another value."""
        if self.delta is None:
            self.delta = float(delta)
        return math.isclose(self.delta, delta, rel_tol=1e-12)

    def _rebuild(self) -> None:
        self.acc = _accountant(self.ledger.entries)

    def epsilon(self) -> float:
        return self.acc.epsilon(self._delta_or_unset)

    def projected(self, event: RoundEvent) -> float:
        return self.acc.epsilon(self._delta_or_unset, [event])

    @property
    def _delta_or_unset(self) -> float:
        # δ is unset only before the first DP release: then there is no event or only 'none' events (ε = ∞)
        return self.delta if self.delta is not None else _UNSET_DELTA

    def admits(self, spec: RoundSpec, *, min_survivors: int | None = None) -> tuple[bool, float]:
        """(joining keeps ε ≤ cap, projected ε) — decided BEFORE anything is sent; δ must be this holder's."""
        if self.delta is None or not math.isclose(spec.delta, self.delta, rel_tol=1e-12):
            raise ValueError(f"round spec delta {spec.delta:.3g} differs from this holder's delta {self.delta}")
        proj = self.projected(spec_holder_event(spec, spec.min_survivors(min_survivors)))
        return (self.cap is None or proj <= self.cap), proj

    def released_rounds(self) -> set[int]:
        return {int(e["round"]) for e in self.ledger.entries
                if e.get("status") == "released" and e.get("run_id") == self.run_id}

    def refused_rounds(self) -> dict[int, str]:
        """This run's rounds this holder refused, each with its (last) signed reason."""
        return {int(e["round"]): str(e.get("reason") or "") for e in self.ledger.entries
                if e.get("status") == "refused" and e.get("run_id") == self.run_id}

    def _append(self, spec: RoundSpec | None, round_index: int, status: str, event: RoundEvent | None,
                survivors: int | None = None, reason: str | None = None, record_level: dict | None = None) -> dict:
        fields = {"version": 1, "role": "holder", "run_id": self.run_id, "holder_id": self.holder_id,
                  "round": round_index, "status": status, "event": (event or RoundEvent("none")).to_dict(),
                  "cap": self.cap, "delta": spec.delta if spec else self.delta, "accountant": "rdp", "accountant_version": accountant_version("rdp"),
                  "mode": spec.mode if spec else None, "mechanism": spec.mechanism if spec else None,
                  "clip": spec.clip if spec else None, "noise_multiplier": spec.noise_multiplier if spec else None,
                  "ring_bits": spec.ring_bits if spec else None, "survivors": survivors, "reason": reason}
        if record_level is not None:
            fields["record_level"] = record_level
        if self.population is not None:   # optional: ledgers of holders that do not state it stay valid (dp.md §7.2)
            fields["population"] = self.population
        fields["epsilon"] = _accountant([*self.ledger.entries, fields]).epsilon(self._delta_or_unset)  # ε after this entry
        self._anchor()               # the state file already names this ledger's present length: never behind it
        entry = self.ledger.append(fields)
        self._rebuild()
        self._anchor()
        return entry

    def refuse(self, round_index: int, reason: str, spec: RoundSpec | None = None) -> dict:
        return self._append(spec, round_index, "refused", None, reason=reason[:500])

    def release(self, spec: RoundSpec, *, min_survivors: int | None, record_level: dict | None = None) -> dict:
        """Charge round ``spec.round`` at its worst case, durably, before the holder sends its data.
        ``record_level``: record-level DP-SGD's spend so far (:func:`record_level_entry`), signed with the release."""
        if spec.round in self.released_rounds():
            raise ValueError(f"round {spec.round} was already released: a holder releases each round once")
        m = spec.min_survivors(min_survivors)
        return self._append(spec, spec.round, "released", spec_holder_event(spec, m), survivors=m,
                            record_level=record_level)

    def settle(self, spec: RoundSpec, *, survivors: int) -> dict:
        """The signed survivor list is known: charge the round at the actual number of shares."""
        if spec.round not in self.released_rounds():
            raise ValueError(f"round {spec.round} was not released")
        return self._append(spec, spec.round, "settled", spec_holder_event(spec, survivors), survivors=survivors)
