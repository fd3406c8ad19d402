"""What secure aggregation leaves on a holder's critical path (after its training) and on the server's,
old order vs masking off the critical path (protocols/secagg.md §6.5, issue 13 item 2).

    PYTHONPATH=$PWD python benchmarks/secagg/critical_path.py --params 16000000 --holders 8 [--threads N]

One real protocol round (SecAggClient / SecAggServer, complete graph) over ``--holders`` inputs of
``--params`` float32 coordinates, run twice:
  old  the input is quantized after training (one thread) and the MASK stage expands the self mask
       and every pairwise mask then (one thread);
  new  the client is given its input late and expands M on ``--threads`` threads right after its
       ShareKeys (here: while the "training" wait below runs), quantization runs on the same
       threads, and at MASK only y = x + M remains; the server unmasks on ``--threads`` threads.
Reports, per holder, the seconds between the end of training and its masked input (quantize + MASK
stage), and the server's unmask stage; asserts both runs send the same bytes and sum.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from securefed.primitives.quantize import plan_quantization, quantize  # noqa: E402
from securefed.primitives.rng import DeterministicEntropy  # noqa: E402
from securefed.secagg import Roster, SecAggClient, SecAggConfig, SecAggServer, generate_identity  # noqa: E402


def one_round(updates, *, new: bool, threads: int, train_wait: float) -> dict:
    n, P = len(updates), updates[1].size
    config = SecAggConfig()
    ids = {i: generate_identity(DeterministicEntropy.from_int(i)) for i in updates}
    roster = Roster.from_identities(ids)
    plan = plan_quantization(clip=1.0, ring_bits=32, max_clients=n)
    pool = ThreadPoolExecutor(max_workers=threads) if new else None
    server = SecAggServer(config=config, cohort=list(ids), vector_length=P, round_index=1, session_context=b"ctx",
                          roster=roster)
    clients = {i: SecAggClient(i, identity=ids[i], roster=roster, config=config, session_context=b"ctx",
                               round_index=1, vector=None, length=P, entropy=DeterministicEntropy.from_int(50 + i),
                               executor=pool) for i in ids}
    out = {i: server.round_start() for i in ids}
    for _ in range(2):                                   # RoundStart, KeyRoster (new: before training)
        for i, data in out.items():
            server.receive(i, clients[i].handle(data))
        out = server.close_stage()
    time.sleep(train_wait)                               # the holders train (the GPU's time; idle CPU here)
    ready = all(f.done() for c in clients.values() if c._premask for f in c._premask.futures) if new else None
    per_holder, sent = {}, {}
    for i, data in out.items():                          # after training: encode, then the MASK stage
        t0 = time.perf_counter()
        q = quantize(updates[i], plan, DeterministicEntropy.from_int(900 + i), executor=pool)
        clients[i].provide_input(q)
        reply = clients[i].handle(data)
        per_holder[i] = time.perf_counter() - t0
        sent[i] = reply
        server.receive(i, reply)
    out = server.close_stage()
    for i, data in out.items():
        server.receive(i, clients[i].handle(data))
    out = server.close_stage()
    for i, data in out.items():
        server.receive(i, clients[i].handle(data))
    server.executor = pool
    t0 = time.perf_counter()
    server.close_stage()                                 # unmask (§6.4)
    unmask = time.perf_counter() - t0
    if pool:
        pool.shutdown()
    return {"holder_after_training_s": round(float(np.median(list(per_holder.values()))), 3),
            "all_holders_s": round(sum(per_holder.values()), 3), "server_unmask_s": round(unmask, 3),
            "masks_ready_when_training_ended": ready,
            "_sent": sent, "_sum": server.result.copy()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=16_000_000)
    ap.add_argument("--holders", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--train-wait", type=float, default=None, help="seconds (default: long enough for M)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    updates = {}
    for i in range(1, a.holders + 1):
        x = rng.standard_normal(a.params).astype(np.float32)
        updates[i] = x * np.float32(0.9 / np.linalg.norm(x))
    wait = a.train_wait if a.train_wait is not None else max(2.0, a.params * a.holders * a.holders * 4 / 1.5e9 / a.threads)
    # a discarded round first: the measured "old" round must not pay the process's first quantize and first mask
    # expansion alone (that flattered old/new; benchmarks/RESULTS.md (zr13))
    one_round({i: updates[i][: 1 << 16] for i in updates}, new=False, threads=1, train_wait=0.0)
    old = one_round(updates, new=False, threads=1, train_wait=0.0)
    new = one_round(updates, new=True, threads=a.threads, train_wait=wait)
    assert old.pop("_sent") == new.pop("_sent") and np.array_equal(old.pop("_sum"), new.pop("_sum"))
    print(json.dumps({"params": a.params, "holders": a.holders, "threads": a.threads, "train_wait_s": round(wait, 1),
                      "old": old, "new": new, "same_bytes": True}))


if __name__ == "__main__":
    main()
