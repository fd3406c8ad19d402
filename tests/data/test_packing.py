"""Packing, the held-out split and the unigram baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from securefed.training.data import Document, pack, split_eval, unigram_perplexity


def test_pack_joins_with_eos_and_drops_the_tail():
    rows = pack([np.array([1, 2, 3]), np.array([4]), np.array([5, 6])], seq_len=3, eos_id=0)
    # stream: 1 2 3 0 4 0 5 6 0 -> 3 rows of 3, nothing dropped
    assert rows.dtype == torch.long and rows.tolist() == [[1, 2, 3], [0, 4, 0], [5, 6, 0]]
    rows = pack([np.array([1, 2, 3, 4])], seq_len=2, eos_id=9)  # 1 2 3 4 9 -> tail "9" dropped
    assert rows.tolist() == [[1, 2], [3, 4]]
    assert pack([], seq_len=4, eos_id=0).shape == (0, 4)
    with pytest.raises(ValueError, match="seq_len"):
        pack([np.array([1])], seq_len=1, eos_id=0)


def docs_of(sizes):
    """Documents s/000, s/001, ... and their token counts."""
    docs = [Document(f"s/{i:03d}", "s", "x") for i in range(len(sizes))]
    return docs, {d.doc_id: n for d, n in zip(docs, sizes, strict=True)}


def test_split_eval_holds_out_about_the_fraction_of_tokens_by_whole_documents():
    docs, size = docs_of([100] * 50)
    train, held = split_eval(docs, eval_fraction=0.1, n_tokens=lambda d: size[d.doc_id], min_eval_tokens=32)
    assert len(held) == 5 and len(train) == 45  # 10% of 5000 tokens = 5 documents of 100
    assert {d.doc_id for d in train}.isdisjoint(d.doc_id for d in held)
    assert [d.doc_id for d in train] == sorted(d.doc_id for d in train)  # input order kept
    # a function of ids and sizes only (no seed): the same documents give the same split
    assert split_eval(docs, eval_fraction=0.1, n_tokens=lambda d: size[d.doc_id], min_eval_tokens=32) == (train, held)


def test_split_eval_small_sources():
    docs, size = docs_of([500, 10, 10, 10])
    # target = max(0.1 * 530, 64) = 64 tokens: the three small documents, never the big one alone
    train, held = split_eval(docs, eval_fraction=0.1, n_tokens=lambda d: size[d.doc_id], min_eval_tokens=64)
    assert [d.doc_id for d in held] == ["s/001", "s/002", "s/003"] and len(train) == 1
    docs, size = docs_of([500, 400])  # nothing fits the target: the smallest goes, one stays for training
    train, held = split_eval(docs, eval_fraction=0.1, n_tokens=lambda d: size[d.doc_id], min_eval_tokens=64)
    assert [d.doc_id for d in held] == ["s/001"] and [d.doc_id for d in train] == ["s/000"]
    one, _ = docs_of([500])
    assert split_eval(one, eval_fraction=0.5, n_tokens=lambda d: 500, min_eval_tokens=1) == (one, [])


def test_unigram_perplexity_matches_hand_computation():
    train = torch.tensor([[0, 0, 1, 2]])
    ev = torch.tensor([[0, 3]])
    # V = 4, N = 4: p(0) = (2+1)/8, p(3) = (0+1)/8 -> ppl = exp(-(log 3/8 + log 1/8)/2) = 8/sqrt(3)
    assert unigram_perplexity(train, ev, 4) == pytest.approx(8 / math.sqrt(3), rel=1e-12)
    # uniform train over V tokens: every token has p = 1/V -> ppl = V
    V = 16
    uni = torch.arange(V).repeat(10).view(10, V)
    assert unigram_perplexity(uni, uni[:2], V) == pytest.approx(V, rel=1e-12)
    with pytest.raises(ValueError, match="outside"):
        unigram_perplexity(train, torch.tensor([[4]]), 4)
    with pytest.raises(ValueError, match="no tokens"):
        unigram_perplexity(train, torch.empty(0, 4, dtype=torch.long), 4)
    with pytest.raises(TypeError, match="integer token ids"):
        unigram_perplexity(train.float(), ev, 4)
