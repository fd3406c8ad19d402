"""Optional record-level DP-SGD inside one holder (Abadi et al. 2016), with Opacus.

Privacy unit: one training *record* (one sequence) of this holder, add/remove relation under Poisson
sampling of each batch with rate ``sample_rate`` (Opacus' DPDataLoader gives true Poisson batches;
with a fixed-size loader the guarantee is approximate — protocols/dp.md §2). The holder keeps its own
accountant (Opacus RDP) for this record-level ε; it composes with nothing else in this module.

Per-sample gradients: Opacus' ``GradSampleModule`` with ``grad_sample_mode="functorch"``, which
derives per-sample gradients with torch.func for every layer, including layers without a hand-written
grad sampler (LlamaRMSNorm, rotary embeddings) — so a transformers LlamaForCausalLM works as built.
"""

from __future__ import annotations

import math

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer

__all__ = ["attach_dp_sgd"]


def attach_dp_sgd(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    sample_rate: float,
    generator: torch.Generator | None = None,
) -> tuple[GradSampleModule, DPOptimizer, RDPAccountant]:
    """Wrap ``model``/``optimizer`` for DP-SGD; returns (GradSampleModule, DPOptimizer, accountant).

    Every ``optimizer.step()`` clips each sample's gradient to ``max_grad_norm``, adds
    N(0, (noise_multiplier·max_grad_norm)²) to the sum, divides by ``expected_batch_size`` and records
    one step (noise_multiplier, sample_rate) in the accountant. Note the model must be called with
    per-sample-separable losses (no batch-coupled layers such as BatchNorm). ``generator``: where the
    noise is drawn from (on the parameters' device); None falls back to torch's global RNG, which is
    predictable from a seed: callers that release models pass a secretly seeded one.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError("model must be a torch.nn.Module")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError("optimizer must be a torch.optim.Optimizer")
    for name, v in (("noise_multiplier", noise_multiplier), ("max_grad_norm", max_grad_norm), ("sample_rate", sample_rate)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TypeError(f"{name} must be a finite number")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if isinstance(expected_batch_size, bool) or not isinstance(expected_batch_size, int) or expected_batch_size < 1:
        raise ValueError("expected_batch_size must be an int >= 1")
    gsm = model if isinstance(model, GradSampleModule) else GradSampleModule(model, loss_reduction="mean")
    dp_opt = DPOptimizer(
        optimizer,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        expected_batch_size=expected_batch_size,
        generator=generator,
    )
    accountant = RDPAccountant()
    dp_opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=float(sample_rate)))
    return gsm, dp_opt, accountant
