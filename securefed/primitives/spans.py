"""P-sized element-wise passes split across the host's cores.

The secure aggregate stage is a handful of passes over vectors of P ring words (5.3 GB each at 1.3B
coordinates): a holder's y = x + M, the server's fold Σ y_i, the decode of the ring sum. Each is
memory-bound and element-wise, and numpy releases the GIL inside a ufunc on a large array, so cutting
the vector into a few contiguous spans and running them on threads uses the machine's memory bandwidth
instead of one core's (RESULTS.md (r13): at 1.3b × 3 holders on the H200, one thread at a time, these
passes were an estimated 9 s of a 25 s aggregate stage).

    for_spans(n, fn)     fn(lo, hi) over a partition of range(n) into contiguous spans, at once

Rules the callers keep: ``fn`` touches only its own [lo, hi) of any output (the spans are disjoint, so
the result is the serial one bit for bit), and ``fn`` never calls ``for_spans`` itself (the pool's
threads would wait on their own queue). The calling thread runs one span itself and waits for the rest;
an exception in any span is raised here after every span has finished.

Threads: the cores this process may run on (``os.sched_getaffinity``), capped by ``OMP_NUM_THREADS``
when it is set (Ray sets it to an actor's CPUs: eight holder actors sharing a host do not each take
every core).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["MIN_SPAN", "for_spans", "host_threads"]

MIN_SPAN = 1 << 22   # elements (16 MB of ring words): smaller passes stay on the calling thread; not tuned

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def host_threads() -> int:
    """How many threads a P-sized pass may use in this process (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # not every platform has affinity masks
        n = os.cpu_count() or 1
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        n = min(n, int(cap))
    return max(1, n)


def _forget_pool() -> None:     # a forked child has none of the parent's threads: it makes its own pool
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="securefed-spans")
        return _pool


def for_spans(n: int, fn: Callable[[int, int], None], *, align: int = 1, min_span: int | None = None,
              threads: int | None = None) -> None:
    """Run ``fn(lo, hi)`` over contiguous spans covering range(n), each (but the last) a multiple of
    ``align`` elements long and at least ``min_span`` (default ``MIN_SPAN``, read at the call: small
    vectors take one call, on this thread)."""
    min_span = MIN_SPAN if min_span is None else min_span
    if n < 0 or align < 1 or min_span < 1:
        raise ValueError("n must be >= 0, align and min_span >= 1")
    t = max(1, min(threads or host_threads(), n // min_span))
    if t == 1:
        if n:
            fn(0, n)
        return
    step = -(-(-(-n // t)) // align) * align            # ceil(n / t), rounded up to a multiple of align
    bounds = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    pool = _executor(host_threads())
    futures = [pool.submit(fn, lo, hi) for lo, hi in bounds[1:]]
    first_error: BaseException | None = None
    try:
        fn(*bounds[0])
    except BaseException as e:               # noqa: BLE001 - re-raised below, after the others are done
        first_error = e
    for f in futures:
        try:
            f.result()
        except BaseException as e:           # noqa: BLE001
            first_error = first_error or e
    if first_error is not None:
        raise first_error
