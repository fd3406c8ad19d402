"""Optional record-level DP-SGD inside one holder (Abadi et al. 2016), with Opacus.

Privacy unit: one training *record* (one sequence) of this holder, add/remove relation under Poisson
sampling of each batch with rate ``sample_rate`` (Opacus' DPDataLoader gives true Poisson batches;
with a fixed-size loader the guarantee is approximate — protocols/dp.md §2). The holder keeps its own
accountant (Opacus RDP) for this record-level ε; it composes with nothing else in this module.

Per-sample gradients (``clipping="per_sample"``): Opacus' ``GradSampleModule`` in hooks mode — hand-
written samplers for Linear and Embedding, torch.func for every layer without one (LlamaRMSNorm) — so a
transformers LlamaForCausalLM works as built. It holds B copies of every parameter's gradient at once.
``clipping="ghost"`` (securefed.privacy.ghost) finds the per-sample norms layer by layer instead and
never does; same mechanism, same accountant.
"""

from __future__ import annotations

import math
import warnings

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from securefed.privacy.ghost import GhostClippingModule, exact_fp32_matmul

# Expected under DP-SGD, not a fault: the model's input (token ids) needs no gradient, so torch says the per-record
# hooks fire on module outputs — once per step, into every holder's log (the report audit, stop 34). Only this one.
warnings.filterwarnings("ignore", message=r"Full backward hook is firing when gradients are computed with respect to "
                        r"module outputs since no inputs require gradients", category=UserWarning)

__all__ = ["attach_dp_sgd", "batch_tail_bound", "padded_batch_rows", "timing_delta", "wrap_for_dp_sgd", "HIDE_TAIL"]


class _FP32NormDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer with each record's norm accumulated and returned in fp32 (protocols/dp.md §10).

    Under bf16 autocast Opacus' hooks keep bf16 per-sample gradients, and Opacus takes their norms in bf16:
    rounded up to 2⁻⁸ below the norm of the values it then upcasts and sums, so a record's clipped share
    could exceed C by that much. Here the norm is of exactly what is summed; the sum itself is already fp32
    (Opacus casts each per-sample gradient to the fp32 parameter's dtype first).

    ``record_scale`` (set by the trainer for one step, unit=document): (b,) each record's own bound as a
    fraction of C — a document's k rows get 1/k each (protocols/dp.md §10.2). The noise stays σ·C."""

    record_scale: torch.Tensor | None = None

    def clip_and_accumulate(self) -> None:
        samples = self.grad_samples
        if len(samples[0]) == 0:                                   # an empty Poisson batch: nothing to clip
            return super().clip_and_accumulate()
        per_param = [torch.linalg.vector_norm(g.reshape(len(g), -1), dim=-1, dtype=torch.float32) for g in samples]
        norms = torch.stack([n.to(per_param[0].device) for n in per_param], dim=1).norm(2, dim=1)
        bound = torch.full_like(norms, float(self.max_grad_norm))
        scale = self.record_scale
        if scale is not None:
            if scale.shape != norms.shape or not bool(((scale > 0) & (scale <= 1)).all()):
                raise ValueError(f"record_scale must be {tuple(norms.shape)} with values in (0, 1]")
            bound = bound * scale.to(device=norms.device, dtype=torch.float32)
        factor = (bound / (norms + 1e-6)).clamp(max=1.0)          # Opacus' clip factor, fp32
        for p, gs in zip(self.params, samples):
            if p.dtype != torch.float32:
                raise RuntimeError(f"DP-SGD sums clipped gradients in the parameters' dtype: {p.dtype} would round "
                                   "the batch's sum (not one record's share); keep fp32 parameters (bf16-mixed)")
            _check_processed_flag(p.grad_sample)
            with exact_fp32_matmul():
                grad = torch.einsum("i,i...", factor.to(gs.device), gs.to(torch.float32))
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)


def wrap_for_dp_sgd(model: torch.nn.Module, *, clipping: str, max_grad_norm: float) -> torch.nn.Module:
    """The model with Opacus' hooks for ``clipping``: "per_sample" (functorch GradSampleModule, the
    trainer's loss is the batch mean) or "ghost" (GhostClippingModule, per-record losses)."""
    if clipping == "per_sample":
        return GradSampleModule(model, loss_reduction="mean")
    if clipping == "ghost":
        return GhostClippingModule(model, max_grad_norm=max_grad_norm)
    raise ValueError(f"clipping must be 'per_sample' or 'ghost', got {clipping!r}")


