"""Issue 13: what clipping and rounding one holder's Δ costs on the host (numpy, the path of RESULTS.md (c13))
and on the training GPU (privacy.device_encode, secagg.md §6.6), at 125m (P = 104.8M) and 350m.

    python3 benchmarks/gpu/device_encode.py --out $OUT/device_encode.json        # on a CUDA machine

Both paths start from Δ on the GPU (where the trainer forms it) and end with the ring vector on the host
(what the masks are added to). The rounding words are drawn beforehand (a holder prefetches them on its
mask threads while it trains, secagg.md §6.5), so neither timing includes the CSPRNG. Host path: Δ copied
once into pinned memory, then l2_clip and quantize with 1 thread (8 holders on 16 cores: the simulation's
mask_threads) and with 8 threads. Each timed 3 times after one warm-up; the median is reported. The ring
vectors of the two paths are compared (unclipped Δ: the same bits).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from securefed.primitives.quantize import plan_quantization, quantize, quantize_draws
from securefed.primitives.rng import DeterministicEntropy
from securefed.privacy.clipping import l2_clip
from securefed.privacy.device_encode import clip_and_quantize_on_device


class Drawn:
    """Entropy that serves bytes drawn beforehand (the prefetched rounding words), then fails."""

    def __init__(self, draws: list[bytes]) -> None:
        self._d = list(reversed(draws))

    def random_bytes(self, n: int) -> bytes:
        b = self._d.pop()
        assert len(b) == n
        return b


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int = 3) -> tuple[float, object]:
    fn()
    ts, out = [], None
    for _ in range(reps):
        _sync()
        t = time.perf_counter()
        out = fn()
        _sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="104843520,331347968")
    ap.add_argument("--device", default="cuda", help="cpu: a check of the script itself, not a result")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = []
    for P in (int(x) for x in a.sizes.split(",")):
        g = torch.Generator(device=a.device).manual_seed(0)
        delta = torch.randn(P, device=a.device, generator=g) * 1e-4          # ‖Δ‖ ≈ 1-2: below C, unclipped
        plan = plan_quantization(clip=100.0, ring_bits=32, max_clients=8)
        src = DeterministicEntropy.from_int(1)
        draws = [src.random_bytes(n) for n in quantize_draws(P)]

        def host(threads: int):
            def run():
                pinned = torch.empty(P, dtype=torch.float32, pin_memory=a.device == "cuda")
                pinned.copy_(delta)
                x, _ = l2_clip(pinned.numpy() * np.float32(1.0), plan.clip)
                if threads <= 1:
                    return quantize(x, plan, Drawn(draws))
                with ThreadPoolExecutor(threads) as pool:
                    return quantize(x, plan, Drawn(draws), executor=pool)
            return run

        def device():
            return clip_and_quantize_on_device(delta, 1.0, plan, Drawn(draws))[0]

        t1, r1 = timed(host(1))
        t8, _ = timed(host(8))
        td, rd = timed(device)
        row = {"params": P, "host_1_thread_s": round(t1, 3), "host_8_threads_s": round(t8, 3), "device_s": round(td, 3),
               "host1_over_device": round(t1 / td, 1), "same_ring_vector": bool(np.array_equal(r1, rd)),
               "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if a.device == "cuda" else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del delta
        if a.device == "cuda":
            torch.cuda.empty_cache()
    env = {"device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu", "torch": torch.__version__}
    with open(a.out, "w") as f:
        json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
