"""GPU fast paths for the Llama presets: Liger kernels patched per model instance, regional compile.

Liger (``pip install securefed[gpu]``, liger-kernel 0.8.5, Triton) gives

* ``head``: the fused linear + cross-entropy loss. The LM head's logits (B·T × 32768 in fp32 for the
  HF loss: 8.6 GB at 125m, batch 32, seq 2048) are never materialised: the loss and both gradients
  are computed chunk by chunk in the forward pass. The final RMSNorm is Liger's too.
* ``blocks``: inside every decoder block, Liger's RMSNorm, SwiGLU and RoPE kernels (the attention
  forward is re-implemented around them: q/k/v projections, RoPE, SDPA, o projection).

Mode ``all`` is both; mode ``blocks`` alone is what DP-SGD with ghost clipping runs (RESULTS.md (zp15)): its
per-record losses need the logits, which the fused head never forms, but every Linear is still called as a
module, so Opacus' hooks see each layer's input and output gradient, and the RMSNorm weights get their
per-record gradients from the layer's input (securefed.privacy.ghost registers that sampler; the functorch
fallback cannot run a Triton kernel). The norms then run out of place: Liger's in-place RMSNorm backward
writes dX over dY, the very output gradient the hook reads.

Patching is per *instance* (bound ``forward`` methods): liger's own ``apply_liger_kernel_to_llama``
rebinds module-level names of ``transformers.models.llama`` (``apply_rotary_pos_emb``,
``LlamaRMSNorm``, ``LlamaForCausalLM.forward``), which would switch every Llama in the process to
Triton kernels, CPU models and DP-SGD's per-sample-gradient model included.

``compile_blocks`` compiles each decoder layer on its own (``nn.Module.compile``, ``dynamic=False``):
one graph reused by every layer, and the fused loss stays outside any compiled region (a whole-model
``torch.compile`` breaks Liger's fused loss on torch 2.11). Inside compiled blocks Inductor fuses
RMSNorm / SwiGLU / RoPE itself, which is why ``resolve_fused('auto', compile=True)`` is ``head``.

Numerics: the fused loss computes the logits chunk in bf16 under autocast and the softmax in fp32,
as the HF path does (bf16 logits upcast to fp32); RoPE runs in the activations' dtype. The CPU path
never changes: Liger needs CUDA (tests/training/test_fused.py, tests/gpu/test_fused_gpu.py).
"""

from __future__ import annotations

import contextlib
import logging
import types
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["FusedMode", "is_llama", "liger_available", "resolve_fused", "apply_liger", "compile_blocks", "sdpa_context",
           "SDPA_BACKENDS", "per_record_nll"]

log = logging.getLogger(__name__)

FusedMode = Literal["auto", "all", "head", "off"]
SDPA_BACKENDS = ("auto", "cudnn", "flash")


def liger_available() -> bool:
    """True when liger-kernel and Triton import (no CUDA check: see resolve_fused)."""
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except Exception:  # ImportError, or Triton failing to initialise on a machine without a GPU
        return False
    return True


def resolve_fused(requested: str, *, device_type: str, dp_sgd: bool, compile_: bool,
                  dp_clipping: str = "per_sample") -> tuple[str, str]:
    """(effective mode 'all' | 'head' | 'blocks' | 'off', why) for a requested mode. Never raises for a
    missing Liger: the plain PyTorch path is always a valid fallback. DP-SGD with ghost clipping
    (``dp_clipping="ghost"``) gets the block kernels only ('blocks'); per-sample clipping none."""
    if requested not in ("auto", "all", "head", "off"):
        raise ValueError(f"train.fused must be 'auto', 'all', 'head' or 'off', got {requested!r}")
    if requested == "off":
        return "off", "train.fused=off"
    if device_type != "cuda":
        return "off", f"Liger kernels need CUDA (device is {device_type})"
    if dp_sgd and dp_clipping != "ghost":
        return "off", "DP-SGD per-sample clipping computes per-sample gradients with functorch, which Triton kernels bypass"
    if dp_sgd and requested == "head":
        return "off", "DP-SGD needs each record's loss, and the fused head gives only the batch mean"
    if not liger_available():
        return "off", "liger-kernel is not installed (pip install 'securefed[gpu]')"
    if dp_sgd:
        return "blocks", "DP-SGD (ghost clipping): Liger's block kernels; the head stays unfused (per-record losses)"
    if requested == "auto":
        return ("head" if compile_ else "all"), "auto"
    return requested, "requested"


def is_llama(model: torch.nn.Module) -> bool:
    inner = getattr(model, "model", None)
    return (hasattr(model, "lm_head") and inner is not None and hasattr(inner, "layers") and hasattr(inner, "norm")
            and all(hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in inner.layers))


# ------------------------------------------------------------------------------------ patched forwards
def _rms_norm_forward(self, hidden_states):
    from liger_kernel.transformers.functional import liger_rms_norm

    return liger_rms_norm(hidden_states, self.weight, self.variance_epsilon, 0.0, "llama", True)


def _rms_norm_forward_out_of_place(self, hidden_states):
    """Liger's RMSNorm with its backward out of place: dY, the output gradient a DP hook reads, stays intact."""
    from liger_kernel.transformers.functional import liger_rms_norm

    return liger_rms_norm(hidden_states, self.weight, self.variance_epsilon, 0.0, "llama", False)


def _swiglu_forward(self, x):
    from liger_kernel.transformers.functional import liger_swiglu

    return self.down_proj(liger_swiglu(self.gate_proj(x), self.up_proj(x)))


