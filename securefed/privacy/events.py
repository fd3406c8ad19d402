"""One place that turns a round's plan into the accountant's :class:`RoundEvent` (protocols/dp.md §6, §6.4).

PrivacySession calls :func:`round_event` when it accounts a round; the verifier calls it again on the plan
parameters recorded in each ledger entry (:func:`plan_record` / :func:`plan_from_record`) and demands the
same event, so an entry cannot claim less privacy loss than the mechanism it describes.

Sensitivity is that of **what is noised** (dp.md §6.4):
- distributed: the holder's integer vector after conditional rounding (and the adaptive-clipping bit),
  whose norms the plan bounds (KLS 2021 Thm. 1; ``DiscretePlan.sensitivity``);
- central: the server noises the *decoded* sum of quantized updates, and one holder's decoded
  contribution q_i/γ has norm ≤ Δ₂(γC, d)/γ (conditional rounding in ``primitives.quantize``), not C.
  The Gaussian event's noise multiplier is therefore the noise std over that bound.
"""

from __future__ import annotations

import math

from securefed.primitives.quantize import QuantizationPlan, RingSpec
from securefed.privacy.accountant import RoundEvent
from securefed.privacy.clipping import bit_noise_std, data_noise_multiplier
from securefed.privacy.encoders import DiscretePlan

__all__ = ["FLOAT_SLACK", "quantized_sensitivity", "gaussian_multiplier", "round_event", "plan_record",
           "plan_from_record", "adaptive_sigma_b"]

# float rounding of the decoded sum before the server's noise (the float32 casts on the plain and CKKS
# routes: relative 2^-24 per coordinate on a sum of at most n contributions, twice) — dp.md §6.4
FLOAT_SLACK = 2.0**-23


def quantized_sensitivity(plan: QuantizationPlan, dim: int) -> float:
    """L2 bound (real units) on one holder's contribution to the sum a central-mode server noises.

    ‖q_i‖₂ ≤ Δ₂ = plan.l2_bound(dim), so ‖q_i/γ‖₂ ≤ Δ₂/γ; a sum cast to float32 first moves by at most
    2^-24·(2n − 1)·Δ₂/γ more, which the factor 1 + (n + 1)·2^-23 covers. The same bound covers the plain route
    (contribution = the float32 clipped Δ, norm < C ≤ Δ₂/γ) and the CKKS+masking route (a smaller cohort
    has a larger γ, a part of the vector fewer coordinates, and Δ₂(γs, d)/γ grows with d, falls with γ).
    """
    return plan.l2_bound(dim) / plan.scale * (1.0 + (plan.max_clients + 1) * FLOAT_SLACK)


def gaussian_multiplier(*, data_noise_multiplier: float, clip: float, sensitivity: float, sigma_b: float | None) -> float:
    """Accounted multiplier of a central round: data noise std (z_Δ·C) over the data sensitivity, combined
    with the adaptive-clipping count (noise σ_b, sensitivity ½) by Andrew et al. 2021 §3.2:
    z = ((z_Δ·C/S)⁻² + (2σ_b)⁻²)^(−1/2)."""
    z = data_noise_multiplier * clip / sensitivity
    if sigma_b is None:
        return z
    return (z**-2 + (2.0 * sigma_b) ** -2) ** -0.5


def adaptive_sigma_b(adaptive_clip: bool, n: int, z: float) -> float | None:
    """σ_b of the adaptive-clipping count for n participants (None without adaptive clipping or DP)."""
    return bit_noise_std(max(1, n), z) if adaptive_clip and z > 0 else None


