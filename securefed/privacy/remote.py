"""Holder side of a round for a *remote* holder (network deployment): public round spec, local encode,
local budget.

The coordinator publishes :func:`round_spec` (JSON-safe, nothing secret: γ, w, σ, n, the public
rotation seed...). The holder rebuilds the encoder from it with :func:`spec_encode`, and keeps its own
hash-chained ledger with :class:`HolderBudget`, whose ε is computed from the plan the holder itself
encodes with (protocols/dp.md §6.2) — so the holder's accounting matches the noise it actually adds.
A holder MUST check ``spec["n_shares"]`` against the cohort it sees in secure aggregation (a server
that inflates n shrinks every share) and ``spec["round"]`` against the round it is asked to join.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from securefed.privacy.accountant import Accountant, RoundEvent, accountant_version
from securefed.privacy.clipping import ClipInfo, l2_clip
from securefed.privacy.encoders import DiscretePlan
from securefed.privacy.ledger import Ledger
from securefed.privacy.round import RoundPrivacy
from securefed.primitives.quantize import RingSpec, plan_quantization, quantize
from securefed.primitives.rng import Entropy

__all__ = ["SPEC_VERSION", "round_spec", "spec_plan", "spec_encode", "spec_holder_event", "HolderBudget"]

SPEC_VERSION = 1


def round_spec(rp: RoundPrivacy) -> dict:
    """The public description of ``rp`` that a remote holder needs to encode and account."""
    s = rp._s
    spec: dict[str, Any] = {"version": SPEC_VERSION, "round": rp.round_index, "mode": s.config.mode, "dim": rp.dim,
                            "clip": rp.clip_bound, "ring_bits": rp.ring.bits, "noise_multiplier": rp.noise_multiplier,
                            "delta": s.delta, "sampling": s.sampling, "participants": list(rp.participants)}
    if isinstance(rp.plan, DiscretePlan):
        p = rp.plan
        spec.update(mechanism=p.mechanism, scale=p.scale, data_noise_multiplier=p.data_noise_multiplier,
                    n_shares=p.n_shares, bit_weight=p.bit_weight, seed=p.seed.hex())
    else:
        spec.update(mechanism="gaussian" if s.config.mode == "central" else "none", scale=rp.scale,
                    n_shares=len(rp.participants))
    return spec


def _get(spec: dict, key: str, kind: type) -> Any:
    v = spec.get(key)
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise ValueError(f"round spec field {key!r} is missing or not a {kind.__name__}")
    return v


def spec_plan(spec: dict) -> DiscretePlan | Any:
    """Rebuild the encoder plan (DiscretePlan, or a QuantizationPlan in modes none/central)."""
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        raise ValueError("round spec is malformed or of an unknown version")
    mode = _get(spec, "mode", str)
    if mode == "distributed":
        plan = DiscretePlan(_get(spec, "mechanism", str), RingSpec(_get(spec, "ring_bits", int)), _get(spec, "dim", int),
                            _get(spec, "clip", float), _get(spec, "scale", float), _get(spec, "data_noise_multiplier", float),
                            _get(spec, "n_shares", int), _get(spec, "bit_weight", int), bytes.fromhex(_get(spec, "seed", str)),
                            _get(spec, "round", int))
        if plan.mechanism not in ("ddgauss", "skellam") or plan.n_shares < 1 or plan.scale <= 0 or plan.data_noise_multiplier <= 0:
            raise ValueError("round spec describes an invalid distributed plan")
        if plan.mechanism == "ddgauss" and plan.share_std < 0.5:
            raise ValueError("round spec gives a discrete Gaussian share below 1/2")
        return plan
    if mode not in ("none", "central"):
        raise ValueError(f"round spec has unknown mode {mode!r}")
    return plan_quantization(clip=_get(spec, "clip", float), ring_bits=_get(spec, "ring_bits", int),
                             max_clients=_get(spec, "n_shares", int), scale=_get(spec, "scale", float))


def spec_encode(spec: dict, delta: np.ndarray, entropy: Entropy) -> tuple[np.ndarray, ClipInfo]:
    """What RoundPrivacy.encode does, from the public spec only."""
    plan = spec_plan(spec)
    if not isinstance(delta, np.ndarray) or delta.shape != (spec["dim"],):
        raise ValueError(f"delta must be a flat numpy vector of length {spec['dim']}")
    x, info = l2_clip(delta, float(spec["clip"]))
    if isinstance(plan, DiscretePlan):
        return plan.encode(x, not info.clipped, entropy), info
    return quantize(x, plan, entropy), info


def spec_holder_event(spec: dict, survivors: int | None = None) -> RoundEvent:
    """The holder-view event (no amplification) if ``survivors`` shares end in the sum (default: all)."""
    plan = spec_plan(spec)
    samp = _get(spec, "sampling", str)
    mode = spec["mode"]
    if mode == "none":
        return RoundEvent("none", samp, 1.0)
    m = plan.n_shares if isinstance(plan, DiscretePlan) and survivors is None else (survivors or 0)
    if mode == "central":
        return RoundEvent("gaussian", samp, 1.0, noise_multiplier=_get(spec, "noise_multiplier", float))
    if m == 0:
        return RoundEvent("empty", samp, 1.0)
    l1, l2 = plan.sensitivity()
    z = _get(spec, "noise_multiplier", float)
    if plan.mechanism == "ddgauss":
        return RoundEvent("ddgauss", samp, 1.0, noise_multiplier=z, l1=l1, l2=l2, share_std=plan.share_std, n_shares=m, dim=plan.encoded_dim)
    return RoundEvent("skellam", samp, 1.0, noise_multiplier=z, l1=l1, l2=l2, dim=plan.encoded_dim, variance=m * plan.share_std**2)


class HolderBudget:
    """A remote holder's own ledger and cap (the same file format as the simulation's holder ledgers)."""

    def __init__(self, ledger_path: str | Path, *, holder_id: int, cap: float | None, delta: float) -> None:
        if cap is not None and not (isinstance(cap, (int, float)) and cap > 0):
            raise ValueError("cap must be a number > 0 or None")
        if not 0 < delta < 1:
            raise ValueError("delta must be in (0, 1)")
        self.holder_id, self.cap, self.delta = holder_id, cap, float(delta)
        self.ledger = Ledger(ledger_path)
        self.acc = Accountant("rdp")
        for e in self.ledger.entries:
            if e["status"] == "included":
                self.acc.add(RoundEvent.from_dict(e["event"]))

    def epsilon(self) -> float:
        return self.acc.epsilon(self.delta)

    def admits(self, spec: dict, *, min_survivors: int | None = None) -> bool:
        """Would joining keep ε ≤ cap? Decide BEFORE sending anything; refuse on a δ mismatch."""
        if not math.isclose(_get(spec, "delta", float), self.delta, rel_tol=1e-12):
            raise ValueError("round spec delta differs from this holder's delta")
        if self.cap is None:
            return True
        return self.acc.epsilon(self.delta, [spec_holder_event(spec, min_survivors)]) <= self.cap

    def record(self, spec: dict, *, status: str, survivors: int | None = None) -> dict:
        """Append this round: status "included" (with the number of shares in the sum), "dropped" or "refused"."""
        if status not in ("included", "dropped", "refused"):
            raise ValueError("status must be included, dropped or refused")
        ev = spec_holder_event(spec, survivors)
        if status == "included":
            self.acc.add(ev)
        return self.ledger.append({"version": 1, "role": "holder", "holder_id": self.holder_id, "round": spec["round"],
                                   "status": status, "mode": spec["mode"], "mechanism": spec["mechanism"],
                                   "clip": spec["clip"], "noise_multiplier": spec["noise_multiplier"],
                                   "ring_bits": spec["ring_bits"], "delta": self.delta, "event": ev.to_dict(),
                                   "epsilon": self.epsilon(), "cap": self.cap, "accountant": "rdp",
                                   "accountant_version": accountant_version("rdp")})
