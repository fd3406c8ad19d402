"""Properties of securefed/primitives/quantize.py that secure aggregation relies on."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from securefed.primitives.prg import expand
from securefed.primitives.quantize import (ROUNDING_CHUNK, SMALLEST_RING_BITS, RingSpec, accept_threshold, dequantize_sum,
                                          from_ring, plan_quantization, quantize, rounded_l2_bound, sum_sq_f64, to_ring)
from securefed.primitives.rng import DeterministicEntropy


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 12), p=st.integers(1, 64), bits=st.sampled_from([16, 20, 32]), clip=st.floats(0.01, 10.0), seed=st.integers(0, 99))
def test_masked_ring_sum_dequantizes_within_bound(n, p, bits, clip, seed):
    # dequantize(Σ q_i + Σ masks − Σ masks) ≈ Σ x_i within n/scale per coordinate (quantize.py docstring)
    plan = plan_quantization(clip=clip, ring_bits=bits, max_clients=n)
    ring = plan.ring
    rng = np.random.default_rng(seed)
    xs = []
    acc = np.zeros(p, ring.dtype)
    for i in range(n):
        x = rng.normal(size=p)
        x *= clip * rng.uniform(0, 1) / max(np.linalg.norm(x), 1e-12)
        xs.append(x)
        q = quantize(x, plan, DeterministicEntropy.from_int(seed * 100 + i))
        m = expand(bytes([i]) * 32, p, ring)
        np.add(acc, q, out=acc); np.add(acc, m, out=acc); np.subtract(acc, m, out=acc)
    ring.reduce(acc)
    err = np.abs(dequantize_sum(acc, plan).astype(np.float64) - np.sum(xs, axis=0))
    assert np.all(err <= plan.sum_error_bound * (1 + 1e-6) + 1e-6 * clip * n)


def test_wrap_refused():
    with pytest.raises(ValueError, match="wrap|too small"):
        plan_quantization(clip=1.0, ring_bits=16, max_clients=40000)
    plan = plan_quantization(clip=1.0, ring_bits=16, max_clients=10)
    with pytest.raises(ValueError, match="exceed"):
        plan.check_no_wrap(11)
    with pytest.raises(ValueError, match="clip"):
        quantize(np.ones(4), plan, DeterministicEntropy.from_int(0))


def test_two_complement_round_trip():
    ring = RingSpec(20)
    v = np.array([-(1 << 19), -1, 0, 1, (1 << 19) - 1], dtype=np.int64)
    assert np.array_equal(from_ring(to_ring(v, ring), ring), v)


@pytest.mark.parametrize("n,bits", [(1, 32), (1000, 20), ((1 << 18) * 3 + 17, 32), ((1 << 18) * 65 + 5, 16)])
def test_quantize_on_threads_is_the_same_bits(n, bits):
    """The holder rounds its update on its mask threads (protocols/secagg.md §6.5): the rounding bits are
    still drawn chunk by chunk in order and ‖q‖² summed in chunk order, so nothing changes."""
    from concurrent.futures import ThreadPoolExecutor

    from securefed.primitives.rng import DeterministicEntropy

    x = np.random.default_rng(n).standard_normal(n)
    x *= 0.9 / np.linalg.norm(x)
    plan = plan_quantization(clip=1.0, ring_bits=bits, max_clients=4)
    serial = quantize(x, plan, DeterministicEntropy.from_int(5))
    with ThreadPoolExecutor(max_workers=3) as ex:
        threaded = quantize(x, plan, DeterministicEntropy.from_int(5), executor=ex)
    assert np.array_equal(serial, threaded)


@settings(max_examples=25, deadline=None)
@given(p=st.sampled_from([0, 1, 7, (1 << 16) - 1, 1 << 16, (1 << 16) + 3, 3 * (1 << 16) + 11]),
       bits=st.sampled_from([SMALLEST_RING_BITS, 15, 16, 17, 20, 24, 31, 32]), n=st.integers(1, 1000), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**32 - 1))
def test_dequantize_sum_is_the_whole_vector_formula_bit_for_bit(p, bits, n, dtype, seed):
    # dequantize_sum works in cache-sized steps; every element must be what the one-pass formula gives
    try:
        plan = plan_quantization(clip=1.0, ring_bits=bits, max_clients=n)
    except ValueError:            # a ring too small for n clients: no plan, nothing to decode
        assume(False)
    ring = plan.ring
    v = ring.reduce(np.random.default_rng(seed).integers(0, 2**32, p, dtype=np.uint64).astype(ring.dtype))
    want = (from_ring(v, ring).astype(np.float64) / plan.scale).astype(dtype)
    got = dequantize_sum(v, plan, dtype)
    assert got.dtype == np.dtype(dtype) and got.shape == (p,)
    assert want.tobytes() == got.tobytes()


@settings(max_examples=25, deadline=None)
@given(p=st.sampled_from([1, 7, (1 << 16) - 1, (1 << 16) + 3, (1 << 18) + 5, 3 * (1 << 16) + 11]),
       bits=st.sampled_from([16, 20, 32]), norm=st.floats(0.0, 0.999), seed=st.integers(0, 2**32 - 1))
def test_quantize_reads_float32_without_widening_the_whole_vector(p, bits, norm, seed):
    """quantize takes a float32 update as it is (each chunk is widened exactly where it is rounded): the
    same ring bits as for its exact float64 copy, and as the former whole-vector arithmetic (y = fl64(x)·γ
    of the whole vector, floor, compare) on the first try."""
    x = np.random.default_rng(seed).standard_normal(p).astype(np.float32)
    x *= np.float32(norm / max(float(np.linalg.norm(x.astype(np.float64))), 1e-30))
    plan = plan_quantization(clip=1.0, ring_bits=bits, max_clients=4)
    q32 = quantize(x, plan, DeterministicEntropy.from_int(seed % 97))
    q64 = quantize(x.astype(np.float64), plan, DeterministicEntropy.from_int(seed % 97))
    assert q32.dtype == plan.ring.dtype and np.array_equal(q32, q64)
    # the former formula, whole vector at once, with the same 32-bit words per coordinate
    u = np.frombuffer(DeterministicEntropy.from_int(seed % 97).random_bytes(4 * p), dtype="<u4")
    y = x.astype(np.float64) * plan.scale
    lo = np.floor(y)
    q = lo + (u < (y - lo) * 4294967296.0)
    want = plan.ring.reduce(q.astype(np.int64).astype(plan.ring.dtype, casting="unsafe"))
    # quantize keeps its first try iff ‖q‖² (chunk sums, in order) passes its threshold; else it draws again
    sq = sum(float(np.dot(q[i : i + ROUNDING_CHUNK], q[i : i + ROUNDING_CHUNK])) for i in range(0, p, ROUNDING_CHUNK))
    first_try = sq <= accept_threshold(rounded_l2_bound(plan.scale * math.sqrt(sum_sq_f64(x)), p), p, ROUNDING_CHUNK)
    assert np.array_equal(q32, want) == first_try


@settings(max_examples=40, deadline=None)
@given(p=st.sampled_from([0, 1, 5, (1 << 16) - 1, 1 << 16, (1 << 16) + 1, 2 * (1 << 16) + 9]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-20, 1e20))
def test_span_norm_and_max_agree_with_the_whole_vector(p, dtype, seed, scale):
    from securefed.primitives.quantize import max_abs

    x = (np.random.default_rng(seed).standard_normal(p) * scale).astype(dtype)
    w = x.astype(np.float64)
    assert sum_sq_f64(x) == pytest.approx(float(np.dot(w, w)), rel=1e-12, abs=0.0)
    assert sum_sq_f64(x) == sum_sq_f64(w)                       # widening is exact: the same sum, bit for bit
    assert max_abs(x) == (float(np.max(np.abs(w))) if p else 0.0)
    if p:
        x[p // 2] = np.nan
        assert np.isnan(max_abs(x)) and np.isnan(sum_sq_f64(x))
        x[p // 2] = np.inf
        assert max_abs(x) == np.inf and sum_sq_f64(x) == np.inf


def test_quantize_fails_closed_on_a_float32_update_over_the_clip_or_not_finite():
    plan = plan_quantization(clip=1.0, ring_bits=32, max_clients=4)
    x = np.zeros((1 << 16) + 5, np.float32)
    x[-1] = 1.0000001                                           # one coordinate over C, in the last span
    with pytest.raises(ValueError, match="exceeds the clip bound"):
        quantize(x, plan, DeterministicEntropy.from_int(1))
    x[-1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        quantize(x, plan, DeterministicEntropy.from_int(1))


def test_dequantize_sum_refuses_other_shapes_and_dtypes():
    plan = plan_quantization(clip=1.0, ring_bits=32, max_clients=4)
    with pytest.raises(TypeError, match="dtype"):
        dequantize_sum(np.zeros(4, np.int64), plan)
    with pytest.raises(TypeError, match="dtype"):
        dequantize_sum(np.zeros(0, np.uint16), plan)
    with pytest.raises(ValueError, match="flat"):
        dequantize_sum(np.zeros((2, 2), np.uint32), plan)


def test_the_norm_has_the_same_bits_whatever_the_blas_thread_count():
    """sum_sq_f64 is the norm every clip and every quantization takes (dp.md §3.1): with OpenBLAS's ddot its summation
    order followed the thread count, and 5M coordinates gave other last bits with 1 and 2 threads — so a clipped Δ
    depended on the host. numpy's own pairwise sum per span has one order."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np; from securefed.primitives.quantize import sum_sq_f64; "
            "x = np.random.default_rng(7).standard_normal(5_000_003).astype(np.float32); print(repr(sum_sq_f64(x)))")
    out = set()
    for threads in ("1", "2", "4"):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        out.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                               check=True).stdout.strip())
    assert len(out) == 1, out
