"""One round's aggregation: the only place where holders' updates meet.

Modes (aggregation.mode):
- ``secagg`` (default): each holder's Δ is clipped and encoded into Z_2^k by the round's privacy object
  (clip → [rotation + discrete noise share] → quantize), then summed with pairwise-masked secure
  aggregation; the server learns only the ring sum of the survivors.
- ``ckks+secagg``: tensors chosen by the routing plan are summed as CKKS ciphertexts (TenSEAL), the rest
  through pairwise masking; DP modes none/central only.
- ``plain``: an explicit, warned baseline; the server sees every clipped update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from securefed.primitives.quantize import dequantize_sum, plan_quantization, quantize

__all__ = ["RoundInputs", "AggregateResult", "aggregate_round"]


@dataclass
class RoundInputs:
    deltas: dict[int, torch.Tensor]      # holder -> weighted Δ (float32, CPU)
    round_index: int
    model_hash: bytes
    weights: dict[int, float]            # holder -> aggregation weight already applied to its Δ


@dataclass
class AggregateResult:
    total: torch.Tensor                  # float32 sum over survivors (noise included where DP is on)
    survivors: tuple[int, ...]
    clip_infos: dict
    bytes_up: int
    bytes_down: int


def aggregate_round(sim, rp, inputs: RoundInputs) -> AggregateResult:
    """Route to the configured aggregation; ``sim`` supplies config, identities, entropy and run dir."""
    mode = sim.cfg.aggregation.mode
    if mode == "plain":
        return _plain(sim, rp, inputs)
    if mode == "secagg":
        return _secagg(sim, rp, inputs)
    return _hybrid(sim, rp, inputs)


def _plain(sim, rp, inputs: RoundInputs) -> AggregateResult:
    total, infos = None, {}
    for h, d in inputs.deltas.items():
        clipped, infos[h] = rp.clip(h, d.numpy())
        total = clipped.astype(np.float64) if total is None else total + clipped
    noised = rp.noise_plain_sum(total.astype(np.float32), sim.entropy.for_party(inputs.round_index, -1, "noise"))
    nbytes = sum(4 * d.numel() for d in inputs.deltas.values())
    return AggregateResult(torch.from_numpy(np.asarray(noised, dtype=np.float32)), tuple(sorted(inputs.deltas)),
                           infos, nbytes, 0)


def _run_secure_sum(sim, ring_inputs: dict[int, np.ndarray], inputs: RoundInputs):
    from securefed.secagg import run_secagg_round

    r = inputs.round_index
    transcript = None
    if sim.cfg.aggregation.transcript:
        transcript = sim.run_dir.transcript / f"round-{r:05d}"
    return run_secagg_round(
        ring_inputs,
        config=sim.cfg.aggregation.secagg,
        round_index=r,
        session_context=inputs.model_hash,
        identities={h: sim.identities[h] for h in ring_inputs},
        roster=sim.roster,
        entropy_for=lambda party: sim.entropy.for_party(r, party, "secagg"),
        dropouts=sim.dropout_plan(r, sorted(ring_inputs)),
        transcript_dir=transcript,
    )


def _secagg(sim, rp, inputs: RoundInputs) -> AggregateResult:
    r = inputs.round_index
    encoded, infos = {}, {}
    for h, d in inputs.deltas.items():
        encoded[h], infos[h] = rp.encode(h, d.numpy(), sim.entropy.for_party(r, h, "encode"))
    out = _run_secure_sum(sim, encoded, inputs)
    total = rp.decode(out.total, survivors=sorted(out.survivors), entropy=sim.entropy.for_party(r, -1, "noise"))
    return AggregateResult(torch.from_numpy(np.asarray(total, dtype=np.float32)), tuple(sorted(out.survivors)),
                           infos, out.bytes_up, out.bytes_down)


def _hybrid(sim, rp, inputs: RoundInputs) -> AggregateResult:
    """Small tensors via CKKS, the rest via pairwise masking (protocols/ckks.md §routing).

    CKKS runs first: holders whose ciphertexts are rejected never enter the masked sum, so no sum is
    ever released twice over different sets (two sums would expose the difference). Masking dropouts
    after that shrink only the masked half's survivor set B ⊆ A; the CKKS half (over A) is rescaled to
    the same denominator so each half is the weighted mean over its own survivors.
    """
    from securefed.ckks import run_ckks_round

    r = inputs.round_index
    plan = sim.route_plan
    clipped, infos = {}, {}
    for h, d in inputs.deltas.items():
        clipped[h], infos[h] = rp.clip(h, d.numpy())
    parts = {h: plan.split(c) for h, c in clipped.items()}  # (CKKS half, masked half), split once
    he = run_ckks_round({h: p[0] for h, p in parts.items()}, policy=sim.cfg.aggregation.ckks,
                        round_index=r, keyring=sim.ckks_keyring, server=sim.ckks_server,
                        entropy_for=lambda party: sim.entropy.for_party(r, party, "ckks"))
    a = sorted(he.survivors)
    if not a:
        from securefed.secagg import SecAggAborted

        raise SecAggAborted("no holder's CKKS upload was accepted")
    qplan = plan_quantization(clip=rp.clip_bound, ring_bits=sim.cfg.aggregation.secagg.ring_bits,
                              max_clients=len(a))
    ring_inputs = {h: quantize(parts[h][1], qplan, sim.entropy.for_party(r, h, "encode")) for h in a}
    sec = _run_secure_sum(sim, ring_inputs, inputs)
    b = sorted(sec.survivors)
    ckks_total = np.asarray(he.total, dtype=np.float64)
    if sim.cfg.privacy.mode == "none" and b != a:
        ckks_total = ckks_total * (sum(inputs.weights[h] for h in b) / sum(inputs.weights[h] for h in a))
    total = plan.merge(ckks_total, dequantize_sum(sec.total, qplan).astype(np.float64))
    total = rp.noise_plain_sum(total.astype(np.float32), sim.entropy.for_party(r, -1, "noise"))
    return AggregateResult(torch.from_numpy(np.asarray(total, dtype=np.float32)), tuple(b), infos,
                           sec.bytes_up + he.bytes_up, sec.bytes_down + he.bytes_down)
