"""Attacks through what holders send and what the server chooses: ring wrap, poisoning,
disaggregation across cohorts (Lam et al. ICML 2021) and downgrades. Each returns a Finding."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np

from securefed.audit.findings import MITIGATED, RESIDUAL, Finding
from securefed.audit.harness import CTX, Round, federation
from securefed.primitives.quantize import RingSpec, dequantize_sum, plan_quantization, quantize
from securefed.primitives.rng import DeterministicEntropy
from securefed.privacy.clipping import l2_clip
from securefed.secagg import SecAggConfig, encode, run_secagg_round

__all__ = ["ring_wrap", "poisoned_update", "disaggregation", "protocol_downgrade"]


def _unit_vectors(n: int, dim: int, seed: int, norm: float = 1.0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(1, n + 1):
        v = rng.standard_normal(dim)
        out[i] = (v / np.linalg.norm(v) * norm).astype(np.float32)
    return out


def _secure_sum(ring_inputs: dict[int, np.ndarray], bits: int, round_index: int = 0, seed: int = 0):
    ids, roster = federation(max(ring_inputs), seed)
    return run_secagg_round(ring_inputs, config=SecAggConfig(ring_bits=bits), round_index=round_index,
                            session_context=CTX, identities={i: ids[i] for i in ring_inputs}, roster=roster,
                            entropy_for=lambda i: DeterministicEntropy.from_int(5_000 + 97 * round_index + i))


def ring_wrap() -> Finding:
    """Honest encoders refuse wrap-prone plans; a malicious holder sends words that wrap the sum."""
    n, dim, clip = 5, 256, 1.0
    ev = {}
    try:
        plan_quantization(clip=clip, ring_bits=16, max_clients=40_000)
        ev["plan_refuses_wrapping_config"] = False
    except ValueError:
        ev["plan_refuses_wrapping_config"] = True
    plan = plan_quantization(clip=clip, ring_bits=32, max_clients=n)
    try:
        quantize(np.full(dim, 1.0), plan, DeterministicEntropy.from_int(1))  # norm 16 > clip 1
        ev["quantize_refuses_unclipped"] = False
    except ValueError:
        ev["quantize_refuses_unclipped"] = True
    # honest holders clip before quantizing (l2_clip leaves the margin float32 rounding needs: quantize allows no slack)
    xs = {i: l2_clip(x, clip)[0] for i, x in _unit_vectors(n, dim, 3, clip).items()}
    q = {i: quantize(x, plan, DeterministicEntropy.from_int(10 + i)) for i, x in xs.items()}
    honest = dequantize_sum(_secure_sum(q, 32).total, plan)
    ring = RingSpec(32)
    evil = dict(q)
    evil[1] = np.full(dim, (1 << 31) - 1, dtype=ring.dtype)  # the largest positive centred word, every coordinate
    got = dequantize_sum(_secure_sum(evil, 32).total, plan)
    true = sum(x.astype(np.float64) for x in xs.values())
    ev["honest_max_abs_error"] = float(np.max(np.abs(honest - true)))
    ev["honest_error_bound"] = plan.sum_error_bound  # includes the float32 rounding of dequantize_sum
    ev["malicious_aggregate_norm_over_n_clip"] = float(np.linalg.norm(got) / (n * clip))
    ev["malicious_max_coordinate_shift"] = float(np.max(np.abs(got - true)))
    ev["detected"] = False
    ok = ev["plan_refuses_wrapping_config"] and ev["quantize_refuses_unclipped"] and ev["honest_max_abs_error"] <= ev["honest_error_bound"]
    return Finding("SEC-07", "A holder sends ring values that would wrap the sum", RESIDUAL if ok else "VULNERABLE",
                   "Honest software cannot wrap: the quantization plan refuses rings too small for n·(γC+1) and "
                   "quantize refuses unclipped input; honest sums stay within the stated error bound. A modified "
                   "holder can still send any word of Z_2^k (secure aggregation hides inputs, so it cannot range-check "
                   f"them): one such holder pushed the decoded aggregate to {ev['malicious_aggregate_norm_over_n_clip']:.0f}× "
                   "the largest honest norm n·C, undetected. Recommendation: refuse an aggregate whose norm exceeds "
                   "|U3|·C + error bound (cheap, catches gross wrap), or range proofs / RoFL-style checks.",
                   ev, ("SA-19", "SYS-08"))


def poisoned_update() -> Finding:
    """What clipping enforces for honest holders, and how far a holder that skips it can move the model."""
    from securefed.privacy import DPConfig, PrivacySession

    n, dim, clip = 5, 512, 1.0
    ev = {}
    with tempfile.TemporaryDirectory() as tmp:
        sess = PrivacySession(DPConfig(mode="none", clip=clip, ring_bits=32), population=n, cohort_size=n,
                              rounds_planned=1, sampling="fixed", ledger_dir=Path(tmp))
        rp = sess.begin_round(0, cohort=list(range(1, n + 1)), dim=dim)
        huge = np.full(dim, 1e6, dtype=np.float32)
        enc, info = rp.encode(1, huge, DeterministicEntropy.from_int(2))
        alone = rp.plan.ring  # decode one holder's honest encoding on its own
        one = dequantize_sum(enc, rp.plan)
        ev["honest_encoder_clips_to"] = float(np.linalg.norm(one))
        ev["honest_reported_clipped"] = bool(info.clipped)
        # a holder that skips clipping: the largest centred word its share of the ring allows, every coordinate
        per_coord = (alone.modulus // 2 - 1) / rp.plan.scale
        ev["malicious_norm_over_clip"] = float(per_coord * math.sqrt(dim) / clip)
        ev["formula"] = "max per-holder norm ≈ (2^(k-1)/γ)·√P = n_max·C·√P (γ = 2^(k-1)/(n_max·C))"
    ok = abs(ev["honest_encoder_clips_to"] - clip) <= 1e-3 * clip + rp.plan.sum_error_bound * math.sqrt(dim)
    return Finding("SEC-08", "A malicious holder's unclipped or poisoned update", RESIDUAL if ok else "VULNERABLE",
                   f"Enforced: honest software clips every update to C before quantizing (a norm-{1e6 * math.sqrt(dim):.0g} "
                   f"update decoded at norm {ev['honest_encoder_clips_to']:.4f}). Not enforced: the server cannot check "
                   f"a masked input; a holder that skips clipping can contribute up to {ev['malicious_norm_over_clip']:.0f}·C "
                   "(any ring word) and, in distributed DP, may omit its noise share. DP still protects the others "
                   "(their noise shares are in the sum) but the model can be poisoned; robust aggregation is out of scope.",
                   ev, ("SA-19", "PV-02", "SYS-08"))


def _drift(v: np.ndarray, rho: float, rng) -> np.ndarray:
    """v moved by a random direction of relative size rho, re-clipped to the same norm."""
    d = rng.standard_normal(v.shape[0])
    w = v.astype(np.float64) + rho * np.linalg.norm(v) * d / np.linalg.norm(d)
    return w * (np.linalg.norm(v) / np.linalg.norm(w))


def disaggregation(dim: int = 1024, n: int = 8, noise_multiplier: float = 1.0) -> Finding:
    """Lam et al. (ICML 2021): sums over cohorts A and A∖{x} in two rounds give Δ_x = S_A − S_{A∖{x}}."""
    from securefed.privacy import DPConfig, PrivacySession

    x, clip = 1, 1.0
    deltas = _unit_vectors(n, dim, 11, clip)
    ev = {}
    for mode in ("none", "distributed"):
        cfg = (DPConfig(mode="none", clip=clip) if mode == "none" else
               DPConfig(mode="distributed", mechanism="ddgauss", clip=clip, noise_multiplier=noise_multiplier, delta=1e-5))
        with tempfile.TemporaryDirectory() as tmp:
            sess = PrivacySession(cfg, population=n, cohort_size=n, rounds_planned=2, sampling="fixed", ledger_dir=Path(tmp))
            sums = []
            for r, cohort in enumerate((list(range(1, n + 1)), list(range(2, n + 1)))):
                rp = sess.begin_round(r, cohort=cohort, dim=dim)
                enc, infos = {}, {}
                for h in cohort:
                    enc[h], infos[h] = rp.encode(h, deltas[h], DeterministicEntropy.from_int(300 + 10 * r + h))
                out = _secure_sum(enc, rp.ring.bits, r)
                sums.append(rp.decode(out.total, survivors=sorted(out.survivors), entropy=DeterministicEntropy.from_int(9)))
                rp.finish(survivors=sorted(out.survivors), clip_infos=infos)
            est = sums[0].astype(np.float64) - sums[1]
            cos = float(est @ deltas[x] / (np.linalg.norm(est) * np.linalg.norm(deltas[x])))
            ev[mode] = {"cosine(recovered, Δ_x)": round(cos, 4),
                        "relative_error": round(float(np.linalg.norm(est - deltas[x]) / np.linalg.norm(deltas[x])), 4),
                        "holder_x_ledger_epsilon": (None if mode == "none" else round(sess.holder_epsilon(x), 3))}
    # the model moved between the rounds: the others' updates drift by ρ (relative), no DP
    rng = np.random.default_rng(12)
    for rho in (0.1, 0.3):
        s_a = sum(deltas[h].astype(np.float64) for h in deltas)
        s_b = sum(_drift(deltas[h], rho, rng) for h in deltas if h != x)
        est = s_a - s_b
        ev[f"none_drift_{rho}"] = {"cosine(recovered, Δ_x)": round(float(est @ deltas[x] / (np.linalg.norm(est) * np.linalg.norm(deltas[x]))), 4)}
    ok = ev["none"]["cosine(recovered, Δ_x)"] > 0.99 and abs(ev["distributed"]["cosine(recovered, Δ_x)"]) < 0.2
    return Finding("SEC-09", "Disaggregation by varying cohorts across rounds (Lam et al. ICML 2021)",
                   RESIDUAL if ok else "VULNERABLE",
                   "A server that picks cohorts A and A∖{x} (same model, unchanged updates: the worst case) recovers x's "
                   f"update from two secure sums: cosine {ev['none']['cosine(recovered, Δ_x)']} without DP "
                   f"({ev['none_drift_0.1']['cosine(recovered, Δ_x)']} / {ev['none_drift_0.3']['cosine(recovered, Δ_x)']} "
                   "when the other 7 updates drift by 10% / 30% between the rounds, plain sums). Secure "
                   "aggregation alone cannot stop this (the server chooses cohorts); distributed DP bounds it: cosine "
                   f"{ev['distributed']['cosine(recovered, Δ_x)']} at z={noise_multiplier}, and the holder's own ledger "
                   f"charges both participations (ε={ev['distributed']['holder_x_ledger_epsilon']}, no amplification).",
                   ev, ("SA-08", "PV-06", "SYS-09"))


def protocol_downgrade() -> Finding:
    """Server offers a weaker ring, lower thresholds, a sparser graph or an old protocol version; plaintext."""
    ev = {}
    base = Round(n=7).server.start
    for name, change in (("ring_16_bits", {"ring_bits": 16}), ("threshold_minus_1", {"threshold": base.threshold - 1}),
                         ("t_min_minus_1", {"min_survivors": base.min_survivors - 1}), ("degree_2", {"degree": 2})):
        r = Round(n=7)
        forged = encode(dataclasses.replace(r.server.start, **change))
        r.deliver({i: forged for i in r.outbox})
        ev[name] = {"holders_aborted": len(r.aborted), "of": 7}
    r = Round(n=7)
    old = bytearray(r.outbox[1])
    old[4] = 0  # "SFSA" ‖ u8(version): version 0
    r.deliver({i: bytes(old) for i in r.outbox})
    ev["protocol_version_0"] = {"holders_refused": len(r.aborted), "of": 7}
    from securefed.runtime.config import load_run_config

    for name, ov in (("distributed_dp_over_plain", ["privacy.mode=distributed", "privacy.mechanism=ddgauss",
                                                     "privacy.noise_multiplier=1.0", "aggregation.mode=plain",
                                                     "federation.weighting=uniform"]),
                     ("ckks_without_opt_in", ["aggregation.mode=ckks+secagg"])):
        try:
            load_run_config(overrides=ov)
            ev[name] = "accepted"
        except (ValueError, TypeError) as e:
            ev[name] = "refused: " + str(e)[:70]
    ok = all(v["holders_aborted"] == 7 for k, v in ev.items() if isinstance(v, dict) and "holders_aborted" in v) \
        and ev["protocol_version_0"]["holders_refused"] == 7 and all(str(ev[k]).startswith("refused")
                                                                     for k in ("distributed_dp_over_plain", "ckks_without_opt_in"))
    return Finding("SEC-10", "Downgrade inside the protocol: weaker ring, lower thresholds, old version, plaintext",
                   MITIGATED if ok else "VULNERABLE",
                   "Holders recompute k, t, t_min and d from their own SecAggConfig and abort on any difference (C1); "
                   "frames of another protocol version are refused by the one decoder; distributed DP over plaintext "
                   "aggregation and CKKS without explicit opt-in are refused at configuration time. (Where the holder's "
                   "SecAggConfig itself comes from is SEC-11.)", ev, ("SA-08", "SA-12", "CK-02", "SYS-10"))
