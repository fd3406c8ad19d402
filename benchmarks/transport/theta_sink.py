"""A holder's θ after the stream (RESULTS.md (y13)): BytesSink (growing buffer, copy into bytes) + the astype copy
the holder then needed, against BufferSink (one buffer sized from the header, read in place), alternating in one
run on P float32 words in 1 MiB chunks.

    .venv/bin/python benchmarks/transport/theta_sink.py [--params 88000000] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from securefed.transport.stream import BufferSink, BytesSink


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=88_000_000)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    n, chunk = 4 * a.params, 1 << 20
    src = memoryview(np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8).tobytes())
    before, after = [], []
    for _ in range(a.reps):
        t = time.perf_counter()
        s = BytesSink(n)
        for o in range(0, n, chunk):
            s.write(o, src[o:o + chunk])
        s.commit()
        theta = np.frombuffer(s.value, dtype="<f4").astype(np.float32)      # the holder's copy before (y13)
        before.append(time.perf_counter() - t)
        del s, theta
        t = time.perf_counter()
        s = BufferSink(n)
        for o in range(0, n, chunk):
            s.write(o, src[o:o + chunk])
        s.commit()
        theta = np.frombuffer(s.value, dtype="<f4")                           # writable: read in place
        after.append(time.perf_counter() - t)
        assert theta.flags.writeable
        del s, theta
    print(json.dumps({"params": a.params, "bytes_sink_plus_copy_s": [round(x, 4) for x in before],
                      "buffer_sink_s": [round(x, 4) for x in after],
                      "ratio_of_medians": round(statistics.median(after) / statistics.median(before), 3)}))


if __name__ == "__main__":
    main()
