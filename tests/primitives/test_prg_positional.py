"""Positional PRG expansion (issue 17): a rank masks only its slice [lo, hi) of the flat vector.

The property that matters for a holder sharded over GPUs: for any partition of [0, P) into slices, each
slice masked with accumulate_masks_at at its own offset and the slices concatenated in order is the same
masked vector as accumulate_masks over the whole vector, so the aggregator's masked sum (and hence the
unmasked Σ q_i) is bit-identical whichever way each holder was sharded.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from securefed.primitives.prg import accumulate_masks, accumulate_masks_at, expand, expand_range, stream_at
from securefed.primitives.quantize import RingSpec


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([16, 20, 32]), n=st.integers(1, 700), data=st.data())
def test_expand_range_is_the_slice(bits, n, data):
    # unaligned on purpose: a 16-byte block holds 8 uint16 or 4 uint32 words
    ring = RingSpec(bits)
    key = bytes([bits, n % 256]) * 16
    lo = data.draw(st.integers(0, n))
    hi = data.draw(st.integers(lo, n))
    assert np.array_equal(expand_range(key, lo, hi, ring), expand(key, n, ring)[lo:hi])


def test_block_boundaries_and_carry():
    # offsets on both sides of each block boundary, and a counter that carries past 2^64 blocks
    ring, key = RingSpec(32), b"b" * 32
    whole = expand(key, 64, ring)
    for lo in (3, 4, 5, 7, 8, 9):
        assert np.array_equal(expand_range(key, lo, lo + 9, ring), whole[lo : lo + 9])
    # block 2^64 − 1 spans words [2^66 − 4, 2^66); the next block's counter carries into the high 64 bits.
    # Ground truth from AES-ECB of the counter blocks themselves (SP 800-38A §6.5: O_j = CIPH_K(T_j)).
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = ecb.update(((1 << 64) - 1).to_bytes(16, "big") + (1 << 64).to_bytes(16, "big"))
    truth = np.frombuffer(blocks, dtype="<u4")                   # words 2^66 − 4 … 2^66 + 3
    far = (1 << 66) - 4
    assert np.array_equal(expand_range(key, far + 2, far + 7, ring), truth[2:7])


def _shardwise(q: np.ndarray, keys, ring, cuts: list[int]) -> np.ndarray:
    """Each 'rank' masks only its slice [cuts[r], cuts[r+1]) at its offset; the upload streams slices in order."""
    parts = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        part = q[lo:hi].copy()                                   # this rank's slice, nothing else
        parts.append(accumulate_masks_at(part, lo, keys, ring, chunk_elements=5))
    return np.concatenate(parts)


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([16, 24, 32]), p=st.integers(1, 400), n_holders=st.integers(3, 4),
       data=st.data())
def test_masked_sum_of_shardwise_uploads_equals_unsharded(bits, p, n_holders, data):
    ring = RingSpec(bits)
    rng = np.random.default_rng([bits, p, n_holders])
    q = [rng.integers(0, ring.modulus, p, dtype=np.uint64).astype(ring.dtype) for _ in range(n_holders)]
    self_keys = [bytes([1, i]) * 16 for i in range(n_holders)]
    pair = {(i, j): bytes([2, i, j, 0]) * 8 for i in range(n_holders) for j in range(i + 1, n_holders)}

    def keys_of(i):  # y_i = q_i + PRG(b_i) + Σ_j σ_ij PRG(s_ij): σ = +1 if i < j else −1 (pairwise cancel)
        return [(self_keys[i], 1)] + [(pair[min(i, j), max(i, j)], 1 if i < j else -1)
                                      for j in range(n_holders) if j != i]

    unsharded = [accumulate_masks(q[i].copy(), keys_of(i), ring, chunk_elements=7) for i in range(n_holders)]
    sharded = []
    for i in range(n_holders):   # each holder its own number of ranks and its own (uneven, unaligned) cut points
        ranks = data.draw(st.integers(1, 5))
        inner = sorted(data.draw(st.lists(st.integers(0, p), min_size=ranks - 1, max_size=ranks - 1)))
        sharded.append(_shardwise(q[i], keys_of(i), ring, [0, *inner, p]))
    for u, s in zip(unsharded, sharded):
        assert np.array_equal(u, s)                              # every upload is bit-identical ...
    total_u = np.zeros(p, dtype=ring.dtype)
    total_s = np.zeros(p, dtype=ring.dtype)
    for u, s in zip(unsharded, sharded):
        np.add(total_u, u, out=total_u)
        np.add(total_s, s, out=total_s)
    assert np.array_equal(ring.reduce(total_s), ring.reduce(total_u))   # ... so the masked sum is too
    # and only the self masks remain: Σ y_i − Σ PRG(b_i) = Σ q_i (mod 2^k)
    for i in range(n_holders):
        np.subtract(total_s, expand(self_keys[i], p, ring), out=total_s)
        np.subtract(total_s, q[i], out=total_s)
    assert not ring.reduce(total_s).any()


@pytest.mark.parametrize("lo,hi,exc", [(-1, 3, ValueError), (5, 4, ValueError), (1.0, 3, TypeError),
                                       (True, 3, TypeError)])
def test_expand_range_rejects_bad_ranges(lo, hi, exc):
    with pytest.raises(exc):
        expand_range(b"k" * 32, lo, hi, RingSpec(32))


def test_accumulate_masks_at_rejects_bad_arguments():
    ring = RingSpec(32)
    with pytest.raises(TypeError):
        accumulate_masks_at(np.zeros(4, dtype=np.uint16), 0, [], ring, chunk_elements=4)
    with pytest.raises(ValueError):
        accumulate_masks_at(np.zeros(4, dtype=np.uint32), -2, [], ring, chunk_elements=4)
    with pytest.raises(ValueError):
        accumulate_masks_at(np.zeros(4, dtype=np.uint32), 0, [(b"k" * 32, 2)], ring, chunk_elements=4)
    with pytest.raises(ValueError):
        stream_at(b"k" * 32, -1)
