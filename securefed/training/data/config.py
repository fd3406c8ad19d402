"""DataConfig: what data to build and how (a frozen dataclass loadable by securefed.configio)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["DataConfig", "default_cache_dir", "eval_split_for"]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class DataConfig:
    # "stdlib" or a path (dir / .jsonl / .parquet) whose documents are grouped by source (top-level
    # subdirectory name, or a JSONL/Parquet "source" field when present)
    source: str = "stdlib"
    # optional: one local path per holder (each holder's own data); overrides partitioning when given
    holder_paths: tuple[str, ...] = ()
    text_field: str = "text"
    # JSONL field / Parquet column naming whom each record is about (a patient id): train.dp_sgd.unit=group then
    # protects all of one id's documents together (protocols/dp.md §10.2). null: not read
    unit_field: str | None = None
    partition: Literal["iid", "by_source", "dirichlet"] = "by_source"
    dirichlet_alpha: float = 0.5
    # caps on the pooled corpus (stdlib or ``source``): None = no cap. Whatever a cap leaves out is stated
    # in the data summary line and in data_manifest.json ("caps").
    max_bytes_per_source: int | None = 400_000
    max_sources: int | None = 8
    # holder_paths: each holder's data is all its own, so the pool caps above never apply to it; this
    # optional cap does (whole documents, in order, up to this many bytes per holder), and is stated too
    max_bytes_per_holder: int | None = None
    eval_fraction: float = 0.1
    # how documents are held out for evaluation: "budget" (about eval_fraction of each source's tokens,
    # split_eval), "independent" (each document by a hash of its own text: what DP-SGD per document needs,
    # protocols/dp.md §10.2), "auto" (independent under train.dp_sgd.unit=document, else budget). With unit_field
    # set, whole ids are held out by a hash of the id whatever this says
    eval_split: Literal["auto", "budget", "independent"] = "auto"
    # "train" (byte-level BPE on the public tokenizer corpus) or a path to tokenizer.json / a dir
    tokenizer: str = "train"
    vocab_size: int = 4096  # used when tokenizer == "train"
    seq_len: int = 128
    cache_dir: str | None = None  # default: $SECUREFED_CACHE or ~/.cache/securefed
    # cache the token ids of a local data.source under cache_dir, so later runs skip tokenization. Only for a PUBLIC
    # corpus (the GPU study's): the ids decode back to the text with the tokenizer, and the cache outlives the data
    # (threat_models/system.md SYS-29). The stdlib corpus is always cached; data.holder_paths never are.
    token_cache: bool = False

    def __post_init__(self) -> None:
        for name in ("source", "text_field", "tokenizer"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise TypeError(f"data.{name} must be a string, got {type(v).__name__}")
            if not v.strip():
                raise ValueError(f"data.{name} must not be empty")
        if self.unit_field is not None and (not isinstance(self.unit_field, str) or not self.unit_field.strip()):
            raise ValueError(f"data.unit_field must be a non-empty string or null, got {self.unit_field!r}")
        if not isinstance(self.holder_paths, tuple) or not all(isinstance(p, str) for p in self.holder_paths):
            raise TypeError("data.holder_paths must be a tuple of strings")
        if any(not p.strip() for p in self.holder_paths):
            raise ValueError("data.holder_paths must not contain empty paths")
        if self.partition not in ("iid", "by_source", "dirichlet"):
            raise ValueError(f"data.partition must be 'iid', 'by_source' or 'dirichlet', got {self.partition!r}")
        a = self.dirichlet_alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            raise TypeError("data.dirichlet_alpha must be a number")
        if not (a > 0 and math.isfinite(a)):
            raise ValueError(f"data.dirichlet_alpha must be positive and finite, got {a}")
        for name, lo in (("max_bytes_per_source", 1), ("vocab_size", 260), ("seq_len", 2), ("max_bytes_per_holder", 1)):
            v = getattr(self, name)
            if v is None and name.startswith("max_bytes"):
                continue
            if not _is_int(v):
                raise TypeError(f"data.{name} must be an int" + (" or null" if name.startswith("max_bytes") else "")
                                + f", got {v!r}")
            if v < lo:
                raise ValueError(f"data.{name} must be >= {lo}, got {v}")
        if self.max_sources is not None:
            if not _is_int(self.max_sources):
                raise TypeError(f"data.max_sources must be an int or null, got {self.max_sources!r}")
            if self.max_sources < 1:
                raise ValueError(f"data.max_sources must be >= 1 or null, got {self.max_sources}")
        if self.eval_split not in ("auto", "budget", "independent"):
            raise ValueError(f"data.eval_split must be 'auto', 'budget' or 'independent', got {self.eval_split!r}")
        f = self.eval_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)):
            raise TypeError("data.eval_fraction must be a number")
        if not 0.0 < f < 1.0:
            raise ValueError(f"data.eval_fraction must be in (0, 1), got {f}")
        if not isinstance(self.token_cache, bool):
            raise TypeError(f"data.token_cache must be true or false, got {self.token_cache!r}")
        if self.cache_dir is not None and (not isinstance(self.cache_dir, str) or not self.cache_dir.strip()):
            raise ValueError("data.cache_dir must be a non-empty string or null")


def default_cache_dir(configured: str | None = None) -> Path:
    """``configured``, else ``$SECUREFED_CACHE``, else ``~/.cache/securefed``."""
    raw = configured or os.environ.get("SECUREFED_CACHE") or "~/.cache/securefed"
    return Path(raw).expanduser()


def eval_split_for(dp_sgd, data_cfg) -> str:
    """The held-out split (data.eval_split; "auto": what the DP-SGD unit needs, protocols/dp.md §10.2):
    "independent" under unit=document (each document by a hash of its own text), else "budget" (unit=group
    splits by id in the pipeline anyway). ValueError for unit=document with an explicit "budget"."""
    doc = dp_sgd.enabled and dp_sgd.unit == "document"
    if data_cfg.eval_split == "auto":
        return "independent" if doc else "budget"
    if doc and data_cfg.eval_split == "budget":
        raise ValueError("train.dp_sgd.unit=document needs data.eval_split independent (or auto): the token-budget "
                         "split ties each document's side to the others, so removing one moves others (dp.md §10.2)")
    return data_cfg.eval_split
