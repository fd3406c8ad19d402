"""Fixtures of the networked tests (tiny_run is in tests/conftest.py)."""

from __future__ import annotations

import pytest


