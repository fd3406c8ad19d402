import itertools

import pytest
from hypothesis import given, settings, strategies as st

from securefed.primitives import shamir
from securefed.primitives.rng import DeterministicEntropy


@settings(max_examples=25, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), m=st.integers(2, 9), data=st.data())
def test_any_t_shares_reconstruct(secret, m, data):
    t = data.draw(st.integers(1, m))
    xs = data.draw(st.lists(st.integers(1, 2**31 - 1), min_size=m, max_size=m, unique=True))
    shares = shamir.split(secret, threshold=t, xs=xs, entropy=DeterministicEntropy.from_int(m))
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=m, unique=True))
    assert shamir.reconstruct({x: shares[x] for x in subset}, threshold=t) == secret
    for x in xs:
        assert shamir.share_from_bytes(shamir.share_to_bytes(shares[x])) == shares[x]


def test_t_minus_1_shares_do_not_determine_the_secret():
    # with t-1 shares fixed, every secret is consistent: adding a share for x=0... instead we check
    # that t-1 shares interpolated as if t-1 were the threshold give a different (wrong) value.
    secret = bytes(range(32))
    shares = shamir.split(secret, threshold=4, xs=range(1, 8), entropy=DeterministicEntropy.from_int(1))
    for subset in itertools.combinations(range(1, 8), 3):
        with pytest.raises(ValueError):  # not a 32-byte secret, except with probability 2^-265
            shamir.reconstruct({x: shares[x] for x in subset}, threshold=3)


def test_tampered_share_detected_or_wrong():
    secret = b"\x07" * 32
    shares = shamir.split(secret, threshold=3, xs=[1, 2, 3], entropy=DeterministicEntropy.from_int(2))
    small = dict(shares)
    small[2] = (shares[2] + 1) % shamir.PRIME  # shifts f(0) by the Lagrange weight -3: wrong but "valid"
    assert shamir.reconstruct(small, threshold=3) != secret  # hence the commitment check in §6.2 S7
    big = dict(shares)
    big[2] = (shares[2] + (1 << 300)) % shamir.PRIME
    with pytest.raises(ValueError, match="inconsistent"):
        shamir.reconstruct(big, threshold=3)


def test_bad_arguments():
    e = DeterministicEntropy.from_int(0)
    with pytest.raises(ValueError, match="32 bytes"):
        shamir.split(b"short", threshold=2, xs=[1, 2], entropy=e)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(b"s" * 32, threshold=2, xs=[1, 1], entropy=e)
    with pytest.raises(ValueError, match="x-coordinate"):
        shamir.split(b"s" * 32, threshold=2, xs=[0, 1], entropy=e)
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(b"s" * 32, threshold=3, xs=[1, 2], entropy=e)
    with pytest.raises(TypeError):
        shamir.split(b"s" * 32, threshold=True, xs=[1, 2], entropy=e)
    with pytest.raises(ValueError, match="need 3"):
        shamir.reconstruct({1: 5, 2: 6}, threshold=3)
    with pytest.raises(ValueError, match="field"):
        shamir.share_from_bytes(b"\xff" * 66)
    with pytest.raises(ValueError, match="66"):
        shamir.share_from_bytes(b"\x00" * 65)
