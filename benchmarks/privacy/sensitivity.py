"""Realised norm of a decoded quantized update vs the sensitivity the central-mode accountant charges
(protocols/dp.md §6.4), and what it does to ε.

    PYTHONPATH=. python benchmarks/privacy/sensitivity.py [--bits 16] [--holders 100] [--dim 1377408]

'before': unconditional stochastic rounding, accounted at C (what securefed did until accountant scheme /2);
'now': conditional rounding (primitives.quantize), accounted at events.quantized_sensitivity.
Updates are Gaussian directions clipped to C (their fractional parts are uniform, as a trained model's are).
"""

import argparse
import math

import numpy as np

from securefed.primitives.quantize import from_ring, plan_quantization, quantize, rounded_l2_bound, stochastic_round
from securefed.primitives.rng import DeterministicEntropy
from securefed.privacy.accountant import Accountant, RoundEvent
from securefed.privacy.clipping import l2_clip
from securefed.privacy.events import quantized_sensitivity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, default=16)
    ap.add_argument("--holders", type=int, default=100)
    ap.add_argument("--dim", type=int, default=1_377_408)  # the tiny model with the 4096-token vocabulary
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--population", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--delta", type=float, default=1e-5)
    a = ap.parse_args()
    plan = plan_quantization(clip=1.0, ring_bits=a.bits, max_clients=a.holders)
    g = plan.scale  # γ, with C = 1
    old, new = [], []
    for i in range(a.samples):
        x, _ = l2_clip(np.random.default_rng(i).normal(size=a.dim), 1.0)
        old.append(np.linalg.norm(stochastic_round(x.astype(np.float64) * g, DeterministicEntropy.from_int(i))) / g)
        new.append(np.linalg.norm(from_ring(quantize(x, plan, DeterministicEntropy.from_int(i)), plan.ring).astype(float)) / g)
    s_now = quantized_sensitivity(plan, a.dim)
    q = a.holders / a.population

    def eps(sens: float) -> float:
        return Accountant().epsilon(a.delta, [RoundEvent("gaussian", "poisson", q, a.sigma / sens)] * a.rounds)

    print(f"ring {a.bits} bits, {a.holders} holders, d = {a.dim}: γC = {g:.6g} integer steps")
    print(f"decoded norm / C, unconditional rounding (before): max {max(old):.4f} (mean {np.mean(old):.4f}); "
          f"worst case γC + √d: {(g + math.sqrt(a.dim)) / g:.3f}")
    print(f"decoded norm / C, conditional rounding (now):      max {max(new):.4f}; hard bound Δ₂/γC "
          f"{rounded_l2_bound(g, a.dim) / g:.4f}; accounted S/C {s_now:.4f}")
    print(f"central ε (σ = {a.sigma}, q = {q:g}, {a.rounds} rounds, δ = {a.delta:g}):")
    print(f"  before: accounted at C {eps(1.0):.4g}; RDP at the realised norm {eps(max(old)):.4g}; "
          f"at the worst case {eps((g + math.sqrt(a.dim)) / g):.4g}")
    print(f"  now:    accounted at S {eps(s_now):.4g} >= RDP at the realised norm {eps(max(new)):.4g}")


if __name__ == "__main__":
    main()
