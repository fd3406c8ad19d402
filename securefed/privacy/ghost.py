"""Memory-efficient per-sample clipping for record-level DP-SGD: Opacus' ghost / fast gradient clipping.

DP-SGD needs each record's gradient norm ‖g_i‖, not the gradient g_i itself. Per layer, with activations
A_i (T, d_in) and output gradients G_i (T, d_out) of record i (one sequence of T tokens):

  ghost norm (Li et al. 2022, "Large language models can be strong differentially private learners", §4):
      ‖G_iᵀ A_i‖²_F = ⟨G_i G_iᵀ, A_i A_iᵀ⟩      (two T×T Gram matrices; cost ~ T²·(d_in + d_out))
  instantiation ("fast gradient clipping", Lee & Kifer 2021): form G_iᵀ A_i (d_out, d_in), take its norm,
      drop it                                     (cost ~ T·d_in·d_out, memory B·d_in·d_out for one layer)

and the whole record's norm is the root of the per-layer squares. Ghost wins when T is small against
the layer's width; at T = 1024 and d = 384 (the 20m model) instantiation is cheaper, so each layer takes
the cheaper one (the "mixed ghost clipping" of Bu et al. 2022, "Scalable and efficient training of large
convolutional neural networks with differential privacy"; we compare time, T·(d_in + d_out) against
d_in·d_out, since both routes' memory is one layer's worth). Either way only one layer's per-sample
tensors live at a time, never B copies of the model as in per-sample mode.
A second backward of Σ_i c_i·ℓ_i, with c_i = min(1, C / (‖g_i‖ + 1e-6)) held constant, then leaves the
clipped sum Σ_i c_i·g_i in ``.grad`` — exactly what per-sample clipping sums, without ever forming g_i.

Layers (Opacus 1.6 on transformers' Llama): nn.Linear and nn.Embedding have ghost norm samplers; a
*tied* weight (embed_tokens = lm_head) cannot be ghost-normed per module (‖g_emb + g_head‖ is not a sum
of two norms), so the modules that share a parameter are instantiated and their per-sample gradients
summed before the norm (Opacus' forward counter). LlamaRMSNorm has no sampler and goes through
functorch (a (B, d) per-sample gradient: small). What Opacus cannot treat per sample (BatchNorm and other
batch-coupled layers, DP-incompatible modules) is refused at wrap time; a parameter that receives a
gradient but no per-sample norm (used outside its module's forward) is refused at the first backward,
rather than silently under-clipped.
"""

from __future__ import annotations

import contextlib

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.validators import ModuleValidator

__all__ = ["GhostClippingModule", "ghost_route", "clipped_backward"]


def ghost_route(module: torch.nn.Module, *, seq_len: int | None, tied: bool, norm_samplers) -> str:
    """How one layer's per-sample norms are found: "ghost" or "instantiate" (Opacus hook/functorch)."""
    if tied or type(module) not in norm_samplers:
        return "instantiate"
    if isinstance(module, torch.nn.Linear) and seq_len is not None:
        # per record: two (T, T) Gram matrices, ~T²·(d_in + d_out) flops, vs one (d_out, d_in) gradient, ~T·d_in·d_out
        d_in, d_out = module.in_features, module.out_features
        return "ghost" if seq_len * (d_in + d_out) < d_in * d_out else "instantiate"
    return "ghost"


