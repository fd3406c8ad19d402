import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from securefed.primitives.prg import MaskStream, accumulate_masks, expand, expand_into
from securefed.primitives.quantize import RingSpec


def test_nist_sp800_38a_f55_keystream(published):
    # keystream = ciphertext XOR plaintext; MaskStream must reproduce it word for word
    v = published["aes256_ctr"]
    ks = bytes(a ^ b for a, b in zip(bytes.fromhex(v["ciphertext"]), bytes.fromhex(v["plaintext"])))
    out = np.empty(16, dtype=np.uint32)
    MaskStream(bytes.fromhex(v["key"]), _initial_counter=bytes.fromhex(v["initial_counter"])).fill(out)
    assert out.tobytes() == ks


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(16, 32), n=st.integers(0, 3000), chunk=st.integers(1, 700))
def test_chunking_invariant_and_in_ring(bits, n, chunk):
    ring = RingSpec(bits)
    key = bytes([bits]) * 32
    whole = expand(key, n, ring)
    acc = np.zeros(n, dtype=ring.dtype)
    accumulate_masks(acc, [(key, 1)], ring, chunk_elements=chunk)
    assert np.array_equal(acc, whole)
    assert whole.dtype == ring.dtype and (n == 0 or int(whole.max()) < ring.modulus)


@pytest.mark.parametrize("bits", [16, 32])
def test_cache_blocks_inside_a_task_range_are_exact(bits):
    """A range longer than the scratch cache block (1 MiB: 256K uint32 / 512K uint16 words) is filled block by
    block from one running stream: the sum equals the whole-vector expansion, with and without threads, and
    from a positional start (accumulate_masks_at)."""
    from concurrent.futures import ThreadPoolExecutor

    from securefed.primitives import prg
    from securefed.primitives.prg import accumulate_masks_at

    ring = RingSpec(bits)
    n = 2 * (prg.CACHE_BLOCK_BYTES // ring.dtype.itemsize) + 1234        # two whole blocks and a tail
    keys = [(b"x" * 32, 1), (b"y" * 32, -1)]
    want = (expand(keys[0][0], n, ring).astype(np.int64) - expand(keys[1][0], n, ring)) % ring.modulus
    acc = np.zeros(n, dtype=ring.dtype)
    accumulate_masks(acc, keys, ring, chunk_elements=1 << 22)             # one task range, three cache blocks
    assert np.array_equal(acc, want.astype(ring.dtype))
    acc = np.zeros(n, dtype=ring.dtype)
    with ThreadPoolExecutor(2) as ex:
        accumulate_masks(acc, keys, ring, chunk_elements=300_000, executor=ex)
    assert np.array_equal(acc, want.astype(ring.dtype))
    tail = np.zeros(n - 1000, dtype=ring.dtype)
    accumulate_masks_at(tail, 1000, keys, ring, chunk_elements=1 << 22)
    assert np.array_equal(tail, want[1000:].astype(ring.dtype))


def test_low_bits_of_uint32_stream():
    # k=20 keeps exactly the low 20 bits of the k=32 words (§3.3), so it stays exactly uniform
    key = b"k" * 32
    assert np.array_equal(expand(key, 1000, RingSpec(20)), expand(key, 1000, RingSpec(32)) & np.uint32((1 << 20) - 1))


def test_accumulate_signed_sum():
    ring = RingSpec(32)
    a, b = b"a" * 32, b"b" * 32
    acc = np.arange(100, dtype=np.uint32)
    accumulate_masks(acc, [(a, 1), (b, -1)], ring, chunk_elements=7)
    want = np.arange(100, dtype=np.uint32) + expand(a, 100, ring) - expand(b, 100, ring)  # wraps mod 2^32
    assert np.array_equal(acc, want)
    accumulate_masks(acc, [(a, -1), (b, 1)], ring, chunk_elements=1 << 20)
    assert np.array_equal(acc, np.arange(100, dtype=np.uint32))


def test_k32_bytes_look_uniform():
    from scipy.stats import chisquare
    v = expand(b"u" * 32, 1 << 16, RingSpec(32)).view(np.uint8)
    assert chisquare(np.bincount(v, minlength=256)).pvalue > 1e-4


def test_bad_arguments():
    ring = RingSpec(32)
    with pytest.raises(ValueError, match="32 bytes"):
        MaskStream(b"short")
    with pytest.raises(TypeError):
        MaskStream("k" * 32)
    with pytest.raises(TypeError, match="dtype"):
        expand_into(b"k" * 32, np.zeros(4, np.int64), ring)
    with pytest.raises(TypeError, match="acc"):
        accumulate_masks(np.zeros(4, np.uint16), [], ring, chunk_elements=1)
    with pytest.raises(ValueError, match="chunk_elements"):
        accumulate_masks(np.zeros(4, np.uint32), [], ring, chunk_elements=0)
    with pytest.raises(ValueError, match="sign"):
        accumulate_masks(np.zeros(4, np.uint32), [(b"k" * 32, 2)], ring, chunk_elements=1)
    with pytest.raises(ValueError, match="contiguous"):
        MaskStream(b"k" * 32).fill(np.zeros(8, np.uint32)[::2])
