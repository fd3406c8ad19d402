"""What the plain aggregation of whole in-process replies costs with BytesSink keeping a payload that
arrives in one piece, against the former sink that copied it twice (bytearray +=, then bytes()), in one
run on this machine: each holder's reply -> sink -> frombuffer -> finiteness check -> l2_clip -> float64 sum
(federation/aggregation.py plain_sum's steps).

    .venv/bin/python benchmarks/transport/plain_sum_sink.py [--params 23000000] [--holders 4]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from securefed.privacy.clipping import l2_clip
from securefed.transport.stream import BytesSink


class CopyingSink:
    """The sink as it was before 2026-12-03: every payload through a bytearray, then copied out."""

    def __init__(self, cap: int) -> None:
        self.cap, self._buf, self.value = cap, bytearray(), None

    def write(self, offset: int, data: bytes) -> None:
        self._buf += data

    def commit(self) -> None:
        self.value = bytes(self._buf)


def one_round(replies: list[bytes], sink_cls, dim: int) -> float:
    t = time.perf_counter()
    total = np.zeros(dim)
    for b in replies:
        s = sink_cls(4 * dim)
        s.write(0, b)
        s.commit()
        x = np.frombuffer(s.value, dtype="<f4")
        assert np.all(np.isfinite(x))
        total += l2_clip(x, 1.0)[0]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=23_000_000)
    ap.add_argument("--holders", type=int, default=4)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    replies = [(rng.standard_normal(a.params).astype("<f4") * 1e-4).tobytes() for _ in range(a.holders)]
    out = {}
    for name, cls in (("copying_sink_s", CopyingSink), ("bytes_sink_s", BytesSink)):
        one_round(replies, cls, a.params)                        # warm-up
        out[name] = min(one_round(replies, cls, a.params) for _ in range(3))
    out.update(params=a.params, holders=a.holders, ratio=round(out["bytes_sink_s"] / out["copying_sink_s"], 3))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
