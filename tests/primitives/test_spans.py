"""P-sized passes across threads (securefed/primitives/spans.py): the spans partition the vector, every
span runs, an error in any span surfaces after all are done, and each caller's threaded result is its
serial result bit for bit (the fold: tests/transport/test_accumulate.py; a holder's y = x + M:
tests/secagg/test_premask.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.primitives import spans
from securefed.primitives.quantize import dequantize_sum, from_ring, max_abs, plan_quantization, sum_sq_f64


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5000), align=st.integers(1, 16), min_span=st.integers(1, 600), threads=st.integers(1, 8))
def test_spans_partition_the_range(n, align, min_span, threads):
    got, lock = [], threading.Lock()

    def fn(lo, hi):
        with lock:
            got.append((lo, hi, threading.get_ident()))
    spans.for_spans(n, fn, align=align, min_span=min_span, threads=threads)
    bounds = sorted((lo, hi) for lo, hi, _ in got)
    if n == 0:
        assert bounds == []
        return
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))          # contiguous, no overlap, no gap
    assert all(lo < hi and lo % align == 0 for lo, hi in bounds)
    assert len(bounds) <= max(1, min(threads, n // min_span))
    if n < 2 * min_span or threads == 1:                                    # small: one call, on this thread
        assert len(got) == 1 and got[0][2] == threading.get_ident()


def test_an_error_in_any_span_is_raised_after_every_span_ran():
    ran, lock = [], threading.Lock()

    def fn(lo, hi):
        with lock:
            ran.append(lo)
        if lo == 30:
            raise ArithmeticError("span at 30")
    with pytest.raises(ArithmeticError, match="span at 30"):
        spans.for_spans(120, fn, min_span=10, threads=4)
    assert sorted(ran) == [0, 30, 60, 90]


def test_host_threads_honours_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert spans.host_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert spans.host_threads() >= 1
    with pytest.raises(ValueError):
        spans.for_spans(-1, lambda lo, hi: None)


@settings(max_examples=30, deadline=None)
@given(p=st.sampled_from([1, 6, 29, (1 << 16) + 3, 3 * (1 << 16) + 11]), bits=st.sampled_from([16, 17, 24, 32]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_threaded_dequantize_sum_is_the_whole_vector_formula(p, bits, dtype, seed):
    plan = plan_quantization(clip=1.0, ring_bits=bits, max_clients=3)
    v = plan.ring.reduce(np.random.default_rng(seed).integers(0, 2**32, p, dtype=np.uint64).astype(plan.ring.dtype))
    want = (from_ring(v, plan.ring).astype(np.float64) / plan.scale).astype(dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spans, "MIN_SPAN", 5)
        mp.setattr(spans, "host_threads", lambda: 4)
        got = dequantize_sum(v, plan, dtype)
    assert want.tobytes() == got.tobytes()


@settings(max_examples=20, deadline=None)
@given(n=st.sampled_from([0, 1, 65535, 65537, 3 * 65536 + 11, 5 * 65536]), dtype=st.sampled_from([np.float32, np.float64]),
       nan_at=st.one_of(st.none(), st.floats(0, 1)), seed=st.integers(0, 2**32 - 1))
def test_norm_and_threaded_max_are_the_serial_ones_bit_for_bit(n, dtype, nan_at, seed):
    """max |x| runs across threads; the norm stays on one thread (its np.dot is OpenBLAS's, whose own threads
    fight ours): both are the serial values bit for bit whatever the spans."""
    x = (np.random.default_rng(seed).standard_normal(n) * 1e3).astype(dtype)
    if nan_at is not None and n:
        x[int(nan_at * (n - 1))] = np.nan
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spans, "MIN_SPAN", 1 << 62)
        want = (sum_sq_f64(x), max_abs(x))
        mp.setattr(spans, "MIN_SPAN", 5)
        mp.setattr(spans, "host_threads", lambda: 4)
        got = (sum_sq_f64(x), max_abs(x))
    assert np.array_equal(np.array(got), np.array(want), equal_nan=True)
    if n and nan_at is None:
        assert want[1] == float(np.max(np.abs(x)))


def test_a_forked_child_gets_its_own_threads(threaded_spans):
    """A process forked after the pool exists (e.g. a data-loader worker) must not wait on the parent's threads."""
    import multiprocessing as mp

    import time

    spans.for_spans(40, lambda lo, hi: time.sleep(0.3))          # the parent's pool now has 3 idle threads
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_spans, args=(q,))
    p.start()
    p.join(60)
    if p.is_alive():            # waiting on threads it does not have: the failure this test exists for
        p.kill()
    assert p.exitcode == 0 and q.get(timeout=5) == 40


def _child_spans(q) -> None:
    from securefed.primitives import spans as child

    child.MIN_SPAN, child.host_threads = 5, (lambda: 4)
    done = []
    child.for_spans(40, lambda lo, hi: done.append(hi - lo))
    q.put(sum(done))
