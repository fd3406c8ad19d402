"""Partitioners: which documents each data holder gets (simulation only; real holders bring their own).

* ``iid``        shuffle all documents (seeded) and deal each to the holder with the least text so
                 far: every holder sees every source in roughly its global proportion, and holders
                 get about equal amounts of text.
* ``by_source``  whole sources per holder (non-IID, like the paper's Pile experiment where each
                 client holds one Pile subset): source j goes to holder j mod n, in corpus order, so
                 the assignment does not depend on the seed.
* ``dirichlet``  per source, holder shares p ~ Dir(α·1_n) (Hsu et al. 2019, arXiv 1909.06335);
                 α → ∞ approaches IID, α → 0 approaches one holder per source.

Every partitioner returns a list of n lists whose concatenation is a permutation of the input:
each document lands exactly once (tests/data/test_partition.py checks it with hypothesis).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .documents import DataError, Document, group_by_source

__all__ = ["partition", "partition_iid", "partition_by_source", "partition_dirichlet", "Method"]

Method = Literal["iid", "by_source", "dirichlet"]
_DIRICHLET_ATTEMPTS = 100


def _check_n(n_holders: int, docs: Sequence[Document]) -> None:
    if isinstance(n_holders, bool) or not isinstance(n_holders, int):
        raise TypeError(f"n_holders must be an int, got {type(n_holders).__name__}")
    if n_holders < 1:
        raise ValueError(f"n_holders must be >= 1, got {n_holders}")
    if len(docs) < n_holders:
        raise DataError(f"{len(docs)} training documents cannot be split among {n_holders} holders")


def partition_iid(docs: Sequence[Document], n_holders: int, *, seed: int) -> list[list[Document]]:
    _check_n(n_holders, docs)
    order = np.random.default_rng(seed).permutation(len(docs))
    out: list[list[Document]] = [[] for _ in range(n_holders)]
    # Least-loaded first (by characters), not plain round-robin: file sizes are heavy-tailed, and
    # dealing by count alone gave holders 2x different token counts on the stdlib corpus.
    heap = [(0, h) for h in range(n_holders)]  # (characters so far, holder); ties -> lower holder
    for i in order:
        load, h = heapq.heappop(heap)
        out[h].append(docs[i])
        heapq.heappush(heap, (load + len(docs[i].text), h))
    return out


def partition_by_source(docs: Sequence[Document], n_holders: int) -> list[list[Document]]:
    _check_n(n_holders, docs)
    groups = group_by_source(docs)
    if len(groups) < n_holders:
        raise DataError(
            f"partition 'by_source' needs at least as many sources as holders: {len(groups)} "
            f"source(s) for {n_holders} holders; use fewer holders, more sources (max_sources), "
            "or partition 'iid'/'dirichlet'"
        )
    out: list[list[Document]] = [[] for _ in range(n_holders)]
    for j, source_docs in enumerate(groups.values()):
        out[j % n_holders].extend(source_docs)
    return out


def partition_dirichlet(
    docs: Sequence[Document], n_holders: int, *, alpha: float, seed: int
) -> list[list[Document]]:
    _check_n(n_holders, docs)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise TypeError("alpha must be a number")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    rng = np.random.default_rng(seed)
    groups = list(group_by_source(docs).values())
    # Redraw (from the same stream, so still deterministic) until no holder is empty: an empty
    # holder cannot train. Small α with few documents may never get there: then say so.
    for _ in range(_DIRICHLET_ATTEMPTS):
        out: list[list[Document]] = [[] for _ in range(n_holders)]
        for source_docs in groups:
            p = rng.dirichlet(np.full(n_holders, float(alpha)))
            order = rng.permutation(len(source_docs))
            # cut points of the shuffled source at the cumulative shares
            cuts = np.round(np.cumsum(p)[:-1] * len(source_docs)).astype(int)
            for h, part in enumerate(np.split(order, cuts)):
                out[h].extend(source_docs[i] for i in part)
        if all(out):
            return out
    raise DataError(
        f"Dirichlet(alpha={alpha}) partition left a holder without documents in "
        f"{_DIRICHLET_ATTEMPTS} draws ({len(docs)} documents, {n_holders} holders); raise alpha, "
        "add documents or use fewer holders"
    )


def partition(
    docs: Sequence[Document], n_holders: int, *, method: Method, seed: int, alpha: float = 0.5
) -> list[list[Document]]:
    if method == "iid":
        return partition_iid(docs, n_holders, seed=seed)
    if method == "by_source":
        return partition_by_source(docs, n_holders)
    if method == "dirichlet":
        return partition_dirichlet(docs, n_holders, alpha=alpha, seed=seed)
    raise ValueError(f"partition method must be one of 'iid', 'by_source', 'dirichlet', got {method!r}")
