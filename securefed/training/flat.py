"""Flat float32 views of a model's parameters: what crosses the federation.

The order is ``model.named_parameters()`` (shared/tied tensors appear once), fixed by the architecture,
so every party agrees on which coordinate is which without sending names.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["param_layout", "get_flat", "set_flat", "flat_hash"]


def param_layout(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


@torch.no_grad()
def get_flat(model: torch.nn.Module) -> torch.Tensor:
    """All parameters as one float32 CPU vector, shape (P,)."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float32) for p in model.parameters()])


@torch.no_grad()
def set_flat(model: torch.nn.Module, flat: torch.Tensor) -> None:
    """Copy a (P,) vector into the model's parameters (dtype/device converted per tensor)."""
    total = sum(p.numel() for p in model.parameters())
    if flat.ndim != 1 or flat.numel() != total:
        raise ValueError(f"flat vector has {flat.numel()} values, the model has {total} parameters")
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def flat_hash(flat: torch.Tensor) -> bytes:
    """SHA-256 of the float32 little-endian bytes: the global-model hash holders compare."""
    return hashlib.sha256(flat.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).digest()
