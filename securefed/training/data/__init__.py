"""Data for federated pre-training: local sources, the stdlib default corpus, a public tokenizer,
partitioners, sequence packing, held-out splits and the unigram baseline.

The tokenizer is trained on a PUBLIC corpus only, never on the holders' data: a BPE vocabulary
lists its training text's frequent strings, and the tokenizer is shared with every holder and
published beside the model (see tokenizer.py).

Entry point for the trainer/runtime: ``prepare_federated_data(DataConfig(...), n_holders=, seed=)``.

Names are resolved on first use (PEP 562), so ``DataConfig`` loads without torch or transformers:
a run's config is checked before anything heavy is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import DataConfig, default_cache_dir
from .documents import DataError, Document

# eager (numpy only): the function ``partition`` shares its name with its module, and a lazy name
# would be shadowed by the submodule once anything imports it
from .partition import partition, partition_by_source, partition_dirichlet, partition_iid

_WHERE = {
    "content_hash": "documents", "group_by_source": "documents", "load_documents": "documents",
    "select_documents": "documents",
    "pack": "packing", "split_eval": "packing", "unigram_perplexity": "packing",
    "FederatedData": "pipeline", "load_sources": "pipeline", "prepare_federated_data": "pipeline",
    "tokenize_documents": "pipeline",
    "stdlib_sources": "stdlib", "tokenizer_corpus": "stdlib",
    "SPECIAL_TOKENS": "tokenizer", "load_tokenizer": "tokenizer", "train_bpe": "tokenizer",
    "trained_tokenizer": "tokenizer", "wrap": "tokenizer",
}  # fmt: skip

__all__ = [
    "DataConfig", "FederatedData", "prepare_federated_data", "DataError", "Document",
    "load_documents", "group_by_source", "select_documents", "content_hash", "stdlib_sources",
    "tokenizer_corpus", "load_sources", "tokenize_documents", "train_bpe", "wrap", "load_tokenizer",
    "trained_tokenizer", "SPECIAL_TOKENS", "partition", "partition_iid", "partition_by_source",
    "partition_dirichlet", "pack", "split_eval", "unigram_perplexity", "default_cache_dir",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