def _attention_forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
    """Llama attention with Liger's RoPE; falls back to the class forward for caches/attention outputs."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if position_embeddings is None or cache is not None or kwargs.get("output_attentions"):
        return type(self).forward(self, hidden_states, position_embeddings=position_embeddings,
                                  attention_mask=attention_mask, **kwargs)
    from liger_kernel.transformers.functional import liger_rope

    b, t = hidden_states.shape[:2]
    shape = (b, t, -1, self.head_dim)
    q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
    k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
    v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = liger_rope(q, k, cos, sin)
    gqa = q.shape[1] != k.shape[1]
    if attention_mask is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, scale=self.scaling, enable_gqa=gqa)
    else:
        mask = attention_mask[:, :, :, : k.shape[-2]]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling, enable_gqa=gqa)
    out = out.transpose(1, 2).reshape(b, t, -1).contiguous()
    return self.o_proj(out), None


def _lce_forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
    """LlamaForCausalLM.forward with the fused linear + cross-entropy loss (no logits) when labels
    are given; the HF shift (predict token t+1 from position t, last position ignored) and mean
    over predicted tokens, exactly as transformers' ForCausalLMLoss."""
    if labels is None:
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    from transformers.modeling_outputs import CausalLMOutputWithPast

    kwargs.pop("num_items_in_batch", None)
    out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    hidden = out.last_hidden_state
    target = F.pad(labels[:, 1:], (0, 1), value=-100).reshape(-1)
    loss = liger_fused_linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight, target,
                                            bias=self.lm_head.bias, ignore_index=-100, reduction="mean")
    return CausalLMOutputWithPast(loss=loss, logits=None)


def _bind(module: torch.nn.Module, fn) -> None:
    module.forward = types.MethodType(fn, module)


def apply_liger(model: torch.nn.Module, *, blocks: bool, head: bool = True) -> None:
    """Patch this Llama instance (only it) with Liger: with ``head`` the fused loss, with ``blocks``
    every block's norms, SwiGLU MLP and RoPE attention; the final norm with either. Without the head
    (mode 'blocks', DP-SGD) the norms' backward runs out of place (see the module docstring)."""
    if not is_llama(model):
        raise TypeError(f"apply_liger: expected a transformers Llama causal LM, got {type(model).__name__}")
    if not (blocks or head):
        raise ValueError("apply_liger: nothing to patch (blocks=False, head=False)")
    norm = _rms_norm_forward if head else _rms_norm_forward_out_of_place
    if head:
        _bind(model, _lce_forward)
    _bind(model.model.norm, norm)
    if blocks:
        for layer in model.model.layers:
            _bind(layer.input_layernorm, norm)
            _bind(layer.post_attention_layernorm, norm)
            _bind(layer.mlp, _swiglu_forward)
            _bind(layer.self_attn, _attention_forward)
    model._securefed_fused = ("all" if head else "blocks") if blocks else "head"


def _nll_per_record(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(m,) each record's mean next-token loss from its (m, T, V) logits: the HF shift, fp32 softmax.

    The targets shift, not the logits: ``logits[:, :-1]`` is not contiguous, so flattening it copied all of
    them (at 20m, batch 128: 8.6 GB, ≈ 30 ms of a 190 ms DP-SGD step on the H200, RESULTS.md (G34)). The last
    position's target is ignored instead: its loss and its gradient are exactly 0. A negative id (a document-
    packed row's padding, packing.PAD) is no target either; the mean is over a record's real targets."""
    m, t = ids.shape
    targets = torch.cat([ids[:, 1:], ids.new_full((m, 1), -100)], dim=1)
    targets = targets.masked_fill(targets < 0, -100)
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none", ignore_index=-100)
    return nll.view(m, t).sum(1) / (targets >= 0).sum(1).clamp(min=1)


_nll_compiled = None


def per_record_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Each record's mean next-token loss (DP-SGD's per-record losses). On CUDA the loss is compiled
    (dynamic batch: Poisson batches vary): Inductor reads the bf16 logits once for the log-sum-exp and
    writes their gradient once, instead of an fp32 copy, an fp32 log-softmax kept for backward and an
    fp32 gradient cast back (at 20m, batch 128: 17 GB each). Elsewhere, or where compiling the forward fails,
    eager (with a warning). The backward is compiled at the first backward: a failure there is raised, not
    hidden."""
    global _nll_compiled
    if logits.device.type != "cuda" or _nll_compiled is False:
        return _nll_per_record(logits, ids)
    if _nll_compiled is None:
        _nll_compiled = torch.compile(_nll_per_record, dynamic=True)
    try:
        return _nll_compiled(logits, ids)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - Inductor/Triton unavailable or failing here: the eager loss is exact
        log.warning("compiled per-record loss failed (%s: %s); DP-SGD continues with the eager loss",
                    type(e).__name__, str(e)[:200])
        _nll_compiled = False
        return _nll_per_record(logits, ids)


def compile_blocks(model: torch.nn.Module) -> int:
    """Regional compile: every decoder layer compiled on its own (static shapes). Returns the count."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise TypeError(f"compile_blocks: {type(model).__name__} has no model.layers")
    for layer in layers:
        layer.compile(dynamic=False)
    model._securefed_compiled = "blocks"
    return len(layers)


def sdpa_context(backend: str):
    """A context that puts ``backend`` first among SDPA kernels ('auto': torch's own choice). The
    others stay allowed behind it, so an unsupported shape still runs."""
    if backend not in SDPA_BACKENDS:
        raise ValueError(f"train.sdpa_backend must be one of {SDPA_BACKENDS}, got {backend!r}")
    if backend == "auto" or not torch.cuda.is_available():
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]
    order = [first] + [b for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                   SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH) if b != first]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch < 2.6: no priority order, only an allow-list
        return sdpa_kernel(order)
