# Stop 43: a plain round's host passes, the copies before (old) and in place / without a copy (new), 4 holders
# at 52.2M coordinates (the demo-vocabulary 75m model), alternated 4 times:
#   .venv/bin/python benchmarks/secagg/plain_passes.py
# On this 2-core machine: holder side (w·Δ, clip, bytes) 1.256 -> 0.793 s for the 4 holders; coordinator
# 0.728 -> 0.726 s (no change: the allocator reuses the previous holder's freed vector). Rerun at stop 44 (the
# script tidied, same steps): holder side 0.926 -> 0.589 s, coordinator 0.559 -> 0.421 s — one run; the
# coordinator's gain did not show in stop 43's.
import statistics
import time

import numpy as np

from securefed.primitives.spans import for_spans
from securefed.privacy.clipping import l2_clip

DIM = 52_196_480
WEIGHT, CLIP = np.float32(0.5), 1e6
rng = np.random.default_rng(0)
base = [rng.standard_normal(DIM).astype(np.float32) * 1e-4 for _ in range(4)]


def holder(old: bool) -> tuple[list[bytes], float]:
    """Each holder's upload bytes from its fresh Δ, and the seconds of w·Δ, the clip and the bytes together."""
    uploads, seconds = [], 0.0
    for b in base:
        d = b.copy()   # the trainer's fresh Δ (the same in both, not timed)
        t0 = time.perf_counter()
        if old:
            x, _ = l2_clip(d * WEIGHT, CLIP)
        else:
            np.multiply(d, WEIGHT, out=d)
            x, _ = l2_clip(d, CLIP, inplace=True)
        uploads.append(x.tobytes())
        seconds += time.perf_counter() - t0
    return uploads, seconds


def coordinator(uploads: list[bytes], old: bool) -> float:
    """The plain sum as federation/aggregation.plain_sum forms it: each update read, clipped, added in float64."""
    t0 = time.perf_counter()
    total = np.zeros(DIM)
    for b in uploads:
        x = np.frombuffer(b, dtype="<f4")
        y = l2_clip(x, CLIP)[0] if old else l2_clip(x, CLIP, copy=False)[0]
        for_spans(DIM, lambda lo, hi, y=y: np.add(total[lo:hi], y[lo:hi], out=total[lo:hi]))
    out = np.empty(DIM, np.float32)
    for_spans(DIM, lambda lo, hi: np.copyto(out[lo:hi], total[lo:hi], casting="unsafe"))
    return time.perf_counter() - t0


res: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
for _ in range(4):
    for old in (True, False):
        uploads, ht = holder(old)
        res[old].append((ht, coordinator(uploads, old)))
for old in (True, False):
    print("old" if old else "new",
          "holder-side (4 holders) median", round(statistics.median(h for h, _ in res[old]), 3),
          "coordinator median", round(statistics.median(c for _, c in res[old]), 3))
