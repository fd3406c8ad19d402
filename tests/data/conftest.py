"""Shared fixtures: a session-wide tokenizer cache (content-addressed, so sharing is safe) and
helpers that write small local corpora into tmp dirs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from securefed.training.data import DataConfig


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("securefed-cache")


@pytest.fixture
def small_config(cache_dir):
    """Stdlib corpus small enough for tests: 4 sources x 40 kB, vocab 512, rows of 32."""

    def make(**kw) -> DataConfig:
        base = dict(max_sources=4, max_bytes_per_source=40_000, vocab_size=512, seq_len=32, cache_dir=str(cache_dir))
        base.update(kw)
        return DataConfig(**base)

    return make


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(n_words))


def _write_tree(
    root: Path, sources: dict[str, int], *, docs_per_source: int = 6, words: int = 200, seed: int = 0
) -> Path:
    """root/<source>/doc<k>.txt with random, unique text (so token windows identify documents)."""
    rng = random.Random(seed)
    for src in sources:
        for k in range(docs_per_source):
            p = root / src / f"doc{k:02d}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(random_text(rng, words * sources[src]), encoding="utf-8")
    return root


@pytest.fixture
def write_tree():
    """``write_tree(root, {source: length_factor}, docs_per_source=, words=, seed=)`` -> root."""
    return _write_tree
