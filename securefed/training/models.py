"""Causal LM presets built from config with `transformers` (never downloaded from a hub).

Architecture: Llama-style (pre-norm RMSNorm, SwiGLU MLP, rotary positions, no biases). The paper's
Photon runs MPT-style models; we keep their widths/depths but use the Llama block because it is
transformers' most used and best optimised causal LM (SDPA / FlashAttention paths, FSDP wrapping
policies, torch.compile friendliness), which matters for the GPU throughput goals, and because it has
no bias vectors, so the only small tensors are the norm gains (what the CKKS route carries).

Parameter count per block is 12·d² (4d² attention + 3·d·(8/3·d) SwiGLU), as for the paper's models.
"""

from __future__ import annotations


import torch
from transformers import LlamaConfig, LlamaForCausalLM

from securefed.training.config import PRESETS, ModelPreset, get_preset  # re-exported (torch-free home)

__all__ = ["ModelPreset", "PRESETS", "get_preset", "build_model", "count_parameters"]


def llama_config(preset: ModelPreset, *, vocab_size: int, seq_len: int, attn_implementation: str = "sdpa") -> LlamaConfig:
    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    if not isinstance(seq_len, int) or not 1 <= seq_len <= preset.max_seq_len:
        raise ValueError(f"seq_len must be in [1, {preset.max_seq_len}] for preset {preset.name}, got {seq_len!r}")
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=preset.d_model,
        intermediate_size=preset.ffn_dim,
        num_hidden_layers=preset.n_layers,
        num_attention_heads=preset.n_heads,
        num_key_value_heads=preset.n_heads,
        max_position_embeddings=max(seq_len, 128),
        tie_word_embeddings=preset.tie_embeddings,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    cfg._attn_implementation = attn_implementation
    return cfg


def build_model(preset: str | ModelPreset, *, vocab_size: int, seq_len: int, seed: int,
                attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """A freshly initialised model; the same (preset, vocab, seq_len, seed) gives the same weights."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    cfg = llama_config(p, vocab_size=vocab_size, seq_len=seq_len, attn_implementation=attn_implementation)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model


def parameter_count(preset: str | ModelPreset, *, vocab_size: int, seq_len: int) -> int:
    """P, the length of the flat vector, without allocating the model (built on the meta device)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(p, vocab_size=vocab_size, seq_len=seq_len))
    return count_parameters(model)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
