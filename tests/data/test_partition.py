"""Partitioners: every document lands exactly once; by_source deals whole sources round-robin."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.training.data import DataError, Document, partition, partition_by_source, partition_dirichlet

METHODS = ("iid", "by_source", "dirichlet")


def corpus(sizes: list[int]) -> list[Document]:
    return [Document(f"s{j}/{i}", f"s{j}", f"text {j} {i}") for j, n in enumerate(sizes) for i in range(n)]


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=9),
    n_holders=st.integers(1, 6),
    method=st.sampled_from(METHODS),
    alpha=st.floats(0.3, 50.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_partitioner_conserves_every_document_exactly_once(sizes, n_holders, method, alpha, seed):
    docs = corpus(sizes)
    try:
        parts = partition(docs, n_holders, method=method, seed=seed, alpha=alpha)
    except DataError as e:
        # allowed only where the input cannot be split: too few documents or sources, or (rarely,
        # e.g. 6 one-document sources for 6 holders) Dirichlet draws that keep leaving a holder empty
        assert (
            len(docs) < n_holders
            or (method == "by_source" and len(sizes) < n_holders)
            or (method == "dirichlet" and "left a holder without documents" in str(e))
        )
        return
    assert len(parts) == n_holders and all(parts)
    assert Counter(d.doc_id for p in parts for d in p) == Counter(d.doc_id for d in docs)
    assert parts == partition(docs, n_holders, method=method, seed=seed, alpha=alpha)  # deterministic
    if method == "by_source":  # whole sources: no source is split between holders
        owner = {}
        for h, p in enumerate(parts):
            for d in p:
                assert owner.setdefault(d.source, h) == h


def test_by_source_round_robin_and_too_few_sources():
    docs = corpus([2, 1, 3, 1, 2])
    parts = partition_by_source(docs, 2)
    assert [sorted({d.source for d in p}) for p in parts] == [["s0", "s2", "s4"], ["s1", "s3"]]
    with pytest.raises(DataError, match="2 source\\(s\\) for 3 holders"):
        partition_by_source(corpus([3, 3]), 3)


def test_iid_is_balanced_and_seeded():
    docs = corpus([10, 10, 10])
    parts = partition(docs, 3, method="iid", seed=1)
    assert [len(p) for p in parts] == [10, 10, 10]
    # heavy-tailed sizes: least-loaded dealing keeps holders within one (largest) document of
    # each other in characters
    sizes = [10 * 2 ** (i % 9) for i in range(60)]  # 10 .. 2560 characters
    uneven = [Document(f"s/{i}", "s", "x" * n) for i, n in enumerate(sizes)]
    loads = [sum(len(d.text) for d in p) for p in partition(uneven, 4, method="iid", seed=3)]
    assert max(loads) - min(loads) <= max(sizes)
    assert parts != partition(docs, 3, method="iid", seed=2)
    with pytest.raises(DataError, match="3 training documents cannot be split among 4 holders"):
        partition(corpus([3]), 4, method="iid", seed=0)


def test_dirichlet_alpha_controls_skew():
    docs = corpus([200] * 4)

    def mean_max_share(alpha):
        parts = partition_dirichlet(docs, 4, alpha=alpha, seed=0)
        shares = []
        for src in ("s0", "s1", "s2", "s3"):
            counts = [sum(d.source == src for d in p) for p in parts]
            shares.append(max(counts) / 200)
        return sum(shares) / 4

    assert mean_max_share(0.1) > 0.7  # nearly one holder per source
    assert mean_max_share(1000.0) < 0.35  # nearly uniform: 1/4 each
    with pytest.raises(ValueError, match="alpha must be a positive"):
        partition_dirichlet(docs, 4, alpha=0.0, seed=0)
    with pytest.raises(ValueError, match="partition method"):
        partition(docs, 2, method="random", seed=0)  # type: ignore[arg-type]
