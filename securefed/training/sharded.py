"""A holder sharded over several GPUs (issue 17): θ in and Δ out shard by shard, never the whole model.

``train.strategy: fsdp`` runs the holder's K steps under FSDP2 (``torch.distributed.fsdp.fully_shard``,
through Lightning Fabric's ModelParallelStrategy): parameters, gradients and AdamW state are sharded,
each decoder layer is its own FSDP unit (gathered for its forward/backward, freed after), the root holds
the embeddings, final norm and head. Why FSDP2 and not Fabric's ``strategy="fsdp"`` (FSDP1): FSDP1's
flat parameters pack several tensors into one padded buffer whose shard boundaries fall anywhere, and
Fabric refuses it off GPU ("You selected the FSDP strategy but FSDP is only available on GPU"); FSDP2
shards every parameter on its own along dim 0, which maps onto the flat vector in a few lines, and runs
on CPU (gloo), so the equivalence test runs in CI.

The map (securefed.training.flat order: named_parameters, row-major). Parameter i of shape (n0, …) with
``row`` values per row starts at flat offset off_i; fully_shard chunks dim 0 as torch.chunk does:
c = ⌈n0 / W⌉ rows per rank, rank r holds rows [min(r·c, n0), min((r+1)·c, n0)). So rank r's part of
parameter i is the contiguous flat range [off_i + start·row, off_i + stop·row): a *piece*. Every rank
computes the whole layout from shapes alone, so streaming the pieces in flat order needs no metadata
exchange. Masks are positional (primitives.prg.accumulate_masks_at), so each rank masks its own pieces
and the masked pieces, concatenated in flat order, are bit-identical to the unsharded masked vector.

Memory per rank: its shard of θ (fp32), gradients, AdamW moments, plus one piece in flight when Δ or the
masked words are streamed to rank 0 (``stream_to_rank0``); the full vector exists only where a caller
asks for it (``ShardedDelta.to_flat``: tests, and rank 0's host memory while the holder's shard-wise
upload is not wired — see README "Holders bigger than one GPU").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Piece", "shard_layout", "fsdp_strategy", "fsdp_parallelize", "load_flat_sharded", "ShardedDelta",
           "stream_to_rank0"]


@dataclass(frozen=True)
class Piece:
    """Rank ``rank``'s rows [start, stop) of parameter ``param``: flat positions [lo, hi)."""

    param: int
    rank: int
    start: int
    stop: int
    lo: int
    hi: int


def _is_sharded(p: torch.Tensor) -> bool:
    return hasattr(p, "placements") and hasattr(p, "to_local")


