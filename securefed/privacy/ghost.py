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
d_in·d_out: the same comparison decides which of the two a layer keeps for book-keeping below, its
(A_i, G_i) or its g_i, so the smaller is kept). Per-record gradients are formed only for the instantiated
layers, in the autocast precision, never for the ghost-normed ones — not B fp32 copies of the whole model
with their gradient as in Opacus' per-sample mode.

The clipped sum Σ_i c_i·g_i, c_i = min(1, C / (‖g_i‖ + 1e-6)) — exactly what per-sample clipping sums —
then comes without forming g_i, in one of two ways:
  book-keeping (default; Bu et al. 2023, "Differentially private optimization on large model at small
      cost"): the first backward keeps what each layer's clipped gradient needs. A ghost-normed layer
      keeps its (A_i, G_i): Σ_i c_i·G_iᵀA_i = (c ⊙ G)ᵀA is one matmul, the cost of its ordinary weight
      gradient. An instantiated layer has already formed its g_i for the norm and keeps them: Σ_i c_i·g_i
      is a weighted sum, no second weight-gradient matmul (at T = 1024 this is most of the 20m model,
      tied head included: a quarter of a DP step's flops), and the g_i (b·d_in·d_out) are smaller than
      the (A_i, G_i) (b·T·(d_in + d_out)) they replace — which is the very test that routed the layer.
      One backward in all, which never forms a weight gradient (it differentiates to the input
      embedding's output only); the price is keeping that per-layer state until then.
  Opacus' own (``book_keeping=False``): a second, full backward of Σ_i c_i·ℓ_i with c held constant.

Layers (Opacus 1.6 on transformers' Llama): nn.Linear and nn.Embedding have ghost norm samplers; a
*tied* weight (embed_tokens = lm_head) cannot be ghost-normed per module (‖g_emb + g_head‖ is not a sum
of two norms), so the modules that share a parameter are instantiated and their per-sample gradients
summed before the norm (Opacus' forward counter). transformers' LlamaRMSNorm, which Opacus has no sampler
for, gets one here (``llama_rms_norm_grad_sample``: Σ_t G_t ⊙ x̂_t from the layer's input, a (B, d)
per-record gradient) instead of Opacus' functorch fallback, which re-runs the layer per record and cannot
run the Liger kernel the GPU path puts there (securefed.training.fused, mode 'blocks'). What Opacus cannot
treat per sample (BatchNorm and other batch-coupled layers, DP-incompatible modules) is refused at wrap
time; a parameter that receives a gradient but no per-sample norm (used outside its module's forward) is
refused at the first backward, rather than silently under-clipped.
"""

from __future__ import annotations

import contextlib

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.validators import ModuleValidator

__all__ = ["GhostClippingModule", "ghost_route", "clipped_backward", "llama_rms_norm_grad_sample", "exact_fp32_matmul",
           "weighted_record_sum"]


def llama_rms_norm_grad_sample(layer: torch.nn.Module, activations: list[torch.Tensor],
                               backprops: torch.Tensor) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Per-record gradient of a Llama RMSNorm's weight, as the layer computes its output
    (``w · x̂.to(x.dtype)``, x̂ = x·rsqrt(mean(x²) + ε) in fp32): Σ_t G_t ⊙ x̂_t.to(x.dtype), (B, d)."""
    if not layer.weight.requires_grad:
        return {}
    x = activations[0]
    xf = x.float()
    xn = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + layer.variance_epsilon)).to(x.dtype)
    g = backprops.float() * xn.float()
    return {layer.weight: g.reshape(g.shape[0], -1, g.shape[-1]).sum(1).to(layer.weight.dtype)}


def _llama_rms_norm_type():
    try:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm
    except ImportError:  # pragma: no cover - transformers is a required dependency
        return None
    return LlamaRMSNorm


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

    def __init__(self, model: torch.nn.Module, *, max_grad_norm: float, book_keeping: bool = True) -> None:
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
        self._owners = owners
        self.routes: dict[str, str] = {}
        self.book_keeping = book_keeping
        self._kept: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor, int | None]] = []  # (Linear|Embedding, A, G, only)
        self._kept_gs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []         # instantiated: (p, (b, *p.shape))
        # id(p) -> (Σ per-record grads so far, uses so far, each use's (module, A, G, id(p)) or None)
        self._tied_sum: dict[int, tuple[torch.Tensor, int, list]] = {}
        self.norm_slack = False     # this backward took some norm of a rounded copy of what is summed
        self.low_precision = False  # some layer's per-record values were bf16/fp16 in this backward
        rms = _llama_rms_norm_type()      # this instance's samplers: Opacus' registry (a class attribute) unchanged
        self.GRAD_SAMPLERS = {**type(self).GRAD_SAMPLERS, **({rms: llama_rms_norm_grad_sample} if rms else {})}
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
            if not self.book_keeping:
                return super().capture_backprops_hook(module, _forward_input, forward_output, loss_reduction, batch_first)
            if self.hooks_enabled:
                self._keep(module, forward_output[0].detach(), loss_reduction, batch_first)

    def _keep(self, module, backprops, loss_reduction, batch_first) -> None:
        """Book-keeping (Bu et al. 2023, "Differentially private optimization on large model at small cost"):
        this layer's per-record norms now, and what its clipped gradient needs later — (A, G) of a
        ghost-normed Linear or Embedding, the per-record gradients of an instantiated layer (formed for its
        norm anyway: a tied parameter's once, summed over its uses; RMSNorm's are (b, d), small)."""
        activations, backprops = self.rearrange_grad_samples(module=module, backprops=backprops,
                                                             loss_reduction=loss_reduction, batch_first=batch_first)
        self.low_precision = self.low_precision or backprops.dtype in _LOW_PRECISION
        if (isinstance(module, torch.nn.Linear) and backprops.dtype in (torch.bfloat16, torch.float16)
                and activations[0].dtype == torch.float32):
            # Under autocast the layer multiplied a low-precision copy of its fp32 input (Llama's RMSNorm hands
            # q/k/v, gate/up and the LM head fp32): do the per-record work on that copy too. Mixed with the
            # bf16 output gradients the products would otherwise be promoted to fp32 matmuls (no tensor cores),
            # and the kept A takes half the memory. The norms are then bf16: clipped_backward tightens C for it.
            activations = [activations[0].to(backprops.dtype), *activations[1:]]
        if len(module.activations) == 0 and hasattr(module, "max_batch_len"):
            del module.max_batch_len
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        for p in params:
            p._forward_counter -= 1                  # Opacus counts uses per forward (tying check)
        if self.use_ghost_clipping:                  # set by _routed (Linear / Embedding only: NORM_SAMPLERS)
            self._kept.append((module, activations[0], backprops, None))     # None: all its parameters
            # The norm of exactly what add_clipped_grads will sum: the kept (A, G), upcast, in fp32 arithmetic.
            # A bf16 Gram product would be rounded relative to Σ|⟨G_t,G_s⟩⟨A_t,A_s⟩|, not to the norm (cancellation).
            acts = [a.float() if a.is_floating_point() else a for a in activations]
            with exact_fp32_matmul():
                for p, n in self.NORM_SAMPLERS[type(module)](module, acts, backprops.float()).items():
                    p._norm_sample = n.float()
            return
        sampler = self.GRAD_SAMPLERS.get(type(module), ft_compute_per_sample_gradient)
        ag = isinstance(module, (torch.nn.Linear, torch.nn.Embedding))
        for p, gs in sampler(module, activations, backprops).items():
            if not p.requires_grad:
                continue
            if self._owners.get(id(p), 1) > 1:       # tied: the norm is of the sum over the sharing modules
                total, uses, pending = self._tied_sum.pop(id(p), (0, 0, []))
                gs, uses = gs + total, uses + 1
                pending = [*pending, (module, activations[0], backprops, id(p)) if ag else None]
                if uses < self._owners[id(p)]:
                    self._tied_sum[id(p)] = (gs, uses, pending)
                    continue
                p._norm_sample = _record_norms(gs)
                # a tied layer is instantiated whatever its size: keep the smaller of its summed g_i and every
                # use's (A, G) (short sequences: the LM head's T·(d + V) per record is under its V·d)
                if None not in pending and sum(_nbytes(e[1]) + _nbytes(e[2]) for e in pending) < _nbytes(gs):
                    self._kept.extend(pending)
                    # the sum comes from the uses' (A, G); the norm was of their per-record products, each
                    # rounded to its G's precision (a bf16 one within 2⁻⁸ of the summed values' norm, however
                    # gs was promoted when the uses were added): clipped_backward's tightened bound covers it
                    self.norm_slack = self.norm_slack or any(e[2].dtype in _LOW_PRECISION for e in pending)
                else:
                    self._kept_gs.append((p, gs))
                continue
            p._norm_sample = _record_norms(gs)
            self._kept_gs.append((p, gs))

    def _clear_kept(self) -> None:
        self._kept, self._kept_gs, self._tied_sum = [], [], {}
        self.norm_slack = self.low_precision = False

    @torch.no_grad()
    def add_clipped_grads(self, coef: torch.Tensor) -> None:
        """.grad += Σ_i c_i·g_i from what pass 1 kept: for a ghost-normed layer c ⊙ G against A, one matmul
        per Linear (the cost of its ordinary weight gradient) or a scatter-add per Embedding; for an
        instantiated one the weighted sum of its kept g_i."""
        # Everything here is fp32 arithmetic on the kept values (dp.md §10.1): a bf16 sum would be rounded relative
        # to the whole batch's sum, not to one record, so one record could move it by more than C
        coef = coef.float()
        for module, a, g, only in self._kept:        # only: the one (tied) parameter it is kept for, or None
            cg = g.float() * coef.view(-1, *([1] * (g.dim() - 1)))                     # (b, T, d_out) c_i·G_i
            cg2 = cg.reshape(-1, cg.shape[-1])                                         # (b·T, d_out)
            if isinstance(module, torch.nn.Linear):
                with exact_fp32_matmul():
                    _add_grad(module.weight, cg2.t() @ a.reshape(-1, a.shape[-1]).float())   # (d_out, d_in)
                if module.bias is not None and only is None:   # a tied layer's own bias: its g_i are kept
                    _add_grad(module.bias, cg2.sum(0))
            else:                                                                      # Embedding: rows by token id
                w = torch.zeros(module.weight.shape, dtype=torch.float32, device=cg2.device)
                _add_grad(module.weight, w.index_add_(0, a.reshape(-1), cg2))
        for p, gs in self._kept_gs:
            _add_grad(p, weighted_record_sum(coef, gs))
        self._clear_kept()


_LOW_PRECISION = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def exact_fp32_matmul():
    """fp32 matmuls in full fp32 (no TF32 / bf16 passes) inside: a DP sum or norm must not be rounded
    coarser than its inputs, whatever ``torch.set_float32_matmul_precision`` the caller chose."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def _record_norms(gs: torch.Tensor) -> torch.Tensor:
    """(b,) the L2 norm of each record's kept gradient, accumulated and returned in fp32 (a bf16 result would
    be up to 2⁻⁸ short of the norm of the very values the clipped sum adds)."""
    return torch.linalg.vector_norm(gs.reshape(gs.shape[0], -1), dim=1, dtype=torch.float32)


def weighted_record_sum(coef: torch.Tensor, gs: torch.Tensor, *, chunk: int = 1 << 24) -> torch.Tensor:
    """Σ_i coef_i·gs_i in fp32 arithmetic, whatever gs's precision: low-precision gs are upcast a slice of
    ``chunk`` columns at a time (exact: bf16 → fp32 loses nothing), so the sum is rounded to fp32, never to
    bf16 — whose rounding grows with the sum of the whole batch, not with one record's share of it."""
    coef = coef.float()
    flat = gs.reshape(gs.shape[0], -1)
    with exact_fp32_matmul():
        if gs.dtype == torch.float32:
            return (coef @ flat).view(gs.shape[1:])
        out = torch.empty(flat.shape[1], dtype=torch.float32, device=gs.device)
        for s in range(0, flat.shape[1], chunk):
            out[s:s + chunk] = coef @ flat[:, s:s + chunk].float()
    return out.view(gs.shape[1:])


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _add_grad(p: torch.nn.Parameter, g: torch.Tensor) -> None:
    if p.requires_grad:
        g = g.to(p.dtype)
        p.grad = g if p.grad is None else p.grad.add_(g)


def clipped_backward(gsm: GhostClippingModule, loss_per_record: torch.Tensor, *,
                     norm_inputs: list[torch.Tensor] | None = None,
                     bound_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Add Σ_i c_i·∇ℓ_i to every parameter's ``.grad``, c_i = min(1, s_i·C/(‖∇ℓ_i‖ + 1e-6)); returns ‖∇ℓ_i‖.
    ``bound_scale`` s (b,), each in (0, 1] (default 1): record i's own bound s_i·C — unit=document gives each
    of a document's k rows 1/k (protocols/dp.md §10.2).

    ``loss_per_record``: (b,) the records' own losses from one forward of ``gsm``. Pass 1 runs the
    hooks (per-record norms into ``p._norm_sample``); ``norm_inputs``, the tensors pass 1 differentiates
    to (default: every trainable parameter), can be just the input embedding's output: backprop must
    reach every layer for the hooks, but need not form any weight gradient. Then book-keeping adds the
    clipped sum from what the hooks kept, or (``book_keeping=False``) pass 2, hooks off, backpropagates
    Σ_i c_i·ℓ_i. Either way it accumulates into ``.grad``, so several calls before one optimizer step
    sum the clipped gradients of several slices of one Poisson batch.
    """
    if loss_per_record.dim() != 1:
        raise ValueError(f"loss_per_record must be (b,), got shape {tuple(loss_per_record.shape)}")
    if not gsm.book_keeping and getattr(gsm._module, "_securefed_fused", "off") != "off":
        # Liger's SwiGLU backward overwrites its saved activations with their gradients: a second backward
        # over the same graph would read gradients as activations, silently
        raise RuntimeError("ghost clipping without book-keeping backpropagates twice, which Liger's kernels do "
                           "not allow: use book-keeping (the default) or train.fused=off")
    params = gsm.trainable_parameters
    for p in params:
        p._norm_sample = None                       # a stale norm from the last slice must never count
    gsm._clear_kept()
    torch.autograd.grad(loss_per_record.sum(), norm_inputs or params, retain_graph=not gsm.book_keeping,
                        allow_unused=True)
    b = loss_per_record.shape[0]
    for name, p in gsm._module.named_parameters():
        if p.requires_grad and (getattr(p, "_norm_sample", None) is None or p._norm_sample.shape != (b,)):
            raise RuntimeError(f"ghost clipping found no per-record gradient norm for parameter {name!r} (used "
                               "outside its module's forward?): refusing to under-clip; use clipping=per_sample")
    per_param = [p._norm_sample for p in params]
    norms = torch.stack([n.float() for n in per_param]).norm(2, dim=0)   # (b,) ‖∇ℓ_i‖ over all parameters
    # Every layer's norm is of exactly the values its clipped sum adds, in fp32, so C bounds each record's share
    # of the sum; a norm taken of a low-precision copy (Opacus' own samplers, or a tied layer summed from its
    # uses' (A, G) but normed from their rounded products: within 2⁻⁸) gets the bound tightened to C·(1 − 2⁻⁶).
    # So does any low-precision backward: bf16 values of one record still round differently with the other rows
    # of its slice (measured ≤ 0.2 %·C on the CPU with fixed-shape slices; dp.md §10.1), a margin, not a proof.
    slack = gsm.norm_slack or gsm.low_precision or any(n.dtype in _LOW_PRECISION for n in per_param)
    bound = gsm.max_grad_norm * (1 - 2**-6 if slack else 1)
    if bound_scale is not None:
        if bound_scale.shape != (b,) or not bool(((bound_scale > 0) & (bound_scale <= 1)).all()):
            raise ValueError(f"bound_scale must be ({b},) with values in (0, 1]")
        bound = bound * bound_scale.to(device=norms.device, dtype=torch.float32)
    coef = (bound / (norms + 1e-6)).clamp(max=1.0)  # Opacus DPOptimizer's clip factor
    if gsm.book_keeping:
        gsm.add_clipped_grads(coef)
        return norms.detach()
    gsm.disable_hooks()
    try:
        (coef.detach().to(loss_per_record.dtype) * loss_per_record).sum().backward()
    finally:
        gsm.enable_hooks()
    return norms.detach()
