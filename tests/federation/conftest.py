"""Fixtures of the federation tests (tiny_run is in tests/conftest.py): Ray started once."""

from __future__ import annotations

import pytest


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


@pytest.fixture
def one_thread():
    """A tiny model on shared cores: more torch threads only contend (the in-process federation tests use it)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def make(tmp_path, fed_cache):
    """``make(*overrides, **kw)``: an in-process federation of real Holders and a real Coordinator over the audit's
    ScriptedChannel (securefed.audit.federation_harness.tiny_federation)."""
    from securefed.audit.federation_harness import tiny_federation

    def build(*overrides, **kw):
        return tiny_federation(tmp_path, overrides=overrides, cache_dir=fed_cache, **kw)
    return build
