"""Time Flower's SecAgg+ client masking stage with Flower's own functions (run in a separate venv).

Usage: /tmp/flwr-venv/bin/python benchmarks/secagg/flower_mask.py --params P --neighbours D [--repeats R]
Prints one JSON object. Mirrors the arithmetic of flwr's secaggplus_mod stage 2 (collect masked
vectors): parameters_multiply, quantize, factor_combine, pseudo_rand_gen for the private mask and one
per neighbour (after generate_shared_key), parameters_addition/subtraction, parameters_mod, and
ndarray_to_bytes for the upload. Defaults are Flower's workflow defaults (clip 8, 2^22, 2^32).
"""

import argparse
import json
import os
import time

import numpy as np
from flwr.common import ndarray_to_bytes
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (factor_combine, parameters_addition, parameters_mod,
                                                                parameters_multiply, parameters_subtraction)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import generate_key_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, required=True)
    ap.add_argument("--neighbours", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    clipping_range, target_range, mod_range = 8.0, 1 << 22, 1 << 32
    update = [np.random.default_rng(0).normal(scale=0.01, size=a.params).astype(np.float32)]
    sk, _ = generate_key_pairs()
    peers = [generate_key_pairs()[1] for _ in range(a.neighbours)]
    rd_seed = os.urandom(32)
    best, nbytes = float("inf"), 0
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        q_ratio = target_range  # num_examples == max_weight
        params = parameters_multiply(update, q_ratio / target_range)
        qp = quantize(params, clipping_range, target_range)
        qp = factor_combine(q_ratio, qp)
        dims = [x.shape for x in qp]
        qp = parameters_addition(qp, pseudo_rand_gen(rd_seed, mod_range, dims))
        for k, pk in enumerate(peers):
            shared = generate_shared_key(sk, pk)
            mask = pseudo_rand_gen(shared, mod_range, dims)
            qp = parameters_addition(qp, mask) if k % 2 else parameters_subtraction(qp, mask)
        qp = parameters_mod(qp, mod_range)
        upload = [ndarray_to_bytes(x) for x in qp]
        best = min(best, time.perf_counter() - t0)
        nbytes = sum(len(b) for b in upload)
    print(json.dumps({"seconds": best, "upload_bytes": nbytes, "bytes_per_param": nbytes / a.params}))


if __name__ == "__main__":
    main()
