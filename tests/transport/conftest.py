"""Fixtures of the networked tests (tiny_run is in tests/conftest.py)."""

from __future__ import annotations

import pytest


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
