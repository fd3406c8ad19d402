"""AdamW with the DP noise's variance taken out of its second moment (DP-AdamBC; protocols/dp.md §10.6).

Under DP-SGD every gradient AdamW sees is the clipped mean plus Gaussian noise of known variance per coordinate,
Φ = (σ·C/B)² (σ the noise multiplier, C the clip bound, B the expected batch: what Opacus' optimizer adds and
divides by). AdamW's second moment then estimates E[g²] + Φ, and where the noise dominates (a 23M-parameter model
at σ ≈ 0.5, C = 1, B = 512: Φ ≈ 9·10⁻⁷ against squared mean gradients far smaller) its step is ≈ m̂/√Φ, plain
SGD with a fixed, small rate: the adaptivity AdamW is chosen for is gone. Tang, Panda, Sankararaman and Rosenberg
("DP-AdamBC: Your DP-Adam Is Actually DP-SGD (Unless You Apply Bias Correction)", AAAI 2024, arXiv 2312.14334)
subtract Φ from the bias-corrected second moment, floored at γ:

    θ ← θ − lr·(m̂ / √max(v̂ − Φ, γ) + wd·θ)      (AdamW's decoupled weight decay as torch applies it)

It is post-processing of the noised gradients, so it changes no ε; the accountant is untouched. With Φ = 0 and
γ = eps² it is AdamW up to where eps enters (torch adds eps after the square root), which the tests check.
The state (step, exp_avg, exp_avg_sq) is AdamW's, so a checkpoint restores into either.
"""

from __future__ import annotations

import math

import torch

__all__ = ["AdamWBC", "noise_variance"]


def noise_variance(noise_multiplier: float, max_grad_norm: float, expected_batch_size: int) -> float:
    """Φ: the variance per coordinate of the noise in the averaged gradient the optimizer receives."""
    return (float(noise_multiplier) * float(max_grad_norm) / int(expected_batch_size)) ** 2


class AdamWBC(torch.optim.Optimizer):
    """AdamW whose denominator is √max(v̂ − Φ, γ) (module docstring). ``phi`` ≥ 0, ``floor`` (γ) > 0."""

    def __init__(self, params, *, lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0,
                 phi: float, floor: float):
        for name, v in (("lr", lr), ("weight_decay", weight_decay), ("phi", phi)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not math.isfinite(floor) or floor <= 0:
            raise ValueError(f"floor must be a finite number > 0, got {floor!r}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, phi=float(phi),
                                      floor=float(floor)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, wd, phi, floor = group["lr"], group["weight_decay"], group["phi"], group["floor"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] += 1
                t = float(st["step"])
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.lerp_(g, 1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                p.mul_(1.0 - lr * wd)
                denom = (v / (1.0 - b2 ** t)).sub_(phi).clamp_(min=floor).sqrt_()
                p.addcdiv_(m, denom, value=-lr / (1.0 - b1 ** t))
        return loss
