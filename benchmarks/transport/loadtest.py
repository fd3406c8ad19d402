"""Load test: one coordinator and N holder *processes* on this machine, one secure-aggregation round
(SecAgg+ graph, neighbours=0 -> auto degree: 40 for n=100), synthetic updates of DIM parameters.

    python benchmarks/transport/loadtest.py --holders 100 --dim 10000 --out benchmarks/transport/loadtest.json

Synthetic, not the tiny LM: 100 LM holders would each import torch and build a 1.4M-parameter model
(~250 MB RSS and ~4 CPU-seconds each) on 2 cores; the transport and secagg paths are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.transport.procs import Procs, read_json, wait_until  # noqa: E402

from securefed.runtime.rundir import RunDir  # noqa: E402
from securefed.transport.pki import make_demo_pki  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--holders", type=int, default=100)
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--neighbours", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        pki = make_demo_pki(tmp / "pki", holders=a.holders)
        t_keygen = time.perf_counter() - t0
        procs = Procs(tmp)
        out = tmp / "run"
        env = {"OMP_NUM_THREADS": "1"}
        try:
            procs.start("server", "securefed.commands.server", "--pki", pki.root, "--out", out, "--port", 0,
                        "--synthetic-dim", a.dim, "--rounds", 1, "--cohort", a.holders, "--neighbours",
                        a.neighbours, "--deadline-join", 600, "--deadline-train", 300, "--deadline-control", 300,
                        "--deadline-upload", 300, "--log-level", "WARNING", env=env)
            port = wait_until(lambda: (read_json(out / "status.json") or {}).get("port"), 120, "server")
            t_start = time.perf_counter()
            for h in range(1, a.holders + 1):
                procs.start(f"h{h}", "securefed.commands.client", "--pki", pki.root, "--id", h, "--server",
                            f"127.0.0.1:{port}", "--state", tmp / f"s{h}", "--log-level", "WARNING",
                            "--min-graph", "auto", env=env)
            rc = procs.wait("server", 1200)
            t_all = time.perf_counter() - t_start
            codes = [procs.wait(f"h{h}", 120) for h in range(1, a.holders + 1)]
        finally:
            procs.cleanup()
        rows = RunDir.read_jsonl(out / "metrics.jsonl")
        if rc != 0 or not rows:
            print(procs.log("server")[-3000:])
            return 1
        row = rows[0]
        res = {"holders": a.holders, "dim": a.dim, "neighbours_config": a.neighbours,
               "server_exit": rc, "holder_exits_nonzero": sum(c != 0 for c in codes),
               "survivors": row["clients_survived"], "round_seconds": row["seconds"],
               "stage_seconds": row["stage_seconds"], "bytes_up": row["bytes_up"], "bytes_down": row["bytes_down"],
               "seconds_from_first_process_to_round_end": t_all, "keygen_seconds": t_keygen,
               "cpus": os.cpu_count(),
               "peak_rss_this_driver_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
