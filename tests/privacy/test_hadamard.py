"""Randomised Hadamard rotation: orthonormal, exactly invertible, public and round-dependent signs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import hadamard as scipy_hadamard

from securefed.primitives import hadamard as H


def test_fwht_matches_the_hadamard_matrix():
    x = np.random.default_rng(0).normal(size=(3, 16))
    expected = x @ scipy_hadamard(16).T / 4.0  # orthonormal H_16 = Sylvester matrix / √16
    assert np.allclose(H.fwht(x), expected)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 70_000), seed=st.binary(min_size=1, max_size=8), r=st.integers(0, 1000))
def test_rotate_is_norm_preserving_and_exactly_invertible(d, seed, r):
    x = np.random.default_rng(d).normal(size=d)
    y = H.rotate(x, seed, r)
    assert y.shape == (H.padded_dim(d),)
    assert abs(np.linalg.norm(y) - np.linalg.norm(x)) < 1e-9 * max(1.0, np.linalg.norm(x))
    assert np.allclose(H.unrotate(y, seed, r, d), x, atol=1e-12)


def test_padding_and_blocks():
    assert H.padded_dim(1) == 1 and H.padded_dim(5) == 8 and H.padded_dim(1 << 16) == 1 << 16
    # beyond one block the overhead is below one block (2^16 coordinates)
    d = 5_300_001
    assert 0 <= H.padded_dim(d) - d < H.MAX_BLOCK


def test_flattening_spreads_a_spike():
    x = np.zeros(4096)
    x[7] = 1.0
    y = H.rotate(x, b"seed", 0)
    assert np.allclose(np.abs(y), 1 / 64)  # a basis vector becomes ±1/√4096 everywhere


def test_signs_depend_on_seed_and_round():
    a = H.sign_vector(b"s", 1, 256)
    assert set(np.unique(a)) == {-1.0, 1.0}
    assert np.array_equal(a, H.sign_vector(b"s", 1, 256))
    assert not np.array_equal(a, H.sign_vector(b"s", 2, 256))
    assert not np.array_equal(a, H.sign_vector(b"t", 1, 256))


def test_bad_input():
    with pytest.raises(ValueError, match="power-of-two"):
        H.fwht(np.zeros(6))
    with pytest.raises(ValueError, match="dim"):
        H.padded_dim(0)
    with pytest.raises(ValueError, match="length"):
        H.unrotate(np.zeros(5), b"s", 0, 5)
    with pytest.raises(TypeError, match="seed"):
        H.sign_vector("s", 0, 4)
