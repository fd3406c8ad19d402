"""Shared fixtures for securefed.ckks tests: default-parameter policy, a 4-holder keyring."""

from __future__ import annotations

import pytest

from securefed.ckks import RoutingPolicy, setup_keyring

from ._ckks_util import entropy_for


@pytest.fixture(scope="session")
def policy() -> RoutingPolicy:
    return RoutingPolicy(enabled=True)


@pytest.fixture()
def keyring4(policy):
    return setup_keyring(range(4), policy=policy, entropy_for=entropy_for)