def round_event(*, mode: str, mechanism: str, sampling: str, q: float, z: float, plan, dim: int, survivors: int,
                sigma_b: float | None) -> RoundEvent:
    """The event of one release (q = sampling rate; 1 for a holder's own view)."""
    if mode == "none":
        return RoundEvent("none", sampling, q)
    if mode == "central":  # the server's noise does not depend on survivors (dp.md §6.1)
        if plan is None:  # nobody's data is in the sum
            return RoundEvent("gaussian", sampling, q, noise_multiplier=z)
        z_data = z if sigma_b is None else data_noise_multiplier(z, sigma_b)
        zz = gaussian_multiplier(data_noise_multiplier=z_data, clip=plan.clip, sensitivity=quantized_sensitivity(plan, dim),
                                 sigma_b=sigma_b)
        return RoundEvent("gaussian", sampling, q, noise_multiplier=zz)
    # distributed: under zero-out the survivor count does not depend on any one holder's data, so a round
    # whose sum holds no share released nothing (dp.md §6.1)
    if plan is None or survivors == 0:
        return RoundEvent("empty", sampling, q)
    l1, l2 = plan.sensitivity()
    m = survivors  # the shares actually in the sum: the dropout shortfall is accounted here
    if mechanism == "ddgauss":
        return RoundEvent("ddgauss", sampling, q, noise_multiplier=z, l1=l1, l2=l2, share_std=plan.share_std, n_shares=m,
                          dim=plan.encoded_dim)
    return RoundEvent("skellam", sampling, q, noise_multiplier=z, l1=l1, l2=l2, dim=plan.encoded_dim,
                      variance=m * plan.share_std**2)


def plan_record(plan, dim: int, z: float, sigma_b: float | None) -> dict | None:
    """The public plan parameters a verifier needs to rebuild the event (stored in every ledger entry)."""
    if plan is None:
        return None
    if isinstance(plan, DiscretePlan):
        return {"kind": "discrete", "mechanism": plan.mechanism, "ring_bits": plan.ring.bits, "dim": plan.dim,
                "clip": plan.clip, "scale": plan.scale, "data_noise_multiplier": plan.data_noise_multiplier,
                "n_planned": plan.n_shares, "bit_weight": plan.bit_weight, "sigma_b": sigma_b,
                "sensitivity_l2": plan.sensitivity()[1] / plan.scale, "noise_std": plan.data_noise_multiplier * plan.clip}
    z_data = z if sigma_b is None else data_noise_multiplier(z, sigma_b)
    return {"kind": "quantize", "ring_bits": plan.ring.bits, "dim": dim, "clip": plan.clip, "scale": plan.scale,
            "n_planned": plan.max_clients, "sigma_b": sigma_b, "data_noise_multiplier": z_data,
            "sensitivity_l2": quantized_sensitivity(plan, dim), "noise_std": z_data * plan.clip}


def plan_from_record(rec: dict | None):
    """Inverse of :func:`plan_record` (ValueError on a malformed record). Returns (plan, dim, sigma_b)."""
    if rec is None:
        return None, 0, None
    if not isinstance(rec, dict):
        raise ValueError("plan record is not an object")
    try:
        kind = rec["kind"]
        ring = RingSpec(int(rec["ring_bits"]))
        dim, clip, scale, n = int(rec["dim"]), float(rec["clip"]), float(rec["scale"]), int(rec["n_planned"])
        sigma_b = None if rec.get("sigma_b") is None else float(rec["sigma_b"])
        if kind == "discrete":
            plan = DiscretePlan(str(rec["mechanism"]), ring, dim, clip, scale, float(rec["data_noise_multiplier"]), n,
                                int(rec["bit_weight"]), b"", 0)
        elif kind == "quantize":
            plan = QuantizationPlan(clip=clip, ring=ring, max_clients=n, scale=scale)
        else:
            raise ValueError(f"unknown plan kind {kind!r}")
    except (KeyError, TypeError) as e:
        raise ValueError(f"plan record lacks or mistypes a field ({e})") from None
    if not (math.isfinite(scale) and scale > 0 and clip > 0 and n >= 1 and dim >= 1):
        raise ValueError("plan record has out-of-range values")
    return plan, dim, sigma_b
