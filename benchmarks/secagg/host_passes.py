"""P-sized host work of an aggregation round, before and after the 2026-12-03 change, measured in one run
on this machine (RESULTS.md (j13): at 1.3b x 3 holders the secure aggregate stage was 63 s of a 107 s round;
at 125m x 8 the plain one 16.7 s):

- dequantize_sum: the ring sum -> float sum, whole-vector numpy (five int64/float64 temporaries through
  memory) vs the centred lift as a sign extension in the storage width, 64k coordinates at a time with
  reused buffers (quantize.py, bit-identical);
- the MaskedInput encoding: prefix + v.tobytes() concatenated twice (three copies of the vector) vs one
  join of the prefix and the vector's buffer (secagg/messages.py, byte-identical);
- l2_clip (the plain path clips every update twice, at the holder and again at the server): a float64 copy
  of the whole update vs float64 accumulation span by span (privacy/clipping.py; same norm to summation
  order, the same two products per coordinate). Timed on an update over the clip bound (the scaling path);
- quantize of a clipped float32 update (2026-12-03, afternoon): a float64 copy of the whole update and an |x|
  temporary for the max check vs the norm and max span by span, each rounding chunk widened where it is
  rounded (bit-identical ring vector).

    .venv/bin/python benchmarks/secagg/host_passes.py [--params 88000000]
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import time

import numpy as np

from securefed.primitives.quantize import dequantize_sum, from_ring, plan_quantization, quantize
from securefed.primitives.rng import DeterministicEntropy
from securefed.privacy.clipping import CLIP_MARGIN, l2_clip
from securefed.secagg import encode
from securefed.secagg.messages import MAGIC, VERSION, MaskedInput


def median_s(f, reps: int = 5) -> float:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return sorted(out)[reps // 2]


def old_encode(m: MaskedInput) -> bytes:   # the former MaskedInput._body and encode
    body = struct.pack(">I", m.sender) + bytes([m.ring_bits]) + struct.pack(">Q", m.vector.shape[0]) + m.vector.tobytes()
    return MAGIC + bytes([VERSION, m.TYPE]) + body


def old_l2_clip(delta: np.ndarray, clip: float) -> np.ndarray:   # the former l2_clip's arithmetic
    x = delta.astype(np.float64)
    norm = float(np.linalg.norm(x))
    return (x * (clip / norm) * CLIP_MARGIN).astype(np.float32) if norm > clip * CLIP_MARGIN else x.astype(np.float32)


def old_quantize(x: np.ndarray, plan, entropy) -> np.ndarray:   # the former quantize's preamble, serial path
    from securefed.primitives.quantize import _CHUNK, MAX_ROUNDING_TRIES, _round_chunk, accept_threshold, rounded_l2_bound

    x = np.asarray(x, dtype=np.float64)                       # a float64 copy of the whole update
    norm = math.sqrt(float(np.dot(x, x)))
    if norm > plan.clip or (x.size and float(np.max(np.abs(x))) > plan.clip):   # and |x| of the whole update
        raise ValueError("over the clip")
    bound_sq = accept_threshold(rounded_l2_bound(plan.scale * norm, x.size), x.size, _CHUNK)
    out = np.empty(x.size, dtype=plan.ring.dtype)
    for _ in range(MAX_ROUNDING_TRIES):
        sq, y, lo = 0.0, np.empty(_CHUNK), np.empty(_CHUNK)
        for start in range(0, x.size, _CHUNK):
            m = min(_CHUNK, x.size - start)
            sq += _round_chunk(x, out, start, m, plan, entropy.random_bytes(4 * m), y, lo)
        if sq <= bound_sq:
            return plan.ring.reduce(out)
    raise RuntimeError("rounding did not succeed")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=88_000_000, help="coordinates (the 125m preset: 88.1M)")
    a = ap.parse_args()
    plan = plan_quantization(clip=100.0, max_clients=3)
    v = np.random.default_rng(0).integers(0, 2**32, a.params, dtype=np.uint64).astype(np.uint32)
    whole = lambda: (from_ring(v, plan.ring).astype(np.float64) / plan.scale).astype(np.float32)   # noqa: E731
    assert whole().tobytes() == dequantize_sum(v, plan).tobytes()
    m = MaskedInput(1, 32, v)
    assert old_encode(m) == encode(m)
    out = {"params": a.params,
           "dequantize_whole_s": median_s(whole), "dequantize_spans_s": median_s(lambda: dequantize_sum(v, plan)),
           "encode_three_copies_s": median_s(lambda: old_encode(m)), "encode_one_join_s": median_s(lambda: encode(m))}
    d = (np.random.default_rng(1).standard_normal(a.params, dtype=np.float32) * 1e-3)
    out["l2_clip_whole_s"] = median_s(lambda: old_l2_clip(d, 1.0))
    out["l2_clip_spans_s"] = median_s(lambda: l2_clip(d, 1.0))
    out["l2_clip_ratio"] = out["l2_clip_spans_s"] / out["l2_clip_whole_s"]
    # quantize of a clipped float32 update (the host path of a CPU holder; entropy: a fast seeded stream)
    qp = plan_quantization(clip=1.0, max_clients=8)
    xq, _ = l2_clip(d, 0.5)
    assert old_quantize(xq, qp, DeterministicEntropy.from_int(3)).tobytes() == \
        quantize(xq, qp, DeterministicEntropy.from_int(3)).tobytes()
    out["quantize_whole_s"] = median_s(lambda: old_quantize(xq, qp, DeterministicEntropy.from_int(3)), reps=3)
    out["quantize_spans_s"] = median_s(lambda: quantize(xq, qp, DeterministicEntropy.from_int(3)), reps=3)
    out["quantize_ratio"] = out["quantize_spans_s"] / out["quantize_whole_s"]
    out["dequantize_ratio"] = out["dequantize_spans_s"] / out["dequantize_whole_s"]
    out["encode_ratio"] = out["encode_one_join_s"] / out["encode_three_copies_s"]
    print(json.dumps({k: round(x, 3) if isinstance(x, float) else x for k, x in out.items()}))


if __name__ == "__main__":
    main()
