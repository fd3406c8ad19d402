"""GPU memory a holder needs per device: computed from the architecture, not measured (issue 17).

Torch-free arithmetic, so the README table, the benchmark's "estimate" column and a config check can all
use it. Bytes per GPU for P parameters, W GPUs, per-GPU batch b of s tokens, width d, L layers:

  states        fp32 master weights 4P, fp32 gradients 4P, AdamW moments 8P      = 16P   (one GPU, DDP)
                sharded under FSDP (FSDP2 reduce-scatters gradients into fp32 shards)  16P / W
                DDP adds its gradient buckets (a second fp32 copy of the gradients):  + 4P
  transient     FSDP only: a decoder layer's bf16 gather plus the prefetched next one (2·2·P_layer),
                that layer's unsharded fp32 gradient before its reduce-scatter (4·P_layer), and the
                root unit (embeddings, head) kept gathered in bf16 from forward to backward (2·P_root)
  activations   bf16, SDPA (flash/cuDNN: no s×s attention matrix kept), Liger's fused loss (no logits):
                ≈ 34·s·b·d bytes per layer — Korthikanti et al. 2022 ("Reducing Activation Recomputation
                in Large Transformer Models", §4.1) without the 5·a·s²·b attention terms; for SwiGLU at
                f = 8/3·d the MLP keeps its input and gate/up/product (2sbd + 6sbf = 18 sbd, GELU's 4d MLP
                19 sbd) and there is no dropout mask — so 34 is a round upper figure, not a fit
                with activation checkpointing: each layer keeps its input (2·s·b·d) and one layer's
                full set is alive while it is recomputed: 2·s·b·d·L + 34·s·b·d
  not counted   the CUDA context and allocator fragmentation (≈1–3 GiB), compile workspaces, θ_global
                and Δ in host memory, the fp32 logits of the plain (non-Liger) loss (≈ 8·s·b·V more)
"""

from __future__ import annotations

from dataclasses import dataclass

from securefed.training.config import ModelPreset, get_preset

__all__ = ["MemoryEstimate", "parameters", "estimate", "host_bytes", "available_host_bytes"]

ACT_BYTES_PER_LAYER = 34   # × s·b·d (see the module docstring)


def parameters(preset: ModelPreset, vocab_size: int) -> tuple[int, int, int]:
    """(P, P_layer, P_root): all, one decoder layer, and the root unit (embeddings, head, final norm).
    A layer is 4d² attention + 3·d·f SwiGLU + 2d norm gains; equal to models.parameter_count."""
    d, f = preset.d_model, preset.ffn_dim
    layer = 4 * d * d + 3 * d * f + 2 * d
    root = vocab_size * d * (1 if preset.tie_embeddings else 2) + d
    return preset.n_layers * layer + root, layer, root


@dataclass(frozen=True)
class MemoryEstimate:
    strategy: str
    gpus: int
    params: int
    states: int          # bytes per GPU
    transient: int
    activations: int

    @property
    def total(self) -> int:
        return self.states + self.transient + self.activations


def estimate(preset: str | ModelPreset, *, vocab_size: int, seq_len: int, batch_per_gpu: int, gpus: int = 1,
             strategy: str = "fsdp", activation_checkpointing: bool = False) -> MemoryEstimate:
    """Bytes per GPU (see the module docstring); strategy "fsdp", "ddp" or "single" (one GPU)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if strategy not in ("fsdp", "ddp", "single"):
        raise ValueError(f"strategy must be 'fsdp', 'ddp' or 'single', got {strategy!r}")
    if gpus < 1 or batch_per_gpu < 1 or seq_len < 1:
        raise ValueError("gpus, batch_per_gpu and seq_len must be >= 1")
    if strategy == "single" and gpus != 1:
        raise ValueError("strategy 'single' means gpus=1")
    total, layer, root = parameters(p, vocab_size)
    if strategy == "fsdp":
        states = -(-16 * total // gpus)
        transient = 2 * 2 * layer + 4 * layer + 2 * root
    else:
        states = 16 * total + (4 * total if strategy == "ddp" else 0)
        transient = 0
    sbd = seq_len * batch_per_gpu * p.d_model
    if activation_checkpointing:
        acts = 2 * sbd * p.n_layers + ACT_BYTES_PER_LAYER * sbd
    else:
        acts = ACT_BYTES_PER_LAYER * sbd * p.n_layers
    return MemoryEstimate(strategy, gpus, total, states, transient, acts)


def host_bytes(preset: str | ModelPreset, *, vocab_size: int, n_holders: int, cpu_training: bool) -> int:
    """A floor on the host memory one in-process simulation needs (bytes), before any data or activations.

    Always on the host: θ_global and the outer optimizer's momentum (4P + 4P), the evaluation model (4P).
    When the holders train on the CPU: the training model's weights and gradients (4P + 4P) and each
    holder's AdamW moments (8P per holder, kept between rounds). A floor, not an estimate: it exists so
    that a model that cannot fit is refused with one clear message instead of the kernel's OOM kill.
    """
    total, _, _ = parameters(get_preset(preset) if isinstance(preset, str) else preset, vocab_size)
    per_p = 12 + ((8 + 8 * n_holders) if cpu_training else 0)
    return per_p * total


def available_host_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