class GhostClippingModule(GradSampleModuleFastGradientClipping):
    """Opacus' fast-gradient-clipping module with a per-layer choice of ghost norm vs instantiation.

    The layer's route is fixed per forward/backward by the sequence length the layer sees; modules that
    share a parameter (tied embeddings) always instantiate. Losses are per-record ("sum" reduction: the
    hooks see ∂ℓ_i/∂output directly). ``routes`` (name -> route at the last backward) is for logs/tests.
    """

    def __init__(self, model: torch.nn.Module, *, max_grad_norm: float) -> None:
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ValueError("ghost clipping cannot clip this model per record: "
                             + "; ".join(sorted({str(e) for e in errors})))
        owners: dict[int, int] = {}
        for m in model.modules():
            for p in m.parameters(recurse=False):
                if p.requires_grad:
                    owners[id(p)] = owners.get(id(p), 0) + 1
        self._tied = {id(m) for m in model.modules()
                      if any(owners.get(id(p), 0) > 1 for p in m.parameters(recurse=False))}
        self._names = {id(m): n for n, m in model.named_modules()}
        self.routes: dict[str, str] = {}
        super().__init__(model, loss_reduction="sum", max_grad_norm=max_grad_norm, use_ghost_clipping=True)

    @contextlib.contextmanager
    def _routed(self, module: torch.nn.Module, seq_len: int | None):
        route = ghost_route(module, seq_len=seq_len, tied=id(module) in self._tied, norm_samplers=self.NORM_SAMPLERS)
        self.routes[self._names.get(id(module), "?")] = route
        saved, self.use_ghost_clipping = self.use_ghost_clipping, route == "ghost"
        try:
            yield
        finally:
            self.use_ghost_clipping = saved

    def capture_activations_hook(self, module, forward_input, _forward_output):
        x = forward_input[0] if forward_input else None
        seq = int(x.shape[1]) if isinstance(x, torch.Tensor) and x.dim() >= 3 else None
        module._sf_seq_len = seq
        with self._routed(module, seq):
            return super().capture_activations_hook(module, forward_input, _forward_output)

    def capture_backprops_hook(self, module, _forward_input, forward_output, loss_reduction, batch_first):
        with self._routed(module, getattr(module, "_sf_seq_len", None)):
            return super().capture_backprops_hook(module, _forward_input, forward_output, loss_reduction, batch_first)


def clipped_backward(gsm: GhostClippingModule, loss_per_record: torch.Tensor, *,
                     norm_inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Add Σ_i c_i·∇ℓ_i to every parameter's ``.grad``, c_i = min(1, C/(‖∇ℓ_i‖ + 1e-6)); returns ‖∇ℓ_i‖.

    ``loss_per_record``: (b,) the records' own losses from one forward of ``gsm``. Pass 1 runs the
    hooks (per-record norms into ``p._norm_sample``); ``norm_inputs``, the tensors pass 1 differentiates
    to (default: every trainable parameter), can be just the input embedding's weight: backprop must
    reach every layer for the hooks, but need not form the other layers' weight gradients. Pass 2, hooks
    off, backpropagates Σ_i c_i·ℓ_i and accumulates into ``.grad``, so several calls before one
    optimizer step sum the clipped gradients of several slices of one Poisson batch.
    """
    if loss_per_record.dim() != 1:
        raise ValueError(f"loss_per_record must be (b,), got shape {tuple(loss_per_record.shape)}")
    params = gsm.trainable_parameters
    for p in params:
        p._norm_sample = None                       # a stale norm from the last slice must never count
    torch.autograd.grad(loss_per_record.sum(), norm_inputs or params, retain_graph=True, allow_unused=True)
    b = loss_per_record.shape[0]
    for name, p in gsm._module.named_parameters():
        if p.requires_grad and (getattr(p, "_norm_sample", None) is None or p._norm_sample.shape != (b,)):
            raise RuntimeError(f"ghost clipping found no per-record gradient norm for parameter {name!r} (used "
                               "outside its module's forward?): refusing to under-clip; use clipping=per_sample")
    per_param = [p._norm_sample for p in params]
    norms = torch.stack([n.float() for n in per_param]).norm(2, dim=0)   # (b,) ‖∇ℓ_i‖ over all parameters
    # Under bf16 autocast the layers' norms come out of bf16 Gram products (relative rounding ~2⁻⁹):
    # clip to C·(1 − 2⁻⁶) there, so the released sum's sensitivity stays <= C despite the rounding.
    bound = gsm.max_grad_norm * (1 - 2**-6 if any(n.dtype in (torch.bfloat16, torch.float16) for n in per_param) else 1)
    coef = (bound / (norms + 1e-6)).clamp(max=1.0)  # Opacus DPOptimizer's clip factor
    gsm.disable_hooks()
    try:
        (coef.detach().to(loss_per_record.dtype) * loss_per_record).sum().backward()
    finally:
        gsm.enable_hooks()
    return norms.detach()
