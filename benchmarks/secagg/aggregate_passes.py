"""The secure aggregate stage's P-sized passes after training, before and after 2026-12-03 (evening),
measured in one run on this machine (RESULTS.md (r13): at 1.3b × 3 holders on the H200 the stage was
25.4 s, of which 19.6 s in receiving the masked inputs and 3.9 s in decoding the sum):

- a holder's y = x + M (its masks were expanded while it trained): one numpy pass vs spans on the
  host's threads (securefed/primitives/spans.py);
- the MaskedInput it sends: joined into a fresh bytes object (one P-word copy into new pages) vs
  handed out in place from the MaskedBuffer its masks were expanded into (secagg/messages.py);
- the server's fold of a whole reply into the ring sum: one pass vs spans;
- dequantize_sum of the ring sum: one thread vs spans;
- the plain route's per-holder work on the server (l2_clip: the norm and the scaled float32 copy, then
  the float64 sum): one thread vs spans (same bits: tests/privacy/test_sensitivity.py).

Same bytes and the same sums in both columns (checked here, and by tests/primitives/test_spans.py,
tests/secagg/test_premask.py, tests/transport/test_accumulate.py).

    .venv/bin/python benchmarks/secagg/aggregate_passes.py [--params 88000000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from securefed.primitives import spans
from securefed.primitives.quantize import dequantize_sum, plan_quantization
from securefed.privacy.clipping import l2_clip
from securefed.secagg import encode
from securefed.secagg.messages import MaskedBuffer, MaskedInput
from securefed.transport.accumulate import RingAccumulator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_passes import median_s  # noqa: E402  (this folder's timing helper: median of 5)


class one_thread:
    """Every for_spans call as one span on the calling thread (the code before spans.py)."""

    def __enter__(self):
        self.saved, spans.MIN_SPAN = spans.MIN_SPAN, 1 << 62

    def __exit__(self, *exc):
        spans.MIN_SPAN = self.saved


def add_x(y: np.ndarray, x: np.ndarray) -> None:      # the client's y = x + M (ring of 32 bits: no reduce)
    spans.for_spans(y.shape[0], lambda lo, hi: np.add(y[lo:hi], x[lo:hi], out=y[lo:hi]))


def fold(total: np.ndarray, reply, spool: str) -> None:
    acc = RingAccumulator.over(total, 32, spool)
    f = acc.open(1)
    f.write(0, reply)
    f.commit()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=88_000_000, help="coordinates (the 125m preset: 88.1M)")
    a = ap.parse_args()
    n = a.params
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    buf = MaskedBuffer(n, 32)
    buf.vector[:] = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)   # M, pages touched (as training leaves them)
    msg = MaskedInput(1, 32, buf.vector, buffer=buf)      # encoded (and so sealed) only after the y = x + M timings
    joined = encode(MaskedInput(1, 32, buf.vector))
    total = np.zeros(n, np.uint32)
    plan = plan_quantization(clip=100.0, max_clients=3)
    out = {"params": n, "threads": spans.host_threads(), "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as spool:
        with one_thread():
            out["y_plus_x_one_thread_s"] = median_s(lambda: add_x(buf.vector, x))
            out["fold_one_thread_s"] = median_s(lambda: fold(total, joined, spool))
            want = dequantize_sum(x, plan)                # x stands for the ring sum (it does not change here)
            out["dequantize_one_thread_s"] = median_s(lambda: dequantize_sum(x, plan))
        out["y_plus_x_spans_s"] = median_s(lambda: add_x(buf.vector, x))
        joined = encode(MaskedInput(1, 32, buf.vector))   # the words as they now are
        assert type(joined) is bytes and bytes(encode(msg)) == joined
        out["fold_spans_s"] = median_s(lambda: fold(total, encode(msg), spool))
        assert dequantize_sum(x, plan).tobytes() == want.tobytes()
        out["dequantize_spans_s"] = median_s(lambda: dequantize_sum(x, plan))
    d = (rng.standard_normal(n, dtype=np.float32) * 1e-3)
    acc = np.zeros(n, np.float64)

    def plain_one(clip: float) -> None:          # aggregation.plain_sum's work for one holder's update
        y = l2_clip(d, clip)[0]
        spans.for_spans(n, lambda lo, hi: np.add(acc[lo:hi], y[lo:hi], out=acc[lo:hi]))
    with one_thread():
        want_clip = l2_clip(d, 0.01)[0]
        out["plain_holder_one_thread_s"] = median_s(lambda: plain_one(0.01))
    assert l2_clip(d, 0.01)[0].tobytes() == want_clip.tobytes()
    out["plain_holder_spans_s"] = median_s(lambda: plain_one(0.01))
    out["encode_joined_s"] = median_s(lambda: encode(MaskedInput(1, 32, buf.vector)))
    out["encode_in_place_s"] = median_s(lambda: encode(msg))
    before = out["y_plus_x_one_thread_s"] + out["encode_joined_s"] + out["fold_one_thread_s"]
    after = out["y_plus_x_spans_s"] + out["encode_in_place_s"] + out["fold_spans_s"]
    out.update(masked_per_holder_before_s=before, masked_per_holder_after_s=after, masked_ratio=after / before,
               dequantize_ratio=out["dequantize_spans_s"] / out["dequantize_one_thread_s"],
               plain_holder_ratio=out["plain_holder_spans_s"] / out["plain_holder_one_thread_s"])
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
