"""Evaluation split, sequence packing and the unigram baseline.

Split: per source, whole documents are held out, visited in the order of SHA-256 of their id,
until about ``eval_fraction`` of the source's tokens (and at least one sequence) is held out. The
rule depends only on document ids and token counts, never on the seed or the partition, so eval
documents are never in any holder's training data, whatever the partition.

Packing (GPT-style): documents are joined with EOS after each one and chunked into fixed-length
rows; the tail shorter than ``seq_len`` is dropped. The model does the label shift itself (HF
causal LM: ``labels = input_ids``), so rows are plain ``input_ids``.

Document packing (``pack_documents``, DP-SGD with ``unit: document``, protocols/dp.md §10.2): each document
gets rows of its own, its last one right-padded with ``PAD`` (-1, never a token id), so a document's rows
depend on that document alone — removing it removes exactly its rows and changes no other row.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .documents import Document

__all__ = ["eval_rank", "split_eval", "pack", "pack_documents", "document_row_counts", "PAD", "unigram_perplexity"]

PAD = -1   # a padding position of a document-packed row: no token, no target (the trainer masks it)


def eval_rank(doc_id: str) -> bytes:
    """Sort key of the held-out split: a hash of the id, so the choice looks random but is fixed."""
    return hashlib.sha256(b"securefed-eval-split-v1\x00" + doc_id.encode("utf-8")).digest()


def split_eval(
    docs: Sequence[Document],
    *,
    eval_fraction: float,
    n_tokens: Callable[[Document], int],
    min_eval_tokens: int,
) -> tuple[list[Document], list[Document]]:
    """(train, eval) for the documents of ONE source; both keep the input order.

    Target: ``eval_fraction`` of the source's tokens, and at least ``min_eval_tokens`` (one packed
    sequence). Documents are visited in hash order and held out while they fit in the target
    (whole documents only: one large file must not swallow the budget); if that holds out less
    than ``min_eval_tokens``, the smallest remaining documents are added. At least one document
    always stays for training; a single-document source is all training.
    ``n_tokens(doc)`` is the document's packed length (tokens + EOS).
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    n = len(docs)
    if n < 2:
        return list(docs), []
    sizes = [n_tokens(d) for d in docs]
    ranked = sorted(range(n), key=lambda i: eval_rank(docs[i].doc_id))
    target = max(eval_fraction * sum(sizes), min_eval_tokens)
    chosen: set[int] = set()
    held = 0
    for i in ranked:
        if held + sizes[i] <= target and len(chosen) < n - 1:
            chosen.add(i)
            held += sizes[i]
    for i in sorted(ranked, key=lambda i: sizes[i]):  # stable: ties stay in hash order
        if held >= min_eval_tokens or len(chosen) >= n - 1:
            break
        if i not in chosen:
            chosen.add(i)
            held += sizes[i]
    train = [d for i, d in enumerate(docs) if i not in chosen]
    held_out = [d for i, d in enumerate(docs) if i in chosen]
    return train, held_out


def pack(token_lists: Sequence[np.ndarray], *, seq_len: int, eos_id: int) -> torch.Tensor:
    """Join token arrays with EOS after each and cut into rows: LongTensor (N, seq_len)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
    if not token_lists:
        return torch.empty((0, seq_len), dtype=torch.long)
    eos = np.array([eos_id], dtype=np.int64)
    flat = np.concatenate([part for ids in token_lists for part in (ids.astype(np.int64), eos)])
    n = flat.size // seq_len  # the tail (< seq_len tokens) is dropped
    return torch.from_numpy(flat[: n * seq_len].copy()).view(n, seq_len)  # (N, seq_len)


def document_row_counts(lengths: Sequence[int], *, seq_len: int, max_rows: int | None = None) -> np.ndarray:
    """Rows each document gets under ``pack_documents`` from its token count (EOS not included): its tokens
    plus EOS cut into rows of ``seq_len``; a last piece with fewer than two tokens (no next-token target
    inside it) is dropped; at most ``max_rows``."""
    n = np.asarray(lengths, dtype=np.int64) + 1                     # + EOS
    full, rest = np.divmod(n, seq_len)
    rows = full + (rest >= 2)
    return rows if max_rows is None else np.minimum(rows, max_rows)


def pack_documents(token_lists: Sequence[np.ndarray], *, seq_len: int, eos_id: int,
                   max_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, unit): rows (N, seq_len) LongTensor, each document's tokens + EOS in rows of its own, the last
    right-padded with PAD; unit (N,) LongTensor, the index of the document (in ``token_lists``) each row
    belongs to, non-decreasing. Rows per document: ``document_row_counts`` (a document with none — only
    EOS — has no row). ``max_rows`` cuts a longer document to its first rows."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ValueError(f"max_rows must be an int >= 1 or None, got {max_rows!r}")
    counts = document_row_counts([int(a.size) for a in token_lists], seq_len=seq_len, max_rows=max_rows)
    total = int(counts.sum())
    rows = np.full((total, seq_len), PAD, dtype=np.int64)
    unit = np.repeat(np.arange(len(token_lists), dtype=np.int64), counts)
    at = 0
    for ids, k in zip(token_lists, counts.tolist()):
        if k == 0:
            continue
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (int(ids.min()) < 0):
            raise ValueError("token ids must be >= 0 (negative values mark padding)")
        doc = np.concatenate([ids, np.array([eos_id], dtype=np.int64)])[: k * seq_len]
        rows.reshape(-1)[at * seq_len : at * seq_len + doc.size] = doc
        at += k
    return torch.from_numpy(rows), torch.from_numpy(unit)


def unigram_perplexity(train: torch.Tensor, eval: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of ``eval`` tokens under train-set unigram frequencies, add-one smoothed:

        p(w) = (count_train(w) + 1) / (N_train + V),   ppl = exp(-mean_{t in eval} log p(t))

    A floor any language model must beat; every eval token counts (including each row's first).
    """
    for name, t in (("train", train), ("eval", eval)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"{name} must hold integer token ids, got {t.dtype}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if eval.numel() == 0:
        raise ValueError("eval holds no tokens")
    tr, ev = train.reshape(-1).long(), eval.reshape(-1).long()
    for name, t in (("train", tr), ("eval", ev)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab_size):
            raise ValueError(f"{name} holds token ids outside [0, vocab_size={vocab_size})")
    counts = torch.bincount(tr, minlength=vocab_size).double()
    log_p = torch.log(counts + 1.0) - math.log(tr.numel() + vocab_size)
    return float(torch.exp(-log_p[ev].mean()))
