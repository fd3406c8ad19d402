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

__all__ = ["ModelPreset", "PRESETS", "get_preset", "build_model", "count_parameters", "load_initial_weights"]


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
                attn_implementation: str = "sdpa", init_from: str | None = None) -> LlamaForCausalLM:
    """A freshly initialised model; the same (preset, vocab, seq_len, seed) gives the same weights. With
    ``init_from`` (model.init_from), the weights of that saved model instead (:func:`load_initial_weights`)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    cfg = llama_config(p, vocab_size=vocab_size, seq_len=seq_len, attn_implementation=attn_implementation)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    if init_from is not None:
        load_initial_weights(model, init_from, preset=p.name)
    return model


def load_initial_weights(model: LlamaForCausalLM, path: str, *, preset: str) -> None:
    """model.init_from: copy the weights of a model saved with ``save_pretrained`` (a run's RUN_DIR/model, or any
    LlamaForCausalLM of the same shape) into ``model``. Every tensor must be there with this preset's shape (a tied
    lm_head may be absent): otherwise one ValueError naming the first difference, and nothing is loaded."""
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    f = Path(path).expanduser() / "model.safetensors"
    if not f.is_file():
        raise ValueError(f"model.init_from: {f} does not exist (a directory written by save_pretrained, such as a "
                         f"run's RUN_DIR/model, with one model.safetensors)")
    try:
        saved = load_file(str(f))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"model.init_from: {f} is not a readable safetensors file: {e}") from None
    own = model.state_dict()
    tied = model.config.tie_word_embeddings
    for name, t in own.items():
        if name not in saved:
            if tied and name == "lm_head.weight":
                continue
            raise ValueError(f"model.init_from: {f} has no tensor {name!r}: it is not a {preset} model")
        if tuple(saved[name].shape) != tuple(t.shape):
            raise ValueError(f"model.init_from: {f}'s {name} has shape {tuple(saved[name].shape)}, preset {preset} "
                             f"with this vocabulary needs {tuple(t.shape)} (another preset, or another tokenizer?)")
        if not torch.isfinite(saved[name]).all():   # a diverged checkpoint: every round after would be refused
            raise ValueError(f"model.init_from: {f}'s {name} is not finite everywhere")
    extra = sorted(set(saved) - set(own))
    if extra:
        raise ValueError(f"model.init_from: {f} holds tensors a {preset} model has not ({extra[0]!r}, …)")
    if tied and "lm_head.weight" in saved and not torch.equal(saved["lm_head.weight"], saved["model.embed_tokens.weight"]):
        # one tensor here: loading both would keep whichever came last, silently
        raise ValueError(f"model.init_from: {f} has an output layer of its own, and preset {preset} ties it to the "
                         f"input embeddings")
    with torch.no_grad():
        for name, t in own.items():
            if name in saved:
                t.copy_(saved[name].to(t.dtype))
    if tied:
        model.tie_weights()


def parameter_count(preset: str | ModelPreset, *, vocab_size: int, seq_len: int) -> int:
    """P, the length of the flat vector, without allocating the model (built on the meta device)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(p, vocab_size=vocab_size, seq_len=seq_len))
    return count_parameters(model)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
