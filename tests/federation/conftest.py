"""Small, fast settings for federation tests (the tiny model, rows of 32 tokens, K = 2)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def fed_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fed-cache"))


@pytest.fixture
def tiny_run(fed_cache):
    """4 holders x 4 stdlib sources of 30 kB, vocab 512, rows of 32 tokens, K=2, batch 4, 2 rounds, no baseline."""
    return [
        "data.max_sources=4", "data.max_bytes_per_source=30000", "data.vocab_size=512", "data.seq_len=32",
        f"data.cache_dir={fed_cache}", "train.local_steps=2", "train.batch_size=4", "train.warmup_steps=1",
        "train.eval_batch_size=64", "federation.rounds=2", "federation.eval_every=1", "baseline=false",
        "deterministic_secrets=true", "network.control=8", "network.upload=20", "network.train=120",
    ]


@pytest.fixture(scope="session")
def ray_local():
    """Ray started once for the session (2 CPUs, a small object store, no dashboard): each Simulation with
    backend ray uses it as it is instead of paying Ray's ~10 s start per run. Skips without Ray."""
    import os

    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, object_store_memory=256 << 20, include_dashboard=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()
