"""Weight, clip and round a holder's update on the device it was trained on (protocols/secagg.md §6.6).

The host path is ``privacy.clipping.l2_clip`` then ``primitives.quantize.quantize``: one float32 copy of
Δ out of the GPU, then about ten passes over P float64 values on the CPU, holder after holder — on an
H200 at 125m × 8 holders, 11 s of a 51 s secure round (benchmarks/RESULTS.md (c13)). Here the same
arithmetic runs in torch where Δ already is, and only the ring vector (4 bytes per coordinate, what the
masks are added to) comes back to the host.

Same arithmetic, step by step (each is one IEEE operation, so CPU and CUDA give the same bits):
- weight: x = Δ ⊙ fl32(w) in float32 (numpy: ``delta * np.float32(weight)``);
- clip (dp.md §3.1): ‖x‖ in float64; if ‖x‖ ≤ C·(1 − 10⁻⁶) x is kept, else x ← fl32((fl64(x)·(C/‖x‖))·(1 − 10⁻⁶));
- checks (fail closed, as ``quantize``): ‖x‖ ≤ C and every |x_j| ≤ C, else ValueError;
- rounding (dp.md §6.4, conditional): y = fl64(x)·γ, lo = ⌊y⌋, q = lo + [u < (y − lo)·2³²] with u the
  32-bit little-endian words ``entropy`` yields, drawn in ``quantize_draws`` order (one draw per 2¹⁸
  coordinates), so a ``PrefetchedEntropy`` made for the host path serves this one unchanged; repeated with
  fresh bits until ‖q‖² passes ``accept_threshold(Δ₂(γ‖x‖, d), d, ROUNDING_CHUNK)``. That threshold's
  margin needs the sum's *structure*, not its order: ‖q‖² is formed as partial sums of ROUNDING_CHUNK
  squares each (any order within one: error ≤ (m − 1)·u), then the k partial sums (any order), exactly the
  host's structure. A margin for one flat sum of d terms (d·2⁻⁵², ~10⁻⁸ at d = 10⁸) would be wider than the
  slack the bound leaves above E‖q‖² when γ‖x‖ is large, and almost every try would be refused.

Given the same ‖x‖ and the same bits, q is bit-identical to the host path's. The two differ only where
they cannot be made to agree: ‖x‖ and ‖q‖² are float64 sums taken in another order (the device's
reduction tree, not BLAS's), so a clipped update's scale factor may differ in its last bit, and an
encoding whose ‖q‖² lies within a few ulps of the threshold may be accepted by one path and retried by
the other. Both are valid encodings under the same proven bound; the conformance tests run
both sides of a comparison on the same path.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from securefed.primitives.quantize import (MAX_ROUNDING_TRIES, ROUNDING_CHUNK, QuantizationPlan, accept_threshold,
                                           quantize_draws, rounded_l2_bound)
from securefed.primitives.rng import Entropy
from securefed.privacy.clipping import CLIP_MARGIN, ClipInfo

__all__ = ["clip_and_quantize_on_device"]

_SPAN = 64 * ROUNDING_CHUNK   # coordinates per device pass (64 of quantize's draws): bounds the temporaries
_TWO32 = 4294967296.0


def _sum_sq(x: torch.Tensor) -> float:
    """‖x‖² in float64, span by span (no float64 copy of all of x at once)."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for s in range(0, x.numel(), _SPAN):
        c = x[s : s + _SPAN].to(torch.float64)
        total += torch.dot(c, c)
    return float(total)


def _max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


@torch.no_grad()
def clip_and_quantize_on_device(delta: torch.Tensor, weight: float, plan: QuantizationPlan,
                                entropy: Entropy) -> tuple[np.ndarray, ClipInfo]:
    """w·Δ clipped to the plan's C and conditionally rounded into its ring, on Δ's device (module doc).

    Returns the ring vector on the host (``plan.ring.dtype``) and the ClipInfo of w·Δ. ``delta`` is a flat
    float32 tensor on any device; it is not modified."""
    if not isinstance(delta, torch.Tensor) or delta.ndim != 1 or delta.dtype != torch.float32:
        raise ValueError("delta must be a flat float32 tensor")
    clip = plan.clip
    x = delta * float(np.float32(weight))                  # float32 × float32, as the host path
    norm = math.sqrt(_sum_sq(x))
    if not math.isfinite(norm):
        raise ValueError("delta contains non-finite values")
    info = ClipInfo(norm=norm, clipped=norm > clip)
    if norm > clip * CLIP_MARGIN:                           # privacy.clipping.l2_clip, the same two products
        a = clip / norm
        for s in range(0, x.numel(), _SPAN):
            c = x[s : s + _SPAN]
            c.copy_((c.to(torch.float64) * a * CLIP_MARGIN).to(torch.float32))
        norm = math.sqrt(_sum_sq(x))
    if norm > clip or _max_abs(x) > clip:                  # quantize's check: no slack, fail closed
        raise ValueError(f"update norm {norm:.9g} exceeds the clip bound {clip:.9g}: clip before quantizing")
    d = x.numel()
    bound_sq = accept_threshold(rounded_l2_bound(plan.scale * norm, d), d, ROUNDING_CHUNK)
    draws = quantize_draws(d)
    per_span = _SPAN // ROUNDING_CHUNK
    ring_mask = plan.ring.mask
    cuda = x.device.type == "cuda"
    out = torch.empty(d, dtype=torch.int32, device=x.device)
    staging = torch.empty(4 * min(d, _SPAN), dtype=torch.uint8, pin_memory=cuda)   # one span's words, page-locked
    stage = staging.numpy()
    for _ in range(MAX_ROUNDING_TRIES):
        sq = torch.zeros((), dtype=torch.float64, device=x.device)
        for i, s in enumerate(range(0, d, _SPAN)):
            off = 0
            for n in draws[i * per_span : (i + 1) * per_span]:              # the host path's draws, in order
                stage[off : off + n] = np.frombuffer(entropy.random_bytes(n), dtype=np.uint8)
                off += n
            # a synchronous copy: the staging buffer is refilled for the next span right after
            u = staging[:off].view(torch.int32).to(x.device)
            u = (u.to(torch.int64) & 0xFFFFFFFF).to(torch.float64)      # the unsigned 32-bit words, exact
            y = x[s : s + _SPAN].to(torch.float64) * plan.scale
            lo = torch.floor(y)
            q = lo + (u < (y - lo) * _TWO32).to(torch.float64)           # exact integers, |q| < 2^31
            q2 = q * q                                                    # each square rounded once
            full = (q2.numel() // ROUNDING_CHUNK) * ROUNDING_CHUNK
            sq += q2[:full].view(-1, ROUNDING_CHUNK).sum(dim=1).sum() + q2[full:].sum()   # the host's block structure
            r = q.to(torch.int64) & ring_mask                             # two's complement into Z_2^k
            out[s : s + _SPAN] = (r - ((r >> 31) << 32)).to(torch.int32)  # the same 32 bits, as int32
        if float(sq) <= bound_sq:
            if cuda:   # one copy out, into page-locked memory (torch's host allocator caches the block)
                host_t = torch.empty(d, dtype=torch.int32, pin_memory=True)
                host_t.copy_(out)
            else:
                host_t = out
            host = host_t.numpy().view(np.uint32)
            return (host if plan.ring.dtype == np.uint32 else host.astype(plan.ring.dtype)), info
    raise RuntimeError("conditional randomised rounding did not succeed")  # pragma: no cover - p ≈ 1e-43
