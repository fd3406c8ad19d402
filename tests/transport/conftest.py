"""Small, fast settings for networked tests: the real tiny LM (mirrors tests/federation/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def net_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("net-cache"))


@pytest.fixture
def tiny_run(net_cache):
    """4 holders x 4 stdlib sources of 30 kB, vocab 512, rows of 32 tokens, K=2, batch 4, 2 rounds, no baseline."""
    return [
        "data.max_sources=4", "data.max_bytes_per_source=30000", "data.vocab_size=512", "data.seq_len=32",
        f"data.cache_dir={net_cache}", "train.local_steps=2", "train.batch_size=4", "train.warmup_steps=1",
        "train.eval_batch_size=64", "federation.rounds=2", "federation.eval_every=1", "baseline=false",
        "deterministic_secrets=true", "network.control=8", "network.upload=60", "network.train=120",
    ]


@pytest.fixture(autouse=True)
def _restore_logging():
    """`securefed server` / `client` replace the root logger's handlers (transport.logjson.setup_logging) with
    one bound to this test's captured stderr; put pytest's back so later tests neither lose their log capture
    nor write to a closed stream."""
    import logging

    root, fed = logging.getLogger(), logging.getLogger("securefed")
    saved = (list(root.handlers), root.level, fed.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    fed.setLevel(saved[2])
