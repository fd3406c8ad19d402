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
    """Small tensors via CKKS, the rest via pairwise masking (protocols/ckks.md §routing)."""
    from securefed.ckks import run_ckks_round

    r = inputs.round_index
    ckks_idx, sec_idx = sim.route_indices
    clipped, infos = {}, {}
    for h, d in inputs.deltas.items():
        c, infos[h] = rp.clip(h, d.numpy())
        clipped[h] = c
    plan = plan_quantization(clip=sim.cfg.privacy.clip, ring_bits=sim.cfg.aggregation.secagg.ring_bits,
                             max_clients=max(1, len(clipped)))
    ring_inputs = {h: quantize(c[sec_idx], plan, sim.entropy.for_party(r, h, "encode")) for h, c in clipped.items()}
    sec = _run_secure_sum(sim, ring_inputs, inputs)
    survivors = sorted(sec.survivors)
    he = run_ckks_round({h: clipped[h][ckks_idx] for h in survivors}, policy=sim.cfg.aggregation.ckks,
                        round_index=r, keyring=sim.ckks_keyring,
                        entropy_for=lambda party: sim.entropy.for_party(r, party, "ckks"))
    # a holder whose ciphertext was rejected is dropped from both halves: recompute the masked half
    if he.survivors != frozenset(survivors):
        keep = sorted(he.survivors)
        sec = _run_secure_sum(sim, {h: ring_inputs[h] for h in keep}, inputs)
        survivors = sorted(sec.survivors)
        he = run_ckks_round({h: clipped[h][ckks_idx] for h in survivors}, policy=sim.cfg.aggregation.ckks,
                            round_index=r, keyring=sim.ckks_keyring,
                            entropy_for=lambda party: sim.entropy.for_party(r, party, "ckks"))
    total = np.zeros(sim.dim, dtype=np.float64)
    total[sec_idx] = dequantize_sum(sec.total, plan)
    total[ckks_idx] = he.total
    total = rp.noise_plain_sum(total.astype(np.float32), sim.entropy.for_party(r, -1, "noise"))
    return AggregateResult(torch.from_numpy(np.asarray(total, dtype=np.float32)), tuple(survivors), infos,
                           sec.bytes_up + he.bytes_up, sec.bytes_down + he.bytes_down)
