"""Fixtures shared by the federation and transport tests: small, fast run settings for the real tiny LM."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _restore_logging():
    """Every test: `securefed server` / `client` (run in-process by tests/cli and tests/transport) replace the root logger's handlers (transport.logjson.setup_logging) with
    one bound to this test's captured stderr; put pytest's back so later tests neither lose their log capture
    nor write to a closed stream."""
    import logging

    root, fed = logging.getLogger(), logging.getLogger("securefed")
    saved = (list(root.handlers), root.level, fed.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    fed.setLevel(saved[2])


@pytest.fixture(scope="session")
def fed_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fed-cache"))


@pytest.fixture
def tiny_run(fed_cache):
    """4 holders x 4 stdlib sources of 30 kB, vocab 512, rows of 32 tokens, K=2, batch 4, 2 rounds, no baseline,
    seeded test entropy, short network deadlines (a silent holder is waited for seconds, not minutes)."""
    return [
        "data.max_sources=4", "data.max_bytes_per_source=30000", "data.vocab_size=512", "data.seq_len=32",
        f"data.cache_dir={fed_cache}", "train.local_steps=2", "train.batch_size=4", "train.warmup_steps=1",
        "train.eval_batch_size=64", "federation.rounds=2", "federation.eval_every=1", "baseline=false",
        "deterministic_secrets=true", "network.control=8", "network.upload=20", "network.train=120",
    ]


@pytest.fixture
def threaded_spans(monkeypatch):
    """P-sized passes (securefed/primitives/spans.py) cut into spans of a few elements on 4 threads, so
    that small test vectors take the multi-threaded path that large models take."""
    from securefed.primitives import spans

    monkeypatch.setattr(spans, "MIN_SPAN", 5)
    monkeypatch.setattr(spans, "host_threads", lambda: 4)
    return spans