def shard_layout(shapes: list[tuple[int, ...]], world: int, sharded: list[bool] | None = None) -> list[Piece]:
    """Every rank's pieces, in flat order (rank 0's piece of a parameter first). A parameter that is not
    sharded (``sharded[i]`` False) is replicated: rank 0's copy is the one that counts."""
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an int >= 1, got {world!r}")
    sharded = [True] * len(shapes) if sharded is None else sharded
    out, off = [], 0
    for i, (shape, sh) in enumerate(zip(shapes, sharded)):
        n0 = shape[0] if shape else 1
        row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        if not sh or world == 1:
            out.append(Piece(i, 0, 0, n0, off, off + n0 * row))
        else:
            c = -(-n0 // world)                                # ⌈n0 / W⌉, torch.chunk's chunk size
            for r in range(world):
                start, stop = min(r * c, n0), min((r + 1) * c, n0)
                if stop > start:                               # trailing ranks may hold no rows of a small tensor
                    out.append(Piece(i, r, start, stop, off + start * row, off + stop * row))
        off += n0 * row
    return out


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return list(model.parameters())


def model_layout(model: torch.nn.Module, world: int) -> list[Piece]:
    ps = _params(model)
    return shard_layout([tuple(p.shape) for p in ps], world, [_is_sharded(p) for p in ps])


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if _is_sharded(p) else p


def _my_pieces(model: torch.nn.Module, rank: int, world: int) -> list[tuple[Piece, torch.Tensor]]:
    """(piece, this rank's local tensor of it) for the pieces this rank owns, checked against the layout."""
    ps = _params(model)
    mine = []
    for piece in model_layout(model, world):
        if piece.rank != rank:
            continue
        local = _local(ps[piece.param])
        if local.numel() != piece.hi - piece.lo:
            raise ValueError(f"parameter {piece.param}: local shard has {local.numel()} values, the dim-0 chunk "
                             f"layout expects {piece.hi - piece.lo} (not a dim-0 FSDP2 shard?)")
        mine.append((piece, local))
    return mine


def fsdp_strategy(devices: int, *, bf16: bool):
    """Fabric's strategy for ``train.strategy=fsdp``: FSDP2 over ``devices`` ranks of one host, no tensor
    parallelism. (Fabric's "fsdp" string means FSDP1: flat parameters, and GPU only.)"""
    from functools import partial

    from lightning.fabric.strategies import ModelParallelStrategy

    return ModelParallelStrategy(partial(fsdp_parallelize, bf16=bf16), data_parallel_size=devices,
                                 tensor_parallel_size=1)


def fsdp_parallelize(model: torch.nn.Module, mesh, *, bf16: bool, reshard_after_forward: bool = True) -> torch.nn.Module:
    """Fabric's parallelize_fn: one FSDP2 unit per decoder layer, then the root (embeddings, norm, head).
    bf16: compute in bf16 with fp32 master weights and fp32 gradient reduction (the shards stay fp32,
    so Δ = θ_global − θ_local is formed in fp32 exactly as on one GPU)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
    kw = {"mesh": dp_mesh}
    if bf16:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise TypeError(f"fsdp_parallelize: {type(model).__name__} has no model.layers")
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **kw)
    fully_shard(model, **kw)   # the root: its all-gather overlaps the first layer's
    return model


@torch.no_grad()
def load_flat_sharded(model: torch.nn.Module, flat: torch.Tensor, *, rank: int, world: int) -> None:
    """Copy θ (a (P,) host vector) into this rank's shards only; nothing else is materialized."""
    total = sum(p.numel() for p in _params(model))
    if flat.ndim != 1 or flat.numel() != total:
        raise ValueError(f"flat vector has {flat.numel()} values, the model has {total} parameters")
    for piece, local in _my_pieces(model, rank, world):
        local.copy_(flat[piece.lo : piece.hi].view_as(local))
    if rank != 0:   # a replicated (unsharded) parameter is rank 0's piece, but every rank trains with it
        for piece in model_layout(model, world):
            p = _params(model)[piece.param]
            if not _is_sharded(p):
                p.copy_(flat[piece.lo : piece.hi].view_as(p))

@dataclass
class ShardedDelta:
    """This rank's part of Δ = θ_global − θ_local: (piece, (hi−lo,) float32 CPU values), in flat order."""

    dim: int
    rank: int
    world: int
    layout: list[Piece]
    pieces: list[tuple[Piece, torch.Tensor]]

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: torch.nn.Module, theta: torch.Tensor, *, rank: int, world: int) -> "ShardedDelta":
        out = []
        for piece, local in _my_pieces(model, rank, world):
            d = theta[piece.lo : piece.hi].to(local.device, torch.float32) - local.detach().reshape(-1).float()
            out.append((piece, d.to("cpu")))                  # one piece on the device at a time
        return cls(int(theta.numel()), rank, world, model_layout(model, world), out)

    def sq_norm_local(self) -> float:
        """Σ Δ² over this rank's pieces (float64); all-reduce (sum) over ranks for ‖Δ‖² (the clip's norm)."""
        return float(sum(float(torch.sum(d.double() ** 2)) for _, d in self.pieces))

    def stream(self, dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
        """(lo, values) for every piece in flat order: on rank 0 every piece, on the others none (they
        send theirs). A collective: every rank must iterate it to the end."""
        own = {p.lo: d.numpy() for p, d in self.pieces}
        return stream_to_rank0(self.layout, own, rank=self.rank, world=self.world, dtype=dtype)

    def masked_stream(self, quantize, keys_and_signs: list[tuple[bytes, int]], ring, *,
                      chunk_elements: int = 1 << 20) -> Iterator[tuple[int, np.ndarray]]:
        """y = quantize(Δ) + Σ ±PRG(key) (mod 2^k), each rank masking only its own pieces at their flat
        positions, streamed to rank 0 in flat order: the same words the unsharded holder uploads.
        ``quantize`` maps a float32 piece to ring words elementwise (a whole-vector step such as the
        Hadamard rotation of distributed DP cannot run piece by piece)."""
        from securefed.primitives.prg import accumulate_masks_at

        own = {}
        for p, d in self.pieces:
            q = np.ascontiguousarray(quantize(d.numpy()), dtype=ring.dtype)
            own[p.lo] = accumulate_masks_at(q, p.lo, keys_and_signs, ring, chunk_elements=chunk_elements)
        return stream_to_rank0(self.layout, own, rank=self.rank, world=self.world, dtype=ring.dtype)

    def to_flat(self) -> torch.Tensor | None:
        """The whole Δ on rank 0's host (None elsewhere), assembled piece by piece: tests and the holder's
        host-side path until the shard-wise upload is wired."""
        flat = torch.empty(self.dim, dtype=torch.float32) if self.rank == 0 else None
        for lo, v in self.stream():
            flat[lo : lo + v.shape[0]] = torch.from_numpy(v)
        return flat


def stream_to_rank0(layout: list[Piece], own: dict[int, np.ndarray], *, rank: int, world: int,
                    dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
    """Rank 0 yields (lo, piece) in flat order; a rank > 0 sends its pieces (``own``: {lo: array}) when
    their turn comes and yields nothing. Point-to-point over the default process group (bytes as uint8,
    so ring words and floats travel alike); rank 0's buffer is one piece. NCCL needs device tensors:
    pieces go through the current CUDA device there."""
    import torch.distributed as dist

    if world == 1:
        for p in layout:
            yield p.lo, own[p.lo]
        return
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    itemsize = np.dtype(dtype).itemsize
    for p in layout:
        n = (p.hi - p.lo) * itemsize
        if p.rank == 0:
            if rank == 0:
                yield p.lo, own[p.lo]
        elif rank == p.rank:
            arr = np.ascontiguousarray(own[p.lo], dtype=dtype)
            dist.send(torch.from_numpy(arr.view(np.uint8)).to(dev), dst=0)
        elif rank == 0:
            buf = torch.empty(n, dtype=torch.uint8, device=dev)
            dist.recv(buf, src=p.rank)
            yield p.lo, buf.cpu().numpy().view(dtype)