def attach_dp_sgd(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    sample_rate: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.nn.Module, DPOptimizer, RDPAccountant]:
    """Wrap ``model``/``optimizer`` for DP-SGD; returns (GradSampleModule, DPOptimizer, accountant).

    Every ``optimizer.step()`` clips each sample's gradient to ``max_grad_norm``, adds
    N(0, (noise_multiplier·max_grad_norm)²) to the sum, divides by ``expected_batch_size`` and records
    one step (noise_multiplier, sample_rate) in the accountant. Note the model must be called with
    per-sample-separable losses (no batch-coupled layers such as BatchNorm). ``generator``: where the
    noise is drawn from (on the parameters' device); None falls back to torch's global RNG, which is
    predictable from a seed: callers that release models pass a secretly seeded one.

    A ``GhostClippingModule`` gets Opacus' DPOptimizerFastGradientClipping: ``.grad`` already holds the
    clipped sum (securefed.privacy.ghost.clipped_backward, once per slice of the Poisson batch); the
    step adds the same noise, divides by the same ``expected_batch_size`` and records the same event.
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
    if isinstance(model, GhostClippingModule):
        if model.max_grad_norm != max_grad_norm:
            raise ValueError(f"max_grad_norm {max_grad_norm} differs from the module's clip {model.max_grad_norm}")
        gsm, opt_cls = model, DPOptimizerFastGradientClipping
    else:
        gsm = model if isinstance(model, GradSampleModule) else GradSampleModule(model, loss_reduction="mean")
        opt_cls = _FP32NormDPOptimizer
    dp_opt = opt_cls(
        optimizer,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        expected_batch_size=expected_batch_size,
        generator=generator,
    )
    accountant = RDPAccountant()
    dp_opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=float(sample_rate)))
    return gsm, dp_opt, accountant


# train.dp_sgd.hide_batch_size (protocols/dp.md §10.4): the chance, per step, that a Poisson batch outgrows the padded
# batch and its larger compute shows; T steps add at most (1 + e^ε)·T·HIDE_TAIL to the timing channel's δ (timing_delta)
HIDE_TAIL = 1e-15


def timing_delta(epsilon: float, steps: int, tail: float = HIDE_TAIL) -> float:
    """dp.md §10.4 rule 4: what the padded batch's tail adds to the record-level δ against an observer of reply times.

    The mechanism with timing, M = (update, time), equals the constant-time M' = (update, const) except on the event E
    that some step's batch outgrew the pad, P[E] <= p = steps·tail under every dataset. M' is (ε, δ)-DP, so for any
    neighbours D, D' and any set S: P[M(D) ∈ S] <= P[M'(D) ∈ S] + p <= e^ε·P[M'(D') ∈ S] + δ + p
    <= e^ε·(P[M(D') ∈ S] + p) + δ + p, i.e. M is (ε, δ + (1 + e^ε)·p)-DP. (Stating p alone — PV-34 — dropped the e^ε·p
    of the last step: p is a probability under D', and the (ε, δ) bound multiplies it by e^ε.)"""
    if steps <= 0:
        return 0.0
    if not math.isfinite(epsilon) or epsilon > 700:
        return math.inf
    return (1.0 + math.exp(max(0.0, epsilon))) * int(steps) * float(tail)


_T_GRID = None


def _log_tail_bound(log_mgf, c: int) -> float:
    """min over the t grid of log(exp(-t(c+1))·E[e^{tS}]) >= log P[S > c] (Chernoff; any t is a valid bound)."""
    return float((log_mgf - _t_grid()[:, 0] * (c + 1)).min())


def _t_grid():
    import numpy as np

    global _T_GRID
    if _T_GRID is None:
        _T_GRID = np.geomspace(1e-6, 60.0, 4000)[:, None]
    return _T_GRID


def _smallest(ok, hi: int) -> int:
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


def padded_batch_rows(expected_rows: int, max_rows_per_unit: int, *, tail: float = HIDE_TAIL) -> int:
    """The rows every hidden step pads to (dp.md §10.4): the smallest c with P[S > c] <= ``tail`` for EVERY holder
    whose Poisson batch S = Σ_u k_u·Bernoulli(q) has E[S] = q·Σ k_u <= ``expected_rows`` and each k_u <=
    ``max_rows_per_unit``. A function of public numbers only (the configured batch size and the per-unit row cap),
    so the padding itself says nothing of the holder's data.

    Chernoff: log E[e^{tS}] = Σ log(1 − q + q·e^{t·k_u}) <= Σ q(e^{t·k_u} − 1) <= E[S]·(e^{tK} − 1)/K, since
    e^{tk} − 1 is convex in k and 0 at k = 0 (k <= K); the Poisson(E[S]) bound at K = 1."""
    import numpy as np

    if expected_rows < 1 or max_rows_per_unit < 1 or not 0 < tail < 1:
        raise ValueError("padded_batch_rows: expected_rows >= 1, max_rows_per_unit >= 1 and 0 < tail < 1 required")
    t, k = _t_grid()[:, 0], max_rows_per_unit
    log_mgf = expected_rows * np.expm1(np.minimum(t * k, 700.0)) / k
    log_tail = math.log(tail)
    hi = expected_rows * 4 + 64 * k
    while _log_tail_bound(log_mgf, hi) > log_tail:
        hi *= 2
    return _smallest(lambda c: _log_tail_bound(log_mgf, c) <= log_tail, hi)


def batch_tail_bound(rows_per_unit, q: float, c: int) -> float:
    """A holder's own Chernoff bound on P[S > c] for its Poisson batch S = Σ_u k_u·Bernoulli(q) (its data: local
    only, never sent): with a public sample_rate, q·N may exceed the configured batch the padding assumed."""
    import numpy as np

    k = np.asarray(rows_per_unit, dtype=np.int64)
    if not 0 < q <= 1:
        raise ValueError(f"batch_tail_bound: 0 < q <= 1 required, got {q}")
    if c >= int(k.sum()):
        return 0.0
    if q == 1:
        return 1.0
    sizes, counts = np.unique(k, return_counts=True)
    log_mgf = (counts * np.logaddexp(math.log1p(-q), math.log(q) + _t_grid() * sizes)).sum(axis=1)
    return min(1.0, math.exp(_log_tail_bound(log_mgf, c)))
