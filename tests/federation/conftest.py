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
